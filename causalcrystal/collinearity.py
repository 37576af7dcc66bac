"""Near-deterministic descriptors: detect them before discovery, and treat a derived descriptor as derived.

Some descriptors are functions of others, not effects with noise of their own: on atom-column data
``Vol`` is ``a b sin(alpha)`` to about 1e-5 (measured on a real ADF image), and a column copied from
another is an exact linear function of it. A linear SEM fitted to such a column learns a noise scale
of ~1e-13, its likelihood and LOO explode (``elpd_loo`` +2204 with ``p_loo`` 405 for 144 cells), and
the strongest "causal" edges it reports are the identity itself, pointing either way from tile to
tile. A geometric identity is not a causal mechanism.

:func:`find_relations` regresses every column on all the others, in linear space and (for positive
columns, so that products become sums) in log space, and reports the columns whose unexplained
share of variance ``1 - R^2`` is below ``tol`` (default ``1e-4``: a relation holding to 1 % of the
column's standard deviation; the real ``Vol`` identity holds to ~1e-6 in log space, measurement
noise on a genuine effect leaves far more). :func:`derived_descriptors` then picks which column of
each relation is the derived one (``Vol`` first, the geometric quantity; otherwise the later one in
:data:`~causalcrystal.cells.DESCRIPTORS`), removes it and looks again, so a copied pair gives one
derived column, not two.

A derived descriptor is left out of the SEM: it is no one's cause (its edges out are forbidden) and
its own equation does not enter the likelihood (``active`` False); discovery runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from causalcrystal.cells import DESCRIPTORS

#: default threshold on the unexplained share of variance, 1 - R^2
TOL = 1e-4
#: derived first when a relation could be read either way: the geometric quantity
PREFER = ("Vol",)


@dataclass(frozen=True)
class Relation:
    """``target`` is (almost) a function of ``predictors``: ``gap = 1 - R^2`` of the regression in
    ``space`` (``"linear"`` or ``"log"``), with its standardised coefficients ``coef``."""

    target: str
    predictors: tuple[str, ...]
    gap: float
    space: str
    coef: tuple[float, ...]

    def text(self) -> str:
        if self.space == "geometry":
            return f"{self.target} = a b sin(alpha) (1 - R^2 = {self.gap:.1e})"
        terms = ""
        for k, (c, p) in enumerate(zip(self.coef, self.predictors)):
            sign = ("-" if c < 0 else "") if k == 0 else (" - " if c < 0 else " + ")
            terms += f"{sign}{abs(c):.3g} {'log ' if self.space == 'log' else ''}{p}"
        how = "log " if self.space == "log" else ""
        return (f"{how}{self.target} = {terms} (standardised{', in logs' if how else ''}; "
                f"1 - R^2 = {self.gap:.1e})")


def _fit(y: np.ndarray, X: np.ndarray) -> tuple[float, np.ndarray]:
    """1 - R^2 of y on X with intercept, and the coefficients in standard-deviation units."""
    sy = y.std()
    sx = X.std(0)
    if sy == 0 or X.shape[1] == 0 or (sx == 0).any():
        return 1.0, np.zeros(X.shape[1])
    A = np.column_stack([(X - X.mean(0)) / sx, np.ones(len(y))])
    sol, *_ = np.linalg.lstsq(A, (y - y.mean()) / sy, rcond=None)
    r = (y - y.mean()) / sy - A @ sol
    return float(np.mean(r**2)), sol[:-1]


#: the cell's area from its lattice parameters: Vol = a b sin(alpha), alpha in degrees
GEOMETRY = ("Vol", ("a", "b", "alpha"))


def _geometry_gap(X, names, j, others):
    """``1 - R^2`` of ``Vol`` against ``a b sin(alpha)`` (proportional: any units), if ``j`` is
    ``Vol`` and the three are among ``others``."""
    target, parts = GEOMETRY
    if names[j] != target or not all(p in names and names.index(p) in others for p in parts):
        return None
    ia, ib, ial = (names.index(p) for p in parts)
    g = X[:, ia] * X[:, ib] * np.sin(np.deg2rad(X[:, ial]))
    gap, coef = _fit(X[:, j], g[:, None])
    return gap, np.ones(3) * float(coef[0]) / 3.0, "geometry"


def find_relations(X: np.ndarray, names=DESCRIPTORS, tol: float = TOL, columns=None) -> list[Relation]:
    """Columns of ``X`` (cells x descriptors) that are near-deterministic functions of the other
    ``columns`` (default all): one :class:`Relation` each, best space first. Predictors are listed
    when their standardised coefficient exceeds 1e-3."""
    X = np.asarray(X, dtype=np.float64)
    cols = list(range(X.shape[1])) if columns is None else list(columns)
    out = []
    if X.shape[0] <= len(cols) + 1:
        return out  # too few cells to tell a relation from an exact fit
    for j in cols:
        others = [c for c in cols if c != j]
        best = None
        gap, coef = _fit(X[:, j], X[:, others])
        best = (gap, coef, "linear")
        pos = [c for c in others if (X[:, c] > 0).all()]
        if (X[:, j] > 0).all() and pos:
            gap_l, coef_l = _fit(np.log(X[:, j]), np.log(X[:, pos]))
            if gap_l < best[0]:
                best = (gap_l, coef_l, "log")
        geo = _geometry_gap(X, names, j, others)
        if geo is not None and geo[0] < best[0]:
            best = geo
        gap, coef, space = best
        if gap < tol:
            used = {"linear": others, "log": pos}.get(space) or [names.index(v) for v in GEOMETRY[1]]
            keep = np.abs(coef) > 1e-3
            out.append(Relation(names[j], tuple(names[c] for c, k in zip(used, keep) if k), gap, space,
                                tuple(float(c) for c, k in zip(coef, keep) if k)))
    return sorted(out, key=lambda r: r.gap)


def derived_descriptors(X: np.ndarray, names=DESCRIPTORS, tol: float = TOL, declared=(),
                        prefer=PREFER) -> tuple[list[str], list[Relation]]:
    """Which descriptors to treat as derived in ``X``: the ``declared`` ones, then, one at a time,
    the preferred column of any remaining near-deterministic relation (see the module docstring).
    Returns ``(derived names, the relations found)``."""
    names = list(names)
    derived = [d for d in declared if d in names]
    relations = []
    while True:
        cols = [k for k, v in enumerate(names) if v not in derived]
        rel = find_relations(X, names, tol, cols)
        if not rel:
            return derived, relations
        flagged = {r.target for r in rel}
        pick = next((p for p in prefer if p in flagged), None) or max(flagged, key=names.index)
        relations.append(next(r for r in rel if r.target == pick))
        derived.append(pick)
