"""Soft DQN: discounted soft Q-learning with a prior policy on stable-baselines3's DQN.

Haarnoja, Tang, Abbeel, Levine, "Reinforcement learning with deep energy-based
policies", ICML 2017 (soft Q-learning); convention of DESIGN.md §1: the per-step
objective is ``r - (1/beta) log(pi/pi0)``, the soft value is
``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` and the target is
``y = r + gamma (1 - terminated) V_target(s')`` (truncated episodes bootstrap: SB3's
replay buffer keeps time-outs apart from terminations). With ``n_steps > 1`` the target is
a soft n-step target over the next ``n`` stored transitions (:mod:`tiltrl.deep.replay`):
``Q + sum_t gamma^t C_t delta_t`` with soft TD errors from the target network, which keeps
each later step's entropy term ``V(s_k) - Q(s_k,a_k) = -(1/beta) log(pi/pi0)(a_k|s_k)``;
the traces ``C_t`` are products of ``pi(a_k|s_k)`` (tree backup, Precup et al. 2000: no
importance weights, a contraction for any behaviour policy) or of 1 (path consistency,
Nachum et al. 2017).
Exploration samples the soft policy ``pi ∝ pi0 exp(beta Q)`` (Boltzmann);
``predict(deterministic=True)`` is greedy (its mode), ``deterministic=False`` samples it.
An epsilon-uniform mixture stays available through DQN's ``exploration_*`` arguments
(off by default).

Only ``train()`` differs from ``stable_baselines3.DQN``; rollouts, replay, target
updates, callbacks, logger, VecEnvs and save/load are SB3's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from stable_baselines3 import DQN
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import MaybeCallback
from torch.nn import functional as F

from tiltrl.deep.policies import SoftQPolicy, sample_categorical
from tiltrl.deep.priors import PriorSpec
from tiltrl.deep.replay import SoftNStepReplayBuffer, SoftNStepSamples, check_n_steps
from tiltrl.deep.soft import soft_logits, soft_n_step_target, soft_value

LOSSES = ("huber", "mse")
N_STEP_TRACES = ("tree_backup", "uncut")
SelfSoftDQN = TypeVar("SelfSoftDQN", bound="SoftDQN")


def td_loss(pred: th.Tensor, target: th.Tensor, kind: str) -> th.Tensor:
    if kind == "huber":
        return F.smooth_l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")


def clip_grad_norm(params: Sequence[th.Tensor], max_norm: float) -> None:
    """``th.nn.utils.clip_grad_norm_(params, max_norm)`` (L2, foreach path) for parameters
    on one device and dtype: the same operations on the same values (so bit-identical),
    without the per-call grouping by device and dtype and the no-op ``.to`` per tensor.
    Falls back to torch's function for mixed devices or dtypes."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    first = grads[0]
    if any(g.device != first.device or g.dtype != first.dtype for g in grads):
        th.nn.utils.clip_grad_norm_(params, max_norm)
        return
    total = th.linalg.vector_norm(th.stack(th._foreach_norm(grads, 2.0)), 2.0)
    th._foreach_mul_(grads, th.clamp(float(max_norm) / (total + 1e-6), max=1.0))


