"""Interventions on a fitted SEM: total effects, ``do(x_k = v)`` and shifts, with posterior intervals.

The per-tile model (:mod:`causalcrystal.sem`) is the linear SEM ``x = B x + c + e`` with
``B[effect, cause]`` acyclic (strictly lower-triangular in the tile's causal order) and zero-mean
noise ``e``. Everything here is closed-form and evaluated once per posterior draw, vectorised over
(chain, draw), so an interval is the posterior uncertainty of the quantity, nothing more:

total effects
    ``T = (I - B)^-1 = I + B + B^2 + ... + B^(n-1)``: ``T[i, j]`` is the change in the mean of
    ``x_i`` per unit change of ``x_j`` imposed from outside, summed over all directed paths
    ``j -> ... -> i``. **We report T itself, diagonal included**: the diagonal is the trivial 1 (a
    unit shift of ``x_j`` moves ``x_j`` by 1), kept so that ``shift`` is exactly ``delta * T[:, k]``.
    Off the diagonal it equals the ``inv(I - B) - I`` that :mod:`causalcrystal.concentration` uses
    for its "total" couplings. Entries are exactly 0 where the tile's causal order allows no path.
``do(x_k = v)``
    the mechanism of ``x_k`` is replaced by the constant ``v``: row ``k`` of ``B`` zeroed and
    ``c_k = v``, so ``E[x | do] = (I - B_k)^-1 c'``. Variables that are not descendants of ``x_k``
    keep their observational mean (draw by draw), and
    ``E[x | do(x_k = v)] = E[x] + T[:, k] (v - E[x_k])``. Several variables can be set at once.
shift ``x_k -> x_k + delta``
    ``x_k`` keeps its mechanism and gets ``delta`` added (``c_k += delta``), so the means move by
    ``delta * T[:, k]`` (and the effects of several shifts add up).

Units. ``units="standardized"`` means the units the posterior was sampled in (standardised per
image or per tile, or raw descriptor units for a run with ``--standardize none``; the posterior's
``attrs['units']`` says which); intervention values and results are then in those units.
``units="raw"`` uses the run's ``constant_data`` (``scale``, ``tile_mean``, see
:func:`causalcrystal.engine.tile_constants`): ``B_raw = S B S^-1`` with ``S = diag(scale)``, i.e.
``B_raw[i, j] = B[i, j] scale_i / scale_j``, so ``T_raw[i, j] = T[i, j] scale_i / scale_j``;
intervention values and results are in raw descriptor units. ``posterior.nc`` does not store the
offsets the descriptors were centred with (the image means, in ``discovery.nc``), so raw-unit
*means* are anchored at the tile's observed raw mean: the raw intercept is ``(I - B_raw)
tile_mean``, which places the model's observational mean exactly at ``tile_mean``, and an
intervention moves the means from there (``do(x_k = v)``: ``tile_mean + T_raw[:, k] (v -
tile_mean_k)``). Total effects and changes of means need no offset and convert exactly.

Intervals are highest-density intervals (:func:`arviz.hdi`, the narrowest interval holding
``prob`` of the draws; the same definition as the ``hdi_5%``/``hdi_95%`` columns of
``summary.csv``).

Example::

    from causalcrystal.interventions import do, shift, summarize, total_effects_summary
    te = total_effects_summary("run/posterior.nc", tile=12, units="raw")   # effect x cause
    moved = do("run/posterior.nc", tile=12, Py=0.0)                        # (chain, draw, variable)
    effect = summarize(moved - do("run/posterior.nc", tile=12))            # change vs observed

Cross-check with PyMC: :func:`linear_sem_model` builds the same SEM as a generative PyMC model for
fixed ``B, c, sigma``; :func:`pymc_intervene` applies :func:`pymc.do` (a constant for ``do``, the
variable plus ``delta`` for a shift) and :func:`sample_intervened` draws from the intervened system
with :func:`pymc.sample_prior_predictive`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.errors import CausalCrystalError

UNITS = ("standardized", "raw")
RAW_UNITS = "raw descriptor units (effect units per cause unit for total effects)"


class InterventionError(CausalCrystalError, ValueError):
    """A request the fitted model cannot answer (unknown variable, tile, units, bad value)."""


# ---------------------------------------------------------------------------------------------
# closed forms on stacked matrices (numpy)


def _as_matrices(B) -> np.ndarray:
    B = np.asarray(B, dtype=np.float64)
    if B.ndim < 2 or B.shape[-1] != B.shape[-2]:
        raise InterventionError(f"B must be (..., effect, cause) with square last two axes; got shape {B.shape}.")
    if not np.isfinite(B).all():
        raise InterventionError("B has non-finite entries; total effects are undefined.")
    return B


def _check_acyclic(B: np.ndarray) -> None:
    """Raise unless every matrix in the stack is the coefficient matrix of a DAG (B nilpotent)."""
    n = B.shape[-1]
    reach = (B != 0).astype(np.float64)
    # Transitive closure by repeated squaring: after m steps reach holds paths of length <= 2^m.
    for _ in range(max(1, int(np.ceil(np.log2(n))))):
        reach = np.minimum(reach + reach @ reach, 1.0)
    if np.any(np.diagonal(reach, axis1=-2, axis2=-1) > 0):
        raise InterventionError("B has a directed cycle (it is not strictly lower-triangular in any causal order); "
                                "the SEMs of causalcrystal are acyclic. Check that B is indexed [effect, cause].")


def total_effects(B) -> np.ndarray:
    """Total causal effects ``T = (I - B)^-1`` of a linear SEM, for a stack of coefficient matrices.

    ``B``: (..., effect, cause), e.g. posterior draws (chain, draw, effect, cause). Returns the same
    shape, ``T[..., i, j]`` = effect of a unit change of ``x_j`` on the mean of ``x_i``; the
    diagonal is the trivial 1 (see the module docstring). Computed as the finite path sum
    ``I + B + ... + B^(n-1)`` (exact for an acyclic ``B``: no pivoting, integer paths stay
    integer). Raises :class:`InterventionError` for a cyclic or non-finite ``B``.
    """
    B = _as_matrices(B)
    _check_acyclic(B)
    n = B.shape[-1]
    eye = np.eye(n)
    T = np.broadcast_to(eye, B.shape).copy()
    for _ in range(n - 1):  # Horner: T <- I + B T
        T = eye + B @ T
    return T


def interventional_mean(B, c, do: Mapping[int, float] | None = None,
                        shift: Mapping[int, float] | None = None) -> np.ndarray:
    """Mean of every variable of ``x = B x + c + e`` (zero-mean ``e``) under interventions.

    ``B`` (..., n, n) ``[effect, cause]``, ``c`` (..., n); ``do`` maps a variable index to the
    value it is set to (its row of ``B`` zeroed, ``c_k = v``), ``shift`` maps an index to the
    amount added to its mechanism (``c_k += delta``). No interventions: the observational mean
    ``(I - B)^-1 c``. Returns (..., n); a set variable's mean is exactly its value.
    """
    B = _as_matrices(B)
    _check_acyclic(B)
    n = B.shape[-1]
    c = np.asarray(c, dtype=np.float64)
    if c.shape[-1] != n:
        raise InterventionError(f"c has {c.shape[-1]} variables but B has {n}.")
    do, shift = dict(do or {}), dict(shift or {})
    both = sorted(set(do) & set(shift))
    if both:
        raise InterventionError(f"variable(s) {both} are both set (do) and shifted; a do() replaces the mechanism "
                                "the shift would act on, so give one or the other.")
    shape = np.broadcast_shapes(B.shape[:-1], c.shape)
    Bk = np.broadcast_to(B, (*shape, n)).copy()
    ck = np.broadcast_to(c, shape).copy()
    for k, v in do.items():
        Bk[..., k, :] = 0.0
        ck[..., k] = v
    for k, d in shift.items():
        ck[..., k] += d
    # The path sum (I - B')^-1 c' rather than a linear solve: it gives exactly v for a set variable
    # and bit-identical means for every variable upstream of the intervention (zero coefficients
    # contribute exact zeros), which an LU solve only matches to rounding.
    return (total_effects(Bk) @ ck[..., None])[..., 0]


# ---------------------------------------------------------------------------------------------
# posterior draws of one tile, in the units asked for


def _normalise_units(units: str) -> str:
    u = {"standardised": "standardized"}.get(units, units)
    if u not in UNITS:
        raise InterventionError(f"units {units!r} unknown; use 'standardized' (the posterior's own units) or 'raw'.")
    return u


def _from_arrays(arrays: Mapping, variables) -> xr.Dataset:
    """A dict of arrays (e.g. :func:`causalcrystal.sem.sample_tile`'s output) -> Dataset."""
    missing = [k for k in ("B", "c") if k not in arrays]
    if missing:
        raise InterventionError(f"the draws need arrays 'B' (chain, draw, effect, cause) and 'c' (chain, draw, "
                                f"variable); missing {missing}.")
    B = np.asarray(arrays["B"])
    c = np.asarray(arrays["c"])
    if B.ndim not in (4, 5) or c.ndim != B.ndim - 1:
        raise InterventionError(f"B must be (chain, draw[, tile], effect, cause) and c (chain, draw[, tile], "
                                f"variable); got shapes {B.shape} and {c.shape}.")
    n = B.shape[-1]
    if variables is None:
        variables = list(DESCRIPTORS) if n == len(DESCRIPTORS) else [f"x{i}" for i in range(n)]
    variables = [str(v) for v in variables]
    if len(variables) != n:
        raise InterventionError(f"{len(variables)} variable names for {n} variables.")
    lead = ("chain", "draw", "tile")[: B.ndim - 2]
    ds = xr.Dataset({"B": ((*lead, "effect", "cause"), B), "c": ((*lead, "variable"), c)},
                    coords={"effect": variables, "cause": variables, "variable": variables})
    for name in ("scale", "tile_mean"):
        if name in arrays:
            a = np.asarray(arrays[name], dtype=np.float64)
            ds[name] = (("tile", "variable")[2 - a.ndim:], a)
    return ds


def _as_dataset(posterior, variables=None) -> xr.Dataset:
    """Any supported input -> Dataset with B, c and (where known) scale, tile_mean; lazy for files."""
    import arviz as az

    if isinstance(posterior, (str, Path)):
        path = Path(posterior)
        if path.is_dir():
            path = path / "posterior.nc"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file; give a run folder or its posterior.nc "
                                    "(finish the run first: `causalcrystal run ... --out DIR` resumes it).")
        posterior = az.from_netcdf(path)
    if isinstance(posterior, az.InferenceData):
        if "posterior" not in posterior.groups():
            raise InterventionError("the InferenceData has no posterior group.")
        post = posterior.posterior
        missing = [k for k in ("B", "c") if k not in post]
        if missing:
            raise InterventionError(f"the posterior has no {missing}; expected a causalcrystal run's posterior.nc "
                                    "(B (chain, draw, tile, effect, cause), c (chain, draw, tile, variable)).")
        ds = post[["B", "c"]]
        ds.attrs = dict(post.attrs)
        if "constant_data" in posterior.groups():
            const = posterior.constant_data
            for name in ("scale", "tile_mean"):
                if name in const:
                    ds[name] = const[name]
        return ds
    if isinstance(posterior, xr.Dataset):
        if "B" not in posterior or "c" not in posterior:
            raise InterventionError("the Dataset needs variables 'B' (chain, draw[, tile], effect, cause) and 'c'.")
        return posterior
    if isinstance(posterior, Mapping):
        return _from_arrays(posterior, variables)
    raise InterventionError(f"cannot read posterior draws from a {type(posterior).__name__}; give a run folder, a "
                            "posterior.nc path, an arviz InferenceData, an xarray Dataset or a dict of arrays.")


