"""Tabular soft Q-learning (discounted), vectorised over seeds.

Haarnoja, Tang, Abbeel and Levine, "Reinforcement learning with deep energy-based
policies" (ICML 2017); Fox, Pakman and Tishby, "Taming the noise in reinforcement learning
via soft updates" (UAI 2016).

Convention (``shared/DESIGN.md`` §1): rewards, ``beta > 0``, prior ``pi0``. The update
from a transition ``(s, a, r, s')`` is the one-sample form of the fixed-dynamics soft
Bellman equation (the expectation of ``V``, not log-E-exp, DESIGN.md §5)::

    V(s')   = (1/beta) log sum_a' pi0(a'|s') exp(beta Q(s',a'))
    Q(s,a) += alpha * (r + gamma (1 - done) V(s') - Q(s,a))

Its fixed point is ``tiltrl.solve(mdp, beta, gamma=gamma).q`` (fixed dynamics).
"""

from __future__ import annotations

import numpy as np

from tiltrl.agents.base import TabularLearner
from tiltrl.agents.schedules import StepSize

__all__ = ["SoftQLearner"]


class SoftQLearner(TabularLearner):
    """``K`` discounted soft Q-learners in lockstep (see the module docstring)."""

    name = "soft_q"

    def __init__(self, n_states: int, n_actions: int, n_seeds: int, beta: float,
                 prior: np.ndarray, step: StepSize, *, gamma: float) -> None:
        super().__init__(n_states, n_actions, n_seeds, beta, prior, step)
        self.gamma = float(gamma)

    def _step(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
              done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray, np.ndarray, np.ndarray]:
        """Shared part: ``(idx, y, x, m, e, z)`` with ``y = r + gamma (1-done) V(s')``."""
        idx = self.index(s, a)
        x, m, e, z = self._soft_next(s_next)
        v = np.log(z)
        v += m
        v /= self.beta
        if done is not None:
            v = np.where(done, 0.0, v)
        v *= self.gamma
        v += r
        return idx, v, x, m, e, z

    def update(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
               done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        idx, y, x, m, e, z = self._step(s, a, r, s_next, done)
        flat = self._flat
        q_sa = flat[idx]
        y -= q_sa
        step = self._alpha(idx) * y
        flat[idx] = q_sa + step
        self.n_updates += 1
        return e, self._patch(s, a, s_next, x, m, e, z, step)
