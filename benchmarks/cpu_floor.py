"""This CPU's matrix-product floor for one Swin-T forward: FLOPs counted, GEMM rate measured.

- the forward's floating-point operations at ``--size`` (``torch.utils.flop_counter`` on gdino's
  seeded Swin-T, one caption as in ``bench_forward.py``; matrix products, convolutions and
  attention are counted, element-wise work is not);
- the rate of a large matrix product (``--gemm`` cube, fp32 and bf16, median of ``--repeats``) with
  ``--threads`` threads;
- the floor = FLOPs / rate, per dtype. A measured forward time (``--measured fp32=S,bf16=S``, e.g.
  from ``bench_forward.py``) is then reported as the fraction of the floor it reaches.

    python benchmarks/cpu_floor.py --size 800x1333 --threads 2 --measured fp32=7.3,bf16=3.7
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_forward import _build_gdino, _image, _vocab_file  # noqa: E402


def forward_flops(size: str, vocab: str | None) -> int:
    """FLOPs of one forward, counted per aten op with torch's own FLOP formulas (``flop_registry``)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry

    class Count(TorchDispatchMode):
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            formula = flop_registry.get(func._overloadpacket)
            if formula is not None:
                Count.total += int(formula(*args, **kwargs, out_val=out))
            elif func._overloadpacket is torch.ops.aten._scaled_dot_product_flash_attention_for_cpu:
                q, k = args[0], args[1]  # [B, H, Lq, D], [B, H, Lk, D]: two products of 2*Lq*Lk*D
                Count.total += 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] * q.shape[3]
            return out

    h, w = (int(v) for v in size.split("x"))
    _, forward = _build_gdino(_vocab_file(vocab))
    with torch.no_grad(), Count():  # under inference_mode composite ops (linear) reach the mode undecomposed
        forward(_image(h, w))
    return Count.total


def gemm_rate(n: int, dtype: torch.dtype, repeats: int) -> float:
    """FLOP/s of an n x n x n product in ``dtype`` (median of ``repeats`` after two warm-ups)."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="800x1333")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--gemm", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--vocab", default=None)
    p.add_argument("--measured", default="", help="dtype=seconds,... measured forward times to place")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    flops = forward_flops(args.size, args.vocab)
    rates = {
        name: gemm_rate(args.gemm, dt, args.repeats) for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))
    }
    measured = dict(kv.split("=") for kv in args.measured.split(",") if kv)
    rows = []
    for name, rate in rates.items():
        floor = flops / rate
        row = {"dtype": name, "gemm_gflops": round(rate / 1e9, 1), "forward_gflop": round(flops / 1e9, 1)}
        row["floor_s"] = round(floor, 2)
        if name in measured:
            row["measured_s"] = float(measured[name])
            row["fraction_of_floor"] = round(floor / float(measured[name]), 2)
        rows.append(row)
    print(json.dumps({"size": args.size, "threads": args.threads, "rows": rows}))
    print(f"\n{args.size}, {args.threads} threads, {args.gemm}^3 GEMM")
    print(
        "| dtype | GEMM GFLOP/s | forward GFLOP | floor (s) | measured (s) | floor / measured |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['dtype']} | {r['gemm_gflops']} | {r['forward_gflop']} | {r['floor_s']} | "
            f"{r.get('measured_s', '')} | {r.get('fraction_of_floor', '')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
