"""What a run is doing (done, running, queued, failed, missing), from its record, its job.json (read once per look
by the caller) and Slurm's queue: the facts `srlib status` prints and the sweep's wait loop acts on."""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass, field

from ..runs import RECORD, run_dirs
from ..store import read_json_or_none
from . import slurm
from .slurm import QueueEntry, pending_words
from .tasks import read_job, run_phase


@dataclass
class RunState:
    """What `srlib status` and the progress line say about one run."""

    state: str  # done | running | queued | failed | missing
    detail: str = ""
    job: dict = field(default_factory=dict)
    reason: str = ""  # queued in Slurm: squeue's reason code (Resources, Priority, PartitionConfig, ...)


def run_state(job: dict | None, finished: bool, queue: dict[str, QueueEntry] | None) -> RunState:
    """The state of a run whose job.json says `job` (None: it has none); `queue` maps Slurm job ids to what
    squeue says (None: unknown)."""
    if finished:
        return RunState("done")
    if job is None:
        return RunState("missing")
    job_id = job.get("job_id")
    if job_id and queue is not None:
        return _slurm_run_state(job, job_id, queue.get(job_id))
    here = job.get("host") == socket.gethostname()
    if job["state"] == "failed":
        return RunState("failed", job.get("why", ""), job)
    if job["state"] == "queued":
        alive = not here or _alive(job.get("pid"))
        return RunState("queued" if alive else "missing", "" if alive else "its sweep is gone", job)
    if job["state"] == "running":
        if not job_id and here and not _alive(job.get("pid")):
            return RunState("failed", f"its worker (pid {job.get('pid')}) died without finishing (killed?)", job)
        return _running(job, job_id)
    return RunState("missing", "finished without a complete record", job)


def _slurm_run_state(job: dict, job_id: str, entry: QueueEntry | None) -> RunState:
    """A Slurm task's state from its job.json and what squeue says of its job (None: not listed at all)."""
    live = entry if entry is not None and entry.live else None
    if live is not None and live.waiting:
        again = job["state"] != "queued"  # it ran before: Slurm requeued it (preempted, or out of time)
        return RunState("queued", f"Slurm job {job_id} {'requeued, ' if again else ''}pending: "
                                  f"{pending_words(live.reason)}", job, live.reason)
    if job["state"] == "failed":
        if live is not None:  # ending, or already restarted: decided once it leaves the queue or writes job.json
            return RunState("running", f"on {job.get('host')} (Slurm job {job_id})", job)
        return RunState("failed", job.get("why", ""), job)
    if job["state"] == "queued":
        if live is not None:  # started; its worker has not written job.json yet
            return RunState("running", f"Slurm job {job_id} starting", job)
        return RunState("failed", left_before_start(job_id, entry), job)
    if job["state"] == "running":
        if live is None:
            how = f" ({entry.state.lower()})" if entry is not None else ""
            return RunState("failed", f"Slurm job {job_id} ended without finishing{how}: cancelled, killed, or out "
                                      "of time without a requeue", job)
        return _running(job, job_id)
    return RunState("missing", "finished without a complete record", job)


def _running(job: dict, job_id: str | None) -> RunState:
    since = time.strftime("%H:%M", time.localtime(job.get("since", 0)))
    phase = run_phase(job.get("log", ""))
    epoch = f", epoch {phase.done} of {phase.total} done" if phase and phase.name == "training" and phase.done else ""
    where = f"{job.get('host')}" + (f" (Slurm job {job_id})" if job_id else f" pid {job.get('pid')}")
    return RunState("running", f"on {where} since {since}{epoch}", job)


def left_before_start(job_id: str, entry: QueueEntry | None) -> str:
    """Why a task that never started is gone, in words; `entry` is squeue's last word on it (None: purged)."""
    if entry is None:
        return f"Slurm job {job_id} left the queue before it started (cancelled or purged); rerun the sweep"
    if entry.state == "CANCELLED":
        return f"Slurm job {job_id} was cancelled before it started; rerun the sweep to submit it again"
    return (f"Slurm job {job_id} ended ({entry.state.lower()}, reason {entry.reason}) before the run started; "
            "see its Slurm log")


def _alive(pid) -> bool:
    from ..store import _process_alive

    return isinstance(pid, int) and _process_alive(pid)


def status(out: str | os.PathLike = "runs", profile: str | None = None) -> list[tuple[str, RunState]]:
    """(run, state) for every run that has a folder under `out` (one profile, or all)."""
    jobs = {d: read_job(d) for d in run_dirs(out, profile)}
    queue = slurm.slurm_queue() if any((job or {}).get("job_id") for job in jobs.values()) else None
    rows = []
    for d, job in jobs.items():
        finished = (read_json_or_none(d / RECORD) or {}).get("status") == "complete"
        rows.append((d.relative_to(out).as_posix(), run_state(job, finished, queue)))  # profile/dataset/variant/seed<k>
    return rows
