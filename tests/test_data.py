from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srlib import data as data_mod
from srlib import data_sources
from srlib.data import CANONICAL_SHA256, dataset_key, dataset_name, image_hw, load_dataset, stratified_subset
from srlib.errors import DataError


def test_imagefolder_is_decoded_and_identified(imagefolder):
    ds = load_dataset(imagefolder)
    assert ds.train_x.shape == (60, 3, 32, 32) and ds.train_x.dtype == np.uint8
    assert ds.test_x.shape == (30, 3, 32, 32)
    assert np.bincount(ds.train_y).tolist() == [6] * 10
    ident = ds.identity
    assert ident["source"] == "imagefolder" and ident["lossy"] is False
    assert ident["train_count"] == 60 and ident["test_count"] == 30 and len(ident["content_sha256"]) == 64
    assert ident["classes"][0] == "airplane"


def test_jpeg_tree_is_marked_lossy(tmp_path):
    from conftest import make_imagefolder

    ds = load_dataset(make_imagefolder(tmp_path / "jpg", 2, 1, suffix=".jpg"))
    assert ds.identity["lossy"] is True and "lossy" in ds.identity["note"]


def test_canonical_batches_are_the_default(canonical, monkeypatch):
    monkeypatch.delenv("SRLIB_DATA", raising=False)
    monkeypatch.setenv("SRLIB_DATA_DIR", str(canonical))
    ds = load_dataset()
    assert ds.identity["source"] == "canonical" and ds.identity["lossy"] is False
    assert ds.train_x.shape == (100, 3, 32, 32) and ds.test_x.shape == (20, 3, 32, 32)


