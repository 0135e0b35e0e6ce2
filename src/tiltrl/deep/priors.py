"""Prior policies ``pi0(a|s)`` for the deep agents (DESIGN.md §1 convention).

A prior is given as ``None`` (uniform), an array of ``A`` probabilities (state
independent) or a callable ``obs_tensor -> (B, A)`` tensor of probabilities (state
dependent; must be picklable with cloudpickle for ``save``/``load``). It enters the soft
value ``V = (1/beta) log sum_a pi0 exp(beta Q)`` (Haarnoja et al. 2017) and the
eigen-policy ``pi ∝ pi0 u`` of EVAL (Arriojas et al., PRR 5, 023085, 2023; Adamczyk et
al., arXiv 2501.09770).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch as th
from torch import nn

PriorSpec = Any  # None | array-like of shape (A,) | Callable[[th.Tensor], th.Tensor]


class LogPrior(nn.Module):
    """``forward(obs) -> log pi0(.|s)`` of shape ``(B, A)``, normalised."""

    log_vec: th.Tensor

    def __init__(self, prior: PriorSpec, n_actions: int) -> None:
        super().__init__()
        self.n_actions = int(n_actions)
        self._fn: Callable[[th.Tensor], th.Tensor] | None = None
        vec = np.full(self.n_actions, 1.0 / self.n_actions)
        if callable(prior):
            self._fn = prior
        elif prior is not None:
            vec = np.asarray(prior, dtype=np.float64).reshape(-1)
            if vec.shape != (self.n_actions,):
                raise ValueError(f"prior must have {self.n_actions} entries, got {vec.shape}")
            if np.any(vec < 0) or not np.isfinite(vec).all() or vec.sum() <= 0:
                raise ValueError("prior must be non-negative, finite and not all zero")
            vec = vec / vec.sum()
        with np.errstate(divide="ignore"):
            log_vec = np.log(vec)
        self.register_buffer("log_vec", th.as_tensor(log_vec, dtype=th.float32))

    def forward(self, obs: th.Tensor) -> th.Tensor:
        batch = obs.shape[0]
        if self._fn is None:
            return self.log_vec.expand(batch, self.n_actions)
        p = self._fn(obs).to(th.float32)
        return th.log(p) - th.log(p.sum(dim=-1, keepdim=True))
