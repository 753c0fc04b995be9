import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from srlib import upscale as up
from srlib.errors import WeightsError
from srlib.upscale import (
    SR_CHECKPOINTS,
    UPSCALERS,
    SRCheckpoint,
    build_upscaler,
    resolve_checkpoint,
    sr_checkpoint,
    sr_method,
    upscale,
    upscale_cached,
)

CPU = torch.device("cpu")


def _keys(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def _bicubic_matrix(n: int, scale: int) -> np.ndarray:
    """Keys cubic convolution (a=-0.75), half-pixel centres, clamped borders: an independent reference."""
    m = np.zeros((n * scale, n))
    for i in range(n * scale):
        src = (i + 0.5) / scale - 0.5
        base = int(np.floor(src))
        for k in range(base - 1, base + 3):
            m[i, min(max(k, 0), n - 1)] += _keys(src - k)
    return m


def _images(n: int = 5, px: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, px, px), dtype=np.uint8)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("method", sorted(UPSCALERS))
@pytest.mark.parametrize("scale", [2, 4])
def test_every_upscaler_shape_and_dtype(method, scale, tiny_sr_weights):
    kwargs = {"weights": str(tiny_sr_weights[scale])} if method == "sr" else {}
    out = upscale(_images(), build_upscaler(method, scale, device=CPU, **kwargs), progress=False)
    assert out.shape == (5, 3, 32 * scale, 32 * scale) and out.dtype == np.uint8


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_matches_reference(scale):
    images = _images(2, 8, seed=1)
    m = _bicubic_matrix(8, scale)
    expected = np.clip(np.round(np.einsum("ih,nchw,jw->ncij", m, images.astype(np.float64), m)), 0, 255)
    got = upscale(images, build_upscaler("bicubic", scale, device=CPU), progress=False)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_nearest_replicates_pixels():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    got = upscale(images, build_upscaler("nearest", 2, device=CPU), progress=False)
    assert np.array_equal(got, images.repeat(2, axis=2).repeat(2, axis=3))


def test_upscaled_arrays_are_cached(tmp_path):
    images = _images(3, seed=2)
    first, ident = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    second, ident2 = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    assert np.array_equal(first, second) and ident["cache"] == ident2["cache"]
    assert len(list((tmp_path / "upscaled").glob("*.npz"))) == 1


def test_upscaling_is_one_phase_of_a_run_that_says_what_it_reused(tmp_path, capsys):
    """A run's two splits are one count in its log, and a second run names the caches it reused."""
    splits = {"train": _images(4, seed=3), "test": _images(2, seed=4)}
    upscaler = build_upscaler("bicubic", 2, device=CPU)
    first = up.upscale_splits(splits, upscaler, tmp_path, label="resize_x2")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("[srlib] upscaling resize_x2: 6 images in ")
    again = up.upscale_splits(splits, upscaler, tmp_path, label="resize_x2")
    assert capsys.readouterr().out == "[srlib] upscaling resize_x2: reused the cached 4 train + 2 test images\n"
    for name in splits:
        assert np.array_equal(first[name][0], again[name][0]) and first[name][1] == again[name][1]


def test_a_cached_array_is_counted_once_in_words(tmp_path, capsys):
    images = _images(3, seed=5)
    upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    upscale_cached(images, "bicubic", 2, tmp_path)
    assert capsys.readouterr().out == "[srlib] upscaling bicubic_x2: reused the cached 3 images\n"


def test_the_meter_writes_a_bounded_number_of_lines():
    """A line at each further 10 % or 30 s, never two within 5 s: an SR phase of 2,500 images at 11 img/s
    (228 s in chunks of 16) writes about ten lines, not 157."""
    now, lines = [0.0], []
    meter = up.ImageMeter("upscaling sr_x4", 2500, log=lines.append, clock=lambda: now[0], live=False)
    for _ in range(0, 2500, 16):
        now[0] += 16 / 11
        meter.update(min(16, 2500 - meter.done))
    meter.close()
    assert 9 <= len(lines) <= 12, lines
    assert lines[4] == "[srlib] upscaling sr_x4: 1,280/2,500 images, 11 img/s"  # the chunk past 50 %
    assert lines[-1] == "[srlib] upscaling sr_x4: 2,500 images in 228 s, 11 img/s"


