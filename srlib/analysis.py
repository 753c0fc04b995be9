"""Pure functions from run records to tables and sentences: summaries, paired differences, their
statistics (intervals, tests, power) and the report's caveats.

Nothing here trains or upscales. Accuracies are in percent, differences in percentage points (pp).

Statistics of a difference A − B. Every seed is evaluated on the same test images, so neither the
seeds nor the images are independent replications on their own; per comparison the report gives
- the mean paired difference over seeds with its Student-t interval (training noise only),
- a crossed bootstrap interval: each replicate resamples the seeds and, once, the test images, and
  uses that one image sample for every sampled seed (training noise and test-set sampling together;
  `crossed_bootstrap`). The verdicts use this interval;
- a paired permutation test: under "no difference" A and B are exchangeable on each image, so A/B are
  swapped per image, the same swap for every seed (`sign_flip_test`). It is conditional on the trained
  models (it carries test-image noise, not training noise); with one seed it is the exact McNemar test;
- power: the smallest difference the sweep could detect (80% power, two-sided 5%) and the seeds that
  would detect `TARGET_PP`, from the between-seed SD of the difference and the test-image variance with
  the seed-by-image noise removed (`variance_components`, `t_test_power`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize, stats

from .config import STUDY_VARIANTS, VARIANT_SETS
from .errors import SrlibError
from .runs import load_records  # noqa: F401 -- re-exported: the notebooks call analysis.load_records
from .store import read_json
from .upscale import DEFAULT_SR_MODEL

# The reference report (one seed per variant, picked on the test set): max test accuracy and
# mean of the 5 best epochs, in percent. Quoted for comparison; never produced by this code.
REFERENCE = {
    "original": (89.38, 89.206),
    "resize_x2": (90.95, 90.804),
    "sr_x2": (91.44, 91.352),
    "resize_x4": (90.83, 90.72),
    "sr_x4": (91.42, 91.38),
}
METRICS = {"max_test_acc": "max", "top5_mean_test_acc": "top-5 mean", "final_test_acc": "final"}
HEADLINE_METRIC = "final_test_acc"  # not picked on the test set, hence unbiased; max/top-5 are for the reference
LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # two-sided test level of the power analysis
POWER = 0.8
TARGET_PP = 0.5  # the reference's SR − resize gap (91.44 − 90.95 at x2), in pp
N_BOOT = 4000  # crossed bootstrap replicates
N_PERMUTATIONS = 10_000  # Monte Carlo sign flips when the exact distribution is too costly
EXACT_WORK = 5e7  # multiply-adds allowed for the exact permutation distribution
MAX_SEEDS = 1000  # "seeds needed" beyond this is reported as out of reach
RNG_SEED = 0  # the resampling is seeded so that a rerun of the report prints the same numbers

# Which differences the report computes: (A method, B method, what it measures). `comparisons()`
# expands the rules over the scales and SR models present; "none" is the 32 px original.
COMPARISONS: tuple[tuple[str, str, str], ...] = (
    ("sr", "bicubic", "what the SR model adds over bicubic resizing at the same size"),
    ("sr", "none", "SR against the 32 px original"),
    ("bicubic", "none", "bicubic resizing against the 32 px original"),
    ("nearest", "none", "more pixels: no new information, more compute"),
    ("bicubic", "nearest", "better pixels: bicubic interpolation over pixel copies"),
)
METHOD_NAMES = {"none": "original", "nearest": "nearest", "bicubic": "resize", "sr": "SR"}
_NAME_PREFIXES = {"resize": "bicubic", "nearest": "nearest", "sr": "sr"}
_METHOD_ORDER = ("none", "nearest", "bicubic", "sr")


# ---------------------------------------------------------------------------------------------------
# Variants and comparisons


@dataclass(frozen=True)
class Arm:
    """A variant read from its name: `original`, `<kind>_x<scale>` or `<kind>_x<scale>@<model>`."""

    variant: str
    method: str  # "none", "nearest", "bicubic", "sr" (or an unknown kind, kept as written)
    scale: int
    model: str | None = None  # the SR model for `sr_x4@swift-srgan`; None = the default one

    @property
    def label(self) -> str:
        name = METHOD_NAMES.get(self.method, self.method)
        return f"{name} ({self.model})" if self.model else name


def parse_variant(variant: str) -> Arm | None:
    if variant == "original":
        return Arm(variant, "none", 1)
    match = re.fullmatch(r"([a-z]+)_x(\d+)(?:@(.+))?", variant)
    if match is None:
        return None
    return Arm(variant, _NAME_PREFIXES.get(match[1], match[1]), int(match[2]), match[3])


def _variant_key(variant: str) -> tuple:
    arm = parse_variant(variant)
    if arm is None:
        return (1, math.inf, 0, variant)
    rank = _METHOD_ORDER.index(arm.method) if arm.method in _METHOD_ORDER else len(_METHOD_ORDER)
    return (0, arm.scale, rank, arm.model or "")


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
    arms = [arm for v in order_variants(variants) if (arm := parse_variant(v)) is not None]
    scales = sorted({arm.scale for arm in arms if arm.scale > 1})

    def at(method: str, scale: int) -> list[Arm]:
        return [arm for arm in arms if arm.method == method and (arm.scale == scale or method == "none")]

    found = []
    for method_a, method_b, _ in COMPARISONS:
        for scale in scales:
            baselines = [arm for arm in at(method_b, scale) if arm.model is None]
            for a in at(method_a, scale):
                for b in baselines[:1]:
                    found.append(Comparison(a.variant, b.variant, f"{a.label} − {b.label} at x{scale}", scale,
                                            (method_a, method_b)))
    return found


# ---------------------------------------------------------------------------------------------------
# Statistics on arrays: `diff` is (seeds, images) of +1 (only A right), −1 (only B right), 0 (agree)


def crossed_bootstrap(diff: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL,
                      rng: np.random.Generator | int | None = RNG_SEED) -> tuple[float, float]:
    """Percentile interval of the mean of `diff` (in its units), resampling seeds and images crossed.

    Each replicate draws the seeds with replacement and, once, the images with replacement, and uses
    that one image sample for every drawn seed. Images are resampled as counts of their distinct
    columns (at most 3**seeds patterns), which is the same distribution and much faster.
    """
    rng = np.random.default_rng(rng)
    n_seeds, n_images = diff.shape
    patterns, counts = np.unique(np.asarray(diff).T, axis=0, return_counts=True)  # (P, seeds), (P,)
    estimates = np.empty(n_boot)
    for start in range(0, n_boot, 1000):  # chunks bound the memory when many patterns are present
        size = min(1000, n_boot - start)
        images = rng.multinomial(n_images, counts / n_images, size=size) / n_images  # (size, P)
        seeds = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=size) / n_seeds  # (size, seeds)
        estimates[start:start + size] = np.einsum("bs,ps,bp->b", seeds, patterns, images)
    low, high = np.quantile(estimates, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def sign_flip_test(diff: np.ndarray, n_permutations: int = N_PERMUTATIONS, exact_work: float = EXACT_WORK,
                   rng: np.random.Generator | int | None = RNG_SEED) -> tuple[float, bool]:
    """Two-sided paired permutation test of mean(diff) = 0: (p-value, whether it is exact).

    A/B are swapped per image, the same swap for every seed, i.e. each image's total over the seeds
    changes sign. Images with equal |total| are interchangeable, so the null distribution is that of
    sum_m m * (2 K_m - n_m) with K_m ~ Binomial(n_m, 1/2): exact by convolution when that is cheap,
    otherwise `n_permutations` Monte Carlo draws (p = (1 + hits) / (1 + draws)).
    """
    totals = np.asarray(diff, dtype=np.int64).sum(axis=0)
    observed = abs(int(totals.sum()))
    sizes, counts = np.unique(np.abs(totals[totals != 0]), return_counts=True)
    lengths = 2 * sizes * counts + 1
    work = float(np.sum(np.cumsum(lengths) * lengths))
    if work <= exact_work:
        return _exact_sign_flip_p(sizes, counts, observed), True
    rng = np.random.default_rng(rng)
    heads = rng.binomial(counts, 0.5, size=(n_permutations, len(counts)))
    null = ((2 * heads - counts) * sizes).sum(axis=1)
    return float((1 + np.sum(np.abs(null) >= observed)) / (1 + n_permutations)), False


def _exact_sign_flip_p(sizes: np.ndarray, counts: np.ndarray, observed: int) -> float:
    pmf = np.ones(1)  # over the integers -total..total, total = sum of sizes * counts
    for size, count in zip(sizes.tolist(), counts.tolist(), strict=True):
        term = np.zeros(2 * size * count + 1)
        term[::2 * size] = stats.binom.pmf(np.arange(count + 1), count, 0.5)
        pmf = np.convolve(pmf, term)
    values = np.arange(len(pmf)) - (len(pmf) - 1) // 2
    return float(min(1.0, pmf[np.abs(values) >= observed].sum()))


def variance_components(diff: np.ndarray) -> tuple[float, float, float]:
    """Method-of-moments variances of d[s, i] = delta + a_s + b_i + e_si: (seed a, image b, residual e).

    From the two-way table without replication: E[var of seed means] = var_a + var_e / images,
    E[var of image means] = var_b + var_e / seeds, E[residual mean square] = var_e. Needs >= 2 seeds.
    """
    x = np.asarray(diff, dtype=float)
    n_seeds, n_images = x.shape
    if n_seeds < 2 or n_images < 2:
        raise ValueError("variance components need at least two seeds and two images")
    seed_means, image_means = x.mean(axis=1), x.mean(axis=0)
    residual = x - seed_means[:, None] - image_means[None, :] + x.mean()
    var_e = float(np.sum(residual**2) / ((n_seeds - 1) * (n_images - 1)))
    var_a = max(float(seed_means.var(ddof=1)) - var_e / n_images, 0.0)
    var_b = max(float(image_means.var(ddof=1)) - var_e / n_seeds, 0.0)
    return var_a, var_b, var_e


def t_test_power(effect: float, seed_sd: float, seeds: int, image_se: float = 0.0, alpha: float = ALPHA) -> float:
    """Power of the two-sided paired t-test over `seeds` seeds (df = seeds − 1) for a true difference
    `effect`, when each seed's difference has SD `seed_sd` and the shared test set adds `image_se`.

    The standard error is sqrt(seed_sd**2 / seeds + image_se**2); with image_se = 0 this is the
    textbook one-sample t-test power (noncentral t), as statsmodels' TTestPower computes it.
    """
    se = math.sqrt(seed_sd**2 / seeds + image_se**2)
    if se == 0:
        return 1.0 if effect != 0 else alpha
    df = seeds - 1
    critical = stats.t.ppf(1 - alpha / 2, df)
    shift = abs(effect) / se
    # Far out, scipy's noncentral t returns NaN for the (vanishing) wrong-side tail.
    wrong_side = float(np.nan_to_num(stats.nct.cdf(-critical, df, shift), nan=0.0))
    return float(stats.nct.sf(critical, df, shift)) + wrong_side


def detectable_difference(seed_sd: float, seeds: int, image_se: float = 0.0, power: float = POWER,
                          alpha: float = ALPHA) -> float:
    """The smallest true difference detected with probability `power` (two-sided `alpha`)."""
    se = math.sqrt(seed_sd**2 / seeds + image_se**2)
    if se == 0:
        return 0.0
    return float(optimize.brentq(lambda e: t_test_power(e, seed_sd, seeds, image_se, alpha) - power,
                                 1e-9 * se, 100 * se))  # power(100 SE) ~ 1 even at df = 1


def seeds_needed(effect: float, seed_sd: float, image_se: float = 0.0, power: float = POWER,
                 alpha: float = ALPHA, max_seeds: int = MAX_SEEDS) -> int | None:
    """The fewest seeds (>= 2) whose t-test detects `effect` with `power`; None when even `max_seeds`
    would not (the test set's own sampling noise alone is too large)."""
    def enough(n: int) -> bool:
        return t_test_power(effect, seed_sd, n, image_se, alpha) >= power

    if not enough(max_seeds):
        return None
    low, high = 1, max_seeds  # power grows with the seeds: enough(high) holds, low is "not yet"
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


# ---------------------------------------------------------------------------------------------------
# One comparison's statistics from the records


@dataclass(frozen=True)
class Power:
    seed_sd: float | None  # between-seed SD of the per-seed difference (pp); None with one seed
    image_se: float | None  # SE of the difference from test-image sampling alone (pp); None without predictions
    detectable: float | None  # smallest difference found with 80% power by these seeds (pp)
    seeds_for_target: int | None  # seeds that would detect TARGET_PP; None = out of reach (or one seed)
    image_detectable: float | None  # the same from test-image noise alone (what one seed can at best show)


@dataclass(frozen=True)
class ComparisonStats:
    comparison: Comparison
    seeds: tuple[int, ...]
    deltas: dict[str, np.ndarray]  # metric -> per-seed A − B (pp), from the records' summaries
    images: int | None  # test images with per-image predictions for every run; None without them
    bootstrap: tuple[float, float] | None  # crossed bootstrap interval of the final-epoch difference (pp)
    permutation_p: float | None
    permutation_exact: bool
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
    def distinguishable(self) -> bool | None:
        """Whether the crossed interval (or, without predictions, the t-interval) excludes 0."""
        if self.bootstrap is not None:
            return self.bootstrap[0] > 0 or self.bootstrap[1] < 0
        half = self.t_half
        return None if half is None else abs(self.mean) > half


def _by_seed(records: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["config"]["variant"], r["config"]["seed"]): r for r in records}


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
    runs = _by_seed(records)
    a, b = comparison.a, comparison.b
    seeds = tuple(sorted(s for (v, s) in runs if v == a and (b, s) in runs))
    if not seeds:
        return None
    deltas = {key: np.array([runs[(a, s)]["summary"][key] - runs[(b, s)]["summary"][key] for s in seeds], float)
              for key in METRICS}
    diff = _correctness_differences([runs[(a, s)] for s in seeds], [runs[(b, s)] for s in seeds])
    if diff is None:
        return ComparisonStats(comparison, seeds, deltas, None, None, None, False, (), (), (),
                               _power(deltas[HEADLINE_METRIC], None))
    only_a = tuple(int(np.sum(row == 1)) for row in diff)
    only_b = tuple(int(np.sum(row == -1)) for row in diff)
    mcnemar_p = tuple(mcnemar_counts(x, y)["p_value"] for x, y in zip(only_a, only_b, strict=True))
    low, high = crossed_bootstrap(diff)
    p, exact = sign_flip_test(diff)
    return ComparisonStats(comparison, seeds, deltas, diff.shape[1], (100 * low, 100 * high), p, exact,
                           only_a, only_b, mcnemar_p, _power(deltas[HEADLINE_METRIC], diff))


