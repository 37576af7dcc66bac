"""CSV and Parquet cell tables: one row per unit cell, one column per descriptor.

Columns: ``image, sm_fraction, row, col, I14, I5, a, b, alpha, Vol, Px, Py`` and optionally
``x, y`` (cell centre). Other columns are ignored. The descriptors' units travel with the table:
a CSV written here starts with one comment line ``# causalcrystal units: {"a": "angstrom", ...}``
(JSON), a Parquet file keeps them in its metadata (``df.attrs["units"]``); a table without them
gets the defaults of :data:`causalcrystal.cells.DEFAULT_UNITS` (pixels: the public files' unit).
Other attrs are not kept (use netCDF for those).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

from causalcrystal.cells import DESCRIPTORS, CellTableError, make_cells, safe_text

REQUIRED_COLUMNS: tuple[str, ...] = ("image", "sm_fraction", "row", "col") + DESCRIPTORS
#: First line of a CSV written by :func:`write_table`: the descriptors' units as JSON.
UNITS_LINE = "# causalcrystal units: "
OPTIONAL_COLUMNS: tuple[str, ...] = ("x", "y")
TABLE_SUFFIXES = (".csv", ".parquet")
#: Grid indices beyond this are not exact in float64 (CSV numbers are parsed as floats).
MAX_EXACT_INDEX = 2**53


def _show(value) -> str:
    """A cell value for a message: strings quoted, numbers plain (never ``np.float64(1.5)``)."""
    if isinstance(value, (str, bytes)):
        return repr(safe_text(value))
    if isinstance(value, (np.generic, int, float)):
        return str(value.item() if isinstance(value, np.generic) else value)
    return safe_text(repr(value))[:80]


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in TABLE_SUFFIXES:
        raise CellTableError(
            f"{safe_text(path)}: suffix {safe_text(path.suffix)!r} is not a table format; use {TABLE_SUFFIXES}."
        )
    return suffix[1:]


def _where_row(kind: str, i: int) -> str:
    # Users open CSVs in editors, so also give the line number (header is line 1).
    return f"row {i} (0-based; line {i + 2} of the file)" if kind == "csv" else f"row {i} (0-based)"


def _numeric(df: pd.DataFrame, column: str, kind: str, src: str) -> np.ndarray:
    """A column as float64; a value that is present but not a number is an error, not NaN."""
    raw = df[column]
    if raw.dtype == object or pd.api.types.is_string_dtype(raw.dtype):
        # A cell holding only spaces is blank (= NaN), as an empty cell is.
        raw = raw.mask(raw.astype(str).str.strip().eq("") & raw.notna())
    values = pd.to_numeric(raw, errors="coerce")
    bad = values.isna().to_numpy() & raw.notna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        hint = ""
        if column == "sm_fraction" and str(raw.iloc[i]).strip().endswith("%"):
            hint = " Sm fractions are numbers 0-1: write 0.07 for 7 %, not '7%'."
        raise CellTableError(
            f"{src}: column {column!r} has a non-numeric value {_show(raw.iloc[i])} at {_where_row(kind, i)} "
            f"({int(bad.sum())} such values in total). Fix or blank those entries (blank = NaN).{hint}"
        )
    return values.to_numpy(dtype=np.float64, na_value=np.nan)


def _integer(df: pd.DataFrame, column: str, kind: str, src: str) -> np.ndarray:
    values = _numeric(df, column, kind, src)
    bad = ~np.isfinite(values) | (values != np.rint(values))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise CellTableError(
            f"{src}: column {column!r} must hold integer grid indices; {_where_row(kind, i)} has "
            f"{_show(df[column].iloc[i])}. Give the lattice index of each cell (neighbours differ by 1)."
        )
    huge = np.abs(values) >= MAX_EXACT_INDEX
    if huge.any():
        i = int(np.flatnonzero(huge)[0])
        raise CellTableError(
            f"{src}: column {column!r} has grid index {_show(df[column].iloc[i])} at {_where_row(kind, i)}; "
            f"indices beyond 2^53 cannot be held exactly (neighbouring cells would collide) and no image has "
            "that many cells. Give the lattice index of each cell (e.g. counted from 0)."
        )
    return values.astype(np.int64)


def read_table(path: str | os.PathLike) -> xr.Dataset:
    """Read a CSV or Parquet cell table into a cell table (not yet validated).

    Callers apply :func:`causalcrystal.cells.apply_nonfinite_policy` and
    :func:`causalcrystal.cells.validate` (``causalcrystal.io.read`` does both).
    """
    p = Path(path)
    src = safe_text(p.resolve())
    kind = _kind(p)
    if not p.is_file():
        raise CellTableError(f"{src}: no such file; check the path.")
    units, skip = None, 0
    try:
        if kind == "csv":
            with open(p, "rb") as f:
                first = f.readline(4096).decode("utf-8", "replace")
            if first.startswith(UNITS_LINE):
                units, skip = _parse_units(first[len(UNITS_LINE):], src, "its first line"), 1
            # Image labels such as "7" or "010" must stay strings.
            df = pd.read_csv(p, dtype={"image": str}, skiprows=skip)
        else:
            df = pd.read_parquet(p)
            if "units" in df.attrs:
                units = _parse_units(json.dumps(df.attrs["units"]) if not isinstance(df.attrs["units"], str)
                                     else df.attrs["units"], src, "its metadata")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CellTableError(
            f"{src}: cannot read as {kind.upper()} ({type(exc).__name__}: {exc}). The file is corrupt or "
            f"not {kind.upper()}; re-export it."
        ) from exc

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        have = [safe_text(c) for c in df.columns]
        hint = ""
        if len(have) == 1 and any(sep in have[0] for sep in (";", "\t", "|")):
            sep = next(sep for sep in (";", "\t", "|") if sep in have[0])
            hint = (f" The header looks separated by {sep!r}, not commas: save the file as comma-separated "
                    "CSV (or convert it to Parquet).")
        else:
            folded = {h.strip().lower(): h for h in have}
            near = {c: folded[c.lower()] for c in missing if c.lower() in folded}
            if near:
                renames = ", ".join(f"{v!r} -> {k!r}" for k, v in near.items())
                hint = f" Column names are case- and space-sensitive: rename {renames}."
        shown = have if len(have) <= 30 else have[:30] + [f"... {len(have) - 30} more"]
        raise CellTableError(
            f"{src}: missing column(s) {missing}; the file has {shown}. A cell table "
            f"needs {list(REQUIRED_COLUMNS)} (optional {list(OPTIONAL_COLUMNS)}).{hint}"
        )
    if len(df) == 0:
        raise CellTableError(
            f"{src}: the table has a header but no data rows; export the cells (one row per unit cell)."
        )
    if kind == "csv" and df["image"].isna().any():
        # pandas reads the labels "NA", "None", "null", "nan" as missing; an image may be called that.
        try:
            labels = pd.read_csv(p, usecols=["image"], dtype=str, keep_default_na=False, skiprows=skip)["image"]
            if len(labels) == len(df):
                df["image"] = labels.where(labels.str.strip() != "", None).to_numpy(dtype=object)
        except (OSError, ValueError, pd.errors.ParserError):
            pass
    if df["image"].isna().any():
        i = int(np.flatnonzero(df["image"].isna().to_numpy())[0])
        raise CellTableError(f"{src}: column 'image' is empty at {_where_row(kind, i)}; label every cell.")

    columns = {name: _numeric(df, name, kind, src) for name in DESCRIPTORS}
    xy = {c: (_numeric(df, c, kind, src) if c in df.columns else None) for c in OPTIONAL_COLUMNS}
    return make_cells(
        columns,
        image=df["image"].astype(str).to_numpy(dtype=object),
        sm_fraction=_numeric(df, "sm_fraction", kind, src),
        row=_integer(df, "row", kind, src),
        col=_integer(df, "col", kind, src),
        x=xy["x"],
        y=xy["y"],
        units=units,
        source=src,
    )


def _parse_units(text: str, src: str, where: str) -> dict:
    """The units JSON of a table, checked: descriptor names to unit strings."""
    try:
        units = json.loads(text)
    except ValueError as err:
        raise CellTableError(f"{src}: the units in {where} are not JSON ({err}); fix or delete that line "
                             f"(it reads {UNITS_LINE}{{\"a\": \"angstrom\", ...}}).") from None
    if not isinstance(units, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in units.items()):
        raise CellTableError(f"{src}: the units in {where} must map descriptor names to unit strings, e.g. "
                             '{"a": "angstrom", "alpha": "deg"}.')
    unknown = sorted(set(units) - set(DESCRIPTORS))
    if unknown:
        raise CellTableError(f"{src}: the units in {where} name {unknown}, which are not descriptors "
                             f"({list(DESCRIPTORS)}).")
    return units


def to_frame(ds: xr.Dataset) -> pd.DataFrame:
    """The cell table as a flat DataFrame in the CSV/Parquet column order."""
    data = {"image": ds["image"].values.astype(str)}
    for name in ("sm_fraction", "row", "col") + DESCRIPTORS + OPTIONAL_COLUMNS:
        data[name] = ds[name].values
    return pd.DataFrame(data)


def write_table(ds: xr.Dataset, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a cell table as CSV or Parquet (by suffix); refuses to replace a file unless
    ``overwrite=True``. The descriptors' units are kept (see the module docstring); other attrs are
    not (use netCDF for those)."""
    p = Path(path)
    kind = _kind(p)
    if p.exists() and not overwrite:
        raise CellTableError(f"{safe_text(p)}: file exists; pass overwrite=True to replace it.")
    p.parent.mkdir(parents=True, exist_ok=True)
    df = to_frame(ds)
    units = {v: str(ds[v].attrs["units"]) for v in DESCRIPTORS if "units" in ds[v].attrs}
    tmp = p.with_name(f".{p.name}.tmp")
    # Write next to the target and rename, so a failed write never leaves a half file at `path`.
    try:
        if kind == "csv":
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(UNITS_LINE + json.dumps(units) + "\n")  # a table in angstrom reads back in angstrom
                df.to_csv(f, index=False)
        else:
            df.attrs["units"] = units
            df.to_parquet(tmp, index=False)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)
    return p
