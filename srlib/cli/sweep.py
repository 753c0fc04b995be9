"""Commands that run many runs and build the report: `srlib sweep`, `status`, `book`."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from ..config import PROFILES, STUDY_VARIANTS, add_config_options, config_overrides, default_profile
from ..errors import ConfigError, SrlibError
from ..orchestration.request import EXECUTORS, SEEDS, SweepRequest
from ..orchestration.slurm import SlurmOptions, parse_sbatch_options
from ..orchestration.states import RunState, status
from ..orchestration.sweep import sweep
from ..runs import records_profile
from .core import add_data_options


def add_scaleout_options(p: argparse.ArgumentParser) -> None:
    """Where the sweep's runs execute (srlib.orchestration.executors); none of it changes a run's results."""
    p.add_argument("--executor", choices=EXECUTORS, default="local",
                   help="local: worker processes on this machine; slurm: a job array through submitit")
    p.add_argument("--jobs", type=int, help="local: runs at once (default: GPUs x --runs-per-gpu; on a CPU 1)")
    p.add_argument("--runs-per-gpu", type=int, default=1, help="local: runs sharing one GPU (default: 1)")
    p.add_argument("--threads", type=int, help="torch threads per run (default: local cores / jobs, slurm "
                   "--slurm-cpus); pin it to compare results across machines")
    p.add_argument("--no-wait", action="store_true", help="slurm: submit and return; a dependent job builds the "
                   "report (or rerun the same command)")
    p.add_argument("--no-book", action="store_true", help="do not build the book at the end")
    g = p.add_argument_group("slurm (with --executor slurm; --profile is then required)")
    g.add_argument("--slurm-partition")
    g.add_argument("--slurm-time", default="4:00:00", help="per run: minutes, H:MM:SS or D-HH:MM:SS "
                   "(default 4:00:00); a run that hits it is requeued and resumes from its last epoch")
    g.add_argument("--slurm-gres", help="e.g. gpu:1")
    g.add_argument("--slurm-cpus", type=int, help="CPUs per run (default: 4, or all CPUs of the partition's largest "
                   "node when it has fewer); a task asks max(--slurm-cpus, --threads)")
    g.add_argument("--slurm-mem", help="memory per run, e.g. 16G")
    g.add_argument("--slurm-array-parallelism", type=int, default=64, help="runs at once (default 64)")
    g.add_argument("--slurm-option", action="append", metavar="KEY=VALUE",
                   help="any other sbatch option, repeatable: --slurm-option account=proj --slurm-option qos=high")
    g.add_argument("--slurm-signal-delay", type=int, metavar="SECONDS", help="Slurm warns a task this long before "
                   "--slurm-time so it checkpoints and is requeued (default: 120, or a quarter of a shorter time "
                   "limit; Slurm may warn up to a minute earlier)")
    g.add_argument("--slurm-skip-check", action="store_true", help="submit without first asking sbatch --test-only "
                   "whether a node of the partition can run a task (for clusters that do not allow --test-only)")


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt  # so the sweep stops its workers, as for Ctrl-C


def cmd_sweep(args: argparse.Namespace) -> int:
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    if args.executor == "slurm" and not args.profile:
        raise ConfigError("--executor slurm needs --profile (paper, preview or smoke): the login node that submits "
                          "usually has no GPU, so the default (paper with CUDA, else preview) would guess wrong")
    if args.dataset and not args.records:
        raise ConfigError(f"--dataset {args.dataset} picks the records to show and needs --records; training takes "
                          "its dataset from --data or SRLIB_DATA")
    if args.records:
        args.out = args.records
    profile = args.profile or (records_profile(args.records) if args.records else default_profile())
    slurm = None if args.executor != "slurm" else SlurmOptions(
        partition=args.slurm_partition, time=args.slurm_time, gres=args.slurm_gres, cpus=args.slurm_cpus,
        mem=args.slurm_mem, array_parallelism=args.slurm_array_parallelism,
        extra=parse_sbatch_options(args.slurm_option), signal_delay=args.slurm_signal_delay,
        check=not args.slurm_skip_check)
    request = SweepRequest(profile, args.seeds, args.variants, args.out, args.notebooks_out, args.data,
                           args.cache_dir, args.dataset, config_overrides(args), analysis=not args.no_analysis,
                           records_only=bool(args.records), executor=args.executor, jobs=args.jobs,
                           runs_per_gpu=args.runs_per_gpu, threads=args.threads, slurm=slurm,
                           wait=not args.no_wait, book=not args.no_book)
    if args.dry_run:
        from ..orchestration.preflight import format_plan

        plan = request.plan()
        print(format_plan(plan) + "\ndry run: nothing was started")
        plan.raise_problems(listed_above=True)
        return 0
    result = sweep(request)
    if result.submitted and args.no_wait:
        return 0
    print(f"[sweep] {len(result.done)} notebook(s) done in {result.seconds / 60:.1f} min, "
          f"{len(result.skipped)} already up to date, {len(result.failed)} failed")
    for name, why in result.failed.items():
        print(f"[sweep]   FAILED {name}: {why}; log: {result.logs.get(name, '?')}")
    for line in result.closing_lines():
        print(f"[sweep] {line}")
    if result.failed:
        raise SrlibError(f"{len(result.failed)} notebook(s) failed: {', '.join(result.failed)}; "
                         "the others finished (rerun the same command to retry only what is missing or failed)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = status(args.out, args.profile)
    if not rows:
        print(f"no runs under {Path(args.out).resolve()}" + (f" for profile {args.profile}" if args.profile else ""))
        return 0
    width = max(len(name) for name, _ in rows)
    for name, st in rows:
        print(f"{name:<{width}}  {st.state:<8} {_status_detail(st)}".rstrip())
    counts = {s: sum(st.state == s for _, st in rows) for s in ("done", "running", "queued", "failed", "missing")}
    print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
    return 0


def _status_detail(st: RunState) -> str:
    """A failed run names its log files (the run's, and Slurm's when the task got that far); a queued one, why."""
    logs = [f"{what}: {st.job[key]}" for key, what in (("log", "log"), ("slurm_log", "Slurm log"))
            if st.state == "failed" and st.job.get(key) and Path(st.job[key]).is_file()]
    return "; ".join([st.detail, *logs])


def cmd_book(args: argparse.Namespace) -> int:
    from ..orchestration.book import build_book

    print(f"report: {build_book(path_output=args.path_output)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="run train.ipynb per variant and seed with papermill, then the analysis")
    p.add_argument("--profile", choices=list(PROFILES), help="default: paper with CUDA, else preview")
    p.add_argument("--seeds", type=int, default=SEEDS, help=f"seeds 0..N-1 (default {SEEDS})")
    p.add_argument("--variants", nargs="+", default=list(STUDY_VARIANTS))
    p.add_argument("--out", default="runs")
    p.add_argument("--notebooks-out", default="book/executed")
    p.add_argument("--no-analysis", action="store_true")
    add_config_options(p)  # e.g. --epochs 1 --train-size 20: the same overrides for every run
    add_scaleout_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, what is done, caches to build, "
                   "disk, estimated time) and the checks' verdict; start nothing")
    p.add_argument("--records", help="build the book from the records in RECORDS (e.g. results/paper) instead of "
                   "training: sets --out to it; a missing variant is named in the book, never trained")
    p.add_argument("--dataset", help="with --records: the records of this dataset (its folder name, as `srlib status` "
                   "shows it); default: the one with the most runs there, as the results page shows")
    add_data_options(p)
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("status", help="each run of a sweep: done, running (where, since, epoch), queued (why it "
                       "waits), failed (why, log files)")
    p.add_argument("--out", default="runs")
    p.add_argument("--profile", choices=list(PROFILES), help="default: every profile under --out")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("book", help="build the HTML report from the executed notebooks (never trains)")
    p.add_argument("--path-output", help="the book goes to PATH_OUTPUT/_build/html (default: the project root)")
    p.set_defaults(func=cmd_book)
