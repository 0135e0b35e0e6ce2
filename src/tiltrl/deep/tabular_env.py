"""A gymnasium environment simulating a ``TabularMDP`` with one-hot observations.

Lets the deep agents (stable-baselines3 interface) run on a model whose exact solution
``tiltrl.solve`` knows — the correctness tests compare EVAL's ``theta`` and policy with
the controlled Perron solution (Arriojas et al., PRR 5, 023085, 2023) and SoftDQN's Q
with discounted soft value iteration (Haarnoja et al., ICML 2017). Convention of
DESIGN.md §1: rows ``s*A + a`` of the CSR ``P`` hold ``p(.|s,a)``; the reward of a step
is ``r(s,a,s')`` (or ``r(s,a)``). The model is continuing (never ``terminated``) unless
``terminal_states`` are given; wrap with ``gymnasium.wrappers.TimeLimit`` for truncated
episodes, which bootstrap.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from tiltrl.mdp import TabularMDP


class TabularEnv(gym.Env[np.ndarray, np.int64]):
    """One-hot observation of ``s``; ``step(a)`` samples ``s' ~ p(.|s,a)``.

    ``terminal_states``: states in which every action ends the episode
    (``terminated=True``) after paying its reward ``r(s,a,s')`` (``s'`` is still sampled
    and observed); the next episode starts from ``mdp.initial``. For a model whose
    ``terminal_states`` lead to the initial law (a gridworld's holes and goal, which reset
    to ``S``), the episodic env with restarts is the continuing model cut into episodes.
    """

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, mdp: TabularMDP, terminal_states: Any = ()) -> None:
        self.mdp = mdp
        S, A = mdp.shape
        self._terminal = np.zeros(S, dtype=bool)
        terminal = np.asarray(terminal_states, dtype=np.int64).reshape(-1)
        bad = terminal[(terminal < 0) | (terminal >= S)]
        if bad.size:
            raise ValueError(f"terminal state {int(bad[0])} is not a state of 0..{S - 1}")
        self._terminal[terminal] = True
        self.observation_space = gym.spaces.Box(0.0, 1.0, shape=(S,), dtype=np.float32)
        self.action_space = gym.spaces.Discrete(A)
        P = mdp.P
        self._indptr = np.asarray(P.indptr)
        self._indices = np.asarray(P.indices)
        self._cdf = np.array(P.data, dtype=np.float64)
        self._rewards = np.asarray(mdp.reward_per_transition(), dtype=np.float64)
        for row in range(P.shape[0]):
            lo, hi = self._indptr[row], self._indptr[row + 1]
            self._cdf[lo:hi] = np.cumsum(self._cdf[lo:hi])
        self._initial = np.cumsum(mdp.initial)
        self._state = 0

    def _obs(self) -> np.ndarray:
        obs = np.zeros(self.mdp.n_states, dtype=np.float32)
        obs[self._state] = 1.0
        return obs

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        u = self.np_random.random() * self._initial[-1]
        self._state = int(
            min(np.searchsorted(self._initial, u, side="right"), len(self._initial) - 1)
        )
        return self._obs(), {"state": self._state}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        terminated = bool(self._terminal[self._state])
        row = self._state * self.mdp.n_actions + int(action)
        lo, hi = self._indptr[row], self._indptr[row + 1]
        u = self.np_random.random() * self._cdf[hi - 1]
        k = lo + min(int(np.searchsorted(self._cdf[lo:hi], u, side="right")), hi - lo - 1)
        self._state = int(self._indices[k])
        reward = float(self._rewards[k])
        return self._obs(), reward, terminated, False, {"state": self._state}
