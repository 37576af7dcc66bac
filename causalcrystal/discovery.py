"""Causal discovery per tile: DirectLiNGAM with bootstrap, candidate DAGs and causal orders.

Pipeline stage 2 (after the cell table and the tiling). For every tile (a window of unit cells,
or a whole image via :func:`causalcrystal.tiling.image_tiles`) the 8 descriptors of its cells form
a data matrix ``X`` (n cells x 8, columns in :data:`~causalcrystal.cells.DESCRIPTORS` order).
DirectLiNGAM (Shimizu et al. 2011, the ``lingam`` package) estimates a causal order and the
coefficient matrix ``B`` (indexed ``[effect, cause]``, ``x = B x + e``); a bootstrap over cells
gives each edge's probability, the mean coefficients, how often each causal order occurs and the
distinct causal orders ("candidates") with their frequencies, which the Bayesian stage weighs.

Standardisation (``standardize=``):

* ``"image"`` (default): every descriptor is z-scored within each image, so coefficients are in
  standard deviations of that image and a single ``threshold`` makes sense for all edges; the
  means and s.d. are kept (``attrs['standardize_mean'/'standardize_sd']``, JSON
  ``{image: {variable: value}}``) and :func:`to_raw_units` converts coefficients back;
* ``"tile"``: z-scored within each tile (coefficients are then in tile s.d.);
* ``"none"``: raw units.

Whatever the units, DirectLiNGAM sees each fit's columns z-scored (its adaptive-lasso B is not
unit-free) and an edge counts as present when its *standardised* coefficient
``|B_ij| sd_j / sd_i`` exceeds ``threshold``; ``B`` is reported in the units given. So the edge
probabilities, and the prior weights made from them, do not depend on the units of the input
(before, with raw detector counts, ``a <- I14`` had probability 0 in raw units and 0.67-1.0 in
z-scores).

``discover`` returns an :class:`xarray.Dataset` with dims ``tile``, ``effect``, ``cause``,
``position``, ``candidate``; see its docstring. Tiles that cannot be fitted (fewer cells than
``min_cells``, a constant or non-finite descriptor) are kept with ``status`` saying why and NaN
values, and one :class:`SkippedTileWarning` summarises them.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np
import xarray as xr

from causalcrystal.cells import DESCRIPTORS, CellTableError, display_label, quoted, validate
from causalcrystal.errors import CausalCrystalError
from causalcrystal.executor import InlineExecutor, Progress
from causalcrystal.tiling import tile_members

STANDARDIZE_MODES = ("image", "tile", "none")

#: Default minimum number of cells per tile: 4 per variable (4 * 8 = 32).
MIN_CELLS_PER_VARIABLE = 4

_N = len(DESCRIPTORS)


class TileError(CausalCrystalError, ValueError):
    """A tile's data matrix cannot be fitted (constant or non-finite column, too few cells)."""


class SkippedTileWarning(UserWarning):
    """Some tiles were not fitted; ``status`` in the result says why for each."""


# --------------------------------------------------------------------------------------------
# Standardisation and tile matrices
# --------------------------------------------------------------------------------------------


def _is_constant(sd: float, mean: float) -> bool:
    return not sd > 1e-12 * max(abs(mean), 1e-300)


def standardize(cells: xr.Dataset, mode: str = "image", derived=()) -> xr.Dataset:
    """Standardise a raw cell table for discovery; return a new table (``cells`` is untouched).

    ``mode="image"`` z-scores every descriptor within each image (population s.d., ``ddof=0``)
    and records ``attrs['standardize_mean']`` / ``attrs['standardize_sd']`` as JSON
    ``{image: {variable: value}}``; ``"none"`` and ``"tile"`` leave the values unchanged (for
    ``"tile"`` :func:`tile_matrix` standardises per tile). ``attrs['standardize']`` records the mode.
    ``derived``: descriptor names declared derived (out of discovery and the SEM); one of them may be
    constant within an image (it is centred there, s.d. recorded as 1).

    Raises :class:`~causalcrystal.cells.CellTableError` if a descriptor not in ``derived`` is
    constant, or any is non-finite, within an image (it cannot be z-scored), or if the table is
    already standardised.
    """
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"standardize mode {mode!r} unknown; use one of {STANDARDIZE_MODES}.")
    validate(cells, allow_nonfinite=True)
    src = cells.attrs.get("source") or "cell table"
    done = cells.attrs.get("standardize", "none")
    check_variation(cells, skip=derived)  # in every mode: a constant descriptor carries no causal information
    if mode == "none":
        out = cells.copy()
        out.attrs = dict(cells.attrs)
        out.attrs.setdefault("standardize", "none")
        return out
    if done != "none":
        raise CellTableError(
            f"{src}: the table is already standardised (attrs['standardize'] = {done!r}); give the raw cell "
            "table, or keep these values as they are with --standardize none (standardize='none')."
        )
    out = cells.copy(deep=True)
    out.attrs = dict(cells.attrs)
    out.attrs["standardize"] = mode
    if mode == "tile":
        out.attrs["standardize_mean"] = json.dumps({})
        out.attrs["standardize_sd"] = json.dumps({})
        return out

    img = cells["image"].values.astype(str)
    labels = list(dict.fromkeys(img.tolist()))
    means: dict[str, dict[str, float]] = {lab: {} for lab in labels}
    sds: dict[str, dict[str, float]] = {lab: {} for lab in labels}
    for name in DESCRIPTORS:
        vals = cells[name].values.astype(np.float64)
        new = np.empty_like(vals)
        for lab in labels:
            m = img == lab
            v = vals[m]
            n_bad = int((~np.isfinite(v)).sum())
            if n_bad:
                raise CellTableError(
                    f"{src}: image {str(lab)!r}, variable {name!r} has {n_bad} non-finite value(s) and cannot "
                    "be standardised; drop those cells first (causalcrystal.cells.apply_nonfinite_policy, "
                    "read(..., nonfinite='drop'))."
                )
            mu, sd = float(v.mean()), float(v.std())
            if name in derived and _is_constant(sd, mu):
                sd = 1.0  # a declared-derived descriptor has no equation: centring is all it needs
            new[m] = (v - mu) / sd
            means[lab][name], sds[lab][name] = mu, sd
        attrs = dict(cells[name].attrs)
        attrs["raw_units"] = attrs.get("units", "")
        attrs["units"] = "1 (z-score within image)"
        out[name] = ("cell", new, attrs)
    out.attrs["standardize_mean"] = json.dumps(means)
    out.attrs["standardize_sd"] = json.dumps(sds)
    return out


