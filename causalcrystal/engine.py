"""Run the whole per-tile pipeline: discovery -> DAG priors -> one Bayesian SEM per tile -> files.

``run_pipeline(cells, out_dir, ...)`` writes into ``out_dir``:

``cells.nc``
    the cell table the run was made from (validated, in canonical order; the project's netCDF).
``discovery.nc``
    LiNGAM per tile (adjacency, bootstrap probabilities, orders, candidate DAGs), and the
    image-level discovery in the netCDF group ``images``.
``tiles/tile_NNNNN.npz``
    each tile's posterior as soon as it is sampled (plain arrays, loaded without pickle), while the
    run is unfinished. This is what makes a run resumable: re-running on a partly finished folder
    keeps finished tiles and samples only the rest. Every tile's seed derives from the run seed and
    the tile index, so an interrupted-and-resumed run gives the same numbers as an uninterrupted
    one. Removed once the run has finished (``posterior.nc`` holds all of it), unless
    ``keep_tiles``.
``posterior.nc``
    ArviZ InferenceData: posterior ``B`` and ``edge_inclusion`` (chain, draw, tile, effect, cause),
    ``c``, ``sigma`` (chain, draw, tile, variable), for ``mog`` ``noise_weight``, ``noise_loc``,
    ``noise_var`` (..., variable, component); ``log_likelihood`` ``z`` (chain, draw, tile,
    member; NaN padding; only with ``keep_loglik``, see ``posterior.attrs['log_likelihood']``);
    ``sample_stats`` (diverging; for NUTS also tree_depth, step_size and energy); ``constant_data``
    with the tile means and scales ``B`` is in, the candidate orders and their pseudo-BMA+ weights,
    ELPD, p_loo, Pareto k, ``allowed_weight`` and ``allowed`` (tile, effect, cause; bool: the
    coefficients estimated, the rest stored as exact zeros); the units of ``B`` in
    ``posterior.attrs['standardize']``; every group has ArviZ's standard attrs (``created_at``,
    ``arviz_version``, ``inference_library``). :func:`causalcrystal.runs.summary` and
    :func:`causalcrystal.runs.tile_loo` read it as ArviZ users expect. The posterior group's draws
    are rounded to <= 1/4096 of each quantity's s.d. in its tile (:func:`quantise_draws`,
    ``posterior.attrs['draw_precision']``) unless ``lossless``.
``summary.csv``
    one row per tile x edge any candidate order allows: posterior mean, sd, 90 % HDI,
    ``p_positive`` / ``p_negative``, inclusion probability, ``p_allowed`` (weight of the orders
    allowing it), LiNGAM probability, r_hat, ess_bulk, divergences, ``restarted_chains`` (Gibbs
    chains restarted from a local mode, :func:`causalcrystal.sem.stuck_chains`), residual checks
    (``pit_p_effect``, ``gauss_p_effect``, ``gauss_p_cause``, ``direction_identified`` (cause or
    effect declared non-Gaussian, :func:`causalcrystal.checks.non_gaussian`),
    ``noise_misfit``), ``flagged`` and ``flag_reason``.
``manifest.json``
    the settings (with a SHA-256 of the input cells), and ``"status": "finished"`` once every other
    output is in place (written last). A resume with different settings or data is refused.

The folder's rules (validate first, lock, never delete files the project did not write,
``overwrite`` moves the old run aside until the new one finishes, atomic outputs) are
:class:`causalcrystal.jobs.Job`'s, shared with ``compare`` and ``concentration``.

Each overlapping tile is its own model (a cell enters any one likelihood once). Per-tile work goes
through :mod:`causalcrystal.executor` (in-process, local processes, or Dask).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal import __version__
from causalcrystal.cells import DESCRIPTORS, canonical, display_label, excluded_images, validate
from causalcrystal.checks import GAUSS_ALPHA, PIT_ALPHA, non_gaussian
from causalcrystal.executor import Progress, check_workers, get_executor
from causalcrystal.jobs import (  # noqa: F401  (RunExistsError, FolderLockedError: part of this module's API)
    FolderLockedError, Job, RunExistsError, data_fingerprint, load_part, safe_name)
from causalcrystal.priors import DagPrior, dag_prior, forbidden_into, inclusion_weights
from causalcrystal.sem import DEFAULT_SPEC, ORDER_KEYS, RHAT_MAX, ModelSpec, load_spec
from causalcrystal.tiling import image_tiles, make_tiles, tile_members

#: What a run writes into its folder besides ``manifest.json`` (``tiles/`` only while it runs).
OUTPUTS = ("cells.nc", "discovery.nc", "posterior.nc", "summary.csv", "tiles")
#: The resumable work folder and the names of the tile files written there.
WORK, PARTS = "tiles", "tile_[0-9][0-9][0-9][0-9][0-9].npz"
#: Jobs and files derived from a run that live in its folder; ``--overwrite`` moves them aside with it.
COMPANIONS = ("report.html", "concentration", "compare")
#: Fewest cells a tile may have: an equation regresses a descriptor on up to 7 others (8 coefficients
#: with the intercept), which needs at least 10 cells to leave 2 residual degrees of freedom.
MIN_CELLS_FLOOR = len(DESCRIPTORS) + 2


#: ``tile_size`` value that makes every whole image one tile (small images, e.g. 10 x 6 cells).
WHOLE = "whole"


def tile_min_cells(tile_size, min_cells: int | None) -> int:
    """The run's minimum number of cells per tile, used by tiling *and* discovery (one number):
    ``min_cells`` when given, else the larger of half a full tile and discovery's default of 4
    cells per descriptor (32; whole-image tiles: 32). Raises ``ValueError`` below
    :data:`MIN_CELLS_FLOOR`."""
    from causalcrystal.discovery import MIN_CELLS_PER_VARIABLE

    if min_cells is None:
        half = 0 if tile_size == WHOLE else int(tile_size) ** 2 // 2
        return max(half, MIN_CELLS_PER_VARIABLE * len(DESCRIPTORS))
    if int(min_cells) < MIN_CELLS_FLOOR:
        raise ValueError(f"--min-cells {min_cells} is below {MIN_CELLS_FLOOR}, the fewest cells a tile's regressions "
                         f"can be fitted with (8 coefficients per equation); use --min-cells {MIN_CELLS_FLOOR} or more.")
    return int(min_cells)


def run_tiles(cells: xr.Dataset, tile_size, stride, min_cells: int) -> xr.Dataset:
    """The run's tiles: ``make_tiles`` windows, or with ``tile_size="whole"`` one tile per image
    (images with fewer than ``min_cells`` cells left out with a warning; none left is an error)."""
    if tile_size != WHOLE:
        if isinstance(tile_size, str):
            raise ValueError(f"tile size (--tile-size) {tile_size!r}: give a number of cells per side or 'whole'.")
        return make_tiles(cells, int(tile_size), stride, min_cells)
    tiles = image_tiles(cells)
    n = tiles["n_cells"].values
    keep = np.flatnonzero(n >= min_cells)
    if keep.size == 0:
        raise ValueError(f"no image has {min_cells} cells (the largest has {int(n.max())}); lower --min-cells (>= "
                         f"{MIN_CELLS_FLOOR}) or use larger images.")
    if keep.size < n.size:
        warnings.warn(f"{n.size - keep.size} image(s) with fewer than {min_cells} cells left out (--min-cells)",
                      UserWarning, stacklevel=3)
        tiles = tiles.isel(tile=keep).assign_coords(tile=np.arange(keep.size))
    tiles.attrs.update(min_cells=int(min_cells))
    return tiles


@dataclass
class TileTask:
    """Everything a worker needs to sample one tile (picklable, no open files)."""

    index: int
    X: np.ndarray
    priors: list  # candidate causal orders (DagPrior), best first
    spec: ModelSpec
    seed: int
    threads: int | None = None
    active: np.ndarray | None = None  # descriptors whose equations enter the likelihood (derived ones do not)


def _sample_task(task: TileTask) -> tuple[int, dict]:
    from causalcrystal.checks import check_tile
    from causalcrystal.sem import sample_tile_orders

    out = sample_tile_orders(task.X, task.priors, task.spec, task.seed, threads=task.threads, active=task.active)
    out.update(check_tile(task.X, out, task.spec.noise, task.active))
    return task.index, out


def tile_seed(seed: int, index: int) -> int:
    """The sampler seed of tile ``index`` (independent of execution order and executor)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _derived_option(derived) -> tuple[list[str], bool]:
    """``derived`` (``"auto"``, ``"none"`` or names) -> (declared names, detect more)."""
    if isinstance(derived, str):
        if derived == "auto":
            return [], True
        if derived == "none":
            return [], False
        derived = [v.strip() for v in derived.split(",") if v.strip()]
    bad = [v for v in derived if v not in DESCRIPTORS]
    if bad:
        raise ValueError(f"derived: {bad} are not descriptors; give names from {list(DESCRIPTORS)}, 'auto' or 'none'.")
    return list(derived), True


