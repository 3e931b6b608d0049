"""AP of each precision path on a trained detector: PyTorch fp32 / bf16, and its ONNX export run by
ONNX Runtime (fp32, fp16, int8) and OpenVINO (f32, bf16), all through ``gdino eval coco``.

Everything goes through the command line a user runs: the exports with ``gdino export`` (fp32 and
fp16 from the checkpoint; int8 by quantizing the fp32 graph, ``gdino export FP32.onnx OUT.onnx
--dtype int8``), then one ``gdino eval coco`` per path with ``--out``, whose ``metrics.json`` gives
AP / AP50 / AP75. Exports already in ``--work`` are reused. Wall and CPU seconds of each eval
(children's user+sys time) are recorded too; they include start-up and scoring.

    python benchmarks/precision_ap.py --weights /work/notes/smoke-model/model.safetensors \\
        --annotations /work/notes/smoke-model/data/val.json --images /work/notes/smoke-model/data \\
        --image-size 128 --work /tmp/precision-ap
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: name -> (eval flags, export the flags need: fp32 / fp16 / int8 / None for the checkpoint)
PATHS: dict[str, tuple[list[str], str | None]] = {
    "PyTorch fp32": (["--device", "cpu"], None),
    "PyTorch bf16 (autocast)": (["--device", "cpu", "--dtype", "bf16"], None),
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="the trained checkpoint")
    p.add_argument("--annotations", required=True, help="held-out COCO json")
    p.add_argument("--images", required=True, help="folder of its images")
    p.add_argument("--image-size", default="800", help="shorter side for eval (the model's training size)")
    p.add_argument("--work", default="/tmp/gdino-precision-ap", help="exports and eval outputs (reused)")
    p.add_argument("--paths", default=",".join(PATHS), help="comma list of: " + ", ".join(PATHS))
    args = p.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    rows = []
    for name in names:
        flags, dtype = PATHS[name]
        model = ["--weights", args.weights] if dtype is None else ["--onnx", str(export(args.weights, work, dtype))]
        out = work / ("eval-" + "".join(c if c.isalnum() else "-" for c in name.lower()))
        command = ["eval", "coco", *model, *flags, "--annotations", args.annotations, "--images", args.images]
        command += ["--image-size", args.image_size, "--no-progress", "--out", str(out)]
        _, wall, cpu = gdino(*command)
        metrics = json.loads((out / "metrics.json").read_text())
        row = {"path": name, "command": "gdino " + " ".join(command), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1)}
        row.update({k: metrics[k] for k in ("AP", "AP50", "AP75")})
        rows.append(row)
        print(f"{name}: AP {row['AP']:.4f} AP50 {row['AP50']:.4f} ({wall:.0f} s)", file=sys.stderr, flush=True)
    (work / "precision_ap.json").write_text(json.dumps(rows, indent=1) + "\n")
    ref = next((r for r in rows if r["path"] == "PyTorch fp32"), None)
    print("| path | AP | AP50 | AP75 | AP change vs PyTorch fp32 | AP50 change | AP75 change | eval wall s | CPU s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        delta = [f"{100 * (r[k] - ref[k]):+.1f}" if ref else "" for k in ("AP", "AP50", "AP75")]
        print(
            f"| {r['path']} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['AP75']:.1f} | "
            f"{' | '.join(delta)} | {r['wall_s']} | {r['cpu_s']} |"
        )


if __name__ == "__main__":
    main()
