# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Model comparison on a simulated series: what the evidence says against the truth
#
# A simulated Sm-BFO composition series (known causal structure and known concentration
# dependence of every coupling) goes through:
#
# 1. the per-tile pipeline (`run_pipeline`);
# 2. **per-tile model comparison** (`compare_run`): LiNGAM's candidate causal orders x noise
#    families, PSIS-LOO with stacking weights, model-averaged coefficients, and direction
#    probabilities for `Py -> Px` and `a -> b` per tile and per image;
# 3. the **concentration model**: the LGD link specification against an all-universal
#    alternative (every coupling constant in the Sm fraction), and the per-coupling universality
#    evidence;
# 4. (optional, `CAUSALCRYSTAL_NOTEBOOK_JOINT=1`, slow) the one-stage joint model against the
#    two-stage fit.
#
# Every section ends with a table of *what the evidence says* next to *what the simulator did*.
#
# Size: `CAUSALCRYSTAL_NOTEBOOK_SIZE=small` (three 24 x 24 images, 2 compared tiles, short
# chains; what the test suite runs) or `full` (default; five compositions of 40 x 40 cells,
# 10 compared tiles, three noise families). Outputs go to `CAUSALCRYSTAL_NOTEBOOK_OUT` (default
# `experiments/out/model_comparison`).

# %%
import json
import os
import time
import warnings
from dataclasses import replace
from pathlib import Path

import arviz as az
import numpy as np
import pandas as pd
import xarray as xr

import causalcrystal as cc
from causalcrystal import concentration as cn
from causalcrystal import lgd
from causalcrystal.compare import compare_run
from causalcrystal.engine import run_pipeline
from causalcrystal.report import write_report
from causalcrystal.sem import GaussianNoiseWarning, load_spec
from causalcrystal.simulator import simulate
from causalcrystal.tiling import SmallTileWarning, make_tiles, tile_members

NAME = "model_comparison"
SIZE = os.environ.get("CAUSALCRYSTAL_NOTEBOOK_SIZE", "full")
if SIZE not in ("small", "full"):
    raise ValueError(f"CAUSALCRYSTAL_NOTEBOOK_SIZE={SIZE!r}: use 'small' or 'full'.")
JOINT = os.environ.get("CAUSALCRYSTAL_NOTEBOOK_JOINT", "0") not in ("", "0", "false", "no")


def _default_out() -> Path:
    """experiments/out/<name>, whether run as a script, with runpy or from Jupyter (no __file__)."""
    here = Path(globals().get("__file__", "")).resolve().parent if "__file__" in globals() else None
    if here is None:
        cwd = Path.cwd()
        here = cwd if cwd.name == "experiments" else cwd / "experiments"
    return here / "out" / NAME


OUT = Path(os.environ.get("CAUSALCRYSTAL_NOTEBOOK_OUT") or _default_out())

SETTINGS = {
    "small": {"compositions": (0.0, 0.1, 0.2), "shape": (24, 24), "tile_size": 12, "stride": 12, "n_bootstrap": 5,
              "image_bootstrap": 10, "draws": 200, "tune": 200, "target_ess": 50, "max_tiles": 2, "candidates": 2,
              "families": ("laplace", "normal"), "conc_draws": 300, "conc_tune": 300, "joint_draws": 300,
              "joint_tune": 300},
    "full": {"compositions": (0.0, 0.07, 0.10, 0.13, 0.20), "shape": (40, 40), "tile_size": 16, "stride": None,
             "n_bootstrap": 5, "image_bootstrap": 100, "draws": None, "tune": None, "target_ess": None,
             "max_tiles": 10, "candidates": 3, "families": ("laplace", "studentt", "normal"), "conc_draws": None,
             "conc_tune": None, "joint_draws": 1000, "joint_tune": 1000},
}[SIZE]
# the seed of every step (the tests vary it with CAUSALCRYSTAL_NOTEBOOK_SEED)
SEED = int(os.environ.get("CAUSALCRYSTAL_NOTEBOOK_SEED", "1"))
PAIRS = [("Py", "Px"), ("a", "b")]  # p_forward = P(first -> second); the simulator has Py -> Px, no a - b edge
print(f"size {SIZE!r}, joint model {'on' if JOINT else 'off'}, outputs in {OUT}")
print(SETTINGS)

