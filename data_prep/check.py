"""``vlekit check-data``: validate a VCR annotation file and report what preprocessing makes of it.

    vlekit check-data --annotations vcr/val.jsonl --images vcr/vcr1images --task q2a \\
        --tokenizer microsoft/deberta-v3-base --geometry letterbox

reads every record (bad ones stop it, naming file, line, annotation id and field, or are counted with
``--skip-bad``), prepares every multiple-choice example as ``vlekit train`` and ``vlekit eval`` would,
and prints the statistics a run depends on: examples, objects per choice, empty object patch sets
under the geometry, truncated sequences under ``max_length``. It writes nothing: training and
evaluation prepare their text themselves, from the run's own options. qa2r records without
``answer_label`` (the test split) give one example per candidate answer. The preprocessing flags
(``--compat``, ``--geometry``, ``--image-size``, ...) are derived from ``PreprocessConfig``'s fields.
Bad input exits with status 2 and the error message only.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_prep.constants import COMPAT_MODES, GEOMETRY_MODES, NUM_CHOICES, TASKS
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.vcr import VCRFormatError, VCRRecords, read_vcr

__all__ = ["add_arguments", "run", "main"]

_CHUNK = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vlekit check-data`` options to ``parser``."""
    parser.add_argument("--annotations", required=True, type=Path, help="VCR annotation file (train/val/test.jsonl)")
    parser.add_argument(
        "--images", required=True, type=Path, help="the vcr1images folder (img_fn/metadata_fn are relative to it)"
    )
    parser.add_argument(
        "--task", required=True, choices=TASKS, help="q2a (question -> answer) or qa2r (question + answer -> rationale)"
    )
    parser.add_argument("--tokenizer", required=True, help="Hugging Face tokenizer name or local path")
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
    """Run ``vlekit check-data``; returns the exit status (0 checked, 2 bad input)."""
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
    try:
        records = read_vcr(args.annotations, images_root=args.images, skip_bad=args.skip_bad)
        statistics = _statistics(preprocessor, records)
    except VCRFormatError as exc:
        return _fail(str(exc))
    print(_summary(records, statistics, config))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m data_prep.check ...``: the same as ``vlekit check-data``."""
    parser = argparse.ArgumentParser(prog="vlekit check-data", description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def _statistics(preprocessor: VCRPreprocessor, records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Prepare every example (one per record, or one per candidate answer for unlabeled qa2r
    records) chunk by chunk, keeping only the counts: a train split's examples never sit in memory."""
    jobs: list[tuple[Mapping[str, Any], int | None]] = []
    for record in records:
        if preprocessor.config.task == "qa2r" and record.get("answer_label") is None:
            jobs += [(record, answer) for answer in range(NUM_CHOICES)]
        else:
            jobs.append((record, None))
    slots: list[int] = []  # referenced objects per (example, choice)
    empty = truncated = 0
    with tqdm(total=len(jobs), unit="ex", desc=f"check {preprocessor.config.task}", disable=None) as progress:
        for start in range(0, len(jobs), _CHUNK):
            chunk = jobs[start : start + _CHUNK]
            for example in preprocessor.prepare_many([r for r, _ in chunk], answer_indices=[a for _, a in chunk]):
                slots += [len(ids) for ids in example["object_ids"]]
                empty += sum(not patches for choice in example["object_patches"] for patches in choice)
                truncated += sum(example["truncated"])
            progress.update(len(chunk))
    return {"examples": len(jobs), "slots": np.array(slots, dtype=np.int64), "empty": empty, "truncated": truncated}


def _summary(records: VCRRecords, statistics: Mapping[str, Any], config: PreprocessConfig) -> str:
    examples, slots = statistics["examples"], statistics["slots"]
    expanded = examples - len(records)
    expansion = f" ({expanded // (NUM_CHOICES - 1)} unlabeled records expanded over {NUM_CHOICES} answers)"
    mean, most = (slots.mean(), int(slots.max())) if slots.size else (0.0, 0)
    lines = [
        records.summary(),
        f"examples: {examples} for {config.task}" + (expansion if expanded else ""),
        f"objects per choice: mean {mean:.2f}, max {most}",
        f"empty object patch sets: {statistics['empty']} of {int(slots.sum())} slots "
        f"({config.geometry}, {config.image_size}/{config.patch_size})",
        f"truncated sequences: {statistics['truncated']} of {examples * NUM_CHOICES} (max_length {config.max_length})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
