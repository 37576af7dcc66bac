"""Shared test data."""

import numpy as np


def eq1_chain(n: int, seed: int) -> np.ndarray:
    """The paper's toy chain (Eq. 1): z1 = 3 z0 + e1, z2 = -6 z1 + e2, z0 and e uniform on (-1, 1)."""
    rng = np.random.default_rng(seed)
    z0 = rng.uniform(-1, 1, n)
    z1 = 3.0 * z0 + rng.uniform(-1, 1, n)
    z2 = -6.0 * z1 + rng.uniform(-1, 1, n)
    return np.column_stack([z0, z1, z2])
