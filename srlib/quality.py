"""SR quality on the data itself: downscale its test images by s, restore them to their size, compare (`PROTOCOL`).

Every registered SR model (and any `--sr-weights` checkpoint) is measured against bicubic on the same images.
SSIM as scikit-image computes it (Gaussian window sigma 1.5, 11x11, K1=0.01, K2=0.03, population covariance)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .config import VARIANTS, Variant
from .data import load_dataset, stratified_subset
from .errors import WeightsError
from .provenance import now, provenance
from .store import write_json
from .upscale import (
    DEFAULT_SR_MODEL,
    SR_CHECKPOINTS,
    build_upscaler,
    checkpoint_scale,
    default_device,
    sr_method,
    sr_models,
    upscale,
)

if TYPE_CHECKING:
    import pandas as pd

PROTOCOL = ("HR = the data's test images; LR = antialiased bicubic downscale by s; restored to their size by "
            "bicubic and by each SR model; PSNR on 8-bit RGB, SSIM (Gaussian, per channel); gains are SR minus "
            "bicubic per image, with 95% t-intervals over images")


def psnr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of uint8 batches (N, C, H, W); identical images give inf."""
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).reshape(len(a), -1).mean(1)
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 / mse)


def _gaussian_kernel(sigma: float = 1.5, truncate: float = 3.5) -> torch.Tensor:
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    return torch.outer(k, k)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 255.0) -> np.ndarray:
    """Per-image SSIM of uint8 batches (N, C, H, W); matches skimage's gaussian_weights=True."""
    x, y = torch.from_numpy(a).double(), torch.from_numpy(b).double()
    c = x.shape[1]
    kernel = _gaussian_kernel().expand(c, 1, -1, -1)

    def blur(t: torch.Tensor) -> torch.Tensor:  # "valid" region only: padding never enters the mean
        return F.conv2d(t, kernel, groups=c)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).numpy()


def downscale(images: np.ndarray, scale: int) -> np.ndarray:
    """Antialiased bicubic downscale (like PIL's BICUBIC resize), rounded to uint8."""
    x = torch.from_numpy(images).float()
    y = F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).numpy()


@dataclass(frozen=True)
class SRCandidate:
    """One SR model at one scale, as measured here: a registered model or a `--sr-weights` file."""

    model: str  # registry name, or the file name of a user checkpoint
    scale: int
    method: str  # "sr" or "sr@<model>" (srlib.upscale.build_upscaler)
    weights: str | None  # the user checkpoint, None for registered models
    kind: str | None  # "psnr", "gan", ... (None: unknown, a user checkpoint)
    variant: str | None  # the training variant that sees these models' pixels, if any


def _variant_of(method: str, scale: int) -> str | None:
    return next((name for name, v in VARIANTS.items() if v == Variant(method, scale)), None)


