"""Markov chains in discrete time and jump processes in continuous time.

Convention (``shared/DESIGN.md`` §1): index order is *from -> to*; ``P[x, y]`` is the
probability of the move ``x -> y`` and ``W[x, y]`` (``x != y``) the rate of the jump
``x -> y``. Both are stored as CSR matrices whose sparsity pattern is exactly the support
of the dynamics. Nothing is silently renormalised: bad input raises ``ValueError``
naming the offending row, entry and value.

A :class:`MarkovChain` is the one-action special case of :class:`tiltrl.TabularMDP`
(:meth:`MarkovChain.as_mdp`), which is how the large-deviation tools reuse the exact
solvers: the SCGF of an observable ``f`` at ``k`` is the Perron root of the tilted matrix
of the MDP with reward ``f`` at ``beta = 1`` and reward ``k f``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from tiltrl.mdp import PROB_TOL, TabularMDP

__all__ = ["MarkovChain", "JumpProcess"]


def _square_csr(M: Any, what: str) -> sp.csr_matrix:
    if sp.issparse(M):
        csr = sp.csr_matrix(M, dtype=np.float64, copy=True)
    else:
        arr = np.asarray(M, dtype=np.float64)
        if arr.ndim != 2:
            raise ValueError(f"{what} must be a square (S, S) matrix, got shape {arr.shape}")
        csr = sp.csr_matrix(arr)
    if csr.shape[0] != csr.shape[1] or csr.shape[0] == 0:
        raise ValueError(f"{what} must be a square (S, S) matrix, got shape {csr.shape}")
    csr.sum_duplicates()
    csr.sort_indices()
    bad = ~np.isfinite(csr.data)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        x = int(np.searchsorted(csr.indptr, k, side="right") - 1)
        raise ValueError(
            f"{what}[{x}, {int(csr.indices[k])}] = {float(csr.data[k])!r} is not finite"
        )
    return csr


def _entry_position(csr: sp.csr_matrix, k: int) -> tuple[int, int]:
    return int(np.searchsorted(csr.indptr, k, side="right") - 1), int(csr.indices[k])


def _initial_law(initial: Any, S: int) -> np.ndarray:
    mu = TabularMDP._validate_initial(initial, S)
    mu.setflags(write=False)
    return mu


def _freeze(csr: sp.csr_matrix) -> sp.csr_matrix:
    for arr in (csr.data, csr.indices, csr.indptr):
        arr.setflags(write=False)
    return csr


def _save(path: str | Path, kind: str, M: sp.csr_matrix, initial: np.ndarray) -> None:
    np.savez_compressed(
        path, kind=np.array(kind), data=M.data, indices=M.indices, indptr=M.indptr,
        shape=np.array(M.shape), initial=initial,
    )


def _load(path: str | Path, kind: str) -> tuple[sp.csr_matrix, np.ndarray]:
    with np.load(path) as z:
        if str(z["kind"]) != kind:
            raise ValueError(f"{path} holds a {z['kind']}, not a {kind}")
        M = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
        return M, np.array(z["initial"])


class _SparseProcess:
    """What chains and jump processes share: a frozen CSR matrix whose pattern is the
    support of the moves, the row of each non-zero, and the initial law."""

    def __init__(self, M: sp.csr_matrix, initial: Any) -> None:
        self._M = _freeze(M)
        self._initial = _initial_law(initial, M.shape[0])
        self._rows = np.repeat(np.arange(M.shape[0]), np.diff(M.indptr))
        self._rows.setflags(write=False)

    @property
    def n_states(self) -> int:
        return int(self._M.shape[0])

    @property
    def initial(self) -> np.ndarray:
        return self._initial

    @property
    def row_index(self) -> np.ndarray:
        """Source state of each non-zero of the matrix (aligned with its ``data``)."""
        return self._rows


class MarkovChain(_SparseProcess):
    """A validated discrete-time Markov chain ``P[x, y] = P(X_{t+1} = y | X_t = x)``.

    Parameters
    ----------
    P
        Dense or sparse ``(S, S)`` row-stochastic matrix (rows sum to one within 1e-9).
    initial
        Initial law ``(S,)``, default uniform. The large-deviation functions work on the
        classes reachable from it (a transient or unreachable block cannot take over).
    """

    def __init__(self, P: Any, initial: Any = None) -> None:
        csr = _square_csr(P, "P")
        neg = csr.data < 0
        if neg.any():
            x, y = _entry_position(csr, int(np.flatnonzero(neg)[0]))
            raise ValueError(
                f"transition probability P[{x}, {y}] = {float(csr[x, y])!r} is negative"
            )
        sums = np.asarray(csr.sum(axis=1)).ravel()
        err = np.abs(sums - 1.0)
        if (err > PROB_TOL).any():
            x = int(np.argmax(err))
            raise ValueError(
                f"transition row {x} sums to {float(sums[x])!r}, "
                f"off from 1 by {sums[x] - 1.0:+.3e} "
                f"(tolerance {PROB_TOL:g}); tiltrl never renormalises"
            )
        csr.eliminate_zeros()
        super().__init__(csr, initial)
        self._P = self._M
        self._cumulative: np.ndarray | None = None

    # ------------------------------------------------------------------ accessors
    @property
    def P(self) -> sp.csr_matrix:
        """Transitions, CSR ``(S, S)`` (read-only arrays; pattern = support)."""
        return self._P

    def with_initial(self, initial: Any) -> MarkovChain:
        return MarkovChain(self._P, initial)

    def as_mdp(self, reward: Any = None) -> TabularMDP:
        """The one-action :class:`~tiltrl.TabularMDP` with this chain's dynamics.

        ``reward`` is given per non-zero of ``P`` (aligned with ``P.data``) or as an
        ``(S,)`` state reward; default zero.
        """
        S = self.n_states
        P = self._P
        if reward is None:
            r: Any = np.zeros((S, 1))
        else:
            vals = np.asarray(reward, dtype=np.float64)
            if vals.shape == (S,):
                r = vals[:, None]
            else:
                r = sp.csr_matrix((vals, P.indices, P.indptr), shape=P.shape)
        return TabularMDP(P, r, initial=self._initial)

    # ------------------------------------------------------------------ sampling
    def step(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One vectorised step from the states ``x`` (any shape); returns the next states."""
        if self._cumulative is None:
            # running sum per row, made exact at each row end against round-off
            c = np.cumsum(self._P.data)
            ends = self._P.indptr[1:] - 1
            base = np.zeros(self.n_states)
            base[1:] = c[ends[:-1]]
            cum = c - np.repeat(base, np.diff(self._P.indptr))
            cum[ends] = 1.0
            self._cumulative = cum
        x = np.asarray(x)
        flat = x.ravel()
        u = rng.random(flat.size)
        lo = self._P.indptr[flat]
        # position inside the row: first cumulative value above u (vectorised search)
        offset = _row_search(self._cumulative, self._P.indptr, flat, u)
        return np.asarray(self._P.indices[lo + offset]).reshape(x.shape)

    def sample(
        self, steps: int, *, n_chains: int = 1, seed: int | None = None,
        start: np.ndarray | None = None,
    ) -> np.ndarray:
        """Trajectories ``(n_chains, steps + 1)`` started from ``initial`` (or ``start``)."""
        rng = np.random.default_rng(seed)
        traj = np.empty((n_chains, steps + 1), dtype=np.int64)
        if start is None:
            traj[:, 0] = rng.choice(self.n_states, size=n_chains, p=self._initial)
        else:
            traj[:, 0] = np.broadcast_to(np.asarray(start, dtype=np.int64), (n_chains,))
        for t in range(steps):
            traj[:, t + 1] = self.step(traj[:, t], rng)
        return traj

    def stationary(self) -> np.ndarray:
        """Stationary law on the recurrent class reachable from ``initial`` (exact sparse solve)."""
        from tiltrl.exact import solve

        stationary = solve(self.as_mdp(), 1.0).stationary
        assert stationary is not None
        return np.asarray(stationary[:, 0])

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Write the chain to an ``.npz`` file (:meth:`load` reads it back)."""
        _save(path, "MarkovChain", self._P, self._initial)

    @classmethod
    def load(cls, path: str | Path) -> MarkovChain:
        return cls(*_load(path, "MarkovChain"))

    def __repr__(self) -> str:
        return f"MarkovChain(S={self.n_states}, nnz={self._P.nnz})"


def _row_search(
    cumulative: np.ndarray, indptr: np.ndarray, rows: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Offset of the first entry of ``cumulative[indptr[r]:indptr[r+1]]`` exceeding ``u``."""
    lengths = indptr[rows + 1] - indptr[rows]
    width = int(lengths.max(initial=1))
    if width <= 16:
        # short rows (grids, rings): compare against every slot at once
        slots = np.arange(width)
        idx = indptr[rows][:, None] + np.minimum(slots, lengths[:, None] - 1)
        below = (cumulative[idx] <= u[:, None]) & (slots < lengths[:, None] - 1)
        return np.asarray(below.sum(axis=1))
    # long rows: binary search in the global array, offsets by row start
    lo = indptr[rows].astype(np.int64)
    hi = (indptr[rows + 1] - 1).astype(np.int64)
    while True:
        active = lo < hi
        if not active.any():
            break
        mid = (lo + hi) // 2
        go_right = active & (cumulative[mid] <= u)
        lo = np.where(go_right, mid + 1, lo)
        hi = np.where(active & ~go_right, mid, hi)
    return np.asarray(lo - indptr[rows])


