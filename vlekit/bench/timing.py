"""Measuring a model: `run_bench` builds it, times training and inference steps per batch size, reports
OOM instead of failing, and fills a `BenchReport` of `Measurement` rows.

One training step is forward, backward, fused AdamW step and ``zero_grad(set_to_none=True)``; one
inference step is a forward under ``torch.inference_mode``. Untimed warm-up steps come first; on CUDA
every step is timed with CUDA events and throughput comes from the wall clock between two
synchronisations. MFU is ``model FLOPs / wall time / the device's bf16 dense peak``.
"""
from __future__ import annotations

import dataclasses
import gc
import platform
import resource
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlekit.bench.batches import synthetic_batch
from vlekit.bench.config import BenchConfig, BenchConfigError
from vlekit.bench.profile import profile_steps
from vlekit.bench.flops import MetaFlopCounter, peak_bf16_tflops
from vlekit.model import VCRModel, build_model

LEARNING_RATE = 1e-5  # VLE's VCR recipe (the value does not change the speed)


@dataclass(frozen=True)
class Measurement:
    """One (mode, batch size) cell of the table. ``status`` is ``"ok"`` or ``"oom"``.

    questions_per_s: questions (each with its C choices) per wall-clock second over the timed steps.
    step_ms: per-step times (CUDA events on GPU): ``median``, ``p10``, ``p90``, ``mean``.
    peak_memory_bytes: CUDA ``max_memory_allocated`` (on CPU the growth of the process's peak RSS).
    flops_per_step: model FLOPs per step, averaged over the timed steps.
    """

    mode: str
    batch_size: int
    status: str
    text_length: float
    object_slots: float
    steps: int
    warmup_steps: int
    questions_per_s: float | None = None
    step_ms: dict[str, float] | None = None
    peak_memory_bytes: int | None = None
    peak_reserved_bytes: int | None = None
    flops_per_step: float | None = None
    tflops_per_s: float | None = None
    mfu: float | None = None


@dataclass
class BenchReport:
    """The result of `run_bench`: the config, the environment, the model, one row per measurement."""

    config: BenchConfig
    environment: dict[str, Any]
    parameters: dict[str, int]
    results: list[Measurement] = field(default_factory=list)
    forward_flops_share: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": dataclasses.asdict(self.config),
            "environment": self.environment,
            "parameters": self.parameters,
            "forward_flops_share": self.forward_flops_share,
            "results": [dataclasses.asdict(r) for r in self.results],
            "notes": self.notes,
        }


def _is_out_of_memory(error: BaseException | None) -> bool:
    """True when ``error`` or an error it was raised from is an allocator out-of-memory error."""
    while error is not None:
        if isinstance(error, torch.cuda.OutOfMemoryError):
            return True
        error = error.__cause__ or error.__context__
    return False


def _release_memory(device: torch.device) -> None:
    """Give cached CUDA blocks back, so each measurement starts from the same memory state."""
    if device.type == "cuda":
        gc.collect()
        torch.cuda.empty_cache()


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(
    model: VCRModel, mode: str, *, dtype: str, device: torch.device
) -> Callable[[Mapping[str, torch.Tensor]], None]:
    """A closure running one training step (with its own fused AdamW) or one inference step."""
    autocast = dict(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")
    if mode == "infer":
        model.eval()

        def infer_step(batch: Mapping[str, torch.Tensor]) -> None:
            with torch.inference_mode(), torch.autocast(**autocast):
                model(**{k: v for k, v in batch.items() if k != "labels"})

        return infer_step

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, fused=True)

    def train_step(batch: Mapping[str, torch.Tensor]) -> None:
        with torch.profiler.record_function("bench.forward"), torch.autocast(**autocast):
            loss = model(**batch)["loss"]
        with torch.profiler.record_function("bench.backward"):
            loss.backward()
        with torch.profiler.record_function("bench.optimizer"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    return train_step


def _time_steps(
    step: Callable[[Mapping[str, torch.Tensor]], None], batches: Sequence[Mapping[str, torch.Tensor]], *,
    steps: int, device: torch.device,
) -> tuple[list[float], float]:
    """Run ``steps`` steps cycling over ``batches``: per-step milliseconds and the total wall seconds."""
    if device.type == "cuda":
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(steps)]
        torch.cuda.synchronize(device)
        began = time.perf_counter()
        for i in range(steps):
            starts[i].record()
            step(batches[i % len(batches)])
            ends[i].record()
        torch.cuda.synchronize(device)
        return [s.elapsed_time(e) for s, e in zip(starts, ends)], time.perf_counter() - began
    times = []
    began = time.perf_counter()
    for i in range(steps):
        start = time.perf_counter()
        step(batches[i % len(batches)])
        times.append((time.perf_counter() - start) * 1e3)
    return times, time.perf_counter() - began


