"""Direction probabilities from orders that differ in the pair's direction only (issue 10, item 3).

Targets: P(true direction) > 0.9 in >= 90 % of tiles for Laplace and uniform noise at n = 256, and
P in [0.2, 0.8] in >= 80 % of tiles on Gaussian data (Markov equivalent orders). Measured with the
default model on 40 two-variable tiles each: Laplace 0.95, uniform 1.00 above 0.9; Gaussian 0.90
in [0.2, 0.8]; Student-t(5) 0.57 above 0.9 (see test_t5_is_weakly_identified for why).
"""

import warnings

import numpy as np
import pytest
from conftest import fixed_seed
from scipy import stats

from causalcrystal import discovery
from causalcrystal.cells import DESCRIPTORS
from causalcrystal.direction import direction_probability, oriented_orders
from causalcrystal.priors import dag_prior, forbidden_into
from causalcrystal.simulator import TRUE_ORDER, simulate

ORDER = [DESCRIPTORS.index(v) for v in TRUE_ORDER]
FORBIDDEN = forbidden_into([0, 1], 8)
W = np.full((8, 8), 0.5)


def pair_data(noise: str, seed: int, n: int = 256, coef: float = 0.6) -> np.ndarray:
    """x -> y with coefficient ``coef``, both noises of the same family, standardised."""
    rng = np.random.default_rng(seed)
    e = {"gauss": rng.normal, "laplace": rng.laplace,
         "uniform": lambda size: rng.uniform(-1, 1, size)}[noise](size=(n, 2))
    X = np.column_stack([e[:, 0], coef * e[:, 0] + e[:, 1]])
    return (X - X.mean(0)) / X.std(0)


def test_oriented_orders_differ_in_the_pair_only():
    a, b = DESCRIPTORS.index("Px"), DESCRIPTORS.index("Py")
    pl = oriented_orders(ORDER, a, b)  # Py, Px neighbours in TRUE_ORDER: one placement
    assert len(pl) == 1
    for order in ([0, 1, 2, 3, 4, 5, 6, 7], [7, 3, 0, 5, 1, 2, 6, 4]):
        for fwd, bwd in oriented_orders(order, 2, 6):
            pos_f, pos_b = list(fwd).index(2), list(fwd).index(6)
            assert pos_b == pos_f + 1  # adjacent, a just before b
            diff = np.flatnonzero(fwd != bwd)
            assert sorted(fwd[diff]) == [2, 6] and len(diff) == 2  # only the pair swapped
            rest = [v for v in order if v not in (2, 6)]
            assert [v for v in fwd if v not in (2, 6)] == rest  # the others keep their order
    assert len(oriented_orders([0, 1, 2, 3, 4, 5, 6, 7], 2, 6)) == 2  # not neighbours: two placements


@pytest.mark.parametrize("noise", ["laplace", "uniform"])
def test_true_direction_is_confident_with_non_gaussian_noise(noise):
    """12 tiles of n = 256: at the measured rate (>= 0.95) P(>= 10 of 12 above 0.9) = 0.98; and never
    confidently reversed (uniform noise under a Laplace likelihood gave P(x -> y) 0.00-0.13)."""
    W2 = np.full((2, 2), 0.9)
    ps = np.array([direction_probability(pair_data(noise, fixed_seed(1000 + r)), [0, 1], W2, 0, 1,
                                         seed=fixed_seed(r))["p_forward"] for r in range(12)])
    assert (ps > 0.9).sum() >= 10, ps
    assert (ps > 0.1).all(), ps


def test_gaussian_noise_gives_no_direction():
    """Markov equivalent: 12 tiles, P in [0.2, 0.8] in >= 8 (at the measured rate 0.9 a failure has
    probability 0.004), and no tile confident either way beyond 0.05 / 0.95."""
    W2 = np.full((2, 2), 0.9)
    ps = np.array([direction_probability(pair_data("gauss", fixed_seed(2000 + r)), [0, 1], W2, 0, 1,
                                         seed=fixed_seed(r))["p_forward"] for r in range(12)])
    assert ((ps > 0.2) & (ps < 0.8)).sum() >= 8, ps
    assert ((ps > 0.05) & (ps < 0.95)).all(), ps


