"""Calibration on independent scenarios (issue 10): causalcrystal's per-tile posteriors against the
truth, side by side with the LiNGAM bootstrap x100 on the same tiles, in one run.

    python benchmarks/bench_calibration.py [--seeds 0-9] [--shape 32 32] [--images 2] [--tile 16]
        [--model mog] [--orders 3] [--no-lingam] [--workers 2] [--out /tmp/cc-calibration]

Each seed is one :func:`causalcrystal.scenarios.scenario` (a random DAG over the 8 descriptors,
I14 and I5 exogenous, noise Laplace / uniform / t5 / bimodal per variable), run through
``run_pipeline`` with non-overlapping tiles. Prints one JSON line per method with the numbers of
:func:`causalcrystal.scenarios.calibration_table` and the seconds per tile. Each seed's intervals are
saved in ``--out`` as ``s<seed>.npz``: an interrupted benchmark resumes, and a later call with more
seeds (same ``--out``) summarises them all. Use a separate ``--out`` per ``--model``/``--orders``.
"""

import argparse
import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _seeds(text):
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in text.split(",")]


def _lingam(X, k):
    from causalcrystal.scenarios import lingam_bootstrap_intervals

    return lingam_bootstrap_intervals(X, 100, seed=k)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0-4")
    ap.add_argument("--shape", type=int, nargs=2, default=[32, 32])
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--tile", type=int, default=16)
    ap.add_argument("--model", default="mog")
    ap.add_argument("--orders", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=5)
    ap.add_argument("--no-lingam", action="store_true")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--families", default="laplace,uniform,t5,bimodal")
    ap.add_argument("--out", default="/tmp/cc-calibration")
    a = ap.parse_args()

    from causalcrystal import discovery
    from causalcrystal.engine import run_pipeline
    from causalcrystal.scenarios import (calibration_table, lingam_bootstrap_intervals, run_intervals, scenario,
                                         truth_per_tile)
    from causalcrystal.tiling import make_tiles, tile_members

    fams = tuple(a.families.split(","))
    acc = {"posterior": [], "lingam": []}
    secs = {"posterior": 0.0, "lingam": 0.0}
    n_tiles = {"posterior": 0, "lingam": 0}
    for seed in _seeds(a.seeds):
        # each seed's intervals are saved as they are made: an interrupted benchmark resumes, and
        # seeds can be run in several sittings (same --out) and summarised together
        out = Path(a.out) / f"s{seed}"
        saved = Path(a.out) / f"s{seed}.npz"
        if saved.exists():
            z = np.load(saved, allow_pickle=False)
            fam = json.loads(str(z["fam"]))
            parts = {"posterior": ("p_",), "lingam": ("l_",)}
            for method, (pre,) in parts.items():
                if pre + "lo" in z and not (method == "lingam" and a.no_lingam):
                    acc[method].append((z[pre + "lo"], z[pre + "hi"], z[pre + "truth"], z[pre + "allowed"], fam))
                    secs[method] += float(z[pre + "secs"])
                    n_tiles[method] += z[pre + "lo"].shape[0]
            print(f"seed {seed}: reused {saved}", file=sys.stderr, flush=True)
            continue
        cells = scenario(seed, n_images=a.images, shape=tuple(a.shape), families=fams)
        fam = json.loads(cells.attrs["true_noise_family"])
        shutil.rmtree(out, ignore_errors=True)
        t = time.perf_counter()
        run_pipeline(cells, out, tile_size=a.tile, stride=a.tile, n_bootstrap=a.bootstrap, spec=a.model,
                     n_orders=a.orders, seed=seed, workers=a.workers, progress=False, log=lambda m: None)
        dt = time.perf_counter() - t
        secs["posterior"] += dt
        tiles = make_tiles(cells, a.tile, a.tile)
        truth = truth_per_tile(cells, tiles, "image")
        idx, lo, hi, allowed = run_intervals(out)
        acc["posterior"].append((lo, hi, truth[idx], allowed, fam))
        n_tiles["posterior"] += idx.size
        save = {"fam": json.dumps(fam), "p_lo": lo, "p_hi": hi, "p_truth": truth[idx], "p_allowed": allowed,
                "p_secs": dt}
        if not a.no_lingam:
            std = discovery.standardize(cells, "image")
            t = time.perf_counter()
            mats = [discovery.tile_matrix(std, tile_members(tiles, k), "image") for k in idx]
            with ProcessPoolExecutor(a.workers) as pool:  # the bootstrap is embarrassingly parallel
                L = list(pool.map(_lingam, mats, [int(k) for k in idx]))
            dt = time.perf_counter() - t
            secs["lingam"] += dt
            ll = (np.stack([x[0] for x in L]), np.stack([x[1] for x in L]), truth[idx], np.stack([x[2] for x in L]))
            acc["lingam"].append((*ll, fam))
            n_tiles["lingam"] += idx.size
            save.update({"l_lo": ll[0], "l_hi": ll[1], "l_truth": ll[2], "l_allowed": ll[3], "l_secs": dt})
        np.savez(saved, **save)
        shutil.rmtree(out, ignore_errors=True)
        print(f"seed {seed}: {idx.size} tiles", file=sys.stderr, flush=True)
    for method, parts in acc.items():
        if not parts:
            continue
        tabs = [calibration_table(lo, hi, tr, al, fam) for lo, hi, tr, al, fam in parts]
        w = np.array([t["n_true"] for t in tabs])
        wa = np.array([t["n_absent"] for t in tabs])
        fams_all = sorted({f for t in tabs for f in t["coverage_by_family"]})
        summary = {"method": method, "model": a.model if method == "posterior" else "DirectLiNGAM bootstrap x100",
                   "tiles": n_tiles[method], "coverage": float(np.average([t["coverage"] for t in tabs], weights=w)),
                   "coverage_by_family": {f: float(np.mean([t["coverage_by_family"][f] for t in tabs
                                                            if f in t["coverage_by_family"]])) for f in fams_all},
                   "false_confident": float(np.average([t["false_confident"] for t in tabs], weights=wa)),
                   "forbidden_true": float(np.average([t["forbidden_true"] for t in tabs], weights=w)),
                   "width": float(np.average([t["width"] for t in tabs], weights=w)),
                   "seconds_per_tile": secs[method] / max(n_tiles[method], 1)}
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
