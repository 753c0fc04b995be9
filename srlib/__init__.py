"""Does super-resolving small images before classification beat plain resizing? (any small-image dataset)

The research path, top to bottom (airbench-style, without the orchestration):

    config = srlib.make_config("sr_x2", "preview", seed=0)  # srlib.config: variants, profiles, TrainConfig
    dataset = srlib.load_dataset()                           # srlib.data: any small-image set (CIFAR-10 by default)
    sr = srlib.build_upscaler("sr", 2)                       # srlib.upscale: bicubic, nearest, SR models
    model = srlib.resnet18(width=64)                         # srlib.model: the classifier
    record = srlib.train.train(config)                       # srlib.train: the protocol -> a run record

The names that need torch are imported on first use, so `srlib --help` starts in a fraction of a second.
(`train` and `upscale` stay module names: exporting functions of the same names would shadow the modules.)
"""

from __future__ import annotations

from importlib import import_module

from .config import PROFILES, STUDY_VARIANTS, VARIANTS, TrainConfig, make_config
from .errors import SrlibError

_LAZY = {"load_dataset": "data", "build_upscaler": "upscale", "resnet18": "model"}
_MODULES = {"data", "upscale", "model", "train", "quality", "runs"}

__all__ = ["PROFILES", "STUDY_VARIANTS", "VARIANTS", "TrainConfig", "make_config", "SrlibError", *_LAZY]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    if name in _MODULES:  # `srlib.train.train(...)` after a plain `import srlib`
        return import_module(f".{name}", __name__)
    raise AttributeError(f"module 'srlib' has no attribute {name!r}")
