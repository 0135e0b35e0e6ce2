"""Reward shaping with a prior solution: ``Q~* = Q* + K*`` exactly.

Source: Adamczyk, Arriojas, Tiomkin and Kulkarni, "Utilizing prior solutions for reward
shaping and composition in entropy-regularized reinforcement learning" (AAAI 2023),
Theorem 1 (discounted) and its average-reward / free-energy form ("two free energies
related by a third"); ``shared/DESIGN.md`` §5.

Convention (DESIGN.md §1): rewards, not costs; ``beta > 0``; prior ``pi0``. A task with
reward ``r`` has been solved (``Q*``, ``V*``, ``pi* ∝ pi0 exp(beta Q*)``); a new task has
reward ``r~`` and the same dynamics and prior. The **correction task** (:func:`shaping_task`)
has reward ``r~ - r``, prior ``pi*`` and

* fixed dynamics: the environment's ``p``;
* controlled dynamics: the old optimal driven dynamics
  ``p*(s'|s,a) ∝ p(s'|s,a) exp(beta (r(s,a,s') + gamma V*(s')))`` (``gamma = 1`` for
  average reward: the Doob transform of the old tilted matrix).

Statements (each checked to 1e-8 by ``tests/test_prior.py``):

* Discounted: ``Q~* = Q* + K*`` with ``K*`` the optimal soft Q of the correction task.
  Proof: ``V_{Q*+K}(s) = V*(s) + (1/beta) log sum_a pi*(a|s) exp(beta K(s,a))``, insert in
  the soft Bellman equation of ``r~``.
* Lower bound: ``Q~* >= Q* + K^{pi*}`` with ``K^{pi*} = E_{pi*, p}[sum_t gamma^t (r~ - r)]``
  (evaluating the correction task's own prior costs no KL).
* Average reward: ``Q~* = Q* + K*`` up to a constant and ``theta~ = theta + theta_K``;
  in free energies ``F = -theta``: ``F~ = F + F_K`` (two free energies related by a third).
  The first-order (Gibbs-Bogoliubov) bound ``theta~ >= theta + E_d[r~ - r]`` and the
  Perron-root comparison bounds are in :mod:`tiltrl.prior.free_energy`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tiltrl.exact.result import Solution
from tiltrl.mdp import TabularMDP
from tiltrl.prior._model import (
    as_new_task,
    driven_log_weights,
    policy_evaluation,
    transition_csr,
)

__all__ = ["Shaping", "shaping", "shaping_lower_bound", "shaping_task"]


def _check_old(mdp: TabularMDP, old: Solution) -> None:
    if not isinstance(old, Solution):
        raise TypeError(f"old must be a tiltrl.Solution, got {type(old).__name__}")
    if old.kind not in ("discounted", "average"):
        raise ValueError(f"old solution must be discounted or average-reward, got "
                         f"kind={old.kind!r}")
    if np.shape(old.q) != mdp.shape:
        raise ValueError(f"old solution has Q of shape {np.shape(old.q)}, the model {mdp.shape}")
    if not np.all(np.isfinite(old.q)):
        raise ValueError("old solution has non-finite Q (states off the recurrent class?); "
                         "shaping needs a solution on every state")


def _gamma_of(old: Solution) -> float:
    return 1.0 if old.kind == "average" else float(old.gamma)  # type: ignore[arg-type]


def correction_dynamics(mdp: TabularMDP, old: Solution) -> np.ndarray:
    """Transition probabilities (aligned with ``P.data``) of the correction task:
    ``p`` (fixed) or the old driven ``p*`` (controlled)."""
    if old.dynamics == "fixed":
        return np.asarray(mdp.P.data)
    return np.exp(driven_log_weights(mdp, np.asarray(old.q), np.asarray(old.v), old.beta,
                                     _gamma_of(old)))


def shaping_task(mdp: TabularMDP, old: Solution, new: Any) -> TabularMDP:
    """The correction task of shaping ``mdp`` (solved as ``old``) to the reward of ``new``.

    Parameters
    ----------
    mdp
        The solved task (reward ``r``).
    old
        Its exact solution (:func:`tiltrl.solve`, discounted or average reward).
    new
        The new reward ``r~`` (``(S, A)``, ``(S, A, S)``) or a :class:`TabularMDP` with the
        same dynamics and prior.

    Returns
    -------
    TabularMDP
        Reward ``r~(s,a,s') - r(s,a,s')``, prior ``pi*`` (``old.policy``), dynamics ``p``
        (fixed) or ``p*`` (controlled). Explicit zeros of ``p*`` (underflow) are dropped.
    """
    _check_old(mdp, old)
    task = as_new_task(mdp, new)
    kappa = task.reward_per_transition() - mdp.reward_per_transition()
    p_task = correction_dynamics(mdp, old)
    S = mdp.n_states
    # exact row sums after the log-space normalisation are within rounding of one
    P = transition_csr(mdp, p_task)
    info = dict(mdp.info)
    info["name"] = f"shaping correction of {info.get('name', 'task')}"
    prior = np.asarray(old.policy, dtype=np.float64)
    prior = prior / prior.sum(axis=1, keepdims=True)
    return TabularMDP(P, transition_csr(mdp, kappa), prior,
                      mdp.initial if mdp.initial.shape == (S,) else None, info=info)


@dataclass(frozen=True, eq=False)
class Shaping:
    """Result of :func:`shaping`.

    Attributes
    ----------
    q
        ``Q~* = Q* + K*`` (differential, up to a constant, for average reward).
    theta
        ``theta~ = theta + theta_K`` (average reward), NaN otherwise.
    correction
        The exact solution ``K*`` of the correction task.
    task
        The correction task itself.
    free_energy_old, free_energy_correction, free_energy_new
        ``F = -theta``, ``F_K = -theta_K``, ``F~ = F + F_K`` (average reward; NaN otherwise).
    """

    q: np.ndarray
    theta: float
    correction: Solution
    task: TabularMDP
    free_energy_old: float
    free_energy_correction: float
    free_energy_new: float


def shaping(mdp: TabularMDP, old: Solution, new: Any, **solve_kw: Any) -> Shaping:
    """Solve the new task through its correction: ``Q~* = Q* + K*`` (AAAI 2023, Thm. 1).

    ``solve_kw`` go to :func:`tiltrl.solve` for the correction task (same ``beta``,
    ``gamma`` and dynamics as ``old``).
    """
    from tiltrl.exact import solve

    task = shaping_task(mdp, old, new)
    gamma = None if old.kind == "average" else old.gamma
    k = solve(task, old.beta, gamma=gamma, dynamics=old.dynamics, **solve_kw)
    q = np.asarray(old.q) + np.asarray(k.q)
    if old.kind == "average":
        theta = old.theta + k.theta
        return Shaping(q=q, theta=theta, correction=k, task=task, free_energy_old=-old.theta,
                       free_energy_correction=-k.theta, free_energy_new=-theta)
    nan = float("nan")
    return Shaping(q=q, theta=nan, correction=k, task=task, free_energy_old=nan,
                   free_energy_correction=nan, free_energy_new=nan)


def shaping_lower_bound(mdp: TabularMDP, old: Solution, new: Any) -> np.ndarray:
    """``Q* + K^{pi*} <= Q~*`` (discounted): ``K^{pi*} = E[sum_t gamma^t (r~ - r)]`` under the
    correction task's prior process (``pi*`` with ``p``, or with ``p*`` when controlled).

    Equality when ``pi*`` is also optimal for the correction task (e.g. ``r~ - r``
    constant). One sparse linear solve; average reward: see
    :func:`tiltrl.prior.gibbs_bogoliubov_bound`.
    """
    _check_old(mdp, old)
    if old.kind != "discounted":
        raise ValueError("shaping_lower_bound is for discounted solutions; for average reward "
                         "use tiltrl.prior.gibbs_bogoliubov_bound")
    task = shaping_task(mdp, old, new)
    k_pi = policy_evaluation(task.P, task.prior, task.reward, _gamma_of(old))
    return np.asarray(old.q) + k_pi