def check_variation(cells: xr.Dataset, skip=()) -> None:
    """Raise :class:`~causalcrystal.cells.CellTableError` naming the image and descriptor if a
    descriptor is constant within an image (non-finite values ignored): it cannot be z-scored, and in
    any standardisation mode it carries no causal information (every tile of that image would have
    a constant column, which no regression can use). ``skip``: descriptor names declared derived
    (they have no equation, so a constant one costs nothing)."""
    src = cells.attrs.get("source") or "cell table"
    const = constant_descriptors(cells, skip)
    if const:
        lab, name, n, value = const[0]
        several = len(set(cells["image"].values.astype(str).tolist())) > 1
        raise CellTableError(
            f"{src}: image {str(lab)!r} has no variation in {name!r} (all {n} cells = {value:g}), so it "
            "carries no causal information (and cannot be z-scored); "
            + (f"leave that image out (--exclude-image {display_label(lab)}), " if several else "")
            + f"check the input that produced it, or leave {name} out of the SEM with --derived {name}.")


def _finite_by_image(cells: xr.Dataset, skip=()):
    """``(image, descriptor, finite values)`` for every image and descriptor not in ``skip``."""
    img = cells["image"].values.astype(str)
    for lab in dict.fromkeys(img.tolist()):
        m = img == lab
        for name in DESCRIPTORS:
            if name in skip:
                continue
            v = cells[name].values[m].astype(np.float64)
            yield lab, name, v[np.isfinite(v)]


def constant_descriptors(cells: xr.Dataset, skip=()) -> list[tuple[str, str, int, float]]:
    """``(image, descriptor, n_cells, value)`` for every descriptor (not in ``skip``) constant within
    an image (non-finite values ignored): what :func:`check_variation` refuses."""
    return [(lab, name, int(v.size), float(v[0])) for lab, name, v in _finite_by_image(cells, skip)
            if v.size and _is_constant(float(v.std()), float(v.mean()))]


#: an image's descriptor with at most this many distinct values is called quantised
COARSE_MAX_VALUES = 10
#: ... or nearly constant when one value holds at least this share of its cells
COARSE_TOP_SHARE = 0.9


def coarse_descriptors(cells: xr.Dataset, skip=()) -> list[str]:
    """Descriptors that are quantised or nearly constant within an image: one message per image
    and descriptor (``[]`` when none). Not an error (the run proceeds; a constant one is refused by
    :func:`check_variation`), but the SEM's noise is continuous: a descriptor exported at a coarse
    resolution (alpha in 0.5 degree steps: 4 values over an image) or constant but for a few cells
    gives spiky residuals, which the tile's residual check flags as a noise misfit without saying
    why, and its edges' intervals are not reliable (bughunt case 11). Thresholds:
    :data:`COARSE_MAX_VALUES` distinct finite values, or one value in :data:`COARSE_TOP_SHARE` of
    the cells, in an image of at least 50 cells. ``skip``: descriptor names not to check (those
    already declared derived)."""
    out = []
    for lab, name, v in _finite_by_image(cells, skip):
        if v.size < 50:
            continue
        values, counts = np.unique(v, return_counts=True)
        if values.size < 2:
            continue  # constant: check_variation's error
        top = int(counts.max())
        if values.size <= COARSE_MAX_VALUES or top >= COARSE_TOP_SHARE * v.size:
            nearly = top >= COARSE_TOP_SHARE * v.size
            kind = (f"{top} of its {v.size} cells = {values[np.argmax(counts)]:g} (nearly constant)" if nearly else
                    f"only {values.size} distinct values over {v.size} cells ({', '.join(f'{x:g}' for x in values[:5])}"
                    + (", ..." if values.size > 5 else "") + "; quantised?)")
            # without --derived, a tile where it is exactly constant is skipped (a constant column)
            fix = (f"fix the export, or leave it out of the SEM with --derived {name} (without it, tiles where it "
                   "is exactly constant are not fitted)" if nearly else
                   f"export it at full precision, or leave it out of the SEM with --derived {name}")
            out.append(f"image {quoted(lab)}: {name!r} has {kind}. The SEM's noise is continuous, so this "
                       f"descriptor's residuals are spiky and its edges' intervals unreliable; {fix}.")
    return out


