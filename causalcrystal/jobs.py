"""One set of rules for every output folder a job writes: ``run``, ``compare`` and ``concentration``.

A job's folder holds its outputs, a ``manifest.json`` that says which job wrote them, with what
settings and whether it finished, and (while it runs) a folder of resumable work parts
(``tiles/`` for ``run``, ``parts/`` for ``compare``). :class:`Job` enforces, for all three jobs:

* **Validate first.** A job is opened only after its caller has checked every option and the data
  (the settings dict is the result of that check), so a typo never touches the folder.
* **Never delete what the project did not write.** A folder is recognised as a job's by its
  manifest (``"causalcrystal"`` and ``"job"`` keys). Files that merely share an output's name in a
  folder without such a manifest are never replaced, even with ``overwrite``.
* **Move aside, remove after.** ``overwrite`` moves the previous outputs (and the files of the
  jobs derived from it, as their manifests list them: never a user's files beside them) into
  ``.causalcrystal-previous/`` inside the folder; they are deleted only when the job that moved
  them finishes, or the same settings resumed or restarted (which says so first); a job with
  other settings keeps them and names them. Until then they can be moved back by hand.
* **Atomic outputs, finished marker last.** Every output is written under a unique temporary name
  and renamed into place (:meth:`Job.output`); the manifest's ``"status": "finished"`` is written
  last (:meth:`Job.finish`). A kill at any point leaves either the finished job or a partial one
  that the same command resumes.
* **Resume only the same job.** A partial job resumes when its settings (which include a
  fingerprint of the input data) are equal after a JSON round trip (tuples and lists compare
  equal); other settings are refused unless ``overwrite``. A manifest that never got any work
  done (a setup error) does not block a corrected command.
* **One writer per folder.** An OS lock (:mod:`filelock`, released by the OS if the process dies)
  is held while the job runs; a second job on the same folder is refused with the holder's pid
  and command.

:func:`status` tells a reader (``report``, :func:`causalcrystal.open_run`-style code) whether a
folder holds a finished job, :func:`running` whether a job is writing to it now.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path

from causalcrystal.errors import CausalCrystalError

MANIFEST = "manifest.json"
LOCK = ".causalcrystal.lock"
OWNER = ".causalcrystal.owner"
PREVIOUS = ".causalcrystal-previous"
#: Prefix of every temporary file a job writes (so a killed job's leftovers are recognised).
TMP_PREFIX = ".cc-tmp-"


class RunExistsError(CausalCrystalError, FileExistsError):
    """The output folder holds a finished job, another job's partial output, or files the project
    did not write (the message says which and what to do)."""


class FolderLockedError(RunExistsError):
    """Another causalcrystal job is writing to the output folder right now."""


class DamagedPartError(CausalCrystalError, RuntimeError):
    """A resumable work part (a tile's or a comparison's saved result) could not be read; it has been
    removed so that the same command re-computes it."""


def normalise(obj):
    """``obj`` as it comes back from JSON (tuples become lists, numpy scalars plain numbers)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(x):
    import numpy as np

    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"{type(x).__name__} is not JSON serialisable")


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The job manifest of ``folder``, or ``None`` when it has none the project wrote."""
    p = Path(folder) / MANIFEST
    try:
        m = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and "causalcrystal" in m and isinstance(m.get("settings"), dict) else None


def status(folder: str | os.PathLike, final: str | None = None) -> str:
    """``"finished"``, ``"partial"`` or ``"absent"`` (no job manifest) for a job folder.

    Manifests written before the status field existed count as finished when ``final`` (the file
    those versions wrote last) exists. A finished job may have lost outputs since
    (:func:`missing_outputs`); each reader checks the files it needs and says so with
    :func:`not_finished`.
    """
    m = read_manifest(folder)
    if m is None:
        return "absent"
    if "status" in m:
        return "finished" if m["status"] == "finished" else "partial"
    return "finished" if final and (Path(folder) / final).exists() else "partial"


def missing_outputs(folder: str | os.PathLike, final: str | None = None) -> list[str]:
    """The outputs a finished job's manifest recorded (its ``outputs``; else ``final``) that are gone."""
    m = read_manifest(folder) or {}
    names = m.get("outputs", [final] if final else [])
    return [n for n in names if isinstance(n, str) and not (Path(folder) / n).exists()]


