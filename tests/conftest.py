"""Shared test data."""

import numpy as np


def eq1_chain(n: int, seed: int) -> np.ndarray:
    """The paper's toy chain (Eq. 1): z1 = 3 z0 + e1, z2 = -6 z1 + e2, z0 and e uniform on (-1, 1)."""
    rng = np.random.default_rng(seed)
    z0 = rng.uniform(-1, 1, n)
    z1 = 3.0 * z0 + rng.uniform(-1, 1, n)
    z2 = -6.0 * z1 + rng.uniform(-1, 1, n)
    return np.column_stack([z0, z1, z2])


def lgd_spec_file(path, labels):
    """Write a concentration specification with the couplings ``labels`` of ``lgd.toml`` (its
    shared priors and sampler settings, blocks copied verbatim) to ``path``; return ``path``."""
    from causalcrystal import concentration as cn

    head, *blocks = (cn.SPECS_DIR / "lgd.toml").read_text().split("[[coupling]]")
    spec = cn.load_spec("lgd")
    keep = [b for b, c in zip(blocks, spec.couplings) if c.label in labels]
    assert len(keep) == len(labels), f"{labels} not all in lgd.toml"
    path.write_text(head + "".join("[[coupling]]" + b for b in keep))
    return path
