"""The preview commands write their pictures and refuse bad output names."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unetseg.cli import main


def test_preview_augment_and_weights(disc_data: Path, tmp_path: Path, capsys):
    grid = tmp_path / "pics" / "grid.png"
    assert main(["-q", "preview-augment", str(disc_data), "--out", str(grid), "--images", "2",
                 "--samples", "3", "--preset", "paper"]) == 0
    picture = np.array(Image.open(grid))
    assert picture.ndim == 3 and picture.shape[1] > picture.shape[0]  # 4 columns, 2 rows
    weights = tmp_path / "weights.png"
    assert main(["-q", "preview-weights", str(disc_data), "--out", str(weights), "--images", "1",
                 "--weight-sigma", "3"]) == 0
    assert Image.open(weights).size[0] > 100
    assert "wrote" in capsys.readouterr().out


def test_preview_refuses_a_non_png_name(disc_data: Path, tmp_path: Path, capsys):
    code = main(["-q", "preview-weights", str(disc_data), "--out", str(tmp_path / "w.jpg")])
    err = capsys.readouterr().err
    assert code == 2 and "w.jpg" in err and ".png" in err
    code = main(["-q", "preview-augment", str(disc_data), "--out", str(tmp_path / "g.png"),
                 "--weight-objects", "7"])
    assert code == 0  # weight flags do not matter for augmentation previews
    code = main(["-q", "preview-weights", str(disc_data), "--out", str(tmp_path / "g.png"),
                 "--weight-objects", "7"])
    assert code == 2 and "--weight-objects 7" in capsys.readouterr().err
