"""Learning curves of the tabular learners against the exact solution.

Errors of :mod:`tiltrl.agents` (soft Q-learning: Haarnoja et al. 2017, Fox et al. 2016;
bounded: Adamczyk et al. 2024; U-learning: Arriojas et al. PRR 2023; differential:
Wan, Naik and Sutton 2021) versus steps: mean over seeds and the 95% interval, one panel
per metric, log-log axes for the errors. Convention (DESIGN.md §1): ``theta`` is the
reward rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from tiltrl.viz._mpl import new_figure

__all__ = ["plot_learning_curves"]

_LABELS = {
    "q_max": "max |Q - Q*|",
    "q_mean": "mean |Q - Q*|",
    "theta": "|theta - theta*|",
    "kl": "mean KL(pi || pi*)",
    "cosine": "1 - cos(u, u*)",
    "eval_return": "evaluation return",
}


def plot_learning_curves(results: Any | Mapping[str, Any], *, title: str | None = None,
                         metrics: tuple[str, ...] | None = None) -> Any:
    """Figure of error curves for one :class:`~tiltrl.agents.LearnResult` (or its
    ``Curves``) or a mapping ``label -> result`` drawn on the same axes."""
    runs = dict(results) if isinstance(results, Mapping) else {"": results}
    curves = {k: getattr(v, "curves", v) for k, v in runs.items()}
    curves = {k: c for k, c in curves.items() if c is not None}
    if not curves:
        raise ValueError("no curves to plot (run learn with a reference)")
    if metrics is None:
        present = [m for m in _LABELS
                   if any(np.isfinite(c.values[m]).any() for c in curves.values())]
        metrics = tuple(present)
    n = len(metrics)
    cols = min(3, n)
    rows = int(np.ceil(n / cols))
    fig = new_figure((4.2 * cols, 3.2 * rows))
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, name in zip(axes, metrics, strict=False):
        for label, c in curves.items():
            mean, lo, hi = c.summary(name)
            if name == "cosine":
                mean, lo, hi = 1 - mean, 1 - hi, 1 - lo
            line = ax.plot(c.steps, mean, label=label or None)[0]
            ax.fill_between(c.steps, lo, hi, color=line.get_color(), alpha=0.25, lw=0)
            if name == "eval_return" and "eval_return" in c.reference:
                ax.axhline(c.reference["eval_return"], color="k", ls="--", lw=0.8)
        ax.set_xscale("log")
        if name != "eval_return":
            ax.set_yscale("log")
        ax.set_xlabel("steps per seed")
        ax.set_title(_LABELS[name], fontsize=10)
        if any(curves):
            ax.legend(fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig
