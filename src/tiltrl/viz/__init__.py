"""Plots of exact solutions (optional extra: ``pip install tiltrl[plot]``).

- :func:`plot_grid_solution` — stationary distribution of the optimal process over a grid
  world, with policy arrows and tiles;
- :func:`plot_grid_field` — any per-state quantity over a grid world;
- :func:`plot_policy_and_stationary` — two-panel file: policy over ``V``, stationary map;
- :func:`plot_sweep` — thermodynamic curves (rates, entropy production, SCGF) vs ``beta``;
- :func:`plot_learning_curves` — errors of the tabular learners vs steps (mean, 95% interval);
- :func:`plot_scgf` — SCGF ``Lambda(k)`` and rate function ``I(a)``, cloning error bars;
- :func:`plot_run_curves` — learning curves of ``tiltrl train`` runs over seeds
  (:mod:`tiltrl.viz.deep`, also the agent-view animation of ``tiltrl render``).

Importing this package does not import matplotlib; every function imports it when called
and raises ImportError with the install hint if it is missing. Figures are
:class:`matplotlib.figure.Figure` objects built without pyplot, so any backend works.
"""

from tiltrl.viz.deep import plot_run_curves, read_run_curves
from tiltrl.viz.grid import (
    expected_displacement,
    grid_layout,
    plot_grid_field,
    plot_grid_solution,
    plot_policy_and_stationary,
)
from tiltrl.viz.ld import plot_scgf
from tiltrl.viz.learning import plot_learning_curves
from tiltrl.viz.thermo import plot_sweep

__all__ = [
    "expected_displacement",
    "grid_layout",
    "plot_learning_curves",
    "plot_run_curves",
    "read_run_curves",
    "plot_grid_field",
    "plot_grid_solution",
    "plot_policy_and_stationary",
    "plot_scgf",
    "plot_sweep",
]
