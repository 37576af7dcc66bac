"""How causal couplings depend on the Sm fraction ``y``: LGD links and a hierarchical model.

Links (Barakati et al. 2025, Eqs. 8-9 and 13-16; physics in :mod:`causalcrystal.lgd`)
-------------------------------------------------------------------------------------

With ``u(y) = 1 - eps(y) = 1 - eps0 (y - y0)`` (Eq. 9) every link is a curve ``f(y)`` in the
coupling's raw units:

``universal``
    ``f = A`` (the paper's finding for most of the 64 couplings).
``ps``
    ``f = A sqrt(u)_+``: strain <- polarisation couplings are proportional to the spontaneous
    polarisation ``P_S(y) = P0 sqrt(u)`` (Eqs. 8, 13b-c, 16): ``a <- Px`` ~ ``2 a0 Q11 P0 k``,
    ``b <- Px`` ~ ``2 b0 Q12 P0 k``, ``alpha <- Py`` ~ ``-(180/pi) 2 Q44 P0 k`` and the total effect
    ``Vol <- Px`` ~ ``b0 a0 2 (Q11 + Q12) P0 k`` (``k = P0 / d_S`` converts B-site offset to
    polarisation). Across a 180-degree wall ``P_S(x)`` changes sign and so do these couplings,
    so each tile's coefficient is *oriented* by the sign of its mean ``Px`` first.
``cross``
    ``f = A u / (u^2 + k^2)``: ``Px <- Py = -a12^P / a11^P`` (Eqs. 12, 15) with
    ``a11^P ~ (1 - eps(y))`` away from walls; ``k`` is the regularisation of ``1/a11`` (the
    simulator's ``kappa / (4 |alpha1|)``), a modelling constant, not fitted.
``quadratic``
    ``f = c0 + c1 (y - ybar) + c2 (y - ybar)^2`` around the series' mean composition: a free
    smooth alternative to test the physics against (it carries no information on ``y0``).

``y0`` (the MPB, one for all couplings) and ``eps0 > 0`` are shared; amplitudes are per coupling.
Which link each coupling gets is a specification in ``models/concentration/*.toml``.

Identifiability (worked out here because it decides what the fit can say)
---------------------------------------------------------------------------

``u(y) = (1 + eps0 y0) - eps0 y`` is affine in ``y``. Hence

* ``ps``: ``A sqrt(u) = A sqrt(1 + eps0 y0) sqrt(1 - y / y_star)`` with
  ``y_star = y0 + 1 / eps0``, the composition where ``P_S`` vanishes. With a free amplitude the
  curve fixes only ``A' = A sqrt(1 + eps0 y0)`` and ``y_star``; any ``(eps0, y0)`` on the line
  ``y0 + 1/eps0 = y_star`` fits equally well. Sharing ``y0, eps0`` between several ``ps``
  couplings sharpens ``y_star`` but does not separate ``y0`` from ``eps0``.
* ``cross`` in the far-from-wall regime ``u >> k`` is ``A / u``, again a function of ``A'`` and
  ``y_star`` only. Only data where ``u`` approaches ``k`` (compositions near ``y_star``, the AFE
  side) make the ``k`` term bite and separate the two; the Sm-BFO series (0-20 %) does not reach
  there for the reference numbers (``y_star ~ 0.38``).
* ``y0`` is therefore learned through the **amplitudes**: if ``A`` is known (informative priors
  on ``P0, Q11, Q12, Q44`` and the lattice constants), ``A'/A = sqrt(1 + eps0 y0)`` gives
  ``c = 1 + eps0 y0`` and then ``eps0 = c / y_star``, ``y0 = y_star (c - 1) / c``. The
  sensitivity is ``dy0/dc = y_star / c^2`` (~0.1 for the reference numbers): an amplitude known to
  10 % (``c`` to 20 %) pins ``y0`` to about +-0.04, which is the width of the prior window
  (0.15-0.25); known to 3 %, to about +-0.012.
* So: ``y_star`` is identified whenever a ``ps`` or ``cross`` coupling is resolved across the
  series; ``y0`` and ``eps0`` separately only with informative amplitude priors
  (``amplitude_rel_sd`` small in the specification). :func:`contraction` reports
  prior-to-posterior contraction ``1 - sd_post / sd_prior`` for every shared parameter, so a fit
  says which case it is in.

The hierarchical model (two-stage, the default)
-----------------------------------------------

Stage 1 (:func:`tile_summaries`) reduces each tile's posterior of a coupling (from ``run``'s
``posterior.nc``, converted to raw units, oriented where the link asks for it) to a mean ``m_t``
and s.d. ``s_t``; tiles whose causal order does not allow the edge are left out. The LGD links
describe a single domain (the bulk ``P_S``); a tile that holds a 180-degree wall or part of the
substrate measures a slope averaged over the polarisation profile, well below the link (0.3-0.6
of it for the strain <- polarisation couplings on the simulator's images), so couplings marked
``tiles = "single-domain"`` (those of ``lgd.toml`` with a ``ps`` or ``cross`` link) use only tiles
whose ``|mean Px|`` is near their image's level (:func:`polarisation_ratio`). Stage 2
(:func:`fit`) is::

    m_t       ~ StudentT(nu, theta_{g(t),c}, sqrt(s_t^2 + tau_c^2))   tiles around their image
    theta_g,c ~ Normal(f_c(y_g), omega_c^2)                           images around the link

(Student-t at the tile level so tiles on walls or the interface do not drag an image's value).
The pointwise log-likelihood kept for LOO is per image and coupling, with ``theta`` integrated
out (:func:`image_loglik`), so LOO asks how well the link predicts a *held-out image*. That is
what "universal versus concentration-dependent" means, and :func:`universality` compares the two
with ``arviz.compare`` (ELPD difference, its standard error, stacking weights).
"""

from __future__ import annotations

import json
import numbers
import re
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import special

from causalcrystal import lgd
from causalcrystal.cells import DESCRIPTORS
from causalcrystal.errors import CausalCrystalError, check_field_types, did_you_mean, quotes_hint, spec_table
from causalcrystal.evidence import compare_loo, loo_warnings_recorded
from causalcrystal.sem import models_dir

LINKS = ("universal", "ps", "cross", "quadratic")
#: which tiles a coupling's image values come from (:attr:`Coupling.tiles`)
TILE_SETS = ("all", "single-domain")
_LINK_CODE = {name: k for k, name in enumerate(LINKS)}
#: Where concentration specifications live.
SPECS_DIR = models_dir() / "concentration"


class ConcentrationError(CausalCrystalError, ValueError):
    """The run or the specification cannot support a concentration fit (the message says why)."""


# ---------------------------------------------------------------------------------------------
# specification


@dataclass(frozen=True)
class Coupling:
    """One coupling ``effect <- cause`` and its link.

    ``amplitude``: reference amplitude ``A`` in raw units (``"lgd"``: derived from the LGD
    reference numbers, :func:`reference_amplitude`; ``None``: unknown, a wide prior). The prior is
    ``A = amplitude * exp(amplitude_rel_sd * z)`` when known. ``effect_kind``: ``"direct"`` (the
    entry of ``B``) or ``"total"`` (of ``(I - B)^-1``). ``orient``: multiply each tile's value by
    the sign of the tile's mean ``Px`` (couplings proportional to the signed ``P_S(x)``).
    ``tiles``: ``"all"`` or ``"single-domain"``: only tiles inside one ferroelectric domain enter
    this coupling's image values (:func:`polarisation_ratio`). The LGD amplitudes are bulk,
    single-domain values; a tile that holds a 180-degree wall or the substrate interface measures
    a slope averaged over the polarisation profile (with every tile used, the per-coupling medians
    were 0.02-0.9 of the link, ``benchmarks/RESULTS.md``), which bent ``y0`` and ``eps0`` low.
    """

    effect: str
    cause: str
    link: str = "universal"
    amplitude: float | str | None = None
    amplitude_rel_sd: float = 0.5
    effect_kind: str = "direct"
    orient: bool = False
    tiles: str = "all"

    def __post_init__(self):
        check_field_types(self, f"coupling {self.effect}<-{self.cause}")
        a = self.amplitude
        if not (a is None or a == "lgd" or (isinstance(a, numbers.Real) and not isinstance(a, bool))):
            raise ValueError(f"coupling {self.label}: amplitude = {a!r} must be a number (raw units), \"lgd\" "
                             f"(from the LGD reference numbers) or left out (unknown: a wide prior){quotes_hint(a)}.")
        for v in (self.effect, self.cause):
            if v not in DESCRIPTORS:
                raise ValueError(f"coupling {self.label}: {v!r} is not a descriptor; use one of {list(DESCRIPTORS)}.")
        if self.link not in LINKS:
            raise ValueError(f"coupling {self.label}: link {self.link!r} unknown; use one of {LINKS}.")
        if self.effect_kind not in ("direct", "total"):
            raise ValueError(f"coupling {self.label}: effect_kind must be 'direct' or 'total'.")
        if not self.amplitude_rel_sd > 0:
            raise ValueError(f"coupling {self.label}: amplitude_rel_sd must be > 0.")
        if self.tiles not in TILE_SETS:
            raise ValueError(f"coupling {self.label}: tiles = {self.tiles!r} unknown; use one of {TILE_SETS}.")

    @property
    def label(self) -> str:
        return f"{self.effect}<-{self.cause}"


_SHARED, _SAMPLER = "concentration spec [shared]", "concentration spec [sampler]"
#: the TOML table each ConcentrationSpec key is read from (errors name it)
_SPEC_SECTIONS = {**dict.fromkeys(("y0_prior", "eps0_prior", "k_cross", "tile_nu", "single_domain_ratio"), _SHARED),
                  **dict.fromkeys(("draws", "tune", "chains"), _SAMPLER)}


