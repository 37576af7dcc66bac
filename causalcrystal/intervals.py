"""One naming of posterior intervals in every output (ArviZ's ``az.summary`` convention).

* a highest-density interval of probability ``p``: ``hdi_{100 (1 - p) / 2}%`` and
  ``hdi_{100 (1 + p) / 2}%`` (``hdi_5%``, ``hdi_95%`` for 90 %), as ``az.summary(hdi_prob=p)``;
* an equal-tailed interval (quantiles): ``eti_{100 q}%`` (``eti_5%``, ``eti_95%``; ``eti_25%``,
  ``eti_75%`` for a 50 % band) and ``median``, as ``az.summary(stat_focus="median")``.

A quantity's own name prefixes them where a table holds several (``amplitude_eti_5%``). Used by
``summary.csv`` (HDI), ``interventions.summarize`` (HDI), ``compare``'s ``averaged.csv`` (ETI: the
quantiles of a weighted mixture of models) and the concentration model's ``couplings.csv`` and
``curves.csv`` (ETI). Files written before this naming (``q05``, ``hdi_low``, ``amplitude_5%``,
``y``) are read through :data:`OLD_NAMES`.
"""

from __future__ import annotations


def _pct(x: float) -> str:
    return f"{100.0 * x:.10g}%"


def hdi_names(prob: float = 0.9) -> tuple[str, str]:
    """``(lower, upper)`` names of a ``prob`` highest-density interval: ``("hdi_5%", "hdi_95%")`` at 0.9."""
    return f"hdi_{_pct((1 - prob) / 2)}", f"hdi_{_pct((1 + prob) / 2)}"


def eti_name(q: float) -> str:
    """Name of the ``q`` quantile: ``"median"`` at 0.5, else ``"eti_{100 q}%"`` (``"eti_5%"`` at 0.05)."""
    return "median" if q == 0.5 else f"eti_{_pct(q)}"


#: Column / variable names of outputs written before the naming was unified, and their names now.
OLD_NAMES = {"q05": "eti_5%", "q25": "eti_25%", "q50": "median", "q75": "eti_75%", "q95": "eti_95%",
             "hdi_low": "hdi_5%", "hdi_high": "hdi_95%", "amplitude_5%": "amplitude_eti_5%",
             "amplitude_95%": "amplitude_eti_95%"}


def renamed(table):
    """A DataFrame or Dataset with old interval names (:data:`OLD_NAMES`) renamed to today's."""
    names = set(table.columns) if hasattr(table, "columns") else set(table.variables)
    old = {k: v for k, v in OLD_NAMES.items() if k in names and v not in names}
    if not old:
        return table
    return table.rename(columns=old) if hasattr(table, "columns") else table.rename(old)
