"""``vlekit bench``: the command line and its reports (training / inference speed, memory, FLOPs, MFU).

The model is built from registered names with random weights (nothing is downloaded) and fed synthetic
VCR batches already in the batch contract, so the numbers are the model's alone: data loading is the
training loop's business. The jobs live in their own modules:

- `vlekit.bench.config`: presets and `BenchConfig` (what a run measures);
- `vlekit.bench.batches`: the synthetic VCR batches;
- `vlekit.bench.flops`: FLOP counting on the meta device and the bf16 peaks MFU divides by;
- `vlekit.bench.timing`: timing, memory, OOM handling (`run_bench`);
- `vlekit.bench.profile`: profiler traces, top ops, host syncs;
- this module: the ``vlekit bench`` flags and the printed tables.

Example (the issue's VLE-base Q->A setting; the official implementation runs 18.5 questions/s)::

    vlekit bench --preset vle-base --batch-size 16 32 64 --json bench.json
    vlekit bench --preset vle-base --flops-only --pad-to 80     # FLOPs alone: seconds, any machine
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from vlekit.bench.batches import NUM_CHOICES
from vlekit.bench.config import DTYPES, MODES, PRESETS, TASKS, BenchConfig, BenchConfigError
from vlekit.bench.timing import BenchReport, run_bench
from vlekit.components.deberta_attention import DEBERTA_ATTENTIONS
from vlekit.bench.flops import flop_table
from vlekit.registry import RegistryError


def format_flop_table(config: BenchConfig, rows: Sequence[Mapping[str, Any]]) -> str:
    name = config.preset or "custom"
    lines = [f"vlekit bench --flops-only: {name} (text {config.text_encoder}, vision {config.vision_encoder}, "
             f"fusion {config.fusion}); task {config.task}; text padding "
             f"{config.pad_to or 'per batch (multiple of 8)'}; model FLOPs counted on the meta device", "",
             f"{'mode':<6} {'batch':>5} {'text L':>7} {'TFLOP/step':>11} {'GFLOP/question':>15}"]
    for row in rows:
        lines.append(f"{row['mode']:<6} {row['batch_size']:>5} {row['text_length']:>7.1f} "
                     f"{row['flops_per_step'] / 1e12:>11.2f} {row['flops_per_question'] / 1e9:>15.0f}")
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------------------------

def _gib(value: int | None, *, growth: bool = False) -> str:
    return "-" if value is None else f"{'+' if growth else ''}{value / 2**30:.2f} GiB"


def format_report(report: BenchReport) -> str:
    """The human-readable summary: what ran, where, and one table row per measurement."""
    config, env, params = report.config, report.environment, report.parameters
    name = config.preset or "custom"
    peak = f"bf16 dense peak {env['bf16_peak_tflops']:g} TFLOP/s" if env["bf16_peak_tflops"] else "peak not known"
    parts = ", ".join(f"{k.replace('_', ' ')} {v / 1e6:.1f} M" for k, v in params.items() if k != "total")
    lines = [
        f"vlekit bench: {name} (text {config.text_encoder}, vision {config.vision_encoder}, fusion {config.fusion}, "
        f"{config.num_token_types} token types, text attention {config.text_attention})",
        f"parameters {params['total'] / 1e6:.1f} M ({parts})",
        f"device {env['device']}, {peak}; dtype {config.dtype}; task {config.task}, {NUM_CHOICES} choices; "
        f"text padding {'to ' + str(config.pad_to) if config.pad_to else 'per batch (multiple of 8)'}; "
        f"compile {'on' if config.compile else 'off'}; gradient checkpointing "
        f"{'on' if config.gradient_checkpointing else 'off'}; {config.steps} timed steps",
        "",
    ]
    header = ("mode", "batch", "text L", "questions/s", "step ms median [p10-p90]", "peak memory",
              "GFLOP/step", "TFLOP/s", "MFU")
    on_cpu = not config.device.startswith("cuda")
    rows = []
    for r in report.results:
        if r.status == "oom":
            rows.append((r.mode, str(r.batch_size), f"{r.text_length:.1f}", "OOM", "-", "-", "-", "-", "-"))
            continue
        ms = r.step_ms or {}
        rows.append((
            r.mode, str(r.batch_size), f"{r.text_length:.1f}", f"{r.questions_per_s:.1f}",
            f"{ms['median']:.1f} [{ms['p10']:.1f}-{ms['p90']:.1f}]", _gib(r.peak_memory_bytes, growth=on_cpu),
            "-" if r.flops_per_step is None else f"{r.flops_per_step / 1e9:,.1f}",
            "-" if r.tflops_per_s is None else f"{r.tflops_per_s:.2f}",
            "-" if r.mfu is None else f"{100 * r.mfu:.1f}%",
        ))
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    align = ["<", ">", ">", ">", ">", ">", ">", ">", ">"]
    for row in (header, *rows):
        lines.append("  ".join(f"{cell:{a}{w}}" for cell, a, w in zip(row, align, widths)).rstrip())
    if report.forward_flops_share:
        share = ", ".join(f"{k.replace('_', ' ')} {100 * v:.1f}%" for k, v in report.forward_flops_share.items())
        lines += ["", f"forward FLOPs by component: {share}"]
    memory = ("growth of the process's peak RSS (+0 when an earlier measurement already reached it)" if on_cpu
              else "CUDA max_memory_allocated")
    lines += ["", f"peak memory: {memory}; FLOPs: model FLOPs counted on the meta device (no recomputation)"]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


# -- command line ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``vlekit bench``."""
    model = parser.add_argument_group("model (random init, nothing downloaded)")
    model.add_argument("--preset", choices=sorted(PRESETS), default="vle-base",
                       help="component names to start from (default: vle-base)")
    model.add_argument("--text-encoder", metavar="NAME", help="registered text encoder (overrides the preset's)")
    model.add_argument("--vision-encoder", metavar="NAME", help="registered vision encoder (overrides the preset's)")
    model.add_argument("--fusion", metavar="NAME", help="registered fusion (overrides the preset's)")
    model.add_argument("--text-attention", choices=DEBERTA_ATTENTIONS, default="eager",
                       help="DeBERTa's attention: eager (Hugging Face's) or sdpa (fused, same results; default: eager)")
    model.add_argument("--num-token-types", type=int, default=83, help="token-type table rows (default: 83, as VLE)")
    data = parser.add_argument_group("synthetic batches")
    data.add_argument("--task", choices=TASKS, default="q2a", help="q2a: question + answer; qa2r: + gold answer + rationale")
    data.add_argument("--batch-size", type=int, nargs="+", default=[16], metavar="B",
                      help="questions per step; several sizes are measured one after another (default: 16)")
    data.add_argument("--pad-to", type=int, metavar="L",
                      help="pad (and truncate) text to L tokens like the official 80; default: per batch, multiple of 8")
    data.add_argument("--distinct-batches", type=int, default=4, metavar="N",
                      help="synthetic batches per batch size, cycled (their padded lengths differ; default: 4)")
    data.add_argument("--seed", type=int, default=0, help="seed of the weights and the synthetic data")
    run_group = parser.add_argument_group("measurement")
    run_group.add_argument("--mode", choices=MODES, default="both", help="training steps, inference, or both")
    run_group.add_argument("--device", help="cpu or cuda[:N] (default: cuda when available)")
    run_group.add_argument("--dtype", choices=DTYPES, help="bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    run_group.add_argument("--compile", action="store_true", help="torch.compile the text encoder, vision encoder and fusion")
    run_group.add_argument("--gradient-checkpointing", action="store_true", help="checkpoint every component's layers")
    run_group.add_argument("--adaptations", nargs="+", metavar="METHOD",
                           help="compare adaptation methods (full, frozen-encoders, linear-probe, lora, dora, ia3, bitfit) "
                                "at the first batch size: trainable parameters, optimizer state, memory, step time vs full")
    run_group.add_argument("--flops-only", action="store_true",
                           help="only count model FLOPs per step on the meta device (seconds, any machine)")
    run_group.add_argument("--steps", type=int, default=20, help="timed steps per measurement (default: 20)")
    run_group.add_argument("--warmup", type=int, default=5,
                           help="untimed steps first; never fewer than --distinct-batches (default: 5)")
    run_group.add_argument("--peak-tflops", type=float, help="bf16 dense peak for MFU (default: looked up by GPU name)")
    output = parser.add_argument_group("output")
    output.add_argument("--json", dest="json_path", metavar="OUT.json", help="also write the report as JSON")
    output.add_argument("--profile", dest="profile_dir", metavar="DIR",
                        help="profile a few steps per measurement: chrome trace, top-20 ops, host syncs (CUDA)")


def config_from_args(args: argparse.Namespace) -> BenchConfig:
    """Resolve the preset, the device and the dtype into a `BenchConfig`."""
    preset = PRESETS[args.preset]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bf16" if device.startswith("cuda") else "fp32")
    overridden = any((args.text_encoder, args.vision_encoder, args.fusion))
    return BenchConfig(
        text_encoder=args.text_encoder or preset["text_encoder"],
        vision_encoder=args.vision_encoder or preset["vision_encoder"],
        fusion=args.fusion or preset["fusion"],
        preset=f"{args.preset} (modified)" if overridden else args.preset,
        num_token_types=args.num_token_types, task=args.task, batch_sizes=tuple(args.batch_size), dtype=dtype,
        device=device, compile=args.compile, gradient_checkpointing=args.gradient_checkpointing, steps=args.steps,
        warmup=args.warmup, mode=args.mode, pad_to=args.pad_to, distinct_batches=args.distinct_batches,
        peak_tflops=args.peak_tflops, profile_dir=args.profile_dir, json_path=args.json_path, seed=args.seed,
        text_attention=args.text_attention,
    )


def _write_json(path: Path, output: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(output, indent=2) + "\n")


def run(args: argparse.Namespace) -> int:
    """``vlekit bench``: measure, print the table, write the JSON report when asked (after every row,
    so a run stopped by a time limit or a crash keeps the rows it measured)."""
    json_path = Path(args.json_path) if args.json_path else None
    try:
        config = config_from_args(args)
        if args.adaptations:
            from vlekit.bench.adaptation import bench_adaptations, format_adaptation_table

            rows = bench_adaptations(config, args.adaptations)
            print(format_adaptation_table(config, rows))
            if json_path:
                _write_json(json_path, {"config": dataclasses.asdict(config), "adaptations": rows})
            return 0
        if args.flops_only:
            rows = flop_table(config)
        else:
            report = run_bench(config, on_measurement=(lambda r: _write_json(json_path, r.to_dict())) if json_path else None)
    except (BenchConfigError, RegistryError) as error:
        print(f"vlekit bench: error: {error}", file=sys.stderr)
        return 2
    if args.flops_only:
        print(format_flop_table(config, rows))
        output = {"config": dataclasses.asdict(config), "flops": rows}
    else:
        print(format_report(report))
        output = report.to_dict()
    if json_path:
        _write_json(json_path, output)
        print(f"\nwrote {json_path}")
    if config.profile_dir:
        print(f"wrote profiles to {config.profile_dir}")
    return 0
