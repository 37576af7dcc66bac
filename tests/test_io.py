"""Tests of causalcrystal.io: the Sm-BFO HDF5 reader, CSV/Parquet tables and netCDF.

Fixtures are written here, in tmp_path, in the exact public layout (h5py, datasets at the root,
two-component arrays stored (2, N) like the public loading code expects).
"""

from __future__ import annotations

import json
import warnings

import h5py
import numpy as np
import pytest
from conftest import fixed_seed
import xarray as xr

from causalcrystal import cells
from causalcrystal.cells import CellTableError, NonFiniteWarning
from causalcrystal.io import load_haadf, read, read_netcdf, write_netcdf, write_table
from causalcrystal.io.table import to_frame

ROWS, COLS = 3, 4
N = ROWS * COLS
ROW0, COL0 = 5, -2  # lattice index minima as stored in 'ab'


def make_raw(seed: int = 0, *, alpha_deg: bool = True) -> dict[str, np.ndarray]:
    """Per-cell arrays in the public layout: scalars (N,), two-component arrays (2, N)."""
    rng = np.random.default_rng(seed)
    rr, cc = np.meshgrid(np.arange(ROWS), np.arange(COLS), indexing="ij")
    rr, cc = rr.ravel(), cc.ravel()
    alpha = rng.normal(90.0, 0.5, N)
    raw = {f"I{k}": rng.uniform(100, 200, N) for k in range(1, 6)}
    raw.update(
        a=np.stack([rng.normal(10.0, 0.1, N), rng.normal(0.5, 0.1, N)]),
        b=np.stack([rng.normal(-0.3, 0.1, N), rng.normal(10.5, 0.1, N)]),
        ab=np.stack([rr + ROW0, cc + COL0]).astype(np.int64),
        alpha=alpha if alpha_deg else np.deg2rad(alpha),
        Vol=rng.normal(105.0, 1.0, N),
        Pxy=rng.normal(0.0, 0.3, (2, N)),
        xy_COM=np.stack([cc * 10.0 + rng.normal(0, 0.1, N), 200.0 + rr * 10.0 + rng.normal(0, 0.1, N)]),
    )
    return raw


def write_uc(path, raw=None, *, transposed=False, scalar_shape=None, drop=(), **override):
    """Write a *_UCParameterization.h5 file. ``transposed`` stores two-component arrays (N, 2);
    ``scalar_shape`` ("col"/"row") stores per-cell scalars (N, 1) / (1, N)."""
    raw = dict(make_raw() if raw is None else raw)
    raw.update(override)
    with h5py.File(path, "w") as f:
        for key, val in raw.items():
            if key in drop:
                continue
            val = np.asarray(val)
            if val.ndim == 2 and val.shape[0] == 2 and transposed:
                val = val.T
            if val.ndim == 1 and scalar_shape == "col":
                val = val[:, None]
            elif val.ndim == 1 and scalar_shape == "row":
                val = val[None, :]
            f.create_dataset(key, data=val)
    return path


def write_haadf(path, shape=(64, 48)):
    img = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    with h5py.File(path, "w") as f:
        f.create_dataset("MainImage", data=img)
    return img


def read_quiet(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonFiniteWarning)  # fixtures are finite unless a test says so
        return read(*args, **kwargs)


# --- Sm-BFO reader ------------------------------------------------------------------------------


