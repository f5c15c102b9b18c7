"""Training-loop helpers."""

import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig
from unetseg.model import UNet
from unetseg.model.layout import fastest_memory_format
from unetseg.train.fit import build_training, prepare_data


@pytest.mark.parametrize("norm", ["batch", "none", "instance", "group"])
def test_unets_run_in_channels_last_on_cpus(norm):
    net = UNet(1, 2, depth=1, width=4, norm=norm)
    assert fastest_memory_format(net) == torch.channels_last
    assert fastest_memory_format(net, "cpu") == torch.channels_last


@pytest.mark.parametrize("norm,expected", [
    ("batch", torch.channels_last), ("none", torch.channels_last),
    ("instance", torch.contiguous_format), ("group", torch.contiguous_format)])
def test_group_norms_run_in_nchw_on_cuda(norm, expected):
    # the rule reads the device type only: no GPU needed
    assert fastest_memory_format(UNet(1, 2, depth=1, width=4, norm=norm), "cuda") == expected


def test_networks_with_instance_norm_modules_run_in_nchw():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.InstanceNorm2d(4, affine=True))
    assert fastest_memory_format(net, "cpu") == torch.contiguous_format


def test_unet_instance_norm_is_torch_instance_norm():
    torch.manual_seed(0)
    unet_norm = UNet(1, 2, depth=1, width=4, norm="instance").inc[1]
    reference = torch.nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        unet_norm.weight.uniform_(0.5, 2.0)
        unet_norm.bias.normal_()
    reference.load_state_dict(unet_norm.state_dict())  # the same parameter names
    x = torch.randn(3, 4, 9, 11) * 5 + 2
    torch.testing.assert_close(unet_norm(x), reference(x), rtol=1e-5, atol=1e-5)


def test_build_training_lays_out_the_weights_for_training(disc_data):
    for norm, channels_last in (("batch", True), ("instance", True)):
        cfg = RunConfig(model=ModelConfig(depth=1, width=4, norm=norm),
                        data=DataConfig(patch_size=16))
        data = prepare_data(disc_data, cfg, show_progress=False)
        model = build_training(cfg, data.train, torch.device("cpu")).model
        weight = model.inc[3].weight  # 4 -> 4 channels: the layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert weight.is_contiguous() != channels_last