# %% [markdown]
# ## Where the outputs go (and what may be replaced)
#
# Everything is written inside `OUT` (`run/`, `compare/`, `concentration/`, CSV tables,
# `report.html`). Re-running **replaces this notebook's own previous outputs**: `overwrite=True`
# is passed to `run_pipeline`, `compare_run`, `run_concentration` and `write_report`, only ever
# for paths inside `OUT`. The folder is marked with `.causalcrystal-notebook`; if `OUT` exists,
# is not empty and lacks the marker, the notebook stops instead of writing into someone's folder.

# %%
MARKER = OUT / ".causalcrystal-notebook"
if OUT.exists() and any(OUT.iterdir()) and not MARKER.exists():
    raise FileExistsError(f"{OUT} exists, is not empty and was not written by this notebook; set "
                          "CAUSALCRYSTAL_NOTEBOOK_OUT to a new folder.")
OUT.mkdir(parents=True, exist_ok=True)
MARKER.write_text(NAME + "\n")
RUN, CMP, CONC = OUT / "run", OUT / "compare", OUT / "concentration"
timings: dict[str, float] = {}
clock = time.perf_counter()
def quiet(msg: str) -> None:
    """Swallow the library's progress messages (pass log=print to see them)."""


# %% [markdown]
# ## 1. Simulated series and the per-tile run
#
# Laplace noise, one 180-degree wall per image, a substrate strip. The run fits each tile in its
# top candidate order only (`n_orders=1`; the default averages over 3): section 2 is where the
# candidate orders are compared, so the run is the single-model baseline. `workers=1`: tiles run in
# this process (a notebook cannot give spawned worker processes the `__main__` guard they need
# when run as a script; nutpie still runs the chains in parallel threads).

# %%
cells = simulate(SETTINGS["compositions"], shape=SETTINGS["shape"], seed=SEED)
spec = load_spec("laplace").with_(draws=SETTINGS["draws"], tune=SETTINGS["tune"],
                                  target_ess=SETTINGS["target_ess"])
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SmallTileWarning)
    run = run_pipeline(cells, RUN, tile_size=SETTINGS["tile_size"], stride=SETTINGS["stride"],
                       n_bootstrap=SETTINGS["n_bootstrap"], image_bootstrap=SETTINGS["image_bootstrap"], spec=spec,
                       n_orders=1, seed=SEED, workers=1, overwrite=True, progress=False, log=quiet)
timings["run_pipeline"] = time.perf_counter() - t0
print(f"{run['n_tiles']} tiles, {run['flagged']} flagged, {timings['run_pipeline']:.0f} s")

# the truth per tile: the tile average of the simulator's per-cell B, in the run's standardised units
st = json.loads((RUN / "manifest.json").read_text())["settings"]
with warnings.catch_warnings():
    warnings.simplefilter("ignore", SmallTileWarning)
    tiles = make_tiles(cells, st["tile_size"], st["stride"], st["min_cells"])
const = xr.load_dataset(RUN / "posterior.nc", engine="h5netcdf", group="constant_data")
NAMES = list(const["variable"].values)


def true_std(k: int) -> np.ndarray:
    """Tile k's average true B[effect, cause], in standardised units (B_raw scale_j / scale_i)."""
    s = const["scale"].sel(tile=k).values
    return cells["true_B"].values[tile_members(tiles, k)].mean(0) * s[None, :] / s[:, None]


