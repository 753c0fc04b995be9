"""`srlib kit ...`, the GPU kit's command line and nothing else (the kit's modules never import it): `assemble`,
`check` and `unpack` run here; `probe`, `run` and `ship` on the GPU machine (scripts/gpu_paper.sh)."""

from __future__ import annotations

import argparse
import os
import shlex
from pathlib import Path

from ..config import PAPER_SEEDS, VARIANT_SETS, expand_variants
from ..orchestration.kit.archive import ship_piece, unpack
from ..orchestration.kit.assemble import assemble, check_size, describe_window
from ..orchestration.kit.dataset_pieces import STAGE_DIR
from ..orchestration.kit.job import COMMAND_BUDGET_S, PAPER, run_config, work_folder
from ..orchestration.kit.layout import ARCHIVE, CKPT_DIR, KitError
from ..orchestration.kit.run import run_kit
from ..runs import ROOT
from ..store import write_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("kit", help="paper-scale runs on a GPU machine: assemble here, run there, unpack here")
    kit_sub = p.add_subparsers(dest="kit_command", required=True)

    a = kit_sub.add_parser("assemble", help="fill the kit folder (data, weights, wheel, commit + diff); size check")
    a.add_argument("--kit", type=Path, default=ROOT / "kit",
                   help="a git-ignored folder of the repository (default: kit)")
    a.add_argument("--parquet", type=Path, default=os.environ.get("SRLIB_DATA_PARQUET"),
                   help="the Parquet copy of CIFAR-10 (default: $SRLIB_DATA_PARQUET)")
    a.add_argument("--weights-dir", type=Path, default=os.environ.get("SRLIB_WEIGHTS_DIR"),
                   help="folder with dctlsa_x{2,4}.safetensors (default: $SRLIB_WEIGHTS_DIR)")
    a.add_argument("--variants", nargs="+", default=["study"],
                   help=f"variants or sets ({', '.join(VARIANT_SETS)}) the queue may hold (default: study, all "
                        "five; study-x2 and study-x4 are its halves); the queue itself is what --results lacks")
    a.add_argument("--wheel", type=Path, help="a spandrel wheel to use instead of downloading one")
    a.add_argument("--transport", choices=["webp", "png"], default="webp",
                   help="how the data travels: lossless WebP (default; 2 commands for CIFAR-10) or the PNG files (3)")
    a.add_argument("--seeds", nargs="+", type=int, default=list(PAPER_SEEDS),
                   help=f"seeds the queue holds (default {' '.join(map(str, PAPER_SEEDS))})")
    a.add_argument("--results", type=Path, default=ROOT / "results" / "paper",
                   help="the records whose missing runs make the queue (default: results/paper)")
    a.set_defaults(func=cmd_assemble)

    c = kit_sub.add_parser("check", help="only the size check of the files one command copies to the GPU machine")
    c.add_argument("--kit", type=Path, default=ROOT / "kit")
    c.set_defaults(func=cmd_check)

    r = kit_sub.add_parser("run", help="on the GPU machine: measure speeds, schedule, train, pack into OUT")
    r.add_argument("--kit", type=Path, default=ROOT / "kit")
    r.add_argument("--out", type=Path, default=os.environ.get("OUT", "results/gpu"),
                   help="where the archive goes: the folder whose files come back (default: $OUT or results/gpu)")
    r.add_argument("--variants", nargs="+", help="variants or sets (default: those the kit was assembled for)")
    r.add_argument("--window-left-s", type=float,
                   help="seconds you may still use the GPU machine in this session when the command starts; runs "
                        f"start only if they end within it (default: the command's own {COMMAND_BUDGET_S:.0f} s)")
    r.add_argument("--work", type=Path, help="work folder; keep it for a rerun to resume (default: $TMPDIR/srlib-kit)")
    r.add_argument("--train-args", default="",
                   help='extra `srlib train` options in one string, e.g. --train-args="--compile --no-deterministic"')
    r.add_argument("--dry-run", action="store_true", help="on a CPU, smoke-sized: checks every step end to end")
    r.set_defaults(func=cmd_run)

    u = kit_sub.add_parser("unpack", help="records of an archive from the GPU into results/paper")
    u.add_argument("archive", type=Path, help=f"the {ARCHIVE} that `srlib kit run` wrote")
    u.add_argument("--results", type=Path, default=ROOT / "results" / "paper")
    u.add_argument("--pieces", nargs="*", type=Path, default=[],
                   help="ckpt-N folders of a shipped checkpoint (those of every command)")
    u.set_defaults(func=cmd_unpack)

    q = kit_sub.add_parser("probe", help="on the GPU machine: check the staged pieces present; the sharing probe")
    q.add_argument("--kit", type=Path, default=ROOT / "kit")
    q.add_argument("--out", type=Path, default=os.environ.get("OUT", "results/gpu"))
    q.add_argument("--work", type=Path, help="work folder shared with `kit run` (default: $TMPDIR/srlib-kit)")
    q.add_argument("--no-probe", action="store_true", help="only check the pieces (a committed table exists)")
    q.add_argument("--budget", type=float, default=90.0, help="seconds for the probe (default 90)")
    q.set_defaults(func=cmd_probe)

    s = kit_sub.add_parser("ship", help="on the GPU machine: piece N of a shipped checkpoint into OUT/ckpt-N, to "
                           "bring back")
    s.add_argument("index", type=int)
    s.add_argument("--out", type=Path, default=os.environ.get("OUT", "results/gpu"))
    s.add_argument("--work", type=Path, help="work folder of `kit run` (default: $TMPDIR/srlib-kit)")
    s.set_defaults(func=cmd_ship)


