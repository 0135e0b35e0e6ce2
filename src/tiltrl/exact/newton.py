"""Newton's method for soft Bellman equations = soft policy iteration.

Both the controlled (tilted-matrix) and the fixed-dynamics average-reward equations
have the form ``h(s) + theta = T h (s)`` with ``T h = (1/beta) log sum_e exp(z_e(h))`` a
soft maximum whose Jacobian is a row-stochastic matrix ``K`` (the transition matrix of
the greedy soft policy). One Newton step solves the *policy evaluation* equations
``(I - K) delta + theta 1 = T h - h`` with ``delta(ref) = 0`` by one sparse LU, i.e. it is
exactly soft policy iteration (Howard's method for the entropy-regularised problem):
the gain never decreases and convergence is quadratic near the solution. Everything
stays in log space, so large ``beta`` cannot overflow, and unlike power iteration the
speed does not depend on the spectral gap (near-periodic chains are no harder).

The discounted equation ``h = T h`` with Jacobian ``gamma K`` is handled the same way.

References: R. A. Howard, *Dynamic Programming and Markov Processes* (1960);
M. L. Puterman & S. L. Brumelle, "On the convergence of policy iteration in stationary
dynamic programming", Math. Oper. Res. 4 (1979) — policy iteration as Newton's method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, gmres, splu

__all__ = [
    "NewtonResult",
    "newton_average",
    "newton_discounted",
    "relative_residual",
    "stationary_distribution",
]

#: below this many states every Newton step refactorises (an LU is cheap there)
_REUSE_MIN_STATES = 20_000

#: ``evaluate(h) -> (T h, K)`` with ``K`` given as COO triplets ``(rows, cols, values)``.
Evaluate = Callable[[np.ndarray], tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]]]


@dataclass
class NewtonResult:
    h: np.ndarray
    theta: float
    bracket: tuple[float, float]
    residual: float
    iterations: int
    converged: bool
    kernel: tuple[np.ndarray, np.ndarray, np.ndarray]
    note: str = ""
    lu: Any = None  # last LU of the evaluation matrix (near the final kernel)
    factorisations: int = 0


def relative_residual(b: np.ndarray, beta: float) -> tuple[float, float, float, float]:
    lo, hi = float(b.min()), float(b.max())
    theta = 0.5 * (lo + hi)
    # max_i |(Q chi)_i / (rho chi_i) - 1| for the average-reward equation
    # clip the exponent: far from the solution the residual is just "large", not inf
    resid = float(np.max(np.abs(np.expm1(np.minimum(beta * (b - theta), 700.0)))))
    return theta, lo, hi, resid


def _evaluation_matrix(
    kernel: tuple[np.ndarray, np.ndarray, np.ndarray], n: int, ref: int
) -> sp.csc_matrix:
    """``I - K`` with column ``ref`` replaced by ones (unknowns: delta, theta at ref)."""
    rows, cols, vals = kernel
    keep = cols != ref
    idx = np.arange(n)
    not_ref = idx != ref
    all_rows = np.concatenate([rows[keep], idx[not_ref], idx])
    all_cols = np.concatenate([cols[keep], idx[not_ref], np.full(n, ref)])
    all_vals = np.concatenate([-vals[keep], np.ones(n - 1), np.ones(n)])
    return sp.csc_matrix((all_vals, (all_rows, all_cols)), shape=(n, n))


def _preconditioned_solve(
    A: sp.csc_matrix, b: np.ndarray, lu: Any, eta: float = 1e-4
) -> np.ndarray | None:
    """Inexact Newton step: ``||A x - b|| <= eta ||b||`` using an old LU, else ``None``.

    First the chord step ``x = LU_old^{-1} b``; if that is not accurate enough, a few
    GMRES iterations preconditioned by the old LU. The forcing term ``eta`` keeps the
    local convergence at a factor ``eta`` per step (Dembo, Eisenstat & Steihaug 1982).
    """
    target = eta * float(np.max(np.abs(b)))
    x = lu.solve(b)
    if np.max(np.abs(A @ x - b)) <= target:
        return x
    M = LinearOperator(A.shape, matvec=lu.solve, dtype=np.float64)
    x, _ = gmres(A, b, x0=x, M=M, rtol=0.1 * eta, atol=0.0, restart=8, maxiter=1)
    if not np.all(np.isfinite(x)) or np.max(np.abs(A @ x - b)) > target:
        return None
    return np.asarray(x)


def newton_average(
    evaluate: Evaluate,
    h0: np.ndarray,
    *,
    ref: int,
    beta: float,
    tol: float,
    max_iter: int,
    progress: Callable[[int, float], None] | None = None,
) -> NewtonResult:
    """Solve ``h + theta = T h`` (``h[ref]`` fixed) by Newton / soft policy iteration.

    Stops when the relative eigen-residual ``max_i |exp(beta (T h - h - theta)_i) - 1|``
    falls below ``tol``; ``theta`` is the midpoint of the Collatz-Wielandt bracket
    ``[min(T h - h), max(T h - h)]`` which always contains the optimal rate (for the
    controlled problem on an irreducible class).

    A sparse LU is by far the most expensive part of an iteration, and successive
    Jacobians differ only where the soft policy changed; so each step first tries GMRES
    preconditioned by the last LU (a few cheap triangular solves) and factorises anew only
    when that fails to converge quickly.
    """
    h = np.array(h0, dtype=np.float64)
    n = h.size
    note = ""
    best: tuple[float, np.ndarray] | None = None
    it = 0
    lu = None
    prev_resid = np.inf
    factorisations = 0
    while True:
        Th, kernel = evaluate(h)
        b = Th - h
        theta, lo, hi, resid = relative_residual(b, beta)
        if not np.isfinite(resid):
            note = "non-finite Bellman residual; stopped"
            break
        if best is None or resid < best[0]:
            best = (resid, h.copy())
        if resid < tol or it >= max_iter:
            break
        A = _evaluation_matrix(kernel, n, ref)
        if progress is not None:
            progress(it, resid)
        x = None
        # reuse the old LU on large problems while that still contracts fast; small
        # problems refactorise every step (exact Newton, quadratic convergence)
        reuse = (
            lu is not None and n >= _REUSE_MIN_STATES and resid < 0.5
            and resid < 0.3 * prev_resid
        )
        if not reuse:
            lu = None
        if lu is not None:
            # inexact Newton: the last LU preconditions GMRES on the new Jacobian; a
            # refactorisation is only paid for when the policy moved too far
            x = _preconditioned_solve(A, b, lu)
        if x is None:
            try:
                lu = splu(A)
                factorisations += 1
            except RuntimeError as exc:  # exactly singular: several recurrent classes
                note = f"policy evaluation singular ({exc}); stopped"
                break
            x = lu.solve(b)
        if not np.all(np.isfinite(x)):
            note = "policy evaluation returned non-finite values; stopped"
            break
        x[ref] = 0.0
        h = h + x
        h -= h[ref]
        prev_resid = resid
        it += 1
    converged = resid < tol
    if not converged and best is not None and best[0] < resid:
        h = best[1]
        Th, kernel = evaluate(h)
        theta, lo, hi, resid = relative_residual(Th - h, beta)
    out = NewtonResult(h, theta, (lo, hi), resid, it, converged, kernel, note)
    out.lu = lu
    out.factorisations = factorisations
    return out


def newton_discounted(
    evaluate: Evaluate,
    h0: np.ndarray,
    *,
    gamma: float,
    beta: float,
    tol: float,
    max_iter: int,
) -> NewtonResult:
    """Solve ``h = T h`` whose Jacobian is ``gamma K``, by Newton / soft policy iteration."""
    h = np.array(h0, dtype=np.float64)
    n = h.size
    note = ""
    it = 0
    eye = sp.identity(n, format="csc")
    while True:
        Th, kernel = evaluate(h)
        b = Th - h
        resid = float(beta * np.max(np.abs(b)))
        if resid < tol or it >= max_iter or not np.isfinite(resid):
            break
        rows, cols, vals = kernel
        A = eye - gamma * sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
        h = h + splu(sp.csc_matrix(A)).solve(b)
        it += 1
    nan = float("nan")
    return NewtonResult(h, nan, (nan, nan), resid, it, resid < tol, kernel, note)


def stationary_distribution(
    kernel: tuple[np.ndarray, np.ndarray, np.ndarray],
    n: int,
    ref: int,
    lu: Any = None,
) -> np.ndarray:
    """Stationary law ``mu K = mu``, ``sum(mu) = 1`` of a chain with one recurrent class.

    Solves the transpose of the Newton evaluation matrix against ``e_ref``: its rows
    other than ``ref`` are the balance equations and row ``ref`` is the normalisation.
    ``lu`` may be a factorisation of a nearby kernel (the last Newton step); it is then
    used as a preconditioner for iterative refinement instead of factorising again.
    """
    A = _evaluation_matrix(kernel, n, ref)
    e = np.zeros(n)
    e[ref] = 1.0
    AT = sp.csr_matrix(A.T)
    if lu is not None:
        mu = lu.solve(e, trans="T")
        for _ in range(20):
            r = e - AT @ mu
            if np.max(np.abs(r)) < 1e-15:
                break
            mu = mu + lu.solve(r, trans="T")
        else:
            lu = None
        if lu is not None and np.all(np.isfinite(mu)):
            return _normalise(mu)
    mu = splu(A).solve(e, trans="T")
    return _normalise(mu)


def _normalise(mu: np.ndarray) -> np.ndarray:
    mu = np.clip(mu, 0.0, None)  # round-off below zero on states visited with prob ~0
    return mu / mu.sum()
