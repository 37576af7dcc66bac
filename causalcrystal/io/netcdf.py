"""The project's own netCDF format: a cell table written by :func:`write_netcdf`.

A netCDF file keeps everything a cell table carries (values, dtypes, units, attrs) and any
extra variables stored with it (e.g. the simulator's ground truth on dims ``effect``/``cause``).
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from causalcrystal.cells import CellTableError, safe_text

ENGINE = "h5netcdf"
#: The variables of a netCDF file may expand to at most this many times the file's size in memory
#: (or :data:`EXPANSION_FLOOR` bytes, whichever is larger): an 11 KB file declaring a
#: 3e9-long ``cell`` dimension is refused before anything is loaded. The project's own files use
#: light gzip (about 5x on the simulator's mostly-zero ground truth).
MAX_EXPANSION = 100
EXPANSION_FLOOR = 256 * 2**20


def _check_declared_size(ds: xr.Dataset, path: Path, src: str) -> None:
    """Compare the size the (still lazy) variables declare with the file's size, before loading."""
    sizes = {name: int(var.size) * var.dtype.itemsize for name, var in ds.variables.items()}
    declared = sum(sizes.values())
    on_disk = path.stat().st_size
    if declared > max(MAX_EXPANSION * on_disk, EXPANSION_FLOOR):
        big = max(sizes, key=sizes.get)
        dims = ", ".join(f"{d}={n:,}" for d, n in ds.sizes.items())
        raise CellTableError(
            f"{src}: the variables declare {declared / 2**30:.1f} GiB (dimensions {dims}; e.g. variable {big!r} "
            f"{sizes[big] / 2**30:.1f} GiB) but the file is only {on_disk:,} bytes: the data cannot be in it "
            "(damaged file, or variables created with a wrong dimension and never written). Nothing was "
            "loaded; re-create the file with causalcrystal.io.write_netcdf."
        )


def read_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Load a netCDF cell table fully into memory (not yet validated; ``read`` validates).

    Nothing is dropped or renamed, so ``read_netcdf(write_netcdf(ds, p))`` is identical to ``ds``.
    """
    p = Path(path)
    src = safe_text(p.resolve())
    if not p.is_file():
        raise CellTableError(f"{src}: no such file; check the path.")
    try:
        # Descriptors are never times: a 'units' attr such as "days since 2000-01-01" stays an attr
        # instead of turning the values into dates.
        with xr.open_dataset(p, engine=ENGINE, decode_times=False, decode_timedelta=False) as handle:
            _check_declared_size(handle, p, src)
            ds = handle.load()
    except CellTableError:
        raise
    except MemoryError as exc:
        raise CellTableError(
            f"{src}: loading the file needs more memory than is available ({exc}); read a smaller file or "
            "split the series into several files."
        ) from exc
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise CellTableError(
            f"{src}: cannot read as netCDF/HDF5 ({type(exc).__name__}: {safe_text(exc)}). The file is corrupt or "
            "not netCDF4; re-create it with causalcrystal.io.write_netcdf."
        ) from exc
    # Older xarray versions hand back variable-length strings as object arrays; make_cells gives
    # fixed-width unicode, so normalise to keep round trips identical.
    if "image" in ds.variables and ds["image"].dtype == object:
        ds["image"] = ds["image"].astype(str)
    # Drop the on-disk encoding (source path, chunking): it is not part of the table.
    for var in ds.variables.values():
        var.encoding = {}
    ds.encoding = {}
    return ds


#: CF attributes that describe how stored values are encoded, not what they mean.
CF_ENCODING_ATTRS = ("scale_factor", "add_offset", "_FillValue", "missing_value", "_Unsigned", "valid_range",
                     "valid_min", "valid_max")


def write_netcdf(ds: xr.Dataset, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a cell table (or any dataset) to netCDF4 with h5netcdf.

    Refuses to replace an existing file unless ``overwrite=True``. The file is written next to
    ``path`` and renamed into place, so a failed write never leaves a truncated file behind.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise CellTableError(f"{safe_text(p)}: file exists; pass overwrite=True to replace it.")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.tmp")
    try:
        # Light gzip on numeric variables: simulated truth (cell x 8 x 8, mostly zeros) shrinks ~5x
        # for a small write-time cost; values are stored exactly.
        encoding = {name: {"zlib": True, "complevel": 1} for name, var in ds.variables.items()
                    if var.dtype.kind in "fiub" and var.ndim > 0}
        # The values in memory are decoded: CF packing attrs left in attrs (scale_factor,
        # add_offset, _FillValue, ...) would make a reader decode them a second time (a round trip
        # multiplied Vol by its scale_factor). Drop them from the copy that is written.
        out = ds.copy()
        for var in out.variables.values():
            for key in CF_ENCODING_ATTRS:
                var.attrs.pop(key, None)
        out.to_netcdf(tmp, engine=ENGINE, encoding=encoding)
        os.replace(tmp, p)
    except (TypeError, ValueError) as exc:
        raise CellTableError(
            f"{safe_text(p)}: cannot write as netCDF ({exc}). netCDF attrs must be strings or numbers; "
            "JSON-encode dicts/lists and replace None/bool before writing."
        ) from exc
    finally:
        tmp.unlink(missing_ok=True)
    return p
