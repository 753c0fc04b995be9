"""`srlib`, the command line: on top of the package, imported by nothing in it but `srlib/__main__.py`.

Each module here registers its commands (`register(subparsers)`) and turns options into calls of the
library below: `core` (train, data, upscale, sr-quality), `sweep` (sweep, status, book), `bench`, `kit`.
Errors from below arrive as SrlibError and leave as one line, `srlib: error: ...`.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import SrlibError
from . import bench, core, kit, sweep

COMMANDS = (core, sweep, bench, kit)  # the order of `srlib --help`


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srlib", description="Does super-resolving CIFAR-10 beat resizing?")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in COMMANDS:
        module.register(sub)
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
