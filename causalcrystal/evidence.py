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
        # PSIS's generalised-Pareto fit (ArviZ's _gpdfit) weighs its grid of scales by
        # 1 / sum exp(len_j - len_i); where a grid point is far less likely than another the exp
        # overflows to inf and its weight becomes 0, the correct limit. It happens on extreme
        # tails (seen in the demo's leave-one-image-out LOO over 3 images), whose Pareto k the
        # callers record. (Stacking's own exp overflow, not harmless, cannot occur through
        # compare_loo, which shifts the pointwise values first.)
        warnings.filterwarnings("ignore", message=r"overflow encountered in exp", category=RuntimeWarning,
                                module=r"arviz\.stats\.stats")
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


def loo_by_equation(loglik: np.ndarray, engine: str = "numba") -> EquationLoo:
    """PSIS-LOO per equation and cell from the pointwise log-likelihood ``loglik`` (chain, draw, V, n).

    ``engine``: ``"numba"`` (default; compiled per-row kernels, :func:`psislw`) or ``"numpy"``
    (the array-operation reference). Both give ArviZ's numbers to floating-point noise.
    """
    ll = np.asarray(loglik)
    if ll.dtype not in (np.float32, np.float64):
        ll = ll.astype(np.float64)
    C, D, V, n = ll.shape
    S = C * D
    if engine == "numpy":
        flat = np.moveaxis(ll.reshape(S, V, n).astype(np.float64), 0, -1)   # (V, n, S)
        lw, k = psislw(-flat, engine="numpy")
        elpd = special.logsumexp(lw + flat, axis=-1)              # normalised weights: sum to 1
        lppd = special.logsumexp(flat, axis=-1) - np.log(S)
        return EquationLoo(elpd=elpd, pareto_k=k, p_loo=(lppd - elpd).sum(-1))
    if engine != "numba":
        raise ValueError(f"engine {engine!r} unknown; use 'numba' or 'numpy'.")
    M = _tail_length(S)
    X = ll.reshape(S, V * n)                                     # no copy: the kernel reads columns
    fit = _psis_numba(X, -1.0, M)
    k, rows = fit["k"], fit["rows"]
    elpd = np.empty(V * n)
    lppd = np.empty(V * n)
    if rows.size:
        # the normalised weights, with x = log weight - its maximum and L = log sum exp(x'), x'
        # the smoothed x: lw = x' - L. In the body (not smoothed) x + ll = -maximum for every
        # draw, so sum_s exp(lw + ll) = exp(-maximum - L) (n_body + sum_tail exp(x' - x)):
        # M exponentials per cell instead of S.
        sm, tx = fit["smoothed"], fit["tail_x"][rows]
        L = np.log(fit["body"][rows] + np.exp(sm).sum(1))
        elpd[rows] = np.log((S - M) + np.exp(sm - tx).sum(1)) - fit["shift"][rows] - L
        lppd[rows] = np.log(fit["lik"][rows]) - fit["low"][rows] - np.log(S)
    for r in np.flatnonzero(~fit["done"]):                        # ArviZ's per-row function
        llr = X[:, r].astype(np.float64)
        lw, k[r] = _arviz_row(-llr, M)
        elpd[r] = special.logsumexp(lw + llr)
        lppd[r] = special.logsumexp(llr) - np.log(S)
    elpd, k, lppd = elpd.reshape(V, n), k.reshape(V, n), lppd.reshape(V, n)
    return EquationLoo(elpd=elpd, pareto_k=k, p_loo=(lppd - elpd).sum(-1))


