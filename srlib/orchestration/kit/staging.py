"""Files cut into pieces that fit one command on the GPU machine each, put back together there, checked by sha256.

Data (131 MiB) and checkpoints (~89 MB) exceed what one command copies or brings back (kit.layout), so they travel in
pieces: piece N is one folder (`<root>/N/`) of chunk files, with a `piece.json` naming what it holds. Each command
copies only its own piece folder, never a parent, so the pieces earlier commands copied stay on the GPU machine. The
stage manifest (`split`'s return value) travels inside the kit's manifest; `reassemble` trusts it, chunk by chunk and
file by file, and a missing or altered piece stops with one line that names the piece and what to copy.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

from ...errors import SrlibError
from ...store import atomic_write_bytes, sha256_bytes, sha256_file
from .layout import RETURN_FILE_LIMIT_BYTES

STAGE_SCHEMA = 1
PIECE_FILE = "piece.json"
CHUNK_BYTES = RETURN_FILE_LIMIT_BYTES  # a checkpoint's chunks come back from the GPU machine as files


class StagingError(SrlibError):
    pass


def _slices(files: dict[str, Path], piece_bytes: int, chunk_bytes: int,
            max_chunks: int | None) -> Iterator[tuple[int, str, int, int]]:
    """(piece, file, offset, length) in file order, filling each piece before the next; a chunk never spans
    two files, so a piece is readable without the others."""
    piece, used, chunks = 1, 0, 0
    for name in sorted(files):
        size, offset = files[name].stat().st_size, 0
        while offset < size or (size == 0 and offset == 0):
            if used >= piece_bytes or (max_chunks is not None and chunks >= max_chunks):
                piece, used, chunks = piece + 1, 0, 0
            length = min(chunk_bytes, size - offset, piece_bytes - used)
            yield piece, name, offset, length
            used, chunks, offset = used + length, chunks + 1, offset + length
            if size == 0:
                break


def split(files: dict[str, Path], root: Path, piece_bytes: int, chunk_bytes: int = CHUNK_BYTES,
          max_chunks: int | None = None, label: str = "data") -> dict:
    """Cut `files` (relative name -> path) into piece folders `root/1`, `root/2`, ... of at most `piece_bytes`
    (and `max_chunks` chunk files) each; returns the stage manifest. Old piece folders under `root` go."""
    if piece_bytes < 1 or chunk_bytes < 1:
        raise StagingError(f"piece_bytes ({piece_bytes}) and chunk_bytes ({chunk_bytes}) must be positive")
    root.mkdir(parents=True, exist_ok=True)
    for old in root.iterdir():
        if old.is_dir() and old.name.isdigit():
            shutil.rmtree(old)
    pieces: dict[int, list[dict]] = {}
    for piece, name, offset, length in _slices(files, piece_bytes, chunk_bytes, max_chunks):
        with files[name].open("rb") as handle:
            handle.seek(offset)
            data = handle.read(length)
        chunk = f"{len(pieces.get(piece, [])):03d}.bin"
        folder = root / str(piece)
        folder.mkdir(exist_ok=True)
        (folder / chunk).write_bytes(data)
        pieces.setdefault(piece, []).append({"name": chunk, "file": name, "offset": offset, "length": length,
                                             "sha256": sha256_bytes(data)})
    manifest = {"schema": STAGE_SCHEMA, "label": label,
                "files": {n: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for n, p in sorted(files.items())},
                "pieces": [{"index": i, "bytes": sum(c["length"] for c in chunks), "chunks": chunks}
                           for i, chunks in sorted(pieces.items())]}
    for piece in manifest["pieces"]:
        (root / str(piece["index"]) / PIECE_FILE).write_text(json.dumps(
            {"label": label, "index": piece["index"], "of": len(manifest["pieces"]), "chunks": piece["chunks"]},
            indent=1))
    return manifest


def _check_piece(folder: Path, piece: dict, total: int, label: str, hint: str) -> None:
    where, fix = f"{label} piece {piece['index']} of {total} ({folder})", hint.format(index=piece["index"])
    if not folder.is_dir():
        raise StagingError(f"{where} is missing: {fix}")
    for chunk in piece["chunks"]:
        path = folder / chunk["name"]
        if not path.is_file():
            raise StagingError(f"{where} lacks {chunk['name']}: {fix}")
        if path.stat().st_size != chunk["length"] or sha256_file(path) != chunk["sha256"]:
            raise StagingError(f"{where}: {chunk['name']} differs from the one staged (sha256 "
                               f"{chunk['sha256'][:16]}...); {fix}")


def verify_piece(folder: Path) -> str:
    """Check one arrived piece against its own piece.json (the staging command's check); a one-line summary."""
    meta_path = folder / PIECE_FILE
    if not meta_path.is_file():
        raise StagingError(f"{folder} holds no {PIECE_FILE}: the piece did not arrive; copy exactly that folder to "
                           "the GPU machine")
    meta = json.loads(meta_path.read_text())
    _check_piece(folder, {"index": meta["index"], "chunks": meta["chunks"]}, meta["of"], meta["label"],
                 "copy that piece folder to the GPU machine again")
    size = sum(c["length"] for c in meta["chunks"])
    return f"{meta['label']} piece {meta['index']} of {meta['of']}: {len(meta['chunks'])} chunk(s), " \
           f"{size / 2**20:.1f} MiB, sha256 verified"


def reassemble(root: Path, manifest: dict, target: Path,
               hint: str = "copy piece {index} (its folder alone) in a command before this one") -> dict[str, Path]:
    """Check every piece under `root` against `manifest`, then write the files into `target` (each one whole,
    only after its sha256 matched). `hint` says what to do about a bad piece."""
    label, pieces = manifest["label"], manifest["pieces"]
    for piece in pieces:
        _check_piece(root / str(piece["index"]), piece, len(pieces), label, hint)
    by_file: dict[str, list[tuple[int, Path, int]]] = {}
    for piece in pieces:
        for chunk in piece["chunks"]:
            by_file.setdefault(chunk["file"], []).append(
                (chunk["offset"], root / str(piece["index"]) / chunk["name"], chunk["length"]))
    written = {}
    for name, expected in manifest["files"].items():
        parts = sorted(by_file.get(name, []), key=lambda p: p[0])
        if sum(p[2] for p in parts) != expected["bytes"]:
            raise StagingError(f"the {label} stage does not cover {name} ({sum(p[2] for p in parts)} of "
                               f"{expected['bytes']} bytes); assemble the kit again")
        data = b"".join(chunk.read_bytes() for _, chunk, _ in parts)  # ~100 MB at most: one data file
        if sha256_bytes(data) != expected["sha256"]:
            raise StagingError(f"{name} reassembled from the {label} pieces does not match its sha256 "
                               f"{expected['sha256'][:16]}...; assemble the kit again and copy every piece again")
        atomic_write_bytes(target / name, lambda f, data=data: f.write(data))
        written[name] = target / name
    return written