def _power(deltas: np.ndarray, diff: np.ndarray | None) -> Power:
    z = stats.norm.ppf(1 - ALPHA / 2) + stats.norm.ppf(POWER)
    image_se = None
    if diff is not None:
        if len(deltas) >= 2:
            image_var = variance_components(diff)[1]
        else:  # seed-by-image noise cannot be told apart from the image effect: an upper bound
            image_var = float(np.var(diff.astype(float), ddof=1))
        image_se = 100 * math.sqrt(image_var / diff.shape[1])
    image_detectable = None if image_se is None else float(z * image_se)
    if len(deltas) < 2:
        return Power(None, image_se, None, None, image_detectable)
    seed_sd = float(np.std(deltas, ddof=1))
    se_images = image_se or 0.0
    return Power(seed_sd, image_se, detectable_difference(seed_sd, len(deltas), se_images),
                 seeds_needed(TARGET_PP, seed_sd, se_images), image_detectable)


def comparison_stats(records: list[dict], which: list[Comparison] | None = None) -> list[ComparisonStats]:
    """Every comparison (default: all that the variants present allow) with at least one shared seed."""
    which = comparisons({r["config"]["variant"] for r in records}) if which is None else which
    return [st for c in which if (st := compare(records, c)) is not None]


Source = list[dict] | list[ComparisonStats]  # records, or their comparison_stats computed once


