"""OpenVINO's own int8 paths (NNCF) on the Swin-T export: speed and execution precision, not AP.

bench_forward.py's seeded Swin-T export (``--onnx``), one caption, a 512x512 image, 2 threads:
``none`` (the graph as exported), ``wc`` (``nncf.compress_weights``, INT8_ASYM: int8 weights,
data-free) or ``ptq`` (``nncf.quantize`` with ``ModelType.TRANSFORMER``, calibrated on three random
512x512 images with the same caption: int8 activations too), compiled with
``INFERENCE_PRECISION_HINT`` f32 or bf16 and ``PERF_COUNT``. Printed: the preparation time, wall
and CPU seconds of two forwards after a warm-up, the load average, and the executed nodes' time by
execution precision and for the matrix products by kernel. Needs ``pip install nncf`` (not a gdino
dependency: these paths are not wired into gdino, and their accuracy is not measured).

    python benchmarks/openvino_nncf.py /tmp/swint.onnx ptq bf16
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_forward as bf  # noqa: E402  (the seeded model's image)
import profile_runtimes as pr  # noqa: E402  (feeds from the graph's own tokenizer)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("onnx", help="the fp32 Swin-T export of bench_forward.py")
    p.add_argument("mode", choices=("none", "wc", "ptq"))
    p.add_argument("hint", choices=("f32", "bf16"))
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import nncf  # optional, not a gdino dependency
    import openvino as ov
    import torch

    from gdino.export.runtimes import read_metadata
    from gdino.weights.native import tokenizer_from_vocab

    meta = read_metadata(args.onnx)
    feeds = pr._feeds(pr._Tokenize(tokenizer_from_vocab(meta["gdino_vocab"], args.onnx)), bf._image(512, 512))
    core = ov.Core()
    model = core.read_model(args.onnx)
    t = time.perf_counter()
    if args.mode == "wc":
        model = nncf.compress_weights(model, mode=nncf.CompressWeightsMode.INT8_ASYM)
    elif args.mode == "ptq":
        data = []
        for seed in range(3):
            f = dict(feeds)
            f["pixel_values"] = torch.randn((1, 3, 512, 512), generator=torch.Generator().manual_seed(seed)).numpy()
            data.append(f)
        model = nncf.quantize(model, nncf.Dataset(data), model_type=nncf.ModelType.TRANSFORMER, subset_size=3)
    print("prep", args.mode, round(time.perf_counter() - t, 1), "s", flush=True)
    config = {"INFERENCE_PRECISION_HINT": args.hint, "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    request.infer(feeds)
    times = []
    for _ in range(2):
        t, c = time.perf_counter(), time.process_time()
        request.infer(feeds)
        times.append((time.perf_counter() - t, time.process_time() - c))
    by_precision: dict[str, float] = defaultdict(float)
    products: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        if str(info.status).endswith("NOT_RUN"):
            continue
        ms = info.real_time.total_seconds() * 1e3
        by_precision[info.exec_type.rsplit("_", 1)[-1]] += ms
        if info.node_type in ("FullyConnected", "MatMul", "Convolution"):
            products[f"{info.node_type} {info.exec_type}"] += ms
    print(args.mode, args.hint, "wall/cpu", [(round(a, 2), round(b, 2)) for a, b in times], "load", os.getloadavg()[0])
    print(" by precision", {k: round(v) for k, v in by_precision.items()})
    print(" products", {k: round(v) for k, v in sorted(products.items(), key=lambda kv: -kv[1])[:6]})


if __name__ == "__main__":
    main()
