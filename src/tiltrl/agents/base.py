"""The vectorised tabular learner: ``K`` independent tables updated by one numpy step.

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``beta > 0``; prior policy
``pi0``; per-step objective ``r - (1/beta) log(pi/pi0)``. The soft policy of a table ``Q``
is ``pi(a|s) ∝ pi0(a|s) exp(beta Q(s,a))`` (Boltzmann exploration from the soft policy,
Haarnoja et al. 2017; Fox, Pakman and Tishby, "Taming the noise in reinforcement learning
via soft updates", UAI 2016).

All ``K`` tables live in one array of shape ``(A, K*S)`` (action-major, seed-major
columns): the rows of the ``K`` current states are gathered with one ``take`` along the
column axis into an ``(A, K)`` block whose reductions over actions are cheap, and the
updated entries are written with one scatter at ``a*K*S + k*S + s``. The entries touched
in one step belong to different seeds, so they never collide. Each update also returns
the (unnormalised) soft-policy weights of the ``K`` next states *after* the update, which
the driver uses for Boltzmann exploration without recomputing them.

Per step the update is a fixed, small number of numpy calls on ``K``-element arrays (at
``K`` in the hundreds each call costs about a microsecond, so the *number* of calls sets the
speed): a prior that does not depend on the state is added as one ``(A, 1)`` column instead
of being gathered, per-visit step sizes are looked up in a table of ``alpha(n)`` (the same
floating-point values as evaluating the schedule), and the weights of a next state that
equals the updated state are patched through flat indices. None of this changes a result:
every number is computed by the same floating-point operations in the same order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiltrl.agents.schedules import StepSize

__all__ = ["TabularLearner", "row_logsumexp"]


def row_logsumexp(x: np.ndarray) -> np.ndarray:
    """``log sum exp`` over axis 0 of an ``(A, K)`` array (max-shifted)."""
    m = x.max(axis=0)
    return m + np.log(np.exp(x - m).sum(axis=0))


class TabularLearner:
    """Shared state and helpers of the tabular learners (not used on its own).

    Parameters
    ----------
    n_states, n_actions, n_seeds
        ``S``, ``A``, ``K``.
    beta
        Inverse temperature.
    prior
        Prior policy ``(S, A)``; every state needs positive mass.
    step
        Step-size schedule of the table.
    """

    #: algorithm name used by :func:`tiltrl.agents.learn`
    name = "base"
    #: average-reward learners have a ``theta``
    average_reward = False
    #: ``"q"``: the table holds soft Q-values; ``"log_u"``: it holds ``log u``
    table_kind = "q"

    def __init__(self, n_states: int, n_actions: int, n_seeds: int, beta: float,
                 prior: np.ndarray, step: StepSize) -> None:
        self.S, self.A, self.K = int(n_states), int(n_actions), int(n_seeds)
        self.beta = float(beta)
        self.prior = np.asarray(prior, dtype=np.float64)
        with np.errstate(divide="ignore"):
            self.log_prior = np.log(self.prior)
        # avoid -inf - (-inf) in the max shift: a zero-prior action gets a huge negative
        self._log_prior_safe = np.maximum(self.log_prior, -1e300)
        self.step_size = step
        self._n = self.K * self.S
        self.table = np.zeros((self.A, self._n))
        #: visits of every entry (``lr_decay="visits"``), integer counts
        self.visits = (np.zeros(self.A * self._n, dtype=np.int64) if step.decay == "visits"
                       else None)
        #: ``alpha(n)`` for ``n = 0, 1, ...`` (grown on demand; ``"visits"``/``"steps"``)
        self._alpha_table = np.empty(0)
        self._row_base = np.arange(self.K, dtype=np.int64) * self.S
        self._col_offset = np.arange(self.A, dtype=np.int64) * self._n
        self._lpT = np.ascontiguousarray(self._log_prior_safe.T)  # (A, S)
        lp = self._log_prior_safe
        #: ``log pi0`` as an ``(A, 1)`` column when the prior is the same in every state
        self._lp_col: np.ndarray | None = (
            np.ascontiguousarray(lp[0][:, None]) if bool(np.all(lp == lp[0])) else None
        )
        self._flat = self.table.reshape(-1)
        #: ``beta`` for soft Q tables, 1 for ``log u`` tables
        self._scale = self.beta
        self.n_updates = 0

    # ------------------------------------------------------------------ views
    def values(self) -> np.ndarray:
        """The table as ``(K, S, A)`` (a copy)."""
        return np.ascontiguousarray(self.table.reshape(self.A, self.K, self.S).transpose(1, 2, 0))

    def q(self) -> np.ndarray:
        """Soft Q-values ``(K, S, A)``."""
        return self.values()

    def initialise(self, q: Any) -> None:
        """Warm start: set the table from soft Q-values ``(S, A)`` or ``(K, S, A)``.

        A ``log u`` table (U-learning) is set to ``beta * q`` (``u = exp(beta Q)``).
        """
        arr = np.asarray(q, dtype=np.float64)
        if arr.shape not in ((self.S, self.A), (self.K, self.S, self.A)):
            raise ValueError(f"initial Q must have shape (S, A) = {(self.S, self.A)} or "
                             f"(K, S, A) = {(self.K, self.S, self.A)}, got {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("initial Q has non-finite entries")
        arr = np.broadcast_to(arr, (self.K, self.S, self.A))
        scale = self.beta if self.table_kind == "log_u" else 1.0
        self.table[...] = (scale * arr).transpose(2, 0, 1).reshape(self.A, self._n)

    def policy(self) -> np.ndarray:
        """Soft policy ``pi ∝ pi0 exp(beta Q)`` (``∝ pi0 u`` for U-learning), ``(K, S, A)``."""
        x = self._log_prior_safe[None] + self._scale * self.values()
        x = x - x.max(axis=-1, keepdims=True)
        p = np.exp(x)
        return p / p.sum(axis=-1, keepdims=True)

    @property
    def theta(self) -> np.ndarray | None:
        """Reward-rate estimates ``(K,)`` (average-reward learners), else ``None``."""
        return None

    # ------------------------------------------------------------------ helpers
    def index(self, s: np.ndarray, a: np.ndarray) -> np.ndarray:
        """Flat indices of the entries ``(k, s_k, a_k)``."""
        return self._col_offset[a] + self._row_base + s

    def _alpha_upto(self, n: int) -> np.ndarray:
        """The table of ``alpha(0..m)`` with ``m >= n`` (doubling when it grows)."""
        tab = self._alpha_table
        if n >= tab.size:
            size = max(2 * tab.size, n + 1, 1024)
            tab = np.asarray(self.step_size(np.arange(size, dtype=np.float64)),
                             dtype=np.float64)
            self._alpha_table = tab
        return tab

    def _alpha(self, idx: np.ndarray) -> Any:
        """Step sizes of the entries ``idx`` (advancing their visit counts)."""
        if self.visits is not None:
            n = self.visits[idx]
            self.visits[idx] = n + 1
            try:
                return self._alpha_table[n]
            except IndexError:
                return self._alpha_upto(int(n.max()))[n]
        if self.step_size.decay == "steps":
            return self._alpha_upto(self.n_updates)[self.n_updates]
        return self.step_size.lr

    def _next_exponent(self, s_next: np.ndarray) -> np.ndarray:
        """``log pi0(.|s') + scale * table(s', .)`` for the ``K`` next states, ``(A, K)``."""
        x = np.take(self.table, self._row_base + s_next, axis=1)
        if self._scale != 1.0:
            x *= self._scale
        if self._lp_col is not None:
            x += self._lp_col
        else:
            x += np.take(self._lpT, s_next, axis=1)
        return x

    def behaviour_weights(self, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Unnormalised soft-policy weights ``(A, K)`` of the states ``s`` and their sums."""
        x = self._next_exponent(s)
        e = np.exp(x - x.max(axis=0))
        return e, e.sum(axis=0)

    def _soft_next(self, s_next: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                       np.ndarray]:
        """``(x, m, e, z)``: exponent, its max, ``exp(x - m)`` and ``sum(e)`` over actions.

        ``(m + log z) / scale`` is the soft value ``V(s')`` (or ``log chi(s')``).
        """
        x = self._next_exponent(s_next)
        m = x.max(axis=0)
        e = x - m
        np.exp(e, out=e)
        return x, m, e, e.sum(axis=0)

    def _patch(self, s: np.ndarray, a: np.ndarray, s_next: np.ndarray, x: np.ndarray,
               m: np.ndarray, e: np.ndarray, z: np.ndarray, step: np.ndarray) -> np.ndarray:
        """Bring the next-state weights ``e`` up to date where ``s' == s`` (the updated
        entry is in the next state's row); returns the new sums."""
        loop = np.flatnonzero(s_next == s)
        if loop.size == 0:
            return z
        j = a[loop] * self.K + loop  # flat positions (a_k, k) in the (A, K) blocks
        st = step if np.ndim(step) == 0 else step[loop]
        ef = e.reshape(-1)
        old = ef[j]
        if self._scale != 1.0:
            st = self._scale * st
        new = np.exp(x.reshape(-1)[j] + st - m[loop])
        ef[j] = new
        z[loop] += new - old
        return z

    def update(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
               done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """One update of all ``K`` tables from the transitions ``(s, a, r, s_next)``.

        Returns the soft-policy weights ``(A, K)`` of ``s_next`` after the update and their
        sums (for Boltzmann exploration from ``s_next``).
        """
        raise NotImplementedError

    def state_dict(self) -> dict[str, np.ndarray]:
        """Arrays that define the learner (for saving)."""
        out = {"table": self.values()}
        if self.visits is not None:
            out["visits"] = self.visits.copy()
        return out
