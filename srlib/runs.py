"""Runs on disk: the folder layout, finding and loading records, and what makes two runs the same.

Layout: `<out>/<profile>/<dataset>/<variant>/seed<k>/` (the dataset: `srlib.data.dataset_key`, its name and
content hash, so runs on several datasets live side by side) holds `record.json` (config, per-epoch metrics, summary,
provenance), `predictions.npz` (the last epoch's test predictions) and, while unfinished, `checkpoint.pt`;
`<out>/<profile>/<dataset>/sr_quality.json` the SR-quality measurement on that data. The older layout without the
dataset, `<out>/<profile>/<variant>/seed<k>/` (and `<out>/<profile>/sr_quality.json`), is still read: it counts for
the data its record names. Executed notebooks go to `<notebooks_out>/train/<profile>-<dataset>-<variant>-seed<k>.ipynb`
(a `.log` beside each) and `<notebooks_out>/*.ipynb`. Everything else finds these files through the functions here.

A run's identity is the `TrainConfig` fields in `IDENTITY_FIELDS` plus the dataset's content hash; numerics,
deadlines and thread counts are recorded but make no other run (a bf16 GPU record is reused on a CPU).
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from .config import TrainConfig
from .data import CANONICAL_SHA256, dataset_key, key_hash
from .errors import ConfigError
from .store import load_arrays, read_json_or_none

ROOT = Path(__file__).resolve().parent.parent  # the project: notebooks/, book/, _config.yml
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = Path("book/executed")  # the executed notebooks the book is built from (relative to the project)
RECORD = "record.json"
PREDICTIONS = "predictions.npz"
CHECKPOINT = "checkpoint.pt"
SR_QUALITY = "sr_quality.json"
NUMERICS_FIELDS = ("precision", "channels_last", "compile", "deterministic", "cuda_graphs")
IDENTITY_FIELDS = tuple(name for name in TrainConfig.__dataclass_fields__ if name not in NUMERICS_FIELDS)


def run_dir(out: str | os.PathLike, profile: str, dataset: str, variant: str, seed: int) -> Path:
    """A run's folder; `dataset` is the data's key (`srlib.data.dataset_key`, e.g. cifar10-c8cc1b78)."""
    return Path(out) / profile / dataset / variant / f"seed{seed}"


def config_dir(out: str | os.PathLike, config: TrainConfig, dataset: str) -> Path:
    return run_dir(out, config.profile, dataset, config.variant, config.seed)


def record_dataset(record: dict) -> str:
    """The key of the data a record was made on (from its identity: an old-layout record says it only there)."""
    return dataset_key(record.get("data", {}).get("dataset", {}))


def _same_data(key: str, dataset: str | None) -> bool:
    # Keys end in the content hash; an old record of non-canonical data had no name, so only the hash is compared.
    return dataset is None or key_hash(key) == key_hash(dataset)


def run_dirs(out: str | os.PathLike, profile: str | None = None, dataset: str | None = None,
             variant: str = "*", seed: int | str = "*") -> list[Path]:
    """Run folders under `out` (one profile, dataset, variant, seed, or all), finished or not, sorted: the layout
    `<profile>/<dataset>/<variant>/seed<k>` and the old `<profile>/<variant>/seed<k>` (no dataset in the path: an
    old folder counts for the data its record names, and with a dataset asked for, only with a record)."""
    out, profile = Path(out), profile or "*"
    # By the key's hash: the same images found under another folder name are the same data.
    new = out.glob(f"{profile}/*{'-' + key_hash(dataset) if dataset else ''}/{variant}/seed{seed}")
    old = [p for p in out.glob(f"{profile}/{variant}/seed{seed}")
           if dataset is None or ((record := read_json_or_none(p / RECORD)) is not None
                                  and _same_data(record_dataset(record), dataset))]
    return sorted(p for p in [*new, *old] if p.is_dir())


def sr_quality_path(out: str | os.PathLike, profile: str, dataset: str) -> Path:
    """The SR-quality measurement (PSNR/SSIM) on `dataset` (its key) that the report shows beside the runs."""
    return Path(out) / profile / dataset / SR_QUALITY


def load_quality(out: str | os.PathLike, profile: str, dataset: str) -> dict | None:
    """The SR-quality record on `dataset` (its key; by its hash, as `run_dirs`), in either layout; None when none
    measured this data."""
    by_hash = sorted(Path(out).glob(f"{profile}/*-{key_hash(dataset)}/{SR_QUALITY}"))
    for path in [*by_hash, Path(out) / profile / SR_QUALITY]:
        record = read_json_or_none(path)
        if record is not None and _same_data(dataset_key(record.get("data", {})), dataset):
            return record
    return None


def sr_quality_paths(out: str | os.PathLike) -> list[Path]:
    """Every SR-quality measurement under `out`, in either layout, sorted."""
    return sorted([*Path(out).glob(f"*/{SR_QUALITY}"), *Path(out).glob(f"*/*/{SR_QUALITY}")])


def executed_train_notebook(notebooks_out: str | os.PathLike, profile: str, dataset: str, variant: str,
                            seed: int) -> Path:
    """Where papermill writes a run's executed train.ipynb (its log: the same name with `.log`); the dataset is in
    the name, so two datasets' run pages never overwrite each other."""
    return executed_train_dir(notebooks_out) / f"{profile}-{dataset}-{variant}-seed{seed}.ipynb"


