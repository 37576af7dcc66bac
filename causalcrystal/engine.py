"""Run the whole per-tile pipeline: discovery -> DAG priors -> one Bayesian SEM per tile -> files.

``run_pipeline(cells, out_dir, ...)`` writes into ``out_dir``:

``discovery.nc``
    LiNGAM per tile (adjacency, bootstrap probabilities, orders, candidate DAGs), and the
    image-level discovery in the netCDF group ``images``.
``tiles/tile_NNNNN.npz``
    each tile's posterior as soon as it is sampled (plain arrays, loaded without pickle). This is
    what makes a run resumable: re-running on a partly finished folder keeps finished tiles and
    samples only the rest. Every tile's seed derives from the run seed and the tile index, so an
    interrupted-and-resumed run gives the same numbers as an uninterrupted one.
``posterior.nc``
    ArviZ InferenceData: posterior ``B`` and ``edge_inclusion`` (chain, draw, tile, effect, cause),
    ``c``, ``sigma`` (chain, draw, tile, variable); ``log_likelihood`` ``z`` (chain, draw, tile,
    member; NaN padding); ``sample_stats`` (diverging, tree_depth, step_size); the units of ``B``
    in ``posterior.attrs['standardize']``.
``summary.csv``
    one row per tile x allowed edge with posterior mean, sd, 90 % HDI, inclusion probability,
    LiNGAM probability, r_hat, ess_bulk, divergences and a ``flagged`` column.
``manifest.json``
    the settings; a resume with different settings is refused.

Each overlapping tile is its own model (a cell enters any one likelihood once). Per-tile work goes
through :mod:`causalcrystal.executor` (in-process, local processes, or Dask).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal import __version__
from causalcrystal.cells import DESCRIPTORS, validate
from causalcrystal.executor import Progress, get_executor
from causalcrystal.priors import DagPrior, dag_prior, forbidden_into, inclusion_weights
from causalcrystal.sem import ModelSpec, load_spec
from causalcrystal.tiling import image_tiles, make_tiles, tile_members

OUTPUTS = ("discovery.nc", "posterior.nc", "summary.csv", "manifest.json", "tiles")


class RunExistsError(FileExistsError):
    """The output folder already holds a finished run (or one with other settings)."""


@dataclass
class TileTask:
    """Everything a worker needs to sample one tile (picklable, no open files)."""

    index: int
    X: np.ndarray
    prior: DagPrior
    spec: ModelSpec
    seed: int


def _sample_task(task: TileTask) -> tuple[int, dict]:
    from causalcrystal.sem import sample_tile

    return task.index, sample_tile(task.X, task.prior, task.spec, task.seed)


def tile_seed(seed: int, index: int) -> int:
    """The sampler seed of tile ``index`` (independent of execution order and executor)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _atomic_savez(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _prepare_out(out_dir: Path, manifest: dict, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RunExistsError(f"{out_dir} exists and is not a folder; choose another --out.")
    mpath = out_dir / "manifest.json"
    if out_dir.exists() and overwrite:
        # Remove only what a run writes; anything else the user put there stays.
        for name in OUTPUTS:
            p = out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif mpath.exists():
        old = json.loads(mpath.read_text())
        if (out_dir / "posterior.nc").exists():
            raise RunExistsError(f"{out_dir} already holds a finished run; pass --overwrite to replace it "
                                 "or choose another --out.")
        if old.get("settings") != manifest["settings"]:
            diff = sorted(k for k in set(old.get("settings", {})) | set(manifest["settings"])
                          if old.get("settings", {}).get(k) != manifest["settings"].get(k))
            raise RunExistsError(f"{out_dir} holds a partial run with other settings ({', '.join(diff)}); "
                                 "pass --overwrite to start again or choose another --out.")
    elif out_dir.exists() and any(out_dir.iterdir()):
        clash = [n for n in OUTPUTS if (out_dir / n).exists()]
        if clash:
            raise RunExistsError(f"{out_dir} already has {clash} but no manifest; pass --overwrite or choose "
                                 "another --out.")
    (out_dir / "tiles").mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def tile_priors(disc: xr.Dataset, disc_images: xr.Dataset, spec: ModelSpec, candidate: int = 0,
                exogenous=None) -> list:
    """The DAG prior of every tile: the order of candidate DAG ``candidate`` (most frequent first;
    the full-data LiNGAM order where the bootstrap gave none) and the inclusion weights combining
    the tile's bootstrap probabilities with its image's (see :mod:`causalcrystal.priors`)."""
    image_prob = {str(lab): disc_images["probability"].values[k]
                  for k, lab in enumerate(disc_images["image"].values)}
    n_boot = int(disc.attrs.get("n_bootstrap", 0))
    if exogenous is None:
        exogenous = json.loads(disc.attrs.get("exogenous", "[]"))
    forbidden = forbidden_into([DESCRIPTORS.index(v) for v in exogenous], len(DESCRIPTORS))
    priors = []
    for k in range(disc.sizes["tile"]):
        if str(disc["status"].values[k]) != "ok":
            priors.append(None)
            continue
        order = disc["order"].values[k]
        if "candidate_order" in disc and disc["candidate_frequency"].values[k, candidate] > 0:
            order = disc["candidate_order"].values[k, candidate]
        w = inclusion_weights(disc["probability"].values[k], image_prob.get(str(disc["image"].values[k])),
                              max(n_boot, 1), spec.prior)
        priors.append(dag_prior(order, w, forbidden))
    return priors


def run_pipeline(
    cells: xr.Dataset,
    out_dir: str | Path,
    *,
    tile_size: int = 16,
    stride: int | None = None,
    min_cells: int | None = None,
    n_bootstrap: int = 20,
    image_bootstrap: int = 100,
    exogenous=("I14", "I5"),
    standardize: str = "image",
    spec: ModelSpec | str = "laplace",
    seed: int = 0,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log=None,
) -> dict:
    """Discovery, priors and per-tile posteriors for a cell table; write the outputs to ``out_dir``.

    ``stop_after`` samples at most that many new tiles and returns (a partial, resumable run).
    Returns a dict with the output paths and counts (``sampled``, ``reused``, ``flagged``).
    """
    from causalcrystal import discovery

    log = log or (lambda msg: print(msg, file=sys.stderr))
    spec = load_spec(spec) if isinstance(spec, str) else spec
    validate(cells)
    out_dir = Path(out_dir)
    settings = {"tile_size": tile_size, "stride": stride, "min_cells": min_cells, "n_bootstrap": n_bootstrap,
                "image_bootstrap": image_bootstrap, "exogenous": list(exogenous or []),
                "standardize": standardize, "spec": spec.to_dict(), "seed": seed,
                "n_cells": int(cells.sizes["cell"]), "source": cells.attrs.get("source", "")}
    _prepare_out(out_dir, {"settings": settings, "causalcrystal": __version__}, overwrite)

    tiles = make_tiles(cells, tile_size, stride, min_cells)
    dpath = out_dir / "discovery.nc"
    if dpath.exists():
        disc = xr.load_dataset(dpath, engine="h5netcdf")
        disc_images = xr.load_dataset(dpath, engine="h5netcdf", group="images")
    else:
        log(f"discovery: {tiles.sizes['tile']} tiles, bootstrap x{n_bootstrap}; "
            f"{len(set(cells['image'].values.tolist()))} images, bootstrap x{image_bootstrap}")
        executor = get_executor(scheduler, workers)
        try:
            disc_images = discovery.discover(cells, image_tiles(cells), n_bootstrap=image_bootstrap,
                                             exogenous=exogenous, standardize=standardize, seed=seed,
                                             executor=executor, progress=progress)
            disc = discovery.discover(cells, tiles, n_bootstrap=n_bootstrap, exogenous=exogenous,
                                      standardize=standardize, seed=seed + 1, executor=executor,
                                      progress=progress)
        finally:
            executor.close()
        tmp = dpath.with_name("discovery.nc.tmp")
        disc.to_netcdf(tmp, engine="h5netcdf")
        disc_images.to_netcdf(tmp, engine="h5netcdf", group="images", mode="a")
        os.replace(tmp, dpath)

    std_cells = discovery.standardize(cells, standardize)
    priors = tile_priors(disc, disc_images, spec, exogenous=list(exogenous or []))
    tile_dir = out_dir / "tiles"
    todo, reused = [], 0
    for k, prior in enumerate(priors):
        if prior is None:
            continue
        if (tile_dir / f"tile_{k:05d}.npz").exists():
            reused += 1
            continue
        todo.append(k)
    if stop_after is not None:
        todo = todo[: max(0, int(stop_after))]
    if reused:
        log(f"resuming: {reused} finished tile(s) kept, {len(todo)} to sample")

    def tasks():
        for k in todo:
            X = discovery.tile_matrix(std_cells, tile_members(tiles, k), standardize)
            yield TileTask(k, X, priors[k], spec, tile_seed(seed, k))

    if todo:
        executor = get_executor(scheduler, workers)
        bar = Progress(len(todo), "sampling tiles", enabled=progress)
        try:
            for _, (k, result) in executor.imap(_sample_task, tasks()):
                _atomic_savez(tile_dir / f"tile_{k:05d}.npz", result)
                bar.update(note=f"(tile {k})")
        finally:
            executor.close()

    n_ok = sum(p is not None for p in priors)
    done = [k for k in range(len(priors)) if (tile_dir / f"tile_{k:05d}.npz").exists()]
    result = {"out_dir": str(out_dir), "sampled": len(todo), "reused": reused, "n_tiles": n_ok,
              "finished": len(done) == n_ok}
    if len(done) < n_ok:
        log(f"stopped with {len(done)}/{n_ok} tiles sampled; run the same command again to resume")
        return result

    idata, summary = assemble(cells, tiles, disc, priors, done, tile_dir, spec, standardize)
    tmp = out_dir / "posterior.nc.tmp"
    idata.to_netcdf(str(tmp), engine="h5netcdf")
    os.replace(tmp, out_dir / "posterior.nc")
    summary.to_csv(out_dir / "summary.csv", index=False)
    flagged = summary.loc[summary["flagged"], "tile"].unique()
    if flagged.size:
        log(f"WARNING: {flagged.size} tile(s) flagged (r_hat > 1.01, ess_bulk < {spec.sampler.target_ess:g} or "
            f"divergences): tiles {flagged[:10].tolist()}{' ...' if flagged.size > 10 else ''}; "
            "see the 'flagged' column of summary.csv")
    result.update(flagged=int(flagged.size), posterior=str(out_dir / "posterior.nc"),
                  summary=str(out_dir / "summary.csv"), discovery=str(dpath))
    log(f"wrote {out_dir}/discovery.nc, posterior.nc, summary.csv ({n_ok} tiles)")
    return result


def _hdi(x: np.ndarray, prob: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Narrowest interval holding ``prob`` of the draws along axis 0 (vectorised)."""
    s = np.sort(x, axis=0)
    n = s.shape[0]
    k = int(np.floor(prob * n))
    width = s[k:] - s[: n - k]
    lo = np.argmin(width, axis=0)
    idx = np.indices(lo.shape)
    return s[(lo, *idx)], s[(lo + k, *idx)]


def assemble(cells, tiles, disc, priors, done, tile_dir: Path, spec: ModelSpec, standardize: str):
    """Collect the per-tile draws into one InferenceData and the summary table."""
    import arviz as az
    import pandas as pd

    loaded = {k: dict(np.load(tile_dir / f"tile_{k:05d}.npz", allow_pickle=False)) for k in done}
    T = len(done)
    first = loaded[done[0]]
    C, D = first["B"].shape[:2]
    n_var = len(DESCRIPTORS)
    width = max(loaded[k]["loglik"].shape[2] for k in done)

    def stack(name, dtype=np.float32):
        return np.stack([loaded[k][name] for k in done], axis=2).astype(dtype)

    B = stack("B")
    incl = stack("edge_inclusion")
    ll = np.full((C, D, T, width), np.nan, dtype=np.float32)
    for t, k in enumerate(done):
        v = loaded[k]["loglik"]
        ll[:, :, t, : v.shape[2]] = v
    tile_coords = {name: ("tile", tiles[name].values[done]) for name in ("image", "row0", "col0", "size", "n_cells")}
    coords = {"tile": np.asarray(done), "effect": list(DESCRIPTORS), "cause": list(DESCRIPTORS),
              "variable": list(DESCRIPTORS), **tile_coords}
    post = xr.Dataset(
        {"B": (("chain", "draw", "tile", "effect", "cause"), B),
         "edge_inclusion": (("chain", "draw", "tile", "effect", "cause"), incl),
         "c": (("chain", "draw", "tile", "variable"), stack("c")),
         "sigma": (("chain", "draw", "tile", "variable"), stack("sigma"))},
        coords={"chain": np.arange(C), "draw": np.arange(D), **coords},
    )
    if "shape" in first:
        post["noise_shape"] = (("chain", "draw", "tile", "variable"), stack("shape"))
    if "nu" in first:
        post["nu"] = (("chain", "draw", "tile"), np.stack([loaded[k]["nu"] for k in done], axis=2))
    post.attrs.update(standardize=standardize, units=("standardised per " + standardize) if standardize != "none"
                      else "raw descriptor units", model=json.dumps(spec.to_dict()),
                      causalcrystal=__version__, B_indexing="B[effect, cause]: effect <- cause")
    loglik = xr.Dataset({"z": (("chain", "draw", "tile", "member"), ll)},
                        coords={"chain": np.arange(C), "draw": np.arange(D), "tile": np.asarray(done),
                                "member": np.arange(width)})
    diverging = stack("diverging", bool)
    stats = xr.Dataset(
        {"diverging": (("chain", "draw", "tile"), diverging),
         "tree_depth": (("chain", "draw", "tile"), stack("tree_depth", np.int64)),
         "step_size": (("chain", "draw", "tile"), stack("step_size", np.float64))},
        coords={"chain": np.arange(C), "draw": np.arange(D), "tile": np.asarray(done)},
    )
    idata = az.InferenceData(posterior=post, log_likelihood=loglik, sample_stats=stats)

    # summary: one row per tile x allowed edge
    flat = B.reshape(C * D, T, n_var, n_var)
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    lo, hi = _hdi(flat, 0.9)
    pincl = incl.reshape(C * D, T, n_var, n_var).mean(0)
    div = diverging.sum(axis=(0, 1))
    rows = []
    for t, k in enumerate(done):
        allowed = priors[k].allowed
        rh, ess = loaded[k]["r_hat"], loaded[k]["ess_bulk"]
        bad_tile = bool(np.nanmax(rh[allowed]) > 1.01 or np.nanmin(ess[allowed]) < spec.sampler.target_ess
                        or div[t] > 0)
        for i, j in zip(*np.nonzero(allowed)):
            rows.append({"tile": k, "image": str(tiles["image"].values[k]), "row0": int(tiles["row0"].values[k]),
                         "col0": int(tiles["col0"].values[k]), "effect": DESCRIPTORS[i], "cause": DESCRIPTORS[j],
                         "mean": mean[t, i, j], "sd": sd[t, i, j], "hdi_5%": lo[t, i, j], "hdi_95%": hi[t, i, j],
                         "inclusion_prob": pincl[t, i, j], "lingam_prob": float(disc["probability"].values[k, i, j]),
                         "r_hat": rh[i, j], "ess_bulk": ess[i, j], "divergences": int(div[t]),
                         "flagged": bad_tile})
    return idata, pd.DataFrame(rows)