def loo_jackknife_by_equation(loglik: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """Pointwise PSIS-LOO elpd with one block of draws left out, for every block: ``(B, V, n)``.

    ``loglik`` (S, V, n) (draws flattened); ``blocks`` (S,) integer block of each draw, 0..B-1.
    The Pareto-smoothed weights are those of all ``S`` draws, kept fixed: leaving block ``b`` out
    removes its draws' terms from both sums of the self-normalised estimate
    ``elpd_i = log sum_s w_s p_is - log sum_s w_s``. So the replicates cost one pass over the
    draws (refitting the Pareto tails per block cost ~30 % of a direction test), and the spread
    they give is the Monte Carlo error of the estimate given its smoothing. Cells the compiled
    path does not smooth (rare; ArviZ's per-cell path) are recomputed per block."""
    ll = np.asarray(loglik, dtype=np.float64)
    S, V, n = ll.shape
    blocks = np.asarray(blocks, dtype=np.int64)
    B = int(blocks.max()) + 1
    X = ll.reshape(S, V * n)
    M = _tail_length(S)
    fit = _psis_numba(X, -1.0, M)
    rows, shift = fit["rows"], fit["shift"]
    onehot = np.zeros((B, S))
    onehot[blocks, np.arange(S)] = 1.0
    # with x = -ll, in units of exp(shift) (shift = max x, so nothing overflows): the unsmoothed
    # weight of a draw is exp(x - shift) and its w p is exp(-shift), i.e. 1 in the numerator's units
    den = onehot @ np.exp(-X - shift[None, :])                    # (B, R) per-block sums
    num = np.repeat(onehot.sum(1)[:, None], X.shape[1], axis=1)
    if rows.size:
        # tail draws: their smoothed terms instead of the raw ones, block by block
        top, sm, tx = fit["top"][rows], fit["smoothed"], fit["tail_x"][rows]
        b_of = blocks[top]                                        # (r, M)
        d_fix, n_fix = np.exp(sm) - np.exp(tx), np.exp(sm - tx) - 1.0
        for b in range(B):
            m = b_of == b
            den[b, rows] += np.where(m, d_fix, 0.0).sum(1)
            num[b, rows] += np.where(m, n_fix, 0.0).sum(1)
    tot_den, tot_num = den.sum(0), num.sum(0)
    out = np.log(tot_num[None, :] - num) - shift[None, :] - np.log(tot_den[None, :] - den)
    for r in np.flatnonzero(~fit["done"]):                        # ArviZ's per-row function, per block
        for b in range(B):
            llr = X[blocks != b, r]
            lw, _ = _arviz_row(-llr, _tail_length(llr.size))
            out[b, r] = special.logsumexp(lw + llr)
    return out.reshape(B, V, n)


def psislw(log_weights: np.ndarray, reff: float = 1.0, engine: str = "numba") -> tuple[np.ndarray, np.ndarray]:
    """Pareto-smoothed, normalised log weights and Pareto k of every row of ``log_weights``
    (..., S): :func:`arviz.psislw`'s algorithm (Vehtari et al. 2024; the generalized Pareto fit of
    Zhang & Stephens 2009 with ArviZ's weakly informative prior on k).

    ArviZ applies it one row at a time in Python (3.7 s for the 2,048 rows of one 256-cell tile's
    8 equations). ``engine="numpy"`` does all rows in array operations (partition, then sort the
    tail; the Pareto fit's grid as R x m x M temporaries, m = 30 + sqrt(M)). ``engine="numba"``
    (default; ~2.5x faster here, ~4.5x in :func:`loo_by_equation`, which needs no weights array)
    runs each row through compiled kernels (the tail from a histogram instead of a sort, the rest
    of the fit, the smoothing) and only the fit's m x M ``log1p`` in numpy, a few rows at a time
    (numpy's SIMD ``log1p`` is ~10x the compiled scalar one). Rows whose tail is not a plain set
    of distinct largest values (ties at the cut-off, too short a tail, non-finite weights) or
    whose fit fails go through ArviZ's own per-row function, and tied values within a tail get
    their smoothed values in ArviZ's order, so every row matches ArviZ (tested to 1e-12).
    """
    x = np.array(log_weights, dtype=np.float64)
    shape = x.shape
    S = shape[-1]
    x = x.reshape(-1, S)
    M = _tail_length(S, reff)
    if engine == "numba":
        fit = _psis_numba(x.T, 1.0, M)
        k, rows = fit["k"], fit["rows"]
        L = np.zeros(len(x))                                       # log sum exp of the smoothed
        L[rows] = np.log(fit["body"][rows] + np.exp(fit["smoothed"]).sum(1))
        out = x - (fit["shift"] + L)[:, None]
        out[rows[:, None], fit["top"][rows]] = fit["smoothed"] - L[rows, None]
        todo = np.flatnonzero(~fit["done"])
    elif engine == "numpy":
        out, k, plain = _psis_plain_numpy(x, M)
        todo = np.flatnonzero(~plain)
    else:
        raise ValueError(f"engine {engine!r} unknown; use 'numba' or 'numpy'.")
    for r in todo:
        out[r], k[r] = _arviz_row(x[r], M)
    return out.reshape(shape), k.reshape(shape[:-1])


_CUTOFFMIN = float(np.log(np.finfo(float).tiny))


def _tail_length(S: int, reff: float = 1.0) -> int:
    """ArviZ's tail length (its ``-cutoff_ind - 1``)."""
    return int(np.ceil(min(S / 5.0, 3 * (S / reff) ** 0.5)))


def _arviz_row(x: np.ndarray, M: int) -> tuple[np.ndarray, float]:
    """ArviZ's per-row PSIS of the log weights ``x`` (S,), shifted to maximum 0 first as the
    array paths do."""
    from arviz.stats.stats import _psislw

    return _psislw(x - x.max(), -M - 1, _CUTOFFMIN, True)


def _psis_plain_numpy(x: np.ndarray, M: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The numpy engine of :func:`psislw` on the rows of ``x`` (R, S) whose tail is plain:
    smoothed, normalised log weights (other rows: ``x`` shifted to maximum 0), k (``inf`` where
    not done) and which rows were done."""
    R, S = x.shape
    x = x - x.max(axis=1, keepdims=True)
    k = np.full(R, np.inf)
    plain = np.zeros(R, dtype=bool)
    if M > 4:
        # only the cut-off and the tail need ordering: partition, then sort the M largest
        part = np.argpartition(x, S - M - 1, axis=1)
        rows_all = np.arange(R)[:, None]
        xcut = np.maximum(x[np.arange(R), part[:, S - M - 1]], _CUTOFFMIN)
        top = part[:, S - M:]
        top = np.take_along_axis(top, np.argsort(x[rows_all, top], axis=1, kind="stable"), axis=1)
        tail_x = x[rows_all, top]                              # (R, M) ascending
        _ties_in_arviz_order(top, tail_x)
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
        plain[rows[~ok]] = False                              # failed fits: ArviZ's path
    return out, k, plain


def _ties_in_arviz_order(top: np.ndarray, tail_x: np.ndarray, rows=None) -> None:
    """Reorder in place the tails (R, M) (ascending) of ``rows`` (default all) that hold tied
    values into the order ArviZ's ``np.argsort`` of the tail in draw order gives them: which of
    the tied draws gets which smoothed value (e.g. float32 log-likelihoods have such ties)."""
    rows = np.arange(len(top)) if rows is None else rows
    for r in rows[(np.diff(tail_x[rows], axis=1) == 0).any(axis=1)]:
        o = np.argsort(top[r])
        si = np.argsort(tail_x[r, o])
        top[r], tail_x[r] = top[r, o][si], tail_x[r, o][si]


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


# ---------------------------------------------------------------------------------------------
# the numba engine: compiled per-row kernels around one numpy step (the fit's grid of log1p)


def _psis_numba(X: np.ndarray, sign: float, M: int) -> dict:
    """PSIS of the rows ``sign * X[:, r]`` of ``X`` (S, R) (a loglik's draws x cells need no
    transposed copy). Returns arrays over rows, with x a row's log weights: ``shift`` (max x),
    ``low`` (min x), ``top`` (R, M) the tail's draws ascending, ``tail_x`` their ``x - shift``,
    ``body`` ``sum exp(x - shift)`` over the other draws, ``lik`` ``sum exp(low - x)``, ``k``
    (``inf`` where not done), ``done`` (smoothed here: plain tail, successful fit), ``rows``
    (``flatnonzero(done)``) and ``smoothed`` (rows.size, M) the smoothed tail's ``x - shift``,
    truncated at 0."""
    S, R = X.shape
    shift, low, xcut = np.zeros(R), np.zeros(R), np.zeros(R)
    body, lik = np.ones(R), np.ones(R)
    top, tail_x = np.zeros((R, M), dtype=np.int64), np.zeros((R, M))
    done = np.zeros(R, dtype=bool)
    k = np.full(R, np.inf)
    if M <= 4:                                                     # too short a tail: ArviZ's path
        return {"shift": shift, "low": low, "top": top, "tail_x": tail_x, "body": body, "lik": lik,
                "k": k, "done": done, "rows": np.zeros(0, dtype=np.int64), "smoothed": np.zeros((0, M))}
    tails, smooth = _kernels()
    tails(X, sign, M, _CUTOFFMIN, top, tail_x, xcut, shift, low, done, body, lik)
    rows = np.flatnonzero(done)
    _ties_in_arviz_order(top, tail_x, rows)
    # the tail above the cut-off as ArviZ computes it (numpy's exp)
    tail = np.exp(tail_x[rows]) - np.exp(xcut[rows])[:, None]
    b, k_ary = _gpd_grid(tail)
    kk, smoothed, ok = np.empty(rows.size), np.empty((rows.size, M)), np.zeros(rows.size, dtype=bool)
    smooth(b, k_ary, tail, xcut[rows], kk, smoothed, ok)
    k[rows] = kk
    done[rows[~ok]] = False                                         # failed fits: ArviZ's path
    return {"shift": shift, "low": low, "top": top, "tail_x": tail_x, "body": body, "lik": lik,
            "k": k, "done": done, "rows": rows[ok], "smoothed": smoothed[ok]}


def _gpd_grid(ary: np.ndarray, chunk: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The grid of :func:`arviz.stats.stats._gpdfit` for every row of ``ary`` (R, M) (sorted
    ascending): its ``b_ary`` and ``k_ary`` (R, m), ``m = 30 + sqrt(M)``. ``chunk`` rows at a time,
    so that the m x M temporaries stay in cache (all rows at once are R x m x M: ~90 MB)."""
    R, n = ary.shape
    m = 30 + int(n**0.5)
    b = 1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5))
    b = b[None, :] / (3 * ary[:, int(n / 4 + 0.5) - 1])[:, None] + (1 / ary[:, -1])[:, None]
    k_ary = np.empty((R, m))
    buf = np.empty((min(chunk, R), m, n))
    nb = -b
    for r0 in range(0, R, chunk):
        r1 = min(r0 + chunk, R)
        t = buf[: r1 - r0]
        np.multiply(nb[r0:r1, :, None], ary[r0:r1, None, :], out=t)   # ArviZ's -b * ary
        np.log1p(t, out=t)
        np.divide(t.sum(axis=2), n, out=k_ary[r0:r1])               # ArviZ's .mean(axis=1)
    return b, k_ary


