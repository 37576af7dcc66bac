"""One object for a run folder and the jobs derived from it: ``cc.open_run(path)``.

``open_run("RUN")`` checks that ``RUN`` holds a finished ``causalcrystal run`` and returns a
:class:`Run` whose parts are read only when first asked for (a posterior file is ~2 MB per tile):

============================  ================================================  ==========================
attribute                     what                                              file (in ``RUN``)
============================  ================================================  ==========================
``posterior``                 ``arviz.InferenceData`` (``B``, ``edge_inclusion``  ``posterior.nc``
                              ... with dims ``chain, draw, tile, ...``)
``summary``                   ``pandas.DataFrame``, one row per tile and edge     ``summary.csv``
``discovery``                 ``xarray.Dataset``, LiNGAM per tile                 ``discovery.nc``
``discovery_images``          ``xarray.Dataset``, LiNGAM per whole image          ``discovery.nc`` group
                                                                                  ``images``
``cells``                     ``xarray.Dataset``, the cell table of the run       ``cells.nc``
``concentration``             ``arviz.InferenceData`` of the LGD model            ``concentration/
                                                                                  concentration.nc``
``compare``                   ``dict`` of ``pandas.DataFrame``: ``models``,      ``compare/*.csv``
                              ``averaged``, ``directions``
============================  ================================================  ==========================

A part that does not exist (yet) raises :class:`MissingPartError` (a ``FileNotFoundError``) that
names the command producing it; a derived job that is unfinished or running now is named as such
(only finished jobs' files are read, as in the report). ``settings`` and ``manifest`` are the
run's recorded settings (``manifest.json``).
"""

from __future__ import annotations

import json
import warnings
from functools import cached_property
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal.errors import CausalCrystalError
from causalcrystal.jobs import describe_holder, not_finished, read_manifest, running, safe_name, status

__all__ = ["MissingPartError", "Run", "allowed_mask", "as_run", "open_run", "summary", "tile_data", "tile_loglik",
           "tile_loo"]


class MissingPartError(CausalCrystalError, FileNotFoundError):
    """A part of a run that has not been made (yet); the message names the command that makes it."""


