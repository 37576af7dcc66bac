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
import os
import unicodedata
import warnings
from collections.abc import Mapping

import numpy as np
import xarray as xr

from causalcrystal.errors import CausalCrystalError

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

#: Largest Sm fraction a reader accepts. Sm-BFO is studied at 0-0.2 and the concentration
#: model's MPB prior (``y0``) ends at 0.5; a larger value is almost always a percentage (1 -> 1 %).
MAX_SM_FRACTION = 0.5

#: An image's (row, col) bounding box may hold at most this many grid positions per cell (or
#: :data:`GRID_FLOOR` positions, whichever is larger); beyond that the indices are broken (one stray
#: index of 60000 in a 64-cell table) and tiling would allocate a grid for nothing.
GRID_SPARSITY = 50
GRID_FLOOR = 1_000_000

#: Finite descriptor values beyond this magnitude come from corrupt bytes, not from a microscope.
MAX_ABS_VALUE = 1e100

#: The JSON attrs of a cell table and the shape each must have (checked by :func:`validate`).
JSON_ATTRS: dict[str, str] = {
    "sources": "a JSON object {image: file}",
    "nonfinite_dropped": "a JSON object {image: {variable: count}}",
    "haadf": "a JSON object {image: file}",
    "ab_offset": "a JSON object {image: [row0, col0]}",
}


class CellTableError(CausalCrystalError, ValueError):
    """A cell table (or the input it was built from) breaks the data contract."""


class GridGapWarning(UserWarning):
    """An image's grid has whole rows or columns without cells: stray lattice indices beyond a gap,
    or holes inside the grid (cells lost upstream)."""


#: A gap of empty rows (columns) with fewer than this share of an image's cells beyond it is named.
STRAY_SHARE = 0.05


class NonFiniteWarning(UserWarning):
    """Cells with NaN/inf descriptors were dropped (the default non-finite policy)."""


def safe_text(value) -> str:
    """``value`` as a plain ``str`` that can always be printed and written (UTF-8).

    Numpy scalars become ``str`` (no ``np.str_('img0')`` in messages). Undecodable bytes of a
    file name (``surrogateescape``, e.g. a Latin-1 ``\\xe9`` on a UTF-8 system) are shown as
    ``\\xe9``; other lone surrogates as ``\\udcxx``.
    """
    text = os.fsdecode(value) if isinstance(value, (bytes, os.PathLike)) else str(value)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def display_label(value) -> str:
    """An image label for one line of text: :func:`safe_text` with control characters (newlines,
    tabs, escapes) shown as ``\\n``, ``\\x1b``... so a label cannot break a table or a terminal."""
    text = safe_text(value)
    if all(unicodedata.category(ch)[0] != "C" for ch in text):
        return text
    return "".join(ch if unicodedata.category(ch)[0] != "C" else repr(ch)[1:-1] for ch in text)


def quoted(value) -> str:
    """A label or value quoted for a message: ``'img0'``, never ``np.str_('img0')``."""
    return "'" + display_label(value) + "'"


def _where(source: str | None) -> str:
    return f"{safe_text(source)}: " if source else ""


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
            f"{src}: non-finite descriptor values ({detail}). Clean them upstream, or drop those cells (reported): "
            "--nonfinite drop (causalcrystal run, the default) / nonfinite='drop' (causalcrystal.read; "
            "nonfinite='keep' keeps them)."
        )
    good = np.ones(ds.sizes["cell"], dtype=bool)
    for name in DESCRIPTORS:
        good &= np.isfinite(ds[name].values)
    _refuse_lost_images(ds, good, src)
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
        f"({detail}). To refuse such input instead: --nonfinite raise (causalcrystal run), "
        "nonfinite='raise' (causalcrystal.read); nonfinite='keep' keeps them (causalcrystal.read only).",
        NonFiniteWarning,
        stacklevel=2,
    )
    return out


def excluded_images(ds: xr.Dataset) -> list[str]:
    """The image labels :func:`exclude_images` left out of ``ds`` (``attrs['excluded_images']``)."""
    return list(json.loads(ds.attrs.get("excluded_images", "[]") or "[]"))


