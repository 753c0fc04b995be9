"""Where SR helps: the test images on which the SR-trained and the resize-trained models disagree.

The pictures come only from the dataset whose content hash the records name and from the runs' verified SR
cache or the weights whose sha256 the record names; without them the page names what is missing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..config import VARIANTS
from ..data import default_cache_dir, load_dataset, locate, stratified_subset
from ..errors import SrlibError
from ..store import load_arrays, sha256_array
from ..upscale import build_upscaler, default_weights_dir, local_checkpoint, sr_checkpoint, upscale, upscaled_cache_path
from . import figures
from .comparisons import HEADLINE_RULE, Comparison, select_rules
from .formats import fmt_pp
from .record_checks import dataset_label, dataset_sha, one_dataset
from .report_text import no_pairs_note

CASES_PER_SIDE = 4  # images shown each way: one row each, across distinct classes first


@dataclass(frozen=True)
class Disagreements:
    """SR (A) against resize (B) at one scale, over the seeds both have, on the same test images."""

    comparison: Comparison
    seeds: tuple[int, ...]
    classes: tuple[str, ...]
    labels: np.ndarray  # (images,)
    predictions_a: np.ndarray  # (seeds, images)
    predictions_b: np.ndarray
    runs_a: tuple[dict, ...]  # the records, seed by seed (their data and upscaler identity)

    @property
    def only_a(self) -> np.ndarray:
        """(seeds, images): right with SR (A), wrong with resize (B)."""
        return (self.predictions_a == self.labels) & (self.predictions_b != self.labels)

    @property
    def only_b(self) -> np.ndarray:
        return (self.predictions_b == self.labels) & (self.predictions_a != self.labels)


def disagreements(records: list[dict]) -> list[Disagreements]:
    """Every SR − resize comparison whose runs of some shared seed all have per-image predictions."""
    runs = {(r["config"]["variant"], r["config"]["seed"]): r for r in one_dataset(records)}
    found = []
    for c in select_rules(records, [HEADLINE_RULE]):
        seeds = tuple(sorted(s for (v, s) in runs if v == c.a and (c.b, s) in runs
                             and "_predictions" in runs[(c.a, s)] and "_predictions" in runs[(c.b, s)]))
        if not seeds:
            continue
        a, b = [runs[(c.a, s)] for s in seeds], [runs[(c.b, s)] for s in seeds]
        found.append(Disagreements(c, seeds, tuple(a[0]["data"]["dataset"]["classes"]), np.asarray(a[0]["_labels"]),
                                   np.stack([r["_predictions"] for r in a]), np.stack([r["_predictions"] for r in b]),
                                   tuple(a)))
    return found


def class_table(d: Disagreements) -> pd.DataFrame:
    """Per class: images right with SR only and with resize only (mean per seed), the net as pp of the
    class's images, and how many images are so in every seed."""
    seeds, only_a, only_b = len(d.seeds), d.only_a, d.only_b
    masks = {name: d.labels == k for k, name in enumerate(d.classes)} | {"all classes": np.ones(len(d.labels), bool)}
    rows = {name: {"images": int(mask.sum()), "SR only right": only_a[:, mask].sum() / seeds,
                   "resize only right": only_b[:, mask].sum() / seeds,
                   "net (pp)": 100 * (only_a[:, mask].sum() - only_b[:, mask].sum()) / seeds / max(int(mask.sum()), 1),
                   "SR only, all seeds": int(only_a[:, mask].all(axis=0).sum()),
                   "resize only, all seeds": int(only_b[:, mask].all(axis=0).sum())} for name, mask in masks.items()}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("class")


