"""A denser lossless copy of a Parquet image dataset for the trip to the GPU: the same rows, each image re-encoded
as lossless WebP: on CIFAR-10 about 78% of the PNG copy's 131 MiB (book/guide/gpu.md), two commands' worth of data
instead of three. WebP lossless restores every RGB value, so the copy keeps the source's content hash (srlib.data),
which the kit checks here after encoding and there after reassembly.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path

from ...store import atomic_write_bytes, sha256_file, write_json

WEBP_OPTIONS = {"lossless": True, "quality": 50, "method": 2}  # effort: measured smallest and fastest on CIFAR
TRANSPORT_FILE = "transport.json"


def webp_bytes(png: bytes) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as image:
        rgb = image.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, format="WEBP", **WEBP_OPTIONS)
    return out.getvalue()


def _transcode_file(source: Path, target: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(source)
    column = "img" if "img" in table.column_names else "image"
    images = table.column(column).combine_chunks()
    encoded = [webp_bytes(b) for b in images.field("bytes").to_pylist()]
    paths = [None if p is None else str(Path(p).with_suffix(".webp")) for p in images.field("path").to_pylist()]
    struct = pa.StructArray.from_arrays([pa.array(encoded, pa.binary()), pa.array(paths, pa.string())],
                                        fields=list(images.type))
    table = table.set_column(table.column_names.index(column), column, struct)
    # Encoded images do not compress further; row groups as the Hub writes them.
    atomic_write_bytes(target, lambda f: pq.write_table(table, f, compression="none", row_group_size=10_000))
    return len(encoded)


def transcode_webp(source: Path, target: Path, log: Callable[[str], None] = print) -> dict:
    """`target` as a lossless-WebP copy of the Parquet dataset in `source` (same layout and rows); reused when
    it was made from the same source files with the same options."""
    files = sorted(p.relative_to(source) for p in source.rglob("*.parquet") if p.is_file())
    sources = {str(f): sha256_file(source / f) for f in files}
    state_path = target / TRANSPORT_FILE
    if state_path.is_file():
        state = json.loads(state_path.read_text())
        if (state.get("sources") == sources and state.get("options") == WEBP_OPTIONS
                and all((target / f).is_file() for f in sources)):
            return state
    for old in target.rglob("*.parquet") if target.is_dir() else []:
        old.unlink()
    started, images = time.perf_counter(), 0
    for f in files:
        images += _transcode_file(source / f, target / f)
    seconds = time.perf_counter() - started
    state = {"format": "webp-lossless", "options": WEBP_OPTIONS, "sources": sources, "images": images,
             "encode_seconds": seconds, "source_bytes": sum((source / f).stat().st_size for f in files),
             "bytes": sum((target / f).stat().st_size for f in files)}
    write_json(state_path, state)
    log(f"[kit] lossless WebP copy: {images:,} images in {seconds:.0f} s, {state['bytes'] / 2**20:.1f} MiB "
        f"({state['bytes'] / state['source_bytes']:.0%} of the source's {state['source_bytes'] / 2**20:.1f} MiB)")
    return state
