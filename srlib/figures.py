"""Figures for the report (matplotlib + seaborn, static images only: the book must build offline)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns

from .analysis import order_variants


def curves(epochs: pd.DataFrame, title: str = "") -> plt.Figure:
    """Test accuracy and losses per epoch; with several seeds, the mean line and its 95% CI band."""
    order = order_variants(epochs["variant"].unique())
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (column, label) in zip(axes, [("test_acc", "test accuracy (%)"), ("test_loss", "test loss"),
                                          ("train_loss", "train loss")], strict=True):
        sns.lineplot(data=epochs, x="epoch", y=column, hue="variant", hue_order=order, errorbar=("ci", 95),
                     marker="o", ax=ax)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def heatmap(table: pd.DataFrame, title: str, center: float | None = 0.0, fmt: str = ".1f") -> plt.Figure:
    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 3, 0.5 * table.shape[0] + 1.5))
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="RdBu" if center is not None else "viridis",
                center=center, ax=ax, cbar_kws={"label": "pp" if center is not None else "%"})
    ax.set_title(title)
    ax.set_xlabel("")
    ax.set_ylabel("")
    fig.tight_layout()
    return fig


def image_grid(columns: dict[str, np.ndarray], size_px: int = 128) -> plt.Figure:
    """Rows = images, columns = versions (uint8 NCHW), all shown at the same size with nearest
    interpolation so each pixel stays a visible square."""
    names = list(columns)
    n = len(next(iter(columns.values())))
    fig, axes = plt.subplots(n, len(names), figsize=(1.6 * len(names), 1.6 * n), squeeze=False)
    for j, name in enumerate(names):
        for i in range(n):
            ax = axes[i][j]
            ax.imshow(columns[name][i].transpose(1, 2, 0), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(f"{name}\n{columns[name].shape[-1]} px", fontsize=9)
    fig.tight_layout()
    return fig