def test_decoded_arrays_are_cached_and_reused(imagefolder, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = load_dataset(imagefolder, cache_dir=cache)
    files = list((cache / "datasets").glob("*.npz"))
    assert len(files) == 1

    def no_decoding(*_):
        raise AssertionError("decoded again although cached")

    monkeypatch.setattr(data_sources, "_decode_imagefolder", no_decoding)
    second = load_dataset(imagefolder, cache_dir=cache)
    assert np.array_equal(first.train_x, second.train_x)


def test_changed_content_changes_the_key(imagefolder, tmp_path):
    first = load_dataset(imagefolder).identity["content_sha256"]
    victim = next((imagefolder / "train" / "cat").iterdir())
    from PIL import Image

    Image.new("RGB", (32, 32), (1, 2, 3)).save(victim)
    assert load_dataset(imagefolder).identity["content_sha256"] != first


def test_stratified_subset_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 100)
    a = stratified_subset(labels, 55)
    assert len(a) == 55 and len(set(a)) == 55
    counts = np.bincount(labels[a], minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(a, stratified_subset(labels, 55))
    assert np.array_equal(stratified_subset(labels, None), np.arange(1000))


def test_no_data_gives_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.delenv("SRLIB_DATA", raising=False)

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network is unreachable")

    monkeypatch.setattr("torchvision.datasets.CIFAR10", Offline)
    with pytest.raises(DataError) as err:
        load_dataset(data_dir=tmp_path / "empty")
    message = str(err.value)
    assert "SRLIB_DATA" in message and "cifar-10-batches-py" in message and "network is unreachable" in message


def test_path_that_is_not_a_dataset_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not images")  # an empty folder gets its own message (test_reliability)
    with pytest.raises(DataError, match="neither an ImageFolder"):
        load_dataset(tmp_path)


def test_identity_is_the_same_pixels_and_labels_whatever_the_source(imagefolder, tmp_path):
    """Canonical batches holding an ImageFolder tree's pixels, in its order, have its content_sha256."""
    import pickle

    from conftest import CLASSES

    folder = load_dataset(imagefolder)
    batches = tmp_path / "canon" / "cifar-10-batches-py"
    batches.mkdir(parents=True)

    def batch(x: np.ndarray, y: np.ndarray) -> bytes:
        return pickle.dumps({"data": x.reshape(len(x), -1), "labels": y.tolist()})

    for i, rows in enumerate(np.array_split(np.arange(len(folder.train_y)), 5), start=1):
        (batches / f"data_batch_{i}").write_bytes(batch(folder.train_x[rows], folder.train_y[rows]))
    (batches / "test_batch").write_bytes(batch(folder.test_x, folder.test_y))
    (batches / "batches.meta").write_bytes(pickle.dumps({"label_names": CLASSES}))
    canonical = load_dataset(tmp_path / "canon")
    assert canonical.identity["source"] == "canonical"
    assert canonical.identity["content_sha256"] == folder.identity["content_sha256"]
    assert canonical.identity["content_sha256"] == data_mod.content_sha256(
        dict(train_x=folder.train_x, train_y=folder.train_y, test_x=folder.test_x, test_y=folder.test_y))


def test_identity_is_found_in_a_cache_without_it(imagefolder, tmp_path):
    """A decode cache whose meta lacks the pixel hash (an older srlib's) still gives the right identity."""
    from srlib.store import load_arrays, save_arrays

    first = load_dataset(imagefolder, cache_dir=tmp_path)
    (cache,) = (tmp_path / "datasets").iterdir()
    arrays, meta = load_arrays(cache)
    save_arrays(cache, arrays, {k: v for k, v in meta.items() if k != "content_sha256"})
    assert load_dataset(imagefolder, cache_dir=tmp_path).identity["content_sha256"] == first.identity["content_sha256"]


# `srlib data --load` on the lossless copy; the round trip above shows canonical batches holding the same pixels
# in the same order hash the same, so records made from torchvision's download are found and reused.
CANONICAL_CIFAR10_SHA256 = "c8cc1b7842dbae1862bce9c40c43a954228b05864b94dce7128f835e6c6f375a"


def test_the_lossless_copy_is_canonical_cifar10(real_parquet, shared_cache):
    """Checked against published facts of canonical CIFAR-10, then its content hash pinned."""
    ds = load_dataset(real_parquet, cache_dir=shared_cache)
    assert ds.identity["lossy"] is False and (ds.identity["train_count"], ds.identity["test_count"]) == (50_000, 10_000)
    assert ds.train_y[:5].tolist() == [6, 9, 9, 4, 1] and ds.test_y[:5].tolist() == [3, 8, 8, 0, 6]
    # keras x_train[0], first pixels of row 0 (HWC), as printed in many public notebooks
    assert ds.train_x[0, :, 0, :3].T.tolist() == [[59, 62, 63], [43, 46, 45], [50, 48, 43]]
    mean = ds.train_x.reshape(50_000, 3, -1).mean(axis=(0, 2)) / 255
    assert mean == pytest.approx([0.49139968, 0.48215841, 0.44653091], abs=5e-9)  # the published train means
    assert ds.identity["content_sha256"] == CANONICAL_CIFAR10_SHA256


def make_tree(root: Path, counts: dict[str, int], size: int = 28, mode: str = "L", test_per_class: int = 3,
              odd: tuple[str, int] | None = None) -> Path:
    """An ImageFolder of `size` px images (`mode` L: grey) with counts[class] training images per class;
    `odd` = (class, side): its first training image has another size."""
    rng = np.random.default_rng(5)
    for split in ("train", "test"):
        for label, (name, n) in enumerate(counts.items()):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n if split == "train" else test_per_class):
                side = odd[1] if odd and split == "train" and name == odd[0] and i == 0 else size
                pixels = np.clip(rng.normal(40 + 50 * label, 20, (side, side)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).convert(mode).save(folder / f"{i:03d}.png")
    return root


def test_a_dataset_is_named_by_its_folder_with_its_own_size(tmp_path):
    identity = load_dataset(make_tree(tmp_path / "Fashion MNIST", {"shirt": 2, "shoe": 2, "bag": 2}),
                            cache_dir=tmp_path / "cache").identity
    assert identity["name"] == "Fashion MNIST" and image_hw(identity) == (28, 28)
    assert identity["classes"] == ["bag", "shirt", "shoe"]  # grey images are read as RGB
    assert dataset_key(identity) == f"fashion-mnist-{identity['content_sha256'][:8]}"
    assert dataset_name(identity) == "Fashion MNIST"
    assert dataset_name({**identity, "content_sha256": CANONICAL_SHA256}) == "cifar10"  # known by content


def test_the_first_decode_says_how_far_it_is_in_lines_a_log_keeps(tmp_path, capsys):
    """Outside a terminal (a sweep's log, a notebook) the decode writes whole lines, one per split at the end
    with its rate, not a bar redrawn with carriage returns; the cached copy is read without a word."""
    tree = make_tree(tmp_path / "tree", {"cat": 12, "dog": 12}, test_per_class=5)
    load_dataset(str(tree), cache_dir=tmp_path / "cache")
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" in ")[0] for line in lines] == ["[srlib] decoding train: 24 images",
                                                         "[srlib] decoding test: 10 images"]
    assert all(line.endswith("img/s") and "\r" not in line for line in lines)
    load_dataset(str(tree), cache_dir=tmp_path / "cache")
    assert capsys.readouterr().out == ""
