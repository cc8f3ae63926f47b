"""``vlekit check-data``: validate a VCR split (records, images, boxes) and report what preprocessing makes of it.

    vlekit check-data --annotations vcr/val.jsonl --images vcr/vcr1images --run runs/vcr [--decode]
    vlekit check-data --annotations vcr/val.jsonl --images vcr/vcr1images --task q2a \\
        --tokenizer microsoft/deberta-v3-base --geometry letterbox

``--run`` takes the tokenizer, task and preprocessing (image size, patch grid, geometry, ...) of a
trained run from its folder; ``--tokenizer auto`` builds the word-level tokenizer training builds (here
from the checked annotations).

checks every record (format, bytes that are not UTF-8), opens every image (header and size, without
decoding; ``--decode`` decodes them fully, which is what finds a truncated JPEG), compares its size
with the metadata's ``width``/``height`` and checks every object's box (``data_prep.preflight``, whose
docstring gives the policy: boxes are in the metadata's frame, the upright image after its EXIF
orientation; boxes slightly out of the image are clipped with a warning). It prints a count per kind
of problem, then the first ``--max-problems`` problems, each with ``annotation_file:line``.

Then it prepares every multiple-choice example of the records without errors as ``vlekit train``
and ``vlekit eval`` would, and prints the statistics a run depends on: examples, objects per choice,
empty object patch sets under the geometry, truncated sequences under ``max_length``. It writes
nothing: training and evaluation prepare their text themselves, from the run's own options. qa2r
records without ``answer_label`` (the test split) give one example per candidate answer. The
preprocessing flags (``--compat``, ``--geometry``, ``--image-size``, ...) are derived from
``PreprocessConfig``'s fields.

Exit status: 0 when no record has an error (warnings allowed), 1 when some have (0 with
``--skip-bad``: a run with ``data.skip_bad=true`` leaves them out), 2 when the split cannot be
checked (missing files or folders, bad options, no tokenizer), with the message only.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from data_prep.constants import (
    COMPAT_MODES, GEOMETRY_MODES, MODEL_DIR, NUM_CHOICES, PERSON_NAMINGS, PIXEL_DTYPES, PREPROCESS_FILE, TASKS,
    TOKENIZER_DIR,
)
from data_prep.options import saved_run_options
from data_prep.preflight import SplitCheck, archive_hint, check_split
from data_prep.preprocess import PreprocessConfig, VCRPreprocessor
from data_prep.vcr import VCRFormatError, check_not_packed

__all__ = ["add_arguments", "run", "main"]

_CHUNK = 512


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vlekit check-data`` options to ``parser``."""
    parser.add_argument("--annotations", required=True, type=Path, help="VCR annotation file (train/val/test.jsonl)")
    parser.add_argument(
        "--images", required=True, type=Path, help="the vcr1images folder (img_fn/metadata_fn are relative to it)"
    )
    parser.add_argument(
        "--run", dest="run_dir", type=Path, metavar="RUN",
        help="a run folder (or its model/) from vlekit train: check with its tokenizer, task and preprocessing "
             "(image size, patch grid, geometry, ...); the flags below override them",
    )
    parser.add_argument(
        "--task", choices=TASKS, help="q2a (question -> answer) or qa2r (question + answer -> rationale); default: the run's"
    )
    parser.add_argument(
        "--tokenizer",
        help="Hugging Face tokenizer name or local folder, or auto (a word-level tokenizer built from these "
             "annotations, as training builds one from its own); default: the run's",
    )
    for name, kwargs in _config_flags().items():
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    parser.add_argument(
        "--decode", action="store_true",
        help="decode every image completely: finds truncated files, which the default header and size check misses "
             "(slower)",
    )
    parser.add_argument(
        "--max-problems", type=int, default=20, metavar="N", help="list the first N problems (default: 20; 0: all)"
    )
    parser.add_argument(
        "--skip-bad", action="store_true",
        help="exit 0 even when records have errors, as a run with data.skip_bad=true leaves them out (they are "
             "still listed, and the statistics are always those of the records without errors)",
    )


# Choices of the string options of PreprocessConfig (the dataclass validates every value).
_CHOICES = {"compat": COMPAT_MODES, "geometry": GEOMETRY_MODES, "pixel_dtype": PIXEL_DTYPES, "person_names": PERSON_NAMINGS}


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


def _config_from_args(args: argparse.Namespace, saved: Mapping[str, Any]) -> PreprocessConfig:
    """The run's saved preprocessing (``saved``; empty without ``--run``) with the flags given on top."""
    fields_ = {f.name for f in fields(PreprocessConfig)}
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in fields_}
    options.update({name: getattr(args, name) for name in _config_flags() if getattr(args, name) is not None})
    options["task"] = args.task or options.get("task")
    return PreprocessConfig(**options)


