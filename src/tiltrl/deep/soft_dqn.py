"""Soft DQN: discounted soft Q-learning with a prior policy on stable-baselines3's DQN.

Haarnoja, Tang, Abbeel, Levine, "Reinforcement learning with deep energy-based
policies", ICML 2017 (soft Q-learning); convention of DESIGN.md §1: the per-step
objective is ``r - (1/beta) log(pi/pi0)``, the soft value is
``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` and the target is
``y = r + gamma (1 - terminated) V_target(s')`` (truncated episodes bootstrap: SB3's
replay buffer keeps time-outs apart from terminations). Exploration samples the soft
policy ``pi ∝ pi0 exp(beta Q)`` (Boltzmann); ``predict(deterministic=True)`` is greedy
(its mode), ``deterministic=False`` samples it. An epsilon-uniform mixture stays
available through DQN's ``exploration_*`` arguments (off by default).

Only ``train()`` differs from ``stable_baselines3.DQN``; rollouts, replay, target
updates, callbacks, logger, VecEnvs and save/load are SB3's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.policies import BasePolicy
from torch.nn import functional as F

from tiltrl.deep.policies import SoftQPolicy
from tiltrl.deep.priors import PriorSpec
from tiltrl.deep.soft import soft_value

LOSSES = ("huber", "mse")


def td_loss(pred: th.Tensor, target: th.Tensor, kind: str) -> th.Tensor:
    if kind == "huber":
        return F.smooth_l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


class SoftDQN(DQN):
    """Discounted soft Q-learning (DESIGN.md §1 convention) with SB3's off-policy machinery.

    Parameters beyond :class:`stable_baselines3.DQN`:
      beta: inverse temperature (> 0).
      prior: prior policy ``pi0`` — ``None`` (uniform), ``A`` probabilities, or a
        picklable callable ``obs_tensor -> (B, A)`` probabilities.
      loss: ``"huber"`` (SB3's default) or ``"mse"``.
    Unless ``policy_kwargs`` names an optimizer or its kwargs, Adam runs with
    ``fused=True`` (torch's fused kernel: the same update, cheaper per step).
    Epsilon exploration defaults to 0 (the soft policy explores); ``n_steps`` must be 1
    (an n-step return would drop the entropy terms). Warm-up actions (before
    ``learning_starts``) are drawn from the prior.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[misc]
        "MlpPolicy": SoftQPolicy,
        "SoftQPolicy": SoftQPolicy,
    }
    policy: SoftQPolicy

    def __init__(
        self,
        policy: str | type[SoftQPolicy] = "MlpPolicy",
        env: Any = None,
        beta: float = 1.0,
        prior: PriorSpec = None,
        loss: str = "huber",
        exploration_initial_eps: float = 0.0,
        exploration_final_eps: float = 0.0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("n_steps", 1) != 1:
            raise ValueError("SoftDQN supports n_steps=1 only")
        super().__init__(
            policy,
            env,
            exploration_initial_eps=exploration_initial_eps,
            exploration_final_eps=exploration_final_eps,
            _init_setup_model=False,
            **kwargs,
        )
        if beta <= 0:
            raise ValueError("beta must be > 0")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.beta = float(beta)
        self.prior = prior
        self.loss = loss
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        current: dict[str, Any] = dict(getattr(self, "policy_kwargs", None) or {})
        if current.get("optimizer_class", th.optim.Adam) is th.optim.Adam:
            # torch's fused Adam kernel: same maths, far fewer kernel launches per step
            current.setdefault("optimizer_kwargs", {"fused": True})
        self.policy_kwargs = {**current, "beta": self.beta, "prior": self.prior}
        super()._setup_model()

    # -- the soft targets -------------------------------------------------------------
    def _soft_v(self, net: Any, obs: th.Tensor) -> th.Tensor:
        return soft_value(net(obs), self.policy.prior_logits(obs), self.beta)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses, q_means = [], []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            with th.no_grad():
                v_next = self._soft_v(self.q_net_target, data.next_observations).reshape(-1, 1)
                target = data.rewards + (1.0 - data.dones) * self.gamma * v_next
            q = th.gather(self.q_net(data.observations), 1, data.actions.long())
            loss = td_loss(q, target, self.loss)
            losses.append(loss.item())
            q_means.append(q.mean().item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))
        self.logger.record("train/q_mean", float(np.mean(q_means)))

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warm-up actions (before ``learning_starts``) come from the prior ``pi0``."""
        if self.num_timesteps < learning_starts and self.prior is not None:
            obs, _ = self.policy.obs_to_tensor(self._last_obs)  # type: ignore[arg-type]
            with th.no_grad():
                probs = th.softmax(self.policy.prior_logits(obs), dim=-1)  # type: ignore[arg-type]
                action = th.multinomial(probs, 1).squeeze(-1).cpu().numpy()
            return action, action
        return super()._sample_action(learning_starts, action_noise, n_envs)

    # -- conveniences ------------------------------------------------------------------
    def action_probabilities(self, observation: np.ndarray) -> np.ndarray:
        """``pi(a|s)`` of the soft policy for a batch of observations, shape ``(B, A)``."""
        obs, _ = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            return self.policy.action_probabilities(obs).cpu().numpy()  # type: ignore[arg-type]

    def q_values(self, observation: np.ndarray) -> np.ndarray:
        """Soft Q-values of the online network for a batch of observations, ``(B, A)``."""
        obs, _ = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            return self.q_net(obs).cpu().numpy()
