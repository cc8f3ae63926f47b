"""The built-in demo (``make demo``): the whole kit on its embedded default, offline, on a CPU.

1. write a synthetic VCR-format dataset (jsonl + vcr1images/) where grounding matters;
2. fine-tune a tiny DeBERTa + CLIP ViT + co-attention model on Q->A, then on QA->R;
3. evaluate Q->A, QA->R and Q->AR against chance, with 95% bootstrap intervals;
4. write ``results.md``, ``results.json`` and ``curve.png`` into the run folder.

Each model's run folder (``OUT/q2a``, ``OUT/qa2r``) loads back as a predictor:
``vlekit.load_run("runs/demo/q2a")`` or ``vlekit predict --run runs/demo/q2a --image ... --question ...``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.evaluation.evaluate import evaluate
from vlekit.runs.experiment import DataConfig, ExperimentConfig, TrainConfig
from vlekit.model import VCRModelConfig
from vlekit.runs.folder import TOKENIZER_DIR, RunFolder
from vlekit.tables import format_metrics_table
from vlekit.training.train import train


@dataclass(frozen=True)
class DemoConfig:
    """The demo's sizes: chosen to finish in a few minutes on 2 CPU cores.

    torch_threads: the tiny model trains fastest on one thread, with the data loader on the other core.
    """

    out: str = "runs/demo"
    num_train: int = 2000
    num_val: int = 300
    epochs: float = 4.0
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    num_workers: int = 1
    torch_threads: int = 1


def demo_experiment(config: DemoConfig, *, task: str, data: Any, tokenizer: str) -> ExperimentConfig:
    """The tiny-model experiment the demo runs for ``task`` (also a template for your own)."""
    return ExperimentConfig(
        # tiny-deberta + tiny-clip (at 32 px: a 4 x 4 patch grid) + tiny-co-attention, 83 token types
        model=VCRModelConfig(vision_encoder={"name": "tiny-clip", "hf_config": {"image_size": 32}}),
        data=DataConfig(task=task, train_annotations=str(data.train), val_annotations=str(data.val),
                        images=str(data.images_root), tokenizer=tokenizer, num_workers=config.num_workers),
        train=TrainConfig(out=str(Path(config.out) / task), epochs=config.epochs, batch_size=config.batch_size,
                          lr=config.lr, lr_multipliers={}, warmup_ratio=0.1, mixed_precision="fp32", cpu=True,
                          seed=config.seed, log_every_steps=5, keep=1),
    )


def run_demo(config: DemoConfig = DemoConfig(), *, progress: bool = True) -> dict[str, Any]:
    """Run the demo; returns the metrics and writes the results into ``config.out``."""
    from vlekit.evaluation.plots import plot_training_curve, plt, save_training_curve  # matplotlib: only when drawing

    torch.set_num_threads(config.torch_threads)
    started = time.perf_counter()
    out = Path(config.out)
    data = generate_synthetic_vcr(out / "data", num_train=config.num_train, num_val=config.num_val, seed=config.seed)
    print(f"synthetic VCR data: {config.num_train} train / {config.num_val} val questions in {data.root}")
    for task in ("q2a", "qa2r"):  # a previous demo's runs: the demo starts afresh (vlekit train never mixes runs)
        shutil.rmtree(out / task, ignore_errors=True)
    q2a = train(demo_experiment(config, task="q2a", data=data, tokenizer="auto"), progress=progress)
    # QA->R reuses the tokenizer built for Q->A, so both models share one vocabulary.
    qa2r = train(demo_experiment(config, task="qa2r", data=data, tokenizer=str(q2a.out / TOKENIZER_DIR)),
                 progress=progress)
    result = evaluate([q2a.model_dir, qa2r.model_dir], annotations=data.val, images=data.images_root,
                      out=out / "eval", num_workers=config.num_workers, progress=progress,
                      overwrite=True)  # the demo's own evaluation, of the runs it has just replaced
    metrics = result["metrics"]
    for task, run in (("q2a", q2a), ("qa2r", qa2r)):
        save_training_curve(RunFolder(run.out), title=f"{task} training")
    seconds = time.perf_counter() - started
    plt.close(plot_training_curve({"Q->A": RunFolder(q2a.out).metrics_file, "QA->R": RunFolder(qa2r.out).metrics_file},
                                  out / "curve.png", title="vlekit demo: tiny VLE-style model on synthetic VCR"))
    table = format_metrics_table(metrics)
    (out / "results.json").write_text(json.dumps({"metrics": metrics, "seconds": seconds}, indent=2))
    (out / "results.md").write_text(
        f"# vlekit demo\n\n{format_metrics_table(metrics, markdown=True)}\n\nwall time {seconds:.0f} s\n")
    print(f"\n{table}\n\nresults: {out / 'results.md'}, curve: {out / 'curve.png'} ({seconds:.0f} s)")
    return {"metrics": metrics, "seconds": seconds}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    defaults = DemoConfig()
    parser.add_argument("--out", default=defaults.out,
                        help=f"where the data, the two runs and the results go (default {defaults.out}; its q2a/ and "
                             f"qa2r/ runs are replaced)")
    parser.add_argument("--num-train", type=int, default=defaults.num_train,
                        help=f"synthetic training questions (default {defaults.num_train})")
    parser.add_argument("--num-val", type=int, default=defaults.num_val,
                        help=f"synthetic validation questions, the evaluation set (default {defaults.num_val})")
    parser.add_argument("--epochs", type=float, default=defaults.epochs, help=f"epochs per task (default {defaults.epochs:g})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the data, the weights and the training (default {defaults.seed}; the README's "
                             f"figures are this seed's)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    config = DemoConfig(out=args.out, num_train=args.num_train, num_val=args.num_val, epochs=args.epochs, seed=args.seed)
    run_demo(config, progress=not args.no_progress)
    return 0
