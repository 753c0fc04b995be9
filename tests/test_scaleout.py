"""Scale-out: parallel local workers, a real single-node Slurm (scripts/slurm_local.sh) and the faults its users
meet (a request no node can run, a task cancelled while pending, a time limit, a second Slurm on the machine;
reasons this cluster cannot produce through a faked squeue), the cache lock and the kernel-start race. "The
same result" = equal per-epoch losses and accuracies and equal per-image predictions, every run pinned to one
torch thread."""

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

from srlib.data import dataset_key, load_dataset
from srlib.errors import LockError
from srlib.orchestration import slurm as ex
from srlib.orchestration import tasks as task_module
from srlib.orchestration.request import SweepRequest
from srlib.orchestration.states import status
from srlib.orchestration.sweep import sweep
from srlib.orchestration.tasks import Task, read_job, write_job
from srlib.runs import ROOT, datasets, run_dir
from srlib.store import file_lock, load_arrays, load_or_build, lock_holder

SMALL = {"epochs": 2, "train_size": 20, "test_size": 10}  # seconds per run; the SR path is not the point here
VARIANTS = ["original", "resize_x2", "nearest_x2"]
NO_DATA = "gen-00000000"  # the key of requests built without data (so none loads $SRLIB_DATA)


def data_key(data: Path, cache: Path) -> str:
    """The generated data's key: the dataset part of its runs' folders, task names and status rows."""
    return dataset_key(load_dataset(str(data), cache_dir=str(cache)).identity)


def outcome(out: Path, key: str, variant: str, seed: int = 0, profile: str = "smoke") -> dict:
    """What must match between executors: per-epoch metrics and per-image predictions (not timings)."""
    folder = run_dir(out, profile, key, variant, seed)
    record = json.loads((folder / "record.json").read_text())
    arrays, _ = load_arrays(folder / "predictions.npz")
    keys = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    return {"epochs": [{k: e[k] for k in keys} for e in record["epochs"]],
            "predictions": arrays["predictions"].tolist(), "threads": record.get("threads")}