def _saved_run(run: Path) -> tuple[dict[str, Any], Path]:
    """``(the preprocessing a run saved, its tokenizer folder)`` from a run folder or its ``model/``."""
    model_dir = run if (run / PREPROCESS_FILE).is_file() else run / MODEL_DIR
    path = model_dir / PREPROCESS_FILE
    if not path.is_file():
        raise ValueError(f"--run {run}: no {PREPROCESS_FILE} here or in {MODEL_DIR}/; expected a run folder from "
                         f"vlekit train (an interrupted run has no {MODEL_DIR}/ yet: resume it)")
    try:
        saved = json.loads(path.read_text())
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    if saved.get("task") not in TASKS:
        raise ValueError(f"{path}: a {saved.get('task')!r} run; check-data checks VCR splits (q2a, qa2r)")
    if "image_size" not in saved:
        raise ValueError(f"{path} was written before runs saved their image side: give --image-size and --patch-size "
                         f"(the model's vision encoder's) with --run")
    return saved_run_options(saved), model_dir / TOKENIZER_DIR


def _tokenizer(name: str, annotations: Path) -> Any:
    """A tokenizer by name or folder, or ``auto``: the word-level one training builds, from ``annotations``."""
    if name == "auto":
        from data_prep.tokenizer import build_word_tokenizer

        return build_word_tokenizer([annotations])
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(name)


def _fail(message: str) -> int:
    print(message, file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``vlekit check-data``; returns the exit status (0 no errors, 1 errors in the data, 2 cannot check)."""
    saved, tokenizer_name = {}, args.tokenizer
    if args.run_dir is not None:
        try:
            saved, run_tokenizer = _saved_run(args.run_dir)
        except ValueError as exc:
            return _fail(str(exc))
        tokenizer_name = tokenizer_name or str(run_tokenizer)
    if tokenizer_name is None or (args.task is None and not saved):
        return _fail("give --run RUN (a trained run: its tokenizer and options), or --task and --tokenizer "
                     "(a name, a folder, or auto)")
    try:
        config = _config_from_args(args, saved)
    except ValueError as exc:
        return _fail(f"invalid option: {exc}")
    if not args.annotations.is_file():
        return _fail(f"annotation file not found: {args.annotations}")
    try:
        check_not_packed(args.annotations)
    except VCRFormatError as exc:
        return _fail(str(exc))
    if not args.images.is_dir():
        return _fail(archive_hint(args.images) or f"images folder not found: {args.images} (expected the vcr1images folder)")
    try:
        tokenizer = _tokenizer(tokenizer_name, args.annotations)
    except (OSError, ValueError, VCRFormatError) as exc:
        return _fail(f"cannot load tokenizer {tokenizer_name!r}: {exc}")
    try:
        preprocessor = VCRPreprocessor(tokenizer, config=config, images_root=args.images)
    except ValueError as exc:  # a tokenizer without cls/sep/pad tokens
        return _fail(f"cannot use tokenizer {tokenizer_name!r}: {exc}")
    try:
        check = check_split(args.annotations, args.images, decode=args.decode, progress=True)
    except OSError as exc:
        return _fail(f"cannot read {args.annotations}: {exc}")
    print(check.report(max_problems=args.max_problems))
    try:
        statistics = _statistics(preprocessor, check.records)
    except VCRFormatError as exc:  # a metadata file changed since it was checked
        return _fail(str(exc))
    print(_summary(check, statistics, config))
    return 1 if check.errors and not args.skip_bad else 0


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


def _summary(check: SplitCheck, statistics: Mapping[str, Any], config: PreprocessConfig) -> str:
    records = check.records
    examples, slots = statistics["examples"], statistics["slots"]
    expanded = examples - len(records)
    expansion = f" ({expanded // (NUM_CHOICES - 1)} unlabeled records expanded over {NUM_CHOICES} answers)"
    source = f" (from the {len(records)} records without errors)" if check.errors else ""
    mean, most = (slots.mean(), int(slots.max())) if slots.size else (0.0, 0)
    lines = [
        f"examples: {examples} for {config.task}" + (expansion if expanded else "") + source,
        f"objects per choice: mean {mean:.2f}, max {most}",
        f"empty object patch sets: {statistics['empty']} of {int(slots.sum())} slots "
        f"({config.geometry}, {config.image_size}/{config.patch_size})",
        f"truncated sequences: {statistics['truncated']} of {examples * NUM_CHOICES} (max_length {config.max_length})",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
