"""The one-stage concentration model: tile SEMs and the LGD hierarchy in one joint posterior.

The two-stage fit (:mod:`causalcrystal.concentration`, the default) summarises each tile's
posterior of a coupling by a mean and s.d. and fits the hierarchy to those numbers. That is fast
and re-uses the run, but it approximates every tile's likelihood by a normal and it feeds the
hierarchy coefficients that were shrunk by the tile's own spike-and-slab prior. The one-stage model
here removes both approximations, at the price of one larger NUTS run:

* every tile of a **partition** (each cell enters once; :func:`partition_tiles` picks the
  non-overlapping tiles of a run) keeps its own causal order and DAG prior from the run: its best
  candidate order (a run that averaged over several orders, ``n_orders > 1``, has a two-stage fit
  that includes order uncertainty which this model does not; compare the two on a run made with
  ``n_orders=1``);
* for every child variable of a coupling in the specification, the tile's structural equation
  ``x_i = c_ti + sum_k beta_tik x_k + e_ti`` enters with the run's noise family. Equations of other
  children are left out: with independent priors per equation, the SEM likelihood factorises over
  equations, so they do not change the posterior of anything here;
* the coupling coefficient itself is not given the spike-and-slab prior but the hierarchy: in raw
  units and oriented like stage 1, ``b_tc ~ StudentT(nu, theta_{g(t),c}, tau_c)`` with
  ``theta`` around the LGD link (:func:`causalcrystal.concentration.link_hierarchy`, shared with
  the two-stage model, so both have the same priors on ``y0``, ``eps0``, amplitudes, ``tau`` and
  ``omega``); it enters the equation as ``beta = sign_t b_tc scale_tk / scale_ti``;
* the other parents' coefficients keep the run's marginalised spike-and-slab prior, intercepts and
  noise scales the run's priors.

Only ``direct`` couplings can be modelled this way (a total effect is a non-linear function of the
whole ``B``); ``total`` couplings are left out with a warning. Generalised-normal noise is refused
(its per-tile cost, ~70 s, makes a joint fit over many tiles impractical).

Agreement with the two-stage fit is what :func:`agreement` measures and what the tests check on a
simulated series: both approximate the same posterior, so differences should be small against the
posterior s.d.s.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import xarray as xr

from causalcrystal import concentration as cn
from causalcrystal.cells import DESCRIPTORS
from causalcrystal.priors import lower_pairs

#: noise families the joint model supports
JOINT_NOISE = ("laplace", "normal", "studentt")


def partition_tiles(tiles: xr.Dataset) -> np.ndarray:
    """Indices of the tiles that form a partition (no cell twice): per image, the tiles whose
    corner lies on the grid of the tile size, starting at the image's first row and column."""
    keep = []
    img = tiles["image"].values.astype(str)
    r0, c0, size = tiles["row0"].values, tiles["col0"].values, tiles["size"].values
    for label in dict.fromkeys(img.tolist()):
        idx = np.flatnonzero(img == label)
        rmin, cmin = r0[idx].min(), c0[idx].min()
        keep += [k for k in idx if (r0[k] - rmin) % size[k] == 0 and (c0[k] - cmin) % size[k] == 0]
    return np.asarray(sorted(keep), dtype=np.int64)


@dataclass
class JointData:
    """The run's tiles of a partition, the couplings' equations and the index arrays of the model."""

    d: cn._Data                 # the hierarchy's data (labels, images, per-coupling scales, links)
    spec: cn.ConcentrationSpec  # the specification without total-effect couplings
    noise: str
    tiles: np.ndarray           # run tile indices in the joint model
    obs_tile: np.ndarray        # per coupling observation (tile, coupling): run tile index
    Xrow: np.ndarray            # (rows, 8) standardised cells, one row per (equation, cell)
    yrow: np.ndarray            # (rows,) the equation's child value
    eq_of_row: np.ndarray       # (rows,) equation index
    eq_tile: np.ndarray         # (equations,) position in ``tiles``
    nuis_pos: np.ndarray        # flat positions (equation * 8 + cause) of spike-and-slab coefficients
    nuis_w: np.ndarray          # their inclusion weights
    coup_pos: np.ndarray        # flat positions of the coupling coefficients
    coup_obs: np.ndarray        # ... the observation each one is
    coup_factor: np.ndarray     # ... and sign_t scale_tk / scale_ti (raw -> standardised)
    prior_spec: object = None   # the run's PriorSpec (spike-and-slab, intercept and scale priors)
    noncentred: np.ndarray | None = None  # per coupling: tile coefficients non-centred around theta


