"""Loss functions against torchvision's references, and the criterion end to end on free tensors."""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from gdino.data.targets import Target
from gdino.errors import GdinoError
from gdino.model.features import GroundingDINOOutput, TextFeatures
from gdino.ops.boxes import cxcywh_to_xyxy
from gdino.train.criterion import LossWeights, SetCriterion, get_loss_weights
from gdino.train.denoising import DenoisingConfig, build_denoising
from gdino.train.losses import box_losses, gather_matched_boxes, matched_token_targets, token_focal_loss


def _masked_case(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    logits = 4 * torch.randn(2, 5, 16, generator=gen)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    mask[0, :11] = True
    mask[1, :6] = True
    logits = logits.masked_fill(~mask[:, None], float("-inf"))
    targets = (torch.rand(2, 5, 16, generator=gen) < 0.2) & mask[:, None]
    return logits, targets, mask


def test_focal_equals_torchvision_on_valid_columns():
    logits, targets, mask = _masked_case()
    got = token_focal_loss(logits, targets, mask)
    m = mask[:, None].expand_as(logits)
    ref = sigmoid_focal_loss(logits[m].double(), targets[m].double(), alpha=0.25, gamma=2.0, reduction="sum")
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)


def test_focal_ignores_padding_and_has_finite_gradients():
    logits, targets, mask = _masked_case(1)
    x = logits.clone().requires_grad_(True)
    loss = token_focal_loss(x, targets, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    assert (x.grad[~mask[:, None].expand_as(x)] == 0).all()
    # whatever sits in the padding columns changes nothing
    y = logits.masked_fill(~mask[:, None], 123.0)
    assert token_focal_loss(y, targets, mask).item() == pytest.approx(loss.item(), rel=1e-6)


def test_focal_half_precision_close_to_float32():
    logits, targets, mask = _masked_case(2)
    ref = token_focal_loss(logits, targets, mask)
    for dtype in (torch.float16, torch.bfloat16):
        got = token_focal_loss(logits.to(dtype), targets, mask)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(ref.item(), rel=2e-2)  # only the input rounding differs


def test_matched_token_targets_and_boxes():
    token_map = torch.zeros(3, 256, dtype=torch.bool)
    token_map[0, 1:3] = True
    token_map[1, 5] = True
    token_map[2, 7:9] = True
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.1, 0.4], [0.8, 0.2, 0.3, 0.1]])
    t = Target(boxes=boxes, token_map=token_map, labels=torch.arange(3))
    empty = Target(
        boxes=torch.zeros(0, 4),
        token_map=torch.zeros(0, 256, dtype=torch.bool),
        labels=torch.zeros(0, dtype=torch.long),
    )
    indices = [(torch.tensor([0, 3]), torch.tensor([2, 0])), (torch.zeros(0, dtype=torch.long),) * 2]
    out = matched_token_targets((2, 4, 12), indices, [t, empty], "cpu")
    expected = torch.zeros(2, 4, 12)
    expected[0, 0, 7:9] = 1
    expected[0, 3, 1:3] = 1
    assert torch.equal(out, expected)

    pred = torch.rand(2, 4, 4) * 0.5 + 0.25
    pb, tb = gather_matched_boxes(pred, indices, [t, empty])
    assert torch.equal(pb, pred[0, [0, 3]]) and torch.equal(tb, boxes[[2, 0]])
    l1, giou = box_losses(pb, tb)
    assert l1.item() == pytest.approx((pb - tb).abs().sum().item(), rel=1e-6)
    ref = generalized_box_iou_loss(cxcywh_to_xyxy(pb).double(), cxcywh_to_xyxy(tb).double(), reduction="sum")
    assert giou.item() == pytest.approx(ref.item(), rel=1e-5)
    zero_l1, zero_giou = box_losses(tb, tb)
    assert zero_l1.item() == 0 and abs(zero_giou.item()) < 1e-6
    none_l1, none_giou = box_losses(torch.zeros(0, 4), torch.zeros(0, 4))
    assert none_l1.item() == 0 and none_giou.item() == 0


# ---------------------------------------------------------------------------- SetCriterion

Q, LAYERS = 6, 3


def _targets():
    tm0 = torch.zeros(2, 256, dtype=torch.bool)
    tm0[0, 1:3] = True
    tm0[1, 4] = True
    tm1 = torch.zeros(1, 256, dtype=torch.bool)
    tm1[0, 2] = True
    return [
        Target(boxes=torch.tensor([[0.3, 0.4, 0.2, 0.2], [0.7, 0.6, 0.3, 0.1]]), token_map=tm0, labels=torch.arange(2)),
        Target(boxes=torch.tensor([[0.5, 0.5, 0.4, 0.6]]), token_map=tm1, labels=torch.arange(1)),
    ]


