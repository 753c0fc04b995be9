import json

import numpy as np
import pytest

from srlib.data import dataset_key
from srlib.errors import WeightsError
from srlib.quality import compare, downscale, psnr, quality_table, sr_candidates, sr_quality, ssim, upscalers_table
from srlib.upscale import SR_CHECKPOINTS, sr_models


def test_psnr_known_value():
    a = np.zeros((1, 3, 4, 4), dtype=np.uint8)
    b = np.full_like(a, 10)
    assert psnr(a, b)[0] == pytest.approx(10 * np.log10(255**2 / 100))


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-30, 30, a.shape), 0, 255).astype(np.uint8)
    ours = ssim(a, b)
    for i in range(3):
        ref = metrics.structural_similarity(a[i], b[i], channel_axis=0, data_range=255, gaussian_weights=True,
                                            sigma=1.5, use_sample_covariance=False)
        assert ours[i] == pytest.approx(ref, abs=1e-6)
    assert ssim(a, a) == pytest.approx(np.ones(3))


def test_downscale_shape():
    a = np.zeros((2, 3, 32, 32), dtype=np.uint8)
    assert downscale(a, 4).shape == (2, 3, 8, 8)


def test_gains_and_intervals_on_known_errors():
    hr = np.random.default_rng(1).integers(20, 200, (6, 3, 16, 16), dtype=np.uint8)
    off_by = np.array([1, 1, 1, 2, 2, 2])[:, None, None, None]  # SR errs by 1 or 2 grey levels, bicubic by 5
    row = compare(hr, hr + np.uint8(5), (hr + off_by).astype(np.uint8))
    gains = 10 * np.log10(25 / off_by.ravel() ** 2)  # PSNR(off by d) = 10 log10(255^2 / d^2)
    assert row["psnr_gain"] == pytest.approx(gains.mean())
    half = 2.5706 * gains.std(ddof=1) / np.sqrt(6)  # t(0.975, 5 df)
    assert row["psnr_gain_ci95"] == pytest.approx([gains.mean() - half, gains.mean() + half], abs=1e-3)
    assert row["sr_better_psnr_fraction"] == 1.0 and row["ssim_gain"] > 0


def test_every_registered_model_is_measured_by_default():
    candidates = sr_candidates((2, 4))
    by_scale = sorted(((c.model, c.scale) for c in SR_CHECKPOINTS if c.scale != 3), key=lambda row: row[1])
    assert [(c.model, c.scale) for c in candidates] == by_scale  # scale by scale, in registry order
    assert {c.variant for c in candidates} == {"sr_x2", "sr_x4", "sr_x2@swift-srgan", "sr_x4@swift-srgan",
                                               "sr_x4@ditn-real", "sr_x4@ditn-real-gan"}


def test_sr_weights_stand_for_the_variant_they_trained(tiny_sr_weights):
    candidates = sr_candidates((2, 4), ["dctlsa"], [str(tiny_sr_weights[2])])
    rows = {(c.model, c.scale): c.variant for c in candidates}
    assert rows == {("dctlsa", 2): None, ("tiny_compact_x2.pth", 2): "sr_x2", ("dctlsa", 4): "sr_x4"}


def test_bad_model_choices_are_refused(tiny_sr_weights):
    with pytest.raises(WeightsError, match=f"registered: {', '.join(sr_models())}"):
        sr_candidates((2,), ["esrgan"])
    with pytest.raises(WeightsError, match="is a x3 SR model, but only x2, x4 are measured; add 3 to --scales"):
        sr_candidates((2, 4), [], [str(tiny_sr_weights[3])])
    with pytest.raises(WeightsError, match="no SR model to measure at x2"):
        sr_candidates((2,), ["ditn-real"])


