"""`srlib` command line: train, upscale, sr-quality, data, sweep, bench."""

from __future__ import annotations

import argparse
import json
import sys

from .config import PRECISIONS, PROFILES, STUDY_VARIANTS, VARIANTS, make_config
from .errors import SrlibError


def _add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="ImageFolder tree or folder with cifar-10-batches-py (default: $SRLIB_DATA, "
                   "else canonical CIFAR-10 in $SRLIB_DATA_DIR or ./data, downloaded if missing)")
    p.add_argument("--cache-dir", help="where decoded and upscaled arrays are cached ($SRLIB_CACHE_DIR, ./cache)")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--profile", default="preview", choices=list(PROFILES), help="protocol defaults (default: preview)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float)
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--lr-step", type=int, help="epochs between learning-rate decays")
    p.add_argument("--lr-gamma", type=float)
    p.add_argument("--train-size", type=int, help="stratified training subset size")
    p.add_argument("--test-size", type=int, help="stratified test subset size")
    p.add_argument("--width", type=int, help="ResNet-18 first-stage width (64 = reference)")
    p.add_argument("--precision", choices=PRECISIONS, help="auto = bf16 autocast where the hardware has it")
    p.add_argument("--sr-weights", help="any spandrel SR checkpoint (default: official DCTLSA weights)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--out", default="runs", help="records go to OUT/<profile>/<variant>/seed<k>/ (default: runs)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_data_options(p)


OVERRIDES = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "train_size",
             "test_size", "width", "precision", "sr_weights", "compile")


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    overrides = {k: getattr(args, k) for k in OVERRIDES}
    config = make_config(args.variant, args.profile, args.seed, **overrides)
    record = train(config, out=args.out, data=args.data, cache_dir=args.cache_dir, device=args.device,
                   force=args.force)
    s = record["summary"]
    if s:
        print(f"max {s['max_test_acc']:.2f}%  top-5 mean {s['top5_mean_test_acc']:.2f}%  "
              f"final {s['final_test_acc']:.2f}%  ({s['train_seconds']:.0f}s training)")
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
                        out=args.out, weights=None)
    for row in record["results"]:
        print(f"x{row['scale']}: PSNR bicubic {row['psnr_bicubic']:.2f} dB, SR {row['psnr_sr']:.2f} dB "
              f"({row['psnr_gain']:+.2f}); SSIM bicubic {row['ssim_bicubic']:.4f}, SR {row['ssim_sr']:.4f}")
    return 0


def cmd_book(args: argparse.Namespace) -> int:
    from .book import build_book

    print(f"report: {build_book(path_output=args.path_output)}")
    return 0


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
    _add_data_options(p)
    p.set_defaults(func=lambda a: __import__("srlib.sweep", fromlist=["cmd_sweep"]).cmd_sweep(a))

    p = sub.add_parser("book", help="build the HTML report from the executed notebooks (never trains)")
    p.add_argument("--path-output", help="the book goes to PATH_OUTPUT/_build/html (default: the project root)")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("bench", help="training and upscaling speed: reference-style baseline vs srlib")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--px", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--images", type=int, default=64, help="images per upscaling measurement")
    p.add_argument("--device", help="cpu or cuda (default: the GPU when there is one)")
    p.add_argument("--no-accuracy", action="store_true", help="skip the fp32 vs fast-path accuracy check")
    p.set_defaults(func=lambda a: __import__("srlib.bench", fromlist=["cmd_bench"]).cmd_bench(a))
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