class Run:
    """A finished run folder (see the module docstring); use :func:`open_run`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        where = safe_name(self.path)
        if not self.path.is_dir():
            raise MissingPartError(f"{where}: no such folder; pass the --out folder of `causalcrystal run` or `demo`.")
        holder = running(self.path)
        manifest = read_manifest(self.path)
        if manifest is None or manifest.get("job", "run") != "run":
            raise MissingPartError(f"{where} holds no causalcrystal run (no run manifest.json); make one with "
                                   f"`causalcrystal run INPUTS --out {where}`.")
        if status(self.path, "posterior.nc") != "finished":
            if holder is not None:
                raise MissingPartError(f"{where}: the run is being written now ({describe_holder(holder)}); open it "
                                       "when it has finished.")
            raise MissingPartError(not_finished(self.path, "run", "posterior.nc", f"causalcrystal run ... --out {where}"))
        self.manifest: dict = manifest
        self.settings: dict = manifest.get("settings", {})

    def __repr__(self) -> str:
        parts = [name for name, f in (("cells", "cells.nc"), ("concentration", "concentration/concentration.nc"),
                                      ("compare", "compare/models.csv")) if (self.path / f).is_file()]
        return f"<causalcrystal Run {safe_name(self.path)}: {self.settings.get('spec', {}).get('name', '?')} model, " \
               f"present: posterior, summary, discovery{''.join(', ' + p for p in parts)}>"

    # -- the run's own outputs ------------------------------------------------------------------

    def _file(self, name: str, made_by: str) -> Path:
        p = self.path / name
        if not p.is_file():
            raise MissingPartError(f"{safe_name(p)} is missing; {made_by}")
        return p

    @cached_property
    def posterior(self):
        """``arviz.InferenceData`` of every tile (``posterior.nc``)."""
        import arviz as az

        return az.from_netcdf(self._file("posterior.nc", "re-run the run to make it."))

    @cached_property
    def summary(self):
        """``pandas.DataFrame``: one row per tile and allowed edge (``summary.csv``)."""
        import pandas as pd

        return pd.read_csv(self._file("summary.csv", "re-run the run to make it."))

    @cached_property
    def discovery(self):
        """``xarray.Dataset``: LiNGAM per tile (``discovery.nc``)."""
        import xarray as xr

        return xr.load_dataset(self._file("discovery.nc", "re-run the run to make it."), engine="h5netcdf")

    @cached_property
    def discovery_images(self):
        """``xarray.Dataset``: LiNGAM per whole image (group ``images`` of ``discovery.nc``)."""
        import xarray as xr

        return xr.load_dataset(self._file("discovery.nc", "re-run the run to make it."), engine="h5netcdf",
                               group="images")

    @cached_property
    def cells(self):
        """``xarray.Dataset``: the cell table the run was made from (``cells.nc``)."""
        from causalcrystal.io import read

        return read(self._file("cells.nc", "runs made before the cell table was stored lack it: re-run the run "
                                           "(the same command with --overwrite) to store it."))

    @cached_property
    def _tiling(self):
        """``(standardised cells, tiles)`` rebuilt from ``cells`` and the settings, once per Run
        (:func:`tile_data` asks for one tile at a time)."""
        from causalcrystal import discovery
        from causalcrystal.engine import run_tiles, tile_min_cells

        s = self.settings
        tiles = run_tiles(self.cells, s["tile_size"], s["stride"], tile_min_cells(s["tile_size"], s["min_cells"]))
        return discovery.standardize(self.cells, s["standardize"], discovery.declared_derived(self.discovery)), tiles

    @property
    def tiles(self):
        """``xarray.Dataset``: the run's tiling (:func:`causalcrystal.tiling.make_tiles`), rebuilt
        from ``cells`` and the run's settings; ``tile`` indexes it as in ``posterior.nc``."""
        return self._tiling[1]

    def tile_cells(self, tile: int):
        """The cells of one tile in the cell table's own units (``xarray.Dataset`` over ``cell``);
        :func:`tile_data` gives them as the sampler saw them (standardised)."""
        from causalcrystal.tiling import tile_members

        return self.cells.isel(cell=tile_members(self.tiles, int(tile)))

    # -- derived jobs ---------------------------------------------------------------------------

    def _derived(self, job: str, final: str, command: str) -> Path:
        d = self.path / job
        where = safe_name(d)
        if read_manifest(d) is None:
            raise MissingPartError(f"{where}: no {job} output; make it with `{command}` (it writes there).")
        if status(d, final) != "finished":
            holder = running(d)
            if holder is not None:
                raise MissingPartError(f"{where}: the {job} job is running now ({describe_holder(holder)}); read it "
                                       "when it has finished.")
            raise MissingPartError(not_finished(d, f"{job} job", final, command))
        return d

    @cached_property
    def concentration(self):
        """``arviz.InferenceData`` of the LGD concentration model (``concentration/concentration.nc``;
        made by ``causalcrystal concentration RUN``)."""
        import arviz as az

        d = self._derived("concentration", "concentration.nc", f"causalcrystal concentration {safe_name(self.path)}")
        return az.from_netcdf(d / "concentration.nc")

    @cached_property
    def compare(self) -> dict:
        """``{"models", "averaged", "directions"}`` tables of ``causalcrystal compare RUN``
        (``compare/*.csv``, pandas DataFrames; interval columns named as :mod:`causalcrystal.intervals`
        says, also for folders written before)."""
        import pandas as pd

        from causalcrystal.intervals import renamed

        d = self._derived("compare", "models.csv", f"causalcrystal compare {safe_name(self.path)}")
        return {p.stem: renamed(pd.read_csv(p)) for p in sorted(d.glob("*.csv"))}

    @property
    def is_simulated(self) -> bool:
        """Whether the run's cells came from the project's simulator (so ``cells`` holds the truth)."""
        return "simulator" in str(self.settings.get("source", ""))

    def to_dict(self) -> dict:
        """The manifest (settings, versions, times) as a plain dict."""
        return json.loads(json.dumps(self.manifest))


