"""How often the convergence rule (r_hat <= 1.01 on every coefficient) fires for chains that ARE
converged: AR(1) chains (stationary from the first draw) with autocorrelation rho, rank-normalised
split r_hat (ArviZ), 400 replicates per setting; a tile has ~30 coefficients. Run by hand
(seconds): ``python benchmarks/bench_rhat_false_alarms.py``. Results in RESULTS.md (issue 13).
"""
import numpy as np, arviz as az
rng = np.random.default_rng(0)
def ar1(C, N, rho, R):
    x = np.zeros((R, C, N)); e = rng.standard_normal((R, C, N)) * np.sqrt(1 - rho**2)
    x[:, :, 0] = rng.standard_normal((R, C))
    for t in range(1, N): x[:, :, t] = rho * x[:, :, t-1] + e[:, :, t]
    return x
R = 400
for rho in (0.5, 0.7):
    for C, N in ((2, 1000), (4, 500), (8, 250)):
        x = ar1(C, N, rho, R)
        ds = az.convert_to_dataset({"v": np.moveaxis(x, 0, -1)})
        rh = az.rhat(ds)["v"].values; es = az.ess(ds, method="bulk")["v"].values
        # tile with 30 independent coefficients: P(max r_hat > 1.01)
        p1 = (rh > 1.01).mean()
        print(f"rho {rho} chains {C} x {N}: ESS median {np.median(es):.0f}, P(rhat>1.01) per coef {p1:.3f}, per 30-coef tile {1-(1-p1)**30:.2f}, P(ESS<400) {np.mean(es<400):.2f}")
