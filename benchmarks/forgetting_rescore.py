"""Score finished ``bench_forgetting.py`` runs again on a larger held-out set.

``bench_forgetting.py`` scores each run on its 80 held-out images; with 30 class-and-color classes
that set alone moves a run's AP by several points. This script generates another held-out set
from the same generator (all four colors, 128 px, its own seed, nothing shared with the training
images) and scores the saved models of the named run folders on it, old classes' prompt and
annotations, then the new classes', as bench_forgetting does. No training happens here.

    python benchmarks/forgetting_rescore.py --out /tmp/forget-rescore --images 300 \
        /tmp/f17lr4/run-pretrain /tmp/f17lr4/run-plain /tmp/f17ig/run-distill@2.0-ignore ...

Prints one JSON line per run and writes them all to OUT/rescore.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_forgetting import NEW_COLORS, OLD_COLORS, class_subset, score  # noqa: E402  (a script beside this one)


def heldout(out: Path, n: int, seed: int) -> dict[str, str]:
    """``n`` all-color images under ``out`` with old-only and new-only annotation files."""
    from gdino.data.synthetic import SyntheticConfig, class_names, generate

    cfg = SyntheticConfig(  # one image more: the generator keeps one for a train split
        num_images=n + 1,
        size=128,
        seed=seed,
        colors=OLD_COLORS + NEW_COLORS,
        val_fraction=n / (n + 1),
        formats=("coco",),
    )
    if not (out / "val.json").is_file():
        generate(out, cfg)
    data = json.loads((out / "val.json").read_text())
    old = {i + 1 for i, name in enumerate(class_names(cfg)) if name.split()[0] in OLD_COLORS}
    files = {"images_ft": str(out)}
    for group, is_old in (("old", True), ("new", False)):
        path = out / f"val_{group}.json"
        path.write_text(json.dumps(class_subset(data, old, is_old)))
        files[f"val_{group}"] = str(path)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders with a model.safetensors")
    parser.add_argument("--out", default="/tmp/gdino-forget-rescore")
    parser.add_argument("--images", type=int, default=300, help="held-out images to generate")
    parser.add_argument("--seed", type=int, default=1000, help="generator seed (bench_forgetting's data use 0 and 1)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from gdino.train.build import minilm_dir
    from gdino.weights.load import load_model

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    files = heldout(out / "data", args.images, args.seed)
    rows = []
    for run in args.runs:
        model = load_model(Path(run) / "model.safetensors", tokenizer=minilm_dir())
        row = {
            "run": run,
            "images": args.images,
            "seed": args.seed,
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            **score(model, files, 128),
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    tmp = out / "rescore.json.tmp"
    tmp.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out / "rescore.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