def _stats(source: Source, which: list[Comparison] | None = None) -> list[ComparisonStats]:
    """The tables below take records or, to resample only once per page, `comparison_stats(records)`."""
    if source and isinstance(source[0], ComparisonStats):
        return [st for st in source if which is None or st.comparison in which]
    return comparison_stats(source, which)


def _rules(source: Source, rules: Iterable[tuple[str, str]]) -> list[Comparison]:
    if source and isinstance(source[0], ComparisonStats):
        return [st.comparison for st in source if st.comparison.rule in rules]
    return [c for c in comparisons({r["config"]["variant"] for r in source}) if c.rule in rules]


# ---------------------------------------------------------------------------------------------------
# Formatting: one format per kind of number


def fmt(mean: float, half: float | None, digits: int = 2) -> str:
    if half is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


def fmt_pp(x: float) -> str:
    """A difference in pp: signed, 2 decimals (U+2212 minus, as in the labels)."""
    return f"{x:+.2f}".replace("-", "−")


def fmt_diff(mean: float, half: float | None) -> str:
    """A mean difference (pp) and, with several seeds, its t half-width: "+1.00 ± 0.42"."""
    return fmt_pp(mean) + ("" if half is None else f" ± {half:.2f}")


def fmt_interval(interval: tuple[float, float] | None) -> str:
    return "—" if interval is None else f"[{fmt_pp(interval[0])}, {fmt_pp(interval[1])}]"


