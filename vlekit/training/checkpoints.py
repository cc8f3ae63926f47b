"""Checkpoints of a training run: atomic, manifest-verified saves and the choice of which one to resume.

A save writes accelerate state (model, optimizer, scheduler, RNG), ``trainer_state.json`` and the
config to ``step-N.tmp``, then ``manifest.json`` (every file's size and SHA-256, written last), and
renames the folder to ``step-N``: a kill at any moment, even SIGKILL in the middle of a save, never
leaves a half-written ``step-N``. ``resume_checkpoint`` picks the newest checkpoint whose files match
its manifest (reporting each incomplete one it skips), or checks the one ``--resume-from`` names.
"""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from data_prep.options import RUN_OPTIONS, saved_run_options
from vlekit.runs.experiment import ExperimentConfig, flat_options
from vlekit.runs.manifest import MANIFEST_FILE, folder_problem, write_manifest
from vlekit.runs.folder import (
    CHECKPOINTS_DIR, EXPERIMENT_FILE, STATE_FILE, checkpoint_dirs, latest_checkpoint, read_yaml_file, write_model_companions,
)
from vlekit.model import VCRModel
# Test hook: with VLEKIT_TEST_STALL_IN_CHECKPOINT=N the save of step N stops for ten minutes after
# writing every file but the manifest, so a test can SIGKILL a run in the middle of a save.
STALL_ENV = "VLEKIT_TEST_STALL_IN_CHECKPOINT"


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    global_step: int = 0  # optimizer steps
    best_score: float | None = None  # the best validation score so far, and its step
    best_step: int | None = None
    validations_since_best: int = 0  # train.early_stopping_patience counts these
    stopped_early: bool = False  # a resume of a run that stopped early does not train on
    validated_step: int | None = None  # the step of the last validation (a resumed finished run does not repeat it)

    def record_validation(self, score: float, *, patience: int) -> bool:
        """Note a validation ``score`` at the current step; whether it is the run's best so far (the first of
        equal scores stays the best). ``patience`` validations in a row without one set ``stopped_early`` (0: never)."""
        self.validated_step = self.global_step
        if self.best_score is None or score > self.best_score:
            self.best_score, self.best_step, self.validations_since_best = score, self.global_step, 0
            return True
        self.validations_since_best += 1
        self.stopped_early = self.stopped_early or bool(patience and self.validations_since_best >= patience)
        return False


def _remove_checkpoint(folder: Path) -> None:
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # first: a removal cut short leaves an incomplete folder
    shutil.rmtree(folder)


class CheckpointSpaceError(OSError):
    """The disk filled up during a save: the incomplete folder is gone and the last complete checkpoint kept."""


def replace_folder(tmp: Path, final: Path) -> Path:
    """Put the complete folder ``tmp`` in place of ``final``: a ``final`` already there is moved aside
    first and removed only once ``tmp`` is in place, so a kill never leaves neither."""
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
    return final


def _prune(out: Path, keep: int, *, besides: Path | None = None) -> None:
    """Remove the oldest checkpoints until ``keep`` remain (``besides``: not counted, not removed)."""
    others = [folder for folder in checkpoint_dirs(out) if folder != besides]
    for stale in others[: -keep] if keep > 0 else others:
        _remove_checkpoint(stale)


