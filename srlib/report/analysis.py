"""Pure functions from run records to the report's tables. Accuracies are in percent, differences in
percentage points (pp)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import variant_of
from ..statistics import LEVEL, MAX_SEEDS, POWER, TARGET_PP, mean_ci
from ..upscale import DEFAULT_SR_MODEL
from .comparisons import (
    HEADLINE_METRIC,
    HEADLINE_RULE,
    METRICS,
    Comparison,
    Source,
    comparisons,
    order_variants,
    select_rules,
    select_stats,
)
from .formats import fmt, fmt_diff, fmt_interval, fmt_p, fmt_pp
from .record_checks import dataset_key, one_dataset
from .report_text import device_name

# --- Per-run frames ------------------------------------------------------------------------------------

def epochs_frame(records: list[dict]) -> pd.DataFrame:
    """One row per (variant, seed, epoch)."""
    rows = [{"variant": r["config"]["variant"], "seed": r["config"]["seed"], **e} for r in records for e in r["epochs"]]
    return pd.DataFrame(rows)


def epochs_table(record: dict) -> pd.DataFrame:
    """One run's epochs for its page: the columns a reader compares, short headers with units."""
    formats = {"lr": ("lr", "{:g}"), "train_loss": ("train loss", "{:.3f}"), "train_acc": ("train acc. (%)", "{:.2f}"),
               "test_loss": ("test loss", "{:.3f}"), "test_acc": ("test acc. (%)", "{:.2f}"),
               "seconds": ("seconds", "{:.1f}"), "train_images_per_s": ("train img/s", "{:,.0f}")}
    frame = pd.DataFrame(record["epochs"]).set_index("epoch")
    return pd.DataFrame({name: frame[key].map(lambda x, f=form: "—" if pd.isna(x) else f.format(x))
                         for key, (name, form) in formats.items() if key in frame})


def results_table(records: list[dict]) -> pd.DataFrame:
    """Per variant: seeds, and each summary metric as mean ± 95% CI over seeds (one dataset)."""
    rows = []
    for variant in order_variants(r["config"]["variant"] for r in one_dataset(records)):
        runs = [r for r in records if r["config"]["variant"] == variant]
        rows.append({"variant": variant, "px": int(runs[0]["input_px"]), "seeds": len(runs),
                     **{f"{label} (%)": fmt(*mean_ci(r["summary"][k] for r in runs)) for k, label in METRICS.items()}})
    return pd.DataFrame(rows).set_index("variant")


# --- Differences ---------------------------------------------------------------------------------------

def differences_table(source: Source, which: list[Comparison] | None = None) -> pd.DataFrame:
    """A − B per comparison on the final epoch: mean over seeds ± t half-width, the crossed bootstrap
    interval (seeds × images) and the paired permutation test."""
    rows = [{"comparison": st.comparison.label, "seeds": len(st.seeds), "Δ final (pp)": fmt_diff(st.mean, st.t_half),
             f"{LEVEL:.0%} CI, seeds × images (pp)": fmt_interval(st.bootstrap),
             "permutation p": fmt_p(st.permutation_p)} for st in select_stats(source, which)]
    return _indexed(rows, "comparison")


def selection_table(source: Source, which: list[Comparison] | None = None) -> pd.DataFrame:
    """A − B per comparison: the exact McNemar test of each seed, and the selection-biased metrics (max,
    top-5 mean, picked on the test set) as mean ± t half-width, for the reference report."""
    rows = [{"comparison": st.comparison.label,
             "McNemar p per seed": ", ".join(fmt_p(p) for p in st.mcnemar_p) or "—",
             **{f"Δ {METRICS[k]} (pp)": fmt_diff(*mean_ci(st.deltas[k])) for k in METRICS if k != HEADLINE_METRIC}}
            for st in select_stats(source, which)]
    return _indexed(rows, "comparison")


def power_table(source: Source, which: list[Comparison] | None = None) -> pd.DataFrame:
    """Per comparison: the noise behind the final-epoch difference and what the sweep could detect; where the
    noise estimates cannot carry a power figure, no figure and why."""
    rows = []
    for st in select_stats(source, which):
        pw = st.power
        rows.append({
            "comparison": st.comparison.label, "seeds": len(st.seeds),
            "between-seed SD (pp)": _num(pw.seed_sd), "test-image SE (pp)": _num(pw.image_se),
            f"detectable, {POWER:.0%} power (pp)": _num(pw.detectable),
            f"seeds for {TARGET_PP:g} pp": "—" if pw.why_not else _seeds_text(pw.seeds_for_target, len(st.seeds)),
            "no figure because": pw.why_not or "",
        })
    frame = _indexed(rows, "comparison")
    return frame.drop(columns="no figure because") if rows and not frame["no figure because"].any() else frame


def _indexed(rows: list[dict], index: str | list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows).set_index(index) if rows else pd.DataFrame()


def _num(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}"


def _seeds_text(n: int | None, seeds: int) -> str:
    if seeds < 2:
        return "— (needs ≥ 2 seeds)"
    return f"> {MAX_SEEDS}" if n is None else str(n)


