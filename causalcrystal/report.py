"""One self-contained HTML report of a finished run (``causalcrystal report RUN_DIR``).

:func:`write_report` reads a run folder (``manifest.json``, ``summary.csv``, the tile coordinates
of ``posterior.nc``, ``discovery.nc``) and, when present, a concentration output
(``causalcrystal concentration``; ``--concentration DIR`` or ``RUN_DIR/concentration``) and a
model-comparison output (``causalcrystal compare``; ``--compare DIR`` or ``RUN_DIR/compare``), and
writes one HTML file: every figure is an embedded base64 PNG, the CSS is inline, nothing is
fetched from anywhere.

Sections (each a ``<section id=...>``, in this order):

``overview``        key numbers and a table of contents
``settings``        the run's settings (``manifest.json``) and the posterior's units
``versions``        installed package versions (and the ones recorded by the run)
``provenance``      data source (files or the simulator), images, discovery settings
``graphs``          per image, the causal graph: edges with inclusion probability >= 0.5, width
                    ~ |posterior mean|, labels ``mean (inclusion)``
``maps``            maps over each image of the posterior mean and the 90 % HDI width of the
                    couplings that matter (mean inclusion >= 0.5 over all tiles)
``pca``             PCA of the tiles' coupling vectors: explained variance, loadings, score maps
``concentration``   couplings against the Sm fraction with the LGD fit and its bands
``compare``         model-comparison tables, direction probabilities and their maps
``diagnostics``     r_hat, ESS and divergence distributions, maps, the flagged tiles
``interventions``   total effects (hook: :func:`section_interventions`)

Reading is cheap whatever the run's size: the per-tile numbers come from ``summary.csv`` (one row
per tile x allowed edge); of ``posterior.nc`` only the ``posterior`` group's tile coordinates are
read (lazily, through h5netcdf); the draws and the ``log_likelihood`` group are never loaded.
Figures are drawn with matplotlib's Agg canvas (no pyplot state, no display needed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from causalcrystal.cells import DESCRIPTORS
from causalcrystal.errors import CausalCrystalError
from causalcrystal.jobs import atomic_text, describe_holder, generated_by_us, read_manifest, running
from causalcrystal.jobs import not_finished, recorded_command
from causalcrystal.jobs import status as job_status
from causalcrystal.plots import (graph_data, literal, new_figure, no_tex, plot_graph,  # noqa: F401
                                 plot_polarisation, plot_prior_posterior, plot_total_effect_map, polarisation_data)

if TYPE_CHECKING:
    import pandas as pd

#: Edges drawn in the causal graphs / couplings mapped: mean inclusion probability at least this.
INCLUSION_MIN = 0.5
#: At most this many couplings get maps.
MAX_MAPPED = 12
#: Table rows shown inline (the rest are counted, the file has them all).
MAX_ROWS = 200
#: PNG resolution.
DPI = 90
VERSIONED = ("causalcrystal", "pymc", "pytensor", "arviz", "nutpie", "lingam", "numpy", "scipy", "xarray",
             "pandas", "matplotlib", "networkx")


class ReportError(CausalCrystalError, ValueError):
    """The run folder (or a companion output) cannot be reported on; the message says why."""


# ---------------------------------------------------------------------------------------------
# inputs


@dataclass
class Context:
    """Everything the sections read, loaded once (all small)."""

    run_dir: Path
    manifest: dict
    summary: pd.DataFrame  # summary.csv
    tiles: pd.DataFrame  # indexed by tile: image, row0, col0, size, n_cells, sm_fraction
    images: pd.DataFrame  # indexed by image: sm_fraction, height, width, n_cells, n_tiles
    post_attrs: dict
    disc_attrs: dict
    disc_image_attrs: dict
    concentration: Path | None
    concentration_given: bool
    compare: Path | None
    compare_given: bool
    log: object
    edges: pd.DataFrame | None = None  # per edge: mean inclusion etc. over all tiles
    selected: list = field(default_factory=list)
    cells: object = None  # the run's cells.nc (xarray Dataset) when the run stored it


def _read_tiles(path: Path):
    """Tile coordinates of ``posterior.nc`` (posterior group only, lazily; no draws read)."""
    import xarray as xr

    from causalcrystal.plots import tile_frame

    with xr.open_dataset(path, group="posterior", engine="h5netcdf") as post:
        return tile_frame(post), dict(post.attrs)


def _read_discovery(path: Path):
    import pandas as pd
    import xarray as xr

    attrs, img_attrs, images = {}, {}, None
    if not path.is_file():
        return attrs, img_attrs, images
    with xr.open_dataset(path, engine="h5netcdf") as d:
        attrs = dict(d.attrs)
    with xr.open_dataset(path, engine="h5netcdf", group="images") as d:
        img_attrs = dict(d.attrs)
        cols = {name: d[name].values for name in ("sm_fraction", "height", "width", "n_cells") if name in d.coords}
        images = pd.DataFrame(cols, index=pd.Index(d["image"].values.astype(str), name="image"))
        if "order" in d:  # each image's LiNGAM causal order: the graphs are drawn in its layers
            images["order"] = [tuple(int(v) for v in row) for row in d["order"].values]
    return attrs, img_attrs, images


def _companion(run_dir: Path, given, name: str, marker_files: tuple) -> tuple[Path | None, bool]:
    """The concentration/compare folder: the one given (must hold one of ``marker_files``) or
    ``RUN_DIR/name`` when it exists."""
    if given is not None:
        p = Path(given)
        if not p.is_dir():
            raise ReportError(f"--{name} {p}: no such folder; run `causalcrystal {name} {run_dir} --out {p}` first "
                              f"or leave --{name} out.")
        if job_status(p) == "absent" and not any((p / m).exists() for m in marker_files):
            raise ReportError(f"--{name} {p}: holds none of {list(marker_files)}; is it a `causalcrystal {name}` "
                              "output folder?")
        return p, True
    p = run_dir / name
    return (p if p.is_dir() else None), False


def load_context(run_dir, concentration=None, compare=None, log=None) -> Context:
    """Read the small inputs of a report (raises :class:`ReportError` on an unfinished run)."""
    import pandas as pd

    log = log or (lambda msg: None)
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir}: no such folder; pass the --out folder of `causalcrystal run` or `demo`.")
    missing = [n for n in ("manifest.json", "summary.csv", "posterior.nc") if not (run_dir / n).is_file()]
    if not missing and job_status(run_dir, "posterior.nc") != "finished":
        missing = ["the finished status in manifest.json"]  # killed while writing its outputs
    if missing:
        holder = running(run_dir)
        if holder is not None:
            raise ReportError(f"{run_dir}: the run is being written now ({describe_holder(holder)}); re-run the "
                              "report when it has finished.")
        if (read_manifest(run_dir) or {}).get("status") == "finished":
            # finished, then files deleted: the same command would refuse (finished), --overwrite recomputes
            raise ReportError(not_finished(run_dir, "run", "posterior.nc", f"causalcrystal run ... --out {run_dir}",
                                           gone=missing))
        raise ReportError(f"{run_dir}: {', '.join(missing)} missing; this is not a finished run. Finish it first "
                          f"(re-running the same `causalcrystal run ... --out {run_dir}` resumes it).")
    manifest = json.loads((run_dir / "manifest.json").read_text())
    summary = pd.read_csv(run_dir / "summary.csv")
    tiles, post_attrs = _read_tiles(run_dir / "posterior.nc")
    if "size" not in tiles:
        tiles["size"] = int(manifest.get("settings", {}).get("tile_size") or 16)
    disc_attrs, disc_image_attrs, images = _read_discovery(run_dir / "discovery.nc")
    per_image = tiles.groupby("image")
    derived = pd.DataFrame({"n_tiles": per_image.size()})
    if "sm_fraction" in tiles:
        derived["sm_fraction_tiles"] = per_image["sm_fraction"].first()
    if images is None:
        images = derived.rename(columns={"sm_fraction_tiles": "sm_fraction"})
    else:
        images = images.join(derived, how="outer")
        if "sm_fraction" not in images:
            images["sm_fraction"] = images.get("sm_fraction_tiles", np.nan)
        images = images.drop(columns=[c for c in ("sm_fraction_tiles",) if c in images])
    images["n_tiles"] = images["n_tiles"].fillna(0).astype(int)
    images = images.sort_values(["sm_fraction"]) if "sm_fraction" in images else images.sort_index()
    conc, conc_given = _companion(run_dir, concentration, "concentration",
                                  ("curves.csv", "tile_summaries.nc", "couplings.csv"))
    comp, comp_given = _companion(run_dir, compare, "compare", ("models.csv", "averaged.csv", "directions.csv"))
    ctx = Context(run_dir, manifest, summary, tiles, images, post_attrs, disc_attrs, disc_image_attrs, conc,
                  conc_given, comp, comp_given, log)
    if (run_dir / "cells.nc").is_file():
        import xarray as xr

        ctx.cells = xr.load_dataset(run_dir / "cells.nc", engine="h5netcdf")
    ctx.edges = edge_table(summary, len(tiles))
    ctx.selected = select_couplings(ctx.edges)
    return ctx


def edge_table(summary, n_tiles: int):
    """Per edge over all tiles: mean inclusion probability and mean coefficient (a tile whose causal
    order does not allow the edge counts as coefficient 0, inclusion 0), tiles allowing it."""
    g = summary.groupby(["effect", "cause"])
    out = g.agg(allowed=("tile", "nunique"), incl_sum=("inclusion_prob", "sum"), mean_sum=("mean", "sum"),
                mean_abs=("mean", lambda s: float(np.mean(np.abs(s)))))
    out["inclusion"] = out.pop("incl_sum") / max(n_tiles, 1)
    out["mean"] = out.pop("mean_sum") / max(n_tiles, 1)
    out = out.reset_index()
    out["label"] = out["effect"] + "<-" + out["cause"]
    return out.sort_values(["inclusion", "mean_abs"], ascending=False).reset_index(drop=True)


def select_couplings(edges, threshold: float = INCLUSION_MIN, cap: int = MAX_MAPPED) -> list[str]:
    """The couplings that matter: mean inclusion >= ``threshold`` (at most ``cap``, most included
    first); if none reaches it, the four most included."""
    keep = edges.loc[edges["inclusion"] >= threshold, "label"].tolist()
    if not keep:
        keep = edges["label"].head(4).tolist()
    return keep[:cap]


# ---------------------------------------------------------------------------------------------
# HTML and figure helpers


def _esc(x) -> str:
    return html.escape(str(x))


# User text for matplotlib drawn literally: apply it at every call that hands such text to
# matplotlib (titles, labels, ticks, legends, text); and every figure drawn without LaTeX.
_mpl = literal
_no_tex = no_tex


def _fig(width: float, height: float, layout: str | None = "constrained"):
    return new_figure(width, height, layout, dpi=DPI)


def _img(fig, alt: str, caption: str = "") -> str:
    buf = io.BytesIO()
    _no_tex(fig)
    fig.savefig(buf, format="png", dpi=DPI)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{_esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def _table(df, caption: str = "", max_rows: int = MAX_ROWS, float_format="{:.4g}".format) -> str:
    n = len(df)
    shown = df.head(max_rows)
    body = shown.to_html(index=False, border=0, classes="tbl", float_format=float_format, na_rep="",
                         escape=True)
    more = f"<p class='note'>first {max_rows} of {n} rows shown</p>" if n > max_rows else ""
    cap = f"<p class='cap'>{caption}</p>" if caption else ""
    return f"{cap}<div class='scroll'>{body}</div>{more}"


def _kv(pairs) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in pairs)
    return f"<table class='tbl kv'>{rows}</table>"


def _note(text: str, kind: str = "note") -> str:
    return f"<p class='{kind}'>{text}</p>"


def _cmd(text: str) -> str:
    return f"<pre class='cmd'>{_esc(text)}</pre>"


def _flatten(d: dict, prefix: str = "") -> list[tuple[str, object]]:
    out = []
    for k in sorted(d):
        v = d[k]
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out += _flatten(v, key + ".")
        else:
            out.append((key, json.dumps(v) if isinstance(v, (list, tuple)) else v))
    return out


def _image_title(ctx: Context, img: str) -> str:
    """An image's figure title (for matplotlib: the label escaped by :func:`_mpl`)."""
    y = ctx.images["sm_fraction"].get(img, np.nan) if "sm_fraction" in ctx.images else np.nan
    return _mpl(img) + (f"  (Sm {y:.2f})" if np.isfinite(y) else "")


