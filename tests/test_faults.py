"""Fault injection: kills, two writers, damaged caches and checkpoints, a full disk, a diverging loss.

Kills are real SIGKILLs of `srlib train` processes; the reruns must end with exactly the record
of an uninterrupted run (CPU, deterministic mode, one thread, so the floats are reproducible).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_imagefolder

from srlib import data_sources, store
from srlib.cli import main
from srlib.config import make_config
from srlib.data import dataset_key, load_dataset
from srlib.errors import CacheError, DiskFullError, TrainingError
from srlib.runs import run_dirs
from srlib.store import load_arrays, load_torch, save_arrays
from srlib.train import train
from srlib.upscale import upscale_cached

# 120 training images in batches of 16: 8 steps per epoch, long enough to kill a process mid-run.
SETTINGS = ["--profile", "smoke", "--epochs", "3", "--lr-step", "2", "--width", "8", "--train-size", "120",
            "--test-size", "30", "--batch-size", "16", "--device", "cpu"]
STEPS_PER_EPOCH = 8
TIMING = {"seconds", "eval_seconds", "train_images_per_s", "train_seconds", "mean_train_images_per_s"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}

# Runs the real CLI in a child process after installing one fault (SRLIB_FAULT); the parent checks the wreckage.
RUNNER = """
import os, signal, sys
import numpy as np, torch
import srlib.train as train_module
from srlib.cli import main

fault = os.environ.get("SRLIB_FAULT", "")
if fault.startswith("kill-at-step:"):  # SIGKILL ourselves before the Nth training step (counted over epochs)
    target, seen, normalise = int(fault.split(":")[1]), [0], train_module.normalise
    def counting(x, channels_last):
        if not torch.is_inference_mode_enabled():
            seen[0] += 1
            if seen[0] == target:
                os.kill(os.getpid(), signal.SIGKILL)
        return normalise(x, channels_last)
    train_module.normalise = counting
elif fault == "kill-in-cache-write":  # SIGKILL ourselves halfway through writing a cache file
    def half_written(f, **arrays):
        f.write(b"half of a cache file" * 1000)
        f.flush()
        os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)
    np.savez = half_written
