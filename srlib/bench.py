"""`srlib bench`: the speed of srlib's own training loop and upscaler, beside code written the way the reference is.

Training (ResNet-18 width 64, batch 32, SGD) at each input size (32, 64, 128 px: the variants' inputs): the
baseline in the reference's style (srlib.bench_baseline; its PIL images are held in memory, which favours it)
vs `srlib.train.train_epoch` itself, with the numerics `resolve_numerics` picks for the paper config on this
device. Both see the same images (resized by srlib's bicubic upscaler), start from the same weights and take
turns (`interleaved`). The data path alone is timed too, to show where the time goes.

Upscaling (DCTLSA x2, x4): one model call on all images vs `build_upscaler("sr") + upscale()`.
Whether the fast numerics change accuracy takes whole trainings: that is benchmarks/accuracy_check.py.
"""
from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .bench_baseline import BASELINE, BATCH, WIDTH, baseline_data_img_s, baseline_steps, baseline_workers
from .config import TrainConfig, make_config
from .errors import ConfigError, WeightsError
from .numerics import Numerics, deterministic_algorithms, resolve_device, resolve_numerics
from .provenance import now, provenance
from .timing import load_avg, timed
from .train import VariantData, build_training, epoch_order, make_batch, train_epoch
from .upscale import DEFAULT_SR_MODEL, build_upscaler, load_sr_model, resolve_checkpoint, sr_checkpoint, upscale

BENCH_SCHEMA = 2  # 2: no `accuracy` (benchmarks/accuracy_check.py) and no `target`; numerics in settings
SOURCE_PX = 32  # CIFAR-10; the other sizes are the upscaled variants' inputs