def _tile_labels(ds: xr.Dataset) -> np.ndarray:
    return ds["tile"].values if "tile" in ds.coords else np.arange(ds.sizes["tile"])


def _describe_tiles(labels) -> str:
    labels = np.asarray(labels)
    if labels.size <= 12:
        return str(labels.tolist())
    return f"{labels.size} tiles from {labels.min()} to {labels.max()} (the 'tile' column of summary.csv)"


def _select_tile(ds: xr.Dataset, tile) -> xr.Dataset:
    if "tile" not in ds.dims:
        if tile is not None:
            raise InterventionError(f"these draws hold a single model (no tile dimension); omit tile= (got {tile}).")
        return ds
    labels = _tile_labels(ds)
    if tile is None:
        if labels.size != 1:
            raise InterventionError(f"this posterior has {_describe_tiles(labels)}; pass tile= one of them.")
        tile = labels[0]
    hit = np.flatnonzero(labels == tile) if np.ndim(tile) == 0 else np.array([])
    if hit.size != 1:
        raise InterventionError(f"tile {tile!r} is not in this posterior: tiles are numbered as in the run "
                                f"(summary.csv), here {_describe_tiles(labels)}.")
    return ds.isel(tile=int(hit[0]))  # per-tile coords (image, sm_fraction, ...) stay as scalars


