"""Small chains with closed-form large deviations, and larger ones for benchmarks.

- :func:`ring`: biased random walk on a ring of ``n`` sites, right with ``p``, left with
  ``q``, stay with ``1 - p - q``. The SCGF of the current (``+1`` per step right, ``-1``
  per step left) is ``log(p e^k + q e^-k + 1 - p - q)``, independent of ``n``.
- :func:`two_state`: flips ``0 -> 1`` with probability ``a`` and ``1 -> 0`` with ``b``.
- :func:`lattice_walk`: biased walk on an ``L x L`` torus (the 2-D benchmark chain).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tiltrl.ld.chain import MarkovChain

__all__ = ["ring", "ring_current", "ring_scgf", "two_state", "lattice_walk", "lattice_current"]


def ring(n: int, p: float, q: float) -> MarkovChain:
    """Biased random walk on a ring of ``n >= 3`` sites."""
    if n < 3:
        raise ValueError(f"a ring needs n >= 3 sites, got {n}")
    if p < 0 or q < 0 or p + q > 1:
        raise ValueError(f"need p, q >= 0 and p + q <= 1, got p={p}, q={q}")
    x = np.arange(n)
    rows = np.concatenate([x, x, x])
    cols = np.concatenate([(x + 1) % n, (x - 1) % n, x])
    vals = np.concatenate([np.full(n, p), np.full(n, q), np.full(n, 1.0 - p - q)])
    return MarkovChain(sp.csr_matrix((vals, (rows, cols)), shape=(n, n)))


def ring_current(n: int) -> sp.csr_matrix:
    """The current on the ring: ``+1`` for a step right, ``-1`` for a step left."""
    x = np.arange(n)
    rows = np.concatenate([x, x])
    cols = np.concatenate([(x + 1) % n, (x - 1) % n])
    vals = np.concatenate([np.ones(n), -np.ones(n)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))


def ring_scgf(k: np.ndarray | float, p: float, q: float) -> np.ndarray:
    """Closed form ``log(p e^k + q e^-k + 1 - p - q)`` of the ring current SCGF."""
    k = np.asarray(k, dtype=np.float64)
    return np.log(p * np.exp(k) + q * np.exp(-k) + (1.0 - p - q))


def two_state(a: float, b: float) -> MarkovChain:
    """``P = [[1-a, a], [b, 1-b]]``."""
    return MarkovChain(np.array([[1.0 - a, a], [b, 1.0 - b]]))


def lattice_walk(L: int, p_right: float = 0.3, p_other: float = 0.2) -> MarkovChain:
    """Walk on an ``L x L`` torus: right with ``p_right``, left/up/down ``p_other`` each,
    stay with the remainder. States are ``x + L y``."""
    if p_right + 3 * p_other > 1:
        raise ValueError("p_right + 3 p_other must be <= 1")
    idx = np.arange(L * L)
    x, y = idx % L, idx // L
    right = (x + 1) % L + L * y
    left = (x - 1) % L + L * y
    up = x + L * ((y + 1) % L)
    down = x + L * ((y - 1) % L)
    stay = 1.0 - p_right - 3 * p_other
    rows = np.tile(idx, 5)
    cols = np.concatenate([right, left, up, down, idx])
    vals = np.concatenate(
        [np.full(idx.size, p_right)] + [np.full(idx.size, p_other)] * 3
        + [np.full(idx.size, stay)]
    )
    return MarkovChain(sp.csr_matrix((vals, (rows, cols)), shape=(L * L, L * L)))


def lattice_current(L: int) -> sp.csr_matrix:
    """Horizontal current on the ``L x L`` torus: ``+1`` right, ``-1`` left."""
    idx = np.arange(L * L)
    x, y = idx % L, idx // L
    right = (x + 1) % L + L * y
    left = (x - 1) % L + L * y
    rows = np.concatenate([idx, idx])
    cols = np.concatenate([right, left])
    vals = np.concatenate([np.ones(idx.size), -np.ones(idx.size)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(L * L, L * L))
