"""Streamed TIFFs stay within bounds: a pixel cap read from the header, and memory that does
not grow with the image's area whatever its strip layout."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from unetseg.data.classes import ClassTable
from unetseg.data.io import MAX_PIXELS
from unetseg.data.normalize import ChannelStats
from unetseg.errors import UserError
from unetseg.infer.stream import TiffBandReader
from unetseg.model import UNet
from unetseg.modelfile import ModelCard, save_model


def _model_file(path: Path, channels: int = 1) -> Path:
    torch.manual_seed(0)
    model = UNet(channels, 2, depth=2, width=4).eval()
    stats = ChannelStats((0.5,) * channels, (0.25,) * channels)
    save_model(path, model, ModelCard(model.config, ClassTable.from_values((0, 255)), stats))
    return path


def test_a_header_only_pixel_bomb_is_refused_before_decoding(tmp_path: Path):
    bomb = tmp_path / "bomb.tif"
    tifffile.imwrite(bomb, shape=(40000, 40000), dtype=np.uint8)  # a sparse file: no pixels
    assert MAX_PIXELS < 40000 * 40000
    with pytest.raises(UserError) as info:
        TiffBandReader(bomb)
    message = str(info.value)
    assert str(bomb) in message and "--max-pixels" in message and "\n" not in message


def test_max_pixels_lowers_and_raises_the_cap_of_predict(tmp_path: Path):
    from unetseg.api import predict

    model = _model_file(tmp_path / "m.safetensors")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((40, 50), np.uint8), tile=(16, 16))
    with pytest.raises(UserError, match=r"img\.tif.*--max-pixels 2000"):
        predict(model, [image], tmp_path / "a", stream=True, max_pixels=1999,
                show_progress=False)
    assert not list((tmp_path / "a").glob("*")), "nothing is written before the check"
    written = predict(model, [image], tmp_path / "b", stream=True, max_pixels=2000,
                      show_progress=False)
    assert tifffile.imread(written[0]).shape == (40, 50)


def test_cli_max_pixels_flag_ends_with_one_line(tmp_path: Path, capsys):
    from unetseg.cli import main

    model = _model_file(tmp_path / "m.safetensors")
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, np.zeros((40, 50), np.uint8))
    code = main(["-q", "predict", str(model), str(image), "--out", str(tmp_path / "out"),
                 "--stream", "--max-pixels", "100"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "img.tif" in err and "--max-pixels 2000" in err


def test_a_large_compressed_strip_is_refused_with_the_fix(tmp_path: Path, monkeypatch):
    import unetseg.infer.tiff_bands as tiff_bands

    image = tmp_path / "onestrip.tif"
    data = np.zeros((64, 100), np.uint8)
    tifffile.imwrite(image, data, rowsperstrip=64, compression="zlib")
    monkeypatch.setattr(tiff_bands, "MAX_CHUNK_BYTES", data.nbytes - 1)
    with pytest.raises(UserError) as info:
        TiffBandReader(image)
    message = str(info.value)
    assert str(image) in message and "tifffile.imwrite" in message and "tile=" in message
    tifffile.imwrite(image, data, rowsperstrip=32, compression="zlib")  # two strips: fine
    with TiffBandReader(image) as reader:
        np.testing.assert_array_equal(reader.rows(0, 64)[0], data / np.float32(255))


# A 4-channel float64 image: 32 bytes a pixel, so 4 MP decode to 128 MiB while a 128-row
# band decodes to 2 MiB (the rest of a streamed prediction takes about 20 MiB whatever the
# height). The prediction runs in a child process that reports how far its peak RSS rose above
# its RSS just before the streamed prediction. The peak is the kernel's VmHWM, reset by
# writing 5 to /proc/self/clear_refs: getrusage's ru_maxrss would also count the peak of the
# parent it was forked from.
CHILD = """
import json, sys
from pathlib import Path
import torch
torch.set_num_threads(1)
from unetseg.api import predict

def status_mib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(key + " not in /proc/self/status")