def tile_draws(posterior, tile=None, *, units: str = "standardized", variables=None) -> xr.Dataset:
    """Posterior draws of one tile's SEM, ``B`` (chain, draw, effect, cause) and ``c`` (chain, draw,
    variable) as float64, in ``units`` (see the module docstring for ``"raw"``).

    ``posterior``: a run folder or its ``posterior.nc``, the loaded :class:`arviz.InferenceData`,
    an :class:`xarray.Dataset` with ``B`` and ``c`` (optionally ``scale``, ``tile_mean``), or a dict
    of arrays such as :func:`causalcrystal.sem.sample_tile` returns for one tile or a whole image
    (``variables`` names them; default the eight descriptors when there are eight). ``tile`` is the
    run's tile number (the ``tile`` coordinate, as in ``summary.csv``), not a position; it may be
    omitted when there is only one model.
    """
    units = _normalise_units(units)
    ds = _select_tile(_as_dataset(posterior, variables), tile)
    attrs = dict(ds.attrs)
    B = ds["B"].astype(np.float64).load()
    c = ds["c"].astype(np.float64).load()
    if list(B["effect"].values) != list(c["variable"].values) or list(B["cause"].values) != list(B["effect"].values):
        raise InterventionError("B's effect/cause coordinates and c's variable coordinate must list the same "
                                "variables in the same order.")
    if units == "raw":
        missing = [n for n in ("scale", "tile_mean") if n not in ds]
        if missing:
            raise InterventionError(f"units='raw' needs the run's constant_data {missing} (a posterior.nc written by "
                                    "causalcrystal run); these draws do not have them. Use units='standardized'.")
        s = ds["scale"].values.astype(np.float64)
        m = ds["tile_mean"].values.astype(np.float64)
        if s.shape != (B.sizes["effect"],) or not np.all(np.isfinite(s) & (s > 0)):
            raise InterventionError(f"scale must be positive and finite, one per variable; got {s}.")
        if m.shape != s.shape or not np.isfinite(m).all():
            raise InterventionError(f"tile_mean must be finite, one per variable; got {m}.")
        Braw = B.values * s[:, None] / s[None, :]
        B = B.copy(data=Braw)
        # Anchor the raw intercept at the tile's observed mean: (I - B_raw) tile_mean puts the
        # model's observational mean exactly there (the centring offsets are not in posterior.nc).
        c = c.copy(data=m - np.einsum("...ij,j->...i", Braw, m))
        attrs["units"] = RAW_UNITS
    else:
        attrs.setdefault("units", "the posterior's own units")
    out = xr.Dataset({"B": B, "c": c}, attrs=attrs)
    out.attrs["unit_system"] = units
    if tile is not None:
        out = out.assign_coords(tile=tile)
    return out


