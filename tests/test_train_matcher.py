"""Hungarian matcher: costs against a scalar float64 reference, assignments against brute force."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from gdino.data.targets import Target
from gdino.train.matcher import hungarian_match, match_costs

L = 12  # token columns in these hand-made cases


def _giou_ref(a, b) -> float:
    """GIoU of two cxcywh boxes, scalar Python arithmetic."""
    ax0, ay0, ax1, ay1 = a[0] - a[2] / 2, a[1] - a[3] / 2, a[0] + a[2] / 2, a[1] + a[3] / 2
    bx0, by0, bx1, by1 = b[0] - b[2] / 2, b[1] - b[3] / 2, b[0] + b[2] / 2, b[1] + b[3] / 2
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    hull = (max(ax1, bx1) - min(ax0, bx0)) * (max(ay1, by1) - min(ay0, by0))
    return inter / union - (hull - union) / hull


def _cost_ref(logit_row, box, tokens, tbox, valid, wc=2.0, wb=5.0, wg=2.0, alpha=0.25, gamma=2.0) -> float:
    """One query/target cost, straight from the formulas (mean over the target's valid tokens)."""
    terms = []
    for j in tokens:
        assert valid[j]
        p = 1 / (1 + math.exp(-logit_row[j]))
        pos = alpha * (1 - p) ** gamma * -math.log(p)
        neg = (1 - alpha) * p**gamma * -math.log(1 - p)
        terms.append(pos - neg)
    c_class = sum(terms) / len(terms)
    c_l1 = sum(abs(x - y) for x, y in zip(box, tbox))
    return wc * c_class + wb * c_l1 - wg * _giou_ref(box, tbox)


def _random_case(gen: torch.Generator, q: int, sizes: list[int], lengths: list[int]):
    b = len(sizes)
    logits = 3 * torch.randn(b, q, L, generator=gen, dtype=torch.float64)
    text_mask = torch.zeros(b, L, dtype=torch.bool)
    for i, n in enumerate(lengths):
        text_mask[i, :n] = True
    logits = logits.masked_fill(~text_mask[:, None], float("-inf"))
    centers = 0.2 + 0.6 * torch.rand(b, q, 2, generator=gen, dtype=torch.float64)
    wh = 0.05 + 0.3 * torch.rand(b, q, 2, generator=gen, dtype=torch.float64)
    boxes = torch.cat((centers, wh), -1)
    targets = []
    for i, n in enumerate(sizes):
        tb = torch.cat(
            (
                0.2 + 0.6 * torch.rand(n, 2, generator=gen, dtype=torch.float64),
                0.05 + 0.3 * torch.rand(n, 2, generator=gen, dtype=torch.float64),
            ),
            -1,
        )
        token_map = torch.zeros(n, 256, dtype=torch.bool)
        for k in range(n):
            start = 1 + int(torch.randint(0, lengths[i] - 3, (1,), generator=gen))
            span = 1 + int(torch.randint(0, 2, (1,), generator=gen))
            token_map[k, start : start + span] = True
        targets.append(Target(boxes=tb, token_map=token_map, labels=torch.arange(n)))
    return logits, boxes, targets, text_mask


def test_costs_match_scalar_reference():
    gen = torch.Generator().manual_seed(1)
    logits, boxes, targets, text_mask = _random_case(gen, q=4, sizes=[3, 2], lengths=[12, 7])
    costs = match_costs(logits, boxes, targets, text_mask)
    assert [tuple(c.shape) for c in costs] == [(4, 3), (4, 2)]
    for i, t in enumerate(targets):
        for qi in range(4):
            for k in range(len(t)):
                tokens = t.token_map[k].nonzero().flatten().tolist()
                ref = _cost_ref(
                    logits[i, qi].tolist(), boxes[i, qi].tolist(), tokens, t.boxes[k].tolist(), text_mask[i].tolist()
                )
                # float32 internals: 1e-4 relative to costs of order 1-10
                assert costs[i][qi, k].item() == pytest.approx(ref, rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("seed", range(8))
def test_assignment_equals_brute_force(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    q = 5
    sizes = [int(torch.randint(1, 5, (1,), generator=gen)) for _ in range(2)]
    logits, boxes, targets, text_mask = _random_case(gen, q=q, sizes=sizes, lengths=[12, 9])
    matches = hungarian_match(logits, boxes, targets, text_mask)
    for i, t in enumerate(targets):
        n = len(t)
        c = [
            [
                _cost_ref(
                    logits[i, a].tolist(),
                    boxes[i, a].tolist(),
                    t.token_map[k].nonzero().flatten().tolist(),
                    t.boxes[k].tolist(),
                    text_mask[i].tolist(),
                )
                for k in range(n)
            ]
            for a in range(q)
        ]
        best = min(sum(c[perm[k]][k] for k in range(n)) for perm in itertools.permutations(range(q), n))
        qi, ti = matches[i]
        assert qi.dtype == torch.int64 and len(qi) == n and sorted(ti.tolist()) == list(range(n))
        assert len(set(qi.tolist())) == n
        got = sum(c[a][k] for a, k in zip(qi.tolist(), ti.tolist()))
        assert got == pytest.approx(best, abs=1e-5)


def test_obvious_assignment_and_empty_image():
    # query 2 sits on target 0 and scores its tokens; query 0 on target 1
    logits = torch.full((2, 3, L), -5.0)
    logits[0, 2, 1:3] = 5.0
    logits[0, 0, 4] = 5.0
    boxes = torch.tensor([[[0.7, 0.7, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0.2, 0.3, 0.1, 0.2]]] * 2)
    token_map = torch.zeros(2, 256, dtype=torch.bool)
    token_map[0, 1:3] = True
    token_map[1, 4] = True
    targets = [
        Target(
            boxes=torch.tensor([[0.2, 0.3, 0.1, 0.2], [0.7, 0.7, 0.2, 0.2]]),
            token_map=token_map,
            labels=torch.tensor([0, 1]),
        ),
        Target(
            boxes=torch.zeros(0, 4),
            token_map=torch.zeros(0, 256, dtype=torch.bool),
            labels=torch.zeros(0, dtype=torch.long),
        ),
    ]
    text_mask = torch.ones(2, L, dtype=torch.bool)
    (q0, t0), (q1, t1) = hungarian_match(logits, boxes, targets, text_mask)
    assert q0.tolist() == [0, 2] and t0.tolist() == [1, 0]
    assert q1.numel() == 0 and t1.numel() == 0


def test_all_empty_and_batched_equals_single():
    gen = torch.Generator().manual_seed(7)
    logits, boxes, targets, text_mask = _random_case(gen, q=6, sizes=[3, 4], lengths=[10, 6])
    batched = hungarian_match(logits.float(), boxes.float(), targets, text_mask)
    for i in range(2):
        ((qi, ti),) = hungarian_match(
            logits[i : i + 1].float(), boxes[i : i + 1].float(), targets[i : i + 1], text_mask[i : i + 1]
        )
        assert torch.equal(qi, batched[i][0]) and torch.equal(ti, batched[i][1])
    empty = [
        Target(
            boxes=torch.zeros(0, 4),
            token_map=torch.zeros(0, 256, dtype=torch.bool),
            labels=torch.zeros(0, dtype=torch.long),
        )
    ] * 2
    assert all(q.numel() == 0 for q, _ in hungarian_match(logits, boxes, empty, text_mask))


def test_half_precision_inputs_give_finite_costs():
    gen = torch.Generator().manual_seed(3)
    logits, boxes, targets, text_mask = _random_case(gen, q=4, sizes=[2, 2], lengths=[12, 5])
    costs = match_costs(logits.to(torch.bfloat16), boxes.to(torch.bfloat16), targets, text_mask)
    ref = match_costs(logits, boxes, targets, text_mask)
    for c, r in zip(costs, ref):
        assert c.dtype == torch.float32 and torch.isfinite(c).all()
        torch.testing.assert_close(c, r.float(), atol=0.15, rtol=0.05)  # bf16 inputs: ~3 significant digits


def test_costs_stay_float32_under_autocast():
    gen = torch.Generator().manual_seed(4)
    logits, boxes, targets, text_mask = _random_case(gen, q=8, sizes=[3, 2], lengths=[12, 8])
    logits, boxes = logits.float(), boxes.float()
    ref = match_costs(logits, boxes, targets, text_mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = match_costs(logits, boxes, targets, text_mask)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-6)  # a bf16 matmul would be off by ~1e-2
