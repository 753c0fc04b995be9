"""Files cut into pieces that fit one device call each, put back together there, checked by sha256.

The device tool sends at most 64 MiB per call (the repository included) and returns at most 8 files of
16 MiB. Data (131 MiB of lossless CIFAR-10) and checkpoints (~89 MB) are larger, so they travel in
pieces: piece N is one folder (`<root>/N/`) of chunk files no larger than `chunk_bytes`, with a
`piece.json` naming what it holds. Each call carries only its own piece folder, never a parent: a
carried path replaces that path on the other machine, and a carried path absent here is deleted there.

The stage manifest (`split`'s return value) travels with the last piece inside the kit's manifest; it is
what `reassemble` trusts, chunk by chunk and file by file. A missing or altered piece stops with one
line that names the piece and what to carry.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

from ...errors import SrlibError

STAGE_SCHEMA = 1
PIECE_FILE = "piece.json"
CHUNK_BYTES = 16 * 2**20  # the largest file the device tool hands back from $OUT
_BLOCK = 2**20


class StagingError(SrlibError):
    pass


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_path(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


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
            for f in old.iterdir():
                f.unlink()
            old.rmdir()
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
                "files": {n: {"bytes": p.stat().st_size, "sha256": sha256_path(p)} for n, p in sorted(files.items())},
                "pieces": [{"index": i, "bytes": sum(c["length"] for c in chunks), "chunks": chunks}
                           for i, chunks in sorted(pieces.items())]}
    for piece in manifest["pieces"]:
        (root / str(piece["index"]) / PIECE_FILE).write_text(json.dumps(
            {"label": label, "index": piece["index"], "of": len(manifest["pieces"]), "chunks": piece["chunks"]},
            indent=1))
    return manifest


def piece_bytes_on_disk(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) if folder.is_dir() else 0


def _check_piece(folder: Path, piece: dict, total: int, label: str, hint: str) -> None:
    where = f"{label} piece {piece['index']} of {total} ({folder})"
    if not folder.is_dir():
        raise StagingError(f"{where} is missing: {hint.format(index=piece['index'])}")
    for chunk in piece["chunks"]:
        path = folder / chunk["name"]
        if not path.is_file():
            raise StagingError(f"{where} lacks {chunk['name']}: {hint.format(index=piece['index'])}")
        if path.stat().st_size != chunk["length"] or sha256_path(path) != chunk["sha256"]:
            raise StagingError(f"{where}: {chunk['name']} differs from the one staged (sha256 "
                               f"{chunk['sha256'][:16]}...); {hint.format(index=piece['index'])}")


def verify_piece(folder: Path) -> str:
    """Check one arrived piece against its own piece.json (the staging call's check); a one-line summary."""
    meta_path = folder / PIECE_FILE
    if not meta_path.is_file():
        raise StagingError(f"{folder} holds no {PIECE_FILE}: the piece did not arrive; carry exactly that folder")
    meta = json.loads(meta_path.read_text())
    _check_piece(folder, {"index": meta["index"], "chunks": meta["chunks"]}, meta["of"], meta["label"],
                 "carry that piece folder again")
    size = sum(c["length"] for c in meta["chunks"])
    return f"{meta['label']} piece {meta['index']} of {meta['of']}: {len(meta['chunks'])} chunk(s), " \
           f"{size / 2**20:.1f} MiB, sha256 verified"


def reassemble(root: Path, manifest: dict, target: Path,
               hint: str = "send piece {index} (its folder alone) before this call") -> dict[str, Path]:
    """Check every piece under `root` against `manifest`, then write the files into `target` (each written to
    a temporary name and renamed only after its sha256 matched). `hint` says what to do about a bad piece."""
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
        path = target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        with tmp.open("wb") as out:
            for _, chunk, _ in parts:
                out.write(chunk.read_bytes())
        if sha256_path(tmp) != expected["sha256"]:
            tmp.unlink()
            raise StagingError(f"{name} reassembled from the {label} pieces does not match its sha256 "
                               f"{expected['sha256'][:16]}...; assemble the kit again and resend every piece")
        os.replace(tmp, path)
        written[name] = path
    return written
