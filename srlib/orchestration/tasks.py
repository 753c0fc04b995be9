"""One notebook to execute (`Task`), executing it in a worker, its log, and `job.json`, where a run says how it goes.

A worker (`python -m srlib.orchestration.tasks '<task json>'`, or a Slurm array task) runs the notebook with
papermill, all its output going to a log beside the executed notebook. `job.json` in the run's folder says where
the run is and how it ended, so `srlib status` and the sweep read the same facts from any machine.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..runs import NOTEBOOKS, ROOT
from ..store import read_json_or_none, write_json

KERNEL = "python3"  # the kernel of the interpreter running the sweep (ipykernel's native spec)
JOB = "job.json"
# What a kernel that lost the race for its ZMQ ports looks like to papermill (papermill#511, #239):
# jupyter_client picks free ports, releases them, and the kernel binds them a moment later.
KERNEL_START_ERRORS = ("Address already in use", "Kernel died before replying to kernel_info", "Kernel didn't respond")
KERNEL_START_TRIES = 4  # a kernel that lost the race is started again, up to this many times in all
# The lines a run's log has (srlib.train after each epoch, srlib.progress.ImageMeter); the bars between are not read.
_EPOCH = re.compile(r"epoch (\d+)/(\d+): loss")
_UPSCALING = re.compile(r"\] upscaling \S+: ([\d,]+)/([\d,]+) images, ([\d.,]+) img/s")
_UPSCALED = re.compile(r"\] upscaling \S+: (?:[\d,]+ images in \d+ s, ([\d.,]+) img/s|reused the cached)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours in a traceback
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "SRLIB_THREADS")  # a worker's threads; its kernel inherits them
WORKER = "srlib.orchestration.tasks"  # `python -m` this module runs one task (see `main`)


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

    def worker_command(self) -> list[str]:
        """The process that executes this task (see `main`)."""
        return [sys.executable, "-m", WORKER, json.dumps(asdict(self))]


# --- executing one notebook ---------------------------------------------------------------------------------

def execute_notebook(template: str, output: Path, parameters: dict, log_output: bool = True) -> None:
    """papermill `template` -> `output`; a kernel that could not start is started again (port races)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.stem + ".partial.ipynb")
    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            pm.execute_notebook(str(NOTEBOOKS / template), str(partial), parameters=parameters,
                                kernel_name=KERNEL, cwd=str(ROOT), log_output=log_output, progress_bar=False)
            break
        except Exception as exc:
            # only a kernel that died or hung while starting, before any cell ran, is started again
            started = isinstance(exc, PapermillExecutionError) or not any(s in str(exc) for s in KERNEL_START_ERRORS)
            if attempt == KERNEL_START_TRIES or started:
                raise
            wait = 0.5 * attempt + (os.getpid() % 7) / 7  # spread the retries of workers that collided
            logging.getLogger("srlib").warning("kernel did not start (%s); starting it again in %.1f s",
                                               failure_line(exc), wait)
            time.sleep(wait)
    _tag_for_the_book(partial, parameters)
    os.replace(partial, output)  # an executed notebook only appears once it ran to the end


def executed_parameters(notebook: Path) -> dict:
    """The parameters papermill executed `notebook` with ({} when it is not a readable executed notebook)."""
    import nbformat

    try:
        return nbformat.read(notebook, as_version=4).metadata.get("papermill", {}).get("parameters") or {}
    except (OSError, ValueError):
        return {}


def _tag_for_the_book(path: Path, parameters: dict | None = None) -> None:
    """Readers see results first: parameter cells are dropped, code is folded (one click shows it); a run's
    page is titled with its variant and seed, so the book's table of contents tells the runs apart."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    first = next((c for c in notebook.cells if c.cell_type == "markdown"), None)
    if first is not None and first.source.startswith("# ") and {"variant", "seed"} <= set(parameters or {}):
        title, _, rest = first.source.partition("\n")
        first.source = f"{title}: {parameters['variant']}, seed {parameters['seed']}\n{rest}"
    for cell in (c for c in notebook.cells if c.cell_type == "code"):
        tags = cell.metadata.setdefault("tags", [])
        extra = "remove-cell" if {"parameters", "injected-parameters"} & set(tags) else "hide-input"
        if extra not in tags:
            tags.append(extra)
    nbformat.write(notebook, path)


def failure_line(exc: BaseException) -> str:
    """The line of an exception's text that says what failed (papermill puts the kernel's traceback in it)."""
    text = [clean for line in str(exc).splitlines() if (clean := _ANSI.sub("", line).strip())]
    return next((line for line in reversed(text) if re.search(r"(Error|Exception)\b", line)),
                text[-1] if text else type(exc).__name__)


def run_task(task: Task, executor: str = "local") -> None:
    """Execute `task` in this process, its papermill output going to `task.log`; job.json says how it went."""
    task.log.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(task.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(message)s", "%H:%M:%S"))
    loggers = [logging.getLogger(name) for name in ("papermill", "srlib")]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the terminal shows one line per run, not the cells
    env = os.environ  # a Slurm array task is named '<array>_<index>', as squeue lists it
    job = {"executor": executor, "job_id": f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
           if "SLURM_ARRAY_JOB_ID" in env else env.get("SLURM_JOB_ID")}
    write_job(task, "running", **job, threads=env.get("OMP_NUM_THREADS"))
    try:
        execute_notebook(task.template, Path(task.output), task.parameters)
    except BaseException as exc:
        write_job(task, "failed", **job, why=failure_line(exc))
        raise
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        handler.close()
    write_job(task, "done", **job)


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
    return read_json_or_none(Path(run_dir) / JOB)


@dataclass(frozen=True)
class Phase:
    name: str  # "upscaling" or "training"
    done: int  # images upscaled, or epochs finished
    total: int  # images to upscale, or epochs (0: not known yet, right after the upscaling)
    rate: float | None = None  # images/s of the upscaling (so far, or in all when it ended)


def run_phase(log: str | Path) -> Phase | None:
    """What a run does, from the end of its log; None while it starts (nothing upscaled or trained yet)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
            tail = f.read().decode(errors="replace")
    except OSError:
        return None
    phase = None
    for line in tail.splitlines():
        if m := _EPOCH.search(line):
            phase = Phase("training", int(m[1]), int(m[2]))
        elif m := _UPSCALING.search(line):
            phase = Phase("upscaling", _number(m[1]), _number(m[2]), _number(m[3]))
        elif m := _UPSCALED.search(line):
            phase = Phase("training", 0, 0, _number(m[1]) if m[1] else None)
    return phase


def _number(text: str):
    text = text.replace(",", "")
    return float(text) if "." in text else int(text)


def last_error_line(log: str | Path) -> str | None:
    try:
        lines = Path(log).read_text(errors="replace").splitlines()[-200:]
    except OSError:
        return None
    hits = [line.strip() for line in lines if re.search(r"\w+(Error|Exception)\b:", line)]
    return _ANSI.sub("", hits[-1]) if hits else None


def main(argv: list[str]) -> int:
    """Worker entry point: `python -m srlib.orchestration.tasks '<task json>'`."""
    task = Task(**json.loads(argv[0]))
    try:
        run_task(task)
    except Exception as exc:  # noqa: BLE001 - reported through job.json and the exit code
        print(f"srlib worker: {task.name} failed: {failure_line(exc)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
