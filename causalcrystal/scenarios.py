"""Independent generators with known truth, for checking calibration on data the LGD simulator did not make.

A method checked only against the generator it was designed with proves little. This module makes
cell tables from linear non-Gaussian SEMs that share nothing with :mod:`causalcrystal.simulator`
but the cell-table format: random DAGs in random causal orders (with edges pointing against the
simulator's order), per-variable noise of several shapes (Laplace, uniform, Student-t, bimodal,
skewed, Gaussian), and optional misspecification (an exogenous variable with a parent, a
descriptor computed exactly from others). Every table carries its truth (``true_B`` per cell in
raw units, ``true_noise_family`` per variable), and :func:`truth_per_tile` converts it to the
units of a run.

:func:`calibration_table` compares a finished run (or any per-tile posterior intervals) with that
truth: coverage of the 90 % intervals of true edges, how often an absent edge's interval excludes
0, how many true edges the tile's orders forbid (forced to 0), by the child's noise family.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from causalcrystal.cells import DESCRIPTORS

#: Noise shapes (each scaled to unit variance): name -> sampler(rng, size).
NOISE = {
    "laplace": lambda rng, size: rng.laplace(0.0, 1.0 / np.sqrt(2.0), size),
    "uniform": lambda rng, size: rng.uniform(-np.sqrt(3.0), np.sqrt(3.0), size),
    "t5": lambda rng, size: rng.standard_t(5, size) / np.sqrt(5.0 / 3.0),
    # two well separated modes: +-0.9 with s.d. 0.4 inside each, unit variance overall
    "bimodal": lambda rng, size: (rng.choice([-0.9, 0.9], size=size) + rng.normal(0.0, 0.4, size)) / np.sqrt(0.97),
    "skewed": lambda rng, size: rng.exponential(1.0, size) - 1.0,
    "gaussian": lambda rng, size: rng.normal(0.0, 1.0, size),
}


def random_dag(rng: np.random.Generator, n_vars: int = 8, exogenous=(0, 1), density: float = 0.35,
               coef_range=(0.3, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """A random DAG ``B[effect, cause]`` over ``n_vars`` variables and its causal order.

    The order is a random permutation with the ``exogenous`` variables first (they have no
    parents, as the pipeline's default prior knowledge assumes); each pair allowed by the order is
    an edge with probability ``density``, its coefficient uniform in ``+-coef_range``. Every
    non-exogenous variable gets at least one parent.
    """
    exo = list(exogenous)
    rest = [v for v in range(n_vars) if v not in exo]
    order = np.array(exo + list(rng.permutation(rest)), dtype=np.int64)
    B = np.zeros((n_vars, n_vars))
    lo, hi = coef_range
    for pos in range(len(exo), n_vars):
        child = order[pos]
        parents = [order[q] for q in range(pos) if rng.random() < density]
        if not parents:
            parents = [order[rng.integers(0, pos)]]
        for par in parents:
            B[child, par] = rng.uniform(lo, hi) * rng.choice([-1.0, 1.0])
    return B, order


def against_order(B: np.ndarray, order) -> int:
    """How many edges of ``B`` point against ``order`` (cause after effect in it)."""
    pos = {int(v): k for k, v in enumerate(order)}
    return int(sum(pos[j] > pos[i] for i, j in zip(*np.nonzero(B))))


def sem_cells(B: np.ndarray, noise: list[str] | tuple[str, ...], *, n_images: int = 2, shape=(32, 32),
              seed: int = 0, scale=None, mean=None, sm_fractions=None, derived_vol: bool = False) -> xr.Dataset:
    """A cell table drawn from ``z = B z + e`` (``e_i`` of family ``noise[i]``, unit variance times
    ``scale[i]``), ``n_images`` images of ``shape`` cells, in raw units (plus ``mean``).

    The SEM is the same in every image and cell (so every tile has the same true coefficients in
    raw units). ``derived_vol``: replace ``Vol`` by ``a * b * sin(alpha)`` computed exactly from the
    cell's ``a``, ``b``, ``alpha`` (degrees), as in real data; then ``a``, ``b`` and ``alpha`` are
    shifted to plausible positive values first and ``Vol``'s row of ``true_B`` is its linearisation.
    Returns the cell table (``validate``-clean) with ``true_B`` (cell, effect, cause) and attrs
    ``true_noise_family`` (JSON list) and ``true_order``.
    """
    B = np.asarray(B, dtype=np.float64)
    V = B.shape[0]
    if V != len(DESCRIPTORS):
        raise ValueError(f"B must be {len(DESCRIPTORS)} x {len(DESCRIPTORS)} (one row per descriptor).")
    if len(noise) != V or any(n not in NOISE for n in noise):
        raise ValueError(f"noise: one family per descriptor from {sorted(NOISE)}; got {noise}.")
    rng = np.random.default_rng(seed)
    scale = np.ones(V) if scale is None else np.asarray(scale, dtype=np.float64)
    mean = np.zeros(V) if mean is None else np.asarray(mean, dtype=np.float64)
    rows, cols = shape
    n = rows * cols
    A = np.linalg.inv(np.eye(V) - B)
    frames = []
    for g in range(n_images):
        e = np.column_stack([NOISE[noise[i]](rng, n) * scale[i] for i in range(V)])
        z = e @ A.T + mean
        B_cells = np.broadcast_to(B, (n, V, V)).copy()
        if derived_vol:
            ia, ib, ial, iv = (DESCRIPTORS.index(v) for v in ("a", "b", "alpha", "Vol"))
            # positive lattice parameters around 4 angstrom and angles around 89 degrees
            z[:, ia] = 3.9 + 0.02 * z[:, ia]
            z[:, ib] = 3.95 + 0.02 * z[:, ib]
            z[:, ial] = 89.0 + 0.2 * z[:, ial]
            z[:, iv] = z[:, ia] * z[:, ib] * np.sin(np.deg2rad(z[:, ial]))
            B_cells[:, iv, :] = 0.0
            grad = {ia: z[:, ib] * np.sin(np.deg2rad(z[:, ial])), ib: z[:, ia] * np.sin(np.deg2rad(z[:, ial])),
                    ial: z[:, ia] * z[:, ib] * np.cos(np.deg2rad(z[:, ial])) * np.pi / 180.0}
            for j, gj in grad.items():
                B_cells[:, iv, j] = gj
        r, c = np.divmod(np.arange(n), cols)
        frames.append(dict(z=z, B=B_cells, row=r, col=c, image=np.full(n, f"img{g}"),
                           sm=np.full(n, 0.0 if sm_fractions is None else sm_fractions[g])))
    z = np.concatenate([f["z"] for f in frames])
    ds = xr.Dataset(
        {name: ("cell", z[:, k]) for k, name in enumerate(DESCRIPTORS)},
        coords={"image": ("cell", np.concatenate([f["image"] for f in frames])),
                "sm_fraction": ("cell", np.concatenate([f["sm"] for f in frames]).astype(np.float64)),
                "row": ("cell", np.concatenate([f["row"] for f in frames]).astype(np.int64)),
                "col": ("cell", np.concatenate([f["col"] for f in frames]).astype(np.int64)),
                "x": ("cell", np.concatenate([f["col"] for f in frames]).astype(np.float64)),
                "y": ("cell", np.concatenate([f["row"] for f in frames]).astype(np.float64))},
    )
    ds["true_B"] = (("cell", "effect", "cause"), np.concatenate([f["B"] for f in frames]))
    ds = ds.assign_coords(effect=list(DESCRIPTORS), cause=list(DESCRIPTORS))
    for name in DESCRIPTORS:
        ds[name].attrs["units"] = "a.u."
    ds.attrs.update(source=f"causalcrystal.scenarios.sem_cells(seed={seed})", units="a.u.",
                    true_noise_family=json.dumps(list(noise)), derived_vol=int(bool(derived_vol)))
    return ds


def scenario(seed: int, *, n_images: int = 2, shape=(32, 32), families=("laplace", "uniform", "t5", "bimodal"),
             derived_vol: bool = False) -> xr.Dataset:
    """A ready-made independent scenario: a :func:`random_dag` (I14, I5 exogenous) with noise
    families assigned round-robin from ``families`` (shuffled per seed), drawn by :func:`sem_cells`."""
    rng = np.random.default_rng([seed, 7])
    B, order = random_dag(rng)
    fam = [families[(k + int(rng.integers(len(families)))) % len(families)] for k in range(len(DESCRIPTORS))]
    scale = np.exp(rng.uniform(-0.5, 0.5, len(DESCRIPTORS)))
    ds = sem_cells(B, fam, n_images=n_images, shape=shape, seed=int(rng.integers(2**31)), scale=scale,
                   derived_vol=derived_vol)
    ds.attrs["true_order"] = json.dumps([int(v) for v in order])
    return ds


def truth_per_tile(cells: xr.Dataset, tiles: xr.Dataset, standardize: str = "image") -> np.ndarray:
    """The true coefficients of every tile (tile, effect, cause) in the units a run with
    ``standardize`` reports ``B`` in: ``B_std[i, j] = B_raw[i, j] sd_j / sd_i`` with the s.d. of
    the tile's image (``"image"``) or of the tile (``"tile"``); raw for ``"none"``. The tile's
    truth is the mean of its cells' ``true_B``."""
    from causalcrystal.tiling import tile_members

    X = np.column_stack([cells[v].values for v in DESCRIPTORS])
    img = cells["image"].values.astype(str)
    out = np.zeros((tiles.sizes["tile"], len(DESCRIPTORS), len(DESCRIPTORS)))
    for k in range(tiles.sizes["tile"]):
        m = tile_members(tiles, k)
        Bt = cells["true_B"].values[m].mean(0)
        if standardize == "image":
            sd = X[img == img[m[0]]].std(0)
        elif standardize == "tile":
            sd = X[m].std(0)
        else:
            sd = np.ones(len(DESCRIPTORS))
        out[k] = Bt * sd[None, :] / sd[:, None]
    return out


def calibration_table(lo: np.ndarray, hi: np.ndarray, truth: np.ndarray, allowed: np.ndarray,
                      families: list[str], exogenous=(0, 1)) -> dict:
    """Calibration of per-tile interval estimates against the truth.

    ``lo``, ``hi``, ``truth``, ``allowed`` (tile, effect, cause): interval bounds (0 where an edge
    is forced to 0), the truth, and whether the method could make the edge non-zero. Edges into
    the ``exogenous`` variables are left out (prior knowledge forbids them by construction).
    Returns a dict: ``coverage`` (true edges whose interval holds the truth; a forbidden true edge
    counts as missed), ``coverage_by_family`` (by the child's noise family), ``false_confident``
    (absent edges whose interval excludes 0), ``forbidden_true`` (true edges forced to 0),
    ``width`` (mean interval width over true edges), ``n_true``, ``n_absent``.
    """
    T, V, _ = truth.shape
    keep = np.ones((V, V), dtype=bool)
    np.fill_diagonal(keep, False)
    keep[list(exogenous), :] = False
    true = (truth != 0) & keep[None]
    absent = (truth == 0) & keep[None]
    hit = (lo <= truth) & (truth <= hi) & allowed
    fam = np.asarray(families)[None, :, None] * np.ones((T, 1, V), dtype=object)
    by = {f: float(hit[true & (fam == f)].mean()) for f in sorted(set(families)) if (true & (fam == f)).any()}
    return {"coverage": float(hit[true].mean()), "coverage_by_family": by,
            "false_confident": float(((lo > 0) | (hi < 0))[absent].mean()),
            "forbidden_true": float((~allowed)[true].mean()), "width": float((hi - lo)[true].mean()),
            "n_true": int(true.sum()), "n_absent": int(absent.sum())}


def run_intervals(run_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A finished run's 90 % intervals per tile: ``(tiles, lo, hi, allowed)``, arrays
    (tile, effect, cause) from ``summary.csv`` (HDI; 0 where no order allows an edge) and the run's
    tile indices (the ``tile`` column)."""
    import pandas as pd
    from pathlib import Path

    s = pd.read_csv(Path(run_dir) / "summary.csv")
    tiles = np.sort(s["tile"].unique())
    pos = {int(t): k for k, t in enumerate(tiles)}
    V = len(DESCRIPTORS)
    lo, hi = np.zeros((tiles.size, V, V)), np.zeros((tiles.size, V, V))
    allowed = np.zeros((tiles.size, V, V), dtype=bool)
    ix = {v: k for k, v in enumerate(DESCRIPTORS)}
    t = s["tile"].map(pos).to_numpy()
    i, j = s["effect"].map(ix).to_numpy(), s["cause"].map(ix).to_numpy()
    lo[t, i, j], hi[t, i, j] = s["hdi_5%"].to_numpy(), s["hdi_95%"].to_numpy()
    p_allowed = s["p_allowed"].to_numpy() if "p_allowed" in s else np.ones(len(s))
    allowed[t, i, j] = p_allowed > 0
    return tiles, lo, hi, allowed


def lingam_bootstrap_intervals(X: np.ndarray, n_resamples: int = 100, exogenous=(0, 1), seed: int = 0,
                               prob: float = 0.9) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source paper's uncertainty: DirectLiNGAM bootstrap (``lingam``'s own ``bootstrap``)
    percentile intervals of every coefficient, ``(lo, hi, allowed)`` (effect, cause); ``allowed``:
    the edge was non-zero in at least one resample."""
    import lingam
    from lingam.utils import make_prior_knowledge

    pk = make_prior_knowledge(X.shape[1], exogenous_variables=list(exogenous)) if exogenous else None
    model = lingam.DirectLiNGAM(prior_knowledge=pk, random_state=seed)
    np.random.seed(seed)  # lingam's bootstrap draws its resamples from numpy's global state
    res = model.bootstrap(X, n_resamples)
    A = np.asarray(res.adjacency_matrices_)
    q = np.quantile(A, [(1 - prob) / 2, (1 + prob) / 2], axis=0)
    return q[0], q[1], (A != 0).any(axis=0)
