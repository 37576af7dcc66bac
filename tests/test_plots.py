"""Public figures (causalcrystal.plots): each plot function returns a figure with the expected
axes and draws what its data twin returns."""

import numpy as np
import pandas as pd
import pytest
from conftest import fixed_seed

from causalcrystal import plots
from causalcrystal.cells import DESCRIPTORS


def _summary():
    """Two tiles of one image: I14 -> a in both (0.6, 0.4), a -> Px in one tile (0.8), a weak b -> a."""
    rows = []
    for tile, edges in ((0, [("a", "I14", 0.6, 0.99), ("Px", "a", 0.8, 0.95), ("a", "b", 0.05, 0.2)]),
                        (1, [("a", "I14", 0.4, 0.97), ("a", "b", 0.02, 0.1)])):
        rows += [{"tile": tile, "image": "img$_1", "effect": e, "cause": c, "mean": m, "inclusion_prob": p}
                 for e, c, m, p in edges]
    return pd.DataFrame(rows)


def test_graph_data_averages_over_the_images_tiles():
    d = plots.graph_data(_summary(), "img$_1", min_inclusion=0.4)
    got = {(r.effect, r.cause): (r.mean, r.inclusion, r.allowed) for r in d.itertuples()}
    # a -> Px is in one tile of two: mean 0.4, inclusion 0.475; b -> a (0.15) is not drawn
    assert got == {("a", "I14"): (pytest.approx(0.5), pytest.approx(0.98), 2),
                   ("Px", "a"): (pytest.approx(0.4), pytest.approx(0.475), 1)}


def test_graph_layers_follow_the_causal_order():
    edges = pd.DataFrame({"effect": ["a", "Px", "Py"], "cause": ["I14", "a", "a"]})
    layers = plots.graph_layers(edges)
    assert layers["I14"] == 0 and layers["a"] == 1 and layers["Px"] == layers["Py"] == 2
    assert layers["b"] == layers["Vol"] == 3  # nodes without edges in the last layer
    # a given order drops edges against it (averaged tiles can disagree) and layers the rest
    cyc = pd.DataFrame({"effect": ["a", "I14"], "cause": ["I14", "a"]})
    assert plots.graph_layers(cyc, order=["I14", "a"])["I14"] < plots.graph_layers(cyc, order=["I14", "a"])["a"]
    both = plots.graph_layers(cyc)  # no order: the cycle is one layer, never an exception
    assert both["I14"] == both["a"]


def test_plot_graph_returns_a_figure_drawing_the_edges_literally():
    fig = plots.plot_graph(_summary(), "img$_1", min_inclusion=0.4)
    (ax,) = fig.axes
    texts = [t.get_text() for t in ax.texts]
    assert sorted(set(texts) & set(DESCRIPTORS)) == sorted(DESCRIPTORS)  # one node label per descriptor
    want = {f"{r.mean:+.2f} ({r.inclusion:.2f})" for r in plots.graph_data(_summary(), "img$_1", min_inclusion=0.4)
            .itertuples()}
    assert want <= set(texts) and len(want) == 2  # each drawn edge labelled "mean (inclusion)"
    assert ax.get_title() == r"img\$_1: 2 edges"  # the user's `$` drawn literally
    fig.savefig(__import__("io").BytesIO(), format="png")  # it renders
    # into a given axes: the same figure comes back
    from matplotlib.figure import Figure

    f2 = Figure()
    ax2 = f2.add_subplot()
    assert plots.plot_graph(_summary(), "img$_1", ax2) is f2


def test_descriptor_map_puts_every_cell_at_its_row_and_col():
    from causalcrystal.simulator import simulate

    cells = simulate((0.0, 0.2), shape=(6, 5), seed=fixed_seed(0))
    img = str(cells["image"].values[-1])
    keep = ~((cells["image"].values.astype(str) == img) & (cells["row"].values == 2) & (cells["col"].values == 3))
    cells = cells.isel(cell=np.flatnonzero(keep))  # one missing cell: NaN in the map
    d = plots.descriptor_map_data(cells, img, "alpha")
    assert d["values"].shape == (6, 5) and np.isnan(d["values"][2, 3]) and np.isfinite(d["values"]).sum() == 29
    m = cells["image"].values.astype(str) == img
    np.testing.assert_array_equal(d["values"][cells["row"].values[m], cells["col"].values[m]], cells["alpha"].values[m])
    fig = plots.plot_descriptor_map(cells, img, "alpha")
    assert len(fig.axes) == 2 and fig.axes[0].yaxis_inverted()  # the map and its colour bar; rows downwards
    with pytest.raises(ValueError, match="images"):
        plots.descriptor_map_data(cells, "nope", "alpha")
    with pytest.raises(ValueError, match="variables"):
        plots.descriptor_map_data(cells, img, "nope")


