"""Soft Bellman bounds on the optimal discounted soft Q-function (pure functions).

From Adamczyk, Arriojas, Tiomkin and Kulkarni, "Boosting soft Q-learning by bounding"
(RLC 2024), and "Bounding the optimal value function in compositional reinforcement
learning" (UAI 2023); ``shared/DESIGN.md`` §5.

Convention (DESIGN.md §1): rewards, not costs; ``beta > 0``; prior policy ``pi0``;
transitions CSR ``(S*A, S)`` with row ``s*A + a``. For discounted soft Q-learning with
``V_Q(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` and the Bellman operator
``TQ(s,a) = r(s,a) + gamma E_{s'~p}[V_Q(s')]`` (the *expectation* of ``V``, not the
log-E-exp operator, which has a different fixed point under stochastic dynamics), the
residual ``D = TQ - Q`` of ANY ``Q`` brackets the optimum::

    TQ + gamma * min(D) / (1 - gamma)  <=  Q*  <=  TQ + gamma * max(D) / (1 - gamma).

(``T`` is monotone and ``T(Q + c) = TQ + gamma c``; iterate ``T`` from ``Q``.) The gap
``gamma (max D - min D) / (1 - gamma)`` is zero at ``Q*``, and both bounds are unchanged
when a constant is added to ``Q``.

Terminal transitions keep their residual: a transition that ends the episode has no
bootstrap, so its target is ``r`` and its residual ``r - Q(s,a)``; it is not dropped
from ``min(D)``/``max(D)``.

Every function accepts ``Q`` with leading batch axes (e.g. ``(K, S, A)`` for ``K`` seeds);
minima and maxima are taken per batch element over the ``(S, A)`` axes.

Models: a :class:`~tiltrl.mdp.TabularMDP` (a *given* model, optionally with a per-transition
termination mask) or a :class:`CountModel` (a model *learned* from counts: ``p(s'|s,a) =
n(s,a,s') / n(s,a)`` where ``n(s,a)`` counts every visit, terminal ones included, so the
bootstrap mass of ``(s,a)`` is the fraction of its visits that did not terminate). With a
count model the bounds are bounds on the optimum of the *empirical* MDP; pairs never
visited have no target: their bounds are ``(-inf, +inf)`` and they are left out of
``min(D)``/``max(D)`` (``Bounds.valid`` marks the pairs with data).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tiltrl.mdp import TabularMDP, check_beta, check_gamma

__all__ = [
    "Bounds",
    "CountModel",
    "bellman_target",
    "naive_bounds",
    "soft_bellman_bounds",
    "soft_value",
]


def soft_value(q: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    """``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` over the last axis.

    ``q`` has shape ``(..., S, A)``, ``prior`` ``(S, A)``; actions with ``pi0 = 0`` are
    ignored. Computed with a max shift (no overflow for any ``beta * Q``).
    """
    q = np.asarray(q, dtype=np.float64)
    with np.errstate(divide="ignore"):
        log_pi0 = np.log(np.asarray(prior, dtype=np.float64))
    x = log_pi0 + beta * q
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return (np.log(np.sum(np.exp(x - m), axis=-1)) + m[..., 0]) / beta


@dataclass(frozen=True, eq=False)
class CountModel:
    """An empirical model from sampled transitions (per batch element).

    Attributes
    ----------
    visits
        ``n(s,a)``: every visit of ``(s, a)``, terminal ones included, shape ``(..., S, A)``.
    next_counts
        ``n(s,a,s')`` of the *non-terminal* outcomes, shape ``(..., S*A, S)`` (row
        ``s*A + a``, DESIGN.md §1 order).
    reward_sum
        Sum of the rewards observed at ``(s, a)``, shape ``(..., S, A)``.
    prior
        Prior policy ``pi0`` ``(S, A)`` (used for ``V``).
    """

    visits: np.ndarray
    next_counts: np.ndarray
    reward_sum: np.ndarray
    prior: np.ndarray

    @classmethod
    def empty(cls, n_states: int, n_actions: int, prior: Any = None,
              batch: tuple[int, ...] = ()) -> CountModel:
        """A model with no data: zero counts, uniform prior unless given."""
        S, A = int(n_states), int(n_actions)
        pi0 = np.full((S, A), 1.0 / A) if prior is None else np.asarray(prior, dtype=float)
        return cls(
            visits=np.zeros((*batch, S, A)),
            next_counts=np.zeros((*batch, S * A, S)),
            reward_sum=np.zeros((*batch, S, A)),
            prior=pi0,
        )

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, A)``."""
        S, A = self.visits.shape[-2:]
        return int(S), int(A)

    def mean_reward(self) -> np.ndarray:
        """``R(s,a) / n(s,a)`` (NaN where never visited)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.visits > 0, self.reward_sum / np.maximum(self.visits, 1), np.nan)


def _check_q(q: Any, S: int, A: int) -> np.ndarray:
    arr = np.asarray(q, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-2:] != (S, A):
        raise ValueError(f"Q must have shape (..., S, A) = (..., {S}, {A}), got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError("Q has non-finite entries")
    return arr


def _terminal_weights(mdp: TabularMDP, terminal: Any) -> np.ndarray:
    """``p(s'|s,a) * (1 - done)`` aligned with ``P.data``."""
    data = mdp.P.data
    if terminal is None:
        return np.asarray(data)
    done = np.asarray(terminal, dtype=np.float64)
    if done.shape != data.shape:
        raise ValueError(
            f"terminal must be aligned with P.data (shape {data.shape}), got {done.shape}"
        )
    if np.any((done < 0) | (done > 1)) or not np.all(np.isfinite(done)):
        raise ValueError("terminal must hold termination probabilities in [0, 1]")
    return data * (1.0 - done)


def bellman_target(
    q: Any,
    model: TabularMDP | CountModel,
    beta: float,
    gamma: float,
    *,
    terminal: Any = None,
) -> np.ndarray:
    """``TQ = r + gamma E_{s'}[(1 - done) V_Q(s')]``, shape like ``q``.

    With a :class:`CountModel`, unvisited pairs get NaN. ``terminal`` (given models only)
    is a termination probability (or boolean mask) per non-zero of ``P``.
    """
    beta = check_beta(beta)
    gamma = check_gamma(gamma)
    if isinstance(model, TabularMDP):
        S, A = model.shape
        qa = _check_q(q, S, A)
        v = soft_value(qa, model.prior, beta)  # (..., S)
        w = _terminal_weights(model, terminal)
        import scipy.sparse as sp

        Pw = sp.csr_matrix((w, model.P.indices, model.P.indptr), shape=model.P.shape)
        batch = v.shape[:-1]
        vt = v.reshape(-1, S).T  # (S, B)
        ev = np.asarray(Pw @ vt).T.reshape(*batch, S, A)
        return model.reward + gamma * ev
    if isinstance(model, CountModel):
        if terminal is not None:
            raise ValueError("a CountModel carries its own terminal counts; do not pass terminal")
        S, A = model.shape
        qa = _check_q(q, S, A)
        v = soft_value(qa, model.prior, beta)
        nc = model.next_counts
        # broadcast batch axes of q against those of the model
        ev_sum = np.einsum("...ij,...j->...i", nc, v).reshape(*np.broadcast_shapes(
            nc.shape[:-2], v.shape[:-1]), S, A)
        n = model.visits
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(n > 0, (model.reward_sum + gamma * ev_sum) / np.maximum(n, 1), np.nan)
        return out
    raise TypeError(f"model must be a TabularMDP or a CountModel, got {type(model).__name__}")


@dataclass(frozen=True, eq=False)
class Bounds:
    """Soft Bellman bounds ``lb <= Q* <= ub`` from one estimate ``Q`` (DESIGN.md §5).

    Attributes
    ----------
    lb, ub
        Lower and upper bounds, shape of ``Q`` (``-inf``/``+inf`` where a count model has
        no data for the pair).
    target
        ``TQ`` (NaN where no data).
    residual
        ``D = TQ - Q`` (NaN where no data).
    d_min, d_max
        ``min(D)``, ``max(D)`` per batch element (over the pairs with data).
    valid
        Pairs with a target (all pairs for a given model).
    crossed
        Number of pairs with ``lb > ub`` (only possible through rounding or an inconsistent
        model; reported, never hidden).
    """

    lb: np.ndarray
    ub: np.ndarray
    target: np.ndarray
    residual: np.ndarray
    d_min: np.ndarray
    d_max: np.ndarray
    valid: np.ndarray
    crossed: int

    @property
    def gap(self) -> np.ndarray:
        """``ub - lb = gamma (max D - min D) / (1 - gamma)`` per pair."""
        return self.ub - self.lb


def soft_bellman_bounds(
    q: Any,
    model: TabularMDP | CountModel,
    beta: float,
    gamma: float,
    *,
    terminal: Any = None,
) -> Bounds:
    """Lower and upper bounds on ``Q*`` from any ``Q`` (DESIGN.md §5).

    Parameters
    ----------
    q
        Any estimate, shape ``(..., S, A)`` (leading batch axes allowed).
    model
        A given model (:class:`~tiltrl.mdp.TabularMDP`) or a learned :class:`CountModel`.
    beta, gamma
        Inverse temperature ``> 0`` and discount in ``[0, 1)``.
    terminal
        Given models only: termination probability per non-zero of ``P`` (no bootstrap
        after a terminal transition; its residual ``r - Q`` is kept).

    Returns
    -------
    Bounds
        ``lb = TQ + gamma min(D)/(1-gamma)``, ``ub = TQ + gamma max(D)/(1-gamma)``.
    """
    beta = check_beta(beta)
    gamma = check_gamma(gamma)
    tq = bellman_target(q, model, beta, gamma, terminal=terminal)
    qa = np.asarray(q, dtype=np.float64)
    resid = tq - qa
    valid = np.isfinite(resid)
    axes = (-2, -1)
    any_valid = valid.any(axis=axes)
    d_min = np.where(any_valid, np.min(np.where(valid, resid, np.inf), axis=axes), np.nan)
    d_max = np.where(any_valid, np.max(np.where(valid, resid, -np.inf), axis=axes), np.nan)
    scale = gamma / (1.0 - gamma)
    lb = np.where(valid, tq + scale * d_min[..., None, None], -np.inf)
    ub = np.where(valid, tq + scale * d_max[..., None, None], np.inf)
    crossed = int(np.count_nonzero(lb > ub))
    return Bounds(lb=lb, ub=ub, target=tq, residual=resid, d_min=d_min, d_max=d_max,
                  valid=valid, crossed=crossed)


def naive_bounds(reward_range: tuple[float, float], gamma: float, *,
                 episodic: bool = False) -> tuple[float, float]:
    """``(r_min/(1-gamma), r_max/(1-gamma))``: the reward-range bounds on ``Q*``.

    Valid for soft values too (``min_a Q <= V_Q <= max_a Q`` for any prior). With
    ``episodic=True`` (episodes may end after any step) a bound of the wrong sign for an
    early termination is replaced by the one-step reward (``r_min`` when ``r_min > 0``,
    ``r_max`` when ``r_max < 0``).
    """
    gamma = check_gamma(gamma)
    r_min, r_max = float(reward_range[0]), float(reward_range[1])
    if not (np.isfinite(r_min) and np.isfinite(r_max)) or r_min > r_max:
        raise ValueError(f"reward_range must be finite (min, max), got {reward_range!r}")
    lo, hi = r_min / (1.0 - gamma), r_max / (1.0 - gamma)
    if episodic:
        lo, hi = min(lo, r_min), max(hi, r_max)
    return lo, hi
