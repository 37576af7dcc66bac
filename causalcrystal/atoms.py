"""Per-unit-cell descriptors from atom-column positions (the bridge from Atomap / AtomAI output).

A perovskite ABO3 viewed along [001] projects onto a square-ish grid of A-site columns with one
B-site column near the centre of every A square. The *5-cation neighbourhood* of a unit cell is
those four A corners plus the one B centre::

    A(i, j+1) ------- A(i+1, j+1)        a1: first lattice vector (the one closer to +x)
        |                 |              a2: second lattice vector (pointing towards +y)
        |       B         |              (i, j): integer lattice index of the A column,
        |                 |                      pos ~ origin + i*a1 + j*a2
    A(i, j) --------- A(i+1, j)

:func:`descriptors_from_atoms` finds those neighbourhoods in plain arrays of column positions and
intensities and turns each into the eight descriptors of the cell table (see
:mod:`causalcrystal.cells`).

Viewed along [110] (``projection="110"``) the A columns form a rectangular lattice ``a`` x
``a sqrt(2) / 2`` (``a`` along [001], ``a sqrt(2) / 2`` along [1-10]) and each B column sits at the
mid-point of an A-A edge along [001] (the rectangle centres hold oxygen columns, which ADF does not
show). The cell is then the ``a`` x ``a sqrt(2)`` rectangle of two A rectangles whose shared edge
holds the B column::

    A(i, j+2) ------- A(i+1, j+2)
        |                 |
    A(i, j+1) -- B -- A(i+1, j+1)         a1: the [001] direction (the B edges)
        |                 |               a2: the [1-10] direction
    A(i, j) --------- A(i+1, j)

Every A row starts a cell (both row parities are kept: consecutive cells share a half), so each
B column belongs to exactly one cell. ``projection="auto"`` (the default) tells the two apart from
the median fractional position of the B columns in the A lattice: (0.5, 0.5) is [001], (0.5, 0)
or (0, 0.5) is [110]; anything else is an error that reports the position. Everything is
vectorised (a k-d tree and sorted integer keys), so
a field of view with 10^5 columns takes about a second.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import xarray as xr
from scipy.spatial import cKDTree

from .cells import CellTableError, make_cells, validate

__all__ = ["descriptors_from_atoms", "estimate_lattice_vectors", "b_site_position", "AtomIndexingWarning"]

ANGLE_UNITS = ("deg", "rad")
PROJECTIONS = ("auto", "001", "110")
POSITION_ORDERS = ("xy", "rc")
#: Length units a pixel size may be given in, and their size in angstrom (the cell table's unit
#: for lengths once the pixel size is known).
ANGSTROM_PER = {"angstrom": 1.0, "A": 1.0, "Å": 1.0, "nm": 10.0, "pm": 0.01}
#: Fractional B positions in the A lattice are classified within this distance (in lattice units).
SITE_TOL = 0.15
#: A cell whose B column lies beyond this fraction of the acceptance radius counts as "near the
#: radius"; when more than PILE_UP_SHARE of the cells do, the offsets are piling up at the radius.
PILE_UP_RADIUS, PILE_UP_SHARE = 0.8, 0.1

#: A column further than this fraction of the shorter lattice spacing from its rounded lattice
#: site is not on the lattice (a spurious detection, a defect, or a different phase).
RESIDUAL_FRACTION = 0.25


class AtomIndexingWarning(UserWarning):
    """Some atom columns or complete A-site cells were left out (counts are in the message and in
    the table's ``attrs['atoms']``)."""


# ----------------------------------------------------------------------------------------------
# input checks


def _positions(value, name: str, *, min_rows: int = 0) -> np.ndarray:
    """Coerce a position array to float (N, 2) or raise naming the argument and the fix."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CellTableError(
            f"{name}: cannot convert to a float array ({exc}); pass an (N, 2) array of x, y positions."
        ) from None
    if arr.ndim != 2 or arr.shape[1] != 2:
        hint = ""
        if arr.ndim == 2 and arr.shape[0] == 2:
            hint = f" It looks transposed: pass {name}.T."
        elif arr.ndim == 2 and arr.shape[1] > 2:
            hint = f" Keep only the x and y columns, e.g. {name}[:, :2]."
        raise CellTableError(
            f"{name}: expected an (N, 2) array of x, y column positions, got shape {arr.shape}.{hint}"
        )
    if arr.shape[0] < min_rows:
        raise CellTableError(
            f"{name}: {arr.shape[0]} columns given; at least {min_rows} are needed to form one unit "
            "cell (4 A-site corners). Pass the positions of the whole A sublattice."
        )
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise CellTableError(
            f"{name}: {int(bad.sum())} rows have non-finite positions (first at row "
            f"{int(np.flatnonzero(bad)[0])}); remove those columns (and their intensities) first."
        )
    return arr


def _intensities(value, name: str, n: int, pos_name: str) -> np.ndarray:
    """Coerce an intensity array to float (N,) matching its positions, or raise."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CellTableError(f"{name}: cannot convert to a float array ({exc}); pass one number per column.") from None
    if arr.ndim == 2 and 1 in arr.shape:
        arr = arr.reshape(-1)
    if arr.ndim != 1 or arr.size != n:
        raise CellTableError(
            f"{name}: expected {n} values (one per row of {pos_name}), got shape {arr.shape}; "
            f"pass the intensities in the same order as {pos_name}."
        )
    bad = ~np.isfinite(arr)
    if bad.any():
        raise CellTableError(
            f"{name}: {int(bad.sum())} non-finite intensities (first at index {int(np.flatnonzero(bad)[0])}); "
            f"remove those columns from both {pos_name} and {name}, or fix their intensities."
        )
    return arr


def _vector(value, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size != 2 or not np.isfinite(arr).all() or np.hypot(*arr) == 0:
        raise CellTableError(
            f"{name}: expected a finite, non-zero lattice vector (dx, dy) in position units, got "
            f"{np.asarray(value).tolist()}; pass e.g. {name}=(3.9, 0.0), or leave it None to estimate it."
        )
    return arr


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u[..., 0] * v[..., 1] - u[..., 1] * v[..., 0]


# ----------------------------------------------------------------------------------------------
# lattice vectors and indexing


def _orient(v1: np.ndarray, v2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Fix order and signs of two lattice vectors: a1 is the one closer to the x axis, with
    a1_x > 0; a2 points towards +y (a2_y > 0), so that row (index along a2) grows with y."""
    if abs(v2[0]) / np.hypot(*v2) > abs(v1[0]) / np.hypot(*v1):
        v1, v2 = v2, v1
    if v1[0] < 0:
        v1 = -v1
    if v2[1] < 0:
        v2 = -v2
    return v1, v2


def estimate_lattice_vectors(a_xy) -> tuple[np.ndarray, np.ndarray]:
    """Estimate the two lattice vectors of the A sublattice from nearest-neighbour vectors.

    Each column's 4 nearest neighbours give difference vectors; in the interior of a near-square
    lattice these are +-a1 and +-a2. Their directions are histogrammed on the *doubled* angle
    (so v and -v fall in the same bin, with no seam at +-90 deg), the strongest peak gives the
    first direction, the strongest peak at least 30 deg away from it the second. Within each
    direction the vectors whose length is within 25 % of the median length (dropping the 2*a
    vectors of edge columns) are sign-aligned and averaged. Order and signs follow the
    convention of :func:`descriptors_from_atoms` (a1 closer to +x with a1_x > 0, a2_y > 0).

    Returns ``(a1, a2)``, each a length-2 array in position units.
    """
    pos = _positions(a_xy, "a_xy", min_rows=4)
    k = min(5, pos.shape[0])
    _, nbr = cKDTree(pos).query(pos, k=k)
    diff = (pos[nbr[:, 1:]] - pos[:, None, :]).reshape(-1, 2)
    length = np.hypot(diff[:, 0], diff[:, 1])
    keep = length > 0  # coincident duplicate detections carry no direction
    diff, length = diff[keep], length[keep]
    if diff.shape[0] < 2:
        raise CellTableError(
            "a_xy: all A columns coincide; cannot estimate lattice vectors. Pass distinct positions."
        )
    theta = np.arctan2(diff[:, 1], diff[:, 0])
    # Histogram of the doubled angle, 0.25 deg (real) per bin, circularly smoothed over +-2 deg
    # so that positional jitter does not split a peak.
    nbins = 1440
    doubled = np.mod(2.0 * theta, 2.0 * np.pi)
    hist = np.bincount((doubled / (2.0 * np.pi) * nbins).astype(int) % nbins, minlength=nbins).astype(float)
    half = 8
    smooth = sum(np.roll(hist, s) for s in range(-half, half + 1))
    centres = (np.arange(nbins) + 0.5) / nbins * np.pi  # real angle of each bin, in [0, pi)

    def axial_distance(angle, ref):
        d = np.mod(angle - ref, np.pi)
        return np.minimum(d, np.pi - d)

    first = centres[np.argmax(smooth)]
    far = axial_distance(centres, first) > np.deg2rad(30.0)
    if not np.any(smooth[far] > 0):
        raise CellTableError(
            "a_xy: all neighbour vectors point along one direction (a single row of columns?); "
            "cannot find a second lattice direction. Pass a1 and a2 explicitly, or more columns."
        )
    second = centres[far][np.argmax(smooth[far])]

    vectors = []
    for ref in (first, second):
        near = axial_distance(theta, ref) < np.deg2rad(15.0)
        v = diff[near]
        u = np.array([np.cos(ref), np.sin(ref)])
        v = np.where((v @ u)[:, None] < 0, -v, v)
        lv = np.hypot(v[:, 0], v[:, 1])
        med = np.median(lv)
        vectors.append(v[np.abs(lv - med) <= 0.25 * med].mean(axis=0))
    return _orient(vectors[0], vectors[1])


def _index(pos, origin, a1, a2):
    """Round positions to lattice indices; return indices (N, 2) and Cartesian residuals (N,)."""
    basis = np.column_stack([a1, a2])
    frac = np.linalg.solve(basis, (pos - origin).T).T
    idx = np.rint(frac).astype(np.int64)
    resid = np.hypot(*(pos - origin - idx @ basis.T).T)
    return idx, resid


def b_site_position(a_xy, b_xy, a1=None, a2=None) -> tuple[np.ndarray, str]:
    """Where the B columns sit in the A lattice: their median fractional position ``(f1, f2)``
    (each in ``[0, 1)``, a circular median so that 0.98 and 0.02 average to 0) along the A lattice
    vectors, and the projection it implies: ``"001"`` (B at the cell centre, (0.5, 0.5)),
    ``"110"`` (B at the mid-point of an A-A edge, (0.5, 0) or (0, 0.5)) or ``"unknown"``.
    Positions ``(N, 2)`` in one unit; ``a1``/``a2`` as in :func:`descriptors_from_atoms`."""
    a_pos, b_pos = _positions(a_xy, "a_xy", min_rows=4), _positions(b_xy, "b_xy")
    v1, v2 = estimate_lattice_vectors(a_pos) if a1 is None else (_vector(a1, "a1"), _vector(a2, "a2"))
    _, on, origin, v1, v2 = _fit_lattice(a_pos, v1, v2)
    return _b_fraction(b_pos, origin, v1, v2)


def _b_fraction(b_pos, origin, a1, a2) -> tuple[np.ndarray, str]:
    if not b_pos.shape[0]:
        return np.array([np.nan, np.nan]), "unknown"
    frac = np.linalg.solve(np.column_stack([a1, a2]), (b_pos - origin).T).T
    ang = 2.0 * np.pi * np.mod(frac, 1.0)
    # circular mean direction, then the median of the wrapped deviations from it: robust to the
    # few spurious B detections a peak finder always adds
    centre = np.angle(np.exp(1j * ang).mean(axis=0))
    dev = np.angle(np.exp(1j * (ang - centre)))
    med = np.mod((centre + np.median(dev, axis=0)) / (2.0 * np.pi), 1.0)
    med = np.where(med > 1.0 - 1e-9, 0.0, med)

    def near(x, target):
        return abs(np.mod(x - target + 0.5, 1.0) - 0.5) < SITE_TOL

    if near(med[0], 0.5) and near(med[1], 0.5):
        kind = "001"
    elif (near(med[0], 0.5) and near(med[1], 0.0)) or (near(med[0], 0.0) and near(med[1], 0.5)):
        kind = "110"
    else:
        kind = "unknown"
    return med, kind


def _projection_text(med, kind) -> str:
    f = [round(float(x), 2) % 1.0 for x in med]  # 0.998 reads as 0.00, not 1.00
    where = f"({f[0]:.2f}, {f[1]:.2f})"
    if kind == "001":
        return f"the B columns sit at fractional position {where} of the A cell, its centre: the [001] projection"
    if kind == "110":
        return (f"the B columns sit at fractional position {where} of the A cell, the mid-point of an A-A edge: the "
                "[110] projection")
    return (f"the B columns sit at fractional position {where} of the A cell, neither its centre (0.5, 0.5, "
            "[001]) nor an edge mid-point ((0.5, 0) or (0, 0.5), [110]); check that b_xy holds the B columns "
            "in the same frame and position order as a_xy (position_order='xy' or 'rc')")


def _fit_lattice(pos, a1, a2):
    """Index the A columns on the lattice (origin, a1, a2), refining all three by least squares.

    The origin starts at one of the columns nearest the centre of the field (the one that puts
    the most columns on the lattice, so a spurious detection cannot be the origin); the fit then
    makes the vectors the field-average ones, so rounding stays correct far from the origin.
    """
    centre = np.median(pos, axis=0)
    _, cand = cKDTree(pos).query(centre, k=min(8, pos.shape[0]))
    best = None
    for c in np.atleast_1d(cand):
        tol = RESIDUAL_FRACTION * min(np.hypot(*a1), np.hypot(*a2))
        _, resid = _index(pos, pos[c], a1, a2)
        n_in = int((resid <= tol).sum())
        if best is None or n_in > best[0]:
            best = (n_in, pos[c])
    origin = best[1]
    inlier = None
    for _ in range(10):
        tol = RESIDUAL_FRACTION * min(np.hypot(*a1), np.hypot(*a2))
        idx, resid = _index(pos, origin, a1, a2)
        new_inlier = resid <= tol
        if inlier is not None and np.array_equal(new_inlier, inlier):
            break
        inlier = new_inlier
        design = np.column_stack([np.ones(int(inlier.sum())), idx[inlier]]).astype(np.float64)
        coef, _, rank, _ = np.linalg.lstsq(design, pos[inlier], rcond=None)
        if rank < 3:  # indices on one line: the vectors are not determined, keep the current ones
            break
        origin, a1, a2 = coef[0], coef[1], coef[2]
    idx, resid = _index(pos, origin, a1, a2)
    tol = RESIDUAL_FRACTION * min(np.hypot(*a1), np.hypot(*a2))
    return idx, resid <= tol, origin, a1, a2


# ----------------------------------------------------------------------------------------------
# the descriptors


def descriptors_from_atoms(
    a_xy,
    a_intensity,
    b_xy,
    b_intensity,
    *,
    image: str = "image",
    sm_fraction: float = 0.0,
    a1=None,
    a2=None,
    max_offset: float = 0.35,
    angle_units: str = "deg",
    source: str = "atoms",
    length_units: str = "px",
    projection: str = "auto",
    position_order: str = "xy",
    pixel_size: float | None = None,
    pixel_unit: str = "nm",
) -> xr.Dataset:
    """Build the cell table of one image from A-site and B-site column positions and intensities.

    Use this when you have atom columns (from Atomap, AtomAI, or your own peak finder) rather
    than a ready-made descriptor file. Positions are ``(N, 2)`` arrays of ``x, y`` in any one
    unit (pixels, Angstrom, nm: say which in ``length_units``); intensities are ``(N,)`` in the
    same order.

    **5-cation neighbourhood.** Each unit cell of a perovskite seen along [001] is four A-site
    columns at the corners ``A00 = A(i, j)``, ``A10 = A(i+1, j)``, ``A01 = A(i, j+1)``,
    ``A11 = A(i+1, j+1)`` and one B-site column near their centre. ``(i, j)`` are integer
    lattice indices: every A column sits near ``origin + i*a1 + j*a2``.

    **Finding the cells.**

    1. Lattice vectors ``a1, a2``: given, or estimated by :func:`estimate_lattice_vectors`
       (nearest-neighbour vectors clustered into two directions). Unless given, ``a1`` is the
       direction closer to the x axis with ``a1_x > 0`` and ``a2`` points towards +y
       (``a2_y > 0``); given vectors are used with their own order and signs.
    2. Indexing: each A column's position relative to an origin column is projected on the
       basis ``(a1, a2)`` and rounded; origin, ``a1`` and ``a2`` are then refined by least
       squares over the indexed columns and the rounding repeated until stable. Columns whose
       distance to their lattice site exceeds 0.25 of the shorter lattice spacing are ignored,
       as are all columns of a site claimed by two columns (which one is real is unknowable).
    3. A cell with lower-left corner ``(i, j)`` exists when all four A corners exist and exactly
       one B column lies within ``max_offset * min(|a1|, |a2|)`` of the corner centroid
       (``max_offset`` < 0.5, so no B column can belong to two cells). Complete A squares with
       no B column, or with two, are skipped.

    Ignored columns and skipped cells are never silent: an :class:`AtomIndexingWarning` gives
    the counts, which are also stored, with the refined lattice, in ``attrs['atoms']`` (JSON).

    **Descriptors** (edge vectors ``e_a = A10 - A00`` and ``A11 - A01`` along a1,
    ``e_b = A01 - A00`` and ``A11 - A10`` along a2):

    ``a``
        mean length of the two edges along a1: ``(|A10 - A00| + |A11 - A01|) / 2``.
    ``b``
        mean length of the two edges along a2: ``(|A01 - A00| + |A11 - A10|) / 2``.
    ``alpha``
        angle between the *mean* edge vectors ``E1 = (A10 - A00 + A11 - A01) / 2`` and
        ``E2 = (A01 - A00 + A11 - A10) / 2``, in ``[0, 180]`` degrees (or radians with
        ``angle_units="rad"``). For a parallelogram it is the corner angle between +a1 and +a2;
        with the default orientation 90 is rectangular. Flipping the sign of one lattice
        vector turns alpha into 180 - alpha. This definition is chosen because
        ``|E1 x E2|`` equals the shoelace area of any quadrilateral, so ``Vol`` and ``alpha``
        describe the same cell.
    ``Vol``
        projected area of the quadrilateral ``A00, A10, A11, A01`` (shoelace formula),
        ``a * b * sin(alpha)`` for a parallelogram, in ``length_units^2``.
    ``Px``, ``Py``
        B-site offset from the A-corner centroid, ``B - (A00 + A10 + A01 + A11) / 4``, in the
        x, y frame of the positions (positive ``Px``: B displaced towards +x), whatever the
        lattice orientation.
    ``I14``
        sum of the four A-corner intensities. ``I5``: the B-column intensity.

    Coordinates: ``col`` = ``i`` (index along a1), ``row`` = ``j`` (index along a2), each
    shifted so that its minimum over the returned cells is 0 (so with a1 roughly along x,
    ``row`` is the vertical index and grows with y); ``x, y`` = the A-corner centroid. Cells are
    ordered by ``(row, col)``.

    **[110] projection** (``projection="110"``, or found by ``"auto"``; see the module
    docstring): ``a1`` is the lattice direction of the A-A edges that hold the B columns ([001],
    spacing ``a``), ``a2`` the other ([1-10], spacing ``a sqrt(2) / 2``). A cell with lower-left
    corner ``(i, j)`` needs the six A columns ``(i..i+1, j..j+2)`` and exactly one B column within
    the radius of the mid-point ``M = (A(i, j+1) + A(i+1, j+1)) / 2`` of its middle edge; ``a``,
    ``b``, ``alpha``, ``Vol`` and ``I14`` come from the four corners as above (so ``b`` ~
    ``a sqrt(2)``), ``Px, Py = B - M``, and ``x, y = M``. ``attrs['atoms']`` records the projection
    used and the median fractional B position (:func:`b_site_position`).

    Parameters beyond the arrays: ``image`` (label), ``sm_fraction`` (composition of this image,
    0..1), ``a1``/``a2`` (both or neither), ``max_offset``, ``angle_units`` (``"deg"`` or
    ``"rad"``), ``source`` (recorded in attrs and error messages), ``length_units`` (unit label
    for a, b, Vol, Px, Py), ``projection`` (``"auto"``, ``"001"``, ``"110"``),
    ``position_order`` (``"xy"``: column 0 is x, the horizontal image axis; ``"rc"``: column 0 is
    the row, as array-index peak finders such as ``skimage.feature.peak_local_max`` return them;
    ``a1``/``a2`` are given in the same order), ``pixel_size`` (size of one position unit, e.g. a
    pixel, in ``pixel_unit``: ``"nm"``, ``"angstrom"`` or ``"pm"``; then lengths are converted to
    angstrom and ``length_units`` is ``"angstrom"``, the pixel size recorded in
    ``attrs['pixel_size']`` / ``attrs['pixel_unit']``).

    Warns (:class:`AtomIndexingWarning`) when more than 10 % of the accepted B columns lie beyond
    0.8 of the acceptance radius: the offsets are piling up at the radius, so the B columns are
    probably not where this projection expects them (the message gives their fractional position).

    Raises :class:`~causalcrystal.cells.CellTableError` for malformed input (naming the
    argument) or when no complete cell is found.
    """
    a_pos = _positions(a_xy, "a_xy", min_rows=4)
    b_pos = _positions(b_xy, "b_xy")
    a_int = _intensities(a_intensity, "a_intensity", a_pos.shape[0], "a_xy")
    b_int = _intensities(b_intensity, "b_intensity", b_pos.shape[0], "b_xy")
    if angle_units not in ANGLE_UNITS:
        raise CellTableError(f"angle_units: {angle_units!r} unknown; use one of {ANGLE_UNITS}.")
    if projection not in PROJECTIONS:
        raise CellTableError(f"projection: {projection!r} unknown; use one of {PROJECTIONS} ('001': B at the A-cell "
                             "centre; '110': B at the mid-point of an A-A edge; 'auto': find out).")
    if position_order not in POSITION_ORDERS:
        raise CellTableError(f"position_order: {position_order!r} unknown; use 'xy' (x, y: column 0 horizontal) or "
                             "'rc' (row, column: as array-index peak finders return them).")
    if position_order == "rc":  # everything below works in x, y
        a_pos, b_pos = a_pos[:, ::-1].copy(), b_pos[:, ::-1].copy()
        a1 = None if a1 is None else np.asarray(a1, dtype=np.float64).reshape(-1)[::-1]
        a2 = None if a2 is None else np.asarray(a2, dtype=np.float64).reshape(-1)[::-1]
    scale = 1.0
    if pixel_size is not None:
        if pixel_unit not in ANGSTROM_PER:
            raise CellTableError(f"pixel_unit: {pixel_unit!r} unknown; use one of {sorted(set(ANGSTROM_PER) - {'A'})}.")
        if not (np.isfinite(pixel_size) and pixel_size > 0):
            raise CellTableError(f"pixel_size: {pixel_size!r} must be a positive number (the size of one position "
                                 f"unit in {pixel_unit}).")
        scale = float(pixel_size) * ANGSTROM_PER[pixel_unit]
        a_pos, b_pos = a_pos * scale, b_pos * scale
        a1 = None if a1 is None else np.asarray(a1, dtype=np.float64) * scale
        a2 = None if a2 is None else np.asarray(a2, dtype=np.float64) * scale
        length_units = "angstrom"
    if not (np.isfinite(max_offset) and 0 < max_offset < 0.5):
        raise CellTableError(
            f"max_offset: {max_offset!r} must lie in (0, 0.5) (a fraction of the shorter lattice "
            "spacing; at 0.5 or more one B column could belong to two cells). The default is 0.35."
        )
    if (a1 is None) != (a2 is None):
        missing = "a2" if a2 is None else "a1"
        raise CellTableError(f"{missing}: pass both a1 and a2, or neither (then both are estimated).")
    if a1 is None:
        v1, v2 = estimate_lattice_vectors(a_pos)
    else:
        v1, v2 = _vector(a1, "a1"), _vector(a2, "a2")
        sine = abs(_cross(v1, v2)) / (np.hypot(*v1) * np.hypot(*v2))
        if sine < np.sin(np.deg2rad(10.0)):
            raise CellTableError(
                f"a2: {v2.tolist()} is (nearly) parallel to a1 {v1.tolist()}; the two lattice "
                "vectors must span the plane. Pass the second edge direction of the cell."
            )

    idx, on_lattice, origin, v1, v2 = _fit_lattice(a_pos, v1, v2)
    b_frac, found = _b_fraction(b_pos, origin, v1, v2)
    used = found if projection == "auto" else projection
    if used == "unknown" and not b_pos.shape[0]:
        used = "001"  # no B column at all: the error below says so
    if used == "unknown":
        raise CellTableError(f"{source}: no complete unit cell found: {_projection_text(b_frac, found)}. Pass "
                             "projection='001' or '110' to force one, or check the B positions.")
    step = 1
    if used == "110":
        step = 2  # the cell spans two A rows; the B column sits on the middle edge
        # the B edges must run along a1: swap the roles when they run along a2
        if abs(np.mod(b_frac[0] + 0.5, 1.0) - 0.5) < abs(np.mod(b_frac[1] + 0.5, 1.0) - 0.5):
            v1, v2 = v2, v1
            idx = idx[:, ::-1]

    if on_lattice.sum() < 4:
        raise CellTableError(
            f"a_xy: only {int(on_lattice.sum())} of {a_pos.shape[0]} A columns lie on the lattice "
            f"a1={np.round(v1, 4).tolist()}, a2={np.round(v2, 4).tolist()}; no complete cell can be "
            "formed. Check that a_xy holds the A-site columns only, or pass a1 and a2 explicitly."
        )
    # One column per lattice site; a site claimed twice is dropped whole.
    site = idx[on_lattice]
    members = np.flatnonzero(on_lattice)
    lo = site.min(axis=0)
    shifted = site - lo
    width = int(shifted[:, 1].max()) + 1 + step  # key of (i, j+step) never wraps into column i+1
    keys = shifted[:, 0] * width + shifted[:, 1]
    uniq, first, counts = np.unique(keys, return_index=True, return_counts=True)
    single = counts == 1
    n_duplicate = int(counts[~single].sum())
    site_key = uniq[single]  # sorted
    site_atom = members[first[single]]
    site_ij = shifted[first[single]]

    def lookup(di, dj):
        k = (site_ij[:, 0] + di) * width + (site_ij[:, 1] + dj)
        pos = np.minimum(np.searchsorted(site_key, k), site_key.size - 1)
        found = site_key[pos] == k
        return np.where(found, site_atom[pos], -1)

    c00 = site_atom
    c10, c01, c11 = lookup(1, 0), lookup(0, step), lookup(1, step)
    complete = (c10 >= 0) & (c01 >= 0) & (c11 >= 0)
    if step == 2:  # [110]: the middle edge's two A columns too
        m0, m1 = lookup(0, 1), lookup(1, 1)
        complete &= (m0 >= 0) & (m1 >= 0)
        m0, m1 = m0[complete], m1[complete]
    c00, c10, c01, c11 = c00[complete], c10[complete], c01[complete], c11[complete]
    cell_ij = site_ij[complete]
    n_complete = int(complete.sum())

    p00, p10, p01, p11 = a_pos[c00], a_pos[c10], a_pos[c01], a_pos[c11]
    # the point the B column is displaced from: the corner centroid ([001]), the middle edge's
    # mid-point ([110])
    centroid = (p00 + p10 + p01 + p11) / 4.0 if step == 1 else (a_pos[m0] + a_pos[m1]) / 2.0

    # B assignment: exactly one B column within the radius of the corner centroid.
    radius = max_offset * min(np.hypot(*v1), np.hypot(*v2))
    if b_pos.shape[0] and n_complete:
        dist, nb = cKDTree(b_pos).query(centroid, k=2, distance_upper_bound=radius)
        n_near = np.isfinite(dist).sum(axis=1)
    else:
        nb = np.zeros((n_complete, 2), dtype=np.int64)
        n_near = np.zeros(n_complete, dtype=np.int64)
    ok = n_near == 1
    n_no_b = int((n_near == 0).sum())
    n_two_b = int((n_near >= 2).sum())
    n_cells = int(ok.sum())
    if n_cells == 0:
        raise CellTableError(
            f"{source}: no complete unit cell found ({a_pos.shape[0]} A columns, {int(on_lattice.sum())} "
            f"on the lattice a1={np.round(v1, 4).tolist()}, a2={np.round(v2, 4).tolist()}; "
            f"{n_complete} complete A cells, {n_no_b} with no B column within {radius:.4g} of where "
            f"projection {used} puts it, {n_two_b} with several); {_projection_text(b_frac, found)}. Check that "
            "a_xy/b_xy hold positions in the same units, frame and order, and adjust projection, max_offset or "
            "pass a1, a2."
        )

    p00, p10, p01, p11, centroid = p00[ok], p10[ok], p01[ok], p11[ok], centroid[ok]
    b_idx = nb[ok, 0]
    cell_ij = cell_ij[ok]

    def norm(v):
        return np.hypot(v[:, 0], v[:, 1])

    a = 0.5 * (norm(p10 - p00) + norm(p11 - p01))
    b = 0.5 * (norm(p01 - p00) + norm(p11 - p10))
    e1 = 0.5 * ((p10 - p00) + (p11 - p01))
    e2 = 0.5 * ((p01 - p00) + (p11 - p10))
    # atan2(|cross|, dot) is accurate near 0 and 180 deg where arccos of the cosine is not.
    alpha = np.arctan2(np.abs(_cross(e1, e2)), np.einsum("ij,ij->i", e1, e2))
    if angle_units == "deg":
        alpha = np.rad2deg(alpha)
    ring = np.stack([p00, p10, p11, p01], axis=1)  # corners in order around the quadrilateral
    vol = 0.5 * np.abs(_cross(ring, np.roll(ring, -1, axis=1)).sum(axis=1))
    offset = b_pos[b_idx] - centroid

    col = cell_ij[:, 0] - cell_ij[:, 0].min()
    row = cell_ij[:, 1] - cell_ij[:, 1].min()
    order = np.lexsort((col, row))

    columns = {
        "I14": (a_int[c00] + a_int[c10] + a_int[c01] + a_int[c11])[ok],
        "I5": b_int[b_idx],
        "a": a,
        "b": b,
        "alpha": alpha,
        "Vol": vol,
        "Px": offset[:, 0],
        "Py": offset[:, 1],
    }
    units = {name: length_units for name in ("a", "b", "Px", "Py")}
    units["Vol"] = f"{length_units}^2"
    units["alpha"] = angle_units
    ds = make_cells(
        {k: v[order] for k, v in columns.items()},
        image=image,
        sm_fraction=sm_fraction,
        row=row[order],
        col=col[order],
        x=centroid[order, 0],
        y=centroid[order, 1],
        units=units,
        source=source,
    )
    if pixel_size is not None:
        ds.attrs.update(pixel_size=float(pixel_size), pixel_unit=str(pixel_unit))

    n_off = int((~on_lattice).sum())
    dist_ok = np.hypot(offset[:, 0], offset[:, 1])
    pile_up = float((dist_ok > PILE_UP_RADIUS * radius).mean())
    report = {
        "projection": used,
        "b_fraction": [round(float(x), 4) for x in b_frac],
        "length_scale": scale,
        "a1": v1.tolist(),
        "a2": v2.tolist(),
        "origin": np.asarray(origin).tolist(),
        "n_a_columns": int(a_pos.shape[0]),
        "n_b_columns": int(b_pos.shape[0]),
        "a_off_lattice": n_off,
        "a_duplicate_site": n_duplicate,
        "cells_complete_a": n_complete,
        "cells_without_b": n_no_b,
        "cells_several_b": n_two_b,
        "b_unused": int(b_pos.shape[0] - n_cells),
    }
    ds.attrs["atoms"] = json.dumps(report)
    problems = {
        "A columns off the lattice (> 0.25 spacing from a site)": n_off,
        "A columns sharing a lattice site": n_duplicate,
        f"complete A squares without a B column within {radius:.4g}": n_no_b,
        "complete A squares with several B columns": n_two_b,
    }
    problems = {k: v for k, v in problems.items() if v}
    if pile_up > PILE_UP_SHARE:
        # offsets spread evenly up to the radius are what a B column elsewhere (e.g. a [110] image
        # read as [001] with max_offset near 0.5) gives: Py of half a lattice spacing, silently
        warnings.warn(
            f"{source} (image {str(image)!r}): {pile_up:.0%} of the {n_cells} accepted B columns lie beyond "
            f"{PILE_UP_RADIUS:g} of the acceptance radius {radius:.4g} (projection {used}): the offsets pile up at the "
            f"radius, so they are probably not displacements from this site; {_projection_text(b_frac, found)}. "
            "Check the projection and lower max_offset.",
            AtomIndexingWarning,
            stacklevel=2,
        )
    if problems:
        warnings.warn(
            f"{source} (image {str(image)!r}): {n_cells} cells built; ignored "
            + "; ".join(f"{v} {k}" for k, v in problems.items())
            + ". Counts are in attrs['atoms'].",
            AtomIndexingWarning,
            stacklevel=2,
        )
    return validate(ds, source)