def _report_derived(cells, disc_images, disc, derived, log) -> None:
    """Say which descriptors are treated as derived and why (the relations found), or, with
    ``derived="none"``, which near-deterministic relations the SEM now contains."""
    from causalcrystal.collinearity import find_relations

    if derived == "none":
        X = np.column_stack([cells[v].values for v in DESCRIPTORS])
        img = cells["image"].values.astype(str)
        for lab in dict.fromkeys(img.tolist()):
            for r in find_relations(X[img == lab]):
                log(f"WARNING: image {lab}: {r.text()}; with derived='none' {r.target} stays in the SEM, so its "
                    "edges with those descriptors are an identity, not causal evidence (directions involving it "
                    "are reported as invalid). Use derived='auto' to leave it out.")
        return
    per_image = json.loads(disc_images.attrs.get("derived_relations", "{}"))
    labels = disc_images["image"].values.astype(str)
    for k, rels in per_image.items():
        for text in rels:
            log(f"WARNING: image {labels[int(k)]}: {text}: treated as derived (left out of discovery and the SEM; "
                "it is no one's cause and its equation is not fitted). Pass derived='none' (--derived none) to keep it.")
    extra = json.loads(disc.attrs.get("derived_relations", "{}"))
    if extra:
        k0 = next(iter(extra))
        log(f"WARNING: {len(extra)} tile(s) have further near-deterministic descriptors, treated as derived there; "
            f"e.g. tile {k0}: {extra[k0][0]} (discovery.nc: 'derived', attrs['derived_relations']).")


def run_fingerprint(run_dir: str | Path, name: str = "posterior.nc") -> str | None:
    """Identity of a run's output file (size and modification time, not a hash: posterior files
    are GBs). Jobs built on a run record it, so a re-run of the run (``--overwrite``) is noticed
    instead of silently mixing old derived results with new posteriors."""
    p = Path(run_dir) / name
    if not p.is_file():
        return None
    st = p.stat()
    return f"{name}:{st.st_size}:{st.st_mtime_ns}"


#: Default number of candidate causal orders per tile that the posterior averages over.
N_ORDERS = 3


def tile_order_priors(disc: xr.Dataset, disc_images: xr.Dataset, spec: ModelSpec, n_orders: int = N_ORDERS,
                      exogenous=None) -> list:
    """Per tile, the DAG priors of its top ``n_orders`` candidate causal orders (best first, see
    :func:`causalcrystal.discovery.bootstrap_lingam`; the full-data LiNGAM order where there are
    none), or ``None`` for a tile discovery skipped. All share the tile's inclusion weights, which
    combine its bootstrap probabilities with its image's (see :mod:`causalcrystal.priors`); they
    differ in which coefficients the order allows."""
    image_prob = {str(lab): disc_images["probability"].values[k]
                  for k, lab in enumerate(disc_images["image"].values)}
    n_boot = int(disc.attrs.get("n_bootstrap", 0))
    if exogenous is None:
        exogenous = json.loads(disc.attrs.get("exogenous", "[]"))
    forbidden = forbidden_into([DESCRIPTORS.index(v) for v in exogenous], len(DESCRIPTORS))
    has_cand = "candidate_order" in disc
    out = []
    for k in range(disc.sizes["tile"]):
        if str(disc["status"].values[k]) != "ok":
            out.append(None)
            continue
        w = inclusion_weights(disc["probability"].values[k], image_prob.get(str(disc["image"].values[k])),
                              max(n_boot, 1), spec.prior)
        forb = forbidden
        if "derived" in disc:
            der = disc["derived"].values[k].astype(bool)
            forb = forbidden | der[:, None] | der[None, :]  # a derived descriptor has no equation and no effects
        orders = []
        if has_cand:
            freq, cand = disc["candidate_frequency"].values[k], disc["candidate_order"].values[k]
            orders = [cand[c] for c in range(min(int(n_orders), cand.shape[0])) if freq[c] > 0]
        if not orders:
            orders = [disc["order"].values[k]]
        out.append([dag_prior(o, w, forb, floor=spec.prior.floor) for o in orders])
    return out


def tile_priors(disc: xr.Dataset, disc_images: xr.Dataset, spec: ModelSpec, candidate: int = 0,
                exogenous=None) -> list:
    """The DAG prior of every tile in one candidate order: ``candidate`` (best first; the tile's
    best order where it has fewer candidates), or ``None`` for a skipped tile."""
    per_tile = tile_order_priors(disc, disc_images, spec, candidate + 1, exogenous)
    return [None if p is None else p[min(candidate, len(p) - 1)] for p in per_tile]


