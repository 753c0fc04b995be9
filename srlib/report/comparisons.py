"""Which variants the report compares, and each comparison's statistics from the records: `compare` pairs
A and B by seed and by test image. Records of one dataset only: those of several are refused, never pooled.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy import stats

from ..config import Variant, variant_of
from ..statistics import (
    ALPHA,
    POWER,
    TARGET_PP,
    crossed_bootstrap,
    detectable_difference,
    mcnemar_p,
    mean_ci,
    seeds_needed,
    sign_flip_test,
    variance_components,
    why_no_power,
)
from .record_checks import one_dataset

METRICS = {"max_test_acc": "max", "top5_mean_test_acc": "top-5 mean", "final_test_acc": "final"}
HEADLINE_METRIC = "final_test_acc"  # not picked on the test set, hence unbiased; max/top-5 are for the reference

# The study's question, asked of every scale: does the SR model beat bicubic resizing at the same size?
HEADLINE_RULE = ("sr", "bicubic")
# Which differences the report computes: (A method, B method, what it measures). `comparisons()`
# expands the rules over the scales and SR models present; "none" is the original (the dataset's own size).
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    (*HEADLINE_RULE, "what the SR model adds over bicubic resizing at the same size"),
    ("sr", "none", "SR against the original"),
    ("bicubic", "none", "bicubic resizing against the original"),
    ("nearest", "none", "more pixels: no new information, more compute"),
    ("bicubic", "nearest", "better pixels: bicubic interpolation over pixel copies"),
)
METHOD_NAMES = {"none": "original", "nearest": "nearest", "bicubic": "resize", "sr": "SR"}  # in the report's order


# --- Variants and comparisons --------------------------------------------------------------------------

def _label(v: Variant) -> str:
    """How a page names a variant's method: "SR", "resize", ...; "SR (ditn-real)" for a named SR model."""
    name = METHOD_NAMES.get(v.kind, v.kind)
    return f"{name} ({v.sr_model})" if "@" in v.method else name


def _variant_key(name: str) -> tuple:
    v = variant_of(name)
    if v is None:
        return (1, math.inf, 0, name)
    rank = list(METHOD_NAMES).index(v.kind) if v.kind in METHOD_NAMES else len(METHOD_NAMES)
    return (0, v.scale, rank, v.method)  # "sr" (the default SR model) before "sr@<model>"


def order_variants(variants: Iterable[str]) -> list[str]:
    """Original first, then by scale: nearest, resize, SR (default model first); unknown names last."""
    return sorted(set(variants), key=_variant_key)


@dataclass(frozen=True)
class Comparison:
    a: str
    b: str
    label: str  # e.g. "SR − resize at x2"
    scale: int
    rule: tuple[str, str]  # the (A method, B method) of COMPARISONS it comes from


def comparisons(variants: Iterable[str]) -> list[Comparison]:
    """Every COMPARISONS rule over the scales and SR models present, in rule order, then scale."""
    named = [(name, v) for name in order_variants(variants) if (v := variant_of(name)) is not None]
    scales = sorted({v.scale for _, v in named if v.scale > 1})

    def at(kind: str, scale: int) -> list[tuple[str, Variant]]:
        return [(n, v) for n, v in named if v.kind == kind and (v.scale == scale or kind == "none")]

    found = []
    for kind_a, kind_b, _ in COMPARISONS:
        for scale in scales:
            baselines = [(n, v) for n, v in at(kind_b, scale) if "@" not in v.method]  # the default SR model's
            for a, va in at(kind_a, scale):
                for b, vb in baselines[:1]:
                    found.append(Comparison(a, b, f"{_label(va)} − {_label(vb)} at x{scale}", scale, (kind_a, kind_b)))
    return found


# --- One comparison's statistics from the records ------------------------------------------------------

@dataclass(frozen=True)
class Power:
    seed_sd: float | None  # between-seed SD of the per-seed difference (pp); None with one seed
    image_se: float | None  # SE of the difference from test-image sampling alone (pp); None without predictions
    detectable: float | None  # smallest difference found with 80% power by these seeds (pp)
    seeds_for_target: int | None  # seeds that would detect TARGET_PP; None = out of reach (or one seed)
    image_detectable: float | None  # the same from test-image noise alone (what one seed can at best show)
    why_not: str | None = None  # why the three figures above are withheld (degenerate noise estimates)


