"""Tests of causalcrystal.atoms: descriptors from atom-column positions on synthetic perovskites
whose every descriptor is known by construction."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from conftest import fixed_seed

from causalcrystal.atoms import AtomIndexingWarning, descriptors_from_atoms, estimate_lattice_vectors
from causalcrystal.cells import DESCRIPTORS, CellTableError, validate

A, B, ALPHA, ROT = 3.9, 4.1, 88.0, 7.0  # lattice a, b (px), cell angle (deg), rotation (deg)
N_ROWS, N_COLS = 9, 12  # A columns along a2, along a1


def lattice(n_rows=N_ROWS, n_cols=N_COLS, a=A, b=B, alpha=ALPHA, rot=ROT, jitter=0.0, seed=0):
    """A sheared, rotated perovskite projection with known per-cell B offsets and intensities.

    Returns the arrays for descriptors_from_atoms plus the truth: A index (i, j) per A column, the
    B offset P[j, i] per cell and the lattice vectors.
    """
    rng = np.random.default_rng(seed)
    t, s = np.deg2rad(rot), np.deg2rad(rot + alpha)
    a1 = a * np.array([np.cos(t), np.sin(t)])
    a2 = b * np.array([np.cos(s), np.sin(s)])
    origin = np.array([20.0, 15.0])
    j, i = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    ij = np.column_stack([i.ravel(), j.ravel()])
    a_xy = origin + ij @ np.vstack([a1, a2])
    a_int = rng.uniform(800.0, 1200.0, size=len(a_xy))
    cell_j, cell_i = np.meshgrid(np.arange(n_rows - 1), np.arange(n_cols - 1), indexing="ij")
    cij = np.column_stack([cell_i.ravel(), cell_j.ravel()])
    offsets = rng.uniform(-0.25, 0.25, size=(len(cij), 2))
    b_xy = origin + (cij + 0.5) @ np.vstack([a1, a2]) + offsets
    b_int = rng.uniform(300.0, 500.0, size=len(b_xy))
    if jitter:
        a_xy = a_xy + rng.normal(0.0, jitter, size=a_xy.shape)
        b_xy = b_xy + rng.normal(0.0, jitter, size=b_xy.shape)
    truth = dict(a_ij=ij, cell_ij=cij, offsets=offsets, a1=a1, a2=a2, origin=origin)
    return a_xy, a_int, b_xy, b_int, truth


def expected(truth, a_int, b_int):
    """Descriptors per cell (keyed by (row, col)) implied by construction, noise-free."""
    lookup = {tuple(k): n for n, k in enumerate(truth["a_ij"])}
    out = {}
    for n, (i, j) in enumerate(truth["cell_ij"]):
        corners = [lookup[(i, j)], lookup[(i + 1, j)], lookup[(i, j + 1)], lookup[(i + 1, j + 1)]]
        centre = truth["origin"] + (i + 0.5) * truth["a1"] + (j + 0.5) * truth["a2"]
        out[(j, i)] = dict(
            I14=a_int[corners].sum(), I5=b_int[n], Px=truth["offsets"][n, 0], Py=truth["offsets"][n, 1],
            x=centre[0], y=centre[1],
        )
    return out


def by_cell(ds):
    return {(int(r), int(c)): k for k, (r, c) in enumerate(zip(ds["row"].values, ds["col"].values))}


def test_noise_free_lattice_recovers_every_descriptor():
    a_xy, a_int, b_xy, b_int, truth = lattice()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean lattice must not trigger any report
        ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, image="img7", sm_fraction=0.07)
    validate(ds)
    assert ds.sizes["cell"] == (N_ROWS - 1) * (N_COLS - 1)
    np.testing.assert_allclose(ds["a"], A, rtol=1e-9)
    np.testing.assert_allclose(ds["b"], B, rtol=1e-9)
    np.testing.assert_allclose(ds["alpha"], ALPHA, rtol=1e-9)
    np.testing.assert_allclose(ds["Vol"], A * B * np.sin(np.deg2rad(ALPHA)), rtol=1e-9)
    want = expected(truth, a_int, b_int)
    index = by_cell(ds)
    assert set(index) == set(want)
    for key, w in want.items():
        k = index[key]
        for name in ("I14", "I5"):
            assert ds[name].values[k] == pytest.approx(w[name], rel=1e-9)
        for name in ("Px", "Py", "x", "y"):
            assert ds[name].values[k] == pytest.approx(w[name], abs=1e-9 * A)
    assert set(ds["image"].values) == {"img7"}
    np.testing.assert_array_equal(ds["sm_fraction"], 0.07)
    assert ds["alpha"].attrs["units"] == "deg" and ds["Vol"].attrs["units"] == "px^2"
    report = json.loads(ds.attrs["atoms"])
    np.testing.assert_allclose(report["a1"], truth["a1"], atol=1e-9)
    np.testing.assert_allclose(report["a2"], truth["a2"], atol=1e-9)


def test_row_col_follow_position():
    """col counts cells along a1 (~x here), row along a2 (~y): the centroid projected on the basis
    is (col + 0.5, row + 0.5) from the lattice origin, and cells come sorted by (row, col)."""
    a_xy, a_int, b_xy, b_int, truth = lattice()
    ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    xy = np.column_stack([ds["x"].values, ds["y"].values])
    frac = np.linalg.solve(np.column_stack([truth["a1"], truth["a2"]]), (xy - truth["origin"]).T).T
    np.testing.assert_allclose(frac[:, 0], ds["col"].values + 0.5, atol=1e-9)
    np.testing.assert_allclose(frac[:, 1], ds["row"].values + 0.5, atol=1e-9)
    assert ds["row"].dtype == np.int64 and ds["row"].values.min() == 0 and ds["col"].values.min() == 0
    assert ds["row"].values.max() == N_ROWS - 2 and ds["col"].values.max() == N_COLS - 2
    key = ds["row"].values * 1000 + ds["col"].values
    assert np.all(np.diff(key) > 0)


def test_jittered_positions_within_jitter_derived_tolerance():
    sigma = 0.01
    a_xy, a_int, b_xy, b_int, truth = lattice(jitter=sigma, seed=fixed_seed(3))
    ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    assert ds.sizes["cell"] == (N_ROWS - 1) * (N_COLS - 1)
    # Per-cell errors, to first order in sigma: an edge length differs by the projection of two
    # independent jitters (sd sigma*sqrt2), a/b average two edges (sd sigma); the mean edge
    # vectors carry sd sigma per component, so alpha has sd <= sigma*sqrt2/min(a, b) rad and Vol
    # sd <= sigma*(a + b); P = B - mean of 4 A has sd sigma*sqrt(1 + 1/4). Bounds are 6 sd.
    z = 6.0
    np.testing.assert_allclose(ds["a"], A, atol=z * sigma)
    np.testing.assert_allclose(ds["b"], B, atol=z * sigma)
    np.testing.assert_allclose(ds["alpha"], ALPHA, atol=np.rad2deg(z * sigma * np.sqrt(2) / min(A, B)))
    np.testing.assert_allclose(ds["Vol"], A * B * np.sin(np.deg2rad(ALPHA)), atol=z * sigma * (A + B))
    want = expected(truth, a_int, b_int)
    index = by_cell(ds)
    got_p = np.array([[ds["Px"].values[index[k]], ds["Py"].values[index[k]]] for k in want])
    want_p = np.array([[w["Px"], w["Py"]] for w in want.values()])
    np.testing.assert_allclose(got_p, want_p, atol=z * sigma * np.sqrt(1.25))
    # Intensities do not depend on positions: exact.
    np.testing.assert_allclose([ds["I14"].values[index[k]] for k in want], [w["I14"] for w in want.values()])
    # ... and the mean over cells is much tighter than any single cell.
    assert abs(ds["a"].values.mean() - A) < z * sigma / np.sqrt(ds.sizes["cell"]) * 2


def test_missing_a_column_skips_exactly_its_four_cells():
    a_xy, a_int, b_xy, b_int, truth = lattice()
    full = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    gone = int(np.flatnonzero((truth["a_ij"] == [5, 4]).all(axis=1))[0])  # interior column i=5, j=4
    keep = np.arange(len(a_xy)) != gone
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # incomplete squares are not cells: nothing to report
        ds = descriptors_from_atoms(a_xy[keep], a_int[keep], b_xy, b_int)
    assert ds.sizes["cell"] == full.sizes["cell"] - 4
    missing = set(by_cell(full)) - set(by_cell(ds))
    assert missing == {(3, 4), (3, 5), (4, 4), (4, 5)}  # (row, col) of the cells touching (i=5, j=4)
    f, d = by_cell(full), by_cell(ds)
    for key in d:
        for name in DESCRIPTORS:
            assert ds[name].values[d[key]] == pytest.approx(full[name].values[f[key]], rel=1e-12, abs=1e-12)
    assert json.loads(ds.attrs["atoms"])["b_unused"] == 4


def test_missing_b_column_skips_that_cell_with_warning():
    a_xy, a_int, b_xy, b_int, truth = lattice()
    keep = np.arange(len(b_xy)) != 10
    with pytest.warns(AtomIndexingWarning, match="1 complete A squares without a B column"):
        ds = descriptors_from_atoms(a_xy, a_int, b_xy[keep], b_int[keep])
    assert ds.sizes["cell"] == (N_ROWS - 1) * (N_COLS - 1) - 1
    i, j = truth["cell_ij"][10]
    assert (j, i) not in by_cell(ds)
    assert json.loads(ds.attrs["atoms"])["cells_without_b"] == 1


def test_spurious_a_column_is_ignored_and_reported():
    a_xy, a_int, b_xy, b_int, truth = lattice()
    clean = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    # A false detection 0.4 cell off a site: not on the lattice, must not disturb any cell.
    extra = truth["origin"] + 3 * truth["a1"] + 2.6 * truth["a2"] + np.array([0.3, 0.0])
    with pytest.warns(AtomIndexingWarning, match="1 A columns off the lattice"):
        ds = descriptors_from_atoms(np.vstack([a_xy, extra]), np.append(a_int, 1e4), b_xy, b_int)
    for name in DESCRIPTORS:
        np.testing.assert_allclose(ds[name], clean[name], rtol=1e-12)
    assert json.loads(ds.attrs["atoms"])["a_off_lattice"] == 1


def test_shuffled_atom_order_gives_same_table():
    a_xy, a_int, b_xy, b_int, _ = lattice(jitter=0.02, seed=fixed_seed(5))
    ref = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    rng = np.random.default_rng(fixed_seed(1))
    pa, pb = rng.permutation(len(a_xy)), rng.permutation(len(b_xy))
    ds = descriptors_from_atoms(a_xy[pa], a_int[pa], b_xy[pb], b_int[pb])
    np.testing.assert_array_equal(ds["row"], ref["row"])  # output is sorted by (row, col)
    np.testing.assert_array_equal(ds["col"], ref["col"])
    for name in (*DESCRIPTORS, "x", "y"):
        np.testing.assert_allclose(ds[name], ref[name], rtol=1e-12, atol=1e-12)


def test_estimated_lattice_vectors_follow_orientation_convention():
    a_xy, *_, truth = lattice(jitter=0.02, seed=fixed_seed(2))
    a1, a2 = estimate_lattice_vectors(a_xy)
    np.testing.assert_allclose(a1, truth["a1"], atol=0.02)
    np.testing.assert_allclose(a2, truth["a2"], atol=0.02)
    # Whatever order and sign the lattice is generated with, a1 is the x-like one with a1_x > 0
    # and a2 points to +y.
    a_xy, *_ = lattice(rot=ROT + 180.0)
    a1, a2 = estimate_lattice_vectors(a_xy)
    np.testing.assert_allclose(a1, truth["a1"], atol=1e-9)
    np.testing.assert_allclose(a2, truth["a2"], atol=1e-9)


def test_explicit_lattice_vectors_define_row_col_and_alpha():
    a_xy, a_int, b_xy, b_int, truth = lattice()
    auto = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    # Rough vectors are enough: they are refined on the columns.
    given = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, a1=(3.8, 0.5), a2=(-0.2, 4.0))
    for name in (*DESCRIPTORS, "row", "col"):
        np.testing.assert_allclose(given[name], auto[name], rtol=1e-12)
    # Swapped vectors: rows and cols swap, a and b swap; P stays in the x, y frame.
    swapped = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, a1=truth["a2"], a2=truth["a1"])
    s, r = by_cell(swapped), by_cell(auto)
    assert set(s) == {(c, rr) for rr, c in r}
    for (rr, c), k in r.items():
        m = s[(c, rr)]
        assert swapped["a"].values[m] == pytest.approx(auto["b"].values[k], rel=1e-12)
        assert swapped["Px"].values[m] == pytest.approx(auto["Px"].values[k], abs=1e-12)
        assert swapped["alpha"].values[m] == pytest.approx(auto["alpha"].values[k], rel=1e-12)
    # Reversed a1: col runs the other way, alpha becomes 180 - alpha, Vol and P are unchanged.
    flipped = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, a1=-truth["a1"], a2=truth["a2"])
    f = by_cell(flipped)
    for (rr, c), k in r.items():
        m = f[(rr, N_COLS - 2 - c)]
        assert flipped["alpha"].values[m] == pytest.approx(180.0 - ALPHA, rel=1e-9)
        assert flipped["Vol"].values[m] == pytest.approx(auto["Vol"].values[k], rel=1e-12)
        assert flipped["Py"].values[m] == pytest.approx(auto["Py"].values[k], abs=1e-12)


def test_radians_and_units():
    a_xy, a_int, b_xy, b_int, _ = lattice(n_rows=3, n_cols=3)
    ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, angle_units="rad", length_units="nm")
    np.testing.assert_allclose(ds["alpha"], np.deg2rad(ALPHA), rtol=1e-9)
    assert ds["alpha"].attrs["units"] == "rad"
    assert ds["a"].attrs["units"] == "nm" and ds["Vol"].attrs["units"] == "nm^2"


def test_smallest_lattice_one_cell():
    a_xy, a_int, b_xy, b_int, _ = lattice(n_rows=2, n_cols=2)
    ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    assert ds.sizes["cell"] == 1
    assert ds["a"].item() == pytest.approx(A) and ds["alpha"].item() == pytest.approx(ALPHA)


def test_large_field_of_view_indexes_everything():
    """Indexing stays right far from the origin (vectors refined on the whole field)."""
    a_xy, a_int, b_xy, b_int, _ = lattice(n_rows=120, n_cols=150, jitter=0.05, seed=fixed_seed(4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    assert ds.sizes["cell"] == 119 * 149


@pytest.mark.parametrize(
    ("change", "argument"),
    [
        (lambda k: k.update(a_xy=np.zeros((10, 3))), "a_xy"),
        (lambda k: k.update(a_xy=k["a_xy"].T), "a_xy"),
        (lambda k: k.update(b_xy=np.zeros((5, 3))), "b_xy"),
        (lambda k: k.update(a_intensity=k["a_intensity"][:-1]), "a_intensity"),
        (lambda k: k.update(b_intensity=k["b_intensity"][:-2]), "b_intensity"),
        (lambda k: k.update(a_xy=k["a_xy"][:3], a_intensity=k["a_intensity"][:3]), "a_xy"),
        (lambda k: k["a_xy"].__setitem__((4, 0), np.nan), "a_xy"),
        (lambda k: k["b_xy"].__setitem__((2, 1), np.inf), "b_xy"),
        (lambda k: k["a_intensity"].__setitem__(0, np.nan), "a_intensity"),
        (lambda k: k.update(angle_units="grad"), "angle_units"),
        (lambda k: k.update(max_offset=0.6), "max_offset"),
        (lambda k: k.update(a1=(3.9, 0.0)), "a2"),
        (lambda k: k.update(a1=(3.9, 0.0), a2=(7.8, 0.1)), "a2"),
        (lambda k: k.update(a1=(0.0, 0.0), a2=(0.0, 4.0)), "a1"),
    ],
)
def test_bad_input_names_the_argument(change, argument):
    a_xy, a_int, b_xy, b_int, _ = lattice(n_rows=4, n_cols=4)
    kwargs = dict(a_xy=a_xy.copy(), a_intensity=a_int.copy(), b_xy=b_xy.copy(), b_intensity=b_int.copy())
    change(kwargs)
    with pytest.raises(CellTableError, match=argument):
        descriptors_from_atoms(**kwargs)


def test_no_complete_cell_is_an_error():
    a_xy, a_int, b_xy, b_int, _ = lattice(n_rows=4, n_cols=4)
    # B columns given in a shifted frame (e.g. another crop origin): none sits in an A square.
    with pytest.raises(CellTableError, match="no complete unit cell"):
        descriptors_from_atoms(a_xy, a_int, b_xy + 1000.0, b_int, source="crop3")
    with pytest.raises(CellTableError, match="no complete unit cell"):
        descriptors_from_atoms(a_xy, a_int, np.empty((0, 2)), np.empty(0))
    # A single row of A columns has no second lattice direction.
    row = np.column_stack([np.arange(6) * 3.9, np.zeros(6)])
    with pytest.raises(CellTableError, match="a_xy"):
        descriptors_from_atoms(row, np.ones(6), b_xy, b_int)


# ---------------------------------------------------------------------------------------------
# the [110] projection, position order and physical units (issue 12)


def lattice_110(n_rows=8, n_cols=7, a=3.905, rot=12.0, shear=1.5, seed=0):
    """SrTiO3-like [110] projection: A columns on an a x a sqrt(2)/2 lattice (a1 along [001]), a B
    column at the mid-point of every A-A edge along a1 plus a known offset. The cell (i, j) is the
    a x a sqrt(2) rectangle whose middle edge (row j+1) holds its B column."""
    rng = np.random.default_rng(seed)
    t, s = np.deg2rad(rot), np.deg2rad(rot + 90.0 - shear)
    a1 = a * np.array([np.cos(t), np.sin(t)])
    a2 = a * np.sqrt(2) / 2 * np.array([np.cos(s), np.sin(s)])
    origin = np.array([30.0, 25.0])
    j, i = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    a_xy = origin + np.column_stack([i.ravel(), j.ravel()]) @ np.vstack([a1, a2])
    a_int = rng.uniform(800.0, 1200.0, size=len(a_xy))
    cj, ci = np.meshgrid(np.arange(n_rows - 2), np.arange(n_cols - 1), indexing="ij")
    cells = np.column_stack([ci.ravel(), cj.ravel()])
    offsets = rng.uniform(-0.2, 0.2, size=(len(cells), 2))
    mid = origin + (cells + [0.5, 1.0]) @ np.vstack([a1, a2])
    b_xy = mid + offsets
    b_int = rng.uniform(300.0, 500.0, size=len(b_xy))
    return a_xy, a_int, b_xy, b_int, dict(cells=cells, offsets=offsets, a1=a1, a2=a2, mid=mid)


@pytest.mark.parametrize("order", ["xy", "rc"])
@pytest.mark.parametrize("projection", ["auto", "110"])
def test_110_projection_recovers_the_cell_and_the_b_offsets(order, projection):
    a_xy, a_int, b_xy, b_int, truth = lattice_110()
    flip = (lambda p: p[:, ::-1]) if order == "rc" else (lambda p: p)
    with warnings.catch_warnings():
        warnings.simplefilter("error", AtomIndexingWarning)  # a clean lattice: nothing skipped
        ds = descriptors_from_atoms(flip(a_xy), a_int, flip(b_xy), b_int, projection=projection,
                                    position_order=order)
    assert ds.sizes["cell"] == len(truth["cells"])  # every B column in exactly one cell (both row parities)
    assert json.loads(ds.attrs["atoms"])["projection"] == "110"
    np.testing.assert_allclose(ds["a"], np.hypot(*truth["a1"]), rtol=1e-9)
    np.testing.assert_allclose(ds["b"], 2 * np.hypot(*truth["a2"]), rtol=1e-9)  # a sqrt(2)
    np.testing.assert_allclose(ds["alpha"], 90.0 - 1.5, atol=1e-9)
    # the offsets are x, y displacements from the middle edge's mid-point, whatever the position order
    got = {(round(float(x), 6), round(float(y), 6)): (float(px), float(py))
           for x, y, px, py in zip(ds["x"], ds["y"], ds["Px"], ds["Py"])}
    for m, off in zip(truth["mid"], truth["offsets"]):
        np.testing.assert_allclose(got[(round(m[0], 6), round(m[1], 6))], off, atol=1e-9)


def test_projection_auto_tells_001_from_110_and_a_wrong_projection_is_diagnosed():
    a_xy, a_int, b_xy, b_int, _ = lattice()
    assert json.loads(descriptors_from_atoms(a_xy, a_int, b_xy, b_int).attrs["atoms"])["projection"] == "001"
    a_xy, a_int, b_xy, b_int, _ = lattice_110()
    # forced [001] on a [110] image: the error gives the B columns' fractional position and the cause
    with pytest.raises(CellTableError, match=r"\(0\.50, 0\.0\d\).*edge.*\[110\]"):
        descriptors_from_atoms(a_xy, a_int, b_xy, b_int, projection="001")
    # ... and with max_offset near 0.5 cells are built, but the offset pile-up is named
    with pytest.warns(AtomIndexingWarning, match="pile up.*\\[110\\] projection"):
        descriptors_from_atoms(a_xy, a_int, b_xy, b_int, projection="001", max_offset=0.49)
    # B columns at neither site: refused with the position, not silently indexed
    with pytest.raises(CellTableError, match=r"\(0\.25, 0\.25\).*neither"):
        a_xy, a_int, b_xy, b_int, truth = lattice()
        quarter = b_xy - 0.25 * (truth["a1"] + truth["a2"]) - np.asarray(truth["offsets"])
        descriptors_from_atoms(a_xy, a_int, quarter, b_int)


def test_row_col_positions_are_read_in_their_order():
    """Peak finders that return (row, col) used to swap a <-> b and Px <-> Py silently."""
    a_xy, a_int, b_xy, b_int, _ = lattice()
    xy = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    rc = descriptors_from_atoms(a_xy[:, ::-1], a_int, b_xy[:, ::-1], b_int, position_order="rc")
    for v in ("a", "b", "alpha", "Vol", "Px", "Py", "x", "y"):
        np.testing.assert_allclose(rc[v].values, xy[v].values, rtol=1e-12, atol=1e-12)


def test_pixel_size_gives_angstrom_and_is_recorded():
    a_xy, a_int, b_xy, b_int, _ = lattice()
    px = descriptors_from_atoms(a_xy, a_int, b_xy, b_int)
    nm = descriptors_from_atoms(a_xy, a_int, b_xy, b_int, pixel_size=0.02, pixel_unit="nm")
    np.testing.assert_allclose(nm["a"].values, px["a"].values * 0.2)
    np.testing.assert_allclose(nm["Vol"].values, px["Vol"].values * 0.04)
    np.testing.assert_allclose(nm["alpha"].values, px["alpha"].values)
    assert nm["a"].attrs["units"] == "angstrom" and nm["Vol"].attrs["units"] == "angstrom^2"
    assert nm.attrs["pixel_size"] == 0.02 and nm.attrs["pixel_unit"] == "nm"
    with pytest.raises(CellTableError, match="pixel_unit"):
        descriptors_from_atoms(a_xy, a_int, b_xy, b_int, pixel_size=0.02, pixel_unit="inch")