_standardize = standardize  # discover() has a parameter of that name


def cell_matrix(cells: xr.Dataset) -> np.ndarray:
    """All cells' descriptors as an (n_cells, 8) float64 array in ``DESCRIPTORS`` column order."""
    return np.column_stack([cells[name].values.astype(np.float64) for name in DESCRIPTORS])


def _tile_matrix(X_all: np.ndarray, members: np.ndarray, mode: str, derived=()) -> np.ndarray:
    X = X_all[np.asarray(members, dtype=np.int64)]
    if X.shape[0] < 2:
        raise TileError(f"only {X.shape[0]} cell(s); a tile needs at least 2 (and more for LiNGAM).")
    finite = np.isfinite(X)
    if not finite.all():
        bad = [DESCRIPTORS[j] for j in np.flatnonzero(~finite.all(axis=0))]
        raise TileError(f"non-finite values in {bad}; drop those cells from the cell table first.")
    mu, sd = X.mean(axis=0), X.std(axis=0)
    flat = [j for j in range(X.shape[1]) if _is_constant(sd[j], mu[j])]
    const = [DESCRIPTORS[j] for j in flat if j not in derived]
    if const:
        raise TileError(f"constant column {', '.join(const)} (no variation inside the tile)")
    if mode == "tile":
        sd[flat] = 1.0  # only derived columns (no equation, no effects) get here: centred
        X = (X - mu) / sd
    return X


def tile_matrix(cells: xr.Dataset, members: np.ndarray, mode: str, derived=()) -> np.ndarray:
    """The (n, 8) data matrix of the cells ``members`` (indices into ``cells``).

    Columns follow ``DESCRIPTORS``. With ``mode == "tile"`` each column is z-scored within the
    tile; otherwise values are taken as they are (already standardised per image, or raw).
    Raises :class:`TileError` naming the variable if a column is non-finite, or constant and not
    in ``derived`` (descriptor names, or a boolean mask over ``DESCRIPTORS``: those with no
    equation in the SEM, which may be constant; centred then).
    """
    if mode not in STANDARDIZE_MODES:
        raise ValueError(f"standardize mode {mode!r} unknown; use one of {STANDARDIZE_MODES}.")
    members = np.asarray(members, dtype=np.int64)
    cols = [cells[name].values[members].astype(np.float64) for name in DESCRIPTORS]
    return _tile_matrix(np.column_stack(cols), np.arange(members.size), mode, _derived_indices(derived))


def declared_derived(disc: xr.Dataset) -> list[str]:
    """The descriptors a discovery result (``discovery.nc``) was told were derived in every tile
    (``attrs['derived']``): what :func:`standardize` and :func:`tile_matrix` need to rebuild its
    tables."""
    return list(json.loads(disc.attrs.get("derived", "[]")))


def tile_derived(disc: xr.Dataset, k: int) -> np.ndarray:
    """(8,) bool: the descriptors treated as derived in tile ``k`` of ``disc`` (none if unrecorded)."""
    return disc["derived"].values[k].astype(bool) if "derived" in disc else np.zeros(_N, dtype=bool)


def _derived_indices(derived) -> list[int]:
    """Column indices of ``derived`` (names, or a boolean mask over ``DESCRIPTORS``)."""
    d = np.asarray(derived) if derived is not None else np.zeros(0)
    if d.dtype == bool:
        return np.flatnonzero(d).tolist()
    return [DESCRIPTORS.index(str(v)) for v in d]


# --------------------------------------------------------------------------------------------
# LiNGAM fits
# --------------------------------------------------------------------------------------------


def exogenous_indices(exogenous, n_variables: int) -> list[int]:
    """Descriptor indices of ``exogenous`` (names from ``DESCRIPTORS`` or indices; one or a list;
    ``None`` = none). Raises ``ValueError`` naming an unknown name or an index out of range."""
    if exogenous is None:
        return []
    if isinstance(exogenous, (str, int, np.integer)):
        exogenous = [exogenous]
    out = []
    for v in exogenous:
        if isinstance(v, (int, np.integer)):
            k = int(v)
        elif v in DESCRIPTORS and n_variables == _N:
            k = DESCRIPTORS.index(v)
        else:
            empty = " (an empty name: a comma too many in --exogenous?)" if not str(v).strip() else ""
            raise ValueError(
                f"exogenous variable {v!r} unknown{empty}; give names from {list(DESCRIPTORS)} (8-column data) "
                "or column indices."
            )
        if not 0 <= k < n_variables:
            raise ValueError(f"exogenous index {k} outside the {n_variables} columns.")
        out.append(k)
    return sorted(set(out))


