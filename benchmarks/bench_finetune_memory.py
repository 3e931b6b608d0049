"""Peak memory and step time of fine-tuning a Swin-T Grounding DINO, per batch size, AMP and
gradient checkpointing: the table for picking a batch size.

On the CPU each configuration runs in its own subprocess (on CUDA in one process, the allocator's
peak reset per configuration): the ``coco-finetune`` preset's model (random init of
the released shape, everything trained, AdamW), synthetic batches of ``--size`` square images with
three boxes each, denoising on; ``--warmup`` steps, then ``--steps`` timed ones. Memory: on CUDA
``torch.cuda.max_memory_allocated`` over the timed steps; on CPU the peak resident set (VmHWM,
reset after the warm-up, so the optimizer state already exists) minus nothing: the whole process.

    python benchmarks/bench_finetune_memory.py --size 512 --batches 1,2 --device cpu
    python benchmarks/bench_finetune_memory.py --size 800 --batches 1,2,4 --device cuda

Prints one JSON line per configuration and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(args: argparse.Namespace) -> dict:
    import torch

    sys.path.insert(0, str(ROOT))
    from bench_train_step import make_batch

    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model
    from gdino.text.tokenizer import load_tokenizer
    from gdino.train.build import minilm_dir
    from gdino.train.criterion import SetCriterion
    from gdino.train.denoising import DenoisingConfig
    from gdino.train.optim import build_optimizer
    from gdino.train.sections import OptimSection
    from gdino.train.trainer import TrainForward

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tokenizer = load_tokenizer(minilm_dir())
    torch.manual_seed(0)
    model = build_model(get_preset("swin-t"), tokenizer).to(device).train()
    model.use_checkpoint = args.checkpointing
    forward = TrainForward(model, DenoisingConfig(100, 0.5, 1.0, model.config.inverse_sigmoid_eps))
    criterion = SetCriterion()
    optimizer = build_optimizer(model, OptimSection())
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    batch = make_batch(tokenizer, args.batch, args.size, 3).to(device)

    def step() -> None:
        ctx = (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None
            else torch.autocast(device.type, enabled=False)
        )
        with ctx:
            out, meta, text_len = forward(batch.pixel_values, batch.pixel_mask, batch.captions, batch.targets)
        loss = criterion(out, batch.targets, meta, text_len=text_len)["total"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        optimizer.step()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")
    times, cpu = [], []
    for _ in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mb("VmHWM")
    return {
        "batch": args.batch,
        "size": args.size,
        "amp": args.amp,
        "checkpointing": args.checkpointing,
        "device": str(device),
        "peak_mib": round(peak),
        "step_s": round(min(times), 2),
        "cpu_s": round(min(cpu), 2),
        "threads": torch.get_num_threads(),
        "load_avg": round(os.getloadavg()[0], 1),
    }


def in_process(args: argparse.Namespace, batch: int, amp: str, checkpointing: bool) -> dict:
    """One CUDA configuration in this process: the allocator's peak is reset per run, and what the
    last run allocated is freed first, so the runs do not see each other (unlike RSS on the CPU)."""
    import gc

    import torch

    gc.collect()
    torch.cuda.empty_cache()
    one = argparse.Namespace(**{**vars(args), "batch": batch, "amp": amp, "checkpointing": checkpointing})
    try:
        return worker(one)
    except torch.OutOfMemoryError:
        return {"batch": batch, "amp": amp, "checkpointing": checkpointing, "error": "out of memory"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--amps", default="none,bf16")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--amp", default="none", help=argparse.SUPPRESS)
    parser.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    rows = []
    for batch in [int(b) for b in args.batches.split(",")]:
        for amp in args.amps.split(","):
            for ckpt in (False, True):
                cmd = [
                    sys.executable,
                    __file__,
                    "--worker",
                    "--batch",
                    str(batch),
                    "--amp",
                    amp,
                    "--size",
                    str(args.size),
                    "--device",
                    args.device,
                    "--steps",
                    str(args.steps),
                    "--warmup",
                    str(args.warmup),
                    "--threads",
                    str(args.threads),
                ] + (["--checkpointing"] if ckpt else [])
                if args.device.startswith("cuda"):
                    row = in_process(args, batch, amp, ckpt)
                    print(json.dumps(row), flush=True)
                    rows.append(row)
                    continue
                done = subprocess.run(cmd, capture_output=True, text=True)
                if done.returncode != 0:
                    row = {
                        "batch": batch,
                        "amp": amp,
                        "checkpointing": ckpt,
                        "error": done.stderr.strip().splitlines()[-1],
                    }
                else:
                    row = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                rows.append(row)
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {args.size}x{args.size}\n")
    print("| batch | AMP | checkpointing | peak memory (MiB) | step (s) | CPU (s) |\n|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['batch']} | {r['amp']} | {'on' if r['checkpointing'] else 'off'} | {r.get('peak_mib', r.get('error'))} | "
            f"{r.get('step_s', '-')} | {r.get('cpu_s', '-')} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