# %% [markdown]
# ## 2. Candidate orders x noise families, per tile
#
# For each compared tile, `compare_run` fits the SEM under the tile's top LiNGAM candidate
# orders and each noise family, compares them by PSIS-LOO over the tile's cells and gives
# stacking weights. Against the truth, each candidate order is scored by how many of the
# tile's true edges it *forbids* (puts the effect before the cause): a good comparison puts
# its weight on orders with few such errors. The simulator's noise is Laplace per cell, but a
# tile that crosses a wall or the interface mixes cells with different coefficients, so its
# residuals under one linear SEM are a scale mixture with heavier tails than Laplace: Student-t
# winning such tiles is the comparison noticing misspecification, not a failure of the family.
# The Gaussian family is the baseline that cannot identify directions.

# %%
t0 = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", GaussianNoiseWarning)  # the normal family is a deliberate baseline
    cmp_res = compare_run(RUN, CMP, cells, candidates=SETTINGS["candidates"], families=SETTINGS["families"],
                          pairs=PAIRS, max_tiles=SETTINGS["max_tiles"], seed=SEED, workers=1, overwrite=True,
                          progress=False, log=quiet)
timings["compare"] = time.perf_counter() - t0
models, averaged, directions = cmp_res["models"], cmp_res["averaged"], cmp_res["directions"]


def forbidden_true_edges(order_text: str, truth: np.ndarray) -> int:
    pos = {v: p for p, v in enumerate(order_text.split())}
    return int(sum(1 for i, j in zip(*np.nonzero(truth)) if pos[NAMES[j]] > pos[NAMES[i]]))


models["true_edges_forbidden"] = [forbidden_true_edges(o, true_std(int(t))) for o, t in zip(models["order"],
                                                                                              models["tile"])]
cols = ["tile", "model", "order", "candidate_frequency", "elpd_diff", "dse", "weight", "true_edges_forbidden",
        "pareto_k_max", "divergences"]
print(models[cols].to_string(index=False, float_format="{:.3g}".format))
by_family = models.groupby("family")["weight"].sum() / models["tile"].nunique()
print("mean stacking weight per noise family (truth: laplace):")
print(by_family.to_string(float_format="{:.3f}".format))
fewest = models.groupby("tile")["true_edges_forbidden"].transform("min")
w_best_orders = float(models.loc[models["true_edges_forbidden"] == fewest, "weight"].sum() / models["tile"].nunique())
print(f"mean weight on each tile's least-wrong candidate order(s): {w_best_orders:.3f}")

# %% [markdown]
# ### Model-averaged coefficients against the truth
#
# `averaged.csv` holds the stacking mixture of every model's posterior of `B` (standardised
# units, equal-tailed 90 % interval `eti_5%`-`eti_95%`). Next to it, the run's single model (the top
# candidate order, Laplace noise; 90 % HDI from `summary.csv`) for the same tiles and edges.

# %%
summary = pd.read_csv(RUN / "summary.csv")
rows = []
# (itertuples needs identifiers: the interval columns' % signs are dropped for the loop)
for r in averaged.rename(columns={"eti_5%": "eti_5", "eti_95%": "eti_95"}).itertuples(index=False):
    i, j = NAMES.index(r.effect), NAMES.index(r.cause)
    truth = true_std(int(r.tile))[i, j]
    one = summary[(summary["tile"] == r.tile) & (summary["effect"] == r.effect) & (summary["cause"] == r.cause)]
    rows.append({"tile": r.tile, "edge": f"{r.effect}<-{r.cause}", "truth": truth, "avg_mean": r.mean,
                 "avg_covered": r.eti_5 <= truth <= r.eti_95, "p_allowed": r.p_allowed, "p_sign": r.p_sign,
                 "avg_sign_ok": np.sign(r.mean) == np.sign(truth),
                 "run_mean": float(one["mean"].iloc[0]) if len(one) else 0.0,
                 "run_covered": bool(len(one) and one["hdi_5%"].iloc[0] <= truth <= one["hdi_95%"].iloc[0])
                 if len(one) else truth == 0})
