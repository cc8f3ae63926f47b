"""Fine-tuning on VCR (``q2a``, ``qa2r``) or VQA (``vqa``) with Hugging Face Accelerate: one code path
for CPU, one GPU, DDP / FSDP, and for every task (a VQA run differs only in its data and head: ``vlekit.runs.data``).

Run folder layout (everything needed to reproduce, resume and evaluate; defined in ``vlekit.runs.folder``)::

    OUT/config.yaml              resolved experiment config
    OUT/tokenizer/               the tokenizer used (built from the data when tokenizer=auto)
    OUT/metrics.jsonl            one JSON object per log step (loss, the lr the step used, processes), per evaluation, and a last one if it diverged
    OUT/checkpoints/step-N/      accelerate state (model, optimizer, scheduler, RNG) + trainer_state.json
    OUT/model/                   final model (vlekit_config.json, model.safetensors, tokenizer/, data.json, manifest.json)
    OUT/.lock                    the PID and host of the process training in OUT (vlekit.runs.lock)
    OUT/curve.png                training curve (``vlekit train`` draws it; ``train()`` leaves plotting to its caller)
    OUT/tracking/OUT.name/       what ``train.report_to`` trackers write (TensorBoard events, W&B offline runs, ...)

Checkpoints are written to ``step-N.tmp``, completed by a ``manifest.json`` (every file's size and
SHA-256, written last) and renamed (``vlekit.training.checkpoints``), so a kill, even SIGKILL in the middle of a
save, never leaves a half-written ``step-N``. ``--resume`` restores the newest checkpoint whose files match its manifest
(a truncated or corrupted one is skipped with a message), including the data-loader position, and
continues to the same result as an uninterrupted run. SIGINT / SIGTERM (to the main process or to the
whole process group, as clusters send them) finish the current step, save, and exit with 130 / 143.
An OUT that holds another run is refused unless ``--resume`` or ``--overwrite`` (``vlekit.runs.lock``).
Weights that turn NaN or inf stop the run before anything of them is saved; running out of memory or a failing
data loader saves the last whole optimizer step and says how to go on (``vlekit.training.monitor``).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import shutil
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator, DataLoaderConfiguration, PartialState
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm

from vlekit.components.adaptations import parameter_counts
from vlekit.training.checkpoints import (
    STATE_FILE, CheckpointSpaceError, TrainerState, check_resume_changes, options_as_started, replace_folder,
    resume_checkpoint, resumed_position, save_checkpoint, write_manifest,
)
from vlekit.evaluation.evaluate import accuracy_on
from vlekit.evaluation.tasks import task_for
from vlekit.runs.experiment import ExperimentConfig, load_experiment
from vlekit.model import VCRModel, VCRModelConfig
from vlekit.runs.data import check_data_files, skipped_items_summary
from vlekit.runs.folder import (
    BEST_DIR, EXPERIMENT_FILE, METRICS_FILE, MODEL_DIR, SELECTION_FILE, RunFolder, moved_run, write_model_companions,
)
from vlekit.runs.lock import claim_run_folder
from vlekit.training.monitor import (
    DivergenceGuard, LogWindow, MetricsLog, TrainingDiverged, TrainingOutOfMemory, note_data_failure, stop_out_of_memory,
)
from vlekit.training.setup import (
    apply_planned_hyperparameters, build_run_model, linear_warmup_decay, load_or_build_tokenizer, make_optimizer,
    planned_hyperparameters, resolve_mixed_precision,
)
from vlekit.training.stopping import StopRequested, ignore_stop_signals
from vlekit.training.tracking import TRACKING_DIR, check_trackers, flat_hyperparameters, tracked_scalars


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation per epoch from ``seed + epoch``: the order is a pure function of the epoch,
    so a resumed run sees exactly the batches an uninterrupted one would."""

    def __init__(self, size: int, *, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=generator).tolist())

    def __len__(self) -> int:
        return self.size


