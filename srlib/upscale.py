"""Upscalers (bicubic, nearest, pretrained SR via spandrel), batched and cached on disk.

An upscaler maps uint8 images (N, 3, H, W) to uint8 (N, 3, sH, sW). The registry makes the
methods data, not if-chains; every upscaled array is cached under a key made of the input
images' hash, the method, the scale and the weights' sha256, so it is computed once and shared
by every run and seed.
"""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .errors import WeightsError
from .progress import progress_bar
from .store import load_or_build, sha256_array, sha256_file


@dataclass(frozen=True)
class SRWeights:
    """A pretrained checkpoint we know by hash; the original file is the download fallback."""

    file: str
    sha256: str
    original_file: str
    original_sha256: str
    url: str


_DCTLSA_COMMIT = "0756bc8554e86c62f1ae4355eed0f05a8feaa2bf"
_DCTLSA_URL = f"https://github.com/zengkun301/DCTLSA/raw/{_DCTLSA_COMMIT}/pretrained/X{{s}}.pt"
DEFAULT_SR_WEIGHTS: dict[int, SRWeights] = {
    2: SRWeights("dctlsa_x2.safetensors", "c7542e3e252382041ed00a8dbd5b3340959ff7d09b19d10249a1097a812a62d3",
                 "X2.pt", "df08c0b6dc0a034c63b6d425586ac3c13ed227db75bb0282b012b4220e943eb9", _DCTLSA_URL.format(s=2)),
    4: SRWeights("dctlsa_x4.safetensors", "c81d7324efd69eafb5234b5a82a823474eada5792afae88099fee5579f37acf0",
                 "X4.pt", "58d822beb3a1bf1d3e5dc91371a5686debda6bdbf246a4484805bda37cb18c06", _DCTLSA_URL.format(s=4)),
}
SR_SOURCE = ("DCTLSA (Zeng et al., IEEE TIM 2023), official weights from github.com/zengkun301/DCTLSA "
             f"@ {_DCTLSA_COMMIT}, trained on DIV2K (bicubic), Apache-2.0")


@dataclass
class Upscaler:
    method: str
    scale: int
    run: Callable[[torch.Tensor], torch.Tensor]  # uint8 (n,3,h,w) on `device` -> uint8 (n,3,sh,sw)
    device: torch.device
    chunk_size: int  # images per call; ~16 is fastest on CPU for SR
    identity: dict = field(default_factory=dict)


UPSCALERS: dict[str, Callable[..., Upscaler]] = {}


def register(name: str) -> Callable:
    def add(builder: Callable[..., Upscaler]) -> Callable[..., Upscaler]:
        UPSCALERS[name] = builder
        return builder

    return add


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp_(0, 255).to(torch.uint8)


@register("bicubic")
def bicubic(scale: int, device: torch.device | None = None, **_) -> Upscaler:
    def run(x: torch.Tensor) -> torch.Tensor:
        return _to_uint8(F.interpolate(x.float(), scale_factor=scale, mode="bicubic", align_corners=False))

    device = device or default_device()
    identity = {"method": "bicubic", "scale": scale, "impl": "torch.nn.functional.interpolate(bicubic, "
                "align_corners=False), rounded and clamped to uint8"}
    return Upscaler("bicubic", scale, run, device, 1024, identity)


@register("nearest")
def nearest(scale: int, device: torch.device | None = None, **_) -> Upscaler:
    def run(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)

    identity = {"method": "nearest", "scale": scale, "impl": "pixel replication"}
    return Upscaler("nearest", scale, run, device or default_device(), 1024, identity)


@register("sr")
def super_resolution(scale: int, device: torch.device | None = None, weights: str | None = None,
                     chunk_size: int | None = None, **_) -> Upscaler:
    device = device or default_device()
    path, expected = resolve_sr_weights(scale, weights)
    model, descriptor = load_sr_model(path, scale)
    model = model.to(device)
    minimum = descriptor.size_requirements.minimum

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        pad = max(0, (minimum - min(x.shape[-2:]) + 1) // 2)
        if pad:  # inputs below the model's minimum size: reflect-pad, then crop the output back
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        y = model(x)
        if pad:
            p = pad * scale
            y = y[..., p:-p, p:-p]
        return _to_uint8(y.clamp_(0, 1).mul_(255))

    identity = {
        "method": "sr", "scale": scale, "weights_path": str(Path(path).resolve()),
        "weights_sha256": sha256_file(path), "architecture": descriptor.architecture.id,
        "parameters": sum(p.numel() for p in model.parameters()),
        "source": SR_SOURCE if expected else "user-supplied checkpoint (--sr-weights)",
    }
    return Upscaler("sr", scale, run, device, chunk_size or (16 if device.type == "cpu" else 512), identity)


def default_weights_dir() -> Path:
    return Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))