def fmt_p(p: float | None) -> str:
    """A p-value to 3 significant digits, trailing zeros kept (0.500, 0.0123, 1.00e-05)."""
    return "—" if p is None or pd.isna(p) else f"{p:#.3g}"


# ---------------------------------------------------------------------------------------------------
# Tables and sentences of the report


def differences_table(source: Source, which: list[Comparison] | None = None) -> pd.DataFrame:
    """A − B per comparison: the final-epoch difference with its intervals and tests, and the
    selection-biased metrics (max, top-5 mean) as mean ± 95% t half-width for the reference."""
    rows = []
    for st in _stats(source, which):
        c = st.comparison
        rows.append({
            "comparison": c.label, "variants": f"{c.a} − {c.b}", "seeds": len(st.seeds),
            "Δ final (pp)": fmt_diff(st.mean, st.t_half),
            f"{LEVEL:.0%} CI, seeds × images (pp)": fmt_interval(st.bootstrap),
            "permutation p": fmt_p(st.permutation_p),
            "McNemar p per seed": ", ".join(fmt_p(p) for p in st.mcnemar_p) or "—",
            **{f"Δ {METRICS[k]} (pp)": fmt_diff(*mean_ci(st.deltas[k]))
               for k in METRICS if k != HEADLINE_METRIC},
        })
    return pd.DataFrame(rows).set_index("comparison") if rows else pd.DataFrame()


def power_table(source: Source, which: list[Comparison] | None = None) -> pd.DataFrame:
    """Per comparison: the noise behind the final-epoch difference and what the sweep could detect."""
    rows = []
    for st in _stats(source, which):
        pw = st.power
        rows.append({
            "comparison": st.comparison.label, "seeds": len(st.seeds),
            "between-seed SD (pp)": _num(pw.seed_sd), "test-image SE (pp)": _num(pw.image_se),
            f"detectable, {POWER:.0%} power (pp)": _num(pw.detectable),
            f"seeds for {TARGET_PP:g} pp": _seeds_text(pw.seeds_for_target, len(st.seeds)),
        })
    return pd.DataFrame(rows).set_index("comparison") if rows else pd.DataFrame()


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _seeds_text(n: int | None, seeds: int) -> str:
    if seeds < 2:
        return "— (needs ≥ 2 seeds)"
    return f"> {MAX_SEEDS}" if n is None else str(n)


