"""Cloning (population dynamics) estimates of scaled cumulant generating functions.

The SCGF ``Lambda(k) = lim (1/T) log E[exp(k A_T)]`` of an additive observable is the
log growth rate of a population whose members move with the chain and multiply by their
weights. A population of ``N`` clones is propagated; at every selection step each clone
receives a weight ``w_i`` and the next population is drawn with *each clone's expected
number of offspring equal to* ``w_i / mean(w)`` (branching by weight, at constant
population: clones are copied as well as removed, so observables of either sign work).
The estimator is the log growth of the population::

    Lambda(k) ~ (1 / (T dt)) * sum_t log(mean_i w_i(t))

(``dt = 1`` in discrete time). Its systematic error falls roughly as ``1/N`` (and as
``1/T`` from the initial transient); :func:`extrapolate` fits
``Lambda(N) = Lambda_inf + a / N`` by weighted least squares over several populations.

Discrete time (``MarkovChain``, ``A_T = sum_t f(x_t, x_{t+1})``), two proposals:

- ``proposal="prior"`` (default): clones move with ``P`` and a move ``x -> y`` has weight
  ``exp(k f(x, y))``.
- ``proposal="tilted"``: the original form of Giardinà, Kurchan and Peliti: clones move
  with the normalised tilted matrix ``P_k[x, y] / B_k(x)``, ``P_k = P exp(k f)``, and a
  clone at ``x`` has weight ``B_k(x) = sum_y P_k[x, y]``. Same SCGF, lower variance; it
  is *exact* (zero variance) when ``B_k`` is constant, e.g. for the current on a
  homogeneous ring, where it tests nothing.

Continuous time (``JumpProcess``, ``A_T = sum_jumps g(x, y) + int_0^T h(X_t) dt``): clones
follow their own exponential clocks exactly (vectorised Gillespie, no time
discretisation), and the population is resampled every ``interval`` time units from the
weights accumulated during that interval:

- ``proposal="prior"``: clones jump with the rates ``W``; weight ``exp(k g(x, y))`` per
  jump times ``exp(k int h dt)``.
- ``proposal="tilted"``: the split of Lecomte and Tailleur: clones jump with the modified
  rates ``W_k = W exp(k g)``, and the weight is ``exp(int delta(X_t) dt)`` with the cloning
  rate ``delta(x) = sum_y W_k[x, y] - sum_y W[x, y] + k h(x)``.

Independent runs are vectorised together (a ``(runs, population)`` array), each run has
its own population and its own resampling; ``stderr`` is the standard error of the mean of
the per-run estimates. Everything is seeded: the same ``seed`` gives identical results.

References
----------
- C. Giardinà, J. Kurchan, L. Peliti, "Direct evaluation of large-deviation functions",
  Phys. Rev. Lett. 96, 120603 (2006).
- V. Lecomte, J. Tailleur, "A numerical approach to large deviations in continuous
  time", J. Stat. Mech. P03004 (2007).
- T. Nemoto, F. Bouchet, R. L. Jack, V. Lecomte, "Population-dynamics method with a
  multicanonical feedback control", Phys. Rev. E 93, 062123 (2016) (finite-population
  ``1/N`` scaling and its extrapolation).
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from tiltrl.exact.result import _JsonMixin
from tiltrl.ld.chain import JumpProcess, MarkovChain
from tiltrl.ld.observable import jump_and_state_values, transition_values

__all__ = ["CloningResult", "Extrapolation", "cloning", "cloning_extrapolate", "extrapolate"]

PROPOSALS = ("prior", "tilted")
RESAMPLING = ("systematic", "multinomial")


# --------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class CloningResult(_JsonMixin):
    """Cloning estimate of ``Lambda(k)``.

    For a scalar ``k`` the fields ``estimate``/``stderr`` are floats and ``runs`` has
    shape ``(n_runs,)``; for an array ``k`` they carry the shape of ``k`` in front
    (``runs``: ``k.shape + (n_runs,)``).

    Attributes
    ----------
    k : float or ndarray
        Tilt(s).
    estimate : float or ndarray
        ``Lambda(k)``: mean of the per-run estimates.
    stderr : float or ndarray
        Standard error of ``estimate`` from the spread of the independent runs
        (``std(runs, ddof=1) / sqrt(n_runs)``; NaN for a single run). It does not contain
        the ``O(1/population)`` bias (see :func:`extrapolate`).
    runs : ndarray
        Per-run estimates.
    population : int
        Clones per run.
    steps : int
        Selection steps measured per run (after ``warmup_steps``).
    time_step : float
        Time between selections: 1 in discrete time, ``interval`` in continuous time.
    duration : float
        Measured time per run, ``steps * time_step``.
    warmup_steps : int
        Selection steps discarded before measuring.
    clock : str
        ``"discrete"`` or ``"continuous"`` time.
    proposal, resampling : str
        The scheme used (see the module docstring).
    seed, spawn_key
        Entropy and spawn key of the ``numpy.random.SeedSequence`` used:
        ``seed=numpy.random.SeedSequence(seed, spawn_key=spawn_key)`` reproduces the run.
    elapsed : float
        Wall time in seconds.
    drift : float or ndarray
        Transient check: (estimate from the second half of the measured steps) minus
        (from the first half), in standard errors over runs. ``|drift| > 3`` says the
        initial transient has not died out: ``estimate`` carries an ``O(1 / steps)``
        bias that ``stderr`` does not show; raise ``warmup``/``steps``. NaN with one run
        or one step.
    series : ndarray or None
        Log growth ``log mean_i w_i`` at each measured selection step, shape
        ``(n_runs, steps)`` (``k.shape`` in front for an array ``k``); ``None`` when not
        kept. ``runs = series.sum(-1) / duration``.
    """

    k: Any
    estimate: Any
    stderr: Any
    runs: np.ndarray
    population: int
    steps: int
    time_step: float
    duration: float
    warmup_steps: int
    clock: str
    proposal: str
    resampling: str
    seed: Any
    spawn_key: tuple[int, ...]
    elapsed: float
    drift: Any = math.nan
    series: np.ndarray | None = None

    @property
    def n_runs(self) -> int:
        return int(np.shape(self.runs)[-1])

    @property
    def relative_stderr(self) -> Any:
        return np.abs(np.asarray(self.stderr) / np.asarray(self.estimate))[()]

    def save(self, path: Any) -> None:
        """Write :meth:`to_json` to ``path`` (read back with ``CloningResult.from_json``)."""
        self.to_json(path)

    def summary(self) -> str:
        ks = np.atleast_1d(np.asarray(self.k, dtype=np.float64))
        est = np.atleast_1d(np.asarray(self.estimate, dtype=np.float64))
        err = np.atleast_1d(np.asarray(self.stderr, dtype=np.float64))
        head = (
            f"cloning ({self.clock} time, {self.proposal} proposal, {self.resampling} "
            f"resampling): N={self.population}, {self.n_runs} runs x {self.steps} steps "
            f"(dt={self.time_step:g}), {self.elapsed:.2f} s"
        )
        drift = np.broadcast_to(np.asarray(self.drift, dtype=np.float64), est.shape)
        rows = [
            f"  Lambda({k:+.4g}) = {e:.6g} +- {s:.2g}"
            + (f"  (drift {d:+.1f} stderr: transient not over)" if abs(d) > 3 else "")
            for k, e, s, d in zip(ks, est, err, drift, strict=True)
        ]
        return "\n".join([head, *rows])

    def __repr__(self) -> str:
        return (
            f"CloningResult(k={self.k!r}, estimate={self.estimate!r}, stderr={self.stderr!r}, "
            f"population={self.population}, steps={self.steps}, runs={self.n_runs})"
        )


@dataclass(frozen=True, eq=False)
class Extrapolation(_JsonMixin):
    """Fit ``Lambda(N) = estimate + slope / N`` over several populations.

    ``estimate`` is the ``N -> infinity`` value and ``stderr`` its standard error from the
    weighted least-squares covariance, inflated by ``sqrt(chi2 / dof)`` when that exceeds
    one (the Birge ratio: the ``1/N`` law does not describe the data within their errors).
    Array ``k`` gives arrays (shape of ``k``) in every per-``k`` field; ``estimates`` and
    ``stderrs`` have the populations on the last axis.
    """

    k: Any
    estimate: Any
    stderr: Any
    slope: Any
    slope_stderr: Any
    chi2: Any
    dof: int
    populations: np.ndarray
    estimates: np.ndarray
    stderrs: np.ndarray
    elapsed: float

    def summary(self) -> str:
        ks = np.atleast_1d(np.asarray(self.k, dtype=np.float64))
        est = np.atleast_1d(np.asarray(self.estimate, dtype=np.float64))
        err = np.atleast_1d(np.asarray(self.stderr, dtype=np.float64))
        head = f"1/N extrapolation over N = {', '.join(str(int(n)) for n in self.populations)}"
        rows = [
            f"  Lambda({k:+.4g}) = {e:.6g} +- {s:.2g}"
            for k, e, s in zip(ks, est, err, strict=True)
        ]
        return "\n".join([head, *rows])


# --------------------------------------------------------------------------- validation
def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value}")
    return int(value)


def _check_positive(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a positive number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite positive number, got {value!r}")
    return v


def _check_k(k: Any) -> np.ndarray:
    try:
        arr = np.asarray(k, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"k must be a real number or an array of them, got {k!r}") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        if arr.ndim == 0:
            raise ValueError(f"k must be finite, got {float(arr)!r}")
        i = tuple(int(j) for j in np.argwhere(bad)[0])
        raise ValueError(f"k must be finite, got k[{', '.join(map(str, i))}] = {float(arr[i])!r}")
    if arr.size == 0:
        raise ValueError("k is empty")
    return arr


def _check_choice(value: str, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _seed_sequence(seed: Any) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, np.random.Generator):
        raise TypeError("pass an integer seed (or a SeedSequence), not a Generator")
    return np.random.SeedSequence(seed)


# --------------------------------------------------------------------------- sampling
class _PatternSampler:
    """Draws one stored entry per row of a CSR pattern with probability ∝ its weight.

    Rows of at most ``ALIAS_WIDTH`` entries use Walker alias tables (built for all rows at
    once, vectorised Vose), so a draw costs one uniform number and a few gathers whatever
    the row. Wider patterns lay all rows' normalised running sums end to end as
    ``row + cumsum`` (one non-decreasing array) and use one ``searchsorted`` for every
    clone; the resolution of a probability is then ``~ 2e-16 * n_states``. Rows with zero
    total weight are never drawn from (the caller keeps such clones in place).
    """

    ALIAS_WIDTH = 32
    ALIAS_CELLS = 2_000_000  # 24 bytes a cell: at most ~50 MB of tables

    def __init__(
        self, indptr: np.ndarray, weights: np.ndarray, alias: bool | None = None
    ) -> None:
        S = len(indptr) - 1
        lengths = np.diff(indptr)
        rows = np.repeat(np.arange(S), lengths)
        weights = np.asarray(weights, dtype=np.float64)
        total = np.zeros(S)
        np.add.at(total, rows, weights)
        self.total = total
        K = int(lengths.max(initial=1))
        self.width = K
        self.alias: np.ndarray | None = None
        if alias is None:
            alias = K <= self.ALIAS_WIDTH and S * K <= self.ALIAS_CELLS
        if alias:
            self._build_alias(indptr, weights, rows, lengths, total)
        else:
            c = np.cumsum(weights)
            start = np.concatenate([[0.0], c])[indptr[:-1]]
            within = c - start[rows]
            norm = np.where(total > 0, total, 1.0)
            within = within / norm[rows]
            nonempty = lengths > 0
            within[indptr[1:][nonempty] - 1] = 1.0
            self.keys = within + rows

    def _build_alias(
        self, indptr: np.ndarray, weights: np.ndarray, rows: np.ndarray,
        lengths: np.ndarray, total: np.ndarray,
    ) -> None:
        S, K = len(lengths), self.width
        slot = np.arange(rows.size) - indptr[rows]
        q = np.zeros((S, K))
        norm = np.where(total > 0, total, 1.0)
        q[rows, slot] = weights / norm[rows] * K
        real = np.zeros((S, K), dtype=bool)
        real[rows, slot] = True
        entry = np.zeros((S, K), dtype=np.int64)
        entry[rows, slot] = np.arange(rows.size)
        prob = np.ones((S, K))
        alias = np.tile(np.arange(K), (S, 1))
        done = np.zeros((S, K), dtype=bool)
        every = np.arange(S)
        for _ in range(K):
            small = ~done & (q < 1.0)
            large = ~done & (q >= 1.0)
            ok = small.any(axis=1) & large.any(axis=1)
            if not ok.any():
                break
            r = every[ok]
            i = np.argmax(small[r], axis=1)
            j = np.argmax(large[r], axis=1)
            prob[r, i] = q[r, i]
            alias[r, i] = j
            q[r, j] -= 1.0 - q[r, i]
            done[r, i] = True
        # leftovers are round-off (probability one), except padding, which must never win
        best = np.argmax(np.where(real, q, -np.inf), axis=1)
        pad = ~done & ~real
        prob[pad] = 0.0
        alias[pad] = np.broadcast_to(best[:, None], (S, K))[pad]
        self.prob = prob.ravel()
        # [alias targets | own entries]: picked by index arithmetic, not a branchy where
        self.alias = np.concatenate([entry[every[:, None], alias].ravel(), entry.ravel()])

    def draw(self, x: np.ndarray, rng: np.random.Generator, work: _Work) -> np.ndarray:
        """Position (into the CSR data) of one drawn entry in each row ``x``.

        The answer is a view into ``work`` (valid until the next draw).
        """
        n = x.size
        u = work.u[:n]
        rng.random(out=u)
        if self.alias is None:
            np.add(u, x, out=u)
            pos = work.pos[:n]
            pos[:] = np.searchsorted(self.keys, u, side="right")
            return pos
        # preallocated buffers throughout: fresh large temporaries each step cost more
        # in page faults than the arithmetic itself
        col, cell, keep, p = work.i1[:n], work.i2[:n], work.keep[:n], work.f[:n]
        np.multiply(u, self.width, out=u)
        np.copyto(col, u, casting="unsafe")  # floor (u >= 0)
        np.subtract(u, col, out=u)
        np.multiply(x, self.width, out=cell)
        np.add(cell, col, out=cell)
        np.take(self.prob, cell, out=p)
        np.less(u, p, out=keep)
        np.multiply(keep, self.prob.size, out=col)
        np.add(cell, col, out=cell)
        pos = work.pos[:n]
        np.take(self.alias, cell, out=pos)
        return pos


class _Work:
    """Reusable per-clone buffers of the hot loop (one allocation per run)."""

    def __init__(self, R: int, N: int) -> None:
        M = R * N
        self.u = np.empty(M)
        self.f = np.empty(M)
        self.i1 = np.empty(M, dtype=np.int64)
        self.i2 = np.empty(M, dtype=np.int64)
        self.pos = np.empty(M, dtype=np.int64)
        self.keep = np.empty(M, dtype=bool)
        self.c = np.empty((R, N))
        self.counts = np.empty((R, N), dtype=np.int64)
        self.flat = np.arange(M)


def _select(
    logw: np.ndarray, rng: np.random.Generator, scheme: str, work: _Work | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Resample each row of ``logw`` ``(R, N)`` by its weights.

    Returns the log mean weight per row ``(R,)`` and the flat parent index of every new
    clone ``(R * N,)``; each clone's expected number of offspring is ``w_i / mean(w)``.
    Systematic: one uniform ``U`` per row, clone ``i`` gets
    ``ceil(N C_i - U) - ceil(N C_{i-1} - U)`` offspring (``C`` = normalised running sum).
    Multinomial: ``N`` independent draws.
    """
    R, N = logw.shape
    if work is None:
        work = _Work(R, N)
    c, counts = work.c, work.counts
    top = logw.max(axis=1)
    np.subtract(logw, top[:, None], out=c)
    np.exp(c, out=c)
    np.cumsum(c, axis=1, out=c)
    total = c[:, -1].copy()
    log_mean = top + np.log(total / N)
    c *= (N / total)[:, None]
    if scheme == "systematic":
        c -= rng.random((R, 1))
        np.ceil(c, out=c)
        np.clip(c, 0, N, out=c)
        c[:, -1] = N
        np.copyto(counts, c, casting="unsafe")
        # offspring numbers: differences of the cumulative counts, last column first
        np.subtract(counts[:, 1:], counts[:, :-1], out=c[:, 1:], casting="unsafe")
        np.copyto(counts[:, 1:], c[:, 1:], casting="unsafe")
        offspring = counts
    else:
        c[:, 1:] -= c[:, :-1].copy()
        offspring = rng.multinomial(N, c / N)
    return log_mean, np.repeat(work.flat, offspring.ravel())


