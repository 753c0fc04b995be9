"""Parquet datasets in the Hugging Face layout: read like an ImageFolder copy, refused clearly when bad.

The generated datasets are written here with pyarrow, the way `datasets` writes an `Image` +
`ClassLabel` dataset: an image column holding a struct {bytes, path}, an int64 `label` column, and
the features as JSON in the schema metadata under `huggingface`.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import CLASSES, assert_one_clear_data_error, make_imagefolder
from PIL import Image

from srlib import data_sources
from srlib.data import describe, load_dataset, locate

IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def tree_rows(tree: Path, split: str) -> list[tuple[Path, int]]:
    """An ImageFolder split in its loading order: class, then file name."""
    return [(p, label) for label, name in enumerate(CLASSES) for p in sorted((tree / split / name).iterdir())]


def huggingface_metadata(column: str, names: list[str]) -> dict:
    features = {column: {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_split(folder: Path, split: str, images: list, labels: list, column: str = "img",
                names: list[str] | None = CLASSES, shards: int = 1, row_group_size: int = 7,
                image_type: pa.DataType = IMAGE) -> list[Path]:
    """Write one split as `shards` files train-0000k-of-0000n.parquet, rows in the given order."""
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({column: pa.array(images, type=image_type), "label": pa.array(labels, type=pa.int64())})
    if names is not None:
        table = table.replace_schema_metadata(huggingface_metadata(column, names))
    bounds = np.linspace(0, len(labels), shards + 1).astype(int)
    paths = []
    for k in range(shards):
        path = folder / f"{split}-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(table.slice(bounds[k], bounds[k + 1] - bounds[k]), path, row_group_size=row_group_size)
        paths.append(path)
    return paths


def parquet_copy(tree: Path, out: Path, column: str = "img", names: list[str] | None = CLASSES,
                 config: str | None = "plain_text", shards: int = 2, reencode=None) -> Path:
    """The Hugging Face layout of an ImageFolder tree: the same bytes (or `reencode(path)`), same order."""
    for split in ("train", "test"):
        rows = tree_rows(tree, split)
        images = [{"bytes": reencode(p) if reencode else p.read_bytes(), "path": str(p.relative_to(tree))}
                  for p, _ in rows]
        write_split(out / config if config else out, split, images, [label for _, label in rows],
                    column=column, names=names, shards=shards)
    return out


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "tree", train_per_class=3, test_per_class=2)


@pytest.fixture(autouse=True)
def small_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Read 5 rows at a time: chunks then cross row groups (7 rows) and files, as a large dataset's do."""
    monkeypatch.setattr(data_sources, "PARQUET_BATCH_ROWS", 5)


