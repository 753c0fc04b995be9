import numpy as np
import pytest

from srlib.quality import downscale, psnr, ssim


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
