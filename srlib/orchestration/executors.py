"""Where a sweep's notebooks run: worker processes on this machine, or a Slurm job array (submitit).

Each run executes notebooks/train.ipynb with papermill inside its worker. Papermill's cell echo, the
kernel's output and its logging go to a log file beside the executed notebook, never to the terminal.
A small `job.json` in the run's folder says where the run is and how it ended (queued, running with
host, pid and Slurm job, failed with the reason), so `srlib status` and the sweep's progress line read
the same facts for both executors, from any machine that sees the output folder.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ConfigError, SrlibError
from ..runs import NOTEBOOKS, ROOT
from ..store import read_json, write_json

KERNEL = "python3"  # the kernel of the interpreter running the sweep (ipykernel's native spec)
JOB = "job.json"
# What a kernel that lost the race for its ZMQ ports looks like to papermill (papermill#511, #239):
# jupyter_client picks free ports, releases them, and the kernel binds them a moment later.
KERNEL_START_ERRORS = ("Address already in use", "Kernel died before replying to kernel_info",
                       "Kernel didn't respond")
KERNEL_START_TRIES = 4
_EPOCH_DONE = re.compile(r"epoch (\d+)/(\d+): loss")  # train's line after each epoch, not the bar


@dataclass(frozen=True)
class Task:
    """One notebook to execute: a training run (with `run_dir`) or an analysis notebook."""

    name: str  # e.g. smoke-original-seed0, or compare.ipynb
    template: str  # file in notebooks/
    output: str  # the executed notebook
    parameters: dict
    run_dir: str | None = None  # the run's folder, where job.json goes; None for analysis notebooks
    variant: str | None = None
    seed: int | None = None

    @property
    def log(self) -> Path:
        return Path(self.output).with_suffix(".log")

    @property
    def label(self) -> str:
        return f"{self.variant} seed {self.seed}" if self.variant is not None else self.template


# --- executing one notebook ---------------------------------------------------------------------------------

def execute_notebook(template: str, output: Path, parameters: dict, log_output: bool = True,
                     tries: int = KERNEL_START_TRIES) -> None:
    """papermill `template` -> `output`; a kernel that could not start is started again (port races)."""
    import papermill as pm

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.stem + ".partial.ipynb")
    for attempt in range(1, tries + 1):
        try:
            pm.execute_notebook(str(NOTEBOOKS / template), str(partial), parameters=parameters,
                                kernel_name=KERNEL, cwd=str(ROOT), log_output=log_output, progress_bar=False)
            break
        except Exception as exc:
            if attempt == tries or not is_kernel_start_failure(exc):
                raise
            wait = 0.5 * attempt + (os.getpid() % 7) / 7  # spread the retries of workers that collided
            logging.getLogger("srlib").warning("kernel did not start (%s); starting it again in %.1f s",
                                               failure_line(exc), wait)
            time.sleep(wait)
    _tag_for_the_book(partial, parameters)
    os.replace(partial, output)  # an executed notebook only appears once it ran to the end


def is_kernel_start_failure(exc: BaseException) -> bool:
    """True for a kernel that died or hung while starting, before any cell ran (not a failing cell)."""
    from papermill.exceptions import PapermillExecutionError

    return not isinstance(exc, PapermillExecutionError) and any(s in str(exc) for s in KERNEL_START_ERRORS)


def _tag_for_the_book(path: Path, parameters: dict | None = None) -> None:
    """Readers see results first: parameter cells are dropped, code is folded (one click shows it); a run's
    page is titled with its variant and seed, so the book's table of contents tells the runs apart."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    first = next((c for c in notebook.cells if c.cell_type == "markdown"), None)
    if first is not None and first.source.startswith("# ") and {"variant", "seed"} <= set(parameters or {}):
        title, _, rest = first.source.partition("\n")
        first.source = f"{title}: {parameters['variant']}, seed {parameters['seed']}\n{rest}"
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.metadata.setdefault("tags", [])
        extra = "remove-cell" if {"parameters", "injected-parameters"} & set(tags) else "hide-input"
        if extra not in tags:
            tags.append(extra)
    nbformat.write(notebook, path)


