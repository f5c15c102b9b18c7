import math

import pytest
import torch

from unetseg.infer.fast import fast_predictor, plan_tile
from unetseg.infer.tiling import tile_starts
from unetseg.model import UNet


@pytest.mark.parametrize("size", [1, 100, 512, 1024, 1025, 2048, 3000, 20000])
@pytest.mark.parametrize("max_tile,overlap", [(1024, 64), (512, 32), (256, 64)])
def test_plan_tile_uses_the_fewest_tiles_and_keeps_the_overlap(size, max_tile, overlap):
    tile, fraction = plan_tile(size, size, max_tile=max_tile, min_overlap=overlap, multiple=32)
    assert tile % 32 == 0 and tile <= max(max_tile, 32)
    starts = tile_starts(size, tile, fraction)
    if size <= max_tile:
        assert starts == [0] and tile >= size
        return
    assert starts[-1] + tile == size
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))
    # brute force: no tile count below len(starts) can cover size with this overlap
    fewest = next(n for n in range(1, 1000) if n * max_tile - (n - 1) * overlap >= size)
    assert len(starts) == fewest
    assert tile * len(starts) / size < 1 + (len(starts) * (overlap + 32)) / size


@pytest.mark.parametrize("norm,atol", [("batch", 1e-5), ("instance", 5e-5)])
def test_fast_predictor_matches_the_plain_model(norm, atol):
    torch.manual_seed(0)
    model = UNet(1, 3, depth=2, width=4, norm=norm).eval()
    x = torch.randn(2, 1, 40, 52)
    with torch.no_grad():
        expected = model(x)
    got = fast_predictor(model)(x)
    assert got.shape == expected.shape
    # channels-last instance norm sums its statistics in another order
    assert torch.allclose(got, expected, atol=atol)
    assert math.isclose(float(got.abs().sum()), float(expected.abs().sum()), rel_tol=1e-5)