class _Progress:
    """A minimal progress bar on stderr (throttled to ~10 updates per second)."""

    def __init__(self, total: int, enabled: bool, label: str, stream: TextIO | None = None):
        self.total = max(total, 1)
        self.enabled = enabled
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.done = 0
        self.start = time.monotonic()
        self.last = -1.0

    def update(self, n: int = 1, note: str = "") -> None:
        if not self.enabled:
            return
        self.done += n
        now = time.monotonic()
        if now - self.last < 0.1 and self.done < self.total:
            return
        self.last = now
        frac = self.done / self.total
        width = 30
        filled = int(round(width * frac))
        elapsed = now - self.start
        eta = elapsed * (1 - frac) / frac if frac > 0 else float("nan")
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {100 * frac:5.1f}% "
            f"{elapsed:6.1f} s, eta {eta:6.1f} s {note}"
        )
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


# --------------------------------------------------------------------------- kernels
def _discrete_kernel(
    chain: MarkovChain, fvals: np.ndarray, k: float, proposal: str
) -> tuple[_PatternSampler, np.ndarray]:
    """Sampler of moves and the log weight of each stored entry of ``P``."""
    P = chain.P
    if proposal == "prior":
        return _PatternSampler(P.indptr, P.data), k * fvals
    # tilted: move with P_k / B_k, weight B_k(x); log-space row sums
    rows = chain.row_index
    a = k * fvals
    top = np.maximum.reduceat(a, P.indptr[:-1])
    shifted = P.data * np.exp(a - top[rows])
    sums = np.add.reduceat(shifted, P.indptr[:-1])
    log_b = top + np.log(sums)
    return _PatternSampler(P.indptr, shifted), log_b[rows]


