"""Profiling a few bench steps: a chrome trace, the top ops by device (or CPU) time as a table and as
JSON (with the share of dtype casts, the cost of autocast), and on CUDA every host synchronisation with
its Python stack."""
from __future__ import annotations

import json
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PROFILE_STEPS = 5  # profiled steps (after one profiler warm-up step)
TOP_OPS = 15  # ops listed in top_ops_TAG.json
# Ops whose inclusive time is a dtype cast: ``Tensor.to(dtype)`` and autocast's casts dispatch to
# ``aten::_to_copy`` (the bench's batches are on the device already, so no transfer goes through it).
CAST_OPS = ("aten::_to_copy",)


@contextmanager
def host_sync_log(path: Path) -> Iterator[None]:
    """On CUDA: record every synchronising CUDA operation run inside, with its Python stack, to ``path``."""
    found: Counter[str] = Counter()

    def record(message: Warning | str, category: type[Warning], filename: str, lineno: int, *args: Any) -> None:
        if "synchroniz" in str(message):
            frames = [f for f in traceback.extract_stack()[:-1] if "warnings" not in Path(f.filename).name][-6:]
            found["\n".join([str(message).splitlines()[0]] + [f"  {f.filename}:{f.lineno} in {f.name}" for f in frames])] += 1

    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    lines = [f"{count} x {where}" for where, count in found.most_common()] or ["no synchronising CUDA operations"]
    path.write_text("one step under torch.cuda.set_sync_debug_mode('warn'):\n\n" + "\n\n".join(lines) + "\n")


def profile_steps(
    step: Callable[[Mapping[str, torch.Tensor]], None], batches: Sequence[Mapping[str, torch.Tensor]], *,
    directory: Path, tag: str, device: torch.device,
) -> list[Path]:
    """Profile a few steps: a gzipped chrome trace, the top-20 ops by self device (or CPU) time as
    ``top_ops_TAG.txt``, `summarise_ops` of them as ``top_ops_TAG.json``, and on CUDA host syncs."""
    from torch.profiler import ProfilerActivity, profile, schedule

    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"trace_{tag}.json.gz", directory / f"top_ops_{tag}.txt",  # gz: Perfetto opens it
               directory / f"top_ops_{tag}.json"]
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def write(profiler: Any) -> None:
        profiler.export_chrome_trace(str(written[0]))
        averages = profiler.key_averages()
        table = averages.table(sort_by=sort_by, row_limit=20)
        written[1].write_text(f"{tag}: {PROFILE_STEPS} steps, top 20 ops by {sort_by}\n\n{table}\n")
        summary = summarise_ops(averages, on_device=device.type == "cuda", steps=PROFILE_STEPS)
        written[2].write_text(json.dumps({"tag": tag, **summary}, indent=2) + "\n")

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, schedule=schedule(wait=0, warmup=1, active=PROFILE_STEPS, repeat=1),
                 on_trace_ready=write, record_shapes=True) as profiler:
        for i in range(1 + PROFILE_STEPS):
            step(batches[i % len(batches)])
            profiler.step()
    if device.type == "cuda":
        written.append(directory / f"host_syncs_{tag}.txt")
        with host_sync_log(written[-1]):
            step(batches[0])
        torch.cuda.synchronize(device)
    return written


def summarise_ops(averages: Any, *, on_device: bool, steps: int) -> dict[str, Any]:
    """The top `TOP_OPS` ops by self time (device time on CUDA, else CPU time) and the casts' share.

    ``averages`` is a profiler's ``key_averages()``. Returns ``time`` (``"device"`` or ``"cpu"``),
    ``total_ms_per_step`` (self time summed over all ops), ``ops``: ``[{name, ms_per_step, share,
    calls_per_step}]`` and ``cast_share``: the inclusive time of `CAST_OPS` over the total.
    """
    self_time = (lambda e: e.self_device_time_total) if on_device else (lambda e: e.self_cpu_time_total)
    inclusive = (lambda e: e.device_time_total) if on_device else (lambda e: e.cpu_time_total)
    events = [e for e in averages if self_time(e) > 0]
    total_us = sum(self_time(e) for e in events)
    ops = [{"name": e.key, "ms_per_step": self_time(e) / 1e3 / steps, "share": self_time(e) / total_us,
            "calls_per_step": e.count / steps}
           for e in sorted(events, key=self_time, reverse=True)[:TOP_OPS]] if total_us else []
    casts_us = sum(inclusive(e) for e in averages if e.key in CAST_OPS)
    return {"time": "device" if on_device else "cpu", "steps": steps, "total_ms_per_step": total_us / 1e3 / steps,
            "ops": ops, "cast_share": casts_us / total_us if total_us else None}
