"""SR quality on CIFAR itself: downscale test images by s, restore them to 32 px, compare.

PSNR on 8-bit RGB; SSIM as scikit-image computes it (Gaussian window sigma 1.5, 11x11,
per channel, K1=0.01, K2=0.03, population covariance), averaged over channels.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .data import load_dataset, stratified_subset
from .provenance import now, provenance
from .store import write_json
from .upscale import build_upscaler, default_device, upscale


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
    x = torch.from_numpy(a).double()
    y = torch.from_numpy(b).double()
    n, c, _, _ = x.shape
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


def restore(images: np.ndarray, scale: int, weights: str | None = None,
            device: torch.device | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Downscale by `scale`, then bring back to full size by bicubic and by SR."""
    device = device or default_device()
    low = downscale(images, scale)
    return {
        "low": low,
        "bicubic": upscale(low, build_upscaler("bicubic", scale, device=device), progress=False),
        "sr": upscale(low, build_upscaler("sr", scale, device=device, weights=weights), progress=progress,
                      desc=f"SR x{scale}"),
    }


def sr_quality(scales: tuple[int, ...] | list[int] = (2, 4), n: int = 1000, data: str | None = None,
               cache_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
               weights: str | None = None, progress: bool = True) -> dict:
    """PSNR/SSIM of SR vs bicubic on `n` stratified CIFAR test images; written as a record to `out`."""
    dataset = load_dataset(data, cache_dir=cache_dir)
    idx = stratified_subset(dataset.test_y, n)
    hr = dataset.test_x[idx]
    results, identities = [], {}
    for scale in scales:
        started = time.perf_counter()
        restored = restore(hr, scale, weights, progress=progress)
        seconds = time.perf_counter() - started
        p_bic, p_sr = psnr(hr, restored["bicubic"]), psnr(hr, restored["sr"])
        s_bic, s_sr = ssim(hr, restored["bicubic"]), ssim(hr, restored["sr"])
        results.append({
            "scale": scale, "images": int(len(hr)), "low_px": int(restored["low"].shape[-1]),
            "psnr_bicubic": float(p_bic.mean()), "psnr_sr": float(p_sr.mean()),
            "psnr_gain": float((p_sr - p_bic).mean()),
            "ssim_bicubic": float(s_bic.mean()), "ssim_sr": float(s_sr.mean()),
            "ssim_gain": float((s_sr - s_bic).mean()),
            "sr_better_psnr_fraction": float((p_sr > p_bic).mean()),
            "seconds": seconds,
        })
        identities[f"x{scale}"] = build_upscaler("sr", scale, device=torch.device("cpu"), weights=weights).identity
    record = {
        "kind": "sr_quality",
        "protocol": "HR = CIFAR test images (32 px); LR = antialiased bicubic downscale by s; "
                    "restored to 32 px by bicubic and by SR; PSNR on 8-bit RGB, SSIM (Gaussian, per channel)",
        "results": results,
        "data": {**dataset.identity, "test_subset": int(len(idx))},
        "upscalers": identities,
        "finished": now(),
        "provenance": provenance(default_device()),
    }
    if out is not None:
        write_json(Path(out), record)
    return record
