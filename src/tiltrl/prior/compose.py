"""Composition of solved tasks: zero-shot ``f(Q)``, its correction task, bounds and regret.

Sources: Adamczyk, Arriojas, Tiomkin and Kulkarni, "Utilizing prior solutions for reward
shaping and composition in entropy-regularized reinforcement learning" (AAAI 2023) --
the exact relation ``Q~* = f(Q) + C*`` -- and Adamczyk et al., "Bounding the optimal value
function in compositional reinforcement learning" (UAI 2023) -- the two-sided bounds from
the extrema of ``kappa`` and the zero-shot regret bound; the composition functions of
Haarnoja et al., "Composable deep reinforcement learning for robotic manipulation"
(ICRA 2018; convex combination), Van Niekerk et al., "Composing value functions in
reinforcement learning" (ICML 2019; soft-OR, exact for deterministic episodic tasks that
differ only in absorbing rewards, which is *not* this continuing discounted setting) and
Tasse, James and Rosman, "A Boolean task algebra for reinforcement learning" (NeurIPS 2020;
OR = max, AND = min, NOT = upper + lower - Q).

Convention (``shared/DESIGN.md`` §1, §5): rewards, not costs; ``beta > 0``; prior
``pi0``; ``V_Q(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))``. Given solved tasks
``Q_1..Q_n`` (same dynamics, prior, beta, gamma) and a new task with reward ``r~``:

* ``f(Q)`` is any function of the ``Q_k`` (:data:`COMPOSITIONS`), ``pi_f ∝ pi0 exp(beta f(Q))``.
* Exact relation (any ``f``): ``Q~* = f(Q) + C*`` where ``C*`` is the optimal soft Q of the
  **correction task**: same dynamics, prior ``pi_f``, reward
  ``kappa(s,a,s') = r~(s,a,s') + gamma V_f(s') - f(Q)(s,a)`` (its mean over ``s'`` is
  ``kappa(s,a) = (T~ f(Q) - f(Q))(s,a)``, the soft Bellman residual of ``f(Q)`` on the new
  task). Proof: ``V_{f+C}(s) = V_f(s) + (1/beta) log sum_a pi_f(a|s) exp(beta C(s,a))``.
  Average reward (``gamma=None``): ``Q~* = f(Q) + C*`` up to a constant and
  ``theta~ = theta_C`` (the rate of the correction task), with ``gamma = 1`` in ``kappa``.
  Controlled dynamics (log-E-exp backup, DESIGN.md §2): the same with ``kappa(s,a,s')``
  kept inside the exponent.
* Two-sided bounds (discounted): ``T~f + gamma min(kappa)/(1-gamma) <= Q~* <=
  T~f + gamma max(kappa)/(1-gamma)`` -- the soft Bellman bounds of DESIGN.md §5 applied to
  ``f(Q)`` (:func:`tiltrl.bounds.soft_bellman_bounds`); they imply the looser
  ``f + min(kappa)/(1-gamma) <= Q~* <= f + max(kappa)/(1-gamma)`` of the UAI 2023 paper
  and are equalities when ``kappa`` is constant. Average reward: ``min(kappa) <= theta~ <=
  max(kappa)`` (the span / Collatz-Wielandt bounds).
* Zero-shot regret (fixed dynamics): the soft value of ``pi_f`` on the new task is
  ``Q^{pi_f} = f + C^{pi_f}`` with ``C^{pi_f} = kappa + gamma P_{pi_f} C^{pi_f}`` (a linear
  solve), so ``0 <= Q~* - Q^{pi_f} <= ub - Q^{pi_f} <= gamma (max kappa - min kappa)/(1-gamma)``
  and ``0 <= V~* - V^{pi_f} <= (max kappa - min kappa)/(1-gamma)``; average reward
  ``0 <= theta~ - theta^{pi_f} <= max kappa - E_{d_f}[kappa] <= max kappa - min kappa``.

Sign facts (tested): convex combination with ``r~ = sum w_k r_k`` gives ``kappa <= 0``,
hence ``Q~* <= sum w_k Q_k`` (Haarnoja et al. 2018); OR with ``r~ >= r_k`` for all ``k``
gives ``kappa >= 0``, hence ``Q~* >= max_k Q_k``; AND with ``r~ <= r_k`` gives
``Q~* <= min_k Q_k`` (Adamczyk et al., UAI 2023).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tiltrl.bounds import soft_bellman_bounds, soft_value
from tiltrl.exact.discounted import soft_q_backup
from tiltrl.exact.result import Solution
from tiltrl.mdp import TabularMDP, check_beta, check_gamma
from tiltrl.prior._model import (
    check_values,
    policy_evaluation,
    soft_policy,
    stationary_pairs,
    transition_csr,
)

__all__ = [
    "COMPOSITIONS",
    "Composition",
    "ZeroShot",
    "compose",
    "compose_values",
    "correction_task",
    "solve_correction",
    "zero_shot",
]

#: Composition functions ``f`` understood by :func:`compose_values` and :func:`compose`.
COMPOSITIONS = ("convex", "sum", "or", "and", "soft_or", "not")


def _stack(values: Any) -> np.ndarray:
    if isinstance(values, np.ndarray):
        arr = np.asarray(values, dtype=np.float64)
    else:
        arr = np.stack([np.asarray(v, dtype=np.float64) for v in values])
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise ValueError(f"values must be a non-empty sequence of arrays, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("values have non-finite entries")
    return arr


def compose_values(
    values: Sequence[Any] | np.ndarray,
    f: str,
    *,
    weights: Sequence[float] | None = None,
    beta: float | None = None,
    upper: Any = None,
    lower: Any = None,
) -> np.ndarray:
    """Apply a composition function elementwise over the first axis of ``values``.

    Works on Q-functions (zero-shot estimate ``f(Q)``) and on rewards (the composed task's
    reward ``f(r)``) alike.

    ``f``:

    * ``"convex"``: ``sum_k w_k x_k`` with ``w_k >= 0``, ``sum w = 1`` (default uniform);
      Haarnoja et al. 2018.
    * ``"sum"``: ``sum_k w_k x_k`` with any weights (default all 1).
    * ``"or"`` / ``"and"``: ``max_k x_k`` / ``min_k x_k``; Tasse et al. 2020.
    * ``"soft_or"``: ``(1/beta) log sum_k w_k exp(beta x_k)`` (default ``w_k = 1``; needs
      ``beta``); Van Niekerk et al. 2019.
    * ``"not"``: ``upper + lower - x`` for exactly one ``x``, with ``upper``/``lower`` the
      values of the maximal and minimal tasks of the Boolean algebra (Tasse et al. 2020);
      undefined without them.
    """
    if f not in COMPOSITIONS:
        raise ValueError(f"unknown composition f={f!r}; choose one of {', '.join(COMPOSITIONS)}")
    x = _stack(values)
    n = x.shape[0]
    w: np.ndarray | None = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64).ravel()
        if w.size != n:
            raise ValueError(f"weights has {w.size} entries for {n} values")
        if not np.all(np.isfinite(w)):
            raise ValueError(f"weights must be finite, got {list(w)}")
    if f == "convex":
        if w is None:
            w = np.full(n, 1.0 / n)
        if np.any(w < 0) or abs(w.sum() - 1.0) > 1e-9:
            raise ValueError(f"convex weights must be >= 0 and sum to 1, got {list(w)}")
        return np.tensordot(w, x, axes=1)
    if f == "sum":
        return x.sum(axis=0) if w is None else np.tensordot(w, x, axes=1)
    if f == "or":
        return x.max(axis=0)
    if f == "and":
        return x.min(axis=0)
    if f == "soft_or":
        if beta is None:
            raise ValueError("f='soft_or' needs beta")
        b = check_beta(beta)
        if w is None:
            w = np.ones(n)
        if np.any(w <= 0):
            raise ValueError(f"soft_or weights must be > 0, got {list(w)}")
        y = np.log(w).reshape((n,) + (1,) * (x.ndim - 1)) + b * x
        m = y.max(axis=0)
        return (m + np.log(np.exp(y - m).sum(axis=0))) / b
    # not
    if n != 1:
        raise ValueError(f"f='not' takes exactly one value, got {n}")
    if upper is None or lower is None:
        raise ValueError("f='not' is defined only with upper= and lower= (the values of the "
                         "maximal and minimal tasks, Tasse et al. 2020)")
    up = np.asarray(upper, dtype=np.float64)
    lo = np.asarray(lower, dtype=np.float64)
    if up.shape != x.shape[1:] or lo.shape != x.shape[1:]:
        raise ValueError(f"upper/lower must have shape {x.shape[1:]}, got {up.shape}, {lo.shape}")
    return up + lo - x[0]


@dataclass(frozen=True, eq=False)
class Composition:
    """A zero-shot composition ``f(Q)`` on a new task, with its correction and bounds.

    Attributes
    ----------
    task
        The new task (reward ``r~``).
    f
        Name of the composition function (or ``"given"`` for a user-supplied ``f(Q)``).
    beta, gamma, dynamics
        ``gamma`` is ``None`` for the average-reward case.
    q, v, policy
        ``f(Q)``, ``V_f`` and ``pi_f``.
    target
        ``T~ f(Q)``: one soft Bellman backup of ``f(Q)`` on the new task (``gamma = 1``
        and no ``theta`` in the average-reward case).
    kappa
        Mean correction reward ``kappa(s,a) = T~f - f`` (``(S, A)``).
    kappa_min, kappa_max
        Extrema of ``kappa`` over the pairs.
    lb, ub
        Discounted: ``T~f + gamma kappa_min/(1-gamma)`` and ``... kappa_max ...``,
        bounds on ``Q~*``; ``None`` for average reward.
    theta_bounds
        Average reward: ``(kappa_min, kappa_max)``, bounds on ``theta~``; else ``None``.
    """

    task: TabularMDP
    f: str
    beta: float
    gamma: float | None
    dynamics: str
    q: np.ndarray
    v: np.ndarray
    policy: np.ndarray
    target: np.ndarray
    kappa: np.ndarray
    kappa_min: float
    kappa_max: float
    lb: np.ndarray | None
    ub: np.ndarray | None
    theta_bounds: tuple[float, float] | None

    @property
    def gap(self) -> float:
        """Width of the bounds: ``gamma (kappa_max - kappa_min)/(1-gamma)`` (discounted) or
        ``kappa_max - kappa_min`` (average reward)."""
        span = self.kappa_max - self.kappa_min
        return span if self.gamma is None else self.gamma * span / (1.0 - self.gamma)

    def correction_reward(self) -> np.ndarray:
        """``kappa(s,a,s') = r~(s,a,s') + gamma V_f(s') - f(s,a)`` aligned with ``P.data``
        (``gamma = 1`` for average reward): what one sampled transition of the new task
        gives the correction learner."""
        mdp = self.task
        g = 1.0 if self.gamma is None else self.gamma
        rows = mdp.row_index()
        return (mdp.reward_per_transition() + g * self.v[mdp.P.indices]
                - self.q.ravel()[rows])


def compose(
    task: TabularMDP,
    values: Sequence[Any] | np.ndarray,
    f: str = "given",
    *,
    beta: float,
    gamma: float | None = None,
    dynamics: str = "fixed",
    weights: Sequence[float] | None = None,
    upper: Any = None,
    lower: Any = None,
) -> Composition:
    """Compose solved tasks zero-shot on ``task`` and bound the new optimum.

    Parameters
    ----------
    task
        The new task (its reward ``r~``; same dynamics and prior as the solved tasks).
    values
        The solved tasks' soft Q-functions ``Q_k`` (each ``(S, A)``; e.g. ``solve(...).q``),
        or, with ``f="given"``, one array: the estimate ``f(Q)`` itself.
    f
        A name in :data:`COMPOSITIONS`, or ``"given"``.
    beta, gamma
        Inverse temperature; discount in ``[0, 1)`` or ``None`` for average reward.
    dynamics
        ``"fixed"`` (default, the environment's dynamics) or ``"controlled"`` (log-E-exp).
    weights, upper, lower
        Options of :func:`compose_values`.

    Returns
    -------
    Composition
        ``f(Q)``, ``pi_f``, ``kappa`` and the bounds (see the module docstring).
    """
    beta = check_beta(beta)
    if not isinstance(task, TabularMDP):
        raise TypeError(f"task must be a TabularMDP, got {type(task).__name__}")
    g = None if gamma is None else check_gamma(gamma)
    if dynamics not in ("fixed", "controlled"):
        raise ValueError(f"dynamics must be 'fixed' or 'controlled', got {dynamics!r}")
    S, A = task.shape
    if f == "given":
        fq = check_values(values, S, A, "f(Q)")
    else:
        stacked = _stack(values)
        if stacked.shape[1:] != (S, A):
            raise ValueError(f"each Q_k must have shape (S, A) = {(S, A)}, "
                             f"got {stacked.shape[1:]}")
        fq = compose_values(stacked, f, weights=weights, beta=beta, upper=upper, lower=lower)
    v = soft_value(fq, task.prior, beta)
    gb = 1.0 if g is None else g
    target = soft_q_backup(task, v, beta, gb, dynamics)
    kappa = target - fq
    kmin, kmax = float(kappa.min()), float(kappa.max())
    lb = ub = None
    theta_bounds = None
    if g is None:
        theta_bounds = (kmin, kmax)
    elif dynamics == "fixed":
        b = soft_bellman_bounds(fq, task, beta, g)  # DESIGN.md §5, one implementation
        lb, ub = b.lb, b.ub
    else:
        lb = target + g * kmin / (1.0 - g)
        ub = target + g * kmax / (1.0 - g)
    return Composition(
        task=task, f=f, beta=beta, gamma=g, dynamics=dynamics, q=fq, v=v,
        policy=soft_policy(fq, task.prior, beta), target=target, kappa=kappa,
        kappa_min=kmin, kappa_max=kmax, lb=lb, ub=ub, theta_bounds=theta_bounds,
    )


def correction_task(comp: Composition) -> TabularMDP:
    """The correction task: same dynamics, reward ``kappa(s,a,s')``, prior ``pi_f``.

    Its optimal soft Q ``C*`` (same ``beta``, ``gamma``, dynamics) gives
    ``Q~* = f(Q) + C*`` exactly (AAAI 2023, Thm. 1 generalised to any ``f``).
    """
    mdp = comp.task
    info = dict(mdp.info)
    info["name"] = f"correction[{comp.f}] of {info.get('name', 'task')}"
    return TabularMDP(mdp.P, transition_csr(mdp, comp.correction_reward()), comp.policy,
                      mdp.initial, info=info)


def solve_correction(comp: Composition, **solve_kw: Any) -> tuple[Solution, np.ndarray]:
    """Solve the correction task exactly; return ``(solution of C*, f(Q) + C*)``.

    With ``gamma=None`` the second item is a differential ``Q~*`` and the solution's
    ``theta`` is ``theta~``. ``solve_kw`` go to :func:`tiltrl.solve` (``tol``...).
    """
    from tiltrl.exact import solve

    sol = solve(correction_task(comp), comp.beta, gamma=comp.gamma, dynamics=comp.dynamics,
                **solve_kw)
    return sol, comp.q + sol.q


@dataclass(frozen=True, eq=False)
class ZeroShot:
    """Exact value of the zero-shot policy ``pi_f`` on the new task, and its regret bounds.

    Attributes
    ----------
    q, v
        Discounted: soft ``Q^{pi_f}`` and ``V^{pi_f}`` on the new task (``None`` for
        average reward).
    theta
        Average reward: the regularised rate of ``pi_f``; discounted: NaN.
    regret_bound_q
        ``ub - Q^{pi_f}`` per pair (discounted), an upper bound on ``Q~* - Q^{pi_f}``.
    regret_bound_v
        ``V_ub - V^{pi_f}`` per state (discounted), an upper bound on ``V~* - V^{pi_f}``.
    regret_bound
        Closed form: ``(kappa_max - kappa_min)/(1-gamma)`` bounding ``V~* - V^{pi_f}``
        (discounted), ``kappa_max - kappa_min`` bounding ``theta~ - theta^{pi_f}``
        (average reward).
    regret_bound_theta
        Average reward: ``kappa_max - theta^{pi_f}`` (tighter); NaN otherwise.
    """

    q: np.ndarray | None
    v: np.ndarray | None
    theta: float
    regret_bound_q: np.ndarray | None
    regret_bound_v: np.ndarray | None
    regret_bound: float
    regret_bound_theta: float


def zero_shot(comp: Composition) -> ZeroShot:
    """Evaluate ``pi_f`` exactly on the new task (fixed dynamics) and bound its regret.

    See the module docstring (UAI 2023 regret bound; the zero-shot value is
    ``f + C^{pi_f}`` with ``C^{pi_f}`` the unregularised evaluation of the correction
    task's prior, since ``pi_f`` pays no KL against itself).
    """
    if comp.dynamics != "fixed":
        raise ValueError("zero-shot regret is defined for dynamics='fixed' (a deployed policy "
                         f"cannot change the dynamics), got {comp.dynamics!r}")
    mdp = comp.task
    span = comp.kappa_max - comp.kappa_min
    if comp.gamma is None:
        d = stationary_pairs(mdp.P, comp.policy, mdp.initial)
        theta_f = float(np.sum(d * comp.kappa))
        return ZeroShot(q=None, v=None, theta=theta_f, regret_bound_q=None,
                        regret_bound_v=None, regret_bound=span,
                        regret_bound_theta=comp.kappa_max - theta_f)
    assert comp.ub is not None
    c_pi = policy_evaluation(mdp.P, comp.policy, comp.kappa, comp.gamma)
    q_pi = comp.q + c_pi
    v_pi = comp.v + np.sum(comp.policy * c_pi, axis=1)
    v_ub = soft_value(comp.ub, mdp.prior, comp.beta)
    return ZeroShot(q=q_pi, v=v_pi, theta=float("nan"), regret_bound_q=comp.ub - q_pi,
                    regret_bound_v=v_ub - v_pi, regret_bound=span / (1.0 - comp.gamma),
                    regret_bound_theta=float("nan"))
