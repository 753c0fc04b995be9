"""CIFAR-10 as uint8 arrays: where it is found, how it is identified, and stratified subsets.

Lookup order (first that exists wins):
1. an explicit path (`--data PATH` or `SRLIB_DATA`), one of
   - a directory holding `cifar-10-batches-py` (or that folder itself),
   - an ImageFolder tree (`train/<class>/*`, `test/<class>/*`),
   - a folder of Parquet files laid out as the Hugging Face Hub serves image datasets
     (`<config>/train-*.parquet`, `<config>/test-*.parquet`, or the same files directly in the folder);
2. canonical CIFAR-10 (torchvision's `cifar-10-batches-py`) in the data directory
   (`SRLIB_DATA_DIR`, default `./data`);
3. a torchvision download of canonical CIFAR-10 into the data directory.

A dataset's identity (`content_sha256`) is the hash of what training sees: each split's labels and
decoded uint8 pixels, in the dataset's row order (canonical: batch order; ImageFolder: class, then
file name; Parquet: row order). So an ImageFolder tree and a Parquet copy of the same images have the
same identity. Decoded arrays are cached on disk, keyed by a cheap fingerprint of the encoded source
(labels, class names and image bytes, not file names), which is again the same for both copies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .progress import progress_bar
from .store import load_or_build

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CANONICAL_DIR = "cifar-10-batches-py"
CANONICAL_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "test")
PARQUET_IMAGE_COLUMNS = ("img", "image")  # CIFAR-10 on the Hub uses `img`; most image datasets `image`
PARQUET_LABEL_COLUMN = "label"
PARQUET_LAYOUT = "<config>/train-*.parquet and <config>/test-*.parquet"
PARQUET_BATCH_ROWS = 4096  # rows read at a time: a few MB of encoded images, whatever the row groups
LOSSY_NOTE = "lossy (JPEG) copy: absolute accuracies are not comparable to canonical CIFAR-10"
_FINGERPRINT_TAG = b"srlib-encoded-images-v1\0"
_PIXELS_TAG = b"srlib-pixels-v1\0"


@dataclass
class Dataset:
    train_x: np.ndarray  # (N, 3, H, W) uint8
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]
    identity: dict = field(default_factory=dict)  # source, path/url, counts, content hash, lossy


@dataclass
class _Source:
    """What a scan of the source finds without decoding it."""

    kind: str  # canonical | imagefolder | parquet
    classes: list[str]
    fingerprint: str  # sha256 of the encoded source: keys the decode cache
    lossy: bool
    decode: Callable[[], dict[str, np.ndarray]]


def default_data_dir() -> Path:
    return Path(os.environ.get("SRLIB_DATA_DIR", "data"))


def default_cache_dir() -> Path:
    return Path(os.environ.get("SRLIB_CACHE_DIR", "cache"))


def locate(data: str | os.PathLike | None = None, data_dir: str | os.PathLike | None = None) -> dict:
    """Decide where the data comes from, without decoding it.

    Returns {kind, path}, and for Parquet also {files: {split: [Path, ...]}}.
    """
    explicit = data if data is not None else os.environ.get("SRLIB_DATA") or None
    if explicit is not None:
        path = Path(explicit)
        if (path / CANONICAL_DIR).is_dir():
            return {"kind": "canonical", "path": path / CANONICAL_DIR}
        if path.name == CANONICAL_DIR and path.is_dir():
            return {"kind": "canonical", "path": path}
        if path.is_dir() and (path / "train").is_dir() and (path / "test").is_dir():
            return {"kind": "imagefolder", "path": path}
        files = _parquet_splits(path) if path.is_dir() else None
        if files is not None:
            return {"kind": "parquet", "path": path, "files": files}
        raise DataError(f"{_not_a_dataset(path)}; check --data / SRLIB_DATA")
    root = Path(data_dir) if data_dir is not None else default_data_dir()
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
        source = _scan_canonical(path)
        identity: dict[str, Any] = {"source": "canonical", "url": CIFAR10_URL}
    elif where["kind"] == "imagefolder":
        source = _scan_imagefolder(path)
        identity = {"source": "imagefolder"}
    else:
        source = _scan_parquet(where["files"])
        identity = {"source": "parquet"}
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    # Folder and Parquet copies of the same images share one scheme, so they share the cached arrays.
    scheme = "canonical" if source.kind == "canonical" else "images"
    arrays, meta = load_or_build(cache / "datasets" / f"{scheme}-{source.fingerprint[:16]}.npz",
                                 lambda: _decoded(source))
    identity.update(
        lossy=source.lossy,
        path=str(path.resolve()),
        content_sha256=meta.get("content_sha256") or content_sha256(arrays),
        train_count=int(len(arrays["train_y"])),
        test_count=int(len(arrays["test_y"])),
        image_size=list(arrays["train_x"].shape[1:]),
        classes=list(source.classes),
    )
    if source.lossy:
        identity["note"] = LOSSY_NOTE
    return Dataset(arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"],
                   tuple(source.classes), identity)


def _decoded(source: _Source) -> tuple[dict, dict]:
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


class _Fingerprint:
    """sha256 over (label, image bytes) rows per split, then the class names: equal for any two
    copies holding the same encoded images in the same order, whatever their file or row names."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256(_FINGERPRINT_TAG)

    def split(self, name: str) -> None:
        self.digest.update(f"split:{name}\0".encode())

    def row(self, label: int, data: bytes) -> None:
        self.digest.update(f"{label}:{len(data)}\0".encode())
        self.digest.update(data)

    def finish(self, classes: list[str]) -> str:
        self.digest.update(json.dumps(classes).encode())
        return self.digest.hexdigest()


