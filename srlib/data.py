"""CIFAR-10 as uint8 arrays: where it is found, how it is identified, and stratified subsets.

Lookup order (first that exists wins):
1. an explicit path (`--data PATH` or `SRLIB_DATA`): an ImageFolder tree (`train/<class>/*`,
   `test/<class>/*`) or a directory holding `cifar-10-batches-py`;
2. canonical CIFAR-10 (torchvision's `cifar-10-batches-py`) in the data directory
   (`SRLIB_DATA_DIR`, default `./data`);
3. a torchvision download of canonical CIFAR-10 into the data directory.
Decoded arrays are cached on disk, keyed by a hash of the source files' content.
"""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import DataError
from .progress import progress_bar
from .store import load_or_build

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CANONICAL_DIR = "cifar-10-batches-py"
CANONICAL_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
LOSSY_SUFFIXES = {".jpg", ".jpeg", ".webp"}


@dataclass
class Dataset:
    train_x: np.ndarray  # (N, 3, H, W) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    identity: dict = field(default_factory=dict)  # source, path/url, counts, content hash, lossy


def default_data_dir() -> Path:
    return Path(os.environ.get("SRLIB_DATA_DIR", "data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("SRLIB_CACHE_DIR", "cache"))


def locate(data: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> dict:
    """Decide where the data comes from, without decoding it. Returns {kind, path, tried}."""
    explicit = data if data is not None else os.environ.get("SRLIB_DATA") or None
    if explicit is not None:
        path = Path(explicit)
        if (path / CANONICAL_DIR).is_dir():
            return {"kind": "canonical", "path": path / CANONICAL_DIR}
        if path.name == CANONICAL_DIR and path.is_dir():
            return {"kind": "canonical", "path": path}
        if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
            return {"kind": "imagefolder", "path": path}
        raise DataError(f"{_not_a_dataset(path)}; check --data / SRLIB_DATA")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
    if (root / CANONICAL_DIR).is_dir():
        return {"kind": "canonical", "path": root / CANONICAL_DIR}
    return {"kind": "download", "path": root / CANONICAL_DIR}


def _not_a_dataset(path: Path) -> str:
    """What is wrong with an explicit data path, as precisely as the path allows."""
    expected = f"an ImageFolder tree (train/<class>/*, test/<class>/*) or a folder holding {CANONICAL_DIR}"
    if not path.exists():
        return f"data path {path} does not exist; it should be {expected}"
    if not path.is_dir():
        return f"data path {path} is a file, not a directory; it should be {expected}"
    if not any(path.iterdir()):
        return f"data directory {path} is empty; put {expected} there"
    splits = [s for s in ("train", "test") if (path / s).is_dir()]
    if len(splits) == 1:
        missing = "test" if splits == ["train"] else "train"
        return f"data directory {path} has {splits[0]}/ but no {missing}/; an ImageFolder tree needs both splits"
    return (f"data path {path} is neither an ImageFolder tree (train/<class>/*, test/<class>/*) nor a folder "
            f"holding {CANONICAL_DIR}")


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
            "(an offline JPEG copy works, e.g. SRLIB_DATA=../shared/data/cifar10-jpeg)"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous)
    return root / CANONICAL_DIR


def load_dataset(
    data: str | os.PathLike | None = None,
    data_dir: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Dataset:
    """Find, decode (once, cached) and identify CIFAR-10."""
    where = locate(data, data_dir)
    path = Path(where["path"])
    if where["kind"] == "download":
        path = download_canonical(path.parent)
        where = {"kind": "canonical", "path": path}
    if where["kind"] == "canonical":
        files, content_hash = _canonical_files(path)
        decode = lambda: _decode_canonical(path)  # noqa: E731
        identity = {"source": "canonical", "url": CIFAR10_URL, "lossy": False}
    else:
        files, content_hash = _imagefolder_files(path)
        decode = lambda: _decode_imagefolder(path, files)  # noqa: E731
        lossy = any(Path(f).suffix.lower() in LOSSY_SUFFIXES for s in ("train", "test") for f, _ in files[s])
        identity = {"source": "imagefolder", "lossy": lossy}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    arrays, meta = load_or_build(cache / "datasets" / f"{where['kind']}-{content_hash[:16]}.npz", decode)
    identity.update(
        path=str(path.resolve()),
        content_sha256=content_hash,
        train_count=int(len(arrays["train_y"])),
        test_count=int(len(arrays["test_y"])),
        image_size=list(arrays["train_x"].shape[1:]),
        classes=list(meta["classes"]),
    )
    if identity["source"] == "imagefolder" and identity["lossy"]:
        identity["note"] = "lossy (JPEG) copy: absolute accuracies are not comparable to canonical CIFAR-10"
    return Dataset(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                   tuple(meta["classes"]), identity)


def _canonical_files(path: Path) -> tuple[list[Path], str]:
    missing = [name for name in CANONICAL_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} lacks {missing}; re-download CIFAR-10 or delete the folder to fetch it again")
    digest = hashlib.sha256()
    for name in CANONICAL_FILES:
        digest.update(name.encode())
        digest.update((path / name).read_bytes())
    return [path / n for n in CANONICAL_FILES], digest.hexdigest()


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"cannot read {path} ({exc}); the download is damaged: delete it and fetch again") from exc


def _decode_canonical(path: Path) -> tuple[dict, dict]:
    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(path / n) for n in names]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
        y = np.concatenate([np.asarray(b["labels"]) for b in batches]).astype(np.int64)
        return x, y

    train_x, train_y = split([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = split(["test_batch"])
    classes = _unpickle(path / "batches.meta")["label_names"]
    arrays = dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
    return arrays, {"classes": list(classes)}


def _list_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    split_dir = root / split
    classes = sorted(d.name for d in _listdir(split_dir) if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataError(f"{split_dir} holds no class folders; expected {split}/<class>/<image>")
    files = []
    for label, name in enumerate(classes):
        images = sorted(p for p in _listdir(split_dir / name) if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise DataError(f"class folder {split_dir / name} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                            "add its images or remove the folder from both splits")
        files += [(str(p.relative_to(root)), label) for p in images]
    return classes, files


def _listdir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DataError(f"cannot list {folder} ({exc}); fix its permissions") from exc


def _read_image_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read image {path} ({type(exc).__name__}: {exc}); "
                        "fix its permissions, or replace or delete that file") from exc


def _imagefolder_files(root: Path) -> tuple[dict, str]:
    train_classes, train_files = _list_split(root, "train")
    test_classes, test_files = _list_split(root, "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        differ = "; ".join(f"{names} only in {split}/" for split, names in (("train", only_train), ("test", only_test))
                           if names)
        raise DataError(f"train and test classes differ in {root}: {differ}; every class needs a folder in both "
                        "splits: add the missing folder or remove the class from the other split")
    digest = hashlib.sha256()
    for rel, label in train_files + test_files:
        digest.update(f"{rel}\0{label}\0".encode())
        digest.update(_read_image_bytes(root / rel))
    return {"classes": train_classes, "train": train_files, "test": test_files}, digest.hexdigest()


def _decode_imagefolder(root: Path, files: dict) -> tuple[dict, dict]:
    from PIL import Image

    arrays, size = {}, None
    for split in ("train", "test"):
        images = []
        for rel, _ in progress_bar(files[split], desc=f"decode {split}", unit="img", mininterval=2, leave=False):
            try:
                with Image.open(root / rel) as im:
                    array = np.asarray(im.convert("RGB"))
            except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
                raise DataError(f"cannot decode image {root / rel} ({type(exc).__name__}: {exc}); "
                                "replace or delete that file") from exc
            size = size or array.shape
            if array.shape != size:
                raise DataError(f"image {root / rel} is {array.shape[1]}x{array.shape[0]}, the others "
                                f"{size[1]}x{size[0]}; all images must share one size: resize or delete it")
            images.append(array)
        arrays[f"{split}_x"] = np.stack(images).transpose(0, 3, 1, 2).copy()
        arrays[f"{split}_y"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return arrays, {"classes": files["classes"]}


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
                f"{CIFAR10_URL} (set --data / SRLIB_DATA to use an ImageFolder copy instead)")
    return f"{where['kind']} CIFAR-10 at {where['path']}"
