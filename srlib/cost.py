"""The one cost model: how long training, evaluation and upscaling take, for the plan, the kit and the ETA.

A trained image costs `flops / flop_rate + overhead_s` seconds: the FLOPs of a training step (srlib.flops)
at a sustained rate, plus a fixed per-image cost that FLOPs do not explain (data path, kernel launches,
optimizer). Two numbers, because one does not fit: on the 2-core CPU a width-8 network runs ~21x faster
than width 64 although it has 64x fewer FLOPs. A test image costs a forward pass (the FLOP ratio, 1/3).

Where the numbers come from, best first: what this sweep has measured (`Measured`, per phase: epoch seconds
per input size, upscaling rate per kind), records of the same work on this device (`estimate_run`), a fit to
any earlier records on this device (`fit_speed`), a rough rate per device (`rough_speed`). `finish_times`
lays runs out over slots. srlib.flops (which imports torch) is imported only when a run is estimated."""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import VARIANTS, TrainConfig

# Rough speeds, for when nothing was measured on this machine. CPU: the preview profile (width 8, the CPU
# default) on a fresh 2-core AVX2 machine (issue 25: 5.7 s per 32 px epoch, 66 s per 128 px epoch):
# 2.9e10 FLOP/s + 0.78 ms per image; width 64 runs ~2.7x faster per FLOP (results/bench_cpu.json), so a
# paper profile on a CPU is overestimated until measured. GPU: the H200 window's CUDA-graph probe (14,414
# img/s at 32 px, 8,557 at 64 px, width 64).
ROUGH_SPEED = {"cpu": (2.9e10, 7.8e-4), "cuda": (2.1e14, 5.4e-5)}
# Upscaling, images/s at 32 px input (CPU: results/bench_cpu.json; GPU: the H200 window's SR of 60,000
# images in 22 s), and bicubic / nearest; decoding a PNG/JPEG into the cache.
ROUGH_UPSCALE_RATE = {("sr", "cpu"): 12.0, ("sr", "cuda"): 2700.0, ("plain", "cpu"): 2000.0,
                      ("plain", "cuda"): 50_000.0}
ROUGH_DECODE_RATE = 2000.0
RUN_STARTUP_S = 20.0  # a run's process or kernel: import torch, CUDA context, load the cached arrays
ANALYSIS_S = 150.0  # the two analysis notebooks and the book (2.6 min on 2 CPU cores, issue 25)


@dataclass(frozen=True)
class Speed:
    flop_rate: float  # FLOP/s sustained by a training step
    overhead_s: float  # seconds per trained image that FLOPs do not explain
    basis: str  # where the numbers come from, in words

    def image_s(self, flops: float) -> float:
        """Seconds per trained image of `flops` training FLOPs."""
        return flops / self.flop_rate + self.overhead_s


@dataclass(frozen=True)
class DataShape:
    """What the data adds to a run's work: its images' (height, width) and split sizes (CIFAR-10's by default)."""

    hw: tuple[int, int] = (32, 32)
    train: int = 50_000
    test: int = 10_000

    def side(self, scale: int = 1) -> int:
        """The side of a square image of as many pixels, at `scale`: FLOPs grow with the pixels."""
        return round(scale * (self.hw[0] * self.hw[1]) ** 0.5)


def record_shape(record: dict) -> DataShape:
    """The shape of the data a record was trained on (records before srlib kept it: CIFAR-10's)."""
    from .data import image_hw

    dataset = record.get("data", {}).get("dataset", {})
    return DataShape(image_hw(dataset), dataset.get("train_count", 50_000), dataset.get("test_count", 10_000))


def device_type(device: str | None) -> str:
    """'cuda' or 'cpu' for a device string; None means what this machine has."""
    if device:
        return "cuda" if str(device).startswith("cuda") else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def rough_speed(device: str) -> Speed:
    rate, overhead = ROUGH_SPEED[device_type(device)]
    return Speed(rate, overhead, f"rough {device_type(device)} rate")


def epoch_images(n_train: int, n_test: int) -> float:
    """One epoch (training and the test pass) in trained-image equivalents: a test image costs a forward pass,
    a trained one forward + backward (the same ratio at every input size and width)."""
    from .flops import TRAIN_TO_FORWARD

    return n_train + n_test / TRAIN_TO_FORWARD


