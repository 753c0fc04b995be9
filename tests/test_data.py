import numpy as np
import pytest

from srlib import data as data_mod
from srlib.data import load_dataset, stratified_subset
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

    monkeypatch.setattr(data_mod, "_decode_imagefolder", no_decoding)
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
