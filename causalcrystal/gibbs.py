"""Exact Gibbs sampling of the SEM's structural equations with mixture-of-Gaussians noise.

Given a causal order the SEM's posterior factorises into one regression per descriptor (its
priors and its noise are independent of the other equations'), so a tile's posterior is a set of
independent posteriors of the form (equation ``i`` with the parents ``P`` its order allows)::

    x_i = sum_{j in P} beta_ij x_j + e_i,         e_i ~ sum_k pi_k N(mu_k, s2_k)
    beta_ij ~ w_ij N(0, slab_sd^2) + (1 - w_ij) N(0, spike_sd^2)
    pi ~ Dirichlet(alpha, ..., alpha),  mu_k ~ N(m0, (mu_sd_rel)^2 v),  s2_k ~ InvGamma(a0, var_rel v)

with ``m0`` and ``v`` the intercept and residual variance of the equation's least-squares fit
(empirical Bayes: the noise priors scale with the data, so the model is the same in standardised
and raw units). This is the model :func:`causalcrystal.sem.build_model` defines for the noise
family ``"mog"``; the intercept is the mixture's mean, so the SEM has no separate ``c``.

Every conditional is standard once the component label ``z_n`` of each cell and the slab
indicator ``g_ij`` of each coefficient are latent (Hoyer & Hyttinen 2009 model LiNGAM's noise
the same way):

* ``z_n | ...``: categorical with probabilities ``pi_k N(e_n; mu_k, s2_k)``;
* ``pi | z``: Dirichlet; ``mu_k | ...``: normal; ``s2_k | ...``: inverse gamma;
* ``g_ij | g_-j, z, ...`` one indicator at a time with *all* coefficients integrated out (the
  weighted regression's marginal likelihood, two <= 7 x 7 Choleskys per indicator), then
  ``beta | g, z, ...``: a weighted Gaussian regression (weights ``1 / s2_z``, targets
  ``x_i - mu_z``), drawn as one block. Integrating every coefficient out is what lets an effect
  move between correlated parents (with ``beta_ij`` alone integrated out, chains stuck on one
  parent reached r_hat 1.9 on a demo tile).

The numpy reference engine draws the indicators the older way (``g_ij`` with ``beta_ij`` alone
integrated out, then ``beta_ij | g_ij``, after the block draw): a different exact algorithm for the
same posterior, so their agreement (``tests/test_gibbs.py``) tests the conditionals, not one code
path against its copy.

Every array carries a leading batch axis (equations x chains, and tiles when the caller stacks
them), so one sweep is a few dozen vectorised numpy operations whatever the number of equations.
Label switching between components does not matter: no output depends on the labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from causalcrystal.errors import check_field_types
from causalcrystal.priors import PriorSpec


@dataclass(frozen=True)
class MixtureSpec:
    """Hyper-parameters of the mixture-of-Gaussians noise (see the module docstring).

    ``var_rel``: the inverse-gamma prior of each component's variance has scale ``var_rel * v``
    and shape ``a0``; with ``a0 = 2`` it acts like 4 pseudo-cells of variance ``var_rel * v / 2``.
    Without it (or with a much smaller ``var_rel``) narrow components sit on chance clusters of
    residuals and the coefficients' posterior comes out too narrow (measured: 90 % intervals
    covered 0.78-0.86 with an absolute scale of 0.005 on standardised data, 0.87-0.93 with
    ``var_rel = 0.3``; benchmarks/RESULTS.md).
    """

    components: int = 3
    alpha: float = 1.0
    a0: float = 2.0
    var_rel: float = 0.3
    mu_sd_rel: float = 2.0

    def __post_init__(self):
        check_field_types(self, "[noise]")
        if not 1 <= self.components <= 8:
            raise ValueError(f"noise components {self.components}: use 1 to 8.")
        if self.alpha <= 0 or self.a0 <= 0 or self.var_rel <= 0 or self.mu_sd_rel <= 0:
            raise ValueError("noise: alpha, a0, var_rel and mu_sd_rel must be > 0.")


def ols_constants(y: np.ndarray, X: np.ndarray, pmask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Least-squares fit with intercept of each equation on its parents (empirical-Bayes constants).

    ``y`` (E, n), ``X`` (E, n, P) (columns of absent parents are ignored), ``pmask`` (E, P).
    Returns ``(coef (E, P), intercept m0 (E,), residual variance v (E,))``; ``v`` is the mean
    squared residual, floored at ``1e-12`` times the variance of ``y`` (a deterministic equation
    is caught before sampling, see :mod:`causalcrystal.collinearity`); 1 for a constant ``y``.
    """
    E, n, P = X.shape
    coef = np.zeros((E, P))
    m0 = np.zeros(E)
    v = np.zeros(E)
    for e in range(E):
        cols = np.flatnonzero(pmask[e])
        A = np.column_stack([X[e][:, cols], np.ones(n)])
        sol, *_ = np.linalg.lstsq(A, y[e], rcond=None)
        coef[e, cols] = sol[:-1]
        m0[e] = sol[-1]
        r = y[e] - A @ sol
        # a constant y is a derived descriptor's equation (out of the likelihood; other constant
        # columns are refused): the standardised scale 1 keeps its noise prior finite
        vy = float(np.var(y[e]))
        v[e] = max(float(np.mean(r**2)), 1e-12 * vy) if vy > 0 else 1.0
    return coef, m0, v


