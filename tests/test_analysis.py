"""Statistics of the report, on hand-made records and simulated data whose right answers are known,
checked against statsmodels / scipy or brute force where one exists."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.power import TTestPower

from srlib.errors import SrlibError
from srlib.report.analysis import (
    differences_table,
    per_class_accuracy,
    pixels_decomposition,
    pixels_or_model,
    power_table,
    provenance_table,
    results_table,
    selection_table,
)
from srlib.report.comparisons import comparison_stats, comparisons, order_variants
from srlib.report.formats import fmt_p
from srlib.report.report_text import (
    caveats,
    headline,
    headline_verdicts,
    missing_runs,
    require_records,
    run_summary,
    verdict,
    verdicts,
)
from srlib.statistics import (
    crossed_bootstrap,
    detectable_difference,
    mcnemar_p,
    mean_ci,
    seeds_needed,
    sign_flip_test,
    t_test_power,
    variance_components,
)
from srlib.store import save_arrays, write_json

LABELS = np.repeat(np.arange(10), 10)  # 100 test images, 10 per class


def record(variant: str, seed: int, final: float | None = None, wrong: list[int] | None = None,
           dataset: str = "d" * 64) -> dict:
    """A complete record whose summary agrees with its epochs; `wrong` are the test images it misclassifies
    (as class (y + 1) % 10). `final` defaults to the accuracy those predictions have (another value makes a
    record whose predictions disagree with its summary: fine for the statistics, refused when read)."""
    predictions = LABELS.copy()
    for i in wrong or []:
        predictions[i] = (LABELS[i] + 1) % 10
    final = 100.0 * float(np.mean(predictions == LABELS)) if final is None else final
    return {
        "schema": 2,
        "status": "complete",
        "config": _config(variant, seed),
        "input_px": 32 * int(variant.partition("_x")[2][:1] or 1),
        "model": {"name": "resnet18", "width": 8, "parameters": 1234567},
        "precision": "fp32",
        "epochs": [{"epoch": 1, "test_acc": final - 1, "test_loss": 1.5, "train_loss": 1.7},
                   {"epoch": 2, "test_acc": final, "test_loss": 1.2, "train_loss": 1.4}],
        "summary": {"max_test_acc": final, "top5_mean_test_acc": final - 0.5, "final_test_acc": final,
                    "best_epoch": 2, "train_seconds": 12.4},
        "provenance": {"device": {"cpu": "test cpu"}, "git": {"commit": "abc", "dirty": False},
                       "versions": {"torch": "2.9.0"}},
        "data": {"dataset": {"classes": [f"c{k}" for k in range(10)], "source": "imagefolder", "lossy": True,
                             "path": "/data/cifar", "content_sha256": dataset},
                 "train_subset": {"size": 2000}, "test_subset": {"size": len(LABELS)},
                 "upscaler": {"method": "none", "scale": 1}},
        "predictions": "predictions.npz",
        "_predictions": predictions,
        "_labels": LABELS,
    }


def _config(variant: str, seed: int) -> dict:
    """The config a smoke run of this variant writes (so `find_finished` knows it), a minimal one otherwise."""
    from srlib.config import VARIANTS, make_config

    if variant not in VARIANTS:
        return {"variant": variant, "seed": seed, "profile": "smoke", "width": 8, "epochs": 2}
    return {**make_config(variant, "smoke", seed).to_dict(), "width": 8, "epochs": 2}


def random_records(variants: dict[str, float], seeds: int, rng: np.random.Generator) -> list[dict]:
    """Records whose runs misclassify each image independently with the variant's error rate."""
    return [record(v, s, wrong=list(np.flatnonzero(rng.random(len(LABELS)) < error)))
            for s in range(seeds) for v, error in variants.items()]


# --- the textbook pieces ---------------------------------------------------------------------------

def test_mean_ci_is_the_student_t_interval():
    mean, half = mean_ci([1.0, 2.0, 3.0])
    assert mean == 2.0
    assert half == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-6)  # t(0.975, df=2) * s / sqrt(n)
    assert mean_ci([5.0]) == (5.0, None)


