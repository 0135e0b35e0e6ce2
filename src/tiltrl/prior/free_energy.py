"""Free-energy view of shaping in the average-reward (Perron root) case, and its bounds.

Convention (``shared/DESIGN.md`` §1): ``theta = log(rho)/beta`` is the optimal reward rate,
``F = -theta`` the free energy (in reward units, ``F = E - T S`` with ``T = 1/beta``);
``u``/``v`` the right/left Perron eigenvectors of the tilted matrix
``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r(s,a,s')) pi0(a'|s')``, ``d = u v`` the stationary
law of the optimal (driven) process, ``p*`` its dynamics.

A new reward ``r~ = r + kappa`` (same ``p``, ``pi0``) tilts ``M~ = M ∘ exp(beta kappa)``.

* **Two free energies related by a third** (Adamczyk et al., AAAI 2023):
  ``F~ = F + F_K``, ``F_K = -theta_K`` the free energy of the correction task
  (:func:`tiltrl.prior.shaping`).
* **Gibbs-Bogoliubov bound** (first order; Bogoliubov 1958, Feynman 1972 "Statistical
  Mechanics" §2.11; here Jensen's inequality on the path measure of the old driven process,
  equivalently the variational principle ``theta~ = max_process (E[r~] - KL rate / beta)``
  evaluated at the old optimal process):
  ``theta~ >= theta + E_{d}[E_{p*}[kappa]]`` -- in free energies ``F~ <= F + <kappa-term>``.
  It holds for fixed dynamics too (``p* = p``, ``d`` the stationary law of ``pi*``). It is
  tight to first order: ``theta~(eps) - bound(eps) = O(eps^2)`` for ``kappa = eps * delta``,
  and exact for constant ``kappa``.
* **Perron-root comparison bounds** (controlled dynamics; Collatz 1942, Wielandt 1950;
  Horn and Johnson, "Matrix Analysis", Thm. 8.1.26 and Cor. 8.1.29 (monotonicity);
  DESIGN.md §5 for the residual form):

  - elementwise: ``e^{beta min kappa} M <= M~ <= e^{beta max kappa} M`` entrywise, so
    ``theta + min kappa <= theta~ <= theta + max kappa``;
  - right Collatz-Wielandt with the old ``u > 0``: ``(M~ u)/u = rho E_{p*}[e^{beta kappa}]``,
    so ``theta + min_{sa} (1/beta) log E_{p*} e^{beta kappa} <= theta~ <= ... max``;
  - left Collatz-Wielandt with the old ``v > 0``: ``(v M~)/v = rho W~(s')/W(s')`` with
    ``W(s') = sum_{s,a} v(s,a) p(s'|s,a) e^{beta r(s,a,s')}``.

  For fixed dynamics the analogue is the span bound of relative value iteration:
  ``theta + min kappa <= theta~ <= theta + max kappa`` with ``kappa(s,a)`` the mean.

All bounds assume the model is irreducible on the states involved (the bounds are then
rigorous up to rounding); the tests use irreducible random MDPs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tiltrl.exact.result import Solution
from tiltrl.exact.tilted import log_transitions, row_logsumexp
from tiltrl.mdp import TabularMDP
from tiltrl.prior._model import as_new_task
from tiltrl.prior.shaping import _check_old, correction_dynamics

__all__ = ["PerronBounds", "gibbs_bogoliubov_bound", "perron_bounds"]


def _check_average(mdp: TabularMDP, old: Solution) -> None:
    _check_old(mdp, old)
    if old.kind != "average":
        raise ValueError(f"the free-energy bounds are for average-reward solutions, got "
                         f"kind={old.kind!r}")


def _kappa(mdp: TabularMDP, new: Any) -> np.ndarray:
    task = as_new_task(mdp, new)
    return task.reward_per_transition() - mdp.reward_per_transition()


def _stationary(old: Solution) -> np.ndarray:
    if old.stationary is None:
        raise ValueError("the old solution has no stationary distribution")
    d = np.asarray(old.stationary, dtype=np.float64)
    return d / d.sum()


def gibbs_bogoliubov_bound(mdp: TabularMDP, old: Solution, new: Any) -> float:
    """First-order lower bound ``theta~ >= theta + sum_{s,a} d(s,a) E_{p*}[r~ - r]``.

    Parameters
    ----------
    mdp, old
        The solved task and its average-reward :class:`~tiltrl.Solution` (either dynamics).
    new
        New reward (``(S, A)`` or ``(S, A, S)``) or a :class:`TabularMDP` with the same
        dynamics and prior.
    """
    _check_average(mdp, old)
    kappa = _kappa(mdp, new)
    p_task = correction_dynamics(mdp, old)
    S, A = mdp.shape
    mean_k = np.bincount(mdp.row_index(), weights=p_task * kappa, minlength=S * A)
    return float(old.theta + np.sum(_stationary(old).ravel() * mean_k))


@dataclass(frozen=True, eq=False)
class PerronBounds:
    """Bounds ``lower <= theta~ <= upper`` on the new rate from the old solution.

    ``bounds`` maps each named bound to its ``(lower, upper)`` (``-inf``/``+inf`` when the
    bound has one side only); ``lower``/``upper`` are the best of them.
    """

    lower: float
    upper: float
    bounds: dict[str, tuple[float, float]] = field(default_factory=dict)


def _col_logsumexp(z: np.ndarray, cols: np.ndarray, n: int) -> np.ndarray:
    m = np.full(n, -np.inf)
    np.maximum.at(m, cols, z)
    safe = np.where(np.isfinite(m), m, 0.0)
    s = np.bincount(cols, weights=np.exp(z - safe[cols]), minlength=n)
    with np.errstate(divide="ignore"):
        return safe + np.log(s)


def perron_bounds(mdp: TabularMDP, old: Solution, new: Any) -> PerronBounds:
    """Comparison bounds on ``theta~`` from the old Perron solution (module docstring).

    Controlled dynamics: ``"elementwise"``, ``"collatz_wielandt_right"`` (old ``u``),
    ``"collatz_wielandt_left"`` (old ``v``), ``"gibbs_bogoliubov"`` (lower only). Fixed
    dynamics: ``"span"`` and ``"gibbs_bogoliubov"``.
    """
    _check_average(mdp, old)
    kappa = _kappa(mdp, new)
    beta, theta = old.beta, float(old.theta)
    out: dict[str, tuple[float, float]] = {}
    S, A = mdp.shape
    rows = mdp.row_index()
    if old.dynamics == "fixed":
        mean_k = np.bincount(rows, weights=mdp.P.data * kappa, minlength=S * A)
        out["span"] = (theta + float(mean_k.min()), theta + float(mean_k.max()))
    else:
        out["elementwise"] = (theta + float(kappa.min()), theta + float(kappa.max()))
        with np.errstate(divide="ignore"):
            log_p_star = np.log(correction_dynamics(mdp, old))
        lse = row_logsumexp(log_p_star + beta * kappa, mdp.P.indptr) / beta
        out["collatz_wielandt_right"] = (theta + float(lse.min()), theta + float(lse.max()))
        if old.log_left is not None:
            log_v = np.asarray(old.log_left, dtype=np.float64).ravel()[rows]
            base = log_v + log_transitions(mdp) + beta * mdp.reward_per_transition()
            cols = mdp.P.indices
            w_old = _col_logsumexp(base, cols, S)
            w_new = _col_logsumexp(base + beta * kappa, cols, S)
            ok = np.isfinite(w_old)
            ratio = (w_new[ok] - w_old[ok]) / beta
            lo = theta + float(ratio.min())
            # the upper side needs v > 0 on every state with an action of positive prior
            hi = theta + float(ratio.max()) if ok.all() else float("inf")
            out["collatz_wielandt_left"] = (lo, hi)
    out["gibbs_bogoliubov"] = (gibbs_bogoliubov_bound(mdp, old, new), float("inf"))
    lower = max(b[0] for b in out.values())
    upper = min(b[1] for b in out.values())
    return PerronBounds(lower=lower, upper=upper, bounds=out)
