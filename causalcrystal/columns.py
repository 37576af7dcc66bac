"""From an ADF/HAADF-STEM image to atom columns, and from atom columns to the cell table.

Built on Atomap (Nord et al., Adv. Struct. Chem. Imaging 3, 9 (2017); an optional extra:
``pip install -e ".[atomap]"``), which finds column positions by peak finding and refines them by
2-D Gaussian fits.

:func:`find_columns`
    an image (a file HyperSpy reads, a HyperSpy ``Signal2D`` or a 2-D array) -> the A and B
    sublattices as a Dataset (:data:`COLUMN_VARIABLES`), positions in pixels, x along the image
    columns and y along its rows.
:func:`save_columns` / :func:`read_columns`
    the columns file (netCDF, dims ``column``; attrs: the image, its shape, the pixel size and
    unit, the projection, the peak separation and the Atomap version).
:func:`descriptors_from_columns`
    columns -> the cell table of the image (:func:`causalcrystal.atoms.descriptors_from_atoms`,
    lengths in angstrom when the pixel size is known).
:func:`plot_columns`
    the columns and each cell's B-site offset over the image, to check the lattice by eye.

Projections (how Atomap is told where the B columns are): ``"110"`` uses Atomap's
``PerovskiteOxide110`` parameters (B columns at the mid-points of the A-A spacings along [001]);
``"001"`` the same refinement with the B columns at the centres of the A squares (mid-points along
the A lattice's diagonal).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal.atoms import ANGSTROM_PER, descriptors_from_atoms
from causalcrystal.cells import CellTableError

__all__ = ["find_columns", "save_columns", "read_columns", "descriptors_from_columns", "plot_columns"]

#: Variables of a columns Dataset (dim ``column``).
COLUMN_VARIABLES = {
    "sublattice": "'A' or 'B'",
    "x": "column position along the image's horizontal axis (px, 0 = left edge)",
    "y": "column position along the image's vertical axis (px, 0 = top edge)",
    "intensity": "amplitude of the fitted 2-D Gaussian (image counts)",
    "intensity_max": "largest image value within the column's fit area (image counts)",
    "sigma_x": "width of the fitted Gaussian along its first axis (px)",
    "sigma_y": "width of the fitted Gaussian along its second axis (px)",
    "ellipticity": "larger over smaller Gaussian width (1 = round; large values flag a poor fit)",
}
#: Default peak separation in angstrom, per projection: below the shortest A-A distance and above
#: the A-B distance (SrTiO3 [110]: A-A 2.76, A-B 1.95; [001]: A-A 3.9, A-B 2.76), so that the
#: peak search finds the A columns only (checked on the Atomap test image, 0.093 angstrom/px:
#: 1.5 angstrom = 16 px finds all 117 A columns, 1.1 angstrom = 12 px also takes the B columns).
SEPARATION = {"110": 1.5, "001": 2.1}
PROJECTIONS = ("110", "001")


def need_atomap():
    """``(atomap.api, hyperspy.api)``, or ``ImportError`` saying how to install the extra."""
    try:
        import atomap.api as am
        import hyperspy.api as hs
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("finding atom columns needs Atomap: pip install -e \".[atomap]\" (or pip install "
                          "'causalcrystal[atomap]')") from err
    return am, hs


def load_image(image, hs):
    """(signal float64, source text) from a path, a Signal2D or a 2-D array."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise CellTableError(f"{path}: no such image file; check the path.")
        try:
            # HSPY for .hdf5/.hspy: the generic HDF5 readers cannot tell HyperSpy's layout
            fmt = "HSPY" if path.suffix.lower() in (".hdf5", ".hspy") else None
            s = hs.load(str(path), file_format=fmt) if fmt else hs.load(str(path))
        except Exception as err:  # noqa: BLE001 - any reader error: name the file
            raise CellTableError(f"{path}: HyperSpy cannot read this image ({type(err).__name__}: {err}); give a "
                                 "file HyperSpy reads (.hspy, .hdf5, .dm3/.dm4, .emd, .tif, ...).") from err
        if isinstance(s, list):
            s = s[0]
        source = str(path)
    elif hasattr(image, "axes_manager"):
        s, source = image, getattr(image.metadata.General, "original_filename", "") or "signal"
    else:
        arr = np.asarray(image, dtype=np.float64)
        if arr.ndim != 2:
            raise CellTableError(f"image: expected a 2-D image, got an array of shape {arr.shape}.")
        s, source = hs.signals.Signal2D(arr), "array"
    if s.axes_manager.signal_dimension != 2 or s.axes_manager.navigation_dimension != 0:
        raise CellTableError(f"{source}: expected one 2-D image, got {s} (a stack or a spectrum); pick one image "
                             "first, e.g. s.inav[0].")
    s = s.deepcopy()
    s.change_dtype("float64")  # Atomap refuses float16, which the Atomap test image is stored as
    return s, source


