"""The experiments/ notebooks (jupytext percent format) run end to end at small settings.

Both notebooks are executed in this process with ``runpy.run_path(..., run_name="__main__")`` so
the compiled models (nutpie SEM per noise family, the stage-2 concentration model) are shared
with each other and with other tests in the same session; the size switch and the output folder
come from environment variables. Then the files they wrote are checked: tables with the expected
columns and sane values, the reports with their sections. A separate check parses every cell of
every notebook without jupytext installed.

Measured on 2 shared cores: the whole file ~110 s (posterior_analysis ~25 s, model_comparison ~85 s:
compare ~40 s, concentration ~25 s including its compile), so both stay in the default suite.
"""

import json
import re
import runpy
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import fixed_seed

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
NOTEBOOKS = ("posterior_analysis.py", "model_comparison.py")
#: each notebook's own default seed (its SEED line), shifted by the tests' seed offset
NOTEBOOK_SEED = {"posterior_analysis.py": 0, "model_comparison.py": 1}


def _cells(text: str) -> list[tuple[str, str]]:
    """Split a percent-format notebook into (kind, source) cells; the YAML header is not a cell."""
    lines = text.splitlines()
    cells, kind, buf = [], None, []
    for line in lines:
        m = re.match(r"^# %%( \[(\w+)\])?\s*$", line)
        if m:
            if kind is not None:
                cells.append((kind, "\n".join(buf)))
            kind, buf = (m.group(2) or "code"), []
        elif kind is not None:
            buf.append(line)
    if kind is not None:
        cells.append((kind, "\n".join(buf)))
    return cells


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_valid_jupytext_percent(name):
    text = (EXPERIMENTS / name).read_text()
    # the jupytext YAML header: first line "# ---", a closing "# ---", the percent format named
    header = text.split("\n# ---\n", 1)[0]
    assert text.startswith("# ---\n") and "\n# ---\n" in text
    assert "format_name: percent" in header and "jupytext:" in header and "kernelspec:" in header
    cells = _cells(text)
    kinds = [k for k, _ in cells]
    assert kinds.count("markdown") >= 5 and kinds.count("code") >= 5
    assert set(kinds) <= {"code", "markdown"}
    assert cells[0][0] == "markdown" and cells[0][1].lstrip().startswith("# #")  # a title first
    for k, (kind, src) in enumerate(cells):
        if kind == "code":
            compile(src, f"{name}[cell {k}]", "exec")  # every code cell parses on its own
        else:
            # markdown cells are comments only (jupytext's "# " prefix), so they stay valid Python
            assert all(not line.strip() or line.startswith("#") for line in src.splitlines()), (name, k)
    # the size switch and the output folder come from the environment; overwrite is explained
    assert all(f"CAUSALCRYSTAL_NOTEBOOK_{v}" in text for v in ("SIZE", "OUT", "SEED"))
    assert f'"CAUSALCRYSTAL_NOTEBOOK_SEED", "{NOTEBOOK_SEED[name]}"' in text  # the default the tests shift
    md = "\n".join(src for kind, src in cells if kind == "markdown")
    assert "overwrite=True" in md


