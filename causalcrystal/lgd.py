"""The Landau-Ginzburg-Devonshire (LGD) physics, in one place.

Both the simulator (:mod:`causalcrystal.simulator`) and the concentration model use these
functions, so the data we test on and the model we fit share one set of equations. Equation
numbers refer to Barakati et al., APL Mach. Learn. 3, 036117 (2025) ("the paper").

Doping (Eqs. 8-9)
    ``eps(y) = eps0 (y - y0)`` with ``y`` the Sm fraction and ``y0`` the morphotropic phase
    boundary (MPB, 0.15-0.25 for Sm-BFO); spontaneous polarisation
    ``P_S(y) = P0 sqrt(1 - eps(y))`` (zero once ``eps >= 1``: the ferroelectric order is gone).
Domain walls (Eq. 14)
    ``P_S(x) = P_S(y) tanh(x / L_C)`` across a 180-degree wall at ``x = 0``; several walls multiply
    (the sign alternates between domains). The film/substrate interface uses the same profile in
    the other direction.
Polarisation block (Eqs. 12-13a, 15)
    ``a11^P = 2 a1 (1 - eps(y)) (1 - 3 s^2)`` with ``s = P_S(x)/P_S(y)`` the normalised profile
    (Eq. 13a with ``gamma11 = 0``, using ``P_S(x)^2 = -(a1/a11) (1 - eps) s^2``), and
    ``a12^P = gamma12`` (unknown in the literature; the paper's Fig. 8 uses ``-2 a1``).
    Solving the first row of Eq. (12) for ``dP1`` gives the DAG edge ``Px <- Py`` with coefficient
    ``-a12^P / a11^P``. ``a11^P`` passes through zero near a wall, where the neglected gradient
    terms keep the response finite; we regularise ``1/a11`` as ``a11 / (a11^2 + kappa^2)``.
Strain <- polarisation (Eqs. 13b-c, 16)
    ``a/a0 = 1 + 2 Q11 P_S(x) dP1``, ``b/b0 = 1 + 2 Q12 P_S(x) dP1``,
    ``pi/2 - alpha = 2 Q44 P_S(x) dP2``; the projected area ``Vol = a b sin(alpha)`` (Eq. 6)
    linearises to ``dVol = b_S da + a_S db`` at ``alpha = 90 deg``, so ``Vol <- Px`` acts through
    ``a`` and ``b`` with total effect ``2 (Q11 + Q12) P_S a0 b0`` (Eq. 16c).
Chemistry -> strain (Eq. 3d, Vegard term ``V_ij dN_d``)
    intensity fluctuations of the A (I14) and B (I5) columns stand for local composition
    fluctuations and shift ``a`` and ``b`` linearly.

Units used by the simulator: lengths in angstrom, ``alpha`` in degrees, ``Vol`` in angstrom^2,
``Px, Py`` as the B-site offset in angstrom, intensities in arbitrary units (one Bi column ~ 1).
Polarisation (C/m^2) and B-site offset (angstrom) are related by ``P = P0 * d / d_S`` with
``d_S`` the spontaneous offset of pure BFO.

Reference numbers (Landau ``alpha1``, ``alpha11``, electrostriction ``Q11, Q12, Q44``, ``P0``) are
the BiFeO3 DFT fit of Fedorova et al. (2022) as used in the public ``ferret`` phase-field code,
shipped in ``causalcrystal/data/lgd_bfo_ferret_fedorova2022.json``. Note that ferret uses a
slightly different convention for ``Q_ij`` than Hlinka's (hence ``Q11 < 0``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from importlib import resources

import numpy as np


def reference_coefficients() -> dict:
    """The shipped BiFeO3 reference coefficients (ferret / Fedorova 2022), as a dict."""
    text = resources.files("causalcrystal").joinpath("data/lgd_bfo_ferret_fedorova2022.json").read_text()
    return json.loads(text)


_REF = reference_coefficients()


@dataclass(frozen=True)
class LGDParams:
    """Parameters of the linearised LGD model of Sm-doped BiFeO3 (defaults: BFO reference).

    ``y0`` and ``eps0`` are the doping law (Eq. 9); ``P0`` the pure-BFO spontaneous polarisation
    (C/m^2); ``alpha1``, ``alpha11`` Landau coefficients (Eq. 3b, ferret units); ``gamma12`` the
    FE-AFE coupling ``a12^P`` (Eq. 13a; unknown in the literature, default the paper's ``-2 a1``);
    ``kappa`` regularises ``1/a11^P`` at walls; ``Q11, Q12, Q44`` electrostriction (m^4/C^2);
    ``L_c`` the wall correlation length in unit cells (Eq. 14); ``d_S`` the B-site offset (angstrom)
    that corresponds to ``P0``; ``a_ref``, ``b_ref`` pure-BFO pseudo-cubic lattice parameters and
    ``da_dy`` their change per unit Sm fraction (angstrom); ``vegard_*`` the chemistry -> strain
    coefficients (angstrom per intensity unit).
    """

    y0: float = 0.18
    eps0: float = 5.0
    P0: float = float(_REF["reported_ground_state_from_docs"]["Ps_C_per_m2"])
    alpha1: float = float(_REF["Landau_P"]["alpha1"])
    alpha11: float = float(_REF["Landau_P"]["alpha11"])
    gamma12: float = -2.0 * float(_REF["Landau_P"]["alpha1"])
    kappa: float = 2.8
    Q11: float = float(_REF["electrostriction_Q"]["Q11"])
    Q12: float = float(_REF["electrostriction_Q"]["Q12"])
    Q44: float = float(_REF["electrostriction_Q"]["Q44"])
    L_c: float = 3.0
    d_S: float = 0.25
    a_ref: float = 3.965
    b_ref: float = 3.965
    da_dy: float = -0.2
    vegard_I14: tuple[float, float] = (0.15, 0.12)
    vegard_I5: tuple[float, float] = (0.10, 0.08)

    def __post_init__(self):
        if not (0.0 <= self.y0 <= 1.0):
            raise ValueError(f"LGDParams.y0={self.y0} must be a Sm fraction in [0, 1] (the paper: 0.15-0.25).")
        if self.eps0 <= 0:
            raise ValueError(f"LGDParams.eps0={self.eps0} must be > 0 (P_S falls with Sm beyond the MPB).")
        if self.L_c <= 0 or self.d_S <= 0 or self.P0 <= 0 or self.kappa <= 0:
            raise ValueError("LGDParams: L_c, d_S, P0 and kappa must be positive.")

    def to_dict(self) -> dict:
        """Plain dict (JSON-serialisable) of the parameters."""
        d = asdict(self)
        d["vegard_I14"] = list(self.vegard_I14)
        d["vegard_I5"] = list(self.vegard_I5)
        return d

    def with_(self, **changes) -> "LGDParams":
        """A copy with some parameters changed."""
        return replace(self, **changes)


def eps(y, p: LGDParams):
    """Dimensionless doping factor ``eps(y) = eps0 (y - y0)`` (Eq. 9)."""
    return p.eps0 * (np.asarray(y, dtype=float) - p.y0)


def spontaneous_polarization(y, p: LGDParams):
    """``P_S(y) = P0 sqrt(1 - eps(y))`` in C/m^2 (Eq. 8); zero where ``eps >= 1``."""
    return p.P0 * np.sqrt(np.clip(1.0 - eps(y, p), 0.0, None))


def wall_profile(distances, L_c: float):
    """Normalised polarisation profile ``prod_k tanh(d_k / L_c)`` across 180-degree walls (Eq. 14).

    ``distances`` has the signed distance (in unit cells) of each cell to each wall along the last
    axis; the sign alternates between domains, and the profile goes to zero at every wall.
    """
    d = np.asarray(distances, dtype=float)
    if d.ndim == 0 or d.shape[-1] == 0:
        return np.ones(d.shape[:-1] if d.ndim else ())
    return np.prod(np.tanh(d / L_c), axis=-1)


def a11_polar(y, s, p: LGDParams):
    """``a11^P = 2 a1 (1 - eps(y)) (1 - 3 s^2)`` (Eq. 13a, gamma11 = 0), ``s`` the normalised profile."""
    return 2.0 * p.alpha1 * (1.0 - eps(y, p)) * (1.0 - 3.0 * np.asarray(s, dtype=float) ** 2)


def cross_coupling(y, s, p: LGDParams):
    """Coefficient of the edge ``Px <- Py``: ``-a12^P / a11^P`` (Eqs. 12, 15), regularised at walls.

    Far from walls (``s^2 -> 1``) this is ``gamma12 / (4 a1 (1 - eps))``: it grows in magnitude as
    ``eps -> 1`` and flips sign inside a wall, where ``a11^P < 0``.
    """
    a11 = a11_polar(y, s, p)
    return -p.gamma12 * a11 / (a11**2 + p.kappa**2)


def offset_to_polarization(p: LGDParams) -> float:
    """C/m^2 per angstrom of B-site offset (``P0 / d_S``)."""
    return p.P0 / p.d_S


def lattice_reference(y, p: LGDParams):
    """Unstrained film lattice parameters ``(a0(y), b0(y))`` in angstrom (Vegard's law in ``y``)."""
    y = np.asarray(y, dtype=float)
    return p.a_ref + p.da_dy * y, p.b_ref + p.da_dy * y


def strain_couplings(y, s, p: LGDParams) -> dict[str, np.ndarray]:
    """Raw-unit DAG coefficients of strain <- polarisation at local profile ``s`` (Eqs. 13b-c, 16).

    Returns ``{"a<-Px", "b<-Px", "alpha<-Py"}`` in angstrom/angstrom and degree/angstrom:
    ``a0 2 Q11 P_S(x) k``, ``b0 2 Q12 P_S(x) k``, ``-(180/pi) 2 Q44 P_S(x) k`` with
    ``P_S(x) = P_S(y) s`` and ``k`` = :func:`offset_to_polarization`.
    """
    ps_local = spontaneous_polarization(y, p) * np.asarray(s, dtype=float)
    k = offset_to_polarization(p)
    a0, b0 = lattice_reference(y, p)
    return {
        "a<-Px": a0 * 2.0 * p.Q11 * ps_local * k,
        "b<-Px": b0 * 2.0 * p.Q12 * ps_local * k,
        "alpha<-Py": -(180.0 / np.pi) * 2.0 * p.Q44 * ps_local * k,
    }
