"""Fine-tuning without forgetting, measured on generated shapes: pretrain on old classes, fine-tune on
new ones, score both before and after, for plain fine-tuning, frozen encoders, pseudo-label replay
and distillation from the starting model.

Setting (every image 128 px, shapes variant generator):
- old classes: the red and green shapes (16 classes); new classes: the blue and yellow ones (16);
- pretraining: the ``smoke`` preset on images with only old-class shapes;
- fine-tuning: images with shapes of all four colors where **only the new classes are annotated**
  (the usual situation: a new dataset does not label what it does not care about);
- validation: held-out all-color images, scored once with the old classes' prompt and annotations
  and once with the new classes'.

Runs from the same pretrained weights, same steps (``--runs``, ``NAME@VALUE`` sets the run's value):
``plain`` (everything trained; the text encoder, frozen during pretraining, at 0.1x the learning
rate), ``frozen`` (backbone and text encoder frozen, as the ``small-data`` preset),
``replay@THRESHOLD`` (plain plus ``data.replay_classes`` = the old classes: the starting model
pseudo-labels them on the fine-tuning images first, class-wise NMS), ``replay-agnostic@THRESHOLD``
(the same with ``data.replay_nms=agnostic``: one label per object), ``distill@WEIGHT`` (plain plus
``loss.distill_classes`` = the old classes, ``loss.distill_weight`` = WEIGHT: a frozen copy of the
starting model is distilled into the model on every batch, :mod:`gdino.train.distill`) and
``distill+replay@WEIGHT`` (both, replay at 0.15 with one label per object).
Goal: old-class AP >= 80% of its pretrained value while new-class AP >= 95% of plain fine-tuning's. The pretrained model (OUT/run-pretrain) is reused
when it exists, so further calls with other ``--runs`` (``--keep-results`` merges them into one
OUT/result.json; ``--set KEY=VALUE`` overrides every run, ``--tag`` names such runs apart) cost only
the fine-tuning.

    python benchmarks/bench_forgetting.py --out /tmp/gdino-forget --pretrain-steps 1000 --finetune-steps 800 \
        --finetune-lr 4e-4 --images 400 300 300 --runs plain,distill@1 --threads 1

(the recommended setting of docs/finetune.md section 4, with the default
``loss.distill_annotated=ignore``; ``--set loss.distill_annotated=keep --tag=-keep`` measures the
teacher's scores kept on annotated new objects, ``=zero --tag=-zero`` zeroed there; ``--set seed=1
--tag=-seed1`` another fine-tuning seed: the tag is appended to the run's name, e.g.
``distill@1.0-seed1``, and ``new_vs_plain`` in the JSON is always against the run named ``plain``).

Prints one JSON line (also OUT/result.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

OLD_COLORS, NEW_COLORS = ("red", "green"), ("blue", "yellow")


#: Config overrides of each fine-tuning run: ``fn(value, old class names as JSON) -> [key=value]``.
VARIANTS = {
    "plain": lambda v, old: [],
    "frozen": lambda v, old: ["model.freeze_backbone=true", "model.freeze_text=true"],
    "replay": lambda v, old: [f"data.replay_classes={old}", f"data.replay_threshold={v}"],
    "replay-agnostic": lambda v, old: [
        f"data.replay_classes={old}",
        f"data.replay_threshold={v}",
        "data.replay_nms=agnostic",
    ],
    "distill": lambda v, old: [f"loss.distill_classes={old}", f"loss.distill_weight={v}"],
    "distill+replay": lambda v, old: [
        f"loss.distill_classes={old}",
        f"loss.distill_weight={v}",
        f"data.replay_classes={old}",
        "data.replay_threshold=0.15",
        "data.replay_nms=agnostic",
    ],
}
#: The value a run takes without ``@VALUE``.
DEFAULTS = {"replay": "0.3", "replay-agnostic": "0.15", "distill": "1.0", "distill+replay": "1.0"}


def make_data(out: Path, seed: int, n_pre: int, n_ft: int, n_val: int) -> dict[str, str]:
    """Pretraining (old only), fine-tuning (all colors, new annotated) and val (all, split in two)."""
    from gdino.data.synthetic import SyntheticConfig, class_names, generate

    pre = out / "pretrain"
    if not (pre / "train.json").is_file():
        generate(
            pre,
            SyntheticConfig(
                num_images=n_pre, size=128, seed=seed, colors=OLD_COLORS, val_fraction=0.0, formats=("coco",)
            ),
        )
    allc = SyntheticConfig(
        num_images=n_ft + n_val,
        size=128,
        seed=seed + 1,
        colors=OLD_COLORS + NEW_COLORS,
        val_fraction=n_val / (n_ft + n_val),
        formats=("coco",),
    )
    ft = out / "finetune"
    if not (ft / "train.json").is_file():
        generate(ft, allc)
    names = class_names(allc)
    old = {i + 1 for i, n in enumerate(names) if n.split()[0] in OLD_COLORS}
    files = {"pretrain": str(pre / "train.json"), "images_pre": str(pre), "images_ft": str(ft)}
    for split, path, keep_sets in (
        ("train", ft / "train.json", {"new": False}),
        ("val", ft / "val.json", {"old": True, "new": False}),
    ):
        data = json.loads(path.read_text())
        for group, is_old in keep_sets.items():
            target = ft / f"{split}_{group}.json"
            target.write_text(json.dumps(class_subset(data, old, is_old)))
            files[f"{split}_{group}"] = str(target)
    files["old_names"] = json.dumps([n for i, n in enumerate(names) if i + 1 in old])
    return files


def class_subset(data: dict, old: set[int], is_old: bool) -> dict:
    """The COCO ``data`` with only the old (``is_old``) or only the new categories and their boxes."""
    cats = [c for c in data["categories"] if (c["id"] in old) == is_old]
    ids = {c["id"] for c in cats}
    return {**data, "categories": cats, "annotations": [a for a in data["annotations"] if a["category_id"] in ids]}


def run(cfg, label: str) -> tuple[object, float]:
    from gdino.train.build import build_trainer
    from gdino.train.trainer import close_writer

    c0 = time.process_time()
    trainer = build_trainer(cfg)
    trainer.fit()
    close_writer(trainer)
    logging.getLogger("bench").info("%s: %d steps", label, trainer.state.step)
    return trainer.model, time.process_time() - c0


def score(model, files: dict[str, str], size: int) -> dict[str, float]:
    from gdino.train.build import coco_validator

    out = {}
    for group in ("old", "new"):
        metrics = coco_validator(files[f"val_{group}"], files["images_ft"], size)(model)
        out[f"{group}_AP"], out[f"{group}_AP50"] = round(metrics["AP"], 4), round(metrics["AP50"], 4)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/gdino-forget")
    parser.add_argument("--pretrain-steps", type=int, default=1000)
    parser.add_argument("--finetune-steps", type=int, default=400)
    parser.add_argument("--finetune-lr", type=float, default=2e-4)
    parser.add_argument("--images", type=int, nargs=3, default=(600, 400, 100), metavar=("PRE", "FT", "VAL"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--runs",
        default="plain,frozen,replay,distill",
        help="comma-separated runs: plain, frozen, replay[@THRESHOLD], replay-agnostic[@THRESHOLD], distill[@WEIGHT], distill+replay[@WEIGHT] (replay-agnostic at 0.15)",
    )
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for every fine-tuning run"
    )
    parser.add_argument("--tag", default="", help="suffix of the run names (runs with other --set values)")
    parser.add_argument(
        "--keep-results",
        action="store_true",
        help="merge into OUT/result.json (runs of earlier calls) instead of replacing it",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import torch

    from gdino.train.config import load_config

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    files = make_data(out, 0, *args.images)
    common = [
        "eval.every_epochs=0",
        "checkpoint.every_epochs=0",
        "checkpoint.every_steps=0",
        "progress=false",
        "data.synthetic=0",
        "data.max_classes=8",
    ]
    result: dict[str, object] = {
        "bench": "forgetting",
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_start": round(os.getloadavg()[0], 1),
        "threads": args.threads,
        "torch": torch.__version__,
        "pretrain_steps": args.pretrain_steps,
        "finetune_steps": args.finetune_steps,
        "finetune_lr": args.finetune_lr,
        "images": args.images,
    }
    pre_dir = out / "run-pretrain"
    weights = pre_dir / "model.safetensors"
    cfg = load_config(
        "smoke",
        [
            *common,
            f"schedule.max_steps={args.pretrain_steps}",
            f"data.train={files['pretrain']}",
            f"data.train_images={files['images_pre']}",
        ],
    )
    if not weights.is_file():
        model, cpu = run(replace(cfg, output_dir=str(pre_dir)), "pretrain")
        result["pretrain_cpu_s"] = round(cpu, 1)
    from gdino.weights.load import load_model

    result["pretrained"] = score(load_model(weights), files, 128)
    ft = [
        *common,
        f"model.weights={weights}",
        "model.text_weights=null",
        "model.freeze_text=false",
        f"schedule.max_steps={args.finetune_steps}",
        "schedule.warmup_steps=20",
        f"optim.lr={args.finetune_lr}",
        f"data.train={files['train_new']}",
        f"data.train_images={files['images_ft']}",
    ]
    old_names = files["old_names"]
    extra = list(args.set)
    result["set"] = extra
    path = out / "result.json"
    for spec in [r for r in args.runs.split(",") if r]:
        name, _, value = spec.partition("@")
        if name not in VARIANTS:
            parser.error(f"--runs: unknown run {name!r}; choose from {', '.join(VARIANTS)}")
        overrides = VARIANTS[name](value or DEFAULTS.get(name, ""), old_names)
        key = (f"{name}@{value}" if value else name) + args.tag
        cfg = load_config("smoke", [*ft, *overrides, *extra])
        model, cpu = run(replace(cfg, output_dir=str(out / f"run-{key}")), key)
        result[key] = {
            **score(model, files, 128),
            "cpu_s": round(cpu, 1),
            "cpu_s_per_step": round(cpu / args.finetune_steps, 3),
        }
        result[key]["load_avg"] = round(os.getloadavg()[0], 1)
        result[key]["set"] = extra
    previous = json.loads(path.read_text()) if args.keep_results and path.is_file() else {}  # read late: parallel calls
    runs = {
        k: v for k, v in {**previous, **result}.items() if isinstance(v, dict) and "old_AP" in v and k != "pretrained"
    }
    base_old = result["pretrained"]["old_AP"]
    plain_new = runs.get("plain", {}).get("new_AP")
    for key, r in runs.items():
        r["old_kept"] = round(r["old_AP"] / base_old, 3) if base_old else None
        r["new_vs_plain"] = round(r["new_AP"] / plain_new, 3) if plain_new else None
    result = {**previous, **result, **runs}
    result["load_avg_end"] = round(os.getloadavg()[0], 1)
    line = json.dumps(result)
    path.write_text(line + "\n", encoding="utf-8")
    print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