def _logsumexp(a: np.ndarray) -> np.ndarray:
    m = a.max(-1)
    return m + np.log(np.exp(a - m[..., None]).sum(-1))


def mixture_logpdf(e: np.ndarray, pi: np.ndarray, mu: np.ndarray, s2: np.ndarray) -> np.ndarray:
    """``log sum_k pi_k N(e; mu_k, s2_k)``; ``e`` (..., n), the others (..., K) -> (..., n)."""
    lp = (np.log(pi)[..., None, :] - 0.5 * np.log(2.0 * np.pi * s2)[..., None, :]
          - 0.5 * (e[..., None] - mu[..., None, :]) ** 2 / s2[..., None, :])
    return _logsumexp(lp)


def sample_equations(y: np.ndarray, X: np.ndarray, pmask: np.ndarray, w: np.ndarray, prior: PriorSpec,
                     mix: MixtureSpec, *, chains: int, draws: int, tune: int, thin: int = 1,
                     seed: int | np.ndarray = 0, loglik: bool = True, engine: str = "numba",
                     state: np.ndarray | None = None) -> dict:
    """Posterior draws of a batch of independent equations (see the module docstring).

    ``seed``: one integer for the batch, or (numba engine) one per equation (E,), so that an
    equation gets the same draws wherever it sits in a batch.
    ``engine``: ``"numba"`` (default; the sweep compiled, ~3x faster) or ``"numpy"`` (vectorised
    over the batch, the reference the compiled one is tested against: the same posterior by a
    different indicator update, see the module docstring, and other random streams, so their
    draws agree in distribution, not number by number).

    ``y`` (E, n) children, ``X`` (E, n, P) parents (zero-padded: ``pmask`` (E, P) marks real
    parents), ``w`` (E, P) prior inclusion weights. Runs ``chains`` independent chains per
    equation, ``tune`` sweeps of burn-in, then ``draws * thin`` sweeps keeping every ``thin``-th.

    Returns numpy arrays with leading axes ``(chain, draw, E)``: ``beta`` (..., P) (0 where
    ``pmask`` is False), ``noise_weight``, ``noise_loc``, ``noise_var`` (..., K); ``loglik``
    (chain, draw, E, n) float32, the noise log-density of every cell's residual (the equation's
    pointwise log-likelihood, what LOO needs) unless ``loglik=False``; ``m0``, ``v`` (E,); and
    (numba engine) ``state`` (chain, E, 2P + 3K): each chain's last state (coefficients, slab
    indicators, mixture weights, locations, variances). Passing a ``state`` back continues those
    chains from where they stopped (use ``tune=0``: they are already warmed up) with the random
    streams of ``seed``.
    """
    y = np.asarray(y, dtype=np.float64)
    X = np.asarray(X, dtype=np.float64) * np.asarray(pmask, dtype=np.float64)[:, None, :]
    pmask = np.asarray(pmask, dtype=bool)
    E, n, P = X.shape
    K, C = mix.components, int(chains)
    per_eq = np.ndim(seed) > 0
    if per_eq and engine != "numba":
        raise ValueError("per-equation seeds need the numba engine.")
    rng = np.random.default_rng(None if per_eq else seed)
    coef, m0, v = ols_constants(y, X, pmask)
    w = np.clip(np.asarray(w, dtype=np.float64), 1e-12, 1 - 1e-12)
    if engine == "numba":
        if per_eq:
            seeds = np.array([np.random.SeedSequence(int(sd)).generate_state(C) % (2**31 - 1) for sd in seed]).T
        else:
            seeds = rng.integers(0, 2**31 - 1, size=(C, E))
        return _sample_numba(y, X, pmask, w, prior, mix, C, draws, tune, thin, seeds, loglik, coef, m0, v, state)
    if state is not None:
        raise ValueError("continuing chains (state) needs the numba engine.")
    if engine != "numpy":
        raise ValueError(f"engine {engine!r} unknown; use 'numba' or 'numpy'.")

    # batch = (chain, equation), flattened
    Bn = C * E
    rep = lambda a: np.broadcast_to(a, (C,) + a.shape).reshape((Bn,) + a.shape[1:])  # noqa: E731
    yb, Xb, pm, wb = rep(y), rep(X), rep(pmask), rep(w)
    m0b, vb = rep(m0), rep(v)
    b0 = mix.var_rel * vb[:, None]
    smu2 = mix.mu_sd_rel**2 * vb[:, None]
    slab2, spike2 = prior.slab_sd**2, prior.spike_sd**2
    logit_w = np.log(wb) - np.log1p(-wb)
    XtX_diag_guard = np.eye(P)[None] * 1e-12

    # dispersed starts: least squares plus two standard errors of noise, mixture from quantiles
    se = np.sqrt(vb[:, None] / max(n, 1))
    beta = (rep(coef) + 2.0 * se * rng.standard_normal((Bn, P))) * pm
    g = np.ones((Bn, P), dtype=bool)
    res = yb - np.einsum("bnp,bp->bn", Xb, rep(coef))
    q = np.quantile(res, (np.arange(K) + 0.5) / K, axis=1).T  # (Bn, K)
    mu = q + np.sqrt(vb)[:, None] * 0.1 * rng.standard_normal((Bn, K))
    s2 = np.repeat(vb[:, None] / K, K, axis=1)
    pi = np.full((Bn, K), 1.0 / K)

    total = tune + draws * thin
    keep = {"beta": [], "noise_weight": [], "noise_loc": [], "noise_var": []}
    ll_keep = []
    rows = np.arange(Bn)[:, None]
    for it in range(total):
        e = yb - np.matmul(Xb, beta[..., None])[..., 0]
        # component labels
        lp = np.log(pi)[:, None, :] - 0.5 * np.log(s2)[:, None, :] - 0.5 * (e[..., None] - mu[:, None, :]) ** 2 / s2[:, None, :]
        lp -= lp.max(-1, keepdims=True)
        pr = np.exp(lp)
        cdf = np.cumsum(pr, -1)
        u = rng.random((Bn, n, 1)) * cdf[..., -1:]
        z = np.minimum((cdf < u).sum(-1), K - 1)
        onehot = z[..., None] == np.arange(K)
        nk = onehot.sum(1).astype(np.float64)
        # weights, locations, variances
        gam = rng.standard_gamma(mix.alpha + nk)
        pi = np.maximum(gam / gam.sum(-1, keepdims=True), 1e-300)
        s1 = np.einsum("bnk,bn->bk", onehot, e)
        prec = 1.0 / smu2 + nk / s2
        mu = (m0b[:, None] / smu2 + s1 / s2) / prec + rng.standard_normal((Bn, K)) / np.sqrt(prec)
        ss = np.einsum("bnk,bnk->bk", onehot, (e[..., None] - mu[:, None, :]) ** 2)
        s2 = (b0 + 0.5 * ss) / rng.standard_gamma(mix.a0 + 0.5 * nk)
        if P:
            # coefficients as one block given the labels and the slab indicators
            wt = 1.0 / s2[rows, z]                      # (Bn, n)
            t = yb - mu[rows, z]
            XW = Xb * wt[..., None]
            A = np.matmul(XW.transpose(0, 2, 1), Xb)
            d = np.where(g, 1.0 / slab2, 1.0 / spike2)
            A = A + d[:, :, None] * np.eye(P)[None] + XtX_diag_guard
            rhs = np.matmul(XW.transpose(0, 2, 1), t[..., None])[..., 0]
            L = np.linalg.cholesky(A)
            mean = np.linalg.solve(A, rhs[..., None])[..., 0]
            beta = mean + np.linalg.solve(np.swapaxes(L, 1, 2), rng.standard_normal((Bn, P))[..., None])[..., 0]
            beta *= pm
            # collapsed single-site steps: g_j with beta_j integrated out, then beta_j | g_j
            diagA = A[:, np.arange(P), np.arange(P)] - d  # sum w x_j^2 (likelihood part)
            fit = np.matmul(Xb, beta[..., None])[..., 0]
            for j in range(P):
                xj = Xb[:, :, j]
                old_j = beta[:, j].copy()
                a = diagA[:, j]
                # sum w x_j (t - fit + x_j beta_j): the partial residual without coefficient j
                bj = np.einsum("bn,bn->b", XW[:, :, j], t - fit) + a * old_j
                lin1 = a + 1.0 / slab2
                lin0 = a + 1.0 / spike2
                log_odds = (logit_w[:, j] - 0.5 * np.log1p(a * slab2) + 0.5 * bj**2 / lin1
                            + 0.5 * np.log1p(a * spike2) - 0.5 * bj**2 / lin0)
                g[:, j] = rng.random(Bn) < 0.5 * (1.0 + np.tanh(0.5 * log_odds))
                lin = np.where(g[:, j], lin1, lin0)
                beta[:, j] = (bj / lin + rng.standard_normal(Bn) / np.sqrt(lin)) * pm[:, j]
                fit += xj * (beta[:, j] - old_j)[:, None]
        if it >= tune and (it - tune) % thin == thin - 1:
            keep["beta"].append(beta.copy())
            keep["noise_weight"].append(pi.copy())
            keep["noise_loc"].append(mu.copy())
            keep["noise_var"].append(s2.copy())
            if loglik:
                e = yb - np.einsum("bnp,bp->bn", Xb, beta)
                ll_keep.append(mixture_logpdf(e, pi, mu, s2).astype(np.float32))
    out = {k: np.asarray(v_).reshape(draws, C, E, -1).swapaxes(0, 1) for k, v_ in keep.items()}
    if loglik:
        out["loglik"] = np.asarray(ll_keep).reshape(draws, C, E, n).swapaxes(0, 1)
    out["m0"], out["v"] = m0, v
    return out


