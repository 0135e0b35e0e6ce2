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

import time
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
    "EvaluationLU",
    "factorise_evaluation",
    "relative_residual",
    "stationary_distribution",
]

#: largest change of beta*h accepted in one Newton step
_MAX_LOG_STEP = 1e12

#: below this many states every Newton step refactorises (an LU is cheap there)
_REUSE_MIN_STATES = 20_000

#: preconditioned (inexact) steps only below this residual: far from the solution only an
#: exact evaluation keeps soft policy iteration monotone (an inexact early step on a 1e6
#: pair grid at beta = 100 led into a region where exact steps then diverged)
_REUSE_BELOW = 1.0

#: Krylov dimension of a preconditioned Newton step before it gives up and refactorises
_GMRES_RESTART = 30

#: below this many states the dense column of ones costs little fill and the extra solves
#: of EvaluationLU cost more than they save (measured: 5-35% slower on 81-256 states)
_BORDER_MIN_STATES = 2_000

#: largest residual of EvaluationLU's probe solve (right-hand side of size 1); above it the
#: rank-one correction has cancelled too many digits and the ones-column form is used
_BORDER_PROBE_TOL = 1e-11

#: sweeps of iterative refinement a preconditioned step tries before GMRES
_REFINEMENT_SWEEPS = 2

#: refactorise once the preconditioned steps since the last factorisation have taken this
#: fraction of its time: later steps (and the stationary law) would pay more in Krylov
#: iterations than a fresh LU costs. Counted over all steps since the LU, not per step: a
#: per-step rule could keep a stale LU for good when every step stays just under its
#: threshold (1e6 pairs: one LU for the whole solve, 10 s instead of 7-8 s). Measured in
#: triangular solves on grid worlds of 1e5 and 1e6 pairs at beta = 10, two factorisations
#: with the second after two or three preconditioned steps are best (1e5: 53 solves, ~123
#: solve-equivalents with an LU at ~35 solves; after one step: 63, ~133. 1e6: 51 solves
#: against 54-64 for the other schedules tried); this rule picks those
_STALE_FRACTION = 0.5

#: absolute 2-norm residual at which the stationary law's GMRES stops (its entries sum to
#: 1; the refinement loop accepts a max-norm residual below 1e-15)
_STAT_ATOL = 1e-16

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
    """``A = I - K`` with column ``ref`` replaced by ones, applied through ``K`` in CSR
    form. The triplets of the solver's kernels come sorted by row, so the CSR matrix is
    built without a COO conversion (an ``indptr`` from the row counts); unsorted triplets
    are converted once."""

    def __init__(self, kernel: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                 ref: int) -> None:
        self.kernel, self.n, self.ref = kernel, n, ref
        self._K: sp.csr_matrix | None = None
        self._KT: Any = None
        self._k_ref: np.ndarray | None = None

    def _csr(self) -> tuple[sp.csr_matrix, np.ndarray]:
        if self._K is None or self._k_ref is None:
            rows, cols, vals = self.kernel
            n = self.n
            if rows.size and np.all(rows[1:] >= rows[:-1]):
                indptr = np.zeros(n + 1, dtype=np.int64)
                np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
                self._K = sp.csr_matrix((vals, cols, indptr), shape=(n, n))
            else:
                self._K = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
            at_ref = cols == self.ref
            self._k_ref = np.bincount(rows[at_ref], weights=vals[at_ref], minlength=n)
        return self._K, self._k_ref

    @property
    def k_ref(self) -> np.ndarray:
        """Column ``ref`` of ``K``."""
        return self._csr()[1]

    def __matmul__(self, x: np.ndarray) -> np.ndarray:
        K, k_ref = self._csr()
        # (I - K) x, then swap column ref of (I - K) for a column of ones
        out = x - K @ x + (k_ref + 1.0) * x[self.ref]
        out[self.ref] -= x[self.ref]
        return np.asarray(out)

    def rmatvec(self, y: np.ndarray) -> np.ndarray:
        """``A^T y``: ``y - K^T y`` except entry ``ref``, which is ``sum(y)``."""
        if self._KT is None:
            self._KT = self._csr()[0].T  # a CSC view of the same arrays, made once
        out = y - self._KT @ y
        out[self.ref] = y.sum()
        return np.asarray(out)