def _text_mask():
    mask = torch.zeros(2, 256, dtype=torch.bool)
    mask[0, :7] = True
    mask[1, :4] = True
    return mask


def _perfect_set(targets, mask, q=Q):
    """Logits/boxes where queries 1 and 3 (image 0) and 2 (image 1) predict the targets exactly."""
    logits = torch.full((2, q, 256), -30.0)
    boxes = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(2, q, 1)
    for i, slots in enumerate(([1, 3], [2])):
        for k, s in enumerate(slots):
            logits[i, s, targets[i].token_map[k]] = 30.0
            boxes[i, s] = targets[i].boxes[k]
    return logits.masked_fill(~mask[:, None], float("-inf")), boxes


def _output(logits, boxes, mask, dn_logits=None, dn_boxes=None):
    return GroundingDINOOutput(
        logits=logits[-1],
        boxes=boxes[-1],
        layer_logits=list(logits),
        layer_boxes=list(boxes),
        enc_logits=logits[0],
        enc_boxes=boxes[0],
        text_mask=mask,
        dn_logits=dn_logits,
        dn_boxes=dn_boxes,
    )


def _dn(targets, seed=0):
    text = TextFeatures(
        torch.randn(2, 8, 4),
        torch.ones(2, 8, dtype=torch.bool),
        torch.ones(2, 8, 8, dtype=torch.bool),
        torch.arange(8).repeat(2, 1),
    )
    return build_denoising(
        targets, text, Q, DenoisingConfig(dn_number=4), generator=torch.Generator().manual_seed(seed)
    )


def test_perfect_predictions_give_zero_loss():
    targets, mask = _targets(), _text_mask()
    lg, bx = _perfect_set(targets, mask)
    dn, meta = _dn(targets)
    # denoising: positives exact, negatives predict no token
    dl = torch.full((2, dn.num, 256), -30.0).masked_fill(~mask[:, None], float("-inf"))
    db = torch.tensor([0.5, 0.5, 0.1, 0.1]).repeat(2, dn.num, 1)
    for i, t in enumerate(targets):
        dl[i, meta.pos_query[i]] = torch.where(t.token_map[meta.pos_target[i]], 30.0, dl[i, meta.pos_query[i]])
        db[i, meta.pos_query[i]] = t.boxes[meta.pos_target[i]]
    out = _output([lg] * LAYERS, [bx] * LAYERS, mask, [dl] * LAYERS, [db] * LAYERS)
    losses = SetCriterion()(out, targets, meta)
    expected = {
        f"loss_{n}{s}" for n in ("class", "bbox", "giou") for s in ("", "_0", "_1", "_enc", "_dn", "_dn_0", "_dn_1")
    } | {"total"}
    assert set(losses) == expected
    for name, value in losses.items():
        assert value.dtype == torch.float32 and value.ndim == 0
        assert abs(value.item()) < 1e-6, name  # focal at |logit| 30: ~1e-13; exact boxes: 0


def test_weighted_total_and_normalization():
    targets, mask = _targets(), _text_mask()
    gen = torch.Generator().manual_seed(0)
    lg = torch.randn(LAYERS, 2, Q, 256, generator=gen).masked_fill(~mask[None, :, None], float("-inf"))
    bx = 0.2 + 0.6 * torch.rand(LAYERS, 2, Q, 4, generator=gen)
    dn, meta = _dn(targets)
    dl = torch.randn(LAYERS, 2, dn.num, 256, generator=gen).masked_fill(~mask[None, :, None], float("-inf"))
    db = 0.2 + 0.6 * torch.rand(LAYERS, 2, dn.num, 4, generator=gen)
    out = _output(lg, bx, mask, list(dl), list(db))
    w = get_loss_weights("mm-grounding-dino")
    assert (w.loss_class, w.cost_class, w.loss_bbox, w.loss_giou) == (1.0, 2.0, 5.0, 2.0)
    w = LossWeights(loss_class=2.0, aux=0.5, enc=0.25, dn=3.0)
    losses = SetCriterion(w)(out, targets, meta)
    scale = {"class": 2.0, "bbox": 5.0, "giou": 2.0}
    manual = 0.0
    for name, v in losses.items():
        if name == "total":
            continue
        f = 3.0 if "_dn" in name else 0.25 if name.endswith("_enc") else 0.5 if name[-1].isdigit() else 1.0
        manual += scale[name.split("_")[1]] * f * v.item()
    assert losses["total"].item() == pytest.approx(manual, rel=1e-5)
    # num_boxes = 3 locally; an explicit 6 halves every loss
    halved = SetCriterion(w)(out, targets, meta, num_boxes=6.0)
    for name in losses:
        assert halved[name].item() == pytest.approx(losses[name].item() / 2, rel=1e-5)
    # the denoising class loss by hand: positives -> their target tokens, negatives -> none, padding ignored
    tokens = torch.zeros(2, dn.num, 256)
    for i, t in enumerate(targets):
        tokens[i, meta.pos_query[i]] = t.token_map[meta.pos_target[i]].float()
    ref = token_focal_loss(dl[-1], tokens, mask, query_mask=meta.valid()) / (3 * meta.num_groups)
    assert losses["loss_class_dn"].item() == pytest.approx(ref.item(), rel=1e-6)
    with pytest.raises(GdinoError):
        get_loss_weights("detr")
    # autocast around the call changes nothing: matching and losses run in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = SetCriterion(w)(out, targets, meta)
    for name in losses:
        assert amp[name].dtype == torch.float32
        assert amp[name].item() == pytest.approx(losses[name].item(), rel=1e-6)


