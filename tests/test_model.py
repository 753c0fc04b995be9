import pytest
import torch

from srlib.model import count_parameters, resnet18


def test_reference_parameter_count():
    assert count_parameters(resnet18()) == 11_173_962


@pytest.mark.parametrize("px", [32, 64, 128])
def test_output_shape_at_every_resolution(px):
    model = resnet18(width=8).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, px, px)).shape == (2, 10)


def test_width_narrows_the_network():
    assert count_parameters(resnet18(width=16)) < count_parameters(resnet18(width=32)) < 11_173_962


def test_architecture_matches_reference():
    model = resnet18()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert [s[0].conv1.out_channels for s in (model.layer1, model.layer2, model.layer3, model.layer4)] == [
        64, 128, 256, 512]
    assert not any(isinstance(m, torch.nn.MaxPool2d) for m in model.modules())
    assert model.linear.in_features == 512 and model.linear.out_features == 10


def test_bad_width_is_refused():
    with pytest.raises(ValueError, match="width"):
        resnet18(width=0)
