"""From a real STEM image to the report (issue 12): the ADF-STEM image of SrTiO3 along [110] that
ships inside the Atomap wheel (400 x 380 px, 0.0093263 nm per px, calibration stored without a
unit), through `columns` -> `descriptors` -> `run --tile-size whole` -> `report`.

SrTiO3 is cubic (a = 3.905 angstrom) and paraelectric at room temperature: in [110] the cell is
a x a sqrt(2) with alpha = 90 deg and no B-site offset, a null case for the polarisation. Runs when
the `atomap` extra is installed (`.ci/run` installs it); the [110] / [001] geometry itself is tested
without Atomap on synthetic lattices in tests/test_atoms.py.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import fixed_seed

from causalcrystal.cli import main

A_SRTIO3 = 3.905  # angstrom, room temperature (cubic Pm-3m)


@pytest.fixture(scope="module")
def adf_image():
    atomap = pytest.importorskip("atomap")
    path = Path(atomap.__file__).parent / "tests" / "datasets" / "test_ADF_cropped.hdf5"
    if not path.is_file():
        pytest.skip(f"the Atomap test image is not in this install ({path})")
    return path


@pytest.fixture(scope="module")
def columns(adf_image, tmp_path_factory):
    out = tmp_path_factory.mktemp("columns") / "sto.nc"
    assert main(["columns", str(adf_image), "--out", str(out), "--unit", "nm"]) == 0
    return out


def test_columns_of_the_real_image(columns):
    from causalcrystal.columns import read_columns

    cols = read_columns(columns)
    lab = cols["sublattice"].values.astype(str)
    # the field of view holds 13 x 9 Sr columns and 13 x 8 Ti columns (counted on the figure)
    assert (lab == "A").sum() == 117 and (lab == "B").sum() == 104
    assert cols.attrs["pixel_unit"] == "nm" and cols.attrs["pixel_size"] == pytest.approx(0.0093263, rel=1e-4)
    assert (cols["intensity"].values[lab == "A"].mean() > 2 * cols["intensity"].values[lab == "B"].mean())  # Z 38 vs 22
    assert columns.with_suffix(".png").stat().st_size > 10_000  # the figure to check the lattice by eye


def test_descriptors_of_the_real_image_are_those_of_srtio3(columns, tmp_path):
    cells_nc = tmp_path / "cells.nc"
    assert main(["descriptors", str(columns), "--out", str(cells_nc), "--label", "STO_110"]) == 0
    cells = xr.load_dataset(cells_nc)
    atoms = json.loads(cells.attrs["atoms"])
    assert atoms["projection"] == "110"  # found from where the B columns sit, not told
    assert cells.sizes["cell"] >= 80
    assert cells["a"].attrs["units"] == "angstrom" and cells["alpha"].attrs["units"] == "deg"
    a, b = float(cells["a"].median()), float(cells["b"].median())
    assert abs(a / A_SRTIO3 - 1) < 0.01
    assert abs(b / (A_SRTIO3 * np.sqrt(2)) - 1) < 0.01
    assert abs(float(cells["alpha"].median()) - 90.0) < 0.5
    # paraelectric: no polarisation. The cell-mean offset is far below any ferroelectric one (BiFeO3's
    # B offset is ~0.3 angstrom) and each cell's is within the 0.05 angstrom the issue asks of |P|
    # (the column-fit precision on this image is ~0.02 angstrom, the sd of Px and Py)
    P = np.hypot(cells["Px"].values, cells["Py"].values)
    assert abs(float(cells["Px"].mean())) < 0.02 and abs(float(cells["Py"].mean())) < 0.02
    assert np.median(P) < 0.05


def test_real_image_whole_path_to_the_report(columns, tmp_path):
    """columns -> descriptors -> one whole-image tile -> report, all from the command line."""
    cells_nc = tmp_path / "cells.nc"
    run = tmp_path / "run"
    assert main(["descriptors", str(columns), "--out", str(cells_nc), "--label", "STO_110"]) == 0
    assert main(["run", str(cells_nc), "--out", str(run), "--tile-size", "whole", "--quiet", "--workers", "1",
                 "--seed", str(fixed_seed(0)), "--draws", "300", "--image-bootstrap", "20"]) == 0
    summary = __import__("pandas").read_csv(run / "summary.csv")
    assert set(summary["tile"]) == {0} and len(summary) > 0
    assert main(["report", str(run), "--quiet"]) == 0
    html = (run / "report.html").read_text(encoding="utf-8")
    assert "data-sections-failed='0'" in html and "STO_110" in html
    # the polarisation of every cell drawn over the micrograph the columns came from
    assert "1 panel(s) over the micrograph" in html


def test_whole_image_tiles_for_small_images(tmp_path):
    """A 10 x 6 cell image has no 12 x 12 tile; --tile-size whole makes the image one tile."""
    from causalcrystal.engine import run_pipeline
    from causalcrystal.sem import load_spec
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(10, 6), seed=fixed_seed(3))
    kw = dict(n_bootstrap=2, image_bootstrap=5, spec=load_spec("mog").with_(draws=100, tune=100), workers=1,
              progress=False, log=lambda m: None)
    with pytest.raises(ValueError, match="no tile of size 12"):
        run_pipeline(cells, tmp_path / "r12", tile_size=12, **kw)
    assert not (tmp_path / "r12").exists()
    res = run_pipeline(cells, tmp_path / "whole", tile_size="whole", **kw)
    assert res["finished"] and res["n_tiles"] == 1
    with pytest.raises(ValueError, match="no image has 100 cells"):
        run_pipeline(cells, tmp_path / "big", tile_size="whole", min_cells=100, **kw)
