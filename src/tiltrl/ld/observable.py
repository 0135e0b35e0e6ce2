"""Additive observables of Markov chains and jump processes.

Discrete time: ``A_T = sum_{t<T} f(x_t, x_{t+1})``. Three ways to give ``f``:

- a state observable, shape ``(S,)``: ``f(x, y) = f(x)`` (counted at the departure state);
- a transition observable, a dense ``(S, S)`` array or a sparse matrix of weights read at
  the non-zeros of ``P`` (missing entries of a sparse matrix are zero) — a *current* is
  the antisymmetric case ``f(x, y) = -f(y, x)``;
- a callable ``f(x, y)`` taking integer arrays of sources and targets.

Continuous time: ``A_T = sum_{jumps x->y} g(x, y) + int_0^T h(X_t) dt``; ``f`` of shape
``(S,)`` is the time-integrated state observable ``h``, an ``(S, S)`` array / sparse
matrix / callable is the jump observable ``g``, and a pair ``(g, h)`` gives both.

Everything is reduced to values aligned with the non-zeros of the transition (or rate)
matrix, the only entries that can ever contribute.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tiltrl.ld.chain import JumpProcess, MarkovChain

__all__ = ["transition_values", "jump_and_state_values"]


def _on_pattern(M: sp.csr_matrix, rows: np.ndarray, f: Any, what: str) -> np.ndarray:
    S = M.shape[0]
    cols = M.indices
    if callable(f):
        vals = np.asarray(f(rows, cols), dtype=np.float64)
        if vals.shape != rows.shape:
            raise ValueError(
                f"{what} callable returned shape {vals.shape}; expected one value per "
                f"transition, shape {rows.shape}"
            )
    elif sp.issparse(f):
        F = sp.csr_matrix(f, dtype=np.float64)
        if F.shape != (S, S):
            raise ValueError(f"{what} must have shape (S, S) = {(S, S)}, got {F.shape}")
        # (a fancy index with no entries returns a sparse matrix, not an array)
        vals = np.asarray(F[rows, cols]).ravel() if rows.size else np.zeros(0)
    else:
        arr = np.asarray(f, dtype=np.float64)
        if arr.shape == (S,):
            vals = arr[rows]
        elif arr.shape == (S, S):
            vals = arr[rows, cols]
        else:
            raise ValueError(
                f"{what} must have shape (S,) = {(S,)} or (S, S) = {(S, S)}, got {arr.shape}"
            )
    bad = ~np.isfinite(vals)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{what} f({int(rows[k])}, {int(cols[k])}) = {float(vals[k])!r} is not finite"
        )
    return vals


def transition_values(chain: MarkovChain, f: Any) -> np.ndarray:
    """``f(x, y)`` at every non-zero of ``chain.P`` (aligned with ``chain.P.data``)."""
    if isinstance(f, tuple):
        raise TypeError("a (g, h) pair is an observable of a JumpProcess, not of a MarkovChain")
    return _on_pattern(chain.P, chain.row_index, f, "observable")


def jump_and_state_values(process: JumpProcess, f: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(g at the non-zeros of process.rates, h per state)`` for a jump process."""
    S = process.n_states
    if isinstance(f, tuple):
        if len(f) != 2:
            raise ValueError("a jump-process observable pair must be (g, h)")
        g, h = f
    elif not callable(f) and not sp.issparse(f) and np.ndim(f) == 1:
        g, h = None, f
    else:
        g, h = f, None
    g_vals = (
        np.zeros(process.rates.nnz) if g is None
        else _on_pattern(process.rates, process.row_index, g, "jump observable")
    )
    if h is None:
        h_vals = np.zeros(S)
    else:
        h_vals = np.asarray(h, dtype=np.float64)
        if h_vals.shape != (S,):
            raise ValueError(
                f"state observable h must have shape (S,) = {(S,)}, got {h_vals.shape}"
            )
        bad = ~np.isfinite(h_vals)
        if bad.any():
            x = int(np.flatnonzero(bad)[0])
            raise ValueError(f"state observable h[{x}] = {float(h_vals[x])!r} is not finite")
    return g_vals, h_vals