# ---------------------------------------------------------------------------------------------
# summaries


def summarize(draws: xr.DataArray, prob: float = 0.9) -> xr.Dataset:
    """Posterior ``mean``, ``sd`` and the ``prob`` highest-density interval (arviz.hdi) named as
    ``az.summary`` names it (``hdi_5%``, ``hdi_95%`` at 0.9; :func:`causalcrystal.intervals.hdi_names`)
    of draws with dimensions (chain, draw, ...), over the remaining dimensions."""
    import arviz as az

    if not 0 < prob < 1:
        raise InterventionError(f"prob must be in (0, 1); got {prob}.")
    if "chain" not in draws.dims or "draw" not in draws.dims:
        raise InterventionError(f"draws need dimensions chain and draw; got {draws.dims}.")
    hdi = az.hdi(draws, hdi_prob=prob)
    if isinstance(hdi, xr.Dataset):
        hdi = hdi[next(iter(hdi.data_vars))]
    from causalcrystal.intervals import hdi_names

    lo, hi = hdi_names(prob)
    out = xr.Dataset({"mean": draws.mean(("chain", "draw")), "sd": draws.std(("chain", "draw"), ddof=1),
                      lo: hdi.sel(hdi="lower", drop=True), hi: hdi.sel(hdi="higher", drop=True)})
    out.attrs.update({k: v for k, v in draws.attrs.items() if isinstance(v, (str, int, float))},
                     prob=prob, interval="highest-density interval (arviz.hdi)")
    return out


