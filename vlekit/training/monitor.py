"""What the training loop logs and watches: the log window (loss, questions/s, data time), ``metrics.jsonl``,
divergence (weights that became NaN or inf stop the run before anything of them is saved) and running out of
memory (the run saved as it stood after its last whole step, and the resume that fits printed).

A learning rate too high for the model, or fp16 overflowing, turns the weights into NaN in one step; the
loop would go on, validate at chance (every prediction choice A), overwrite its good checkpoints with NaN
ones and write a ``model/`` that scores nothing. :class:`DivergenceGuard` checks the trainable weights at
every log step and before every save (one host synchronisation each time, never per step), and raises
:class:`TrainingDiverged` naming the steps, the learning rate and the newest checkpoint saved before,
with the command that goes on from it at a lower rate.
"""
from __future__ import annotations

import gc
import json
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import torch
from accelerate import Accelerator

from vlekit.runs.experiment import ExperimentConfig
from vlekit.runs.folder import EXPERIMENT_FILE, STATE_FILE, latest_checkpoint, nonfinite_weights
from vlekit.training.checkpoints import TrainerState


class LogWindow:
    """Loss, questions/s and data-loading share since the last log line; the loss stays on the
    device between log lines, so the training step never waits on the host. A non-finite loss (fp16
    loss scaling skips such steps) is counted, not averaged in."""

    def __init__(self, accelerator: Accelerator) -> None:
        self.accelerator = accelerator
        self.totals = torch.zeros(2, device=accelerator.device)  # sum of the finite losses, non-finite losses
        self.norms = torch.zeros(2, device=accelerator.device)  # sum and max of the steps' gradient norms
        self._reset()

    def _reset(self) -> None:
        self.totals.zero_()
        self.norms.zero_()
        self.batches, self.norm_steps, self.questions, self.data_time = 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def timed(self, loader: Iterable[Any], *, on_error: Callable[[Exception], None] | None = None) -> Iterator[Any]:
        """Iterate ``loader``, adding the time spent waiting for each batch to the data time. ``on_error``: called
        with what the loader raised (a worker killed, an unreadable file) before it goes on up."""
        iterator = iter(loader)
        while True:
            fetch = time.perf_counter()
            try:
                batch = next(iterator)
            except StopIteration:
                return
            except Exception as error:
                if on_error is not None:
                    on_error(error)
                raise
            self.data_time += time.perf_counter() - fetch
            yield batch

    def add(self, loss: torch.Tensor, *, questions: int) -> None:
        loss = loss.detach().float()
        finite = torch.isfinite(loss)
        self.totals += torch.stack([torch.where(finite, loss, 0.0), (~finite).float()])
        self.batches += 1
        self.questions += questions * self.accelerator.num_processes

    def add_gradient_norm(self, norm: torch.Tensor) -> None:
        """An optimizer step's gradient norm (before clipping, over every process: what ``clip_grad_norm_`` returns)."""
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # FSDP2: a DTensor
        norm = norm.detach().float()
        self.norms.copy_(torch.stack([self.norms[0] + norm, torch.maximum(self.norms[1], norm)]))
        self.norm_steps += 1

    def flush(self, **fields: Any) -> dict[str, Any]:
        """The window's record (``loss``: the mean of its finite losses over every process; NaN when none
        was; ``nonfinite_losses`` when some were not; ``grad_norm`` / ``grad_norm_max``: the mean and the largest
        gradient norm of its optimizer steps, when they were clipped), and a new window."""
        elapsed = time.perf_counter() - self.start
        loss_sum, nonfinite = self.accelerator.reduce(self.totals.clone(), reduction="sum").tolist()
        finite = self.batches * self.accelerator.num_processes - nonfinite
        record = {**fields, "loss": loss_sum / finite if finite else float("nan"),
                  "questions_per_s": self.questions / elapsed, "data_time_fraction": self.data_time / elapsed}
        if self.norm_steps:  # the same on every process: the norm is of the synchronised gradients
            norm_sum, norm_max = self.norms.tolist()
            record.update(grad_norm=norm_sum / self.norm_steps, grad_norm_max=norm_max)
        if nonfinite:
            record["nonfinite_losses"] = int(nonfinite)
        if self.accelerator.device.type == "cuda":  # since the run started (this process's GPU)
            record["peak_memory_gib"] = torch.cuda.max_memory_allocated(self.accelerator.device) / 2**30
        self._reset()
        return record


class MetricsLog:
    """Appends JSON lines to ``metrics.jsonl`` (main process only)."""

    def __init__(self, path: Path, *, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, **record: Any) -> None:
        if self.enabled:
            with self.path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")

    def rewind(self, state: TrainerState) -> None:
        """Keep only what happened up to ``state`` (the checkpoint a run resumes from): the lines of
        the steps a killed run did after its last checkpoint are logged again by the resumed one."""
        if not (self.enabled and self.path.is_file()):
            return
        if state.global_step == 0:  # a fresh start: nothing before it belongs to this run
            self.path.unlink()
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if "val_accuracy" in record:
                if record["epoch"] <= state.epoch:
                    kept.append(line)
            elif record.get("step", 0) <= state.global_step:
                kept.append(line)
        self.path.write_text("".join(line + "\n" for line in kept))


