"""Time one training step (forward, loss, backward, clip, optimizer) of gdino and of transformers'
GroundingDinoForObjectDetection, same shapes, same batch, same process; gdino's step broken down.

Both models get a random init of the same shape (gdino's preset turned into a transformers config
by ``gdino.weights.hf_config.config_to_hf``, with ``auxiliary_loss`` on so that transformers computes
the same loss set: last layer + every intermediate layer + encoder proposals, focal / L1 / GIoU).
transformers has no denoising queries, so gdino runs once with denoising off (the like-for-like
row) and once with the preset's denoising on. Steps alternate between the implementations
(gdino, transformers, gdino, ...) so load changes hit both; the median of ``--repeats`` steps after
``--warmup`` is reported.

gdino's breakdown (wall time of one more step, CPU, no profiler): forward per part (text encoder,
backbone + input projections, encoder, query selection and decoder, denoising queries), the
criterion split into matching (cost matrices, scipy's Hungarian) and loss terms, backward per part
(from the first gradient reaching a part's output to its last parameter gradient: the text and
image branches overlap in the fusion layers, so these intervals may overlap), clip + optimizer.

    python benchmarks/bench_train_step.py --preset smoke --size 128 --batch 4
    python benchmarks/bench_train_step.py --preset swin-t --size 512 --batch 2 --repeats 3
    python benchmarks/bench_train_step.py --preset swin-t --size 512 --batch 2 --amp bf16 --isolate

``--amp bf16`` runs the forward and the loss of every implementation under the same autocast (the
backward follows it), as ``gdino train`` does with ``optim.amp=bf16``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import replace
from typing import Any

import torch

CAPTION = "red circle . blue square . green star . yellow triangle ."


# ----------------------------------------------------------------------------- the batch
def make_batch(tokenizer: Any, batch: int, size: int, boxes_per_image: int, seed: int = 0):
    """Random pixels and ``boxes_per_image`` boxes per image over the caption's four classes."""
    from gdino.data.collate import Batch
    from gdino.data.targets import Target
    from gdino.text.tokenize import tokenize

    gen = torch.Generator().manual_seed(seed)
    ids = tokenize(tokenizer, [CAPTION], 256).input_ids[0].tolist()
    dot = tokenizer.convert_tokens_to_ids(".")
    spans, start = [], 1
    for i, t in enumerate(ids):
        if t == dot:
            spans.append((start, i))
            start = i + 1
    targets = []
    for b in range(batch):
        labels = torch.arange(boxes_per_image) % len(spans)
        centers = 0.2 + 0.6 * torch.rand((boxes_per_image, 2), generator=gen)
        sizes = 0.1 + 0.2 * torch.rand((boxes_per_image, 2), generator=gen)
        token_map = torch.zeros((boxes_per_image, 256), dtype=torch.bool)
        for k, lab in enumerate(labels.tolist()):
            token_map[k, spans[lab][0] : spans[lab][1]] = True
        targets.append(
            Target(
                torch.cat((centers, sizes), 1),
                token_map,
                labels,
                caption=CAPTION,
                image_id=b,
                size=(size, size),
                orig_size=(size, size),
            )
        )
    pixels = torch.randn((batch, 3, size, size), generator=gen)
    mask = torch.ones((batch, size, size), dtype=torch.bool)
    return Batch(pixels, mask, targets, [CAPTION] * batch)


