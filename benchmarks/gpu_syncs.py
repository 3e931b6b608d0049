"""Where a forward pass and a training step make the host wait for the GPU.

Runs under ``torch.cuda.set_sync_debug_mode("warn")`` and records, for every synchronizing CUDA
call, the innermost frame of gdino's own code that made it; prints the counts per place. A
forward pass (inference, the seeded-shape Swin-T at ``--size``) and a training step of the same
model (denoising on) are counted separately, after one unmeasured warm-up of each.

    python benchmarks/gpu_syncs.py --size 800x1333
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
SRC = str(ROOT.parent / "src" / "gdino")


def count_syncs(fn) -> collections.Counter:
    places: collections.Counter = collections.Counter()
    old = warnings.showwarning

    def record(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack()[:-1] if f.filename.startswith(SRC)]
        where = f"{frames[-1].filename[len(SRC) + 1 :]}:{frames[-1].lineno} {frames[-1].line}" if frames else "?"
        places[where] += 1

    torch.cuda.synchronize()
    warnings.showwarning = record
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = record
            fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
        warnings.showwarning = old
    return places


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800x1333")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device("cuda")

    from bench_forward import CAPTION, _image
    from bench_train_step import GdinoStep, make_batch

    from gdino.infer.detector import Detector
    from gdino.text.tokenizer import load_tokenizer
    from gdino.train.build import minilm_dir

    tokenizer = load_tokenizer(minilm_dir())
    step = GdinoStep("swin-t", tokenizer, True, 100, device, False)
    batch = make_batch(tokenizer, 2, min(h, w), 3).to(device)
    results = {}
    step(batch)
    results["train step (batch 2, denoising)"] = count_syncs(lambda: step(batch))
    model = step.model.eval()
    pixels = _image(h, w).to(device)
    text = model.tokenize([CAPTION])

    def forward():
        with torch.inference_mode():
            model(pixels, text)

    forward()
    results["forward (batch 1)"] = count_syncs(forward)
    import numpy as np
    from PIL import Image

    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8))
    det = Detector(model, box_threshold=0.0, max_detections=100)
    det.detect([photo], CAPTION)
    results["Detector.detect (batch 1)"] = count_syncs(lambda: det.detect([photo], CAPTION))
    for name, places in results.items():
        print(f"\n{name}: {sum(places.values())} synchronizing calls")
        for where, n in places.most_common():
            print(f"  {n:4d}  {where}")
    if args.json:
        Path(args.json).write_text(json.dumps({k: dict(v) for k, v in results.items()}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