def _is_lossy(data: bytes) -> bool:
    """JPEG (SOI marker) or lossy WebP (a `VP8 ` chunk; `VP8L` is lossless), from the bytes themselves."""
    return data[:3] == b"\xff\xd8\xff" or (data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8 ")


# --- canonical: torchvision's pickled batches -------------------------------------------------------------

def _scan_canonical(path: Path) -> _Source:
    missing = [name for name in CANONICAL_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} lacks {missing}; re-download CIFAR-10 or delete the folder to fetch it again")
    digest = hashlib.sha256()
    for name in CANONICAL_FILES:
        digest.update(name.encode())
        digest.update((path / name).read_bytes())
    classes = [str(c) for c in _unpickle(path / "batches.meta")["label_names"]]
    return _Source("canonical", classes, digest.hexdigest(), False, lambda: _decode_canonical(path))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"cannot read {path} ({exc}); the download is damaged: delete it and fetch again") from exc


def _decode_canonical(path: Path) -> dict[str, np.ndarray]:
    def split(names: list[str]) -> tuple[np.ndarray, np.ndarray]:
        batches = [_unpickle(path / n) for n in names]
        x = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
        y = np.concatenate([np.asarray(b["labels"]) for b in batches]).astype(np.int64)
        return x, y

    train_x, train_y = split([f"data_batch_{i}" for i in range(1, 6)])
    test_x, test_y = split(["test_batch"])
    return dict(train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# --- decoding encoded images (ImageFolder files and Parquet rows alike) ------------------------------------

class _Images:
    """Decodes images one by one into one preallocated (N, H, W, 3) array; all must share one size."""

    def __init__(self, count: int) -> None:
        self.count, self.done, self.pixels = count, 0, None

    def add(self, source: Any, where: str, fix: str) -> None:
        from PIL import Image

        try:
            with Image.open(source) as im:
                array = np.asarray(im.convert("RGB"))
        except Exception as exc:  # noqa: BLE001 - PIL raises many types for damaged files
            raise DataError(f"cannot decode image {where} ({type(exc).__name__}: {exc}); {fix}") from exc
        if self.pixels is None:
            self.pixels = np.empty((self.count, *array.shape), dtype=np.uint8)
        if array.shape != self.pixels.shape[1:]:
            raise DataError(f"image {where} is {array.shape[1]}x{array.shape[0]}, the others "
                            f"{self.pixels.shape[2]}x{self.pixels.shape[1]}; all images must share one size: "
                            "resize or delete it")
        self.pixels[self.done] = array
        self.done += 1

    def result(self) -> np.ndarray:
        """(N, 3, H, W), the layout training uses."""
        assert self.pixels is not None and self.done == self.count, "every image must be added"
        return self.pixels.transpose(0, 3, 1, 2).copy()


# --- ImageFolder: train/<class>/<image>, test/<class>/<image> ----------------------------------------------

def _scan_imagefolder(root: Path) -> _Source:
    files, fingerprint, lossy = _imagefolder_files(root)
    return _Source("imagefolder", files["classes"], fingerprint, lossy,
                   lambda: _decode_imagefolder(root, files))


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


def _imagefolder_files(root: Path) -> tuple[dict, str, bool]:
    """The tree's files per split (class, then file name), its fingerprint, and whether any image is lossy."""
    train_classes, train_files = _list_split(root, "train")
    test_classes, test_files = _list_split(root, "test")
    if train_classes != test_classes:
        only_train = sorted(set(train_classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(train_classes))
        differ = "; ".join(f"{names} only in {split}/" for split, names in (("train", only_train), ("test", only_test))
                           if names)
        raise DataError(f"train and test classes differ in {root}: {differ}; every class needs a folder in both "
                        "splits: add the missing folder or remove the class from the other split")
    fingerprint, lossy = _Fingerprint(), False
    for split, files in (("train", train_files), ("test", test_files)):
        fingerprint.split(split)
        for rel, label in files:
            data = _read_image_bytes(root / rel)
            fingerprint.row(label, data)
            lossy = lossy or _is_lossy(data)
    files = {"classes": train_classes, "train": train_files, "test": test_files}
    return files, fingerprint.finish(train_classes), lossy


def _decode_imagefolder(root: Path, files: dict) -> dict[str, np.ndarray]:
    arrays = {}
    for split in SPLITS:
        images = _Images(len(files[split]))
        for rel, _ in progress_bar(files[split], desc=f"decode {split}", unit="img", mininterval=2, leave=False):
            images.add(root / rel, str(root / rel), "replace or delete that file")
        arrays[f"{split}_x"] = images.result()
        arrays[f"{split}_y"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return arrays


# --- Parquet, as the Hugging Face Hub lays out image datasets --------------------------------------------

def _parquet_splits(path: Path) -> dict[str, list[Path]] | None:
    """The split files of a Parquet dataset folder, None when it holds no Parquet files at all."""
    def visible(files: Iterable[Path]) -> list[Path]:
        return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(path).parts))

    found = visible([*path.glob("*.parquet"), *path.glob("*/*.parquet")])
    if not found:
        return None
    splits = {s: visible([*path.glob(f"{s}-*.parquet"), *path.glob(f"*/{s}-*.parquet")]) for s in SPLITS}
    folders = sorted({str(p.parent.relative_to(path)) for files in splits.values() for p in files})
    if len(folders) > 1:
        raise DataError(f"data directory {path} holds the Parquet files of several configurations "
                        f"({', '.join(f + '/' for f in folders)}); point --data / SRLIB_DATA at one of them")
    missing = [s for s in SPLITS if not splits[s]]
    if len(missing) == 2:
        names = ", ".join(str(p.relative_to(path)) for p in found[:3]) + (", ..." if len(found) > 3 else "")
        raise DataError(f"data directory {path} holds Parquet files ({names}) but none named train-*.parquet or "
                        f"test-*.parquet; a Parquet dataset needs both splits laid out as {PARQUET_LAYOUT}")
    if missing:
        have = "train" if missing == ["test"] else "test"
        raise DataError(f"data directory {path} has {have}-*.parquet but no {missing[0]}-*.parquet; a Parquet "
                        f"dataset needs both splits ({PARQUET_LAYOUT})")
    return splits


@dataclass
class _ParquetChunk:
    """A few thousand consecutive rows of one file."""

    file: Path
    first_row: int  # row number (within the file) of the chunk's first row
    labels: np.ndarray  # int64
    images: list  # encoded bytes (None where the row has none)
    paths: list | None  # the rows' original file names, when the image column records them

    def where(self, i: int) -> str:
        name = f" ({self.paths[i]})" if self.paths and self.paths[i] else ""
        return f"in row {self.first_row + i} of {self.file}{name}"


def _unreadable(file: Path, exc: Exception) -> DataError:
    return DataError(f"cannot read Parquet file {file} ({type(exc).__name__}: {exc}); it is damaged or not "
                     "Parquet: download or export it again")


def _open_parquet(file: Path) -> tuple[Any, str, list[str] | None]:
    """Open one file and check its columns; returns (ParquetFile, image column, class names or None)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(file)
        schema = parquet.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise _unreadable(file, exc) from exc
    image = next((c for c in PARQUET_IMAGE_COLUMNS if c in schema.names), None)
    if image is None:
        raise DataError(f"Parquet file {file} has no image column ({' or '.join(PARQUET_IMAGE_COLUMNS)}); its "
                        f"columns are {schema.names}: rename the image column to `image`")
    kind = schema.field(image).type
    is_bytes = pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
    if not is_bytes and not (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
        raise DataError(f"Parquet file {file}: column `{image}` is {kind}, not encoded images (a struct "
                        "{bytes, path} as the Hugging Face `Image` feature writes, or binary)")
    if PARQUET_LABEL_COLUMN not in schema.names:
        raise DataError(f"Parquet file {file} has no `{PARQUET_LABEL_COLUMN}` column; its columns are "
                        f"{schema.names}: rename the class column to `{PARQUET_LABEL_COLUMN}`")
    if not pa.types.is_integer(schema.field(PARQUET_LABEL_COLUMN).type):
        raise DataError(f"Parquet file {file}: column `{PARQUET_LABEL_COLUMN}` is "
                        f"{schema.field(PARQUET_LABEL_COLUMN).type}, not integer class indices")
    return parquet, image, _parquet_class_names(file, schema.metadata or {})


def _parquet_class_names(file: Path, metadata: dict) -> list[str] | None:
    """ClassLabel names from the `huggingface` schema metadata, if it has them."""
    if b"huggingface" not in metadata:
        return None
    try:
        info = json.loads(metadata[b"huggingface"])
    except ValueError as exc:
        raise DataError(f"Parquet file {file}: its `huggingface` schema metadata is not JSON ({exc}); "
                        "export the file again") from exc
    features = (info.get("info") or {}).get("features") or info.get("features") or {}
    names = (features.get(PARQUET_LABEL_COLUMN) or {}).get("names")
    return [str(n) for n in names] if names else None


def _parquet_chunks(parquet: Any, file: Path, image: str) -> Iterator[_ParquetChunk]:
    """The file's rows in order, PARQUET_BATCH_ROWS at a time (a few row groups at most in memory)."""
    import pyarrow as pa

    batches = parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=[image, PARQUET_LABEL_COLUMN])
    first = 0
    while True:
        try:
            batch = next(batches, None)
        except (pa.ArrowException, OSError) as exc:
            raise _unreadable(file, exc) from exc
        if batch is None:
            return
        column, labels = batch.column(image), batch.column(PARQUET_LABEL_COLUMN)
        paths = None
        if pa.types.is_struct(column.type):
            if column.type.get_field_index("path") >= 0:
                paths = column.field("path").to_pylist()
            # A null struct hides its `bytes` child: mark those rows as having no bytes.
            images = [None if missing else data for data, missing in
                      zip(column.field("bytes").to_pylist(), column.is_null().to_pylist(), strict=True)]
        else:
            images = column.to_pylist()
        chunk = _ParquetChunk(file, first, np.zeros(len(batch), dtype=np.int64), images, paths)
        if labels.null_count:
            row = labels.is_null().to_pylist().index(True)
            raise DataError(f"no label {chunk.where(row)}; every row needs a class index")
        chunk.labels = labels.to_numpy(zero_copy_only=False).astype(np.int64)
        first += len(batch)
        yield chunk


