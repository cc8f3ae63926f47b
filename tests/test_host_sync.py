"""No host synchronisation in the training step: every call that would wait for the GPU (``.item()``,
``.tolist()``, ``.cpu()``, ``bool(tensor)``, data-dependent shapes such as ``nonzero`` or boolean
indexing) is counted on the CPU with a ``TorchFunctionMode`` while a tiny model runs bench's training
step (forward, backward, fused AdamW) and its inference step. ``torch.cuda.set_sync_debug_mode``
does the same on a GPU (``vlekit bench --profile`` writes its findings)."""
from __future__ import annotations

import traceback
from collections import Counter
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from vlekit.bench.batches import synthetic_batch
from vlekit.bench.config import PRESETS
from vlekit.bench.timing import make_step
from vlekit.model import build_model

# Tensor -> host value, or an output whose shape depends on the values: each one waits for the device.
SYNCING = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__", "nonzero", "argwhere",
           "masked_select", "unique", "unique_consecutive", "bincount", "repeat_interleave"}


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func))


class HostSyncCounter(TorchFunctionMode):
    """Counts syncing calls, keyed by ``name @ file:line`` of the innermost vlekit / transformers frame."""

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[str] = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = _name(func)
        syncing = name in SYNCING
        if name == "__getitem__" and len(args) > 1:  # x[bool_mask]: the output size depends on the mask
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            syncing = any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in index)
        # .to("cpu") in code is a transfer to the host; .to(device=other.device) follows its tensor (on the GPU
        # it stays there), so on this CPU-only run only the explicit string counts.
        if name == "to" and any(isinstance(a, str) and a == "cpu" for a in (*args[1:], kwargs.get("device"))):
            syncing = True
        if name == "repeat_interleave" and kwargs.get("output_size") is not None:
            syncing = False
        if syncing:
            stack = traceback.extract_stack()[:-1]
            # VCRModel's type-id range check reads the ids on the CPU only (exact message); on a GPU the
            # same check is queued with torch._assert_async and waits for nothing.
            if any(f.name == "_check_type_ids" and f.filename.endswith("vlekit/model.py") for f in stack):
                return func(*args, **kwargs)
            frames = [f for f in stack
                      if ("vlekit" in f.filename or "transformers" in f.filename) and "test_host_sync" not in f.filename]
            where = f"{frames[-1].filename.split('site-packages/')[-1]}:{frames[-1].lineno}" if frames else "?"
            self.found[f"{name} @ {where}"] += 1
        return func(*args, **kwargs)


def run_counted(mode: str, *, task: str = "q2a", gradient_checkpointing: bool = False, attention: str = "eager") -> Counter[str]:
    torch.manual_seed(0)
    options = {"gradient_checkpointing": True} if gradient_checkpointing else {}
    specs = {k: {"name": v, **options} for k, v in PRESETS["tiny"].items()}
    specs["text_encoder"]["attention"] = attention
    model = build_model(**specs, num_token_types=83)
    vision = model.vision_encoder
    batch = synthetic_batch(batch_size=3, image_size=vision.image_size, grid=vision.grid, task=task)
    step = make_step(model, mode, dtype="fp32", device=torch.device("cpu"))
    step(batch)  # first step: lazy initialisation (optimizer state) may legitimately look at values
    with HostSyncCounter() as counter:
        step(batch)
    return counter.found


def test_the_counter_sees_each_kind_of_sync() -> None:
    x = torch.arange(6.0)
    with HostSyncCounter() as counter:
        x.sum().item(), x.tolist(), bool(x[0] > 1), x[x > 2], x.nonzero(), x.cpu(), x.to("cpu")
        x[torch.tensor([0, 1])], x.sum() * 2  # integer indexing and arithmetic do not sync
    assert sorted(key.split(" @ ")[0] for key in counter.found.elements()) == sorted(
        ["item", "tolist", "__bool__", "__getitem__", "nonzero", "cpu", "to"])


@pytest.mark.parametrize(
    ("mode", "task", "gradient_checkpointing", "attention"),
    [("train", "q2a", False, "eager"), ("infer", "q2a", False, "eager"), ("train", "qa2r", True, "eager"),
     ("train", "q2a", False, "sdpa")],
)
def test_no_host_sync_in_the_step(mode: str, task: str, gradient_checkpointing: bool, attention: str) -> None:
    found = run_counted(mode, task=task, gradient_checkpointing=gradient_checkpointing, attention=attention)
    assert not found, "host syncs in the step:\n" + "\n".join(f"{count} x {key}" for key, count in sorted(found.items()))


def test_the_training_loop_log_window_adds_a_loss_without_waiting_for_it() -> None:
    """Every step adds its loss (finite or not) and gradient norm to the window on the device; only the log line
    reads them."""
    from accelerate import Accelerator

    from vlekit.training.monitor import LogWindow

    window = LogWindow(Accelerator(cpu=True))
    with HostSyncCounter() as counter:
        for loss in (1.0, float("nan")):
            window.add(torch.tensor(loss), questions=4)
            window.add_gradient_norm(torch.tensor(0.5))
    assert not counter.found
    with HostSyncCounter() as counter:
        window.flush(step=2)
    assert counter.found  # the one read of a log step
