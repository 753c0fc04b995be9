"""`srlib sweep`: run notebooks/train.ipynb once per variant and seed with papermill -- in parallel
worker processes on this machine or as a Slurm job array -- then the analysis notebooks and the book.

One failed run does not stop the others; the summary names it, its log file and its last error line,
and the exit code is non-zero. A rerun executes only what is missing or failed: a run whose executed
notebook ran with the same parameters after its record was finished is skipped without starting a
kernel, a Slurm task of an earlier `--no-wait` sweep that is still queued or running is waited for
rather than submitted again, and the analysis notebooks are skipped when no record is newer than them.

The terminal gets one line per run start and end and one live progress line; everything papermill and
the kernels print goes to a log file beside each executed notebook (`<notebook>.log`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..config import PROFILES, STUDY_VARIANTS, VARIANTS, expand_variants, make_config
from ..errors import ConfigError, SrlibError
from ..runs import NOTEBOOKS, ROOT
from ..store import directory_lock, write_json
from . import executors as ex
from .executors import RunState, SlurmOptions, Task

__all__ = ["NOTEBOOKS", "ROOT", "SweepResult", "finish", "status", "sweep"]
ANALYSIS = ("sr_quality.ipynb", "compare.ipynb")
BOOK_NOTEBOOKS = ROOT / "book" / "executed"  # where the book (_toc.yml) looks for executed notebooks
SLURM_POLL_S = 3.0
# A reason that never clears, seen on this many looks in a row, ends the sweep: just after submitting, Slurm says
# PartitionConfig for any partition limit, and names the limit (e.g. PartitionTimeLimit) at its next scheduling pass.
FATAL_LOOKS = 3


@dataclass
class SweepResult:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    logs: dict[str, str] = field(default_factory=dict)  # failed name -> its log file
    submitted: list[str] = field(default_factory=list)  # Slurm job ids
    seconds: float = 0.0
    index: Path | None = None  # the book's index.html, when this sweep built it
    missing: list[str] = field(default_factory=list)  # records mode: runs with no complete record
    verdicts: list[str] = field(default_factory=list)  # SR - resize at each scale, one line each


def _is_current(output: Path, parameters: dict, inputs: list[Path]) -> bool:
    """True when `output` was executed with `parameters` to the end, after every file in `inputs`."""
    import nbformat

    if not output.is_file() or not inputs or not all(p.is_file() for p in inputs):
        return False
    try:
        ran_with = nbformat.read(output, as_version=4).metadata.get("papermill", {}).get("parameters")
    except (OSError, ValueError):
        return False
    return ran_with == parameters and output.stat().st_mtime >= max(p.stat().st_mtime for p in inputs)



def train_tasks(profile: str, seeds: int, variants, out: Path, notebooks_out: Path, common: dict,
                overrides: dict) -> list[Task]:
    from ..runs import run_dir

    tasks = []
    for seed in range(seeds):
        for variant in variants:
            name = f"{profile}-{variant}-seed{seed}"
            params = {**common, "variant": variant, "seed": seed, "overrides": overrides}
            tasks.append(Task(name, "train.ipynb", str(notebooks_out / "train" / f"{name}.ipynb"), params,
                              str(run_dir(out, profile, variant, seed)), variant, seed))
    return tasks


# --- the terminal ---------------------------------------------------------------------------------------

class Reporter:
    """One line per run start and end, and one progress line: redrawn in place on a terminal, else printed
    once a minute (so a CI log or `make report` stays short)."""

    PLAIN_EVERY_S = 60.0

    def __init__(self, log=print, live: bool | None = None, slots: int = 1) -> None:
        self.log, self.slots = log, slots
        self.live = sys.stdout.isatty() if live is None else live
        self.started_at = time.time()
        self.starts: dict[str, float] = {}
        self.durations: list[float] = []
        self._shown = ""
        self._last_plain = time.time()

    def line(self, text: str) -> None:
        self._clear()
        self.log(text)

    def _clear(self) -> None:
        if self._shown and self.live and self.log is print:
            sys.stdout.write("\r\x1b[K")
            sys.stdout.flush()
            self._shown = ""

    def started(self, task: Task, where: str, again: bool = False) -> None:
        self.starts[task.name] = time.time()
        self.line(f"[sweep] {'again' if again else 'start'}  {task.label} ({where})")

    def finished(self, task: Task, record: dict | None) -> None:
        minutes = self._minutes(task)
        summary = (record or {}).get("summary") or {}
        accuracy = f"{summary['max_test_acc']:.2f}% max test accuracy, " if "max_test_acc" in summary else ""
        self.line(f"[sweep] done   {task.label}: {accuracy}{minutes:.1f} min")

    def failed(self, task: Task, why: str) -> None:
        minutes = self._minutes(task)
        self.line(f"[sweep] FAILED {task.label} after {minutes:.1f} min: {why}; log: {task.log}")

    def _minutes(self, task: Task) -> float:
        seconds = time.time() - self.starts.get(task.name, time.time())
        self.durations.append(seconds)
        return seconds / 60

    def progress(self, states: dict[str, RunState], tasks: dict[str, Task]) -> None:
        counts = {s: sum(st.state == s for st in states.values()) for s in ("done", "running", "queued", "failed")}
        running = [n for n, st in states.items() if st.state == "running"]
        epochs = []
        for name in running[:4]:
            task = tasks[name]
            short = f"{task.variant} s{task.seed}" if task.variant else task.label
            found = ex.epoch_progress(task.log)
            epochs.append(f"{short} {found[0]}/{found[1]}" if found else f"{short} starting")
        more = f" +{len(running) - 4}" if len(running) > 4 else ""
        eta = self._eta(running, counts["queued"])
        text = (f"[sweep] {counts['done']}/{len(states)} done, {counts['running']} running"
                f"{' (' + ', '.join(epochs) + more + ')' if epochs else ''}, {counts['queued']} queued"
                f"{_why_queued(states)}, {counts['failed']} failed | {(time.time() - self.started_at) / 60:.1f} min"
                f"{eta}")
        if self.live and self.log is print:
            if text != self._shown:
                sys.stdout.write("\r\x1b[K" + text[:max(20, _columns() - 1)])
                sys.stdout.flush()
                self._shown = text
        elif time.time() - self._last_plain >= self.PLAIN_EVERY_S:
            self._last_plain = time.time()
            self.log(text)

    def _eta(self, running: list[str], queued: int) -> str:
        """From the mean duration of the runs that ended: what the running ones have left, plus the queue."""
        if not self.durations or not running and not queued:
            return ""
        mean = sum(self.durations) / len(self.durations)
        left = sum(max(0.0, mean - (time.time() - self.starts.get(n, time.time()))) for n in running)
        seconds = (left + queued * mean) / max(1, min(self.slots, len(running) + queued))
        return ", ETA <1 min" if seconds < 60 else f", ETA ~{round(seconds / 60)} min"

    def close(self) -> None:
        self._clear()


def _why_queued(states: dict[str, RunState]) -> str:
    """Slurm's reasons for the queued runs: ' (Resources)', or ' (3 Priority, 2 Resources)' when they differ."""
    reasons = Counter(st.reason for st in states.values() if st.state == "queued" and st.reason)
    if not reasons:
        return ""
    if len(reasons) == 1:
        return f" ({next(iter(reasons))})"
    return " (" + ", ".join(f"{n} {r}" for r, n in sorted(reasons.items())) + ")"


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((120, 20)).columns


