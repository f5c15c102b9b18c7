"""Tests for unetseg.data.pairs and unetseg.data.dataset: pairing, loading, splitting and patch
sampling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unetseg.config import DataConfig
from unetseg.data.classes import IGNORE_INDEX, ClassTable
from unetseg.data.dataset import LoadedPair, PatchDataset, load_data, split_pairs
from unetseg.data.doctor import check_data
from unetseg.data.pairs import find_pairs, list_images
from unetseg.errors import UserError

ISBI = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "isbi2012" / "train"
BINARY = ClassTable.from_values([0, 255])


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _dataset(root: Path, stems: list[str], size: tuple[int, int] = (6, 8)) -> None:
    for stem in stems:
        _png(root / "images" / f"{stem}.png", np.full(size, 100, np.uint8))
        mask = np.zeros(size, np.uint8)
        mask[: size[0] // 2] = 255
        _png(root / "masks" / f"{stem}.png", mask)


def _loaded(ids: np.ndarray, image: np.ndarray | None = None, stem: str = "x") -> LoadedPair:
    if image is None:
        image = ids.astype(np.float32)[None]
    return LoadedPair(stem, image, ids.astype(np.int16), Path(f"{stem}.png"), Path(f"{stem}.png"))


# --------------------------------------------------------------------------- find_pairs


def test_pairs_by_stem_mask_suffix_and_extension(tmp_path: Path) -> None:
    img = np.zeros((4, 4), np.uint8)
    for name in ("b.png", "a.jpg", "c.tif", ".hidden.png"):
        _png(tmp_path / "images" / name, img)
    (tmp_path / "images" / "notes.txt").write_text("x")
    for name in ("a.png", "b_mask.png", "c.TIFF", ".hidden.png"):
        _png(tmp_path / "masks" / name, img)
    pairs = find_pairs(tmp_path)
    assert [(p.stem, p.image.name, p.mask.name) for p in pairs] == [
        ("a", "a.jpg", "a.png"),
        ("b", "b.png", "b_mask.png"),
        ("c", "c.tif", "c.TIFF"),
    ]


def test_image_named_like_a_mask_pairs_exactly(tmp_path: Path) -> None:
    img = np.zeros((2, 2), np.uint8)
    _png(tmp_path / "images" / "x_mask.png", img)
    _png(tmp_path / "masks" / "x_mask.png", img)
    assert [p.stem for p in find_pairs(tmp_path)] == ["x_mask"]


def test_duplicate_image_stems(tmp_path: Path) -> None:
    img = np.zeros((2, 2), np.uint8)
    _png(tmp_path / "images" / "a.png", img)
    _png(tmp_path / "images" / "a.tif", img)
    _png(tmp_path / "masks" / "a.png", img)
    with pytest.raises(UserError, match=r"a\.png and a\.tif"):
        find_pairs(tmp_path)


def test_two_masks_for_one_image(tmp_path: Path) -> None:
    img = np.zeros((2, 2), np.uint8)
    _png(tmp_path / "images" / "a.png", img)
    _png(tmp_path / "masks" / "a.png", img)
    _png(tmp_path / "masks" / "a_mask.png", img)
    with pytest.raises(UserError, match=r"a\.png and a_mask\.png"):
        find_pairs(tmp_path)


def test_unpaired_files_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _dataset(tmp_path, ["a"])
    img = np.zeros((2, 2), np.uint8)
    for i in range(12):
        _png(tmp_path / "images" / f"lonely{i:02d}.png", img)
    _png(tmp_path / "masks" / "orphan.png", img)
    with caplog.at_level(logging.WARNING):
        pairs = find_pairs(tmp_path)
    assert [p.stem for p in pairs] == ["a"]
    assert "12 images" in caplog.text and "lonely00.png" in caplog.text
    assert "lonely09.png" in caplog.text and "lonely10.png" not in caplog.text
    assert "1 masks" in caplog.text and "orphan.png" in caplog.text


@pytest.mark.parametrize("missing", ["images", "masks"])
def test_missing_folder(tmp_path: Path, missing: str) -> None:
    _dataset(tmp_path, ["a"])
    for f in (tmp_path / missing).iterdir():
        f.unlink()
    (tmp_path / missing).rmdir()
    with pytest.raises(UserError, match=rf"{missing}: folder is missing; expected .*images/"):
        find_pairs(tmp_path)


def test_no_pairs(tmp_path: Path) -> None:
    _png(tmp_path / "images" / "a.png", np.zeros((2, 2), np.uint8))
    (tmp_path / "masks").mkdir()
    with pytest.raises(UserError, match=r"no image/mask pairs found \(1 images, 0 masks\)"):
        find_pairs(tmp_path)


# --------------------------------------------------------------------------- list_images


def test_list_images(tmp_path: Path) -> None:
    img = np.zeros((2, 2), np.uint8)
    a = _png(tmp_path / "one" / "b.png", img)
    b = _png(tmp_path / "one" / "a.jpg", img)
    (tmp_path / "one" / "readme.md").write_text("x")
    c = _png(tmp_path / "data" / "images" / "z.tif", img)
    _png(tmp_path / "data" / "masks" / "z.tif", img)
    single = _png(tmp_path / "s.png", img)
    found = list_images([tmp_path / "one", str(tmp_path / "data"), single, a])
    assert found == [b, a, c, single]


def test_list_images_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images found"):
        list_images([tmp_path / "empty"])
    with pytest.raises(UserError, match=r"gone\.png: no such file or folder"):
        list_images([tmp_path / "gone.png"])
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(UserError, match=r"t\.txt: not an image"):
        list_images([tmp_path / "t.txt"])


# --------------------------------------------------------------------------- load_data


def test_load_data_decodes_every_pair_with_the_inferred_table(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a", "b"])
    loaded = load_data(tmp_path)
    assert loaded.classes.values == (0, 255)
    assert [p.stem for p in loaded.pairs] == ["a", "b"]
    first = loaded.pairs[0]
    assert first.image.shape == (1, 6, 8) and first.image.dtype == np.float32
    assert first.ids.dtype == np.int16 and first.ids[0, 0] == 1 and first.ids[-1, 0] == 0


def test_load_data_size_mismatch(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a"])
    _png(tmp_path / "masks" / "a.png", np.zeros((6, 7), np.uint8))
    with pytest.raises(UserError, match=r"masks/a\.png: mask is 7x6 but its image a\.png is 8x6"):
        load_data(tmp_path)


def test_load_data_channel_mismatch(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a", "b"])
    _png(tmp_path / "images" / "b.png", np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(UserError, match=r"images/b\.png: image has 3 channel\(s\)"):
        load_data(tmp_path)


def test_load_data_unknown_value_names_mask(tmp_path: Path) -> None:
    _dataset(tmp_path, ["a"])
    _png(tmp_path / "masks" / "a.png", np.full((6, 8), 7, np.uint8))
    with pytest.raises(UserError, match=r"masks/a\.png: mask values \[7\]"):
        load_data(tmp_path, DataConfig(class_values=(0, 255)))


def test_isbi_pairs_infer_binary() -> None:
    if not (ISBI / "images").is_dir():
        pytest.skip(f"{ISBI} not present")
    assert len(find_pairs(ISBI)) == 30
    assert check_data(ISBI).classes.values == (0, 255)


# --------------------------------------------------------------------------- split_pairs


def test_split_deterministic_disjoint_ordered() -> None:
    items = [f"s{i}" for i in range(20)]
    train, val = split_pairs(items, 0.25, seed=3)
    assert (train, val) == split_pairs(items, 0.25, seed=3)
    assert len(val) == 5 and len(train) == 15
    assert set(train).isdisjoint(val) and set(train) | set(val) == set(items)
    assert train == sorted(train, key=items.index) and val == sorted(val, key=items.index)
    assert split_pairs(items, 0.25, seed=4)[1] != val


def test_split_edge_cases() -> None:
    assert split_pairs([1, 2, 3], 0.0, seed=0) == ([1, 2, 3], [])
    assert split_pairs([1], 0.5, seed=0) == ([1], [])
    train, val = split_pairs([1, 2, 3], 0.01, seed=0)
    assert len(val) == 1 and len(train) == 2
    train, val = split_pairs([1, 2], 0.9, seed=0)
    assert len(val) == 1 and len(train) == 1
    with pytest.raises(UserError):
        split_pairs([1, 2], 1.0, seed=0)


# --------------------------------------------------------------------------- PatchDataset


def _random_pairs(n: int = 3) -> list[LoadedPair]:
    rng = np.random.default_rng(5)
    return [_loaded(rng.integers(0, 3, (40 + 3 * k, 50)), stem=f"p{k}") for k in range(n)]


def test_patch_shapes_types_alignment() -> None:
    ds = PatchDataset(_random_pairs(), 16, length=20, foreground_fraction=0.5, seed=1)
    assert len(ds) == 20
    for i in range(len(ds)):
        image, ids = ds[i]
        assert image.shape == (1, 16, 16) and image.dtype == torch.float32
        assert ids.shape == (16, 16) and ids.dtype == torch.int64
        assert image.is_contiguous() and ids.is_contiguous()
        torch.testing.assert_close(image[0], ids.float())  # image pixel == its id: aligned
    with pytest.raises(IndexError):
        ds[20]


def test_patch_determinism() -> None:
    a = PatchDataset(_random_pairs(), 16, length=8, seed=7)
    b = PatchDataset(_random_pairs(), 16, length=8, seed=7)
    a.set_epoch(2)
    b.set_epoch(2)
    for i in range(8):
        torch.testing.assert_close(a[i], b[i])
    first = [a[i][0] for i in range(8)]
    a.set_epoch(3)
    assert any(not torch.equal(x, a[i][0]) for i, x in enumerate(first))


def test_patch_returns_copies() -> None:
    ds = PatchDataset([_loaded(np.ones((16, 16), np.int16))], 16, length=1)
    image, ids = ds[0]
    image.fill_(-5.0)
    ids.fill_(-5)
    assert float(ds[0][0].min()) == 1.0 and int(ds[0][1].min()) == 1


@pytest.mark.parametrize("shape,mode", [((10, 12), "reflect"), ((3, 3), "edge")])
def test_small_image_padded(shape: tuple[int, int], mode: str) -> None:
    ids = np.arange(shape[0] * shape[1]).reshape(shape) % 5
    ds = PatchDataset([_loaded(ids)], 16, length=4, foreground_fraction=0.0)
    widths = [((16 - s) // 2, 16 - s - (16 - s) // 2) for s in shape]
    expected = np.pad(ids, widths, mode=mode)
    for i in range(4):
        image, got = ds[i]
        np.testing.assert_array_equal(got.numpy(), expected)
        np.testing.assert_array_equal(image[0].numpy(), expected)


def test_foreground_crops_find_rare_class() -> None:
    ids = np.zeros((200, 200), np.int16)
    ids[150:154, 30:34] = 1  # 16 pixels out of 40000

    def hit_rate(fraction: float) -> float:
        ds = PatchDataset([_loaded(ids)], 24, length=200, foreground_fraction=fraction, seed=0)
        return sum(bool((ds[i][1] == 1).any()) for i in range(len(ds))) / len(ds)

    uniform, centred = hit_rate(0.0), hit_rate(1.0)
    assert centred > 0.35  # about half the crops pick class 1, and those all contain it
    assert centred > 5 * uniform


def test_ignored_pixels_never_chosen_as_centre() -> None:
    ids = np.full((100, 100), IGNORE_INDEX, np.int16)
    ids[10:12, 80:82] = 0
    ds = PatchDataset(
        [_loaded(ids, np.zeros((1, 100, 100), np.float32))], 16, length=50, foreground_fraction=1.0
    )
    assert all(bool((ds[i][1] == 0).any()) for i in range(len(ds)))


def test_patch_dataset_validates_arguments() -> None:
    pairs = _random_pairs(1)
    with pytest.raises(ValueError):
        PatchDataset([], 16, length=1)
    with pytest.raises(ValueError):
        PatchDataset(pairs, 16, length=1, foreground_fraction=1.5)
