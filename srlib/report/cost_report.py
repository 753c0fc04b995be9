"""What it costs, the report's section: accuracy against training compute per variant, from the records
and `srlib.flops` (the planning cost model, which predicts seconds, is `srlib.cost`).

The one-time cost of making a variant's images (SR or resizing) is not in the training compute: the records'
measured preparation seconds stand beside it instead.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..config import STUDY_SCALES
from ..data import image_hw
from ..flops import train_flops_per_image
from ..statistics import LEVEL, mean_ci
from .comparisons import order_variants
from .formats import fmt, fmt_diff
from .record_checks import one_dataset
from .report_text import device_name

PFLOP = 1e15


def training_flops(record: dict) -> float:
    """FLOPs of one run's training: per image x images x epochs."""
    width = record.get("model", {}).get("width") or record["config"]["width"]
    images = record["data"]["train_subset"]["size"]
    return train_flops_per_image(record["input_px"], width) * images * len(record["epochs"])


def cost_frame(records: list[dict]) -> pd.DataFrame:
    """Numbers per variant (for the figure): compute (PFLOP), final accuracy mean and t half-width, measured
    training and preparation seconds, and the gain per doubling of compute over `original` (pp)."""
    one_dataset(records)
    by_seed = {(r["config"]["variant"], r["config"]["seed"]): r for r in records}
    rows = []
    for variant in order_variants(v for v, _ in by_seed):
        runs = [r for (v, _), r in sorted(by_seed.items()) if v == variant]
        compute = float(np.mean([training_flops(r) for r in runs]))
        accuracy, half = mean_ci([r["summary"]["final_test_acc"] for r in runs])
        gains = []
        for r in runs:
            base = by_seed.get(("original", r["config"]["seed"]))
            if base is not None and variant != "original":
                doublings = math.log2(training_flops(r) / training_flops(base))
                if doublings > 0:
                    gains.append((r["summary"]["final_test_acc"] - base["summary"]["final_test_acc"]) / doublings)
        gain, gain_half = mean_ci(gains) if gains else (math.nan, None)
        rows.append({"variant": variant, "px": runs[0]["input_px"], "seeds": len(runs), "pflop": compute / PFLOP,
                     "accuracy": accuracy, "accuracy_half": half, "gain_per_doubling": gain,
                     "gain_half": gain_half, "paired_seeds": len(gains),
                     "train_seconds": float(np.mean([r["summary"]["train_seconds"] for r in runs])),
                     "prepare_seconds": float(np.mean([r.get("upscale_seconds") or 0.0 for r in runs])),
                     "devices": ", ".join(sorted({device_name(r) for r in runs}))})
    return pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame()


def cost_table(records: list[dict]) -> pd.DataFrame:
    """`cost_frame` for the page; the device gets a column only when the runs' devices differ (`cost_caption`
    names it otherwise)."""
    frame = cost_frame(records)
    if frame.empty:
        return frame
    base = frame["pflop"].get("original")
    rows = {}
    for variant, f in frame.iterrows():
        gain = "—" if math.isnan(f["gain_per_doubling"]) else fmt_diff(f["gain_per_doubling"], _half(f["gain_half"]))
        rows[variant] = {
            "compute (PFLOP)": f"{f['pflop']:.3g}",
            "× original": "—" if base is None else f"{f['pflop'] / base:.1f}×",
            "final acc. (%)": fmt(f["accuracy"], _half(f["accuracy_half"])),
            "pp per doubling": gain,
            "train s": f"{f['train_seconds']:.0f}",
            "prep. s": f"{f['prepare_seconds']:.0f}",
        }
        if frame["devices"].nunique() > 1:
            rows[variant]["device"] = f["devices"]
    return pd.DataFrame(rows).T.rename_axis("variant")


def _half(x: float | None) -> float | None:
    """A half-width from a frame column: None (no interval, one seed) comes back from pandas as NaN."""
    return None if x is None or pd.isna(x) else float(x)


def cost_caption(records: list[dict]) -> str:
    devices = sorted({device_name(r) for r in records})
    where = f"all runs on {devices[0]}" if len(devices) == 1 else "devices per variant in the last column"
    return (f"Training compute per run, final-epoch accuracy (mean ± {LEVEL:.0%} t half-width over seeds), accuracy "
            f"gained over original per doubling of compute, and measured mean seconds of training and of preparing "
            f"the images; {where}.")


def compute_ratios(records: list[dict]) -> dict[int, float]:
    """Training compute at x`s` over the original, per image (same images and epochs), for this width."""
    width = records[0].get("model", {}).get("width") or records[0]["config"]["width"]
    px = _side(records)
    return {s: train_flops_per_image(px * s, width) / train_flops_per_image(px, width) for s in STUDY_SCALES}


def _side(records: list[dict]) -> int:
    """The width of the dataset's own images (the `original` variant's input): 32 for CIFAR-10."""
    return image_hw(records[0]["data"]["dataset"])[1]


def cost_sentence(records: list[dict]) -> str:
    """Plainly: what x2 and x4 cost over `original`, and where a doubling of compute bought the most."""
    ratios, px = compute_ratios(records), _side(records)
    text = (" and ".join(f"x{s} costs {r:.0f}× the training compute of `original`" for s, r in ratios.items())
            + f" (FLOPs of the ResNet-18 at {' and '.join(str(px * s) for s in ratios)} px over {px} px, "
              "same images and epochs); the SR or resizing of the images is a one-time cost on top (measured in "
              "“prep. s”).")
    frame = cost_frame(records)
    gains = frame.dropna(subset=["gain_per_doubling"]) if not frame.empty else frame
    if len(gains):
        each = "; ".join(f"{v} {fmt_diff(g['gain_per_doubling'], _half(g['gain_half']))}" for v, g in gains.iterrows())
        text += f" Final accuracy gained over `original` per doubling of compute (pp): {each}."
    else:
        text += " There is no `original` run of the same seed, so no gain per doubling of compute."
    return text
