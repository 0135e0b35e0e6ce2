"""Noda iteration: a globally convergent Perron solver, in log space.

For an irreducible non-negative matrix ``Q`` and a positive vector ``x``, the
Collatz-Wielandt bound ``sigma = max_i (Q x)_i / x_i`` is ``>= rho(Q)``, so
``sigma I - Q`` is a non-singular M-matrix with a positive inverse (unless ``x`` is
already the Perron vector) and the shifted inverse iteration

    x <- (sigma I - Q)^{-1} x

keeps ``x`` positive, decreases ``sigma`` monotonically to ``rho`` and converges
quadratically near the end (Noda, Numer. Math. 17, 382-386 (1971); Elsner, Linear
Algebra Appl. 15 (1976)). Unlike Newton on the log-space eigen-equation (soft policy
iteration, :mod:`tiltrl.exact.newton`) it cannot overshoot: it is the fallback where the
Perron vector is ill-conditioned, e.g. localised eigenvectors of long disordered chains,
whose tiny spectral gap makes the linearised first step astronomically large.

Log space: with ``x = exp(h)`` the iteration works on the similarity transform
``B = D^{-1} Q D / sigma`` (``D = diag(x)``) whose entries are
``exp(log Q[i,j] + h_j - h_i - log sigma) <= 1`` and whose row sums are ``<= 1``; each step
solves ``(I - B) z = 1`` and sets ``h <- h + log z``. Nothing overflows as long as one
step changes ``h`` by less than ~700.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tiltrl.exact.newton import MMatrixLU, NewtonResult, relative_residual
from tiltrl.exact.tilted import LogKernel, row_logsumexp

__all__ = ["noda_perron"]


def noda_perron(
    kernel: LogKernel, h0: np.ndarray, *, tol: float, max_iter: int = 200,
    order: np.ndarray | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> NewtonResult:
    """Perron root and log Perron vector of an irreducible log kernel by Noda iteration.

    Returns a :class:`~tiltrl.exact.newton.NewtonResult` with ``theta = log rho`` (the
    midpoint of the log Collatz-Wielandt bracket), ``h`` the log Perron vector with
    ``h[0] = 0`` and ``residual`` the relative eigen-residual of
    :func:`~tiltrl.exact.newton.relative_residual`.

    ``order`` is a fill-reducing ordering of the kernel's states (e.g.
    :func:`tiltrl.exact.ordering.nested_dissection`); without one, the minimum-degree
    ordering of the first step is reused by the later ones (every step factorises a
    matrix of the same pattern). ``progress(iteration, residual)`` is called before
    each step.
    """
    n = kernel.n
    rows = kernel.row_of
    cols = kernel.cols
    h = np.array(h0, dtype=np.float64)
    h -= h[0]
    it = 0
    note = ""
    while True:
        z_log = kernel.logw + h[cols] - h[rows]
        b = row_logsumexp(z_log, kernel.indptr)  # log (Q x)_i / x_i
        theta, lo, hi, resid = relative_residual(b, 1.0)
        if resid < tol or it >= max_iter:
            break
        if progress is not None:
            progress(it, resid)
        # B / sigma with sigma = exp(hi); a hair above hi keeps I - B non-singular at the
        # solution itself (round-off), without slowing the quadratic endgame
        shift = hi + max(4 * np.finfo(float).eps * max(1.0, abs(hi)), 1e-3 * (hi - lo) ** 2)
        try:
            # I - B has row sums > 0 (sigma above every row's Collatz-Wielandt ratio): a
            # strictly diagonally dominant M-matrix
            lu = MMatrixLU(rows, cols, np.exp(z_log - shift), np.ones(n), order)
            z, order = lu.solve(np.ones(n)), lu.order
        except RuntimeError as exc:
            note = f"Noda step singular ({exc}); stopped"
            break
        if not np.all(np.isfinite(z)) or z.min() <= 0:
            # round-off destroyed positivity: the M-matrix is numerically singular
            z = np.where(np.isfinite(z) & (z > 0), z, np.nan)
            if np.isnan(z).all():
                note = "Noda step lost positivity; stopped"
                break
            z = np.where(np.isnan(z), np.nanmin(z), z)
        h = h + np.log(z)
        h -= h[0]
        it += 1
    z_log = kernel.logw + h[cols] - h[rows]
    w = np.exp(z_log - row_logsumexp(z_log, kernel.indptr)[rows])
    return NewtonResult(
        h, theta, (lo, hi), resid, it, bool(resid < tol), (rows, cols, w), note,
    )
