"""The output-folder rules every job follows (causalcrystal.jobs.Job), as kinds, with real processes
for kills, locks and orphaned workers.

Issue 11's faults, one test per kind: ``--overwrite`` never deletes before the new settings are
checked, nor files the project did not write; old outputs stay until the new job finishes; a kill
at any point leaves a folder that the same command finishes with the same numbers (and that
``report`` does not take for a finished run); one writer per folder; resume on the same settings
(after a JSON round trip) and the same data only; a setup error does not block the corrected
command; damaged work parts are named and re-computed; workers die with their main process.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from conftest import fixed_seed

from causalcrystal import jobs
from causalcrystal.jobs import DamagedPartError, FolderLockedError, Job, RunExistsError

# ---------------------------------------------------------------------------------------------
# the Job rules on their own (no sampling)


def _job(out, settings=None, **kw):
    return Job("demo", out, settings if settings is not None else {"a": 1}, outputs=("result.csv", "parts"),
               work="parts", parts="part_*.json", log=kw.pop("log", lambda m: None), **kw)


def _finished(out, settings=None, text="old"):
    with _job(out, settings).open() as job:
        with job.output("result.csv") as tmp:
            tmp.write_text(text)
        job.finish()


def test_settings_compare_after_a_json_round_trip(tmp_path):
    """Tuples come back from manifest.json as lists (the concentration job could never resume):
    the settings are normalised, so the same command resumes."""
    settings = {"couplings": (("a", "b"), ("Px", "Py")), "prior": (0.1, 0.05), "n": np.int64(3)}
    with _job(tmp_path, settings).open() as job:
        (job.work_dir / "part_0.json").write_text("{}")  # some work done, then interrupted
    with _job(tmp_path, settings).open() as job:
        assert job.resumed


def test_finished_job_is_refused_and_overwrite_moves_it_aside_until_the_new_one_finishes(tmp_path):
    _finished(tmp_path)
    with pytest.raises(RunExistsError, match="finished demo; pass --overwrite"):
        with _job(tmp_path, {"a": 2}).open():
            pass
    assert (tmp_path / "result.csv").read_text() == "old"
    # the new job fails half way: the old outputs are still there, aside, and the message says where
    messages = []
    with pytest.raises(RuntimeError, match="boom"):
        with _job(tmp_path, {"a": 2}, log=messages.append).open(overwrite=True):
            raise RuntimeError("boom")
    aside = list((tmp_path / jobs.PREVIOUS).glob("*/result.csv"))
    assert len(aside) == 1 and aside[0].read_text() == "old"
    assert any(str(aside[0].parent) in m for m in messages)
    # the new job finishes: now (and only now) the old outputs are gone
    with _job(tmp_path, {"a": 2}).open(overwrite=True) as job:
        assert len(list((tmp_path / jobs.PREVIOUS).glob("*/result.csv"))) >= 1
        with job.output("result.csv") as tmp:
            tmp.write_text("new")
        job.finish()
    assert (tmp_path / "result.csv").read_text() == "new"
    assert not (tmp_path / jobs.PREVIOUS).exists()
    assert jobs.status(tmp_path) == "finished"


def test_a_finished_job_whose_outputs_were_deleted_is_named_so_and_overwrite_recomputes_it(tmp_path):
    """A fresh user deleted a finished run's outputs: `run` said "finished, pass --overwrite", the
    report and `concentration` said "unfinished, the same command resumes it" (which `run` then
    refused). Now every reader names the missing files and --overwrite."""
    _finished(tmp_path)
    assert json.loads((tmp_path / jobs.MANIFEST).read_text())["outputs"] == ["result.csv"]  # not the work folder
    assert jobs.status(tmp_path) == "finished" and jobs.missing_outputs(tmp_path) == []
    (tmp_path / "result.csv").unlink()
    assert jobs.status(tmp_path) == "finished" and jobs.missing_outputs(tmp_path) == ["result.csv"]
    with pytest.raises(RunExistsError, match="finished demo whose result.csv is gone .*pass --overwrite to recompute"):
        with _job(tmp_path).open():
            pass
    msg = jobs.not_finished(tmp_path, "demo", None, "causalcrystal demo --out X")
    assert "result.csv is gone" in msg and msg.endswith(" --overwrite")  # after the recorded command
    with _job(tmp_path).open(overwrite=True) as job:
        with job.output("result.csv") as tmp:
            tmp.write_text("new")
        job.finish()
    assert jobs.status(tmp_path) == "finished" and (tmp_path / "result.csv").read_text() == "new"
    # a manifest from before outputs were recorded: judged by the final file
    m = json.loads((tmp_path / jobs.MANIFEST).read_text())
    del m["outputs"]
    (tmp_path / jobs.MANIFEST).write_text(json.dumps(m))
    assert jobs.missing_outputs(tmp_path, "result.csv") == []
    (tmp_path / "result.csv").unlink()
    assert jobs.missing_outputs(tmp_path, "result.csv") == ["result.csv"] and jobs.missing_outputs(tmp_path) == []


def test_a_users_file_in_the_work_folder_survives_overwrite(tmp_path):
    with _job(tmp_path).open() as job:
        (job.work_dir / "part_00001.json").write_text("{}")
        (job.work_dir / "my_notes.txt").write_text("mine")
        job.finish(drop_work=False)
    with _job(tmp_path, {"a": 2}).open(overwrite=True) as job:
        assert (job.work_dir / "my_notes.txt").read_text() == "mine"  # not moved aside with the parts
        assert not (job.work_dir / "part_00001.json").exists()
        (job.work_dir / "part_00002.json").write_text("{}")
        job.finish()  # drops its own parts only
    assert (tmp_path / "parts" / "my_notes.txt").read_text() == "mine"
    assert not (tmp_path / "parts" / "part_00002.json").exists()


def test_previous_outputs_are_deleted_only_by_the_job_that_moved_them_aside(tmp_path):
    _finished(tmp_path)
    with pytest.raises(RuntimeError):
        with _job(tmp_path, {"a": 2}).open(overwrite=True):
            raise RuntimeError("a data error found after the folder was opened")
    aside = list((tmp_path / jobs.PREVIOUS).glob("*/result.csv"))
    assert len(aside) == 1
    # another command without --overwrite starts afresh (nothing worth resuming was made) and
    # finishes: the run an earlier --overwrite moved aside is not its to delete
    notes = []
    with _job(tmp_path, {"a": 3}, log=notes.append).open() as job:
        job.finish()
    assert aside[0].read_text() == "old" and any(jobs.PREVIOUS in n for n in notes)
    # nor is it a later --overwrite's (that one replaces the finished {"a": 3} job only)
    notes.clear()
    with _job(tmp_path, {"a": 4}, log=notes.append).open(overwrite=True) as job:
        job.finish()
    assert aside[0].read_text() == "old" and any("never finished" in n for n in notes)


def test_only_the_job_that_moved_outputs_aside_deletes_them_whichever_route_follows(tmp_path):
    """What --overwrite moved aside belongs to that job: a resume of it deletes it (and says so
    first); a different later job, with or without --overwrite, keeps it and names it."""
    def aside():
        prev = tmp_path / jobs.PREVIOUS
        return sorted(p.name for p in prev.iterdir()) if prev.exists() else []

    _finished(tmp_path)
    # --overwrite with {"a": 2} is interrupted after some work
    with _job(tmp_path, {"a": 2}).open(overwrite=True) as job:
        (job.work_dir / "part_00001.json").write_text("{}")
    first = aside()
    assert len(first) == 1
    # a third setting replaces the partial job: it moves the partial work aside, keeps the old run
    notes = []
    with _job(tmp_path, {"a": 3}, log=notes.append).open(overwrite=True) as job:
        assert len(aside()) == 2  # the old run and the partial one
        job.finish()
    assert aside() == first and any("never finished" in n and first[0] in n for n in notes)
    # a setup error under --overwrite leaves a bare manifest; the next --overwrite does not inherit
    time.sleep(1.1)  # a new time stamp for the folder moved aside
    with pytest.raises(RuntimeError):
        with _job(tmp_path, {"a": 4}).open(overwrite=True):
            raise RuntimeError("bad option found late")
    second = sorted(set(aside()) - set(first))
    assert len(second) == 1
    notes.clear()
    with _job(tmp_path, {"a": 5}, log=notes.append).open(overwrite=True) as job:
        job.finish()
    assert aside() == sorted(first + second) and any(second[0] in n for n in notes)
    # the true resume route: the job that moved them deletes them, and says so when it resumes
    for name in first + second:
        import shutil
        shutil.rmtree(tmp_path / jobs.PREVIOUS / name)
    with _job(tmp_path, {"a": 6}).open(overwrite=True) as job:
        (job.work_dir / "part_00001.json").write_text("{}")
    mine = aside()
    notes.clear()
    with _job(tmp_path, {"a": 6}, log=notes.append).open() as job:
        assert job.resumed
        job.finish()
    assert any("resuming" in n and mine[0] in n and "deletes" in n for n in notes)
    assert aside() == []


def test_overwrite_moves_only_a_derived_jobs_own_files_not_the_users(tmp_path):
    """run --overwrite moves its compare/ and concentration/ jobs aside: only the files those jobs
    wrote, never a user's notes kept beside them."""
    def parent(settings):
        return Job("run", tmp_path, settings, outputs=("result.csv",), companions=("derived",),
                   log=lambda m: None)

    with parent({"a": 1}).open() as job:
        with job.output("result.csv") as tmp:
            tmp.write_text("old run")
        job.finish()
    sub = tmp_path / "derived"
    with _job(sub).open() as job:
        (job.work_dir / "part_00001.json").write_text("{}")
        with job.output("result.csv") as tmp:
            tmp.write_text("derived")
        job.finish(drop_work=False)
    (sub / "my_notes.md").write_text("mine")
    (sub / "parts" / "my_plot.png").write_text("mine too")
    with parent({"a": 2}).open(overwrite=True) as job:
        aside = next((tmp_path / jobs.PREVIOUS).iterdir())
        assert (aside / "derived" / "result.csv").read_text() == "derived"
        assert (aside / "derived" / "parts" / "part_00001.json").exists()
        assert not (aside / "derived" / "my_notes.md").exists()
        with job.output("result.csv") as tmp:
            tmp.write_text("new run")
        job.finish()
    assert not (tmp_path / jobs.PREVIOUS).exists()
    assert (sub / "my_notes.md").read_text() == "mine" and (sub / "parts" / "my_plot.png").read_text() == "mine too"
    assert not (sub / "result.csv").exists() and not (sub / jobs.MANIFEST).exists()
    # the derived job's folder can be used again at once (no stale manifest, the user's files kept)
    with _job(sub, {"a": 9}).open() as job:
        job.finish()
    assert (sub / "my_notes.md").read_text() == "mine"


