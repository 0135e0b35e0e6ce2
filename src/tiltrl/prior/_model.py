"""Small exact helpers shared by :mod:`tiltrl.prior` (not public API).

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``beta > 0``; prior ``pi0``;
transitions CSR ``(S*A, S)`` with row ``s*A + a`` holding ``p(.|s,a)``; rewards
``r(s,a,s')`` are carried per non-zero of ``P`` (aligned with ``P.data``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from tiltrl.bounds import soft_value
from tiltrl.exact.tilted import log_transitions, row_logsumexp
from tiltrl.mdp import TabularMDP

__all__ = [
    "as_new_task",
    "check_values",
    "driven_log_weights",
    "policy_evaluation",
    "soft_policy",
    "stationary_pairs",
    "transition_csr",
]


def check_values(q: Any, S: int, A: int, what: str = "Q") -> np.ndarray:
    """``q`` as a finite float array of shape ``(S, A)``, or a ``ValueError`` naming it."""
    arr = np.asarray(q, dtype=np.float64)
    if arr.shape != (S, A):
        raise ValueError(f"{what} must have shape (S, A) = {(S, A)}, got {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        s, a = map(int, np.argwhere(bad)[0])
        raise ValueError(f"{what}[{s},{a}] = {arr[s, a]!r} is not finite")
    return arr


def as_new_task(mdp: TabularMDP, new: Any) -> TabularMDP:
    """The new task: ``new`` itself if it is a :class:`TabularMDP` with the same dynamics,
    prior and shape as ``mdp``, else ``mdp.with_reward(new)`` (a reward array)."""
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    if isinstance(new, TabularMDP):
        if new.shape != mdp.shape:
            raise ValueError(f"the new task has shape {new.shape}, the old one {mdp.shape}")
        if (new.P.nnz != mdp.P.nnz or not np.array_equal(new.P.indices, mdp.P.indices)
                or not np.array_equal(new.P.indptr, mdp.P.indptr)
                or np.max(np.abs(new.P.data - mdp.P.data), initial=0.0) > 1e-12):
            raise ValueError("the new task must have the same dynamics P as the old one")
        if np.max(np.abs(new.prior - mdp.prior)) > 1e-12:
            raise ValueError("the new task must have the same prior policy pi0 as the old one")
        return new
    return mdp.with_reward(new)


def transition_csr(mdp: TabularMDP, values: np.ndarray) -> sp.csr_matrix:
    """A CSR ``(S*A, S)`` matrix with ``values`` (aligned with ``P.data``) on ``P``'s pattern."""
    return sp.csr_matrix((values, mdp.P.indices, mdp.P.indptr), shape=mdp.P.shape)


def soft_policy(q: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    """``pi(a|s) = pi0(a|s) exp(beta (Q(s,a) - V_Q(s)))`` (log space, rows sum to one)."""
    with np.errstate(divide="ignore"):
        x = np.log(prior) + beta * q
    x = x - x.max(axis=-1, keepdims=True)
    p = np.exp(x)
    return p / p.sum(axis=-1, keepdims=True)


def driven_log_weights(mdp: TabularMDP, q: np.ndarray, v: np.ndarray, beta: float,
                       gamma: float, theta: float = 0.0) -> np.ndarray:
    """``log p*(s'|s,a)`` per non-zero of ``P`` for the controlled (log-E-exp) optimum.

    ``p*(s'|s,a) = p(s'|s,a) exp(beta (r(s,a,s') + gamma V(s') - theta - Q(s,a)))``; rows
    are renormalised in log space, so it is exact up to rounding even when ``Q`` is only
    known up to the normalisation (average reward).
    """
    z = log_transitions(mdp) + beta * (mdp.reward_per_transition() + gamma * v[mdp.P.indices])
    lse = row_logsumexp(z, mdp.P.indptr)
    return z - np.repeat(lse, np.diff(mdp.P.indptr))


def _pair_matrix(P: sp.csr_matrix, policy: np.ndarray) -> sp.csr_matrix:
    """``P_pi[(s,a),(s',a')] = P[(s,a),s'] pi(a'|s')`` as CSR ``(S*A, S*A)``."""
    S, A = policy.shape
    Pi = sp.csr_matrix(
        (policy.ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)), shape=(S, S * A)
    )
    return sp.csr_matrix(P @ Pi)


def policy_evaluation(P: sp.csr_matrix, policy: np.ndarray, reward: np.ndarray,
                      gamma: float) -> np.ndarray:
    """``Q^pi = reward + gamma P_pi Q^pi`` (no entropy term), shape ``(S, A)``.

    One sparse LU of ``I - gamma P_pi`` (``S*A`` unknowns).
    """
    S, A = policy.shape
    M = sp.identity(S * A, format="csc") - gamma * _pair_matrix(P, policy).tocsc()
    return np.asarray(spla.spsolve(M, reward.ravel())).reshape(S, A)


def stationary_pairs(P: sp.csr_matrix, policy: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """Stationary state-action law ``d(s,a) = mu(s) pi(a|s)`` of the chain ``(P, pi)``.

    ``mu`` solves ``mu P_pi = mu`` on the closed class reached from ``initial`` (Cesaro
    limit of the chain started there for a unichain model): solved as ``mu (I - P_pi) = 0``
    with one equation replaced by ``sum(mu) = 1``, restricted to the states reachable from
    ``initial``; when several closed classes are reachable the one with most initial mass
    through the dense power limit is not attempted, and a ``ValueError`` is raised.
    """
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    S, A = policy.shape
    Ps = sp.csr_matrix(
        sp.csr_matrix((policy.ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)),
                      shape=(S, S * A)) @ P
    )  # state kernel P_pi[s, s']
    Ps.eliminate_zeros()
    seen = np.zeros(S, dtype=bool)
    for s0 in np.flatnonzero(initial > 0):
        if not seen[s0]:
            seen[breadth_first_order(Ps, int(s0), directed=True,
                                     return_predecessors=False)] = True
    states = np.flatnonzero(seen)
    sub = Ps[states][:, states]
    n, labels = connected_components(sub, directed=True, connection="strong")
    # closed classes: no edge leaves them
    coo = sub.tocoo()
    leaves = np.zeros(n, dtype=bool)
    leaves[labels[coo.row][labels[coo.row] != labels[coo.col]]] = True
    closed = np.flatnonzero(~leaves)
    if closed.size != 1:
        raise ValueError(
            f"the chain of this policy has {closed.size} closed classes reachable from the "
            "initial distribution; the stationary law is not unique"
        )
    cls = states[labels == closed[0]]
    Pc = Ps[cls][:, cls].toarray()
    m = cls.size
    M = (np.eye(m) - Pc).T
    M[-1, :] = 1.0
    rhs = np.zeros(m)
    rhs[-1] = 1.0
    mu_c = np.linalg.solve(M, rhs)
    mu = np.zeros(S)
    mu[cls] = np.maximum(mu_c, 0.0)
    mu /= mu.sum()
    return mu[:, None] * policy


def soft_values(q: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    """Re-export of :func:`tiltrl.bounds.soft_value` (one soft value in the library)."""
    return soft_value(q, prior, beta)
