"""causalcrystal: Bayesian causal structure of crystalline solids imaged atom by atom.

The public API is imported lazily so that ``causalcrystal --help`` stays fast; see the README's
architecture section for where each pipeline stage lives.
"""

from importlib import import_module

__version__ = "0.1.0"

# No exported name may equal a submodule's name: importing the submodule would set the package
# attribute to the module and shadow the function (hence simulator.py exporting simulate).
_EXPORTS = {
    "DESCRIPTORS": "causalcrystal.cells",
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
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value  # cache: later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'causalcrystal' has no attribute {name!r}")