def _pixel_size(s, pixel_size, pixel_unit, source) -> tuple[float | None, str | None]:
    """The pixel size and unit: given, or the image's own calibration."""
    if pixel_size is not None:
        unit = pixel_unit or "nm"
        if unit not in ANGSTROM_PER:
            raise CellTableError(f"--unit {unit!r} unknown; use nm, angstrom or pm.")
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise CellTableError(f"--pixel-size {pixel_size!r} must be a positive number.")
        return float(pixel_size), unit
    ax = s.axes_manager[0]
    unit = str(ax.units) if ax.units not in (None, "", "<undefined>") else None
    unit = {"Å": "angstrom", "A": "angstrom", "µm": None, "um": None}.get(unit, unit)
    scale = float(ax.scale)
    if pixel_unit is not None and scale != 1.0:  # the image's calibration, with the unit it lacks
        unit = pixel_unit
        if unit not in ANGSTROM_PER:
            raise CellTableError(f"--unit {unit!r} unknown; use nm, angstrom or pm.")
    if unit in ANGSTROM_PER and scale > 0:
        return scale, unit
    if scale != 1.0:
        raise CellTableError(f"{source}: the image's pixel size is {scale:g} but its unit is "
                             f"{ax.units!r}; pass the unit (--unit nm, or pixel_unit='nm'), or the size and unit "
                             f"(--pixel-size {scale:g} --unit nm), so that lengths can be given in angstrom.")
    return None, None


def _parameters(pp, projection: str):
    """Atomap process parameters for the A and B sublattices of a perovskite in ``projection``."""
    para = pp.PerovskiteOxide110()
    para.sublattice_list = para.sublattice_list[:2]  # ADF shows no oxygen: A and B only
    if projection == "001":
        # A square lattice: zones 0 and 1 are the edges, 2 and 3 the diagonals; the B columns
        # are the mid-points along a diagonal (the centres of the A squares).
        names = [{"number": 0, "name": "100"}, {"number": 1, "name": "010"}, {"number": 2, "name": "110"},
                 {"number": 3, "name": "1-10"}]
        for sub in para.sublattice_list:
            sub.zone_axis_list = names
        para.sublattice_list[1].sublattice_position_zoneaxis = "110"
        para.name = "Perovskite 001"
    return para


