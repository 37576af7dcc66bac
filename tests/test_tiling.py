"""Tiles cover every cell, respect the stride, and report (not keep) tiles below min_cells."""

import json
import warnings

import numpy as np
import pytest
from conftest import fixed_seed

from causalcrystal.simulator import simulate
from causalcrystal.tiling import SmallTileWarning, make_tiles, tile_cells, tile_members


@pytest.fixture(scope="module")
def cells():
    return simulate((0.0, 0.1), shape=(37, 50), seed=fixed_seed(4))


def _coverage(cells, tiles):
    counts = np.zeros(cells.sizes["cell"], dtype=int)
    for k in range(tiles.sizes["tile"]):
        counts[tile_members(tiles, k)] += 1
    return counts


def test_sliding_tiles_cover_every_cell_with_half_stride(cells):
    tiles = make_tiles(cells, 16)
    assert tiles.attrs["stride"] == 8
    assert (_coverage(cells, tiles) >= 1).all()
    assert (tiles["n_cells"].values == 256).all()  # full windows only (edge windows shifted flush)
    for lab in ("Sm_0_0", "Sm_10_0"):
        sel = tiles["image"].values == lab
        r0 = np.unique(tiles["row0"].values[sel])
        np.testing.assert_array_equal(r0, [0, 8, 16, 21])  # 37 rows: 0, 8, 16, then flush 21
        c0 = np.unique(tiles["col0"].values[sel])
        np.testing.assert_array_equal(c0, [0, 8, 16, 24, 32, 34])


def test_partition_covers_each_cell_exactly_once(cells):
    tiles = make_tiles(cells, 16, stride=16, min_cells=1)
    assert (_coverage(cells, tiles) == 1).all()
    assert tiles.attrs["partition"] == 1


def test_tile_members_are_the_cells_in_the_window(cells):
    tiles = make_tiles(cells, 10, stride=5)
    k = 7
    sub = tile_cells(cells, tiles, k)
    r0, c0 = int(tiles["row0"][k]), int(tiles["col0"][k])
    assert set(sub["image"].values.tolist()) == {str(tiles["image"].values[k])}
    assert sub["row"].min() == r0 and sub["row"].max() == r0 + 9
    assert sub["col"].min() == c0 and sub["col"].max() == c0 + 9
    assert sub.sizes["cell"] == int(tiles["n_cells"][k]) == 100


def test_small_tiles_are_reported_and_left_out(cells):
    with pytest.warns(SmallTileWarning, match="fewer than"):
        tiles = make_tiles(cells, 16, stride=16)  # clipped edge tiles have < 128 cells
    dropped = json.loads(tiles.attrs["dropped_tiles"])
    assert dropped and all(d["n_cells"] < 128 for d in dropped)
    assert (tiles["n_cells"].values >= 128).all()
    # missing cells (e.g. dropped as non-finite) lower n_cells too
    holey = cells.isel(cell=np.flatnonzero((cells["row"].values % 2 == 0) | (cells["col"].values > 20)))
    with pytest.warns(SmallTileWarning):
        t2 = make_tiles(holey, 16, min_cells=200)
    assert (t2["n_cells"].values >= 200).all()


def test_bad_tiling_arguments(cells):
    with pytest.raises(ValueError, match="stride"):
        make_tiles(cells, 8, stride=9)
    with pytest.raises(ValueError, match="too small"):
        make_tiles(cells, 1)
    # one message, one piece of advice: the error alone (the warning and the error used to point
    # opposite ways, "use a larger tile" and "use a smaller --tile-size")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SmallTileWarning)
        with pytest.raises(ValueError, match="no tile.*smaller --tile-size.*--tile-size whole"):
            make_tiles(cells, 64)   # the images (37 x 50) are smaller than half a 64 x 64 tile
    # more cells asked of a tile than it can hold: the advice is a larger tile (bughunt re-run:
    # '--tile-size 3 --min-cells 10' was told to use a smaller --tile-size)
    with pytest.raises(ValueError, match=r"at least 10 cells: it holds 3 x 3 = 9.*--tile-size 4 or larger"):
        make_tiles(cells, 3, min_cells=10)


def test_image_tiles_are_whole_images(cells):
    from causalcrystal.tiling import image_tiles

    t = image_tiles(cells)
    assert list(t["image"].values) == ["Sm_0_0", "Sm_10_0"]
    assert (_coverage(cells, t) == 1).all()
    assert (t["n_cells"].values == 37 * 50).all()
