"""Upscalers (bicubic, nearest, pretrained SR via spandrel): uint8 (N, 3, H, W) -> uint8 (N, 3, sH, sW).

Each upscaled array is cached under (input hash, method, scale, weights sha256), so every run and seed
shares it. `SR_CHECKPOINTS` lists the SR weights known by hash: method `sr` uses the default model
(DCTLSA) or a `--sr-weights` file, `sr@<model>` a registered one; their files are looked up in
`SRLIB_WEIGHTS_DIR` (default ./weights), else downloaded and verified. torch is imported inside
functions: `srlib.config` reads this registry, and `srlib --help` should not pay for torch.
"""

from __future__ import annotations

import hashlib
import os
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import WeightsError
from .progress import ImageMeter, progress_bar
from .store import atomic_write_bytes, load_or_build, sha256_array, sha256_file

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class SRCheckpoint:
    """A pretrained SR checkpoint we know by hash (the file as published, or a lossless conversion)."""

    model: str  # registry name, used in method (`sr@<model>`) and variant (`sr_x4@<model>`) names
    scale: int
    file: str  # file name in the weights folder
    sha256: str
    architecture: str  # spandrel's architecture id, checked when the file is loaded
    kind: str  # "psnr" (pixel loss), "gan" (adversarial + perceptual), "real-world", "real-world-gan"
    license: str
    source: str  # who published it, where, trained on what: one line for records and the report
    url: str | None  # upstream download; None = only an offline copy exists
    # The download's own name and hash when it is not `file` byte for byte (DCTLSA: the authors'
    # .pt files, of which `file` is a safetensors conversion); it is saved and used under that name.
    url_file: str | None = None
    url_sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.model} x{self.scale}"


_DCTLSA_COMMIT = "0756bc8554e86c62f1ae4355eed0f05a8feaa2bf"
_DCTLSA_SOURCE = ("DCTLSA (Zeng et al., IEEE TIM 2023), official weights from github.com/zengkun301/DCTLSA "
                  f"@ {_DCTLSA_COMMIT[:12]}, trained on DIV2K (bicubic)")
_SWIFT_SOURCE = ("Swift-SRGAN (Krishnan et al. 2021), official release v0.1 of github.com/Koushik0901/Swift-SRGAN, "
                 "trained on DIV2K + Flickr2K (bicubic)")
_DITN_COMMIT = "98352a85ab2ac19e97c86c87a2a907021c814a5d"
_DITN_SOURCE = ("DITN (Liu et al. 2023, 'Unfolding Once is Enough'), the authors' real-world SR model{gan} from "
                f"github.com/yongliuy/DITN @ {_DITN_COMMIT[:12]}; training data not stated")


def _dctlsa(scale: int, sha256: str, pt_sha256: str) -> SRCheckpoint:
    return SRCheckpoint(
        "dctlsa", scale, f"dctlsa_x{scale}.safetensors", sha256, "DCTLSA", "psnr", "Apache-2.0", _DCTLSA_SOURCE,
        f"https://github.com/zengkun301/DCTLSA/raw/{_DCTLSA_COMMIT}/pretrained/X{scale}.pt", f"X{scale}.pt",
        pt_sha256)


def _swift(scale: int, sha256: str) -> SRCheckpoint:
    return SRCheckpoint(
        "swift-srgan", scale, f"swift_srgan_x{scale}.pth", sha256, "SwiftSRGAN", "gan", "CC0-1.0", _SWIFT_SOURCE,
        f"https://github.com/Koushik0901/Swift-SRGAN/releases/download/v0.1/swift_srgan_{scale}x.pth.tar")


def _ditn(gan: bool, sha256: str) -> SRCheckpoint:
    name, upstream = ("ditn-real-gan", "DITN_Real_GAN_x4.pth") if gan else ("ditn-real", "DITN_Real_x4.pth")
    return SRCheckpoint(
        name, 4, f"{name.replace('-', '_')}_x4.pth", sha256, "DITN", "real-world-gan" if gan else "real-world",
        "Apache-2.0", _DITN_SOURCE.format(gan=" (GAN-trained)" if gan else ""),
        f"https://github.com/yongliuy/DITN/raw/{_DITN_COMMIT}/checkpoints/{upstream}")


