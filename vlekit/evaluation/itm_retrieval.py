"""Image-text retrieval with an ITM model: every image scored against every text, then recall@k.

VLE (like METER) ranks candidates by the ITM head's match probability, one fused forward pass per
(image, text) pair: ``I * T`` passes, so this is for small evaluation sets (a few hundred pairs a
side on a GPU); pairs are batched ``batch_size`` at a time.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from vlekit.components.heads import ITMHead
from vlekit.interfaces import check_shape
from vlekit.model import VCRModel
from vlekit.evaluation.metrics import RetrievalRecall, retrieval_recall

__all__ = ["itm_retrieval", "itm_score_matrix"]


@torch.no_grad()
def itm_score_matrix(
    model: VCRModel, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
    batch_size: int = 64,
) -> torch.Tensor:
    """Match probabilities ``[I, T]`` of every image with every text (softmax of the ITM logits, class 1).

    Args:
        model: a model with the ``itm`` head (e.g. ``from_vle_pretrained(DIR, task="itm")``); it is
            run as it is (call ``model.eval()`` first for deterministic scores).
        input_ids, attention_mask: the T texts, ``[T, L]``.
        pixel_values: the I images, ``[I, 3, H, W]`` (normalised floats or uint8), on the model's device.
        batch_size: pairs per forward pass.
    """
    if not isinstance(model.head, ITMHead):
        raise TypeError(f"itm_score_matrix: the model's head is {type(model.head).__name__}; retrieval needs the 'itm' head")
    if batch_size < 1:
        raise ValueError(f"itm_score_matrix: batch_size must be >= 1, got {batch_size}")
    check_shape(input_ids, ("T", "L"), name="input_ids", where="itm_score_matrix")
    check_shape(attention_mask, tuple(input_ids.shape), name="attention_mask", where="itm_score_matrix")
    check_shape(pixel_values, ("I", 3, "H", "W"), name="pixel_values", where="itm_score_matrix")
    num_images, num_texts = pixel_values.shape[0], input_ids.shape[0]
    pairs = torch.cartesian_prod(torch.arange(num_images), torch.arange(num_texts))  # [I * T, 2], image-major
    scores = []
    for chunk in pairs.split(batch_size):
        images, texts = chunk[:, 0].to(pixel_values.device), chunk[:, 1].to(input_ids.device)
        logits = model(input_ids=input_ids[texts], attention_mask=attention_mask[texts], pixel_values=pixel_values[images])["logits"]
        scores.append(ITMHead.match_score(logits))
    return torch.cat(scores).view(num_images, num_texts)


def itm_retrieval(
    model: VCRModel, *, input_ids: torch.Tensor, attention_mask: torch.Tensor, pixel_values: torch.Tensor,
    text_to_image: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10), batch_size: int = 64,
) -> tuple[RetrievalRecall, torch.Tensor]:
    """Image->text and text->image recall@k (percent) of an ITM model over a small set, and the scores ``[I, T]``.

    ``text_to_image [T]``: the index of each text's own image (several texts may share one, as the
    five captions of COCO / Flickr30k do). See :func:`itm_score_matrix` and
    :func:`vlekit.evaluation.metrics.retrieval_recall` (ties rank by index).
    """
    scores = itm_score_matrix(model, input_ids=input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                              batch_size=batch_size)
    return retrieval_recall(scores, text_to_image, ks=ks), scores
