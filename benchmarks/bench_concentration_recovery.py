"""Does the LGD concentration model recover the MPB from images it did not simulate?

The stage-2 model's own tests draw tile summaries from the stage-2 model (``simulate_summaries``).
Here the truth goes through the whole pipeline instead: for each replicate, ``y0`` and ``eps0`` are
drawn from the default specification's priors (``models/concentration/lgd.toml``: y0 ~ N(0.20,
0.05) on [0, 0.5], eps0 ~ log-normal(median 5, log-sd 0.5)), a series of cell images is simulated
with them (``causalcrystal.simulate``: 180-degree walls, a substrate interface, Laplace noise;
the cell simulator, not the stage-2 model), then ``run`` (defaults) and ``concentration`` (the
``lgd`` specification, the simulator's LGD numbers as reference amplitudes) are run on it. With the
truth drawn from the prior, a calibrated posterior's 90 % intervals hold it in 90 % of replicates
(simulation-based calibration; Talts et al. 2018), and the rank of the truth among the posterior
draws is uniform.

Run by hand: ``python benchmarks/bench_concentration_recovery.py --replicates 16`` (~1.5 min per
replicate on 2 cores). Prints Markdown rows for ``benchmarks/RESULTS.md`` and writes
``--csv`` (one row per replicate).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

SERIES = (0.0, 0.07, 0.10, 0.13, 0.20)   # the public series' compositions


def _truth(rng, spec):
    from scipy import stats

    mu, sd, lo, hi = spec.y0_prior
    y0 = float(stats.truncnorm.rvs((lo - mu) / sd, (hi - mu) / sd, mu, sd, random_state=rng))
    med, lsd = spec.eps0_prior
    eps0 = float(med * np.exp(lsd * rng.standard_normal()))
    return y0, eps0


def replicate(k: int, tmp: Path, args, specs) -> list[dict]:
    import causalcrystal as cc
    from causalcrystal import lgd
    from causalcrystal.concentration import run_concentration
    from causalcrystal.engine import run_pipeline

    rng = np.random.default_rng([20261201, k])
    y0, eps0 = _truth(rng, specs[0])   # the truth from the first specification's priors
    params = lgd.LGDParams(y0=y0, eps0=eps0)
    cells = cc.simulate(SERIES, shape=(args.size, args.size), images_per_composition=args.images, seed=1000 + k,
                        params=params)
    run = tmp / f"run{k}"
    t0 = time.perf_counter()
    run_pipeline(cells, run, seed=k, workers=args.workers, progress=False, overwrite=True, log=lambda m: None)
    t1 = time.perf_counter()
    rows = []
    for spec in specs:
        out = run / f"concentration_{spec.name}"
        t2 = time.perf_counter()
        run_concentration(run, out, spec, seed=k, universality_check=False, params=params, overwrite=True,
                          log=lambda m: None)
        rows.append(_row(k, y0, eps0, spec, out, params, t1 - t0, time.perf_counter() - t2))
    return rows


def _row(k, y0, eps0, spec, out, params, run_s, conc_s) -> dict:
    import arviz as az

    idata = az.from_netcdf(out / "concentration.nc")
    cont = json.loads((out / "contraction.json").read_text())
    row = {"replicate": k, "spec": spec.name, "y0": y0, "eps0": eps0, "y_star": y0 + 1 / eps0, "run_s": run_s,
           "conc_s": conc_s}
    for name, truth in (("y0", y0), ("eps0", eps0), ("y_star", y0 + 1 / eps0)):
        draws = idata.posterior[name].values.ravel()
        lo, hi = np.quantile(draws, [0.05, 0.95])
        row.update({f"{name}_mean": float(draws.mean()), f"{name}_lo": float(lo), f"{name}_hi": float(hi),
                    f"{name}_covered": bool(lo <= truth <= hi), f"{name}_rank": float((draws < truth).mean()),
                    f"{name}_contraction": cont.get(name, {}).get("contraction", np.nan),
                    f"{name}_identified": cont.get(name, {}).get("identified"),
                    f"{name}_converged": cont.get(name, {}).get("converged"),
                    f"{name}_prior_width": float(np.diff(cont[name]["prior_90"])[0])})
    row["max_rhat"] = float(az.rhat(idata.posterior[["y0", "eps0", "y_star"]]).to_array().max())
    row.update(stage1_ratios(out, spec, params))
    return row


def stage1_ratios(conc_dir: Path, spec, params) -> dict:
    """Per coupling with an LGD amplitude: the median over images of (median stage-1 tile value /
    the true link at the image's Sm fraction). 1 = the tiles measure what the link says; a ratio
    that differs from 1 by the same factor at every composition is an amplitude the prior must
    absorb, one that drifts with composition moves y0 and eps0."""
    import xarray as xr

    from causalcrystal.concentration import link_curve, reference_amplitude

    summ = xr.load_dataset(conc_dir / "tile_summaries.nc", engine="h5netcdf")
    out = {}
    for c in spec.couplings:
        A = reference_amplitude(c, params) if c.link in ("ps", "cross") else None
        if A is None or c.label not in summ["coupling"].values:
            continue
        used = summ["used"].sel(coupling=c.label).values.astype(bool)
        img = summ["image"].values
        ratios = []
        for lab in dict.fromkeys(img.tolist()):
            m = (img == lab) & used
            if m.any():
                y = float(summ["sm_fraction"].values[img == lab][0])
                truth = float(link_curve(c.link, np.array([y]), A, params.y0, params.eps0, spec.k_cross)[0])
                ratios.append(float(np.median(summ["mean"].sel(coupling=c.label).values[m])) / truth)
        out[f"ratio_{c.label}"] = float(np.median(ratios)) if ratios else np.nan
    return out


def main() -> None:
    import pandas as pd

    from causalcrystal.concentration import load_spec

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicates", type=int, default=16)
    ap.add_argument("--size", type=int, default=24, help="cells per image side (default 24)")
    ap.add_argument("--images", type=int, default=2, help="images per composition (default 2)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--specs", default="lgd",
                    help="comma-separated concentration specifications fitted to every run (names or .toml paths; "
                         "the truth is drawn from the first one's priors)")
    ap.add_argument("--csv", default="concentration_recovery.csv")
    args = ap.parse_args()
    specs = [load_spec(v.strip()) for v in args.specs.split(",") if v.strip()]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.replicates):
            for r in replicate(k, Path(tmp), args, specs):
                rows.append(r)
                print(f"replicate {k} {r['spec']}: y0 {r['y0']:.3f} [{r['y0_lo']:.3f}, {r['y0_hi']:.3f}]  y_star "
                      f"{r['y_star']:.3f} [{r['y_star_lo']:.3f}, {r['y_star_hi']:.3f}]  r_hat {r['max_rhat']:.3f}  "
                      f"({r['run_s']:.0f} + {r['conc_s']:.0f} s)", flush=True)
            pd.DataFrame(rows).to_csv(args.csv, index=False)
    for name, df in pd.DataFrame(rows).groupby("spec", sort=False):
        _table(df, name, args)


def _table(df, name, args) -> None:
    n = len(df)
    print(f"\n{time.strftime('%Y-%m-%d')}, {platform.machine()}, spec {name}: {n} replicates, {len(SERIES)} "
          f"compositions x {args.images} images of {args.size} x {args.size} cells\n")
    print("| quantity | 90 % intervals holding the truth | binomial s.e. | mean rank of the truth | "
          "mean posterior 90 % width | prior 90 % width | contraction (median) |")
    print("|---|---|---|---|---|---|---|")
    for name in ("y0", "eps0", "y_star"):
        cov = df[f"{name}_covered"].mean()
        print(f"| {name} | {cov:.2f} ({int(df[f'{name}_covered'].sum())}/{n}) | {np.sqrt(0.9 * 0.1 / n):.2f} | "
              f"{df[f'{name}_rank'].mean():.2f} | {(df[f'{name}_hi'] - df[f'{name}_lo']).mean():.3f} | "
              f"{df[f'{name}_prior_width'].mean():.3f} | "
              f"{df[f'{name}_contraction'].median():.2f} |")
    ratio = [c for c in df.columns if c.startswith("ratio_")]
    if ratio:
        print("\nStage-1 tile values / the true link (median over images, then over replicates; 10-90 %):\n")
        print("| coupling | median ratio | 10 % | 90 % |")
        print("|---|---|---|---|")
        for c in ratio:
            q = df[c].quantile([0.5, 0.1, 0.9]).values
            print(f"| {c.removeprefix('ratio_')} | {q[0]:.2f} | {q[1]:.2f} | {q[2]:.2f} |")


if __name__ == "__main__":
    main()
