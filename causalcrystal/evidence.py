"""What the data say about structure: PSIS-LOO by structural equation, pseudo-BMA+ weights, validity.

Given a causal order, the SEM's posterior is a product of independent posteriors, one per
structural equation, and a cell's likelihood is a product over equations. So the leave-one-cell-out
predictive density factorises too::

    p(x_i | x_-i) = prod_v p(x_iv | pa_iv, x_-i)        =>  elpd_i = sum_v elpd_iv

and PSIS-LOO can be computed per equation (Vehtari, Gelman & Gabry 2017; Pareto smoothing from
:func:`arviz.psislw`). That is what makes comparing causal orders cheap and sharp: two orders that
share an equation share its pointwise elpd exactly, so it cancels from their difference (a
direction test that swaps two adjacent variables compares two equations, not eight), and each
equation's importance weights involve only its own few parameters (smaller Pareto k than for the
whole tile).

Model weights are pseudo-BMA+ (Yao et al. 2018): ``exp(elpd)`` weights averaged over Bayesian
bootstrap replicates of the cells, which keeps the weight spread when the difference is within its
uncertainty (near-Gaussian noise, where orders are Markov equivalent) and lets it go to 0 or 1 only
when the data decide.

A LOO result is *not evidence* (``valid = False``) when the effective number of parameters exceeds
a fifth of the observations (``p_loo > n_obs / 5``, a sign of a degenerate fit: a noise scale
collapsing on a near-deterministic relation gave ``p_loo`` 405 for 144 cells) or when importance
sampling failed for some cell (Pareto ``k > 1``, where PSIS has no finite-variance estimate;
Vehtari et al. 2024). Callers report such results as invalid instead of turning them into weights
or direction probabilities.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import numpy as np
from scipy import special

@contextlib.contextmanager
def loo_warnings_recorded():
    """Silence, around :func:`arviz.loo` / :func:`arviz.compare`, only what the caller records
    itself: the high-Pareto-k warning (callers store ``pareto_k`` / a ``warning`` column) and
    ArviZ's own deprecation chatter (pandas ``inplace``, changed defaults). Any other warning
    still reaches the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*shape parameter of Pareto distribution.*", category=UserWarning)
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"arviz(\..*)?")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"arviz(\..*)?")
        warnings.filterwarnings("ignore", message=r".*inplace keyword.*")
        yield


#: Pareto k above which a cell's PSIS-LOO estimate is not usable (Vehtari et al. 2024)
K_INVALID = 1.0
#: p_loo above this share of the observations marks a degenerate fit
P_LOO_SHARE = 0.2


@dataclass
class EquationLoo:
    """PSIS-LOO of a set of equations: ``elpd`` (V, n) pointwise per equation, ``pareto_k`` (V, n),
    ``p_loo`` (V,) (per equation: lppd - elpd)."""

    elpd: np.ndarray
    pareto_k: np.ndarray
    p_loo: np.ndarray


def loo_by_equation(loglik: np.ndarray) -> EquationLoo:
    """PSIS-LOO per equation and cell from the pointwise log-likelihood ``loglik`` (chain, draw, V, n)."""
    ll = np.asarray(loglik, dtype=np.float64)
    C, D, V, n = ll.shape
    S = C * D
    flat = np.moveaxis(ll.reshape(S, V, n), 0, -1)          # (V, n, S)
    lw, k = psislw(-flat)
    elpd = special.logsumexp(lw + flat, axis=-1)              # normalised weights: sum to 1
    lppd = special.logsumexp(flat, axis=-1) - np.log(S)
    return EquationLoo(elpd=elpd, pareto_k=k, p_loo=(lppd - elpd).sum(-1))


