"""The ``direction_identified`` rule's level and power (``checks.non_gaussian``), numpy only.

Random 8-variable DAGs (``scenarios.random_dag``), every noise of one family (or half Gaussian,
half Laplace), residuals of the true equations by least squares (what the posterior-mean
residuals approach), Shapiro-Wilk per variable. Three rules for "this variable's noise is
non-Gaussian": each variable at 5 % (the old rule), Benjamini-Hochberg over the tile's variables
(the rule now), Holm over them. An edge's direction counts as identified when its cause or its
effect is declared non-Gaussian.

Printed per family and tile size: the share of edges called identified and, for one-family
tiles, the share of tiles with any edge called identified (for ``half``: the share of edges
joining two Gaussian variables that are called identified, then the share of the other edges).

    python benchmarks/bench_direction_rule.py [--tiles 600]
"""

import argparse

import numpy as np
from scipy import stats

from causalcrystal.scenarios import NOISE, random_dag


def holm(p, alpha):
    rej = np.zeros(len(p), dtype=bool)
    for k, i in enumerate(np.argsort(p)):
        if p[i] > alpha / (len(p) - k):
            break
        rej[i] = True
    return rej


def main(tiles: int) -> None:
    rng = np.random.default_rng(0)
    print("family cells | each-at-5% edges tiles | BH edges tiles | Holm edges tiles")
    for fam in ("gaussian", "laplace", "uniform", "t5", "skewed", "bimodal", "half"):
        for n in (64, 256, 576):
            edges = {k: [] for k in ("raw", "bh", "holm")}
            other = {k: [] for k in edges}
            for _ in range(tiles):
                B, _ = random_dag(rng)
                fams = [fam] * 8
                if fam == "half":
                    fams = ["gaussian"] * 4 + ["laplace"] * 4
                    rng.shuffle(fams)
                X = np.column_stack([NOISE[f](rng, n) for f in fams]) @ np.linalg.inv(np.eye(8) - B).T
                p = np.empty(8)
                for v in range(8):
                    Z = np.column_stack([np.ones(n), X[:, np.flatnonzero(B[v])]])
                    p[v] = stats.shapiro(X[:, v] - Z @ np.linalg.lstsq(Z, X[:, v], rcond=None)[0]).pvalue
                declared = {"raw": p <= 0.05, "bh": stats.false_discovery_control(p) <= 0.05, "holm": holm(p, 0.05)}
                i, j = np.nonzero(B)
                gauss = np.array([f == "gaussian" for f in fams])
                both = gauss[i] & gauss[j] if fam == "half" else np.ones(len(i), dtype=bool)
                for k, d in declared.items():
                    ident = d[i] | d[j]
                    edges[k] += list(ident[both])
                    other[k].append(ident[~both].mean() if fam == "half" and (~both).any() else ident.any())
            print(fam, n, " | ".join(f"{np.mean(edges[k]):.3f} {np.nanmean(other[k]):.3f}" for k in edges), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiles", type=int, default=600)
    main(ap.parse_args().tiles)