# -- building blocks ------------------------------------------------------------------------------
def save_final_model(model: VCRModel, tokenizer, config: ExperimentConfig, folder: Path,
                     state_dict: dict[str, torch.Tensor] | None = None, *, selection: dict[str, Any] | None = None) -> Path:
    """The evaluable model: weights + resolved config + tokenizer + the data options it was trained with,
    written to ``folder.tmp`` with a manifest (as checkpoints are, verified when the run is loaded) and
    then renamed, so ``folder`` is never half-written. ``selection``: why this model (``OUT/best/``)."""
    tmp = folder.with_name(folder.name + ".tmp")
    if tmp.exists():  # left by a save a kill cut short
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, state_dict=state_dict)
    write_model_companions(tmp, model, tokenizer, config.data.preprocess_options())
    config.save(tmp / EXPERIMENT_FILE)
    if selection is not None:
        (tmp / SELECTION_FILE).write_text(json.dumps(selection, indent=1))
    write_manifest(tmp)
    return replace_folder(tmp, folder)


# -- the loop -------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out: Path
    model_dir: Path | None
    global_step: int
    interrupted: bool
    val_accuracy: float | None
    stop_signal: int | None = None  # the signal that interrupted the run
    stopped_early: bool = False  # train.early_stopping_patience validations without a better score

    @property
    def exit_code(self) -> int:
        """The shell's convention: 128 + the signal (SIGINT 130, SIGTERM 143); 0 when the run finished."""
        return 128 + self.stop_signal if self.stop_signal is not None else 0


def train(config: ExperimentConfig, *, resume: str | None = None, overwrite: bool = False,
          progress: bool = True, allow_changes: bool = False) -> TrainResult:
    """Fine-tune ``config.model`` on ``config.data`` as ``config.train`` says. Returns where it went.

    ``train.out`` must hold no run, unless ``resume`` (``"latest"`` or a checkpoint folder) continues it
    or ``overwrite`` moves it aside (:func:`vlekit.runs.lock.claim_run_folder`); it is locked meanwhile.
    A resume with options that change what the run computes is refused unless ``allow_changes``
    (:func:`vlekit.training.checkpoints.check_resume_changes`).
    """
    train_cfg = config.train
    check_data_files(config.data)  # before the run folder is made or claimed
    trackers = check_trackers(train_cfg.report_to)
    out = Path(train_cfg.out)
    # The schedule is counted in optimizer steps (``total_steps``) and stepped once per optimizer step
    # below. Stepped "with the optimizer", Accelerate's scheduler wrapper would instead step it once per
    # process at every optimizer step, running the schedule num_processes times too fast.
    accelerator = Accelerator(
        mixed_precision=resolve_mixed_precision(train_cfg.mixed_precision),
        gradient_accumulation_steps=train_cfg.gradient_accumulation_steps,
        cpu=train_cfg.cpu, step_scheduler_with_optimizer=False,
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / TRACKING_DIR)),
        # The prepared loaders move each batch to the device: from pinned memory, without waiting.
        dataloader_config=DataLoaderConfiguration(non_blocking=torch.cuda.is_available()),
    )
    micro, remainder = divmod(train_cfg.batch_size, train_cfg.gradient_accumulation_steps * accelerator.num_processes)
    if micro == 0 or remainder:
        raise ValueError(
            f"train.batch_size {train_cfg.batch_size} must be a multiple of gradient_accumulation_steps "
            f"({train_cfg.gradient_accumulation_steps}) x processes ({accelerator.num_processes})"
        )
    lock = claim_run_folder(out, resume=resume is not None, overwrite=overwrite, report=accelerator.print) \
        if accelerator.is_main_process else contextlib.nullcontext()
    accelerator.wait_for_everyone()
    with lock:
        try:
            return _train(config, accelerator, micro=micro, trackers=trackers, resume=resume, progress=progress,
                          allow_changes=allow_changes)
        except (TrainingDiverged, TrainingOutOfMemory):
            accelerator.end_training()  # the trackers keep what was logged up to it
            raise


