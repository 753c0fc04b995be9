"""Slurm through submitit: the options of a sweep's array, the check that a node can run a task, submitting and
cancelling, and what squeue says (states and pending reasons, those that clear and those that never do)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SrlibError
from .tasks import THREAD_VARS, Task, run_task

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
    days, *rest = match.groups()
    parts = [int(n) for n in rest if n is not None]
    units = (3600, 60, 1) if days is not None or len(parts) == 3 else (60, 1)  # D-H[:M[:S]], H:M:S; else M[:S]
    seconds = int(days or 0) * 86400 + sum(n * unit for n, unit in zip(parts, units, strict=False))
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
    """The callable each Slurm array task runs: one notebook. On preemption or the time limit submitit calls
    `checkpoint`; returning the same call requeues it, and `train` resumes from the run's last epoch checkpoint."""

    def __init__(self, task: Task, threads: int) -> None:
        self.task, self.threads = task, threads

    def __call__(self) -> str:
        os.environ.update(dict.fromkeys(THREAD_VARS, str(self.threads)))
        run_task(self.task, executor="slurm")
        return self.task.name

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


class SlurmFinish:
    """The dependent (afterany) job of a --no-wait sweep: the analysis notebooks and the book. It holds the sweep's
    finishing step (pickled by reference) and its arguments, so this module never imports the sweep."""

    def __init__(self, finish: Callable[..., Any], **kwargs: Any) -> None:
        self.finish, self.kwargs = finish, kwargs

    def __call__(self) -> str:
        result = self.finish(**self.kwargs)
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


def submit_slurm(tasks: list[Task], folder: Path, options: SlurmOptions, name: str, threads: int) -> list:
    """One array job, one task per Task; returns submitit's jobs (`job_id` '<array>_<index>', `paths.stderr`)."""
    executor = slurm_executor(folder, options, name, threads)
    with executor.batch():
        jobs = [executor.submit(SlurmTask(task, threads)) for task in tasks]
    return jobs  # submitted, with their ids, as the batch closed


def cancel_slurm(job_ids: list[str]) -> None:
    """scancel these tasks; one that already left the queue is no error."""
    if job_ids:
        _slurm_text(["scancel", *job_ids])


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
    """A Slurm command's output; one that cannot run or hangs answers exit code 1, its error as stderr."""
    try:
        return subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


def partition_info(name: str | None) -> Partition | None:
    """`scontrol show partition` and `sinfo` of partition `name` (None: the default one); None if unknown."""
    shown = _slurm_text(["scontrol", "show", "partition", "-o"] + ([name] if name else []))
    lines = shown.stdout.splitlines() if shown.returncode == 0 else []
    rows = [dict(item.split("=", 1) for item in line.split() if "=" in item) for line in lines if line.strip()]
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
    done = _slurm_text(command)
    if done.returncode != 0:  # also: squeue missing or hung
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