# --- the sweep -------------------------------------------------------------------------------------------

def sweep(profile: str, seeds: int = 1, variants: list[str] | tuple[str, ...] = STUDY_VARIANTS,
          out: str | os.PathLike = "runs", notebooks_out: str | os.PathLike = "book/executed",
          data: str | None = None, cache_dir: str | None = None, overrides: dict | None = None,
          analysis: bool = True, log_output: bool = True, log=print, *, executor: str = "local",
          jobs: int | None = None, runs_per_gpu: int = 1, threads: int | None = None,
          slurm: SlurmOptions | None = None, wait: bool = True, book: bool = False,
          live: bool | None = None, preflight: bool = True, records_only: bool = False) -> SweepResult:
    """Train every (variant, seed) through the notebook, then run the analysis notebooks (and the book).

    `executor` "local": up to `jobs` worker processes at once (default: one per GPU x `runs_per_gpu`,
    or on a CPU one with every core); "slurm": one array job via submitit (`slurm` options),
    waited for unless `wait` is False (then a dependent job runs the analysis and the book).
    `threads` pins every run's torch thread count (it is not part of a run's identity).
    `records_only`: the train notebooks show the records already in `out` (a missing one is named, never
    trained), executed one after another in this process's workers; nothing is written into `out`.
    """
    del log_output  # kept for callers: papermill's output always goes to the per-run log files
    variants = expand_variants(list(variants))  # set names (study, controls, ...) -> variants
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or profile not in PROFILES or seeds < 1:
        raise ConfigError(f"sweep needs known variants ({', '.join(VARIANTS)}), a profile in {list(PROFILES)} "
                          f"and seeds >= 1; got variants {list(variants)}, profile {profile!r}, seeds {seeds}")
    if executor not in ("local", "slurm"):
        raise ConfigError(f"unknown executor {executor!r}; use local or slurm")
    overrides = overrides or {}
    for variant in variants:  # fail fast on bad overrides, before hours of work
        make_config(variant, profile, 0, **overrides)
    # No data, weights, space or writable folder: one error now, not one per kernel or job (records: none needed).
    if preflight and not records_only:
        from .preflight import check_sweep

        check_sweep(profile, seeds, variants, out, notebooks_out, data, cache_dir, overrides, analysis)
    slots = ex.plan_slots(jobs, runs_per_gpu, threads) if executor == "local" else None
    out, notebooks_out = Path(out).resolve(), Path(notebooks_out).resolve()
    result, started = SweepResult(), time.perf_counter()
    common = {"profile": profile, "out": str(out), "data": data, "cache_dir": cache_dir}
    if records_only:
        common["records_only"] = True
    tasks = train_tasks(profile, seeds, variants, out, notebooks_out, common, overrides)
    reporter = Reporter(log, live, slots.jobs if slots else (slurm or SlurmOptions()).array_parallelism)
    # A records folder is only read (and may be a committed one): no lock file there.
    lock = contextlib.nullcontext() if records_only else directory_lock(out, f"srlib sweep --profile {profile}")
    with lock:
        todo = []
        for task in tasks:
            record = _record(out, profile, task, overrides)
            if _is_current(Path(task.output), task.parameters, [Path(record["_path"])] if record else []):
                result.skipped.append(task.name)
            else:
                todo.append(task)
        if result.skipped:
            log(f"[sweep] {len(result.skipped)} of {len(tasks)} runs finished earlier (record and executed "
                "notebook exist), skipped")
        finish_kwargs = dict(profile=profile, out=out, notebooks_out=notebooks_out, data=data, cache_dir=cache_dir,
                             book=book, log=log, records_only=records_only, sr_weights=overrides.get("sr_weights"))
        if records_only:
            _render_records(todo, reporter, result, out, profile, overrides)
        elif executor == "local":
            _run_local(todo, slots, reporter, result, out, profile, overrides)
        else:
            slurm = ex.with_default_cpus(slurm or SlurmOptions())
            pinned = threads or slurm.cpus
            if not _run_slurm(todo, slurm, pinned, reporter, result, out, profile, overrides, wait, finish_kwargs,
                              analysis):
                result.seconds = time.perf_counter() - started
                _write_summary(out, profile, seeds, variants, result)
                return result
        reporter.close()
        if analysis:
            ran = finish(**finish_kwargs, rerun=bool(result.done or result.failed), announce=False)
            for name in ("done", "skipped"):
                getattr(result, name).extend(getattr(ran, name))
            result.failed.update(ran.failed)
            result.logs.update(ran.logs)
            result.index, result.verdicts = ran.index, ran.verdicts
        result.seconds = time.perf_counter() - started
        if not records_only:  # a records folder (e.g. results/paper, committed) is only read
            _write_summary(out, profile, seeds, variants, result)
    return result


