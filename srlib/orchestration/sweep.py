"""`srlib sweep`: run notebooks/train.ipynb once per variant and seed with papermill -- in parallel
worker processes on this machine or as a Slurm job array -- then the analysis notebooks and the book.

One failed run does not stop the others; the summary names it with its log and last error line. A rerun
executes only what is missing or failed: a run whose executed notebook is newer than its finished record is
skipped, a Slurm task of an earlier `--no-wait` sweep still in the queue is waited for, not submitted again.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..cost import ANALYSIS_S
from ..errors import SrlibError
from ..runs import EXECUTED, ROOT, record_paths
from ..store import directory_lock, write_json
from . import local
from .executors import Executor, LocalExecutor, SlurmExecutor
from .preflight import estimate_line
from .reporter import Reporter
from .request import SweepRequest
from .slurm import SlurmFinish
from .states import RunState
from .tasks import Task, executed_parameters, failure_line, last_error_line

ANALYSIS = ("sr_quality.ipynb", "compare.ipynb")
BOOK_NOTEBOOKS = ROOT / EXECUTED  # where the book (_toc.yml) looks for executed notebooks


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
    left_out: list[str] = field(default_factory=list)  # records the report leaves out, each with why
    verdicts: list[str] = field(default_factory=list)  # SR - resize at each scale, one line each

    def closing_lines(self) -> list[str]:
        """What the sweep says last: runs without a record, records left out and why, the verdicts, the report."""
        lines = [f"no record (named in the book as not run): {', '.join(self.missing)}"] if self.missing else []
        lines += [f"left out of the report: {why}" for why in self.left_out]
        return lines + self.verdicts + ([f"report: {self.index}"] if self.index else [])


def _is_current(output: Path, parameters: dict, inputs: list[Path]) -> bool:
    """True when `output` was executed with `parameters` to the end, after every file in `inputs`."""
    if not output.is_file() or not inputs or not all(p.is_file() for p in inputs):
        return False
    return executed_parameters(output) == parameters and output.stat().st_mtime >= max(p.stat().st_mtime
                                                                                       for p in inputs)


def train_tasks(request: SweepRequest) -> list[Task]:
    """One train.ipynb task per run of the request (seed by seed, variants in order)."""
    from ..runs import config_dir, executed_train_notebook

    common = {"profile": request.profile, "out": str(request.out), "data": request.data,
              "cache_dir": request.cache_dir}
    if request.records_only:
        common.update(records_only=True, dataset=request.dataset_key)
    tasks, key = [], request.dataset_key or "no-records"  # records mode without records: every run missing
    for c in request.configs:
        page = executed_train_notebook(request.notebooks_out, c.profile, key, c.variant, c.seed)
        params = {**common, "variant": c.variant, "seed": c.seed, "overrides": request.overrides}
        tasks.append(Task(page.stem, "train.ipynb", str(page), params, str(config_dir(request.out, c, key)),
                          c.variant, c.seed))
    return tasks


def record_finder(request: SweepRequest) -> Callable[[Task], dict | None]:
    """A task's finished record on the request's data in `request.out`, or None (srlib.runs decides what counts
    as finished: a record made on other data never does)."""
    from ..runs import find_finished

    configs = {(c.variant, c.seed): c for c in request.configs}
    # The key when first asked (a cached property: the data is decoded once); None only in records mode without
    # records, where none is found whatever the data.
    return lambda task: find_finished(request.out, configs[(task.variant, task.seed)], request.dataset_key)


# --- the sweep -------------------------------------------------------------------------------------------

def sweep(request: SweepRequest, log: Callable[[str], None] = print, live: bool | None = None,
          preflight: bool = True) -> SweepResult:
    """Train every (variant, seed) of `request` through the notebook (local workers, or one Slurm array waited
    for unless `wait` is False), then run the analysis notebooks and the book; `log` and `live` are where the
    terminal lines go, `preflight` runs the checks first. `records_only`: the train notebooks show the records in
    `out` (a missing one is named, never trained); nothing is written there."""
    _ = request.configs  # builds (and so checks) each run's config first
    checked = preflight and not request.records_only
    # No data, weights, space or writable folder: one error now, not one per kernel or job (records: none needed).
    if checked:
        request.plan().raise_problems()
    record_of = record_finder(request)
    executor: Executor = (LocalExecutor(local.slot_layout(request.jobs, request.runs_per_gpu, request.threads),
                                        record_of) if request.executor == "local" else
                          SlurmExecutor(record_of, request.slurm, request.out / request.profile / "slurm",
                                        f"srlib-{request.profile}", request.threads))
    if isinstance(executor, SlurmExecutor) and not request.records_only:
        executor.check_request()  # before the data is decoded for its key: a refusal takes seconds, not minutes
    # A records folder is only read (and may be a committed one): no lock file there. Taken before the data is
    # decoded for its key, so a second sweep on the same folder stops at once.
    lock = (contextlib.nullcontext() if request.records_only else
            directory_lock(request.out, f"srlib sweep --profile {request.profile}"))
    with lock:
        tasks = train_tasks(request)  # the data's key is in each run's folder: known once the data passed the checks
        estimates = {}
        if checked:  # the data's key now known, the estimate leaves out only the runs done on this data
            plan = request.plan(dataset=request.dataset_key, checks=False)  # checked above
            log(f"[sweep] {estimate_line(plan)}")
            by_run = {(r.variant, r.seed): r.estimate for r in plan.runs}
            estimates = {t.name: by_run[(t.variant, t.seed)] for t in tasks}
        result, started = SweepResult(), time.perf_counter()
        reporter = Reporter(log, live, executor.parallel, estimates=estimates,
                            after_s=ANALYSIS_S if checked and request.analysis else 0.0)
        todo = _missing(tasks, record_of, result, log)
        if request.records_only:
            waited = _render_records(todo, reporter, result, request, record_of)
        else:
            waited = _run(executor, todo, request, reporter, result, record_of)
        reporter.close()
        if waited and request.analysis:
            ran = finish(request, log, rerun=bool(result.done or result.failed), announce=False)
            for name in ("done", "skipped"):
                getattr(result, name).extend(getattr(ran, name))
            result.failed.update(ran.failed)
            result.logs.update(ran.logs)
            result.index, result.verdicts, result.left_out = ran.index, ran.verdicts, ran.left_out
        result.seconds = time.perf_counter() - started
        if not request.records_only:  # a records folder (e.g. results/paper, committed) is only read
            write_json(request.out / request.profile / "sweep.json", {
                "profile": request.profile, "dataset": request.dataset_key, "seeds": request.seeds,
                "variants": list(request.variants), "done": result.done, "skipped": result.skipped,
                "failed": result.failed, "logs": result.logs, "submitted": result.submitted, "seconds": result.seconds})
    return result


def _missing(tasks: list[Task], record_of: Callable[[Task], dict | None], result: SweepResult,
             log: Callable[[str], None]) -> list[Task]:
    """The tasks to execute: those without a finished record and an executed notebook newer than it."""
    todo = []
    for task in tasks:
        record = record_of(task)
        if _is_current(Path(task.output), task.parameters, [Path(record["_path"])] if record else []):
            result.skipped.append(task.name)
        else:
            todo.append(task)
    if result.skipped:
        log(f"[sweep] {len(result.skipped)} of {len(tasks)} runs finished earlier (record and executed "
            "notebook exist), skipped")
    return todo


def _run(executor: Executor, todo: list[Task], request: SweepRequest, reporter: Reporter, result: SweepResult,
         record_of: Callable[[Task], dict | None]) -> bool:
    """Submit what is missing and wait for it; False when a --no-wait sweep leaves it to Slurm."""
    result.submitted = executor.submit(todo, reporter.line)
    if isinstance(executor, SlurmExecutor) and not request.wait and todo:
        if request.analysis:
            job_id = executor.follow_with(SlurmFinish(finish, request=request, log=print),
                                          f"srlib-{request.profile}-report")
            if job_id:
                reporter.line(f"[sweep] the analysis notebooks and the book follow as Slurm job {job_id} "
                              "(afterany); or rerun this command later")
        reporter.line(f"[sweep] not waiting; watch with: srlib status --out {request.out} --profile {request.profile}")
        return False
    wait_for(executor, todo, reporter, result, record_of)
    return True


def wait_for(executor: Executor, tasks: list[Task], reporter: Reporter, result: SweepResult,
             record_of: Callable[[Task], dict | None]) -> None:
    """The one wait loop, for every executor: look at what each run does, say what changed and how far it is,
    and end when nothing is running or queued (or the executor says a run can never start). `seen` is the one
    memory of what each run did: the executor is asked only about those that have not ended."""
    if not tasks:
        return
    by_name = {t.name: t for t in tasks}
    seen = {t.name: RunState("queued") for t in tasks}  # submitted: queued until the executor says otherwise
    try:
        while True:
            pending = [by_name[n] for n, st in seen.items() if st.state not in ("done", "failed")]
            for name, state in executor.poll(pending).items():
                if state.state != seen[name].state:
                    _report_change(by_name[name], state, seen[name].state, executor, reporter, result, record_of)
                seen[name] = state
            reporter.progress(seen, by_name)
            never = executor.unrunnable(seen)
            if never is not None:
                result.failed.update(never.failed)
                raise SrlibError(never.message)
            if not any(st.state in ("running", "queued") for st in seen.values()):
                return
            time.sleep(executor.poll_s)
    except BaseException:  # Ctrl-C, SIGTERM (see cmd_sweep), a run that can never start, or a bug
        executor.stop()
        reporter.close()
        raise


def _report_change(task: Task, state: RunState, previous: str, executor: Executor, reporter: Reporter,
                   result: SweepResult, record_of: Callable[[Task], dict | None]) -> None:
    """One line when a run starts (again), finishes or fails; a failure is named with its log files."""
    if state.state == "running":
        reporter.started(task, executor.where(task.name, state),
                         again=previous == "queued" and task.name in reporter.starts)
    elif state.state == "done":
        result.done.append(task.name)
        reporter.finished(task, record_of(task))
    elif state.state == "failed":
        _fail(task, state.detail, reporter, result)
        if state.job.get("slurm_log"):
            result.logs[task.name] = f"{task.log} (Slurm: {state.job['slurm_log']})"


def _fail(task: Task, why: str, reporter: Reporter, result: SweepResult) -> None:
    result.failed[task.name], result.logs[task.name] = why, str(task.log)
    reporter.failed(task, why)


def _render_records(todo: list[Task], reporter: Reporter, result: SweepResult, request: SweepRequest,
                    record_of: Callable[[Task], dict | None]) -> bool:
    """Records mode: each train notebook shows its record, or names the run as missing; nothing trains."""
    for task in todo:
        reporter.started(task, "records only")
        try:
            _run_quietly(replace(task, run_dir=None))  # no job.json: the records folder is only read
        except Exception as exc:  # noqa: BLE001 - one failed notebook must not stop the others
            _fail(task, failure_line(exc), reporter, result)
            continue
        result.done.append(task.name)
        record = record_of(task)
        if record is None:
            result.missing.append(task.name)
            reporter.line(f"[sweep] no complete record of {task.label} in {request.out}: the book says it was not run")
        else:
            reporter.finished(task, record)
    return True


# --- the analysis and the book ---------------------------------------------------------------------------

def finish(request: SweepRequest, log: Callable[[str], None] = print, rerun: bool = False,
           announce: bool = True) -> SweepResult:
    """The analysis notebooks (skipped when no record is newer than them), then the book if the request asks.

    `announce` prints the verdicts and the report's path (the sweep's command line prints them last)."""
    from ..quality import default_images

    out, notebooks_out, profile = request.out, request.notebooks_out, request.profile
    result, started = SweepResult(), time.time()
    common = {"profile": profile, "out": str(out), "data": request.data, "cache_dir": request.cache_dir}
    records = record_paths(out, profile)
    quality = {**common, "n": default_images(profile)}
    if request.records_only:  # the SR-quality page shows the measurement saved beside the records (e.g. from the GPU)
        quality.update(records_only=True, dataset=request.dataset_key)
    if request.overrides.get("sr_weights"):  # the SR-quality page measures the checkpoint the runs trained with
        quality["sr_weights"] = request.overrides["sr_weights"]
    for template in ANALYSIS:
        output = notebooks_out / template
        # The results page shows this sweep's data and names the other datasets in `out`.
        params = quality if template == "sr_quality.ipynb" else {**common, "dataset": request.dataset_key}
        if not rerun and _is_current(output, params, records):
            result.skipped.append(template)
            continue
        task = Task(template, template, str(output), params)
        try:
            _run_quietly(task)
            result.done.append(template)
        except Exception as exc:  # noqa: BLE001 - one failed notebook must not stop the other
            result.failed[template] = failure_line(exc)
            result.logs[template] = str(task.log)
            log(f"[sweep] FAILED {template}: {result.failed[template]}; log: {task.log}")
    if result.done:
        log(f"[sweep] analysis: {', '.join(result.done)} ({(time.time() - started) / 60:.1f} min)")
    elif result.skipped:
        log("[sweep] analysis notebooks up to date with every record, skipped")
    result.verdicts, result.left_out = read_outcome(out, profile, request.dataset_key)
    if request.book and not result.failed:
        result.index = _build_book(notebooks_out, log)
    if announce:
        for line in result.closing_lines():
            log(f"[sweep] {line}")
    return result


def _run_logged(command: list[str], log: Path) -> int:
    """Run `command` in the project, its output into `log`; its exit code."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        done = subprocess.run(command, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return done.returncode


