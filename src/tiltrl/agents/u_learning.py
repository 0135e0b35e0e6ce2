"""U-learning (tabular EVAL): the Perron eigenvector equation learned from transitions.

Arriojas, Adamczyk, Tiomkin and Kulkarni, "Entropy regularized reinforcement learning
using large deviation theory", Phys. Rev. Research 5, 023085 (2023), and the deep
version "EVAL" / bootstrapped eigenvector learning (arXiv 2501.09770).

Convention (``shared/DESIGN.md`` §1): rewards, ``beta > 0``, prior ``pi0``. The right
eigenvector ``u`` of the tilted matrix satisfies, for every pair ``(s, a)``,

    rho u(s,a) = E_{s'~p(.|s,a)}[ exp(beta r(s,a,s')) chi(s') ],
    chi(s') = sum_a' pi0(a'|s') u(s',a'),

and ``theta = log(rho) / beta`` is the optimal reward rate. The learner keeps
``l = log u`` (``(K, S, A)``) and ``lam = log rho`` (``(K,)``) in log space. From a
transition ``(s, a, r, s')`` (any behaviour policy: the equation averages over ``s'``
only) it forms the log ratio of the one-sample target to the current value::

    delta = beta r + log chi(s') - lam - l(s,a)

and updates

* ``dynamics="controlled"`` (the eigenproblem itself; average in ``u``-space, computed in
  log space): ``l(s,a) += log(1 - alpha + alpha exp(delta))``, i.e.
  ``u <- (1 - alpha) u + alpha exp(beta r) chi(s') / rho``. Its fixed point is the Perron
  solution, ``tiltrl.solve(mdp, beta, dynamics="controlled")`` -- for stochastic dynamics
  the optimistic controlled optimum (DESIGN.md §2).
* ``dynamics="fixed"`` (stochastic dynamics, the correction of DESIGN.md §2 in sample
  form): with the corrected reward ``r' = r + KL(p||q)/beta`` and reference dynamics
  ``q ∝ p / chi`` the eigen-equation becomes exactly ``l(s,a) + lam = beta r(s,a) +
  E_p[log chi(s')]`` (insert ``q`` and ``r'``: ``sum_s' q e^{beta r'} chi = exp(beta r +
  E_p log chi)``), whose one-sample stochastic approximation is the log-space step
  ``l(s,a) += alpha * delta``. Its fixed point is
  ``tiltrl.solve(mdp, beta, dynamics="fixed")``. For deterministic dynamics both coincide.

``theta`` has its own step size: ``lam += eta * step`` with ``eta = theta_lr / lr`` and
``step`` the change of ``l(s,a)`` (Wan-Naik-Sutton coupling: ``step = alpha delta`` for the
fixed form, ``alpha (exp(delta) - 1)`` to first order for the controlled one, whose
log form has an ``O(alpha)`` Jensen bias under stochastic dynamics that vanishes with a
decaying step size). The equations are invariant under ``l -> l + c``: the scale of ``u`` is
fixed by normalisation, every ``normalise_every`` updates and at the end --
``normalise="mean"`` makes ``l`` mean-zero over the pairs of each seed, ``normalise=(s, a)``
sets ``l(s, a) = 0`` at a reference pair. The normalisation never changes an update.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiltrl.agents.base import TabularLearner
from tiltrl.agents.schedules import StepSize

__all__ = ["ULearner"]


class ULearner(TabularLearner):
    """``K`` U-learners in lockstep (see the module docstring); the table holds ``log u``."""

    name = "u_learning"
    average_reward = True
    table_kind = "log_u"

    def __init__(self, n_states: int, n_actions: int, n_seeds: int, beta: float,
                 prior: np.ndarray, step: StepSize, *, theta_lr: float,
                 dynamics: str = "controlled", normalise: Any = "mean",
                 normalise_every: int = 1000, theta0: float = 0.0) -> None:
        super().__init__(n_states, n_actions, n_seeds, beta, prior, step)
        self._scale = 1.0
        if dynamics not in ("controlled", "fixed"):
            raise ValueError(f"dynamics must be 'controlled' or 'fixed', got {dynamics!r}")
        if not (np.isfinite(theta_lr) and theta_lr > 0):
            raise ValueError(f"theta_lr must be positive, got {theta_lr!r}")
        if normalise != "mean":
            try:
                ref_s, ref_a = (int(x) for x in normalise)
            except (TypeError, ValueError) as exc:
                raise ValueError(
                    f"normalise must be 'mean' or a reference pair (s, a), got {normalise!r}"
                ) from exc
            if not (0 <= ref_s < self.S and 0 <= ref_a < self.A):
                raise ValueError(f"reference pair {normalise!r} is outside (S, A) = "
                                 f"{(self.S, self.A)}")
            self._ref: int | None = ref_s * self.A + ref_a
        else:
            self._ref = None
        if int(normalise_every) < 1:
            raise ValueError(f"normalise_every must be >= 1, got {normalise_every!r}")
        self.dynamics = dynamics
        self.normalise_every = int(normalise_every)
        self.eta = float(theta_lr) / step.lr
        self._lam = np.full(self.K, self.beta * float(theta0))
        self._lr = float(step.lr)
        with np.errstate(divide="ignore"):
            self._log_lr = float(np.log(step.lr))
            self._log1m_lr = float(np.log1p(-step.lr))
        self._log_tabs: tuple[np.ndarray, np.ndarray] = (np.empty(0), np.empty(0))

    # ------------------------------------------------------------------ views
    @property
    def theta(self) -> np.ndarray:
        """``log(rho) / beta`` per seed."""
        return self._lam / self.beta

    @property
    def log_rho(self) -> np.ndarray:
        return self._lam.copy()

    def log_u(self) -> np.ndarray:
        """Normalised ``log u`` ``(K, S, A)``."""
        self.normalise()
        return self.values()

    def q(self) -> np.ndarray:
        """Differential soft values ``Q = log(u) / beta`` ``(K, S, A)`` (normalised scale)."""
        return self.log_u() / self.beta

    def normalise(self) -> None:
        """Fix the scale of ``u`` per seed (mean-zero ``log u`` or ``log u(ref) = 0``)."""
        t = self.table.reshape(self.A, self.K, self.S)
        if self._ref is None:
            shift = t.mean(axis=(0, 2))
        else:
            ref_s, ref_a = divmod(self._ref, self.A)
            shift = t[ref_a, :, ref_s].copy()
        t -= shift[None, :, None]

    # ------------------------------------------------------------------ update
    def update(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
               done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        if done is not None and np.any(done):
            raise ValueError("U-learning needs a continuing task (a terminal transition "
                             "was sampled); make episodes continuing with terminal='reset'")
        idx = self.index(s, a)
        x, m, e, z = self._soft_next(s_next)
        flat = self._flat
        l_sa = flat[idx]
        delta = self.beta * r + (m + np.log(z)) - self._lam - l_sa
        if self.visits is not None and self.dynamics == "controlled":
            # per-visit steps: log(alpha) and log(1 - alpha) looked up like alpha itself
            n = self.visits[idx]
            self.visits[idx] = n + 1
            log_a, log1m_a = self._log_tabs
            try:
                step = np.logaddexp(log1m_a[n], log_a[n] + delta)
            except IndexError:
                log_a, log1m_a = self._log_alpha_tables(int(n.max()))
                step = np.logaddexp(log1m_a[n], log_a[n] + delta)
        elif self.dynamics == "fixed":
            step = self._alpha(idx) * delta
        elif np.ndim(alpha := self._alpha(idx)) == 0:
            if alpha == 1.0:
                step = delta
            elif alpha == self._lr:
                step = np.logaddexp(self._log1m_lr, self._log_lr + delta)
            else:  # a schedule in the total number of steps: this step's own alpha
                step = np.logaddexp(np.log1p(-alpha), np.log(alpha) + delta)
        else:
            # log((1 - alpha) + alpha e^delta), stable for any delta (log 0 at alpha = 1)
            with np.errstate(divide="ignore"):
                step = np.logaddexp(np.log1p(-alpha), np.log(alpha) + delta)
        flat[idx] = l_sa + step
        self._lam += self.eta * step
        self.n_updates += 1
        if self.n_updates % self.normalise_every == 0:
            # a shift of log u changes neither the weights e nor any later update
            self.normalise()
        return e, self._patch(s, a, s_next, x, m, e, z, step)

    def _log_alpha_tables(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``log(alpha(j))`` and ``log(1 - alpha(j))`` for ``j = 0..m``, ``m >= n``
        (``log 0 = -inf`` where ``alpha = 1``): the values the update would compute from
        ``alpha``, computed once per table entry."""
        alpha = self._alpha_upto(n)
        with np.errstate(divide="ignore"):
            self._log_tabs = (np.log(alpha), np.log1p(-alpha))
        return self._log_tabs

    def state_dict(self) -> dict[str, np.ndarray]:
        out = super().state_dict()
        out["log_rho"] = self._lam.copy()
        return out
