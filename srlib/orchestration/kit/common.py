"""What every part of the GPU kit shares: the device tool's limits, the kit's file names, KitError, which
variants a kit holds, and the settings of a job there (the paper protocol, or the CPU dry run)."""

from __future__ import annotations

import datetime as dt
import shlex
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...config import VARIANTS
from ...errors import ConfigError, SrlibError

if TYPE_CHECKING:
    from ...config import TrainConfig

KIT_SCHEMA = 1
MANIFEST = "manifest.json"
DIFF = "source.diff"
ARCHIVE = "paper_results.tar.gz"
TIMING_LOG = "timing.log"
DEVICE_LIMIT_BYTES = 64 * 2**20  # the device tool's limit on the files sent per command
ARCHIVE_LIMIT_BYTES = 16 * 2**20  # the largest file that comes back from $OUT
# Device time the window needs after a command's training has stopped: files back and the next call's start.
RETURN_RESERVE_S = 30.0
# A resuming command's own cost: data reassembled and decoded, speeds re-checked, each run restarted (~20 s).
RESUME_COST_S = 50.0
MIN_COMMAND_S = 120.0  # less window than this after a command: no further command, partial runs ship checkpoints
# Compute time a fresh window offers (15 min minus the machine's start, the staging calls and the probe): an
# estimate from the first windows' logs; it only tells a run that waits for the next window from one that spans.
FRESH_WINDOW_S = 660.0
CKPT_DIR = "ckpt"  # a shipped checkpoint's pieces staged back: kit/ckpt/<piece>
MANIFEST_ROOM_BYTES = 256 * 1024  # the manifest lists every chunk; room for it in the last call
SHIP_DIR = "ship"  # on the GPU machine: work/ship/<piece>, the checkpoint cut for the trip back
GOALS: dict[str, tuple[str, ...]] = {
    "A": ("original", "resize_x2", "sr_x2"),
    "B": ("resize_x4", "sr_x4"),
}
LOG_KEEP_BYTES = 256 * 1024  # tail of each training log that goes into the archive


class KitError(SrlibError):
    pass


def log_line(message: str) -> None:
    print(message, flush=True)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def work_folder(work: Path | None = None) -> Path:
    """The GPU side's work folder; the default is fixed, so a later call on the warm machine resumes from it."""
    return (work or Path(tempfile.gettempdir()) / "srlib-kit").resolve()


# ---------------------------------------------------------------- which variants


def check_variants(variants: Iterable[str]) -> list[str]:
    variants = list(dict.fromkeys(variants))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"unknown or no variant(s) {unknown}; choose from {', '.join(VARIANTS)} "
                          f"or a goal ({', '.join(GOALS)})")
    return variants


def expand(names: Iterable[str]) -> list[str]:
    """Variant names, with goals (A, B) and variant sets (srlib.config.VARIANT_SETS) expanded, in order, once."""
    from ...config import expand_variants

    out: list[str] = []
    for name in names:
        out += GOALS[name] if name in GOALS else expand_variants(name)
    return check_variants(out)


def sr_scales(variants: Iterable[str]) -> list[int]:
    """Scales of the default-model (DCTLSA) SR variants: what `srlib sr-quality` measures."""
    from ...upscale import DEFAULT_SR_MODEL

    return sorted({VARIANTS[v].scale for v in variants if VARIANTS[v].sr_model == DEFAULT_SR_MODEL})


def sr_checkpoints(variants: Iterable[str]) -> list:
    """The registered SR checkpoints (srlib.upscale.SRCheckpoint) the SR variants among `variants` need."""
    from ...upscale import sr_checkpoint

    entries = {}
    for v in variants:
        if VARIANTS[v].is_sr:
            entry = sr_checkpoint(VARIANTS[v].sr_model, VARIANTS[v].scale)
            entries[entry.file] = entry
    return sorted(entries.values(), key=lambda e: (e.scale, e.model))


# ---------------------------------------------------------------- a job on the GPU machine


@dataclass(frozen=True)
class Settings:
    """What differs between the real run and the CPU dry run."""

    profile: str
    device: str
    overrides: dict  # TrainConfig overrides passed to every run
    probe_steps: int
    sr_probe_images: int
    sr_quality_images: int

    def train_options(self) -> list[str]:
        options = []
        for key, value in self.overrides.items():
            options += [f"--{key.replace('_', '-')}", str(value)]
        return options


PAPER = Settings("paper", "cuda", {}, probe_steps=30, sr_probe_images=1024, sr_quality_images=1000)
DRY_RUN = Settings("smoke", "cpu", dict(epochs=1, width=4, train_size=20, test_size=10), probe_steps=2,
                   sr_probe_images=2, sr_quality_images=10)


def run_config(settings: Settings, train_args: list[str]) -> TrainConfig:
    """The TrainConfig the `srlib train` processes will get (profile, overrides, then `--train-args`)."""
    from ...config import make_config, parse_config_options

    try:
        overrides = parse_config_options([*settings.train_options(), *train_args])
    except ConfigError as exc:
        raise KitError(f"--train-args {shlex.join(train_args)!r} are not valid `srlib train` options") from exc
    return make_config("original", settings.profile, 0, **overrides)


@dataclass
class KitRun:
    """One `srlib kit run` job: where its files are, its settings and its clock."""

    kit: Path
    out: Path
    work: Path
    settings: Settings
    variants: list[str]
    started: float
    deadline: float  # when training must have stopped in this command (the end minus the packing reserve)
    end: float
    log: Callable[[str], None]
    timing: dict = field(default_factory=dict)
    window_ends: bool = False  # the window has no time for another command: partial runs ship their checkpoint

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def left(self) -> float:
        return self.deadline - time.time()
