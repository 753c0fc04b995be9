"""Device and numerics policy: where a run computes and how (bf16, memory format, determinism, compile).

None of this changes what a run *is* (see srlib.runs): it is chosen per machine and recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch

from .config import TrainConfig
from .errors import ConfigError
from .upscale import default_device


@dataclass(frozen=True)
class Numerics:
    bf16: bool  # bf16 autocast for forward and loss; master weights stay fp32
    channels_last: bool
    deterministic: bool  # torch.use_deterministic_algorithms during the run
    compile: bool  # torch.compile the model
    cuda_graphs: bool = False  # capture the training step as a CUDA graph and replay it

    def describe(self) -> dict:
        return {**asdict(self), "precision": "bf16-autocast" if self.bf16 else "fp32",
                "memory_format": "channels_last" if self.channels_last else "contiguous"}


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


def use_bf16(precision: str, device: torch.device) -> bool:
    if precision in ("fp32", "bf16"):
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Without native bf16 (AVX-512 BF16 / AMX) CPU autocast emulates it and runs slower than fp32.
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


def resolve_numerics(config: TrainConfig, device: torch.device) -> Numerics:
    # Channels_last only on GPUs: on CPUs it measured no faster, and oneDNN's channels_last kernels stall (width 4,
    # AVX2) or crash the process (fp32, width 8, >= 64 px, AVX-512 with torch 2.14) on some machines.
    channels_last = config.channels_last and device.type != "cpu"
    graphs = config.cuda_graphs and device.type == "cuda" and not config.compile
    return Numerics(use_bf16(config.precision, device), channels_last, config.deterministic, config.compile, graphs)


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool) -> Iterator[None]:
    """Set torch's global deterministic flag for a block and put the caller's setting back afterwards."""
    was, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)
