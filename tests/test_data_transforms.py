"""Augmentation keeps boxes on their objects; flip swaps left/right with spans; collate pads with masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from gdino.data.collate import collate
from gdino.data.synthetic import COLORS, SyntheticConfig, caption_for, class_names, render_image
from gdino.data.targets import Target
from gdino.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    HorizontalFlip,
    RandomSizeCrop,
    Sample,
    TransformConfig,
    build_eval_transform,
    build_train_transform,
    resized_size,
)
from gdino.errors import GdinoError

CFG = SyntheticConfig(
    size=160, colors=("red", "green", "blue", "yellow"), textures=("plain",), max_objects=4, min_objects=2
)
NAMES = class_names(CFG)


def synthetic_sample(seed: int) -> Sample:
    image, shapes = render_image(CFG, np.random.default_rng(seed))
    caption, spans = caption_for(shapes, NAMES, np.random.default_rng(seed))
    boxes = tv_tensors.BoundingBoxes(
        torch.tensor([s.box for s in shapes], dtype=torch.float32).reshape(-1, 4),
        format="XYXY",
        canvas_size=image.shape[:2],
    )
    return Sample(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1).contiguous()),
        boxes,
        torch.tensor([s.label for s in shapes]),
        caption,
        spans,  # one phrase per shape: label k of the box == phrase k
    )


def color_masks(image: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per color name, ``[H, W]`` bool of pixels within 50 (per channel) of that color."""
    img = image.to(torch.int32)
    return {
        name: (img - torch.tensor(rgb).view(3, 1, 1)).abs().amax(0) <= 50
        for name, rgb in COLORS.items()
        if name in CFG.colors
    }


def assert_boxes_on_objects(sample: Sample) -> None:
    masks = color_masks(sample.image)
    h, w = sample.image.shape[-2:]
    boxes = sample.boxes.as_subclass(torch.Tensor)
    assert tuple(sample.boxes.canvas_size) == (h, w)
    assert (
        (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= h).all()
    )
    covered = {name: torch.zeros(h, w, dtype=torch.bool) for name in masks}
    for box, label in zip(boxes.tolist(), sample.labels.tolist(), strict=True):
        color = NAMES[label].split()[0]
        x0, y0, x1, y1 = box
        inside = masks[color][int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        # A box cut by a crop touches the border and may hold only background (as in DETR).
        if x0 > 0 and y0 > 0 and x1 < w and y1 < h:
            assert inside.float().mean() >= 0.2, f"box {box} of {NAMES[label]} holds little of its color"
        covered[color][max(int(y0) - 2, 0) : int(np.ceil(y1)) + 2, max(int(x0) - 2, 0) : int(np.ceil(x1)) + 2] = True
    for color, mask in masks.items():
        stray = mask & ~covered[color]
        assert int(stray.sum()) <= 2, f"{int(stray.sum())} {color} pixels lie outside every {color} box"


@pytest.mark.parametrize("seed", range(8))
def test_train_transform_keeps_boxes_on_objects(seed):
    transform = build_train_transform(TransformConfig.scaled(160, normalize=False))
    sample = synthetic_sample(seed)
    assert_boxes_on_objects(sample)  # the generator's own boxes
    out = transform(sample, torch.Generator().manual_seed(seed))
    assert out.image.dtype == torch.uint8 and len(out.boxes) == len(out.labels)
    assert_boxes_on_objects(out)


def test_crop_matches_an_independent_crop_of_the_boxes():
    sample = synthetic_sample(3)
    h, w = sample.image.shape[-2:]
    # Pixels encode their own coordinates, so the crop window can be read off the output.
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    coded = tv_tensors.Image(torch.stack([xx, yy, xx]).to(torch.uint8))
    sample = Sample(coded, sample.boxes, sample.labels)
    boxes = sample.boxes.as_subclass(torch.Tensor)
    dropped = 0
    for seed in range(30):
        out = RandomSizeCrop(60, 80)(sample, torch.Generator().manual_seed(seed))
        ch, cw = out.image.shape[-2:]
        assert 60 <= ch <= 80 and 60 <= cw <= 80
        left, top = int(out.image[0, 0, 0]), int(out.image[1, 0, 0])
        assert torch.equal(out.image.as_subclass(torch.Tensor), coded[:, top : top + ch, left : left + cw])
        shifted = boxes - torch.tensor([left, top, left, top])
        clipped = torch.stack(
            [
                shifted[:, 0].clamp(0, cw),
                shifted[:, 1].clamp(0, ch),
                shifted[:, 2].clamp(0, cw),
                shifted[:, 3].clamp(0, ch),
            ],
            1,
        )
        keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        assert torch.equal(out.boxes.as_subclass(torch.Tensor), clipped[keep])
        assert torch.equal(out.labels, sample.labels[keep])
        assert tuple(out.boxes.canvas_size) == (ch, cw)
        dropped += int((~keep).sum())
    assert dropped > 0  # some crops must have lost a shape


def test_flip_mirrors_boxes_and_swaps_left_right():
    for seed in range(40):
        sample = synthetic_sample(seed)
        if " left of " in sample.caption or " right of " in sample.caption:
            break
    out = HorizontalFlip(p=1.0)(sample)
    w = sample.image.shape[-1]
    assert torch.equal(out.image, sample.image.flip(-1))
    b, o = sample.boxes.as_subclass(torch.Tensor), out.boxes.as_subclass(torch.Tensor)
    torch.testing.assert_close(o, torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], 1), atol=0, rtol=0)
    assert out.caption != sample.caption
    assert out.caption.count("left of") == sample.caption.count("right of")
    assert out.caption.count("right of") == sample.caption.count("left of")
    for k, spans in enumerate(out.phrase_spans):
        assert [out.caption[s:e] for s, e in spans] == [NAMES[int(sample.labels[k])]] * len(spans)
    # The flipped caption still describes the flipped image: "X left of Y" means X's centre is left.
    centers = (o[:, 0] + o[:, 2]) / 2
    span_owner = {s: k for k, spans in enumerate(out.phrase_spans) for s, _ in spans}
    for sentence_start, sentence in _sentences(out.caption):
        for rel, sign in ((" left of ", 1), (" right of ", -1)):
            if rel in sentence:
                first = span_owner[sentence_start + 2]
                second = span_owner[sentence_start + sentence.index(rel) + len(rel) + 2]
                assert sign * (centers[second] - centers[first]) > 0


