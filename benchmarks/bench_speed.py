"""Issue 13: cost per tile of the default posterior and of the direction tests, against the LiNGAM
bootstrap x100 on the same tiles, and the public-size series end to end (measured on a subset and
projected).

Run by hand: ``python benchmarks/bench_speed.py`` (~10 min on 2 cores; ``--tiles N`` for the
per-tile part, ``--no-end-to-end`` to skip the second part). Prints Markdown for
``benchmarks/RESULTS.md``.

Part 1, per tile, one process, the same tiles for every method, interleaved tile by tile (the
machines are shared: read the ratios): the default posterior (``mog`` noise, Gibbs, the tile's top
3 causal orders mixed, scout chains, with the convergence re-run; what ``run`` does per tile), the
same without scout chains, DirectLiNGAM's
bootstrap x100 (the source paper's uncertainty), the direction tests of the two default pairs as
``compare --directions-only`` runs them (only the equations that differ between the orientations),
and the same tests fitting every equation of every order (the path before issue 13; no exact
refits, so it is a lower bound of its cost).

Part 2: a subset of a public-size series, files to report, with 2 workers: ``run`` (discovery,
sampling, writing), ``concentration``, ``compare --directions-only`` (tiles only) and ``report``,
each timed; projected to 14 images and 2,000 tiles by scaling the per-tile phases.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

EXO = ("I14", "I5")
PAIRS = (("a", "b"), ("Px", "Py"))


def _tiles(n_tiles: int, tmp: Path):
    """Tasks of ``n_tiles`` tiles spread over a simulated 3-image series, with the run's priors."""
    import xarray as xr

    from causalcrystal import discovery, engine, sem
    from causalcrystal.cells import DESCRIPTORS
    from causalcrystal.simulator import simulate
    from causalcrystal.tiling import tile_members

    cells = simulate((0.0, 0.1, 0.2), shape=(40, 40), seed=1)
    run = tmp / "run"
    engine.run_pipeline(cells, run, stop_after=0, progress=False, log=lambda m: None)  # discovery only
    disc = xr.load_dataset(run / "discovery.nc", engine="h5netcdf")
    disc_images = xr.load_dataset(run / "discovery.nc", engine="h5netcdf", group="images")
    spec = sem.load_spec(engine.DEFAULT_SPEC)
    tiles = engine.run_tiles(cells, 16, 8, engine.tile_min_cells(16, None))
    priors = engine.tile_order_priors(disc, disc_images, spec, engine.N_ORDERS)
    std = discovery.standardize(cells, "image")
    fittable = [k for k, p in enumerate(priors) if p is not None]
    pick = [fittable[int(i)] for i in np.linspace(0, len(fittable) - 1, min(n_tiles, len(fittable)))]
    tasks = []
    for k in pick:
        X = discovery.tile_matrix(std, tile_members(tiles, k), "image")
        active = ~disc["derived"].values[k].astype(bool) if "derived" in disc else None
        derived = tuple(np.asarray(DESCRIPTORS)[~active]) if active is not None else ()
        tasks.append({"task": engine.TileTask(k, X, priors[k], spec, engine.tile_seed(0, k), 1, active),
                      "weights": disc["probability"].values[k], "derived": derived})
    return tasks, len(fittable)


def _whole_order_directions(X, order, W, a, b, spec, seed, active):
    """The direction test fitting every equation of every orientation (before issue 13)."""
    from causalcrystal import sem
    from causalcrystal.cells import DESCRIPTORS
    from causalcrystal.direction import oriented_orders
    from causalcrystal.evidence import pseudo_bma_weights
    from causalcrystal.priors import dag_prior, forbidden_into

    a, b = DESCRIPTORS.index(a), DESCRIPTORS.index(b)
    W = np.array(W, dtype=float)
    W[b, a] = W[a, b] = max(W[b, a], W[a, b])
    forbidden = forbidden_into([0, 1], 8)
    orders = [o for pair in oriented_orders(order, a, b) for o in pair]
    priors = [dag_prior(o, W, forbidden, floor=spec.prior.floor) for o in orders]
    _, loos = sem.fit_orders(X, priors, spec, seed, active)
    return float(pseudo_bma_weights(np.stack([lo["elpd_i"] for lo in loos]), seed=seed)[0::2].sum())