def fit_speed(samples: list[tuple[float, float]], device: str) -> Speed:
    """The speed that explains measured (FLOPs per trained image, seconds per trained image) pairs.

    Least squares of seconds = flops / rate + overhead when the samples span two or more network sizes;
    with one size, the rough overhead is kept and the rate fitted. Falls back to the rough speed when the
    fit is not physical (rate or overhead <= 0)."""
    rough = rough_speed(device)
    samples = [(f, s) for f, s in samples if f > 0 and s > 0]
    if not samples:
        return rough
    basis = f"fitted to {len(samples)} earlier run(s) on this {device_type(device)}"
    if len({f for f, _ in samples}) >= 2:
        slope, overhead = statistics.linear_regression([f for f, _ in samples], [s for _, s in samples])
        if slope > 0 and overhead >= 0:
            return Speed(1.0 / slope, overhead, basis)
    excess = [s - rough.overhead_s for _, s in samples]
    if all(e > 0 for e in excess):
        return Speed(sum(f for f, _ in samples) / sum(excess), rough.overhead_s, basis)
    return rough


# --- records -> samples -> estimates -----------------------------------------------------------------------

def split_sizes(config: TrainConfig, shape: DataShape = DataShape()) -> tuple[int, int]:
    return config.train_size or shape.train, config.test_size or shape.test


def same_work(record: dict, config: TrainConfig, shape: DataShape = DataShape()) -> bool:
    """Same variant, data shape and the settings that decide a run's speed (seeds and epochs may differ)."""
    recorded = record.get("config", {})
    return record_shape(record) == shape and all(
        recorded.get(k) == getattr(config, k) for k in ("variant", "profile", "width", "batch_size", "train_size",
                                                        "test_size"))


def record_device(record: dict) -> str:
    return record.get("provenance", {}).get("device", {}).get("type", "cpu")


def measured_epoch_s(record: dict) -> float:
    wall, upscale = record.get("wall_seconds"), record.get("upscale_seconds") or 0.0
    if wall:  # wall time covers evaluation and loading too, which the per-epoch seconds leave out
        return max(wall - upscale, 0.0) / len(record["epochs"])
    return statistics.mean(e["seconds"] for e in record["epochs"])


def _sample(record: dict) -> tuple[float, float] | None:
    """(training FLOPs, seconds) per trained-image equivalent of a finished record, for fitting the speed."""
    from .flops import train_flops_per_image

    config, shape = record.get("config", {}), record_shape(record)
    try:
        px, width = shape.side(VARIANTS[config["variant"]].scale), int(config["width"])
        n_train, n_test = config.get("train_size") or shape.train, config.get("test_size") or shape.test
        seconds = measured_epoch_s(record) / epoch_images(n_train, n_test)
    except (KeyError, TypeError, ValueError, ZeroDivisionError, statistics.StatisticsError):
        return None
    return train_flops_per_image(px, width), seconds


@dataclass(frozen=True)
class RunEstimate:
    """One run's work, phase by phase, and the seconds each phase is expected to take on this machine."""

    flops: float  # training FLOPs per image (input size and width): runs of one size share a measured epoch
    epoch_images: float  # one epoch in trained-image equivalents (epoch_images)
    epochs: int
    epoch_s: float  # seconds per epoch, evaluation included
    basis: str  # where epoch_s comes from, in words
    measured_here: bool  # epoch_s rests on records of this machine (not only on the rough rate)
    upscale_images: int = 0  # images the run upscales (0: none, or cached already)
    upscale_kind: str = "none"  # 'sr' or 'plain': runs of one kind share a measured rate
    upscale_rate: float = 1.0  # images/s
    upscale_basis: str = ""
    startup_s: float = RUN_STARTUP_S
    device: str = "cpu"  # 'cpu' or 'cuda'

    @property
    def upscale_s(self) -> float:
        return self.upscale_images / self.upscale_rate

    @property
    def seconds(self) -> float:
        """The whole run: start-up, upscaling its inputs (when it builds the cache), its epochs."""
        return self.startup_s + self.upscale_s + self.epochs * self.epoch_s