@dataclass(frozen=True)
class ConcentrationSpec:
    """A concentration model: the couplings with their links, shared priors and sampler settings.

    ``y0_prior``: (mean, sd, lower, upper) of a truncated normal (default: the paper's 0.15-0.25
    window as the central 68 %); ``eps0_prior``: (median, log-sd) of a log-normal; ``k_cross``: the
    ``cross`` link's regularisation; ``tile_nu``: Student-t degrees of freedom of the tile level;
    ``single_domain_ratio``: a tile is single-domain when its polarisation ratio
    (:func:`polarisation_ratio`) is at least this (for couplings with ``tiles = "single-domain"``).
    """

    name: str = "lgd"
    couplings: tuple[Coupling, ...] = ()
    y0_prior: tuple[float, float, float, float] = (0.20, 0.05, 0.0, 0.5)
    eps0_prior: tuple[float, float] = (5.0, 0.5)
    k_cross: float = 0.25
    tile_nu: float = 4.0
    single_domain_ratio: float = 0.95
    draws: int = 1000
    tune: int = 1000
    chains: int = 2
    description: str = ""

    def __post_init__(self):
        check_field_types(self, "concentration spec", _SPEC_SECTIONS)
        if not self.couplings:
            raise ValueError("concentration spec: list at least one coupling.")
        labels = [c.label for c in self.couplings]
        if len(set(labels)) != len(labels):
            raise ValueError(f"concentration spec: couplings repeat: {labels}.")
        mu, sd, lo, hi = self.y0_prior
        if not (0 <= lo < hi <= 1 and sd > 0):
            raise ValueError("concentration spec: y0_prior = (mean, sd > 0, lower, upper) within [0, 1].")
        if self.eps0_prior[0] <= 0 or self.eps0_prior[1] <= 0 or self.k_cross <= 0 or self.tile_nu <= 0:
            raise ValueError("concentration spec: eps0_prior, k_cross and tile_nu must be positive.")
        if not 0 < self.single_domain_ratio <= 1:
            raise ValueError("concentration spec: single_domain_ratio must be in (0, 1].")

    def with_links(self, **links: str) -> "ConcentrationSpec":
        """A copy with some couplings' links changed: ``spec.with_links(**{"a<-Px": "universal"})``."""
        known = {c.label for c in self.couplings}
        unknown = set(links) - known
        if unknown:
            raise ValueError(f"couplings {sorted(unknown)} are not in spec {self.name!r}; it has {sorted(known)}.")
        return replace(self, couplings=tuple(c if links.get(c.label, c.link) == c.link else _relinked(c, links[c.label])
                                             for c in self.couplings))

    def to_dict(self) -> dict:
        return asdict(self)


def _relinked(c: Coupling, link: str) -> Coupling:
    """``c`` on another link. A reference amplitude belongs to the physics link: moved to universal
    or quadratic the coupling gets the wide amplitude prior, and an ``"lgd"`` amplitude is kept only
    where LGD has a number for the new link (e.g. ``a<-Px`` on ``ps``, not on ``cross``)."""
    new = replace(c, link=link)
    if link in ("universal", "quadratic") or (c.amplitude == "lgd" and reference_amplitude(new) is None):
        new = replace(new, amplitude=None)
    return new


def available_specs() -> list[str]:
    """Names of the concentration specifications in ``models/concentration/``."""
    from causalcrystal.sem import specs_in

    return specs_in(SPECS_DIR)


def load_spec(name_or_path: str | Path = "lgd") -> ConcentrationSpec:
    """Load a concentration specification by name (``models/concentration/<name>.toml``) or path."""
    from causalcrystal.sem import read_spec_toml

    path, raw = read_spec_toml(name_or_path, SPECS_DIR, "concentration")
    try:
        top = ["name", "description", "coupling", "shared", "sampler"]
        unknown = sorted(set(raw) - set(top))
        if unknown:
            raise ValueError(f"unknown key(s) or section(s) {unknown}{did_you_mean(unknown, top)}; a concentration "
                             "specification has name, description, [shared], [sampler] and [[coupling]] entries.")
        entries = raw.get("coupling", [])
        if not isinstance(entries, list):
            raise ValueError("write each coupling as a [[coupling]] entry (double brackets).")
        known = [f.name for f in fields(Coupling)]
        couplings = tuple(Coupling(**spec_table({"c": c}, "c", known, f"[[coupling]] {k + 1}"))
                          for k, c in enumerate(entries))
        def table(key, section):
            other = {k: f"[{t.rsplit('[', 1)[1]}" for k, t in _SPEC_SECTIONS.items() if t != section}
            return spec_table(raw, key, [k for k in _SPEC_SECTIONS if _SPEC_SECTIONS[k] == section], section,
                              elsewhere=other)

        shared, sampler = table("shared", _SHARED), table("sampler", _SAMPLER)
        return ConcentrationSpec(name=raw.get("name", path.stem), description=raw.get("description", ""),
                                 couplings=couplings, **{k: tuple(v) if isinstance(v, list) else v
                                                         for k, v in shared.items()}, **sampler)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None


def reference_amplitude(c: Coupling, p: lgd.LGDParams | None = None) -> float | None:
    """The LGD amplitude ``A`` of a ``ps`` or ``cross`` coupling from reference numbers (raw units).

    ``ps`` couplings: the coefficient at ``u = 1`` (``y = y0``) and full polarisation, oriented
    (see :func:`causalcrystal.lgd.strain_couplings`); ``cross``: ``-gamma12 / (4 alpha1)`` times
    the regularised shape's normalisation. ``None`` where LGD gives no number.
    """
    p = p or lgd.LGDParams()
    k = lgd.offset_to_polarization(p)
    a0, b0 = p.a_ref, p.b_ref
    if c.link == "ps":
        table = {"a<-Px": a0 * 2 * p.Q11 * p.P0 * k, "b<-Px": b0 * 2 * p.Q12 * p.P0 * k,
                 "alpha<-Py": -(180 / np.pi) * 2 * p.Q44 * p.P0 * k,
                 "Vol<-Px": b0 * a0 * 2 * (p.Q11 + p.Q12) * p.P0 * k}
        return table.get(c.label)
    if c.link == "cross" and c.label == "Px<-Py":
        # -g12 a11 / (a11^2 + kappa^2), a11 = -4 alpha1 u  =>  (-g12 / (-4 alpha1)) u / (u^2 + k^2)
        return float(p.gamma12 / (4 * p.alpha1))
    return None


def link_curve(link: str, y, A, y0, eps0, k_cross: float, quad=(0.0, 0.0), ybar: float = 0.0, xp=np):
    """``f(y)`` of a link (numpy, or pytensor with ``xp=pytensor.tensor``)."""
    u = 1.0 - eps0 * (y - y0)
    if link == "universal":
        return A + 0.0 * y
    if link == "ps":
        return A * xp.sqrt(xp.maximum(u, 0.0))
    if link == "cross":
        return A * u / (u**2 + k_cross**2)
    d = y - ybar
    return A + quad[0] * d + quad[1] * d**2


# ---------------------------------------------------------------------------------------------
# stage 1: per-tile summaries from a run


def _open_run(run_dir: Path):
    import arviz as az

    path = Path(run_dir) / "posterior.nc"
    if not path.is_file():
        raise ConcentrationError(f"{run_dir}: no posterior.nc; finish the run first (`causalcrystal run ... "
                                 f"--out {run_dir}` resumes a partial one).")
    idata = az.from_netcdf(path)
    if "constant_data" not in idata.groups() or "sm_fraction" not in idata.posterior.coords:
        raise ConcentrationError(f"{path}: written by an older causalcrystal without per-tile Sm fraction and "
                                 "scales; re-run `causalcrystal run` (finished tiles are reused) to rewrite it.")
    return idata


#: the start of ``excluded`` for a tile left out of a single-domain coupling (written by
#: :func:`tile_summaries`, read back by :func:`_across_domains`)
NOT_SINGLE_DOMAIN = "not single-domain"

#: the quantile of an image's tile polarisations taken as its single-domain level (not the
#: largest: one tile with an outlier does not set the scale)
DOMAIN_LEVEL_QUANTILE = 0.9


def polarisation_ratio(tile_mean_px, images) -> np.ndarray:
    """Per tile, ``|mean Px|`` over its image's single-domain level: ~1 inside one domain, lower
    for a tile that holds a 180-degree wall (``Px`` of both signs) or part of the substrate
    (``Px`` ~ 0).

    ``tile_mean_px``: (tile,) the tiles' raw mean ``Px`` (posterior.nc ``constant_data.tile_mean``);
    ``images``: (tile,) image labels. The level is the ``DOMAIN_LEVEL_QUANTILE`` quantile of the
    image's ``|mean Px|``; NaN where it is 0 or not finite (no polarisation to tell domains by).
    On the simulator's 40 x 40 images (one wall, a substrate strip; ``benchmarks/RESULTS.md``)
    tiles with every cell at >= 0.9 of ``P_S`` had ratios >= 0.98 (their couplings 0.97-1.0 of
    the link); tiles with a wall had ratios 0.56-0.83 (their couplings 0.3-0.6 of the link). A
    single-domain tile can exceed 1 (the level is a quantile, not the largest). The level is
    relative to the image, so an image without any single-domain tile still passes its most
    polarised ones, and genuine variation of ``|P|`` between domains (strain, composition) leaves
    some single-domain tiles out; only ``Px`` is looked at (walls that flip only ``Py``, such as
    some 71/109-degree walls in BiFeO3, are not detected).
    """
    m = np.abs(np.asarray(tile_mean_px, dtype=np.float64))
    images = np.asarray(images).astype(str)
    out = np.full(m.shape, np.nan)
    for g in np.unique(images):
        sel = images == g
        vals = m[sel][np.isfinite(m[sel])]
        level = np.quantile(vals, DOMAIN_LEVEL_QUANTILE) if vals.size else np.nan
        if np.isfinite(level) and level > 0:
            out[sel] = m[sel] / level
    return out