def _prior_knowledge(exo: list[int], n_variables: int):
    if not exo:
        return None
    from lingam.utils import make_prior_knowledge

    return make_prior_knowledge(n_variables, exogenous_variables=exo)


def _fit(X: np.ndarray, pk, seed) -> tuple[list[int], np.ndarray]:
    """DirectLiNGAM on the columns z-scored, ``B`` converted back to the units of ``X``.

    Why z-score: DirectLiNGAM's causal order is unit-free, but its adaptive-lasso estimate of B is
    not (measured: scaling the columns by 1e6 / 1e-3 / 4 / 90 dropped a 0.4 s.d. edge), so raw
    detector counts and z-scores would give different edges and priors."""
    from lingam import DirectLiNGAM

    sd = X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    model = DirectLiNGAM(random_state=seed, prior_knowledge=pk)
    model.fit((X - X.mean(0)) / sd)
    B = np.array(model.adjacency_matrix_, dtype=np.float64) * sd[:, None] / sd[None, :]
    return [int(i) for i in model.causal_order_], B


def _check_X(X) -> np.ndarray:
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] < 3 or X.shape[1] < 2:
        raise ValueError(f"X must be a 2-D array (n_samples >= 3, n_variables >= 2); got shape {X.shape}.")
    if not np.isfinite(X).all():
        raise ValueError("X has non-finite values; drop those rows first.")
    return X


def fit_lingam(X, exogenous: Sequence[str] | None = ("I14", "I5"), seed: int = 0) -> tuple[list[int], np.ndarray]:
    """One DirectLiNGAM fit: ``(causal order as column indices, B)``, ``B[effect, cause]``.

    ``exogenous`` names descriptors (for 8-column data in ``DESCRIPTORS`` order) or column
    indices that have no parents; they become lingam prior knowledge, which forces them to the
    front of the causal order. ``None`` or empty: no prior knowledge.
    """
    X = _check_X(X)
    pk = _prior_knowledge(exogenous_indices(exogenous, X.shape[1]), X.shape[1])
    return _fit(X, pk, seed)


def _varies(X: np.ndarray) -> bool:
    mu, sd = X.mean(axis=0), X.std(axis=0)
    return all(not _is_constant(s, m) for s, m in zip(sd, mu))


def bootstrap_lingam(X, n_resamples: int, *, exogenous: Sequence[str] | None = ("I14", "I5"), seed=0,
                     threshold: float = 0.05) -> dict:
    """DirectLiNGAM on the full data plus ``n_resamples`` bootstrap resamples of the rows.

    Rows are drawn with replacement by ``np.random.default_rng(seed)`` (a resample in which a
    column happens to be constant is redrawn). Returns a dict:

    ``adjacency``, ``order``
        the full-data fit;
    ``probability``
        ``[i, j]`` = fraction of resamples with ``|B_ij| sd_j / sd_i > threshold`` (edge ``j -> i``;
        the s.d.s of the resample: a unit-free rule);
    ``mean_coef``
        mean of ``B`` over resamples;
    ``order_counts``
        :class:`collections.Counter` of causal orders (tuples);
    ``order_frequency``
        fraction of resamples whose order equals the full-data order;
    ``candidates``
        the distinct causal orders (the SEM's prior depends on the order), best first: a list of
        dicts ``{"order", "count", "frequency", "adjacency"}``. Every fit votes for its order, the
        full-data fit included, so ``count`` is the number of resamples with that order plus 1 for
        the full-data order and ``frequency = count / (n_resamples + 1)``. Ranked by count; among
        equal counts the full-data order comes first, the others by the order itself
        (lexicographically), so the rule is deterministic and, with few resamples (all orders
        seen once), the full-data order is the top candidate. ``adjacency``: the
        edges (standardised ``|B| > threshold``) in at least half of the fits with that order;
    ``n_resamples``.

    With ``n_resamples == 0`` everything comes from the single full fit (probability 0/1, one
    candidate of frequency 1, ``mean_coef = adjacency``).
    """
    X = _check_X(X)
    n_resamples = int(n_resamples)
    if n_resamples < 0:
        raise ValueError(f"n_resamples {n_resamples} must be >= 0.")
    p = X.shape[1]
    pk = _prior_knowledge(exogenous_indices(exogenous, p), p)
    rng = np.random.default_rng(seed)
    fit_seed = int(rng.integers(2**31 - 1))
    order, B = _fit(X, pk, fit_seed)

    def present(Bm, Xm):  # the coefficient in standard deviations of the data it was fitted on
        sd = Xm.std(0)
        sd = np.where(sd > 0, sd, 1.0)
        return np.abs(Bm) * sd[None, :] / sd[:, None] > threshold

    if n_resamples == 0:
        dag = present(B, X)
        return {
            "adjacency": B, "order": order, "probability": dag.astype(np.float64), "mean_coef": B.copy(),
            "order_counts": Counter({tuple(order): 1}), "order_frequency": 1.0,
            "candidates": _rank_orders([(tuple(order), dag)]),
            "n_resamples": 0,
        }
    n = X.shape[0]
    hits = np.zeros((p, p))
    coef_sum = np.zeros((p, p))
    orders: Counter = Counter()
    fits = [(tuple(order), present(B, X))]
    for _ in range(n_resamples):
        for _attempt in range(100):
            Xb = X[rng.integers(0, n, size=n)]
            if _varies(Xb):
                break
        else:
            raise TileError("bootstrap resamples keep having a constant column; the tile has too few distinct cells.")
        o, Bb = _fit(Xb, pk, fit_seed)
        dag = present(Bb, Xb)
        hits += dag
        coef_sum += Bb
        orders[tuple(o)] += 1
        fits.append((tuple(o), dag))
    return {
        "adjacency": B, "order": order, "probability": hits / n_resamples, "mean_coef": coef_sum / n_resamples,
        "order_counts": orders, "order_frequency": orders[tuple(order)] / n_resamples,
        "candidates": _rank_orders(fits), "n_resamples": n_resamples,
    }