def test_parquet_copy_equals_the_imagefolder_and_shares_its_cache(tree, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    folder = load_dataset(tree, cache_dir=cache)
    copy = parquet_copy(tree, tmp_path / "pq")
    parquet = load_dataset(copy, cache_dir=tmp_path / "fresh")  # decoded from the Parquet bytes

    ident = parquet.identity
    assert ident["source"] == "parquet" and ident["path"] == str(copy.resolve())
    assert ident["content_sha256"] == folder.identity["content_sha256"]
    assert ident["classes"] == CLASSES and parquet.classes == tuple(CLASSES)
    assert (ident["train_count"], ident["test_count"], ident["image_size"]) == (30, 20, [3, 32, 32])
    assert ident["lossy"] is False and "note" not in ident
    for split in ("train", "test"):
        x, y = getattr(parquet, f"{split}_x"), getattr(parquet, f"{split}_y")
        assert x.dtype == np.uint8 and y.dtype == np.int64
        assert np.array_equal(x, getattr(folder, f"{split}_x")) and np.array_equal(y, getattr(folder, f"{split}_y"))
        # and against PIL directly, row by row
        expected = [np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p, _ in tree_rows(tree, split)]
        assert np.array_equal(x, np.stack(expected))

    def no_decoding(*_):
        raise AssertionError("decoded again although the folder copy's arrays are cached")

    monkeypatch.setattr(data_sources, "_decode_parquet", no_decoding)
    again = load_dataset(copy, cache_dir=cache)  # same bytes, labels and classes: the folder's cache
    assert again.identity["content_sha256"] == folder.identity["content_sha256"]
    assert len(list((cache / "datasets").glob("*.npz"))) == 1


def test_image_column_and_no_metadata(tree, tmp_path):
    copy = parquet_copy(tree, tmp_path / "pq", column="image", names=None, config=None, shards=1)
    ds = load_dataset(copy)
    assert ds.identity["classes"] == [str(k) for k in range(10)]
    # the pixels and labels are the folder's, so the identity is too (class names are not hashed)
    assert ds.identity["content_sha256"] == load_dataset(tree).identity["content_sha256"]


def test_raw_binary_image_column(tree, tmp_path):
    rows = {s: tree_rows(tree, s) for s in ("train", "test")}
    for split in rows:
        write_split(tmp_path / "pq" / "data", split, [p.read_bytes() for p, _ in rows[split]],
                    [label for _, label in rows[split]], column="image", image_type=pa.binary())
    ds = load_dataset(tmp_path / "pq")
    assert ds.identity["content_sha256"] == load_dataset(tree).identity["content_sha256"]


def test_identity_is_over_pixels_not_bytes(tree, tmp_path):
    """Re-encoded losslessly (other PNG settings): other bytes, other decode cache, the same identity."""
    def reencode(path: Path) -> bytes:
        buffer = io.BytesIO()
        Image.open(path).save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    cache = tmp_path / "c"
    folder = load_dataset(tree, cache_dir=cache)
    ds = load_dataset(parquet_copy(tree, tmp_path / "pq", reencode=reencode), cache_dir=cache)
    assert ds.identity["content_sha256"] == folder.identity["content_sha256"]
    assert len(list((cache / "datasets").glob("*.npz"))) == 2  # decoded separately


def test_changed_labels_or_row_order_change_the_identity(tree, tmp_path):
    base = load_dataset(parquet_copy(tree, tmp_path / "base")).identity["content_sha256"]
    rows = tree_rows(tree, "test")
    images = [{"bytes": p.read_bytes(), "path": None} for p, _ in rows]
    labels = [label for _, label in rows]
    relabelled = (images, [1] + labels[1:])  # an airplane called an automobile
    reordered = ([images[-1], *images[1:-1], images[0]], labels)  # the same images, two rows swapped
    for name, (split_images, split_labels) in {"relabelled": relabelled, "reordered": reordered}.items():
        other = parquet_copy(tree, tmp_path / name)
        for path in (other / "plain_text").glob("test-*"):
            path.unlink()
        write_split(other / "plain_text", "test", split_images, split_labels)
        assert load_dataset(other).identity["content_sha256"] != base, name


def test_jpeg_bytes_are_marked_lossy(tmp_path):
    tree = make_imagefolder(tmp_path / "jpg", 1, 1, suffix=".jpg")
    ds = load_dataset(parquet_copy(tree, tmp_path / "pq"))
    assert ds.identity["lossy"] is True and "lossy" in ds.identity["note"]


def test_locate_and_describe_name_the_layout(tree, tmp_path):
    copy = parquet_copy(tree, tmp_path / "pq")
    where = locate(copy)
    assert where["kind"] == "parquet" and [p.name for p in where["files"]["test"]] == [
        "test-00000-of-00002.parquet", "test-00001-of-00002.parquet"]
    text = describe(str(copy))
    assert text.startswith("parquet CIFAR-10 at") and "plain_text/train-00001-of-00002.parquet" in text


# --- refusals: one line each, naming the problem and the fix ---------------------------------------------

def _good(tmp_path: Path) -> Path:
    return parquet_copy(make_imagefolder(tmp_path / "t", 2, 1), tmp_path / "pq", shards=1)


def _rewrite_test(tmp_path: Path, edit) -> Path:
    """The good copy with its test split replaced by `edit(images, labels)` -> (images, labels, kwargs)."""
    path = _good(tmp_path)
    file = path / "plain_text" / "test-00000-of-00001.parquet"
    table = pq.read_table(file)
    file.unlink()
    images, labels, kwargs = edit(table.column("img").to_pylist(), table.column("label").to_pylist())
    write_split(path / "plain_text", "test", images, labels, **kwargs)
    return path


def _missing_test_split(tmp_path):
    path = _good(tmp_path)
    (path / "plain_text" / "test-00000-of-00001.parquet").unlink()
    return path


def _no_image_column(tmp_path):
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(file).rename_columns(["pixels", "label"]), file)
    return path