def _to_device(batch: Mapping[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class _Bench:
    """One bench run: the model, the FLOP counter and the report being filled."""

    def __init__(self, config: BenchConfig) -> None:
        self.config = config
        self.device = torch.device(config.device)
        torch.manual_seed(config.seed)
        with torch.device(self.device):
            self.model = build_model(
                **config.component_specs(gradient_checkpointing=config.gradient_checkpointing),
                num_token_types=config.num_token_types,
            )
        parameters = {name: sum(p.numel() for p in child.parameters()) for name, child in self.model.named_children()}
        parameters["total"] = sum(p.numel() for p in self.model.parameters())
        if config.compile:
            for component in (self.model.text_encoder, self.model.vision_encoder, self.model.fusion):
                component.compile()
        peak, peak_note = (config.peak_tflops, None) if config.peak_tflops else peak_bf16_tflops(self.device)
        self.peak_tflops = peak
        self.report = BenchReport(config=config, environment=_environment(self.device, peak), parameters=parameters)
        if peak_note:
            self.report.notes.append(peak_note)
        elif config.dtype == "fp32":
            self.report.notes.append("MFU is against the bf16 dense peak, also for this fp32 run")
        self.flops: MetaFlopCounter | None = None
        try:
            self.flops = MetaFlopCounter(config)
        except Exception as error:  # any component may refuse the meta device; the timings still stand
            self._flops_failed(error)
        self.generator = torch.Generator().manual_seed(config.seed)

    def _flops_failed(self, error: Exception) -> None:
        self.flops = None
        self.report.notes.append(
            f"FLOPs not counted ({type(error).__name__}: {error}); they are counted on the meta device, "
            "which a component that needs real tensor values cannot run on"
        )

    def run(self, on_measurement: Callable[[BenchReport], None] | None = None) -> BenchReport:
        config, vision = self.config, self.model.vision_encoder
        for batch_size in config.batch_sizes:
            pool = [
                synthetic_batch(batch_size=batch_size, image_size=vision.image_size, grid=vision.grid,
                                task=config.task, pad_to=config.pad_to, generator=self.generator)
                for _ in range(min(config.distinct_batches, config.steps))
            ]
            for mode in config.modes:
                self.report.results.append(self._measure(mode, pool))
                self._print_progress(self.report.results[-1])
                if on_measurement is not None:
                    on_measurement(self.report)
        return self.report

    def _measure(self, mode: str, pool: list[dict[str, torch.Tensor]]) -> Measurement:
        config = self.config
        warmup = max(config.warmup, len(pool))
        shape = dict(
            mode=mode, batch_size=len(pool[0]["labels"]), steps=config.steps, warmup_steps=warmup,
            text_length=float(np.mean([b["input_ids"].shape[-1] for b in pool])),
            object_slots=float(np.mean([b["object_mask"].shape[-1] for b in pool])),
        )
        try:
            timing = self._run_steps(mode, pool, warmup=warmup)
        except Exception as error:
            if not _is_out_of_memory(error):
                raise
            timing = None
        finally:
            self.model.zero_grad(set_to_none=True)
        # Outside the except block: the traceback, and the tensors its frames held, are gone.
        _release_memory(self.device)
        if timing is None:
            return Measurement(status="oom", **shape)

        times, wall, peak, reserved = timing
        flops = self._step_flops(pool, train=mode == "train", steps=config.steps)
        tflops_per_s = flops * config.steps / wall / 1e12 if flops is not None else None
        p10, median, p90 = np.percentile(times, [10, 50, 90])
        return Measurement(
            status="ok", **shape,
            questions_per_s=shape["batch_size"] * config.steps / wall,
            step_ms={"median": float(median), "p10": float(p10), "p90": float(p90), "mean": float(np.mean(times))},
            peak_memory_bytes=peak, peak_reserved_bytes=reserved, flops_per_step=flops, tflops_per_s=tflops_per_s,
            mfu=tflops_per_s / self.peak_tflops if tflops_per_s is not None and self.peak_tflops else None,
        )

    def _run_steps(
        self, mode: str, pool: list[dict[str, torch.Tensor]], *, warmup: int
    ) -> tuple[list[float], float, int, int | None]:
        """Warm up, time, (profile): per-step ms, wall seconds, peak memory and peak reserved bytes.

        Everything allocated for the measurement (device batches, optimizer state) lives in this frame,
        so it is freed when the function returns or raises.
        """
        config, device = self.config, self.device
        _release_memory(device)
        rss_before = _peak_rss_bytes()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        batches = [_to_device(b, device) for b in pool]
        step = make_step(self.model, mode, dtype=config.dtype, device=device)
        for i in range(warmup):
            step(batches[i % len(batches)])
        times, wall = _time_steps(step, batches, steps=config.steps, device=device)
        if device.type == "cuda":
            peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        else:
            peak, reserved = max(0, _peak_rss_bytes() - rss_before), None
        if config.profile_dir:
            tag = f"{mode}_b{len(pool[0]['labels'])}"
            profile_steps(step, batches, directory=Path(config.profile_dir), tag=tag, device=device)
        return times, wall, peak, reserved

    def _step_flops(self, pool: list[dict[str, torch.Tensor]], *, train: bool, steps: int) -> float | None:
        """Mean model FLOPs per timed step (step i runs batch ``i % len(pool)``)."""
        if self.flops is None:
            return None
        try:
            counts = [self.flops(b, train=train) for b in pool]
            if self.report.forward_flops_share is None:
                split = counts[0]
                self.report.forward_flops_share = {
                    name: count / split.forward for name, count in split.forward_by_module.items() if count
                } | {"other": 1 - sum(split.forward_by_module.values()) / split.forward}
        except Exception as error:  # any component may refuse the meta device; the timings still stand
            self._flops_failed(error)
            return None
        return float(np.mean([counts[i % len(pool)].step(train=train) for i in range(steps)]))

    @staticmethod
    def _print_progress(result: Measurement) -> None:
        done = "OOM" if result.status == "oom" else f"{result.questions_per_s:.1f} questions/s"
        print(f"  {result.mode:<5} batch {result.batch_size:>4}: {done}", file=sys.stderr, flush=True)


def _environment(device: torch.device, peak_tflops: float | None) -> dict[str, Any]:
    import transformers

    environment: dict[str, Any] = {
        "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
        "device": f"CPU ({torch.get_num_threads()} threads, {platform.machine()})",
        "bf16_peak_tflops": peak_tflops, "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    if device.type == "cuda":
        environment.update(device=torch.cuda.get_device_name(device), cuda=torch.version.cuda,
                           capability=".".join(map(str, torch.cuda.get_device_capability(device))))
    return environment


def run_bench(
    config: BenchConfig, *, on_measurement: Callable[[BenchReport], None] | None = None
) -> BenchReport:
    """Build the configured model and measure every batch size and mode (see the module docstring).

    ``on_measurement`` is called with the report after each row, so a run cut short keeps its rows.
    """
    device = torch.device(config.device)
    if device.type not in ("cpu", "cuda"):
        raise BenchConfigError(f"--device {config.device!r}: vlekit bench runs on 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchConfigError(f"--device {config.device!r}, but CUDA is not available here; use --device cpu")
    return _Bench(config).run(on_measurement)
