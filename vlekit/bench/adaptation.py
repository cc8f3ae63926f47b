"""``vlekit bench --adaptations``: what each adaptation method costs, side by side with full fine-tuning.

Per method, on the same model shape (a preset, random init) and the same synthetic batches: trainable
parameters of total, AdamW's state (two fp32 moments per trainable value), peak memory (CUDA: allocated;
CPU: the static part, weights + gradients + optimizer state) and the training step time, with its ratio to
``full`` measured in the same run::

    vlekit bench --preset vle-base --device cpu --batch-size 1 --steps 3 --warmup 1 \\
        --adaptations full frozen-encoders lora dora ia3 loha lokr oft bitfit
"""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlekit.bench.batches import synthetic_batch
from vlekit.bench.config import BenchConfig, BenchConfigError
from vlekit.bench.timing import _release_memory, _synchronize, _time_steps, _to_device, make_step
from vlekit.components.adaptations import parameter_counts
from vlekit.model import build_model
from vlekit.tables import text_table

_ENCODERS_AND_FUSION = ("text", "vision", "fusion")
# The methods of configs/grids/adaptation.yaml, as model.adaptation values.
ADAPTATION_PRESETS: dict[str, dict[str, Any]] = {
    "full": {},
    "frozen-encoders": {"text": "frozen", "vision": "frozen"},
    "linear-probe": {part: "frozen" for part in _ENCODERS_AND_FUSION},
    "lora": {part: {"name": "lora", "r": 8} for part in _ENCODERS_AND_FUSION},
    "dora": {part: {"name": "dora", "r": 8} for part in _ENCODERS_AND_FUSION},
    "ia3": {part: "ia3" for part in _ENCODERS_AND_FUSION},
    "bitfit": {part: "bitfit" for part in _ENCODERS_AND_FUSION},
}


def adaptation_of(method: str) -> dict[str, Any]:
    """A preset's ``model.adaptation``; any other registered method name applies to text, vision and fusion."""
    if method in ADAPTATION_PRESETS:
        return ADAPTATION_PRESETS[method]
    from vlekit.registry import ADAPTATIONS

    if method not in ADAPTATIONS:
        raise BenchConfigError(f"--adaptations {method!r}: expected one of {', '.join(ADAPTATION_PRESETS)} or a "
                               f"registered adaptation ({', '.join(e.name for e in ADAPTATIONS.entries())})")
    return {part: method for part in _ENCODERS_AND_FUSION}