def run_pipeline(
    cells: xr.Dataset,
    out_dir: str | Path,
    *,
    tile_size: int = 16,
    stride: int | None = None,
    min_cells: int | None = None,
    n_bootstrap: int = 5,
    image_bootstrap: int = 100,
    exogenous=("I14", "I5"),
    standardize: str = "image",
    spec: ModelSpec | str = DEFAULT_SPEC,
    n_orders: int = N_ORDERS,
    derived="auto",
    seed: int = 0,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    keep_tiles: bool = False,
    keep_loglik: bool = False,
    lossless: bool = False,
    log=None,
) -> dict:
    """Discovery, priors and per-tile posteriors for a cell table; write the outputs to ``out_dir``.

    ``n_orders``: how many of each tile's candidate causal orders its posterior averages over
    (:func:`causalcrystal.sem.sample_tile_orders`; 1 = condition on the best order alone).
    ``derived``: descriptors that are functions of others (:mod:`causalcrystal.collinearity`):
    ``"auto"`` (default) finds near-deterministic relations per image and per tile and leaves the
    derived column out of discovery and the SEM (no edges out of it, its equation not in the
    likelihood), with a warning naming the relation; a list of names declares them derived
    everywhere (and still looks for others); ``"none"`` keeps every descriptor in the SEM and
    only warns.
    ``tile_size``: cells per tile side, or ``"whole"`` (one tile per image; for small images).
    ``min_cells``: fewest cells per tile, for tiling and discovery alike (:func:`tile_min_cells`).
    ``stop_after`` samples at most that many new tiles and returns (a partial, resumable run).
    ``keep_loglik`` stores the pointwise log-likelihood in ``posterior.nc`` (group
    ``log_likelihood``, ~1 MB per 256-cell tile, half the file); by default it is left out and
    :func:`causalcrystal.runs.tile_loo` recomputes a tile's from the draws and ``cells.nc``.
    ``lossless`` stores the posterior draws in ``posterior.nc`` exactly as sampled (float32); by
    default each quantity's draws are rounded to 1/4096 of its posterior s.d. in the tile
    (:func:`quantise_draws`: ~29 % smaller, error <= 0.012 % of an s.d.).
    ``keep_tiles`` keeps the per-tile work files (``tiles/``, ~2 MB per tile) after ``posterior.nc``
    is written (by default they are removed: the posterior holds all of it).

    Every option and the data are checked before ``out_dir`` is touched; the folder's rules
    (lock, resume, ``overwrite``, atomic outputs) are :class:`causalcrystal.jobs.Job`'s.
    Returns a dict with the output paths, counts (``sampled``, ``reused``, ``flagged``) and the
    seconds spent in each phase of this call (``timings``: discovery, sampling, writing).
    Raises ``ValueError`` (bad option or data), :class:`~causalcrystal.jobs.RunExistsError` (the
    folder holds a finished run, another run or files the project did not write),
    :class:`~causalcrystal.jobs.FolderLockedError` (another job is writing to it).
    """
    from causalcrystal.logs import resolve

    log = resolve(log)  # default: the 'causalcrystal' logger
    check_workers(workers)
    plan = _plan_run(cells, tile_size=tile_size, stride=stride, min_cells=min_cells, n_bootstrap=n_bootstrap,
                     image_bootstrap=image_bootstrap, exogenous=exogenous, standardize=standardize, spec=spec,
                     n_orders=n_orders, derived=derived, seed=seed)
    job = Job("run", out_dir, plan.settings, outputs=OUTPUTS, work=WORK, parts=PARTS,
              final="posterior.nc", companions=COMPANIONS, version=__version__, log=log)
    timings = {"discovery": 0.0, "sampling": 0.0, "writing": 0.0}  # seconds, this call only
    with job.open(overwrite):
        clock = time.perf_counter()
        disc, disc_images = _discovery_phase(job, plan, scheduler, workers, progress, log)
        timings["discovery"] = time.perf_counter() - clock
        clock = time.perf_counter()
        priors, done, counts = _sampling_phase(job, plan, disc, disc_images, scheduler, workers, progress,
                                               stop_after, log)
        timings["sampling"] = time.perf_counter() - clock
        n_ok = sum(p is not None for p in priors)
        result = {"out_dir": str(job.out_dir), "n_tiles": n_ok, "finished": len(done) == n_ok, "timings": timings,
                  **counts}
        if len(done) < n_ok:
            log(f"stopped with {len(done)}/{n_ok} tiles sampled; run the same command again to resume")
            return result
        clock = time.perf_counter()
        summary = _write_phase(job, plan, disc, priors, done, progress, keep_loglik, lossless)
        job.finish(extra={"n_tiles": n_ok, "stored_loglik": bool(keep_loglik), "lossless_draws": bool(lossless)},
                   drop_work=not keep_tiles)
        timings["writing"] = time.perf_counter() - clock
    out = job.out_dir
    flagged = summary.loc[summary["flagged"], "tile"].unique() if len(summary) else np.array([])
    if flagged.size:
        log(f"WARNING: {flagged.size} tile(s) flagged (r_hat > {RHAT_MAX}, ess_bulk < "
            f"{plan.spec.sampler.target_ess:g}, divergences, or residuals the fitted noise does not describe): tiles "
            f"{flagged[:10].tolist()}{' ...' if flagged.size > 10 else ''}; see the 'flagged' and 'flag_reason' "
            "columns of summary.csv")
    if summary.empty:
        log("WARNING: no tile has an edge its causal orders allow (every descriptor exogenous or derived?): "
            "summary.csv has no rows")
    _warn_identifiability(summary, log, plan.tiles["n_cells"].values)
    result.update(flagged=int(flagged.size), posterior=str(out / "posterior.nc"), summary=str(out / "summary.csv"),
                  discovery=str(out / "discovery.nc"))
    log(f"wrote {safe_name(out)}/discovery.nc, posterior.nc, summary.csv ({n_ok} tiles)")
    return result


@dataclass
class RunPlan:
    """A run's checked inputs: everything decided before the output folder is touched."""

    cells: xr.Dataset          # canonical, validated cell table
    tiles: xr.Dataset
    spec: ModelSpec
    settings: dict             # what the manifest records (and a resume must match)
    declared: list             # descriptors declared derived
    detect: bool               # look for more derived descriptors
    min_cells: int
    exogenous: list
    standardize: str
    n_bootstrap: int
    image_bootstrap: int
    n_orders: int
    seed: int
    derived: object


