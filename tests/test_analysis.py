"""Statistics of the report, on hand-made records whose right answers are known."""

from __future__ import annotations

import math

import numpy as np
import pytest

from srlib.analysis import (
    differences_table,
    headline,
    load_records,
    mcnemar,
    mcnemar_counts,
    mean_ci,
    per_class_accuracy,
    results_table,
)
from srlib.store import save_arrays, write_json

LABELS = np.repeat(np.arange(10), 10)  # 100 test images, 10 per class


def record(variant: str, seed: int, final: float, wrong: list[int] | None = None) -> dict:
    """A complete record; `wrong` are the test images it misclassifies (as class (y + 1) % 10)."""
    predictions = LABELS.copy()
    for i in wrong or []:
        predictions[i] = (LABELS[i] + 1) % 10
    return {
        "status": "complete",
        "config": {"variant": variant, "seed": seed, "profile": "smoke", "width": 8, "epochs": 2},
        "input_px": 32,
        "summary": {"max_test_acc": final + 1, "top5_mean_test_acc": final + 0.5, "final_test_acc": final},
        "provenance": {"device": {"cpu": "test cpu"}, "git": {"commit": "abc"}},
        "data": {"dataset": {"classes": [f"c{k}" for k in range(10)]}},
        "predictions": "predictions.npz",
        "_predictions": predictions,
        "_labels": LABELS,
    }


def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, df=2) * s / sqrt(n)
    assert mean_ci([5.0]) == (5.0, None)


def test_mcnemar_is_the_exact_binomial_test():
    assert mcnemar_counts(0, 6)["p_value"] == pytest.approx(2 * 0.5**6)
    assert mcnemar_counts(3, 3)["p_value"] == pytest.approx(1.0)
    assert mcnemar_counts(0, 0)["p_value"] == 1.0
    a = np.array([1, 1, 1, 0, 0], dtype=bool)
    b = np.array([1, 0, 0, 0, 1], dtype=bool)
    assert mcnemar(a, b) == {"only_a_right": 2, "only_b_right": 1, "p_value": pytest.approx(1.0)}


def test_differences_are_paired_by_seed_and_only_over_shared_seeds():
    records = [record("sr_x2", 0, 50.0, wrong=[0]), record("sr_x2", 1, 54.0, wrong=[0]),
               record("sr_x2", 2, 99.0),  # no resize_x2 partner: must not count
               record("resize_x2", 0, 49.0, wrong=[0, 1, 2]), record("resize_x2", 1, 51.0, wrong=[0, 1, 2])]
    table = differences_table(records, [("sr_x2", "resize_x2")])
    row = table.loc["sr_x2 − resize_x2"]
    assert row["seeds"] == 2
    mean, half = mean_ci([1.0, 3.0])
    assert row["Δ final (pp)"] == f"{mean:.2f} ± {half:.2f}"
    # per seed, images 1 and 2 are right only for sr_x2; pooled over the two seeds: 4 vs 0
    assert (row["only A right"], row["only B right"]) == (4, 0)
    assert row["McNemar p (pooled)"] == pytest.approx(2 * 0.5**4)
    assert row["McNemar p (per seed)"] == "0.5, 0.5"


def test_one_seed_is_said_and_gets_no_interval():
    records = [record("sr_x4", 0, 40.0), record("resize_x4", 0, 38.0)]
    assert results_table(records).loc["sr_x4", "final (%)"] == "40.00"
    text = headline(records)
    assert "sr_x4 − resize_x4" in text and "one seed: no confidence interval" in text and "2.00 pp" in text
    assert headline([record("original", 0, 30.0)]).startswith("No paired SR/resize runs")


def test_per_class_accuracy_reads_the_predictions():
    table = per_class_accuracy([record("original", 0, 95.0, wrong=[0, 1, 95])])
    assert table.loc["original", "c0"] == pytest.approx(80.0)
    assert table.loc["original", "c9"] == pytest.approx(90.0)
    assert table.loc["original", "c5"] == pytest.approx(100.0)


def test_load_records_keeps_complete_runs_with_their_predictions(tmp_path):
    for variant, status in (("original", "complete"), ("sr_x2", "running")):
        folder = tmp_path / "smoke" / variant / "seed0"
        folder.mkdir(parents=True)
        body = {k: v for k, v in record(variant, 0, 50.0, wrong=[3]).items() if not k.startswith("_")}
        write_json(folder / "record.json", {**body, "status": status})
        save_arrays(folder / "predictions.npz", {"predictions": record(variant, 0, 50.0, wrong=[3])["_predictions"],
                                                 "labels": LABELS})
    records = load_records(tmp_path, "smoke")
    assert [r["config"]["variant"] for r in records] == ["original"]
    assert int(np.sum(records[0]["_predictions"] != records[0]["_labels"])) == 1