@dataclass(frozen=True)
class ComparisonStats:
    comparison: Comparison
    seeds: tuple[int, ...]
    deltas: dict[str, np.ndarray]  # metric -> per-seed A − B (pp), from the records' summaries
    images: int | None  # test images with per-image predictions for every run; None without them
    bootstrap: tuple[float, float] | None  # crossed bootstrap interval of the final-epoch difference (pp)
    permutation_p: float | None
    only_a_right: tuple[int, ...]  # per seed: images only A got right
    only_b_right: tuple[int, ...]
    mcnemar_p: tuple[float, ...]  # per seed, exact McNemar
    power: Power

    @property
    def mean(self) -> float:
        return float(self.deltas[HEADLINE_METRIC].mean())

    @property
    def t_half(self) -> float | None:
        return mean_ci(self.deltas[HEADLINE_METRIC])[1]

    @property
    def interval(self) -> tuple[float, float] | None:
        """The crossed bootstrap interval, or without predictions the t-interval over seeds (None: one seed)."""
        half = self.t_half
        if self.bootstrap is not None or half is None:
            return self.bootstrap
        return self.mean - half, self.mean + half

    @property
    def distinguishable(self) -> bool | None:
        """Whether `interval` excludes 0."""
        return None if self.interval is None else self.interval[0] > 0 or self.interval[1] < 0


def _correctness_differences(runs_a: list[dict], runs_b: list[dict]) -> np.ndarray | None:
    """(seeds, images) of A-right minus B-right, or None unless every run has predictions on one test set."""
    runs = runs_a + runs_b
    if not all("_predictions" in r for r in runs):
        return None
    labels = runs[0]["_labels"]
    if not all(np.array_equal(r["_labels"], labels) for r in runs):
        return None
    right = [np.asarray(r["_predictions"]) == labels for r in runs]
    n = len(runs_a)
    return np.stack([right[k].astype(np.int8) - right[n + k].astype(np.int8) for k in range(n)])


def compare(records: list[dict], comparison: Comparison) -> ComparisonStats | None:
    """The statistics of A − B over the seeds both have; None when they share no seed."""
    runs = {(r["config"]["variant"], r["config"]["seed"]): r for r in records}
    a, b = comparison.a, comparison.b
    seeds = tuple(sorted(s for (v, s) in runs if v == a and (b, s) in runs))
    if not seeds:
        return None
    deltas = {key: np.array([runs[(a, s)]["summary"][key] - runs[(b, s)]["summary"][key] for s in seeds], float)
              for key in METRICS}
    diff = _correctness_differences([runs[(a, s)] for s in seeds], [runs[(b, s)] for s in seeds])
    if diff is None:
        return ComparisonStats(comparison, seeds, deltas, None, None, None, (), (), (),
                               _power(deltas[HEADLINE_METRIC], None))
    only_a = tuple(int(np.sum(row == 1)) for row in diff)
    only_b = tuple(int(np.sum(row == -1)) for row in diff)
    mcnemar_ps = tuple(mcnemar_p(x, y) for x, y in zip(only_a, only_b, strict=True))
    low, high = crossed_bootstrap(diff)
    p, _ = sign_flip_test(diff)
    return ComparisonStats(comparison, seeds, deltas, diff.shape[1], (100 * low, 100 * high), p, only_a, only_b,
                           mcnemar_ps, _power(deltas[HEADLINE_METRIC], diff))


def _power(deltas: np.ndarray, diff: np.ndarray | None) -> Power:
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    image_se = None
    if diff is not None:
        if len(deltas) >= 2:
            image_var = variance_components(diff)[1]
        else:  # seed-by-image noise cannot be told apart from the image effect: an upper bound
            image_var = float(np.var(diff.astype(float), ddof=1))
        image_se = 100 * math.sqrt(image_var / diff.shape[1])
    seed_sd = float(np.std(deltas, ddof=1)) if len(deltas) >= 2 else None
    why = why_no_power(seed_sd, image_se, None if diff is None else int(np.count_nonzero(diff)))
    if why is not None:  # zeros or a handful of disagreements would give figures that mean nothing
        return Power(seed_sd, image_se, None, None, None, why)
    image_detectable = None if image_se is None else float(z * image_se)
    if seed_sd is None:
        return Power(None, image_se, None, None, image_detectable)
    se_images = image_se or 0.0
    return Power(seed_sd, image_se, detectable_difference(seed_sd, len(deltas), se_images),
                 seeds_needed(TARGET_PP, seed_sd, se_images), image_detectable)


def comparison_stats(records: list[dict], which: list[Comparison] | None = None) -> list[ComparisonStats]:
    """Every comparison (default: all that the variants present allow) with at least one shared seed."""
    which = comparisons({r["config"]["variant"] for r in one_dataset(records)}) if which is None else which
    return [st for c in which if (st := compare(records, c)) is not None]


Source = list[dict] | list[ComparisonStats]  # records, or their comparison_stats computed once


def select_stats(source: Source, which: list[Comparison] | None = None) -> list[ComparisonStats]:
    """The report's tables take records or, to resample only once per page, `comparison_stats(records)`."""
    if source and isinstance(source[0], ComparisonStats):
        return [st for st in source if which is None or st.comparison in which]
    return comparison_stats(source, which)


def select_rules(source: Source, rules: Iterable[tuple[str, str]]) -> list[Comparison]:
    if source and isinstance(source[0], ComparisonStats):
        return [st.comparison for st in source if st.comparison.rule in rules]
    return [c for c in comparisons({r["config"]["variant"] for r in source}) if c.rule in rules]

