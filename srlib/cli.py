"""`srlib` command line: train, upscale, sr-quality, data, sweep, bench."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time

from .config import PROFILES, STUDY_VARIANTS, VARIANTS, add_config_options, config_overrides, make_config
from .errors import PARTIAL_EXIT_CODE, SrlibError
from .upscale import sr_models


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="ImageFolder tree or folder with cifar-10-batches-py (default: $SRLIB_DATA, "
                   "else canonical CIFAR-10 in $SRLIB_DATA_DIR or ./data, downloaded if missing)")
    p.add_argument("--cache-dir", help="where decoded and upscaled arrays are cached ($SRLIB_CACHE_DIR, ./cache)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", choices=list(PROFILES),
                   help="protocol defaults (default: paper with CUDA, else preview)")
    add_config_options(p)
    p.add_argument("--out", default="runs", help="records go to OUT/<profile>/<variant>/seed<k>/ (default: runs)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--deadline", type=_deadline, help="stop cleanly after the last epoch that ends before this: "
                   "seconds from now, or an ISO time (2026-11-28T23:00); exit code 3, rerun to resume")
    p.add_argument("--allow-cpu-paper", action="store_true", help="allow the paper profile on a CPU (weeks)")
    _add_data_options(p)


def _deadline(text: str) -> float:
    """A deadline as a time.time() value: seconds from now, or an ISO date-time (local time unless it says)."""
    try:
        return time.time() + float(text)
    except ValueError:
        pass
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither seconds nor an ISO date-time") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from .preflight import check_train
    from .train import train

    config = make_config(args.variant, args.profile, args.seed, **config_overrides(args))
    check_train(config, args.out, args.data, args.cache_dir, args.device, args.force)  # refuse in seconds
    record = train(config, out=args.out, data=args.data, cache_dir=args.cache_dir, device=args.device,
                   force=args.force, deadline=args.deadline, allow_cpu_paper=args.allow_cpu_paper)
    s = record["summary"]
    if s:
        print(f"max {s['max_test_acc']:.2f}%  top-5 mean {s['top5_mean_test_acc']:.2f}%  "
              f"final {s['final_test_acc']:.2f}%  ({s['train_seconds']:.0f}s training)")
    if record["status"] == "partial":
        print(f"partial: {len(record['epochs'])} of {config.epochs} epochs before the deadline; rerun the same "
              "command to resume")
        return PARTIAL_EXIT_CODE
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from .data import describe, load_dataset

    print(describe(args.data))
    if args.load:
        dataset = load_dataset(args.data, cache_dir=args.cache_dir)
        print(json.dumps(dataset.identity, indent=2))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from .config import VARIANTS as V
    from .data import default_cache_dir, load_dataset, stratified_subset
    from .upscale import upscale_cached

    variant = V[args.variant]
    if variant.method == "none":
        print("original needs no upscaling")
        return 0
    dataset = load_dataset(args.data, cache_dir=args.cache_dir)
    cache = args.cache_dir or default_cache_dir()
    for split, x, y, size in (("train", dataset.train_x, dataset.train_y, args.train_size),
                              ("test", dataset.test_x, dataset.test_y, args.test_size)):
        images = x[stratified_subset(y, size)]
        out, identity = upscale_cached(images, variant.method, variant.scale, cache, weights=args.sr_weights)
        print(f"{split}: {len(images)} images -> {out.shape[-1]} px, cached at {identity['cache']}")
    return 0


def cmd_sr_quality(args: argparse.Namespace) -> int:
    from .quality import sr_quality

    record = sr_quality(scales=args.scales, n=args.n, data=args.data, cache_dir=args.cache_dir,
                        out=args.out, weights=args.sr_weights, models=args.models)
    for row in record["results"]:
        print(f"x{row['scale']} {row['model']}: PSNR bicubic {row['psnr_bicubic']:.2f} dB, SR {row['psnr_sr']:.2f} "
              f"dB ({row['psnr_gain']:+.2f}); SSIM bicubic {row['ssim_bicubic']:.4f}, SR {row['ssim_sr']:.4f} "
              f"({row['images_per_s']:.0f} img/s)")
    print(f"record: {args.out}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import build_book

    print(f"report: {build_book(path_output=args.path_output)}")
    return 0


def _add_scaleout_options(p: argparse.ArgumentParser) -> None:
    """Where the sweep's runs execute (srlib.executors); none of this changes a run's results or identity."""
    p.add_argument("--executor", choices=["local", "slurm"], default="local",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlib", description="Does super-resolving CIFAR-10 beat resizing?")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one variant with one seed; writes a run record")
    p.add_argument("--variant", required=True, help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if a finished record exists")
    _add_train_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="show which CIFAR-10 would be used")
    p.add_argument("--load", action="store_true", help="also decode (cached) and print its identity")
    _add_data_options(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("upscale", help="precompute (cache) a variant's upscaled images")
    p.add_argument("--variant", required=True, choices=[v for v in VARIANTS if v != "original"])
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--sr-weights")
    _add_data_options(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("sr-quality", help="PSNR/SSIM of SR vs bicubic on CIFAR test images")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    p.add_argument("--n", type=int, default=1000, help="test images to use (stratified)")
    p.add_argument("--models", nargs="*", metavar="MODEL", help="registered SR models to measure (default: all of "
                   f"{', '.join(sr_models())}; none named: only --sr-weights)")
    p.add_argument("--sr-weights", nargs="+", metavar="PATH", help="spandrel SR checkpoint(s), each measured at "
                   "its own scale, standing for sr_x2/sr_x4 as trained with --sr-weights")
    p.add_argument("--out", default="runs/sr_quality.json")
    _add_data_options(p)
    p.set_defaults(func=cmd_sr_quality)

    p = sub.add_parser("sweep", help="run train.ipynb per variant and seed with papermill, then the analysis")
    p.add_argument("--profile", choices=list(PROFILES), help="default: paper with CUDA, else preview")
    p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1")
    p.add_argument("--variants", nargs="+", default=list(STUDY_VARIANTS))
    p.add_argument("--out", default="runs")
    p.add_argument("--notebooks-out", default="book/executed")
    p.add_argument("--no-analysis", action="store_true")
    add_config_options(p)  # e.g. --epochs 1 --train-size 20: the same overrides for every run
    _add_scaleout_options(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (runs, what is done, caches to build, "
                   "disk, estimated time) and the checks' verdict; start nothing")
    p.add_argument("--records", help="build the book from the records in RECORDS (e.g. results/paper) instead of "
                   "training: sets --out to it; a missing variant is named in the book, never trained")
    _add_data_options(p)
    p.set_defaults(func=lambda a: __import__("srlib.sweep", fromlist=["cmd_sweep"]).cmd_sweep(a))

    p = sub.add_parser("status", help="each run of a sweep: done, running (where, since, epoch), queued (why it "
                       "waits), failed (why, log files)")
    p.add_argument("--out", default="runs")
    p.add_argument("--profile", choices=list(PROFILES), help="default: every profile under --out")
    p.set_defaults(func=lambda a: __import__("srlib.sweep", fromlist=["cmd_status"]).cmd_status(a))

    p = sub.add_parser("book", help="build the HTML report from the executed notebooks (never trains)")
    p.add_argument("--path-output", help="the book goes to PATH_OUTPUT/_build/html (default: the project root)")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("bench", help="training and upscaling speed: reference-style baseline vs srlib")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--px", type=int, nargs="+", default=[32, 64, 128],
                   help="training input sizes in px, multiples of 32 (default: 32 64 128)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement (at 32 px)")
    p.add_argument("--images", type=int, default=64, help="images per upscaling measurement")
    p.add_argument("--device", help="cpu or cuda (default: the GPU when there is one)")
    p.add_argument("--no-accuracy", action="store_true", help="no effect, kept for old command lines: the "
                   "accuracy check is now benchmarks/accuracy_check.py")
    p.set_defaults(func=lambda a: __import__("srlib.bench", fromlist=["cmd_bench"]).cmd_bench(a))

    from .orchestration.kit.commands import add_parser as add_kit_parser  # light: torch only when a kit command runs

    add_kit_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SrlibError as exc:
        print(f"srlib: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. a read-only or vanished output folder: one line, not a traceback
        print(f"srlib: error: {exc}; check that path, its permissions and the free disk space", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("srlib: interrupted; finished epochs are checkpointed, rerun the same command to resume",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