def _scan_parquet(files: dict[str, list[Path]]) -> _Source:
    """Check every file and row (labels, image bytes present) and fingerprint them, without decoding."""
    opened = {s: [(f, *_open_parquet(f)) for f in files[s]] for s in SPLITS}
    classes = _agreed_class_names([(f, names) for s in SPLITS for f, _, _, names in opened[s]])
    fingerprint, lossy, top = _Fingerprint(), False, -1
    counts = {}
    for split in SPLITS:
        fingerprint.split(split)
        counts[split] = 0
        for file, parquet, image, _ in opened[split]:
            for chunk in _parquet_chunks(parquet, file, image):
                _check_labels(chunk, classes)
                top = max(top, int(chunk.labels.max(initial=-1)))
                for i, (label, data) in enumerate(zip(chunk.labels.tolist(), chunk.images, strict=True)):
                    if not data:
                        raise DataError(f"no image bytes {chunk.where(i)}; srlib reads only images stored in the "
                                        "file: export the dataset with its images embedded")
                    fingerprint.row(label, data)
                    lossy = lossy or _is_lossy(data)
                counts[split] += len(chunk.labels)
        if counts[split] == 0:
            raise DataError(f"the {split} split ({', '.join(str(f) for f in files[split])}) has no rows; "
                            "a Parquet dataset needs images in both splits")
    classes = classes or [str(k) for k in range(top + 1)]
    return _Source("parquet", classes, fingerprint.finish(classes), lossy,
                   lambda: _decode_parquet(opened, counts))


