"""Figures and tables for the report (matplotlib + seaborn, static images only: the book must build offline).

Sized for the book's text column (see `PAGE_WIDTH`), so text set at `FONT` points is shown at roughly that
size. Every function sets its font sizes explicitly instead of changing matplotlib's global settings.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .comparisons import ComparisonStats, order_variants

PAGE_WIDTH = 7.0  # inches: the book's text column at 100 dpi
FONT = 11  # points, labels and ticks (>= 10 pt as displayed)
SMALL = 10  # points, annotations and legends


def palette(variants: Sequence[str]) -> dict[str, tuple]:
    """One colour per variant, the same in every figure of a report (ordered as `order_variants`)."""
    order = order_variants(variants)
    colours = sns.color_palette("tab10" if len(order) <= 10 else "tab20", len(order))
    return dict(zip(order, colours, strict=True))


def _readable(ax: plt.Axes, title: str | None = None) -> None:
    ax.xaxis.label.set_size(FONT)
    ax.yaxis.label.set_size(FONT)
    ax.tick_params(labelsize=FONT)
    if title is not None:
        ax.set_title(title, fontsize=FONT)


def _legend_below(fig: plt.Figure, ax: plt.Axes, per_row: int, row_height: float, base: float = 0.01) -> None:
    """One legend for the whole figure under it (`ax`'s entries, `per_row` a row), the panels laid out above."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, base + row_height * math.ceil(len(labels) / per_row), 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(per_row, max(len(labels), 1)), fontsize=SMALL,
               frameon=False)