def test_sr_cache_is_keyed_by_the_weights(tmp_path, tiny_sr_weights):
    from conftest import make_tiny_sr_checkpoint

    other = make_tiny_sr_checkpoint(tmp_path / "other_x2.pth", 2, seed=1)
    images = _images(4, 16, seed=3)
    a, ident_a = upscale_cached(images, "sr", 2, tmp_path, progress=False, device=CPU, weights=str(tiny_sr_weights[2]))
    again, _ = upscale_cached(images, "sr", 2, tmp_path, progress=False, device=CPU, weights=str(tiny_sr_weights[2]))
    b, ident_b = upscale_cached(images, "sr", 2, tmp_path, progress=False, device=CPU, weights=str(other))
    assert ident_a["weights_sha256"] == _sha(tiny_sr_weights[2]) and ident_b["weights_sha256"] == _sha(other)
    assert np.array_equal(a, again) and not np.array_equal(a, b)
    assert len(list((tmp_path / "upscaled").glob("sr_x2_*.npz"))) == 2
    assert ident_a["architecture"] == "Compact" and ident_a["sr_model"] is None


@pytest.mark.parametrize(("size", "minimum", "multiple", "expected"),
                         [(32, 16, 1, (0, 0)), (8, 16, 1, (4, 4)), (12, 0, 8, (2, 2)), (9, 16, 8, (3, 4)),
                          (16, 0, 1, (0, 0))])
def test_inputs_are_padded_to_the_models_size_requirements(size, minimum, multiple, expected):
    assert up._pads(size, minimum, multiple) == expected


@pytest.mark.parametrize(("minimum", "multiple"), [(16, 1), (0, 8), (16, 8), (40, 1)])
def test_padding_is_cropped_back_exactly(minimum, multiple):
    from types import SimpleNamespace

    run = up._padded_forward(torch.nn.Upsample(scale_factor=4, mode="nearest"), 4,
                             SimpleNamespace(minimum=minimum, multiple_of=multiple))
    images = _images(2, 6)
    assert np.array_equal(run(torch.from_numpy(images)).numpy(), images.repeat(4, axis=2).repeat(4, axis=3))


def test_unknown_method_names_the_choices():
    with pytest.raises(WeightsError, match=r"bicubic.*sr@swift-srgan"):
        build_upscaler("lanczos", 2)
    with pytest.raises(WeightsError, match="unknown upscaling method 'bicubic@x'"):
        build_upscaler("bicubic@x", 2)


def test_wrong_scale_weights_are_refused(tiny_sr_weights):
    with pytest.raises(WeightsError, match="x3 SR model, but x2 was requested; pass x2 weights"):
        build_upscaler("sr", 2, device=CPU, weights=str(tiny_sr_weights[3]))
    with pytest.raises(WeightsError, match="x4 SR model, but x2"):
        build_upscaler("sr", 2, device=CPU, weights=str(tiny_sr_weights[4]))


def test_not_a_model_is_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="could not be loaded|not a model"):
        build_upscaler("sr", 2, device=CPU, weights=str(junk))


def test_non_sr_checkpoint_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in torch.nn.Linear(4, 2).state_dict().items()}, str(path))
    with pytest.raises(WeightsError):
        build_upscaler("sr", 2, device=CPU, weights=str(path))


