"""Model FLOPs and device peaks: `count_flops`, the meta-device `MetaFlopCounter`, `flop_table`
(``vlekit bench --flops-only``) and the bf16 dense peak per GPU name that MFU divides by.

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on a copy of the model on the
meta device (shapes only: no memory, no compute), for every distinct batch shape. They are model
FLOPs: the copy has no gradient checkpointing, so recomputation is not counted.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vlekit.bench.batches import synthetic_batch
from vlekit.bench.config import BenchConfig
from vlekit.model import build_model

# bf16 dense tensor-core peaks in TFLOP/s, matched in order against the lower-cased CUDA device name.
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("h100 pcie", 756.0),
    ("h100 nvl", 835.0),
    ("h200 nvl", 835.0),
    ("h100", 989.0),  # SXM ("NVIDIA H100 80GB HBM3")
    ("h200", 989.0),
    ("a100", 312.0),
)


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