def verdict(st: ComparisonStats) -> str:
    """One sentence: the final-epoch difference, its interval, whether it is told from 0, and power."""
    return f"{st.comparison.label}: {_finding(st)}"


def _finding(st: ComparisonStats) -> str:
    n = len(st.seeds)
    head = f"{fmt_pp(st.mean)} pp"
    if st.bootstrap is None:  # summaries only, no per-image predictions
        if n < 2:
            return (f"{head} (one seed, no per-image predictions): no interval and no test, so this may be "
                    f"seed noise; run 3 or more seeds.")
        low, high = st.mean - st.t_half, st.mean + st.t_half
        told = "distinguishable from 0" if st.distinguishable else f"not distinguishable from 0 with {n} seeds"
        return (f"{head} [{fmt_pp(low)}, {fmt_pp(high)}] (t-interval over seeds; without per-image predictions "
                f"test-image sampling is not included); {told}.")
    if not sum(st.only_a_right) + sum(st.only_b_right):
        # No discordant image: every variance is 0, so intervals and power figures would be meaningless zeros.
        return (f"{head}: the two variants predicted the same class on every test image in every seed, so the "
                f"test images say nothing about the difference (e.g. runs too short to learn); no conclusion.")
    interval = fmt_interval(st.bootstrap)
    pw = st.power
    if n < 2:
        p = st.mcnemar_p[0]
        beyond = f"{'beyond' if p < ALPHA else 'within'} test-image noise (McNemar p = {fmt_p(p)})"
        return (f"{head} {interval} over the test images of one seed; {beyond}, but with one seed the training "
                f"noise is unmeasured, so it cannot be told from seed-to-seed variation; this test set alone "
                f"resolves about {pw.image_detectable:.2f} pp; run 3 or more seeds.")
    told = "distinguishable from 0" if st.distinguishable else "not distinguishable from 0"
    if pw.seeds_for_target is None:
        need = (f"{TARGET_PP:g} pp is out of reach on {st.images:,} test images however many seeds "
                f"(test-image SE {pw.image_se:.2f} pp)")
    elif pw.seeds_for_target <= n:
        need = f"{TARGET_PP:g} pp is detectable with these {n} seeds"
    else:
        need = f"{TARGET_PP:g} pp would need about {pw.seeds_for_target} seeds"
    return (f"{head} {interval}; {told} with {n} seeds (permutation p over test images = {fmt_p(st.permutation_p)}); "
            f"detectable with {POWER:.0%} power: {pw.detectable:.2f} pp; {need}.")


def verdicts(source: Source, which: list[Comparison] | None = None) -> list[str]:
    """One verdict sentence per comparison present (plain text: the sweep prints them)."""
    return [verdict(st) for st in _stats(source, which)]


NO_PAIRS = "No paired SR/resize runs were found, so there is no headline comparison."
NO_COMPARISONS = "No two variants share a seed among these runs, so there is nothing to compare."


def headline(source: Source) -> str:
    """A markdown list: the SR − resize verdicts at every scale and SR model (final-epoch accuracy)."""
    found = _stats(source, _rules(source, [("sr", "bicubic")]))
    if not found:
        return NO_PAIRS
    return "\n".join(f"- **{st.comparison.label}**: {_finding(st)}" for st in found)


CONTROLS_NOTE = ("The controls `nearest_x2` / `nearest_x4` are not among these runs, so more pixels and better "
                 "pixels cannot be told apart here; add them with `srlib sweep --variants controls` (finished "
                 "runs are reused).")


def pixels_decomposition(source: Source) -> pd.DataFrame:
    """More pixels vs better pixels, per scale with the controls present: nearest − original (more
    pixels, no new information), resize − nearest (bicubic interpolation), SR − resize (the SR model),
    and their sum SR − original; final-epoch differences with crossed bootstrap intervals."""
    steps = {("nearest", "none"): "more pixels", ("bicubic", "nearest"): "better interpolation",
             ("sr", "bicubic"): "the SR model", ("sr", "none"): "total"}
    found = _rules(source, steps)
    rows = []
    for scale in sorted({c.scale for c in found if c.rule == ("nearest", "none")}):
        at_scale = sorted((c for c in found if c.scale == scale), key=lambda c: list(steps).index(c.rule))
        for st in _stats(source, at_scale):
            rows.append({"scale": f"x{scale}", "step": steps[st.comparison.rule], "comparison": st.comparison.label,
                         "seeds": len(st.seeds), "Δ final (pp)": fmt_pp(st.mean),
                         f"{LEVEL:.0%} CI (pp)": fmt_interval(st.bootstrap)})
    return pd.DataFrame(rows).set_index(["scale", "step"]) if rows else pd.DataFrame()


