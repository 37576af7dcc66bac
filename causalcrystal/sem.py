"""The Bayesian linear structural equation model of one tile (PyMC), and how to sample it fast.

Model (data ``Z``: the tile's cells x 8 descriptors, standardised, columns permuted into the
tile's causal order so ``B`` is strictly lower-triangular)::

    z = B z + c + e,     e_j ~ noise(0, sigma_j [, shape_j])   independent
    B[i, j] (i > j)  ~ w_ij N(0, slab^2) + (1 - w_ij) N(0, spike^2)      (see causalcrystal.priors)
    c_j ~ N(0, intercept_sd^2),   sigma_j ~ HalfNormal(scale_sd)

Because the Jacobian of ``z -> e = (I - B) z - c`` is 1, the log-likelihood of a cell is the sum
of the noise log-densities of its residuals. Noise families: ``laplace`` (default), ``studentt``
(one learned ``nu``), ``gennorm`` (generalised normal, a learned shape per variable: 1 = Laplace,
2 = Gaussian, large = uniform) and ``normal`` (only on request: with Gaussian noise the direction of
an edge is not identified, which is LiNGAM's whole point).

**Compile once, swap data.** The model holds the data and the inclusion weights in ``pm.Data``
containers; the likelihood enters as a ``pm.Potential`` (a batched ``Z @ B.T``), so the same
compiled nutpie model serves every tile of every size via ``compiled.with_data(Z=..., w=...)``.
NUTS does not store pointwise log-likelihoods, so :func:`pointwise_loglik` computes them exactly
from the draws in numpy (what LOO needs: one value per cell and draw).
"""

from __future__ import annotations

import tomllib
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import special

from causalcrystal.priors import DagPrior, PriorSpec, conditional_inclusion, lower_pairs, sample_prior, \
    to_descriptor_matrix

NOISE_FAMILIES = ("laplace", "studentt", "gennorm", "normal")
SAMPLERS = ("nutpie", "pymc")

#: Where named model specifications live (the repository's ``models/`` folder).
MODELS_DIR = Path(__file__).resolve().parents[1] / "models"


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

    def __post_init__(self):
        if self.name not in SAMPLERS:
            raise ValueError(f"sampler {self.name!r} unknown; use one of {SAMPLERS}.")
        if self.chains < 1 or self.draws < 10 or self.tune < 0 or self.thin < 1:
            raise ValueError("sampler: chains >= 1, draws >= 10, tune >= 0 and thin >= 1 required.")


@dataclass(frozen=True)
class ModelSpec:
    """A named model: noise family, prior hyper-parameters and sampler settings."""

    name: str = "laplace"
    noise: str = "laplace"
    prior: PriorSpec = field(default_factory=PriorSpec)
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    description: str = ""

    def __post_init__(self):
        if self.noise not in NOISE_FAMILIES:
            raise ValueError(f"noise {self.noise!r} unknown; use one of {NOISE_FAMILIES}.")

    def with_(self, noise: str | None = None, **sampler_changes) -> "ModelSpec":
        """A copy with another noise family and/or sampler settings (``None`` values are ignored)."""
        changes = {k: v for k, v in sampler_changes.items() if v is not None}
        spec = replace(self, sampler=replace(self.sampler, **changes)) if changes else self
        if noise is not None and noise != spec.noise:
            spec = replace(spec, noise=noise, name=f"{spec.name}+{noise}")
        return spec

    def key(self) -> tuple:
        """What determines the compiled model (noise family and prior), not the sampler settings."""
        return (self.noise, self.prior)

    def to_dict(self) -> dict:
        from dataclasses import asdict

        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        """The inverse of :meth:`to_dict` (e.g. the spec recorded in a run's manifest)."""
        return cls(name=d.get("name", "laplace"), noise=d.get("noise", "laplace"),
                   prior=PriorSpec(**d.get("prior", {})), sampler=SamplerSpec(**d.get("sampler", {})),
                   description=d.get("description", ""))


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
        raise ValueError(
            f"{kind} specification {str(name_or_path)!r} not found (looked for {path}); "
            f"available: {specs_in(directory)} or give a path to a .toml file."
        )
    try:
        return path, tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"{path}: not valid TOML ({err}).") from None


