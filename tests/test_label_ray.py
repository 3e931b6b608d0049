"""``gdino label --engine ray`` on a local Ray (2 CPUs): the same dataset as one process, resume
from shards, a worker killed mid-batch retried by Ray, unreadable images reported, masks."""

from __future__ import annotations

import functools
import json
import os
import shutil
import sys

import pytest
import torch
from PIL import Image

from gdino.cli import main
from gdino.errors import GdinoError
from gdino.infer.detector import Detector
from gdino.infer.options import DetectOptions
from gdino.infer.ray_data import RayOptions
from gdino.label.folder import SHARD_DIR, STATE_DIR, label_folder
from gdino.label.ray_engine import label_with_ray, list_images

ray = pytest.importorskip("ray", reason="test dependency ray (in [dev])")

CLASSES = ["cat", "remote control"]
OPTIONS = DetectOptions(image_size=64, box_threshold=0.25, batch_size=2)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One small local Ray for the module; the workers inherit this process's environment."""
    ray.init(num_cpus=2, object_store_memory=100 * 1024**2, include_dashboard=False, log_to_driver=False)
    # the crashing segmenter below is defined here: ship this module's code to the workers by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, chelsea_jpg):
    """6 readable images (nested, spaces and accents, RGBA, grayscale, portrait) and 2 unreadable."""
    root = tmp_path_factory.mktemp("label_ray") / "photos"
    (root / "sub dir").mkdir(parents=True)
    cat = Image.open(chelsea_jpg).convert("RGB").resize((96, 64))
    cat.save(root / "a.jpg")
    cat.rotate(20).save(root / "b.jpg")
    cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(root / "sub dir" / "chat noir é.png")
    cat.convert("RGBA").save(root / "sub dir" / "c.png")
    cat.convert("L").save(root / "d.jpeg")
    cat.resize((64, 96)).save(root / "e.webp")
    (root / "empty.jpg").write_bytes(b"")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png")
    return root


def load(out, name="annotations.json"):
    return json.loads((out / name).read_text(encoding="utf-8"))


def assert_same_dataset(a, b):
    """Equal COCO documents: exact images/ids/categories/settings; boxes and scores to their rounding."""
    ca, cb = load(a), load(b)
    assert ca["images"] == cb["images"] and ca["categories"] == cb["categories"]
    assert ca["info"]["settings"] == cb["info"]["settings"] and ca["info"]["image_root"] == cb["info"]["image_root"]
    assert len(ca["annotations"]) == len(cb["annotations"]) > 0
    for x, y in zip(ca["annotations"], cb["annotations"]):
        assert (x["id"], x["image_id"], x["category_id"]) == (y["id"], y["image_id"], y["category_id"])
        assert x["bbox"] == pytest.approx(y["bbox"], abs=0.02) and x["score"] == pytest.approx(y["score"], abs=2e-5)
        assert x.get("segmentation") == y.get("segmentation")
    assert load(a, "skipped.json") == load(b, "skipped.json")


@pytest.fixture(scope="module")
def labeled(folder, tiny_model, tiny_checkpoint, tmp_path_factory):
    """The folder labeled by one process and by 2 Ray workers (shared by the tests that read them)."""
    base = tmp_path_factory.mktemp("labeled")
    single, distributed = base / "single", base / "ray"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    label_folder(
        Detector(tiny_model), folder, single, CLASSES, options=OPTIONS, formats=["coco", "yolo"], progress=False
    )
    torch.set_num_threads(threads)
    summary = label_with_ray(
        folder,
        distributed,
        CLASSES,
        weights=str(tiny_checkpoint),
        options=OPTIONS,
        formats=["coco", "yolo"],
        ray_options=RayOptions(workers=2, shard_size=3),
        progress=False,
    )
    return single, distributed, summary


