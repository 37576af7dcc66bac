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

from causalcrystal.cells import CellTableError, make_cells

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

# "Sm_7_0" -> 7 % Sm. Not glued to letters/digits on the left so "xSm_7_0" does not count, but a
# prefix such as "2021_Sm_7_0" does.
_SM_NAME = re.compile(r"(?<![A-Za-z0-9])sm_(\d+)_(\d+)(?![0-9])", re.IGNORECASE)


def sm_fraction_from_name(name: str) -> float | None:
    """The Sm fraction encoded in a file name (``Sm_7_0`` -> 0.07), or ``None`` if it has none."""
    m = _SM_NAME.search(Path(name).name)
    return None if m is None else int(m.group(1)) / 100.0


def image_label(path: str | os.PathLike) -> str:
    """Default image label of a Sm-BFO file: its stem without ``_UCParameterization``."""
    stem = Path(path).stem
    if stem.lower().endswith(UC_SUFFIX.lower()):
        stem = stem[: -len(UC_SUFFIX)]
    return stem


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


def _per_cell(f: h5py.File, key: str, n: int | None, src: str) -> np.ndarray:
    """A per-cell scalar stored (N,), (N, 1) or (1, N), as a float64 vector."""
    arr = _dataset(f, key, src)
    ok_2d = arr.ndim == 2 and 1 in arr.shape
    if not (arr.ndim == 1 or ok_2d) or (n is not None and arr.size != n):
        want = "(N,), (N, 1) or (1, N)" if n is None else f"({n},), ({n}, 1) or (1, {n})"
        raise CellTableError(
            f"{src}: dataset {key!r} has shape {arr.shape}; a per-cell scalar must be {want}"
            + ("" if n is None else f" (N = {n} cells, taken from 'I5')")
            + ". Check that the file is a Sm-BFO *_UCParameterization.h5 file."
        )
    return _as_float(arr.reshape(-1), key, src)


def _two_components(f: h5py.File, key: str, n: int, src: str) -> tuple[np.ndarray, np.ndarray]:
    """Components 0 and 1 of a two-component per-cell array stored (2, N) or (N, 2).

    When N == 2 both layouts fit; the public (2, N) layout is assumed.
    """
    arr = _dataset(f, key, src)
    if arr.shape == (2, n):
        comps = arr
    elif arr.shape == (n, 2):
        comps = arr.T
    else:
        raise CellTableError(
            f"{src}: dataset {key!r} has shape {arr.shape}; expected (2, {n}) or ({n}, 2) "
            f"(two components per cell, N = {n} cells taken from 'I5'). Check the file is complete "
            "and not a different layout."
        )
    return _as_float(comps[0], key, src), _as_float(comps[1], key, src)


def _dataset(f: h5py.File, key: str, src: str) -> np.ndarray:
    if key not in f:
        raise CellTableError(
            f"{src}: dataset {key!r} is missing (keys found: {sorted(f.keys())}). A Sm-BFO file needs "
            f"{list(REQUIRED_KEYS)}; for other data build a CSV/Parquet table with the descriptor "
            "columns instead."
        )
    obj = f[key]
    if not isinstance(obj, h5py.Dataset):
        raise CellTableError(f"{src}: {key!r} is an HDF5 {type(obj).__name__}, not a dataset.")
    return np.asarray(obj[()])


def _as_float(arr: np.ndarray, key: str, src: str) -> np.ndarray:
    try:
        return np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CellTableError(
            f"{src}: dataset {key!r} has non-numeric dtype {arr.dtype}; it must hold numbers."
        ) from exc


def _grid_index(values: np.ndarray, which: str, src: str) -> np.ndarray:
    """Lattice indices from 'ab' as int64; they are stored as numbers that must be integers."""
    if not np.isfinite(values).all():
        raise CellTableError(
            f"{src}: dataset 'ab' ({which}) holds {int((~np.isfinite(values)).sum())} non-finite "
            "lattice indices; every cell needs an integer grid position."
        )
    rounded = np.rint(values)
    if np.abs(values - rounded).max(initial=0.0) > 1e-6:
        raise CellTableError(
            f"{src}: dataset 'ab' ({which}) holds non-integer lattice indices; 'ab' must be integer "
            "grid positions."
        )
    return rounded.astype(np.int64)


