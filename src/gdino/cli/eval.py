"""``gdino eval coco | lvis | odinw | refcoco | score``: argument parsing and printing only."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from gdino.cli.engine import absolute_if_file, add_engine_options, ray_options, worker_device_flag
from gdino.cli.options import add_model_options, load_detector, weights_name
from gdino.errors import GdinoError

logger = logging.getLogger("gdino.eval")


def register(subparsers) -> None:
    """Add ``gdino eval`` and its sub-commands."""
    p = subparsers.add_parser(
        "eval",
        help="evaluate on COCO, LVIS, ODinW or RefCOCO data, or score a detections file",
        description="Zero-shot evaluation with the official Grounding DINO protocol. See docs/eval.md.",
    )
    sub = p.add_subparsers(dest="eval_command", metavar="BENCHMARK")
    sub.required = True

    c = sub.add_parser("coco", help="COCO box AP on a COCO-format dataset")
    _dataset_args(c)
    _model_args(c)
    c.add_argument("--per-class", action="store_true", help="also print per-class AP")
    c.set_defaults(func=run_coco)

    lv = sub.add_parser("lvis", help="LVIS Fixed AP (federated rules) with chunked class prompts")
    _dataset_args(lv)
    _model_args(lv)
    lv.add_argument(
        "--topk-per-class",
        type=int,
        default=10_000,
        help="Fixed AP: detections kept per class over the dataset (default 10000)",
    )
    lv.add_argument("--per-class", action="store_true", help="also print per-class AP")
    lv.add_argument(
        "--classes-per-prompt",
        type=int,
        default=None,
        metavar="N",
        help="prompts of N classes, --topk pairs kept per prompt (mmdetection's chunked protocol: 40 for the "
        "published MM-Grounding-DINO and LLMDet LVIS numbers); default: as many as fit in 256 tokens",
    )
    lv.set_defaults(func=run_lvis)

    o = sub.add_parser("odinw", help="AP per dataset of an ODinW listing, with mean and median")
    o.add_argument("listing", help="YAML or JSON listing of COCO-format datasets (see docs/eval.md)")
    _model_args(o)
    o.set_defaults(func=run_odinw)

    r = sub.add_parser("refcoco", help="RefCOCO/+/g top-1 accuracy at IoU 0.5")
    _dataset_args(r)
    r.add_argument("--split", default=None, help="evaluate only refs of this split (val, testA, testB, test)")
    _model_args(r)
    r.set_defaults(func=run_refcoco)

    s = sub.add_parser("score", help="score a COCO results file (no model): COCO AP, or LVIS Fixed AP with --lvis")
    s.add_argument("--annotations", required=True, help="ground truth (COCO or LVIS json)")
    s.add_argument("--detections", required=True, help="COCO results json: [{image_id, category_id, bbox, score}]")
    s.add_argument("--lvis", action="store_true", help="LVIS federated Fixed AP instead of COCO AP")
    s.add_argument(
        "--topk-per-class", type=int, default=10_000, help="with --lvis: Fixed AP cap per class (default 10000)"
    )
    s.add_argument("--backend", default="pycocotools", choices=("pycocotools", "faster-coco-eval"), help="COCO scorer")
    s.add_argument("--out", metavar="DIR", help="write metrics.json and PR curves here")
    s.add_argument("--per-class", action="store_true", help="also print per-class AP")
    s.set_defaults(func=run_score)


def _dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--annotations", required=True, help="annotation json (COCO format; LVIS / refs variants for those commands)"
    )
    p.add_argument("--images", required=True, help="folder the images' file_name are relative to")


def _model_args(p: argparse.ArgumentParser) -> None:
    add_model_options(p)
    p.add_argument("--dtype", help="fp32 (default), fp16 or bf16")
    p.add_argument("--batch-size", type=int, help="images per forward pass (default 1)")
    p.add_argument("--image-size", type=int, metavar="N", help="shorter side (default: official 800, longer <= 1333)")
    p.add_argument("--topk", type=int, help="(query, class) pairs kept per image (default 300, official)")
    p.add_argument("--max-images", type=int, default=None, metavar="N", help="evaluate only the first N images")
    p.add_argument("--backend", default="pycocotools", choices=("pycocotools", "faster-coco-eval"), help="COCO scorer")
    p.add_argument("--out", metavar="DIR", help="write metrics.json, detections.json and PR curves into this folder")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_engine_options(p)


def _evaluator(args):
    from gdino.eval.evaluator import EVAL_DETECT, EvalOptions, Evaluator  # lazy: keeps gdino --help fast

    names = ("dtype", "batch_size", "image_size", "topk", "classes_per_prompt")
    given = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    options = EvalOptions.build(
        detect=EVAL_DETECT,
        **given,
        backend=args.backend,
        progress=not args.no_progress,
        max_images=args.max_images,
    )
    ray = ray_options(args)
    if ray is not None:
        from gdino.eval.ray_predict import RayPredictor  # lazy: keeps gdino --help fast

        predictor = RayPredictor(absolute_if_file(weights_name(args)), ray, worker_device_flag(args))
        return Evaluator(None, options, predictor=predictor), weights_name(args)
    return Evaluator(load_detector(args, options.detect).model, options), weights_name(args)


def _close(evaluator) -> None:
    if evaluator.predictor is not None:
        evaluator.predictor.close()


def _check_inputs(args) -> None:
    """Fail on missing files before the model loads."""
    if not Path(args.annotations).is_file():
        raise GdinoError(f"{args.annotations}: annotation file not found")
    if not Path(args.images).is_dir():
        raise GdinoError(f"{args.images}: images folder not found")


def _print_detection_result(result: dict, title: str, per_class: bool) -> None:
    from gdino.eval.report import per_class_table, summary_table  # lazy: keeps gdino --help fast

    summary = {k: v for k, v in result.items() if isinstance(v, float)}
    print(summary_table(summary, title=title))
    if per_class:
        print()
        print(per_class_table(result.get("per_class", {})))


def run_coco(args) -> int:
    from gdino.eval.annotations import load_coco_gt  # lazy: keeps gdino --help fast

    _check_inputs(args)
    load_coco_gt(args.annotations)  # bad files fail before the model loads
    evaluator, weights = _evaluator(args)
    try:
        result = evaluator.coco(args.annotations, args.images, out_dir=args.out)
    finally:
        _close(evaluator)
    _print_detection_result(result, f"COCO box AP (%), {weights}, {result['num_images']} images", args.per_class)
    return 0


def run_lvis(args) -> int:
    from gdino.eval.annotations import load_coco_gt  # lazy: keeps gdino --help fast
    from gdino.eval.lvis import check_lvis_fields

    _check_inputs(args)
    check_lvis_fields(load_coco_gt(args.annotations))
    evaluator, weights = _evaluator(args)
    try:
        result = evaluator.lvis(args.annotations, args.images, topk_per_class=args.topk_per_class, out_dir=args.out)
    finally:
        _close(evaluator)
    _print_detection_result(result, f"LVIS Fixed AP (%), {weights}, {result['num_images']} images", args.per_class)
    return 0


def run_odinw(args) -> int:
    from gdino.eval.odinw import load_listing, odinw_table_rows  # lazy: keeps gdino --help fast
    from gdino.eval.report import format_table, percent

    load_listing(args.listing)
    evaluator, weights = _evaluator(args)
    try:
        result = evaluator.odinw(args.listing, out_dir=args.out)
    finally:
        _close(evaluator)
    print(f"ODinW box AP (%), {weights}")
    print(format_table(odinw_table_rows(result["datasets"]), header=["dataset", "AP", "AP50"]))
    print(
        f"mean AP {percent(result['mean_AP'])}  median AP {percent(result['median_AP'])}  ({result['num_datasets']} datasets)"
    )
    return 0


def run_refcoco(args) -> int:
    from gdino.eval.refcoco import load_refs  # lazy: keeps gdino --help fast
    from gdino.eval.report import percent

    _check_inputs(args)
    if args.engine == "ray":
        raise GdinoError("eval refcoco runs in one process; --engine ray covers coco, lvis and odinw")
    load_refs(args.annotations, args.split)
    evaluator, weights = _evaluator(args)
    result = evaluator.refcoco(args.annotations, args.images, split=args.split, out_dir=args.out)
    split = f" split {args.split}" if args.split else ""
    print(
        f"RefCOCO top-1 accuracy @ IoU 0.5{split}, {weights}: {percent(result['accuracy'])} % "
        f"of {result['num_expressions']} expressions"
    )
    return 0


def run_score(args) -> int:
    from gdino.eval.annotations import load_coco_gt, load_detections  # lazy: keeps gdino --help fast

    gt = load_coco_gt(args.annotations)
    dets = load_detections(args.detections, gt)
    if args.lvis:
        from gdino.eval.lvis import score_lvis  # lazy: keeps gdino --help fast

        metrics = score_lvis(gt, dets, topk_per_class=args.topk_per_class, backend=args.backend)
        title = "LVIS Fixed AP (%)"
    else:
        from gdino.eval.coco import score_coco  # lazy: keeps gdino --help fast

        metrics = score_coco(gt, dets, backend=args.backend)
        title = "COCO box AP (%)"
    if args.out:
        from gdino.eval.evaluator import write_outputs  # lazy: keeps gdino --help fast

        write_outputs(metrics, dets, args.out, title.split(" (")[0])
    _print_detection_result(metrics.to_dict(), f"{title}, {len(dets)} detections", args.per_class)
    return 0
