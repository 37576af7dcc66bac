"""Model comparison over a finished run: candidate DAGs x noise families, model averaging, directions.

``compare_run(run_dir, out_dir, cells=...)`` takes a ``causalcrystal run`` folder and, for each
selected tile, fits the tile's Bayesian SEM (:func:`causalcrystal.sem.sample_tile`) under

* the top ``candidates`` distinct causal orders among LiNGAM's bootstrap candidate DAGs of that
  tile (``discovery.nc``: ``candidate_order`` with ``candidate_frequency > 0``; candidates that
  share an order are one model, because the SEM's prior depends on the order and the tile's edge
  weights only), and
* each noise family in ``families`` (specifications ``models/<name>.toml``, each with its own
  sampler algorithm and the run's draws, tuning, chains and thinning, so every model has the same
  number of draws),

compares the models by PSIS-LOO over the tile's cells (:func:`arviz.loo` on the pointwise
log-likelihood, :func:`arviz.compare` with stacking weights) and averages the coefficients ``B``
over the models with those weights. With ``directions=True`` it also estimates, per tile and per
whole image, the probability of each direction of the pairs in ``pairs``
(:func:`causalcrystal.direction.direction_probability`: the two orientations of the pair in the
tile's top candidate order, or the image-level LiNGAM order for an image, compared by LOO;
``p_forward`` is their pseudo-BMA+ weight, with the run's model specification; an image's edge
weights are its own bootstrap probabilities).

Inputs
------

The run folder does not store the cells, so compare needs the same cell table the run was made
from (``cells=``; on the command line the same input files as ``run``, or ``--demo`` for a
``causalcrystal demo`` folder). The tiles and the standardisation are re-created exactly as the
run did (:func:`~causalcrystal.tiling.make_tiles` with the manifest's settings,
:func:`causalcrystal.discovery.standardize` and :func:`~causalcrystal.discovery.tile_matrix`) and
checked against the run: the number of cells, every tile's image/position/cell count and (for
per-image standardisation) the per-image means and standard deviations in ``discovery.nc`` must
match, otherwise :class:`CompareError` says what differs.

Model averaging
---------------

Every model of a tile is fitted to the same standardised cell matrix, so ``B[effect, cause]`` has
the same meaning (standard deviations of the effect per standard deviation of the cause) under
every causal order and every noise family; the noise family changes only the residual density.
That is why mixing the models' draws of ``B`` is meaningful. The averaged posterior is the mixture
``sum_m w_m p_m(B | data)`` with the stacking weights ``w_m``; its summaries are computed exactly
from the pooled draws, each draw of model ``m`` weighted ``w_m / S_m`` (the limit of resampling
draws in proportion to the weights, without its Monte Carlo noise). Where a model's causal order
does not allow an edge its draws are exactly 0, so ``p_allowed`` (the stacking weight of the models
allowing the edge) is part of the answer, and a mean near 0 can mean "absent" as well as "small".

Outputs (in ``out_dir``)
------------------------

``models.csv``
    one row per tile x model: ``tile, image, row0, col0, model`` (``cand<k>/<family>``),
    ``candidate, family, order`` (descriptor names, causes first), ``candidate_frequency,
    elpd_loo, se, p_loo, elpd_diff, dse`` (to the tile's best model), ``weight`` (stacking: what the
    averaging uses), ``weight_pseudo_bma`` (pseudo-BMA+, Yao et al. 2018: how much the data favour
    each model on its own; stacking gives near-identical models 0 / 1 splits that this shows as
    ~even),
    ``rank, pareto_k_max, warning`` (a Pareto k above ArviZ's threshold), ``divergences,
    r_hat_max, ess_bulk_min, seconds``.
``averaged.csv``
    one row per tile x edge allowed by at least one model: ``tile, image, row0, col0, effect,
    cause, mean, sd, eti_5%, median, eti_95%, p_positive, p_negative, p_sign`` (the larger of the two),
    ``p_allowed, inclusion_prob`` (stacking-weighted posterior inclusion probability),
    ``top_model, mean_top`` (the highest-weight model and its mean).
``directions.csv``
    one row per (tile or image) x pair: ``level`` (``tile`` | ``image``), ``tile`` (-1 for
    images), ``image, pair`` (``a->b``), ``a, b, n_cells, p_forward`` (P(a -> b)), ``p_forward_mcse``
    (its Monte Carlo standard error), ``elpd_diff`` (forward - backward), ``elpd_diff_mcse``, ``dse,
    coef_forward, coef_backward, lingam_forward, lingam_backward``
    (bootstrap fractions of each direction in ``discovery.nc``), ``found_both_ways`` (LiNGAM found
    both directions in this tile's / image's bootstrap), ``order, seconds``.
``manifest.json``
    the settings, and ``"status": "finished"`` once the three tables are in place (written last;
    see :class:`causalcrystal.jobs.Job` for the folder's rules).
``parts/``
    each tile's and image's results (JSON, written as soon as it is finished, with the models'
    posterior means of ``B`` under ``model_means``): an interrupted compare re-run with the same
    settings keeps them and computes only the rest.

Cost: per tile ``(distinct candidate orders <= candidates) x len(families)`` SEM fits, plus 2 fits
per pair with ``directions``, plus 2 fits per pair and whole image. Measured on 2 cores (the demo's
256-cell tiles, default sampler settings, 2 workers of one thread each): ~3 s per ``laplace`` fit,
~6 s per ``studentt`` fit (it needs the ESS re-run more often), after a compile of 10-30 s per noise
family and worker; with the defaults that is ~35 s of worker time per tile, ~30 min for 100 tiles.
A direction map alone (``models=False``, ``--directions-only``) fits only the equations that differ
between a pair's two orientations: ~1.5 s of worker time per tile for the two default pairs
(benchmarks/RESULTS.md).
``gennorm`` is far slower (~70 s per fit) and not a default family.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.errors import CausalCrystalError
from causalcrystal.evidence import compare_loo, loo_warnings_recorded
from causalcrystal.intervals import eti_name
from causalcrystal.priors import DagPrior, forbidden_into, inclusion_weights
from causalcrystal.sem import ModelSpec, load_spec

OUTPUTS = ("models.csv", "averaged.csv", "directions.csv", "parts")
#: The resumable work folder and the names of the part files compare writes there.
WORK, PARTS = "parts", "*_[0-9][0-9][0-9][0-9][0-9].json"
#: Written last by versions before the manifest's finished status (how their folders are read).
FINAL = "models.csv"
QUANTILES = (0.05, 0.5, 0.95)


class CompareError(CausalCrystalError, ValueError):
    """The run, the cells or the settings cannot support a comparison (the message says why)."""


# ---------------------------------------------------------------------------------------------
# the run and its cells


def load_run(run_dir: str | Path) -> dict:
    """A run folder's settings (``manifest.json``), model spec and discovery (tiles and images)."""
    run_dir = Path(run_dir)
    mpath, dpath = run_dir / "manifest.json", run_dir / "discovery.nc"
    if not mpath.is_file() or not dpath.is_file():
        raise CompareError(f"{run_dir} is not a causalcrystal run folder (needs manifest.json and discovery.nc); "
                           "run `causalcrystal run INPUTS --out DIR` first.")
    from causalcrystal.jobs import read_manifest, safe_name

    manifest = read_manifest(run_dir)
    if manifest is None or manifest.get("job", "run") != "run":
        raise CompareError(f"{safe_name(mpath)} is not the manifest of a causalcrystal run (unreadable, or written by "
                           f"another job); pass the --out folder of `causalcrystal run`.")
    settings = manifest["settings"]
    try:
        disc = xr.load_dataset(dpath, engine="h5netcdf")
        disc_images = xr.load_dataset(dpath, engine="h5netcdf", group="images")
    except (OSError, ValueError, KeyError) as err:
        raise CompareError(f"{safe_name(dpath)} cannot be read ({type(err).__name__}: {err}); re-create the run "
                           f"(`causalcrystal run ... --out {safe_name(run_dir)} --overwrite`).") from err
    return {"dir": run_dir, "settings": settings, "spec": ModelSpec.from_dict(settings["spec"]), "disc": disc,
            "disc_images": disc_images}


