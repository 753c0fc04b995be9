"""Local worker processes: how many at once and where (`Slots`); `executors.LocalExecutor` starts and reaps them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from .tasks import THREAD_VARS


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
        env = dict.fromkeys(THREAD_VARS, str(self.threads))
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        return env

    def where(self, slot: int) -> str:
        return f"GPU {self.gpus[slot % len(self.gpus)]}" if self.gpus else f"cpu, {self.threads} thread(s)"


def slot_layout(jobs: int | None = None, runs_per_gpu: int = 1, threads: int | None = None) -> Slots:
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
