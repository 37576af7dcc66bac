"""The command line: simulate writes a file (never over an existing one), inspect summarises it."""

import subprocess
import sys

import numpy as np
import pytest

import causalcrystal as cc
from causalcrystal.cli import build_parser, main


def test_simulate_then_inspect(tmp_path, capsys):
    out = tmp_path / "sim.nc"
    rc = main(["simulate", "--out", str(out), "--seed", "3", "--compositions", "0,0.2", "--shape", "12", "10",
               "--nonfinite-fraction", "0.05"])
    assert rc == 0 and out.exists()
    ds = cc.read(out, nonfinite="keep")
    assert sorted(set(ds["image"].values.tolist())) == ["Sm_0_0", "Sm_20_0"]
    assert ds.sizes["cell"] == 2 * 12 * 10
    assert "true_B" in ds
    capsys.readouterr()
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "Sm_20_0" in text and "0.200" in text and "ground truth: present" in text
    n_bad = int((~np.isfinite(np.stack([ds[v].values for v in cc.DESCRIPTORS]))).sum())
    assert n_bad == 12
    # per-image, per-variable non-finite counts are printed and add up
    counts = [int(part.split("=")[1]) for line in text.splitlines() if line.startswith("  Sm_")
              for part in line.split(": ", 1)[1].split(", ")]
    assert sum(counts) == n_bad


