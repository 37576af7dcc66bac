"""Calibration on data the project did not simulate (issue 10): independent random DAGs, noise shapes
the default model was not told about, misspecification; plus the pieces that keep intervals
honest (order uncertainty, canonical cell order, derived descriptors, residual checks, raw units).

Generators: :mod:`causalcrystal.scenarios` (random DAGs in random orders, Laplace / uniform /
Student-t(5) / bimodal noise per variable), never the LGD simulator the model was built around.
"""

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import fixed_seed

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.engine import run_pipeline
from causalcrystal.scenarios import (calibration_table, lingam_bootstrap_intervals, run_intervals, scenario, sem_cells,
                                     truth_per_tile)
from causalcrystal.tiling import make_tiles

QUIET = dict(progress=False, log=lambda m: None)


def _calibrate(seeds, tmp_path, shape=(32, 32), images=2, tile=16, **kw):
    """Run every scenario; return the pooled calibration table of the posterior intervals."""
    parts = []
    for seed in seeds:
        cells = scenario(seed, n_images=images, shape=shape)
        out = tmp_path / f"s{seed}"
        run_pipeline(cells, out, tile_size=tile, stride=tile, seed=seed, workers=kw.pop("workers", 1), **QUIET, **kw)
        tiles = make_tiles(cells, tile, tile)
        idx, lo, hi, allowed = run_intervals(out)
        parts.append((lo, hi, truth_per_tile(cells, tiles)[idx], allowed, json.loads(cells.attrs["true_noise_family"])))
    tabs = [calibration_table(*p) for p in parts]
    n_true = np.array([t["n_true"] for t in tabs])
    n_abs = np.array([t["n_absent"] for t in tabs])
    hits = sum(t["coverage"] * t["n_true"] for t in tabs)
    fc = sum(t["false_confident"] * t["n_absent"] for t in tabs)
    forb = sum(t["forbidden_true"] * t["n_true"] for t in tabs)
    return {"coverage": hits / n_true.sum(), "false_confident": fc / n_abs.sum(), "forbidden_true": forb / n_true.sum(),
            "n_true": int(n_true.sum()), "n_absent": int(n_abs.sum()), "tables": tabs, "parts": parts}


def test_default_model_is_calibrated_on_independent_scenarios(tmp_path):
    """Two random DAGs unlike the simulator's (edges against its order), noise Laplace, uniform, t5
    and bimodal by variable; 16 non-overlapping 256-cell tiles, every option at its default but
    fewer image-bootstrap resamples.

    With ~140 true-edge intervals the coverage of calibrated 90 % intervals has binomial s.d.
    ~0.025; tiles share their DAG, so allow 3.5 s.d. below (0.81) and the same above (0.99). Absent
    edges: at a false-confident rate of 5 % the s.d. over ~450 of them is ~0.01; bound 0.05 + 3 s.d.
    Measured (seed offset 0): coverage 0.93, false-confident 0.04, forbidden true edges 0."""
    res = _calibrate([fixed_seed(0), fixed_seed(1)], tmp_path, image_bootstrap=20)
    sd = np.sqrt(0.9 * 0.1 / res["n_true"])
    assert res["n_true"] >= 80 and res["n_absent"] >= 200
    assert 0.9 - 3.5 * sd <= res["coverage"] <= min(0.9 + 3.5 * sd, 1.0), res["coverage"]
    assert res["false_confident"] <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / res["n_absent"]), res["false_confident"]
    assert res["forbidden_true"] <= 0.05, res["forbidden_true"]


