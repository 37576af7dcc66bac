"""Square windows ("tiles") over each image's unit-cell grid.

A tiling is an :class:`xarray.Dataset` with dim ``tile``: coords ``image``, ``row0``, ``col0``
(top-left grid index), ``size`` (nominal side, cells), ``height``/``width`` (actual extent: less
than ``size`` only for a clipped edge tile of a partition or an image smaller than ``size``),
``n_cells``; data variable ``members`` (tile, member), the cell indices into the cell table,
padded with ``-1``.

Window starts are ``0, stride, 2*stride, ...`` along rows and columns. Every cell is covered:

* sliding windows (``stride < size``, default ``stride = size // 2`` as in the paper): if the
  last window stops short of the grid's edge, one more full-size window is placed flush with the
  edge;
* a partition (``stride == size``): the last window is clipped at the edge, so each cell lies in
  exactly one tile (what a joint model over tiles needs).

Tiles with fewer than ``min_cells`` cells (cells may be missing, e.g. dropped as non-finite) are
removed and *reported*: a :class:`SmallTileWarning` and the ``dropped_tiles`` attr list them.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr

from causalcrystal.cells import display_label, validate


class SmallTileWarning(UserWarning):
    """Some tiles had fewer cells than ``min_cells`` and were left out."""


def _starts(extent: int, size: int, stride: int) -> list[int]:
    if extent <= size:
        return [0]
    starts = list(range(0, extent - size + 1, stride))
    if starts[-1] + size < extent:
        # partition: clipped last tile; sliding window: one more full window flush with the edge.
        starts.append(starts[-1] + stride if stride == size else extent - size)
    return starts


def make_tiles(cells: xr.Dataset, size: int, stride: int | None = None, min_cells: int | None = None) -> xr.Dataset:
    """Tile every image of a cell table with ``size`` x ``size`` windows moved by ``stride``.

    ``stride`` defaults to ``size // 2`` (the paper's 50 % overlap); ``stride == size`` gives a
    partition. ``min_cells`` defaults to half a full tile (``size**2 // 2``).
    """
    validate(cells, allow_nonfinite=True)
    size = int(size)
    if size < 2:
        raise ValueError(f"tile size {size} (--tile-size) too small; use at least 2 (cells per side).")
    stride = size // 2 if stride is None else int(stride)
    if not (1 <= stride <= size):
        raise ValueError(
            f"stride {stride} (--stride) must be between 1 and the tile size {size} (--tile-size): a larger "
            "stride would skip cells."
        )
    min_cells = size * size // 2 if min_cells is None else int(min_cells)
    if min_cells < 1:
        raise ValueError(f"min_cells {min_cells} must be >= 1.")
    if min_cells > size * size:
        # no tile could ever qualify, and "a smaller --tile-size" would make it worse
        raise ValueError(f"no tile of size {size} has at least {min_cells} cells: it holds {size} x {size} = "
                         f"{size * size}, fewer than the {min_cells} a tile needs (--min-cells, min_cells; by default "
                         f"4 per descriptor); use --tile-size {int(np.ceil(np.sqrt(min_cells)))} or larger, or "
                         f"--min-cells {size * size} or lower.")

    img = cells["image"].values.astype(str)
    rows_all, cols_all = cells["row"].values, cells["col"].values
    recs, members, dropped, extents = [], [], [], []
    for label in dict.fromkeys(img.tolist()):
        idx = np.flatnonzero(img == label)
        r, c = rows_all[idx], cols_all[idx]
        rmin, cmin = int(r.min()), int(c.min())
        # Dense per-image grid: validate() above refused index ranges that are absurdly sparse for the
        # number of cells (cells.GRID_SPARSITY), so its size stays proportional to the data.
        grid = np.full((int(r.max()) - rmin + 1, int(c.max()) - cmin + 1), -1, dtype=np.int64)
        extents.append(f"{display_label(label)} {grid.shape[0]}x{grid.shape[1]} ({idx.size} cells)")
        grid[r - rmin, c - cmin] = idx
        for r0 in _starts(grid.shape[0], size, stride):
            for c0 in _starts(grid.shape[1], size, stride):
                block = grid[r0:r0 + size, c0:c0 + size]
                m = block[block >= 0]
                rec = {"image": label, "row0": r0 + rmin, "col0": c0 + cmin, "height": block.shape[0],
                       "width": block.shape[1], "n_cells": int(m.size)}
                if m.size < min_cells:
                    dropped.append(rec)
                    continue
                recs.append(rec)
                members.append(np.sort(m))
    # one piece of advice in the warning and the error (they used to point opposite ways)
    advice = ("a smaller --tile-size, a lower --min-cells (min_cells), or --tile-size whole (one tile per image, "
              "for images smaller than a tile)")
    if not recs:
        shown = "; ".join(extents[:5]) + (f"; ... {len(extents) - 5} more" if len(extents) > 5 else "")
        raise ValueError(f"no tile of size {size} has at least {min_cells} cells (image grids: {shown}); use {advice}.")
    if dropped:
        warnings.warn(
            f"{len(dropped)} tile(s) with fewer than {min_cells} cells left out "
            f"(e.g. image {dropped[0]['image']} row0={dropped[0]['row0']} col0={dropped[0]['col0']}: "
            f"{dropped[0]['n_cells']} cells; clipped by an image edge or holes). To keep them use {advice}.",
            SmallTileWarning,
            stacklevel=2,
        )
    width = max(m.size for m in members)
    padded = np.full((len(members), width), -1, dtype=np.int64)
    for k, m in enumerate(members):
        padded[k, : m.size] = m
    coords = {key: ("tile", np.array([rec[key] for rec in recs])) for key in recs[0]}
    coords["image"] = ("tile", np.array([rec["image"] for rec in recs], dtype=str))
    coords["size"] = ("tile", np.full(len(recs), size, dtype=np.int64))
    coords["tile"] = np.arange(len(recs))
    return xr.Dataset(
        {"members": (("tile", "member"), padded)},
        coords=coords,
        attrs={"size": size, "stride": stride, "min_cells": min_cells, "partition": int(stride == size),
               "dropped_tiles": json.dumps(dropped)},
    )


def tile_members(tiles: xr.Dataset, k: int) -> np.ndarray:
    """Cell indices of tile ``k`` (padding removed)."""
    m = tiles["members"].values[k]
    return m[m >= 0]


def tile_cells(cells: xr.Dataset, tiles: xr.Dataset, k: int) -> xr.Dataset:
    """The sub-table of the cells in tile ``k``."""
    return cells.isel(cell=tile_members(tiles, k))


def image_tiles(cells: xr.Dataset) -> xr.Dataset:
    """A "tiling" with one tile per whole image, so image-level analyses reuse the tile machinery.

    Same layout as :func:`make_tiles` (``size`` is the larger grid side, ``attrs['whole_image'] = 1``).
    """
    validate(cells, allow_nonfinite=True)
    img = cells["image"].values.astype(str)
    labels = list(dict.fromkeys(img.tolist()))
    members = [np.flatnonzero(img == lab) for lab in labels]
    recs = []
    for lab, m in zip(labels, members):
        r, c = cells["row"].values[m], cells["col"].values[m]
        h, w = int(np.ptp(r)) + 1, int(np.ptp(c)) + 1
        recs.append({"image": lab, "row0": int(r.min()), "col0": int(c.min()), "height": h, "width": w,
                     "n_cells": int(m.size), "size": max(h, w)})
    padded = np.full((len(members), max(m.size for m in members)), -1, dtype=np.int64)
    for k, m in enumerate(members):
        padded[k, : m.size] = m
    coords = {key: ("tile", np.array([rec[key] for rec in recs])) for key in recs[0]}
    coords["image"] = ("tile", np.array(labels, dtype=str))
    coords["tile"] = np.arange(len(recs))
    return xr.Dataset({"members": (("tile", "member"), padded)}, coords=coords,
                      attrs={"size": 0, "stride": 0, "min_cells": 1, "partition": 1, "whole_image": 1,
                             "dropped_tiles": "[]"})