def _init_reuse_record(lu: Any) -> None:
    """What reusing a factorisation has cost so far (see :func:`newton_average`)."""
    lu.base_step = None  # time of the first preconditioned step with it
    lu.extra = 0.0  # sum of the later steps' time above that first one
    lu.stale = False  # the extra has paid for a new factorisation: a run given it as
    # lu0 (the next point of a continuation) refactorises at once


class MMatrixLU:
    """SuperLU of ``D - B``: ``B`` with entries ``vals`` at ``(rows, cols)``, ``D`` the
    diagonal ``diag``, for a non-singular M-matrix (the Newton evaluation matrix, Noda's
    shifted matrix), so elimination keeps the diagonal pivots (symmetric mode) and a
    symmetric fill-reducing ordering applies.

    With ``order`` (of the same size) the matrix is built directly in that ordering and
    factorised as it is; without one, SuperLU orders it by minimum degree of ``M + M^T``.
    ``.order`` (position ``j`` holds state ``order[j]``) can be handed to the next
    factorisation of the same sparsity pattern: computing an ordering is a sizeable part
    of a factorisation. Raises ``RuntimeError`` when the matrix is exactly singular.
    """

    def __init__(self, rows: np.ndarray, cols: np.ndarray, vals: np.ndarray,
                 diag: np.ndarray, order: np.ndarray | None = None) -> None:
        n = diag.size
        idx = np.arange(n)
        self._permuted = order is not None and order.size == n
        if self._permuted:
            assert order is not None
            position = np.empty(n, dtype=np.int64)
            position[order] = idx
            rows, cols, diag = position[rows], position[cols], diag[order]
        M = sp.csc_matrix(
            (np.concatenate([-vals, diag]), (np.concatenate([rows, idx]),
                                             np.concatenate([cols, idx]))),
            shape=(n, n),
        )
        self._lu = splu(M, permc_spec="NATURAL" if self._permuted else "MMD_AT_PLUS_A",
                        diag_pivot_thresh=0.01, options={"SymmetricMode": True})
        self.order = order if self._permuted else np.argsort(self._lu.perm_c)

    def solve(self, b: np.ndarray, trans: str = "N") -> np.ndarray:
        if not self._permuted:
            return np.asarray(self._lu.solve(b, trans=trans))
        x = np.empty_like(b)
        x[self.order] = self._lu.solve(b[self.order], trans=trans)
        return x


class EvaluationLU:
    """Solves with ``A = I - K`` whose column ``ref`` is replaced by ones, factorising only
    the sparse ``C = I - K + e_ref e_ref^T``.

    ``A``'s column of ones is dense: it costs fill and spoils fill-reducing orderings,
    while ``C`` keeps the sparsity of ``K`` and, for an irreducible ``K``, is a nonsingular
    M-matrix (weakly diagonally dominant rows, strictly so in row ``ref``), so Gaussian
    elimination needs no pivoting for stability and the symmetric minimum-degree ordering
    of ``C + C^T`` applies. ``A = C + w e_ref^T`` with ``w = 1 - C[:, ref]`` is a rank-one
    update, so both ``A^{-1} b`` and ``A^{-T} c`` are one triangular solve pair plus a
    Sherman–Morrison correction (its vectors are computed once per factorisation).

    ``order`` is a fill-reducing symmetric ordering to reuse (``.order`` of an earlier
    factorisation of a kernel with the same sparsity, e.g. the previous Newton step):
    computing the minimum-degree ordering is a sizeable part of a factorisation.
    ``operator`` is the :class:`_EvaluationOperator` of the same kernel and ``ref`` when
    the caller has one (its CSR form of ``K`` is reused).
    """

    def __init__(self, kernel: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                 ref: int, order: np.ndarray | None = None,
                 operator: _EvaluationOperator | None = None) -> None:
        rows, cols, vals = kernel
        A = operator if operator is not None else _EvaluationOperator(kernel, n, ref)
        self.ref, self.n = ref, n
        start = time.perf_counter()
        diag = np.ones(n)
        diag[ref] = 2.0  # the + e_ref e_ref^T of C
        # raises RuntimeError when C is exactly singular (numerically multichain kernel)
        self._c = MMatrixLU(rows, cols, vals, diag, order)
        self.order = self._c.order
        # w = 1 - C[:, ref] = 1 + K[:, ref] - 2 e_ref
        self._w = A.k_ref + 1.0
        self._w[ref] -= 2.0
        self._z = self._c_solve(self._w, "N")  # C^{-1} w
        denom = 1.0 + self._z[ref]
        # C is (nearly) singular when ref is (nearly) transient under the evaluated policy,
        # even though A is fine: C^{-1} w then grows like 1/mu_ref and the rank-one
        # correction cancels that many digits. A probe solve measures what is left;
        # such kernels go to the ones-column form
        if not (np.all(np.isfinite(self._z)) and abs(denom) > 0.0):
            raise RuntimeError("bordered evaluation matrix is singular")
        self._denom = denom
        probe = np.cos(np.arange(n, dtype=np.float64))
        error = probe - A @ self.solve(probe)
        if not np.max(np.abs(error)) < _BORDER_PROBE_TOL:
            raise RuntimeError("bordered evaluation matrix is ill-conditioned")
        self._g: np.ndarray | None = None  # C^{-T} e_ref, on the first transposed solve
        #: wall time of the factorisation: the yardstick for the cost of reusing it
        self.seconds = time.perf_counter() - start
        _init_reuse_record(self)

    def _c_solve(self, b: np.ndarray, trans: str) -> np.ndarray:
        return self._c.solve(b, trans)

    def solve(self, b: np.ndarray, trans: str = "N") -> np.ndarray:
        if trans == "N":
            y = self._c_solve(b, "N")
            return np.asarray(y - self._z * (y[self.ref] / self._denom))
        if self._g is None:
            e = np.zeros(self.n)
            e[self.ref] = 1.0
            self._g = self._c_solve(e, "T")
        y = self._c_solve(b, "T")
        return np.asarray(y - self._g * (float(self._w @ y) / self._denom))