_KERNELS = None


def _kernels():
    """Compile the PSIS kernels once per process (numba's cache keeps them across processes)."""
    global _KERNELS
    if _KERNELS is None:
        import numba

        # numpy's error model: x / 0 is inf or nan as in ArviZ's numpy arithmetic, not an exception
        jit = numba.njit(cache=True, nogil=True, error_model="numpy")
        _KERNELS = (jit(_psis_tails), jit(_gpd_smooth))
    return _KERNELS


def _psis_tails(X, sign, M, cutoffmin, top, tail_x, xcut, shift, low, plain, body, lik):  # pragma: no cover
    # (compiled by numba; its statements run outside coverage)
    # For each row x = sign * X[:, r]: its maximum (shift) and minimum (low), the tail above the
    # cut-off (the M + 1-th largest value) sorted ascending (ties by draw), whether the tail is
    # plain (finite row, the M-th largest above the cut-off) and, for plain rows, the body's
    # sum exp(x - shift) and sum exp(low - x) (the likelihood's, for lppd).
    # ArviZ sorts the whole row; here a histogram of x over [low, shift] finds the top buckets
    # that hold the M + 1 largest, and only those are sorted (a bucket sort: each bucket's few
    # draws by insertion, a crowded one by merge sort): a heap, a sort or a partition of the
    # whole row measured 4-5x as slow.
    S, R = X.shape
    B = 16
    NB = 1024
    buf = np.empty((B, S))
    bucket = np.empty(S, dtype=np.int64)
    pos = np.empty(NB + 1, dtype=np.int64)
    key = np.empty(S)
    idx = np.empty(S, dtype=np.int64)
    for r0 in range(0, R, B):
        nb = min(B, R - r0)
        for s in range(S):              # B rows at a time: X's rows are read contiguously
            for j in range(nb):
                buf[j, s] = sign * X[s, r0 + j]
        for j in range(nb):
            r = r0 + j
            x = buf[j]
            finite = True
            hi = -np.inf
            lo = np.inf
            for s in range(S):
                v = x[s]
                if not np.isfinite(v):
                    finite = False
                hi = max(hi, v)
                lo = min(lo, v)
            shift[r] = hi
            low[r] = lo
            if not finite:
                continue
            scale = NB / (hi - lo)
            # a constant row (or a range too small or too large for the arithmetic): one bucket
            one = not (scale < 1e300 and hi - lo < 1e300)
            pos[:] = 0
            for s in range(S):          # bucket: non-decreasing in x
                b = 0 if one else min(int((x[s] - lo) * scale), NB - 1)
                bucket[s] = b
                pos[b + 1] += 1
            bc = NB - 1                 # the lowest bucket needed for the M + 1 largest
            n = pos[NB]
            while n < M + 1:
                bc -= 1
                n += pos[bc + 1]
            pos[bc] = 0
            for b in range(bc, NB):     # where each bucket starts in key / idx
                pos[b + 1] += pos[b]
            for s in range(S):          # draws in order: a bucket's ties stay in draw order
                b = bucket[s]
                if b >= bc:
                    p = pos[b]
                    key[p] = x[s]
                    idx[p] = s
                    pos[b] = p + 1
            start = 0
            for b in range(bc, NB):     # pos[b]: now the bucket's end
                end = pos[b]
                need = M + 1 - (n - end)
                if b == bc and end - start > 32 and need < end - start:
                    # a crowded lowest bucket (a far outlier squeezes the rest into it): keep
                    # only its draws >= its need-th largest, moved to the bucket's end in order
                    t = np.partition(key[start:end], end - start - need)[end - start - need]
                    w = end - 1
                    for i in range(end - 1, start - 1, -1):
                        if key[i] >= t:
                            key[w] = key[i]
                            idx[w] = idx[i]
                            w -= 1
                    start = w + 1
                if end - start > 32:
                    o = np.argsort(key[start:end], kind="mergesort") + start
                    key[start:end] = key[o]
                    idx[start:end] = idx[o]
                else:
                    for i in range(start + 1, end):
                        v = key[i]
                        d = idx[i]
                        p = i
                        while p > start and key[p - 1] > v:
                            key[p] = key[p - 1]
                            idx[p] = idx[p - 1]
                            p -= 1
                        key[p] = v
                        idx[p] = d
                start = end
            c = n - M - 1               # the cut-off; the tail is key[c + 1:n]
            xc = max(key[c] - hi, cutoffmin)
            xcut[r] = xc
            for i in range(M):
                tail_x[r, i] = key[c + 1 + i] - hi
                top[r, i] = idx[c + 1 + i]
            plain[r] = tail_x[r, 0] > xc
            if plain[r]:
                bs = 0.0
                ls = 0.0
                if hi - lo < 700.0:
                    # the two sums' terms multiply to exp(lo - hi) (a normal number here): one
                    # exponential and a division per draw instead of two exponentials
                    c0 = np.exp(lo - hi)
                    for s in range(S):
                        e = np.exp(lo - x[s])
                        ls += e
                        if x[s] - hi <= xc:
                            bs += c0 / e
                else:
                    for s in range(S):
                        xs = x[s] - hi
                        if xs <= xc:
                            bs += np.exp(xs)
                        ls += np.exp(lo - x[s])
                body[r] = bs
                lik[r] = ls


