"""Timing device work: the one clock for the bench and the GPU kit's probes."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, including the device work it queued (CUDA: events after a synchronize)."""
    if device.type != "cuda":
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    torch.cuda.synchronize(device)  # earlier queued kernels are not `fn`'s
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / 1000.0


def load_avg() -> list[float] | None:
    # Another process on the same cores lowers every number; the load average records it.
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None