def run_cells(cells: xr.Dataset, run: dict) -> tuple[xr.Dataset, xr.Dataset, xr.Dataset]:
    """Re-create the run's tiles, image tiles and standardised cell table from ``cells``; check that
    they are the run's (cell count, every tile's image, position and size, per-image scales).

    Returns ``(tiles, image_tiles, std_cells)``; raises :class:`CompareError` naming the mismatch.
    """
    from causalcrystal import discovery
    from causalcrystal.engine import run_tiles, tile_min_cells
    from causalcrystal.tiling import SmallTileWarning, image_tiles

    from causalcrystal.cells import canonical

    cells = canonical(cells)  # as run_pipeline did
    s, disc, disc_images = run["settings"], run["disc"], run["disc_images"]
    where = f"the run in {run['dir']} (source {s.get('source', '')!r})"
    fix = ("pass the same inputs (and reader options: --xy-order, --exclude-image) as `causalcrystal run`, or --demo "
           "for a demo folder")
    n = int(cells.sizes["cell"])
    if n != int(s["n_cells"]):
        raise CompareError(f"the cells given have {n} cells but {where} was made from {s['n_cells']}; {fix}.")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallTileWarning)  # the run reported those already
        warnings.simplefilter("ignore", UserWarning)
        tiles = run_tiles(cells, s["tile_size"], s["stride"], tile_min_cells(s["tile_size"], s["min_cells"]))
    images = image_tiles(cells)
    for name, ours, theirs in (("tiles", tiles, disc), ("images", images, disc_images)):
        if ours.sizes["tile"] != theirs.sizes["tile"]:
            raise CompareError(f"the cells give {ours.sizes['tile']} {name} but {where} has {theirs.sizes['tile']}; "
                               f"{fix}.")
        for c in ("image", "row0", "col0", "n_cells"):
            a, b = np.asarray(ours[c].values), np.asarray(theirs[c].values)
            if a.astype(str).tolist() != b.astype(str).tolist():
                k = int(np.flatnonzero(a.astype(str) != b.astype(str))[0])
                raise CompareError(f"{name[:-1]} {k}: {c} = {a[k]} from the cells given but {b[k]} in {where}; {fix}.")
    std = discovery.standardize(cells, s["standardize"], discovery.declared_derived(disc))
    if s["standardize"] == "image":
        for key in ("standardize_mean", "standardize_sd"):
            ours, theirs = json.loads(std.attrs[key]), json.loads(disc.attrs[key])
            for img, per in theirs.items():
                a = np.array([ours.get(img, {}).get(v, np.nan) for v in DESCRIPTORS])
                b = np.array([per[v] for v in DESCRIPTORS])
                if not np.allclose(a, b, rtol=1e-9, atol=0.0):
                    raise CompareError(f"image {img}: the descriptors' per-image {key.split('_')[1]} differ from "
                                       f"{where} (other data with the same layout?); {fix}.")
    return tiles, images, std


