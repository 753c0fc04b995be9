"""FLOPs of the study's classifier: the one count the cost model, the GPU kit and the report use.

Counted by `torch.utils.flop_counter` on the model itself (one multiply-add = 2 FLOPs), on the meta
device, so it costs no memory and no compute. A training step is taken as 3x the forward pass (the
backward pass of a convolution costs about twice its forward); batch norm, ReLU and the optimizer are
left out: they are memory-bound and add under 1%.
"""

from __future__ import annotations

from functools import cache

import torch
from torch.utils.flop_counter import FlopCounterMode

from .model import resnet18

TRAIN_TO_FORWARD = 3  # backward ~= 2x forward for convolutions and matmuls


@cache
def forward_flops_per_image(px: int, width: int = 64) -> float:
    """Forward-pass FLOPs of one `px` x `px` image through the ResNet-18 of `width`."""
    if px < 1:
        raise ValueError(f"px must be >= 1, got {px}")
    with torch.device("meta"):
        model = resnet18(width=width)
        x = torch.empty(1, 3, px, px)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return float(counter.get_total_flops())


def train_flops_per_image(px: int, width: int = 64) -> float:
    """FLOPs of one image in one training step (forward + backward)."""
    return TRAIN_TO_FORWARD * forward_flops_per_image(px, width)
