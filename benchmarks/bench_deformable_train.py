"""CPU time of one deformable sampling forward + backward (``gdino.ops.deformable_gather``, the
training path) at the shapes of a Swin-T 512x512 batch-2 step: the encoder's (5440 queries, one per
image token) and the decoder's (900 queries). Optionally against another copy of the module (an
earlier commit's), the two interleaved in one process so that machine drift hits both:

    git archive c51b6fb src/gdino/ops/deformable_gather.py | tar -x -C /tmp/old
    python benchmarks/bench_deformable_train.py --compare /tmp/old/src/gdino/ops/deformable_gather.py

Locations: the reference point of each query (its own cell centre for the encoder, a random box
centre for the decoder) plus offsets of about two pixels per level, as in a trained model; the
attention weights random. The inputs are leaves, so every backward also adds its gradients into
their ``.grad`` (one pass over the value's size, the same for both modules). Prints the CPU
milliseconds of every repeat, sorted, and their median.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import time
from types import ModuleType

import torch

LEVELS = [(64, 64), (32, 32), (16, 16), (8, 8)]  # Swin-T stages 1-3 + the extra level at 512 px


def inputs(queries: int, batch: int = 2, heads: int = 8, channels: int = 32, points: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in LEVELS)
    value = torch.randn(batch, tokens, heads, channels, generator=g).requires_grad_()
    size = torch.tensor([[w, h] for h, w in LEVELS], dtype=torch.float32)  # (x, y) extent per level
    if queries == tokens:  # encoder: every token's own cell centre
        centres = [
            torch.stack(torch.meshgrid((torch.arange(w) + 0.5) / w, (torch.arange(h) + 0.5) / h, indexing="xy"), -1)
            for h, w in LEVELS
        ]
        ref = torch.cat([c.reshape(-1, 2) for c in centres])[None].expand(batch, -1, -1)
    else:
        ref = torch.rand(batch, queries, 2, generator=g)
    offsets = torch.randn(batch, queries, heads, len(LEVELS), points, 2, generator=g) * 2
    pixels = (ref[:, :, None, None, None, :] * size[:, None] + offsets - 0.5).requires_grad_()
    weights = torch.rand(batch, queries, heads, len(LEVELS), points, generator=g).requires_grad_()
    grad = torch.randn(batch, queries, heads * channels, generator=g)
    return value, pixels, weights, grad


def load(path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location("compared_deformable_gather", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compare", default=None, help="path of another deformable_gather.py to time beside")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from gdino.ops import deformable_gather

    modules = {"current": deformable_gather}
    if args.compare:
        modules["compared"] = load(args.compare)
    result: dict[str, dict[str, dict[str, object]]] = {}
    for name, queries in (("encoder", sum(h * w for h, w in LEVELS)), ("decoder", 900)):
        value, pixels, weights, grad = inputs(queries)
        times: dict[str, list[float]] = {k: [] for k in modules}
        for i in range(args.repeats + 1):
            for key, module in modules.items():
                start = time.process_time()
                module.gather_sample(value, LEVELS, pixels, weights).backward(grad)
                if i:  # the first round warms up
                    times[key].append(1e3 * (time.process_time() - start))
        result[name] = {
            k: {"median_ms": round(statistics.median(v), 1), "sorted_ms": sorted(round(x, 1) for x in v)}
            for k, v in times.items()
        }
    print(json.dumps({"threads": args.threads, "repeats": args.repeats, **result}, indent=1))


if __name__ == "__main__":
    main()