avg_vs_truth = pd.DataFrame(rows)
avg_vs_truth.to_csv(OUT / "averaged_vs_truth.csv", index=False)
true_edges = avg_vs_truth[avg_vs_truth["truth"] != 0]
avg_table = pd.DataFrame({
    "edges": ["true edges", "absent edges"],
    "n": [len(true_edges), int((avg_vs_truth["truth"] == 0).sum())],
    "coverage_averaged": [true_edges["avg_covered"].mean(), avg_vs_truth.loc[avg_vs_truth["truth"] == 0,
                                                                             "avg_covered"].mean()],
    "coverage_run_model": [true_edges["run_covered"].mean(), avg_vs_truth.loc[avg_vs_truth["truth"] == 0,
                                                                              "run_covered"].mean()],
    "mae_averaged": [np.abs(true_edges["avg_mean"] - true_edges["truth"]).mean(),
                     np.abs(avg_vs_truth.loc[avg_vs_truth["truth"] == 0, "avg_mean"]).mean()],
    "mae_run_model": [np.abs(true_edges["run_mean"] - true_edges["truth"]).mean(),
                      np.abs(avg_vs_truth.loc[avg_vs_truth["truth"] == 0, "run_mean"]).mean()],
})
print(avg_table.to_string(index=False, float_format="{:.3f}".format))

# %% [markdown]
# ### Edge directions against the truth
#
# `p_forward` is the pseudo-BMA+ probability of `first -> second` from comparing the two
# orientations of the pair by LOO. The simulator has `Py -> Px` (coefficient `-a12/a11`, zero in
# the substrate and weak in walls) and **no** edge between `a` and `b` (both are children of
# `Px`, `I14`, `I5`), so with the rest of the causal order right the two orientations describe
# the same distribution and `p(a -> b)` should stay near 0.5. The comparison is *conditional on
# the rest of the order* (the tile's top candidate, or the image's LiNGAM order): if that order
# puts `Vol`, the common child of `a` and `b`, before them, conditioning on it couples `a` and
# `b` and one orientation can win decisively although no edge exists; `order` in
# `directions.csv` shows which order was used. A whole image is also a misspecified model: it
# mixes substrate and film and domains of opposite polarisation, whose different intercepts
# couple `a` and `b` beyond what a single linear SEM explains. `true_coef_Px_Py` is the tile's (or image's)
# average true `Px <- Py` coefficient in standardised units: where it is tiny, no direction can
# be told.

# %%
def dir_truth(r) -> float:
    if r.level == "tile":
        return float(true_std(int(r.tile))[NAMES.index("Px"), NAMES.index("Py")])
    mem = np.flatnonzero(cells["image"].values == r.image)
    B = cells["true_B"].values[mem].mean(0)
    sd = cells[["Px", "Py"]].isel(cell=mem)
    return float(B[NAMES.index("Px"), NAMES.index("Py")] * sd["Py"].std().item() / sd["Px"].std().item())


d = directions.copy()
d["true_direction"] = np.where(d["pair"] == "Py->Px", "Py -> Px", "none (p ~ 0.5 expected)")
d["true_coef_Px_Py"] = [dir_truth(r) if r.pair == "Py->Px" else np.nan for r in d.itertuples(index=False)]
d["says"] = np.select([d["p_forward"] > 0.9, d["p_forward"] < 0.1], ["forward", "backward"], "undecided")
d["agrees"] = np.where(d["pair"] == "Py->Px", d["says"] == "forward", d["says"] == "undecided")
dcols = ["level", "tile", "image", "pair", "n_cells", "p_forward", "p_forward_mcse", "elpd_diff", "dse", "lingam_forward",
         "lingam_backward", "true_direction", "true_coef_Px_Py", "says", "agrees"]
print(d[dcols].to_string(index=False, float_format="{:.3g}".format))
d[dcols].to_csv(OUT / "directions_vs_truth.csv", index=False)