def test_mcnemar_is_the_exact_binomial_test():
    assert mcnemar_p(0, 6) == pytest.approx(2 * 0.5**6)
    assert mcnemar_p(3, 3) == pytest.approx(1.0)
    assert mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(2, 9) == pytest.approx(sm_mcnemar([[5, 2], [9, 5]], exact=True).pvalue, rel=1e-9)


def test_p_values_have_three_significant_digits():
    assert [fmt_p(p) for p in (0.5, 1.0, 0.012345, 1.234e-5, None)] == ["0.500", "1.00", "0.0123", "1.23e-05", "—"]


# --- the permutation test across seeds ------------------------------------------------------------

@pytest.mark.parametrize("only_a, only_b", [(3, 12), (40, 55), (7, 7), (0, 9)])
def test_permutation_test_with_one_seed_is_the_exact_mcnemar_test(only_a, only_b):
    diff = np.zeros((1, 200), dtype=np.int8)
    diff[0, :only_a] = 1
    diff[0, only_a:only_a + only_b] = -1
    expected = sm_mcnemar([[100, only_a], [only_b, 100]], exact=True).pvalue
    p, exact = sign_flip_test(diff)
    assert exact and p == pytest.approx(expected, rel=1e-9)
    # Monte Carlo (forced): the same p-value to Monte-Carlo error (4 standard errors of 10,000 draws)
    p_mc, exact = sign_flip_test(diff, n_permutations=10_000, exact_work=0, rng=1)
    assert not exact and abs(p_mc - expected) <= 4 * math.sqrt(expected * (1 - expected) / 10_000) + 1e-4


def test_permutation_test_swaps_each_image_for_every_seed_at_once():
    # brute force over all 2**12 swaps of 12 images, 3 seeds: the same swap applies to every seed's row
    rng = np.random.default_rng(5)
    diff = rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=(3, 12), p=[0.25, 0.35, 0.4])
    observed = abs(diff.sum())
    flips = np.array(list(itertools.product([1, -1], repeat=12)))
    brute = np.mean(np.abs((flips * diff.sum(axis=0)).sum(axis=1)) >= observed)
    p, exact = sign_flip_test(diff)
    assert exact and p == pytest.approx(brute, rel=1e-9)
    p_mc, _ = sign_flip_test(diff, exact_work=0, rng=2)
    assert abs(p_mc - brute) <= 4 * math.sqrt(brute * (1 - brute) / 10_000) + 1e-4


# --- the crossed bootstrap -------------------------------------------------------------------------

def test_crossed_bootstrap_draws_one_image_sample_for_all_seeds():
    # An independent, literal implementation: index resampling, the image draw shared by the seed draw.
    rng = np.random.default_rng(3)
    # the seeds share most of their per-image outcomes, so drawing images per seed would shrink the interval
    diff = np.tile(rng.choice(np.array([-1, 0, 1], dtype=np.int8), size=300, p=[0.1, 0.75, 0.15]), (3, 1))
    diff[1] += (rng.random(300) < 0.1).astype(np.int8) * (diff[1] < 1)  # a seed that differs more
    literal = []
    for _ in range(4000):
        seeds = rng.integers(0, 3, 3)
        images = rng.integers(0, 300, 300)
        literal.append(diff[np.ix_(seeds, images)].mean())
    expected = np.quantile(literal, [0.025, 0.975])
    low, high = crossed_bootstrap(diff, n_boot=4000, rng=4)
    assert (low, high) == pytest.approx(tuple(expected), abs=0.006)  # Monte-Carlo error of the 2.5% quantiles