def _continuous_kernel(
    process: JumpProcess, g: np.ndarray, h: np.ndarray, k: float, proposal: str
) -> tuple[_PatternSampler, np.ndarray, np.ndarray, np.ndarray]:
    """Sampler of jumps, out-rate per state, log weight per jump, log-weight rate per state."""
    W = process.rates
    S = process.n_states
    if proposal == "prior":
        rates = np.asarray(W.data, dtype=np.float64)
        jump_lw = k * g
        rate_lw = k * h
    else:
        with np.errstate(over="ignore"):
            rates = W.data * np.exp(k * g)
        if not np.all(np.isfinite(rates)):
            i = int(np.flatnonzero(~np.isfinite(rates))[0])
            raise ValueError(
                f"tilted rate W[{int(process.row_index[i])}, {int(W.indices[i])}] "
                f"exp(k g) overflows at k={k}; use proposal='prior'"
            )
        jump_lw = np.zeros_like(rates)
        rate_lw = None
    out = np.zeros(S)
    np.add.at(out, process.row_index, rates)
    if rate_lw is None:
        rate_lw = out - process.escape + k * h
    return _PatternSampler(W.indptr, rates), out, jump_lw, rate_lw


# --------------------------------------------------------------------------- engines
def _run_discrete(
    chain: MarkovChain,
    sampler: _PatternSampler,
    move_lw: np.ndarray,
    R: int,
    N: int,
    warmup: int,
    steps: int,
    ss: np.random.SeedSequence,
    resampling: str,
    bar: _Progress,
) -> np.ndarray:
    rng = np.random.default_rng(ss)
    targets = chain.P.indices.astype(np.int64)
    x = rng.choice(chain.n_states, size=R * N, p=chain.initial).astype(np.int64)
    work = _Work(R, N)
    logw = np.empty(R * N)
    y = np.empty(R * N, dtype=np.int64)
    series = np.empty((R, steps))
    for t in range(warmup + steps):
        pos = sampler.draw(x, rng, work)
        np.take(move_lw, pos, out=logw)
        np.take(targets, pos, out=y)
        log_mean, parent = _select(logw.reshape(R, N), rng, resampling, work)
        np.take(y, parent, out=x)
        if t >= warmup:
            series[:, t - warmup] = log_mean
        bar.update()
    return series


