"""AP of each precision path on a trained detector: PyTorch fp32 / bf16, and its ONNX export run by
ONNX Runtime (fp32, fp16, int8) and OpenVINO (f32, bf16), all through ``gdino eval coco``.

Everything goes through the command line a user runs: the exports with ``gdino export`` (fp32 and
fp16 from the checkpoint; int8 by quantizing the fp32 graph, ``gdino export FP32.onnx OUT.onnx
--dtype int8``), then one ``gdino eval coco`` per path with ``--out``, whose ``metrics.json`` gives
AP / AP50 / AP75. Exports already in ``--work`` are reused. Wall and CPU seconds of each eval
(children's user+sys time) are recorded too; they include start-up and scoring.

A small held-out set makes AP noisy, so the AP change of each path is also given with a paired
bootstrap over images (``--bootstrap`` resamples of the image set, the same resamples for every
path, scored from each eval's ``detections.json`` with gdino's COCO scorer): the 2.5-97.5 %
interval of AP(path) - AP(PyTorch fp32). A change inside that interval is not distinguishable from
which images happened to be held out.

    python benchmarks/precision_ap.py --weights /work/notes/smoke-model/model.safetensors \\
        --annotations /work/notes/smoke-model/data/val.json --images /work/notes/smoke-model/data \\
        --image-size 128 --work /tmp/precision-ap
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (eval flags, export the flags need: fp32 / fp16 / int8 / None for the checkpoint)
PATHS: dict[str, tuple[list[str], str | None]] = {
    "PyTorch fp32": (["--device", "cpu"], None),
    "PyTorch bf16 weights": (["--device", "cpu", "--dtype", "bf16"], None),
    "ONNX Runtime fp32 export": (["--runtime", "onnxruntime"], "fp32"),
    "ONNX Runtime fp16 export": (["--runtime", "onnxruntime"], "fp16"),
    "ONNX Runtime int8 (dynamic quantization)": (["--runtime", "onnxruntime"], "int8"),
    "OpenVINO f32": (["--runtime", "openvino"], "fp32"),
    "OpenVINO bf16": (["--runtime", "openvino", "--dtype", "bf16"], "fp32"),
    "OpenVINO on the int8 graph": (["--runtime", "openvino"], "int8"),
}


def gdino(*args: str) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run ``python -m gdino ARGS`` with this checkout's ``src``: (process, wall s, CPU s)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "gdino", *args], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode:
        raise SystemExit(f"gdino {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc, wall, cpu


def export(weights: str, work: Path, dtype: str) -> Path:
    """The export of ``dtype`` in ``work`` (made with ``gdino export`` when missing)."""
    out = work / f"model-{dtype}.onnx"
    if not out.exists():
        source = str(export(weights, work, "fp32")) if dtype == "int8" else weights
        _, wall, _ = gdino("export", source, str(out), "--dtype", dtype)
        print(f"exported {out} in {wall:.0f} s", file=sys.stderr, flush=True)
    return out


def _bootstrap(annotations: str, detections: dict[str, list[dict]], resamples: int, seed: int = 0) -> dict:
    """Paired bootstrap over images: per path, the 2.5 / 97.5 % quantiles of AP(path) - AP(first)."""
    from gdino.eval.coco import run_cocoeval

    gt = json.loads(Path(annotations).read_text())
    ids = [im["id"] for im in gt["images"]]
    anns: dict[int, list[dict]] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    dets = {name: _by_image(d) for name, d in detections.items()}
    rng = random.Random(seed)
    deltas: dict[str, list[float]] = {name: [] for name in dets}
    first = next(iter(dets))
    for _ in range(resamples):
        sample = [rng.choice(ids) for _ in ids]  # with replacement; repeated images get new ids
        images = [{**gt_image(gt, i), "id": k} for k, i in enumerate(sample, 1)]
        boxes = [
            {**a, "id": n}
            for n, a in enumerate((a | {"image_id": k} for k, i in enumerate(sample, 1) for a in anns.get(i, [])), 1)
        ]
        dataset = {"images": images, "annotations": boxes, "categories": gt["categories"]}
        aps = {}
        for name, per_image in dets.items():
            results = [d | {"image_id": k} for k, i in enumerate(sample, 1) for d in per_image.get(i, [])]
            ev = run_cocoeval(
                dataset, results, backend="faster-coco-eval", max_dets=(100,), image_ids=range(1, len(ids) + 1)
            )
            precision = ev.eval["precision"][:, :, :, 0, -1]
            aps[name] = float(precision[precision > -1].mean())
        for name in dets:
            deltas[name].append(aps[name] - aps[first])
    out = {}
    for name, values in deltas.items():
        values.sort()
        out[name] = (values[int(0.025 * (len(values) - 1))], values[int(0.975 * (len(values) - 1))])
    return out


def gt_image(gt: dict, image_id: int) -> dict:
    return next(im for im in gt["images"] if im["id"] == image_id)


def _by_image(dets: list[dict]) -> dict[int, list[dict]]:
    """The 100 best detections of each image (COCO AP's maxDets)."""
    out: dict[int, list[dict]] = {}
    for d in sorted(dets, key=lambda d: -d["score"]):
        if len(out.setdefault(d["image_id"], [])) < 100:
            out[d["image_id"]].append(d)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--annotations", required=True, help="held-out COCO json")
    p.add_argument("--images", required=True, help="folder of its images")
    p.add_argument("--image-size", default="800", help="shorter side for eval (the model's training size)")
    p.add_argument("--work", default="/tmp/gdino-precision-ap", help="exports and eval outputs (reused)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma list of: " + ", ".join(PATHS))
    p.add_argument("--reuse", action="store_true", help="reuse the evals of an earlier run in --work (re-score only)")
    p.add_argument("--bootstrap", type=int, default=200, help="paired bootstrap resamples over images (0: none)")
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    summary = work / "precision_ap.json"
    previous = {r["path"]: r for r in json.loads(summary.read_text())} if summary.exists() else {}
    rows = []
    for name in names:
        flags, dtype = PATHS[name]
        model = ["--weights", args.weights] if dtype is None else ["--onnx", str(export(args.weights, work, dtype))]
        out = work / ("eval-" + "".join(c if c.isalnum() else "-" for c in name.lower()))
        command = ["eval", "coco", *model, *flags, "--annotations", args.annotations, "--images", args.images]
        command += ["--image-size", args.image_size, "--no-progress", "--out", str(out)]
        if args.reuse and name in previous and (out / "metrics.json").exists():
            wall, cpu = previous[name]["wall_s"], previous[name]["cpu_s"]  # the earlier run's eval
        else:
            _, wall, cpu = gdino(*command)
        metrics = json.loads((out / "metrics.json").read_text())
        row = {"path": name, "command": "gdino " + " ".join(command), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        row.update({k: metrics[k] for k in ("AP", "AP50", "AP75")})
        row["detections"] = str(out / "detections.json")
        rows.append(row)
        print(f"{name}: AP {row['AP']:.4f} AP50 {row['AP50']:.4f} ({wall:.0f} s)", file=sys.stderr, flush=True)
    ref = next((r for r in rows if r["path"] == "PyTorch fp32"), None)
    intervals = {}
    if ref and args.bootstrap:
        ordered = [ref] + [r for r in rows if r is not ref]
        dets = {r["path"]: json.loads(Path(r["detections"]).read_text()) for r in ordered}
        intervals = _bootstrap(args.annotations, dets, args.bootstrap)
    for r in rows:
        r["AP_change_interval_95"] = intervals.get(r["path"])
    summary.write_text(json.dumps(rows, indent=1) + "\n")
    print(
        "| path | AP | AP50 | AP75 | AP change vs PyTorch fp32 (95% bootstrap interval) | AP50 change | AP75 change "
        "| eval wall s | CPU s |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = [f"{100 * (r[k] - ref[k]):+.1f}" if ref else "" for k in ("AP", "AP50", "AP75")]
        ci = r["AP_change_interval_95"]
        if ci and r is not ref:
            delta[0] += f" ({100 * ci[0]:+.1f} to {100 * ci[1]:+.1f})"
        print(
            f"| {r['path']} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['AP75']:.1f} | "
            f"{' | '.join(delta)} | {r['wall_s']} | {r['cpu_s']} |"
        )


if __name__ == "__main__":
    main()