@pytest.mark.parametrize("seeds, seed_sd", [(1, 0.0), (4, 0.02)])
def test_crossed_bootstrap_covers_the_truth_at_about_the_nominal_rate(seeds, seed_sd):
    """Simulated studies on 400 images with a true difference of 1 pp: images differ in how often A and B
    disagree (test-set noise), each seed shifts the difference by N(0, seed_sd) (training noise), and
    every seed's image outcomes are drawn afresh (seed-by-image noise)."""
    rng = np.random.default_rng(11)
    truth, trials, covered = 0.01, 300, 0
    for _ in range(trials):
        discord = rng.beta(1, 9, size=400)  # per image: chance that A and B disagree (mean 0.1)
        seed_shift = rng.normal(0, seed_sd, size=(seeds, 1))
        p_only_a = np.clip(discord / 2 + truth / 2 + seed_shift / 2, 0, 1)
        p_only_b = np.clip(discord / 2 - truth / 2 - seed_shift / 2, 0, 1)
        u = rng.random((seeds, 400))
        diff = (u < p_only_a).astype(np.int8) - ((u >= p_only_a) & (u < p_only_a + p_only_b)).astype(np.int8)
        low, high = crossed_bootstrap(diff, n_boot=1000, rng=rng)
        covered += low <= truth <= high
    # Nominal 95%; 300 trials give a Monte-Carlo SD of 1.3 points. Known bias, either way: resampling
    # seeds and images both counts the seed-by-image noise more than once (conservative: 99.7% here
    # with seed_sd = 0.01), while 3-5 seeds under-represent a large seed effect (94% at seed_sd = 0.03).
    assert 0.91 <= covered / trials <= 0.99


# --- power ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("effect, sd, seeds", [(0.5, 0.4, 3), (0.5, 0.4, 10), (1.0, 2.0, 5)])
def test_power_without_test_set_noise_is_the_one_sample_t_test_of_statsmodels(effect, sd, seeds):
    expected = TTestPower().power(effect_size=effect / sd, nobs=seeds, alpha=0.05)
    assert t_test_power(effect, sd, seeds) == pytest.approx(expected, rel=1e-6)
    mdd = detectable_difference(sd, seeds)
    assert mdd / sd == pytest.approx(TTestPower().solve_power(nobs=seeds, alpha=0.05, power=0.8), rel=1e-4)
    needed = math.ceil(TTestPower().solve_power(effect_size=effect / sd, alpha=0.05, power=0.8))
    assert seeds_needed(effect, sd) == max(needed, 2)


def test_test_set_noise_limits_what_any_number_of_seeds_can_detect():
    assert t_test_power(0.5, 0.4, 10, image_se=0.1) < t_test_power(0.5, 0.4, 10)
    assert seeds_needed(0.5, 0.4, image_se=0.1) > seeds_needed(0.5, 0.4)
    # 2.8 SE of test-image noise alone exceed 0.5 pp: no number of seeds gets there
    assert seeds_needed(0.5, 0.4, image_se=0.2) is None


def test_variance_components_recover_known_seed_image_and_residual_variances():
    rng = np.random.default_rng(7)
    seeds, images = 40, 3000
    x = 0.3 + rng.normal(0, 0.5, (seeds, 1)) + rng.normal(0, 0.8, (1, images)) + rng.normal(0, 1.2, (seeds, images))
    var_a, var_b, var_e = variance_components(x)
    assert var_a == pytest.approx(0.25, rel=0.35)  # 40 seeds: the seed variance is known to about 25%
    assert var_b == pytest.approx(0.64, rel=0.08)
    assert var_e == pytest.approx(1.44, rel=0.02)


# --- comparisons and the report's tables ------------------------------------------------------------

def test_comparisons_follow_the_variants_present():
    study = [c.label for c in comparisons(["original", "resize_x2", "sr_x2", "resize_x4", "sr_x4"])]
    assert study == ["SR − resize at x2", "SR − resize at x4", "SR − original at x2", "SR − original at x4",
                     "resize − original at x2", "resize − original at x4"]
    found = {c.label: (c.a, c.b) for c in comparisons(
        ["original", "nearest_x2", "resize_x2", "sr_x2", "sr_x2@swift-srgan", "weird-name"])}
    assert found["SR (swift-srgan) − resize at x2"] == ("sr_x2@swift-srgan", "resize_x2")
    assert found["nearest − original at x2"] == ("nearest_x2", "original")
    assert found["resize − nearest at x2"] == ("resize_x2", "nearest_x2")
    assert "SR − resize at x4" not in found
    assert order_variants(["sr_x4", "sr_x2@m", "original", "nearest_x2", "sr_x2", "resize_x2"]) == [
        "original", "nearest_x2", "resize_x2", "sr_x2", "sr_x2@m", "sr_x4"]


