"""The base of every error causalcrystal raises on purpose.

``except causalcrystal.CausalCrystalError`` catches them all (bad input, bad options, a folder that
holds something else, a damaged work file); each is also the built-in kind it always was
(``CellTableError`` is a ``ValueError``, ``RunExistsError`` a ``FileExistsError``, ...), so existing
``except ValueError`` code keeps working. Every message names the file, column or option, the cause
and the fix.
"""


class CausalCrystalError(Exception):
    """Base class of causalcrystal's own errors."""
