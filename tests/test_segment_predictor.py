"""SamSegmenter: the box hand-off, one encoder / one decoder call per image, multimask, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_

pytest.importorskip("segment_anything", reason="segment-anything (in [dev] / [sam])")

from gdino.core.detections import Detections  # noqa: E402
from gdino.segment.predictor import SamSegmenter, boxes_to_input_frame, resized_shape  # noqa: E402
from gdino.segment.sam_model import SAM_PRESETS, build_sam  # noqa: E402

H, W = 300, 451  # chelsea's size: not square, so the two axes scale differently


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _dets(xyxy) -> Detections:
    n = len(xyxy)
    return Detections(
        torch.tensor(xyxy, dtype=torch.float32),
        torch.linspace(0.9, 0.5, n),
        torch.zeros(n, dtype=torch.long),
        ["x"] * n,
        (W, H),
    )


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)  # buffers (prompt Fourier features) are random too
    return randomize_(build_sam(SAM_PRESETS["sam-tiny"]), seed=1).eval()


# ------------------------------------------------------------------ fakes: decoder output = f(box)
class BoxPromptEncoder(torch.nn.Module):
    """Passes the (already transformed) boxes through as the sparse embedding."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def get_dense_pe(self):
        return torch.zeros(1, 4, self.grid, self.grid)

    def forward(self, points, boxes, masks):
        assert points is None and masks is None
        return boxes[:, None, :].clone(), torch.zeros(boxes.shape[0], 4, self.grid, self.grid)


