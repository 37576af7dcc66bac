"""Reading and writing cell tables.

:func:`read` is the one entry point: give it a file, a folder or a list of them and it returns
a validated cell table (see :mod:`causalcrystal.cells`). Formats:

``*_UCParameterization.h5`` / ``.hdf5``
    the public Sm-BFO files (:mod:`causalcrystal.io.smbfo`)
``.csv`` / ``.parquet``
    flat tables with one column per descriptor (:mod:`causalcrystal.io.table`)
``.nc``
    the project's own netCDF (:mod:`causalcrystal.io.netcdf`)

Nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import xarray as xr

from causalcrystal import cells
from causalcrystal.cells import CellTableError, safe_text
from causalcrystal.io.netcdf import read_netcdf, write_netcdf
from causalcrystal.io.smbfo import HAADF_SUFFIX, image_label, load_haadf, lookup, read_smbfo, sm_fraction_from_name
from causalcrystal.io.table import read_table, write_table

__all__ = [
    "read",
    "read_smbfo",
    "read_table",
    "read_netcdf",
    "write_netcdf",
    "write_table",
    "load_haadf",
    "sm_fraction_from_name",
]

HDF5_SUFFIXES = (".h5", ".hdf5")
TABLE_SUFFIXES = (".csv", ".parquet")
NETCDF_SUFFIXES = (".nc",)
SUPPORTED = HDF5_SUFFIXES + TABLE_SUFFIXES + NETCDF_SUFFIXES
_UC_FILE = re.compile(r"_UCParameterization\.(h5|hdf5)$", re.IGNORECASE)

PathLike = str | os.PathLike


def _names(paths: list[Path], limit: int = 6) -> str:
    shown = [safe_text(p.name) for p in paths[:limit]]
    return str(shown) + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def _folder_files(folder: Path) -> list[Path]:
    """The cell files of a folder: its Sm-BFO files or its CSV/Parquet/netCDF files, never a
    silent choice between them.

    A folder that mixes the two kinds, or holds ``.h5`` files that are neither
    ``*_UCParameterization.h5`` nor their ``*_HAADF.h5`` companions, is refused: one kind would be
    left out without a word (a series one image short gives a wrong result, not an error).
    """
    where = safe_text(folder.resolve())
    try:
        entries = sorted(p for p in folder.iterdir() if p.is_file())
        subdirs = sorted(p for p in folder.iterdir() if p.is_dir())
    except OSError as exc:
        raise CellTableError(f"{where}: cannot list the folder ({exc}); check its permissions.") from exc
    uc = [p for p in entries if _UC_FILE.search(p.name)]
    tables = [p for p in entries if p.suffix.lower() in TABLE_SUFFIXES + NETCDF_SUFFIXES]
    other_h5 = [
        p for p in entries
        if p.suffix.lower() in HDF5_SUFFIXES and not _UC_FILE.search(p.name)
        and not p.stem.lower().endswith(HAADF_SUFFIX.lower())
    ]
    how = (f"Pass the files you mean explicitly (e.g. `causalcrystal inspect {where}/*_UCParameterization.h5` "
           "or read([...]) with a list), or move the others to another folder.")
    if uc and tables:
        raise CellTableError(
            f"{where}: folder holds both Sm-BFO files {_names(uc)} and tables {_names(tables)}; reading the "
            f"folder would use only one kind. {how}"
        )
    if other_h5:
        also = f" (next to {_names(uc + tables)})" if uc or tables else ""
        raise CellTableError(
            f"{where}: folder holds .h5 file(s) {_names(other_h5)}{also} not named *_UCParameterization.h5, "
            "which a folder read would leave out. If they are Sm-BFO cell files, rename them to "
            "Sm_<x>_<k>_UCParameterization.h5, or pass them by name (a file given by name is read whatever "
            f"its name, e.g. `causalcrystal inspect '{where}/{safe_text(other_h5[0].name)}'`); otherwise move them "
            "out of the folder."
        )
    if uc:
        return uc
    if tables:
        return tables
    present = _names(entries, 10) if entries else "none"
    sub = (f"; subfolders (not searched): {_names(subdirs)} -- pass them themselves, e.g. "
           f"`causalcrystal inspect {where}/{safe_text(subdirs[0].name)}`") if subdirs else ""
    raise CellTableError(
        f"{where}: folder holds no cell files (no *_UCParameterization.h5, .csv, .parquet or "
        f".nc; files present: {present}{sub}). Point read() at the folder with the data or "
        "at the files themselves."
    )


def _expand(path_or_paths) -> list[Path]:
    if isinstance(path_or_paths, (str, os.PathLike)):
        items = [path_or_paths]
    elif isinstance(path_or_paths, Sequence):
        items = list(path_or_paths)
    else:
        raise CellTableError(
            f"read() takes a path or a list of paths, got {type(path_or_paths).__name__}."
        )
    if not items:
        raise CellTableError("read() got an empty list of paths; give at least one file or folder.")
    files: list[Path] = []
    for item in items:
        if not isinstance(item, (str, os.PathLike)):
            raise CellTableError(f"read(): {safe_text(repr(item))[:200]} is not a path.")
        p = Path(item)
        if not p.exists():
            raise CellTableError(f"{safe_text(p.resolve())}: no such file or folder; check the path.")
        if p.is_dir():
            files.extend(_folder_files(p))
        elif p.suffix.lower() in SUPPORTED:
            files.append(p)
        else:
            raise CellTableError(
                f"{safe_text(p.resolve())}: unknown file type {safe_text(p.suffix)!r}; read() understands "
                f"{list(SUPPORTED)} "
                "(Sm-BFO HDF5, CSV/Parquet tables, netCDF). Convert the file to one of these."
            )
    return files


def _per_file_option(option, name: str, h5_files: list[Path], example: str):
    """Check a per-file option (``sm_fraction`` or ``image``): a scalar is for exactly one HDF5
    file, a mapping must only name files that are being read (a typo must not pass silently)."""
    if option is None:
        return
    if not h5_files:
        raise CellTableError(
            f"{name}= only applies to Sm-BFO .h5 files; CSV/Parquet/netCDF tables carry their own "
            f"{'sm_fraction column' if name == 'sm_fraction' else 'image column'}. Drop {name}=."
        )
    if isinstance(option, Mapping):
        labels = [image_label(f) for f in h5_files]
        unused = [
            k for k in option
            if not any(lookup({k: None}, f, lab)[0] is not None for f, lab in zip(h5_files, labels))
        ]
        if unused:
            raise CellTableError(
                f"{name}= names {unused} but the files read are {[safe_text(f.name) for f in h5_files]}; key the "
                "dict by path, file name or image label."
            )
    elif len(h5_files) > 1:
        raise CellTableError(
            f"{name}={option!r} is one value but {len(h5_files)} .h5 files are read; give a dict "
            f"such as {example}."
        )


def _join(parts: list[xr.Dataset]) -> xr.Dataset:
    """Join per-file tables; keep the provenance attrs ``cells.concat`` does not know about."""
    if len(parts) == 1:
        return parts[0]
    out = cells.concat(parts)
    offsets: dict = {}
    for t in parts:
        offsets.update(json.loads(t.attrs.get("ab_offset", "{}") or "{}"))
    if offsets:
        out.attrs["ab_offset"] = json.dumps(offsets)
    orders = {t.attrs["xy_order"] for t in parts if "xy_order" in t.attrs}
    if len(orders) == 1:
        out.attrs["xy_order"] = orders.pop()
    # xr.concat drops coordinate attrs (units of x, y); restore them when all parts agree.
    for name in ("x", "y"):
        attrs = [dict(t[name].attrs) for t in parts]
        if all(a == attrs[0] for a in attrs):
            out[name].attrs = attrs[0]
    return out


def _named_by_file(part: xr.Dataset, where: str) -> xr.Dataset:
    """A netCDF table's ``source`` attrs name the file it was read from (messages and the run's
    manifest point at a file the user has), keeping where it came from before: ``"<file> (from
    <its recorded source>)"``, e.g. ``"/data/cells.nc (from causalcrystal.simulator)"``."""
    def named(orig) -> str:
        orig = str(orig or "")
        return where if orig in ("", where) or orig.startswith(where + " (from ") else f"{where} (from {orig})"

    part = part.copy()
    part.attrs = dict(part.attrs)
    part.attrs["source"] = named(part.attrs.get("source"))
    try:
        per_image = json.loads(part.attrs.get("sources") or "{}")
    except (TypeError, ValueError):
        per_image = {}
    if isinstance(per_image, dict) and per_image:
        part.attrs["sources"] = json.dumps({str(k): named(v) for k, v in per_image.items()})
    return part