def run_sweep(root: Path, data: Path, name: str, variants=VARIANTS, overrides=SMALL, preflight=True, **kwargs):
    lines: list[str] = []
    kwargs.setdefault("analysis", False)
    result = sweep(SweepRequest("smoke", 1, variants, out=root / name / "runs", notebooks_out=root / name / "nb",
                                data=str(data), cache_dir=str(root / "cache"), overrides=overrides, threads=1,
                                **kwargs), live=False, log=lines.append, preflight=preflight)
    return result, lines


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path, str]:
    """(root, data, key): generated data, its key, and the local sequential sweep every other executor must
    reproduce."""
    root = tmp_path_factory.mktemp("scaleout")
    data = make_imagefolder(root / "data")
    result, _ = run_sweep(root, data, "sequential", jobs=1)
    key = data_key(data, root / "cache")
    assert datasets(root / "sequential" / "runs") == [key]
    assert sorted(result.done) == sorted(f"smoke-{key}-{v}-seed0" for v in VARIANTS) and not result.failed
    return root, data, key


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
    monkeypatch.setattr(task_module.time, "sleep", lambda s: None)
    task_module.execute_notebook("train.ipynb", tmp_path / "out.ipynb", {})
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
        task_module.execute_notebook("train.ipynb", tmp_path / "out.ipynb", {})
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
    worker = [sys.executable, "-m", "srlib.orchestration.tasks"]
    workers = [subprocess.Popen([*worker, json.dumps(t.__dict__)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for t in tasks]
    assert [w.wait(180) for w in workers] == [0] * 4
    for i, t in enumerate(tasks):
        assert f"ran {i}" in Path(t.output).read_text()


# --- local workers -----------------------------------------------------------------------------------------

@pytest.mark.slow
def test_two_local_jobs_give_the_same_results_as_one(study):
    root, data, key = study
    result, lines = run_sweep(root, data, "jobs2", jobs=2)
    assert not result.failed, result.failed
    for v in VARIANTS:
        assert outcome(root / "jobs2" / "runs", key, v) == outcome(root / "sequential" / "runs", key, v), v
        assert outcome(root / "jobs2" / "runs", key, v)["threads"] == 1
    assert sum(line.startswith("[sweep] start") for line in lines) == 3
    assert sum(line.startswith("[sweep] done") and "max test accuracy" in line for line in lines) == 3
    log = (root / "jobs2" / "nb" / "train" / f"smoke-{key}-original-seed0.log").read_text()
    assert "Executing Cell" in log and "epoch 2/2" in log  # papermill's echo went to the log, not the terminal


def _cli_sweep(root: Path, data: Path, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "srlib", "sweep", "--profile", "smoke", "--variants", *VARIANTS, "--epochs", "2",
            "--train-size", "20", "--test-size", "10", "--threads", "1", "--no-analysis", "--no-book",
            "--out", str(root / name / "runs"), "--notebooks-out", str(root / name / "nb"), "--data", str(data),
            "--cache-dir", str(root / "cache"), *extra]


@pytest.mark.slow
def test_a_killed_worker_is_reported_and_a_rerun_completes_only_it(study, capsys):
    root, data, key = study
    sweep_process = subprocess.Popen(_cli_sweep(root, data, "killed", "--jobs", "2"), cwd=ROOT,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = run_dir(root / "killed" / "runs", "smoke", key, "resize_x2", 0) / "job.json"
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
    assert failed and "killed (signal 9)" in failed[0] and f"smoke-{key}-resize_x2-seed0.log" in failed[0], output
    assert sum("[sweep] done" in line for line in output.splitlines()) == 2, output
    assert len(output.splitlines()) <= 12, output  # papermill and the kernels write to the per-run logs
    from srlib.cli import main

    assert main(["status", "--out", str(root / "killed" / "runs")]) == 0
    table = capsys.readouterr().out
    assert f"smoke/{key}/original/seed0    done" in table and "2 done, 1 failed" in table, table
    assert f"smoke/{key}/resize_x2/seed0   failed   its worker was killed (signal 9); log: " in table, table

    again = subprocess.run(_cli_sweep(root, data, "killed", "--jobs", "2"), cwd=ROOT, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "2 of 3 runs finished earlier" in again.stdout
    assert [line.split()[2] for line in again.stdout.splitlines() if line.startswith("[sweep] start")] == ["resize_x2"]
    assert (outcome(root / "killed" / "runs", key, "resize_x2")
            == outcome(root / "sequential" / "runs", key, "resize_x2"))


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


@pytest.mark.slow
def test_a_slurm_sweep_gives_the_same_results_as_the_local_sequential_one(study, slurm_cluster):
    root, data, key = study
    result, lines = run_sweep(root, data, "slurm", **SLURM)
    assert not result.failed, (result.failed, lines)
    assert len(result.submitted) == 3
    for v in VARIANTS:
        assert outcome(root / "slurm" / "runs", key, v) == outcome(root / "sequential" / "runs", key, v), v
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


@pytest.mark.slow
@pytest.mark.parametrize("interrupt", ["requeue", "scancel"])
def test_an_interrupted_slurm_run_finishes_with_the_same_result(tmp_path, slurm_cluster, interrupt):
    """Interrupted after its first epoch's checkpoint: requeued by Slurm, or cancelled and the sweep rerun."""
    data = make_imagefolder(tmp_path / "data", train_per_class=30, test_per_class=3)
    longer = {"epochs": 8, "train_size": 300, "test_size": 30}  # ~1 s per epoch: time to interrupt it
    run_sweep(tmp_path, data, "plain", ["resize_x2"], longer, jobs=1)
    key = data_key(data, tmp_path / "cache")
    result, _ = run_sweep(tmp_path, data, "slurm", ["resize_x2"], longer, wait=False, **SLURM)
    assert len(result.submitted) == 1
    job_id = result.submitted[0]
    checkpoint = run_dir(tmp_path / "slurm" / "runs", "smoke", key, "resize_x2", 0) / "checkpoint.pt"
    _wait_for(checkpoint.is_file, 240, "the first epoch's checkpoint")
    row = dict(status(tmp_path / "slurm" / "runs"))[f"smoke/{key}/resize_x2/seed0"]
    assert row.state == "running" and re.search(r"on \S+ \(Slurm job [\d_]+\) since .*, epoch \d of 8 done",
                                                row.detail), row
    if interrupt == "requeue":
        subprocess.run(["scontrol", "requeue", job_id], check=True)
    else:
        subprocess.run(["scancel", job_id], check=True)
        _wait_for(lambda: not ex.slurm_queue([job_id]), 60, "the cancelled job to leave the queue")
        assert dict(status(tmp_path / "slurm" / "runs"))[f"smoke/{key}/resize_x2/seed0"].state == "failed"
    result, lines = run_sweep(tmp_path, data, "slurm", ["resize_x2"], longer, **SLURM)
    assert not result.failed, (result.failed, lines)
    assert bool(result.submitted) == (interrupt == "scancel")  # a requeued task is waited for, not resubmitted
    record = json.loads(checkpoint.with_name("record.json").read_text())
    assert record["resumes"] and record["resumes"][0]["from_epoch"] >= 1
    assert (outcome(tmp_path / "slurm" / "runs", key, "resize_x2")
            == outcome(tmp_path / "plain" / "runs", key, "resize_x2"))


@pytest.mark.slow
def test_a_failing_slurm_run_is_named_while_the_others_finish(study, slurm_cluster, tmp_path):
    root, data, key = study
    wrong = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights")) / "dctlsa_x4.safetensors"  # x4 weights for x2
    if not wrong.is_file():
        wrong = tmp_path / "x4_as_x2.safetensors"
        wrong.write_bytes(b"these are not SR weights")
    # preflight=False: the point is a run that fails inside its Slurm task, not a refusal before submitting.
    result, lines = run_sweep(root, data, "failing", ["original", "sr_x2"], {**SMALL, "sr_weights": str(wrong)},
                              preflight=False, **SLURM)
    assert list(result.failed) == [f"smoke-{key}-sr_x2-seed0"], (result.failed, lines)
    assert result.done == [f"smoke-{key}-original-seed0"]
    failed = [line for line in lines if line.startswith("[sweep] FAILED sr_x2 seed 0")]
    assert failed and f"smoke-{key}-sr_x2-seed0.log" in failed[0] and "Error" in failed[0], lines
    rows = dict(status(root / "failing" / "runs"))
    assert rows[f"smoke/{key}/sr_x2/seed0"].state == "failed" and rows[f"smoke/{key}/original/seed0"].state == "done"


def test_the_progress_line_shows_each_running_runs_epoch(tmp_path):
    from srlib.orchestration.reporter import Reporter
    from srlib.orchestration.states import RunState

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


# --- what Slurm says while a sweep waits (a faked squeue: reasons this test cluster cannot produce) ---------

FAKE_SQUEUE = """#!/bin/sh
# Prints $FAKE_SLURM/squeue.<n> on its n-th call (from 0), then squeue.last: the queue as the test scripts it.
n=$(cat "$FAKE_SLURM/calls" 2>/dev/null || echo 0)
echo $((n + 1)) >"$FAKE_SLURM/calls"
if [ -f "$FAKE_SLURM/squeue.$n" ]; then cat "$FAKE_SLURM/squeue.$n"; else cat "$FAKE_SLURM/squeue.last"; fi
"""
FAKE_SCANCEL = '#!/bin/sh\necho "$@" >>"$FAKE_SLURM/scancelled"\n'


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """A squeue and scancel on the PATH that play back what the test writes (no cluster); returns their folder."""
    folder = tmp_path / "fake-slurm"
    folder.mkdir()
    for name, text in (("squeue", FAKE_SQUEUE), ("scancel", FAKE_SCANCEL)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    monkeypatch.setenv("FAKE_SLURM", str(folder))
    monkeypatch.setenv("PATH", f"{folder}:{os.environ['PATH']}")
    from srlib.orchestration.executors import SlurmExecutor

    monkeypatch.setattr(SlurmExecutor, "poll_s", 0.01)
    looks, real_queue = [], ex.slurm_queue

    def look(*args, **kwargs):  # a wait loop that never ends fails the test instead of hanging it
        looks.append(args)
        assert len(looks) < 300, "the sweep is still waiting after 300 looks at the queue"
        return real_queue(*args, **kwargs)

    monkeypatch.setattr(ex, "slurm_queue", look)
    return folder


def _queued_tasks(tmp_path: Path, variants: list[str]) -> list[Task]:
    """Tasks as a sweep leaves them after submitting array job 7: job.json says queued, with their job ids."""
    from srlib.orchestration.sweep import train_tasks

    tasks = train_tasks(SweepRequest("smoke", 1, variants, tmp_path / "runs", tmp_path / "nb", dataset=NO_DATA))
    for i, task in enumerate(tasks):
        write_job(task, "queued", executor="slurm", job_id=f"7_{i}", slurm_log=str(tmp_path / f"7_{i}.err"))
    return tasks


def _wait(tmp_path: Path, tasks: list[Task]):
    from srlib.orchestration.executors import SlurmExecutor
    from srlib.orchestration.reporter import Reporter
    from srlib.orchestration.sweep import SweepResult, record_finder, wait_for

    lines: list[str] = []
    reporter = Reporter(lines.append, live=False)
    reporter.PLAIN_EVERY_S = 0
    result = SweepResult()
    try:
        record_of = record_finder(SweepRequest("smoke", out=tmp_path / "runs", dataset=NO_DATA))
        executor = SlurmExecutor(record_of)
        executor.watch(tasks)
        wait_for(executor, tasks, reporter, result, record_of)
    finally:
        reporter.close()
    return result, lines


@pytest.mark.parametrize("reason", sorted(ex.FATAL_REASONS))
def test_a_reason_that_never_clears_ends_the_sweep_and_cancels_its_pending_tasks(tmp_path, fake_slurm, reason):
    from srlib.errors import SrlibError

    tasks = _queued_tasks(tmp_path, ["original", "resize_x2"])
    for n in range(3):  # a reason that never clears is trusted once it did not clear for three looks
        (fake_slurm / f"squeue.{n}").write_text(f"7_0|PENDING|{reason}\n7_1|PENDING|Priority\n")
    (fake_slurm / "squeue.last").write_text("7_0|CANCELLED|{reason}\n7_1|CANCELLED|Priority\n")
    with pytest.raises(SrlibError) as raised:
        _wait(tmp_path, tasks)
    said = str(raised.value)
    assert f"Slurm will never start original seed 0 (job 7_0): pending with reason {reason}: " in said, said
    assert ex.FATAL_REASONS[reason] in said and "the sweep cancelled its 2 pending task(s)" in said, said
    assert sorted((fake_slurm / "scancelled").read_text().split()) == ["7_0", "7_1"]
    rows = dict(status(tmp_path / "runs"))
    assert rows[f"smoke/{NO_DATA}/original/seed0"].state == "failed", rows
    assert rows[f"smoke/{NO_DATA}/original/seed0"].detail == (
        f"Slurm job 7_0 was cancelled by the sweep: pending with reason {reason}, which never clears: "
        f"{ex.FATAL_REASONS[reason]}")
    assert rows[f"smoke/{NO_DATA}/resize_x2/seed0"].detail.endswith("pending with reason Priority")


@pytest.mark.parametrize("reason", ["Resources", "Priority", "BeginTime", "ReqNodeNotAvail, UnavailableNodes:n[1-2]",
                                    "QOSMaxJobsPerUserLimit"])
def test_a_reason_that_clears_is_shown_and_a_task_that_leaves_the_queue_unstarted_fails(tmp_path, fake_slurm, capsys,
                                                                                         reason):
    from srlib.cli import main

    tasks = _queued_tasks(tmp_path, ["original"])
    for n in range(3):
        (fake_slurm / f"squeue.{n}").write_text(f"7_0|PENDING|{reason}\n")
    (fake_slurm / "squeue.last").write_text("")  # gone: cancelled while pending, or purged
    code = reason.split(",")[0]
    assert main(["status", "--out", str(tmp_path / "runs")]) == 0  # squeue's first answer
    row = capsys.readouterr().out.splitlines()[0]
    assert re.fullmatch(rf"smoke/{NO_DATA}/original/seed0  queued   Slurm job 7_0 pending: {code}( \(.+\))?",
                        row), row
    if code in ex.WAITING_REASONS:
        assert f"({ex.WAITING_REASONS[code]})" in row

    result, lines = _wait(tmp_path, tasks)
    assert any(f", 1 queued ({code}), 0 failed" in line for line in lines), lines
    assert list(result.failed) == [f"smoke-{NO_DATA}-original-seed0"]
    assert result.failed[f"smoke-{NO_DATA}-original-seed0"] == ("Slurm job 7_0 left the queue before it started "
                                                                "(cancelled or purged); rerun the sweep")
    assert not (fake_slurm / "scancelled").exists()


def test_a_look_at_the_runs_reads_each_job_json_once(tmp_path, fake_slurm, monkeypatch):
    """On a cluster's shared filesystem every read costs: a poll of the sweep and `srlib status` read each run's
    job.json once, and tell running from queued by it and squeue."""
    from srlib.orchestration.executors import SlurmExecutor
    from srlib.orchestration.sweep import record_finder

    tasks = _queued_tasks(tmp_path, ["original", "resize_x2"])
    write_job(tasks[0], "running", executor="slurm", job_id="7_0")
    (fake_slurm / "squeue.last").write_text("7_0|RUNNING|None\n7_1|PENDING|Priority\n")
    reads, real_read = [], task_module.read_json_or_none
    monkeypatch.setattr(task_module, "read_json_or_none",
                        lambda path: reads.append(Path(path).name) or real_read(path))

    executor = SlurmExecutor(record_finder(SweepRequest("smoke", out=tmp_path / "runs", dataset=NO_DATA)))
    executor.watch(tasks)
    states = executor.poll(tasks)
    assert {n: st.state for n, st in states.items()} == {f"smoke-{NO_DATA}-original-seed0": "running",
                                                         f"smoke-{NO_DATA}-resize_x2-seed0": "queued"}
    assert reads == ["job.json", "job.json"]
    reads.clear()
    assert [st.state for _, st in status(tmp_path / "runs")] == ["running", "queued"]
    assert reads == ["job.json", "job.json"]


def test_the_progress_line_counts_each_reason():
    from srlib.orchestration.reporter import _why_queued
    from srlib.orchestration.states import RunState

    states = {"a": RunState("queued", reason="Priority"), "b": RunState("queued", reason="Resources"),
              "c": RunState("queued", reason="Priority"), "d": RunState("running", reason="")}
    assert _why_queued(states) == " (2 Priority, 1 Resources)"
    assert _why_queued({"a": RunState("queued")}) == ""


def test_squeue_lines_and_slurm_option_defaults():
    assert ex.parse_squeue("5_1|PENDING|ReqNodeNotAvail, UnavailableNodes:n1\n5_2|CANCELLED|None\n") == {
        "5_1": ex.QueueEntry("PENDING", "ReqNodeNotAvail"), "5_2": ex.QueueEntry("CANCELLED", "None")}
    assert ex.QueueEntry("PENDING").live and not ex.QueueEntry("CANCELLED").live
    # The warning before the time limit: 120 s, a quarter of a short limit, never the whole limit.
    assert [ex.SlurmOptions(time=t).signal_delay_s() for t in ("4:00:00", "8", "2")] == [120, 120, 30]
    assert ex.SlurmOptions(time="2", signal_delay=45).signal_delay_s() == 45
    with pytest.raises(Exception, match="--slurm-signal-delay 120 s must be above 0 and below --slurm-time"):
        ex.SlurmOptions(time="2", signal_delay=120).signal_delay_s()
    assert ex.SlurmOptions(cpus=2).cpus_per_task(threads=3) == 3 and ex.SlurmOptions().cpus_per_task(1) == 4


# --- Slurm faults a cluster user meets (the real single-node Slurm) -----------------------------------------

def _largest_node_cpus() -> int:
    found = ex.partition_info(None)
    assert found is not None and found.cpus > 0, found
    return found.cpus


def _cli_slurm_sweep(root: Path, data: Path, name: str, *extra: str) -> list[str]:
    return ["sweep", "--executor", "slurm", "--profile", "smoke", "--variants", "original", "--epochs", "1",
            "--train-size", "20", "--test-size", "10", "--no-analysis", "--no-book", "--out", str(root / name / "runs"),
            "--notebooks-out", str(root / name / "nb"), "--data", str(data), "--cache-dir", str(root / "cache"),
            "--slurm-time", "10", *extra]


def test_a_request_no_node_can_satisfy_is_refused_before_submitting(tmp_path, slurm_cluster, capsys):
    from srlib.cli import main

    data = make_imagefolder(tmp_path / "data")
    cpus = _largest_node_cpus()
    assert ex.with_default_cpus(ex.SlurmOptions()).cpus == min(ex.DEFAULT_SLURM_CPUS, cpus)  # the default fits
    refusals = {
        ("--slurm-cpus", str(cpus + 1)): f"--slurm-cpus {cpus + 1}, but the largest node of partition local has "
                                         f"{cpus} CPUs; lower it or choose another --slurm-partition",
        ("--slurm-cpus", "1", "--threads", str(cpus + 1)):
            f"--threads {cpus + 1} (each task asks max(--slurm-cpus, --threads) CPUs), but the largest node of "
            f"partition local has {cpus} CPUs; lower it or choose another --slurm-partition",
        ("--slurm-mem", "64T"): "--slurm-mem 64T, but the largest node of partition local has ",
        ("--slurm-gres", "gpu:1"): "--slurm-gres gpu:1, but no node of partition local has gpu (GRES there: none)",
        ("--slurm-partition", "nosuch"): "--slurm-partition nosuch: Slurm says ",
    }
    for options, said in refusals.items():
        assert main(_cli_slurm_sweep(tmp_path, data, "refused", *options)) == 2, options
        err = capsys.readouterr().err
        assert err.startswith(f"srlib: error: {said}") and err.count("\n") == 1, (options, err)
    assert not list((tmp_path / "refused").rglob("job.json"))  # nothing was submitted


@pytest.fixture
def short_partition(slurm_cluster):
    """A partition `short` with a 1-minute MaxTime on the test node, for the time-limit faults."""
    made = subprocess.run(["scontrol", "create", "PartitionName=short", "Nodes=ALL", "MaxTime=1", "State=UP"],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot add a partition to this Slurm: {made.stderr.strip()}")
    yield "short"
    subprocess.run(["scontrol", "delete", "PartitionName=short"], capture_output=True)


def test_a_time_limit_above_the_partitions_is_refused(tmp_path, short_partition):
    data = make_imagefolder(tmp_path / "data")
    options = ex.SlurmOptions(partition=short_partition, time="10", cpus=1)
    with pytest.raises(Exception, match=r"^--slurm-time 10 \(10 min\), but partition short allows at most 1 min; "):
        run_sweep(tmp_path, data, "too-long", ["original"], executor="slurm", slurm=options)


@pytest.mark.parametrize("fault", ["PartitionConfig", "PartitionTimeLimit"])
def test_a_pending_task_that_can_never_start_ends_the_sweep(tmp_path, slurm_cluster, short_partition, capsys,
                                                            fault):
    """The check skipped (--slurm-skip-check): Slurm takes the array and leaves it pending for ever."""
    from srlib.cli import main

    data = make_imagefolder(tmp_path / "data")
    asks = (["--slurm-cpus", str(_largest_node_cpus() + 1)] if fault == "PartitionConfig" else
            ["--slurm-cpus", "1", "--slurm-partition", short_partition])
    args = _cli_slurm_sweep(tmp_path, data, fault, "--variants", "original", "resize_x2", "--slurm-skip-check", *asks)
    assert main(args) == 2
    key = data_key(data, tmp_path / "cache")
    err = capsys.readouterr().err
    fix = re.escape(ex.FATAL_REASONS[fault])
    assert re.fullmatch(rf"srlib: error: Slurm will never start original seed 0 \(job \d+_0\): pending with reason "
                        rf"{fault}: {fix}; the sweep cancelled its 2 pending task\(s\)\n", err), err
    rows = dict(status(tmp_path / fault / "runs"))
    assert [row.state for row in rows.values()] == ["failed", "failed"], rows
    job_ids = [row.job["job_id"] for row in rows.values()]
    assert not any(entry.live for entry in (ex.slurm_queue(job_ids) or {}).values())
    assert rows[f"smoke/{key}/original/seed0"].detail == (f"Slurm job {job_ids[0]} was cancelled by the sweep: "
                                                          f"pending with reason {fault}, which never clears: "
                                                          f"{ex.FATAL_REASONS[fault]}")


def _in_thread(target, *args, **kwargs):
    """Run `target` in a thread; returns a function that joins it and gives its result (or raises its error)."""
    import threading

    box: dict = {}

    def run():
        try:
            box["value"] = target(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()

    def join(timeout: float):
        thread.join(timeout)
        assert not thread.is_alive(), "still running"
        if "error" in box:
            raise box["error"]
        return box["value"]

    return join


def _job_ids(runs: Path) -> dict[str, str]:
    return {name: row.job.get("job_id") for name, row in status(runs)}


@pytest.mark.slow
def test_a_task_cancelled_while_pending_fails_and_a_rerun_submits_only_it(study, slurm_cluster, monkeypatch):
    from srlib.orchestration.reporter import Reporter

    root, data, key = study
    monkeypatch.setattr(Reporter, "PLAIN_EVERY_S", 0)  # every look at the queue is one progress line
    later = ex.SlurmOptions(cpus=1, time="10", extra={"begin": "now+3600"})  # pending (BeginTime) for an hour
    runs, lines = root / "cancelled" / "runs", []
    request = SweepRequest("smoke", 1, ["original", "resize_x2"], out=runs, notebooks_out=root / "cancelled" / "nb",
                           data=str(data), cache_dir=str(root / "cache"), overrides=SMALL, analysis=False, threads=1,
                           executor="slurm", slurm=later)
    join = _in_thread(sweep, request, live=False, log=lines.append)
    _wait_for(lambda: any(", 2 queued (BeginTime), 0 failed" in line for line in lines), 120,
              "the progress line to say why both tasks wait")
    ids = _job_ids(runs)
    first, second = ids[f"smoke/{key}/original/seed0"], ids[f"smoke/{key}/resize_x2/seed0"]
    row = dict(status(runs))[f"smoke/{key}/resize_x2/seed0"]
    waits = ex.WAITING_REASONS["BeginTime"]
    assert (row.state, row.detail) == ("queued", f"Slurm job {second} pending: BeginTime ({waits})")
    subprocess.run(["scontrol", "update", f"jobid={first}", "StartTime=now"], check=True)  # this one may start
    subprocess.run(["scancel", second], check=True)
    result = join(300)
    assert result.done == [f"smoke-{key}-original-seed0"], (result, lines)
    assert result.failed == {f"smoke-{key}-resize_x2-seed0": f"Slurm job {second} was cancelled before it started; "
                                                             "rerun the sweep to submit it again"}, lines
    row = dict(status(runs))[f"smoke/{key}/resize_x2/seed0"]
    assert (row.state, row.detail) == ("failed", result.failed[f"smoke-{key}-resize_x2-seed0"])

    result, lines = run_sweep(root, data, "cancelled", ["original", "resize_x2"], **SLURM)
    assert len(result.submitted) == 1 and result.skipped == [f"smoke-{key}-original-seed0"], (result, lines)
    assert result.done == [f"smoke-{key}-resize_x2-seed0"] and not result.failed, (result, lines)
    for v in ("original", "resize_x2"):
        assert outcome(runs, key, v) == outcome(root / "sequential" / "runs", key, v), v


@pytest.mark.slow
def test_no_wait_leaves_the_analysis_to_a_dependent_slurm_job(study, slurm_cluster, weights_dir, monkeypatch):
    import pickle

    import submitit

    root, data, key = study
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights_dir.resolve()))  # the SR-quality page, run by the job
    result, lines = run_sweep(root, data, "no-wait", ["original"], wait=False, analysis=True, **SLURM)
    assert len(result.submitted) == 1, lines
    found = [re.search(r"follow as Slurm job (\d+) \(afterany\)", line) for line in lines]
    finisher = next(m.group(1) for m in found if m)
    _wait_for(lambda: not any(e.live for e in (ex.slurm_queue([finisher]) or {}).values()), 600,
              "the analysis job to end")
    job = submitit.SlurmJob(folder=root / "no-wait" / "runs" / "smoke" / "slurm" / "%j", job_id=finisher)
    outcome_of_job, said = pickle.loads(job.paths.result_pickle.read_bytes())
    assert (outcome_of_job, said) == ("success", "analysis: 2 done, 0 failed"), said
    assert (run_dir(root / "no-wait" / "runs", "smoke", key, "original", 0) / "record.json").is_file()  # it ran after
    for notebook in ("sr_quality.ipynb", "compare.ipynb"):
        assert (root / "no-wait" / "nb" / notebook).is_file(), notebook


def _epochs_lasting(seconds: float, data: Path, cache: Path, scratch: Path, **config) -> int:
    """How many epochs of this run take about `seconds` on this machine now, from two epochs timed here."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "SRLIB_THREADS": "1"}
    options = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
    subprocess.run([sys.executable, "-m", "srlib", "train", "--profile", "smoke", "--epochs", "2", *options,
                    "--out", str(scratch), "--data", str(data), "--cache-dir", str(cache)], cwd=ROOT, env=env,
                   check=True, capture_output=True, timeout=600)
    record = json.loads(next(scratch.rglob("record.json")).read_text())
    return max(6, round(seconds / max(e["seconds"] for e in record["epochs"])))


@pytest.mark.slow
def test_a_task_past_its_time_limit_is_requeued_and_ends_with_the_same_record(tmp_path, slurm_cluster):
    """A 2-minute limit, warned 30 s before it (Slurm may warn up to a minute earlier, so at 60-90 s): submitit
    checkpoints and requeues the task, which resumes from its last epoch and ends as an uninterrupted run does."""
    data = make_imagefolder(tmp_path / "data", train_per_class=100, test_per_class=3)
    config = {"variant": "resize_x2", "train_size": 1000, "test_size": 30}
    # About 100 s of training: past the first warning, and done within the three requeues submitit allows.
    epochs = _epochs_lasting(100, data, tmp_path / "cache", tmp_path / "timing", **config)
    longer = {"epochs": epochs, "train_size": 1000, "test_size": 30}
    reference = _in_thread(run_sweep, tmp_path, data, "plain", ["resize_x2"], longer, jobs=1)
    options = ex.SlurmOptions(cpus=1, time="2", signal_delay=30)
    result, lines = run_sweep(tmp_path, data, "slurm", ["resize_x2"], longer, executor="slurm", slurm=options)
    assert not reference(600)[0].failed
    assert not result.failed, (result.failed, lines)
    assert any(line.startswith("[sweep] again  resize_x2 seed 0") for line in lines), lines
    key = data_key(data, tmp_path / "cache")
    folder = run_dir(tmp_path / "slurm" / "runs", "smoke", key, "resize_x2", 0)
    record = json.loads((folder / "record.json").read_text())
    assert record["resumes"] and record["resumes"][0]["from_epoch"] >= 1, record["resumes"]
    slurm_log = Path(read_job(folder)["slurm_log"]).read_text()
    assert "this job is timed-out" in slurm_log and "DUE TO JOB REQUEUE" in slurm_log, slurm_log[-2000:]
    assert (outcome(tmp_path / "slurm" / "runs", key, "resize_x2")
            == outcome(tmp_path / "plain" / "runs", key, "resize_x2"))


def test_a_second_test_slurm_starts_beside_a_running_one(tmp_path, slurm_cluster):
    """Slurm's default ports held (as a workstation's own Slurm holds them) and this session's cluster up: another
    cluster from scripts/slurm_local.sh picks free ports and its own folders, and runs a job."""
    held = []
    for port in (6817, 6818):
        sock = socket.socket()
        try:
            sock.bind(("", port))
            sock.listen()
            held.append(sock)
        except OSError:  # already held, by a real Slurm or another process: as good for this test
            sock.close()
    state = tmp_path / "second"
    env = {**os.environ, "SRLIB_SLURM_DIR": str(state)}
    env.pop("SRLIB_SLURM_CTLD_PORT", None)
    env.pop("SRLIB_SLURM_D_PORT", None)
    script = str(ROOT / "scripts" / "slurm_local.sh")
    try:
        started = subprocess.run([script, "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr
        conf = started.stdout.strip().rsplit("=", 1)[1]
        ports = dict(re.findall(r"^(SlurmctldPort|SlurmdPort)=(\d+)$", Path(conf).read_text(), re.M))
        first = dict(re.findall(r"^(SlurmctldPort|SlurmdPort)=(\d+)$", Path(slurm_cluster).read_text(), re.M))
        assert not {"6817", "6818", *first.values()} & set(ports.values()), (ports, first)
        ran = subprocess.run(["srun", "-N1", "-n1", "hostname"], env={**env, "SLURM_CONF": conf}, capture_output=True,
                             text=True, timeout=120)
        assert ran.returncode == 0 and ran.stdout.strip(), ran.stderr
        assert subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0  # the session's one still answers
    finally:
        subprocess.run([script, "stop"], env=env, capture_output=True, timeout=120)
        for sock in held:
            sock.close()
