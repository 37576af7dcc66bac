"""LGD-based simulator of Sm-doped BiFeO3 films with known causal ground truth.

Each image is a grid of unit cells: a substrate strip at the bottom (rows ``< interface``), a
ferroelectric film above it with vertical 180-degree domain walls. Every cell's eight descriptors
follow a *linear structural equation model around the local spontaneous state*::

    z = z_S + (I - B)^{-1} e        equivalently        z = B z + c + e,   c = (I - B) z_S

where ``B`` (indexed ``[effect, cause]``) is strictly lower-triangular in the causal order
``I14, I5, Py, Px, a, b, alpha, Vol`` and varies from cell to cell with the local polarisation
profile, and ``e`` is independent non-Gaussian noise. This is the linearisation of the paper's
LGD model around the ground state (Eqs. 10-12); the terms are (equations of Barakati et al. 2025,
functions of :mod:`causalcrystal.lgd`):

* ``P_S(y) = P0 sqrt(1 - eps0 (y - y0))`` per image (Eqs. 8-9), times the wall profile
  ``prod tanh(d / L_c)`` and an interface profile (Eq. 14): the local ``P_S(x)`` and its
  normalised shape ``s``;
* ``Px <- Py`` with ``-a12^P / a11^P`` (Eqs. 12, 13a, 15), regularised where ``a11^P`` crosses
  zero near walls; it changes sign inside walls;
* ``a <- Px``, ``b <- Px``, ``alpha <- Py`` proportional to ``Q11, Q12, Q44`` times ``P_S(x)``
  (Eqs. 13b-c, 16b); they flip sign across a 180-degree wall and vanish in the substrate;
* ``Vol <- a``, ``Vol <- b`` from linearising ``Vol = a b sin(alpha)`` (Eq. 6) at the local
  ``(a_S, b_S, 90 deg)``, so ``Vol <- Px`` acts through the strains (Eq. 16c);
* ``a, b <- I14, I5``: Vegard chemical strain (Eq. 3d), intensities standing for local
  composition;
* exogenous noise: random fields on ``Py`` and ``Px`` (``e_1*, e_2*`` of Eq. 12), Vegard and
  measurement strain noise on the lattice variables, composition/thickness noise on intensities;
  Laplace or uniform (the paper's Eq. 1 choice), never Gaussian (LiNGAM needs non-Gaussianity).

The spontaneous state ``z_S``: Z-contrast intensities (Sm, Z=62, is darker than Bi, Z=83), the
spontaneous B-site offset ``d_S P_S(x)/P0``, spontaneous strains ``a0 (1 + Q11 P_S(x)^2)``,
``b0 (1 + Q12 P_S(x)^2)``, ``alpha = 90`` and ``Vol = a b``. Units: angstrom, degree, angstrom^2,
arbitrary intensity units (see :mod:`causalcrystal.lgd`).

The returned Dataset is a valid cell table (:mod:`causalcrystal.cells`) plus the ground truth:
``true_B`` (cell, effect, cause), ``true_intercept`` and ``true_noise`` and ``true_noise_sd``
(cell, effect), ``true_profile`` (``s``), ``true_P_S`` (C/m^2), ``true_region`` (film/substrate),
``true_order`` (the causal order), ``true_outlier`` / ``true_nonfinite`` masks (cell, effect) and
the LGD parameters and settings as JSON attrs (``lgd_params``, ``simulation``).
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr

from causalcrystal import lgd
from causalcrystal.cells import DESCRIPTORS, concat, make_cells, validate

#: The causal order of the simulated descriptors (exogenous first).
TRUE_ORDER: tuple[str, ...] = ("I14", "I5", "Py", "Px", "a", "b", "alpha", "Vol")

NOISE_FAMILIES = ("laplace", "uniform")

#: Noise standard deviations in the film (raw units); the substrate has weak polar noise.
FILM_NOISE_SD = {"I14": 0.08, "I5": 0.05, "a": 0.01, "b": 0.01, "alpha": 0.25, "Vol": 0.03, "Px": 0.02, "Py": 0.02}
SUBSTRATE_NOISE_SD = dict(FILM_NOISE_SD, Px=0.005, Py=0.005)

#: Substrate (a cubic perovskite, SrTiO3-like) spontaneous state.
SUBSTRATE_STATE = {"I14": 2.6, "I5": 0.85, "a": 3.905, "b": 3.905}

UNITS = {"I14": "a.u.", "I5": "a.u.", "a": "angstrom", "b": "angstrom", "alpha": "deg", "Vol": "angstrom^2",
         "Px": "angstrom", "Py": "angstrom"}

_IX = {name: k for k, name in enumerate(DESCRIPTORS)}

DEFAULT_COMPOSITIONS = (0.0, 0.07, 0.10, 0.13, 0.20)


def image_label(fraction: float, k: int) -> str:
    """Public-style label ``Sm_<percent>_<k>`` (``0.07`` -> ``Sm_7_0``)."""
    return f"Sm_{round(100 * fraction, 6):g}_{k}"


def _draw_noise(rng: np.random.Generator, family: str, sd: np.ndarray) -> np.ndarray:
    if family == "laplace":
        return rng.laplace(0.0, 1.0, size=sd.shape) * sd / np.sqrt(2.0)
    return rng.uniform(-1.0, 1.0, size=sd.shape) * sd * np.sqrt(3.0)


def _one_image(y: float, label: str, shape: tuple[int, int], p: lgd.LGDParams, rng: np.random.Generator,
               noise: str, n_walls: int, interface_fraction: float) -> xr.Dataset:
    rows, cols = shape
    row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    row, col = row.ravel(), col.ravel()
    n = row.size
    r_if = int(round(interface_fraction * rows))
    film = row >= r_if

    # Walls at jittered, evenly spread columns; half-integer offsets keep cells off the wall plane.
    if n_walls > 0:
        spacing = cols / n_walls
        walls = (np.arange(n_walls) + 0.5) * spacing + rng.uniform(-spacing / 4, spacing / 4, n_walls)
        walls = np.floor(walls) + 0.5
        s = lgd.wall_profile(col[:, None] - walls[None, :], p.L_c)
    else:
        walls = np.array([])
        s = np.ones(n)
    if r_if > 0:
        s = s * np.tanh((row - r_if + 0.5) / p.L_c)  # polarisation suppressed at the interface
    s = np.where(film, s, 0.0)

    ps_image = float(lgd.spontaneous_polarization(y, p))
    ps_local = ps_image * s
    a0, b0 = lgd.lattice_reference(y, p)

    # Spontaneous state z_S.
    z_s = np.zeros((n, len(DESCRIPTORS)))
    z_s[:, _IX["I14"]] = np.where(film, 4.0 * (1.0 - 0.39 * y), SUBSTRATE_STATE["I14"])
    z_s[:, _IX["I5"]] = np.where(film, 1.0, SUBSTRATE_STATE["I5"])
    z_s[:, _IX["Px"]] = p.d_S * ps_local / p.P0
    a_s = np.where(film, a0 * (1.0 + p.Q11 * ps_local**2), SUBSTRATE_STATE["a"])
    b_s = np.where(film, b0 * (1.0 + p.Q12 * ps_local**2), SUBSTRATE_STATE["b"])
    z_s[:, _IX["a"]] = a_s
    z_s[:, _IX["b"]] = b_s
    z_s[:, _IX["alpha"]] = 90.0
    z_s[:, _IX["Vol"]] = a_s * b_s

    # Coefficients B[effect, cause] per cell.
    B = np.zeros((n, len(DESCRIPTORS), len(DESCRIPTORS)))
    B[:, _IX["a"], _IX["I14"]], B[:, _IX["b"], _IX["I14"]] = p.vegard_I14
    B[:, _IX["a"], _IX["I5"]], B[:, _IX["b"], _IX["I5"]] = p.vegard_I5
    strain = lgd.strain_couplings(y, s, p)
    B[:, _IX["a"], _IX["Px"]] = np.where(film, strain["a<-Px"], 0.0)
    B[:, _IX["b"], _IX["Px"]] = np.where(film, strain["b<-Px"], 0.0)
    B[:, _IX["alpha"], _IX["Py"]] = np.where(film, strain["alpha<-Py"], 0.0)
    B[:, _IX["Px"], _IX["Py"]] = np.where(film, lgd.cross_coupling(y, s, p), 0.0)
    B[:, _IX["Vol"], _IX["a"]] = b_s
    B[:, _IX["Vol"], _IX["b"]] = a_s

    sd = np.where(film[:, None], [FILM_NOISE_SD[v] for v in DESCRIPTORS],
                  [SUBSTRATE_NOISE_SD[v] for v in DESCRIPTORS])
    e = _draw_noise(rng, noise, sd)
    eye = np.broadcast_to(np.eye(len(DESCRIPTORS)), B.shape)
    z = z_s + np.linalg.solve(eye - B, e[..., None])[..., 0]
    c = np.einsum("nij,nj->ni", eye - B, z_s)

    ds = make_cells(
        {v: z[:, _IX[v]] for v in DESCRIPTORS},
        image=label, sm_fraction=y, row=row, col=col,
        x=col * p.a_ref, y=row * p.b_ref, units=UNITS, source="causalcrystal.simulator",
    )
    ds["true_B"] = (("cell", "effect", "cause"), B)
    ds["true_intercept"] = (("cell", "effect"), c)
    ds["true_noise"] = (("cell", "effect"), e)
    ds["true_noise_sd"] = (("cell", "effect"), sd)
    ds["true_profile"] = ("cell", s)
    ds["true_P_S"] = ("cell", ps_local)
    ds["true_region"] = ("cell", np.where(film, "film", "substrate").astype(str))
    ds.attrs["walls"] = json.dumps({label: walls.tolist()})
    ds.attrs["interface_row"] = json.dumps({label: r_if})
    return ds


def _inject(ds: xr.Dataset, rng: np.random.Generator, fraction: float, kind: str, size: float) -> np.ndarray:
    """Corrupt one random descriptor in a ``fraction`` of cells; return the (cell, effect) mask."""
    n, m = ds.sizes["cell"], len(DESCRIPTORS)
    mask = np.zeros((n, m), dtype=bool)
    k = int(round(fraction * n))
    if k == 0:
        return mask
    cells = rng.choice(n, size=k, replace=False)
    which = rng.integers(0, m, size=k)
    mask[cells, which] = True
    for j, name in enumerate(DESCRIPTORS):
        idx = cells[which == j]
        if idx.size == 0:
            continue
        vals = ds[name].values.copy()
        if kind == "nonfinite":
            vals[idx] = rng.choice(np.array([np.nan, np.nan, np.inf, -np.inf]), size=idx.size)
        else:
            sd = ds["true_noise_sd"].values[idx, j]
            vals[idx] = vals[idx] + rng.choice([-1.0, 1.0], size=idx.size) * size * sd
        ds[name].values[:] = vals
    return mask


def simulate(
    compositions=DEFAULT_COMPOSITIONS,
    *,
    shape: tuple[int, int] = (64, 64),
    images_per_composition: int = 1,
    seed: int = 0,
    params: lgd.LGDParams | None = None,
    noise: str = "laplace",
    n_walls: int = 1,
    interface_fraction: float = 0.2,
    nonfinite_fraction: float = 0.0,
    outlier_fraction: float = 0.0,
    outlier_size: float = 10.0,
    geometric_vol: bool = False,
) -> xr.Dataset:
    """Simulate a composition series of Sm-BFO films with known causal ground truth.

    ``compositions`` are Sm fractions (0..1), one image each (``images_per_composition`` images
    per composition); ``shape`` is ``(rows, cols)`` of unit cells per image; ``noise`` is
    ``"laplace"`` or ``"uniform"``; ``n_walls`` vertical 180-degree walls per image;
    ``interface_fraction`` the substrate's share of rows (0 for a free film). ``nonfinite_fraction``
    and ``outlier_fraction`` corrupt one descriptor in that share of cells (outliers are shifted by
    ``outlier_size`` noise s.d.); their masks are returned as ``true_nonfinite`` /
    ``true_outlier``. ``geometric_vol``: compute ``Vol = a b sin(alpha)`` exactly from each cell's
    simulated ``a``, ``b``, ``alpha`` (degrees), as real unit-cell tables do, instead of the
    linearised equation with noise of its own (``true_B``'s ``Vol`` row is then the local
    gradient of the product and ``true_noise`` of ``Vol`` is 0). The same arguments and ``seed``
    give identical data. See the module docstring for the equations behind each term.
    """
    p = params or lgd.LGDParams()
    comps = [float(c) for c in np.atleast_1d(np.asarray(compositions, dtype=float))]
    if not comps:
        raise ValueError("simulate: give at least one composition.")
    bad = [c for c in comps if not (0.0 <= c <= 1.0) or not np.isfinite(c)]
    if bad:
        raise ValueError(f"simulate: compositions {bad} are not Sm fractions in [0, 1] (write 7 % as 0.07).")
    rows, cols = (int(v) for v in shape)
    if rows < 2 or cols < 2:
        raise ValueError(f"simulate: shape {shape} too small; need at least 2 x 2 cells.")
    if noise not in NOISE_FAMILIES:
        raise ValueError(f"simulate: noise {noise!r} unknown; use one of {NOISE_FAMILIES} (never Gaussian: "
                         "edge directions would not be identified).")
    if images_per_composition < 1 or n_walls < 0:
        raise ValueError("simulate: images_per_composition must be >= 1 and n_walls >= 0.")
    if not (0.0 <= interface_fraction < 1.0):
        raise ValueError("simulate: interface_fraction must be in [0, 1).")
    for name, f in (("nonfinite_fraction", nonfinite_fraction), ("outlier_fraction", outlier_fraction)):
        if not (0.0 <= f <= 1.0):
            raise ValueError(f"simulate: {name}={f} must be in [0, 1].")

    jobs = [(y, k) for y in comps for k in range(images_per_composition)]
    labels = [image_label(y, k) for y, k in jobs]
    if len(set(labels)) != len(labels):
        raise ValueError("simulate: compositions repeat; use images_per_composition for replicate images.")
    # One child seed per image (and one for corruption) so images do not depend on each other.
    children = np.random.SeedSequence(seed).spawn(len(jobs) + 1)
    parts = [
        _one_image(y, lab, (rows, cols), p, np.random.default_rng(ss), noise, n_walls, interface_fraction)
        for (y, _), lab, ss in zip(jobs, labels, children)
    ]
    walls = {k: v for part in parts for k, v in json.loads(part.attrs["walls"]).items()}
    interfaces = {k: v for part in parts for k, v in json.loads(part.attrs["interface_row"]).items()}
    truth_vars = [v for v in parts[0].data_vars if v.startswith("true_")]
    table = concat([part[list(DESCRIPTORS)] for part in parts], source="causalcrystal.simulator")
    for v in truth_vars:
        table[v] = xr.concat([part[v] for part in parts], dim="cell")
    table = table.assign_coords(effect=list(DESCRIPTORS), cause=list(DESCRIPTORS))
    table["true_order"] = ("order", np.array(TRUE_ORDER, dtype=str))

    if geometric_vol:
        a, b, al = (table[v].values for v in ("a", "b", "alpha"))
        rad = np.deg2rad(al)
        table["Vol"].values[:] = a * b * np.sin(rad)
        iv = _IX["Vol"]
        tb = table["true_B"].values
        tb[:, iv, :] = 0.0
        tb[:, iv, _IX["a"]] = b * np.sin(rad)
        tb[:, iv, _IX["b"]] = a * np.sin(rad)
        tb[:, iv, _IX["alpha"]] = a * b * np.cos(rad) * np.pi / 180.0
        table["true_noise"].values[:, iv] = 0.0
        table["true_noise_sd"].values[:, iv] = 0.0
    rng = np.random.default_rng(children[-1])
    table["true_nonfinite"] = (("cell", "effect"), _inject(table, rng, nonfinite_fraction, "nonfinite", 0.0))
    table["true_outlier"] = (("cell", "effect"), _inject(table, rng, outlier_fraction, "outlier", outlier_size))

    table.attrs.update(
        lgd_params=json.dumps(p.to_dict()),
        simulation=json.dumps({
            "compositions": comps, "shape": [rows, cols], "images_per_composition": images_per_composition,
            "seed": seed, "noise": noise, "n_walls": n_walls, "interface_fraction": interface_fraction,
            "nonfinite_fraction": nonfinite_fraction, "outlier_fraction": outlier_fraction,
            "outlier_size": outlier_size, "walls": walls, "interface_row": interfaces,
            "geometric_vol": bool(geometric_vol),
        }),
    )
    return validate(table, allow_nonfinite=nonfinite_fraction > 0)
