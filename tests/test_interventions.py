"""Interventions: total effects, do() and shifts on known SEMs, against PyMC's pm.do, on a real posterior.

One NUTS compile (the 8-variable Laplace SEM, ~15 s) is shared by the module's real-posterior
fixture; everything else is closed form or PyMC forward sampling.
"""

import arviz as az
import numpy as np
import pytest
import xarray as xr
from conftest import eq1_chain, fixed_seed

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.interventions import (InterventionError, do, interventional_mean, linear_sem_model,
                                         pymc_intervene, sample_intervened, shift, summarize, tile_draws,
                                         total_effects, total_effects_draws, total_effects_summary)

IX = {v: k for k, v in enumerate(DESCRIPTORS)}
EQ1_B = np.array([[0.0, 0.0, 0.0], [3.0, 0.0, 0.0], [0.0, -6.0, 0.0]])  # conftest.eq1_chain
EQ1_C = np.array([0.5, -1.0, 2.0])
Z = ["z0", "z1", "z2"]


def _draws(B, c, shape=(2, 7)):
    """Posterior-shaped draws (chain, draw, ...) that all equal one parameter set."""
    return {"B": np.broadcast_to(B, (*shape, *B.shape)).copy(), "c": np.broadcast_to(c, (*shape, *c.shape)).copy()}


def _random_dags(rng, draws, n):
    """Stacked random acyclic B, each strictly lower-triangular in its own random causal order."""
    B = np.zeros((draws, n, n))
    low = np.tril(rng.normal(0.0, 1.0, size=(draws, n, n)) * (rng.random((draws, n, n)) < 0.7), -1)
    for d in range(draws):
        order = rng.permutation(n)
        B[d][np.ix_(order, order)] = low[d]
    return B


# ---------------------------------------------------------------------------------------------
# 1. closed forms on known SEMs


def test_total_effects_of_the_eq1_chain_are_exact():
    # The SEM conftest.eq1_chain simulates: z1 = 3 z0 + e1, z2 = -6 z1 + e2 -> z2 <- z0 is 3 * -6.
    X = eq1_chain(2000, seed=fixed_seed(0))
    assert np.polyfit(X[:, 0], X[:, 1], 1)[0] == pytest.approx(3.0, abs=0.1)  # the fixture is that chain
    T = total_effects(EQ1_B)
    np.testing.assert_array_equal(T, [[1, 0, 0], [3, 1, 0], [-18, -6, 1]])  # integer path sums: exact
    stacked = total_effects(_draws(EQ1_B, EQ1_C)["B"])
    assert stacked.shape == (2, 7, 3, 3)
    np.testing.assert_array_equal(stacked, np.broadcast_to(T, stacked.shape))


def test_do_and_shift_on_the_eq1_chain():
    draws = _draws(EQ1_B, EQ1_C)
    obs = do(draws, variables=Z)  # no intervention: the observational mean (I - B)^-1 c
    np.testing.assert_allclose(obs.values[0, 0], [0.5, 3 * 0.5 - 1.0, -6 * (1.5 - 1.0) + 2.0])
    for v in (-2.0, 0.0, 4.5):
        moved = do(draws, variables=Z, z1=v)
        assert moved.dims == ("chain", "draw", "variable") and moved.shape == (2, 7, 3)
        np.testing.assert_array_equal(moved.sel(variable="z0"), obs.sel(variable="z0"))  # upstream: unchanged
        np.testing.assert_array_equal(moved.sel(variable="z1"), v)
        np.testing.assert_allclose(moved.sel(variable="z2"), -6.0 * v + EQ1_C[2], rtol=1e-12)
    T = total_effects(EQ1_B)
    for delta in (-1.0, 0.25):
        for k, name in enumerate(Z):
            moved = shift(draws, {name: delta}, variables=Z)
            np.testing.assert_allclose((moved - obs).values, np.broadcast_to(delta * T[:, k], (2, 7, 3)),
                                       rtol=1e-12, atol=1e-12)
    # several at once: setting z0 and z1 together leaves z2 depending on z1 only
    both = do(draws, {"z0": 10.0, "z1": 1.0}, variables=Z)
    np.testing.assert_allclose(both.values[0, 0], [10.0, 1.0, -6.0 + 2.0])
    assert "do(z0 = 10)" in both.attrs["intervention"]