@pytest.mark.parametrize("name", ["result.csv", "parts", "manifest.json"])
def test_files_the_project_did_not_write_are_never_replaced(tmp_path, name):
    p = tmp_path / name
    if name == "parts":
        p.mkdir()
        (p / "part_00001.json").write_text("mine")  # named like a part: it would be taken for one
    else:
        p.write_text('{"mine": true}' if name == "manifest.json" else "mine")
    for overwrite in (False, True):
        with pytest.raises(RunExistsError, match="no causalcrystal manifest"):
            with _job(tmp_path).open(overwrite=overwrite):
                pass
    assert sorted(q.name for q in tmp_path.iterdir()) == [name]  # not even a lock file left


def test_a_users_own_folder_named_like_the_work_folder_is_used_and_kept(tmp_path):
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "mine.txt").write_text("mine")
    with _job(tmp_path).open() as job:
        (job.work_dir / "part_00001.json").write_text("{}")
        job.finish()
    assert [q.name for q in (tmp_path / "parts").iterdir()] == ["mine.txt"]


def test_partial_job_resumes_only_with_the_same_settings_and_a_bare_manifest_does_not_block(tmp_path):
    # a setup error after the manifest was written left no work: the corrected command proceeds
    with _job(tmp_path, {"a": 1}).open():
        pass
    with _job(tmp_path, {"a": 2}).open() as job:
        assert not job.resumed
        (job.work_dir / "part_0.json").write_text("{}")
    with pytest.raises(RunExistsError, match=r"other settings \(a: 2 before, 3 now\)"):
        with _job(tmp_path, {"a": 3}).open():
            pass
    # each differing setting with both values, a long one (a whole specification) by name only
    with pytest.raises(RunExistsError, match=r"other settings \(a: 2 before, \(not set\) now; b; c: \(not set\) before, \[\"u\"\] now\)"):
        with _job(tmp_path, {"b": "x" * 90, "c": ("u",)}).open():
            pass
    with _job(tmp_path, {"a": 2}).open() as job:
        assert job.resumed and (job.work_dir / "part_0.json").exists()


