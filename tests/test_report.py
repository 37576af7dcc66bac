"""The HTML report: every section on a real (small) run, concentration and compare outputs found or
given, refusal to overwrite, clear errors, and a real browser (headless Chromium) that decodes every
embedded figure and renders the page."""

import base64
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fixed_seed, lgd_spec_file

from causalcrystal import concentration as cn
from causalcrystal.cells import DESCRIPTORS
from causalcrystal.cli import main
from causalcrystal.report import SECTIONS, write_report

SECTION_IDS = [sid for sid, _, _ in SECTIONS]
RUN_FILES = ("manifest.json", "summary.csv", "posterior.nc", "discovery.nc")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished run (2 images x 4 tiles of 8 x 8 cells) with a concentration and a compare output
    in RUN_DIR/concentration and RUN_DIR/compare."""
    from causalcrystal.engine import run_pipeline
    from causalcrystal.sem import load_spec
    from causalcrystal.simulator import simulate

    cells = simulate((0.0, 0.2), shape=(16, 16), seed=fixed_seed(4))
    out = tmp_path_factory.mktemp("report") / "run"
    spec = load_spec("laplace").with_(draws=200, tune=150, target_ess=50)
    run_pipeline(cells, out, tile_size=8, stride=8, n_bootstrap=3, image_bootstrap=10, spec=spec, seed=fixed_seed(1),
                 workers=1, progress=False, log=lambda m: None)
    _concentration_output(out, tmp_path_factory.mktemp("spec") / "small.toml")
    _compare_output(out)
    return out


def _concentration_output(run_dir: Path, spec_path: Path) -> None:
    """A `concentration` output folder in its real format: stage 1 from the run (cn.tile_summaries),
    then curves.csv, couplings.csv and contraction.json from the module's own functions applied to a
    stand-in posterior (fitting the stage-2 model costs ~30 s; tests/test_concentration.py does)."""
    import arviz as az

    lgd_spec_file(spec_path, ["a<-Px", "Vol<-a"])
    spec = cn.load_spec(spec_path)
    summ = cn.tile_summaries(run_dir, spec)
    rng = np.random.default_rng(fixed_seed(0))
    images = sorted(set(summ["image"].values.tolist()))
    image_y = [float(summ["sm_fraction"].values[summ["image"].values == g][0]) for g in images]
    C, G, S = len(spec.couplings), len(images), 200
    centre = np.nan_to_num(np.nanmean(summ["mean"].values, axis=0))
    y0 = rng.normal(0.2, 0.02, (1, S))
    eps0 = np.exp(rng.normal(np.log(5.0), 0.1, (1, S)))
    post = {"y0": y0, "eps0": eps0, "y_star": y0 + 1 / eps0,
            "amplitude": centre + 0.1 * np.abs(centre) * rng.standard_normal((1, S, C)),
            "quad": np.zeros((1, S, C, 2)), "tau": np.abs(rng.normal(0, 0.1, (1, S, C))),
            "omega": np.abs(rng.normal(0, 0.1, (1, S, C))),
            "theta": centre[:, None] + 0.1 * rng.standard_normal((1, S, C, G))}
    prior = {k: v[:, :100] + rng.normal(0, 0.05, (1, 100)) for k, v in post.items() if k in ("y0", "eps0", "y_star")}
    idata = az.from_dict(posterior=post, prior=prior, constant_data={"sm_fraction": np.asarray(image_y)},
                         coords={"coupling": [c.label for c in spec.couplings], "term": ["linear", "quadratic"],
                                 "image": images},
                         dims={"amplitude": ["coupling"], "quad": ["coupling", "term"], "tau": ["coupling"],
                               "omega": ["coupling"], "theta": ["coupling", "image"], "sm_fraction": ["image"]})
    d = run_dir / "concentration"
    d.mkdir()
    summ.to_netcdf(d / "tile_summaries.nc", engine="h5netcdf")
    cn.curves(idata, spec).to_dataframe().reset_index().to_csv(d / "curves.csv", index=False)
    cn.coupling_table(idata, spec, summ).to_csv(d / "couplings.csv", index=False)
    (d / "contraction.json").write_text(json.dumps(cn.contraction(idata, spec, n_prior=500)))
    idata.to_netcdf(str(d / "concentration.nc"), engine="h5netcdf")
    _finished_manifest(d, "concentration", {"run_dir": str(run_dir.resolve())})


def _finished_manifest(d: Path, job: str, settings: dict, status: str = "finished") -> None:
    """The manifest a finished job writes last (causalcrystal.jobs.Job.finish)."""
    (d / "manifest.json").write_text(json.dumps({"job": job, "causalcrystal": "test", "status": status,
                                                 "settings": settings}))


def _compare_output(run_dir: Path) -> None:
    """A `compare` output folder with the documented columns (causalcrystal/compare.py)."""
    s = pd.read_csv(run_dir / "summary.csv")
    tiles = s.groupby("tile").first().reset_index()
    rng = np.random.default_rng(fixed_seed(1))
    models, dirs = [], []
    for _, t in tiles.iterrows():
        w = rng.dirichlet(np.ones(4))
        for m, (cand, fam) in enumerate([(0, "laplace"), (0, "studentt"), (1, "laplace"), (1, "studentt")]):
            models.append({"tile": t.tile, "image": t.image, "row0": t.row0, "col0": t.col0,
                           "model": f"cand{cand}/{fam}", "candidate": cand, "family": fam,
                           "elpd_loo": rng.normal(-100, 5), "se": 3.0, "weight": w[m]})
        for pair in ("a->b", "Px->Py"):
            dirs.append({"level": "tile", "tile": t.tile, "image": t.image, "pair": pair,
                         "p_forward": rng.uniform(), "elpd_diff": rng.normal(), "dse": 1.0})
    for img in tiles["image"].unique():
        for pair in ("a->b", "Px->Py"):
            dirs.append({"level": "image", "tile": -1, "image": img, "pair": pair, "p_forward": rng.uniform(),
                         "elpd_diff": rng.normal(), "dse": 1.0})
    d = run_dir / "compare"
    d.mkdir()
    pd.DataFrame(models).to_csv(d / "models.csv", index=False)
    pd.DataFrame(dirs).to_csv(d / "directions.csv", index=False)
    s[["tile", "image", "row0", "col0", "effect", "cause", "mean", "sd"]].to_csv(d / "averaged.csv", index=False)
    _finished_manifest(d, "compare", {"run_dir": str(run_dir.resolve())})


@pytest.fixture(scope="module")
def report(run):
    path = write_report(run, log=lambda m: None)
    return path, path.read_text(encoding="utf-8")


def _section(text: str, sid: str) -> str:
    m = re.search(rf"<section id='{sid}'>(.*?)</section>", text, re.DOTALL)
    assert m, f"section {sid} missing"
    return m.group(1)


def test_report_has_every_section_and_is_self_contained(run, report):
    path, text = report
    assert path == run / "report.html"
    for sid in SECTION_IDS:
        _section(text, sid)
    assert "report-error" not in text and "data-sections-failed='0'" in text
    # self-contained: no external resources, every image a PNG data URI that decodes
    assert not re.search(r"<link|<script[^>]+src=|src=[\"']https?:|url\(", text)
    srcs = re.findall(r"<img [^>]*src=\"([^\"]+)\"", text)
    assert len(srcs) >= 10
    assert f"data-images-total='{len(srcs)}'" in text
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    # content: settings and provenance from the run, companions found in RUN_DIR/...
    assert "tile_size" in _section(text, "settings") and "causalcrystal.simulator" in _section(text, "provenance")
    # a default setting (min_cells None) is shown with the value the run used: 8 x 8 tiles -> max(32, 32)
    from causalcrystal.engine import tile_min_cells

    assert f"None (default: {tile_min_cells(8, None)})" in _section(text, "settings")
    assert "pymc" in _section(text, "versions") and "nutpie" in _section(text, "versions")
    assert _section(text, "graphs").count("<img ") == 1
    assert _section(text, "maps").count("<img ") == 2  # posterior means, interval widths
    assert _section(text, "pca").count("<img ") >= 2
    conc = _section(text, "concentration")
    assert "<img " in conc and "a&lt;-Px" in conc and "y_star" in conc
    comp = _section(text, "compare")
    assert comp.count("<img ") == 2 and "models.csv" in comp and "directions.csv" in comp and "averaged.csv" in comp
    assert "<img " in _section(text, "diagnostics")


def test_missing_companions_give_the_commands(run, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in RUN_FILES:
        shutil.copy(run / name, bare / name)
    text = write_report(bare, log=lambda m: None).read_text()
    assert f"causalcrystal concentration {bare}</" in _section(text, "concentration")  # --out defaults there
    assert f"causalcrystal compare {bare} INPUT_FILES" in _section(text, "compare")  # no cells.nc in bare
    shutil.copy(run / "cells.nc", bare / "cells.nc")
    text = write_report(bare, log=lambda m: None, overwrite=True).read_text()
    assert f"causalcrystal compare {bare}</" in _section(text, "compare")  # the run's own cells suffice
    assert "report-error" not in text
    # companions given explicitly (CLI), elsewhere than RUN_DIR
    out = tmp_path / "given.html"
    assert main(["report", str(bare), "--out", str(out), "--concentration", str(run / "concentration"),
                 "--compare", str(run / "compare"), "--quiet"]) == 0
    text = out.read_text()
    assert "<img " in _section(text, "concentration") and "<img " in _section(text, "compare")
    # the concentration output was fitted to another run folder: the report says so
    assert "not to this run" in _section(text, "concentration")


def test_never_overwrites_without_flag_and_errors_are_clear(run, tmp_path, capsys):
    out = tmp_path / "r.html"
    out.write_text("mine")
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err
    assert out.read_text() == "mine"
    assert main(["report", str(run), "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert out.read_text().startswith("<!DOCTYPE html>")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]  # no temporary file left behind
    # a report causalcrystal generated is derived: `report RUN` after `demo` regenerates it without a flag
    before = out.stat().st_mtime_ns
    assert main(["report", str(run), "--out", str(out), "--quiet"]) == 0
    assert out.stat().st_mtime_ns > before and out.read_text().startswith("<!DOCTYPE html>")
    # not a finished run; a companion folder that is not one
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["report", str(empty), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "summary.csv" in err and "not a finished run" in err
    assert main(["report", str(run), "--out", str(tmp_path / "x.html"), "--compare", str(empty), "--quiet"]) == 2
    assert "causalcrystal compare" in capsys.readouterr().err


def _chromium() -> str:
    for cand in ("/usr/bin/chromium", shutil.which("chromium")):
        if cand and os.path.exists(cand):
            return cand
    if os.environ.get("CI"):
        pytest.fail("CI: headless Chromium is required for the report test but /usr/bin/chromium is missing; "
                    ".ci/run installs it (apt-get install -y chromium)")
    pytest.skip("headless Chromium not installed (/usr/bin/chromium); `apt-get install -y chromium` to run this test")


def _browser(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
           f"--user-data-dir={profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


def test_browser_decodes_every_figure_and_renders(report, tmp_path):
    binary = _chromium()
    path, _ = report
    url = path.resolve().as_uri()
    res = _browser(binary, tmp_path / "profile", "--virtual-time-budget=5000", "--dump-dom", url)
    assert res.returncode == 0, res.stderr[-2000:]
    body = re.search(r"<body[^>]*>", res.stdout)
    assert body, res.stdout[:500]
    total = re.search(r'data-images-total="(\d+)"', body.group(0))
    decoded = re.search(r'data-images-decoded="(\d+)"', body.group(0))
    assert total and decoded, body.group(0)
    assert int(total.group(1)) >= 10
    assert decoded.group(1) == total.group(1)  # every embedded PNG decoded by the browser
    for sid in SECTION_IDS:
        assert f'<section id="{sid}">' in res.stdout
    shot = tmp_path / "report.png"
    res = _browser(binary, tmp_path / "profile", "--virtual-time-budget=5000", f"--screenshot={shot}",
                   "--window-size=1280,4000", url)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    from PIL import Image

    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (4000, 1280)
    assert shot.stat().st_size > 50_000
    assert img.std() > 20 and (img < 128).mean() > 0.01  # text and figures, not a blank page


def test_user_text_with_mathtext_specials_is_drawn_literally(run, tmp_path, monkeypatch):
    """Issue 11: image, pair, model-family, coupling and link names holding mathtext specials ($ _ ^ \\ {)
    break no section and reach every figure literally (titles, axis, tick and colour-bar labels, legends)."""
    from matplotlib import cbook
    from matplotlib.text import Text

    from causalcrystal import report as rp

    ctx = rp.load_context(run, log=lambda m: None)
    images = dict(zip(ctx.images.index, ["Sm$_x$ 5%", r"film$\b^{$_2 \$"]))
    assert len(images) == 2
    ctx.tiles["image"] = ctx.tiles["image"].map(images)
    ctx.summary["image"] = ctx.summary["image"].map(images)
    ctx.images = ctx.images.rename(index=images)
    comp = shutil.copytree(run / "compare", tmp_path / "compare")
    models = pd.read_csv(comp / "models.csv")
    models.assign(image=models["image"].map(images), family=models["family"].replace({"laplace": r"lap$\nu$"})
                  ).to_csv(comp / "models.csv", index=False)
    dirs = pd.read_csv(comp / "directions.csv")
    dirs.assign(image=dirs["image"].map(images), pair=dirs["pair"].replace({"a->b": "a$->$b"})
                ).to_csv(comp / "directions.csv", index=False)
    conc = shutil.copytree(run / "concentration", tmp_path / "concentration")
    curves = pd.read_csv(conc / "curves.csv")
    curves.assign(coupling=curves["coupling"].replace({"a<-Px": "a$_0$<-Px"}), link="l$^{2}$"
                  ).to_csv(conc / "curves.csv", index=False)
    ctx.compare, ctx.concentration = comp, conc
    figures, img = [], rp._img

    def keep(fig, *args, **kwargs):
        out = img(fig, *args, **kwargs)
        figures.append(fig)
        return out

    monkeypatch.setattr(rp, "_img", keep)
    logged = []
    ctx.log = logged.append
    text = rp.render(ctx)
    assert "report-error" not in text and "data-sections-failed='0'" in text, [m for m in logged if "WARN" in m]
    shown = []
    for fig in figures:  # drawn by savefig: tick labels hold their final text
        for t in fig.findobj(Text):
            s = t.get_text()
            if not s or not t.get_visible():
                continue
            assert not t.get_usetex(), s
            assert not (t.get_parse_math() and cbook.is_math_text(s)), f"mathtext would parse {s!r}"
            shown.append(s.replace(r"\$", "$") if t.get_parse_math() else s)
    for want in [*images.values(), "P(a$->$b)", r"lap$\nu$", "a$_0$<-Px", "l$^{2}$"]:
        assert any(want in s for s in shown), want
    assert sum(s.startswith("Sm$_x$ 5%  (Sm ") for s in shown) >= 6  # map titles: maps x2, pca, compare, diagnostics
    assert any(s == r"film$\b^{$_2 \$" for s in shown)  # the weights figure's tick label
    # a user's matplotlibrc with text.usetex: True must not hand the labels to LaTeX either
    monkeypatch.setitem(__import__("matplotlib").rcParams, "text.usetex", True)
    text = rp.render(ctx)
    assert "report-error" not in text and "data-sections-failed='0'" in text, [m for m in logged if "WARN" in m]
    assert not any(t.get_usetex() for fig in figures for t in fig.findobj(Text))


@pytest.mark.parametrize("job", ["compare", "concentration"])
def test_an_unfinished_companion_job_is_shown_as_unfinished_not_as_results(run, tmp_path, job):
    """Issue 11 (F14): a compare or concentration job killed after writing some of its tables (its
    manifest not 'finished') must not be rendered as if finished."""
    from causalcrystal import report as rp

    d = shutil.copytree(run / job, tmp_path / job)
    m = json.loads((d / "manifest.json").read_text())
    command = f"/somewhere/bin/causalcrystal {job} {run} --out {d} --seed 3"
    (d / "manifest.json").write_text(json.dumps({**m, "status": "running", "command": command}))
    said = []
    ctx = rp.load_context(run, log=said.append, **{job: d})
    fn = {sid: f for sid, _, f in SECTIONS}[job]
    html = fn(ctx)
    assert "unfinished" in html and "same command" in html
    assert "<table" not in html
    # the command that finishes it: a comparison's as it was started (its --out, its options); a
    # concentration job's rebuilt from its settings with absolute paths (its recorded line may be the
    # demo's, and relative paths point to where it started)
    again = cn.resume_command(d) if job == "concentration" else command
    assert rp._esc(again) in html and (job == "compare") == (f"--out {d} --seed 3" in html)
    # said on the console too, not only in the HTML
    assert [m for m in said if m.startswith("WARNING") and f"holds an unfinished {job}" in m and m.endswith(
        f"finish it: {again} (then re-run the report)")], said
    if job == "compare":
        # started in another folder: its relative paths point there
        (d / "manifest.json").write_text(json.dumps({**m, "status": "running", "command": command, "cwd": "/elsewhere"}))
        assert "cd /elsewhere &amp;&amp; " + rp._esc(command) in fn(rp.load_context(run, log=lambda m: None, **{job: d}))
        (d / "manifest.json").write_text(json.dumps({**m, "status": "running", "command": command}))
    # while a process is writing it, the report says so (and who), not "run it again"
    import subprocess
    import sys

    hold = ("import sys, time\nfrom filelock import FileLock\nfrom causalcrystal import jobs\n"
            "lock = FileLock(sys.argv[1] + '/' + jobs.LOCK); lock.acquire()\n"
            "open(sys.argv[1] + '/' + jobs.OWNER, 'w').write('{\"pid\": 4242, \"command\": \"cc %s\"}' % sys.argv[2])\n"
            "print('holding', flush=True); time.sleep(60)\n")
    p = subprocess.Popen([sys.executable, "-c", hold, str(d), job], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "holding"
        said.clear()
        html = fn(rp.load_context(run, log=said.append, **{job: d}))
        assert "running now (pid 4242" in html and f"cc {job}" in html and "same command" not in html
        assert any(m.startswith("WARNING") and "running now (pid 4242" in m for m in said), said
    finally:
        p.kill()
        p.wait()
    assert "same command" in fn(rp.load_context(run, log=lambda m: None, **{job: d}))  # the lock died with it
    if job == "concentration":
        # started by `demo`: repeating the demo would not finish it (the demo refuses its finished run),
        # so the hint is the concentration command rebuilt from the job's settings, one the CLI parses
        # back into those settings
        import shlex

        from causalcrystal.cli import build_parser

        settings = {**m.get("settings", {}), "spec": cn.load_spec("lgd").to_dict(), "seed": 7,
                    "against": ["universal"], "universality": False}
        (d / "manifest.json").write_text(json.dumps({**m, "status": "running", "settings": settings,
                                                     "command": "causalcrystal demo --out demo-out"}))
        said.clear()
        html = fn(rp.load_context(run, log=said.append, **{job: d}))
        hint = cn.resume_command(d)
        assert "demo" not in hint and any(m.endswith(f"finish it: {hint} (then re-run the report)") for m in said), said
        assert rp._esc(hint) in html
        assert hint.startswith(f"causalcrystal concentration {run.resolve()} --out {d.resolve()} ")  # absolute paths
        args = build_parser().parse_args(shlex.split(hint)[1:])
        assert (args.verb, args.spec, args.seed, args.against, args.no_universality, args.out) == (
            "concentration", "lgd", 7, "universal", True, str(d))


def test_polarisation_is_drawn_per_cell_from_the_runs_cells(run, report):
    """Issue 12: the report shows (Px, Py) of every cell (over the micrograph when there is one;
    the simulated run has none, so over the cell positions)."""
    from causalcrystal import report as rp

    _, html = report
    assert (run / "cells.nc").is_file()
    assert "id='polarisation'" in html and "over the cell positions" in html
    ctx = rp.load_context(run, log=lambda m: None)
    img = str(ctx.images.index[0])
    d = rp.polarisation_data(ctx.cells, img)
    m = ctx.cells["image"].values.astype(str) == img
    assert d["image"] is None and len(d["x"]) == int(m.sum())
    np.testing.assert_array_equal(d["Px"], ctx.cells["Px"].values[m])


def test_open_run_reads_every_part_lazily_and_names_the_command_for_a_missing_one(run, tmp_path):
    """Issue 14.3: one run object; a part not made (yet) names the command that makes it."""
    import causalcrystal as cc
    from causalcrystal.runs import MissingPartError

    r = cc.open_run(run)
    assert "posterior" not in vars(r)  # nothing read until asked for
    assert {"B", "edge_inclusion"} <= set(r.posterior.posterior.data_vars)
    assert r.posterior.posterior["B"].sizes["tile"] == r.discovery.sizes["tile"] == r.summary["tile"].nunique()
    assert r.cells.sizes["cell"] == r.settings["n_cells"] and r.is_simulated
    assert set(r.discovery_images["image"].values.tolist()) == set(r.cells["image"].values.tolist())
    assert {"y0", "eps0", "y_star"} <= set(r.concentration.posterior.data_vars)
    assert set(r.compare) == {"models", "averaged", "directions"} and len(r.compare["models"])
    assert "present: posterior, summary, discovery, cells, concentration, compare" in repr(r)
    # a run folder without its derived jobs (and without cells.nc: an older run)
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in RUN_FILES:
        shutil.copy(run / name, bare / name)
    b = cc.open_run(bare)
    for part, command in (("concentration", f"causalcrystal concentration {bare}"),
                          ("compare", f"causalcrystal compare {bare}")):
        with pytest.raises(MissingPartError, match=f"no {part} output; make it with `{command}`"):
            getattr(b, part)
    with pytest.raises(MissingPartError, match="cells.nc is missing; runs made before"):
        b.cells
    # an unfinished derived job is named with the command that started it, never read half-done
    d = shutil.copytree(run / "compare", bare / "compare")
    _finished_manifest(d, "compare", {"run_dir": str(bare)}, status="running")
    with pytest.raises(MissingPartError, match="unfinished compare job; run the same command again"):
        b.compare
    # not a finished run at all: no folder, no manifest, an unfinished run
    with pytest.raises(MissingPartError, match="no such folder"):
        cc.open_run(tmp_path / "nothing")
    with pytest.raises(MissingPartError, match="no causalcrystal run"):
        cc.open_run(d.parent / "compare")
    m = json.loads((bare / "manifest.json").read_text())
    (bare / "manifest.json").write_text(json.dumps({**m, "status": "running", "command": "causalcrystal run x --out y"}))
    with pytest.raises(MissingPartError, match="unfinished run; run the same command again to finish it: "
                                               "causalcrystal run x --out y"):
        cc.open_run(bare)
    assert issubclass(MissingPartError, FileNotFoundError) and issubclass(MissingPartError, cc.CausalCrystalError)


def test_posterior_file_works_with_arviz_in_a_fresh_process(run):
    """Issue 14.2: summaries over the estimated edges only (no NaN rows for the forbidden zeros, no
    RuntimeWarnings), per-tile LOO, and the attrs ArviZ writes, from the file alone."""
    import subprocess
    import sys

    code = f"""
import warnings, json, numpy as np, pandas as pd, arviz as az, causalcrystal as cc
warnings.simplefilter("error", RuntimeWarning)
run = cc.open_run({str(run)!r})
t = cc.summary(run)
s = pd.read_csv({str(run / "summary.csv")!r})
assert len(t) == len(s), (len(t), len(s))          # exactly the edges summary.csv reports
assert t.index[0].startswith("B[") and {{"ess_bulk", "r_hat", "hdi_5%"}} <= set(t.columns)
allowed = run.posterior.constant_data["allowed"]
assert int(allowed.sum()) == len(s) and allowed.dtype == bool
tile = int(run.posterior.posterior["tile"][0])
n = int(run.posterior.posterior["n_cells"].sel(tile=tile))
loo = cc.tile_loo(run, tile)
assert loo.n_data_points == n and np.isfinite(loo.elpd_loo), loo
attrs = run.posterior.posterior.attrs
assert attrs["inference_library"] == "nutpie" and attrs["arviz_version"] == az.__version__ and "created_at" in attrs
assert "log_likelihood" not in run.posterior.groups()  # not stored by default: tile_loo recomputed it
assert "tile_loo" in run.posterior.posterior.attrs["log_likelihood"]
assert "causalcrystal.summary" in run.posterior.attrs["how_to_read"] and "az.loo" in run.posterior.attrs["how_to_read"]
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_tile_idata_serves_arviz_ppc_and_loo(run):
    """One tile as ArviZ expects it: observed cells, replicated data sets from the fitted SEM, the
    tile's log-likelihood. The replicated data must look like the observed (a posterior predictive
    check of a model fitted to these very cells: the observed s.d. of a descriptor is an extreme
    0.5 % tail of the replicated ones for at most 2 of 8 descriptors)."""
    import arviz as az

    import causalcrystal as cc

    r = cc.open_run(run)
    tile = int(r.posterior.posterior["tile"][0])
    n = int(r.posterior.posterior["n_cells"].sel(tile=tile))
    idata = cc.tile_idata(r, tile, predictive_draws=100, seed=fixed_seed(2))
    assert {"posterior", "observed_data", "posterior_predictive", "log_likelihood"} <= set(idata.groups())
    obs, rep = idata.observed_data["x"], idata.posterior_predictive["x"]
    assert obs.dims == ("member", "variable") and obs.shape == (n, 8)
    assert rep.dims == ("chain", "draw", "member", "variable") and rep.sizes["chain"] * rep.sizes["draw"] == 100
    ppp = (rep.std("member") < obs.std("member")).mean(("chain", "draw")).values
    assert ((ppp < 0.005) | (ppp > 0.995)).sum() <= 2, ppp
    axes = az.plot_ppc(idata, flatten=["member"], num_pp_samples=20)
    assert np.size(axes) == 8
    assert az.loo(idata, var_name="x").n_data_points == n
    # the sampler's statistics, without energy: this NUTS run keeps every 2nd draw (thin 2) and mixes
    # causal orders, so its stored energies are NaN (no one Hamiltonian's consecutive transitions)
    assert idata.sample_stats["diverging"].dims == ("chain", "draw") and "energy" not in idata.sample_stats
    with pytest.raises(KeyError, match="not in this run"):
        cc.tile_idata(r, 10_000)


def test_direction_map_shows_the_comparison_per_tile(run):
    import pandas as pd

    import causalcrystal as cc

    r = cc.open_run(run)
    d = cc.plots.direction_map_data(r, "Px:Py")
    rows = pd.read_csv(run / "compare" / "directions.csv").query("level == 'tile' and pair == 'Px->Py'")
    assert sorted(d["tile"]) == sorted(rows["tile"].astype(int)) and len(d) == r.posterior.posterior.sizes["tile"]
    np.testing.assert_allclose(d.set_index("tile")["p_forward"].sort_index(),
                               rows.set_index("tile")["p_forward"].sort_index())
    fig = cc.plots.plot_direction_map(r, "Px->Py")
    n_images = len(set(d["image"]))
    assert len(fig.axes) == n_images + 1  # one panel per image and the colour bar
    assert sum(len(ax.patches) for ax in fig.axes[:n_images]) == len(d)  # one square per tile
    with pytest.raises(ValueError, match="pairs present"):
        cc.plots.direction_map_data(r, "I14->a")


def test_coupling_against_polarisation_per_tile(run):
    import causalcrystal as cc
    from causalcrystal.tiling import make_tiles, tile_members

    r = cc.open_run(run)
    d = cc.plots.coupling_vs_polarisation_data(r, "a", "Px")
    post = r.posterior.posterior
    assert list(d["tile"]) == post["tile"].values.tolist()
    t = int(d["tile"].iloc[-1])
    np.testing.assert_allclose(d["mean"].iloc[-1], post["B"].sel(tile=t, effect="a", cause="Px").values.mean(),
                               rtol=1e-6)
    s = r.settings
    tiles = make_tiles(r.cells, s["tile_size"], s["stride"])  # the tiling rebuilt independently of Run.tiles
    cells = r.cells.isel(cell=tile_members(tiles, t))
    assert d["P_abs"].iloc[-1] == pytest.approx(np.hypot(cells["Px"].values, cells["Py"].values).mean())
    assert ((d["eti_5%"] <= d["mean"]) & (d["mean"] <= d["eti_95%"])).all()
    fig = cc.plots.plot_coupling_vs_polarisation(r, "a", "Px")
    assert len(fig.axes) == 1 and "|P|" in fig.axes[0].get_xlabel()


def test_tile_maps_are_public_and_the_report_draws_with_them(run):
    """Issue 14.4: the report's maps come from plots.plot_tile_maps. Each tile owns the patch around
    its centre: on a regular tiling (stride 8, size 16) the patch grid has one cell per tile, each
    holding that tile's value; the figure has one panel per image and map row plus a colour bar per row."""
    import pandas as pd

    import causalcrystal as cc

    r = cc.open_run(run)
    tiles = cc.plots.tile_table(r)
    img = tiles["image"].iloc[0]
    values = pd.Series(np.arange(len(tiles), dtype=float), index=tiles.index)
    values.iloc[1] = np.nan
    d = cc.plots.tile_map_data(tiles, values, img)
    t = tiles[tiles["image"] == img]
    assert d["Z"].shape == (t["row0"].nunique(), t["col0"].nunique())
    assert np.isfinite(d["Z"]).sum() == len(t) - (tiles["image"].iloc[1] == img)
    ri = np.searchsorted(np.unique(t["row0"]), t["row0"].iloc[0])
    ci = np.searchsorted(np.unique(t["col0"]), t["col0"].iloc[0])
    assert d["Z"][ri, ci] == values.loc[t.index[0]]
    frame = cc.plots.image_frame(r.cells, img)
    if frame is not None:  # the simulator stores x, y: corners in the image's own coordinates
        assert "X" in cc.plots.tile_map_data(tiles, values, img, frame)
    maps = [{"label": "tile", "values": values, "cmap": "viridis", "vmin": 0, "vmax": len(tiles)},
            {"label": "twice", "values": 2 * values, "cmap": "viridis", "vmin": 0, "vmax": 2 * len(tiles)}]
    fig = cc.plots.plot_tile_maps(r, maps)
    n_img = tiles["image"].nunique()
    assert len(fig.axes) == 2 * n_img + 2


def test_coupling_at_cell_resolution_averages_the_covering_tiles(run):
    """plots.coupling_cell_map_data: a cell's value is the mean of summary.csv's posterior means of
    the tiles that contain it and estimate the edge (checked by hand for two cells); the tiles'
    distance to the nearest wall is in the coupling-vs-polarisation data and its plot."""
    import causalcrystal as cc
    from causalcrystal.tiling import tile_members

    r = cc.open_run(run)
    s = r.summary
    e = s[(s["effect"] == "a") & (s["cause"] == "Px")]
    img = str(e["image"].iloc[0])
    d = cc.plots.coupling_cell_map_data(r, "a", "Px", img)
    cells = r.cells
    on = np.flatnonzero(cells["image"].values.astype(str) == img)
    for n in (on[0], on[len(on) // 2]):
        covering = [t for t in e["tile"].to_numpy(int) if n in set(tile_members(r.tiles, t))]
        cell = d["values"][int(cells["row"].values[n]) - d["row0"], int(cells["col"].values[n]) - d["col0"]]
        want = e.set_index("tile").loc[covering, "mean"].mean() if covering else np.nan
        np.testing.assert_allclose(cell, want, rtol=1e-12)
    assert (np.isfinite(d["values"]) == (d["n_tiles"] > 0)).all()
    fig = cc.plots.plot_coupling_cell_map(r, "a", "Px", img)
    assert len(fig.axes) == 2
    v = cc.plots.coupling_vs_polarisation_data(r, "a", "Px")
    assert (v["wall_distance"] >= 0).all()
    fig = cc.plots.plot_coupling_vs_polarisation(r, "a", "Px", x="wall_distance")
    assert "wall" in fig.axes[0].get_xlabel()


def test_recovery_against_the_simulated_truth(run):
    """Every estimated edge with its truth in the run's units (per-image standardisation: the mean
    of the tile's cells' true_B times sd(cause) / sd(effect) of the image), computed here by hand."""
    import causalcrystal as cc
    from causalcrystal.tiling import make_tiles, tile_members

    r = cc.open_run(run)
    d = cc.plots.recovery_data(r)
    assert len(d) == len(r.summary)
    row = d.iloc[len(d) // 2]
    s = r.settings
    cells = r.cells
    m = tile_members(make_tiles(cells, s["tile_size"], s["stride"]), int(row["tile"]))
    img = cells["image"].values.astype(str) == str(cells["image"].values[m[0]])
    i, j = DESCRIPTORS.index(row["effect"]), DESCRIPTORS.index(row["cause"])
    sd = lambda v: cells[v].values[img].std()  # noqa: E731
    truth = cells["true_B"].values[m, i, j].mean() * sd(row["cause"]) / sd(row["effect"])
    assert row["truth"] == pytest.approx(truth, rel=1e-9, abs=1e-12)
    assert d["covered"].tolist() == ((d["hdi_5%"] <= d["truth"]) & (d["truth"] <= d["hdi_95%"])).tolist()
    fig = cc.plots.plot_recovery(r)
    assert f"{d['covered'].mean():.2f} of {len(d)}" in fig.axes[0].get_title()


def test_rank_plot_of_a_tile_shows_its_estimated_coefficients(run):
    import causalcrystal as cc

    r = cc.open_run(run)
    tile = int(r.posterior.posterior["tile"][0])
    v = cc.plots.rank_data(r, tile)
    n = int((r.summary["tile"] == tile).sum())  # the tile's rows of summary.csv: its estimated edges
    assert v.dims == ("chain", "draw", "edge") and v.sizes["edge"] == n
    assert set(v["edge"].values) == {f"{e}<-{c}" for e, c in r.summary.loc[r.summary["tile"] == tile,
                                                                          ["effect", "cause"]].values}
    fig = cc.plots.plot_rank(r, tile, max_edges=6)
    assert sum(ax.axison for ax in fig.axes) == min(6, n)


def test_concentration_section_shows_prior_against_posterior(report):
    _, html = report
    sec = _section(html, "concentration")
    assert 'alt="prior against posterior of y0, eps0, y_star"' in sec and "plot_prior_posterior" in sec


def test_total_effect_map_covers_every_tile_and_matches_the_intervention_module(run):
    """Issue 14.4: one total effect over all tiles (the report shows tile 0 only)."""
    import causalcrystal as cc
    from causalcrystal.interventions import total_effects_draws

    r = cc.open_run(run)
    d = cc.plots.total_effect_map_data(r, "b", "I14")
    post = r.posterior.posterior
    assert list(d["tile"]) == [int(t) for t in post["tile"].values] and (d["eti_5%"] <= d["eti_95%"]).all()
    for t in d["tile"].values[:2]:
        T = total_effects_draws(post[["B", "c"]], tile=int(t)).sel(effect="b", cause="I14")
        assert d.loc[d["tile"] == t, "mean"].item() == pytest.approx(float(T.mean()), rel=1e-6, abs=1e-9)
    fig = cc.plots.plot_total_effect_map(r, "b", "I14")
    n_img = d["image"].nunique()
    assert len(fig.axes) == n_img + 1  # one panel per image and the colour bar
    assert sum(len(ax.patches) for ax in fig.axes[:n_img]) == len(d)  # one square per tile


def test_interventions_section_maps_the_strongest_total_effect_over_all_tiles(report):
    _, html = report
    sec = _section(html, "interventions")
    assert 'alt="map of the total effect' in sec and "plot_total_effect_map" in sec


def test_residual_check_plot_is_the_runs_own_check(run):
    """plots.residual_check_data recomputes a tile's PIT from posterior.nc and the tile's cells: its
    p-values agree with summary.csv's pit_p_effect (computed by the run from the draws as sampled,
    before posterior.nc rounded them to <= sd / 8192: the same to a few 1e-3); the figure has one
    panel per descriptor with an equation."""
    import causalcrystal as cc

    r = cc.open_run(run)
    tile = int(r.posterior.posterior["tile"][0])
    d = cc.plots.residual_check_data(r, tile)
    u = d["u"].to_numpy()
    assert u.shape == (d["n_cells"], 8) and np.nanmin(u) >= 0 and np.nanmax(u) <= 1
    s = r.summary[r.summary["tile"] == tile].groupby("effect")["pit_p_effect"].first()
    for v, p in s.items():
        assert d["pit_p"][v] == pytest.approx(p, abs=5e-3, rel=0.05), v
    fig = cc.plots.plot_residual_check(r, tile)
    assert sum(ax.axison for ax in fig.axes) == int(np.isfinite(u).all(0).sum())


def test_report_shows_the_worst_residual_check_and_rank_plots(report, run):
    import causalcrystal as cc
    from causalcrystal.sem import RHAT_MAX

    _, html = report
    sec = _section(html, "diagnostics")
    assert 'alt="residual check of tile ' in sec
    # rank plots of the least-converged tile whenever a tile's r_hat exceeds the rule
    assert ('alt="rank plots of tile ' in sec) == bool((cc.open_run(run).summary["r_hat"] > RHAT_MAX).any())
