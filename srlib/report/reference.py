"""The reference report beside ours: its numbers, ours with the same statistic, and whether they agree.

Ours are set beside the reference's only when made the same way (profile `paper`, canonical CIFAR-10 by
content hash); other CIFAR-10 runs are labelled as not comparable, with the reason; runs on other datasets get
no reference table.
"""

from __future__ import annotations

import pandas as pd

from ..config import variant_of
from ..statistics import LEVEL, mean_ci
from .comparisons import METRICS, comparisons, order_variants
from .formats import decimals, fmt, fmt_diff, fmt_pp
from .record_checks import CANONICAL_SHA256, JPEG_SHA256, dataset_label, dataset_sha, one_dataset

# The reference report (one seed per variant, picked on the test set): max test accuracy and mean of the
# 5 best epochs, in percent. Quoted for comparison; never produced by this code. The one place they live.
REFERENCE = {
    "original": (89.38, 89.206),
    "resize_x2": (90.95, 90.804),
    "sr_x2": (91.44, 91.352),
    "resize_x4": (90.83, 90.72),
    "sr_x4": (91.42, 91.38),
}
REFERENCE_METRICS = ("max_test_acc", "top5_mean_test_acc")  # the order of each REFERENCE tuple
REFERENCE_PROFILE = "paper"
CIFAR10_COPIES = (CANONICAL_SHA256, JPEG_SHA256)  # the data the reference's table is shown for (by content hash)


def on_cifar10(records: list[dict]) -> bool:
    """These runs are on CIFAR-10 (canonical or its known copy): only then has the reference a table here."""
    return bool(records) and dataset_sha(one_dataset(records)[0]) in CIFAR10_COPIES


def not_comparable(records: list[dict]) -> str | None:
    """Why these runs cannot be set beside the reference's numbers; None when they can."""
    if not records:
        return "no runs"
    first = one_dataset(records)[0]
    why = []
    if dataset_sha(first) != CANONICAL_SHA256:
        why.append(f"they were trained on {dataset_label(first['data']['dataset'])}")
    profiles = sorted({r["config"]["profile"] for r in records} - {REFERENCE_PROFILE})
    if profiles:
        why.append(f"profile {', '.join(profiles)} is not the reference's protocol ({REFERENCE_PROFILE})")
    return "; ".join(why) or None


def _ours(values: list[float], reference: float) -> tuple[str, str]:
    """Our mean ± t half-width over seeds, and whether the reference's value lies inside that interval."""
    mean, half = mean_ci(values)
    if half is None:
        return fmt(mean, None), "one seed: no interval"
    inside = mean - half <= reference <= mean + half
    return fmt(mean, half), "inside" if inside else f"outside ({fmt_pp(reference - mean, decimals(half))} pp)"


def reference_table(records: list[dict]) -> pd.DataFrame:
    """Per variant and statistic (max, top-5 mean): the reference's number, ours (mean ± 95% t half-width
    over seeds) and whether the reference falls inside our interval; ours only where comparable."""
    if not on_cifar10(records):
        return pd.DataFrame()
    if not_comparable(records):  # the reference's numbers alone; per variant, whether ours exist (not comparable)
        present = {r["config"]["variant"] for r in records}
        return pd.DataFrame([{"variant": v, **{f"reference {METRICS[k]} (%)": f"{x:g}" for k, x in
                                                zip(REFERENCE_METRICS, values, strict=True)},
                              "ours": "not comparable" if v in present else "not run"}
                             for v, values in REFERENCE.items()]).set_index("variant")
    rows = []
    for variant, values in REFERENCE.items():
        ours = [r for r in records if r["config"]["variant"] == variant]
        for key, reference in zip(REFERENCE_METRICS, values, strict=True):
            row = {"variant": variant, "statistic": METRICS[key], "reference (%)": f"{reference:g}",
                   "seeds": len(ours), "ours (%)": "—", f"reference in our {LEVEL:.0%} CI": "not run"}
            if ours:
                mine, inside = _ours([r["summary"][key] for r in ours], reference)
                row.update({"ours (%)": mine, f"reference in our {LEVEL:.0%} CI": inside})
            rows.append(row)
    return pd.DataFrame(rows).set_index(["variant", "statistic"])


