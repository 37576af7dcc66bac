"""Direction probabilities from comparing causal orders (issue 4): the true direction wins on
non-Gaussian data; on Gaussian data the two orders are Markov equivalent and the probability
stays near 0.5."""

import warnings

import numpy as np
import pytest
from conftest import fixed_seed

from causalcrystal import discovery
from causalcrystal.cells import DESCRIPTORS
from causalcrystal.direction import direction_probability, oriented_orders
from causalcrystal.priors import forbidden_into
from causalcrystal.simulator import TRUE_ORDER, simulate

ORDER = [DESCRIPTORS.index(v) for v in TRUE_ORDER]
FORBIDDEN = forbidden_into([0, 1], 8)
W = np.full((8, 8), 0.5)


@pytest.fixture(scope="module")
def film():
    """One 16 x 16 wall-free film tile (256 cells), Laplace noise, standardised."""
    cells = simulate((0.1,), shape=(16, 16), seed=fixed_seed(3), n_walls=0, interface_fraction=0.0)
    std = discovery.standardize(cells, "image")
    return cells, discovery.tile_matrix(std, np.arange(cells.sizes["cell"]), "image")


def test_oriented_orders_swap_only_the_pair():
    fwd, bwd = oriented_orders(ORDER, DESCRIPTORS.index("Px"), DESCRIPTORS.index("Py"))
    pos = {v: k for k, v in enumerate(fwd)}
    assert pos[DESCRIPTORS.index("Px")] < pos[DESCRIPTORS.index("Py")]
    changed = np.flatnonzero(fwd != bwd)
    assert sorted(fwd[changed]) == sorted([DESCRIPTORS.index("Px"), DESCRIPTORS.index("Py")])


def test_true_direction_wins_on_laplace_data(film):
    _, X = film
    r = direction_probability(X, ORDER, W, "Py", "Px", forbidden=FORBIDDEN, seed=fixed_seed(1))
    # one tile: the true direction is favoured. (How often it is favoured *confidently* is a rate
    # over many tiles; as a single-tile check, p > 0.9 and elpd_diff > 2 dse failed for seed
    # offset 3 with p 0.86, elpd_diff 4.4 +- 3.7.)
    assert r["elpd_diff"] > 0 and r["p_forward"] > 0.5, r
    assert r["coef_forward"] < 0  # Px <- Py = -a12/a11 < 0 away from walls


def test_gaussian_data_give_no_direction(film):
    cells, _ = film
    B = cells["true_B"].values.mean(0)
    e = np.random.default_rng(fixed_seed(0)).normal(size=(256, 8)) * cells["true_noise_sd"].values.mean(0)
    Z = np.linalg.solve(np.eye(8) - B, e.T).T
    Z = (Z - Z.mean(0)) / Z.std(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the Gaussian-noise warning is tested in test_sem
        r = direction_probability(Z, ORDER, W, "Py", "Px", forbidden=FORBIDDEN, spec="normal", seed=fixed_seed(1))
    # complete DAGs are Markov equivalent under Gaussian noise: only the priors differ, so the ELPD
    # difference is small by the usual reading of LOO (|elpd_diff| < 4, Sivula et al. 2020). (Its
    # ratio to dse is not a z-score here: the two fits predict almost identically, so dse is tiny;
    # |diff| < 2 dse failed for seed offset 2 with diff 0.73, dse 0.30, p_forward 0.67.)
    assert abs(r["elpd_diff"]) < 4, r
    assert 0.2 < r["p_forward"] < 0.8, r


def test_bad_pairs_are_refused(film):
    _, X = film
    with pytest.raises(ValueError, match="exogenous"):
        direction_probability(X, ORDER, W, "I14", "a", forbidden=FORBIDDEN)
    with pytest.raises(ValueError, match="not a descriptor"):
        direction_probability(X, ORDER, W, "Pz", "a")
