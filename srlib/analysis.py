"""Pure functions from run records to tables: summaries, CIs over seeds, paired tests.

Nothing here trains or upscales. Accuracies are in percent, differences in percentage points.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from .config import STUDY_VARIANTS
from .store import load_arrays, read_json

# The reference report (one seed per variant, picked on the test set): max test accuracy and
# mean of the 5 best epochs, in percent. Quoted for comparison; never produced by this code.
REFERENCE = {
    "original": (89.38, 89.206),
    "resize_x2": (90.95, 90.804),
    "sr_x2": (91.44, 91.352),
    "resize_x4": (90.83, 90.72),
    "sr_x4": (91.42, 91.38),
}
COMPARISONS = [
    ("sr_x2", "resize_x2"), ("sr_x4", "resize_x4"),
    ("sr_x2", "original"), ("sr_x4", "original"),
    ("resize_x2", "original"), ("resize_x4", "original"),
]
METRICS = {"max_test_acc": "max", "top5_mean_test_acc": "top-5 mean", "final_test_acc": "final"}


def load_records(runs: str | os.PathLike, profile: str | None = None) -> list[dict]:
    """Every finished record under `runs` (optionally one profile), with its predictions attached."""
    pattern = f"{profile}/*/seed*/record.json" if profile else "*/*/seed*/record.json"
    records = []
    for path in sorted(Path(runs).glob(pattern)):
        record = read_json(path)
        if record.get("status") != "complete":
            continue
        predictions = path.parent / record.get("predictions", "predictions.npz")
        if predictions.is_file():
            arrays, _ = load_arrays(predictions)
            record = {**record, "_predictions": arrays["predictions"], "_labels": arrays["labels"]}
        records.append({**record, "_path": str(path)})
    return records


def order_variants(variants: Iterable[str]) -> list[str]:
    present = set(variants)
    return [v for v in STUDY_VARIANTS if v in present] + sorted(present - set(STUDY_VARIANTS))


def epochs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (variant, seed, epoch)."""
    rows = [{"variant": r["config"]["variant"], "seed": r["config"]["seed"], **e} for r in records for e in r["epochs"]]
    return pd.DataFrame(rows)


def runs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per run: its summary, cost and where it ran."""
    rows = []
    for r in records:
        s, device = r["summary"], r["provenance"]["device"]
        rows.append({
            "variant": r["config"]["variant"], "seed": r["config"]["seed"], "px": r["input_px"],
            **{k: s.get(k) for k in METRICS}, "best_epoch": s.get("best_epoch"),
            "train_seconds": s.get("train_seconds"), "images_per_s": s.get("mean_train_images_per_s"),
            "upscale_seconds": r.get("upscale_seconds"), "wall_seconds": r.get("wall_seconds"),
            "device": device.get("gpu") or device.get("cpu"), "precision": r.get("precision"),
        })
    return pd.DataFrame(rows)


def mean_ci(values: Iterable[float], level: float = 0.95) -> tuple[float, float | None]:
    """Mean and the half-width of a Student-t confidence interval (None with fewer than 2 values)."""
    x = np.asarray(list(values), dtype=float)
    if len(x) < 2:
        return float(x.mean()) if len(x) else math.nan, None
    half = stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x))
    return float(x.mean()), float(half)


def fmt(mean: float, half: float | None, digits: int = 2) -> str:
    if half is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"


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


def _by_seed(records: list[dict]) -> dict[tuple[str, int], dict]:
    return {(r["config"]["variant"], r["config"]["seed"]): r for r in records}


def differences_table(records: list[dict], comparisons: list[tuple[str, str]] = COMPARISONS) -> pd.DataFrame:
    """A − B per comparison ("A − B" rows): paired over seeds (mean ± 95% CI), and McNemar on final predictions.

    McNemar counts are pooled over seeds (each seed's final predictions on the same test images);
    the per-seed p-values are listed too, since pooled counts are not independent across seeds.
    """
    runs = _by_seed(records)
    rows = []
    for a, b in comparisons:
        seeds = sorted(s for (v, s) in runs if v == a and (b, s) in runs)
        if not seeds:
            continue
        row = {"comparison": f"{a} − {b}", "seeds": len(seeds)}
        for key, label in METRICS.items():
            row[f"Δ {label} (pp)"] = fmt(*mean_ci(runs[(a, s)]["summary"][key] - runs[(b, s)]["summary"][key]
                                                  for s in seeds))
        tests = [_mcnemar_runs(runs[(a, s)], runs[(b, s)]) for s in seeds]
        tests = [t for t in tests if t is not None]
        if tests:
            pooled = mcnemar_counts(sum(t["only_a_right"] for t in tests), sum(t["only_b_right"] for t in tests))
            row.update({"only A right": pooled["only_a_right"], "only B right": pooled["only_b_right"],
                        "McNemar p (pooled)": pooled["p_value"],
                        "McNemar p (per seed)": ", ".join(f"{t['p_value']:.3g}" for t in tests)})
        rows.append(row)
    return pd.DataFrame(rows).set_index("comparison") if rows else pd.DataFrame()


def mcnemar_counts(b: int, c: int) -> dict:
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"only_a_right": b, "only_b_right": c, "p_value": p}


def _mcnemar_runs(a: dict, b: dict) -> dict | None:
    if "_predictions" not in a or "_predictions" not in b or not np.array_equal(a["_labels"], b["_labels"]):
        return None
    return mcnemar(a["_predictions"] == a["_labels"], b["_predictions"] == b["_labels"])


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


def per_class_differences(records: list[dict], comparisons: list[tuple[str, str]] = COMPARISONS) -> pd.DataFrame:
    table = per_class_accuracy(records)
    rows = {f"{a} − {b}": table.loc[a] - table.loc[b] for a, b in comparisons if a in table.index and b in table.index}
    return pd.DataFrame(rows).T


def reference_table(records: list[dict]) -> pd.DataFrame:
    """The reference report's numbers beside ours (same metric definitions)."""
    ours = results_table(records)
    rows = []
    for variant, (ref_max, ref_top5) in REFERENCE.items():
        row = {"variant": variant, "reference max (%)": ref_max, "reference top-5 mean (%)": ref_top5}
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
        "data_path": dataset["path"],
        "lossy": bool(dataset.get("lossy")),
        "train_size": first["data"]["train_subset"]["size"],
        "test_size": first["data"]["test_subset"]["size"],
        "width": first["config"]["width"],
        "epochs": first["config"]["epochs"],
        "devices": sorted({r["provenance"]["device"].get("gpu") or r["provenance"]["device"]["cpu"]
                           for r in records}),
        "commits": sorted({str(r["provenance"]["git"].get("commit"))[:10] for r in records}),
    }


def headline(records: list[dict]) -> str:
    """One markdown paragraph: SR minus resize at x2 and x4, with CI and McNemar p, from the records."""
    table = differences_table(records, [("sr_x2", "resize_x2"), ("sr_x4", "resize_x4")])
    if table.empty:
        return "No paired SR/resize runs were found, so there is no headline comparison."
    parts = []
    for name, row in table.iterrows():
        seeds = int(row["seeds"])
        ci = "" if seeds > 1 else " (one seed: no confidence interval)"
        p = row.get("McNemar p (pooled)")
        p_text = f", McNemar p = {p:.3g}" if p is not None and not pd.isna(p) else ""
        parts.append(f"**{name}**: final-epoch accuracy {row['Δ final (pp)']} pp over {seeds} seed(s){ci}{p_text}")
    return "; ".join(parts) + "."