def not_finished(folder: str | os.PathLike, kind: str, final: str | None, command: str,
                 gone: list | None = None, exact: bool = False) -> str:
    """Why ``folder`` holds no finished ``kind`` job and what to do, one sentence for every reader
    (run, report, concentration, ``open_run``): running now, finished but with outputs gone
    (``--overwrite``), or interrupted (the same command resumes). ``command``: the job's command
    line to suggest when the manifest recorded none; ``gone``: the missing files, when the reader
    checked more than the manifest recorded; ``exact``: ``command`` is rebuilt from the job's
    settings and is suggested instead of the recorded one."""
    where = safe_name(folder)
    holder = running(folder)
    if holder is not None:
        return f"{where}: the {kind} is being written now ({describe_holder(holder)}); wait until it has finished."
    m = read_manifest(folder) or {}
    again = command if exact else recorded_command(m, kind) or command
    if m.get("status") == "finished":
        gone = gone or missing_outputs(folder, final)
    else:
        gone = []
    if gone:
        again = again if "--overwrite" in again.split() else f"{again} --overwrite"
        return (f"{where}: the {kind} finished, but its {_gone(gone)}; put {'it' if len(gone) == 1 else 'them'} back, "
                "or recompute it with the "
                f"same command and --overwrite: {again}")
    return f"{where} holds an unfinished {kind}; run the same command again to finish it: {again}"


def recorded_command(manifest: dict, kind: str) -> str | None:
    """The command line a job's manifest recorded, when re-running it is how to finish or recompute
    that job: a user's own script or Python call (re-run it), or the ``causalcrystal`` command of
    this kind (``demo`` counts for a run). ``None`` for another ``causalcrystal`` command, e.g. the
    ``demo`` that also fitted a concentration job: the demo refuses its finished run, so repeating
    it would not finish the concentration (a fresh user was told to). Shell quoting is not checked."""
    import shlex

    command = str(manifest.get("command") or "")
    if not command:
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        words = command.split()
    if words and Path(words[0]).name.startswith("causalcrystal"):
        sub = words[1] if len(words) > 1 else ""
        if not (sub == kind or (kind == "run" and sub == "demo")):
            return None
    return _from_cwd(manifest, command)


def _from_cwd(manifest: dict, command: str) -> str:
    """``command`` prefixed with ``cd <the folder it was started in> &&`` when that is not the
    current one: its relative paths point there (a fresh user ran a suggested
    `causalcrystal concentration demo-out ...` from another folder and got "not a causalcrystal run")."""
    import shlex

    cwd = manifest.get("cwd")
    try:
        here = os.getcwd()
    except OSError:
        here = None
    return f"cd {shlex.quote(cwd)} && {command}" if cwd and cwd != here else command


def _gone(names) -> str:
    """``"a, b are gone (deleted or moved since)"``: the one wording of :func:`not_finished` and ``Job``."""
    return f"{', '.join(sorted(names))} {'is' if len(names) == 1 else 'are'} gone (deleted or moved since)"


