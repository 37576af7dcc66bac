"""Which way does an edge point? Posterior direction probabilities from orders that differ in that edge only.

LiNGAM finds some pairs both ways (the paper's ``a <-> b`` and ``Px <-> Py``). For a pair
``(a, b)`` and a tile, :func:`direction_probability` compares causal orders that differ **only** in
the pair's direction: ``a`` and ``b`` adjacent, ``a`` just before ``b`` or just after, the rest of
the tile's order unchanged. Two such orders differ in exactly two structural equations (those of
``a`` and ``b``), so the comparison is the two-equation question "``b`` on ``a`` and the rest, or
``a`` on ``b`` and the rest", and everything else cancels exactly (:mod:`causalcrystal.evidence`).
Where the pair is not adjacent in the tile's order, it can be made adjacent at the earlier
position or at the later one; both placements are fitted, and

    P(a -> b) = sum of the pseudo-BMA+ weights of the orders with a before b

over the two or four orders (so the placement is averaged over too).

Why this is a fair comparison:

* both directions get the same inclusion weight on the pair's edge (the larger of LiNGAM's two
  bootstrap probabilities), so the prior does not vote for LiNGAM's direction;
* the default noise (``mog``) learns each equation's noise shape, so sub-Gaussian noise (uniform:
  where a fixed Laplace likelihood gave confidently *reversed* directions) and super-Gaussian
  noise are both used the way LiNGAM uses them; with Gaussian noise the two orders are Markov
  equivalent and the weights stay near 0.5;
* pseudo-BMA+ weights (Bayesian bootstrap) only approach 0 or 1 when the ELPD difference is large
  against its own uncertainty.

Monte Carlo error: ``p_forward`` and ``elpd_diff`` come from finite draws, and their Monte Carlo
error is comparable to the statistical uncertainty (the ELPD difference had a seed-to-seed s.d.
of ~0.74 nats where ``dse`` was 1-4). ``p_forward_mcse`` and ``elpd_diff_mcse`` are delete-one-block
jackknife standard errors (Efron & Tibshirani 1993, ch. 11) over blocks of kept draws: LOO with
each block's draws removed from the full run's Pareto-smoothed weights
(:func:`causalcrystal.evidence.loo_jackknife_by_equation`), the same Bayesian-bootstrap seed
throughout. Checked against the spread over 6 seeds on 24 tile-pairs (benchmarks/RESULTS.md):
median ratio 0.96 (with the smoothing refitted per block; keeping it fixed changed each MCSE by
at most 3 % at a third of the cost, ~10 % of a direction test). It does not see modes a run never
visited.

No direction is returned (``p_forward`` NaN, ``valid`` False, ``reason`` says why) when the LOO
comparison is not evidence: the pair's equations are degenerate or badly misspecified (``p_loo``
above a fifth of the observations, e.g. a descriptor that is a function of the other, or a tile
mixing film and substrate; seen on a demo tile of 80 substrate and 176 film cells) or importance sampling failed
for a cell (Pareto ``k > 1``) and the exact refit without that cell was not possible.
"""

from __future__ import annotations

import numpy as np

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.priors import dag_prior
from causalcrystal.sem import DEFAULT_SPEC, ModelSpec, load_spec


def _index(v) -> int:
    if isinstance(v, str):
        if v not in DESCRIPTORS:
            raise ValueError(f"{v!r} is not a descriptor; use one of {list(DESCRIPTORS)}.")
        return DESCRIPTORS.index(v)
    return int(v)


