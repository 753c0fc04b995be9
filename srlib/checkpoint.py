"""Epoch checkpoints: model, optimizer, scheduler and RNG states, so a resumed run replays exactly.

A checkpoint belongs to one run: it is used only when its run identity (srlib.runs) and its data key
match; otherwise the run starts afresh and says why.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import torch

from .errors import CacheError, TrainingError
from .provenance import now
from .runs import run_identity
from .store import load_torch, save_torch

CHECKPOINT_SCHEMA = 3


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


def data_key(identity: dict) -> str:
    """What the data is (content hashes, subset, upscaler), not where it lies: a moved folder still resumes."""
    key = json.loads(json.dumps(identity))
    key["dataset"] = {"content_sha256": key["dataset"].get("content_sha256")}
    key["upscaler"].pop("weights_path", None)
    # The upscaler's device and precision change SR pixels slightly, and so the data; its wording does not.
    key["upscaler"].pop("source", None)
    return json.dumps(key, sort_keys=True)


def save_checkpoint(path: Path, model, optimizer, scheduler, epochs: list[dict], resumes: list[dict], config,
                    identity: dict) -> None:
    save_torch(path, {"schema": CHECKPOINT_SCHEMA, "config": config.to_dict(), "data": data_key(identity),
                      "epoch": len(epochs), "epochs": epochs, "resumes": resumes, "model": model.state_dict(),
                      "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                      "rng": rng_states()})


def load_checkpoint(path: Path, model, optimizer, scheduler, config, identity: dict,
                    log) -> tuple[list[dict], list[dict]]:
    """Load the checkpoint into model, optimizer, scheduler and RNGs; ([], []) when it cannot be used."""
    try:
        state = load_torch(path)
    except CacheError as exc:
        log(f"[srlib] {exc}; not using it, starting this run from scratch")
        return [], []
    why = ("it is from an older srlib" if state.get("schema") != CHECKPOINT_SCHEMA else
           "it was made with another config" if run_identity(state.get("config", {})) != run_identity(config) else
           "it was made from other data" if state.get("data") != data_key(identity) else None)
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