def test_outputs_are_atomic_and_a_killed_jobs_temporary_files_are_cleaned(tmp_path):
    with _job(tmp_path).open() as job:
        with pytest.raises(ValueError):
            with job.output("result.csv") as tmp:
                tmp.write_text("half")
                raise ValueError("killed mid-write")
        assert not (tmp_path / "result.csv").exists()
        leftover = job.tmp_path(tmp_path / "result.csv")
        leftover.write_text("left by a kill -9")
    with _job(tmp_path).open():
        assert not leftover.exists()


def test_damaged_part_is_named_and_removed_so_the_same_command_recomputes_it(tmp_path):
    bad = tmp_path / "tile_00003.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(DamagedPartError, match="tile_00003.npz is damaged.*same command"):
        jobs.load_part(bad, lambda p: dict(np.load(p, allow_pickle=False)), "run")
    assert not bad.exists()
    # an npz holding an object array would need unpickling: refused the same way, naming the file
    obj = tmp_path / "tile_00004.npz"
    np.savez(obj, B=np.array([{"x": 1}], dtype=object))
    with pytest.raises(DamagedPartError, match="tile_00004.npz"):
        jobs.load_part(obj, lambda p: {k: v for k, v in np.load(p, allow_pickle=False).items()}, "run")


def test_legacy_manifests_without_a_status_are_read_by_their_final_file(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"settings": {}, "causalcrystal": "0.0.9"}))
    assert jobs.status(tmp_path, "posterior.nc") == "partial"
    (tmp_path / "posterior.nc").write_text("x")
    assert jobs.status(tmp_path, "posterior.nc") == "finished"
    assert jobs.status(tmp_path / "nowhere") == "absent"


