"""``gdino train``: the command-line entry; the heavy lifting lives in :mod:`gdino.train.build`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any


def _run(args: argparse.Namespace) -> int:
    overrides, resume = list(args.overrides), args.resume or False
    if isinstance(resume, str) and "=" in resume and not Path(resume).exists():
        overrides.insert(0, resume)  # "--resume a.b=c": the override is not a checkpoint path
        resume = True
    from gdino.train.build import train  # lazy: keeps gdino --help fast
    from gdino.train.config import load_config
    from gdino.train.host_memory import keep_freed_memory

    if args.keep_freed_memory:  # the process is a training job: large blocks reuse freed pages
        keep_freed_memory()

    cfg = load_config(args.config, overrides)
    if args.output_dir:
        from dataclasses import replace  # lazy: keeps gdino --help fast

        cfg = replace(cfg, output_dir=args.output_dir)
    state = train(cfg, resume=resume)
    if int(os.environ.get("RANK", "0")) == 0:
        last = state.history[-1] if state.history else {}
        print(
            f"trained {state.step} steps ({state.epoch} epochs); weights: {Path(cfg.output_dir) / 'model.safetensors'}"
            + (f"; last validation: {last}" if last else "")
        )
    return 0


def register(subparsers: Any) -> None:
    """Add ``gdino train``."""
    p = subparsers.add_parser(
        "train",
        help="train or fine-tune from a YAML config or a preset (coco-finetune, small-data, smoke)",
        description="Train from CONFIG (a YAML file or a preset name). Multi-GPU: "
        "torchrun --nproc-per-node N -m gdino train CONFIG.yaml",
    )
    p.add_argument("config", help="YAML config file or preset name (coco-finetune, small-data, smoke)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. optim.lr=5e-5 data.batch_size=2")
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the run folder's latest checkpoint (or from CHECKPOINT)",
    )
    p.add_argument(
        "--out", dest="output_dir", metavar="DIR", help="run folder: checkpoints, logs, weights (overrides output_dir)"
    )
    p.add_argument(
        "--malloc-default",
        dest="keep_freed_memory",
        action="store_false",
        help="leave glibc's malloc as it is (by default freed memory is kept for reuse: "
        "gdino.train.host_memory, faster CPU steps, the resident set stays at its peak)",
    )
    p.set_defaults(func=_run)
