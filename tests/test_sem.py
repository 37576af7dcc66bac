"""The per-tile Bayesian SEM: recovery of known coefficients, calibration, direction, noise models."""


from dataclasses import fields

import arviz as az
import numpy as np
import pytest
from conftest import eq1_chain, fixed_seed
from scipy import stats

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.discovery import bootstrap_lingam
from causalcrystal.priors import PriorSpec, dag_prior, forbidden_into
from causalcrystal.sem import (GaussianNoiseWarning, ModelSpec, SamplerSpec, build_model, load_spec, noise_logp,
                               prior_predictive, sample_tile)
from causalcrystal.simulator import TRUE_ORDER, simulate
from causalcrystal.tiling import make_tiles, tile_members

IX = {v: k for k, v in enumerate(DESCRIPTORS)}
RAW = PriorSpec(slab_sd=10.0, spike_sd=0.1, intercept_sd=10.0, scale_sd=5.0)  # raw-unit toy data


def _interval(B, i, j, prob=0.9):
    return np.quantile(B[..., i, j].ravel(), [(1 - prob) / 2, (1 + prob) / 2])


def test_paper_toy_chain_eq1():
    """z1 = 3 z0 + e1, z2 = -6 z1 + e2, e ~ U(-1, 1): LiNGAM finds the chain, 90 % intervals cover 3, -6."""
    X = eq1_chain(500, seed=fixed_seed(0))
    boot = bootstrap_lingam(X, 20, exogenous=None, seed=fixed_seed(1))
    assert list(boot["order"]) == [0, 1, 2]
    assert boot["probability"][1, 0] >= 0.95 and boot["probability"][2, 1] >= 0.95
    # gennorm noise with a learned shape covers the uniform noise of Eq. 1
    spec = ModelSpec(noise="gennorm", prior=RAW)
    out = sample_tile(X, dag_prior(boot["order"], boot["probability"]), spec, seed=fixed_seed(3))
    lo, hi = _interval(out["B"], 1, 0)
    assert lo < 3 < hi and hi - lo < 0.3
    lo, hi = _interval(out["B"], 2, 1)
    assert lo < -6 < hi and hi - lo < 0.3
    assert np.abs(out["B"][..., 2, 0]).mean() < 0.1  # no direct z0 -> z2 edge
    assert out["shape"].mean() > 4  # uniform noise: the learned shape goes far beyond Gaussian (2)


def _truth_std(cells, members, X):
    """True coefficients in tile-standardised units: B_std[i, j] = B[i, j] sd_j / sd_i (B constant)."""
    B = cells["true_B"].values[members].mean(0)
    raw = np.stack([cells[v].values[members] for v in DESCRIPTORS], axis=1)
    sd = raw.std(0)
    return B * sd[None, :] / sd[:, None]


@pytest.fixture(scope="module")
def recovery():
    """12 tiles of 256 cells from wall-free, interface-free films (B constant per image)."""
    cells = simulate((0.0, 0.1, 0.2), shape=(32, 32), seed=fixed_seed(21), n_walls=0, interface_fraction=0.0)
    tiles = make_tiles(cells, 16, stride=16)
    order = [IX[v] for v in TRUE_ORDER]
    forbidden = forbidden_into([IX["I14"], IX["I5"]], 8)
    spec = load_spec("laplace")
    results = []
    for k in range(tiles.sizes["tile"]):
        m = tile_members(tiles, k)
        raw = np.stack([cells[v].values[m] for v in DESCRIPTORS], axis=1)
        X = (raw - raw.mean(0)) / raw.std(0)
        prior = dag_prior(order, np.full((8, 8), 0.5), forbidden)
        out = sample_tile(X, prior, spec, seed=fixed_seed(100 + k))
        results.append((out, _truth_std(cells, m, X), prior.allowed))
    return results


