"""Replay of n-step paths for soft n-step targets.

The soft Bellman identity of DESIGN.md §1 holds for *every* action, not only for the
policy's: ``Q(s,a) - V(s) = (1/beta) log(pi(a|s)/pi0(a|s))``. Along any stored path
``s_0, a_0, r_0, s_1, a_1, ...`` the regularised return therefore telescopes (Nachum,
Norouzi, Xu, Schuurmans, "Bridging the gap between value and policy based reinforcement
learning", NeurIPS 2017, path consistency):

    Q(s_0,a_0) = r_0 + sum_{k=1}^{n-1} gamma^k [r_k - (1/beta) log(pi/pi0)(a_k|s_k)]
                 + gamma^n V(s_n)           (in expectation over the dynamics)

with ``-(1/beta) log(pi/pi0)(a_k|s_k) = V(s_k) - Q(s_k,a_k)``. Each correction has mean
zero under the exact soft Q whatever the behaviour policy chose, so, unlike the plain
n-step return (SB3's ``NStepReplayBuffer``, which drops these entropy terms), the target
needs no importance weights. Being unbiased at the fixed point is not being stable: off
policy the uncut operator is not a contraction, and tree-backup traces (each later step
weighted by ``pi(a_k|s_k)``) make it one; :func:`tiltrl.deep.soft.soft_n_step_target`
computes both. This module stores nothing new: it samples, from SB3's ordinary replay
arrays, the ``n`` consecutive transitions that start at each drawn index, cut at the first
termination or truncation (and at the write position, where the next slot belongs to
another path).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer


def check_n_steps(n_steps: Any) -> int:
    """``n_steps`` as an int, or a ValueError naming it unless it is an integer >= 1."""
    if int(n_steps) != n_steps or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    return int(n_steps)


class SoftNStepSamples(NamedTuple):
    """A batch of ``B`` paths of at most ``n`` transitions each.

    observations: ``s_0`` ``(B, *obs)``; actions: ``a_0`` ``(B, 1)``.
    rewards: ``r_0 .. r_{n-1}`` ``(B, n)``, zero after the path ends.
    mask: ``(B, n)``, 1.0 on the transitions of the path (up to and including the first
      one that terminates or is truncated), 0.0 after.
    middle_observations / middle_actions: ``s_1 .. s_{n-1}`` ``(B, n-1, *obs)`` and
      ``a_1 .. a_{n-1}`` ``(B, n-1)``; entries where ``mask`` is 0 are meaningless (finite).
    next_observations: the state after the path's last transition ``(B, *obs)``.
    dones: ``(B, 1)``, 1.0 where the path's last transition terminated (a truncation
      bootstraps, so it is 0.0 there).
    """

    observations: th.Tensor
    actions: th.Tensor
    rewards: th.Tensor
    mask: th.Tensor
    middle_observations: th.Tensor
    middle_actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor


class SoftNStepReplayBuffer(ReplayBuffer):
    """SB3's :class:`~stable_baselines3.common.buffers.ReplayBuffer` sampling n-step paths.

    Storage (``add``), sizes, VecEnvs and time-out handling are the parent's; only sampling
    differs. ``n_steps >= 1``; with ``n_steps=1`` a path is one transition.
    """

    def __init__(self, *args: Any, n_steps: int = 3, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.n_steps = check_n_steps(n_steps)
        if self.optimize_memory_usage:
            raise ValueError("SoftNStepReplayBuffer does not support optimize_memory_usage=True")

    def _get_samples(self, batch_inds: np.ndarray, env: Any = None) -> SoftNStepSamples:  # type: ignore[override]
        n = self.n_steps
        batch = len(batch_inds)
        # numpy's global generator, as SB3's buffers: seeded by the algorithm's set_random_seed
        env_inds = np.random.randint(0, high=self.n_envs, size=(batch,))  # noqa: NPY002
        idx = (batch_inds[:, None] + np.arange(n)[None, :]) % self.buffer_size  # (B, n)
        col = env_inds[:, None]

        ends = self.dones[idx, col] > 0
        timeouts = self.timeouts[idx, col] > 0
        # the slot before the write position is the newest transition: what follows it in
        # the ring is either empty or an old, unrelated path, so every path stops there
        newest = idx == (self.pos - 1) % self.buffer_size
        stop = ends | timeouts | newest
        last = np.where(stop.any(axis=1), stop.argmax(axis=1), n - 1)  # (B,)
        mask = (np.arange(n)[None, :] <= last[:, None]).astype(np.float32)

        last_idx = idx[np.arange(batch), last]
        terminated = self.dones[last_idx, env_inds] * (1.0 - self.timeouts[last_idx, env_inds])
        rewards = self._normalize_reward(self.rewards[idx, col], env) * mask

        middle = idx[:, 1:]
        middle_obs = self.observations[middle, col]  # (B, n-1, *obs)
        flat = middle_obs.reshape(batch * (n - 1), *self.obs_shape)
        flat = np.asarray(self._normalize_obs(flat, env))
        middle_obs = flat.reshape(batch, n - 1, *self.obs_shape)
        middle_actions = self.actions[middle, col].reshape(batch, n - 1)

        data = (
            self._normalize_obs(self.observations[batch_inds, env_inds], env),
            self.actions[batch_inds, env_inds].reshape(batch, -1),
            rewards.astype(np.float32),
            mask,
            middle_obs,
            middle_actions,
            self._normalize_obs(self.next_observations[last_idx, env_inds], env),
            terminated.reshape(-1, 1).astype(np.float32),
        )
        return SoftNStepSamples(*tuple(map(self.to_torch, data)))
