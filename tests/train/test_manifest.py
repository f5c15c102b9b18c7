"""config.json names what a run trained on and with what software."""

import hashlib
import importlib.metadata
import json
import platform
from pathlib import Path

import torch

from unetseg.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from unetseg.train.fit import fit, prepare_data
from unetseg.train.manifest import data_sha256

CFG = RunConfig(model=ModelConfig(depth=2, width=4),
                data=DataConfig(patch_size=32, val_fraction=0.34),
                train=TrainConfig(epochs=1, batch_size=2, steps_per_epoch=2))


def by_hand(root: Path) -> str:
    """The README's definition, spelled out: pairs by stem; stem, image, mask length-prefixed."""
    digest = hashlib.sha256()
    for image in sorted((root / "images").iterdir()):
        fields = [image.stem.encode(), image.read_bytes(),
                  (root / "masks" / image.name).read_bytes()]
        for field in fields:
            digest.update(len(field).to_bytes(8, "big") + field)
    return digest.hexdigest()


def test_the_data_hash_follows_every_byte(disc_data: Path):
    prepared = prepare_data(disc_data, CFG, show_progress=False)
    pairs = [*prepared.train, *prepared.val]
    before = data_sha256(pairs)
    assert before == by_hand(disc_data) == data_sha256(pairs[::-1])
    assert data_sha256(pairs) == before  # nothing changed
    mask = disc_data / "masks" / "img03.png"
    content = bytearray(mask.read_bytes())
    content[-20] ^= 1
    mask.write_bytes(bytes(content))
    assert data_sha256(pairs) != before
    assert data_sha256(pairs) == by_hand(disc_data)


def test_config_json_names_the_data_software_and_device(disc_data: Path, tmp_path: Path,
                                                        one_torch_thread):
    fit(disc_data, tmp_path / "run", CFG, show_progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["data_sha256"] == by_hand(disc_data)
    assert len(saved["train_stems"]) + len(saved["val_stems"]) == 6
    assert saved["versions"] == {"unetseg": importlib.metadata.version("unetseg"),
                                 "torch": torch.__version__,
                                 "python": platform.python_version()}
    assert saved["device"] == "cpu" and saved["torch_threads"] == 1