def resolve_sr_weights(scale: int, weights: str | os.PathLike | None = None,
                       weights_dir: str | os.PathLike | None = None) -> tuple[Path, str | None]:
    """Path of the checkpoint to use (and its expected sha256, for the defaults)."""
    if weights is not None:
        path = Path(weights)
        if path.is_dir():
            raise WeightsError(f"SR weights path {path} is a directory; pass the checkpoint file to --sr-weights")
        if not path.is_file():
            raise WeightsError(f"SR weights file {path} does not exist; check --sr-weights")
        return path, None
    if scale not in DEFAULT_SR_WEIGHTS:
        raise WeightsError(f"no default SR weights for x{scale} (have x{sorted(DEFAULT_SR_WEIGHTS)}); "
                           "pass a checkpoint with --sr-weights")
    spec = DEFAULT_SR_WEIGHTS[scale]
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    tried = []
    for name, sha in ((spec.file, spec.sha256), (spec.original_file, spec.original_sha256)):
        path = root / name
        if path.is_file():
            actual = sha256_file(path)
            if actual != sha:
                raise WeightsError(
                    f"{path} has sha256 {actual[:16]}..., expected {sha[:16]}... (damaged or a different file); "
                    "delete it and restore the official file")
            return path, sha
        tried.append(str(path))
    return _download_weights(spec, root, tried), spec.original_sha256


def _download_weights(spec: SRWeights, root: Path, tried: list[str]) -> Path:
    target = root / spec.original_file
    try:
        root.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(spec.url, timeout=20) as response:
            payload = response.read()
    except (TimeoutError, OSError) as exc:
        raise WeightsError(
            f"SR weights not found (tried {', '.join(tried)}) and the download from {spec.url} failed "
            f"({exc}). Fix: set SRLIB_WEIGHTS_DIR to a folder holding {spec.file} "
            "(an offline copy: SRLIB_WEIGHTS_DIR=../shared/weights) or pass --sr-weights PATH"
        ) from exc
    import hashlib

    from .store import atomic_write_bytes

    if hashlib.sha256(payload).hexdigest() != spec.original_sha256:
        raise WeightsError(f"downloaded {spec.url} does not match its sha256; not saved. Try again later")
    atomic_write_bytes(target, lambda f: f.write(payload))
    return target


def load_sr_model(path: str | os.PathLike, scale: int) -> tuple[torch.nn.Module, object]:
    """Load a spandrel checkpoint and refuse anything that is not a 3-channel x`scale` SR model."""
    import spandrel

    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError as exc:
        raise WeightsError(f"{path} is not a model architecture spandrel recognises; pass an SR checkpoint") from exc
    except Exception as exc:  # truncated files, pickles of other things, random bytes
        raise WeightsError(f"{path} could not be loaded as a model ({type(exc).__name__}: {exc}); "
                           "pass a valid SR checkpoint (.safetensors or .pth)") from exc
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.purpose != "SR":
        raise WeightsError(f"{path} is a {descriptor.architecture.id} model for {descriptor.purpose!r}, "
                           "not single-image super-resolution; pass an SR checkpoint")
    if descriptor.scale != scale:
        raise WeightsError(f"{path} is a x{descriptor.scale} SR model, but x{scale} was requested; "
                           f"pass x{scale} weights")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise WeightsError(f"{path} maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
                           "an RGB model is needed")
    return descriptor.model.eval(), descriptor


def build_upscaler(method: str, scale: int, **kwargs) -> Upscaler:
    if method not in UPSCALERS:
        raise WeightsError(f"unknown upscaling method {method!r}; choose one of: {', '.join(UPSCALERS)}")
    return UPSCALERS[method](scale, **kwargs)


def upscale(images: np.ndarray, upscaler: Upscaler, progress: bool = True, desc: str = "") -> np.ndarray:
    """Upscale uint8 images in chunks; returns a new uint8 array (N, 3, sH, sW)."""

    n, c, h, w = images.shape
    s = upscaler.scale
    out = np.empty((n, c, h * s, w * s), dtype=np.uint8)
    step = upscaler.chunk_size
    bar = progress_bar(total=n, desc=desc or f"{upscaler.method} x{s}", unit="img", disable=not progress, mininterval=1)
    for start in range(0, n, step):
        chunk = torch.from_numpy(images[start:start + step]).to(upscaler.device)
        out[start:start + step] = upscaler.run(chunk).cpu().numpy()
        bar.update(len(chunk))
    bar.close()
    return out


def upscale_cached(images: np.ndarray, method: str, scale: int, cache_dir: str | os.PathLike,
                   progress: bool = True, **kwargs) -> tuple[np.ndarray, dict]:
    """`upscale` with an on-disk cache keyed by (input hash, method, scale, weights sha256)."""
    upscaler = build_upscaler(method, scale, **kwargs)
    input_hash = sha256_array(images)
    weights_key = upscaler.identity.get("weights_sha256", "none")[:16]
    path = Path(cache_dir) / "upscaled" / f"{method}_x{scale}_{input_hash[:16]}_{weights_key}.npz"

    def build() -> tuple[dict, dict]:
        return {"images": upscale(images, upscaler, progress)}, {"input_sha256": input_hash, **upscaler.identity}

    arrays, _ = load_or_build(path, build)
    return arrays["images"], {**upscaler.identity, "input_sha256": input_hash, "cache": str(path)}
