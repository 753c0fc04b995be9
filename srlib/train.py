"""`train(config) -> record`: the reference protocol, on uint8 tensors held in memory.

Data order and flips come from generators seeded by (seed, epoch), and the model is built
right after seeding, so the same seed gives the same initial weights and the same batches in
every variant (paired comparisons), and a resumed run replays exactly what it would have done.
Training itself draws nothing from the global RNGs; checkpoints still carry their states, so a
resumed run stays exact if that ever changes.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .config import VARIANTS, TrainConfig
from .data import Dataset, default_cache_dir, load_dataset, locate, stratified_subset
from .errors import CacheError, ConfigError, TrainingError
from .model import count_parameters, resnet18
from .progress import progress_bar
from .provenance import now, provenance
from .store import directory_lock, load_torch, read_json, save_arrays, save_torch, sha256_array, write_json
from .upscale import default_device, upscale_cached

RECORD_SCHEMA = 1
CHECKPOINT_SCHEMA = 2
EVAL_BATCH = 500  # images per evaluation step (memory only; does not change results)


@dataclass
class VariantData:
    train_x: torch.Tensor  # uint8 (N, 3, H, W) on the training device
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    identity: dict  # data and upscaler identity, for the record
    upscale_seconds: float


def run_dir(out: str | os.PathLike, config: TrainConfig) -> Path:
    return Path(out) / config.profile / config.variant / f"seed{config.seed}"


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
        kwargs = dict(device=device, weights=config.sr_weights, progress=progress)
        train_x, upscaler_identity = upscale_cached(train_x, variant.method, variant.scale, cache, **kwargs)
        test_x, _ = upscale_cached(test_x, variant.method, variant.scale, cache, **kwargs)
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


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision == "fp32":
        return False
    if precision == "bf16":
        return True
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Without native bf16 (AVX-512 BF16 / AMX) CPU autocast emulates it and runs slower than fp32.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def normalise(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1] (mean 0.5, std 0.5, as the reference's ToTensor+Normalize)."""
    x = x.float().div_(127.5).sub_(1.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def epoch_order(seed: int, epoch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The permutation and flip mask of one epoch; independent of variant and device."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g), torch.rand(n, generator=g) < 0.5


def use_channels_last(config: TrainConfig, device: torch.device) -> bool:
    # oneDNN's channels_last backward stalls for minutes at width 4 on AVX2 CPUs (some batch sizes).
    return config.channels_last and (device.type != "cpu" or config.width >= 8)


def train_epoch(model, optimizer, data: VariantData, config: TrainConfig, epoch: int, bf16: bool,
                channels_last: bool, progress: bool) -> tuple[float, float, int]:

    model.train()
    n = len(data.train_y)
    order, flips = epoch_order(config.seed, epoch, n)
    order, flips = order.to(data.train_x.device), flips.to(data.train_x.device)
    loss_sum = torch.zeros((), device=data.train_x.device)
    correct = torch.zeros((), dtype=torch.long, device=data.train_x.device)
    steps = range(0, n, config.batch_size)
    for start in progress_bar(steps, desc=f"epoch {epoch + 1}/{config.epochs}", leave=False, disable=not progress,
                      mininterval=1, unit="batch"):
        idx = order[start:start + config.batch_size]
        x = data.train_x[idx]
        x = torch.where(flips[idx].view(-1, 1, 1, 1), x.flip(3), x)
        x, y = normalise(x, channels_last), data.train_y[idx]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach().float() * len(y)
        correct += (logits.argmax(1) == y).sum()
    return loss_sum.item() / n, 100.0 * correct.item() / n, n


def evaluate(model, x_all: torch.Tensor, y_all: torch.Tensor, bf16: bool,
             channels_last: bool) -> tuple[float, float, np.ndarray]:
    """Test loss, accuracy (%) and per-image predictions."""
    model.eval()
    preds, loss_sum = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(y_all), EVAL_BATCH):
            x, y = normalise(x_all[start:start + EVAL_BATCH], channels_last), y_all[start:start + EVAL_BATCH]
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss_sum += F.cross_entropy(logits.float(), y, reduction="sum").item()
            preds.append(logits.argmax(1))
    preds_np = torch.cat(preds).cpu().numpy()
    accuracy = 100.0 * float((preds_np == y_all.cpu().numpy()).mean())
    return loss_sum / len(y_all), accuracy, preds_np


def summarise(epochs: list[dict]) -> dict:
    accs = [e["test_acc"] for e in epochs]
    if not accs:
        return {}
    best = int(np.argmax(accs))
    return {
        "max_test_acc": accs[best],
        "best_epoch": best + 1,
        "top5_mean_test_acc": float(np.mean(sorted(accs)[-5:])),
        "final_test_acc": accs[-1],
        "train_seconds": float(sum(e["seconds"] for e in epochs)),
        "mean_train_images_per_s": float(np.mean([e["train_images_per_s"] for e in epochs])),
    }


def find_finished(out: str | os.PathLike, config: TrainConfig) -> dict | None:
    """The finished record for exactly this config, if one exists."""
    path = run_dir(out, config) / "record.json"
    if not path.is_file():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None
    return record if record.get("config") == config.to_dict() and record.get("status") == "complete" else None


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return default_device()
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"unknown device {device!r}; use --device cpu or --device cuda") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for, but torch sees no CUDA GPU; use --device cpu (or leave "
                          "--device out to pick the GPU when there is one)")
    return device


