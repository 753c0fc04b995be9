"""Local worker processes: how many at once and where (`Slots`), and the pool that starts and reaps them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..runs import ROOT
from .processes import kill_group
from .tasks import Task


def visible_gpus() -> list[str]:
    """The GPUs this process may use (honouring CUDA_VISIBLE_DEVICES), as the ids to hand to workers."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [g.strip() for g in listed.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable torch CUDA means no GPUs to spread over
        return []


@dataclass
class Slots:
    """How local workers share the machine: `jobs` at once, each on one GPU or cores/jobs threads."""

    jobs: int
    gpus: list[str]
    threads: int

    def env(self, slot: int) -> dict[str, str]:
        env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "SRLIB_THREADS": str(self.threads)}
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def where(self, slot: int) -> str:
        return f"GPU {self.gpus[slot % len(self.gpus)]}" if self.gpus else f"cpu, {self.threads} thread(s)"


def plan_slots(jobs: int | None = None, runs_per_gpu: int = 1, threads: int | None = None) -> Slots:
    """GPUs x runs_per_gpu slots with GPUs; on a CPU `jobs` (default CPU_JOBS) sharing the cores."""
    if runs_per_gpu < 1 or (jobs is not None and jobs < 1) or (threads is not None and threads < 1):
        raise ConfigError(f"--jobs, --runs-per-gpu and --threads must be >= 1; got {jobs}, {runs_per_gpu}, {threads}")
    gpus = visible_gpus()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if jobs is None:
        jobs = len(gpus) * runs_per_gpu if gpus else CPU_JOBS
    return Slots(jobs, gpus, threads or max(1, cores // jobs))


# One run at a time with every core: on a 2-core machine the preview study was faster with --jobs 1 (2 threads)
# than with --jobs 2 (1 thread each; measured times: book/guide/speed.md): the convolutions use
# both threads well, and two jobs leave the last, longest run (sr_x4) on one core.
CPU_JOBS = 1


@dataclass
class Worker:
    task: Task
    process: subprocess.Popen


class LocalPool:
    """Runs tasks as worker processes (`Task.worker_command`), at most `slots.jobs` at once."""

    STAGGER_S = 1.0  # between kernel starts: fewer ZMQ port collisions to retry

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.workers: dict[int, Worker] = {}
        self._last_start = 0.0

    def free_slot(self) -> int | None:
        return next((s for s in range(self.slots.jobs) if s not in self.workers), None)

    def start(self, task: Task, slot: int) -> None:
        time.sleep(max(0.0, self._last_start + self.STAGGER_S - time.monotonic()))
        Path(task.log).parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "w") as log:  # a new attempt starts a new log
            process = subprocess.Popen(  # its own session and group: its kernel dies with it
                task.worker_command(), cwd=ROOT, env={**os.environ, **self.slots.env(slot)}, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self._last_start = time.monotonic()
        self.workers[slot] = Worker(task, process)

    def reap(self) -> list[tuple[Worker, int]]:
        """Workers that ended since the last call, with their exit codes."""
        ended = []
        for slot, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is not None:
                kill_group(worker.process.pid)  # a kernel left behind by a killed worker
                del self.workers[slot]
                ended.append((worker, code))
        return ended

    def stop_all(self) -> None:
        for worker in self.workers.values():
            kill_group(worker.process.pid, signal.SIGTERM)
        for worker in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(10)
            kill_group(worker.process.pid)
