"""Input guards: hostile or mistaken inputs end in a CellTableError that names the file (and the
dataset, column, attribute or image), the cause and the fix -- never a MemoryError, a traceback
from numpy/h5py/xarray, or a silently wrong table.

One test per kind of fault (issue 11, input side); each uses tiny synthetic files in tmp_path.
The adversarial catalogue in ../shared/cases/adversarial/ has one example of each kind.
"""

from __future__ import annotations

import json
import os
import re
import time
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr

from causalcrystal import cells
from causalcrystal.cells import CellTableError, make_cells
from causalcrystal.cli import build_parser, inspect_text, main
from causalcrystal.io import read, write_netcdf
from causalcrystal.tiling import make_tiles

ROWS, COLS = 4, 5
N = ROWS * COLS


def raw_h5(n_rows: int = ROWS, n_cols: int = COLS, seed: int = 0) -> dict[str, np.ndarray]:
    """Per-cell arrays of a Sm-BFO file in the public layout (scalars (N,), vectors (2, N))."""
    rng = np.random.default_rng(seed)
    n = n_rows * n_cols
    rr, cc_ = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    raw = {f"I{k}": rng.uniform(100, 200, n) for k in range(1, 6)}
    raw.update(
        a=np.stack([rng.normal(10, 0.1, n), rng.normal(0.5, 0.1, n)]),
        b=np.stack([rng.normal(-0.3, 0.1, n), rng.normal(10.5, 0.1, n)]),
        ab=np.stack([rr.ravel(), cc_.ravel()]).astype(np.int64),
        alpha=rng.normal(90, 0.5, n),
        Vol=rng.normal(105, 1, n),
        Pxy=rng.normal(0, 0.3, (2, n)),
        xy_COM=np.stack([cc_.ravel() * 10.0, rr.ravel() * 10.0]),
    )
    return raw


def write_h5(path, raw=None, **override):
    raw = dict(raw_h5() if raw is None else raw)
    raw.update(override)
    with h5py.File(path, "w") as f:
        for key, val in raw.items():
            f.create_dataset(key, data=np.asarray(val))
    return path


def table(labels=("img0", "img1"), fractions=(0.0, 0.1), rows=ROWS, cols=COLS, seed=0) -> pd.DataFrame:
    """A flat cell table (CSV/Parquet columns) with one grid per image."""
    rng = np.random.default_rng(seed)
    parts = []
    for lab, frac in zip(labels, fractions):
        rr, cc_ = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        n = rows * cols
        d = {"image": lab, "sm_fraction": frac, "row": rr.ravel(), "col": cc_.ravel()}
        d.update({v: rng.normal(10, 1, n) for v in cells.DESCRIPTORS})
        parts.append(pd.DataFrame(d))
    return pd.concat(parts, ignore_index=True)


def cell_table(rows, cols, label="img0") -> xr.Dataset:
    rows, cols = np.asarray(rows), np.asarray(cols)
    n = rows.size
    rng = np.random.default_rng(1)
    return make_cells({v: rng.normal(size=n) for v in cells.DESCRIPTORS}, image=label, sm_fraction=0.1,
                      row=rows, col=cols, source="memory")


def grid(n_rows, n_cols):
    r, c = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    return r.ravel(), c.ravel()


def assert_clear(err: pytest.ExceptionInfo, *parts: str) -> str:
    """The message names every part, prints (UTF-8), and shows no numpy scalar reprs."""
    msg = str(err.value)
    for part in parts:
        assert part in msg, (part, msg)
    msg.encode("utf-8")
    assert "np.str_" not in msg and "np.float64" not in msg and "np.int64" not in msg, msg
    return msg


# --- 1. memory bombs: declared sizes and index ranges are checked before anything is allocated ---