def _agreed_class_names(files: list[tuple[Path, list[str] | None]]) -> list[str] | None:
    """The ClassLabel names the files carry (files without any are fine); they must all agree."""
    named = {(f, tuple(names)) for f, names in files if names}
    if len({names for _, names in named}) > 1:
        listing = "; ".join(f"{f.name}: {list(names)}" for f, names in sorted(named))
        raise DataError(f"the Parquet files disagree on the class names ({listing}); all files of a dataset "
                        "must carry the same ClassLabel names")
    return list(next(iter(named))[1]) if named else None


def _check_labels(chunk: _ParquetChunk, classes: list[str] | None) -> None:
    bad = np.flatnonzero((chunk.labels < 0) | (chunk.labels >= len(classes) if classes else False))
    if not len(bad):
        return
    row, label = int(bad[0]), int(chunk.labels[bad[0]])
    valid = f"0..{len(classes) - 1} (its {len(classes)} ClassLabel names)" if classes else "0 or more"
    unlabelled = " (-1 is how Hugging Face marks unlabelled rows: use a labelled split)" if label == -1 else ""
    raise DataError(f"label {label} {chunk.where(row)} is out of range: labels must be {valid}{unlabelled}; "
                    "fix that row or the file's class names")


def _decode_parquet(opened: dict[str, list], counts: dict[str, int]) -> dict[str, np.ndarray]:
    arrays = {}
    for split in SPLITS:
        images, labels = _Images(counts[split]), []
        with progress_bar(total=counts[split], desc=f"decode {split}", unit="img", mininterval=2,
                          leave=False) as bar:
            for file, parquet, image, _ in opened[split]:
                for chunk in _parquet_chunks(parquet, file, image):
                    for i, data in enumerate(chunk.images):
                        images.add(io.BytesIO(data), chunk.where(i), "replace that row or export the file again")
                    labels.append(chunk.labels)
                    bar.update(len(chunk.labels))
        arrays[f"{split}_x"] = images.result()
        arrays[f"{split}_y"] = np.concatenate(labels)
    return arrays


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