def select_tiles(disc: xr.Dataset, tiles=None, max_tiles: int | None = None) -> list[int]:
    """The tiles to compare: ``tiles`` (indices), or ``max_tiles`` spread evenly over the run's
    fitted tiles (so every image is represented), or all fitted tiles."""
    ok = [k for k in range(disc.sizes["tile"]) if str(disc["status"].values[k]) == "ok"]
    if tiles is not None and max_tiles is not None:
        raise CompareError("give either tiles or max_tiles, not both.")
    if tiles is not None:
        tiles = sorted({int(k) for k in tiles})
        bad = [k for k in tiles if k not in set(ok)]
        if bad:
            raise CompareError(f"tile(s) {bad} are not fitted tiles of the run (it has {len(ok)} fitted tiles: "
                               f"{ok[:5]}{' ...' if len(ok) > 5 else ''}).")
        return tiles
    if max_tiles is not None:
        if max_tiles < 1:
            raise CompareError(f"max_tiles {max_tiles} must be >= 1.")
        if max_tiles < len(ok):
            pick = np.unique(np.round(np.linspace(0, len(ok) - 1, int(max_tiles))).astype(int))
            return [ok[i] for i in pick]
    return ok


def _parse_pairs(pairs) -> list[tuple[str, str]]:
    out = []
    for p in pairs:
        ab = p.split(":") if isinstance(p, str) else list(p)
        if len(ab) != 2:
            raise CompareError(f"pair {p!r}: give two descriptors, e.g. 'Px:Py' or ('Px', 'Py').")
        a, b = str(ab[0]).strip(), str(ab[1]).strip()
        for v in (a, b):
            if v not in DESCRIPTORS:
                raise CompareError(f"pair {a}:{b}: {v!r} is not a descriptor; use names from {list(DESCRIPTORS)}.")
        if a == b:
            raise CompareError(f"pair {a}:{b} needs two different descriptors.")
        if (a, b) not in out and (b, a) not in out:
            out.append((a, b))
    return out


def _image_seed(seed: int, index: int) -> int:
    """The sampler seed of image ``index`` (a stream separate from the tiles' ``tile_seed``)."""
    return int(np.random.SeedSequence([int(seed), int(index), 1]).generate_state(1)[0])


def _order_text(order) -> str:
    return " ".join(DESCRIPTORS[int(j)] for j in order)


# ---------------------------------------------------------------------------------------------
# one tile: fit the models, LOO, stacking, averaging


@dataclass
class Model:
    """One model of a tile: a causal order (from candidate DAG ``candidate``) and a noise family."""

    label: str
    candidate: int
    family: str
    prior: DagPrior
    spec: ModelSpec
    candidate_frequency: float = float("nan")