def available_specs() -> list[str]:
    """Names of the model specifications in ``models/``."""
    return specs_in(MODELS_DIR)


def load_spec(name_or_path: str | Path = "laplace") -> ModelSpec:
    """Load a model specification by name (``models/<name>.toml``) or from a TOML file path."""
    path, raw = read_spec_toml(name_or_path, MODELS_DIR, "model")
    known = {"name", "description", "noise", "prior", "sampler"}
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {sorted(unknown)}; allowed: {sorted(known)}.")
    try:
        return ModelSpec(
            name=raw.get("name", path.stem),
            description=raw.get("description", ""),
            noise=raw.get("noise", {}).get("family", "laplace"),
            prior=PriorSpec(**raw.get("prior", {})),
            sampler=SamplerSpec(**raw.get("sampler", {})),
        )
    except TypeError as err:
        raise ValueError(f"{path}: {err} (check the key names against models/laplace.toml).") from None


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


def _noise_logp_pt(e, sigma, shape, noise):
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
        c = pm.Normal("c", 0.0, pr.intercept_sd, shape=n_vars)
        sigma = pm.HalfNormal("sigma", pr.scale_sd, shape=n_vars)
        if spec.noise == "studentt":
            shape = pm.Gamma("nu", alpha=2.0, beta=0.1)
        elif spec.noise == "gennorm":
            shape = pm.Truncated("shape", pm.LogNormal.dist(mu=np.log(2.0), sigma=0.75), lower=pr.shape_min,
                                 upper=pr.shape_max, shape=n_vars)
        else:
            shape = None
        B = pt.set_subtensor(pt.zeros((n_vars, n_vars))[i, j], beta * m)
        e = Z - pt.dot(Z, B.T) - c
        pm.Potential("loglik", _noise_logp_pt(e, sigma, shape, spec.noise).sum())
    return model


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