def psislw(log_weights: np.ndarray, reff: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, normalised log weights and Pareto k of every row of ``log_weights``
    (..., S): :func:`arviz.psislw`'s algorithm (Vehtari et al. 2024; the generalized Pareto fit of
    Zhang & Stephens 2009 with ArviZ's weakly informative prior on k), vectorised over rows.

    ArviZ applies it one row at a time in Python (3.7 s for the 2,048 rows of one 256-cell tile's
    8 equations); this does all rows in array operations. Rows whose tail is not a plain set of
    distinct largest values (ties at the cut-off, too short a tail) or whose fit fails go through
    ArviZ's own per-row function, so every row matches ArviZ (tested to 1e-12).
    """
    from arviz.stats.stats import _psislw

    x = np.array(log_weights, dtype=np.float64)
    shape = x.shape
    S = shape[-1]
    x = x.reshape(-1, S)
    R = x.shape[0]
    M = int(np.ceil(min(S / 5.0, 3 * (S / reff) ** 0.5)))  # tail length (arviz: -cutoff_ind - 1)
    cutoffmin = np.log(np.finfo(float).tiny)
    x = x - x.max(axis=1, keepdims=True)
    k = np.full(R, np.inf)
    plain = np.zeros(R, dtype=bool)
    if M > 4:
        # only the cut-off and the tail need ordering: partition, then sort the M largest
        part = np.argpartition(x, S - M - 1, axis=1)
        rows_all = np.arange(R)[:, None]
        xcut = np.maximum(x[np.arange(R), part[:, S - M - 1]], cutoffmin)
        top = part[:, S - M:]
        top = np.take_along_axis(top, np.argsort(x[rows_all, top], axis=1, kind="stable"), axis=1)
        tail_x = x[rows_all, top]                              # (R, M) ascending
        plain = (tail_x[:, 0] > xcut) & np.isfinite(x).all(axis=1)
    out = x.copy()
    if plain.any():
        rows = np.flatnonzero(plain)
        ex = np.exp(xcut[rows])[:, None]
        tail = np.exp(tail_x[rows]) - ex                       # sorted ascending, all > 0
        kk, sig = _gpdfit_rows(tail)
        ok = np.isfinite(kk) & (sig > 0)
        k[rows] = kk
        sti = np.arange(0.5, M) / M
        inv = np.where(np.abs(kk)[:, None] < np.finfo(float).eps, -np.log1p(-sti)[None, :],
                       np.expm1(-kk[:, None] * np.log1p(-sti)[None, :]) / np.where(kk == 0, 1.0, kk)[:, None])
        smoothed = np.log(inv * sig[:, None] + ex)
        good = rows[ok]
        out[good[:, None], top[good]] = smoothed[ok]
        sm = np.minimum(out[rows], 0.0)
        out[rows] = sm - special.logsumexp(sm, axis=1, keepdims=True)
        plain[rows[~ok]] = False                              # failed fits: ArviZ's path below
    for r in np.flatnonzero(~plain):
        out[r], k[r] = _psislw(x[r].copy(), -M - 1, cutoffmin, True)
    return out.reshape(shape), k.reshape(shape[:-1])


def _gpdfit_rows(ary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`arviz.stats.stats._gpdfit` for every row of ``ary`` (rows, n), sorted ascending."""
    prior_bs, prior_k = 3, 10
    R, n = ary.shape
    m_est = 30 + int(n**0.5)
    b = 1 - np.sqrt(m_est / (np.arange(1, m_est + 1, dtype=float) - 0.5))
    b = b[None, :] / (prior_bs * ary[:, int(n / 4 + 0.5) - 1])[:, None] + (1 / ary[:, -1])[:, None]  # (R, m)
    with np.errstate(all="ignore"):
        k_ary = np.log1p(-b[:, :, None] * ary[:, None, :]).mean(axis=2)
        len_scale = n * (np.log(-(b / k_ary)) - k_ary - 1)
        weights = 1 / np.exp(len_scale[:, None, :] - len_scale[:, :, None]).sum(axis=2)
    weights = np.where(weights >= 10 * np.finfo(float).eps, weights, 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    b_post = (b * weights).sum(axis=1)
    with np.errstate(all="ignore"):
        k_post = np.log1p(-b_post[:, None] * ary).mean(axis=1)
    sigma = -k_post / b_post
    k_post = (n * k_post + prior_k * 0.5) / (n + prior_k)
    return k_post, sigma


def pseudo_bma_weights(elpd_i: np.ndarray, seed: int = 0, b_samples: int = 1000) -> np.ndarray:
    """Pseudo-BMA+ weights of models with pointwise elpd ``elpd_i`` (models, n): the mean over
    Bayesian-bootstrap replicates (Dirichlet(1) weights over cells) of ``softmax(n * sum_i u_i elpd_i)``."""
    elpd_i = np.asarray(elpd_i, dtype=np.float64)
    M, n = elpd_i.shape
    if M == 1:
        return np.ones(1)
    rng = np.random.default_rng(seed)
    u = rng.dirichlet(np.ones(n), size=b_samples)            # (b, n)
    z = n * u @ elpd_i.T                                      # (b, M)
    w = np.exp(z - special.logsumexp(z, axis=1, keepdims=True)).mean(0)
    return w / w.sum()


def loo_summary(elpd_i: np.ndarray, pareto_k: np.ndarray, p_loo: float, n_obs: int) -> dict:
    """``elpd``, its ``se``, ``p_loo``, the largest Pareto k and ``valid`` (see the module
    docstring) of one model with pointwise elpd ``elpd_i`` (n,) and ``pareto_k`` (any shape)."""
    n = elpd_i.size
    kmax = float(np.nanmax(pareto_k)) if np.size(pareto_k) else 0.0
    return {"elpd": float(elpd_i.sum()), "se": float(np.sqrt(n * np.var(elpd_i))), "p_loo": float(p_loo),
            "pareto_k": kmax, "valid": bool(p_loo <= P_LOO_SHARE * n_obs and kmax <= K_INVALID)}


def difference(elpd_a: np.ndarray, elpd_b: np.ndarray) -> tuple[float, float]:
    """ELPD difference ``a - b`` and its standard error from paired pointwise values."""
    d = np.asarray(elpd_a) - np.asarray(elpd_b)
    return float(d.sum()), float(np.sqrt(d.size * np.var(d)))