# ----------------------------------------------------------------------------- timing helpers
class Clock:
    """Wall-time sums per label; ``wrap`` times a module-level function by name."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.sums, self.calls = device, defaultdict(float), defaultdict(int)

    def now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    @contextmanager
    def part(self, label: str):
        t0 = self.now()
        try:
            yield
        finally:
            self.sums[label] += self.now() - t0
            self.calls[label] += 1

    def wrap(self, module: Any, name: str, label: str) -> Callable[[], None]:
        original = getattr(module, name)

        def timed(*args, **kwargs):
            with self.part(label):
                return original(*args, **kwargs)

        setattr(module, name, timed)
        return lambda: setattr(module, name, original)


def backward_intervals(parts: dict[str, list[torch.nn.Module]], clock: Clock) -> tuple[dict[str, list], Callable]:
    """Per part: time the first gradient reaches one of its outputs and its last parameter gradient."""
    marks: dict[str, list] = {k: [None, None] for k in parts}
    handles = []

    def on_output(label):
        def hook(grad):
            t = clock.now()
            if marks[label][0] is None or t < marks[label][0]:
                marks[label][0] = t

        return hook

    def on_param(label):
        def hook(p):
            t = clock.now()
            if marks[label][1] is None or t > marks[label][1]:
                marks[label][1] = t

        return hook

    def forward_hook(label):
        def hook(mod, args, out):
            for t in out if isinstance(out, (tuple, list)) else [out]:
                if isinstance(t, torch.Tensor) and t.requires_grad:
                    t.register_hook(on_output(label))

        return hook

    for label, modules in parts.items():
        for m in modules:
            handles.append(m.register_forward_hook(forward_hook(label)))
            for p in m.parameters():
                if p.requires_grad:
                    handles.append(p.register_post_accumulate_grad_hook(on_param(label)))
    return marks, lambda: [h.remove() for h in handles]


def forward_parts(model: Any, clock: Clock) -> Callable[[], None]:
    """Forward wall time of the encoder and decoder modules (pre/post hooks)."""
    handles, starts = [], {}
    for label, m in (("forward: encoder", model.transformer.encoder), ("forward: decoder", model.transformer.decoder)):

        def pre(mod, args, label=label):
            starts[label] = clock.now()

        def post(mod, args, out, label=label):
            clock.sums[label] += clock.now() - starts.pop(label)
            clock.calls[label] += 1

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    return lambda: [h.remove() for h in handles]


# ----------------------------------------------------------------------------- gdino
class GdinoStep:
    def __init__(
        self,
        preset: str,
        tokenizer: Any,
        denoising: bool,
        dn_number: int,
        device: torch.device,
        freeze_text: bool,
        amp: str = "none",
    ) -> None:
        from gdino.config import get_preset
        from gdino.model.grounding_dino import build_model
        from gdino.train.criterion import SetCriterion
        from gdino.train.denoising import DenoisingConfig
        from gdino.train.optim import apply_freezing, build_optimizer
        from gdino.train.sections import ModelSection, OptimSection
        from gdino.train.trainer import TrainForward

        self.amp = amp
        torch.manual_seed(0)
        self.model = build_model(get_preset(preset), tokenizer).to(device).train()
        apply_freezing(self.model, ModelSection(freeze_text=freeze_text))
        dn = DenoisingConfig(dn_number, 0.5, 1.0, self.model.config.inverse_sigmoid_eps) if denoising else None
        self.forward = TrainForward(self.model, dn)
        self.criterion = SetCriterion()
        self.optim_cfg = OptimSection()
        self.optimizer = build_optimizer(self.model, self.optim_cfg)
        self.params = [p for g in self.optimizer.param_groups for p in g["params"]]

    def __call__(self, batch: Any, clock: Clock | None = None) -> float:
        clock = clock or Clock(batch.pixel_values.device)
        with clock.part("forward (all)"), autocast(batch.pixel_values.device, self.amp):
            output, meta, text_len = self.forward(batch.pixel_values, batch.pixel_mask, batch.captions, batch.targets)
        with clock.part("criterion (all)"), autocast(batch.pixel_values.device, self.amp):
            losses = self.criterion(output, batch.targets, meta, text_len=text_len)
        self.optimizer.zero_grad(set_to_none=True)
        with clock.part("backward (all)"):
            losses["total"].backward()
        with clock.part("clip + optimizer"):
            torch.nn.utils.clip_grad_norm_(self.params, self.optim_cfg.grad_clip)
            self.optimizer.step()
        return float(losses["total"].detach())

    def breakdown(self, batch: Any, device: torch.device) -> dict[str, Any]:
        """One step with every part timed (see the module docstring)."""
        import gdino.train.criterion as crit
        import gdino.train.forward as forward_mod
        import gdino.train.trainer as trainer_mod
        from gdino.train import matcher

        clock = Clock(device)
        undo = [forward_parts(self.model, clock)]
        m = self.model
        undo.append(_time_method(m, "encode_text", "forward: text encoder (BERT + feat_map)", clock))
        undo.append(_time_method(m, "encode_image", "forward: backbone + input projections", clock))
        # the module that calls build_denoising (TrainForward's, earlier the trainer's)
        caller = forward_mod if hasattr(forward_mod, "build_denoising") else trainer_mod
        undo.append(clock.wrap(caller, "build_denoising", "forward: denoising queries (build)"))
        for name, label in LOSS_FUNCTIONS:
            if hasattr(crit, name):
                undo.append(clock.wrap(crit, name, label))
        if hasattr(matcher, "linear_sum_assignment"):
            undo.append(clock.wrap(matcher, "linear_sum_assignment", "criterion: of which scipy Hungarian"))
        parts = {
            "backward: decoder + heads": [m.transformer.decoder, m.bbox_embed],
            "backward: encoder": [m.transformer.encoder],
            "backward: backbone + input projections": [m.backbone, m.input_proj],
            "backward: text encoder": [m.bert, m.feat_map],
        }
        marks, remove = backward_intervals(parts, clock)
        try:
            start = clock.now()
            self(batch, clock)
            total = clock.now() - start
        finally:
            remove()
            for u in undo:
                u()
        rows = dict(clock.sums)
        for label, (a, b) in marks.items():
            if a is not None and b is not None:
                rows[label] = max(0.0, b - a)
        fwd = rows["forward (all)"]
        named = sum(v for k, v in rows.items() if k.startswith("forward: ") and "denoising" not in k)
        rows["forward: rest (query selection, positions, heads)"] = (
            fwd - named - rows.get("forward: denoising queries (build)", 0.0)
        )
        return {
            "step_s": round(total, 4),
            "parts": {
                k: {"s": round(v, 4), "pct": round(100 * v / total, 1), "calls": clock.calls.get(k, 1)}
                for k, v in rows.items()
            },
        }


#: criterion-level functions timed by name when the criterion module has them
LOSS_FUNCTIONS = (
    ("hungarian_match", "criterion: matching (costs + assignment)"),
    ("flatten_matches", "criterion: flat match indices"),
    ("padded_token_maps", "criterion: class targets"),
    ("matched_token_targets", "criterion: class targets"),
    ("token_focal_loss", "criterion: class loss (focal)"),
    ("focal_loss_per_set", "criterion: class loss (focal)"),
    ("box_losses_per_set", "criterion: box losses (L1 + GIoU)"),
    ("gather_matched_boxes", "criterion: gather matched boxes"),
    ("box_losses", "criterion: box losses (L1 + GIoU)"),
    ("global_num_boxes", "criterion: num_boxes"),
)


def autocast(device: torch.device, amp: str) -> Any:
    """Both implementations' forward and loss under the same autocast (``--amp``), as ``gdino
    train`` runs them with ``optim.amp`` (gdino's losses and matching cast back to float32 inside)."""
    if amp == "none":
        return nullcontext()
    return torch.autocast(device.type, dtype={"bf16": torch.bfloat16, "fp16": torch.float16}[amp])


def _time_method(obj: Any, name: str, label: str, clock: Clock) -> Callable[[], None]:
    original = getattr(obj, name)

    def timed(*args, **kwargs):
        with clock.part(label):
            return original(*args, **kwargs)

    setattr(obj, name, timed)
    return lambda: delattr(obj, name)


# ----------------------------------------------------------------------------- transformers
class HFStep:
    def __init__(self, preset: str, tokenizer: Any, device: torch.device, freeze_text: bool, amp: str = "none") -> None:
        from transformers import GroundingDinoConfig, GroundingDinoForObjectDetection

        from gdino.config import get_preset
        from gdino.text.tokenize import tokenize
        from gdino.weights.hf_config import config_to_hf

        # transformers has no calibrated logits (a scale and a bias on the class logits, the
        # smoke preset's) nor shifted text positions: its model gets the plain dot product and the
        # original positions, the same shapes and cost otherwise
        gd = get_preset(preset)
        data = config_to_hf(replace(gd, calibrated_logits=False, text=replace(gd.text, position_offset=0)))
        self.amp = amp
        data.pop("gdino", None)
        data.pop("architectures", None)
        cfg = GroundingDinoConfig.from_dict({**data, "auxiliary_loss": True})
        torch.manual_seed(0)
        self.model = GroundingDinoForObjectDetection(cfg).to(device).train()
        if freeze_text:
            self.model.model.text_backbone.requires_grad_(False)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-4, fused=True)
        text = tokenize(tokenizer, [CAPTION], 256)
        self.input_ids = text.input_ids.to(device)
        self.attention_mask = text.attention_mask.to(device)

    def __call__(self, batch: Any, clock: Clock | None = None) -> float:
        clock = clock or Clock(batch.pixel_values.device)
        b = len(batch)
        labels = [{"class_labels": t.labels, "boxes": t.boxes} for t in batch.targets]
        with clock.part("forward + loss"), autocast(batch.pixel_values.device, self.amp):
            out = self.model(
                pixel_values=batch.pixel_values,
                pixel_mask=batch.pixel_mask.long(),
                input_ids=self.input_ids.expand(b, -1),
                attention_mask=self.attention_mask.expand(b, -1),
                labels=labels,
            )
        self.optimizer.zero_grad(set_to_none=True)
        with clock.part("backward"):
            out.loss.backward()
        with clock.part("clip + optimizer"):
            torch.nn.utils.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], 0.1)
            self.optimizer.step()
        return float(out.loss.detach())


