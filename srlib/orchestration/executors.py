"""Where a sweep's runs execute, behind the one interface its one wait loop drives (as submitit's
`Executor.submit -> Job`): worker processes on this machine (`LocalExecutor`) or a Slurm job array (`SlurmExecutor`).

`submit` queues or submits the tasks once; `poll` says what the unfinished ones do now, its own bookkeeping
(starting and reaping workers, reading squeue, writing a failure into job.json) done there. An executor keeps no
copy of what it reported: the wait loop alone remembers what it saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ..runs import ROOT
from . import local, slurm
from .slurm import SlurmFinish, SlurmOptions
from .states import RunState, run_state
from .tasks import Task, last_error_line, read_job, write_job

# A reason that never clears, seen on this many looks in a row, ends the sweep: just after submitting, Slurm says
# PartitionConfig for any partition limit, and names the limit (e.g. PartitionTimeLimit) at its next scheduling pass.
FATAL_LOOKS = 3

RecordOf = Callable[[Task], dict | None]  # a task's finished record, or None (the sweep knows what counts)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to the process group led by `pid` (a process started with `start_new_session=True`): the
    run and anything it started. A group that has already gone is not an error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


@dataclass(frozen=True)
class Unrunnable:
    """Runs an executor will never start (and has cancelled), and the sweep's error saying why and what to fix."""

    failed: dict[str, str]  # run -> why it was cancelled
    message: str


class Executor(Protocol):
    parallel: int  # runs at once, for the ETA
    poll_s: float  # seconds between looks

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]: ...  # -> Slurm job ids

    # What each of `tasks` (submitted, not ended) does now; one it cannot tell yet is left out. Done, failed: final.
    def poll(self, tasks: list[Task]) -> dict[str, RunState]: ...

    def where(self, name: str, state: RunState) -> str: ...  # where a run that started runs, in words

    def unrunnable(self, states: dict[str, RunState]) -> Unrunnable | None: ...  # runs Slurm will never start

    def stop(self) -> None: ...  # interrupted: clean up


class LocalExecutor:
    """Worker processes on this machine (`Task.worker_command`), at most `slots.jobs` at once, started in task order
    as slots free; each in its own session, so its kernel dies with it."""

    poll_s = 0.3  # s between looks: reaping a worker costs nothing
    STAGGER_S = 1.0  # between kernel starts: fewer ZMQ port collisions to retry

    def __init__(self, slots: local.Slots, record_of: RecordOf) -> None:
        self.slots, self.record_of, self.parallel = slots, record_of, slots.jobs
        self.queue: deque[Task] = deque()
        self.slot_of: dict[str, int] = {}
        self.workers: dict[int, tuple[Task, subprocess.Popen]] = {}  # slot -> the task its worker runs
        self._last_start = 0.0

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]:
        for task in tasks:
            write_job(task, "queued", executor="local")  # the sweep's pid: `srlib status` sees if it is gone
        self.queue.extend(tasks)
        return []

    def poll(self, tasks: list[Task]) -> dict[str, RunState]:
        # Reaped first, so that a slot freed now is filled now; a reaped worker's end is reported this once.
        states = {task.name: self._ended(task, code) for task, code in self._reap()}
        free = [s for s in range(self.slots.jobs) if s not in self.workers]
        while self.queue and free:
            self._start(self.queue.popleft(), free.pop(0))
        running = {task.name for task, _ in self.workers.values()}
        return {t.name: states.get(t.name) or RunState("running" if t.name in running else "queued") for t in tasks}

    def _start(self, task: Task, slot: int) -> None:
        time.sleep(max(0.0, self._last_start + self.STAGGER_S - time.monotonic()))
        task.log.parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "w") as log:  # a new attempt starts a new log
            process = subprocess.Popen(task.worker_command(), cwd=ROOT, env={**os.environ, **self.slots.env(slot)},
                                       stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)
        self._last_start = time.monotonic()
        self.workers[slot] = (task, process)
        self.slot_of[task.name] = slot

    def _reap(self) -> list[tuple[Task, int]]:
        """The tasks whose workers ended since the last look, with their exit codes."""
        ended = []
        for slot, (task, process) in list(self.workers.items()):
            if (code := process.poll()) is not None:
                kill_group(process.pid)  # a kernel left behind by a killed worker
                del self.workers[slot]
                ended.append((task, code))
        return ended

    def _ended(self, task: Task, code: int) -> RunState:
        if code == 0 and self.record_of(task) is not None:
            return RunState("done")
        job = read_job(task.run_dir) or {}
        if job.get("state") == "failed" and job.get("why"):  # the worker said why
            return RunState("failed", job["why"], job)
        why = (f"its worker was killed (signal {-code})" if code < 0 else
               "the notebook ended without a complete record" if code == 0 else
               last_error_line(task.log) or f"its worker exited with code {code}")
        return say_failed(task, why, job)

    def where(self, name: str, state: RunState) -> str:
        return self.slots.where(self.slot_of[name])

    def unrunnable(self, states: dict[str, RunState]) -> Unrunnable | None:
        return None  # a local run always gets a slot in the end

    def stop(self) -> None:
        """Interrupted (Ctrl-C, SIGTERM, a bug): no worker may outlive the sweep."""
        for _, process in self.workers.values():
            kill_group(process.pid, signal.SIGTERM)
        for task, process in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(10)
            kill_group(process.pid)
            say_failed(task, "the sweep was interrupted; rerun it to resume", {"executor": "local"})


