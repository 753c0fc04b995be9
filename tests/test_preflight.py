"""The preflight: every refusal in seconds with one line naming the fix, nothing started; and the dry-run plan."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import threading
from collections import namedtuple
from pathlib import Path

import numpy as np
import pytest

import srlib.orchestration.preflight as preflight
from srlib import cost
from srlib.cli import main
from srlib.config import make_config
from srlib.orchestration.request import SweepRequest
from srlib.orchestration.sweep import sweep

REAL_PORTS_OPEN = preflight.ports_open  # the autouse fixture below replaces it in every test
REAL_CREATE_CONNECTION = socket.create_connection


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """No test here depends on the network: every download host 'does not answer'."""
    monkeypatch.setattr(preflight, "ports_open", lambda urls, timeout=None: dict.fromkeys(urls, False))
    monkeypatch.delenv("SRLIB_DATA", raising=False)


@pytest.fixture
def no_weights(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "weights"
    folder.mkdir()
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(folder))
    return folder


def forbid_slow_work(mp: pytest.MonkeyPatch) -> list[str]:
    """What takes longer than a check, and a refusal must come before: decoding or downloading the data,
    training, starting a run. Each raises if called (and is listed, in case a caller swallows the error)."""
    import srlib.data
    import srlib.orchestration.local
    import srlib.orchestration.tasks
    import srlib.train

    called: list[str] = []

    def forbidden(name: str):
        def call(*args, **kwargs):
            called.append(name)
            raise AssertionError(f"{name} was called before the refusal")
        return call

    for module, name in ((srlib.data, "load_dataset"), (srlib.data, "download_canonical"),
                         (srlib.train, "load_dataset"), (srlib.train, "train"),
                         (srlib.orchestration.tasks, "execute_notebook"),
                         (srlib.orchestration.executors.LocalExecutor, "submit")):
        mp.setattr(module, name, forbidden(f"{module.__name__}.{name}"))
    return called


def refused(tmp_path, capsys, *args: str) -> str:
    """Run the CLI, expect exit code 2 from the checks alone and nothing written; return the error line."""
    out, notebooks = tmp_path / "runs", tmp_path / "executed"
    with pytest.MonkeyPatch.context() as mp:
        slow = forbid_slow_work(mp)
        code = main([*args, "--out", str(out), *(["--notebooks-out", str(notebooks)] if args[0] == "sweep" else [])])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert slow == [], f"the refusal came after {slow}"
    assert not out.exists() and not notebooks.exists(), "a refused command must not start or write anything"
    assert not (tmp_path / "no-data-here").exists()  # nothing downloaded into SRLIB_DATA_DIR
    assert not (tmp_path / "cache").exists()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("srlib: error: "), captured.err
    return lines[0]


def test_no_data_is_refused(tmp_path, capsys, no_weights):
    line = refused(tmp_path, capsys, "sweep", "--profile", "smoke", "--variants", "original", "resize_x2")
    assert "no CIFAR-10 found" in line and "www.cs.toronto.edu does not answer" in line
    assert "SRLIB_DATA" in line and "nothing was started" in line


def test_missing_weights_of_one_sr_variant_are_refused(tmp_path, capsys, imagefolder, no_weights):
    line = refused(tmp_path, capsys, "sweep", "--profile", "smoke", "--data", str(imagefolder), "--no-analysis",
                   "--variants", "original", "resize_x4", "sr_x4")
    assert f"dctlsa_x4.safetensors (dctlsa x4, needed by sr_x4) are not in {no_weights}" in line
    assert "SRLIB_WEIGHTS_DIR" in line and "--sr-weights" in line
    assert "x2" not in line and "CIFAR-10" not in line  # only what is wrong is named


def test_damaged_weights_are_refused_by_hash(tmp_path, capsys, imagefolder, no_weights):
    (no_weights / "dctlsa_x4.safetensors").write_bytes(b"not the official file")
    line = refused(tmp_path, capsys, "train", "--variant", "sr_x4", "--profile", "smoke", "--data", str(imagefolder))
    assert f"SR weights {no_weights / 'dctlsa_x4.safetensors'} have sha256" in line
    assert "delete it and restore the official file" in line


@contextlib.contextmanager
def read_only_folder(where: Path):
    """A folder nobody may write to: a read-only tmpfs as root (root ignores permissions), else chmod."""
    where.mkdir()
    if os.geteuid() != 0:
        where.chmod(0o555)
        yield where
        where.chmod(0o755)
        return
    if not shutil.which("mount"):
        pytest.skip("a read-only folder for root needs mount")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], capture_output=True)


def test_unwritable_output_is_refused(tmp_path, imagefolder, no_weights):
    with read_only_folder(tmp_path / "ro") as ro, pytest.MonkeyPatch.context() as mp:
        slow = forbid_slow_work(mp)
        with pytest.raises(preflight.PreflightError) as caught:
            sweep(SweepRequest("smoke", 1, ["original"], out=ro / "runs", notebooks_out=tmp_path / "executed",
                               data=str(imagefolder), cache_dir=str(tmp_path / "cache"), analysis=False),
                  log=lambda *_: None)
        assert slow == [] and not (ro / "runs").exists()
    message = str(caught.value)
    assert f"the output folder {ro / 'runs'} is not writable" in message and "(--out)" in message
    assert not (tmp_path / "executed").exists() and not (tmp_path / "cache").exists()


def test_too_little_disk_is_refused(tmp_path, capsys, imagefolder, no_weights, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(preflight.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    line = refused(tmp_path, capsys, "train", "--variant", "resize_x4", "--profile", "smoke", "--data",
                   str(imagefolder), "--cache-dir", str(tmp_path / "cache"))
    assert "not enough disk space" in line and "5.0 MB free" in line
    # smoke resize_x4: 100 + 50 images of 3 x 128 x 128 bytes, and the decoded dataset: the fixture's 90 images
    # of 3 x 32 x 32 bytes (not CIFAR-10's 60,000)
    assert "resize_x4 (train+test) 7.4 MB" in line and "decoded dataset 276.5 KB" in line
    assert "--cache-dir" in line


def test_several_problems_come_in_one_message(tmp_path, no_weights):
    (tmp_path / "a-file").write_text("")
    with pytest.raises(preflight.PreflightError, match=r"^2 problems, nothing was started: \(1\) no CIFAR-10 found"
                       r".*\(2\) the output folder .* cannot be created: .*a-file is a file"):
        SweepRequest("smoke", 1, ["original"], out=tmp_path / "a-file" / "runs", analysis=False,
                     cache_dir=str(tmp_path / "cache"), notebooks_out=tmp_path / "nb").plan().raise_problems()


def test_an_upscaled_cifar10_copy_at_x4_is_sized_as_2_9_gb(tmp_path):
    caches, _ = preflight._caches([make_config("resize_x4", "paper")], tmp_path, [], "cpu", cost.DataShape())
    (cache,) = [c for c in caches if c.name.startswith("resize_x4")]
    assert cache.bytes == 60_000 * 3 * 128 * 128  # 2,949,120,000 bytes: the 2.9 GB
    assert preflight._size(cache.bytes) == "2.9 GB"


def test_the_plan_sizes_caches_and_epochs_by_the_data_it_will_use(tmp_path, no_weights):
    """Other data than CIFAR-10: the dry run's caches and times follow its images' size and count."""
    from test_data import make_tree

    data = make_tree(tmp_path / "shapes", {"cat": 60, "dog": 60}, size=28, test_per_class=30)
    plan = SweepRequest("paper", 1, ["original", "resize_x2"], out=tmp_path / "runs", data=str(data),  # whole splits
                        cache_dir=str(tmp_path / "cache"), analysis=False).plan(device="cpu")
    assert not plan.problems, plan.problems
    assert [(c.images, c.hw) for c in plan.caches] == [(180, (28, 28)), (180, (56, 56))]
    cifar = cost.estimate_run(make_config("resize_x2", "paper"), [], "cpu")
    estimate = plan.runs[1].estimate
    assert estimate.epoch_images == cost.epoch_images(120, 60) and estimate.epoch_s < cifar.epoch_s / 300
    assert estimate.flops < cifar.flops


def test_the_host_check_is_a_tcp_connect(monkeypatch):
    connects = []

    def create_connection(address, timeout):
        try:
            connection = REAL_CREATE_CONNECTION(address, timeout=timeout)
        except OSError as exc:
            connects.append(type(exc))
            raise
        connects.append("connected")
        return connection

    monkeypatch.setattr(preflight.socket, "create_connection", create_connection)
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        url = f"http://127.0.0.1:{listening.getsockname()[1]}/cifar-10-python.tar.gz"
        assert REAL_PORTS_OPEN([url], timeout=30) == {url: True}
    # Closed now: one connect, refused, and that refusal is the answer (no retrying until the 30 s are up).
    assert REAL_PORTS_OPEN([url], timeout=30) == {url: False}
    assert connects == ["connected", ConnectionRefusedError]


def test_all_hosts_are_tried_at_once(monkeypatch):
    """Several unreachable hosts cost one connect time, not one each: the connects must all be waiting together
    (a sequential check breaks the barrier, and its connects count as unanswered)."""
    urls = [f"http://host{i}.example/file" for i in range(3)]
    barrier = threading.Barrier(len(urls), timeout=preflight.CONNECT_SECONDS)

    def create_connection(address, timeout):
        barrier.wait()
        return contextlib.nullcontext()

    monkeypatch.setattr(preflight.socket, "create_connection", create_connection)
    assert REAL_PORTS_OPEN(urls) == dict.fromkeys(urls, True)


def write_record(out: Path, variant: str, seed: int, epoch_seconds: list[float], wall: float,
                 dataset: dict) -> None:
    from srlib.data import dataset_key
    from srlib.runs import RECORD, config_dir
    from srlib.store import write_json

    config = make_config(variant, "smoke", seed)
    write_json(config_dir(out, config, dataset_key(dataset)) / RECORD, {
        "status": "complete", "config": config.to_dict(), "upscale_seconds": 0.0, "wall_seconds": wall,
        "data": {"dataset": dataset},
        "epochs": [{"epoch": i + 1, "seconds": s} for i, s in enumerate(epoch_seconds)],
        "provenance": {"device": {"type": "cpu"}}})


def test_dry_run_prints_the_plan_and_starts_nothing(tmp_path, capsys, imagefolder, no_weights):
    out, cache = tmp_path / "runs", tmp_path / "cache"
    from srlib.data import load_dataset

    identity = load_dataset(imagefolder, cache_dir=tmp_path / "decoded-elsewhere").identity
    capsys.readouterr()  # the decode's lines
    write_record(out, "original", 0, [3.0, 5.0], wall=50.0, dataset=identity)  # (50 - 0) s / 2 epochs = 25 s each
    # resize_x2's test split is cached already (found by name and shape), its train split is not
    (cache / "upscaled").mkdir(parents=True)
    np.savez(cache / "upscaled" / "bicubic_x2_0123456789abcdef_none.npz", images=np.zeros((50, 3, 64, 64), np.uint8))
    before = sorted(p for p in tmp_path.rglob("*") if "imagefolder" not in p.parts)
    code = main(["sweep", "--profile", "smoke", "--seeds", "2", "--variants", "original", "resize_x2",
                 "--no-analysis", "--dry-run", "--data", str(imagefolder), "--out", str(out),
                 "--cache-dir", str(cache), "--notebooks-out", str(tmp_path / "executed")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert sorted(p for p in tmp_path.rglob("*") if "imagefolder" not in p.parts) == before
    lines = [" ".join(line.split()) for line in text.splitlines()]  # columns are padded
    assert lines[0] == f"plan: profile smoke, 4 run(s) on cpu, records in {out}"
    assert f"imagefolder dataset at {imagefolder}" in lines[1]
    assert "original seed 0 done (record found, reused)" in lines
    assert "original seed 1 to run: 2 epochs x 25 s + start-up = 70 s (from 1 earlier record(s))" in lines
    # no record of resize_x2: the cost model fitted to the one record on this device (original)
    assert sum(line.startswith("resize_x2 seed") and "(fitted to 1 earlier run(s) on this cpu)" in line
               for line in lines) == 2
    # only the missing train split: 100 images x 3 x 64 x 64 bytes
    assert "cache resize_x2 (train): 100 images x 3 x 64 x 64 = 1.2 MB, to build, ~0.1 s (rough cpu rate)" in lines
    assert "cache decoded dataset: 90 images x 3 x 32 x 32" in text  # the fixture's, not CIFAR-10's 60,000
    assert "3 run(s) to train" in text and "1 run(s) already done" in text
    # the total on this machine says what it rests on: here an earlier record of this cpu
    assert re.search(r"^estimated time on this cpu: ~.+, from measured on this machine \(earlier records\);", text,
                     re.M)
    assert text.rstrip().endswith("dry run: nothing was started")
    assert "checks: data, SR weights, folders and disk space are fine" in text


def test_dry_run_lists_the_problems_then_fails(tmp_path, capsys, no_weights):
    code = main(["sweep", "--profile", "smoke", "--variants", "sr_x2", "--no-analysis", "--dry-run",
                 "--out", str(tmp_path / "runs"), "--notebooks-out", str(tmp_path / "nb")])
    captured = capsys.readouterr()
    assert code == 2
    assert "problems (2):" in captured.out and "needed by sr_x2" in captured.out
    assert captured.err.strip() == ("srlib: error: the checks found 2 problem(s), listed above; fix them, then run "
                                    "the same command without --dry-run")


def test_sr_weights_of_the_wrong_scale_are_refused(tmp_path, capsys, imagefolder, tiny_sr_weights):
    line = refused(tmp_path, capsys, "train", "--variant", "sr_x2", "--profile", "smoke", "--data", str(imagefolder),
                   "--sr-weights", str(tiny_sr_weights[4]))
    assert f"--sr-weights {tiny_sr_weights[4]} is a x4 SR model, but sr_x2 needs x2; pass x2 weights" in line


def test_the_official_weights_pass(tmp_path, imagefolder, weights_dir, monkeypatch):
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights_dir))
    plan = SweepRequest("smoke", 1, ["sr_x2", "sr_x4"], out=tmp_path / "runs", data=str(imagefolder),
                        cache_dir=str(tmp_path / "cache"), notebooks_out=tmp_path / "nb").plan()
    plan.raise_problems()
    assert plan.problems == [] and [r.done for r in plan.runs] == [False, False]


# --- data that cannot work: refused in one line naming the fix, before anything is decoded ----------------

def test_one_class_is_refused(tmp_path, capsys, no_weights):
    from test_data import make_tree

    data = make_tree(tmp_path / "one", {"cat": 60})
    line = refused(tmp_path, capsys, "sweep", "--profile", "smoke", "--variants", "original", "--no-analysis",
                   "--data", str(data))
    assert "has 1 class (cat); a classifier needs at least 2: add another class" in line


def test_a_class_too_small_for_the_subset_is_refused(tmp_path, capsys, no_weights):
    from test_data import make_tree

    data = make_tree(tmp_path / "small", {"cat": 120, "dog": 3}, test_per_class=30)
    line = refused(tmp_path, capsys, "sweep", "--profile", "smoke", "--variants", "original", "--no-analysis",
                   "--data", str(data))
    assert "train split: a stratified subset of 100 needs 50 images of class 1, only 3 exist" in line
    assert "--train-size" in line and "classes in order: cat, dog" in line


def test_mixed_image_sizes_are_refused(tmp_path, capsys, no_weights):
    from test_data import make_tree

    data = make_tree(tmp_path / "mixed", {"cat": 60, "dog": 60}, size=28, odd=("dog", 48), test_per_class=30)
    line = refused(tmp_path, capsys, "sweep", "--profile", "smoke", "--variants", "original", "--no-analysis",
                   "--data", str(data))
    assert "the images are not all one size (28x28 px" in line and "48x48 px" in line
    assert "srlib does not resize them" in line


def test_images_too_large_for_the_sr_model_are_refused(tmp_path, monkeypatch):
    from test_data import make_tree

    data = make_tree(tmp_path / "large", {"cat": 60, "dog": 60}, size=48, test_per_class=30)
    configs = [make_config(v, "smoke") for v in ("resize_x4", "sr_x4")]
    found = preflight._survey(preflight.locate(str(data)))
    assert preflight._data_problems(found, str(data), configs, "cpu") == []  # 48 px at x4 fits in this machine's RAM
    monkeypatch.setattr(preflight, "_memory_here", lambda device: 2 * 10**9)  # a 2 GB machine
    assert preflight._data_problems(found, str(data), configs, "cpu") == []
    monkeypatch.setattr(preflight, "_memory_here", lambda device: 10**8)  # 100 MB
    (problem,) = preflight._data_problems(found, str(data), configs, "cpu")
    assert problem.startswith("the images are 48x48 px: SR at x4 on 16 images at a time needs about 151.0 MB")
    assert "bring the images down to 39 px or less, or leave out the SR variants" in problem
    assert preflight._data_problems(found, str(data), configs[:1], "cpu") == []  # no SR variant: no SR bound


def test_parquet_data_is_surveyed_by_its_labels_and_first_rows(tmp_path):
    from test_data import make_tree
    from test_parquet import write_split

    tree = make_tree(tmp_path / "tree", {"cat": 120, "dog": 3}, test_per_class=30, odd=("dog", 48))
    folder = tmp_path / "pq"
    for split in ("train", "test"):
        rows = [(p, label) for label, name in ((1, "dog"), (0, "cat"))
                for p in sorted((tree / split / name).iterdir())]
        write_split(folder / "plain_text", split, [{"bytes": p.read_bytes(), "path": p.name} for p, _ in rows],
                    [label for _, label in rows], names=["cat", "dog"], shards=2 if split == "train" else 1)
    found = preflight._survey(preflight.locate(str(folder)))
    problems = preflight._data_problems(found, str(folder), [make_config("original", "smoke")], "cpu")
    assert problems[0].startswith("train split: a stratified subset of 100 needs 50 images of class 1, only 3")
    # the first file starts with the 48 px dog, the second (rows 61-122) with a 28 px cat
    assert problems[1].startswith("the images are not all one size (48x48 px (in row 0 of")
    assert "28x28 px" in problems[1]


def test_a_run_done_on_data_not_yet_identified_is_still_checked(tmp_path, imagefolder, no_weights):
    """`srlib train` (and a sweep before it has decoded the data) plan with the data's key unknown: a finished
    record may be on other data, so the run's data is checked and its time counted (it may run)."""
    from srlib.data import dataset_key, load_dataset

    out = tmp_path / "runs"
    write_record(out, "original", 0, [3.0], wall=10.0, dataset=load_dataset(imagefolder).identity)
    config = make_config("original", "smoke", 0)
    missing = preflight.make_plan([config], out, str(tmp_path / "no-data"), tmp_path / "cache")
    assert any("no-data" in p for p in missing.problems), missing.problems
    key = dataset_key(load_dataset(imagefolder).identity)
    assert preflight.make_plan([config], out, str(imagefolder), tmp_path / "cache", dataset=key).runs[0].done
