"""``--engine local|ray`` and the Ray flags shared by ``gdino label`` and ``gdino eval``."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any

from gdino.errors import GdinoError

ENGINES = ("local", "ray")


def add_engine_options(p: argparse.ArgumentParser, workers: bool = True) -> None:
    """``--engine``, ``--ray-address``, ``--gpus-per-worker``, ``--cpus-per-worker``, ``--shard-size``
    (and ``--workers`` unless the command has its own)."""
    g = p.add_argument_group("scale-out (see docs/scale.md)")
    g.add_argument(
        "--engine",
        choices=ENGINES,
        default="local",
        help="local: this process (default); ray: a pool of detector workers on Ray Data (pip install 'gdino[ray]')",
    )
    g.add_argument(
        "--ray-address",
        metavar="ADDR",
        help="with --engine ray: a running cluster (auto, ray://HOST:10001); default $RAY_ADDRESS, else a local Ray",
    )
    if workers:
        g.add_argument("--workers", type=int, default=1, help="with --engine ray: detector workers (default 1)")
    g.add_argument(
        "--gpus-per-worker",
        type=float,
        default=0.0,
        metavar="G",
        help="with --engine ray: GPUs per worker, fractions share a GPU (default 0: CPU workers)",
    )
    g.add_argument(
        "--cpus-per-worker",
        type=int,
        default=1,
        metavar="N",
        help="with --engine ray: CPUs (torch threads) per worker (default 1)",
    )
    g.add_argument(
        "--shard-size",
        type=int,
        default=64,
        metavar="N",
        help="with --engine ray: images per worker batch and per result shard (default 64)",
    )


def ray_options(args: argparse.Namespace) -> Any:
    """The :class:`RayOptions` of the flags, after checking that Ray is installed; None for ``--engine local``."""
    if args.engine != "ray":
        given = [
            flag
            for flag, default, value in (
                ("--ray-address", None, args.ray_address),
                ("--gpus-per-worker", 0.0, args.gpus_per_worker),
                ("--cpus-per-worker", 1, args.cpus_per_worker),
                ("--shard-size", 64, args.shard_size),
            )
            if value != default
        ]
        if given:
            raise GdinoError(f"{given[0]} only applies with --engine ray")
        return None
    if getattr(args, "runtime", "torch") != "torch":
        raise GdinoError(f"--runtime {args.runtime} runs in this process only: use it with --engine local")
    if importlib.util.find_spec("ray") is None:
        raise GdinoError("--engine ray needs Ray: pip install 'gdino[ray]'")
    from gdino.infer.ray_data import RayOptions  # lazy: keeps gdino --help fast

    return RayOptions(
        address=args.ray_address,
        workers=args.workers,
        gpus_per_worker=args.gpus_per_worker,
        cpus_per_worker=args.cpus_per_worker,
        shard_size=args.shard_size,
    )


def worker_device_flag(args: argparse.Namespace) -> str | None:
    """``--device`` for Ray workers: None for ``auto`` (CPU, or CUDA with ``--gpus-per-worker``)."""
    return None if args.device in (None, "auto") else args.device


def absolute_if_file(path: str) -> str:
    """A local file or folder as an absolute path (Ray workers do not share the driver's working
    directory); hub names and URIs unchanged."""
    if "://" in path or not Path(path).exists():
        return path
    return str(Path(path).resolve())