def test_differences_are_paired_by_seed_and_only_over_shared_seeds():
    records = [record("sr_x2", 0, 50.0, wrong=[0]), record("sr_x2", 1, 54.0, wrong=[0]),
               record("sr_x2", 2, 99.0),  # no resize_x2 partner: must not count
               record("resize_x2", 0, 49.0, wrong=[0, 1, 2]), record("resize_x2", 1, 51.0, wrong=[0, 1, 2])]
    row = differences_table(records).loc["SR − resize at x2"]
    assert row["seeds"] == 2
    # differences 1 and 3 pp: mean 2, t(0.975, df=1) = 12.7062 times s = sqrt(2) over sqrt(2)
    assert row["Δ final (pp)"] == "+2 ± 13"  # to the precision the interval supports: 2 significant digits of it
    # per seed, images 1 and 2 are right only for sr_x2: exact McNemar 2 vs 0 gives p = 0.5 per seed
    assert selection_table(records).loc["SR − resize at x2", "McNemar p per seed"] == "0.500, 0.500"
    # the same two images flip for both seeds: 2 of the 2**2 swaps reach |total| = 4
    assert row["permutation p"] == "0.500"


def test_one_seed_says_what_cannot_be_concluded():
    records = [record("sr_x4", 0, wrong=[1, 2]), record("resize_x4", 0, wrong=list(range(10, 30)))]
    assert results_table(records).loc["sr_x4", "final (%)"] == "98.00"
    (line,) = verdicts(records)
    assert line.startswith("SR − resize at x4: +18.0 pp [+10.0, +27.0]")  # decimals as the interval supports
    expected = sm_mcnemar([[78, 20], [2, 0]], exact=True).pvalue  # 20 images only A right, 2 only B right
    assert f"beyond test-image noise (McNemar p = {expected:#.3g})" in line
    assert "training noise is unmeasured" in line
    assert power_table(records).loc["SR − resize at x4", "seeds for 0.5 pp"] == "— (needs ≥ 2 seeds)"
    assert "One seed per variant" in " ".join(caveats(records))
    lonely = [record("original", 0, 30.0), record("sr_x2", 0, 40.0)]
    assert headline(lonely, lonely).startswith("sr_x2 has no resize_x2 run of the same seed among these runs")


def test_verdict_with_seeds_gives_interval_test_and_the_seeds_that_would_detect_half_a_point():
    rng = np.random.default_rng(0)
    records = random_records({"original": 0.3, "resize_x2": 0.2, "sr_x2": 0.19}, seeds=3, rng=rng)
    text = headline(records)
    assert text.startswith("- **SR − resize at x2**: ") and "with 3 seeds (permutation p over test images = " in text
    power = power_table(records).loc["SR − resize at x2"]
    needed = power["seeds for 0.5 pp"]
    assert needed == "> 1000" or int(needed) > 3  # 100 test images cannot resolve 0.5 pp with 3 seeds
    assert float(power["detectable, 80% power (pp)"]) > 0.5


def test_decomposition_splits_the_gain_into_more_and_better_pixels():
    rng = np.random.default_rng(1)
    study = {"original": 0.3, "resize_x2": 0.2, "sr_x2": 0.18}
    assert pixels_decomposition(random_records(study, 2, rng)).empty  # no controls, no decomposition
    records = random_records({**study, "nearest_x2": 0.25}, 2, rng)
    table = pixels_decomposition(records).loc["x2"]
    assert list(table.index) == ["more pixels", "better interpolation", "the SR model", "total"]
    steps = {step: float(table.loc[step, "Δ final (pp)"].replace("−", "-")) for step in table.index}
    assert steps["more pixels"] + steps["better interpolation"] + steps["the SR model"] == pytest.approx(
        steps["total"], abs=0.011)  # rounded to 2 decimals each