def _run(name, tmp_path, monkeypatch) -> Path:
    out = tmp_path / name.removesuffix(".py")
    monkeypatch.setenv("CAUSALCRYSTAL_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("CAUSALCRYSTAL_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("CAUSALCRYSTAL_NOTEBOOK_SEED", str(fixed_seed(NOTEBOOK_SEED[name])))
    monkeypatch.delenv("CAUSALCRYSTAL_NOTEBOOK_JOINT", raising=False)
    runpy.run_path(str(EXPERIMENTS / name), run_name="__main__")
    return out


def _sections(html: str) -> list[str]:
    return re.findall(r"<section id='([a-z]+)'>", html)


def test_posterior_analysis_notebook(tmp_path, monkeypatch):
    out = _run("posterior_analysis.py", tmp_path, monkeypatch)
    assert (out / ".causalcrystal-notebook").is_file()
    for name in ("run/posterior.nc", "run/summary.csv", "truth_comparison.csv", "coverage.csv", "diagnostics.csv",
                 "total_effects.csv", "do_Py.csv", "report.html", "key_numbers.json", "graph.png", "polarisation.png",
                 "coupling_map.png", "residual_check.png"):
        assert (out / name).is_file(), name

    cmp = pd.read_csv(out / "truth_comparison.csv")
    assert {"tile", "effect", "cause", "truth", "mean", "lo", "hi", "covered", "sign_ok", "clean"} <= set(cmp.columns)
    assert (cmp["lo"] <= cmp["hi"]).all()
    # the truth was joined correctly: the simulator's edges are all in the true order, so every
    # nonzero truth points from an earlier to a later variable of TRUE_ORDER
    from causalcrystal.simulator import TRUE_ORDER

    pos = {v: k for k, v in enumerate(TRUE_ORDER)}
    true = cmp[cmp["truth"] != 0]
    assert len(true) > 0 and all(pos[c] < pos[e] for e, c in zip(true["effect"], true["cause"]))
    np.testing.assert_array_equal(cmp["covered"], (cmp["lo"] <= cmp["truth"]) & (cmp["truth"] <= cmp["hi"]))

    cov = pd.read_csv(out / "coverage.csv")
    assert {"tiles", "edges", "n", "coverage_90", "sign_ok_strong"} <= set(cov.columns)
    key = json.loads((out / "key_numbers.json").read_text())
    assert 0.0 <= key["coverage_true_edges"] <= 1.0 and key["n_tiles"] == len(set(cmp["tile"]))
    # a Laplace SEM on Laplace data gets most strong edges' signs right even with short chains
    assert key["sign_ok_strong"] > 0.6

    diag = pd.read_csv(out / "diagnostics.csv")
    assert {"tile", "max_r_hat", "min_ess_bulk", "divergences", "flagged"} <= set(diag.columns)
    assert (diag["max_r_hat"] > 0.9).all() and (diag["min_ess_bulk"] > 0).all()

    te = pd.read_csv(out / "total_effects.csv")
    assert {"effect", "cause", "truth", "mean", "hdi_5%", "hdi_95%", "covered", "path_allowed"} <= set(te.columns)
    assert (te["hdi_5%"] <= te["hdi_95%"] + 1e-12).all()
    do_py = pd.read_csv(out / "do_Py.csv", index_col=0)
    # do(Py = v) moves Py by exactly v - mean and leaves the exogenous intensities alone
    assert np.isclose(do_py.loc["Py", "mean"], do_py.loc["Py", "truth"], rtol=1e-6)
    assert do_py.loc[["I14", "I5"], "mean"].abs().max() == 0

    html = (out / "report.html").read_text()
    assert "data-sections-failed='0'" in html
    assert {"overview", "settings", "graphs", "diagnostics", "interventions"} <= set(_sections(html))


def test_model_comparison_notebook(tmp_path, monkeypatch):
    out = _run("model_comparison.py", tmp_path, monkeypatch)
    for name in ("compare/models.csv", "compare/averaged.csv", "compare/directions.csv", "concentration/couplings.csv",
                 "concentration/concentration.nc", "averaged_vs_truth.csv", "directions_vs_truth.csv",
                 "spec_comparison.csv", "evidence_vs_truth.csv", "evidence_overview.csv", "report.html",
                 "key_numbers.json", "prior_posterior.png"):
        assert (out / name).is_file(), name
    assert not (out / "joint_agreement.csv").exists()  # the joint model is off unless asked for

    models = pd.read_csv(out / "compare" / "models.csv")
    assert set(models["family"]) == {"laplace", "normal"} and models["tile"].nunique() == 2
    avg = pd.read_csv(out / "averaged_vs_truth.csv")
    assert {"tile", "edge", "truth", "avg_mean", "avg_covered", "run_mean", "run_covered"} <= set(avg.columns)

    d = pd.read_csv(out / "directions_vs_truth.csv")
    assert {"level", "pair", "p_forward", "true_direction", "true_coef_Px_Py", "says", "agrees"} <= set(d.columns)
    assert set(d["pair"]) == {"Py->Px", "a->b"} and set(d["level"]) == {"tile", "image"}
    assert d["p_forward"].between(0, 1).all()
    # every Py->Px row got the simulator's coefficient; a->b rows have none (no such edge)
    assert np.isfinite(d.loc[d["pair"] == "Py->Px", "true_coef_Px_Py"]).all()
    assert d.loc[d["pair"] == "a->b", "true_coef_Px_Py"].isna().all()

    spec_cmp = pd.read_csv(out / "spec_comparison.csv", index_col=0)
    assert set(spec_cmp.index) == {"lgd", "all-universal"}
    assert {"elpd_loo", "elpd_diff", "dse", "weight"} <= set(spec_cmp.columns)
    assert np.isclose(spec_cmp["weight"].sum(), 1.0)

    ev = pd.read_csv(out / "evidence_vs_truth.csv")
    assert {"coupling", "link", "elpd_diff", "dse", "favours", "truth", "true_rel_range", "verdict"} <= set(ev.columns)
    # the truth is read off the simulator: Vegard couplings are exactly constant, strain couplings follow P_S(y)
    truth = dict(zip(ev["coupling"], ev["truth"]))
    assert truth["a<-I14"] == "universal" and truth["a<-Px"] == "dependent" and truth["Px<-Py"] == "dependent"
    assert set(ev["verdict"]) <= {"agrees", "inconclusive", "disagrees"}
    # no answer is not a wrong answer: "not testable" and "unclear" are inconclusive
    assert (ev.loc[ev["favours"].isin(["not testable", "unclear"]), "verdict"] == "inconclusive").all()
    over = pd.read_csv(out / "evidence_overview.csv")
    assert list(over.columns) == ["question", "truth", "evidence", "verdict"] and len(over) == 6

    html = (out / "report.html").read_text()
    assert "data-sections-failed='0'" in html
    assert {"concentration", "compare", "diagnostics"} <= set(_sections(html))
    # the companions were really read: both sections carry figures and tables
    for sid in ("concentration", "compare"):
        body = html.split(f"<section id='{sid}'>")[1].split("</section>")[0]
        assert "<img " in body and "<table" in body, sid
