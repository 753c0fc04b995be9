"""The one cost model: how long training, evaluation and upscaling take, for the plan, the kit and the ETA.

A trained image costs `flops / flop_rate + overhead_s` seconds: the FLOPs of a training step (srlib.flops)
at a sustained rate, plus a fixed per-image cost that FLOPs do not explain (data path, kernel launches,
optimizer). Two numbers, because one does not fit: on the 2-core CPU a width-8 network runs ~21x faster
than width 64 although it has 64x fewer FLOPs. A test image costs a forward pass (the FLOP ratio, 1/3).

Where the numbers come from, best first: records of the same work on this kind of device (`epoch_seconds`
of `preflight`), a fit to any earlier records on this device (`fit_speed`), a rough rate per device
(`rough_speed`). While runs are going, `remaining_seconds` corrects an estimate with the epochs measured.
"""

from __future__ import annotations

from dataclasses import dataclass

from .flops import eval_flops_per_image, train_flops_per_image

# Rough speeds, for when nothing was measured on this machine. CPU: results/bench_cpu.json on 2 cores
# (23 img/s at 32 px width 64) and the preview profile (width 8 ~21x faster): 7.9e10 FLOP/s + 1.4 ms per
# image. GPU: the H200 window's CUDA-graph probe (14,414 img/s at 32 px, 8,557 at 64 px, width 64).
ROUGH_SPEED = {"cpu": (7.9e10, 1.4e-3), "cuda": (2.1e14, 5.4e-5)}
# Upscaling, images/s at 32 px input (CPU: results/bench_cpu.json; GPU: the H200 window's SR of 60,000
# images in 22 s), and bicubic / nearest; decoding a PNG/JPEG into the cache.
ROUGH_UPSCALE_RATE = {("sr", "cpu"): 12.0, ("sr", "cuda"): 2700.0, ("plain", "cpu"): 2000.0,
                      ("plain", "cuda"): 50_000.0}
ROUGH_DECODE_RATE = 2000.0
RUN_STARTUP_S = 20.0  # a run's process or kernel: import torch, CUDA context, load the cached arrays
ANALYSIS_S = 120.0  # the two analysis notebooks


@dataclass(frozen=True)
class Speed:
    flop_rate: float  # FLOP/s sustained by a training step
    overhead_s: float  # seconds per trained image that FLOPs do not explain
    basis: str  # where the numbers come from, in words

    def train_image_s(self, px: int, width: int) -> float:
        return train_flops_per_image(px, width) / self.flop_rate + self.overhead_s

    def images_per_s(self, px: int, width: int) -> float:
        return 1.0 / self.train_image_s(px, width)


def device_type(device: str | None) -> str:
    """'cuda' or 'cpu' for a device string; None means what this machine has."""
    if device:
        return "cuda" if str(device).startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rough_speed(device: str) -> Speed:
    rate, overhead = ROUGH_SPEED[device_type(device)]
    return Speed(rate, overhead, f"rough {device_type(device)} rate")


def eval_weight(px: int, width: int) -> float:
    """A test image's cost in trained images (a forward pass against forward + backward)."""
    return eval_flops_per_image(px, width) / train_flops_per_image(px, width)


def epoch_images(n_train: int, n_test: int, px: int, width: int) -> float:
    """One epoch (training and the test pass) in trained-image equivalents."""
    return n_train + eval_weight(px, width) * n_test


def epoch_seconds(n_train: int, n_test: int, px: int, width: int, speed: Speed) -> float:
    return epoch_images(n_train, n_test, px, width) * speed.train_image_s(px, width)


def epoch_seconds_at(images_per_s: float, n_train: int, n_test: int, px: int, width: int) -> float:
    """One epoch at a measured training speed (e.g. the GPU kit's probe at this input size)."""
    return epoch_images(n_train, n_test, px, width) / images_per_s


def run_seconds(epochs: int, epoch_s: float, upscale_s: float = 0.0) -> float:
    """A whole run: start-up, upscaling its inputs (when it builds the cache), its epochs."""
    return RUN_STARTUP_S + upscale_s + epochs * epoch_s


def upscale_seconds(images: int, kind: str, device: str) -> float:
    """`kind`: 'sr' or 'plain' (bicubic, nearest)."""
    return images / ROUGH_UPSCALE_RATE[(kind, device_type(device))]


def decode_seconds(images: int) -> float:
    return images / ROUGH_DECODE_RATE


def fit_speed(samples: list[tuple[float, float]], device: str) -> Speed:
    """The speed that explains measured (FLOPs per trained image, seconds per trained image) pairs.

    Least squares of seconds = flops / rate + overhead when the samples span two or more network sizes;
    with one size, the rough overhead is kept and the rate fitted. Falls back to the rough speed when the
    fit is not physical (rate or overhead <= 0)."""
    rough = rough_speed(device)
    samples = [(f, s) for f, s in samples if f > 0 and s > 0]
    if not samples:
        return rough
    flops = sorted({f for f, _ in samples})
    if len(flops) >= 2:
        n = len(samples)
        mean_f = sum(f for f, _ in samples) / n
        mean_s = sum(s for _, s in samples) / n
        var = sum((f - mean_f) ** 2 for f, _ in samples)
        slope = sum((f - mean_f) * (s - mean_s) for f, s in samples) / var
        overhead = mean_s - slope * mean_f
        if slope > 0 and overhead >= 0:
            return Speed(1.0 / slope, overhead, f"fitted to {n} earlier run(s) on this {device_type(device)}")
    excess = [s - rough.overhead_s for _, s in samples]
    if all(e > 0 for e in excess):
        rate = sum(f for f, _ in samples) / sum(excess)
        return Speed(rate, rough.overhead_s, f"fitted to {len(samples)} earlier run(s) on this {device_type(device)}")
    return rough


def remaining_seconds(estimate_s: float, elapsed_s: float, epochs_done: int | None = None,
                      epochs_total: int | None = None) -> float:
    """What a running run has left: from its measured epochs when it has finished any, else the estimate
    less the time it has been running (never below zero)."""
    if epochs_done and epochs_total:
        per_epoch = elapsed_s / epochs_done
        return max(0.0, per_epoch * (epochs_total - epochs_done))
    return max(0.0, estimate_s - elapsed_s)


def correction(pairs: list[tuple[float, float]]) -> float:
    """measured / estimated seconds over finished runs (1 when none): applied to the runs still queued, so an
    estimate that was off for this machine is off by less for what is left."""
    pairs = [(m, e) for m, e in pairs if m > 0 and e > 0]
    if not pairs:
        return 1.0
    return sum(m for m, _ in pairs) / sum(e for _, e in pairs)
