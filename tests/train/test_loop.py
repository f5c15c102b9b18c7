"""Training-loop helpers: memory layout, mixed precision."""

import math

import pytest
import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.model import UNet
from unetseg.model.layout import fastest_memory_format
from unetseg.modelfile import ModelCard, read_card
from unetseg.train import loop
from unetseg.train.checkpoint import load_training_state, read_loop_state, save_training_state
from unetseg.train.fit import build_training, fit, prepare_data
from unetseg.train.loop import Precision
from unetseg.train.optim import build_optimizer


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


def test_cpus_train_in_fp32_without_gradient_scaling():
    cpu = torch.device("cpu")
    assert Precision.for_device(cpu, True) == Precision(None, False)
    assert Precision.for_device(cpu, False) == Precision(None, False)
    assert Precision.for_device(torch.device("cuda"), False) == Precision(None, False)


def test_cpu_bf16_training_needs_asking_and_native_bf16(monkeypatch: pytest.MonkeyPatch):
    """Off by default (it did not converge as well as fp32 at the same wall-clock; see
    benchmarks/bf16_training.py), and never on a CPU that would emulate bf16."""
    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "cpu_native_bf16", lambda: "avx512_bf16")
    assert not loop.CPU_BF16_TRAINING
    assert Precision.for_device(cpu, True) == Precision(None, False)
    assert Precision.for_device(cpu, True, cpu_bf16=True) == Precision(torch.bfloat16, False)
    assert Precision.for_device(cpu, False, cpu_bf16=True) == Precision(None, False)
    monkeypatch.setattr(loop, "cpu_native_bf16", lambda: None)
    assert Precision.for_device(cpu, True, cpu_bf16=True) == Precision(None, False)


@pytest.mark.parametrize("bf16,expected", [
    (True, Precision(torch.bfloat16, False)), (False, Precision(torch.float16, True))])
def test_gpus_use_bf16_where_supported_else_fp16_with_scaling(
        monkeypatch: pytest.MonkeyPatch, bf16, expected):
    # the choice reads one CUDA property: no GPU needed
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    assert Precision.for_device(torch.device("cuda"), True) == expected


def test_build_training_on_cpu_disables_autocast_and_the_scaler(disc_data):
    cfg = RunConfig(model=ModelConfig(depth=1, width=4), data=DataConfig(patch_size=16),
                    train=TrainConfig(amp=True))
    data = prepare_data(disc_data, cfg, show_progress=False)
    t = build_training(cfg, data.train, torch.device("cpu"))
    assert t.precision == Precision(None, False) and not t.scaler.is_enabled()


def test_a_gradient_scalers_state_round_trips_through_the_resume_file(tmp_path):
    model = UNet(1, 2, depth=1, width=2)
    optimizer = build_optimizer(TrainConfig(), model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=7)
    scaler.scale(torch.ones(()))  # the scale tensor is made on first use
    scaler.update(new_scale=256.0)
    card = ModelCard(ModelConfig(depth=1, width=2), ClassTable.from_values((0, 1)),
                     ChannelStats((0.0,), (1.0,)), RunConfig(train=TrainConfig(amp=True)))
    save_training_state(tmp_path / "r.safetensors", model, card, optimizer,
                        {"scaler": scaler.state_dict()})
    restored = torch.amp.GradScaler("cpu")
    restored.load_state_dict(load_training_state(tmp_path / "r.safetensors", model,
                                                 optimizer)["scaler"])
    assert restored.state_dict() == scaler.state_dict()
    assert restored.get_scale() == 256.0 and restored.get_growth_interval() == 7
    stored = read_card(tmp_path / "r.safetensors").run
    assert stored is not None and stored.train.amp  # autocast follows the stored config


class _StopAfterFirst:
    def __call__(self, row: dict) -> None:
        raise KeyboardInterrupt


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="mixed precision runs only on CUDA: CPUs train in fp32")
@pytest.mark.parametrize("bf16", [True, False], ids=["bf16", "fp16-scaled"])
def test_mixed_precision_trains_and_resumes_on_cuda(disc_data, tmp_path,
                                                    monkeypatch: pytest.MonkeyPatch, bf16):
    if bf16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16)
    cfg = RunConfig(model=ModelConfig(depth=2, width=8), data=DataConfig(patch_size=32),
                    train=TrainConfig(epochs=2, batch_size=2, steps_per_epoch=4, device="cuda",
                                      amp=True))
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(disc_data, run, cfg, show_progress=False, callbacks=[_StopAfterFirst()])
    scaler = read_loop_state(run / "resume.safetensors")["scaler"]
    assert bool(scaler) == (not bf16)  # a disabled scaler stores nothing
    assert bf16 or scaler["scale"] > 0
    resumed = fit(disc_data, run, resume=True, show_progress=False)
    assert [row["epoch"] for row in resumed.history] == [1, 2]
    assert all(math.isfinite(row["train_loss"]) for row in resumed.history)
    assert bool(read_loop_state(run / "resume.safetensors")["scaler"]) == (not bf16)
