"""A corpus of bad inputs for every command.

Each case builds one bad input in a fresh folder and runs the command in-process through
``unetseg.cli.main``. Every case must end with exit status 2 and exactly one stderr line that
starts with ``unetseg: error:``, names the offending file (or flag) and says how to fix it
(``...; <fix>``), with no traceback, no warning logged besides it, no temporary file left and
no incomplete output. A few cases also run as a separate process to show that nothing else
reaches the terminal.

Unwritable outputs: the tests run as root, for whom ``chmod`` does not stop a write, so an
output "under a file" (``blocker/out`` where ``blocker`` is a regular file) stands for a folder
that cannot be written.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from helpers import write_dataset
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file

from unetseg.cli import main
from unetseg.config import ModelConfig, RunConfig, to_dict
from unetseg.data.classes import ClassTable
from unetseg.data.normalize import ChannelStats
from unetseg.files import is_temp_file
from unetseg.model import UNet
from unetseg.modelfile import FORMAT, ModelCard, save_model

SIZE = (32, 32)
TRAIN = ["--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--width", "4",
         "--depth", "2", "--patch-size", "32"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")



# --------------------------------------------------------------------------- crafted files


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG header claiming ``width`` x ``height`` 8-bit gray pixels, 100 bytes of data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr)
            + _chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + _chunk(b"IEND", b""))


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian baseline TIFF whose one strip of 16 bytes claims width x height pixels."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + b"\x00" * 16


def _cut(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _gray(value: int = 0, dtype: type = np.uint8) -> np.ndarray:
    return np.full(SIZE, value, dtype)


class RunsCode:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


# --------------------------------------------------------------------------- fixtures


@dataclass
class Env:
    """A fresh folder with a 3-pair data set (gray 32x32, 0/255 masks) and model files."""

    tmp: Path
    gray_model: Path
    rgb_model: Path

    @property
    def data(self) -> Path:
        return self.tmp / "data"

    def img(self, name: str) -> Path:
        return self.data / "images" / name

    def mask(self, name: str) -> Path:
        return self.data / "masks" / name

    def train(self, *extra: str) -> list[str]:
        return ["-q", "train", str(self.data), "--out", str(self.tmp / "run"), *TRAIN, *extra]

    def predict(self, model: Path | None = None, images: Path | None = None,
                *extra: str) -> list[str]:
        return ["-q", "predict", str(model or self.gray_model),
                str(images or self.data / "images"), "--out", str(self.tmp / "pred"), *extra]

    def evaluate(self, model: Path | None = None, *extra: str) -> list[str]:
        return ["-q", "evaluate", str(model or self.gray_model), str(self.data), "--out",
                str(self.tmp / "eval"), *extra]

    def check(self, *extra: str) -> list[str]:
        return ["-q", "check", str(self.data), *extra]

    def replace_image(self, name: str, new: str) -> Path:
        self.img(name).unlink()
        return self.img(new)

    def replace_mask(self, name: str, new: str) -> Path:
        self.mask(name).unlink()
        return self.mask(new)


def _model_file(path: Path, in_channels: int) -> Path:
    cfg = ModelConfig(in_channels=in_channels, num_classes=2, depth=2, width=4)
    torch.manual_seed(0)
    stats = ChannelStats((0.5,) * in_channels, (0.25,) * in_channels)
    save_model(path, UNet.from_config(cfg).eval(),
               ModelCard(cfg, ClassTable.from_values((0, 255)), stats, RunConfig(model=cfg)))
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return _model_file(root / "gray.safetensors", 1), _model_file(root / "rgb.safetensors", 3)


@pytest.fixture
def env(tmp_path: Path, models: tuple[Path, Path]) -> Env:
    write_dataset(tmp_path / "data", 3, size=SIZE)
    gray = shutil.copy(models[0], tmp_path / "gray.safetensors")
    rgb = shutil.copy(models[1], tmp_path / "rgb.safetensors")
    return Env(tmp_path, Path(gray), Path(rgb))


# --------------------------------------------------------------------------- the cases

Build = Callable[[Env], list[str]]
CASES: dict[str, tuple[str, Build]] = {}  # id -> (text the line must name, build)


def case(case_id: str, names: str) -> Callable[[Build], Build]:
    def register(build: Build) -> Build:
        assert case_id not in CASES, case_id
        CASES[case_id] = (names, build)
        return build

    return register


# ---- train: image files


@case("train/truncated-png", "img01.png")
def _(e: Env) -> list[str]:
    _cut(e.img("img01.png"))
    return e.train()


@case("train/zero-byte-png", "img01.png")
def _(e: Env) -> list[str]:
    e.img("img01.png").write_bytes(b"")
    return e.train()


@case("train/text-named-png", "img01.png")
def _(e: Env) -> list[str]:
    e.img("img01.png").write_text("this is a note, not a picture\n")
    return e.train()


@case("train/truncated-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    path = e.replace_image("img01.png", "img01.tif")
    tifffile.imwrite(path, _gray(90))
    _cut(path)
    return e.train()


@case("train/bomb-png", "img01.png")
def _(e: Env) -> list[str]:
    e.img("img01.png").write_bytes(png_claiming(100_000, 100_000))
    return e.train()


@case("train/bomb-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    e.replace_image("img01.png", "img01.tif").write_bytes(tiff_claiming(100_000, 100_000))
    return e.train()


@case("train/zero-pixel-png", "img01.png")
def _(e: Env) -> list[str]:
    e.img("img01.png").write_bytes(png_claiming(0, 32))
    return e.train()


@case("train/nan-float-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    image = np.ones(SIZE, np.float32)
    image[3, 4] = np.nan
    tifffile.imwrite(e.replace_image("img01.png", "img01.tif"), image)
    return e.train()


@case("train/inf-float-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    image = np.ones(SIZE, np.float32)
    image[0, 0] = -np.inf
    tifffile.imwrite(e.replace_image("img01.png", "img01.tif"), image)
    return e.train()


@case("train/int32-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.replace_image("img01.png", "img01.tif"), _gray(5, np.int32))
    return e.train()


@case("train/volume-tiff", "img01.tif")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.replace_image("img01.png", "img01.tif"), np.zeros((40, *SIZE), np.uint8))
    return e.train()


@case("train/rgb-among-gray", "img01.png")
def _(e: Env) -> list[str]:
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(e.img("img01.png"))
    return e.train()


@case("train/duplicate-image-stems", "img01")
def _(e: Env) -> list[str]:
    Image.fromarray(_gray(10)).save(e.img("img01.jpg"))
    return e.train()


@case("train/duplicate-masks", "img01")
def _(e: Env) -> list[str]:
    shutil.copy(e.mask("img01.png"), e.mask("img01_mask.png"))
    return e.train()


# ---- train: mask files


@case("train/zero-byte-tiff-mask", "img01.tif")
def _(e: Env) -> list[str]:
    e.replace_mask("img01.png", "img01.tif").write_bytes(b"")
    return e.train()


@case("train/mask-wrong-size", "img01.png")
def _(e: Env) -> list[str]:
    Image.fromarray(np.zeros((20, 32), np.uint8)).save(e.mask("img01.png"))
    return e.train()


@case("train/mask-fractional-float", "img01.tif")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.replace_mask("img01.png", "img01.tif"), np.full(SIZE, 0.5, np.float32))
    return e.train()


@case("train/mask-negative", "img01.tif")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.replace_mask("img01.png", "img01.tif"), _gray(-1, np.int16))
    return e.train()


@case("train/mask-two-channels", "img01.tif")
def _(e: Env) -> list[str]:
    mask = np.zeros((2, *SIZE), np.uint8)
    mask[1] = 255
    tifffile.imwrite(e.replace_mask("img01.png", "img01.tif"), mask, photometric="minisblack",
                     planarconfig="separate")
    return e.train()


@case("train/mask-16bit-colour", "img01.tif")
def _(e: Env) -> list[str]:
    mask = np.zeros((*SIZE, 3), np.uint16)
    mask[..., 0] = 1000
    tifffile.imwrite(e.replace_mask("img01.png", "img01.tif"), mask, photometric="rgb")
    return e.train()


@case("train/label-out-of-range", "img01.png")
def _(e: Env) -> list[str]:
    mask = np.array(Image.open(e.mask("img01.png")))
    mask[:2, :2] = 7
    Image.fromarray(mask).save(e.mask("img01.png"))
    return e.train("--classes", "0,255")


@case("train/colour-not-in-palette", "img01.png")
def _(e: Env) -> list[str]:
    for i in range(3):
        ids = np.array(Image.open(e.mask(f"img0{i}.png"))) // 255
        colours = np.array([(0, 0, 0), (200, 0, 0)], np.uint8)[ids]
        colours[0, 0] = (1, 2, 3) if i == 1 else colours[0, 0]
        Image.fromarray(colours).save(e.mask(f"img0{i}.png"))
    (e.tmp / "pal.json").write_text(json.dumps([{"name": "bg", "color": [0, 0, 0]},
                                                {"name": "fg", "color": [200, 0, 0]}]))
    return e.train("--palette", str(e.tmp / "pal.json"))


@case("train/one-class-only", "img00.png")
def _(e: Env) -> list[str]:
    for i in range(3):
        Image.fromarray(_gray(0)).save(e.mask(f"img0{i}.png"))
    return e.train()


# ---- train: folders and options


@case("train/missing-folder", "nope")
def _(e: Env) -> list[str]:
    return ["-q", "train", str(e.tmp / "nope"), "--out", str(e.tmp / "run"), *TRAIN]


@case("train/empty-folders", "data")
def _(e: Env) -> list[str]:
    for sub in ("images", "masks"):
        shutil.rmtree(e.data / sub)
        (e.data / sub).mkdir()
    return e.train()


@case("train/no-masks-folder", "masks")
def _(e: Env) -> list[str]:
    shutil.rmtree(e.data / "masks")
    return e.train()


@case("train/out-is-a-file", "run")
def _(e: Env) -> list[str]:
    (e.tmp / "run").write_text("")
    return e.train()


@case("train/out-under-a-file", "blocker")
def _(e: Env) -> list[str]:
    (e.tmp / "blocker").write_text("")
    args = e.train()
    args[args.index("--out") + 1] = str(e.tmp / "blocker" / "run")
    return args


@case("train/resume-nothing", "run")
def _(e: Env) -> list[str]:
    return e.train("--resume")


@case("train/run-exists", "run")
def _(e: Env) -> list[str]:
    (e.tmp / "run").mkdir()
    (e.tmp / "run" / "resume.safetensors").write_bytes(b"")
    return e.train()


@case("train/config-not-json", "cfg.json")
def _(e: Env) -> list[str]:
    (e.tmp / "cfg.json").write_text("epochs: 3\n")
    return e.train("--config", str(e.tmp / "cfg.json"))


@case("train/config-unknown-field", "cfg.json")
def _(e: Env) -> list[str]:
    d = to_dict(RunConfig())
    d["train"]["epocs"] = 3
    (e.tmp / "cfg.json").write_text(json.dumps(d))
    return e.train("--config", str(e.tmp / "cfg.json"))


@case("train/palette-missing", "missing.json")
def _(e: Env) -> list[str]:
    return e.train("--palette", str(e.tmp / "missing.json"))


@case("train/palette-not-json", "pal.json")
def _(e: Env) -> list[str]:
    (e.tmp / "pal.json").write_text("[{name: sky}")
    return e.train("--palette", str(e.tmp / "pal.json"))


@case("train/class-weights-count", "--class-weights")
def _(e: Env) -> list[str]:
    return e.train("--class-weights", "1,2,3")


@case("train/ignore-is-a-class", "ignore value 255")
def _(e: Env) -> list[str]:
    return e.train("--classes", "0,255", "--ignore-value", "255")


@case("train/val-fraction", "--val-fraction")
def _(e: Env) -> list[str]:
    return e.train("--val-fraction", "1.5")


@case("train/unknown-padding", "--padding")
def _(e: Env) -> list[str]:
    return e.train("--padding", "full")


@case("train/zero-epochs", "--epochs")
def _(e: Env) -> list[str]:
    return e.train("--epochs", "0")


@case("train/bad-device", "--device")
def _(e: Env) -> list[str]:
    return e.train("--device", "banana")


@case("train/diverging-lr", "--lr")
def _(e: Env) -> list[str]:
    args = e.train("--lr", "1e30")
    args[args.index("--steps-per-epoch") + 1] = "4"
    return args


# ---- predict


@case("predict/model-missing", "missing.safetensors")
def _(e: Env) -> list[str]:
    return e.predict(e.tmp / "missing.safetensors")


@case("predict/model-random-bytes", "model.safetensors")
def _(e: Env) -> list[str]:
    (e.tmp / "model.safetensors").write_bytes(np.random.default_rng(0).bytes(256))
    return e.predict(e.tmp / "model.safetensors")


@case("predict/model-zero-bytes", "empty.safetensors")
def _(e: Env) -> list[str]:
    (e.tmp / "empty.safetensors").write_bytes(b"")
    return e.predict(e.tmp / "empty.safetensors")


@case("predict/model-pickle-runs-code", "evil.pt")
def _(e: Env) -> list[str]:
    (e.tmp / "evil.pt").write_bytes(pickle.dumps(RunsCode(e.tmp / "pwned")))
    return e.predict(e.tmp / "evil.pt")


@case("predict/model-torch-zip-renamed", "renamed.safetensors")
def _(e: Env) -> list[str]:
    torch.save({"w": torch.zeros(2)}, e.tmp / "renamed.safetensors")
    return e.predict(e.tmp / "renamed.safetensors")


@case("predict/model-without-card", "plain.safetensors")
def _(e: Env) -> list[str]:
    save_file({"w": torch.zeros(2)}, str(e.tmp / "plain.safetensors"))
    return e.predict(e.tmp / "plain.safetensors")


@case("predict/model-damaged-card", "damaged.safetensors")
def _(e: Env) -> list[str]:
    save_file({"w": torch.zeros(2)}, str(e.tmp / "damaged.safetensors"),
              metadata={FORMAT: "{\"model\": 3"})
    return e.predict(e.tmp / "damaged.safetensors")


@case("predict/model-weights-mismatch", "mismatch.safetensors")
def _(e: Env) -> list[str]:
    with safe_open(str(e.gray_model), framework="pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in list(fh.keys())[1:]}  # one tensor missing
    save_file(tensors, str(e.tmp / "mismatch.safetensors"), metadata=meta)
    return e.predict(e.tmp / "mismatch.safetensors")


@case("predict/rgb-model-gray-images", "img00.png")
def _(e: Env) -> list[str]:
    return e.predict(e.rgb_model)


@case("predict/gray-model-rgb-image", "rgb.png")
def _(e: Env) -> list[str]:
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(e.tmp / "rgb.png")
    return e.predict(None, e.tmp / "rgb.png")


@case("predict/out-is-a-file", "pred")
def _(e: Env) -> list[str]:
    (e.tmp / "pred").write_text("")
    return e.predict()


@case("predict/out-under-a-file", "blocker")
def _(e: Env) -> list[str]:
    (e.tmp / "blocker").write_text("")
    args = e.predict()
    args[args.index("--out") + 1] = str(e.tmp / "blocker" / "pred")
    return args


@case("predict/output-name-taken-by-a-folder", "img00.png")
def _(e: Env) -> list[str]:
    (e.tmp / "pred" / "img00.png").mkdir(parents=True)
    return e.predict()


@case("predict/into-the-input-folder", "img00.png")
def _(e: Env) -> list[str]:
    args = e.predict()
    args[args.index("--out") + 1] = str(e.data / "images")
    return args


@case("predict/image-missing", "nope.png")
def _(e: Env) -> list[str]:
    return e.predict(None, e.tmp / "nope.png")


@case("predict/not-an-image-name", "notes.txt")
def _(e: Env) -> list[str]:
    (e.tmp / "notes.txt").write_text("hello")
    return e.predict(None, e.tmp / "notes.txt")


@case("predict/folder-without-images", "empty")
def _(e: Env) -> list[str]:
    (e.tmp / "empty").mkdir()
    return e.predict(None, e.tmp / "empty")


@case("predict/truncated-last-image", "img02.png")
def _(e: Env) -> list[str]:
    _cut(e.img("img02.png"))
    return e.predict()


@case("predict/bomb-png", "bomb.png")
def _(e: Env) -> list[str]:
    (e.tmp / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    return e.predict(None, e.tmp / "bomb.png")


@case("predict/bomb-tiff-streamed", "--max-pixels 1600000000")
def _(e: Env) -> list[str]:
    # a header of 40000 x 40000 pixels over a sparse file: streamed, refused before decoding
    tifffile.imwrite(e.tmp / "bomb.tif", shape=(40_000, 40_000), dtype=np.uint8)
    return e.predict(None, e.tmp / "bomb.tif")


@case("predict/max-pixels-below-the-image", "img.tif")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.tmp / "img.tif", np.zeros((32, 32), np.uint8))
    return e.predict(None, e.tmp / "img.tif", "--stream", "--max-pixels", "1000")


@case("predict/max-pixels-not-positive", "--max-pixels")
def _(e: Env) -> list[str]:
    tifffile.imwrite(e.tmp / "img.tif", np.zeros((32, 32), np.uint8))
    return e.predict(None, e.tmp / "img.tif", "--stream", "--max-pixels", "0")


@case("predict/streamed-single-compressed-strip", "tifffile.imwrite")
def _(e: Env) -> list[str]:
    # 70 MP in one zlib strip: streaming would have to decode it whole
    tifffile.imwrite(e.tmp / "strip.tif", np.zeros((8400, 8400), np.uint8),
                     rowsperstrip=8400, compression="zlib")
    return e.predict(None, e.tmp / "strip.tif")


@case("predict/tile-too-small", "--tile")
def _(e: Env) -> list[str]:
    return e.predict(None, None, "--tile", "4")


@case("predict/overlap-out-of-range", "--overlap")
def _(e: Env) -> list[str]:
    return e.predict(None, None, "--overlap", "1.5")


# ---- evaluate


@case("evaluate/mask-wrong-size", "img01.png")
def _(e: Env) -> list[str]:
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(e.mask("img01.png"))
    return e.evaluate()


@case("evaluate/value-not-in-model", "img01.png")
def _(e: Env) -> list[str]:
    Image.fromarray(_gray(3)).save(e.mask("img01.png"))
    return e.evaluate()


@case("evaluate/colour-mask-label-model", "img01.png")
def _(e: Env) -> list[str]:
    colours = np.zeros((*SIZE, 3), np.uint8)
    colours[:5] = (255, 0, 0)
    Image.fromarray(colours).save(e.mask("img01.png"))
    return e.evaluate()


@case("evaluate/missing-folder", "nope")
def _(e: Env) -> list[str]:
    return ["-q", "evaluate", str(e.gray_model), str(e.tmp / "nope")]


@case("evaluate/out-is-a-file", "eval")
def _(e: Env) -> list[str]:
    (e.tmp / "eval").write_text("")
    return e.evaluate()


@case("evaluate/report-name-taken-by-a-folder", "metrics.json")
def _(e: Env) -> list[str]:
    (e.tmp / "eval" / "metrics.json").mkdir(parents=True)
    return e.evaluate()


@case("evaluate/rgb-model-gray-data", "img00.png")
def _(e: Env) -> list[str]:
    return e.evaluate(e.rgb_model)


# ---- check


@case("check/missing-folder", "nope")
def _(e: Env) -> list[str]:
    return ["-q", "check", str(e.tmp / "nope")]


@case("check/data-is-a-file", "data.txt")
def _(e: Env) -> list[str]:
    (e.tmp / "data.txt").write_text("")
    return ["-q", "check", str(e.tmp / "data.txt")]


@case("check/empty-folders", "data")
def _(e: Env) -> list[str]:
    for sub in ("images", "masks"):
        shutil.rmtree(e.data / sub)
        (e.data / sub).mkdir()
    return e.check()


@case("check/palette-bad-colour", "pal.csv")
def _(e: Env) -> list[str]:
    (e.tmp / "pal.csv").write_text("name,r,g,b\nbg,0,0,0\nfg,300,0,0\n")
    return e.check("--palette", str(e.tmp / "pal.csv"))


@case("check/palette-and-classes", "pal.json")
def _(e: Env) -> list[str]:
    (e.tmp / "pal.json").write_text(json.dumps({"bg": [0, 0, 0], "fg": [255, 255, 255]}))
    return e.check("--palette", str(e.tmp / "pal.json"), "--classes", "0,255")


@case("check/duplicate-classes", "class values")
def _(e: Env) -> list[str]:
    return e.check("--classes", "0,0,255")


@case("check/classes-for-colour-masks", "--classes")
def _(e: Env) -> list[str]:
    colours = np.zeros((*SIZE, 3), np.uint8)
    colours[:5] = (255, 0, 0)
    Image.fromarray(colours).save(e.mask("img01.png"))
    return e.check("--classes", "0,255")


# ---- convert-checkpoint


@case("convert/config-missing", "nope.json")
def _(e: Env) -> list[str]:
    torch.save({}, e.tmp / "w.pt")
    return ["-q", "convert-checkpoint", str(e.tmp / "w.pt"), "--config",
            str(e.tmp / "nope.json"), "--out", str(e.tmp / "m.safetensors")]


@case("convert/weights-of-another-net", "other.pt")
def _(e: Env) -> list[str]:
    torch.save(torch.nn.Linear(3, 2).state_dict(), e.tmp / "other.pt")
    cfg = ModelConfig(in_channels=1, num_classes=2, depth=2, width=4)
    (e.tmp / "config.json").write_text(json.dumps({
        "run": to_dict(RunConfig(model=cfg)), "classes": ClassTable.from_values((0, 1)).to_dict(),
        "stats": {"mean": [0.5], "std": [0.2]}}))
    return ["-q", "convert-checkpoint", str(e.tmp / "other.pt"), "--config",
            str(e.tmp / "config.json"), "--out", str(e.tmp / "m.safetensors")]


# --------------------------------------------------------------------------- the checks


def _files(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _complete(path: Path) -> bool:
    """Whether a file written by a command is whole (it parses)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            json.loads(path.read_text())
        elif suffix == ".png":
            with Image.open(path) as im:
                im.load()
        elif suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as fh:
                fh.metadata()
        return path.stat().st_size > 0
    except Exception:
        return False


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 40
    commands = {case_id.split("/")[0] for case_id in CASES}
    assert {"train", "predict", "evaluate", "check"} <= commands