def train(config: TrainConfig, out: str | os.PathLike = "runs", data: str | None = None,
          cache_dir: str | os.PathLike | None = None, device: str | torch.device | None = None,
          progress: bool = True, force: bool = False, log=print) -> dict:
    """Run (or resume, or reuse) one training run and return its record.

    The run directory stays locked meanwhile, so a second `train` of the same run stops with a
    LockError instead of writing checkpoints over the first one's.
    """
    directory = run_dir(out, config)
    holder = f"srlib train --variant {config.variant} --profile {config.profile} --seed {config.seed}"
    with directory_lock(directory, holder):
        finished = None if force else find_finished(out, config)
        if finished is not None and finished["data"]["dataset"]["path"] == str(Path(locate(data)["path"]).resolve()):
            log(f"[srlib] reusing finished run {directory} (same config and data; --force to retrain)")
            return finished
        return _train(config, directory, data, cache_dir, resolve_device(device), progress, force, log)


def _train(config: TrainConfig, directory: Path, data: str | None, cache_dir: str | os.PathLike | None,
           device: torch.device, progress: bool, force: bool, log) -> dict:
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    started_at, started = now(), time.perf_counter()
    dataset = load_dataset(data, cache_dir=cache_dir)
    variant_data = prepare_data(config, dataset, device, cache_dir, progress)
    bf16 = use_bf16(config.precision, device)
    channels_last = use_channels_last(config, device)

    torch.manual_seed(config.seed)
    model = resnet18(num_classes=len(dataset.classes), width=config.width)
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.lr_step, gamma=config.lr_gamma)
    epochs: list[dict] = []
    resumes: list[dict] = []
    checkpoint = directory / "checkpoint.pt"
    if checkpoint.is_file() and not force:
        epochs, resumes = _resume(checkpoint, model, optimizer, scheduler, config, variant_data.identity, log)
    step_model = torch.compile(model) if config.compile else model
    preds = None

    for epoch in range(len(epochs), config.epochs):
        lr = optimizer.param_groups[0]["lr"]
        t0 = time.perf_counter()
        train_loss, train_acc, n = train_epoch(step_model, optimizer, variant_data, config, epoch, bf16,
                                               channels_last, progress)
        seconds = time.perf_counter() - t0
        scheduler.step()
        test_loss, test_acc, preds = evaluate(step_model, variant_data.test_x, variant_data.test_y, bf16, channels_last)
        _stop_if_diverged(epoch, train_loss, test_loss, model, checkpoint, len(epochs))
        epochs.append(dict(epoch=epoch + 1, lr=lr, train_loss=train_loss, train_acc=train_acc, test_loss=test_loss,
                           test_acc=test_acc, seconds=seconds, train_images_per_s=n / seconds))
        log(f"[srlib] {config.variant} seed {config.seed} epoch {epoch + 1}/{config.epochs}: "
            f"loss {train_loss:.4f} train {train_acc:.2f}% test {test_acc:.2f}% "
            f"({seconds:.1f}s, {n / seconds:.0f} img/s)")
        save_torch(checkpoint, _checkpoint_state(model, optimizer, scheduler, epochs, resumes, config,
                                                 variant_data.identity))

    if preds is None:  # nothing trained in this process (resumed after the last epoch, or 0 epochs)
        _, _, preds = evaluate(step_model, variant_data.test_x, variant_data.test_y, bf16, channels_last)
    record = {
        "schema": RECORD_SCHEMA,
        "status": "complete",
        "config": config.to_dict(),
        "model": {"name": "resnet18", "width": config.width, "parameters": count_parameters(model)},
        "input_px": int(variant_data.train_x.shape[-1]),
        "precision": "bf16-autocast" if bf16 else "fp32",
        "memory_format": "channels_last" if channels_last else "contiguous",
        "epochs": epochs,
        "summary": summarise(epochs),
        "data": variant_data.identity,
        "upscale_seconds": variant_data.upscale_seconds,
        "predictions": "predictions.npz",
        "resumed_from_epoch": resumes[-1]["from_epoch"] if resumes else None,
        "resumes": resumes,  # every interruption this run recovered from; the metrics are as if there was none
        "started": started_at,
        "finished": now(),
        "wall_seconds": time.perf_counter() - started,
        "provenance": provenance(device),
    }
    save_arrays(directory / "predictions.npz",
                {"predictions": preds.astype(np.int64), "labels": variant_data.test_y.cpu().numpy()},
                {"epoch": len(epochs), "classes": list(dataset.classes)})
    write_json(directory / "record.json", record)
    checkpoint.unlink(missing_ok=True)
    return record