# %% [markdown]
# ## 3. Concentration dependence: LGD links against an all-universal alternative
#
# Stage 1 summarises each tile's posterior of each coupling in raw units; stage 2 fits the
# hierarchy (tiles around image values around the link curve). Strain <- polarisation couplings
# use only tiles inside one domain (a tile across a wall averages the coupling over both signs).
# Couplings no usable tile's causal order allows cannot be fitted and are dropped first (said below). `run_concentration` fits the LGD
# specification and, per coupling, the universality comparison (`couplings.csv`); then the
# whole specification is compared with an all-universal one by leave-one-image-out LOO.

# %%
conc_spec = cn.load_spec("lgd")
if SETTINGS["conc_draws"]:
    conc_spec = replace(conc_spec, draws=SETTINGS["conc_draws"], tune=SETTINGS["conc_tune"])
summ = cn.tile_summaries(RUN, conc_spec)
usable = [c for c in conc_spec.couplings
          if len(set(summ["image"].values[summ["used"].sel(coupling=c.label).values].tolist())) >= 2]
dropped = sorted({c.label for c in conc_spec.couplings} - {c.label for c in usable})
conc_spec = replace(conc_spec, couplings=tuple(usable))
print(f"couplings fitted: {[c.label for c in usable]}; dropped (allowed in fewer than 2 images): {dropped}")

t0 = time.perf_counter()
conc = cn.run_concentration(RUN, CONC, conc_spec, seed=SEED, universality_check=True, overwrite=True, log=quiet)
timings["concentration"] = time.perf_counter() - t0
couplings = conc["couplings"]
print(f"{timings['concentration']:.0f} s, {conc['divergences']} divergences")

# %% [markdown]
# ### The truth behind each coupling
#
# From the simulator's own per-cell coefficients: per image, the median over film cells away
# from walls (`|profile| > 0.9`) of each coupling in raw units (oriented by the sign of the
# cell's `Px` where the specification orients it; a `total` coupling from `(I - B)^-1`). A
# coupling whose value changes by more than 5 % of its size across the series is
# concentration-*dependent*, otherwise *universal*.

# %%
profile = cells["true_profile"].values
clean = (cells["true_region"].values == "film") & (np.abs(profile) > 0.9)
images = list(dict.fromkeys(cells["image"].values.tolist()))
true_rows = []
for c in conc_spec.couplings:
    i, j = NAMES.index(c.effect), NAMES.index(c.cause)
    per_image = []
    for img in images:
        m = clean & (cells["image"].values == img)
        B = cells["true_B"].values[m]
        vals = (np.linalg.inv(np.eye(len(NAMES))[None] - B) if c.effect_kind == "total" else B)[:, i, j]
        if c.orient:
            vals = vals * np.sign(profile[m])
        per_image.append(float(np.median(vals)))
    per_image = np.asarray(per_image)
    rel = float(np.ptp(per_image) / max(np.abs(per_image).max(), 1e-300))
    true_rows.append({"coupling": c.label, "true_values": np.round(per_image, 4).tolist(), "true_rel_range": rel,
                      "truth": "dependent" if rel > 0.05 else "universal"})
truth_table = pd.DataFrame(true_rows)
print(truth_table.to_string(index=False, float_format="{:.3f}".format))

# %% [markdown]
# ### The LGD specification against an all-universal one
#
# The alternative: every coupling `universal`. `models/concentration/universal.toml` is used
# when it exists; otherwise it is built here with `spec.with_links(...)`. A reference amplitude
# (`amplitude = "lgd"`) belongs to the physics link, so the alternative's amplitudes get the wide
# prior (as the per-coupling comparison in `universality` does). Both fits share the compiled
# model (only the links differ), and LOO leaves one image out per coupling.