def estimate_run(config: TrainConfig, earlier: list[dict], device: str, upscale_images: int = 0,
                 shape: DataShape = DataShape()) -> RunEstimate:
    """A run's estimate on data of `shape` from `earlier` records on this device: its epochs from records of the
    same work, else from the speed fitted to all of them, else the rough rate; its upscaling likewise (same
    variant's records, else the rough rate per image)."""
    from .flops import train_flops_per_image

    variant, (n_train, n_test) = VARIANTS[config.variant], split_sizes(config, shape)
    images = epoch_images(n_train, n_test)
    flops = train_flops_per_image(shape.side(variant.scale), config.width)
    same = [r for r in earlier if same_work(r, config, shape) and r.get("epochs")]
    if same:
        epoch_s, basis = statistics.mean(measured_epoch_s(r) for r in same), f"from {len(same)} earlier record(s)"
    else:
        speed = fit_speed([s for r in earlier if (s := _sample(r))], device)
        epoch_s, basis = images * speed.image_s(flops), speed.basis
    built = [r["upscale_seconds"] for r in same if r.get("upscale_seconds")]
    if built:  # the earliest run built the caches; its upscale time covers both splits
        rate, upscale_basis = (n_train + n_test) / max(built), "from earlier records"
    else:
        kind = variant.upscale_kind if variant.upscale_kind != "none" else "plain"
        rate, upscale_basis = ROUGH_UPSCALE_RATE[(kind, device_type(device))], f"rough {device_type(device)} rate"
    return RunEstimate(flops, images, config.epochs, epoch_s, basis, not basis.startswith("rough"),
                       upscale_images, variant.upscale_kind, rate, upscale_basis, device=device_type(device))


# --- what a sweep measures, and when its runs end ----------------------------------------------------------

@dataclass
class Measured:
    """What this sweep has measured, per phase: seconds per epoch at each training size (FLOPs per image), images
    per second of each upscaling kind. Upscaling time never enters an epoch figure, nor the other way round."""

    epoch_s: dict[float, float] = field(default_factory=dict)  # FLOPs per image -> seconds per epoch
    epoch_images: dict[float, float] = field(default_factory=dict)  # FLOPs per image -> trained images per epoch
    upscale_rate: dict[str, float] = field(default_factory=dict)  # 'sr' / 'plain' -> images/s

    @property
    def anything(self) -> bool:
        return bool(self.epoch_s or self.upscale_rate)

    def epoch(self, run: RunEstimate) -> float:
        """Seconds per epoch of `run`: measured at its size, else the speed fitted to the sizes measured, else
        the run's own estimate."""
        if run.flops in self.epoch_s:
            return self.epoch_s[run.flops]
        if not self.epoch_s:
            return run.epoch_s
        samples = [(f, s / self.epoch_images[f]) for f, s in self.epoch_s.items()]
        return run.epoch_images * fit_speed(samples, run.device).image_s(run.flops)

    def upscale_s(self, run: RunEstimate, images: float | None = None) -> float:
        images = run.upscale_images if images is None else images
        return images / self.upscale_rate.get(run.upscale_kind, run.upscale_rate) if images else 0.0


def finish_times(runs: list[tuple[float, float]], slots: int,
                 rate: Callable[[int, int], float | None] = lambda i, n: 1.0) -> list[float]:
    """Seconds until each run ends: runs start in the given order, at most `slots` at a time (the runs already
    going first); a run spends its setup seconds (runs[i][0]), then its work (runs[i][1]) at `rate(i, n)` units
    per second, n being how many runs compute at that moment. inf for every run where a rate is None."""
    setup, left = {i: s for i, (s, _) in enumerate(runs)}, {i: w for i, (_, w) in enumerate(runs)}
    pending, active, done, now = list(range(len(runs))), [], {}, 0.0
    while pending or active:
        while pending and len(active) < max(1, slots):
            active.append(pending.pop(0))
        computing = [i for i in active if setup[i] <= 0]
        rates = {i: rate(i, len(computing)) for i in computing}
        if any(r is None or r <= 0 for r in rates.values()):
            return [float("inf")] * len(runs)
        dt = min([setup[i] for i in active if setup[i] > 0] + [left[i] / rates[i] for i in computing])
        now += dt
        for i in list(active):
            if setup[i] > 0:
                setup[i] -= dt
            else:
                left[i] -= rates[i] * dt
            if setup[i] <= 1e-9 and left[i] <= 1e-6 * max(1.0, runs[i][1]):
                done[i] = now
                active.remove(i)
    return [done[i] for i in range(len(runs))]
