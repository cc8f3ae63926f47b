"""VQA, ITM and PBC heads (vlekit/components/heads.py) against an independent computation of the official heads."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlekit.components.heads import (
    ITMHead,
    ITMHeadConfig,
    PBCHead,
    PBCHeadConfig,
    VQAHead,
    VQAHeadConfig,
    box_patch_labels,
    pbc_heat_map,
)

H = 8


def _official_block(x: torch.Tensor, weights: dict[str, torch.Tensor], *, prefix: str) -> torch.Tensor:
    """Linear, LayerNorm (eps 1e-5), erf GELU, Linear written out, one vector at a time."""
    rows = []
    for vector in x.reshape(-1, x.shape[-1]).double():
        hidden = weights[f"{prefix}.0.weight"].double() @ vector + weights[f"{prefix}.0.bias"].double()
        mean, var = hidden.mean(), ((hidden - hidden.mean()) ** 2).mean()
        hidden = (hidden - mean) / torch.sqrt(var + 1e-5) * weights[f"{prefix}.1.weight"].double() + weights[f"{prefix}.1.bias"].double()
        hidden = torch.tensor([0.5 * h * (1 + math.erf(h / math.sqrt(2))) for h in hidden.tolist()], dtype=torch.float64)
        rows.append(weights[f"{prefix}.3.weight"].double() @ hidden + weights[f"{prefix}.3.bias"].double())
    return torch.stack(rows).reshape(*x.shape[:-1], -1)


def _official_weights(prefix: str, width: int, out: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shapes = {"0.weight": (width, width), "0.bias": (width,), "1.weight": (width,), "1.bias": (width,),
              "3.weight": (out, width), "3.bias": (out,)}
    return {f"{prefix}.{key}": torch.randn(shape, generator=g) * 0.5 for key, shape in shapes.items()}


def _strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key.removeprefix(prefix + "."): value for key, value in weights.items()}


# --- VQA ---------------------------------------------------------------------------------------------


def test_vqa_head_loads_official_keys_and_computes_the_official_logits() -> None:
    head = VQAHead(config=VQAHeadConfig(pooled_size=2 * H, num_labels=5))
    official = _official_weights("vqa_classifier", 2 * H, 5, seed=0)
    assert set(head.state_dict()) == set(_strip(official, "vqa_classifier"))
    head.load_state_dict(_strip(official, "vqa_classifier"), strict=True)
    pooled = torch.randn(3, 2 * H, generator=torch.Generator().manual_seed(1))
    logits = head(pooled)
    assert logits.shape == (3, 5)
    assert torch.allclose(logits.double(), _official_block(pooled, official, prefix="vqa_classifier"), atol=1e-5)


def test_vqa_loss_is_mean_bce_times_num_labels() -> None:
    head = VQAHead(config=VQAHeadConfig(pooled_size=2 * H, num_labels=4))
    logits = torch.tensor([[2.0, -1.0, 0.0, 0.5], [-3.0, 1.0, 1.0, 0.0]])
    targets = torch.tensor([[1.0, 0.0, 0.3, 0.0], [0.0, 0.9, 0.6, 0.0]])
    p = torch.sigmoid(logits)
    by_hand = -(targets * p.log() + (1 - targets) * (1 - p).log()).sum() / 2  # sum over labels, mean over batch
    assert head.loss(logits, targets).item() == pytest.approx(by_hand.item(), rel=1e-6)
    with pytest.raises(ValueError, match=r"VQAHead.loss: targets has shape \[2, 3\], expected \[2, 4\]"):
        head.loss(logits, targets[:, :3])


def test_vqa_head_learns_soft_targets() -> None:
    torch.manual_seed(0)
    head = VQAHead(config=VQAHeadConfig(pooled_size=2 * H, num_labels=6))
    pooled = torch.randn(32, 2 * H)
    answer = pooled[:, :6].argmax(dim=1)  # the right answer is readable from the features
    targets = F.one_hot(answer, 6).float()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        loss = head.loss(head(pooled), targets)
        loss.backward()
        optimizer.step()
    assert (head(pooled).argmax(dim=1) == answer).float().mean() > 0.9  # chance is 1/6


def test_head_configs_fail_fast() -> None:
    with pytest.raises(ValueError, match="VQAHeadConfig: num_labels must be a positive int, got 0"):
        VQAHead(config=VQAHeadConfig(pooled_size=16, num_labels=0))
    with pytest.raises(ValueError, match=r"VQAHead: pooled has shape \[2, 8\], expected \[B, 16\]"):
        VQAHead(config=VQAHeadConfig(pooled_size=16, num_labels=3))(torch.zeros(2, 8))
    with pytest.raises(TypeError):
        VQAHead(VQAHeadConfig(pooled_size=16, num_labels=3))  # keyword-only


# --- ITM ---------------------------------------------------------------------------------------------


def test_itm_head_is_itm_score_fc() -> None:
    head = ITMHead(config=ITMHeadConfig(pooled_size=2 * H))
    g = torch.Generator().manual_seed(2)
    official = {"itm_score.fc.weight": torch.randn(2, 2 * H, generator=g), "itm_score.fc.bias": torch.randn(2, generator=g)}
    head.load_state_dict(_strip(official, "itm_score"), strict=True)
    pooled = torch.randn(4, 2 * H, generator=g)
    expected = pooled @ official["itm_score.fc.weight"].T + official["itm_score.fc.bias"]
    logits = head(pooled)
    assert torch.allclose(logits, expected, atol=1e-6)
    labels = torch.tensor([1, 0, 1, 1])
    by_hand = -torch.stack([logits[i].log_softmax(-1)[labels[i]] for i in range(4)]).mean()
    assert ITMHead.loss(logits, labels).item() == pytest.approx(by_hand.item(), rel=1e-6)
    match = ITMHead.match_score(logits)
    assert torch.allclose(match, torch.sigmoid(logits[:, 1] - logits[:, 0]), atol=1e-6)


# --- PBC ---------------------------------------------------------------------------------------------


def test_pbc_head_scores_every_patch_and_ignores_cls() -> None:
    head = PBCHead(config=PBCHeadConfig(hidden_size=H))
    official = _official_weights("pbc_classifier", H, 2, seed=3)
    head.load_state_dict(_strip(official, "pbc_classifier"), strict=True)
    image = torch.randn(2, 1 + 9, H, generator=torch.Generator().manual_seed(4))
    logits = head(image)
    assert logits.shape == (2, 9, 2)
    assert torch.allclose(logits.double(), _official_block(image[:, 1:], official, prefix="pbc_classifier"), atol=1e-5)
    other_cls = image.clone()
    other_cls[:, 0] = 100.0
    assert torch.equal(head(other_cls), logits)


def test_pbc_loss_is_per_patch_cross_entropy() -> None:
    logits = torch.randn(2, 4, 2, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([[1, 0, 0, 1], [0, -100, 1, 0]])
    terms = [-logits[b, p].log_softmax(-1)[labels[b, p]] for b in range(2) for p in range(4) if labels[b, p] != -100]
    assert PBCHead.loss(logits, labels).item() == pytest.approx(torch.stack(terms).mean().item(), rel=1e-6)
    # The official call reads the patch axis as the classes and fails on these shapes.
    with pytest.raises(RuntimeError):
        F.cross_entropy(logits, labels.clamp(min=0))
    with pytest.raises(ValueError, match=r"PBCHead.loss: patch_labels has shape \[2, 3\], expected \[2, 4\]"):
        PBCHead.loss(logits, labels[:, :3])


def test_pbc_head_learns_which_patches_a_box_covers() -> None:
    torch.manual_seed(0)
    head = PBCHead(config=PBCHeadConfig(hidden_size=H))
    image = torch.randn(16, 1 + 16, H)
    labels = (image[:, 1:, 0] > 0.3).long()  # a patch's feature says whether it is in the box
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(150):
        optimizer.zero_grad()
        PBCHead.loss(head(image), labels).backward()
        optimizer.step()
    accuracy = (head(image).argmax(-1) == labels).float().mean()
    assert accuracy > 0.9  # the majority class is ~62%


def _patches(labels: torch.Tensor) -> set[int]:
    return set(labels.nonzero().flatten().tolist())


def test_box_patch_labels_follow_the_object_token_rule() -> None:
    # 64 px canvas, 16 px patches: a 4 x 4 grid, patch = row * 4 + col.
    boxes = torch.tensor([
        [[0.0, 0.0, 15.0, 15.0]],  # one cell
        [[10.0, 20.0, 40.0, 33.0]],  # cols 0..2, rows 1..2
        [[-10.0, -10.0, 5.0, 70.0]],  # clipped: col 0, rows 0..3
        [[70.0, 70.0, 80.0, 80.0]],  # off the canvas
        [[48.0, 48.0, 64.0, 64.0]],  # x2 = 64 -> floor 4, clipped to the last cell
    ])
    labels = box_patch_labels(boxes, image_size=64, patch_size=16)
    assert labels.shape == (5, 16) and labels.dtype == torch.long
    assert [_patches(row) for row in labels] == [{0}, {4, 5, 6, 8, 9, 10}, {0, 4, 8, 12}, set(), {15}]


def test_box_patch_labels_union_and_padding_boxes() -> None:
    boxes = torch.tensor([[[0.0, 0.0, 15.0, 15.0], [48.0, 0.0, 63.0, 15.0], [0.0, 0.0, 63.0, 63.0]]])
    mask = torch.tensor([[1, 1, 0]])
    assert _patches(box_patch_labels(boxes, image_size=64, patch_size=16, box_mask=mask)[0]) == {0, 3}
    single = box_patch_labels(torch.tensor([[16.0, 16.0, 20.0, 20.0]]), image_size=64, patch_size=16)
    assert _patches(single[0]) == {5}
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        box_patch_labels(boxes, image_size=60, patch_size=16)


def test_heat_map_is_softmax_over_patches_of_logit_one() -> None:
    logits = torch.randn(2, 9, 2, generator=torch.Generator().manual_seed(6))
    logits[1, 7, 1] = 10.0
    heat = pbc_heat_map(logits, grid=3)
    assert heat.shape == (2, 3, 3)
    assert torch.allclose(heat.sum(dim=(1, 2)), torch.ones(2))
    expected = torch.exp(logits[0, :, 1]) / torch.exp(logits[0, :, 1]).sum()
    assert torch.allclose(heat[0].flatten(), expected, atol=1e-6)
    assert heat[1].flatten().argmax().item() == 7 and heat[1, 2, 1] > 0.9  # row 2, column 1
    with pytest.raises(ValueError, match=r"pbc_heat_map: logits has shape \[2, 9, 2\], expected \[B, 16, 2\]"):
        pbc_heat_map(logits, grid=4)