def oriented_orders(order, a: int, b: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The placements of the pair: a list of ``(order with a just before b, the same with b just
    before a)``, the rest of ``order`` unchanged. One placement where ``a`` and ``b`` are
    neighbours in ``order``; otherwise two: the pair at the earlier of their positions (the later
    one moved up) and at the later (the earlier one moved down)."""
    order = [int(v) for v in order]
    pa, pb = order.index(a), order.index(b)
    rest = [v for v in order if v not in (a, b)]
    lo, hi = min(pa, pb), max(pa, pb)
    spots = [lo] if hi - lo == 1 else [lo, hi - 1]  # insertion index into ``rest``
    out = []
    for at in spots:
        fwd = np.array(rest[:at] + [a, b] + rest[at:], dtype=np.int64)
        bwd = np.array(rest[:at] + [b, a] + rest[at:], dtype=np.int64)
        out.append((fwd, bwd))
    return out


def direction_probability(X: np.ndarray, order, weights: np.ndarray, a, b, *, forbidden=None,
                          spec: ModelSpec | str = DEFAULT_SPEC, seed: int = 0, active=None, derived=()) -> dict:
    """Posterior probability that ``a -> b`` rather than ``b -> a`` in one tile (or image).

    ``X``: cells x descriptors (standardised); ``order``: the tile's causal order (descriptor
    indices); ``weights``: ``[effect, cause]`` inclusion weights (e.g. bootstrap probabilities);
    ``a``, ``b``: descriptor names or indices; ``active``: descriptors whose equations count
    (default all); ``derived``: descriptors treated as derived in this tile. A pair with a derived
    member, or one whose members are a near-deterministic function of each other (and the rest,
    :func:`causalcrystal.collinearity.find_relations`), gets no direction. Returns a dict: ``pair``, ``p_forward`` (= P(a -> b); NaN when not
    ``valid``) and ``p_forward_mcse`` (its Monte Carlo standard error, see the module docstring),
    ``elpd_diff`` (forward - backward in the
    placement with the most weight), its ``elpd_diff_mcse`` and its ``dse``, ``coef_forward`` / ``coef_backward`` (posterior means of the pair's coefficient in that
    placement), ``valid``, ``reason``, ``pareto_k`` and ``p_loo`` of the pair's equations,
    ``placements`` (1 or 2) and ``refits`` (cells whose LOO was computed by refitting).
    """
    from causalcrystal.evidence import K_INVALID, P_LOO_SHARE, difference, pseudo_bma_weights

    spec = load_spec(spec) if isinstance(spec, str) else spec
    a, b = _index(a), _index(b)
    if a == b:
        raise ValueError("direction_probability needs two different variables.")
    X = np.asarray(X, dtype=np.float64)
    why = _deterministic_pair(X, a, b, derived)
    if not why and forbidden is not None and (forbidden[b, a] or forbidden[a, b]):
        raise ValueError(f"prior knowledge forbids an edge between {DESCRIPTORS[a]} and {DESCRIPTORS[b]} in one "
                         "direction (an exogenous variable); there is no direction to compare.")
    if why:
        return {"pair": f"{DESCRIPTORS[a]}->{DESCRIPTORS[b]}" if X.shape[1] == len(DESCRIPTORS) else f"{a}->{b}",
                "p_forward": float("nan"), "p_forward_mcse": float("nan"), "elpd_diff": float("nan"),
                "elpd_diff_mcse": float("nan"), "dse": float("nan"),
                "coef_forward": float("nan"), "coef_backward": float("nan"), "valid": False, "reason": why,
                "pareto_k": float("nan"), "p_loo": float("nan"), "placements": 0, "refits": 0}
    W = np.array(weights, dtype=float)
    W[b, a] = W[a, b] = max(W[b, a], W[a, b])  # the same prior belief in the edge both ways
    pairs = oriented_orders(order, a, b)
    orders = [o for pair in pairs for o in pair]
    priors = [dag_prior(o, W, forbidden, floor=spec.prior.floor) for o in orders]
    n = X.shape[0]
    fits, elpd_i, eq_k, eq_p, refits, jack = _fit_orders(X, priors, spec, seed, active)
    # pointwise elpd of each order for the weights: only the equations that differ between the
    # orders are fitted (the others add the same to every order and cancel exactly), which for a
    # pair adjacent in the order are the pair's two equations
    w = pseudo_bma_weights(elpd_i, seed=seed)
    p_forward = float(w[0::2].sum())
    best = int(np.argmax([w[2 * q] + w[2 * q + 1] for q in range(len(pairs))]))
    f, g = 2 * best, 2 * best + 1
    diff, dse = difference(elpd_i[f], elpd_i[g])
    # Monte Carlo error of both (the same Bayesian-bootstrap seed in every replicate, so only the
    # draws vary): delete-one-block jackknife over blocks of kept draws
    p_mcse = _jackknife_se([float(pseudo_bma_weights(e, seed=seed)[0::2].sum()) for e in jack])
    diff_mcse = _jackknife_se([difference(e[f], e[g])[0] for e in jack])
    pair_rows = [a, b]
    kmax = max(float(np.nanmax(eq_k[m][pair_rows])) for m in range(len(orders)))
    p_loo = max(float(eq_p[m][pair_rows].sum()) for m in range(len(orders)))
    valid, reason = True, ""
    if p_loo > P_LOO_SHARE * 2 * n:
        valid, reason = False, (f"the pair's LOO is not evidence (p_loo {p_loo:.0f} > {P_LOO_SHARE:g} x {2 * n} "
                                "observations): one may be a function of the other, or the tile mixes regions "
                                "(film and substrate, domains) that one linear SEM does not describe")
    elif kmax > K_INVALID:
        valid, reason = False, (f"PSIS-LOO failed for a cell of the pair's equations (Pareto k {kmax:.3g} > "
                                f"{K_INVALID:g})")
    return {"pair": f"{DESCRIPTORS[a]}->{DESCRIPTORS[b]}", "p_forward": p_forward if valid else float("nan"),
            "p_forward_mcse": p_mcse if valid else float("nan"), "elpd_diff": diff, "elpd_diff_mcse": diff_mcse,
            "dse": dse, "coef_forward": float(fits[f](b, a)),
            "coef_backward": float(fits[g](a, b)), "valid": valid, "reason": reason,
            "pareto_k": kmax, "p_loo": p_loo, "placements": len(pairs), "refits": refits}


def _deterministic_pair(X: np.ndarray, a: int, b: int, derived) -> str:
    """Why the pair has no direction to compare (a derived member, or a near-deterministic relation
    between them), or ``""``."""
    from causalcrystal.collinearity import find_relations

    names = list(DESCRIPTORS) if X.shape[1] == len(DESCRIPTORS) else [str(c) for c in range(X.shape[1])]
    der = {names[d] if isinstance(d, (int, np.integer)) else d for d in derived}
    for v in (a, b):
        if names[v] in der:
            return f"{names[v]} is treated as derived (a function of other descriptors), not as a cause or an effect"
    for r in find_relations(X, names):
        if {r.target, *r.predictors} >= {names[a], names[b]} and r.target in (names[a], names[b]):
            return f"near-deterministic relation {r.text()}: an identity, not a causal direction"
    return ""


def _fit_orders(X, priors, spec: ModelSpec, seed: int, active):
    """Fit what differs between the orders. Returns per order: a function ``coef(effect, cause)``
    (the posterior mean of that coefficient in the units of ``X``), the pointwise elpd (n,) of the
    order's differing equations, and per equation in descriptor indexing Pareto k (V, n) and p_loo
    (V,) (0 for the equations all orders share); and the number of exact refits.

    With the Gibbs sampler only the equations that differ between the orders are sampled
    (:func:`causalcrystal.sem.distinct_equations` with ``drop_common``), and cells whose Pareto k
    exceeds 0.7 get their exact LOO by refitting the equation without them. Other samplers fit
    every order whole; their shared equations' elpd is then the same up to Monte Carlo error."""
    from causalcrystal import sem

    if not (spec.noise == "mog" and spec.sampler.name == "gibbs"):
        fits, loos = sem.fit_orders(X, priors, spec, seed, active)
        coefs = [lambda i, j, f=f: f["B"][..., i, j].mean() for f in fits]
        # the jackknife per order, over its equations in the likelihood (whole orders here)
        per_order = [_jackknife_elpd(f["loglik_eq"])[:, np.asarray(f["eq_active"], dtype=bool)].sum(1) for f in fits]
        jack = list(np.stack(per_order, axis=1))                 # per block: (orders, n)
        return (coefs, np.stack([lo["elpd_i"] for lo in loos]), [lo["k_eq"] for lo in loos],
                [lo["p_eq"] for lo in loos], 0, jack)
    Xs, _, sd = sem.tile_standardise(X)
    batch, rows_of, per_order = sem.distinct_equations(Xs, priors, active, drop_common=True)

    fit, eq_loo, _ = sem.sample_equation_batch(batch, spec, seed, sem.weighted_rows(batch, rows_of, per_order, seed))
    refitted = np.zeros(eq_loo.elpd.shape, dtype=bool)
    refits = _reloo(batch, fit, eq_loo, spec, seed, refitted)
    loos = sem.orders_loo(batch, rows_of, per_order, eq_loo)
    jack = [np.stack([lo["elpd_i"] for lo in sem.orders_loo(batch, rows_of, per_order, part)])
            for part in _jackknife_loo(fit["loglik"], eq_loo, refitted)]
    means = fit["beta"].mean(axis=(0, 1))  # (U, P)

    def coef_of(eqs, rows):
        def coef(i, j):
            pos = int(np.flatnonzero(eqs["child"] == i)[0])
            u = rows[pos]
            hit = np.flatnonzero(batch["parents"][u] == j) if u >= 0 else []
            return means[u, hit[0]] * sd[i] / sd[j] if len(hit) else 0.0
        return coef

    coefs = [coef_of(eqs, rows) for eqs, rows in zip(per_order, rows_of)]
    return (coefs, np.stack([lo["elpd_i"] for lo in loos]), [lo["k_eq"] for lo in loos],
            [lo["p_eq"] for lo in loos], refits, jack)