def step_counts(px: int, steps: int, device: torch.device) -> tuple[int, int]:
    """(warm-up, timed) training steps at `px`.

    On CPU a step costs ~(px/32)^2 more at larger px, so the timed steps shrink as 32/px (at least 1) and the
    default run stays near 10 minutes on 2 cores. On CUDA the first steps pay for allocator and kernel
    selection, so more warm-up is used."""
    if device.type == "cuda":
        return max(5, steps // 5), steps
    timed_steps = max(1, math.ceil(steps * SOURCE_PX / px))
    return (2 if timed_steps >= 5 else 1), timed_steps


def interleaved(runs: dict[str, Callable[[int], None]], warmup: int, steps: int,
                device: torch.device) -> dict[str, list[float]]:
    """Seconds of each timed block of steps, per pipeline, the pipelines taking turns (alternating who goes first).

    On CPU every step is its own block. On CUDA all steps form one block: a sync after every step would take
    from srlib the asynchronous steps it is built for."""
    for run in runs.values():
        run(warmup)
    blocks = steps if device.type == "cpu" else 1
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for block in range(blocks):
        for name in (list(runs) if block % 2 == 0 else list(runs)[::-1]):
            seconds[name].append(timed(functools.partial(runs[name], steps // blocks), device))
    return seconds


# ---------------------------------------------------------------- images


def source_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """`n` uint8 32 px training images (N, 3, 32, 32), their labels, and where they came from.

    Real CIFAR-10 when one is configured (SRLIB_DATA, or canonical files in the data directory); otherwise
    seeded noise: throughput does not depend on pixel values, and a benchmark should not start a download."""
    from .data import load_dataset, locate, stratified_subset

    if locate()["kind"] != "download":
        dataset = load_dataset()
        idx = stratified_subset(dataset.train_y, min(n, len(dataset.train_y)))
        idx = np.resize(idx, n)  # cycles when the dataset is smaller than n
        return dataset.train_x[idx], dataset.train_y[idx], f"cifar10 {dataset.identity.get('path')}"
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 3, SOURCE_PX, SOURCE_PX), dtype=np.uint8)
    return images, rng.integers(0, 10, n).astype(np.int64), "synthetic (no CIFAR-10 configured)"


def resize(images: np.ndarray, px: int) -> np.ndarray:
    """32 px images as the `resize_x*` variants see them at `px` (a multiple of 32): srlib's bicubic upscaler."""
    scale = px // images.shape[-1]
    if scale == 1:
        return images
    return upscale(images, build_upscaler("bicubic", scale, device=torch.device("cpu")), progress=False)


# ---------------------------------------------------------------- training: srlib's loop beside the baseline


def paper_config() -> TrainConfig:
    return make_config("original", "paper", width=WIDTH, batch_size=BATCH)


def srlib_steps(images: np.ndarray, labels: np.ndarray,
                device: torch.device) -> tuple[Callable[[int], None], VariantData, Numerics]:
    """`srlib.train.train_epoch` on the paper config (width 64); the function returned runs n steps as one
    `train_epoch` call, under the deterministic setting `srlib train` would use."""
    config = paper_config()
    numerics = resolve_numerics(config, device)
    data = VariantData(torch.from_numpy(images).to(device), torch.from_numpy(labels).to(device),
                       torch.empty(0), torch.empty(0), {}, 0.0)
    model, optimizer, _ = build_training(config, device, numerics)  # seed 0: the baseline's initial weights
    step_model = torch.compile(model) if numerics.compile else model
    epochs = itertools.count()

    def run(n: int) -> None:
        part = dataclasses.replace(data, train_x=data.train_x[:n * BATCH], train_y=data.train_y[:n * BATCH])
        with deterministic_algorithms(numerics.deterministic):
            train_epoch(step_model, optimizer, part, config, next(epochs), numerics, progress=False)

    return run, data, numerics


def srlib_data_img_s(data: VariantData, channels_last: bool, device: torch.device) -> float:
    """Images/s of `srlib.train.make_batch` alone (gather, batched flip, normalise) over all of `data`."""
    n = len(data.train_y)
    order, flips = (t.to(device) for t in epoch_order(0, 0, n))

    def run() -> None:
        for start in range(0, n, BATCH):
            make_batch(data.train_x, data.train_y, order[start:start + BATCH], flips, channels_last)

    run()  # warm-up
    return n / timed(run, device)


def train_row(px: int, images32: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
              device: torch.device) -> dict:
    images = resize(images32, px)
    row: dict = {"px": px, "warmup_steps": warmup, "steps": steps, "load_avg_before": load_avg()}
    fast, data, numerics = srlib_steps(images, labels, device)
    seconds = interleaved({"baseline": baseline_steps(images, labels, device), "srlib": fast}, warmup, steps, device)
    # The median block: a burst of load from another process slows one block, not the estimate.
    per_block = steps * BATCH // len(seconds["srlib"])
    row["baseline_img_s"] = per_block / statistics.median(seconds["baseline"])
    row["srlib_img_s"] = per_block / statistics.median(seconds["srlib"])
    row["ratio"] = row["srlib_img_s"] / row["baseline_img_s"]
    row["baseline_data_img_s"] = baseline_data_img_s(images, labels, warmup, steps, device)
    row["srlib_data_img_s"] = srlib_data_img_s(data, numerics.channels_last, device)
    # The share of a training step spent on the data path: whole-step throughput over data-only throughput.
    row["baseline_data_share"] = row["baseline_img_s"] / row["baseline_data_img_s"]
    row["srlib_data_share"] = row["srlib_img_s"] / row["srlib_data_img_s"]
    row.update(baseline_block_seconds=seconds["baseline"], srlib_block_seconds=seconds["srlib"])
    return row


def train_rows(px_list: list[int], steps: int, device: torch.device,
               log: Callable = print) -> tuple[list[dict], str]:
    counts = {px: step_counts(px, steps, device) for px in px_list}
    images32, labels, source = source_images(max(sum(c) for c in counts.values()) * BATCH)
    rows = []
    for px, (warmup, timed_steps) in counts.items():
        log(f"[bench] train {px} px: baseline and srlib, {warmup} warm-up + {timed_steps} timed steps each")
        rows.append(train_row(px, images32, labels, warmup, timed_steps, device))
    return rows, source


# ---------------------------------------------------------------- upscaling


def naive_upscaler(scale: int, device: torch.device) -> Callable[[np.ndarray], np.ndarray]:
    """The whole batch in one call of the DCTLSA model (no chunking, no inference mode)."""
    model = load_sr_model(resolve_checkpoint(sr_checkpoint(DEFAULT_SR_MODEL, scale))[0], scale)[0].to(device)

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            y = model(torch.from_numpy(batch).to(device).float() / 255)
        return (y.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()

    return run


def upscale_row(images: np.ndarray, scale: int, device: torch.device, repeats: int = 2) -> dict:
    upscaler = build_upscaler("sr", scale, device=device)
    runs = {"naive": naive_upscaler(scale, device),
            "srlib": functools.partial(upscale, upscaler=upscaler, progress=False)}
    for run in runs.values():
        run(images[:2])  # warm-up
    results: dict[str, list] = {name: [] for name in runs}
    for r in range(repeats):  # alternating order, as for training
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            try:
                results[name].append(len(images) / timed(functools.partial(runs[name], images), device))
            except torch.cuda.OutOfMemoryError:  # one call on everything may not fit; srlib's chunks do
                torch.cuda.empty_cache()
                results[name].append(None)
    # Best of the repeats: load from other processes only ever adds time.
    naive = max((v for v in results["naive"] if v is not None), default=None)
    srlib = max(results["srlib"])
    return {"scale": scale, "images": len(images), "input_px": int(images.shape[-1]), "repeats": repeats,
            "chunk_size": upscaler.chunk_size, "naive_img_s": naive, "srlib_img_s": srlib,
            "ratio": srlib / naive if naive else None, **({} if naive else {"naive_error": "out of memory"})}


def upscale_rows(n: int, device: torch.device, scales: tuple[int, ...] = (2, 4), log: Callable = print) -> list:
    images = source_images(n)[0]
    rows = []
    for scale in scales:
        log(f"[bench] upscale x{scale}: naive one-call batch of {n} and srlib's chunked upscaler")
        rows.append({"load_avg_before": load_avg(), **upscale_row(images, scale, device)})
    return rows


# ---------------------------------------------------------------- the whole benchmark


def run_bench(px: list[int], steps: int, images: int, device: str | torch.device | None = None,
              log: Callable = print, diff_dir: str | Path | None = None) -> dict:
    """Everything `srlib bench` measures, as one JSON-ready dict; `diff_dir` receives a dirty tree's diff."""
    if steps < 1 or images < 2 or any(p < SOURCE_PX or p % SOURCE_PX for p in px):
        raise ConfigError("bench needs --steps >= 1, --images >= 2 and every --px a multiple of 32 (the variants' "
                          "input sizes are 32, 64 and 128)")
    device = resolve_device(device)
    started, load_start = time.perf_counter(), load_avg()
    train, source = train_rows(px, steps, device, log)
    try:
        upscale_result, upscale_skipped = upscale_rows(images, device, log=log), None
    except WeightsError as exc:  # e.g. an offline machine without the weights: report the rest
        upscale_result, upscale_skipped = [], str(exc)
    return {
        "schema": BENCH_SCHEMA,
        "created": now(),
        "device": str(device),
        "settings": {"model": f"resnet18 width {WIDTH}", "batch_size": BATCH, "px": px, "steps_requested": steps,
                     "upscale_images": images, "baseline_workers": baseline_workers(device),
                     "train_images": source, "torch_threads": torch.get_num_threads(), "baseline": BASELINE,
                     "srlib": "srlib.train.train_epoch on uint8 tensors, paper config",
                     "srlib_numerics": resolve_numerics(paper_config(), device).describe(),
                     "timing": "train: CPU alternates single steps of the two pipelines and takes the median "
                               "step; CUDA times all steps as one block (events). upscale: best of 2 "
                               "alternating repeats"},
        "train": train,
        "upscale": upscale_result,
        "upscale_skipped": upscale_skipped,
        "load_avg": {"start": load_start, "end": load_avg(), "cpu_count": os.cpu_count()},
        "wall_seconds": time.perf_counter() - started,
        "provenance": provenance(device, diff_dir),
    }


def format_table(result: dict) -> str:
    s, load = result["settings"], result["load_avg"]
    lines = [f"srlib bench on {result['device']} ({s['torch_threads']} threads); load average {load['start']} at "
             f"the start, {load['end']} at the end; images/s, ratio = srlib / baseline",
             f"training {s['model']}, batch {s['batch_size']}, median step; baseline: fp32, contiguous, "
             f"{s['baseline_workers']} loader workers; srlib: {s['srlib_numerics']['precision']}, "
             f"{s['srlib_numerics']['memory_format']}"]
    lines += [f"  {r['px']:>4} px  baseline {r['baseline_img_s']:8.1f}  srlib {r['srlib_img_s']:8.1f}  "
              f"{r['ratio']:5.2f}x  (data path: {r['baseline_data_share']:.1%} / {r['srlib_data_share']:.1%} "
              f"of a step)" for r in result["train"]]
    if not result["upscale"]:
        return "\n".join([*lines, f"SR upscaling skipped: {result['upscale_skipped']}"])
    lines.append(f"SR upscaling (DCTLSA), {s['upscale_images']} images of 32 px, best of 2; naive = one model call")
    lines += [f"  x{r['scale']}  naive {'-' if r['naive_img_s'] is None else format(r['naive_img_s'], '8.1f')}  "
              f"srlib {r['srlib_img_s']:8.1f}  {'-' if r['ratio'] is None else format(r['ratio'], '5.2f') + 'x'}"
              for r in result["upscale"]]
    return "\n".join(lines)