def test_simulate_never_overwrites_without_flag(tmp_path, capsys):
    out = tmp_path / "sim.nc"
    out.write_text("user data")
    assert main(["simulate", "--out", str(out), "--shape", "4", "4"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "user data"
    assert main(["simulate", "--out", str(out), "--shape", "4", "4", "--overwrite"]) == 0


def test_inspect_bad_input_is_a_clear_error(tmp_path, capsys):
    bad = tmp_path / "nope.csv"
    bad.write_text("image,row\nA,1\n")
    assert main(["inspect", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nope.csv" in err


@pytest.mark.parametrize("verb", ["simulate", "inspect"])
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([verb, "--help"])
    assert exc.value.code == 0
    assert verb in capsys.readouterr().out


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "causalcrystal.cli", "--help"], capture_output=True, text=True,
                         check=True)
    assert "simulate" in out.stdout and "inspect" in out.stdout


def test_api_names_are_functions_even_after_submodule_imports():
    import importlib

    for mod in ("causalcrystal.simulator", "causalcrystal.io", "causalcrystal.tiling", "causalcrystal.cells"):
        importlib.import_module(mod)
    for name in cc.__all__:
        assert not isinstance(getattr(cc, name), type(sys)), name


def test_every_submodule_is_reachable_from_the_package_without_an_import():
    """``import causalcrystal as cc; cc.io.read(...)`` works in a fresh interpreter (lazily)."""
    import pkgutil

    assert set(cc._SUBMODULES) == {m.name for m in pkgutil.iter_modules(cc.__path__)}
    code = ("import sys, causalcrystal as cc; assert 'causalcrystal.io' not in sys.modules; "
            "print(cc.io.read.__module__, 'io' in dir(cc), 'read' in dir(cc))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["causalcrystal.io", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        cc.nonexistent
    # the exported names (the job functions among them) resolve, and none shadows a submodule
    assert {"run_pipeline", "compare_run", "run_concentration", "write_report", "open_run"} <= set(cc.__all__)
    assert not set(cc.__all__) & set(cc._SUBMODULES)
    for name in cc.__all__:
        assert getattr(cc, name) is not None, name


def test_every_model_specification_ships_in_the_wheel():
    """Issue 14: models/ lives at the repository's top level and ships as causalcrystal/models; a
    spec file the package-data globs miss would be absent after `pip install .` (.ci/run installs
    the wheel and runs a job from it; this catches a new file or folder the globs do not cover)."""
    import fnmatch
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert cfg["package-dir"]["causalcrystal.models"] == "models"
    data = cfg["package-data"]
    for f in (root / "models").rglob("*"):
        if f.is_dir() or f.name.startswith("."):
            continue
        rel = f.relative_to(root / "models")
        pkg = ".".join(("causalcrystal.models", *rel.parent.parts))
        assert pkg in cfg["packages"], f"{rel}: add {pkg} to [tool.setuptools] packages"
        assert any(fnmatch.fnmatch(rel.name, g) for g in data.get(pkg, [])), f"{rel}: not in package-data of {pkg}"


def test_version_and_one_base_class_for_the_projects_errors(capsys):
    from causalcrystal import compare, concentration, discovery, interventions, jobs, report
    from causalcrystal.cells import CellTableError

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"causalcrystal {cc.__version__}"
    kinds = {CellTableError: ValueError, compare.CompareError: ValueError, concentration.ConcentrationError: ValueError,
             discovery.TileError: ValueError, interventions.InterventionError: ValueError, report.ReportError: ValueError,
             jobs.RunExistsError: FileExistsError, jobs.FolderLockedError: FileExistsError,
             jobs.DamagedPartError: RuntimeError}
    for err, builtin in kinds.items():  # one `except cc.CausalCrystalError`, and the old kinds still hold
        assert issubclass(err, cc.CausalCrystalError) and issubclass(err, builtin), err
    # the CLI reports the project's errors in one line, not as a traceback
    assert main(["inspect", "/nonexistent/file.nc"]) == 2
    assert "error:" in capsys.readouterr().err


def test_modules_use_each_other_only_through_public_names():
    """The README's architecture claim: no module imports another module's private (_name) objects."""
    import ast
    from pathlib import Path

    bad = []
    for f in Path(cc.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("causalcrystal"):
                bad += [f"{f.name}: from {node.module} import {a.name}" for a in node.names
                        if a.name.startswith("_") and a.name != "__version__"]
    assert not bad, bad


def test_job_messages_go_through_the_causalcrystal_logger(tmp_path, caplog):
    """Issue 14.6: the jobs' messages are records of logging.getLogger("causalcrystal") (INFO, and
    WARNING for warnings and notes), printed to stderr by the CLI and by default when the
    application configured no logging."""
    import logging

    from causalcrystal.jobs import Job
    from causalcrystal.logs import emit

    with caplog.at_level(logging.INFO, logger="causalcrystal"):
        emit("discovery: 3 tiles")
        emit("report: WARNING: section 'maps' failed")
        emit("note: kept for you")
        with Job("demo", tmp_path, {"a": 1}, outputs=("x.csv",)).open() as job:
            job.finish()
        with Job("demo", tmp_path, {"a": 2}, outputs=("x.csv",)).open(overwrite=True) as job:
            job.finish()
    levels = [(r.levelname, r.getMessage()[:22]) for r in caplog.records if r.name == "causalcrystal"]
    assert levels[:3] == [("INFO", "discovery: 3 tiles"), ("WARNING", "report: WARNING: secti"),
                          ("WARNING", "note: kept for you")]
    # a leading "WARNING: " is the level's to say: not doubled by an application's handler, and put
    # back by the handler the CLI (and an unconfigured import) prints with
    with caplog.at_level(logging.INFO, logger="causalcrystal"):
        emit("WARNING: 2 tiles flagged")
    assert caplog.records[-1].getMessage() == "2 tiles flagged" and caplog.records[-1].levelname == "WARNING"
    from causalcrystal.logs import _StderrHandler

    assert _StderrHandler().format(caplog.records[-1]) == "WARNING: 2 tiles flagged"
    assert any(lv == "INFO" and m.startswith("--overwrite: moved") for lv, m in levels)  # the Job's default log
    # a fresh interpreter without logging configuration prints INFO to stderr (as PyMC does)
    code = "import causalcrystal.logs as l, causalcrystal; l.emit('hello from cc')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "hello from cc"
    code = ("import logging; logging.basicConfig(format='app %(name)s %(message)s', level=logging.INFO); "
            "import causalcrystal.logs as l, causalcrystal; l.emit('hi')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stderr.strip() == "app causalcrystal hi"  # the application's handler, printed once


def test_loo_warning_filter_is_targeted():
    """Issue 14.6: around az.loo / az.compare only the warnings the callers record themselves (high
    Pareto k) and ArviZ's deprecation chatter are silenced; any other warning reaches the user."""
    import warnings

    import arviz as az

    from causalcrystal.evidence import loo_warnings_recorded

    rng = np.random.default_rng(0)
    idata = az.from_dict(posterior={"a": rng.normal(size=(2, 100))},
                         log_likelihood={"z": rng.standard_t(1.5, size=(2, 100, 30))})  # heavy tails: high k
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with loo_warnings_recorded():
            loo = az.loo(idata, pointwise=True)
            az.compare({"m1": idata, "m2": idata}, method="stacking")
            warnings.warn("something else", RuntimeWarning)
    assert float(loo.pareto_k.max()) > 0.7  # the case the filter is for did occur
    assert [str(w.message) for w in seen] == ["something else"]


def test_nonfinite_policy_on_the_command_line_and_warnings_in_one_line(tmp_path, capsys):
    """The NonFiniteWarning told CLI users to pass an option `run` did not have, printed under a
    Python source line; `run --nonfinite raise` now exists and warnings print as one line."""
    out = tmp_path / "sim.nc"
    assert main(["simulate", "--out", str(out), "--shape", "8", "8", "--compositions", "0",
                 "--nonfinite-fraction", "0.05"]) == 0
    capsys.readouterr()
    assert main(["run", str(out), "--out", str(tmp_path / "R"), "--nonfinite", "raise"]) == 2
    err = capsys.readouterr().err
    assert "sim.nc" in err and "non-finite" in err and not (tmp_path / "R").exists()
    assert "--nonfinite drop (causalcrystal run" in err  # the CLI's spelling of the fix
    # drop (the default) warns in one line naming the option, then a bad option stops the run early
    assert main(["run", str(out), "--out", str(tmp_path / "R"), "--seed", "-1"]) == 2
    err = capsys.readouterr().err
    warning = next(line for line in err.splitlines() if "NonFiniteWarning" in line)
    assert warning.startswith("WARNING (NonFiniteWarning): ") and "--nonfinite raise" in warning
    assert "warnings.warn(" not in err and ".py:" not in err  # no source lines


def test_one_option_name_for_a_model_specification_in_every_verb():
    """Issue 14.6: --model names the model specification(s) in run, compare and concentration; the
    earlier --families / --spec still work."""
    parser = build_parser()
    assert parser.parse_args(["run", "x.nc", "--out", "o", "--model", "laplace"]).model == "laplace"
    for flag in ("--model", "--families"):
        assert parser.parse_args(["compare", "R", flag, "laplace,studentt"]).families == "laplace,studentt"
    for flag in ("--model", "--spec"):
        assert parser.parse_args(["concentration", "R", flag, "universal"]).spec == "universal"


def test_sampler_warnings_hide_library_notices_only():
    """``logs.sampler_warnings`` (around every NUTS call) hides PyTensor's BLAS notice and the sampling
    libraries' deprecation notices, and lets everything else through (a warning about the data)."""
    import warnings

    from causalcrystal.logs import sampler_warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with sampler_warnings():
            warnings.warn_explicit("PyTensor could not link to a BLAS installation.", UserWarning, "cmodule.py", 1,
                                   module="pytensor.link.c.cmodule")
            warnings.warn_explicit("x is deprecated", FutureWarning, "sampling.py", 1, module="pymc.sampling.mcmc")
            warnings.warn_explicit("y is deprecated", DeprecationWarning, "base.py", 1, module="arviz.data.base")
            warnings.warn_explicit("overflow encountered in exp", RuntimeWarning, "sem.py", 1, module="causalcrystal.sem")
            warnings.warn_explicit("z is deprecated", FutureWarning, "other.py", 1, module="somepackage")
        warnings.warn_explicit("x is deprecated", FutureWarning, "sampling.py", 1, module="pymc.sampling.mcmc")
    assert [str(w.message) for w in seen] == ["overflow encountered in exp", "z is deprecated", "x is deprecated"]


def test_every_option_with_a_default_shows_it_in_help():
    """``--help`` of every verb names each option's default (the formatter appends it where the text
    does not say it), and the options several verbs share are defined once (parent parsers)."""
    import argparse

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for verb, p in sub.choices.items():
        text = " ".join(p.format_help().split())
        for action in p._actions:
            if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and action.help:
                helptext = " ".join(p._get_formatter()._expand_help(action).split())
                assert "default" in helptext.lower(), (verb, action.option_strings)
                assert helptext[:40] in text, (verb, action.option_strings)
    seeds = {sub.choices[v]._option_string_actions["--seed"].help for v in ("run", "demo", "compare", "concentration")}
    assert len(seeds) == 1


def test_interval_names_are_arviz_names_and_old_files_are_read():
    """``intervals.hdi_names`` / ``eti_name`` give exactly the column names ``az.summary`` gives
    (HDI; ``stat_focus="median"``: equal-tailed), and ``renamed`` reads tables written before."""
    import arviz as az
    import numpy as np
    import pandas as pd

    from causalcrystal.intervals import eti_name, hdi_names, renamed

    draws = az.convert_to_dataset({"x": np.random.default_rng(0).standard_normal((2, 100))})
    for prob in (0.9, 0.94, 0.5):
        cols = list(az.summary(draws, hdi_prob=prob, kind="stats").columns)
        assert list(hdi_names(prob)) == [c for c in cols if c.startswith("hdi_")]
        cols = list(az.summary(draws, hdi_prob=prob, kind="stats", stat_focus="median").columns)
        assert [eti_name((1 - prob) / 2), eti_name((1 + prob) / 2)] == [c for c in cols if c.startswith("eti_")]
    assert eti_name(0.5) == "median" and eti_name(0.25) == "eti_25%"
    old = pd.DataFrame({"q05": [1.0], "q50": [2.0], "q95": [3.0], "hdi_low": [0.0], "mean": [2.0]})
    assert list(renamed(old).columns) == ["eti_5%", "median", "eti_95%", "hdi_5%", "mean"]
    assert renamed(renamed(old)).equals(renamed(old))


def test_progress_is_a_rich_bar_on_a_terminal_and_plain_lines_elsewhere():
    """executor.Progress: on a terminal a rich bar (what PyMC draws with), ended by close() even when
    the job stops early; on a file or captured stream plain lines, throttled, with no carriage
    return (a log file would keep every one)."""
    import io

    from causalcrystal.executor import Progress

    plain = io.StringIO()
    p = Progress(50, "tiles", stream=plain, plain_every=3600.0)
    for _ in range(50):
        p.update(note="ok")
    text = plain.getvalue()
    assert "\r" not in text and text.count("\n") == 2 and "tiles: 50/50" in text  # the first and the last
    assert p._rich is None

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    term = Terminal()
    with Progress(3, "sampling", stream=term) as bar:
        assert bar._rich is not None
        bar.update(note="tile 0")
    assert bar._rich is None  # closed on leaving the block with 1 of 3 done
    assert "sampling" in term.getvalue() and "1/3" in term.getvalue() and "\x1b[" in term.getvalue()
    assert Progress(3, "off", stream=Terminal(), enabled=False)._rich is None


def test_image_library_warnings_hide_deprecations_of_those_libraries_only():
    import warnings

    from causalcrystal.logs import image_library_warnings

    class VisibleDeprecationWarning(UserWarning):  # HyperSpy's own class is a UserWarning
        pass

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with image_library_warnings():
            warnings.warn_explicit("Importing `LazySignal1D` from `x` is deprecated", VisibleDeprecationWarning,
                                   "_utils.py", 1, module="hyperspy.misc._utils")
            warnings.warn_explicit("old API", FutureWarning, "a.py", 1, module="atomap.atom_finding_refining")
            warnings.warn_explicit("no peaks found in the image", UserWarning, "a.py", 1, module="atomap.sublattice")
    assert [str(w.message) for w in seen] == ["no peaks found in the image"]