# Hashes, sources and licenses as recorded in the offline copy's SOURCE.md (../shared/weights).
SR_CHECKPOINTS: tuple[SRCheckpoint, ...] = (
    _dctlsa(2, "c7542e3e252382041ed00a8dbd5b3340959ff7d09b19d10249a1097a812a62d3",
            "df08c0b6dc0a034c63b6d425586ac3c13ed227db75bb0282b012b4220e943eb9"),
    _dctlsa(3, "66420f08da381edab30db6e59cb2d2b28786bafada499965d0b402d446c96699",
            "4af9979200d385177ea5284215f144a85cebf5037014af164b1efe5a5beea86d"),
    _dctlsa(4, "c81d7324efd69eafb5234b5a82a823474eada5792afae88099fee5579f37acf0",
            "58d822beb3a1bf1d3e5dc91371a5686debda6bdbf246a4484805bda37cb18c06"),
    _swift(2, "b57a94a2be1e84eded4059aabce31e768a0c1e43887a14d457a586f3b1fcd877"),
    _swift(4, "f741441dccb163c394afe095f76a5ca4a85732e699032732dc29320a900a609e"),
    _ditn(False, "989dc21e2379c6924a6bd32696df0f1fa8cfd43dd557e1ae4126b97708695b5a"),
    _ditn(True, "a103f07b5c605c2e23c23bfe44a880e10e7c019388a516f657fb13b0e7df1097"),
)
DEFAULT_SR_MODEL = "dctlsa"


def sr_models() -> list[str]:
    """Registered SR model names, in registry order (the default first)."""
    return list(dict.fromkeys(c.model for c in SR_CHECKPOINTS))


def sr_checkpoint(model: str, scale: int) -> SRCheckpoint:
    """The registry entry for `model` at x`scale`; WeightsError naming what exists otherwise."""
    for c in SR_CHECKPOINTS:
        if c.model == model and c.scale == scale:
            return c
    scales = [c.scale for c in SR_CHECKPOINTS if c.model == model]
    if not scales:
        raise WeightsError(f"unknown SR model {model!r}; registered: {', '.join(sr_models())}")
    raise WeightsError(f"SR model {model!r} has no x{scale} checkpoint (it has x{', x'.join(map(str, scales))}); "
                       "choose another scale or model")


def sr_method(model: str) -> str:
    """The upscaling method name for a registered model: `sr` for the default, `sr@<model>` otherwise."""
    return "sr" if model == DEFAULT_SR_MODEL else f"sr@{model}"


@dataclass
class Upscaler:
    method: str
    scale: int
    run: Callable[[torch.Tensor], torch.Tensor]  # uint8 (n,3,h,w) on `device` -> uint8 (n,3,sh,sw)
    device: torch.device
    chunk_size: int  # images per call; ~16 is fastest on CPU for SR
    identity: dict = field(default_factory=dict)


def default_device() -> torch.device:
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    import torch

    return x.round().clamp_(0, 255).to(torch.uint8)


def bicubic(scale: int, device: torch.device | None = None, **_) -> Upscaler:
    import torch.nn.functional as F

    def run(x: torch.Tensor) -> torch.Tensor:
        return _to_uint8(F.interpolate(x.float(), scale_factor=scale, mode="bicubic", align_corners=False))

    identity = {"method": "bicubic", "scale": scale, "impl": "torch.nn.functional.interpolate(bicubic, "
                "align_corners=False), rounded and clamped to uint8"}
    return Upscaler("bicubic", scale, run, device or default_device(), 1024, identity)


def nearest(scale: int, device: torch.device | None = None, **_) -> Upscaler:
    def run(x: torch.Tensor) -> torch.Tensor:
        return x.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)

    identity = {"method": "nearest", "scale": scale, "impl": "pixel replication"}
    return Upscaler("nearest", scale, run, device or default_device(), 1024, identity)


