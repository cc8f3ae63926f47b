"""``vlekit prep``: validate a VCR annotation file and cache its tokenized multiple-choice examples.

    vlekit prep --annotations vcr/val.jsonl --images vcr/vcr1images --task q2a \\
        --tokenizer microsoft/deberta-v3-base --out prepared/

writes ``prepared/val.q2a.npz`` (the examples, as flat arrays) and ``prepared/val.q2a.json`` (the
manifest: cache key, options, summary, ids). The key hashes the annotation file's contents, the
tokenizer's identity (name or path, class, vocabulary size) and every option, so a re-run with the
same inputs only says "cached". qa2r records without ``answer_label`` (the test split) give one
example per candidate answer. The preprocessing flags (``--compat``, ``--geometry``, ``--image-size``,
...) are derived from ``PreprocessConfig``'s fields. ``--compat vle`` caches what a fresh official
VLE pipeline gives on the file's records in file order (its name counter included). Bad input
exits with status 2 and the error message only.

``load_prepared(path)`` reads the examples back (a sequence of example dicts, see
``data_prep.preprocess``), ready for ``VCRDataset.from_prepared``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_prep.constants import COMPAT_MODES, GEOMETRY_MODES, NUM_CHOICES, TASKS
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.vcr import VCRFormatError, VCRRecords, read_vcr

__all__ = ["add_arguments", "run", "main", "load_prepared", "PreparedExamples"]

# Bump when the meaning of a prepared example changes, so stale caches are rebuilt.
FORMAT_VERSION = 1
_CHUNK = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vlekit prep`` options to ``parser``."""
    parser.add_argument("--annotations", required=True, type=Path, help="VCR annotation file (train/val/test.jsonl)")
    parser.add_argument(
        "--images", required=True, type=Path, help="the vcr1images folder (img_fn/metadata_fn are relative to it)"
    )
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="q2a (question -> answer) or qa2r (question + answer -> rationale)"
    )
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer name or local path")
    parser.add_argument("--out", required=True, type=Path, help="folder for the cached examples")
    for name, kwargs in _config_flags().items():
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    parser.add_argument(
        "--skip-bad", action="store_true", help="skip invalid records (reported in the summary) instead of stopping"
    )


# Choices of the string options of PreprocessConfig (the dataclass validates every value).
_CHOICES = {"compat": COMPAT_MODES, "geometry": GEOMETRY_MODES}


def _config_flags() -> dict[str, dict[str, Any]]:
    """``argparse`` options for every ``PreprocessConfig`` field but ``task`` (a required flag of its own)."""
    defaults = PreprocessConfig()
    flags: dict[str, dict[str, Any]] = {}
    for field in fields(PreprocessConfig):
        if field.name == "task":
            continue
        default = getattr(defaults, field.name)
        kwargs: dict[str, Any] = {"default": None}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif isinstance(default, tuple):
            kwargs.update(type=float, nargs=len(default), metavar=("R", "G", "B"))
        elif field.name in _CHOICES:
            kwargs["choices"] = _CHOICES[field.name]
        else:
            kwargs["type"] = int
        shown = "the mode's own" if field.name == "geometry" else default
        kwargs["help"] = f"PreprocessConfig.{field.name} (default: {shown})"
        flags[field.name] = kwargs
    return flags