def test_both_orientations_and_scalar_shapes_give_identical_tables(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    ds_2n = read_quiet(write_uc(tmp_path / "a" / "Sm_7_0_UCParameterization.h5"))
    ds_n2 = read_quiet(write_uc(tmp_path / "b" / "Sm_7_0_UCParameterization.h5", transposed=True, scalar_shape="col"))
    ds_1n = read_quiet(write_uc(tmp_path / "c" / "Sm_7_0_UCParameterization.h5", scalar_shape="row"))
    # Only the file paths in the attrs may differ.
    for other in (ds_n2, ds_1n):
        xr.testing.assert_equal(ds_2n, other)
        for name in cells.DESCRIPTORS:
            assert ds_2n[name].attrs == other[name].attrs
    assert ds_2n.sizes["cell"] == N


def test_descriptors_follow_the_public_definitions(tmp_path):
    raw = make_raw(seed=fixed_seed(3))
    ds = read_quiet(write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", raw))
    np.testing.assert_array_equal(ds["I14"], raw["I1"] + raw["I2"] + raw["I3"] + raw["I4"])
    np.testing.assert_array_equal(ds["I5"], raw["I5"])
    np.testing.assert_allclose(ds["a"], np.sqrt(raw["a"][0] ** 2 + raw["a"][1] ** 2), rtol=1e-15)
    np.testing.assert_allclose(ds["b"], np.sqrt(raw["b"][0] ** 2 + raw["b"][1] ** 2), rtol=1e-15)
    np.testing.assert_array_equal(ds["alpha"], raw["alpha"])
    np.testing.assert_array_equal(ds["Vol"], raw["Vol"])
    np.testing.assert_array_equal(ds["Px"], raw["Pxy"][0])
    np.testing.assert_array_equal(ds["Py"], raw["Pxy"][1])
    np.testing.assert_array_equal(ds["x"], raw["xy_COM"][0])
    np.testing.assert_array_equal(ds["y"], raw["xy_COM"][1])
    assert ds["alpha"].attrs["units"] == "deg"
    assert ds["Vol"].attrs["units"] == "px^2"
    assert ds["I14"].attrs["units"] == "counts"
    assert ds["x"].attrs["units"] == "px" and ds["a"].attrs["units"] == "px"
    assert ds["image"].values.tolist() == ["Sm_7_0"] * N
    assert json.loads(ds.attrs["sources"])["Sm_7_0"].endswith("Sm_7_0_UCParameterization.h5")
    assert ds.attrs["source"].endswith("Sm_7_0_UCParameterization.h5")


def test_alpha_in_radians_is_labelled_rad(tmp_path):
    ds = read_quiet(write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", make_raw(alpha_deg=False)))
    assert ds["alpha"].attrs["units"] == "rad"
    assert float(ds["alpha"].median()) < 2 * np.pi


def test_ab_indices_are_shifted_to_zero_and_offset_recorded(tmp_path):
    raw = make_raw()
    ds = read_quiet(write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", raw))
    assert ds["row"].dtype == np.int64 and ds["col"].dtype == np.int64
    np.testing.assert_array_equal(ds["row"], raw["ab"][0] - ROW0)
    np.testing.assert_array_equal(ds["col"], raw["ab"][1] - COL0)
    assert int(ds["row"].min()) == 0 and int(ds["col"].min()) == 0
    assert json.loads(ds.attrs["ab_offset"]) == {"Sm_7_0": [ROW0, COL0]}


def test_xy_order_swaps_x_and_y(tmp_path):
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5")
    xy = read_quiet(path)
    yx = read_quiet(path, xy_order="yx")
    np.testing.assert_array_equal(xy["x"], yx["y"])
    np.testing.assert_array_equal(xy["y"], yx["x"])
    assert not np.array_equal(xy["x"], xy["y"])
    with pytest.raises(CellTableError, match="xy_order"):
        read(path, xy_order="rc")


def test_nonfinite_drop_raise_keep(tmp_path):
    raw = make_raw()
    raw["I5"][1] = np.nan
    raw["alpha"][3] = np.inf
    raw["I2"][3] = -np.inf  # same cell as alpha: counted per variable, dropped once
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", raw)

    with pytest.warns(NonFiniteWarning, match="dropped 2 of 12"):
        ds = read(path)
    assert ds.sizes["cell"] == N - 2
    assert json.loads(ds.attrs["nonfinite_dropped"]) == {"Sm_7_0": {"I14": 1, "I5": 1, "alpha": 1}}
    # The dropped cells are exactly the bad ones; the grid positions of the others survive.
    kept = set(zip(ds["row"].values.tolist(), ds["col"].values.tolist()))
    assert (0, 1) not in kept and (0, 3) not in kept and (0, 2) in kept

    with pytest.raises(CellTableError, match="Sm_7_0_UCParameterization.h5.*non-finite"):
        read(path, nonfinite="raise")

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept_ds = read(path, nonfinite="keep")
    assert kept_ds.sizes["cell"] == N
    assert np.isnan(kept_ds["I5"].values[1]) and np.isinf(kept_ds["alpha"].values[3])

    with pytest.raises(CellTableError, match="nonfinite"):
        read(path, nonfinite="ignore")


@pytest.mark.parametrize(
    ("name", "fraction"),
    [("Sm_7_0", 0.07), ("SM_10_0", 0.10), ("Sm_0_2", 0.0), ("sm_20_1", 0.20)],
)
def test_sm_fraction_from_file_name(tmp_path, name, fraction):
    ds = read_quiet(write_uc(tmp_path / f"{name}_UCParameterization.h5"))
    assert np.all(ds["sm_fraction"].values == fraction)
    assert ds["image"].values[0] == name


def test_unparseable_name_needs_sm_fraction(tmp_path):
    path = write_uc(tmp_path / "sample_UCParameterization.h5")
    with pytest.raises(CellTableError, match=r"sample_UCParameterization\.h5.*sm_fraction"):
        read(path)
    assert np.all(read_quiet(path, sm_fraction=0.03)["sm_fraction"].values == 0.03)
    by_label = read_quiet(path, sm_fraction={"sample": 0.05}, image="left")
    assert np.all(by_label["sm_fraction"].values == 0.05)
    assert by_label["image"].values[0] == "left"
    # An explicit value wins over the file-name rule.
    named = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5")
    assert np.all(read_quiet(named, sm_fraction=0.08)["sm_fraction"].values == 0.08)


def test_folder_reads_all_images_in_order(tmp_path):
    for name, seed in [("Sm_10_0", 1), ("Sm_0_0", 2), ("Sm_7_1", 3)]:
        write_uc(tmp_path / f"{name}_UCParameterization.h5", make_raw(fixed_seed(seed)))
    write_haadf(tmp_path / "Sm_7_1_HAADF.h5")
    (tmp_path / "notes.txt").write_text("not data")
    ds = read_quiet(tmp_path)
    assert ds.sizes["cell"] == 3 * N
    # canonical order: images by Sm fraction (then label), cells by (row, col) within each
    assert list(dict.fromkeys(ds["image"].values.tolist())) == ["Sm_0_0", "Sm_7_1", "Sm_10_0"]
    first = ds["image"].values == "Sm_0_0"
    rc = np.stack([ds["row"].values[first], ds["col"].values[first]], axis=1)
    assert (np.lexsort((rc[:, 1], rc[:, 0])) == np.arange(rc.shape[0])).all()
    per_image = cells.images(ds)
    assert per_image["sm_fraction"].sel(image="Sm_10_0") == 0.10
    assert per_image["sm_fraction"].sel(image="Sm_7_1") == 0.07
    assert per_image["sm_fraction"].sel(image="Sm_0_0") == 0.0
    assert set(json.loads(ds.attrs["sources"])) == {"Sm_0_0", "Sm_10_0", "Sm_7_1"}
    assert set(json.loads(ds.attrs["ab_offset"])) == {"Sm_0_0", "Sm_10_0", "Sm_7_1"}
    assert list(json.loads(ds.attrs["haadf"])) == ["Sm_7_1"]
    assert ds["x"].attrs["units"] == "px"
    # The same files given as a list give the same table.
    files = sorted(tmp_path.glob("*_UCParameterization.h5"))
    xr.testing.assert_identical(read_quiet(files), ds)


def test_one_sm_fraction_for_several_files_is_refused(tmp_path):
    for name in ("a", "b"):
        write_uc(tmp_path / f"{name}_UCParameterization.h5")
    with pytest.raises(CellTableError, match="give a dict"):
        read(tmp_path, sm_fraction=0.07)
    with pytest.raises(CellTableError, match="'typo'"):
        read(tmp_path, sm_fraction={"a": 0.01, "typo": 0.02})
    ds = read_quiet(tmp_path, sm_fraction={"a": 0.01, "b_UCParameterization.h5": 0.02})
    assert cells.images(ds)["sm_fraction"].values.tolist() == [0.01, 0.02]


def test_haadf_companion_detected_and_loadable(tmp_path):
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5")
    img = write_haadf(tmp_path / "Sm_7_0_HAADF.h5")
    ds = read_quiet(path)
    assert json.loads(ds.attrs["haadf"])["Sm_7_0"].endswith("Sm_7_0_HAADF.h5")
    np.testing.assert_array_equal(load_haadf(ds, "Sm_7_0"), img)
    with pytest.raises(CellTableError, match="Sm_9_0"):
        load_haadf(ds, "Sm_9_0")
    # Without a companion there is no haadf attr.
    (tmp_path / "other").mkdir()
    alone = read_quiet(write_uc(tmp_path / "other" / "Sm_7_0_UCParameterization.h5"))
    assert "haadf" not in alone.attrs


def test_bad_haadf_companion_is_reported(tmp_path):
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5")
    write_haadf(tmp_path / "Sm_7_0_HAADF.h5", shape=(2, 8, 8))
    with pytest.raises(CellTableError, match=r"Sm_7_0_HAADF\.h5.*2-D"):
        read(path)


# --- bad Sm-BFO inputs ----------------------------------------------------------------------------


def test_missing_key_names_file_key_and_keys_found(tmp_path):
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", drop=("Vol",))
    with pytest.raises(CellTableError) as err:
        read(path)
    msg = str(err.value)
    assert "Sm_7_0_UCParameterization.h5" in msg and "'Vol'" in msg and "'Pxy'" in msg  # keys found


def test_wrong_shape_names_file_key_shape_and_expected(tmp_path):
    path = write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", Pxy=np.zeros((3, N)))
    with pytest.raises(CellTableError) as err:
        read(path)
    msg = str(err.value)
    assert "Sm_7_0_UCParameterization.h5" in msg and "'Pxy'" in msg and f"(3, {N})" in msg
    assert f"(2, {N})" in msg and f"({N}, 2)" in msg

    bad_scalar = write_uc(tmp_path / "Sm_8_0_UCParameterization.h5", alpha=np.zeros(N + 1))
    with pytest.raises(CellTableError, match=r"Sm_8_0_UCParameterization\.h5.*'alpha'.*\(13,\)"):
        read(bad_scalar)


def test_non_integer_ab_is_refused(tmp_path):
    raw = make_raw()
    raw["ab"] = raw["ab"].astype(float) + 0.5
    with pytest.raises(CellTableError, match="'ab'.*non-integer"):
        read(write_uc(tmp_path / "Sm_7_0_UCParameterization.h5", raw))


def test_garbage_file_is_refused_with_its_name(tmp_path):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"\x00this is not hdf5" * 10)
    # Reported as unreadable, not as "pass sm_fraction", although the name has no composition.
    with pytest.raises(CellTableError, match=r"x\.h5: cannot open as HDF5"):
        read(bad)


def test_bad_paths(tmp_path):
    with pytest.raises(CellTableError, match="nowhere.h5"):
        read(tmp_path / "nowhere.h5")
    odd = tmp_path / "cells.xlsx"
    odd.write_text("x")
    with pytest.raises(CellTableError, match=r"cells\.xlsx.*unknown file type"):
        read(odd)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CellTableError, match="empty.*no cell files"):
        read(empty)
    with pytest.raises(CellTableError, match="empty list"):
        read([])


def test_garbage_netcdf_and_table_are_refused(tmp_path):
    for name in ("junk.nc", "junk.parquet"):
        (tmp_path / name).write_bytes(b"\x89garbage" * 20)
        with pytest.raises(CellTableError, match=name.replace(".", r"\.")):
            read(tmp_path / name)


# --- CSV / Parquet --------------------------------------------------------------------------------


@pytest.fixture
def series(tmp_path):
    """A two-image cell table read from Sm-BFO files."""
    src = tmp_path / "h5"
    src.mkdir()
    write_uc(src / "Sm_0_0_UCParameterization.h5", make_raw(1))
    write_uc(src / "Sm_7_0_UCParameterization.h5", make_raw(2))
    return read_quiet(src)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_table_round_trip(tmp_path, series, suffix):
    path = write_table(series, tmp_path / f"cells{suffix}")
    back = read_quiet(path)
    # Values, dtypes and coords are exact; attrs name the new file (and CSV keeps no ab_offset).
    xr.testing.assert_equal(back, series)
    for name in ("row", "col"):
        assert back[name].dtype == np.int64
    assert back["image"].dtype.kind == "U"
    assert back.attrs["source"].endswith(f"cells{suffix}")
    with pytest.raises(CellTableError, match="overwrite=True"):
        write_table(series, path)
    write_table(series, path, overwrite=True)


def test_csv_keeps_numeric_looking_image_labels_as_strings(tmp_path, series):
    ds = series.assign_coords(image=("cell", np.where(series["image"].values == "Sm_0_0", "007", "10")))
    back = read_quiet(write_table(ds, tmp_path / "cells.csv"))
    assert set(back["image"].values.tolist()) == {"007", "10"}


def test_missing_csv_column_is_named(tmp_path, series):
    df = to_frame(series).drop(columns=["Vol"])
    path = tmp_path / "partial.csv"
    df.to_csv(path, index=False)
    with pytest.raises(CellTableError) as err:
        read(path)
    msg = str(err.value)
    assert "partial.csv" in msg and "'Vol'" in msg and "'Px'" in msg  # also lists what is there


def test_non_numeric_csv_value_names_column_and_row(tmp_path, series):
    df = to_frame(series)
    df["alpha"] = df["alpha"].astype(object)
    df.loc[4, "alpha"] = "ninety"
    df.loc[9, "alpha"] = "n/a?"
    path = tmp_path / "typo.csv"
    df.to_csv(path, index=False)
    with pytest.raises(CellTableError, match=r"typo\.csv.*'alpha'.*'ninety'.*row 4 .*line 6"):
        read(path)


def test_csv_nonfinite_cells_are_dropped_and_counted(tmp_path, series):
    df = to_frame(series)
    df.loc[0, "Px"] = np.inf
    df.loc[N + 1, "b"] = np.nan
    path = tmp_path / "holes.csv"
    df.to_csv(path, index=False)
    with pytest.warns(NonFiniteWarning):
        ds = read(path)
    assert ds.sizes["cell"] == 2 * N - 2
    assert json.loads(ds.attrs["nonfinite_dropped"]) == {"Sm_0_0": {"Px": 1}, "Sm_7_0": {"b": 1}}


# --- netCDF ---------------------------------------------------------------------------------------


def test_netcdf_round_trip_is_identical(tmp_path, series):
    path = write_netcdf(series, tmp_path / "cells.nc")
    back = read_quiet(path)
    named = {"source", "sources"}  # the table now names the file it was read from, keeping its origin
    xr.testing.assert_identical(back.assign_attrs({k: series.attrs[k] for k in named}), series)
    assert back["row"].dtype == np.int64 and back["image"].dtype.kind == "U"
    assert {k: v for k, v in back.attrs.items() if k not in named} == \
        {k: v for k, v in series.attrs.items() if k not in named}
    assert back.attrs["source"] == f"{path.resolve()} (from {series.attrs['source']})"
    sources = json.loads(back.attrs["sources"])
    assert sources == {k: f"{path.resolve()} (from {v})" for k, v in json.loads(series.attrs["sources"]).items()}
    # read again and again: named once, not nested
    again = write_netcdf(back, tmp_path / "again.nc")
    assert read_quiet(again).attrs["source"] == f"{again.resolve()} (from {back.attrs['source']})"
    assert read_quiet(path).attrs["source"] == back.attrs["source"]


def test_errors_about_a_netcdf_table_name_the_file_not_its_recorded_origin(tmp_path):
    from causalcrystal.discovery import standardize
    from causalcrystal.simulator import simulate

    sim = simulate((0.0,), shape=(12, 12), seed=fixed_seed(0))
    sim["alpha"].values[:] = 89.5
    path = write_netcdf(sim, tmp_path / "my_cells.nc")
    with pytest.raises(CellTableError, match=r"my_cells\.nc \(from causalcrystal\.simulator\).*no variation in 'alpha'"):
        standardize(read_quiet(path))


def test_netcdf_round_trip_of_make_cells_with_extra_variables(tmp_path):
    rng = np.random.default_rng(fixed_seed(0))
    ds = cells.make_cells(
        {name: rng.normal(size=6) for name in cells.DESCRIPTORS},
        image=np.array(["sim_a"] * 3 + ["sim_b"] * 3),
        sm_fraction=np.array([0.0] * 3 + [0.1] * 3),
        row=np.array([0, 0, 1, 0, 0, 1]),
        col=np.array([0, 1, 0, 0, 1, 0]),
        units={"a": "nm"},
        source="simulator",
    )
    ds["truth"] = (("effect", "cause"), rng.normal(size=(8, 8)))
    ds = ds.assign_coords(effect=list(cells.DESCRIPTORS), cause=list(cells.DESCRIPTORS))
    path = write_netcdf(ds, tmp_path / "sim.nc")
    back = read_quiet(path)
    assert back.attrs["source"] == f"{path.resolve()} (from simulator)"
    xr.testing.assert_identical(back.assign_attrs(source=ds.attrs["source"], sources=ds.attrs["sources"]), ds)
    assert back["a"].attrs["units"] == "nm"
    assert read_netcdf(path)["truth"].dims == ("effect", "cause")


def test_write_netcdf_refuses_to_overwrite(tmp_path, series):
    path = write_netcdf(series, tmp_path / "cells.nc")
    before = path.read_bytes()
    with pytest.raises(CellTableError, match=r"cells\.nc.*overwrite=True"):
        write_netcdf(series.isel(cell=slice(0, 5)), path)
    assert path.read_bytes() == before
    write_netcdf(series.isel(cell=slice(0, 5)), path, overwrite=True)
    assert read_netcdf(path).sizes["cell"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.nc", "h5"]  # no temp files left


def test_netcdf_without_the_contract_names_the_file(tmp_path):
    path = tmp_path / "other.nc"
    xr.Dataset({"T": ("time", np.arange(3.0))}).to_netcdf(path, engine="h5netcdf")
    with pytest.raises(CellTableError, match=r"other\.nc.*'cell'"):
        read(path)


def test_folder_of_tables_and_mixed_list(tmp_path, series):
    tables = tmp_path / "tables"
    only_0 = series.isel(cell=series["image"].values == "Sm_0_0")
    only_7 = series.isel(cell=series["image"].values == "Sm_7_0")
    write_table(only_0, tables / "a.csv")
    write_netcdf(only_7, tables / "b.nc")
    ds = read_quiet(tables)
    assert cells.images(ds)["sm_fraction"].values.tolist() == [0.0, 0.07]
    np.testing.assert_array_equal(ds["I14"], series["I14"])
    with pytest.raises(CellTableError, match="sm_fraction= only applies"):
        read(tables, sm_fraction=0.1)


@pytest.mark.parametrize("ext", ["csv", "parquet"])
def test_tables_keep_the_descriptors_units(tmp_path, ext):
    """Issue 12: a CSV written in nm (or angstrom) used to read back labelled px."""
    from causalcrystal.io import read, write_table
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(6, 6), seed=1)
    cells["a"].attrs["units"] = "nm"
    p = write_table(cells, tmp_path / f"t.{ext}")
    back = read(p)
    assert back["a"].attrs["units"] == "nm" and back["Vol"].attrs["units"] == "angstrom^2"
    np.testing.assert_allclose(back["a"].values, cells["a"].values)


def test_a_damaged_units_line_is_named(tmp_path):
    from causalcrystal.cells import CellTableError
    from causalcrystal.io import read, write_table
    from causalcrystal.simulator import simulate

    p = write_table(simulate((0.0,), shape=(6, 6), seed=1), tmp_path / "t.csv")
    text = p.read_text().splitlines()
    p.write_text("\n".join(['# causalcrystal units: {"a": "angstrom", "zz": "px"}'] + text[1:]) + "\n")
    with pytest.raises(CellTableError, match=r"t\.csv.*units.*\['zz'\]"):
        read(p)


def test_an_image_can_be_left_out_of_the_inputs(tmp_path, series, capsys):
    """``read(..., exclude_images=...)`` / ``--exclude-image``: the messages about a constant or broken
    image say "leave that image out", which used to mean editing files by hand."""
    from causalcrystal.cli import inspect_text, main

    labels = list(dict.fromkeys(series["image"].values.astype(str).tolist()))
    bad = series.copy(deep=True)
    bad["Px"].values[bad["image"].values == labels[1]] = np.nan    # a broken column in the second image
    path = write_netcdf(bad, tmp_path / "two.nc")
    with pytest.raises(CellTableError, match=rf"would remove whole image.*--exclude-image {labels[1]}"):
        read(path)
    one = read_quiet(path, exclude_images=[labels[1]])                # left out before the non-finite policy
    assert set(one["image"].values.astype(str)) == {labels[0]}
    assert one.sizes["cell"] == int((series["image"].values == labels[0]).sum())
    assert json.loads(one.attrs["excluded_images"]) == [labels[1]]
    assert f"left out (--exclude-image): {labels[1]}" in inspect_text(one)
    with pytest.raises(CellTableError, match=rf"no image labelled 'nope' to exclude; the images are '{labels[0]}'"):
        read(path, exclude_images=["nope"])
    with pytest.raises(CellTableError, match="leaves no image"):
        read(path, exclude_images=labels)
    assert main(["inspect", str(path), "--exclude-image", f"{labels[1]}, "]) == 0    # the command line's way
    assert f"1 image(s), {one.sizes['cell']} cells" in capsys.readouterr().out
    # the option reaches `compare` only with input files (the run's cells.nc is what it was made from)
    assert main(["compare", str(tmp_path), "--exclude-image", labels[1]]) == 2
    assert "--exclude-image applies to input files given here" in capsys.readouterr().err