def _run_continuous(
    process: JumpProcess,
    kernel: tuple[_PatternSampler, np.ndarray, np.ndarray, np.ndarray],
    interval: float,
    R: int,
    N: int,
    warmup: int,
    steps: int,
    ss: np.random.SeedSequence,
    resampling: str,
    bar: _Progress,
) -> np.ndarray:
    sampler, out_rate, jump_lw, rate_lw = kernel
    rng = np.random.default_rng(ss)
    targets = process.rates.indices.astype(np.int64)
    M = R * N
    x = rng.choice(process.n_states, size=M, p=process.initial).astype(np.int64)
    series = np.empty((R, steps))
    with np.errstate(divide="ignore"):
        mean_sojourn = 1.0 / out_rate  # inf in states without exits: they stay put
    work = _Work(R, N)
    logw = np.empty(M)
    remaining = np.empty(M)
    sojourn = np.empty(M)
    dt = np.empty(M)
    for t in range(warmup + steps):
        logw.fill(0.0)
        remaining.fill(interval)
        active: np.ndarray | None = None  # None: every clone (no gather needed)
        n = M
        while n:
            xa = x if active is None else x[active]
            soj = sojourn[:n]
            rng.standard_exponential(out=soj)
            soj *= mean_sojourn[xa]
            rem = remaining if active is None else remaining[active]
            jumps = soj < rem
            step = dt[:n]
            np.fmin(soj, rem, out=step)  # fmin: a 0 * inf NaN counts as "no jump"
            step *= rate_lw[xa]
            if active is None:
                logw += step
                movers = np.flatnonzero(jumps)
            else:
                logw[active] += step
                movers = active[jumps]
            n = movers.size
            if n:
                pos = sampler.draw(x[movers], rng, work)
                logw[movers] += jump_lw[pos]
                x[movers] = targets[pos]
                remaining[movers] = rem[jumps] - soj[jumps]
            active = movers
        log_mean, parent = _select(logw.reshape(R, N), rng, resampling, work)
        x = x[parent]
        if t >= warmup:
            series[:, t - warmup] = log_mean
        bar.update()
    return series