#: blocks of kept draws per chain for the jackknife Monte Carlo error of a direction test
JACKKNIFE_BLOCKS = 5


def _jackknife_loo(loglik: np.ndarray, eq_loo, refitted: np.ndarray) -> list:
    """PSIS-LOO per equation with one block of draws left out, for every block
    (:func:`causalcrystal.evidence.loo_jackknife_by_equation`, the full run's smoothed weights):
    each chain's kept draws cut into :data:`JACKKNIFE_BLOCKS` contiguous blocks (blocks of ~100
    draws are nearly independent: the coefficients' autocorrelation time is a few sweeps).
    ``loglik`` (chain, draw, E, n); cells whose LOO was an exact refit (``refitted``) keep the
    full run's value. Returns one :class:`causalcrystal.evidence.EquationLoo` per block (its
    ``pareto_k`` and ``p_loo`` the full run's)."""
    from causalcrystal.evidence import EquationLoo

    return [EquationLoo(elpd=np.where(refitted, eq_loo.elpd, e), pareto_k=eq_loo.pareto_k, p_loo=eq_loo.p_loo)
            for e in _jackknife_elpd(loglik)]


def _jackknife_elpd(loglik: np.ndarray) -> np.ndarray:
    """The leave-one-block-out pointwise elpd ``(blocks, E, n)`` of a log-likelihood ``(chain,
    draw, E, n)``: :data:`JACKKNIFE_BLOCKS` contiguous blocks per chain."""
    from causalcrystal.evidence import loo_jackknife_by_equation

    C, D = loglik.shape[:2]
    per_chain = min(JACKKNIFE_BLOCKS, D)
    within = np.concatenate([np.full(len(cut), j) for j, cut in enumerate(np.array_split(np.arange(D), per_chain))])
    blocks = (np.arange(C)[:, None] * per_chain + within[None, :]).ravel()   # (chain, draw) flattened
    return loo_jackknife_by_equation(np.asarray(loglik).reshape(C * D, *loglik.shape[2:]), blocks)


