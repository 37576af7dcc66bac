"""causalcrystal: Bayesian causal structure of crystalline solids imaged atom by atom.

The public API is imported lazily so that ``causalcrystal --help`` stays fast; see the README's
architecture section for where each pipeline stage lives.
"""

from importlib import import_module

from causalcrystal import logs as _logs

__version__ = "0.1.0"
_logs._default_setup()  # messages to stderr unless the application configured logging (as PyMC does)

# No exported name may equal a submodule's name: importing the submodule would set the package
# attribute to the module and shadow the function (hence simulator.py exporting simulate).
_EXPORTS = {
    "DESCRIPTORS": "causalcrystal.cells",
    "CausalCrystalError": "causalcrystal.errors",
    "CellTableError": "causalcrystal.cells",
    "make_cells": "causalcrystal.cells",
    "validate": "causalcrystal.cells",
    "images": "causalcrystal.cells",
    "read": "causalcrystal.io",
    "write_netcdf": "causalcrystal.io",
    "descriptors_from_atoms": "causalcrystal.atoms",
    "simulate": "causalcrystal.simulator",
    "LGDParams": "causalcrystal.lgd",
    "make_tiles": "causalcrystal.tiling",
    "tile_cells": "causalcrystal.tiling",
    "run_pipeline": "causalcrystal.engine",
    "compare_run": "causalcrystal.compare",
    "run_concentration": "causalcrystal.concentration",
    "write_report": "causalcrystal.report",
    "open_run": "causalcrystal.runs",
    "Run": "causalcrystal.runs",
    "summary": "causalcrystal.runs",
    "tile_loo": "causalcrystal.runs",
    "tile_idata": "causalcrystal.runs",
}

__all__ = sorted(_EXPORTS)


#: Submodules reachable as attributes (``cc.io.read``) without importing them first.
_SUBMODULES = ("atoms", "cells", "checks", "cli", "collinearity", "columns", "compare", "concentration",
               "direction", "discovery", "engine", "errors", "evidence", "executor", "gibbs", "interventions",
               "intervals", "io", "jobs", "joint", "lgd", "logs", "plots", "priors", "report", "runs", "scenarios", "sem",
               "simulator", "tiling")


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: later look-ups skip __getattr__
        return value
    if name in _SUBMODULES:
        return import_module(f"causalcrystal.{name}")  # the import sets the package attribute
    raise AttributeError(f"module 'causalcrystal' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_EXPORTS, *_SUBMODULES})