sys.exit(main(sys.argv[1:]))
"""


def run_dir(out: Path, config) -> Path:
    """The one folder of `config`'s run under `out`, whatever the data's key in its path."""
    [directory] = run_dirs(out, config.profile, variant=config.variant, seed=config.seed)
    return directory


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_imagefolder(tmp_path_factory.mktemp("faults") / "imagefolder", train_per_class=12, test_per_class=3)


def _args(tree: Path, out: Path, cache: Path) -> list[str]:
    return ["train", "--variant", "original", *SETTINGS, "--data", str(tree), "--out", str(out),
            "--cache-dir", str(cache)]


def _start(args: list[str], log: Path, fault: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", RUNNER, *args] if fault else [sys.executable, "-m", "srlib", *args]
    with open(log, "ab") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**ENV, "SRLIB_FAULT": fault or ""})


def _run(args: list[str], log: Path, fault: str | None = None, timeout: float = 300) -> int:
    proc = _start(args, log, fault)
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:  # timed out: leave no stray trainer behind
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(tree: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    root = tmp_path_factory.mktemp("reference")
    assert _run(_args(tree, root / "runs", root / "cache"), root / "log") == 0, (root / "log").read_text()
    record = json.loads((_run_dir(root / "runs", tree) / "record.json").read_text())
    assert record["resumed_from_epoch"] is None and record["resumes"] == []
    return _run_dir(root / "runs", tree)


def _run_dir(out: Path, tree: Path) -> Path:
    """The run's folder, which holds the data's key (decoded for it into a cache of its own)."""
    key = dataset_key(load_dataset(str(tree), cache_dir=tree.parent / "key-cache").identity)
    return out / "smoke" / key / "original" / "seed0"


def _results(run: Path) -> tuple[dict, list[dict], dict]:
    record = json.loads((run / "record.json").read_text())
    epochs = [{k: v for k, v in e.items() if k not in TIMING} for e in record["epochs"]]
    summary = {k: v for k, v in record["summary"].items() if k not in TIMING}
    arrays, _ = load_arrays(run / "predictions.npz")
    return record, epochs, {"summary": summary, **arrays}


def _assert_same_as(run: Path, reference: Path) -> dict:
    record, epochs, arrays = _results(run)
    _, ref_epochs, ref_arrays = _results(reference)
    assert len(epochs) == 3 and epochs == ref_epochs
    assert arrays["summary"] == ref_arrays["summary"]
    assert np.array_equal(arrays["predictions"], ref_arrays["predictions"])
    assert np.array_equal(arrays["labels"], ref_arrays["labels"])
    assert not (run / "checkpoint.pt").exists()
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    return record


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the process ended (rc {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout}s"
        time.sleep(0.005)


def test_sigkill_after_a_checkpoint_resumes_to_the_same_record(tree, reference, tmp_path, capsys):
    args, log = _args(tree, tmp_path / "runs", tmp_path / "cache"), tmp_path / "log"
    run = _run_dir(tmp_path / "runs", tree)
    proc = _start(args, log)
    try:
        _wait_for(run / "checkpoint.pt", proc)
        proc.send_signal(signal.SIGSTOP)  # frozen mid-run: it holds the run's lock and has not finished
        assert not (run / "record.json").exists(), "the run finished before it was stopped; make its epochs longer"

        # A second `srlib train` of the same run meanwhile is refused, in one line naming the holder.
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("srlib: error: ") and "\n" not in err
        assert f"in use by srlib train --variant original --profile smoke --seed 0 (pid {proc.pid})" in err
        assert "wait for it to finish" in err
    finally:
        proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert load_torch(run / "checkpoint.pt")["epoch"] >= 1

    assert _run(args, log) == 0, log.read_text()  # the kill released the lock
    record = _assert_same_as(run, reference)
    assert record["resumed_from_epoch"] >= 1 and "resuming" in log.read_text()


def test_sigkills_while_caching_and_mid_epoch_resume_to_the_same_record(tree, reference, tmp_path):
    args, log = _args(tree, tmp_path / "runs", tmp_path / "cache"), tmp_path / "log"
    run, datasets = _run_dir(tmp_path / "runs", tree), tmp_path / "cache" / "datasets"
    # 1. Killed halfway through writing the decoded dataset: only its temporary file is left.
    assert _run(args, log, fault="kill-in-cache-write") == -signal.SIGKILL
    leftovers = list(datasets.iterdir())  # a temporary file, and the builder's lock naming its (dead) pid
    assert any(p.name.endswith(".tmp") for p in leftovers)
    assert all(p.name.endswith((".tmp", ".lock")) for p in leftovers)
    # 2. Killed in the middle of epoch 1, before any checkpoint exists.
    assert _run(args, log, fault="kill-at-step:3") == -signal.SIGKILL
    assert not (run / "checkpoint.pt").exists() and not (run / "record.json").exists()
    (cache,) = datasets.iterdir()  # the stale temporary file was removed, the finished cache written
    assert cache.suffix == ".npz" and load_arrays(cache)[0]["train_x"].shape == (120, 3, 32, 32)
    # 3. Killed in the middle of epoch 2 of the rerun, after epoch 1 was checkpointed.
    assert _run(args, log, fault=f"kill-at-step:{STEPS_PER_EPOCH + 3}") == -signal.SIGKILL
    assert load_torch(run / "checkpoint.pt")["epoch"] == 1

    assert _run(args, log) == 0, log.read_text()
    record = _assert_same_as(run, reference)
    assert record["resumed_from_epoch"] == 1 and [r["from_epoch"] for r in record["resumes"]] == [1]


# --- damaged caches -------------------------------------------------------------------------------------

def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_bit(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # lands in the image arrays
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit])
def test_damaged_dataset_cache_is_reported_and_rebuilt(imagefolder, tmp_path, monkeypatch, capsys, damage):
    first = load_dataset(imagefolder, cache_dir=tmp_path)
    (cache,) = (tmp_path / "datasets").iterdir()
    damage(cache)
    decodes = []
    decode = data_sources._decode_imagefolder
    monkeypatch.setattr(data_sources, "_decode_imagefolder", lambda *a: decodes.append(1) or decode(*a))
    capsys.readouterr()

    second = load_dataset(imagefolder, cache_dir=tmp_path)
    out = capsys.readouterr().out
    assert f"cache file {cache}" in out and "not using it, rebuilding it" in out
    assert decodes == [1]  # rebuilt from the images, not read from the damaged file
    assert np.array_equal(first.train_x, second.train_x) and np.array_equal(first.test_y, second.test_y)
    assert np.array_equal(load_arrays(cache)[0]["train_x"], first.train_x)  # the rebuilt file is good


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit])
def test_damaged_upscaled_cache_is_reported_and_rebuilt(tmp_path, capsys, damage):
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    first, identity = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    damage(Path(identity["cache"]))
    capsys.readouterr()
    second, _ = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    out = capsys.readouterr().out
    assert f"cache file {identity['cache']}" in out and "rebuilding" in out
    assert np.array_equal(first, second)
    assert np.array_equal(load_arrays(identity["cache"])[0]["images"], first)


def test_every_single_byte_change_or_truncation_is_detected(tmp_path):
    """The seal covers every byte of a cache file, zip bookkeeping included."""
    path = tmp_path / "small.npz"
    arrays = {"x": np.arange(48, dtype=np.uint8).reshape(1, 3, 4, 4), "y": np.arange(3)}
    save_arrays(path, arrays, {"classes": ["a", "b", "c"]})
    good = path.read_bytes()
    undetected = []
    for i in range(len(good)):
        damaged = bytearray(good)
        damaged[i] ^= 1 << (i % 8)
        path.write_bytes(bytes(damaged))
        with contextlib.suppress(CacheError):
            load_arrays(path)
            undetected.append(f"byte {i}")
    for size in range(0, len(good), 7):
        path.write_bytes(good[:size])
        with contextlib.suppress(CacheError):
            load_arrays(path)
            undetected.append(f"first {size} bytes")
    assert undetected == []
    path.write_bytes(good)
    loaded, meta = load_arrays(path)
    assert meta == {"classes": ["a", "b", "c"]} and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)


def _interrupt_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Stop training (Ctrl-C) at the start of epoch index `epoch`."""
    import srlib.train as train_module

    real = train_module.train_epoch

    def stopping(model, optimizer, data, config, index, *rest):
        if index == epoch:
            raise KeyboardInterrupt
        return real(model, optimizer, data, config, index, *rest)

    monkeypatch.setattr(train_module, "train_epoch", stopping)


