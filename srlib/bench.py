"""`srlib bench`: training and SR-upscaling throughput, a reference-style baseline beside srlib's code path.

Training (ResNet-18 width 64, batch 32, SGD as in the paper protocol), per input size:
- baseline: written the way the reference code is (kuangliu/pytorch-cifar): fp32, NCHW, a torchvision
  `DataLoader` over PIL images with per-sample RandomHorizontalFlip / ToTensor / Normalize(0.5, 0.5),
  `loss.item()` and the accuracy count every step. The PIL images are held in memory (no disk reads),
  which favours the baseline;
- srlib: `srlib.train.train_epoch` on a `VariantData` of uint8 tensors, with the precision and memory
  format `srlib train` would pick on this device (`use_bf16`, `use_channels_last`).
Both see the same images (bicubic-resized to the size measured) and start from the same weights.
On CPU they take turns step by step (alternating which goes first) and the median step counts, so
load from other processes on the same cores hits both alike; on CUDA each runs all its steps in one
timed block. Each measurement also times the data path alone, to show where the time goes.

Upscaling (DCTLSA x2, x4): one model call on all images (naive) vs `build_upscaler('sr') + upscale()`,
best of two alternating repeats.

Also a small accuracy check: the same short run (width 8) through `srlib.train.train` with reference
numerics (fp32, NCHW) and with the fast path (and forced bf16 where the fast path is fp32 here).
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import make_config
from .errors import ConfigError, WeightsError
from .model import resnet18
from .provenance import now, provenance

BENCH_SCHEMA = 1
BATCH = 32
WIDTH = 64  # the reference ResNet-18
CPU_TARGET_RATIO = 3.0  # issue 4: srlib >= 3x the baseline at every px on CPU
# The accuracy check: `preview`-sized data, 3 epochs, width 8. On 2 AVX2 cores: ~15 s per fp32 run,
# ~90 s for the forced-bf16 run (emulated there).
ACCURACY = dict(width=8, train_size=2000, test_size=500, epochs=3, lr_step=2)


# ---------------------------------------------------------------- timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds `fn` takes, including the device work it queued.

    On CUDA the interval is measured with events recorded on the stream after a synchronize, so
    kernels still queued from earlier work are not counted and the ones `fn` queued are."""
    if device.type != "cuda":
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started
    _sync(device)
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