def read(
    path_or_paths: PathLike | Sequence[PathLike],
    *,
    nonfinite: str = "drop",
    sm_fraction: float | Mapping | None = None,
    xy_order: str = "xy",
    image: str | Mapping | None = None,
    exclude_images: Sequence[str] = (),
) -> xr.Dataset:
    """Read cell data from a file, a folder or a list of them into one validated cell table.

    A folder contributes all its ``*_UCParameterization.h5`` files (sorted), or, if it has none,
    its ``.csv``/``.parquet``/``.nc`` files. Several inputs are joined into one multi-image table.

    ``nonfinite``: ``"drop"`` (default; cells with NaN/inf descriptors are removed, reported by a
    :class:`~causalcrystal.cells.NonFiniteWarning` and in ``attrs['nonfinite_dropped']``),
    ``"raise"`` or ``"keep"``. ``sm_fraction``, ``xy_order`` and ``image`` apply to Sm-BFO files
    (see :func:`~causalcrystal.io.smbfo.read_smbfo`); ``sm_fraction``/``image`` are a single
    value for one file or a dict ``{path, file name or image label: value}`` for several.
    ``exclude_images``: image labels to leave out of the table (before the non-finite policy, so
    an image with a broken column can be left out; :func:`~causalcrystal.cells.exclude_images`).

    Raises :class:`~causalcrystal.cells.CellTableError` naming the file and the fix.
    """
    if nonfinite not in cells.NONFINITE_POLICIES:
        raise CellTableError(f"nonfinite={nonfinite!r} unknown; use one of {cells.NONFINITE_POLICIES}.")
    files = _expand(path_or_paths)
    h5_files = [f for f in files if f.suffix.lower() in HDF5_SUFFIXES]
    _per_file_option(sm_fraction, "sm_fraction", h5_files, "{'Sm_7_0': 0.07, 'Sm_10_0': 0.10}")
    _per_file_option(image, "image", h5_files, "{'Sm_7_0_UCParameterization.h5': 'left'}")

    parts = []
    for f in files:
        if f.stat().st_size == 0:
            raise CellTableError(
                f"{safe_text(f.resolve())}: the file is empty (0 bytes); re-export it, or remove it from the inputs."
            )
        suffix = f.suffix.lower()
        if suffix in HDF5_SUFFIXES:
            label = image
            if isinstance(image, Mapping):
                label = lookup(image, f, image_label(f))[1]
            part = read_smbfo(f, sm_fraction=sm_fraction, xy_order=xy_order, image=label)
        elif suffix in TABLE_SUFFIXES:
            part = read_table(f)
        else:
            part = read_netcdf(f)
        # Check each file before joining so a contract error names that file, not the series.
        where = safe_text(f.resolve())
        if suffix not in HDF5_SUFFIXES and suffix not in TABLE_SUFFIXES:
            part = _named_by_file(part, where)
        part = cells.validate(part, source=where, allow_nonfinite=True)
        parts.append(cells.check_sm_fraction_plausible(part, source=where))
    ds = _join(parts)
    # Messages name the file read (a netCDF's own 'source' attr names where it came from).
    src = safe_text(files[0].resolve()) if len(files) == 1 else None
    ds = cells.exclude_images(ds, exclude_images, source=src)
    ds = cells.apply_nonfinite_policy(ds, nonfinite, source=src)
    return cells.canonical(cells.validate(ds, source=src, allow_nonfinite=(nonfinite == "keep")))