def _tiny(**overrides):
    return make_config("original", "smoke", 0, **{**dict(epochs=2, width=8, train_size=60, test_size=30,
                                                         batch_size=16), **overrides})


def _train(config, out: Path, data: Path, logs: list | None = None) -> dict:
    return train(config, out=out, data=str(data), device="cpu", progress=False,
                 log=(logs.append if logs is not None else lambda *_: None))


@pytest.mark.parametrize("damage", [_truncate, _flip_a_bit])
def test_damaged_checkpoint_is_reported_and_not_used(imagefolder, tmp_path, monkeypatch, damage):
    config = _tiny()
    with monkeypatch.context() as m:
        _interrupt_after_epoch(m, 1)
        with pytest.raises(KeyboardInterrupt):
            _train(config, tmp_path / "runs", imagefolder)
    checkpoint = run_dir(tmp_path / "runs", config) / "checkpoint.pt"
    first_epoch = load_torch(checkpoint)["epochs"][0]
    damage(checkpoint)
    logs: list[str] = []
    record = _train(config, tmp_path / "runs", imagefolder, logs)
    assert any(str(checkpoint) in line and "starting this run from scratch" in line for line in logs), logs
    assert record["resumed_from_epoch"] is None and record["epochs"][0]["train_loss"] == first_epoch["train_loss"]


# --- a full disk ------------------------------------------------------------------------------------------

class _FillingDisk(io.FileIO):
    """A file on a disk with `room` bytes left: the write that does not fit fails with ENOSPC."""

    room = 1000

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        if len(data) > _FillingDisk.room:
            super().write(data[:_FillingDisk.room])
            _FillingDisk.room = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        _FillingDisk.room -= len(data)
        return super().write(data)


def _fill_the_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    """From now on every temporary file store opens runs out of space after 1000 bytes."""
    monkeypatch.setattr(_FillingDisk, "room", 1000)
    monkeypatch.setattr(store.os, "fdopen", lambda fd, mode: io.BufferedRandom(_FillingDisk(fd, "r+")))