def test_missing_runs_are_named_with_the_command_that_makes_them(tmp_path):
    records = [record(v, s) for v in ("original", "resize_x2", "sr_x2", "resize_x4", "sr_x4") for s in (0, 1)]
    records = [r for r in records if (r["config"]["variant"], r["config"]["seed"]) != ("sr_x4", 1)]
    assert missing_runs(records) == [("sr_x4", 1)]
    note = [c for c in caveats(records) if c.startswith("Missing runs")]
    assert note == ["Missing runs (not in the tables or the comparisons they belong to): sr_x4 seed 1. Make them "
                    "with `srlib sweep --profile smoke --seeds 2` (finished runs are reused)."]
    with pytest.raises(SrlibError, match=r"no finished runs of profile 'smoke' under .*srlib sweep --profile smoke"):
        require_records(str(tmp_path), "smoke")
    paper = [{**r, "config": {**r["config"], "profile": "paper"}} for r in records]
    (note,) = [c for c in caveats(paper) if c.startswith("Missing runs")]
    assert "on a GPU: `srlib kit assemble --variants sr_x4`" in note


def test_per_class_accuracy_reads_the_predictions():
    table = per_class_accuracy([record("original", 0, 95.0, wrong=[0, 1, 95])])
    assert table.loc["original", "c0"] == pytest.approx(80.0)
    assert table.loc["original", "c9"] == pytest.approx(90.0)
    assert table.loc["original", "c5"] == pytest.approx(100.0)


def _write(out, r: dict, body: dict | None = None) -> None:
    folder = out / r["config"]["profile"] / r["config"]["variant"] / f"seed{r['config']['seed']}"
    folder.mkdir(parents=True)
    write_json(folder / "record.json", body if body is not None else {k: v for k, v in r.items() if k[0] != "_"})
    save_arrays(folder / "predictions.npz", {"predictions": r["_predictions"], "labels": r["_labels"]})


def test_records_whose_parts_disagree_are_named_and_left_out(tmp_path):
    from srlib.report.record_checks import load_checked

    good = record("original", 0, wrong=[3])
    _write(tmp_path, good)
    _write(tmp_path, record("original", 1, wrong=[4]))  # a second run with the same labels: they are the majority
    _write(tmp_path, record("sr_x2", 0, wrong=[3]), {**record("sr_x2", 0), "status": "running"})  # unfinished
    _write(tmp_path, record("resize_x2", 0, 50.0, wrong=[3]))  # its predictions score 99%
    late = record("sr_x4", 0, wrong=[3])
    _write(tmp_path, late, {k: v for k, v in {**late, "summary": {**late["summary"], "max_test_acc": 100.0}}.items()
                            if k[0] != "_"})
    short = record("resize_x4", 0, wrong=[3])
    _write(tmp_path, short, {k: v for k, v in {**short, "epochs": short["epochs"][:1]}.items() if k[0] != "_"})
    odd = record("nearest_x2", 0, wrong=[3])
    _write(tmp_path, odd, {k: v for k, v in {**odd, "schema": 99}.items() if k[0] != "_"})
    swapped = record("nearest_x4", 0, wrong=[3])
    swapped["_labels"] = np.roll(LABELS, 1)
    swapped["_predictions"] = swapped["_labels"].copy()
    swapped["_predictions"][3] = (swapped["_predictions"][3] + 1) % 10
    _write(tmp_path, swapped)
    broken = record("sr_x2", 1, wrong=[3])
    _write(tmp_path, broken, {k: v for k, v in {**broken, "summary": {**broken["summary"], "final_test_acc": math.nan}}
                              .items() if k[0] != "_"})
    (tmp_path / "smoke" / "sr_x2@swift-srgan" / "seed0").mkdir(parents=True)
    (tmp_path / "smoke" / "sr_x2@swift-srgan" / "seed0" / "record.json").write_text('{"schema": 2, "stat')

    records, rejected = load_checked(tmp_path, "smoke")
    assert [(r["config"]["variant"], r["config"]["seed"]) for r in records] == [("original", 0), ("original", 1)]
    assert int(np.sum(records[0]["_predictions"] != records[0]["_labels"])) == 1
    why = {p.split("/smoke/")[1].split("/")[0]: reason for p, reason in rejected}
    assert why.pop("sr_x2") == "its accuracies are not all finite numbers (NaN or inf)"  # seed 1; seed 0 unfinished
    assert why == {
        "resize_x2": "its predictions score 99.00% but its summary says 50.00% final",
        "sr_x4": "summary max_test_acc 100.00 disagrees with its per-epoch metrics (99.00)",
        "resize_x4": "it has 1 epochs of metrics but its config asks for 2; summary final_test_acc 99.00 disagrees "
                     "with its per-epoch metrics (98.00); summary max_test_acc 99.00 disagrees with its per-epoch "
                     "metrics (98.00); summary top5_mean_test_acc 98.50 disagrees with its per-epoch metrics (98.00)",
        "nearest_x2": "unknown record schema 99 (this report reads schema 2)",
        "nearest_x4": "its labels differ from the other runs' on the same test images",
        "sr_x2@swift-srgan": "unreadable (JSONDecodeError: truncated or not JSON)",
    }
    loaded = require_records(tmp_path, "smoke")
    assert len(loaded.rejected) == 7 and loaded.rejected[0][0].startswith("smoke/")  # relative: no machine's path


