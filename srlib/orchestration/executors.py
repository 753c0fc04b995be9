"""Where a sweep's runs execute, behind the one small interface its wait loop drives (srlib.orchestration.sweep):
worker processes on this machine (`LocalExecutor`) or a Slurm job array (`SlurmExecutor`).

An executor is given the tasks once (`submit`: queue them for the local pool, or submit the array), then asked
again and again what each one is doing (`poll`: done, running, queued with Slurm's reason, or failed with why);
its own bookkeeping (starting a worker in a free slot, reaping it, reading squeue, writing job.json) happens
there. `unrunnable` ends a sweep Slurm will never run, `stop` cleans up after an interruption. submitit's
`Executor.submit -> Job` is the model: one interface, so the caller has one wait loop.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import local, slurm
from .slurm import SlurmFinish, SlurmOptions
from .states import RunState, run_state
from .tasks import Task, last_error_line, read_job, write_job

LOCAL_POLL_S = 0.3
SLURM_POLL_S = 3.0
# A reason that never clears, seen on this many looks in a row, ends the sweep: just after submitting, Slurm says
# PartitionConfig for any partition limit, and names the limit (e.g. PartitionTimeLimit) at its next scheduling pass.
FATAL_LOOKS = 3

RecordOf = Callable[[Task], dict | None]  # a task's finished record, or None (the sweep knows what counts)


@dataclass(frozen=True)
class Unrunnable:
    """Runs an executor will never start (and has cancelled), and the sweep's error saying why and what to fix."""

    failed: dict[str, str]  # run -> why it was cancelled
    message: str


class Executor(Protocol):
    parallel: int  # runs at once, for the ETA

    @property
    def poll_s(self) -> float: ...  # seconds between looks

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]: ...  # -> Slurm job ids

    def poll(self) -> dict[str, RunState]: ...  # every submitted task; done and failed are final

    def where(self, name: str, state: RunState) -> str: ...  # where a run that started runs, in words

    def unrunnable(self, states: dict[str, RunState]) -> Unrunnable | None: ...

    def stop(self) -> None: ...


class LocalExecutor:
    """Worker processes on this machine, at most `slots.jobs` at once, started in task order as slots free."""

    def __init__(self, slots: local.Slots, record_of: RecordOf) -> None:
        self.slots, self.record_of, self.parallel = slots, record_of, slots.jobs
        self.tasks: dict[str, Task] = {}
        self.queue: deque[Task] = deque()
        self.ended: dict[str, RunState] = {}
        self.slot_of: dict[str, int] = {}
        self.pool: local.LocalPool | None = None

    @property
    def poll_s(self) -> float:
        return LOCAL_POLL_S

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]:
        self.pool = local.LocalPool(self.slots)
        for task in tasks:
            write_job(task, "queued", executor="local")  # the sweep's pid: `srlib status` sees if it is gone
        self.tasks.update((t.name, t) for t in tasks)
        self.queue.extend(tasks)
        return []

    def poll(self) -> dict[str, RunState]:
        assert self.pool is not None, "submit first"
        for worker, code in self.pool.reap():  # first, so that a slot freed now is filled now
            self.ended[worker.task.name] = self._ended(worker.task, code)
        while self.queue and (slot := self.pool.free_slot()) is not None:
            task = self.queue.popleft()
            self.pool.start(task, slot)
            self.slot_of[task.name] = slot
        running = {w.task.name for w in self.pool.workers.values()}
        return {n: self.ended.get(n) or RunState("running" if n in running else "queued") for n in self.tasks}

    def _ended(self, task: Task, code: int) -> RunState:
        if code == 0 and self.record_of(task) is not None:
            return RunState("done")
        job = read_job(task.run_dir) or {}
        why = (job.get("why") if job.get("state") == "failed" else None) or (
            f"its worker was killed (signal {-code})" if code < 0 else
            "the notebook ended without a complete record" if code == 0 else
            last_error_line(task.log) or f"its worker exited with code {code}")
        write_job(task, "failed", executor="local", why=why)
        return RunState("failed", why)

    def where(self, name: str, state: RunState) -> str:
        return self.slots.where(self.slot_of[name])

    def unrunnable(self, states: dict[str, RunState]) -> Unrunnable | None:
        return None  # a local run always gets a slot in the end

    def stop(self) -> None:
        """Interrupted (Ctrl-C, SIGTERM, a bug): no worker may outlive the sweep."""
        if self.pool is None:
            return
        running = [w.task for w in self.pool.workers.values()]
        self.pool.stop_all()
        for task in running:
            write_job(task, "failed", executor="local", why="the sweep was interrupted; rerun it to resume")


