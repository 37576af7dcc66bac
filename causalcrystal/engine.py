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
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal import __version__
from causalcrystal.cells import DESCRIPTORS, validate
from causalcrystal.executor import Progress, get_executor
from causalcrystal.priors import DagPrior, dag_prior, forbidden_into, inclusion_weights
from causalcrystal.sem import RHAT_MAX, ModelSpec, load_spec
from causalcrystal.tiling import image_tiles, make_tiles, tile_members

OUTPUTS = ("discovery.nc", "posterior.nc", "summary.csv", "manifest.json", "tiles", "report.html")


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
    threads: int | None = None


def _sample_task(task: TileTask) -> tuple[int, dict]:
    from causalcrystal.sem import sample_tile

    return task.index, sample_tile(task.X, task.prior, task.spec, task.seed, threads=task.threads)


def tile_seed(seed: int, index: int) -> int:
    """The sampler seed of tile ``index`` (independent of execution order and executor)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _atomic_savez(path: Path, arrays: dict) -> None:
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def _prepare_out(out_dir: Path, manifest: dict, overwrite: bool, outputs=OUTPUTS, final: str = "posterior.nc",
                 subdir: str | None = "tiles") -> None:
    """Make ``out_dir`` ready for a run: refuse to replace a finished result (``final`` exists) or a
    partial one with other settings without ``overwrite``; with it, delete only ``outputs``."""
    if out_dir.exists() and not out_dir.is_dir():
        raise RunExistsError(f"{out_dir} exists and is not a folder; choose another --out.")
    mpath = out_dir / "manifest.json"
    if out_dir.exists() and overwrite:
        # Remove only what a run writes; anything else the user put there stays.
        for name in outputs:
            p = out_dir / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    elif mpath.exists():
        old = json.loads(mpath.read_text())
        if (out_dir / final).exists():
            raise RunExistsError(f"{out_dir} already holds a finished run; pass --overwrite to replace it "
                                 "or choose another --out.")
        if old.get("settings") != manifest["settings"]:
            diff = sorted(k for k in set(old.get("settings", {})) | set(manifest["settings"])
                          if old.get("settings", {}).get(k) != manifest["settings"].get(k))
            raise RunExistsError(f"{out_dir} holds a partial run with other settings ({', '.join(diff)}); "
                                 "pass --overwrite to start again or choose another --out.")
    elif out_dir.exists() and any(out_dir.iterdir()):
        clash = [n for n in outputs if (out_dir / n).exists()]
        if clash:
            raise RunExistsError(f"{out_dir} already has {clash} but no manifest; pass --overwrite or choose "
                                 "another --out.")
    (out_dir / subdir if subdir else out_dir).mkdir(parents=True, exist_ok=True)
    mpath.write_text(json.dumps(manifest, indent=1, sort_keys=True))


def run_fingerprint(run_dir: str | Path, name: str = "posterior.nc") -> str | None:
    """Identity of a run's output file (size and modification time, not a hash: posterior files
    are GBs). Jobs built on a run record it, so a re-run of the run (``--overwrite``) is noticed
    instead of silently mixing old derived results with new posteriors."""
    p = Path(run_dir) / name
    if not p.is_file():
        return None
    st = p.stat()
    return f"{name}:{st.st_size}:{st.st_mtime_ns}"


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
    n_bootstrap: int = 5,
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
    Returns a dict with the output paths, counts (``sampled``, ``reused``, ``flagged``) and the
    seconds spent in each phase of this call (``timings``: discovery, sampling, writing).
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
    timings = {"discovery": 0.0, "sampling": 0.0, "writing": 0.0}  # seconds, this call only
    clock = time.perf_counter()
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

    timings["discovery"] = time.perf_counter() - clock
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

    def tasks(threads):
        for k in todo:
            X = discovery.tile_matrix(std_cells, tile_members(tiles, k), standardize)
            yield TileTask(k, X, priors[k], spec, tile_seed(seed, k), threads)

    clock = time.perf_counter()
    if todo:
        executor = get_executor(scheduler, workers)
        # One sampler thread per core in all (2 local workers on 2 cores: one thread each; Dask
        # workers run one task per thread), so chains never oversubscribe the cores. Measured on
        # 2 cores: the same throughput as 2 threads per worker (98 s vs 97 s for 108 tiles), but
        # it keeps a multi-threaded Dask worker from running threads x chains sampler threads.
        threads = 1 if scheduler else max(1, (os.cpu_count() or 1) // executor.workers)
        bar = Progress(len(todo), "sampling tiles", enabled=progress)
        try:
            for _, (k, result) in executor.imap(_sample_task, tasks(threads)):
                _atomic_savez(tile_dir / f"tile_{k:05d}.npz", result)
                bar.update(note=f"(tile {k})")
        finally:
            executor.close()

    timings["sampling"] = time.perf_counter() - clock
    n_ok = sum(p is not None for p in priors)
    done = [k for k in range(len(priors)) if (tile_dir / f"tile_{k:05d}.npz").exists()]
    result = {"out_dir": str(out_dir), "sampled": len(todo), "reused": reused, "n_tiles": n_ok,
              "finished": len(done) == n_ok, "timings": timings}
    if len(done) < n_ok:
        log(f"stopped with {len(done)}/{n_ok} tiles sampled; run the same command again to resume")
        return result

    clock = time.perf_counter()
    tmp = out_dir / "posterior.nc.tmp"
    summary = write_posterior(tmp, tiles, disc, priors, done, tile_dir, spec, standardize, progress,
                              constants=tile_constants(cells, std_cells, tiles, done))
    os.replace(tmp, out_dir / "posterior.nc")
    summary.to_csv(out_dir / "summary.csv", index=False)
    flagged = summary.loc[summary["flagged"], "tile"].unique()
    if flagged.size:
        log(f"WARNING: {flagged.size} tile(s) flagged (r_hat > {RHAT_MAX}, ess_bulk < {spec.sampler.target_ess:g} or "
            f"divergences): tiles {flagged[:10].tolist()}{' ...' if flagged.size > 10 else ''}; "
            "see the 'flagged' column of summary.csv")
    timings["writing"] = time.perf_counter() - clock
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


#: Variables of ``posterior.nc`` written tile by tile: group, name, dims after (chain, draw, tile), dtype.
_STREAMED = (
    ("posterior", "B", ("effect", "cause"), "f4"),
    ("posterior", "edge_inclusion", ("effect", "cause"), "f4"),
    ("posterior", "c", ("variable",), "f4"),
    ("posterior", "sigma", ("variable",), "f4"),
    ("posterior", "noise_shape", ("variable",), "f4"),
    ("posterior", "nu", (), "f4"),
    ("log_likelihood", "z", ("member",), "f4"),
    ("sample_stats", "diverging", (), "bool"),
    ("sample_stats", "tree_depth", (), "i8"),
    ("sample_stats", "step_size", (), "f8"),
)
#: npz key of each streamed variable, where it differs from the variable name.
_NPZ_KEY = {"noise_shape": "shape", "z": "loglik"}
_TILE_COORDS = ("image", "row0", "col0", "size", "n_cells")


def _load_tile(tile_dir: Path, k: int) -> dict:
    return dict(np.load(tile_dir / f"tile_{k:05d}.npz", allow_pickle=False))


def tile_constants(cells: xr.Dataset, std_cells: xr.Dataset, tiles: xr.Dataset, done) -> xr.Dataset:
    """Per tile: the Sm fraction, the raw descriptor means and the scales that ``B`` is in.

    ``B_raw[i, j] = B[i, j] * scale_i / scale_j`` converts a tile's coefficients to raw units;
    ``tile_mean`` (raw) gives, e.g., the sign of the tile's spontaneous polarisation, which the
    concentration model needs to orient strain <- polarisation couplings across 180-degree walls.
    ``std_cells`` is the standardised table the run sampled (its attrs record the mode and scales).
    """
    X = np.column_stack([cells[v].values.astype(np.float64) for v in DESCRIPTORS])
    y = cells["sm_fraction"].values
    standardize = std_cells.attrs.get("standardize", "none")
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
                    progress: bool = False, constants: xr.Dataset | None = None):
    """Write ``posterior.nc`` (ArviZ InferenceData netCDF) and return the summary table.

    Streams: the groups' coordinates and attributes are written by xarray, then every tile's
    draws are copied from its npz into the file one tile at a time (h5netcdf, chunked per tile),
    so memory stays at one tile's draws however many tiles the run has (holding them all needed
    ~4 MB per tile, 8 GB for a public-size series). The summary rows are computed per tile too.
    """
    import h5netcdf
    import pandas as pd

    first = _load_tile(tile_dir, done[0])
    C, D = first["B"].shape[:2]
    T = len(done)
    width = max(int(n) for n in tiles["n_cells"].values[done])
    present = {name for _, name, _, _ in _STREAMED if _NPZ_KEY.get(name, name) in first}
    sizes = {"chain": C, "draw": D, "tile": T, "effect": len(DESCRIPTORS), "cause": len(DESCRIPTORS),
             "variable": len(DESCRIPTORS), "member": width}
    base = {"chain": np.arange(C), "draw": np.arange(D), "tile": np.asarray(done)}
    tile_coords = {name: ("tile", tiles[name].values[done]) for name in _TILE_COORDS if name in tiles.coords}
    if constants is not None:
        tile_coords["sm_fraction"] = ("tile", constants["sm_fraction"].values)
    post = xr.Dataset(coords={**base, "effect": list(DESCRIPTORS), "cause": list(DESCRIPTORS),
                              "variable": list(DESCRIPTORS), **tile_coords})
    post.attrs.update(standardize=standardize, units=("standardised per " + standardize) if standardize != "none"
                      else "raw descriptor units", model=json.dumps(spec.to_dict()),
                      causalcrystal=__version__, B_indexing="B[effect, cause]: effect <- cause")
    groups = {"posterior": post,
              "log_likelihood": xr.Dataset(coords={**base, "member": np.arange(width)}),
              "sample_stats": xr.Dataset(coords=base)}
    if constants is not None:
        groups["constant_data"] = constants
    for n, (name, ds) in enumerate(groups.items()):  # what InferenceData.to_netcdf writes, minus the draws
        ds.to_netcdf(path, engine="h5netcdf", group=name, mode="w" if n == 0 else "a")

    rows = []
    bar = Progress(T, "writing posterior.nc", enabled=progress)
    with h5netcdf.File(path, "a") as f:
        out = {}
        for group, name, dims, dtype in _STREAMED:
            if name not in present:
                continue
            shape = tuple(sizes[d] for d in dims)
            kw = {"fillvalue": np.nan} if dtype.startswith("f") else {}
            v = f.groups[group].create_variable(name, ("chain", "draw", "tile", *dims),
                                         dtype=np.int8 if dtype == "bool" else dtype,
                                         chunks=(C, D, 1, *shape), **kw)
            if dtype == "bool":
                v.attrs["dtype"] = "bool"  # how xarray marks a boolean stored as int8
            if group == "posterior":
                v.attrs["coordinates"] = " ".join(n for n in post.coords if post[n].dims == ("tile",) and n != "tile")
            out[name] = v
        for t, k in enumerate(done):
            arrays = first if t == 0 else _load_tile(tile_dir, k)
            for name, v in out.items():
                a = arrays[_NPZ_KEY.get(name, name)]
                if name == "z":
                    v[:, :, t, : a.shape[2]] = a
                else:
                    v[:, :, t] = a.astype(np.int8) if v.dtype == np.int8 else a
            rows += _summary_rows(k, arrays, tiles, disc, priors[k], spec)
            bar.update()
    return pd.DataFrame(rows)


def _summary_rows(k: int, arrays: dict, tiles, disc, prior: DagPrior, spec: ModelSpec) -> list[dict]:
    """One summary row per allowed edge of tile ``k`` (statistics of the float32 draws as stored)."""
    B = arrays["B"].astype(np.float32)
    flat = B.reshape(-1, *B.shape[2:])
    mean, sd = flat.mean(0), flat.std(0, ddof=1)
    lo, hi = _hdi(flat, 0.9)
    pincl = arrays["edge_inclusion"].astype(np.float32).reshape(flat.shape).mean(0)
    div = int(arrays["diverging"].sum())
    rh, ess = arrays["r_hat"], arrays["ess_bulk"]
    allowed = prior.allowed
    flagged = bool(np.nanmax(rh[allowed]) > RHAT_MAX or np.nanmin(ess[allowed]) < spec.sampler.target_ess or div > 0)
    where = {"tile": k, "image": str(tiles["image"].values[k]), "row0": int(tiles["row0"].values[k]),
             "col0": int(tiles["col0"].values[k])}
    return [{**where, "effect": DESCRIPTORS[i], "cause": DESCRIPTORS[j], "mean": mean[i, j], "sd": sd[i, j],
             "hdi_5%": lo[i, j], "hdi_95%": hi[i, j], "inclusion_prob": pincl[i, j],
             "lingam_prob": float(disc["probability"].values[k, i, j]), "r_hat": rh[i, j],
             "ess_bulk": ess[i, j], "divergences": div, "flagged": flagged}
            for i, j in zip(*np.nonzero(allowed))]
