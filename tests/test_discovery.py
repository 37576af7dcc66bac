"""DirectLiNGAM discovery per tile: recovers known structure, bootstraps, is deterministic, reports
skipped tiles."""

import json

import numpy as np
import pytest
from conftest import eq1_chain, fixed_seed
import xarray as xr

from causalcrystal.cells import DESCRIPTORS, CellTableError
from causalcrystal.discovery import (
    SkippedTileWarning,
    TileError,
    bootstrap_lingam,
    direction_counts,
    discover,
    fit_lingam,
    standardize,
    tile_matrix,
    to_raw_units,
)
from causalcrystal.executor import LocalExecutor
from causalcrystal.simulator import simulate
from causalcrystal.tiling import image_tiles, make_tiles, tile_members

IX = DESCRIPTORS.index


# ---------------------------------------------------------------------------------------------
# The paper's toy chain (Eq. 1): z0 -> z1 -> z2 with uniform noise
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chain():
    return eq1_chain(2000, seed=fixed_seed(11))


def _ols(y, X):
    """OLS coefficients (without intercept) and their standard errors (intercept in the model)."""
    A = np.column_stack([np.ones(len(y)), X])
    beta, *_ = np.linalg.lstsq(A, y, rcond=None)
    resid = y - A @ beta
    s2 = resid @ resid / (len(y) - A.shape[1])
    se = np.sqrt(np.diag(s2 * np.linalg.inv(A.T @ A)))
    return beta[1:], se[1:]


def test_fit_lingam_recovers_the_toy_chain(chain):
    order, B = fit_lingam(chain, exogenous=None)
    assert order == [0, 1, 2]
    _, se10 = _ols(chain[:, 1], chain[:, [0]])
    _, se2 = _ols(chain[:, 2], chain[:, [0, 1]])  # z2 on both predecessors (what LiNGAM regresses)
    assert abs(B[1, 0] - 3.0) < 5 * se10[0]
    assert abs(B[2, 1] + 6.0) < 5 * se2[1]
    assert abs(B[2, 0]) < 5 * se2[0]
    assert np.all(np.triu(B) == 0)  # nothing against the causal order, no self loops


def test_bootstrap_gives_true_edges_high_and_reversed_edges_low_probability(chain):
    res = bootstrap_lingam(chain, 20, exogenous=None, seed=fixed_seed(3))
    P = res["probability"]
    assert P[1, 0] >= 0.95 and P[2, 1] >= 0.95
    assert P[0, 1] <= 0.05 and P[1, 2] <= 0.05
    assert res["order"] == [0, 1, 2]
    # candidates are the distinct orders of all fits: 20 resamples + the full-data fit
    assert sum(c["count"] for c in res["candidates"]) == 21
    counts = [c["count"] for c in res["candidates"]]
    assert counts == sorted(counts, reverse=True)
    assert res["candidates"][0]["adjacency"][1, 0] and res["candidates"][0]["order"] == [0, 1, 2]
    assert res["candidates"][0]["count"] == res["order_counts"][(0, 1, 2)] + 1
    assert sum(res["order_counts"].values()) == 20
    assert res["order_frequency"] == res["order_counts"][(0, 1, 2)] / 20
    np.testing.assert_allclose(res["mean_coef"][1, 0], 3.0, atol=0.1)


