"""Untrusted model files: nothing is unpickled on load; trusted pickles convert explicitly."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from unetseg.cli import main
from unetseg.config import ModelConfig, RunConfig, to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.model import UNet
from unetseg.modelfile import FORMAT, ModelCard, load_model, save_model

CFG = ModelConfig(in_channels=1, num_classes=2, depth=2, width=4)
CLASSES = ClassTable.from_values((0, 255), ("membrane", "cell"))
STATS = ChannelStats((0.5,), (0.2,))


class RunsCode:
    """Unpickling this touches a marker file: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


@pytest.fixture
def run_config(tmp_path: Path) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"run": to_dict(RunConfig(model=CFG)),
                                "classes": CLASSES.to_dict(), "stats": STATS.to_dict()}))
    return path


def test_pickled_file_is_refused_with_a_conversion_command(tmp_path: Path):
    torch.manual_seed(0)
    torch.save(UNet.from_config(CFG).state_dict(), tmp_path / "model.pt")
    with pytest.raises(UserError) as err:
        load_model(tmp_path / "model.pt")
    message = str(err.value)
    assert "unetseg convert-checkpoint" in message and "--config" in message
    assert "\n" not in message
    # the same bytes under a safetensors name are recognised as a pickle too
    (tmp_path / "renamed.safetensors").write_bytes((tmp_path / "model.pt").read_bytes())
    with pytest.raises(UserError, match="pickled PyTorch file.*convert-checkpoint"):
        load_model(tmp_path / "renamed.safetensors")


def test_trusted_checkpoint_converts_to_the_same_model(tmp_path: Path, run_config: Path,
                                                       capsys):
    torch.manual_seed(1)
    model = UNet.from_config(CFG).eval()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}},
               tmp_path / "trusted.ckpt")
    out = tmp_path / "model.safetensors"
    assert main(["convert-checkpoint", str(tmp_path / "trusted.ckpt"), "--config",
                 str(run_config), "--out", str(out)]) == 0
    loaded, card = load_model(out)
    assert card.classes == CLASSES and card.stats == STATS and card.model == CFG
    x = torch.randn(1, 1, 24, 20)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


@pytest.mark.parametrize("suffix", [".pt", ".ckpt", ".safetensors"])
def test_code_in_a_pickle_never_runs(tmp_path: Path, run_config: Path, suffix: str, capsys):
    marker = tmp_path / "pwned"
    evil = tmp_path / f"evil{suffix}"
    evil.write_bytes(pickle.dumps({"state_dict": RunsCode(marker)}, protocol=2))
    with pytest.raises(UserError):
        load_model(evil)
    code = main(["convert-checkpoint", str(evil), "--config", str(run_config), "--out",
                 str(tmp_path / "out.safetensors")])
    assert code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not marker.exists()
    assert not (tmp_path / "out.safetensors").exists()


def test_forged_card_is_refused_before_building_the_model(tmp_path: Path):
    model = UNet.from_config(CFG)
    path = tmp_path / "m.safetensors"
    save_model(path, model, ModelCard(CFG, CLASSES, STATS))
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    forged = ModelCard(ModelConfig(in_channels=1, num_classes=2, depth=2, width=2**14),
                       CLASSES, STATS)
    save_file(tensors, str(tmp_path / "forged.safetensors"),
              metadata={FORMAT: forged.to_json()})
    with pytest.raises(UserError, match="weights do not match the stored config"):
        load_model(tmp_path / "forged.safetensors")  # would need terabytes if built
    load_model(path)