def _plan_run(cells, *, tile_size, stride, min_cells, n_bootstrap, image_bootstrap, exogenous, standardize, spec,
              n_orders, derived, seed) -> RunPlan:
    """Check every option and the data; raise ``ValueError`` naming the option and the fix."""
    from causalcrystal.discovery import exogenous_indices

    spec = load_spec(spec) if isinstance(spec, str) else spec
    for name, value, low in (("n_orders (--orders)", n_orders, 1), ("n_bootstrap (--bootstrap)", n_bootstrap, 0),
                             ("image_bootstrap (--image-bootstrap)", image_bootstrap, 0), ("seed (--seed)", seed, 0)):
        if int(value) != value or int(value) < low:
            raise ValueError(f"{name} {value} must be a whole number >= {low}.")
    if standardize not in ("image", "tile", "none"):
        raise ValueError(f"standardize (--standardize) {standardize!r} unknown; use image, tile or none.")
    exogenous = list(exogenous or [])
    try:
        exo_idx = exogenous_indices(exogenous, len(DESCRIPTORS))
    except ValueError as err:
        raise ValueError(f"exogenous (--exogenous): {err}") from None
    if len(set(exo_idx)) >= len(DESCRIPTORS):
        raise ValueError(f"exogenous (--exogenous) lists all {len(DESCRIPTORS)} descriptors, so no edge can point "
                         "into any of them and there is nothing to estimate; leave out the ones that may have causes "
                         "(the default is I14,I5).")
    cells = canonical(validate(cells))  # results depend on the cells' content, not their order
    declared, detect = _derived_option(derived)
    if len(set(exo_idx) | {DESCRIPTORS.index(v) for v in declared}) >= len(DESCRIPTORS):
        raise ValueError(f"every descriptor is exogenous ({exogenous}) or derived ({declared}): there is no edge to "
                         "estimate; make fewer descriptors exogenous or derived.")
    from causalcrystal.discovery import standardize as _standardize

    _standardize(cells, standardize, declared)  # constant or already-standardised columns: refused before --out is touched
    eff_min = tile_min_cells(tile_size, min_cells)
    tiles = run_tiles(cells, tile_size, stride, eff_min)
    settings = {"tile_size": tile_size, "stride": stride, "min_cells": min_cells, "n_bootstrap": n_bootstrap,
                "image_bootstrap": image_bootstrap, "exogenous": exogenous, "standardize": standardize,
                "spec": spec.to_dict(), "seed": seed, "n_orders": int(n_orders),
                "derived": derived if isinstance(derived, str) else list(derived),
                "n_cells": int(cells.sizes["cell"]), "source": safe_name(cells.attrs.get("source", "")),
                # the data's content, so a partial run never resumes on changed input files
                "input_sha256": data_fingerprint(cells),
                # the descriptors' units: B_raw is in effect units per cause unit, and the
                # concentration model's amplitude priors are in physical units (checked there)
                "units": {v: str(cells[v].attrs.get("units", "")) for v in DESCRIPTORS}}
    left_out = excluded_images(cells)
    if left_out:  # only when used: the settings of runs without it stay as they were (resume compares them)
        settings["excluded_images"] = left_out
    return RunPlan(cells, tiles, spec, settings, declared, detect, eff_min, exogenous, standardize, int(n_bootstrap),
                   int(image_bootstrap), int(n_orders), int(seed), derived)


