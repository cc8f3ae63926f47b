"""Profiling a few bench steps: a chrome trace, the top ops by device (or CPU) time and, on CUDA, every
host synchronisation with its Python stack."""
from __future__ import annotations

import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

PROFILE_STEPS = 3  # profiled steps (after one profiler warm-up step)


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
    """Profile a few steps: a gzipped chrome trace, the top-20 ops by self device (or CPU) time, host syncs."""
    from torch.profiler import ProfilerActivity, profile, schedule

    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"trace_{tag}.json.gz", directory / f"top_ops_{tag}.txt"]  # gz: Perfetto opens it
    sort_by = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"

    def write(profiler: Any) -> None:
        profiler.export_chrome_trace(str(written[0]))
        table = profiler.key_averages().table(sort_by=sort_by, row_limit=20)
        written[1].write_text(f"{tag}: {PROFILE_STEPS} steps, top 20 ops by {sort_by}\n\n{table}\n")

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
