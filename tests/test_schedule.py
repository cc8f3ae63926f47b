"""The learning-rate schedule: one scheduler step per optimizer step, whatever the accumulation
(and the process count: tests/test_train.py runs 2 processes against 1)."""
from __future__ import annotations

import pytest
import torch

from data_prep.synthetic import generate_synthetic_vcr
from vlekit.runs.experiment import load_experiment
from vlekit.training.setup import linear_warmup_decay
from vlekit.training.train import train

from helpers import NO_DROPOUT, SMALL_IMAGES, metric_rows, tiny_overrides


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=32, num_val=8, num_test=0, seed=4)


def test_linear_warmup_decay_factors():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = linear_warmup_decay(optimizer, total_steps=10, warmup_ratio=0.2)
    factors = []
    for _ in range(10):
        factors.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert factors == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])


def test_gradient_accumulation_4x2_follows_1x8_step_by_step(synthetic, tmp_path):
    """The same global batch of 8 as one micro-batch or as 4 accumulated micro-batches of 2: the same
    logged lr at every optimizer step, and the same losses (float-summation tolerance). 2 epochs of 4
    optimizer steps (32 questions), 32 px images."""
    runs = {}
    for accumulation in (1, 4):
        out = tmp_path / f"accumulate-{accumulation}"
        overrides = tiny_overrides(synthetic, out, epochs=2, batch_size=8, seed=5,
                                   gradient_accumulation_steps=accumulation) + NO_DROPOUT
        overrides.append(SMALL_IMAGES)
        train(load_experiment(None, overrides), progress=False)
        runs[accumulation] = metric_rows(out)
    single, accumulated = runs[1], runs[4]
    assert [r["step"] for r in accumulated] == [r["step"] for r in single] == list(range(1, 9))
    assert [r["lr"] for r in accumulated] == [r["lr"] for r in single]
    # The column moves as linear_warmup_decay says for 8 steps (warm-up of 1, then the decay), not per micro-batch.
    assert [r["lr"] for r in single] == pytest.approx([1e-3 * min(1.0, (8 - step) / 7) for step in range(8)])
    torch.testing.assert_close(torch.tensor([r["loss"] for r in accumulated]), torch.tensor([r["loss"] for r in single]),
                               rtol=1e-4, atol=1e-5)