def plan_steps(px: int, steps: int, device: torch.device) -> tuple[int, int]:
    """(warm-up, timed) training steps at `px`.

    On CPU a step costs ~(px/32)^2 times more at larger px, so the timed steps shrink as 32/px (at
    least 1): the default run (10 steps at 32 px) stays within ~10 minutes on 2 cores. On CUDA steps are
    cheap and the first ones pay for allocator and kernel selection, so more warm-up is used."""
    if device.type == "cuda":
        return max(5, steps // 5), steps
    timed_steps = max(1, math.ceil(steps * 32 / px))
    return (2 if timed_steps >= 5 else 1), timed_steps


# ---------------------------------------------------------------- images


def source_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`n` uint8 32 px training images (N, 3, 32, 32) and labels, and where they came from.

    Real CIFAR-10 when one is configured (SRLIB_DATA, or canonical files in the data directory);
    otherwise seeded noise, because throughput does not depend on pixel values and a benchmark
    should not start a download."""
    from .data import load_dataset, locate, stratified_subset

    if locate()["kind"] != "download":
        dataset = load_dataset()
        idx = stratified_subset(dataset.train_y, min(n, len(dataset.train_y)))
        idx = np.resize(idx, n)  # cycles when the dataset is smaller than n
        return dataset.train_x[idx], dataset.train_y[idx], f"cifar10 {dataset.identity.get('path')}"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int64), "synthetic (no CIFAR-10 configured)"


def resize(images: np.ndarray, px: int) -> np.ndarray:
    """Bicubic resize of uint8 images to px x px (the `resize_x*` variants' inputs)."""
    if images.shape[-1] == px:
        return images
    x = F.interpolate(torch.from_numpy(images).float(), size=(px, px), mode="bicubic", align_corners=False)
    return x.round().clamp_(0, 255).to(torch.uint8).numpy()


# ---------------------------------------------------------------- training: the reference-style baseline


class PILImages(torch.utils.data.Dataset):
    """In-memory PIL images with a per-sample transform, as torchvision datasets serve them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        from PIL import Image

        self.images = [Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))) for img in images]
        self.labels = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def reference_loader(images: np.ndarray, labels: np.ndarray, workers: int) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    transform = transforms.Compose([
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    ])
    return torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=BATCH, shuffle=True,
                                       num_workers=workers)


def baseline_workers(device: torch.device) -> int:
    # The reference loader uses 2 workers; on a 2-core CPU they would compete with the model's two
    # compute threads, so the baseline loads in the main process there (the faster choice for it).
    return 2 if device.type == "cuda" else 0


def baseline_steps(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Callable[[int], None]:
    """A kuangliu-style training loop over one epoch of `images`; the function returned runs n steps."""
    torch.manual_seed(0)
    model = resnet18(width=WIDTH).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()
    batches = iter(reference_loader(images, labels, baseline_workers(device)))

    def run(n: int) -> None:
        for _ in range(n):
            inputs, targets = next(batches)
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            _ = loss.item(), outputs.max(1)[1].eq(targets).sum().item()  # the reference's per-step bookkeeping

    return run


def baseline_data_img_s(images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
                        device: torch.device) -> float:
    """Images/s of the reference data path alone (loader and host-to-device copy)."""
    batches = iter(reference_loader(images, labels, baseline_workers(device)))

    def run(n: int) -> None:
        for _ in range(n):
            inputs, targets = next(batches)
            inputs.to(device), targets.to(device)  # noqa: B018

    run(warmup)  # also starts the loader's workers, a once-per-epoch cost
    return steps * BATCH / timed(lambda: run(steps), device)


# ---------------------------------------------------------------- training: srlib's code path


@contextlib.contextmanager
def _deterministic(enabled: bool) -> Iterator[None]:
    # `srlib.train.train` switches deterministic algorithms on for the whole run; do the same around the
    # srlib steps only, so the baseline keeps PyTorch's defaults as the reference code had them.
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def srlib_steps(images: np.ndarray, labels: np.ndarray, device: torch.device) -> tuple[Callable[[int], None], dict]:
    """`srlib.train.train_epoch` (paper config, width 64) over successive slices of `images`; the function
    returned runs n steps. Also returns the data and the choices `srlib train` made for this device."""
    from .train import VariantData, train_epoch, use_bf16, use_channels_last

    config = make_config("original", "paper", width=WIDTH, batch_size=BATCH)
    bf16, channels_last = use_bf16(config.precision, device), use_channels_last(config, device)
    data = VariantData(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device),
                       torch.empty(0), torch.empty(0), {}, 0.0)
    torch.manual_seed(0)
    model = resnet18(width=WIDTH).to(device, memory_format=torch.channels_last if channels_last
                                      else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    done = {"steps": 0, "calls": 0}

    def run(n: int) -> None:
        lo, hi = done["steps"] * BATCH, (done["steps"] + n) * BATCH
        part = VariantData(data.train_x[lo:hi], data.train_y[lo:hi], data.test_x, data.test_y, {}, 0.0)
        with _deterministic(config.deterministic):
            train_epoch(model, optimizer, part, config, done["calls"], bf16, channels_last, progress=False)
        done["steps"], done["calls"] = done["steps"] + n, done["calls"] + 1

    info = {"data": data, "channels_last": channels_last, "precision": "bf16-autocast" if bf16 else "fp32",
            "memory_format": "channels_last" if channels_last else "contiguous"}
    return run, info


def srlib_data_img_s(data, channels_last: bool, device: torch.device) -> float:
    """Images/s of `train_epoch`'s batch preparation alone (gather, batched flip, normalise)."""
    from .train import epoch_order, normalise

    n = len(data.train_y)
    order, flips = (t.to(device) for t in epoch_order(0, 1, n))

    def run() -> None:
        for start in range(0, n, BATCH):
            idx = order[start:start + BATCH]
            batch = data.train_x[idx]
            batch = torch.where(flips[idx].view(-1, 1, 1, 1), batch.flip(3), batch)
            normalise(batch, channels_last)
            data.train_y[idx]  # noqa: B018

    run()  # warm-up
    return n / timed(run, device)


# ---------------------------------------------------------------- training: side by side


def interleaved(runs: dict[str, Callable[[int], None]], warmup: int, steps: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds of each measured block of steps, per pipeline, the pipelines taking turns.

    On CPU every step is its own block and the order alternates, so load from other processes on the
    same cores falls on both pipelines alike. On CUDA all steps form one block: synchronising after
    every step would take from srlib the asynchronous steps it is built for."""
    for run in runs.values():
        run(warmup)
    blocks = steps if device.type == "cpu" else 1
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for block in range(blocks):
        names = list(runs) if block % 2 == 0 else list(runs)[::-1]
        for name in names:
            seconds[name].append(timed(functools.partial(runs[name], steps // blocks), device))
    return seconds


def throughput(seconds: list[float], images_per_block: int) -> float:
    # The median block: a burst of load from another process slows one block, not the estimate.
    return images_per_block / statistics.median(seconds)


def train_row(px: int, images32: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
              device: torch.device) -> dict:
    images = resize(images32, px)
    row: dict = {"px": px, "warmup_steps": warmup, "steps": steps, "load_avg_before": load_avg()}
    base = baseline_steps(images, labels, device)
    fast, info = srlib_steps(images, labels, device)
    seconds = interleaved({"baseline": base, "srlib": fast}, warmup, steps, device)
    per_block = steps * BATCH // len(seconds["srlib"])
    row["baseline_img_s"] = throughput(seconds["baseline"], per_block)
    row["srlib_img_s"] = throughput(seconds["srlib"], per_block)
    row["ratio"] = row["srlib_img_s"] / row["baseline_img_s"]
    row["baseline_data_img_s"] = baseline_data_img_s(images, labels, warmup, steps, device)
    row["srlib_data_img_s"] = srlib_data_img_s(info["data"], info["channels_last"], device)
    # Share of a training step spent on the data path, from the throughputs (data alone vs whole step).
    row["baseline_data_share"] = row["baseline_img_s"] / row["baseline_data_img_s"]
    row["srlib_data_share"] = row["srlib_img_s"] / row["srlib_data_img_s"]
    row.update(srlib_precision=info["precision"], srlib_memory_format=info["memory_format"],
               baseline_block_seconds=seconds["baseline"], srlib_block_seconds=seconds["srlib"])
    return row


def train_rows(px_list: list[int], steps: int, device: torch.device, log: Callable = print) -> tuple[list, str]:
    plans = {px: plan_steps(px, steps, device) for px in px_list}
    n = max(sum(plan) for plan in plans.values()) * BATCH
    images32, labels, source = source_images(n)
    rows = []
    for px in px_list:
        warmup, timed_steps = plans[px]
        log(f"[bench] train {px} px: baseline and srlib, {warmup} warm-up + {timed_steps} timed steps each")
        rows.append(train_row(px, images32, labels, warmup, timed_steps, device))
    return rows, source


# ---------------------------------------------------------------- upscaling


def naive_upscaler(scale: int, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """The whole batch in one call of the DCTLSA model (no chunking, no inference mode)."""
    from .upscale import load_sr_model, resolve_sr_weights

    model = load_sr_model(resolve_sr_weights(scale)[0], scale)[0].to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(batch).to(device).float() / 255)
        return (y.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return run


def srlib_upscaler(scale: int, device: torch.device) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    from .upscale import build_upscaler, upscale

    upscaler = build_upscaler("sr", scale, device=device)
    return functools.partial(upscale, upscaler=upscaler, progress=False), upscaler.chunk_size


def upscale_img_s(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray,
                  device: torch.device) -> float | None:
    try:
        return len(images) / timed(lambda: run(images), device)
    except torch.cuda.OutOfMemoryError:  # one call on everything may not fit; srlib's chunks do
        torch.cuda.empty_cache()
        return None


def upscale_row(images: np.ndarray, scale: int, device: torch.device, repeats: int = 2) -> dict:
    row: dict = {"scale": scale, "images": len(images), "input_px": int(images.shape[-1]), "repeats": repeats,
                 "load_avg_before": load_avg()}
    naive = naive_upscaler(scale, device)
    fast, row["chunk_size"] = srlib_upscaler(scale, device)
    runs = {"naive": naive, "srlib": fast}
    for run in runs.values():
        run(images[:2])  # warm-up
    results: dict[str, list] = {name: [] for name in runs}
    for r in range(repeats):  # alternating order, as for training
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            results[name].append(upscale_img_s(runs[name], images, device))
    # Best of the repeats: load from other processes only ever adds time.
    naive_ok = [v for v in results["naive"] if v is not None]
    row["naive_img_s"] = max(naive_ok) if naive_ok else None
    if not naive_ok:
        row["naive_error"] = "out of memory"
    row["srlib_img_s"] = max(results["srlib"])
    row["ratio"] = row["srlib_img_s"] / row["naive_img_s"] if row["naive_img_s"] else None
    return row


def upscale_rows(n: int, device: torch.device, scales: tuple[int, ...] = (2, 4), log: Callable = print) -> list:
    images = source_images(n)[0]
    rows = []
    for scale in scales:
        log(f"[bench] upscale x{scale}: naive one-call batch of {n} and srlib's chunked upscaler")
        rows.append(upscale_row(images, scale, device))
    return rows


# ---------------------------------------------------------------- accuracy check


def accuracy_check(device: torch.device, log: Callable = print, **overrides) -> dict:
    """Test accuracy of one short run with reference numerics (fp32, NCHW) and with the fast path.

    Same seed, data and batches (srlib's order does not depend on precision or memory format), so the
    runs differ only in numerics; a second seed of the reference gives the scale of run-to-run noise.
    `agreement_with_first` is the share of test images predicted as the first run predicts them."""
    from .store import load_arrays
    from .train import run_dir, train, use_bf16

    settings = {**ACCURACY, **overrides}
    reference_numerics = dict(precision="fp32", channels_last=False)
    runs = [("reference numerics (fp32, contiguous)", 0, reference_numerics),
            ("srlib default (precision auto, channels_last)", 0, dict(precision="auto", channels_last=True))]
    if not use_bf16("auto", device):  # the fast path is fp32 here; show what bf16 would do to accuracy
        runs.append(("forced bf16 autocast, channels_last", 0, dict(precision="bf16", channels_last=True)))
    # Another seed of the reference shows how far two runs differ without any change of numerics.
    runs.append(("reference numerics, seed 1 (seed noise)", 1, reference_numerics))
    results, reference = [], None
    with tempfile.TemporaryDirectory(prefix="srlib-bench-") as out:
        for name, seed, options in runs:
            log(f"[bench] accuracy: {name}")
            config = make_config("original", "smoke", seed, **settings, **options)
            record = train(config, out=out, device=device, progress=False, force=True, log=lambda *_: None)
            preds = load_arrays(run_dir(out, config) / "predictions.npz")[0]["predictions"]
            reference = preds if reference is None else reference
            s = record["summary"]
            results.append({"name": name, "seed": seed, "precision": record["precision"],
                            "memory_format": record["memory_format"],
                            "final_test_acc": s["final_test_acc"], "max_test_acc": s["max_test_acc"],
                            "train_img_s": s["mean_train_images_per_s"],
                            "agreement_with_first": float((preds == reference).mean())})
    return {"settings": {**settings, "variant": "original"}, "runs": results}


# ---------------------------------------------------------------- the whole benchmark


def run_bench(px: list[int], steps: int, images: int, device: torch.device | None = None,
              accuracy: bool = True, log: Callable = print) -> dict:
    """Everything `srlib bench` measures, as one JSON-ready dict."""
    from .upscale import default_device

    if steps < 1 or images < 2 or any(p < 8 for p in px):
        raise ConfigError("bench needs --steps >= 1, --images >= 2 and every --px >= 8")
    device = device or default_device()
    started, load_start = time.perf_counter(), load_avg()
    train, source = train_rows(px, steps, device, log)
    try:
        upscale, upscale_skipped = upscale_rows(images, device, log=log), None
    except WeightsError as exc:  # e.g. an offline machine without the weights: report the rest
        upscale, upscale_skipped = [], str(exc)
    acc = None
    if accuracy and not source.startswith("synthetic"):
        acc = accuracy_check(device, log)
    return {
        "schema": BENCH_SCHEMA,
        "created": now(),
        "device": str(device),
        "settings": {"model": f"resnet18 width {WIDTH}", "batch_size": BATCH, "px": px, "steps_requested": steps,
                     "upscale_images": images, "baseline_workers": baseline_workers(device),
                     "train_images": source, "torch_threads": torch.get_num_threads(),
                     "baseline": "fp32, NCHW, DataLoader over in-memory PIL images, per-sample "
                                 "RandomHorizontalFlip/ToTensor/Normalize(0.5,0.5), loss.item() every step",
                     "srlib": "srlib.train.train_epoch on uint8 VariantData, paper config (use_bf16/"
                              "use_channels_last as srlib train would pick)",
                     "timing": "train: CPU alternates single steps of the two pipelines and takes the median "
                               "step; CUDA times all steps as one block (events). upscale: best of 2 "
                               "alternating repeats"},
        "train": train,
        "upscale": upscale,
        "upscale_skipped": upscale_skipped,
        "accuracy": acc,
        "target": _target(train, device),
        "load_avg": {"start": load_start, "end": load_avg(), "cpu_count": os.cpu_count()},
        "wall_seconds": time.perf_counter() - started,
        "provenance": provenance(device),
    }


def _target(train: list[dict], device: torch.device) -> dict | None:
    if device.type != "cpu":
        return None
    return {"cpu_train_ratio": CPU_TARGET_RATIO, "met": all(r["ratio"] >= CPU_TARGET_RATIO for r in train)}


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def step_spread(row: dict) -> float | None:
    """(slowest - fastest) / median step time, the worse of the two pipelines; None for one block."""
    spreads = [(max(s) - min(s)) / statistics.median(s)
               for s in (row["baseline_block_seconds"], row["srlib_block_seconds"]) if len(s) > 1]
    return max(spreads) if spreads else None


def _train_lines(result: dict) -> list[str]:
    lines = [f"training, {result['settings']['model']}, batch {BATCH} (images/s)",
             f"{'px':>5} {'steps':>6} {'baseline':>9} {'srlib':>8} {'ratio':>6} {'step spread':>12}  "
             "data share of a step (baseline / srlib)"]
    for r in result["train"]:
        lines.append(f"{r['px']:>5} {r['steps']:>6} {r['baseline_img_s']:>9.1f} {r['srlib_img_s']:>8.1f} "
                     f"{r['ratio']:>5.2f}x {_fmt(step_spread(r), '.0%'):>12}  "
                     f"{r['baseline_data_share']:.1%} / {r['srlib_data_share']:.1%}")
    if result["train"]:
        r = result["train"][0]
        lines.append(f"baseline: fp32, contiguous, DataLoader with {result['settings']['baseline_workers']} workers; "
                     f"srlib: {r['srlib_precision']}, {r['srlib_memory_format']}, uint8 batches in memory")
    return lines


def _upscale_lines(result: dict) -> list[str]:
    if not result["upscale"]:
        return [f"SR upscaling skipped: {result['upscale_skipped']}"]
    lines = [f"SR upscaling (DCTLSA), {result['settings']['upscale_images']} images of 32 px (images/s)",
             f"{'scale':>5} {'naive':>8} {'srlib':>8} {'ratio':>6}"]
    for r in result["upscale"]:
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
        lines.append(f"{'x' + str(r['scale']):>5} {_fmt(r['naive_img_s']):>8} {r['srlib_img_s']:>8.1f} {ratio:>6}")
    return lines


def _accuracy_lines(result: dict) -> list[str]:
    if not result["accuracy"]:
        return ["accuracy check skipped (no CIFAR-10 configured)"]
    s = result["accuracy"]["settings"]
    lines = [f"accuracy check: width {s['width']}, {s['train_size']} / {s['test_size']} images, "
             f"{s['epochs']} epochs (test accuracy %; agreement = same prediction as the first run)"]
    for r in result["accuracy"]["runs"]:
        lines.append(f"  {r['name']:<48} final {r['final_test_acc']:6.2f}  max {r['max_test_acc']:6.2f}  "
                     f"agreement {r['agreement_with_first']:.1%}")
    return lines


def format_table(result: dict) -> str:
    info = result["provenance"]["device"]
    where = info.get("gpu") or f"{info['cpu']}, {info['torch_threads']} threads"
    lines = [f"srlib bench on {result['device']} ({where}); load average at start {result['load_avg']['start']}, "
             f"end {result['load_avg']['end']}", ""]
    lines += _train_lines(result) + [""] + _upscale_lines(result) + [""] + _accuracy_lines(result)
    target = result["target"]
    if target is not None:
        lines += ["", f"CPU target srlib >= {target['cpu_train_ratio']:.0f}x baseline at every px: "
                      f"{'met' if target['met'] else 'NOT met'}"]
    return "\n".join(lines)


def cmd_bench(args) -> int:
    from .train import resolve_device

    result = run_bench(px=list(args.px), steps=args.steps, images=args.images,
                       device=resolve_device(args.device), accuracy=not args.no_accuracy)
    print(format_table(result))
    if args.json:
        from .store import write_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, result)
        print(f"\nwrote {args.json}")
    return 0
