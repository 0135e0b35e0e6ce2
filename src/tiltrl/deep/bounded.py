"""Bounded soft DQN: soft Q-learning with soft Bellman bounds on every batch.

Adamczyk, Makarenko, Tiomkin, Kulkarni, "Boosting soft Q-learning by bounding",
RLC 2024 (bounds and clipping), on top of soft Q-learning (Haarnoja et al., ICML 2017).
For ANY Q with residual ``D = T Q - Q`` (DESIGN.md §5),
``T Q + gamma min(D)/(1-gamma) <= Q* <= T Q + gamma max(D)/(1-gamma)``.

On each batch the bounds are computed twice — from the target network and from the
online network (each with its own ``T Q`` and residuals on the *taken* actions only) —
and the tighter of each pair is kept. Care taken against the published pitfalls:
- one soft value everywhere: ``V = (1/beta) log sum_a pi0 exp(beta Q)`` (no separate
  ``-log|A|`` term, the prior enters only through ``log pi0``), with the expectation over
  ``s'`` outside the log (the log-E-exp operator is a different fixed point);
- residuals only on taken actions (``T Q(s,a)`` needs a sampled ``s'`` of that action);
- terminal transitions keep their residual ``r - Q(s,a)`` in the batch extremes, and
  their bound collapses to ``Q*(s,a) = r`` (no continuation); the ``1/(1-gamma)`` factor
  is used only on the side where it is valid with terminals (see ``bellman_bound_offsets``);
- where the two bounds cross (``lb > ub``, possible through sampling noise or
  approximation) nothing is clipped and the rate is logged (``train/bounds_inverted``).
The batch extremes estimate the extremes over all (s, a); with stochastic dynamics the
single-sample ``T Q`` is itself an estimate, so the bounds are statistical, not certain.

Usage of the bounds: ``clip="hard"`` clips the TD target into ``[lb, ub]``;
``clip="soft"`` adds ``penalty_weight * penalty(Q - clamp(Q, lb, ub))`` to the loss
(``penalty`` = ``"linear"`` |x|, ``"square"`` x², ``"huber"``); ``"both"`` does both;
``"none"`` only logs. Logged at each logger dump, as means over every gradient step
since the previous dump: ``train/target_clip_rate`` (targets outside the bounds) and
``train/q_clip_rate`` (online ``Q(s,a)`` outside), separately, ``train/bounds_inverted``,
the mean gap ``train/bound_gap``, loss, penalty and ``q_mean``; and
``train/targets_clipped``, the count of targets outside the bounds since the model was
created. Batch bounds are only as good as the batch: with ``learning_starts`` below
``batch_size`` the first batches repeat a handful of transitions, and their bounds,
tight around those few residuals, clip most targets (measured at beta 10 on
LunarLander-v3: all 512 targets of the first four gradient steps, none afterwards).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch as th
from torch.nn import functional as F

from tiltrl.deep.soft import bellman_bound_offsets, soft_value
from tiltrl.deep.soft_dqn import SoftDQN, td_loss

CLIPS = ("hard", "soft", "both", "none")
PENALTIES = ("linear", "square", "huber")


def penalty_fn(excess: th.Tensor, kind: str) -> th.Tensor:
    if kind == "linear":
        return excess.abs().mean()
    if kind == "square":
        return (excess**2).mean()
    if kind == "huber":
        return F.smooth_l1_loss(excess, th.zeros_like(excess))
    raise ValueError(f"penalty must be one of {PENALTIES}, got {kind!r}")


class BoundedSoftDQN(SoftDQN):
    """:class:`SoftDQN` whose targets / Q-values are kept inside soft Bellman bounds.

    Parameters beyond :class:`SoftDQN`: ``clip`` (``"hard"``, ``"soft"``, ``"both"``,
    ``"none"``), ``penalty`` (``"linear"``, ``"square"``, ``"huber"``) and
    ``penalty_weight`` (weight of the soft penalty, published default 1).
    """

    supports_n_steps: ClassVar[bool] = False  # its own targets are one-step

    def __init__(
        self,
        policy: Any = "MlpPolicy",
        env: Any = None,
        clip: str = "hard",
        penalty: str = "square",
        penalty_weight: float = 1.0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if clip not in CLIPS:
            raise ValueError(f"clip must be one of {CLIPS}, got {clip!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        super().__init__(policy, env, _init_setup_model=False, **kwargs)
        self.clip = clip
        self.penalty = penalty
        self.penalty_weight = float(penalty_weight)
        self.targets_clipped = 0  # since the model was created (saved with it)
        if _init_setup_model:
            self._setup_model()

    def _bounds(
        self, data: Any, q_sa: th.Tensor, q_next: th.Tensor, log_prior_next: th.Tensor
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """``(T Q, lb, ub)`` on the batch, for several networks' Q stacked on a leading
        axis (taken-action ``q_sa``: ``(N, B, 1)``, next-state ``q_next``: ``(N, B, A)``),
        each with the offsets of its own residuals."""
        v_next = soft_value(q_next, log_prior_next, self.beta).unsqueeze(-1)
        cont = (1.0 - data.dones) * self.gamma
        tq = data.rewards + cont * v_next
        lower, upper = bellman_bound_offsets(tq - q_sa, self.gamma, dim=(1, 2))
        return tq, tq + cont * lower.view(-1, 1, 1), tq + cont * upper.view(-1, 1, 1)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        steps: list[tuple[Any, ...]] = []
        soft = self.clip in ("soft", "both")
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            obs, nxt = data.observations, data.next_observations
            actions = data.actions.long()
            fused = isinstance(obs, th.Tensor)  # one pass over s and s' per network
            n = data.rewards.shape[0]
            if fused:
                q_both = self.q_net(th.cat([obs, nxt]))
                q_all, q_next_o = q_both[:n], q_both[n:].detach()
            else:  # dict observations
                q_all = self.q_net(obs)
                with th.no_grad():
                    q_next_o = self.q_net(nxt)
            q = th.gather(q_all, 1, actions)
            with th.no_grad():
                if fused:
                    qt_both = self.q_net_target(th.cat([obs, nxt]))
                    qt_all, q_next_t = qt_both[:n], qt_both[n:]
                else:
                    qt_all, q_next_t = self.q_net_target(obs), self.q_net_target(nxt)
                log_prior_next = self.policy.prior_logits(nxt)
                q_t = th.gather(qt_all, 1, actions)
                # the target network's and the online network's bounds in one pass
                tq, lbs, ubs = self._bounds(
                    data,
                    th.stack([q_t, q.detach()]),
                    th.stack([q_next_t, q_next_o]),
                    log_prior_next,
                )
                target_raw = tq[0]
                lb, ub = lbs.amax(0), ubs.amin(0)  # the tighter of each pair
                inverted = lb > ub
                lb = lb.masked_fill(inverted, -th.inf)
                ub = ub.masked_fill(inverted, th.inf)
                target = target_raw
                if self.clip in ("hard", "both"):
                    target = th.clamp(target_raw, lb, ub)
            loss = td_loss(q, target, self.loss)
            pen = None
            if soft:
                pen = penalty_fn(q - th.clamp(q, lb, ub).detach(), self.penalty)
                loss = loss + self.penalty_weight * pen
            self._gradient_step(loss)
            steps.append((loss, pen, target_raw, q, lb, ub, inverted))
        self._n_updates += gradient_steps
        # recorded when the logger dumps (SoftDQN.dump_logs): unlike SoftDQN's last-call
        # means, these cover every gradient step since the previous dump (ClipStats)
        pending = self.__dict__.get("_pending_log")
        stats = pending[1] if pending is not None else ClipStats()
        stats.add(steps)
        self._pending_log = (self._n_updates, stats)

    def _record_train_log(self, pending: Any) -> None:
        n_updates, stats = pending
        means = stats.means()
        self.targets_clipped += stats.targets_clipped
        rec = self.logger.record
        rec("train/n_updates", n_updates, exclude="tensorboard")
        for key in ("loss", "penalty", "q_mean", "target_clip_rate", "q_clip_rate"):
            rec(f"train/{key}", means[key])
        rec("train/bounds_inverted", means["inverted"])
        rec("train/bound_gap", means["gap"])
        rec("train/targets_clipped", self.targets_clipped)


class ClipStats:
    """The training statistics of every gradient step since the last logger dump.

    Clipping can fire in a few steps only (at beta 10 on LunarLander-v3: the first four,
    whose batches come from four transitions, and never again in 20k steps), so a log of
    the last ``train`` call alone, as SB3 keeps its loss, would hide it. The steps stay
    tensors (no host synchronisation per step) and are reduced to sums every
    ``fold_every`` steps, which bounds the memory between dumps.
    """

    KEYS = ("loss", "penalty", "q_mean", "target_clip_rate", "q_clip_rate", "inverted")

    def __init__(self, fold_every: int = 256) -> None:
        self.fold_every = fold_every
        self.raw: list[tuple[Any, ...]] = []
        self.sums = th.zeros(len(self.KEYS) + 3, dtype=th.float64)  # + gap, n_gap, clipped
        self.n_steps = 0

    def add(self, steps: list[tuple[Any, ...]]) -> None:
        self.raw.extend(steps)
        if len(self.raw) >= self.fold_every:
            self._fold()

    @th.no_grad()
    def _fold(self) -> None:
        if not self.raw:
            return
        raw, self.raw = self.raw, []
        f64 = th.float64
        loss = th.stack([s[0].detach() for s in raw]).to(f64)
        pen = th.stack([th.zeros(()) if s[1] is None else s[1].detach() for s in raw])
        target, q, lb, ub, inverted = (
            th.stack([s[k] for s in raw]).detach() for k in (2, 3, 4, 5, 6)
        )  # (steps, batch, 1)
        dims = tuple(range(1, target.dim()))
        outside = ((target < lb) | (target > ub)).to(f64)
        valid = (~inverted).to(f64)
        n_valid = valid.sum(dims)
        gap = th.where(inverted, 0.0, ub - lb).to(f64).sum(dims) / n_valid.clamp(min=1.0)
        per_step = th.stack(
            [
                loss,
                pen.to(f64),
                q.to(f64).mean(dims),
                outside.mean(dims),
                ((q < lb) | (q > ub)).to(f64).mean(dims),
                inverted.to(f64).mean(dims),
                gap,
                (n_valid > 0).to(f64),
                outside.sum(dims),
            ]
        )  # (statistics, steps)
        self.sums += per_step.sum(1)
        self.n_steps += len(raw)

    @property
    def targets_clipped(self) -> int:
        """Targets outside the bounds (clipped where ``clip`` is hard) in these steps."""
        self._fold()
        return int(round(float(self.sums[-1])))

    def means(self) -> dict[str, float]:
        """Per-step means over these steps; ``gap`` over the steps with a valid pair."""
        self._fold()
        sums = self.sums.tolist()
        n = max(self.n_steps, 1)
        out = {k: v / n for k, v in zip(self.KEYS, sums[: len(self.KEYS)], strict=True)}
        out["gap"] = sums[-3] / sums[-2] if sums[-2] > 0 else float("nan")
        return out
