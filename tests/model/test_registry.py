"""Registered architectures run through unetseg's pipeline like its own UNet."""

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.errors import UserError
from unetseg.model import ExternalNet, UNet, architectures, build_model, register_architecture
from unetseg.modelfile import load_model, state_aliases
from unetseg.train.fit import fit


class TwoLevelNet(nn.Module):
    """A small encoder-decoder that needs H and W to be multiples of 4."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(cfg.in_channels, 8, 3, padding=1), nn.MaxPool2d(2),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.MaxPool2d(2))
        self.up = nn.Upsample(scale_factor=4)
        self.head = nn.Conv2d(8 + cfg.in_channels, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise AssertionError(f"unpadded input {tuple(x.shape)}")
        return self.head(torch.cat([self.up(self.down(x)), x], 1))


@pytest.fixture
def two_level() -> str:
    register_architecture("test-two-level", TwoLevelNet, downsamplings=2)
    return "test-two-level"


def test_unet_is_built_by_default():
    model = build_model(ModelConfig(depth=2, width=4))
    assert isinstance(model, UNet)
    assert model.config.width == 4


def test_an_unplanned_width_builds_the_papers_64():
    assert build_model(ModelConfig()).config.width == 64


def test_registered_network_pads_any_size_and_crops_back(two_level: str):
    model = build_model(ModelConfig(in_channels=3, num_classes=5, arch=two_level)).eval()
    assert isinstance(model, ExternalNet)
    assert two_level in architectures()
    assert (model.config.padding, model.config.depth) == ("same", 2)
    x = torch.randn(2, 3, 13, 22)
    out = model(x)
    assert out.shape == (2, 5, 13, 22)
    # the crop of the padded result: the top-left pixels equal those of a padded forward
    padded = torch.nn.functional.pad(x, (0, 2, 0, 3), mode="reflect")
    torch.testing.assert_close(out, model.net(padded)[..., :13, :22])


def test_unknown_architecture_is_a_user_error():
    with pytest.raises(UserError, match="not registered"):
        build_model(ModelConfig(arch="no-such-net"))


def test_unet_name_cannot_be_replaced():
    with pytest.raises(ValueError):
        register_architecture("unet", TwoLevelNet, downsamplings=2)


def test_fit_trains_saves_and_reloads_a_registered_network(two_level: str, disc_data: Path,
                                                             tmp_path: Path):
    calls = []

    def loss(logits, target, pixel_weights=None):
        calls.append(logits.shape)
        return torch.nn.functional.cross_entropy(logits, target, ignore_index=-1)

    cfg = RunConfig(model=ModelConfig(arch=two_level), data=DataConfig(patch_size=28),
                    train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=3))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False, loss_fn=loss)
    assert len(calls) == 3 and calls[0] == (2, 2, 28, 28)  # the given loss replaced dice_ce
    model, card = load_model(result.best_model)
    assert card.model.arch == two_level and isinstance(model, ExternalNet)
    x = torch.randn(1, 1, 30, 30)
    trained = build_model(card.model)
    trained.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(x), trained.eval()(x))
    assert not torch.equal(model.state_dict()["net.head.weight"],
                           build_model(card.model).state_dict()["net.head.weight"])


class AliasedNet(nn.Module):
    """Registers one conv under two names, as fepegar's ``unet`` does (``conv_layer`` and
    ``block.0``): its state_dict lists the same tensors twice."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.conv_layer = nn.Conv2d(cfg.in_channels, 4, 3, padding=1)
        self.norm_layer = nn.BatchNorm2d(4)
        self.block = nn.Sequential(self.conv_layer, self.norm_layer, nn.ReLU())
        self.head = nn.Conv2d(4, cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x))


def test_a_network_with_aliased_modules_saves_resumes_and_reloads(disc_data: Path,
                                                                 tmp_path: Path):
    register_architecture("test-aliased", AliasedNet, downsamplings=0)
    model = build_model(ModelConfig(arch="test-aliased"))
    assert state_aliases(model) == {
        "net.block.0.weight": "net.conv_layer.weight", "net.block.0.bias": "net.conv_layer.bias",
        **{f"net.block.1.{k}": f"net.norm_layer.{k}" for k in (
            "weight", "bias", "running_mean", "running_var", "num_batches_tracked")}}
    cfg = RunConfig(model=ModelConfig(arch="test-aliased"), data=DataConfig(patch_size=16),
                    train=TrainConfig(epochs=2, batch_size=2, steps_per_epoch=2))
    full = fit(disc_data, tmp_path / "full", cfg, show_progress=False)
    with safe_open(str(full.last_model), framework="pt") as fh:
        names = set(fh.keys())
    assert "net.conv_layer.weight" in names and "net.block.0.weight" not in names
    loaded, _ = load_model(full.last_model)
    assert loaded.net.block[0] is loaded.net.conv_layer
    assert loaded.net.norm_layer.num_batches_tracked.item() == 4  # trained, not initial

    def stop_after_first_epoch(row):
        if row["epoch"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(disc_data, tmp_path / "cut", cfg, show_progress=False,
            callbacks=[stop_after_first_epoch])
    resumed = fit(disc_data, tmp_path / "cut", resume=True, show_progress=False)
    expected = loaded.state_dict()
    for k, v in load_model(resumed.last_model)[0].state_dict().items():
        torch.testing.assert_close(v, expected[k], rtol=0, atol=0)