def _render_records(todo: list[Task], reporter: Reporter, result: SweepResult, out: Path, profile: str,
                    overrides: dict) -> None:
    """Records mode: each train notebook shows its record, or names the run as missing; nothing trains."""
    for task in todo:
        reporter.started(task, "records only")
        try:
            _run_quietly(replace(task, run_dir=None))  # no job.json: the records folder is only read
        except Exception as exc:  # noqa: BLE001 - one failed notebook must not stop the others
            _fail(task, ex.failure_line(exc), reporter, result)
            continue
        result.done.append(task.name)
        record = _record(out, profile, task, overrides)
        if record is None:
            result.missing.append(task.name)
            reporter.line(f"[sweep] no complete record of {task.label} in {out}: the book says it was not run")
        else:
            reporter.finished(task, record)


def _write_summary(out: Path, profile: str, seeds: int, variants, result: SweepResult) -> None:
    write_json(out / profile / "sweep.json", {"profile": profile, "seeds": seeds, "variants": list(variants),
                                              "done": result.done, "skipped": result.skipped,
                                              "failed": result.failed, "logs": result.logs,
                                              "submitted": result.submitted, "seconds": result.seconds})


def _record(out: Path, profile: str, task: Task, overrides: dict) -> dict | None:
    from ..runs import find_finished

    return find_finished(out, make_config(task.variant, profile, task.seed, **overrides))