def _run_context(run_dir: Path, cells: xr.Dataset):
    """Re-create what the run sampled from its inputs (checked against the run exactly as
    ``compare`` does: cell count, every tile's position and size, per-image scales): tiles,
    standardised cells, tile priors, scales and the SEM specification."""
    from causalcrystal.compare import CompareError, load_run, run_cells
    from causalcrystal.engine import tile_priors

    try:
        run = load_run(run_dir)
        tiles, _, std_cells = run_cells(cells, run)
    except CompareError as err:
        raise cn.ConcentrationError(str(err)) from None
    st = run["settings"]
    priors = tile_priors(run["disc"], run["disc_images"], run["spec"], exogenous=st["exogenous"])
    const = xr.load_dataset(run_dir / "posterior.nc", engine="h5netcdf", group="constant_data")
    return tiles, std_cells, st["standardize"], priors, const, run["spec"], run["disc"]


def prepare(cells: xr.Dataset, run_dir: str | Path, spec: cn.ConcentrationSpec | str = "lgd",
            tiles=None, params=None) -> tuple[JointData, xr.Dataset]:
    """Build the joint model's data from a finished run and its input cells.

    ``tiles``: run tile indices to use (default: :func:`partition_tiles` of the run's tiles).
    Returns the data and the stage-1 summaries of the same tiles (for the two-stage comparison).
    """
    from causalcrystal import discovery
    from causalcrystal.tiling import tile_members

    run_dir = Path(run_dir)
    spec = cn.load_spec(spec) if isinstance(spec, str) else spec
    total = [c.label for c in spec.couplings if c.effect_kind == "total"]
    if total:
        warnings.warn(f"one-stage model: total-effect couplings {total} left out (only direct couplings are "
                      "single SEM coefficients).", stacklevel=2)
        spec = replace(spec, couplings=tuple(c for c in spec.couplings if c.effect_kind == "direct"))
    tl, std_cells, mode, priors, const, sem_spec, disc = _run_context(run_dir, cells)
    if sem_spec.noise not in JOINT_NOISE:
        raise cn.ConcentrationError(f"the run used {sem_spec.noise!r} noise; the one-stage model supports "
                                    f"{JOINT_NOISE} (use the two-stage fit).")
    chosen = partition_tiles(tl) if tiles is None else np.asarray(tiles, dtype=np.int64)
    chosen = np.array([k for k in chosen if priors[k] is not None and k in const["tile"].values])
    if chosen.size == 0:
        raise cn.ConcentrationError(f"{run_dir}: no sampled tile in the partition.")

    summ = cn.tile_summaries(run_dir, spec).sel(tile=chosen)
    empty = [lab for lab in summ["coupling"].values.tolist() if not summ["used"].sel(coupling=lab).any()]
    if empty and len(empty) < summ.sizes["coupling"]:  # (all empty: _prepare says so)
        warnings.warn(f"one-stage model: coupling(s) {empty} are used by no tile of the partition (not allowed by "
                      "its causal order, or no tile inside one domain: tile_summaries' 'excluded'); left out.",
                      stacklevel=2)
        spec = replace(spec, couplings=tuple(c for c in spec.couplings if c.label not in empty))
        summ = summ.sel(coupling=[c.label for c in spec.couplings])
    d = cn._prepare(summ, spec, params)
    tt_pos, cc = np.nonzero(summ["used"].values)  # the same observation order as _prepare
    scale = const["scale"].sel(tile=chosen).values
    sign = np.sign(const["tile_mean"].sel(tile=chosen, variable="Px").values)
    sign[sign == 0] = 1.0

    children = sorted({DESCRIPTORS.index(c.effect) for c in spec.couplings})
    obs_of = {(int(t), int(q)): n for n, (t, q) in enumerate(zip(tt_pos, cc))}
    Xrows, yrows, eq_rows, eq_tile = [], [], [], []
    nuis_pos, nuis_w, coup_pos, coup_obs, coup_factor = [], [], [], [], []
    n_eq = 0
    for p, k in enumerate(chosen):
        prior = priors[k]
        X = discovery.tile_matrix(std_cells, tile_members(tl, k), mode, discovery.tile_derived(disc, k))
        i_low, j_low = lower_pairs(len(DESCRIPTORS))
        eff, cau = prior.order[i_low], prior.order[j_low]
        for i in children:
            sel = np.flatnonzero((eff == i) & prior.mask)
            if sel.size == 0:
                continue  # the child is first in this tile's order: no coefficient to learn
            for pair in sel:
                j = int(cau[pair])
                q = next((q for q, c in enumerate(spec.couplings)
                          if DESCRIPTORS.index(c.effect) == i and DESCRIPTORS.index(c.cause) == j), None)
                pos = n_eq * len(DESCRIPTORS) + j
                if q is not None and (p, q) in obs_of:
                    c = spec.couplings[q]
                    coup_pos.append(pos)
                    coup_obs.append(obs_of[(p, q)])
                    coup_factor.append((sign[p] if c.orient else 1.0) * scale[p, j] / scale[p, i])
                else:
                    nuis_pos.append(pos)
                    nuis_w.append(prior.w[pair])
            Xrows.append(X)
            yrows.append(X[:, i])
            eq_rows.append(np.full(X.shape[0], n_eq))
            eq_tile.append(p)
            n_eq += 1
    jd = JointData(d=d, spec=spec, noise=sem_spec.noise, tiles=chosen, obs_tile=chosen[tt_pos], noncentred=_noncentred(d),
                   Xrow=np.concatenate(Xrows), yrow=np.concatenate(yrows), eq_of_row=np.concatenate(eq_rows),
                   eq_tile=np.asarray(eq_tile), nuis_pos=np.asarray(nuis_pos, dtype=np.int64),
                   nuis_w=np.asarray(nuis_w), coup_pos=np.asarray(coup_pos, dtype=np.int64),
                   coup_obs=np.asarray(coup_obs, dtype=np.int64), coup_factor=np.asarray(coup_factor),
                   prior_spec=sem_spec.prior)
    return jd, summ


