"""Public figures: each ``plot_*`` function takes data (a cell table, a summary table) and ``ax=None``
and returns the matplotlib ``Figure``; its ``*_data`` twin returns what is drawn, as plain data.

The report (:mod:`causalcrystal.report`) draws with these functions. Text a user chose (image,
descriptor or file names) is drawn literally (``$`` never starts matplotlib mathtext), and no
figure uses LaTeX, whatever the user's matplotlibrc says.

* :func:`graph_data` / :func:`plot_graph`: an image's causal graph averaged over its tiles, drawn
  in layers by causal order (causes above their effects), arrow width ~ |mean coefficient|.
* :func:`polarisation_data` / :func:`plot_polarisation`: every cell's (Px, Py) as an arrow over the
  micrograph (when the cell table knows it) or over the cell positions.
* :func:`prior_posterior_data` / :func:`plot_prior_posterior`: prior against posterior of the
  concentration model's ``y0``, ``eps0``, ``y_star`` (the MPB position and its width, Eqs. 12-16).
* :func:`rank_data` / :func:`plot_rank`: rank plots of one tile's estimated coefficients (the
  chains of a converged tile are indistinguishable).
* :func:`total_effect_map_data` / :func:`plot_total_effect_map`: one total effect ``effect <- cause``
  (all causal paths, ``(I - B)^-1``) in every tile, as a map per image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from causalcrystal.cells import DESCRIPTORS

__all__ = ["graph_data", "graph_layers", "literal", "plot_graph", "plot_polarisation", "plot_prior_posterior",
           "plot_rank", "plot_total_effect_map", "polarisation_data", "prior_posterior_data", "rank_data",
           "total_effect_map_data"]

#: Edges whose mean inclusion probability over the image's tiles reaches this are drawn.
INCLUSION_MIN = 0.5


def literal(text) -> str:
    """``text`` chosen by a user as a matplotlib string drawn literally: every ``$`` escaped as
    ``\\$`` so mathtext never parses it (``_``, ``^``, ``\\`` and braces are special only between
    ``$``); numpy strings become plain ``str``."""
    return str(text).replace("$", r"\$")


def no_tex(fig) -> None:
    """Draw every text of ``fig`` without LaTeX even under ``text.usetex: True`` in a user's
    matplotlibrc (which would hand ``_``, ``%`` or ``^`` of a label to LaTeX)."""
    from matplotlib.text import Text

    for t in fig.findobj(Text):
        t.set_usetex(False)


def new_figure(width: float, height: float, layout: str | None = "constrained", dpi: float | None = None):
    """A matplotlib ``Figure`` with its own Agg canvas, not registered with pyplot (nothing leaks
    in scripts; notebooks display it when returned)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _axes(ax, width: float = 4.6, height: float = 4.6):
    """``(figure, ax)``: the given axes' figure, or one axes on a :func:`new_figure`."""
    if ax is not None:
        return ax.figure, ax
    fig = new_figure(width, height)
    return fig, fig.add_subplot()


# ---------------------------------------------------------------------------------------------
# causal graphs


def graph_data(summary, image: str, n_tiles: int | None = None, min_inclusion: float = INCLUSION_MIN):
    """The edges of one image's causal graph, averaged over its tiles.

    ``summary``: the run's ``summary.csv`` (pandas; one row per tile and allowed edge). A tile whose
    causal order does not allow an edge counts as coefficient 0 and inclusion 0, so the averages
    are over the image's ``n_tiles`` tiles (default: the tiles of the image in ``summary``).
    Returns a DataFrame with ``effect``, ``cause``, ``mean`` (mean coefficient, the posterior's
    units), ``inclusion`` (mean inclusion probability), ``allowed`` (tiles allowing the edge) and
    ``n_tiles``, for the edges with ``inclusion >= min_inclusion``, strongest first.
    """
    s = summary[summary["image"].astype(str) == str(image)]
    n = int(n_tiles if n_tiles is not None else s["tile"].nunique())
    agg = s.groupby(["effect", "cause"]).agg(mean_sum=("mean", "sum"), incl_sum=("inclusion_prob", "sum"),
                                             allowed=("tile", "nunique")).reset_index()
    agg["n_tiles"] = n
    agg["mean"] = agg["mean_sum"] / max(n, 1)
    agg["inclusion"] = agg["incl_sum"] / max(n, 1)
    out = agg[agg["inclusion"] >= min_inclusion][["effect", "cause", "mean", "inclusion", "allowed", "n_tiles"]]
    return out.sort_values("inclusion", ascending=False).reset_index(drop=True)


def graph_layers(edges, nodes=DESCRIPTORS, order=None) -> dict:
    """Layer of each node for drawing a causal graph top-down: with ``order`` (a causal order, the
    names or descriptor indices, causes first), a node's layer is its longest path from a root
    among the drawn edges that agree with that order; without it, the topological generations of
    the graph (of its strongly connected components, should averaged tiles disagree on a
    direction). Nodes without edges go to the last layer."""
    import networkx as nx

    G = nx.DiGraph()
    G.add_nodes_from(nodes)
    G.add_edges_from((str(c), str(e)) for e, c in zip(edges["effect"], edges["cause"]))
    if order is not None:
        rank = {str(DESCRIPTORS[v]) if isinstance(v, (int, np.integer)) else str(v): k for k, v in enumerate(order)}
        G.remove_edges_from([(u, v) for u, v in list(G.edges) if rank.get(u, 0) >= rank.get(v, 0)])
    C = nx.condensation(G)
    layer = {}
    for depth, gen in enumerate(nx.topological_generations(C)):
        for comp in gen:
            for node in C.nodes[comp]["members"]:
                layer[node] = depth
    isolated = [n for n in nodes if G.degree(n) == 0]
    last = max([layer[n] for n in nodes if n not in isolated], default=-1) + 1
    return {n: (last if n in isolated else layer[n]) for n in nodes}