# --------------------------------------------------------------------------- public API
def cloning(
    model: MarkovChain | JumpProcess,
    f: Any,
    k: Any,
    *,
    population: int = 1000,
    steps: int | None = None,
    duration: float | None = None,
    interval: float | None = None,
    runs: int = 10,
    warmup: float | None = None,
    seed: Any = None,
    proposal: str = "prior",
    resampling: str = "systematic",
    keep_series: bool = True,
    progress: bool = False,
) -> CloningResult:
    """Estimate the SCGF ``Lambda(k)`` of an additive observable by cloning.

    Parameters
    ----------
    model
        A :class:`~tiltrl.ld.MarkovChain` (discrete time) or a
        :class:`~tiltrl.ld.JumpProcess` (continuous time).
    f
        The observable, in any form :func:`~tiltrl.ld.transition_values` (chain) or
        :func:`~tiltrl.ld.jump_and_state_values` (process) accepts: ``(S,)`` state
        observable, ``(S, S)`` dense/sparse transition (jump) observable, callable, or a
        ``(g, h)`` pair for a process.
    k
        Tilt, a finite scalar or an array (each ``k`` is a separate run with the same
        seed: common random numbers make the estimated curve smooth in ``k``).
    population
        Clones per run, ``>= 2``.
    steps
        Discrete time only: measured time steps per run (``>= 1``). Default 1000.
    duration
        Continuous time only: measured time per run (``> 0``). Default ``1000 * interval``.
    interval
        Continuous time only: time between selections. Default ``1 / max out-rate`` of the
        proposal dynamics, the largest over all ``k`` (at most about one jump per clone per
        interval). ``duration`` is split
        into ``round(duration / interval)`` equal intervals. Clones evolve exactly in
        continuous time, so ``interval`` affects only the variance and the finite-``N``
        bias, never the limit.
    runs
        Independent runs (each with its own population), ``>= 1``. ``stderr`` needs two.
    warmup
        Discarded initial steps (discrete) or time (continuous) before measuring. Default
        ``steps // 10`` (``duration / 10``). The population starts from ``model.initial``;
        too short a warmup leaves an ``O(1 / steps)`` transient bias that ``stderr`` does
        not show (the runs share it).
    seed
        Integer, ``None`` or ``numpy.random.SeedSequence``. The same seed gives identical
        results; the entropy actually used is stored in ``result.seed``.
    proposal
        ``"prior"`` or ``"tilted"`` (see the module docstring).
    resampling
        ``"systematic"`` (default, low variance) or ``"multinomial"``.
    keep_series
        Keep the per-step log growth (``result.series``, ``k.size * runs * steps`` floats;
        turn it off for very long runs).
    progress
        Print a progress bar on stderr.

    Returns
    -------
    CloningResult
        ``.estimate`` (``Lambda(k)``), ``.stderr``, ``.runs`` and the settings.
    """
    k_arr = _check_k(k)
    N = _check_int(population, "population", 2)
    R = _check_int(runs, "runs", 1)
    _check_choice(proposal, "proposal", PROPOSALS)
    _check_choice(resampling, "resampling", RESAMPLING)
    ss = _seed_sequence(seed)
    if isinstance(model, MarkovChain):
        if duration is not None or interval is not None:
            raise TypeError(
                "duration/interval are for a continuous-time JumpProcess; a MarkovChain "
                "takes steps"
            )
        T = 1000 if steps is None else _check_int(steps, "steps", 1)
        wu = T // 10 if warmup is None else _check_int(warmup, "warmup", 0)
        dt = 1.0
        fvals = transition_values(model, f)
    elif isinstance(model, JumpProcess):
        if steps is not None:
            raise TypeError(
                "a continuous-time JumpProcess takes duration (time per run) and interval "
                "(time between selections), not steps"
            )
        g, h = jump_and_state_values(model, f)
    else:
        raise TypeError(
            f"model must be a tiltrl.ld.MarkovChain or JumpProcess, got {type(model).__name__}"
        )

    started = time.perf_counter()
    ks = [float(kk) for kk in k_arr.ravel()]
    if isinstance(model, MarkovChain):
        dkernels = [_discrete_kernel(model, fvals, kk, proposal) for kk in ks]
    else:
        ckernels = [_continuous_kernel(model, g, h, kk, proposal) for kk in ks]
        if interval is None:
            top = max(float(kern[1].max(initial=0.0)) for kern in ckernels)
            dt = 1.0 / top if top > 0 else 1.0
        else:
            dt = _check_positive(interval, "interval")
        D = 1000 * dt if duration is None else _check_positive(duration, "duration")
        T = max(1, round(D / dt))
        dt = D / T
        if warmup is None:
            wu = T // 10
        else:
            if not (math.isfinite(float(warmup)) and float(warmup) >= 0):
                raise ValueError(f"warmup must be a finite time >= 0, got {warmup!r}")
            wu = round(float(warmup) / dt)

    bar = _Progress(len(ks) * (wu + T), progress, "cloning")
    all_series = np.empty((len(ks), R, T))
    try:
        for j in range(len(ks)):
            # a fresh copy of the same stream for every k (common random numbers)
            child = np.random.SeedSequence(ss.entropy, spawn_key=ss.spawn_key)
            if isinstance(model, MarkovChain):
                sampler, move_lw = dkernels[j]
                all_series[j] = _run_discrete(
                    model, sampler, move_lw, R, N, wu, T, child, resampling, bar
                )
            else:
                all_series[j] = _run_continuous(
                    model, ckernels[j], dt, R, N, wu, T, child, resampling, bar
                )
    finally:
        bar.close()
    elapsed = time.perf_counter() - started

    duration_total = T * dt
    per_run = all_series.sum(axis=2) / duration_total
    estimate = per_run.mean(axis=1)
    if R > 1:
        stderr = per_run.std(axis=1, ddof=1) / math.sqrt(R)
    else:
        stderr = np.full(k_arr.size, np.nan)
    drift = _drift(all_series, dt)
    shape = k_arr.shape
    raw_entropy: Any = ss.entropy
    entropy: Any = raw_entropy if isinstance(raw_entropy, int) else tuple(
        int(e) for e in np.atleast_1d(raw_entropy)
    )

    def shaped(a: np.ndarray) -> Any:
        out = a.reshape(shape + a.shape[1:])
        return float(out) if out.ndim == 0 else out

    return CloningResult(
        k=float(k_arr) if k_arr.ndim == 0 else k_arr.copy(),
        estimate=shaped(estimate),
        stderr=shaped(stderr),
        runs=per_run.reshape(shape + (R,)),
        population=N,
        steps=T,
        time_step=float(dt),
        duration=float(duration_total),
        warmup_steps=int(wu),
        clock="discrete" if isinstance(model, MarkovChain) else "continuous",
        proposal=proposal,
        resampling=resampling,
        seed=entropy,
        spawn_key=tuple(int(i) for i in ss.spawn_key),
        elapsed=elapsed,
        drift=shaped(drift),
        series=all_series.reshape(shape + (R, T)) if keep_series else None,
    )