def _stop_if_diverged(epoch: int, train_loss: float, test_loss: float, model: torch.nn.Module, checkpoint: Path,
                      last_good: int) -> None:
    """Raise before a diverged model can overwrite the last good checkpoint."""
    bad = [f"{name} loss {value}" for name, value in (("train", train_loss), ("test", test_loss))
           if not math.isfinite(value)]
    if not _weights_finite(model):
        bad.append("non-finite weights")
    if not bad:
        return
    kept = (f"the last good checkpoint (epoch {last_good}) is kept in {checkpoint}, and rerunning the same "
            "command resumes from it" if last_good else "no epoch had finished, so there is no checkpoint")
    raise TrainingError(f"loss became non-finite in epoch {epoch + 1} ({', '.join(bad)}); stopped without saving "
                        f"that epoch: {kept}. Fix: lower the learning rate (--lr) or use --precision fp32, then rerun "
                        "(a changed setting starts the run afresh)")


def _weights_finite(model: torch.nn.Module) -> bool:
    checks = [torch.isfinite(t).all() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.stack(checks).all()) if checks else True


def rng_states() -> dict:
    """The global RNG states (torch CPU and CUDA, numpy, random), in a form torch.load(weights_only) accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "python": list(random.getstate())}


def set_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))


def _checkpoint_state(model, optimizer, scheduler, epochs: list[dict], resumes: list[dict], config: TrainConfig,
                      identity: dict) -> dict:
    return {"schema": CHECKPOINT_SCHEMA, "config": config.to_dict(), "data": _data_key(identity),
            "epoch": len(epochs), "epochs": epochs, "resumes": resumes, "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_states()}


def _data_key(identity: dict) -> str:
    """What the data is (content hashes, subset, upscaler), not where it lies: a moved folder still resumes."""
    key = json.loads(json.dumps(identity))
    key["dataset"].pop("path", None)
    key["upscaler"].pop("weights_path", None)
    return json.dumps(key, sort_keys=True)


def _resume(path: Path, model, optimizer, scheduler, config: TrainConfig, identity: dict,
            log) -> tuple[list[dict], list[dict]]:
    """Load the checkpoint into model, optimizer, scheduler and RNGs; ([], []) when it cannot be used."""
    try:
        state = load_torch(path)
    except CacheError as exc:
        log(f"[srlib] {exc}; not using it, starting this run from scratch")
        return [], []
    why = ("it is from an older srlib" if state.get("schema") != CHECKPOINT_SCHEMA else
           "it was made with another config" if state.get("config") != config.to_dict() else
           "it was made from other data" if state.get("data") != _data_key(identity) else None)
    if why:
        log(f"[srlib] checkpoint {path}: {why}; starting this run from scratch")
        return [], []
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state["rng"])
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        raise TrainingError(f"checkpoint {path} does not fit this run ({type(exc).__name__}: {exc}); delete it "
                            "or rerun with --force to start afresh") from exc
    log(f"[srlib] resuming {path.parent} after epoch {state['epoch']} of {config.epochs}")
    return state["epochs"], [*state["resumes"], {"from_epoch": state["epoch"], "at": now()}]