def _discovery_phase(job: Job, plan: RunPlan, scheduler, workers, progress, log) -> tuple[xr.Dataset, xr.Dataset]:
    """LiNGAM per image and per tile, saved as ``discovery.nc`` (or read back on a resume)."""
    from causalcrystal import discovery

    dpath = job.out_dir / "discovery.nc"
    if dpath.exists():
        disc = job.load_part(dpath, lambda p: xr.load_dataset(p, engine="h5netcdf"))
        disc_images = job.load_part(dpath, lambda p: xr.load_dataset(p, engine="h5netcdf", group="images"))
        return disc, disc_images
    cells, tiles = plan.cells, plan.tiles
    left_out = plan.settings.get("excluded_images", [])
    if left_out:
        log(f"left out of the inputs (--exclude-image): {', '.join(display_label(v) for v in left_out)}")
    log(f"discovery: {tiles.sizes['tile']} tiles, bootstrap x{plan.n_bootstrap}; "
        f"{len(set(cells['image'].values.tolist()))} images, bootstrap x{plan.image_bootstrap}")
    executor = get_executor(scheduler, workers)
    try:
        disc_images = discovery.discover(cells, image_tiles(cells), n_bootstrap=plan.image_bootstrap,
                                         exogenous=plan.exogenous, standardize=plan.standardize, seed=plan.seed,
                                         executor=executor, progress=progress, derived=plan.declared,
                                         detect_derived=plan.detect, min_cells=plan.min_cells)
        # a descriptor derived in one image is derived in all: one meaning of B across the run
        run_derived = [v for v, d in zip(DESCRIPTORS, disc_images["derived"].values.any(0)) if d]
        # keep at least as many candidates as the posterior mixes (``--orders 10`` used to be
        # capped silently at the 5 stored)
        disc = discovery.discover(cells, tiles, n_bootstrap=plan.n_bootstrap, exogenous=plan.exogenous,
                                  standardize=plan.standardize, seed=plan.seed + 1, executor=executor,
                                  progress=progress, derived=run_derived, detect_derived=plan.detect,
                                  max_candidates=max(5, plan.n_orders), min_cells=plan.min_cells)
    finally:
        executor.close()
    status = [str(s) for s in disc["status"].values]
    if not any(s == "ok" for s in status):
        reasons = {}
        for s in status:
            reasons[s] = reasons.get(s, 0) + 1
        top = "; ".join(f"{n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])[:3])
        # nothing worth resuming was made: leave only the manifest, which a corrected command replaces
        raise ValueError(f"no tile can be fitted ({top}); use a larger --tile-size, a lower --min-cells (>= "
                         f"{MIN_CELLS_FLOOR}) or clean the input (see `causalcrystal inspect`).")
    _report_derived(cells, disc_images, disc, plan.derived, log)
    for text in discovery.coarse_descriptors(cells, skip=plan.declared):   # declared derived: already out
        log("WARNING: " + text)
    # the cells the run was made from (canonical order): plots over the image, and re-analysis
    # without the input files
    from causalcrystal.io import write_netcdf

    with job.output("cells.nc") as tmp:
        write_netcdf(cells, tmp, overwrite=True)
    with job.output("discovery.nc") as tmp:
        disc.to_netcdf(tmp, engine="h5netcdf")
        disc_images.to_netcdf(tmp, engine="h5netcdf", group="images", mode="a")
    return disc, disc_images


def _tile_path(tile_dir: Path, k: int) -> Path:
    return tile_dir / f"tile_{k:05d}.npz"


def _sampling_phase(job: Job, plan: RunPlan, disc, disc_images, scheduler, workers, progress, stop_after, log):
    """One posterior per fittable tile, each saved to ``tiles/tile_NNNNN.npz`` as it arrives."""
    from causalcrystal import discovery

    priors = tile_order_priors(disc, disc_images, plan.spec, plan.n_orders, exogenous=plan.exogenous)
    tile_dir = job.work_dir
    fittable = [k for k, prior in enumerate(priors) if prior is not None]
    todo, reused = job.pending(fittable, lambda k: _tile_path(tile_dir, k))
    if stop_after is not None:
        todo = todo[: max(0, int(stop_after))]
    if reused:
        log(f"resuming: {reused} finished tile(s) kept, {len(todo)} to sample")
    std_cells = discovery.standardize(plan.cells, plan.standardize, discovery.declared_derived(disc))

    def tasks(executor):
        # One sampler thread per core in all (2 local workers on 2 cores: one thread each; Dask
        # workers run one task per thread), so chains never oversubscribe the cores. Measured on
        # 2 cores: the same throughput as 2 threads per worker (98 s vs 97 s for 108 tiles), but
        # it keeps a multi-threaded Dask worker from running threads x chains sampler threads.
        threads = 1 if scheduler else max(1, (os.cpu_count() or 1) // executor.workers)
        for k in todo:
            der = discovery.tile_derived(disc, k)
            X = discovery.tile_matrix(std_cells, tile_members(plan.tiles, k), plan.standardize, der)
            active = ~der if "derived" in disc else None
            yield TileTask(k, X, priors[k], plan.spec, tile_seed(plan.seed, k), threads, active)

    def save(result):
        k, arrays = result
        with job.output(Path(WORK) / f"tile_{k:05d}.npz") as tmp:
            np.savez(tmp, **arrays)
        return f"(tile {k})"

    job.execute(_sample_task, tasks, save, total=len(todo), label="sampling tiles", scheduler=scheduler,
                workers=workers, progress=progress)
    done = [k for k in fittable if _tile_path(tile_dir, k).exists()]
    return priors, done, {"sampled": len(todo), "reused": reused}


def _write_phase(job: Job, plan: RunPlan, disc, priors, done, progress, keep_loglik: bool = False,
                 lossless: bool = False):
    """``posterior.nc`` then ``summary.csv``, each atomically (the finished marker comes after)."""
    from causalcrystal import discovery

    std_cells = discovery.standardize(plan.cells, plan.standardize, discovery.declared_derived(disc))
    with job.output("posterior.nc") as tmp:
        summary = write_posterior(tmp, plan.tiles, disc, priors, done, job.work_dir, plan.spec, plan.standardize,
                                  progress, constants=tile_constants(plan.cells, std_cells, plan.tiles, done,
                                                                     plan.standardize), loglik=keep_loglik,
                                  lossless=lossless)
    with job.output("summary.csv") as tmp:
        summary.to_csv(tmp, index=False)
    return summary


#: below this many cells per tile the normality test behind ``direction_identified`` has little
#: power (BH over a tile at 64 cells: 76 % of edges with Laplace noise called identified, 51 %
#: with Student-t(5); at 256 cells 98-100 %; ``benchmarks/bench_direction_rule.py``)
LOW_POWER_CELLS = 128


def _warn_identifiability(summary, log, n_cells=None) -> None:
    """Say which well-supported edges have no identified direction (both residuals Gaussian-looking).

    Per edge, not averaged over a tile: a tile with a few identified edges used to hide its
    reversed, Gaussian-noise edges at inclusion 0.99 behind a tile-level mean. ``n_cells`` (tile,):
    cells per tile; when the tiles of those edges are small the warning says so rather than
    "the data look Gaussian" (the test cannot tell at that size)."""
    if summary.empty or "direction_identified" not in summary:
        return
    # an edge a reader would take as found: included, or a 90 % interval clear of 0 (a coefficient
    # in the spike can still be clear of 0: a bughunt case had two such edges on all-Gaussian data)
    found = summary["inclusion_prob"] >= 0.5
    if {"hdi_5%", "hdi_95%"} <= set(summary.columns):
        found |= (summary["hdi_5%"] > 0) | (summary["hdi_95%"] < 0)
    strong = summary[found]
    weak = strong[~strong["direction_identified"].astype(bool)]
    if weak.empty:
        return
    top = weak.sort_values("inclusion_prob", ascending=False).head(3)
    examples = "; ".join(f"tile {t} {e}<-{c} (inclusion {p:.2f})"
                         for t, e, c, p in zip(top["tile"], top["effect"], top["cause"], top["inclusion_prob"]))
    share = len(weak) / len(strong)
    small = None
    if n_cells is not None:
        median = float(np.median(np.asarray(n_cells)[weak["tile"].unique()]))
        small = median if median < LOW_POWER_CELLS else None
    if small is not None:
        why = (f" Their tiles have a median of {small:g} cells, where the test has little power (at 64 cells it "
               "calls 76 % of edges with Laplace noise identified, 51 % with Student-t(5); benchmarks/RESULTS.md): small "
               "tiles, not necessarily Gaussian data; a larger --tile-size can identify what these cannot.")
    else:
        why = " This is most of the run: the data look Gaussian." if share > 0.5 else ""
    log(f"WARNING: {len(weak)} of {len(strong)} edge(s) with inclusion probability >= 0.5 or a 90 % interval "
        "excluding 0 join two variables whose "
        f"residuals look Gaussian (Shapiro-Wilk, Benjamini-Hochberg over the tile's variables at {GAUSS_ALPHA}): their direction is not identified by the data "
        "(LiNGAM needs non-Gaussian noise), so read them as association, not as which causes which; e.g. " + examples
        + ". See 'direction_identified' in summary.csv." + why)


def _hdi(x: np.ndarray, prob: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Narrowest interval holding ``prob`` of the draws along axis 0 (vectorised)."""
    s = np.sort(x, axis=0)
    n = s.shape[0]
    k = int(np.floor(prob * n))
    width = s[k:] - s[: n - k]
    lo = np.argmin(width, axis=0)
    idx = np.indices(lo.shape)
    return s[(lo, *idx)], s[(lo + k, *idx)]


#: Variables of ``posterior.nc`` written tile by tile: group, name, dims after (chain, draw, tile), dtype.
_STREAMED = (
    ("posterior", "B", ("effect", "cause"), "f4"),
    # float32, not float16: a float16 array's xarray mean accumulates in float16 (an error of 0.055
    # in an inclusion probability, measured), a trap for every user of the file
    ("posterior", "edge_inclusion", ("effect", "cause"), "f4"),
    ("posterior", "c", ("variable",), "f4"),
    ("posterior", "sigma", ("variable",), "f4"),
    ("posterior", "noise_shape", ("variable",), "f4"),
    ("posterior", "nu", (), "f4"),
    ("posterior", "noise_weight", ("variable", "component"), "f4"),
    ("posterior", "noise_loc", ("variable", "component"), "f4"),
    ("posterior", "noise_var", ("variable", "component"), "f4"),
    ("log_likelihood", "z", ("member",), "f4"),
    ("sample_stats", "diverging", (), "bool"),
    ("sample_stats", "tree_depth", (), "i8"),
    ("sample_stats", "step_size", (), "f8"),
    # NUTS only; NaN for a tile whose draws mix causal orders (sem.mix_orders)
    ("sample_stats", "energy", (), "f8"),
)
#: gzip level of posterior.nc's draws (1-9; 4: most of level 9's saving at a fraction of its time).
COMPRESSION = 4
#: The posterior draws in ``posterior.nc`` are rounded to a grid of 2**-QUANTISE_BITS of each
#: quantity's posterior s.d. in its tile (unless ``lossless``): see :func:`quantise_draws`.
QUANTISE_BITS = 12


def quantise_draws(a: np.ndarray, bits: int = QUANTISE_BITS) -> np.ndarray:
    """Round one tile's draws ``a`` (chain, draw, ...) to multiples of ``q = 2**(floor(log2 sd) - bits)``,
    ``sd`` each quantity's s.d. over (chain, draw); quantities with s.d. 0 or NaN (exact zeros on
    forbidden edges) are kept as they are, and so is a value that would round to exactly 0 without
    being 0 (a mixture weight or variance must stay positive). Returns float32.

    Why: a draw's float32 mantissa carries ~7 digits, most of them Monte Carlo noise; zeroing the
    ones below ``sd / 2**bits`` lets gzip + shuffle store the draws in ~29 % less space (measured,
    ``benchmarks/RESULTS.md``). The error of every draw is <= q / 2 <= sd / 2**(bits + 1) (0.012 %
    of an s.d. at 12 bits), 400x below the Monte Carlo error of a mean at ESS 400 (sd / 20); the
    added variance, q**2 / 12, is < 1e-8 sd**2. Functions of several correlated quantities lose
    more (quantities are rounded independently): a tile's pointwise log-likelihood recomputed from
    rounded draws moved by up to ~1 % of its spread over the draws, its elpd_loo by < 1e-3 of its
    s.e. (measured, ``tests/test_engine.py``). 10 bits saved 36 % at 4x those errors. Bit rounding of this kind is what climate archives
    use for the same reason (Kloewer et al. 2021, Nature Computational Science 1, 713, "Compressing
    atmospheric data into its real information content"); unlike their relative rounding, the
    grid here is set by the posterior's spread, not the value's magnitude, so a precise quantity
    far from zero (an intercept in raw units) keeps its digits.
    """
    a = np.asarray(a, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        sd = np.nanstd(a.astype(np.float64), axis=(0, 1), keepdims=True) if a.size else np.zeros(1)
    ok = np.isfinite(sd) & (sd > 0)
    q = np.where(ok, np.exp2(np.floor(np.log2(np.where(ok, sd, 1.0))) - bits), 1.0)
    out = np.where(ok, np.round(a / q) * q, a)
    # a value within q / 2 of 0 keeps its own digits: rounding it to 0 would change its support (a
    # mixture weight or variance of exactly 0 makes log-densities -inf), and costs almost nothing
    out = np.where((out == 0) & (a != 0), a, out)
    return out.astype(np.float32)
#: npz key of each streamed variable, where it differs from the variable name.
_NPZ_KEY = {"noise_shape": "shape", "z": "loglik"}
_TILE_COORDS = ("image", "row0", "col0", "size", "n_cells")


def _read_npz(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {key: z[key] for key in z.files}


def _load_tile(tile_dir: Path, k: int) -> dict:
    """A tile's saved draws; :class:`~causalcrystal.jobs.DamagedPartError` naming the file (which
    is removed, so the same command re-samples that tile) when it cannot be read."""
    return load_part(_tile_path(tile_dir, k), _read_npz, "run")


def tile_constants(cells: xr.Dataset, std_cells: xr.Dataset, tiles: xr.Dataset, done, mode: str | None = None
                   ) -> xr.Dataset:
    """Per tile: the Sm fraction, the raw descriptor means and the scales that ``B`` is in.

    ``B_raw[i, j] = B[i, j] * scale_i / scale_j`` converts a tile's coefficients to raw units;
    ``tile_mean`` (raw) gives, e.g., the sign of the tile's spontaneous polarisation, which the
    concentration model needs to orient strain <- polarisation couplings across 180-degree walls.
    ``std_cells`` is the standardised table the run sampled (its attrs record the mode and scales).
    """
    X = np.column_stack([cells[v].values.astype(np.float64) for v in DESCRIPTORS])
    y = cells["sm_fraction"].values
    # the run's own mode: an input that says it is standardised already, run with mode "none", has
    # no per-image scales (its B is in the input's units)
    standardize = mode or std_cells.attrs.get("standardize", "none")
    sds = json.loads(std_cells.attrs.get("standardize_sd", "{}"))
    mean, scale, frac = [], [], []
    for k in done:
        mem = tile_members(tiles, k)
        Xt = X[mem]
        mean.append(Xt.mean(0))
        frac.append(float(y[mem][0]))
        if standardize == "image":
            img = str(tiles["image"].values[k])
            scale.append([sds[img][v] for v in DESCRIPTORS])
        elif standardize == "tile":
            scale.append(Xt.std(0))
        else:
            scale.append(np.ones(len(DESCRIPTORS)))
    return xr.Dataset({"tile_mean": (("tile", "variable"), np.asarray(mean)),
                       "scale": (("tile", "variable"), np.asarray(scale, dtype=np.float64))},
                      coords={"tile": np.asarray(done), "variable": list(DESCRIPTORS),
                              "sm_fraction": ("tile", np.asarray(frac))})


def write_posterior(path: Path, tiles, disc, priors, done, tile_dir: Path, spec: ModelSpec, standardize: str,
                    progress: bool = False, constants: xr.Dataset | None = None, loglik: bool = True,
                    compression: int | None = None, lossless: bool = False):
    """Write ``posterior.nc`` (ArviZ InferenceData netCDF) and return the summary table.

    Streams: the groups' coordinates and attributes are written by xarray, then every tile's
    draws are copied from its npz into the file one tile at a time (h5netcdf, chunked per tile),
    so memory stays at one tile's draws however many tiles the run has (holding them all needed
    ~4 MB per tile, 8 GB for a public-size series). The summary rows are computed per tile too,
    from the draws at full precision. The posterior group's draws are stored rounded to 1/4096 of
    their s.d. (:func:`quantise_draws`) unless ``lossless``; the log-likelihood and sample stats are
    stored as they are.
    """
    import h5netcdf
    import pandas as pd

    first = _load_tile(tile_dir, done[0])
    C, D = first["B"].shape[:2]
    T = len(done)
    width = max(int(n) for n in tiles["n_cells"].values[done])
    present = {name for group, name, _, _ in _STREAMED if _NPZ_KEY.get(name, name) in first
               and (loglik or group != "log_likelihood")}
    sizes = {"chain": C, "draw": D, "tile": T, "effect": len(DESCRIPTORS), "cause": len(DESCRIPTORS),
             "variable": len(DESCRIPTORS), "member": width}
    if "noise_weight" in first:
        sizes["component"] = first["noise_weight"].shape[-1]
    if constants is not None and "candidate_order" in first:
        constants = constants.merge(order_constants(tile_dir, done))
    # which coefficients any of the tile's orders allows: the others are stored as exact zeros, so
    # summaries (causalcrystal.runs.summary) and diagnostics must skip them (az.summary does not know)
    allowed = xr.DataArray(np.stack([_allowed(priors[k]) for k in done]), dims=("tile", "effect", "cause"),
                           coords={"tile": np.asarray(done), "effect": list(DESCRIPTORS), "cause": list(DESCRIPTORS)},
                           attrs={"long_name": "coefficient B[effect, cause] allowed by at least one of the tile's "
                                               "causal orders (False: fixed at 0, not estimated)"})
    if constants is not None and "allowed_weight" in constants:
        # an order the data gave weight 0 contributes no draws: its edges are not estimated either
        allowed = allowed & (constants["allowed_weight"] > 0)
        allowed.attrs["long_name"] = ("coefficient B[effect, cause] allowed by at least one of the tile's causal "
                                      "orders with weight > 0 (False: fixed at 0, not estimated)")
    constants = allowed.to_dataset(name="allowed") if constants is None else constants.assign(allowed=allowed)
    base = {"chain": np.arange(C), "draw": np.arange(D), "tile": np.asarray(done)}
    tile_coords = {name: ("tile", tiles[name].values[done]) for name in _TILE_COORDS if name in tiles.coords}
    if constants is not None:
        tile_coords["sm_fraction"] = ("tile", constants["sm_fraction"].values)
    post = xr.Dataset(coords={**base, "effect": list(DESCRIPTORS), "cause": list(DESCRIPTORS),
                              "variable": list(DESCRIPTORS), **tile_coords,
                              **({"component": np.arange(sizes["component"])} if "component" in sizes else {})})
    post.attrs.update(standardize=standardize, units=("standardised per " + standardize) if standardize != "none"
                      else "raw descriptor units", model=json.dumps(spec.to_dict()),
                      causalcrystal=__version__, B_indexing="B[effect, cause]: effect <- cause")
    post.attrs["draw_precision"] = (
        "float32 as sampled (lossless)" if lossless else
        f"each quantity's draws rounded to multiples of 2**(floor(log2 sd) - {QUANTISE_BITS}) of its posterior s.d. "
        f"in the tile (error <= sd / {2 ** (QUANTISE_BITS + 1)}; causalcrystal.engine.quantise_draws); "
        "summary.csv was computed before rounding; run with --lossless to store them as sampled")
    post.attrs["log_likelihood"] = (
        "stored per tile in the log_likelihood group; use causalcrystal.tile_loo(run, tile), not az.loo on the file"
        if loglik else "not stored (run with --keep-loglik / keep_loglik=True to store it); "
        "causalcrystal.tile_loo(run, tile) recomputes a tile's from the draws and cells.nc")
    loglik_group = xr.Dataset(coords={**base, "member": np.arange(width)})
    loglik_group.attrs["note"] = (
        "pointwise log-likelihood per tile: member indexes the tile's cells (NaN beyond the tile's n_cells), and "
        "overlapping tiles share cells, so arviz.loo on the whole file pools tiles and returns NaN; use "
        "causalcrystal.runs.tile_loo(run, tile) for one tile's PSIS-LOO")
    groups = {"posterior": post, **({"log_likelihood": loglik_group} if loglik else {}),
              "sample_stats": xr.Dataset(coords=base), "constant_data": constants}
    standard = _standard_attrs(spec)
    for n, (name, ds) in enumerate(groups.items()):  # what InferenceData.to_netcdf writes, minus the draws
        ds.attrs = {**standard, **ds.attrs}
        ds.to_netcdf(path, engine="h5netcdf", group=name, mode="w" if n == 0 else "a")

    rows = []
    bar = Progress(T, "writing posterior.nc", enabled=progress)
    with h5netcdf.File(path, "a") as f:
        # file-level attrs (InferenceData.attrs): what an ArviZ user must know before az.summary / az.loo
        f.attrs["causalcrystal"] = __version__
        f.attrs["how_to_read"] = (
            "one posterior per tile (dim tile); B is stored as exact zeros on the edges a tile's causal orders forbid "
            "(constant_data.allowed), so az.summary on the file lists them with r_hat NaN: use "
            "causalcrystal.summary(run). Tiles overlap (shared cells) and log_likelihood is NaN-padded, so az.loo on "
            "the whole file is wrong even when it returns a number: use causalcrystal.tile_loo(run, tile). "
            + post.attrs["log_likelihood"])
        out = {}
        for group, name, dims, dtype in _STREAMED:
            if name not in present:
                continue
            shape = tuple(sizes[d] for d in dims)
            kw = {"fillvalue": np.nan} if dtype.startswith("f") else {}
            # lossless gzip with byte shuffling, per tile chunk: B and edge_inclusion are exact zeros
            # on every edge the order forbids (~half of them); measured on the demo series it takes
            # posterior.nc from 0.89 to ~0.5 MB per tile (benchmarks/RESULTS.md)
            level = COMPRESSION if compression is None else int(compression)
            if level > 0:
                kw.update(compression="gzip", compression_opts=level, shuffle=True)
            v = f.groups[group].create_variable(name, ("chain", "draw", "tile", *dims),
                                         dtype=np.int8 if dtype == "bool" else dtype,
                                         chunks=(C, D, 1, *shape), **kw)
            if dtype == "bool":
                v.attrs["dtype"] = "bool"  # how xarray marks a boolean stored as int8
            if group == "posterior":
                v.attrs["coordinates"] = " ".join(n for n in post.coords if post[n].dims == ("tile",) and n != "tile")
            out[name] = v
        rounded = set() if lossless else {name for group, name, _, _ in _STREAMED if group == "posterior"}
        try:
            for t, k in enumerate(done):
                arrays = first if t == 0 else _load_tile(tile_dir, k)
                for name, v in out.items():
                    a = arrays[_NPZ_KEY.get(name, name)]
                    if name == "z":
                        v[:, :, t, : a.shape[2]] = a
                    elif name in rounded:
                        v[:, :, t] = quantise_draws(a)
                    else:
                        v[:, :, t] = a.astype(np.int8) if v.dtype == np.int8 else a
                rows += _summary_rows(k, arrays, tiles, disc, priors[k], spec)
                bar.update()
        finally:
            bar.close()
    return pd.DataFrame(rows)


def _allowed(prior) -> np.ndarray:
    """``[effect, cause]`` bool: allowed by any of a tile's DAG priors (one per candidate order)."""
    priors = prior if isinstance(prior, (list, tuple)) else [prior]
    return np.logical_or.reduce([np.asarray(p.allowed, dtype=bool) for p in priors])


def _standard_attrs(spec: ModelSpec) -> dict:
    """The attributes ArviZ writes on every InferenceData group (``arviz.data.base.make_attrs``)
    and the sampler that drew the posterior."""
    import importlib.metadata as md

    import arviz as az

    library = {"gibbs": "causalcrystal.gibbs", "nutpie": "nutpie", "pymc": "pymc"}[spec.sampler.name]
    dist = "causalcrystal" if library.startswith("causalcrystal") else library
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = __version__ if dist == "causalcrystal" else "unknown"
    return {"created_at": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()), "arviz_version": az.__version__,
            "inference_library": library, "inference_library_version": version,
            "modeling_interface": "pymc", "modeling_interface_version": md.version("pymc")}


