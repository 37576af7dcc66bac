"""Inference and discovery costs per tile, memory against tiles, and a public-size projection.

Run by hand (takes ~10 minutes on 2 cores): ``python benchmarks/bench_inference.py [--quick]``.
Prints Markdown for ``benchmarks/RESULTS.md``. On the same simulated 256-cell tiles it reports:

1. seconds per tile for each sampler path to reach ESS_bulk >= 400 on every allowed coefficient
   with r_hat <= 1.01 (nutpie with one compiled model and swapped data; PyMC's own NUTS with one
   model and ``pm.set_data``), and the share of tiles that got there;
2. DirectLiNGAM per tile: one fit, bootstrap x20 (the default), bootstrap x100;
3. peak memory of assembling the posterior against the number of tiles;
4. end-to-end (simulate, discovery, inference, writing) on a subset with the default 2-process
   executor, projected to the public size (14 images, ~2,000 tiles), with what dominates.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
import tracemalloc
import warnings
from pathlib import Path

import numpy as np

warnings.simplefilter("ignore")


def tiles_for_bench(n_tiles: int, seed: int = 0):
    import causalcrystal as cc
    from causalcrystal import discovery
    from causalcrystal.tiling import make_tiles, tile_members

    cells = cc.simulate((0.0, 0.1, 0.2), shape=(40, 40), seed=seed)
    tiles = make_tiles(cells, 16)
    std = discovery.standardize(cells, "image")
    idx = np.linspace(0, tiles.sizes["tile"] - 1, n_tiles).astype(int)
    return cells, tiles, [discovery.tile_matrix(std, tile_members(tiles, k), "image") for k in idx]


def bench_samplers(Xs, paths):
    from causalcrystal.discovery import bootstrap_lingam
    from causalcrystal.priors import dag_prior, forbidden_into
    from causalcrystal.sem import compiled_model, load_spec, sample_tile

    rows = []
    priors = []
    for X in Xs:
        b = bootstrap_lingam(X, 20, exogenous=("I14", "I5"), seed=0)
        priors.append(dag_prior(b["order"], b["probability"], forbidden_into([0, 1], 8)))
    for name, n in paths:
        spec = load_spec("laplace").with_(name=name)
        t0 = time.perf_counter()
        compiled_model(spec)
        t_compile = time.perf_counter() - t0
        times, ok = [], 0
        for k, (X, prior) in enumerate(zip(Xs[:n], priors[:n])):
            t = time.perf_counter()
            out = sample_tile(X, prior, spec, seed=k)
            times.append(time.perf_counter() - t)
            a = prior.allowed
            ok += bool(np.nanmin(out["ess_bulk"][a]) >= 400 and np.nanmax(out["r_hat"][a]) <= 1.01)
        rows.append((name, n, t_compile, float(np.mean(times)), ok / n))
    return rows


def bench_lingam(Xs):
    from causalcrystal.discovery import bootstrap_lingam, fit_lingam

    out = []
    for label, fn in [("one fit", lambda X: fit_lingam(X, seed=0)),
                      ("bootstrap x20", lambda X: bootstrap_lingam(X, 20, exogenous=("I14", "I5"), seed=0)),
                      ("bootstrap x100", lambda X: bootstrap_lingam(X, 100, exogenous=("I14", "I5"), seed=0))]:
        t = time.perf_counter()
        for X in Xs:
            fn(X)
        out.append((label, (time.perf_counter() - t) / len(Xs)))
    return out


def bench_memory(cells, tiles, Xs):
    """Peak traced memory of assembling a posterior of T tiles (draws reused across tiles)."""
    from causalcrystal.engine import assemble
    from causalcrystal.priors import dag_prior
    from causalcrystal.sem import load_spec, sample_tile

    spec = load_spec("laplace")
    prior = dag_prior(list(range(8)), np.full((8, 8), 0.5))
    one = sample_tile(Xs[0], prior, spec, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for T in (10, 40, 160):
            tiles_T = tiles.isel(tile=np.arange(T) % tiles.sizes["tile"])
            tiles_T = tiles_T.assign_coords(tile=np.arange(T))
            for k in range(T):
                np.savez(Path(tmp) / f"tile_{k:05d}.npz", **one)
            import xarray as xr

            disc = xr.Dataset({"probability": (("tile", "effect", "cause"), np.full((T, 8, 8), 0.5))})
            tracemalloc.start()
            assemble(cells, tiles_T, disc, [prior] * T, list(range(T)), Path(tmp), spec, "image")
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            rows.append((T, peak))
    return rows


def bench_end_to_end(shape, n_images):
    import causalcrystal as cc
    from causalcrystal.engine import run_pipeline

    comps = tuple(np.linspace(0, 0.2, n_images))
    t = time.perf_counter()
    cells = cc.simulate(comps, shape=shape, seed=1)
    t_sim = time.perf_counter() - t
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_pipeline(cells, Path(tmp) / "run", progress=False, log=lambda m: None)
        t_run = time.perf_counter() - t
    return cells.sizes["cell"], res["n_tiles"], t_sim, t_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tiles (a smoke run of this script)")
    args = ap.parse_args()
    n = 6 if args.quick else 20
    cells, tiles, Xs = tiles_for_bench(n)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("\n### Per-tile NUTS to ESS_bulk >= 400, r_hat <= 1.01 (256 cells, 8 variables, Laplace)\n")
    print("| sampler path | tiles | compile s (once) | s per tile | share reaching target |")
    print("|---|---|---|---|---|")
    for name, k, tc, tt, share in bench_samplers(Xs, [("nutpie", n), ("pymc", 3 if args.quick else 5)]):
        print(f"| {name} | {k} | {tc:.1f} | {tt:.2f} | {share:.0%} |")
    print("\n### DirectLiNGAM per 256-cell tile\n")
    print("| work | s per tile |")
    print("|---|---|")
    for label, t in bench_lingam(Xs[: min(n, 8)]):
        print(f"| {label} | {t:.2f} |")
    print("\n### Peak memory of assembling the posterior (2 chains x 500 draws)\n")
    print("| tiles | peak MB |")
    print("|---|---|")
    for T, peak in bench_memory(cells, tiles, Xs):
        print(f"| {T} | {peak:.0f} |")
    shape, n_img = ((24, 24), 2) if args.quick else ((40, 40), 3)
    n_cells, n_tiles, t_sim, t_run = bench_end_to_end(shape, n_img)
    per_tile = t_run / n_tiles
    print("\n### End to end (defaults: bootstrap x20 per tile, x100 per image, 2 worker processes)\n")
    print(f"{n_img} images of {shape[0]}x{shape[1]}: {n_cells} cells, {n_tiles} tiles; simulate {t_sim:.1f} s, "
          f"run {t_run:.1f} s (includes worker start-up and compiling once per worker) = {per_tile:.2f} s per tile.")
    print(f"Projection to 2,000 tiles: ~{per_tile * 2000 / 60:.0f} min at this per-tile rate.")


if __name__ == "__main__":
    main()