def test_h5_declared_sizes_are_checked_before_reading(tmp_path):
    # One dataset declares 4e9 values in a tiny file (chunked, compressed, never written).
    odd = tmp_path / "odd" / "Sm_7_0_UCParameterization.h5"
    odd.parent.mkdir()
    raw = raw_h5()
    with h5py.File(odd, "w") as f:
        for key, val in raw.items():
            if key == "I5":
                f.create_dataset(key, shape=(4_000_000_000,), dtype="f8", chunks=(1_000_000,), compression="gzip")
            else:
                f.create_dataset(key, data=val)
    assert odd.stat().st_size < 200_000
    t0 = time.perf_counter()
    with pytest.raises(CellTableError) as err:
        read(odd)
    assert_clear(err, "Sm_7_0_UCParameterization.h5", "'I5'", "(4000000000,)", f"({N},)", "Nothing was read")
    # Every dataset declares the same huge N: consistent shapes, but the file cannot hold them.
    same = tmp_path / "same" / "Sm_7_0_UCParameterization.h5"
    same.parent.mkdir()
    with h5py.File(same, "w") as f:
        for key, val in raw.items():
            shape = (10**9,) if np.ndim(val) == 1 else (2, 10**9)
            f.create_dataset(key, shape=shape, dtype="f8", chunks=(1, 10**6) if len(shape) == 2 else (10**6,))
    with pytest.raises(CellTableError) as err:
        read(same)
    assert_clear(err, "Sm_7_0_UCParameterization.h5", "1,000,000,000 cells", "bytes", "re-export")
    assert time.perf_counter() - t0 < 5


def test_netcdf_declared_sizes_are_checked_before_loading(tmp_path):
    import h5netcdf

    path = tmp_path / "cells.nc"
    with h5netcdf.File(path, "w") as f:
        f.dimensions = {"cell": 3_000_000_000}
        for k in cells.DESCRIPTORS:
            f.create_variable(k, ("cell",), dtype="f8", chunks=(1_000_000,), compression="gzip")
    with pytest.raises(CellTableError) as err:
        read(path)
    assert_clear(err, "cells.nc", "cell=3,000,000,000", "GiB", "write_netcdf")


@pytest.mark.parametrize("fmt", ["csv", "h5", "memory"])
def test_stray_lattice_index_is_refused_without_a_dense_grid(tmp_path, fmt):
    r, c = grid(8, 8)
    r, c = r.copy(), c.copy()
    r[-1] = c[-1] = 60_000
    t0 = time.perf_counter()
    with pytest.raises(CellTableError) as err:
        if fmt == "csv":
            df = table(("img0",), (0.1,), 8, 8)
            df["row"], df["col"] = r, c
            df.to_csv(tmp_path / "cells.csv", index=False)
            read(tmp_path / "cells.csv")
        elif fmt == "h5":
            read(write_h5(tmp_path / "Sm_7_0_UCParameterization.h5", raw_h5(8, 8), ab=np.stack([r, c])))
        else:
            make_tiles(cell_table(r, c), 4)
    assert_clear(err, "'img0'" if fmt != "h5" else "'Sm_7_0'", "64 cells", "row indices jump from 7 to 60000",
                 "stray")
    assert time.perf_counter() - t0 < 5