def sr_candidates(scales: tuple[int, ...] | list[int] = (2, 4), models: list[str] | tuple[str, ...] | None = None,
                  weights: str | os.PathLike | list | tuple | None = None) -> list[SRCandidate]:
    """What `sr_quality` measures, scale by scale: `models` (default: every registered one) at each of
    `scales` they have, and each `weights` file at its own scale (it then stands for sr_x<s>)."""
    models = sr_models() if models is None else list(models)
    unknown = sorted(set(models) - set(sr_models()))
    if unknown:
        raise WeightsError(f"unknown SR model(s) {unknown}; registered: {', '.join(sr_models())}")
    files = [] if weights is None else [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
    user = {}
    for path in files:
        scale = checkpoint_scale(path)
        if scale not in scales:
            raise WeightsError(f"{path} is a x{scale} SR model, but only x{', x'.join(map(str, scales))} are "
                               f"measured; add {scale} to --scales")
        user[scale] = path
    candidates = []
    for scale in scales:
        for c in SR_CHECKPOINTS:
            if c.model in models and c.scale == scale:
                trained = not (c.model == DEFAULT_SR_MODEL and scale in user)  # --sr-weights replaces DCTLSA
                variant = _variant_of(sr_method(c.model), scale) if trained else None
                candidates.append(SRCandidate(c.model, scale, sr_method(c.model), None, c.kind, variant))
        if scale in user:
            name = Path(user[scale]).name
            candidates.append(SRCandidate(name, scale, "sr", str(user[scale]), None, _variant_of("sr", scale)))
    if not candidates:
        raise WeightsError(f"no SR model to measure at x{', x'.join(map(str, scales))} (models {models}); "
                           f"registered: {', '.join(f'{c.model} x{c.scale}' for c in SR_CHECKPOINTS)}")
    return candidates


def compare(hr: np.ndarray, bicubic: np.ndarray, sr: np.ndarray) -> dict:
    """PSNR/SSIM of bicubic and SR restorations of `hr`, and the per-image gains with their 95% CI."""
    from .statistics import mean_ci  # lazily: statistics brings scipy

    p_bic, p_sr = psnr(hr, bicubic), psnr(hr, sr)
    result = {}
    for name, base, restored in (("psnr", p_bic, p_sr), ("ssim", ssim(hr, bicubic), ssim(hr, sr))):
        gain, half = mean_ci(restored - base)
        result |= {f"{name}_bicubic": float(base.mean()), f"{name}_sr": float(restored.mean()), f"{name}_gain": gain,
                   f"{name}_gain_ci95": None if half is None else [gain - half, gain + half]}
    return {**result, "sr_better_psnr_fraction": float((p_sr > p_bic).mean())}


def sr_quality(scales: tuple[int, ...] | list[int] = (2, 4), n: int = 1000, data: str | None = None,
               cache_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               weights: str | os.PathLike | list | tuple | None = None,
               models: list[str] | tuple[str, ...] | None = None, progress: bool = True,
               device: torch.device | None = None) -> dict:
    """PSNR/SSIM of each SR model vs bicubic on `n` stratified test images of the data; written as a record to `out`.

    `models`: registered SR models (default: all); `weights`: `--sr-weights` checkpoint(s), measured at
    their own scale in place of DCTLSA there (they are what sr_x2/sr_x4 train on)."""
    device = device or default_device()
    candidates = sr_candidates(scales, models, weights)
    dataset = load_dataset(data, cache_dir=cache_dir)
    idx = stratified_subset(dataset.test_y, n)
    hr = dataset.test_x[idx]
    results, identities = [], {}
    for scale in scales:
        low = downscale(hr, scale)
        bicubic = upscale(low, build_upscaler("bicubic", scale, device=device), progress=False)
        for c in (c for c in candidates if c.scale == scale):
            upscaler = build_upscaler(c.method, scale, device=device, weights=c.weights)
            started = time.perf_counter()
            sr = upscale(low, upscaler, progress=progress, desc=f"{c.model} x{scale}")
            seconds = time.perf_counter() - started
            results.append({"model": c.model, "kind": c.kind, "variant": c.variant, "scale": scale,
                            "images": int(len(hr)), "low_px": int(low.shape[-1]), **compare(hr, bicubic, sr),
                            "seconds": seconds, "images_per_s": len(hr) / seconds})
            identities[f"{c.model} x{scale}"] = upscaler.identity
    record = {"kind": "sr_quality", "protocol": PROTOCOL, "results": results,
              "data": {**dataset.identity, "test_subset": int(len(idx))}, "upscalers": identities,
              "finished": now(), "provenance": provenance(device)}
    if out is not None:
        write_json(Path(out), record)
    return record


def default_images(profile: str) -> int:
    """How many test images the report's SR-quality page measures for `profile`: 100 for smoke (CI, where every
    second counts), else 1000 (+-0.1 dB intervals on the PSNR gain)."""
    return 100 if profile == "smoke" else 1000


def quality_table(record: dict) -> pd.DataFrame:
    """The record's results for reading: one row per model and scale, one number format per column."""
    import pandas as pd

    def gain(value: float, bounds: list[float] | None, digits: int) -> str:
        text = f"{value:+.{digits}f}"
        return text if bounds is None else f"{text} [{bounds[0]:+.{digits}f}, {bounds[1]:+.{digits}f}]"

    rows = [{
        "scale": f"x{r['scale']} (from {r['low_px']} px)", "model": r["model"], "kind": r["kind"] or "",
        "PSNR bicubic (dB)": f"{r['psnr_bicubic']:.2f}", "PSNR SR (dB)": f"{r['psnr_sr']:.2f}",
        "PSNR gain (dB) [95% CI]": gain(r["psnr_gain"], r["psnr_gain_ci95"], 2),
        "SSIM bicubic": f"{r['ssim_bicubic']:.3f}", "SSIM SR": f"{r['ssim_sr']:.3f}",
        "SSIM gain [95% CI]": gain(r["ssim_gain"], r["ssim_gain_ci95"], 3),
        "SR better (%)": f"{100 * r['sr_better_psnr_fraction']:.0f}",
    } for r in record["results"]]
    return pd.DataFrame(rows).set_index(["scale", "model"])


def summary_lines(record: dict) -> list[str]:
    """One sentence per model and scale, for the report."""
    return [f"- x{r['scale']} (from {r['low_px']} px), {r['model']}: {r['psnr_gain']:+.2f} dB PSNR and "
            f"{r['ssim_gain']:+.3f} SSIM over bicubic; better than bicubic on "
            f"{100 * r['sr_better_psnr_fraction']:.0f}% of {r['images']} images" for r in record["results"]]


def grid_columns(images: np.ndarray, scale: int, candidates: list[SRCandidate]) -> dict[str, np.ndarray]:
    """What the classifier sees at x`scale`: the original, bicubic and one column per SR model."""
    columns = {"original": images}
    for name, method, weights in [("bicubic", "bicubic", None),
                                  *((c.model, c.method, c.weights) for c in candidates if c.scale == scale)]:
        upscaler = build_upscaler(method, scale, device=torch.device("cpu"), weights=weights)
        columns[f"{name} x{scale}"] = upscale(images, upscaler, progress=False)
    return columns


def upscalers_table(record: dict) -> pd.DataFrame:
    """Which weights each row measured: architecture, size, kind, license, sha256 and source."""
    import pandas as pd

    rows = [{"model": name, "architecture": u["architecture"], "parameters": f"{u['parameters']:,}",
             "kind": u.get("kind") or "", "license": u.get("license") or "", "sha256": u["weights_sha256"][:16],
             "source": u["source"]} for name, u in record["upscalers"].items()]
    return pd.DataFrame(rows).set_index("model")
