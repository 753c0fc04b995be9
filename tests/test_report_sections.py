"""The report's sections on hand-made records whose right answers are known: where SR helps (counts and
pictures), what it costs, and the reference report beside ours."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_analysis import record

from srlib.errors import SrlibError
from srlib.flops import train_flops_per_image
from srlib.report import cost_report, reference, where_sr_helps
from srlib.report.record_checks import CANONICAL_SHA256, JPEG_SHA256


def pair(wrong_sr: list[list[int]], wrong_resize: list[list[int]]) -> list[dict]:
    return [record(v, s, wrong=w) for s, (a, b) in enumerate(zip(wrong_sr, wrong_resize, strict=True))
            for v, w in (("sr_x2", a), ("resize_x2", b))]


# --- where SR helps ---------------------------------------------------------------------------------

def test_disagreements_are_counted_per_class_and_over_seeds():
    # seed 0: SR misses 0, 1, 50; resize misses 2, 3, 50, 60. seed 1: SR misses 0, 70; resize misses 2, 60, 71.
    (d,) = where_sr_helps.disagreements(pair([[0, 1, 50], [0, 70]], [[2, 3, 50, 60], [2, 60, 71]]))
    table = where_sr_helps.class_table(d)
    assert table.loc["c0", "SR only right"] == 1.5 and table.loc["c0", "resize only right"] == 1.5  # (2+1)/2 each
    assert table.loc["c6", "SR only right"] == 1.0 and table.loc["c6", "net (pp)"] == pytest.approx(10.0)
    assert table.loc["c7", "net (pp)"] == 0.0  # 71 for SR in seed 1, 70 for resize in seed 1
    assert table.loc["all classes", "SR only right"] == 3.0 and table.loc["all classes", "resize only right"] == 2.0
    assert table.loc["all classes", "SR only, all seeds"] == 2
    assert table.loc["all classes", "resize only, all seeds"] == 1
    sr_side, resize_side = where_sr_helps.clearest(d)
    assert list(sr_side) == [2, 60] and list(resize_side) == [0]  # right with one, wrong with the other, every seed
    assert where_sr_helps.case_captions(d, sr_side)[0] == "true: c0\nSR: c0 (2/2 seeds)\nresize: c1 (2/2 seeds)"
    assert "3.0 test images right with sr_x2 only and 2.0 right with resize_x2 only" in where_sr_helps.summary(d)


def test_the_clearest_cases_are_spread_over_classes():
    wrong = [list(range(0, 10)) + [10]]  # resize misses all of class 0 and one image of class 1
    (d,) = where_sr_helps.disagreements(pair([[]], wrong))
    assert list(where_sr_helps.clearest(d, per_side=3)[0]) == [0, 1, 10]  # class 0, class 1, then class 0 again


def test_without_a_pair_the_section_names_the_missing_run():
    records = [record("original", 0), record("sr_x2", 0)]
    assert where_sr_helps.disagreements(records) == []
    assert where_sr_helps.empty_note(records).startswith("sr_x2 has no resize_x2 run of the same seed")


@pytest.fixture
def pictured(imagefolder, tiny_sr_weights, tmp_path):
    """SR/resize records made on the generated imagefolder, SR with a tiny random x2 model, as a run would."""
    from srlib.data import load_dataset
    from srlib.store import sha256_array
    from srlib.upscale import build_upscaler

    dataset = load_dataset(str(imagefolder), cache_dir=tmp_path / "cache")
    weights = str(tiny_sr_weights[2])
    sha = build_upscaler("sr", 2, weights=weights).identity["weights_sha256"]
    records = []
    for variant, wrong in (("sr_x2", [1]), ("resize_x2", [0, 4])):
        r = record(variant, 0)
        predictions = dataset.test_y.copy()
        predictions[wrong] = (predictions[wrong] + 1) % 10
        r["_labels"], r["_predictions"] = dataset.test_y, predictions
        r["config"] = {**r["config"], "test_size": None, "sr_weights": weights if variant == "sr_x2" else None}
        r["data"] = {**r["data"], "dataset": dataset.identity,
                     "test_subset": {"size": len(dataset.test_y),
                                     "indices_sha256": sha256_array(np.arange(len(dataset.test_y)))},
                     "upscaler": {"method": "sr", "scale": 2, "weights_sha256": sha} if variant == "sr_x2" else {}}
        records.append(r)
    (d,) = where_sr_helps.disagreements(records)
    return d, dataset, weights


def test_pictures_show_each_case_as_the_classifier_saw_it(pictured, imagefolder, tmp_path):
    from srlib.store import save_arrays, sha256_array
    from srlib.upscale import build_upscaler, upscale, upscaled_cache_path

    d, dataset, weights = pictured
    sr_side, resize_side = where_sr_helps.clearest(d)
    assert list(sr_side) == [0, 4] and list(resize_side) == [1]
    images = where_sr_helps.case_images(d, sr_side, str(imagefolder), tmp_path / "cache")
    assert list(images) == ["original 32 px", "bicubic 64 px", "SR 64 px"]
    assert np.array_equal(images["original 32 px"], dataset.test_x[[0, 4]])
    assert np.array_equal(images["bicubic 64 px"], upscale(dataset.test_x[[0, 4]], build_upscaler("bicubic", 2), False))
    made = upscale(dataset.test_x[[0, 4]], build_upscaler("sr", 2, weights=weights), False)
    assert np.array_equal(images["SR 64 px"], made)  # from the weights whose sha256 the record names

    # The runs' verified cache is preferred (here: marked with zeros), a damaged one is not used.
    sha = d.runs_a[0]["data"]["upscaler"]["weights_sha256"]
    cache = upscaled_cache_path(tmp_path / "cache", "sr", 2, sha256_array(dataset.test_x), sha[:16])
    cache.parent.mkdir(parents=True, exist_ok=True)
    save_arrays(cache, {"images": np.zeros((len(dataset.test_y), 3, 64, 64), np.uint8)})
    assert not where_sr_helps.case_images(d, sr_side, str(imagefolder), tmp_path / "cache")["SR 64 px"].any()
    data = bytearray(cache.read_bytes())
    data[100] ^= 1
    cache.write_bytes(bytes(data))
    assert np.array_equal(where_sr_helps.case_images(d, sr_side, str(imagefolder), tmp_path / "cache")["SR 64 px"],
                          made)
    figures, note = where_sr_helps.case_figures(d, str(imagefolder), tmp_path / "cache")
    assert len(figures) == 2 and note is None


def test_pictures_are_refused_on_other_data_or_other_weights(pictured, imagefolder, tmp_path, monkeypatch):
    d, _, _ = pictured
    other = {**d.runs_a[0], "data": {**d.runs_a[0]["data"],
                                     "dataset": {**d.runs_a[0]["data"]["dataset"], "content_sha256": "f" * 64}}}
    moved = where_sr_helps.Disagreements(d.comparison, d.seeds, d.classes, d.labels, d.predictions_a,
                                         d.predictions_b, (other,))
    with pytest.raises(where_sr_helps.PicturesUnavailable, match="but these runs were made on .*sha256 ffffffffffff"):
        where_sr_helps.case_images(moved, np.array([0]), str(imagefolder), tmp_path / "cache")
    renamed = {**d.runs_a[0], "data": {**d.runs_a[0]["data"], "upscaler": {"weights_sha256": "a" * 64}}}
    swapped = where_sr_helps.Disagreements(d.comparison, d.seeds, d.classes, d.labels, d.predictions_a,
                                           d.predictions_b, (renamed,))
    with pytest.raises(where_sr_helps.PicturesUnavailable, match="not the ones sr_x2 was trained with"):
        where_sr_helps.case_images(swapped, np.array([0]), str(imagefolder), tmp_path / "cache")
    monkeypatch.delenv("SRLIB_DATA", raising=False)
    _, note = where_sr_helps.case_figures(d, None, tmp_path / "cache")
    assert note.startswith("No pictures: no data is configured here (SRLIB_DATA is not set)")


# --- what it costs ---------------------------------------------------------------------------------

def test_compute_and_the_gain_per_doubling_come_from_the_flop_count():
    records = [record("original", s, final) for s, final in ((0, 70.0), (1, 72.0))]
    records += [record("sr_x2", s, final) for s, final in ((0, 74.0), (1, 77.0))]
    records += [record("sr_x4", 0, 80.0)]
    ratio = train_flops_per_image(64, 8) / train_flops_per_image(32, 8)
    assert cost_report.compute_ratios(records) == pytest.approx({2: ratio, 4: train_flops_per_image(128, 8)
                                                                 / train_flops_per_image(32, 8)})
    frame = cost_report.cost_frame(records)
    assert frame.loc["original", "pflop"] == pytest.approx(train_flops_per_image(32, 8) * 2000 * 2 / 1e15)
    # per seed: 4 and 5 pp over log2(ratio) doublings, mean 4.5 / log2(ratio)
    assert frame.loc["sr_x2", "gain_per_doubling"] == pytest.approx(4.5 / math.log2(ratio))
    assert frame.loc["sr_x4", "paired_seeds"] == 1 and math.isnan(frame.loc["original", "gain_per_doubling"])
    table = cost_report.cost_table(records)
    assert list(table["× original"]) == ["1.0×", "4.0×", "16.0×"]
    assert "device" not in table  # one device: named in the caption
    assert "all runs on test cpu" in cost_report.cost_caption(records)
    # per doubling: 4 and 5 pp over 1.99998 doublings (t half-width 3.2 over 2 seeds); x4: one seed, no interval
    assert cost_report.cost_sentence(records).endswith("(pp): sr_x2 +2.3 ± 3.2; sr_x4 +2.50.")
    assert list(table["pp per doubling"]) == ["—", "+2.3 ± 3.2", "+2.50"]
    assert cost_report.cost_sentence(records).startswith("x2 costs 4× the training compute of `original` and x4 "
                                                         "costs 16× the training compute of `original`")
    assert "(FLOPs of the ResNet-18 at 64 and 128 px over 32 px" in cost_report.cost_sentence(records)
    grey = [{**r, "data": {**r["data"], "dataset": {**r["data"]["dataset"], "image_size": [3, 28, 28]}}}
            for r in records]  # 28 px data: its own sizes, never CIFAR-10's
    assert "(FLOPs of the ResNet-18 at 56 and 112 px over 28 px" in cost_report.cost_sentence(grey)


# --- the reference beside ours ----------------------------------------------------------------------

def comparable(variant: str, seed: int, top: float, top5: float) -> dict:
    r = record(variant, seed)
    r["config"] = {**r["config"], "profile": "paper"}
    r["data"] = {**r["data"], "dataset": {**r["data"]["dataset"], "content_sha256": CANONICAL_SHA256, "lossy": False}}
    r["summary"] = {**r["summary"], "max_test_acc": top, "top5_mean_test_acc": top5}
    return r


def test_the_reference_is_set_beside_comparable_runs_with_the_same_statistic():
    records = [comparable("sr_x2", 0, 91.3, 91.2), comparable("sr_x2", 1, 91.7, 91.3),
               comparable("resize_x2", 0, 90.0, 90.10), comparable("resize_x2", 1, 90.2, 90.12),
               comparable("original", 0, 89.0, 88.9)]
    assert reference.not_comparable(records) is None
    table = reference.reference_table(records)
    inside = "reference in our 95% CI"
    assert table.loc[("sr_x2", "max"), "ours (%)"] == "91.5 ± 2.5"  # mean 91.5, t(0.975, 1) * 0.2 = 2.54
    assert table.loc[("sr_x2", "max"), inside] == "inside"  # 91.44 within [89.0, 94.0]
    assert table.loc[("original", "top-5 mean"), inside] == "one seed: no interval"
    assert table.loc[("sr_x4", "max"), inside] == "not run"
    assert table.loc[("resize_x2", "top-5 mean"), inside].startswith("outside")  # 90.804 vs 90.11 ± 0.13
    diffs = reference.reference_differences(records)
    row = diffs.loc["SR − resize at x2, top-5 mean"]
    assert row["reference (pp)"] == "+0.548"  # 91.352 − 90.804, from the quoted numbers
    assert row["ours (pp)"] == "+1.14 ± 0.51"  # per seed 1.10 and 1.18
    assert row[inside] == "outside"


def test_runs_on_other_data_or_protocol_are_labelled_not_comparable():
    records = [record("sr_x2", 0, dataset=JPEG_SHA256), record("resize_x2", 0, dataset=JPEG_SHA256)]
    why = reference.not_comparable(records)
    assert "cifar10-jpeg75 (a lossy JPEG q75 copy of CIFAR-10" in why and "profile smoke" in why
    table = reference.reference_table(records)
    assert table.loc["sr_x2", "ours"] == "not comparable" and table.loc["sr_x4", "ours"] == "not run"
    assert table.loc["sr_x2", "reference max (%)"] == "91.44"
    differences = reference.reference_differences(records)
    assert differences.loc["SR − resize at x2, top-5 mean", "ours (pp)"] == "not comparable"


# --- a dataset other than CIFAR-10: named by its own name and size, the others named with how to see them ----

def test_the_results_page_names_another_dataset_by_its_name_and_size(tmp_path):
    from test_analysis import _write

    from srlib.report import report_text

    fashion = {"name": "fashion_mnist", "source": "parquet", "image_size": [3, 28, 28], "lossy": False,
               "classes": [f"c{k}" for k in range(10)], "train_count": 60000, "test_count": 10000,
               "content_sha256": "f" * 64}
    for r in pair([[0, 1], [0]], [[2], [2, 3]]):
        _write(tmp_path, {**r, "data": {**r["data"], "dataset": fashion}})
    cifar = record("original", 7, wrong=[1])
    cifar["data"] = {**cifar["data"], "dataset": {**cifar["data"]["dataset"], "content_sha256": CANONICAL_SHA256,
                                                  "lossy": False, "image_size": [3, 32, 32]}}
    _write(tmp_path, cifar)
    for asked in (None, "fashion_mnist", "fashion-mnist-ffffffff", "ffff"):  # most runs, name, key, hash prefix
        loaded = report_text.require_records(tmp_path, "smoke", asked)
        assert {r["data"]["dataset"]["name"] for r in loaded.records} == {"fashion_mnist"}
    summary = report_text.study_summary(loaded.records)
    assert summary.startswith("On **fashion_mnist (28×28 px, 10 classes, 60,000 training / 10,000 test images, "
                              "sha256 ffffffffffff)**: 4 runs")
    notes = report_text.loading_notes(loaded)
    assert "1 run on cifar10 (canonical CIFAR-10, lossless, 32×32 px" in notes
    assert f"`make report RECORDS={tmp_path} DATASET=cifar10-{CANONICAL_SHA256[:8]}`" in notes
    page = " ".join([summary, *report_text.caveats(loaded.records), reference.comparability_note(loaded.records)])
    assert "CIFAR-10" not in page.replace("canonical CIFAR-10", "")  # only as what the reference was made on
    assert reference.reference_table(loaded.records).empty  # the reference's tables: CIFAR-10 only
    assert reference.reference_differences(loaded.records).empty
    shown = report_text.require_records(tmp_path, "smoke", "CIFAR10")  # by name, in any case
    assert report_text.study_summary(shown.records).startswith("On **cifar10 (canonical CIFAR-10, lossless, 32×32 px")


def test_the_same_data_under_another_folder_name_is_found_by_its_key():
    """Runs reused from data in another folder: the key the sweep derives carries that folder's name and the
    records' hash; the page finds the records by the hash (the sweep's verdicts and compare.ipynb ask for it)."""
    from srlib.report.record_checks import select_dataset

    runs = [record("original", 0, wrong=[0], dataset="e" * 64), record("original", 0, wrong=[1], dataset="d" * 64)]
    assert select_dataset(runs, "my-copy-eeeeeeee")[0] == runs[:1]
    with pytest.raises(SrlibError, match="matches 0"):
        select_dataset(runs, "my-copy-ffffffff")