model, image, tiled, warm, out = map(Path, sys.argv[1:6])
predict(model, [warm], out / "warm", stream=True, tile=128, overlays=False, show_progress=False)
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # VmHWM := VmRSS
before = status_mib("VmRSS")
predict(model, [image], out / "big", stream=True, tile=128, overlays=False, show_progress=False)
print(json.dumps({"growth_mib": status_mib("VmHWM") - before}))
predict(model, [tiled], out / "tiled", stream=True, tile=128, overlays=False,
        show_progress=False)  # the same threads: the same float rounding
"""


def _child_growth_mib(model: Path, image: Path, tiled: Path, warm: Path, out: Path) -> float:
    """Peak RSS growth, MiB, of streaming ``image``; also streams ``tiled`` into ``out``."""
    import unetseg

    src = Path(unetseg.__file__).resolve().parents[1]  # the unetseg these tests import
    env = {"PYTHONPATH": str(src), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    args = [str(p) for p in (model, image, tiled, warm, out)]
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["growth_mib"])


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_a_single_strip_tiff_streams_in_band_sized_memory(tmp_path: Path):
    height, width, channels = 8192, 512, 4
    image = np.random.default_rng(0).random((height, width, channels))  # float64
    decoded_mib = image.nbytes / 2**20
    assert decoded_mib == 128
    single, tiled, warm = tmp_path / "single.tif", tmp_path / "tiled.tif", tmp_path / "warm.tif"
    tifffile.imwrite(single, image, rowsperstrip=height, photometric="rgb", extrasamples=[0])
    tifffile.imwrite(tiled, image, tile=(256, 256), photometric="rgb", extrasamples=[0])
    tifffile.imwrite(warm, image[:200, :100], tile=(64, 64), photometric="rgb",
                     extrasamples=[0])
    with tifffile.TiffFile(single) as tif:
        assert len(tif.pages.first.dataoffsets) == 1 and tif.pages.first.compression == 1
    del image
    model = _model_file(tmp_path / "m.safetensors", channels)
    out = tmp_path / "out"
    growth = _child_growth_mib(model, single, tiled, warm, out)
    assert growth < decoded_mib / 4, f"peak RSS rose {growth:.0f} MiB above the start"
    labels = tifffile.imread(out / "big" / "single.tif")
    np.testing.assert_array_equal(labels, tifffile.imread(out / "tiled" / "tiled.tif"))
    assert set(np.unique(labels)) == {0, 255}


@pytest.mark.parametrize("byteorder", ["<", ">"])
@pytest.mark.parametrize("rowsperstrip", [5, 37])
def test_uncompressed_strips_are_read_row_range_by_row_range(tmp_path: Path, byteorder,
                                                             rowsperstrip):
    data = np.random.default_rng(4).integers(0, 65535, (37, 23, 2), dtype=np.uint16)
    path = tmp_path / "raw.tif"
    tifffile.imwrite(path, data, rowsperstrip=rowsperstrip, byteorder=byteorder,
                     photometric="minisblack", planarconfig="contig")
    with TiffBandReader(path) as reader:
        assert reader._raw, "uncompressed strips are read without decoding"
        for top, bottom in [(0, 37), (4, 6), (3, 12), (36, 37)]:
            expected = data[top:bottom].transpose(2, 0, 1) / np.float32(65535)
            np.testing.assert_array_equal(reader.rows(top, bottom), expected)


def test_a_truncated_uncompressed_strip_ends_with_one_line(tmp_path: Path):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.ones((64, 64), np.uint8))
    with tifffile.TiffFile(path) as tif:
        end = tif.pages.first.dataoffsets[0] + 10 * 64
    path.write_bytes(path.read_bytes()[:end])
    with TiffBandReader(path) as reader:
        np.testing.assert_array_equal(reader.rows(0, 10)[0], np.ones((10, 64), np.float32) / 255)
        with pytest.raises(UserError, match=r"cut\.tif.*truncated"):
            reader.rows(5, 20)