def test_plot_polarisation_draws_one_arrow_per_cell():
    from causalcrystal.simulator import simulate

    cells = simulate((0.0,), shape=(6, 5), seed=fixed_seed(0))
    img = str(cells["image"].values[0])
    d = plots.polarisation_data(cells, img)
    assert len(d["x"]) == 30 and d["image"] is None
    np.testing.assert_array_equal(d["Px"], cells["Px"].values)
    fig = plots.plot_polarisation(cells, img)
    ax = fig.axes[0]
    (q,) = ax.collections
    assert q.N == 30 and ax.yaxis_inverted() and len(fig.axes) == 2  # the arrows and the colour bar
    np.testing.assert_allclose(q.U, d["Px"])
    np.testing.assert_allclose(q.V, d["Py"])


def test_prior_posterior_draws_both_densities_on_common_bins():
    import arviz as az

    rng = np.random.default_rng(fixed_seed(2))
    prior = {k: rng.normal(m, 0.1, (1, 2000)) for k, m in (("y0", 0.2), ("eps0", 5.0), ("y_star", 0.4))}
    post = {k: rng.normal(m, 0.01, (2, 500)) for k, m in (("y0", 0.18), ("eps0", 5.0), ("y_star", 0.38))}
    idata = az.from_dict(prior=prior, posterior=post)
    d = plots.prior_posterior_data(idata)
    for name, v in d.items():
        width = np.diff(v["edges"])
        # densities on the same bins, each integrating to ~1 (the 0.1 % tails fall outside)
        assert abs((v["prior"] * width).sum() - 1) < 0.01 and abs((v["posterior"] * width).sum() - 1) < 0.01
        assert v["posterior"].max() > 5 * v["prior"].max()  # 10x narrower: a taller density
    fig = plots.plot_prior_posterior(idata)
    assert [ax.get_title() for ax in fig.axes] == ["y0", "eps0", "y_star"]
    with pytest.raises(KeyError, match="no 'prior' group.*--overwrite"):
        plots.prior_posterior_data(az.from_dict(posterior=post))


def test_wall_distance_on_a_known_domain_pattern():
    """Two 180-degree domains (Px = +1 for col < 5, -1 beyond) on a 6 x 10 grid, one cell missing:
    the wall cells are columns 4 and 5; the distance grows by one cell per column away from them,
    and a 90-degree rotation is not a wall."""
    import xarray as xr

    from causalcrystal.plots import wall_distance

    rows, cols = np.meshgrid(np.arange(6), np.arange(10), indexing="ij")
    keep = ~((rows == 2) & (cols == 8)).ravel()
    px = np.where(cols < 5, 1.0, -1.0).ravel()
    cells = xr.Dataset({"Px": ("cell", px[keep]), "Py": ("cell", np.zeros(keep.sum())),
                        "row": ("cell", rows.ravel()[keep]), "col": ("cell", cols.ravel()[keep]),
                        "image": ("cell", np.array(["img"] * keep.sum()))})
    d = wall_distance(cells, "img")
    assert d["walls"][:, [4, 5]].all() and d["walls"].sum() == 12
    np.testing.assert_array_equal(d["values"][0], [4, 3, 2, 1, 0, 0, 1, 2, 3, 4])
    assert np.isnan(d["values"][2, 8])
    rotated = cells.assign(Px=("cell", np.where(cols < 5, 1.0, 0.0).ravel()[keep]),
                           Py=("cell", np.where(cols < 5, 0.0, 1.0).ravel()[keep]))
    assert np.isinf(wall_distance(rotated, "img")["values"][0, 0])