class BoxMaskDecoder(torch.nn.Module):
    """Low-res logits = signed distance to the prompt box (in SAM's input frame); IoU = f(box).

    Multimask: three masks (box shrunk by 20 px, the box, box grown by 20 px) with predicted
    IoUs (0.2, 0.9, 0.5): the best is the exact box.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        self.low = image_size // 4
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.calls = 0

    def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, multimask_output):
        self.calls += 1
        boxes = sparse_prompt_embeddings[:, 0, :].float()  # [N, 4] in the input frame
        centers = torch.arange(self.low, dtype=torch.float32) * 4 + 2  # low-res cell centers, input-frame units
        x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
        cy, cx = centers[None, :, None], centers[None, None, :]
        sd = torch.minimum(torch.minimum(cx - x0, x1 - cx), torch.minimum(cy - y0, y1 - cy))  # [N, low, low]
        score = boxes[:, 0] / 1000  # a function of the box, to check which box each score belongs to
        if multimask_output:
            masks = torch.stack([sd - 20, sd, sd + 20], dim=1)
            iou = torch.stack([score + 0.2, score + 0.9, score + 0.5], dim=1)
        else:
            masks, iou = sd[:, None], score[:, None]
        return masks, iou


def _fake_segmenter(tiny_sam, multimask=False, decoder_batch=128):
    size = tiny_sam.image_encoder.img_size
    sam = build_sam(SAM_PRESETS["sam-tiny"])
    sam.load_state_dict(tiny_sam.state_dict())
    sam.prompt_encoder = BoxPromptEncoder(size // 16)
    sam.mask_decoder = BoxMaskDecoder(size)
    return SamSegmenter(sam, multimask=multimask, decoder_batch=decoder_batch)


def _box_mask(box, h=H, w=W) -> np.ndarray:
    """Pixels whose centers lie inside ``box`` (continuous xyxy)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    x0, y0, x1, y1 = box
    return (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


BOXES = [[20.0, 30.0, 200.0, 150.0], [250.0, 100.0, 440.0, 290.0], [100.0, 200.0, 180.0, 280.0], [5.0, 5.0, 60.0, 60.0]]


def test_resize_rule_and_box_transform():
    assert resized_shape(300, 451, 1024) == (681, 1024)  # SAM's ResizeLongestSide rounding
    assert resized_shape(451, 300, 256) == (256, 170)
    boxes = boxes_to_input_frame(torch.tensor([[0.0, 0.0, 451.0, 300.0]]), (300, 451), (681, 1024))
    torch.testing.assert_close(boxes, torch.tensor([[0.0, 0.0, 1024.0, 681.0]]))


def test_hand_off_masks_land_in_their_own_box(tiny_sam):
    """Original pixels -> SAM's frame -> masks back: each mask is its own box (IoU > 0.97)."""
    seg = _fake_segmenter(tiny_sam)
    out = seg.segment(_image(), _dets(BOXES))
    assert out.masks.shape == (len(BOXES), H, W) and out.masks.dtype == torch.bool
    masks = out.masks.numpy()
    for i, box in enumerate(BOXES):
        ious = [_iou(masks[i], _box_mask(b)) for b in BOXES]
        assert ious[i] > 0.97, (i, ious)
        assert max(ious[:i] + ious[i + 1 :]) < 0.2
    # the score of each mask is the one computed from its own box (x0 in SAM's frame / 1000)
    scale = seg.image_size / W
    torch.testing.assert_close(out.mask_scores, torch.tensor([b[0] for b in BOXES]) * scale / 1000, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.scores, _dets(BOXES).scores)  # the detector's score is untouched
    assert seg.model.mask_decoder.calls == 1  # all four boxes in one decoder call


def test_hand_off_portrait_image(tiny_sam):
    seg = _fake_segmenter(tiny_sam)
    img = np.ascontiguousarray(_image().transpose(1, 0, 2))  # 451 x 300: the other axis is the long one
    box = [40.0, 60.0, 250.0, 400.0]
    dets = Detections(torch.tensor([box]), torch.ones(1), torch.zeros(1, dtype=torch.long), ["x"], (H, W))
    out = seg.segment(img, dets)
    assert out.masks.shape == (1, W, H)
    assert _iou(out.masks[0].numpy(), _box_mask(box, W, H)) > 0.97


def test_multimask_keeps_the_best_by_predicted_iou(tiny_sam):
    seg = _fake_segmenter(tiny_sam, multimask=True)
    out = seg.segment(_image(), _dets(BOXES))
    scale = seg.image_size / W
    torch.testing.assert_close(
        out.mask_scores, torch.tensor([b[0] for b in BOXES]) * scale / 1000 + 0.9, atol=1e-5, rtol=0
    )
    for i, box in enumerate(BOXES):  # the middle (exact) mask, not the shrunk or grown ones
        assert _iou(out.masks[i].numpy(), _box_mask(box)) > 0.97


def test_real_sam_one_encoder_and_one_decoder_call(tiny_sam):
    seg = SamSegmenter(tiny_sam)
    calls = {"enc": 0, "dec": 0}
    hooks = [
        tiny_sam.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("enc", calls["enc"] + 1)),
        tiny_sam.mask_decoder.register_forward_hook(lambda *a: calls.__setitem__("dec", calls["dec"] + 1)),
    ]
    try:
        out = seg.segment(_image(), _dets(BOXES))
        assert calls == {"enc": 1, "dec": 1}
        assert out.masks.shape == (4, H, W) and out.mask_scores.shape == (4,)
        # the same boxes one at a time give the same masks (batched equals unbatched)
        emb = seg.embed(_image())
        for i in range(len(BOXES)):
            m, s = seg.predict(emb, torch.tensor([BOXES[i]]))
            assert (m[0] != out.masks[i]).float().mean() < 1e-3
            torch.testing.assert_close(s[0], out.mask_scores[i], atol=1e-5, rtol=0)
        assert calls == {"enc": 2, "dec": 5}
    finally:
        for h in hooks:
            h.remove()


def test_decoder_batch_chunks_give_the_same_result(tiny_sam):
    emb = SamSegmenter(tiny_sam).embed(_image())
    whole = SamSegmenter(tiny_sam).predict(emb, torch.tensor(BOXES))
    chunked_seg = SamSegmenter(tiny_sam, decoder_batch=3)
    chunked = chunked_seg.predict(emb, torch.tensor(BOXES))
    assert chunked_seg.stats["decoder_calls"] == 2
    assert (whole[0] != chunked[0]).float().mean() < 1e-3
    torch.testing.assert_close(whole[1], chunked[1], atol=1e-5, rtol=0)


