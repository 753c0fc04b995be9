"""The training loop `srlib bench` compares against, written the way the reference is (kuangliu/pytorch-cifar):
`BASELINE`. Kept apart from srlib's own loop so that the thing measured and the thing compared against are
never the same code.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .model import resnet18
from .timing import timed

BATCH = 32
WIDTH = 64  # the reference ResNet-18
BASELINE = ("fp32, NCHW, DataLoader over in-memory PIL images, per-sample RandomHorizontalFlip/ToTensor/"
            "Normalize(0.5,0.5), loss.item() and the accuracy count every step")


class PILImages(torch.utils.data.Dataset):
    """In-memory PIL images with a per-sample transform, as torchvision datasets serve them."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable) -> None:
        from PIL import Image

        self.images = [Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))) for img in images]
        self.labels = [int(y) for y in labels]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i]), self.labels[i]


def baseline_workers(device: torch.device) -> int:
    # The reference loader uses 2 workers; on a 2-core CPU they would compete with the model's two compute
    # threads, so there the baseline loads in the main process (the faster choice for it).
    return 2 if device.type == "cuda" else 0


def reference_batches(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Callable[[], tuple]:
    """The reference's data path: the next (inputs, targets) batch of a shuffled DataLoader, on `device`."""
    from torchvision import transforms

    transform = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                    transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    loader = torch.utils.data.DataLoader(PILImages(images, labels, transform), batch_size=BATCH, shuffle=True,
                                         num_workers=baseline_workers(device))
    batches = iter(loader)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = next(batches)
        return inputs.to(device), targets.to(device)

    return next_batch


def baseline_steps(images: np.ndarray, labels: np.ndarray, device: torch.device) -> Callable[[int], None]:
    """A kuangliu-style training loop over one epoch of `images`; the function returned runs n steps."""
    next_batch = reference_batches(images, labels, device)
    torch.manual_seed(0)
    model = resnet18(width=WIDTH).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    criterion = torch.nn.CrossEntropyLoss()
    model.train()

    def run(n: int) -> None:
        for _ in range(n):
            inputs, targets = next_batch()
            optimizer.zero_grad()
            outputs = model(inputs)
            loss = criterion(outputs, targets)
            loss.backward()
            optimizer.step()
            _ = loss.item(), outputs.max(1)[1].eq(targets).sum().item()  # the reference's per-step bookkeeping

    return run


def baseline_data_img_s(images: np.ndarray, labels: np.ndarray, warmup: int, steps: int,
                        device: torch.device) -> float:
    """Images/s of the reference data path alone (loader and host-to-device copy)."""
    next_batch = reference_batches(images, labels, device)
    for _ in range(warmup):  # also starts the loader's workers, a once-per-epoch cost
        next_batch()
    return steps * BATCH / timed(lambda: [next_batch() for _ in range(steps)], device)
