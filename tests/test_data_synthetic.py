"""The synthetic dataset generator, and the datasets read back from it end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from gdino.data.coco import load_coco
from gdino.data.collate import collate
from gdino.data.dataset import build_dataset
from gdino.data.odvg import load_odvg
from gdino.data.synthetic import SyntheticConfig, class_names, generate, main
from gdino.data.transforms import TransformConfig, build_train_transform
from gdino.errors import GdinoError

CFG = SyntheticConfig(num_images=12, size=128, seed=7)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, CFG)
    return out


def test_deterministic_from_seed(synth, tmp_path):
    generate(tmp_path / "again", CFG)
    for name in (
        "train.json",
        "val.json",
        "train.jsonl",
        "train_grounding.jsonl",
        "label_map.json",
        "images/000005.png",
    ):
        assert (synth / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
    generate(tmp_path / "other", SyntheticConfig(num_images=12, size=128, seed=8))
    assert (synth / "train.json").read_bytes() != (tmp_path / "other" / "train.json").read_bytes()
    # Image i depends only on (seed, i), not on how many images are made.
    generate(tmp_path / "fewer", SyntheticConfig(num_images=4, size=128, seed=7))
    assert (synth / "images/000003.png").read_bytes() == (tmp_path / "fewer" / "images/000003.png").read_bytes()


def test_splits_and_formats_agree(synth):
    train, val = load_coco(synth / "train.json"), load_coco(synth / "val.json")
    assert len(train.records) == 10 and len(val.records) == 2  # val_fraction 0.2
    assert train.classes == class_names(CFG) and train.category_ids == list(range(1, 33))
    odvg = load_odvg(synth / "train.jsonl", synth / "label_map.json")
    assert odvg.classes == train.classes
    for a, b in zip(train.records, odvg.records, strict=True):
        assert a.file_name == b.file_name and torch.equal(a.boxes, b.boxes) and torch.equal(a.labels, b.labels)
    assert sum(len(r.boxes) for r in train.records) >= 10


def test_boxes_are_tight_around_the_drawn_shapes(synth):
    data = json.loads((synth / "train.json").read_text())
    names = {c["id"]: c["name"] for c in data["categories"]}
    for ann in data["annotations"]:
        img = np.asarray(Image.open(synth / f"images/{ann['image_id']:06d}.png")).astype(int)
        # Background is gray (R = G = B <= 193); shapes are colored or have near-white stripes.
        shape = (img[..., 0] != img[..., 1]) | (img[..., 1] != img[..., 2]) | (img[..., 0] >= 240)
        x, y, w, h = ann["bbox"]
        win = shape[max(y - 1, 0) : y + h + 1, max(x - 1, 0) : x + w + 1]
        ys, xs = np.nonzero(win)
        ox, oy = max(x - 1, 0), max(y - 1, 0)
        assert (xs.min() + ox, ys.min() + oy, xs.max() + ox + 1, ys.max() + oy + 1) == (x, y, x + w, y + h)
        color = names[ann["category_id"]].split()[0]
        center = img[y + h // 2, x + w // 2]
        rgb = {"red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 225), "yellow": (240, 215, 30)}[color]
        assert np.abs(center - rgb).max() == 0 or center.min() >= 240  # shape color, or a white stripe


def test_grounding_captions_name_and_place_the_shapes(synth):
    rows = [json.loads(line) for line in (synth / "train_grounding.jsonl").read_text().splitlines()]
    assert rows
    relations = 0
    for row in rows:
        caption, regions = row["grounding"]["caption"], row["grounding"]["regions"]
        owner = {}
        for k, reg in enumerate(regions):
            for s, e in reg["tokens_positive"]:
                assert caption[s:e] == reg["phrase"]
                owner[s] = k
        for sentence in caption.split(". "):
            start = caption.index(sentence)
            for rel in (" left of ", " right of ", " above ", " below "):
                if rel not in sentence:
                    continue
                a = regions[owner[start + 2]]["bbox"]
                b = regions[owner[start + sentence.index(rel) + len(rel) + 2]]["bbox"]
                dx, dy = (b[0] + b[2] - a[0] - a[2]) / 2, (b[1] + b[3] - a[1] - a[3]) / 2
                ok = {" left of ": dx > 0, " right of ": dx < 0, " above ": dy > 0, " below ": dy < 0}[rel]
                assert ok, (caption, rel, a, b)
                relations += 1
    assert relations > 0


def test_cli(tmp_path, capsys):
    assert (
        main([str(tmp_path / "c"), "--num-images", "3", "--size", "64", "--format", "coco", "--shapes", "circle,star"])
        == 0
    )
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["images", "train.json", "val.json"]
    assert len(json.loads((tmp_path / "c" / "train.json").read_text())["categories"]) == 4 * 1 * 2 * 2
    assert "3 images, 16 classes" in capsys.readouterr().out
    assert main([str(tmp_path / "d"), "--colors", "mauve"]) == 2
    assert "mauve" in capsys.readouterr().err
    with pytest.raises(GdinoError):
        SyntheticConfig(min_objects=3, max_objects=2)


def test_datasets_end_to_end(synth, tokenizer):
    transform = build_train_transform(TransformConfig.scaled(128))
    ds = build_dataset("coco", synth / "train.json", synth, tokenizer, transform, seed=3)
    img_a, tgt_a = ds[4]
    img_b, tgt_b = ds[4]
    assert torch.equal(img_a, img_b) and tgt_a.caption == tgt_b.caption and torch.equal(tgt_a.boxes, tgt_b.boxes)
    ds.set_epoch(1)
    assert ds[4][1].caption != tgt_a.caption  # 32 classes reshuffled
    ds.set_epoch(0)
    assert ds[4][1].caption == tgt_a.caption
    assert img_a.dtype == torch.float32 and tgt_a.size == tuple(img_a.shape[-2:]) and tgt_a.orig_size == (128, 128)
    assert ((tgt_a.boxes > 0) & (tgt_a.boxes <= 1)).all()

    grounding = build_dataset("odvg", synth / "train_grounding.jsonl", synth, tokenizer, transform, seed=3)
    for i in range(4):
        _, t = grounding[i]
        ids = tokenizer(t.caption)["input_ids"]
        assert len(t) > 0
        for row, label in zip(t.token_map, t.labels, strict=True):
            words = tokenizer.decode([ids[j] for j in row.nonzero().flatten().tolist()]).split()
            phrase = t.phrases[label].split()  # a shape mentioned twice has both mentions' tokens
            assert phrase[-1] in CFG.shapes and words == phrase * (len(words) // len(phrase))

    batch = collate([ds[i] for i in range(4)])
    assert batch.pixel_values.shape[0] == 4 and batch.captions == [t.caption for t in batch.targets]
    for i, t in enumerate(batch.targets):
        h, w = t.size
        assert batch.pixel_mask[i].sum() == h * w


def test_seeded_items_do_not_depend_on_workers(synth, tokenizer):
    from torch.utils.data import DataLoader

    transform = build_train_transform(TransformConfig.scaled(128))
    ds = build_dataset(
        "odvg", synth / "train.jsonl", synth, tokenizer, transform, label_map=synth / "label_map.json", seed=11
    )

    def batches(workers: int):
        loader = DataLoader(ds, batch_size=3, collate_fn=collate, num_workers=workers)
        return [(b.pixel_values, b.captions, [t.boxes for t in b.targets]) for b in loader]

    for (pa, ca, ba), (pb, cb, bb) in zip(batches(0), batches(2), strict=True):
        assert torch.equal(pa, pb) and ca == cb
        assert all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
