"""Scale-out: parallel local workers, a real single-node Slurm (scripts/slurm_local.sh), the cache lock and
the kernel-start race. "The same result" = equal per-epoch losses and accuracies and equal per-image
predictions, every run pinned to one torch thread."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import make_imagefolder

from srlib import executors as ex
from srlib.errors import LockError
from srlib.executors import Task
from srlib.store import file_lock, load_arrays, load_or_build, lock_holder
from srlib.sweep import ROOT, status, sweep

SMALL = {"epochs": 2, "train_size": 20, "test_size": 10}  # seconds per run; the SR path is not the point here
VARIANTS = ["original", "resize_x2", "nearest_x2"]


def outcome(out: Path, variant: str, seed: int = 0, profile: str = "smoke") -> dict:
    """What must match between executors: per-epoch metrics and per-image predictions (not timings)."""
    folder = out / profile / variant / f"seed{seed}"
    record = json.loads((folder / "record.json").read_text())
    arrays, _ = load_arrays(folder / "predictions.npz")
    keys = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    return {"epochs": [{k: e[k] for k in keys} for e in record["epochs"]],
            "predictions": arrays["predictions"].tolist(), "threads": record.get("threads")}


def run_sweep(root: Path, data: Path, name: str, variants=VARIANTS, overrides=SMALL, **kwargs):
    lines: list[str] = []
    result = sweep("smoke", 1, variants, out=root / name / "runs", notebooks_out=root / name / "nb", data=str(data),
                   cache_dir=str(root / "cache"), overrides=overrides, analysis=False, threads=1, live=False,
                   log=lines.append, **kwargs)
    return result, lines


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """(root, data): generated data, and the local sequential sweep every other executor must reproduce."""
    root = tmp_path_factory.mktemp("scaleout")
    data = make_imagefolder(root / "data")
    result, _ = run_sweep(root, data, "sequential", jobs=1)
    assert sorted(result.done) == sorted(f"smoke-{v}-seed0" for v in VARIANTS) and not result.failed
    return root, data


# --- the cache lock ----------------------------------------------------------------------------------------

def _build_counting(path: str, counter: str) -> None:
    def build():
        with open(counter, "a") as f:
            f.write("built\n")
        time.sleep(1.0)  # long enough that the others arrive while it builds
        return {"x": np.arange(10)}, {}

    arrays, _ = load_or_build(Path(path), build, log=lambda *_: None)
    assert arrays["x"].tolist() == list(range(10))


def test_racing_workers_build_a_cache_once(tmp_path):
    path, counter = tmp_path / "cache" / "c.npz", tmp_path / "count"
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_build_counting, args=(str(path), str(counter))) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    assert [w.exitcode for w in workers] == [0, 0, 0]
    assert counter.read_text() == "built\n"
    assert not path.with_name("c.npz.lock").exists()


def test_a_dead_holder_on_this_host_is_detected(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = tmp_path / "c.npz.lock"
    lock.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "since": time.time()}))
    said = []
    with file_lock(tmp_path / "c.npz", "test", log=said.append, timeout=5):
        assert lock_holder(lock)["pid"] == os.getpid()
    assert "stale lock" in said[0] and not lock.exists()


def test_another_hosts_lock_is_waited_for_until_its_heartbeat_stops(tmp_path):
    lock = tmp_path / "c.npz.lock"
    lock.write_text(json.dumps({"host": "node-17", "pid": 1, "since": time.time(), "what": "building c.npz"}))
    said = []
    with pytest.raises(LockError, match=r"held by building c.npz \(host node-17, pid 1"):
        with file_lock(tmp_path / "c.npz", log=said.append, timeout=1, poll=0.1):
            pass
    assert "waiting for building c.npz (host node-17" in said[0]
    old = time.time() - 3600
    os.utime(lock, (old, old))  # no heartbeat for an hour: its holder is gone
    with file_lock(tmp_path / "c.npz", log=said.append, timeout=5, stale_after=600):
        pass
    assert not lock.exists()


# --- starting kernels ---------------------------------------------------------------------------------------

def test_a_kernel_that_loses_the_port_race_is_started_again(tmp_path, monkeypatch):
    import papermill as pm

    calls = []

    def flaky(input_path, output_path, **kwargs):
        calls.append(output_path)
        if len(calls) == 1:
            raise RuntimeError("Kernel died before replying to kernel_info")
        Path(output_path).write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))

    monkeypatch.setattr(pm, "execute_notebook", flaky)
    monkeypatch.setattr(ex.time, "sleep", lambda s: None)
    ex.execute_notebook("train.ipynb", tmp_path / "out.ipynb", {})
    assert len(calls) == 2 and (tmp_path / "out.ipynb").is_file()


def test_a_failing_cell_is_not_retried(tmp_path, monkeypatch):
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        raise PapermillExecutionError(3, 1, "boom", "ValueError", "Address already in use", [])

    monkeypatch.setattr(pm, "execute_notebook", failing)
    with pytest.raises(PapermillExecutionError):
        ex.execute_notebook("train.ipynb", tmp_path / "out.ipynb", {})
    assert calls == [1]


def test_several_kernels_started_at_once_all_run(tmp_path):
    """Four workers start their kernels in the same instant (no stagger): each notebook must run."""
    import nbformat

    notebook = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python",
                                                                  "display_name": "Python 3"}})
    notebook.cells = [nbformat.v4.new_code_cell("x = 1", metadata={"tags": ["parameters"]}),
                      nbformat.v4.new_code_cell("print('ran', x)")]
    template = tmp_path / "tiny.ipynb"
    nbformat.write(notebook, template)
    tasks = [Task(f"t{i}", str(template), str(tmp_path / f"t{i}.ipynb"), {"x": i}) for i in range(4)]
    workers = [subprocess.Popen([sys.executable, "-m", "srlib.executors", json.dumps(t.__dict__)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for t in tasks]
    assert [w.wait(180) for w in workers] == [0] * 4
    for i, t in enumerate(tasks):
        assert f"ran {i}" in Path(t.output).read_text()


# --- local workers -----------------------------------------------------------------------------------------

def test_two_local_jobs_give_the_same_results_as_one(study):
    root, data = study
    result, lines = run_sweep(root, data, "jobs2", jobs=2)
    assert not result.failed, result.failed
    for v in VARIANTS:
        assert outcome(root / "jobs2" / "runs", v) == outcome(root / "sequential" / "runs", v), v
        assert outcome(root / "jobs2" / "runs", v)["threads"] == 1
    assert sum(line.startswith("[sweep] start") for line in lines) == 3
    assert sum(line.startswith("[sweep] done") and "max test accuracy" in line for line in lines) == 3
    log = (root / "jobs2" / "nb" / "train" / "smoke-original-seed0.log").read_text()
    assert "Executing Cell" in log and "epoch 2/2" in log  # papermill's echo went to the log, not the terminal


def _cli_sweep(root: Path, data: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "srlib", "sweep", "--profile", "smoke", "--variants", *VARIANTS, "--epochs", "2",
            "--train-size", "20", "--test-size", "10", "--threads", "1", "--no-analysis", "--no-book",
            "--out", str(root / name / "runs"), "--notebooks-out", str(root / name / "nb"), "--data", str(data),
            "--cache-dir", str(root / "cache"), *extra]


def test_a_killed_worker_is_reported_and_a_rerun_completes_only_it(study, capsys):
    root, data = study
    sweep_process = subprocess.Popen(_cli_sweep(root, data, "killed", "--jobs", "2"), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = root / "killed" / "runs" / "smoke" / "resize_x2" / "seed0" / "job.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        info = json.loads(job.read_text()) if job.is_file() else {}
        if info.get("state") == "running":
            os.kill(info["pid"], signal.SIGKILL)
            break
        time.sleep(0.05)
    else:
        pytest.fail("resize_x2 never started")
    output, _ = sweep_process.communicate(timeout=300)
    assert sweep_process.returncode == 2, output
    failed = [line for line in output.splitlines() if "FAILED resize_x2 seed 0" in line]
    assert failed and "killed (signal 9)" in failed[0] and "smoke-resize_x2-seed0.log" in failed[0], output
    assert sum("[sweep] done" in line for line in output.splitlines()) == 2, output
    assert len(output.splitlines()) <= 12, output  # papermill and the kernels write to the per-run logs
    from srlib.cli import main

    assert main(["status", "--out", str(root / "killed" / "runs")]) == 0
    table = capsys.readouterr().out
    assert "smoke/original/seed0    done" in table and "2 done, 1 failed" in table, table
    assert "smoke/resize_x2/seed0   failed   its worker was killed (signal 9); log: " in table, table

    again = subprocess.run(_cli_sweep(root, data, "killed", "--jobs", "2"), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 3 runs finished earlier" in again.stdout
    assert [line.split()[2] for line in again.stdout.splitlines() if line.startswith("[sweep] start")] == ["resize_x2"]
    assert outcome(root / "killed" / "runs", "resize_x2") == outcome(root / "sequential" / "runs", "resize_x2")


# --- a real Slurm -------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A single-node Slurm started for this session (or the one SLURM_CONF already names), stopped at the end."""
    if os.environ.get("SLURM_CONF") and subprocess.run(["sinfo"], capture_output=True).returncode == 0:
        yield os.environ["SLURM_CONF"]
        return
    sbin = os.environ["PATH"] + ":/usr/sbin:/sbin"
    if not all(shutil.which(b, path=sbin) for b in ("munged", "slurmctld", "slurmd", "sbatch")):
        if os.environ.get("SRLIB_REQUIRE_SLURM"):
            pytest.fail("SRLIB_REQUIRE_SLURM is set but slurm-wlm / munge are not installed")
        pytest.skip("install Debian's slurm-wlm and munge to test the Slurm executor")
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, "SRLIB_SLURM_DIR": str(state)}
    script = ROOT / "scripts" / "slurm_local.sh"
    started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
        pytest.fail(f"could not start the local Slurm: {started.stderr}")
    conf = started.stdout.strip().rsplit("=", 1)[1]
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120)
        os.environ.pop("SLURM_CONF", None)


