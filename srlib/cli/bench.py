"""`srlib bench`: training and upscaling speed, srlib beside a reference-style baseline."""

from __future__ import annotations

import argparse
from pathlib import Path


def cmd_bench(args) -> int:
    from ..bench import format_table, run_bench
    from ..store import write_json

    out = Path(args.json) if args.json else None  # its folder is made by the first file written there
    result = run_bench(px=list(args.px), steps=args.steps, images=args.images, device=args.device,
                       diff_dir=out.parent if out is not None else None)
    print(format_table(result))
    if out is not None:
        write_json(out, result)
        print(f"\nwrote {out}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="training and upscaling speed: reference-style baseline vs srlib")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--px", type=int, nargs="+", default=[32, 64, 128],
                   help="training input sizes in px, multiples of 32 (default: 32 64 128)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement (at 32 px)")
    p.add_argument("--images", type=int, default=64, help="images per upscaling measurement")
    p.add_argument("--device", help="cpu or cuda (default: the GPU when there is one)")
    p.set_defaults(func=cmd_bench)
