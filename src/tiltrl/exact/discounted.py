"""Discounted and finite-horizon soft value iteration, in log space.

Fixed dynamics (standard soft Q-learning fixed point; Haarnoja et al. 2017, Fox et al.
2016): ``Q(s,a) = r(s,a) + gamma E_{s'~p}[V(s')]``,
``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))``.

Controlled dynamics (the tilted / "log-E-exp" operator, optimistic under stochastic
dynamics, DESIGN.md §5): ``Q(s,a) = (1/beta) log E_{s'~p}[exp(beta (r(s,a,s') + gamma V(s')))]``.
For deterministic dynamics the two coincide.

Finite horizon ``N``: backward recursion from ``V_N = 0``; ``q[t]`` is the soft Q with
``N - t`` steps to go. Its per-step free energy ``theta_N`` tends to the average-reward
``theta`` as ``N -> infinity``.
"""

from __future__ import annotations

import warnings

import numpy as np

from tiltrl.exact.average import ConvergenceWarning, _logsumexp, _logsumexp_rows
from tiltrl.exact.newton import newton_discounted
from tiltrl.exact.result import Solution
from tiltrl.exact.tilted import log_prior, log_transitions, row_logsumexp
from tiltrl.mdp import TabularMDP

__all__ = ["soft_q_backup", "solve_discounted", "solve_finite_horizon", "soft_value"]


def soft_value(q: np.ndarray, log_prior: np.ndarray, beta: float) -> np.ndarray:
    """``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` along the last axis."""
    return _logsumexp_rows(log_prior + beta * q) / beta


def soft_q_backup(
    mdp: TabularMDP, v_next: np.ndarray, beta: float, gamma: float, dynamics: str
) -> np.ndarray:
    """One Bellman backup ``Q = r + gamma E[V(s')]`` (fixed) or its log-E-exp form."""
    S, A = mdp.shape
    if dynamics == "fixed":
        return mdp.reward + gamma * (mdp.P @ v_next).reshape(S, A)
    z = log_transitions(mdp) + beta * (mdp.reward_per_transition() + gamma * v_next[mdp.P.indices])
    return (row_logsumexp(z, mdp.P.indptr) / beta).reshape(S, A)


def _policy(q: np.ndarray, log_prior: np.ndarray, beta: float) -> np.ndarray:
    y = log_prior + beta * q
    return np.exp(y - _logsumexp_rows(y)[:, None])


def solve_discounted(
    mdp: TabularMDP,
    beta: float,
    gamma: float,
    *,
    dynamics: str = "fixed",
    method: str = "newton",
    tol: float = 1e-10,
    max_iter: int | None = None,
    warm_start: Solution | None = None,
) -> Solution:
    """Discounted soft optimum; ``method`` is ``"newton"`` (soft policy iteration) or ``"vi"``."""
    S, A = mdp.shape
    log_pi0 = log_prior(mdp)
    v0 = np.zeros(S)
    if warm_start is not None and warm_start.kind == "discounted":
        v0 = np.array(warm_start.v, dtype=np.float64)

    def backup(v: np.ndarray) -> np.ndarray:
        return soft_value(soft_q_backup(mdp, v, beta, gamma, dynamics), log_pi0, beta)

    if method == "vi":
        max_iter = max_iter or 1_000_000
        v = v0
        it = 0
        resid = np.inf
        while it < max_iter:
            v_new = backup(v)
            resid = float(beta * np.max(np.abs(v_new - v)))
            v = v_new
            it += 1
            if resid < tol:
                break
        converged = resid < tol
    elif method == "newton":
        rows = mdp.row_index()
        s_of = rows // A
        cols = mdp.P.indices

        def evaluate(v: np.ndarray):  # type: ignore[no-untyped-def]
            q = soft_q_backup(mdp, v, beta, gamma, dynamics)
            pi = _policy(q, log_pi0, beta)
            if dynamics == "fixed":
                weights = mdp.P.data
            else:
                z = log_transitions(mdp) + beta * (
                    mdp.reward_per_transition() + gamma * v[cols]
                )
                weights = np.exp(z - beta * q.ravel()[rows])
            return soft_value(q, log_pi0, beta), (s_of, cols, pi.ravel()[rows] * weights)

        res = newton_discounted(
            evaluate, v0, gamma=gamma, beta=beta, tol=tol, max_iter=max_iter or 500
        )
        v, it, resid, converged = res.h, res.iterations, res.residual, res.converged
    else:
        raise ValueError(f"unknown method {method!r} for discounted problems; use 'newton' or 'vi'")
    q = soft_q_backup(mdp, v, beta, gamma, dynamics)
    notes: tuple[str, ...] = ()
    if not converged:
        msg = (
            f"discounted solver ({method}) stopped with residual {resid:.3g} "
            f"after {it} iterations"
        )
        notes = (msg,)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return Solution(
        beta=beta,
        kind="discounted",
        dynamics=dynamics,
        method=method,
        theta=float("nan"),
        log_rho=float("nan"),
        policy=_policy(q, log_pi0, beta),
        q=q,
        v=soft_value(q, log_pi0, beta),
        iterations=int(it),
        residual=float(resid),
        converged=bool(converged),
        gamma=gamma,
        notes=notes,
    )


def solve_finite_horizon(
    mdp: TabularMDP,
    beta: float,
    horizon: int,
    *,
    dynamics: str = "fixed",
    gamma: float = 1.0,
    terminal_value: np.ndarray | None = None,
) -> Solution:
    """Backward soft value iteration over ``horizon`` steps (exact, no tolerance).

    ``theta`` is the per-step free energy of the whole horizon from the initial
    distribution: ``(1/(beta N)) log E_{s0}[exp(beta V_0(s0))]`` for controlled dynamics
    (the finite-time SCGF divided by ``beta N``) and ``E_{s0}[V_0]/N`` for fixed dynamics.
    """
    if int(horizon) != horizon or horizon < 1:
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    N = int(horizon)
    S, A = mdp.shape
    log_pi0 = log_prior(mdp)
    v = np.zeros((N + 1, S))
    if terminal_value is not None:
        v[N] = np.asarray(terminal_value, dtype=np.float64)
    q = np.zeros((N, S, A))
    policy = np.zeros((N, S, A))
    for t in range(N - 1, -1, -1):
        q[t] = soft_q_backup(mdp, v[t + 1], beta, gamma, dynamics)
        v[t] = soft_value(q[t], log_pi0, beta)
        policy[t] = _policy(q[t], log_pi0, beta)
    init = mdp.initial
    on = init > 0
    if dynamics == "controlled":
        theta = _logsumexp(np.log(init[on]) + beta * v[0][on]) / (beta * N)
    else:
        theta = float(init @ v[0]) / N
    return Solution(
        beta=beta,
        kind="finite",
        dynamics=dynamics,
        method="backward",
        theta=float(theta),
        log_rho=float(beta * theta),
        policy=policy,
        q=q,
        v=v,
        iterations=N,
        residual=0.0,
        converged=True,
        horizon=N,
        gamma=None if gamma == 1.0 else gamma,
    )