def exclude_images(ds: xr.Dataset, labels, source: str | None = None) -> xr.Dataset:
    """The table without the cells of the images ``labels`` (image labels, as ``inspect`` lists
    them); ``attrs['excluded_images']`` (JSON list) records what was left out, so a run's
    ``cells.nc`` says so. Nothing else changes (``sources`` keeps every file read).

    Raises :class:`CellTableError` naming an unknown label (with the labels there are), or if no
    image would be left.
    """
    labels = [str(v) for v in labels]
    if not labels:
        return ds
    src = safe_text(source or ds.attrs.get("source") or "cell table")
    img = ds["image"].values.astype(str)
    have = list(dict.fromkeys(img.tolist()))
    unknown = [lab for lab in labels if lab not in have]
    if unknown:
        raise CellTableError(
            f"{src}: no image labelled {', '.join(quoted(v) for v in unknown)} to exclude; the images are "
            f"{', '.join(quoted(v) for v in have)} (`causalcrystal inspect` lists them).")
    keep = ~np.isin(img, labels)
    if not keep.any():
        raise CellTableError(f"{src}: excluding {', '.join(quoted(v) for v in labels)} leaves no image.")
    out = ds.isel(cell=keep)
    out.attrs = dict(ds.attrs)
    previous = excluded_images(ds)
    out.attrs["excluded_images"] = json.dumps(previous + [v for v in dict.fromkeys(labels) if v not in previous])
    return out


def _refuse_lost_images(ds: xr.Dataset, good: np.ndarray, src: str) -> None:
    """Dropping non-finite cells must never remove a whole image from a series: that is a failed
    export (a column written as NaN), not a few bad cells, and a series silently one image short
    gives a wrong concentration dependence."""
    img = ds["image"].values.astype(str)
    lost = [lab for lab in dict.fromkeys(img.tolist()) if not good[img == lab].any()]
    if not lost:
        return
    try:
        sources = json.loads(ds.attrs.get("sources", "{}") or "{}")
        sources = sources if isinstance(sources, dict) else {}
    except (ValueError, RecursionError):
        sources = {}
    details = []
    for lab in lost:
        m = img == lab
        whole = [v for v in DESCRIPTORS if not np.isfinite(ds[v].values[m]).any()]
        why = (f"column(s) {whole} non-finite in every cell" if whole
               else "every cell has at least one non-finite descriptor")
        where = f" (file {safe_text(sources[lab])})" if isinstance(sources.get(lab), str) else ""
        details.append(f"image {quoted(lab)}{where}: all {int(m.sum())} cells, {why}")
    raise CellTableError(
        f"{safe_text(src)}: nonfinite='drop' would remove whole image(s) from the series -- "
        + "; ".join(details)
        + ". A whole image is not dropped quietly: fix the export of that column, or leave the image "
        f"out of the inputs (--exclude-image {display_label(lost[0])}; read(..., exclude_images=[...])). `causalcrystal inspect` "
        "shows the table as it is."
    )


def _json_attrs(ds: xr.Dataset, src: str) -> None:
    """The JSON attrs the package writes must parse to the documented shape (a netCDF from
    elsewhere can hold anything: a list, 100000 nested brackets, code)."""
    for name, shape in JSON_ATTRS.items():
        if name not in ds.attrs:
            continue
        raw = ds.attrs[name]
        fix = (f"remove attribute {name!r} or rewrite it as {shape} (causalcrystal.io.write_netcdf "
               "writes it so).")
        if not isinstance(raw, str):
            raise CellTableError(
                f"{src}: attribute {name!r} is a {type(raw).__name__}, not JSON text; {fix}"
            )
        try:
            value = json.loads(raw or "{}")
        except RecursionError:
            raise CellTableError(f"{src}: attribute {name!r} is JSON nested too deeply to read; {fix}") from None
        except ValueError as exc:
            raise CellTableError(
                f"{src}: attribute {name!r} is not valid JSON ({exc}; starts {raw[:40]!r}); {fix}"
            ) from None
        if not isinstance(value, dict):
            raise CellTableError(
                f"{src}: attribute {name!r} holds a JSON {type(value).__name__}, expected {shape}; {fix}"
            )
        for key, item in value.items():
            if name in ("sources", "haadf"):
                ok = isinstance(item, str)
            elif name == "nonfinite_dropped":
                ok = isinstance(item, dict) and all(
                    isinstance(k, str) and isinstance(c, int) and not isinstance(c, bool) for k, c in item.items()
                )
            else:  # ab_offset
                ok = isinstance(item, list) and len(item) == 2 and all(
                    isinstance(v, int) and not isinstance(v, bool) for v in item
                )
            if not ok:
                raise CellTableError(
                    f"{src}: attribute {name!r} has entry {quoted(key)}: {str(item)[:60]}, expected {shape}; {fix}"
                )


def _largest_gap(values: np.ndarray, axis: str) -> str:
    """Where a sorted set of grid indices jumps furthest, for a message."""
    u = np.unique(values)
    if u.size < 2:
        return ""
    d = np.diff(u)
    k = int(np.argmax(d))
    beyond = int((values > u[k]).sum())
    side = min(beyond, values.size - beyond)
    return (f"{axis} indices jump from {int(u[k])} to {int(u[k + 1])} ({side} cell(s) on the far side of "
            "the jump)")


_GAPS_WARNED: set[tuple] = set()  # (image, axis, index below, index above, cells) warned about


