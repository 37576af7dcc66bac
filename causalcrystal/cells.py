"""The cell table: the one data contract every stage of causalcrystal consumes.

A cell table is an :class:`xarray.Dataset` with a single dimension ``cell`` (one entry per unit
cell, across all images of a series):

data variables (float64)
    ``I14, I5, a, b, alpha, Vol, Px, Py`` -- the eight per-unit-cell descriptors of the paper
    (summed A-site intensity, B-site intensity, lattice parameters, cell angle, projected cell
    area, in-plane polarisation components). Units live in each variable's ``units`` attr.
coords on ``cell``
    ``image`` (str label), ``sm_fraction`` (Sm fraction *y* of that image, 0..1, float),
    ``row``, ``col`` (int64 grid index of the cell inside its image), ``x``, ``y`` (float
    position of the cell centre, NaN when unknown).
attrs
    ``source`` (where the table came from), ``standardize`` (always ``"none"`` for a cell table:
    descriptors are raw), ``sources`` (JSON ``{image: file}``), ``nonfinite_dropped`` (JSON
    ``{image: {variable: count}}``, what the non-finite policy removed), optionally ``haadf``
    (JSON ``{image: file}``, companion HAADF images for plotting).

``sm_fraction`` is a per-cell coord (constant within an image) so that any subset of cells
carries its composition along; :func:`images` derives the one-row-per-image table.

Every entry point (readers, simulator, CLI) ends in :func:`validate`, which raises
:class:`CellTableError` with a message that names the file, the variable and the fix.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping

import numpy as np
import xarray as xr

#: The eight descriptors, in the paper's order.
DESCRIPTORS: tuple[str, ...] = ("I14", "I5", "a", "b", "alpha", "Vol", "Px", "Py")

#: Per-cell coordinates every cell table carries.
CELL_COORDS: tuple[str, ...] = ("image", "sm_fraction", "row", "col", "x", "y")

#: Default units of the descriptors when a source does not say (the public Sm-BFO files are in
#: image pixels and detector counts; the simulator writes physical units and overrides these).
DEFAULT_UNITS: dict[str, str] = {
    "I14": "counts",
    "I5": "counts",
    "a": "px",
    "b": "px",
    "alpha": "deg",
    "Vol": "px^2",
    "Px": "px",
    "Py": "px",
}

LONG_NAMES: dict[str, str] = {
    "I14": "summed intensity of the 4 A-site corner columns",
    "I5": "intensity of the B-site centre column",
    "a": "lattice parameter a (length of the first cell vector)",
    "b": "lattice parameter b (length of the second cell vector)",
    "alpha": "angle between the cell vectors",
    "Vol": "projected unit-cell area",
    "Px": "in-plane polarisation, x (B-site offset from the A-site centroid)",
    "Py": "in-plane polarisation, y (B-site offset from the A-site centroid)",
}

NONFINITE_POLICIES = ("drop", "raise", "keep")


class CellTableError(ValueError):
    """A cell table (or the input it was built from) breaks the data contract."""


class NonFiniteWarning(UserWarning):
    """Cells with NaN/inf descriptors were dropped (the default non-finite policy)."""


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def make_cells(
    columns: Mapping[str, np.ndarray],
    *,
    image: str | np.ndarray,
    sm_fraction: float | np.ndarray,
    row: np.ndarray,
    col: np.ndarray,
    x: np.ndarray | None = None,
    y: np.ndarray | None = None,
    units: Mapping[str, str] | None = None,
    source: str = "",
    sources: Mapping[str, str] | None = None,
) -> xr.Dataset:
    """Assemble a cell table from plain arrays (one entry per cell).

    This is the single constructor the readers, the atom-column code and the simulator use, so
    every table has the same dtypes, coords and attrs. ``image`` and ``sm_fraction`` may be a
    scalar (one image) or per-cell arrays. The table is *not* validated here: callers apply the
    non-finite policy and then :func:`validate`.
    """
    missing = [v for v in DESCRIPTORS if v not in columns]
    if missing:
        raise CellTableError(
            f"{_where(source)}missing descriptor(s) {missing}; a cell table needs all of "
            f"{list(DESCRIPTORS)}. Compute the missing ones (see causalcrystal.atoms) or supply them."
        )
    n = None
    data_vars = {}
    unit_map = dict(DEFAULT_UNITS)
    unit_map.update(units or {})
    for name in DESCRIPTORS:
        arr = np.asarray(columns[name], dtype=np.float64).reshape(-1)
        if n is None:
            n = arr.size
        elif arr.size != n:
            raise CellTableError(
                f"{_where(source)}variable {name!r} has {arr.size} values but {DESCRIPTORS[0]!r} "
                f"has {n}; every descriptor needs one value per cell."
            )
        data_vars[name] = (
            "cell",
            arr,
            {"units": unit_map[name], "long_name": LONG_NAMES[name]},
        )
    assert n is not None

    def per_cell(value, name, dtype):
        arr = np.asarray(value)
        if arr.ndim == 0:
            arr = np.full(n, arr.item())
        arr = arr.reshape(-1)
        if arr.size != n:
            raise CellTableError(
                f"{_where(source)}coordinate {name!r} has {arr.size} values for {n} cells; "
                "give one value per cell."
            )
        return arr.astype(dtype)

    nan = np.full(n, np.nan)
    coords = {
        "image": ("cell", per_cell(image, "image", str).astype(object)),
        "sm_fraction": ("cell", per_cell(sm_fraction, "sm_fraction", np.float64)),
        "row": ("cell", per_cell(row, "row", np.int64)),
        "col": ("cell", per_cell(col, "col", np.int64)),
        "x": ("cell", per_cell(nan if x is None else x, "x", np.float64)),
        "y": ("cell", per_cell(nan if y is None else y, "y", np.float64)),
    }
    ds = xr.Dataset(data_vars, coords=coords)
    ds["image"] = ds["image"].astype(str)
    labels = list(dict.fromkeys(ds["image"].values.tolist()))
    ds.attrs = {
        "source": source,
        "standardize": "none",
        "sources": json.dumps(dict(sources) if sources else {lab: source for lab in labels}),
        "nonfinite_dropped": json.dumps({}),
    }
    return ds


def nonfinite_counts(ds: xr.Dataset) -> dict[str, dict[str, int]]:
    """Count non-finite descriptor values per image and variable (only non-zero entries)."""
    out: dict[str, dict[str, int]] = {}
    images_ = ds["image"].values
    for name in DESCRIPTORS:
        bad = ~np.isfinite(ds[name].values)
        if not bad.any():
            continue
        labels, counts = np.unique(images_[bad], return_counts=True)
        for lab, c in zip(labels.tolist(), counts.tolist()):
            out.setdefault(str(lab), {})[name] = int(c)
    return out


def apply_nonfinite_policy(ds: xr.Dataset, policy: str = "drop", source: str | None = None) -> xr.Dataset:
    """Deal with cells whose descriptors are NaN or infinite, explicitly.

    ``"drop"`` (default) removes those cells, records the counts per image and variable in
    ``attrs["nonfinite_dropped"]`` and emits a :class:`NonFiniteWarning` saying how many went;
    ``"raise"`` refuses the table; ``"keep"`` keeps them (later stages that cannot use them will
    refuse). Nothing is ever dropped silently.
    """
    if policy not in NONFINITE_POLICIES:
        raise CellTableError(f"non-finite policy {policy!r} unknown; use one of {NONFINITE_POLICIES}.")
    counts = nonfinite_counts(ds)
    if not counts or policy == "keep":
        return ds
    src = source or ds.attrs.get("source") or "cell table"
    detail = "; ".join(
        f"image {img}: " + ", ".join(f"{v}={c}" for v, c in per.items()) for img, per in counts.items()
    )
    if policy == "raise":
        raise CellTableError(
            f"{src}: non-finite descriptor values ({detail}). Clean them upstream, or read with "
            "nonfinite='drop' (drop those cells, reported) or nonfinite='keep'."
        )
    good = np.ones(ds.sizes["cell"], dtype=bool)
    for name in DESCRIPTORS:
        good &= np.isfinite(ds[name].values)
    n_bad = int((~good).sum())
    out = ds.isel(cell=good)
    previous = json.loads(ds.attrs.get("nonfinite_dropped", "{}"))
    for img, per in counts.items():
        slot = previous.setdefault(img, {})
        for v, c in per.items():
            slot[v] = slot.get(v, 0) + c
    out.attrs = dict(ds.attrs)
    out.attrs["nonfinite_dropped"] = json.dumps(previous)
    warnings.warn(
        f"{src}: dropped {n_bad} of {ds.sizes['cell']} cells with non-finite descriptors "
        f"({detail}). Pass nonfinite='raise' or 'keep' to change this.",
        NonFiniteWarning,
        stacklevel=2,
    )
    return out


def validate(ds: xr.Dataset, source: str | None = None, *, allow_nonfinite: bool = False) -> xr.Dataset:
    """Check that ``ds`` satisfies the cell-table contract; return it unchanged.

    Raises :class:`CellTableError` naming the source, the variable and the fix. ``source``
    defaults to ``ds.attrs['source']``.
    """
    src = source or (ds.attrs.get("source") if isinstance(ds, xr.Dataset) else None) or "cell table"
    if not isinstance(ds, xr.Dataset):
        raise CellTableError(f"{src}: expected an xarray.Dataset, got {type(ds).__name__}.")
    if "cell" not in ds.dims:
        raise CellTableError(
            f"{src}: no 'cell' dimension (dims are {dict(ds.sizes)}); a cell table has one row per "
            "unit cell along 'cell'. Build it with causalcrystal.cells.make_cells or causalcrystal.read."
        )
    if ds.sizes["cell"] == 0:
        raise CellTableError(f"{src}: the table has no cells (were they all dropped as non-finite?).")
    for name in DESCRIPTORS:
        if name not in ds.data_vars:
            raise CellTableError(
                f"{src}: descriptor {name!r} is missing; add a data variable {name!r} with dim 'cell'."
            )
        var = ds[name]
        if var.dims != ("cell",):
            raise CellTableError(f"{src}: {name!r} has dims {var.dims}; it must have exactly ('cell',).")
        if var.dtype != np.float64:
            raise CellTableError(f"{src}: {name!r} has dtype {var.dtype}; convert it to float64.")
        if not allow_nonfinite and not np.isfinite(var.values).all():
            n_bad = int((~np.isfinite(var.values)).sum())
            raise CellTableError(
                f"{src}: {name!r} has {n_bad} non-finite values; apply "
                "causalcrystal.cells.apply_nonfinite_policy (read(..., nonfinite='drop')) first."
            )
    for name in CELL_COORDS:
        if name not in ds.coords:
            raise CellTableError(f"{src}: coordinate {name!r} is missing; add it as a per-cell coord.")
        if ds[name].dims != ("cell",):
            raise CellTableError(f"{src}: coordinate {name!r} has dims {ds[name].dims}; it must be ('cell',).")
    for name in ("row", "col"):
        if not np.issubdtype(ds[name].dtype, np.integer):
            raise CellTableError(
                f"{src}: coordinate {name!r} has dtype {ds[name].dtype}; grid indices must be integers."
            )
    frac = ds["sm_fraction"].values.astype(float)
    if not np.isfinite(frac).all() or (frac < 0).any() or (frac > 1).any():
        bad = frac[~(np.isfinite(frac) & (frac >= 0) & (frac <= 1))][:3]
        raise CellTableError(
            f"{src}: sm_fraction values {bad.tolist()} outside [0, 1]; give the Sm *fraction* "
            "(7 % -> 0.07), not a percentage."
        )
    img = ds["image"].values.astype(str)
    labels, inverse = np.unique(img, return_inverse=True)
    for k, lab in enumerate(labels):
        f = frac[inverse == k]
        if np.ptp(f) > 0:
            raise CellTableError(
                f"{src}: image {lab!r} has several sm_fraction values {np.unique(f).tolist()[:4]}; "
                "one image has one composition."
            )
    # A unit cell may enter a likelihood once: (image, row, col) must be unique.
    key = np.stack([inverse, ds["row"].values, ds["col"].values], axis=1)
    uniq, counts = np.unique(key, axis=0, return_counts=True)
    if (counts > 1).any():
        k, r, c = uniq[counts > 1][0]
        raise CellTableError(
            f"{src}: image {labels[k]!r} has {int((counts > 1).sum())} duplicated grid positions "
            f"(e.g. row={r}, col={c}); each (image, row, col) must occur once. Check the 'ab'/'row,col' input."
        )
    return ds


def canonical(ds: xr.Dataset) -> xr.Dataset:
    """The cell table in canonical order: images by Sm fraction, then label; cells by (row, col).

    Every result that depends on the order of the cells (bootstrap resamples, the tiles' member
    lists, LiNGAM's sums) then depends only on the content, so a re-sorted file gives bit-identical
    numbers. ``read`` and every job apply it; a table already in that order is returned as is.
    """
    img = ds["image"].values.astype(str)
    key = np.lexsort((ds["col"].values, ds["row"].values, img, ds["sm_fraction"].values.astype(float)))
    if np.array_equal(key, np.arange(key.size)):
        return ds
    out = ds.isel(cell=key)
    return out.assign_coords(cell=np.arange(key.size)) if "cell" in ds.coords else out


def images(ds: xr.Dataset) -> xr.Dataset:
    """The per-image table derived from a cell table: dim ``image`` with ``sm_fraction``,
    ``n_cells``, ``n_rows``, ``n_cols`` and ``source`` (file)."""
    img = ds["image"].values.astype(str)
    labels = list(dict.fromkeys(img.tolist()))
    sources = json.loads(ds.attrs.get("sources", "{}") or "{}")
    frac, n, nr, nc = [], [], [], []
    for lab in labels:
        m = img == lab
        frac.append(float(ds["sm_fraction"].values[m][0]))
        n.append(int(m.sum()))
        nr.append(int(np.ptp(ds["row"].values[m]) + 1))
        nc.append(int(np.ptp(ds["col"].values[m]) + 1))
    return xr.Dataset(
        {
            "sm_fraction": ("image", np.array(frac)),
            "n_cells": ("image", np.array(n, dtype=np.int64)),
            "n_rows": ("image", np.array(nr, dtype=np.int64)),
            "n_cols": ("image", np.array(nc, dtype=np.int64)),
            "source": ("image", np.array([sources.get(lab, "") for lab in labels], dtype=object)),
        },
        coords={"image": labels},
    )


def concat(tables: list[xr.Dataset], source: str = "") -> xr.Dataset:
    """Join cell tables of different images into one series (labels must not collide)."""
    if not tables:
        raise CellTableError(f"{_where(source)}no cell tables to join.")
    seen: dict[str, str] = {}
    for t in tables:
        for lab in np.unique(t["image"].values.astype(str)):
            if lab in seen:
                raise CellTableError(
                    f"image label {lab!r} occurs in both {seen[lab]} and {t.attrs.get('source')}; "
                    "rename one (labels must be unique across a series)."
                )
            seen[lab] = t.attrs.get("source", "")
    out = xr.concat(tables, dim="cell", data_vars="all", coords="different", compat="equals", join="outer",
                    combine_attrs="drop")
    sources, dropped, haadf = {}, {}, {}
    for t in tables:
        sources.update(json.loads(t.attrs.get("sources", "{}") or "{}"))
        dropped.update(json.loads(t.attrs.get("nonfinite_dropped", "{}") or "{}"))
        haadf.update(json.loads(t.attrs.get("haadf", "{}") or "{}"))
    for name in DESCRIPTORS:
        out[name].attrs = dict(tables[0][name].attrs)
    out.attrs = {
        "source": source or "; ".join(dict.fromkeys(t.attrs.get("source", "") for t in tables)),
        "standardize": "none",
        "sources": json.dumps(sources),
        "nonfinite_dropped": json.dumps(dropped),
    }
    if haadf:
        out.attrs["haadf"] = json.dumps(haadf)
    return out