def test_same_dataset_as_one_process(labeled):
    single, distributed, summary = labeled
    assert_same_dataset(single, distributed)
    assert load(single / STATE_DIR, "job.json") == load(distributed / STATE_DIR, "job.json")
    # unreadable images are reported, not fatal
    assert sorted(s["file"] for s in load(distributed, "skipped.json")) == ["broken.png", "empty.jpg"]
    assert summary.total == 8 and summary.labeled == 6 and len(summary.skipped) == 2 and summary.resumed == 0
    assert summary.detections == len(load(distributed)["annotations"])
    # 8 images in batches of 3: three shards (Ray may cut batches differently, never fewer)
    assert len(list((distributed / STATE_DIR / SHARD_DIR).glob("shard-*.jsonl"))) >= 3
    # the YOLO layout too
    files = lambda out: sorted(p.relative_to(out).as_posix() for p in (out / "labels").rglob("*.txt"))
    assert files(single) == files(distributed) and len(files(single)) == 6
    assert (distributed / "data.yaml").read_text().replace(str(distributed), "X") == (
        single / "data.yaml"
    ).read_text().replace(str(single), "X")


def test_restart_skips_finished_shards(folder, labeled, tmp_path, tiny_checkpoint):
    out = tmp_path / "ds"
    shutil.copytree(labeled[1], out, symlinks=True)
    run = functools.partial(
        label_with_ray,
        folder,
        out,
        CLASSES,
        weights=str(tiny_checkpoint),
        options=OPTIONS,
        formats=["coco", "yolo"],
        ray_options=RayOptions(workers=1, shard_size=2),
        progress=False,
    )
    first = load(out)
    shards = sorted((out / STATE_DIR / SHARD_DIR).glob("shard-*.jsonl"))
    # as if the job had been killed before the last shard: that shard missing, a torn temporary file left
    lost = shards[-1]
    lost_files = [json.loads(line)["file"] for line in lost.read_text(encoding="utf-8").splitlines()]
    lost.unlink()
    (lost.parent / f".{lost.stem}.tmp-999{lost.suffix}").write_text('{"file": "a.jp')
    (out / "annotations.json").unlink()
    kept = {p: p.stat().st_mtime_ns for p in shards[:-1]}
    summary = run()
    unreadable = sum(f in ("broken.png", "empty.jpg") for f in lost_files)
    assert summary.resumed == 8 - len(lost_files) and summary.labeled == len(lost_files) - unreadable
    assert {p: p.stat().st_mtime_ns for p in shards[:-1]} == kept  # finished shards were not redone
    assert load(out)["images"] == first["images"] and len(load(out)["annotations"]) == len(first["annotations"])
    # nothing left: a third run labels nothing; a file:// URI source reads the same folder
    summary = label_with_ray(
        f"file://{folder.resolve()}",
        out,
        CLASSES,
        weights=str(tiny_checkpoint),
        options=OPTIONS,
        ray_options=RayOptions(workers=1, shard_size=2),
        progress=False,
    )  # no yolo: a URI
    assert summary.labeled == 0 and summary.resumed == 8 and load(out)["images"] == first["images"]
    with pytest.raises(GdinoError, match="other settings .*classes"):
        label_with_ray(folder, out, ["dog"], weights=str(tiny_checkpoint), options=OPTIONS, progress=False)


def test_list_images_from_a_uri_matches_the_folder(folder):
    _, root, names, paths = list_images(folder)
    _, uri_root, uri_names, uri_paths = list_images(f"file://{folder.resolve()}")
    assert names == uri_names and root == uri_root and paths == uri_paths
    assert names[:3] == ["a.jpg", "b.jpg", "broken.png"] and names[-1] == "sub dir/chat noir é.png"