def as_run(run) -> Run:
    """``run`` itself when it is a :class:`Run`, else :func:`open_run` of that folder."""
    return run if isinstance(run, Run) else Run(run)


def allowed_mask(run):
    """``xarray.DataArray`` bool ``(tile, effect, cause)``: the coefficients any of each tile's
    causal orders allows (the rest are fixed at 0). From ``constant_data.allowed``; files written
    before it was stored: the coefficients with any non-zero draw."""
    idata = as_run(run).posterior
    if "constant_data" in idata.groups() and "allowed" in idata.constant_data:
        return idata.constant_data["allowed"].astype(bool)
    return (idata.posterior["B"] != 0).any(("chain", "draw"))


def summary(run, var_names=("B",), hdi_prob: float = 0.9, **kwargs):
    """:func:`arviz.summary` of a run over the coefficients its tiles estimate, not the forbidden
    ones stored as zeros (which make ``az.summary`` print NaN r_hat and RuntimeWarnings).

    ``run``: a :class:`Run` or a run folder. ``var_names``: posterior variables; those with dims
    ``(tile, effect, cause)`` (``B``, ``edge_inclusion``) are restricted to allowed edges, the
    others summarised whole. Returns a ``pandas.DataFrame`` indexed like ArviZ's (``B[3, a, Px]``
    = tile 3, effect a, cause Px) with ArviZ's columns (``mean``, ``sd``, ``hdi_5%``, ``hdi_95%``,
    ``ess_bulk``, ``r_hat``, ...); the rows of ``B`` are the edges of ``summary.csv``. An allowed
    edge that was never included (every draw exactly 0) has ``r_hat`` NaN. Extra keyword arguments
    go to :func:`arviz.summary`.

    A tile whose posterior averages several causal orders stores each chain as consecutive blocks
    of draws from each order (:func:`causalcrystal.sem.mix_orders`); ArviZ's split r_hat and ESS
    would read the jumps between blocks as non-convergence (r_hat 1.8 on a converged demo tile).
    For such tiles the ``B`` rows carry the run's own diagnostics instead (``summary.csv``: the
    worst r_hat and smallest bulk ESS over the orders, each from its own chains) with
    ``mcse_mean = sd / sqrt(ess_bulk)``, and ``ess_tail`` / ``mcse_sd`` NaN; the other variables'
    diagnostic columns are NaN there.
    """
    import arviz as az
    import pandas as pd

    r = as_run(run)
    post = r.posterior.posterior
    mask = allowed_mask(r)
    tables = []
    for name in var_names:
        v = post[name]
        if {"tile", "effect", "cause"} <= set(v.dims):
            edges = mask.stack(edge=("tile", "effect", "cause"))
            keep = edges.where(edges, drop=True)["edge"]
            v = v.stack(edge=("tile", "effect", "cause")).sel(edge=keep)
            labels = [f"{name}[{t}, {e}, {c}]" for t, e, c in v["edge"].values]
            v = v.drop_vars(["edge", "tile", "effect", "cause"] + [c for c in v.coords if "edge" in v[c].dims
                                                                   and c not in ("edge",)], errors="ignore")
            v = v.assign_coords(edge=np.arange(len(labels)))
            with warnings.catch_warnings():
                # an allowed edge the spike-and-slab never included has every draw exactly 0: its
                # r_hat is 0/0 (NaN, correctly undefined), which numpy reports once per edge
                warnings.filterwarnings("ignore", "invalid value encountered in scalar divide", RuntimeWarning)
                t = az.summary(xr.Dataset({name: v}), hdi_prob=hdi_prob, **kwargs)
            t.index = labels
            _pooled_order_diagnostics(r, t, name, keep.values)
        else:
            t = az.summary(r.posterior, var_names=[name], hdi_prob=hdi_prob, **kwargs)
        tables.append(t)
    return pd.concat(tables)


