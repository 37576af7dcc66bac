"""Candidate DAGs and bootstrap probabilities -> priors on the SEM coefficients ``B``.

The mapping (documented here because every posterior depends on it):

1. **Which coefficients may be non-zero.** A causal order (from a LiNGAM candidate DAG, by default
   the tile's most frequent bootstrap DAG, else the full-data fit) allows ``B[effect, cause]``
   only when ``cause`` comes before ``effect``: 28 of the 56 off-diagonal entries for 8
   descriptors. The others are fixed at 0, so ``B`` is strictly lower-triangular in that order,
   the Jacobian of ``z -> e`` is 1, and the likelihood is the product of the noise densities.
2. **How strongly each allowed coefficient is believed.** Each allowed coefficient gets a
   marginalised spike-and-slab prior (no discrete latent variable, so NUTS can sample it)::

       beta ~ w N(0, slab_sd^2) + (1 - w) N(0, spike_sd^2)

   with inclusion weight ``w`` from the bootstrap edge probability. The tile's bootstrap has few
   resamples (it is the expensive part), so its frequency is shrunk toward the image-level
   probability as if the image contributed ``pseudo_count`` resamples::

       w = (n_tile p_tile + pseudo_count p_image) / (n_tile + pseudo_count),  clipped to [floor, 1 - floor]

   The floor keeps every allowed edge reachable by the data (LiNGAM's 0 % is not a proof of
   absence) and keeps ``log w`` finite. Edges that the prior knowledge forbids (anything into an
   exogenous variable, by default ``I14`` and ``I5``) are masked to exactly 0, as in LiNGAM.
   ``spike_sd = 0.1`` (standardised units) rather than a narrower spike: with 0.05 the posterior of
   weakly supported edges is bimodal and NUTS reached a bulk ESS of only 30-230 per 1,000 draws on
   simulated tiles; 0.1 gave 230-560 at the same cost.
3. **Posterior inclusion probability.** For each draw, the conditional probability that the
   coefficient came from the slab, ``w N(beta; slab) / (w N(beta; slab) + (1 - w) N(beta; spike))``
   (Rao-Blackwellised); its posterior mean is the edge's inclusion probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

from causalcrystal.errors import check_field_types


@dataclass(frozen=True)
class PriorSpec:
    """Hyper-parameters of the DAG prior (standardised units); see the module docstring."""

    slab_sd: float = 1.0
    spike_sd: float = 0.1
    pseudo_count: float = 5.0
    floor: float = 0.02
    intercept_sd: float = 1.0
    scale_sd: float = 1.0
    #: generalised-normal noise only: LogNormal(log 2, 0.75) prior on the shape, truncated to
    #: [shape_min, shape_max]. Unbounded, simulated tiles drove shapes to 0.2 and 50 (a spike
    #: and a box), where NUTS stalled (bulk ESS 3, r_hat 2, minutes per tile); shape 10 is
    #: already a box to within 1 % of its density, and 0.5 is far heavier-tailed than Laplace.
    shape_min: float = 0.5
    shape_max: float = 10.0
    #: the median and log-scale s.d. of that LogNormal (the shape 2 of a Gaussian at the median)
    shape_median: float = 2.0
    shape_sigma: float = 0.75
    #: Student-t noise only: degrees of freedom nu ~ Gamma(nu_alpha, rate nu_beta), mean 20 and
    #: mode 10 with the defaults (Juarez & Steel 2010, the prior PyMC's and Stan's docs use)
    nu_alpha: float = 2.0
    nu_beta: float = 0.1

    def __post_init__(self):
        check_field_types(self, "[prior]")
        if not (0 < self.spike_sd < self.slab_sd):
            raise ValueError(f"prior: need 0 < spike_sd ({self.spike_sd}) < slab_sd ({self.slab_sd}).")
        if not (0 < self.floor < 0.5):
            raise ValueError(f"prior: floor {self.floor} must be in (0, 0.5).")
        if not (0 < self.shape_min < 2 < self.shape_max):
            raise ValueError(f"prior: need 0 < shape_min ({self.shape_min}) < 2 < shape_max ({self.shape_max}).")
        if self.pseudo_count < 0 or self.intercept_sd <= 0 or self.scale_sd <= 0:
            raise ValueError("prior: pseudo_count >= 0, intercept_sd > 0 and scale_sd > 0 required.")
        if not (self.shape_min < self.shape_median < self.shape_max) or self.shape_sigma <= 0:
            raise ValueError(f"prior: need shape_min < shape_median ({self.shape_median}) < shape_max and "
                             f"shape_sigma ({self.shape_sigma}) > 0.")
        if self.nu_alpha <= 0 or self.nu_beta <= 0:
            raise ValueError(f"prior: nu_alpha ({self.nu_alpha}) and nu_beta ({self.nu_beta}) must be > 0.")


def lower_pairs(n_vars: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``(i, j)`` with ``i > j`` in causal-order coordinates (effect i, cause j)."""
    return np.tril_indices(n_vars, -1)