def _rank_orders(fits: list[tuple[tuple, np.ndarray]]) -> list[dict]:
    """Distinct causal orders of ``fits`` (``(order, dag)``, the full-data fit first), ranked by
    how many fits produced them; among equal counts the full-data order first, then the others by
    the order tuple (see :func:`bootstrap_lingam`)."""
    groups: dict[tuple, list] = {}
    for o, dag in fits:
        groups.setdefault(o, []).append(dag)
    total = len(fits)
    out = [{"order": list(o), "count": len(d), "frequency": len(d) / total,
            "adjacency": np.mean(d, axis=0) >= 0.5} for o, d in groups.items()]
    full = list(fits[0][0])
    return sorted(out, key=lambda c: (-c["count"], c["order"] != full, c["order"]))


# --------------------------------------------------------------------------------------------
# Per-tile discovery
# --------------------------------------------------------------------------------------------


def _tile_seed(seed: int, tile_id: int) -> int:
    """Seed of a tile: depends only on the run seed and the tile's index (its ``tile`` coord)."""
    return int(np.random.SeedSequence([int(seed), int(tile_id)]).generate_state(1)[0])


def _discover_tile(task: tuple) -> tuple:
    """Worker (module level, picklable): ``(k, X, n_bootstrap, exogenous, seed, threshold, derived,
    detect, tol)`` -> ``(k, result dict or None, status, derived indices, relations)``.

    Near-deterministic columns (``derived`` given, plus those :mod:`causalcrystal.collinearity`
    finds in this tile when ``detect``) are left out of LiNGAM and put last in every order."""
    from causalcrystal.collinearity import derived_descriptors

    k, X, n_bootstrap, exogenous, seed, threshold, derived, detect, tol, X_raw = task
    names = list(DESCRIPTORS) if X.shape[1] == _N else [str(c) for c in range(X.shape[1])]
    relations = []
    if detect:
        # on the raw values: a product like a b sin(alpha) is exact there (in logs), not after z-scoring
        derived, relations = derived_descriptors(X if X_raw is None else X_raw, names, tol,
                                                 declared=[names[d] for d in derived])
        derived = [names.index(d) for d in derived]
    keep = [c for c in range(X.shape[1]) if c not in derived]
    if len(keep) < 2:
        return k, None, f"skipped: fewer than 2 descriptors left after the derived ones {derived}", derived, relations
    exo = [keep.index(c) for c in exogenous_indices(exogenous, X.shape[1]) if c in keep]
    try:
        res = bootstrap_lingam(X[:, keep], n_bootstrap, exogenous=exo or None, seed=seed, threshold=threshold)
    except (TileError, np.linalg.LinAlgError) as err:
        return k, None, f"skipped: fit failed ({err})", derived, relations
    if derived:
        res = _embed(res, keep, X.shape[1])
    return k, res, "ok", derived, [r.text() for r in relations]


def _skip_advice(reasons) -> str:
    """What helps, by why tiles were skipped (lowering min_cells cannot help a constant column)."""
    text = " ".join(reasons)
    advice = []
    if "too few cells" in text or "only" in text:
        advice.append("larger tiles or a lower min_cells (--min-cells) keep small tiles")
    if "constant column" in text:
        advice.append("a descriptor constant inside a tile cannot be fitted there: larger tiles may span its "
                      "variation, otherwise fix its export or declare it derived (--derived NAME: no equation, no "
                      "effects, in every tile)")
    if "non-finite" in text:
        advice.append("drop or repair the non-finite cells")
    if not advice:
        advice.append("larger tiles or cleaning the input may help")
    return "; ".join(advice).capitalize() + "."


