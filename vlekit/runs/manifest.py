"""Folder manifests: every file's size and SHA-256, written last, so an incomplete or corrupted folder is
recognised (training checkpoints, a run's final ``model/``)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

MANIFEST_FILE = "manifest.json"


def file_sha256(path: Path, *, sync: bool = False) -> str:
    """The SHA-256 of a file's bytes; ``sync``: and the file on disk first (before a manifest vouches for it)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
        if sync:
            os.fsync(handle.fileno())
    return digest.hexdigest()


def write_manifest(folder: Path) -> Path:
    """``folder/manifest.json``: size and SHA-256 of every other file in ``folder``. Written last: a
    folder without it, or whose files disagree with it, is incomplete."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_FILE)
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p, sync=True)} for p in files}
    path = folder / MANIFEST_FILE
    with path.open("w") as handle:
        json.dump({"files": entries}, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())
    return path


def folder_problem(folder: Path, *, skip: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` is not complete (no manifest, a file missing, truncated or changed),
    or ``None`` when every file matches its manifest; files whose path starts with one of ``skip``
    are not read (a reader that does not need them)."""
    manifest = folder / MANIFEST_FILE
    if not manifest.is_file():
        return f"no {MANIFEST_FILE} (it is written last: the save did not finish)"
    try:
        entries = json.loads(manifest.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        return f"unreadable {MANIFEST_FILE} ({error})"
    for name, entry in entries.items():
        if name.startswith(skip):  # str.startswith(()) is False: nothing skipped by default
            continue
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["bytes"]:
            return f"{name} has {size} bytes, the manifest says {entry['bytes']} (truncated or rewritten)"
        if file_sha256(path) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupted)"
    return None