def _fail(task: Task, why: str, reporter: Reporter, result: SweepResult) -> None:
    result.failed[task.name] = why
    result.logs[task.name] = str(task.log)
    reporter.failed(task, why)


def _run_local(todo: list[Task], slots, reporter: Reporter, result: SweepResult, out: Path, profile: str,
               overrides: dict) -> None:
    queue, pool = deque(todo), ex.LocalPool(slots)
    for task in todo:
        ex.write_job(task, "queued", executor="local")  # the sweep's pid: `srlib status` sees if it is gone
    try:
        while queue or pool.workers:
            while queue and (slot := pool.free_slot()) is not None:
                task = queue.popleft()
                pool.start(task, slot)
                reporter.started(task, slots.where(slot))
            for worker, code in pool.reap():
                task = worker.task
                record = _record(out, profile, task, overrides) if code == 0 else None
                if record is not None:
                    result.done.append(task.name)
                    reporter.finished(task, record)
                    continue
                job = ex.read_job(task.run_dir) or {}
                why = (job.get("why") if job.get("state") == "failed" else None) or (
                    f"its worker was killed (signal {-code})" if code < 0 else
                    "the notebook ended without a complete record" if code == 0 else
                    ex.last_error_line(task.log) or f"its worker exited with code {code}")
                ex.write_job(task, "failed", executor="local", why=why)
                _fail(task, why, reporter, result)
            states = {t.name: RunState("done") for t in todo if t.name in result.done}
            states.update({t.name: RunState("failed") for t in todo if t.name in result.failed})
            states.update({w.task.name: RunState("running") for w in pool.workers.values()})
            states.update({t.name: RunState("queued") for t in queue})
            reporter.progress(states, {t.name: t for t in todo})
            time.sleep(0.3)
    except BaseException:  # Ctrl-C, SIGTERM (see cmd_sweep) or a bug: no worker may outlive the sweep
        running = [w.task for w in pool.workers.values()]
        pool.stop_all()
        for task in running:
            ex.write_job(task, "failed", executor="local", why="the sweep was interrupted; rerun it to resume")
        reporter.close()
        raise