def _noncentred(d: cn._Data) -> np.ndarray:
    """Per coupling: whether the tiles leave their scatter ``tau`` unresolved, i.e. their stage-1
    means scatter within an image by no more than their own s.d.s (method of moments:
    ``var(m_t - image mean) <= mean(s_t^2)``); then the non-centred form samples better."""
    out = np.zeros(len(d.labels), dtype=bool)
    for q in range(len(d.labels)):
        sel = d.obs_c == q
        dev = []
        for g in np.unique(d.obs_g[sel]):
            m = d.m[sel & (d.obs_g == g)]
            dev.extend((m - m.mean()).tolist() if m.size > 1 else [])
        out[q] = not dev or np.var(dev) <= np.mean(d.s[sel] ** 2)
    return out


def build_model(jd: JointData):
    """The joint PyMC model (see the module docstring)."""
    import pymc as pm
    import pytensor.tensor as pt

    from causalcrystal.sem import noise_logp_pt

    d, spec, pr = jd.d, jd.spec, jd.prior_spec
    if jd.noncentred is None:
        jd.noncentred = _noncentred(d)
    n_eq, n_var = jd.eq_tile.size, len(DESCRIPTORS)
    coords = {"coupling": d.labels, "image": d.images, "term": ["linear", "quadratic"],
              "obs": np.arange(d.obs_c.size), "equation": np.arange(n_eq)}
    with pm.Model(coords=coords) as model:
        data = {k: pt.as_tensor_variable(v) for k, v in cn._link_data(d).items()}
        theta, tau = cn.link_hierarchy(data, spec)
        oc, og = d.obs_c, d.obs_g
        # raw, oriented tile coefficients around their image's value (stage 1's quantity, now latent).
        # Centred where the tiles resolve their scatter tau (tile estimates scatter more than their
        # own s.d.s: measured on a 12-tile series with walls, all non-centred was 2.6x slower with
        # bulk ESS 18-48); non-centred where they do not (a wall-free film: tau -> 0 made the
        # centred funnel stall at ESS 3, r_hat 2). The choice per coupling is jd.noncentred.
        nc = np.asarray(jd.noncentred, dtype=bool)[oc]
        b = pt.zeros(oc.size)
        if (~nc).any():
            idx = np.flatnonzero(~nc)
            b_c = pm.StudentT("b_centred", nu=spec.tile_nu, mu=theta[oc[idx], og[idx]], sigma=tau[oc[idx]],
                              shape=idx.size)
            b = pt.set_subtensor(b[idx], b_c)
        if nc.any():
            idx = np.flatnonzero(nc)
            z = pm.StudentT("b_z", nu=spec.tile_nu, mu=0.0, sigma=1.0, shape=idx.size)
            b = pt.set_subtensor(b[idx], theta[oc[idx], og[idx]] + tau[oc[idx]] * z)
        b = pm.Deterministic("b", b, dims="obs")
        w = jd.nuis_w
        beta = pm.NormalMixture("beta", w=np.stack([w, 1.0 - w], axis=-1), mu=np.zeros((w.size, 2)),
                                sigma=np.array([pr.slab_sd, pr.spike_sd]), shape=w.size)
        flat = pt.zeros(n_eq * n_var)
        flat = pt.set_subtensor(flat[jd.nuis_pos], beta)
        flat = pt.set_subtensor(flat[jd.coup_pos], b[jd.coup_obs] * jd.coup_factor)
        Bq = flat.reshape((n_eq, n_var))
        c = pm.Normal("c", 0.0, pr.intercept_sd, dims="equation")
        sigma = pm.HalfNormal("sigma", pr.scale_sd, dims="equation")
        shape = None
        if jd.noise == "studentt":
            # one nu per tile in the run's SEM; here per equation (the equations of a tile share
            # the run's nu, but tying them changes nothing the hierarchy sees)
            shape = pm.Gamma("nu", alpha=2.0, beta=0.1, dims="equation")[jd.eq_of_row]
        e = jd.yrow - (Bq[jd.eq_of_row] * jd.Xrow).sum(-1) - c[jd.eq_of_row]
        pm.Potential("cells", noise_logp_pt(e, sigma[jd.eq_of_row], shape, jd.noise).sum())
    return model