def executed_train_dataset(notebook: Path, profile: str, variant: str, seed: int) -> str | None:
    """The dataset key in a run page's name (`executed_train_notebook`'s inverse); None for an older page."""
    key = notebook.stem.removeprefix(f"{profile}-").removesuffix(f"-{variant}-seed{seed}")
    return key if key and f"{profile}-{key}-{variant}-seed{seed}" == notebook.stem else None


def executed_train_dir(notebooks_out: str | os.PathLike = EXECUTED) -> Path:
    """The run pages: one executed train.ipynb per run."""
    return Path(notebooks_out) / "train"


def record_paths(out: str | os.PathLike, profile: str | None = None, dataset: str | None = None) -> list[Path]:
    """Every record.json under `out` (one profile and dataset, or all), in either layout, sorted."""
    return [d / RECORD for d in run_dirs(out, profile, dataset) if (d / RECORD).is_file()]


def datasets(out: str | os.PathLike, profile: str | None = None) -> list[str]:
    """The keys of the data that `out`'s complete records were made on, the one with the most first, canonical
    CIFAR-10 on a tie (as the results page picks by default), then by name."""
    counts = Counter(record_dataset(r) for r in load_records(out, profile, predictions=False))
    return sorted(counts, key=lambda key: (-counts[key], not key.endswith(f"-{CANONICAL_SHA256[:8]}"), key))


def load_records(out: str | os.PathLike, profile: str | None = None, predictions: bool = True,
                 dataset: str | None = None) -> list[dict]:
    """The complete records under `out` (one dataset, or all; not a run stopped at a deadline), with `_path` and
    (when present) `_predictions` / `_labels` attached."""
    records = []
    for path in record_paths(out, profile, dataset):
        record = read_json_or_none(path)
        if record is None or record.get("status") != "complete":
            continue
        record["_path"] = str(path)
        file = path.parent / (record.get("predictions") or PREDICTIONS)
        if predictions and file.is_file():
            arrays, _ = load_arrays(file)
            record["_predictions"], record["_labels"] = arrays["predictions"], arrays["labels"]
        records.append(record)
    return records


def _run_records(out: str | os.PathLike, profile: str, variant: str, seed: int, dataset: str | None) -> Iterator[dict]:
    """This run's readable records on `dataset` (None: any data), in either layout, with `_path`."""
    for directory in run_dirs(out, profile, dataset, variant, seed):
        record = read_json_or_none(directory / RECORD)
        # A new-layout folder holds only its own data's record.
        if record is not None and _same_data(record_dataset(record), dataset):
            yield {**record, "_path": str(directory / RECORD)}


def load_record(out: str | os.PathLike, profile: str, variant: str, seed: int, dataset: str | None = None,
                ) -> dict | None:
    """This run's record on `dataset` (None: on any data), finished or not, in either layout; or None."""
    return next(_run_records(out, profile, variant, seed, dataset), None)


def run_identity(config: TrainConfig | dict) -> dict:
    """The protocol part of a config: what must match for a record or checkpoint to count as this run."""
    values = config if isinstance(config, dict) else config.to_dict()
    return {name: values.get(name) for name in IDENTITY_FIELDS}


def find_finished(out: str | os.PathLike, config: TrainConfig, dataset: str | None = None) -> dict | None:
    """The complete record of this run (same identity; on `dataset`, or with None on any data), or None."""
    return next((r for r in _run_records(out, config.profile, config.variant, config.seed, dataset)
                 if r.get("status") == "complete" and run_identity(r.get("config", {})) == run_identity(config)), None)


def records_profile(records: str | os.PathLike) -> str:
    """The one profile that has records in a records folder (`--records` without `--profile`)."""
    if not Path(records).is_dir():
        raise ConfigError(f"--records {records}: no such folder; unpack the GPU results first (srlib kit unpack)")
    profiles = sorted({p.relative_to(records).parts[0] for p in record_paths(records)})
    if not profiles:
        raise ConfigError(f"--records {records} holds no records (<profile>/<dataset>/<variant>/seed<k>/record.json); "
                          "unpack the GPU results there first (srlib kit unpack), or name the profile with --profile")
    if len(profiles) != 1:
        raise ConfigError(f"--records {records} holds records of {len(profiles)} profiles ({', '.join(profiles)}); "
                          "name one with --profile")
    return profiles[0]