def _jackknife_se(values) -> float:
    """Delete-one jackknife standard error, ``sqrt((B - 1) / B * sum (v_b - mean v)^2)``, of the
    full-sample estimate from its ``B`` leave-one-block-out replicates (Efron & Tibshirani 1993,
    ch. 11); NaN without replicates."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return float("nan")
    return float(np.sqrt((v.size - 1) / v.size * np.sum((v - v.mean()) ** 2)))


#: cells with a Pareto k above this get an exact refit (Vehtari et al. 2017: 0.7)
K_REFIT = 0.7
#: at most this many refits per equation (beyond, the k values stand and may invalidate the result)
MAX_REFITS = 8


def _reloo(batch: dict, fit: dict, eq_loo, spec: ModelSpec, seed: int, refitted=None) -> int:
    """Exact LOO for the cells PSIS cannot handle: refit the equation without the cell (Gibbs, on
    the tile-standardised data of ``batch``) and take ``log mean_s p(x_i | theta_s)``. Updates
    ``eq_loo.elpd`` and ``eq_loo.pareto_k`` (set to 0) in place; returns the number of refits.
    Each distinct equation is refitted once, whichever orders share it."""
    from causalcrystal.gibbs import mixture_logpdf, sample_equations

    done = 0
    sp = spec.sampler
    for row in range(len(batch["child"])):
        if not batch["active"][row]:
            continue
        for i in np.flatnonzero(eq_loo.pareto_k[row] > K_REFIT)[:MAX_REFITS]:
            keep = np.ones(batch["y"].shape[1], dtype=bool)
            keep[i] = False
            sub = sample_equations(batch["y"][row:row + 1, keep], batch["X"][row:row + 1, keep],
                                   batch["pmask"][row:row + 1], batch["w"][row:row + 1], spec.prior, spec.mixture,
                                   chains=sp.chains, draws=sp.draws, tune=sp.tune, thin=sp.thin,
                                   seed=seed + 104729 + int(i), loglik=False)
            beta = sub["beta"][:, :, 0].reshape(-1, batch["X"].shape[2])
            resid = batch["y"][row, i] - beta @ batch["X"][row, i]
            S = resid.size
            lp = mixture_logpdf(resid[:, None], sub["noise_weight"][:, :, 0].reshape(S, -1),
                                sub["noise_loc"][:, :, 0].reshape(S, -1), sub["noise_var"][:, :, 0].reshape(S, -1))[:, 0]
            eq_loo.elpd[row, i] = float(np.logaddexp.reduce(lp) - np.log(S))
            eq_loo.pareto_k[row, i] = 0.0
            if refitted is not None:
                refitted[row, i] = True
            done += 1
    return done
