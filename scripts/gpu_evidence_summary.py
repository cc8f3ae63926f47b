"""The summary table of ``scripts/gpu_evidence.sh``: reads what its parts wrote under OUT, writes
``OUT/summary.md`` and ``OUT/summary.json`` and prints the table (the call's last output).

    python scripts/gpu_evidence_summary.py OUT --mode quick|notebooks [--dry-run]

Standard library only (it must run when torch or vlekit is broken), and every input is optional: a
part that failed, timed out or was skipped shows as such, and the rest of the table stands.
Inputs: ``parts.tsv`` (name, status, seconds, detail), ``environment.json``, ``nvidia-smi.txt``,
``<bench part>.json`` (``vlekit bench --json`` reports), ``train-loop/metrics.jsonl`` and
``profile/top_ops_*.json``, and in notebooks mode ``03_finetune.log`` (the notebook's printed
Markdown tables) and ``03_finetune/figures/``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH_PARTS = ("bench-base", "bench-base-max", "bench-base-pad80", "bench-base-ckpt", "bench-base-sdpa", "bench-large",
               "profile")
TOP_OPS_SHOWN = 8


def read_json(path: Path) -> Any:
    """The parsed file, or ``None`` when it is missing or cut short (a part killed mid-write)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_parts(out: Path) -> list[dict[str, str]]:
    rows = []
    if (out / "parts.tsv").exists():
        for line in (out / "parts.tsv").read_text().splitlines():
            name, status, seconds, detail = (line.split("\t") + ["", "", ""])[:4]
            rows.append({"part": name, "status": status, "seconds": seconds, "detail": detail})
    return rows


def bench_rows(out: Path) -> list[dict[str, Any]]:
    """One row per measurement of every bench part's JSON report."""
    rows = []
    for part in BENCH_PARTS:
        report = read_json(out / f"{part}.json")
        if not report:
            continue
        config = report["config"]
        for r in report["results"]:
            ms = r.get("step_ms") or {}
            rows.append({
                "part": part, "preset": config.get("preset"), "mode": r["mode"], "batch": r["batch_size"],
                "status": r["status"], "text_length": r["text_length"],
                "checkpointing": config.get("gradient_checkpointing", False), "pad_to": config.get("pad_to"),
                "questions_per_s": r.get("questions_per_s"), "step_ms_median": ms.get("median"),
                "step_ms_p10": ms.get("p10"), "step_ms_p90": ms.get("p90"),
                "peak_memory_gib": None if r.get("peak_memory_bytes") is None else r["peak_memory_bytes"] / 2**30,
                "tflop_per_step": None if r.get("flops_per_step") is None else r["flops_per_step"] / 1e12,
                "mfu": r.get("mfu"),
            })
    return rows


def train_loop(out: Path, bench: list[dict[str, Any]], *, batch: int) -> dict[str, Any] | None:
    """The training loop's throughput: medians over its log windows after the first (start-up, warm-up),
    and its share of bench-base's training row at the loop's ``batch``."""
    path = out / "train-loop" / "metrics.jsonl"
    if not path.exists():
        return None
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    windows = [r for r in records if "questions_per_s" in r]
    if not windows:
        return None
    steady = windows[1:] or windows
    loop = {
        "steps": windows[-1].get("step"), "windows": len(windows),
        "questions_per_s": statistics.median(r["questions_per_s"] for r in steady),
        "data_time_fraction": statistics.median(r["data_time_fraction"] for r in steady),
        "peak_memory_gib": max((r.get("peak_memory_gib") or 0.0) for r in windows) or None, "batch": batch,
    }
    same = [r for r in bench if r["part"] == "bench-base" and r["mode"] == "train" and r["batch"] == batch
            and r["status"] == "ok"]
    loop["share_of_bench"] = loop["questions_per_s"] / same[0]["questions_per_s"] if same else None
    return loop


