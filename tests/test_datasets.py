"""Runs keyed by their data: two datasets (28 px grey with 10 classes, 48 px colour with 3) side by side in one
output folder, nothing overwritten or reused across them; the older layout without the dataset still read."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srlib.config import make_config
from srlib.data import dataset_key, load_dataset
from srlib.runs import find_finished, load_records, record_dataset, record_paths, records_profile, run_dir
from srlib.train import train

TINY = dict(epochs=1, width=4, train_size=20, test_size=10, batch_size=8)
pytestmark = pytest.mark.usefixtures("one_thread")


def make_folder(root: Path, px: int, mode: str, classes: int, per_class: int = 4) -> Path:
    """An ImageFolder (train/ and test/) of `classes` classes of `px` x `px` images in `mode` (L or RGB)."""
    rng = np.random.default_rng(px + classes)
    for split in ("train", "test"):
        for label in range(classes):
            folder = root / split / f"class{label}"
            folder.mkdir(parents=True)
            for i in range(per_class):
                shape = (px, px) if mode == "L" else (px, px, 3)
                pixels = np.clip(rng.normal(40 + 20 * label, 20, shape), 0, 255).astype(np.uint8)
                Image.fromarray(pixels, mode).save(folder / f"{i}.png")
    return root


@pytest.fixture
def two_datasets(tmp_path: Path) -> tuple[Path, Path]:
    return (make_folder(tmp_path / "grey28", 28, "L", 10, per_class=3),
            make_folder(tmp_path / "colour48", 48, "RGB", 3, per_class=8))


def _train(data: Path, out: Path, logs: list[str] | None = None) -> dict:
    return train(make_config("original", "smoke", 0, **TINY), out=out, data=str(data), device="cpu", progress=False,
                 log=(logs.append if logs is not None else lambda *_: None))


def test_train_on_two_datasets_into_one_out_keeps_both_records(tmp_path, two_datasets):
    grey, colour = two_datasets
    out = tmp_path / "runs"
    first = _train(grey, out)
    key = record_dataset(first)
    assert key == dataset_key(load_dataset(str(grey)).identity) and key.startswith("grey28-")
    path = run_dir(out, "smoke", key, "original", 0) / "record.json"
    before = path.read_bytes()
    second = _train(colour, out)  # the same variant and seed on other data: a folder of its own
    assert record_dataset(second) != key and path.read_bytes() == before
    assert sorted(p.relative_to(out).parts[1] for p in record_paths(out)) == sorted([key, record_dataset(second)])
    assert [r["data"]["dataset"]["train_count"] for r in load_records(out, dataset=key)] == [30]
    logs: list[str] = []
    assert _train(grey, out, logs) == first and any("reusing finished run" in line for line in logs)


def test_an_old_layout_folder_is_still_read_and_its_finished_run_not_retrained(tmp_path, two_datasets):
    grey, colour = two_datasets
    out = tmp_path / "runs"
    first = _train(grey, out)
    key = record_dataset(first)
    old = out / "smoke" / "original" / "seed0"  # the layout before the dataset was in the path
    shutil.move(run_dir(out, "smoke", key, "original", 0), old)
    shutil.rmtree(out / "smoke" / key)
    config = make_config("original", "smoke", 0, **TINY)
    assert record_paths(out) == [old / "record.json"] and records_profile(out) == "smoke"
    assert find_finished(out, config, key)["_path"] == str(old / "record.json")
    assert find_finished(out, config, "colour48-00000000") is None  # counts only for the data its record names
    logs: list[str] = []
    assert _train(grey, out, logs) == first and any(str(old) in line for line in logs)
    assert not (out / "smoke" / key).exists()  # reused where it is, not retrained
    other = _train(colour, out)  # other data: a new-layout folder; the old record untouched
    assert run_dir(out, "smoke", record_dataset(other), "original", 0).is_dir()
    assert json.loads((old / "record.json").read_text()) == first
    assert len(load_records(out)) == 2 and len(load_records(out, dataset=key)) == 1


def test_the_kit_queue_counts_only_the_kits_dataset(tmp_path):
    from srlib.orchestration.kit.schedule import queue
    from srlib.store import write_json

    results = tmp_path / "results"

    def record(folder: Path, sha: str, variant: str) -> None:
        write_json(folder / "record.json", {"status": "complete", "config": {"variant": variant, "seed": 0},
                                            "data": {"dataset": {"content_sha256": sha}}})

    mine, other = "ab" * 32, "cd" * 32
    record(results / "paper" / "original" / "seed0", mine, "original")  # old layout, the kit's data
    record(run_dir(results, "paper", f"other-{other[:8]}", "resize_x2", 0), other, "resize_x2")
    left = [(k.variant, k.seed) for k in queue(results, mine, seeds=(0,), variants=("original", "resize_x2"))]
    assert left == [("resize_x2", 0)]
    left = [(k.variant, k.seed) for k in queue(results, other, seeds=(0,), variants=("original", "resize_x2"))]
    assert left == [("original", 0)]


@pytest.mark.slow
def test_a_sweep_into_one_folder_with_two_datasets_keeps_both(tmp_path, two_datasets):
    from srlib.orchestration.request import SweepRequest
    from srlib.orchestration.sweep import sweep

    out, notebooks = tmp_path / "runs", tmp_path / "nb"
    results, estimates = [], []
    for data in (*two_datasets, two_datasets[0]):
        request = SweepRequest("smoke", 1, ["original"], out=out, notebooks_out=notebooks, data=str(data),
                               overrides=TINY, analysis=False, threads=1, jobs=1)
        lines: list[str] = []
        results.append(sweep(request, log=lines.append, live=False))
        estimates += [line for line in lines if line.startswith("[sweep] estimated time")]
    # the estimate counts a run done only on its own data: the second dataset's run is to do, the third sweep's not
    assert len(estimates) == 3 and "~0.0 s" not in estimates[1], estimates
    assert estimates[2].endswith("~0.0 s, no run left to train (each has its record)"), estimates
    keys = [dataset_key(load_dataset(str(data)).identity) for data in two_datasets]
    assert [r.done for r in results[:2]] == [[f"smoke-{k}-original-seed0"] for k in keys]
    assert results[2].skipped == [f"smoke-{keys[0]}-original-seed0"] and not results[2].done  # its own data's run
    assert sorted(record_dataset(r) for r in load_records(out)) == sorted(keys)
    assert sorted(p.name for p in (notebooks / "train").glob("*.ipynb")) == sorted(
        f"smoke-{k}-original-seed0.ipynb" for k in keys)
    # records mode on the dataset that sorts last: its run page shows its own record, not the first folder's
    shown = sweep(SweepRequest("smoke", 1, ["original"], out=out, notebooks_out=tmp_path / "shown", dataset=keys[0],
                               overrides=TINY, analysis=False, records_only=True), log=lambda *_: None, live=False)
    assert shown.done == [f"smoke-{keys[0]}-original-seed0"], shown
    page = (tmp_path / "shown" / "train" / f"smoke-{keys[0]}-original-seed0.ipynb").read_text()
    assert "test images of grey28" in page and "colour48" not in page
