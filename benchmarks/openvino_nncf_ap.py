"""AP of OpenVINO's NNCF post-training int8 quantization on a trained detector (not wired into gdino).

The fp32 export of the trained model is run by gdino's OpenVINO runtime (``RuntimeModel``), so the
evaluation is gdino's own (``Evaluator.coco``: same prompts, preprocessing, decoding and scoring as
``gdino eval coco``). First the graph's inputs are recorded while the fp32 model evaluates
``--calib-images`` images of the *training* set (the calibration set); then ``nncf.quantize``
(``ModelType.TRANSFORMER``) quantizes the OpenVINO model with them, the runtime's compiled model is
replaced by the quantized one (``INFERENCE_PRECISION_HINT`` f32 or bf16 for what stays float) and
the held-out set is evaluated. Prints AP / AP50 / AP75 of the fp32 and the int8 model.

    python benchmarks/openvino_nncf_ap.py --onnx /tmp/precision-ap/model-fp32.onnx \\
        --train /work/notes/smoke-model/data/train.json --val /work/notes/smoke-model/data/val.json \\
        --images /work/notes/smoke-model/data --image-size 128
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--onnx", required=True, help="fp32 export of the trained model (gdino export)")
    p.add_argument("--train", required=True, help="COCO json whose first images calibrate")
    p.add_argument("--val", required=True, help="held-out COCO json")
    p.add_argument("--images", required=True, help="folder of the images of both")
    p.add_argument("--image-size", type=int, default=800)
    p.add_argument("--calib-images", type=int, default=32)
    p.add_argument("--hint", default="f32", choices=("f32", "bf16"), help="precision of what stays float")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    import nncf  # optional, not a gdino dependency
    import openvino as ov

    from gdino.eval.evaluator import EvalOptions, Evaluator
    from gdino.export.runtimes import RuntimeModel

    model = RuntimeModel(args.onnx, "openvino", threads=args.threads)
    options = EvalOptions.build(image_size=args.image_size, progress=False)
    session = model.session
    recorded: list[dict] = []
    run = session.run

    def record(feeds):
        recorded.append({k: v.copy() for k, v in feeds.items()})
        return run(feeds)

    session.run = record  # type: ignore[method-assign]
    Evaluator(model, EvalOptions.build(image_size=args.image_size, progress=False, max_images=args.calib_images)).coco(
        args.train, args.images
    )
    session.run = run  # type: ignore[method-assign]
    fp32 = Evaluator(model, options).coco(args.val, args.images)
    t = time.perf_counter()
    core = ov.Core()
    calib = [{k: f[k] for k in session.inputs} for f in recorded]
    quantized = nncf.quantize(
        core.read_model(args.onnx), nncf.Dataset(calib), model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calib)
    )
    prep = time.perf_counter() - t
    config = {"INFERENCE_PRECISION_HINT": args.hint, "INFERENCE_NUM_THREADS": args.threads}
    session._ov = core.compile_model(quantized, "CPU", config)
    int8 = Evaluator(model, options).coco(args.val, args.images)
    rows = {
        "OpenVINO f32": fp32,
        f"OpenVINO NNCF int8 (PTQ, {len(calib)} calibration forwards, rest {args.hint})": int8,
    }
    print(f"nncf.quantize: {prep:.0f} s")
    print("| path | AP | AP50 | AP75 |\n|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {100 * r['AP']:.1f} | {100 * r['AP50']:.1f} | {100 * r['AP75']:.1f} |")
    print(json.dumps({k: {m: v[m] for m in ("AP", "AP50", "AP75")} for k, v in rows.items()}))


if __name__ == "__main__":
    main()