def _config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    options = {name: getattr(args, name) for name in _config_flags() if getattr(args, name) is not None}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()}
    return PreprocessConfig(task=args.task, **options)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``vlekit prep``; returns the exit status (0 done or cached, 2 bad input)."""
    try:
        config = _config_from_args(args)
    except ValueError as exc:
        return _fail(f"invalid option: {exc}")
    if not args.annotations.is_file():
        return _fail(f"annotation file not found: {args.annotations}")
    if not args.images.is_dir():
        return _fail(f"images folder not found: {args.images} (expected the vcr1images folder)")
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    except (OSError, ValueError) as exc:
        return _fail(f"cannot load tokenizer {args.tokenizer!r}: {exc}")
    try:
        preprocessor = VCRPreprocessor(tokenizer, config=config, images_root=args.images)
    except ValueError as exc:  # a tokenizer without cls/sep/pad tokens
        return _fail(f"cannot use tokenizer {args.tokenizer!r}: {exc}")

    identity = {
        "format": FORMAT_VERSION,
        "annotations_sha256": _file_sha256(args.annotations),
        "tokenizer": {"name_or_path": args.tokenizer, "class": type(tokenizer).__name__, "vocab_size": len(tokenizer)},
        "config": asdict(config),
        "images": str(args.images.resolve()),
        "skip_bad": bool(args.skip_bad),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    npz_path, manifest_path = _paths(args.out, f"{args.annotations.stem}.{config.task}")
    if manifest_path.is_file():
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            manifest = {}  # unreadable manifest: prepare again
        if manifest.get("key") == key and npz_path.is_file():
            print(f"cached: {manifest_path} (key {key[:12]})")
            print(manifest["summary"])
            return 0

    try:
        records = read_vcr(args.annotations, images_root=args.images, skip_bad=args.skip_bad)
        examples = _prepare(preprocessor, records)
    except VCRFormatError as exc:
        return _fail(str(exc))

    summary = _summary(records, examples, config)
    args.out.mkdir(parents=True, exist_ok=True)
    _save(npz_path, manifest_path, examples, key=key, identity=identity, summary=summary)
    print(summary)
    print(f"saved: {npz_path} (key {key[:12]})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.prep ...``: the same as ``vlekit prep``."""
    parser = argparse.ArgumentParser(prog="vlekit prep", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _paths(out: Path, name: str) -> tuple[Path, Path]:
    """The examples (.npz) and manifest (.json) files of prepared set ``name`` (e.g. ``val.q2a``)."""
    return out / f"{name}.npz", out / f"{name}.json"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _prepare(preprocessor: VCRPreprocessor, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """All examples: one per record, or one per candidate answer for unlabeled qa2r records."""
    jobs: list[tuple[Mapping[str, Any], int | None]] = []
    for record in records:
        if preprocessor.config.task == "qa2r" and record.get("answer_label") is None:
            jobs += [(record, answer) for answer in range(NUM_CHOICES)]
        else:
            jobs.append((record, None))
    examples: list[dict[str, Any]] = []
    with tqdm(total=len(jobs), unit="ex", desc=f"prep {preprocessor.config.task}", disable=None) as progress:
        for start in range(0, len(jobs), _CHUNK):
            chunk = jobs[start : start + _CHUNK]
            examples += preprocessor.prepare_many([r for r, _ in chunk], answer_indices=[a for _, a in chunk])
            progress.update(len(chunk))
    return examples


def _summary(records: VCRRecords, examples: list[dict[str, Any]], config: PreprocessConfig) -> str:
    slots = np.array([len(ids) for example in examples for ids in example["object_ids"]], dtype=np.int64)
    empty = sum(not patches for example in examples for choice in example["object_patches"] for patches in choice)
    truncated = sum(t for example in examples for t in example["truncated"])
    expanded = len(examples) - len(records)
    expansion = f" ({expanded // (NUM_CHOICES - 1)} unlabeled records expanded over {NUM_CHOICES} answers)"
    mean, most = (slots.mean(), int(slots.max())) if slots.size else (0.0, 0)
    lines = [
        records.summary(),
        f"examples: {len(examples)} for {config.task}" + (expansion if expanded else ""),
        f"objects per choice: mean {mean:.2f}, max {most}",
        f"empty object patch sets: {empty} of {int(slots.sum())} slots "
        f"({config.geometry}, {config.image_size}/{config.patch_size})",
        f"truncated sequences: {truncated} of {len(examples) * NUM_CHOICES} (max_length {config.max_length})",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Storage: flat arrays, so a large split loads fast and shares memory well across workers
# ---------------------------------------------------------------------------------------------


def _save(
    npz_path: Path,
    manifest_path: Path,
    examples: list[dict[str, Any]],
    *,
    key: str,
    identity: dict[str, Any],
    summary: str,
) -> None:
    """Store examples as flat arrays: per sequence (example-major, C per example), per slot, per patch."""
    sequences = [ids for example in examples for ids in example["input_ids"]]
    tags = [t for example in examples for t in example["text_type_ids"]]
    slot_objects = [objs for example in examples for objs in example["object_ids"]]
    slot_patches = [p for example in examples for choice in example["object_patches"] for p in choice]
    arrays = {
        "sequence_lengths": np.array([len(s) for s in sequences], dtype=np.int64),
        "input_ids": np.fromiter((i for s in sequences for i in s), dtype=np.int32),
        "text_type_ids": np.fromiter((t for s in tags for t in s), dtype=np.int16),
        "slot_counts": np.array([len(o) for o in slot_objects], dtype=np.int64),
        "object_ids": np.fromiter((o for objs in slot_objects for o in objs), dtype=np.int32),
        "patch_counts": np.array([len(p) for p in slot_patches], dtype=np.int64),
        "patches": np.fromiter((i for p in slot_patches for i in p), dtype=np.int32),
        "truncated": np.array([e["truncated"] for e in examples], dtype=bool).reshape(-1, NUM_CHOICES),
        # -1 stands for None (no label; the gold answer in the query).
        "labels": np.array([_or_minus_one(e["label"]) for e in examples], dtype=np.int64),
        "answer_indices": np.array([_or_minus_one(e["answer_index"]) for e in examples], dtype=np.int64),
    }
    manifest = {
        "key": key,
        **identity,
        "summary": summary,
        "annot_ids": [e["annot_id"] for e in examples],
        "img_fns": [e["img_fn"] for e in examples],
    }
    # Write to temporary names and rename, manifest last: an interrupted run never leaves a cache
    # that looks complete.
    npz_tmp, manifest_tmp = Path(f"{npz_path}.tmp"), Path(f"{manifest_path}.tmp")
    with open(npz_tmp, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(npz_tmp, npz_path)
    manifest_tmp.write_text(json.dumps(manifest), encoding="utf-8")
    os.replace(manifest_tmp, manifest_path)


def _or_minus_one(value: int | None) -> int:
    return -1 if value is None else value


def _offsets(counts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.zeros(1, dtype=np.int64), np.cumsum(counts, dtype=np.int64)])


class PreparedExamples(Sequence):
    """Cached examples, read back: ``examples[i]`` is the example dict ``prepare_text`` gave.

    Kept as flat numpy arrays and turned into a dict on access, so a split of 200k examples takes
    little memory and DataLoader workers share it instead of copying millions of Python objects.

    Attributes:
        config: the preprocessing options it was prepared with (a dict of ``PreprocessConfig`` fields).
        manifest: the whole manifest (cache key, tokenizer identity, summary, ...).
    """

    def __init__(self, arrays: Mapping[str, np.ndarray], manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        self.config: dict[str, Any] = manifest["config"]
        self._arrays = dict(arrays)
        self._sequence_starts = _offsets(self._arrays["sequence_lengths"])
        self._slot_starts = _offsets(self._arrays["slot_counts"])
        self._patch_starts = _offsets(self._arrays["patch_counts"])

    def __len__(self) -> int:
        return len(self._arrays["labels"])

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} is out of range for {len(self)} prepared examples")
        index %= len(self)
        a = self._arrays
        input_ids, text_type_ids, object_ids, object_patches = [], [], [], []
        for row in range(index * NUM_CHOICES, (index + 1) * NUM_CHOICES):
            start, stop = self._sequence_starts[row], self._sequence_starts[row + 1]
            input_ids.append(a["input_ids"][start:stop].tolist())
            text_type_ids.append(a["text_type_ids"][start:stop].tolist())
            first_slot, last_slot = self._slot_starts[row], self._slot_starts[row + 1]
            object_ids.append(a["object_ids"][first_slot:last_slot].tolist())
            object_patches.append([
                a["patches"][self._patch_starts[slot] : self._patch_starts[slot + 1]].tolist()
                for slot in range(first_slot, last_slot)
            ])
        label, answer = int(a["labels"][index]), int(a["answer_indices"][index])
        return {
            "annot_id": self.manifest["annot_ids"][index],
            "img_fn": self.manifest["img_fns"][index],
            "label": None if label < 0 else label,
            "answer_index": None if answer < 0 else answer,
            "input_ids": input_ids,
            "text_type_ids": text_type_ids,
            "object_ids": object_ids,
            "object_patches": object_patches,
            "truncated": a["truncated"][index].tolist(),
        }

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return (self[i] for i in range(len(self)))


def load_prepared(path: str | Path) -> PreparedExamples:
    """Read examples cached by ``vlekit prep``.

    Args:
        path: the ``--out`` folder when it holds one prepared set, or a set's ``.json``/``.npz`` file.

    Raises:
        FileNotFoundError: nothing prepared there, or several sets in the folder (the message lists them).
    """
    path = Path(path)
    if path.is_dir():
        names = sorted(p.stem for p in path.glob("*.json") if _paths(path, p.stem)[0].is_file())
        if len(names) != 1:
            found = ", ".join(names) if names else "none"
            example = path / f"{names[0] if names else 'val.q2a'}.json"
            raise FileNotFoundError(
                f"{path} holds {len(names)} prepared sets ({found}); pass one set's file, e.g. {example}"
            )
        folder, name = path, names[0]
    elif path.suffix in (".json", ".npz"):
        folder, name = path.parent, path.stem
    else:
        raise FileNotFoundError(f"{path} is neither a prep --out folder nor a prepared .json/.npz file")
    npz_path, manifest_path = _paths(folder, name)
    if not (npz_path.is_file() and manifest_path.is_file()):
        raise FileNotFoundError(
            f"prepared set {folder / name} is incomplete: need both {npz_path.name} and {manifest_path.name}; "
            f"run vlekit prep again"
        )
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT_VERSION:
        raise ValueError(
            f"{manifest_path} has format {manifest.get('format')}, this vlekit reads {FORMAT_VERSION}: "
            f"run vlekit prep again"
        )
    with np.load(npz_path) as data:
        arrays = {k: data[k] for k in data.files}
    return PreparedExamples(arrays, manifest)


if __name__ == "__main__":
    sys.exit(main())