def test_gradients_flow_and_free_tensors_converge(one_thread):
    targets, mask = _targets(), _text_mask()
    gen = torch.Generator().manual_seed(0)
    lg = torch.randn(LAYERS, 2, Q, 256, generator=gen).requires_grad_(True)
    bx = torch.randn(LAYERS, 2, Q, 4, generator=gen).requires_grad_(True)
    dn, meta = _dn(targets)
    dl = torch.randn(LAYERS, 2, dn.num, 256, generator=gen).requires_grad_(True)
    db = torch.randn(LAYERS, 2, dn.num, 4, generator=gen).requires_grad_(True)
    crit = SetCriterion()
    opt = torch.optim.Adam([lg, bx, dl, db], lr=0.1)

    def loss():
        pad = ~mask[None, :, None]
        out = _output(
            lg.masked_fill(pad, float("-inf")),
            bx.sigmoid(),
            mask,
            list(dl.masked_fill(pad, float("-inf"))),
            list(db.sigmoid()),
        )
        return crit(out, targets, meta)["total"]

    first = loss()
    first.backward()
    for t in (lg, bx, dl, db):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    assert (lg.grad[:, ~mask[:, None].expand(2, Q, 256)] == 0).all()
    for _ in range(100):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < first.item() / 30  # measured: 95 -> 1.1


def test_criterion_on_tiny_model_with_denoising(tiny_model, one_thread):
    model = copy.deepcopy(tiny_model).train()
    text = model.tokenize(["a cat . a remote control .", "dog . frisbee ."])
    pixels = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    targets = _targets()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as the trainer runs it
        tf = model.encode_text(text)
        dn, meta = build_denoising(
            targets,
            tf,
            model.config.num_queries,
            DenoisingConfig(eps=model.config.inverse_sigmoid_eps),
            generator=torch.Generator().manual_seed(0),
        )
        out = model.forward_features(model.encode_image(pixels), tf, dn)
    assert out.logits.dtype == torch.bfloat16
    losses = SetCriterion()(out, targets, meta)
    assert torch.isfinite(losses["total"]) and losses["total"].dtype == torch.float32
    losses["total"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    for name in (
        "bbox_embed.layers.2.weight",
        "transformer.tgt_embed.weight",
        "feat_map.weight",
        "transformer.enc_out_bbox_embed.layers.2.weight",
        "transformer.decoder.layers.0.self_attn.in_proj_weight",
    ):
        matches = [g for n, g in grads.items() if n.startswith(name.rsplit(".", 1)[0])]
        assert matches and all(g is not None and torch.isfinite(g).all() for g in matches), name
    assert sum(g.abs().sum() for g in grads.values() if g is not None) > 0


def _num_boxes_worker(rank: int, init_file: str, results) -> None:
    import torch.distributed as dist

    from gdino.train.criterion import global_num_boxes

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        targets = _targets() if rank == 0 else _targets()[1:]  # 3 boxes and 1 box
        results[rank] = global_num_boxes(targets)
    finally:
        dist.destroy_process_group()


def test_num_boxes_reduction_logic(monkeypatch):
    from gdino.train import criterion

    assert criterion.global_num_boxes(_targets()) == 3.0 and criterion.global_num_boxes([]) == 1.0  # >= 1
    # a fake 4-process job in which the other ranks hold 1, 0 and 8 boxes
    monkeypatch.setattr(criterion.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(criterion.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(criterion.dist, "all_reduce", lambda t: t.add_(1 + 0 + 8))
    assert criterion.global_num_boxes(_targets()) == 3.0  # (3 + 1 + 0 + 8) / 4


@pytest.mark.slow
def test_num_boxes_summed_over_processes(tmp_path):
    """Real 2-process gloo job (about a minute on a busy 2-core machine: two fresh interpreters)."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_num_boxes_worker, args=(str(tmp_path / "init"), results), nprocs=2, start_method="spawn")
        # (3 + 1) boxes over 2 processes; DDP averages gradients, so each normalizes by the mean
        assert dict(results) == {0: 2.0, 1: 2.0}