def _map_figure(ctx: Context, rows: list[dict], images=None):
    """Maps over every image with tiles (:func:`causalcrystal.plots.plot_tile_maps`, one row per
    entry of ``rows``), titled with each image's Sm fraction."""
    from causalcrystal.plots import plot_tile_maps

    images = list(ctx.images.index[ctx.images["n_tiles"] > 0]) if images is None else images
    return plot_tile_maps(None, rows, images, tiles=ctx.tiles, cells=ctx.cells,
                          titles={img: _image_title(ctx, img) for img in images}, dpi=DPI)


def _values(summary, label: str, column: str):
    effect, cause = label.split("<-")
    s = summary[(summary["effect"] == effect) & (summary["cause"] == cause)]
    return s.set_index("tile")[column].astype(float)


# ---------------------------------------------------------------------------------------------
# sections: each takes the context and returns HTML (the section body)


def section_overview(ctx: Context, sections) -> str:
    s = ctx.summary
    flagged = s.loc[s["flagged"].astype(bool), "tile"].nunique() if "flagged" in s else 0
    items = [("run folder", str(ctx.run_dir.resolve())),
             ("images", len(ctx.images)), ("tiles", len(ctx.tiles)),
             ("tile x edge rows (summary.csv)", len(s)),
             (f"edges with mean inclusion >= {INCLUSION_MIN}", int((ctx.edges["inclusion"] >= INCLUSION_MIN).sum())),
             ("flagged tiles", flagged),
             ("coefficient units", ctx.post_attrs.get("units", "")),
             ("concentration output", str(ctx.concentration) if ctx.concentration else "none"),
             ("compare output", str(ctx.compare) if ctx.compare else "none")]
    toc = "".join(f"<li><a href='#{sid}'>{_esc(title)}</a></li>" for sid, title, _ in sections if sid != "overview")
    return _kv(items) + f"<nav><ol>{toc}</ol></nav>"


def section_settings(ctx: Context) -> str:
    from causalcrystal.engine import WHOLE, tile_min_cells

    st = dict(ctx.manifest.get("settings", {}))
    # a setting left at its default is stored as None: show the value the run used with it
    size = st.get("tile_size")
    if "stride" in st and st["stride"] is None and size not in (None, WHOLE):
        st["stride"] = f"None (default: half the tile size, {int(size) // 2})"
    if "min_cells" in st and st["min_cells"] is None and size is not None:
        st["min_cells"] = f"None (default: {tile_min_cells(size, None)})"
    out = _kv(_flatten(st))
    out += _kv([("standardize (posterior.nc)", ctx.post_attrs.get("standardize", "")),
                ("units of B", ctx.post_attrs.get("units", "")),
                ("B indexing", ctx.post_attrs.get("B_indexing", "")),
                ("written by causalcrystal", ctx.manifest.get("causalcrystal", ""))])
    return out