_HOLD = textwrap.dedent("""
    import sys, time
    from causalcrystal.jobs import Job
    job = Job("demo", sys.argv[1], {"a": 1}, outputs=("result.csv",), log=lambda m: None)
    with job.open():
        print("holding", flush=True)
        time.sleep(60)
""")


def test_a_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "holding"
        with pytest.raises(FolderLockedError, match=f"pid {p.pid}.*another --out"):
            with _job(tmp_path).open():
                pass
    finally:
        p.kill()
        p.wait()
    # the OS released the lock of the killed process: no stale lock to clean by hand
    with _job(tmp_path).open() as job:
        assert job.resumed  # the same settings: the killed job's folder is resumed, not refused
    assert jobs.running(tmp_path) is None


def test_report_of_a_run_being_written_says_it_is_running_and_by_whom(tmp_path):
    from causalcrystal.report import ReportError, load_context

    p = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "holding"
        assert jobs.running(tmp_path)["pid"] == p.pid
        with pytest.raises(ReportError, match=f"being written now \\(pid {p.pid}.*when it has finished"):
            load_context(tmp_path, log=lambda m: None)
    finally:
        p.kill()
        p.wait()
    with pytest.raises(ReportError, match="not a finished run"):
        load_context(tmp_path, log=lambda m: None)


_POOL = textwrap.dedent("""
    import time
    from causalcrystal.executor import LocalExecutor
    if __name__ == "__main__":
        ex = LocalExecutor(2)
        for _ in ex.imap(time.sleep, [0.1, 0.1]):
            pass
        print(" ".join(str(p) for p in ex._pool._processes), flush=True)
        time.sleep(60)
""")


def test_workers_end_when_the_main_process_is_killed(tmp_path):
    script = tmp_path / "pool.py"
    script.write_text(_POOL)
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    pids = [int(x) for x in p.stdout.readline().split()]
    assert len(pids) == 2
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 20
    alive = pids
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [q for q in pids if _alive(q)]
    assert not alive, f"workers {alive} outlived their killed main process"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------------------------
# the same rules through run_pipeline (mog noise, exact Gibbs: a few seconds per run)


def _fast():
    from causalcrystal.sem import load_spec

    return load_spec("mog").with_(draws=100, tune=100)


