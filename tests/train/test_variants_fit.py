"""Every built-in variant trains, saves a model file whose card rebuilds it, resumes exactly,
trains with deep supervision on the weighted sum of its outputs' losses, and starts from
encoder weights."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from helpers import StopAfter
from resnet_weights import torchvision_state
from safetensors.torch import load_file, save_file

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.data.doctor import check_data
from unetseg.losses import build_loss, deep_supervision_loss, deep_supervision_weights
from unetseg.model import build_model
from unetseg.modelfile import load_model, read_card
from unetseg.train.fit import fit

RUN = ("unet", "residual", "attention", "nested", "resnet18")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_config(arch: str, epochs: int = 1, **model) -> RunConfig:
    return RunConfig(model=ModelConfig(**{"arch": arch, "width": 4, "depth": 2,
                                          "norm": "group", **model}),
                     data=DataConfig(patch_size=32, val_fraction=0.34),
                     train=TrainConfig(epochs=epochs, batch_size=2, steps_per_epoch=2))


@pytest.mark.parametrize("arch", RUN)
def test_a_trained_variant_reloads_from_its_card(arch: str, disc_data: Path, tmp_path: Path):
    cfg = run_config(arch, deep_supervision=arch == "nested")
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=False)
    model, card = load_model(result.best_model)
    assert card.model == model.config and card.model.arch == arch
    assert type(model) is type(build_model(card.model))
    assert card.run is not None and card.run.model == card.model
    # the card's class table is the one `unetseg check` reads from the masks
    assert card.classes == check_data(disc_data, cfg.data).classes
    stored = load_file(str(result.best_model))
    for key, value in model.state_dict().items():
        assert torch.equal(value, stored[key]), key
    with torch.no_grad():
        assert model(torch.randn(1, 1, 41, 23)).shape == (1, 2, 41, 23)


def test_deep_supervision_trains_on_every_output(disc_data: Path, tmp_path: Path):
    calls: list[tuple[int, ...]] = []
    ce = build_loss("ce")

    def recording(logits, target, pixel_weights=None):
        calls.append(tuple(logits.shape))
        return ce(logits, target, pixel_weights)

    cfg = run_config("residual", depth=3, deep_supervision=True)
    fit(disc_data, tmp_path / "run", cfg, show_progress=False, loss_fn=recording)
    assert calls[:3] == [(2, 2, 32, 32)] * 3  # main + 2 auxiliary outputs per step
    assert len(calls) == 3 * 2


def test_deep_supervision_loss_is_the_halving_weighted_sum():
    assert deep_supervision_weights(4) == pytest.approx([8 / 15, 4 / 15, 2 / 15, 1 / 15])
    torch.manual_seed(0)
    outputs = [torch.randn(2, 3, 8, 8) for _ in range(3)]
    target = torch.randint(0, 3, (2, 8, 8))
    ce = build_loss("ce")
    expected = (4 * ce(outputs[0], target) + 2 * ce(outputs[1], target)
                + ce(outputs[2], target)) / 7
    torch.testing.assert_close(deep_supervision_loss(ce, outputs, target), expected)


@pytest.mark.parametrize("arch,changes", [("nested", {"deep_supervision": True}),
                                          ("resnet18", {"deep_supervision": True,
                                                        "norm": "batch"})])
def test_a_stopped_variant_run_resumes_exactly(arch: str, changes: dict, disc_data: Path,
                                               tmp_path: Path):
    cfg = run_config(arch, epochs=2, **changes)
    full = fit(disc_data, tmp_path / "full", cfg, show_progress=False)
    with contextlib.suppress(KeyboardInterrupt):
        fit(disc_data, tmp_path / "cut", cfg, show_progress=False, callbacks=[StopAfter(1)])
    resumed = fit(disc_data, tmp_path / "cut", resume=True, show_progress=False)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"]
                                                          for r in full.history]
    a, b = load_file(str(full.last_model)), load_file(str(resumed.last_model))
    assert a.keys() == b.keys() and any(k.startswith("aux_heads.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_encoder_weights_initialise_a_resnet_run(disc_data: Path, tmp_path: Path, capsys):
    state = torchvision_state()
    save_file(state, str(tmp_path / "r18.safetensors"))
    cfg = run_config("resnet18", norm="batch")
    cfg = RunConfig(cfg.model, cfg.data, cfg.augment,
                    TrainConfig(epochs=1, batch_size=2, steps_per_epoch=1, lr=1e-12,
                                encoder_weights=str(tmp_path / "r18.safetensors")))
    result = fit(disc_data, tmp_path / "run", cfg, show_progress=True)
    said = capsys.readouterr().out
    assert "120 tensors loaded" in said and "2 unused (fc.bias, fc.weight)" in said
    stored = load_file(str(result.last_model))
    gray = state["conv1.weight"].sum(dim=1, keepdim=True)  # one input channel
    torch.testing.assert_close(stored["body.encoder.conv1.weight"], gray, rtol=0, atol=1e-6)
    torch.testing.assert_close(stored["body.encoder.layer3.1.conv2.weight"],
                               state["layer3.1.conv2.weight"], rtol=0, atol=1e-6)
    card = read_card(result.last_model)
    assert card.run is not None and card.run.train.encoder_weights.endswith("r18.safetensors")


DDP_CFG = RunConfig(
    model=ModelConfig(arch="residual", width=4, depth=2, norm="group", deep_supervision=True),
    data=DataConfig(patch_size=32, val_fraction=0.34),
    train=TrainConfig(epochs=2, batch_size=4, steps_per_epoch=2, loss="ce"),
)
"""Group norm and cross-entropy, so that two processes follow one (see test_distributed.py);
deep supervision, so that every auxiliary head's gradient is averaged too."""


def _ddp_worker(data: Path, out: Path, reports: Path) -> int:
    import json

    from unetseg.train import distributed
    from unetseg.train.distributed import DistEnv

    env = DistEnv.from_environ()
    with distributed.leaving_at_the_end():
        result = fit(data, out, DDP_CFG, show_progress=False)
    (reports / f"rank{env.rank}.json").write_text(json.dumps(result.history))
    return 0


@pytest.mark.slow
def test_two_processes_train_a_deeply_supervised_variant_as_one(disc_data: Path,
                                                                tmp_path: Path):
    import json

    from unetseg.train import distributed

    reports = tmp_path / "reports"
    reports.mkdir()
    assert distributed.spawn_local(2, _ddp_worker, disc_data, tmp_path / "ddp", reports,
                                   threads=1) == 0
    one = fit(disc_data, tmp_path / "one", DDP_CFG, show_progress=False)
    rank0, rank1 = (json.loads((reports / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0 == rank1
    assert [r["train_loss"] for r in rank0] == pytest.approx(
        [r["train_loss"] for r in one.history], rel=1e-4)
    a, b = load_file(str(one.last_model)), load_file(str(tmp_path / "ddp" / "last.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("aux_heads.") for k in a)
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
