"""scripts/gpu_evidence.sh's plumbing on the CPU: its --dry-run runs the parts with tiny models, a
failing part does not stop the others, and the summary table comes last (no figure is asserted)."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_evidence.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("timeout") is None,
                                reason="needs bash and coreutils' timeout")


def load_summary_module():
    spec = importlib.util.spec_from_file_location("gpu_evidence_summary", ROOT / "scripts" / "gpu_evidence_summary.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_survives_a_failing_part_and_writes_the_table_last(tmp_path: Path) -> None:
    # A python that crashes for `vlekit train` only: the training loop fails, the other parts must not.
    python = tmp_path / "python"
    python.write_text(f'#!/usr/bin/env bash\n[[ " $* " == *" train --config "* ]] && {{ echo crash >&2; exit 3; }}\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    out = tmp_path / "out"
    result = subprocess.run(
        ["bash", str(SCRIPT), str(out), "quick", "--dry-run", "bench-base", "train-loop", "profile"],
        capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHON": str(python), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    parts = {line.split("\t")[0]: line.split("\t")[1] for line in (out / "parts.tsv").read_text().splitlines()}
    assert parts == {"environment": "ok", "bench-base": "ok", "train-loop-data": "ok", "train-loop": "failed",
                     "profile": "ok"}
    assert "crash" in (out / "train-loop.log").read_text()

    summary_md = (out / "summary.md").read_text()
    assert result.stdout.endswith(summary_md)  # the table is the last thing printed
    assert "DRY RUN" in summary_md and "| train-loop | failed |" in summary_md
    summary = json.loads((out / "summary.json").read_text())
    assert summary["environment"]["versions"]["torch"]
    assert [(r["part"], r["mode"], r["batch"], r["status"]) for r in summary["bench"]] == [
        ("bench-base", "train", 2, "ok"), ("bench-base", "infer", 2, "ok"),
        ("bench-base", "train", 4, "ok"), ("bench-base", "infer", 4, "ok"), ("profile", "train", 2, "ok")]
    assert all(r["questions_per_s"] > 0 and r["tflop_per_step"] > 0 for r in summary["bench"])
    assert summary["largest_train_batch"] == 4 and summary["train_loop"] is None
    (profile,) = summary["profiles"]
    assert profile["steps"] == 5 and 0 < len(profile["ops"]) <= 15
    assert 0 <= profile["cast_share"] < 1 and sum(o["share"] for o in profile["ops"]) <= 1 + 1e-9


def test_unknown_part_and_mode_fail_fast(tmp_path: Path) -> None:
    for args in (["quick", "--dry-run", "bench-medium"], ["slow"]):
        result = subprocess.run(["bash", str(SCRIPT), str(tmp_path / "o"), *args], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 2 and ("unknown part" in result.stderr or "usage" in result.stderr)


def bench_report(path: Path, *, preset: str, rows: list[tuple[str, int, str, float | None]]) -> None:
    results = [{"mode": mode, "batch_size": batch, "status": status, "text_length": 40.0,
                "questions_per_s": qps, "step_ms": {"median": 100.0, "p10": 90.0, "p90": 120.0} if qps else None,
                "peak_memory_bytes": 20 * 2**30 if qps else None, "flops_per_step": 4e13 if qps else None,
                "mfu": 0.31 if qps else None} for mode, batch, status, qps in rows]
    path.write_text(json.dumps({"config": {"preset": preset, "gradient_checkpointing": False, "pad_to": None},
                                "results": results}))


def test_summary_reads_partial_results(tmp_path: Path) -> None:
    """OOM rows, a JSON cut short, the training loop's windows: what the table makes of them."""
    summary_module = load_summary_module()
    bench_report(tmp_path / "bench-base.json", preset="vle-base",
                 rows=[("train", 16, "ok", 100.0), ("train", 32, "ok", 150.0), ("infer", 32, "ok", 400.0)])
    bench_report(tmp_path / "bench-base-max.json", preset="vle-base",
                 rows=[("train", 96, "ok", 160.0), ("train", 128, "oom", None)])
    (tmp_path / "bench-large.json").write_text('{"config": {"preset": "vle-l')  # killed mid-write
    (tmp_path / "parts.tsv").write_text("bench-base\tok\t70\trc 0\nbench-large\ttimeout\t80\trc 124\n")
    (tmp_path / "train-loop").mkdir()
    windows = [(10, 60.0, 0.5), (20, 140.0, 0.02), (30, 144.0, 0.04), (40, 500.0, 0.01)]
    (tmp_path / "train-loop" / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "questions_per_s": q, "data_time_fraction": d, "peak_memory_gib": 30.0}) + "\n"
        for s, q, d in windows) + json.dumps({"step": 40, "val_accuracy": 0.3}) + "\n")

    summary = summary_module.summarise(tmp_path, mode="quick", dry_run=False, train_batch=32)
    assert summary["largest_train_batch"] == 96
    assert [r["part"] for r in summary["bench"]] == ["bench-base"] * 3 + ["bench-base-max"] * 2
    loop = summary["train_loop"]
    assert loop["questions_per_s"] == 144.0 and loop["data_time_fraction"] == 0.02  # medians without window 1
    assert loop["share_of_bench"] == pytest.approx(144 / 150) and loop["steps"] == 40
    text = summary_module.render(summary)
    assert "| bench-base-max | train | 128 | 40.0 | OOM |" in text and "31.0%" in text
    assert "| bench-large | timeout | 80 |" in text and "96% of bench at batch 32" in text
    assert "DRY RUN" not in text and summary["environment"] is None


def test_summary_of_the_notebooks_mode_shows_the_notebooks_tables(tmp_path: Path) -> None:
    summary_module = load_summary_module()
    (tmp_path / "03_finetune.log").write_text("--- cell 3\n| task | accuracy % |\n|---|---|\n| Q->A | 61.0 |\nfigure: x\n")
    (tmp_path / "03_finetune" / "figures").mkdir(parents=True)
    (tmp_path / "03_finetune" / "figures" / "cell-08-0.png").write_bytes(b"png")
    (tmp_path / "parts.tsv").write_text("03_finetune\tok\t150\trc 0\n")
    summary = summary_module.summarise(tmp_path, mode="notebooks", dry_run=False, train_batch=32)
    assert summary["notebook"]["tables"] == ["| task | accuracy % |", "|---|---|", "| Q->A | 61.0 |"]
    text = summary_module.render(summary)
    assert "| Q->A | 61.0 |" in text and "03_finetune/figures/cell-08-0.png" in text and summary["bench"] == []
