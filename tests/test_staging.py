"""Data and checkpoints cut into device-call pieces, put back together, and every damage found (CPU only)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from srlib.data import load_dataset
from srlib.orchestration.kit import partial, staging, transport
from srlib.orchestration.kit.staging import StagingError


def _files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    out = {}
    for name, size in (("plain_text/train.parquet", 2500), ("plain_text/test.parquet", 700), ("empty", 0)):
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        out[name] = path
    return out


def test_split_respects_piece_and_chunk_limits_and_reassembles_byte_for_byte(tmp_path):
    files = _files(tmp_path)
    manifest = staging.split(files, tmp_path / "stage", piece_bytes=1000, chunk_bytes=300, max_chunks=3)
    pieces = manifest["pieces"]
    assert [p["index"] for p in pieces] == list(range(1, len(pieces) + 1)) and len(pieces) >= 4  # 3200 B, <= 900 B each
    for p in pieces:
        folder = tmp_path / "stage" / str(p["index"])
        chunk_files = [f for f in folder.iterdir() if f.name != staging.PIECE_FILE]
        assert len(chunk_files) <= 3 and all(f.stat().st_size <= 300 for f in chunk_files)
        assert sum(f.stat().st_size for f in chunk_files) <= 1000
        assert "sha256 verified" in staging.verify_piece(folder)
    written = staging.reassemble(tmp_path / "stage", manifest, tmp_path / "out")
    assert sorted(written) == sorted(files)
    for name, path in files.items():
        assert (tmp_path / "out" / name).read_bytes() == path.read_bytes()


def test_a_missing_or_altered_piece_is_one_clear_error_and_writes_nothing(tmp_path):
    files = _files(tmp_path)
    manifest = staging.split(files, tmp_path / "stage", piece_bytes=1200)
    (tmp_path / "stage" / "2" / "000.bin").unlink()
    with pytest.raises(StagingError, match=r"piece 2 of 3 .* lacks 000.bin: copy piece 2"):
        staging.reassemble(tmp_path / "stage", manifest, tmp_path / "out")
    manifest = staging.split(files, tmp_path / "stage", piece_bytes=1200)
    for name in ("000.bin",):  # every single-byte change of a chunk is found
        path = tmp_path / "stage" / "1" / name
        data = bytearray(path.read_bytes())
        for i in range(0, len(data), 97):
            changed = bytearray(data)
            changed[i] ^= 1
            path.write_bytes(bytes(changed))
            with pytest.raises(StagingError, match="differs from the one staged"):
                staging.reassemble(tmp_path / "stage", manifest, tmp_path / "out")
        path.write_bytes(bytes(data))
    import shutil

    shutil.rmtree(tmp_path / "stage" / "3")
    with pytest.raises(StagingError, match=r"piece 3 of 3 .* is missing"):
        staging.reassemble(tmp_path / "stage", manifest, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # pieces are all checked before any file is written


def test_webp_transport_is_lossless_and_smaller(tmp_path):
    """The WebP copy decodes to the same pixels (content hash) as the PNG copy it was made from."""
    from test_kit import write_parquet

    source = write_parquet(tmp_path / "png")
    state = transport.transcode_webp(source, tmp_path / "webp", log=lambda *_: None)
    assert state["images"] == 90 and state["bytes"] < state["source_bytes"]
    png, webp = load_dataset(source), load_dataset(tmp_path / "webp")
    assert webp.identity["lossy"] is False
    assert webp.identity["content_sha256"] == png.identity["content_sha256"]
    import pyarrow.parquet as pq

    first = pq.read_table(next((tmp_path / "webp").rglob("train-*.parquet"))).column("img")[0].as_py()
    assert first["bytes"][:4] == b"RIFF" and first["bytes"][12:16] == b"VP8L" and first["path"].endswith(".webp")
    again = transport.transcode_webp(source, tmp_path / "webp", log=lambda *_: None)  # same source: reused
    assert again["encode_seconds"] == state["encode_seconds"]


def test_webp_bytes_round_trip_every_pixel_value():
    from PIL import Image

    pixels = np.arange(32 * 32 * 3 * 8, dtype=np.uint32).reshape(8, 32, 32, 3) % 256
    for image in pixels.astype(np.uint8):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        with Image.open(io.BytesIO(transport.webp_bytes(buffer.getvalue()))) as back:
            assert np.array_equal(np.asarray(back.convert("RGB")), image)


def test_a_checkpoint_ships_in_pieces_and_the_resumed_run_ends_as_an_uninterrupted_one(tmp_path, imagefolder,
                                                                                         monkeypatch, one_thread):
    """Stop after one epoch, ship the checkpoint in pieces, reassemble it on "another machine" (another folder),
    resume there: the same record and predictions as a run that was never stopped."""
    from srlib import train as train_mod
    from srlib.config import make_config
    from srlib.runs import CHECKPOINT, PREDICTIONS, record_dataset, run_dir
    from srlib.store import load_arrays

    config = make_config("original", "smoke", 0, epochs=3, width=4, train_size=40, test_size=20, batch_size=8)

    def run(out: Path) -> dict:
        return train_mod.train(config, out=out, data=str(imagefolder), device="cpu", progress=False,
                               log=lambda *_: None, deadline=1e18)

    whole = run(tmp_path / "whole")
    with monkeypatch.context() as m:  # "the deadline" after the first epoch
        m.setattr(train_mod, "_past_deadline", lambda deadline, epochs: len(epochs) >= 1)
        stopped = run(tmp_path / "gpu")
    assert stopped["status"] == "partial" and len(stopped["epochs"]) == 1
    key = record_dataset(stopped)
    source = run_dir(tmp_path / "gpu", "smoke", key, "original", 0)
    size = (source / CHECKPOINT).stat().st_size
    chunk = max(1, size // 5)
    seal = partial.ship(source, tmp_path / "gpu", tmp_path / "ship", chunk_bytes=chunk, max_chunks=2)
    assert len(seal["stage"]["pieces"]) >= 3 and seal["epochs_done"] == 1
    assert seal["run"] == f"smoke/{key}/original/seed0"
    kept = partial.keep(sorted((tmp_path / "ship").iterdir()), tmp_path / "results" / "partial")
    restored = partial.restore(kept, tmp_path / "later")  # another window: only the pieces, no run folder
    assert (restored / CHECKPOINT).read_bytes() == (source / CHECKPOINT).read_bytes()
    resumed = run(tmp_path / "later")
    assert resumed["status"] == "complete" and [r["from_epoch"] for r in resumed["resumes"]] == [1]
    timing = {"seconds", "eval_seconds", "train_images_per_s"}
    assert [{k: v for k, v in e.items() if k not in timing} for e in resumed["epochs"]] == \
        [{k: v for k, v in e.items() if k not in timing} for e in whole["epochs"]]
    a, _ = load_arrays(restored / PREDICTIONS)
    b, _ = load_arrays(run_dir(tmp_path / "whole", "smoke", key, "original", 0) / PREDICTIONS)
    assert np.array_equal(a["predictions"], b["predictions"])
    with pytest.raises(StagingError, match="one at a time"):
        other = tmp_path / "other" / "1"
        other.mkdir(parents=True)
        (other / partial.SEAL).write_text(json.dumps({"run": "smoke/sr_x4/seed0"}))
        (other / "piece.json").write_text(json.dumps({"index": 1}))
        partial.keep([other], tmp_path / "results" / "partial")


def _git(root: Path, *args: str) -> None:
    import os
    import subprocess

    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", *args], cwd=root, check=True, env=env, capture_output=True)


def test_a_kept_checkpoint_is_staged_back_from_git_history_once_it_left_the_working_tree(tmp_path):
    """Kept pieces are committed, then removed from the tree (each call sends the tree); `stage_back` reads the
    chunks from the commit that added them, checks them, and the restored checkpoint is byte for byte the one
    shipped."""
    from srlib.runs import CHECKPOINT, RECORD

    run = tmp_path / "gpu" / "paper" / "sr_x4" / "seed0"
    run.mkdir(parents=True)
    (run / CHECKPOINT).write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (run / RECORD).write_text(json.dumps({"status": "partial", "epochs": [{}] * 7,
                                          "data": {"dataset": {"content_sha256": "c8cc"}}}))
    seal = partial.ship(run, tmp_path / "gpu", tmp_path / "ship", chunk_bytes=1000, max_chunks=2)
    assert seal["epochs_done"] == 7 and len(seal["stage"]["pieces"]) == 3
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q")
    kept = partial.keep(sorted((tmp_path / "ship").iterdir()), repo / "results" / "paper" / "partial")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "partial run kept")
    for chunk in kept.rglob("*.bin"):
        _git(repo, "rm", "-q", str(chunk.relative_to(repo)))
    _git(repo, "commit", "-q", "-m", "chunks out of the tree")
    assert not list(kept.rglob("*.bin")) and (kept / partial.SEAL).is_file()
    staged = partial.stage_back(repo / "results" / "paper" / "partial", tmp_path / "kit" / "ckpt", repo, 10**6)
    assert staged["run"] == "paper/sr_x4/seed0"
    restored = partial.restore(tmp_path / "kit" / "ckpt", tmp_path / "later")
    assert (restored / CHECKPOINT).read_bytes() == (run / CHECKPOINT).read_bytes()
    assert json.loads((restored / RECORD).read_text())["status"] == "partial"  # the plan reads epochs left from it
    assert partial.stage_back(tmp_path / "none", tmp_path / "kit" / "ckpt", repo, 10**6) is None
    assert not (tmp_path / "kit" / "ckpt").exists()  # nothing kept: nothing staged, old pieces gone
