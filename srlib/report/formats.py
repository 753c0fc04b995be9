"""Numbers as the report writes them: one format per kind, to the precision the interval supports."""

from __future__ import annotations

import math

import pandas as pd


def decimals(half: float | None, default: int = 2) -> int:
    """Decimals that show two significant digits of an interval's half-width (0.42 -> 2, 2.3 -> 1, 13 -> 0);
    `default` without an interval."""
    if half is None or not math.isfinite(half) or half <= 0:
        return default
    return max(0, min(3, 1 - math.floor(math.log10(half))))


def fmt(mean: float, half: float | None, digits: int | None = None) -> str:
    d = decimals(half) if digits is None else digits
    return f"{mean:.{d}f}" if half is None else f"{mean:.{d}f} ± {half:.{d}f}"


def fmt_pp(x: float, digits: int = 2) -> str:
    """A difference in pp: signed (U+2212 minus, as in the labels)."""
    return f"{x:+.{digits}f}".replace("-", "−")


def fmt_diff(mean: float, half: float | None) -> str:
    """A mean difference (pp) and, with several seeds, its t half-width: "+1.0 ± 4.2"."""
    d = decimals(half)
    return fmt_pp(mean, d) + ("" if half is None else f" ± {half:.{d}f}")


def fmt_interval(interval: tuple[float, float] | None) -> str:
    if interval is None:
        return "—"
    d = decimals((interval[1] - interval[0]) / 2)
    return f"[{fmt_pp(interval[0], d)}, {fmt_pp(interval[1], d)}]"


def fmt_p(p: float | None) -> str:
    """A p-value to 3 significant digits, trailing zeros kept (0.500, 0.0123, 1.00e-05)."""
    return "—" if p is None or pd.isna(p) else f"{p:#.3g}"