@pytest.mark.slow
def test_default_model_calibrated_per_noise_family_and_narrower_than_lingam_bootstrap(tmp_path):
    """200 tiles from 25 random DAGs (I14, I5 exogenous; every other order random), noise Laplace,
    uniform, Student-t(5) and bimodal. Asserts (issue 10): 90 % coverage in [0.85, 0.95] overall
    (binomial s.d. over >= 1,500 intervals is < 0.008, so the band is the goal, not a tolerance)
    and >= 0.85 per noise family of the child (each family has >= 300 intervals: s.d. < 0.018;
    bound 0.85 - 2 s.d. = 0.815 for the family-wise check); absent edges confidently non-zero
    <= 5 %; and intervals no wider on average than the DirectLiNGAM bootstrap x100's on the same
    tiles at equal coverage (the posterior's width scaled to the bootstrap's coverage, below).
    Measured on 200 tiles (benchmarks/RESULTS.md): coverage 0.89 against the bootstrap's 0.92,
    mean width 0.13 against 0.23."""
    seeds = [fixed_seed(s) for s in range(25)]  # 8 tiles each (two 32 x 32 images, 16 x 16 tiles)
    res = _calibrate(seeds, tmp_path, workers=2)
    assert sum(len(p[0]) for p in res["parts"]) >= 200
    assert 0.85 <= res["coverage"] <= 0.95, res["coverage"]
    fam_hits, fam_n = {}, {}
    for tab in res["tables"]:
        for f, c in tab["coverage_by_family"].items():
            fam_hits[f] = fam_hits.get(f, 0) + c
            fam_n[f] = fam_n.get(f, 0) + 1
    per_family = {f: fam_hits[f] / fam_n[f] for f in fam_hits}
    assert min(per_family.values()) >= 0.815, per_family
    assert res["false_confident"] <= 0.05, res["false_confident"]
    # LiNGAM bootstrap x100 on the same tiles
    from causalcrystal import discovery
    from causalcrystal.tiling import tile_members

    widths = {"posterior": [], "lingam": []}
    cover = {"posterior": [], "lingam": []}
    for seed, (lo, hi, truth, allowed, fam) in zip(seeds, res["parts"]):
        cells = scenario(seed, n_images=2, shape=(32, 32))
        std = discovery.standardize(cells, "image")
        tiles = make_tiles(cells, 16, 16)
        L = [lingam_bootstrap_intervals(discovery.tile_matrix(std, tile_members(tiles, k), "image"), 100, seed=k)
             for k in range(tiles.sizes["tile"])]
        llo, lhi, lal = (np.stack([x[i] for x in L]) for i in range(3))
        for name, (a, b, al) in {"posterior": (lo, hi, allowed), "lingam": (llo, lhi, lal)}.items():
            t = calibration_table(a, b, truth, al, fam)
            widths[name].append(t["width"])
            cover[name].append(t["coverage"])
    cov_p, cov_l = np.mean(cover["posterior"]), np.mean(cover["lingam"])
    # "at equal coverage": the bootstrap's intervals over-cover (0.92 on 200 tiles), so the
    # posterior's width is scaled to the bootstrap's coverage under a normal approximation,
    # z((1 + cov_l) / 2) / z((1 + cov_p) / 2), before the widths are compared
    from scipy.stats import norm

    scale = norm.ppf((1 + cov_l) / 2) / norm.ppf((1 + cov_p) / 2)
    assert np.mean(widths["posterior"]) * max(scale, 1.0) <= np.mean(widths["lingam"]), (widths, cov_p, cov_l)