# %%
uni_path = cn.SPECS_DIR / "universal.toml"
uni_spec, uni_source = None, "spec.with_links(all universal)"
if uni_path.is_file():
    from_file = {c.label: c for c in cn.load_spec(uni_path).couplings}
    missing = [c.label for c in usable if c.label not in from_file]
    if missing:  # both fits must see the same couplings for one LOO comparison
        uni_source += f" ({uni_path.name} lacks {missing})"
    else:  # the same couplings in the same order as the LGD fit, with its sampler settings
        uni_spec = replace(cn.load_spec(uni_path), couplings=tuple(from_file[c.label] for c in usable),
                           draws=conc_spec.draws, tune=conc_spec.tune, chains=conc_spec.chains)
        uni_source = str(uni_path)
if uni_spec is None:
    uni_spec = conc_spec.with_links(**{c.label: "universal" for c in conc_spec.couplings})
uni_spec = replace(uni_spec, name="all-universal",
                   couplings=tuple(replace(c, amplitude=None) if c.amplitude == "lgd" else c
                                   for c in uni_spec.couplings))
summ_used = xr.load_dataset(CONC / "tile_summaries.nc", engine="h5netcdf")
summ_used["used"] = summ_used["used"].astype(bool)
t0 = time.perf_counter()
lgd_fit = az.from_netcdf(CONC / "concentration.nc")
# What the series taught the model about the MPB (prior from the PyMC model itself vs posterior)
fig_pp = cc.plots.plot_prior_posterior(lgd_fit)
fig_pp.savefig(OUT / "prior_posterior.png", dpi=90)
uni_fit = cn.fit(summ_used, uni_spec, seed=SEED)
timings["all_universal_fit"] = time.perf_counter() - t0


def pointwise(idata) -> az.InferenceData:
    """The (coupling, image) log-likelihoods as one observation dimension (images without tiles dropped)."""
    ll = idata.log_likelihood["m"].stack(obs=("coupling", "image"))
    keep = (ll != 0).any(("chain", "draw")).values
    ll = ll.isel(obs=np.flatnonzero(keep))
    ll = ll.drop_vars(["obs", "coupling", "image"]).assign_coords(obs=np.arange(ll.sizes["obs"]))
    return az.InferenceData(posterior=idata.posterior[["y0"]], log_likelihood=xr.Dataset({"m": ll}))


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    spec_cmp = az.compare({"lgd": pointwise(lgd_fit), "all-universal": pointwise(uni_fit)}, method="stacking",
                          seed=SEED)
print(f"alternative from {uni_source}")
print(spec_cmp[["rank", "elpd_loo", "p_loo", "elpd_diff", "dse", "weight", "warning"]]
      .to_string(float_format="{:.3f}".format))
spec_cmp.to_csv(OUT / "spec_comparison.csv")

cont = conc["contraction"]
p = lgd.LGDParams()
print(f"y0: posterior {cont['y0']['posterior_mean']:.3f} (90 % {cont['y0']['posterior_90'][0]:.3f}-"
      f"{cont['y0']['posterior_90'][1]:.3f}, contraction {cont['y0']['contraction']:.2f}); truth {p.y0:.3f}")
print(f"y_star: posterior {cont['y_star']['posterior_mean']:.3f} (90 % {cont['y_star']['posterior_90'][0]:.3f}-"
      f"{cont['y_star']['posterior_90'][1]:.3f}, contraction {cont['y_star']['contraction']:.2f}); "
      f"truth {p.y0 + 1 / p.eps0:.3f}")

# %% [markdown]
# ### Universality evidence per coupling against the truth
#
# `elpd_diff` = ELPD(dependent link) - ELPD(universal), leave-one-image-out; `favours` is
# "dependent" / "universal" when the difference exceeds twice its standard error, else
# "unclear" (also when leave-one-image-out is unreliable: a Pareto k above ArviZ's threshold,
# 0.7). With few images per composition the evidence is weak by construction: "unclear"
# is an honest answer, a confident wrong answer is the failure to look for.