def test_index_magnitudes_beyond_exact_integers_are_refused(tmp_path):
    raw = raw_h5()
    ab = raw["ab"].astype(float)
    ab[0, 0] = 1e20  # overflows int64
    with pytest.raises(CellTableError) as err:
        read(write_h5(tmp_path / "Sm_7_0_UCParameterization.h5", raw, ab=ab))
    assert_clear(err, "Sm_7_0_UCParameterization.h5", "'ab'", "1e+20")
    df = table(("img0",), (0.1,))
    df["row"] = df["row"] + 2**62  # not exact in float64: neighbours would collide
    df.to_csv(tmp_path / "cells.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "cells.csv")
    assert_clear(err, "cells.csv", "'row'", "2^53", "line 2")


def test_tiles_of_a_grid_with_gaps_still_work():
    # Real gaps (a lost row every 4) are not "sparse": tiling proceeds (and says the rows are empty).
    from causalcrystal.cells import GridGapWarning

    r, c = grid(16, 16)
    keep = r % 4 != 3
    with pytest.warns(GridGapWarning, match="have no cell"):
        tiles = make_tiles(cell_table(r[keep], c[keep]), 8, min_cells=1)
    assert tiles.sizes["tile"] == 9


# --- 2. silent wrong results become errors ------------------------------------------------------


def test_folder_mixing_kinds_is_refused_not_half_read(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_h5(mixed / "Sm_10_0_UCParameterization.h5")
    table(("Sm_0_0",), (0.0,)).to_csv(mixed / "Sm_0_0.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(mixed)
    assert_clear(err, "mixed", "Sm_10_0_UCParameterization.h5", "Sm_0_0.csv", "explicitly")
    # Both parts can still be read by naming them.
    ds = read([mixed / "Sm_10_0_UCParameterization.h5", mixed / "Sm_0_0.csv"])
    assert sorted(set(ds["image"].values.tolist())) == ["Sm_0_0", "Sm_10_0"]

    renamed = tmp_path / "renamed"
    renamed.mkdir()
    write_h5(renamed / "Sm_10_0.h5")
    table(("Sm_0_0",), (0.0,)).to_csv(renamed / "Sm_0_0.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(renamed)
    assert_clear(err, "renamed", "Sm_10_0.h5", "_UCParameterization.h5", "rename")
    (renamed / "Sm_0_0.csv").unlink()
    with pytest.raises(CellTableError, match="Sm_10_0.h5"):
        read(renamed)  # a lone non-UC .h5 is named too, not "no cell files"
    assert read(renamed / "Sm_10_0.h5").sizes["cell"] == N  # read when given by name

    # A HAADF companion next to its cell file is expected, not an "other .h5".
    ok = tmp_path / "ok"
    ok.mkdir()
    write_h5(ok / "Sm_10_0_UCParameterization.h5")
    with h5py.File(ok / "Sm_10_0_HAADF.h5", "w") as f:
        f.create_dataset("MainImage", data=np.zeros((8, 8)))
    assert read(ok).sizes["cell"] == N

    nested = tmp_path / "nested"
    (nested / "sub").mkdir(parents=True)
    with pytest.raises(CellTableError) as err:
        read(nested)
    assert_clear(err, "no cell files", "subfolders", "sub")


def test_two_cell_image_with_square_datasets_is_refused(tmp_path):
    two = {"I1": [1.0, 2.0], "I2": [1.0, 2.0], "I3": [1.0, 2.0], "I4": [1.0, 2.0], "I5": [5.0, 6.0],
           "a": [[4.0, 0.0], [4.1, 0.0]], "b": [[0.0, 4.0], [0.0, 4.2]], "ab": [[0, 0], [0, 1]],
           "alpha": [90.0, 91.0], "Vol": [16.0, 17.0], "Pxy": [[0.1, 0.2], [0.3, 0.4]],
           "xy_COM": [[0.0, 0.0], [10.0, 0.0]]}
    with pytest.raises(CellTableError) as err:
        read(write_h5(tmp_path / "Sm_10_0_UCParameterization.h5", two))
    assert_clear(err, "Sm_10_0_UCParameterization.h5", "2 cells", "(2, N)", "(N, 2)", "CSV")
    # Three cells: (N, 2) is unambiguous and read the right way round.
    raw = raw_h5(1, 3)
    flipped = {k: (v.T if np.ndim(v) == 2 else v) for k, v in raw.items()}
    a = read(write_h5(tmp_path / "Sm_7_0_UCParameterization.h5", raw))
    (tmp_path / "x").mkdir()
    b = read(write_h5(tmp_path / "x" / "Sm_7_0_UCParameterization.h5", flipped))
    np.testing.assert_array_equal(a["Px"].values, b["Px"].values)


def test_image_lost_to_an_all_nan_column_is_an_error(tmp_path):
    df = table()
    df.loc[df.image == "img1", "alpha"] = np.nan
    df.loc[0, "Px"] = np.nan  # a few bad cells elsewhere are still only a warning
    path = tmp_path / "series.csv"
    df.to_csv(path, index=False)
    with pytest.raises(CellTableError) as err:
        read(path)
    assert_clear(err, "series.csv", "'img1'", "['alpha']", "every cell", "leave the image out")
    kept = read(path, nonfinite="keep")  # what inspect reads: the table, and a warning line
    text = inspect_text(kept)
    assert "WARNING: image img1: alpha non-finite in every cell" in text
    # Files of a series: the message names the file the image came from.
    df[df.image == "img0"].to_csv(tmp_path / "a.csv", index=False)
    df[df.image == "img1"].to_csv(tmp_path / "b.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read([tmp_path / "a.csv", tmp_path / "b.csv"])
    assert_clear(err, "'img1'", "b.csv", "alpha")


@pytest.mark.parametrize("value", [1.0, 0.6, 5.0])
def test_sm_fraction_that_looks_like_a_percentage_is_refused(tmp_path, value):
    df = table(("img0",), (value,))
    df.to_csv(tmp_path / "cells.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "cells.csv")
    assert_clear(err, "cells.csv", "'img0'", "0.07")
    if value <= 1:
        assert_clear(err, "0.01 for 1 %")
    path = write_h5(tmp_path / "Sm_7_0_UCParameterization.h5")
    with pytest.raises(CellTableError, match="percentage"):
        read(path, sm_fraction=1)
    with pytest.raises(CellTableError) as err:
        read(write_h5(tmp_path / "Sm_60_0_UCParameterization.h5"))
    assert_clear(err, "Sm_60_0_UCParameterization.h5", "60 %", "Rename")
    assert read(path, sm_fraction=0.2)["sm_fraction"].values[0] == 0.2


def test_pixel_coordinates_given_as_lattice_indices_are_named(tmp_path):
    df = table()
    df["row"] *= 10
    df["col"] *= 10
    df.to_csv(tmp_path / "pixels.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "pixels.csv")
    assert_clear(err, "pixels.csv", "'img0'", "pixel coordinates", "divide row by 10 and col by 10")
    r, c = grid(5, 5)
    with pytest.raises(CellTableError, match="pixel coordinates"):
        make_tiles(cell_table(r * 12, c * 8), 4)
    # Every other row only (one axis steps by 1) is a legitimate subset, with its empty rows named.
    from causalcrystal.cells import GridGapWarning

    with pytest.warns(GridGapWarning, match="4 of the 9 rows"):
        assert make_tiles(cell_table(r * 2, c), 2, min_cells=1).sizes["tile"] > 0


# --- 3. clear errors instead of crashes ---------------------------------------------------------


def test_undecodable_file_name_bytes_never_crash(tmp_path, capsys):
    folder = tmp_path / "latin1"
    folder.mkdir()
    name = os.fsencode(folder) + b"/Sm_7_0_\xe9chantillon_UCParameterization.h5"
    write_h5(os.fsdecode(name))
    write_h5(folder / "Sm_10_0_UCParameterization.h5", raw_h5(seed=1))
    ds = read(folder)
    labels = sorted(set(ds["image"].values.tolist()))
    assert labels == ["Sm_10_0", "Sm_7_0_\\xe9chantillon"]
    inspect_text(ds).encode("utf-8")
    write_netcdf(ds, tmp_path / "out.nc")  # labels and attrs can be written
    assert sorted(set(read(tmp_path / "out.nc")["image"].values.tolist())) == labels
    assert main(["inspect", str(folder)]) == 0
    assert "Sm_7_0_\\xe9chantillon" in capsys.readouterr().out
    # Errors about such a file print too.
    bad = os.fsdecode(os.fsencode(tmp_path) + b"/\xff_UCParameterization.h5")
    with open(bad, "wb") as fh:
        fh.write(b"not hdf5")
    with pytest.raises(CellTableError) as err:
        read(bad)
    assert_clear(err, "\\xff_UCParameterization.h5", "cannot open as HDF5")
    assert main(["inspect", bad]) == 2
    assert "\\xff" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("attr", "value", "expect"),
    [
        ("nonfinite_dropped", "[1, 2]", "JSON list"),
        ("nonfinite_dropped", "[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("sources", "__import__('os').system('touch PWNED')", "not valid JSON"),
        ("haadf", '{"img0": 3}', "entry 'img0'"),
        ("ab_offset", '{"img0": [1]}', "entry 'img0'"),
        ("nonfinite_dropped", '{"img0": {"alpha": "many"}}', "entry 'img0'"),
    ],
)
def test_malformed_json_attrs_of_a_netcdf_are_named(tmp_path, attr, value, expect):
    r, c = grid(ROWS, COLS)
    ds = cell_table(r, c)
    ds.attrs[attr] = value
    path = write_netcdf(ds, tmp_path / "cells.nc")
    with pytest.raises(CellTableError) as err:
        read(path)
    assert_clear(err, "cells.nc", f"attribute {attr!r}", expect, "write_netcdf")
    assert not (tmp_path / "PWNED").exists()


def test_missing_sm_fraction_message_gives_fixes_that_exist(tmp_path):
    options = set()
    for action in build_parser()._subparsers._group_actions[0].choices["run"]._actions:
        options.update(action.option_strings)
    for name in ("sample_UCParameterization.h5", "run_Sm_7_0_from_Sm_20_1_UCParameterization.h5"):
        with pytest.raises(CellTableError) as err:
            read(write_h5(tmp_path / name))
        msg = assert_clear(err, name, "Rename", "Sm_7_0_UCParameterization.h5", "sm_fraction=0.07")
        assert set(re.findall(r"--[a-z][a-z-]*", msg)) <= options, msg


def test_messages_show_labels_not_numpy_reprs(tmp_path):
    df = table()
    dup = pd.concat([df, df.iloc[:2]])
    dup.to_csv(tmp_path / "dup.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "dup.csv")
    assert_clear(err, "dup.csv", "image 'img0'")
    mixed = df.copy()
    mixed.loc[3, "sm_fraction"] = 0.2
    mixed.to_csv(tmp_path / "mixed.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "mixed.csv")
    assert_clear(err, "image 'img0'", "same value")
    half = df.astype({"row": float})
    half.loc[2, "row"] = 0.5
    half.to_csv(tmp_path / "half.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "half.csv")
    assert_clear(err, "half.csv", "'row'", "has 0.5")
    df.to_csv(tmp_path / "one.csv", index=False)
    df.to_csv(tmp_path / "two.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read([tmp_path / "one.csv", tmp_path / "two.csv"])
    assert_clear(err, "'img0'", "one.csv", "two.csv")


def test_table_reader_explains_common_csv_mistakes(tmp_path):
    df = table(("NA",), (0.1,))  # an image really called "NA" is a label, not a missing value
    df.to_csv(tmp_path / "na.csv", index=False)
    assert read(tmp_path / "na.csv")["image"].values[0] == "NA"
    df.to_csv(tmp_path / "semi.csv", index=False, sep=";")
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "semi.csv")
    assert_clear(err, "semi.csv", "';'", "comma-separated")
    df.rename(columns={"I14": "i14", "Vol": "vol"}).to_csv(tmp_path / "case.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "case.csv")
    assert_clear(err, "case.csv", "'i14' -> 'I14'", "'vol' -> 'Vol'")
    df.iloc[:0].to_csv(tmp_path / "header.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "header.csv")
    assert_clear(err, "header.csv", "no data rows")
    pct = df.astype({"sm_fraction": object})
    pct["sm_fraction"] = "7%"
    pct.to_csv(tmp_path / "pct.csv", index=False)
    with pytest.raises(CellTableError) as err:
        read(tmp_path / "pct.csv")
    assert_clear(err, "pct.csv", "'7%'", "0.07 for 7 %")


def test_damaged_values_are_refused(tmp_path):
    raw = raw_h5()
    (tmp_path / "a").mkdir()
    with pytest.raises(CellTableError) as err:
        read(write_h5(tmp_path / "a" / "Sm_7_0_UCParameterization.h5", raw, Vol=raw["Vol"] + 1j))
    assert_clear(err, "'Vol'", "complex")
    i1 = raw["I1"].copy()
    i1[3] = 2.7e258  # what bytes overwritten in the middle of a file look like
    with pytest.raises(CellTableError) as err:
        read(write_h5(tmp_path / "Sm_7_0_UCParameterization.h5", raw, I1=i1))
    assert_clear(err, "Sm_7_0_UCParameterization.h5", "'I14'", "corrupt")


def test_netcdf_time_units_on_a_descriptor_do_not_turn_values_into_dates(tmp_path):
    r, c = grid(ROWS, COLS)
    ds = cell_table(r, c)
    ds["Px"].attrs["units"] = "days since 2000-01-01"
    back = read(write_netcdf(ds, tmp_path / "cells.nc"))
    assert back["Px"].dtype == np.float64
    np.testing.assert_array_equal(back["Px"].values, ds["Px"].values)


def test_guards_do_not_warn_on_a_clean_series(tmp_path):
    folder = tmp_path / "clean"
    folder.mkdir()
    write_h5(folder / "Sm_0_0_UCParameterization.h5", raw_h5(seed=1))
    write_h5(folder / "Sm_20_0_UCParameterization.h5", raw_h5(seed=2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = read(folder)
    assert json.loads(ds.attrs["nonfinite_dropped"]) == {}
    assert cells.images(ds)["sm_fraction"].values.tolist() == [0.0, 0.2]


def test_a_stray_row_index_beyond_empty_rows_is_named():
    """c18b: one cell with row -5 made a 24 x 24 image a 29 x 24 grid (and an extra tile), silently."""
    from causalcrystal.cells import GridGapWarning, validate
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(24, 24), seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridGapWarning)
        validate(cells)  # a clean grid: nothing to say
    cells["row"].values[0] = -5
    with pytest.warns(GridGapWarning, match=r"row indices jump from -5 to 0 \(4 empty rows\), with only 1 of 576"):
        validate(cells)
    # said once: a run validates its table ~6 times (it was printed 11 times per run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridGapWarning)
        validate(cells)
        validate(cells.copy(deep=True))


def test_rows_without_cells_inside_the_grid_are_reported_once():
    """Case bughunt 10c: every 4th row lost (a scan glitch) left 48 of 64 cells per tile without a
    word. The holes are named (interior ones only: the grid's edge is not a hole), once per image."""
    from causalcrystal.cells import GridGapWarning, validate
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(16, 16), seed=2)
    cells = cells.isel(cell=np.flatnonzero(cells["row"].values % 4 != 3))
    with pytest.warns(GridGapWarning, match=r"3 of the 15 rows inside its grid have no cell \(rows 3, 7, 11\)"):
        validate(cells)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridGapWarning)
        validate(cells)
        edge = simulate((0.0,), shape=(16, 16), seed=3)
        validate(edge.isel(cell=np.flatnonzero(edge["row"].values < 12)))   # a crop: no hole


def test_netcdf_round_trip_does_not_decode_packing_attrs_twice(tmp_path):
    """A 'scale_factor' left in a variable's attrs (the values in memory are decoded) multiplied the
    values on the next read."""
    from causalcrystal.io import read, write_netcdf
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(6, 6), seed=1)
    cells["Vol"].attrs["scale_factor"] = 1000.0
    back = read(write_netcdf(cells, tmp_path / "rt.nc"))
    np.testing.assert_allclose(back["Vol"].values, cells["Vol"].values)


def test_quantised_or_nearly_constant_descriptors_are_named_by_inspect_and_run():
    """Bughunt 11 re-run: alpha exported in 0.5 degree steps (4 values over an image) or constant but
    for one cell ran with only 'noise misfit' flags to show for it; `inspect` said nothing about a
    constant alpha that `run` then refused."""
    from causalcrystal.cli import inspect_text
    from causalcrystal.discovery import coarse_descriptors
    from causalcrystal.simulator import simulate

    cells = simulate((0.0, 0.1, 0.2), shape=(12, 12), seed=4)
    assert coarse_descriptors(cells) == []          # continuous simulated descriptors: nothing to say
    img = cells["image"].values.astype(str)
    alpha = cells["alpha"].values.copy()
    first, second, third = (img == lab for lab in dict.fromkeys(img.tolist()))
    alpha[first] = np.round(alpha[first] * 2) / 2
    alpha[second] = 90.0
    alpha[np.flatnonzero(second)[17]] = 90.5
    cells["alpha"].values[:] = alpha
    said = coarse_descriptors(cells)
    assert len(said) == 2 and all("'alpha'" in t and "--derived alpha" in t for t in said)
    assert "distinct values over 144 cells" in said[0] and "143 of its 144 cells = 90 (nearly constant)" in said[1]
    assert "without it, tiles where it is exactly constant are not fitted" in said[1]
    assert "leave it out of the SEM with --derived alpha" in said[0]
    assert coarse_descriptors(cells, skip=["alpha"]) == []   # declared derived: not said again
    cells["alpha"].values[third] = 90.0
    lab3 = img[third][0]
    text = inspect_text(cells)
    assert ("alpha is constant (90 in all 144 cells); `run` refuses the whole table unless this image is left out "
            f"(--exclude-image {lab3})" in text and "(--derived alpha)" in text)
    assert text.count("WARNING") == 3
