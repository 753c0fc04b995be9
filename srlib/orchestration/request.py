"""A sweep request: everything `srlib sweep` was asked (what to run, where, how), one value built once by the
command line; the sweep, its finishing step (pickled for a --no-wait Slurm sweep) and the plan read it. Each run's
config is built (and so checked) once, in `configs`."""

from __future__ import annotations

import contextlib
import sys
from dataclasses import KW_ONLY, dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ..config import STUDY_VARIANTS, TrainConfig, expand_variants, make_config
from ..errors import ConfigError
from .slurm import SlurmOptions

if TYPE_CHECKING:
    from .preflight import Plan

EXECUTORS = ("local", "slurm")
SEEDS = 1  # a sweep's default: seed 0 only (the paper's table has config.PAPER_SEEDS: `--seeds 3`)


@dataclass(frozen=True)
class SweepRequest:
    # what to run (the first fields in the order the sweep's positional arguments had)
    profile: str
    seeds: int = SEEDS  # seeds 0..seeds-1
    variants: tuple[str, ...] = STUDY_VARIANTS  # variant and set names; set names are expanded on creation
    # where
    out: Path = Path("runs")  # the run records
    notebooks_out: Path = Path("book/executed")  # the executed notebooks
    data: str | None = None  # None: SRLIB_DATA or canonical CIFAR-10
    cache_dir: str | None = None  # None: SRLIB_CACHE_DIR or ./cache
    dataset: str | None = None  # the data's key (srlib.data.dataset_key); None: from `data` (records: the records')
    overrides: dict = field(default_factory=dict)  # TrainConfig fields for every run (e.g. epochs)
    analysis: bool = True  # then the analysis notebooks
    _: KW_ONLY
    records_only: bool = False  # show the records in `out`; train nothing, write nothing there
    # how
    executor: str = "local"  # local | slurm
    jobs: int | None = None  # local: runs at once (None: one per GPU x runs_per_gpu, on a CPU CPU_JOBS)
    runs_per_gpu: int = 1  # local
    threads: int | None = None  # torch threads per run (None: cores / jobs, or the Slurm task's CPUs)
    slurm: SlurmOptions | None = None  # slurm: the array's options (None: the defaults)
    wait: bool = True  # slurm: False submits and returns; a dependent job finishes the sweep
    book: bool = False  # build the book at the end

    def __post_init__(self) -> None:
        # Normalised once, so every reader (and a Slurm job on another node) sees the same variants and paths.
        object.__setattr__(self, "variants", tuple(expand_variants(list(self.variants))))  # refuses unknown names
        object.__setattr__(self, "out", Path(self.out).resolve())
        object.__setattr__(self, "notebooks_out", Path(self.notebooks_out).resolve())
        object.__setattr__(self, "overrides", dict(self.overrides or {}))
        if self.executor not in EXECUTORS:
            raise ConfigError(f"unknown executor {self.executor!r}; use {' or '.join(EXECUTORS)}")

    @cached_property
    def configs(self) -> list[TrainConfig]:
        """Every run's config, seed by seed and variants in order. Building them checks the profile, the seeds and
        the overrides (ConfigError) once per request, before the sweep starts anything."""
        if self.seeds < 1:
            raise ConfigError(f"--seeds {self.seeds}: a sweep runs seeds 0..N-1, so N must be >= 1")
        return [make_config(v, self.profile, seed, **self.overrides) for seed in range(self.seeds)
                for v in self.variants]

    @cached_property
    def dataset_key(self) -> str | None:
        """The dataset part of the runs' folders: given, else the data's own (decoded once here, and cached on disk
        for the runs); in records mode the records' dataset with the most runs, as the results page shows by default
        (None when there are none)."""
        from ..data import dataset_key, key_hash, load_dataset
        from ..runs import datasets

        if not self.records_only:
            if self.dataset:
                return self.dataset
            # A first decode shows its progress on stdout: stderr carries only the sweep's errors.
            with contextlib.redirect_stderr(sys.stdout):
                return dataset_key(load_dataset(self.data, cache_dir=self.cache_dir).identity)
        keys = datasets(self.out, self.profile)
        if self.dataset:  # a key, a name (cifar10) or a hash prefix, as the results page accepts
            found = [k for k in keys if self.dataset in (k, k.rpartition("-")[0]) or
                     key_hash(k).startswith(self.dataset)]
            if len(found) != 1:
                raise ConfigError(f"--dataset {self.dataset} matches {len(found)} of the datasets of {self.out} "
                                  f"({', '.join(keys) or 'none'}); give one of these keys")
            keys = found
        return keys[0] if keys else None

    def plan(self, device: str | None = None, dataset: str | None = None, checks: bool = True) -> Plan:
        """What the sweep would do (runs, caches, time) and, with `checks`, every problem that would stop it
        (srlib.orchestration.preflight); starts nothing. `dataset`: the data's key once it is known."""
        from .preflight import make_plan

        return make_plan(self.configs, self.out, self.data, self.cache_dir, notebooks_out=self.notebooks_out,
                         analysis=self.analysis, device=device, dataset=dataset or self.dataset, checks=checks)
