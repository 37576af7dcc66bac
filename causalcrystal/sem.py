"""The Bayesian linear structural equation model of one tile (PyMC), and how to sample it fast.

Model (data ``Z``: the tile's cells x 8 descriptors, standardised, columns permuted into the
tile's causal order so ``B`` is strictly lower-triangular)::

    z = B z + c + e,     e_j ~ noise(0, sigma_j [, shape_j])   independent
    B[i, j] (i > j)  ~ w_ij N(0, slab^2) + (1 - w_ij) N(0, spike^2)      (see causalcrystal.priors)
    c_j ~ N(0, intercept_sd^2),   sigma_j ~ HalfNormal(scale_sd)

Because the Jacobian of ``z -> e = (I - B) z - c`` is 1, the log-likelihood of a cell is the sum
of the noise log-densities of its residuals. Noise families:

``mog`` (default)
    a mixture of ``K`` Gaussians per variable with learned weights, locations and variances
    (Hoyer & Hyttinen 2009's Bayesian LiNGAM noise): sub-Gaussian (uniform-like), super-Gaussian
    (Laplace, t), skewed and bimodal noise alike. The mixture's mean is the intercept (no
    separate ``c``); its priors scale with each equation's least-squares residual variance
    (:mod:`causalcrystal.gibbs`, which also samples it exactly and fast).
``laplace``, ``studentt`` (one learned ``nu``), ``gennorm`` (generalised normal, a learned shape per variable)
    fixed-shape families; calibrated only when the noise has that shape (``laplace`` on uniform
    noise gave 90 % intervals covering 0.73 of true coefficients).
``normal``
    only on request: with Gaussian noise the direction of an edge is not identified, which is
    LiNGAM's whole point.

**Compile once, swap data.** The model holds the data and the inclusion weights in ``pm.Data``
containers; the likelihood enters as a ``pm.Potential`` (a batched ``Z @ B.T``), so the same
compiled nutpie model serves every tile of every size via ``compiled.with_data(Z=..., w=...)``.
NUTS does not store pointwise log-likelihoods, so :func:`pointwise_loglik` computes them exactly
from the draws in numpy (what LOO needs: one value per cell and draw).
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from scipy import special

from causalcrystal.errors import check_field_types, did_you_mean, spec_table
from causalcrystal.gibbs import MixtureSpec, mixture_logpdf, mixture_moments, ols_constants, sample_equations
from causalcrystal.priors import DagPrior, PriorSpec, conditional_inclusion, lower_pairs, to_descriptor_matrix

NOISE_FAMILIES = ("mog", "laplace", "studentt", "gennorm", "normal")
#: ``gibbs`` (exact Gibbs, :mod:`causalcrystal.gibbs`) serves the ``mog`` family; NUTS serves all.
SAMPLERS = ("gibbs", "nutpie", "pymc")

def models_dir() -> Path:
    """Where the named model specifications live: ``causalcrystal/models`` inside an installed
    wheel (package data, read with :mod:`importlib.resources`), else the repository's top-level
    ``models/`` (a source checkout or an editable install; the design keeps it there and
    ``pyproject.toml`` ships it into the wheel)."""
    from importlib.resources import files

    # files() of the regular package is a plain path (models/ has no __init__.py: as a namespace
    # package of its own it would come back as a MultiplexedPath)
    packaged = files("causalcrystal") / "models"
    if packaged.joinpath("mog.toml").is_file():
        return Path(str(packaged))
    return Path(__file__).resolve().parents[1] / "models"


#: Where named model specifications live (see :func:`models_dir`).
MODELS_DIR = models_dir()


class GaussianNoiseWarning(UserWarning):
    """Gaussian noise was requested: edge directions are not identified by the likelihood."""


@dataclass(frozen=True)
class SamplerSpec:
    """NUTS settings: which sampler, chains, tuning and kept draws, and the ESS a tile should reach."""

    name: str = "nutpie"
    chains: int = 2
    tune: int = 200
    draws: int = 500
    target_ess: float = 400.0
    #: run ``draws * thin`` draws per chain and keep every ``thin``-th: fewer re-runs for the same
    #: kept size (see benchmarks/RESULTS.md).
    thin: int = 2
    #: Gibbs only: short scout chains per equation the kept chains start from (:func:`scout_starts`;
    #: 0: start from the sampler's dispersed start)
    scouts: int = 8

    def __post_init__(self):
        check_field_types(self, "[sampler]")
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler {self.name!r} unknown; use one of {SAMPLERS}.")
        # the same message for a command-line option and a spec file's [sampler] key
        bad = [f"{name} {value} (needs >= {low}: the --{name} option, or {name} in a spec's [sampler])" for name, value, low in
               (("chains", self.chains, 1), ("draws", self.draws, 10), ("tune", self.tune, 0), ("thin", self.thin, 1),
                ("scouts", self.scouts, 0))
               if value < low]
        if bad:
            raise ValueError(f"sampler: {'; '.join(bad)}.")


@dataclass(frozen=True)
class ModelSpec:
    """A named model: noise family, prior hyper-parameters and sampler settings."""

    name: str = "mog"
    noise: str = "mog"
    prior: PriorSpec = field(default_factory=PriorSpec)
    #: default: the Gibbs sampler for ``mog``, nutpie's NUTS for the other families
    sampler: SamplerSpec | None = None
    description: str = ""
    #: the ``mog`` family's mixture (ignored by the others)
    mixture: MixtureSpec = field(default_factory=MixtureSpec)

    def __post_init__(self):
        check_field_types(self, "model")
        if self.noise not in NOISE_FAMILIES:
            raise ValueError(f"noise {self.noise!r} unknown; use one of {NOISE_FAMILIES}.")
        if self.sampler is None:
            object.__setattr__(self, "sampler", SamplerSpec(name="gibbs" if self.noise == "mog" else "nutpie"))
        if self.sampler.name == "gibbs" and self.noise != "mog":
            raise ValueError(f"the gibbs sampler serves the 'mog' noise family only (this model: {self.noise!r}); "
                             "use sampler 'nutpie' for it.")

    def with_(self, noise: str | None = None, **sampler_changes) -> "ModelSpec":
        """A copy with another noise family and/or sampler settings (``None`` values are ignored)."""
        changes = {k: v for k, v in sampler_changes.items() if v is not None}
        sampler = replace(self.sampler, **changes) if changes else self.sampler
        if noise is not None and noise != self.noise:
            if noise != "mog" and sampler.name == "gibbs" and "name" not in changes:
                sampler = replace(sampler, name="nutpie")  # the fixed-shape families need NUTS
            return replace(self, noise=noise, name=f"{self.name}+{noise}", sampler=sampler)
        return replace(self, sampler=sampler) if changes else self

    def key(self) -> tuple:
        """What determines the compiled model (noise family and priors), not the sampler settings."""
        return (self.noise, self.prior, self.mixture if self.noise == "mog" else None)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """The inverse of :meth:`to_dict` (e.g. the spec recorded in a run's manifest)."""
        # manifests written before the mog default have no mixture and a NUTS sampler
        return cls(name=d.get("name", "laplace"), noise=d.get("noise", "laplace"),
                   prior=PriorSpec(**d.get("prior", {})), sampler=SamplerSpec(**d.get("sampler", {"name": "nutpie"})),
                   description=d.get("description", ""), mixture=MixtureSpec(**d.get("mixture", {})))


def specs_in(directory: Path) -> list[str]:
    """Names of the specification files (``*.toml``) in ``directory``."""
    return sorted(p.stem for p in directory.glob("*.toml")) if directory.is_dir() else []


def read_spec_toml(name_or_path: str | Path, directory: Path, kind: str) -> tuple[Path, dict]:
    """Find a specification by name (``<directory>/<name>.toml``) or path and parse it.

    Shared by the SEM specifications (``models/``) and the concentration ones
    (``models/concentration/``); errors name the file and what to do.
    """
    path = Path(name_or_path)
    if path.suffix != ".toml":
        path = directory / f"{name_or_path}.toml"
    if not path.is_file():
        hint = did_you_mean([str(name_or_path)], specs_in(directory)) if path.parent == directory else ""
        raise ValueError(
            f"{kind} specification {str(name_or_path)!r} not found (looked for {path}){hint}; "
            f"available: {specs_in(directory)} or give a path to a .toml file."
        )
    try:
        return path, tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err}).") from None


def available_specs() -> list[str]:
    """Names of the model specifications in ``models/``."""
    return specs_in(MODELS_DIR)