def tile_summaries(run_dir: str | Path, spec: ConcentrationSpec) -> xr.Dataset:
    """Stage 1: each tile's posterior of each coupling as mean and s.d. in raw units.

    Returns (tile, coupling): ``mean``, ``sd``, ``used``, with tile coords ``image``,
    ``sm_fraction`` and per-image ``image_y``. A tile's posterior averages over candidate causal
    orders; the coupling's value is summarised from the draws of the orders that allow it (the
    others are exactly 0: "absent", not "small"), and a tile is used when those orders carry at
    least half of its weight (``p_allowed``). Tiles whose residuals the run's noise model does not
    describe (``summary.csv``: ``noise_misfit``) are left out of the image values (``excluded``
    says why), so a misfitting tile (a wall, the substrate interface) does not pull its image.
    Couplings with ``tiles = "single-domain"`` use only tiles whose ``polarisation_ratio`` (a
    variable of the result) is at least ``spec.single_domain_ratio``; where the ratio cannot be
    computed (no polarisation) every tile is used.
    """
    from causalcrystal.interventions import total_effects

    idata = _open_run(Path(run_dir))
    flagged = _flagged_tiles(Path(run_dir))
    post, const = idata.posterior, idata.constant_data
    B = post["B"]
    scale = const["scale"].values  # (tile, variable)
    px_mean = const["tile_mean"].sel(variable="Px").values
    sign = np.sign(px_mean)
    sign[sign == 0] = 1.0
    ratio = polarisation_ratio(px_mean, post["image"].values)
    labels = [c.label for c in spec.couplings]
    T = post.sizes["tile"]
    mean = np.full((T, len(labels)), np.nan)
    sd = np.full((T, len(labels)), np.nan)
    p_allowed = np.zeros((T, len(labels)))
    excluded = np.full((T, len(labels)), "", dtype=object)
    tile_ids = post["tile"].values
    need_total = any(c.effect_kind == "total" for c in spec.couplings)
    for t in range(T):
        Bt = B.isel(tile=t).values.astype(np.float64)  # (chain, draw, effect, cause)
        Bt = Bt.reshape(-1, *Bt.shape[-2:])
        raw = Bt * scale[t][None, :, None] / scale[t][None, None, :]
        total = None
        if need_total:
            # exact path sums: a matrix inverse leaves ~1e-16 where no path exists (134 of 200
            # random DAGs), which defeated the "not allowed" test below and let such tiles in as
            # near-exact observations of 0
            total = total_effects(raw) - np.eye(raw.shape[-1])[None]
        for q, c in enumerate(spec.couplings):
            i, j = DESCRIPTORS.index(c.effect), DESCRIPTORS.index(c.cause)
            draws = (total if c.effect_kind == "total" else raw)[:, i, j]
            nonzero = draws != 0
            p_allowed[t, q] = nonzero.mean()
            if p_allowed[t, q] < 0.5:  # the tile's likely causal orders do not allow this edge
                excluded[t, q] = "edge not allowed" if p_allowed[t, q] == 0 else "edge allowed by < 1/2 of the orders"
                continue
            if int(tile_ids[t]) in flagged:
                excluded[t, q] = f"tile flagged ({flagged[int(tile_ids[t])]})"
                continue
            if c.tiles == "single-domain" and ratio[t] < spec.single_domain_ratio:
                excluded[t, q] = f"{NOT_SINGLE_DOMAIN} (polarisation ratio {ratio[t]:.2f} < {spec.single_domain_ratio:g})"
                continue
            draws = draws[nonzero]
            if c.orient:
                draws = draws * sign[t]
            mean[t, q], sd[t, q] = draws.mean(), draws.std(ddof=1)
    images = post["image"].values.astype(str)
    y = post["sm_fraction"].values.astype(float)
    out = xr.Dataset({"mean": (("tile", "coupling"), mean), "sd": (("tile", "coupling"), sd)},
                     coords={"tile": post["tile"].values, "coupling": labels, "image": ("tile", images),
                             "sm_fraction": ("tile", y)})
    out["used"] = np.isfinite(out["mean"]) & (out["sd"] > 0)
    out["p_allowed"] = (("tile", "coupling"), p_allowed)
    out["excluded"] = (("tile", "coupling"), excluded.astype(str))
    out["polarisation_ratio"] = ("tile", ratio)
    out["polarisation_ratio"].attrs.update(
        description="|tile mean Px| / the image's level (90th percentile of its tiles' |mean Px|)",
        single_domain_ratio=spec.single_domain_ratio,
        used_for=json.dumps([c.label for c in spec.couplings if c.tiles == "single-domain"]))
    out["excluded"].attrs["description"] = "why a tile is not used for a coupling ('' = used)"
    out.attrs.update(run_dir=str(run_dir), standardize=post.attrs.get("standardize", ""),
                     units="raw (effect units per cause unit)", flagged_tiles_left_out=len(flagged))
    return out


def _flagged_tiles(run_dir: Path) -> dict[int, str]:
    """Tiles whose residuals the run's noise model does not describe (``summary.csv``'s
    ``noise_misfit``), with the reason. Tiles flagged for the sampler only (a bulk ESS short of
    the target) are kept: their means and s.d.s, all stage 1 uses, are still estimated well."""
    import pandas as pd

    path = run_dir / "summary.csv"
    if not path.is_file():
        return {}
    s = pd.read_csv(path)
    if "noise_misfit" not in s:
        return {}
    s = s[s["noise_misfit"].astype(bool)]
    return {int(t): "noise misfit" for t in s["tile"]}


#: fewest images with a coupling for its universality (leave-one-image-out) to be testable
MIN_IMAGES = 3


def check_series(summ: xr.Dataset) -> None:
    """Refuse series the concentration model cannot use (one composition; fractions outside [0, 1])."""
    y = summ["sm_fraction"].values
    bad = np.unique(y[~((y >= 0) & (y <= 1))])
    if bad.size:
        raise ConcentrationError(f"Sm fractions {bad.tolist()} are outside [0, 1]; fractions are written 0.07 for 7 % "
                                 "(check the file names Sm_<percent>_<k> or the sm_fraction coordinate).")
    comps = np.unique(y)
    if comps.size < 2:
        raise ConcentrationError(f"the series has one composition only (y = {comps.tolist()}); a concentration "
                                 "dependence needs images at two or more Sm fractions (three or more to tell "
                                 "a curve from a line).")


# ---------------------------------------------------------------------------------------------
# stage 2: the hierarchical model


@dataclass
class _Data:
    """Flattened observations and per-coupling prior scales for the PyMC model."""

    m: np.ndarray
    s: np.ndarray
    obs_c: np.ndarray
    obs_g: np.ndarray
    image_y: np.ndarray
    images: list
    scale: np.ndarray
    ybar: float
    yspan: float
    codes: np.ndarray
    ref: np.ndarray
    known: np.ndarray
    rel_sd: np.ndarray
    labels: list = field(default_factory=list)


def _prepare(summ: xr.Dataset, spec: ConcentrationSpec, params: lgd.LGDParams | None) -> _Data:
    check_series(summ)
    labels = [c.label for c in spec.couplings]
    if list(summ["coupling"].values) != labels:
        summ = summ.sel(coupling=labels)
    images = list(dict.fromkeys(summ["image"].values.tolist()))
    g_of_tile = np.array([images.index(v) for v in summ["image"].values])
    image_y = np.array([summ["sm_fraction"].values[g_of_tile == g][0] for g in range(len(images))])
    used = summ["used"].values
    tt, cc = np.nonzero(used)
    m, s = summ["mean"].values[tt, cc], summ["sd"].values[tt, cc]
    empty = [labels[q] for q in range(len(labels)) if not used[:, q].any()]
    if empty:
        raise ConcentrationError(f"coupling(s) {empty} are not allowed by the causal order of any tile; drop them "
                                 "from the specification or check the run's discovery.")
    scale = np.array([max(np.abs(m[cc == q]).max(), np.median(s[cc == q]), 1e-12) for q in range(len(labels))])
    ref, known = np.zeros(len(labels)), np.zeros(len(labels), dtype=bool)
    for q, c in enumerate(spec.couplings):
        a = c.amplitude
        if a == "lgd":
            a = reference_amplitude(c, params)
            if a is None:
                raise ConcentrationError(f"coupling {c.label}: no LGD reference amplitude for link {c.link!r}; give "
                                         "a number or leave amplitude out (a wide prior).")
        if a is not None:
            ref[q], known[q] = float(a), True
    return _Data(m=m, s=s, obs_c=cc, obs_g=g_of_tile[tt], image_y=image_y, images=images, scale=scale,
                 ybar=float(image_y.mean()), yspan=float(max(np.ptp(image_y), 1e-3)),
                 codes=np.array([_LINK_CODE[c.link] for c in spec.couplings]), ref=ref, known=known,
                 rel_sd=np.array([c.amplitude_rel_sd for c in spec.couplings]), labels=labels)


def _link_data(d: _Data) -> dict:
    """Everything data-dependent, swapped into one compiled model: link choices and amplitude
    priors (which change between link variants) and the observations (which change between series
    of the same shape)."""
    return {"onehot": np.eye(len(LINKS))[d.codes], "known": d.known.astype(np.float64), "ref": d.ref,
            "rel_sd": d.rel_sd, "scale": d.scale, "image_y": d.image_y, "m_obs": d.m, "s_obs": d.s,
            "obs_c": d.obs_c.astype(np.int64), "obs_g": d.obs_g.astype(np.int64),
            "shape_terms": np.array([d.ybar, d.yspan])}


def build_model(d: _Data, spec: ConcentrationSpec):
    """The PyMC model of stage 2 (see the module docstring).

    Every coupling carries the parameters of every link; ``onehot`` (coupling x link, ``pm.Data``)
    selects which curve it follows, so one compiled model serves all link variants of a
    comparison. Unused link parameters just follow their priors.
    """
    import pymc as pm
    import pytensor.tensor as pt

    with pm.Model(coords={"coupling": d.labels, "image": d.images, "term": ["linear", "quadratic"]}) as model:
        data = {k: pm.Data(k, v) for k, v in _link_data(d).items()}
        theta, tau = link_hierarchy(data, spec)
        oc, og = data["obs_c"], data["obs_g"]
        pm.Potential("m", pm.logp(pm.StudentT.dist(nu=spec.tile_nu, mu=theta[oc, og],
                                                   sigma=pt.sqrt(data["s_obs"] ** 2 + tau[oc] ** 2)),
                                  data["m_obs"]).sum())
    return model


