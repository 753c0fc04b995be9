"""Variants, profiles and the one frozen training config.

Precedence (as in timm): explicit overrides > profile defaults > `TrainConfig` defaults.
The CLI and the notebook's parameters cell both go through `make_config`.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from dataclasses import dataclass

from .errors import ConfigError
from .upscale import DEFAULT_SR_MODEL, SR_CHECKPOINTS, sr_method


@dataclass(frozen=True)
class Variant:
    """What a variant is: the one definition that planning, the kit and the report ask."""

    method: str  # upscaler name in srlib.upscale.UPSCALERS ("sr@<model>" for other SR models), "none" for 32 px
    scale: int  # 1, 2 or 4

    @property
    def px(self) -> int:
        """Side of the images the classifier sees."""
        return 32 * self.scale

    @property
    def is_sr(self) -> bool:
        return self.method.partition("@")[0] == "sr"

    @property
    def sr_model(self) -> str | None:
        """The registered SR model (srlib.upscale.SR_CHECKPOINTS) behind an SR variant; None otherwise."""
        base, _, model = self.method.partition("@")
        return (model or DEFAULT_SR_MODEL) if base == "sr" else None

    @property
    def kind(self) -> str:
        """'none', 'nearest', 'bicubic' or 'sr' (any SR model): what the report compares."""
        return "sr" if self.is_sr else self.method

    @property
    def upscale_kind(self) -> str:
        """'none', 'sr', or 'plain' (bicubic, nearest): what the cost model times."""
        return "none" if self.method == "none" else "sr" if self.is_sr else "plain"


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
STUDY_SCALES = (2, 4)
PAPER_SEEDS = (0, 1, 2)  # the seeds the reference table is filled with (the kit's queue, the paper profile)
# One variant per other registered SR model and study scale, e.g. `sr_x4@swift-srgan` (sr_x2/sr_x4 = DCTLSA).
SR_MODEL_VARIANTS: dict[str, Variant] = {
    f"sr_x{c.scale}@{c.model}": Variant(sr_method(c.model), c.scale)
    for c in SR_CHECKPOINTS if c.model != DEFAULT_SR_MODEL and c.scale in STUDY_SCALES
}
VARIANTS.update(SR_MODEL_VARIANTS)
# Named sets for `--variants`: the study, the "more pixels" controls, the SR models, everything, the study's halves.
VARIANT_SETS: dict[str, tuple[str, ...]] = {
    "study": STUDY_VARIANTS,
    "controls": (*STUDY_VARIANTS, "nearest_x2", "nearest_x4"),
    "sr-models": (*STUDY_VARIANTS, *SR_MODEL_VARIANTS),
    "all": tuple(VARIANTS),
    # The study in two halves, one GPU window each: the x2 comparison with the original, then the x4 one.
    "study-x2": ("original", "resize_x2", "sr_x2"),
    "study-x4": ("resize_x4", "sr_x4"),
}


def variant_of(name: str) -> Variant | None:
    """What a variant name means: a registered variant, or `sr_x<s>@<model>` for an SR model this code does
    not register (records of newer code, say); None for any other name."""
    if name in VARIANTS:
        return VARIANTS[name]
    match = re.fullmatch(r"sr_x(\d+)@([\w.-]+)", name)
    return Variant(f"sr@{match[2]}", int(match[1])) if match else None


def expand_variants(names: str | list[str] | tuple[str, ...]) -> list[str]:
    """Variant and set names (mixed, comma- or list-separated) -> variant names, in order, each once."""
    items = [names] if isinstance(names, str) else list(names)
    words = [w.strip() for item in items for w in item.split(",") if w.strip()]
    unknown = [w for w in words if w not in VARIANT_SETS and w not in VARIANTS]
    if unknown or not words:
        raise ConfigError(f"unknown variant or set {', '.join(map(repr, unknown)) or '(none given)'}; choose "
                          f"sets ({', '.join(VARIANT_SETS)}) or variants ({', '.join(VARIANTS)})")
    return list(dict.fromkeys(v for w in words for v in VARIANT_SETS.get(w, (w,))))


def _field(default, help: str):
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings. The `help` of each field (with its unit) is what `srlib train --help` shows."""

    variant: str = _field("original", "which data: original, resize_x2, sr_x2, resize_x4, sr_x4, nearest_x2/x4 or "
                          "sr_x<s>@<model> (srlib.config.VARIANTS)")
    profile: str = _field("paper", "protocol defaults: paper, preview or smoke")
    seed: int = _field(0, "seed of the initial weights, batch order and flips")
    epochs: int = _field(45, "training epochs (passes over the training subset)")
    batch_size: int = _field(32, "images per SGD step")
    lr: float = _field(0.01, "initial SGD learning rate")
    momentum: float = _field(0.9, "SGD momentum")
    weight_decay: float = _field(0.0, "SGD weight decay")
    lr_step: int = _field(15, "epochs between StepLR decays")
    lr_gamma: float = _field(0.1, "StepLR decay factor")
    width: int = _field(64, "channels of the first ResNet-18 stage (64 = reference)")
    train_size: int | None = _field(None, "images in the stratified training subset (default: all 50,000)")
    test_size: int | None = _field(None, "images in the stratified test subset (default: all 10,000)")
    precision: str = _field("auto", "auto (bf16 autocast where the hardware has it), bf16 or fp32")
    channels_last: bool = _field(True, "channels_last memory format")
    compile: bool = _field(False, "torch.compile the model (pays off on a GPU only)")
    sr_weights: str | None = _field(None, "path of another spandrel SR checkpoint (default: DCTLSA)")
    deterministic: bool = _field(True, "torch deterministic algorithms (bit-identical resume on CPU)")
    cuda_graphs: bool = _field(True, "replay the training step as a CUDA graph (GPU only; the same kernels, "
                               "without the per-kernel launch cost that dominates batch-32 steps)")

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


