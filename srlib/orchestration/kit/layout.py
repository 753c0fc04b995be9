"""What a kit is: its file names, the size limits of the trip to the GPU machine and back, and which SR
weights the variants it holds need."""

from __future__ import annotations

from collections.abc import Iterable

from ...config import VARIANTS
from ...errors import SrlibError

KIT_SCHEMA = 1
MANIFEST = "manifest.json"
DIFF = "source.diff"
ARCHIVE = "paper_results.tar.gz"
TIMING_LOG = "timing.log"
CKPT_DIR = "ckpt"  # a shipped checkpoint's pieces staged back: kit/ckpt/<piece>
SHIP_DIR = "ship"  # on the GPU machine: work/ship/<piece>, the checkpoint cut for the trip back
# The GPU machine these limits were set for takes at most 64 MiB of files per command (the repository's files
# included) and hands back at most 8 files of 16 MiB each.
SEND_LIMIT_BYTES = 64 * 2**20
RETURN_FILE_LIMIT_BYTES = 16 * 2**20
MANIFEST_ROOM_BYTES = 256 * 1024  # the manifest lists every chunk; room for it in the last command
LOG_KEEP_BYTES = 256 * 1024  # tail of each training log that goes into the archive


class KitError(SrlibError):
    pass


def sr_checkpoints(variants: Iterable[str]) -> list:
    """The registered SR checkpoints (srlib.upscale.SRCheckpoint) the SR variants among `variants` need."""
    from ...upscale import sr_checkpoint

    entries = [sr_checkpoint(VARIANTS[v].sr_model, VARIANTS[v].scale) for v in variants if VARIANTS[v].is_sr]
    return sorted({e.file: e for e in entries}.values(), key=lambda e: (e.scale, e.model))