class _OnesColumnLU:
    """SuperLU of the evaluation matrix with its column of ones, timed. Where ``A`` is
    exactly singular (numerically several recurrent classes: probabilities underflow at
    huge beta) it factorises ``A + shift I`` instead, which picks one solution of the
    singular system (for Newton a discount ``1 - shift``: the next improvement step merges
    the classes; for the stationary law the class of ``ref``)."""

    def __init__(self, A: sp.csc_matrix, shift: float = 1e-10) -> None:
        start = time.perf_counter()
        try:
            self._lu = splu(A)
        except RuntimeError:
            self._lu = splu(sp.csc_matrix(A + shift * sp.identity(A.shape[0])))
        self.seconds = time.perf_counter() - start
        _init_reuse_record(self)

    def solve(self, b: np.ndarray, trans: str = "N") -> np.ndarray:
        return np.asarray(self._lu.solve(b, trans=trans))


def factorise_evaluation(kernel: tuple[np.ndarray, np.ndarray, np.ndarray], n: int,
                         ref: int, previous: Any = None, shift: float = 1e-10,
                         operator: _EvaluationOperator | None = None,
                         order: np.ndarray | None = None) -> Any:
    """A factorisation of the Newton evaluation matrix with ``.solve(b, trans)``: the
    sparse bordered form :class:`EvaluationLU`, or, on small models and where its ``C``
    is ill-conditioned, an LU of the matrix with its column of ones (regularised if
    needed). Raises ``RuntimeError`` when even that fails. The fill-reducing ordering of
    ``previous`` (an earlier factorisation of the same sparsity pattern) is reused when it
    has one; a ``previous`` of the ones-column form keeps that form. ``shift`` is the
    diagonal shift of the ones-column form where it is exactly singular. ``operator`` is
    the :class:`_EvaluationOperator` of ``kernel`` when the caller has one (it holds ``K``
    in CSR form). ``order`` is a fill-reducing ordering of the kernel's pattern to use
    when ``previous`` has none (e.g. :func:`tiltrl.exact.ordering.nested_dissection`,
    kept on the model); without either, SuperLU's minimum-degree ordering is computed."""
    if n >= _BORDER_MIN_STATES and (previous is None or isinstance(previous, EvaluationLU)):
        try:
            return EvaluationLU(kernel, n, ref, order=getattr(previous, "order", order),
                                operator=operator)
        except RuntimeError:
            pass
    # a run whose bordered form failed once stays on the ones-column form
    return _OnesColumnLU(_evaluation_matrix(kernel, n, ref), shift)


def _precision_floor(h: np.ndarray, beta: float) -> float:
    """Smallest relative residual double precision can certify: log-space values of size
    ``beta*|h|`` carry absolute rounding errors of ``eps*beta*|h|`` each."""
    return float(64 * np.finfo(float).eps * max(1.0, beta * float(np.max(np.abs(h)))))


