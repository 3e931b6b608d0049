"""The server's mixed-prompt forward: every request's result equals running it alone."""

from __future__ import annotations

import pytest
import torch
from serve_util import three_photos

from gdino.infer.detector import Detector
from gdino.serve.forward import Item, detect_mixed, pad_text

pytestmark = pytest.mark.usefixtures("one_thread")

OPTS = {"box_threshold": 0.0, "text_threshold": 0.0, "image_size": 160}


@pytest.fixture(scope="module")
def detector(tiny_model):
    return Detector(tiny_model, **OPTS)


@pytest.fixture(scope="module")
def photos(chelsea_jpg):
    return three_photos(chelsea_jpg)


def assert_same(a, b, atol=1e-4):
    assert a.labels == b.labels
    assert torch.equal(a.class_ids, b.class_ids)
    torch.testing.assert_close(a.scores, b.scores, atol=atol, rtol=0)
    torch.testing.assert_close(a.xyxy, b.xyxy, atol=atol * 100, rtol=0)  # pixels of a 451x300 image


def test_mixed_prompts_equal_each_alone(detector, photos):
    prompts = ["a cat . a remote control", ["dog", "sofa", "a very long class name here"], "the ear"]
    items = []
    for img, p in zip(photos, prompts):
        opts = detector.resolve(None, {})
        items.append(Item(detector.prepare(img, options=opts), detector.prompt(p), opts))
    before = detector.stats["forwards"]
    mixed = detect_mixed(detector, items)
    assert detector.stats["forwards"] == before + 1  # one forward for three prompts
    for img, p, got in zip(photos, prompts, mixed):
        alone = detector.detect(img, p)[0]  # the library's own path, one image, one prompt
        assert len(alone) > 0
        assert_same(got, alone)


def test_decoding_options_differ_within_a_batch(detector, photos):
    strict = detector.resolve(None, {"box_threshold": 0.5, "max_detections": 3})
    loose = detector.resolve(None, {})
    items = [
        Item(detector.prepare(photos[0], options=loose), detector.prompt("a cat"), strict),
        Item(detector.prepare(photos[1], options=loose), detector.prompt("a cat"), loose),
    ]
    got = detect_mixed(detector, items)
    assert_same(got[0], detector.detect(photos[0], "a cat", strict)[0])
    assert_same(got[1], detector.detect(photos[1], "a cat", loose)[0])
    assert len(got[0]) <= 3 < len(got[1])


def test_pad_text_masks_padding(detector):
    a = detector.encode_text("a cat .")[1]
    b = detector.encode_text("a cat . a remote control . a sofa .")[1]
    t = pad_text([a, b])
    n = a.features.shape[1]
    assert t.features.shape[:2] == (2, b.features.shape[1])
    assert not t.token_mask[0, n:].any() and t.token_mask[0, :n].all()
    pad_rows = t.self_attention_masks[0, n:]
    assert torch.equal(pad_rows, torch.eye(t.features.shape[1], dtype=torch.bool)[n:])
    assert not t.self_attention_masks[0, :n, n:].any()
    assert torch.equal(t.features[1], b.features[0])


def test_unequal_sizes_refused(detector, photos):
    opts = detector.resolve(None, {})
    small = photos[0].resize((100, 100))
    items = [
        Item(detector.prepare(photos[0], options=opts), detector.prompt("a"), opts),
        Item(detector.prepare(small, options=opts), detector.prompt("a"), opts),
    ]
    with pytest.raises(ValueError, match="equal image sizes"):
        detect_mixed(detector, items)