class TrainingDiverged(RuntimeError):
    """The weights became NaN or inf; nothing was saved after the last step they were checked finite."""

    def __init__(self, message: str, *, step: int, last_finite_step: int | None, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.last_finite_step, self.checkpoint = step, last_finite_step, checkpoint


class DivergenceGuard:
    """Checks that the trainable weights are finite on every process (one reduction, at log steps and before
    saves); raises :class:`TrainingDiverged` when they are not, after writing a ``diverged`` line to the log."""

    def __init__(self, accelerator: Accelerator, model: torch.nn.Module, out: Path, *, log: MetricsLog,
                 mixed_precision: str, peak_lr: float) -> None:
        self.accelerator, self.model, self.out, self.log = accelerator, model, out, log
        self.mixed_precision, self.peak_lr = mixed_precision, peak_lr
        self.last_finite_step: int | None = None
        self.nonfinite_losses = 0  # since the last check

    def note(self, record: dict[str, Any]) -> None:
        """Count the non-finite losses of a log window (``LogWindow.flush``'s record)."""
        self.nonfinite_losses += record.get("nonfinite_losses", 0)

    def check(self, step: int, *, lr: float | None, resumed_from: Path | None = None) -> None:
        """Raise :class:`TrainingDiverged` if a trainable weight is NaN or inf at ``step`` (``resumed_from``:
        the weights were just loaded from this checkpoint)."""
        if self.last_finite_step == step:
            return
        bad = nonfinite_weights((name, p) for name, p in self.model.named_parameters() if p.requires_grad)
        count = int(self.accelerator.reduce(torch.tensor(float(len(bad)), device=self.accelerator.device),
                                            reduction="sum").item())
        if count == 0:
            self.last_finite_step, self.nonfinite_losses = step, 0
            return
        self.log.write(step=step, diverged=True, nonfinite_weights=count, last_finite_step=self.last_finite_step)
        shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
        config, lower = self.out / EXPERIMENT_FILE, f"train.lr={self.peak_lr / 10:g}"
        if resumed_from is not None:  # saved by a vlekit that did not check, or edited
            raise TrainingDiverged(
                f"{resumed_from} holds NaN or inf in {count} trainable weight tensors (e.g. {shown}): the run had "
                f"diverged before that checkpoint was saved. Resume from an earlier one of {resumed_from.parent} with a "
                f"lower learning rate (vlekit train --config {config} --resume-from EARLIER --allow-changes "
                f"{lower}), or start again (--overwrite)", step=step, last_finite_step=None, checkpoint=None)
        checkpoint = latest_checkpoint(self.out, report=lambda message: None)
        since = (f"between step {self.last_finite_step} (the last check that found them finite) and step {step}"
                 if self.last_finite_step is not None else f"by step {step}")
        rate = f" (learning rate {lr:.3g} of train.lr {self.peak_lr:g})" if lr is not None else ""
        losses = (f"; {self.nonfinite_losses} training loss{'es were' if self.nonfinite_losses > 1 else ' was'} NaN / inf "
                  f"meanwhile" if self.nonfinite_losses else "")
        fp16 = (" fp16 overflows where bf16 does not: train.mixed_precision=bf16 (or fp32) avoids that."
                if self.mixed_precision == "fp16" else "")
        way_on = (f"The newest checkpoint, saved before, is {checkpoint}: go on from it with a lower learning rate "
                  f"(vlekit train --config {config} --resume-from {checkpoint} --allow-changes {lower}; the new rate "
                  f"applies from there)" if checkpoint is not None else
                  f"No checkpoint was saved before: start again with a lower learning rate (vlekit train --config "
                  f"{config} --overwrite {lower})")
        raise TrainingDiverged(
            f"training diverged: {count} trainable weight tensors (e.g. {shown}) became NaN or inf {since}{rate}{losses}. "
            f"Nothing was saved after the weights were last found finite.{fp16} {way_on}.",
            step=step, last_finite_step=self.last_finite_step, checkpoint=checkpoint)


class TrainingOutOfMemory(RuntimeError):
    """A training step ran out of device memory; ``checkpoint``: where the run can go on from (None: nowhere yet)."""

    def __init__(self, message: str, *, step: int, checkpoint: Path | None) -> None:
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint


def save_last_whole_step(*, accelerator: Accelerator, optimizer: Any, state: TrainerState, config: ExperimentConfig,
                         save: Callable[[], Path]) -> Path | None:
    """After a failure in the middle of an optimizer step: the run as it stood after its last whole step, saved
    (``save``; the micro-batches of the unfinished step are trained on again when it goes on). One process only:
    several can no longer agree on a save (``None``)."""
    optimizer.zero_grad(set_to_none=True)  # the unfinished step's gradients
    state.batches_in_epoch -= state.batches_in_epoch % config.train.gradient_accumulation_steps
    accelerator.step = 0  # a step of micro-batches starts at that place
    return save() if accelerator.num_processes == 1 else None


def note_data_failure(error: Exception, *, accelerator: Accelerator, optimizer: Any, state: TrainerState,
                      config: ExperimentConfig, save: Callable[[], Path]) -> None:
    """The data loader failed (a worker killed for memory, a file gone or unreadable on a network disk): the run is
    saved as it stood after its last whole step, and ``error`` gets a note saying where and how to go on."""
    out = Path(config.train.out)
    newest = latest_checkpoint(out, report=lambda message: None)
    try:
        if newest is not None and json.loads((newest / STATE_FILE).read_text())["global_step"] == state.global_step \
                and not state.batches_in_epoch % config.train.gradient_accumulation_steps:
            saved = newest  # just saved at this step
        else:
            saved = save_last_whole_step(accelerator=accelerator, optimizer=optimizer, state=state, config=config,
                                         save=save)
    except Exception as failed:  # noqa: BLE001 (the data error is the one to report)
        error.add_note(f"vlekit train: the run could not be saved after it ({type(failed).__name__}: {failed})")
        return
    where = (f"the run was saved as it stood after step {state.global_step}, its last whole step: {saved}" if saved else
             f"the newest checkpoint is {newest}" if newest is not None else "no checkpoint was saved yet")
    error.add_note(f"vlekit train: loading the training data failed in step {state.global_step + 1}; {where}. Once the "
                   f"data can be read again (data.skip_bad=true leaves out images that cannot be decoded), go on with: "
                   f"vlekit train --config {out / EXPERIMENT_FILE} --resume")


def stop_out_of_memory(error: str, *, accelerator: Accelerator, optimizer: Any, state: TrainerState,
                       config: ExperimentConfig, save: Callable[[], Path]) -> NoReturn:
    """A training step ran out of memory (``error``: its text): one process saves the run as it stood after its last
    whole optimizer step (``save``; the micro-batches of the unfinished step are trained on again when it goes on),
    then raises :class:`TrainingOutOfMemory` with the resume that fits: the same global batch in smaller micro-batches
    (``gradient_accumulation_steps`` may change on a resume), or gradient checkpointing. Several processes can no
    longer agree on a save: the newest checkpoint is named instead."""
    train, processes = config.train, accelerator.num_processes
    out, step = Path(train.out), state.global_step + 1
    gc.collect()
    if accelerator.device.type == "cuda":
        torch.cuda.empty_cache()
    saved = save_last_whole_step(accelerator=accelerator, optimizer=optimizer, state=state, config=config, save=save)
    where = str(accelerator.device)
    if accelerator.device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(accelerator.device) / 2**30
        total = torch.cuda.get_device_properties(accelerator.device).total_memory / 2**30
        where += f" (peak {peak:.1f} GiB allocated of {total:.1f} GiB)"
    checkpoint = saved or latest_checkpoint(out, report=lambda message: None)
    stands = (f"a checkpoint of step {step - 1}, the last whole step, was saved: {saved}" if saved is not None else
              f"the newest checkpoint is {checkpoint}" if checkpoint is not None else "no checkpoint was saved yet")
    if processes > 1:
        stands = f"process {accelerator.process_index} of {processes} (the others stop with it); {stands}"
    accumulation, batch = train.gradient_accumulation_steps, train.batch_size
    fits = [a for a in range(accumulation + 1, batch // processes + 1) if batch % (a * processes) == 0]
    command = f"vlekit train --config {out / EXPERIMENT_FILE} " + ("--resume" if checkpoint is not None else "--overwrite")
    ways = []
    if fits:
        ways.append(f"in micro-batches of {batch // (fits[0] * processes)} at the same global batch of {batch} (the same "
                    f"run): {command} train.gradient_accumulation_steps={fits[0]}")
    parts = (config.model.text_encoder, config.model.vision_encoder, config.model.fusion)
    if not (train.gradient_checkpointing or all(part.get("gradient_checkpointing") for part in parts)):
        ways.append(f"recomputing activations in the backward pass (about 30% slower): {command} --gradient-checkpointing")
    advice = (" Go on " + "; or ".join(ways) + ".") if ways else \
        " Each process trains on one question at a time with gradient checkpointing already: a smaller model or image size is needed."
    first_line = error.strip().splitlines()[0] if error.strip() else "out of memory"
    raise TrainingOutOfMemory(
        f"out of memory on {where} in step {step} (micro-batches of {batch // (accumulation * processes)} questions): "
        f"{stands}.{advice} The error: {first_line}", step=step, checkpoint=checkpoint)
