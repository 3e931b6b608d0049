"""Box math against torchvision.ops (an independent implementation) and hand-made cases."""

from __future__ import annotations

import torch
import torchvision.ops as tvo

from gdino.ops import boxes as B


def _random_xyxy(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * 100
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * 50 + 0.1
    return torch.cat([xy, xy + wh], -1)


def test_format_round_trips():
    a = _random_xyxy(20, 0)
    torch.testing.assert_close(B.cxcywh_to_xyxy(B.xyxy_to_cxcywh(a)), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(B.xywh_to_xyxy(B.xyxy_to_xywh(a)), a, atol=1e-12, rtol=0)
    torch.testing.assert_close(B.xyxy_to_cxcywh(a), tvo.box_convert(a, "xyxy", "cxcywh"))


def test_iou_and_giou_match_torchvision():
    a, b = _random_xyxy(15, 1), _random_xyxy(11, 2)
    iou, _ = B.box_iou(a, b)
    torch.testing.assert_close(iou, tvo.box_iou(a, b), atol=1e-12, rtol=0)
    torch.testing.assert_close(B.generalized_box_iou(a, b), tvo.generalized_box_iou(a, b), atol=1e-12, rtol=0)
    diag = B.elementwise_generalized_box_iou(a[:11], b)
    torch.testing.assert_close(diag, tvo.generalized_box_iou(a[:11], b).diagonal(), atol=1e-12, rtol=0)


def test_hand_cases():
    unit = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    far = torch.tensor([[2.0, 0.0, 3.0, 1.0]])
    assert B.box_iou(unit, unit)[0].item() == 1.0
    # disjoint unit squares 1 apart: hull area 3, union 2 -> giou = 0 - 1/3
    assert abs(B.generalized_box_iou(unit, far).item() + 1 / 3) < 1e-7
    assert B.box_area(torch.tensor([[3.0, 3.0, 1.0, 1.0]])).item() == 0.0
    clipped = B.clip_boxes(torch.tensor([[-5.0, 2.0, 50.0, 70.0]]), 40, 60)
    assert clipped.tolist() == [[0.0, 2.0, 40.0, 60.0]]
    assert B.scale_boxes(torch.tensor([[0.5, 0.5, 1.0, 1.0]]), 10, 20).tolist() == [[5.0, 10.0, 10.0, 20.0]]


def test_inverse_sigmoid_uses_official_clamps():
    x = torch.tensor([0.0, 1e-4, 0.5, 1.0, 1.5])
    out = B.inverse_sigmoid(x, eps=1e-3)
    expected = torch.log(torch.tensor([1e-3 / 1.0, 1e-3 / (1 - 1e-4), 1.0, 1.0 / 1e-3, 1.0 / 1e-3]))
    torch.testing.assert_close(out, expected)
    y = torch.rand(100) * 0.99 + 0.005
    torch.testing.assert_close(B.inverse_sigmoid(y).sigmoid(), y, atol=1e-6, rtol=0)