def test_recovery_coverage_signs_and_inclusion(recovery):
    covered, total, signs, present_incl, absent_incl = 0, 0, [], [], []
    for out, truth, allowed in recovery:
        B = out["B"]
        lo = np.quantile(B.reshape(-1, 8, 8), 0.05, axis=0)
        hi = np.quantile(B.reshape(-1, 8, 8), 0.95, axis=0)
        mean = B.reshape(-1, 8, 8).mean(0)
        incl = out["edge_inclusion"].reshape(-1, 8, 8).mean(0)
        present = allowed & (truth != 0)
        covered += int(((lo <= truth) & (truth <= hi))[present].sum())
        total += int(present.sum())
        strong = present & (np.abs(truth) >= 0.3)
        signs.extend((np.sign(mean[strong]) == np.sign(truth[strong])).tolist())
        present_incl.extend(incl[present & (np.abs(truth) >= 0.1)].tolist())
        absent_incl.extend(incl[allowed & (truth == 0)].tolist())
    rate = covered / total
    # 120 intervals; if calibrated the count is ~Binomial(120, 0.9): sd 2.7 points. Tiles share data
    # within a tile, so allow 3.5 sd below; shrinkage can only widen or centre intervals on 0.
    sd = np.sqrt(0.9 * 0.1 / total)
    assert total >= 100
    assert rate >= 0.9 - 3.5 * sd, (rate, total)
    assert all(signs) and len(signs) >= 40
    # absent edges are shrunk: clearly lower inclusion probability than present ones
    assert np.median(absent_incl) < 0.3 < np.median(present_incl)
    assert np.mean(absent_incl) < np.mean(present_incl) - 0.3


def test_diagnostics_are_reported(recovery):
    out = recovery[0][0]
    allowed = recovery[0][2]
    assert np.isfinite(out["r_hat"][allowed]).all() and np.isnan(out["r_hat"][~allowed]).all()
    assert out["loglik"].shape == (2, 500, 256)
    assert out["diverging"].shape == (2, 500)


def test_pointwise_loglik_matches_model_logp():
    """The numpy log-likelihood (for LOO) equals the model's Potential at the same parameters."""
    spec = ModelSpec(noise="studentt")
    model = build_model(spec, n_vars=3, n_init=7)
    rng = np.random.default_rng(fixed_seed(0))
    X = rng.standard_t(5, size=(7, 3))
    model.set_data("Z", X)
    point = model.initial_point()
    point["beta"] = np.array([0.3, -0.2, 0.5])
    point["c"] = np.array([0.1, 0.0, -0.1])
    point["sigma_log__"] = np.log([1.0, 0.5, 2.0])
    point["nu_log__"] = np.log(4.0)
    pot = model.compile_logp(vars=model.potentials, jacobian=False)(point)
    B = np.zeros((3, 3))
    B[np.tril_indices(3, -1)] = point["beta"]
    e = X - X @ B.T - point["c"]
    ll = noise_logp(e, np.array([1.0, 0.5, 2.0]), np.array(4.0), "studentt").sum()
    assert ll == pytest.approx(float(pot), rel=1e-10)
    assert ll == pytest.approx(stats.t.logpdf(e, 4.0, scale=[1.0, 0.5, 2.0]).sum(), rel=1e-10)


def test_true_direction_has_higher_elpd_on_laplace_data():
    rng = np.random.default_rng(fixed_seed(5))
    n = 400
    z0 = rng.laplace(size=n)
    z1 = 0.8 * z0 + rng.laplace(size=n)
    z2 = -0.7 * z1 + rng.laplace(size=n)
    X = np.column_stack([z0, z1, z2])
    X = (X - X.mean(0)) / X.std(0)
    spec = ModelSpec(noise="laplace")
    w = np.full((3, 3), 0.5)
    fits = {name: sample_tile(X, dag_prior(order, w), spec, seed=fixed_seed(7))
            for name, order in {"true": [0, 1, 2], "reversed": [2, 1, 0]}.items()}
    idatas = {name: az.from_dict(log_likelihood={"z": f["loglik"]}, posterior={"B": f["B"]})
              for name, f in fits.items()}
    cmp = az.compare(idatas, ic="loo")
    assert cmp.index[0] == "true"
    # the difference is far outside its standard error
    assert cmp.loc["reversed", "elpd_diff"] > 4 * cmp.loc["reversed", "dse"]


