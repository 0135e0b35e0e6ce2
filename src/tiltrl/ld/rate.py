"""Rate functions by the Legendre–Fenchel transform of the SCGF.

``I(a) = sup_k [k a - Lambda(k)]`` (Gärtner–Ellis theorem; Touchette, Phys. Rep. 478
(2009) §3.3 and §4). Pointwise, the supremum sits where ``Lambda'(k*) = a``; with the
derivative taken from the eigenvectors (:func:`tiltrl.ld.tilted`) that root is found by a
safeguarded Newton / bisection in ``k``, and ``Lambda''(k*)`` is the curvature
``1 / I''(a)``.

What can go wrong, and how it is reported in :attr:`RateFunction.status`:

- ``"interior"``: ``a`` is in the range of ``Lambda'``; ``I(a)`` is exact.
- ``"affine"``: ``Lambda'`` jumps over ``a`` at some ``k_c`` (a kink of ``Lambda`` — a
  dynamical phase transition, e.g. two classes exchanging dominance). The Legendre
  transform is then affine on the gap, ``I(a) = k_c a - Lambda(k_c)``; it is the convex
  hull of the true rate function, which may be non-convex there (Gärtner–Ellis does not
  apply on that interval).
- ``"edge"``: ``a`` is at the end of the domain (``a`` equals ``lim Lambda'(k)`` as
  ``k -> +-inf`` within tolerance): the value is the limit ``lim_k [k a - Lambda(k)]``,
  estimated at the largest ``|k|`` tried.
- ``"outside"``: ``a`` is beyond the domain: ``I(a) = +inf``.

:func:`legendre_fenchel` is the discrete transform of sampled ``(k, Lambda)`` pairs (for
cloning estimates, or a quick grid).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from tiltrl.ld.scgf import Process, TiltedProcess, tilted

__all__ = ["RateFunction", "rate_function", "legendre_fenchel"]


@dataclass(frozen=True)
class RateFunction:
    """``I(a)`` at the requested points with its conjugate ``k*`` and a status per point.

    ``domain`` is the estimated range ``(lim_{k->-inf} Lambda'(k), lim_{k->inf} Lambda'(k))``
    of typical values reachable at exponential cost.
    """

    a: np.ndarray
    rate: np.ndarray
    k: np.ndarray
    status: tuple[str, ...]
    domain: tuple[float, float]
    mean: float  # Lambda'(0): the typical value, where I = 0
    notes: tuple[str, ...] = ()


class _Oracle:
    """Cached ``Lambda``, ``Lambda'``, ``Lambda''`` at ``k``."""

    def __init__(self, process: Process, f: Any, tol: float) -> None:
        self.process, self.f, self.tol = process, f, tol
        self.cache: dict[float, TiltedProcess] = {}

    def __call__(self, k: float) -> TiltedProcess:
        k = float(k)
        if k not in self.cache:
            self.cache[k] = tilted(self.process, self.f, k, tol=self.tol)
        return self.cache[k]


def _edge_k(oracle: _Oracle, sign: float, k_max: float) -> float:
    """Double ``k`` until ``Lambda'`` stops moving (relative 1e-10) or ``|k| = k_max``."""
    k = sign
    prev = oracle(k).mean
    while abs(k) < k_max:
        k *= 2.0
        cur = oracle(k).mean
        if abs(cur - prev) <= 1e-10 * max(1.0, abs(cur)):
            break
        prev = cur
    return k