def test_missing_weights_file_is_refused(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        build_upscaler("sr", 2, device=CPU, weights=str(tmp_path / "nope.safetensors"))


def test_a_registered_model_refuses_sr_weights(tiny_sr_weights):
    with pytest.raises(WeightsError, match="sr@swift-srgan always uses its registered weights: drop --sr-weights"):
        build_upscaler("sr@swift-srgan", 2, device=CPU, weights=str(tiny_sr_weights[2]))


def test_default_weights_with_wrong_hash_are_refused(tmp_path):
    (tmp_path / "dctlsa_x2.safetensors").write_bytes(b"some other file")
    with pytest.raises(WeightsError, match="sha256 .* for dctlsa x2 .*delete it and restore the official file"):
        resolve_checkpoint(sr_checkpoint("dctlsa", 2), tmp_path)


def test_no_weights_offline_gives_the_fix(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(WeightsError, match=rf"dctlsa_x2.safetensors .* not in {tmp_path} .*network is unreachable"
                                           r".*SRLIB_WEIGHTS_DIR.*--sr-weights"):
        resolve_checkpoint(sr_checkpoint("dctlsa", 2), tmp_path)
    with pytest.raises(WeightsError, match=r"swift_srgan_x4.pth \(swift-srgan x4\).*leave this model out"):
        resolve_checkpoint(sr_checkpoint("swift-srgan", 4), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_unknown_model_or_scale_names_what_exists():
    with pytest.raises(WeightsError, match="unknown SR model 'esrgan'; registered: dctlsa, swift-srgan"):
        sr_checkpoint("esrgan", 4)
    with pytest.raises(WeightsError, match="'ditn-real' has no x2 checkpoint \\(it has x4\\)"):
        sr_checkpoint("ditn-real", 2)


# --- the registry, with a tiny registered model: every step of the lookup without real weights ----------

@pytest.fixture
def tiny_registered(tmp_path, tiny_sr_weights, monkeypatch) -> tuple[SRCheckpoint, Path]:
    """A registry holding one tiny x2 model (its file in a fresh weights folder): (entry, folder)."""
    folder = tmp_path / "weights"
    folder.mkdir()
    (folder / "tiny_x2.pth").write_bytes(tiny_sr_weights[2].read_bytes())
    entry = SRCheckpoint("tiny", 2, "tiny_x2.pth", _sha(tiny_sr_weights[2]), "Compact", "psnr", "CC0-1.0",
                         "a test model", "https://example.invalid/tiny_x2.pth")
    monkeypatch.setattr(up, "SR_CHECKPOINTS", (*SR_CHECKPOINTS, entry))
    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(folder))
    return entry, folder


def test_a_registered_model_is_found_and_recorded(tiny_registered, tmp_path):
    entry, folder = tiny_registered
    images, ident = upscale_cached(_images(3, 16), "sr@tiny", 2, tmp_path / "cache", progress=False, device=CPU)
    assert images.shape == (3, 3, 32, 32)
    assert ident["method"] == "sr@tiny" and ident["sr_model"] == "tiny" and ident["kind"] == "psnr"
    assert ident["weights_sha256"] == entry.sha256 and ident["weights_path"] == str((folder / entry.file).resolve())
    assert Path(ident["cache"]).name.startswith("sr@tiny_x2_")


def test_a_registered_file_of_another_architecture_is_refused(tiny_registered, monkeypatch):
    entry, _ = tiny_registered
    monkeypatch.setattr(up, "SR_CHECKPOINTS", (*SR_CHECKPOINTS, dataclasses.replace(entry, architecture="DITN")))
    with pytest.raises(WeightsError, match="is a Compact model, the registry expects DITN"):
        build_upscaler("sr@tiny", 2, device=CPU)


def test_a_missing_registered_file_is_downloaded_and_verified(tiny_registered, monkeypatch):
    entry, folder = tiny_registered
    payload = (folder / entry.file).read_bytes()
    (folder / entry.file).unlink()
    served = {"bytes": payload[:-1] + b"x"}  # first a damaged download, then the right one

    class Response:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            return served["bytes"]

    monkeypatch.setattr("urllib.request.urlopen", lambda url, timeout: Response())
    with pytest.raises(WeightsError, match="does not match the sha256 the registry expects for tiny x2; not saved"):
        resolve_checkpoint(entry)
    assert not (folder / entry.file).exists()
    served["bytes"] = payload
    path, sha = resolve_checkpoint(entry)
    assert path == folder / entry.file and sha == entry.sha256 and _sha(path) == entry.sha256


def test_a_registered_file_without_url_names_file_folder_and_fix(tmp_path):
    entry = SRCheckpoint("offline", 2, "offline_x2.pth", "0" * 64, "Compact", "psnr", "-", "-", None)
    with pytest.raises(WeightsError, match=rf"offline_x2.pth \(offline x2\) are not in {tmp_path} and have no "
                                           r"download URL. Fix: put offline_x2.pth into .* SRLIB_WEIGHTS_DIR"):
        resolve_checkpoint(entry, tmp_path)


def test_the_registry_is_consistent():
    from srlib.config import SR_MODEL_VARIANTS, VARIANTS

    assert len({(c.model, c.scale) for c in SR_CHECKPOINTS}) == len(SR_CHECKPOINTS)
    assert len({c.file for c in SR_CHECKPOINTS}) == len(SR_CHECKPOINTS)
    for c in SR_CHECKPOINTS:
        assert len(c.sha256) == 64 and int(c.sha256, 16) >= 0, c
        assert c.kind in ("psnr", "gan", "real-world", "real-world-gan") and c.license and c.url, c
        if c.scale in (2, 4):  # every registered model at a study scale is a variant, DCTLSA as sr_x2/sr_x4
            name = f"sr_x{c.scale}" if c.model == up.DEFAULT_SR_MODEL else f"sr_x{c.scale}@{c.model}"
            assert VARIANTS[name].method == sr_method(c.model) and VARIANTS[name].scale == c.scale
    assert set(SR_MODEL_VARIANTS) == {"sr_x2@swift-srgan", "sr_x4@swift-srgan", "sr_x4@ditn-real",
                                      "sr_x4@ditn-real-gan"}


# --- every registered checkpoint, on the real files (SRLIB_WEIGHTS_DIR) -----------------------------------

@pytest.fixture
def registry_dir() -> Path:
    folder = Path(os.environ.get("SRLIB_WEIGHTS_DIR", "weights"))
    if not folder.is_dir():
        if os.environ.get("SRLIB_REQUIRE_REAL"):
            pytest.fail("SRLIB_REQUIRE_REAL is set but SRLIB_WEIGHTS_DIR names no folder")
        pytest.skip("set SRLIB_WEIGHTS_DIR to the folder of the registered SR weights")
    return folder


@pytest.mark.parametrize("entry", SR_CHECKPOINTS, ids=lambda c: c.label.replace(" ", "-"))
def test_every_registered_checkpoint_is_what_the_registry_says(entry, registry_dir):
    from srlib.upscale import load_sr_model

    if not (registry_dir / entry.file).is_file():
        if os.environ.get("SRLIB_REQUIRE_REAL"):
            pytest.fail(f"SRLIB_REQUIRE_REAL is set but {registry_dir} lacks {entry.file}")
        pytest.skip(f"{registry_dir} lacks {entry.file}")
    assert _sha(registry_dir / entry.file) == entry.sha256
    _, descriptor = load_sr_model(registry_dir / entry.file, entry.scale)  # refuses any other scale
    assert descriptor.architecture.id == entry.architecture and descriptor.scale == entry.scale
    upscaler = build_upscaler(sr_method(entry.model), entry.scale, device=CPU, weights_dir=registry_dir)
    for px in (32, 8):  # the training size, and the smallest SR-quality input (padded for DCTLSA)
        out = upscale(_images(2, px), upscaler, progress=False)
        assert out.shape == (2, 3, px * entry.scale, px * entry.scale)
    assert upscaler.identity["weights_sha256"] == entry.sha256 and upscaler.identity["sr_model"] == entry.model


def test_real_weights_of_the_wrong_scale_are_refused(weights_dir):
    with pytest.raises(WeightsError, match="x3 SR model, but x2"):
        build_upscaler("sr", 2, device=CPU, weights=str(weights_dir / "dctlsa_x3.safetensors"))
    with pytest.raises(WeightsError, match="x4 SR model, but x2"):
        build_upscaler("sr", 2, device=CPU, weights=str(weights_dir / "swift_srgan_x4.pth"))


@pytest.mark.slow
def test_sr_beats_bicubic_on_real_cifar(real_data, weights_dir, shared_cache, monkeypatch):
    from srlib.quality import sr_quality

    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights_dir))
    record = sr_quality(scales=(2, 4), n=100, data=real_data, cache_dir=shared_cache, progress=False,
                        models=["dctlsa"], device=CPU)
    x2, x4 = record["results"]
    assert x2["psnr_sr"] > x2["psnr_bicubic"] + 1.0, x2
    # x4 restores 8 px inputs (below DCTLSA's 16 px minimum, reflect-padded): a small PSNR gain, a clear SSIM gain
    assert x4["psnr_sr"] > x4["psnr_bicubic"], x4
    for row in (x2, x4):
        assert row["ssim_sr"] > row["ssim_bicubic"] + 0.02, row


def test_a_registered_model_variant_trains_and_records_its_weights(tiny_registered, imagefolder, tmp_path,
                                                                   monkeypatch, one_thread):
    import json

    from srlib import config
    from srlib.cli import main

    entry, _ = tiny_registered
    monkeypatch.setitem(config.VARIANTS, "sr_x2@tiny", config.Variant("sr@tiny", 2))
    code = main(["train", "--variant", "sr_x2@tiny", "--profile", "smoke", "--epochs", "1", "--width", "4",
                 "--train-size", "20", "--test-size", "10", "--data", str(imagefolder), "--out", str(tmp_path),
                 "--device", "cpu"])
    (record_file,) = tmp_path.glob("smoke/**/sr_x2@tiny/seed0/record.json")  # whatever folder names the data
    record = json.loads(record_file.read_text())
    assert code == 0 and record["input_px"] == 64
    upscaler = record["data"]["upscaler"]
    assert (upscaler["method"], upscaler["sr_model"], upscaler["weights_sha256"]) == ("sr@tiny", "tiny", entry.sha256)
