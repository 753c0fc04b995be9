"""Records as the report reads them: each one checked, and grouped by the data it was made on.

A record that cannot be read or whose parts disagree is left out of every table, with its reason named on the
page. Records made on different datasets (content hashes) are never pooled: `select_dataset` keeps one dataset
and `one_dataset` refuses a mix, so a table can only ever be about one dataset.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import CANONICAL_SHA256, JPEG_SHA256, dataset_key, dataset_name, image_hw, key_hash
from ..errors import SrlibError
from ..runs import PREDICTIONS, record_paths
from ..store import load_arrays, read_json
from ..train import RECORD_SCHEMA

KNOWN_SCHEMAS = (RECORD_SCHEMA,)  # the record schemas this report reads: the one srlib.train writes
# What the report says of the datasets srlib.data knows by hash, where a page needs more than their name.
PROSE = {CANONICAL_SHA256: "canonical CIFAR-10, lossless",
         JPEG_SHA256: "a lossy JPEG q75 copy of CIFAR-10, not canonical CIFAR-10"}
ACCURACY_TOLERANCE = 1e-6  # pp: the summary copies the epoch's accuracy, so they agree to rounding only


def dataset_sha(record: dict) -> str | None:
    return record.get("data", {}).get("dataset", {}).get("content_sha256")


def dataset_label(identity: dict) -> str:
    """A dataset as a page names it: its name (as its source gives it, never a path), what it is where known,
    its image size, classes and counts (where the record has them) and a short content hash."""
    sha = identity.get("content_sha256") or "unknown"
    facts = [PROSE.get(sha) or ("lossy (JPEG) images" if identity.get("lossy") else "")]
    if identity.get("image_size"):
        height, width = image_hw(identity)
        facts.append(f"{width}×{height} px")
    if identity.get("classes"):
        facts.append(f"{len(identity['classes'])} classes")
    if identity.get("train_count"):
        facts.append(f"{identity['train_count']:,} training / {identity.get('test_count', 0):,} test images")
    return f"{dataset_name(identity)} ({', '.join(f for f in facts if f)}, sha256 {sha[:12]})"


@dataclass
class Loaded:
    """The records a page shows (one dataset), and what was left out and why."""

    records: list[dict]
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (record path, reason)
    others: dict[str, int] = field(default_factory=dict)  # other datasets' keys -> their runs, not shown here
    labels: dict[str, str] = field(default_factory=dict)  # every dataset's key -> its name, size and counts
    out: str = "runs"  # the folder they were read from (the command that shows another dataset names it)


def problems(record: dict) -> list[str]:
    """What is wrong with one record (with its `_predictions` / `_labels` attached when present)."""
    if record.get("schema") not in KNOWN_SCHEMAS:
        return [f"unknown record schema {record.get('schema')!r} (this report reads schema "
                f"{', '.join(map(str, KNOWN_SCHEMAS))})"]
    try:
        config, summary, epochs = record["config"], record["summary"], record["epochs"]
        accs = [float(e["test_acc"]) for e in epochs]
        wanted = {k: float(summary[k]) for k in ("final_test_acc", "max_test_acc", "top5_mean_test_acc")}
        planned = int(config["epochs"])
        config["variant"], config["seed"]  # noqa: B018 -- read only to check they are there
        test_size = int(record["data"]["test_subset"]["size"])
        if not dataset_sha(record):
            raise KeyError("data.dataset.content_sha256")
    except (KeyError, TypeError, ValueError) as exc:
        return [f"incomplete record: {type(exc).__name__} {exc}"]
    if not all(math.isfinite(x) for x in [*accs, *wanted.values()]):
        return ["its accuracies are not all finite numbers (NaN or inf)"]
    found = []
    if len(accs) != planned:
        found.append(f"it has {len(accs)} epochs of metrics but its config asks for {planned}")
    if accs:
        derived = {"final_test_acc": accs[-1], "max_test_acc": max(accs),
                   "top5_mean_test_acc": float(np.mean(sorted(accs)[-5:]))}
        for key, value in derived.items():
            if abs(value - wanted[key]) > ACCURACY_TOLERANCE:
                found.append(f"summary {key} {wanted[key]:.2f} disagrees with its per-epoch metrics ({value:.2f})")
    if "_predictions" in record:
        preds, labels = np.asarray(record["_predictions"]), np.asarray(record["_labels"])
        if len(preds) != len(labels) or len(labels) != test_size:
            found.append(f"{len(preds)} predictions and {len(labels)} labels for {test_size} test images")
        elif abs(100.0 * float(np.mean(preds == labels)) - wanted["final_test_acc"]) > ACCURACY_TOLERANCE:
            found.append(f"its predictions score {100.0 * float(np.mean(preds == labels)):.2f}% but its summary "
                         f"says {wanted['final_test_acc']:.2f}% final")
    return found


def _read(path: Path) -> tuple[dict | None, str | None]:
    """(complete record with predictions attached, None), (None, reason), or (None, None) when unfinished."""
    try:
        record = read_json(path)
    except (OSError, ValueError) as exc:
        return None, f"unreadable ({type(exc).__name__}: truncated or not JSON)"
    if not isinstance(record, dict):
        return None, "not a record (not a JSON object)"
    if record.get("status") != "complete":
        return None, None  # unfinished: the missing-runs note names it
    record["_path"] = str(path)
    name = record.get("predictions") or PREDICTIONS
    file = path.parent / name
    if file.is_file():
        try:
            arrays, _ = load_arrays(file)
            record["_predictions"], record["_labels"] = arrays["predictions"], arrays["labels"]
        except (OSError, ValueError, KeyError, SrlibError) as exc:
            return None, f"its predictions file {name} is damaged ({type(exc).__name__})"
    return record, None


def load_checked(out: str | os.PathLike, profile: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """Every complete, consistent record of `profile` under `out`, and (path, reason) for those left out."""
    records, rejected = [], []
    for path in record_paths(out, profile):
        record, why = _read(path)
        if why is not None:
            rejected.append((str(path), why))
        elif record is not None:
            found = problems(record)
            if found:
                rejected.append((str(path), "; ".join(found)))
            else:
                records.append(record)
    return _same_labels(records, rejected)


def _same_labels(records: list[dict], rejected: list) -> tuple[list[dict], list]:
    """Runs on one dataset and test subset must hold the same labels; a record that does not is left out."""
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "_labels" in r:
            groups.setdefault((dataset_sha(r), r["data"]["test_subset"].get("indices_sha256")), []).append(r)
    bad = set()
    for group in groups.values():
        counts = Counter(np.asarray(r["_labels"]).tobytes() for r in group).most_common()
        tied = len(counts) > 1 and counts[0][1] == counts[1][1]  # no majority: which labels are right is unknown
        for r in group:
            if tied or np.asarray(r["_labels"]).tobytes() != counts[0][0]:
                bad.add(id(r))
                rejected.append((r["_path"], "its labels differ from the other runs' on the same test images"))
    return [r for r in records if id(r) not in bad], rejected


def by_dataset(records: list[dict]) -> dict[str, list[dict]]:
    """Records grouped by dataset content hash, the group with the most runs first (canonical on a tie)."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(dataset_sha(r), []).append(r)
    return dict(sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0] != CANONICAL_SHA256, kv[0])))