def reference_differences(records: list[dict]) -> pd.DataFrame:
    """SR − resize of the top-5 mean per scale: the reference's (one seed) beside ours (paired by seed,
    mean ± t half-width) and whether the reference's lies inside our interval."""
    if not on_cifar10(records):
        return pd.DataFrame()
    why, key = not_comparable(records), "top5_mean_test_acc"
    rows = []
    for scale in sorted({variant_of(v).scale for v in REFERENCE if variant_of(v).scale > 1}):
        sr, resize = f"sr_x{scale}", f"resize_x{scale}"
        reference = REFERENCE[sr][1] - REFERENCE[resize][1]
        by_seed = {(r["config"]["variant"], r["config"]["seed"]): r["summary"][key] for r in records}
        seeds = sorted(s for v, s in by_seed if v == sr and (resize, s) in by_seed)
        row = {"comparison": f"SR − resize at x{scale}, top-5 mean", "reference (pp)": fmt_pp(reference, 3),
               "seeds": len(seeds), "ours (pp)": "—", f"reference in our {LEVEL:.0%} CI": "not run"}
        if seeds and why:
            row.update({"ours (pp)": "not comparable", f"reference in our {LEVEL:.0%} CI": "—"})
        elif seeds:
            mean, half = mean_ci([by_seed[(sr, s)] - by_seed[(resize, s)] for s in seeds])
            inside = "one seed: no interval" if half is None else (
                "inside" if mean - half <= reference <= mean + half else "outside")
            row.update({"ours (pp)": fmt_diff(mean, half), f"reference in our {LEVEL:.0%} CI": inside})
        rows.append(row)
    return pd.DataFrame(rows).set_index("comparison")


def scaled_differences(records: list[dict]) -> list[tuple[str, float, float]]:
    """(label, ours, the reference's) for every comparison whose two variants the reference report has: the
    difference A − B of the max test accuracy (the reference's statistic, pp), ours the mean over shared seeds."""
    if not on_cifar10(records):
        return []
    by_seed = {(r["config"]["variant"], r["config"]["seed"]): r["summary"]["max_test_acc"] for r in records}
    found = []
    for c in comparisons({v for v, _ in by_seed}):
        seeds = [s for v, s in by_seed if v == c.a and (c.b, s) in by_seed]
        if c.a in REFERENCE and c.b in REFERENCE and seeds:
            ours = sum(by_seed[(c.a, s)] - by_seed[(c.b, s)] for s in seeds) / len(seeds)
            found.append((c.label, ours, REFERENCE[c.a][0] - REFERENCE[c.b][0]))
    return found


def comparability_note(records: list[dict]) -> str:
    """One sentence: whether ours are set beside the reference's, and why not."""
    why = not_comparable(records)
    if why is None:
        return ("These runs use the reference's protocol on canonical CIFAR-10, so ours stand beside the "
                "reference's numbers with the same statistic.")
    if records and not on_cifar10(records):
        return (f"The reference report was made on canonical CIFAR-10; these runs are on "
                f"{dataset_label(records[0]['data']['dataset'])}, so its numbers have no place here.")
    variants = order_variants({r["config"]["variant"] for r in records})
    return (f"Our runs ({', '.join(variants)}) are not comparable with the reference: {why}. Their numbers are in "
            "the tables above; here only the reference's are shown. Runs of profile `paper` on canonical CIFAR-10 "
            "(`srlib kit assemble --parquet <a lossless CIFAR-10 Parquet copy>`; the book's Guide, \"Paper scale on "
            "a GPU\") would fill this table.")
