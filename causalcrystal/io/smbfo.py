"""Reader for the public Sm-doped BiFeO3 (Sm-BFO) unit-cell parameterisation files.

Layout (one HDF5 file per image, named ``Sm_<x>_<k>_UCParameterization.h5``, datasets at the
root):

``I1, I2, I3, I4``
    intensities of the four A-site corner columns (``I14 = I1 + I2 + I3 + I4``)
``I5``
    intensity of the B-site centre column
``a, b``
    per-cell lattice *vectors* (two components); the descriptors ``a``, ``b`` are their lengths
``ab``
    integer lattice indices (component 0 -> ``row``, component 1 -> ``col``)
``alpha, Vol``
    per-cell scalars, used as stored
``Pxy``
    polarisation (component 0 -> ``Px``, component 1 -> ``Py``)
``xy_COM``
    cell centre (component order set by ``xy_order``)

The public loading code reads two-component arrays as stored ``(2, N)`` (``f['Pxy'][0]``,
``f['ab'][()].T[:, 0]``); files written by other tools may hold ``(N, 2)``. Both are accepted.
A companion ``Sm_<x>_<k>_HAADF.h5`` (dataset ``MainImage``) next to the file is recorded for
plotting (:func:`load_haadf`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path

import h5py
import numpy as np
import xarray as xr

from causalcrystal.cells import MAX_SM_FRACTION, CellTableError, make_cells, quoted, safe_text

#: Suffix of the cell-parameter files; the image label is the stem without it.
UC_SUFFIX = "_UCParameterization"
#: Suffix of the companion HAADF image files.
HAADF_SUFFIX = "_HAADF"
#: Dataset holding the HAADF image in the companion file.
HAADF_KEY = "MainImage"

SCALAR_KEYS = ("I1", "I2", "I3", "I4", "I5", "alpha", "Vol")
VECTOR_KEYS = ("a", "b", "ab", "Pxy", "xy_COM")
REQUIRED_KEYS = SCALAR_KEYS + VECTOR_KEYS
XY_ORDERS = ("xy", "yx")

#: Largest |lattice index| accepted in 'ab' (no image has a billion cells along one side).
MAX_INDEX = 1_000_000_000
#: The datasets a file declares may expand to at most this many times the file's size in memory
#: (or :data:`EXPANSION_FLOOR` bytes, whichever is larger): an 80 KB file declaring 4e9 values is
#: refused before anything is allocated. Real files store their data, at most lightly compressed.
MAX_EXPANSION = 100
EXPANSION_FLOOR = 256 * 2**20

# "Sm_7_0" -> 7 % Sm. Not glued to letters/digits on the left so "xSm_7_0" does not count, but a
# prefix such as "2021_Sm_7_0" does.
_SM_NAME = re.compile(r"(?<![A-Za-z0-9])sm_(\d+)_(\d+)(?![0-9])", re.IGNORECASE)


def sm_fraction_from_name(name: str) -> float | None:
    """The Sm fraction encoded in a file name (``Sm_7_0`` -> 0.07), or ``None`` if it has none
    (or names several different ones, e.g. ``run_Sm_7_0_from_Sm_20_1``: see :func:`_name_fractions`)."""
    found = _name_fractions(name)
    return found[0][1] if len(found) == 1 else None


def _name_fractions(name) -> list[tuple[str, float]]:
    """Every distinct ``Sm_<x>_<k>`` pattern of a file name with its fraction."""
    out: dict[float, str] = {}
    for m in _SM_NAME.finditer(Path(name).name):
        out.setdefault(int(m.group(1)) / 100.0, m.group(0))
    return [(text, frac) for frac, text in out.items()]


def image_label(path: str | os.PathLike) -> str:
    """Default image label of a Sm-BFO file: its stem without ``_UCParameterization``.

    A byte of the name that is not UTF-8 (a Latin-1 ``\\xe9`` from an old share) appears as the
    text ``\\xe9``, so the label can be printed and written to netCDF.
    """
    stem = Path(path).stem
    if stem.lower().endswith(UC_SUFFIX.lower()):
        stem = stem[: -len(UC_SUFFIX)]
    return safe_text(stem)


def haadf_companion(path: str | os.PathLike) -> Path:
    """Where the companion HAADF file of a cell-parameter file would be (it may not exist)."""
    p = Path(path)
    return p.with_name(image_label(p) + HAADF_SUFFIX + ".h5")


def lookup(mapping: Mapping, path: str | os.PathLike, label: str):
    """Find ``path``'s entry in a user mapping keyed by path (as given or resolved), file name,
    stem, default image label or ``label``. Returns ``(key, value)`` or ``(None, None)``."""
    p = Path(path)
    candidates = [os.fspath(path), str(p), str(p.resolve()), p.name, p.stem, image_label(p), label]
    for key in mapping:
        k = os.fspath(key) if isinstance(key, os.PathLike) else key
        if not isinstance(k, str):
            continue
        if k in candidates:
            return key, mapping[key]
        # A key written as another spelling of the same path (relative vs absolute) still counts.
        if ("/" in k or os.sep in k) and Path(k).resolve() == p.resolve():
            return key, mapping[key]
    return None, None


def _scalar_counts(shape: tuple) -> set[int]:
    """Cell counts a per-cell scalar dataset of this shape could hold: (N,), (N, 1) or (1, N)."""
    if len(shape) == 1:
        return {shape[0]}
    if len(shape) == 2 and 1 in shape:
        return {shape[0] * shape[1]}
    return set()


def _vector_counts(shape: tuple) -> set[int]:
    """Cell counts a two-component dataset of this shape could hold: (2, N) or (N, 2)."""
    if len(shape) != 2:
        return set()
    return {m for m, other in (shape, shape[::-1]) if other == 2}


def _dataset(f: h5py.File, key: str, src: str) -> h5py.Dataset:
    """The dataset object (nothing read yet)."""
    if key not in f:
        raise CellTableError(
            f"{src}: dataset {key!r} is missing (keys found: {sorted(f.keys())}). A Sm-BFO file needs "
            f"{list(REQUIRED_KEYS)}; for other data build a CSV/Parquet table with the descriptor "
            "columns instead."
        )
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise CellTableError(
            f"{src}: {key!r} is an HDF5 {type(obj).__name__}, not a dataset. A Sm-BFO file has its per-cell "
            f"datasets {list(REQUIRED_KEYS)} at the root; check that this is such a file, or re-export it."
        )
    return obj


def _declared(obj: h5py.Dataset) -> str:
    size = int(np.prod(obj.shape, dtype=object)) if obj.shape else 1
    nbytes = size * obj.dtype.itemsize
    return f"{size:,} values, {nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{size:,} values"


def _cell_count(objs: dict[str, h5py.Dataset], path: Path, src: str) -> int:
    """The number of cells N, decided from the *declared* shapes of all datasets before any is read.

    N is the count most datasets agree on ('I5' breaks ties); a dataset that does not fit it is
    named. Then the declared sizes must fit the file's size (see :data:`MAX_EXPANSION`).
    """
    counts = {k: (_vector_counts(o.shape) if k in VECTOR_KEYS else _scalar_counts(o.shape)) for k, o in objs.items()}
    votes: dict[int, int] = {}
    for cand in counts.values():
        for m in cand:
            votes[m] = votes.get(m, 0) + 1
    if not votes:
        raise CellTableError(
            f"{src}: no dataset has a per-cell shape (shapes: "
            f"{ {k: o.shape for k, o in objs.items()} }). Check that the file is a Sm-BFO "
            "*_UCParameterization.h5 file."
        )
    best = max(votes.values())
    tied = [m for m, v in votes.items() if v == best]
    n = next((m for m in counts["I5"] if m in tied), min(tied))
    for key, obj in objs.items():
        if n in counts[key]:
            continue
        if key in VECTOR_KEYS:
            raise CellTableError(
                f"{src}: dataset {key!r} has shape {obj.shape} ({_declared(obj)}); expected (2, {n}) or "
                f"({n}, 2) (two components per cell, N = {n} cells as declared by most datasets"
                f"{' and I5' if n in counts['I5'] else ''}). Nothing was read. Check the file is complete and "
                "not a different layout; re-export it."
            )
        raise CellTableError(
            f"{src}: dataset {key!r} has shape {obj.shape} ({_declared(obj)}); a per-cell scalar must be "
            f"({n},), ({n}, 1) or (1, {n}) (N = {n} cells as declared by most datasets"
            f"{' and I5' if n in counts['I5'] else ''}). Nothing was read. Check that the file is a "
            "complete Sm-BFO *_UCParameterization.h5 file; re-export it."
        )
    declared = sum(int(np.prod(o.shape, dtype=object)) * o.dtype.itemsize for o in objs.values())
    size = path.stat().st_size
    if declared > max(MAX_EXPANSION * size, EXPANSION_FLOOR):
        big = max(objs, key=lambda k: int(np.prod(objs[k].shape, dtype=object)) * objs[k].dtype.itemsize)
        raise CellTableError(
            f"{src}: the datasets declare {n:,} cells ({declared / 2**30:.1f} GiB in memory, e.g. dataset {big!r} "
            f"shape {objs[big].shape}) but the file is only {size:,} bytes: the data cannot be in it (damaged "
            "file, or datasets created with a wrong shape and never written). Nothing was read; re-export "
            "the file."
        )
    if n == 2:
        square = [k for k in VECTOR_KEYS if objs[k].shape == (2, 2)]
        if square:
            raise CellTableError(
                f"{src}: the file holds 2 cells, so its 2 x 2 datasets {square} can be read as (2, N) (one "
                "row per component, the public layout) or as (N, 2) (one row per cell), and nothing in the "
                "file says which. A 2-cell image cannot be tiled or analysed anyway: leave it out of the "
                "inputs, or write its cells as a CSV table (one row per cell, see causalcrystal.io.write_table)."
            )
    return n


def _per_cell(obj: h5py.Dataset, key: str, src: str) -> np.ndarray:
    """A per-cell scalar stored (N,), (N, 1) or (1, N) (shape checked by :func:`_cell_count`)."""
    return _as_float(np.asarray(obj[()]), key, src).reshape(-1)


def _two_components(obj: h5py.Dataset, key: str, n: int, src: str) -> tuple[np.ndarray, np.ndarray]:
    """Components 0 and 1 of a two-component per-cell array stored (2, N) or (N, 2) (N != 2 or
    shape checked by :func:`_cell_count`)."""
    arr = _as_float(np.asarray(obj[()]), key, src)
    comps = arr if arr.shape == (2, n) else arr.T
    return comps[0], comps[1]


def _as_float(arr: np.ndarray, key: str, src: str) -> np.ndarray:
    if arr.dtype.kind == "c":
        raise CellTableError(
            f"{src}: dataset {key!r} holds complex numbers (dtype {arr.dtype}); descriptors are real. "
            "Store the real values (or the magnitudes) and re-export the file."
        )
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CellTableError(
            f"{src}: dataset {key!r} has non-numeric dtype {arr.dtype}; it must hold numbers. Re-export the "
            "file with numeric datasets."
        ) from exc


def _grid_index(values: np.ndarray, which: str, src: str) -> np.ndarray:
    """Lattice indices from 'ab' as int64; they are stored as numbers that must be integers."""
    if not np.isfinite(values).all():
        raise CellTableError(
            f"{src}: dataset 'ab' ({which}) holds {int((~np.isfinite(values)).sum())} non-finite "
            "lattice indices; every cell needs an integer grid position."
        )
    if values.size and np.abs(values).max() > MAX_INDEX:
        i = int(np.argmax(np.abs(values)))
        raise CellTableError(
            f"{src}: dataset 'ab' ({which}) holds lattice index {values[i]:g} (cell {i}); lattice indices "
            f"count unit cells and stay far below {MAX_INDEX:g}. The 'ab' dataset is damaged; re-export it."
        )
    rounded = np.rint(values)
    off = np.abs(values - rounded) > 1e-6
    if off.any():
        i = int(np.flatnonzero(off)[0])
        raise CellTableError(
            f"{src}: dataset 'ab' ({which}) holds {int(off.sum())} non-integer lattice indices (e.g. {values[i]:g} "
            f"for cell {i}); 'ab' must be integer grid positions (neighbouring cells differ by 1). Re-export "
            "the file."
        )
    return rounded.astype(np.int64)


def _check_haadf(path: Path) -> None:
    """Open a companion HAADF file and check its metadata only (MainImage exists and is 2-D)."""
    where = safe_text(path)
    try:
        with h5py.File(path, "r") as f:
            if HAADF_KEY not in f or not isinstance(f[HAADF_KEY], h5py.Dataset):
                raise CellTableError(
                    f"{where}: companion HAADF file has no dataset {HAADF_KEY!r} (keys found: "
                    f"{sorted(f.keys())}); repair it or move it out of the folder."
                )
            shape = f[HAADF_KEY].shape
    except OSError as exc:
        raise CellTableError(
            f"{where}: companion HAADF file cannot be opened as HDF5 ({exc}); repair it or move it out "
            "of the folder."
        ) from exc
    if len(shape) != 2:
        raise CellTableError(
            f"{where}: {HAADF_KEY!r} has shape {shape}; a HAADF image must be 2-D. Repair the file or "
            "move it out of the folder."
        )


def read_smbfo(
    path: str | os.PathLike,
    *,
    sm_fraction: float | Mapping | None = None,
    xy_order: str = "xy",
    image: str | None = None,
) -> xr.Dataset:
    """Read one Sm-BFO ``*_UCParameterization.h5`` file into a cell table (not yet validated).

    ``sm_fraction`` overrides the file-name rule (``Sm_<x>_<k>`` -> x/100): a float, or a mapping
    ``{path, file name or image label: fraction}``. ``image`` overrides the label (default: the
    file stem without ``_UCParameterization``). ``xy_order`` says which ``xy_COM`` component is x:
    ``"xy"`` (component 0 is x, as in the public loading code) or ``"yx"``.

    Two-component arrays may be stored (2, N) or (N, 2), N taken from ``I5``; if N == 2 the public
    (2, N) layout is assumed. ``row``/``col`` are the ``ab`` indices shifted to start at 0; the
    original minima are in ``attrs['ab_offset']`` (JSON ``{image: [row0, col0]}``).

    Callers apply :func:`causalcrystal.cells.apply_nonfinite_policy` and
    :func:`causalcrystal.cells.validate` (``causalcrystal.io.read`` does both).
    """
    p = Path(path)
    src = safe_text(p.resolve())
    if xy_order not in XY_ORDERS:
        raise CellTableError(f"xy_order={xy_order!r} unknown; use one of {XY_ORDERS}.")
    if not p.is_file():
        raise CellTableError(f"{src}: no such file; check the path.")
    label = safe_text(image) if image is not None else image_label(p)

    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise CellTableError(
            f"{src}: cannot open as HDF5 ({exc}). The file is corrupt or not HDF5; re-download or "
            "re-export it."
        ) from exc
    try:
        with f:
            # Shapes first (metadata only): nothing is allocated before they agree and fit the file.
            objs = {key: _dataset(f, key, src) for key in REQUIRED_KEYS}
            n = _cell_count(objs, p, src)
            i5 = _per_cell(objs["I5"], "I5", src)
            i14 = sum(_per_cell(objs[k], k, src) for k in ("I1", "I2", "I3", "I4"))
            alpha = _per_cell(objs["alpha"], "alpha", src)
            vol = _per_cell(objs["Vol"], "Vol", src)
            a0, a1 = _two_components(objs["a"], "a", n, src)
            b0, b1 = _two_components(objs["b"], "b", n, src)
            r, c = _two_components(objs["ab"], "ab", n, src)
            px, py = _two_components(objs["Pxy"], "Pxy", n, src)
            c0, c1 = _two_components(objs["xy_COM"], "xy_COM", n, src)
    except OSError as exc:  # a truncated file opens but fails when a dataset is read
        raise CellTableError(
            f"{src}: cannot read the datasets ({exc}). The file is corrupt or truncated; re-download it."
        ) from exc

    # The composition is settled after reading, so a corrupt file is reported as corrupt first.
    if isinstance(sm_fraction, Mapping):
        _, frac = lookup(sm_fraction, p, label)
    else:
        frac = sm_fraction
    if n == 0:
        raise CellTableError(
            f"{src}: the datasets hold 0 cells (e.g. 'I5' has shape {objs['I5'].shape}); the file has no data. "
            "Re-export it, or leave it out of the inputs."
        )
    if frac is None:
        found = _name_fractions(p.name)
        name = safe_text(p.name)
        fix = (
            f"Rename the file to the public pattern, e.g. Sm_7_0_UCParameterization.h5 for 7 % Sm (works for "
            f"`causalcrystal` commands and Python), or in Python pass read(..., sm_fraction=0.07) (a dict "
            f"{{'{name}': 0.07}} for several files), or convert the data to a CSV/Parquet table with an "
            "sm_fraction column."
        )
        if len(found) > 1:
            raise CellTableError(
                f"{src}: the file name holds several Sm compositions ({', '.join(t for t, _ in found)}), so the "
                f"Sm fraction is ambiguous. {fix}"
            )
        if not found:
            raise CellTableError(
                f"{src}: cannot tell the Sm fraction from the file name (expected 'Sm_<x>_<k>...', x the Sm "
                f"content in %, e.g. Sm_7_0 for 0.07). {fix}"
            )
        frac = found[0][1]
        if frac > MAX_SM_FRACTION:
            raise CellTableError(
                f"{src}: the file name says {found[0][0]}, i.e. {frac * 100:g} % Sm (fraction {frac:g}), above the "
                f"{MAX_SM_FRACTION:g} a Sm-BFO image can plausibly have (the name gives the Sm content in %: "
                f"Sm_7_0 is 0.07). {fix}"
            )

    row = _grid_index(r, "component 0 -> row", src)
    col = _grid_index(c, "component 1 -> col", src)
    r0 = int(row.min()) if n else 0
    c0_ = int(col.min()) if n else 0
    x, y = (c0, c1) if xy_order == "xy" else (c1, c0)

    finite_alpha = alpha[np.isfinite(alpha)]
    # Public files do not say; angles are degrees unless every value fits in radians.
    alpha_units = "deg" if finite_alpha.size == 0 or np.median(finite_alpha) > 2 * np.pi else "rad"

    ds = make_cells(
        {
            "I14": i14,
            "I5": i5,
            "a": np.hypot(a0, a1),
            "b": np.hypot(b0, b1),
            "alpha": alpha,
            "Vol": vol,
            "Px": px,
            "Py": py,
        },
        image=label,
        sm_fraction=float(frac),
        row=row - r0,
        col=col - c0_,
        x=x,
        y=y,
        units={"alpha": alpha_units, "Vol": "px^2"},
        source=src,
        sources={label: src},
    )
    for name in ("x", "y"):
        ds[name].attrs["units"] = "px"
    ds.attrs["ab_offset"] = json.dumps({label: [r0, c0_]})
    ds.attrs["xy_order"] = xy_order

    companion = haadf_companion(p)
    if companion.is_file():
        _check_haadf(companion.resolve())
        ds.attrs["haadf"] = json.dumps({label: str(companion.resolve())})
    return ds


def load_haadf(cells: xr.Dataset, image: str) -> np.ndarray:
    """Load the companion HAADF image of ``image`` (recorded in ``cells.attrs['haadf']``) for plotting."""
    known = json.loads(cells.attrs.get("haadf", "{}") or "{}")
    if image not in known:
        raise CellTableError(
            f"no HAADF image recorded for image {quoted(image)} (images with one: {sorted(known)}). Put "
            f"'{safe_text(image)}{HAADF_SUFFIX}.h5' next to its {UC_SUFFIX}.h5 file and read again."
        )
    path = known[image]
    try:
        with h5py.File(path, "r") as f:
            if HAADF_KEY not in f:
                raise CellTableError(
                    f"{safe_text(path)}: no dataset {HAADF_KEY!r} (keys found: {sorted(f.keys())})."
                )
            return np.asarray(f[HAADF_KEY][()])
    except OSError as exc:
        raise CellTableError(
            f"{safe_text(path)}: cannot read the HAADF image ({exc}); was the file moved?"
        ) from exc
