#!/usr/bin/env bash
# GPU benchmark, then as much of the paper protocol as fits, in about 8 minutes on one H100.
#
#   bash scripts/gpu_bench.sh             # on the GPU machine, from the repository root
#   bash scripts/gpu_bench.sh --dry-run   # anywhere: CPU only, tiny settings, the same steps end to end
#
# Steps (everything kept goes to $OUT):
#   1. install missing Python packages from carried wheels (the GPU image has torch, not spandrel);
#   2. use carried data / weights when present: SRLIB_DATA from cache/gpu/cifar10-jpeg.tar.gz,
#      SRLIB_WEIGHTS_DIR=cache/gpu/weights (otherwise the bench uses synthetic images and skips SR);
#   3. python -m srlib bench --json $OUT/bench_gpu.json (baseline vs srlib, training and SR upscaling);
#   4. srlib train --variant original --profile paper --compile, stopped (SIGINT) when the time budget
#      is spent; finished epochs are checkpointed, their numbers are written to $OUT/paper_original_epochs.json
#      (and the full record.json + predictions.npz are copied if all 45 epochs finish).
#
# Prepare on a machine with internet (cache/ is git-ignored; pass it with the device tool's carry ["cache/gpu"]):
#   mkdir -p cache/gpu/weights
#   .venv/bin/pip download --no-deps -d cache/gpu/wheels spandrel safetensors einops tqdm
#   #   (if the GPU image lacks torchvision, add the torchvision wheel matching its torch, e.g. 0.26 for 2.11)
#   tar czf cache/gpu/cifar10-jpeg.tar.gz -C ../shared/data cifar10-jpeg     # ~20 MB, full CIFAR-10 (JPEG)
#   cp ../shared/weights/dctlsa_x2.safetensors ../shared/weights/dctlsa_x4.safetensors cache/gpu/weights/
#
# Environment: OUT (default results/gpu), PYTHON (default python), BUDGET_S (seconds for the whole script,
# default 470), GPU_CACHE (default cache/gpu), BENCH_ARGS (default "--steps 50 --images 256").
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT="$PWD"
DRY_RUN=0
[ "${1:-}" = "--dry-run" ] && DRY_RUN=1
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$ROOT/results/gpu}"
BUDGET_S="${BUDGET_S:-470}"
GPU_CACHE="${GPU_CACHE:-$ROOT/cache/gpu}"
STARTED=$(date +%s)
mkdir -p "$OUT"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # srlib from this checkout, installed or not
export SRLIB_CACHE_DIR="${SRLIB_CACHE_DIR:-$WORK/cache}"

log() { echo "[gpu_bench $(( $(date +%s) - STARTED ))s] $*" | tee -a "$OUT/gpu_bench.log"; }
left() { local s=$(( BUDGET_S - ($(date +%s) - STARTED) )); echo $(( s < 1 ? 1 : s )); }

if [ "$DRY_RUN" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""  # the dry run checks the script, not the GPU
  BENCH_ARGS="${BENCH_ARGS:---px 16 --steps 1 --images 2}"
  TRAIN_ARGS=(--profile smoke --epochs 1 --width 4 --train-size 20 --test-size 10 --device cpu)
  PROFILE=smoke
else
  BENCH_ARGS="${BENCH_ARGS:---steps 50 --images 256}"
  TRAIN_ARGS=(--profile paper --compile --device cuda)
  PROFILE=paper
fi

# 1. packages
# find_spec, not import: importing torch and spandrel alone takes seconds
if ! "$PYTHON" -c "import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ('spandrel', 'safetensors', 'einops', 'tqdm', 'torchvision')))"; then
  if [ -d "$GPU_CACHE/wheels" ]; then
    log "installing carried wheels from $GPU_CACHE/wheels"
    "$PYTHON" -m pip install -q --no-index --find-links "$GPU_CACHE/wheels" spandrel safetensors einops tqdm
  else
    log "spandrel/safetensors/tqdm/torchvision missing and no $GPU_CACHE/wheels; see the header"; exit 1
  fi
fi

# 2. data and weights
if [ -z "${SRLIB_DATA:-}" ] && [ -f "$GPU_CACHE/cifar10-jpeg.tar.gz" ]; then
  tar xzf "$GPU_CACHE/cifar10-jpeg.tar.gz" -C "$WORK"
  export SRLIB_DATA="$WORK/cifar10-jpeg"
fi
if [ -z "${SRLIB_WEIGHTS_DIR:-}" ] && [ -d "$GPU_CACHE/weights" ]; then export SRLIB_WEIGHTS_DIR="$GPU_CACHE/weights"; fi
log "data: ${SRLIB_DATA:-none (synthetic images, no paper run)}; weights: ${SRLIB_WEIGHTS_DIR:-default}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  | tee -a "$OUT/gpu_bench.log" || true

# 3. the benchmark (its own time is bounded by its settings; the budget still caps it)
log "srlib bench $BENCH_ARGS (versions and device: see provenance in bench_gpu.json)"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
timeout --signal=INT "$(left)" "$PYTHON" -m srlib bench --json "$OUT/bench_gpu.json" $BENCH_ARGS 2>&1 \
  | tee "$OUT/bench.log" || log "bench stopped early (exit ${PIPESTATUS[0]})"

# 4. the paper protocol, as far as the remaining budget goes
if [ -z "${SRLIB_DATA:-}" ] && [ "$DRY_RUN" = 0 ]; then
  log "no CIFAR-10 carried; skipping the paper run"; exit 0
fi
SECONDS_LEFT=$(( $(left) - 15 ))  # leave time to copy the results
if [ "$SECONDS_LEFT" -lt 30 ]; then log "no time left for the $PROFILE run"; exit 0; fi
log "srlib train --variant original ${TRAIN_ARGS[*]} for at most ${SECONDS_LEFT}s"
timeout --signal=INT "$SECONDS_LEFT" "$PYTHON" -m srlib train --variant original "${TRAIN_ARGS[@]}" \
  --out "$WORK/runs" 2>&1 | tee "$OUT/train_original.log" || log "training stopped (exit ${PIPESTATUS[0]})"
RUN="$WORK/runs/$PROFILE/original/seed0"
if [ -f "$RUN/record.json" ]; then
  cp "$RUN/record.json" "$OUT/paper_original_record.json"
  cp "$RUN/predictions.npz" "$OUT/paper_original_predictions.npz"
fi
if [ -f "$RUN/checkpoint.pt" ] || [ -f "$RUN/record.json" ]; then
  # The per-epoch numbers of an unfinished run live in its checkpoint; keep those, not the 90 MB weights.
  "$PYTHON" - "$RUN" "$OUT/paper_original_epochs.json" <<'EOF'
import json, sys
from pathlib import Path

run, target = Path(sys.argv[1]), sys.argv[2]
if (run / "record.json").is_file():
    record = json.loads((run / "record.json").read_text())
    state = {"config": record["config"], "epochs": record["epochs"], "complete": True}
else:
    import torch  # only here: importing it takes seconds

    try:  # newer checkpoints carry a sha256 line that srlib.store.load_torch checks and strips
        from srlib.store import load_torch
    except ImportError:
        load_torch = None
    path = run / "checkpoint.pt"
    saved = load_torch(path) if load_torch else torch.load(path, map_location="cpu", weights_only=False)
    state = {"config": saved["config"], "epochs": saved["epochs"], "complete": False}
Path(target).write_text(json.dumps(state, indent=2) + "\n")
print(f"{len(state['epochs'])} epoch(s) kept in {target}")
EOF
fi
log "done; results in $OUT"