@pytest.fixture(scope="module")
def small_cells():
    from causalcrystal.simulator import simulate

    return simulate((0.0, 0.2), shape=(12, 12), seed=fixed_seed(21))


def _kw():
    return dict(tile_size=12, stride=6, n_bootstrap=2, image_bootstrap=5, spec=_fast(), workers=1, progress=False,
                seed=fixed_seed(2), log=lambda m: None)


@pytest.fixture(scope="module")
def finished_run(small_cells, tmp_path_factory):
    from causalcrystal.engine import run_pipeline

    out = tmp_path_factory.mktemp("jobs") / "run"
    res = run_pipeline(small_cells, out, **_kw())
    assert res["finished"]
    return out


@pytest.mark.parametrize("bad", [{"exogenous": ["I14", "foo"]}, {"seed": -1}, {"stride": 0}, {"tile_size": -3},
                                 {"min_cells": 4}, {"n_bootstrap": -1}, {"standardize": "imgae"},
                                 {"exogenous": ["I14", "I5", "a", "b", "alpha", "Vol", "Px", "Py"]},
                                 {"workers": -1}, {"workers": 0}, {"workers": 1.5}])
def test_overwrite_with_a_bad_option_leaves_the_finished_run_untouched(small_cells, finished_run, bad):
    from causalcrystal.engine import run_pipeline

    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    with pytest.raises(ValueError) as err:
        run_pipeline(small_cells, finished_run, overwrite=True, **{**_kw(), **bad})
    option = next(iter(bad)).replace("n_bootstrap", "bootstrap").replace("tile_size", "tile size")
    assert option.split("_")[0] in str(err.value) or "--" in str(err.value)
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_overwrite_with_bad_data_leaves_the_finished_run_untouched(small_cells, finished_run):
    """Data checks (a constant descriptor, a table standardised already) run before --out is opened."""
    from causalcrystal.engine import run_pipeline

    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    const = small_cells.copy(deep=True)
    const["alpha"].values[const["image"].values == const["image"].values[0]] = 90.0
    for mode in ("image", "tile", "none"):  # no mode can use it: found before the folder, in every mode
        with pytest.raises(ValueError, match="no variation in 'alpha'"):
            run_pipeline(const, finished_run, overwrite=True, **{**_kw(), "standardize": mode})
    std = small_cells.copy()
    std.attrs["standardize"] = "image"
    with pytest.raises(ValueError, match="already standardised.*--standardize none"):
        run_pipeline(std, finished_run, overwrite=True, **_kw())
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_a_finished_run_has_no_work_files_and_its_manifest_says_finished(finished_run):
    m = json.loads((finished_run / "manifest.json").read_text())
    assert m["status"] == "finished" and m["job"] == "run" and len(m["settings"]["input_sha256"]) == 64
    assert not (finished_run / "tiles").exists()  # ~57 % of a run's disk, not needed once posterior.nc exists
    # the pointwise log-likelihood (half of posterior.nc) is not stored by default: recomputed on demand
    import arviz as az

    assert m["stored_loglik"] is False and m["lossless_draws"] is False
    idata = az.from_netcdf(finished_run / "posterior.nc")
    assert "log_likelihood" not in idata.groups()
    # the Gibbs sampler (mog) has divergences (none) but no tree depth, step size or energy to store
    assert set(idata.sample_stats.data_vars) == {"diverging"}
    assert {"discovery.nc", "posterior.nc", "summary.csv"} <= {p.name for p in finished_run.iterdir()}


def test_every_reader_of_a_run_whose_outputs_were_deleted_gives_the_same_advice(small_cells, finished_run, tmp_path):
    import shutil

    from causalcrystal.concentration import ConcentrationError, run_concentration
    from causalcrystal.engine import run_pipeline
    from causalcrystal.report import ReportError, load_context

    run = Path(shutil.copytree(finished_run, tmp_path / "run"))
    for name in ("posterior.nc", "summary.csv"):
        (run / name).unlink()
    advice = r"posterior.nc, summary.csv are gone \(deleted or moved since\).*--overwrite"
    with pytest.raises(RunExistsError, match="finished run whose posterior.nc, summary.csv are gone"):
        run_pipeline(small_cells, run, **_kw())
    with pytest.raises(ReportError, match=advice):
        load_context(run)
    with pytest.raises(ConcentrationError, match=advice):
        run_concentration(run, tmp_path / "conc", log=lambda m: None)
    assert not (tmp_path / "conc").exists()
    assert (run / "discovery.nc").exists()  # what is left stays until --overwrite