def test_monte_carlo_error_matches_the_spread_over_seeds():
    """``p_forward_mcse`` / ``elpd_diff_mcse`` (jackknife over blocks of draws) against the spread of
    10 runs with other seeds on the same Gaussian pair (p_forward mid-range, so its Monte Carlo error
    is visible; 200 kept draws per chain to keep it cheap). The seed s.d. of 10 runs has 9 degrees
    of freedom: s / sigma in [0.52, 1.44] with 98 % probability, and the RMS of 10 jackknife
    estimates is within ~15 % of sigma, so the ratio RMS / s lies in [0.5, 2.2] if the jackknife is
    right (measured 1.2-1.3 at 500 draws); a jackknife that ignored the draws' noise (e.g. 0) or
    counted the cells' sampling variance instead (``dse`` is ~5x the Monte Carlo error here) fails."""
    from causalcrystal.sem import load_spec

    X = pair_data("gauss", fixed_seed(77))
    spec = load_spec().with_(draws=200)
    rs = [direction_probability(X, [0, 1], np.full((2, 2), 0.9), 0, 1, spec=spec, seed=fixed_seed(300 + s))
          for s in range(10)]
    for est, mcse in (("p_forward", "p_forward_mcse"), ("elpd_diff", "elpd_diff_mcse")):
        spread = np.std([r[est] for r in rs], ddof=1)
        rms = np.sqrt(np.mean([r[mcse] ** 2 for r in rs]))
        assert 0.5 <= rms / spread <= 2.2, (est, rms, spread)
    assert np.mean([r["dse"] for r in rs]) > 2.2 * np.std([r["elpd_diff"] for r in rs], ddof=1)


@pytest.fixture(scope="module")
def film():
    """One 16 x 16 wall-free film tile (256 cells), Laplace noise, standardised."""
    cells = simulate((0.1,), shape=(16, 16), seed=fixed_seed(3), n_walls=0, interface_fraction=0.0)
    std = discovery.standardize(cells, "image")
    return cells, discovery.tile_matrix(std, np.arange(cells.sizes["cell"]), "image")


def test_true_direction_wins_in_an_eight_variable_tile(film):
    _, X = film
    r = direction_probability(X, ORDER, W, "Py", "Px", forbidden=FORBIDDEN, seed=fixed_seed(1))
    assert r["valid"] and r["placements"] == 1
    assert r["elpd_diff"] > 0 and r["p_forward"] > 0.5, r
    assert r["coef_forward"] < 0  # Px <- Py = -a12/a11 < 0 away from walls
    # the same pair given the other way round, and in an order where the two are not neighbours:
    # the answer is about the pair, not about where it sat
    r2 = direction_probability(X, ORDER, W, "Px", "Py", forbidden=FORBIDDEN, seed=fixed_seed(1))
    assert r2["p_forward"] == pytest.approx(1 - r["p_forward"], abs=1e-9)
    far = ORDER[:2] + [ORDER[2], ORDER[4], ORDER[5], ORDER[3], ORDER[6], ORDER[7]]  # Py ... Px
    r3 = direction_probability(X, far, W, "Py", "Px", forbidden=FORBIDDEN, seed=fixed_seed(1))
    assert r3["placements"] == 2 and r3["p_forward"] > 0.5