def per_tile(n_tiles: int) -> None:
    from causalcrystal import discovery, sem
    from causalcrystal.direction import direction_probability
    from causalcrystal.priors import forbidden_into

    tmp = Path(tempfile.mkdtemp(prefix="cc-bench-speed-"))
    tasks, n_fittable = _tiles(n_tiles, tmp)
    forbidden = forbidden_into([0, 1], 8)
    spec = tasks[0]["task"].spec
    def posterior(task):  # what a run's worker does per tile
        return sem.sample_tile_orders(task.X, task.priors, task.spec, task.seed, threads=1, active=task.active)

    posterior(tasks[0]["task"])  # compile (numba caches across processes, but warm the imports too)
    rows = []
    for t in tasks:
        task = t["task"]
        r = {}
        clock = time.perf_counter()
        out = posterior(task)
        r["posterior"] = time.perf_counter() - clock
        ess = np.nanmin(out["ess_bulk"])
        r["ess_min"], r["rhat_max"], r["rerun"] = ess, np.nanmax(out["r_hat"]), int(out["rerun_factor"])
        r["restarted"] = int(out["restarted_chains"])
        clock = time.perf_counter()
        sem.sample_tile_orders(task.X, task.priors, task.spec.with_(scouts=0), task.seed, threads=1, active=task.active)
        r["posterior_no_scouts"] = time.perf_counter() - clock
        clock = time.perf_counter()
        discovery.bootstrap_lingam(task.X, 100, exogenous=EXO, seed=0)
        r["lingam100"] = time.perf_counter() - clock
        clock = time.perf_counter()
        p_new = [direction_probability(task.X, task.priors[0].order, t["weights"], a, b, forbidden=forbidden,
                                       spec=spec, seed=task.seed, derived=t["derived"], active=task.active)
                 for a, b in PAIRS]
        r["directions"] = time.perf_counter() - clock
        clock = time.perf_counter()
        for a, b in PAIRS:
            if not any(a in d or b in d for d in t["derived"]):
                _whole_order_directions(task.X, task.priors[0].order, t["weights"], a, b, spec, task.seed, task.active)
        r["directions_whole"] = time.perf_counter() - clock
        r["valid"] = sum(bool(p["valid"]) for p in p_new)
        rows.append(r)
        print(f"  tile {task.index}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in r.items()), flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}
    T = len(rows)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}; {T} of the {n_fittable} tiles (16 x 16, stride 8) of "
          "`simulate((0, 0.1, 0.2), shape=(40, 40), seed=1)`, one process, methods interleaved per tile\n")
    print("| per tile (same tiles) | mean s | ratio to the default posterior |")
    print("|---|---|---|")
    for key, label in (("posterior", "default posterior (mog, Gibbs, 3 orders, scouts, re-run)"),
                       ("posterior_no_scouts", "the same without scout chains (--scouts 0)"),
                       ("lingam100", "DirectLiNGAM bootstrap x100"),
                       ("directions", "directions, 2 pairs, differing equations only (now)"),
                       ("directions_whole", "directions, 2 pairs, whole orders (before, no refits)")):
        print(f"| {label} | {mean[key]:.2f} | {mean[key] / mean['posterior']:.2f} |")
    ess = np.array([r["ess_min"] for r in rows])
    rh = np.array([r["rhat_max"] for r in rows])
    print(f"\nsmallest bulk ESS per tile: median {np.median(ess):.0f} (min {ess.min():.0f}); tiles reaching ESS >= 400 "
          f"and r_hat <= 1.01: {np.mean((ess >= 400) & (rh <= 1.01)):.2f}; re-run: {np.mean([r['rerun'] > 0 for r in rows]):.2f}; "
          f"min-ESS per second of the posterior: {np.median(ess / np.array([r['posterior'] for r in rows])):.0f} (median); "
          f"tiles with a restarted chain: {sum(r['restarted'] > 0 for r in rows)}")
    print(f"directions speed-up (whole / differing): {mean['directions_whole'] / mean['directions']:.2f}x; "
          f"LiNGAM x100 / posterior: {mean['lingam100'] / mean['posterior']:.2f}")


def end_to_end(shape: tuple[int, int], n_images: int) -> None:
    from causalcrystal.compare import compare_run
    from causalcrystal.concentration import run_concentration
    from causalcrystal.engine import run_pipeline
    from causalcrystal.report import write_report
    from causalcrystal.simulator import simulate

    tmp = Path(tempfile.mkdtemp(prefix="cc-bench-e2e-"))
    comps = tuple(np.linspace(0.0, 0.2, n_images))
    cells = simulate(comps, shape=shape, seed=2)
    quiet = {"log": lambda m: None}
    t = {}
    clock = time.perf_counter()
    res = run_pipeline(cells, tmp / "run", progress=False, workers=2, **quiet)
    t["run"] = time.perf_counter() - clock
    timings = res.get("timings", {})
    n_tiles = int(res.get("sampled", 0)) or 1
    clock = time.perf_counter()
    run_concentration(tmp / "run", tmp / "run" / "concentration", "lgd", universality_check=False, **quiet)
    t["concentration"] = time.perf_counter() - clock
    clock = time.perf_counter()
    compare_run(tmp / "run", tmp / "run" / "compare", cells, models=False, image_directions=False, workers=2,
                progress=False, **quiet)
    t["directions"] = time.perf_counter() - clock
    clock = time.perf_counter()
    write_report(tmp / "run", tmp / "run" / "report.html", **quiet)
    t["report"] = time.perf_counter() - clock
    size = sum(p.stat().st_size for p in (tmp / "run").rglob("*") if p.is_file()) / 1e6
    print(f"\nEnd to end, 2 workers: {n_images} images of {shape[0]} x {shape[1]} cells, {n_tiles} tiles (16 x 16, "
          f"stride 8)\n")
    print("| phase | s | s per tile | projected min for 2,000 tiles |")
    print("|---|---|---|---|")
    phases = [("run: discovery", timings.get("discovery", float("nan"))),
              ("run: sampling", timings.get("sampling", float("nan"))),
              ("run: writing", timings.get("writing", float("nan"))),
              ("concentration (stage 1 + 2, no universality check)", t["concentration"]),
              ("compare --directions-only (2 pairs, tiles)", t["directions"]),
              ("report", t["report"])]
    total = 0.0
    for label, sec in phases:
        proj = sec / n_tiles * 2000 / 60
        total += proj
        print(f"| {label} | {sec:.1f} | {sec / n_tiles:.2f} | {proj:.1f} |")
    print(f"| all | {sum(s for _, s in phases):.1f} | | {total:.1f} |")
    print(f"\nrun folder: {size / n_tiles:.2f} MB per tile ({size:.1f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=12, help="tiles for the per-tile part (default 12)")
    ap.add_argument("--no-end-to-end", action="store_true")
    ap.add_argument("--shape", type=int, nargs=2, default=(40, 40), help="cells per image, end to end")
    ap.add_argument("--images", type=int, default=3, help="images, end to end")
    args = ap.parse_args()
    per_tile(args.tiles)
    if not args.no_end_to_end:
        end_to_end(tuple(args.shape), args.images)


if __name__ == "__main__":
    main()