def mixture_moments(pi: np.ndarray, mu: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation of a Gaussian mixture (last axis: components)."""
    mean = (pi * mu).sum(-1)
    var = (pi * (s2 + mu**2)).sum(-1) - mean**2
    return mean, np.sqrt(np.maximum(var, 0.0))


# ---------------------------------------------------------------------------------------------
# the compiled sweep: the same conditionals as the numpy reference above, one (equation, chain) at a time


def _sample_numba(y, X, pmask, w, prior, mix, C, draws, tune, thin, seeds, loglik, coef, m0, v, state=None) -> dict:
    E, n, P = X.shape
    K = mix.components
    kernel = _kernel()
    warm = state is not None
    state = np.array(state, dtype=np.float64) if warm else np.zeros((C, E, 2 * P + 3 * K))
    out = {"beta": np.zeros((C, draws, E, P)), "noise_weight": np.zeros((C, draws, E, K)),
           "noise_loc": np.zeros((C, draws, E, K)), "noise_var": np.zeros((C, draws, E, K))}
    ll = np.zeros((C, draws, E, n), dtype=np.float32) if loglik else np.zeros((C, draws, E, 0), dtype=np.float32)
    logit_w = np.log(w) - np.log1p(-w)
    pmf = pmask.astype(np.float64)
    res = y - np.einsum("enp,ep->en", X, coef) - m0[:, None]
    for c in range(C):
        for e in range(E):
            kernel(y[e], X[e], pmf[e], logit_w[e], coef[e], m0[e], v[e], res[e], prior.slab_sd**2,
                   prior.spike_sd**2, mix.alpha, mix.a0, mix.var_rel, mix.mu_sd_rel, K, tune, draws, thin,
                   int(seeds[c, e]), bool(loglik), out["beta"][c, :, e], out["noise_weight"][c, :, e],
                   out["noise_loc"][c, :, e], out["noise_var"][c, :, e], ll[c, :, e], state[c, e], warm)
    if loglik:
        out["loglik"] = ll
    out["m0"], out["v"] = m0, v
    out["state"] = state
    return out


_KERNEL = None


def _kernel():
    """Compile the sweep once per process (numba's cache keeps it across processes)."""
    global _KERNEL
    if _KERNEL is None:
        import numba

        global _collapsed_logml, _cholesky
        _cholesky = numba.njit(cache=True, nogil=True)(_cholesky_py)
        _collapsed_logml = numba.njit(cache=True, nogil=True)(_collapsed_logml_py)
        _KERNEL = numba.njit(cache=True, nogil=True)(_equation_chain)
    return _KERNEL


def _collapsed_logml_py(A0, rhs, g, slab2, spike2, A, L, v):  # pragma: no cover
    """``log p(t | g)`` up to a constant, the coefficients integrated out: with prior precisions
    ``d`` (``1 / slab2`` where ``g``, else ``1 / spike2``) and ``A = X'WX + diag(d)``,
    ``-0.5 log det A + 0.5 sum log d + 0.5 rhs' A^-1 rhs``. ``A``, ``L``, ``v``: work arrays."""
    P = rhs.shape[0]
    out = 0.0
    for a in range(P):
        da = 1.0 / slab2 if g[a] else 1.0 / spike2
        out += 0.5 * np.log(da)
        for b in range(P):
            A[a, b] = A0[a, b]
        A[a, a] += da + 1e-12
    _cholesky(A, L)
    for a in range(P):
        out -= np.log(L[a, a])
        acc = rhs[a]
        for b in range(a):
            acc -= L[a, b] * v[b]
        v[a] = acc / L[a, a]
        out += 0.5 * v[a] * v[a]
    return out


_collapsed_logml = _collapsed_logml_py  # replaced by its compiled version in _kernel()


def _cholesky_py(A, L):  # pragma: no cover
    """Lower Cholesky factor of the symmetric positive definite ``A`` written into ``L`` (P <= 7).
    In place: ``np.linalg.cholesky`` allocates a new array per call, and a sweep makes 2P + 1 calls."""
    P = A.shape[0]
    for a in range(P):
        for b in range(a + 1):
            acc = A[a, b]
            for c in range(b):
                acc -= L[a, c] * L[b, c]
            if a == b:
                if acc <= 0.0:
                    raise np.linalg.LinAlgError("Matrix is not positive definite")
                L[a, a] = np.sqrt(acc)
            else:
                L[a, b] = acc / L[b, b]
        for b in range(a + 1, P):
            L[a, b] = 0.0


_cholesky = _cholesky_py  # replaced by its compiled version in _kernel()


def _equation_chain(y, X, pm, logit_w, coef, m0, v, res, slab2, spike2, alpha, a0, var_rel, mu_sd_rel, K,
                    tune, draws, thin, seed, want_ll, beta_out, pi_out, mu_out, s2_out, ll_out, state,
                    warm):  # pragma: no cover
    # (compiled by numba; its statements run outside coverage)
    # ``state`` (2P + 3K): beta, slab indicators, pi, mu, s2 at the end of the chain (written on
    # return); with ``warm`` the chain also starts from it (a continuation: no burn-in needed)
    np.random.seed(seed)
    n, P = X.shape
    b0 = var_rel * v
    smu2 = mu_sd_rel * mu_sd_rel * v
    se = np.sqrt(v / max(n, 1))
    beta = np.zeros(P)
    g = np.ones(P, dtype=np.bool_)
    for j in range(P):
        if pm[j] > 0:
            beta[j] = coef[j] + 2.0 * se * np.random.standard_normal()
    srt = np.sort(res)
    mu = np.zeros(K)
    s2 = np.full(K, v / K)
    pi = np.full(K, 1.0 / K)
    for k in range(K):
        idx = min(n - 1, int((k + 0.5) / K * n))
        mu[k] = srt[idx] + m0 + 0.1 * np.sqrt(v) * np.random.standard_normal()
    if warm:
        for j in range(P):
            beta[j] = state[j]
            g[j] = state[P + j] > 0.5
        for k in range(K):
            pi[k] = state[2 * P + k]
            mu[k] = state[2 * P + K + k]
            s2[k] = state[2 * P + 2 * K + k]
    fit = np.zeros(n)
    z = np.zeros(n, dtype=np.int64)
    lp = np.zeros(K)
    cst = np.zeros(K)
    half_inv = np.zeros(K)
    nk = np.zeros(K)
    s1 = np.zeros(K)
    ss = np.zeros(K)
    wt = np.zeros(n)
    t = np.zeros(n)
    A = np.zeros((P, P))
    A0 = np.zeros((P, P))
    L = np.zeros((P, P))
    yv = np.zeros(P)
    lm = np.zeros(2)
    rhs = np.zeros(P)
    d = np.zeros(P)
    total = tune + draws * thin
    kept = 0
    pending = -1
    half_log_2pi = 0.5 * np.log(2.0 * np.pi)
    for it in range(total):
        # residuals and component labels
        for i in range(n):
            acc = 0.0
            for j in range(P):
                acc += X[i, j] * beta[j]
            fit[i] = acc
        for k in range(K):
            nk[k] = 0.0
            s1[k] = 0.0
            cst[k] = np.log(pi[k]) - 0.5 * np.log(s2[k])
            half_inv[k] = 0.5 / s2[k]
        for i in range(n):
            e = y[i] - fit[i]
            mx = -1e300
            kmx = 0
            for k in range(K):
                dd = e - mu[k]
                lp[k] = cst[k] - dd * dd * half_inv[k]
                if lp[k] > mx:
                    mx = lp[k]
                    kmx = k
            tot = 0.0
            for k in range(K):
                # exp(0) = 1 for the largest: one exponential fewer per cell (~4 % of a sweep, measured)
                lp[k] = 1.0 if k == kmx else np.exp(lp[k] - mx)
                tot += lp[k]
            if pending >= 0:
                # this sweep starts from the last kept draw, so its label probabilities are that
                # draw's mixture density at every cell: the pointwise log-likelihood for one log
                # (computing it separately cost ~8 us per kept draw, a third of a sweep)
                ll_out[pending, i] = mx + np.log(tot) - half_log_2pi
            u = np.random.random() * tot
            acc = 0.0
            zi = K - 1
            for k in range(K):
                acc += lp[k]
                if u < acc:
                    zi = k
                    break
            z[i] = zi
            nk[zi] += 1.0
            s1[zi] += e
        pending = -1
        # weights, locations, variances
        gs = 0.0
        for k in range(K):
            pi[k] = np.random.gamma(alpha + nk[k], 1.0)
            gs += pi[k]
        for k in range(K):
            pi[k] = max(pi[k] / gs, 1e-300)
        for k in range(K):
            prec = 1.0 / smu2 + nk[k] / s2[k]
            mu[k] = (m0 / smu2 + s1[k] / s2[k]) / prec + np.random.standard_normal() / np.sqrt(prec)
            ss[k] = 0.0
        for i in range(n):
            dd = y[i] - fit[i] - mu[z[i]]
            ss[z[i]] += dd * dd
        for k in range(K):
            s2[k] = (b0 + 0.5 * ss[k]) / np.random.gamma(a0 + 0.5 * nk[k], 1.0)
        if P > 0:
            # weighted sufficient statistics given the labels
            for a in range(P):
                rhs[a] = 0.0
                for b in range(P):
                    A0[a, b] = 0.0
            for i in range(n):
                wt[i] = 1.0 / s2[z[i]]
                t[i] = y[i] - mu[z[i]]
                for a in range(P):
                    xa = X[i, a] * wt[i]
                    rhs[a] += xa * t[i]
                    for b in range(a + 1):
                        A0[a, b] += xa * X[i, b]
            for a in range(P):
                for b in range(a):
                    A0[b, a] = A0[a, b]
            # slab indicators one at a time with *all* coefficients integrated out (fully collapsed:
            # with correlated parents, moving an effect from one parent to another must pass
            # through "both in the slab", which is only likely when neither coefficient is held
            # fixed; integrating beta_j alone left chains stuck, r_hat up to 1.9)
            for j in range(P):
                if pm[j] == 0:
                    continue
                for val in range(2):
                    g[j] = val == 1
                    lm[val] = _collapsed_logml(A0, rhs, g, slab2, spike2, A, L, yv)
                lo = logit_w[j] + lm[1] - lm[0]
                g[j] = np.random.random() < 0.5 * (1.0 + np.tanh(0.5 * lo))
            # then the coefficients as one block given the indicators
            for a in range(P):
                d[a] = 1.0 / slab2 if g[a] else 1.0 / spike2
                for b in range(P):
                    A[a, b] = A0[a, b]
                A[a, a] += d[a] + 1e-12
            _cholesky(A, L)
            # mean = A^-1 rhs; draw = mean + L^-T z
            for a in range(P):
                acc = rhs[a]
                for b in range(a):
                    acc -= L[a, b] * yv[b]
                yv[a] = acc / L[a, a]
            for a in range(P):
                yv[a] += np.random.standard_normal()
            for a in range(P - 1, -1, -1):
                acc = yv[a]
                for b in range(a + 1, P):
                    acc -= L[b, a] * beta[b]
                beta[a] = acc / L[a, a] * pm[a]
        if it >= tune and (it - tune) % thin == thin - 1:
            for j in range(P):
                beta_out[kept, j] = beta[j]
            for k in range(K):
                pi_out[kept, k] = pi[k]
                mu_out[kept, k] = mu[k]
                s2_out[kept, k] = s2[k]
            if want_ll and it < total - 1:
                pending = kept  # written by the next sweep's label step
            elif want_ll:
                for k in range(K):
                    cst[k] = np.log(pi[k]) - 0.5 * np.log(2.0 * np.pi * s2[k])
                    half_inv[k] = 0.5 / s2[k]
                for i in range(n):
                    acc = 0.0
                    for j in range(P):
                        acc += X[i, j] * beta[j]
                    e = y[i] - acc
                    mx = -1e300
                    for k in range(K):
                        dd = e - mu[k]
                        lp[k] = cst[k] - dd * dd * half_inv[k]
                        if lp[k] > mx:
                            mx = lp[k]
                    tot = 0.0
                    for k in range(K):
                        tot += np.exp(lp[k] - mx)
                    ll_out[kept, i] = mx + np.log(tot)
            kept += 1
    for j in range(P):
        state[j] = beta[j]
        state[P + j] = 1.0 if g[j] else 0.0
    for k in range(K):
        state[2 * P + k] = pi[k]
        state[2 * P + K + k] = mu[k]
        state[2 * P + 2 * K + k] = s2[k]
