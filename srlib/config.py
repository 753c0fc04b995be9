"""Variants, profiles and the one frozen training config.

Precedence (as in timm): explicit overrides > profile defaults > `TrainConfig` defaults.
The CLI and the notebook's parameters cell both go through `make_config`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import ConfigError


@dataclass(frozen=True)
class Variant:
    method: str  # upscaler name in srlib.upscale.UPSCALERS, "none" for the 32 px data
    scale: int  # 1, 2 or 4


VARIANTS: dict[str, Variant] = {
    "original": Variant("none", 1),
    "resize_x2": Variant("bicubic", 2),
    "sr_x2": Variant("sr", 2),
    "resize_x4": Variant("bicubic", 4),
    "sr_x4": Variant("sr", 4),
    "nearest_x2": Variant("nearest", 2),
    "nearest_x4": Variant("nearest", 4),
}
STUDY_VARIANTS = ("original", "resize_x2", "sr_x2", "resize_x4", "sr_x4")


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "original"
    profile: str = "paper"
    seed: int = 0
    epochs: int = 45
    batch_size: int = 32  # images per SGD step
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_step: int = 15  # epochs between StepLR decays
    lr_gamma: float = 0.1
    width: int = 64  # channels of the first stage; 64 = reference ResNet-18
    train_size: int | None = None  # stratified subset size; None = all 50,000
    test_size: int | None = None  # stratified subset size; None = all 10,000
    precision: str = "auto"  # "auto" (bf16 autocast where supported), "bf16" or "fp32"
    channels_last: bool = True
    compile: bool = False  # torch.compile the model (pays off on GPU only)
    sr_weights: str | None = None  # path of another spandrel SR checkpoint; None = DCTLSA
    deterministic: bool = True  # torch deterministic algorithms (CPU resume is bit-identical)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# Only the values that differ from TrainConfig's defaults (the `paper` protocol).
PROFILES: dict[str, dict] = {
    "paper": {},
    # Sized for ~20 min for all five variants on a 2-core AVX2 CPU (SR upscaling runs ~13 img/s there).
    "preview": dict(epochs=6, lr_step=2, width=8, train_size=2000, test_size=500),
    "smoke": dict(epochs=2, lr_step=1, width=8, train_size=100, test_size=50),
}

PRECISIONS = ("auto", "bf16", "fp32")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def make_config(variant: str, profile: str = "paper", seed: int = 0, **overrides) -> TrainConfig:
    """Build and validate a config; `None` overrides mean "use the profile's value"."""
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    unknown = set(overrides) - set(field_names())
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(field_names())}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig(variant=variant, profile=profile, seed=seed, **values)
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    checks = [
        (config.epochs >= 0, f"epochs must be >= 0, got {config.epochs}"),
        (config.batch_size >= 1, f"batch size must be >= 1, got {config.batch_size}"),
        (config.lr > 0, f"learning rate must be > 0, got {config.lr}"),
        (config.lr_step >= 1, f"lr step must be >= 1 epoch, got {config.lr_step}"),
        (config.width >= 1, f"width must be >= 1, got {config.width}"),
        (config.seed >= 0, f"seed must be >= 0, got {config.seed}"),
        (config.train_size is None or config.train_size >= 10, "train size must be >= 10 (one per class)"),
        (config.test_size is None or config.test_size >= 10, "test size must be >= 10 (one per class)"),
        (config.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {config.precision!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