def test_records_on_two_datasets_are_kept_apart():
    from srlib.report import cost_report, reference, where_sr_helps
    from srlib.report.record_checks import select_dataset

    rng = np.random.default_rng(4)
    lossless = [{**r, "data": {**r["data"], "dataset": {**r["data"]["dataset"], "lossy": False}}}
                for r in random_records({"original": 0.3, "resize_x2": 0.2, "sr_x2": 0.18}, 2, rng)]
    jpeg = [record(v, s, wrong=list(range(k)), dataset="e" * 64) for s in (0, 1)
            for k, v in enumerate(("original", "resize_x2", "sr_x2"))]
    both = lossless + jpeg
    for pooled in (comparison_stats, results_table, per_class_accuracy, caveats, cost_report.cost_table,
                   reference.reference_table, where_sr_helps.disagreements):
        with pytest.raises(SrlibError, match="made on 2 datasets .* never pooled or compared"):
            pooled(both)
    chosen, others = select_dataset(both)
    assert chosen == lossless  # the first group of equal size in order: runs are never mixed into it
    assert others == {"dataset-eeeeeeee": 6}  # by key: what `make report DATASET=` takes
    chosen, others = select_dataset(both, "eee")
    assert chosen == jpeg and list(others) == ["dataset-dddddddd"]
    assert select_dataset(both, "dataset-eeeeeeee")[0] == jpeg  # the key the page names works too
    # each dataset's differences are its own: the JPEG runs differ by exactly one image per step
    (st,) = [st for st in comparison_stats(jpeg) if st.comparison.label == "SR − resize at x2"]
    assert st.mean == pytest.approx(-1.0)


# --- one run --------------------------------------------------------------------------------------

def test_run_summary_states_the_run_in_one_sentence():
    text = run_summary(record("sr_x2", 3, 61.234))
    assert text == (
        "**sr_x2**, seed 3, profile `smoke`: 64 px inputs, ResNet-18 width 8 (1,234,567 parameters), 2 epochs on "
        "2,000 training / 100 test images of dataset (lossy (JPEG) images, 10 classes, sha256 dddddddddddd). "
        "Max test accuracy 61.23% (epoch 2), mean of the 5 best epochs 60.73%, final 61.23%; 12 s of training on "
        "test cpu (fp32).")


def test_provenance_table_lists_config_and_identity_as_text():
    table = provenance_table(record("original", 0, 50.0))
    assert list(table.columns) == ["value"]
    assert table.loc["variant", "value"] == "original" and table.loc["seed", "value"] == "0"
    assert table.loc["upscaler", "value"] == "none"
    assert table.loc["weights_sha256", "value"] == "—"  # no weights for the 32 px data: said, not left blank
    assert table.loc["data_sha256", "value"] == "d" * 64
    assert (table.loc["commit", "value"], table.loc["dirty", "value"]) == ("abc", "False")
    assert table.loc["torch", "value"] == "2.9.0" and table.loc["device", "value"] == "test cpu"