def sr_model_gains(source: Source) -> pd.DataFrame:
    """Per SR model and scale: its final-epoch accuracy gain over bicubic resizing at the same size (pp),
    with the crossed bootstrap interval (numbers, for plotting against the model's PSNR/SSIM gain)."""
    rows = []
    for st in _stats(source, _rules(source, [("sr", "bicubic")])):
        arm = parse_variant(st.comparison.a)
        low, high = st.bootstrap if st.bootstrap is not None else (math.nan, math.nan)
        rows.append({"model": arm.model or DEFAULT_SR_MODEL, "scale": arm.scale, "variant": arm.variant,
                     "seeds": len(st.seeds), "accuracy_gain": st.mean, "accuracy_low": low, "accuracy_high": high})
    return pd.DataFrame(rows, columns=["model", "scale", "variant", "seeds", "accuracy_gain", "accuracy_low",
                                       "accuracy_high"])


NO_QUALITY = ("No SR variant among these runs has an SR-quality measurement (`srlib sr-quality`, written by "
              "the SR-quality page to `<out>/<profile>/sr_quality.json`), so there is nothing to plot.")


def load_quality(out: str | os.PathLike, profile: str) -> dict | None:
    """The SR-quality record the sweep's sr_quality notebook wrote for this profile, if any."""
    path = Path(out) / profile / "sr_quality.json"
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def pixels_or_model(source: Source, quality: dict | None) -> pd.DataFrame:
    """`sr_model_gains` beside each model's PSNR and SSIM gain over bicubic at the same scale, from an
    `srlib sr-quality` record (`results`: model, scale, psnr_gain, psnr_gain_ci95, ssim_gain, ...);
    empty without one."""
    def variant(r: dict) -> str:  # the variant trained with this model and scale
        model = "" if r["model"] == DEFAULT_SR_MODEL else f"@{r['model']}"
        return r.get("variant") or f"sr_x{r['scale']}{model}"

    columns = ["variant", "psnr_gain", "psnr_ci95", "ssim_gain", "ssim_ci95"]
    restored = pd.DataFrame([(variant(r), r["psnr_gain"], r.get("psnr_gain_ci95"), r["ssim_gain"],
                              r.get("ssim_gain_ci95")) for r in (quality or {}).get("results", [])], columns=columns)
    return sr_model_gains(source).merge(restored, on="variant", how="inner")


# ---------------------------------------------------------------------------------------------------
# Per-run tables


def _device_name(record: dict) -> str:
    device = record["provenance"]["device"]
    return device.get("gpu") or device.get("cpu") or "unknown device"


def run_summary(record: dict) -> str:
    """One markdown sentence on one run: what was trained, on what data, how well, how fast, where."""
    c, s, d = record["config"], record["summary"], record["data"]
    width = record.get("model", {}).get("width", c.get("width"))
    parameters = record.get("model", {}).get("parameters")
    model = f"ResNet-18 width {width}" + (f" ({parameters:,} parameters)" if parameters is not None else "")
    copy = "lossy JPEG copy" if d["dataset"].get("lossy") else "lossless"
    precision = f" ({record['precision']})" if record.get("precision") else ""
    return (
        f"**{c['variant']}**, seed {c['seed']}, profile `{c['profile']}`: {record['input_px']} px inputs, {model}, "
        f"{len(record['epochs'])} epochs on {d['train_subset']['size']:,} training / {d['test_subset']['size']:,} "
        f"test images of the {d['dataset']['source']} CIFAR-10 ({copy}). "
        f"Max test accuracy {s['max_test_acc']:.2f}% (epoch {s['best_epoch']}), mean of the 5 best epochs "
        f"{s['top5_mean_test_acc']:.2f}%, final {s['final_test_acc']:.2f}%; {s['train_seconds']:.0f} s of training "
        f"on {_device_name(record)}{precision}."
    )


def provenance_table(record: dict) -> pd.DataFrame:
    """One run's config and identity (upscaler, weights, data, code, torch) as a one-column table."""
    upscaler = record["data"].get("upscaler", {})
    provenance = record["provenance"]
    values = {**record["config"], "upscaler": upscaler.get("method"),
              "weights_sha256": upscaler.get("weights_sha256"),
              "data_sha256": record["data"]["dataset"].get("content_sha256"),
              "commit": provenance["git"].get("commit"), "dirty": provenance["git"].get("dirty"),
              "torch": provenance.get("versions", {}).get("torch"), "device": _device_name(record)}
    # Object dtype with str values: a mixed column (ints, bools, None, hashes) renders the same everywhere.
    return pd.Series({k: "—" if v is None else str(v) for k, v in values.items()}, name="value").to_frame()


def runs_provenance(records: list[dict]) -> pd.DataFrame:
    """One row per run: where its record is, the code, torch, device, when it finished."""
    rows = [{"run": f"{r['config']['variant']} seed {r['config']['seed']}",
             "commit": str(r["provenance"]["git"].get("commit"))[:10],
             "dirty": r["provenance"]["git"].get("dirty"),
             "torch": r["provenance"].get("versions", {}).get("torch"), "device": _device_name(r),
             "finished": r.get("finished"), "record": r.get("_path")} for r in _in_order(records)]
    return pd.DataFrame(rows).set_index("run")