def _pooled_order_diagnostics(r, t, name: str, keys) -> None:
    """In place: the diagnostic columns of :func:`summary`'s rows ``t`` of variable ``name`` (one
    per ``(tile, effect, cause)`` in ``keys``) for tiles whose draws pool several causal orders
    (see :func:`summary`)."""
    from causalcrystal.sem import order_draws

    const = r.posterior.constant_data if "constant_data" in r.posterior.groups() else None
    if const is None or "order_weight" not in const:
        return
    D = r.posterior.posterior.sizes["draw"]
    pooled = set()
    for tile in const["tile"].values.tolist():
        w = const["order_weight"].sel(tile=tile).values
        if (order_draws(np.nan_to_num(w[np.isfinite(w)]), D) > 0).sum() > 1:
            pooled.add(int(tile))
    if not pooled:
        return
    rows = np.array([int(k[0]) in pooled for k in keys])
    diag = [c for c in ("ess_bulk", "ess_tail", "r_hat", "mcse_mean", "mcse_sd") if c in t.columns]
    t.loc[t.index[rows], diag] = np.nan
    if name == "B":
        s = r.summary.set_index(["tile", "effect", "cause"])
        sel = [(int(k[0]), str(k[1]), str(k[2])) for k, on in zip(keys, rows) if on]
        for col in ("r_hat", "ess_bulk"):
            if col in t.columns and col in s.columns:
                t.loc[t.index[rows], col] = s[col].reindex(sel).to_numpy()
        if "mcse_mean" in t.columns:
            t.loc[t.index[rows], "mcse_mean"] = (t.loc[t.index[rows], "sd"] / np.sqrt(t.loc[t.index[rows], "ess_bulk"])
                                                 ).to_numpy()


def tile_data(run, tile: int):
    """``(X, active)``: the cells of ``tile`` as the sampler saw them, ``(n_cells, 8)`` in
    ``DESCRIPTORS`` order and the run's standardisation, rebuilt from ``cells.nc`` and the run's
    settings, and the descriptors whose equations enter the likelihood (``None``: all; a derived
    descriptor's does not). Raises :class:`MissingPartError` without ``cells.nc`` and
    ``ValueError`` when the rebuilt tile does not match the run's (other cells or settings)."""
    from causalcrystal import discovery
    from causalcrystal.tiling import tile_members

    r = as_run(run)
    s = r.settings
    std, tiles = r._tiling
    post = r.posterior.posterior
    for name in ("image", "row0", "col0", "n_cells"):
        if name in post.coords and name in tiles and str(post[name].sel(tile=tile).values) != str(
                tiles[name].values[tile]):
            raise ValueError(f"tile {tile}: the cells of {safe_name(r.path / 'cells.nc')} rebuild another tile "
                             f"({name} {tiles[name].values[tile]} vs {post[name].sel(tile=tile).values}); was "
                             "cells.nc replaced?")
    disc = r.discovery
    der = discovery.tile_derived(disc, tile)
    X = discovery.tile_matrix(std, tile_members(tiles, tile), s["standardize"], der)
    active = ~der if "derived" in disc else None
    return X, active


#: posterior variables of a tile that define its SEM (``posterior.nc`` name -> the name in the
#: sampler's output dict, which :mod:`causalcrystal.checks` and :mod:`causalcrystal.sem` read)
SEM_VARIABLES = {"B": "B", "c": "c", "sigma": "sigma", "noise_weight": "noise_weight", "noise_loc": "noise_loc",
                 "noise_var": "noise_var", "nu": "nu", "noise_shape": "shape"}


def tile_draws(run, tile: int, step: int = 1) -> dict:
    """One tile's SEM draws as float64 numpy arrays with leading axes (chain, draw), every
    ``step``-th draw: ``B`` (..., effect, cause) and whichever of ``c``, ``sigma``, ``noise_weight``,
    ``noise_loc``, ``noise_var``, ``nu``, ``shape`` (``noise_shape`` in the file) the run's noise
    family has: the arrays :func:`causalcrystal.sem.pointwise_loglik`, ``simulate_sem`` and
    :mod:`causalcrystal.checks` take. Also ``chain`` and ``draw`` (the coordinates kept)."""
    post = as_run(run).posterior.posterior.sel(tile=tile).isel(draw=slice(None, None, max(1, int(step))))
    out = {key: post[name].values.astype(np.float64) for name, key in SEM_VARIABLES.items() if name in post}
    out["chain"], out["draw"] = post["chain"].values, post["draw"].values
    return out


