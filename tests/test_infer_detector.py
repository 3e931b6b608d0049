"""model.detect on the tiny model: an independent reference, chunking, batching, caches, dtypes.

Images are resized to a 96-pixel shorter side (``image_size=128``) to keep the file fast.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from test_infer_prompts import lvis_sized_classes

from gdino.core.preprocess import PreprocessConfig, preprocess
from gdino.errors import GdinoError, PromptError
from gdino.infer.detector import Detector
from gdino.ops.boxes import cxcywh_to_xyxy
from gdino.text.captions import classes_to_caption
from gdino.text.positive_map import char_spans_to_token_spans, positive_map

SIZE = 96


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def photos(chelsea_jpg):
    """Three same-size RGB arrays (the cat, flipped, shifted colors) and one of another size."""
    cat = np.asarray(Image.open(chelsea_jpg).convert("RGB"))
    return [cat, cat[:, ::-1].copy(), (255 - cat), cat[50:250, 40:400].copy()]


class BackboneCalls:
    """Counts backbone forward calls and the batch size of each."""

    def __init__(self, model):
        self.sizes: list[int] = []
        self._h = model.backbone.register_forward_hook(lambda m, i, o: self.sizes.append(int(i[0].shape[0])))

    def close(self):
        self._h.remove()


@pytest.fixture
def backbone_calls(tiny_model):
    calls = BackboneCalls(tiny_model)
    yield calls
    calls.close()


def assert_same(a, b, atol=1e-3):
    """Two Detections lists agree: labels/classes exactly, boxes within atol px (float32 rounding of batched matmuls), scores within 1e-5."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.labels == y.labels
        assert torch.equal(x.class_ids, y.class_ids)
        torch.testing.assert_close(x.scores, y.scores, atol=1e-5, rtol=0)
        torch.testing.assert_close(x.xyxy, y.xyxy, atol=atol, rtol=0)


def reference_classes(model, image: np.ndarray, classes: list[str], threshold: float):
    """Independent classes-mode pipeline: one forward on the official caption, mean token probs."""
    caption, spans = classes_to_caption(classes)
    pm = positive_map(char_spans_to_token_spans(model.tokenizer, caption, spans), 256)
    pixels = preprocess(Image.fromarray(image), PreprocessConfig(SIZE, round(SIZE * 1333 / 800)))[None]
    with torch.no_grad():
        out = model(pixels, model.tokenize([caption]))
    scores = out.logits[0].sigmoid() @ pm.T  # [Q, C]
    best, cls = scores.max(-1)
    keep = best > threshold
    h, w = image.shape[:2]
    boxes = cxcywh_to_xyxy(out.boxes[0][keep]) * torch.tensor([w, h, w, h])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    order = torch.sort(best[keep], descending=True, stable=True).indices
    return boxes[order], best[keep][order], cls[keep][order]


CLASSES = ["cat", "remote control", "dog", "sofa"]