class SlurmExecutor:
    """One Slurm array per sweep (submitit); a task an earlier --no-wait sweep still has queued or running is waited
    for, not submitted again. What each task does comes from its job.json (read once per look) and squeue."""

    poll_s = 3.0  # s between looks: each asks squeue (the cluster's controller) once

    def __init__(self, record_of: RecordOf, options: SlurmOptions | None = None, folder: Path | None = None,
                 name: str = "srlib", threads: int | None = None) -> None:
        self.record_of, self.options = record_of, options or SlurmOptions()
        self.folder, self.name, self.threads = folder, name, threads
        self.parallel = self.options.array_parallelism
        self.tasks: dict[str, Task] = {}
        self.gone_once: set[str] = set()  # gone from the queue without saying so: trusted on the second look
        self.stuck: dict[str, int] = {}  # consecutive looks that found a task pending for a reason that never clears
        self.checked = False  # the request passed check_request

    def check_request(self) -> None:
        """Refuse, in one line naming the option, a request no node can run (it would pend for ever); the sweep
        asks this before any other work (decoding the data to find its key takes minutes on a login node)."""
        self.options = slurm.with_default_cpus(self.options)
        self.threads = self.threads or self.options.cpus
        if self.options.check and not self.checked:
            slurm.check_slurm_request(self.folder, self.options, self.threads)
        self.checked = True

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]:
        queue = slurm.slurm_queue()
        alive, submit = [], []
        for task in tasks:
            state = run_state(read_job(task.run_dir), False, queue)
            (alive if state.state in ("queued", "running") and state.job.get("job_id") else submit).append(task)
        if alive:
            say(f"[sweep] {len(alive)} run(s) already queued or running in Slurm from an earlier sweep; "
                "waiting for them instead of submitting them again")
        ids = []
        if submit:
            self.check_request()
            jobs = slurm.submit_slurm(submit, self.folder, self.options, self.name, self.threads)
            for task, job in zip(submit, jobs, strict=True):
                write_job(task, "queued", executor="slurm", job_id=job.job_id, slurm_log=str(job.paths.stderr))
            ids = [job.job_id for job in jobs]
            say(f"[sweep] submitted {len(ids)} Slurm task(s) as array job {ids[0].split('_')[0]}; "
                f"Slurm logs in {self.folder}")
        self.watch(alive + submit)
        return ids

    def watch(self, tasks: list[Task]) -> None:
        """Follow tasks that are already in Slurm (their job.json names the job)."""
        self.tasks.update((t.name, t) for t in tasks)

    def follow_with(self, finish: SlurmFinish, name: str) -> str | None:
        """Submit `finish` to run after every watched task has ended (afterany); its job id, None if none."""
        arrays = sorted({(read_job(t.run_dir) or {}).get("job_id", "").split("_")[0] for t in self.tasks.values()}
                        - {""})
        if not arrays:
            return None
        finisher = slurm.slurm_executor(self.folder, self.options, name, self.threads,
                                        dependency="afterany:" + ":".join(arrays))
        return finisher.submit(finish).job_id

    def poll(self, tasks: list[Task]) -> dict[str, RunState]:
        jobs = {t.name: read_job(t.run_dir) for t in tasks}  # the one read of each job.json in this look
        queue = slurm.slurm_queue([job["job_id"] for job in jobs.values() if job and job.get("job_id")])
        states = {t.name: self._state(t, jobs[t.name], queue) for t in tasks}
        return {name: state for name, state in states.items() if state is not None}

    def _state(self, task: Task, job: dict | None, queue: dict[str, slurm.QueueEntry] | None) -> RunState | None:
        """What `task` does, from its job.json `job` and squeue; None while that is not yet to be trusted."""
        said = job or {}
        entry = (queue or {}).get(said.get("job_id"))
        # The record is written before the notebook is: done once the worker says so or has left the queue.
        ended = said.get("state") == "done" or (queue is not None and not (entry and entry.live))
        state = run_state(job, ended and self.record_of(task) is not None, queue)
        unsaid = state.state == "missing" or (state.state == "failed" and said.get("state") != "failed")
        if unsaid and task.name not in self.gone_once:  # gone without saying so: trusted on the second look
            self.gone_once.add(task.name)
            return None
        if state.state == "missing":  # its job.json went, or it ended without a record: waiting would never end
            state = RunState("failed", state.detail or "its job.json is gone", state.job)
        if state.state == "failed":
            state = self._failed(task, state)
        return state

    def _failed(self, task: Task, state: RunState) -> RunState:
        """The reason with the log's last error; job.json says it too (`srlib status` after squeue forgets)."""
        why = state.detail
        log_line = last_error_line(task.log)
        if log_line and log_line not in why:
            why = f"{why} ({log_line})"
        if state.job.get("state") != "failed":
            say_failed(task, state.detail, state.job)
        return RunState("failed", why, state.job, state.reason)

    def where(self, name: str, state: RunState) -> str:
        host = f" on {state.job['host']}" if state.job.get("state") == "running" else ""
        return f"Slurm job {state.job.get('job_id')}{host}"

    def unrunnable(self, states: dict[str, RunState]) -> Unrunnable | None:
        """Slurm says a task can never start (its request does not fit): cancel the sweep's pending tasks and mark
        them failed (a rerun submits them again, after the request check)."""
        for name, st in states.items():
            fatal = st.state == "queued" and st.reason in slurm.FATAL_REASONS
            self.stuck[name] = self.stuck.get(name, 0) + 1 if fatal else 0
        never = {n: states[n] for n, looks in self.stuck.items() if looks >= FATAL_LOOKS}
        if not never:
            return None
        waiting = {n: st for n, st in states.items() if st.state == "queued" and st.job.get("job_id")}
        slurm.cancel_slurm([st.job["job_id"] for st in waiting.values()])
        failed = {}
        for n, st in waiting.items():
            why = f"Slurm job {st.job['job_id']} was cancelled by the sweep: pending with reason {st.reason or '?'}"
            if st.reason in slurm.FATAL_REASONS:
                why += f", which never clears: {slurm.FATAL_REASONS[st.reason]}"
            failed[n] = say_failed(self.tasks[n], why, st.job).detail
        name, first = next(iter(never.items()))
        running = sum(st.state == "running" for st in states.values())
        left = f"; {running} running task(s) go on (a rerun waits for them)" if running else ""
        return Unrunnable(failed, f"Slurm will never start {self.tasks[name].label} (job {first.job['job_id']}): "
                                  f"pending with reason {first.reason}: {slurm.FATAL_REASONS[first.reason]}; the "
                                  f"sweep cancelled its {len(waiting)} pending task(s){left}")

    def stop(self) -> None:
        pass  # the tasks go on in Slurm; a rerun waits for them


def say_failed(task: Task, why: str, job: dict) -> RunState:
    """Write into job.json that the run failed and why (`srlib status` reads it after the sweep and squeue forget
    the run), keeping the executor, Slurm job and log that `job`, its job.json before, names."""
    executor = job.get("executor", "local")
    slurm_job = {k: job.get(k) for k in ("job_id", "slurm_log")} if executor == "slurm" else {}
    write_job(task, "failed", executor=executor, why=why, **slurm_job)
    return RunState("failed", why, job)
