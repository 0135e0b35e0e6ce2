"""Large-deviation pictures: the SCGF ``Lambda(k)`` and the rate function ``I(a)``.

Discrete-time SCGF of an additive observable, ``Lambda(k) = log rho(P_k)`` (Touchette,
Phys. Rep. 478 (2009) §4), and its Legendre–Fenchel transform ``I(a) = sup_k [k a -
Lambda(k)]``. Cloning estimates (Giardinà, Kurchan and Peliti 2006) are drawn as points
with error bars on the exact curve; each estimate ``Lambda_j`` at ``k_j`` also gives the
tangent line ``a -> k_j a - Lambda_j`` of ``I``, which is how it is shown on the rate
panel (points at ``a = Lambda'(k_j)``, the exact conjugate).

matplotlib is an optional extra (``pip install tiltrl[plot]``), imported on call only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tiltrl.viz._mpl import new_figure, require_matplotlib, save_figure

__all__ = ["plot_scgf"]


def plot_scgf(
    k: Any,
    scgf: Any,
    *,
    a: Any = None,
    rate: Any = None,
    mean: Any = None,
    cloning_k: Any = None,
    cloning_estimate: Any = None,
    cloning_stderr: Any = None,
    status: Any = None,
    title: str | None = None,
    path: str | Path | None = None,
    dpi: int = 150,
) -> Any:
    """Two panels: ``Lambda(k)`` (left) and ``I(a)`` (right).

    Parameters
    ----------
    k, scgf
        The exact curve ``Lambda(k)``.
    a, rate
        The rate function ``I(a)`` (e.g. :func:`tiltrl.ld.rate_function`); infinite
        values (outside the domain) are not drawn. Omit both for a one-panel figure.
    mean
        ``Lambda'(k)`` at the same ``k`` (optional): the conjugate points ``(Lambda'(k),
        k Lambda'(k) - Lambda(k))`` are then drawn on the rate panel too, and cloning
        points are placed there.
    cloning_k, cloning_estimate, cloning_stderr
        Cloning estimates with standard errors (error bars are two standard errors).
    status
        Per-point status of ``rate`` (``"interior"``, ``"affine"``, ``"edge"``,
        ``"outside"``); affine and edge points are marked.

    Returns
    -------
    matplotlib.figure.Figure
    """
    require_matplotlib()
    k_arr = np.asarray(k, dtype=float).ravel()
    lam = np.asarray(scgf, dtype=float).ravel()
    order = np.argsort(k_arr)
    two = (a is not None and rate is not None) or mean is not None
    fig = new_figure((10.0, 4.0) if two else (5.2, 4.0))
    axes = np.atleast_1d(fig.subplots(1, 2 if two else 1))
    ax = axes[0]
    ax.plot(k_arr[order], lam[order], "-", color="#1f77b4", lw=1.6,
            marker="o" if k_arr.size <= 30 else None, ms=3.5, label=r"exact $\Lambda(k)$")
    ax.axhline(0.0, color="k", lw=0.5, alpha=0.5)
    ax.axvline(0.0, color="k", lw=0.5, alpha=0.5)
    has_cloning = cloning_k is not None and cloning_estimate is not None
    if has_cloning:
        ck = np.asarray(cloning_k, dtype=float).ravel()
        ce = np.asarray(cloning_estimate, dtype=float).ravel()
        cs = (np.zeros_like(ce) if cloning_stderr is None
              else np.asarray(cloning_stderr, dtype=float).ravel())
        ax.errorbar(ck, ce, yerr=2 * cs, fmt="s", color="#d62728", ms=4, capsize=3,
                    label=r"cloning ($\pm 2$ s.e.)")
    ax.set_xlabel(r"tilt $k$")
    ax.set_ylabel(r"$\Lambda(k)$")
    ax.set_title("scaled cumulant generating function", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if two:
        ax_r = axes[1]
        finite_rates: list[np.ndarray] = []
        if mean is not None:
            # the transform at the curve's own k: I(Lambda'(k)) = k Lambda'(k) - Lambda(k)
            m = np.asarray(mean, dtype=float).ravel()
            conj = k_arr * m - lam
            ax_r.plot(m[order], conj[order], "-", color="#1f77b4", lw=1.6,
                      label=r"$I(\Lambda'(k)) = k\Lambda'(k) - \Lambda(k)$")
            finite_rates.append(conj[np.isfinite(conj)])
            if has_cloning:
                # estimate Lambda_j at k_j: I(Lambda'(k_j)) ~ k_j Lambda'(k_j) - Lambda_j
                at = np.interp(ck, k_arr[order], m[order])
                ax_r.errorbar(at, ck * at - ce, yerr=2 * cs, fmt="s", color="#d62728", ms=4,
                              capsize=3, label=r"cloning: $k\Lambda'(k) - \Lambda_{clone}$")
        if a is not None and rate is not None:
            a_arr = np.asarray(a, dtype=float).ravel()
            r_arr = np.asarray(rate, dtype=float).ravel()
            fin = np.isfinite(r_arr)
            ax_r.plot(a_arr[fin], r_arr[fin], "o", color="#2ca02c", ms=5,
                      label=r"$I(a)$, Legendre–Fenchel")
            finite_rates.append(r_arr[fin])
            if status is not None:
                st = np.asarray(list(status))
                for kind, mk in (("affine", "^"), ("edge", "D")):
                    sel = (st == kind) & fin
                    if sel.any():
                        ax_r.plot(a_arr[sel], r_arr[sel], mk, color="#ff7f0e", ms=8,
                                  mfc="none", label=f"{kind} point (see notes)")
        low = min((float(x.min()) for x in finite_rates if x.size), default=0.0)
        ax_r.set_ylim(bottom=min(0.0, low))
        ax_r.set_xlabel(r"time average $a = A_T / T$")
        ax_r.set_ylabel(r"$I(a)$")
        ax_r.set_title(r"rate function $I(a) = \sup_k\,[k a - \Lambda(k)]$", fontsize=10)
        ax_r.grid(True, alpha=0.3)
        ax_r.legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    if path is not None:
        save_figure(fig, path, dpi=dpi)
    return fig