def _run_nuts(cm, Zc, prior: DagPrior, sp: SamplerSpec, draws: int, seed: int, threads: int | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data = {"Z": Zc, "w": prior.w, "m": prior.mask.astype(np.float64)}
        if sp.name == "nutpie":
            import nutpie

            # Low-rank mass-matrix adaptation: Vol, a and b are strongly correlated, and the
            # diagonal adaptation left some tiles at a bulk ESS < 100 (3x slower too).
            return nutpie.sample(cm.with_data(**data), draws=draws, tune=sp.tune, chains=sp.chains,
                                 cores=min(sp.chains, threads or sp.chains), seed=int(seed), progress_bar=False,
                                 low_rank_modified_mass_matrix=True)
        import pymc as pm

        with cm:
            pm.set_data(data)
            return pm.sample(draws=draws, tune=sp.tune, chains=sp.chains, cores=1, random_seed=int(seed),
                             progressbar=False, compute_convergence_checks=False)


def _diagnostics(beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rank-normalised split r_hat and bulk ESS of each coefficient; ``beta`` is (chain, draw, k)."""
    import arviz as az

    if beta.shape[-1] == 0:
        return np.zeros(0), np.zeros(0)
    ds = az.convert_to_dataset({"beta": beta})
    return az.rhat(ds)["beta"].values, az.ess(ds, method="bulk")["beta"].values


#: A tile is converged when every allowed coefficient has r_hat at most this (Vehtari et al. 2021).
RHAT_MAX = 1.01


def sample_tile(X: np.ndarray, prior: DagPrior, spec: ModelSpec, seed: int, threads: int | None = None) -> dict:
    """Sample the posterior of one tile (``threads``: sampler threads, default one per chain).

    ``X``: cells x descriptors (descriptor order, standardised); ``prior``: the tile's causal order
    and inclusion weights. Returns numpy arrays: ``B`` and ``edge_inclusion`` (chain, draw, effect,
    cause) in descriptor indexing, ``c``, ``sigma`` (chain, draw, var, descriptor order), noise
    ``shape`` if any, ``loglik`` (chain, draw, cell) float32, and sample stats.
    """
    order = prior.order
    Zc = np.ascontiguousarray(X[:, order], dtype=np.float64)
    sp = spec.sampler
    cm = compiled_model(spec, X.shape[1])
    idata = _run_nuts(cm, Zc, prior, sp, sp.draws * sp.thin, seed, threads)
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
        factor = int(min(4, max(2, np.ceil(sp.target_ess / max(ess.min(), 1.0) * 1.2))))
        idata = _run_nuts(cm, Zc, prior, sp, sp.draws * sp.thin * factor, seed + 1, threads)
        idata = idata.sel(draw=slice(None, None, sp.thin * factor))
        reran = factor
    post = idata.posterior
    beta = post["beta"].values * prior.mask  # (chain, draw, n_allowed) in causal positions
    inv = np.argsort(order)     # descriptor index -> causal position
    out = {
        "B": to_descriptor_matrix(beta, order),
        "edge_inclusion": to_descriptor_matrix(conditional_inclusion(beta, prior.w, spec.prior) * prior.mask, order),
        "c": post["c"].values[..., inv],
        "sigma": post["sigma"].values[..., inv],
    }
    if "nu" in post:
        out["nu"] = post["nu"].values
    if "shape" in post:
        out["shape"] = post["shape"].values[..., inv]
    out["loglik"] = pointwise_loglik(X, out["B"], out["c"], out["sigma"], _shape_param(out),
                                     spec.noise).astype(np.float32)
    stats = idata.sample_stats
    out["diverging"] = stats["diverging"].values.astype(bool)
    depth = "depth" if "depth" in stats else "tree_depth"
    out["tree_depth"] = stats[depth].values.astype(np.int64)
    out["step_size"] = stats["step_size"].values.astype(float)
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


def _shape_param(draws: dict):
    if "nu" in draws:
        return draws["nu"][..., None, None]
    if "shape" in draws:
        return draws["shape"][..., None, :]
    return None


def pointwise_loglik(X, B, c, sigma, shape, noise: str) -> np.ndarray:
    """Log-likelihood of every cell under every draw: ``(chain, draw, cell)``.

    ``X`` cells x vars; ``B`` (chain, draw, var, var); ``c``, ``sigma`` (chain, draw, var);
    ``shape`` broadcastable to (chain, draw, cell, var) or None.
    """
    resid = X[None, None] - np.einsum("cdij,nj->cdni", B, X) - c[:, :, None, :]
    return noise_logp(resid, sigma[:, :, None, :], shape, noise).sum(axis=-1)


def prior_predictive(prior: DagPrior, spec: ModelSpec, n_cells: int, draws: int = 100, seed: int = 0) -> dict:
    """Simulate data sets from the prior: ``z`` (draw, cell, var) in descriptor order, plus ``B``.

    Generated as ``z = (I - B)^{-1} (c + e)`` with ``e`` from the noise family, exactly the model's
    generative process (used to check that priors give plausible standardised data).
    """
    from scipy import stats

    rng = np.random.default_rng(seed)
    n = len(prior.order)
    pr = spec.prior
    beta = sample_prior(prior, pr, draws, rng)
    B = to_descriptor_matrix(beta, prior.order)
    c = rng.normal(0.0, pr.intercept_sd, size=(draws, n))
    sigma = np.abs(rng.normal(0.0, pr.scale_sd, size=(draws, n)))
    size = (draws, n_cells, n)
    if spec.noise == "laplace":
        e = rng.laplace(0.0, 1.0, size=size)
    elif spec.noise == "normal":
        e = rng.normal(size=size)
    elif spec.noise == "studentt":
        nu = rng.gamma(2.0, 1.0 / 0.1, size=(draws, 1, 1))
        e = rng.standard_t(nu, size=size)
    else:
        # the truncated LogNormal of the model, by inverse CDF
        lo, hi = stats.norm.cdf((np.log([pr.shape_min, pr.shape_max]) - np.log(2.0)) / 0.75)
        p = np.exp(np.log(2.0) + 0.75 * stats.norm.ppf(rng.uniform(lo, hi, size=(draws, 1, n))))
        e = stats.gennorm.rvs(np.broadcast_to(p, size), size=size, random_state=rng)
    e = e * sigma[:, None, :]
    z = np.linalg.solve(np.eye(n)[None] - B, (c[:, None, :] + e).transpose(0, 2, 1)).transpose(0, 2, 1)
    return {"z": z, "B": B, "c": c, "sigma": sigma}