def total_effects_draws(posterior, tile=None, *, units: str = "standardized", variables=None) -> xr.DataArray:
    """Posterior draws of the total-effects matrix of one tile: (chain, draw, effect, cause)."""
    d = tile_draws(posterior, tile, units=units, variables=variables)
    T = d["B"].copy(data=total_effects(d["B"].values))
    T.name = "total_effect"
    T.attrs = {"units": d.attrs["units"], "unit_system": d.attrs["unit_system"],
               "definition": "T = (I - B)^-1, T[effect, cause]; the diagonal is the trivial 1"}
    return T


def total_effects_summary(posterior, tile=None, prob: float = 0.9, *, units: str = "standardized",
                          variables=None) -> xr.Dataset:
    """Posterior mean, sd and ``prob`` HDI of the total effects ``T[effect, cause]`` of a tile.

    ``tile=None`` summarises every tile of a run (a leading ``tile`` dimension; tiles are read one
    at a time, so memory stays at one tile's draws) or the only model there is. ``possible`` marks
    the entries the tile's causal order allows a directed path for (elsewhere every draw is exactly
    0). Units: see the module docstring; ``T_raw[i, j] = T[i, j] scale_i / scale_j``.
    """
    units = _normalise_units(units)
    ds = _as_dataset(posterior, variables)
    if tile is None and "tile" in ds.dims and ds.sizes["tile"] > 1:
        parts = [total_effects_summary(ds, t, prob, units=units) for t in _tile_labels(ds)]
        # per-tile scalar coords (image, sm_fraction) become tile coords; explicit to pin xarray's default
        out = xr.concat(parts, dim="tile", coords="different", compat="equals")
        out.attrs = parts[0].attrs
        return out
    T = total_effects_draws(ds, tile, units=units)
    out = summarize(T, prob)
    n = T.sizes["effect"]
    out["possible"] = (("effect", "cause"), (T.values != 0).any(axis=(0, 1)) & ~np.eye(n, dtype=bool))
    out.attrs.update(units=T.attrs["units"], unit_system=units, definition=T.attrs["definition"])
    return out


