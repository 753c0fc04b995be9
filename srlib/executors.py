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
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import ConfigError, SrlibError
from .store import read_json, write_json

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
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


def run_state(run_dir: Path, finished: bool, queue: dict[str, str] | None) -> RunState:
    """The state of the run in `run_dir`; `queue` maps live Slurm job ids to their state (None: unknown)."""
    if finished:
        return RunState("done")
    job = read_job(run_dir)
    if job is None:
        return RunState("missing")
    here = job.get("host") == socket.gethostname()
    job_id = job.get("job_id")
    in_queue = queue.get(job_id) if (queue is not None and job_id) else None
    if job["state"] == "failed":
        if in_queue == "PENDING":  # Slurm requeued it (its killed kernel made the worker report a failure)
            return RunState("queued", f"Slurm job {job_id} requeued", job)
        if in_queue:  # ending, or already restarted: decided once it leaves the queue or writes job.json again
            return RunState("running", f"on {job.get('host')} (Slurm job {job_id})", job)
        return RunState("failed", job.get("why", ""), job)
    if job["state"] == "queued":
        if job_id and queue is not None:
            return RunState("queued" if in_queue == "PENDING" else "running" if in_queue else "missing",
                            f"Slurm job {job_id}" if in_queue else f"Slurm job {job_id} left the queue", job)
        alive = not here or _alive(job.get("pid"))
        return RunState("queued" if alive else "missing", "" if alive else "its sweep is gone", job)
    if job["state"] == "running":
        if job_id and queue is not None and not in_queue:
            return RunState("failed", f"Slurm job {job_id} ended without finishing (cancelled, killed, or out "
                                      "of time without a requeue)", job)
        if not job_id and here and not _alive(job.get("pid")):
            return RunState("failed", f"its worker (pid {job.get('pid')}) died without finishing (killed?)", job)
        if job_id and queue is not None and in_queue == "PENDING":
            return RunState("queued", f"Slurm job {job_id} requeued", job)
        since = time.strftime("%H:%M", time.localtime(job.get("since", 0)))
        progress = epoch_progress(job.get("log", ""))
        epoch = f", epoch {progress[0]} of {progress[1]} done" if progress else ""
        where = f"{job.get('host')}" + (f" (Slurm job {job_id})" if job_id else f" pid {job.get('pid')}")
        return RunState("running", f"on {where} since {since}{epoch}", job)
    return RunState("missing", "finished without a complete record", job)


def _alive(pid) -> bool:
    from .store import _process_alive

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
    """Runs tasks as `python -m srlib.executors` processes, at most `slots.jobs` at once."""

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
                [sys.executable, "-m", "srlib.executors", json.dumps(asdict(task))], cwd=ROOT,
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

@dataclass
class SlurmOptions:
    partition: str | None = None
    time: str = "4:00:00"  # per task: minutes, H:MM:SS or D-HH:MM:SS
    gres: str | None = None  # e.g. gpu:1
    cpus: int = 4
    mem: str | None = None  # e.g. 16G
    array_parallelism: int = 64
    extra: dict[str, str] = field(default_factory=dict)  # other sbatch options, without the leading --

    def minutes(self) -> int:
        return slurm_minutes(self.time)


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
        cpus_per_task=max(options.cpus, threads), mem=options.mem, array_parallelism=options.array_parallelism,
        signal_delay_s=120, additional_parameters=dict(options.extra), **extra)
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


def slurm_queue(job_ids: list[str] | None = None) -> dict[str, str] | None:
    """Live Slurm jobs of this user ({'<array>_<index>' or '<id>': state}); None when squeue cannot tell."""
    command = ["squeue", "-h", "-r", "-o", "%i|%T"]
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
    states = {}
    for line in done.stdout.splitlines():
        job, _, state = line.strip().partition("|")
        states[job] = state
    return states


def main(argv: list[str]) -> int:
    """Worker entry point: `python -m srlib.executors '<task json>'`."""
    task = Task(**json.loads(argv[0]))
    try:
        run_task(task)
    except Exception as exc:  # noqa: BLE001 - reported through job.json and the exit code
        print(f"srlib worker: {task.name} failed: {failure_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