def profile_summaries(out: Path) -> list[dict[str, Any]]:
    return [s for s in (read_json(p) for p in sorted((out / "profile").glob("top_ops_*.json"))) if s]


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "-" if value is None else f"{value:{spec}}{suffix}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render(summary: dict[str, Any]) -> str:
    env = summary["environment"] or {}
    versions = env.get("versions", {})
    title = "gpu_evidence " + summary["mode"] + (" (DRY RUN: tiny models on the CPU, no figure is evidence)"
                                                  if summary["dry_run"] else "")
    lines = [f"# {title}", "",
             f"GPU: {env.get('gpu', 'none')}; nvidia-smi: {summary['nvidia_smi'] or 'not available'}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), "", "## Parts", ""]
    lines += _table(["part", "status", "seconds", "detail"],
                    [[p["part"], p["status"], p["seconds"], p["detail"]] for p in summary["parts"]])
    if summary["bench"]:
        lines += ["", "## vlekit bench (MFU against 790 TFLOP/s)", ""]
        rows = []
        for r in summary["bench"]:
            spread = ("-" if r["step_ms_median"] is None else
                      f"{r['step_ms_median']:.1f} [{r['step_ms_p10']:.1f}-{r['step_ms_p90']:.1f}]")
            rows.append([r["part"], r["mode"], str(r["batch"]), _num(r["text_length"], ".1f"),
                         "OOM" if r["status"] == "oom" else _num(r["questions_per_s"], ".1f"), spread,
                         _num(r["peak_memory_gib"], ".1f"), _num(r["tflop_per_step"], ".2f"),
                         _num(None if r["mfu"] is None else 100 * r["mfu"], ".1f", "%")])
        lines += _table(["part", "mode", "batch", "text L", "questions/s", "step ms median [p10-p90]",
                         "peak GiB", "TFLOP/step", "MFU"], rows)
        best = summary["largest_train_batch"]
        lines += ["", f"largest VLE-base training batch that fits (without checkpointing): {best or '-'}"]
    loop = summary["train_loop"]
    if loop:
        lines += ["", "## Training loop (vlekit train, DataLoader with workers, JPEGs on disk)", "",
                  f"{loop['steps']} steps, median over {max(1, loop['windows'] - 1)} log windows after the first: "
                  f"{loop['questions_per_s']:.1f} questions/s, data-time fraction {loop['data_time_fraction']:.3f}, "
                  f"peak memory {_num(loop['peak_memory_gib'], '.1f', ' GiB')}, "
                  f"{_num(None if loop['share_of_bench'] is None else 100 * loop['share_of_bench'], '.0f', '%')} of "
                  f"bench at batch {loop['batch']}"]
    for profile in summary["profiles"]:
        lines += ["", f"## Profile {profile['tag']}: top ops by {profile['time']} time "
                      f"({profile['total_ms_per_step']:.1f} ms per step over {profile['steps']} steps; "
                      f"dtype casts {_num(None if profile['cast_share'] is None else 100 * profile['cast_share'], '.1f', '%')})", ""]
        lines += _table(["op", "ms/step", "share", "calls/step"],
                        [[o["name"], f"{o['ms_per_step']:.2f}", f"{100 * o['share']:.1f}%", f"{o['calls_per_step']:.0f}"]
                         for o in profile["ops"][:TOP_OPS_SHOWN]])
    notebook = summary.get("notebook")
    if notebook:
        lines += ["", "## notebooks/03_finetune.ipynb as a script", ""] + notebook["tables"]
        lines += ["", "figures: " + (", ".join(notebook["figures"]) or "none")]
    return "\n".join(lines) + "\n"


def notebook_outputs(out: Path) -> dict[str, Any] | None:
    """The Markdown table rows 03_finetune printed and the figures it saved (notebooks mode)."""
    log = out / "03_finetune.log"
    if not log.exists():
        return None
    tables = [line for line in log.read_text().splitlines() if line.startswith("|")]
    figures = sorted(str(p.relative_to(out)) for p in (out / "03_finetune" / "figures").glob("*.png"))
    return {"tables": tables, "figures": figures}


def summarise(out: Path, *, mode: str, dry_run: bool, train_batch: int) -> dict[str, Any]:
    bench = bench_rows(out)
    fits = [r["batch"] for r in bench if r["part"] in ("bench-base", "bench-base-max") and r["mode"] == "train"
            and r["status"] == "ok"]
    smi = (out / "nvidia-smi.txt").read_text().strip() if (out / "nvidia-smi.txt").exists() else ""
    return {
        "mode": mode, "dry_run": dry_run, "environment": read_json(out / "environment.json"),
        "nvidia_smi": smi if smi and "not found" not in smi and "failed" not in smi.lower() else None,
        "parts": read_parts(out), "bench": bench, "largest_train_batch": max(fits) if fits else None,
        "train_loop": train_loop(out, bench, batch=train_batch), "profiles": profile_summaries(out),
        "notebook": notebook_outputs(out) if mode == "notebooks" else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--mode", choices=["quick", "notebooks"], required=True)
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--train-batch", type=int, default=32, help="the training loop's batch size (default: 32)")
    args = parser.parse_args(argv)
    summary = summarise(args.out, mode=args.mode, dry_run=args.dry_run, train_batch=args.train_batch)
    text = render(summary)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "summary.md").write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