def failure_line(exc: BaseException) -> str:
    """The line of an exception's text that says what failed (papermill puts the kernel's traceback in it)."""
    text = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(exc).strip().splitlines()]
    text = [line for line in text if line]
    return next((line for line in reversed(text) if re.search(r"(Error|Exception)\b", line)),
                text[-1] if text else type(exc).__name__)


def run_task(task: Task, executor: str = "local") -> None:
    """Execute `task` in this process, its papermill output going to `task.log`; job.json says how it went."""
    log_path = task.log
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    loggers = [logging.getLogger(name) for name in ("papermill", "srlib")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the terminal shows one line per run, not the cells
    write_job(task, "running", executor=executor, job_id=slurm_job_id(), threads=os.environ.get("OMP_NUM_THREADS"))
    try:
        execute_notebook(task.template, Path(task.output), task.parameters)
    except BaseException as exc:
        write_job(task, "failed", executor=executor, job_id=slurm_job_id(), why=failure_line(exc))
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
    write_job(task, "done", executor=executor, job_id=slurm_job_id())


def slurm_job_id() -> str | None:
    if "SLURM_ARRAY_JOB_ID" in os.environ:
        return f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# --- job.json: where a run is and how it ended -----------------------------------------------------------

def write_job(task: Task, state: str, **info) -> None:
    if task.run_dir is None:
        return
    before = read_job(task.run_dir) or {}
    if info.get("job_id") and before.get("job_id") == info["job_id"] and "slurm_log" not in info:
        info["slurm_log"] = before.get("slurm_log")  # known to the submitter only; the same job keeps it
    write_json(Path(task.run_dir) / JOB, {"state": state, "name": task.name, "host": socket.gethostname(),
                                          "pid": os.getpid(), "since": time.time(), "log": str(task.log),
                                          "notebook": task.output, **info})


def read_job(run_dir: str | Path) -> dict | None:
    try:
        return read_json(Path(run_dir) / JOB)
    except (OSError, ValueError):
        return None


def epoch_progress(log: str | Path) -> tuple[int, int] | None:
    """(epochs finished, epochs) from the end of a run's log, or None before its first epoch ends."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    found = _EPOCH_DONE.findall(tail)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def last_error_line(log: str | Path) -> str | None:
    try:
        lines = Path(log).read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    hits = [line.strip() for line in lines if re.search(r"\w+(Error|Exception)\b:", line)]
    return re.sub(r"\x1b\[[0-9;]*m", "", hits[-1]) if hits else None


@dataclass
class RunState:
    """What `srlib status` and the progress line say about one run."""

    state: str  # done | running | queued | failed | missing
    detail: str = ""
    job: dict = field(default_factory=dict)
    reason: str = ""  # queued in Slurm: squeue's reason code (Resources, Priority, PartitionConfig, ...)


def run_state(run_dir: Path, finished: bool, queue: dict[str, QueueEntry] | None) -> RunState:
    """The state of the run in `run_dir`; `queue` maps Slurm job ids to what squeue says (None: unknown)."""
    if finished:
        return RunState("done")
    job = read_job(run_dir)
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
    progress = epoch_progress(job.get("log", ""))
    epoch = f", epoch {progress[0]} of {progress[1]} done" if progress else ""
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


# --- local: worker processes ------------------------------------------------------------------------------

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


# One run at a time with every core. Measured on a 2-core AVX-512 machine, the preview study (5 variants, 1 seed,
# cold caches) took 448 s with --jobs 1 (2 threads) and 516 s with --jobs 2 (1 thread each): the convolutions use
# both threads well, and two jobs leave the last, longest run (sr_x4) on one core.
CPU_JOBS = 1


@dataclass
class Worker:
    task: Task
    slot: int
    process: subprocess.Popen
    started: float


class LocalPool:
    """Runs tasks as `python -m srlib.orchestration.executors` processes, at most `slots.jobs` at once."""

    STAGGER_S = 1.0  # between kernel starts: fewer ZMQ port collisions to retry

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.workers: dict[int, Worker] = {}
        self._last_start = 0.0

    def free_slot(self) -> int | None:
        return next((s for s in range(self.slots.jobs) if s not in self.workers), None)

    def start(self, task: Task, slot: int) -> Worker:
        time.sleep(max(0.0, self._last_start + self.STAGGER_S - time.monotonic()))
        Path(task.log).parent.mkdir(parents=True, exist_ok=True)
        with open(task.log, "w") as log:  # a new attempt starts a new log
            process = subprocess.Popen(
                [sys.executable, "-m", "srlib.orchestration.executors", json.dumps(asdict(task))], cwd=ROOT,
                env={**os.environ, **self.slots.env(slot)}, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)  # its own group: its kernel dies with it
        self._last_start = time.monotonic()
        self.workers[slot] = worker = Worker(task, slot, process, time.time())
        return worker

    def reap(self) -> list[tuple[Worker, int]]:
        """Workers that ended since the last call, with their exit codes."""
        ended = []
        for slot, worker in list(self.workers.items()):
            code = worker.process.poll()
            if code is not None:
                _kill_group(worker.process.pid)  # a kernel left behind by a killed worker
                del self.workers[slot]
                ended.append((worker, code))
        return ended

    def stop_all(self) -> None:
        for worker in self.workers.values():
            _kill_group(worker.process.pid, signal.SIGTERM)
        for worker in self.workers.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.process.wait(10)
            _kill_group(worker.process.pid)


def _kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


# --- slurm: submitit job arrays -------------------------------------------------------------------------

DEFAULT_SLURM_CPUS = 4  # one training process and its data path; fewer when the partition's nodes have fewer
MAX_SIGNAL_DELAY_S = 120  # submitit's warning before the time limit: time to write a checkpoint and requeue


@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str = "4:00:00"  # per task: minutes, H:MM:SS or D-HH:MM:SS
    gres: str | None = None  # e.g. gpu:1
    cpus: int | None = None  # None: DEFAULT_SLURM_CPUS, or the partition's largest node if smaller
    mem: str | None = None  # e.g. 16G
    array_parallelism: int = 64
    extra: dict[str, str] = field(default_factory=dict)  # other sbatch options, without the leading --
    signal_delay: int | None = None  # s before the time limit that Slurm warns a task; None: see signal_delay_s
    check: bool = True  # ask `sbatch --test-only` whether any node can run a task before submitting

    def minutes(self) -> int:
        return slurm_minutes(self.time)

    def signal_delay_s(self) -> int:
        """The warning before the time limit: MAX_SIGNAL_DELAY_S, or a quarter of a shorter limit, so that a task
        of a few minutes is not warned (and requeued) the moment it starts."""
        limit = self.minutes() * 60
        delay = self.signal_delay if self.signal_delay is not None else min(MAX_SIGNAL_DELAY_S, limit // 4)
        if not 0 < delay < limit:
            raise ConfigError(f"--slurm-signal-delay {delay} s must be above 0 and below --slurm-time "
                              f"({limit} s): Slurm warns a task that long before its limit, to checkpoint and "
                              "requeue it")
        return delay

    def cpus_per_task(self, threads: int) -> int:
        """What each task asks: every torch thread of the run gets a CPU."""
        return max(self.cpus or DEFAULT_SLURM_CPUS, threads)


def slurm_minutes(text: str) -> int:
    """Slurm's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes (at least 1)."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(f"--slurm-time {text!r} is not a Slurm time; use minutes, H:MM:SS or D-HH:MM:SS")
    days, a, b, c = match.groups()
    if days is not None:  # D-H[:M[:S]]
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # H:M:S
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    else:  # M or M:S
        seconds = int(a) * 60 + int(b or 0)
    return max(1, -(-seconds // 60))


def parse_sbatch_options(items: list[str] | None) -> dict[str, str]:
    """--slurm-option KEY=VALUE (e.g. account=proj, qos=high, constraint=a100) -> {KEY: VALUE}."""
    options = {}
    for item in items or []:
        key, sep, value = item.lstrip("-").partition("=")
        if not key:
            raise ConfigError(f"--slurm-option {item!r}: write it as KEY=VALUE (an sbatch option without --)")
        options[key.replace("-", "_")] = value if sep else ""
    return options


class SlurmTask:
    """The callable each Slurm array task runs: one notebook, requeued (and resumed) on preemption or timeout.

    submitit calls `checkpoint` when Slurm signals a preemption or the time limit; returning the
    same call requeues it, and `train` resumes from the run's last epoch checkpoint.
    """

    def __init__(self, task: Task, threads: int) -> None:
        self.task, self.threads = task, threads

    def __call__(self) -> str:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SRLIB_THREADS"):
            os.environ[name] = str(self.threads)  # the kernel inherits them
        run_task(self.task, executor="slurm")
        return self.task.name

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class SlurmFinish:
    """The dependent (afterany) job of a --no-wait sweep: the analysis notebooks and the book."""

    def __init__(self, sweep_kwargs: dict) -> None:
        self.sweep_kwargs = sweep_kwargs

    def __call__(self) -> str:
        from .sweep import finish

        result = finish(**self.sweep_kwargs)
        return f"analysis: {len(result.done)} done, {len(result.failed)} failed"


def slurm_executor(folder: Path, options: SlurmOptions, name: str, threads: int, **extra):
    if shutil.which("sbatch") is None:
        raise SrlibError("--executor slurm needs Slurm's sbatch on the PATH of this machine (a login node of the "
                         "cluster); use --executor local to run here")
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j")
    executor.update_parameters(
        job_name=name, partition=options.partition, time=options.minutes(), gres=options.gres,
        cpus_per_task=options.cpus_per_task(threads), mem=options.mem, array_parallelism=options.array_parallelism,
        signal_delay_s=options.signal_delay_s(), additional_parameters=dict(options.extra), **extra)
    return executor


def submit_slurm(tasks: list[Task], folder: Path, options: SlurmOptions, name: str, threads: int) -> list[str]:
    """One array job, one task per Task; returns the job ids ('<array>_<index>')."""
    executor = slurm_executor(folder, options, name, threads)
    with executor.batch():
        jobs = [executor.submit(SlurmTask(task, threads)) for task in tasks]
    ids = [job.job_id for job in jobs]
    for task, job in zip(tasks, jobs, strict=True):
        write_job(task, "queued", executor="slurm", job_id=job.job_id,
                  slurm_log=str(job.paths.stderr))
    return ids


def cancel_slurm(job_ids: list[str]) -> None:
    """scancel these tasks; one that already left the queue is no error."""
    if job_ids:
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)


# --- slurm: will any node run it? --------------------------------------------------------------------------

@dataclass(frozen=True)
class Partition:
    """What a partition offers a single-node task: its limits and the largest of its nodes."""

    name: str
    max_minutes: int | None  # MaxTime; None: unlimited
    cpus: int  # the most CPUs of one node (capped by MaxCPUsPerNode)
    mem_mb: int  # the most memory of one node (capped by MaxMemPerNode)
    gres: tuple[str, ...]  # the GRES names its nodes have (gpu, ...)


def _slurm_text(command: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


def _fields(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


def partition_info(name: str | None) -> Partition | None:
    """`scontrol show partition` and `sinfo` of partition `name` (None: the default one); None if unknown."""
    shown = _slurm_text(["scontrol", "show", "partition", "-o"] + ([name] if name else []))
    rows = [_fields(line) for line in shown.stdout.splitlines() if line.strip()] if shown.returncode == 0 else []
    row = next((r for r in rows if name or r.get("Default") == "YES"), None)
    if row is None:
        return None
    nodes = _slurm_text(["sinfo", "-h", "-N", "-p", row["PartitionName"], "-o", "%c %m %G"])
    cpus, mem, gres = 0, 0, set()
    for line in nodes.stdout.splitlines():
        c, m, g = (line.split() + ["", "", ""])[:3]
        cpus, mem = max(cpus, _int(c.rstrip("+"))), max(mem, _int(m.rstrip("+")))
        gres |= {item.split(":")[0] for item in g.split(",") if item and item != "(null)"}
    max_time = row.get("MaxTime", "UNLIMITED")
    return Partition(row["PartitionName"],
                     None if max_time in ("UNLIMITED", "INFINITE") else slurm_minutes(max_time),
                     min(cpus, _int(row.get("MaxCPUsPerNode"), cpus)), min(mem, _int(row.get("MaxMemPerNode"), mem)),
                     tuple(sorted(gres)))


def _int(text: str | None, default: int = 0) -> int:
    return int(text) if text and text.isdigit() else default


def with_default_cpus(options: SlurmOptions) -> SlurmOptions:
    """`options` with `cpus` filled in: DEFAULT_SLURM_CPUS, or all of the partition's largest node if it has fewer
    (so that the default always fits); an explicit --slurm-cpus is kept (and checked)."""
    if options.cpus is not None:
        return options
    found = partition_info(options.partition) if shutil.which("sinfo") else None
    cpus = min(DEFAULT_SLURM_CPUS, found.cpus) if found and found.cpus else DEFAULT_SLURM_CPUS
    return replace(options, cpus=cpus)


def check_slurm_request(folder: Path, options: SlurmOptions, threads: int) -> None:
    """Refuse, in one line naming the option, a task request no node of the partition can run.

    `sbatch --test-only` is given the very script submitit would submit; a time limit above the partition's
    MaxTime passes it (the job would pend for ever, reason PartitionTimeLimit), so that is compared here."""
    # submitit's own rendering of the sbatch script (a private method, stable since 1.0): the exact request.
    script = slurm_executor(folder, options, "srlib-check", threads)._make_submission_file_text("true", "check")
    found = partition_info(options.partition)
    if found is not None and found.max_minutes is not None and options.minutes() > found.max_minutes:
        raise ConfigError(f"--slurm-time {options.time} ({options.minutes()} min), but partition {found.name} allows "
                          f"at most {found.max_minutes} min; lower it or choose another --slurm-partition")
    tried = _slurm_text(["sbatch", "--test-only"], stdin=script)
    if tried.returncode == 0:
        return
    said = [line.strip() for line in (tried.stderr + tried.stdout).splitlines() if line.strip()]
    said = said[-1] if said else f"exit code {tried.returncode}"
    raise ConfigError(_refusal(options, threads, found, said))


def _refusal(options: SlurmOptions, threads: int, found: Partition | None, said: str) -> str:
    """Which option asks what no node has, from what the partition offers; else what sbatch said."""
    if options.partition and found is None:
        return (f"--slurm-partition {options.partition}: Slurm says {said!r}; `sinfo -s` lists the partitions "
                "(or leave it out for the default one)")
    asked = options.cpus_per_task(threads)
    fix = "; lower it or choose another --slurm-partition"
    if found is not None and found.cpus and asked > found.cpus:
        what = (f"--slurm-cpus {asked}" if asked == options.cpus else
                f"--threads {threads} (each task asks max(--slurm-cpus, --threads) CPUs)")
        return f"{what}, but the largest node of partition {found.name} has {found.cpus} CPUs{fix}"
    mem = _mem_mb(options.mem)
    if found is not None and mem and found.mem_mb and mem > found.mem_mb:
        return f"--slurm-mem {options.mem}, but the largest node of partition {found.name} has {found.mem_mb} MB{fix}"
    gres = (options.gres or "").split(":")[0]
    if found is not None and gres and gres not in found.gres:
        has = ", ".join(found.gres) or "none"
        return (f"--slurm-gres {options.gres}, but no node of partition {found.name} has {gres} (GRES there: {has}); "
                "drop it or choose another --slurm-partition")
    asked_for = f"-c {asked}" + "".join(f" {k} {v}" for k, v in (("--mem", options.mem), ("--gres", options.gres),
                                                                   ("-p", options.partition)) if v)
    return (f"Slurm refuses the tasks' request ({asked_for}, -t {options.minutes()}"
            f"{''.join(f' --{k}={v}' for k, v in options.extra.items())}): {said!r}; change the --slurm-* option it "
            "names, or skip this check with --slurm-skip-check if this cluster does not allow sbatch --test-only")


def _mem_mb(text: str | None) -> int:
    """sbatch's memory sizes (16G, 500M, 2T, 1024 = MB) in MB; 0 for none or one it does not parse."""
    match = re.fullmatch(r"(\d+)([KMGT]?)B?", (text or "").strip().upper())
    if not match:
        return 0
    return int(int(match.group(1)) * {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 ** 2}[match.group(2)])


# --- slurm: what the queue says ----------------------------------------------------------------------------

# States after which a job will not run again (squeue -t all lists it for MinJobAge, default 300 s, then forgets it).
ENDED_STATES = frozenset({"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY",
                          "PREEMPTED", "REVOKED", "TIMEOUT"})
WAITING_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD"})

# Pending reasons that never clear by themselves (the request does not fit the partition, account or QOS), with the
# fix; https://slurm.schedmd.com/job_reason_codes.html
FATAL_REASONS = {
    "PartitionConfig": "each task asks more than the partition offers (CPUs, memory or GRES of its nodes, or its "
                       "time or node limits); lower --slurm-cpus (or --threads), --slurm-mem, --slurm-gres or "
                       "--slurm-time, or choose another --slurm-partition",
    "PartitionTimeLimit": "--slurm-time is above the partition's MaxTime; lower it or choose another "
                          "--slurm-partition",
    "PartitionNodeLimit": "the job asks more nodes than the partition allows; drop --slurm-option nodes=... or "
                          "choose another --slurm-partition",
    "BadConstraints": "no node has the features asked for; fix --slurm-option constraint=... (sinfo -o '%N %f' "
                      "lists the nodes' features)",
    "InvalidAccount": "the account is not valid for you; fix --slurm-option account=... (sacctmgr show assoc "
                      "user=$USER lists yours)",
    "InvalidQOS": "the QOS is not valid for you; fix --slurm-option qos=... (sacctmgr show assoc user=$USER "
                  "format=account,qos lists yours)",
}
# Reasons that clear by themselves, in words; any other is shown as Slurm's code.
WAITING_REASONS = {
    "None": "just submitted", "Priority": "jobs of higher priority go first",
    "Resources": "waiting for free CPUs, memory or GPUs", "Dependency": "waiting for the job it depends on",
    "BeginTime": "waiting for its start time (a requeued task waits a little)",
    "ReqNodeNotAvail": "a node it may use is down, drained or reserved",
    "JobArrayTaskLimit": "--slurm-array-parallelism tasks already run", "JobHeldUser": "held (scontrol release ID)",
    "JobHeldAdmin": "held by an administrator", "Reservation": "waiting for its reservation",
}


@dataclass(frozen=True)
class QueueEntry:
    """What squeue says of one job: its state and its reason (why it waits, or how it ended)."""

    state: str
    reason: str = ""

    @property
    def live(self) -> bool:
        return self.state not in ENDED_STATES

    @property
    def waiting(self) -> bool:
        return self.state in WAITING_STATES


def pending_words(reason: str) -> str:
    if reason in FATAL_REASONS:
        return f"{reason}, which never clears: {FATAL_REASONS[reason]}"
    return f"{reason} ({WAITING_REASONS[reason]})" if reason in WAITING_REASONS else reason


def slurm_queue(job_ids: list[str] | None = None) -> dict[str, QueueEntry] | None:
    """This user's Slurm jobs ('<array>_<index>' or '<id>' -> state and reason), including those that ended within
    MinJobAge (so a cancelled job says so); None when squeue cannot tell."""
    command = ["squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r"]
    arrays = sorted({j.split("_")[0] for j in job_ids or []})
    if job_ids is not None:
        if not arrays:
            return {}
        command += ["-j", ",".join(arrays)]
    else:
        command += ["-u", os.environ.get("USER") or str(os.getuid())]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        # squeue -j fails with "Invalid job id" once every listed job has left the queue.
        return {} if "Invalid job id" in done.stderr else None
    return parse_squeue(done.stdout)


def parse_squeue(text: str) -> dict[str, QueueEntry]:
    """squeue -o '%i|%T|%r' lines -> {job id: entry}; a reason with details (ReqNodeNotAvail, UnavailableNodes:n1)
    keeps its code."""
    entries = {}
    for line in text.splitlines():
        job, state, reason = (line.strip().split("|") + ["", ""])[:3]
        if job:
            entries[job] = QueueEntry(state, reason.split(",")[0].strip())
    return entries


def main(argv: list[str]) -> int:
    """Worker entry point: `python -m srlib.orchestration.executors '<task json>'`."""
    task = Task(**json.loads(argv[0]))
    try:
        run_task(task)
    except Exception as exc:  # noqa: BLE001 - reported through job.json and the exit code
        print(f"srlib worker: {task.name} failed: {failure_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
