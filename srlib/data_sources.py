"""Readers of CIFAR-10 sources: torchvision's pickled batches, an ImageFolder tree, Parquet files in the
Hugging Face Hub layout. Each `scan_*` looks at a source without decoding it (classes, a fingerprint of the
encoded images that keys the decode cache, lossy or not) and returns a `Source` whose `decode()` gives the
uint8 arrays. srlib.data chooses the reader, caches the decoded arrays and computes the content hash.
"""

from __future__ import annotations

import hashlib
import io
import json
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DataError
from .progress import ImageMeter

CANONICAL_DIR = "cifar-10-batches-py"
CANONICAL_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
SPLITS = ("train", "test")
PARQUET_IMAGE_COLUMNS = ("img", "image")  # CIFAR-10 on the Hub uses `img`; most image datasets `image`
PARQUET_LABEL_COLUMN = "label"
PARQUET_LAYOUT = "<config>/train-*.parquet and <config>/test-*.parquet"
PARQUET_BATCH_ROWS = 4096  # rows read at a time: a few MB of encoded images, whatever the row groups
_FINGERPRINT_TAG = b"srlib-encoded-images-v1\0"


@dataclass
class Source:
    """What a scan of the source finds without decoding it."""

    kind: str  # canonical | imagefolder | parquet
    classes: list[str]
    fingerprint: str  # sha256 of the encoded source: keys the decode cache
    lossy: bool
    decode: Callable[[], dict[str, np.ndarray]]


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

def canonical_files(path: Path) -> list[Path]:
    """The files of canonical CIFAR-10 at `path`; a DataError naming those missing."""
    missing = [name for name in CANONICAL_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path} lacks {missing}; re-download CIFAR-10 or delete the folder to fetch it again")
    return [path / name for name in CANONICAL_FILES]


def scan_canonical(path: Path) -> Source:
    digest = hashlib.sha256()
    for file in canonical_files(path):
        digest.update(file.name.encode())
        digest.update(file.read_bytes())
    classes = [str(c) for c in _unpickle(path / "batches.meta")["label_names"]]
    return Source("canonical", classes, digest.hexdigest(), False, lambda: _decode_canonical(path))


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="latin1")
    except Exception as exc:
        raise DataError(f"cannot read {path} ({exc}); the download is damaged: delete it and fetch again") from exc


def _decode_canonical(path: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for split, names in (("train", CANONICAL_FILES[:5]), ("test", ["test_batch"])):
        batches = [_unpickle(path / n) for n in names]
        arrays[f"{split}_x"] = np.concatenate([b["data"] for b in batches]).reshape(-1, 3, 32, 32).astype(np.uint8)
        arrays[f"{split}_y"] = np.concatenate([np.asarray(b["labels"]) for b in batches]).astype(np.int64)
    return arrays


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

def list_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]]]:
    """A split's classes and (file relative to `root`, label) pairs, by class then name; DataError if one is empty."""
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


def scan_imagefolder(root: Path) -> Source:
    """The tree's files per split (class, then file name), fingerprinted from their bytes."""
    (classes, train_files), (test_classes, test_files) = (list_split(root, split) for split in SPLITS)
    if classes != test_classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        differ = "; ".join(f"{names} only in {split}/" for split, names in (("train", only_train), ("test", only_test))
                           if names)
        raise DataError(f"train and test classes differ in {root}: {differ}; every class needs a folder in both "
                        "splits: add the missing folder or remove the class from the other split")
    files, fingerprint, lossy = {"train": train_files, "test": test_files}, _Fingerprint(), False
    for split in SPLITS:
        fingerprint.split(split)
        for rel, label in files[split]:
            try:
                data = (root / rel).read_bytes()
            except OSError as exc:
                raise DataError(f"cannot read image {root / rel} ({type(exc).__name__}: {exc}); "
                                "fix its permissions, or replace or delete that file") from exc
            fingerprint.row(label, data)
            lossy = lossy or _is_lossy(data)
    return Source("imagefolder", classes, fingerprint.finish(classes), lossy, lambda: _decode_imagefolder(root, files))


def _decode_imagefolder(root: Path, files: dict) -> dict[str, np.ndarray]:
    arrays = {}
    for split in SPLITS:
        images, meter = _Images(len(files[split])), ImageMeter(f"decoding {split}", len(files[split]))
        for rel, _ in files[split]:
            images.add(root / rel, str(root / rel), "replace or delete that file")
            meter.update(1)
        meter.close()
        arrays[f"{split}_x"] = images.result()
        arrays[f"{split}_y"] = np.array([label for _, label in files[split]], dtype=np.int64)
    return arrays


