"""Bounded soft Q-learning: soft Q-learning clipped by soft Bellman bounds.

Adamczyk, Arriojas, Tiomkin and Kulkarni, "Boosting soft Q-learning by bounding"
(RLC 2024); bounds of ``shared/DESIGN.md`` §5 computed by :mod:`tiltrl.bounds`.

Convention (DESIGN.md §1): rewards, ``beta > 0``, prior ``pi0``. The update is the
soft Q-learning one (:mod:`tiltrl.agents.soft_q`) with target
``y = r + gamma (1 - done) V(s')``, plus bounds ``lb <= Q* <= ub``:

* ``clip="hard"``: the target is clipped, ``y <- clip(y, lb(s,a), ub(s,a))``;
* ``clip="linear" | "square" | "huber"``: a soft penalty on the estimate, the gradient step
  of ``0.5 (Q - y)^2 + weight * penalty(clamp(Q, lb, ub) - Q)``:
  ``Q += alpha (y - Q) + alpha weight g(e)`` with ``e = clamp(Q, lb, ub) - Q`` and
  ``g = sign(e)`` (linear), ``e`` (square), ``clip(e, -1, 1)`` (Huber, threshold 1).

Bounds (``bounds=``):

* ``"residual"``: the soft Bellman bounds of DESIGN.md §5 from the *current* estimate of
  every seed, recomputed every ``bounds_every`` updates (bounds from any ``Q`` are valid, so
  stale bounds stay valid; they are only less tight). With ``model="given"`` the true
  model is used -- then clipping is a planner's step, not model-free learning; with
  ``model="learned"`` a count model per seed (``tiltrl.bounds.CountModel``: next-state
  counts normalised by all visits, terminal outcomes included) gives bounds on the
  optimum of the empirical model; pairs not yet visited are not clipped.
* ``"naive"``: ``r_min/(1-gamma) <= Q* <= r_max/(1-gamma)`` from the reward range.
* ``(lb, ub)``: fixed external bounds, arrays ``(S, A)`` or ``(K, S, A)`` (e.g. the
  composition bounds of :func:`tiltrl.prior.compose`, valid before any sample); never
  refreshed.

``lb > ub`` cannot happen for exact arithmetic (both come from one ``TQ``); any crossing
is counted in ``crossed`` and such pairs are not clipped.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiltrl.agents.schedules import StepSize
from tiltrl.agents.soft_q import SoftQLearner
from tiltrl.bounds import CountModel, naive_bounds, soft_bellman_bounds
from tiltrl.mdp import TabularMDP

__all__ = ["BoundedSoftQLearner", "CLIP_KINDS"]

CLIP_KINDS = ("hard", "linear", "square", "huber")


class BoundedSoftQLearner(SoftQLearner):
    """``K`` bounded soft Q-learners in lockstep (see the module docstring).

    Parameters
    ----------
    model
        The true model (needed for ``model="given"``; for ``"learned"`` only its reward
        range is *not* used -- naive bounds come from ``reward_range``).
    bounds, model_kind, clip, clip_weight, bounds_every
        See the module docstring.
    reward_range
        ``(r_min, r_max)`` for ``bounds="naive"``.
    """

    name = "bounded_soft_q"

    def __init__(self, n_states: int, n_actions: int, n_seeds: int, beta: float,
                 prior: np.ndarray, step: StepSize, *, gamma: float,
                 model: TabularMDP | None = None, bounds: Any = "residual",
                 model_kind: str = "learned", clip: str = "hard", clip_weight: float = 1.0,
                 bounds_every: int = 100, reward_range: tuple[float, float] | None = None,
                 episodic: bool = False) -> None:
        super().__init__(n_states, n_actions, n_seeds, beta, prior, step, gamma=gamma)
        external: tuple[np.ndarray, np.ndarray] | None = None
        if isinstance(bounds, (tuple, list)):
            external = self._external_bounds(bounds)
            bounds = "external"
        elif bounds not in ("residual", "naive"):
            raise ValueError(f"bounds must be 'residual', 'naive' or a pair (lb, ub) of "
                             f"arrays, got {bounds!r}")
        if model_kind not in ("learned", "given"):
            raise ValueError(f"model must be 'learned' or 'given', got {model_kind!r}")
        if clip not in CLIP_KINDS:
            raise ValueError(f"clip must be one of {CLIP_KINDS}, got {clip!r}")
        if not (np.isfinite(clip_weight) and clip_weight >= 0):
            raise ValueError(f"clip_weight must be >= 0, got {clip_weight!r}")
        if int(bounds_every) < 1:
            raise ValueError(f"bounds_every must be >= 1, got {bounds_every!r}")
        self.bounds_kind = bounds
        self.model_kind = model_kind
        self.clip = clip
        self.clip_weight = float(clip_weight)
        self.bounds_every = int(bounds_every)
        self.episodic = episodic
        n = self.K * self.S * self.A
        self.lb = np.full(n, -np.inf)
        self.ub = np.full(n, np.inf)
        self.n_clipped = 0
        self.crossed = 0
        self._model: TabularMDP | None = None
        self._counts: CountModel | None = None
        if external is not None:
            self.lb, self.ub = external
        elif bounds == "naive":
            if reward_range is None:
                if model is None:
                    raise ValueError("bounds='naive' needs reward_range (or a model)")
                reward_range = model.reward_range()
            lo, hi = naive_bounds(reward_range, gamma, episodic=episodic)
            self.lb[:] = lo
            self.ub[:] = hi
        elif model_kind == "given":
            if model is None:
                raise ValueError("model='given' needs the environment's TabularMDP")
            self._model = model
        else:
            size = self.K * self.S * self.A * self.S
            if size > 50_000_000:
                raise ValueError(
                    f"a learned count model needs K*S*A*S = {size:,} counts; use fewer seeds, "
                    "model='given' or bounds='naive'"
                )
            self._counts = CountModel.empty(self.S, self.A, prior,
                                            batch=(self.K,))
            self._nvis = self._counts.visits.reshape(-1)
            self._next = self._counts.next_counts.reshape(-1)
            self._rsum = self._counts.reward_sum.reshape(-1)

    def _external_bounds(self, pair: Any) -> tuple[np.ndarray, np.ndarray]:
        """``(lb, ub)`` arrays in the learner's flat ``(A, K*S)`` layout."""
        if len(pair) != 2:
            raise ValueError(f"external bounds must be a pair (lb, ub), got {len(pair)} items")
        out = []
        for name, b in zip(("lb", "ub"), pair, strict=True):
            arr = np.asarray(b, dtype=np.float64)
            if arr.shape not in ((self.S, self.A), (self.K, self.S, self.A)):
                raise ValueError(f"external bound {name} must have shape (S, A) = "
                                 f"{(self.S, self.A)} or (K, S, A), got {arr.shape}")
            if np.any(np.isnan(arr)):
                raise ValueError(f"external bound {name} has NaN entries")
            arr = np.broadcast_to(arr, (self.K, self.S, self.A))
            out.append(np.ascontiguousarray(arr.transpose(2, 0, 1)).reshape(-1))
        lb, ub = out
        crossed = lb > ub
        if crossed.any():
            raise ValueError(f"external bounds cross (lb > ub) at {int(crossed.sum())} entries")
        return lb, ub

    def refresh_bounds(self) -> None:
        """Recompute the residual bounds from the current estimates (all seeds)."""
        if self.bounds_kind != "residual":
            return
        if self._model is not None:
            self._refresh_in_layout()
            return
        q = self.values()
        model: Any = self._model if self._model is not None else self._counts
        b = soft_bellman_bounds(q, model, self.beta, self.gamma)
        self.crossed += b.crossed
        ok = b.lb <= b.ub
        # (K, S, A) -> the learner's (A, K*S) layout
        self.lb = np.where(ok, b.lb, -np.inf).transpose(2, 0, 1).reshape(-1)
        self.ub = np.where(ok, b.ub, np.inf).transpose(2, 0, 1).reshape(-1)

    def _layout_cache(self) -> tuple[np.ndarray, np.ndarray]:
        """``log pi0`` and the reward of the given model in the ``(A, K*S)`` layout."""
        assert self._model is not None
        if not hasattr(self, "_bounds_cache"):
            with np.errstate(divide="ignore"):
                log_pi0 = np.log(np.asarray(self._model.prior, dtype=np.float64))
            # log pi0[s, a] at column k*S + s
            K = self.K
            self._bounds_cache = (np.ascontiguousarray(np.tile(log_pi0.T, (1, K))),
                                  np.ascontiguousarray(np.tile(self._model.reward.T, (1, K))))
        return self._bounds_cache

    def _refresh_in_layout(self) -> None:
        """:func:`tiltrl.bounds.soft_bellman_bounds` with a given model, computed in the
        learner's ``(A, K*S)`` layout: reductions over actions run along the first axis
        and no ``(K, S, A)`` copy of the table is made (the function's reductions over a
        short last axis cost most of a refresh at large ``K``). The same floating-point
        operations in the same order: the bounds are bit-identical to the function's."""
        assert self._model is not None
        A, K, S = self.A, self.K, self.S
        beta, gamma = self.beta, self.gamma
        lp_cols, r_cols = self._layout_cache()
        q = self.table
        if not np.all(np.isfinite(q)):
            raise ValueError("Q has non-finite entries")
        # soft value V(s) = (log sum_a exp(x - m) + m) / beta, x = log pi0 + beta Q
        x = lp_cols + beta * q
        m = np.max(x, axis=0)
        m = np.where(np.isfinite(m), m, 0.0)
        v = (np.log(np.sum(np.exp(x - m), axis=0)) + m) / beta  # (K*S,), column k*S + s
        ev = np.asarray(self._model.P @ v.reshape(K, S).T)  # (S*A, K), row s*A + a
        ev = ev.reshape(S, A, K).transpose(1, 2, 0).reshape(A, K * S)
        tq = r_cols + gamma * ev
        resid = (tq - q).reshape(A, K, S)
        valid = np.isfinite(resid)
        any_valid = valid.any(axis=(0, 2))
        d_min = np.where(any_valid, np.min(np.where(valid, resid, np.inf), axis=(0, 2)), np.nan)
        d_max = np.where(any_valid, np.max(np.where(valid, resid, -np.inf), axis=(0, 2)),
                         np.nan)
        scale = gamma / (1.0 - gamma)
        tq3 = tq.reshape(A, K, S)
        lb = np.where(valid, tq3 + scale * d_min[None, :, None], -np.inf)
        ub = np.where(valid, tq3 + scale * d_max[None, :, None], np.inf)
        self.crossed += int(np.count_nonzero(lb > ub))
        ok = lb <= ub
        self.lb = np.where(ok, lb, -np.inf).reshape(-1)
        self.ub = np.where(ok, ub, np.inf).reshape(-1)

    def update(self, s: np.ndarray, a: np.ndarray, r: np.ndarray, s_next: np.ndarray,
               done: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        idx, y, x, m, e, z = self._step(s, a, r, s_next, done)
        if self._counts is not None:
            pair = (self._row_base + s) * self.A + a  # (k, s, a) in the CountModel layout
            self._nvis[pair] += 1.0
            self._rsum[pair] += r
            nxt = pair * self.S + s_next
            if done is None:
                self._next[nxt] += 1.0
            else:
                self._next[nxt] += ~done
        flat = self._flat
        q_sa = flat[idx]
        lo, hi = self.lb[idx], self.ub[idx]
        if self.clip == "hard":
            yc = np.minimum(np.maximum(y, lo), hi)
            self.n_clipped += int(np.count_nonzero(yc != y))
            step = self._alpha(idx) * (yc - q_sa)
        else:
            err = np.minimum(np.maximum(q_sa, lo), hi) - q_sa
            self.n_clipped += int(np.count_nonzero(err))
            if self.clip == "linear":
                g = np.sign(err)
            elif self.clip == "square":
                g = err
            else:
                g = np.clip(err, -1.0, 1.0)
            step = self._alpha(idx) * ((y - q_sa) + self.clip_weight * g)
        flat[idx] = q_sa + step
        self.n_updates += 1
        if self.n_updates % self.bounds_every == 0:
            self.refresh_bounds()
            return self.behaviour_weights(s_next)
        return e, self._patch(s, a, s_next, x, m, e, z, step)

    def state_dict(self) -> dict[str, np.ndarray]:
        out = super().state_dict()
        out["lb"] = self.lb.copy()
        out["ub"] = self.ub.copy()
        return out