#: The default model specification (``models/mog.toml``).
DEFAULT_SPEC = "mog"


def load_spec(name_or_path: str | Path = DEFAULT_SPEC) -> ModelSpec:
    """Load a model specification by name (``models/<name>.toml``) or from a TOML file path."""
    path, raw = read_spec_toml(name_or_path, MODELS_DIR, "model")
    known = {"name", "description", "noise", "prior", "sampler"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}{did_you_mean(sorted(unknown), known)}; "
                         f"allowed: {sorted(known)}.")
    tables = {"noise": ["family", *(f.name for f in fields(MixtureSpec))],
              "prior": [f.name for f in fields(PriorSpec)], "sampler": [f.name for f in fields(SamplerSpec)]}

    def table(key):
        # a key of another table named as such ("draws belongs in [sampler]"), not as a misspelling
        elsewhere = {k: f"[{t}]" for t, keys in tables.items() if t != key for k in keys if k not in tables[key]}
        return dict(spec_table(raw, key, tables[key], elsewhere=elsewhere))

    try:
        noise = table("noise")
        family = noise.pop("family", "laplace")
        return ModelSpec(
            name=raw.get("name", path.stem),
            description=raw.get("description", ""),
            noise=family,
            prior=PriorSpec(**table("prior")),
            sampler=SamplerSpec(**{"name": "gibbs" if family == "mog" else "nutpie", **table("sampler")}),
            mixture=MixtureSpec(**noise),
        )
    except ValueError as err:  # a value out of range, of the wrong kind or an unknown key: the message names it
        raise ValueError(f"{path}: {err}") from None


# ---------------------------------------------------------------------------------------------
# noise densities: one pytensor version (inside the model) and one numpy version (pointwise LL)


def _noise_logp(e, sigma, shape, noise, xp, gammaln):
    """One formula for both array libraries: ``xp`` is numpy or pytensor.tensor."""
    x = e / sigma
    if noise == "laplace":
        return -xp.log(2.0 * sigma) - xp.abs(x)
    if noise == "normal":
        return -0.5 * np.log(2.0 * np.pi) - xp.log(sigma) - 0.5 * x**2
    if noise == "studentt":
        nu = shape
        return (gammaln((nu + 1) / 2) - gammaln(nu / 2) - 0.5 * xp.log(nu * np.pi) - xp.log(sigma)
                - (nu + 1) / 2 * xp.log1p(x**2 / nu))
    # generalised normal, shape p: p / (2 sigma Gamma(1/p)) exp(-|x|^p)
    p = shape
    return xp.log(p) - xp.log(2.0 * sigma) - gammaln(1.0 / p) - xp.abs(x) ** p


def noise_logp_pt(e, sigma, shape, noise):
    """Elementwise log-density of residuals ``e`` under noise family ``noise`` with scale
    ``sigma`` and shape parameter ``shape`` (``nu`` / gennorm shape; unused otherwise), as a
    PyTensor expression (the same formula as the numpy version used for the pointwise LL)."""
    import pytensor.tensor as pt

    return _noise_logp(e, sigma, shape, noise, pt, pt.gammaln)


def noise_logp(e: np.ndarray, sigma: np.ndarray, shape: np.ndarray | None, noise: str) -> np.ndarray:
    """Elementwise noise log-density in numpy (the same formula as inside the model)."""
    return _noise_logp(e, sigma, shape, noise, np, special.gammaln)


# ---------------------------------------------------------------------------------------------
# the model


def build_model(spec: ModelSpec, n_vars: int = 8, n_init: int = 64):
    """The PyMC model for one tile, with ``pm.Data`` containers ``Z`` (cells x vars, causal order)
    and ``w`` (inclusion weights of the allowed coefficients) to be swapped per tile."""
    import pymc as pm
    import pytensor.tensor as pt

    if spec.noise == "normal":
        warnings.warn("Gaussian noise: the likelihood does not identify edge directions; use it only to "
                      "compare against a non-Gaussian model.", GaussianNoiseWarning, stacklevel=2)
    i, j = lower_pairs(n_vars)
    pr = spec.prior
    with pm.Model() as model:
        Z = pm.Data("Z", np.zeros((n_init, n_vars)))
        w = pm.Data("w", np.full(i.size, 0.5))
        m = pm.Data("m", np.ones(i.size))  # 0 = edge forbidden by prior knowledge
        beta = pm.NormalMixture("beta", w=pt.stack([w, 1.0 - w], axis=-1), mu=np.zeros((i.size, 2)),
                                sigma=np.array([pr.slab_sd, pr.spike_sd]), shape=i.size)
        if spec.noise == "mog":
            _mog_likelihood(Z, beta * m, spec.mixture, n_vars)
            return model
        c = pm.Normal("c", 0.0, pr.intercept_sd, shape=n_vars)
        sigma = pm.HalfNormal("sigma", pr.scale_sd, shape=n_vars)
        if spec.noise == "studentt":
            shape = pm.Gamma("nu", alpha=pr.nu_alpha, beta=pr.nu_beta)
        elif spec.noise == "gennorm":
            shape = pm.Truncated("shape", pm.LogNormal.dist(mu=np.log(pr.shape_median), sigma=pr.shape_sigma),
                                 lower=pr.shape_min, upper=pr.shape_max, shape=n_vars)
        else:
            shape = None
        B = pt.set_subtensor(pt.zeros((n_vars, n_vars))[i, j], beta * m)
        e = Z - pt.dot(Z, B.T) - c
        pm.Potential("loglik", noise_logp_pt(e, sigma, shape, spec.noise).sum())
    return model


def _mog_likelihood(Z, beta, mix: MixtureSpec, n_vars: int) -> None:
    """The ``mog`` family inside a model context: per causal position a K-component Gaussian
    mixture, priors scaled by the equation's least-squares residual variance ``v`` and centred on
    its intercept ``m0`` (``pm.Data``, set per tile by :func:`mog_data`), and ``eq`` (1 = the
    equation enters the likelihood). The same model :mod:`causalcrystal.gibbs` samples."""
    import pymc as pm
    import pytensor.tensor as pt

    i, j = lower_pairs(n_vars)
    K = mix.components
    v = pm.Data("v", np.ones(n_vars))
    m0 = pm.Data("m0", np.zeros(n_vars))
    eq = pm.Data("eq", np.ones(n_vars))
    pi = pm.Dirichlet("noise_weight", a=np.full((n_vars, K), mix.alpha))
    # Locations are left unordered (no output depends on the component labels; a chain may sit in
    # any of the K! relabellings). An ordered transform was tried and biased NUTS: where two
    # components overlap, the posterior has mass at equal locations, which the transform sends to
    # -inf (a funnel). On one equation of a test tile: 2.8 % divergent, smallest ESS 354 of 20,000
    # and a coefficient off by 0.08 sd, against 0 divergent, ESS 19,145 and agreement with Gibbs to
    # 0.005 sd unordered (benchmarks/RESULTS.md).
    mu = pm.Normal("noise_loc", mu=m0[:, None], sigma=mix.mu_sd_rel * pt.sqrt(v)[:, None], shape=(n_vars, K))
    s2 = pm.InverseGamma("noise_var", alpha=mix.a0, beta=mix.var_rel * v[:, None], shape=(n_vars, K))
    B = pt.set_subtensor(pt.zeros((n_vars, n_vars))[i, j], beta)
    e = Z - pt.dot(Z, B.T)
    comp = (pt.log(pi)[None] - 0.5 * pt.log(2.0 * np.pi * s2)[None]
            - 0.5 * (e[..., None] - mu[None]) ** 2 / s2[None])
    pm.Potential("loglik", (pt.logsumexp(comp, axis=-1) * eq).sum())


