"""A run that spans two GPU sessions: its checkpoint goes back in pieces, sealed, and comes again to resume.

A paper-protocol checkpoint (~89 MB) exceeds what a command brings back (kit.layout): `ship` cuts it into pieces of at
most SHIP_MAX_CHUNKS files, and the seal (`seal.json`: which run, after which epoch, every sha256) travels with piece
1. Here the pieces are kept under `results/paper/partial/` (never a result; one at a time); a later session gets them
like the data, and `restore` puts the checkpoint back where `srlib train` resumes it, after checking every hash.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from .staging import StagingError, reassemble, split

SEAL = "seal.json"
SHIP_CHUNK_BYTES = 15 * 2**20
SHIP_MAX_CHUNKS = 4  # + archive, timing log, piece.json and the seal: the 8 files the first command brings back


def ship(run_dir: Path, runs: Path, root: Path, chunk_bytes: int = SHIP_CHUNK_BYTES,
         max_chunks: int = SHIP_MAX_CHUNKS) -> dict:
    """Cut `run_dir`'s checkpoint (a run under `runs`) into piece folders `root/1`, `root/2`, ...; the seal goes
    to `root/1/seal.json` and is returned."""
    from ...runs import CHECKPOINT, RECORD

    checkpoint = run_dir / CHECKPOINT
    if not checkpoint.is_file():
        raise StagingError(f"{run_dir} has no {CHECKPOINT} to ship: the run finished or never checkpointed")
    record = json.loads((run_dir / RECORD).read_text()) if (run_dir / RECORD).is_file() else {}
    relative = run_dir.relative_to(runs).as_posix()
    # The partial record goes too: the next session's schedule reads the epochs left from it.
    files = {CHECKPOINT: checkpoint, **({RECORD: run_dir / RECORD} if (run_dir / RECORD).is_file() else {})}
    stage = split(files, root, chunk_bytes * max_chunks, chunk_bytes, max_chunks, label=f"checkpoint of {relative}")
    seal = {"run": relative, "epochs_done": len(record.get("epochs", [])),
            "content_sha256": record.get("data", {}).get("dataset", {}).get("content_sha256"), "stage": stage}
    (root / "1" / SEAL).write_text(json.dumps(seal, indent=1))
    return seal


def restore(root: Path, runs: Path) -> Path:
    """Reassemble the shipped checkpoint from `root`'s pieces into its run folder under `runs`; returns it."""
    path = root / "1" / SEAL
    if not path.is_file():
        raise StagingError(f"{path} is missing: piece 1 of the checkpoint (it carries the seal) did not arrive")
    seal = json.loads(path.read_text())
    target = runs / seal["run"]
    reassemble(root, seal["stage"], target)
    return target


def keep(pieces: list[Path], partial: Path) -> Path:
    """Pieces that came back (folders holding piece.json) into `partial/<run>/<index>/`, one partial at a time."""
    seal = next((json.loads((p / SEAL).read_text()) for p in pieces if (p / SEAL).is_file()), None)
    if seal is None:
        raise StagingError("none of the checkpoint pieces holds the seal (piece 1); bring back the files of the "
                           "training command")
    name = seal["run"].replace("/", "-")
    others = [p for p in partial.iterdir() if p.is_dir() and p.name != name] if partial.is_dir() else []
    if others:
        raise StagingError(f"{partial} already holds the partial run {others[0].name}; finish it first (one at a time)")
    target = partial / name
    for piece in pieces:
        index = json.loads((piece / "piece.json").read_text())["index"]
        shutil.copytree(piece, target / str(index), dirs_exist_ok=True)
    (target / SEAL).write_text(json.dumps(seal, indent=1))  # stays in the tree when the chunks leave it
    return target


def _chunk_bytes(path: Path, root: Path) -> bytes:
    """A kept chunk from the working tree, or, once it was committed and removed from the tree (every command
    copies the tree to the GPU machine, and 89 MB would not fit), from the commit that added it."""
    import subprocess

    if path.is_file():
        return path.read_bytes()
    relative = path.resolve().relative_to(root.resolve()).as_posix()
    added = subprocess.run(["git", "log", "--diff-filter=A", "-1", "--format=%H", "--", relative], cwd=root,
                           capture_output=True, text=True)
    commit = added.stdout.strip()
    if added.returncode != 0 or not commit:
        raise StagingError(f"{relative} is neither in the working tree nor in git history; the partial run cannot "
                           "resume: remove its folder and rerun it from the start")
    return subprocess.run(["git", "show", f"{commit}:{relative}"], cwd=root, capture_output=True, check=True).stdout


def stage_back(partial: Path, target: Path, root: Path, room_bytes: int) -> dict | None:
    """The kept partial run (if any) into piece folders `target/1..n` for the next session's commands; its seal."""
    seals = sorted(partial.glob(f"*/{SEAL}")) if partial.is_dir() else []
    if target.is_dir():
        shutil.rmtree(target)
    if not seals:
        return None
    seal = json.loads(seals[0].read_text())
    for piece in seal["stage"]["pieces"]:
        folder = target / str(piece["index"])
        folder.mkdir(parents=True)
        for chunk in piece["chunks"]:
            (folder / chunk["name"]).write_bytes(_chunk_bytes(seals[0].parent / str(piece["index"]) / chunk["name"],
                                                              root))
        if sum(c["length"] for c in piece["chunks"]) > room_bytes:
            raise StagingError(f"checkpoint piece {piece['index']} is larger than one command may copy "
                               f"({room_bytes} B)")
    (target / "1" / SEAL).write_text(json.dumps(seal, indent=1))
    reassemble(target, seal["stage"], target / "check")  # every chunk's hash, before anything travels
    shutil.rmtree(target / "check")
    return seal