def inclusion_weights(p_tile: np.ndarray, p_image: np.ndarray | None, n_tile: int, spec: PriorSpec) -> np.ndarray:
    """Combine tile and image bootstrap probabilities (matrices ``[effect, cause]``) into ``w``.
    ``p_image`` ``None``, or NaN (its image-level fit was skipped): the tile's alone."""
    p_tile = np.asarray(p_tile, dtype=float)
    if p_image is None or not np.isfinite(p_image).all():
        w = p_tile
    else:
        w = (n_tile * p_tile + spec.pseudo_count * np.asarray(p_image, dtype=float)) / (n_tile + spec.pseudo_count)
    return np.clip(w, spec.floor, 1.0 - spec.floor)


@dataclass
class DagPrior:
    """The prior for one tile: a causal order and an inclusion weight per allowed coefficient.

    ``order[k]`` is the descriptor index at causal position ``k``; ``w`` lists the weights of the
    allowed coefficients in :func:`lower_pairs` order of causal positions.
    """

    order: np.ndarray
    w: np.ndarray
    mask: np.ndarray | None = None

    def __post_init__(self):
        if self.mask is None:
            self.mask = np.ones(self.w.shape, dtype=bool)

    @property
    def allowed(self) -> np.ndarray:
        """Boolean ``[effect, cause]`` matrix (descriptor indexing) of coefficients that may be non-zero."""
        n = len(self.order)
        i, j = lower_pairs(n)
        out = np.zeros((n, n), dtype=bool)
        out[self.order[i], self.order[j]] = self.mask
        return out


def forbidden_into(exogenous_idx, n_vars: int) -> np.ndarray:
    """``[effect, cause]`` mask of edges into the exogenous variables (LiNGAM's prior knowledge)."""
    out = np.zeros((n_vars, n_vars), dtype=bool)
    out[list(exogenous_idx), :] = True
    return out


def dag_prior(order, weights: np.ndarray, forbidden: np.ndarray | None = None, floor: float = 0.02) -> DagPrior:
    """Build the prior of one tile from a causal order, a weight matrix ``[effect, cause]`` (e.g.
    bootstrap probabilities; clipped to ``[floor, 1 - floor]``) and an optional ``[effect, cause]``
    mask of forbidden edges."""
    order = np.asarray(order, dtype=np.int64)
    n = len(order)
    if sorted(order.tolist()) != list(range(n)):
        raise ValueError(f"causal order {order.tolist()} is not a permutation of 0..{n - 1}.")
    i, j = lower_pairs(n)
    mask = None if forbidden is None else ~np.asarray(forbidden, dtype=bool)[order[i], order[j]]
    w = np.clip(np.asarray(weights, dtype=float)[order[i], order[j]], floor, 1.0 - floor)
    return DagPrior(order=order, w=w, mask=mask)


def to_descriptor_matrix(values_lower: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Scatter coefficients given in causal-position lower-triangle order (last axis) into
    ``[..., effect, cause]`` matrices in descriptor indexing (zeros where not allowed)."""
    values_lower = np.asarray(values_lower)
    n = len(order)
    i, j = lower_pairs(n)
    out = np.zeros(values_lower.shape[:-1] + (n, n), dtype=values_lower.dtype)
    out[..., order[i], order[j]] = values_lower
    return out


def conditional_inclusion(beta: np.ndarray, w: np.ndarray, spec: PriorSpec) -> np.ndarray:
    """Per-draw probability that each coefficient came from the slab (broadcasts over draws)."""
    log_slab = np.log(w) + stats.norm.logpdf(beta, 0.0, spec.slab_sd)
    log_spike = np.log1p(-w) + stats.norm.logpdf(beta, 0.0, spec.spike_sd)
    return np.exp(log_slab - np.logaddexp(log_slab, log_spike))