def _train(config: ExperimentConfig, accelerator: Accelerator, *, micro: int, trackers: list[str],
           resume: str | None, progress: bool, allow_changes: bool) -> TrainResult:
    """The loop of :func:`train`, in a run folder this process may use."""
    train_cfg, data_cfg = config.train, config.data
    out = Path(train_cfg.out)
    task = task_for(data_cfg.task)
    run_data = task.read(config)
    checkpoint = resume_checkpoint(resume, out, report=accelerator.print)
    if checkpoint is not None:
        config = options_as_started(config, checkpoint, report=accelerator.print)
        data_cfg = config.data
    set_seed(train_cfg.seed)

    tokenizer = load_or_build_tokenizer(config, out, accelerator, run_data.text, checkpoint=checkpoint)
    model = build_run_model(config, tokenizer, run_data.vocabulary)
    config = dataclasses.replace(config, model=model.config)  # what was built, for config.yaml and checkpoints
    if checkpoint is not None:
        check_resume_changes(config, checkpoint, allow=allow_changes, report=accelerator.print)
    if accelerator.is_main_process:
        config.save(out / EXPERIMENT_FILE)
    if train_cfg.freeze_text_encoder:
        model.text_encoder.requires_grad_(False)
    if train_cfg.freeze_vision_encoder:
        model.vision_encoder.requires_grad_(False)
    if train_cfg.compile:
        model.fusion.compile()
        model.text_encoder.compile()
        model.vision_encoder.compile()

    dataset, val_set = task.datasets(config, run_data, tokenizer, model)
    sampler = EpochShuffleSampler(len(dataset), seed=train_cfg.seed)
    # Own generators: a DataLoader draws a worker base seed from its generator at every iteration, and
    # drawing from the global RNG would shift dropout masks after a resume.
    loader = DataLoader(
        dataset, batch_size=micro, sampler=sampler, collate_fn=dataset.collate, drop_last=True,
        generator=torch.Generator().manual_seed(train_cfg.seed),
        num_workers=data_cfg.num_workers, pin_memory=torch.cuda.is_available(),
        persistent_workers=data_cfg.num_workers > 0, prefetch_factor=4 if data_cfg.num_workers > 0 else None,
        worker_init_fn=ignore_stop_signals,
    )
    for option, why in (("save_best", "keeps the model of the best validation score"),
                        ("early_stopping_patience", "stops when validation scores stop improving")):
        if getattr(train_cfg, option) and val_set is None:
            raise ValueError(f"train.{option} {why}, but the run has no validation split: set its validation data "
                             f"(data.val_annotations; VQA: data.val_questions) or drop {option}")
    val_loader = None
    if val_set is not None:
        val_loader = DataLoader(val_set, batch_size=micro, collate_fn=val_set.collate, num_workers=data_cfg.num_workers,
                                pin_memory=torch.cuda.is_available(), generator=torch.Generator().manual_seed(train_cfg.seed),
                                worker_init_fn=ignore_stop_signals)

    steps_per_epoch = len(loader) // (train_cfg.gradient_accumulation_steps * accelerator.num_processes)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(dataset)} training examples make no full batch of {train_cfg.batch_size}")
    total_steps = max(1, int(math.ceil(train_cfg.epochs * steps_per_epoch)))
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)
    optimizer = make_optimizer(model, config)
    counts = parameter_counts(model)  # what the adaptation leaves trainable, recorded below
    scheduler = linear_warmup_decay(optimizer, total_steps=total_steps, warmup_ratio=train_cfg.warmup_ratio)
    planned = planned_hyperparameters(optimizer)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)

    state = TrainerState()
    log = MetricsLog(out / METRICS_FILE, enabled=accelerator.is_main_process)
    guard = DivergenceGuard(accelerator, model, out, log=log, mixed_precision=accelerator.mixed_precision,
                            peak_lr=train_cfg.lr)
    if checkpoint is not None:
        accelerator.load_state(str(checkpoint))
        apply_planned_hyperparameters(optimizer, scheduler, planned)  # --allow-changes train.lr=... takes effect
        saved = TrainerState(**json.loads((checkpoint / STATE_FILE).read_text()))
        state = resumed_position(saved, checkpoint, config, report=accelerator.print)
        accelerator.step = 0  # checkpoints stand between optimizer steps: count micro-batches from there
        accelerator.print(f"resumed from {checkpoint} (step {state.global_step}, epoch {state.epoch})")
        guard.check(state.global_step, lr=None, resumed_from=checkpoint)

    if trackers:
        accelerator.init_trackers(out.name, config=flat_hyperparameters(config),
                                  init_kwargs={"wandb": {"dir": str(out / TRACKING_DIR)}})
    log.rewind(state)  # a fresh start (state at step 0) empties what a run that never checkpointed logged
    if state.global_step == 0:  # once per run: a resumed run keeps the record of its start
        log.write(step=0, **counts)
    accelerator.print(f"trainable parameters: {counts['trainable_parameters']:,} of {counts['total_parameters']:,} "
                      f"({counts['trainable_parameters'] / counts['total_parameters']:.2%}); optimizer state "
                      f"{counts['optimizer_state_bytes'] / 2**20:.1f} MiB")
    bar = tqdm(total=total_steps, initial=state.global_step, disable=not (progress and accelerator.is_local_main_process),
               desc=f"train {data_cfg.task}", dynamic_ncols=True)
    interrupted, val_accuracy = False, None
    window = LogWindow(accelerator)

    def save() -> Path:  # a checkpoint of weights found finite
        guard.check(state.global_step, lr=scheduler.get_last_lr()[0])
        return save_checkpoint(accelerator, out, state, config, model=accelerator.unwrap_model(model), tokenizer=tokenizer)

    def evaluate_now() -> float:
        guard.check(state.global_step, lr=scheduler.get_last_lr()[0])  # NaN weights score chance and are not the best
        accuracy = accuracy_on(model, val_loader, accelerator, score=task.score)
        log.write(step=state.global_step, epoch=state.epoch, val_accuracy=accuracy)
        accelerator.log(tracked_scalars({"val_accuracy": accuracy}), step=state.global_step)
        bar.write(f"step {state.global_step} (epoch {state.epoch}): val accuracy {accuracy:.3f}")
        # The gathered score is the same on every process, so they all agree on what follows.
        if state.record_validation(accuracy, patience=train_cfg.early_stopping_patience) and train_cfg.save_best:
            weights = accelerator.get_state_dict(model)  # every process takes part (FSDP gathers its shards)
            if accelerator.is_main_process:
                selection = {"step": state.global_step, "epoch": state.epoch, "val_accuracy": accuracy}
                best = save_final_model(accelerator.unwrap_model(model), tokenizer, config, out / BEST_DIR, weights,
                                        selection=selection)
                bar.write(f"  the best so far: saved to {best}")
            accelerator.wait_for_everyone()
        if state.stopped_early:
            bar.write(f"no better validation score in {train_cfg.early_stopping_patience} validations (the best, "
                      f"{state.best_score:.3f}, at step {state.best_step}): stopping early")
        return accuracy

    def on_data_failure(error: Exception) -> None:  # saves the last whole step, notes it on the error
        note_data_failure(error, accelerator=accelerator, optimizer=optimizer, state=state, config=config, save=save)

    memory_error = None
    with StopRequested() as stop:
        while state.global_step < total_steps and not interrupted and not state.stopped_early and memory_error is None:
            epoch_loader = accelerator.skip_first_batches(loader, state.batches_in_epoch) if state.batches_in_epoch else loader
            # Accelerate's loaders pass their own iteration count to the sampler; set it to the real epoch.
            epoch_loader.set_epoch(state.epoch)
            model.train()
            for batch in window.timed(epoch_loader, on_error=on_data_failure):
                try:
                    with accelerator.accumulate(model):
                        loss = model(**batch)["loss"]
                        accelerator.backward(loss)
                        if accelerator.sync_gradients and train_cfg.max_grad_norm > 0:  # the norm is logged
                            window.add_gradient_norm(accelerator.clip_grad_norm_(model.parameters(), train_cfg.max_grad_norm))
                        optimizer.step()  # a no-op until the last micro-batch of the accumulation
                        optimizer.zero_grad(set_to_none=True)
                except torch.OutOfMemoryError as error:
                    memory_error = str(error)  # not the error itself: its frames hold the step's activations
                    break
                state.batches_in_epoch += 1
                window.add(loss, questions=batch["input_ids"].shape[0])
                if not accelerator.sync_gradients:
                    continue
                step_lr = scheduler.get_last_lr()[0]  # the rate this optimizer step used (first group)
                scheduler.step()  # once per optimizer step, whatever the processes and accumulation
                state.global_step += 1
                bar.update(1)
                if state.global_step % train_cfg.log_every_steps == 0 or state.global_step == total_steps:
                    record = window.flush(step=state.global_step, epoch=state.epoch + state.batches_in_epoch / len(loader),
                                          lr=step_lr, processes=accelerator.num_processes)
                    log.write(**record)
                    accelerator.log(tracked_scalars(record), step=state.global_step)
                    guard.note(record)
                    guard.check(state.global_step, lr=step_lr)
                    bar.set_postfix(loss=f"{record['loss']:.3f}", qps=f"{record['questions_per_s']:.1f}")
                if train_cfg.save_every_steps and state.global_step % train_cfg.save_every_steps == 0:
                    save()
                if stop.agreed(accelerator, at_log_step=state.global_step % train_cfg.log_every_steps == 0):
                    interrupted = True
                    break
                if state.global_step >= total_steps:
                    break
            if memory_error is not None:
                stop_out_of_memory(memory_error, accelerator=accelerator, optimizer=optimizer, state=state, config=config, save=save)
            if state.batches_in_epoch == len(loader):  # the epoch ran to its end
                state.epoch += 1
                state.batches_in_epoch = 0
                if val_loader is not None and state.epoch % train_cfg.eval_every_epochs == 0:
                    val_accuracy = evaluate_now()
        if not interrupted and val_loader is not None and state.batches_in_epoch and \
                state.validated_step != state.global_step:  # stopped mid-epoch (max_steps), not validated there yet
            val_accuracy = evaluate_now()
    bar.close()
    skipped = skipped_items_summary(dataset, val_set)  # data.skip_bad: images the workers could not decode
    if skipped:
        accelerator.print(skipped)
    save()
    model_dir = None
    if not interrupted:
        weights = accelerator.get_state_dict(model)  # every process takes part: FSDP gathers its shards here
        if accelerator.is_main_process:
            model_dir = save_final_model(accelerator.unwrap_model(model), tokenizer, config, out / MODEL_DIR, weights)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(out=out, model_dir=model_dir, global_step=state.global_step, interrupted=interrupted,
                       val_accuracy=val_accuracy, stop_signal=stop.signal, stopped_early=state.stopped_early)


