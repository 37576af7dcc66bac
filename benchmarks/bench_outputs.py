"""Output size per tile: ``posterior.nc`` with and without the pointwise log-likelihood, gzip and
the rounding of the draws (``engine.quantise_draws``), side by side from the same sampled tiles (issue 13's goal: <= 0.5 MB per tile by default).

Run by hand (about a minute on 2 cores): ``python benchmarks/bench_outputs.py``. It runs the
demo series once (``causalcrystal demo`` defaults: 3 compositions of 24 x 24 cells, 16 x 16 tiles,
stride 8, 12 tiles, mixture noise, 2 chains x 500 kept draws) with ``keep_tiles=True``, then writes
``posterior.nc`` from those same tiles in each variant and prints Markdown for
``benchmarks/RESULTS.md``: MB per tile of each file, the write time, and which variables take the
space.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path


def main() -> None:
    import h5py

    from causalcrystal import discovery, engine
    from causalcrystal.simulator import simulate

    tmp = Path(tempfile.mkdtemp(prefix="cc-bench-outputs-"))
    cells = simulate((0.0, 0.1, 0.2), shape=(24, 24), seed=0)
    run = tmp / "run"
    engine.run_pipeline(cells, run, keep_tiles=True, keep_loglik=True, progress=False, log=lambda m: None)
    plan = engine._plan_run(cells, tile_size=16, stride=None, min_cells=None, n_bootstrap=5, image_bootstrap=100,
                            exogenous=["I14", "I5"], standardize="image", spec=engine.DEFAULT_SPEC,
                            n_orders=engine.N_ORDERS, derived="auto", seed=0)
    import xarray as xr

    disc = xr.load_dataset(run / "discovery.nc", engine="h5netcdf")
    disc_images = xr.load_dataset(run / "discovery.nc", engine="h5netcdf", group="images")
    priors = engine.tile_order_priors(disc, disc_images, plan.spec, plan.n_orders, exogenous=plan.exogenous)
    done = [k for k, p in enumerate(priors) if p is not None]
    std = discovery.standardize(plan.cells, plan.standardize)
    consts = engine.tile_constants(plan.cells, std, plan.tiles, done, plan.standardize)
    T = len(done)
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, {T} tiles of the demo series\n")
    print("| posterior.nc variant | MB per tile | write s |")
    print("|---|---|---|")
    sizes = {}
    for label, loglik, level, lossless in (
            ("log-likelihood stored, no compression, lossless (before issue 13)", True, 0, True),
            ("log-likelihood stored, gzip 4", True, 4, False),
            ("no log-likelihood, no compression, lossless", False, 0, True),
            ("no log-likelihood, gzip 4, lossless (--lossless)", False, 4, True),
            ("no log-likelihood, gzip 4, draws rounded to sd / 4096 (default)", False, 4, False)):
        path = tmp / f"post-{loglik}-{level}-{lossless}.nc"
        clock = time.perf_counter()
        engine.write_posterior(path, plan.tiles, disc, priors, done, run / "tiles", plan.spec, plan.standardize,
                               constants=consts, loglik=loglik, compression=level, lossless=lossless)
        sec = time.perf_counter() - clock
        sizes[label] = path
        print(f"| {label} | {path.stat().st_size / T / 1e6:.3f} | {sec:.2f} |")
    print("\nper variable in the default file (KB per tile):\n")
    with h5py.File(sizes["no log-likelihood, gzip 4, draws rounded to sd / 4096 (default)"]) as f:
        rows = []
        f.visititems(lambda name, obj: rows.append((name, obj.id.get_storage_size()))
                     if isinstance(obj, h5py.Dataset) else None)
    for name, sz in sorted(rows, key=lambda r: -r[1])[:8]:
        print(f"- `{name}`: {sz / T / 1e3:.1f}")
    others = {n: (run / n).stat().st_size / T / 1e6 for n in ("cells.nc", "discovery.nc", "summary.csv")}
    print("\nother outputs (MB per tile): " + ", ".join(f"{k} {v:.3f}" for k, v in others.items()))


if __name__ == "__main__":
    main()