def test_without_predictions_the_verdict_falls_back_to_the_t_interval_and_says_so():
    records = [record("sr_x2", s, final) for s, final in ((0, 60.0), (1, 62.0))]
    records += [record("resize_x2", s, final) for s, final in ((0, 59.0), (1, 60.0))]
    for r in records:
        del r["_predictions"], r["_labels"]
    (line,) = verdicts(records)
    # differences 1 and 2 pp: mean 1.5, t(0.975, 1) * 0.7071 / sqrt(2) = 6.353
    assert line == ("SR − resize at x2: +1.5 pp [−4.9, +7.9] (t-interval over seeds; without per-image "
                    "predictions test-image sampling is not included); not distinguishable from 0 with 2 seeds.")


def test_pixels_or_model_puts_each_sr_models_accuracy_gain_beside_its_psnr_gain():
    rng = np.random.default_rng(2)
    records = random_records({"original": 0.3, "resize_x2": 0.2, "sr_x2": 0.18, "sr_x2@swift-srgan": 0.22}, 2, rng)
    quality = {"results": [
        {"model": "dctlsa", "variant": "sr_x2", "scale": 2, "psnr_gain": 1.5, "psnr_gain_ci95": [1.4, 1.6],
         "ssim_gain": 0.03, "ssim_gain_ci95": [0.02, 0.04]},
        {"model": "swift-srgan", "scale": 2, "psnr_gain": -0.5, "psnr_gain_ci95": None, "ssim_gain": -0.01},
        {"model": "dctlsa", "variant": "sr_x4", "scale": 4, "psnr_gain": 0.8, "ssim_gain": 0.02}]}  # not trained
    table = pixels_or_model(records, quality).set_index("variant")
    assert sorted(table.index) == ["sr_x2", "sr_x2@swift-srgan"]
    assert table.loc["sr_x2", "model"] == "dctlsa" and table.loc["sr_x2@swift-srgan", "psnr_gain"] == -0.5
    stats = {st.comparison.a: st for st in comparison_stats(records) if st.comparison.b == "resize_x2"}
    assert table.loc["sr_x2", "accuracy_gain"] == pytest.approx(stats["sr_x2"].mean)
    assert (table.loc["sr_x2", "accuracy_low"], table.loc["sr_x2", "accuracy_high"]) == stats["sr_x2"].bootstrap


def test_a_model_replaced_by_sr_weights_is_no_variants_row():
    """`--sr-weights` stands for sr_x2: DCTLSA's record says `variant: None`, so only the checkpoint's row is
    sr_x2's (an older record without the key still falls back to the model's variant)."""
    records = random_records({"resize_x2": 0.2, "sr_x2": 0.18}, 2, np.random.default_rng(3))
    row = {"scale": 2, "psnr_gain_ci95": None, "ssim_gain": 0.0}
    quality = {"results": [{**row, "model": "dctlsa", "variant": None, "psnr_gain": 1.5},
                           {**row, "model": "mine_x2.pth", "variant": "sr_x2", "psnr_gain": 0.4}]}
    table = pixels_or_model(records, quality)
    assert list(table["variant"]) == ["sr_x2"] and list(table["psnr_gain"]) == [0.4]
    older = {"results": [{**row, "model": "dctlsa", "psnr_gain": 1.5}]}
    assert list(pixels_or_model(records, older)["psnr_gain"]) == [1.5]


def test_identical_predictions_give_no_conclusion_not_zero_power():
    """Runs that agree on every image (e.g. smoke runs predicting one class) carry no information:
    the verdict says so instead of reporting a 0.00 pp detectable difference."""
    same = [{**record("sr_x2", s, wrong=[0, 1, 2]), "input_px": 64} for s in range(2)]
    same += [{**record("resize_x2", s, wrong=[0, 1, 2]), "input_px": 64} for s in range(2)]
    (line,) = [v for v in verdicts(same) if v.startswith("SR − resize at x2")]
    assert "no conclusion" in line and "detectable" not in line


