"""Progress bars for long work, readable in a terminal, a log file and an executed notebook."""

from __future__ import annotations

import sys


def progress_bar(iterable=None, **kwargs):
    """A plain-text tqdm bar (widgets would need ipywidgets, and a CDN in the book).

    Where stderr is not a terminal (papermill kernels, CI logs) it redraws at most every 30 s, so
    a notebook keeps a few lines of progress instead of thousands.
    """
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), 30.0)
    return tqdm(iterable, **kwargs)