def section_versions(ctx: Context) -> str:
    from importlib import metadata

    rows = []
    for name in VERSIONED:
        try:
            rows.append((name, metadata.version(name)))
        except metadata.PackageNotFoundError:
            rows.append((name, "not installed"))
    recorded = [("causalcrystal (that wrote the run)", ctx.manifest.get("causalcrystal", "")),
                ("lingam (that ran discovery)", ctx.disc_attrs.get("lingam_version", "")),
                ("python (this report)", sys.version.split()[0])]
    return _note("Installed now (the report's environment):") + _kv(rows) + _note("Recorded in the run:") + \
        _kv(recorded)


def section_provenance(ctx: Context) -> str:
    src = ctx.manifest.get("settings", {}).get("source") or ctx.disc_attrs.get("source", "")
    simulated = "simulator" in str(src)
    kind = ("simulated: the LGD simulator (causalcrystal.simulate); the ground truth is in the simulated cell "
            "table, not in the run") if simulated else "measured data read from the file(s) below"
    rows = [("source", src or "not recorded"), ("kind", kind)]
    left_out = ctx.manifest.get("settings", {}).get("excluded_images")
    if left_out:
        rows.append(("images left out of the inputs (--exclude-image)", ", ".join(map(str, left_out))))
    out = _kv(rows)
    d = ctx.disc_attrs
    if d:
        out += _kv([("discovery", d.get("method", "")), ("tile bootstrap resamples", d.get("n_bootstrap", "")),
                    ("image bootstrap resamples", ctx.disc_image_attrs.get("n_bootstrap", "")),
                    ("edge threshold |B| >", d.get("threshold", "")), ("exogenous", d.get("exogenous", "")),
                    ("standardize", d.get("standardize", "")), ("min cells per tile", d.get("min_cells", ""))])
    table = ctx.images.reset_index()
    out += _table(table, "Images (grid height x width in unit cells; tiles = tiles with a posterior)",
                  float_format="{:.3g}".format)
    return out


def section_graphs(ctx: Context) -> str:
    import pandas as pd

    s = ctx.summary
    imgs = [i for i in ctx.images.index if ctx.images.loc[i, "n_tiles"] > 0]
    ntile = ctx.tiles.groupby("image").size()
    per = {img: graph_data(s, img, int(ntile.get(img, 0)), INCLUSION_MIN) for img in imgs}
    drawn = pd.concat([e.assign(image=img) for img, e in per.items()]) if per else pd.DataFrame(
        columns=["image", "effect", "cause", "mean", "inclusion", "allowed", "n_tiles"])
    vmax = float(drawn["mean"].abs().max()) if len(drawn) else 1.0
    vmax = vmax if vmax > 0 else 1.0  # one width scale across images
    ncol = min(len(imgs), 3)
    nrow = int(np.ceil(len(imgs) / ncol))
    fig = _fig(4.6 * ncol, 4.6 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False).ravel())
    for ax in axes[len(imgs):]:
        ax.set_axis_off()
    for ax, img in zip(axes, imgs):
        order = ctx.images.loc[img, "order"] if "order" in ctx.images else None
        plot_graph(s, img, ax, n_tiles=int(ntile.get(img, 0)), order=order, vmax=vmax,
                   title=f"{_image_title(ctx, img)}: {len(per[img])} edges, {int(ntile.get(img, 0))} tiles")
    cap = (f"Per image, the posterior mean coefficient averaged over the image's tiles (a tile whose causal order "
           f"does not allow the edge counts as 0) and, in brackets, the mean inclusion probability; edges with "
           f"mean inclusion &ge; {INCLUSION_MIN} are drawn, arrow cause &rarr; effect, width ~ |mean|, "
           f"red positive, blue negative; nodes in layers by the image's LiNGAM causal order (causes above). "
           f"Units: {_esc(ctx.post_attrs.get('units', ''))}. (causalcrystal.plots.plot_graph)")
    out = _img(fig, "causal graph per image", cap)
    tab = drawn.assign(edge=drawn["effect"] + " <- " + drawn["cause"])[
        ["image", "edge", "mean", "inclusion", "allowed", "n_tiles"]].rename(
        columns={"allowed": "tiles allowing it", "n_tiles": "tiles"})
    tab = tab.sort_values(["image", "inclusion"], ascending=[True, False])
    out += f"<details><summary>Edges drawn ({len(tab)})</summary>{_table(pd.DataFrame(tab))}</details>"
    return out


def section_maps(ctx: Context) -> str:
    s = ctx.summary
    sel = ctx.selected
    if not sel:
        return _note("No couplings to map (summary.csv has no edges).")
    out = _note(f"{len(sel)} coupling(s) mapped: those with mean inclusion probability &ge; {INCLUSION_MIN} over all "
                f"{len(ctx.tiles)} tiles (at most {MAX_MAPPED}, most included first). One row per coupling, one "
                "column per image (by Sm fraction); each patch is the region closest to a tile's centre (tiles "
                "overlap when the stride is less than the tile size); grey: the tile's causal order does not allow "
                "the edge. Each coupling has one colour scale across images.")
    incl = ctx.edges.set_index("label")["inclusion"]
    means, widths = [], []
    for label in sel:
        mean = _values(s, label, "mean")
        width = _values(s, label, "hdi_95%") - _values(s, label, "hdi_5%")
        vm = float(np.nanmax(np.abs(mean))) if mean.size else 1.0
        wmax = float(np.nanmax(width)) if width.size else 1.0
        means.append({"label": label, "values": mean, "cmap": "RdBu_r", "vmin": -(vm or 1), "vmax": vm or 1,
                      "title": f"mean (incl. {incl[label]:.2f})"})
        widths.append({"label": label, "values": width, "cmap": "viridis", "vmin": 0, "vmax": wmax or 1,
                       "title": "90 % HDI width"})
    out += "<h3 id='maps-mean'>Posterior mean</h3>"
    out += _img(_map_figure(ctx, means), "maps of posterior mean couplings",
                f"Posterior mean coefficient per tile ({_esc(ctx.post_attrs.get('units', ''))}); red positive, blue "
                "negative; the colour bar label gives the coupling's mean inclusion probability over all tiles.")
    out += "<h3 id='maps-width'>90 % interval width</h3>"
    out += _img(_map_figure(ctx, widths), "maps of 90 % HDI widths",
                "Width of each tile's 90 % highest-density interval (hdi_95% - hdi_5% of summary.csv).")
    return out


#: At most this many images get a polarisation figure.
MAX_POLARISATION_IMAGES = 6


