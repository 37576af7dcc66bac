"""The whole run: files and their contracts, resume, Dask, refusal to overwrite, bad inputs.

This holds the default suite's real end-to-end NUTS run (small settings)."""

import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from conftest import fixed_seed
import xarray as xr

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.cli import main
from causalcrystal.engine import RunExistsError, run_pipeline
from causalcrystal.sem import load_spec
from causalcrystal.simulator import simulate

FAST = load_spec("laplace").with_(draws=200, tune=200)
KW = dict(tile_size=12, stride=6, n_bootstrap=5, image_bootstrap=10, spec=FAST, seed=fixed_seed(3), workers=1, progress=False)


@pytest.fixture(scope="module")
def cells():
    return simulate((0.0, 0.2), shape=(18, 18), seed=fixed_seed(8))


@pytest.fixture(scope="module")
def full_run(cells, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "full"
    # the contract test compares posterior.nc with tiles/, and the stored log-likelihood with its recomputation
    res = run_pipeline(cells, out, keep_tiles=True, keep_loglik=True, **KW)
    return out, res


def test_summary_of_tiles_pooling_orders_carries_the_runs_diagnostics(full_run):
    """``cc.summary``: a tile averaging several causal orders stores each chain as blocks of draws
    from each order, and ArviZ's split r_hat reads the block boundaries as non-convergence (a helper
    saw r_hat 1.80 on a demo tile summary.csv calls converged). Those tiles' ``B`` rows carry the
    run's per-order diagnostics; single-order tiles (none in this run) keep ArviZ's."""
    from causalcrystal.runs import open_run, summary
    from causalcrystal.sem import order_draws

    out, _ = full_run
    run = open_run(out)
    const = run.posterior.constant_data
    D = run.posterior.posterior.sizes["draw"]
    pooled = {int(k): (order_draws(np.nan_to_num(w[np.isfinite(w)]), D) > 0).sum() > 1
              for k, w in zip(const["tile"].values, const["order_weight"].values)}
    assert any(pooled.values()), pooled  # (every tile of this run pools its 3 orders)
    t = summary(run)
    s = run.summary
    on = s["tile"].map(pooled).to_numpy()
    np.testing.assert_allclose(t["r_hat"].to_numpy()[on], s["r_hat"].to_numpy()[on])
    np.testing.assert_allclose(t["ess_bulk"].to_numpy()[on], s["ess_bulk"].to_numpy()[on])
    assert t["ess_tail"].isna().to_numpy()[on].all() and t["ess_tail"].notna().to_numpy()[~on].all()
    # ArviZ's own numbers on the pooled rows are what was replaced: larger r_hat than the run's somewhere
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the forbidden zeros' 0/0, what cc.summary avoids
        raw = az.summary(run.posterior, var_names=["B"], kind="diagnostics")
    labels = [f"B[{r.tile}, {r.effect}, {r.cause}]" for r in s[on].itertuples()]
    assert (raw.loc[labels, "r_hat"].to_numpy() > s["r_hat"].to_numpy()[on] + 1e-6).any()


def test_outputs_follow_the_contract(full_run):
    out, res = full_run
    assert res["finished"] and res["n_tiles"] == 8  # 2 images x (2 x 2) windows
    idata = az.from_netcdf(out / "posterior.nc")
    B = idata.posterior["B"]
    assert B.dims == ("chain", "draw", "tile", "effect", "cause")
    assert list(B["effect"].values) == list(DESCRIPTORS) == list(B["cause"].values)
    for c in ("image", "row0", "col0"):
        assert c in B.coords
    assert idata.posterior.attrs["standardize"] == "image"
    assert "z" in idata.log_likelihood and "diverging" in idata.sample_stats
    # B is zero on every coefficient no candidate order allows (and on anything into I14 / I5)
    never = (B == 0).all(("chain", "draw")).values
    assert never[:, [0, 1], :].all()
    allowed = idata.constant_data["allowed_weight"].values > 0
    assert never[~allowed].all() and allowed.sum(axis=(1, 2)).min() >= 6 * 7 / 2  # >= one order's 21 edges
    w = idata.constant_data["order_weight"].values
    assert np.allclose(np.nansum(w, axis=1), 1.0) and (idata.constant_data["candidate_order"].values[:, 0] >= 0).all()
    disc = xr.load_dataset(out / "discovery.nc")
    assert disc["probability"].dims == ("tile", "effect", "cause")
    per_image = xr.load_dataset(out / "discovery.nc", group="images")
    assert list(per_image["image"].values) == ["Sm_0_0", "Sm_20_0"]
    assert int(per_image.attrs["n_bootstrap"]) == 10
    s = pd.read_csv(out / "summary.csv")
    cols = ["tile", "image", "row0", "col0", "effect", "cause", "mean", "sd", "hdi_5%", "hdi_95%", "p_positive",
            "p_negative", "inclusion_prob",
            "p_allowed", "lingam_prob", "r_hat", "ess_bulk", "divergences", "restarted_chains"]
    assert cols == list(s.columns[: len(cols)])
    # a chain count per tile, at most every chain of every one of the tile's distinct equations
    assert s["restarted_chains"].between(0, 2 * 8 * 3).all()
    assert {"pit_p_effect", "gauss_p_effect", "gauss_p_cause", "direction_identified", "noise_misfit", "flagged",
            "flag_reason"} <= set(s.columns)
    assert s["p_allowed"].between(0, 1).all() and (s["p_allowed"] > 0).all()
    assert (s["hdi_5%"] <= s["hdi_95%"]).all()
    assert (s["p_positive"] + s["p_negative"] <= 1 + 1e-9).all()
    assert (s.loc[s["hdi_5%"] > 0, "p_positive"] >= 0.9).all() and (s.loc[s["hdi_95%"] < 0, "p_negative"] >= 0.9).all()
    # the HDI is what it says: an interval holding >= 90 % of the edge's draws (the mean need not lie
    # in it: spike-and-slab and order mixtures make posteriors bimodal, seed offset 2 had one outside)
    Bv = B.transpose("tile", "effect", "cause", "chain", "draw").values.reshape(*B.shape[2:], -1)
    tix = {t: k for k, t in enumerate(B["tile"].values)}
    # (summary.csv is computed from the draws as sampled; the file's are rounded to <= sd / 8192)
    for t, eff, cau, lo, hi, sd in zip(s["tile"], s["effect"], s["cause"], s["hdi_5%"], s["hdi_95%"], s["sd"]):
        d = Bv[tix[t], DESCRIPTORS.index(eff), DESCRIPTORS.index(cau)]
        tol = sd / 8192 + 1e-6
        inside = ((d >= lo - tol) & (d <= hi + tol)).mean()
        assert inside >= 0.9 - 1.0 / d.size, (t, eff, cau, inside)
    # summary means equal the posterior's
    row = s.iloc[0]
    m = float(B.sel(tile=row["tile"], effect=row["effect"], cause=row["cause"]).mean())
    assert m == pytest.approx(row["mean"], abs=row["sd"] / 8192 + 1e-7)
    # the loglik of each tile has one column per cell in the tile (the rest NaN padding)
    n_cells = idata.posterior["n_cells"].values
    finite = np.isfinite(idata.log_likelihood["z"].values[0, 0])
    np.testing.assert_array_equal(finite.sum(axis=1), n_cells)
    # posterior.nc is written tile by tile: every tile's block is exactly its npz, in tile order (the
    # posterior's draws rounded by quantise_draws, the log-likelihood and sample stats as they are)
    from causalcrystal.engine import quantise_draws

    for t, k in enumerate(idata.posterior["tile"].values):
        saved = np.load(out / "tiles" / f"tile_{k:05d}.npz")
        np.testing.assert_array_equal(B.values[:, :, t], quantise_draws(saved["B"]))
        np.testing.assert_array_equal(idata.posterior["sigma"].values[:, :, t], quantise_draws(saved["sigma"]))
        np.testing.assert_array_equal(idata.log_likelihood["z"].values[:, :, t, : n_cells[t]],
                                      saved["loglik"])
        np.testing.assert_array_equal(idata.sample_stats["diverging"].values[:, :, t], saved["diverging"])
    assert idata.sample_stats["diverging"].dtype == bool
    # a run without --keep-loglik recomputes it from the draws and cells.nc. The stored one came from
    # the draws as sampled, the recomputed one from the rounded draws in the file: pointwise within
    # 5 % of each cell's spread over the draws (measured <= 1.3 %), the tile's elpd_loo within 1 % of
    # its s.e. (measured <= 0.05 %); what a model comparison reads is the elpd
    from causalcrystal import runs

    r = runs.open_run(out)
    for t in idata.posterior["tile"].values:
        stored, again = runs.tile_loglik(r, int(t)).values, runs.tile_loglik(r, int(t), recompute=True).values
        assert stored.shape == again.shape == (*stored.shape[:2], int(idata.posterior["n_cells"].sel(tile=t)))
        spread = stored.reshape(-1, stored.shape[-1]).std(0)
        assert (np.abs(again - stored).max((0, 1)) <= 0.05 * spread).all()
        elpd = [az.loo(az.from_dict(posterior={"m": np.zeros(x.shape[:2])}, log_likelihood={"z": x}))
                for x in (stored, again)]
        assert abs(elpd[0].elpd_loo - elpd[1].elpd_loo) <= 0.01 * elpd[0].se


def test_stored_draws_keep_every_summary_to_a_fraction_of_an_sd():
    """``quantise_draws`` (posterior.nc's default rounding): every draw within sd / 8192 of the sampled
    one and on its grid; exact zeros (forbidden edges) and constant quantities untouched; means,
    s.d.s, 5 / 95 % quantiles, bulk ESS and r_hat of autocorrelated chains unchanged to far below
    their Monte Carlo error. The quantities span scales 1e-4 .. 1e4 and sit far from zero (an
    intercept of 5e4 with s.d. 0.3: relative rounding would lose it, the s.d.-relative grid keeps it)."""
    from causalcrystal.engine import QUANTISE_BITS, quantise_draws

    rng = np.random.default_rng(fixed_seed(31))
    C, D, Q = 4, 500, 6
    e = rng.standard_normal((C, D + 50, Q))
    x = np.zeros_like(e)
    for d in range(1, D + 50):  # AR(1) chains, rho 0.8: ESS ~ 1/9 of the draws
        x[:, d] = 0.8 * x[:, d - 1] + 0.6 * e[:, d]
    x = x[:, 50:]
    scale = np.array([1e-4, 1e-2, 1.0, 0.3, 1e2, 1e4])
    loc = np.array([0.0, 0.5, -2.0, 5e4, 0.0, 3e4])
    a = (loc + scale * x).astype(np.float32)
    a = np.concatenate([a, np.zeros((C, D, 1), np.float32), np.full((C, D, 1), 2.5, np.float32)], axis=2)
    a[0, 0, 1] = 1e-7  # within q / 2 of 0 (q ~ 2.4e-6 for s.d. 1e-2): kept, not rounded to exactly 0
    b = quantise_draws(a)
    assert b.dtype == np.float32 and b.shape == a.shape
    sd = a.astype(np.float64).std((0, 1))
    err = np.abs(b.astype(np.float64) - a).max((0, 1))
    assert (err[:Q] <= sd[:Q] / 2 ** (QUANTISE_BITS + 1) * (1 + 1e-6)).all(), err / sd
    q = np.exp2(np.floor(np.log2(sd[:Q])) - QUANTISE_BITS)
    assert b[0, 0, 1] == a[0, 0, 1] and ((b[..., :Q] == 0) == (a[..., :Q] == 0)).all()  # no new exact zeros
    b_grid = b.copy()
    b_grid[0, 0, 1] = 0.0
    np.testing.assert_array_equal(np.mod(b_grid[..., :Q].astype(np.float64), q), 0.0)  # on the grid
    np.testing.assert_array_equal(b[..., Q:], a[..., Q:])
    # it did round (the test is not of a no-op), except where float32's own spacing is coarser than
    # the grid (5e4 with s.d. 0.3: spacing 0.004, grid 6e-5), which it keeps as stored
    coarse = np.spacing(np.abs(a[0, 0, :Q])) >= q
    assert coarse.tolist() == [False, False, False, True, False, False] and (err[:Q][~coarse] > 0).all()
    ds_a, ds_b = az.convert_to_dataset({"x": a[..., :Q]}), az.convert_to_dataset({"x": b[..., :Q]})
    # mean, s.d. and every order statistic move by at most the largest draw's error
    for f in (lambda v: v.mean((0, 1)), lambda v: v.std((0, 1)),
              lambda v: np.quantile(v.reshape(-1, Q), [0.05, 0.95], axis=0)):
        diff = np.abs(f(b[..., :Q].astype(np.float64)) - f(a[..., :Q].astype(np.float64)))
        assert (diff <= sd[:Q] / 2 ** (QUANTISE_BITS + 1) * (1 + 1e-6)).all(), diff / sd[:Q]
    # diagnostics: rank ties from the rounding are rare (2,000 draws over ~8 x 4,096 grid steps)
    ess_a, ess_b = az.ess(ds_a)["x"].values, az.ess(ds_b)["x"].values
    np.testing.assert_allclose(ess_b, ess_a, rtol=0.01)
    np.testing.assert_allclose(az.rhat(ds_b)["x"].values, az.rhat(ds_a)["x"].values, atol=1e-4)


def test_resume_on_a_dask_cluster_gives_the_same_numbers(cells, full_run, tmp_path):
    """A run stopped after 3 of its 8 tiles (in-process) and resumed on a Dask cluster reuses the 3
    and gives the uninterrupted in-process run's numbers exactly: both the resume and the Dask
    executor in one run (they were two tests, each re-running the whole pipeline: ~30 s of the
    default suite's budget)."""
    distributed = pytest.importorskip("distributed")
    out_full, _ = full_run
    out = tmp_path / "resumed"
    first = run_pipeline(cells, out, stop_after=3, **KW)
    assert not first["finished"] and first["sampled"] == 3
    assert not (out / "posterior.nc").exists()
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as lc:
        second = run_pipeline(cells, out, scheduler=lc.scheduler_address,
                              **{k: v for k, v in KW.items() if k != "workers"})
    assert second["finished"] and second["reused"] == 3 and second["sampled"] == 5
    a = az.from_netcdf(out_full / "posterior.nc").posterior["B"].values
    b = az.from_netcdf(out / "posterior.nc").posterior["B"].values
    np.testing.assert_array_equal(a, b)


def test_never_overwrites_without_flag(cells, full_run, tmp_path):
    out, _ = full_run
    before = (out / "summary.csv").read_bytes()
    with pytest.raises(RunExistsError, match="--overwrite"):
        run_pipeline(cells, out, **KW)
    assert (out / "summary.csv").read_bytes() == before
    # a partial run with other settings is refused too
    part = tmp_path / "part"
    run_pipeline(cells, part, stop_after=1, **KW)
    with pytest.raises(RunExistsError, match="other settings"):
        run_pipeline(cells, part, **{**KW, "seed": fixed_seed(4)})
    # the user's own files in the folder survive --overwrite
    (part / "notes.txt").write_text("mine")
    run_pipeline(cells, part, stop_after=1, overwrite=True, **{**KW, "seed": fixed_seed(4)})
    assert (part / "notes.txt").read_text() == "mine"


def test_tiles_that_cannot_be_fitted_are_skipped_with_a_message(tmp_path):
    cells = simulate((0.1,), shape=(18, 18), seed=fixed_seed(2))
    # one corner tile has a constant descriptor (a detector artefact, say): LiNGAM cannot fit it.
    # (--min-cells is one number for tiling and discovery now, so a tile too small for one is
    # too small for the other: no tile can fall between them any more.)
    holey = cells.copy(deep=True)
    corner = (cells["row"].values < 12) & (cells["col"].values < 12)
    holey["alpha"].values[corner] = 90.0
    with pytest.warns(UserWarning, match="not fitted|constant"):
        res = run_pipeline(holey, tmp_path / "holey", **KW)
    assert res["finished"] and res["n_tiles"] < 4
    s = pd.read_csv(tmp_path / "holey" / "summary.csv")
    assert 0 not in set(s["tile"])


def test_cli_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["demo", "--out", str(out), "--compositions", "0,0.2", "--shape", "16", "16", "--tile-size", "12",
               "--bootstrap", "5", "--image-bootstrap", "10", "--draws", "200", "--tune", "200", "--workers", "1",
               "--quiet", "--no-concentration"])  # the concentration job has its own CLI test
    assert rc == 0
    assert {"discovery.nc", "posterior.nc", "summary.csv", "manifest.json", "report.html"} <= {p.name for p in
                                                                                                out.iterdir()}
    assert not (out / "concentration").exists()
    assert main(["demo", "--out", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_included_edges_without_an_identified_direction_are_named():
    """Gaussian-noise data (F07): a tile with a few identified edges hid its reversed edges at
    inclusion 0.99 behind a tile-level mean; the warning is per edge now."""
    from causalcrystal.engine import _warn_identifiability

    rows = [dict(tile=0, effect="Py", cause="alpha", inclusion_prob=0.99, direction_identified=False),
            dict(tile=0, effect="Py", cause="Px", inclusion_prob=0.98, direction_identified=False),
            dict(tile=0, effect="a", cause="Px", inclusion_prob=0.99, direction_identified=True),
            dict(tile=0, effect="Vol", cause="a", inclusion_prob=0.99, direction_identified=True),
            dict(tile=0, effect="b", cause="a", inclusion_prob=0.99, direction_identified=True),
            dict(tile=0, effect="b", cause="Px", inclusion_prob=0.10, direction_identified=False)]
    logged = []
    _warn_identifiability(pd.DataFrame(rows), logged.append)
    assert len(logged) == 1 and "2 of 5 edge(s)" in logged[0] and "tile 0 Py<-alpha (inclusion 0.99)" in logged[0]
    logged.clear()
    _warn_identifiability(pd.DataFrame(rows[2:5]), logged.append)
    assert not logged
    # an edge below 0.5 inclusion whose 90 % interval excludes 0 counts too (bughunt 11 re-run)
    hdi = pd.DataFrame(rows).assign(**{"hdi_5%": [0.1] * 5 + [0.02], "hdi_95%": [0.3] * 6})
    _warn_identifiability(hdi, logged.append)
    assert len(logged) == 1 and "3 of 6 edge(s)" in logged[0] and "interval excluding 0" in logged[0]
    # mostly unidentified: "the data look Gaussian", unless the tiles are too small for the test to tell
    # (bughunt 10a: 16-cell tiles were told their data look Gaussian)
    gauss = pd.DataFrame(rows[:2] + rows[5:]).assign(tile=[0, 1, 1])
    for n_cells, says in ((np.array([256, 256]), "the data look Gaussian"),
                          (np.array([16, 20]), "median of 18 cells, where the test has little power")):
        logged.clear()
        _warn_identifiability(gauss, logged.append, n_cells)
        assert len(logged) == 1 and says in logged[0]
        assert ("look Gaussian." in logged[0]) == (n_cells[0] == 256)
