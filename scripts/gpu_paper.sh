#!/usr/bin/env bash
# The paper protocol on the GPU machine, in one command: `srlib kit run` (see srlib/kit.py).
#
# Here, first:  srlib kit assemble --parquet DIR --variants A     (DIR or $SRLIB_DATA_PARQUET; SRLIB_WEIGHTS_DIR)
# There:        bash scripts/gpu_paper.sh [srlib kit run options]   (device tool: carry ["kit"], timeout 600)
# Back here:    srlib kit unpack <files_at>/paper_results.tar.gz    (records -> results/paper/)
# Anywhere:     bash scripts/gpu_paper.sh --dry-run                 (CPU, smoke-sized, every step end to end)
#
# Environment: OUT (where the archive goes; the device tool sets it), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
exec "${PYTHON:-python3}" -m srlib kit run --out "${OUT:-results/gpu}" "$@"
