"""Masks mode: gdino's windowed SAM 2 tracker against the sam2 package's own video predictor
(``init_state`` on a JPEG folder, box / mask prompts, ``propagate_in_video``) on the same frames
and prompts, with a small randomly initialized SAM 2.1 hiera-t."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import SMALL_SAM2, randomize_
from PIL import Image

pytest.importorskip("sam2", reason="sam2 (in [sam2])")
pytest.importorskip("av", reason="PyAV (in [video])")

from gdino.core.detections import Detections  # noqa: E402
from gdino.track.masks import MaskSettings, MaskTracker, build_video_predictor, mask_iou  # noqa: E402
from gdino.track.source import VideoSource  # noqa: E402
from gdino.track.synthetic import VideoSpec, generate_frames  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = "configs/sam2.1/sam2.1_hiera_t.yaml"


@pytest.fixture(scope="module")
def predictor():
    from sam2.build_sam import build_sam2_video_predictor

    torch.manual_seed(0)
    ref = build_sam2_video_predictor(
        CONFIG, ckpt_path=None, device="cpu", mode="eval", hydra_overrides_extra=SMALL_SAM2
    )
    randomize_(ref, seed=4)  # a seed whose masks cover a few % of the frame (others give near-full masks)
    with torch.no_grad():  # random object-score heads say "no object" about half the time: make it "present"
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias.fill_(10.0)
    # gdino's strict builder with the same weights: one model for both sides keeps the test honest about weights
    return build_video_predictor(CONFIG, ref.state_dict(), "cpu", SMALL_SAM2)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """6 JPEG frames of moving shapes and their ground truth (the detections we feed)."""
    root = tmp_path_factory.mktemp("masks_video")
    spec = VideoSpec(frames=6, width=96, height=80, objects=2, min_side=24, max_side=30, seed=3)
    truth = []
    for t, (image, gt) in enumerate(generate_frames(spec)):
        Image.fromarray(image).save(root / f"{t}.jpg", quality=95)
        truth.append(gt)
    return root, truth


def _reference_window(predictor, folder, prompts):
    """The package's own path: init_state on a JPEG folder, prompts on frame 0, propagate."""
    state = predictor.init_state(str(folder))
    for obj_id, kind, value in prompts:
        if kind == "box":
            predictor.add_new_points_or_box(state, frame_idx=0, obj_id=obj_id, box=value)
        else:
            predictor.add_new_mask(state, frame_idx=0, obj_id=obj_id, mask=torch.from_numpy(value))
    out = {}
    for idx, ids, logits in predictor.propagate_in_video(state):
        out[idx] = {int(o): (logits[k, 0] > 0).numpy() for k, o in enumerate(ids)}
    return out


def _dets(gt, size):
    boxes = torch.tensor([g.box for g in gt], dtype=torch.float32)
    return Detections(boxes, torch.full((len(gt),), 0.9), torch.arange(len(gt)), [g.label for g in gt], size)


def test_windows_match_the_package_video_predictor(predictor, video, tmp_path):
    root, truth = video
    frames = list(VideoSource(root))
    assert [f.index for f in frames] == list(range(6))
    tracker = MaskTracker(predictor, MaskSettings(detect_every=3, max_missed=2))
    size = frames[0].size

    # window 1: two detections start tracks 1 and 2 (box prompts on the key frame)
    first = tracker.process(frames[:3], _dets(truth[0], size))
    w1 = tmp_path / "w1"
    w1.mkdir()
    for i in range(3):
        (w1 / f"{i}.jpg").write_bytes((root / f"{i}.jpg").read_bytes())
    ref1 = _reference_window(
        predictor, w1, [(k + 1, "box", np.array(g.box, dtype=np.float32)) for k, g in enumerate(truth[0])]
    )

    # window 2: no detection: both tracks continue from their last masks (mask prompts)
    second = tracker.process(frames[3:], _dets([], size))
    w2 = tmp_path / "w2"
    w2.mkdir()
    for i in range(3):
        (w2 / f"{i}.jpg").write_bytes((root / f"{i + 3}.jpg").read_bytes())
    ref2 = _reference_window(predictor, w2, [(k, "mask", m) for k, m in sorted(ref1[2].items()) if m.any()])

    compared = 0
    for ours, ref in ((first, ref1), (second, ref2)):
        for local, ft in enumerate(ours):
            ref_masks = {k: m for k, m in ref[local].items() if m.any()}
            assert {o.track_id for o in ft.objects} == set(ref_masks)
            for o in ft.objects:
                # same weights, same pixels, same prompts: the same masks (allow a handful of boundary pixels)
                assert (o.mask != ref_masks[o.track_id]).mean() <= 1e-3
                ys, xs = np.nonzero(o.mask)
                assert o.xyxy == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
                compared += 1
    assert compared >= 6
    masks = np.stack([o.mask for ft in first for o in ft.objects])
    assert 0.005 < masks.mean() < 0.5  # the comparison is not between empty (or near-full) masks


def test_state_round_trip_continues_identically(predictor, video):
    root, truth = video
    frames = list(VideoSource(root))
    size = frames[0].size
    a = MaskTracker(predictor, MaskSettings(detect_every=3))
    a.process(frames[:3], _dets(truth[0], size))
    b = MaskTracker(predictor, MaskSettings(detect_every=3))
    b.restore(a.state())
    ra, rb = a.process(frames[3:], _dets(truth[3], size)), b.process(frames[3:], _dets(truth[3], size))
    assert [[(o.track_id, o.label, o.xyxy) for o in f.objects] for f in ra] == [
        [(o.track_id, o.label, o.xyxy) for o in f.objects] for f in rb
    ]
    for fa, fb in zip(ra, rb):
        for oa, ob in zip(fa.objects, fb.objects):
            assert np.array_equal(oa.mask, ob.mask)


def test_mask_iou_and_matching():
    a = np.zeros((2, 10, 10), dtype=bool)
    a[0, :5, :5] = True  # 25 px
    a[1, 5:, 5:] = True
    b = np.zeros((3, 10, 10), dtype=bool)
    b[0, 5:, 5:8] = True  # 15 px inside a[1]
    b[1, :5, :4] = True  # 20 px inside a[0]
    b[2, 0, 9] = True
    iou = mask_iou(a, b)
    np.testing.assert_allclose(iou, [[0, 20 / 25, 0], [15 / 25, 0, 0]])
    tracker = MaskTracker(predictor=None, settings=MaskSettings(match_iou=0.7))
    from gdino.track.masks import _Track

    tracker.tracks = {4: _Track("x", 1.0, a[0]), 9: _Track("y", 1.0, a[1])}
    assert tracker._match([4, 9], b) == {4: 1}  # 0.6 < 0.7: track 9 unmatched
    assert mask_iou(a[:0], b).shape == (0, 3)
