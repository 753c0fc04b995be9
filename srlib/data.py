"""Image datasets (CIFAR-10 by default) as uint8 arrays: where found, how it is identified, and stratified subsets.

Lookup order: an explicit path (`--data` / `SRLIB_DATA`: a folder holding `cifar-10-batches-py` or that
folder itself, an ImageFolder tree `train/<class>/*` + `test/<class>/*`, or Parquet files in the Hugging
Face Hub layout); else canonical CIFAR-10 in the data directory (`SRLIB_DATA_DIR`, default `./data`);
else a torchvision download into it.

A dataset's identity (`content_sha256`) hashes what training sees (labels and uint8 pixels in row order); decoded
arrays are cached under a fingerprint of the encoded images and labels, not file names: so an ImageFolder tree
and a Parquet copy of the same images share both.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data_sources import (
    CANONICAL_DIR,
    PARQUET_LAYOUT,
    SPLITS,
    Source,
    canonical_files,
    list_split,
    parquet_hub_name,
    parquet_splits,
    scan_canonical,
    scan_imagefolder,
    scan_parquet,
)
from .errors import DataError
from .store import load_or_build

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
_PIXELS_TAG = b"srlib-pixels-v1\0"


@dataclass
class Dataset:
    train_x: np.ndarray  # (N, 3, H, W) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    identity: dict = field(default_factory=dict)  # source, path/url, counts, content hash, lossy


def default_cache_dir() -> Path:
    return Path(os.environ.get("SRLIB_CACHE_DIR", "cache"))


def locate(data: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> dict:
    """Where the data comes from, without decoding it: {kind, path}, for Parquet also {files: {split: [Path]}}."""
    explicit = data if data is not None else os.environ.get("SRLIB_DATA") or None
    if explicit is not None:
        path = Path(explicit)
        if (path / CANONICAL_DIR).is_dir():
            return {"kind": "canonical", "path": path / CANONICAL_DIR}
        if path.name == CANONICAL_DIR and path.is_dir():
            return {"kind": "canonical", "path": path}
        if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
            return {"kind": "imagefolder", "path": path}
        files = parquet_splits(path) if path.is_dir() else None
        if files is not None:
            return {"kind": "parquet", "path": path, "files": files}
        raise DataError(f"{_not_a_dataset(path)}; check --data / SRLIB_DATA")
    root = Path(data_dir if data_dir is not None else os.environ.get("SRLIB_DATA_DIR", "data"))
    if (root / CANONICAL_DIR).is_dir():
        return {"kind": "canonical", "path": root / CANONICAL_DIR}
    return {"kind": "download", "path": root / CANONICAL_DIR}


def _not_a_dataset(path: Path) -> str:
    """What is wrong with an explicit data path, as precisely as the path allows."""
    expected = (f"an ImageFolder tree (train/<class>/*, test/<class>/*), a folder of Parquet files "
                f"({PARQUET_LAYOUT}) or a folder holding {CANONICAL_DIR}")
    if not path.exists():
        return f"data path {path} does not exist; it should be {expected}"
    if not path.is_dir():
        if path.suffix == ".parquet":
            return (f"data path {path} is a Parquet file; point it at the folder of the dataset's Parquet "
                    f"files instead ({PARQUET_LAYOUT})")
        return f"data path {path} is a file, not a directory; it should be {expected}"
    if not any(path.iterdir()):
        return f"data directory {path} is empty; put {expected} there"
    splits = [s for s in SPLITS if (path / s).is_dir()]
    if len(splits) == 1:
        missing = "test" if splits == ["train"] else "train"
        return f"data directory {path} has {splits[0]}/ but no {missing}/; an ImageFolder tree needs both splits"
    return (f"data path {path} holds no Parquet files ({PARQUET_LAYOUT}) and is neither an ImageFolder tree "
            f"(train/<class>/*, test/<class>/*) nor a folder holding {CANONICAL_DIR}")


def download_canonical(root: Path) -> Path:
    """Fetch canonical CIFAR-10 with torchvision; a clear DataError when offline."""
    import socket

    from torchvision.datasets import CIFAR10

    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(20)
    try:
        CIFAR10(str(root), train=True, download=True)
    except Exception as exc:
        raise DataError(
            "no CIFAR-10 found. Tried: --data / SRLIB_DATA (not set); "
            f"{root / CANONICAL_DIR} (missing); download from {CIFAR10_URL} ({type(exc).__name__}: {exc}). "
            "Fix: put torchvision's cifar-10-batches-py in the data directory (SRLIB_DATA_DIR), or point "
            "--data / SRLIB_DATA at an ImageFolder tree with train/<class>/* and test/<class>/* "
            "(an offline JPEG copy works, e.g. SRLIB_DATA=../shared/data/cifar10-jpeg) or at a folder of "
            f"Parquet files ({PARQUET_LAYOUT})"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return root / CANONICAL_DIR


# Datasets this project has met, by content hash (content_sha256 of the decoded pixels): their names.
CANONICAL_SHA256 = "c8cc1b7842dbae1862bce9c40c43a954228b05864b94dce7128f835e6c6f375a"
JPEG_SHA256 = "653ddc0f9271b72e3e4b7bb9eee2d6152cb6f9e10406a7f027785da9bfeb0ff4"  # the JPEG q75 copy
KNOWN_DATASETS = {CANONICAL_SHA256: "cifar10", JPEG_SHA256: "cifar10-jpeg75"}


def dataset_name(identity: dict) -> str:
    """A dataset's short readable name: a known one's (cifar10, cifar10-jpeg75), else the one its source gave at
    load time (the Hub name in a Parquet copy's metadata, else the folder's), else "dataset"."""
    known = KNOWN_DATASETS.get(identity.get("content_sha256", ""))
    return known or identity.get("name") or "dataset"


def dataset_key(identity: dict) -> str:
    """The dataset's part of a run's folder: its name and a short content hash, e.g. `cifar10-c8cc1b78`."""
    slug = re.sub(r"[^a-z0-9]+", "-", dataset_name(identity).lower()).strip("-") or "dataset"
    return f"{slug}-{identity.get('content_sha256', 'unknown')[:8]}"


def key_hash(key: str) -> str:
    """The content-hash part of a dataset key: what identifies the data whatever folder name it came under."""
    return key.rpartition("-")[2]


def image_hw(identity: dict) -> tuple[int, int]:
    """(height, width) of a dataset's images from its identity's `image_size` ([3, H, W]; CIFAR-10's if absent)."""
    size = identity.get("image_size") or [3, 32, 32]
    return int(size[-2]), int(size[-1])


def _source_name(path: Path) -> str:
    """The name a dataset folder gives itself: the folder, or its parent for a split folder or Parquet layout."""
    for folder in (path, *path.parents):
        if folder.name not in ("", "train", "test", "data", "plain_text", "default"):
            return folder.name
    return "dataset"


def load_dataset(data: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None) -> Dataset:
    """Find, decode (once, cached) and identify the dataset."""
    where = locate(data, data_dir)
    path = Path(where["path"])
    if where["kind"] == "download":
        path = download_canonical(path.parent)
        where = {"kind": "canonical", "path": path}
    scanners = {"canonical": scan_canonical, "imagefolder": scan_imagefolder}
    source = scan_parquet(where["files"]) if where["kind"] == "parquet" else scanners[where["kind"]](path)
    identity: dict[str, Any] = {"source": source.kind, **({"url": CIFAR10_URL} if source.kind == "canonical" else {})}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Folder and Parquet copies of the same images share one scheme, so they share the cached arrays.
    scheme = "canonical" if source.kind == "canonical" else "images"
    arrays, meta = load_or_build(decoded_cache_path(cache, scheme, source.fingerprint), lambda: _decoded(source))
    identity.update(
        lossy=source.lossy,
        path=str(path.resolve()),
        content_sha256=meta.get("content_sha256") or content_sha256(arrays),
        train_count=int(len(arrays["train_y"])),
        test_count=int(len(arrays["test_y"])),
        image_size=list(arrays["train_x"].shape[1:]),
        classes=list(source.classes),
    )
    given = (parquet_hub_name(where["files"]) if source.kind == "parquet" else None) or _source_name(path.resolve())
    identity["name"] = dataset_name({**identity, "name": given})
    if source.lossy:
        identity["note"] = "lossy (JPEG) images: absolute accuracies are not comparable to lossless copies"
    return Dataset(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                   tuple(source.classes), identity)


def decoded_cache_path(cache_dir: str | os.PathLike, scheme: str = "*", fingerprint: str = "*") -> Path:
    """Where a decoded dataset is cached (with the defaults: a glob of every such cache)."""
    return Path(cache_dir) / "datasets" / f"{scheme}-{fingerprint[:16]}.npz"


def _decoded(source: Source) -> tuple[dict, dict]:
    """Decode a source for the cache; its meta carries the pixel hash, so a cache hit needs no rehash."""
    arrays = source.decode()
    return arrays, {"content_sha256": content_sha256(arrays), "source_sha256": source.fingerprint,
                    "classes": list(source.classes)}


def content_sha256(arrays: dict[str, np.ndarray]) -> str:
    """The dataset's identity: sha256 over each split's labels and uint8 pixels, in row order."""
    digest = hashlib.sha256(_PIXELS_TAG)
    for split in SPLITS:
        for name in (f"{split}_y", f"{split}_x"):
            array = np.ascontiguousarray(arrays[name])
            digest.update(f"{name}:{array.dtype.str}{array.shape}\0".encode())
            digest.update(array.data)
    return digest.hexdigest()


def quick_check(where: dict) -> str | None:
    """What is wrong with the data `locate` found, from a few bytes of each split (not the whole dataset, which
    a run decodes and hashes anyway); None when it looks readable."""
    path, kind, samples = Path(where["path"]), where["kind"], []
    try:
        if kind == "canonical":
            samples = canonical_files(path)
        elif kind == "imagefolder":  # the listing a run makes, and the first image of each split
            samples = [path / list_split(path, split)[1][0][0] for split in SPLITS]
    except DataError as exc:
        return str(exc)
    if kind == "parquet":
        samples = [files[0] for files in where.get("files", {}).values() if files]
    for sample in samples:
        try:
            with open(sample, "rb") as f:
                f.read(16)
        except OSError as exc:
            return f"cannot read {sample} ({exc.strerror or exc}); fix the data's permissions or --data / SRLIB_DATA"
    return None


def stratified_subset(labels: np.ndarray, size: int | None, seed: int = 0) -> np.ndarray:
    """Indices of a class-balanced subset, the same for every run (fixed seed), in sorted order."""
    if size is None or size >= len(labels):
        return np.arange(len(labels))
    classes = np.unique(labels)
    rng = np.random.default_rng(seed)
    per_class = np.full(len(classes), size // len(classes))
    per_class[: size % len(classes)] += 1
    chosen = []
    for c, k in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == c)
        if k > len(members):
            raise DataError(f"a stratified subset of {size} needs {k} images of class {c}, only {len(members)} "
                            "exist; ask for a smaller subset (--train-size / --test-size) or add images")
        chosen.append(rng.permutation(members)[:k])
    return np.sort(np.concatenate(chosen))


def describe(data: str | None = None, data_dir: str | None = None) -> str:
    """One paragraph on what data would be used (for `srlib data`)."""
    where = locate(data, data_dir)
    if where["kind"] == "download":
        return (f"canonical CIFAR-10 not found at {where['path']}; `srlib train` would download it from "
                f"{CIFAR10_URL} (set --data / SRLIB_DATA to use an ImageFolder or Parquet copy instead)")
    if where["kind"] == "parquet":
        root = Path(where["path"])
        listing = "; ".join(f"{s}: {', '.join(str(p.relative_to(root)) for p in where['files'][s])}" for s in SPLITS)
        return f"parquet CIFAR-10 at {root} ({listing})"
    return f"{where['kind']} CIFAR-10 at {where['path']}"
