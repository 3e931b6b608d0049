"""``--format yolo`` writes the layout Ultralytics trains on: checked with Ultralytics' own dataset
checker (``check_det_dataset``) and label loader (``YOLODataset``), offline."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions
from gdino.label import yolo
from gdino.label.folder import label_folder

CLASSES = ["cat", "remote control"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def ultralytics_offline(tmp_path_factory, monkeypatch):
    """Ultralytics with its settings in a temporary folder, no online checks and no font download."""
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path_factory.mktemp("yolo_config")))
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    monkeypatch.setenv("YOLO_VERBOSE", "False")
    data_utils = pytest.importorskip("ultralytics.data.utils", reason="test dependency ultralytics (in [dev])")
    from ultralytics.data.dataset import YOLODataset
    from ultralytics.utils import patches

    # importing ultralytics replaces PIL.Image.open for the whole process with a wrapper that tries
    # to pip-install a HEIF plugin on any unreadable file: put Pillow's own back (for the session)
    Image.open = patches._image_open

    # check_det_dataset ends by fetching a plotting font when it is missing: not needed to read data
    monkeypatch.setattr(data_utils, "check_font", lambda *a, **k: None)
    return data_utils.check_det_dataset, YOLODataset


def load_with_ultralytics(out, ultralytics_offline):
    check_det_dataset, YOLODataset = ultralytics_offline
    data = check_det_dataset(str(out / "data.yaml"), autodownload=False)
    assert data["names"] == dict(enumerate(CLASSES)) and data["nc"] == 2
    assert os.path.samefile(data["train"], out / "images" / "train") and data["val"] == data["train"]
    ds = YOLODataset(img_path=data["train"], data=data, task="detect", augment=False, imgsz=64)
    return {os.path.relpath(lb["im_file"], data["train"]): lb for lb in ds.labels}


def expected_boxes(coco):
    """COCO boxes as Ultralytics' normalized (class, cx, cy, w, h), per file name."""
    sizes = {i["id"]: (i["file_name"], i["width"], i["height"]) for i in coco["images"]}
    boxes = {i["file_name"]: [] for i in coco["images"]}
    for a in coco["annotations"]:
        name, w, h = sizes[a["image_id"]]
        x, y, bw, bh = a["bbox"]
        boxes[name].append([a["category_id"] - 1, (x + bw / 2) / w, (y + bh / 2) / h, bw / w, bh / h])
    return boxes


def test_ultralytics_reads_the_labeled_dataset(tmp_path, chelsea_jpg, tiny_model, ultralytics_offline):
    root = tmp_path / "photos"
    (root / "sub dir").mkdir(parents=True)
    cat = Image.open(chelsea_jpg).convert("RGB").resize((96, 64))
    cat.save(root / "a.jpg")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "sub dir" / "b é.png")
    cat.resize((64, 96)).save(root / "c.webp")
    (root / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    out = tmp_path / "ds"
    label_folder(
        Detector(tiny_model, image_size=64),
        root,
        out,
        CLASSES,
        options=DetectOptions(image_size=64, box_threshold=0.3),
        formats=["coco", "yolo"],
        progress=False,
    )
    coco = json.loads((out / "annotations.json").read_text(encoding="utf-8"))
    assert coco["annotations"]  # something to compare
    labels = load_with_ultralytics(out, ultralytics_offline)
    want = expected_boxes(coco)
    assert sorted(labels) == sorted(want) == ["a.jpg", "c.webp", "sub dir/b é.png"]  # the unreadable one is left out
    for name, lb in labels.items():
        assert tuple(lb["shape"]) == ((64, 96) if name != "c.webp" else (96, 64))  # (h, w)
        got = np.concatenate([lb["cls"], lb["bboxes"]], axis=1) if len(lb["cls"]) else np.zeros((0, 5))
        ref = np.array(want[name]).reshape(-1, 5)
        order = lambda m: m[np.lexsort(m.T[::-1])]
        np.testing.assert_allclose(order(got), order(ref), atol=2e-6)
    # the images are links to the sources, not copies
    link = out / "images" / "train" / "sub dir" / "b é.png"
    assert link.is_symlink() and link.resolve() == (root / "sub dir" / "b é.png").resolve()


def test_copies_where_links_fail(tmp_path, monkeypatch, ultralytics_offline):
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (40, 30), (200, 10, 10)).save(root / "red.png")
    images = [{"id": 1, "file_name": "red.png", "width": 40, "height": 30}]
    annotations = [{"image_id": 1, "category_id": 2, "bbox": [4.0, 3.0, 20.0, 15.0]}]

    def no_links(*args, **kwargs):
        raise OSError("links not supported here")

    monkeypatch.setattr(yolo.os, "symlink", no_links)
    out = tmp_path / "ds"
    yolo.write_yolo(out, root, images, annotations, CLASSES)
    copy = out / "images" / "train" / "red.png"
    assert not copy.is_symlink() and copy.read_bytes() == (root / "red.png").read_bytes()
    assert (out / "labels" / "train" / "red.txt").read_text() == "1 0.350000 0.350000 0.500000 0.500000\n"
    labels = load_with_ultralytics(out, ultralytics_offline)
    np.testing.assert_allclose(labels["red.png"]["bboxes"], [[0.35, 0.35, 0.5, 0.5]], atol=1e-6)
    np.testing.assert_array_equal(labels["red.png"]["cls"], [[1]])