class BoxMasks:
    """A segmenter that fills each box; with ``crash_marker``, the first call in any process kills
    that worker process (like a preempted or OOM-killed machine) after creating the marker; with
    ``crash_width``, every image of that width kills its worker."""

    def __init__(self, crash_marker: str | None = None, crash_width: int | None = None) -> None:
        self.crash_marker = crash_marker
        self.crash_width = crash_width

    def segment(self, rgb, dets):
        if self.crash_marker is not None and not os.path.exists(self.crash_marker):
            open(self.crash_marker, "w").close()
            os._exit(1)
        if rgb.shape[1] == self.crash_width:
            os._exit(1)
        h, w = rgb.shape[:2]
        masks = torch.zeros(len(dets), h, w, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(dets.xyxy.round().long().tolist()):
            masks[i, y0:y1, x0:x1] = True
        dets.masks, dets.mask_scores = masks, torch.full((len(dets),), 0.75)
        return dets


def test_worker_killed_midway_is_retried_and_masks_match(folder, tmp_path, tiny_model, tiny_checkpoint):
    marker = tmp_path / "crashed-once"
    single, distributed = tmp_path / "single", tmp_path / "ray"
    label_folder(Detector(tiny_model), folder, single, CLASSES, options=OPTIONS, segmenter=BoxMasks(), progress=False)
    summary = label_with_ray(
        folder,
        distributed,
        CLASSES,
        weights=str(tiny_checkpoint),
        options=OPTIONS,
        segmenter_factory=functools.partial(BoxMasks, str(marker)),
        ray_options=RayOptions(workers=1, shard_size=4),
        progress=False,
    )
    assert marker.exists()  # a worker did die in the middle of a batch
    assert summary.labeled == 6 and len(summary.skipped) == 2
    assert_same_dataset(single, distributed)
    anns = load(distributed)["annotations"]
    assert all("segmentation" in a and a["mask_score"] == 0.75 for a in anns)


@pytest.mark.slow  # four worker deaths and restarts: about 40 s
def test_batch_that_always_kills_its_worker_is_reported(folder, tmp_path, tiny_checkpoint):
    out = tmp_path / "ds"
    summary = label_with_ray(
        folder,
        out,
        CLASSES,
        weights=str(tiny_checkpoint),
        options=OPTIONS,
        segmenter_factory=functools.partial(BoxMasks, None, 64),
        ray_options=RayOptions(workers=1, shard_size=1),
        progress=False,
    )
    skipped = {s["file"]: s["reason"] for s in load(out, "skipped.json")}
    assert sorted(skipped) == ["broken.png", "e.webp", "empty.jpg"]  # e.webp is the one 64 px wide
    assert "a worker died on each of 3 attempts" in skipped["e.webp"]
    assert summary.labeled == 5 and len(load(out)["images"]) == 5


class Failing:
    """A segmenter that raises (a bug, not a crash): the job stops with one line, shards written so far stay."""

    def segment(self, rgb, dets):
        raise ValueError("segmenter bug for this test")


@pytest.mark.slow  # one more Ray job: about 20 s idle
def test_worker_exception_is_one_line(folder, tmp_path, tiny_checkpoint):
    with pytest.raises(GdinoError, match="the Ray job failed: ValueError: segmenter bug for this test"):
        label_with_ray(
            folder,
            tmp_path / "ds",
            CLASSES,
            weights=str(tiny_checkpoint),
            options=OPTIONS,
            segmenter_factory=Failing,
            ray_options=RayOptions(workers=1, shard_size=4),
            progress=False,
        )


def test_cli_engine_ray(folder, tmp_path, tiny_checkpoint, capsys):
    out = tmp_path / "ds"
    code = main(
        [
            "label",
            str(folder),
            "--classes",
            "cat,remote control",
            "--out",
            str(out),
            "--weights",
            str(tiny_checkpoint),
            "--image-size",
            "64",
            "--box-threshold",
            "0.25",
            "--engine",
            "ray",
            "--workers",
            "1",
            "--shard-size",
            "4",
            "--no-progress",
            "--format",
            "yolo",
            "--masks",
            "--segmenter",
            "sam-tiny",  # random SAM, built in the worker
        ]
    )
    err = capsys.readouterr().err
    assert code == 0, err
    assert "labeled 6 of 8 images" in err and "skipped 2 unreadable" in err and "images/s" in err
    assert len(load(out)["images"]) == 6 and (out / "labels" / "train" / "a.txt").exists()
    anns = load(out)["annotations"]
    assert anns and all("segmentation" in a and "mask_score" in a for a in anns)
    assert load(out / STATE_DIR, "job.json")["segmenter"] == "sam-tiny"
    assert main(["label", str(folder), "--classes", "cat", "--out", str(out), "--shard-size", "3"]) == 2
    assert "--shard-size only applies with --engine ray" in capsys.readouterr().err