def _run_slurm(todo: list[Task], options: SlurmOptions, threads: int, reporter: Reporter, result: SweepResult,
               out: Path, profile: str, overrides: dict, wait: bool, finish_kwargs: dict, analysis: bool) -> bool:
    """Submit what is missing (waiting for what an earlier sweep still has queued); False with --no-wait."""
    queue = ex.slurm_queue()
    alive, submit = [], []
    for task in todo:
        state = ex.run_state(Path(task.run_dir), False, queue)
        (alive if state.state in ("queued", "running") and state.job.get("job_id") else submit).append(task)
    if alive:
        reporter.line(f"[sweep] {len(alive)} run(s) already queued or running in Slurm from an earlier sweep; "
                      "waiting for them instead of submitting them again")
    folder = out / profile / "slurm"
    if submit:
        if options.check:  # a request no node can run would pend for ever: refuse it now, naming the option
            ex.check_slurm_request(folder, options, threads)
        ids = ex.submit_slurm(submit, folder, options, f"srlib-{profile}", threads)
        result.submitted = ids
        reporter.line(f"[sweep] submitted {len(ids)} Slurm task(s) as array job {ids[0].split('_')[0]}; "
                      f"Slurm logs in {folder}")
    if not wait and (alive or submit):
        jobs = sorted({(ex.read_job(t.run_dir) or {}).get("job_id", "").split("_")[0] for t in alive + submit} - {""})
        if analysis and jobs:
            finisher = ex.slurm_executor(folder, options, f"srlib-{profile}-report", threads,
                                      dependency="afterany:" + ":".join(jobs))
            job = finisher.submit(ex.SlurmFinish({**finish_kwargs, "log": print}))
            reporter.line(f"[sweep] the analysis notebooks and the book follow as Slurm job {job.job_id} "
                          "(afterany); or rerun this command later")
        reporter.line(f"[sweep] not waiting; watch with: srlib status --out {out} --profile {profile}")
        return False
    _wait_slurm(alive + submit, reporter, result, out, profile, overrides)
    return True


def _wait_slurm(tasks: list[Task], reporter: Reporter, result: SweepResult, out: Path, profile: str,
                overrides: dict) -> None:
    by_name = {t.name: t for t in tasks}
    seen: dict[str, str] = {}
    gone_once: set[str] = set()  # gone from the queue without saying so: trust it on the second look (shared FS)
    stuck: dict[str, int] = {}  # consecutive looks that found a task pending for a reason that never clears
    pending = set(by_name)
    while pending:
        ids = [(ex.read_job(by_name[n].run_dir) or {}).get("job_id") for n in pending]
        queue = ex.slurm_queue([i for i in ids if i])
        states = {}
        for name, task in by_name.items():
            if name not in pending:
                states[name] = RunState("done" if name in result.done else "failed")
                continue
            record = _record(out, profile, task, overrides)
            job = ex.read_job(task.run_dir) or {}
            entry = (queue or {}).get(job.get("job_id"))
            # The record is written before the notebook is: done once the worker says so or has left the queue.
            ended = job.get("state") == "done" or (queue is not None and not (entry and entry.live))
            state = ex.run_state(Path(task.run_dir), record is not None and ended, queue)
            unsaid = state.state == "missing" or (state.state == "failed" and job.get("state") != "failed")
            if unsaid and name not in gone_once:
                gone_once.add(name)
                state = RunState("running" if seen.get(name) == "running" else "queued", "", state.job)
            states[name] = state
            _report_change(task, state, seen.get(name), record, reporter, result)
            if state.state in ("done", "failed"):
                pending.discard(name)
            seen[name] = state.state
        reporter.progress(states, by_name)
        for name, st in states.items():
            stuck[name] = stuck.get(name, 0) + 1 if st.state == "queued" and st.reason in ex.FATAL_REASONS else 0
        never = {n: states[n] for n, looks in stuck.items() if looks >= FATAL_LOOKS}
        if never:
            _cancel_unrunnable(never, states, by_name, reporter, result)
        if pending:
            time.sleep(SLURM_POLL_S)