def save_checkpoint(accelerator: Accelerator, out: Path, state: TrainerState, config: ExperimentConfig, *,
                    model: VCRModel, tokenizer: Any) -> Path:
    """Write accelerate state + trainer state + config to ``step-N.tmp``, with what loads the model on its
    own (``model``'s resolved config, the ``tokenizer``, the preprocessing: ``vlekit eval`` takes the
    folder as it takes ``model/``), then the manifest, then rename it to ``step-N``; keep the newest
    ``train.keep``. A kill at any point leaves the previous complete checkpoints intact (a ``step-N`` saved again is moved aside, not deleted, until the new one is in place).

    With ``keep >= 2`` the oldest checkpoints are pruned to ``keep - 1`` before the save, so a full disk
    cannot fail every resume at the same save; a save the disk cannot hold removes its incomplete folder
    and raises :class:`CheckpointSpaceError` (the newest complete checkpoint stays, to resume from).
    """
    keep = config.train.keep
    final = out / CHECKPOINTS_DIR / f"step-{state.global_step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        if keep >= 2:
            _prune(out, keep - 1, besides=final)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()  # every process has written its files (e.g. its RNG state)
        if accelerator.is_main_process:
            (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
            config.save(tmp / EXPERIMENT_FILE)
            model.save_config(tmp)
            write_model_companions(tmp, model, tokenizer, config.data.preprocess_options())
            if os.environ.get(STALL_ENV) == str(state.global_step):
                time.sleep(600)
            write_manifest(tmp)
            replace_folder(tmp, final)
            if keep > 0:
                _prune(out, keep)
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        complete = latest_checkpoint(out, report=lambda message: None)
        raise CheckpointSpaceError(
            error.errno, f"no space left on the device of {out} while saving checkpoint step {state.global_step} "
            f"({error.strerror}); the incomplete save was removed. "
            + (f"The newest complete checkpoint is {complete}: free space (or lower train.keep), then resume "
               f"with --resume." if complete is not None else "No complete checkpoint exists yet: free space and start again.")
        ) from error
    accelerator.wait_for_everyone()
    return final


def resume_checkpoint(resume: str | None, out: Path, *, report: Callable[[str], None] = print) -> Path | None:
    """The checkpoint ``--resume`` (``"latest"``) or ``--resume-from FOLDER`` names, checked against its
    manifest; ``None`` for a fresh start (no resume, or no complete checkpoint in ``out`` yet)."""
    if resume is None:
        return None
    if resume != "latest":
        folder = Path(resume)
        problem = folder_problem(folder) if folder.is_dir() else "not a folder"
        if problem is not None:
            raise ValueError(f"--resume-from {folder}: not a complete checkpoint: {problem}")
        return folder
    folder = latest_checkpoint(out, report=report)
    if folder is None:
        report(f"--resume: no complete checkpoint in {out / CHECKPOINTS_DIR}; starting from step 0")
    return folder


def options_as_started(config: ExperimentConfig, checkpoint: Path, *, report: Callable[[str], None] = print
                       ) -> ExperimentConfig:
    """``config`` with the preprocessing options the ``checkpoint``'s run did not record (it was saved before
    they existed) set as that run was fed (``data_prep.options.saved_run_options``): a resumed run goes on
    with the inputs it started with, not with a newer default."""
    saved = (read_yaml_file(checkpoint / EXPERIMENT_FILE) or {}).get("data") or {}
    filled = saved_run_options({**saved, "task": config.data.pipeline_task()})
    changes = {name: filled[name] for name in sorted(filled.keys() - saved.keys())
               if name in RUN_OPTIONS and getattr(config.data, name) != filled[name]}
    if not changes:
        return config
    shown = ", ".join(f"data.{name}={value}" for name, value in changes.items())
    report(f"{checkpoint} was saved before these options existed: going on as the run started, {shown}")
    return dataclasses.replace(config, data=dataclasses.replace(config.data, **changes))


# What a resumed run may change without changing what it computes: where things are, how often it logs,
# checkpoints and validates, what it keeps, the device and speed options (gradient accumulation too: with the same
# train.batch_size it splits the same optimizer steps otherwise, as another number of processes does; and
# data.tokenizer: a resume takes the tokenizer its checkpoint holds). Any other option differing from the
# checkpoint's config.yaml would make the resumed run something else than the one that was started.
FREE_ON_RESUME = frozenset({
    "plugins", "train.out", "train.save_every_steps", "train.keep", "train.log_every_steps", "train.eval_every_epochs",
    "train.report_to", "train.save_best", "train.early_stopping_patience", "train.cpu", "train.compile",
    "train.gradient_checkpointing", "train.gradient_accumulation_steps", "data.tokenizer", "data.num_workers",
    "data.skip_bad", "data.train_annotations", "data.val_annotations", "data.images", "data.train_questions",
    "data.val_questions", "data.val_images",
})


def resume_changes(config: ExperimentConfig, checkpoint: Path) -> tuple[dict[str, tuple], dict[str, tuple]]:
    """How ``config`` (as built: the model section is ``model.config``) differs from the ``checkpoint``'s
    ``config.yaml``: ``(changes, free)``, each ``{option: (then, now)}``; ``free``: those in ``FREE_ON_RESUME``
    (and any component's ``gradient_checkpointing``). An option the checkpoint does not record (it predates
    the option) is not a change."""
    then = flat_options(read_yaml_file(checkpoint / EXPERIMENT_FILE) or {})
    now = flat_options(config.to_dict())
    differing = {key: (then[key], now.get(key)) for key in sorted(then) if then[key] != now.get(key)}
    free = {key for key in differing if key in FREE_ON_RESUME or key.endswith(".gradient_checkpointing")}
    return ({k: v for k, v in differing.items() if k not in free}, {k: v for k, v in differing.items() if k in free})


def _listed(changes: dict[str, tuple]) -> str:
    return "; ".join(f"{key}: {then!r} -> {now!r}" for key, (then, now) in changes.items())


def check_resume_changes(config: ExperimentConfig, checkpoint: Path, *, allow: bool,
                         report: Callable[[str], None] = print) -> None:
    """Refuse to resume from ``checkpoint`` with options that change what the run computes (the batch, the
    schedule, the model, the data pipeline...) unless ``allow``; the changes are reported either way."""
    changes, free = resume_changes(config, checkpoint)
    if changes and not allow:
        run = checkpoint.parent.parent
        raise ValueError(
            f"--resume continues the run in {run} as it started, but these options differ from its checkpoint "
            f"{checkpoint.name}: {_listed(changes)}. Resume with the run's own config (vlekit train --config "
            f"{run / EXPERIMENT_FILE} --resume), start afresh (--overwrite), or go on with the new values, no longer "
            f"an exact continuation (--allow-changes; train(..., allow_changes=True))")
    if changes:
        report(f"resuming with changed options (--allow-changes): {_listed(changes)}")
    if free:
        report(f"resuming with: {_listed(free)}")


def resumed_position(state: TrainerState, checkpoint: Path, config: ExperimentConfig, *,
                     report: Callable[[str], None] = print) -> TrainerState:
    """``state`` with its place in the epoch (``batches_in_epoch``: micro-batches of each process) counted in this
    run's micro-batches when the checkpoint's run cut its optimizer steps otherwise (another
    ``gradient_accumulation_steps`` or, with ``--allow-changes``, another ``batch_size``). The number of processes
    does not matter: each process's micro-batches cover ``batch_size / gradient_accumulation_steps`` questions of the
    epoch whatever it is. A place between two of this run's optimizer steps goes back to the one before; the
    questions in between are seen again, and reported."""
    then = (read_yaml_file(checkpoint / EXPERIMENT_FILE) or {}).get("train") or {}
    now = config.train
    then_batch = then.get("batch_size", now.batch_size)
    then_accumulation = then.get("gradient_accumulation_steps", now.gradient_accumulation_steps)
    if (then_batch, then_accumulation) == (now.batch_size, now.gradient_accumulation_steps) or not state.batches_in_epoch:
        return state
    questions = state.batches_in_epoch * then_batch // then_accumulation
    steps, again = divmod(questions, now.batch_size)
    position = steps * now.gradient_accumulation_steps
    report(f"{checkpoint.name} stands {questions} questions into epoch {state.epoch} ({state.batches_in_epoch} "
           f"micro-batches of {then_batch // then_accumulation} questions over all processes); going on from micro-batch "
           f"{position} of {now.batch_size // now.gradient_accumulation_steps}"
           + (f": the last {again} of those questions are trained on again" if again else ""))
    return dataclasses.replace(state, batches_in_epoch=position)
