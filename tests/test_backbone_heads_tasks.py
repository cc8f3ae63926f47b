"""The model's split: one Backbone forward path for every head, heads behind the Head interface, tasks
as a registered kind (vlekit/model.py, vlekit/interfaces.py, vlekit/evaluation/tasks.py)."""
from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from einops import rearrange

import vlekit
from vlekit.evaluation.metrics import soft_accuracy
from vlekit.evaluation.tasks import VCRTask, VQATask, task_for
from vlekit.interfaces import Head
from vlekit.registry import HEADS, RegistryError, registry_for

from helpers import tiny_batch

TINY = dict(text_encoder="tiny-deberta", vision_encoder="tiny-clip", fusion="tiny-co-attention")


def test_folding_the_choices_gives_the_scores_of_scoring_each_choice_on_its_own() -> None:
    """The VCR head's logits [B, C] are the backbone's pairs unfolded: the same numbers as encoding each
    (question, choice) pair as a batch of one text per image."""
    torch.manual_seed(0)
    model = vlekit.build_model(**TINY).eval()
    batch = tiny_batch(model, batch=3)
    with torch.no_grad():
        logits = model(**batch)["logits"]
        for choice in range(logits.shape[1]):
            one = {key: batch[key][:, choice:choice + 1] for key in
                   ("input_ids", "attention_mask", "text_type_ids", "object_patch_mask", "object_type_ids", "object_mask")}
            fused = model.encode(one.pop("input_ids"), one.pop("attention_mask"), batch["pixel_values"], **one,
                                 pooled_only=True)
            torch.testing.assert_close(model.head(fused.pooled)[:, 0], logits[:, choice], rtol=1e-5, atol=1e-5)


def test_every_core_head_is_a_head_and_only_co_attention_declares_pooled_only() -> None:
    for entry in HEADS.entries():
        if entry.source == "core":
            assert issubclass(entry.component, Head), entry.name
    assert registry_for("fusion").get("co-attention").component.supports_pooled_only
    assert not Head.multiple_choice and Head.reads == "pooled"


@dataclass(frozen=True)
class _BestOfConfig:
    pooled_size: int
    initializer_range: float = 0.02


class _BestOfTwoHead(Head):
    """A plugin's multiple-choice head with its own task logits: each choice scored, then only the
    two best kept (the others at -inf)."""

    multiple_choice = True

    def __init__(self, *, config: _BestOfConfig) -> None:
        super().__init__()
        self.config = config
        self.input_size = config.pooled_size
        self.score = torch.nn.Linear(config.pooled_size, 1)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.score(pooled)

    def task_logits(self, fused, *, choices: int) -> torch.Tensor:
        logits = rearrange(self(fused.pooled), "(b c) 1 -> b c", c=choices)
        kept = logits.topk(2, dim=-1).indices
        return torch.full_like(logits, float("-inf")).scatter(1, kept, logits.gather(1, kept))

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(logits.clamp(min=-1e4), labels)


def test_a_plugin_head_owns_its_end_of_the_forward() -> None:
    HEADS.register("test-best-of-two", config=_BestOfConfig)(_BestOfTwoHead)
    try:
        torch.manual_seed(0)
        model = vlekit.build_model(**TINY, head="test-best-of-two")
        assert model.head.input_size == model.fusion.pooled_size  # filled in from the fusion
        out = model(**tiny_batch(model, batch=3))
        assert out["logits"].shape == (3, 4)
        assert (torch.isinf(out["logits"]).sum(-1) == 2).all()
        out["loss"].backward()
        assert model.head.score.weight.grad is not None
    finally:
        HEADS.unregister("test-best-of-two")


def test_a_head_outside_the_interface_is_refused_with_what_it_must_be() -> None:
    @dataclass(frozen=True)
    class Config:
        pooled_size: int

    class DuckHead(torch.nn.Module):  # the attributes of a head, but not a Head
        reads, multiple_choice = "pooled", True

        def __init__(self, *, config: Config) -> None:
            super().__init__()
            self.config, self.input_size = config, config.pooled_size

    HEADS.register("test-duck-head", config=Config)(DuckHead)
    try:
        with pytest.raises(TypeError, match=r"'test-duck-head' \(DuckHead\) must subclass vlekit.interfaces.Head"):
            vlekit.build_model(**TINY, head="test-duck-head")
    finally:
        HEADS.unregister("test-duck-head")