def _report_change(task: Task, state: RunState, previous: str | None, record: dict | None, reporter: Reporter,
                   result: SweepResult) -> None:
    """One line when a task starts (again), finishes or fails; a failure is named with its log files."""
    if state.state == "running" and previous != "running":
        host = f" on {state.job['host']}" if state.job.get("state") == "running" else ""
        reporter.started(task, f"Slurm job {state.job.get('job_id')}{host}",
                         again=previous == "queued" and task.name in reporter.starts)
    if state.state == "done":
        result.done.append(task.name)
        reporter.finished(task, record)
    elif state.state == "failed":
        why = state.detail
        log_line = ex.last_error_line(task.log)
        if log_line and log_line not in why:
            why = f"{why} ({log_line})"
        if state.job.get("state") != "failed":  # seen in the queue only: `srlib status` says it after squeue forgets
            ex.write_job(task, "failed", executor="slurm", job_id=state.job.get("job_id"), why=state.detail,
                         slurm_log=state.job.get("slurm_log"))
        _fail(task, why, reporter, result)
        slurm_log = state.job.get("slurm_log")
        if slurm_log:
            result.logs[task.name] = f"{task.log} (Slurm: {slurm_log})"


def _cancel_unrunnable(never: dict[str, RunState], states: dict[str, RunState], by_name: dict[str, Task],
                       reporter: Reporter, result: SweepResult) -> None:
    """Slurm says a task can never start (its request does not fit): cancel this sweep's pending tasks, mark them
    failed (a rerun submits them again, after the request check), and end the sweep with the reason and the fix."""
    waiting = {n: st for n, st in states.items() if st.state == "queued" and st.job.get("job_id")}
    ex.cancel_slurm([st.job["job_id"] for st in waiting.values()])
    name, first = next(iter(never.items()))
    fix = ex.FATAL_REASONS[first.reason]
    for n, st in waiting.items():
        why = f"Slurm job {st.job['job_id']} was cancelled by the sweep: pending with reason {st.reason or '?'}"
        if st.reason in ex.FATAL_REASONS:
            why += f", which never clears: {ex.FATAL_REASONS[st.reason]}"
        ex.write_job(by_name[n], "failed", executor="slurm", job_id=st.job["job_id"], why=why,
                     slurm_log=st.job.get("slurm_log"))
        result.failed[n] = why
    reporter.close()
    running = sum(st.state == "running" for st in states.values())
    left = f"; {running} running task(s) go on (a rerun waits for them)" if running else ""
    raise SrlibError(f"Slurm will never start {by_name[name].label} (job {first.job['job_id']}): pending with "
                     f"reason {first.reason}: {fix}; the sweep cancelled its {len(waiting)} pending task(s){left}")