def _no_label_column(tmp_path):
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    pq.write_table(pq.read_table(file).rename_columns(["img", "class"]), file)
    return path


def _image_column_of_numbers(tmp_path):
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    pq.write_table(pa.table({"img": list(range(20)), "label": [0] * 20}), file)
    return path


def _labels_that_are_names(tmp_path):
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    table = pq.read_table(file)
    pq.write_table(table.set_column(1, "label", pa.array(["cat"] * len(table))), file)
    return path


def _undecodable_bytes(tmp_path):
    def edit(images, labels):
        images[3] = {"bytes": b"\x89PNG\r\n\x1a\n not really", "path": "test/bird/0000.png"}
        return images, labels, {}
    return _rewrite_test(tmp_path, edit)


def _no_image_bytes(tmp_path):
    def edit(images, labels):
        images[4] = {"bytes": None, "path": "elsewhere/0004.png"}
        return images, labels, {}
    return _rewrite_test(tmp_path, edit)


def _odd_size_image(tmp_path):
    def edit(images, labels):
        buffer = io.BytesIO()
        Image.new("RGB", (40, 32)).save(buffer, format="PNG")
        images[5] = {"bytes": buffer.getvalue(), "path": None}
        return images, labels, {}
    return _rewrite_test(tmp_path, edit)


def _label_out_of_range(tmp_path):
    return _rewrite_test(tmp_path, lambda images, labels: (images, labels[:6] + [10] + labels[7:], {}))


def _unlabelled_rows(tmp_path):
    return _rewrite_test(tmp_path, lambda images, labels: (images, [-1] * len(labels), {"names": None}))


def _class_names_disagree(tmp_path):
    return _rewrite_test(tmp_path, lambda images, labels: (images, labels, {"names": CLASSES[::-1]}))


def _misnamed_files(tmp_path):
    path = _good(tmp_path)
    for file in (path / "plain_text").iterdir():
        file.rename(file.with_name("data-" + file.name))
    return path


def _no_parquet_files(tmp_path):
    (tmp_path / "pq" / "plain_text").mkdir(parents=True)
    (tmp_path / "pq" / "README.md").write_text("the files are elsewhere")
    return tmp_path / "pq"


def _not_parquet(tmp_path):
    path = _good(tmp_path)
    (path / "plain_text" / "train-00000-of-00001.parquet").write_bytes(b"<html>rate limited</html>")
    return path


def _truncated_file(tmp_path):
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])
    return path


def _damaged_page(tmp_path):
    """Intact footer, garbage where the image bytes are: found while reading the rows."""
    path = _good(tmp_path)
    file = path / "plain_text" / "train-00000-of-00001.parquet"
    data = bytearray(file.read_bytes())
    data[8:2000] = b"\xff" * 1992
    file.write_bytes(bytes(data))
    return path


def _two_configurations(tmp_path):
    path = _good(tmp_path)
    parquet_copy(tmp_path / "t", path, config="other", shards=1)
    return path


def _a_parquet_file(tmp_path):
    return _good(tmp_path) / "plain_text" / "train-00000-of-00001.parquet"