def _embed(res: dict, keep: list[int], p: int) -> dict:
    """A LiNGAM result on the columns ``keep`` as one on all ``p`` columns: the left-out columns
    have no edges and come last in every causal order."""
    rest = [c for c in range(p) if c not in keep]

    def mat(A):
        out = np.zeros((p, p), dtype=np.asarray(A).dtype)
        out[np.ix_(keep, keep)] = A
        return out

    def order(o):
        return [keep[i] for i in o] + rest

    out = dict(res)
    for key in ("adjacency", "probability", "mean_coef"):
        out[key] = mat(res[key])
    out["order"] = order(res["order"])
    out["order_counts"] = Counter({tuple(order(o)): c for o, c in res["order_counts"].items()})
    out["candidates"] = [{**c, "order": order(c["order"]), "adjacency": mat(c["adjacency"])} for c in res["candidates"]]
    return out


def discover(
    cells: xr.Dataset,
    tiles: xr.Dataset,
    *,
    n_bootstrap: int = 20,
    exogenous: Sequence[str] | None = ("I14", "I5"),
    standardize: str = "image",
    threshold: float = 0.05,
    max_candidates: int = 5,
    seed: int = 0,
    executor=None,
    progress: bool = True,
    min_cells: int | None = None,
    derived: Sequence[str] = (),
    detect_derived: bool = True,
    derived_tol: float | None = None,
) -> xr.Dataset:
    """Bootstrap DirectLiNGAM on every tile of ``tiles`` (from ``make_tiles`` or ``image_tiles``).

    ``derived``: descriptors that are functions of others (e.g. ``Vol`` of ``a, b, alpha``) and
    are left out of LiNGAM in every tile; with ``detect_derived`` each tile is also searched for
    near-deterministic relations (:mod:`causalcrystal.collinearity`, threshold ``derived_tol``) and
    the derived column of each is left out there (``derived`` (tile, variable) in the result; the
    relations in ``attrs['derived_relations']``).

    ``cells`` is the raw cell table the tiles were made from; it is standardised here (mode
    ``standardize``, see :func:`standardize`; a table already standardised in that mode is used
    as it is).
    Each tile's work goes through ``executor.imap`` (default: in-process) with a seed derived from
    ``seed`` and the tile's ``tile`` coordinate only (a subset ``tiles.isel(tile=...)`` reproduces
    those tiles of the full run), so results do not depend on the executor or on the order in
    which tiles finish. Tiles with fewer than ``min_cells`` (default 4 * 8 = 32) cells, or with a
    constant/non-finite descriptor, are not fitted: their ``status`` says why, their values are
    NaN (-1 for indices), and a :class:`SkippedTileWarning` summarises them.

    Returns a Dataset with dims ``tile``, ``effect``, ``cause`` (descriptor names), ``position``
    (0..7), ``candidate`` (0..max_candidates-1):

    ``adjacency`` (tile, effect, cause)
        B of the full-data fit (units of the standardised data);
    ``probability`` (tile, effect, cause)
        bootstrap probability of each edge ``cause -> effect`` (``|B| > threshold``);
    ``mean_coef`` (tile, effect, cause)
        mean B over resamples;
    ``order`` (tile, position)
        full-data causal order, indices into ``DESCRIPTORS``;
    ``order_frequency`` (tile)
        fraction of resamples with exactly that order;
    ``candidate_order`` (tile, candidate, position), ``candidate_frequency`` (tile, candidate),
    ``candidate_adjacency`` (tile, candidate, effect, cause) bool
        the distinct causal orders of the fits, ranked as in :func:`bootstrap_lingam` (the
        full-data fit votes too; padding: -1, 0, False);
    ``n_candidates`` (tile)
        how many distinct orders the fits produced (may exceed ``max_candidates``);
    ``status`` (tile)
        ``"ok"`` or why the tile was skipped.

    Tile coords (``image``, ``row0``, ``col0``, ``size``, ``n_cells``, ...) are copied from
    ``tiles``, plus ``sm_fraction``. Attrs record the settings, the standardisation constants
    and the lingam version.
    """
    import lingam

    validate(cells, allow_nonfinite=True)
    if not isinstance(tiles, xr.Dataset) or "members" not in tiles or "tile" not in tiles.dims:
        raise ValueError("tiles must be a tiling from causalcrystal.tiling.make_tiles or image_tiles.")
    n_bootstrap, max_candidates = int(n_bootstrap), int(max_candidates)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap {n_bootstrap} must be >= 0.")
    if max_candidates < 1:
        raise ValueError(f"max_candidates {max_candidates} must be >= 1.")
    min_cells = MIN_CELLS_PER_VARIABLE * _N if min_cells is None else int(min_cells)
    if min_cells < 3:
        raise ValueError(f"min_cells {min_cells} must be >= 3.")
    exo_idx = exogenous_indices(exogenous, _N)
    exo_names = [DESCRIPTORS[i] for i in exo_idx]
    from causalcrystal.collinearity import TOL

    unknown = [d for d in derived if d not in DESCRIPTORS]
    if unknown:
        raise ValueError(f"derived descriptor(s) {unknown} unknown; use names from {list(DESCRIPTORS)}.")
    derived_idx = sorted(_derived_indices(derived))
    tol = TOL if derived_tol is None else float(derived_tol)
    n_cells_total = cells.sizes["cell"]
    members_all = tiles["members"].values
    if members_all.size and members_all.max() >= n_cells_total:
        raise ValueError(
            f"tiles refer to cell {int(members_all.max())} but the table has {n_cells_total} cells; "
            "make the tiles from this cell table."
        )

    done = cells.attrs.get("standardize", "none")
    # A table standardised upstream in the requested mode is used as it is.
    table = cells if (done != "none" and done == standardize) else _standardize(cells, standardize, derived)
    mode = table.attrs.get("standardize", "none")
    X_all = cell_matrix(table)
    # raw values for the search for derived descriptors (the table given may be standardised already)
    X_raw = cell_matrix(cells) if cells.attrs.get("standardize", "none") == "none" else X_all
    sm_all = cells["sm_fraction"].values.astype(np.float64)

    n_tiles = tiles.sizes["tile"]
    # The ``tile`` coord (0..n-1 from make_tiles) names a tile, so a subset of a tiling
    # (tiles.isel(...)) reproduces the full run's results for those tiles.
    tile_ids = tiles["tile"].values if "tile" in tiles.coords else np.arange(n_tiles)
    if len(np.unique(tile_ids)) != n_tiles or not np.issubdtype(np.asarray(tile_ids).dtype, np.integer):
        raise ValueError("tiles need unique integer 'tile' coordinates (as make_tiles/image_tiles give).")
    status = np.full(n_tiles, "ok", dtype=object)
    sm_frac = np.full(n_tiles, np.nan)
    tasks = []
    for k in range(n_tiles):
        m = tile_members(tiles, k)
        if m.size:
            sm_frac[k] = sm_all[m[0]]
        if m.size < min_cells:
            status[k] = f"skipped: too few cells ({m.size} < min_cells {min_cells})"
            continue
        try:
            X = _tile_matrix(X_all, m, mode, derived_idx)
        except TileError as err:
            status[k] = f"skipped: {err}"
            continue
        tasks.append((k, X, n_bootstrap, exo_names, _tile_seed(seed, tile_ids[k]), float(threshold), derived_idx,
                      bool(detect_derived), tol, X_raw[m] if detect_derived else None))

    adjacency = np.full((n_tiles, _N, _N), np.nan)
    probability = np.full((n_tiles, _N, _N), np.nan)
    mean_coef = np.full((n_tiles, _N, _N), np.nan)
    order = np.full((n_tiles, _N), -1, dtype=np.int64)
    order_frequency = np.full(n_tiles, np.nan)
    cand_adj = np.zeros((n_tiles, max_candidates, _N, _N), dtype=bool)
    cand_freq = np.zeros((n_tiles, max_candidates))
    cand_order = np.full((n_tiles, max_candidates, _N), -1, dtype=np.int64)
    n_candidates = np.zeros(n_tiles, dtype=np.int64)

    executor = executor or InlineExecutor()
    bar = Progress(len(tasks), "discover (LiNGAM)", enabled=progress)
    derived_mask = np.zeros((n_tiles, _N), dtype=bool)
    derived_mask[:, derived_idx] = True
    relations: dict[str, list] = {}
    try:
        for _, (k, res, st, der, rel) in executor.imap(_discover_tile, tasks):
            bar.update()
            status[k] = st
            derived_mask[k, der] = True
            if rel:
                relations[str(int(tile_ids[k]))] = [r if isinstance(r, str) else r.text() for r in rel]
            if res is None:
                continue
            adjacency[k], probability[k], mean_coef[k] = res["adjacency"], res["probability"], res["mean_coef"]
            order[k] = res["order"]
            order_frequency[k] = res["order_frequency"]
            n_candidates[k] = len(res["candidates"])
            for c, cand in enumerate(res["candidates"][:max_candidates]):
                cand_adj[k, c] = cand["adjacency"]
                cand_freq[k, c] = cand["frequency"]
                cand_order[k, c] = cand["order"]
    finally:
        bar.close()

    skipped = [k for k in range(n_tiles) if status[k] != "ok"]
    if skipped:
        reasons = Counter(str(status[k]).split(" (")[0] for k in skipped)
        k0 = skipped[0]
        counts = ", ".join(f"{c} x {r.removeprefix('skipped: ')}" for r, c in reasons.items())
        if int(tiles.attrs.get("whole_image", 0)):
            # the whole-image fits (image-level priors), not tiles: a tile of the image was reported
            # by the tiling already, and "tile 1" named an image's index among the images
            text = (f"{len(skipped)} of {n_tiles} whole image(s) not fitted by the image-level LiNGAM ({counts}); "
                    f"e.g. image {quoted(tiles['image'].values[k0])}: {status[k0]}. Any of its tiles that are "
                    "fitted take their priors from their own bootstrap only.")
        else:
            text = (f"{len(skipped)} of {n_tiles} tile(s) not fitted ({counts}); e.g. tile {k0} (image "
                    f"{tiles['image'].values[k0]}, row0={int(tiles['row0'].values[k0])}, "
                    f"col0={int(tiles['col0'].values[k0])}): {status[k0]}. Their values here (discovery.nc) are "
                    "NaN, with 'status' saying why, and a run fits no posterior for them (they are not in "
                    "posterior.nc or summary.csv). " + _skip_advice(reasons))
        warnings.warn(text, SkippedTileWarning, stacklevel=2)

    tile_coords = {name: c for name, c in tiles.coords.items() if c.dims == ("tile",)}
    coords = dict(tile_coords)
    coords["sm_fraction"] = ("tile", sm_frac)
    coords.update(effect=list(DESCRIPTORS), cause=list(DESCRIPTORS), position=np.arange(_N),
                  candidate=np.arange(max_candidates), variable=list(DESCRIPTORS))
    te, tce, tcp = ("tile", "effect", "cause"), ("tile", "candidate", "effect", "cause"), ("tile", "candidate", "position")
    ds = xr.Dataset(
        {
            "adjacency": (te, adjacency, {"long_name": "B of the full-data DirectLiNGAM fit [effect, cause]"}),
            "probability": (te, probability, {"long_name": f"bootstrap probability of |B| sd_cause / sd_effect > {threshold}"}),
            "mean_coef": (te, mean_coef, {"long_name": "mean B over bootstrap resamples"}),
            "order": (("tile", "position"), order, {"long_name": "causal order (indices into effect/cause)"}),
            "order_frequency": ("tile", order_frequency,
                                {"long_name": "fraction of resamples with the full-data causal order"}),
            "candidate_adjacency": (tce, cand_adj, {"long_name": "edges in at least half of the fits with the candidate's order"}),
            "candidate_frequency": (("tile", "candidate"), cand_freq,
                                    {"long_name": "fraction of fits (resamples + the full-data fit) with this order"}),
            "candidate_order": (tcp, cand_order, {"long_name": "distinct causal orders, most frequent first (-1 pad)"}),
            "n_candidates": ("tile", n_candidates, {"long_name": "number of distinct causal orders"}),
            "status": ("tile", status.astype(str)),
            "derived": (("tile", "variable"), derived_mask,
                        {"long_name": "descriptor treated as derived (a function of others): out of the SEM"}),
        },
        coords=coords,
    )
    ds.attrs = {
        "source": cells.attrs.get("source", ""),
        "standardize": mode,
        "standardize_mean": table.attrs.get("standardize_mean", json.dumps({})),
        "standardize_sd": table.attrs.get("standardize_sd", json.dumps({})),
        "n_bootstrap": n_bootstrap,
        "threshold": float(threshold),
        "exogenous": json.dumps(exo_names),
        "seed": int(seed),
        "min_cells": min_cells,
        "max_candidates": max_candidates,
        "lingam_version": lingam.__version__,
        "method": "DirectLiNGAM (pwling) + row bootstrap",
        "tile_size": int(tiles.attrs.get("size", 0)),
        "tile_stride": int(tiles.attrs.get("stride", 0)),
        "whole_image": int(tiles.attrs.get("whole_image", 0)),
        "derived": json.dumps([DESCRIPTORS[i] for i in derived_idx]),
        "detect_derived": int(bool(detect_derived)),
        "derived_tol": tol,
        "derived_relations": json.dumps(relations),
    }
    return ds