def link_hierarchy(data: dict, spec: ConcentrationSpec):
    """The shared part of the two-stage and the one-stage model, inside a ``pm.Model`` context:
    ``y0``, ``eps0``, amplitudes, each coupling's link ``f`` at each image's ``y``, the image values
    ``theta`` (coupling, image) around it and the tile scatter ``tau``. Returns ``(theta, tau)``."""
    import pymc as pm
    import pytensor.tensor as pt

    # Sampled in the coordinates the data identify (module docstring, "Identifiability"): y_star,
    # and per coupling with a known amplitude e = z_amp + shift * log(c), c = 1 + eps0 y0, the
    # log of the observable amplitude A' (ps: A sqrt(c), so shift = 0.5 / rel_sd; cross far from
    # the pole: A / c, shift = -1 / rel_sd). Each is a shift by the other variables (Jacobian 1)
    # and the conditional priors below are the shifted priors, so the model is the same as
    # y0 ~ TruncatedNormal, eps0 ~ LogNormal, z_amp ~ N(0, 1) independently; only the geometry
    # changes. In the original coordinates the posterior is a thin ridge along which y0, eps0 and
    # every amplitude move together: with single-domain tiles (tight amplitudes) NUTS reached a
    # bulk ESS of ~120 of 2,000 draws with r_hat up to 1.3 (benchmarks/RESULTS.md).
    mu, sd, lo, hi = spec.y0_prior
    eps0 = pm.LogNormal("eps0", mu=np.log(spec.eps0_prior[0]), sigma=spec.eps0_prior[1])
    y_star = pm.TruncatedNormal("y_star", mu=mu + 1.0 / eps0, sigma=sd, lower=lo + 1.0 / eps0,
                                upper=hi + 1.0 / eps0)
    y0 = pm.Deterministic("y0", y_star - 1.0 / eps0)
    log_c = pt.log(eps0 * y_star)  # c = 1 + eps0 y0 = eps0 y_star
    shift = data["known"] * (0.5 * data["onehot"][:, _LINK_CODE["ps"]]
                             - 1.0 * data["onehot"][:, _LINK_CODE["cross"]]) / data["rel_sd"]
    e_amp = pm.Normal("e_amp", mu=shift * log_c, sigma=1.0, dims="coupling")
    z_amp = pm.Deterministic("z_amp", e_amp - shift * log_c, dims="coupling")
    # known amplitude: lognormal around the reference (sign kept); unknown: Normal(0, 2 scale)
    scale = data["scale"]
    ybar, yspan = data["shape_terms"][0], data["shape_terms"][1]
    amp = pm.Deterministic("amplitude", data["known"] * data["ref"] * pt.exp(data["rel_sd"] * z_amp)
                           + (1.0 - data["known"]) * 2.0 * scale * z_amp, dims="coupling")
    z_quad = pm.Normal("z_quad", 0.0, 1.0, dims=("coupling", "term"))
    quad = pm.Deterministic("quad", z_quad * pt.stack([2.0 * scale / yspan, 4.0 * scale / yspan**2], axis=1),
                            dims=("coupling", "term"))
    y = data["image_y"][None, :]
    u = 1.0 - eps0 * (y - y0)
    A = amp[:, None]
    dy = y - ybar
    curves = pt.stack([A + 0.0 * y, A * pt.sqrt(pt.maximum(u, 0.0)), A * u / (u**2 + spec.k_cross**2),
                       A + quad[:, 0:1] * dy + quad[:, 1:2] * dy**2], axis=-1)  # (coupling, image, link)
    f = pm.Deterministic("f", (curves * data["onehot"][:, None, :]).sum(-1), dims=("coupling", "image"))
    # scales are in units of each coupling's data scale (non-centred, so one compiled model fits any series)
    tau = pm.Deterministic("tau", scale * pm.HalfNormal("tau_rel", sigma=1.0, dims="coupling"), dims="coupling")
    omega = pm.Deterministic("omega", scale * pm.HalfNormal("omega_rel", sigma=0.5, dims="coupling"),
                             dims="coupling")
    eta = pm.Normal("eta", 0.0, 1.0, dims=("coupling", "image"))
    theta = pm.Deterministic("theta", f + omega[:, None] * eta, dims=("coupling", "image"))
    return theta, tau


#: 40 nodes: with 20 the error reached 7e-4 nats where a few tight tiles make the integrand far from
#: normal; 40 kept it below 1e-4 on 24 random test cases (it costs twice the evaluations).
_GH_X, _GH_W = np.polynomial.hermite.hermgauss(40)


def image_loglik(d: _Data, spec: ConcentrationSpec, f, tau, omega, chunk: int = 100) -> np.ndarray:
    """Per draw, coupling and image: ``log p(tiles of image g | f, tau, omega)`` with ``theta`` integrated.

    ``f`` (S, C, G), ``tau``, ``omega`` (S, C). The integral over ``theta`` of
    ``h(theta) = prod_t StudentT(m_t; theta, sqrt(s_t^2 + tau^2)) N(theta; f, omega^2)`` is adaptive
    Gauss-Hermite quadrature (as for GLMMs, e.g. lme4's nAGQ): 40 nodes on a normal centred at the
    mode of ``log h`` (Newton steps from the better of the Gaussian approximation and the prior
    mean) with the s.d. from the curvature there, widened 1.5x for the Student-t tails. Centring on
    the Gaussian approximation alone failed when an image's tiles disagree with the link (the held-out
    images LOO is about): Student-t tiles then barely move ``theta`` from ``f``, and the result was off
    by up to 4.4 nats (found by running the tests under other seeds). A test checks the result
    against adaptive numerical integration. Returns (S, C, G); 0 where an image has no tile for a
    coupling.
    """
    S, C, G = f.shape
    nu = spec.tile_nu
    cg_all = d.obs_c * G + d.obs_g
    order = np.argsort(cg_all, kind="stable")  # group observations by (coupling, image) for reduceat
    cg, m, s = cg_all[order], d.m[order], d.s[order]
    obs_c = d.obs_c[order]
    groups, starts = np.unique(cg, return_index=True)
    idx = np.searchsorted(groups, cg)  # each observation's (coupling, image) group
    counts = np.diff(np.append(starts, cg.size))
    lnorm = special.gammaln((nu + 1) / 2) - special.gammaln(nu / 2) - 0.5 * np.log(nu * np.pi)
    lw = np.log(_GH_W / np.sqrt(np.pi)) + _GH_X**2  # log weight minus the proposal's exponent
    out = np.zeros((S, C * G))
    for a in range(0, S, chunk):
        fb = f[a:a + chunk].reshape(-1, C * G)[:, groups]  # (s, g)
        om = np.repeat(omega[a:a + chunk], G, axis=1)[:, groups]
        sig2 = s[None, :] ** 2 + tau[a:a + chunk][:, obs_c] ** 2  # (s, n)

        def log_h(th):  # (s, g, ...) -> log h up to the constants shared by every theta
            d2 = (m[None, :, None] - th[:, idx]) ** 2 / sig2[..., None]
            lt = np.add.reduceat(-(nu + 1) / 2 * np.log1p(d2 / nu), starts, axis=1)
            return lt - 0.5 * ((th - fb[..., None]) / om[..., None]) ** 2

        def derivs(th):  # first and second derivative of log h at th (s, g)
            r = m[None, :] - th[:, idx]
            q = nu * sig2 + r**2
            g1 = np.add.reduceat((nu + 1) * r / q, starts, axis=1) - (th - fb) / om**2
            g2 = np.add.reduceat((nu + 1) * (r**2 - nu * sig2) / q**2, starts, axis=1) - 1.0 / om**2
            return g1, g2

        info = np.add.reduceat(1.0 / sig2, starts, axis=1) + 1.0 / om**2  # normal-approximation precision
        gauss = (np.add.reduceat(m[None, :] / sig2, starts, axis=1) + fb / om**2) / info
        start = np.stack([gauss, fb], axis=-1)
        th = np.take_along_axis(start, log_h(start).argmax(-1)[..., None], -1)[..., 0]
        for _ in range(12):  # Newton where log h is concave, Fisher scoring elsewhere; steps capped
            g1, g2 = derivs(th)
            step = np.where(g2 < 0, -g1 / np.minimum(g2, -1e-300), g1 / info)
            th = th + np.clip(step, -3.0 / np.sqrt(info), 3.0 / np.sqrt(info))
        g2 = derivs(th)[1]
        sq = 1.5 / np.sqrt(np.where(g2 < 0, -g2, info))
        nodes = th[..., None] + np.sqrt(2.0) * sq[..., None] * _GH_X  # (s, g, K)
        z2 = (m[None, :, None] - nodes[:, idx, :]) ** 2 / sig2[..., None]
        lt = -0.5 * np.log(sig2)[..., None] - (nu + 1) / 2 * np.log1p(z2 / nu)
        lsum = np.add.reduceat(lt, starts, axis=1) + lnorm * counts[None, :, None]
        lprior = -np.log(om)[..., None] - 0.5 * ((nodes - fb[..., None]) / om[..., None]) ** 2
        # sum_k (w_k / sqrt(pi)) h(x_k) / q(x_k) with q = N(th, sq^2): the 2 pi terms cancel
        out[a:a + chunk, groups] = special.logsumexp(lsum + lprior + np.log(sq)[..., None] + lw, axis=-1)
    return out.reshape(S, C, G)


_COMPILED: dict = {}


def _compiled(d: _Data, spec: ConcentrationSpec):
    """The compiled stage-2 model for this number of couplings and images and these shared priors
    (built once per process; the data are swapped in with ``with_data``)."""
    import nutpie

    key = (tuple(d.labels), len(d.images), spec.y0_prior, spec.eps0_prior, spec.k_cross, spec.tile_nu)
    if key not in _COMPILED:
        _COMPILED[key] = nutpie.compile_pymc_model(build_model(d, spec))
    return _COMPILED[key]


def _sample(d: _Data, spec: ConcentrationSpec, seed: int, compiled=None, low_rank: bool = True):
    """NUTS (nutpie) on stage 2; returns (InferenceData, compiled model for re-use with other links).

    ``low_rank``: nutpie's low-rank mass matrix, for fits whose ``y0`` / ``y_star`` are reported;
    the link variants that only feed an ELPD comparison use the diagonal one (half the time; their
    bulk ESS of ~200-270 of 2,000 draws is ample for a LOO estimate)."""
    import nutpie

    if compiled is None:
        compiled = _compiled(d, spec)
    from causalcrystal.logs import sampler_warnings

    with sampler_warnings():
        # low-rank mass matrix: the correlation left after the reparameterisation (y0, eps0 and
        # the amplitudes still share the prior-driven direction log c) doubled the smallest bulk
        # ESS (219-271 -> 325-488 of 2,000 draws, r_hat 1.02 -> 1.00) for 2x the time (~3 s)
        idata = nutpie.sample(compiled.with_data(**_link_data(d)), draws=spec.draws, tune=spec.tune,
                              chains=spec.chains, cores=spec.chains, seed=int(seed), progress_bar=False,
                              target_accept=0.9, low_rank_modified_mass_matrix=low_rank)
    post = idata.posterior
    ll = image_loglik(d, spec, _flat(post["f"]), _flat(post["tau"]), _flat(post["omega"]))
    S = post.sizes["chain"], post.sizes["draw"]
    idata.add_groups(log_likelihood=xr.Dataset(
        {"m": (("chain", "draw", "coupling", "image"), ll.reshape(*S, *ll.shape[1:]))},
        coords={"chain": post["chain"].values, "draw": post["draw"].values, "coupling": d.labels,
                "image": d.images}))
    return idata, compiled


def _flat(da: xr.DataArray) -> np.ndarray:
    v = da.values
    return v.reshape(-1, *v.shape[2:])


def _variant(d: _Data, spec: ConcentrationSpec, links: dict) -> tuple[_Data, ConcentrationSpec]:
    """The same data with some couplings' links changed (amplitude priors follow the new link)."""
    new = spec.with_links(**links)
    codes = np.array([_LINK_CODE[c.link] for c in new.couplings])
    known = d.known.copy()
    for q, c in enumerate(new.couplings):
        if c.link != spec.couplings[q].link and c.link in ("universal", "quadratic"):
            known[q] = False  # a reference amplitude belongs to the physics link, not to the alternatives
    return replace(d, codes=codes, known=known), new