def summary(d: Disagreements) -> str:
    """One markdown sentence: how many images flip each way, and the classes with the largest nets."""
    table, seeds = class_table(d), len(d.seeds)
    total, net = table.loc["all classes"], table["net (pp)"].drop("all classes")
    head = f"**{d.comparison.label}** (per seed, mean over " + (f"{seeds} seeds)" if seeds > 1 else "one seed)")
    if not (total["SR only right"] or total["resize only right"]):
        return f"{head}: the two models got the same test images right in every seed; nothing tells them apart."
    best = (f"largest net for SR: {net.idxmax()} ({fmt_pp(net.max(), 1)} pp of its images)" if net.max() > 0
            else "no class has a net gain with SR")
    worst = (f"for resize: {net.idxmin()} ({fmt_pp(net.min(), 1)} pp)" if net.min() < 0
             else "no class has a net gain with resize")
    return (f"{head}: {total['SR only right']:.1f} test images right with {d.comparison.a} only and "
            f"{total['resize only right']:.1f} right with {d.comparison.b} only, of {len(d.labels):,}; in every seed: "
            f"{int(total['SR only, all seeds'])} and {int(total['resize only, all seeds'])}. The {best}; {worst}. "
            "Per-class counts are small: a class's net within a few images of 0 is noise.")