@pytest.mark.parametrize("case_id", sorted(CASES))
def test_bad_input(case_id: str, env: Env, capsys, caplog):
    names, build = CASES[case_id]
    argv = build(env)
    before = _files(env.tmp)
    capsys.readouterr()
    with caplog.at_level(logging.WARNING):
        code = main(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (code, err, out)
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith("unetseg: error: ") and "Traceback" not in line
    assert names in line, line
    assert "; " in line and line.rsplit("; ", 1)[1].strip(), f"no fix in: {line}"
    logged = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not logged, logged  # the terminal would show these as more lines
    after = _files(env.tmp)
    temps = [p for p in after if is_temp_file(p)]
    assert not temps, temps
    changed = [p for p in after if before.get(p) != after[p]]
    assert all(_complete(p) for p in changed), changed
    assert not (env.tmp / "pwned").exists()


SUBPROCESS_CASES = ["train/truncated-png", "predict/model-pickle-runs-code",
                    "check/palette-bad-colour"]


@pytest.mark.slow
@pytest.mark.parametrize("case_id", SUBPROCESS_CASES)
def test_no_traceback_reaches_the_terminal(case_id: str, env: Env):
    names, build = CASES[case_id]
    argv = build(env)
    done = subprocess.run([sys.executable, "-m", "unetseg.cli", *argv], capture_output=True,
                          text=True, timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1 and lines[0].startswith("unetseg: error: ") and names in lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (env.tmp / "pwned").exists()