class JumpProcess(_SparseProcess):
    """A continuous-time Markov jump process with rates ``W[x, y]`` (``x != y``).

    Parameters
    ----------
    rates
        Dense or sparse ``(S, S)`` matrix. Off-diagonal entries are jump rates (>= 0). The
        diagonal may be zero or hold the generator's ``-escape(x)``; anything else raises.
    initial
        Initial law ``(S,)``, default uniform.

    The generator is ``G = W - diag(escape)`` with ``escape(x) = sum_{y != x} W[x, y]``.
    """

    def __init__(self, rates: Any, initial: Any = None) -> None:
        csr = _square_csr(rates, "rates")
        diag = csr.diagonal()
        off = sp.csr_matrix(csr - sp.diags(diag))
        off.eliminate_zeros()
        neg = off.data < 0
        if neg.any():
            x, y = _entry_position(off, int(np.flatnonzero(neg)[0]))
            raise ValueError(f"jump rate W[{x}, {y}] = {float(off[x, y])!r} is negative")
        escape = np.asarray(off.sum(axis=1)).ravel()
        given = diag != 0
        mismatch = given & (np.abs(diag + escape) > 1e-9 * np.maximum(1.0, escape))
        if mismatch.any():
            x = int(np.flatnonzero(mismatch)[0])
            raise ValueError(
                f"rates[{x}, {x}] = {float(diag[x])!r} must be 0 or minus the escape rate "
                f"{float(escape[x])!r} of state {x}"
            )
        super().__init__(off, initial)
        self._W = self._M
        self._escape = escape
        self._escape.setflags(write=False)

    @property
    def rates(self) -> sp.csr_matrix:
        """Off-diagonal jump rates, CSR ``(S, S)`` (zero diagonal)."""
        return self._W

    @property
    def escape(self) -> np.ndarray:
        """Escape rates ``sum_{y != x} W[x, y]``."""
        return self._escape

    @property
    def generator(self) -> sp.csr_matrix:
        return sp.csr_matrix(self._W - sp.diags(self._escape))

    def uniformised(self, c: float) -> MarkovChain:
        """The chain ``I + G / c`` (needs ``c >= max escape``): same stationary law."""
        if c < self._escape.max(initial=0.0) * (1 - 1e-12):
            raise ValueError(f"uniformisation rate {c} is below the largest escape rate")
        P = sp.csr_matrix(self._W / c + sp.diags(1.0 - self._escape / c))
        P.eliminate_zeros()
        return MarkovChain(P, self._initial)

    def sample(
        self, duration: float, *, n_chains: int = 1, seed: int | None = None
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Gillespie paths on ``[0, duration]``: per chain, (jump times, visited states)."""
        rng = np.random.default_rng(seed)
        jumps = MarkovChain(self._jump_matrix())
        out = []
        for _ in range(n_chains):
            x = int(rng.choice(self.n_states, p=self._initial))
            t = 0.0
            times, states = [0.0], [x]
            while True:
                esc = self._escape[x]
                if esc <= 0:
                    break
                t += rng.exponential(1.0 / esc)
                if t > duration:
                    break
                x = int(jumps.step(np.array([x]), rng)[0])
                times.append(t)
                states.append(x)
            out.append((np.array(times), np.array(states)))
        return out

    def _jump_matrix(self) -> sp.csr_matrix:
        """Embedded jump chain (absorbing states stay put)."""
        esc = self._escape
        safe = np.where(esc > 0, esc, 1.0)
        J = sp.csr_matrix(sp.diags(1.0 / safe) @ self._W)
        return sp.csr_matrix(J + sp.diags((esc <= 0).astype(float)))

    def save(self, path: str | Path) -> None:
        """Write the process to an ``.npz`` file (:meth:`load` reads it back)."""
        _save(path, "JumpProcess", self._W, self._initial)

    @classmethod
    def load(cls, path: str | Path) -> JumpProcess:
        return cls(*_load(path, "JumpProcess"))

    def __repr__(self) -> str:
        return f"JumpProcess(S={self.n_states}, jumps={self._W.nnz})"
