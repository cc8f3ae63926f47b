"""vlekit bench: the synthetic batch generator, FLOP counting, peaks, and tiny CPU runs (no speed assertions)."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import vlekit
from vlekit.bench.run import format_report
from vlekit.bench.batches import synthetic_batch
from vlekit.bench.config import PRESETS, BenchConfig, BenchConfigError
from vlekit.bench.timing import run_bench
from vlekit.bench.flops import MetaFlopCounter, count_flops, peak_bf16_tflops
from vlekit.cli import main
from vlekit.components.fusions import CoAttentionConfig, CoAttentionFusion
from vlekit.registry import FUSIONS, register_fusion

TINY = PRESETS["tiny"]
IMAGE_SIZE, GRID = 64, 8  # tiny-clip


def tiny_config(**options) -> BenchConfig:
    return BenchConfig(**TINY, **{"preset": "tiny", "device": "cpu", "dtype": "fp32", "steps": 1, "warmup": 0, **options})


# -- synthetic batches ----------------------------------------------------------------------------

@pytest.mark.parametrize("task", ["q2a", "qa2r"])
def test_synthetic_batch_follows_the_batch_contract(task: str) -> None:
    b, c = 8, 4
    batch = synthetic_batch(batch_size=b, image_size=IMAGE_SIZE, grid=GRID, task=task)
    length = batch["input_ids"].shape[-1]
    slots = batch["object_mask"].shape[-1]
    expected = {
        "input_ids": ((b, c, length), torch.long), "attention_mask": ((b, c, length), torch.long),
        "text_type_ids": ((b, c, length), torch.long), "pixel_values": ((b, 3, IMAGE_SIZE, IMAGE_SIZE), torch.float32),
        "object_patch_mask": ((b, c, slots, GRID * GRID), torch.bool), "object_type_ids": ((b, c, slots), torch.long),
        "object_mask": ((b, c, slots), torch.long), "labels": ((b,), torch.long),
    }
    assert set(batch) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(batch[key].shape) == shape and batch[key].dtype == dtype, key

    # Text: padded per batch to a multiple of 8, real tokens first, [CLS] ... [SEP].
    lengths = batch["attention_mask"].sum(-1)
    assert length % 8 == 0 and length - 8 < int(lengths.max()) <= length <= 80
    positions = torch.arange(length)
    assert torch.equal(batch["attention_mask"].bool(), positions < lengths[..., None])
    assert (batch["input_ids"][..., 0] == 1).all()
    assert (batch["input_ids"].gather(-1, (lengths - 1)[..., None]) == 2).all()
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()
    separators = ((batch["input_ids"] == 2) & (batch["attention_mask"] == 1)).sum(-1)
    assert (separators == (2 if task == "q2a" else 3)).all()

    # Objects: 1..4 per choice, slot k typed k + 2, a non-empty patch set exactly for used slots.
    used = batch["object_mask"].bool()
    counts = used.sum(-1)
    assert 1 <= int(counts.min()) and int(counts.max()) == slots <= 4
    assert torch.equal(used, torch.arange(slots) < counts[..., None])
    assert torch.equal(batch["object_type_ids"], (torch.arange(slots) + 2) * used)
    assert torch.equal(batch["object_patch_mask"].any(-1), used)
    # Each used slot is mentioned once, on a real non-special token, in order of first mention.
    types = batch["text_type_ids"]
    for k in range(slots):
        mentions = types == k + 2
        assert torch.equal(mentions.sum(-1), used[..., k].long())
        assert not (mentions & ((batch["input_ids"] <= 2) | (batch["attention_mask"] == 0))).any()
    first_mention = torch.where(types >= 2, positions, length).sort(-1).values[..., :slots]
    assert torch.equal(types.gather(-1, first_mention.clamp(max=length - 1)) * used, batch["object_type_ids"])
    assert ((0 <= batch["labels"]) & (batch["labels"] < c)).all()

    model = vlekit.build_model(**{k: TINY[k] for k in ("text_encoder", "vision_encoder", "fusion")})
    output = model(**batch)
    assert output["logits"].shape == (b, c) and torch.isfinite(output["loss"])


def test_synthetic_boxes_are_rectangles_of_the_grid() -> None:
    batch = synthetic_batch(batch_size=16, image_size=IMAGE_SIZE, grid=GRID)
    cells = batch["object_patch_mask"].reshape(-1, GRID, GRID)
    for mask in cells[cells.any(-1).any(-1)]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].all()
        assert int(mask.sum()) == len(rows) * len(cols)


@pytest.mark.parametrize(("task", "low", "high"), [("q2a", 18, 25), ("qa2r", 38, 48)])
def test_synthetic_text_lengths_are_vcr_like(task: str, low: float, high: float) -> None:
    # [CLS] q [SEP] a [SEP]: 3 + 1.3 * (6 + 8) ~ 21; qa2r adds a [SEP] and a 16-word rationale: ~43.
    batch = synthetic_batch(batch_size=256, image_size=IMAGE_SIZE, grid=GRID, task=task)
    assert low < batch["attention_mask"].sum(-1).float().mean() < high


def test_pad_to_fixes_the_length_and_truncates() -> None:
    batch = synthetic_batch(batch_size=32, image_size=IMAGE_SIZE, grid=GRID, task="qa2r", pad_to=16)
    lengths = batch["attention_mask"].sum(-1)
    assert batch["input_ids"].shape[-1] == 16 and int(lengths.max()) == 16
    assert (batch["input_ids"].gather(-1, (lengths - 1)[..., None]) == 2).all()
    assert synthetic_batch(batch_size=2, image_size=IMAGE_SIZE, grid=GRID, pad_to=80)["input_ids"].shape[-1] == 80
    with pytest.raises(ValueError, match="pad_to"):
        synthetic_batch(batch_size=2, image_size=IMAGE_SIZE, grid=GRID, pad_to=8)


def test_synthetic_batches_are_reproducible() -> None:
    def make() -> dict[str, torch.Tensor]:
        return synthetic_batch(batch_size=4, image_size=IMAGE_SIZE, grid=GRID, generator=torch.Generator().manual_seed(3))

    first, second = make(), make()
    assert all(torch.equal(first[k], second[k]) for k in first)


# -- FLOPs and peaks ------------------------------------------------------------------------------

class TwoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.b(self.a(x))
        return {"logits": logits, "loss": nn.functional.cross_entropy(logits, labels)}


@pytest.mark.parametrize("device", ["cpu", "meta"])
def test_count_flops_matches_a_hand_count(device: str) -> None:
    n = 5
    with torch.device(device):
        model, batch = TwoLinear(), {"x": torch.randn(n, 8), "labels": torch.zeros(n, dtype=torch.long)}
    a, b = 2 * n * 8 * 16, 2 * n * 16 * 4  # multiply-adds x 2
    inference = count_flops(model, batch, train=False)
    assert (inference.forward, inference.backward) == (a + b, None)
    assert inference.forward_by_module == {"a": a, "b": b}
    training = count_flops(model, batch, train=True)
    # Backward: b needs grad input and grad weight (2 x its forward), a only grad weight (x needs no grad).
    assert (training.forward, training.backward) == (a + b, 2 * b + a)
    assert training.forward_by_module == {"a": a, "b": b}
    assert training.step(train=True) == 2 * a + 3 * b and training.step(train=False) == a + b
    with pytest.raises(ValueError, match="backward"):
        inference.step(train=True)


def test_flops_are_affine_in_the_batch_size() -> None:
    counter = MetaFlopCounter(tiny_config())
    batch = synthetic_batch(batch_size=6, image_size=IMAGE_SIZE, grid=GRID, pad_to=32)
    for train in (True, False):
        f2, f4, f6 = (counter({k: v[:n] for k, v in batch.items()}, train=train).step(train=train) for n in (2, 4, 6))
        # DeBERTa projects its relative-position table once per layer: a per-step constant on top.
        assert f2 > 0 and f6 - f4 == f4 - f2
        assert f4 / f2 == pytest.approx(2, rel=0.01)
    count = counter(batch, train=True)
    assert count.step(train=True) / count.step(train=False) == pytest.approx(3, rel=0.05)
    # An inference count of the same shape is the training count's forward part.
    assert counter(batch, train=False) is count
    assert count.forward == MetaFlopCounter(tiny_config())(batch, train=False).forward


@pytest.mark.parametrize(
    ("name", "peak"),
    [("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
     ("NVIDIA A100-SXM4-80GB", 312), ("NVIDIA GeForce RTX 4090", None), ("NVIDIA H100 80GB HBM3 MIG 1g.10gb", None)],
)
def test_peak_lookup_by_device_name(monkeypatch: pytest.MonkeyPatch, name: str, peak: float | None) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    found, note = peak_bf16_tflops(torch.device("cuda"))
    assert found == peak
    assert (note is None) == (peak is not None) and (note is None or "--peak-tflops" in note)


def test_no_peak_on_cpu() -> None:
    peak, note = peak_bf16_tflops(torch.device("cpu"))
    assert peak is None and "--peak-tflops" in note


# -- runs -----------------------------------------------------------------------------------------

def test_ci_command_runs_and_writes_sane_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--steps", "2", "--warmup", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "questions/s" in printed and "MFU" in printed

    report = json.loads(out.read_text())
    assert report["config"]["batch_sizes"] == [16] and report["config"]["dtype"] == "fp32"
    assert report["parameters"]["total"] == sum(v for k, v in report["parameters"].items() if k != "total") > 0
    assert sum(report["forward_flops_share"].values()) == pytest.approx(1)
    assert [(r["mode"], r["status"]) for r in report["results"]] == [("train", "ok"), ("infer", "ok")]
    for result in report["results"]:
        ms = result["step_ms"]
        assert 0 < ms["p10"] <= ms["median"] <= ms["p90"]
        # Throughput is what the timed steps give: the batch per mean step (the wall clock around the steps adds
        # only the loop), and TFLOP/s is the counted FLOPs at that rate.
        per_mean_step = result["batch_size"] * 1e3 / ms["mean"]
        assert per_mean_step * 0.5 < result["questions_per_s"] <= per_mean_step * (1 + 1e-9)
        assert result["flops_per_step"] > 0 and result["tflops_per_s"] == pytest.approx(
            result["questions_per_s"] / result["batch_size"] * result["flops_per_step"] / 1e12, rel=1e-9)
        assert result["peak_memory_bytes"] >= 0 and result["mfu"] is None
        assert 8 <= result["text_length"] <= 80 and result["warmup_steps"] == 2  # one per distinct batch
    train, infer = report["results"]
    assert 2.5 < train["flops_per_step"] / infer["flops_per_step"] < 3.5
    assert any("--peak-tflops" in note for note in report["notes"])


@pytest.fixture()
def oom_fusion() -> str:
    """A tiny co-attention that runs out of memory above 8 sequences (4 choices x batch 2)."""
    base, name = "test-bench/oom-above-8", "test-bench/tiny-oom-above-8"

    @register_fusion(base, config=CoAttentionConfig)
    class OutOfMemoryAbove8(CoAttentionFusion):
        def forward(self, text, text_mask, image, image_mask, **options):  # options: what the model passes on
            if text.shape[0] > 8:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB (test)")
            return super().forward(text, text_mask, image, image_mask, **options)

    FUSIONS.register_preset(name, base=base, description="test", **FUSIONS.get("tiny-co-attention").preset_options)
    yield name
    FUSIONS.unregister(name)
    FUSIONS.unregister(base)


def test_flops_only_counts_vle_base_without_running_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--flops-only``: the meta-device count alone, for any preset on any machine (seconds)."""
    out = tmp_path / "flops.json"
    assert main(["bench", "--preset", "vle-base", "--flops-only", "--pad-to", "80", "--batch-size", "2", "4",
                 "--json", str(out)]) == 0
    assert "GFLOP/question" in capsys.readouterr().out
    rows = json.loads(out.read_text())["flops"]
    assert [(r["mode"], r["batch_size"]) for r in rows] == [("train", 2), ("infer", 2), ("train", 4), ("infer", 4)]
    assert all(r["text_length"] == 80 for r in rows)
    train, infer = rows[0], rows[1]
    assert 2.5 < train["flops_per_step"] / infer["flops_per_step"] < 3.5
    # Golden figure (text padded to 80, as the official implementation runs): 1,389 GFLOP per question
    # per training step; the official implementation's is 2,525. Objects per question vary a little.
    assert 1360e9 < train["flops_per_question"] < 1420e9
    assert rows[2]["flops_per_question"] == pytest.approx(train["flops_per_question"], rel=0.02)


