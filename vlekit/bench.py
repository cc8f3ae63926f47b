"""``vlekit bench``: training and inference speed, memory, FLOPs and MFU of any registered model.

The model is built from registered names with random weights (nothing is downloaded), fed synthetic
VCR batches that are already tensors in the batch contract (DESIGN.md section 3), so the numbers are
the model's alone: data loading is the training loop's business. One training step is forward,
backward, fused AdamW step and ``zero_grad(set_to_none=True)``; one inference step is a forward
under ``torch.inference_mode``. Untimed warm-up steps come first; on CUDA every step is timed with
CUDA events and throughput comes from the wall clock between two synchronisations.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model on the
meta device (shapes only: no memory, no compute), for every distinct batch shape. They are model
FLOPs: the copy has no gradient checkpointing, so recomputation is not counted, and MFU is
``model FLOPs / wall time / the device's bf16 dense peak``.

Example (the issue's VLE-base Q->A setting; the official implementation runs 18.5 questions/s)::

    vlekit bench --preset vle-base --batch-size 16 32 64 --json bench.json
    vlekit bench --preset vle-base --flops-only --pad-to 80     # FLOPs alone: seconds, any machine
"""
from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import platform
import resource
import sys
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vlekit.model import VCRModel, build_model
from vlekit.registry import RegistryError

# -- what the benchmark models --------------------------------------------------------------------