def fit(summ: xr.Dataset, spec: ConcentrationSpec | str = "lgd", seed: int = 0,
        params: lgd.LGDParams | None = None):
    """Stage 2 on tile summaries (:func:`tile_summaries`): the hierarchical posterior as InferenceData.

    Posterior: ``y0``, ``eps0``, ``y_star`` (= y0 + 1/eps0), ``amplitude`` and ``quad`` per coupling,
    ``tau`` (tile scatter), ``omega`` (image scatter), ``theta`` (image values), ``f`` (the link at
    each image's ``y``). ``log_likelihood['m']`` (chain, draw, coupling, image): each image's
    tiles with ``theta`` integrated out, for leave-one-image-out LOO. ``params``: the LGD numbers
    behind ``amplitude = "lgd"`` (default: the reference).
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    d = _prepare(summ, spec, params)
    idata, _ = _sample(d, spec, seed)
    _annotate(idata, d, spec)
    idata.add_groups(prior=prior_draws(d, spec, seed=seed))
    return idata


#: Draws of the ``prior`` group (as many as the default posterior: 2 chains x 1,000).
N_PRIOR = 2000
#: The prior-group variables: what the paper is about (Eqs. 12-16) and the tile / image scatter.
PRIOR_VARS = ("y0", "eps0", "y_star", "amplitude", "quad", "tau", "omega")


def prior_draws(d: _Data, spec: ConcentrationSpec, n: int = N_PRIOR, seed: int = 0) -> xr.Dataset:
    """The ``prior`` group: :data:`PRIOR_VARS` drawn from the stage-2 PyMC model itself
    (:func:`pymc.sample_prior_predictive`, so the prior is never re-stated by hand), dims
    ``(chain=1, draw=n, ...)`` like the posterior's, for ``az.plot_dist_comparison`` and
    :func:`contraction`."""
    import pymc as pm

    import logging

    pymc_log = logging.getLogger("pymc")
    level = pymc_log.level
    pymc_log.setLevel(logging.WARNING)  # not PyMC's "Sampling: [...]" line in the job's output
    try:
        with warnings.catch_warnings():
            # the tile likelihood is a Potential: prior predictive sampling ignores it, as intended here
            warnings.filterwarnings("ignore", message=".*Potential.*", category=UserWarning)
            with build_model(d, spec):
                pp = pm.sample_prior_predictive(draws=n, var_names=list(PRIOR_VARS), random_seed=int(seed))
    finally:
        pymc_log.setLevel(level)
    return pp.prior


def _annotate(idata, d: _Data, spec: ConcentrationSpec) -> None:
    idata.posterior.attrs.update(spec=json.dumps(spec.to_dict()), links=json.dumps({c.label: c.link for c in
                                                                                      spec.couplings}),
                                 ybar=d.ybar, k_cross=spec.k_cross)
    # each image's Sm fraction (the paper's y; named sm_fraction in files, where y is a position)
    idata.add_groups(constant_data=xr.Dataset({"sm_fraction": ("image", d.image_y)}, coords={"image": d.images}))


def contraction(idata, spec: ConcentrationSpec, n_prior: int = 4000, seed: int = 0) -> dict:
    """Prior-to-posterior contraction ``1 - sd_post / sd_prior`` of ``y0``, ``eps0`` and ``y_star``,
    with both s.d.s and the 90 % intervals. The prior draws are ``idata.prior`` (drawn from the
    PyMC model by :func:`fit`); an InferenceData without that group (files from before it was
    stored) gets ``n_prior`` draws of the specification's distributions instead."""
    if "prior" in idata.groups() and {"y0", "eps0", "y_star"} <= set(idata.prior.data_vars):
        prior = {k: idata.prior[k].values.ravel() for k in ("y0", "eps0", "y_star")}
    else:
        from scipy import stats

        rng = np.random.default_rng(seed)
        mu, sd, lo, hi = spec.y0_prior
        a, b = (lo - mu) / sd, (hi - mu) / sd
        y0 = stats.truncnorm.rvs(a, b, loc=mu, scale=sd, size=n_prior, random_state=rng)
        eps0 = np.exp(np.log(spec.eps0_prior[0]) + spec.eps0_prior[1] * rng.standard_normal(n_prior))
        prior = {"y0": y0, "eps0": eps0, "y_star": y0 + 1 / eps0}
    out = {}
    # the whole posterior is judged, as convergence_warning does: an amplitude that did not
    # converge, or divergent transitions, make y0 / y_star untrustworthy too (a fresh-user check
    # found "identified": true beside a warning that said this file marks them not identified)
    diag = convergence(idata, (*prior, "amplitude"))
    div = int(idata.sample_stats["diverging"].sum()) if ("sample_stats" in idata.groups()
                                                         and "diverging" in idata.sample_stats) else 0
    trusted = div == 0 and diag.get("amplitude", {}).get("converged") is not False
    for name, pr in prior.items():
        post = idata.posterior[name].values.ravel()
        con = float(1 - post.std() / pr.std())
        ok = diag[name]["converged"]
        out[name] = {"prior_sd": float(pr.std()), "posterior_sd": float(post.std()),
                     "contraction": con,
                     # < 0.1: the data moved the prior by less than a tenth of its width (or widened it);
                     # and a posterior the sampler did not converge on identifies nothing
                     "identified": bool(con >= 0.1 and ok is not False and trusted),
                     "prior_90": np.quantile(pr, [0.05, 0.95]).tolist(),
                     "posterior_90": np.quantile(post, [0.05, 0.95]).tolist(),
                     "posterior_mean": float(post.mean()), **diag[name]}
    if "sample_stats" in idata.groups() and "diverging" in idata.sample_stats:
        out["divergences"] = div
    return out


#: The stage-2 posterior is trusted when every shared parameter and amplitude has r_hat <= this and
#: bulk ESS >= ESS_PER_CHAIN per chain (Vehtari et al. 2021), and no transition diverged.
RHAT_MAX = 1.01
ESS_PER_CHAIN = 100


def convergence(idata, var_names=("y0", "eps0", "y_star", "amplitude")) -> dict:
    """Per variable: the largest ``r_hat``, the smallest bulk ``ess_bulk`` (over its elements) and
    ``converged`` (r_hat <= :data:`RHAT_MAX` and ESS >= :data:`ESS_PER_CHAIN` x chains; ``None``
    with one chain, where neither can be judged)."""
    import arviz as az

    post = idata.posterior
    chains = post.sizes.get("chain", 1)
    out = {}
    for name in var_names:
        if name not in post:
            continue
        if chains < 2:
            out[name] = {"r_hat": float("nan"), "ess_bulk": float("nan"), "converged": None}
            continue
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)  # constant draws
            rh = float(np.nanmax(az.rhat(post[[name]])[name].values))
            ess = float(np.nanmin(az.ess(post[[name]], method="bulk")[name].values))
        out[name] = {"r_hat": rh, "ess_bulk": ess, "converged": bool(rh <= RHAT_MAX and ess >= ESS_PER_CHAIN * chains)}
    return out


def convergence_warning(idata, cont: dict) -> str | None:
    """A ``"WARNING: ..."`` line when the stage-2 posterior is not to be trusted (parameters not
    converged, divergent transitions), else ``None``."""
    diag = convergence(idata)
    bad = {k: v for k, v in diag.items() if v["converged"] is False}
    div = int(cont.get("divergences", 0) or 0)
    n = int(idata.posterior.sizes.get("chain", 1) * idata.posterior.sizes.get("draw", 0))
    if not bad and not div:
        return None
    parts = [f"{k} (r_hat {v['r_hat']:.2f}, bulk ESS {v['ess_bulk']:.0f})" for k, v in bad.items()]
    what = ("not converged: " + ", ".join(parts)) if parts else ""
    if div:
        what += ("; " if what else "") + f"{div} of {n} transitions diverged"
    return (f"WARNING: the concentration posterior is {'not reliable' if parts else 'suspect'}: {what}. Do not "
            "read y0 / y_star from it; give the specification more [sampler] tune and draws, fewer couplings, or "
            "more images (contraction.json marks these parameters not identified).")


def curves(idata, spec: ConcentrationSpec, y=None) -> xr.Dataset:
    """Each coupling's predicted link curve against the Sm fraction ``y`` (the paper's symbol; the
    output's dimension is ``sm_fraction``, since ``y`` is a position elsewhere in the project) with
    50 % and 90 % equal-tailed bands (``eti_25%`` .. ``eti_75%``, ``eti_5%`` .. ``eti_95%``, ``median``:
    quantiles of the posterior draws of ``f(y)``; the image scatter ``omega`` is not included)."""
    post = idata.posterior
    if y is None:
        cd = idata.constant_data
        yi = (cd["sm_fraction"] if "sm_fraction" in cd else cd["image_y"]).values  # image_y: files before
        y = np.linspace(max(0.0, yi.min() - 0.02), min(1.0, yi.max() + 0.02), 61)
    y = np.asarray(y, dtype=float)
    y0, eps0 = _flat(post["y0"])[:, None], _flat(post["eps0"])[:, None]
    amp, quad = _flat(post["amplitude"]), _flat(post["quad"])
    ybar = float(post.attrs.get("ybar", 0.0))
    qs = (0.05, 0.25, 0.5, 0.75, 0.95)
    bands = np.empty((len(spec.couplings), y.size, len(qs)))
    for q, c in enumerate(spec.couplings):
        fy = link_curve(c.link, y[None, :], amp[:, q:q + 1], y0, eps0, spec.k_cross,
                        quad=(quad[:, q, 0:1], quad[:, q, 1:2]), ybar=ybar)
        bands[q] = np.quantile(fy, qs, axis=0).T
    from causalcrystal.intervals import eti_name

    names = [eti_name(q) for q in qs]
    return xr.Dataset({n: (("coupling", "sm_fraction"), bands[..., k]) for k, n in enumerate(names)},
                      coords={"coupling": [c.label for c in spec.couplings], "sm_fraction": y,
                              "link": ("coupling", [c.link for c in spec.couplings])})


def _coupling_idata(idata, label: str):
    import arviz as az

    ll = idata.log_likelihood["m"].sel(coupling=label, drop=True)
    keep = (ll != 0).any(("chain", "draw")).values  # images with tiles for this coupling
    return az.InferenceData(posterior=idata.posterior[["y0"]],
                            log_likelihood=xr.Dataset({"m": ll.isel(image=np.flatnonzero(keep))}))


