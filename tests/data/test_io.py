"""Tests for unetseg.data.io: files of every supported kind to arrays and back."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from unetseg.data import io, write
from unetseg.errors import UserError

RNG = np.random.default_rng(0)


def _noise(shape: tuple[int, ...], dtype: type = np.uint8, high: int = 256) -> np.ndarray:
    return RNG.integers(0, high, size=shape).astype(dtype)


# --------------------------------------------------------------------------- read_image


def test_png_8bit_gray_scaled_by_255(tmp_path: Path) -> None:
    a = _noise((5, 7))
    Image.fromarray(a).save(tmp_path / "g.png")
    out = io.read_image(tmp_path / "g.png")
    assert out.shape == (1, 5, 7) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], a / 255.0, rtol=1e-6)


def test_png_16bit_round_trip(tmp_path: Path) -> None:
    a = _noise((6, 4), np.uint16, 65536)
    Image.fromarray(a).save(tmp_path / "g16.png")
    np.testing.assert_allclose(io.read_image(tmp_path / "g16.png")[0], a / 65535.0, rtol=1e-6)


@pytest.mark.parametrize("dtype,scale", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_tiff_integer_scaling(tmp_path: Path, dtype: type, scale: float) -> None:
    a = _noise((4, 9), dtype, int(scale) + 1)
    tifffile.imwrite(tmp_path / "t.tif", a)
    np.testing.assert_allclose(io.read_image(tmp_path / "t.tif")[0], a / scale, rtol=1e-6)


def test_tiff_float_kept_as_is(tmp_path: Path) -> None:
    a = RNG.normal(100.0, 50.0, (4, 5)).astype(np.float64)
    tifffile.imwrite(tmp_path / "f.tiff", a)
    np.testing.assert_allclose(io.read_image(tmp_path / "f.tiff")[0], a.astype(np.float32))


@pytest.mark.parametrize("channels_last", [True, False])
def test_tiff_multichannel_layouts(tmp_path: Path, channels_last: bool) -> None:
    chw = _noise((2, 6, 5))
    stored = np.moveaxis(chw, 0, -1) if channels_last else chw
    tifffile.imwrite(
        tmp_path / "m.tif",
        stored,
        photometric="minisblack",
        planarconfig="contig" if channels_last else "separate",
    )
    np.testing.assert_allclose(io.read_image(tmp_path / "m.tif"), chw / 255.0, rtol=1e-6)


def test_tiff_samples_axis_wins_over_smallest_axis(tmp_path: Path) -> None:
    hwc = _noise((2, 5, 3))  # 2 rows: the smallest axis is not the channel axis
    tifffile.imwrite(tmp_path / "rgb.tif", hwc, photometric="rgb")
    np.testing.assert_allclose(io.read_image(tmp_path / "rgb.tif"), np.moveaxis(hwc, -1, 0) / 255)


def test_tiff_stack_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "stack.tif", _noise((io.MAX_PAGES + 1, 8, 9)))
    with pytest.raises(UserError, match=r"stack\.tif.*multi-page"):
        io.read_image(tmp_path / "stack.tif")


def test_tiff_nan_refused(tmp_path: Path) -> None:
    a = np.ones((4, 4), np.float32)
    a[1, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", a)
    with pytest.raises(UserError, match=r"nan\.tif.*NaN"):
        io.read_image(tmp_path / "nan.tif")


def test_tiff_signed_int_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "i.tif", np.zeros((3, 3), np.int32))
    with pytest.raises(UserError, match=r"i\.tif.*int32"):
        io.read_image(tmp_path / "i.tif")


def test_rgb_png_channel_order(tmp_path: Path) -> None:
    a = _noise((3, 4, 3))
    Image.fromarray(a, mode="RGB").save(tmp_path / "c.png")
    np.testing.assert_allclose(io.read_image(tmp_path / "c.png"), np.moveaxis(a, -1, 0) / 255.0)


@pytest.mark.parametrize("mode,channels", [("RGBA", 3), ("LA", 1)])
def test_alpha_dropped_with_warning(
    tmp_path: Path, mode: str, channels: int, caplog: pytest.LogCaptureFixture
) -> None:
    a = _noise((4, 5, channels + 1))
    Image.fromarray(a, mode=mode).save(tmp_path / "alpha.png")
    with caplog.at_level(logging.WARNING):
        out = io.read_image(tmp_path / "alpha.png")
    np.testing.assert_allclose(out, np.moveaxis(a[..., :channels], -1, 0) / 255.0)
    assert "alpha" in caplog.text and "alpha.png" in caplog.text


def test_rgba_tiff_alpha_dropped(tmp_path: Path) -> None:
    a = _noise((4, 5, 4))
    tifffile.imwrite(tmp_path / "a.tif", a, photometric="rgb", extrasamples=["unassalpha"])
    assert io.read_image(tmp_path / "a.tif").shape == (3, 4, 5)


def test_palette_image_expanded_to_rgb(tmp_path: Path) -> None:
    im = Image.fromarray(np.array([[0, 1], [1, 2]], np.uint8), mode="P")
    palette = [10, 20, 30, 200, 100, 0, 5, 250, 128] + [0] * (256 * 3 - 9)
    im.putpalette(palette)
    im.save(tmp_path / "p.png")
    out = io.read_image(tmp_path / "p.png")
    colours = np.array(palette[:9], np.float32).reshape(3, 3) / 255.0
    expected = np.moveaxis(colours[[[0, 1], [1, 2]]], -1, 0)
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_bilevel_is_zero_one(tmp_path: Path) -> None:
    a = np.array([[0, 255, 0], [255, 255, 0]], np.uint8)
    Image.fromarray(a).convert("1").save(tmp_path / "b.png")
    np.testing.assert_array_equal(io.read_image(tmp_path / "b.png")[0], a / 255)


def test_jpeg_exif_orientation_applied(tmp_path: Path) -> None:
    # 16 wide x 8 high, left half black. Orientation 6 = rotate 90 degrees clockwise to view,
    # so the viewed image is 8 wide x 16 high with the black half on top.
    a = np.zeros((8, 16), np.uint8)
    a[:, 8:] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a).save(tmp_path / "o.jpg", exif=exif, quality=95)
    out = io.read_image(tmp_path / "o.jpg")
    assert out.shape == (1, 16, 8)
    assert out[0, :6].mean() < 0.1 and out[0, 10:].mean() > 0.9
    assert io.image_size(tmp_path / "o.jpg") == (16, 8)


def test_truncated_png(tmp_path: Path) -> None:
    Image.fromarray(_noise((64, 64))).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"cut\.png"):
        io.read_image(tmp_path / "cut.png")


@pytest.mark.parametrize("content", [b"", b"hello, this is not an image\n"])
def test_not_an_image(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(UserError, match=r"bad\.png") as err:
        io.read_image(tmp_path / "bad.png")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match=r"bad\.png"):
        io.read_mask(tmp_path / "bad.png")
    with pytest.raises(UserError, match=r"bad\.png"):
        io.image_size(tmp_path / "bad.png")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.png"):
        io.read_image(tmp_path / "nope.png")


def test_pixel_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Image.fromarray(_noise((20, 20))).save(tmp_path / "big.png")
    tifffile.imwrite(tmp_path / "big.tif", _noise((20, 20)))
    before = Image.MAX_IMAGE_PIXELS
    monkeypatch.setattr(io, "MAX_PIXELS", 399)
    for name in ("big.png", "big.tif"):
        with pytest.raises(UserError, match=name.replace(".", r"\.") + ".*limit"):
            io.read_image(tmp_path / name)
    assert before == Image.MAX_IMAGE_PIXELS  # PIL's own limit is restored


# --------------------------------------------------------------------------- read_mask


def test_mask_gray_values_and_writable(tmp_path: Path) -> None:
    a = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(a).save(tmp_path / "m.png")
    out = io.read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, a)


def test_mask_palette_gives_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 3], [11, 3]], np.uint8)
    im = Image.fromarray(idx, mode="P")
    im.putpalette(list(RNG.integers(0, 256, 768)))
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "p.png"), idx)


def test_mask_16bit(tmp_path: Path) -> None:
    a = np.array([[0, 1000], [65535, 7]], np.uint16)
    Image.fromarray(a).save(tmp_path / "m16.png")
    out = io.read_mask(tmp_path / "m16.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, a)


def test_mask_rgb_gray_accepted_colour_refused(tmp_path: Path) -> None:
    gray = _noise((4, 4))
    Image.fromarray(np.stack([gray] * 3, -1)).save(tmp_path / "g.png")
    np.testing.assert_array_equal(io.read_mask(tmp_path / "g.png"), gray)
    colour = np.stack([gray, gray, 255 - gray], -1)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(UserError, match=r"c\.png: colour masks are not supported"):
        io.read_mask(tmp_path / "c.png")


def test_mask_float_tiff(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "ok.tif", np.array([[0.0, 2.0], [300.0, 1.0]], np.float32))
    out = io.read_mask(tmp_path / "ok.tif")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, [[0, 2], [300, 1]])
    tifffile.imwrite(tmp_path / "frac.tif", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(UserError, match=r"frac\.tif.*non-integer"):
        io.read_mask(tmp_path / "frac.tif")


def test_mask_negative_refused(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "neg.tif", np.array([[0, -1]], np.int32))
    with pytest.raises(UserError, match=r"neg\.tif"):
        io.read_mask(tmp_path / "neg.tif")


def test_mask_int32_tiff_narrowed(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "i.tif", np.array([[0, 70000]], np.int32))
    out = io.read_mask(tmp_path / "i.tif")
    assert out.dtype == np.int32 and out.tolist() == [[0, 70000]]


# --------------------------------------------------------------------------- image_size


def test_image_size_matches_read(tmp_path: Path) -> None:
    Image.fromarray(_noise((7, 3, 3))).save(tmp_path / "a.png")
    tifffile.imwrite(
        tmp_path / "b.tif", _noise((3, 5, 9)), photometric="rgb", planarconfig="separate"
    )
    for name in ("a.png", "b.tif"):
        assert io.image_size(tmp_path / name) == io.read_image(tmp_path / name).shape[1:]


# --------------------------------------------------------------------------- writers


def test_write_label_bit_depth(tmp_path: Path) -> None:
    small = np.array([[0, 255], [3, 4]], np.int64)
    write.write_label(tmp_path / "s.png", small)
    with Image.open(tmp_path / "s.png") as im:
        assert im.mode == "L"
    np.testing.assert_array_equal(io.read_mask(tmp_path / "s.png"), small)
    big = np.array([[0, 256], [65535, 4]], np.int32)
    write.write_label(tmp_path / "b.png", big)
    with Image.open(tmp_path / "b.png") as im:
        assert im.mode == "I;16"
    np.testing.assert_array_equal(io.read_mask(tmp_path / "b.png"), big)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.png", "s.png"]  # no temp files


def test_write_label_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write.write_label(tmp_path / "x.png", np.array([[70000]]))
    with pytest.raises(ValueError):
        write.write_label(tmp_path / "x.tif", np.zeros((2, 2), np.uint8))
    assert not list(tmp_path.iterdir())


def test_write_rgb_round_trip(tmp_path: Path) -> None:
    rgb = _noise((5, 6, 3))
    write.write_rgb(tmp_path / "c.png", rgb)
    with Image.open(tmp_path / "c.png") as im:
        np.testing.assert_array_equal(np.asarray(im), rgb)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_write_tiff_round_trip(tmp_path: Path, dtype: type) -> None:
    a = (RNG.random((3, 6, 5)) * 200).astype(dtype)
    write.write_tiff(tmp_path / "p.tif", a)
    back = tifffile.imread(tmp_path / "p.tif")
    assert back.shape == a.shape
    assert back.dtype == (np.uint8 if dtype == np.uint8 else np.float32)
    np.testing.assert_array_equal(back, a.astype(back.dtype))
