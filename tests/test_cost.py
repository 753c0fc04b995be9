"""The cost model (srlib.cost) and the FLOP count it rests on (srlib.flops)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from srlib import cost, flops
from srlib.model import resnet18


def _conv_and_linear_flops(px: int, width: int) -> float:
    """An independent count: 2 x multiply-adds of every Conv2d and Linear, from their shapes and the
    spatial size each one sees (traced with forward hooks)."""
    model, total = resnet18(width=width), [0.0]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total[0] += 2.0 * k * output.numel()
        elif isinstance(module, nn.Linear):
            total[0] += 2.0 * module.in_features * output.numel()

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.zeros(1, 3, px, px))
    return total[0]


@pytest.mark.parametrize("px, width", [(32, 8), (64, 4), (32, 64)])
def test_flop_count_matches_the_layers(px, width):
    assert flops.forward_flops_per_image(px, width) == pytest.approx(_conv_and_linear_flops(px, width), rel=1e-9)


def test_flops_scale_with_pixels_and_a_training_step_is_three_forward_passes():
    f32, f64, f128 = (flops.forward_flops_per_image(px) for px in (32, 64, 128))
    assert f64 == pytest.approx(4 * f32, rel=1e-3) and f128 == pytest.approx(16 * f32, rel=1e-3)
    assert flops.train_flops_per_image(32) == 3 * f32
    assert 1.0e9 < f32 < 1.2e9  # ~1.11 GFLOP: the reference ResNet-18 at 32 px
    with pytest.raises(ValueError):
        flops.forward_flops_per_image(0)


def test_fit_recovers_the_rate_and_overhead_of_two_sizes():
    true = cost.Speed(5e10, 2e-3, "true")
    sizes = [(32, 8), (64, 8), (32, 64)]
    per_image = [flops.train_flops_per_image(px, w) for px, w in sizes]
    samples = [(f, true.image_s(f)) for f in per_image]
    fitted = cost.fit_speed(samples, "cpu")
    assert fitted.flop_rate == pytest.approx(5e10, rel=1e-6)
    assert fitted.overhead_s == pytest.approx(2e-3, rel=1e-6)
    assert "3 earlier run" in fitted.basis


def test_fit_of_one_size_keeps_the_rough_overhead_and_nonsense_falls_back():
    rough = cost.rough_speed("cpu")
    one = cost.fit_speed([(1e9, rough.overhead_s + 0.01)], "cpu")
    assert one.overhead_s == rough.overhead_s and one.flop_rate == pytest.approx(1e11)
    assert cost.fit_speed([], "cpu") == rough
    # bigger networks measured faster than smaller ones: no physical fit, so the rough speed
    assert cost.fit_speed([(1e9, 0.5), (1e10, rough.overhead_s / 2)], "cpu") == rough


def test_epoch_counts_a_test_image_as_a_forward_pass():
    assert cost.epoch_images(1000, 300) == pytest.approx(cost.epoch_images(1000, 0) * 1.1)


def test_runs_wait_for_the_first_free_slot():
    # Two slots busy for 100 s and 400 s; the queue (200 s, 50 s) starts as they free: 100+200 = 300, then
    # 300+50 = 350 on the slot that freed first, against 400 for the long run.
    assert cost.finish_times([(0, 100), (0, 400), (0, 200), (0, 50)], slots=2) == [100, 400, 300, 350]
    assert cost.finish_times([(0, 30), (0, 60)], slots=4) == [30, 60]
    assert cost.finish_times([], slots=2) == []
    # setup seconds first, then the work at a rate shared by the runs computing at that moment: run 1 alone for
    # 10 s (20 units), both at 1/s until run 1 ends at 90 (run 0 has 20 left), run 0 alone at 2/s: ends at 100
    assert cost.finish_times([(10, 100), (0, 100)], slots=2, rate=lambda i, n: 2.0 / n) == pytest.approx([100, 90])
    assert cost.finish_times([(0, 1)], slots=1, rate=lambda i, n: None) == [float("inf")]


def _run(flops: float, epoch_s: float, kind: str = "none", images: int = 0) -> cost.RunEstimate:
    return cost.RunEstimate(flops, 1000.0, 6, epoch_s, "rough cpu rate", False, images, kind, 10.0)


def test_measurements_correct_each_phase_on_its_own():
    measured = cost.Measured()
    small, large, sr = _run(1e8, 10.0), _run(1.6e9, 40.0), _run(4e8, 20.0, "sr", 1000)
    assert measured.epoch(large) == 40.0 and measured.upscale_s(sr) == 100.0  # nothing measured: the estimates
    measured.epoch_s[1e8], measured.epoch_images[1e8] = 20.0, 1000.0  # small epochs took twice their estimate
    assert measured.epoch(small) == 20.0
    # a size not measured: the speed fitted to the measured one (rough overhead kept), never the small one's ratio
    fitted = cost.fit_speed([(1e8, 0.02)], "cpu")
    assert measured.epoch(large) == pytest.approx(1000 * fitted.image_s(1.6e9))
    assert measured.upscale_s(sr) == 100.0  # epochs measured, upscaling not: its estimate stands
    measured.upscale_rate["sr"] = 5.0
    assert measured.upscale_s(sr) == 200.0 and measured.upscale_s(sr, images=500) == 100.0