def _pads(size: int, minimum: int, multiple_of: int) -> tuple[int, int]:
    """(before, after) padding that brings `size` to the model's minimum and multiple."""
    total = -(-max(size, minimum) // multiple_of) * multiple_of - size
    return total // 2, total - total // 2


def super_resolution(scale: int, device: torch.device | None = None, weights: str | None = None,
                     chunk_size: int | None = None, model: str | None = None,
                     weights_dir: str | os.PathLike | None = None, **_) -> Upscaler:
    """A spandrel SR model: the registered `model` (default DCTLSA), or the checkpoint file `weights`."""
    device = device or default_device()
    if weights is not None and model is not None:
        raise WeightsError(f"--sr-weights replaces the default SR model (variants sr_x2/sr_x4); sr@{model} "
                           "always uses its registered weights: drop --sr-weights or use sr_x2/sr_x4")
    entry = None if weights is not None else sr_checkpoint(model or DEFAULT_SR_MODEL, scale)
    path, sha = (_user_weights(weights), None) if entry is None else resolve_checkpoint(entry, weights_dir)
    net, descriptor = load_sr_model(path, scale)
    if entry is not None and descriptor.architecture.id != entry.architecture:
        raise WeightsError(f"{path} is a {descriptor.architecture.id} model, the registry expects "
                           f"{entry.architecture}; delete it and restore the official file")
    net = net.to(device)
    identity = {
        "method": "sr" if entry is None else sr_method(entry.model), "scale": scale,
        "sr_model": entry.model if entry else None, "kind": entry.kind if entry else None,
        "license": entry.license if entry else None,
        "weights_path": str(Path(path).resolve()), "weights_sha256": sha or sha256_file(path),
        "architecture": descriptor.architecture.id,
        "parameters": sum(p.numel() for p in net.parameters()),
        "source": entry.source if entry else "user-supplied checkpoint (--sr-weights)",
    }
    run = _padded_forward(net, scale, descriptor.size_requirements)
    return Upscaler(identity["method"], scale, run, device, chunk_size or (16 if device.type == "cpu" else 512),
                    identity)


def _padded_forward(net: torch.nn.Module, scale: int, req) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 -> uint8 through `net`; inputs below its size requirements (`req`: spandrel's minimum and
    multiple) are padded by reflection and the output cropped back."""
    import torch
    import torch.nn.functional as F

    @torch.inference_mode()
    def run(x: torch.Tensor) -> torch.Tensor:
        x = x.float().div_(255)
        (top, bottom), (left, right) = (_pads(n, req.minimum, req.multiple_of) for n in x.shape[-2:])
        if top or bottom or left or right:
            mode = "reflect" if max(top, bottom, left, right) < min(x.shape[-2:]) else "replicate"
            x = F.pad(x, (left, right, top, bottom), mode=mode)
        y = net(x)
        h, w = y.shape[-2:]
        y = y[..., top * scale:h - bottom * scale, left * scale:w - right * scale]
        return _to_uint8(y.clamp_(0, 1).mul_(255))

    return run


UPSCALERS: dict[str, Callable[..., Upscaler]] = {"bicubic": bicubic, "nearest": nearest, "sr": super_resolution}


def default_weights_dir() -> Path:
    return Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))


def _user_weights(weights: str | os.PathLike) -> Path:
    path = Path(weights)
    if path.is_dir():
        raise WeightsError(f"SR weights path {path} is a directory; pass the checkpoint file to --sr-weights")
    if not path.is_file():
        raise WeightsError(f"SR weights file {path} does not exist; check --sr-weights")
    return path


def resolve_checkpoint(entry: SRCheckpoint, weights_dir: str | os.PathLike | None = None) -> tuple[Path, str]:
    """The verified file of a registered checkpoint: from the weights folder, else downloaded into it."""
    root = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    found = local_checkpoint(entry, root)
    if found is not None:
        return found
    return _download(entry, root), entry.url_sha256 or entry.sha256


def local_checkpoint(entry: SRCheckpoint, root: Path) -> tuple[Path, str] | None:
    """The registered checkpoint's file in `root` and its sha256, verified; None when it is not there.
    WeightsError when a file of that name is there but is not the official one."""
    for name, sha in ((entry.file, entry.sha256), (entry.url_file, entry.url_sha256)):
        if name is None or not (path := root / name).is_file():
            continue
        actual = sha256_file(path)
        if actual != sha:
            raise WeightsError(f"SR weights {path} have sha256 {actual[:16]}..., expected {sha[:16]}... for "
                               f"{entry.label} (damaged or a different file); delete it and restore the official file")
        return path, sha
    return None


def _download(entry: SRCheckpoint, root: Path) -> Path:
    fix = (f"Fix: put {entry.file} into {root} or point SRLIB_WEIGHTS_DIR at a folder that holds it "
           "(offline copy: SRLIB_WEIGHTS_DIR=../shared/weights)")
    fix += ", or pass --sr-weights PATH" if entry.model == DEFAULT_SR_MODEL else ", or leave this model out"
    if entry.url is None:
        raise WeightsError(f"SR weights {entry.file} ({entry.label}) are not in {root} and have no download "
                           f"URL. {fix}")
    try:
        with urllib.request.urlopen(entry.url, timeout=20) as response:
            payload = response.read()
    except (TimeoutError, OSError) as exc:
        raise WeightsError(f"SR weights {entry.file} ({entry.label}) are not in {root} and the download from "
                           f"{entry.url} failed ({exc}). {fix}") from exc
    expected = entry.url_sha256 or entry.sha256
    if hashlib.sha256(payload).hexdigest() != expected:
        raise WeightsError(f"the download from {entry.url} does not match the sha256 the registry expects for "
                           f"{entry.label}; not saved. Try again later. {fix}")
    target = root / (entry.url_file or entry.file)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, lambda f: f.write(payload))
    return target


def load_sr_model(path: str | os.PathLike, scale: int | None) -> tuple[torch.nn.Module, object]:
    """Load a spandrel checkpoint and refuse anything that is not a 3-channel SR model (at x`scale`,
    unless `scale` is None)."""
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
    if scale is not None and descriptor.scale != scale:
        raise WeightsError(f"{path} is a x{descriptor.scale} SR model, but x{scale} was requested; "
                           f"pass x{scale} weights")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise WeightsError(f"{path} maps {descriptor.input_channels} to {descriptor.output_channels} channels; "
                           "an RGB model is needed")
    return descriptor.model.eval(), descriptor


def checkpoint_scale(path: str | os.PathLike) -> int:
    """The scale of a user-supplied SR checkpoint (validated as an RGB SR model)."""
    return int(load_sr_model(_user_weights(path), None)[1].scale)


def build_upscaler(method: str, scale: int, **kwargs) -> Upscaler:
    """`method` is a name in UPSCALERS, or `sr@<model>` for a registered SR model."""
    base, _, model = method.partition("@")
    if base not in UPSCALERS or (model and base != "sr"):
        choices = [*UPSCALERS, *(f"sr@{m}" for m in sr_models() if m != DEFAULT_SR_MODEL)]
        raise WeightsError(f"unknown upscaling method {method!r}; choose one of: {', '.join(choices)}")
    if model:
        kwargs["model"] = model
    return UPSCALERS[base](scale, **kwargs)


def upscale(images: np.ndarray, upscaler: Upscaler, progress: bool = True, desc: str = "",
            meter: ImageMeter | None = None) -> np.ndarray:
    """Upscale uint8 images in chunks; returns a new uint8 array (N, 3, sH, sW). `meter`: counts the images
    (one meter over several arrays), else a bar of their own."""
    import torch

    (n, c, h, w), s, step = images.shape, upscaler.scale, upscaler.chunk_size
    out = np.empty((n, c, h * s, w * s), dtype=np.uint8)
    bar = meter or progress_bar(total=n, desc=desc or f"{upscaler.method} x{s}", unit="img", disable=not progress,
                                mininterval=1)
    for start in range(0, n, step):
        chunk = torch.from_numpy(images[start:start + step]).to(upscaler.device)
        out[start:start + step] = upscaler.run(chunk).cpu().numpy()
        bar.update(len(chunk))
    if meter is None:
        bar.close()
    return out


def upscale_cached(images: np.ndarray, method: str, scale: int, cache_dir: str | os.PathLike,
                   progress: bool = True, **kwargs) -> tuple[np.ndarray, dict]:
    """`upscale` with an on-disk cache keyed by (input hash, method, scale, weights sha256)."""
    upscaler = build_upscaler(method, scale, **kwargs)
    return upscale_splits({"images": images}, upscaler, cache_dir, progress, method)["images"]


def upscale_splits(splits: dict[str, np.ndarray], upscaler: Upscaler, cache_dir: str | os.PathLike,
                   progress: bool = True, method: str | None = None,
                   label: str | None = None) -> dict[str, tuple[np.ndarray, dict]]:
    """Each array upscaled through its own cache (as `upscale_cached`), as one phase of a run: one count
    over the arrays still to build (`upscaling sr_x4: 1,200/2,500 images, 11 img/s`), and a line naming those
    reused from the cache. `label`: the phase's name in the log (default e.g. `sr_x4`)."""
    method, scale = method or upscaler.method, upscaler.scale
    label = f"upscaling {label or f'{method}_x{scale}'}"
    weights_key = upscaler.identity.get("weights_sha256", "none")[:16]
    hashes = {name: sha256_array(images) for name, images in splits.items()}
    paths = {name: upscaled_cache_path(cache_dir, method, scale, hashes[name], weights_key) for name in splits}
    reused = [name for name in splits if paths[name].exists()]
    if reused and progress:
        # upscale_cached's one array is named "images": "1,000 images", not "1,000 images images"
        counts = " + ".join(f"{len(splits[n]):,} {n}".removesuffix(" images") for n in reused)
        print(f"[srlib] {label}: reused the cached {counts} images")
    meter = ImageMeter(label, sum(len(splits[n]) for n in splits if n not in reused), enabled=progress)
    done = {}
    for name, images in splits.items():
        identity = {**upscaler.identity, "input_sha256": hashes[name]}

        def build(images: np.ndarray = images, identity: dict = identity) -> tuple[dict, dict]:
            return {"images": upscale(images, upscaler, meter=meter)}, identity

        arrays, _ = load_or_build(paths[name], build)
        done[name] = arrays["images"], {**identity, "cache": str(paths[name])}
    meter.close()
    return done


def upscaled_cache_path(cache_dir: str | os.PathLike, method: str, scale: int, input_hash: str = "*",
                        weights_key: str = "*") -> Path:
    """Where the upscaled copy of some images is cached (with the defaults: a glob of every such cache)."""
    return Path(cache_dir) / "upscaled" / f"{method}_x{scale}_{input_hash[:16]}_{weights_key}.npz"