def universality(summ: xr.Dataset, spec: ConcentrationSpec | str = "lgd", seed: int = 0,
                 params: lgd.LGDParams | None = None, idata=None, progress=None) -> tuple:
    """Per coupling, evidence for "universal" against "concentration-dependent".

    The specification's fit is compared with one fit per coupling in which only that coupling's
    link is switched: to ``universal`` if its link is concentration-dependent, else to
    ``quadratic`` (does any smooth dependence help?). Each comparison uses that coupling's
    leave-one-image-out LOO (``arviz.compare``, stacking weights). Returns ``(table, fits)``:
    a pandas DataFrame with one row per coupling (``elpd_dependent``, ``elpd_universal``,
    ``elpd_diff`` = dependent - universal, ``dse``, ``weight_dependent``, ``favours``,
    ``pareto_k_max``) and the fitted InferenceData per variant (key ``"spec"`` and the labels).
    """
    import arviz as az
    import pandas as pd

    spec = load_spec(spec) if isinstance(spec, str) else spec
    d = _prepare(summ, spec, params)
    compiled = None
    if idata is None:
        idata, compiled = _sample(d, spec, seed)
        _annotate(idata, d, spec)
    fits = {"spec": idata}
    rows = []
    for q, c in enumerate(spec.couplings):
        n_img = np.unique(d.obs_g[d.obs_c == q]).size
        n_comp = np.unique(d.image_y[np.unique(d.obs_g[d.obs_c == q])]).size
        if n_img < MIN_IMAGES or n_comp < 2:
            # leave-one-image-out over one or two images is no test (a weight of 1e-15 with dse 0
            # was reported as "favours universal" for a coupling seen in one image)
            rows.append({"coupling": c.label, "spec_link": c.link, "dependent_link": "", "elpd_dependent": np.nan,
                         "elpd_universal": np.nan, "elpd_diff": np.nan, "dse": np.nan, "weight_dependent": np.nan,
                         "favours": "not testable", "pareto_k_max": np.nan,
                         "note": f"seen in {n_img} image(s) at {n_comp} composition(s); leave-one-image-out needs "
                                 f">= {MIN_IMAGES} images at >= 2 compositions"})
            if progress:
                progress(c.label)
            continue
        alt = "quadratic" if c.link == "universal" else "universal"
        dv, sv = _variant(d, spec, {c.label: alt})
        other, compiled = _sample(dv, sv, seed + 1 + q, compiled, low_rank=False)
        _annotate(other, dv, sv)
        fits[c.label] = other
        dep, uni = (idata, other) if alt == "universal" else (other, idata)
        dep_link = c.link if alt == "universal" else "quadratic"
        with loo_warnings_recorded():  # the largest Pareto k is recorded (pareto_k_max)
            loos = {"dependent": az.loo(_coupling_idata(dep, c.label), pointwise=True),
                    "universal": az.loo(_coupling_idata(uni, c.label), pointwise=True)}
        cmp = compare_loo(loos, seed=seed)
        ks = [loos[k].pareto_k.values.max() for k in loos]
        e_dep, e_uni = float(cmp.loc["dependent", "elpd_loo"]), float(cmp.loc["universal", "elpd_loo"])
        diff = e_dep - e_uni
        dse = float(cmp["dse"].max())
        kmax = float(max(ks))
        good_k = min(float(getattr(loos[k], "good_k", 0.7)) for k in loos)
        favours, note = universality_verdict(diff, dse, kmax, good_k)
        rows.append({"coupling": c.label, "spec_link": c.link, "dependent_link": dep_link,
                     "elpd_dependent": e_dep, "elpd_universal": e_uni, "elpd_diff": diff, "dse": dse,
                     "weight_dependent": float(cmp.loc["dependent", "weight"]), "favours": favours,
                     "pareto_k_max": kmax, "note": note})
        if progress:
            progress(c.label)
    return pd.DataFrame(rows), fits


def resume_command(folder) -> str:
    """The ``causalcrystal concentration`` command that finishes or recomputes the job in
    ``folder`` (its ``--out``), rebuilt from the settings its manifest recorded, with absolute
    paths (the recorded command line may be the ``demo``'s, which refuses its finished run, and its
    relative paths point to where it was started). The run is ``folder``'s parent when ``folder``
    is a run's ``concentration`` sub-folder, else the recorded one. The spec is named when it is a
    shipped one (``models/concentration``) unchanged; otherwise a placeholder says which file."""
    import shlex

    from causalcrystal.jobs import normalise, read_manifest

    st = (read_manifest(folder) or {}).get("settings", {})
    spec = st.get("spec") or {}
    name = str(spec.get("name", "lgd"))
    try:
        shipped = name in available_specs() and normalise(load_spec(name).to_dict()) == normalise(spec)
    except ValueError:
        shipped = False
    folder = Path(folder).resolve()
    run_dir = st.get("run_dir", "RUN_DIR")
    parent = read_manifest(folder.parent) or {}
    if folder.name == "concentration" and parent.get("job") == "run":
        run_dir = folder.parent  # the default layout RUN/concentration: right also after RUN was moved or copied
    words = ["causalcrystal", "concentration", str(run_dir), "--out", str(folder)]
    words += ["--spec", name if shipped else f"<the .toml file of spec {name!r}>"]
    if st.get("seed") is not None:
        words += ["--seed", str(st["seed"])]
    if st.get("against"):
        words += ["--against", ",".join(map(str, st["against"]))]
    if st.get("universality") is False:
        words.append("--no-universality")
    return shlex.join(words)


def universality_verdict(elpd_diff: float, dse: float, pareto_k_max: float, good_k: float = 0.7) -> tuple[str, str]:
    """``(favours, note)`` of one coupling's leave-one-image-out comparison: ``"dependent"`` when
    ``elpd_diff`` (dependent - universal) exceeds 2 ``dse``, ``"universal"`` when below -2 ``dse``,
    else ``"unclear"``; also ``"unclear"`` when the two fits cannot be told apart (``dse`` 0) or
    when PSIS-LOO is unreliable: the largest Pareto k above ``good_k``, ArviZ's threshold
    (``min(1 - 1/log10(S), 0.7)`` for S draws; Vehtari et al. 2024), the same one the link
    comparison's ``warning`` column uses (with a threshold of 1 here a fresh user saw "universal"
    at k 0.72-0.81 beside a link comparison called unreliable)."""
    favours = "dependent" if elpd_diff > 2 * dse else "universal" if elpd_diff < -2 * dse else "unclear"
    if not dse > 0:
        return "unclear", "the two fits predict the held-out images identically (dse 0)"
    if pareto_k_max > good_k:
        return "unclear", (f"leave-one-image-out unreliable (Pareto k {pareto_k_max:.2f} > {good_k:.2f}): the fit "
                           "without some image differs too much from the fit with it; more images per composition "
                           "make it reliable")
    return favours, ""


def universality_summary(evidence, converged: bool = True) -> str:
    """One console line of :func:`universality`'s verdicts: the couplings grouped by verdict and
    note (``"universality (couplings.csv 'favours'): dependent: a<-Px; not testable (seen in 2
    image(s) ...): b<-Px, Px<-Py"``; each coupling's own Pareto k stays in ``couplings.csv``).
    ``converged=False`` adds that the verdicts come from a fit that did not converge."""
    groups: dict = {}
    for r in evidence.itertuples():
        note = re.sub(r"Pareto k [0-9.]+ > ", "Pareto k > ", str(r.note or ""))
        groups.setdefault((r.favours, note), []).append(r.coupling)
    parts = [f"{fav}{f' ({note})' if note else ''}: {', '.join(labels)}" for (fav, note), labels in groups.items()]
    line = "universality (couplings.csv 'favours'): " + "; ".join(parts)
    if not converged:
        line += " [from a fit that did not converge (the warning above): read these as unreliable too]"
    return line


def all_links(spec: ConcentrationSpec, link: str) -> ConcentrationSpec:
    """``spec`` with every coupling on ``link`` (named after the link), for link comparisons.

    A reference amplitude belongs to the physics link, so couplings moved to ``universal`` or
    ``quadratic`` get the wide amplitude prior."""
    if link not in LINKS:
        raise ValueError(f"link {link!r} unknown; use one of {LINKS}.")
    return replace(spec.with_links(**{c.label: link for c in spec.couplings}), name=link,
                   description=f"{spec.name} with every coupling {link}")


def compare_links(summ: xr.Dataset, specs, seed: int = 0, params: lgd.LGDParams | None = None,
                  fits: dict | None = None, progress=None):
    """Compare whole link specifications (e.g. ``lgd`` against ``universal`` and ``quadratic``) on
    the same tiles: leave-one-image-out LOO of all couplings together (each image's log-likelihood
    summed over couplings), ``arviz.compare`` with stacking weights.

    ``specs``: names, paths or :class:`ConcentrationSpec`; all must list the same couplings.
    ``fits``: already fitted InferenceData by spec name (re-used, e.g. the main fit). Returns
    ``(table, fits)``: the comparison table (one row per spec: ``elpd_loo``, ``se``, ``elpd_diff``,
    ``dse``, ``weight``, ``pareto_k_max``, ``links``) and the fits.
    """
    import arviz as az

    specs = [load_spec(s) if isinstance(s, (str, Path)) else s for s in specs]
    labels = [c.label for c in specs[0].couplings]
    for sp in specs[1:]:
        if [c.label for c in sp.couplings] != labels:
            raise ConcentrationError(f"spec {sp.name!r} lists couplings {[c.label for c in sp.couplings]}, spec "
                                     f"{specs[0].name!r} {labels}; link comparisons need the same couplings.")
    if len({sp.name for sp in specs}) != len(specs):
        raise ConcentrationError(f"spec names repeat: {[sp.name for sp in specs]}.")
    n_img = np.unique(summ["image"].values[summ["used"].values.any(axis=1)]).size
    if n_img < MIN_IMAGES:
        raise ConcentrationError(f"comparing link specifications by leave-one-image-out needs >= {MIN_IMAGES} images "
                                 f"with used tiles; this series has {n_img}. Add images (several per composition "
                                 "make the comparison trustworthy) or drop --against.")
    fits = dict(fits or {})
    ds = {sp.name: _prepare(summ, sp, params) for sp in specs if sp.name not in fits}  # all errors before any fit
    for k, sp in enumerate(specs):
        if sp.name not in fits:
            d = ds[sp.name]
            # no compiled model handed on: specs may differ in shared priors, which are compiled in
            # (_compiled caches per priors, so equal ones still compile once)
            fits[sp.name], _ = _sample(d, sp, seed + 100 + k, low_rank=False)
            _annotate(fits[sp.name], d, sp)
        if progress:
            progress(sp.name)
    per_image = {}
    for sp in specs:
        ll = fits[sp.name].log_likelihood["m"].sum("coupling")
        per_image[sp.name] = az.InferenceData(posterior=fits[sp.name].posterior[["y0"]],
                                              log_likelihood=xr.Dataset({"m": ll}))
    with loo_warnings_recorded():  # the largest Pareto k is recorded (pareto_k_max)
        loos = {n: az.loo(x, pointwise=True) for n, x in per_image.items()}
    table = compare_loo(loos, seed=seed)
    ks = {n: float(e.pareto_k.values.max()) for n, e in loos.items()}
    table = table.reset_index(names="spec")
    table["pareto_k_max"] = table["spec"].map(ks)
    table["links"] = table["spec"].map({sp.name: json.dumps({c.label: c.link for c in sp.couplings})
                                        for sp in specs})
    return table[["spec", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight", "pareto_k_max",
                  "warning", "links"]], fits