def find_columns(image, *, projection: str = "110", pixel_size: float | None = None, pixel_unit: str | None = None,
                 separation: float | None = None) -> xr.Dataset:
    """The A- and B-site atom columns of a perovskite ADF/HAADF image (Atomap).

    ``image``: a file HyperSpy reads, a HyperSpy ``Signal2D`` or a 2-D array. ``projection``:
    ``"110"`` or ``"001"`` (see the module docstring). ``pixel_size`` / ``pixel_unit`` (``"nm"``,
    ``"angstrom"``, ``"pm"``): the size of one pixel, when the image's calibration lacks it (the
    Atomap test image stores 0.0093263 with no unit: pass ``pixel_unit="nm"``). ``separation``:
    the peak search's minimum distance in pixels (default :data:`SEPARATION` converted with the
    pixel size; required when the pixel size is unknown).

    Returns a Dataset with dim ``column`` and the variables of :data:`COLUMN_VARIABLES`
    (positions in pixels, x right, y down); attrs ``source``, ``image_shape`` (rows, cols),
    ``pixel_size``, ``pixel_unit`` (absent when unknown), ``projection``, ``separation_px``,
    ``atomap_version``, ``position_order = "xy"``. Raises ``ImportError`` without Atomap and
    :class:`~causalcrystal.cells.CellTableError` naming the input and the fix.
    """
    from importlib.metadata import version

    am, hs = need_atomap()
    from atomap import process_parameters as pp

    if projection not in PROJECTIONS:
        raise CellTableError(f"--projection {projection!r} unknown; use 110 or 001.")
    s, source = load_image(image, hs)
    size, unit = _pixel_size(s, pixel_size, pixel_unit, source)
    if separation is None:
        if size is None:
            raise CellTableError(f"{source}: no pixel size, so the peak separation cannot be set from the "
                                 "crystal; pass --separation PX (about 0.8 of the shortest A-A distance in pixels) or "
                                 "--pixel-size S --unit nm.")
        separation = SEPARATION[projection] / (size * ANGSTROM_PER[unit])
    separation = int(round(separation))
    if separation < 2:
        raise CellTableError(f"--separation {separation} px is too small to tell columns apart; use the distance "
                             "between A columns in pixels times about 0.8.")
    from causalcrystal.logs import image_library_warnings

    with image_library_warnings():  # Atomap/HyperSpy deprecation notices, not about the data
        lattice = am.make_atom_lattice_from_image(s, process_parameter=_parameters(pp, projection),
                                                  pixel_separation=separation)
    parts = []
    for label, sub in zip(("A", "B"), lattice.sublattice_list[:2]):
        n = len(sub.atom_list)
        parts.append({"sublattice": np.full(n, label), "x": np.asarray(sub.x_position, float),
                      "y": np.asarray(sub.y_position, float),
                      "intensity": np.asarray(sub.atom_amplitude_gaussian2d, float),
                      "intensity_max": np.asarray(sub.atom_amplitude_max_intensity, float),
                      "sigma_x": np.asarray(sub.sigma_x, float), "sigma_y": np.asarray(sub.sigma_y, float),
                      "ellipticity": np.asarray(sub.ellipticity, float)})
    data = {k: np.concatenate([p[k] for p in parts]) for k in COLUMN_VARIABLES}
    ds = xr.Dataset({k: ("column", v) for k, v in data.items()})
    for k, text in COLUMN_VARIABLES.items():
        ds[k].attrs["long_name"] = text
    ds.attrs.update(source=source, image_shape=json.dumps(list(s.data.shape)), projection=projection,
                    separation_px=separation, atomap_version=version("atomap"), position_order="xy")
    if size is not None:
        ds.attrs.update(pixel_size=size, pixel_unit=unit)
    n_a, n_b = (int((data["sublattice"] == k).sum()) for k in ("A", "B"))
    if n_a < 4 or n_b < 1:
        raise CellTableError(f"{source}: Atomap found {n_a} A and {n_b} B columns with a peak separation of "
                             f"{separation} px; check --projection and --separation (about 0.8 of the shortest A-A "
                             "distance in pixels).")
    return ds


def save_columns(columns: xr.Dataset, path, overwrite: bool = False) -> Path:
    """Write a columns Dataset to ``path`` (netCDF, atomically: :func:`causalcrystal.io.write_netcdf`);
    never replaces a file without ``overwrite``."""
    from causalcrystal.io import write_netcdf

    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it or choose another --out.")
    return write_netcdf(columns, path, overwrite=True)


