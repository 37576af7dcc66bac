"""The base of every error causalcrystal raises on purpose.

``except causalcrystal.CausalCrystalError`` catches them all (bad input, bad options, a folder that
holds something else, a damaged work file); each is also the built-in kind it always was
(``CellTableError`` is a ``ValueError``, ``RunExistsError`` a ``FileExistsError``, ...), so existing
``except ValueError`` code keeps working. Every message names the file, column or option, the cause
and the fix.
"""

import difflib
import numbers
from dataclasses import fields


class CausalCrystalError(Exception):
    """Base class of causalcrystal's own errors."""


class WorkerLostError(CausalCrystalError, RuntimeError):
    """A worker process ended abruptly (killed by a signal, e.g. the out-of-memory killer) while a
    job ran; the parts finished so far are kept, so the same command resumes."""


def check_field_types(spec, section: str, sections: dict | None = None) -> None:
    """Refuse a specification value of the wrong kind, naming the key and the fix.

    Each field of the dataclass ``spec`` whose default is a bool, an integer, a number, a string
    or a tuple of numbers must hold a value of that kind (an integer is a number; a list stands
    for a tuple, as JSON and TOML give them back). Without this check a number written in quotes
    in a TOML file (``draws = "500"``) surfaced later as ``'<' not supported between instances
    of 'str' and 'int'``. Raises ``ValueError`` ``"<section>: <key> = <value> ..."``; fields
    defaulting to ``None`` or to another dataclass are left to the class's own checks.
    ``sections``: field name -> the section to name instead (one dataclass read from several TOML
    tables, e.g. the concentration specification's ``[shared]`` and ``[sampler]``).
    """
    def is_number(v):
        return isinstance(v, numbers.Real) and not isinstance(v, bool)

    for f in fields(spec):
        default, value = f.default, getattr(spec, f.name)
        if isinstance(default, bool):
            ok, want = isinstance(value, bool), "true or false"
        elif isinstance(default, numbers.Integral):
            ok, want = isinstance(value, numbers.Integral) and not isinstance(value, bool), "a whole number"
        elif isinstance(default, numbers.Real):
            ok, want = is_number(value), "a number"
        elif isinstance(default, str):
            ok, want = isinstance(value, str), "a string (in quotes)"
        elif isinstance(default, tuple) and default and all(is_number(v) for v in default):
            ok = isinstance(value, (tuple, list)) and len(value) == len(default) and all(map(is_number, value))
            want = f"a list of {len(default)} numbers, e.g. {list(default)}"
        else:  # None or no default, nested specifications: checked by their own classes
            continue
        if not ok:
            shown = list(value) if isinstance(value, tuple) else value  # as written in the TOML file
            where = (sections or {}).get(f.name, section)
            raise ValueError(f"{where}: {f.name} = {shown!r} must be {want}{quotes_hint(value)}.")


def quotes_hint(value) -> str:
    """Why a TOML value in quotes is refused where a number or a boolean belongs ("" otherwise)."""
    if isinstance(value, str):
        try:
            float(value)
            return " (a number in quotes is a string: write it without the quotes)"
        except ValueError:
            if value.strip().lower() in ("true", "false"):
                return " (write true or false without quotes)"
    return ""


def spec_table(raw: dict, key: str, allowed, section: str | None = None, elsewhere: dict | None = None) -> dict:
    """``raw[key]`` (default ``{}``), a TOML table whose keys must all be in ``allowed``.

    The specification loaders' guard against a misspelt key or a section written as a value
    (``sampler = 5``), which surfaced as Python's "__init__() got an unexpected keyword argument"
    or "'int' object is not a mapping". ``section``: how the message names the table (default
    ``[key]``); ``elsewhere``: key -> the table it belongs in, for keys of the file's other tables
    (``draws`` written under ``[prior]``). Raises ``ValueError`` naming the key and the keys allowed.
    """
    section = section or f"[{key}]"
    table = raw.get(key, {})
    if not isinstance(table, dict):
        raise ValueError(f"{section} must be a table (a line '{section}' followed by 'name = value' lines), "
                         f"not {key} = {table!r}.")
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        moved = [f"{k} belongs in {elsewhere[k]}" for k in unknown if k in (elsewhere or {})]
        hint = f" ({'; '.join(moved)})" if moved else did_you_mean(unknown, allowed)
        raise ValueError(f"{section}: unknown key(s) {unknown}{hint}; the known ones are {sorted(allowed)}.")
    return table


def did_you_mean(unknown, known) -> str:
    """`` (did you mean 'draws'?)`` for the misspelt names in ``unknown`` that are close to one of
    ``known`` (``difflib``'s similarity >= 0.6), else ``""``. A list of ten allowed keys is easy to
    read past; the one meant is not."""
    pairs = []
    by_lower = {str(k).lower(): str(k) for k in known}  # 'LGD' means 'lgd'
    for word in unknown:
        close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
        if close:
            close = [by_lower[close[0]]]
            pairs.append(f"{close[0]!r}" if len(unknown) == 1 else f"{close[0]!r} for {str(word)!r}")
    return f" (did you mean {', '.join(pairs)}?)" if pairs else ""