def clearest(d: Disagreements, per_side: int = CASES_PER_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """Image indices right with SR and wrong with resize in every seed, and the reverse: at most
    `per_side` each, one class after another (lowest index first) so that the rows show different classes."""
    return _spread(np.flatnonzero(d.only_a.all(axis=0)), d.labels, per_side), \
        _spread(np.flatnonzero(d.only_b.all(axis=0)), d.labels, per_side)


def _spread(indices: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    by_class = [list(indices[labels[indices] == k]) for k in np.unique(labels[indices])]
    picked = []
    while len(picked) < n and any(by_class):
        for members in by_class:
            if members and len(picked) < n:
                picked.append(members.pop(0))
    return np.array(sorted(picked), dtype=np.int64)


def case_captions(d: Disagreements, indices: np.ndarray) -> list[str]:
    """Per image: its true label and what each model predicted (the most frequent prediction over seeds)."""
    def said(predictions: np.ndarray, i: int) -> str:
        values, counts = np.unique(predictions[:, i], return_counts=True)
        best = int(values[np.argmax(counts)])
        share = f" ({counts.max()}/{len(d.seeds)} seeds)" if len(d.seeds) > 1 else ""
        return f"{d.classes[best]}{share}"

    return [f"true: {d.classes[int(d.labels[i])]}\nSR: {said(d.predictions_a, i)}\nresize: {said(d.predictions_b, i)}"
            for i in indices]


# --- The pictures: from the records' own dataset and SR weights, or not at all -------------------------

class PicturesUnavailable(SrlibError):
    """What is missing for the pictures, and the command or setting that provides it."""


def case_images(d: Disagreements, indices: np.ndarray, data: str | None = None,
                cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    """The images at `indices` as the classifier saw them: {"original <side> px", "bicubic ...", "SR ..."}
    (uint8 NCHW); PicturesUnavailable naming the missing input otherwise."""
    record = d.runs_a[0]
    identity = record["data"]["dataset"]
    fix = ("point SRLIB_DATA (or the notebook's `data`) at that dataset and rebuild the report (the same "
           "`srlib sweep` command: nothing retrains)")
    if locate(data)["kind"] == "download":
        raise PicturesUnavailable(f"no data is configured here (SRLIB_DATA is not set), and these runs were made "
                                  f"on {dataset_label(identity)}; {fix}")
    try:
        dataset = load_dataset(data, cache_dir=cache_dir)
    except SrlibError as exc:
        raise PicturesUnavailable(f"the data here could not be read ({exc}); {fix}") from exc
    if dataset.identity.get("content_sha256") != dataset_sha(record):
        raise PicturesUnavailable(f"the data here is {dataset_label(dataset.identity)}, but these runs were made on "
                                  f"{dataset_label(identity)}; {fix}")
    subset = stratified_subset(dataset.test_y, record["config"].get("test_size"))
    if sha256_array(subset) != record["data"]["test_subset"].get("indices_sha256") or not np.array_equal(
            dataset.test_y[subset], d.labels):
        raise PicturesUnavailable("the test subset drawn here differs from the records' (another srlib version?)")
    originals = dataset.test_x[subset]
    scale = d.comparison.scale
    bicubic = upscale(originals[indices], build_upscaler("bicubic", scale), progress=False)
    sr = _sr_images(d, originals, indices, cache_dir if cache_dir is not None else default_cache_dir())
    side = originals.shape[-1]  # the dataset's own width: 28 px data gives 56 / 112 px variants
    return {f"original {side} px": originals[indices], f"bicubic {side * scale} px": bicubic,
            f"SR {side * scale} px": sr}


def _sr_images(d: Disagreements, originals: np.ndarray, indices: np.ndarray, cache_dir) -> np.ndarray:
    """SR versions of the chosen images: from the runs' verified cache, else made with the verified weights."""
    record = d.runs_a[0]
    variant, scale = VARIANTS[d.comparison.a], d.comparison.scale
    wanted = record["data"].get("upscaler", {}).get("weights_sha256")
    if wanted is None:
        raise PicturesUnavailable(f"the record of {d.comparison.a} names no SR weights")
    cached = upscaled_cache_path(cache_dir, variant.method, scale, sha256_array(originals), wanted[:16])
    if cached.is_file():
        try:
            return load_arrays(cached)[0]["images"][indices]  # load_arrays verifies the file's seal
        except (OSError, ValueError, KeyError, SrlibError):
            pass  # a damaged cache is not used; the weights below remake the few images shown
    user = record["config"].get("sr_weights")
    if user is None and local_checkpoint(sr_checkpoint(variant.sr_model, scale), default_weights_dir()) is None:
        raise PicturesUnavailable(f"neither the upscaled cache of {d.comparison.a} nor its SR weights "
                                  f"({variant.sr_model} x{scale}) are here; set SRLIB_WEIGHTS_DIR to the folder "
                                  "that holds them and rebuild the report")
    try:
        upscaler = build_upscaler(variant.method, scale, weights=user)
    except SrlibError as exc:
        raise PicturesUnavailable(f"the SR weights of {d.comparison.a} could not be loaded ({exc})") from exc
    if upscaler.identity.get("weights_sha256") != wanted:
        raise PicturesUnavailable(f"the SR weights here are not the ones {d.comparison.a} was trained with "
                                  f"(sha256 {str(upscaler.identity.get('weights_sha256'))[:12]}, the record names "
                                  f"{wanted[:12]})")
    return upscale(originals[indices], upscaler, progress=False)


SIDES = ("right with SR, wrong with resize in every seed", "right with resize, wrong with SR in every seed")


def case_figures(d: Disagreements, data: str | None = None,
                 cache_dir: str | os.PathLike | None = None) -> tuple[list, str | None]:
    """The clearest cases both ways as picture grids, and a markdown note when one side has no such image
    or the pictures cannot be made here (naming the missing input and the command)."""
    made, notes = [], []
    for side, indices in zip(SIDES, clearest(d), strict=True):
        if len(indices) == 0:
            notes.append(f"No test image is {side} ({d.comparison.label}).")
            continue
        try:
            images = case_images(d, indices, data, cache_dir)
        except PicturesUnavailable as exc:
            return made, f"No pictures: {exc}."
        made.append(figures.case_grid(images, case_captions(d, indices), f"{d.comparison.label}:\n{side}"))
    return made, " ".join(notes) or None


def empty_note(records: list[dict]) -> str:
    """Why there is nothing to show here: no SR − resize pair, or a pair without per-image predictions."""
    if not select_rules(records, [HEADLINE_RULE]):
        return no_pairs_note(records)
    return ("The SR and resize runs of a shared seed lack per-image predictions (`predictions.npz` beside their "
            "records), so the images they disagree on are unknown; only runs trained again (in a fresh output "
            "folder) would record them.")