class SoftDQN(DQN):
    """Discounted soft Q-learning (DESIGN.md §1 convention) with SB3's off-policy machinery.

    Parameters beyond :class:`stable_baselines3.DQN`:
      beta: inverse temperature (> 0).
      prior: prior policy ``pi0`` — ``None`` (uniform), ``A`` probabilities, or a
        picklable callable ``obs_tensor -> (B, A)`` probabilities.
      loss: ``"huber"`` (SB3's default) or ``"mse"``.
    Unless ``policy_kwargs`` names an optimizer or its kwargs, Adam runs with
    ``fused=True`` (torch's fused kernel: the same update, cheaper per step).
      n_steps: length of the target's path (default 1). ``n_steps > 1`` replays paths from
        :class:`~tiltrl.deep.replay.SoftNStepReplayBuffer` and keeps each step's entropy
        term (SB3's own n-step buffer drops them, so it is never used here).
      n_step_trace: ``"tree_backup"`` (default: a later step counts with the weight
        ``pi(a_k|s_k)`` of the soft policy, a contraction whatever the behaviour) or
        ``"uncut"`` (weight 1: the path-consistency target, which diverged off-policy on
        LunarLander); see :func:`tiltrl.deep.soft.soft_n_step_target`.
    Epsilon exploration defaults to 0 (the soft policy explores). Warm-up actions (before
    ``learning_starts``) are drawn from the prior.
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[misc]
        "MlpPolicy": SoftQPolicy,
        "SoftQPolicy": SoftQPolicy,
    }
    policy: SoftQPolicy
    #: whether ``train`` implements the soft n-step target (subclasses with their own
    #: targets set this False and accept ``n_steps=1`` only)
    supports_n_steps: ClassVar[bool] = True

    def __init__(
        self,
        policy: str | type[SoftQPolicy] = "MlpPolicy",
        env: Any = None,
        beta: float = 1.0,
        prior: PriorSpec = None,
        loss: str = "huber",
        n_step_trace: str = "tree_backup",
        exploration_initial_eps: float = 0.0,
        exploration_final_eps: float = 0.0,
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        n_steps = check_n_steps(kwargs.get("n_steps", 1))
        if n_steps != 1 and not self.supports_n_steps:
            raise ValueError(f"{type(self).__name__} supports n_steps=1 only, got {n_steps}")
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
        if n_step_trace not in N_STEP_TRACES:
            raise ValueError(f"n_step_trace must be one of {N_STEP_TRACES}, got {n_step_trace!r}")
        self.beta = float(beta)
        self.prior = prior
        self.loss = loss
        self.n_step_trace = n_step_trace
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        current: dict[str, Any] = dict(getattr(self, "policy_kwargs", None) or {})
        if current.get("optimizer_class", th.optim.Adam) is th.optim.Adam:
            # torch's fused Adam kernel: same maths, far fewer kernel launches per step
            current.setdefault("optimizer_kwargs", {"fused": True})
        self.policy_kwargs = {**current, "beta": self.beta, "prior": self.prior}
        n_steps = self.n_steps
        if n_steps > 1:
            if self.replay_buffer_class is None:
                self.replay_buffer_class = SoftNStepReplayBuffer
            if not issubclass(self.replay_buffer_class, SoftNStepReplayBuffer):
                raise ValueError(
                    f"n_steps={n_steps} needs a SoftNStepReplayBuffer, got "
                    f"replay_buffer_class={self.replay_buffer_class.__name__}"
                )
            self.replay_buffer_kwargs = {**self.replay_buffer_kwargs, "n_steps": n_steps}
        # SB3 installs its own n-step buffer (no entropy terms) whenever n_steps > 1 and
        # warns about any other: the soft one is chosen above, so SB3 sees n_steps = 1
        self.n_steps = 1
        try:
            super()._setup_model()
        finally:
            self.n_steps = n_steps
        self._pending_log: tuple[int, Any] | None = None

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_pending_log", "_param_cache"]

    # -- one optimiser step -----------------------------------------------------------
    def _parameter_lists(self) -> tuple[list[th.Tensor], list[th.Tensor]]:
        """(parameters of the optimiser, parameters of ``q_net``), cached per network."""
        cache = self.__dict__.get("_param_cache")
        opt = self.policy.optimizer
        if cache is None or cache[0] is not self.q_net or cache[1] is not opt:
            opt_params: list[th.Tensor] = [p for g in opt.param_groups for p in g["params"]]
            q_params: list[th.Tensor] = list(self.q_net.parameters())
            cache = (self.q_net, opt, opt_params, q_params)
            self._param_cache = cache
        return cache[2], cache[3]

    def _gradient_step(self, loss: th.Tensor) -> None:
        """``optimizer.zero_grad()``, ``loss.backward()``, gradient-norm clipping of
        ``q_net`` at ``max_grad_norm`` and ``optimizer.step()``: the same update as SB3's
        DQN (the target network never gets gradients), with less Python around it."""
        opt_params, q_params = self._parameter_lists()
        for p in opt_params:  # zero_grad(set_to_none=True)
            p.grad = None
        loss.backward()
        clip_grad_norm(q_params, self.max_grad_norm)
        self.policy.optimizer.step()

    # -- logging: once per logger dump, not once per gradient step ---------------------
    def _record_train_log(self, pending: Any) -> None:
        n_updates, steps = pending
        rec = self.logger.record
        rec("train/n_updates", n_updates, exclude="tensorboard")
        rec("train/loss", float(np.mean([loss.item() for loss, _ in steps])))
        rec("train/q_mean", float(np.mean([q.mean().item() for _, q in steps])))

    def _flush_train_log(self) -> None:
        """Record the statistics of the last ``train`` call (kept as tensors until now)."""
        pending, self._pending_log = self.__dict__.get("_pending_log"), None
        if pending is not None:
            with th.no_grad():
                self._record_train_log(pending)

    def dump_logs(self) -> None:
        self._flush_train_log()
        super().dump_logs()

    def learn(
        self: SelfSoftDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "DQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfSoftDQN:
        super().learn(
            total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
        self._flush_train_log()  # the last train() values stay readable in the logger
        return self

    # -- the soft targets -------------------------------------------------------------
    def _soft_v(self, net: Any, obs: th.Tensor) -> th.Tensor:
        return soft_value(net(obs), self.policy.prior_logits(obs), self.beta)

    def _n_step_target(self, data: SoftNStepSamples) -> th.Tensor:
        """Soft n-step target ``(B, 1)`` from the target network (one forward pass over
        the path's middle states and its last state together), with the traces of
        ``n_step_trace``."""
        batch, middle = data.rewards.shape[0], data.rewards.shape[1] - 1
        obs = th.cat([data.middle_observations.flatten(0, 1), data.next_observations])
        q, log_prior = self.q_net_target(obs), self.policy.prior_logits(obs)
        v = soft_value(q, log_prior, self.beta)
        rows = batch * middle
        taken = data.middle_actions.reshape(-1, 1).long()
        q_taken = th.gather(q[:rows], 1, taken).reshape(batch, middle)
        trace = None
        if self.n_step_trace == "tree_backup":  # c_k = pi(a_k|s_k) of the target network
            logits = soft_logits(q[:rows], log_prior[:rows], self.beta)
            log_pi = th.log_softmax(logits, dim=-1)
            trace = th.gather(log_pi, 1, taken).exp().reshape(batch, middle)
        target = soft_n_step_target(
            data.rewards,
            data.mask,
            q_taken,
            v[:rows].reshape(batch, middle),
            v[rows:],
            data.dones.reshape(-1),
            self.gamma,
            middle_trace=trace,
        )
        return target.reshape(-1, 1)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        steps = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            with th.no_grad():
                if self.n_steps > 1:
                    target = self._n_step_target(data)  # type: ignore[arg-type]
                else:
                    v_next = self._soft_v(self.q_net_target, data.next_observations).reshape(-1, 1)
                    target = data.rewards + (1.0 - data.dones) * self.gamma * v_next
            q = th.gather(self.q_net(data.observations), 1, data.actions.long())
            loss = td_loss(q, target, self.loss)
            self._gradient_step(loss)
            steps.append((loss, q))
        self._n_updates += gradient_steps
        # train/* values are the means over this call's gradient steps, as in SB3's DQN;
        # they are computed (and synchronised to the host) only when the logger dumps
        self._pending_log = (self._n_updates, steps)

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        """Warm-up actions (before ``learning_starts``) come from the prior ``pi0``."""
        if self.num_timesteps < learning_starts and self.prior is not None:
            obs, _ = self.policy.obs_to_tensor(self._last_obs)  # type: ignore[arg-type]
            with th.no_grad():
                probs = th.softmax(self.policy.prior_logits(obs), dim=-1)  # type: ignore[arg-type]
                action = sample_categorical(probs).cpu().numpy()
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
