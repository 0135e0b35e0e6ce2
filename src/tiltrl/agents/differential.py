"""Differential (average-reward) soft Q-learning, vectorised over seeds.

Wan, Naik and Sutton, "Learning and planning in average-reward Markov decision
processes" (ICML 2021): differential Q-learning, here with the entropy-regularised
(soft) value. Convention (``shared/DESIGN.md`` §1): rewards, ``beta > 0``, prior ``pi0``;
``theta`` is the reward rate. From a transition ``(s, a, r, s')``::

    V(s')   = (1/beta) log sum_a' pi0(a'|s') exp(beta Q(s',a'))
    delta   = r - theta + V(s') - Q(s,a)
    Q(s,a) += alpha * delta
    theta  += eta * alpha * delta

Its fixed point is the fixed-dynamics optimum ``Q + theta = r + E_{s'}[V(s')]``
(``tiltrl.solve(mdp, beta, dynamics="fixed")``), with ``Q`` defined up to one additive
constant (set by the coupling of the two updates, not normalised). Continuing tasks only.
"""

from __future__ import annotations

import numpy as np

from tiltrl.agents.base import TabularLearner
from tiltrl.agents.schedules import StepSize

__all__ = ["DifferentialSoftQLearner"]


class DifferentialSoftQLearner(TabularLearner):
    """``K`` differential soft Q-learners in lockstep (see the module docstring).

    ``theta_lr`` is ``eta * lr``: the step of ``theta`` is ``eta * alpha`` with ``alpha``
    the step of the updated pair.
    """

    name = "differential_soft_q"
    average_reward = True

    def __init__(self, n_states: int, n_actions: int, n_seeds: int, beta: float,
                 prior: np.ndarray, step: StepSize, *, theta_lr: float,
                 theta0: float = 0.0) -> None:
        super().__init__(n_states, n_actions, n_seeds, beta, prior, step)
        if not (np.isfinite(theta_lr) and theta_lr > 0):
            raise ValueError(f"theta_lr must be positive, got {theta_lr!r}")
        self.eta = float(theta_lr) / step.lr
        self._theta = np.full(self.K, float(theta0))

    @property
    def theta(self) -> np.ndarray:
        return self._theta.copy()

    def update(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
               done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if done is not None and np.any(done):
            raise ValueError("differential soft Q-learning needs a continuing task "
                             "(a terminal transition was sampled)")
        idx = self.index(s, a)
        x, m, e, z = self._soft_next(s_next)
        flat = self._flat
        q_sa = flat[idx]
        step = self._alpha(idx) * (r - self._theta + (m + np.log(z)) / self.beta - q_sa)
        flat[idx] = q_sa + step
        self._theta += self.eta * step
        self.n_updates += 1
        return e, self._patch(s, a, s_next, x, m, e, z, step)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = super().state_dict()
        out["theta"] = self._theta.copy()
        return out