def rate_function(
    process: Process,
    f: Any,
    a: Any,
    *,
    k_max: float = 1e3,
    tol: float = 1e-10,
    solver_tol: float = 1e-12,
) -> RateFunction:
    """Rate function ``I(a)`` of ``A_T / T`` by the Legendre–Fenchel transform.

    Parameters
    ----------
    process, f
        As in :func:`tiltrl.ld.scgf`.
    a
        Scalar or array of values of the time average.
    k_max
        Largest ``|k|`` tried when locating the domain edges (``k_max * spread(f)`` must
        stay within the solver's log-space range: 1e3 by default).
    tol
        Tolerance on ``Lambda'(k) = a`` and on the edge/kink decisions.

    Returns
    -------
    RateFunction
        See the module docstring for ``status``. Points are solved in increasing order of
        ``a``, each root search warm-started from the previous ``k*``.
    """
    a_arr = np.atleast_1d(np.asarray(a, dtype=np.float64)).ravel()
    bad = ~np.isfinite(a_arr)
    if bad.any():
        raise ValueError(f"a must be finite, got a[{int(np.flatnonzero(bad)[0])}] = "
                         f"{a_arr[bad][0]!r}")
    oracle = _Oracle(process, f, solver_tol)
    zero = oracle(0.0)
    m0 = zero.mean
    k_hi = _edge_k(oracle, 1.0, k_max)
    k_lo = _edge_k(oracle, -1.0, k_max)
    a_hi, a_lo = oracle(k_hi).mean, oracle(k_lo).mean
    notes: list[str] = []
    rate = np.empty(a_arr.size)
    kstar = np.empty(a_arr.size)
    status: list[str] = [""] * a_arr.size
    scale = max(1.0, abs(a_hi), abs(a_lo))
    for i in np.argsort(a_arr, kind="stable"):
        ai = float(a_arr[i])
        if abs(ai - m0) <= tol * scale:
            rate[i], kstar[i], status[i] = 0.0, 0.0, "interior"
            continue
        if ai > a_hi + tol * scale or ai < a_lo - tol * scale:
            rate[i], kstar[i], status[i] = np.inf, np.nan, "outside"
            continue
        if abs(ai - a_hi) <= tol * scale or abs(ai - a_lo) <= tol * scale:
            ke = k_hi if abs(ai - a_hi) <= tol * scale else k_lo
            rate[i], kstar[i], status[i] = ke * ai - oracle(ke).scgf, ke, "edge"
            continue
        lo, hi = (0.0, k_hi) if ai > m0 else (k_lo, 0.0)
        k, st, jump = _solve_conjugate(oracle, ai, lo, hi, tol * scale)
        rate[i] = k * ai - oracle(k).scgf
        kstar[i], status[i] = k, st
        if st == "affine":
            notes.append(
                f"a = {ai:.6g}: Lambda is not differentiable at k = {k:.6g} (Lambda' jumps "
                f"from {jump[0]:.6g} to {jump[1]:.6g}): I is affine there (convex hull of the "
                "true rate function)"
            )
    notes.extend(n for n in zero.notes if n not in notes)
    return RateFunction(
        a=a_arr, rate=rate, k=kstar, status=tuple(status), domain=(a_lo, a_hi), mean=m0,
        notes=tuple(notes),
    )


def _solve_conjugate(
    oracle: _Oracle, a: float, lo: float, hi: float, tol: float
) -> tuple[float, str, tuple[float, float]]:
    """Root of ``Lambda'(k) = a`` in ``[lo, hi]`` (``Lambda'`` is non-decreasing)."""
    k = 0.5 * (lo + hi)
    for _ in range(200):
        t = oracle(k)
        g = t.mean - a
        if abs(g) <= tol:
            return k, "interior", (t.mean, t.mean)
        if g > 0:
            hi = k
        else:
            lo = k
        # Newton step with the exact curvature Lambda''; bisection when it leaves the bracket
        step = k - g / t.variance if t.variance > 0 else np.nan
        k = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-13 * max(1.0, abs(k)):
            break
    # the bracket collapsed without Lambda' reaching a: Lambda' jumps over a at k
    k = 0.5 * (lo + hi)
    left, right = oracle(lo).mean, oracle(hi).mean
    if left < a < right and right - left > tol:
        return k, "affine", (left, right)
    return k, "interior", (left, right)


def legendre_fenchel(k: Any, values: Any, a: Any) -> np.ndarray:
    """Discrete transform ``I(a) = max_j [k_j a - Lambda_j]`` of sampled ``(k_j, Lambda_j)``.

    Exact for the sampled points; a lower bound on the true ``I`` (the max runs over a
    subset of ``k``), accurate where the conjugate ``k*`` lies inside the sampled range.
    """
    k_arr = np.asarray(k, dtype=np.float64).ravel()
    v_arr = np.asarray(values, dtype=np.float64).ravel()
    if k_arr.shape != v_arr.shape or k_arr.size == 0:
        raise ValueError("k and values must be non-empty and of the same length")
    a_arr = np.asarray(a, dtype=np.float64)
    out = np.max(np.multiply.outer(a_arr, k_arr) - v_arr, axis=-1)
    return np.asarray(out)
