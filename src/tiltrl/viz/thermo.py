"""Thermodynamic curves of a beta sweep.

A :class:`tiltrl.Sweep` holds, per inverse temperature ``beta``, the optimal reward rate
``theta``, the mean reward ``energy = E_d[r]`` under the stationary distribution of the
optimal process, and the two "entropy production" terms ``policy_kl = E_d[KL(pi*||pi0)]``
and ``dynamics_kl = E_d[KL(p*||p)]`` (``shared/DESIGN.md`` §1), tied together by

    theta = energy - (policy_kl + dynamics_kl) / beta        (free energy F = -theta).

:func:`plot_sweep` draws three panels against ``beta`` on a log axis: the rates ``theta``
and ``energy`` (their gap is ``T`` times the entropy production, ``T = 1/beta``), the two
KL terms, and the scaled cumulant generating function ``Lambda(beta) = beta * theta =
log rho`` of the time-integrated reward under the prior dynamics (controlled case).

matplotlib is an optional extra (``pip install tiltrl[plot]``), imported on call only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiltrl.viz._mpl import new_figure, require_matplotlib, save_figure

__all__ = ["plot_sweep"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _as_named(sweep: Any) -> list[tuple[str | None, Any]]:
    if isinstance(sweep, Mapping):
        return [(str(k), v) for k, v in sweep.items()]
    if isinstance(sweep, Sequence) and not hasattr(sweep, "betas"):
        return [(getattr(s, "dynamics", None) or f"sweep {i}", s) for i, s in enumerate(sweep)]
    return [(None, sweep)]


def plot_sweep(
    sweep: Any,
    *,
    path: str | Path | None = None,
    title: str | None = None,
    dpi: int = 150,
    mc: Any = None,
) -> Any:
    """Thermodynamic curves versus ``beta`` (log x axis), three panels.

    Parameters
    ----------
    sweep
        A :class:`tiltrl.Sweep`, or several to overlay: a mapping ``label -> Sweep``
        (e.g. ``{"controlled": s1, "fixed": s2}``) or a sequence of sweeps (labelled by
        their ``dynamics``).
    path
        If given, the figure is also written there (parent folders are created).
    mc
        Optional Monte Carlo check ``(betas, energy, stderr)``: the reward per step measured
        by simulating the optimal process (:func:`tiltrl.ld.simulate_energy`), drawn with
        two-standard-error bars on the energy curve.

    Returns
    -------
    matplotlib.figure.Figure
        Panels: (a) reward rate ``theta`` (solid) and mean reward ``E_d[r]`` (dashed);
        (b) policy KL (solid) and dynamics KL (dashed), nats per step; (c) SCGF
        ``beta * theta``. Points where the solver did not converge are circled in red.
    """
    require_matplotlib()
    named = _as_named(sweep)
    fig = new_figure((13.0, 4.0))
    ax_rate, ax_kl, ax_scgf = fig.subplots(1, 3, sharex=True)

    flagged = False
    for i, (name, sw) in enumerate(named):
        colour = _PALETTE[i % len(_PALETTE)]
        betas = np.asarray(sw.betas, dtype=float)
        order = np.argsort(betas)
        b = betas[order]
        theta = np.asarray(sw.theta, dtype=float)[order]
        energy = np.asarray(sw.energy, dtype=float)[order]
        pkl = np.asarray(sw.policy_kl, dtype=float)[order]
        dkl = np.asarray(sw.dynamics_kl, dtype=float)[order]
        prefix = f"{name}: " if name else ""
        marker = "o" if b.size <= 30 else None

        ax_rate.plot(b, theta, "-", color=colour, marker=marker, ms=3.5,
                     label=rf"{prefix}$\theta$ (reward rate)")
        ax_rate.plot(b, energy, "--", color=colour, marker=marker, ms=3.5, mfc="white",
                     label=rf"{prefix}$\langle r\rangle_d$ (energy)")
        ax_rate.fill_between(b, theta, energy, color=colour, alpha=0.10, linewidth=0)

        ax_kl.plot(b, pkl, "-", color=colour, marker=marker, ms=3.5,
                   label=rf"{prefix}$\langle KL(\pi^*\|\pi_0)\rangle_d$")
        if np.any(np.abs(dkl) > 0) or sw.dynamics != "fixed":
            ax_kl.plot(b, dkl, "--", color=colour, marker=marker, ms=3.5, mfc="white",
                       label=rf"{prefix}$\langle KL(p^*\|p)\rangle_d$")

        # beta * theta is the SCGF of the reward only for the controlled (tilted) problem
        scgf_label = r"$\Lambda(\beta)=\beta\theta$" if sw.dynamics != "fixed" else (
            r"$\beta\theta$ (not an SCGF)")
        ax_scgf.plot(b, b * theta, "-", color=colour, marker=marker, ms=3.5,
                     label=prefix + scgf_label)

        bad = ~np.asarray(sw.converged, dtype=bool)[order]
        if bad.any():
            flagged = True
            for ax, y in ((ax_rate, theta), (ax_kl, pkl), (ax_scgf, b * theta)):
                ax.plot(b[bad], y[bad], "o", ms=9, mfc="none", mec="red", mew=1.3)

    if mc is not None:
        mb, me, ms = (np.asarray(x, dtype=float) for x in mc)
        ax_rate.errorbar(mb, me, yerr=2 * ms, fmt="x", color="black", ms=5, capsize=3,
                         zorder=5, label=r"Monte Carlo $\langle r\rangle$ ($\pm 2$ s.e.)")
    ax_rate.set_title("rates  (gap = T × entropy production)", fontsize=10)
    ax_rate.set_ylabel("reward per step")
    ax_kl.set_title("entropy production", fontsize=10)
    ax_kl.set_ylabel("nats per step")
    ax_kl.set_ylim(bottom=0)
    ax_scgf.set_title(r"SCGF  $\Lambda(\beta) = \log\rho$", fontsize=10)
    ax_scgf.set_ylabel(r"$\beta\,\theta$")
    for ax in (ax_rate, ax_kl, ax_scgf):
        ax.set_xscale("log")
        ax.set_xlabel(r"inverse temperature $\beta$")
        ax.grid(True, which="major", alpha=0.3)
        ax.grid(True, which="minor", alpha=0.1)
        ax.legend(fontsize=7, frameon=False)
    if flagged:
        from matplotlib.lines import Line2D

        ax_rate.legend(
            handles=[*ax_rate.get_legend_handles_labels()[0],
                     Line2D([], [], linestyle="none", marker="o", mfc="none", mec="red",
                            label="not converged")],
            fontsize=7, frameon=False,
        )
    if title is None:
        dyn = {getattr(sw, "dynamics", "") for _, sw in named}
        title = "thermodynamics of the optimal policy" + (
            f" ({dyn.pop()} dynamics)" if len(dyn) == 1 else ""
        )
    fig.suptitle(title, fontsize=11)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