def test_disk_full_keeps_the_old_cache_and_leaves_no_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "cache.npz"
    save_arrays(path, {"x": np.zeros(10, dtype=np.uint8)})
    before = path.read_bytes()
    _fill_the_disk(monkeypatch)
    with pytest.raises(DiskFullError, match=f"disk full while writing {path}; nothing was left half-written"):
        save_arrays(path, {"x": np.ones(100_000, dtype=np.uint8)})
    assert os.listdir(tmp_path) == ["cache.npz"] and path.read_bytes() == before
    assert np.array_equal(load_arrays(path)[0]["x"], np.zeros(10, dtype=np.uint8))


def test_disk_full_while_caching_the_dataset_is_one_clear_cli_error(imagefolder, tmp_path, monkeypatch, capsys):
    _fill_the_disk(monkeypatch)
    code = main(["data", "--load", "--data", str(imagefolder), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the progress bars
    assert code == 2 and err.startswith("srlib: error: disk full while writing")
    assert "Free some space" in err
    assert list((tmp_path / "cache" / "datasets").iterdir()) == []


@contextlib.contextmanager
def _tiny_tmpfs(where: Path, size: str):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_real_full_disk_keeps_the_last_checkpoint_and_resumes(imagefolder, tmp_path):
    """A tmpfs with room for one checkpoint but not for its replacement's temporary file."""
    config = _tiny(epochs=3)
    with _tiny_tmpfs(tmp_path / "tiny", "2m") as out:
        with pytest.raises(DiskFullError, match="disk full while writing .*checkpoint.pt") as err:
            _train(config, out, imagefolder)
        assert "nothing was left half-written" in str(err.value)
        run = run_dir(out, config)
        assert sorted(p.name for p in run.iterdir()) == [".srlib.lock", "checkpoint.pt"]
        assert load_torch(run / "checkpoint.pt")["epoch"] == 1  # the last good checkpoint, intact

        subprocess.run(["mount", "-o", "remount,size=16m", str(out)], check=True)  # space was freed
        record = _train(config, out, imagefolder)
        assert record["resumed_from_epoch"] == 1 and len(record["epochs"]) == 3


# --- a diverging loss -------------------------------------------------------------------------------------

def test_nan_loss_stops_keeps_the_last_good_checkpoint_and_says_so(imagefolder, tmp_path, monkeypatch):
    import srlib.train as train_module

    config = _tiny(epochs=3)
    real = train_module.train_epoch

    def exploding(model, optimizer, data, cfg, epoch, *rest):
        if epoch == 1:  # the learning rate explodes in epoch 2
            for group in optimizer.param_groups:
                group["lr"] = 1e30
        return real(model, optimizer, data, cfg, epoch, *rest)

    with monkeypatch.context() as m:
        m.setattr(train_module, "train_epoch", exploding)
        with pytest.raises(TrainingError) as err:
            _train(config, tmp_path / "runs", imagefolder)
    checkpoint = run_dir(tmp_path / "runs", config) / "checkpoint.pt"
    message = str(err.value)
    assert "loss became non-finite in epoch 2" in message and ("nan" in message or "inf" in message)
    assert f"the last good checkpoint (epoch 1) is kept in {checkpoint}" in message and "--lr" in message
    state = load_torch(checkpoint)
    assert state["epoch"] == 1 and all(torch.isfinite(t).all() for t in state["model"].values()
                                       if t.is_floating_point())

    record = _train(config, tmp_path / "runs", imagefolder)  # the kept checkpoint resumes
    assert record["resumed_from_epoch"] == 1 and record["epochs"][0] == state["epochs"][0]
    assert all(np.isfinite(e["train_loss"]) for e in record["epochs"]) and len(record["epochs"]) == 3


def test_nan_loss_in_the_first_epoch_says_there_is_no_checkpoint(imagefolder, tmp_path, capsys):
    code = main(["train", "--variant", "original", "--profile", "smoke", "--epochs", "1", "--width", "8",
                 "--train-size", "60", "--test-size", "30", "--lr", "1e30", "--data", str(imagefolder),
                 "--out", str(tmp_path), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert "loss became non-finite in epoch 1" in err and "no epoch had finished, so there is no checkpoint" in err
    assert not (tmp_path / "smoke" / "original" / "seed0" / "checkpoint.pt").exists()