def pixels_decomposition(source: Source) -> pd.DataFrame:
    """More pixels vs better pixels, per scale with the controls present: nearest − original (more
    pixels, no new information), resize − nearest (bicubic interpolation), SR − resize (the SR model),
    and their sum SR − original; final-epoch differences with crossed bootstrap intervals."""
    steps = {("nearest", "none"): "more pixels", ("bicubic", "nearest"): "better interpolation",
             HEADLINE_RULE: "the SR model", ("sr", "none"): "total"}
    found = select_rules(source, steps)
    rows = []
    for scale in sorted({c.scale for c in found if c.rule == ("nearest", "none")}):
        at_scale = sorted((c for c in found if c.scale == scale), key=lambda c: list(steps).index(c.rule))
        for st in select_stats(source, at_scale):
            rows.append({"scale": f"x{scale}", "step": steps[st.comparison.rule], "comparison": st.comparison.label,
                         "seeds": len(st.seeds), "Δ final (pp)": fmt_pp(st.mean),
                         f"{LEVEL:.0%} CI (pp)": fmt_interval(st.bootstrap)})
    return _indexed(rows, ["scale", "step"])


def sr_model_gains(source: Source) -> pd.DataFrame:
    """Per SR model and scale: its final-epoch accuracy gain over bicubic resizing at the same size (pp),
    with the crossed bootstrap interval (numbers, for plotting against the model's PSNR/SSIM gain)."""
    rows = []
    for st in select_stats(source, select_rules(source, [HEADLINE_RULE])):
        low, high = st.bootstrap if st.bootstrap is not None else (math.nan, math.nan)
        c = st.comparison
        rows.append({"model": variant_of(c.a).sr_model, "scale": c.scale, "variant": c.a,
                     "seeds": len(st.seeds), "accuracy_gain": st.mean, "accuracy_low": low, "accuracy_high": high})
    return pd.DataFrame(rows, columns=["model", "scale", "variant", "seeds", "accuracy_gain", "accuracy_low",
                                       "accuracy_high"])


def pixels_or_model(source: Source, quality: dict | None) -> pd.DataFrame:
    """`sr_model_gains` beside each model's PSNR and SSIM gain over bicubic at the same scale, from an
    `srlib sr-quality` record (`results`: model, scale, psnr_gain, psnr_gain_ci95, ssim_gain, ...);
    empty without one."""
    def variant(r: dict) -> str | None:  # trained with this model and scale; None: no variant (--sr-weights won)
        model = "" if r["model"] == DEFAULT_SR_MODEL else f"@{r['model']}"
        return r["variant"] if "variant" in r else f"sr_x{r['scale']}{model}"  # an older record has no key

    columns = ["variant", "psnr_gain", "psnr_ci95", "ssim_gain", "ssim_ci95"]
    restored = pd.DataFrame([(variant(r), r["psnr_gain"], r.get("psnr_gain_ci95"), r["ssim_gain"],
                              r.get("ssim_gain_ci95")) for r in (quality or {}).get("results", [])], columns=columns)
    return sr_model_gains(source).merge(restored, on="variant", how="inner")


# --- Per-class effects ---------------------------------------------------------------------------------

def per_class_accuracy(records: list[dict]) -> pd.DataFrame:
    """Final-epoch accuracy (%) per class and variant, averaged over seeds."""
    rows = []
    for r in one_dataset(records):
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
    table = per_class_accuracy(one_dataset(records))
    if table.empty:
        return table
    which = comparisons(table.index) if which is None else which
    rows = {c.label: table.loc[c.a] - table.loc[c.b] for c in which if c.a in table.index and c.b in table.index}
    return pd.DataFrame(rows).T


# --- Provenance ----------------------------------------------------------------------------------------

def provenance_table(record: dict) -> pd.DataFrame:
    """One run's config and identity (upscaler, weights, data, code, torch) as a one-column table."""
    upscaler = record["data"].get("upscaler", {})
    provenance = record["provenance"]
    values = {**record["config"], "upscaler": upscaler.get("method"),
              "weights_sha256": upscaler.get("weights_sha256"),
              "data": dataset_key(record["data"]["dataset"]),
              "data_sha256": record["data"]["dataset"].get("content_sha256"),
              "commit": provenance["git"].get("commit"), "dirty": provenance["git"].get("dirty"),
              "torch": provenance.get("versions", {}).get("torch"), "device": device_name(record)}
    # Object dtype with str values: a mixed column (ints, bools, None, hashes) renders the same everywhere.
    return pd.Series({k: "—" if v is None else str(v) for k, v in values.items()}, name="value").to_frame()


def runs_provenance(records: list[dict]) -> pd.DataFrame:
    """One row per run: the code, torch, device, when it finished (from `<profile>/<dataset>/<variant>/seed<k>/`)."""
    rank = {v: k for k, v in enumerate(order_variants(r["config"]["variant"] for r in records))}
    rows = [{"run": f"{r['config']['variant']} seed {r['config']['seed']}",
             "commit": str(r["provenance"]["git"].get("commit"))[:10],
             "dirty": r["provenance"]["git"].get("dirty"),
             "torch": r["provenance"].get("versions", {}).get("torch"), "device": device_name(r),
             "finished": str(r.get("finished") or "—")[:16].replace("T", " ")}
            for r in sorted(records, key=lambda r: (rank[r["config"]["variant"]], r["config"]["seed"]))]
    return pd.DataFrame(rows).set_index("run")