# -- CLI ------------------------------------------------------------------------------------------
# flag -> (dotted config key, help); each flag is a shorthand for the override ``KEY=VALUE``.
_FLAGS = {
    "task": ("data.task", "a registered task (vlekit list --kind task): q2a / qa2r (VCR multiple choice) or vqa (VQA v2 layout), "
                          "or a plugin's; default q2a"),
    "train_annotations": ("data.train_annotations", "VCR train.jsonl (VQA: the training annotations JSON)"),
    "val_annotations": ("data.val_annotations", "VCR val.jsonl for the per-epoch accuracy (VQA: validation annotations JSON)"),
    "images": ("data.images", "the vcr1images folder (VQA: the training images)"),
    "tokenizer": ("data.tokenizer", "a hub name or folder, or auto (default: a word-level tokenizer built from the training text)"),
    "geometry": ("data.geometry", "how boxes follow the pixels: squash (default), letterbox, center-crop or vle-compat"),
    "compat": ("data.compat", "none (vlekit's preprocessing, default) or vle (the official VLE pipeline, exactly)"),
    "train_questions": ("data.train_questions", "VQA: the training questions JSON"),
    "val_questions": ("data.val_questions", "VQA: the validation questions JSON"),
    "val_images": ("data.val_images", "VQA: the validation images (default: --images)"),
    "image_pattern": ("data.image_pattern", "VQA: image file names, e.g. '{image_id}.png' (default: COCO's)"),
    "answers": ("data.answers", "VQA: an id2label JSON with the answer vocabulary (default: from the training answers)"),
    "text_encoder": ("model.text_encoder", "a registered text encoder (vlekit list --kind text_encoder); default tiny-deberta"),
    "vision_encoder": ("model.vision_encoder", "a registered vision encoder (vlekit list --kind vision_encoder); default tiny-clip"),
    "fusion": ("model.fusion", "a registered fusion (vlekit list --kind fusion); default tiny-co-attention"),
    "epochs": ("train.epochs", "passes over the training data (default 5, VLE's recipe)"),
    "batch_size": ("train.batch_size", "questions per optimizer step over all processes (default 128)"),
    "lr": ("train.lr", "peak learning rate of the encoders (default 1e-5; the fusion and head get 5x)"),
    "out": ("train.out", "the run folder (default runs/vcr); it must not hold another run"),
    "seed": ("train.seed", "seed of the weights, the data order and dropout (default 0)"),
    "keep": ("train.keep", "checkpoints to keep (default 2; 0 keeps all)"),
    "save_every_steps": ("train.save_every_steps", "a checkpoint every N optimizer steps (default 1000; 0: only at the end)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="experiment YAML (sections plugins, model, data, train)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-5 model.fusion=merged-attention")
    parser.add_argument("--resume", action="store_const", const="latest", help="continue from the newest checkpoint in --out")
    parser.add_argument("--resume-from", dest="resume", metavar="CHECKPOINT", help="continue from this checkpoint folder")
    parser.add_argument("--allow-changes", action="store_true",
                        help="resume with options that differ from the checkpoint's (batch, schedule, ...): not an "
                             "exact continuation; without it such a resume is refused, naming them")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an --out that holds a run (the old run is moved aside to OUT.replaced-TIME)")
    for flag, (key, help_text) in _FLAGS.items():
        parser.add_argument("--" + flag.replace("_", "-"), help=f"{help_text} [{key}]")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None,
                        help="recompute activations in the backward pass of every component: less memory, ~30%% slower")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs and batch jobs)")