def tile_loglik(run, tile: int, recompute: bool = False) -> xr.DataArray:
    """Pointwise log-likelihood of one tile, ``(chain, draw, member)`` over its cells: the stored
    one (``posterior.nc`` of a run made with ``keep_loglik``) or, by default, recomputed exactly
    from the tile's draws (:func:`causalcrystal.sem.pointwise_loglik`) and :func:`tile_data`."""
    from causalcrystal.sem import ModelSpec, pointwise_loglik

    r = as_run(run)
    idata = r.posterior
    if not recompute and "log_likelihood" in idata.groups() and "z" in idata.log_likelihood:
        z = idata.log_likelihood["z"].sel(tile=tile)
        n = int(idata.posterior["n_cells"].sel(tile=tile)) if "n_cells" in idata.posterior.coords else \
            int(np.isfinite(z.isel(chain=0, draw=0)).sum())
        return z.isel(member=slice(0, n)).drop_vars([c for c in z.coords if c not in ("chain", "draw", "member")])
    X, active = tile_data(r, tile)
    d = tile_draws(r, tile)
    noise = ModelSpec.from_dict(r.settings["spec"]).noise
    shape = None
    if noise == "studentt":
        shape = d["nu"][:, :, None, None]
    elif noise == "gennorm":
        shape = d["shape"][:, :, None, :]
    mixture = (d["noise_weight"], d["noise_loc"], d["noise_var"]) if noise == "mog" else None
    ll = pointwise_loglik(X, d["B"], d.get("c"), d.get("sigma"), shape, noise, mixture=mixture, active=active)
    return xr.DataArray(ll, dims=("chain", "draw", "member"),
                        coords={"chain": d["chain"], "draw": d["draw"], "member": np.arange(ll.shape[-1])}, name="z")


def tile_loo(run, tile: int, **kwargs):
    """PSIS-LOO of one tile's SEM over its own cells (:func:`arviz.loo` on :func:`tile_loglik`):
    overlapping tiles share cells and padded tiles carry NaN, so LOO over a whole run's file is
    meaningless; it is only meaningful per tile.

    ``tile``: a tile index (``posterior.tile``). Returns ArviZ's ``ELPDData``. Raises ``KeyError``
    naming the tiles present when ``tile`` is not one of them.
    """
    import arviz as az

    r = as_run(run)
    tiles = r.posterior.posterior["tile"].values.tolist()
    if tile not in tiles:
        raise KeyError(_missing_tile(tile, tiles))
    z = tile_loglik(r, tile)
    # the tile's own draws as the posterior group (ArviZ takes the relative ESS, reff, from it)
    post = r.posterior.posterior[["sigma"]].sel(tile=tile, drop=True)
    post = post.drop_vars([c for c in post.coords if c not in ("chain", "draw", "variable")])
    one = az.InferenceData(posterior=post, log_likelihood=xr.Dataset({"z": z}))
    return az.loo(one, var_name="z", **kwargs)