def safe_name(path) -> str:
    """A path as printable text, whatever bytes its name holds (undecodable bytes as ``\\xNN``)."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


class Job:
    """The output folder of one job.

    ``kind``: ``"run"``, ``"compare"`` or ``"concentration"``. ``outputs``: the names (files or
    folders) the job writes besides the manifest; ``work``: its folder of resumable parts (or
    ``None``); ``final``: the file older versions wrote last (to read their manifests);
    ``companions``: sub-folders holding jobs derived from this one (``run``: ``concentration``,
    ``compare``) and files generated from it (``report.html``), moved aside with it on overwrite.
    ``parts``: glob of the files the job writes into ``work`` (only those are ever moved or
    removed there). ``settings`` must be JSON-serialisable; it is compared after a JSON round trip.

    Use as ``with Job(...).open(overwrite) as job:`` then :meth:`output` for each file and
    :meth:`finish` at the end; the lock is released when the block ends.
    """

    def __init__(self, kind: str, out_dir, settings: dict, *, outputs: Iterable[str], work: str | None = None,
                 parts: str = "*", final: str | None = None, companions: Iterable[str] = (), version: str = "",
                 log=None):
        self.kind, self.out_dir = kind, Path(out_dir)
        self.settings = normalise(settings)
        self.outputs = tuple(outputs)
        self.work, self.final, self.companions = work, final, tuple(companions)
        self.parts = parts  # glob of the work files this job writes (others in work/ are the user's)
        self.version = version
        from causalcrystal.logs import resolve

        self.log = resolve(log)  # default: the 'causalcrystal' logger
        self.resumed = False
        self._replaces: list[str] = []  # PREVIOUS/<name> folders this job deletes when it finishes
        self._lock = None
        self._moved: Path | None = None

    # -- paths ----------------------------------------------------------------------------------

    @property
    def work_dir(self) -> Path | None:
        return self.out_dir / self.work if self.work else None

    def _where(self) -> str:
        return safe_name(self.out_dir)

    # -- opening --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def open(self, overwrite: bool = False):
        """Lock the folder, decide fresh / resume / refuse, move old outputs aside on ``overwrite``
        and write the manifest (status ``running``). Yields the job; releases the lock at the end."""
        out = self.out_dir
        if out.exists() and not out.is_dir():
            raise RunExistsError(f"{self._where()} exists and is not a folder; choose another --out.")
        out.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._prepare(overwrite)
            yield self
        except BaseException:
            if self._moved is not None and self._moved.exists():
                self.log(f"the previous outputs of {self._where()} are kept in {safe_name(self._moved)} until this "
                         f"job finishes (move them back by hand to restore the old {self.kind})")
            raise
        finally:
            self._release()

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.out_dir / LOCK))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            raise FolderLockedError(self._busy_message()) from None
        self._lock = lock
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "job": self.kind,
                  "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        _atomic_text(self.out_dir / OWNER, json.dumps(holder))

    def _busy_message(self) -> str:
        try:
            h = json.loads((self.out_dir / OWNER).read_text(encoding="utf-8"))
            who = f" ({describe_holder(h)})" if isinstance(h, dict) and h else ""
        except (OSError, ValueError):
            who = ""
        return (f"{self._where()} is being written by another causalcrystal job{who}; wait for it to finish, or "
                "choose another --out. (The lock is released when that process ends, however it ends.)")

    def _release(self) -> None:
        if self._lock is not None:
            with contextlib.suppress(OSError):
                (self.out_dir / OWNER).unlink()
            self._lock.release()
            self._lock = None
            if read_manifest(self.out_dir) is None:  # refused before anything was written: leave no trace
                with contextlib.suppress(OSError):
                    (self.out_dir / LOCK).unlink()

    def _has_work(self) -> bool:
        """Whether a partial job left anything worth resuming (beyond its manifest)."""
        for name in self.outputs:
            p = self.out_dir / name
            if p.is_dir():
                if any(p.glob(self.parts) if name == self.work else p.iterdir()):
                    return True
            elif p.exists():
                return True
        return False

    def _own_parts(self) -> list[Path]:
        """The work files this job wrote (by name; anything else in the work folder is left alone)."""
        if self.work_dir is None or not self.work_dir.is_dir():
            return []
        return sorted(p for p in self.work_dir.glob(self.parts) if p.is_file())

    def _prepare(self, overwrite: bool) -> None:
        out, old = self.out_dir, read_manifest(self.out_dir)
        self._clean_tmp()
        if old is None:
            # Not (or not yet) a job folder: anything sharing an output's name is the user's.
            # A work folder is only a clash when it holds files named like this job's parts (which
            # it would take for its own); a user's other files there are left alone, as always.
            clash = [n for n in (MANIFEST, *self.outputs, *self.companions) if (out / n).exists()
                     and not (n == self.work and (out / n).is_dir() and not self._own_parts())]
            if clash:
                raise RunExistsError(
                    f"{self._where()} holds {', '.join(clash)} but no causalcrystal manifest, so they were not written "
                    f"by a causalcrystal {self.kind}; nothing is replaced (not even with --overwrite). Move them away "
                    "or choose another --out.")
        else:
            kind = old.get("job", self.kind)
            if kind != self.kind:
                raise RunExistsError(f"{self._where()} holds the output of a causalcrystal {kind}, not a {self.kind}; "
                                     "choose another --out.")
            state = status(out, self.final)
            gone = missing_outputs(out, self.final) if state == "finished" else []
            if gone and not overwrite:
                # a user who deleted outputs needs to hear which, and that the same command cannot resume
                raise RunExistsError(
                    f"{self._where()} holds a finished {self.kind} whose {_gone(gone)}: there is nothing to resume. "
                    "Put them back, or pass --overwrite to recompute it (what is left is kept until the new job "
                    "finishes), or choose another --out.")
            if state == "finished" and not overwrite:
                raise RunExistsError(
                    f"{self._where()} already holds a finished {self.kind}; pass --overwrite to replace it (the old "
                    "outputs are kept until the new job finishes) or choose another --out.")
            same = normalise(old.get("settings")) == self.settings
            if state == "partial" and same:
                # the same job again (resumed, or restarted with --overwrite): what its own --overwrite
                # moved aside is its to delete. A job with other settings never inherits that: it stays
                # (named below) until the user decides.
                self._replaces = list(old.get("replaces", []))
            if state == "partial" and same and not overwrite:
                self.resumed = True
            elif state == "partial" and not self._has_work():
                pass  # a setup error left only a manifest: start afresh
            elif state == "partial" and not overwrite:
                diff = _diff_described(old.get("settings", {}), self.settings)
                raise RunExistsError(
                    f"{self._where()} holds a partial {self.kind} with other settings ({'; '.join(diff)}); run the "
                    "same command as before to resume it, pass --overwrite to start again (the partial outputs are "
                    "kept until the new job finishes), or choose another --out.")
            else:
                self._move_aside()
        if self.work_dir is not None:
            self.work_dir.mkdir(exist_ok=True)
        if self._moved is not None:
            self._replaces.append(self._moved.name)
        prev = out / PREVIOUS
        orphans = sorted(d.name for d in prev.iterdir() if d.name not in self._replaces) if prev.is_dir() else []
        if orphans:
            self.log(f"note: {self._where()}/{PREVIOUS} holds outputs an earlier --overwrite moved aside and whose job "
                     f"never finished ({', '.join(orphans)}); they are kept: move them back or delete them by hand")
        inherited = [n for n in self._replaces if self._moved is None or n != self._moved.name]
        if inherited:
            self.log(f"{'resuming' if self.resumed else 'restarting'}: when this {self.kind} finishes it deletes "
                     f"{', '.join(inherited)} in {self._where()}/{PREVIOUS} (the outputs an earlier --overwrite "
                     "with these settings moved aside); move them elsewhere first to keep them")
        import shlex

        manifest = {"job": self.kind, "causalcrystal": self.version, "status": "running", "settings": self.settings,
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": shlex.join(sys.argv),
                    "cwd": os.getcwd(),  # where the command's relative paths point
                    "replaces": self._replaces,
                    # what this job writes, so a job replacing it (run --overwrite) moves only these
                    "files": {"outputs": list(self.outputs), "work": self.work, "parts": self.parts}}
        if self.resumed and old is not None:
            manifest["started_at"] = old.get("started_at", manifest["started_at"])
        _atomic_text(out / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))

    def _move_aside(self) -> None:
        """Move this job's previous outputs (and derived jobs and files) into ``PREVIOUS/<time>``."""
        out = self.out_dir
        names = [n for n in (*self.outputs, MANIFEST) if (out / n).exists() and n != self.work]
        parts = self._own_parts()
        moves = [(out / n, n) for n in names]
        if parts:  # only the job's own work files: a user's file in the work folder stays where it is
            moves += [(p, f"{self.work}/{p.name}") for p in parts]
            names.append(f"the {len(parts)} work files of {self.work}/")
        for c in self.companions:
            p = out / c
            if p.is_dir() and read_manifest(p) is not None:
                _check_unlocked(p)
                own = _job_files(p)  # only the derived job's own files: the user's stay in the folder
                moves += [(f, f"{c}/{f.relative_to(p).as_posix()}") for f in own]
                names.append(f"the {len(own)} files of {c}/")
            elif p.is_file() and generated_by_us(p):
                moves.append((p, c))
                names.append(c)
        if not moves:
            return
        dest = out / PREVIOUS / time.strftime("%Y%m%d-%H%M%S")
        while dest.exists():
            dest = dest.with_name(dest.name + "-1")
        dest.mkdir(parents=True)
        for src, rel in moves:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest / rel)
        for src, _ in moves:  # folders the move emptied go; a user's file keeps its folder
            _remove_if_only_ours(src.parent, stop=out)
        self._moved = dest
        self.log(f"--overwrite: moved the previous {', '.join(names)} of {self._where()} to {safe_name(dest)}; "
                 "they are deleted when this job finishes")

    def _clean_tmp(self) -> None:
        """Remove temporary files a killed job of this folder left (they are never outputs)."""
        for d in (self.out_dir, self.work_dir):
            if d is not None and d.is_dir():
                for p in d.glob(TMP_PREFIX + "*"):
                    with contextlib.suppress(OSError):
                        shutil.rmtree(p) if p.is_dir() else p.unlink()

    # -- writing --------------------------------------------------------------------------------

    def tmp_path(self, final: Path) -> Path:
        """A unique temporary name beside ``final`` (same folder, so the rename is atomic)."""
        return final.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")

    @contextlib.contextmanager
    def output(self, name: str | os.PathLike):
        """Yield a temporary path to write output ``name`` (relative to the folder) to; on success it
        is renamed into place atomically, on failure removed."""
        final = self.out_dir / name
        tmp = self.tmp_path(final)
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                with contextlib.suppress(OSError):
                    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()

    def finish(self, extra: dict | None = None, drop_work: bool = True) -> None:
        """Mark the job finished (the manifest, written last), then remove the previous outputs moved
        aside and, with ``drop_work``, the work parts (nothing needs them once the outputs exist)."""
        m = read_manifest(self.out_dir) or {}
        # the outputs present now: readers name any that go missing later (missing_outputs)
        written = [n for n in self.outputs if n != self.work and (self.out_dir / n).exists()]
        m.update({"job": self.kind, "causalcrystal": self.version, "settings": self.settings, "status": "finished",
                  "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "outputs": written, **(extra or {})})
        _atomic_text(self.out_dir / MANIFEST, json.dumps(m, indent=1, sort_keys=True))
        prev = self.out_dir / PREVIOUS
        for name in self._replaces:  # only what this job (or the one it resumed) moved aside
            if name and "/" not in name and (prev / name).is_dir():
                shutil.rmtree(prev / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            prev.rmdir()  # only when empty
        if drop_work and self.work_dir is not None and self.work_dir.exists():
            for p in self._own_parts():
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                self.work_dir.rmdir()  # only when empty: a user's file there keeps the folder

    # -- resumable parts ------------------------------------------------------------------------

    def pending(self, keys: Iterable, path: Callable) -> tuple[list, int]:
        """The keys whose part file ``path(key)`` does not exist yet, and how many do."""
        keys = list(keys)
        todo = [k for k in keys if not path(k).exists()]
        return todo, len(keys) - len(todo)

    def execute(self, fn: Callable, tasks: Iterable, save: Callable, *, total: int, label: str, scheduler=None,
                workers=None, progress: bool = True) -> None:
        """Run ``fn`` over ``tasks`` on the executor (:func:`causalcrystal.executor.get_executor`)
        and hand every result to ``save`` as soon as it arrives (``save`` writes one part
        atomically, which is what makes the job resumable)."""
        from causalcrystal.executor import Progress, get_executor

        if total == 0:
            return
        executor = get_executor(scheduler, workers)
        bar = Progress(total, label, enabled=progress)
        try:
            for _, result in executor.imap(fn, tasks(executor) if callable(tasks) else tasks):
                note = save(result)
                bar.update(note=note or "")
        finally:
            bar.close()
            executor.close()

    def load_part(self, path: Path, reader: Callable):
        """``reader(path)``; see :func:`load_part`."""
        return load_part(path, reader, self.kind)


def load_part(path: Path, reader: Callable, kind: str = "job"):
    """``reader(path)`` for a saved work part or output of a job, or :class:`DamagedPartError`
    naming the file when it cannot be read (truncated, not a zip/HDF5/JSON file, an object array
    that would need unpickling). The file is removed, so the same command re-computes it."""
    try:
        return reader(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        if isinstance(err, FileNotFoundError):
            raise
        with contextlib.suppress(OSError):
            path.unlink()
        raise DamagedPartError(
            f"{safe_name(path)} is damaged ({type(err).__name__}: {err}); it has been removed. Run the same command "
            f"again: the {kind} resumes and re-computes only that part (with the same seed, so the same "
            "numbers).") from err


def data_fingerprint(ds) -> str:
    """SHA-256 of an xarray Dataset's content: every variable's and coordinate's name, dtype, shape
    and values, and its attrs (not a file's name or time: the same data read from a copy matches)."""
    import hashlib

    import numpy as np

    h = hashlib.sha256()
    for name in sorted(map(str, ds.variables)):
        v = ds.variables[name]
        a = np.ascontiguousarray(v.values)
        # text hashes as text, whatever its numpy dtype (object after a netCDF read, <U in memory)
        h.update(f"{name}|{v.dims}|{'text' if a.dtype.kind in 'OUS' else a.dtype.str}|{a.shape}|".encode())
        h.update(json.dumps(v.attrs, sort_keys=True, default=str).encode("utf-8", "backslashreplace"))  # units
        if a.dtype.kind in "OUS":
            h.update("\x1f".join(map(str, a.ravel().tolist())).encode("utf-8", "backslashreplace"))
        else:
            h.update(a.tobytes())
    attrs = {k: v for k, v in ds.attrs.items() if k != "source"}
    h.update(json.dumps(attrs, sort_keys=True, default=str).encode("utf-8", "backslashreplace"))
    return h.hexdigest()


def _diff(old: dict, new: dict) -> list[str]:
    old, new = normalise(old), normalise(new)
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def _diff_described(old: dict, new: dict, width: int = 80) -> list[str]:
    """The settings that differ, each with its value before and now when both fit in ``width``
    characters (a fresh user was refused over "other settings (against)" without being told the
    partial job had ``["universal"]`` and the new command none); long values (a whole model
    specification) by name only."""
    o, n = normalise(old), normalise(new)
    out = []
    for k in _diff(old, new):
        a, b = (json.dumps(d[k]) if k in d else "(not set)" for d in (o, n))
        out.append(f"{k}: {a} before, {b} now" if len(a) + len(b) <= width else k)
    return out


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (a unique temporary file, then a rename)."""
    _atomic_text(Path(path), text)


def _job_files(folder: Path) -> list[Path]:
    """The files and folders the job in ``folder`` wrote: its manifest, its outputs (not its work
    folder) and its own parts in the work folder, as its manifest records them (older manifests:
    the outputs the job's module declares). Nothing else in ``folder`` is the job's."""
    m = read_manifest(folder) or {}
    spec = m.get("files")
    if not isinstance(spec, dict):
        spec = _declared_files(m.get("job"))
    outputs = [str(n) for n in spec.get("outputs", [])]
    work, parts = spec.get("work"), spec.get("parts") or "*"
    found = [folder / MANIFEST, *folder.glob(TMP_PREFIX + "*")]  # (a killed job's temporaries are its too)
    for n in outputs:
        p = folder / n
        if "/" in n or n in ("", ".", "..") or not p.exists():
            continue
        if p.is_dir():
            # an output folder of the job (e.g. compare's parts/): only its own part files
            found += sorted(f for f in p.glob(parts if n == work else "*") if f.is_file())
        else:
            found.append(p)
    if work and work not in outputs and (folder / work).is_dir():
        found += sorted(f for f in (folder / work).glob(parts) if f.is_file())
    return found


def _remove_if_only_ours(d: Path, stop: Path) -> None:
    """Remove ``d`` and its parents up to (not including) ``stop`` while they hold nothing but a
    job's lock files."""
    while d != stop and stop in d.parents and d.is_dir():
        rest = [p for p in d.iterdir() if p.name not in (LOCK, OWNER)]
        if rest:
            return
        with contextlib.suppress(OSError):
            for n in (LOCK, OWNER):
                (d / n).unlink(missing_ok=True)
            d.rmdir()
        d = d.parent


def _declared_files(kind) -> dict:
    """What a job of ``kind`` writes, from its module (for manifests written before they recorded it)."""
    import importlib

    modules = {"compare": "causalcrystal.compare", "concentration": "causalcrystal.concentration",
               "run": "causalcrystal.engine"}
    if kind not in modules:
        return {"outputs": []}
    module = importlib.import_module(modules[kind])
    return {"outputs": list(module.OUTPUTS), "work": getattr(module, "WORK", None),
            "parts": getattr(module, "PARTS", "*")}


def running(folder: str | os.PathLike) -> dict | None:
    """Whether a causalcrystal job is writing to ``folder`` now (it holds the folder's lock): the
    holder's ``pid``, ``host``, ``job``, ``command`` and ``started`` (as far as recorded; ``{}`` when
    unreadable), or ``None`` when no job holds the lock."""
    from filelock import FileLock, Timeout

    folder = Path(folder)
    if not (folder / LOCK).exists():
        return None
    lock = FileLock(str(folder / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            holder = json.loads((folder / OWNER).read_text(encoding="utf-8"))
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}
    lock.release()
    return None


def describe_holder(holder: dict) -> str:
    """``"pid 123 on host, started 2026-11-30 10:00:00: causalcrystal run ..."`` (what is known)."""
    parts = []
    if "pid" in holder:
        parts.append(f"pid {holder['pid']}" + (f" on {holder['host']}" if "host" in holder else ""))
    if "started" in holder:
        parts.append(f"started {holder['started']}")
    text = ", ".join(parts)
    if holder.get("command"):
        text += f": {holder['command']}"
    return text or "holder unknown"


def _check_unlocked(folder: Path) -> None:
    holder = running(folder)
    if holder is not None:
        raise FolderLockedError(f"{safe_name(folder)} is being written by another causalcrystal job "
                                f"({describe_holder(holder)}); wait for it before replacing the run it belongs to.")


#: Written into every report.html, so --overwrite recognises a report the project generated.
GENERATOR = "causalcrystal"


def generated_by_us(path: Path) -> bool:
    """Whether ``path`` is an HTML report causalcrystal wrote (its generator meta tag)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return b'<meta name="generator" content="causalcrystal' in head or \
        b"<meta name='generator' content='causalcrystal" in head