def test_gaussian_noise_warns_and_spec_errors():
    with pytest.warns(GaussianNoiseWarning, match="not identify"):
        build_model(ModelSpec(noise="normal"), n_vars=3)
    with pytest.raises(ValueError, match="noise"):
        ModelSpec(noise="cauchy")
    with pytest.raises(ValueError, match="available"):
        load_spec("no-such-model")
    with pytest.raises(ValueError, match="sampler"):
        SamplerSpec(name="metropolis")
    with pytest.raises(ValueError, match=r"scouts -1 \(needs >= 0: the --scouts option, or scouts in a spec's \[sampler\]\)"):
        SamplerSpec(scouts=-1)
    assert load_spec("mog").sampler.scouts == 8 and SamplerSpec(scouts=0).scouts == 0
    with pytest.raises(ValueError, match="gibbs sampler serves the 'mog'"):
        ModelSpec(noise="laplace", sampler=SamplerSpec(name="gibbs"))
    assert ModelSpec(noise="laplace").sampler.name == "nutpie" and ModelSpec().sampler.name == "gibbs"


def test_a_value_of_the_wrong_kind_in_a_spec_file_is_named(tmp_path):
    """A number in quotes (TOML string) was a cryptic "'<' not supported between instances of 'str'
    and 'float'" from the concentration specification; every spec section names the key instead."""
    from causalcrystal import concentration as cn

    def write(name, text):
        (tmp_path / name).write_text(text)
        return tmp_path / name

    cases = [
        (load_spec, write("m1.toml", '[sampler]\ndraws = "500"\n'), r"m1.toml: \[sampler\]: draws = '500' must be a whole"),
        (load_spec, write("m2.toml", '[prior]\nslab_sd = "1.0"\n'), r"\[prior\]: slab_sd = '1.0' must be a number \(a number in quotes"),
        (load_spec, write("m3.toml", '[noise]\nfamily = "mog"\ncomponents = 2.5\n'), r"\[noise\]: components = 2.5 must be a whole"),
        (load_spec, write("m4.toml", 'name = 3\n'), r"model: name = 3 must be a string"),
        (cn.load_spec, write("c1.toml", '[shared]\nk_cross = "0.25"\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"c1.toml: concentration spec \[shared\]: k_cross = '0.25' must be a number \(a number in quotes"),
        (cn.load_spec, write("c2.toml", '[shared]\ny0_prior = [0.2, 0.05, 0.0]\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"\[shared\]: y0_prior = \[0.2, 0.05, 0.0\] must be a list of 4 numbers"),
        (cn.load_spec, write("c3.toml", '[[coupling]]\neffect = "a"\ncause = "Px"\norient = "yes"\n'),
         r"coupling a<-Px: orient = 'yes' must be true or false\.$"),  # no "number in quotes" hint
        (cn.load_spec, write("c4.toml", '[[coupling]]\neffect = "a"\ncause = "Px"\namplitude = "-0.03"\n'),
         r"coupling a<-Px: amplitude = '-0.03' must be a number.*\(a number in quotes"),
        (cn.load_spec, write("c6.toml", '[sampler]\ndraws = "1000"\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"concentration spec \[sampler\]: draws = '1000' must be a whole number"),
        # misspelt keys and sections written as values: named, with the keys allowed
        (load_spec, write("m5.toml", '[sampler]\ndrawz = 500\n'), r"m5.toml: \[sampler\]: unknown key\(s\) \['drawz'\] \(did you mean 'draws'\?\); the known ones are \[.*'draws'"),
        (load_spec, write("m6.toml", 'sampler = 5\n'), r"\[sampler\] must be a table .*not sampler = 5"),
        (load_spec, write("m7.toml", '[sampler]\ndraws = -5\n'), r"draws -5 \(needs >= 10: the --draws option, or draws in a spec's \[sampler\]\)"),
        (cn.load_spec, write("c7.toml", '[shared]\nkcross = 0.25\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"\[shared\]: unknown key\(s\) \['kcross'\] \(did you mean 'k_cross'\?\); the known ones are \[.*'k_cross'"),
        (cn.load_spec, write("c8.toml", '[[coupling]]\neffect = "a"\ncause = "Px"\nlnk = "ps"\n'),
         r"\[\[coupling\]\] 1: unknown key\(s\) \['lnk'\] \(did you mean 'link'\?\)"),
        (cn.load_spec, write("c9.toml", 'k_cross = 0.25\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"unknown key\(s\) or section\(s\) \['k_cross'\]; a concentration specification has"),
        (cn.load_spec, write("c10.toml", '[coupling]\neffect = "a"\ncause = "Px"\n'), r"\[\[coupling\]\] entry \(double brackets\)"),
        # a suggestion only for names close to a known one, each unknown name with its own
        (load_spec, write("m8.toml", '[samplr]\ndraws = 500\n'), r"unknown section\(s\) \['samplr'\] \(did you mean 'sampler'\?\)"),
        (load_spec, write("m9.toml", '[sampler]\ndrawz = 5\ntunee = 3\nxyz = 1\n'),
         r"\['drawz', 'tunee', 'xyz'\] \(did you mean 'draws' for 'drawz', 'tune' for 'tunee'\?\); the known"),
        (cn.load_spec, write("c11.toml", '[[couplings]]\neffect = "a"\n'), r"\['couplings'\] \(did you mean 'coupling'\?\)"),
        (load_spec, "mgo", r"'mgo' not found .*\(did you mean 'mog'\?\); available"),
        (cn.load_spec, "lgdd", r"'lgdd' not found .*\(did you mean 'lgd'\?\); available"),
        (cn.load_spec, "LGD", r"'LGD' not found .*\(did you mean 'lgd'\?\); available"),  # any case
        (load_spec, write("m10.toml", '[prior]\ndraws = 500\n'), r"\[prior\]: unknown key\(s\) \['draws'\] \(draws belongs in \[sampler\]\)"),
        (cn.load_spec, write("c12.toml", '[shared]\ndraws = 500\n[[coupling]]\neffect = "a"\ncause = "Px"\n'),
         r"\[shared\]: unknown key\(s\) \['draws'\] \(draws belongs in \[sampler\]\)"),
        (load_spec, "zzz", r"'zzz' not found \(looked for [^)]*\); available"),
    ]
    for load, path, message in cases:
        with pytest.raises(ValueError, match=message):
            load(path)
    # the right kinds still load: integers where a number is asked, lists for the tuples
    ok = cn.load_spec(write("c5.toml", '[shared]\nk_cross = 1\ny0_prior = [0.2, 0.05, 0, 1]\n'
                                       '[[coupling]]\neffect = "a"\ncause = "Px"\namplitude = -1\n'))
    assert ok.k_cross == 1 and ok.y0_prior == (0.2, 0.05, 0, 1) and ok.couplings[0].amplitude == -1
    # every key of the concentration specification is read from a named table
    assert set(cn._SPEC_SECTIONS) == {f.name for f in fields(cn.ConcentrationSpec)} - {"name", "description", "couplings"}


def test_named_specs_load():
    for name in ("mog", "laplace", "studentt", "gennorm", "normal"):
        assert load_spec(name).noise == name
    assert load_spec().noise == "mog" and load_spec().sampler.name == "gibbs"


@pytest.mark.parametrize("noise", ["mog", "laplace"])
def test_simulate_sem_has_the_model_moments(noise):
    """x = (I - B)^-1 (c + e): mean (I - B)^-1 E[e], covariance (I - B)^-1 diag(var e) (I - B)^-T.
    200,000 cells: each sample mean is within 5 standard errors of the closed form, each
    covariance entry within 5 % of the largest variance."""
    from causalcrystal.sem import simulate_sem

    rng = np.random.default_rng(fixed_seed(12))
    B = np.array([[[0, 0, 0], [0.8, 0, 0], [-0.5, 0.3, 0]]], dtype=float)
    c = np.array([[0.5, -1.0, 0.2]])
    sigma = np.array([[1.0, 0.5, 2.0]])
    if noise == "mog":
        pi = np.tile([0.2, 0.5, 0.3], (1, 3, 1))
        mu = np.tile([-2.0, 0.0, 1.0], (1, 3, 1))
        s2 = np.tile([0.1, 1.0, 0.5], (1, 3, 1))
        mean_e = (pi * mu).sum(-1)[0]
        var_e = ((pi * (s2 + mu**2)).sum(-1) - (pi * mu).sum(-1) ** 2)[0]
        x = simulate_sem(B, c, sigma, "mog", 200_000, rng, mixture=(pi, mu, s2))[0]
    else:
        mean_e, var_e = c[0], 2.0 * sigma[0] ** 2
        x = simulate_sem(B, c, sigma, "laplace", 200_000, rng)[0]
    A = np.linalg.inv(np.eye(3) - B[0])
    cov = A @ np.diag(var_e) @ A.T
    np.testing.assert_array_less(np.abs(x.mean(0) - A @ mean_e), 5 * np.sqrt(np.diag(cov) / x.shape[0]))
    assert np.abs(np.cov(x.T) - cov).max() < 0.05 * np.diag(cov).max()


def test_prior_predictive_is_standardised_scale():
    prior = dag_prior(list(range(8)), np.full((8, 8), 0.3))
    pp = prior_predictive(prior, load_spec("laplace"), n_cells=200, draws=50, seed=fixed_seed(1))
    assert pp["z"].shape == (50, 200, 8)
    # B strictly lower-triangular in the order; the generated data obey z = B z + c + e
    assert np.all(np.triu(pp["B"]) == 0)
    sd = pp["z"].std(axis=1)
    assert np.median(sd) < 10  # plausible for standardised data: not wildly dispersed


def test_prior_predictive_draws_the_pymc_models_priors():
    """``prior_predictive`` takes its parameters from the PyMC model (``pm.sample_prior_predictive``),
    not from a restatement: the draws match the spec's distributions in closed form. Spike-and-slab
    beta: P(|beta| > 3 spike_sd) = w P(|N(0, slab)| > 3 spike) + (1 - w) 0.0027 per edge, with the
    tile's own weights (one edge at w 0.9, one at 0.1) and exactly 0 where the order forbids an edge;
    HalfNormal sigma: E = scale_sd sqrt(2 / pi); Student-t nu ~ Gamma(nu_alpha, rate nu_beta);
    mog: Dirichlet weights of mean 1/K. Tolerances: 4 binomial / Monte Carlo s.e. of 4,000 draws."""
    from dataclasses import replace

    order = np.array([2, 0, 1, 3, 4, 5, 6, 7])
    W = np.full((8, 8), 0.5)
    W[0, 2], W[1, 2] = 0.9, 0.1  # effect <- cause: 0 <- 2 (allowed, w 0.9), 1 <- 2 (allowed, w 0.1)
    forbidden = np.zeros((8, 8), bool)
    forbidden[3, 1] = True
    prior = dag_prior(order, W, forbidden)
    D = 4000
    spec = load_spec("studentt")
    spec = replace(spec, prior=replace(spec.prior, nu_alpha=3.0, nu_beta=0.5))
    pp = prior_predictive(prior, spec, n_cells=5, draws=D, seed=fixed_seed(11))
    pr = spec.prior
    tail = 2 * stats.norm.sf(3 * pr.spike_sd / pr.slab_sd)
    for (e, c), w in (((0, 2), 0.9), ((1, 2), 0.1)):
        p_want = w * tail + (1 - w) * 2 * stats.norm.sf(3.0)
        got = (np.abs(pp["B"][:, e, c]) > 3 * pr.spike_sd).mean()
        assert abs(got - p_want) < 4 * np.sqrt(p_want * (1 - p_want) / D), ((e, c), got, p_want)
    assert (pp["B"][:, 3, 1] == 0).all() and (pp["B"][:, 2, 0] == 0).all()  # forbidden; against the order
    m_sigma = pr.scale_sd * np.sqrt(2 / np.pi)
    sd_sigma = pr.scale_sd * np.sqrt(1 - 2 / np.pi)
    assert np.abs(pp["sigma"].mean(0) - m_sigma).max() < 4 * sd_sigma / np.sqrt(D)
    nu = pp["shape"][:, 0]
    assert abs(nu.mean() - 3.0 / 0.5) < 4 * np.sqrt(3.0) / 0.5 / np.sqrt(D)
    mix = prior_predictive(prior, load_spec("mog"), n_cells=5, draws=D, seed=fixed_seed(12))["mixture"]
    K = mix[0].shape[-1]
    assert mix[0].shape == (D, 8, K) and np.allclose(mix[0].sum(-1), 1.0)
    sd_w = np.sqrt((K - 1) / (K**2 * (K + 1)))  # Dirichlet(1, ..., 1): each weight's s.d.
    assert np.abs(mix[0].mean(0) - 1 / K).max() < 4 * sd_w / np.sqrt(D)


def test_model_spec_round_trips_through_a_manifest():
    """Jobs built on a run (compare, joint) rebuild the run's spec from its manifest's dict."""
    import json

    from causalcrystal.sem import ModelSpec, load_spec

    for name in ("mog", "laplace", "gennorm", "studentt"):
        spec = load_spec(name).with_(draws=123, thin=3)
        assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_every_noise_prior_and_the_floor_come_from_the_spec():
    """Issue 14.5: the Student-t nu and generalised-normal shape priors were hard-coded in
    build_model and copied by hand into prior_predictive; a spec floor below 0.02 was clipped back
    to 0.02 by dag_prior. All now come from PriorSpec (TOML [prior])."""
    import json
    from dataclasses import replace

    import pymc as pm
    import xarray as xr

    from causalcrystal.engine import tile_order_priors

    t = load_spec("studentt")
    t = replace(t, prior=replace(t.prior, nu_alpha=3.0, nu_beta=0.5))
    model = build_model(t, n_vars=3)
    assert np.isclose(pm.logp(model["nu"], 4.0).eval(), stats.gamma.logpdf(4.0, a=3.0, scale=1 / 0.5))
    g = load_spec("gennorm")
    g = replace(g, prior=replace(g.prior, shape_median=1.5, shape_sigma=0.5))
    model = build_model(g, n_vars=3)
    x = np.array([1.0, 1.5, 3.0])
    z = (stats.norm.cdf((np.log([g.prior.shape_min, g.prior.shape_max]) - np.log(1.5)) / 0.5) @ [-1, 1])
    want = stats.lognorm.logpdf(x, s=0.5, scale=1.5) - np.log(z)  # truncated to [shape_min, shape_max]
    np.testing.assert_allclose(pm.logp(model["shape"], x).eval(), want, rtol=1e-6)
    # prior_predictive draws nu from the same prior: nu near 1 (alpha 2, rate 2) is far heavier-tailed
    # than nu ~ 200 (alpha 400, rate 2), whose residuals are close to Gaussian (excess kurtosis ~0.03)
    order = np.arange(3)
    prior = dag_prior(order, np.full((3, 3), 0.5))
    kurt = {}
    for a in (2.0, 400.0):
        spec = replace(t, prior=replace(t.prior, nu_alpha=a, nu_beta=2.0, slab_sd=0.05, spike_sd=0.01))
        z = prior_predictive(prior, spec, n_cells=400, draws=40, seed=fixed_seed(3))["z"][:, :, 0]
        kurt[a] = float(np.median(stats.kurtosis(z, axis=1)))
    assert kurt[2.0] > 3.0 and abs(kurt[400.0]) < 0.5, kurt  # sd of a 400-cell kurtosis ~0.24
    # the floor: an edge LiNGAM never found keeps the spec's floor, not dag_prior's default 0.02
    V = len(DESCRIPTORS)
    disc = xr.Dataset({"status": ("tile", ["ok"]), "image": ("tile", ["img"]),
                       "probability": (("tile", "effect", "cause"), np.zeros((1, V, V))),
                       "order": (("tile", "position"), np.arange(V)[None])},
                      attrs={"n_bootstrap": 10, "exogenous": json.dumps([])})
    images = xr.Dataset({"image": ("k", ["img"]), "probability": (("k", "effect", "cause"), np.zeros((1, V, V)))})
    spec = load_spec("laplace")
    for floor in (0.005, 0.1):
        spec = replace(spec, prior=replace(spec.prior, floor=floor))
        (p,) = tile_order_priors(disc, images, spec, n_orders=1)[0]
        assert np.allclose(p.w, floor), (floor, p.w.min())


def test_a_constant_derived_descriptor_changes_no_other_equation():
    """A derived descriptor (no equation in the likelihood, no effects) exactly constant in a tile:
    the tile samples with finite draws, and every other equation's posterior, the log-likelihood and
    the order weights are exactly those of the same tile with that column replaced by noise (same
    seed): the column reaches nothing. Before, the constant column's noise scale was floored at
    1e-300, stored as 0, and the recomputed log-likelihood was inf * 0 = NaN."""
    from causalcrystal.sem import pointwise_loglik, sample_tile_orders

    cells = simulate((0.0,), shape=(16, 16), seed=fixed_seed(3))
    X = np.column_stack([cells[v].values for v in DESCRIPTORS])
    der = np.array([v == "Vol" for v in DESCRIPTORS])
    forbidden = forbidden_into([IX["I14"], IX["I5"]], 8) | der[:, None] | der[None, :]
    base = [IX[v] for v in TRUE_ORDER if v != "Vol"]
    orders = [base + [IX["Vol"]], base[:2] + base[2:4][::-1] + base[4:] + [IX["Vol"]]]
    priors = [dag_prior(o, np.full((8, 8), 0.5), forbidden) for o in orders]
    fits = []
    for col in (np.full(X.shape[0], 7.5), np.random.default_rng(fixed_seed(4)).normal(size=X.shape[0])):
        Xc = X.copy()
        Xc[:, IX["Vol"]] = col
        fits.append(sample_tile_orders(Xc, priors, load_spec(), seed=fixed_seed(5), active=~der))
    const, noisy = fits
    for name in ("B", "edge_inclusion", "loglik", "order_weight", "order_elpd"):
        np.testing.assert_array_equal(const[name], noisy[name], err_msg=name)
    np.testing.assert_array_equal(const["r_hat"], noisy["r_hat"])
    for name in ("c", "sigma", "noise_var", "noise_loc", "noise_weight"):
        assert np.isfinite(const[name]).all(), name
        np.testing.assert_array_equal(np.delete(const[name], IX["Vol"], axis=2),
                                      np.delete(noisy[name], IX["Vol"], axis=2), err_msg=name)
    # stored noise scales of a constant column can round to 0: the masked log-likelihood stays finite
    mixture = (const["noise_weight"], const["noise_loc"], np.where(der[:, None], 0.0, const["noise_var"]))
    Xc = X.copy()
    Xc[:, IX["Vol"]] = 7.5
    ll = pointwise_loglik(Xc, const["B"], const["c"], const["sigma"], None, "mog", mixture, active=~der)
    assert np.isfinite(ll).all()