def test_sr_quality_on_generated_data_with_tiny_weights(imagefolder, tmp_path, tiny_sr_weights, one_thread):
    out = tmp_path / "sr_quality.json"
    record = sr_quality(scales=(2, 4), n=20, data=str(imagefolder), out=out, models=[], progress=False,
                        weights=[str(tiny_sr_weights[4]), str(tiny_sr_weights[2])])
    assert json.loads(out.read_text())["results"] == record["results"]
    assert [(r["scale"], r["model"], r["variant"]) for r in record["results"]] == [
        (2, "tiny_compact_x2.pth", "sr_x2"), (4, "tiny_compact_x4.pth", "sr_x4")]
    for r in record["results"]:
        assert r["images"] == 20 and r["low_px"] == 32 // r["scale"]
        assert r["psnr_gain_ci95"][0] < r["psnr_gain"] < r["psnr_gain_ci95"][1]
        assert r["images_per_s"] > 0
    assert record["upscalers"]["tiny_compact_x2.pth x2"]["architecture"] == "Compact"
    assert list(quality_table(record).columns)[:3] == ["kind", "PSNR bicubic (dB)", "PSNR SR (dB)"]
    assert upscalers_table(record).loc["tiny_compact_x4.pth x4", "architecture"] == "Compact"


def test_sr_quality_command(imagefolder, tmp_path, tiny_sr_weights, one_thread, capsys):
    from srlib.cli import main

    out = tmp_path / "q.json"
    code = main(["sr-quality", "--scales", "2", "--n", "10", "--models", "--sr-weights", str(tiny_sr_weights[2]),
                 "--data", str(imagefolder), "--out", str(out)])
    assert code == 0 and json.loads(out.read_text())["results"][0]["model"] == "tiny_compact_x2.pth"
    assert "x2 tiny_compact_x2.pth: PSNR bicubic" in capsys.readouterr().out
    assert main(["sr-quality", "--scales", "2", "--sr-weights", str(tiny_sr_weights[4]), "--data",
                 str(imagefolder), "--out", str(out)]) == 2
    assert "is a x4 SR model, but only x2 are measured" in capsys.readouterr().err


def test_sr_quality_command_writes_beside_the_runs_on_its_data(imagefolder, tmp_path, tiny_sr_weights, one_thread,
                                                              monkeypatch, capsys):
    from srlib.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["sr-quality", "--scales", "2", "--n", "10", "--models", "--sr-weights", str(tiny_sr_weights[2]),
                 "--data", str(imagefolder), "--cache-dir", "cache", "--profile", "smoke"]) == 0
    (saved,) = (tmp_path / "runs" / "smoke").glob("*/sr_quality.json")
    assert saved.parent.name == dataset_key(json.loads(saved.read_text())["data"])
    assert capsys.readouterr().out.endswith(f"record: {saved.relative_to(tmp_path)}\n")


@pytest.mark.slow
def test_sr_quality_notebook_without_real_weights(imagefolder, tmp_path, tiny_sr_weights):
    import papermill as pm

    from srlib.runs import NOTEBOOKS

    executed = tmp_path / "sr_quality.ipynb"
    pm.execute_notebook(str(NOTEBOOKS / "sr_quality.ipynb"), str(executed), kernel_name="python3",
                        progress_bar=False, parameters={
                            "profile": "smoke", "out": str(tmp_path / "runs"), "data": str(imagefolder),
                            "cache_dir": str(tmp_path / "cache"), "models": [],
                            "sr_weights": [str(tiny_sr_weights[2]), str(tiny_sr_weights[4])]})
    (saved,) = (tmp_path / "runs" / "smoke").glob("*/sr_quality.json")  # beside the runs on this data
    record = json.loads(saved.read_text())
    assert saved.parent.name == dataset_key(record["data"])
    assert [r["model"] for r in record["results"]] == ["tiny_compact_x2.pth", "tiny_compact_x4.pth"]
    text = executed.read_text()
    assert text.count("image/png") == 2 and "tiny_compact_x4.pth x4" in text  # a grid per scale, the weights
    # records_only shows that measurement as saved, also without the data here (the dataset's key is given)
    saved.write_text(json.dumps({**record, "finished": "measured elsewhere"}))
    pm.execute_notebook(str(NOTEBOOKS / "sr_quality.ipynb"), str(executed), kernel_name="python3",
                        progress_bar=False, parameters={
                            "profile": "smoke", "out": str(tmp_path / "runs"), "data": str(tmp_path / "absent"),
                            "records_only": True, "dataset": saved.parent.name})
    assert json.loads(saved.read_text())["finished"] == "measured elsewhere"
    assert "The example images need the data" in executed.read_text()