def order_constants(tile_dir: Path, done) -> xr.Dataset:
    """Per tile, its candidate causal orders and what the data said of each (``constant_data``):
    ``candidate_order`` (tile, candidate, position; -1 padding), ``order_weight``, ``order_elpd``,
    ``order_se``, ``order_p_loo``, ``order_pareto_k`` (tile, candidate; NaN padding) and
    ``allowed_weight`` (tile, effect, cause): the weight of the orders that allow each edge."""
    rows = []
    for k in done:
        z = _load_tile(tile_dir, k)
        rows.append({key: z[key] for key in ORDER_KEYS if key in z})
    width = max(r["candidate_order"].shape[0] for r in rows)
    V = len(DESCRIPTORS)
    order = np.full((len(rows), width, V), -1, dtype=np.int64)
    per = {key: np.full((len(rows), width), np.nan) for key in ORDER_KEYS if key.startswith("order_")}
    for t, r in enumerate(rows):
        n = r["candidate_order"].shape[0]
        order[t, :n] = r["candidate_order"]
        for key in per:
            per[key][t, :n] = r[key]
    ds = xr.Dataset({"candidate_order": (("tile", "candidate", "position"), order),
                     "allowed_weight": (("tile", "effect", "cause"), np.stack([r["allowed_weight"] for r in rows])),
                     **{key: (("tile", "candidate"), v) for key, v in per.items()}},
                    coords={"tile": np.asarray(done), "candidate": np.arange(width), "position": np.arange(V),
                            "effect": list(DESCRIPTORS), "cause": list(DESCRIPTORS)})
    ds["candidate_order"].attrs["long_name"] = "causal orders the tile's posterior averages over (descriptor indices)"
    ds["order_weight"].attrs["long_name"] = "pseudo-BMA+ weight of each order (PSIS-LOO over the tile's cells)"
    ds["allowed_weight"].attrs["long_name"] = "weight of the orders that allow the edge effect <- cause"
    return ds


