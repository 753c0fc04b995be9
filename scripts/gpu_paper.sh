#!/usr/bin/env bash
# The paper protocol on the GPU machine: `srlib kit probe|run|ship` (see srlib/orchestration/kit/).
#
# Here, first:  srlib kit assemble --parquet DIR     (DIR or $SRLIB_DATA_PARQUET: the lossless copy; SRLIB_WEIGHTS_DIR)
#               It prints the window's calls, each with its carry list and command, for example:
#   call 1  carry ["kit/stage/1"]                                  bash scripts/gpu_paper.sh probe
#   call 2  carry ["kit/manifest.json", "kit/weights", "kit/wheels", "kit/source.diff", "kit/stage/2"]
#                                                                  bash scripts/gpu_paper.sh run --window-left-s S
#   (S: the device seconds left in the window, from the device tool's status, when the call starts)
#   after a run that spans windows: bash scripts/gpu_paper.sh ship 2   (checkpoint piece 2 into $OUT)
# Back here:    srlib kit unpack <files_at>/paper_results.tar.gz [--pieces <files_at>/ckpt-*]
# Anywhere:     bash scripts/gpu_paper.sh --dry-run                (CPU, smoke-sized, every step end to end)
#
# Environment: OUT (where the files go; the device tool sets it), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
out="${OUT:-results/gpu}"
case "${1:-run}" in
  probe) shift; exec "${PYTHON:-python3}" -m srlib kit probe --out "$out" "$@" ;;
  ship) shift; exec "${PYTHON:-python3}" -m srlib kit ship "$@" --out "$out" ;;
  run) [ $# -gt 0 ] && shift; exec "${PYTHON:-python3}" -m srlib kit run --out "$out" "$@" ;;
  *) exec "${PYTHON:-python3}" -m srlib kit run --out "$out" "$@" ;;
esac
