"""Validated tabular Markov decision processes.

Convention (``shared/DESIGN.md`` §1): rewards, not costs; index order is always
*from -> to*. Transitions are a CSR matrix ``P`` of shape ``(S*A, S)`` whose row
``s*A + a`` holds ``p(.|s,a)``. Rewards are ``r[s,a]`` or ``r[s,a,s']``; a reward that
depends on the next state is stored per non-zero transition (aligned with ``P.data``)
so that it can enter the exponent of the tilted matrix *inside* the expectation
``E_{s'}[exp(beta r(s,a,s'))]`` instead of being averaged first.

Nothing is silently renormalised: bad input raises ``ValueError`` naming the offending
``(s, a)`` and the value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["TabularMDP", "check_beta", "check_gamma", "PROB_TOL"]

#: Tolerance on probability rows summing to one.
PROB_TOL = 1e-9


def check_beta(beta: float) -> float:
    """Return ``beta`` as a float, or raise ``ValueError`` if it is not finite and > 0."""
    try:
        b = float(beta)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}") from exc
    if not math.isfinite(b) or b <= 0.0:
        raise ValueError(f"beta must be a positive finite number, got {beta!r}")
    return b


def check_gamma(gamma: float) -> float:
    """Return ``gamma`` as a float, or raise ``ValueError`` unless ``0 <= gamma < 1``."""
    try:
        g = float(gamma)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"gamma must be a number in [0, 1), got {gamma!r}") from exc
    if not math.isfinite(g) or g < 0.0 or g >= 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma!r}")
    return g


def _as_csr_transitions(P: Any, n_actions: int | None) -> tuple[sp.csr_matrix, int, int]:
    """Convert dense ``(S,A,S)`` or sparse ``(S*A,S)`` transitions to canonical CSR."""
    if sp.issparse(P):
        csr = sp.csr_matrix(P, dtype=np.float64, copy=True)
        if csr.ndim != 2:
            raise ValueError(f"sparse transitions must be 2-D (S*A, S), got shape {csr.shape}")
        n_rows, n_states = csr.shape
        if n_states == 0 or n_rows % n_states != 0:
            raise ValueError(
                f"sparse transitions must have shape (S*A, S); got {csr.shape}, "
                f"and {n_rows} rows is not a multiple of S={n_states}"
            )
        A = n_rows // n_states
        if n_actions is not None and n_actions != A:
            raise ValueError(
                f"transitions imply {A} actions but the reward has {n_actions} actions"
            )
    else:
        arr = np.asarray(P, dtype=np.float64)
        if arr.ndim != 3 or arr.shape[0] != arr.shape[2] or arr.shape[0] == 0:
            raise ValueError(
                f"dense transitions must have shape (S, A, S), got {arr.shape}"
            )
        n_states, A, _ = arr.shape
        csr = sp.csr_matrix(arr.reshape(n_states * A, n_states))
        # explicit entries for NaN are kept by csr_matrix (NaN != 0), so validation sees them
    csr.sum_duplicates()
    csr.sort_indices()
    return csr, n_states, A


class TabularMDP:
    """A frozen, validated tabular MDP ``(P, r, pi0, initial)``.

    Parameters
    ----------
    P
        Transitions: a dense array of shape ``(S, A, S)`` with ``P[s, a, s'] = p(s'|s,a)``
        or a sparse matrix of shape ``(S*A, S)`` whose row ``s*A + a`` is ``p(.|s,a)``.
    r
        Rewards: ``(S, A)`` for ``r(s,a)``, ``(S, A, S)`` dense for ``r(s,a,s')``, or a
        sparse ``(S*A, S)`` matrix read at the non-zeros of ``P``.
    prior
        Prior (reference) policy ``pi0[s, a]``, default uniform. Rows must sum to one and
        every state needs positive mass.
    initial
        Initial state distribution ``(S,)``, default uniform.
    info
        Free-form metadata (grid layout, names...). Builders put the grid here so that
        plots know where states live.

    Notes
    -----
    Stored arrays are read-only. Explicit zeros in ``P`` are dropped, so ``P``'s sparsity
    pattern is exactly the support of the dynamics.
    """

    __slots__ = (
        "_P",
        "_reward",
        "_transition_reward",
        "_prior",
        "_initial",
        "_info",
        "_row_index",
        "_reward_per_transition",
        "_structures",
        "_frozen",  # last: unpickling sets the slots in this order
    )

    def __init__(
        self,
        P: Any,
        r: Any,
        prior: Any = None,
        initial: Any = None,
        *,
        info: Mapping[str, Any] | None = None,
    ) -> None:
        r_is_sparse = sp.issparse(r)
        r_arr = None if r_is_sparse else np.asarray(r, dtype=np.float64)
        n_actions_hint = None
        if r_arr is not None and r_arr.ndim in (2, 3):
            n_actions_hint = r_arr.shape[1]
        csr, S, A = _as_csr_transitions(P, n_actions_hint)
        self._validate_probabilities(csr, S, A)
        csr.eliminate_zeros()
        csr.data.setflags(write=False)
        csr.indices.setflags(write=False)
        csr.indptr.setflags(write=False)

        rows = np.repeat(np.arange(S * A), np.diff(csr.indptr))
        transition_reward: np.ndarray | None
        if r_is_sparse:
            r_csr = sp.csr_matrix(r, dtype=np.float64)
            if r_csr.shape != (S * A, S):
                raise ValueError(
                    f"sparse reward must have shape (S*A, S) = {(S * A, S)}, got {r_csr.shape}"
                )
            transition_reward = np.asarray(r_csr[rows, csr.indices]).ravel()
            self._check_finite_transition_reward(transition_reward, rows, csr.indices, A)
        else:
            assert r_arr is not None
            if r_arr.shape == (S, A):
                transition_reward = None
                bad = ~np.isfinite(r_arr)
                if bad.any():
                    s, a = map(int, np.argwhere(bad)[0])
                    raise ValueError(
                        f"reward r[{s},{a}] = {r_arr[s, a]!r} is not finite"
                    )
            elif r_arr.shape == (S, A, S):
                transition_reward = r_arr.reshape(S * A, S)[rows, csr.indices].copy()
                self._check_finite_transition_reward(transition_reward, rows, csr.indices, A)
            else:
                raise ValueError(
                    f"reward must have shape (S, A) = {(S, A)} or (S, A, S) = {(S, A, S)}, "
                    f"got {r_arr.shape}"
                )
        reward: np.ndarray
        if transition_reward is not None:
            # r(s,a) is the mean under p; r(s,a,s') stays available for the exponent
            reward = np.bincount(
                rows, weights=csr.data * transition_reward, minlength=S * A
            ).reshape(S, A)
            # a constant-in-s' reward is stored compactly as r(s,a)
            spread = np.zeros(S * A)
            np.maximum.at(spread, rows, np.abs(transition_reward - reward.ravel()[rows]))
            scale = max(1.0, float(np.max(np.abs(transition_reward), initial=0.0)))
            if spread.max(initial=0.0) <= 1e-12 * scale:
                # constant in s' up to round-off of the mean: store r(s,a) exactly
                const = np.zeros(S * A)
                const[rows] = transition_reward
                reward = const.reshape(S, A)
                transition_reward = None
        else:
            assert r_arr is not None
            reward = r_arr.copy()

        prior_arr = self._validate_prior(prior, S, A)
        initial_arr = self._validate_initial(initial, S)

        for arr in (reward, prior_arr, initial_arr):
            arr.setflags(write=False)
        if transition_reward is not None:
            transition_reward.setflags(write=False)
        self._P = csr
        self._reward = reward
        self._transition_reward = transition_reward
        self._prior = prior_arr
        self._initial = initial_arr
        self._info: dict[str, Any] = dict(info or {})
        # derived per-transition arrays, made on first use (solvers ask for them often)
        self._row_index: np.ndarray | None = None
        self._reward_per_transition: np.ndarray | None = None
        self._structures: dict[str, Any] = {}
        self._frozen = True

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_probabilities(csr: sp.csr_matrix, S: int, A: int) -> None:
        data = csr.data
        rows = np.repeat(np.arange(S * A), np.diff(csr.indptr))
        bad = ~np.isfinite(data)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            s, a = divmod(int(rows[k]), A)
            raise ValueError(
                f"transition probability p({csr.indices[k]}|s={s},a={a}) = {data[k]!r} "
                "is not finite"
            )
        neg = data < 0
        if neg.any():
            k = int(np.flatnonzero(neg)[0])
            s, a = divmod(int(rows[k]), A)
            raise ValueError(
                f"transition probability p({csr.indices[k]}|s={s},a={a}) = {data[k]!r} "
                "is negative"
            )
        sums = np.asarray(csr.sum(axis=1)).ravel()
        err = np.abs(sums - 1.0)
        if (err > PROB_TOL).any():
            row = int(np.argmax(err))
            s, a = divmod(row, A)
            raise ValueError(
                f"transition row (s={s}, a={a}) sums to {sums[row]!r}, off from 1 by "
                f"{sums[row] - 1.0:+.3e} (tolerance {PROB_TOL:g}); tiltrl never renormalises"
            )

    @staticmethod
    def _check_finite_transition_reward(
        values: np.ndarray, rows: np.ndarray, cols: np.ndarray, A: int
    ) -> None:
        bad = ~np.isfinite(values)
        if bad.any():
            k = int(np.flatnonzero(bad)[0])
            s, a = divmod(int(rows[k]), A)
            raise ValueError(
                f"reward r[{s},{a},{int(cols[k])}] = {values[k]!r} is not finite"
            )

    @staticmethod
    def _validate_prior(prior: Any, S: int, A: int) -> np.ndarray:
        if prior is None:
            return np.full((S, A), 1.0 / A)
        pi0 = np.array(prior, dtype=np.float64)
        if pi0.shape != (S, A):
            raise ValueError(f"prior must have shape (S, A) = {(S, A)}, got {pi0.shape}")
        bad = ~np.isfinite(pi0) | (pi0 < 0)
        if bad.any():
            s, a = map(int, np.argwhere(bad)[0])
            raise ValueError(f"prior pi0[{s},{a}] = {pi0[s, a]!r} is negative or not finite")
        sums = pi0.sum(axis=1)
        zero = sums == 0
        if zero.any():
            s = int(np.flatnonzero(zero)[0])
            raise ValueError(f"prior has zero mass on state {s}: every state needs an action")
        err = np.abs(sums - 1.0)
        if (err > PROB_TOL).any():
            s = int(np.argmax(err))
            raise ValueError(
                f"prior row pi0[{s},:] sums to {sums[s]!r}, off from 1 by {sums[s] - 1:+.3e}"
            )
        return pi0

    @staticmethod
    def _validate_initial(initial: Any, S: int) -> np.ndarray:
        if initial is None:
            return np.full(S, 1.0 / S)
        mu = np.array(initial, dtype=np.float64)
        if mu.shape != (S,):
            raise ValueError(f"initial distribution must have shape (S,) = {(S,)}, got {mu.shape}")
        bad = ~np.isfinite(mu) | (mu < 0)
        if bad.any():
            s = int(np.flatnonzero(bad)[0])
            raise ValueError(f"initial[{s}] = {mu[s]!r} is negative or not finite")
        if abs(mu.sum() - 1.0) > PROB_TOL:
            raise ValueError(
                f"initial distribution sums to {mu.sum()!r}, off from 1 by {mu.sum() - 1:+.3e}"
            )
        return mu

    def __setattr__(self, name: str, value: Any) -> None:
        if getattr(self, "_frozen", False):
            raise AttributeError("TabularMDP is frozen; use with_reward/with_prior/... for a copy")
        object.__setattr__(self, name, value)

    # ------------------------------------------------------------------ accessors
    @property
    def P(self) -> sp.csr_matrix:
        """Transitions, CSR ``(S*A, S)``; row ``s*A+a`` is ``p(.|s,a)`` (read-only arrays)."""
        return self._P

    @property
    def n_states(self) -> int:
        return int(self._P.shape[1])

    @property
    def n_actions(self) -> int:
        return int(self._P.shape[0] // self._P.shape[1])

    @property
    def shape(self) -> tuple[int, int]:
        """``(S, A)``."""
        return self.n_states, self.n_actions

    @property
    def reward(self) -> np.ndarray:
        """Mean reward ``r(s,a) = E_{s'~p}[r(s,a,s')]``, shape ``(S, A)``."""
        return self._reward

    @property
    def transition_reward(self) -> np.ndarray | None:
        """``r(s,a,s')`` per non-zero of ``P`` (aligned with ``P.data``), or ``None``
        when the reward does not depend on the next state."""
        return self._transition_reward

    @property
    def prior(self) -> np.ndarray:
        """Prior policy ``pi0[s, a]``."""
        return self._prior

    @property
    def initial(self) -> np.ndarray:
        """Initial state distribution ``(S,)``."""
        return self._initial

    @property
    def info(self) -> dict[str, Any]:
        """Metadata (a copy): builders store ``grid``, ``name``, ``tiles``... here."""
        return dict(self._info)

    @property
    def nnz(self) -> int:
        """Number of non-zero transitions."""
        return int(self._P.nnz)

    def row_index(self) -> np.ndarray:
        """Row ``s*A+a`` of every non-zero of ``P`` (aligned with ``P.data``; read-only,
        computed once)."""
        if self._row_index is None:
            object.__setattr__(
                self, "_row_index", np.repeat(np.arange(self._P.shape[0]), np.diff(self._P.indptr))
            )
        assert self._row_index is not None
        self._row_index.flags.writeable = False  # (again after unpickling)
        return self._row_index

    def reward_per_transition(self) -> np.ndarray:
        """``r(s,a,s')`` aligned with ``P.data`` (broadcast from ``r(s,a)`` if needed;
        read-only, computed once)."""
        if self._transition_reward is not None:
            return self._transition_reward
        if self._reward_per_transition is None:
            object.__setattr__(
                self, "_reward_per_transition", self._reward.ravel()[self.row_index()]
            )
        assert self._reward_per_transition is not None
        self._reward_per_transition.flags.writeable = False  # (again after unpickling)
        return self._reward_per_transition

    def __getstate__(self) -> tuple[None, dict[str, Any]]:
        # the solvers' structures stay behind (they are remade on first use); slots in
        # declaration order, so that _frozen is set last on unpickling
        return None, {k: getattr(self, k) for k in self.__slots__
                      if k != "_structures" and hasattr(self, k)}

    def structure(self, key: str, make: Callable[[], Any]) -> Any:
        """A structure derived from the model alone (no beta): ``make()`` on the first call
        with ``key``, the kept result afterwards. Solvers keep their symbolic analysis here
        (the sparsity pattern of the state kernel, its strongly connected classes), so a
        sweep over beta or a repeated solve pays for it once; the model is immutable, so
        the result never goes stale. ``make`` must return read-only arrays."""
        cache = getattr(self, "_structures", None)
        if cache is None:  # unpickled from a version without the slot
            cache = {}
            object.__setattr__(self, "_structures", cache)
        if key not in cache:
            cache[key] = make()
        return cache[key]

    @property
    def is_deterministic(self) -> bool:
        """True when every ``p(.|s,a)`` is a point mass."""
        return bool(np.all(np.diff(self._P.indptr) == 1))

    def dense_transitions(self) -> np.ndarray:
        """Dense ``(S, A, S)`` copy of ``P`` (small models only)."""
        S, A = self.shape
        return self._P.toarray().reshape(S, A, S)

    def reward_range(self) -> tuple[float, float]:
        """Smallest and largest reward that can occur (over support of ``P``)."""
        r = self.reward_per_transition()
        return float(r.min()), float(r.max())

    # ------------------------------------------------------------------ copies
    def with_reward(self, r: Any) -> TabularMDP:
        """Same dynamics, prior and initial distribution, new reward."""
        return TabularMDP(self._P, r, self._prior, self._initial, info=self._info)

    def with_prior(self, prior: Any) -> TabularMDP:
        """Same model with another prior policy."""
        rr: Any = self._reward if self._transition_reward is None else self._reward_matrix()
        return TabularMDP(self._P, rr, prior, self._initial, info=self._info)

    def with_initial(self, initial: Any) -> TabularMDP:
        rr: Any = self._reward if self._transition_reward is None else self._reward_matrix()
        return TabularMDP(self._P, rr, self._prior, initial, info=self._info)

    def _reward_matrix(self) -> sp.csr_matrix:
        assert self._transition_reward is not None
        return sp.csr_matrix(
            (self._transition_reward, self._P.indices, self._P.indptr), shape=self._P.shape
        )

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | Path) -> None:
        """Save to a ``.npz`` file (``info`` must be JSON-serialisable)."""
        import json

        tr = self._transition_reward
        np.savez_compressed(
            path,
            data=self._P.data,
            indices=self._P.indices,
            indptr=self._P.indptr,
            shape=np.array(self._P.shape),
            reward=self._reward,
            transition_reward=tr if tr is not None else np.zeros(0),
            has_transition_reward=np.array(tr is not None),
            prior=self._prior,
            initial=self._initial,
            info=np.array(json.dumps(self._info, default=_json_default)),
        )

    @classmethod
    def load(cls, path: str | Path) -> TabularMDP:
        """Load a model written by :meth:`save`."""
        import json

        with np.load(path, allow_pickle=False) as z:
            P = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=tuple(z["shape"]))
            r: Any = z["reward"]
            if bool(z["has_transition_reward"]):
                r = sp.csr_matrix(
                    (z["transition_reward"], z["indices"], z["indptr"]), shape=tuple(z["shape"])
                )
            return cls(P, r, z["prior"], z["initial"], info=json.loads(str(z["info"])))

    def __repr__(self) -> str:
        name = self._info.get("name")
        extra = f" {name!r}" if name else ""
        kind = "r(s,a,s')" if self._transition_reward is not None else "r(s,a)"
        return (
            f"TabularMDP{extra}(S={self.n_states}, A={self.n_actions}, nnz={self.nnz}, {kind}, "
            f"{'deterministic' if self.is_deterministic else 'stochastic'})"
        )


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialise {type(obj).__name__}")
