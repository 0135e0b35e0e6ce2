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
from scipy.sparse.linalg import splu

__all__ = [
    "NewtonResult",
    "newton_average",
    "newton_discounted",
    "relative_residual",
    "stationary_distribution",
]

#: largest change of beta*h accepted in one Newton step
_MAX_LOG_STEP = 1e12

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


class _EvaluationOperator:
    """``A = I - K`` with column ``ref`` replaced by ones, applied from the COO triplets of
    ``K``; the sparse matrix is only assembled when a factorisation needs it (chord steps
    need products only, and assembling costs as much as several products)."""

    def __init__(self, kernel: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                 ref: int) -> None:
        self.kernel, self.n, self.ref = kernel, n, ref
        self._csc: sp.csc_matrix | None = None

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        rows, cols, vals = self.kernel
        # (I - K) x, then swap column ref of (I - K) for a column of ones
        kx = np.bincount(rows, weights=vals * x[cols], minlength=self.n)
        at_ref = cols == self.ref
        k_ref = np.bincount(rows[at_ref], weights=vals[at_ref], minlength=self.n)
        out = x - kx + (k_ref + 1.0) * x[self.ref]
        out[self.ref] -= x[self.ref]
        return out

    def csc(self) -> sp.csc_matrix:
        if self._csc is None:
            self._csc = _evaluation_matrix(self.kernel, self.n, self.ref)
        return self._csc


def _precision_floor(h: np.ndarray, beta: float) -> float:
    """Smallest relative residual double precision can certify: log-space values of size
    ``beta*|h|`` carry absolute rounding errors of ``eps*beta*|h|`` each."""
    return float(64 * np.finfo(float).eps * max(1.0, beta * float(np.max(np.abs(h)))))


def _chord_step(A: _EvaluationOperator, b: np.ndarray, lu: Any) -> np.ndarray | None:
    """Chord step ``x = LU_old^{-1} b``: two triangular solves instead of a new LU.

    Whether it is kept is decided on the nonlinear residual by the caller.
    """
    x = lu.solve(b)
    for _ in range(2):  # iterative refinement against the current Jacobian
        x = x + lu.solve(b - A @ x)
    return np.asarray(x) if np.all(np.isfinite(x)) else None


def newton_average(
    evaluate: Evaluate,
    h0: np.ndarray,
    *,
    ref: int,
    beta: float,
    tol: float,
    max_iter: int,
    progress: Callable[[int, float], None] | None = None,
    lu0: Any = None,
    max_blowups: int | None = None,
) -> NewtonResult:
    """Solve ``h + theta = T h`` (``h[ref]`` fixed) by Newton / soft policy iteration.

    Stops when the relative eigen-residual ``max_i |exp(beta (T h - h - theta)_i) - 1|``
    falls below ``tol``; ``theta`` is the midpoint of the Collatz-Wielandt bracket
    ``[min(T h - h), max(T h - h)]`` which always contains the optimal rate (for the
    controlled problem on an irreducible class).

    A sparse LU is by far the most expensive part of an iteration, and successive
    Jacobians differ only where the soft policy changed; so on large models (and once the
    residual is below 0.1) a step first tries the last LU (a chord step, refined twice
    against the current Jacobian) and keeps it only if it halves the residual; otherwise
    the step is redone with a fresh factorisation.

    ``max_blowups`` stops the run after that many consecutive exact steps whose residual is
    astronomically large (``> 1e250``, i.e. the overflow clip): a linearised step that
    overshot by hundreds of log units, as on localised Perron vectors, from which the
    caller has a better fallback. ``None`` keeps going (soft policy iteration can recover).

    ``lu0`` is an LU of a nearby evaluation matrix of the same size (e.g. from the previous
    point of a continuation in a parameter): chord steps start from it at once.

    ``converged`` is also set when the residual stalls at the floating-point floor
    ``64 eps max(1, beta max|h|)`` above ``tol``; ``note`` then says so.
    """
    h = np.array(h0, dtype=np.float64)
    n = h.size
    note = ""
    it = 0
    lu = lu0
    factorisations = 0
    chord_allowed = True
    blowups = 0
    Th, kernel = evaluate(h)
    theta, lo, hi, resid = relative_residual(Th - h, beta)
    while resid >= tol and it < max_iter and np.isfinite(resid):
        if progress is not None:
            progress(it, resid)
        b = Th - h
        A = _EvaluationOperator(kernel, n, ref)
        x = None
        # on large models, reuse the last LU once Newton is in its fast local regime;
        # small models refactorise every step (exact Newton, quadratic convergence)
        if lu is not None and chord_allowed and n >= _REUSE_MIN_STATES and resid < 1e-1:
            x = _chord_step(A, b, lu)
        chord = x is not None
        if x is None:
            try:
                lu = splu(A.csc())
            except RuntimeError:
                # numerically several recurrent classes (policy probabilities underflow at
                # huge beta): evaluate with a discount 1 - 1e-10 instead, which picks one
                # solution of the singular system; the next improvement step merges them
                try:
                    lu = splu(sp.csc_matrix(A.csc() + 1e-10 * sp.identity(n)))
                except RuntimeError as exc:
                    note = f"policy evaluation singular ({exc}); stopped"
                    break
            factorisations += 1
            x = lu.solve(b)
            if resid < 1e-4:
                # one step of iterative refinement: near the solution the accuracy of
                # the linear solve, not Newton, limits the final residual
                x = x + lu.solve(b - A @ x)
        if not np.all(np.isfinite(x)):
            note = "policy evaluation returned non-finite values; stopped"
            break
        x[ref] = 0.0
        # the value of a nearly multichain policy can be astronomically large; keep
        # beta*h far from overflow (only the ordering of such values matters to the
        # next improvement step)
        size = beta * float(np.max(np.abs(x)))
        if size > _MAX_LOG_STEP:
            x *= _MAX_LOG_STEP / size
        h_try = h + x
        h_try -= h_try[ref]
        Th_try, kernel_try = evaluate(h_try)
        trial = relative_residual(Th_try - h_try, beta)
        it += 1
        if chord and not trial[3] < 0.5 * resid:
            # the old LU no longer describes the Jacobian well: redo this step exactly
            chord_allowed = False
            continue
        # an exact step is soft policy iteration: its gain never decreases even when the
        # residual jumps (the evaluated policy may be nearly multichain), so it is kept
        chord_allowed = True
        stalled = trial[3] > 0.5 * resid
        h, Th, kernel = h_try, Th_try, kernel_try
        theta, lo, hi, resid = trial
        blowups = blowups + 1 if resid > 1e250 else 0
        if max_blowups is not None and blowups >= max_blowups:
            note = f"residual overflowed in {blowups} consecutive steps; stopped"
            break
        floor = _precision_floor(h, beta)
        if stalled and resid < floor:
            note = (
                f"residual {resid:.2g} is at the floating-point floor ~{floor:.1g} of this "
                f"problem (beta*max|h| = {beta * np.max(np.abs(h)):.3g}); accepted"
            )
            break
    converged = bool(resid < max(tol, _precision_floor(h, beta)))
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
    try:
        mu = splu(A).solve(e, trans="T")
    except RuntimeError:
        # numerically several recurrent classes (transition probabilities below 1e-308
        # at huge beta): a relative 1e-13 diagonal shift selects the class of ``ref``
        mu = splu(sp.csc_matrix(A + 1e-13 * sp.identity(n))).solve(e, trans="T")
    return _normalise(mu)


def _normalise(mu: np.ndarray) -> np.ndarray:
    mu = np.clip(mu, 0.0, None)  # round-off below zero on states visited with prob ~0
    return mu / mu.sum()