def equations(X: np.ndarray, prior: DagPrior, active: np.ndarray | None = None) -> dict:
    """The structural equations of one tile in its causal order, as :mod:`causalcrystal.gibbs` takes them.

    ``X`` cells x descriptors; ``active`` (descriptor indexing, default all): equations that enter
    the likelihood. Returns ``y`` (E, n), ``X`` (E, n, P) zero-padded parents, ``pmask``, ``w``
    (E, P), ``child`` (E,) descriptor index, ``parents`` (E, P) descriptor indices (-1 padding),
    with one equation per causal position (E = number of descriptors, P = E - 1).
    """
    order = np.asarray(prior.order)
    n, V = X.shape[0], len(order)
    i_low, j_low = lower_pairs(V)
    P = max(V - 1, 1)
    out = {"y": np.zeros((V, n)), "X": np.zeros((V, n, P)), "pmask": np.zeros((V, P), dtype=bool),
           "w": np.full((V, P), 0.5), "child": order.copy(), "parents": np.full((V, P), -1, dtype=np.int64)}
    for pos in range(V):
        child = order[pos]
        out["y"][pos] = X[:, child]
        sel = np.flatnonzero((i_low == pos) & prior.mask)
        sel = sel[np.argsort(order[j_low[sel]], kind="stable")]  # parents by descriptor index: one layout per parent set
        for col, k in enumerate(sel):
            parent = order[j_low[k]]
            out["X"][pos, :, col] = X[:, parent]
            out["pmask"][pos, col] = True
            out["w"][pos, col] = prior.w[k]
            out["parents"][pos, col] = parent
    out["active"] = np.ones(V, dtype=bool) if active is None else np.asarray(active, dtype=bool)[order]
    return out


def mog_data(Zc: np.ndarray, prior: DagPrior, active: np.ndarray | None = None) -> dict:
    """``v``, ``m0`` and ``eq`` of the ``mog`` model for data ``Zc`` in causal order (empirical Bayes)."""
    eqs = equations(Zc[:, np.argsort(prior.order)], prior, active)
    _, m0, v = ols_constants(eqs["y"], eqs["X"], eqs["pmask"])
    return {"v": v, "m0": m0, "eq": eqs["active"].astype(np.float64)}


_COMPILED: dict = {}


def compiled_model(spec: ModelSpec, n_vars: int = 8):
    """The compiled nutpie model (or PyMC model) for ``spec``, built once per process."""
    key = (spec.key(), spec.sampler.name, n_vars)
    if key not in _COMPILED:
        model = build_model(spec, n_vars)
        if spec.sampler.name == "nutpie":
            import nutpie

            _COMPILED[key] = nutpie.compile_pymc_model(model)
        else:
            _COMPILED[key] = model
    return _COMPILED[key]




#: NUTS target acceptance per noise family. The mixture's posterior has regions of high curvature
#: (components with few cells, coefficients between spike and slab): on 3-descriptor tiles at
#: nutpie's default 0.8, 0-2.4 % of transitions diverged (12 runs); at 0.95, none (~1.5x the time).
#: (Measured 2026-12-01 with unordered locations; with ordered ones, 0.75-3 % and 0.15 % on
#: 8-descriptor tiles.)
TARGET_ACCEPT = {"mog": 0.95}


def _run_nuts(cm, Zc, prior: DagPrior, sp: SamplerSpec, draws: int, seed: int, threads: int | None = None,
              extra: dict | None = None, target_accept: float = 0.8):
    from causalcrystal.logs import sampler_warnings

    with sampler_warnings():
        data = {"Z": Zc, "w": prior.w, "m": prior.mask.astype(np.float64), **(extra or {})}
        if sp.name == "nutpie":
            import nutpie

            # Low-rank mass-matrix adaptation: Vol, a and b are strongly correlated, and the
            # diagonal adaptation left some tiles at a bulk ESS < 100 (3x slower too).
            return nutpie.sample(cm.with_data(**data), draws=draws, tune=sp.tune, chains=sp.chains,
                                 cores=min(sp.chains, threads or sp.chains), seed=int(seed), progress_bar=False,
                                 low_rank_modified_mass_matrix=True, target_accept=target_accept)
        import pymc as pm

        with cm:
            pm.set_data(data)
            return pm.sample(draws=draws, tune=sp.tune, chains=sp.chains, cores=1, random_seed=int(seed),
                             target_accept=target_accept, progressbar=False, compute_convergence_checks=False)


