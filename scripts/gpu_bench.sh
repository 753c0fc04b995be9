#!/usr/bin/env bash
# GPU benchmark, then as much of the paper protocol as fits, in about 8 minutes on one GPU.
#
#   bash scripts/gpu_bench.sh             # on the GPU machine, from the repository root
#   bash scripts/gpu_bench.sh --dry-run   # anywhere: CPU only, tiny settings, the same steps end to end
#
# Steps (everything kept goes to $OUT, the folder whose files you bring back):
#   1. install missing Python packages from the copied wheels (the GPU image has torch, not spandrel);
#   2. use the copied data / weights when present: SRLIB_DATA from cache/gpu/cifar10-jpeg.tar.gz,
#      SRLIB_WEIGHTS_DIR=cache/gpu/weights (otherwise the bench uses synthetic images and skips SR);
#   3. python -m srlib bench --json $OUT/bench_gpu.json (baseline vs srlib, training and SR upscaling);
#   4. with data: benchmarks/accuracy_check.py --json $OUT/accuracy_gpu.json (fp32 vs bf16 on short runs);
#   5. with data: srlib train --variant original --profile paper --compile --deadline <what is left>: it stops
#      after the last epoch that fits and writes its record (status "partial", or "complete" after 45 epochs),
#      kept as $OUT/paper_original_record.json (+ paper_original_predictions.npz when complete).
#
# Records name their code by git commit; a copy without .git can say where it came from with
# SRLIB_SOURCE_COMMIT=<commit> and SRLIB_SOURCE_DIFF=<file holding `git diff HEAD`> (see srlib.provenance).
#
# Prepare on a machine with internet (cache/ is git-ignored: copy cache/gpu to the GPU machine beside the repository):
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
  BENCH_ARGS="${BENCH_ARGS:---px 32 --steps 1 --images 2}"
  ACCURACY_ARGS=(--width 8 --train-size 20 --test-size 10 --epochs 1 --device cpu)
  TRAIN_ARGS=(--profile smoke --epochs 1 --width 4 --train-size 20 --test-size 10 --device cpu)
  PROFILE=smoke
else
  BENCH_ARGS="${BENCH_ARGS:---steps 50 --images 256}"
  ACCURACY_ARGS=(--device cuda)
  TRAIN_ARGS=(--profile paper --compile --device cuda)
  PROFILE=paper
fi

# 1. packages
# find_spec, not import: importing torch and spandrel alone takes seconds
if ! "$PYTHON" -c "import importlib.util as u, sys
sys.exit(any(u.find_spec(m) is None for m in ('spandrel', 'safetensors', 'einops', 'tqdm', 'torchvision')))"; then
  if [ -d "$GPU_CACHE/wheels" ]; then
    log "installing the copied wheels from $GPU_CACHE/wheels"
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

if [ -z "${SRLIB_DATA:-}" ]; then
  log "no CIFAR-10 copied to this machine; skipping the accuracy check and the $PROFILE run"; exit 0
fi

# 4. does the fast path (bf16 autocast, channels_last) change accuracy? A few short trainings.
log "benchmarks/accuracy_check.py ${ACCURACY_ARGS[*]}"
timeout --signal=INT "$(left)" "$PYTHON" "$ROOT/benchmarks/accuracy_check.py" --json "$OUT/accuracy_gpu.json" \
  "${ACCURACY_ARGS[@]}" 2>&1 | tee "$OUT/accuracy.log" || log "accuracy check stopped (exit ${PIPESTATUS[0]})"

# 5. the paper protocol, as far as the remaining budget goes: --deadline stops it after the last epoch that
# fits and still writes record.json (status "partial"); timeout is only the backstop for an epoch that overruns.
SECONDS_LEFT=$(( $(left) - 20 ))  # leave time to copy the results
if [ "$SECONDS_LEFT" -lt 30 ]; then log "no time left for the $PROFILE run"; exit 0; fi
log "srlib train --variant original ${TRAIN_ARGS[*]} --deadline $SECONDS_LEFT"
timeout --signal=INT "$(( SECONDS_LEFT + 10 ))" "$PYTHON" -m srlib train --variant original "${TRAIN_ARGS[@]}" \
  --deadline "$SECONDS_LEFT" --out "$WORK/runs" 2>&1 | tee "$OUT/train_original.log" \
  || log "training stopped (exit ${PIPESTATUS[0]}; 3 = partial: stopped at the deadline)"
"$PYTHON" - "$WORK/runs" "$PROFILE" "$OUT" <<'EOF' 2>&1 | tee -a "$OUT/gpu_bench.log"
import shutil, sys
from pathlib import Path

from srlib.runs import PREDICTIONS, RECORD, load_record

runs, profile, out = sys.argv[1:4]
record = load_record(runs, profile, "original", 0)
if record is None:
    print("no record.json: the first epoch did not finish in time")
else:
    print(f"record: {record['status']}, {len(record['epochs'])} of {record['config']['epochs']} epochs")
    run = Path(record["_path"]).parent
    for name, kept in ((RECORD, "paper_original_record.json"), (PREDICTIONS, "paper_original_predictions.npz")):
        if (run / name).is_file():  # a partial run has no predictions
            shutil.copy(run / name, Path(out) / kept)
EOF
log "done; results in $OUT"
