"""Progress for long work, readable in a terminal, a log file and an executed notebook."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable


def progress_bar(iterable=None, **kwargs):
    """A plain-text tqdm bar (widgets would need ipywidgets, and a CDN in the book).

    Where stderr is not a terminal (papermill kernels, CI logs) it redraws at most every 30 s, so
    a notebook keeps a few lines of progress instead of thousands."""
    from tqdm import tqdm

    if not sys.stderr.isatty():
        kwargs["mininterval"] = max(kwargs.get("mininterval", 0.1), 30.0)
    return tqdm(iterable, **kwargs)


class ImageMeter:
    """How far a phase over images is (e.g. `upscaling sr_x4`): a bar on a terminal; in a log, a line at each
    further 10 % or after 30 s, whichever comes first, never two within 5 s (so a handful of lines however
    long the phase), and a closing line with the rate. The sweep reads these lines (orchestration.reporter)."""

    EVERY_FRACTION, EVERY_S, GAP_S = 0.1, 30.0, 5.0

    def __init__(self, what: str, total: int, enabled: bool = True, log: Callable[[str], None] = print,
                 clock: Callable[[], float] = time.monotonic, live: bool | None = None) -> None:
        self.what, self.total, self.enabled, self.log, self.clock = what, total, enabled, log, clock
        self.done, self.started, self._shown = 0, clock(), 0
        self._shown_at = self.started
        live = sys.stderr.isatty() if live is None else live
        self.bar = progress_bar(total=total, desc=what, unit="img", mininterval=1) if enabled and live else None

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        further = self.done - self._shown >= self.EVERY_FRACTION * self.total or now - self._shown_at >= self.EVERY_S
        if self.enabled and further and now - self._shown_at >= self.GAP_S and self.done < self.total:
            self._shown_at, self._shown = now, self.done
            self.log(f"[srlib] {self.what}: {self.done:,}/{self.total:,} images, {self._rate(now)}")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.enabled and self.done:
            now = self.clock()
            self.log(f"[srlib] {self.what}: {self.done:,} images in {now - self.started:.0f} s, {self._rate(now)}")

    def _rate(self, now: float) -> str:
        rate = self.done / max(now - self.started, 1e-9)
        return f"{rate:,.0f} img/s" if rate >= 10 else f"{rate:.1f} img/s"