def _check_grid(src: str, labels: np.ndarray, inverse: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> None:
    """Per image: the (row, col) bounding box must not be absurdly sparse (a stray index would make
    tiling allocate a grid proportional to it), and indices must step by 1 (pixel coordinates
    written as lattice indices step by the cell size in pixels)."""
    for k, lab in enumerate(labels):
        m = inverse == k
        r, c = rows[m], cols[m]
        n = int(m.sum())
        r_span = int(r.max()) - int(r.min()) + 1  # python ints: no int64 overflow
        c_span = int(c.max()) - int(c.min()) + 1
        if r_span * c_span > max(GRID_SPARSITY * n, GRID_FLOOR):
            gaps = [g for g in (_largest_gap(r, "row"), _largest_gap(c, "col")) if g]
            raise CellTableError(
                f"{src}: image {quoted(lab)} has {n} cells but its grid indices span {r_span} rows x "
                f"{c_span} cols ({r_span * c_span:,} positions, more than {GRID_SPARSITY} per cell); "
                + "; ".join(gaps)
                + ". Lattice indices of neighbouring cells differ by 1: correct or remove the stray "
                "indices (Sm-BFO: dataset 'ab'; tables: columns 'row', 'col')."
            )
        steps = []
        for axis, v in (("row", r), ("col", c)):
            u = np.unique(v)
            if u.size >= 3:
                steps.append((axis, int(np.gcd.reduce(np.diff(u))), u))
        if steps and all(g > 1 for _, g, _ in steps):
            shown = "; ".join(f"{axis} indices {', '.join(str(int(x)) for x in u[:3])}, ... all differ by "
                              f"multiples of {g}" for axis, g, u in steps)
            div = " and ".join(f"{axis} by {g}" for axis, g, _ in steps)
            raise CellTableError(
                f"{src}: image {quoted(lab)}: {shown}. These look like pixel coordinates, not lattice indices "
                "(neighbouring unit cells differ by 1), and tiles would hold almost no cells. Give the lattice "
                f"indices (here: divide {div}); Sm-BFO files: dataset 'ab'."
            )
        for axis, v in (("row", r), ("col", c)):
            u = np.unique(v)
            d = np.diff(u)
            holes = []
            for j in np.flatnonzero(d > 1):
                below = int((v <= u[j]).sum())
                few = min(below, n - below)
                if few > STRAY_SHARE * n:
                    holes.extend(range(int(u[j]) + 1, int(u[j + 1])))
                    continue
                # a few cells beyond a gap of empty rows or columns: a stray index, which silently
                # widens the grid and adds tiles (a 24 x 24 image read as 29 x 24)
                _warn_gap_once((str(lab), axis, int(u[j]), int(u[j + 1]), n),
                               f"{src}: image {quoted(lab)}: {axis} indices jump from {int(u[j])} to {int(u[j + 1])} "
                               f"({int(d[j]) - 1} empty {axis}s), with only {few} of {n} cells on one side: stray "
                               "lattice indices? They widen the grid and add tiles; correct or remove those cells.")
            if holes:
                # whole rows or columns without a cell inside the grid (a scan glitch, cells dropped
                # upstream): harmless to the per-tile SEM, but the tiles over them hold fewer cells
                # and the user should know the table is not the image's full lattice
                span = int(u[-1]) - int(u[0]) + 1
                shown = ", ".join(str(h) for h in holes[:6]) + (", ..." if len(holes) > 6 else "")
                _warn_gap_once((str(lab), axis, "holes", tuple(holes), n),
                               f"{src}: image {quoted(lab)}: {len(holes)} of the {span} {axis}s inside its grid have "
                               f"no cell ({axis}s {shown}): cells missing from the table (a scan glitch, or "
                               "dropped upstream)? Tiles over them hold fewer cells (tiles under min_cells are "
                               "left out); check the source if the lattice should be complete.")


def _warn_gap_once(key: tuple, message: str) -> None:
    """Warn once per image and gap per process, not at each of the ~6 validations of one run
    (Python's own once-per-location memory is reset by every catch_warnings)."""
    if key in _GAPS_WARNED:
        return
    _GAPS_WARNED.add(key)
    warnings.warn(message, GridGapWarning, stacklevel=4)


def check_sm_fraction_plausible(ds: xr.Dataset, source: str | None = None) -> xr.Dataset:
    """Refuse Sm fractions above :data:`MAX_SM_FRACTION` (readers call it on user input): ``1``
    meant as 1 % must not be analysed as pure SmFeO3. Returns ``ds`` unchanged."""
    src = safe_text(source or ds.attrs.get("source") or "cell table")
    frac = ds["sm_fraction"].values.astype(float)
    high = np.isfinite(frac) & (frac > MAX_SM_FRACTION) & (frac <= 1)
    if high.any():
        img = ds["image"].values.astype(str)
        labs = list(dict.fromkeys(img[high].tolist()))
        vals = sorted({float(v) for v in frac[high]})
        pct = ", ".join(f"{v:g} -> {v / 100:g}" for v in vals[:3])
        raise CellTableError(
            f"{src}: sm_fraction {vals[:3]} (image(s) {', '.join(quoted(x) for x in labs[:3])}) is above "
            f"{MAX_SM_FRACTION}: Sm-BFO is studied at fractions 0-0.2, so this is almost surely a "
            f"percentage. Sm fractions are 0-1: write 0.01 for 1 %, 0.07 for 7 % ({pct} if these are "
            "percentages)."
        )
    return ds


def validate(ds: xr.Dataset, source: str | None = None, *, allow_nonfinite: bool = False) -> xr.Dataset:
    """Check that ``ds`` satisfies the cell-table contract; return it unchanged.

    Raises :class:`CellTableError` naming the source, the variable and the fix. ``source``
    defaults to ``ds.attrs['source']``.
    """
    src = safe_text(source or (ds.attrs.get("source") if isinstance(ds, xr.Dataset) else None) or "cell table")
    if not isinstance(ds, xr.Dataset):
        raise CellTableError(f"{src}: expected an xarray.Dataset, got {type(ds).__name__}.")
    if "cell" not in ds.dims:
        raise CellTableError(
            f"{src}: no 'cell' dimension (dims are {dict(ds.sizes)}); a cell table has one row per "
            "unit cell along 'cell'. Build it with causalcrystal.cells.make_cells or causalcrystal.read."
        )
    if ds.sizes["cell"] == 0:
        raise CellTableError(
            f"{src}: the table has no cells. Check that the file holds data rows (or that the non-finite "
            "policy did not drop them all: read(..., nonfinite='keep') shows them)."
        )
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
        finite = np.isfinite(var.values)
        if not allow_nonfinite and not finite.all():
            n_bad = int((~finite).sum())
            raise CellTableError(
                f"{src}: {name!r} has {n_bad} non-finite values; apply "
                "causalcrystal.cells.apply_nonfinite_policy (read(..., nonfinite='drop')) first."
            )
        huge = finite & (np.abs(var.values) > MAX_ABS_VALUE)
        if huge.any():
            i = int(np.flatnonzero(huge)[0])
            where = f" in image {quoted(ds['image'].values[i])}" if "image" in ds.coords else ""
            raise CellTableError(
                f"{src}: {name!r} has {int(huge.sum())} value(s) of magnitude above {MAX_ABS_VALUE:g} (e.g. "
                f"{float(var.values[i]):.3g}{where}); "
                "no measurement is that large: the file is corrupt or the values are not numbers of this "
                "quantity. Re-export the file."
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
        out = ~(np.isfinite(frac) & (frac >= 0) & (frac <= 1))
        bad = sorted({float(v) for v in frac[out]}, key=lambda v: (not np.isfinite(v), v))[:3]
        labs = list(dict.fromkeys(ds["image"].values[out].astype(str).tolist()))[:3]
        raise CellTableError(
            f"{src}: sm_fraction values {bad} (image(s) {', '.join(quoted(x) for x in labs)}) outside "
            "[0, 1]; give the Sm *fraction* (7 % -> 0.07), not a percentage."
        )
    img = ds["image"].values.astype(str)
    labels, inverse = np.unique(img, return_inverse=True)
    for k, lab in enumerate(labels):
        f = frac[inverse == k]
        if np.ptp(f) > 0:
            raise CellTableError(
                f"{src}: image {quoted(lab)} has several sm_fraction values {np.unique(f).tolist()[:4]}; "
                "one image has one composition: give all its cells the same value."
            )
    # A unit cell may enter a likelihood once: (image, row, col) must be unique.
    key = np.stack([inverse, ds["row"].values, ds["col"].values], axis=1)
    uniq, counts = np.unique(key, axis=0, return_counts=True)
    if (counts > 1).any():
        k, r, c = uniq[counts > 1][0]
        raise CellTableError(
            f"{src}: image {quoted(labels[k])} has {int((counts > 1).sum())} duplicated grid positions "
            f"(e.g. row={r}, col={c}); each (image, row, col) must occur once. Check the 'ab'/'row,col' input "
            "(two exports of one image joined? remove the repeated cells, or give the images different labels)."
        )
    _check_grid(src, labels, inverse, ds["row"].values, ds["col"].values)
    _json_attrs(ds, src)
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
                    f"image label {quoted(lab)} occurs in both {safe_text(seen[lab])} and "
                    f"{safe_text(t.attrs.get('source'))}; "
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
