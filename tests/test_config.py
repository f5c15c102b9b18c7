import json

import pytest

from unetseg.config import (
    AugmentConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    from_dict,
    replace,
    to_dict,
)


def test_run_config_round_trips_through_json():
    cfg = RunConfig(
        model=ModelConfig(in_channels=3, num_classes=12, padding="valid"),
        data=DataConfig(class_values=(0, 255), class_names=("a", "b"), ignore_value=11),
        augment=AugmentConfig(scale=(0.9, 1.1)),
        train=TrainConfig(class_weights=(1.0, 2.5), time_limit_s=60.0),
    )
    again = from_dict(RunConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert isinstance(again.data.class_values, tuple)


def test_replace_with_dotted_names():
    cfg = replace(RunConfig(), **{"train.epochs": 3, "model.width": 8})
    assert cfg.train.epochs == 3 and cfg.model.width == 8
    assert cfg.data == DataConfig()


def test_unknown_fields_are_rejected():
    with pytest.raises(ValueError, match="unknown"):
        from_dict(ModelConfig, {"widht": 3})


def test_a_model_config_written_before_the_first_level_width_existed_reads_as_uniform():
    old = {k: v for k, v in to_dict(ModelConfig(width=16)).items() if k != "top_width"}
    cfg = from_dict(ModelConfig, old)
    assert cfg.top_width is None
    from unetseg.model import UNet

    assert UNet.from_config(cfg).inc[0].out_channels == 16