def test_out_of_memory_is_reported_and_the_run_goes_on(oom_fusion: str) -> None:
    config = BenchConfig(
        text_encoder=TINY["text_encoder"], vision_encoder=TINY["vision_encoder"], fusion=oom_fusion,
        device="cpu", dtype="fp32", steps=1, warmup=0, batch_sizes=(2, 4, 1), peak_tflops=1.0,
    )
    report = run_bench(config)
    assert [(r.mode, r.batch_size, r.status) for r in report.results] == [
        ("train", 2, "ok"), ("infer", 2, "ok"), ("train", 4, "oom"), ("infer", 4, "oom"),
        ("train", 1, "ok"), ("infer", 1, "ok"),
    ]
    assert all(r.mfu is not None and r.mfu > 0 for r in report.results if r.status == "ok")
    assert "OOM" in format_report(report)


def test_profile_writes_a_trace_and_the_top_ops(tmp_path: Path) -> None:
    run_bench(tiny_config(batch_sizes=(2,), mode="infer", profile_dir=str(tmp_path)))
    trace = json.loads(gzip.decompress((tmp_path / "trace_infer_b2.json.gz").read_bytes()))
    assert trace["traceEvents"]
    assert "Self CPU" in (tmp_path / "top_ops_infer_b2.txt").read_text()


def test_bad_options_fail_fast(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(BenchConfigError, match="--steps"):
        tiny_config(steps=0)
    with pytest.raises(BenchConfigError, match="--pad-to"):
        tiny_config(pad_to=10)
    assert main(["bench", "--preset", "tiny", "--device", "cpu", "--fusion", "co-atention"]) == 2
    assert "co-attention" in capsys.readouterr().err  # the close match is suggested
    if not torch.cuda.is_available():
        assert main(["bench", "--preset", "tiny", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err


def test_text_attention_option_reaches_the_text_encoder() -> None:
    from vlekit.components.deberta_attention import SDPADisentangledSelfAttention

    assert "attention" not in tiny_config().component_specs(gradient_checkpointing=False)["text_encoder"]
    report = run_bench(tiny_config(batch_sizes=(2,), mode="train", text_attention="sdpa"))
    assert report.results[0].status == "ok" and report.config.text_attention == "sdpa"
    specs = tiny_config(text_attention="sdpa").component_specs(gradient_checkpointing=False)
    model = vlekit.build_model(**specs, num_token_types=83)
    assert any(isinstance(m, SDPADisentangledSelfAttention) for m in model.text_encoder.modules())