# ---------------------------------------------------------------------------------------------
# do() and shift() on posterior draws


def _resolve(values: Mapping, names: list[str], what: str) -> dict[int, float]:
    out = {}
    for name, value in values.items():
        if name not in names:
            if name in DESCRIPTORS:
                raise InterventionError(f"{name!r} is a descriptor but not a variable of this model; its variables "
                                        f"are {names}.")
            raise InterventionError(f"cannot {what} {name!r}: unknown variable; valid names are {names}.")
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise InterventionError(f"{what} {name}: the value must be one number; got {value!r}.") from None
        if not np.isfinite(v):
            raise InterventionError(f"{what} {name}: the value must be finite; got {v}.")
        out[names.index(name)] = v
    return out


def _intervene(posterior, tile, units, variables, do_values, shift_values) -> xr.DataArray:
    d = tile_draws(posterior, tile, units=units, variables=variables)
    names = [str(v) for v in d["variable"].values]
    do_k = _resolve(do_values, names, "set")
    shift_k = _resolve(shift_values, names, "shift")
    mean = interventional_mean(d["B"].values, d["c"].values, do_k, shift_k)
    out = d["c"].copy(data=mean)
    out.name = "interventional_mean"
    desc = ([f"do({k} = {v:g})" for k, v in do_values.items()]
            + [f"shift({k} += {v:g})" for k, v in shift_values.items()])
    out.attrs = {"intervention": ", ".join(desc) or "none (observational mean)", "units": d.attrs["units"],
                 "unit_system": d.attrs["unit_system"]}
    return out


def do(posterior, values: Mapping[str, float] | None = None, /, *, tile=None, units: str = "standardized",
       variables=None, **kw: float) -> xr.DataArray:
    """Posterior draws (chain, draw, variable) of every variable's mean under ``do(x_k = v)``.

    ``do(post, tile=12, Py=0.0)`` or ``do(post, {"Py": 0.0, "Px": 0.1}, tile=12)`` (several at
    once); no values gives the observational mean (subtract it for the change an intervention
    makes). Values and results are in ``units`` (see the module docstring; with ``"raw"`` the
    means are anchored at the tile's observed raw mean). ``posterior`` and ``tile`` as in
    :func:`tile_draws`.
    """
    return _intervene(posterior, tile, units, variables, {**(values or {}), **kw}, {})


def shift(posterior, deltas: Mapping[str, float] | None = None, /, *, tile=None, units: str = "standardized",
          variables=None, **kw: float) -> xr.DataArray:
    """Posterior draws (chain, draw, variable) of every mean under the shift ``x_k -> x_k + delta``.

    The shifted variable keeps its mechanism and gets ``delta`` added, so the means move by
    ``delta * T[:, k]`` from the observational mean. Arguments as in :func:`do`.
    """
    return _intervene(posterior, tile, units, variables, {}, {**(deltas or {}), **kw})


# ---------------------------------------------------------------------------------------------
# PyMC route (cross-check): the same SEM as a generative model, intervened with pm.do


def _topological_order(B: np.ndarray) -> list[int]:
    n = B.shape[0]
    parents = [set(np.flatnonzero(B[i]).tolist()) for i in range(n)]
    order, placed = [], set()
    while len(order) < n:
        ready = [i for i in range(n) if i not in placed and parents[i] <= placed]
        order += ready
        placed |= set(ready)
    return order


