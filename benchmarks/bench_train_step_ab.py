"""CPU time of gdino's training step against an earlier commit's, both in one process, alternating.

Single steps on a shared CPU drift by 10-20% within minutes, and two processes started one after
the other differ by as much (their heaps and page placement differ): a change of 5-10% in the step
only shows in pairs of steps run back to back in one process. This script loads an exported
``src`` of an earlier commit as a second package (``gdino_ab_old``: a copy in a temporary folder
with its ``gdino`` imports renamed), builds the same seeded Swin-T model in both, and alternates
them step by step (old, new, then new, old, ...), reporting every step's CPU time and the median of
the per-pair ratios new / old. The step is ``bench_train_step.py``'s (forward, loss, backward,
clip, AdamW) on its synthetic batch.

    git archive d5f92b8 src | tar -x -C /tmp/old
    python benchmarks/bench_train_step_ab.py --old-src /tmp/old/src --repeats 8

``--region-mask-ab`` instead alternates the current code with the official -100 Swin region mask
and with ``gdino.model.backbone.REGION_MASK_VALUE`` (one model, the mask switched between steps).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _renamed(text: str, package: str) -> str:
    text = re.sub(r"\b(from|import) gdino\b", rf"\1 {package}", text)
    return re.sub(r"([\"'])gdino\.", rf"\1{package}.", text)


def old_step_module(old_src: Path, folder: Path) -> ModuleType:
    """``bench_train_step`` bound to the exported package under ``old_src`` (renamed in ``folder``)."""
    package = "gdino_ab_old"
    source = old_src / "gdino"
    if not (source / "__init__.py").is_file():
        raise SystemExit(f"{old_src} holds no gdino package (export one: git archive COMMIT src | tar -x -C DIR)")
    target = folder / package
    shutil.copytree(source, target)
    for path in target.rglob("*.py"):
        path.write_text(_renamed(path.read_text(), package))
    script = folder / "bench_train_step_old.py"
    script.write_text(_renamed((HERE / "bench_train_step.py").read_text(), package))
    sys.path.insert(0, str(folder))
    return _load("bench_train_step_old", script)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--old-src", type=Path, help="an exported src folder of an earlier commit")
    which.add_argument("--region-mask-ab", action="store_true", help="official -100 mask against the current one")
    parser.add_argument("--preset", default="swin-t", help="'smoke' (= small-minilm, text frozen) or a model preset")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8, help="pairs of steps")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--keep-freed-memory", action="store_true")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        from gdino.train.host_memory import keep_freed_memory

        keep_freed_memory()
    from gdino.model import backbone
    from gdino.text.tokenizer import load_tokenizer
    from gdino.train.build import minilm_dir
    from gdino.train.presets import get_train_preset

    new = _load("bench_train_step_new", HERE / "bench_train_step.py")
    preset = "small-minilm" if args.preset == "smoke" else args.preset  # as bench_train_step.py
    freeze = get_train_preset("smoke" if args.preset == "smoke" else "coco-finetune").model.freeze_text
    tokenizer = load_tokenizer(minilm_dir())
    batch = new.make_batch(tokenizer, args.batch, args.size, 3)
    cpu = torch.device("cpu")
    with tempfile.TemporaryDirectory() as folder:
        if args.old_src is not None:
            old = old_step_module(args.old_src.resolve(), Path(folder))
            steps = {"old": old.GdinoStep(preset, tokenizer, False, 0, cpu, freeze)}
            steps["new"] = new.GdinoStep(preset, tokenizer, False, 0, cpu, freeze)
            origin = type(steps["old"].model).__module__
            if not origin.startswith("gdino_ab_old."):
                raise SystemExit(f"the old step runs {origin}, not the exported package")
            switch = {"old": lambda: None, "new": lambda: None}
        else:
            one = new.GdinoStep(preset, tokenizer, False, 0, cpu, freeze)
            steps = {"old": one, "new": one}
            current = backbone.REGION_MASK_VALUE
            switch = {
                "old": lambda: setattr(backbone, "REGION_MASK_VALUE", -100.0),
                "new": lambda: setattr(backbone, "REGION_MASK_VALUE", current),
            }
        for name in ("old", "new"):  # warm-up
            switch[name]()
            steps[name](batch)
        times: dict[str, list[float]] = {"old": [], "new": []}
        ratios = []
        for rep in range(args.repeats):
            pair = {}
            for name in ("old", "new") if rep % 2 == 0 else ("new", "old"):
                switch[name]()
                start = time.process_time()
                steps[name](batch)
                pair[name] = time.process_time() - start
                times[name].append(round(pair[name], 3))
            ratios.append(pair["new"] / pair["old"])
            print(f"pair {rep}: old {pair['old']:.2f} s, new {pair['new']:.2f} s, new/old {ratios[-1]:.3f}", flush=True)
    result = {
        "bench": "train_step_ab",
        "compared": str(args.old_src) if args.old_src is not None else "region mask -100 vs current",
        "preset": args.preset,
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "keep_freed_memory": args.keep_freed_memory,
        "steps_cpu_s": times,
        "median_cpu_s": {k: statistics.median(v) for k, v in times.items()},
        "paired_new_over_old": {
            "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3),
            "max": round(max(ratios), 3),
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