def test_the_tasks_are_registered_with_their_head_score_and_chance() -> None:
    assert {"q2a", "qa2r", "vqa"} <= {row["name"] for row in vlekit.list_components("task")}
    q2a, qa2r, vqa = task_for("q2a"), task_for("qa2r"), task_for("vqa")
    assert isinstance(q2a, VCRTask) and isinstance(qa2r, VCRTask) and isinstance(vqa, VQATask)
    assert (q2a.head, q2a.multiple_choice, q2a.chance) == ("vcr-multiple-choice", True, 0.25)
    assert (vqa.head, vqa.multiple_choice, vqa.chance) == ("vqa", False, None)
    logits = torch.tensor([[0.1, 2.0, 0.3, 0.0], [3.0, 0.0, 0.0, 0.0]])
    assert q2a.score(logits, torch.tensor([1, 2])) == 0.5
    targets = torch.tensor([[0.0, 0.6, 0.3, 0.0], [1.0, 0.0, 0.0, 0.0]])
    assert vqa.score(logits, targets) == pytest.approx(float(soft_accuracy(logits, targets))) == pytest.approx(0.8)
    with pytest.raises(RegistryError, match="unknown task 'q2r'.*Did you mean"):
        task_for("q2r")


class _TopTwo(VCRTask):
    """A plugin's task: VCR Q->A (its data pipeline), right when the gold answer is among the two best."""

    data_task = "q2a"
    chance = 0.5

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        return float((logits.topk(2, dim=-1).indices == labels[:, None]).any(-1).float().mean())


def test_a_plugin_task_is_one_class_and_one_registration(trained_run, tmp_path, capsys) -> None:
    """A registered task is a ``data.task`` a run may name (no list to add it to): the run reads, trains and
    validates with the task's own score, saves its name in config.yaml and the pipeline's in data.json."""
    from torch.utils.data import DataLoader

    from data_prep.dataset import VCRDataset
    from data_prep.vcr import read_vcr
    from vlekit.evaluation.evaluate import evaluate, predict
    from vlekit.evaluation.tasks import NoOptions
    from vlekit.registry import TASKS, register_task
    from vlekit.runs.experiment import load_experiment
    from vlekit.runs.folder import load_trained
    from vlekit.tables import format_metrics_table
    from vlekit.training.train import train

    from helpers import SMALL_IMAGES, tiny_overrides

    overrides = [*tiny_overrides(trained_run.data, tmp_path / "run", epochs=1), SMALL_IMAGES, "data.task=test-q2a-top2"]
    with pytest.raises(ValueError, match=r"data.task='test-q2a-top2' is not supported; choose one of 'q2a', 'qa2r', 'vqa'"):
        load_experiment(None, overrides)
    register_task("test-q2a-top2", config=NoOptions, description="Q->A, right when the gold answer is in the top two")(_TopTwo)
    try:
        assert "test-q2a-top2" in {row["name"] for row in vlekit.list_components("task")}
        config = load_experiment(None, overrides)
        result = train(config, progress=False)
        assert load_experiment(result.out / "config.yaml").data.task == "test-q2a-top2"
        trained = load_trained(result.model_dir)
        assert trained.task == "q2a"  # the data pipeline it was trained with, which evaluation reads
        records = read_vcr(trained_run.data.val)
        dataset = VCRDataset(records, trained.preprocessor(images_root=trained_run.data.images_root))
        logits, labels = predict(trained.model, DataLoader(dataset, batch_size=8, collate_fn=dataset.collate))
        top_two = float((logits.topk(2, dim=-1).indices == labels[:, None]).any(-1).float().mean())
        assert result.val_accuracy == pytest.approx(top_two, abs=1e-6)
        assert top_two >= float((logits.argmax(-1) == labels).float().mean())

        # vlekit eval reports the task's own score (and its bootstrap interval) beside the pipeline's accuracy.
        evaluated = evaluate([result.model_dir], annotations=trained_run.data.val, images=trained_run.data.images_root,
                             num_workers=0, progress=False, resamples=200)["metrics"]
        assert evaluated.keys() == {"q2a", "test-q2a-top2"}
        assert evaluated["q2a"]["accuracy"] == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))
        mine = evaluated["test-q2a-top2"]
        assert mine["accuracy"] == pytest.approx(top_two, abs=1e-6) and (mine["chance"], mine["n"]) == (0.5, len(records))
        assert mine["ci95"][0] <= mine["accuracy"] <= mine["ci95"][1] and mine["ci95"][0] < mine["ci95"][1]
        assert "test-q2a-top2" in format_metrics_table(evaluated)

        class Elsewhere(_TopTwo):
            data_task = "retrieval"

        TASKS.unregister("test-q2a-top2")
        register_task("test-q2a-top2", config=NoOptions)(Elsewhere)
        with pytest.raises(ValueError, match=r"task 'test-q2a-top2''s data_task='retrieval' is not supported; choose one "
                                             r"of 'q2a', 'qa2r', 'vqa'"):
            load_experiment(None, overrides)
        TASKS.unregister("test-q2a-top2")  # where the plugin is not installed: the pipeline's accuracy, and why
        assert evaluate([result.model_dir], annotations=trained_run.data.val, images=trained_run.data.images_root,
                        num_workers=0, progress=False, resamples=10)["metrics"].keys() == {"q2a"}
        assert "trained for the task 'test-q2a-top2', which cannot be found here" in capsys.readouterr().err
    finally:
        TASKS.unregister("test-q2a-top2")