def _sentences(caption: str):
    start = 0
    for part in caption.split(". "):
        yield start, part
        start += len(part) + 2


def test_seeded_transform_is_reproducible():
    transform = build_train_transform(TransformConfig.scaled(160))
    a = transform(synthetic_sample(1), torch.Generator().manual_seed(5))
    b = transform(synthetic_sample(1), torch.Generator().manual_seed(5))
    assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes) and a.caption == b.caption
    shapes = {tuple(transform(synthetic_sample(1), torch.Generator().manual_seed(s)).image.shape) for s in range(8)}
    assert len(shapes) > 1


def test_resize_rule_and_eval_transform():
    # Independent expectations from the rule "shorter side 800, longer <= 1333, longer truncated".
    assert resized_size(640, 480, 800, 1333) == (1066, 800)
    assert resized_size(480, 640, 800, 1333) == (800, 1066)
    assert resized_size(4000, 1000, 800, 1333) == (1332, 333)
    assert resized_size(300, 300, 800, None) == (800, 800)
    image = tv_tensors.Image(torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.tensor([[8.0, 4.0, 40.0, 44.0]]), format="XYXY", canvas_size=(48, 64))
    out = build_eval_transform(TransformConfig(eval_size=96, max_size=200))(Sample(image, boxes, torch.tensor([0])))
    assert out.image.shape == (3, 96, 128) and out.image.dtype == torch.float32
    torch.testing.assert_close(out.boxes.as_subclass(torch.Tensor), torch.tensor([[16.0, 8.0, 80.0, 88.0]]))


def test_normalize_values():
    image = tv_tensors.Image(torch.randint(0, 256, (3, 8, 8), dtype=torch.uint8))
    boxes = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(8, 8))
    out = build_eval_transform(TransformConfig(eval_size=8))(Sample(image, boxes, torch.zeros(0, dtype=torch.long)))
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out.image.as_subclass(torch.Tensor), (image.float() / 255 - mean) / std)


def test_transform_config_checks():
    with pytest.raises(GdinoError):
        TransformConfig(crop_min=700, crop_max=600)
    with pytest.raises(GdinoError):
        TransformConfig(flip_prob=1.5)
    small = TransformConfig.scaled(400)
    assert small.scales[0] == 240 and small.scales[-1] == 400 and small.max_size == 666


def _target(n: int, caption: str) -> Target:
    return Target(
        torch.rand(n, 4), torch.zeros(n, 256, dtype=torch.bool), torch.zeros(n, dtype=torch.long), caption=caption
    )


def test_collate_pads_bottom_right_with_masks():
    a = torch.rand(3, 20, 30)
    b = torch.rand(3, 25, 10)
    batch = collate([(tv_tensors.Image(a), _target(2, "a .")), (b, _target(0, "b ."))])
    assert batch.pixel_values.shape == (2, 3, 25, 30) and batch.pixel_mask.shape == (2, 25, 30)
    assert type(batch.pixel_values) is torch.Tensor
    assert torch.equal(batch.pixel_values[0, :, :20, :30], a) and torch.equal(batch.pixel_values[1, :, :25, :10], b)
    assert batch.pixel_values[0, :, 20:].abs().sum() == 0 and batch.pixel_values[1, :, :, 10:].abs().sum() == 0
    assert batch.pixel_mask[0].sum() == 20 * 30 and batch.pixel_mask[0, :20, :30].all()
    assert batch.pixel_mask[1].sum() == 25 * 10 and batch.pixel_mask[1, :25, :10].all()
    assert batch.captions == ["a .", "b ."] and [len(t) for t in batch.targets] == [2, 0]
    padded = collate([(a, _target(1, "a ."))], size_divisibility=32)
    assert padded.pixel_values.shape[-2:] == (32, 32) and padded.pixel_mask.sum() == 600
