"""Checkpoints of a training run: atomic, manifest-verified saves and the choice of which one to resume.

A save writes accelerate state (model, optimizer, scheduler, RNG), ``trainer_state.json`` and the
config to ``step-N.tmp``, then ``manifest.json`` (every file's size and SHA-256, written last), and
renames the folder to ``step-N``: a kill at any moment, even SIGKILL in the middle of a save, never
leaves a half-written ``step-N``. ``resume_checkpoint`` picks the newest checkpoint whose files match
its manifest (reporting each incomplete one it skips), or checks the one ``--resume-from`` names.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator

from vlekit.experiment import ExperimentConfig
from vlekit.run_folder import CHECKPOINTS_DIR, EXPERIMENT_FILE

STATE_FILE = "trainer_state.json"
MANIFEST_FILE = "manifest.json"
# Test hook: with VLEKIT_TEST_STALL_IN_CHECKPOINT=N the save of step N stops for ten minutes after
# writing every file but the manifest, so a test can SIGKILL a run in the middle of a save.
STALL_ENV = "VLEKIT_TEST_STALL_IN_CHECKPOINT"
_CHECKPOINT_NAME = re.compile(r"step-(\d+)")


@dataclass
class TrainerState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches of the current epoch already consumed
    global_step: int = 0  # optimizer steps


def checkpoint_dirs(out: Path) -> list[Path]:
    """The ``step-N`` folders under ``out/checkpoints``, oldest first (complete or not; see
    ``checkpoint_problem``). Unfinished ``step-N.tmp`` and replaced ``step-N.old`` folders are not listed."""
    folder = out / CHECKPOINTS_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _CHECKPOINT_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        os.fsync(handle.fileno())  # on disk before the manifest vouches for it
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """``folder/manifest.json``: size and SHA-256 of every other file in ``folder``. Written last: a
    checkpoint folder without it, or whose files disagree with it, is incomplete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    path = folder / MANIFEST_FILE
    with path.open("w") as handle:
        json.dump({"files": entries}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def checkpoint_problem(folder: Path) -> str | None:
    """Why ``folder`` is not a complete checkpoint (no manifest, a file missing, truncated or changed),
    or ``None`` when every file matches its manifest."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return f"no {MANIFEST_FILE} (it is written last: the save did not finish)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST_FILE} ({error})"
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, the manifest says {entry['bytes']} (truncated or rewritten)"
        if _sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupted)"
    return None


def _remove_checkpoint(folder: Path) -> None:
    (folder / MANIFEST_FILE).unlink(missing_ok=True)  # first: a removal cut short leaves an incomplete folder
    shutil.rmtree(folder)


def save_checkpoint(accelerator: Accelerator, out: Path, state: TrainerState, config: ExperimentConfig) -> Path:
    """Write accelerate state + trainer state + config to ``step-N.tmp``, then the manifest, then rename
    it to ``step-N``; keep the newest ``train.keep``. A kill at any point leaves the previous complete
    checkpoints intact (a ``step-N`` saved again is moved aside, not deleted, until the new one is in place)."""
    final = out / CHECKPOINTS_DIR / f"step-{state.global_step:07d}"
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every process has written its files (e.g. its RNG state)
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(dataclasses.asdict(state)))
        config.save(tmp / EXPERIMENT_FILE)
        if os.environ.get(STALL_ENV) == str(state.global_step):
            time.sleep(600)
        write_manifest(tmp)
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(tmp, final)
        if old.exists():
            shutil.rmtree(old)
        for stale in checkpoint_dirs(out)[: -config.train.keep] if config.train.keep > 0 else []:
            _remove_checkpoint(stale)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(out: Path, *, report: Callable[[str], None] = print) -> Path | None:
    """The newest complete checkpoint under ``out``; each newer incomplete one is skipped and reported."""
    for folder in reversed(checkpoint_dirs(out)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        report(f"skipping incomplete checkpoint {folder}: {problem}")
    return None


def resume_checkpoint(resume: str | None, out: Path, *, report: Callable[[str], None] = print) -> Path | None:
    """The checkpoint ``--resume`` (``"latest"``) or ``--resume-from FOLDER`` names, checked against its
    manifest; ``None`` for a fresh start (no resume, or no complete checkpoint in ``out`` yet)."""
    if resume is None:
        return None
    if resume != "latest":
        folder = Path(resume)
        problem = checkpoint_problem(folder) if folder.is_dir() else "not a folder"
        if problem is not None:
            raise ValueError(f"--resume-from {folder}: not a complete checkpoint: {problem}")
        return folder
    folder = latest_checkpoint(out, report=report)
    if folder is None:
        report(f"--resume: no complete checkpoint in {out / CHECKPOINTS_DIR}; starting from step 0")
    return folder
