"""The tilted matrix, factored and in log space.

``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r(s,a,s')) pi0(a'|s')`` (DESIGN.md §1) factors
as ``M = B C`` with ``B[(s,a), s'] = p(s'|s,a) exp(beta r(s,a,s'))`` (the sparsity of
``P``) and ``C[s, (s,a)] = pi0(a|s)``. The non-zero spectrum of ``M`` equals that of the
``S x S`` state matrix ``Q = C B``,
``Q[s, s'] = sum_a pi0(a|s) p(s'|s,a) exp(beta r(s,a,s'))``, and the eigenvectors map
across: ``chi = C u`` and ``u = B chi / rho``; a left vector ``nu Q = rho nu`` gives
``v = nu C``, i.e. ``v(s,a) = nu(s) pi0(a|s)``. Nothing of size ``(S*A)^2`` is ever
built. Entries are kept as logarithms with the reward shifted by its maximum, so that
``beta (r_max - r_min)`` of 1e4 neither overflows nor loses the small entries.

Reference: Arriojas, Adamczyk, Tiomkin, Kulkarni, "Entropy regularized reinforcement
learning using large deviation theory", Phys. Rev. Research 5, 023085 (2023).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from tiltrl.mdp import TabularMDP

__all__ = [
    "LogKernel",
    "row_logsumexp",
    "RowLayout",
    "log_tilted_weights",
    "state_log_kernel",
    "tilted_operator",
]


@dataclass(frozen=True)
class RowLayout:
    """How :func:`row_logsumexp` reduces the rows of one ``indptr``: rows of at most 16
    entries and nearly one length go into an ``n x d`` array padded with ``-inf``
    (``index``: the slot of each entry, ``None`` when every row has ``d`` entries);
    other layouts (``d = 0``) use ``reduceat``. Computing it once saves its index
    arithmetic in solvers that reduce over the same rows many times."""

    n: int
    d: int
    index: np.ndarray | None

    @classmethod
    def of(cls, indptr: np.ndarray) -> RowLayout:
        lengths = np.diff(indptr)
        n = lengths.size
        d = int(lengths.max()) if n else 0
        nnz = int(indptr[-1] - indptr[0]) if n else 0
        if not (0 < d <= 16 and n * d <= 1.25 * nnz):
            return cls(n, 0, None)
        if n * d == nnz:
            return cls(n, d, None)
        return cls(n, d, np.arange(nnz) + np.repeat(np.arange(n) * d - indptr[:-1], lengths))


def row_logsumexp(
    z: np.ndarray, indptr: np.ndarray, layout: RowLayout | None = None
) -> np.ndarray:
    """``log sum exp`` of ``z`` over each CSR row (rows must be non-empty). ``layout`` is
    ``RowLayout.of(indptr)`` when the caller keeps it."""
    if layout is None:
        layout = RowLayout.of(indptr)
    n, d = layout.n, layout.d
    if d:
        # short rows of (nearly) one length (rings, lattices, grid worlds): a 2-D
        # reduction over rows padded with -inf is 2-4x faster than reduceat over short
        # segments (column by column: numpy reduces a short inner axis slowly)
        if layout.index is None:
            Z = z.reshape(n, d)
        else:
            padded = np.full(n * d, -np.inf)
            padded[layout.index] = z
            Z = padded.reshape(n, d)
        m = Z[:, 0].copy()
        for j in range(1, d):
            np.maximum(m, Z[:, j], out=m)
        finite = np.isfinite(m)
        m0 = np.where(finite, m, 0.0)
        s = np.exp(Z[:, 0] - m0)
        for j in range(1, d):
            s += np.exp(Z[:, j] - m0)
        with np.errstate(divide="ignore"):
            return np.where(finite, m + np.log(s), m)
    lengths = np.diff(indptr)
    starts = indptr[:-1]
    m = np.maximum.reduceat(z, starts)
    m_rep = np.repeat(m, lengths)
    finite = np.isfinite(m_rep)
    shifted = np.where(finite, z - np.where(finite, m_rep, 0.0), -np.inf)
    s = np.add.reduceat(np.exp(shifted), starts)
    with np.errstate(divide="ignore"):
        return m + np.log(s)


def log_tilted_weights(mdp: TabularMDP, beta: float, shift: float) -> np.ndarray:
    """``log pi0(a|s) + log p(s'|s,a) + beta (r(s,a,s') - shift)`` per non-zero of ``P``.

    Entries whose action has zero prior mass come out as ``-inf``.
    """
    base = mdp.structure("log_prior_dynamics", lambda: _log_prior_dynamics(mdp))
    return base + beta * (mdp.reward_per_transition() - shift)


def _log_prior_dynamics(mdp: TabularMDP) -> np.ndarray:
    """``log pi0(a|s) + log p(s'|s,a)`` per non-zero of ``P`` (read-only)."""
    out = log_prior(mdp).ravel()[mdp.row_index()] + log_transitions(mdp)
    out.setflags(write=False)
    return out


def log_transitions(mdp: TabularMDP) -> np.ndarray:
    """``log p(s'|s,a)`` per stored entry of ``P`` (``-inf`` for a stored zero); read-only,
    kept on the model (solvers and value iterations reuse it every step)."""

    def make() -> np.ndarray:
        with np.errstate(divide="ignore"):
            out = np.log(mdp.P.data)
        out.setflags(write=False)
        return out

    return mdp.structure("log_transitions", make)  # type: ignore[no-any-return]


def log_prior(mdp: TabularMDP) -> np.ndarray:
    """``log pi0(a|s)`` as an ``(S, A)`` array (``-inf`` where the prior is zero);
    read-only, kept on the model."""

    def make() -> np.ndarray:
        with np.errstate(divide="ignore"):
            out = np.log(mdp.prior)
        out.setflags(write=False)
        return out

    return mdp.structure("log_prior", make)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class LogKernel:
    """A non-negative ``n x n`` matrix stored as CSR with log entries.

    ``logw[k]`` is the log of entry ``(row_of[k], cols[k])``; ``indptr`` delimits rows.
    """

    indptr: np.ndarray
    cols: np.ndarray
    logw: np.ndarray

    @classmethod
    def from_entries(
        cls, rows: np.ndarray, cols: np.ndarray, logw: np.ndarray, n: int
    ) -> LogKernel:
        """Build from log entries ``(rows[k], cols[k], logw[k])``; duplicates of one
        ``(row, col)`` are combined by log-sum-exp (entries add in linear space)."""
        pattern = _EntryPattern.of(rows, cols, n)
        return pattern.kernel(np.asarray(logw, dtype=np.float64))

    @property
    def n(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def row_of(self) -> np.ndarray:
        return np.repeat(np.arange(self.n), np.diff(self.indptr))

    def restrict(self, keep: np.ndarray) -> tuple[LogKernel, np.ndarray]:
        """Sub-kernel on the states ``keep`` (indices, sorted); edges leaving are dropped.

        Returns the kernel and ``keep`` (the map new index -> old index).
        """
        keep = np.asarray(keep)
        new_index = np.full(self.n, -1)
        new_index[keep] = np.arange(keep.size)
        rows = self.row_of
        mask = (new_index[rows] >= 0) & (new_index[self.cols] >= 0) & np.isfinite(self.logw)
        new_rows = new_index[rows[mask]]
        indptr = np.zeros(keep.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(new_rows, minlength=keep.size), out=indptr[1:])
        return LogKernel(indptr, new_index[self.cols[mask]], self.logw[mask]), keep

    def adjacency(self) -> sp.csr_matrix:
        """Boolean support graph (finite entries only)."""
        data = np.isfinite(self.logw).astype(np.int8)
        adj = sp.csr_matrix((data, self.cols, self.indptr), shape=(self.n, self.n))
        adj.eliminate_zeros()
        return adj

    def to_dense(self) -> np.ndarray:
        out = np.zeros((self.n, self.n))
        np.add.at(out, (self.row_of, self.cols), np.exp(self.logw))
        return out


@dataclass(frozen=True)
class _EntryPattern:
    """Where log entries ``(rows[k], cols[k])`` go in a CSR :class:`LogKernel`: ``order``
    sorts them by ``(row, col)`` (``None``: already sorted), ``bounds`` delimits runs of
    one ``(row, col)`` to combine by log-sum-exp (``None``: no duplicates). Depends on
    the sparsity pattern alone, so it can be computed once for many weight vectors."""

    indptr: np.ndarray
    cols: np.ndarray
    order: np.ndarray | None
    bounds: np.ndarray | None
    layout: RowLayout | None

    @classmethod
    def of(cls, rows: np.ndarray, cols: np.ndarray, n: int) -> _EntryPattern:
        key = rows.astype(np.int64) * n + cols.astype(np.int64)
        order = None
        if not (key.size == 0 or np.all(key[1:] > key[:-1])):
            order = np.argsort(key, kind="stable")
            key = key[order]
        first = np.empty(key.size, dtype=bool)
        first[:1] = True
        np.not_equal(key[1:], key[:-1], out=first[1:])
        start = np.flatnonzero(first)  # (key is sorted: no second sort as np.unique)
        bounds = None if start.size == key.size else np.append(start, key.size)
        uniq = key if bounds is None else key[start]
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(uniq // n, minlength=n), out=indptr[1:])
        out = cls(indptr, uniq % n, order, bounds,
                  None if bounds is None else RowLayout.of(bounds))
        for a in (out.indptr, out.cols, out.order, out.bounds):
            if a is not None:
                a.setflags(write=False)
        return out

    def kernel(self, logw: np.ndarray) -> LogKernel:
        """The kernel with these log entries (in the order given to :meth:`of`)."""
        w = logw if self.order is None else logw[self.order]
        if self.bounds is not None:
            w = row_logsumexp(w, self.bounds, self.layout)
        return LogKernel(self.indptr, self.cols, w)


def _state_pattern(mdp: TabularMDP) -> tuple[np.ndarray, _EntryPattern]:
    """The non-zeros of ``P`` whose action has prior mass, and where they go in the state
    kernel (no beta in either: computed once per model, :meth:`TabularMDP.structure`)."""
    S, A = mdp.shape
    rows = mdp.row_index()
    take = np.flatnonzero(mdp.prior.ravel()[rows] > 0)
    take.setflags(write=False)
    return take, _EntryPattern.of(rows[take] // A, mdp.P.indices[take], S)


def state_log_kernel(mdp: TabularMDP, beta: float, shift: float) -> LogKernel:
    """Log of ``Q[s,s'] = sum_a pi0(a|s) p(s'|s,a) exp(beta (r(s,a,s') - shift))``.

    The entries' places (a sort of the ``(s, s')`` pairs) depend on the model alone and
    are computed on the first call only."""
    w = log_tilted_weights(mdp, beta, shift)
    take, pattern = mdp.structure("state_log_kernel", lambda: _state_pattern(mdp))
    w = w[take]
    if not np.all(np.isfinite(w)):
        # beta (r - shift) overflowed to -inf somewhere: drop those entries (new pattern)
        keep = np.isfinite(w)
        S, A = mdp.shape
        rows = mdp.row_index()[take[keep]] // A
        return LogKernel.from_entries(rows, mdp.P.indices[take[keep]], w[keep], S)
    return pattern.kernel(w)


def tilted_operator(mdp: TabularMDP, beta: float, *, shift: float = 0.0) -> LinearOperator:
    """The tilted matrix ``M`` (times ``exp(-beta shift)``) as a factored ``LinearOperator``.

    A mat-vec is one pass over ``P`` and one over ``pi0``; the ``(S*A)^2`` matrix is never
    formed. Linear space: use it for small ``beta`` or for checks; the solvers work in log
    space instead.
    """
    S, A = mdp.shape
    P = mdp.P
    B = sp.csr_matrix(
        (P.data * np.exp(beta * (mdp.reward_per_transition() - shift)), P.indices, P.indptr),
        shape=P.shape,
    )
    pi0 = mdp.prior
    BT = sp.csr_matrix(B.T)

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).reshape(S, A)
        chi = (pi0 * x).sum(axis=1)
        return B @ chi

    def rmatvec(y: np.ndarray) -> np.ndarray:
        nu = BT @ np.asarray(y).ravel()
        return (nu[:, None] * pi0).ravel()

    return LinearOperator((S * A, S * A), matvec=matvec, rmatvec=rmatvec, dtype=np.float64)