def read_columns(path) -> xr.Dataset:
    """A columns file written by :func:`save_columns` (checked: variables, sublattice labels)."""
    path = Path(path)
    try:
        ds = xr.load_dataset(path, engine="h5netcdf")
    except (OSError, ValueError) as err:
        raise CellTableError(f"{path}: not a readable columns file ({err}); make one with `causalcrystal columns "
                             "IMAGE --out COLUMNS.nc`.") from err
    missing = [k for k in ("sublattice", "x", "y", "intensity") if k not in ds]
    if missing or "column" not in ds.dims:
        raise CellTableError(f"{path}: not a columns file (missing {missing or ['the column dimension']}); make one "
                             "with `causalcrystal columns IMAGE --out COLUMNS.nc`.")
    labels = set(ds["sublattice"].values.astype(str).tolist())
    if not labels <= {"A", "B"}:
        raise CellTableError(f"{path}: sublattice labels {sorted(labels)}; expected 'A' and 'B'.")
    return ds


def descriptors_from_columns(columns: xr.Dataset, *, image: str = "image", sm_fraction: float = 0.0,
                             projection: str = "auto", max_offset: float = 0.35) -> xr.Dataset:
    """The cell table of one image from its columns (:func:`find_columns` or :func:`read_columns`):
    :func:`causalcrystal.atoms.descriptors_from_atoms` on the A and B columns, with the columns'
    pixel size (lengths in angstrom, alpha in degrees) when known; ``projection`` ``"auto"`` by
    default (the columns' own projection is only what Atomap was told). The image path and the
    columns' attrs are kept in ``attrs['columns']``."""
    lab = columns["sublattice"].values.astype(str)
    a, b = lab == "A", lab == "B"
    xy = np.column_stack([columns["x"].values, columns["y"].values])
    inten = columns["intensity"].values
    size = columns.attrs.get("pixel_size")
    cells = descriptors_from_atoms(xy[a], inten[a], xy[b], inten[b], image=image, sm_fraction=sm_fraction,
                                   projection=projection, max_offset=max_offset,
                                   source=str(columns.attrs.get("source", "columns")),
                                   pixel_size=None if size is None else float(size),
                                   pixel_unit=str(columns.attrs.get("pixel_unit", "nm")))
    cells.attrs["columns"] = json.dumps({k: (v.item() if hasattr(v, "item") else v)
                                         for k, v in columns.attrs.items()}, default=str)
    return cells


def plot_columns(columns: xr.Dataset, image=None, cells: xr.Dataset | None = None, ax=None, arrow_scale: float = 10.0):
    """The image (if given: a 2-D array, in pixels), the A (red) and B (blue) columns, and for each
    cell of ``cells`` its B-site offset (Px, Py) as an arrow from the cell's reference point,
    ``arrow_scale`` times its length. Returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 7))
    else:
        fig = ax.figure
    if image is not None:
        ax.imshow(np.asarray(image, dtype=float), cmap="gray", origin="upper")
    lab = columns["sublattice"].values.astype(str)
    for name, colour in (("A", "tab:red"), ("B", "tab:blue")):
        m = lab == name
        ax.plot(columns["x"].values[m], columns["y"].values[m], "o", ms=3, color=colour, label=f"{name} ({m.sum()})")
    if cells is not None and cells.sizes.get("cell", 0):
        scale = float(json.loads(cells.attrs.get("atoms", "{}")).get("length_scale", 1.0)) or 1.0
        x, y = cells["x"].values / scale, cells["y"].values / scale  # back to pixels
        ax.quiver(x, y, cells["Px"].values / scale * arrow_scale, cells["Py"].values / scale * arrow_scale,
                  angles="xy", scale_units="xy", scale=1.0, color="yellow", width=0.003,
                  label=f"B offset x{arrow_scale:g} ({cells.sizes['cell']} cells)")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_aspect("equal")
    return fig


def image_data(columns: xr.Dataset):
    """The image the columns were found in, as a 2-D array (``None`` if its file is gone)."""
    src = columns.attrs.get("source", "")
    if not src or not Path(src).is_file():
        return None
    _, hs = need_atomap()
    s, _ = load_image(src, hs)
    return s.data