# ----------------------------------------------------------------------------- main
def paired_ratios(ours: list[float], reference: list[float]) -> dict[str, Any]:
    """Median, min and max of ``ours[i] / reference[i]`` over the repeats (steps run back to back)."""
    ratios = [a / b for a, b in zip(ours, reference)]
    return {
        "median": round(statistics.median(ratios), 3),
        "min": round(min(ratios), 3),
        "max": round(max(ratios), 3),
        "each": [round(r, 3) for r in ratios],
    }


def isolated(args: argparse.Namespace) -> None:
    """Run every implementation in a subprocess of its own and merge the results."""
    import subprocess
    import sys
    import tempfile

    merged: dict[str, Any] = {}
    for impl in args.impl.split(","):
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
            out = f.name
        cmd = [
            sys.executable,
            __file__,
            "--preset",
            args.preset,
            "--size",
            str(args.size),
            "--batch",
            str(args.batch),
            "--boxes",
            str(args.boxes),
            "--dn-number",
            str(args.dn_number),
            "--repeats",
            str(args.repeats),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
            "--impl",
            impl,
            "--device",
            args.device,
            "--amp",
            args.amp,
            "--out",
            out,
        ] + (["--keep-freed-memory"] if args.keep_freed_memory else [])
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        with open(out, encoding="utf-8") as f:
            one = json.load(f)
        os.unlink(out)
        for key, value in one.items():
            if isinstance(value, dict) and key in merged and isinstance(merged[key], dict):
                merged[key].update(value)
            elif key == "load_avg_1m":
                merged.setdefault(key, []).append(value)
            else:
                merged.setdefault(key, value)
    if "transformers" in merged.get("median_s", {}):
        ref = merged["median_s"]["transformers"]
        merged["ratio_vs_transformers"] = {k: round(v / ref, 3) for k, v in merged["median_s"].items()}
    merged["isolated"] = True
    text = json.dumps(merged, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="smoke", help="'smoke' (= small-minilm) or a gdino model preset")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--boxes", type=int, default=3, help="boxes per image")
    parser.add_argument("--dn-number", type=int, default=0, help="denoising queries (0: the train preset's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--impl", default="gdino,gdino-dn,transformers")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--amp",
        default="none",
        choices=("none", "bf16", "fp16"),
        help="autocast forward and loss of every implementation (as optim.amp in gdino train)",
    )
    parser.add_argument(
        "--isolate",
        action="store_true",
        help="each implementation in its own process, one after the other (for large models)",
    )
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help="glibc keeps freed blocks for reuse (gdino.train.host_memory, as `gdino train` does), for every implementation",
    )
    parser.add_argument("--out", default=None, help="also write the JSON result here")
    args = parser.parse_args()
    if args.isolate:
        return isolated(args)
    if args.keep_freed_memory:
        from gdino.train.host_memory import keep_freed_memory

        keep_freed_memory()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    from gdino.text.tokenizer import load_tokenizer
    from gdino.train.build import minilm_dir
    from gdino.train.presets import get_train_preset

    model_preset = "small-minilm" if args.preset == "smoke" else args.preset
    train_preset = get_train_preset("smoke" if args.preset == "smoke" else "coco-finetune")
    dn_number = args.dn_number or train_preset.loss.dn_number
    freeze_text = train_preset.model.freeze_text
    tokenizer = load_tokenizer(minilm_dir())
    batch = make_batch(tokenizer, args.batch, args.size, args.boxes).to(device)
    impls = args.impl.split(",")
    steps: dict[str, Any] = {}
    for impl in impls:
        if impl == "transformers":
            steps[impl] = HFStep(model_preset, tokenizer, device, freeze_text, args.amp)
        else:
            steps[impl] = GdinoStep(
                model_preset, tokenizer, impl == "gdino-dn", dn_number, device, freeze_text, args.amp
            )
    times: dict[str, list[float]] = {k: [] for k in steps}
    cpu: dict[str, list[float]] = {k: [] for k in steps}
    clocks: dict[str, Clock] = {k: Clock(device) for k in steps}
    for i in range(args.warmup + args.repeats):
        for impl, step in steps.items():
            c0, t0 = time.process_time(), time.perf_counter()
            step(batch, clocks[impl] if i >= args.warmup else None)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if i >= args.warmup:
                times[impl].append(time.perf_counter() - t0)
                cpu[impl].append(time.process_time() - c0)
    result: dict[str, Any] = {
        "bench": "train_step",
        "preset": model_preset,
        "size": args.size,
        "batch": args.batch,
        "boxes": args.boxes,
        "dn_number": dn_number,
        "freeze_text": freeze_text,
        "device": str(device),
        "amp": args.amp,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "keep_freed_memory": args.keep_freed_memory,
        "max_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "repeats": args.repeats,
        "median_s": {k: round(statistics.median(v), 4) for k, v in times.items()},
        "cpu_s": {k: round(statistics.median(v), 4) for k, v in cpu.items()},
        "phases_mean_s": {
            k: {p: round(s / max(1, args.repeats), 4) for p, s in c.sums.items()} for k, c in clocks.items()
        },
    }
    result["steps_cpu_s"] = {k: [round(x, 3) for x in v] for k, v in cpu.items()}
    if "transformers" in times:
        ref = statistics.median(times["transformers"])
        result["ratio_vs_transformers"] = {k: round(statistics.median(v) / ref, 3) for k, v in times.items()}
        # each repeat's steps ran minutes apart at most: the ratio of a pair cancels most of the
        # drift of a shared machine's speed; the median over the pairs is the robust number
        result["paired_cpu_ratio"] = {
            k: paired_ratios(v, cpu["transformers"]) for k, v in cpu.items() if k != "transformers"
        }
    for impl in ("gdino", "gdino-dn"):
        if impl in steps:
            result[f"breakdown_{impl}"] = steps[impl].breakdown(batch, device)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