def _drift(series: np.ndarray, dt: float) -> np.ndarray:
    """Second-half minus first-half estimate per ``k``, in standard errors over runs."""
    K, R, T = series.shape
    half = T // 2
    if half == 0 or R < 2:
        return np.full(K, np.nan)
    first = series[:, :, :half].sum(axis=2) / (half * dt)
    second = series[:, :, half:].sum(axis=2) / ((T - half) * dt)
    d = second - first
    mean = d.mean(axis=1)
    err = d.std(axis=1, ddof=1) / math.sqrt(R)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(err > 0, mean / np.where(err > 0, err, 1.0), np.where(mean == 0, 0.0, np.inf))
    return np.asarray(z, dtype=np.float64)


def extrapolate(results: Sequence[CloningResult]) -> Extrapolation:
    """``N -> infinity`` limit of cloning estimates at several populations.

    Fits ``Lambda(N) = Lambda_inf + a / N`` by weighted least squares (weights
    ``1 / stderr^2``; zero standard errors are raised to the smallest positive one, and
    all-zero or NaN errors give an unweighted fit). Needs at least two distinct
    populations, all results with the same ``k``. With three or more, ``chi2`` tests the
    ``1/N`` law and an excess inflates ``stderr`` (Birge ratio).
    """
    started = time.perf_counter()
    results = list(results)
    if len(results) < 2:
        raise ValueError(f"extrapolation needs results at >= 2 populations, got {len(results)}")
    k0 = np.asarray(results[0].k, dtype=np.float64)
    for r in results[1:]:
        kr = np.asarray(r.k, dtype=np.float64)
        if kr.shape != k0.shape or not np.array_equal(kr, k0):
            raise ValueError(f"all results must share k; got {results[0].k!r} and {r.k!r}")
    pops = np.array([r.population for r in results], dtype=np.float64)
    if np.unique(pops).size < 2:
        raise ValueError(f"extrapolation needs >= 2 distinct populations, got {pops.tolist()}")
    est = np.stack([np.asarray(r.estimate, dtype=np.float64) for r in results], axis=-1)
    err = np.stack([np.asarray(r.stderr, dtype=np.float64) for r in results], axis=-1)
    flat_est = est.reshape(-1, len(results))
    flat_err = err.reshape(-1, len(results))
    X = np.column_stack([np.ones_like(pops), 1.0 / pops])
    n = len(results)
    dof = n - 2
    out = np.empty((flat_est.shape[0], 5))
    for i, (y, s) in enumerate(zip(flat_est, flat_err, strict=True)):
        s = s.copy()
        positive = np.isfinite(s) & (s > 0)
        if positive.any():
            s[~positive] = s[positive].min()
            w = 1.0 / s**2
            scale_known = True
        else:
            w = np.ones(n)
            scale_known = False
        XtW = X.T * w
        cov = np.linalg.inv(XtW @ X)
        beta = cov @ (XtW @ y)
        resid = y - X @ beta
        chi2 = float(np.sum(w * resid**2))
        if not scale_known:
            # unweighted: the residual variance is the only scale there is
            cov = cov * (chi2 / dof if dof > 0 else np.nan)
        elif dof > 0 and chi2 > dof:
            cov = cov * (chi2 / dof)
        out[i] = beta[0], math.sqrt(cov[0, 0]), beta[1], math.sqrt(cov[1, 1]), chi2
    shape = k0.shape

    def shaped(col: int) -> Any:
        a = out[:, col].reshape(shape)
        return float(a) if a.ndim == 0 else a

    return Extrapolation(
        k=float(k0) if k0.ndim == 0 else k0.copy(),
        estimate=shaped(0),
        stderr=shaped(1),
        slope=shaped(2),
        slope_stderr=shaped(3),
        chi2=shaped(4),
        dof=dof,
        populations=pops.astype(np.int64),
        estimates=est,
        stderrs=err,
        elapsed=sum(r.elapsed for r in results) + time.perf_counter() - started,
    )


