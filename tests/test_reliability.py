"""Bad input gets one clear error naming the problem and the fix; writes are atomic; resume state is complete.

Errors already covered elsewhere (not repeated here): unknown variant/profile and impossible overrides
(test_train, test_cli), weights missing / wrong sha256 / wrong scale / not a model (test_upscale),
no data offline and a path that is no dataset (test_data).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import assert_one_clear_data_error, make_canonical, make_imagefolder

from srlib.cli import main
from srlib.config import make_config
from srlib.data import load_dataset, stratified_subset
from srlib.errors import ConfigError, DataError, SrlibError, WeightsError
from srlib.numerics import Numerics
from srlib.runs import run_dirs
from srlib.store import atomic_write_bytes, load_arrays, load_torch, save_arrays, sha256_array
from srlib.train import evaluate, prepare_data, train, train_epoch
from srlib.upscale import load_sr_model

pytestmark = pytest.mark.usefixtures("one_thread")


def run_dir(out: Path, config) -> Path:
    """The one folder of `config`'s run under `out`, whatever the data's key in its path."""
    [directory] = run_dirs(out, config.profile, variant=config.variant, seed=config.seed)
    return directory


# --- bad data -----------------------------------------------------------------------------------------

def _missing(root: Path) -> Path:
    return root / "no-such-folder"


def _empty(root: Path) -> Path:
    (root / "empty").mkdir()
    return root / "empty"


def _a_file(root: Path) -> Path:
    (root / "data.zip").write_bytes(b"PK")
    return root / "data.zip"


def _no_test_split(root: Path) -> Path:
    (root / "half" / "train" / "cat").mkdir(parents=True)
    return root / "half"


def _empty_class(root: Path) -> Path:
    for image in (root / "tree" / "train" / "cat").iterdir():
        image.unlink()
    return root / "tree"


def _class_missing_in_test(root: Path) -> Path:
    for image in (root / "tree" / "test" / "cat").iterdir():
        image.unlink()
    (root / "tree" / "test" / "cat").rmdir()
    return root / "tree"


def _corrupt_image(root: Path) -> Path:
    (root / "tree" / "train" / "dog" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root / "tree"


def _truncated_image(root: Path) -> Path:
    image = root / "tree" / "test" / "frog" / "0000.png"
    image.write_bytes(image.read_bytes()[:60])
    return root / "tree"


def _unreadable_image(root: Path) -> Path:
    (root / "tree" / "train" / "ship" / "0002.png").unlink()
    (root / "tree" / "train" / "ship" / "0002.png").symlink_to(root / "gone.png")  # dangling: cannot be opened
    return root / "tree"


def _odd_size_image(root: Path) -> Path:
    from PIL import Image

    Image.new("RGB", (40, 32)).save(root / "tree" / "train" / "bird" / "0000.png")
    return root / "tree"


def _damaged_canonical(root: Path) -> Path:
    (make_canonical(root / "canon") / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x04 truncated")
    return root / "canon"


def _incomplete_canonical(root: Path) -> Path:
    (make_canonical(root / "canon") / "cifar-10-batches-py" / "test_batch").unlink()
    return root / "canon"


BAD_DATA = [  # (make the fault, words naming the problem, words naming the fix)
    (_missing, "does not exist", "check --data / SRLIB_DATA"),
    (_empty, "is empty", "put an ImageFolder tree"),
    (_a_file, "is a file, not a directory", "check --data"),
    (_no_test_split, "has train/ but no test/", "needs both splits"),
    (_empty_class, "cat holds no images", "add its images or remove the folder"),
    (_class_missing_in_test, "['cat'] only in train/", "add the missing folder"),
    (_corrupt_image, "cannot decode image", "replace or delete that file"),
    (_truncated_image, "cannot decode image", "replace or delete that file"),
    (_unreadable_image, "cannot read image", "fix its permissions, or replace or delete"),
    (_odd_size_image, "is 40x32, the others 32x32", "resize or delete it"),
    (_damaged_canonical, "data_batch_3", "delete it and fetch again"),
    (_incomplete_canonical, "lacks ['test_batch']", "re-download CIFAR-10"),
]


@pytest.mark.parametrize("make, problem, fix", BAD_DATA, ids=[b[0].__name__.strip("_") for b in BAD_DATA])
def test_bad_data_is_one_clear_error(tmp_path, capsys, make, problem, fix):
    make_imagefolder(tmp_path / "tree", train_per_class=3, test_per_class=1)
    assert_one_clear_data_error(make(tmp_path), tmp_path, capsys, problem, fix)


def test_a_subset_larger_than_a_class_names_the_fix():
    labels = np.concatenate([[0], np.repeat(np.arange(1, 10), 10)])  # one image of class 0, ten of the others
    with pytest.raises(DataError, match="needs 5 images of class 0, only 1 exist; ask for a smaller subset"):
        stratified_subset(labels, 50)


# --- bad weights --------------------------------------------------------------------------------------

def _compact(tmp_path: Path, **kwargs) -> Path:
    from safetensors.torch import save_file
    from spandrel.architectures.Compact.__arch.SRVGG import SRVGGNetCompact

    path = tmp_path / "compact.safetensors"
    model = SRVGGNetCompact(num_feat=4, num_conv=1, **kwargs)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def test_a_restoration_model_is_not_an_sr_model(tmp_path):
    with pytest.raises(WeightsError, match="model for 'Restoration', not single-image super-resolution; pass an SR"):
        load_sr_model(_compact(tmp_path, upscale=1), 2)


def test_a_grayscale_sr_model_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="maps 1 to 1 channels; an RGB model is needed"):
        load_sr_model(_compact(tmp_path, upscale=2, num_in_ch=1, num_out_ch=1), 2)


def test_a_folder_given_as_weights_is_refused(tmp_path):
    from srlib.upscale import checkpoint_scale

    with pytest.raises(WeightsError, match="is a directory; pass the checkpoint file to --sr-weights"):
        checkpoint_scale(tmp_path)


def test_junk_weights_through_the_cli_are_one_clear_line(imagefolder, tmp_path, capsys):
    junk = tmp_path / "weights.pth"
    junk.write_bytes(os.urandom(256))
    code = main(["train", "--variant", "sr_x2", "--profile", "smoke", "--sr-weights", str(junk), "--data",
                 str(imagefolder), "--out", str(tmp_path / "runs"), "--device", "cpu"])
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and line.startswith(f"srlib: error: {junk} could not be loaded as a model")
    assert "pass a valid SR checkpoint" in line


# --- bad settings -------------------------------------------------------------------------------------

@pytest.mark.parametrize("option, value, problem", [
    ("--epochs", "-1", "epochs must be >= 0"), ("--batch-size", "0", "batch size must be >= 1"),
    ("--width", "0", "width must be >= 1"), ("--train-size", "5", "train size must be >= 10"),
])
def test_impossible_overrides_through_the_cli(capsys, option, value, problem):
    assert main(["train", "--variant", "original", "--profile", "smoke", option, value]) == 2
    assert capsys.readouterr().err.strip().startswith(f"srlib: error: {problem}")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_fix(imagefolder, tmp_path):
    with pytest.raises(ConfigError, match="no CUDA GPU; use --device cpu"):
        train(make_config("original", "smoke"), out=tmp_path, data=str(imagefolder), device="cuda", progress=False)


def test_error_messages_are_one_line():
    message = DataError("cannot read x (Traceback:\n  line 1\n  line 2)")
    assert str(message) == "cannot read x (Traceback: line 1 line 2)"
    assert isinstance(WeightsError("x"), SrlibError)


# --- atomic writes ------------------------------------------------------------------------------------

def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "record.json"
    path.write_text("old")

    def crash(f):
        f.write(b"half of the new record")
        raise RuntimeError("writer crashed")

    with pytest.raises(RuntimeError, match="writer crashed"):
        atomic_write_bytes(path, crash)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["record.json"]


def test_temporary_files_of_killed_writers_are_removed_live_ones_kept(tmp_path):
    from srlib import store

    path = tmp_path / "x.npz"
    dead = tmp_path / f".x.npz.{store._HOST}-{2**22 + 1}.abc.tmp"  # above the usual pid_max: no such process
    live = tmp_path / f".x.npz.{store._HOST}-1.def.tmp"  # pid 1 is always alive
    dead.write_bytes(b"half")
    live.write_bytes(b"in progress")
    save_arrays(path, {"a": np.arange(3)})
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, "x.npz"])


def test_caches_from_before_the_seal_are_still_verified(tmp_path):
    """.npz files written before the whole-file seal carry per-array hashes; those are still checked."""
    import json

    path = tmp_path / "old.npz"
    good = np.arange(10)

    def write_old(array: np.ndarray) -> None:
        header = json.dumps({"meta": {}, "sha256": {"a": sha256_array(good)}}).encode()
        np.savez(path, a=array, __header__=np.frombuffer(header, dtype=np.uint8))

    write_old(good)
    assert np.array_equal(load_arrays(path)[0]["a"], good)
    write_old(good + 1)
    with pytest.raises(SrlibError, match="does not match its sha256"):
        load_arrays(path)


# --- what a checkpoint holds ---------------------------------------------------------------------------

def _tiny_config():
    return make_config("original", "smoke", 0, epochs=2, width=8, train_size=60, test_size=30, batch_size=16)


def test_training_leaves_the_global_rngs_alone(imagefolder):
    """Resuming needs no RNG state because training draws from none of the global generators."""
    config = _tiny_config()
    data = prepare_data(config, load_dataset(imagefolder), torch.device("cpu"), progress=False)
    torch.manual_seed(0)
    from srlib.model import resnet18

    model = resnet18(width=8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    numerics = Numerics(bf16=False, channels_last=False, deterministic=True, compile=False)
    train_epoch(model, optimizer, data, config, 0, numerics, False)
    evaluate(model, data.test_x, data.test_y, numerics)
    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]


def test_checkpoint_holds_everything_a_resume_needs(imagefolder, tmp_path, monkeypatch):
    import srlib.train as train_module

    config = _tiny_config()
    real = train_module.train_epoch

    def stop_in_epoch_2(model, optimizer, data, cfg, epoch, *rest):
        if epoch == 1:
            raise KeyboardInterrupt
        return real(model, optimizer, data, cfg, epoch, *rest)

    monkeypatch.setattr(train_module, "train_epoch", stop_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(config, out=tmp_path, data=str(imagefolder), device="cpu", progress=False, log=lambda *_: None)
    state = load_torch(run_dir(tmp_path, config) / "checkpoint.pt")
    assert state["epoch"] == 1 and state["config"] == config.to_dict() and len(state["epochs"]) == 1
    assert {"model", "optimizer", "scheduler", "rng", "data"} <= set(state)
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python"}
    assert state["optimizer"]["state"] and state["scheduler"]["last_epoch"] == 1
    assert "content_sha256" in state["data"]  # what it was trained on, so other data is refused
