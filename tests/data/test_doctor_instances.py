"""``unetseg check`` with instance images: the objects' counts, sizes and contacts, and the
problems of instance files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import SHARED_DATA
from PIL import Image
from scipy import ndimage

from unetseg.cli import main
from unetseg.config import DataConfig
from unetseg.data.doctor import check_data, examine_data
from unetseg.data.report import format_report

DSB = SHARED_DATA / "dsb2018"


def _instances() -> dict[str, np.ndarray]:
    """Three 12x16 instance images worked out by hand (see the counts in the test)."""
    a = np.zeros((12, 16), np.uint16)
    a[2:5, 2:6] = 300  # 12 px, shares an edge with 7
    a[2:5, 6:9] = 7  # 9 px
    a[5, 9] = 41  # 1 px, meets 7 at a corner only
    a[8:12, 12:16] = 2  # 16 px, cut by the border
    b = np.zeros((12, 16), np.uint16)
    b[4:8, 4:8] = 1000  # 16 px
    b[0, 0] = b[11, 15] = 5  # 2 px in two pieces, on the border
    c = np.zeros((12, 16), np.uint16)
    c[3:6, 3:6] = 1  # 9 px, alone
    return {"a": a, "b": b, "c": c}


def _write(root: Path, instances: dict[str, np.ndarray], *, with_instances: bool = True) -> Path:
    for folder in ("images", "masks", "instances"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for stem, labels in instances.items():
        Image.fromarray(np.full(labels.shape, 90, np.uint8)).save(root / "images" / f"{stem}.png")
        Image.fromarray((labels > 0).astype(np.uint8)).save(root / "masks" / f"{stem}.png")
        if with_instances:
            Image.fromarray(labels).save(root / "instances" / f"{stem}.png")
    return root


def test_objects_of_instance_images(tmp_path: Path, capsys) -> None:
    root = _write(tmp_path / "data", _instances())
    report = check_data(root)
    assert report.clean and report.instances == 3
    objects = report.objects
    assert objects is not None and objects.source == "instances"
    assert objects.images == 3 and objects.from_instances == 3 and objects.objects == 7
    assert objects.per_image == (1, 2.0, 4)
    assert objects.area == (1, 9.0, 16)  # areas 12, 9, 1, 16, 16, 2, 9
    assert (objects.touching_pairs_4, objects.touching_pairs_8) == (1, 2)
    assert (objects.touching_objects_4, objects.touching_objects_8) == (2, 3)
    assert objects.border_objects == 2 and objects.fragmented_objects == 1
    text = format_report(report)
    assert "objects (from instances/): 7 in 3 image(s); per image min 1, median 2, max 4" in text
    assert "touching pairs: 1 share an edge (4-adjacent), 2 an edge or a corner" in text
    assert main(["-q", "check", str(root), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["objects"]
    assert summary["objects"] == 7 and summary["area"] == {"min": 1, "median": 9.0, "max": 16}
    assert summary["source"] == "instances" and summary["touching_pairs_8"] == 2


def test_objects_of_masks_without_instances(tmp_path: Path, capsys) -> None:
    """Without instances/ the objects are the 4-connected components of the masks: 300 and 7
    of image a merge into one; b's two pieces are two objects."""
    root = _write(tmp_path / "data", _instances(), with_instances=False)
    report = check_data(root)
    objects = report.objects
    assert report.clean and report.instances == 0
    assert objects is not None and objects.source == "masks" and objects.object_values == (1,)
    assert objects.objects == 7 and objects.per_image == (1, 3.0, 3)
    assert objects.area == (1, 9.0, 21)  # 21 = 12 + 9 merged
    assert (objects.touching_pairs_4, objects.touching_pairs_8) == (0, 1)
    assert objects.fragmented_objects == 0 and objects.border_objects == 3
    assert "4-connected components of mask values 1" in format_report(report)
    background = check_data(root, DataConfig(weight_objects=(0,)))  # background as object
    assert background.objects is not None and background.objects.objects == 3
    assert main(["-q", "check", str(root), "--weight-objects", "0", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["objects"]["object_values"] == [0]
    assert main(["-q", "check", str(root), "--weight-objects", "7"]) == 1
    assert "--weight-objects 7: not a class value of the masks (0, 1)" in capsys.readouterr().out


def test_problems_of_instance_files(tmp_path: Path) -> None:
    root = _write(tmp_path / "data", _instances())
    folder = root / "instances"
    Image.fromarray(np.zeros((12, 15), np.uint16)).save(folder / "a.png")  # wrong size
    tifffile.imwrite(folder / "b.tif", np.zeros((12, 16), np.float32))  # b.png and b.tif
    (folder / "c.png").unlink()  # pair without instances
    Image.fromarray(np.zeros((12, 16), np.uint16)).save(folder / "stray.png")  # no pair
    report = check_data(root)
    found = {(p.severity, p.kind, Path(p.path).name) for p in report.problems}
    assert found == {("error", "instances", "a.png"), ("error", "duplicate", "b.png"),
                     ("warning", "instances", "c.png"), ("warning", "unpaired", "stray.png")}
    size = next(p for p in report.problems if p.kind == "instances" and p.severity == "error")
    assert "instances/a.png: instance image is 15x12 but its image is 16x12" in size.message
    (folder / "b.png").unlink()
    report = check_data(root)
    kinds = {(p.kind, Path(p.path).name) for p in report.errors}
    assert kinds == {("instances", "a.png"), ("instances", "b.tif")}
    assert "float32 samples" in next(p.message for p in report.errors if "b.tif" in p.path)
    assert all("\n" not in p.message for p in report.problems)


def test_instances_and_masks_that_disagree(tmp_path: Path) -> None:
    labels = _instances()
    root = _write(tmp_path / "data", labels)
    mask = (labels["c"] > 0).astype(np.uint8)
    mask[8:10, 8:10] = 1  # 4 object pixels without an instance
    mask[3, 3] = 0  # 1 instance pixel on background
    Image.fromarray(mask).save(root / "masks" / "c.png")
    report = check_data(root)
    assert [(p.kind, Path(p.path).name) for p in report.problems] == [("instances", "c.png")]
    assert ("instances/c.png: 4 object pixels of the mask lie outside every instance and 1"
            " instance pixels on other classes") in report.problems[0].message
    mask = (labels["c"] > 0).astype(np.uint8)
    mask[3, 3] = 2  # a third class, and not an object class here
    Image.fromarray(mask).save(root / "masks" / "c.png")
    only_1 = check_data(root, DataConfig(weight_objects=(1,)))
    assert [(p.kind, Path(p.path).name) for p in only_1.problems] == [("instances", "c.png")]
    assert "0 object pixels of the mask lie outside" in only_1.problems[0].message
    assert check_data(root).clean  # by default every class but the first is an object class


def test_training_keeps_the_instance_labels(tmp_path: Path) -> None:
    labels = _instances()
    root = _write(tmp_path / "data", labels)
    report, reads = examine_data(root, keep=True)
    assert report.clean and report.objects is None
    for r in reads:
        assert r.instances is not None and np.array_equal(r.instances, labels[r.pair.stem])
    _, reads = examine_data(root)
    assert all(r.instances is None and r.instance_path is not None for r in reads)


def _touching_by_dilation(labels: np.ndarray) -> tuple[int, int]:
    """Touching pairs counted another way: grow each object by one pixel (cross, then square)
    and list the other ids under it."""
    pairs4, pairs8 = set(), set()
    for i in np.unique(labels[labels > 0]):
        region = labels == i
        for structure, pairs in ((ndimage.generate_binary_structure(2, 1), pairs4),
                                 (np.ones((3, 3), bool), pairs8)):
            grown = ndimage.binary_dilation(region, structure=structure)
            near = [j for j in np.unique(labels[grown]) if j not in (0, i)]
            pairs.update((min(i, j), max(i, j)) for j in near)
    return len(pairs4), len(pairs8)


@pytest.mark.skipif(not (DSB / "instances").is_dir(),
                    reason="../shared/data/dsb2018 is not present")
def test_dsb2018_instances(tmp_path: Path) -> None:
    stems = sorted(p.stem for p in (DSB / "instances").glob("*.png"))[:4]
    for folder in ("images", "masks", "instances"):
        (tmp_path / folder).mkdir()
        for stem in stems:
            (tmp_path / folder / f"{stem}.png").symlink_to(DSB / folder / f"{stem}.png")
    report = check_data(tmp_path)
    assert report.clean, report.problems[:3]
    objects = report.objects
    assert objects is not None and objects.source == "instances"
    labels = [np.array(Image.open(DSB / "instances" / f"{s}.png")) for s in stems]
    counts = [len(np.unique(x[x > 0])) for x in labels]
    assert objects.objects == sum(counts) and objects.per_image[2] == max(counts)
    areas = np.concatenate([np.bincount(x.ravel())[1:] for x in labels])
    areas = areas[areas > 0]
    assert objects.area == (areas.min(), float(np.median(areas)), areas.max())
    touching = [_touching_by_dilation(x) for x in labels]
    assert objects.touching_pairs_4 == sum(t[0] for t in touching)
    assert objects.touching_pairs_8 == sum(t[1] for t in touching)
    masks = [np.array(Image.open(DSB / "masks" / f"{s}.png")) for s in stems]
    assert all(np.array_equal(m > 0, x > 0) for m, x in zip(masks, labels))