def _gpd_smooth(b, k_ary, tail, xcut, k, smoothed, ok):  # pragma: no cover
    # (compiled by numba; its statements run outside coverage)
    # The rest of ArviZ's _gpdfit from its grid (b, k_ary) per row of the tail (R, M), ArviZ's
    # weak prior on k, then _gpinv's smoothed tail (log, truncated at 0). A row whose grid has a
    # non-finite profile likelihood is left to ArviZ (ok = False).
    R, m = b.shape
    M = tail.shape[1]
    eps = np.finfo(np.float64).eps
    ls = np.empty(m)
    w = np.empty(m)
    lp = np.empty(M)                    # _gpinv's log1p(-p) at the tail's plotting positions
    for i in range(M):
        lp[i] = np.log1p(-(i + 0.5) / M)
    for r in range(R):
        finite = True
        top = -np.inf
        for j in range(m):
            ls[j] = M * (np.log(-(b[r, j] / k_ary[r, j])) - k_ary[r, j] - 1)
            if not np.isfinite(ls[j]):
                finite = False
            top = max(top, ls[j])
        if not finite:
            k[r] = np.nan
            ok[r] = False
            continue
        # ArviZ's weights 1 / sum_i exp(ls_i - ls_j) are the softmax of ls: m exponentials, not m^2
        tot = 0.0
        for j in range(m):
            w[j] = np.exp(ls[j] - top)
            tot += w[j]
        kept = 0.0
        for j in range(m):
            w[j] /= tot
            if not w[j] >= 10 * eps:    # ArviZ drops negligible weights
                w[j] = 0.0
            kept += w[j]
        b_post = 0.0
        for j in range(m):
            b_post += b[r, j] * (w[j] / kept)
        k_post = 0.0
        for i in range(M):
            k_post += np.log1p(-b_post * tail[r, i])
        k_post /= M
        sigma = -k_post / b_post
        k[r] = (M * k_post + 10 * 0.5) / (M + 10)
        ok[r] = np.isfinite(k[r]) and sigma > 0
        if ok[r]:
            ex = np.exp(xcut[r])
            for i in range(M):
                q = -lp[i] if abs(k[r]) < eps else np.expm1(-k[r] * lp[i]) / k[r]
                smoothed[r, i] = min(np.log(q * sigma + ex), 0.0)