# --------------------------------------------------------------------------------------------
# Helpers on a discovery result
# --------------------------------------------------------------------------------------------


def direction_counts(disc: xr.Dataset, a: str, b: str) -> xr.Dataset:
    """Per tile, the bootstrap fractions of ``a -> b``, ``b -> a`` and neither.

    Each resample is a DAG, so both directions never occur together and the three add up to 1.
    """
    for v in (a, b):
        if v not in DESCRIPTORS:
            raise ValueError(f"{v!r} is not a descriptor; use one of {list(DESCRIPTORS)}.")
    if a == b:
        raise ValueError("direction_counts needs two different variables.")
    fwd = disc["probability"].sel(effect=b, cause=a, drop=True)
    bwd = disc["probability"].sel(effect=a, cause=b, drop=True)
    return xr.Dataset({f"{a}->{b}": fwd, f"{b}->{a}": bwd, "none": 1.0 - fwd - bwd})


def to_raw_units(disc: xr.Dataset, name: str = "mean_coef") -> xr.DataArray:
    """Coefficients ``disc[name]`` (tile, effect, cause) converted to raw units.

    For ``standardize == "image"``: ``B_raw[i, j] = B[i, j] * sd_i / sd_j`` with the s.d. of the
    tile's image; ``"none"``: unchanged. ``"tile"`` results are in per-tile s.d. and cannot be
    converted from the stored attrs (raises ``ValueError``).
    """
    mode = disc.attrs.get("standardize", "none")
    coef = disc[name]
    if mode == "none":
        return coef.copy()
    if mode != "image":
        raise ValueError(f"coefficients standardised per {mode!r} cannot be converted to raw units from attrs.")
    sds = json.loads(disc.attrs["standardize_sd"])
    sd = np.array([[sds[str(img)][v] for v in DESCRIPTORS] for img in disc["image"].values])
    factor = sd[:, :, None] / sd[:, None, :]
    out = coef.copy(data=coef.values * factor)
    out.attrs = dict(coef.attrs, units="raw (effect units per cause unit)")
    return out
