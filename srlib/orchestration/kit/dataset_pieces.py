"""The GPU kit's dataset: the study's lossless CIFAR-10, staged in pieces and checked by content hash.

Here (`stage_dataset`): the lossless Parquet copy, optionally as lossless WebP (kit.transport), cut into as few pieces
as fit one command each (kit.staging) under `kit/stage/N`. There (`unstage`): the pieces put back together, and the
decoded data must have the content hash the kit was assembled with, or the job stops before anything trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

from .layout import KitError
from .staging import reassemble, split

STAGE_DIR = "stage"
TRANSPORT_DIR = "transport"  # the WebP copy, made here; never copied to the GPU machine
TRANSPORTS = ("webp", "png")


def _parquet_files(folder: Path) -> dict[str, Path]:
    return {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*.parquet")) if p.is_file()}


def stage_dataset(parquet: Path, kit: Path, room_bytes: int, transport: str = "webp",
                  log: Callable[[str], None] = print) -> dict:
    """Stage `parquet` into `kit/stage/1..n` with each piece at most `room_bytes`; the manifest's `data` entry."""
    from ...data import load_dataset
    from .transport import transcode_webp

    if transport not in TRANSPORTS:
        raise KitError(f"unknown transport {transport!r}; choose {' or '.join(TRANSPORTS)}")
    if not parquet.is_dir() or not _parquet_files(parquet):
        raise KitError(f"Parquet dataset folder {parquet} does not exist or holds no *.parquet files; pass "
                       "--parquet DIR or set SRLIB_DATA_PARQUET (the lossless cifar10-png-parquet copy)")
    source = load_dataset(parquet).identity
    travel = parquet
    if transport == "webp":
        state = transcode_webp(parquet, kit / TRANSPORT_DIR, log)
        travel = kit / TRANSPORT_DIR
        copy = load_dataset(travel).identity
        if copy["content_sha256"] != source["content_sha256"]:
            raise KitError(f"the WebP copy decodes to other pixels ({copy['content_sha256'][:16]}... vs "
                           f"{source['content_sha256'][:16]}...); use --transport png")
    files = _parquet_files(travel)
    total = sum(p.stat().st_size for p in files.values())
    pieces = max(1, math.ceil(total / room_bytes))
    stage = split(files, kit / STAGE_DIR, math.ceil(total / pieces), label="data")
    log(f"[kit] data: {parquet.name} ({'lossy' if source['lossy'] else 'lossless'}, content sha256 "
        f"{source['content_sha256'][:16]}...) as {transport}, {total / 2**20:.1f} MiB in {len(stage['pieces'])} "
        f"piece(s) under {kit / STAGE_DIR}")
    return {"name": parquet.name, "content_sha256": source["content_sha256"], "lossy": source["lossy"],
            "train_count": source["train_count"], "test_count": source["test_count"], "transport": transport,
            "transport_state": state if transport == "webp" else None, "stage": stage}


def unstage(kit: Path, data: dict, target: Path, cache_dir: Path) -> Path:
    """Reassemble the staged data into `target` and check its content hash; returns `target`."""
    from ...data import load_dataset

    n = len(data["stage"]["pieces"])
    reassemble(kit / STAGE_DIR, data["stage"], target,
               hint=f"copy the folder {kit.name}/{STAGE_DIR}/{{index}} to the GPU machine in a command of its own "
                    f"before this one (piece {{index}} of {n}; the machine keeps what earlier commands left there)")
    found = load_dataset(target, cache_dir=cache_dir).identity["content_sha256"]
    if found != data["content_sha256"]:
        raise KitError(f"the staged data decodes to content sha256 {found[:16]}..., not the kit's "
                       f"{data['content_sha256'][:16]}... ({data['name']}); assemble the kit again")
    return target