def test_candidate_orders_are_ranked_by_a_deterministic_rule():
    """Every fit votes for its order, the full-data fit too; among equal counts the full-data order
    comes first, the rest in lexicographic order. With few resamples every order is seen once: the
    full-data order wins (before, the first resample's order did, 11 of 12 demo tiles)."""
    from causalcrystal.discovery import _rank_orders

    full = (0, 2, 1)
    dag = np.zeros((3, 3), dtype=bool)
    fits = [(full, dag), ((1, 0, 2), dag), ((0, 1, 2), dag), ((2, 1, 0), dag)]
    ranked = _rank_orders(fits)
    assert [c["order"] for c in ranked] == [[0, 2, 1], [0, 1, 2], [1, 0, 2], [2, 1, 0]]  # all tie at 1
    fits.append(((0, 2, 1), dag))  # the full-data order seen again in a resample
    assert _rank_orders(fits)[0]["order"] == [0, 2, 1] and _rank_orders(fits)[0]["frequency"] == 2 / 5
    # on real data with 5 resamples the full-data order is first whenever no order repeats
    X = eq1_chain(300, seed=fixed_seed(2))
    res = bootstrap_lingam(X, 5, exogenous=None, seed=fixed_seed(4))
    top = res["candidates"][0]
    assert top["count"] >= 2 or top["order"] == list(res["order"])
    # whatever the counts, the full-data order is ahead of every order with no more votes
    rank = [c["order"] for c in res["candidates"]].index(list(res["order"]))
    full_count = res["candidates"][rank]["count"]
    assert all(c["count"] > full_count for c in res["candidates"][:rank])


def test_bootstrap_without_resamples_uses_the_full_fit(chain):
    res = bootstrap_lingam(chain, 0, exogenous=None, seed=fixed_seed(0))
    np.testing.assert_array_equal(res["probability"], np.abs(res["adjacency"]) > 0.05)
    assert len(res["candidates"]) == 1 and res["candidates"][0]["frequency"] == 1.0
    np.testing.assert_array_equal(res["mean_coef"], res["adjacency"])


def test_exogenous_prior_knowledge_forces_the_order(chain):
    # Declaring z2 exogenous (wrong, but prior knowledge is obeyed) puts it first.
    order, B = fit_lingam(chain, exogenous=[2])
    assert order[0] == 2
    assert np.all(B[2] == 0)
    with pytest.raises(ValueError, match="unknown"):
        fit_lingam(chain, exogenous=["I14"])  # names need the 8-descriptor layout
    with pytest.raises(ValueError, match=r"'' unknown \(an empty name: a comma too many in --exogenous\?\)"):
        fit_lingam(chain, exogenous=[""])  # what `--exogenous I14,I5,` gives


# ---------------------------------------------------------------------------------------------
# Standardisation and tile matrices
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small():
    return simulate((0.0, 0.1), shape=(24, 24), seed=fixed_seed(5))


def test_standardize_per_image(small):
    st = standardize(small)
    assert st.attrs["standardize"] == "image"
    means, sds = json.loads(st.attrs["standardize_mean"]), json.loads(st.attrs["standardize_sd"])
    img = small["image"].values
    for lab in ("Sm_0_0", "Sm_10_0"):
        m = img == lab
        for v in DESCRIPTORS:
            z = st[v].values[m]
            assert abs(z.mean()) < 1e-10 and abs(z.std() - 1) < 1e-10
            raw = small[v].values[m]
            assert means[lab][v] == pytest.approx(raw.mean()) and sds[lab][v] == pytest.approx(raw.std())
    assert small.attrs["standardize"] == "none"  # input untouched
    assert st["a"].attrs["raw_units"] == small["a"].attrs["units"]
    for mode in ("none", "tile"):
        out = standardize(small, mode)
        assert out.attrs["standardize"] == mode
        np.testing.assert_array_equal(out["Px"].values, small["Px"].values)
    with pytest.raises(CellTableError, match="already standardised"):
        standardize(st)


def test_standardize_refuses_a_constant_descriptor_naming_image_and_variable(small):
    bad = small.copy(deep=True)
    m = bad["image"].values == "Sm_10_0"
    bad["I5"].values[m] = 1.0
    for mode in ("image", "tile", "none"):
        with pytest.raises(CellTableError, match=r"'Sm_10_0' has no variation in 'I5'.*leave that image out "
                           r"\(--exclude-image Sm_10_0\).*--derived I5"):
            standardize(bad, mode)
    bad = small.copy(deep=True)
    bad["Py"].values[3] = np.nan
    with pytest.raises(CellTableError, match=r"'Sm_0_0', variable 'Py'.*non-finite"):
        standardize(bad)