def default_profile() -> str:
    """The one rule for the default profile (CLI, sweep, notebooks): the protocol on a GPU, else the preview."""
    import torch

    return "paper" if torch.cuda.is_available() else "preview"


def make_config(variant: str, profile: str | None = None, seed: int = 0, **overrides) -> TrainConfig:
    """Build and validate a config; `profile=None` means `default_profile()`, `None` overrides the profile's value."""
    profile = profile or default_profile()
    if variant not in VARIANTS:
        raise ConfigError(f"unknown variant {variant!r}; choose one of: {', '.join(VARIANTS)}")
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    unknown = set(overrides) - set(names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid: {', '.join(names)}")
    values = {**PROFILES[profile], **{k: v for k, v in overrides.items() if v is not None}}
    config = TrainConfig(variant=variant, profile=profile, seed=seed, **values)
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
        (config.sr_weights is None or "@" not in VARIANTS[config.variant].method,
         f"--sr-weights replaces DCTLSA in sr_x2/sr_x4; {config.variant} uses its registered weights: drop "
         "--sr-weights or train sr_x2/sr_x4"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    return config


# --- TrainConfig as command-line options (srlib train, srlib sweep, the kit's --train-args) ---------------

OPTION_EXEMPT = ("variant", "profile", "seed")  # given by their own arguments


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field, with the field's help (and unit); unset = the profile's value."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in OPTION_EXEMPT:
            continue
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help", "")
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif f.name == "precision":
            parser.add_argument(flag, choices=PRECISIONS, help=help_text)
        else:
            kind = {"int": int, "float": float, "int | None": int}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, help=help_text)


def config_overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig fields the command line set (None = not set: the profile decides)."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
            if f.name not in OPTION_EXEMPT and getattr(args, f.name, None) is not None}


def parse_config_options(words: list[str]) -> dict:
    """TrainConfig overrides from option words such as `--epochs 3 --no-deterministic` (e.g. the kit's
    `--train-args`); ConfigError naming the words when they are not TrainConfig options."""
    parser = argparse.ArgumentParser(prog="--train-args", add_help=False, exit_on_error=False)
    add_config_options(parser)
    try:
        args, extra = parser.parse_known_args(words)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError(f"{' '.join(words)!r}: {exc}; use TrainConfig options such as --epochs N") from exc
    if extra:
        raise ConfigError(f"{' '.join(extra)!r} are not TrainConfig options; see `srlib train --help`")
    return config_overrides(args)