def test_shuffled_input_gives_identical_numbers(tmp_path):
    """Cells are put in canonical (composition, image, row, col) order before anything depends on
    their order (bootstrap resamples, tile members): a re-sorted table gives bit-identical results."""
    cells = scenario(fixed_seed(3), n_images=2, shape=(16, 16))
    perm = np.random.default_rng(fixed_seed(0)).permutation(cells.sizes["cell"])
    shuffled = cells.isel(cell=perm)
    kw = dict(tile_size=16, stride=16, n_bootstrap=3, image_bootstrap=5, seed=fixed_seed(1), workers=1, **QUIET)
    run_pipeline(cells, tmp_path / "a", **kw)
    run_pipeline(shuffled, tmp_path / "b", **kw)
    a, b = pd.read_csv(tmp_path / "a" / "summary.csv"), pd.read_csv(tmp_path / "b" / "summary.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    pa = xr.load_dataset(tmp_path / "a" / "posterior.nc", group="posterior")
    pb = xr.load_dataset(tmp_path / "b" / "posterior.nc", group="posterior")
    np.testing.assert_array_equal(pa["B"].values, pb["B"].values)


def test_order_uncertainty_is_averaged_and_the_true_order_wins():
    """A tile's posterior mixes its candidate orders by pseudo-BMA+ weight: on a simulator tile a
    reversal of the order gets almost no weight and the true order wins against a swap of two
    adjacent descriptors (by how much depends on the tile: pseudo-BMA+ keeps weight on the swap
    when the two equations' ELPD difference is within its uncertainty, 0.80 vs 0.20 at seed
    offset 3, > 0.9 at 0-2); the mixture's draws follow the weights."""
    from causalcrystal import discovery
    from causalcrystal.priors import dag_prior, forbidden_into
    from causalcrystal.sem import load_spec, sample_tile_orders
    from causalcrystal.simulator import TRUE_ORDER, simulate

    cells = simulate((0.1,), shape=(16, 16), seed=fixed_seed(3), n_walls=0, interface_fraction=0.0)
    X = discovery.tile_matrix(discovery.standardize(cells, "image"), np.arange(cells.sizes["cell"]), "image")
    true = [DESCRIPTORS.index(v) for v in TRUE_ORDER]
    swap = true.copy()
    swap[2], swap[3] = swap[3], swap[2]
    rev = true[:2] + true[2:][::-1]
    priors = [dag_prior(o, np.full((8, 8), 0.5), forbidden_into([0, 1], 8)) for o in (rev, swap, true)]
    out = sample_tile_orders(X, priors, load_spec(), seed=fixed_seed(1))
    w = out["order_weight"]
    assert w[0] < 0.01 and w[2] > w[1] and abs(w.sum() - 1) < 1e-12, w
    C, D = out["B"].shape[:2]
    ia, ib = DESCRIPTORS.index("Py"), DESCRIPTORS.index("Px")
    # Py <- Px needs Px before Py: the reversed and the swapped orders; Px <- Py only the true one
    drawn = (out["B"][..., ia, ib] != 0).mean()
    assert drawn == pytest.approx(w[0] + w[1], abs=2.0 / D)  # draws allocated by weight (largest remainder)
    assert out["allowed_weight"][ia, ib] == pytest.approx(w[0] + w[1])
    assert out["allowed_weight"][ib, ia] == pytest.approx(w[2])


def test_derived_descriptors_are_left_out(tmp_path):
    """Vol computed exactly as a b sin(alpha) (the simulator's geometric option, as in real data):
    the run says so, leaves Vol out of discovery and the SEM (no edge into or out of it), and
    fits the rest; a copied column is found the same way."""
    from causalcrystal.simulator import simulate

    cells = simulate((0.0, 0.2), shape=(16, 16), seed=fixed_seed(2), geometric_vol=True)
    msgs = []
    run_pipeline(cells, tmp_path / "geo", tile_size=16, stride=16, n_bootstrap=3, image_bootstrap=5,
                 seed=fixed_seed(1), workers=1, progress=False, log=msgs.append)
    assert any("Vol = a b sin(alpha)" in m and "derived" in m for m in msgs), msgs
    s = pd.read_csv(tmp_path / "geo" / "summary.csv")
    assert not ((s["effect"] == "Vol") | (s["cause"] == "Vol")).any() and len(s) > 10
    disc = xr.load_dataset(tmp_path / "geo" / "discovery.nc")
    assert disc["derived"].sel(variable="Vol").all() and not disc["derived"].sel(variable="a").any()
    # a copied column: b = 2 a + 1 everywhere
    copy = cells.copy(deep=True)
    copy["b"] = 2.0 * copy["a"] + 1.0
    copy["Vol"] = cells["Vol"]
    msgs = []
    run_pipeline(copy, tmp_path / "copy", tile_size=16, stride=16, n_bootstrap=3, image_bootstrap=5,
                 seed=fixed_seed(1), workers=1, progress=False, log=msgs.append)
    assert any("b = " in m and "derived" in m for m in msgs), msgs
    s = pd.read_csv(tmp_path / "copy" / "summary.csv")
    assert not ((s["effect"] == "b") | (s["cause"] == "b")).any()
    # derived="none" keeps every descriptor and warns that the relation is an identity
    msgs = []
    run_pipeline(cells, tmp_path / "none", tile_size=16, stride=16, n_bootstrap=3, image_bootstrap=5, derived="none",
                 seed=fixed_seed(1), workers=1, progress=False, log=msgs.append)
    assert any("identity" in m for m in msgs)
    assert (pd.read_csv(tmp_path / "none" / "summary.csv")["effect"] == "Vol").any()


def test_residual_checks_flag_a_misfitting_noise_and_gaussian_data(tmp_path):
    """Uniform noise under the fixed Laplace likelihood: the posterior predictive PIT check fails
    and the tile is flagged ('noise misfit'); the default mixture noise describes the same data.
    Gaussian data: the run warns that directions are not identified."""
    from causalcrystal.checks import check_tile
    from causalcrystal.priors import dag_prior
    from causalcrystal.sem import load_spec, sample_tile

    rng = np.random.default_rng(fixed_seed(4))
    # 1,000 cells: at 256 the KS test of the PIT against uniform noise has p ~ 0.01 (0.011 at seed
    # offset 2), at the edge of the 1 % flag; with 4x the cells its statistic is 2x larger
    n = 1000
    x = rng.uniform(-1, 1, n)
    X = np.column_stack([x, 0.8 * x + rng.uniform(-1, 1, n)])
    X = (X - X.mean(0)) / X.std(0)
    prior = dag_prior([0, 1], np.full((2, 2), 0.9))
    lap = sample_tile(X, prior, load_spec("laplace").with_(draws=300), seed=fixed_seed(1))
    mog = sample_tile(X, prior, load_spec(), seed=fixed_seed(1))
    assert check_tile(X, lap, "laplace")["pit_p"].min() < 0.01
    assert check_tile(X, mog, "mog")["pit_p"].min() > 0.01
    # a whole run on Gaussian data
    from causalcrystal.scenarios import random_dag

    B, _ = random_dag(np.random.default_rng(fixed_seed(5)))
    cells = sem_cells(B, ["gaussian"] * 8, n_images=1, shape=(16, 16), seed=fixed_seed(6))
    msgs = []
    run_pipeline(cells, tmp_path / "g", tile_size=16, stride=16, n_bootstrap=3, image_bootstrap=5,
                 seed=fixed_seed(1), workers=1, progress=False, log=msgs.append)
    assert any("not identified" in m for m in msgs), msgs
    s = pd.read_csv(tmp_path / "g" / "summary.csv")
    assert (~s["direction_identified"]).mean() > 0.5


def test_direction_identified_rule_holds_its_level_on_gaussian_tiles_and_keeps_power():
    """The tile-level non-Gaussianity rule (:func:`checks.non_gaussian`, BH over a tile's 8
    Shapiro-Wilk p-values) on random DAGs from ``random_dag`` (other DAGs than the simulator's),
    residuals of the true equations by least squares, 256 cells per tile.

    All-Gaussian noise: the share of tiles with any edge called identified must stay at the 5 %
    level (bound 0.05 + 3 binomial s.e. over 300 tiles = 0.088); the old rule (each variable at
    5 %) gives ~1/3 and fails the same bound. Laplace, uniform and skewed noise: >= 97 % of edges
    identified (measured 1.00 at 256 cells). A variable without a p-value (inactive) is never
    declared non-Gaussian."""
    from scipy import stats

    from causalcrystal.checks import GAUSS_ALPHA, non_gaussian
    from causalcrystal.scenarios import NOISE, random_dag

    rng = np.random.default_rng(fixed_seed(11))
    n, tiles = 256, 300

    def tile_p(family):
        B, _ = random_dag(rng)
        X = np.column_stack([NOISE[family](rng, n) for _ in range(8)]) @ np.linalg.inv(np.eye(8) - B).T
        p = np.empty(8)
        for v in range(8):
            Z = np.column_stack([np.ones(n), X[:, np.flatnonzero(B[v])]])
            p[v] = stats.shapiro(X[:, v] - Z @ np.linalg.lstsq(Z, X[:, v], rcond=None)[0]).pvalue
        return B, p

    def identified(B, declared):
        i, j = np.nonzero(B)
        return declared[i] | declared[j]

    gauss = [tile_p("gaussian") for _ in range(tiles)]
    bound = GAUSS_ALPHA + 3 * np.sqrt(GAUSS_ALPHA * (1 - GAUSS_ALPHA) / tiles)
    assert np.mean([identified(B, non_gaussian(p)).any() for B, p in gauss]) <= bound
    assert np.mean([identified(B, p <= GAUSS_ALPHA).any() for B, p in gauss]) > bound   # the old rule
    for family in ("laplace", "uniform", "skewed"):
        edges = np.concatenate([identified(B, non_gaussian(p)) for B, p in (tile_p(family) for _ in range(60))])
        assert edges.mean() >= 0.97, family
    assert not non_gaussian([np.nan, 1e-9, np.nan])[[0, 2]].any() and non_gaussian([np.nan, 1e-9, 0.9])[1]


def test_raw_units_are_fitted_with_priors_on_the_data_scale():
    """Raw detector counts (~1e6) with standardize none: the priors act in units of the tile's own
    spread (the model is fitted to tile-standardised values and converted back), so a raw
    coefficient of 0.5 is recovered (the old fixed-scale priors gave -41.5)."""
    from causalcrystal.priors import dag_prior
    from causalcrystal.sem import load_spec, sample_tile

    rng = np.random.default_rng(fixed_seed(7))
    n = 256
    x = 3e6 + 1e6 * rng.laplace(size=n)
    y = 1e6 + 0.5 * x + 2e5 * rng.uniform(-1, 1, n)
    out = sample_tile(np.column_stack([x, y]), dag_prior([0, 1], np.full((2, 2), 0.9)), load_spec(),
                      seed=fixed_seed(1))
    b = out["B"][..., 1, 0].ravel()
    lo, hi = np.quantile(b, [0.0005, 0.9995])
    assert lo < 0.5 < hi and hi - lo < 0.1, (lo, hi)
    c = out["c"][..., 1].ravel()
    assert abs(np.median(c) - 1e6) < 5 * c.std() + 1e4