def compare_models(X: np.ndarray, models: list[Model], seed: int, threads: int | None = None) -> tuple[list, dict]:
    """Fit every model to the cell matrix ``X``, compare them by PSIS-LOO with stacking weights.

    Returns ``(rows, fits)``: one dict per model (``model, elpd_loo, se, p_loo, elpd_diff, dse,
    weight, weight_pseudo_bma, rank, pareto_k_max, warning``, sampler diagnostics, seconds) and, per model label, the
    draws needed for averaging (``B``, ``edge_inclusion``: (draw, effect, cause)). Stacking weights
    are clipped at 0 and renormalised (the optimiser returns them to ~1e-8).
    """
    import arviz as az

    from causalcrystal.sem import sample_tile

    elpds, fits, rows = {}, {}, {}
    for m in models:
        clock = time.perf_counter()
        out = sample_tile(X, m.prior, m.spec, seed, threads=threads)
        seconds = time.perf_counter() - clock
        idata = az.from_dict(posterior={"sigma": out["sigma"]},
                             log_likelihood={"z": out["loglik"].astype(np.float64)})
        with loo_warnings_recorded():  # a high Pareto k is recorded in the 'warning' column
            elpds[m.label] = az.loo(idata, pointwise=True)
        allowed = m.prior.allowed
        rh, ess = out["r_hat"][allowed], out["ess_bulk"][allowed]
        rows[m.label] = {"model": m.label, "candidate": m.candidate, "family": m.family,
                         "order": _order_text(m.prior.order), "candidate_frequency": m.candidate_frequency,
                         "pareto_k_max": float(np.max(elpds[m.label]["pareto_k"])),
                         "divergences": int(out["diverging"].sum()),
                         "r_hat_max": float(np.nanmax(rh)) if rh.size else float("nan"),
                         "ess_bulk_min": float(np.nanmin(ess)) if ess.size else float("nan"),
                         "seconds": seconds}
        S = out["B"].shape[0] * out["B"].shape[1]
        fits[m.label] = {"B": out["B"].reshape(S, *out["B"].shape[2:]).astype(np.float64),
                         "edge_inclusion": out["edge_inclusion"].reshape(S, *out["B"].shape[2:]), "allowed": allowed}
    if len(models) == 1:
        only = models[0].label
        e = elpds[only]
        rows[only].update(elpd_loo=float(e["elpd_loo"]), se=float(e["se"]), p_loo=float(e["p_loo"]),
                          elpd_diff=0.0, dse=0.0, weight=1.0, weight_pseudo_bma=1.0, rank=0,
                          warning=bool(e["warning"]))
        return [rows[only]], fits
    cmp = compare_loo(elpds)
    w = np.clip(cmp["weight"].to_numpy(dtype=float), 0.0, None)
    w = w / w.sum()
    # pseudo-BMA+ beside stacking: stacking optimises the mixture's prediction, so two models that
    # predict alike get an arbitrary 0 / 1 split (elpd_diff 1.4 +- 1.2 gave 1.0 and 1e-11, a shared
    # case); pseudo-BMA+ weighs each model by its own evidence, with the uncertainty of the elpd
    from causalcrystal.evidence import pseudo_bma_weights

    labels = list(cmp.index)
    pbma = pseudo_bma_weights(np.stack([elpds[k].loo_i.values for k in labels]), seed=seed)
    for label, wp in zip(labels, pbma):
        rows[label]["weight_pseudo_bma"] = float(wp)
    for (label, r), wk in zip(cmp.iterrows(), w):
        rows[label].update(elpd_loo=float(r["elpd_loo"]), se=float(r["se"]), p_loo=float(r["p_loo"]),
                           elpd_diff=float(r["elpd_diff"]), dse=float(r["dse"]), weight=float(wk),
                           rank=int(r["rank"]), warning=bool(r["warning"]))
    return [rows[m.label] for m in models], fits


def average_coefficients(draws: list[np.ndarray], weights, inclusion: list[np.ndarray] | None = None,
                         quantiles=QUANTILES) -> dict:
    """Summaries of the mixture ``sum_m weights[m] p_m`` of several models' draws of ``B``.

    ``draws[m]``: (draws_m, effect, cause); ``weights``: model weights (normalised here). Exact for
    the pooled draws with draw weights ``w_m / S_m`` (no resampling noise). Returns arrays
    (effect, cause): ``mean``, ``sd``, one per quantile (``eti_5%``, ``median``, ``eti_95%``: :func:`causalcrystal.intervals.eti_name`), ``p_positive``,
    ``p_negative``, ``p_allowed`` (weight of models whose draws are not all exactly 0) and, with
    ``inclusion`` (per-model draws of the inclusion probability), ``inclusion_prob``.
    """
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    means = [d.mean(0) for d in draws]
    mean = sum(wk * m for wk, m in zip(w, means))
    # law of total variance (not E[B^2] - E[B]^2, which cancels badly for edges near 0)
    var = sum(wk * (d.var(0) + (m - mean) ** 2) for wk, d, m in zip(w, draws, means))
    out = {"mean": mean, "sd": np.sqrt(var),
           "p_positive": sum(wk * (d > 0).mean(0) for wk, d in zip(w, draws)),
           "p_negative": sum(wk * (d < 0).mean(0) for wk, d in zip(w, draws)),
           "p_allowed": sum(wk * (d != 0).any(0) for wk, d in zip(w, draws))}
    if inclusion is not None:
        out["inclusion_prob"] = sum(wk * d.mean(0) for wk, d in zip(w, inclusion))
    pooled = np.concatenate(draws, axis=0)
    dw = np.concatenate([np.full(d.shape[0], wk / d.shape[0]) for wk, d in zip(w, draws)])
    idx = np.argsort(pooled, axis=0, kind="stable")
    cum = np.cumsum(dw[idx], axis=0)  # the mixture's CDF at each sorted draw, per edge
    srt = np.take_along_axis(pooled, idx, axis=0)
    for q in quantiles:
        # inverted CDF: the smallest draw whose cumulative weight reaches q
        first = np.argmax(cum >= q - 1e-12, axis=0)
        out[eti_name(q)] = np.take_along_axis(srt, first[None], axis=0)[0]
    return out


# ---------------------------------------------------------------------------------------------
# the per-tile / per-image task (runs in a worker: picklable, returns JSON-able rows)


