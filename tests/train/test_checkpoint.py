import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unetseg.config import ModelConfig, RunConfig, TrainConfig
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, load_model, read_card, save_model
from unetseg.train.checkpoint import load_training_state, save_training_state
from unetseg.train.optim import build_optimizer


def make_card(cfg: ModelConfig) -> ModelCard:
    return ModelCard(cfg, ClassTable.from_values((0, 255), ("membrane", "cell")),
                     ChannelStats((0.5,), (0.25,)), RunConfig(model=cfg))


def test_model_file_rebuilds_the_model_with_no_flags(tmp_path: Path):
    cfg = ModelConfig(in_channels=1, num_classes=2, depth=2, width=4, norm="batch")
    torch.manual_seed(0)
    model = UNet.from_config(cfg)
    with torch.no_grad():  # non-trivial running stats must survive the round trip
        model.inc[1].running_mean.uniform_()
    model.eval()
    save_model(tmp_path / "m.safetensors", model, make_card(cfg))
    loaded, card = load_model(tmp_path / "m.safetensors")
    assert card.model == cfg and card.classes.values == (0, 255)
    assert card.stats.mean == (0.5,) and card.run == RunConfig(model=cfg)
    x = torch.randn(1, 1, 20, 24)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not loaded.training


def test_foreign_files_are_refused_with_one_line(tmp_path: Path):
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(UserError, match="without unetseg metadata"):
        read_card(plain)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(UserError, match="not a safetensors model file"):
        read_card(text)
    with pytest.raises(UserError, match="not found"):
        read_card(tmp_path / "missing.safetensors")


class RunsCode:
    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_model_is_refused_without_being_unpickled(tmp_path: Path):
    marker = tmp_path / "pwned"
    payload = RunsCode()
    payload.marker = str(marker)
    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="pickled model files are refused"):
        load_model(evil)
    assert not marker.exists()
    evil_renamed = tmp_path / "model.safetensors"
    evil_renamed.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError):
        load_model(evil_renamed)
    assert not marker.exists()


def test_training_state_restores_optimizer_and_rng(tmp_path: Path):
    cfg = ModelConfig(depth=1, width=2)
    torch.manual_seed(0)
    model = UNet.from_config(cfg)
    opt = build_optimizer(TrainConfig(), model.parameters())
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(2, 1, 8, 8)).square().mean().backward()
        opt.step()
    save_training_state(tmp_path / "r.safetensors", model, make_card(cfg), opt, {"epoch": 3})
    expected_draw = torch.rand(3)
    model2 = UNet.from_config(cfg)
    opt2 = build_optimizer(TrainConfig(), model2.parameters())
    state = load_training_state(tmp_path / "r.safetensors", model2, opt2)
    assert state == {"epoch": 3}
    assert torch.equal(torch.rand(3), expected_draw)
    a, b = opt.state_dict(), opt2.state_dict()
    assert a["param_groups"] == b["param_groups"]
    for idx, slots in a["state"].items():
        for name, value in slots.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b["state"][idx][name]))