def test_only_the_differing_equations_are_fitted_and_the_rest_cancel(film, monkeypatch):
    """The direction test samples only the equations that differ between the orders: for a pair of
    neighbours the pair's two equations in each orientation (4 rows, not 2 x 8), more for the two
    placements of a far pair. Every comparison between the orders is exactly what fitting the whole
    orders gives: each equation's draws depend only on the seed and the equation (the same in both
    paths), the shared equations add the same log-likelihood to every order. Checked with the
    re-runs and exact refits switched off, so both paths draw the same equations once each."""
    from causalcrystal import direction, sem

    _, X = film
    monkeypatch.setattr(sem, "RHAT_MAX", np.inf)
    monkeypatch.setattr(direction, "K_REFIT", np.inf)
    spec = sem.load_spec("mog").with_(target_ess=1.0, draws=150, tune=100)
    a, b = DESCRIPTORS.index("Py"), DESCRIPTORS.index("Px")
    far = ORDER[:2] + [ORDER[2], ORDER[4], ORDER[5], ORDER[3], ORDER[6], ORDER[7]]  # Py ... Px: two placements
    for order, n_rows in ((ORDER, 4), (far, None)):
        orders = [o for pair in oriented_orders(order, a, b) for o in pair]
        priors = [dag_prior(o, W, FORBIDDEN) for o in orders]
        Xs = sem.tile_standardise(X)[0]
        batch, rows_of, _ = sem.distinct_equations(Xs, priors, drop_common=True)
        if n_rows is not None:
            assert len(batch["child"]) == n_rows and sorted(set(batch["child"].tolist())) == sorted([a, b])
        assert len(batch["child"]) < 8 * len(orders) and all((r < 0).sum() > 0 for r in rows_of)
        _, elpd_i, _, _, refits, _ = direction._fit_orders(X, priors, spec, fixed_seed(2), None)
        _, loos = sem.fit_orders(X, priors, spec, fixed_seed(2))
        whole = np.stack([lo["elpd_i"] for lo in loos])
        assert refits == 0
        # pointwise differences between orders agree to rounding
        np.testing.assert_allclose(elpd_i - elpd_i[0], whole - whole[0], atol=1e-8)
        assert not np.allclose(elpd_i[1:], elpd_i[0])  # and there is something to compare


def test_gaussian_eight_variable_tile_gives_no_direction(film):
    cells, _ = film
    B = cells["true_B"].values.mean(0)
    e = np.random.default_rng(fixed_seed(0)).normal(size=(256, 8)) * cells["true_noise_sd"].values.mean(0)
    Z = np.linalg.solve(np.eye(8) - B, e.T).T
    Z = (Z - Z.mean(0)) / Z.std(0)
    r = direction_probability(Z, ORDER, W, "Py", "Px", forbidden=FORBIDDEN, seed=fixed_seed(1))
    # complete DAGs are Markov equivalent under Gaussian noise: a small ELPD difference (|diff| < 4,
    # the usual reading of LOO, Sivula et al. 2020) and no confident direction
    assert abs(r["elpd_diff"]) < 4 and 0.05 < r["p_forward"] < 0.95, r


def test_a_copied_column_gives_no_direction():
    """b an exact linear function of a: the pair's LOO is degenerate, so no probability is given."""
    X = pair_data("laplace", fixed_seed(5))
    X = np.column_stack([X[:, 0], 2.0 * X[:, 0] + 1e-9 * X[:, 1]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = direction_probability(X, [0, 1], np.full((2, 2), 0.9), 0, 1, seed=fixed_seed(1))
    assert not r["valid"] and np.isnan(r["p_forward"]) and r["reason"], r


def test_bad_pairs_are_refused(film):
    _, X = film
    with pytest.raises(ValueError, match="exogenous"):
        direction_probability(X, ORDER, W, "I14", "a", forbidden=FORBIDDEN)
    with pytest.raises(ValueError, match="not a descriptor"):
        direction_probability(X, ORDER, W, "Pz", "a")


@pytest.mark.slow
def test_t5_is_weakly_identified():
    """Student-t(5) noise at n = 256 and coefficient 0.6 carries little direction information: even
    the correctly specified t likelihood (maximum likelihood in both directions, in-sample, an
    optimistic oracle) gives a likelihood ratio above log 9 (P > 0.9) in only ~77 % of tiles
    (measured on 60). The posterior probability must favour the truth in >= 85 % of 40 tiles and
    be confident (> 0.9) in at least half (measured 0.57)."""
    def t5(seed):
        rng = np.random.default_rng(seed)
        e = rng.standard_t(5, size=(256, 2))
        X = np.column_stack([e[:, 0], 0.6 * e[:, 0] + e[:, 1]])
        return (X - X.mean(0)) / X.std(0)

    ps = np.array([direction_probability(t5(fixed_seed(3000 + r)), [0, 1], np.full((2, 2), 0.9), 0, 1,
                                         seed=fixed_seed(r))["p_forward"] for r in range(40)])
    assert (ps > 0.5).mean() >= 0.85 and (ps > 0.9).mean() >= 0.5, ps
    assert stats.binomtest(int((ps > 0.5).sum()), 40, 0.5).pvalue < 1e-4
