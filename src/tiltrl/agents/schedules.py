"""Step-size schedules of the stochastic-approximation learners.

Robbins-Monro conditions (sum alpha = inf, sum alpha^2 < inf) hold for the decaying
schedules with ``1/2 < power <= 1``; a constant step size converges exactly only where the
targets are noise-free (deterministic dynamics), otherwise to a neighbourhood whose size
scales with ``lr``. The per-visit form (Even-Dar and Mansour, "Learning rates for
Q-learning", JMLR 2003: polynomial rates ``1/n^w``, ``1/2 < w < 1``, converge much faster
than ``1/n`` for discounted problems) decays each pair's step with its own visit count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["StepSize"]

_KINDS = ("constant", "visits", "steps")


@dataclass(frozen=True)
class StepSize:
    """``alpha(n) = max(min_lr, lr * (1 + n / tau) ** -power)``.

    ``decay="constant"``: ``alpha = lr``; ``"visits"``: ``n`` = visits of the updated pair
    before this one; ``"steps"``: ``n`` = global step count.
    """

    lr: float
    decay: str = "constant"
    power: float = 0.8
    tau: float = 1.0
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lr) and 0.0 < self.lr <= 1.0):
            raise ValueError(f"lr must be in (0, 1], got {self.lr!r}")
        if self.decay not in _KINDS:
            raise ValueError(f"lr_decay must be one of {_KINDS}, got {self.decay!r}")
        if not (math.isfinite(self.power) and self.power > 0):
            raise ValueError(f"lr_power must be positive, got {self.power!r}")
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ValueError(f"lr_tau must be positive, got {self.tau!r}")
        if not (0.0 <= self.min_lr <= self.lr):
            raise ValueError(f"lr_min must be in [0, lr], got {self.min_lr!r}")

    def __call__(self, n: np.ndarray | float) -> np.ndarray | float:
        if self.decay == "constant":
            return self.lr
        alpha = self.lr * (1.0 + np.asarray(n, dtype=np.float64) / self.tau) ** -self.power
        return np.maximum(alpha, self.min_lr) if self.min_lr > 0 else alpha