def _pair(seeds: int, wrong_sr: list[list[int]], wrong_resize: list[list[int]]) -> list[dict]:
    return [r for s in range(seeds) for r in (record("sr_x2", s, wrong=wrong_sr[s]),
                                               record("resize_x2", s, wrong=wrong_resize[s]))]


ALL = list(range(len(LABELS)))
DEGENERATE = {  # SR − resize runs whose noise estimates cannot carry a power figure, and the reason given
    "identical predictions": (_pair(2, [[0, 1, 2]] * 2, [[0, 1, 2]] * 2), "no conclusion"),
    "all wrong": (_pair(2, [ALL] * 2, [ALL] * 2), "no conclusion"),
    "all right": (_pair(2, [[]] * 2, [[]] * 2), "no conclusion"),
    "one disagreeing image": (_pair(2, [[], []], [[0], []]), "differ on 1 test-image prediction in all"),
    "one disagreeing image, one seed": (_pair(1, [[]], [[0]]), "differ on 1 test-image prediction in all"),
    "the same difference every seed": (_pair(2, [[], []], [list(range(20))] * 2),
                                       "every seed gave the same difference"),
    "every disagreement flips between seeds": (_pair(2, [[], list(range(20))], [list(range(20)), []]),
                                               "the test-image variance is estimated as 0"),
}


@pytest.mark.parametrize("case", DEGENERATE)
def test_degenerate_runs_give_no_power_figure_and_say_why(case):
    """Smoke runs that learned nothing used to claim that 2 seeds detect 0.5 pp (SE 0.00, SD 0.00)."""
    records, why = DEGENERATE[case]
    (line,) = headline_verdicts(records)
    assert why in line, line
    assert "detectable" not in line and "resolves" not in line and "seeds would" not in line, line
    row = power_table(records).loc["SR − resize at x2"]
    assert row["detectable, 80% power (pp)"] == "—" and row["seeds for 0.5 pp"] in ("—", "— (needs ≥ 2 seeds)")
    if why != "no conclusion":
        assert why in row["no figure because"]


def test_a_sweep_out_of_reach_says_which_noise_stands_in_the_way():
    """"Out of reach however many seeds" is said only when the test images' own noise is the limit."""
    from srlib.report.comparisons import Power

    records = random_records({"resize_x2": 0.2, "sr_x2": 0.19}, seeds=2, rng=np.random.default_rng(3))
    (st,) = comparison_stats(records)
    seeds_bound = dataclasses.replace(st, power=Power(40.0, 0.05, 200.0, None, 0.14))
    assert verdict(seeds_bound).endswith("0.5 pp would need more than 1,000 seeds (between-seed SD 40.00 pp).")
    images_bound = dataclasses.replace(st, power=Power(0.1, 0.5, 3.0, None, 1.4))
    assert verdict(images_bound).endswith(
        "0.5 pp is out of reach on 100 test images however many seeds (test-image SE 0.50 pp).")
    assert "no figure because" not in power_table([seeds_bound, images_bound])  # every figure given: no such column


def test_a_scaled_down_profile_sets_its_differences_beside_the_references():
    """The preview found resize x2 3.4 pp below original where the reference found it 1.57 pp above: the
    caveat says that differences, not only absolute numbers, may not carry, with both figures."""
    from srlib.data import CANONICAL_SHA256

    records = [{**r, "config": {**r["config"], "profile": "preview"}}
               for r in (record("original", 0, 39.6), record("resize_x2", 0, 36.2), record("original", 1, 40.0),
                         record("resize_x2", 1, 36.4))]
    records = [{**r, "data": {**r["data"], "dataset": {**r["data"]["dataset"], "content_sha256": CANONICAL_SHA256}}}
               for r in records]  # the reference's figures are set beside runs on CIFAR-10 only
    (note,) = [c for c in caveats(records) if c.startswith("Profile `preview` is a scaled-down")]
    assert "not only its absolute numbers but also its differences between variants may not carry" in note
    assert "resize − original at x2 −3.50 vs +1.57 pp" in note  # the mean of −3.4 and −3.6
    paper = [{**r, "config": {**r["config"], "profile": "paper"}} for r in records]
    assert not any("scaled-down" in c for c in caveats(paper))
