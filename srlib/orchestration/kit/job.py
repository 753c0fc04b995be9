"""One job on the GPU machine: its time budget, its settings (the paper protocol, or the CPU dry run) and
its clock."""

from __future__ import annotations

import functools
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ...errors import ConfigError
from .layout import KitError

if TYPE_CHECKING:
    from ...config import TrainConfig

# A command may run 600 s on the GPU machine: the job takes 560 s of it, the last 40 s packing its archive.
COMMAND_BUDGET_S = 560.0
PACK_RESERVE_S = 40.0
# Machine time the session needs after a command's training has stopped: files back and the next command's start.
RETURN_RESERVE_S = 30.0
# A resuming command's own cost: data reassembled and decoded, speeds re-checked, each run restarted (~20 s).
RESUME_COST_S = 50.0
MIN_COMMAND_S = 120.0  # less session time than this after a command: no further command, partial runs ship checkpoints
# Compute time a fresh session offers (15 min minus the machine's start, the staging commands and the probe): an
# estimate from the first sessions' logs; it only tells a run that waits for the next session from one that spans.
FRESH_WINDOW_S = 660.0
log_line = functools.partial(print, flush=True)  # each line at once, also when stdout is a pipe


def work_folder(work: Path | None = None) -> Path:
    """The GPU side's work folder; the default is fixed, so a later command on the same machine resumes from it."""
    return (work or Path(tempfile.gettempdir()) / "srlib-kit").resolve()


@dataclass(frozen=True)
class Settings:
    """What differs between the real run and the CPU dry run."""

    profile: str
    device: str
    overrides: dict  # TrainConfig overrides passed to every run
    timing_steps: int  # training steps timed per input size in the dry run (the GPU's come from the probe)
    sr_speed_images: int  # images each SR upscaler is timed on
    sr_quality_images: int

    def train_options(self) -> list[str]:
        return [arg for key, value in self.overrides.items() for arg in (f"--{key.replace('_', '-')}", str(value))]


PAPER = Settings("paper", "cuda", {}, timing_steps=30, sr_speed_images=1024, sr_quality_images=1000)
DRY_RUN = Settings("smoke", "cpu", dict(epochs=1, width=4, train_size=20, test_size=10), timing_steps=2,
                   sr_speed_images=2, sr_quality_images=10)


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
    window_ends: bool = False  # the session has no time for another command: partial runs ship their checkpoint

    @property
    def runs(self) -> Path:
        return self.work / "runs"

    def left(self) -> float:
        return self.deadline - time.time()