def _in_order(records: list[dict]) -> list[dict]:
    rank = {v: k for k, v in enumerate(order_variants(r["config"]["variant"] for r in records))}
    return sorted(records, key=lambda r: (rank[r["config"]["variant"]], r["config"]["seed"]))


def epochs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (variant, seed, epoch)."""
    rows = [{"variant": r["config"]["variant"], "seed": r["config"]["seed"], **e} for r in records for e in r["epochs"]]
    return pd.DataFrame(rows)


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: its summary, cost and where it ran."""
    rows = []
    for r in records:
        s = r["summary"]
        rows.append({
            "variant": r["config"]["variant"], "seed": r["config"]["seed"], "px": r["input_px"],
            **{k: s.get(k) for k in METRICS}, "best_epoch": s.get("best_epoch"),
            "train_seconds": s.get("train_seconds"), "images_per_s": s.get("mean_train_images_per_s"),
            "upscale_seconds": r.get("upscale_seconds"), "wall_seconds": r.get("wall_seconds"),
            "device": _device_name(r), "precision": r.get("precision"),
        })
    return pd.DataFrame(rows)


def mean_ci(values: Iterable[float], level: float = LEVEL) -> tuple[float, float | None]:
    """Mean and the half-width of a Student-t confidence interval (None with fewer than 2 values)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, None
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def results_table(records: list[dict]) -> pd.DataFrame:
    """Per variant: seeds, and each summary metric as mean ± 95% CI over seeds."""
    runs = runs_frame(records)
    rows = []
    for variant in order_variants(runs["variant"]):
        sub = runs[runs["variant"] == variant]
        row = {"variant": variant, "px": int(sub["px"].iloc[0]), "seeds": len(sub)}
        for key, label in METRICS.items():
            row[f"{label} (%)"] = fmt(*mean_ci(sub[key]))
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict:
    """Exact McNemar test on paired per-image correctness: b = only A right, c = only B right."""
    return mcnemar_counts(int(np.sum(correct_a & ~correct_b)), int(np.sum(~correct_a & correct_b)))


def mcnemar_counts(b: int, c: int) -> dict:
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"only_a_right": b, "only_b_right": c, "p_value": p}


def per_class_accuracy(records: list[dict]) -> pd.DataFrame:
    """Final-epoch accuracy (%) per class and variant, averaged over seeds."""
    rows = []
    for r in records:
        if "_predictions" not in r:
            continue
        classes = r["data"]["dataset"]["classes"]
        for k, name in enumerate(classes):
            mask = r["_labels"] == k
            rows.append({"variant": r["config"]["variant"], "seed": r["config"]["seed"], "class": name,
                         "accuracy": 100.0 * float(np.mean(r["_predictions"][mask] == k)) if mask.any() else np.nan})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    table = frame.groupby(["variant", "class"], sort=False)["accuracy"].mean().unstack("class")
    return table.loc[order_variants(table.index)]


def per_class_differences(records: list[dict], which: list[Comparison] | None = None) -> pd.DataFrame:
    """A − B of the per-class accuracy (pp), one row per comparison."""
    table = per_class_accuracy(records)
    if table.empty:
        return table
    which = comparisons(table.index) if which is None else which
    rows = {c.label: table.loc[c.a] - table.loc[c.b] for c in which if c.a in table.index and c.b in table.index}
    return pd.DataFrame(rows).T


def reference_table(records: list[dict]) -> pd.DataFrame:
    """The reference report's numbers beside ours (same metric definitions), all to 2 decimals."""
    ours = results_table(records)
    rows = []
    for variant, (ref_max, ref_top5) in REFERENCE.items():
        row = {"variant": variant, "reference max (%)": f"{ref_max:.2f}", "reference top-5 mean (%)": f"{ref_top5:.2f}",
               "ours max (%)": "—", "ours top-5 mean (%)": "—"}
        if variant in ours.index:
            row.update({"ours max (%)": ours.loc[variant, "max (%)"],
                        "ours top-5 mean (%)": ours.loc[variant, "top-5 mean (%)"]})
        rows.append(row)
    return pd.DataFrame(rows).set_index("variant")


def cost_table(records: list[dict]) -> pd.DataFrame:
    runs = runs_frame(records)
    agg = runs.groupby("variant", sort=False).agg(
        px=("px", "first"), seeds=("seed", "count"), train_seconds=("train_seconds", "mean"),
        images_per_s=("images_per_s", "mean"), upscale_seconds=("upscale_seconds", "mean"),
        device=("device", "first"), precision=("precision", "first"))
    return agg.loc[order_variants(agg.index)].round(1)


# ---------------------------------------------------------------------------------------------------
# The study as a whole: facts, caveats, what is missing