def fit_joint(cells: xr.Dataset, run_dir: str | Path, spec: cn.ConcentrationSpec | str = "lgd", *,
              tiles=None, seed: int = 0, params=None, draws: int | None = None, tune: int | None = None):
    """The one-stage posterior (InferenceData) over a partition of a run's tiles.

    Same variable names as :func:`causalcrystal.concentration.fit` (``y0``, ``eps0``, ``y_star``,
    ``amplitude``, ``theta``, ``tau``, ``omega``, ``f``) plus ``b`` (obs): each tile's raw,
    oriented coupling coefficient, with the obs' run tile in ``constant_data['obs_tile']``.
    Returns ``(idata, summaries)``; the summaries are stage 1 of the same tiles, so
    ``concentration.fit(summaries, ...)`` is the matching two-stage fit.
    """
    import nutpie

    jd, summ = prepare(cells, run_dir, spec, tiles=tiles, params=params)
    sp = jd.spec
    clock = time.perf_counter()
    compiled = nutpie.compile_pymc_model(build_model(jd))
    compile_s = time.perf_counter() - clock
    from causalcrystal.logs import sampler_warnings

    with sampler_warnings():
        idata = nutpie.sample(compiled, draws=draws or sp.draws, tune=tune or sp.tune, chains=sp.chains,
                              cores=sp.chains, seed=int(seed), progress_bar=False, target_accept=0.9,
                              low_rank_modified_mass_matrix=True)
    cn._annotate(idata, jd.d, sp)
    idata.constant_data["obs_tile"] = ("obs", jd.obs_tile)
    idata.constant_data["obs_coupling"] = ("obs", np.asarray(jd.d.labels)[jd.d.obs_c])
    idata.posterior.attrs.update(model="one-stage", compile_seconds=compile_s,
                                 sample_seconds=time.perf_counter() - clock - compile_s)
    return idata, summ


def agreement(first, second, names=("y0", "eps0", "y_star", "amplitude", "theta")):
    """Compare two posteriors of the hierarchy (e.g. two-stage and one-stage) parameter by parameter.

    One row per scalar: both means, s.d.s and 90 % intervals (5 % and 95 % quantiles),
    ``z = (mean_1 - mean_2) / max(sd_1, sd_2)`` (the shift between the fits in units of the wider
    posterior) and ``overlap_90`` (the two 90 % intervals overlap).
    """
    import pandas as pd

    rows = []
    for name in names:
        a, b = first.posterior[name], second.posterior[name]
        dims = [dim for dim in a.dims if dim not in ("chain", "draw")]
        missing = {dim: sorted(set(a[dim].values.tolist()) - set(b[dim].values.tolist())) for dim in dims}
        if any(missing.values()):
            raise ValueError(f"{name}: the second posterior lacks {missing}; compare fits of the same couplings "
                             "and images (e.g. the two-stage fit of fit_joint's own summaries).")
        b = b.sel({dim: a[dim].values for dim in dims})  # align by label, not by position
        stats = []
        for x in (a, b):
            q = x.quantile([0.05, 0.95], dim=("chain", "draw")).values
            stats.append((x.mean(("chain", "draw")).values, x.std(("chain", "draw")).values, q[0], q[1]))
        (m1, s1, l1, h1), (m2, s2, l2, h2) = stats
        for idx in np.ndindex(*m1.shape):
            label = name + ("[" + ",".join(str(a[dim].values[i]) for dim, i in zip(dims, idx)) + "]" if dims else "")
            rows.append({"parameter": label, "mean_1": float(m1[idx]), "sd_1": float(s1[idx]),
                         "eti_5%_1": float(l1[idx]), "eti_95%_1": float(h1[idx]), "mean_2": float(m2[idx]),
                         "sd_2": float(s2[idx]), "eti_5%_2": float(l2[idx]), "eti_95%_2": float(h2[idx]),
                         "z": float(m1[idx] - m2[idx]) / max(float(s1[idx]), float(s2[idx]), 1e-300),
                         "overlap_90": bool(max(l1[idx], l2[idx]) <= min(h1[idx], h2[idx]))})
    return pd.DataFrame(rows)