def test_closed_forms_agree_on_random_dags():
    """Three routes to the same numbers on stacked random DAGs in random causal orders:
    path sum vs matrix inverse, do() by solve vs E[x] + T[:, k] (v - E[x_k]), shift vs delta T[:, k]."""
    rng = np.random.default_rng(fixed_seed(11))
    n, draws = 5, 300
    B = _random_dags(rng, draws, n)
    c = rng.normal(size=(draws, n))
    T = total_effects(B)
    np.testing.assert_allclose(T, np.linalg.inv(np.eye(n) - B), rtol=1e-10, atol=1e-10)
    obs = interventional_mean(B, c)
    np.testing.assert_allclose(obs, np.einsum("dij,dj->di", T, c), rtol=1e-10, atol=1e-10)
    for k in range(n):
        v = rng.normal()
        moved = interventional_mean(B, c, do={k: v})
        np.testing.assert_allclose(moved, obs + T[:, :, k] * (v - obs[:, [k]]), rtol=1e-9, atol=1e-9)
        # non-descendants of k (T[i, k] == 0) keep their mean exactly
        upstream = T[:, :, k] == 0
        np.testing.assert_array_equal(moved[upstream], obs[upstream])
        np.testing.assert_allclose(interventional_mean(B, c, shift={k: 0.7}), obs + 0.7 * T[:, :, k],
                                   rtol=1e-9, atol=1e-9)
    # shifts add up
    np.testing.assert_allclose(interventional_mean(B, c, shift={0: 1.0, 3: -2.0}),
                               obs + T[:, :, 0] - 2.0 * T[:, :, 3], rtol=1e-9, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# 2. the PyMC route: pm.do + prior predictive sampling


def test_closed_form_matches_pymc_do():
    # Four variables created in the causal order 2, 0, 3, 1 (not index order), Laplace noise.
    B = np.zeros((4, 4))
    B[0, 2], B[3, 2], B[3, 0], B[1, 3], B[1, 2] = 1.5, -0.8, 2.0, 0.6, 0.4
    c = np.array([0.3, -1.0, 2.0, 0.5])
    sigma = np.array([0.5, 1.0, 0.8, 0.3])
    names = ["x0", "x1", "x2", "x3"]
    model = linear_sem_model(B, c, sigma, names=names)
    n = 4000
    cases = {"observational": ({}, {}), "do(x0 = -1.5)": ({"x0": -1.5}, {}),
             "shift(x2 += 2)": ({}, {"x2": 2.0}), "do(x3 = 1) & shift(x2 += 2)": ({"x3": 1.0}, {"x2": 2.0})}
    for seed, (label, (set_, add)) in enumerate(cases.items()):
        samples = sample_intervened(pymc_intervene(model, do=set_, shift=add), draws=n, seed=fixed_seed(seed))
        closed = interventional_mean(B, c, {names.index(k): v for k, v in set_.items()},
                                     {names.index(k): v for k, v in add.items()})
        for k, name in enumerate(names):
            x = samples.sel(variable=name).values
            if name in set_:
                np.testing.assert_array_equal(x, set_[name])
                continue
            # Monte-Carlo error of a mean of n independent draws; 4 of its sd (p ~ 6e-5 per check)
            tol = 4 * x.std(ddof=1) / np.sqrt(n)
            assert abs(x.mean() - closed[k]) < tol, (label, name, x.mean(), closed[k], tol)


# ---------------------------------------------------------------------------------------------
# 3. a real (tiny) run posterior

#: A linear SEM in raw units over the eight descriptors (causal order I14, I5, Py, Px, a, b,
#: alpha, Vol, the simulator's), Laplace noise with per-variable scale: {effect: {cause: coef}}.
TRUE_EDGES = {"Px": {"Py": -0.8}, "a": {"Px": 0.5, "I14": 2e-4}, "b": {"Px": -0.3}, "alpha": {"Py": 5.0},
              "Vol": {"a": 3.9, "b": 3.9}}
#: intercept and Laplace scale (raw units: counts, angstrom, degree, angstrom^2)
TRUE_C_B = {"I14": (1000.0, 50.0), "I5": (300.0, 20.0), "Py": (0.2, 0.05), "Px": (0.1, 0.03), "a": (3.9, 0.01),
            "b": (3.95, 0.01), "alpha": (89.0, 0.2), "Vol": (-15.0, 0.05)}
ORDER = ["I14", "I5", "Py", "Px", "a", "b", "alpha", "Vol"]
TILES = (3, 8)  # run tile numbers are labels, not positions


def _true_raw_sem():
    B = np.zeros((8, 8))
    for e, causes in TRUE_EDGES.items():
        for k, v in causes.items():
            B[IX[e], IX[k]] = v
    c = np.array([TRUE_C_B[v][0] for v in DESCRIPTORS])
    b = np.array([TRUE_C_B[v][1] for v in DESCRIPTORS])
    return B, c, b


@pytest.fixture(scope="module")
def run_posterior(tmp_path_factory):
    """A posterior.nc written by the run's own writer for two tiles of 300 cells, each from its own
    "image" of 1200 cells standardised per image (as `causalcrystal run` does by default)."""
    from causalcrystal.engine import write_posterior
    from causalcrystal.priors import dag_prior, forbidden_into
    from causalcrystal.sem import ModelSpec, sample_tile

    B, c, b = _true_raw_sem()
    spec = ModelSpec(noise="laplace")
    prior = dag_prior([IX[v] for v in ORDER], np.full((8, 8), 0.5), forbidden_into([IX["I14"], IX["I5"]], 8))
    out = tmp_path_factory.mktemp("interventions")
    tile_dir = out / "tiles"
    tile_dir.mkdir()
    means, scales = [], []
    for k in TILES:
        rng = np.random.default_rng(fixed_seed(100 + k))
        raw = np.linalg.solve(np.eye(8) - B, (c + rng.laplace(0.0, b, size=(1200, 8))).T).T
        m, s = raw.mean(0), raw.std(0)  # the "image" standardisation
        tile = raw[:300]
        res = sample_tile((tile - m) / s, prior, spec, seed=fixed_seed(k), threads=1)
        np.savez(tile_dir / f"tile_{k:05d}.npz", **res)
        means.append(tile.mean(0))
        scales.append(s)
    n_tiles = max(TILES) + 1
    tiles = xr.Dataset(coords={"tile": np.arange(n_tiles), "image": ("tile", [f"img{k}" for k in range(n_tiles)]),
                               "row0": ("tile", np.zeros(n_tiles, int)), "col0": ("tile", np.zeros(n_tiles, int)),
                               "size": ("tile", np.full(n_tiles, 20)), "n_cells": ("tile", np.full(n_tiles, 300))})
    disc = xr.Dataset({"probability": (("tile", "effect", "cause"), np.full((n_tiles, 8, 8), 0.5))})
    constants = xr.Dataset({"tile_mean": (("tile", "variable"), np.array(means)),
                            "scale": (("tile", "variable"), np.array(scales))},
                           coords={"tile": list(TILES), "variable": list(DESCRIPTORS),
                                   "sm_fraction": ("tile", [0.1, 0.2])})
    path = out / "posterior.nc"
    write_posterior(path, tiles, disc, [prior] * n_tiles, list(TILES), tile_dir, spec, "image",
                    constants=constants)
    write_posterior(out / "lossless.nc", tiles, disc, [prior] * n_tiles, list(TILES), tile_dir, spec, "image",
                    constants=constants, lossless=True)
    return path, {"T_raw": total_effects(B), "tile_mean": dict(zip(TILES, means)),
                  "scale": dict(zip(TILES, scales))}


def test_lossless_file_holds_the_draws_as_sampled_and_the_default_rounds_them(run_posterior):
    """``lossless=True`` (``--lossless``): the draws exactly as sampled; the default file: the same
    draws through ``quantise_draws`` (tested on its own in test_engine), and smaller."""
    from causalcrystal.engine import quantise_draws

    path, _ = run_posterior
    exact, rounded = xr.open_dataset(path.parent / "lossless.nc", group="posterior"), xr.open_dataset(path, group="posterior")
    for t, k in enumerate(TILES):
        saved = np.load(path.parent / "tiles" / f"tile_{k:05d}.npz")
        for name in ("B", "c", "sigma"):
            np.testing.assert_array_equal(exact[name].values[:, :, t], saved[name].astype(np.float32))
            np.testing.assert_array_equal(rounded[name].values[:, :, t], quantise_draws(saved[name]))
    assert "lossless" in exact.attrs["draw_precision"] and "rounded" in rounded.attrs["draw_precision"]
    assert path.stat().st_size < (path.parent / "lossless.nc").stat().st_size


def test_real_posterior_shapes_and_coverage_of_true_total_effects(run_posterior):
    path, truth = run_posterior
    every = total_effects_summary(path, units="raw")  # tile=None: all tiles of the run
    assert every.sizes == {"tile": 2, "effect": 8, "cause": 8}
    assert list(every["tile"].values) == list(TILES)
    one = total_effects_summary(path.parent, tile=8, units="raw")  # a run folder works too
    assert one["mean"].dims == ("effect", "cause")
    xr.testing.assert_allclose(one[["mean", "hdi_5%", "hdi_95%"]],
                               every[["mean", "hdi_5%", "hdi_95%"]].sel(tile=8))
    assert str(one["image"].values) == "img8" and float(every["sm_fraction"].sel(tile=3)) == 0.1
    # The tile's order I14, I5, Py, Px, a, b, alpha, Vol with edges into I14, I5 forbidden allows a
    # directed path for 28 - 1 (I5 <- I14) ordered pairs; every other entry is exactly 0 in every draw.
    assert int(every["possible"].sel(tile=3).sum()) == 27
    np.testing.assert_array_equal(np.diagonal(every["mean"].values, axis1=1, axis2=2), 1.0)
    lo, hi = every["hdi_5%"].values, every["hdi_95%"].values
    possible = every["possible"].values
    covered = (lo <= truth["T_raw"]) & (truth["T_raw"] <= hi)
    assert covered[~possible].all()  # structural zeros (and the diagonal 1) are exact: [0, 0] holds the true 0
    rate, total = covered[possible].mean(), int(possible.sum())
    # 54 nominal 90 % intervals (24 of them true non-zero effects): calibrated, the number covered
    # is ~Binomial(54, 0.9), sd 2.2 intervals (4 points). The 27 intervals of a tile share its
    # coefficients, so allow 3.5 sd below nominal (as tests/test_sem.py does); the spike prior on
    # absent edges can only widen intervals around a true 0.
    assert total == 54
    assert rate >= 0.9 - 3.5 * np.sqrt(0.9 * 0.1 / total), (rate, total)
    # the strong paths are found with the right sign: Vol <- Py runs through Px, a and b
    for e, k in (("Px", "Py"), ("Vol", "Px"), ("alpha", "Py"), ("Vol", "Py")):
        sign = np.sign(truth["T_raw"][IX[e], IX[k]])
        assert (np.sign(every["mean"].sel(effect=e, cause=k)) == sign).all(), (e, k)


def test_real_posterior_raw_units_are_consistent(run_posterior):
    path, truth = run_posterior
    idata = az.from_netcdf(path)
    std = total_effects_summary(idata, prob=0.9)
    raw = total_effects_summary(idata, prob=0.9, units="raw")
    for k in TILES:
        s = truth["scale"][k]
        ratio = s[:, None] / s[None, :]  # T_raw[i, j] = T[i, j] scale_i / scale_j
        for stat in ("mean", "sd", "hdi_5%", "hdi_95%"):  # positive scaling keeps the HDI's draws
            np.testing.assert_allclose(raw[stat].sel(tile=k).values, std[stat].sel(tile=k).values * ratio,
                                       rtol=1e-9, atol=1e-15)
        # the same from raw B draws converted independently (float32 as stored, then float64)
        Bs = idata.posterior["B"].sel(tile=k).values.astype(np.float64)
        T_raw = np.linalg.inv(np.eye(8) - Bs * ratio)
        np.testing.assert_allclose(total_effects_draws(path, tile=k, units="raw").values, T_raw,
                                   rtol=1e-8, atol=1e-10)

    # do() in raw units: anchored at the tile's observed raw mean, moved along T_raw[:, Py]
    k, v = 8, 0.35
    m = truth["tile_mean"][k]
    obs = do(path, tile=k, units="raw")
    np.testing.assert_allclose(obs.values, np.broadcast_to(m, obs.shape), rtol=1e-10)
    moved = do(path, tile=k, units="raw", Py=v)
    assert moved.sizes == {"chain": 2, "draw": 500, "variable": 8}
    np.testing.assert_allclose(moved.sel(variable="Py"), v, rtol=1e-12)
    T_raw = total_effects_draws(path, tile=k, units="raw").values
    np.testing.assert_allclose(moved.values, m + T_raw[..., IX["Py"]] * (v - m[IX["Py"]]), rtol=1e-9)
    np.testing.assert_allclose((shift(path, tile=k, units="raw", Py=0.01) - obs).values,
                               0.01 * T_raw[..., IX["Py"]], rtol=1e-6, atol=1e-9)


def test_real_posterior_do_in_standardised_units(run_posterior):
    path, _ = run_posterior
    d = tile_draws(path, tile=3)
    assert d["B"].dims == ("chain", "draw", "effect", "cause") and d["B"].dtype == np.float64
    obs = do(path, tile=3)
    moved = do(path, tile=3, Py=1.0)
    np.testing.assert_array_equal(moved.sel(variable="Py"), 1.0)
    # I14 and I5 precede Py in the tile's order: their means do not move, draw by draw
    for v in ("I14", "I5"):
        np.testing.assert_array_equal(moved.sel(variable=v), obs.sel(variable=v))
    T = total_effects(d["B"].values)
    step = 1.0 - obs.sel(variable="Py").values[..., None]
    np.testing.assert_allclose(moved.values, obs.values + T[..., IX["Py"]] * step, rtol=1e-9, atol=1e-12)
    summary = summarize(moved - obs)
    assert set(summary.data_vars) == {"mean", "sd", "hdi_5%", "hdi_95%"}
    assert (summary["hdi_5%"] <= summary["mean"]).all() and (summary["mean"] <= summary["hdi_95%"]).all()


# ---------------------------------------------------------------------------------------------
# 4. bad input


def test_bad_input_errors(tmp_path):
    draws = _draws(EQ1_B, EQ1_C)
    with pytest.raises(InterventionError, match=r"unknown variable; valid names are \['z0', 'z1', 'z2'\]"):
        do(draws, variables=Z, z9=1.0)
    with pytest.raises(InterventionError, match="'Py' is a descriptor but not a variable of this model"):
        do(draws, variables=Z, Py=1.0)
    with pytest.raises(InterventionError, match="must be finite"):
        do(draws, variables=Z, z1=np.nan)
    with pytest.raises(InterventionError, match="one number"):
        shift(draws, variables=Z, z1=[1.0, 2.0])
    with pytest.raises(InterventionError, match="units 'kelvin' unknown"):
        do(draws, variables=Z, units="kelvin")
    with pytest.raises(InterventionError, match="constant_data"):
        do(draws, variables=Z, units="raw")
    with pytest.raises(InterventionError, match="single model"):
        do(draws, tile=0, variables=Z)
    with pytest.raises(InterventionError, match="prob"):
        total_effects_summary(draws, prob=1.5, variables=Z)
    # a run-like stack of 3 tiles (labels 0, 1, 2)
    tiled = {"B": np.broadcast_to(EQ1_B, (2, 7, 3, 3, 3)).copy(), "c": np.broadcast_to(EQ1_C, (2, 7, 3, 3)).copy()}
    with pytest.raises(InterventionError, match=r"tile 5 is not in this posterior.*\[0, 1, 2\]"):
        do(tiled, tile=5, variables=Z, z1=1.0)
    with pytest.raises(InterventionError, match="pass tile="):
        do(tiled, variables=Z, z1=1.0)
    assert do(tiled, tile=2, variables=Z, z1=1.0).shape == (2, 7, 3)
    # B that is not a DAG, or indexed [cause, effect] against a given order
    cyclic = EQ1_B.copy()
    cyclic[0, 2] = 0.1
    with pytest.raises(InterventionError, match="cycle"):
        total_effects(cyclic)
    with pytest.raises(InterventionError, match="both set"):
        interventional_mean(EQ1_B, EQ1_C, do={1: 0.0}, shift={1: 1.0})
    with pytest.raises(InterventionError, match="against the order"):
        linear_sem_model(EQ1_B, EQ1_C, np.ones(3), order=[2, 1, 0])
    with pytest.raises(FileNotFoundError, match="posterior.nc"):
        total_effects_summary(tmp_path)


def test_bad_tile_on_a_real_posterior(run_posterior):
    path, _ = run_posterior
    with pytest.raises(InterventionError, match=r"tile 0 is not in this posterior.*\[3, 8\]"):
        do(path, tile=0, Py=1.0)  # positions are not tile numbers
    with pytest.raises(InterventionError, match=r"cannot set 'Pz': unknown variable; valid names are \['I14'"):
        do(path, tile=3, Pz=1.0)


def test_energy_is_kept_where_it_is_one_hamiltonians(tmp_path, monkeypatch):
    """NUTS energy (az.plot_energy / az.bfmi) is stored per tile only where the kept draws are one
    Hamiltonian's consecutive transitions: thin 1, no re-run, one causal order. Thinned draws, and
    draws mixed over orders (sem.mix_orders), carry NaN; the file keeps the single-order tile's."""
    from causalcrystal.engine import write_posterior
    from causalcrystal.priors import dag_prior, forbidden_into
    from causalcrystal.sem import ModelSpec, SamplerSpec, mix_orders, order_loo, sample_tile

    B, c, b = _true_raw_sem()
    rng = np.random.default_rng(fixed_seed(140))
    raw = np.linalg.solve(np.eye(8) - B, (c + rng.laplace(0.0, b, size=(200, 8))).T).T
    X = (raw - raw.mean(0)) / raw.std(0)
    forb = forbidden_into([IX["I14"], IX["I5"]], 8)
    orders = [[IX[v] for v in ORDER], [IX[v] for v in ("I14", "I5", "Px", "Py", "a", "b", "alpha", "Vol")]]
    priors = [dag_prior(o, np.full((8, 8), 0.5), forb) for o in orders]
    # no re-run here: target_ess 0, and the r_hat rule switched off (with 2 x 300 draws it re-ran the
    # fit by chance on some machines, which made this test skip; convergence is not what it checks)
    import causalcrystal.sem as sem_module

    monkeypatch.setattr(sem_module, "RHAT_MAX", np.inf)
    kw = dict(chains=2, tune=300, draws=300, target_ess=0)
    one = sample_tile(X, priors[0], ModelSpec(noise="laplace", sampler=SamplerSpec(name="nutpie", thin=1, **kw)), seed=1)
    thinned = sample_tile(X, priors[0], ModelSpec(noise="laplace", sampler=SamplerSpec(name="nutpie", thin=2, **kw)),
                          seed=1)
    assert np.isnan(thinned["energy"]).all()
    assert not int(one["rerun_factor"])
    assert one["energy"].shape == one["B"].shape[:2] and np.isfinite(one["energy"]).all()
    other = sample_tile(X, priors[1], ModelSpec(noise="laplace", sampler=SamplerSpec(name="nutpie", thin=1, **kw)),
                        seed=2)
    # the same LOO for both orders: weights 1/2 each, so both contribute draws (no single Hamiltonian)
    mixed = mix_orders([one, other], priors, seed=0, loos=[order_loo(one)] * 2)
    assert np.allclose(mixed["order_weight"], 0.5)
    assert np.isnan(mixed["energy"]).all()
    # the file and the tile's InferenceData keep the single-order tile's energy
    tile_dir = tmp_path / "tiles"
    tile_dir.mkdir()
    np.savez(tile_dir / "tile_00000.npz", **mix_orders([one], priors[:1], seed=0))
    tiles = xr.Dataset(coords={"tile": [0], "image": ("tile", ["img0"]), "row0": ("tile", [0]), "col0": ("tile", [0]),
                               "size": ("tile", [15]), "n_cells": ("tile", [200])})
    disc = xr.Dataset({"probability": (("tile", "effect", "cause"), np.full((1, 8, 8), 0.5))})
    path = tmp_path / "posterior.nc"
    constants = xr.Dataset({"tile_mean": (("tile", "variable"), np.zeros((1, 8))),
                            "scale": (("tile", "variable"), np.ones((1, 8)))},
                           coords={"tile": [0], "variable": list(DESCRIPTORS), "sm_fraction": ("tile", [0.1])})
    write_posterior(path, tiles, disc, [priors[:1]], [0], tile_dir, ModelSpec(noise="laplace"), "image",
                    constants=constants)
    stats = az.from_netcdf(path).sample_stats.sel(tile=0)
    np.testing.assert_allclose(stats["energy"].values, one["energy"])
    one_tile = az.InferenceData(sample_stats=stats.drop_vars([c for c in stats.coords if c not in stats.dims]))
    bfmi = az.bfmi(one_tile)
    assert bfmi.shape == (2,) and (bfmi > 0).all()
    import matplotlib.pyplot as plt

    ax = az.plot_energy(one_tile)  # what issue 14 asked for, from the file
    assert len(ax.get_legend_handles_labels()[1]) >= 2  # marginal energy and energy transition
    plt.close(ax.figure)
