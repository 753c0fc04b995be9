#!/usr/bin/env bash
# The paper protocol on a remote GPU machine: `srlib kit probe|run|ship` (see srlib/orchestration/kit/).
#
# Here, first:  srlib kit assemble --parquet DIR     (DIR or $SRLIB_DATA_PARQUET: the lossless copy; SRLIB_WEIGHTS_DIR)
#               It prints the session's commands: for each, the kit paths to copy to the GPU machine (beside a copy
#               of this repository) and the command to run there, for example:
#   command 1: copy kit/stage/1                                         run: bash scripts/gpu_paper.sh probe
#   command 2: copy kit/manifest.json kit/weights kit/wheels kit/source.diff kit/stage/2
#                                                                       run: bash scripts/gpu_paper.sh run --window-left-s S
#   (S: the seconds you may still use the GPU machine in this session when the command starts)
#   after a run that spans sessions: bash scripts/gpu_paper.sh ship 2   (checkpoint piece 2 into $OUT)
# Back here:    bring back the files the command wrote to $OUT, then
#               srlib kit unpack paper_results.tar.gz [--pieces ckpt-*]
# Anywhere:     bash scripts/gpu_paper.sh --dry-run                (CPU, smoke-sized, every step end to end)
#
# Environment: OUT (the folder whose files you bring back; default results/gpu), PYTHON (default python3).
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