def finish(profile: str, out: str | os.PathLike, notebooks_out: str | os.PathLike, data: str | None = None,
           cache_dir: str | None = None, book: bool = False, log=print, rerun: bool = False,
           announce: bool = True, records_only: bool = False, sr_weights: str | None = None) -> SweepResult:
    """The analysis notebooks (skipped when no record is newer than them), then the book if asked for.

    `announce` prints the verdicts and the report's path (the sweep's command line prints them last)."""
    out, notebooks_out = Path(out), Path(notebooks_out)
    result, started = SweepResult(), time.time()
    common = {"profile": profile, "out": str(out), "data": data, "cache_dir": cache_dir}
    from ..runs import record_paths

    records = record_paths(out, profile)
    from ..quality import default_images

    params = {**common, "n": default_images(profile)}
    if records_only:  # the SR-quality page shows the measurement saved beside the records (e.g. from the GPU)
        params["records_only"] = True
    if sr_weights:  # the SR-quality page measures the checkpoint the runs were trained with
        params["sr_weights"] = sr_weights
    for template in ANALYSIS:
        output = notebooks_out / template
        if not rerun and _is_current(output, params, records):
            result.skipped.append(template)
            continue
        task = Task(template, template, str(output), params)
        try:
            _run_quietly(task)
            result.done.append(template)
        except Exception as exc:  # noqa: BLE001 - one failed notebook must not stop the other
            result.failed[template] = ex.failure_line(exc)
            result.logs[template] = str(task.log)
            log(f"[sweep] FAILED {template}: {result.failed[template]}; log: {task.log}")
    if result.done:
        log(f"[sweep] analysis: {', '.join(result.done)} ({(time.time() - started) / 60:.1f} min)")
    elif result.skipped:
        log("[sweep] analysis notebooks up to date with every record, skipped")
    result.verdicts = headline_verdicts(out, profile)
    if book and not result.failed:
        result.index = _build_book(notebooks_out, log)
    if announce:
        for line in result.verdicts:
            log(f"[sweep] {line}")
        if result.index:
            log(f"[sweep] report: {result.index}")
    return result


def _run_quietly(task: Task) -> None:
    """Execute an analysis notebook in a worker process, its output in the notebook's log file."""
    import json
    from dataclasses import asdict

    task.log.parent.mkdir(parents=True, exist_ok=True)
    with open(task.log, "w") as log:
        done = subprocess.run([sys.executable, "-m", "srlib.orchestration.executors", json.dumps(asdict(task))],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    if done.returncode != 0:
        raise SrlibError(ex.last_error_line(task.log) or f"the worker exited with code {done.returncode}")


def headline_verdicts(out: Path, profile: str) -> list[str]:
    """SR - resize at each scale, one line each, from srlib.analysis (nothing when it cannot say)."""
    try:
        from ..analysis import comparisons, verdicts
        from ..runs import load_records

        records = load_records(out, profile)
        variants = {r["config"]["variant"] for r in records}
        return verdicts(records, [c for c in comparisons(variants) if c.rule == ("sr", "bicubic")])
    except Exception:  # noqa: BLE001 - the verdicts are a courtesy; the notebooks hold the analysis
        return []


def _build_book(notebooks_out: Path, log) -> Path | None:
    """`srlib book` in a subprocess (its Sphinx output goes to book.log); only for the book's own folder."""
    if notebooks_out.resolve() != BOOK_NOTEBOOKS.resolve():
        log(f"[sweep] book not built: it reads {BOOK_NOTEBOOKS}, these notebooks are in {notebooks_out}")
        return None
    book_log = notebooks_out / "book.log"
    with open(book_log, "w") as f:
        done = subprocess.run([sys.executable, "-m", "srlib", "book"], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL)
    index = ROOT / "_build" / "html" / "index.html"
    if done.returncode != 0 or not index.is_file():
        log(f"[sweep] FAILED building the book: {ex.last_error_line(book_log) or 'see the log'}; log: {book_log}")
        return None
    return index


# --- status ----------------------------------------------------------------------------------------------

def status(out: str | os.PathLike = "runs", profile: str | None = None) -> list[tuple[str, RunState]]:
    """(run, state) for every run that has a folder under `out` (one profile, or all)."""
    from ..runs import RECORD
    from ..store import read_json

    out = Path(out)
    dirs = sorted(p for p in out.glob(f"{profile or '*'}/*/seed*") if p.is_dir())
    needs_queue = any((ex.read_job(d) or {}).get("job_id") for d in dirs)
    queue = ex.slurm_queue() if needs_queue else None
    rows = []
    for d in dirs:
        try:
            finished = read_json(d / RECORD).get("status") == "complete"
        except (OSError, ValueError):
            finished = False
        rows.append((f"{d.parent.parent.name}/{d.parent.name}/{d.name}", ex.run_state(d, finished, queue)))
    return rows
