import numpy as np
import pytest
import torch

from srlib.errors import WeightsError
from srlib.upscale import UPSCALERS, build_upscaler, resolve_sr_weights, upscale, upscale_cached

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


def _builders(weights_dir):
    kwargs = {"sr": {"weights": None}}
    return {name: kwargs.get(name, {}) for name in UPSCALERS}


@pytest.mark.parametrize("method", sorted(UPSCALERS))
@pytest.mark.parametrize("scale", [2, 4])
def test_every_upscaler_shape_and_dtype(method, scale, request, monkeypatch):
    if method == "sr":
        monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(request.getfixturevalue("weights_dir")))
    images = np.random.default_rng(0).integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)
    out = upscale(images, build_upscaler(method, scale, device=CPU), progress=False)
    assert out.shape == (5, 3, 32 * scale, 32 * scale) and out.dtype == np.uint8


@pytest.mark.parametrize("scale", [2, 4])
def test_bicubic_matches_reference(scale):
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    m = _bicubic_matrix(8, scale)
    expected = np.clip(np.round(np.einsum("ih,nchw,jw->ncij", m, images.astype(np.float64), m)), 0, 255)
    got = upscale(images, build_upscaler("bicubic", scale, device=CPU), progress=False)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_nearest_replicates_pixels():
    images = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    got = upscale(images, build_upscaler("nearest", 2, device=CPU), progress=False)
    assert np.array_equal(got, images.repeat(2, axis=2).repeat(2, axis=3))


def test_upscaled_arrays_are_cached(tmp_path):
    images = np.random.default_rng(2).integers(0, 256, (3, 3, 32, 32), dtype=np.uint8)
    first, ident = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    second, ident2 = upscale_cached(images, "bicubic", 2, tmp_path, progress=False)
    assert np.array_equal(first, second) and ident["cache"] == ident2["cache"]
    assert len(list((tmp_path / "upscaled").glob("*.npz"))) == 1


def test_unknown_method_names_the_choices():
    with pytest.raises(WeightsError, match="bicubic"):
        build_upscaler("lanczos", 2)


def test_wrong_scale_weights_are_refused(weights_dir):
    with pytest.raises(WeightsError, match="x3 SR model, but x2"):
        build_upscaler("sr", 2, device=CPU, weights=str(weights_dir / "dctlsa_x3.safetensors"))
    with pytest.raises(WeightsError, match="x4 SR model, but x2"):
        build_upscaler("sr", 2, device=CPU, weights=str(weights_dir / "dctlsa_x4.safetensors"))


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


def test_default_weights_with_wrong_hash_are_refused(tmp_path, weights_dir):
    (tmp_path / "dctlsa_x2.safetensors").write_bytes((weights_dir / "dctlsa_x4.safetensors").read_bytes())
    with pytest.raises(WeightsError, match="sha256"):
        resolve_sr_weights(2, weights_dir=tmp_path)


def test_no_weights_offline_gives_the_fix(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(WeightsError, match="SRLIB_WEIGHTS_DIR"):
        resolve_sr_weights(2, weights_dir=tmp_path)


@pytest.mark.slow
def test_sr_beats_bicubic_on_real_cifar(real_data, weights_dir, shared_cache, monkeypatch):
    from srlib.quality import sr_quality

    monkeypatch.setenv("SRLIB_WEIGHTS_DIR", str(weights_dir))
    record = sr_quality(scales=(2, 4), n=100, data=real_data, cache_dir=shared_cache, progress=False)
    x2, x4 = record["results"]
    assert x2["psnr_sr"] > x2["psnr_bicubic"] + 1.0, x2
    # x4 restores 8 px inputs (below DCTLSA's 16 px minimum, reflect-padded): a small PSNR gain, a clear SSIM gain
    assert x4["psnr_sr"] > x4["psnr_bicubic"], x4
    for row in (x2, x4):
        assert row["ssim_sr"] > row["ssim_bicubic"] + 0.02, row