def test_tile_matrix_columns_and_tile_mode(small):
    tiles = make_tiles(small, 12, stride=12)
    m = tile_members(tiles, 1)
    X = tile_matrix(small, m, "none")
    assert X.shape == (m.size, 8)
    np.testing.assert_array_equal(X[:, IX("Vol")], small["Vol"].values[m])
    Z = tile_matrix(small, m, "tile")
    np.testing.assert_allclose(Z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(Z.std(0), 1, atol=1e-12)
    bad = small.copy(deep=True)
    bad["alpha"].values[m] = 90.0
    with pytest.raises(TileError, match="constant column alpha"):
        tile_matrix(bad, m, "tile")


# ---------------------------------------------------------------------------------------------
# Whole-image discovery on simulated films with known ground truth
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def film():
    cells = simulate((0.0, 0.2), shape=(48, 48), seed=fixed_seed(2))
    return cells, discover(cells, image_tiles(cells), n_bootstrap=20, seed=fixed_seed(0), progress=False)


def test_true_edges_are_more_probable_than_absent_edges(film):
    cells, disc = film
    is_film = cells["true_region"].values == "film"
    present = np.abs(cells["true_B"].values[is_film]).mean(axis=0) > 0
    absent = ~present & ~np.eye(8, dtype=bool)
    strong = [IX(e) * 8 + IX(c) for e, c in (("a", "Px"), ("Vol", "a"), ("Vol", "b"), ("alpha", "Py"))]
    assert all(present.ravel()[strong])  # the strong edges are true edges of the simulator
    assert (disc["status"].values == "ok").all()
    for t in range(disc.sizes["tile"]):
        P = disc["probability"].values[t]
        p_strong = P.ravel()[strong].mean()
        assert p_strong > P[absent].mean() + 0.3, (t, p_strong, P[absent].mean())
        assert P[IX("Vol"), IX("a")] >= 0.9 and P[IX("Vol"), IX("b")] >= 0.9
        # exogenous prior knowledge: the intensities come first
        assert set(disc["order"].values[t, :2]) == {IX("I14"), IX("I5")}
        assert (disc["candidate_order"].values[t, 0, :2] >= 0).all()
        assert set(disc["candidate_order"].values[t, 0, :2]) == {IX("I14"), IX("I5")}
        assert disc["n_candidates"].values[t] >= 1
        freq = disc["candidate_frequency"].values[t]
        assert np.all(np.diff(freq) <= 0) and 0 < freq.sum() <= 1 + 1e-12
    assert disc.attrs["standardize"] == "image"
    assert json.loads(disc.attrs["exogenous"]) == ["I14", "I5"]
    assert list(disc["image"].values) == ["Sm_0_0", "Sm_20_0"]
    np.testing.assert_array_equal(disc["sm_fraction"].values, [0.0, 0.2])


def test_direction_counts_and_raw_units(film):
    cells, disc = film
    dc = direction_counts(disc, "a", "Vol")
    np.testing.assert_array_equal(dc["a->Vol"].values, disc["probability"].sel(effect="Vol", cause="a").values)
    assert ((dc["none"] >= -1e-12) & (dc["a->Vol"] + dc["Vol->a"] + dc["none"] == 1)).all()
    # LiNGAM is equivariant under per-variable affine maps: a fit on raw data equals the
    # image-standardised fit converted back to raw units.
    raw = discover(cells, image_tiles(cells), n_bootstrap=0, standardize="none", progress=False)
    std = discover(cells, image_tiles(cells), n_bootstrap=0, standardize="image", progress=False)
    np.testing.assert_array_equal(raw["order"].values, std["order"].values)
    np.testing.assert_allclose(to_raw_units(std, "adjacency").values, raw["adjacency"].values, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Determinism, executors, skipped tiles
# ---------------------------------------------------------------------------------------------


def test_same_seed_same_result_and_seeds_follow_the_tile_not_the_run(small):
    tiles = make_tiles(small, 12, stride=12)
    a = discover(small, tiles, n_bootstrap=8, seed=fixed_seed(4), progress=False)
    b = discover(small, tiles, n_bootstrap=8, seed=fixed_seed(4), progress=False)
    xr.testing.assert_identical(a, b)
    c = discover(small, tiles, n_bootstrap=8, seed=fixed_seed(5), progress=False)
    assert not np.array_equal(a["probability"].values, c["probability"].values)
    # a subset of the tiles gets the same per-tile results (seeds come from the tile coord)
    sub = discover(small, tiles.isel(tile=[5, 2]), n_bootstrap=8, seed=fixed_seed(4), progress=False)
    xr.testing.assert_identical(sub.drop_attrs(), a.isel(tile=[5, 2]).drop_attrs())


def test_inline_and_process_pool_agree(small):
    tiles = make_tiles(small, 12, stride=12).isel(tile=[0, 3])
    inline = discover(small, tiles, n_bootstrap=3, seed=fixed_seed(1), progress=False)
    pool = LocalExecutor(workers=2)
    try:
        par = discover(small, tiles, n_bootstrap=3, seed=fixed_seed(1), progress=False, executor=pool)
    finally:
        pool.close()
    xr.testing.assert_identical(inline, par)


def test_skipped_tiles_are_reported_and_the_rest_fitted(small):
    tiles0 = make_tiles(small, 12, stride=12)
    # tile 1 loses most of its cells; tile 2 gets a constant Px
    lose = tile_members(tiles0, 1)[20:]
    cells = small.isel(cell=np.setdiff1d(np.arange(small.sizes["cell"]), lose))
    tiles = make_tiles(cells, 12, stride=12, min_cells=1)
    assert tiles["n_cells"].values[1] == 20
    cells = cells.copy(deep=True)
    cells["Px"].values[tile_members(tiles, 2)] = 0.25
    with pytest.warns(SkippedTileWarning, match=r"2 of 8 tile\(s\) not fitted"):
        disc = discover(cells, tiles, n_bootstrap=2, progress=False)
    st = disc["status"].values
    assert "too few cells (20 < min_cells 32)" in st[1]
    assert "constant column Px" in st[2]
    ok = [k for k in range(8) if k not in (1, 2)]
    assert all(st[k] == "ok" for k in ok)
    assert np.isnan(disc["probability"].values[[1, 2]]).all()
    assert (disc["order"].values[[1, 2]] == -1).all()
    assert np.isfinite(disc["probability"].values[ok]).all()
    assert (np.sort(disc["order"].values[ok], axis=1) == np.arange(8)).all()


def test_result_round_trips_through_netcdf(small, tmp_path):
    tiles = make_tiles(small, 12, stride=12).isel(tile=[0])
    disc = discover(small, tiles, n_bootstrap=2, progress=False)
    path = tmp_path / "disc.nc"
    disc.to_netcdf(path, engine="h5netcdf")
    with xr.open_dataset(path, engine="h5netcdf") as back:
        back = back.load()
    np.testing.assert_array_equal(back["candidate_adjacency"].values, disc["candidate_adjacency"].values)
    assert back["candidate_adjacency"].dtype == bool
    np.testing.assert_array_equal(back["order"].values, disc["order"].values)
    assert back["status"].values.tolist() == ["ok"]
    assert back.attrs["lingam_version"] == disc.attrs["lingam_version"]


def test_edges_and_orders_do_not_depend_on_units():
    """Raw detector counts (~1e6), lattice parameters in Angstrom, angles in degrees or z-scores:
    the same cells give the same orders and edge probabilities, and B in the units given (before,
    LiNGAM's adaptive lasso on raw units dropped a 0.4 s.d. edge and the 0.05 threshold compared
    coefficients of mixed units)."""
    rng = np.random.default_rng(fixed_seed(31))
    X = rng.laplace(size=(256, 4))
    X[:, 1] += 0.5 * X[:, 0]
    X[:, 2] += 0.4 * X[:, 1] - 0.3 * X[:, 0]
    X[:, 3] += 0.2 * X[:, 2]
    scale, shift = np.array([1e6, 1e-3, 4.0, 90.0]), np.array([5e6, 3.9, 0.0, 89.0])
    a = bootstrap_lingam(X, 10, exogenous=None, seed=fixed_seed(1))
    b = bootstrap_lingam(X * scale + shift, 10, exogenous=None, seed=fixed_seed(1))
    assert a["order"] == b["order"] and [c["order"] for c in a["candidates"]] == [c["order"] for c in b["candidates"]]
    np.testing.assert_array_equal(a["probability"], b["probability"])
    np.testing.assert_allclose(b["adjacency"] * scale[None, :] / scale[:, None], a["adjacency"], atol=1e-9)


def test_a_descriptor_declared_derived_may_be_constant(small):
    """Bughunt 11 follow-up: a descriptor constant in an image, or in one tile, refused the whole table
    or skipped the tile even when declared derived (no equation, no effects), so a broken export of
    one derived column cost images. Declared derived, it is centred and every tile is fitted."""
    bad = small.copy(deep=True)
    img = bad["image"].values.astype(str)
    bad["I5"].values[img == "Sm_10_0"] = 1.0
    st = standardize(bad, "image", derived=["I5"])
    np.testing.assert_array_equal(st["I5"].values[img == "Sm_10_0"], 0.0)
    assert json.loads(st.attrs["standardize_sd"])["Sm_10_0"]["I5"] == 1.0
    np.testing.assert_allclose(st["I5"].values[img == "Sm_0_0"].std(), 1.0)   # the other image z-scored as before
    with pytest.raises(CellTableError, match="no variation in 'I5'"):
        standardize(bad, "image", derived=["Vol"])                            # another one declared: still refused
    with pytest.raises(CellTableError) as err:                                # one image: leaving it out is no fix
        standardize(bad.isel(cell=np.flatnonzero(img == "Sm_10_0")))
    assert "--derived I5" in str(err.value) and "--exclude-image" not in str(err.value)

    tiles = make_tiles(small, 12, stride=12)
    m = tile_members(tiles, 2)
    flat = small.copy(deep=True)
    flat["Px"].values[m] = 0.25
    for derived in (["Px"], np.array([v == "Px" for v in DESCRIPTORS])):      # names or a mask
        Z = tile_matrix(flat, m, "tile", derived)
        np.testing.assert_array_equal(Z[:, IX("Px")], 0.0)
        np.testing.assert_allclose(Z[:, IX("a")].std(), 1.0)
    disc = discover(flat, tiles, n_bootstrap=1, derived=["Px"], detect_derived=False, progress=False)
    assert (disc["status"].values == "ok").all()
    assert disc["derived"].values[:, IX("Px")].all()
    assert (disc["order"].values[2][-1:] == IX("Px"))   # derived: last in every order, no effects


def test_a_skipped_whole_image_is_named_as_an_image_and_its_tiles_use_their_own_bootstrap(small):
    """Bughunt 10a: a 30-cell image was reported by the tiling, then again as "tile 1 (image tiny)"
    skipped, where 1 was its index among the images. An image-level fit that is skipped leaves NaN
    probabilities, which must not reach a tile's inclusion weights."""
    from causalcrystal.priors import PriorSpec, inclusion_weights

    img = small["image"].values.astype(str)
    keep = np.flatnonzero(img == "Sm_0_0").tolist() + np.flatnonzero(img == "Sm_10_0")[:30].tolist()
    cells = small.isel(cell=keep)
    with pytest.warns(SkippedTileWarning, match=r"1 of 2 whole image\(s\) not fitted by the image-level LiNGAM "
                      r"\(1 x too few cells\); e.g. image 'Sm_10_0'.*their own bootstrap only") as rec:
        disc = discover(cells, image_tiles(cells), n_bootstrap=1, progress=False)
    assert not any("tile 1" in str(w.message) for w in rec)
    assert np.isnan(disc["probability"].values[1]).all()
    p = np.random.default_rng(fixed_seed(2)).uniform(size=(8, 8))
    spec = PriorSpec()
    np.testing.assert_array_equal(inclusion_weights(p, disc["probability"].values[1], 5, spec),
                                  inclusion_weights(p, None, 5, spec))
