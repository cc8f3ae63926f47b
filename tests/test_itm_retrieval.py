"""ITM retrieval: the score matrix equals one forward pass per pair, and recall follows from it."""
from __future__ import annotations

import pytest
import torch

from vlekit import build_model
from vlekit.evaluation.itm_retrieval import itm_retrieval, itm_score_matrix
from vlekit.evaluation.metrics import retrieval_recall

IMAGES, TEXTS, LENGTH = 3, 5, 6


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(head="itm").eval()


def texts_and_images(model, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    attention_mask = torch.ones(TEXTS, LENGTH, dtype=torch.long)
    attention_mask[1, 3:] = 0
    attention_mask[4, 5:] = 0
    size = model.vision_encoder.image_size
    return {"input_ids": torch.randint(0, 100, (TEXTS, LENGTH), generator=g) * attention_mask,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(IMAGES, 3, size, size, generator=g)}


def test_score_matrix_is_the_match_probability_of_each_pair_alone(model) -> None:
    inputs = texts_and_images(model)
    scores = itm_score_matrix(model, **inputs, batch_size=4)  # chunks that straddle images
    assert scores.shape == (IMAGES, TEXTS)
    with torch.no_grad():
        for i in range(IMAGES):
            for t in range(TEXTS):
                logits = model(input_ids=inputs["input_ids"][t:t + 1], attention_mask=inputs["attention_mask"][t:t + 1],
                               pixel_values=inputs["pixel_values"][i:i + 1])["logits"][0]
                torch.testing.assert_close(scores[i, t], logits.softmax(-1)[1], atol=1e-5, rtol=1e-5)
    assert scores.std() > 1e-5  # the pairs do differ


def test_retrieval_recall_comes_from_the_scores(model) -> None:
    inputs = texts_and_images(model, seed=1)
    owners = [0, 0, 1, 2, 2]
    recall, scores = itm_retrieval(model, **inputs, text_to_image=owners, ks=(1, 2, 10))
    assert recall == retrieval_recall(scores, owners, ks=(1, 2, 10))
    assert recall.image_to_text[10] == 100.0 and recall.text_to_image[10] == 100.0


def test_retrieval_needs_the_itm_head() -> None:
    model = build_model(head={"name": "vqa", "num_labels": 3})
    with pytest.raises(TypeError, match="retrieval needs the 'itm' head"):
        itm_score_matrix(model, **texts_and_images(model))