@dataclass
class CompareTask:
    """One tile's (or image's) work: model comparison (tiles only) and direction probabilities."""

    kind: str                       # "tile" or "image"
    index: int
    where: dict                     # tile, image, row0, col0 for the rows
    X: np.ndarray
    seed: int
    models: list = field(default_factory=list)
    pairs: list = field(default_factory=list)   # (a, b, lingam_forward, lingam_backward)
    order: np.ndarray | None = None
    weights: np.ndarray | None = None
    forbidden: np.ndarray | None = None
    direction_spec: ModelSpec | None = None
    threads: int | None = None
    derived: tuple = ()                         # descriptors treated as derived in this tile


def _run_task(task: CompareTask) -> tuple[str, int, dict]:
    from causalcrystal.direction import direction_probability

    result = {"models": [], "averaged": [], "directions": [], "model_means": {}}
    if task.models:
        rows, fits = compare_models(task.X, task.models, task.seed, task.threads)
        result["models"] = [{**task.where, **r} for r in rows]
        labels = [r["model"] for r in rows]
        weights = [r["weight"] for r in rows]
        avg = average_coefficients([fits[m]["B"] for m in labels], weights,
                                   [fits[m]["edge_inclusion"] for m in labels])
        top = labels[int(np.argmax(weights))]
        top_mean = fits[top]["B"].mean(0)
        any_allowed = np.any([fits[m]["allowed"] for m in labels], axis=0)
        for i, j in zip(*np.nonzero(any_allowed)):
            row = {**task.where, "effect": DESCRIPTORS[i], "cause": DESCRIPTORS[j]}
            row.update({k: float(v[i, j]) for k, v in avg.items() if k not in ("p_positive", "p_negative",
                                                                                "p_allowed", "inclusion_prob")})
            pp, pn = float(avg["p_positive"][i, j]), float(avg["p_negative"][i, j])
            row.update(p_positive=pp, p_negative=pn, p_sign=max(pp, pn), p_allowed=float(avg["p_allowed"][i, j]),
                       inclusion_prob=float(avg["inclusion_prob"][i, j]), top_model=top,
                       mean_top=float(top_mean[i, j]))
            result["averaged"].append(row)
        # per-model posterior means of B, kept in the part file (for checks and re-analysis)
        result["model_means"] = {m: fits[m]["B"].mean(0).tolist() for m in labels}
    for a, b, fwd, bwd in task.pairs:
        clock = time.perf_counter()
        r = direction_probability(task.X, task.order, task.weights, a, b, forbidden=task.forbidden,
                                  spec=task.direction_spec, seed=task.seed, derived=task.derived,
                                  active=np.array([v not in task.derived for v in DESCRIPTORS]))
        result["directions"].append({
            "level": task.kind, "tile": task.where["tile"], "image": task.where["image"], "pair": r["pair"],
            "a": a, "b": b, "n_cells": int(task.X.shape[0]), "p_forward": r["p_forward"],
            "p_forward_mcse": r["p_forward_mcse"], "elpd_diff": r["elpd_diff"], "elpd_diff_mcse": r["elpd_diff_mcse"],
            "dse": r["dse"], "coef_forward": r["coef_forward"],
            "coef_backward": r["coef_backward"], "lingam_forward": fwd, "lingam_backward": bwd,
            "found_both_ways": bool(fwd > 0 and bwd > 0), "order": _order_text(task.order),
            "valid": r["valid"], "reason": r["reason"], "placements": r["placements"],
            "seconds": time.perf_counter() - clock})
    return task.kind, task.index, result


def _derived_mask(derived) -> np.ndarray:
    """``[effect, cause]`` mask of every edge into or out of a derived descriptor."""
    d = np.array([v in derived for v in DESCRIPTORS])
    return d[:, None] | d[None, :]


def _part_path(parts: Path, kind: str, index: int) -> Path:
    return parts / f"{kind}_{index:05d}.json"


# ---------------------------------------------------------------------------------------------
# the `causalcrystal compare` job