def cloning_extrapolate(
    model: MarkovChain | JumpProcess,
    f: Any,
    k: Any,
    *,
    populations: Sequence[int] = (100, 300, 1000),
    steps: int | Sequence[int] | None = None,
    duration: float | Sequence[float] | None = None,
    seed: Any = None,
    **kwargs: Any,
) -> tuple[Extrapolation, list[CloningResult]]:
    """Run :func:`cloning` at each population and :func:`extrapolate` the ``1/N`` law.

    ``steps`` (discrete) or ``duration`` (continuous) is one value for all populations or
    one per population (e.g. ``budget // N`` for a fixed population x steps cost). Each
    population gets an independent stream spawned from ``seed``. Other keyword arguments
    go to :func:`cloning`. Returns the extrapolation and the individual results.
    """
    pops = [_check_int(p, "population", 2) for p in populations]
    if len(pops) < 2:
        raise ValueError(f"populations must list >= 2 values, got {list(populations)}")

    def per_pop(value: Any, name: str) -> list[Any]:
        if value is None or np.ndim(value) == 0:
            return [value] * len(pops)
        vals = list(value)
        if len(vals) != len(pops):
            raise ValueError(f"{name} has {len(vals)} values for {len(pops)} populations")
        return vals

    steps_l = per_pop(steps, "steps")
    dur_l = per_pop(duration, "duration")
    children = _seed_sequence(seed).spawn(len(pops))
    results = []
    for N, T, D, child in zip(pops, steps_l, dur_l, children, strict=True):
        extra: dict[str, Any] = {}
        if T is not None:
            extra["steps"] = T
        if D is not None:
            extra["duration"] = D
        results.append(cloning(model, f, k, population=N, seed=child, **extra, **kwargs))
    return extrapolate(results), results