def study_facts(records: list[dict]) -> dict:
    """What the prose of the report needs to say about these runs (data, profile, seeds, devices)."""
    first = records[0]
    dataset = first["data"]["dataset"]
    configs = {r["config"]["profile"] for r in records}
    return {
        "profiles": sorted(configs),
        "seeds": sorted({r["config"]["seed"] for r in records}),
        "variants": order_variants({r["config"]["variant"] for r in records}),
        "data_source": dataset["source"],
        "data_path": dataset.get("path") or dataset.get("url"),
        "lossy": bool(dataset.get("lossy")),
        "train_size": first["data"]["train_subset"]["size"],
        "test_size": first["data"]["test_subset"]["size"],
        "width": first["config"]["width"],
        "epochs": first["config"]["epochs"],
        "devices": sorted({_device_name(r) for r in records}),
        "commits": sorted({str(r["provenance"]["git"].get("commit"))[:10] for r in records}),
    }


def study_summary(records: list[dict]) -> str:
    """One markdown paragraph: which runs, what network and data, where and with which code."""
    f = study_facts(records)
    runs = f"{len(records)} run{'s' if len(records) > 1 else ''}"
    return (f"{runs} of profile {', '.join(f'`{p}`' for p in f['profiles'])}: variants "
            f"{', '.join(f['variants'])}; seeds {', '.join(map(str, f['seeds']))}; ResNet-18 width {f['width']}, "
            f"{f['epochs']} epochs, {f['train_size']:,} training and {f['test_size']:,} test images of the "
            f"{f['data_source']} CIFAR-10 at `{f['data_path']}`; devices: {', '.join(f['devices'])}; "
            f"code commit(s) {', '.join(f['commits'])}.")


def caveats(records: list[dict]) -> list[str]:
    """What a reader must keep in mind about these runs, one markdown sentence each."""
    f = study_facts(records)
    found = []
    if f["lossy"]:
        found.append("The data is a lossy JPEG (q75) copy of CIFAR-10: absolute accuracies are a few points "
                     "below canonical CIFAR-10; differences between variants trained on the same copy are comparable.")
    scaled = [p for p in f["profiles"] if p != "paper"]
    if scaled:
        found.append(f"Profile {', '.join(f'`{p}`' for p in scaled)} is a scaled-down protocol (narrower network, "
                     "subset, fewer epochs): its absolute numbers are not comparable with the reference report.")
    if len(f["seeds"]) < 2:
        found.append("One seed per variant: the intervals cover only the sampling of test images, not training "
                     "noise, so a difference may be seed-to-seed variation.")
    missing = missing_runs(records)
    if missing:
        found.append(missing_runs_note(records))
    found.append('"max" and "top-5 mean" are picked on the test set and therefore optimistic; '
                 "the final-epoch accuracy is the unbiased one, and the verdicts use it.")
    return found


def missing_runs(records: list[dict], variants: Iterable[str] = STUDY_VARIANTS) -> list[tuple[str, int]]:
    """(variant, seed) pairs of the study (or any variant present) that have no finished run for a seed
    some other variant has."""
    present = {(r["config"]["variant"], r["config"]["seed"]) for r in records}
    seeds = sorted({s for _, s in present})
    wanted = order_variants(set(variants) | {v for v, _ in present})
    return [(v, s) for v in wanted for s in seeds if (v, s) not in present]


def sweep_command(profile: str, seeds: int, variants: Iterable[str] = STUDY_VARIANTS) -> str:
    """The `srlib sweep` line that makes these runs (a named variant set where one matches)."""
    variants = order_variants(variants)
    named = [name for name, members in VARIANT_SETS.items() if set(members) == set(variants)]
    extra = "" if named[:1] == ["study"] else f" --variants {named[0] if named else ' '.join(variants)}"
    return f"srlib sweep --profile {profile} --seeds {seeds}{extra}"


def missing_runs_note(records: list[dict]) -> str:
    """A markdown sentence naming the missing runs and the command that makes them (finished runs are reused)."""
    missing = missing_runs(records)
    f = study_facts(records)
    names = ", ".join(f"{v} seed {s}" for v, s in missing)
    variants = set(f["variants"]) | set(STUDY_VARIANTS)
    where = (" on a GPU (or in a borrowed GPU window with `srlib kit`, README: \"Paper scale on a GPU\")"
             if f["profiles"][0] == "paper" else "")
    return (f"Missing runs (not in the tables or the comparisons they belong to): {names}. Make them with "
            f"`{sweep_command(f['profiles'][0], max(f['seeds']) + 1, variants)}`{where} (finished runs are reused).")


def require_records(out: str, profile: str) -> list[dict]:
    """The finished records of `profile` under `out`, or an error saying how to make them."""
    records = load_records(out, profile)
    if not records:
        unfinished = len(load_records(out, profile, complete_only=False, predictions=False))
        raise SrlibError(f"no finished runs of profile {profile!r} under {out}/{profile}"
                         f"{f' ({unfinished} unfinished: rerun to resume them)' if unfinished else ''}; make them with "
                         f"`{sweep_command(profile, 1)}` (or `make report PROFILE={profile}`), or point the "
                         "notebook's `out` parameter at the folder that holds them")
    return records