def _forcing_term(resid: float, tol: float) -> float:
    """Relative accuracy asked of a preconditioned Newton step at nonlinear residual
    ``resid``: ``0.1 resid`` keeps the convergence quadratic (Eisenstat & Walker 1996), but
    no more than the step needs to land below ``tol`` (linear error ``~ rtol * resid``,
    two orders of margin): the last step then stops after a sweep or two of refinement
    instead of solving to 1e-10."""
    return min(1e-3, max(0.1 * resid, 0.01 * tol / resid, 1e-10))


def _refactorise_due(since_factor: float, factor_time: float, resid: float,
                     tol: float) -> bool:
    """Whether the next Newton step should factorise afresh: the preconditioned steps
    since the last LU took ``since_factor`` seconds in all, more than ``_STALE_FRACTION``
    of that LU's ``factor_time``, and the next step (residual ``resid``, quadratic
    convergence) is not expected to be the last."""
    return since_factor > _STALE_FRACTION * factor_time and resid**2 > tol


def _preconditioned_step(A: _EvaluationOperator, b: np.ndarray, lu: Any,
                         rtol: float) -> np.ndarray | None:
    """Newton step with the *current* Jacobian by GMRES, preconditioned by an older LU.

    Successive Jacobians differ only where the soft policy moved, so the old factors are
    an excellent preconditioner: a few Krylov iterations (one triangular solve pair and
    one product with ``K`` each) replace a new factorisation, and the step is
    an inexact Newton step (quadratic convergence is kept when the forcing term ``rtol``
    shrinks with the nonlinear residual; Eisenstat & Walker, SIAM J. Sci. Comput. 17,
    1996). Two sweeps of plain iterative refinement come first (enough where the old LU
    is still close, e.g. the next point of a continuation, and without GMRES's setup
    cost), then at most ``_GMRES_RESTART`` GMRES iterations: the caller judges the step by
    the nonlinear residual and refactorises when it is not good enough.
    """
    # where the old LU is still close (continuation in a parameter, late Newton steps)
    # plain iterative refinement gets there first, without GMRES's setup cost
    x = lu.solve(b)
    target = rtol * float(np.linalg.norm(b))
    for _ in range(_REFINEMENT_SWEEPS):
        r = b - A @ x
        if not np.all(np.isfinite(r)):
            return None
        if float(np.linalg.norm(r)) <= target:
            return np.asarray(x)
        x = x + lu.solve(r)
    n = b.size
    op = LinearOperator((n, n), matvec=A.__matmul__, dtype=np.float64)
    prec = LinearOperator((n, n), matvec=lu.solve, dtype=np.float64)
    x, _info = gmres(op, b, x0=x, rtol=rtol, atol=0.0, restart=_GMRES_RESTART,
                     maxiter=1, M=prec)
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
    first: tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    order: np.ndarray | None = None,
) -> NewtonResult:
    """Solve ``h + theta = T h`` (``h[ref]`` fixed) by Newton / soft policy iteration.

    Stops when the relative eigen-residual ``max_i |exp(beta (T h - h - theta)_i) - 1|``
    falls below ``tol``; ``theta`` is the midpoint of the Collatz-Wielandt bracket
    ``[min(T h - h), max(T h - h)]`` which always contains the optimal rate (for the
    controlled problem on an irreducible class).

    A sparse LU is by far the most expensive part of an iteration, and successive
    Jacobians differ only where the soft policy changed; so on large models (and once the
    residual is below ``_REUSE_BELOW`` = 1) a step first solves the current Newton system by GMRES
    preconditioned with the last LU (:func:`_preconditioned_step`) and keeps the step only
    if it halves the residual; otherwise the step is redone with a fresh factorisation
    (of the sparse bordered form, :class:`EvaluationLU`).

    ``max_blowups`` stops the run after that many consecutive exact steps whose residual is
    astronomically large (``> 1e250``, i.e. the overflow clip): a linearised step that
    overshot by hundreds of log units, as on localised Perron vectors, from which the
    caller has a better fallback. ``None`` keeps going (soft policy iteration can recover).

    ``lu0`` is an LU of a nearby evaluation matrix of the same size (e.g. from the previous
    point of a continuation in a parameter): preconditioned steps start from it at once.

    ``first`` is ``evaluate(h0)`` when the caller already has it.

    ``order`` is a fill-reducing ordering of the states for the first factorisation (the
    kernels of one run share a sparsity pattern, so later ones reuse the ordering of the
    last LU); see :func:`factorise_evaluation`.

    ``converged`` is also set when the residual stalls at the floating-point floor
    ``64 eps max(1, beta max|h|)`` above ``tol``; ``note`` then says so.
    """
    h = np.array(h0, dtype=np.float64)
    n = h.size
    note = ""
    it = 0
    lu = lu0
    factorisations = 0
    # an lu0 marked stale by an earlier run only lends its ordering to a new LU
    reuse_allowed = not getattr(lu0, "stale", False)
    # wall times of the last factorisation and of the last GMRES step (an lu0 without a
    # recorded time counts as expensive: it is only dropped when a step fails to halve)
    factor_time = getattr(lu0, "seconds", np.inf)
    step_time = 0.0
    since_factor = 0.0  # time of the preconditioned steps since the last factorisation
    blowups = 0
    Th, kernel = evaluate(h) if first is None else first
    theta, lo, hi, resid = relative_residual(Th - h, beta)
    while resid >= tol and it < max_iter and np.isfinite(resid):
        if progress is not None:
            progress(it, resid)
        # the step's own theta (entry ref of the solution) is discarded, so solve with
        # b centred on the current theta: tolerances are then relative to what matters
        b = Th - h - theta
        A = _EvaluationOperator(kernel, n, ref)
        x = None
        # on large models, reuse the last LU as a GMRES preconditioner; small models
        # refactorise every step (an LU is cheap there)
        if (lu is not None and reuse_allowed and n >= _REUSE_MIN_STATES
                and resid < _REUSE_BELOW):
            start = time.perf_counter()
            # forcing term: the linear residual a small fraction of the nonlinear one
            x = _preconditioned_step(A, b, lu, rtol=_forcing_term(resid, tol))
            step_time = time.perf_counter() - start
        reused = x is not None
        if x is None:
            try:
                lu = factorise_evaluation(kernel, n, ref, previous=lu, operator=A,
                                          order=order)
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
        if reused and not trial[3] < 0.5 * resid:
            # the old LU no longer describes the Jacobian well: redo this step exactly
            reuse_allowed = False
            continue
        if reused:
            since_factor += step_time
        else:
            factor_time, since_factor = lu.seconds, 0.0
        # an exact step is soft policy iteration: its gain never decreases even when the
        # residual jumps (the evaluated policy may be nearly multichain), so it is kept.
        # The Jacobian drifts away from the factored one and GMRES needs ever more
        # iterations: refactorise once the steps since the LU have cost half a
        # factorisation, unless the next (quadratically convergent) step should be the last
        reuse_allowed = not (reused and _refactorise_due(since_factor, factor_time,
                                                         trial[3], tol))
        if reused and hasattr(lu, "stale"):
            # across runs (continuation in a parameter), where each run may need only
            # one step: once the steps' growth over the first one has cost as much as a
            # factorisation, the next run refactorises ("ski rental")
            if lu.base_step is None:
                lu.base_step = step_time
            lu.extra += max(0.0, step_time - lu.base_step)
            lu.stale = lu.extra > lu.seconds
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
    e = np.zeros(n)
    e[ref] = 1.0
    A = _EvaluationOperator(kernel, n, ref)
    if lu is not None:
        # GMRES on A^T mu = e preconditioned by the transposed old factors, then
        # refinement sweeps until the max-norm residual is at round-off
        op = LinearOperator((n, n), matvec=A.rmatvec, dtype=np.float64)
        prec = LinearOperator((n, n), matvec=lambda y: lu.solve(y, trans="T"),
                              dtype=np.float64)
        mu = lu.solve(e, trans="T")
        for _ in range(3):
            r = e - A.rmatvec(mu)
            if np.max(np.abs(r)) < 1e-15:
                break
            d, _info = gmres(op, r, rtol=0.0, atol=_STAT_ATOL, restart=_GMRES_RESTART,
                             maxiter=2, M=prec)
            mu = mu + d
        else:
            lu = None
        if lu is not None and np.all(np.isfinite(mu)):
            return _normalise(mu)
    # numerically several recurrent classes (transition probabilities below 1e-308 at
    # huge beta): a relative 1e-13 diagonal shift selects the class of ``ref``
    mu = factorise_evaluation(kernel, n, ref, shift=1e-13).solve(e, trans="T")
    return _normalise(mu)


def _normalise(mu: np.ndarray) -> np.ndarray:
    mu = np.clip(mu, 0.0, None)  # round-off below zero on states visited with prob ~0
    return mu / mu.sum()
