"""Vectorised, seeded samplers: ``K`` copies of an environment stepped in lockstep.

Convention (``shared/DESIGN.md`` §1): transitions are CSR ``(S*A, S)`` with row ``s*A + a``
holding ``p(.|s,a)``; rewards are ``r(s,a,s')`` (per non-zero of ``P``). Tabular models are
continuing (a grid world's hole or goal resets inside the model), so an
:class:`MDPSampler` never reports a terminal transition.

:class:`MDPSampler` draws the next state of all ``K`` copies with one ``searchsorted`` on
the model's cumulative probabilities: every non-zero of ``P`` gets the key
``row + F(s'|row)`` (``F`` the within-row cumulative probability, the row's last key set to
exactly ``row + 1``), so ``searchsorted(keys, row + u, side="right")`` with ``u ~ U[0,1)``
picks ``s'`` with probability ``p(s'|row)``. The key of row ``r`` is stored in float64: the
sampled probabilities are exact up to the rounding of ``r + F`` (about ``r * 2.2e-16``,
i.e. below ``1e-10`` for models with fewer than ~10^6 state-action pairs).
When every row has at most :data:`DENSE_MAX_OUTCOMES` outcomes the same search is done
without ``searchsorted``: the index is the row's first entry plus the number of the row's
keys (all but its last) that are ``<= row + u`` -- the count ``searchsorted`` returns,
restricted to the row, so the same outcome for the same ``u`` -- with one gather and one
comparison per possible outcome.

:class:`GymSampler` steps ``K`` gymnasium discrete environments (a Python loop over the
copies: gymnasium's own ``step`` is per-environment); the learners' updates stay
vectorised. A terminated episode is reset: with ``terminal="reset"`` (default, the
convention of :func:`tiltrl.from_gymnasium`) the learner bootstraps from the reset state,
with ``terminal="cut"`` the transition is reported terminal (no bootstrap).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiltrl.mdp import TabularMDP

__all__ = ["DENSE_MAX_OUTCOMES", "MDPSampler", "GymSampler", "make_sampler"]

#: rows with at most this many outcomes use the comparison search (no searchsorted)
DENSE_MAX_OUTCOMES = 8


class MDPSampler:
    """``K`` seeded copies of a :class:`~tiltrl.mdp.TabularMDP`, sampled in lockstep.

    Parameters
    ----------
    mdp
        The model to sample.
    n_copies
        ``K``.
    rng
        A ``numpy.random.Generator`` (or a seed).
    """

    def __init__(self, mdp: TabularMDP, n_copies: int, rng: Any = None) -> None:
        if not isinstance(mdp, TabularMDP):
            raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
        if int(n_copies) < 1:
            raise ValueError(f"the number of copies must be >= 1, got {n_copies!r}")
        self.mdp = mdp
        self.n_copies = int(n_copies)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.n_states, self.n_actions = mdp.shape
        P = mdp.P
        rows = mdp.row_index()
        cum = np.cumsum(P.data)
        start = np.repeat(cum[P.indptr[:-1]] - P.data[P.indptr[:-1]], np.diff(P.indptr))
        within = cum - start
        within[P.indptr[1:] - 1] = 1.0  # the last outcome of each row closes it exactly
        self._keys = rows + np.minimum(within, 1.0)
        self._last = P.indptr[1:] - 1
        deg = np.diff(P.indptr)
        self._start = np.asarray(P.indptr[:-1], dtype=np.int64)
        #: ``thresholds[j][row]``: key of the row's ``j``-th outcome (``+inf`` past its
        #: second-to-last one); ``None`` when some row has too many outcomes
        self._thresholds: list[np.ndarray] | None = None
        if int(deg.max(initial=1)) <= DENSE_MAX_OUTCOMES:
            self._thresholds = []
            for j in range(int(deg.max(initial=1)) - 1):
                has = j < deg - 1
                th = np.full(deg.size, np.inf)
                th[has] = self._keys[self._start[has] + j]
                self._thresholds.append(th)
        self._next = np.asarray(P.indices, dtype=np.int64)
        self._reward = np.asarray(mdp.reward_per_transition(), dtype=np.float64)
        init_cum = np.cumsum(mdp.initial)
        init_cum[-1] = 1.0
        self._init_cum = init_cum
        self.terminal_possible = False

    def reset(self) -> np.ndarray:
        """Initial states of all copies, drawn from ``mdp.initial``; shape ``(K,)``."""
        u = self.rng.random(self.n_copies)
        return np.searchsorted(self._init_cum, u, side="right").astype(np.int64)

    def step(
        self, s: np.ndarray, a: np.ndarray, u: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, None]:
        """One transition of every copy.

        Returns ``(s_next, r, s_learn, done)``: the next state, the reward ``r(s,a,s')``,
        the state to bootstrap from (here ``s_next``) and ``None`` (never terminal).
        ``u`` (``(K,)`` uniforms) may be passed to reuse pre-drawn random numbers.
        """
        row = s * self.n_actions + a
        if u is None:
            u = self.rng.random(self.n_copies)
        key = row + u
        if self._thresholds is None:
            idx = np.searchsorted(self._keys, key, side="right")
            np.minimum(idx, self._last[row], out=idx)
        else:
            idx = self._start[row]
            for th in self._thresholds:
                idx += th[row] <= key
        s_next = self._next[idx]
        return s_next, self._reward[idx], s_next, None


class GymSampler:
    """``K`` copies of a gymnasium environment with discrete observations and actions.

    Parameters
    ----------
    env
        A gymnasium env id (made ``K`` times with ``gymnasium.make(env, **make_kwargs)``)
        or a callable returning a fresh env.
    n_copies
        ``K``.
    rng
        Seeds of the copies are drawn from it.
    terminal
        ``"reset"``: bootstrap from the reset state after a terminated episode (the
        continuing model of ``from_gymnasium(terminal="reset")``); ``"cut"``: report the
        transition as terminal (no bootstrap). A truncation (time limit) only resets:
        the learner bootstraps from the true next state.
    """

    def __init__(self, env: Any, n_copies: int, rng: Any = None, *, terminal: str = "reset",
                 **make_kwargs: Any) -> None:
        import gymnasium as gym

        if terminal not in ("reset", "cut"):
            raise ValueError(f"terminal must be 'reset' or 'cut', got {terminal!r}")
        if int(n_copies) < 1:
            raise ValueError(f"the number of copies must be >= 1, got {n_copies!r}")
        self.n_copies = int(n_copies)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        make = (lambda: gym.make(env, **make_kwargs)) if isinstance(env, str) else env
        self.envs = [make() for _ in range(self.n_copies)]
        obs_space, act_space = self.envs[0].observation_space, self.envs[0].action_space
        if not (isinstance(obs_space, gym.spaces.Discrete)
                and isinstance(act_space, gym.spaces.Discrete)):
            raise ValueError("GymSampler needs discrete observation and action spaces, got "
                             f"{obs_space} and {act_space}")
        self.n_states, self.n_actions = int(obs_space.n), int(act_space.n)
        self.terminal = terminal
        self.terminal_possible = terminal == "cut"
        self._seeds = self.rng.integers(0, 2**31 - 1, size=self.n_copies)
        self._first = True

    def reset(self) -> np.ndarray:
        out = np.empty(self.n_copies, dtype=np.int64)
        for k, e in enumerate(self.envs):
            seed = int(self._seeds[k]) if self._first else None
            out[k] = int(e.reset(seed=seed)[0])
        self._first = False
        return out

    def step(
        self, s: np.ndarray, a: np.ndarray, u: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        K = self.n_copies
        s_next = np.empty(K, dtype=np.int64)
        s_learn = np.empty(K, dtype=np.int64)
        r = np.empty(K)
        done = np.zeros(K, dtype=bool) if self.terminal == "cut" else None
        for k, e in enumerate(self.envs):
            obs, rew, term, trunc, _ = e.step(int(a[k]))
            r[k] = float(rew)
            s_learn[k] = int(obs)
            if term or trunc:
                s_next[k] = int(e.reset()[0])
                if term:
                    if done is not None:
                        done[k] = True
                    else:
                        s_learn[k] = s_next[k]
            else:
                s_next[k] = int(obs)
        return s_next, r, s_learn, done


def make_sampler(env: Any, n_copies: int, rng: Any = None, **kwargs: Any) -> Any:
    """An :class:`MDPSampler` for a :class:`~tiltrl.mdp.TabularMDP`, else a :class:`GymSampler`."""
    if isinstance(env, TabularMDP):
        if kwargs:
            raise ValueError(f"unexpected sampler options for a TabularMDP: {sorted(kwargs)}")
        return MDPSampler(env, n_copies, rng)
    return GymSampler(env, n_copies, rng, **kwargs)