SLURM = dict(executor="slurm", slurm=ex.SlurmOptions(cpus=1, time="10"))


def test_a_slurm_sweep_gives_the_same_results_as_the_local_sequential_one(study, slurm_cluster):
    root, data = study
    result, lines = run_sweep(root, data, "slurm", **SLURM)
    assert not result.failed, (result.failed, lines)
    assert len(result.submitted) == 3
    for v in VARIANTS:
        assert outcome(root / "slurm" / "runs", v) == outcome(root / "sequential" / "runs", v), v
    assert any("submitted 3 Slurm task(s)" in line for line in lines)
    assert all(st.state == "done" for _, st in status(root / "slurm" / "runs"))
    # Rerunning submits nothing: everything is done.
    result, _ = run_sweep(root, data, "slurm", **SLURM)
    assert result.submitted == [] and len(result.skipped) == 3


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


@pytest.mark.parametrize("interrupt", ["requeue", "scancel"])
def test_an_interrupted_slurm_run_finishes_with_the_same_result(tmp_path, slurm_cluster, interrupt):
    """Interrupted after its first epoch's checkpoint: requeued by Slurm, or cancelled and the sweep rerun."""
    data = make_imagefolder(tmp_path / "data", train_per_class=30, test_per_class=3)
    longer = {"epochs": 8, "train_size": 300, "test_size": 30}  # ~1 s per epoch: time to interrupt it
    run_sweep(tmp_path, data, "plain", ["resize_x2"], longer, jobs=1)
    result, _ = run_sweep(tmp_path, data, "slurm", ["resize_x2"], longer, wait=False, **SLURM)
    assert len(result.submitted) == 1
    job_id = result.submitted[0]
    checkpoint = tmp_path / "slurm" / "runs" / "smoke" / "resize_x2" / "seed0" / "checkpoint.pt"
    _wait_for(checkpoint.is_file, 240, "the first epoch's checkpoint")
    row = dict(status(tmp_path / "slurm" / "runs"))["smoke/resize_x2/seed0"]
    assert row.state == "running" and re.search(r"on \S+ \(Slurm job [\d_]+\) since .*, epoch \d of 8 done",
                                                row.detail), row
    if interrupt == "requeue":
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    else:
        subprocess.run(["scancel", job_id], check=True)
        _wait_for(lambda: not ex.slurm_queue([job_id]), 60, "the cancelled job to leave the queue")
        assert dict(status(tmp_path / "slurm" / "runs"))["smoke/resize_x2/seed0"].state == "failed"
    result, lines = run_sweep(tmp_path, data, "slurm", ["resize_x2"], longer, **SLURM)
    assert not result.failed, (result.failed, lines)
    assert bool(result.submitted) == (interrupt == "scancel")  # a requeued task is waited for, not resubmitted
    record = json.loads(checkpoint.with_name("record.json").read_text())
    assert record["resumes"] and record["resumes"][0]["from_epoch"] >= 1
    assert outcome(tmp_path / "slurm" / "runs", "resize_x2") == outcome(tmp_path / "plain" / "runs", "resize_x2")