def _summary_rows(k: int, arrays: dict, tiles, disc, prior, spec: ModelSpec) -> list[dict]:
    """One summary row per edge of tile ``k`` that any of its orders allows (statistics of the
    float32 draws as stored). ``prior``: the tile's DAG prior(s)."""
    B = arrays["B"].astype(np.float32)
    flat = B.reshape(-1, *B.shape[2:])
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    lo, hi = _hdi(flat, 0.9)
    pincl = arrays["edge_inclusion"].astype(np.float32).reshape(flat.shape).mean(0)
    # the sign's posterior probability: where the candidate orders disagree on an edge's sign the
    # 90 % HDI spans 0 next to an inclusion of 1, and only these say that the sign is what is uncertain
    p_pos, p_neg = (flat > 0).mean(0), (flat < 0).mean(0)
    div = int(arrays["diverging"].sum())
    rh, ess = arrays["r_hat"], arrays["ess_bulk"]
    priors = prior if isinstance(prior, list) else [prior]
    if "allowed_weight" in arrays:
        p_allowed = arrays["allowed_weight"]
        allowed = p_allowed > 0
    else:
        allowed = np.any([pr.allowed for pr in priors], axis=0)
        p_allowed = allowed.astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an edge only zero-weight orders allow has no r_hat
        # (initial values: a tile whose orders allow no edge has no coefficient to check)
        sampler_flag = bool(np.nanmax(rh[allowed], initial=1.0) > RHAT_MAX
                            or np.nanmin(ess[allowed], initial=np.inf) < spec.sampler.target_ess or div > 0)
    nan = np.full(len(DESCRIPTORS), np.nan)
    pit_p, gauss_p = arrays.get("pit_p", nan), arrays.get("gauss_p", nan)
    misfit = bool(np.nanmin(pit_p, initial=1.0) < PIT_ALPHA)
    # the tile's variables tested together (BH): per-variable tests at 5 % called some direction
    # identified in ~1/3 of all-Gaussian tiles
    nongauss = non_gaussian(gauss_p)
    flagged = sampler_flag or misfit
    reason = ";".join(r for r, on in (("sampler", sampler_flag), ("noise misfit", misfit)) if on)
    where = {"tile": k, "image": str(tiles["image"].values[k]), "row0": int(tiles["row0"].values[k]),
             "col0": int(tiles["col0"].values[k])}
    return [{**where, "effect": DESCRIPTORS[i], "cause": DESCRIPTORS[j], "mean": mean[i, j], "sd": sd[i, j],
             "hdi_5%": lo[i, j], "hdi_95%": hi[i, j], "p_positive": p_pos[i, j], "p_negative": p_neg[i, j],
             "inclusion_prob": pincl[i, j], "p_allowed": p_allowed[i, j],
             "lingam_prob": float(disc["probability"].values[k, i, j]), "r_hat": rh[i, j],
             "ess_bulk": ess[i, j], "divergences": div,
             "restarted_chains": int(arrays["restarted_chains"]) if "restarted_chains" in arrays else 0,
             "pit_p_effect": pit_p[i], "gauss_p_effect": gauss_p[i],
             "gauss_p_cause": gauss_p[j],
             # neither noise declared non-Gaussian: LiNGAM's identifiability fails for this direction
             "direction_identified": bool(nongauss[i] or nongauss[j]),
             "noise_misfit": misfit, "flagged": flagged, "flag_reason": reason}
            for i, j in zip(*np.nonzero(allowed))]
