"""Training-loop helpers."""

import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig
from unetseg.model import UNet
from unetseg.train.fit import build_training, prepare_data
from unetseg.train.loop import training_memory_format


@pytest.mark.parametrize("norm,expected", [
    ("batch", torch.channels_last), ("none", torch.channels_last),
    ("instance", torch.contiguous_format), ("group", torch.contiguous_format)])
def test_training_memory_format_follows_the_norm(norm, expected):
    assert training_memory_format(UNet(1, 2, depth=1, width=4, norm=norm)) == expected


def test_build_training_lays_out_the_weights_for_training(disc_data):
    for norm, channels_last in (("batch", True), ("instance", False)):
        cfg = RunConfig(model=ModelConfig(depth=1, width=4, norm=norm),
                        data=DataConfig(patch_size=16))
        data = prepare_data(disc_data, cfg, show_progress=False)
        model = build_training(cfg, data.train, torch.device("cpu")).model
        weight = model.inc[3].weight  # 4 -> 4 channels: the layouts differ
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert weight.is_contiguous() != channels_last