def plot_graph(summary, image: str, ax=None, *, n_tiles: int | None = None, order=None,
               min_inclusion: float = INCLUSION_MIN, vmax: float | None = None, title: str | None = None):
    """Draw one image's tile-averaged causal graph (:func:`graph_data`) in layers by causal order
    (:func:`graph_layers`; ``order``: e.g. the image's LiNGAM order), arrow cause -> effect, width
    ~ |mean| (scaled to ``vmax``, default the largest drawn), red positive, blue negative, labels
    ``mean (inclusion)``. Returns the figure."""
    import networkx as nx

    fig, ax = _axes(ax)
    e = graph_data(summary, image, n_tiles, min_inclusion)
    layers = graph_layers(e, DESCRIPTORS, order)
    G = nx.DiGraph()
    for n in DESCRIPTORS:
        G.add_node(n, layer=layers[n])
    for _, r in e.iterrows():
        G.add_edge(r["cause"], r["effect"], mean=r["mean"], p=r["inclusion"])
    pos = nx.multipartite_layout(G, subset_key="layer", align="horizontal", scale=1.0)
    pos = {n: (x, -y) for n, (x, y) in pos.items()}  # layer 0 (the causes) on top
    top = max(abs(e["mean"]).max() if len(e) else 0.0, 1e-12) if vmax is None else vmax
    edgelist = list(G.edges())
    nx.draw_networkx_nodes(G, pos, ax=ax, node_size=1000, node_color="#f0f0f0", edgecolors="#444444")
    nx.draw_networkx_labels(G, pos, labels={n: literal(n) for n in G.nodes}, ax=ax, font_size=9)
    if edgelist:
        nx.draw_networkx_edges(G, pos, ax=ax, edgelist=edgelist,
                               width=[0.8 + 6 * abs(G.edges[u, v]["mean"]) / top for u, v in edgelist],
                               edge_color=["#b2182b" if G.edges[u, v]["mean"] > 0 else "#2166ac" for u, v in edgelist],
                               arrows=True, arrowsize=14, node_size=1000, alpha=0.85, connectionstyle="arc3,rad=0.08")
        nx.draw_networkx_edge_labels(G, pos, ax=ax, font_size=7, label_pos=0.4, rotate=False,
                                     edge_labels={(u, v): f"{G.edges[u, v]['mean']:+.2f} ({G.edges[u, v]['p']:.2f})"
                                                  for u, v in edgelist},
                                     bbox={"boxstyle": "round,pad=0.1", "fc": "white", "ec": "none", "alpha": 0.8})
    ax.set_title(title if title is not None else f"{literal(image)}: {len(edgelist)} edges", fontsize=9)
    ax.text(0.5, -0.02, "arrow cause -> effect; label: mean coefficient (inclusion); red +, blue -; "
            "width ~ |mean|", transform=ax.transAxes, ha="center", va="top", fontsize=6.5, color="0.35")
    ax.margins(0.12)
    ax.set_axis_off()
    no_tex(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# polarisation


def _background(cells, image: str):
    """(image array, pixels per cell-coordinate unit) of an image's micrograph, or (None, 1)."""
    from causalcrystal.io import load_haadf

    try:
        if image in json.loads(cells.attrs.get("haadf", "{}") or "{}"):
            return np.asarray(load_haadf(cells, image), dtype=float), 1.0  # Sm-BFO x, y are in pixels
        cols = json.loads(cells.attrs.get("columns", "{}") or "{}")
        if cols.get("source") and Path(cols["source"]).is_file():
            from causalcrystal.logs import image_library_warnings

            with image_library_warnings():  # HyperSpy's import-time deprecation notices
                from causalcrystal.columns import load_image, need_atomap

                _, hs = need_atomap()
                data = load_image(cols["source"], hs)[0].data
            scale = float(json.loads(cells.attrs.get("atoms", "{}")).get("length_scale", 1.0)) or 1.0
            return data, 1.0 / scale  # descriptors in angstrom, image in pixels
    except (ImportError, ValueError, OSError):
        pass
    return None, 1.0


def polarisation_data(cells, image: str) -> dict:
    """The arrows of one image of a cell table: ``x``, ``y`` (cell positions, in the micrograph's
    pixels when it is known) and ``Px``, ``Py`` (same units as x, y), the background ``image``
    (2-D array or ``None``) and the ``units``' name."""
    m = cells["image"].values.astype(str) == str(image)
    bg, per = _background(cells, image)
    x = cells["x"].values[m] if "x" in cells else cells["col"].values[m].astype(float)
    y = cells["y"].values[m] if "y" in cells else cells["row"].values[m].astype(float)
    unit = "px" if bg is not None else str(cells["a"].attrs.get("units", ""))
    return {"x": x * per, "y": y * per, "Px": cells["Px"].values[m] * per, "Py": cells["Py"].values[m] * per,
            "image": bg, "units": unit}


def plot_polarisation(cells, image: str, ax=None, *, title: str | None = None, colorbar: bool = True):
    """Every cell's B-site offset (Px, Py) of one image as an arrow coloured by its direction
    (degrees, hsv), over the micrograph when the cell table knows it (image convention: y down).
    Returns the figure."""
    fig, ax = _axes(ax, 4.6, 4.2)
    d = polarisation_data(cells, image)
    if d["image"] is not None:
        ax.imshow(d["image"], cmap="gray", origin="upper")
    else:
        ax.invert_yaxis()  # image convention: y (rows) grows downwards
    angle = np.degrees(np.arctan2(d["Py"], d["Px"]))
    q = ax.quiver(d["x"], d["y"], d["Px"], d["Py"], angle, cmap="hsv", clim=(-180, 180), angles="xy",
                  pivot="middle")
    ax.set_title(title if title is not None else literal(image), fontsize=9)
    ax.set_aspect("equal")
    ax.set_xlabel(f"x ({literal(d['units'])})", fontsize=8)
    ax.set_ylabel(f"y ({literal(d['units'])}, down)", fontsize=8)
    ax.tick_params(labelsize=7)
    if colorbar:
        cb = fig.colorbar(q, ax=ax, shrink=0.7)
        cb.set_label("direction of (Px, Py) (deg)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    no_tex(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# the concentration model: prior against posterior


#: What the concentration model's shared parameters are measured in (paper Eqs. 12-16).
_UNITS = {"y0": "Sm fraction (MPB position)", "y_star": "Sm fraction (y0 + 1/eps0)", "eps0": "1 / Sm fraction"}


def prior_posterior_data(idata, var_names=("y0", "eps0", "y_star"), bins: int = 40) -> dict:
    """Per variable: ``{"edges", "prior", "posterior"}``, histogram densities of the prior and the
    posterior draws on common bin edges (the range of both). ``idata``: ``concentration.nc`` (with
    its ``prior`` group, drawn from the PyMC model). Raises ``KeyError`` naming a missing group."""
    for group in ("prior", "posterior"):
        if group not in idata.groups():
            raise KeyError(f"the InferenceData has no {group!r} group (concentration.nc files from before the prior "
                           "group was stored: re-run `causalcrystal concentration RUN --overwrite`)")
    out = {}
    for name in var_names:
        pr, po = idata.prior[name].values.ravel(), idata.posterior[name].values.ravel()
        lo, hi = np.nanquantile(np.concatenate([pr, po]), [0.001, 0.999])
        edges = np.linspace(lo, hi, bins + 1)
        out[name] = {"edges": edges, "prior": np.histogram(pr, edges, density=True)[0],
                     "posterior": np.histogram(po, edges, density=True)[0]}
    return out


def plot_prior_posterior(idata, var_names=("y0", "eps0", "y_star"), axes=None):
    """Prior (grey) against posterior (blue) densities of the concentration model's shared
    parameters, one panel each: how much the series taught the model about the MPB position
    ``y0``, its width ``1/eps0`` and ``y_star = y0 + 1/eps0`` (paper Eqs. 12-16). Returns the figure."""
    data = prior_posterior_data(idata, var_names)
    if axes is None:
        fig = new_figure(3.2 * len(var_names), 2.8)
        axes = fig.subplots(1, len(var_names), squeeze=False).ravel()
    else:
        axes = np.atleast_1d(axes).ravel()
        fig = axes[0].figure
    for ax, name in zip(axes, var_names):
        d = data[name]
        mid = 0.5 * (d["edges"][1:] + d["edges"][:-1])
        ax.fill_between(mid, d["prior"], step="mid", color="0.8", label="prior")
        ax.step(mid, d["posterior"], where="mid", color="#2166ac", label="posterior")
        ax.set_title(literal(name), fontsize=9)
        ax.set_xlabel(_UNITS.get(name, ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_yticks([])
    axes[0].legend(fontsize=7)
    no_tex(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# convergence of one tile


def rank_data(run, tile: int, var_name: str = "B"):
    """One tile's draws of the estimated coefficients (``constant_data.allowed``) as an
    ``xarray.DataArray`` (chain, draw, edge) with edge labels ``"effect<-cause"``; ``run``: a
    :class:`causalcrystal.runs.Run` or a run folder."""
    from causalcrystal.runs import as_run, allowed_mask

    r = as_run(run)
    mask = allowed_mask(r).sel(tile=tile)
    v = r.posterior.posterior[var_name].sel(tile=tile).stack(edge=("effect", "cause"))
    keep = mask.stack(edge=("effect", "cause")).values
    v = v.isel(edge=np.flatnonzero(keep))
    labels = [f"{e}<-{c}" for e, c in v["edge"].values]
    v = v.drop_vars([c for c in v.coords if c not in ("chain", "draw")]).assign_coords(edge=labels)
    return v


def plot_rank(run, tile: int, var_name: str = "B", max_edges: int = 12):
    """Rank plots (:func:`arviz.plot_rank`) of one tile's estimated coefficients (at most
    ``max_edges``, the largest |mean| first): flat bars per chain when the chains agree. A tall bar
    in the same place in *every* chain is not a mixing problem: the spike-and-slab prior makes a
    share of the draws exactly 0 (tied ranks); a chain whose bars differ from the others' is.
    Returns the figure."""
    import arviz as az

    v = rank_data(run, tile, var_name)
    top = np.argsort(-np.abs(v.mean(("chain", "draw")).values))[:max_edges]
    v = v.isel(edge=top)
    ncol = min(4, v.sizes["edge"])
    nrow = -(-v.sizes["edge"] // ncol)
    fig = new_figure(2.6 * ncol, 2.0 * nrow)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    az.plot_rank(v.to_dataset(name=var_name), var_names=[var_name], ax=axes.ravel()[: v.sizes["edge"]])
    for ax in axes.ravel()[v.sizes["edge"]:]:
        ax.set_axis_off()
    for ax in axes.ravel():
        ax.set_title(literal(ax.get_title().replace("\n", " ")), fontsize=8)
        ax.xaxis.label.set_fontsize(7)
        ax.yaxis.label.set_fontsize(7)
        ax.tick_params(labelsize=7)
    fig.suptitle(f"tile {tile}: rank plots of {var_name} (estimated edges, largest |mean| first)", fontsize=9)
    no_tex(fig)
    return fig


# ---------------------------------------------------------------------------------------------
# one total effect over all tiles


def total_effect_map_data(run, effect: str, cause: str, prob: float = 0.9):
    """Per tile, the posterior of the total effect of ``cause`` on ``effect`` (the sum over all
    causal paths: ``T = (I - B)^-1``, :func:`causalcrystal.interventions.total_effects`; in the
    units of ``B``, see ``posterior.attrs['units']``). ``run``: a run or its folder. Returns a
    DataFrame with ``tile``, ``image``, ``row0``, ``col0``, ``size``, ``mean``, the central ``prob``
    interval (``eti_5%``, ``eti_95%`` at 0.9: :mod:`causalcrystal.intervals`) and ``p_nonzero``
    (share of draws with a non-zero effect)."""
    import pandas as pd

    from causalcrystal.interventions import total_effects
    from causalcrystal.runs import as_run

    i, j = DESCRIPTORS.index(effect), DESCRIPTORS.index(cause)
    lo, hi = _eti(prob)
    post = as_run(run).posterior.posterior
    rows = []
    for t in post["tile"].values:  # one tile's draws at a time: memory flat in the number of tiles
        T = total_effects(post["B"].sel(tile=t).values.astype(np.float64))[..., i, j].ravel()
        q = np.quantile(T, [(1 - prob) / 2, (1 + prob) / 2])
        rows.append({"tile": int(t), **{c: post[c].sel(tile=t).values.item() for c in ("image", "row0", "col0", "size")
                                       if c in post.coords},
                     "mean": float(T.mean()), lo: float(q[0]), hi: float(q[1]), "p_nonzero": float((T != 0).mean())})
    out = pd.DataFrame(rows)
    out["image"] = out["image"].astype(str)
    return out


def plot_total_effect_map(run, effect: str, cause: str, axes=None, prob: float = 0.9):
    """Map of one total effect (:func:`total_effect_map_data`), one panel per image: each tile a
    square at its (col0, row0) of side ``size`` coloured by the posterior mean (one diverging scale
    for all images; hatched where the 90 % interval spans 0). Overlapping tiles (stride < size) are
    drawn in tile order, a later one over the earlier. Returns the figure."""
    d = total_effect_map_data(run, effect, cause, prob)
    images = list(dict.fromkeys(d["image"]))
    fig, axes = _image_axes(len(images), axes)
    import matplotlib as mpl

    vmax = float(np.abs(d["mean"]).max()) or 1.0
    norm = mpl.colors.Normalize(-vmax, vmax)
    cmap = mpl.colormaps["RdBu_r"]
    lo, hi = _eti(prob)
    _tile_squares(axes, images, d, "mean", norm, cmap, hatch=(d[lo] <= 0) & (0 <= d[hi]))
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(images)]), shrink=0.8)
    cb.set_label(f"total effect {literal(effect)} <- {literal(cause)} (mean)", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    no_tex(fig)
    return fig


def _tile_squares(axes, images, d, column: str, norm, cmap, hatch=None) -> None:
    """Per image (one axes each), every tile of ``d`` (``image``, ``row0``, ``col0``, ``size``)
    as a square coloured by ``d[column]`` (grey where NaN), hatched where ``hatch``; in tile order,
    a later tile over an earlier one where they overlap; rows grow downwards, as in the image."""
    from matplotlib.patches import Rectangle

    hatch = np.zeros(len(d), dtype=bool) if hatch is None else np.asarray(hatch, dtype=bool)
    for ax, img in zip(axes, images):
        m = (d["image"] == img).to_numpy()
        sub = d[m]
        size = sub["size"].to_numpy() if "size" in sub else np.ones(len(sub))
        for (_, r), s, h in zip(sub.iterrows(), size, hatch[m]):
            v = r[column]
            face = "lightgrey" if not np.isfinite(v) else cmap(norm(v))
            ax.add_patch(Rectangle((r["col0"], r["row0"]), s, s, facecolor=face, edgecolor="white", linewidth=0.5,
                                   hatch="///" if h else None, alpha=0.9))
        ax.set_xlim(sub["col0"].min(), (sub["col0"] + size).max())
        ax.set_ylim((sub["row0"] + size).max(), sub["row0"].min())
        ax.set_aspect("equal")
        ax.set_title(literal(img), fontsize=9)
        ax.set_xlabel("col (cells)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("row (cells)", fontsize=8)


def _image_axes(n: int, axes):
    if axes is None:
        fig = new_figure(3.4 * n + 0.8, 3.2)
        return fig, fig.subplots(1, n, squeeze=False).ravel()
    axes = np.atleast_1d(axes).ravel()
    return axes[0].figure, axes


#: Image columns per row of :func:`plot_tile_maps` before it wraps.
MAX_MAP_COLS = 6


def tile_table(run):
    """A run's tiles as a DataFrame indexed by ``tile``: ``image``, ``row0``, ``col0``, ``size``,
    ``n_cells`` and ``sm_fraction`` where stored (the coordinates of ``posterior.nc``; no draws
    read). ``run``: a run or its folder."""
    from causalcrystal.runs import as_run

    return tile_frame(as_run(run).posterior.posterior)


def tile_frame(post):
    """:func:`tile_table` from a ``posterior`` group (an ``xarray.Dataset``, opened lazily: only its
    tile coordinates are read)."""
    import pandas as pd

    cols = {name: post[name].values for name in ("image", "row0", "col0", "size", "n_cells", "sm_fraction")
            if name in post.coords}
    tiles = pd.DataFrame(cols, index=pd.Index(post["tile"].values, name="tile"))
    tiles["image"] = tiles["image"].astype(str)
    return tiles


def image_frame(cells, image: str):
    """The affine map from an image's (row, col) grid to its own (x, y) coordinates, least squares
    over its cells: ``(coef (3, 2), unit)`` with ``[1, row, col] @ coef = [x, y]`` (unit: ``Px``'s
    length unit), or ``None`` (no cells, no ``x`` / ``y``, or a degenerate grid)."""
    if cells is None or "x" not in cells or "y" not in cells:
        return None
    m = cells["image"].values.astype(str) == str(image)
    r, c = cells["row"].values[m].astype(float), cells["col"].values[m].astype(float)
    xy = np.column_stack([cells["x"].values[m], cells["y"].values[m]]).astype(float)
    ok = np.isfinite(xy).all(1)
    design = np.column_stack([np.ones(ok.sum()), r[ok], c[ok]])
    if ok.sum() < 3 or np.linalg.matrix_rank(design) < 3:
        return None
    coef = np.linalg.lstsq(design, xy[ok], rcond=None)[0]
    return coef, str(cells["Px"].attrs.get("units", "")) if "Px" in cells else ""


def tile_map_data(tiles, values, image: str, frame=None) -> dict:
    """One image's tiles as a (possibly irregular) grid of patches, each tile owning the region
    closest to its centre (overlapping tiles, stride < size, then tile the image without gaps).

    ``tiles``: :func:`tile_table`; ``values``: a pandas Series indexed by tile (NaN or missing: no
    value); ``frame``: :func:`image_frame` or None. Returns ``row_edges``, ``col_edges`` (unit
    cells), ``Z`` (rows x cols, NaN where no value) and, with a frame, ``X``, ``Y``: the patch
    corners in the image's own coordinates (``unit``)."""
    t = tiles[tiles["image"] == image]
    size = t["size"].to_numpy(float)
    rc = t["row0"].to_numpy(float) + size / 2
    cc = t["col0"].to_numpy(float) + size / 2
    ur, uc = np.unique(rc), np.unique(cc)

    def edges(centres, lo, hi):
        if centres.size == 1:
            return np.array([lo, hi])
        mid = (centres[1:] + centres[:-1]) / 2
        return np.concatenate([[lo], mid, [hi]])

    re = edges(ur, t["row0"].min(), (t["row0"] + size).max())
    ce = edges(uc, t["col0"].min(), (t["col0"] + size).max())
    Z = np.full((ur.size, uc.size), np.nan)
    Z[np.searchsorted(ur, rc), np.searchsorted(uc, cc)] = values.reindex(t.index).to_numpy(float)
    out = {"row_edges": re, "col_edges": ce, "Z": Z}
    if frame is not None:
        C, R = np.meshgrid(ce - 0.5, re - 0.5)
        corners = np.stack([np.ones_like(R), R, C], axis=-1) @ frame[0]
        out.update(X=corners[..., 0], Y=corners[..., 1], unit=frame[1])
    return out


def plot_tile_maps(run, maps: list[dict], images=None, *, tiles=None, cells=None, titles=None, dpi=None):
    """Maps over every image of a run: one row of panels per entry of ``maps`` (dicts with ``label``,
    ``values``: a pandas Series indexed by tile, ``cmap``, ``vmin``, ``vmax``, optional ``title``
    for the colour bar), one column per image (wrapped after :data:`MAX_MAP_COLS`), one colour bar
    per row; grey where a tile has no value (e.g. an edge its orders do not allow). Axes in the
    image's own x, y (:func:`image_frame`, from the run's cells), else in unit cells; y / row 0 at
    the top, as in the image. ``run``: a run or its folder (``tiles`` / ``cells`` / ``titles``, an
    image -> title dict, may be given instead, as the report does). Returns the figure."""
    if tiles is None:
        tiles = tile_table(run)
    if cells is None and run is not None:
        from causalcrystal.runs import as_run

        cells = as_run(run).cells
    if images is None:
        images = list(dict.fromkeys(tiles["image"]))
    titles = titles or {}
    frames = {img: image_frame(cells, img) for img in images}
    ncol = max(1, min(len(images), MAX_MAP_COLS))
    blocks = int(np.ceil(len(images) / ncol))
    nrow = len(maps) * blocks
    # Fixed layout in inches (constrained layout cost ~0.1 s per panel): panels, then one colour bar
    # per row on the right.
    t = tiles[tiles["image"].isin(images)]
    size = t["size"]
    aspect = float(np.clip((t["row0"] + size).max() / max((t["col0"] + size).max(), 1), 0.4, 2.5)) if len(t) else 1
    pw = 1.8
    ph = pw * aspect
    left, gx, gy, top, bottom, cbw, right = 0.75, 0.2, 0.22, 0.3, 0.5, 0.12, 0.85
    W = left + ncol * pw + (ncol - 1) * gx + 0.15 + cbw + right
    H = top + nrow * ph + (nrow - 1) * gy + bottom
    fig = new_figure(W, H, layout=None, dpi=dpi)
    for b in range(blocks):
        for r, spec in enumerate(maps):
            i = b * len(maps) + r
            y = H - top - (i + 1) * ph - i * gy
            mappable = None
            for j in range(ncol):
                k = b * ncol + j
                if k >= len(images):
                    continue
                ax = fig.add_axes([(left + j * (pw + gx)) / W, y / H, pw / W, ph / H])
                img = images[k]
                d = tile_map_data(tiles, spec["values"], img, frames[img])
                ax.set_facecolor("#d9d9d9")
                kw = dict(cmap=spec["cmap"], vmin=spec["vmin"], vmax=spec["vmax"], shading="flat")
                if "X" in d:
                    # the image's own coordinates (x right, y down, in the cells' length unit), so
                    # a map lines up with the micrograph and the polarisation figure
                    mappable = ax.pcolormesh(d["X"], d["Y"], np.ma.masked_invalid(d["Z"]), **kw)
                    ax.set_xlim(d["X"].min(), d["X"].max())
                    ax.set_ylim(d["Y"].max(), d["Y"].min())  # y grows downwards, as in the image
                else:
                    ce, re = d["col_edges"], d["row_edges"]
                    mappable = ax.pcolormesh(ce, re, np.ma.masked_invalid(d["Z"]), **kw)
                    ax.set_xlim(ce[0], ce[-1])
                    ax.set_ylim(re[-1], re[0])  # row 0 at the top, as in the image
                ax.set_aspect("equal")
                ax.locator_params(nbins=4)
                ax.tick_params(labelsize=7, labelleft=(j == 0), labelbottom=(r == len(maps) - 1))
                if r == 0:
                    ax.set_title(titles.get(img, literal(img)), fontsize=9)
                if j == 0:
                    ax.set_ylabel(literal(spec["label"]), fontsize=10, fontweight="bold")
                if r == len(maps) - 1:
                    ax.set_xlabel(f"x ({literal(d['unit'])})" if "X" in d else "column (unit cells)", fontsize=8)
            if mappable is not None:
                cax = fig.add_axes([(left + ncol * pw + (ncol - 1) * gx + 0.15) / W, (y + 0.1 * ph) / H, cbw / W,
                                    0.8 * ph / H])
                cb = fig.colorbar(mappable, cax=cax)
                cb.ax.tick_params(labelsize=7)
                cb.set_label(literal(spec.get("title", spec["label"])), fontsize=8)
    no_tex(fig)
    return fig


def direction_map_data(run, pair: str = "a->b"):
    """Per tile, ``P(pair)`` from the run's comparison (``causalcrystal compare``, e.g.
    ``--directions-only``; ``directions.csv``): a DataFrame with ``tile``, ``image``, ``row0``,
    ``col0``, ``size`` (from the run's posterior), ``p_forward`` (NaN where no direction could be
    given), ``valid`` and ``reason`` (when the comparison recorded them). ``pair``: ``"a->b"`` as in ``directions.csv`` (``"a:b"``
    accepted). Raises ``ValueError`` naming the pairs present when ``pair`` is not one of them."""
    from causalcrystal.runs import as_run

    r = as_run(run)
    pair = pair.replace(":", "->")
    d = r.compare["directions"]
    d = d[d["level"].astype(str) == "tile"]
    pairs = sorted(set(d["pair"].astype(str)))
    if pair not in pairs:
        raise ValueError(f"no direction probabilities for {pair!r} in this run's comparison; pairs present: {pairs}")
    # (valid and reason: comparisons made before they were recorded lack them)
    d = d[d["pair"].astype(str) == pair][[c for c in ("tile", "p_forward", "valid", "reason") if c in d]]
    post = r.posterior.posterior
    coords = {c: post[c].values for c in ("image", "row0", "col0", "size") if c in post.coords}
    import pandas as pd

    tiles = pd.DataFrame({"tile": post["tile"].values.astype(int), **coords})
    tiles["image"] = tiles["image"].astype(str)
    out = tiles.merge(d.assign(tile=d["tile"].astype(int)), on="tile", how="inner")
    return out.sort_values("tile").reset_index(drop=True)


def plot_direction_map(run, pair: str = "a->b", axes=None):
    """Map of ``P(pair)`` per tile (:func:`direction_map_data`), one panel per image: red where the
    first of the pair causes the second, blue the reverse, white undecided, grey no direction
    (``reason`` in the data). Returns the figure."""
    import matplotlib as mpl

    d = direction_map_data(run, pair)
    images = list(dict.fromkeys(d["image"]))
    fig, axes = _image_axes(len(images), axes)
    norm, cmap = mpl.colors.Normalize(0.0, 1.0), mpl.colormaps["RdBu_r"]
    _tile_squares(axes, images, d, "p_forward", norm, cmap)
    cb = fig.colorbar(mpl.cm.ScalarMappable(norm=norm, cmap=cmap), ax=list(axes[:len(images)]), shrink=0.8)
    cb.set_label(f"P({literal(pair.replace(':', '->'))})", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    no_tex(fig)
    return fig


def coupling_vs_polarisation_data(run, effect: str, cause: str, prob: float = 0.9):
    """Per tile, the coupling ``B[effect, cause]`` (posterior mean and central ``prob`` interval, in
    the units of ``posterior.attrs['units']``) against the tile's polarisation: the mean over its
    cells of ``|P| = sqrt(Px^2 + Py^2)`` and of ``Px``, ``Py`` (the cell table's units). Returns a
    DataFrame with ``tile``, ``image``, ``sm_fraction`` (when the cells have it), ``mean``, the
    central interval (``eti_5%``, ``eti_95%`` at 0.9), ``wall_distance`` (the mean over the tile's
    cells of :func:`wall_distance`, unit cells), ``p_allowed`` (share of draws where the tile's orders allow the edge), ``P_abs``,
    ``Px``, ``Py``. One tile's draws at a time: memory flat in the number of tiles."""
    import pandas as pd

    from causalcrystal.runs import as_run

    i, j = DESCRIPTORS.index(effect), DESCRIPTORS.index(cause)
    lo, hi = _eti(prob)
    r = as_run(run)
    post = r.posterior.posterior
    allowed = r.posterior.constant_data["allowed"] if "constant_data" in r.posterior.groups() else None
    walls = {}  # per image: each cell's distance to the nearest domain wall
    rows = []
    for t in post["tile"].values:
        b = post["B"].sel(tile=t).values[..., i, j].astype(np.float64).ravel()
        q = np.quantile(b, [(1 - prob) / 2, (1 + prob) / 2])
        c = r.tile_cells(int(t))
        px, py = c["Px"].values, c["Py"].values
        row = {"tile": int(t), "image": str(post["image"].sel(tile=t).values), "mean": float(b.mean()),
               lo: float(q[0]), hi: float(q[1]), "P_abs": float(np.hypot(px, py).mean()),
               "Px": float(px.mean()), "Py": float(py.mean())}
        img = row["image"]
        if img not in walls:
            walls[img] = wall_distance(r.cells, img)
        dist = walls[img]
        row["wall_distance"] = float(dist["values"][c["row"].values.astype(int) - dist["row0"],
                                                    c["col"].values.astype(int) - dist["col0"]].mean())
        if "sm_fraction" in c:
            row["sm_fraction"] = float(c["sm_fraction"].values.mean())
        if allowed is not None:
            row["p_allowed"] = float(allowed.sel(tile=t).values[i, j])
        rows.append(row)
    return pd.DataFrame(rows)


def plot_coupling_vs_polarisation(run, effect: str, cause: str, ax=None, prob: float = 0.9, x: str = "P_abs"):
    """Each tile's coupling ``effect <- cause`` (posterior mean, ``prob`` interval as a bar) against
    its mean polarisation magnitude ``|P|`` (``x="P_abs"``) or its cells' mean distance to the
    nearest domain wall (``x="wall_distance"``) (:func:`coupling_vs_polarisation_data`), one colour
    per image. Returns the figure."""
    if x not in ("P_abs", "wall_distance"):
        raise ValueError(f"x={x!r}: use 'P_abs' (mean |P|) or 'wall_distance' (distance to the nearest wall)")
    fig, ax = _axes(ax, 4.6, 3.6)
    d = coupling_vs_polarisation_data(run, effect, cause, prob).rename(columns={x: "_x"})
    lo, hi = _eti(prob)
    allowed = d["p_allowed"] > 0 if "p_allowed" in d else np.ones(len(d), dtype=bool)
    for k, (img, sub) in enumerate(d[allowed].groupby("image", sort=False)):
        ax.errorbar(sub["_x"], sub["mean"], yerr=[sub["mean"] - sub[lo], sub[hi] - sub["mean"]], fmt="o",
                    ms=3, lw=0.8, capsize=0, color=f"C{k % 10}", label=literal(img))
    if (~allowed).any():  # exact zeros by construction, not estimates
        ax.plot(d.loc[~allowed, "_x"], d.loc[~allowed, "mean"], "x", color="0.6", ms=4,
                label="edge not allowed in the tile")
    units = _units(run)
    ax.axhline(0.0, color="0.6", lw=0.6)
    ax.set_xlabel("mean |P| of the tile's cells" + (f" ({literal(units['P'])})" if units["P"] else "")
                  if x == "P_abs" else "mean distance of the tile's cells to the nearest wall (unit cells)", fontsize=8)
    ax.set_ylabel(f"{literal(effect)} <- {literal(cause)}" + (f" ({literal(units['B'])})" if units["B"] else ""),
                  fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="best")
    no_tex(fig)
    return fig


def _eti(prob: float) -> tuple[str, str]:
    """Column names of a central ``prob`` interval (:func:`causalcrystal.intervals.eti_name`)."""
    from causalcrystal.intervals import eti_name

    return eti_name((1 - prob) / 2), eti_name((1 + prob) / 2)


def _units(run) -> dict:
    """The units of a run's couplings (``posterior.attrs['units']``) and polarisation (``Px``'s)."""
    from causalcrystal.runs import as_run

    r = as_run(run)
    return {"B": str(r.posterior.posterior.attrs.get("units", "")),
            "P": str(r.cells["Px"].attrs.get("units", "")) if "Px" in r.cells else ""}


def residual_check_data(run, tile: int) -> dict:
    """The residual check of one tile (:mod:`causalcrystal.checks`): for every descriptor whose
    equation is in the likelihood, the probability integral transform ``u`` of each cell's residual
    under the fitted noise (uniform on [0, 1] when the noise family describes the residuals) and
    its Kolmogorov-Smirnov ``pit_p``. Returns ``{"u": DataFrame (cells x descriptors, NaN for a
    derived descriptor), "pit_p": Series, "noise": family, "n_cells": n}``; computed from
    ``posterior.nc`` (draws as stored) and the tile's cells (:func:`causalcrystal.runs.tile_data`)."""
    import pandas as pd
    from scipy import stats

    from causalcrystal.checks import pit_values
    from causalcrystal.runs import as_run, tile_data, tile_draws
    from causalcrystal.sem import ModelSpec

    r = as_run(run)
    X, active = tile_data(r, tile)
    arrays = tile_draws(r, tile)
    noise = ModelSpec.from_dict(r.settings["spec"]).noise
    u = pd.DataFrame(pit_values(X, arrays, noise, active), columns=list(DESCRIPTORS)[:X.shape[1]])
    p = pd.Series({v: stats.kstest(u[v].to_numpy(), "uniform").pvalue if u[v].notna().all() else np.nan
                   for v in u.columns})
    return {"u": u, "pit_p": p, "noise": noise, "n_cells": X.shape[0]}


def plot_residual_check(run, tile: int, axes=None, bins: int = 20):
    """PIT histograms of one tile's residuals under its fitted noise family
    (:func:`residual_check_data`), one panel per descriptor with an equation: the bar heights
    against the uniform's expected count with its central 90 % binomial band (bins of equal width:
    Binomial(n_cells, 1 / bins)). A U shape: residuals heavier-tailed than the noise fitted; a hump:
    lighter; a slope: skew; ``pit_p`` < 0.01 is what ``summary.csv`` flags as ``noise_misfit``.
    Returns the figure."""
    from scipy import stats

    d = residual_check_data(run, tile)
    cols = [v for v in d["u"].columns if d["u"][v].notna().all()]
    if axes is None:
        ncol = min(4, len(cols))
        nrow = int(np.ceil(len(cols) / ncol))
        fig = new_figure(2.3 * ncol, 1.9 * nrow + 0.4)
        axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    else:
        axes = np.atleast_1d(axes).ravel()
        fig = axes[0].figure
    n = d["n_cells"]
    lo, hi = stats.binom.ppf([0.05, 0.95], n, 1.0 / bins)
    for ax, v in zip(axes, cols):
        ax.hist(d["u"][v].to_numpy(), bins=bins, range=(0, 1), color="#4393c3", edgecolor="white", lw=0.4)
        ax.axhspan(lo, hi, color="0.85", zorder=0)
        ax.axhline(n / bins, color="0.4", lw=0.8)
        p = d["pit_p"][v]
        ax.set_title(f"{literal(v)}  (KS p {p:.2g})", fontsize=8, color="C3" if p < 0.01 else "black")
        ax.tick_params(labelsize=6)
    for ax in axes[len(cols):]:
        ax.set_axis_off()
    fig.suptitle(f"tile {tile}: residual PIT under the fitted {literal(d['noise'])} noise", fontsize=9)
    no_tex(fig)
    return fig


def recovery_data(run):
    """For a run on simulated cells (a ``true_B`` in ``cells.nc``): every estimated edge of every
    tile (the rows of ``summary.csv``) with its truth in the run's units
    (:func:`causalcrystal.scenarios.truth_per_tile`: the mean of the tile's cells' ``true_B``,
    scaled like ``B``). Returns a DataFrame with ``tile``, ``image``, ``effect``, ``cause``,
    ``truth``, ``mean``, ``hdi_5%``, ``hdi_95%`` (the summary's 90 % HDI) and ``covered``. Raises
    ``ValueError`` for cells without a ground truth."""
    from causalcrystal.runs import as_run
    from causalcrystal.scenarios import truth_per_tile

    r = as_run(run)
    if "true_B" not in r.cells:
        raise ValueError("recovery needs simulated cells with a ground truth (true_B); this run's cells.nc has none.")
    truth = truth_per_tile(r.cells, r.tiles, r.settings["standardize"])
    s = r.summary
    ix = {v: k for k, v in enumerate(DESCRIPTORS)}
    out = s[["tile", "image", "effect", "cause", "mean"]].copy()
    out["truth"] = truth[s["tile"].to_numpy(int), s["effect"].map(ix).to_numpy(), s["cause"].map(ix).to_numpy()]
    out["hdi_5%"], out["hdi_95%"] = s["hdi_5%"].to_numpy(), s["hdi_95%"].to_numpy()
    out["covered"] = (out["hdi_5%"] <= out["truth"]) & (out["truth"] <= out["hdi_95%"])
    return out.reset_index(drop=True)


def plot_recovery(run, ax=None):
    """Posterior mean and 90 % HDI of every estimated edge against its truth (:func:`recovery_data`;
    simulated runs), with the identity line and the share of intervals covering the truth.
    Returns the figure."""
    fig, ax = _axes(ax, 4.2, 4.0)
    d = recovery_data(run)
    hit = d["covered"].to_numpy()
    for mask, color, label in ((hit, "C0", "interval covers the truth"), (~hit, "C3", "interval misses it")):
        sub = d[mask]
        # (an HDI need not contain the mean: bars from the interval, not as errors around the mean)
        ax.vlines(sub["truth"], sub["hdi_5%"], sub["hdi_95%"], color=color, lw=0.6, alpha=0.6)
        ax.plot(sub["truth"], sub["mean"], "o", ms=2.5, color=color, alpha=0.8, label=f"{label} ({mask.sum()})")
    lim = float(np.nanmax(np.abs(d[["truth", "hdi_5%", "hdi_95%"]].to_numpy()))) * 1.05 or 1.0
    ax.plot([-lim, lim], [-lim, lim], color="0.5", lw=0.7)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("true coefficient (run units)", fontsize=8)
    ax.set_ylabel("posterior mean, 90 % HDI", fontsize=8)
    ax.set_title(f"coverage of the 90 % intervals: {hit.mean():.2f} of {len(d)}", fontsize=9)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left")
    no_tex(fig)
    return fig


def wall_distance(cells, image: str) -> dict:
    """Each cell's distance (in unit cells, Euclidean on the row/col grid) to the nearest domain
    wall of one image: a wall cell is one whose polarisation points more than 90 degrees away from a
    4-neighbour's (``Px Px' + Py Py' < 0``: a 180- or 109-degree wall, not a gentle rotation).
    Returns ``{"values": (rows, cols) grid (NaN where no cell; inf everywhere when the image has no
    wall), "walls": bool grid, "row0", "col0"}`` as :func:`descriptor_map_data` (scipy's exact
    Euclidean distance transform)."""
    from scipy import ndimage

    px, py = descriptor_map_data(cells, image, "Px"), descriptor_map_data(cells, image, "Py")
    P = np.stack([px["values"], py["values"]], -1)
    wall = np.zeros(P.shape[:2], dtype=bool)
    for axis in (0, 1):  # opposite polarisation across an edge: both cells are wall cells
        a = np.take(P, np.arange(P.shape[axis] - 1), axis=axis)
        b = np.take(P, np.arange(1, P.shape[axis]), axis=axis)
        opposite = (a * b).sum(-1) < 0  # NaN (no cell) compares False
        if axis == 0:
            wall[:-1] |= opposite
            wall[1:] |= opposite
        else:
            wall[:, :-1] |= opposite
            wall[:, 1:] |= opposite
    dist = ndimage.distance_transform_edt(~wall) if wall.any() else np.full(wall.shape, np.inf)
    dist = np.where(np.isnan(px["values"]), np.nan, dist)
    return {"values": dist, "walls": wall, "row0": px["row0"], "col0": px["col0"]}


def coupling_cell_map_data(run, effect: str, cause: str, image: str) -> dict:
    """The coupling ``B[effect, cause]`` at cell resolution over one image: each cell gets the
    average of the posterior means (``summary.csv``) of the tiles that contain it and estimate the
    edge (a tile whose causal orders forbid it does not count), NaN where none does. Overlapping
    tiles (stride < size) so give a finer map than the tiles. Returns ``{"values", "n_tiles"
    (rows, cols) grids, "row0", "col0", "units"}`` (units of ``posterior.attrs['units']``)."""
    from causalcrystal.runs import as_run
    from causalcrystal.tiling import tile_members

    r = as_run(run)
    s = r.summary
    s = s[(s["effect"] == effect) & (s["cause"] == cause) & (s["image"].astype(str) == str(image))]
    base = descriptor_map_data(r.cells, image, "Px")
    total = np.zeros_like(base["values"])
    count = np.zeros(base["values"].shape, dtype=int)
    rows, cols = r.cells["row"].values.astype(int), r.cells["col"].values.astype(int)
    for t, mean in zip(s["tile"].to_numpy(int), s["mean"].to_numpy(float)):
        m = tile_members(r.tiles, t)
        rr, cc_ = rows[m] - base["row0"], cols[m] - base["col0"]
        np.add.at(total, (rr, cc_), mean)
        np.add.at(count, (rr, cc_), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = np.where(count > 0, total / count, np.nan)
    return {"values": values, "n_tiles": count, "row0": base["row0"], "col0": base["col0"],
            "units": str(r.posterior.posterior.attrs.get("units", ""))}


def plot_coupling_cell_map(run, effect: str, cause: str, image: str, ax=None, *, cmap: str = "RdBu_r"):
    """The coupling ``effect <- cause`` per unit cell of one image (:func:`coupling_cell_map_data`),
    on a diverging scale centred at 0, with the domain walls (:func:`wall_distance`) outlined.
    Returns the figure."""
    fig, ax = _axes(ax, 4.2, 3.8)
    d = coupling_cell_map_data(run, effect, cause, image)
    from causalcrystal.runs import as_run

    walls = wall_distance(as_run(run).cells, image)["walls"]
    h, w = d["values"].shape
    vmax = float(np.nanmax(np.abs(d["values"]))) if np.isfinite(d["values"]).any() else 1.0
    ext = (d["col0"] - 0.5, d["col0"] + w - 0.5, d["row0"] + h - 0.5, d["row0"] - 0.5)
    im = ax.imshow(d["values"], cmap=cmap, vmin=-vmax, vmax=vmax, origin="upper", interpolation="nearest", extent=ext)
    if walls.any():
        ax.contour(walls.astype(float), levels=[0.5], colors="k", linewidths=0.6, origin="upper", extent=ext)
    ax.set_title(f"{literal(effect)} <- {literal(cause)}: {literal(image)}", fontsize=9)
    ax.set_xlabel("col (cells)", fontsize=8)
    ax.set_ylabel("row (cells)", fontsize=8)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label("coupling (mean over covering tiles)" + (f" ({literal(d['units'])})" if d["units"] else ""),
                 fontsize=8)
    cb.ax.tick_params(labelsize=7)
    no_tex(fig)
    return fig


def descriptor_map_data(cells, image: str, name: str):
    """One descriptor of one image on the cell grid: a 2-D array ``(rows, cols)`` indexed by the
    cells' ``row``, ``col`` (NaN where the image has no cell), with the descriptor's ``units``.
    Raises ``ValueError`` naming the images / variables present when ``image`` or ``name`` is not."""
    if name not in cells:
        raise ValueError(f"{name!r} is not a variable of the cell table; variables: {sorted(cells.data_vars)}")
    labels = cells["image"].values.astype(str)
    m = labels == str(image)
    if not m.any():
        raise ValueError(f"image {image!r} is not in the cell table; images: {sorted(set(labels))}")
    row, col = cells["row"].values[m].astype(int), cells["col"].values[m].astype(int)
    grid = np.full((row.max() - row.min() + 1, col.max() - col.min() + 1), np.nan)
    grid[row - row.min(), col - col.min()] = cells[name].values[m]
    return {"values": grid, "row0": int(row.min()), "col0": int(col.min()),
            "units": str(cells[name].attrs.get("units", ""))}


def plot_descriptor_map(cells, image: str, name: str, ax=None, *, cmap: str = "viridis"):
    """A descriptor of one image per unit cell (:func:`descriptor_map_data`), rows downwards as in
    the micrograph. Returns the figure."""
    fig, ax = _axes(ax, 4.2, 3.8)
    d = descriptor_map_data(cells, image, name)
    h, w = d["values"].shape
    im = ax.imshow(d["values"], cmap=cmap, origin="upper", interpolation="nearest",
                   extent=(d["col0"] - 0.5, d["col0"] + w - 0.5, d["row0"] + h - 0.5, d["row0"] - 0.5))
    ax.set_title(f"{literal(name)}: {literal(image)}", fontsize=9)
    ax.set_xlabel("col (cells)", fontsize=8)
    ax.set_ylabel("row (cells)", fontsize=8)
    ax.tick_params(labelsize=7)
    cb = fig.colorbar(im, ax=ax, shrink=0.8)
    cb.set_label(f"{literal(name)}" + (f" ({literal(d['units'])})" if d["units"] else ""), fontsize=8)
    cb.ax.tick_params(labelsize=7)
    no_tex(fig)
    return fig
