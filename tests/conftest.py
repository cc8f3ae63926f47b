"""Shared pytest fixtures. Shared plain helpers (tiny run overrides, the local Hub, the official VLE
reference) are in tests/helpers.py; no test module imports another."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

# Tiny models run faster on one thread than on two contending ones (and CI has 2 cores in all).
torch.set_num_threads(1)

REPO_ROOT = Path(__file__).resolve().parents[1]
VCR_FIXTURES = REPO_ROOT.parent / "shared" / "fixtures" / "vcr"


@pytest.fixture(scope="session")
def vcr_fixtures() -> Path:
    """The real VCR fixtures in ../shared/fixtures/vcr (skips when absent)."""
    if not (VCR_FIXTURES / "val_samples.jsonl").is_file():
        pytest.skip(f"real VCR fixtures not found at {VCR_FIXTURES}")
    return VCR_FIXTURES


@dataclass(frozen=True)
class TrainedRun:
    """The finished tiny runs of :func:`trained_run`, laid out as ``vlekit demo`` lays out its own:
    ``ROOT/data`` (the synthetic split), ``ROOT/q2a`` and ``ROOT/qa2r`` (run folders; QA->R reuses
    Q->A's tokenizer), ``ROOT/eval`` (both evaluated on the val split)."""

    root: Path
    data: object  # data_prep.synthetic.SyntheticVCR
    demo: object  # vlekit.demo.DemoConfig the runs were made with

    @property
    def q2a(self) -> Path:
        return self.root / "q2a"

    @property
    def qa2r(self) -> Path:
        return self.root / "qa2r"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    def experiment(self, task: str):
        """The experiment config the ``task`` run was trained with."""
        from vlekit.demo import demo_experiment

        tokenizer = "auto" if task == "q2a" else str(self.q2a / "tokenizer")
        return demo_experiment(self.demo, task=task, data=self.data, tokenizer=tokenizer)


def _listing(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory):
    """One tiny Q->A and one tiny QA->R run of the demo's experiment (configs/demo-tiny.yaml's model and
    recipe: tiny DeBERTa + 32 px tiny CLIP + tiny co-attention) on 32 synthetic training questions, one
    epoch of 4 steps each, evaluated on the 12 val questions; 6 unlabelled test questions beside them.

    Shared by every test that only reads a finished run, so it must stay as it is: a test that writes into a
    run works on a copy (``shutil.copytree(trained_run.q2a, tmp_path / "run")``). The session's end checks
    that no file under it was added, removed or rewritten.
    """
    from data_prep.synthetic import generate_synthetic_vcr
    from vlekit.demo import DemoConfig
    from vlekit.evaluation.evaluate import evaluate
    from vlekit.training.train import train

    root = tmp_path_factory.mktemp("trained-run")
    demo = DemoConfig(out=str(root), num_train=32, num_val=12, epochs=1, batch_size=8, num_workers=0)
    data = generate_synthetic_vcr(root / "data", num_train=demo.num_train, num_val=demo.num_val, num_test=6, seed=3)
    run = TrainedRun(root=root, data=data, demo=demo)
    q2a = train(run.experiment("q2a"), progress=False)
    qa2r = train(run.experiment("qa2r"), progress=False)
    assert (q2a.out, qa2r.out) == (run.q2a, run.qa2r)
    evaluate([q2a.model_dir, qa2r.model_dir], annotations=data.val, images=data.images_root, out=run.eval,
             num_workers=0, progress=False, resamples=1000)
    before = _listing(root)
    yield run
    changed = sorted(set(before.items()) ^ set(_listing(root).items()))
    assert not changed, f"a test changed the shared trained_run (copy it first): {sorted({name for name, _ in changed})}"