def simulate_summaries(spec: ConcentrationSpec | str, compositions, *, images_per_composition: int = 2,
                       tiles_per_image: int = 16, y0: float = 0.18, eps0: float = 5.0, amplitudes=None,
                       tile_sd: float = 0.15, tau: float = 0.1, omega: float = 0.05, seed: int = 0,
                       params: lgd.LGDParams | None = None) -> xr.Dataset:
    """Stage-1 summaries drawn from the stage-2 model with known truth (for tests and design checks).

    Every coupling follows its link in ``spec`` with amplitude ``amplitudes[label]`` (default: the
    reference amplitude, or 1); ``tile_sd``, ``tau`` and ``omega`` are relative to each coupling's
    amplitude: tile posterior s.d., tile scatter and image scatter. The truth is in the attrs.
    """
    spec = load_spec(spec) if isinstance(spec, str) else spec
    rng = np.random.default_rng(seed)
    images, ys = [], []
    for y in compositions:
        for k in range(images_per_composition):
            images.append(f"Sm_{round(100 * y)}_{k}")
            ys.append(float(y))
    ys = np.asarray(ys)
    amps = {}
    for c in spec.couplings:
        ref = reference_amplitude(c, params) if c.link in ("ps", "cross") else None
        amps[c.label] = float((amplitudes or {}).get(c.label, ref if ref is not None else 1.0))
    T = len(images) * tiles_per_image
    mean = np.empty((T, len(spec.couplings)))
    sd = np.empty_like(mean)
    for q, c in enumerate(spec.couplings):
        A = amps[c.label]
        link = c.link if c.link != "quadratic" else "universal"
        f = link_curve(link, ys, A, y0, eps0, spec.k_cross)
        theta = f + abs(A) * omega * rng.standard_normal(ys.size)
        s = abs(A) * tile_sd * rng.uniform(0.5, 1.5, size=T)
        tile_theta = np.repeat(theta, tiles_per_image) + abs(A) * tau * rng.standard_normal(T)
        mean[:, q] = tile_theta + s * rng.standard_normal(T)
        sd[:, q] = s
    out = xr.Dataset({"mean": (("tile", "coupling"), mean), "sd": (("tile", "coupling"), sd)},
                     coords={"tile": np.arange(T), "coupling": [c.label for c in spec.couplings],
                             "image": ("tile", np.repeat(images, tiles_per_image)),
                             "sm_fraction": ("tile", np.repeat(ys, tiles_per_image))})
    out["used"] = xr.ones_like(out["mean"], dtype=bool)
    out.attrs.update(truth=json.dumps({"y0": y0, "eps0": eps0, "amplitudes": amps, "y_star": y0 + 1 / eps0}))
    return out


# ---------------------------------------------------------------------------------------------
# the `causalcrystal concentration` job

OUTPUTS = ("tile_summaries.nc", "concentration.nc", "couplings.csv", "curves.csv", "contraction.json",
           "links.csv")
#: Written last by versions before the manifest's finished status (how their folders are read).
FINAL = "concentration.nc"


def coupling_table(idata, spec: ConcentrationSpec, summ: xr.Dataset, evidence=None):
    """One row per coupling: link, amplitude (mean, sd, 90 % interval), quadratic terms, how many
    tiles and images inform it, and (if given) the universality evidence."""
    import pandas as pd

    post = idata.posterior
    amp = _flat(post["amplitude"])
    quad = _flat(post["quad"])
    used = summ["used"].sel(coupling=[c.label for c in spec.couplings]).values
    rows = []
    for q, c in enumerate(spec.couplings):
        lo, hi = np.quantile(amp[:, q], [0.05, 0.95])
        imgs = summ["image"].values[used[:, q]]
        row = {"coupling": c.label, "link": c.link, "effect_kind": c.effect_kind, "oriented": c.orient,
               "amplitude_mean": amp[:, q].mean(), "amplitude_sd": amp[:, q].std(), "amplitude_eti_5%": lo,
               "amplitude_eti_95%": hi, "amplitude_prior": "none" if c.amplitude is None else
               f"{c.amplitude} x exp(N(0, {c.amplitude_rel_sd}^2))",
               "tau_mean": float(_flat(post["tau"])[:, q].mean()), "omega_mean": float(_flat(post["omega"])[:, q].mean()),
               "n_tiles": int(used[:, q].sum()), "n_images": int(len(set(imgs.tolist())))}
        if c.link == "quadratic":
            row.update(linear_mean=quad[:, q, 0].mean(), quadratic_mean=quad[:, q, 1].mean())
        rows.append(row)
    table = pd.DataFrame(rows)
    if evidence is not None:
        table = table.merge(evidence.drop(columns=["spec_link"]), on="coupling", how="left")
    return table


#: Units the LGD reference numbers, hence every ``amplitude = "lgd"`` and the amplitudes of the
#: shipped specifications, are in (those of the simulator, :data:`causalcrystal.simulator.UNITS`).
AMPLITUDE_UNITS = {"I14": "a.u.", "I5": "a.u.", "a": "angstrom", "b": "angstrom", "alpha": "deg",
                   "Vol": "angstrom^2", "Px": "angstrom", "Py": "angstrom"}
_SAME_UNIT = {"a.u.": "counts", "counts": "counts", "Å": "angstrom", "A": "angstrom", "degree": "deg",
              "degrees": "deg"}


def run_derived(run_dir) -> set[str]:
    """Descriptors a run treated as derived in every fitted tile (no equation, no effects: no
    coupling to or from them has data); empty for a run without ``discovery.nc``."""
    path = Path(run_dir) / "discovery.nc"
    if not path.is_file():
        return set()
    with xr.open_dataset(path, engine="h5netcdf") as disc:
        if "derived" not in disc:
            return set()
        ok = disc["status"].values.astype(str) == "ok"
        der = disc["derived"].values[ok].astype(bool)
        names = [str(v) for v in disc["variable"].values] if "variable" in disc.coords else list(DESCRIPTORS)
    return {v for v, d in zip(names, der.all(axis=0)) if d} if der.size else set()


def check_units(spec: ConcentrationSpec, run_dir, log=None) -> None:
    """Refuse a spec whose amplitude priors are in other units than the run's data.

    A coupling ``effect <- cause`` with a prior amplitude is in ``unit(effect) / unit(cause)`` of
    :data:`AMPLITUDE_UNITS`; the run records its descriptors' units (``manifest.json``,
    ``settings["units"]``). They must agree (or both be unit-free: ``a <- Px`` is px/px or
    angstrom/angstrom alike); pixel data against angstrom priors is off by the pixel size (10.7x on
    the Atomap test image). Couplings without an amplitude (wide priors) are not affected. Runs
    made before units were recorded are not checked (``log`` says so). Raises
    :class:`ConcentrationError` naming the couplings, the units and the fix.
    """
    from causalcrystal.jobs import read_manifest

    m = read_manifest(run_dir) or {}
    units = m.get("settings", {}).get("units")
    if not units:
        if log:
            log(f"note: {run_dir} records no descriptor units (an older run); the amplitude priors' units "
                "(angstrom, deg) are not checked against the data")
        return

    def norm(u):
        return _SAME_UNIT.get(str(u).strip(), str(u).strip())

    bad = []
    derived = run_derived(run_dir)
    for c in spec.couplings:
        if c.amplitude is None or {c.effect, c.cause} & derived:
            continue  # a coupling of a derived descriptor is left out of the fit (no data), not checked
        data = (norm(units.get(c.effect, "")), norm(units.get(c.cause, "")))
        prior = (norm(AMPLITUDE_UNITS[c.effect]), norm(AMPLITUDE_UNITS[c.cause]))
        if data == prior or (data[0] == data[1] and prior[0] == prior[1]):
            continue
        bad.append(f"{c.label} (data {data[0]}/{data[1]}, prior {prior[0]}/{prior[1]})")
    if bad:
        raise ConcentrationError(
            f"spec {spec.name!r}: the amplitude priors of {', '.join(bad)} are in other units than the run's "
            "descriptors, so they would be wrong by the unit conversion. Give the descriptors in angstrom and "
            "degrees (from atom columns: `causalcrystal descriptors` with a pixel size, or `causalcrystal columns "
            "--pixel-size S --unit nm`), or use a spec without amplitudes for these couplings (leave 'amplitude' "
            "out: a wide prior).")