def _flag_value(value: str) -> str:
    """A flag's value as an override: parsed as YAML (numbers, booleans) when it is a plain scalar,
    else quoted, so that ``--image-pattern {image_id}.png`` stays the string it is."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = None
    return value if parsed is not None and not isinstance(parsed, (dict, list)) else json.dumps(value)


def overrides_from_args(args: argparse.Namespace) -> list[str]:
    overrides = list(args.overrides)
    for flag, (key, _) in _FLAGS.items():
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={_flag_value(value)}")
    if args.gradient_checkpointing:
        overrides.append("train.gradient_checkpointing=true")
    return overrides


def run(args: argparse.Namespace) -> int:
    try:
        config = load_experiment(args.config, overrides_from_args(args))
    except (TypeError, ValueError, FileNotFoundError, LookupError, ImportError) as error:
        print(f"vlekit train: {error}", file=sys.stderr)
        return 2
    if config.model == VCRModelConfig() and config.train.init_from_vle is None:
        print(f"vlekit train: no model section: training the tiny random-init model of the tests and the demo "
              f"({config.model.text_encoder['name']} + {config.model.vision_encoder['name']} + "
              f"{config.model.fusion['name']}) with lr {config.train.lr:g}, batch {config.train.batch_size}. "
              f"Real fine-tuning: --config configs/vle-base-vcr-q2a.yaml; the demo's recipe: configs/demo-tiny.yaml",
              file=sys.stderr)
    moved = moved_run(args.config, config.train.out) if args.resume and args.out is None and not any(
        override.startswith("train.out=") for override in args.overrides) else None
    if moved is not None:  # without this, the resume would go on in (or start afresh at) the folder the run left
        print(f"vlekit train: {args.config} is the config of the run in {moved}, and names train.out {config.train.out}: "
              f"the run was moved or copied. Going on in {moved} (--out chooses another folder)", file=sys.stderr)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, out=str(moved)))
    resume_command = f"vlekit train --config {Path(config.train.out) / EXPERIMENT_FILE} --resume"
    try:
        result = train(config, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
                       allow_changes=args.allow_changes)
    except CheckpointSpaceError as error:
        print(f"vlekit train: {error}\n  resume with: {resume_command}", file=sys.stderr)
        return 1
    except TrainingOutOfMemory as error:
        print(f"vlekit train: {error}", file=sys.stderr)
        return 1
    except TrainingDiverged as error:
        if PartialState().is_main_process:
            from vlekit.evaluation.plots import save_training_curve

            curve = save_training_curve(RunFolder(Path(config.train.out)), title=f"{config.data.task} training (diverged)",
                                        task=config.data.task)
            print(f"vlekit train: {error}\n  the training curve up to it: {curve}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:  # the options did not fit the data, the processes, the run folder or the checkpoint
        print(f"vlekit train: {error}" + "".join(f"\n{note}" for note in getattr(error, "__notes__", ())), file=sys.stderr)
        return 2
    if result.interrupted:
        name = signal.Signals(result.stop_signal).name if result.stop_signal is not None else "a stop request"
        print(f"interrupted by {name} at step {result.global_step} (checkpoint saved); resume with: {resume_command}")
        return result.exit_code or 130
    if not PartialState().is_main_process:  # one picture per run, not per process
        return 0
    from vlekit.evaluation.plots import save_training_curve  # matplotlib: only for the command line's picture

    curve = save_training_curve(RunFolder(result.out), title=f"{config.data.task} training", task=config.data.task)
    early = " (stopped early: train.early_stopping_patience)" if result.stopped_early else ""
    print(f"done: {result.global_step} steps{early}, model in {result.model_dir}, curve {curve}")
    best = RunFolder(result.out).best_dir
    if config.train.save_best and (best / SELECTION_FILE).is_file():
        selected = json.loads((best / SELECTION_FILE).read_text())
        print(f"best validation score {selected['val_accuracy']:.3f} at step {selected['step']}: model in {best}")
    return 0
