"""``vlekit diagnose``: each probe changes what it says and nothing else; the command end to end.

Most tests run a tiny random-init model (the demo's architecture) held in memory on a small synthetic
split: the probes' claims are about the inputs and the model's invariances, not about a trained
accuracy. The command-line test reads the shared tiny run ``vlekit train`` wrote (``conftest.trained_run``).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import vlekit
from data_prep.constants import NUM_CHOICES, PERSON_NAMES
from data_prep.dataset import VCRDataset
from data_prep.synthetic import generate_synthetic_vcr
from data_prep.text import person_names, render_tokens
from data_prep.tokenizer import build_word_tokenizer
from data_prep.vcr import read_vcr
from vlekit.cli import main as cli_main
from vlekit.diagnose import probes as P
from vlekit.diagnose.context import DiagnoseContext
from vlekit.diagnose.report import probe_row, question_types
from vlekit.diagnose.run import DEFAULT_PROBES, diagnose
from vlekit.model import BATCH_KEYS
from vlekit.registry import PROBES, RegistryError
from vlekit.runs.folder import TrainedModel

@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate_synthetic_vcr(tmp_path_factory.mktemp("diagnose") / "data", num_train=16, num_val=24, num_test=0, seed=5)


@pytest.fixture(scope="module")
def tokenizer(data):
    return build_word_tokenizer([data.train, data.val])


def tiny_run(tokenizer, *, folder: Path, vision_encoder=None, task: str = "q2a", seed: int = 0) -> TrainedModel:
    """The demo's architecture, random init, as a loaded run (no training: the probes' claims are about inputs)."""
    torch.manual_seed(seed)
    model = vlekit.build_model(vision_encoder=vision_encoder or {"name": "tiny-clip", "hf_config": {"image_size": 32}})
    return TrainedModel(folder=folder, model=model.eval(), tokenizer=tokenizer, data={"task": task}, mixed_precision="fp32")


@pytest.fixture(scope="module")
def run(tokenizer, data):
    return tiny_run(tokenizer, folder=data.root)


@pytest.fixture
def context(run, data):
    return DiagnoseContext(run, read_vcr(data.val), images=data.images_root, batch_size=8, num_workers=0, progress=False)


def first_batch(context: DiagnoseContext) -> dict[str, torch.Tensor]:
    preprocessor = context.trained.preprocessor(images_root=context.images)
    batch = preprocessor.collate([preprocessor(record) for record in context.records[:6]])
    return {key: batch[key] for key in BATCH_KEYS}


def scores(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch)["logits"]


# -- image-blind ---------------------------------------------------------------------------------------------
def test_image_blind_makes_the_scores_independent_of_the_pixels(context):
    model, batch = context.model, first_batch(context)
    other = {**batch, "pixel_values": torch.randn_like(batch["pixel_values"]) * 2}
    assert not torch.allclose(scores(model, batch), scores(model, other), atol=1e-4)  # the model does look ...
    mean = context.mean_pixels()
    torch.testing.assert_close(scores(model, P.blind_pixels(batch, mean)), scores(model, P.blind_pixels(other, mean)))
    # ... and the mean image is the mean of the split's normalised pixels, over its questions.
    preprocessor = context.trained.preprocessor(images_root=context.images)
    expected = torch.stack([preprocessor.load_pixels(r) for r in context.records]).mean(0)
    torch.testing.assert_close(mean, expected, atol=1e-5, rtol=0)


def test_image_blind_probe_gives_the_same_scores_whichever_pictures_the_questions_have(run, data, context):
    records = read_vcr(data.val)
    shuffled = [{**r, "img_fn": records[(i + 5) % len(records)]["img_fn"]} for i, r in enumerate(records)]
    other = DiagnoseContext(run, shuffled, images=data.images_root, batch_size=8, num_workers=0, progress=False)
    probe = PROBES.build("image-blind")
    assert not probe.needs_pixels  # its passes decode no image
    assert not np.allclose(context.logits("full"), other.logits("full"), atol=1e-4)
    np.testing.assert_allclose(probe.run(context).scores, probe.run(other).scores)
    np.testing.assert_allclose(context.logits("image-blind"), other.logits("image-blind"), atol=1e-5)


# -- no-object-tokens, no-type-ids ---------------------------------------------------------------------------
def test_no_object_tokens_removes_every_object_slot_and_only_that(context):
    model, batch = context.model, first_batch(context)
    changed = P.without_object_tokens(batch)
    assert batch["object_mask"].sum() > 0 and changed["object_mask"].sum() == 0
    assert not changed["object_patch_mask"].any() and not changed["object_type_ids"].any()
    for key in ("input_ids", "attention_mask", "text_type_ids", "pixel_values"):
        assert changed[key] is batch[key]
    assert not torch.allclose(scores(model, changed), scores(model, batch), atol=1e-5)
    # Whatever the boxes, the scores stay: no object token reaches the model.
    moved = {**batch, "object_patch_mask": batch["object_patch_mask"].roll(3, dims=-1)}
    torch.testing.assert_close(scores(model, P.without_object_tokens(moved)), scores(model, changed))


def test_no_type_ids_zeroes_the_object_tags_in_the_text_only(context):
    batch = first_batch(context)
    changed = P.without_text_types(batch)
    assert (batch["text_type_ids"] >= 2).any() and not changed["text_type_ids"].any()
    assert changed["object_type_ids"] is batch["object_type_ids"] and changed["input_ids"] is batch["input_ids"]
    assert not torch.allclose(scores(context.model, changed), scores(context.model, batch), atol=1e-6)


# -- question-blind ------------------------------------------------------------------------------------------
def test_question_blind_masks_exactly_the_question_tokens_and_the_objects_only_it_names():
    cls, sep = 2, 3
    ids = torch.tensor([[cls, 10, 11, 12, sep, 20, 21, sep, 0, 0]] * NUM_CHOICES).unsqueeze(0)  # [1, 4, 10]
    types = torch.tensor([[0, 2, 0, 3, 0, 0, 3, 0, 0, 0]] * NUM_CHOICES).unsqueeze(0)  # object 0: question only
    batch = {
        "input_ids": ids, "attention_mask": (ids != 0).long(), "text_type_ids": types,
        "pixel_values": torch.zeros(1, 3, 32, 32),
        "object_patch_mask": torch.ones(1, NUM_CHOICES, 3, 16, dtype=torch.bool),
        "object_type_ids": torch.tensor([[[2, 3, 0]] * NUM_CHOICES]),
        "object_mask": torch.tensor([[[1, 1, 0]] * NUM_CHOICES]),
    }
    changed = P.question_masked(batch, sep)
    assert changed["attention_mask"][0, 0].tolist() == [1, 0, 0, 0, 1, 1, 1, 1, 0, 0]
    assert changed["text_type_ids"][0, 0].tolist() == [0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
    assert changed["object_mask"][0, 0].tolist() == [0, 1, 0]  # object 1 is named by the answer too: kept
    assert changed["object_type_ids"][0, 0].tolist() == [0, 3, 0]
    assert not changed["object_patch_mask"][0, :, 0].any() and changed["object_patch_mask"][0, :, 1].all()
    assert torch.equal(changed["input_ids"], ids) and torch.equal(batch["attention_mask"], (ids != 0).long())
    with pytest.raises(ValueError, match=r"no \[SEP\]"):
        P.question_masked({**batch, "input_ids": torch.where(ids == sep, 5, ids)}, sep)


def test_question_blind_scores_do_not_depend_on_the_question(context):
    model, batch = context.model, first_batch(context)
    question = P.question_positions(batch["input_ids"], context.sep_token_id)
    assert question.any()
    reworded = {**batch, "input_ids": torch.where(question, torch.randint_like(batch["input_ids"], 5, 30), batch["input_ids"])}
    assert not torch.allclose(scores(model, reworded), scores(model, batch), atol=1e-6)
    blind = scores(model, P.question_masked(batch, context.sep_token_id))
    torch.testing.assert_close(scores(model, P.question_masked(reworded, context.sep_token_id)), blind)


# -- choice-permutation --------------------------------------------------------------------------------------
def test_choice_orders_put_every_choice_once_at_every_position():
    orders = P.latin_orders(50, seed=1)
    assert orders.shape == (NUM_CHOICES, 50, NUM_CHOICES)
    assert (np.sort(orders, axis=-1) == np.arange(NUM_CHOICES)).all()  # each order is a permutation
    assert (np.sort(orders, axis=0) == np.arange(NUM_CHOICES)[:, None, None]).all()  # each choice once per position
    assert len({tuple(o) for o in orders[0]}) > 5  # shuffled, not the same order for every question


def test_permuting_choices_moves_the_label_and_the_per_choice_fields_with_the_gold_choice(data):
    record = read_vcr(data.val)[0]
    for task, key, label_key in (("q2a", "answer_choices", "answer_label"), ("qa2r", "rationale_choices", "rationale_label")):
        for order in P.latin_orders(1, seed=3)[:, 0]:
            permuted = P.permute_choices(record, order, task=task)
            assert permuted[key] == [record[key][i] for i in order]
            assert permuted[key][permuted[label_key]] == record[key][record[label_key]]
            match = key.replace("choices", "match_iter")
            assert permuted[match][permuted[label_key]] == 0  # VCR's invariant still holds
    assert P.permute_choices(record, [1, 0, 2, 3], task="qa2r")["answer_choices"] == record["answer_choices"]
    with pytest.raises(ValueError, match="not a permutation"):
        P.permute_choices(record, [0, 0, 1, 2], task="q2a")


class FakeContext:
    """A ProbeContext whose 'model' scores choices by a rule: probes are checked without any network."""

    def __init__(self, records, rule, task="q2a"):
        self.task, self.records, self.seed, self.sep_token_id = task, records, 0, 3
        self.labels = np.array([r[P.LABEL_KEY[task]] for r in records])
        self.rule = rule

    def logits(self, name, *, transform=None, records=None, pixels=True):
        return np.array([[self.rule(record, j) for j in range(NUM_CHOICES)] for record in (records or self.records)])

    def pass_logits(self, name, spec):
        return self.logits(name, records=spec.records)


def test_choice_permutation_tells_a_content_reader_from_a_position_picker(data):
    records = read_vcr(data.val)
    probe = PROBES.build("choice-permutation")

    def reads_the_gold_content(record, j):  # knows the answer wherever it stands
        return float(record["answer_match_iter"][j] == 0)

    reader = probe.run(FakeContext(records, reads_the_gold_content))
    assert reader.scores.tolist() == [1.0] * len(records) and reader.details["follows_content"] == 1.0
    assert reader.details["by_gold_position"] == {str(p): 1.0 for p in range(NUM_CHOICES)}

    picker = probe.run(FakeContext(records, lambda record, j: float(j == 0)))  # always the first choice
    assert picker.details["by_gold_position"] == {"0": 1.0, "1": 0.0, "2": 0.0, "3": 0.0}
    assert picker.scores.tolist() == [0.25] * len(records)  # each gold position once per question
    assert picker.details["follows_content"] == 0.0
    assert picker.outcomes.dtype == bool and len(picker.outcomes) == len(records)


# -- name-swap -----------------------------------------------------------------------------------------------
def test_name_swap_renames_each_person_consistently_and_nothing_else(data):
    record = next(r for r in read_vcr(data.val) if len(person_names(r)) >= 2)
    names = person_names(record)
    swapped = P.swap_person_names(record, 4)
    for tokens, new_tokens in zip([record["question"], *record["answer_choices"], *record["rationale_choices"]],
                                  [swapped["question"], *swapped["answer_choices"], *swapped["rationale_choices"]]):
        old_text, old_spans = render_tokens(tokens, record["objects"], names)
        new_text, new_spans = render_tokens(new_tokens, swapped["objects"], person_names(swapped))
        assert [s[3] for s in old_spans] == [s[3] for s in new_spans]  # the same objects mentioned, in order
        expected = old_text
        for index, name in names.items():  # every person's name moved 4 places along VCR's list
            expected = expected.replace(name, f"<{index}>")
        for index, name in names.items():
            expected = expected.replace(f"<{index}>", PERSON_NAMES[(PERSON_NAMES.index(name) + 4) % len(PERSON_NAMES)])
        assert new_text == expected and (new_text != old_text) == any(span[3] in names for span in old_spans)
    unnamed = [i for i, o in enumerate(record["objects"]) if i not in names]
    assert [swapped["objects"][i] for i in unnamed] == [record["objects"][i] for i in unnamed]
    with pytest.raises(ValueError, match="keeps every name"):
        P.swap_person_names(record, len(PERSON_NAMES))


def test_name_swap_leaves_a_name_agnostic_models_predictions_unchanged(tokenizer, data):
    agnostic = tiny_run(tokenizer, folder=data.root, seed=1)
    embeddings = agnostic.model.text_encoder.model.get_input_embeddings().weight
    ids = tokenizer.convert_tokens_to_ids(list(PERSON_NAMES))
    assert tokenizer.unk_token_id not in ids
    with torch.no_grad():
        embeddings[ids] = embeddings[ids[0]].clone()  # every person name reads the same
    context = DiagnoseContext(agnostic, read_vcr(data.val), images=data.images_root, batch_size=8, num_workers=0,
                              progress=False)
    outcome = PROBES.build("name-swap").run(context)
    assert outcome.details["questions_with_persons"] > 0 and outcome.details["changed_predictions"] == 0.0
    np.testing.assert_allclose(context.logits("name-swap"), context.logits("full"), atol=1e-5)
    # ... while a model that reads names is moved by the swap (so the check above could fail).
    plain = DiagnoseContext(tiny_run(tokenizer, folder=data.root, seed=1), read_vcr(data.val), images=data.images_root,
                            batch_size=8, num_workers=0, progress=False)
    PROBES.build("name-swap").run(plain)
    assert not np.allclose(plain.logits("name-swap"), plain.logits("full"), atol=1e-5)


# -- box-swap ------------------------------------------------------------------------------------------------
def test_swap_boxes_gives_each_object_the_box_of_another_of_its_class():
    objects = ["person", "dog", "person", "person", "car", "dog"]
    boxes = np.arange(7 * 4, dtype=float).reshape(7, 4)  # one box more than objects (metadata may hold more)
    for seed in range(20):
        swapped = P.swap_boxes(objects, boxes, rng=np.random.default_rng(seed))
        for cls in ("person", "dog"):
            members = [i for i, o in enumerate(objects) if o == cls]
            assert sorted(map(tuple, swapped[members])) == sorted(map(tuple, boxes[members]))  # the class's boxes ...
            assert all(not np.array_equal(swapped[i], boxes[i]) for i in members)  # ... none where it was
        np.testing.assert_array_equal(swapped[[4, 6]], boxes[[4, 6]])  # the only car, and the box past the objects
    np.testing.assert_array_equal(P.swap_boxes(objects, boxes, rng=np.random.default_rng(3)),
                                  P.swap_boxes(objects, boxes, rng=np.random.default_rng(3)))
    assert len({P.swap_boxes(objects, boxes, rng=np.random.default_rng(s))[0, 0] for s in range(20)}) == 2  # [2] or [3]


def test_mentioned_objects_are_those_the_tasks_texts_name():
    record = {"question": ["Is", [0], "with", [1, 3], "?"], "answer_choices": [["Yes", "."], [[2], "is", "."], ["No"], ["No"]],
              "answer_label": 0, "rationale_choices": [[[4], "."], ["-"], ["-"], ["-"]]}
    assert P.mentioned_objects(record, task="q2a") == {0, 1, 2, 3}
    assert P.mentioned_objects(record, task="qa2r") == {0, 1, 3, 4}  # the gold answer names none; the rationales do


def test_box_swap_moves_the_object_tokens_only_and_a_model_that_pools_them_notices(tokenizer, data):
    records = read_vcr(data.val)
    run = tiny_run(tokenizer, folder=data.root)
    preprocessor = run.preprocessor(images_root=data.images_root)
    outcome_context = DiagnoseContext(run, records, images=data.images_root, batch_size=8, num_workers=0, progress=False)
    outcome = PROBES.build("box-swap").run(outcome_context)
    # The synthetic frames hold several persons, and every question names one: most questions moved.
    assert 0.5 * len(records) < outcome.details["questions_moved"] <= len(records)
    assert not np.allclose(outcome_context.logits("box-swap"), outcome_context.logits("full"), atol=1e-5)
    # What the pass saw: the same text and picture, the object slots pooled from another person's box.
    rng = np.random.default_rng(0)
    metadata = []
    for record in records:
        geometry = P.load_geometry(data.images_root, record)
        metadata.append({"boxes": P.swap_boxes(record["objects"], geometry.boxes, rng=rng).tolist(),
                         "width": geometry.width, "height": geometry.height})
    own = VCRDataset(records, preprocessor)
    swapped = VCRDataset(records, preprocessor, metadata=metadata)
    moved_masks = 0
    for a, b in zip(own, swapped):
        for key in ("input_ids", "text_type_ids", "object_ids"):
            assert a[key] == b[key]
        torch.testing.assert_close(a["pixel_values"], b["pixel_values"])
        moved_masks += a["object_patches"] != b["object_patches"]
    assert moved_masks == outcome.details["questions_moved"]
    # Without object tokens in the image stream nothing of the change reaches the model: the scores stay.
    agnostic = DiagnoseContext(run, records, images=data.images_root, batch_size=8, num_workers=0, progress=False)
    full = agnostic.logits("full", transform=P.without_object_tokens)
    after = agnostic.logits("swapped", transform=P.without_object_tokens, metadata=metadata)
    np.testing.assert_allclose(after, full, atol=1e-6)


# -- word-overlap --------------------------------------------------------------------------------------------
def hand_made(question, answers, rationales=None, answer_label=0, rationale_label=0):
    return {"annot_id": "hand-0", "objects": ["person", "person", "umbrella"], "question": question.split(),
            "answer_choices": [a.split() for a in answers], "answer_label": answer_label,
            "rationale_choices": [r.split() for r in rationales or answers], "rationale_label": rationale_label}


def test_word_overlap_picks_the_choice_sharing_most_words_with_the_query():
    record = hand_made("why is the dog barking at the mailman ?",
                       ["it is hungry .", "the dog wants the mailman gone .", "it is raining .", "someone sang ."])
    record["question"][1:2] = [[0]]  # "why [0] the dog ...": a person mention renders as a name
    assert P.word_overlaps(record, task="q2a") == [0, 3, 0, 0]  # the, dog, mailman
    rng = np.random.default_rng(0)
    assert P.word_overlap_choice(record, task="q2a", rng=rng) == 1
    # QA->R: the gold answer joins the query ("raining" shared with it only).
    qa2r = hand_made("why is it wet ?", ["it is raining .", "a pipe broke .", "x", "y"],
                     ["clouds are raining down .", "pipes are old .", "it is dry .", "nobody knows ."], answer_label=0)
    assert P.word_overlaps(qa2r, task="qa2r") == [1, 0, 2, 0]  # raining | - | it, is
    assert P.word_overlap_choice(qa2r, task="qa2r", rng=rng) == 2
    # Names count as words: the choice naming the question's person wins.
    named = hand_made("what does [1] hold ?", ["[0] holds it .", "[1] holds it .", "nothing .", "a cup ."])
    named = {**named, "question": ["what", "does", [1], "hold", "?"],
             "answer_choices": [[[0], "holds"], [[1], "holds"], ["nothing"], ["a", "cup"]]}
    assert P.word_overlap_choice(named, task="q2a", rng=rng) == 1


def test_word_overlap_breaks_ties_at_random_and_is_a_registered_model_free_probe():
    record = hand_made("who ?", ["a .", "b .", "c .", "d ."])
    picks = {P.word_overlap_choice(record, task="q2a", rng=np.random.default_rng(seed)) for seed in range(40)}
    assert picks == {0, 1, 2, 3}
    probe = PROBES.build("word-overlap")
    assert not probe.uses_model
    outcome = probe.run(FakeContext([hand_made("why is the dog wet ?", ["the dog swam .", "no", "x", "y"])] * 3,
                                    rule=None))
    assert outcome.scores.tolist() == [1.0, 1.0, 1.0]


# -- statistics and the registry -----------------------------------------------------------------------------
def test_probe_rows_pair_each_question_with_full():
    full = P.ProbeOutcome(scores=np.array([1.0] * 60 + [0.0] * 40))
    worse = P.ProbeOutcome(scores=np.array([1.0] * 30 + [0.0] * 70))
    row = probe_row(worse, full, chance=0.25, resamples=500)
    assert row["accuracy"] == 0.3 and row["delta"] == pytest.approx(-0.3)
    assert row["delta_ci95"][1] < 0 and row["p_bootstrap"] < 0.01 and row["p_mcnemar"] < 1e-6
    assert row["ci95"][0] < 0.3 < row["ci95"][1] and row["includes_chance"] == (row["ci95"][0] <= 0.25)
    reference = probe_row(full, full, chance=0.25, resamples=500)
    assert reference["delta"] == 0 and reference["p_mcnemar"] == 1.0 and not reference["includes_chance"]
    with pytest.raises(ValueError, match="shares, not 0 / 1"):
        P.ProbeOutcome(scores=np.array([0.5, 1.0])).outcomes


def test_question_types_are_first_words_with_small_types_pooled():
    records = [{"question": [w, "x"]} for w in ["Why"] * 3 + ["What"] * 2 + ["Is"]] + [{"question": [[0], "is"]}]
    assert question_types(records, min_questions=2) == ["why"] * 3 + ["what"] * 2 + ["other", "other"]


def test_a_probe_that_changes_nothing_says_what_it_must_override(context):
    class Empty(P.Probe):
        pass

    probe = Empty(config=P.NoOptions())
    assert not probe.batch_level and probe.passes(context) == {}
    with pytest.raises(NotImplementedError, match="'Empty' overrides neither transform nor run"):
        probe.run(context)


def test_probes_are_registered_like_components_and_listed(capsys):
    assert set(DEFAULT_PROBES) <= {entry.name for entry in PROBES.entries()}
    assert cli_main(["list", "--kind", "probe"]) == 0
    listed = capsys.readouterr().out
    assert "image-blind" in listed and "core" in listed and "choice-permutation" in listed
    with pytest.raises(RegistryError, match="unknown probe 'image-blnd'.*'image-blind'"):
        PROBES.build("image-blnd")


# -- the blind vision encoder --------------------------------------------------------------------------------
def test_a_model_with_the_blind_vision_encoder_does_not_depend_on_the_pixels(tokenizer, data):
    blind = tiny_run(tokenizer, folder=data.root, vision_encoder={"name": "blind", "image_size": 32, "patch_size": 8})
    context = DiagnoseContext(blind, read_vcr(data.val), images=data.images_root, batch_size=8, num_workers=0,
                              progress=False)
    batch = first_batch(context)
    other = {**batch, "pixel_values": torch.randn_like(batch["pixel_values"])}
    torch.testing.assert_close(scores(blind.model, other), scores(blind.model, batch))
    # Nor on the boxes: every patch token is the same, so is every object token.
    moved = {**batch, "object_patch_mask": batch["object_patch_mask"].roll(5, dims=-1) | batch["object_patch_mask"]}
    torch.testing.assert_close(scores(blind.model, moved), scores(blind.model, batch))


# -- passes run together --------------------------------------------------------------------------------------
@pytest.mark.parametrize("compat", [None, "vle"])
def test_every_probes_passes_decode_each_picture_once_and_give_what_passes_one_by_one_give(
        run, data, monkeypatch, compat):
    """The 10 model passes of the default probes on the split's own pictures (changed batches, choice orders,
    names, boxes) share one pass over the images; image-blind decodes none. compat="vle" (VLE's person-name
    counter runs on over a pass's records): each pass still names persons as a pass of its own would."""
    import dataclasses

    from data_prep.preprocess import VCRPreprocessor
    from vlekit.diagnose.run import build_probes, run_probes

    if compat is not None:  # the official pipeline's text needs a SentencePiece tokenizer
        from data_prep.tokenizer import build_sentencepiece_tokenizer

        tokenizer = build_sentencepiece_tokenizer([data.train, data.val])
        run = dataclasses.replace(tiny_run(tokenizer, folder=data.root), data={"task": "q2a", "compat": compat})
    records = read_vcr(data.val)
    probes = build_probes(DEFAULT_PROBES, "q2a")
    decoded = []
    load_pixels = VCRPreprocessor.load_pixels
    monkeypatch.setattr(VCRPreprocessor, "load_pixels",
                        lambda self, record: decoded.append(record["img_fn"]) or load_pixels(self, record))
    together = DiagnoseContext(run, records, images=data.images_root, batch_size=8, num_workers=0, progress=False)
    passes = {name: spec for probe in probes for name, spec in probe.passes(together).items()}
    assert len(passes) == 11 and not passes["image-blind"].pixels
    run_probes(together, probes, progress=False)
    assert sorted(decoded) == sorted(r["img_fn"] for r in records)  # each question's picture, once
    alone = DiagnoseContext(run, records, images=data.images_root, batch_size=8, num_workers=0, progress=False)
    for name, spec in passes.items():
        np.testing.assert_allclose(together.pass_logits(name, spec), alone.pass_logits(name, spec), atol=1e-5, err_msg=name)
    assert len(decoded) == len(records) * (1 + 10)  # one by one: each pass but image-blind decodes them all again


# -- end to end ----------------------------------------------------------------------------------------------
def test_diagnose_writes_every_probe_with_its_interval_and_difference(run, data, tmp_path):
    result = diagnose(run, annotations=data.val, images=data.images_root, out=tmp_path, num_workers=0, batch_size=8,
                      progress=False, resamples=200, min_type_questions=5)
    saved = json.loads((tmp_path / "diagnose.json").read_text())
    assert saved == json.loads(json.dumps(result))
    assert list(saved["probes"]) == list(DEFAULT_PROBES) and saved["n"] == 24 and saved["task"] == "q2a"
    full = saved["probes"]["full"]["accuracy"]
    for name, row in saved["probes"].items():
        assert row["ci95"][0] <= row["accuracy"] <= row["ci95"][1] and row["n"] == 24
        assert row["delta"] == pytest.approx(row["accuracy"] - full)
        assert row["delta_ci95"][0] <= row["delta"] + 1e-9 and row["delta"] - 1e-9 <= row["delta_ci95"][1]
        assert 0 <= row["p_mcnemar"] <= 1 and row["chance"] == 0.25
    assert set(saved["probes"]["choice-permutation"]["by_gold_position"]) == {"0", "1", "2", "3"}
    types = saved["by_question_type"]
    assert sum(entry["n"] for entry in types.values()) == 24 and "who" in types
    assert set(types["who"]["probes"]) == set(DEFAULT_PROBES)
    assert (tmp_path / "diagnose.png").stat().st_size > 1000 and "| image-blind |" in (tmp_path / "diagnose.md").read_text()


def test_vlekit_diagnose_on_the_shared_trained_run(trained_run, tmp_path, capsys):
    """The command on a run ``vlekit train`` wrote (conftest.trained_run: the demo's experiment, read only)."""
    data, out = trained_run.data, tmp_path / "diagnose"
    args = ["diagnose", "--run", str(trained_run.q2a), "--annotations", str(data.val), "--images", str(data.images_root),
            "--out", str(out), "--num-workers", "0", "--no-progress", "--probes", "image-blind", "question-blind"]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "image-blind" in printed and "question-blind" in printed and str(out / "diagnose.json") in printed
    saved = json.loads((out / "diagnose.json").read_text())
    assert list(saved["probes"]) == ["full", "image-blind", "question-blind"]
    assert saved["run"] == str(trained_run.q2a / "model") and saved["n"] == len(read_vcr(data.val))
    evaluated = json.loads((trained_run.eval / "metrics.json").read_text())["q2a"]["accuracy"]
    assert saved["probes"]["full"]["accuracy"] == pytest.approx(evaluated)  # full is the run as vlekit eval scores it
    assert cli_main([*args[:-2], "no-such-probe"]) == 2
    assert "unknown probe 'no-such-probe'" in capsys.readouterr().err


def test_an_out_holding_another_diagnosis_is_refused_and_an_evaluation_beside_it_is_left_alone(
        trained_run, tmp_path, capsys):
    """diagnose-inputs.json records what a diagnosis is of (as vlekit eval's inputs.json): the same run on the same
    split may run again into its --out, another run is refused before any work unless --overwrite; the files of an
    evaluation in the same folder (the README's --out runs/eval for both) are not touched either way."""
    import shutil

    data, out = trained_run.data, tmp_path / "eval"
    shutil.copytree(trained_run.eval, out)  # an evaluation's files, as vlekit eval wrote them
    evaluation = {p.name: p.read_bytes() for p in out.iterdir()}
    common = ["--annotations", str(data.val), "--images", str(data.images_root), "--out", str(out),
              "--num-workers", "0", "--no-progress", "--probes", "image-blind"]
    assert cli_main(["diagnose", "--run", str(trained_run.q2a), *common]) == 0
    assert str(out / "diagnose.json") in capsys.readouterr().out
    inputs = json.loads((out / "diagnose-inputs.json").read_text())
    manifest = json.loads((trained_run.q2a / "model" / "manifest.json").read_text())["files"]
    assert inputs["models"] == [{"folder": str((trained_run.q2a / "model").resolve()), "task": "q2a",
                                 "weights_sha256": manifest["model.safetensors"]["sha256"]}]
    assert inputs["options"]["probes"] == ["full", "image-blind"]
    assert cli_main(["diagnose", "--run", str(trained_run.q2a), *common, "question-blind"]) == 0  # a rerun, other probes
    assert list(json.loads((out / "diagnose.json").read_text())["probes"]) == ["full", "image-blind", "question-blind"]

    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert cli_main(["diagnose", "--run", str(trained_run.qa2r), *common]) == 2
    error = capsys.readouterr().err
    assert f"--out {out} holds the results of another diagnosis" in error and str(trained_run.q2a / "model") in error
    assert "--overwrite" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert cli_main(["diagnose", "--run", str(trained_run.qa2r), "--overwrite", *common]) == 0
    assert json.loads((out / "diagnose.json").read_text())["task"] == "qa2r"
    assert {name: (out / name).read_bytes() for name in evaluation} == evaluation  # the evaluation's files, as they were

    (out / "diagnose-inputs.json").unlink()  # a diagnosis an older vlekit wrote: what it is of is unknown
    with pytest.raises(ValueError, match="no diagnose-inputs.json: results of an older vlekit"):
        diagnose(trained_run.qa2r, annotations=data.val, images=data.images_root, out=out, probes=["image-blind"],
                 num_workers=0, progress=False)


def test_the_blind_grid_adds_the_text_only_row_to_the_demo_grids_own_runs(tmp_path):
    from data_prep.synthetic import SyntheticVCR
    from vlekit.ablation import grid as ablation

    root = tmp_path / "data"
    data = SyntheticVCR(root, root / "vcr1images", root / "train.jsonl", root / "val.jsonl", root / "test.jsonl")
    demo = ablation.demo_grid(out=str(tmp_path / "demo"))
    blind = ablation.load_grid(Path(__file__).resolve().parents[1] / "configs" / "grids" / "ablation-blind.yaml",
                               out=str(tmp_path / "blind"))
    assert (blind.seeds, blind.synthetic_data, blind.reference, blind.baseline) == (demo.seeds, demo.synthetic_data, "vle", "text-only")
    def run_config(grid, name: str) -> dict:
        variant = next(v for v in grid.variants if v.name == name)
        config = ablation.variant_config(grid, variant, seed=1, data=data, tokenizer="tok").to_dict()
        return {**config, "train": {**config["train"], "out": None}}  # all but the run's folder

    for name in ("vle", "no-object-tokens"):  # the same runs as the demo grid's rows
        assert run_config(demo, name) == run_config(blind, name)
    assert run_config(blind, "vle") != run_config(blind, "text-only")
    text_only = next(v for v in blind.variants if v.name == "text-only")
    config = ablation.variant_config(blind, text_only, seed=0, data=data, tokenizer="tok")
    assert dict(config.model.vision_encoder) == {"name": "blind", "hidden_size": 64, "image_size": 32, "patch_size": 8}
