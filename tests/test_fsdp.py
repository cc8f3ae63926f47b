"""FSDP2 on two CPU processes (gloo): train, save, resume exactly, evaluate like DDP.

Accelerate 1.15 turns FSDP on only for accelerator backends (CUDA, XPU, NPU, ...): in CPU processes
(``train.cpu=true``) it ignores ``ACCELERATE_USE_FSDP`` / ``FSDP_*`` and an explicit
``FullyShardedDataParallelPlugin`` and wraps the model in DDP (``DistributedType.MULTI_CPU``) without a
word. PyTorch's FSDP2 (``fully_shard``) itself runs on CPU with gloo, so the runs here start
``vlekit.training.train.train`` under torchrun through a small launcher (``LAUNCHER``) that does on CPU what
Accelerate does on a GPU when those variables are set: it records ``DistributedType.FSDP`` and the
plugin built from the ``FSDP_*`` variables. The rest is vlekit's training loop, unchanged, on
Accelerate's FSDP2 path: ``prepare`` (``fully_shard`` per layer, the optimizer's parameter groups moved
to the sharded parameters), ``clip_grad_norm_``, ``save_state`` / ``load_state`` (sharded
``torch.distributed.checkpoint`` files) and ``get_state_dict`` (the full weights gathered for ``OUT/model``). FSDP1 does not run on CPU
here: turned on the same way, Accelerate's ``prepare`` builds ``FullyShardedDataParallel`` with the
process's device as ``device_id`` and torch raises ``ValueError: Inconsistent compute device and
`device_id` on rank 0: cpu vs cpu:0``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from data_prep.synthetic import generate_synthetic_vcr
from data_prep.vcr import read_vcr
from vlekit.training.checkpoints import latest_checkpoint
from vlekit.evaluation.evaluate import evaluate
from vlekit.evaluation.predict import load_run
from vlekit.runs.folder import load_trained

from helpers import NO_DROPOUT, final_weights, metric_rows, tiny_overrides

PROCESSES = 2

# What `accelerate launch --use_fsdp --fsdp_version 2 --fsdp_auto_wrap_policy TRANSFORMER_BASED_WRAP
# --fsdp_transformer_layer_cls_to_wrap ...` sets: one FSDP unit per text, vision and fusion layer, and the root.
FSDP2_ENV = {
    "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_TRANSFORMER_CLS_TO_WRAP": "DebertaV2Layer,CLIPEncoderLayer,PostNormLayer",
}

# torchrun runs this file in every process: vlekit.training.train.train() with the overrides it is given
# (``--resume`` first: resume="latest", as `vlekit train --resume`); each process prints its
# TrainResult as a RESULT line. (train() rather than the `vlekit train` command, which also imports
# matplotlib and draws curve.png in every process: about 3 s of CPU per process, nothing about FSDP.)
# VLEKIT_TEST_SIGTERM_AFTER_BATCHES=N: each process sends itself SIGTERM after its N-th micro-batch, so
# every process sees the signal at the same step and vlekit's SIGTERM handling (finish the step, save
# a checkpoint, return interrupted) runs as for a real kill. VLEKIT_TEST_NAN_FROM_BATCH=N with VLEKIT_TEST_NAN_RANK=R:
# the process of rank R makes its loss NaN from its N-th training micro-batch on (the launcher prints DIVERGED lines).
LAUNCHER = '''\
import json, os, signal, sys

from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = Accelerator.__init__


def _init_fsdp2_on_cpu(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type == DistributedType.MULTI_CPU:
        # What AcceleratorState does for FSDP on accelerator backends (and skips for CPU processes).
        plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables
        if self.state.mixed_precision != "no":
            plugin.set_mixed_precision(self.state.mixed_precision)
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP
        self.state.distributed_type = DistributedType.FSDP
        self.state.fsdp_plugin = plugin
        assert self.is_fsdp2, "FSDP_VERSION=2 expected"


Accelerator.__init__ = _init_fsdp2_on_cpu

import vlekit.training.train
from vlekit.runs.experiment import load_experiment

if "VLEKIT_TEST_SIGTERM_AFTER_BATCHES" in os.environ:
    _add = vlekit.training.train.LogWindow.add

    def _add_then_sigterm(self, *args, **kwargs):
        _add(self, *args, **kwargs)
        self.test_batches = getattr(self, "test_batches", 0) + 1
        if self.test_batches == int(os.environ["VLEKIT_TEST_SIGTERM_AFTER_BATCHES"]):
            os.kill(os.getpid(), signal.SIGTERM)

    vlekit.training.train.LogWindow.add = _add_then_sigterm

if "VLEKIT_TEST_NAN_FROM_BATCH" in os.environ and os.environ["RANK"] == os.environ["VLEKIT_TEST_NAN_RANK"]:
    from vlekit.model import VCRModel

    _forward = VCRModel.forward

    def _forward_then_nan(self, **batch):
        output = _forward(self, **batch)
        if self.training:
            self.test_batches = getattr(self, "test_batches", 0) + 1
            if self.test_batches >= int(os.environ["VLEKIT_TEST_NAN_FROM_BATCH"]):
                output["loss"] = output["loss"] * float("nan")
        return output

    VCRModel.forward = _forward_then_nan

arguments = sys.argv[1:]
resume = "latest" if arguments[:1] == ["--resume"] else None
try:
    result = vlekit.training.train.train(load_experiment(None, arguments[1:] if resume else arguments), resume=resume,
                                         progress=False)
except vlekit.training.train.TrainingDiverged as diverged:
    sys.stdout.write("DIVERGED " + json.dumps({"rank": int(os.environ["RANK"]), "step": diverged.step,
                                               "last_finite_step": diverged.last_finite_step}) + "\\n")
    sys.exit(1)
sys.stdout.write("RESULT " + json.dumps({"rank": int(os.environ["RANK"]), "global_step": result.global_step,
                                         "interrupted": result.interrupted}) + "\\n")  # one write
'''


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("synthetic"), num_train=32, num_val=8, num_test=4, seed=1)


def launch(launcher: Path, overrides: list[str], *, fsdp: bool, resume: bool = False,
           sigterm_after: int | None = None, test_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``vlekit.training.train.train`` in ``PROCESSES`` CPU processes (torchrun, gloo), FSDP2 or DDP."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("ACCELERATE_", "FSDP_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(FSDP2_ENV if fsdp else {}), **(test_env or {}))
    if sigterm_after is not None:
        env["VLEKIT_TEST_SIGTERM_AFTER_BATCHES"] = str(sigterm_after)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(PROCESSES),
               str(launcher), *(["--resume"] if resume else []), *overrides]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def output(result: subprocess.CompletedProcess) -> str:
    return result.stdout[-3000:] + result.stderr[-3000:]


def results(run: subprocess.CompletedProcess) -> list[dict]:
    """Each process's RESULT line (the launcher's), by rank; the run must have succeeded."""
    assert run.returncode == 0, output(run)
    found = sorted(map(json.loads, re.findall(r"RESULT (\{[^{}]*\})", run.stdout)), key=lambda r: r["rank"])
    assert [r["rank"] for r in found] == list(range(PROCESSES)), output(run)
    return found


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.mark.slow
def test_fsdp2_on_two_cpu_processes_resumes_exactly_and_matches_ddp(synthetic, tmp_path):
    """FSDP2 in 2 CPU processes (gloo), the same seed and global batch (8) as DDP: 2 epochs of 4 steps.

    * the FSDP2 runs really shard: their checkpoints hold ``torch.distributed.checkpoint`` shards of
      the model and the optimizer, one per process (a DDP checkpoint holds ``model.safetensors``);
    * a run stopped by SIGTERM after step 3 (mid-epoch) and resumed (``resume="latest"``, what
      ``vlekit train --resume`` does) ends with the same final weights as the uninterrupted FSDP2
      run (atol 1e-6), with the same lr column;
    * the FSDP2 run's final model (``accelerator.get_state_dict`` gathers the shards) matches the DDP
      run's weights (atol 1e-4) and loss curve (atol 1e-4), and scores the validation questions the
      same: answer probabilities within 1e-4 (``vlekit.load_run``), the same predicted answers and
      accuracy (``vlekit.evaluation.evaluate``).

    Why FSDP2 and DDP differ at all: they do the same maths in a different order. FSDP2 averages
    each layer's gradients with a reduce-scatter (``ReduceOp.AVG``) and adds up the gradient norm for
    clipping from the shards' partial norms; DDP averages buckets of gradients with an all-reduce
    (gradients divided by the process count, then summed) and takes the norm of the full gradients.
    Float addition is not associative, so the gradients differ by rounding, and AdamW's normalised
    updates carry that into the weights (max 1.7e-5 here). Dropout is off: its masks are drawn per process.
    """
    launcher = tmp_path / "launch_vlekit.py"
    launcher.write_text(LAUNCHER)
    overrides = {name: tiny_overrides(synthetic, tmp_path / name, epochs=2, batch_size=8, seed=3) + NO_DROPOUT
                 for name in ("ddp", "fsdp", "fsdp_resumed")}

    # The three first runs are independent: run side by side (the processes mostly import; 2 cores stay busy).
    with ThreadPoolExecutor(3) as pool:
        ddp = pool.submit(launch, launcher, overrides["ddp"], fsdp=False)
        fsdp = pool.submit(launch, launcher, overrides["fsdp"], fsdp=True)
        stopped = pool.submit(launch, launcher, overrides["fsdp_resumed"], fsdp=True, sigterm_after=3)
    finished = {"global_step": 8, "interrupted": False}
    for name, run in (("ddp", ddp), ("fsdp", fsdp)):
        assert [{k: r[k] for k in finished} for r in results(run.result())] == [finished] * PROCESSES, name
    assert [{k: r[k] for k in finished} for r in results(stopped.result())] == \
        [{"global_step": 3, "interrupted": True}] * PROCESSES
    assert latest_checkpoint(tmp_path / "fsdp_resumed").name == "step-0000003"
    assert not (tmp_path / "fsdp_resumed" / "model").exists()
    resumed = launch(launcher, overrides["fsdp_resumed"], fsdp=True, resume=True)
    assert [{k: r[k] for k in finished} for r in results(resumed)] == [finished] * PROCESSES
    assert "(step 3, epoch 0)" in resumed.stdout, output(resumed)  # "resumed from ...step-0000003 (step 3, epoch 0)"

    # FSDP2 really ran: sharded model and optimizer state, one file per process.
    for name in ("fsdp", "fsdp_resumed"):
        checkpoint = tmp_path / name / "checkpoints" / "step-0000008"
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        assert not (checkpoint / "model.safetensors").exists()
    assert (tmp_path / "ddp" / "checkpoints" / "step-0000008" / "model.safetensors").is_file()

    rows = {name: metric_rows(tmp_path / name) for name in overrides}
    for name, records in rows.items():
        assert [r["step"] for r in records] == list(range(1, 9)), name
        assert {r["processes"] for r in records} == {PROCESSES}, name
    assert [r["lr"] for r in rows["fsdp"]] == [r["lr"] for r in rows["ddp"]] == [r["lr"] for r in rows["fsdp_resumed"]]
    torch.testing.assert_close(torch.tensor([r["loss"] for r in rows["fsdp"]]),
                               torch.tensor([r["loss"] for r in rows["ddp"]]), rtol=0, atol=1e-4)
    # clip_grad_norm_'s norm, from the shards' partial norms (FSDP2) or the all-reduced gradients (DDP)
    torch.testing.assert_close(torch.tensor([r["grad_norm"] for r in rows["fsdp"]]),
                               torch.tensor([r["grad_norm"] for r in rows["ddp"]]), rtol=1e-3, atol=1e-5)
    # the validation at the end of each epoch, run on the sharded model (all-gathered layer by layer)
    accuracies = {name: [r["val_accuracy"] for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text()
                                                            .splitlines()) if "val_accuracy" in r] for name in overrides}
    assert len(accuracies["ddp"]) == 2 and accuracies["fsdp"] == accuracies["ddp"] == accuracies["fsdp_resumed"]

    weights = {name: final_weights(tmp_path / name) for name in overrides}
    resume_difference = max_difference(weights["fsdp_resumed"], weights["fsdp"])
    layout_difference = max_difference(weights["fsdp"], weights["ddp"])
    print(f"max |weight| difference: resumed vs uninterrupted FSDP2 {resume_difference:.3g}, "
          f"FSDP2 vs DDP {layout_difference:.3g}")
    assert resume_difference <= 1e-6
    assert layout_difference <= 1e-4
    # The last checkpoints load on their own (vlekit eval --checkpoint RUN/checkpoints/step-N) as the final models:
    # FSDP2's shards merged (accelerate's merge_fsdp_weights), DDP's state dict under the model's own names.
    for name in ("ddp", "fsdp"):
        loaded = load_trained(tmp_path / name / "checkpoints" / "step-0000008").model.state_dict()
        assert max_difference(loaded, weights[name]) == 0, name

    # The final models evaluated: unrounded answer probabilities (vlekit.load_run), and vlekit.evaluation.evaluate's
    # per-question predictions and accuracy.
    records = read_vcr(synthetic.val)
    scores = {name: load_run(tmp_path / name, device="cpu").score_batch(records, images_root=synthetic.images_root)
              for name in ("ddp", "fsdp")}
    score_difference = float((scores["fsdp"] - scores["ddp"]).abs().max())
    print(f"max |answer probability| difference FSDP2 vs DDP: {score_difference:.3g}")
    assert scores["fsdp"].shape == (len(records), 4)
    torch.testing.assert_close(scores["fsdp"], scores["ddp"], rtol=0, atol=1e-4)
    evaluated = {name: evaluate([tmp_path / name / "model"], annotations=synthetic.val, images=synthetic.images_root,
                                num_workers=0, progress=False, resamples=10) for name in ("ddp", "fsdp")}
    assert [row["answer_pred"] for row in evaluated["fsdp"]["predictions"]] == \
        [row["answer_pred"] for row in evaluated["ddp"]["predictions"]] == scores["ddp"].argmax(-1).tolist()
    assert evaluated["fsdp"]["metrics"]["q2a"]["accuracy"] == evaluated["ddp"]["metrics"]["q2a"]["accuracy"]


@pytest.mark.slow
def test_every_fsdp2_process_stops_at_the_step_the_weights_turn_nan(synthetic, tmp_path):
    """One process's loss turns NaN from its 3rd micro-batch; the reduce-scatter carries it into every shard. Both
    processes find it at the same check (their counts of non-finite local shards summed), stop without a hang, and
    the sharded checkpoint of step 2 stays the newest, its merged weights finite."""
    launcher = tmp_path / "launch_vlekit.py"
    launcher.write_text(LAUNCHER)
    out = tmp_path / "fsdp"
    run = launch(launcher, [*tiny_overrides(synthetic, out, epochs=2, batch_size=8, save_every_steps=2), *NO_DROPOUT],
                 fsdp=True, test_env={"VLEKIT_TEST_NAN_FROM_BATCH": "3", "VLEKIT_TEST_NAN_RANK": "1"})
    assert run.returncode != 0, output(run)
    stopped = sorted(map(json.loads, re.findall(r"DIVERGED (\{[^{}]*\})", run.stdout)), key=lambda r: r["rank"])
    assert stopped == [{"rank": rank, "step": 3, "last_finite_step": 2} for rank in range(PROCESSES)], output(run)
    assert latest_checkpoint(out).name == "step-0000002" and not (out / "model").exists()
    assert all(bool(torch.isfinite(w).all()) for w in load_trained(out / "checkpoints" / "step-0000002").model.state_dict().values()
               if w.is_floating_point())