def section_polarisation(ctx: Context) -> str:
    cells = ctx.cells
    if cells is None:
        return _note("This run did not store its cells (cells.nc; runs made before it did): re-run it to see the "
                     "polarisation over the image.")
    images = list(ctx.images.index)[:MAX_POLARISATION_IMAGES]
    n = len(images)
    ncol = min(3, n)
    nrow = (n + ncol - 1) // ncol
    fig = _fig(4.2 * ncol, 4.2 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
    with_image = 0
    for ax, img in zip(axes, images):
        plot_polarisation(cells, img, ax, title=_image_title(ctx, img), colorbar=False)
        with_image += int(bool(ax.images))
    for ax in axes[n:]:
        ax.axis("off")
    fig.colorbar(axes[0].collections[-1], ax=list(axes[:n]), shrink=0.6, label="direction of (Px, Py) (deg)")
    cap = ("B-site offset (Px, Py) of every cell as an arrow from the cell's reference point, coloured by its "
           "direction; arrow lengths are scaled for visibility (compare them within a panel). "
           + (f"{with_image} panel(s) over the micrograph (its pixels); " if with_image else "")
           + ("others over the cell positions" if with_image < n else "") + ".")
    more = f" Showing {n} of {len(ctx.images)} images." if len(ctx.images) > n else ""
    return _note("Polarisation of each cell (from cells.nc)." + more) + _img(fig, "polarisation vector maps", cap)


def pca(X: np.ndarray):
    """PCA by SVD of the column-centred matrix: (scores, loadings (component x column), explained
    variance ratio). Signs fixed so that each component's largest loading is positive."""
    Xc = X - X.mean(0, keepdims=True)
    U, S, Vt = np.linalg.svd(Xc, full_matrices=False)
    flip = np.sign(Vt[np.arange(Vt.shape[0]), np.argmax(np.abs(Vt), axis=1)])
    flip[flip == 0] = 1
    Vt = Vt * flip[:, None]
    U = U * flip[None, :]
    var = S**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    return U * S[None, :], Vt, ratio


def section_pca(ctx: Context) -> str:
    import pandas as pd

    s = ctx.summary
    labels = ctx.edges.loc[ctx.edges["inclusion"] >= 0.1, "label"].tolist() or ctx.selected
    if len(labels) < 2 or len(ctx.tiles) < 3:
        return _note(f"PCA needs at least 3 tiles and 2 couplings (have {len(ctx.tiles)} tiles, {len(labels)} "
                     "couplings).")
    lab = s["effect"] + "<-" + s["cause"]
    wide = s.assign(label=lab).pivot_table(index="tile", columns="label", values="mean", aggfunc="first")
    X = wide.reindex(index=ctx.tiles.index, columns=labels).fillna(0.0).to_numpy(float)
    scores, load, ratio = pca(X)
    k = min(3, load.shape[0])
    fig = _fig(max(8.0, 0.32 * len(labels) + 4.5), 3.2 + 0.9 * k)
    gs = fig.add_gridspec(k, 2, width_ratios=[2.2, max(3.0, 0.3 * len(labels))])
    ax = fig.add_subplot(gs[:, 0])
    m = min(10, ratio.size)
    ax.bar(np.arange(1, m + 1), ratio[:m], color="#4d4d4d")
    ax.plot(np.arange(1, m + 1), np.cumsum(ratio[:m]), "o-", color="#d6604d", ms=3, label="cumulative")
    ax.set_xlabel("component", fontsize=8)
    ax.set_ylabel("explained variance ratio", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=7)
    for c in range(k):
        a = fig.add_subplot(gs[c, 1])
        a.bar(np.arange(len(labels)), load[c], color=np.where(load[c] > 0, "#b2182b", "#2166ac"))
        a.axhline(0, color="k", lw=0.5)
        a.set_ylabel(f"PC{c + 1} ({ratio[c]:.0%})", fontsize=8)
        a.set_xticks(np.arange(len(labels)))
        a.set_xticklabels([_mpl(x) for x in labels] if c == k - 1 else [], rotation=60, ha="right", fontsize=7)
        a.tick_params(labelsize=7)
    out = _note(f"Each tile is a vector of posterior mean coefficients over the {len(labels)} couplings with mean "
                "inclusion &ge; 0.1 (0 where the tile's order does not allow the edge); PCA of the centred matrix "
                f"({len(ctx.tiles)} tiles; numpy SVD, coefficients not rescaled).")
    out += _img(fig, "PCA explained variance and loadings", "Left: explained variance. Right: loadings of the "
                "leading components (sign fixed so the largest loading is positive).")
    sc = pd.DataFrame(scores[:, :2], index=ctx.tiles.index)
    rows = []
    for c in range(min(2, scores.shape[1])):
        v = float(np.nanmax(np.abs(sc[c]))) or 1.0
        rows.append({"label": f"PC{c + 1}", "values": sc[c], "cmap": "PuOr_r", "vmin": -v, "vmax": v,
                     "title": f"PC{c + 1} score"})
    out += _img(_map_figure(ctx, rows), "PCA score maps", "Scores of the leading components over each image.")
    if scores.shape[1] >= 2:
        fig = _fig(5.2, 4.0)
        ax = fig.subplots()
        y = ctx.tiles["sm_fraction"].to_numpy(float) if "sm_fraction" in ctx.tiles else np.zeros(len(ctx.tiles))
        pts = ax.scatter(scores[:, 0], scores[:, 1], c=y, cmap="plasma", s=22, edgecolors="k", linewidths=0.3)
        cb = fig.colorbar(pts, ax=ax)
        cb.set_label("Sm fraction", fontsize=8)
        cb.ax.tick_params(labelsize=7)
        ax.set_xlabel(f"PC1 ({ratio[0]:.0%})", fontsize=8)
        ax.set_ylabel(f"PC2 ({ratio[1]:.0%})", fontsize=8)
        ax.tick_params(labelsize=7)
        out += _img(fig, "PCA scores scatter", "Tiles in the plane of the first two components, coloured by Sm "
                                                "fraction.")
    loadings = pd.DataFrame(load[:k].T, index=labels, columns=[f"PC{c + 1}" for c in range(k)])
    out += f"<details><summary>Loadings table</summary>{_table(loadings.reset_index(names='coupling'))}</details>"
    return out


def _conc_theta(path: Path):
    """Image values ``theta`` (coupling, image) of ``concentration.nc``: mean and 90 % interval."""
    import xarray as xr

    if not path.is_file():
        return None
    with xr.open_dataset(path, group="posterior", engine="h5netcdf") as post:
        if "theta" not in post:
            return None
        th = post["theta"].load()
    flat = th.stack(s=("chain", "draw"))
    return {"mean": flat.mean("s"), "lo": flat.quantile(0.05, "s"), "hi": flat.quantile(0.95, "s")}


def _unfinished(d: Path, job: str, final: str, needed: tuple = (), log=None) -> str:
    """The note for an unfinished ``job`` in ``d``: running now (and by whom), finished with outputs
    gone since (--overwrite), or interrupted and how to finish it. ``needed``: the files the
    section reads (named when gone, also for manifests that recorded no outputs). ``log``: also
    says it on the console (a fresh user saw a damaged companion folder only in the HTML)."""
    say = log or (lambda msg: None)
    holder = running(d)
    if holder is not None:
        say(f"WARNING: {d} holds a {job} job that is running now ({describe_holder(holder)}); the report's {job} "
            "section is empty: re-run the report when it has finished.")
        return _note(f"<code>{_esc(d)}</code> holds a {job} job that is running now ({_esc(describe_holder(holder))}); "
                     "re-run the report when it has finished.", "warn")
    fallback, exact = _job_command(d, job), job == "concentration"
    if (read_manifest(d) or {}).get("status") == "finished":
        gone = [n for n in needed if not (d / n).exists()]
        text = not_finished(d, job, final, fallback, gone=gone, exact=exact)
        say(f"WARNING: the report's {job} section is empty: {text}")
        return _note(_esc(text), "warn")
    say(f"WARNING: the report's {job} section is empty: {not_finished(d, job, final, fallback, exact=exact)} (then "
        "re-run the report)")
    return _note(f"<code>{_esc(d)}</code> holds an unfinished {job} job (its manifest does not say finished). "
                 "Finish it by running the same command again:", "warn") + _resume_hint(d, job)


def _job_command(d: Path, job: str) -> str:
    """The command that finishes or recomputes the ``job`` in ``d``: a concentration job's is
    rebuilt from its settings (:func:`causalcrystal.concentration.resume_command`, always used), a
    comparison's is generic (used when its manifest recorded no command of its own)."""
    if job == "concentration":
        from causalcrystal.concentration import resume_command

        return resume_command(d)
    return f"causalcrystal {job} RUN --out {d}"


def _resume_hint(d: Path, job: str) -> str:
    """How to finish the unfinished job in ``d``: the ``causalcrystal`` command line its manifest
    recorded for this job, a concentration command rebuilt from its settings (e.g. for the demo's),
    otherwise what to call (the job's own --out is ``d``)."""
    if job == "concentration":
        return _cmd(_job_command(d, job))
    command = recorded_command(read_manifest(d) or {}, job)
    if command and "causalcrystal" in command.split(" && ")[-1].split(" ", 1)[0]:
        return _cmd(command)
    return _note(f"the same <code>causalcrystal {job}</code> command (or Python call) that started it, with "
                 f"<code>--out {_esc(d)}</code>.")


def section_concentration(ctx: Context) -> str:
    import pandas as pd
    import xarray as xr

    d = ctx.concentration
    hint = _cmd(f"causalcrystal concentration {ctx.run_dir}")  # writes RUN/concentration, where the report looks
    if d is None:
        return _note("No concentration output found (looked for "
                     f"<code>{_esc(ctx.run_dir / 'concentration')}</code>). Fit the LGD concentration model with the "
                     "command below, then re-run the report (or pass <code>--concentration DIR</code>):") + hint
    if job_status(d, "concentration.nc") != "finished" or not (d / "curves.csv").is_file():
        # only a finished job's files are read: an interrupted one may hold some outputs and not others
        return _unfinished(d, "concentration", "concentration.nc", ("concentration.nc", "curves.csv"), ctx.log)
    out = ""
    man = d / "manifest.json"
    if man.is_file():
        src = json.loads(man.read_text()).get("settings", {}).get("run_dir")
        if src and Path(src).resolve() != ctx.run_dir.resolve():
            out += _note(f"This concentration output was fitted to <code>{_esc(src)}</code>, not to this run.", "warn")
        out += _stale_note(ctx, man, "posterior.nc", "concentration")
    from causalcrystal.intervals import renamed

    curves = renamed(pd.read_csv(d / "curves.csv"))
    if "sm_fraction" not in curves and "y" in curves:  # written before the axis was named sm_fraction
        curves = curves.rename(columns={"y": "sm_fraction"})
    summ = None
    if (d / "tile_summaries.nc").is_file():
        with xr.open_dataset(d / "tile_summaries.nc", engine="h5netcdf") as ds:
            summ = ds.load()
    theta = _conc_theta(d / "concentration.nc")
    couplings = list(dict.fromkeys(curves["coupling"]))
    ncol = min(3, len(couplings))
    nrow = int(np.ceil(len(couplings) / ncol))
    fig = _fig(3.9 * ncol, 3.0 * nrow)
    axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False).ravel())
    rng = np.random.default_rng(0)
    for ax in axes[len(couplings):]:
        ax.set_axis_off()
    for ax, c in zip(axes, couplings):
        cu = curves[curves["coupling"] == c].sort_values("sm_fraction")
        x = cu["sm_fraction"]
        ax.fill_between(x, cu["eti_5%"], cu["eti_95%"], color="#4393c3", alpha=0.2, lw=0, label="90 %")
        ax.fill_between(x, cu["eti_25%"], cu["eti_75%"], color="#4393c3", alpha=0.35, lw=0, label="50 %")
        ax.plot(x, cu["median"], color="#2166ac", lw=1.5, label="LGD fit")
        if summ is not None and c in summ["coupling"].values:
            used = summ["used"].sel(coupling=c).values.astype(bool)
            yt = summ["sm_fraction"].values[used]
            span = float(np.ptp(summ["sm_fraction"].values)) or 0.1
            jit = yt + rng.uniform(-0.012, 0.012, yt.size) * span
            ax.errorbar(jit, summ["mean"].sel(coupling=c).values[used], yerr=summ["sd"].sel(coupling=c).values[used],
                        fmt="o", ms=2.5, color="#7f7f7f", alpha=0.6, elinewidth=0.6, label="tiles (mean, sd)")
        if theta is not None and c in theta["mean"]["coupling"].values:
            m = theta["mean"].sel(coupling=c)
            yi = [float(ctx.images["sm_fraction"].get(str(i), np.nan)) for i in m["image"].values]
            lo, hi = theta["lo"].sel(coupling=c).values, theta["hi"].sel(coupling=c).values
            ax.errorbar(yi, m.values, yerr=[m.values - lo, hi - m.values], fmt="D", ms=4, color="k", capsize=2,
                        lw=1, label="images (90 %)")
        # Keep the y-range on the fit and the images: one wall or interface tile far out would
        # otherwise squash the curve into a line; such tiles are marked at the edge.
        core = np.concatenate([cu["eti_5%"].values, cu["eti_95%"].values]
                              + ([lo, hi] if theta is not None and c in theta["mean"]["coupling"].values else []))
        core = core[np.isfinite(core)]
        if core.size:
            pad = 0.15 * (float(np.ptp(core)) or abs(float(core.mean())) or 1.0)
            ymin, ymax = float(core.min()) - pad, float(core.max()) + pad
            if summ is not None and c in summ["coupling"].values:
                tm = summ["mean"].sel(coupling=c).values[used]
                out_lo, out_hi = tm < ymin - 2 * pad, tm > ymax + 2 * pad
                ymin, ymax = min(ymin, tm[~out_lo].min(initial=ymin)), max(ymax, tm[~out_hi].max(initial=ymax))
                for mask, edge, mk in ((out_lo, ymin, "v"), (out_hi, ymax, "^")):
                    if mask.any():
                        ax.plot(jit[mask], np.full(mask.sum(), edge), mk, ms=4, color="#b2182b",
                                label="tile off scale")
            ax.set_ylim(ymin, ymax)
        link = cu["link"].iloc[0] if "link" in cu else ""
        ax.set_title(f"{_mpl(c)}  [{_mpl(link)}]", fontsize=9)
        ax.set_xlabel("Sm fraction y", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].legend(fontsize=6, loc="best")
    out += _img(fig, "couplings against Sm fraction", "Each coupling (raw units; strain &larr; polarisation "
                "couplings oriented by the sign of the tile's mean Px) against the Sm fraction: the LGD link's "
                "median with 50 % and 90 % bands (curves.csv), the posterior means &plusmn; sd of the tiles used "
                "(tile_summaries.nc, jittered; red triangles: tiles off the scale; couplings marked single-domain "
                "use only tiles inside one domain, 'excluded' there says why a tile is out) and the images' "
                "values with 90 % intervals (concentration.nc).")
    if (d / "contraction.json").is_file():
        cont = json.loads((d / "contraction.json").read_text())
        rows = [{"parameter": k, **{kk: (", ".join(f"{x:.3g}" for x in vv) if isinstance(vv, list) else vv)
                                    for kk, vv in v.items()}} for k, v in cont.items() if isinstance(v, dict)]
        bad = [r["parameter"] for r in rows if r.get("converged") is False]
        div = int(cont.get("divergences", 0) or 0)
        if bad or div:
            out += _note(f"The concentration posterior is not to be trusted: "
                         + (f"not converged for {', '.join(bad)} (r_hat &gt; 1.01 or bulk ESS too low)" if bad else "")
                         + ("; " if bad and div else "") + (f"{div} divergent transitions" if div else "")
                         + ". Read no y0 / y_star from it (more tune and draws in the specification, fewer couplings "
                         "or more images).", "warn")
        out += _table(pd.DataFrame(rows), "Shared parameters: prior-to-posterior contraction (contraction.json); "
                      "y_star = y0 + 1/eps0 is identified with free amplitudes, y0 and eps0 separately only with "
                      "informative amplitude priors.")
    try:
        import arviz as az

        idata = az.from_netcdf(d / "concentration.nc")
        if "prior" in idata.groups():
            out += _img(plot_prior_posterior(idata), "prior against posterior of y0, eps0, y_star",
                        "Prior (grey; the concentration.nc prior group, drawn from the PyMC model) against posterior "
                        "(blue). (causalcrystal.plots.plot_prior_posterior)")
    except (OSError, KeyError, ValueError):
        pass  # the tables above carry the numbers; older files have no prior group
    if (d / "couplings.csv").is_file():
        out += _table(pd.read_csv(d / "couplings.csv"), "Couplings (couplings.csv): link, amplitude and, when "
                      "computed, universal-versus-dependent evidence (ELPD difference, its SE, stacking weight).")
    if (d / "links.csv").is_file():
        out += _table(pd.read_csv(d / "links.csv"), "Whole link specifications compared (links.csv): "
                      "leave-one-image-out ELPD of all couplings, difference to the best with its SE, stacking "
                      "weight.")
    return out


