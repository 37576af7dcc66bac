"""The ``causalcrystal`` command: a thin layer over the Python API.

Every verb calls public functions of the package; nothing here is unavailable to a notebook user.
Heavy modules are imported inside the verbs so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from causalcrystal.logs import warnings_only


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every option's default: those whose help text does not say it get
    "(default: X)" appended; flags (default off) and options without a default get nothing."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = ",".join(str(v) for v in action.default) if isinstance(action.default, (list, tuple)) \
            else action.default
        return f"{text} (default: {str(default).replace('%', '%%')})"


def _parents() -> dict[str, argparse.ArgumentParser]:
    """Options several verbs share, defined once (argparse parent parsers)."""
    seed = argparse.ArgumentParser(add_help=False)
    seed.add_argument("--seed", type=int, default=0, help="random seed (same inputs and seed, same numbers; default 0)")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=int, default=None,
                         help="local worker processes (default: all cores; 1 = run in this process)")
    workers.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port) to run tiles on")
    xy = argparse.ArgumentParser(add_help=False)
    xy.add_argument("--xy-order", choices=["xy", "yx"], default="xy",
                    help="row order of xy_COM in Sm-BFO .h5 files (default xy: row 0 is x)")
    xy.add_argument("--exclude-image", action="append", default=[], metavar="LABEL",
                    help="leave this image out of the inputs (its label as `inspect` lists it; repeat, or "
                         "comma-separate, for several)")
    quiet = argparse.ArgumentParser(add_help=False)
    quiet.add_argument("--quiet", action="store_true", help="no progress bars or progress messages (warnings still show)")
    return {"seed": seed, "workers": workers, "xy": xy, "quiet": quiet}


def _excluded(args) -> list[str]:
    """``--exclude-image`` values (repeated and/or comma-separated) as one list of labels."""
    return [v.strip() for text in getattr(args, "exclude_image", None) or [] for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0,0.07,0.1, got {text!r}")


def _tile_size(text: str):
    if text.strip().lower() == "whole":
        return "whole"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give cells per side (e.g. 16) or 'whole'") from None


def _cmd_columns(args) -> int:
    from causalcrystal.columns import descriptors_from_columns, find_columns, image_data, plot_columns, save_columns

    out = Path(args.out)
    fig_path = Path(args.figure) if args.figure else out.with_suffix(".png")
    for p in (out, fig_path):
        if p.exists() and not args.overwrite:
            print(f"error: {p} exists; pass --overwrite to replace it or choose another --out/--figure.", file=sys.stderr)
            return 2
    try:
        cols = find_columns(args.image, projection=args.projection, pixel_size=args.pixel_size, pixel_unit=args.unit,
                            separation=args.separation)
    except ImportError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    save_columns(cols, out, overwrite=args.overwrite)
    lab = cols["sublattice"].values.astype(str)
    print(f"wrote {out}: {(lab == 'A').sum()} A and {(lab == 'B').sum()} B columns "
          f"(pixel size {cols.attrs.get('pixel_size', 'unknown')} {cols.attrs.get('pixel_unit', '')})")
    cells = None
    try:
        cells = descriptors_from_columns(cols, projection=args.projection)
    except ValueError as err:  # the figure is how a user sees what went wrong
        print(f"warning: no cells from these columns yet: {err}", file=sys.stderr)
    import matplotlib

    matplotlib.use("Agg")
    fig = plot_columns(cols, image_data(cols), cells)
    fig.savefig(fig_path, dpi=110, bbox_inches="tight")
    print(f"wrote {fig_path}: the columns{' and each cell' + chr(39) + 's B offset' if cells is not None else ''} "
          "over the image; check the lattice there before going on")
    return 0


def _cmd_descriptors(args) -> int:
    from causalcrystal.columns import descriptors_from_columns, read_columns
    from causalcrystal.io import write_netcdf

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it or choose another --out.", file=sys.stderr)
        return 2
    cols = read_columns(args.columns)
    label = args.label or Path(args.columns).stem
    cells = descriptors_from_columns(cols, image=label, sm_fraction=args.sm_fraction, projection=args.projection,
                                     max_offset=args.max_offset)
    write_netcdf(cells, out, overwrite=args.overwrite)
    print(f"wrote {out}: {cells.sizes['cell']} cells of image {label!s} "
          f"(projection {json.loads(cells.attrs['atoms'])['projection']}, lengths in {cells['a'].attrs.get('units')})")
    return 0


def _cmd_simulate(args) -> int:
    from causalcrystal.io import write_netcdf
    from causalcrystal.simulator import simulate

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    ds = simulate(
        args.compositions,
        shape=tuple(args.shape),
        images_per_composition=args.images_per_composition,
        seed=args.seed,
        noise=args.noise,
        n_walls=args.walls,
        nonfinite_fraction=args.nonfinite_fraction,
        outlier_fraction=args.outlier_fraction,
        geometric_vol=args.geometric_vol,
    )
    write_netcdf(ds, out, overwrite=args.overwrite)
    n_img = len(set(ds["image"].values.tolist()))
    print(f"wrote {out}: {n_img} image(s), {ds.sizes['cell']} cells, ground truth included (seed {args.seed})")
    return 0


def inspect_text(cells) -> str:
    """Human-readable summary of a cell table: images, compositions, cells, non-finite counts, ranges."""
    import json

    import numpy as np

    from causalcrystal.cells import DESCRIPTORS, display_label, excluded_images, images, nonfinite_counts

    # Labels and paths come from users' files: print them safely (no control characters, no
    # undecodable file-name bytes, no np.str_ reprs).
    lines = []
    table = images(cells)
    lines.append(f"source: {display_label(cells.attrs.get('source', ''))}")
    lines.append(f"{table.sizes['image']} image(s), {cells.sizes['cell']} cells")
    left_out = excluded_images(cells)
    if left_out:
        lines.append(f"left out (--exclude-image): {', '.join(display_label(v) for v in left_out)}")
    width = max([16] + [len(display_label(lab)) + 2 for lab in table["image"].values])
    lines.append(f"{'image':<{width}}{'Sm fraction':>12}{'cells':>8}{'grid':>12}  source")
    for k, lab in enumerate(table["image"].values):
        grid = f"{int(table['n_rows'][k])}x{int(table['n_cols'][k])}"
        lines.append(f"{display_label(lab):<{width}}{float(table['sm_fraction'][k]):>12.3f}"
                     f"{int(table['n_cells'][k]):>8}{grid:>12}  {display_label(table['source'].values[k])}")
    bad = nonfinite_counts(cells)
    dropped = json.loads(cells.attrs.get("nonfinite_dropped", "{}") or "{}")
    lines.append("non-finite values: " + ("none" if not bad else ""))
    for lab, per in bad.items():
        lines.append(f"  {display_label(lab)}: " + ", ".join(f"{v}={c}" for v, c in per.items()))
    if dropped:
        lines.append("cells dropped by the reader's non-finite policy:")
        for lab, per in dropped.items():
            lines.append(f"  {display_label(lab)}: " + ", ".join(f"{v}={c}" for v, c in per.items()))
    # A descriptor non-finite in every cell of an image: `run` (nonfinite='drop') refuses that image.
    img = cells["image"].values.astype(str)
    for lab in dict.fromkeys(img.tolist()):
        m = img == lab
        whole = [v for v in DESCRIPTORS if not np.isfinite(cells[v].values[m]).any()]
        if whole:
            lines.append(f"WARNING: image {display_label(lab)}: {', '.join(whole)} non-finite in every cell; "
                         "`run` refuses this image (it would lose all its cells). Fix the export of that column "
                         f"or leave the image out (--exclude-image {display_label(lab)}).")
    # what `run` refuses (a constant descriptor) or warns about (quantised, nearly constant), said here first
    from causalcrystal.discovery import coarse_descriptors, constant_descriptors

    for lab, v, n, value in constant_descriptors(cells):
        out = (f"this image is left out (--exclude-image {display_label(lab)}) or fixed" if len(set(img.tolist())) > 1
               else "fixed")
        lines.append(f"WARNING: image {display_label(lab)}: {v} is constant ({value:g} in all {n} cells); "
                     f"`run` refuses the whole table unless {out}, or {v} is left out of the SEM (--derived {v}): "
                     "no variation, no causal information.")
    lines += [f"WARNING: {text}" for text in coarse_descriptors(cells)]
    lines.append(f"{'descriptor':<10}{'units':>12}{'min':>12}{'median':>12}{'max':>12}")
    for v in DESCRIPTORS:
        vals = cells[v].values
        fin = vals[np.isfinite(vals)]
        lo, med, hi = (np.min(fin), np.median(fin), np.max(fin)) if fin.size else (np.nan,) * 3
        lines.append(f"{v:<10}{cells[v].attrs.get('units', ''):>12}{lo:>12.4g}{med:>12.4g}{hi:>12.4g}")
    if "true_B" in cells:
        lines.append("ground truth: present (simulated data; true_B, true_order, lgd_params)")
    return "\n".join(lines)


def _cmd_inspect(args) -> int:
    from causalcrystal.io import read

    cells = read(args.inputs, nonfinite="keep", xy_order=args.xy_order, exclude_images=_excluded(args))
    try:
        print(inspect_text(cells))
        sys.stdout.flush()
    except BrokenPipeError:  # `causalcrystal inspect ... | head`: the reader left, not an error
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output folder (discovery.nc, posterior.nc, summary.csv)")
    p.add_argument("--tile-size", type=_tile_size, default=16,
                   help="tile side in unit cells (default 16), or 'whole': one tile per image (small images)")
    p.add_argument("--stride", type=int, default=None, help="tile stride (default: half the tile size)")
    p.add_argument("--min-cells", type=int, default=None, help="smallest tile kept, in cells (default: half a full tile, at least 4 per descriptor = 32)")
    p.add_argument("--bootstrap", type=int, default=5,
                   help="LiNGAM bootstrap resamples per tile (default 5: more bought no better prior, see benchmarks)")
    p.add_argument("--image-bootstrap", type=int, default=100,
                   help="LiNGAM bootstrap resamples per whole image (default 100)")
    p.add_argument("--exogenous", default="I14,I5",
                   help="comma-separated descriptors LiNGAM must treat as exogenous; 'none' for no prior knowledge")
    p.add_argument("--standardize", choices=["image", "tile", "none"], default="image",
                   help="z-score descriptors per image (default), per tile, or not at all")
    p.add_argument("--model", default="mog",
                   help="model specification: a name in models/ or a .toml path (default mog: mixture-of-Gaussians "
                        "noise, Gibbs sampler)")
    p.add_argument("--noise", choices=["mog", "laplace", "studentt", "gennorm", "normal"], default=None,
                   help="override the model's noise family ('normal' warns: directions are not identified)")
    p.add_argument("--sampler", choices=["gibbs", "nutpie", "pymc"], default=None,
                   help="sampler: gibbs (exact, mog only) or a NUTS implementation (any family)")
    p.add_argument("--derived", default="auto",
                   help="descriptors that are functions of others (Vol = a b sin(alpha)): 'auto' finds near-"
                        "deterministic relations and leaves the derived column out of discovery and the SEM; a "
                        "comma-separated list declares them; 'none' keeps all (and only warns) (default auto)")
    p.add_argument("--orders", type=int, default=3,
                   help="candidate causal orders per tile the posterior averages over, weighted by PSIS-LOO "
                        "(pseudo-BMA+); 1 = condition on LiNGAM's best order (default 3)")
    p.add_argument("--draws", type=int, default=None, help="kept draws per chain (default: the model's; mog 500)")
    p.add_argument("--tune", type=int, default=None, help="tuning draws per chain (default: the model's; mog 200)")
    p.add_argument("--thin", type=int, default=None,
                   help="run draws x thin per chain, keep every thin-th (default: the model's; mog 2)")
    p.add_argument("--chains", type=int, default=None,
                   help="chains per tile (default: the model's; mog 2; 4 makes r_hat more reliable, ~1.4x time)")
    p.add_argument("--scouts", type=int, default=None,
                   help="gibbs: short scout chains per equation the kept chains start from, so that none starts in a "
                        "local mode of the mixture (default: the model's; mog 8; 0 = none, ~10%% less sampling time)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the run in --out (the old one is moved to --out/.causalcrystal-previous and deleted "
                        "only when the new run finishes; files causalcrystal did not write are never touched)")
    p.add_argument("--keep-tiles", action="store_true",
                   help="keep the per-tile work files (--out/tiles, ~2 MB per tile) after the run finishes")
    p.add_argument("--keep-loglik", action="store_true",
                   help="store the pointwise log-likelihood in posterior.nc (~1 MB per 256-cell tile; by default "
                        "causalcrystal.tile_loo recomputes a tile's on demand)")
    p.add_argument("--lossless", action="store_true",
                   help="store the posterior draws in posterior.nc exactly as sampled (by default each quantity's "
                        "draws are rounded to a grid of <= 1/4096 of its posterior s.d. in the tile, so the error is <= "
                        "sd/8192: ~20-30%% smaller)")


def _run(cells, args) -> int:
    from causalcrystal.engine import run_pipeline
    from causalcrystal.sem import load_spec

    spec = load_spec(args.model).with_(noise=args.noise, name=args.sampler, draws=args.draws, tune=args.tune,
                                       thin=args.thin, chains=args.chains, scouts=args.scouts)
    exo = [] if args.exogenous.strip().lower() in ("", "none") else [v.strip() for v in args.exogenous.split(",")]
    res = run_pipeline(cells, args.out, tile_size=args.tile_size, stride=args.stride, min_cells=args.min_cells,
                       n_bootstrap=args.bootstrap, image_bootstrap=args.image_bootstrap, exogenous=exo,
                       standardize=args.standardize, spec=spec, n_orders=args.orders, derived=args.derived,
                       seed=args.seed,
                       scheduler=args.scheduler,
                       workers=args.workers, overwrite=args.overwrite, progress=not args.quiet,
                       log=warnings_only if args.quiet else None,
                       keep_tiles=getattr(args, "keep_tiles", False), keep_loglik=getattr(args, "keep_loglik", False),
                       lossless=getattr(args, "lossless", False))
    return 0 if res["finished"] else 3


def _cmd_run(args) -> int:
    from causalcrystal.io import read

    return _run(read(args.inputs, nonfinite=args.nonfinite, xy_order=args.xy_order,
                     exclude_images=_excluded(args)), args)


def _cmd_demo(args) -> int:
    from causalcrystal.simulator import simulate

    cells = simulate(args.compositions, shape=tuple(args.shape), seed=args.seed)
    print(f"demo: simulated {len(args.compositions)} images of {args.shape[0]}x{args.shape[1]} cells "
          f"(LGD model, seed {args.seed})", file=sys.stderr)
    rc = _run(cells, args)
    if rc != 0:
        return rc
    from causalcrystal.report import write_report

    log = warnings_only if args.quiet else None
    if not args.no_concentration:
        from causalcrystal.concentration import ConcentrationError, run_concentration

        try:
            run_concentration(args.out, Path(args.out) / "concentration", "lgd", seed=args.seed,
                              overwrite=args.overwrite, against=["universal"], log=log)
        except ConcentrationError as err:  # e.g. a coupling no tile's causal order allows
            print(f"demo: concentration model skipped: {err}", file=sys.stderr)
    write_report(args.out, Path(args.out) / "report.html", overwrite=args.overwrite, log=log)
    return rc


def _cmd_report(args) -> int:
    from causalcrystal.report import write_report

    out = write_report(args.run_dir, args.out, concentration=args.concentration, compare=args.compare,
                       overwrite=args.overwrite, log=warnings_only if args.quiet else None)
    if args.quiet:  # otherwise the job's own message said it
        print(f"wrote {out}")
    return 0


def _cmd_concentration(args) -> int:
    from causalcrystal.concentration import run_concentration

    out = args.out if args.out is not None else str(Path(args.run_dir) / "concentration")
    run_concentration(args.run_dir, out, args.spec, seed=args.seed, overwrite=args.overwrite,
                      against=[a for a in (args.against or "").split(",") if a],
                      universality_check=not args.no_universality,
                      log=warnings_only if args.quiet else None)
    return 0


def _cmd_compare(args) -> int:
    from causalcrystal.compare import compare_run, load_run

    if args.demo and args.inputs:
        print("error: give the input files the run was made from or --demo, not both (or neither: the run's own "
              "cells.nc is used).", file=sys.stderr)
        return 2
    if args.directions_only and args.families is not None:
        # the direction tests always use the run's own model: a --model here would be recorded in the
        # manifest and silently not used (a fresh-user check got mog's numbers with --model laplace)
        print("error: --model is not used with --directions-only: the direction tests use the run's own model "
              "(noise family and priors). Drop --model, or leave out --directions-only to compare models.",
              file=sys.stderr)
        return 2
    stored = Path(args.run_dir) / "cells.nc"
    if _excluded(args) and not args.inputs:
        print("error: --exclude-image applies to input files given here; the run's own cells (cells.nc, or --demo) "
              "are already the cells it was made from. Drop --exclude-image.", file=sys.stderr)
        return 2
    if args.demo:
        from causalcrystal.simulator import simulate

        # the demo simulates with its --seed, which is also the run's seed in the manifest
        cells = simulate(args.compositions, shape=tuple(args.shape), seed=load_run(args.run_dir)["settings"]["seed"])
    elif args.inputs:
        from causalcrystal.io import read

        cells = read(args.inputs, xy_order=args.xy_order, exclude_images=_excluded(args))
    elif stored.is_file():
        from causalcrystal.io import read

        cells = read(stored)  # the cells the run was made from, as the run stored them
    else:
        print(f"error: {args.run_dir} has no cells.nc (runs made before it was stored): give the input files the "
              "run was made from, or --demo for a `causalcrystal demo` folder.", file=sys.stderr)
        return 2
    families = args.families if args.families is not None else "mog,laplace"
    out = args.out if args.out is not None else str(Path(args.run_dir) / "compare")
    tiles = None
    if args.tiles is not None:
        try:
            tiles = [int(v) for v in args.tiles.split(",") if v.strip()]
        except ValueError:
            print(f"error: --tiles expects comma-separated tile indices like 0,3,5, got {args.tiles!r}", file=sys.stderr)
            return 2
    res = compare_run(args.run_dir, out, cells, candidates=args.candidates,
                      families=[f.strip() for f in families.split(",") if f.strip()],
                      pairs=[p.strip() for p in args.pairs.split(",") if p.strip()], tiles=tiles,
                      max_tiles=args.max_tiles, directions=not args.no_directions,
                      image_directions=not args.no_image_directions, models=not args.directions_only,
                      draws=args.draws, seed=args.seed,
                      scheduler=args.scheduler, workers=args.workers, overwrite=args.overwrite,
                      progress=not args.quiet, log=warnings_only if args.quiet else None)
    return 0 if res["finished"] else 3


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and documentation)."""
    parser = argparse.ArgumentParser(
        prog="causalcrystal",
        description="Bayesian causal structure of crystalline solids imaged atom by atom.",
        formatter_class=_HelpFormatter,
    )
    par = _parents()
    from causalcrystal import __version__

    parser.add_argument("--version", action="version", version=f"causalcrystal {__version__}")
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    p = sub.add_parser("simulate", help="simulate an LGD composition series with ground truth", parents=[par["seed"]],
                       description="Simulate Sm-BFO films (LGD model, known causal truth) into a netCDF file.")
    p.add_argument("--out", required=True, help="output netCDF file (.nc)")
    p.add_argument("--compositions", type=_floats, default=[0.0, 0.07, 0.10, 0.13, 0.20],
                   help="comma-separated Sm fractions (default 0,0.07,0.1,0.13,0.2)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), default=[64, 64],
                   help="unit cells per image (default 64 64)")
    p.add_argument("--images-per-composition", type=int, default=1, help="replicate images per composition")
    p.add_argument("--noise", choices=["laplace", "uniform"], default="laplace", help="exogenous noise family")
    p.add_argument("--walls", type=int, default=1, help="180-degree domain walls per image (default 1)")
    p.add_argument("--nonfinite-fraction", type=float, default=0.0, help="share of cells given a NaN/inf value")
    p.add_argument("--outlier-fraction", type=float, default=0.0, help="share of cells given an outlier")
    p.add_argument("--geometric-vol", action="store_true",
                   help="compute Vol = a b sin(alpha) exactly per cell, as real unit-cell tables do")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("columns", help="atom columns (A and B sites) from an ADF/HAADF image (Atomap)",
                       description="Find the A- and B-site atom columns of a perovskite ADF/HAADF image with Atomap "
                                   "(pip install -e '.[atomap]'); write them to a netCDF file and a figure of the "
                                   "columns and cells over the image.")
    p.add_argument("image", help="image file HyperSpy reads (.hspy, .hdf5, .dm3/.dm4, .emd, .tif, ...)")
    p.add_argument("--out", required=True, help="columns file to write (.nc)")
    p.add_argument("--projection", choices=["110", "001"], default="110",
                   help="zone axis: 110 (B at the A-A mid-points along [001]) or 001 (B at the A-square centres)")
    p.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size (default: the image's calibration), in --unit")
    p.add_argument("--unit", choices=["nm", "angstrom", "pm"], default=None,
                   help="unit of the pixel size (needed when the image's calibration has none)")
    p.add_argument("--separation", type=float, default=None,
                   help="peak search distance in pixels (default: 1.5 angstrom for 110, 2.1 for 001)")
    p.add_argument("--figure", default=None, help="figure to write (default: --out with .png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out and --figure if they exist")
    p.set_defaults(func=_cmd_columns)

    p = sub.add_parser("descriptors", help="the cell table (8 descriptors per unit cell) from a columns file",
                       description="Per-unit-cell descriptors from the A and B columns of `causalcrystal columns`, "
                                   "in angstrom and degrees when the pixel size is known; writes a netCDF cell table "
                                   "for `run`.")
    p.add_argument("columns", help="columns file from `causalcrystal columns`")
    p.add_argument("--out", required=True, help="cell table to write (.nc)")
    p.add_argument("--label", default=None, help="image label (default: the columns file's name)")
    p.add_argument("--sm-fraction", type=float, default=0.0, help="Sm fraction of this image, 0-1 (default 0)")
    p.add_argument("--projection", choices=["auto", "110", "001"], default="auto",
                   help="where the B columns sit (default auto: from their position in the A lattice)")
    p.add_argument("--max-offset", type=float, default=0.35,
                   help="largest accepted B offset, as a fraction of the shorter A spacing (default 0.35)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_cmd_descriptors)

    p = sub.add_parser("inspect", help="summarise input files (images, compositions, cells, ranges)", parents=[par["xy"]],
                       description="Summarise inputs: images, Sm fractions, cells, non-finite counts, ranges.")
    p.add_argument("inputs", nargs="+", help="Sm-BFO .h5 files or folders, .csv, .parquet or .nc")
    p.set_defaults(func=_cmd_inspect)

    jobs = [par["seed"], par["workers"], par["quiet"]]
    p = sub.add_parser("run", help="LiNGAM discovery + Bayesian SEM per tile on input files",
                       parents=[par["xy"], *jobs],
                       description="Discovery, DAG priors and a Bayesian SEM posterior for every tile.")
    p.add_argument("inputs", nargs="+", help="Sm-BFO .h5 files or folders, .csv, .parquet or .nc")
    p.add_argument("--nonfinite", choices=["drop", "raise"], default="drop",
                   help="cells with NaN/inf descriptors: drop them with a warning (default) or refuse the input")
    _run_options(p)
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("demo", help="simulate a small series and run the whole pipeline on it", parents=jobs,
                       description="Simulate a small LGD series with ground truth and run it end to end "
                                   "(results and report.html in --out).")
    _run_options(p)
    p.add_argument("--compositions", type=_floats, default=[0.0, 0.1, 0.2], help="Sm fractions (default 0,0.1,0.2)")
    p.add_argument("--no-concentration", action="store_true",
                   help="skip the LGD concentration model (OUT/concentration; about a minute)")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), default=[24, 24],
                   help="unit cells per image (default 24 24)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("report", help="one self-contained HTML report of a finished run", parents=[par["quiet"]],
                       description="Write one self-contained HTML file (figures embedded) of a finished run: "
                                   "settings, versions, provenance, causal graphs, coupling maps, PCA, concentration "
                                   "dependence, model comparison and directions, diagnostics, interventions.")
    p.add_argument("run_dir", help="folder of a finished `causalcrystal run` or `demo`")
    p.add_argument("--out", default=None, help="output HTML file (default RUN_DIR/report.html)")
    p.add_argument("--concentration", default=None,
                   help="output folder of `causalcrystal concentration` (default: RUN_DIR/concentration if present)")
    p.add_argument("--compare", default=None,
                   help="output folder of `causalcrystal compare` (default: RUN_DIR/compare if present)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a file at --out that is not a causalcrystal report (an earlier report is always "
                        "replaced: it is derived from the run)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("concentration", help="LGD hierarchical model of the couplings against Sm fraction",
                       parents=[par["seed"], par["quiet"]],
                       description="Two-stage hierarchical model over a finished run: tile posteriors -> image "
                                   "values -> LGD links of the Sm fraction, with y0 (MPB), eps0 and universality "
                                   "evidence (LOO) per coupling.")
    p.add_argument("run_dir", help="folder of a finished `causalcrystal run` (has posterior.nc)")
    p.add_argument("--out", default=None,
                   help="output folder (default RUN_DIR/concentration, where `report` looks; not the run folder itself)")
    # --model everywhere names a model specification (run: models/, here: models/concentration/);
    # --spec, its earlier name, still works
    p.add_argument("--model", "--spec", dest="spec", default="lgd", metavar="NAME",
                   help="concentration model specification: a name in models/concentration/ or a .toml path "
                        "(default lgd)")
    p.add_argument("--against", default="",
                   help="compare the whole specification with alternatives by leave-one-image-out LOO, comma-"
                        "separated: a link name (universal, quadratic, ps, cross: every coupling of --spec on that "
                        "link) or a specification name/path with the same couplings; writes links.csv (one stage-2 "
                        "fit each, seconds after the first compile)")
    p.add_argument("--no-universality", action="store_true",
                   help="skip the per-coupling universal vs dependent comparison (one fit instead of 1 + couplings)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result in --out")
    p.set_defaults(func=_cmd_concentration)

    p = sub.add_parser(
        "compare", help="compare candidate DAGs x noise families per tile; model averaging; edge directions",
        parents=[par["xy"], *jobs],
        description="For each tile of a finished run: the SEM under each of the top --candidates LiNGAM causal orders "
                    "x each --families noise family, compared by PSIS-LOO with stacking weights; coefficients "
                    "averaged over the models; P(a -> b) per tile and per whole image for each --pairs pair, from "
                    "the cells the run stored (RUN_DIR/cells.nc; or the input files given). Cost: per tile (distinct orders <= "
                    "K) x families SEM fits + 2 per pair, plus 2 per pair and image; per 256-cell fit ~3 s "
                    "(laplace) or ~6 s (studentt) per worker after a 10-30 s compile per family and worker: with the "
                    "defaults ~35 s of worker time per tile, ~30 min for 100 tiles on 2 cores (use --max-tiles for a "
                    "first look; --directions-only for a direction map over every tile, ~1.5 s of worker time per "
                    "tile). Outputs in --out: models.csv, averaged.csv, directions.csv, manifest.json; "
                    "an interrupted compare resumes.")
    p.add_argument("run_dir", help="folder of a `causalcrystal run` or `demo` (has discovery.nc)")
    p.add_argument("inputs", nargs="*", help="the input files the run was made from (as given to `run`; default: "
                                             "the run's own RUN_DIR/cells.nc)")
    p.add_argument("--demo", action="store_true",
                   help="re-create the cells of a `causalcrystal demo` folder instead of reading inputs "
                        "(use the demo's --compositions/--shape; the seed is the run's)")
    p.add_argument("--compositions", type=_floats, default=[0.0, 0.1, 0.2], help="with --demo: the demo's Sm fractions")
    p.add_argument("--shape", type=int, nargs=2, metavar=("ROWS", "COLS"), default=[24, 24],
                   help="with --demo: the demo's cells per image")
    p.add_argument("--out", default=None,
                   help="output folder (default RUN_DIR/compare, where `report` looks; not the run folder itself)")
    p.add_argument("--candidates", type=int, default=3,
                   help="LiNGAM candidate DAGs per tile to compare, most frequent first (default 3; equal orders "
                        "count once)")
    p.add_argument("--model", "--families", dest="families", default=None, metavar="NAMES",
                   help="comma-separated model specifications (noise families) to compare: names in models/ or .toml "
                        "paths (default mog,laplace; studentt and gennorm are NUTS-only and 2-100x slower per fit, "
                        "normal warns that directions are unidentified; --families is the earlier name)")
    p.add_argument("--pairs", default="a:b,Px:Py",
                   help="comma-separated pairs a:b whose direction to estimate (default a:b,Px:Py)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--max-tiles", type=int, default=None, help="compare at most N tiles, spread over the run")
    which.add_argument("--tiles", default=None, help="comma-separated tile indices to compare (default: all)")
    p.add_argument("--no-directions", action="store_true", help="skip the direction probabilities (fewer fits)")
    p.add_argument("--directions-only", action="store_true",
                   help="only the direction probabilities of --pairs, no candidate DAG x family models: a direction "
                        "map over every tile at ~1-2 s per tile (only the equations that differ between the two "
                        "orientations are fitted); models.csv and averaged.csv stay empty")
    p.add_argument("--no-image-directions", action="store_true",
                   help="direction probabilities per tile only, not per whole image (a whole image mixes film, "
                        "substrate and domains, so its linear SEM is misspecified; 2 large fits per pair and image)")
    p.add_argument("--draws", type=int, default=None,
                   help="kept draws per chain for every fit of the comparison (default: the run's); the Monte Carlo "
                        "error of a direction probability (p_forward_mcse in directions.csv) falls as 1/sqrt(draws), "
                        "its cost grows with it")
    p.add_argument("--overwrite", action="store_true", help="replace an existing comparison in --out")
    p.set_defaults(func=_cmd_compare)
    for verb in sub.choices.values():  # every verb's --help shows its defaults
        verb.formatter_class = _HelpFormatter
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``causalcrystal`` console script."""
    args = build_parser().parse_args(argv)
    from causalcrystal.errors import CausalCrystalError
    from causalcrystal.logs import show

    show()  # the command line prints the jobs' messages whatever the logging setup (--quiet: log=None-op)
    import warnings

    def one_line(message, category, filename, lineno, file=None, line=None):
        # a user of the command line needs the message, not the library's source line
        print(f"WARNING ({category.__name__}): {message}", file=sys.stderr)

    previous = warnings.showwarning
    warnings.showwarning = one_line
    if getattr(args, "quiet", False):
        warnings.filterwarnings("ignore", message=".*could not link to a BLAS.*")

    try:
        return int(args.func(args) or 0)
    except (CausalCrystalError, ValueError, FileExistsError, FileNotFoundError) as err:
        # the project's own errors, and the built-in kinds a library raises on bad input: one line,
        # no traceback (each message names the file or option and the fix)
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = previous


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