def _check_haadf(path: Path) -> None:
    """Open a companion HAADF file and check its metadata only (MainImage exists and is 2-D)."""
    try:
        with h5py.File(path, "r") as f:
            if HAADF_KEY not in f or not isinstance(f[HAADF_KEY], h5py.Dataset):
                raise CellTableError(
                    f"{path}: companion HAADF file has no dataset {HAADF_KEY!r} (keys found: "
                    f"{sorted(f.keys())}); repair it or move it out of the folder."
                )
            shape = f[HAADF_KEY].shape
    except OSError as exc:
        raise CellTableError(
            f"{path}: companion HAADF file cannot be opened as HDF5 ({exc}); repair it or move it out "
            "of the folder."
        ) from exc
    if len(shape) != 2:
        raise CellTableError(
            f"{path}: {HAADF_KEY!r} has shape {shape}; a HAADF image must be 2-D. Repair the file or "
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
    src = str(p.resolve())
    if xy_order not in XY_ORDERS:
        raise CellTableError(f"xy_order={xy_order!r} unknown; use one of {XY_ORDERS}.")
    if not p.is_file():
        raise CellTableError(f"{src}: no such file; check the path.")
    label = image if image is not None else image_label(p)

    try:
        f = h5py.File(p, "r")
    except OSError as exc:
        raise CellTableError(
            f"{src}: cannot open as HDF5 ({exc}). The file is corrupt or not HDF5; re-download or "
            "re-export it."
        ) from exc
    try:
        with f:
            i5 = _per_cell(f, "I5", None, src)
            n = i5.size
            i14 = sum(_per_cell(f, k, n, src) for k in ("I1", "I2", "I3", "I4"))
            alpha = _per_cell(f, "alpha", n, src)
            vol = _per_cell(f, "Vol", n, src)
            a0, a1 = _two_components(f, "a", n, src)
            b0, b1 = _two_components(f, "b", n, src)
            r, c = _two_components(f, "ab", n, src)
            px, py = _two_components(f, "Pxy", n, src)
            c0, c1 = _two_components(f, "xy_COM", n, src)
    except OSError as exc:  # a truncated file opens but fails when a dataset is read
        raise CellTableError(
            f"{src}: cannot read the datasets ({exc}). The file is corrupt or truncated; re-download it."
        ) from exc

    # The composition is settled after reading, so a corrupt file is reported as corrupt first.
    if isinstance(sm_fraction, Mapping):
        _, frac = lookup(sm_fraction, p, label)
    else:
        frac = sm_fraction
    if frac is None:
        frac = sm_fraction_from_name(p.name)
    if frac is None:
        raise CellTableError(
            f"{src}: cannot tell the Sm fraction from the file name (expected 'Sm_<x>_<k>...', x in %); "
            f"pass sm_fraction=0.07 (or a dict {{'{p.name}': 0.07}} for several files)."
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
        _check_haadf(companion)
        ds.attrs["haadf"] = json.dumps({label: str(companion.resolve())})
    return ds


def load_haadf(cells: xr.Dataset, image: str) -> np.ndarray:
    """Load the companion HAADF image of ``image`` (recorded in ``cells.attrs['haadf']``) for plotting."""
    known = json.loads(cells.attrs.get("haadf", "{}") or "{}")
    if image not in known:
        raise CellTableError(
            f"no HAADF image recorded for image {image!r} (images with one: {sorted(known)}). Put "
            f"'{image}{HAADF_SUFFIX}.h5' next to its {UC_SUFFIX}.h5 file and read again."
        )
    path = known[image]
    try:
        with h5py.File(path, "r") as f:
            if HAADF_KEY not in f:
                raise CellTableError(f"{path}: no dataset {HAADF_KEY!r} (keys found: {sorted(f.keys())}).")
            return np.asarray(f[HAADF_KEY][()])
    except OSError as exc:
        raise CellTableError(f"{path}: cannot read the HAADF image ({exc}); was the file moved?") from exc