def test_a_failing_slurm_run_is_named_while_the_others_finish(study, slurm_cluster, tmp_path):
    root, data = study
    wrong = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights")) / "dctlsa_x4.safetensors"  # x4 weights for x2
    if not wrong.is_file():
        wrong = tmp_path / "x4_as_x2.safetensors"
        wrong.write_bytes(b"these are not SR weights")
    # preflight=False: the point is a run that fails inside its Slurm task, not a refusal before submitting.
    result, lines = run_sweep(root, data, "failing", ["original", "sr_x2"], {**SMALL, "sr_weights": str(wrong)},
                              preflight=False, **SLURM)
    assert list(result.failed) == ["smoke-sr_x2-seed0"], (result.failed, lines)
    assert result.done == ["smoke-original-seed0"]
    failed = [line for line in lines if line.startswith("[sweep] FAILED sr_x2 seed 0")]
    assert failed and "smoke-sr_x2-seed0.log" in failed[0] and "Error" in failed[0], lines
    rows = dict(status(root / "failing" / "runs"))
    assert rows["smoke/sr_x2/seed0"].state == "failed" and rows["smoke/original/seed0"].state == "done"


def test_the_progress_line_shows_each_running_runs_epoch(tmp_path):
    from srlib.executors import RunState
    from srlib.sweep import Reporter

    lines: list[str] = []
    reporter = Reporter(lines.append, live=False, slots=2)
    reporter.PLAIN_EVERY_S = 0
    tasks = {v: Task(f"smoke-{v}-seed0", "train.ipynb", str(tmp_path / f"{v}.ipynb"), {}, None, v, 0)
             for v in ("original", "resize_x2", "sr_x2", "sr_x4")}
    tasks["original"].log.write_text("[srlib] original seed 0 epoch 2/6: loss 1.2 train 50% test 40% (1s)\n"
                                     "epoch 3/6:   0%|          | 0/10\n")  # the bar of the epoch under way
    for v in ("original", "resize_x2", "sr_x2"):
        reporter.started(tasks[v], "cpu, 1 thread(s)")
    reporter.finished(tasks["sr_x2"], {"summary": {"max_test_acc": 41.5}})
    states = {tasks["original"].name: RunState("running"), tasks["resize_x2"].name: RunState("running"),
              tasks["sr_x2"].name: RunState("done"), tasks["sr_x4"].name: RunState("queued")}
    reporter.progress(states, {t.name: t for t in tasks.values()})
    assert lines[0] == "[sweep] start  original seed 0 (cpu, 1 thread(s))"
    assert re.fullmatch(r"\[sweep\] done   sr_x2 seed 0: 41.50% max test accuracy, 0.0 min", lines[3]), lines
    assert re.fullmatch(r"\[sweep\] 1/4 done, 2 running \(original s0 2/6, resize_x2 s0 starting\), 1 queued, "
                        r"0 failed \| 0.0 min, ETA (<1|~\d+) min", lines[4]), lines


def test_slurm_needs_a_profile_and_understands_slurm_times(capsys):
    from srlib.cli import main

    assert main(["sweep", "--executor", "slurm"]) == 2
    assert "srlib: error: --executor slurm needs --profile" in capsys.readouterr().err
    assert [ex.slurm_minutes(t) for t in ("90", "30:00", "2:00:00", "1-12", "1-0:30:30")] == [90, 30, 120, 2160, 1471]
    assert ex.parse_sbatch_options(["account=proj", "--qos=high", "exclusive"]) == {
        "account": "proj", "qos": "high", "exclusive": ""}
    with pytest.raises(Exception, match="not a Slurm time"):
        ex.slurm_minutes("2h")
