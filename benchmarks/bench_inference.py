"""Inference and discovery costs per tile, memory against tiles, and a public-size projection.

Run by hand (about 25 minutes on 2 cores): ``python benchmarks/bench_inference.py [--quick]``.
Prints Markdown for ``benchmarks/RESULTS.md``. On the same simulated 256-cell tiles it reports:

1. seconds per tile for each sampler path to reach ESS_bulk >= 400 on every allowed coefficient
   with r_hat <= 1.01 (nutpie with one compiled model and swapped data, at several chain/tune
   settings; PyMC's own NUTS with one model and ``pm.set_data``; nutpie on batches of tiles
   stacked into one model), and the share of tiles that got there;
2. DirectLiNGAM per tile, and the discovery trade-off: how good the per-tile prior is (causal order
   against the simulator's truth, separation of true and absent edges) for 0 / 5 / 20 / 100 tile
   resamples next to what they cost;
3. peak memory of writing ``posterior.nc`` against the number of tiles;
4. end to end (discovery, inference, writing) on a subset with the default 2-process executor,
   each phase timed, projected to the public size (14 images, ~2,000 tiles).
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
EXO = ("I14", "I5")


def tiles_for_bench(n_tiles: int, seed: int = 0):
    """``n_tiles`` 16 x 16 tiles spread over a simulated 3-composition series (standardised per image)."""
    import causalcrystal as cc
    from causalcrystal import discovery
    from causalcrystal.tiling import make_tiles, tile_members

    cells = cc.simulate((0.0, 0.1, 0.2), shape=(40, 40), seed=seed)
    tiles = make_tiles(cells, 16)
    std = discovery.standardize(cells, "image")
    idx = np.linspace(0, tiles.sizes["tile"] - 1, n_tiles).astype(int)
    return cells, tiles, idx, [discovery.tile_matrix(std, tile_members(tiles, k), "image") for k in idx]


def _priors(Xs):
    from causalcrystal.discovery import bootstrap_lingam
    from causalcrystal.priors import dag_prior, forbidden_into

    out = []
    for X in Xs:
        b = bootstrap_lingam(X, 5, exogenous=EXO, seed=0)
        out.append(dag_prior(b["order"], b["probability"], forbidden_into([0, 1], 8)))
    return out


def bench_samplers(Xs, priors, paths):
    """``paths``: (label, model name, sampler changes, number of tiles)."""
    from causalcrystal.sem import RHAT_MAX, compiled_model, load_spec, sample_tile

    rows = []
    for label, model, changes, n in paths:
        spec = load_spec(model).with_(**changes)
        t0 = time.perf_counter()
        compiled_model(spec)
        t_compile = time.perf_counter() - t0
        times, ess_ok, rhat_ok, both, reruns = [], 0, 0, 0, 0
        for k, (X, prior) in enumerate(zip(Xs[:n], priors[:n])):
            t = time.perf_counter()
            out = sample_tile(X, prior, spec, seed=k)
            times.append(time.perf_counter() - t)
            a = prior.allowed
            e, r = np.nanmin(out["ess_bulk"][a]) >= 400, np.nanmax(out["r_hat"][a]) <= RHAT_MAX
            ess_ok, rhat_ok, both = ess_ok + e, rhat_ok + r, both + (e and r)
            reruns += int(out["rerun_factor"]) > 0
        rows.append((label, n, t_compile, float(np.mean(times)), float(np.median(times)), ess_ok / n, rhat_ok / n,
                     both / n, reruns / n))
    return rows


def bench_batched(Xs, priors, K: int, n: int):
    """Several tiles stacked into one nutpie model (independent blocks), one run per batch, no re-runs.

    The posterior is the product of the tiles' posteriors, so this is exact; the question is
    whether sharing one gradient call beats the smaller step size a larger model needs."""
    import arviz as az
    import nutpie
    import pymc as pm
    import pytensor.tensor as pt

    from causalcrystal.priors import lower_pairs

    V = 8
    i, j = lower_pairs(V)
    with pm.Model() as model:
        Z = pm.Data("Z", np.zeros((K, 64, V)))
        rw = pm.Data("rw", np.ones((K, 64)))  # 0 on padding rows
        w = pm.Data("w", np.full((K, i.size), 0.5))
        m = pm.Data("m", np.ones((K, i.size)))
        beta = pm.NormalMixture("beta", w=pt.stack([w, 1 - w], axis=-1), mu=np.zeros((K, i.size, 2)),
                                sigma=np.array([1.0, 0.1]), shape=(K, i.size))
        c = pm.Normal("c", 0, 1, shape=(K, V))
        s = pm.HalfNormal("sigma", 1, shape=(K, V))
        B = pt.set_subtensor(pt.zeros((K, V, V))[:, i, j], beta * m)
        e = (Z - pt.matmul(Z, B.transpose(0, 2, 1)) - c[:, None, :]) / s[:, None, :]
        pm.Potential("ll", ((-pt.log(2 * s[:, None, :]) - pt.abs(e)) * rw[:, :, None]).sum())
    t0 = time.perf_counter()
    cm = nutpie.compile_pymc_model(model)
    t_compile = time.perf_counter() - t0
    total, ess_ok, rhat_ok = 0.0, 0, 0
    for b0 in range(0, n, K):
        idx = range(b0, b0 + K)
        nmax = max(Xs[k].shape[0] for k in idx)
        Zb, rwb = np.zeros((K, nmax, V)), np.zeros((K, nmax))
        for a, k in enumerate(idx):
            Zb[a, : Xs[k].shape[0]] = Xs[k][:, priors[k].order]
            rwb[a, : Xs[k].shape[0]] = 1
        W = np.stack([priors[k].w for k in idx])
        M = np.stack([priors[k].mask for k in idx]).astype(float)
        t = time.perf_counter()
        idata = nutpie.sample(cm.with_data(Z=Zb, rw=rwb, w=W, m=M), draws=500, tune=300, chains=2, cores=2,
                              seed=b0, progress_bar=False, low_rank_modified_mass_matrix=True)
        total += time.perf_counter() - t
        bt = idata.posterior["beta"].values
        for a, k in enumerate(idx):
            ds = az.convert_to_dataset({"b": bt[:, :, a][..., priors[k].mask]})
            ess_ok += float(az.ess(ds)["b"].min()) >= 400
            rhat_ok += float(az.rhat(ds)["b"].max()) <= 1.01
    return t_compile, total / n, ess_ok / n, rhat_ok / n


def bench_lingam(Xs):
    from causalcrystal.discovery import bootstrap_lingam, fit_lingam

    out = []
    for label, fn in [("one fit", lambda X: fit_lingam(X, seed=0)),
                      ("bootstrap x5", lambda X: bootstrap_lingam(X, 5, exogenous=EXO, seed=0)),
                      ("bootstrap x20", lambda X: bootstrap_lingam(X, 20, exogenous=EXO, seed=0)),
                      ("bootstrap x100", lambda X: bootstrap_lingam(X, 100, exogenous=EXO, seed=0))]:
        t = time.perf_counter()
        for X in Xs:
            fn(X)
        out.append((label, (time.perf_counter() - t) / len(Xs)))
    return out


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a present edge's weight > an absent edge's), ties counted half (Mann-Whitney)."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def bench_discovery_tradeoff(cells, tiles, idx, Xs, resamples=(0, 5, 20, 100)):
    """Prior quality per tile against the simulator's truth, for several tile bootstrap sizes.

    A true edge is one whose tile-standardised coefficient is at least 0.05 in size; absent edges
    are exactly zero in the truth. Reported: the share of true edges whose cause precedes the
    effect in the tile's prior order (otherwise the SEM cannot represent the edge at all), and the
    AUC of the prior inclusion weight w for true against absent edges among those the order allows.
    The image-level bootstrap (x100) is shared by all settings.
    """
    from causalcrystal.cells import DESCRIPTORS
    from causalcrystal.discovery import bootstrap_lingam, standardize, tile_matrix
    from causalcrystal.priors import PriorSpec, dag_prior, forbidden_into, inclusion_weights
    from causalcrystal.tiling import image_tiles, tile_members

    std = standardize(cells, "image")
    img_tiles = image_tiles(cells)
    image_prob = {}
    for k in range(img_tiles.sizes["tile"]):
        X = tile_matrix(std, tile_members(img_tiles, k), "image")
        image_prob[str(img_tiles["image"].values[k])] = bootstrap_lingam(X, 100, exogenous=EXO, seed=0)["probability"]
    truth = []
    for k, X in zip(idx, Xs):
        mem = tile_members(tiles, k)
        B = cells["true_B"].values[mem].mean(0)
        sd = np.stack([cells[v].values[mem] for v in DESCRIPTORS], axis=1).std(0)
        truth.append(B * sd[None, :] / sd[:, None])
    rows = []
    for n in resamples:
        t = time.perf_counter()
        boots = [bootstrap_lingam(X, n, exogenous=EXO, seed=1) for X in Xs]
        dt = (time.perf_counter() - t) / len(Xs)
        in_order, pos, neg = [], [], []
        for k, b, Bt in zip(idx, boots, truth):
            cand = b["candidates"][0]["order"] if b["candidates"] else b["order"]
            w = inclusion_weights(b["probability"], image_prob[str(tiles["image"].values[k])], max(n, 1), PriorSpec())
            prior = dag_prior(cand, w, forbidden_into([0, 1], 8))
            true_edge, absent = np.abs(Bt) >= 0.05, Bt == 0
            in_order.append(prior.allowed[true_edge].mean())
            wm = np.zeros((8, 8))
            wm[prior.allowed] = w[prior.allowed]
            pos.append(wm[prior.allowed & true_edge])
            neg.append(wm[prior.allowed & absent])
        rows.append((n, dt, float(np.mean(in_order)), _auc(np.concatenate(pos), np.concatenate(neg))))
    return rows


def bench_memory(cells, tiles, Xs):
    """Peak traced memory of writing posterior.nc for T tiles (one tile's draws reused)."""
    import xarray as xr

    from causalcrystal.engine import write_posterior
    from causalcrystal.priors import dag_prior
    from causalcrystal.sem import load_spec, sample_tile

    spec = load_spec("laplace")
    prior = dag_prior(list(range(8)), np.full((8, 8), 0.5))
    one = sample_tile(Xs[0], prior, spec, seed=0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for T in (10, 40, 160, 640):
            tiles_T = tiles.isel(tile=np.arange(T) % tiles.sizes["tile"]).assign_coords(tile=np.arange(T))
            tiles_T["n_cells"].values[:] = Xs[0].shape[0]
            for k in range(T):
                np.savez(Path(tmp) / f"tile_{k:05d}.npz", **one)
            disc = xr.Dataset({"probability": (("tile", "effect", "cause"), np.full((T, 8, 8), 0.5))})
            path = Path(tmp) / "posterior.nc"
            tracemalloc.start()
            t = time.perf_counter()
            write_posterior(path, tiles_T, disc, [prior] * T, list(range(T)), Path(tmp), spec, "image")
            dt = time.perf_counter() - t
            peak = tracemalloc.get_traced_memory()[1] / 1e6
            tracemalloc.stop()
            rows.append((T, peak, dt, path.stat().st_size / 1e6))
    return rows


def bench_end_to_end(shape, n_images, n_bootstrap):
    import causalcrystal as cc
    from causalcrystal.engine import run_pipeline

    comps = tuple(np.linspace(0, 0.2, n_images))
    cells = cc.simulate(comps, shape=shape, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = run_pipeline(cells, Path(tmp) / "run", n_bootstrap=n_bootstrap, progress=False, log=lambda m: None)
        t_run = time.perf_counter() - t
    return cells.sizes["cell"], res, t_run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer tiles (a smoke run of this script)")
    ap.add_argument("--only-nutpie", action="store_true", help="only the nutpie sampler rows, then stop")
    args = ap.parse_args()
    n = 6 if args.quick else 20
    cells, tiles, idx, Xs = tiles_for_bench(n)
    priors = _priors(Xs)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("\n### Per-tile NUTS to ESS_bulk >= 400, r_hat <= 1.01 (256 cells, 8 variables), one tile at a time\n")
    print("| sampler path | tiles | compile s (once) | mean s per tile | median | ESS >= 400 | r_hat <= 1.01 | both "
          "| re-run |")
    print("|---|---|---|---|---|---|---|---|---|")
    few = 3 if args.quick else 5
    # every setting explicit: the model files carry their own sampler defaults
    paths = [("nutpie laplace, 2 chains, tune 300, draws 500", "laplace", {"tune": 300, "thin": 1}, n),
             ("nutpie laplace, 2 chains, tune 200, draws 500", "laplace", {"tune": 200, "thin": 1}, n),
             ("nutpie laplace, 2 chains, tune 200, draws 500, thin 2 (default)", "laplace",
              {"tune": 200, "thin": 2}, n),
             ("nutpie laplace, 4 chains, tune 200, draws 250, thin 2", "laplace",
              {"chains": 4, "tune": 200, "draws": 250, "thin": 2}, n),
             ("nutpie gennorm (bounded shape), default settings", "gennorm", {}, few),
             ("PyMC NUTS laplace, one model + pm.set_data, default settings", "laplace", {"name": "pymc"}, few)]
    if args.only_nutpie:
        paths = paths[:4]
    for label, k, tc, mean, med, e, r, both, rerun in bench_samplers(Xs, priors, paths):
        print(f"| {label} | {k} | {tc:.1f} | {mean:.2f} | {med:.2f} | {e:.0%} | {r:.0%} | {both:.0%} | {rerun:.0%} |")
    if args.only_nutpie:
        return
    for K in (4, 8):
        nb = (n // K) * K
        if nb == 0:
            continue
        tc, per, e, r = bench_batched(Xs, priors, K, nb)
        print(f"| nutpie laplace, {K} tiles stacked per model, no re-run | {nb} | {tc:.1f} | {per:.2f} | - | {e:.0%} "
              f"| {r:.0%} | - | - |")
    print("\n### DirectLiNGAM per 256-cell tile, and what the tile bootstrap buys\n")
    print("| work | s per tile |")
    print("|---|---|")
    for label, t in bench_lingam(Xs[: min(n, 8)]):
        print(f"| {label} | {t:.2f} |")
    print("\n| tile resamples (image x100 shared) | s per tile | true edges the prior order allows | AUC of w, true vs "
          "absent |")
    print("|---|---|---|---|")
    for nb, dt, in_order, auc in bench_discovery_tradeoff(cells, tiles, idx, Xs):
        print(f"| {nb} | {dt:.2f} | {in_order:.2f} | {auc:.2f} |")
    print("\n### Peak memory of writing posterior.nc (2 chains x 500 draws, 256 cells per tile)\n")
    print("| tiles | peak traced MB | write s | file MB |")
    print("|---|---|---|---|")
    for T, peak, dt, size in bench_memory(cells, tiles, Xs):
        print(f"| {T} | {peak:.0f} | {dt:.1f} | {size:.0f} |")
    shape, n_img = ((24, 24), 2) if args.quick else ((56, 56), 3)
    print("\n### End to end (defaults, 2 worker processes)\n")
    print("| tile resamples | cells | tiles | discovery s | sampling s | writing s | total s | s per tile | "
          "projected min for 2,000 tiles |")
    print("|---|---|---|---|---|---|---|---|---|")
    for nb in (5, 20):
        n_cells, res, t_run = bench_end_to_end(shape, n_img, nb)
        tm = res["timings"]
        per = t_run / res["n_tiles"]
        # Projection: discovery and sampling scale with tiles; start-up (compile once per worker) does not.
        scale = 2000 / res["n_tiles"]
        proj = (tm["discovery"] * scale + tm["sampling"] * scale + tm["writing"] * scale) / 60
        print(f"| {nb} | {n_cells} | {res['n_tiles']} | {tm['discovery']:.0f} | {tm['sampling']:.0f} | "
              f"{tm['writing']:.1f} | {t_run:.0f} | {per:.2f} | {proj:.0f} |")


if __name__ == "__main__":
    import sys

    sys.stdout.reconfigure(line_buffering=True)  # rows appear as they are measured
    main()
