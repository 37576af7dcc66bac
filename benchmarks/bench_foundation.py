"""Foundation costs at public-data size: simulate, write/read netCDF, tile.

The public Sm-BFO series is 14 images; a 64 x 64-cell image with 16-cell tiles at stride 8 gives
49 tiles, so 14 such images give ~700 tiles, and 2,000 tiles correspond to ~110 x 110-cell images.
Run by hand: ``python benchmarks/bench_foundation.py`` (prints a Markdown table for RESULTS.md).
"""

from __future__ import annotations

import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import causalcrystal as cc

COMPOSITIONS = (0.0, 0.07, 0.10, 0.13, 0.20)


def timed(fn, *args, **kwargs):
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t


def main() -> None:
    rows = []
    for shape in [(64, 64), (112, 112)]:
        # 14 images: 3, 5, 2, 2, 2 per composition in the public set; 3 per composition here.
        ds, t_sim = timed(cc.simulate, COMPOSITIONS, shape=shape, images_per_composition=3, seed=0)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "sim.nc"
            _, t_write = timed(cc.write_netcdf, ds, path)
            size_mb = os.path.getsize(path) / 1e6
            back, t_read = timed(cc.read, path)
        tiles, t_tile = timed(cc.make_tiles, back, 16)
        rows.append((f"15 x {shape[0]}x{shape[1]}", ds.sizes["cell"], tiles.sizes["tile"], t_sim, t_write,
                     t_read, t_tile, size_mb))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print("| images | cells | tiles (16, stride 8) | simulate s | write .nc s | read .nc s | tile s | file MB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | {r[5]:.2f} | {r[6]:.3f} | {r[7]:.1f} |")
    print(f"peak RSS: {peak:.0f} MB")


if __name__ == "__main__":
    main()