def test_one_chunk_matches_an_independent_reference(tiny_model, photos):
    dets = Detector(tiny_model).detect(photos[0], CLASSES, box_threshold=0.3, image_size=SIZE)[0]
    boxes, scores, cls = reference_classes(tiny_model, photos[0], CLASSES, 0.3)
    assert len(dets) == len(boxes) > 0
    assert dets.labels == [CLASSES[i] for i in cls.tolist()]
    assert torch.equal(dets.class_ids, cls)
    torch.testing.assert_close(dets.scores, scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(dets.xyxy, boxes, atol=1e-3, rtol=0)  # pixels
    assert dets.image_size == (photos[0].shape[1], photos[0].shape[0])


def test_lvis_size_class_list_every_class_scored_image_encoded_once(tiny_model, tokenizer, photos, backbone_calls):
    classes = lvis_sized_classes(tokenizer)
    det = Detector(tiny_model, image_size=SIZE)
    prompt = det.prompt(classes)
    assert len(prompt.chunks) > 10
    # top-k over every (query, class) pair, threshold 0: every class of every chunk is scored
    everything = tiny_model.config.num_queries * len(classes)
    dets = det.detect(photos[0], classes, box_threshold=0.0, topk=everything)[0]
    assert backbone_calls.sizes == [1]  # the image side once, for all chunks
    assert det.stats["forwards"] == len(prompt.chunks)
    assert det.stats["text_encodes"] == len(prompt.chunks)
    assert set(dets.class_ids.tolist()) == set(range(len(classes)))
    assert len(dets) == everything
    assert all(dets.labels[i] == classes[c] for i, c in enumerate(dets.class_ids.tolist()))


def test_chunked_scores_equal_single_chunk_passes(tiny_model, tokenizer, photos):
    """Chunk k of a split list scores exactly like a detect() with only chunk k's classes."""
    classes = [c for c in lvis_sized_classes(tokenizer, 60)]
    det = Detector(tiny_model, image_size=SIZE, max_text_len=48)
    prompt = det.prompt(classes)
    assert len(prompt.chunks) >= 3
    merged = det.detect(photos[0], classes, box_threshold=0.2)[0]
    parts = []
    for chunk in prompt.chunks:
        names = [classes[i] for i in chunk.class_indices]
        single = Detector(tiny_model, image_size=SIZE, max_text_len=48).detect(photos[0], names, box_threshold=0.2)[0]
        assert len(Detector(tiny_model, max_text_len=48).prompt(names).chunks) == 1
        parts.append((single, chunk.class_indices))
    expected = []
    for single, idx in parts:
        for i in range(len(single)):
            expected.append((float(single.scores[i]), idx[int(single.class_ids[i])], single.xyxy[i]))
    expected.sort(key=lambda e: -e[0])
    assert len(merged) == len(expected)
    assert sorted(merged.class_ids.tolist()) == sorted(e[1] for e in expected)
    torch.testing.assert_close(merged.scores, torch.tensor([e[0] for e in expected]), atol=1e-6, rtol=0)


def test_batching_never_changes_a_result(tiny_model, photos, backbone_calls):
    singles = [Detector(tiny_model).detect(p, CLASSES, box_threshold=0.3, image_size=SIZE)[0] for p in photos]
    assert backbone_calls.sizes == [1, 1, 1, 1]
    backbone_calls.sizes.clear()
    batched = Detector(tiny_model).detect(photos, CLASSES, box_threshold=0.3, image_size=SIZE, batch_size=4)
    # the three equal-size images share one pass; the other size runs alone (never padded)
    assert sorted(backbone_calls.sizes) == [1, 3]
    assert_same(batched, singles)
    phrase_single = [Detector(tiny_model).detect(p, "a cat . a sofa", image_size=SIZE)[0] for p in photos[:3]]
    phrase_batched = Detector(tiny_model).detect(photos[:3], "a cat . a sofa", image_size=SIZE, batch_size=2)
    assert_same(phrase_batched, phrase_single)


def test_per_image_prompts(tiny_model, photos):
    prompts = [["cat"], "a dog", ["sofa", "remote control"]]
    dets = Detector(tiny_model).detect(
        photos[:3], prompts, per_image=True, image_size=SIZE, batch_size=3, box_threshold=0.2
    )
    for d, p, img in zip(dets, prompts, photos):
        assert_same([d], Detector(tiny_model).detect(img, p, image_size=SIZE, box_threshold=0.2))
    with pytest.raises(PromptError, match="one prompt per image"):
        Detector(tiny_model).detect(photos[:3], prompts[:2], per_image=True)


def test_image_side_reused_for_several_prompts(tiny_model, photos, backbone_calls):
    det = Detector(tiny_model, image_size=SIZE, batch_size=2)
    prompts = [["cat", "dog"], "a remote control", ["sofa"]]
    many = det.detect_prompts(photos[:2], prompts, box_threshold=0.25)
    assert backbone_calls.sizes == [2]
    assert det.stats["image_encodes"] == 2 and det.stats["forwards"] == 3
    for j, p in enumerate(prompts):
        assert_same(
            [many[0][j], many[1][j]], Detector(tiny_model).detect(photos[:2], p, image_size=SIZE, box_threshold=0.25)
        )


def test_image_cache_across_calls(tiny_model, photos, backbone_calls):
    det = Detector(tiny_model, image_size=SIZE, image_cache_size=2)
    a = det.detect(photos[0], ["cat"])
    b = det.detect(photos[0], "a remote control")
    c = det.detect(photos[0], ["cat"])
    assert backbone_calls.sizes == [1]
    assert det.stats["image_cache_hits"] == 2
    assert_same(a, c)
    assert_same(b, Detector(tiny_model).detect(photos[0], "a remote control", image_size=SIZE))


def test_text_encoded_once_for_many_images(tiny_model, photos):
    det = Detector(tiny_model, image_size=SIZE)
    for p in photos:
        det.detect(p, "a cat . a remote control")
    assert det.stats["text_encodes"] == 1 and det.stats["forwards"] == len(photos)


def raw_outputs(tiny_model, image, dtype):
    """Boxes and logits of the image, as the detector computes them under ``dtype``."""
    seen = {}
    original = tiny_model.forward_features

    def spy(*args, **kwargs):
        out = original(*args, **kwargs)
        seen["boxes"], seen["logits"], seen["valid"] = out.boxes.float(), out.logits.float(), out.text_mask
        return out

    tiny_model.forward_features = spy
    try:
        Detector(tiny_model, image_size=SIZE, dtype=dtype).detect(image, ["cat", "dog"])
    finally:
        del tiny_model.forward_features
    return seen


def reuse_first_selection(monkeypatch) -> None:
    """Every forward after the first reuses the first one's query selection (cast to its dtype)."""
    import gdino.model.grounding_dino as gd

    chosen = {}
    original = gd.select_queries

    def same_selection(memory, *args, **kwargs):
        result = original(memory, *args, **kwargs)
        if "ref" in chosen:
            return tuple(t.to(r.dtype) for t, r in zip(chosen["ref"], result))
        chosen["ref"] = result
        return result

    monkeypatch.setattr(gd, "select_queries", same_selection)


@pytest.mark.parametrize("dtype,box_tol,logit_tol", [("bf16", 0.05, 0.08), ("fp16", 0.01, 0.01)])
def test_low_precision_on_cpu_is_close_to_fp32(tiny_model, photos, dtype, box_tol, logit_tol, monkeypatch):
    """Autocast fp16/bf16 against fp32, with the tolerances of the model's own precision test.

    Query selection is a top-k over near-tied scores (random weights), so the low-precision run
    reuses the fp32 run's selection; then every box is within ``box_tol`` (image = 1) and every
    valid logit within ``logit_tol`` of the largest logit.
    """
    reuse_first_selection(monkeypatch)
    ref = raw_outputs(tiny_model, photos[0], "fp32")
    low = raw_outputs(tiny_model, photos[0], dtype)
    assert (low["boxes"] - ref["boxes"]).abs().max() < box_tol
    valid = ref["valid"][0]
    err = (low["logits"][0][:, valid] - ref["logits"][0][:, valid]).abs().max()
    assert err < logit_tol * ref["logits"][0][:, valid].abs().max()


def test_bf16_on_cpu_loads_bf16_weights_close_to_fp32(tiny_model, tiny_checkpoint, photos, monkeypatch):
    """``from_pretrained(dtype="bf16")`` on the CPU stores the weights in bf16 (other dtypes keep
    float32 and autocast); its outputs stay within the autocast-bf16 tolerances of the fp32 model,
    with the fp32 run's query selection reused as in the test above."""
    low_model = Detector.from_pretrained(str(tiny_checkpoint), device="cpu", dtype="bf16").model
    assert {p.dtype for p in low_model.parameters()} == {torch.bfloat16}
    fp16 = Detector.from_pretrained(str(tiny_checkpoint), device="cpu", options=None, dtype="fp16")
    assert {p.dtype for p in fp16.model.parameters()} == {torch.float32}
    reuse_first_selection(monkeypatch)
    ref = raw_outputs(tiny_model, photos[0], "fp32")
    low = raw_outputs(low_model, photos[0], "bf16")
    assert (low["boxes"].float() - ref["boxes"]).abs().max() < 0.05
    valid = ref["valid"][0]
    err = (low["logits"][0][:, valid].float() - ref["logits"][0][:, valid]).abs().max()
    assert err < 0.08 * ref["logits"][0][:, valid].abs().max()


def test_bad_options(tiny_model, photos):
    with pytest.raises(GdinoError, match=r"box-threshold must be a number in \[0, 1\]"):
        Detector(tiny_model).detect(photos[0], ["cat"], box_threshold=1.5)
    with pytest.raises(GdinoError, match="text-threshold"):
        Detector(tiny_model).detect(photos[0], "cat", text_threshold=-0.1)
    with pytest.raises(GdinoError, match="batch-size must be a positive integer"):
        Detector(tiny_model).detect(photos[0], "cat", batch_size=0)
    with pytest.raises(GdinoError, match="unknown dtype"):
        Detector(tiny_model).detect(photos[0], "cat", dtype="int8")
    with pytest.raises(PromptError, match="names nothing"):
        Detector(tiny_model).detect(photos[0], " ..!")
    with pytest.raises(GdinoError, match="no images"):
        Detector(tiny_model).detect([], "cat")
