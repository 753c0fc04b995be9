"""Statistics on paired correctness arrays and on per-seed numbers: intervals, tests and power.

`diff` is a (seeds, images) array of +1 (only A right), -1 (only B right) and 0 (both agree). Every seed is
evaluated on the same test images, so neither seeds nor images are independent replications on their own:
`crossed_bootstrap` resamples the seeds and, once per replicate, the images every drawn seed shares (training
noise and test-set sampling together); `sign_flip_test` swaps A/B per image, the same swap for every seed
(test-image noise given the trained models; with one seed, the exact McNemar test). The sweep's power is given
only where `why_no_power` finds the noise estimates usable. Nothing here knows about records or pages.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # two-sided test level of the power analysis
POWER = 0.8
TARGET_PP = 0.5  # the reference's SR − resize gap (91.44 − 90.95 at x2), in pp
N_BOOT = 4000  # crossed bootstrap replicates
N_PERMUTATIONS = 10_000  # Monte Carlo sign flips when the exact distribution is too costly
EXACT_WORK = 5e7  # multiply-adds allowed for the exact permutation distribution
MAX_SEEDS = 1000  # "seeds needed" beyond this is reported as out of reach
RNG_SEED = 0  # the resampling is seeded so that a rerun of the report prints the same numbers
# Fewer (seed, image) disagreements than this leave the noise estimates too rough to plan seeds with
# (the usual floor for McNemar's b + c).
MIN_DISCORDANT = 10


def crossed_bootstrap(diff: np.ndarray, n_boot: int = N_BOOT, level: float = LEVEL,
                      rng: np.random.Generator | int | None = RNG_SEED) -> tuple[float, float]:
    """Percentile interval of the mean of `diff` (in its units), resampling seeds and images crossed (see the
    module docstring). Images are resampled as counts of their distinct columns (at most 3**seeds patterns):
    the same distribution, much faster."""
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

    A swap flips the sign of an image's total over the seeds, and images with equal |total| are interchangeable,
    so the null distribution is that of sum_m m * (2 K_m - n_m), K_m ~ Binomial(n_m, 1/2): exact by convolution
    when that is cheap, otherwise `n_permutations` Monte Carlo draws (p = (1 + hits) / (1 + draws))."""
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
    E[var of image means] = var_b + var_e / seeds, E[residual mean square] = var_e. Needs >= 2 seeds."""
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


def why_no_power(seed_sd: float | None, image_se: float | None, discordant: int | None) -> str | None:
    """Why no power or detectable-difference figure can be given from these noise estimates (a clause);
    None when one can. `seed_sd` / `image_se`: None where not estimated (one seed / no per-image predictions);
    `discordant`: (seed, image) pairs on which A and B differ in correctness (None without predictions)."""
    if discordant is not None and discordant < MIN_DISCORDANT:
        return (f"the two variants differ on {discordant} test-image prediction{'' if discordant == 1 else 's'} "
                f"in all, fewer than the {MIN_DISCORDANT} needed to estimate the noise")
    if seed_sd is not None and seed_sd <= 0:
        return "every seed gave the same difference, so the between-seed variance is estimated as 0"
    if image_se is not None and image_se <= 0:
        return ("the test-image variance is estimated as 0 (the variation between images is no larger than the "
                "seed-by-image noise)")
    return None


def t_test_power(effect: float, seed_sd: float, seeds: int, image_se: float = 0.0) -> float:
    """Power of the two-sided paired t-test (level ALPHA) over `seeds` seeds (df = seeds − 1) for a true difference
    `effect`, when each seed's difference has SD `seed_sd` and the shared test set adds `image_se`; with
    image_se = 0, the textbook one-sample t-test power (noncentral t) of statsmodels' TTestPower."""
    se = math.sqrt(seed_sd**2 / seeds + image_se**2)
    if se == 0:
        return 1.0 if effect != 0 else ALPHA
    df = seeds - 1
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    shift = abs(effect) / se
    # Far out, scipy's noncentral t returns NaN for the (vanishing) wrong-side tail.
    wrong_side = float(np.nan_to_num(stats.nct.cdf(-critical, df, shift), nan=0.0))
    return float(stats.nct.sf(critical, df, shift)) + wrong_side


def detectable_difference(seed_sd: float, seeds: int, image_se: float = 0.0) -> float:
    """The smallest true difference detected with probability POWER (two-sided ALPHA)."""
    se = math.sqrt(seed_sd**2 / seeds + image_se**2)
    if se == 0:
        return 0.0
    return float(optimize.brentq(lambda e: t_test_power(e, seed_sd, seeds, image_se) - POWER,
                                 1e-9 * se, 100 * se))  # power(100 SE) ~ 1 even at df = 1


def seeds_needed(effect: float, seed_sd: float, image_se: float = 0.0) -> int | None:
    """The fewest seeds (>= 2) whose t-test detects `effect` with POWER; None when even MAX_SEEDS
    would not (the test set's own sampling noise alone is too large)."""
    def enough(n: int) -> bool:
        return t_test_power(effect, seed_sd, n, image_se) >= POWER

    if not enough(MAX_SEEDS):
        return None
    candidates = range(2, MAX_SEEDS + 1)  # power grows with the seeds, so a bisection finds the first enough
    return candidates[bisect.bisect_left(candidates, True, key=enough)]


def mean_ci(values: Iterable[float], level: float = LEVEL) -> tuple[float, float | None]:
    """Mean and the half-width of a Student-t confidence interval (None with fewer than 2 values)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, None
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def mcnemar_p(only_a_right: int, only_b_right: int) -> float:
    """Exact McNemar test from the discordant counts: images only A got right, and only B."""
    n = only_a_right + only_b_right
    return 1.0 if n == 0 else float(stats.binomtest(only_a_right, n, 0.5).pvalue)