def compare_command(ctx: Context) -> str:
    """The `causalcrystal compare` command line for this run (it reads the run's own cells.nc;
    older runs without one need their input files or ``--demo``)."""
    if ctx.cells is not None:
        return f"causalcrystal compare {ctx.run_dir}"
    return f"causalcrystal compare {ctx.run_dir} INPUT_FILES... (or --demo --compositions ... --shape ...)"


def _weights_figure(models):
    """Stacked bars: per image, the stacking weight of each noise family and of each candidate order
    (summed within a tile, averaged over the image's tiles)."""
    by = [c for c in ("family", "candidate") if c in models] or ["model"]
    group = "image" if "image" in models else None
    fig = _fig(4.2 * len(by) + 1.5, 3.2)
    axes = np.atleast_1d(fig.subplots(1, len(by), squeeze=False).ravel())
    for ax, col in zip(axes, by):
        if "tile" in models and group:
            # a tile without some candidate (a duplicate order is fitted once) gives it weight 0
            w = models.pivot_table(index=[group, "tile"], columns=col, values="weight", aggfunc="sum",
                                   fill_value=0.0).groupby(level=group).mean()
        else:
            w = models.groupby([group, col] if group else [col])["weight"].mean()
            w = w.unstack(col) if group else w.to_frame().T
        bottom = np.zeros(len(w))
        for m in w.columns:
            vals = w[m].fillna(0).to_numpy(float)
            ax.bar(np.arange(len(w)), vals, bottom=bottom, label=_mpl(f"{col} {m}" if col == "candidate" else m))
            bottom += vals
        ax.set_xticks(np.arange(len(w)))
        ax.set_xticklabels([_mpl(i) for i in w.index], fontsize=7, rotation=30, ha="right")
        ax.set_ylabel("mean weight over tiles", fontsize=8)
        ax.set_title(_mpl(f"by {col}"), fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return fig


def _stale_note(ctx: Context, manifest: Path, name: str, job: str) -> str:
    """A warning when a derived output was made from an earlier version of this run (the run was
    re-run with --overwrite afterwards), judged by the run fingerprint its manifest recorded."""
    from causalcrystal.engine import run_fingerprint

    if not manifest.is_file():
        return ""
    recorded = json.loads(manifest.read_text()).get("settings", {}).get("run_fingerprint")
    if recorded is None or recorded == run_fingerprint(ctx.run_dir, name):
        return ""
    return _note(f"This {job} output was made from an earlier version of this run (its {name} has changed since); "
                 f"its numbers may not match the posteriors above. Re-run <code>causalcrystal {job}</code> with "
                 "<code>--overwrite</code>.", "warn")


def section_compare(ctx: Context) -> str:
    import pandas as pd

    d = ctx.compare
    hint = _cmd(compare_command(ctx))
    if d is None:
        return _note("No model-comparison output found (looked for "
                     f"<code>{_esc(ctx.run_dir / 'compare')}</code>). Compare candidate DAGs and noise families and "
                     "compute direction probabilities with the command below, then re-run the report (or pass "
                     "<code>--compare DIR</code>):") + hint
    files = sorted(d.glob("*.csv"), key=lambda p: ({"directions.csv": 0, "models.csv": 1, "averaged.csv": 2}
                                                   .get(p.name, 3), p.name))
    if job_status(d, "models.csv") != "finished" or not files:
        # only a finished job's tables are shown: an interrupted one may hold some tables and not others
        return _unfinished(d, "compare", "models.csv", ("models.csv",), ctx.log)
    out = _stale_note(ctx, d / "manifest.json", "discovery.nc", "compare")
    from causalcrystal.intervals import renamed

    tables = {p.name: renamed(pd.read_csv(p)) for p in files}
    dirs = tables.get("directions.csv")
    if dirs is not None and {"level", "pair", "p_forward"} <= set(dirs.columns):
        img_rows = dirs[dirs["level"].astype(str) == "image"]
        if len(img_rows):
            out += _table(img_rows.drop(columns=[c for c in ("level", "tile") if c in img_rows]),
                          "Direction probabilities per image: p_forward = P(first &rarr; second of the pair), "
                          "p_forward_mcse its Monte Carlo standard error (from the finite draws; 0 where "
                          "p_forward is 0 or 1 to numerical precision); elpd_diff = ELPD(forward) - "
                          "ELPD(backward) in the placement of the pair with the most weight (p_forward sums "
                          "over both placements), with its standard error dse and Monte Carlo error "
                          "elpd_diff_mcse.")
        tile_rows = dirs[dirs["level"].astype(str) == "tile"]
        if len(tile_rows) and "tile" in tile_rows:
            t = tile_rows.assign(tile=pd.to_numeric(tile_rows["tile"], errors="coerce"))
            t = t[t["tile"].isin(ctx.tiles.index)]
            pairs = list(dict.fromkeys(t["pair"].astype(str)))
            if pairs:
                rows = [{"label": f"P({p})", "values": t[t["pair"].astype(str) == p].groupby("tile")["p_forward"].mean(),
                         "cmap": "RdBu_r", "vmin": 0, "vmax": 1, "title": f"P({p}) forward"} for p in pairs]
                out += _img(_map_figure(ctx, rows), "direction probability maps",
                            "Per tile, the posterior probability of each pair's forward direction (red: forward, "
                            "blue: backward, white: undecided; grey: no value for that tile).")
            else:
                out += _note("directions.csv has tile rows, but none matches a tile of this run.", "warn")
    models = tables.get("models.csv")
    if models is not None and len(models) and "weight" in models and ({"family", "candidate", "model"} & set(models.columns)):
        out += _img(_weights_figure(models), "model weights", "Stacking weights (models.csv) of the noise families "
                    "and of the candidate causal orders (0 = LiNGAM's most frequent), summed within each tile and "
                    "averaged over the tiles of each image.")
    if models is not None and not len(models):
        out += _note("Directions only (<code>compare --directions-only</code>): no candidate DAG x noise family models "
                     "were fitted, so models.csv and averaged.csv are empty.")
    for name, df in tables.items():
        if not len(df):
            continue
        open_ = " open" if len(df) <= 30 else ""
        out += f"<details{open_}><summary>{_esc(name)} ({len(df)} rows)</summary>{_table(df)}</details>"
    return out


def section_diagnostics(ctx: Context) -> str:
    import pandas as pd

    from causalcrystal.sem import RHAT_MAX

    s = ctx.summary
    target = ctx.manifest.get("settings", {}).get("spec", {}).get("sampler", {}).get("target_ess", 400)
    per_tile = s.groupby("tile").agg(image=("image", "first"), row0=("row0", "first"), col0=("col0", "first"),
                                     max_r_hat=("r_hat", "max"), min_ess_bulk=("ess_bulk", "min"),
                                     divergences=("divergences", "max"), flagged=("flagged", "max"),
                                     **({"flag_reason": ("flag_reason", "first")} if "flag_reason" in s else {}))
    if "flag_reason" in per_tile:
        per_tile["flag_reason"] = per_tile["flag_reason"].fillna("")
    fig = _fig(11, 3.0)
    a1, a2, a3 = fig.subplots(1, 3)
    rh = s["r_hat"].to_numpy(float)
    rh = rh[np.isfinite(rh)]
    a1.hist(rh, bins=40, color="#4d4d4d")
    a1.axvline(RHAT_MAX, color="#d6604d", ls="--", label=f"{RHAT_MAX}")
    a1.set_xlabel("r_hat (tile x edge)", fontsize=8)
    ess = s["ess_bulk"].to_numpy(float)
    ess = ess[np.isfinite(ess)]
    a2.hist(ess, bins=40, color="#4d4d4d")
    a2.axvline(target, color="#d6604d", ls="--", label=f"target {target:g}")
    a2.set_xlabel("bulk ESS (tile x edge)", fontsize=8)
    dv = per_tile["divergences"].to_numpy(int)
    if dv.max() < 40:
        vals, counts = np.unique(dv, return_counts=True)
        a3.bar(vals, counts, width=0.8, color="#4d4d4d")
        a3.set_xticks(np.arange(dv.max() + 1) if dv.max() < 12 else vals)
        a3.set_xlim(-0.8, max(dv.max(), 3) + 0.8)
    else:
        a3.hist(dv, bins=40, color="#4d4d4d")
    a3.set_xlabel("divergences per tile", fontsize=8)
    for a in (a1, a2, a3):
        a.tick_params(labelsize=7)
        a.set_ylabel("count", fontsize=8)
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    n_flag = int(per_tile["flagged"].astype(bool).sum())
    misfit = ("; or 'noise misfit': a posterior predictive check of a variable's residuals against "
              "the fitted noise failed at 1 %") if "flag_reason" in per_tile else ""
    out = _note(f"{n_flag} of {len(per_tile)} tiles flagged ('sampler': r_hat &gt; {RHAT_MAX}, bulk ESS &lt; "
                f"{target:g} or any divergence on an allowed edge{misfit}). Largest r_hat {np.max(rh) if rh.size else np.nan:.4f}, smallest "
                f"bulk ESS {np.min(ess) if ess.size else np.nan:.0f}, {int(dv.sum())} divergences in all.",
                "warn" if n_flag else "note")
    out += _img(fig, "diagnostics histograms")
    rmax = max(RHAT_MAX + 0.01, float(per_tile["max_r_hat"].max()))
    out += _img(_map_figure(ctx, [
        {"label": "max r_hat", "values": per_tile["max_r_hat"], "cmap": "magma_r", "vmin": 1.0, "vmax": rmax,
         "title": "largest r_hat of the tile"},
        {"label": "min ESS", "values": per_tile["min_ess_bulk"], "cmap": "viridis", "vmin": 0,
         "vmax": max(float(per_tile["min_ess_bulk"].max()), target), "title": "smallest bulk ESS of the tile"}]),
        "diagnostic maps", "Where the sampler struggled: each tile's worst r_hat and bulk ESS over its allowed edges.")
    sampler_flag = per_tile["max_r_hat"] > RHAT_MAX
    if sampler_flag.any():
        from causalcrystal.plots import plot_rank

        tile = int(per_tile["max_r_hat"].idxmax())
        out += _img(plot_rank(ctx.run_dir, tile, max_edges=8), f"rank plots of tile {tile}",
                    f"Rank plots of the tile with the largest r_hat ({float(per_tile['max_r_hat'].max()):.3f}; "
                    "<code>causalcrystal.plots.plot_rank</code>), its largest coefficients: each chain's ranks "
                    "should be uniform; a chain whose bars differ from the others' has not mixed with them "
                    "(a tall bar in the same place in every chain is the spike's exact zeros, not a problem).")
    if ctx.cells is not None and "pit_p_effect" in s and s["pit_p_effect"].notna().any():
        from causalcrystal.plots import plot_residual_check

        worst = s.loc[s["pit_p_effect"].idxmin()]
        tile = int(worst["tile"])
        out += _img(plot_residual_check(ctx.run_dir, tile), f"residual check of tile {tile}",
                    f"The tile whose fitted noise describes its residuals worst (smallest PIT p-value: "
                    f"{_esc(worst['effect'])}, p = {float(worst['pit_p_effect']):.2g}; "
                    "<code>causalcrystal.plots.plot_residual_check</code>): histograms of each cell's "
                    "residual PIT under the fitted noise against the uniform (grey: 90 % band). A U shape: "
                    "tails heavier than fitted; a hump: lighter; a slope: skew.")
    flagged = per_tile[per_tile["flagged"].astype(bool)].reset_index()
    if len(flagged):
        out += _table(pd.DataFrame(flagged.drop(columns=["flagged"])), "Flagged tiles")
    else:
        out += _note("No tile flagged.")
    return out


# ---------------------------------------------------------------------------------------------
# interventions: total effects of one tile


def section_interventions(ctx: Context) -> str:
    """Total effects ``(I - B)^-1 - I`` of the first tile with 90 % intervals
    (:func:`causalcrystal.interventions.total_effects_summary` on the lazily opened posterior group),
    as a heat map and a table."""
    import xarray as xr

    from causalcrystal.interventions import total_effects_summary

    tile = int(ctx.tiles.index[0])
    with xr.open_dataset(ctx.run_dir / "posterior.nc", group="posterior", engine="h5netcdf") as post:
        res = total_effects_summary(post[["B", "c"]], tile=tile, prob=0.9)
        if isinstance(res, xr.DataArray):
            res = res.to_dataset(name="value")
        res = res.load()
    where = (f"tile {tile} ({_esc(ctx.tiles.loc[tile, 'image'])}, row0 {int(ctx.tiles.loc[tile, 'row0'])}, "
             f"col0 {int(ctx.tiles.loc[tile, 'col0'])})")
    if not isinstance(res, xr.Dataset) or "mean" not in res:
        return _note(f"Total effects of {where}:") + f"<pre>{_esc(res)}</pre>"
    out = ""
    if {"effect", "cause"} <= set(res["mean"].dims):
        M = res["mean"].transpose("effect", "cause").values.astype(float)
        effects, causes = list(res["effect"].values), list(res["cause"].values)
        possible = res["possible"].transpose("effect", "cause").values.astype(bool) if "possible" in res else \
            ~np.eye(len(effects), dtype=bool)
        show = np.where(possible, M, np.nan)
        vm = float(np.nanmax(np.abs(show))) if np.isfinite(show).any() else 1.0
        fig = _fig(6.0, 5.0)
        ax = fig.subplots()
        ax.set_facecolor("#eeeeee")
        im = ax.imshow(np.ma.masked_invalid(show), cmap="RdBu_r", vmin=-vm, vmax=vm)
        for i in range(len(effects)):
            for j in range(len(causes)):
                if np.isfinite(show[i, j]):
                    ax.text(j, i, f"{show[i, j]:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if abs(show[i, j]) > 0.6 * vm else "black")
        ax.set_xticks(range(len(causes)), [_mpl(c) for c in causes], fontsize=8, rotation=45)
        ax.set_yticks(range(len(effects)), [_mpl(e) for e in effects], fontsize=8)
        ax.set_xlabel("cause (intervened on)", fontsize=8)
        ax.set_ylabel("effect", fontsize=8)
        fig.colorbar(im, ax=ax).set_label("total effect", fontsize=8)
        out += _img(fig, "total effects matrix", f"Posterior mean total effect T[effect, cause] of {where}: the "
                    "change of the effect's mean per unit shift of the cause, over all directed paths "
                    f"({_esc(res.attrs.get('units', ''))}); grey: no directed path in the tile's causal order.")
        table = res.to_dataframe().reset_index()
        keep = [c for c in ("effect", "cause", "mean", "sd", "hdi_5%", "hdi_95%") if c in table]
        if "possible" in table:
            table = table[table["possible"].astype(bool)]
        out += (f"<details><summary>Table: total effects of {where}</summary>"
                + _table(table[keep], "90 % highest-density intervals; entries with a directed path only.")
                + "</details>")
        if np.isfinite(show).any():
            # the strongest total effect of this tile, in every tile of the run
            i, j = np.unravel_index(np.nanargmax(np.abs(show)), show.shape)
            e, c = str(effects[i]), str(causes[j])
            try:
                out += _img(plot_total_effect_map(ctx.run_dir, e, c), f"map of the total effect {e} <- {c}",
                            f"Total effect {_esc(e)} &larr; {_esc(c)} (the largest above) in every tile: posterior mean, "
                            "hatched where the 90 % interval spans 0 (causalcrystal.plots.plot_total_effect_map).")
            except Exception as err:  # noqa: BLE001 - the tile-0 results above stand on their own
                ctx.log(f"report: WARNING: total-effect map skipped ({type(err).__name__}: {err})")
    else:
        out += _table(res.to_dataframe().reset_index(), f"Total effects of {where}.")
    return out


SECTIONS = (
    ("overview", "Overview", None),
    ("settings", "Run settings", section_settings),
    ("versions", "Package versions", section_versions),
    ("provenance", "Data provenance", section_provenance),
    ("graphs", "Causal graphs per image", section_graphs),
    ("maps", "Coupling maps", section_maps),
    ("polarisation", "Polarisation over the image", section_polarisation),
    ("pca", "PCA of the coupling maps", section_pca),
    ("concentration", "Couplings against Sm fraction (LGD)", section_concentration),
    ("compare", "Model comparison and edge directions", section_compare),
    ("diagnostics", "Sampler diagnostics", section_diagnostics),
    ("interventions", "Interventions (total effects)", section_interventions),
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1280px;margin:1.5em auto;
padding:0 1em;color:#222;line-height:1.4}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:2px solid #ddd;padding-bottom:.2em;margin-top:2em}
h3{margin-bottom:.3em}section{margin-bottom:1.5em}figure{margin:.6em 0}img{max-width:100%;height:auto}
figcaption,.cap{font-size:.88em;color:#444;max-width:1000px}.note{color:#333}.warn{color:#8a4b00;background:#fff4e0;
padding:.4em .6em;border-left:4px solid #e08a00}.error{color:#8b0000;background:#fde8e8;padding:.4em .6em;
border-left:4px solid #c00}.scroll{overflow-x:auto;max-height:34em;overflow-y:auto}
table.tbl{border-collapse:collapse;font-size:.82em;margin:.4em 0}table.tbl th,table.tbl td{border:1px solid #ddd;
padding:2px 6px;text-align:right}table.tbl th{background:#f3f3f3}table.tbl td{white-space:nowrap}table.kv th{text-align:left}
table.kv td{text-align:left}pre.cmd{background:#f5f5f5;padding:.5em;overflow-x:auto}summary{cursor:pointer;
margin:.4em 0}code{background:#f3f3f3;padding:0 .2em}
"""

# Counts the images the browser decoded (the test reads data-images-decoded from the DOM).
_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (im) { return im.complete && im.naturalWidth > 0; }).length;
  document.body.dataset.imagesDecoded = String(ok);
});
"""


def render(ctx: Context) -> str:
    """The report as one HTML string."""
    parts = []
    n_failed = 0
    for sid, title, fn in SECTIONS:
        if fn is None:
            continue
        clock = time.perf_counter()
        try:
            body = fn(ctx)
        except Exception as err:  # noqa: BLE001 -- one broken section must not cost the whole report
            n_failed += 1
            tb = traceback.format_exception_only(type(err), err)[-1].strip()
            ctx.log(f"report: WARNING: section {sid!r} failed: {tb}")
            body = f"<div class='error report-error'>This section could not be drawn: {_esc(tb)}</div>"
        parts.append((sid, title, body))
        ctx.log(f"report: {title} ({time.perf_counter() - clock:.1f}s)")
    overview = section_overview(ctx, [(sid, title, None) for sid, title, _ in SECTIONS])
    parts.insert(0, ("overview", "Overview", overview))
    n_img = sum(body.count("<img ") for _, _, body in parts)
    now = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    title = f"causalcrystal report: {ctx.run_dir.resolve().name}"
    sections = "\n".join(f"<section id='{sid}'><h2>{_esc(t)}</h2>\n{body}\n</section>" for sid, t, body in parts)
    return (f"<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'><meta name='generator' content='causalcrystal'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{_esc(title)}</title><style>{_CSS}</style></head>\n"
            f"<body data-images-total='{n_img}' data-sections-failed='{n_failed}'>\n"
            f"<h1>{_esc(title)}</h1><p class='note'>Written {now} by causalcrystal from "
            f"<code>{_esc(ctx.run_dir.resolve())}</code>.</p>\n{sections}\n<script>{_SCRIPT}</script>\n</body></html>\n")


def write_report(run_dir, out=None, *, concentration=None, compare=None, overwrite: bool = False,
                 log=None) -> Path:
    """Write the HTML report of the finished run in ``run_dir`` to ``out`` (default
    ``RUN_DIR/report.html``) and return its path.

    ``concentration`` / ``compare``: output folders of ``causalcrystal concentration`` /
    ``compare`` (default: ``RUN_DIR/concentration`` / ``RUN_DIR/compare`` when they exist). A
    report causalcrystal wrote earlier is replaced (it is derived from the run and can be written
    again); any other file at ``out`` only with ``overwrite=True``. Written atomically.
    ``log``: a callable for progress messages (default: stderr).
    """
    from causalcrystal.logs import resolve

    log = resolve(log)  # default: the 'causalcrystal' logger
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / "report.html"
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder; give --out a file name such as {out / 'report.html'}.")
    # a report this project generated is regenerated (it is derived, nothing of the user's is in it);
    # any other file is the user's and is only replaced on request
    if out.exists() and not overwrite and not generated_by_us(out):
        raise FileExistsError(f"{out} exists and is not a causalcrystal report; pass --overwrite (CLI) / "
                              "overwrite=True (Python) to replace it, or choose another --out.")
    clock = time.perf_counter()
    log(f"report: reading {run_dir}")
    ctx = load_context(run_dir, concentration, compare, log)
    text = render(ctx)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_text(out, text)
    log(f"report: wrote {out} ({len(text) / 1e6:.1f} MB, {time.perf_counter() - clock:.1f}s)")
    return out
