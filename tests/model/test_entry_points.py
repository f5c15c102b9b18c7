"""Networks of other packages: an installed distribution declares them in the entry point
group ``unetseg.architectures`` and ``--arch NAME`` trains them. The distribution here is a
module and a ``.dist-info`` folder on ``sys.path``, as pip would install it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from unetseg.cli import main
from unetseg.config import ModelConfig
from unetseg.errors import UserError
from unetseg.model import ENTRY_POINT_GROUP, ExternalNet, architectures, build_model, registry
from unetseg.modelfile import load_model

MODULE = '''
from torch import nn


class TinyNet(nn.Module):
    """Two poolings, so H and W must be multiples of 4."""

    downsamplings = 2

    def __init__(self, cfg):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(cfg.in_channels, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Upsample(scale_factor=4), nn.Conv2d(4, cfg.num_classes, 1))

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise AssertionError(f"unpadded input {tuple(x.shape)}")
        return self.layers(x)


def without_downsamplings(cfg):
    return TinyNet(cfg)
'''


@pytest.fixture
def installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    (site / "tinynet_example.py").write_text(MODULE)
    info = site / "tinynet_example-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: tinynet-example\n"
                                   "Version: 0.1\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\n"
        "tiny-net = tinynet_example:TinyNet\n"
        "no-steps-net = tinynet_example:without_downsamplings\n"
        "absent-net = tinynet_example_absent:Net\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry, "_ARCHITECTURES", dict(registry._ARCHITECTURES))
    return site


def test_an_installed_network_is_listed_and_built(installed: Path):
    assert {"tiny-net", "no-steps-net", "absent-net"} <= set(architectures())
    model = build_model(ModelConfig(in_channels=3, num_classes=4, arch="tiny-net")).eval()
    assert isinstance(model, ExternalNet)
    assert (model.config.depth, model.config.padding) == (2, "same")
    with torch.no_grad():
        assert model(torch.randn(1, 3, 13, 22)).shape == (1, 4, 13, 22)


def test_the_command_line_trains_an_installed_network(installed: Path, disc_data: Path,
                                                      tmp_path: Path):
    out = tmp_path / "run"
    code = main(["-q", "train", str(disc_data), "--out", str(out), "--arch", "tiny-net",
                 "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--patch-size", "32"])
    assert code == 0
    model, card = load_model(out / "best.safetensors")
    assert card.model.arch == "tiny-net" and isinstance(model, ExternalNet)
    assert model.config == card.model


@pytest.mark.parametrize("name,fragment", [("no-steps-net", "downsamplings"),
                                           ("absent-net", "does not load")])
def test_broken_entry_points_are_user_errors(installed: Path, name: str, fragment: str):
    with pytest.raises(UserError, match=fragment):
        build_model(ModelConfig(arch=name))


def test_an_unknown_arch_ends_train_with_one_line_before_reading_data(tmp_path: Path, capsys):
    code = main(["-q", "train", str(tmp_path / "no-data"), "--out", str(tmp_path / "run"),
                 "--arch", "no-such-net"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "'no-such-net' is not registered" in err and "resnet34" in err