BAD_PARQUET = [
    (_missing_test_split, "has train-*.parquet but no test-*.parquet", "needs both splits"),
    (_no_image_column, "has no image column (img or image); its columns are ['pixels', 'label']", "rename"),
    (_no_label_column, "has no `label` column", "rename the class column"),
    (_image_column_of_numbers, "column `img` is int64, not encoded images", "struct {bytes, path}"),
    (_labels_that_are_names, "column `label` is string", "not integer class indices"),
    (_undecodable_bytes, "cannot decode image in row 3 of", "replace that row or export the file again"),
    (_no_image_bytes, "no image bytes in row 4 of", "export the dataset with its images embedded"),
    (_odd_size_image, "in row 5 of", "is 40x32, the others 32x32"),
    (_label_out_of_range, "label 10 in row 6 of", "must be 0..9 (its 10 ClassLabel names)"),
    (_unlabelled_rows, "label -1 in row 0 of", "use a labelled split"),
    (_class_names_disagree, "disagree on the class names", "must carry the same ClassLabel names"),
    (_misnamed_files, "none named train-*.parquet or test-*.parquet", "<config>/train-*.parquet"),
    (_no_parquet_files, "holds no Parquet files", "nor a folder holding cifar-10-batches-py"),
    (_not_parquet, "cannot read Parquet file", "download or export it again"),
    (_truncated_file, "cannot read Parquet file", "download or export it again"),
    (_damaged_page, "cannot read Parquet file", "download or export it again"),
    (_two_configurations, "several configurations (other/, plain_text/)", "point --data / SRLIB_DATA at one"),
    (_a_parquet_file, "is a Parquet file", "point it at the folder"),
]


@pytest.mark.parametrize("make, problem, fix", BAD_PARQUET, ids=[b[0].__name__.strip("_") for b in BAD_PARQUET])
def test_bad_parquet_is_one_clear_error(tmp_path, capsys, make, problem, fix):
    assert_one_clear_data_error(make(tmp_path), tmp_path, capsys, problem, fix)


# --- the shared copies: the ImageFolder tree and its Parquet twin --------------------------------------

@pytest.fixture(scope="session")
def real_pair(real_jpeg, real_jpeg_parquet, shared_cache, tmp_path_factory):
    """Both shared JPEG copies, each decoded from its own files (the Parquet one into a fresh cache), timed."""
    seconds = {}
    t0 = time.perf_counter()
    folder = load_dataset(real_jpeg, cache_dir=shared_cache)
    seconds["folder"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    parquet = load_dataset(real_jpeg_parquet, cache_dir=tmp_path_factory.mktemp("parquet-cache"))
    seconds["parquet"] = time.perf_counter() - t0
    print(f"\n[test_parquet] load seconds: {seconds}")
    return folder, parquet


def test_real_parquet_copy_is_the_folder_copy(real_pair):
    folder, parquet = real_pair
    assert folder.identity["source"] == "imagefolder" and folder.identity["lossy"] is True
    assert parquet.identity["source"] == "parquet" and parquet.identity["lossy"] is True
    assert (parquet.identity["train_count"], parquet.identity["test_count"]) == (50_000, 10_000)
    assert parquet.classes == folder.classes == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                                 "horse", "ship", "truck")  # CIFAR-10's classes, in label order
    assert parquet.identity["content_sha256"] == folder.identity["content_sha256"]
    for name in ("train_x", "train_y", "test_x", "test_y"):
        assert np.array_equal(getattr(parquet, name), getattr(folder, name)), name


def test_real_parquet_copy_shares_the_folder_copys_cache(real_pair, real_jpeg_parquet, shared_cache, monkeypatch):
    """Same JPEG bytes, labels and classes row by row, so the folder's decoded arrays are found."""
    def no_decoding(*_):
        raise AssertionError("the Parquet copy's fingerprint differs from the folder copy's")

    monkeypatch.setattr(data_sources, "_decode_parquet", no_decoding)
    again = load_dataset(real_jpeg_parquet, cache_dir=shared_cache)
    assert again.identity["content_sha256"] == real_pair[0].identity["content_sha256"]


def test_a_parquet_copy_is_named_by_its_hub_name_else_its_folder(tree, tmp_path):
    folder = parquet_copy(tree, tmp_path / "thumbs-parquet")
    assert load_dataset(folder, cache_dir=tmp_path / "c").identity["name"] == "thumbs-parquet"  # not plain_text
    for file in folder.glob("*/*.parquet"):  # as a writer that keeps the Hub name in the metadata would
        table = pq.read_table(file)
        info = json.loads(table.schema.metadata[b"huggingface"])
        info["info"]["dataset_name"] = "someone/thumbnails"
        pq.write_table(table.replace_schema_metadata({"huggingface": json.dumps(info)}), file)
    assert load_dataset(folder, cache_dir=tmp_path / "c").identity["name"] == "someone/thumbnails"