def bench_adaptations(config: BenchConfig, methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method (``full`` first, as the reference, even when not asked for)."""
    methods = ["full", *[m for m in methods if m != "full"]]
    adaptations = {method: adaptation_of(method) for method in methods}  # every name checked before any timing
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    rows, reference = [], None
    for method in methods:
        torch.manual_seed(config.seed)
        with torch.device(device):
            model = build_model(**config.component_specs(gradient_checkpointing=config.gradient_checkpointing),
                                num_token_types=config.num_token_types, adaptation=adaptations[method])
        vision = model.vision_encoder
        if not rows:
            pool = [synthetic_batch(batch_size=config.batch_sizes[0], image_size=vision.image_size, grid=vision.grid,
                                    task=config.task, pad_to=config.pad_to, generator=generator)
                    for _ in range(min(config.distinct_batches, config.steps))]
        counts = parameter_counts(model)
        rows.append({"method": method, **counts, **_time(model, pool, config, device)})
        reference = reference or rows[0]["step_ms"]
        rows[-1]["trainable_fraction"] = counts["trainable_parameters"] / counts["total_parameters"]
        rows[-1]["step_time_vs_full"] = rows[-1]["step_ms"] / reference
        trainable_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        if rows[-1]["peak_memory_bytes"] is None:  # CPU: what the method keeps besides activations
            rows[-1]["static_memory_bytes"] = (sum(p.numel() * p.element_size() for p in model.parameters())
                                               + trainable_bytes + counts["optimizer_state_bytes"])
        del model
        _release_memory(device)
    return rows


def _time(model: torch.nn.Module, pool: list[dict[str, torch.Tensor]], config: BenchConfig,
          device: torch.device) -> dict[str, Any]:
    batches = [_to_device(batch, device) for batch in pool]
    step = make_step(model, "train", dtype=config.dtype, device=device)
    for i in range(max(config.warmup, len(batches))):
        step(batches[i % len(batches)])
    _synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, _ = _time_steps(step, batches, steps=config.steps, device=device)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"step_ms": float(np.median(times)), "peak_memory_bytes": peak}


def format_adaptation_table(config: BenchConfig, rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a table, with the shape and device they were measured at."""
    memory = "peak_memory_gib" if rows and rows[0]["peak_memory_bytes"] is not None else "static_memory_gib"
    table = [{"method": r["method"], "trainable": f"{r['trainable_parameters']:,}", "total": f"{r['total_parameters']:,}",
              "trainable %": f"{100 * r['trainable_fraction']:.2f}",
              "optimizer state MiB": f"{r['optimizer_state_bytes'] / 2**20:.1f}",
              memory: f"{(r['peak_memory_bytes'] or r.get('static_memory_bytes', 0)) / 2**30:.2f}",
              "step ms": f"{r['step_ms']:.0f}", "vs full": f"{r['step_time_vs_full']:.2f}"} for r in rows]
    head = (f"adaptation methods at {config.text_encoder} + {config.vision_encoder} + {config.fusion}, "
            f"{config.task}, batch {config.batch_sizes[0]}, {config.dtype} on {config.device} "
            f"(median of {config.steps} training steps)")
    return head + "\n" + text_table(table)


def adaptation_costs(preset: str = "vle-base", methods: Sequence[str] = tuple(ADAPTATION_PRESETS)) -> list[dict[str, Any]]:
    """Trainable parameters and AdamW state per method at a preset's shape, counted on the meta device
    (nothing allocated, seconds even for VLE-large)."""
    from vlekit.bench.config import PRESETS

    rows = []
    for method in methods:
        with torch.device("meta"):
            model = build_model(**PRESETS[preset], adaptation=adaptation_of(method))
        counts = parameter_counts(model)
        rows.append({"method": method, **counts, "trainable_fraction": counts["trainable_parameters"] / counts["total_parameters"]})
    return rows


def grid_table(out: str | Path) -> list[dict[str, Any]]:
    """An adaptation grid's results (``vlekit ablate --grid configs/grids/adaptation.yaml --out OUT``), one row
    per method: accuracy over seeds (mean, 95% t-interval over the seeds) and the trainable fraction its runs
    recorded at their start (``metrics.jsonl``)."""
    from scipy import stats

    rows = []
    for variant in sorted((Path(out) / "runs").iterdir()) if (Path(out) / "runs").is_dir() else []:
        results = [json.loads(p.read_text()) for p in sorted(variant.glob("seed-*/result.json"))]
        if not results:
            continue
        accuracies = np.array([r["accuracy"] for r in results])
        first = json.loads((variant / "seed-0" / "metrics.jsonl").read_text().splitlines()[0]) \
            if (variant / "seed-0" / "metrics.jsonl").is_file() else {}
        half = (stats.t.ppf(0.975, len(accuracies) - 1) * accuracies.std(ddof=1) / np.sqrt(len(accuracies))
                if len(accuracies) > 1 else float("nan"))
        trainable, total = first.get("trainable_parameters"), first.get("total_parameters")
        rows.append({"method": variant.name, "seeds": len(accuracies), "accuracy": float(accuracies.mean()),
                     "ci95_low": float(accuracies.mean() - half), "ci95_high": float(accuracies.mean() + half),
                     "trainable_parameters": trainable,
                     "trainable_fraction": trainable / total if trainable is not None and total else None})
    order = list(ADAPTATION_PRESETS)
    return sorted(rows, key=lambda r: order.index(r["method"]) if r["method"] in order else len(order))