# --- Parquet, as the Hugging Face Hub lays out image datasets --------------------------------------------

def parquet_splits(path: Path) -> dict[str, list[Path]] | None:
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
    info = _hub_info(file, schema.metadata or {})
    names = ((info.get("features") or {}).get(PARQUET_LABEL_COLUMN) or {}).get("names")
    return parquet, image, [str(n) for n in names] if names else None


def _hub_info(file: Path, metadata: dict) -> dict:
    """The `huggingface` schema metadata's dataset info (features, and dataset_name where the writer kept it)."""
    if b"huggingface" not in metadata:
        return {}
    try:
        info = json.loads(metadata[b"huggingface"])
    except ValueError as exc:
        raise DataError(f"Parquet file {file}: its `huggingface` schema metadata is not JSON ({exc}); "
                        "export the file again") from exc
    return info.get("info") or info


def parquet_hub_name(files: dict[str, list[Path]]) -> str | None:
    """The Hub dataset's name as its Parquet metadata gives it (`info.dataset_name`), None when it does not."""
    import pyarrow.parquet as pq

    first = files["train"][0]
    name = _hub_info(first, pq.read_schema(first).metadata or {}).get("dataset_name")
    return str(name) if name else None


# --- a survey for the checks before a run: classes, images per class, sample sizes, without decoding --------

@dataclass
class Survey:
    classes: list[str]
    counts: dict[str, np.ndarray]  # split -> images per class
    sizes: dict[str, tuple[int, int]]  # a sample image (where) -> its (width, height)


def _image_size(source: Any) -> tuple[int, int]:
    from PIL import Image

    with Image.open(source) as im:  # reads the header only
        return im.size


def survey_imagefolder(root: Path) -> Survey:
    """Counts from the listing; sizes from the first image of each class of each split."""
    counts, sizes, classes = {}, {}, []
    for split in SPLITS:
        classes, files = list_split(root, split)
        labels = np.array([label for _, label in files], dtype=np.int64)
        counts[split] = np.bincount(labels, minlength=len(classes))
        for label in range(len(classes)):
            rel = files[int(np.searchsorted(labels, label))][0]
            sizes[str(root / rel)] = _image_size(root / rel)
    return Survey(classes, counts, sizes)


def survey_parquet(files: dict[str, list[Path]]) -> Survey:
    """Counts from the label column; sizes from the first row of each file."""
    counts, sizes, names = {}, {}, None
    for split in SPLITS:
        labels = []
        for file in files[split]:
            parquet, image, names = _open_parquet(file)
            labels.append(parquet.read(columns=[PARQUET_LABEL_COLUMN]).column(0).to_numpy(zero_copy_only=False))
            first = next(_parquet_chunks(parquet, file, image), None)
            if first is not None and len(first.images):  # a file without rows has no size to compare
                sizes[first.where(0)] = _image_size(io.BytesIO(first.images[0] or b""))
        counts[split] = np.concatenate(labels).astype(np.int64)
    top = max(int(c.max(initial=-1)) for c in counts.values())
    classes = names or [str(k) for k in range(top + 1)]
    counts = {s: np.bincount(c[c >= 0], minlength=len(classes)) for s, c in counts.items()}
    return Survey(classes, counts, sizes)


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


def scan_parquet(files: dict[str, list[Path]]) -> Source:
    """Check every file and row (labels, image bytes present) and fingerprint them, without decoding."""
    opened = {s: [(f, *_open_parquet(f)) for f in files[s]] for s in SPLITS}
    classes = _agreed_class_names([(f, names) for s in SPLITS for f, _, _, names in opened[s]])
    fingerprint, lossy, top, counts = _Fingerprint(), False, -1, {}
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
    return Source("parquet", classes, fingerprint.finish(classes), lossy,
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
        images, labels, meter = _Images(counts[split]), [], ImageMeter(f"decoding {split}", counts[split])
        for file, parquet, image, _ in opened[split]:
            for chunk in _parquet_chunks(parquet, file, image):
                for i, data in enumerate(chunk.images):
                    images.add(io.BytesIO(data), chunk.where(i), "replace that row or export the file again")
                labels.append(chunk.labels)
                meter.update(len(chunk.labels))
        meter.close()
        arrays[f"{split}_x"] = images.result()
        arrays[f"{split}_y"] = np.concatenate(labels)
    return arrays
