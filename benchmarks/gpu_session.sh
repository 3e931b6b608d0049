#!/usr/bin/env bash
# The GPU rows of benchmarks/RESULTS.md in one call, for a lent GPU machine that has PyTorch and
# transformers but no package registry (see the "GPU" section of RESULTS.md for the command).
# Everything is logged to $OUT/run.log; JSON results go next to it. Each part has its own time limit
# so that one slow part cannot take the others' time; the most wanted rows run first.
#
#   OUT=/tmp/gpu bash benchmarks/gpu_session.sh            # .gpu/whl: wheels to install first (optional)
#   PARTS="syncs forward" OUT=/tmp/gpu bash benchmarks/gpu_session.sh   # only these parts
#                                                          # .gpu/site: extra import path (optional)
set -u
OUT=${OUT:-/tmp/gpu-rows}
mkdir -p "$OUT"
LOG=$OUT/run.log
export PYTHONUNBUFFERED=1
EXTRA=$PWD/src
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl >>"$LOG" 2>&1
  EXTRA=$EXTRA:/tmp/site
fi
[ -d .gpu/site ] && EXTRA=$EXTRA:$PWD/.gpu/site
export PYTHONPATH=$EXTRA${PYTHONPATH:+:$PYTHONPATH}

part() { # part SECONDS NAME COMMAND...
  local limit=$1 name=$2
  shift 2
  echo "=== $name ($(date -u +%T), limit ${limit}s): $*" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | tail -n 25
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s" | tee -a "$LOG"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  lscpu | grep -E "Model name|^CPU\(s\)"
  python3 - <<'EOF'
import importlib.util, platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name(0), "bf16", torch.cuda.is_bf16_supported())
for name in ("transformers", "onnxruntime", "tensorrt", "fastapi", "uvicorn"):
    spec = importlib.util.find_spec(name)
    version = getattr(__import__(name), "__version__", "?") if spec else "missing"
    print(name, version)
if importlib.util.find_spec("onnxruntime"):
    import onnxruntime
    print("onnxruntime providers", onnxruntime.get_available_providers())
import gdino, gdino.model.grounding_dino  # the library imports on this torch
print("gdino", gdino.__version__ if hasattr(gdino, "__version__") else "ok")
EOF
} 2>&1 | tee -a "$LOG" || exit 1
python3 -c "import gdino.model.grounding_dino" || { echo "gdino does not import here; stopping" | tee -a "$LOG"; exit 1; }

want() { [[ " ${PARTS:-forward train-step-800 sync-test finetune-memory-800 serve train-step-512} " == *" $1 "* ]]; }
want syncs && part 90 syncs python3 benchmarks/gpu_syncs.py --size 800x1333 --json "$OUT/syncs.json"
want forward && part 200 forward python3 benchmarks/bench_gpu.py --size 800x1333 --batch 8 --repeats 10 --warmup 3 \
  --cpu-reference --detect --grid-sample --profile --json "$OUT/gpu_forward.json"
want train-step-800 && part 150 train-step-800 python3 benchmarks/bench_train_step.py --preset swin-t --device cuda \
  --size 800 --batch 2 --repeats 5 --warmup 2 --impl gdino,gdino-dn,transformers --out "$OUT/train_step_800.json"
want sync-test && part 60 sync-test python3 -m pytest -q -p no:randomly -p no:cacheprovider tests/test_train_syncs.py -k cuda
want finetune-memory-800 && part 150 finetune-memory-800 python3 benchmarks/bench_finetune_memory.py --device cuda \
  --size 800 --batches 1,2,4 --amps none,bf16 --steps 3 --warmup 2
want serve && part 120 serve python3 benchmarks/bench_serve.py --preset swin-t --device cuda --dtype fp16 --image-size 800 \
  --clients 16 --seconds 15 --warmup-seconds 5 --max-batch 1,8 --threads 4 --json "$OUT/serve.json"
want train-step-512 && part 100 train-step-512 python3 benchmarks/bench_train_step.py --preset swin-t --device cuda \
  --size 512 --batch 2 --repeats 5 --warmup 2 --impl gdino,gdino-dn,transformers --out "$OUT/train_step_512.json"
echo "=== done ($(date -u +%T))" | tee -a "$LOG"
