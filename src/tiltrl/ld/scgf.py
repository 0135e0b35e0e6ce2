"""Scaled cumulant generating functions, their derivatives, and the driven process.

Discrete time. For an additive observable ``A_T = sum_{t<T} f(x_t, x_{t+1})`` of a chain
``P`` the SCGF is

    Lambda(k) = lim_T (1/T) log E[exp(k A_T)] = log rho(P_k),  P_k[x, y] = P[x, y] e^{k f(x, y)},

the log Perron root of the tilted matrix (Touchette, Phys. Rep. 478 (2009) §4; Chetrite &
Touchette, Ann. Henri Poincaré 16 (2015)). ``P_k`` is the tilted matrix of
``shared/DESIGN.md`` §1 for the one-action MDP with reward ``f`` at ``beta = k``, so the same
log-space Newton solver (:mod:`tiltrl.exact.newton`) computes it for either sign of ``k``.

Continuous time. For a jump process with rates ``W`` and ``A_T = sum_jumps g + int h dt``,
``Lambda(k)`` is the largest real eigenvalue of the tilted generator
``W_k[x, y] = W[x, y] e^{k g(x, y)}`` (``x != y``), ``W_k[x, x] = -escape(x) + k h(x)``.
It is computed from the uniformised matrix ``L = I + W_k / c`` (``c`` above every
``escape - k h``): ``Lambda = c (rho(L) - 1)``, with the same eigenvectors.

The *driven process* (generalised Doob transform) is
``P*_k[x, y] = P_k[x, y] u(y) / (rho u(x))`` with ``P_k u = rho u`` (continuous time:
``W*_k[x, y] = W_k[x, y] u(y) / u(x)``); its stationary law is ``u v`` (``v P_k = rho v``)
and along its typical trajectories ``A_T / T -> Lambda'(k)``. The derivatives come from
the eigenvectors, not finite differences: ``Lambda'(k)`` is the driven-stationary mean of
the observable and ``Lambda''(k)`` its asymptotic variance under the driven process, from
the Poisson equation ``(I - P*) phi = fbar - Lambda'`` (martingale decomposition):
``Lambda'' = E_{driven}[(f(x,y) - Lambda' + phi(y) - phi(x))^2]``.

Reducible chains: ``Lambda(k)`` is the largest Perron root over the classes reachable from
the initial law (transient classes included: a class one leaves can still dominate the
growth). Where the dominant class changes with ``k``, ``Lambda`` has a kink — a dynamical
phase transition — which :func:`scgf_curve` and :func:`tiltrl.ld.rate_function` report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from tiltrl._progress import progress_line
from tiltrl.exact.average import ConvergenceWarning, _kernel_evaluator, solve_controlled
from tiltrl.exact.graph import class_structure, reachable_from
from tiltrl.exact.newton import factorise_evaluation, newton_average
from tiltrl.exact.noda import noda_perron
from tiltrl.exact.tilted import LogKernel
from tiltrl.ld.chain import JumpProcess, MarkovChain
from tiltrl.ld.observable import jump_and_state_values, transition_values
from tiltrl.mdp import TabularMDP

__all__ = ["scgf", "scgf_curve", "ScgfCurve", "tilted", "TiltedProcess", "driven_process"]

Process = MarkovChain | JumpProcess


def _check_k(k: Any) -> float:
    try:
        kf = float(k)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"k must be a finite number, got {k!r}") from exc
    if not math.isfinite(kf):
        raise ValueError(f"k must be a finite number, got {k!r}")
    return kf


# ------------------------------------------------------------------ tilted kernels
@dataclass(frozen=True)
class _Pattern:
    """The tilted matrix of a process as ``log`` entries on a fixed sparsity pattern.

    ``log_entries(k)`` returns the log of every entry (aligned with ``indices``);
    ``to_scgf(log_rho, k)`` maps the Perron root of that matrix to ``Lambda(k)``.
    """

    indptr: np.ndarray
    indices: np.ndarray
    initial: np.ndarray
    log_entries: Callable[[float], np.ndarray]
    to_scgf: Callable[[float, float], float]
    continuous: bool


def _chain_pattern(chain: MarkovChain, f: Any) -> tuple[_Pattern, np.ndarray]:
    vals = transition_values(chain, f)
    log_p = np.log(chain.P.data)
    pattern = _Pattern(
        chain.P.indptr, chain.P.indices, chain.initial,
        lambda k: log_p + k * vals,
        lambda log_rho, k: log_rho,
        continuous=False,
    )
    return pattern, vals


def _uniformisation_rate(process: JumpProcess, h: np.ndarray, k: float) -> float:
    """``c`` with ``c - escape + k h >= c / 2 > 0`` on every state (aperiodic, positive)."""
    need = float(np.max(process.escape - k * h, initial=0.0))
    return max(2.0 * need, float(process.escape.max(initial=0.0)), 1e-300) or 1.0


def _jump_pattern(process: JumpProcess, f: Any) -> tuple[_Pattern, tuple[np.ndarray, np.ndarray]]:
    g, h = jump_and_state_values(process, f)
    S = process.n_states
    W = process.rates
    # pattern: the jumps plus the whole diagonal of the uniformised chain
    full = sp.csr_matrix(
        (np.concatenate([np.ones(W.nnz), np.full(S, 2.0)]),
         (np.concatenate([process.row_index, np.arange(S)]),
          np.concatenate([W.indices, np.arange(S)]))),
        shape=(S, S),
    )
    full.sort_indices()
    is_diag = full.data == 2.0
    rows = np.repeat(np.arange(S), np.diff(full.indptr))
    # map each jump to its slot in the full pattern
    key_full = rows * S + full.indices
    key_jump = process.row_index * S + W.indices
    slot = np.searchsorted(key_full, key_jump)
    log_w = np.log(W.data)
    esc = process.escape

    def log_entries(k: float) -> np.ndarray:
        c = _uniformisation_rate(process, h, k)
        out = np.empty(full.nnz)
        out[slot] = log_w - math.log(c) + k * g
        out[is_diag] = np.log((c - esc + k * h) / c)
        return out

    def to_scgf(log_rho: float, k: float) -> float:
        return _uniformisation_rate(process, h, k) * math.expm1(log_rho)

    pattern = _Pattern(full.indptr, full.indices, process.initial, log_entries, to_scgf, True)
    return pattern, (g, h)


def _pattern(process: Process, f: Any) -> tuple[_Pattern, Any]:
    if isinstance(process, MarkovChain):
        return _chain_pattern(process, f)
    if isinstance(process, JumpProcess):
        return _jump_pattern(process, f)
    raise TypeError(f"expected a MarkovChain or JumpProcess, got {type(process).__name__}")


# ------------------------------------------------------------------ Perron roots over k
@dataclass
class _ClassSolver:
    """Perron root of the tilted matrix restricted to one strongly connected class.

    Continuation in ``k``: the start of each solve is the polynomial extrapolation of the
    last (up to ``_EXTRAPOLATION_POINTS`` = 4) converged log eigenvectors — its error is
    ``O(dk^4)`` on a smooth branch — and the last LU is offered to Newton as a GMRES
    preconditioner, so a nearby ``k`` usually costs a few triangular solves instead of
    several factorisations.
    """

    states: np.ndarray  # the class (indices into the full state space)
    select: np.ndarray  # positions in the pattern of the edges inside the class
    indptr: np.ndarray
    cols: np.ndarray
    history: list[tuple[float, np.ndarray]] = field(default_factory=list)
    lu: Any = None

    def reset(self, history: list[tuple[float, np.ndarray]] | None = None) -> None:
        self.history = list(history or [])

    def _start(self, k: float) -> np.ndarray:
        if not self.history:
            return np.zeros(self.states.size)
        pts = self.history[-_EXTRAPOLATION_POINTS:]
        h = np.zeros(self.states.size)
        for i, (ki, hi) in enumerate(pts):  # Lagrange extrapolation through the points
            w = 1.0
            for j, (kj, _) in enumerate(pts):
                if j != i:
                    w *= (k - kj) / (ki - kj)
            h += w * hi
        return h

    def _best_start(self, k: float, evaluate: Any) -> tuple[np.ndarray, Any]:
        """The extrapolated start, the last solution or zero, whichever has the narrowest
        Collatz-Wielandt bracket (extrapolation misleads where the vector localises),
        with its evaluation."""
        start = self._start(k)
        if not self.history:
            return start, None
        first = evaluate(start)
        width = float(np.ptp(first[0] - start))
        if width < 1e-2:  # the usual case on a smooth branch: nothing to compare
            return start, first
        candidates = [start, self.history[-1][1], np.zeros(self.states.size)]
        evaluations = [first] + [evaluate(h) for h in candidates[1:]]
        widths = [float(np.ptp(ev[0] - h)) for ev, h in zip(evaluations, candidates, strict=True)]
        best = int(np.argmin(widths))
        return candidates[best], evaluations[best]

    def log_root(self, k: float, log_entries: np.ndarray, tol: float) -> tuple[float, bool]:
        logw = log_entries[self.select]
        if self.states.size == 1:
            return float(logw[0]), True
        kernel = LogKernel(self.indptr, self.cols, logw)
        evaluate = _kernel_evaluator(kernel, 1.0)
        h0, first = self._best_start(k, evaluate)
        # Newton (quadratic, cheap with preconditioned steps) from the extrapolated start;
        # where the Perron vector is ill-conditioned (tiny spectral gap, localised
        # eigenvectors) its linearised step overshoots, and the monotone Noda iteration
        # takes over until Newton's local regime, then Newton finishes
        res = newton_average(evaluate, h0, ref=0, beta=1.0, tol=tol, max_iter=_NEWTON_TRIES,
                             lu0=self.lu, max_blowups=2, first=first)
        if not res.converged:
            res = noda_perron(kernel, h0, tol=max(tol, _NODA_HANDOVER), max_iter=_NODA_MAX)
            res = self._polish(evaluate, kernel, res, tol)
        if res.converged:
            if self.history and abs(self.history[-1][0] - k) < 1e-300:
                self.history.pop()
            self.history = [*self.history[1 - _EXTRAPOLATION_POINTS:], (k, res.h)]
            self.lu = res.lu
        return float(res.theta), bool(res.converged)

    @staticmethod
    def _polish(evaluate: Any, kernel: LogKernel, res: Any, tol: float) -> Any:
        if res.converged and res.residual < tol:
            return res
        newton = newton_average(evaluate, res.h, ref=0, beta=1.0, tol=tol,
                                max_iter=_NEWTON_TRIES, max_blowups=2)
        if newton.converged:
            newton.iterations += res.iterations
            return newton
        # Newton still overshoots: let Noda go all the way
        return noda_perron(kernel, res.h, tol=tol, max_iter=_NODA_MAX)


#: converged log eigenvectors the start of the next k is extrapolated from
_EXTRAPOLATION_POINTS = 4

#: Newton iterations (preconditioned steps included) before falling back to Noda; a run that
#: overshoots is stopped much earlier by its overflowing residual (``max_blowups``)
_NEWTON_TRIES = 60
#: Noda runs until this relative residual, then hands over to Newton (whose basin is
#: tiny where the Perron vector is ill-conditioned)
_NODA_HANDOVER = 1e-8
_NODA_MAX = 500


class _PerronFamily:
    """``log rho(P_k)`` for many ``k``: the class structure is computed once (it does
    not depend on ``k``) and every class is warm-started from the previous ``k``."""

    def __init__(self, pattern: _Pattern) -> None:
        self.pattern = pattern
        n = pattern.indptr.size - 1
        adj = sp.csr_matrix(
            (np.ones(pattern.indices.size, dtype=np.int8), pattern.indices, pattern.indptr),
            shape=(n, n),
        )
        reach = reachable_from(adj, pattern.initial > 0)
        nodes = np.flatnonzero(reach)
        cs = class_structure(adj, nodes)
        rows = np.repeat(np.arange(n), np.diff(pattern.indptr))
        label = np.full(n, -1)
        label[nodes] = cs.labels
        self.classes: list[_ClassSolver] = []
        for c in np.flatnonzero(cs.nontrivial):
            states = nodes[cs.labels == c]
            inside = (label[rows] == c) & (label[pattern.indices] == c)
            select = np.flatnonzero(inside)
            new_index = np.full(n, -1)
            new_index[states] = np.arange(states.size)
            indptr = np.zeros(states.size + 1, dtype=np.int64)
            np.cumsum(np.bincount(new_index[rows[select]], minlength=states.size),
                      out=indptr[1:])
            self.classes.append(
                _ClassSolver(states, select, indptr, new_index[pattern.indices[select]])
            )

    def evaluate(self, k: float, tol: float) -> tuple[float, int, list[float], bool]:
        """``(Lambda(k), dominant class, per-class Lambda, converged)``."""
        log_entries = self.pattern.log_entries(k)
        roots, ok = [], True
        for cls in self.classes:
            root, conv = cls.log_root(k, log_entries, tol)
            if not conv:
                root, conv = self._continuation(cls, k, tol)
            ok &= conv
            roots.append(self.pattern.to_scgf(root, k))
        best = int(np.argmax(roots))
        return roots[best], best, roots, ok

    def _continuation(self, cls: _ClassSolver, k: float, tol: float) -> tuple[float, bool]:
        """Newton from the last start failed: walk ``k`` out from 0 in doubling steps."""
        cls.reset()
        cls.lu = None
        root, conv = 0.0, False
        for frac in (0.125, 0.25, 0.5, 0.75, 1.0):
            root, conv = cls.log_root(frac * k, self.pattern.log_entries(frac * k), tol)
        return root, conv


def _continuation_order(ks: np.ndarray) -> np.ndarray:
    """Solve outwards from the ``k`` nearest 0 (where ``h = 0`` is exact), both ways."""
    start = int(np.argmin(np.abs(ks)))
    order = np.argsort(ks, kind="stable")
    pos = int(np.flatnonzero(order == start)[0])
    return np.concatenate([order[pos::-1], order[pos + 1:]])


@dataclass(frozen=True)
class ScgfCurve:
    """``Lambda`` on a grid of ``k`` with the dominant class at each ``k``.

    ``transitions`` lists the ``(k_left, k_right)`` grid intervals in which the dominant
    class changes: ``Lambda`` has a kink (a dynamical phase transition) inside each.
    """

    k: np.ndarray
    scgf: np.ndarray
    dominant_class: np.ndarray
    class_scgf: np.ndarray  # (n_k, n_classes)
    class_states: tuple[np.ndarray, ...]
    converged: np.ndarray
    transitions: tuple[tuple[float, float], ...] = field(default=())


def scgf_curve(
    process: Process, f: Any, k: Any, *, tol: float = 1e-12, progress: bool = False
) -> ScgfCurve:
    """:func:`scgf` with per-class detail: dominant class and kinks between grid points."""
    ks = np.atleast_1d(np.asarray(k, dtype=np.float64)).ravel()
    for kv in ks:
        _check_k(kv)
    pattern, _ = _pattern(process, f)
    family = _PerronFamily(pattern)
    values = np.empty(ks.size)
    dom = np.empty(ks.size, dtype=np.int64)
    per_class = np.empty((ks.size, len(family.classes)))
    conv = np.empty(ks.size, dtype=bool)
    order = _continuation_order(ks)
    first: list[list[tuple[float, np.ndarray]]] = []
    for n, i in enumerate(order):
        if n > 0 and ks[i] > ks[order[0]] and ks[order[n - 1]] < ks[order[0]]:
            # turning from the branch below the first k to the one above: restart there
            for c, hist in zip(family.classes, first, strict=True):
                c.reset(hist)
        values[i], dom[i], roots, conv[i] = family.evaluate(float(ks[i]), tol)
        per_class[i] = roots
        if n == 0:
            first = [list(c.history) for c in family.classes]
        if progress:
            progress_line(n + 1, ks.size, f"k={ks[i]:g} Lambda={values[i]:.6g}")
    srt = np.argsort(ks, kind="stable")
    transitions = tuple(
        (float(ks[a]), float(ks[b]))
        for a, b in zip(srt[:-1], srt[1:], strict=True)
        if dom[a] != dom[b]
        and not (
            np.isclose(per_class[a, dom[a]], per_class[a, dom[b]], rtol=1e-12, atol=1e-14)
            and np.isclose(per_class[b, dom[a]], per_class[b, dom[b]], rtol=1e-12, atol=1e-14)
        )
    )
    return ScgfCurve(
        k=ks, scgf=values, dominant_class=dom, class_scgf=per_class,
        class_states=tuple(c.states for c in family.classes), converged=conv,
        transitions=transitions,
    )


def scgf(
    process: Process, f: Any, k: Any, *, tol: float = 1e-12, progress: bool = False
) -> Any:
    """Scaled cumulant generating function ``Lambda(k)`` of an additive observable.

    Parameters
    ----------
    process
        A :class:`MarkovChain` (discrete time) or :class:`JumpProcess` (continuous time).
    f
        The observable (see :mod:`tiltrl.ld.observable`): ``(S,)`` state observable,
        ``(S, S)`` dense or sparse transition observable, or a callable ``f(x, y)``; for a
        jump process ``(S,)`` is time-integrated and a pair ``(g, h)`` gives both parts.
    k
        A scalar or an array. Arrays are solved outwards from the ``k`` nearest zero, each
        value warm-started from its neighbour.
    tol
        Relative eigen-residual of each Perron root.

    Returns
    -------
    float or ndarray
        ``Lambda(k)`` with the shape of ``k``. Use :func:`tilted` for ``Lambda'``,
        ``Lambda''``, the eigenvectors and the driven process, and :func:`scgf_curve` to see
        which class dominates at each ``k``.
    """
    curve = scgf_curve(process, f, k, tol=tol, progress=progress)
    if not curve.converged.all():
        bad = curve.k[~curve.converged]
        warnings.warn(f"SCGF not converged to tol={tol:g} at k = {bad.tolist()}",
                      ConvergenceWarning, stacklevel=2)
    if np.ndim(k) == 0:
        return float(curve.scgf[0])
    return curve.scgf.reshape(np.shape(k))


# ------------------------------------------------------------------ the tilted process
@dataclass(frozen=True)
class TiltedProcess:
    """Everything about the tilted process at one ``k``.

    Attributes
    ----------
    k, scgf
        The tilt and ``Lambda(k)``.
    mean, variance
        ``Lambda'(k)`` and ``Lambda''(k)``, from the eigenvectors (the driven process's
        stationary mean and asymptotic variance of the observable).
    log_right, log_left
        ``log u`` and ``log v`` of the tilted matrix (discrete time; the uniformised
        matrix in continuous time — same vectors), ``-inf`` off their support;
        normalised ``sum v = 1``, ``sum u v = 1``.
    stationary
        Stationary law of the driven process, ``u v``.
    driven
        The driven (Doob-transformed) process, a :class:`MarkovChain` or
        :class:`JumpProcess` that can be sampled.
    recurrent_states
        The dominant class.
    notes
        Anything the solver wants you to know (reducibility, degeneracy, convergence).
    """

    k: float
    scgf: float
    mean: float
    variance: float
    log_right: np.ndarray
    log_left: np.ndarray
    stationary: np.ndarray
    driven: Process
    recurrent_states: np.ndarray
    converged: bool
    notes: tuple[str, ...] = ()


def tilted(process: Process, f: Any, k: float, *, tol: float = 1e-12) -> TiltedProcess:
    """Solve the tilted problem at one ``k``: ``Lambda``, ``Lambda'``, ``Lambda''``, the
    eigenvectors and the driven process (see the module docstring for the formulas)."""
    k = _check_k(k)
    pattern, obs = _pattern(process, f)
    S = pattern.indptr.size - 1
    # the tilted matrix as a one-action MDP at beta = 1: P_k = Pbar exp(reward), where
    # Pbar is the row-normalised pattern matrix and reward absorbs the rest
    log_entries = pattern.log_entries(k)
    rows = np.repeat(np.arange(S), np.diff(pattern.indptr))
    row_max = np.maximum.reduceat(log_entries, pattern.indptr[:-1])
    weights = np.exp(log_entries - row_max[rows])
    row_sum = np.bincount(rows, weights=weights, minlength=S)
    pbar = weights / row_sum[rows]
    reward = log_entries - np.log(pbar)
    Pbar = sp.csr_matrix((pbar, pattern.indices, pattern.indptr), shape=(S, S))
    mdp = TabularMDP(
        Pbar, sp.csr_matrix((reward, pattern.indices, pattern.indptr), shape=(S, S)),
        initial=pattern.initial,
    )
    sol = solve_controlled(mdp, 1.0, tol=tol)
    lam = pattern.to_scgf(sol.log_rho, k)
    assert sol.stationary is not None and sol.log_u is not None and sol.log_left is not None
    driven_P = sp.csr_matrix(sol.driven_dynamics)
    mu = np.asarray(sol.stationary[:, 0])
    rec = np.asarray(sol.recurrent_states)
    log_right = np.asarray(sol.log_u[:, 0])
    log_left = np.asarray(sol.log_left[:, 0])
    driven: Process
    if pattern.continuous:
        assert isinstance(process, JumpProcess)
        g, h = obs
        mean, variance, driven = _jump_moments(process, g, h, k, sol.log_rho, driven_P, mu, rec)
    else:
        assert isinstance(process, MarkovChain)
        mean, variance = _chain_moments(driven_P, obs, mu, rec)
        driven = MarkovChain(driven_P, process.initial)
    return TiltedProcess(
        k=k, scgf=float(lam), mean=mean, variance=variance, log_right=log_right,
        log_left=log_left, stationary=mu, driven=driven, recurrent_states=rec,
        converged=sol.converged, notes=sol.notes,
    )


def driven_process(process: Process, f: Any, k: float, *, tol: float = 1e-12) -> Process:
    """The generalised Doob transform at ``k`` (see :func:`tilted`), ready to sample."""
    return tilted(process, f, k, tol=tol).driven


def _poisson(
    K: sp.csr_matrix, rhs: np.ndarray, rec: np.ndarray
) -> tuple[np.ndarray, float]:
    """Solve ``(I - K) phi + m = rhs`` on the class ``rec`` with ``phi[rec[0]] = 0``."""
    sub = sp.csr_matrix(K[rec][:, rec]).tocoo()
    x = factorise_evaluation((sub.row, sub.col, sub.data), rec.size, 0).solve(rhs[rec])
    m = float(x[0])
    phi = x.copy()
    phi[0] = 0.0
    full = np.zeros(K.shape[0])
    full[rec] = phi
    return full, m


def _chain_moments(
    driven: sp.csr_matrix, vals: np.ndarray, mu: np.ndarray, rec: np.ndarray
) -> tuple[float, float]:
    rows = np.repeat(np.arange(driven.shape[0]), np.diff(driven.indptr))
    # driven_dynamics keeps P's pattern, so the observable values stay aligned
    fbar = np.bincount(rows, weights=driven.data * vals, minlength=driven.shape[0])
    mean = float(mu @ fbar)
    if rec.size == 1:
        dev = vals - mean
        return mean, float(np.sum(mu[rows] * driven.data * dev**2))
    phi, _ = _poisson(driven, fbar, rec)
    incr = vals - mean + phi[driven.indices] - phi[rows]
    return mean, float(np.sum(mu[rows] * driven.data * incr**2))


def _jump_moments(
    process: JumpProcess, g: np.ndarray, h: np.ndarray, k: float, log_rho: float,
    driven_P: sp.csr_matrix, mu: np.ndarray, rec: np.ndarray,
) -> tuple[float, float, JumpProcess]:
    S = process.n_states
    c = _uniformisation_rate(process, h, k)
    scale = c * math.exp(log_rho)  # G* = c rho (P* - I)
    rows = np.repeat(np.arange(S), np.diff(driven_P.indptr))
    off = rows != driven_P.indices
    W_star = sp.csr_matrix(
        (scale * driven_P.data[off], (rows[off], driven_P.indices[off])), shape=(S, S)
    )
    W_star.sort_indices()
    # g on the driven pattern (= the jump pattern of the process)
    g_star = np.asarray(
        sp.csr_matrix((g, process.rates.indices, process.rates.indptr), shape=(S, S))[
            np.repeat(np.arange(S), np.diff(W_star.indptr)), W_star.indices
        ]
    ).ravel()
    w_rows = np.repeat(np.arange(S), np.diff(W_star.indptr))
    F = np.bincount(w_rows, weights=W_star.data * g_star, minlength=S) + h
    mean = float(mu @ F)
    if rec.size == 1:
        return mean, 0.0, JumpProcess(W_star, process.initial)
    phi, _ = _poisson(driven_P, F / scale, rec)
    incr = g_star + phi[W_star.indices] - phi[w_rows]
    variance = float(np.sum(mu[w_rows] * W_star.data * incr**2))
    return mean, variance, JumpProcess(W_star, process.initial)