PRESETS: dict[str, dict[str, str]] = {
    "vle-base": dict(text_encoder="deberta-v3-base-random", vision_encoder="clip-vit-b16-384-random",
                     fusion="co-attention-base"),
    "vle-large": dict(text_encoder="deberta-v3-large-random", vision_encoder="clip-vit-l14-336-random",
                      fusion="co-attention-large"),
    "tiny": dict(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention"),
}
TASKS = ("q2a", "qa2r")
MODES = ("train", "infer", "both")
DTYPES = ("bf16", "fp32")

NUM_CHOICES = 4
MAX_TEXT_LENGTH = 80  # VLE's max_length for VCR
PAD_MULTIPLE = 8  # per-batch padding rounds up to this (tensor-core friendly)
MEAN_WORDS = {"question": 6.0, "answer": 8.0, "rationale": 16.0}  # VCR's mean lengths in words
SUBWORD_RATE = 0.3  # each word adds a sub-token with this probability: ~1.3 sub-tokens per word
PAD_ID, CLS_ID, SEP_ID = 0, 1, 2  # DeBERTa-v3's special ids
WORD_IDS = (3, 100)  # ordinary tokens; every registered text encoder accepts ids below 100
MAX_OBJECTS = 4  # referenced objects per choice: 1..4
IMAGE_OBJECTS = 8  # detected objects per image that choices refer to
LEARNING_RATE = 1e-5  # VLE's VCR recipe (the value does not change the speed)
PROFILE_STEPS = 3  # profiled steps (after one profiler warm-up step)

# bf16 dense tensor-core peaks in TFLOP/s, matched in order against the lower-cased CUDA device name.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h200 nvl", 835.0),
    ("h100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989.0),
    ("a100", 312.0),
)


class BenchConfigError(ValueError):
    """The bench options are inconsistent; the message says which and what would be right."""


@dataclass(frozen=True)
class BenchConfig:
    """Everything that defines one ``vlekit bench`` run (saved in the JSON output).

    text_encoder / vision_encoder / fusion: registered names (a preset fills them in).
    batch_sizes: questions per step; each is measured, an out-of-memory one is reported as OOM.
    dtype: ``bf16`` (autocast, fp32 master weights) or ``fp32``.
    pad_to: fixed text padding (and truncation) length, like the official 80; ``None`` pads each batch
        to its longest sequence rounded up to a multiple of 8.
    distinct_batches: synthetic batches per batch size, cycled through (their padded lengths differ).
    warmup: untimed steps before timing; at least one per distinct batch is always run, so every
        padded length is compiled / autotuned before the clock starts.
    peak_tflops: the device's bf16 dense peak for MFU; ``None`` looks the device up.
    """

    text_encoder: str
    vision_encoder: str
    fusion: str
    preset: str | None = None
    num_token_types: int = 83
    task: str = "q2a"
    batch_sizes: tuple[int, ...] = (16,)
    dtype: str = "bf16"
    device: str = "cuda"
    compile: bool = False
    gradient_checkpointing: bool = False
    steps: int = 20
    warmup: int = 5
    mode: str = "both"
    pad_to: int | None = None
    distinct_batches: int = 4
    peak_tflops: float | None = None
    profile_dir: str | None = None
    json_path: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.task in TASKS, f"--task must be one of {', '.join(TASKS)}, got {self.task!r}"),
            (self.mode in MODES, f"--mode must be one of {', '.join(MODES)}, got {self.mode!r}"),
            (self.dtype in DTYPES, f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"),
            (len(self.batch_sizes) > 0 and all(b >= 1 for b in self.batch_sizes),
             f"--batch-size needs positive sizes, got {list(self.batch_sizes)}"),
            (self.steps >= 1, f"--steps must be at least 1, got {self.steps}"),
            (self.warmup >= 0, f"--warmup must be 0 or more, got {self.warmup}"),
            (self.distinct_batches >= 1, f"--distinct-batches must be at least 1, got {self.distinct_batches}"),
            (self.pad_to is None or self.pad_to >= 16,
             f"--pad-to {self.pad_to} is too short for a VCR question and choice; use 16 or more (VLE: 80)"),
            (self.peak_tflops is None or self.peak_tflops > 0, f"--peak-tflops must be positive, got {self.peak_tflops}"),
            (self.num_token_types >= 2 + MAX_OBJECTS,
             f"--num-token-types {self.num_token_types} leaves no room for {MAX_OBJECTS} object types (k + 2)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BenchConfigError(message)

    @property
    def modes(self) -> tuple[str, ...]:
        return ("train", "infer") if self.mode == "both" else (self.mode,)

    def component_specs(self, *, gradient_checkpointing: bool) -> dict[str, dict[str, Any]]:
        """``build_model`` keyword arguments for the three components."""
        options = {"gradient_checkpointing": True} if gradient_checkpointing else {}
        return {
            "text_encoder": {"name": self.text_encoder, **options},
            "vision_encoder": {"name": self.vision_encoder, **options},
            "fusion": {"name": self.fusion, **options},
        }


# -- synthetic VCR batches ------------------------------------------------------------------------

def _token_counts(mean_words: float, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Sub-token counts of texts with ``mean_words`` words on average: words ~ 1 + Poisson(mean - 1)."""
    words = 1 + torch.poisson(torch.full(shape, mean_words - 1.0), generator=generator)
    subwords = torch.binomial(words, torch.full(shape, SUBWORD_RATE), generator=generator)
    return (words + subwords).long()


def _truncate_longest_first(first: torch.Tensor, second: torch.Tensor, budget: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut tokens from the end of the longer part until ``first + second <= budget`` (as tokenizers do)."""
    over = first + second > budget
    short = torch.minimum(first, second)
    kept_short = torch.where(over, torch.minimum(short, torch.full_like(short, budget // 2)), short)
    kept_long = torch.where(over, budget - kept_short, torch.maximum(first, second))
    first_is_short = first <= second
    return torch.where(first_is_short, kept_short, kept_long), torch.where(first_is_short, kept_long, kept_short)


def synthetic_batch(
    *,
    batch_size: int,
    image_size: int,
    grid: int,
    task: str = "q2a",
    pad_to: int | None = None,
    choices: int = NUM_CHOICES,
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """A random VCR batch in the batch contract, with VCR-like text lengths and object counts (on CPU).

    Text: ``[CLS] question [SEP] answer [SEP]`` (q2a) or ``[CLS] question [SEP] gold answer [SEP]
    rationale [SEP]`` (qa2r); questions, answers and rationales average 6, 8 and 16 words of ~1.3
    sub-tokens; truncated longest-first to ``pad_to`` (or 80), padded to ``pad_to`` or to the batch's
    longest sequence rounded up to a multiple of 8. Objects: each image has 8 boxes covering random
    rectangles of the ``grid x grid`` patch grid; each choice refers to 1-4 distinct ones, numbered in
    order of first mention, each mentioned by one sub-token tagged ``k + 2``.

    Returns ``input_ids, attention_mask, text_type_ids`` long ``[B, C, L]``; ``pixel_values`` float
    ``[B, 3, image_size, image_size]``; ``object_patch_mask`` bool ``[B, C, K, grid**2]`` (K the most
    objects of any choice); ``object_type_ids, object_mask`` long ``[B, C, K]``; ``labels`` long ``[B]``.
    """
    if task not in TASKS:
        raise ValueError(f"synthetic_batch: task must be one of {', '.join(TASKS)}, got {task!r}")
    if pad_to is not None and pad_to < 16:
        raise ValueError(f"synthetic_batch: pad_to {pad_to} is too short for a VCR question and choice (use >= 16)")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    b, c = batch_size, choices

    # Text lengths: the question (and in qa2r the gold answer) is shared by the question's choices.
    question = _token_counts(MEAN_WORDS["question"], (b, 1), g).expand(b, c)
    if task == "q2a":
        first, second = question, _token_counts(MEAN_WORDS["answer"], (b, c), g)
    else:
        gold = _token_counts(MEAN_WORDS["answer"], (b, 1), g).expand(b, c)
        first, second = question + 1 + gold, _token_counts(MEAN_WORDS["rationale"], (b, c), g)
    limit = pad_to or MAX_TEXT_LENGTH
    first, second = _truncate_longest_first(first, second, budget=limit - 3)
    lengths = first + 2 + second + 1  # [CLS] first [SEP] second [SEP]
    length = pad_to or math.ceil(int(lengths.max()) / PAD_MULTIPLE) * PAD_MULTIPLE

    positions = torch.arange(length)
    real = positions < lengths[..., None]
    separators = (positions == first[..., None] + 1) | (positions == lengths[..., None] - 1)
    if task == "qa2r":  # the [SEP] between question and gold answer, unless truncated away
        separators |= (positions == question[..., None] + 1) & (question[..., None] + 1 < first[..., None])
    input_ids = torch.randint(*WORD_IDS, (b, c, length), generator=g)
    input_ids = torch.where(separators, SEP_ID, input_ids)
    input_ids[..., 0] = CLS_ID
    input_ids = torch.where(real, input_ids, PAD_ID)
    content = real & ~separators & (positions > 0)

    # Referenced objects: 1..4 per choice, mentioned at random content positions in slot order.
    counts = torch.minimum(torch.randint(1, MAX_OBJECTS + 1, (b, c), generator=g), content.sum(-1))
    slots = int(counts.max())
    used = torch.arange(slots) < counts[..., None]  # [B, C, K]
    slot_types = (torch.arange(slots) + 2) * used
    scores = torch.rand(b, c, length, generator=g).masked_fill(~content, -1.0)
    mentions = scores.topk(slots, dim=-1).indices  # the first `count` are content positions
    mentions = torch.where(used, mentions, length).sort(dim=-1).values  # text order; unused -> a spare column
    text_type_ids = torch.zeros(b, c, length + 1, dtype=torch.long).scatter_(-1, mentions, slot_types)[..., :length]

    # Boxes: random rectangles of the patch grid (inclusive cell ranges), row-major patches.
    xs = torch.randint(0, grid, (b, IMAGE_OBJECTS, 2), generator=g).sort(dim=-1).values
    ys = torch.randint(0, grid, (b, IMAGE_OBJECTS, 2), generator=g).sort(dim=-1).values
    cells = torch.arange(grid)
    in_x = (cells >= xs[..., :1]) & (cells <= xs[..., 1:])  # [B, O, grid]
    in_y = (cells >= ys[..., :1]) & (cells <= ys[..., 1:])
    box_patches = (in_y[..., :, None] & in_x[..., None, :]).flatten(-2)  # [B, O, grid**2]
    chosen = torch.rand(b, c, IMAGE_OBJECTS, generator=g).argsort(dim=-1)[..., :slots]  # distinct per choice
    object_patch_mask = box_patches[torch.arange(b)[:, None, None], chosen] & used[..., None]

    return {
        "input_ids": input_ids,
        "attention_mask": real.long(),
        "text_type_ids": text_type_ids,
        "pixel_values": torch.randn(b, 3, image_size, image_size, generator=g),
        "object_patch_mask": object_patch_mask,
        "object_type_ids": slot_types,
        "object_mask": used.long(),
        "labels": torch.randint(0, c, (b,), generator=g),
    }


# -- FLOPs ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FlopCount:
    """FLOPs of one step: forward, backward (``None`` when counted without one), forward per sub-module."""

    forward: int
    backward: int | None
    forward_by_module: dict[str, int]

    def step(self, *, train: bool) -> int:
        """FLOPs of a training step (forward + backward) or of an inference step (forward)."""
        if not train:
            return self.forward
        if self.backward is None:
            raise ValueError("this FlopCount was taken without a backward pass; count with train=True")
        return self.forward + self.backward


def count_flops(model: nn.Module, batch: Mapping[str, torch.Tensor], *, train: bool) -> FlopCount:
    """Count FLOPs with ``FlopCounterMode``: ``model(**batch)``, then with ``train`` the backward of ``"loss"``.

    Works on any device, including ``meta``. ``forward_by_module`` maps each direct child of ``model``
    to its forward FLOPs (read before the backward pass, whose attribution to modules is not reliable).
    """
    model.train(train)
    with FlopCounterMode(display=False) as counter:
        with torch.set_grad_enabled(train):
            output = model(**batch)
        forward = int(counter.get_total_flops())
        counts = counter.get_flop_counts()
        if train:
            output["loss"].backward()
    model.zero_grad(set_to_none=True)
    root = type(model).__name__
    by_module = {name: int(sum(counts.get(f"{root}.{name}", {}).values())) for name, _ in model.named_children()}
    backward = int(counter.get_total_flops()) - forward if train else None
    return FlopCount(forward=forward, backward=backward, forward_by_module=by_module)


class MetaFlopCounter:
    """Counts FLOPs on a meta-device copy of the model (no checkpointing), cached per batch shape.

    An inference step reuses the forward FLOPs of a training count of the same shape (dropout, the
    only difference between the two modes here, costs no FLOPs).
    """

    def __init__(self, config: BenchConfig) -> None:
        with torch.device("meta"):
            self.model = build_model(
                **config.component_specs(gradient_checkpointing=False), num_token_types=config.num_token_types
            )
        self._cache: dict[tuple[Any, ...], FlopCount] = {}

    def __call__(self, batch: Mapping[str, torch.Tensor], *, train: bool) -> FlopCount:
        key = tuple((name, tuple(t.shape)) for name, t in sorted(batch.items()))
        cached = self._cache.get(key)
        if cached is None or (train and cached.backward is None):
            meta_batch = {name: torch.empty_like(t, device="meta") for name, t in batch.items()}
            self._cache[key] = count_flops(self.model, meta_batch, train=train)
        return self._cache[key]


def peak_bf16_tflops(device: torch.device) -> tuple[float | None, str | None]:
    """The device's bf16 dense peak (TFLOP/s) from `BF16_PEAK_TFLOPS`, or ``None`` with the reason."""
    if device.type != "cuda":
        return None, f"no bf16 peak is known for {device.type}: MFU not computed (pass --peak-tflops to set one)"
    name = torch.cuda.get_device_name(device)
    if "mig" in name.lower().split():
        return None, f"{name} is a MIG slice: its peak is a fraction of the GPU's; pass --peak-tflops"
    for pattern, tflops in BF16_PEAK_TFLOPS:
        if pattern in name.lower():
            return tflops, None
    known = ", ".join(pattern for pattern, _ in BF16_PEAK_TFLOPS)
    return None, f"no bf16 peak is known for {name!r} (known: {known}): MFU not computed; pass --peak-tflops"


# -- measuring ------------------------------------------------------------------------------------

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


def _make_step(
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


@contextmanager
def _host_sync_log(path: Path) -> Iterator[None]:
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


def _profile(
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
        with _host_sync_log(written[-1]):
            step(batches[0])
        torch.cuda.synchronize(device)
    return written


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

    def run(self) -> BenchReport:
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
        step = _make_step(self.model, mode, dtype=config.dtype, device=device)
        for i in range(warmup):
            step(batches[i % len(batches)])
        times, wall = _time_steps(step, batches, steps=config.steps, device=device)
        if device.type == "cuda":
            peak, reserved = torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
        else:
            peak, reserved = max(0, _peak_rss_bytes() - rss_before), None
        if config.profile_dir:
            tag = f"{mode}_b{len(pool[0]['labels'])}"
            _profile(step, batches, directory=Path(config.profile_dir), tag=tag, device=device)
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


def run_bench(config: BenchConfig) -> BenchReport:
    """Build the configured model and measure every batch size and mode (see the module docstring)."""
    device = torch.device(config.device)
    if device.type not in ("cpu", "cuda"):
        raise BenchConfigError(f"--device {config.device!r}: vlekit bench runs on 'cpu' or 'cuda[:N]'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchConfigError(f"--device {config.device!r}, but CUDA is not available here; use --device cpu")
    return _Bench(config).run()


def flop_table(config: BenchConfig) -> list[dict[str, Any]]:
    """Model FLOPs per step for every batch size and mode, counted on the meta device only: no
    timing, no memory, no GPU (``vlekit bench --flops-only``). Same batches as a timed run."""
    counter = MetaFlopCounter(config)
    vision = counter.model.vision_encoder
    generator = torch.Generator().manual_seed(config.seed)
    rows = []
    for batch_size in config.batch_sizes:
        pool = [synthetic_batch(batch_size=batch_size, image_size=vision.image_size, grid=vision.grid,
                                task=config.task, pad_to=config.pad_to, generator=generator)
                for _ in range(config.distinct_batches)]
        counts = [counter(batch, train=True) for batch in pool]
        for mode in config.modes:
            per_step = float(np.mean([count.step(train=mode == "train") for count in counts]))
            rows.append({"mode": mode, "batch_size": batch_size,
                         "text_length": float(np.mean([b["input_ids"].shape[-1] for b in pool])),
                         "flops_per_step": per_step, "flops_per_question": per_step / batch_size})
    return rows


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
        f"{config.num_token_types} token types)",
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
    )


def run(args: argparse.Namespace) -> int:
    """``vlekit bench``: measure, print the table, write the JSON report when asked."""
    try:
        config = config_from_args(args)
        if args.flops_only:
            rows = flop_table(config)
        else:
            report = run_bench(config)
    except (BenchConfigError, RegistryError) as error:
        print(f"vlekit bench: error: {error}", file=sys.stderr)
        return 2
    if args.flops_only:
        print(format_flop_table(config, rows))
        output = {"config": dataclasses.asdict(config), "flops": rows}
    else:
        print(format_report(report))
        output = report.to_dict()
    if config.json_path:
        path = Path(config.json_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(output, indent=2) + "\n")
        print(f"\nwrote {path}")
    if config.profile_dir:
        print(f"wrote profiles to {config.profile_dir}")
    return 0