def test_real_sam_multimask_score_is_the_max_of_three(tiny_sam):
    seg = SamSegmenter(tiny_sam)
    emb = seg.embed(_image())
    boxes = boxes_to_input_frame(torch.tensor(BOXES), emb.original_size, emb.input_size)
    with torch.inference_mode():
        sparse, dense = tiny_sam.prompt_encoder(points=None, boxes=boxes, masks=None)
        _, iou3 = tiny_sam.mask_decoder(emb.features, tiny_sam.prompt_encoder.get_dense_pe(), sparse, dense, True)
    _, best = seg.predict(emb, torch.tensor(BOXES), multimask=True)
    torch.testing.assert_close(best, iou3.max(dim=1).values, atol=1e-5, rtol=0)


def test_no_boxes_is_an_empty_result_without_running_sam(tiny_sam):
    seg = SamSegmenter(tiny_sam)
    out = seg.segment(_image(), Detections.empty((W, H)))
    assert out.masks.shape == (0, H, W) and out.mask_scores.shape == (0,)
    assert seg.stats == {"image_encodes": 0, "decoder_calls": 0}


def test_image_and_detections_must_agree_in_size(tiny_sam):
    with pytest.raises(ValueError, match="451x300"):
        SamSegmenter(tiny_sam).segment(_image()[:200], _dets(BOXES))


def test_outer_autocast_does_not_change_sam(tiny_sam):
    """The detector's bf16 autocast must not leak into SAM, which runs in its own dtype."""
    seg = SamSegmenter(tiny_sam)
    ref = seg.segment(_image(), _dets(BOXES))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = seg.segment(_image(), _dets(BOXES))
    assert torch.equal(ref.masks, inside.masks)
    torch.testing.assert_close(ref.mask_scores, inside.mask_scores, atol=0, rtol=0)


def test_sam_in_bf16_is_close_to_fp32(tiny_sam):
    sam = build_sam(SAM_PRESETS["sam-tiny"])
    sam.load_state_dict(tiny_sam.state_dict())
    sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.copy_(
        tiny_sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix
    )
    ref = SamSegmenter(tiny_sam).segment(_image(), _dets(BOXES))
    seg = SamSegmenter(sam, dtype=torch.bfloat16)
    assert (
        seg.dtype == torch.bfloat16
        and sam.prompt_encoder.pe_layer.positional_encoding_gaussian_matrix.dtype == torch.float32
    )
    out = seg.segment(_image(), _dets(BOXES))
    assert out.mask_scores.dtype == torch.float32
    torch.testing.assert_close(out.mask_scores, ref.mask_scores, atol=0.05, rtol=0)  # bf16: ~3 significant digits
    agree = (out.masks == ref.masks).float().mean()
    assert agree > 0.97, agree


@pytest.mark.parametrize("multimask", [False, True])
def test_matches_segment_anythings_own_predictor(tiny_sam, multimask):
    """Same preprocessing, box transform and post-processing as ``SamPredictor`` (the reference)."""
    from segment_anything import SamPredictor

    ref = SamPredictor(tiny_sam)
    ref.set_image(_image())
    boxes = ref.transform.apply_boxes_torch(torch.tensor(BOXES), (H, W))
    with torch.inference_mode():
        masks, iou, _ = ref.predict_torch(None, None, boxes=boxes, multimask_output=multimask)
    best = iou.argmax(dim=1)
    rows = torch.arange(len(BOXES))
    ref_masks, ref_iou = masks[rows, best], iou[rows, best]
    out = SamSegmenter(tiny_sam, multimask=multimask).segment(_image(), _dets(BOXES))
    torch.testing.assert_close(out.mask_scores, ref_iou, atol=1e-5, rtol=0)
    assert (out.masks != ref_masks).float().mean() < 1e-4
