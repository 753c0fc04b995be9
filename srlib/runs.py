"""Runs on disk: the folder layout, finding and loading records, and what makes two runs the same.

Layout: `<out>/<profile>/<variant>/seed<k>/` holds `record.json` (config, per-epoch metrics, summary,
provenance), `predictions.npz` (the last epoch's test predictions) and, while unfinished, `checkpoint.pt`;
`<out>/<profile>/sr_quality.json` the profile's SR-quality measurement. Executed notebooks go to
`<notebooks_out>/train/<profile>-<variant>-seed<k>.ipynb` (a `.log` beside each) and `<notebooks_out>/*.ipynb`.
Everything else finds these files through the functions here.

A run's identity is the `TrainConfig` fields in `IDENTITY_FIELDS` plus the dataset's content hash; numerics,
deadlines and thread counts are recorded but make no other run (a bf16 GPU record is reused on a CPU).
"""

from __future__ import annotations

import os
from pathlib import Path

from .config import TrainConfig
from .errors import ConfigError
from .store import load_arrays, read_json

ROOT = Path(__file__).resolve().parent.parent  # the project: notebooks/, book/, _config.yml
NOTEBOOKS = ROOT / "notebooks"
EXECUTED = Path("book/executed")  # the executed notebooks the book is built from (relative to the project)
RECORD = "record.json"
PREDICTIONS = "predictions.npz"
CHECKPOINT = "checkpoint.pt"
SR_QUALITY = "sr_quality.json"
NUMERICS_FIELDS = ("precision", "channels_last", "compile", "deterministic", "cuda_graphs")
IDENTITY_FIELDS = tuple(name for name in TrainConfig.__dataclass_fields__ if name not in NUMERICS_FIELDS)


def run_dir(out: str | os.PathLike, profile: str, variant: str, seed: int) -> Path:
    return Path(out) / profile / variant / f"seed{seed}"


def config_dir(out: str | os.PathLike, config: TrainConfig) -> Path:
    return run_dir(out, config.profile, config.variant, config.seed)


def run_dirs(out: str | os.PathLike, profile: str | None = None) -> list[Path]:
    """Every run folder under `out` (one profile, or all), finished or not, sorted."""
    return sorted(p for p in Path(out).glob(f"{profile or '*'}/*/seed*") if p.is_dir())


def sr_quality_path(out: str | os.PathLike, profile: str) -> Path:
    """The SR-quality measurement (PSNR/SSIM) that the report shows beside `profile`'s runs."""
    return Path(out) / profile / SR_QUALITY


def sr_quality_paths(out: str | os.PathLike) -> list[Path]:
    """Every profile's SR-quality measurement under `out`, sorted."""
    return sorted(Path(out).glob(f"*/{SR_QUALITY}"))


def executed_train_notebook(notebooks_out: str | os.PathLike, profile: str, variant: str, seed: int) -> Path:
    """Where papermill writes a run's executed train.ipynb (its log: the same name with `.log`)."""
    return executed_train_dir(notebooks_out) / f"{profile}-{variant}-seed{seed}.ipynb"


def executed_train_dir(notebooks_out: str | os.PathLike = EXECUTED) -> Path:
    """The run pages: one executed train.ipynb per run."""
    return Path(notebooks_out) / "train"


def record_paths(out: str | os.PathLike, profile: str | None = None) -> list[Path]:
    """Every record.json under `out` (one profile, or all), sorted."""
    return sorted(Path(out).glob(f"{profile or '*'}/*/seed*/{RECORD}"))


def load_records(out: str | os.PathLike, profile: str | None = None, predictions: bool = True) -> list[dict]:
    """The complete records under `out` (not a run stopped at a deadline), with `_path` and (when present)
    `_predictions` / `_labels` attached."""
    records = []
    for path in record_paths(out, profile):
        try:
            record = read_json(path)
        except (OSError, ValueError):
            continue  # a record being written or damaged is not a result
        if record.get("status") != "complete":
            continue
        record["_path"] = str(path)
        file = path.parent / (record.get("predictions") or PREDICTIONS)
        if predictions and file.is_file():
            arrays, _ = load_arrays(file)
            record["_predictions"], record["_labels"] = arrays["predictions"], arrays["labels"]
        records.append(record)
    return records


def load_record(out: str | os.PathLike, profile: str, variant: str, seed: int) -> dict | None:
    path = run_dir(out, profile, variant, seed) / RECORD
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    record["_path"] = str(path)
    return record


def run_identity(config: TrainConfig | dict) -> dict:
    """The protocol part of a config: what must match for a record or checkpoint to count as this run."""
    values = config if isinstance(config, dict) else config.to_dict()
    return {name: values.get(name) for name in IDENTITY_FIELDS}


def find_finished(out: str | os.PathLike, config: TrainConfig, dataset_sha256: str | None = None) -> dict | None:
    """The complete record of this run (same identity; same data when `dataset_sha256` is given), or None."""
    record = load_record(out, config.profile, config.variant, config.seed)
    if record is None or record.get("status") != "complete":
        return None
    if run_identity(record.get("config", {})) != run_identity(config):
        return None
    if dataset_sha256 is not None and record.get("data", {}).get("dataset", {}).get("content_sha256") != dataset_sha256:
        return None
    return record


def records_profile(records: str | os.PathLike) -> str:
    """The one profile that has records in a records folder (`--records` without `--profile`)."""
    if not Path(records).is_dir():
        raise ConfigError(f"--records {records}: no such folder; unpack the GPU results first (srlib kit unpack)")
    profiles = sorted({p.parents[2].name for p in record_paths(records)})
    if not profiles:
        raise ConfigError(f"--records {records} holds no records (<profile>/<variant>/seed<k>/record.json); "
                          "unpack the GPU results there first (srlib kit unpack), or name the profile with --profile")
    if len(profiles) != 1:
        raise ConfigError(f"--records {records} holds records of {len(profiles)} profiles ({', '.join(profiles)}); "
                          "name one with --profile")
    return profiles[0]
