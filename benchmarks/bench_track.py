"""Tracking benchmark: MOTA, IDF1, ID switches and frames/s of ``gdino track`` on a generated video.

The video comes from :mod:`gdino.track.synthetic` (shapes that move, cross, occlude each other,
leave and enter; ground truth from the generator). Detection uses a small detector trained on
the synthetic shapes with the ``smoke`` preset (``benchmarks/bench_smoke_train.py``); nothing is
trained here. Scores come from ``motmetrics`` (CLEAR MOT and identity metrics, IoU >= 0.5).

Rows:
- ``boxes``: ``gdino.track.track`` in boxes mode (ByteTrack), end to end (decode + detect + track).
- ``boxes, ground-truth detections``: ByteTrack fed the ground-truth boxes (score 0.9): the
  association's own ceiling on this video.
- ``masks``: masks mode with a SAM 2 model (``--sam2 NAME --sam2-weights FILE``); with
  ``--sam2 random`` a randomly initialized SAM 2.1 hiera-t (speed only: its masks are noise).

    python benchmarks/bench_track.py --weights /tmp/gdino-smoke/model.safetensors --out /tmp/bench-track \\
        [--frames 150] [--seed 0] [--modes boxes,oracle,masks] [--threads 1]

Prints one JSON line per row (also written to OUT/results.jsonl).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path


def iou_distance(a, b, max_distance: float = 0.5):
    """``1 - IoU`` of xywh boxes, NaN (no match) above ``max_distance`` (motmetrics' iou_matrix,
    whose 1.4 release calls the ``np.asfarray`` that NumPy 2 removed)."""
    import numpy as np

    if len(a) == 0 or len(b) == 0:
        return np.empty((len(a), len(b)))
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    inter = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None) * np.clip(
        np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None
    )
    union = (a[:, 2:3] * a[:, 3:4]) + (b[:, 2] * b[:, 3]) - inter
    dist = 1.0 - inter / np.maximum(union, 1e-9)
    return np.where(dist > max_distance, np.nan, dist)


def mot_scores(gt_file: Path, rows: list[tuple[int, int, float, float, float, float]]) -> dict:
    """motmetrics summary of tracker rows ``(frame, id, x, y, w, h)`` against a MOTChallenge gt file."""
    import motmetrics as mm
    import numpy as np

    gt: dict[int, list[tuple[int, list[float]]]] = {}
    for line in gt_file.read_text().splitlines():
        f = line.split(",")
        gt.setdefault(int(f[0]), []).append((int(f[1]), [float(v) for v in f[2:6]]))
    hyp: dict[int, list[tuple[int, list[float]]]] = {}
    for frame, tid, x, y, w, h in rows:
        hyp.setdefault(frame, []).append((tid, [x, y, w, h]))
    acc = mm.MOTAccumulator(auto_id=False)
    for frame in sorted(set(gt) | set(hyp)):
        g, hy = gt.get(frame, []), hyp.get(frame, [])
        dist = iou_distance(np.array([b for _, b in g]).reshape(-1, 4), np.array([b for _, b in hy]).reshape(-1, 4))
        acc.update([i for i, _ in g], [i for i, _ in hy], dist, frameid=frame)
    names = [
        "mota",
        "idf1",
        "num_switches",
        "precision",
        "recall",
        "num_frames",
        "mostly_tracked",
        "num_unique_objects",
    ]
    s = mm.metrics.create().compute(acc, metrics=names, name="x")
    return {
        k: (round(float(s[k].iloc[0]), 4) if k in ("mota", "idf1", "precision", "recall") else int(s[k].iloc[0]))
        for k in names
    }


def machine() -> dict:
    cpu = ""
    try:
        cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "")
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu or platform.processor(),
        "load_avg": [round(v, 2) for v in os.getloadavg()],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="the smoke-trained detector (gdino .safetensors)")
    p.add_argument("--out", default="/tmp/bench-track")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", default="boxes,oracle", help="comma-separated: boxes, oracle, masks")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--box-threshold", type=float, default=0.3)
    p.add_argument("--track-threshold", type=float, default=0.4)
    p.add_argument("--max-detections", type=int, default=10)
    p.add_argument("--nms-iou", type=float, default=0.5, help="class-aware NMS of the detections (0: off)")
    p.add_argument("--detect-every", type=int, default=10)
    p.add_argument("--sam2", default="random", help="masks mode: a SAM 2 segmenter name, or 'random'")
    p.add_argument("--sam2-weights", default=None)
    p.add_argument("--masks-frames", type=int, default=30, help="masks mode: frames to run (the first N)")
    a = p.parse_args(argv)

    import torch

    from gdino import Detector
    from gdino.core.detections import Detections
    from gdino.track.boxes import BoxTracker, ByteTrackSettings
    from gdino.track.masks import MaskSettings
    from gdino.track.stream import track
    from gdino.track.synthetic import VideoSpec, generate_frames, generate_video

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    spec = VideoSpec(frames=a.frames, seed=a.seed)
    meta = generate_video(spec, out / "video")
    video, gt_file, classes = out / "video" / "video.mp4", out / "video" / "gt.txt", meta["classes"]
    bt = ByteTrackSettings(track_activation_threshold=a.track_threshold, high_conf_det_threshold=a.track_threshold)
    results = []

    def emit(row: dict) -> None:
        row.update(
            video=f"{spec.width}x{spec.height}, {spec.frames} frames, {spec.objects} objects, seed {spec.seed}",
            classes=classes,
            threads=a.threads,
            **machine(),
        )
        results.append(row)
        print(json.dumps(row), flush=True)

    def rows_of(frames) -> list:
        return [
            (ft.frame + 1, o.track_id, o.xyxy[0], o.xyxy[1], o.xyxy[2] - o.xyxy[0], o.xyxy[3] - o.xyxy[1])
            for ft in frames
            for o in ft.objects
        ]

    modes = a.modes.split(",")
    det = Detector.from_pretrained(
        a.weights,
        device="cpu",
        image_size=a.image_size,
        box_threshold=a.box_threshold,
        max_detections=a.max_detections,
        nms_iou=a.nms_iou or None,
    )
    if "boxes" in modes:
        t0 = time.perf_counter()
        frames = list(track(det, video, classes, bytetrack=bt))
        sec = time.perf_counter() - t0
        emit(
            {
                "row": "boxes",
                "frames_per_s": round(len(frames) / sec, 2),
                "box_threshold": a.box_threshold,
                "track_threshold": a.track_threshold,
                "nms_iou": a.nms_iou,
                "image_size": a.image_size,
                **mot_scores(gt_file, rows_of(frames)),
            }
        )
    if "oracle" in modes:
        tracker = BoxTracker(bt, fps=spec.fps)
        rows = []
        for t, (_, truth) in enumerate(generate_frames(spec)):
            boxes = torch.tensor([g.box for g in truth], dtype=torch.float32).reshape(-1, 4)
            dets = Detections(
                boxes,
                torch.full((len(truth),), 0.9),
                torch.zeros(len(truth), dtype=torch.long),
                [g.label for g in truth],
                (spec.width, spec.height),
            )
            for o in tracker.update(dets):
                rows.append((t + 1, o.track_id, o.xyxy[0], o.xyxy[1], o.xyxy[2] - o.xyxy[0], o.xyxy[3] - o.xyxy[1]))
        emit({"row": "boxes, ground-truth detections", **mot_scores(gt_file, rows)})
    if "masks" in modes:
        if a.sam2 == "random":
            from gdino.segment.sam2_backend import SAM2_CONFIGS
            from gdino.track.masks import build_video_predictor, import_video_predictor

            import_video_predictor()
            from sam2.build_sam import build_sam2_video_predictor

            torch.manual_seed(0)
            ref = build_sam2_video_predictor(SAM2_CONFIGS["sam2.1-hiera-t"], ckpt_path=None, device="cpu", mode="eval")
            sam2 = build_video_predictor(SAM2_CONFIGS["sam2.1-hiera-t"], ref.state_dict())
        else:
            from gdino.segment.build import build_segmenter

            sam2 = build_segmenter(a.sam2, a.sam2_weights, "cpu")
        n = min(a.masks_frames, spec.frames)
        t0 = time.perf_counter()
        frames = list(
            track(det, video, classes, mode="masks", end=n, sam2=sam2, masks=MaskSettings(detect_every=a.detect_every))
        )
        sec = time.perf_counter() - t0
        gt_cut = out / "video" / f"gt_first{n}.txt"
        gt_cut.write_text("".join(ln + "\n" for ln in gt_file.read_text().splitlines() if int(ln.split(",")[0]) <= n))
        emit(
            {
                "row": f"masks ({a.sam2}{'' if a.sam2 != 'random' else ' weights: speed only'})",
                "frames": n,
                "detect_every": a.detect_every,
                "frames_per_s": round(len(frames) / sec, 3),
                **mot_scores(gt_cut, rows_of(frames)),
            }
        )
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        for r in results:
            f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