def compare_run(
    run_dir: str | Path,
    out_dir: str | Path,
    cells: xr.Dataset,
    *,
    candidates: int = 3,
    families=("mog", "laplace"),
    pairs=(("a", "b"), ("Px", "Py")),
    tiles=None,
    max_tiles: int | None = None,
    directions: bool = True,
    image_directions: bool = True,
    models: bool = True,
    draws: int | None = None,
    seed: int = 0,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    log=None,
) -> dict:
    """Compare candidate DAGs x noise families per tile of a finished run; average; directions.

    ``cells``: the cell table the run was made from (checked against the run, see the module
    docstring). ``candidates``: how many of each tile's LiNGAM candidate DAGs (most frequent first)
    to try; ``families``: noise-family specification names or ``.toml`` paths (fitted with the run's
    sampler settings); ``pairs``: descriptor pairs (``("a", "b")`` or ``"a:b"``) whose direction to
    estimate per tile and (with ``image_directions``) per whole image, with the run's model spec,
    when ``directions``; ``tiles`` /
    ``max_tiles``: which tiles (default all fitted ones; ``max_tiles`` spreads them evenly).
    ``models=False`` (``--directions-only``): no candidate DAG x family fits, only the direction
    probabilities (a direction map over every tile; ``models.csv`` and ``averaged.csv`` are written
    empty). A direction test fits only the equations that differ between the two orientations
    (:mod:`causalcrystal.direction`), ~1.5 s per tile for the two default pairs instead of ~35 s for
    the models.
    ``draws``: kept draws per chain for every fit here (default: the run's); the Monte Carlo error
    of a direction probability (``p_forward_mcse``) falls as ``1 / sqrt(draws)``.
    ``workers`` / ``scheduler`` as in :func:`causalcrystal.engine.run_pipeline` (``workers=1``: in
    this process). ``stop_after``: finish at most that many tiles/images and return (resumable).

    Writes ``models.csv``, ``averaged.csv``, ``directions.csv`` and ``manifest.json`` into
    ``out_dir`` (see the module docstring) under the rules of :class:`causalcrystal.jobs.Job`
    (checked before the folder is touched, locked, never replacing a finished comparison without
    ``overwrite``, atomic outputs, the manifest's finished status last). Returns the output paths,
    the three tables (pandas) and counts.
    """
    from causalcrystal import __version__
    from causalcrystal.jobs import Job

    from causalcrystal.executor import check_workers

    from causalcrystal.logs import resolve

    log = resolve(log)  # default: the 'causalcrystal' logger
    check_workers(workers)
    plan = _plan_compare(run_dir, out_dir, cells, candidates=candidates, families=families, pairs=pairs, tiles=tiles,
                         max_tiles=max_tiles, directions=directions, image_directions=image_directions,
                         models=models, seed=seed, draws=draws)
    job = Job("compare", out_dir, plan["settings"], outputs=OUTPUTS, work=WORK, parts=PARTS,
              final=FINAL, version=__version__, log=log)
    with job.open(overwrite):
        jobs, make_task = _compare_tasks(plan)
        parts = job.work_dir
        todo, reused = job.pending(jobs, lambda j: _part_path(parts, *j))
        if stop_after is not None:
            todo = todo[: max(0, int(stop_after))]
        n_cand, specs, pairs = plan["n_cand"], plan["specs"], plan["pairs"]
        what = (f"up to {n_cand * len(specs)} model(s) ({n_cand} candidate order(s) x {', '.join(specs)})"
                if plan["models"] else "directions only")
        log(f"compare: {len(plan['selected'])} tile(s) x {what}, {len(pairs)} pair(s) per tile"
            + (f" and per image ({len(jobs) - len(plan['selected'])} images)" if pairs and image_directions else "")
            + (f"; resuming: {reused} finished part(s) kept" if reused else ""))

        clock = time.perf_counter()

        def tasks(executor):
            threads = 1 if scheduler else max(1, (os.cpu_count() or 1) // executor.workers)  # as in run_pipeline
            for kind, idx in todo:
                yield make_task(kind, idx, threads)

        def save(result):
            kind, idx, res = result
            with job.output(Path(WORK) / _part_path(parts, kind, idx).name) as tmp:
                tmp.write_text(json.dumps(res, default=float))
            return f"({kind} {idx})"

        job.execute(_run_task, tasks, save, total=len(todo), label="compare", scheduler=scheduler, workers=workers,
                    progress=progress)
        seconds = time.perf_counter() - clock
        done = [j for j in jobs if _part_path(parts, *j).exists()]
        result = {"out_dir": str(out_dir), "computed": len(todo), "reused": reused, "finished": len(done) == len(jobs),
                  "seconds": seconds}
        if len(done) < len(jobs):
            log(f"stopped with {len(done)}/{len(jobs)} parts done; run the same command again to resume")
            return result
        frames = _assemble(job, jobs)
        job.finish(drop_work=False)  # the parts are small and hold the per-model means (re-analysis)
    d = frames["directions"]
    never = [pair for pair, both in d.groupby("pair")["found_both_ways"].any().items() if not both]
    if never:
        log(f"note: LiNGAM never found both directions of {', '.join(never)} in the tiles and images compared; "
            "their rows are reported with found_both_ways = False")
    flagged = frames["models"].query("warning or divergences > 0") if len(frames["models"]) else frames["models"]
    if len(flagged):
        log(f"WARNING: {len(flagged)} model fit(s) with a high Pareto k or divergences (tiles "
            f"{sorted(set(flagged['tile']))[:10]}); see the 'warning' and 'divergences' columns of models.csv")
    log(f"wrote {out_dir}/models.csv, averaged.csv, directions.csv ({len(plan['selected'])} tiles, {seconds:.0f} s)")
    result.update({name: frames[name] for name in frames})
    result.update(models_csv=str(Path(out_dir) / "models.csv"), averaged_csv=str(Path(out_dir) / "averaged.csv"),
                  directions_csv=str(Path(out_dir) / "directions.csv"))
    return result


def _plan_compare(run_dir, out_dir, cells, *, candidates, families, pairs, tiles, max_tiles, directions,
                  image_directions, seed, models=True, draws=None) -> dict:
    """Check the run, the cells and every option; the settings the manifest records. Raises
    :class:`CompareError` naming what is wrong, before the output folder is touched."""
    from causalcrystal.engine import run_fingerprint

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise CompareError(f"--out {out_dir} is the run folder itself; choose a separate folder (e.g. "
                           f"{run_dir}/compare).")
    candidates = int(candidates)
    if candidates < 1:
        raise CompareError(f"candidates {candidates} must be >= 1.")
    if int(seed) < 0:
        raise CompareError(f"seed {seed} must be >= 0.")
    if draws is not None and int(draws) < 50:
        raise CompareError(f"--draws {draws}: use at least 50 kept draws per chain (the run's convergence "
                           "checks and PSIS-LOO need them).")
    run = load_run(run_dir)
    s, disc, run_spec = run["settings"], run["disc"], run["spec"]
    if draws is not None:
        # every fit of this comparison, direction tests included (the run's own spec stays recorded)
        run = {**run, "spec": run_spec.with_(draws=int(draws))}
        run_spec = run["spec"]
    families = list(dict.fromkeys(str(f) for f in families))
    if not families:
        raise CompareError("give at least one noise family.")
    specs = {}
    for f in families:
        spec = load_spec(f)
        # the run's draws, tuning, chains and thinning, so every model keeps the same number of
        # draws; but each family's own sampler algorithm: the Gibbs sampler serves mixture noise
        # only, and NUTS on the mixture is ~100x slower per fit and mixes poorly between label
        # modes (measured: ~480 s per fit, r_hat 1.8 on a laplace run's tiles)
        sampler = replace(run_spec.sampler, name=spec.sampler.name)
        specs[spec.name] = replace(spec, sampler=sampler)
    pairs = _parse_pairs(pairs)  # checked even when unused, so a typo is caught before hours of fits
    exo = list(s.get("exogenous") or [])
    for a, b in pairs:
        if a in exo or b in exo:
            raise CompareError(f"pair {a}:{b}: {a if a in exo else b} is exogenous in the run (nothing points into "
                               "it), so the pair has no direction to compare; choose other pairs.")
    pairs = pairs if directions else []
    if not models and not pairs:
        raise CompareError("directions only (--directions-only) with no directions to estimate (--no-directions or "
                           "no --pairs): there is nothing to compute.")
    selected = select_tiles(disc, tiles, max_tiles)
    tiling, images, std = run_cells(cells, run)
    settings = {"run_dir": str(run_dir.resolve()), "run_fingerprint": run_fingerprint(run_dir, "discovery.nc"),
                "run_settings": s, "candidates": candidates,
                "families": {name: sp.to_dict() for name, sp in specs.items()}, "pairs": [list(p) for p in pairs],
                "tiles": selected, "directions": bool(directions), "image_directions": bool(image_directions),
                "seed": int(seed)}
    if not models:  # recorded only when set, so comparisons made before the option keep their settings
        settings["models"] = False
    if draws is not None:  # the same
        settings["draws"] = int(draws)
    n_cand = min(candidates, disc.sizes.get("candidate", 1))
    return {"run": run, "settings": settings, "specs": specs, "pairs": pairs, "exo": exo, "selected": selected,
            "tiling": tiling, "images": images, "std": std, "n_cand": n_cand, "seed": int(seed),
            "image_directions": bool(image_directions), "models": bool(models)}


def _compare_tasks(plan: dict):
    """The compare's parts (``("image", i)`` first: the largest tasks, so they do not trail) and a
    function making the task of one part."""
    from causalcrystal import discovery
    from causalcrystal.engine import tile_priors, tile_seed
    from causalcrystal.tiling import tile_members

    run, specs, pairs, n_cand, seed = plan["run"], plan["specs"], plan["pairs"], plan["n_cand"], plan["seed"]
    s, disc, disc_images, run_spec = run["settings"], run["disc"], run["disc_images"], run["spec"]
    tiling, images, std, exo = plan["tiling"], plan["images"], plan["std"], plan["exo"]
    mode = s["standardize"]
    forbidden = forbidden_into([DESCRIPTORS.index(v) for v in exo], len(DESCRIPTORS))
    # Models per tile: candidate orders (deduplicated) x families.
    priors = [tile_priors(disc, disc_images, run_spec, candidate=c, exogenous=exo) for c in range(n_cand)]
    freq = disc["candidate_frequency"].values if "candidate_frequency" in disc else None
    image_prob = {str(lab): disc_images["probability"].values[i] for i, lab in enumerate(disc_images["image"].values)}
    n_boot = max(int(disc.attrs.get("n_bootstrap", 0)), 1)
    counts = {p: (discovery.direction_counts(disc, *p), discovery.direction_counts(disc_images, *p)) for p in pairs}

    def tile_task(k: int, threads) -> CompareTask:
        X = discovery.tile_matrix(std, tile_members(tiling, k), mode, discovery.tile_derived(disc, k))
        models, seen = [], set()
        for c in range(n_cand if plan["models"] else 0):
            f = float(freq[k, c]) if freq is not None else float("nan")
            if c > 0 and not f > 0:
                continue
            prior = priors[c][k]
            key = tuple(prior.order.tolist())
            if key in seen:
                continue
            seen.add(key)
            models += [Model(f"cand{c}/{name}", c, sp.noise, prior, sp, f) for name, sp in specs.items()]
        W = inclusion_weights(disc["probability"].values[k], image_prob.get(str(disc["image"].values[k])), n_boot,
                              run_spec.prior)
        pr = [(a, b, float(counts[(a, b)][0][f"{a}->{b}"].values[k]), float(counts[(a, b)][0][f"{b}->{a}"].values[k]))
              for a, b in pairs]
        where = {"tile": int(k), "image": str(disc["image"].values[k]), "row0": int(disc["row0"].values[k]),
                 "col0": int(disc["col0"].values[k])}
        der = tuple(v for v, d in zip(DESCRIPTORS, disc["derived"].values[k]) if d) if "derived" in disc else ()
        return CompareTask("tile", k, where, X, tile_seed(seed, k), models, pr, priors[0][k].order, W,
                           forbidden | _derived_mask(der), run_spec, threads, der)

    def image_task(i: int, threads) -> CompareTask:
        X = discovery.tile_matrix(std, tile_members(images, i), mode, discovery.tile_derived(disc_images, i))
        order = disc_images["order"].values[i]
        if "candidate_order" in disc_images and disc_images["candidate_frequency"].values[i, 0] > 0:
            order = disc_images["candidate_order"].values[i, 0]
        W = inclusion_weights(disc_images["probability"].values[i], None, n_boot, run_spec.prior)
        pr = [(a, b, float(counts[(a, b)][1][f"{a}->{b}"].values[i]), float(counts[(a, b)][1][f"{b}->{a}"].values[i]))
              for a, b in pairs]
        where = {"tile": -1, "image": str(disc_images["image"].values[i]), "row0": int(disc_images["row0"].values[i]),
                 "col0": int(disc_images["col0"].values[i])}
        der = (tuple(v for v, d in zip(DESCRIPTORS, disc_images["derived"].values[i]) if d)
               if "derived" in disc_images else ())
        return CompareTask("image", i, where, X, _image_seed(seed, i), [], pr, np.asarray(order), W,
                           forbidden | _derived_mask(der), run_spec, threads, der)

    jobs = []
    if pairs and plan["image_directions"]:  # whole-image directions: see the caveat in the module docstring
        jobs += [("image", i) for i in range(disc_images.sizes["tile"]) if str(disc_images["status"].values[i]) == "ok"]
    jobs += [("tile", k) for k in plan["selected"]]

    def make_task(kind, idx, threads):
        return tile_task(idx, threads) if kind == "tile" else image_task(idx, threads)

    return jobs, make_task


def _assemble(job, jobs) -> dict:
    """The three tables from the parts, each written atomically (``models.csv`` last)."""
    import pandas as pd

    tables = {"models": [], "averaged": [], "directions": []}
    for j in jobs:
        part = job.load_part(_part_path(job.work_dir, *j), lambda p: json.loads(p.read_text(encoding="utf-8")))
        for name in tables:
            tables[name] += part[name]
    frames = {name: pd.DataFrame(rows) for name, rows in tables.items()}
    frames["directions"] = _direction_frame(frames["directions"])
    for name, columns in (("models", _MODEL_COLUMNS), ("averaged", _AVERAGED_COLUMNS)):
        if not len(frames[name]):
            frames[name] = pd.DataFrame(columns=list(columns))
    for name in ("averaged", "directions", "models"):
        with job.output(f"{name}.csv") as tmp:
            frames[name].to_csv(tmp, index=False)
    return frames


_DIRECTION_COLUMNS = ("level", "tile", "image", "pair", "a", "b", "n_cells", "p_forward", "p_forward_mcse",
                      "elpd_diff", "elpd_diff_mcse", "dse",
                      "coef_forward", "coef_backward", "lingam_forward", "lingam_backward", "found_both_ways",
                      "valid", "reason", "placements", "order", "seconds")


#: the columns of models.csv and averaged.csv (so an empty table, e.g. with --directions-only, still has its header)
_MODEL_COLUMNS = ("tile", "image", "row0", "col0", "model", "candidate", "family", "order", "candidate_frequency",
                  "pareto_k_max", "divergences", "r_hat_max", "ess_bulk_min", "seconds", "elpd_loo", "se", "p_loo",
                  "elpd_diff", "dse", "weight", "weight_pseudo_bma", "rank", "warning")
_AVERAGED_COLUMNS = ("tile", "image", "row0", "col0", "effect", "cause", "mean", "sd", "eti_5%", "median", "eti_95%",
                     "p_positive", "p_negative", "p_sign", "p_allowed", "inclusion_prob", "top_model", "mean_top")


def _direction_frame(frame):
    import pandas as pd

    if not len(frame):
        return pd.DataFrame(columns=list(_DIRECTION_COLUMNS))
    # reindex: parts written by an earlier version (a resumed job) lack the newer columns
    return frame.reindex(columns=list(_DIRECTION_COLUMNS))
