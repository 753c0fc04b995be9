import json

import numpy as np
import pytest
import torch

from srlib.config import make_config
from srlib.errors import ConfigError
from srlib.runs import record_dataset
from srlib.store import load_arrays
from srlib.train import epoch_order, train

TINY = dict(epochs=2, width=4, train_size=60, test_size=30, batch_size=16)


def _run(tmp_path, imagefolder, variant="original", seed=0, out="runs", **kw):
    config = make_config(variant, "smoke", seed, **{**TINY, **kw})
    return train(config, out=tmp_path / out, data=str(imagefolder), device="cpu", progress=False,
                 log=lambda *_: None)


def test_record_is_complete(tmp_path, imagefolder):
    record = _run(tmp_path, imagefolder, "resize_x2")
    run = tmp_path / "runs" / "smoke" / record_dataset(record) / "resize_x2" / "seed0"
    assert json.loads((run / "record.json").read_text()) == json.loads(json.dumps(record))
    assert record["input_px"] == 64 and record["status"] == "complete"
    assert [e["epoch"] for e in record["epochs"]] == [1, 2]
    assert record["epochs"][0]["lr"] == 0.01 and record["epochs"][1]["lr"] == pytest.approx(0.001)
    for key in ("train_loss", "train_acc", "test_loss", "test_acc", "seconds", "train_images_per_s"):
        assert all(np.isfinite(e[key]) for e in record["epochs"])
    assert set(record["summary"]) >= {"max_test_acc", "top5_mean_test_acc", "final_test_acc"}
    assert record["model"]["parameters"] > 0
    prov = record["provenance"]
    assert prov["versions"]["torch"] and prov["device"]["type"] == "cpu" and "git" in prov
    assert record["data"]["dataset"]["content_sha256"] and record["data"]["upscaler"]["method"] == "bicubic"
    arrays, meta = load_arrays(run / "predictions.npz")
    assert arrays["predictions"].shape == arrays["labels"].shape == (30,)
    accuracy = 100 * (arrays["predictions"] == arrays["labels"]).mean()
    assert accuracy == pytest.approx(record["summary"]["final_test_acc"])
    assert not (run / "checkpoint.pt").exists()


@pytest.mark.slow
def test_same_seed_same_record(tmp_path, imagefolder):
    a = _run(tmp_path, imagefolder, out="a")
    b = _run(tmp_path, imagefolder, out="b")
    strip = ("seconds", "eval_seconds", "train_images_per_s")
    assert [{k: v for k, v in e.items() if k not in strip} for e in a["epochs"]] == [
        {k: v for k, v in e.items() if k not in strip} for e in b["epochs"]]
    c = _run(tmp_path, imagefolder, seed=1, out="c")
    assert [e["train_loss"] for e in c["epochs"]] != [e["train_loss"] for e in a["epochs"]]


def test_finished_run_is_reused_not_retrained(tmp_path, imagefolder, monkeypatch):
    first = _run(tmp_path, imagefolder)
    monkeypatch.setattr("srlib.train.prepare_data", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert _run(tmp_path, imagefolder) == first


def test_a_run_finished_by_another_process_while_this_one_took_the_lock_is_reused(tmp_path, imagefolder, monkeypatch):
    """Two identical `srlib train` at once: the second looks before the first has finished and locks after it has
    released the folder; it reuses the record instead of training again and overwriting it."""
    import srlib.train as train_module

    first = _run(tmp_path, imagefolder)
    looks, real = [], train_module.find_finished

    def finished_after_the_first_look(*args):
        looks.append(args)
        return None if len(looks) == 1 else real(*args)

    monkeypatch.setattr(train_module, "find_finished", finished_after_the_first_look)
    monkeypatch.setattr(train_module, "prepare_data", lambda *a, **k: pytest.fail("retrained a finished run"))
    assert _run(tmp_path, imagefolder) == first and len(looks) == 2


def test_data_order_is_shared_by_variants_and_differs_by_seed():
    p0, f0 = epoch_order(0, 3, 100)
    p1, f1 = epoch_order(0, 3, 100)
    assert torch.equal(p0, p1) and torch.equal(f0, f1)
    assert not torch.equal(p0, epoch_order(1, 3, 100)[0]) and not torch.equal(p0, epoch_order(0, 4, 100)[0])


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch size"), (dict(epochs=-1), "epochs"), (dict(lr=0), "learning rate"),
    (dict(precision="fp8"), "precision"), (dict(bogus=1), "unknown setting"),
])
def test_impossible_overrides_are_refused(bad, match):
    with pytest.raises(ConfigError, match=match):
        make_config("original", "smoke", **bad)


def test_unknown_variant_and_profile_name_the_choices():
    with pytest.raises(ConfigError, match="sr_x4"):
        make_config("sr_x8")
    with pytest.raises(ConfigError, match="preview"):
        make_config("original", "huge")


def test_paper_profile_is_the_reference_protocol():
    c = make_config("original", "paper")
    assert (c.batch_size, c.epochs, c.lr, c.momentum, c.weight_decay, c.lr_step, c.lr_gamma, c.width) == (
        32, 45, 0.01, 0.9, 0.0, 15, 0.1, 64)
    assert c.train_size is None and c.test_size is None


@pytest.mark.slow
def test_smoke_run_on_real_data(tmp_path, real_data, weights_dir, shared_cache, monkeypatch):
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights_dir))
    config = make_config("sr_x4", "smoke", 0)
    record = train(config, out=tmp_path / "runs", data=real_data, cache_dir=shared_cache, device="cpu",
                   progress=False, log=lambda *_: None)
    assert record["input_px"] == 128 and len(record["epochs"]) == config.epochs
    assert record["data"]["upscaler"]["weights_sha256"].startswith("c81d7324")
    assert record["data"]["dataset"]["train_count"] == 50_000
