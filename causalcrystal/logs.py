"""Messages of long jobs go through ``logging.getLogger("causalcrystal")``.

``run_pipeline``, ``compare_run``, ``run_concentration``, ``write_report`` and the output-folder
rules (:class:`causalcrystal.jobs.Job`) take ``log=None``: by default their messages (what is
being done, what was resumed, what was moved aside) are INFO records and their warnings
(``"WARNING: ..."``) WARNING records of that logger; pass ``log=callable`` to receive the text
instead (``log=lambda m: None`` silences a job).

As PyMC does for its own logger, importing causalcrystal attaches a handler that prints the
messages to ``sys.stderr`` at INFO when the application has configured no logging (no handler
on the root logger); an application that configures logging gets the records through its own
handlers instead. The command line always prints them (``--quiet``: the warnings only).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

logger = logging.getLogger("causalcrystal")


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (so a notebook's or a test's replacement
    stream receives the text, as ``print(..., file=sys.stderr)`` did)."""

    def __init__(self, level=logging.NOTSET):
        super().__init__()
        self.setLevel(level)
        self.setFormatter(_Formatter())

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _Formatter(logging.Formatter):
    """The message as it was written: a WARNING record gets back the ``"WARNING: "`` that
    :func:`emit` took off (an application's own handler shows the level its own way)."""

    def format(self, record):
        text = record.getMessage()
        if record.levelno >= logging.WARNING and not text.startswith(("WARNING", "note:")) \
                and "WARNING:" not in text[:40]:
            return "WARNING: " + text
        return text


def is_warning(message: str) -> bool:
    """A warning (``"WARNING: ..."``, also after a prefix such as ``"report: "``) or a ``"note: ..."``
    about something left for the user to decide."""
    head = str(message).lstrip()[:40]
    return "WARNING" in head or head.startswith("note:")


def emit(message: str) -> None:
    """Log ``message`` on the causalcrystal logger: WARNING when :func:`is_warning`, INFO otherwise."""
    text = str(message)
    warn = is_warning(text)
    if text.startswith("WARNING: "):
        text = text[len("WARNING: "):]  # the level says it (application handlers print "WARNING|WARNING: ..." else)
    logger.log(logging.WARNING if warn else logging.INFO, text)


def warnings_only(message: str) -> None:
    """:func:`emit` for warnings and notes only (``log=warnings_only``): what the command line's
    ``--quiet`` passes on, so that a result not to be trusted ("the concentration posterior is
    not reliable", "y0 is not identified") is never printed without its warning."""
    if is_warning(message):
        emit(message)


def resolve(log):
    """``log`` when given, else :func:`emit` (the default of every job's ``log=None``)."""
    return log if log is not None else emit


def show(level: int = logging.INFO) -> None:
    """Print the causalcrystal messages to ``sys.stderr`` from ``level`` up (idempotent): what the
    command line does, and what a notebook whose logging is configured otherwise can call."""
    if not any(isinstance(h, _StderrHandler) for h in logger.handlers):
        logger.addHandler(_StderrHandler())
    logger.setLevel(level)


def _default_setup() -> None:
    """At import: PyMC's convention (pymc/__init__.py) for an application without logging config."""
    if not logging.root.handlers:
        show(logging.INFO)
        logger.propagate = False  # printed once, by our handler (root has none anyway)


#: Libraries whose deprecation notices are theirs to fix, not the user's (raised inside sampling).
_SAMPLER_MODULES = r"(pymc|pytensor|nutpie|arviz|xarray)(\..*)?"


@contextlib.contextmanager
def sampler_warnings():
    """Around a sampler call (NUTS via nutpie or PyMC): hide what says nothing about the user's data
    or model, and nothing else (measured on the SEM and concentration models: nutpie itself emits
    no warnings; PyMC emits PyTensor's compile-time BLAS notice):

    * PyTensor's "could not link to a BLAS installation" (a property of the install, shown once by
      the command line unless ``--quiet``; README, "Install");
    * FutureWarning / DeprecationWarning raised from PyMC, PyTensor, nutpie, ArviZ or xarray.

    Everything else (a RuntimeWarning from the data, PyMC's warnings about the model) still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*could not link to a BLAS.*", category=UserWarning)
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=_SAMPLER_MODULES)
        yield


#: The image libraries (Atomap and what it imports) whose notices :func:`image_library_warnings` hides.
_IMAGE_MODULES = r"(atomap|hyperspy|rsciio|exspy|traits|dask|skimage|numba|pint)(\..*)?"


@contextlib.contextmanager
def image_library_warnings():
    """Around Atomap / HyperSpy calls (import, reading an image, finding columns): hide their
    deprecation notices (FutureWarning, DeprecationWarning, and HyperSpy's
    VisibleDeprecationWarning, a UserWarning saying "... is deprecated"), raised from those
    libraries' modules; anything else they warn about (e.g. about the image) still shows."""
    with warnings.catch_warnings():
        for category in (FutureWarning, DeprecationWarning, PendingDeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=_IMAGE_MODULES)
        warnings.filterwarnings("ignore", message=r"(?s).*deprecated", category=UserWarning, module=_IMAGE_MODULES)
        yield