def _run_quietly(task: Task) -> None:
    """Execute a notebook in a worker process, its output in the notebook's log file."""
    code = _run_logged(task.worker_command(), task.log)
    if code != 0:
        raise SrlibError(last_error_line(task.log) or f"the worker exited with code {code}")


def read_outcome(out: Path, profile: str, dataset: str | None = None) -> tuple[list[str], list[str]]:
    """The headline verdicts (SR - resize at each scale, one line each) over the records the report shows, and
    each record or dataset it leaves out, with why, as the results page names them (srlib.report)."""
    from ..report.record_checks import load_checked, select_dataset
    from ..report.report_text import headline_verdicts

    records, rejected = load_checked(out, profile)  # an unreadable or inconsistent record is named, not raised
    shown, others = select_dataset(records, dataset)
    left_out = [f"{path}: {why}" for path, why in rejected]
    left_out += [f"{runs} run(s) on {name}: another dataset, never pooled" for name, runs in others.items()]
    return headline_verdicts(shown), left_out


def _build_book(notebooks_out: Path, log: Callable[[str], None]) -> Path | None:
    """`srlib book` in a subprocess (its Sphinx output goes to book.log); only for the book's own folder."""
    if notebooks_out.resolve() != BOOK_NOTEBOOKS.resolve():
        log(f"[sweep] book not built: it reads {BOOK_NOTEBOOKS}, these notebooks are in {notebooks_out}")
        return None
    book_log = notebooks_out / "book.log"
    code = _run_logged([sys.executable, "-m", "srlib", "book"], book_log)
    index = ROOT / "_build" / "html" / "index.html"
    if code != 0 or not index.is_file():
        log(f"[sweep] FAILED building the book: {last_error_line(book_log) or 'see the log'}; log: {book_log}")
        return None
    return index
