"""One run per run folder: ``vlekit train --out DIR`` claims DIR for one run and one process at a time.

* A folder that already holds a run (its ``config.yaml``, ``checkpoints/``, ``model/``, ``metrics.jsonl``
  or ``tokenizer/``) is refused unless ``--resume`` (continue that run) or ``--overwrite`` (start afresh:
  the old run is moved aside to ``DIR.replaced-<time>``, and the move is said). So checkpoints, the
  ``auto`` tokenizer, ``metrics.jsonl`` and ``model/`` of two runs never mix.
* ``DIR/.lock`` (the owner's PID, host and start time, created with ``O_EXCL``) keeps a second process
  out with a message naming the owner. The lock of a process that no longer runs on this host is taken
  over with a warning; one held from another host is refused (its liveness cannot be checked here).

The distributed processes of one run share the main process's claim: only the main process claims.
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import Any

from vlekit.runs.folder import CHECKPOINTS_DIR, EXPERIMENT_FILE, METRICS_FILE, MODEL_DIR, TOKENIZER_DIR

LOCK_FILE = ".lock"
RUN_ENTRIES = (EXPERIMENT_FILE, CHECKPOINTS_DIR, MODEL_DIR, METRICS_FILE, TOKENIZER_DIR)


class RunFolderError(ValueError):
    """The run folder cannot be used as asked (it holds another run, or another process runs in it)."""


def run_entries(out: Path) -> list[str]:
    """What of a run ``out`` holds (empty: no run there)."""
    return [name for name in RUN_ENTRIES if (out / name).exists()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _read_lock(path: Path) -> dict[str, Any] | None:
    try:
        owner = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except ValueError:  # cut short while being written: no owner can be named
        return {}
    return owner if isinstance(owner, dict) else {}


def running_owner(out: Path) -> dict[str, Any] | None:
    """The process training in ``out`` now (its lock's ``pid``, ``host``, ``started``), or ``None``. A lock
    held from another host counts as running: its process cannot be checked from here."""
    owner = _read_lock(out / LOCK_FILE)
    if not owner:
        return None
    pid = owner.get("pid")
    if owner.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        return None  # left by a process that was killed
    return owner


class RunLock:
    """``OUT/.lock`` held for the lifetime of one training process (a context manager)."""

    def __init__(self, out: Path) -> None:
        self.path = out / LOCK_FILE
        self.held = False

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(3):  # a stale lock is removed, then the exclusive create is tried again
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump(me, handle)
            self.held = True
            return self
        raise RunFolderError(f"{self.path}: could not take the run folder's lock (another process keeps taking it)")

    def _take_over_if_stale(self) -> None:
        owner = _read_lock(self.path)
        if owner is None:  # released meanwhile
            return
        pid, host = owner.get("pid"), owner.get("host")
        same_host = host == socket.gethostname()
        if isinstance(pid, int) and same_host and not _alive(pid):
            warnings.warn(f"{self.path}: taking over the lock of process {pid} (started {owner.get('started')}), "
                          f"which no longer runs", UserWarning, stacklevel=4)
            self.path.unlink(missing_ok=True)
            return
        if not owner:
            raise RunFolderError(f"{self.path} exists but names no owner; if no training runs in "
                                 f"{self.path.parent}, delete it and start again")
        where = "this host" if same_host else f"host {host}"
        raise RunFolderError(
            f"{self.path.parent} is in use by process {pid} on {where} (since {owner.get('started')}): two runs "
            f"cannot share a run folder. Wait for it, stop it, or choose another --out"
            + ("" if same_host else f"; if that process is gone, delete {self.path}")
        )

    def release(self) -> None:
        if self.held:
            owner = _read_lock(self.path)
            if owner and owner.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self if self.held else self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def claim_run_folder(out: Path, *, resume: bool, overwrite: bool, report=print) -> RunLock:
    """Lock ``out`` for this run, after checking that the run may use it.

    A fresh start needs a folder without a run, or ``overwrite`` (the old run is moved aside, after the
    lock has shown that no process uses it); ``resume`` continues the run that is there.
    """
    if resume and overwrite:
        raise RunFolderError("--resume continues the run in --out and --overwrite replaces it: choose one")
    out.mkdir(parents=True, exist_ok=True)
    lock = RunLock(out).acquire()
    found = run_entries(out)
    if not found or resume:
        return lock
    if not overwrite:
        lock.release()
        raise RunFolderError(
            f"{out} already holds a run ({', '.join(found)}). Continue it with --resume, start afresh with "
            f"--overwrite (train(..., overwrite=True) in Python; the old run is moved aside), or choose another --out"
        )
    aside = out.with_name(f"{out.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
    aside.mkdir()
    for entry in out.iterdir():
        if entry.name != LOCK_FILE:
            entry.rename(aside / entry.name)
    report(f"--overwrite: moved the previous run in {out} to {aside}")
    return lock