def linear_sem_model(B, c, sigma, order=None, names=None, noise: str = "laplace"):
    """A PyMC model of ``x = B x + c + e`` for fixed parameters (one draw, or posterior means).

    ``B`` (n, n) ``[effect, cause]``, ``c`` and ``sigma`` (n,); ``sigma`` is the noise scale as in
    :mod:`causalcrystal.sem` (Laplace ``b``, so sd ``sqrt(2) sigma``; Normal sd). Variables are
    created parents first (``order``: a causal order, derived from ``B`` if omitted) and named
    ``names`` (default ``x0, x1, ...``), so that ``pm.do(model, {"x1": 2.0})`` and
    ``pm.sample_prior_predictive`` draw from the intervened system (see :func:`pymc_intervene`).
    """
    import pymc as pm

    B = _as_matrices(B)
    if B.ndim != 2:
        raise InterventionError(f"linear_sem_model takes one B (n, n); got shape {B.shape}.")
    _check_acyclic(B)
    n = B.shape[0]
    c = np.broadcast_to(np.asarray(c, dtype=np.float64), (n,))
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,))
    if not np.all(sigma > 0):
        raise InterventionError(f"sigma must be positive; got {sigma}.")
    if noise not in ("laplace", "normal"):
        raise InterventionError(f"noise {noise!r}: use 'laplace' or 'normal' (the mean under an intervention does "
                                "not depend on the zero-mean noise family).")
    names = [f"x{i}" for i in range(n)] if names is None else [str(v) for v in names]
    order = _topological_order(B) if order is None else [int(k) for k in order]
    if sorted(order) != list(range(n)):
        raise InterventionError(f"order must be a permutation of 0..{n - 1}; got {order}.")
    pos = np.argsort(order)
    bad = [(names[i], names[j]) for i, j in zip(*np.nonzero(B)) if pos[j] >= pos[i]]
    if bad:
        raise InterventionError(f"B has edges against the order {order}: {bad} (effect, cause).")
    with pm.Model(coords={"variable": names}) as model:
        x = {}
        for i in order:
            mu = c[i] + sum(B[i, j] * x[j] for j in np.flatnonzero(B[i]))
            dist = pm.Laplace if noise == "laplace" else pm.Normal
            scale = {"b": sigma[i]} if noise == "laplace" else {"sigma": sigma[i]}
            x[i] = dist(names[i], mu=mu, **scale)
    return model


def pymc_intervene(model, do: Mapping[str, float] | None = None, shift: Mapping[str, float] | None = None):
    """``pm.do`` on a :func:`linear_sem_model`: ``do`` replaces a variable by a constant, ``shift``
    by itself plus ``delta`` (PyMC then names the shifted variable ``do_<name>`` and its children
    use it; the original stays in the model as the unshifted mechanism)."""
    import pymc as pm

    do, shift = dict(do or {}), dict(shift or {})
    repl = {name: float(v) for name, v in do.items()}
    repl.update({name: model[name] + float(d) for name, d in shift.items()})
    with warnings.catch_warnings():
        # A shift references the variable it replaces by design; PyMC warns and renames it.
        warnings.filterwarnings("ignore", message="Intervention expression references", category=UserWarning)
        return pm.do(model, repl)


def sample_intervened(model, draws: int = 2000, seed: int = 0) -> xr.DataArray:
    """Draws (draw, variable) of every variable of an (intervened) :func:`linear_sem_model`, from
    ``pm.sample_prior_predictive``; a shifted variable is reported as shifted (``do_<name>``)."""
    import pymc as pm

    names = list(model.coords.get("variable", [])) or [v.name for v in model.basic_RVs]
    keys = []
    for name in names:
        key = f"do_{name}" if f"do_{name}" in model.named_vars else name
        if key not in model.named_vars:
            raise InterventionError(f"variable {name!r} is not in the model ({sorted(model.named_vars)}).")
        keys.append(key)
    # Name every variable: a constant intervention is a Data container, left out by default.
    prior = pm.sample_prior_predictive(draws=draws, model=model, random_seed=seed, var_names=keys).prior
    shape = (prior.sizes["chain"], prior.sizes["draw"])
    cols = [np.broadcast_to(prior[key].values, shape).ravel() for key in keys]
    return xr.DataArray(np.column_stack(cols), dims=("draw", "variable"), coords={"variable": names})