def _picture(ax: plt.Axes, image: np.ndarray, title: str | None = None) -> None:
    """One uint8 CHW image with nearest interpolation, so that each pixel stays a visible square."""
    ax.imshow(image.transpose(1, 2, 0), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title is not None:
        ax.set_title(title, fontsize=SMALL)


def curves(epochs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Test accuracy per epoch across the page, test and train loss side by side below it; with several
    seeds, the mean line and its 95% CI band. One legend for all three, under the figure."""
    order = order_variants(epochs["variant"].unique())
    colours = palette(order)
    fig = plt.figure(figsize=(PAGE_WIDTH, 7.2))
    grid = fig.add_gridspec(2, 2, height_ratios=[1.15, 1])
    panels = [(fig.add_subplot(grid[0, :]), "test_acc", "test accuracy (%)"),
              (fig.add_subplot(grid[1, 0]), "test_loss", "test loss"),
              (fig.add_subplot(grid[1, 1]), "train_loss", "train loss")]
    for ax, column, label in panels:
        sns.lineplot(data=epochs, x="epoch", y=column, hue="variant", hue_order=order, palette=colours,
                     errorbar=("ci", 95), marker="o", ax=ax, legend=ax is panels[0][0])
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if epochs["epoch"].nunique() <= 12:
            ax.set_xticks(sorted(epochs["epoch"].unique()))
        _readable(ax)
    panels[0][0].get_legend().remove()
    if title:
        fig.suptitle(title, fontsize=FONT + 1)
    _legend_below(fig, panels[0][0], 4, 0.03)
    return fig


def heatmap(table: pd.DataFrame, title: str, center: float | None = 0.0, fmt: str = ".1f") -> plt.Figure:
    """A rows x columns table of numbers, annotated, at the page's width. The numbers are written in the
    cells, so there is no colour bar: its room goes to the cells (the unit belongs in `title`)."""
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.42 * table.shape[0] + 1.6))
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="RdBu" if center is not None else "viridis",
                center=center, ax=ax, cbar=False, annot_kws={"fontsize": SMALL})
    ax.set_xlabel("")
    ax.set_ylabel("")
    _readable(ax, title)
    if table.columns.astype(str).str.len().max() > 4:
        ax.tick_params(axis="x", labelrotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    return fig


def differences(found: Sequence[ComparisonStats], title: str = "") -> plt.Figure:
    """Each comparison's final-epoch difference (pp) with its interval: the crossed bootstrap interval,
    or the t-interval over seeds when there are no per-image predictions; a line at 0."""
    labels = [f"{st.comparison.label} ({len(st.seeds)} seed{'s' if len(st.seeds) > 1 else ''})" for st in found]
    means = np.array([st.mean for st in found])
    lows, highs = np.array([st.interval or (st.mean, st.mean) for st in found], dtype=float).reshape(-1, 2).T
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 0.45 * len(labels) + 1.4))
    y = np.arange(len(labels))[::-1]
    ax.errorbar(means, y, xerr=[means - lows, highs - means], fmt="o", color="black", capsize=3)
    ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(y, labels)
    ax.set_xlabel("A − B, final-epoch accuracy (pp), 95% CI")
    ax.grid(axis="x", alpha=0.3)
    _readable(ax, title or None)
    fig.tight_layout()
    return fig


def gain_vs_quality(frame: pd.DataFrame) -> plt.Figure:
    """Is it the pixels or the model? Each SR model and scale (`analysis.pixels_or_model`): its accuracy gain
    over bicubic against its PSNR (left) and SSIM (right) gain over bicubic, with 95% intervals where known."""
    fig, axes = plt.subplots(1, 2, figsize=(PAGE_WIDTH, 3.8), sharey=True)
    colours = dict(zip(sorted(frame["model"].unique()), sns.color_palette("tab10"), strict=False))
    for ax, (column, label) in zip(axes, [("psnr", "PSNR gain over bicubic (dB)"),
                                          ("ssim", "SSIM gain over bicubic")], strict=True):
        for _, row in frame.iterrows():
            ci = row.get(f"{column}_ci95")
            xerr = None if ci is None or not isinstance(ci, (list, tuple)) else [
                [row[f"{column}_gain"] - ci[0]], [ci[1] - row[f"{column}_gain"]]]
            yerr = [[row["accuracy_gain"] - row["accuracy_low"]], [row["accuracy_high"] - row["accuracy_gain"]]]
            ax.errorbar(row[f"{column}_gain"], row["accuracy_gain"], xerr=xerr, yerr=yerr, fmt="o" if row["scale"] == 2
                        else "s", color=colours[row["model"]], capsize=3, label=f"{row['model']} x{row['scale']}")
        ax.axhline(0, color="grey", linewidth=1)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
        _readable(ax)
    axes[0].set_ylabel("accuracy gain over bicubic (pp)")
    _legend_below(fig, axes[0], 3, 0.06)
    return fig


def image_grid(columns: dict[str, np.ndarray]) -> plt.Figure:
    """Rows = images, columns = versions (uint8 NCHW), all shown at the same size with nearest
    interpolation so each pixel stays a visible square; as many columns as fit the page's width."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    cell = min(1.6, PAGE_WIDTH / len(names))  # inches per image
    fig, axes = plt.subplots(n, len(names), figsize=(cell * len(names), cell * n + 0.6), squeeze=False)
    for j, name in enumerate(names):
        # "sr_x4@swift-srgan" breaks at the "@" so that narrow columns keep their titles apart
        title = f"{name.replace('@', chr(10) + '@')}\n{columns[name].shape[-1]} px"
        for i in range(n):
            _picture(axes[i][j], columns[name][i], title if i == 0 else None)
    fig.tight_layout()
    return fig


def case_grid(columns: dict[str, np.ndarray], captions: list[str], title: str) -> plt.Figure:
    """Rows = test images, columns = the versions the classifier saw (uint8 NCHW, shown at one size with
    nearest interpolation), and each row's caption (true and predicted labels) beside it."""
    names, n = list(columns), len(captions)
    cell = 1.45  # inches per image: three images and a caption column fill the page's width
    fig, axes = plt.subplots(n, len(names) + 1, figsize=(PAGE_WIDTH, cell * n + 0.7), squeeze=False,
                             gridspec_kw={"width_ratios": [1] * len(names) + [1.5]})
    for i in range(n):
        for j, name in enumerate(names):
            _picture(axes[i][j], columns[name][i], name if i == 0 else None)
        axes[i][-1].axis("off")
        axes[i][-1].text(0.02, 0.5, captions[i], fontsize=SMALL, va="center", ha="left",
                         transform=axes[i][-1].transAxes)
    fig.suptitle(title, fontsize=FONT)
    fig.tight_layout()
    return fig


def cost_plot(frame: pd.DataFrame) -> plt.Figure:
    """Final accuracy (mean, 95% t-interval over seeds) against training compute (PFLOP, log scale), one
    point per variant (`srlib.cost_report.cost_frame`)."""
    colours = palette(list(frame.index))
    fig, ax = plt.subplots(figsize=(PAGE_WIDTH, 4.0))
    for variant, row in frame.iterrows():
        half = row["accuracy_half"]
        ax.errorbar(row["pflop"], row["accuracy"], yerr=None if pd.isna(half) else half, fmt="o", capsize=3,
                    color=colours[variant], label=variant)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training compute per run (PFLOP, log scale)")
    ax.set_ylabel("final test accuracy (%)")
    ax.grid(alpha=0.3)
    _readable(ax)
    _legend_below(fig, ax, 4, 0.05, base=0.04)
    return fig


@dataclass
class ScrollTable:
    """`frame` for the page: an HTML table that scrolls sideways inside the page when it is wider than the
    text column (instead of being cut off), every float to `digits` decimals, and the sentence `empty` instead
    of an empty table; plain text elsewhere."""

    frame: pd.DataFrame
    caption: str | None = None
    digits: int = 2
    empty: str = "Nothing to show for these runs."

    def _float(self, x: float) -> str:
        return f"{x:.{self.digits}f}"

    def _repr_html_(self) -> str:
        caption = f"<p><em>{html.escape(self.caption)}</em></p>" if self.caption else ""
        if self.frame.empty:
            return f"{caption}<p>{html.escape(self.empty)}</p>"
        body = self.frame.to_html(float_format=self._float, na_rep="—")
        return f'{caption}<div style="overflow-x: auto; max-width: 100%;">{body}</div>'

    def __repr__(self) -> str:
        text = self.empty if self.frame.empty else self.frame.to_string(float_format=self._float, na_rep="—")
        return (f"{self.caption}\n" if self.caption else "") + text


table = ScrollTable  # the name the notebooks call


def split_table(frame: pd.DataFrame, max_columns: int) -> list[ScrollTable]:
    """A table too wide for the text column as consecutive tables of at most `max_columns` columns each, every
    one with the index (so each reads on its own)."""
    return [table(frame.iloc[:, k:k + max_columns]) for k in range(0, max(frame.shape[1], 1), max_columns)]
