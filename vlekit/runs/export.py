"""``vlekit export``: a trained run as a plain, self-contained run folder.

    vlekit export --run runs/lora --merge --out runs/lora-merged   # adapters merged into their layers
    vlekit export --run runs/lora --out runs/lora-full              # adapters kept, the base's weights included
    vlekit export --run runs/lora --format vle --out runs/lora-vle  # an official VLE checkpoint folder (merged)

A run trained on a named frozen base (``model.adaptation`` with ``train.init_from_vle``) saves only what it
trained and the base's reference; the export rebuilds it on that base and writes every weight, so the
folder no longer needs the base. With ``--merge`` each PEFT adapter is merged into the layer it wraps and
the model has no adaptation left: an ordinary vlekit model (``vlekit eval``, ``vlekit.load_run``), giving
the same scores as the run it came from. ``--format vle`` writes the official VLE format instead
(``vlekit.to_vle_pretrained``: ``config.json``, the weights under the official names with the run's head,
the processor's and the tokenizer's files; adapters merged, as the format has none), for the official code
and ``vlekit.from_vle_pretrained``; VLE's architecture only (DeBERTa-v2 + CLIP + co-attention).
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path

import yaml

from data_prep.constants import MODEL_DIR, PREPROCESS_FILE, TOKENIZER_DIR
from vlekit.components.adaptations import merged_state_dict
from vlekit.model import VCRModel
from vlekit.options import thaw
from vlekit.runs.folder import EXPERIMENT_FILE, load_trained, read_yaml_file
from vlekit.runs.manifest import write_manifest
from vlekit.vle.checkpoint import to_vle_pretrained


FORMATS = ("vlekit", "vle")


def export_run(run: str | Path, out: str | Path, *, merge: bool = False, format: str = "vlekit") -> Path:
    """Write the trained ``run`` (a run folder, its ``model/``, or a Hub repo id) to ``out`` as a run folder
    with every weight (``out/model/`` and ``out/config.yaml``); ``merge``: adapters merged. Returns ``out/model``.
    ``format="vle"``: an official VLE checkpoint folder at ``out`` instead (adapters merged); returns ``out``."""
    if format not in FORMATS:
        raise ValueError(f"format {format!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"--out {out} is not empty: export writes a new run folder; choose another path")
    trained = load_trained(run)
    model = trained.model
    if format == "vle":
        return to_vle_pretrained(model, out, task=trained.task, tokenizer=trained.tokenizer)
    if merge:
        plain = VCRModel(config=dataclasses.replace(model.resolved_config(), adaptation={}))
        plain.load_state_dict(merged_state_dict(model))
        model = plain
    model.base_reference = None  # every weight goes into the folder
    model_dir = out / MODEL_DIR
    model.save_pretrained(model_dir)
    trained.tokenizer.save_pretrained(model_dir / TOKENIZER_DIR)
    shutil.copyfile(trained.folder / PREPROCESS_FILE, model_dir / PREPROCESS_FILE)
    if (trained.folder / EXPERIMENT_FILE).is_file():
        experiment = read_yaml_file(trained.folder / EXPERIMENT_FILE)
        experiment["model"] = thaw(dataclasses.asdict(model.resolved_config()))
        for path in (model_dir / EXPERIMENT_FILE, out / EXPERIMENT_FILE):
            path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    write_manifest(model_dir)
    return model_dir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", dest="run_dir", required=True, metavar="DIR", help="a run folder from vlekit train (its model/, or one of its checkpoints/step-N)")
    parser.add_argument("--out", required=True, metavar="DIR", help="the new run folder (must not hold anything)")
    parser.add_argument("--merge", action="store_true", help="merge the adapters into their layers (a plain model)")
    parser.add_argument("--format", choices=FORMATS, default="vlekit",
                        help="vlekit: a run folder (default); vle: an official VLE checkpoint folder (adapters merged)")


def run(args: argparse.Namespace) -> int:
    try:
        model_dir = export_run(args.run_dir, args.out, merge=args.merge, format=args.format)
    except (FileNotFoundError, FileExistsError, TypeError, ValueError) as error:
        print(f"vlekit export: {error}", file=sys.stderr)
        return 2
    merged = " (adapters merged)" if args.merge else " (the official VLE format)" if args.format == "vle" else ""
    print(f"exported {args.run_dir} to {model_dir}{merged}")
    return 0