def tile_idata(run, tile: int, predictive_draws: int = 200, seed: int = 0):
    """One tile as an ArviZ ``InferenceData`` that ArviZ's functions read as they expect.

    Groups: ``posterior`` (the tile's draws, ``tile`` dropped), ``observed_data`` ``x``
    (member, variable): the tile's cells as the sampler saw them (:func:`tile_data`, the run's
    standardisation), ``posterior_predictive`` ``x`` (chain, draw, member, variable): one simulated
    data set of the tile's size per kept draw, thinned to about ``predictive_draws`` draws in all
    (:func:`causalcrystal.sem.simulate_sem`, ``x = (I - B)^-1 (c + e)`` with the noise family's
    ``e``), and ``log_likelihood`` ``x`` (chain, draw, member) (:func:`tile_loglik`). So
    ``az.plot_ppc(tile_idata(run, k))`` compares every descriptor's observed and replicated
    distributions, and ``az.loo(...)`` is the tile's LOO (:func:`tile_loo`). ``sample_stats`` holds
    the sampler's statistics; ``energy`` only where it means something: a tile sampled by NUTS
    with consecutive kept draws (``--thin 1``, no convergence re-run) whose draws all come from one
    causal order (``--orders 1``, or one order took all the weight), so ``az.plot_energy`` /
    ``az.bfmi`` apply there. The default Gibbs sampler has no Hamiltonian,
    and draws mixed over orders come from several models: no ``energy`` (``az.plot_energy`` then
    raises ArviZ's own KeyError). A derived descriptor
    (``attrs["derived"]``) has no equation in the likelihood; its replicated values come from its
    fitted regression and are not a check of the model.

    Raises ``KeyError`` naming the tiles present when ``tile`` is not one of them.
    """
    import arviz as az

    from causalcrystal.cells import DESCRIPTORS
    from causalcrystal.sem import ModelSpec, simulate_sem

    r = as_run(run)
    idata = r.posterior
    tiles = idata.posterior["tile"].values.tolist()
    if tile not in tiles:
        raise KeyError(_missing_tile(tile, tiles))
    X, active = tile_data(r, tile)
    post = idata.posterior.sel(tile=tile, drop=True)
    post = post.drop_vars([c for c in post.coords if c not in post.dims])
    noise = ModelSpec.from_dict(r.settings["spec"]).noise
    C, D = post.sizes["chain"], post.sizes["draw"]
    sub = tile_draws(r, tile, step=int(np.ceil(C * D / max(int(predictive_draws), 1))))
    d = sub["draw"].size
    flat = lambda name: sub[name].reshape(C * d, *sub[name].shape[2:]) if name in sub else None  # noqa: E731
    shape = mixture = None
    if noise == "mog":
        mixture = (flat("noise_weight"), flat("noise_loc"), flat("noise_var"))
    elif noise == "studentt":
        shape = flat("nu").reshape(-1, 1)
    elif noise == "gennorm":
        shape = flat("shape")
    rng = np.random.default_rng(seed)
    rep = simulate_sem(flat("B"), flat("c"), flat("sigma"), noise, X.shape[0], rng, shape=shape, mixture=mixture)
    member = np.arange(X.shape[0])
    names = list(DESCRIPTORS)[:X.shape[1]]
    pp = xr.Dataset({"x": (("chain", "draw", "member", "variable"), rep.reshape(C, d, *rep.shape[1:]))},
                    coords={"chain": sub["chain"], "draw": sub["draw"], "member": member, "variable": names})
    obs = xr.Dataset({"x": (("member", "variable"), X)}, coords={"member": member, "variable": names})
    ll = tile_loglik(r, tile)
    groups = {}
    if "sample_stats" in idata.groups():
        stats = idata.sample_stats.sel(tile=tile, drop=True)
        stats = stats.drop_vars([c for c in stats.coords if c not in stats.dims])
        if "energy" in stats and not np.isfinite(stats["energy"].values).all():
            stats = stats.drop_vars("energy")  # a tile mixing causal orders has no one Hamiltonian
        groups["sample_stats"] = stats
    out = az.InferenceData(posterior=post, observed_data=obs, posterior_predictive=pp,
                           log_likelihood=xr.Dataset({"x": ll.rename(None)}), **groups)
    der = [] if active is None else [v for v, a in zip(names, active) if not a]
    out.attrs.update({"tile": int(tile), "noise": noise, "derived": der})
    return out


def _missing_tile(tile, tiles: list) -> str:
    shown = ", ".join(str(t) for t in tiles[:8]) + (f", ... {tiles[-1]}" if len(tiles) > 8 else "")
    return f"tile {tile} is not in this run's posterior: its {len(tiles)} tiles are {shown}"


def open_run(path: str | Path) -> Run:
    """Open the finished run in folder ``path`` (the ``--out`` of ``causalcrystal run`` / ``demo``).

    Returns a :class:`Run` whose ``posterior``, ``summary``, ``discovery``, ``cells``,
    ``concentration`` and ``compare`` are read when first used. Raises :class:`MissingPartError`
    naming what to run when the folder holds no finished run (unfinished, running now, or none).
    """
    return Run(path)
