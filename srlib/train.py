"""`train(config) -> record`: the reference protocol, on uint8 tensors held in memory.

Data order and flips come from generators seeded by (seed, epoch), and the model is built
right after seeding, so the same seed gives the same initial weights and the same batches in
every variant (paired comparisons), and a resumed run replays exactly what it would have done.
Training itself draws nothing from the global RNGs; checkpoints still carry their states, so a
resumed run stays exact if that ever changes.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import load_checkpoint, save_checkpoint
from .config import VARIANTS, TrainConfig
from .data import Dataset, dataset_key, default_cache_dir, load_dataset, stratified_subset
from .errors import ConfigError, TrainingError
from .model import count_parameters, resnet18
from .numerics import Numerics, deterministic_algorithms, resolve_device, resolve_numerics
from .progress import progress_bar
from .provenance import now, provenance
from .runs import CHECKPOINT, PREDICTIONS, RECORD, config_dir, find_finished
from .store import directory_lock, save_arrays, sha256_array, write_json
from .upscale import build_upscaler, upscale_splits

RECORD_SCHEMA = 2
EVAL_BATCH = 500  # images per evaluation step (memory only; does not change results)


@dataclass
class VariantData:
    train_x: torch.Tensor  # uint8 (N, 3, H, W) on the training device
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    identity: dict  # data and upscaler identity, for the record
    upscale_seconds: float


def prepare_data(config: TrainConfig, dataset: Dataset, device: torch.device,
                 cache_dir: str | os.PathLike | None = None, progress: bool = True) -> VariantData:
    """Subset the dataset and upscale it as the variant asks (cached), then move it to `device`."""
    variant = VARIANTS[config.variant]
    train_idx = stratified_subset(dataset.train_y, config.train_size)
    test_idx = stratified_subset(dataset.test_y, config.test_size)
    train_x, test_x = dataset.train_x[train_idx], dataset.test_x[test_idx]
    upscaler_identity: dict = {"method": "none", "scale": 1}
    started = time.perf_counter()
    if variant.method != "none":
        cache = cache_dir if cache_dir is not None else default_cache_dir()
        upscaler = build_upscaler(variant.method, variant.scale, device=device, weights=config.sr_weights)
        up = upscale_splits({"train": train_x, "test": test_x}, upscaler, cache, progress, variant.method,
                            label=config.variant)
        (train_x, upscaler_identity), (test_x, _) = up["train"], up["test"]
        upscaler_identity = {k: v for k, v in upscaler_identity.items() if k not in ("input_sha256", "cache")}
    identity = {
        "dataset": dataset.identity,
        "train_subset": {"size": len(train_idx), "indices_sha256": sha256_array(train_idx)},
        "test_subset": {"size": len(test_idx), "indices_sha256": sha256_array(test_idx)},
        "upscaler": upscaler_identity,
    }

    def to(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    return VariantData(to(train_x), to(dataset.train_y[train_idx]), to(test_x), to(dataset.test_y[test_idx]),
                       identity, time.perf_counter() - started)


def normalise(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (mean 0.5, std 0.5, as the reference's ToTensor+Normalize)."""
    x = x.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def epoch_order(seed: int, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The permutation and flip mask of one epoch; independent of variant and device."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g), torch.rand(n, generator=g) < 0.5


def make_batch(x_all: torch.Tensor, y_all: torch.Tensor, idx: torch.Tensor, flips: torch.Tensor,
               channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One training batch: gather, flip the images whose `flips` entry is set, normalise."""
    x = x_all[idx]
    x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
    return normalise(x, channels_last), y_all[idx]


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step on one batch; returns the (detached) loss and the logits, without a host sync."""
    # No autocast weight cache: a CUDA graph capture must not keep casts from outside it (and each step
    # leaves the autocast region anyway, which empties the cache).
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


class GraphedStep:
    """`train_step` captured as CUDA graphs and replayed: the same kernels on the same values, minus the launch
    cost of a few hundred small kernels per step, which is what limits batch-32 steps on a large GPU.

    One graph per (batch shape, learning rate), because the learning rate is baked into the captured optimizer
    kernels; StepLR makes three. Capturing needs a few eager warm-up steps (lazy state, library handles); they run
    on a copy of the state that is put back afterwards, so the protocol sees exactly one step per batch.
    """

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, bf16: bool, warmup: int = 3):
        self.model, self.optimizer, self.bf16, self.warmup = model, optimizer, bf16, warmup
        self.graphs: dict[tuple, tuple] = {}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (tuple(x.shape), x.stride(), self.optimizer.param_groups[0]["lr"])
        if key not in self.graphs:
            self.graphs[key] = self._capture(x, y)
        graph, static_x, static_y, loss, logits = self.graphs[key]
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        return loss, logits

    def _tensors(self) -> list[torch.Tensor]:
        """Everything a step changes: parameters, buffers (BN statistics) and momentum."""
        momentum = [self.optimizer.state[p].get("momentum_buffer") for p in self.model.parameters()]
        return [*self.model.parameters(), *self.model.buffers(), *(m for m in momentum if m is not None)]

    def _capture(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        saved = [t.detach().clone() for t in self._tensors()]
        had_momentum = {id(p) for p in self.model.parameters() if "momentum_buffer" in self.optimizer.state[p]}
        static_x, static_y = x.clone(), y.clone()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                train_step(self.model, self.optimizer, static_x, static_y, self.bf16)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for tensor, value in zip(self._tensors(), saved, strict=False):
                tensor.copy_(value)
            for p in self.model.parameters():  # SGD's first step (buffer = grad) equals one from a zero buffer
                if id(p) not in had_momentum:
                    self.optimizer.state[p]["momentum_buffer"].zero_()
        graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.cuda.graph(graph):
            loss, logits = train_step(self.model, self.optimizer, static_x, static_y, self.bf16)
        return graph, static_x, static_y, loss, logits


def train_epoch(model, optimizer, data: VariantData, config: TrainConfig, epoch: int, numerics: Numerics,
                progress: bool, step: Callable | None = None) -> tuple[float, float, int]:
    """One epoch of the protocol; (mean train loss, train accuracy %, images). `step(x, y)` defaults to
    `train_step`; a `GraphedStep` replays it as CUDA graphs (a short last batch runs eagerly)."""
    model.train()
    n = len(data.train_y)
    order, flips = (t.to(data.train_x.device) for t in epoch_order(config.seed, epoch, n))
    loss_sum = torch.zeros((), device=data.train_x.device)
    correct = torch.zeros((), dtype=torch.long, device=data.train_x.device)
    steps = range(0, n, config.batch_size)
    for start in progress_bar(steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress,
                              mininterval=1, unit="batch"):
        x, y = make_batch(data.train_x, data.train_y, order[start:start + config.batch_size], flips,
                          numerics.channels_last)
        if step is not None and len(y) == config.batch_size:
            loss, logits = step(x, y)
        else:
            loss, logits = train_step(model, optimizer, x, y, numerics.bf16)
        loss_sum += loss.float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / n, 100.0 * correct.item() / n, n


def evaluate(model, x_all: torch.Tensor, y_all: torch.Tensor, numerics: Numerics) -> tuple[float, float, np.ndarray]:
    """Test loss, accuracy (%) and per-image predictions."""
    model.eval()
    preds, loss_sum = [], torch.zeros((), device=x_all.device)
    with torch.inference_mode():
        for start in range(0, len(y_all), EVAL_BATCH):
            x, y = normalise(x_all[start:start + EVAL_BATCH], numerics.channels_last), y_all[start:start + EVAL_BATCH]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=numerics.bf16):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
            preds.append(logits.argmax(1))
    preds_np = torch.cat(preds).cpu().numpy()  # the one host sync of an evaluation
    accuracy = 100.0 * float((preds_np == y_all.cpu().numpy()).mean())
    return loss_sum.item() / len(y_all), accuracy, preds_np


def summarise(epochs: list[dict]) -> dict:
    accs = [e["test_acc"] for e in epochs]
    if not accs:
        return {}
    best = int(np.argmax(accs))
    return {"max_test_acc": accs[best], "best_epoch": best + 1, "top5_mean_test_acc": float(np.mean(sorted(accs)[-5:])),
            "final_test_acc": accs[-1], "train_seconds": float(sum(e["seconds"] for e in epochs)),
            "mean_train_images_per_s": float(np.mean([e["train_images_per_s"] for e in epochs]))}


def train(config: TrainConfig, out: str | os.PathLike = "runs", data: str | None = None,
          cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
          progress: bool = True, force: bool = False, log=print, deadline: float | None = None,
          allow_cpu_paper: bool = False) -> dict:
    """Run (or resume, or reuse) one training run and return its record.

    `deadline` (a `time.time()` value): stop cleanly after the last epoch that finishes before it, keep the
    checkpoint and return a record with status "partial"; the same call later resumes. The run directory
    stays locked meanwhile, so a second `train` of the same run stops with a LockError.
    """
    device = resolve_device(device)
    if config.profile == "paper" and device.type == "cpu" and not allow_cpu_paper:
        raise ConfigError("the paper profile (width 64, all 60,000 images, 45 epochs) takes weeks on a CPU; run it "
                          "on a GPU, use --profile preview, or pass --allow-cpu-paper if you really mean it")
    dataset = load_dataset(data, cache_dir=cache_dir)  # its key is part of the run's folder
    key = dataset_key(dataset.identity)
    directory = config_dir(out, config, key)
    # Looked for before the lock, which would make this run's folder: a finished run may be in the older layout.
    finished = None if force else find_finished(out, config, key)
    if finished is None:
        holder = f"srlib train --variant {config.variant} --profile {config.profile} --seed {config.seed}"
        with directory_lock(directory, holder), deterministic_algorithms(config.deterministic):
            # and again once locked: the same run in another process may have finished in between
            finished = None if force else find_finished(out, config, key)
            if finished is None:
                return _train(config, directory, dataset, cache_dir, device, progress, force, log, deadline)
    log(f"[srlib] reusing finished run {Path(finished['_path']).parent} (same protocol and data; --force to retrain)")
    return {k: v for k, v in finished.items() if not k.startswith("_")}


@dataclass
class _Run:
    """What one run trains: model, optimizer and schedule, and the epochs done so far."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    epochs: list[dict]
    resumes: list[dict]


def build_training(config: TrainConfig, device: torch.device, numerics: Numerics, n_classes: int = 10
                   ) -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """The protocol's model, optimizer and learning-rate schedule, seeded by `config.seed`: the same initial
    weights for every variant of a seed. `srlib bench` and the GPU kit's probe time this very setup."""
    torch.manual_seed(config.seed)
    memory_format = torch.channels_last if numerics.channels_last else torch.contiguous_format
    model = resnet18(num_classes=n_classes, width=config.width).to(device, memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    return model, optimizer, scheduler


def _train(config: TrainConfig, directory: Path, dataset: Dataset, cache_dir: str | os.PathLike | None,
           device: torch.device, progress: bool, force: bool, log, deadline: float | None) -> dict:
    started_at, started = now(), time.perf_counter()
    variant_data = prepare_data(config, dataset, device, cache_dir, progress)
    numerics = resolve_numerics(config, device)
    checkpoint = directory / CHECKPOINT
    run = _Run(*build_training(config, device, numerics, len(dataset.classes)), [], [])
    if checkpoint.is_file() and not force:
        run.epochs, run.resumes = load_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler, config,
                                                  variant_data.identity, log)
    step_model = torch.compile(run.model) if numerics.compile else run.model
    step = GraphedStep(run.model, run.optimizer, numerics.bf16) if numerics.cuda_graphs else None
    preds, stopped_early = None, False
    for epoch in range(len(run.epochs), config.epochs):
        if _past_deadline(deadline, run.epochs):
            stopped_early = True
            log(f"[srlib] {config.variant} seed {config.seed}: stopping after epoch {epoch} of {config.epochs}; the "
                "next would not finish before the deadline. The checkpoint is kept: rerun the same command to resume")
            break
        preds = _epoch(config, epoch, run, step_model, step, variant_data, numerics, checkpoint, progress, log)
    if preds is None and not stopped_early:  # nothing trained in this process (resumed after the last epoch)
        _, _, preds = evaluate(step_model, variant_data.test_x, variant_data.test_y, numerics)
    record = _record(config, run, variant_data, numerics, started_at, time.perf_counter() - started,
                     "partial" if stopped_early else "complete", provenance(device, directory))
    if stopped_early:
        record["predictions"] = None
        write_json(directory / RECORD, record)
        return record
    save_arrays(directory / PREDICTIONS,
                {"predictions": preds.astype(np.int64), "labels": variant_data.test_y.cpu().numpy()},
                {"epoch": len(run.epochs), "classes": list(dataset.classes)})
    write_json(directory / RECORD, record)
    checkpoint.unlink(missing_ok=True)
    return record


def _past_deadline(deadline: float | None, epochs: list[dict]) -> bool:
    """True when the next epoch would likely end after `deadline` (judged by the slowest epoch so far)."""
    if deadline is None:
        return False
    if not epochs:
        return time.time() >= deadline
    slowest = max(e["seconds"] + e.get("eval_seconds", 0.0) for e in epochs)
    return time.time() + slowest > deadline


def _epoch(config: TrainConfig, epoch: int, run: _Run, step_model, step: Callable | None, data: VariantData,
           numerics: Numerics, checkpoint: Path, progress: bool, log) -> np.ndarray:
    """Train and evaluate one epoch, append its metrics, checkpoint; returns the per-image test predictions."""
    lr = run.optimizer.param_groups[0]["lr"]
    t0 = time.perf_counter()
    train_loss, train_acc, n = train_epoch(step_model, run.optimizer, data, config, epoch, numerics, progress, step)
    seconds = time.perf_counter() - t0
    run.scheduler.step()
    test_loss, test_acc, preds = evaluate(step_model, data.test_x, data.test_y, numerics)
    eval_seconds = time.perf_counter() - t0 - seconds
    _stop_if_diverged(epoch, train_loss, test_loss, run.model, checkpoint, len(run.epochs))
    run.epochs.append(dict(epoch=epoch + 1, lr=lr, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                           test_acc=test_acc, seconds=seconds, eval_seconds=eval_seconds,
                           train_images_per_s=n / seconds))
    log(f"[srlib] {config.variant} seed {config.seed} epoch {epoch + 1}/{config.epochs}: "
        f"loss {train_loss:.4f} train {train_acc:.2f}% test {test_acc:.2f}% "
        f"({seconds:.1f}s, {n / seconds:.0f} img/s)")
    save_checkpoint(checkpoint, run.model, run.optimizer, run.scheduler, run.epochs, run.resumes, config,
                    data.identity)
    return preds


def _record(config: TrainConfig, run: _Run, data: VariantData, numerics: Numerics, started_at: str,
            wall_seconds: float, status: str, provenance_: dict) -> dict:
    described = numerics.describe()
    return {
        "schema": RECORD_SCHEMA, "status": status, "config": config.to_dict(),
        "model": {"name": "resnet18", "width": config.width, "parameters": count_parameters(run.model)},
        "input_px": int(data.train_x.shape[-1]), "precision": described["precision"],
        "memory_format": described["memory_format"], "numerics": described, "threads": torch.get_num_threads(),
        "epochs": run.epochs, "summary": summarise(run.epochs), "data": data.identity,
        "upscale_seconds": data.upscale_seconds, "predictions": PREDICTIONS,
        "resumed_from_epoch": run.resumes[-1]["from_epoch"] if run.resumes else None,
        "resumes": run.resumes,  # every interruption this run recovered from; the metrics are as if there was none
        "started": started_at, "finished": now(), "wall_seconds": wall_seconds, "provenance": provenance_,
    }


def _stop_if_diverged(epoch: int, train_loss: float, test_loss: float, model: torch.nn.Module, checkpoint: Path,
                      last_good: int) -> None:
    """Raise before a diverged model can overwrite the last good checkpoint."""
    bad = [f"{name} loss {value}" for name, value in (("train", train_loss), ("test", test_loss))
           if not math.isfinite(value)]
    finite = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    if finite and not bool(torch.stack(finite).all()):
        bad.append("non-finite weights")
    if not bad:
        return
    kept = (f"the last good checkpoint (epoch {last_good}) is kept in {checkpoint}, and rerunning the same "
            "command resumes from it" if last_good else "no epoch had finished, so there is no checkpoint")
    raise TrainingError(f"loss became non-finite in epoch {epoch + 1} ({', '.join(bad)}); stopped without saving "
                        f"that epoch: {kept}. Fix: lower the learning rate (--lr) or use --precision fp32, then rerun "
                        "(a changed setting starts the run afresh)")