def compare_loo(loos: dict, seed: int | None = None):
    """:func:`arviz.compare` with stacking weights of PSIS-LOO results ``loos`` (name ->
    ``arviz.ELPDData`` from ``az.loo(..., pointwise=True)``, all over the same observations), made
    safe for large pointwise values.

    ArviZ 0.x computes stacking weights from ``exp(elpd_i)`` as they are; above ~709 nats per
    observation (a leave-one-image-out elpd summing many tiles and couplings) that overflows, and
    the weights silently stay at the optimiser's start, 1/K ("overflow encountered in exp" is
    all the user sees). Here each observation's pointwise elpd is shifted by its largest value
    over the models first. A shift common to the models leaves the stacking optimum unchanged
    (each observation contributes ``log sum_k w_k exp(elpd_ik)``, Yao et al. 2018, Eq. 4) and so
    are ``elpd_diff`` and ``dse`` (differences of pointwise values); ``elpd_loo``, ``se`` and
    ``p_loo`` in the table are the unshifted ones. Returns ArviZ's comparison table.
    """
    import arviz as az

    names = list(loos)
    shift = np.max(np.stack([np.asarray(loos[k]["loo_i"].values, dtype=float).ravel() for k in names]), axis=0)
    shifted = {}
    for k in names:
        e = loos[k].copy()
        e["loo_i"] = loos[k]["loo_i"] - shift.reshape(loos[k]["loo_i"].shape)
        shifted[k] = e
    with loo_warnings_recorded():
        return az.compare(shifted, method="stacking", seed=seed)


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