def select_dataset(records: list[dict], dataset: str | None = None) -> tuple[list[dict], dict[str, int]]:
    """The records of one dataset (`dataset`: its name, e.g. cifar10, its key, e.g. cifar10-c8cc1b78, or a
    content-hash prefix; by default the one with the most runs), and the other datasets' keys with their run
    counts (shown as left out, never pooled)."""
    groups = by_dataset(records)
    if not groups:
        return [], {}
    chosen = next(iter(groups))
    if dataset is not None:
        wanted = dataset.lower()
        tail = key_hash(wanted)  # the same data may carry another folder's name
        identities = {sha: g[0]["data"]["dataset"] for sha, g in groups.items()}
        matching = [sha for sha, identity in identities.items()
                    if wanted in (dataset_name(identity).lower(), dataset_key(identity))
                    or (sha and (sha.startswith(wanted) or (len(tail) == 8 and sha.startswith(tail))))]
        if len(matching) != 1:
            raise SrlibError(f"dataset {dataset!r} matches {len(matching)} of the datasets of these records "
                             f"({', '.join(dataset_key(i) for i in identities.values())}); give one of these keys")
        chosen = matching[0]
    others = {dataset_key(g[0]["data"]["dataset"]): len(g) for sha, g in groups.items() if sha != chosen}
    return groups[chosen], others


def one_dataset(records: list[dict]) -> list[dict]:
    """`records` unchanged when they are all on one dataset; otherwise an error: they are never pooled."""
    shas = {dataset_sha(r) for r in records}
    if len(shas) > 1:
        names = sorted(dataset_label(g[0]["data"]["dataset"]) for g in by_dataset(records).values())
        raise SrlibError(f"these records were made on {len(shas)} datasets ({'; '.join(names)}), which are never "
                         "pooled or compared; take one with srlib.record_checks.select_dataset")
    return records
