"""Smoke training benchmark: the ``small-minilm`` detector trained from scratch on synthetic shapes.

Trains the ``smoke`` preset (pretrained MiniLM text encoder, everything else random; 20 epochs of
400 images, cosine schedule) with a wall-clock cap on this machine, then scores AP / AP50 on the
held-out synthetic images with gdino.eval (pycocotools). Goal: AP50 >= 0.5 within 20 minutes on a 2-core CPU.

    python benchmarks/bench_smoke_train.py --minutes 20 --out /tmp/gdino-smoke [key=value ...]
    python benchmarks/bench_smoke_train.py --preset smoke-general --cpu-minutes 20 --threads 1 \
        --out /tmp/gen-textured data.synthetic_variant=textured

Prints one JSON line with the result (also written to OUT/result.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training wall-clock budget")
    parser.add_argument("--out", default="/tmp/gdino-smoke", help="run folder (data, checkpoints, logs)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    parser.add_argument(
        "--cpu-minutes",
        type=float,
        default=0.0,
        help="budget in CPU minutes of this process instead of wall-clock minutes (shared machines)",
    )
    parser.add_argument("--preset", default="smoke", help="training preset (smoke, smoke-general)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. data.batch_size=2")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from gdino.train.build import build_trainer, coco_validator
    from gdino.train.config import load_config
    from gdino.train.trainer import close_writer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    # the preset's own schedule (20 epochs, cosine), capped at the wall-clock budget
    budget = (
        f"schedule.max_cpu_minutes={args.cpu_minutes}"
        if args.cpu_minutes > 0
        else f"schedule.max_minutes={args.minutes}"
    )
    cfg = load_config(
        args.preset,
        [
            budget,
            "eval.every_epochs=0",
            "checkpoint.every_epochs=0",
            "progress=false",
            *args.overrides,
        ],
    )
    load_start = os.getloadavg()[0]
    cfg = replace(cfg, output_dir=args.out)
    t0 = time.perf_counter()
    trainer = build_trainer(cfg)
    setup_s = time.perf_counter() - t0
    t1, c1 = time.perf_counter(), time.process_time()
    state = trainer.fit()
    train_s, train_cpu_s = time.perf_counter() - t1, time.process_time() - c1
    close_writer(trainer)
    data = Path(args.out) / "data"
    t2 = time.perf_counter()
    validate = coco_validator(str(data / "val.json"), str(data), cfg.data.image_size, batch_size=1)
    metrics = validate(trainer.model)
    eval_s = time.perf_counter() - t2
    images = state.step * cfg.data.batch_size
    result = {
        "bench": "smoke_train",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_start_end": [round(load_start, 1), round(os.getloadavg()[0], 1)],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "preset": args.preset,
        "variant": cfg.data.synthetic_variant,
        "overrides": args.overrides,
        "train_images": cfg.data.synthetic,
        "val_images": cfg.data.synthetic_val,
        "image_size": cfg.data.synthetic_size,
        "train_size": cfg.data.image_size,
        "batch_size": cfg.data.batch_size,
        "steps": state.step,
        "epochs_seen": round(images / max(1, cfg.data.synthetic), 2),
        "train_s": round(train_s, 1),
        "train_cpu_s": round(train_cpu_s, 1),
        "sec_per_step": round(train_s / max(1, state.step), 2),
        "setup_s": round(setup_s, 1),
        "eval_s": round(eval_s, 1),
        **{k: round(v, 4) for k, v in metrics.items()},
        "goal_AP50_0.6_met": metrics["AP50"] >= 0.6,
    }
    line = json.dumps(result)
    (Path(args.out) / "result.json").write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
