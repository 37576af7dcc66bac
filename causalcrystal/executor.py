"""One interface for work that is independent per tile: in-process, local processes, or Dask.

``get_executor(scheduler=None, workers=None)`` returns an object with
``imap(fn, items) -> iterator of (index, result)`` yielding results as they complete (so callers
can save each one at once, which makes long runs resumable) and ``close()``:

* ``workers == 1``: :class:`InlineExecutor`, runs in this process (tests, debugging, notebooks);
* default: :class:`LocalExecutor`, a pool of ``workers`` processes (default: all cores) started
  with the ``spawn`` method (safe with the threads that NUTS samplers and BLAS start);
* ``scheduler="tcp://host:port"``: :class:`DaskExecutor`, tasks go to a Dask distributed cluster.

``fn`` must be a module-level function (picklable). Worker processes keep module-level caches
between tasks, which is how a compiled model is built once per worker, not once per tile.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any

import numpy as np

from causalcrystal.errors import WorkerLostError


class InlineExecutor:
    """Run tasks one after another in this process."""

    workers = 1

    def imap(self, fn: Callable, items: Iterable) -> Iterator[tuple[int, Any]]:
        for k, item in enumerate(items):
            yield k, fn(item)

    def close(self) -> None:
        pass


def _exit_with_parent() -> None:
    """Worker initializer: end this worker when the process that started it dies.

    ``ProcessPoolExecutor`` workers otherwise outlive a main process killed with SIGKILL (or by the
    OOM killer) and wait for tasks forever, each holding a compiled model (~0.5 GB). A daemon thread
    waits on the parent's sentinel (closed by the OS when the parent ends, however it ends)."""
    import multiprocessing
    import threading
    from multiprocessing.connection import wait as wait_for

    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - not started by multiprocessing
        return

    def watch():
        wait_for([parent.sentinel])
        os._exit(1)  # no clean-up to do: results go through the parent, which is gone

    threading.Thread(target=watch, name="causalcrystal-parent-watch", daemon=True).start()


class LocalExecutor:
    """A pool of local worker processes (spawned, so no forked sampler threads), which end when
    the main process ends, however it ends (:func:`_exit_with_parent`)."""

    def __init__(self, workers: int | None = None):
        self.workers = int(workers or os.cpu_count() or 1)
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                         initializer=_exit_with_parent)

    def imap(self, fn: Callable, items: Iterable) -> Iterator[tuple[int, Any]]:
        items = list(items)
        # Keep at most 2 tasks per worker in flight so results stream back in order of completion.
        pending, it, k = {}, iter(enumerate(items)), 0
        while True:
            while len(pending) < 2 * self.workers:
                try:
                    k, item = next(it)
                except StopIteration:
                    break
                pending[self._pool.submit(fn, item)] = k
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                idx = pending.pop(fut)
                try:
                    result = fut.result()
                except BrokenProcessPool as err:
                    raise WorkerLostError(
                        f"a worker process ended abruptly ({err}): it was killed (e.g. by the out-of-memory killer "
                        "or kill -9), or it exited while starting (workers are spawned and import the main script: "
                        "a script calling causalcrystal with workers needs its top-level code under "
                        "`if __name__ == \"__main__\":`). Every part finished before is kept: run the same command "
                        f"again to resume it (with fewer --workers than {self.workers} if memory is short).") from None
                yield idx, result

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class DaskExecutor:
    """Tasks on a Dask distributed cluster (``pip install 'causalcrystal[dask]'``)."""

    def __init__(self, scheduler: str):
        try:
            from distributed import Client
        except ImportError as err:  # pragma: no cover - depends on the install
            raise RuntimeError(
                "a --scheduler address needs Dask distributed: pip install 'causalcrystal[dask]'"
            ) from err
        self.client = Client(scheduler)
        self.workers = max(1, sum(self.client.nthreads().values()))

    def imap(self, fn: Callable, items: Iterable) -> Iterator[tuple[int, Any]]:
        from distributed import as_completed

        items = list(items)
        futures = self.client.map(fn, items, pure=False)
        index = {f.key: k for k, f in enumerate(futures)}
        for fut in as_completed(futures):
            yield index[fut.key], fut.result()

    def close(self) -> None:
        self.client.close()


def check_workers(workers) -> None:
    """Raise ``ValueError`` naming ``--workers`` unless it is ``None`` (every core) or a whole number >= 1."""
    if workers is None:
        return
    ok = isinstance(workers, (int, np.integer)) and not isinstance(workers, bool) and workers >= 1
    if not ok:
        raise ValueError(f"workers (--workers) {workers!r} must be a whole number of processes >= 1 (1 = run in "
                         f"this process); leave it out to use every core ({os.cpu_count()} here).")


def get_executor(scheduler: str | None = None, workers: int | None = None):
    """The executor for ``scheduler`` (a Dask address) or local ``workers`` (1 = in-process)."""
    if scheduler:
        return DaskExecutor(scheduler)
    check_workers(workers)
    if workers == 1:
        return InlineExecutor()
    return LocalExecutor(workers)


class Progress:
    """Progress of a job on stderr: ``label  k/n  elapsed  eta``.

    On a terminal or in Jupyter a rich progress bar (``rich`` comes with PyMC, which draws its own
    bars with it); elsewhere (a log file, CI, a captured stream) one plain line every
    ``plain_every`` seconds and at the end, never a carriage return that a file would keep.
    ``close()`` (also on leaving a ``with`` block) ends a bar left unfinished by an error.
    """

    def __init__(self, total: int, label: str, enabled: bool = True, stream=None, plain_every: float = 10.0):
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.stream = stream or sys.stderr
        self.done, self.t0, self._last = 0, time.perf_counter(), float("-inf")  # the first update prints
        self.plain_every = float(plain_every)
        self._rich = None
        if self.enabled:
            self._rich = _rich_bar(self.stream, label, total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._rich is not None:
            self._rich[0].stop()
            self._rich = None

    def update(self, n: int = 1, note: str = "") -> None:
        self.done += n
        if not self.enabled:
            return
        if self._rich is not None:
            bar, task = self._rich
            bar.update(task, advance=n, note=note)
            if self.done >= self.total:
                self.close()
            return
        now = time.perf_counter()
        if now - self._last < self.plain_every and self.done < self.total:
            return
        self._last = now
        el = now - self.t0
        # the first parts include the workers' start-up (imports, compiles): no estimate from them
        eta = f"{el / self.done * (self.total - self.done):6.1f}s" if self.done >= 3 else "     ?"
        self.stream.write(f"{self.label}: {self.done}/{self.total}  {el:6.1f}s elapsed  eta {eta} {note}\n")
        self.stream.flush()


def _rich_bar(stream, label: str, total: int):
    """A started rich progress bar and its task on ``stream``, or None when ``stream`` is neither a
    terminal nor a Jupyter output (then :class:`Progress` prints plain lines)."""
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
    except ImportError:  # rich comes with PyMC; without it, plain lines
        return None
    console = Console(file=stream)
    if not (console.is_terminal or console.is_jupyter):
        return None
    bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                       TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[note]}"), console=console)
    task = bar.add_task(label, total=total, note="")
    bar.start()
    return bar, task