def cmd_assemble(args: argparse.Namespace) -> int:
    if not args.parquet:
        raise KitError("no Parquet dataset given: pass --parquet DIR or set SRLIB_DATA_PARQUET "
                       "(the lossless cifar10-png-parquet copy)")
    manifest, _ = assemble(args.kit, args.parquet, args.weights_dir, expand_variants(args.variants), args.wheel,
                           transport=args.transport, results=args.results, seeds=tuple(args.seeds))
    print("\n".join(describe_window(args.kit.resolve(), manifest, args.results)))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    size = check_size(args.kit)
    print(size.describe())
    return 0 if size.margin >= 0 else 1


def cmd_run(args: argparse.Namespace) -> int:
    return run_kit(args.kit, args.out, expand_variants(args.variants) if args.variants else None,
                   dry_run=args.dry_run, work=args.work, train_args=shlex.split(args.train_args),
                   window_left_s=args.window_left_s)


def cmd_probe(args: argparse.Namespace) -> int:
    """Check every staged piece this machine holds; unless --no-probe, run the sharing probe and keep its table
    in the work folder (for `kit run` in the next command) and in OUT."""
    from ..orchestration.kit.probe import PROBE_FILE, probe, table_lines
    from ..orchestration.kit.staging import verify_piece

    for staged in (args.kit / STAGE_DIR, args.kit / CKPT_DIR):
        for folder in sorted(staged.iterdir()) if staged.is_dir() else []:
            print(f"[kit] {verify_piece(folder)}", flush=True)
    if args.no_probe:
        return 0
    config = run_config(PAPER, [])
    table = probe(config, budget_s=args.budget, log=lambda m: print(m, flush=True))
    for path in (work_folder(args.work) / PROBE_FILE, args.out / PROBE_FILE):
        write_json(path, table)
    print("\n".join(table_lines(table)))
    return 0


def cmd_ship(args: argparse.Namespace) -> int:
    target = ship_piece(args.index, args.out, args.work)
    print(f"[kit] checkpoint piece {args.index} -> {target}")
    return 0


def cmd_unpack(args: argparse.Namespace) -> int:
    written = unpack(args.archive, args.results, pieces=args.pieces)
    print(f"{len(written)} file(s) written under {args.results}")
    return 0