def test_a_partial_run_does_not_resume_on_changed_data(small_cells, tmp_path):
    from causalcrystal.engine import run_pipeline

    out = tmp_path / "r"
    run_pipeline(small_cells, out, stop_after=1, **_kw())
    changed = small_cells.copy(deep=True)
    changed["Px"].values[5] += 0.01  # same size, shape, paths and settings: only the content differs
    with pytest.raises(RunExistsError, match="input_sha256"):
        run_pipeline(changed, out, **_kw())


def test_no_fittable_tile_is_a_clear_error_before_the_folder_is_touched(small_cells, tmp_path):
    from causalcrystal.engine import run_pipeline

    out = tmp_path / "small"
    with pytest.raises(ValueError, match="no tile of size 4 has at least 32 cells"):
        run_pipeline(small_cells, out, **{**_kw(), "tile_size": 4, "stride": 4})
    assert not out.exists()


_KILL_AFTER_POSTERIOR = textwrap.dedent("""
    import os, signal, sys
    import xarray as xr
    from causalcrystal import engine
    from causalcrystal.sem import load_spec
    kw = {kw!r}
    kw["spec"] = load_spec("mog").with_(draws=100, tune=100)
    real = engine.write_posterior
    def write_then_die(*a, **k):
        out = real(*a, **k)
        os.kill(os.getpid(), signal.SIGKILL)  # between posterior.nc and summary.csv
    engine.write_posterior = write_then_die
    cells = xr.load_dataset(sys.argv[1])
    engine.run_pipeline(cells, sys.argv[2], **kw)
""")


def test_a_kill_while_outputs_are_written_leaves_a_run_the_same_command_finishes(small_cells, finished_run,
                                                                                   tmp_path):
    from causalcrystal.engine import run_pipeline
    from causalcrystal.report import ReportError, load_context

    src = tmp_path / "cells.nc"
    small_cells.to_netcdf(src)
    out = tmp_path / "killed"
    kw = {k: v for k, v in _kw().items() if k not in ("spec", "log")}
    p = subprocess.run([sys.executable, "-c", _KILL_AFTER_POSTERIOR.format(kw=kw), str(src), str(out)],
                       capture_output=True, text=True)
    assert p.returncode == -signal.SIGKILL, p.stderr
    assert jobs.status(out) == "partial"
    with pytest.raises(ReportError, match="not a finished run"):
        load_context(out)
    res = run_pipeline(xr.load_dataset(src), out, **_kw())  # the same command
    assert res["finished"] and res["sampled"] == 0
    a = pd.read_csv(out / "summary.csv")
    b = pd.read_csv(finished_run / "summary.csv")
    pd.testing.assert_frame_equal(a, b)


def test_compare_on_a_default_run_fits_every_family_with_the_runs_draws(small_cells, finished_run, tmp_path):
    """The default run samples mixture noise with the Gibbs sampler, which cannot fit the other
    families: compare used to give every family the run's sampler and fail on `laplace`."""
    from causalcrystal.compare import _plan_compare

    plan = _plan_compare(finished_run, tmp_path / "cmp", small_cells, candidates=1, families=("mog", "laplace"),
                         pairs=[("Px", "Py")], tiles=None, max_tiles=None, directions=True, image_directions=True,
                         seed=0)
    mog, lap = plan["specs"]["mog"].sampler, plan["specs"]["laplace"].sampler
    assert mog.name == "gibbs" and lap.name == "nutpie"
    assert (lap.draws, lap.tune, lap.chains) == (mog.draws, mog.tune, mog.chains) == (100, 100, 2)
    # and the other way round: on a run sampled with NUTS the mixture family keeps its Gibbs sampler
    # (NUTS on mixture noise took ~480 s per fit with r_hat 1.8)
    import shutil

    from causalcrystal.sem import load_spec

    nuts_run = tmp_path / "nuts_run"
    shutil.copytree(finished_run, nuts_run)
    m = json.loads((nuts_run / "manifest.json").read_text())
    lap_spec = load_spec("laplace")
    m["settings"]["spec"] = lap_spec.to_dict() | {"sampler": {**lap_spec.to_dict()["sampler"], "draws": 150}}
    (nuts_run / "manifest.json").write_text(json.dumps(m))
    plan = _plan_compare(nuts_run, tmp_path / "cmp2", small_cells, candidates=1, families=("mog", "laplace"),
                         pairs=[("Px", "Py")], tiles=None, max_tiles=None, directions=True, image_directions=True,
                         seed=0)
    mog, lap = plan["specs"]["mog"].sampler, plan["specs"]["laplace"].sampler
    assert mog.name == "gibbs" and lap.name == "nutpie" and mog.draws == lap.draws == 150


