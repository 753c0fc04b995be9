"""Commands of the research path: `srlib train`, `data`, `upscale`, `sr-quality`."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import time

from ..config import PROFILES, VARIANTS, add_config_options, config_overrides, default_profile, make_config
from ..errors import PARTIAL_EXIT_CODE
from ..runs import sr_quality_path
from ..upscale import sr_models


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="ImageFolder tree or folder with cifar-10-batches-py (default: $SRLIB_DATA, "
                   "else canonical CIFAR-10 in $SRLIB_DATA_DIR or ./data, downloaded if missing)")
    p.add_argument("--cache-dir", help="where decoded and upscaled arrays are cached ($SRLIB_CACHE_DIR, ./cache)")


def _deadline(text: str) -> float:
    """A deadline as a time.time() value: seconds from now, or an ISO date-time (local time unless it says)."""
    with contextlib.suppress(ValueError):
        return time.time() + float(text)
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is neither seconds nor an ISO date-time") from exc


def cmd_train(args: argparse.Namespace) -> int:
    from ..orchestration.preflight import make_plan
    from ..train import train

    config = make_config(args.variant, args.profile, args.seed, **config_overrides(args))
    # refuse in seconds what cannot succeed
    make_plan([config], args.out, args.data, args.cache_dir, device=args.device, force=args.force).raise_problems()
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
    from ..data import describe, load_dataset

    print(describe(args.data))
    if args.load:
        print(json.dumps(load_dataset(args.data, cache_dir=args.cache_dir).identity, indent=2))
    return 0


def cmd_upscale(args: argparse.Namespace) -> int:
    from ..data import default_cache_dir, load_dataset, stratified_subset
    from ..upscale import upscale_cached

    variant = VARIANTS[args.variant]
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
    from ..data import dataset_key
    from ..quality import sr_quality
    from ..store import write_json

    record = sr_quality(scales=args.scales, n=args.n, data=args.data, cache_dir=args.cache_dir,
                        weights=args.sr_weights, models=args.models)
    args.out = args.out or sr_quality_path("runs", args.profile or default_profile(), dataset_key(record["data"]))
    write_json(args.out, record)
    for row in record["results"]:
        print(f"x{row['scale']} {row['model']}: PSNR bicubic {row['psnr_bicubic']:.2f} dB, SR {row['psnr_sr']:.2f} "
              f"dB ({row['psnr_gain']:+.2f}); SSIM bicubic {row['ssim_bicubic']:.4f}, SR {row['ssim_sr']:.4f} "
              f"({row['images_per_s']:.0f} img/s)")
    print(f"record: {args.out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train one variant with one seed; writes a run record")
    p.add_argument("--variant", required=True, help=f"one of: {', '.join(VARIANTS)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="retrain even if a finished record exists")
    p.add_argument("--profile", choices=list(PROFILES),
                   help="protocol defaults (default: paper with CUDA, else preview)")
    add_config_options(p)
    p.add_argument("--out", default="runs",
                   help="records go to OUT/<profile>/<dataset>/<variant>/seed<k>/ (default: runs)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--deadline", type=_deadline, help="stop cleanly after the last epoch that ends before this: "
                   "seconds from now, or an ISO time (2026-11-28T23:00); exit code 3, rerun to resume")
    p.add_argument("--allow-cpu-paper", action="store_true", help="allow the paper profile on a CPU (weeks)")
    add_data_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("data", help="show which dataset would be used")
    p.add_argument("--load", action="store_true", help="also decode (cached) and print its identity")
    add_data_options(p)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("upscale", help="precompute (cache) a variant's upscaled images")
    p.add_argument("--variant", required=True, choices=[v for v in VARIANTS if v != "original"])
    p.add_argument("--train-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--sr-weights")
    add_data_options(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("sr-quality", help="PSNR/SSIM of SR vs bicubic on the data's test images")
    p.add_argument("--scales", type=int, nargs="+", default=[2, 4])
    p.add_argument("--n", type=int, default=1000, help="test images to use (stratified)")
    p.add_argument("--models", nargs="*", metavar="MODEL", help="registered SR models to measure (default: all of "
                   f"{', '.join(sr_models())}; none named: only --sr-weights)")
    p.add_argument("--sr-weights", nargs="+", metavar="PATH", help="spandrel SR checkpoint(s), each measured at "
                   "its own scale, standing for sr_x2/sr_x4 as trained with --sr-weights")
    p.add_argument("--profile", choices=list(PROFILES), help="whose report shows it (default: paper with CUDA, "
                   "else preview)")
    p.add_argument("--out", help="the record (default: runs/<profile>/<dataset>/sr_quality.json, read by the report)")
    add_data_options(p)
    p.set_defaults(func=cmd_sr_quality)