def run_concentration(run_dir: str | Path, out_dir: str | Path, spec: ConcentrationSpec | str = "lgd", *,
                      seed: int = 0, universality_check: bool = True, against=(), overwrite: bool = False,
                      params: lgd.LGDParams | None = None, log=None) -> dict:
    """Stage 1 + stage 2 (+ the universality comparisons) for a finished ``run`` folder.

    Writes into ``out_dir``: ``tile_summaries.nc`` (stage 1, reused when the job is re-run with the
    same settings), ``concentration.nc`` (InferenceData: ``y0``, ``eps0``, ``y_star``,
    ``amplitude``, ...), ``couplings.csv`` (per coupling: link, amplitude, universality evidence),
    ``curves.csv`` (each coupling's curve against ``sm_fraction`` with 50 % / 90 % bands),
    ``contraction.json`` (prior-to-posterior contraction of the shared parameters),
    ``links.csv`` when ``against`` names alternative specifications (:func:`compare_links`: the
    whole specification against each alternative, e.g. ``("universal", "quadratic")``) and
    ``manifest.json``. Nothing is replaced without ``overwrite``.
    """
    import sys

    from causalcrystal import __version__
    from causalcrystal.engine import run_fingerprint
    from causalcrystal.jobs import Job, not_finished, status

    from causalcrystal.logs import resolve

    log = resolve(log)  # default: the 'causalcrystal' logger
    spec = load_spec(spec) if isinstance(spec, str) else spec
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if out_dir.resolve() == run_dir.resolve():
        raise ConcentrationError(f"--out {out_dir} is the run folder itself; choose a separate folder (e.g. "
                                 f"{run_dir}/concentration).")
    state = status(run_dir, "posterior.nc")
    if state == "absent":
        raise ConcentrationError(f"{run_dir} is not a causalcrystal run (no manifest.json); pass the --out folder of "
                                 "`causalcrystal run` or `demo`.")
    if state != "finished" or not (run_dir / "posterior.nc").is_file():
        # one message with the report and open_run: resume, wait, or --overwrite (outputs deleted)
        raise ConcentrationError(not_finished(run_dir, "run", "posterior.nc", f"causalcrystal run ... --out {run_dir}")
                                 + " (then fit the concentration model).")
    alternatives = [all_links(spec, a) if a in LINKS else load_spec(a) if isinstance(a, (str, Path)) else a
                    for a in against]
    names = [spec.name] + [a.name for a in alternatives]
    if len(set(names)) != len(names):
        raise ConcentrationError(f"--against repeats a specification name ({names}); compare distinct ones.")
    for a in alternatives:
        if [c.label for c in a.couplings] != [c.label for c in spec.couplings]:
            raise ConcentrationError(f"--against {a.name}: its couplings {[c.label for c in a.couplings]} differ from "
                                     f"{spec.name!r}'s; give a link name (e.g. universal) or a spec with the same "
                                     "couplings.")
    check_units(spec, run_dir, log)
    for a in alternatives:
        check_units(a, run_dir, log)
    # the run's identity is a setting: a partial job is not resumed (stale stage 1) after a re-run
    settings = {"run_dir": str(run_dir.resolve()), "run_fingerprint": run_fingerprint(run_dir),
                "spec": spec.to_dict(), "seed": seed, "universality": universality_check,
                "against": [a.name for a in alternatives]}
    job = Job("concentration", out_dir, settings, outputs=OUTPUTS, final=FINAL, version=__version__, log=log)
    with job.open(overwrite):
        res = _concentration_job(job, run_dir, spec, alternatives, seed, universality_check, params, log)
        job.finish()
    cont = res["contraction"]
    y0 = cont["y0"]
    log(f"y0 = {y0['posterior_mean']:.3f} (90 % {y0['posterior_90'][0]:.3f}-{y0['posterior_90'][1]:.3f}; "
        f"contraction {y0['contraction']:.2f}), y_star = {cont['y_star']['posterior_mean']:.3f} "
        f"(contraction {cont['y_star']['contraction']:.2f}); wrote {out_dir}")
    for name in ("y0", "y_star"):
        if cont[name].get("converged") is False:
            continue  # the convergence warning said so: the contraction of an unconverged posterior means nothing
        if not cont[name]["identified"]:
            log(f"WARNING: {name} is not identified by these images: its posterior is no narrower than its prior "
                f"(contraction {cont[name]['contraction']:.2f}); report the prior, not a measurement (more images, "
                "more compositions, or informative amplitude priors: see the concentration module's docstring)")
    return {"out_dir": str(out_dir), "contraction": cont, "couplings": res["couplings"], "links": res["links"],
            "divergences": res["divergences"]}


def _across_domains(summ: xr.Dataset) -> np.ndarray:
    """(tile, coupling): True where the single-domain selection left the tile out."""
    return np.char.startswith(summ["excluded"].astype(str).values.astype("U"), NOT_SINGLE_DOMAIN)


def _report_single_domain(summ: xr.Dataset, log) -> None:
    """Say how many tiles the single-domain selection left out, and which images it left without
    any tile for a coupling (those images then say nothing about it)."""
    across = _across_domains(summ)
    if not across.any():
        return
    labels = summ["coupling"].values.tolist()
    labs = [lab for lab, hit in zip(labels, across.any(0)) if hit]
    log(f"stage 1: {int(across.any(1).sum())} of {across.shape[0]} tile(s) not inside one domain (a wall or the "
        f"substrate in the tile) left out of {labs}: their slopes average over the polarisation profile "
        "(tile_summaries.nc: 'excluded', 'polarisation_ratio')")
    images = summ["image"].values.astype(str)
    used = summ["used"].values.astype(bool)
    lost = {}
    for q, lab in enumerate(labels):
        if lab not in labs:
            continue
        for g in dict.fromkeys(images.tolist()):
            sel = images == g
            if not used[sel, q].any() and across[sel, q].any():
                lost.setdefault(g, []).append(lab)
    if lost:
        log("WARNING: no usable single-domain tile in " + "; ".join(f"image {g} for {v}" for g, v in lost.items())
            + f": {'those images say' if len(lost) > 1 else 'it says'} nothing about "
            f"{'these couplings' if sum(map(len, lost.values())) > 1 else 'this coupling'} (a run with tiles smaller than the domains, "
            "`causalcrystal run --tile-size`, keeps more)")


def _concentration_job(job, run_dir, spec, alternatives, seed, universality_check, params, log) -> dict:
    """Stage 1 (reused when present) and stage 2 of :func:`run_concentration`, inside its job."""
    spath = job.out_dir / "tile_summaries.nc"
    if spath.exists():
        summ = job.load_part(spath, lambda p: xr.load_dataset(p, engine="h5netcdf"))
        summ["used"] = summ["used"].astype(bool)
        log(f"stage 1: reusing {spath}")
    else:
        log(f"stage 1: tile posteriors of {len(spec.couplings)} couplings from {run_dir}/posterior.nc")
        summ = tile_summaries(run_dir, spec)
        check_series(summ)  # before saving: a series that cannot be fitted leaves no work to resume
        with job.output("tile_summaries.nc") as tmp:
            summ.to_netcdf(tmp, engine="h5netcdf")
    check_series(summ)
    n_left = int(summ.attrs.get("flagged_tiles_left_out", 0))
    if n_left:  # said with stage 1, where it happens (it came after the job's last line)
        log(f"stage 1: {n_left} tile(s) with a noise misfit left out of the image values (tile_summaries.nc: 'excluded')")
    _report_single_domain(summ, log)
    # A coupling that no tile's causal order allows has no data; drop it (loudly) rather than
    # fail the whole job, which on real data would leave the other couplings unfitted.
    empty = [lab for lab in summ["coupling"].values.tolist() if not summ["used"].sel(coupling=lab).any()]
    if empty:
        keep = [c.label for c in spec.couplings if c.label not in empty]
        if not keep:
            raise ConcentrationError(f"no coupling of spec {spec.name!r} is allowed by the causal order of any tile "
                                     f"({empty}); check the run's discovery.")
        derived = run_derived(run_dir)
        hit = {c.label: {c.effect, c.cause} & derived for c in spec.couplings if c.label in empty}
        of_derived = [lab for lab, names in hit.items() if names]
        if of_derived:
            log(f"WARNING: coupling(s) {of_derived} involve {sorted(set().union(*hit.values()))}, "
                "treated as derived in this run (no equation, no effects: run --derived); left out of the fit")
        rest = [lab for lab in empty if lab not in of_derived]
        across = dict(zip(summ["coupling"].values.tolist(), _across_domains(summ).any(0)))
        one_domain = [lab for lab in rest if across[lab]]
        if one_domain:
            log(f"WARNING: coupling(s) {one_domain} have no tile inside one domain where the causal order allows "
                f"them (single_domain_ratio {spec.single_domain_ratio:g}; tile_summaries.nc: 'polarisation_ratio'); "
                "left out of the fit. Smaller tiles (`causalcrystal run --tile-size`) fit between walls; or set tiles = \"all\" for "
                "them in a copy of the specification (their tiles then average over walls: see its docstring)")
        rest = [lab for lab in rest if lab not in one_domain]
        if rest:
            log(f"WARNING: coupling(s) {rest} are not allowed by the causal order of any tile; left out of the fit")
        spec = replace(spec, couplings=tuple(c for c in spec.couplings if c.label in keep))
        alternatives = [replace(a, couplings=tuple(c for c in a.couplings if c.label in keep)) for a in alternatives]
        summ = summ.sel(coupling=keep)
    log(f"stage 2: hierarchical LGD model over {len(set(summ['image'].values.tolist()))} images, "
        f"{summ.sizes['tile']} tiles (spec {spec.name!r})")
    d = _prepare(summ, spec, params)
    idata, compiled = _sample(d, spec, seed)
    _annotate(idata, d, spec)
    idata.add_groups(prior=prior_draws(d, spec, seed=seed))
    evidence = None
    if universality_check:
        n = len(spec.couplings)
        done = iter(range(1, n + 1))
        evidence, _ = universality(summ, spec, seed=seed, params=params, idata=idata,
                                   progress=lambda lab: log(f"universality {next(done)}/{n}: {lab}"))
    links = None
    n_img = np.unique(summ["image"].values[summ["used"].values.any(axis=1)]).size
    if alternatives and n_img < MIN_IMAGES:
        log(f"WARNING: only {n_img} image(s) with used tiles: the link specifications cannot be compared by "
            f"leave-one-image-out (needs >= {MIN_IMAGES}); links.csv not written")
        alternatives = []
    if alternatives:
        links, _ = compare_links(summ, [spec, *alternatives], seed=seed, params=params, fits={spec.name: idata},
                                 progress=lambda name: log(f"link comparison: {name}"))
        shaky = links[links["warning"].astype(bool)]
        if len(shaky):
            # links.csv holds the flag (its warning column); said here too, because a fresh user read
            # the weights without seeing it
            log(f"WARNING: leave-one-image-out is unreliable for spec(s) {shaky['spec'].tolist()} (largest Pareto k "
                f"{shaky['pareto_k_max'].max():.2f}: the fit without some image differs too much from the fit with "
                "it); links.csv's elpd_diff and weights are rough. More images per composition make them reliable.")
    table = coupling_table(idata, spec, summ, evidence)
    cur = curves(idata, spec).to_dataframe().reset_index()
    cont = contraction(idata, spec, seed=seed)
    warning = convergence_warning(idata, cont)
    if warning:
        log(warning)
    if evidence is not None:
        # the verdicts on the console too (a fresh user saw 'unclear' / 'not testable' only in
        # couplings.csv); progress-level: an untestable coupling is a property of the data, not a
        # fault. After the convergence warning, which they inherit.
        log(universality_summary(evidence, converged=not warning))
    with job.output("concentration.nc") as tmp:
        idata.to_netcdf(str(tmp), engine="h5netcdf")
    with job.output("couplings.csv") as tmp:
        table.to_csv(tmp, index=False)
    with job.output("curves.csv") as tmp:
        cur.to_csv(tmp, index=False)
    with job.output("contraction.json") as tmp:
        tmp.write_text(json.dumps(cont, indent=1))
    if links is not None:
        with job.output("links.csv") as tmp:
            links.to_csv(tmp, index=False)
    elif (job.out_dir / "links.csv").exists():  # from an earlier attempt of this job with other data
        (job.out_dir / "links.csv").unlink()
    return {"contraction": cont, "couplings": table, "links": links, "summ": summ,
            "divergences": int(idata.sample_stats["diverging"].sum())}