class SlurmExecutor:
    """One Slurm array per sweep (submitit); a task an earlier --no-wait sweep still has queued or running is waited
    for, not submitted again. What each task does comes from its job.json and squeue."""

    def __init__(self, record_of: RecordOf, options: SlurmOptions | None = None, folder: Path | None = None,
                 name: str = "srlib", threads: int | None = None) -> None:
        self.record_of, self.options = record_of, options or SlurmOptions()
        self.folder, self.name, self.threads = folder, name, threads
        self.parallel = self.options.array_parallelism
        self.tasks: dict[str, Task] = {}
        self.ended: dict[str, RunState] = {}
        self.seen: dict[str, str] = {}
        self.gone_once: set[str] = set()  # gone from the queue without saying so: trusted on the second look
        self.stuck: dict[str, int] = {}  # consecutive looks that found a task pending for a reason that never clears

    @property
    def poll_s(self) -> float:
        return SLURM_POLL_S

    def submit(self, tasks: list[Task], say: Callable[[str], None]) -> list[str]:
        self.options = slurm.with_default_cpus(self.options)
        self.threads = self.threads or self.options.cpus
        queue = slurm.slurm_queue()
        alive, submit = [], []
        for task in tasks:
            state = run_state(Path(task.run_dir), False, queue)
            (alive if state.state in ("queued", "running") and state.job.get("job_id") else submit).append(task)
        if alive:
            say(f"[sweep] {len(alive)} run(s) already queued or running in Slurm from an earlier sweep; "
                "waiting for them instead of submitting them again")
        ids = []
        if submit:
            if self.options.check:  # a request no node can run would pend for ever: refuse it now, naming the option
                slurm.check_slurm_request(self.folder, self.options, self.threads)
            ids = slurm.submit_slurm(submit, self.folder, self.options, self.name, self.threads)
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

    def poll(self) -> dict[str, RunState]:
        pending = [t for n, t in self.tasks.items() if n not in self.ended]
        ids = [(read_job(t.run_dir) or {}).get("job_id") for t in pending]
        queue = slurm.slurm_queue([i for i in ids if i])
        states = {}
        for name, task in self.tasks.items():
            if name in self.ended:
                states[name] = self.ended[name]
                continue
            states[name] = state = self._state(task, queue)
            if state.state in ("done", "failed"):
                self.ended[name] = state
            self.seen[name] = state.state
        return states

    def _state(self, task: Task, queue: dict[str, slurm.QueueEntry] | None) -> RunState:
        record = self.record_of(task)
        job = read_job(task.run_dir) or {}
        entry = (queue or {}).get(job.get("job_id"))
        # The record is written before the notebook is: done once the worker says so or has left the queue.
        ended = job.get("state") == "done" or (queue is not None and not (entry and entry.live))
        state = run_state(Path(task.run_dir), record is not None and ended, queue)
        unsaid = state.state == "missing" or (state.state == "failed" and job.get("state") != "failed")
        if unsaid and task.name not in self.gone_once:
            self.gone_once.add(task.name)
            state = RunState("running" if self.seen.get(task.name) == "running" else "queued", "", state.job)
        elif state.state == "missing":  # its job.json went, or it ended without a record: waiting would never end
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
            write_job(task, "failed", executor="slurm", job_id=state.job.get("job_id"), why=state.detail,
                      slurm_log=state.job.get("slurm_log"))
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
            write_job(self.tasks[n], "failed", executor="slurm", job_id=st.job["job_id"], why=why,
                      slurm_log=st.job.get("slurm_log"))
            failed[n] = why
        name, first = next(iter(never.items()))
        running = sum(st.state == "running" for st in states.values())
        left = f"; {running} running task(s) go on (a rerun waits for them)" if running else ""
        return Unrunnable(failed, f"Slurm will never start {self.tasks[name].label} (job {first.job['job_id']}): "
                                  f"pending with reason {first.reason}: {slurm.FATAL_REASONS[first.reason]}; the "
                                  f"sweep cancelled its {len(waiting)} pending task(s){left}")

    def stop(self) -> None:
        pass  # the tasks go on in Slurm; a rerun waits for them