def test_a_killed_worker_is_a_clear_error_not_a_traceback():
    """A worker killed mid-job (OOM killer, kill -9) broke the pool and `run` ended in a raw
    BrokenProcessPool traceback; now it is one error saying that the same command resumes."""
    from causalcrystal.errors import CausalCrystalError, WorkerLostError
    from causalcrystal.executor import LocalExecutor

    ex = LocalExecutor(1)
    try:
        with pytest.raises(WorkerLostError, match=r"ended abruptly.*killed.*exited while starting.*__name__.*run the same command again to resume"):
            list(ex.imap(os._exit, [3]))  # the worker process dies without a word
    finally:
        ex.close()
    assert issubclass(WorkerLostError, CausalCrystalError)


def test_a_constant_descriptor_declared_derived_runs_and_reopens(small_cells, tmp_path):
    """The same constant descriptor as above, declared derived: every tile is fitted with finite
    draws, and the run's own readers (which rebuild the standardised tiles from cells.nc) agree."""
    import xarray as xr

    import causalcrystal as cc
    from causalcrystal.engine import run_pipeline

    from causalcrystal.cells import exclude_images
    from causalcrystal.report import load_context, section_provenance

    const = small_cells.copy(deep=True)
    first, second = dict.fromkeys(const["image"].values.astype(str).tolist())
    const["alpha"].values[const["image"].values == first] = 90.0
    # with the other image left out: the run's record and report say so (a helper found it only in cells.nc)
    res = run_pipeline(exclude_images(const, [second]), tmp_path / "run", derived=["alpha"], **_kw())
    assert res["finished"]
    from causalcrystal.jobs import read_manifest

    assert read_manifest(tmp_path / "run")["settings"]["excluded_images"] == [second]
    assert f"<th>images left out of the inputs (--exclude-image)</th><td>{second}</td>" in section_provenance(
        load_context(tmp_path / "run", log=lambda m: None))
    disc = xr.load_dataset(tmp_path / "run" / "discovery.nc", engine="h5netcdf")
    assert (disc["status"].values == "ok").all() and disc["derived"].sel(variable="alpha").values.all()
    post = xr.load_dataset(tmp_path / "run" / "posterior.nc", engine="h5netcdf", group="posterior")
    assert all(np.isfinite(post[v].values).all() for v in post.data_vars)
    for tile in post["tile"].values:                  # cells.nc -> standardised tile -> log-likelihood
        loo = cc.tile_loo(tmp_path / "run", int(tile))
        assert np.isfinite(loo["loo_i"].values).all() and np.isfinite(loo["elpd_loo"])
    # the concentration job knows alpha has no coupling here: its amplitude prior's units are not
    # held against the data (a helper's run was refused over a coupling it then dropped)
    from causalcrystal import concentration as cn

    assert cn.run_derived(tmp_path / "run") == {"alpha"}
    manifest = tmp_path / "run" / "manifest.json"
    m = read_manifest(tmp_path / "run")
    m["settings"]["units"]["alpha"] = "rad"
    manifest.write_text(json.dumps(m))
    cn.check_units(cn.load_spec("lgd"), tmp_path / "run")          # alpha<-Py has a prior in deg: not checked
    m["settings"]["units"]["b"] = "nm"
    manifest.write_text(json.dumps(m))
    with pytest.raises(cn.ConcentrationError, match=r"b<-Px \(data nm/"):
        cn.check_units(cn.load_spec("lgd"), tmp_path / "run")