def _diagnostics(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split r_hat and bulk ESS of each coefficient; ``beta`` is (chain, draw, k)."""
    import arviz as az

    if beta.shape[-1] == 0:
        return np.zeros(0), np.zeros(0)
    ds = az.convert_to_dataset({"beta": beta})
    return az.rhat(ds)["beta"].values, az.ess(ds, method="bulk")["beta"].values


#: A tile is converged when every allowed coefficient has r_hat at most this (Vehtari et al. 2021).
RHAT_MAX = 1.01


def rerun_factor(ess_min: float, target_ess: float) -> int:
    """How many times the sweeps a re-run gets: enough to reach ``target_ess`` with 20 % margin,
    at least 2 (also when only r_hat fell short), at most 4."""
    return int(min(4, max(2, np.ceil(target_ess / max(float(ess_min), 1.0) * 1.2))))


def sample_tile(X: np.ndarray, prior: DagPrior, spec: ModelSpec, seed: int, threads: int | None = None,
                active: np.ndarray | None = None) -> dict:
    """Sample the posterior of one tile in one causal order (``threads``: sampler threads).

    ``X``: cells x descriptors (descriptor order, standardised); ``prior``: the tile's causal order
    and inclusion weights; ``active`` (``mog`` only): the descriptors whose equations enter the
    likelihood (default all; a derived descriptor's is left out). Returns numpy arrays: ``B`` and
    ``edge_inclusion`` (chain, draw, effect, cause) in descriptor indexing, ``c``, ``sigma``
    (chain, draw, var, descriptor order; for ``mog`` the mixture's mean and s.d.), noise ``shape``
    or mixture (``noise_weight``, ``noise_loc``, ``noise_var``: chain, draw, var, component) if
    any, ``loglik`` (chain, draw, cell) float32, and sample stats.

    The model is fitted to the tile's cells standardised by the tile's own means and standard
    deviations, and every output is converted back to the units of ``X`` (:func:`to_input_units`):
    the priors (slab, spike, intercept, noise scale) are therefore in units of the tile's own
    spread, whatever the units of the input (raw detector counts ~1e6 as well as z-scores).
    """
    Xs, m, sd = tile_standardise(X)
    return to_input_units(_sample_tile_std(Xs, prior, spec, seed, threads, active), m, sd)


def tile_standardise(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X - mean) / sd`` per column, with the means and s.d.s (a constant column keeps s.d. 1)."""
    X = np.asarray(X, dtype=np.float64)
    m, sd = X.mean(0), X.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    return (X - m) / sd, m, sd


def to_input_units(out: dict, m: np.ndarray, sd: np.ndarray) -> dict:
    """Convert a fit on tile-standardised data (``x_s = (x - m) / sd``) back to the data's units:
    ``B[i, j] -> B[i, j] sd_i / sd_j``; intercepts ``c_i -> sd_i c_i + m_i - sum_j B_ij m_j`` (and
    the mixture's locations with them); scales and mixture s.d.s times ``sd_i``; log-likelihoods
    minus ``log sd_i`` per active equation (the Jacobian of the change of units)."""
    out = dict(out)
    ratio = sd[:, None] / sd[None, :]
    out["B"] = out["B"] * ratio
    shift = m - np.einsum("cdij,j->cdi", out["B"], m)  # (C, D, V)
    out["c"] = out["c"] * sd + shift
    out["sigma"] = out["sigma"] * sd
    if "noise_loc" in out:
        out["noise_loc"] = out["noise_loc"] * sd[:, None] + shift[..., None]
        out["noise_var"] = out["noise_var"] * (sd**2)[:, None]
    act = np.asarray(out.get("eq_active", np.ones(sd.size, dtype=bool)), dtype=bool)
    logsd = np.log(sd) * act
    out["loglik"] = (out["loglik"] - logsd.sum()).astype(out["loglik"].dtype)
    if "loglik_eq" in out:
        out["loglik_eq"] = out["loglik_eq"] - logsd[:, None]
    return out


def _sample_tile_std(X: np.ndarray, prior: DagPrior, spec: ModelSpec, seed: int, threads: int | None = None,
                     active: np.ndarray | None = None) -> dict:
    """:func:`sample_tile` on data already standardised per tile."""
    if spec.noise == "mog" and spec.sampler.name == "gibbs":
        return _sample_tile_gibbs(X, prior, spec, seed, active)
    order = prior.order
    Zc = np.ascontiguousarray(X[:, order], dtype=np.float64)
    sp = spec.sampler
    cm = compiled_model(spec, X.shape[1])
    extra = mog_data(Zc, prior, active) if spec.noise == "mog" else None
    ta = TARGET_ACCEPT.get(spec.noise, 0.8)
    idata = _run_nuts(cm, Zc, prior, sp, sp.draws * sp.thin, seed, threads, extra, ta)
    if sp.thin > 1:
        idata = idata.sel(draw=slice(None, None, sp.thin))
    # Size the draws to the ESS needed: one re-run, with draws scaled to reach target_ess (at most
    # 4x; 2x when only r_hat fell short), for the tiles that fell short. The kept draws of every
    # tile in a run must have the same length, so the re-run is thinned back to ``draws``;
    # thinning a longer run also lowers the autocorrelation of the kept draws.
    keep = prior.mask
    rhat, ess = _diagnostics(idata.posterior["beta"].values[..., keep])
    reran = 0
    if rhat.size and (ess.min() < sp.target_ess or rhat.max() > RHAT_MAX):
        factor = rerun_factor(ess.min(), sp.target_ess)
        idata = _run_nuts(cm, Zc, prior, sp, sp.draws * sp.thin * factor, seed + 1, threads, extra, ta)
        idata = idata.sel(draw=slice(None, None, sp.thin * factor))
        reran = factor
    post = idata.posterior
    beta = post["beta"].values * prior.mask  # (chain, draw, n_allowed) in causal positions
    inv = np.argsort(order)     # descriptor index -> causal position
    out = {
        "B": to_descriptor_matrix(beta, order),
        "edge_inclusion": to_descriptor_matrix(conditional_inclusion(beta, prior.w, spec.prior) * prior.mask, order),
    }
    if spec.noise == "mog":
        for name in ("noise_weight", "noise_loc", "noise_var"):
            out[name] = post[name].values[..., inv, :]
        out["c"], out["sigma"] = mixture_moments(out["noise_weight"], out["noise_loc"], out["noise_var"])
    else:
        out["c"], out["sigma"] = post["c"].values[..., inv], post["sigma"].values[..., inv]
    if "nu" in post:
        out["nu"] = post["nu"].values
    if "shape" in post:
        out["shape"] = post["shape"].values[..., inv]
    ll_eq = pointwise_loglik(X, out["B"], out["c"], out["sigma"], _shape_param(out), spec.noise,
                             mixture=_mixture_param(out), per_equation=True)          # (C, D, n, V)
    act = np.ones(X.shape[1], dtype=bool) if active is None else np.asarray(active, dtype=bool)
    out["loglik"] = (ll_eq * act).sum(-1).astype(np.float32)
    out["loglik_eq"], out["eq_active"] = np.moveaxis(ll_eq, 3, 2), act  # in memory only (LOO by equation)
    stats = idata.sample_stats
    out["diverging"] = stats["diverging"].values.astype(bool)
    depth = "depth" if "depth" in stats else "tree_depth"
    out["tree_depth"] = stats[depth].values.astype(np.int64)
    out["step_size"] = stats["step_size"].values.astype(float)
    if "energy" in stats:
        # the Hamiltonian's energy per transition (az.plot_energy, E-BFMI): only when the kept draws
        # are consecutive transitions; thinned, the differences span several transitions and E-BFMI
        # would read too high (run with --thin 1 to keep it). NaN otherwise, so every NUTS tile of a
        # run has the same arrays.
        out["energy"] = stats["energy"].values.astype(float) if sp.thin == 1 and not reran \
            else np.full(out["diverging"].shape, np.nan)
    # Convergence per coefficient (allowed ones only; fixed zeros have no chain to diagnose).
    r_kept, ess_kept = _diagnostics(beta[..., keep]) if reran else (rhat, ess)
    rhat_m = np.full(prior.allowed.shape, np.nan)
    ess_m = np.full(prior.allowed.shape, np.nan)
    i, j = lower_pairs(len(order))
    rhat_m[order[i][keep], order[j][keep]] = r_kept
    ess_m[order[i][keep], order[j][keep]] = ess_kept
    out["r_hat"], out["ess_bulk"] = rhat_m, ess_m
    out["rerun_factor"] = np.array(reran)
    return out


def _mixture_param(draws: dict):
    if "noise_weight" in draws:
        return draws["noise_weight"], draws["noise_loc"], draws["noise_var"]
    return None


def _sample_tile_gibbs(X: np.ndarray, prior: DagPrior, spec: ModelSpec, seed: int,
                       active: np.ndarray | None = None) -> dict:
    """``sample_tile`` for the ``mog`` family with the exact Gibbs sampler (same outputs)."""
    eqs = equations(np.asarray(X, dtype=np.float64), prior, active)
    fit, _, reran = sample_equation_batch(eqs, spec, seed, loo=False)
    pmask = eqs["pmask"]
    return assemble_gibbs(X, eqs, fit, prior, spec, fit["r_hat"][pmask], fit["ess_bulk"][pmask], reran)


def _equation_seeds(eqs: dict, seed: int) -> np.ndarray:
    """One seed per equation from ``seed`` and the equation itself (child and parents)."""
    return np.asarray([int(np.random.SeedSequence([int(seed) % (2**32), int(c), *[int(p) + 1 for p in par]])
                           .generate_state(1)[0]) for c, par in zip(eqs["child"], eqs["parents"])])


def _gibbs_fit(eqs: dict, spec: ModelSpec, draws: int, thin: int, seed: int, state=None, tune: int | None = None,
               chains: int | None = None) -> dict:
    """Gibbs draws of a batch of equations; each equation's random stream follows from ``seed`` and
    the equation itself (child and parents), so it gets the same draws in any batch or order.
    ``state`` / ``tune``: continue chains (:func:`causalcrystal.gibbs.sample_equations`)."""
    sp = spec.sampler
    return sample_equations(eqs["y"], eqs["X"], eqs["pmask"], eqs["w"], spec.prior, spec.mixture,
                            chains=sp.chains if chains is None else chains, draws=draws,
                            tune=sp.tune if tune is None else tune, thin=thin, seed=_equation_seeds(eqs, seed),
                            state=state)


def assemble_gibbs(X, eqs: dict, fit: dict, prior: DagPrior | None, spec: ModelSpec, rhat, ess, reran: int,
                   rows: np.ndarray | None = None) -> dict:
    """Turn the equations' draws (``fit`` from :func:`causalcrystal.gibbs.sample_equations`, or the
    equations ``rows`` of a larger batch) into :func:`sample_tile`'s outputs in descriptor indexing."""
    rows = np.arange(len(eqs["child"])) if rows is None else np.asarray(rows)
    beta = fit["beta"][:, :, rows]                       # (C, D, E, P)
    C, D = beta.shape[:2]
    V = len(eqs["child"])
    child, parents, pmask = eqs["child"], eqs["parents"], eqs["pmask"]
    B = np.zeros((C, D, V, V))
    w_mat = np.zeros((V, V))
    e_idx, p_idx = np.nonzero(pmask)
    B[:, :, child[e_idx], parents[e_idx, p_idx]] = beta[:, :, e_idx, p_idx]
    w_mat[child[e_idx], parents[e_idx, p_idx]] = eqs["w"][e_idx, p_idx]
    allowed = np.zeros((V, V), dtype=bool)
    allowed[child[e_idx], parents[e_idx, p_idx]] = True
    incl = np.where(allowed, conditional_inclusion(B, np.clip(w_mat, 1e-12, 1 - 1e-12), spec.prior), 0.0)
    inv = np.argsort(child)   # descriptor index -> equation row
    out = {"B": B, "edge_inclusion": incl}
    for name in ("noise_weight", "noise_loc", "noise_var"):
        out[name] = fit[name][:, :, rows][:, :, inv]
    out["c"], out["sigma"] = mixture_moments(out["noise_weight"], out["noise_loc"], out["noise_var"])
    act = eqs["active"][inv]
    ll = fit["loglik"][:, :, rows][:, :, inv]           # (C, D, V, n) per descriptor
    out["loglik"] = (ll * act[None, None, :, None]).sum(2).astype(np.float32)
    out["loglik_eq"], out["eq_active"] = ll, act        # in memory only (LOO by equation); not written
    # Gibbs has no trajectories to diverge (kept: summaries count divergences for every sampler), and
    # no tree depth, step size or energy (not stored: zeros and NaN would read as statistics)
    out["diverging"] = np.zeros((C, D), dtype=bool)
    rhat_m = np.full((V, V), np.nan)
    ess_m = np.full((V, V), np.nan)
    rhat_m[child[e_idx], parents[e_idx, p_idx]] = rhat
    ess_m[child[e_idx], parents[e_idx, p_idx]] = ess
    out["r_hat"], out["ess_bulk"] = rhat_m, ess_m
    out["rerun_factor"] = np.array(reran)
    # chains restarted from a local mode over the whole batch (:func:`stuck_chains`): the tile's
    # distinct equations, so the same count in every order's fit
    out["restarted_chains"] = np.array(int(fit["restarted"].sum()))
    return out


#: Per-tile outputs of an order mixture that are not draws (see :func:`sample_tile_orders`).
ORDER_KEYS = ("candidate_order", "order_weight", "order_elpd", "order_se", "order_p_loo", "order_pareto_k",
              "order_loo_valid", "allowed_weight")


def _equation_key(eqs: dict, row: int) -> tuple:
    return (int(eqs["child"][row]), tuple(eqs["parents"][row].tolist()), tuple(np.round(eqs["w"][row], 12).tolist()),
            bool(eqs["active"][row]))


def sample_tile_orders(X: np.ndarray, priors: list[DagPrior], spec: ModelSpec, seed: int, threads: int | None = None,
                       active: np.ndarray | None = None, weight_seed: int | None = None) -> dict:
    """The posterior of one tile averaged over candidate causal orders.

    Each order in ``priors`` (e.g. LiNGAM's candidate orders of the tile, best first) is a model;
    the tile's posterior is their mixture, weighted by pseudo-BMA+ weights from PSIS-LOO over the
    tile's cells (Yao et al. 2018: ``exp(elpd)`` weights stabilised by the Bayesian bootstrap, which
    spreads the weight when orders are hard to tell apart, e.g. near-Gaussian noise). So order
    uncertainty is part of every interval, and an edge one order forbids keeps the draws of the
    orders that allow it (``allowed_weight``: the weight of the orders allowing each edge).

    Draws are allocated to orders in proportion to the weights (largest remainder, per chain, in
    the order of ``priors``): deterministic. With the ``mog`` family and the Gibbs sampler every
    distinct structural equation (a child, its parents and their prior weights) is sampled once
    and shared by the orders that contain it; other families sample each order with
    :func:`sample_tile`. Returns :func:`sample_tile`'s arrays (the mixture) plus
    ``candidate_order`` (k, V), ``order_weight``, ``order_elpd``, ``order_se``, ``order_p_loo``,
    ``order_pareto_k`` (k,) (the largest Pareto k of each order's LOO) and ``allowed_weight`` (V, V).
    """
    if not priors:
        raise ValueError("sample_tile_orders needs at least one causal order.")
    weight_seed = seed if weight_seed is None else weight_seed
    fits, loos = fit_orders(X, priors, spec, seed, active, threads, weight_seed)
    return mix_orders(fits, priors, weight_seed, loos)


def distinct_equations(X: np.ndarray, priors: list[DagPrior], active: np.ndarray | None = None,
                       drop_common: bool = False) -> tuple[dict, list[np.ndarray], list[dict]]:
    """The structural equations of several causal orders of one tile, each distinct equation once.

    An equation is the child, its parents and their prior weights (and whether it enters the
    likelihood): orders that share it share its posterior, so it is sampled once
    (:func:`sample_equation_batch`). ``drop_common``: leave out the equations that *every* order
    contains. They add the same log-likelihood to every order, so they cancel from every comparison
    of the orders (pseudo-BMA+ weights and ELPD differences are exactly unchanged); a direction test
    (:mod:`causalcrystal.direction`) then samples two to six equations instead of a whole tile.

    Returns ``(batch, rows_of, per_order)``: ``batch`` the distinct equations stacked like
    :func:`equations`' arrays (U rows); ``rows_of[m]`` (V,) the batch row of each equation of order
    ``m`` in causal position order (-1 for a dropped common equation); ``per_order`` each order's
    :func:`equations`.
    """
    per_order = [equations(X, pr, active) for pr in priors]
    keyed = [[_equation_key(eqs, r) for r in range(len(eqs["child"]))] for eqs in per_order]
    common = set.intersection(*(set(k) for k in keyed)) if drop_common else set()
    keys: dict[tuple, int] = {}
    first: dict[int, tuple[int, int]] = {}
    rows_of = []
    for o, ks in enumerate(keyed):
        rows = np.full(len(ks), -1, dtype=np.int64)
        for r, key in enumerate(ks):
            if key in common:
                continue
            rows[r] = keys.setdefault(key, len(keys))
            first.setdefault(int(rows[r]), (o, r))
        rows_of.append(rows)
    names = ("y", "X", "pmask", "w", "active", "child", "parents")
    if keys:
        batch = {name: np.stack([per_order[o][name][r] for o, r in (first[u] for u in range(len(keys)))])
                 for name in names}
    else:  # identical orders: nothing differs
        batch = {name: per_order[0][name][:0] for name in names}
    return batch, rows_of, per_order


#: Nats by which a chain's mean log-likelihood may fall below the best chain's of the same equation
#: before the chain counts as stuck in a local mode (:func:`stuck_chains`).
STUCK_GAP = 20.0


def stuck_chains(loglik: np.ndarray, gap: float = STUCK_GAP, reference: np.ndarray | None = None) -> np.ndarray:
    """Chains stuck in a local mode of negligible posterior mass.

    ``loglik`` (chain, draw, E, n): the pointwise log-likelihood of each of E structural equations
    (a child on its parents, :func:`equations`) at its n cells. A chain
    is stuck when its mean total log-likelihood (over its kept draws) is more than ``gap`` nats below
    the best chain's of the same equation, or below ``reference`` (E,), a level other chains of
    the equation reached (the scouts of :func:`scout_starts`). Chains of one equation otherwise differ little (measured
    on 155 equations of 12 demo tiles, 16 chains x 500 draws each: median gap to the best chain 0.6
    nats, 99.9 % below 5, largest 14); a mode whose typical density is e^-20 ~ 2e-9 of another's
    holds no mass worth reporting unless its volume is larger by as much, which one model on one
    equation's data does not give. Why it is needed: the mixture noise can explain a sub-population
    of cells with a wide component and a different slope, and the Gibbs sweep does not cross
    between such modes (measured 2026-12-01: on one demo equation 3 of 32 chains sat at a
    coefficient of +0.32 against -0.44, their log-likelihood 62 nats lower, through 3,000 burn-in
    sweeps; on cells from two crossing regression lines 21 of 32 chains were stuck). With the
    default 2 chains an equation whose chains are *both* stuck cannot be told apart by this rule.
    Returns (chain, E) bool.
    """
    return _stuck(_chain_levels(loglik), gap, reference)


def _chain_levels(loglik: np.ndarray) -> np.ndarray:
    """Each chain's mean total log-likelihood per equation: (chain, draw, E, n) -> (chain, E)."""
    return np.asarray(loglik, dtype=np.float64).sum(-1).mean(1)


def _stuck(levels: np.ndarray, gap: float, reference: np.ndarray | None) -> np.ndarray:
    best = levels.max(0) if reference is None else np.maximum(levels.max(0), reference)
    return best[None] - levels > gap


#: Sweeps of each scout chain (:func:`scout_starts`; their number is ``SamplerSpec.scouts``).
SCOUT_SWEEPS = 50


def scout_starts(batch: dict, spec: ModelSpec, seed: int, scouts: int | None = None,
                 sweeps: int = SCOUT_SWEEPS) -> tuple[np.ndarray | None, dict | None]:
    """Starting states of the kept chains, chosen among ``scouts`` short chains per equation
    (default: the spec's ``sampler.scouts``, 8).

    ``batch``: the equations (:func:`distinct_equations` or :func:`equations`: ``y`` (E, n),
    ``X`` (E, n, P), ``pmask``, ``w``, ``child``, ``parents``); the states have width 2P + 3K
    (coefficients, slab indicators, mixture weights, locations, variances). Each scout runs
    ``sweeps`` sweeps from the sampler's dispersed start; a kept chain starts from a
    scout drawn at random among those whose mean log-likelihood over their last ``sweeps // 2``
    sweeps is within :data:`STUCK_GAP` of the best scout's (so scouts in modes of comparable
    density all stay eligible and r_hat can still see a real second mode). The kept chains then run
    their full burn-in. Why: on equations with local modes (:func:`stuck_chains`) 28-66 % of chains
    from the default start were stuck (6 Px equations of 2 demo tiles, 32 chains each), so with 2
    chains both were stuck, unseen by r_hat or by the stuck-chain rule, in 8-44 % of runs; with 8
    scouts x 50 sweeps in 0-5 % (20 runs each; measured 2026-12-01). Where 50 sweeps are too few
    for the scouts to settle (two crossing regression lines: most kept chains still fell into the
    minority's mode), the best scout still serves as a reference: :func:`stuck_chains` compares
    the kept chains with it too, and a chain below it restarts from it. Cost: 400 sweeps per
    equation against ~2,400 for the kept chains (+17 % sweeps; ~10 % more sampling time per tile
    measured, which includes LOO and diagnostics).

    Returns ``(starts, reference)``: (chains, E, width) states for
    :func:`causalcrystal.gibbs.sample_equations` and ``{"level": (E,), "state": (E, width)}``, the
    best scout's mean log-likelihood and last state; ``(None, None)`` with ``scouts`` 0.
    """
    sp = spec.sampler
    scouts = sp.scouts if scouts is None else int(scouts)
    if scouts <= 0 or not len(batch["child"]):
        return None, None
    half = max(1, sweeps // 2)
    sc = _gibbs_fit(batch, spec, half, 1, seed + 3, tune=max(0, sweeps - half), chains=scouts)
    level = _chain_levels(sc["loglik"])  # (scouts, E)
    eligible = level >= level.max(0, keepdims=True) - STUCK_GAP
    state = np.empty((sp.chains,) + sc["state"].shape[1:])
    for e, eq_seed in enumerate(_equation_seeds(batch, seed + 3)):
        rng = np.random.default_rng([int(eq_seed), 1])  # per equation: the same choice in any batch
        cand = np.flatnonzero(eligible[:, e])
        state[:, e] = sc["state"][rng.choice(cand, sp.chains, replace=cand.size < sp.chains), e]
    top = level.argmax(0)
    return state, {"level": level.max(0), "state": sc["state"][top, np.arange(level.shape[1])]}


def _restart_stuck_chains(fit: dict, batch: dict, spec: ModelSpec, seed: int, reference: dict | None = None
                          ) -> None:
    """Restart the chains :func:`stuck_chains` finds from the best chain's last state (or the best
    scout's, ``reference`` from :func:`scout_starts`, where it is higher) and sample those
    equations again: burn-in, then as many draws as the first run (in place in ``fit``).

    Every chain of such an equation is re-drawn, with new random streams, so the copies start at one
    point and part by the burn-in (200 sweeps by default, ~20 autocorrelation times of the slowest
    coefficient at the bulk ESS per sweep of ~0.1 measured on demo equations), after which r_hat
    compares them as independent chains. Sets ``fit["restarted"]`` (E,), the chains restarted."""
    sp = spec.sampler
    levels = _chain_levels(fit["loglik"])  # (chain, E)
    stuck = _stuck(levels, STUCK_GAP, None if reference is None else reference["level"])
    fit["restarted"] = stuck.sum(0)
    rows = np.flatnonzero(stuck.any(0))
    if not rows.size:
        return
    level = levels[:, rows]
    best = level.argmax(0)
    state = fit["state"][:, rows].copy()
    for i, r in enumerate(rows):
        scout_better = reference is not None and reference["level"][r] > level[best[i], i]
        state[stuck[:, r], i] = reference["state"][r] if scout_better else fit["state"][best[i], r]
    redo = _gibbs_fit({k: v[rows] for k, v in batch.items()}, spec, sp.draws, sp.thin, seed + 2, state=state,
                      tune=sp.tune)
    _put_rows(fit, rows, redo, batch["pmask"])


def _put_rows(fit: dict, rows: np.ndarray, new: dict, pmask: np.ndarray, head: np.ndarray | None = None) -> dict:
    """Write ``new`` (a :func:`_gibbs_fit` of the batch rows ``rows``) into ``fit`` in place: every
    per-draw array (chain, draw, equation, ...), preceded by ``fit``'s own draws ``head`` of those
    rows when given (a continuation), the chains' last states, and the rows' r_hat and bulk ESS.
    Returns the rows' per-draw arrays as written."""
    sub = {}
    for name, arr in new.items():
        if name in fit and isinstance(arr, np.ndarray) and arr.ndim >= 3 and name != "state":
            sub[name] = arr if head is None else np.concatenate([fit[name][:, head][:, :, rows], arr], axis=1)
            fit[name][:, :, rows] = sub[name]
    fit["state"][:, rows] = new["state"]
    fit["r_hat"][rows], fit["ess_bulk"][rows] = _batch_diagnostics(sub["beta"], pmask[rows])
    return sub


def sample_equation_batch(batch: dict, spec: ModelSpec, seed: int, needed=None, loo: bool = True
                          ) -> tuple[dict, object, int]:
    """Gibbs draws and PSIS-LOO per equation of a batch of distinct equations (from
    :func:`distinct_equations`), with the run's convergence rule.

    ``needed(eq_loo)`` -> batch rows whose convergence is required (default all): e.g. only the
    equations of orders that carry weight (an order the data reject may mix slowly without
    mattering, and re-running it would multiply the cost). Required equations whose r_hat exceeds
    :data:`RHAT_MAX` or whose bulk ESS is below the spec's ``target_ess`` are continued once to
    2-4x the sweeps (:func:`rerun_factor`), thinned back to the same number of draws.

    The kept chains start from scout chains (:func:`scout_starts`), and after the first pass every
    equation is checked for chains stuck in a local mode (:func:`stuck_chains`): such a chain is
    restarted from the best chain's last state and the equation sampled again (burn-in and draws,
    all chains), so that neither its posterior nor its LOO (which weighs the orders) mixes in a
    mode of negligible mass.

    Returns ``(fit, eq_loo, factor)``: :func:`causalcrystal.gibbs.sample_equations`' arrays (leading
    axes chain, draw, equation) plus ``r_hat`` and ``ess_bulk`` (E, P; NaN for padding),
    ``restarted`` (E,) the number of chains restarted,
    :class:`causalcrystal.evidence.EquationLoo` per equation (None with ``loo=False``; then
    ``needed`` gets None), and the re-run factor (0 if none).
    """
    from causalcrystal.evidence import loo_by_equation

    sp = spec.sampler
    pmask = batch["pmask"]
    starts, scout_ref = scout_starts(batch, spec, seed)
    fit = _gibbs_fit(batch, spec, sp.draws, sp.thin, seed, state=starts)
    fit["r_hat"], fit["ess_bulk"] = _batch_diagnostics(fit["beta"], pmask)
    _restart_stuck_chains(fit, batch, spec, seed, scout_ref)
    eq_loo = loo_by_equation(fit["loglik"]) if loo else None
    need = np.arange(len(batch["child"])) if needed is None else np.asarray(needed(eq_loo), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: equations without parents
        ess_min = np.nanmin(np.where(pmask, fit["ess_bulk"], np.nan), axis=1)
        rhat_max = np.nanmax(np.where(pmask, fit["r_hat"], np.nan), axis=1)
    rows = np.array([u for u in need if pmask[u].any() and (ess_min[u] < sp.target_ess or rhat_max[u] > RHAT_MAX)],
                    dtype=np.int64)
    if not rows.size:
        return fit, eq_loo, 0
    factor = rerun_factor(ess_min[rows].min(), sp.target_ess)
    # Continue the short equations' chains (no new burn-in) to ``factor`` times their length and
    # thin the whole chain back to ``draws``: every factor-th kept draw of the first part, then the
    # continuation at ``thin * factor``. The same span of sweeps as a fresh run of ``factor`` times
    # the length, without its burn-in and with the first part's sweeps reused (~30 % less work).
    first = np.arange(0, sp.draws, factor)
    more = _gibbs_fit({k: v[rows] for k, v in batch.items()}, spec, sp.draws - first.size, sp.thin * factor,
                      seed + 1, state=fit["state"][:, rows], tune=0)
    sub = _put_rows(fit, rows, more, pmask, head=first)
    if loo:
        sub_loo = loo_by_equation(sub["loglik"])
        eq_loo.elpd[rows], eq_loo.pareto_k[rows], eq_loo.p_loo[rows] = sub_loo.elpd, sub_loo.pareto_k, sub_loo.p_loo
    return fit, eq_loo, factor


def weighted_rows(batch: dict, rows_of: list[np.ndarray], per_order: list[dict], weight_seed: int):
    """The ``needed`` rule of :func:`sample_equation_batch` for an order mixture: the batch rows of
    the orders whose pseudo-BMA+ weight (:func:`pseudo_bma` of :func:`orders_loo`) is >= 1 %
    (dropped common equations, row -1, are not in the batch)."""
    def needed(eq_loo) -> np.ndarray:
        weight = pseudo_bma(orders_loo(batch, rows_of, per_order, eq_loo), weight_seed)
        rows = [r[r >= 0] for r, wm in zip(rows_of, weight) if wm >= 0.01]
        return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)
    return needed


def _batch_diagnostics(beta: np.ndarray, pmask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """r_hat and bulk ESS of every real coefficient of a batch of equations in one ArviZ call
    (``beta``: chain, draw, E, P) -> two (E, P) arrays, NaN where ``pmask`` is False (one call per
    equation cost ~25 ms per tile in ArviZ's per-call overhead, measured)."""
    rhat = np.full(pmask.shape, np.nan)
    ess = np.full(pmask.shape, np.nan)
    rhat[pmask], ess[pmask] = _diagnostics(beta[:, :, pmask])
    return rhat, ess


def orders_loo(batch: dict, rows_of: list[np.ndarray], per_order: list[dict], eq_loo) -> list[dict]:
    """Each order's LOO (:func:`_combine_loo`'s keys) from its equations' (``eq_loo`` per batch row),
    with ``elpd_eq``, ``k_eq`` (V, n) and ``p_eq`` (V,) in descriptor indexing (0 for equations not in
    the likelihood or dropped as common to all orders)."""
    out = []
    for eqs, rows in zip(per_order, rows_of):
        have = rows >= 0
        rows_h = rows[have]
        act = batch["active"][rows_h]
        lo = _combine_loo(eq_loo.elpd[rows_h][act], eq_loo.pareto_k[rows_h][act], eq_loo.p_loo[rows_h][act])
        child = eqs["child"][have][act]
        n = eq_loo.elpd.shape[1]
        lo["elpd_eq"], lo["k_eq"], lo["p_eq"] = np.zeros((len(rows), n)), np.zeros((len(rows), n)), np.zeros(len(rows))
        lo["elpd_eq"][child] = eq_loo.elpd[rows_h][act]
        lo["k_eq"][child] = eq_loo.pareto_k[rows_h][act]
        lo["p_eq"][child] = eq_loo.p_loo[rows_h][act]
        out.append(lo)
    return out


def _gibbs_orders(X, priors, spec: ModelSpec, seed: int, active, weight_seed: int) -> tuple[list[dict], list]:
    """Sample the distinct equations of all orders in one Gibbs batch; assemble each order.

    Returns the per-order fits and their LOO (:func:`orders_loo`), computed once per distinct
    equation. Convergence (r_hat, bulk ESS) is required of the equations of the orders that carry
    weight (>= 1 %, :func:`sample_equation_batch`)."""
    batch, rows_of, per_order = distinct_equations(X, priors, active)

    fit, eq_loo, factor = sample_equation_batch(batch, spec, seed, weighted_rows(batch, rows_of, per_order, weight_seed))
    fits = []
    for eqs, rows in zip(per_order, rows_of):
        r_o, e_o = fit["r_hat"][rows][eqs["pmask"]], fit["ess_bulk"][rows][eqs["pmask"]]
        fits.append(assemble_gibbs(X, eqs, fit, None, spec, r_o, e_o, factor, rows=rows))
    return fits, orders_loo(batch, rows_of, per_order, eq_loo)


def _combine_loo(elpd_eq: np.ndarray, k_eq: np.ndarray, p_loo_eq: np.ndarray) -> dict:
    """One order's LOO from its equations' (elpd is additive over equations, module
    :mod:`causalcrystal.evidence`): pointwise ``elpd_i`` (n,), ``pareto_k`` (the largest),
    ``p_loo`` (the sum) and ``n_obs`` (cells x equations)."""
    return {"elpd_i": elpd_eq.sum(0), "pareto_k": float(np.nanmax(k_eq)) if k_eq.size else 0.0,
            "p_loo": float(np.sum(p_loo_eq)), "n_obs": int(elpd_eq.size)}


def order_loo(fit: dict) -> dict:
    """The LOO of one order's fit (from its per-equation log-likelihood ``loglik_eq``), with the
    per-equation arrays ``elpd_eq``, ``k_eq`` (V, n) and ``p_eq`` (V,) in descriptor indexing."""
    from causalcrystal.evidence import loo_by_equation

    act = np.asarray(fit["eq_active"], dtype=bool)
    L = loo_by_equation(fit["loglik_eq"])
    lo = _combine_loo(L.elpd[act], L.pareto_k[act], L.p_loo[act])
    lo["elpd_eq"] = L.elpd * act[:, None]
    lo["k_eq"] = np.where(act[:, None], L.pareto_k, 0.0)
    lo["p_eq"] = L.p_loo * act
    return lo


def fit_orders(X: np.ndarray, priors: list[DagPrior], spec: ModelSpec, seed: int, active=None,
               threads: int | None = None, weight_seed: int | None = None) -> tuple[list[dict], list[dict]]:
    """Each order's posterior (:func:`sample_tile` outputs, with ``loglik_eq``) and its LOO
    (:func:`order_loo`); with the Gibbs sampler, equations shared by orders are sampled once."""
    weight_seed = seed if weight_seed is None else weight_seed
    Xs, m, sd = tile_standardise(X)
    if spec.noise == "mog" and spec.sampler.name == "gibbs":
        fits, loos = _gibbs_orders(Xs, priors, spec, seed, active, weight_seed)
    else:
        fits = [_sample_tile_std(Xs, pr, spec, seed + 7919 * k, threads, active) for k, pr in enumerate(priors)]
        loos = [order_loo(f) for f in fits]
    # back to the units of X; the LOO values move by the same Jacobian for every order
    fits = [to_input_units(f, m, sd) for f in fits]
    act = np.ones(sd.size, dtype=bool) if active is None else np.asarray(active, dtype=bool)
    for lo in loos:
        lo["elpd_i"] = lo["elpd_i"] - np.log(sd)[act].sum()
        if "elpd_eq" in lo:
            lo["elpd_eq"] = lo["elpd_eq"] - (np.log(sd) * act)[:, None]
    return fits, loos


def pseudo_bma(loos: list[dict], seed: int) -> np.ndarray:
    """Pseudo-BMA+ weights of orders from their LOO (:func:`causalcrystal.evidence.pseudo_bma_weights`)."""
    from causalcrystal.evidence import pseudo_bma_weights

    return pseudo_bma_weights(np.stack([lo["elpd_i"] for lo in loos]), seed=int(seed) % (2**31))


def order_draws(weight: np.ndarray, draws: int) -> np.ndarray:
    """How many of each chain's ``draws`` come from each causal order of weight ``weight``
    (:func:`mix_orders`: consecutive blocks, in candidate order): largest remainder of
    ``weight * draws``, ties broken by position. (K,) integers summing to ``draws``."""
    weight = np.asarray(weight, dtype=float)
    raw = weight * draws
    n = np.floor(raw).astype(int)
    rest = draws - n.sum()
    if rest:
        n[np.argsort(-(raw - n), kind="stable")[:rest]] += 1
    return n


def mix_orders(fits: list[dict], priors: list[DagPrior], seed: int, loos: list[dict] | None = None) -> dict:
    """Mix per-order posteriors (:func:`sample_tile` outputs) by pseudo-BMA+ weights (see
    :func:`sample_tile_orders`); ``loos``: their LOO if already computed."""
    from causalcrystal.evidence import loo_summary

    k = len(fits)
    C, D = fits[0]["B"].shape[:2]
    loos = [order_loo(f) for f in fits] if loos is None else loos
    weight = pseudo_bma(loos, seed)
    summ = [loo_summary(lo["elpd_i"], np.array([lo["pareto_k"]]), lo["p_loo"], lo["n_obs"]) for lo in loos]
    n = order_draws(weight, D)
    starts = np.concatenate([[0], np.cumsum(n)])
    mixed: dict = {}
    draw_keys = [name for name, a in fits[0].items() if name != "loglik_eq"
                 and isinstance(a, np.ndarray) and a.ndim >= 2 and a.shape[:2] == (C, D)]
    for name in draw_keys:
        mixed[name] = np.concatenate([fits[m][name][:, starts[m]:starts[m + 1]] for m in range(k)], axis=1)
    if "energy" in mixed and (n > 0).sum() > 1:
        # draws of several orders are draws of several models, each with its own Hamiltonian: their
        # energies side by side are no chain's energy (E-BFMI would read the jumps between blocks)
        mixed["energy"] = np.full_like(mixed["energy"], np.nan)
    # diagnostics: the worst over the orders that contribute draws (an edge's r_hat from the orders allowing it)
    use = [m for m in range(k) if n[m] > 0]
    stack = lambda key: np.stack([fits[m][key] for m in use])  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: edges no order allows
        mixed["r_hat"] = np.nanmax(stack("r_hat"), axis=0)
        mixed["ess_bulk"] = np.nanmin(stack("ess_bulk"), axis=0)
    mixed["rerun_factor"] = np.array(max(int(fits[m]["rerun_factor"]) for m in range(k)))
    # chains restarted from a local mode (Gibbs; :func:`stuck_chains`), over the tile's equations
    mixed["restarted_chains"] = np.array(max(int(fits[m].get("restarted_chains", 0)) for m in range(k)))
    allowed = np.stack([pr.allowed for pr in priors])
    # (a sum of weights that add up to 1: clip the rounding, p_allowed is a probability)
    mixed["allowed_weight"] = np.minimum((weight[:, None, None] * allowed).sum(0), 1.0)
    mixed["candidate_order"] = np.stack([np.asarray(pr.order, dtype=np.int64) for pr in priors])
    mixed["order_weight"] = weight
    for key, name in (("elpd", "order_elpd"), ("se", "order_se"), ("p_loo", "order_p_loo"),
                      ("pareto_k", "order_pareto_k")):
        mixed[name] = np.array([sm[key] for sm in summ])
    mixed["order_loo_valid"] = np.array([sm["valid"] for sm in summ])
    return mixed


def _shape_param(draws: dict):
    if "nu" in draws:
        return draws["nu"][..., None, None]
    if "shape" in draws:
        return draws["shape"][..., None, :]
    return None


def pointwise_loglik(X, B, c, sigma, shape, noise: str, mixture=None, active=None,
                     per_equation: bool = False) -> np.ndarray:
    """Log-likelihood of every cell under every draw: ``(chain, draw, cell)``.

    ``X`` cells x vars; ``B`` (chain, draw, var, var); ``c``, ``sigma`` (chain, draw, var);
    ``shape`` broadcastable to (chain, draw, cell, var) or None; ``mixture`` (``mog``): the
    ``(weights, locations, variances)`` (chain, draw, var, K), which replace ``c`` and ``sigma``;
    ``active`` (var,): the variables whose equations count (default all). ``per_equation``:
    return ``(chain, draw, cell, var)`` without summing over the equations.
    """
    # an equation out of the likelihood (a derived descriptor, possibly constant in the tile, its
    # noise scale stored as 0) may give inf or NaN here: it is masked out, never multiplied by 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if noise == "mog":
            resid = X[None, None] - np.einsum("cdij,nj->cdni", B, X)            # (C, D, n, V)
            pi, mu, s2 = mixture
            ll = mixture_logpdf(np.moveaxis(resid, 2, 3), pi, mu, s2)          # (C, D, V, n)
            ll = np.moveaxis(ll, 2, 3)
        else:
            resid = X[None, None] - np.einsum("cdij,nj->cdni", B, X) - c[:, :, None, :]
            ll = noise_logp(resid, sigma[:, :, None, :], shape, noise)
    if active is not None:
        ll = np.where(np.asarray(active, dtype=bool), ll, 0.0)
    return ll if per_equation else ll.sum(axis=-1)


def prior_predictive(prior: DagPrior, spec: ModelSpec, n_cells: int, draws: int = 100, seed: int = 0) -> dict:
    """Simulate data sets from the prior: ``z`` (draw, cell, var) in descriptor order, plus the
    parameters drawn: ``B`` (draw, effect, cause), ``c``, ``sigma`` (draw, var; for ``mog`` the
    intercept 0 and scale 1 the mixture is drawn around) and the noise's ``shape`` / ``mixture``.

    The parameters are drawn from the PyMC model itself (:func:`build_model` with the tile's
    inclusion weights, ``pymc.sample_prior_predictive``), so no prior is restated here; for ``mog``
    at unit residual variance and zero intercept (``v = 1``, ``m0 = 0``: standardised data). The
    data are then ``z = (I - B)^{-1} (c + e)`` (:func:`simulate_sem`), the model's generative
    process (used to check that priors give plausible standardised data).
    """
    import logging

    import pymc as pm

    n = len(prior.order)
    names = {"mog": ["beta", "noise_weight", "noise_loc", "noise_var"], "studentt": ["beta", "c", "sigma", "nu"],
             "gennorm": ["beta", "c", "sigma", "shape"]}.get(spec.noise, ["beta", "c", "sigma"])
    pymc_log = logging.getLogger("pymc")
    level = pymc_log.level
    pymc_log.setLevel(logging.WARNING)  # not PyMC's "Sampling: [...]" line
    try:
        with warnings.catch_warnings():
            # the likelihood is a Potential, which prior predictive sampling leaves out: as intended
            warnings.filterwarnings("ignore", message=".*Potential.*", category=UserWarning)
            model = build_model(spec, n)
            with model:
                pm.set_data({"w": prior.w, "m": prior.mask.astype(np.float64)})
                pp = pm.sample_prior_predictive(draws=draws, var_names=names, random_seed=int(seed)).prior
    finally:
        pymc_log.setLevel(level)
    got = {k: pp[k].values[0] for k in names}  # (draw, ...)
    inv = np.argsort(prior.order)  # descriptor index -> causal position
    B = to_descriptor_matrix(got["beta"] * prior.mask, prior.order)
    rng = np.random.default_rng([int(seed), 1])  # the noise draws' stream (not the parameters')
    shape = mixture = None
    if spec.noise == "mog":
        mixture = tuple(got[k][:, inv] for k in ("noise_weight", "noise_loc", "noise_var"))
        c, sigma = np.zeros((draws, n)), np.ones((draws, n))
    else:
        c, sigma = got["c"][:, inv], got["sigma"][:, inv]
        if spec.noise == "studentt":
            shape = np.broadcast_to(got["nu"][:, None], (draws, 1))
        elif spec.noise == "gennorm":
            shape = got["shape"][:, inv]
    z = simulate_sem(B, c, sigma, spec.noise, n_cells, rng, shape=shape, mixture=mixture)
    return {"z": z, "B": B, "c": c, "sigma": sigma, "shape": shape, "mixture": mixture}


def simulate_sem(B: np.ndarray, c: np.ndarray, sigma: np.ndarray, noise: str, n_cells: int, rng,
                 shape: np.ndarray | None = None, mixture=None) -> np.ndarray:
    """Data sets from the SEM's generative process, one per draw: ``x = (I - B)^-1 (c + e)``.

    ``B`` (draw, var, var) ``[effect, cause]``; ``c``, ``sigma`` (draw, var); ``noise`` the family
    (``e`` scaled by ``sigma``: Laplace scale, normal s.d., Student-t scale with ``shape`` = nu
    (draw, 1) or (draw, var), generalised normal with ``shape`` (draw, var); the densities of
    :func:`noise_logp`); ``mixture`` for ``mog``: ``(weights, locations, variances)`` (draw, var, K),
    which replace ``c`` and ``sigma`` (the intercept is the mixture's mean). Returns
    ``(draw, n_cells, var)``. Used for prior (:func:`prior_predictive`) and posterior predictive
    checks (:func:`causalcrystal.runs.tile_idata`).
    """
    from scipy import stats

    B = np.asarray(B, dtype=np.float64)
    draws, n = B.shape[0], B.shape[-1]
    size = (draws, n_cells, n)
    if noise == "mog":
        pi, mu, s2 = (np.asarray(a, dtype=np.float64) for a in mixture)
        K = pi.shape[-1]
        u = rng.random((draws, n_cells, n, 1))
        comp = (np.cumsum(pi, -1)[:, None] < u).sum(-1).clip(max=K - 1)  # (draws, cells, vars)
        take = lambda a: np.take_along_axis(np.broadcast_to(a[:, None], (draws, n_cells, n, K)), comp[..., None], -1)[..., 0]  # noqa: E731
        e = take(mu) + np.sqrt(take(s2)) * rng.normal(size=size)
    else:
        if noise == "laplace":
            e = rng.laplace(0.0, 1.0, size=size)
        elif noise == "normal":
            e = rng.normal(size=size)
        elif noise == "studentt":
            e = rng.standard_t(np.broadcast_to(np.asarray(shape)[:, None, :], size), size=size)
        elif noise == "gennorm":
            e = stats.gennorm.rvs(np.broadcast_to(np.asarray(shape)[:, None, :], size), size=size, random_state=rng)
        else:
            raise ValueError(f"noise family {noise!r} unknown; use mog, laplace, normal, studentt or gennorm.")
        e = np.asarray(c, dtype=np.float64)[:, None, :] + e * np.asarray(sigma, dtype=np.float64)[:, None, :]
    return np.linalg.solve(np.eye(n)[None] - B, e.transpose(0, 2, 1)).transpose(0, 2, 1)
