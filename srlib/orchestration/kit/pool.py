"""The job's processes on the GPU machine: `srlib train` runs (at most a schedule's slots at a time, under MPS
when the schedule says so) and `srlib sr-quality` beside them, each in its own session with its log, all stopped by the
job's deadline."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ...runs import ROOT
from ..executors import kill_group
from .job import KitRun
from .layout import sr_checkpoints

if TYPE_CHECKING:
    from .schedule import RunKey, WindowSchedule


@dataclass
class Launched:
    variant: str
    process: subprocess.Popen
    log: Path
    started: float
    ended: float | None = None
    seed: int = 0
    stopped_by_kit: bool = False  # interrupted (then killed) by `wait` at the job's deadline: a clean stop


def _start(command: list[str], log: Path, env: dict) -> subprocess.Popen:
    """`command` in a session of its own (the deadline stops it and whatever it started), its output added to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"$ {shlex.join(command)}\n")
        handle.flush()
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)


def _launch_one(state: KitRun, key: RunKey, env: dict, train_args: list[str], threads: str) -> Launched:
    deadline = dt.datetime.fromtimestamp(state.deadline, tz=dt.timezone.utc).isoformat()
    command = [sys.executable, "-m", "srlib", "train", "--variant", key.variant, "--profile", state.settings.profile,
               "--seed", str(key.seed), "--out", str(state.runs), "--device", state.settings.device,
               "--deadline", deadline, *state.settings.train_options(), *train_args]
    path = state.work / "logs" / f"train_{key.variant}_seed{key.seed}.log"
    process = _start(command, path, {**env, "OMP_NUM_THREADS": threads})
    options = f", {shlex.join(train_args)}" if train_args else ""
    state.log(f"[kit] started {key} (pid {process.pid}, log {path.name}{options})")
    return Launched(key.variant, process, path, time.time(), seed=key.seed)


def run_schedule(state: KitRun, schedule: WindowSchedule, env: dict, train_args: list[str],
                 dataset: str) -> list[Launched]:
    """Start the schedule's runs, at most `schedule.slots` at a time (under MPS when it says so), and wait for all."""
    from ...cost import RUN_STARTUP_S
    from .probe import find_mps_control, mps_daemon

    pending = [*schedule.runs, *([schedule.span] if schedule.span else [])]
    binary = find_mps_control() if schedule.mode == "mps" else None
    if schedule.mode == "mps" and binary is None:
        state.log("[kit] the schedule wanted MPS but nvidia-cuda-mps-control is gone: running the runs one at a time")
        schedule.slots = 1
    threads = str(max(1, (os.cpu_count() or 2) // max(1, schedule.slots)))
    with mps_daemon(binary) if binary else contextlib.nullcontext(env) as run_env:
        run_env = {**env, **{k: v for k, v in run_env.items() if k.startswith("CUDA_MPS")}}
        launched: list[Launched] = []
        quality = _sr_quality(state, [k.variant for k in pending], env, dataset)
        extra = [quality] if quality else []

        def start_next() -> None:
            while pending and sum(x.ended is None for x in launched) < schedule.slots:
                if state.left() < RUN_STARTUP_S:
                    state.log(f"[kit] not started, too close to the deadline: {', '.join(map(str, pending))}")
                    pending.clear()
                    return
                key = pending.pop(0)
                launched.append(_launch_one(state, key, run_env, [*train_args, *schedule.train_args(key)], threads))

        start_next()
        wait(state, launched, extra, start_next)
    return launched + extra


def _sr_quality(state: KitRun, chosen: list[str], env: dict, dataset: str) -> Launched | None:
    """PSNR/SSIM of SR vs bicubic for the SR scales being trained, in a subprocess beside the runs."""
    from ...runs import sr_quality_path
    from ...upscale import DEFAULT_SR_MODEL

    scales = sorted({c.scale for c in sr_checkpoints(chosen) if c.model == DEFAULT_SR_MODEL})
    target = sr_quality_path(state.runs, state.settings.profile, dataset)
    if not scales or target.is_file():
        return None
    # The default model only: the kit holds the weights of the scales and models being trained, no others.
    command = [sys.executable, "-m", "srlib", "sr-quality", "--scales", *map(str, scales), "--models",
               DEFAULT_SR_MODEL, "--n", str(state.settings.sr_quality_images), "--out", str(target)]
    path = state.work / "logs" / "sr_quality.log"
    process = _start(command, path, {**env, "OMP_NUM_THREADS": "2"})
    state.log(f"[kit] started sr-quality x{', x'.join(map(str, scales))} (pid {process.pid})")
    return Launched("sr_quality", process, path, time.time())


def wait(state: KitRun, launched: list[Launched], extra: list[Launched], start_next: Callable[[], None],
         grace_s: float = 10.0) -> None:
    """Wait for every process, starting queued runs as slots free up; past the packing reserve's start, interrupt
    (then kill) what still runs: an epoch that ran long (`srlib train` stops by itself before its deadline). An
    interrupted run keeps its checkpoint of the finished epochs, so a rerun resumes it."""
    hard_stop = state.deadline + max(0.0, (state.end - state.deadline) / 2 - grace_s)
    interrupted: dict[int, float] = {}
    while any(item.ended is None for item in launched + extra):
        for item in launched + extra:
            if item.ended is None and item.process.poll() is not None:
                item.ended = time.time()
                state.log(f"[kit] {item.variant} seed {item.seed} ended with exit code {item.process.returncode} "
                          f"after {item.ended - item.started:.0f} s")
                start_next()
        now = time.time()
        for item in launched + extra:
            if item.ended is not None:
                continue
            pid = item.process.pid
            if now >= hard_stop and pid not in interrupted:
                state.log(f"[kit] {item.variant} still running at the packing deadline: interrupting it")
                kill_group(pid, signal.SIGINT)  # its own session: the run and anything it started
                interrupted[pid] = now
                item.stopped_by_kit = True
            elif pid in interrupted and now - interrupted[pid] > grace_s:
                kill_group(pid, signal.SIGKILL)
        time.sleep(0.5)
