"""The base of every error causalcrystal raises on purpose.

``except causalcrystal.CausalCrystalError`` catches them all (bad input, bad options, a folder that
holds something else, a damaged work file); each is also the built-in kind it always was
(``CellTableError`` is a ``ValueError``, ``RunExistsError`` a ``FileExistsError``, ...), so existing
``except ValueError`` code keeps working. Every message names the file, column or option, the cause
and the fix.
"""


class CausalCrystalError(Exception):
    """Base class of causalcrystal's own errors."""


class WorkerLostError(CausalCrystalError, RuntimeError):
    """A worker process ended abruptly (killed by a signal, e.g. the out-of-memory killer) while a
    job ran; the parts finished so far are kept, so the same command resumes."""