# %%
ev = couplings[["coupling", "link", "dependent_link", "elpd_diff", "dse", "weight_dependent", "favours",
                "pareto_k_max", "n_tiles", "n_images"]].merge(truth_table, on="coupling")
# "not testable" (a coupling seen in fewer than 3 images) is no answer, so not a wrong one
ev["verdict"] = np.select([ev["favours"].isin(["unclear", "not testable"]), ev["favours"] == ev["truth"]],
                          ["inconclusive", "agrees"], "disagrees")
ev.to_csv(OUT / "evidence_vs_truth.csv", index=False)
print(ev.drop(columns=["true_values"]).to_string(index=False, float_format="{:.3g}".format))

# %% [markdown]
# ## 4. (Optional) the one-stage joint model against the two-stage fit
#
# Off by default (`CAUSALCRYSTAL_NOTEBOOK_JOINT=1` turns it on; slow: ~4 min on 2 cores even at
# the small size, most of it compiling the two models). The joint model fits
# the tile SEMs and the LGD hierarchy together over a partition of the run's tiles (direct
# couplings only), and `agreement` compares it with the two-stage fit of the same tiles:
# `z` = shift between the fits in units of the wider posterior.

# %%
agree = None
if JOINT:
    from causalcrystal.joint import agreement, fit_joint

    t0 = time.perf_counter()
    direct = replace(conc_spec, couplings=tuple(c for c in conc_spec.couplings if c.effect_kind == "direct"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        res = fit_joint(cells, RUN, direct, seed=SEED, draws=SETTINGS["joint_draws"], tune=SETTINGS["joint_tune"])
    one_stage, joint_summ = res if isinstance(res, tuple) else (res, None)
    if joint_summ is None:  # only the idata returned: stage 1 of the same tiles
        joint_summ = cn.tile_summaries(RUN, direct).sel(tile=np.unique(one_stage.constant_data["obs_tile"].values))
    two_stage = cn.fit(joint_summ, direct, seed=SEED)
    agree = agreement(two_stage, one_stage)
    timings["joint"] = time.perf_counter() - t0
    agree.to_csv(OUT / "joint_agreement.csv", index=False)
    print(agree.to_string(index=False, float_format="{:.3g}".format))
    print(f"largest |z|: {agree['z'].abs().max():.2f} ({timings['joint']:.0f} s)")

# %% [markdown]
# ## 5. Report and summary
#
# The run's HTML report with the comparison and concentration sections (`OUT/report.html`,
# replaced on a re-run), and one table of what the evidence says against the truth.

# %%
t0 = time.perf_counter()
report = write_report(RUN, OUT / "report.html", concentration=CONC, compare=CMP, overwrite=True, log=quiet)
timings["report"] = time.perf_counter() - t0
html = report.read_text()
failed = int(html.split("data-sections-failed='")[1].split("'")[0])
print(f"{report} ({len(html) / 1e6:.2f} MB), {failed} section(s) failed")

pyx = d[(d["pair"] == "Py->Px")]
ab = d[(d["pair"] == "a->b")]


def verdict(good: bool, bad: bool) -> str:
    return "agrees" if good else "disagrees" if bad else "inconclusive"


def majority(says: pd.Series, right: str, wrong: str) -> str:
    return verdict((says == right).mean() > 0.5, (says == wrong).mean() > 0.5)


lgd_diff = float(spec_cmp.loc["lgd", "elpd_loo"] - spec_cmp.loc["all-universal", "elpd_loo"])
lgd_dse = float(spec_cmp["dse"].max())
n_ev = ev["verdict"].value_counts()
overview = pd.DataFrame([
    {"question": "noise family: mean stacking weight of laplace", "truth": "laplace",
     "evidence": f"{by_family.get('laplace', np.nan):.2f}",
     "verdict": verdict(by_family.idxmax() == "laplace", by_family.idxmax() != "laplace")},
    {"question": "candidate orders: weight on the least-wrong order", "truth": "fewest forbidden true edges",
     "evidence": f"{w_best_orders:.2f}", "verdict": verdict(w_best_orders > 0.6, w_best_orders < 0.4)},
    {"question": "Py -> Px: median p_forward (tiles / images)", "truth": "Py -> Px",
     "evidence": f"{pyx.loc[pyx['level'] == 'tile', 'p_forward'].median():.2f} / "
                 f"{pyx.loc[pyx['level'] == 'image', 'p_forward'].median():.2f}",
     "verdict": majority(pyx["says"], "forward", "backward")},
    {"question": "a -> b: median p_forward (tiles / images)", "truth": "no edge (0.5)",
     "evidence": f"{ab.loc[ab['level'] == 'tile', 'p_forward'].median():.2f} / "
                 f"{ab.loc[ab['level'] == 'image', 'p_forward'].median():.2f}",
     "verdict": verdict((ab["says"] == "undecided").mean() > 0.5, (ab["says"] != "undecided").mean() > 0.5)},
    {"question": "LGD links vs all-universal: ELPD difference (dse)", "truth": "lgd (strain couplings ~ P_S(y))",
     "evidence": f"{lgd_diff:+.2f} ({lgd_dse:.2f})",
     "verdict": verdict(lgd_diff > 2 * lgd_dse, lgd_diff < -2 * lgd_dse)},
    {"question": "universality per coupling: agrees / inconclusive / disagrees", "truth": "see the truth table",
     "evidence": f"{n_ev.get('agrees', 0)} / {n_ev.get('inconclusive', 0)} / {n_ev.get('disagrees', 0)}",
     "verdict": verdict(n_ev.get("disagrees", 0) == 0 and n_ev.get("agrees", 0) > n_ev.get("inconclusive", 0),
                        n_ev.get("disagrees", 0) > 0)},
])
overview.to_csv(OUT / "evidence_overview.csv", index=False)
print(overview.to_string(index=False))
print("\nverdict: 'agrees' = the evidence is decisive and right, 'disagrees' = decisive and wrong, "
      "'inconclusive' = not decisive")

# %% [markdown]
# ## Key numbers and sanity checks

# %%
timings["total"] = time.perf_counter() - clock
key = {"size": SIZE, "n_tiles": run["n_tiles"], "compared_tiles": int(models["tile"].nunique()),
       "families": list(SETTINGS["families"]), "weight_by_family": by_family.round(4).to_dict(),
       "weight_least_wrong_orders": w_best_orders, "couplings": [c.label for c in usable], "dropped": dropped,
       "lgd_weight": float(spec_cmp.loc["lgd", "weight"]), "lgd_elpd_diff": lgd_diff, "lgd_dse": lgd_dse,
       "coupling_verdicts": ev["verdict"].value_counts().to_dict(),
       "overview": dict(zip(overview["question"], overview["verdict"])),
       "joint_max_abs_z": float(agree["z"].abs().max()) if agree is not None else None,
       "report_failed_sections": failed, "seconds": {k: round(v, 1) for k, v in timings.items()}}
(OUT / "key_numbers.json").write_text(json.dumps(key, indent=1))
print(json.dumps(key, indent=1))

assert np.allclose(models.groupby("tile")["weight"].sum(), 1.0)
assert set(d["pair"]) == {"Py->Px", "a->b"} and d.loc[d["valid"], "p_forward"].between(0, 1).all()
assert d.loc[~d["valid"], "p_forward"].isna().all() and (d.loc[~d["valid"], "reason"].str.len() > 0).all()
assert set(ev["coupling"]) == {c.label for c in usable}
assert ev["favours"].isin(["dependent", "universal", "unclear", "not testable"]).all()
assert np.isclose(spec_cmp["weight"].sum(), 1.0)
assert set(overview["verdict"]) <= {"agrees", "inconclusive", "disagrees"}
assert failed == 0
