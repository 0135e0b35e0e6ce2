"""EVAL: eigenvector-based average-reward learning with an ensemble of log u networks.

Adamczyk, Arriojas, Tiomkin, Kulkarni, "EVAL: EigenVector-based Average-reward
Learning", arXiv 2501.09770; theory in Arriojas, Adamczyk, Tiomkin, Kulkarni,
"Entropy regularized reinforcement learning using large deviation theory", PRR 5,
023085 (2023). Convention of DESIGN.md §1: ``u`` is the right Perron eigenvector of the
tilted matrix ``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r) pi0(a'|s')`` with root
``rho = exp(beta theta)``, ``theta`` the entropy-regularised reward rate; the optimal
policy is ``pi ∝ pi0 u`` and ``chi(s) = sum_a pi0(a|s) u(s,a)``.

Learning. The network has ``n_heads >= 2`` heads (one batched network) predicting
``log u(s, a)``; the aggregate (min/mean/max over heads) of the *target* network gives
``log chi(s') = logsumexp_a(log pi0 + log u)``. Each head regresses on
``y = beta (r - theta) + log chi_target(s') - m``:
- ``m`` fixes the scale of ``log u`` (an eigenvector is defined up to a factor):
  ``scale="mean"`` (default) uses the batch mean of ``log chi_target(s)``, which pins
  the replay-average of ``log chi`` to 0 and removes any drift of the scale while
  ``theta`` is still wrong (relative value iteration's reference trick); with
  ``scale="terminal"`` ``m = 0`` and the terminal value anchors the scale.
- ``theta`` is estimated in log space with its own step size ``theta_lr``: the batch
  estimate ``beta theta_hat = mean(beta r + log chi_target(s') - log u_target(s,a))``
  (the log of ``rho`` per sample; ``dynamics="controlled"`` takes the log of the mean of
  the ratios instead), then ``theta += theta_lr (theta_hat - theta)``.
- ``dynamics="fixed"`` (default) regresses in log space: the fixed point is the
  average-reward soft optimum under the environment's dynamics
  (``Q + theta = r + E V(s')`` with ``Q = log u / beta``). ``dynamics="controlled"``
  regresses ``u`` itself (relative squared error), whose fixed point is the Perron
  vector ``u = E[exp(beta (r - theta)) chi(s')]`` of the controlled problem. The two
  coincide for deterministic dynamics (DESIGN.md §2).
- Terminals, explicitly: a terminal transition keeps its reward and continues into a
  state of ``log chi = terminal_log_chi`` (relative to the scale ``m``); a truncated one
  bootstraps from its next observation (SB3's replay buffer keeps time-outs apart).
  Which continuation is right depends on the task. With ``m = 0`` (``"terminal"``) the
  Perron root is that of the chain *killed* at termination, whose growth rate is set by
  the trajectories that survive longest: right where termination is failure (CartPole),
  wrong where it is the goal. LunarLander's +100 landing is then a transient and the
  optimum is to hover for ever (measured: EVAL learns to land by ~40k steps, then drifts
  to hovering and flying off, returns -500 to -2000). ``"restart"`` counts the landing
  once per episode in the reward rate of the renewal process instead.
- Per step or per episode. ``"restart"`` (the published convention, DESIGN.md §3)
  charges ``theta`` on every step: its optimum maximises the soft reward *per step* of
  the renewal chain, ``E[R] / E[T]`` in the unregularised limit, which can pay to end
  episodes sooner at the cost of return. ``scale="episode"`` charges ``theta`` once per
  episode, on the terminal transition (``y = beta r - done beta theta + log chi(s') - m``,
  ``m`` as for ``"restart"``): the renewal chain then runs on an episode clock, and the
  fixed point is the first-exit problem of linearly solvable control (Todorov, "Efficient
  computation of optimal actions", PNAS 106, 11478, 2009): ``log chi = beta (W - theta)``
  with ``W`` the undiscounted soft value to termination and
  ``theta = log E_{s0} exp(beta W(s0)) / beta`` the soft-optimal return *per episode*.
  The policy is undiscounted soft Q-learning's with a zero terminal value; the restart
  pinning only removes the constant ``beta theta`` from ``log u``. ``theta`` is the
  charge that pins the start value: its batch estimate is ``theta + m / beta`` (``m``,
  subtracted from every target, acts as a per-step charge until ``theta`` has taken it
  over; at the fixed point ``m = 0``). It starts at 0 (``theta_init`` overrides).
  Exact on a tabular episodic grid (tests); on LunarLander (beta 10, seed 1) theta ran up
  to ~1,850 by 27,500 steps while episodes returned -34 to -204: with no per-step
  charge, nothing holds back the undiscounted values' upward drift.
- Optional posterior policy iteration (``learned_prior=True``): a prior network is
  trained (step size ``prior_lr``) to track the current policy ``pi ∝ pi0 u``, so the
  KL cost shrinks towards the unregularised limit.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BasePolicy

from tiltrl.deep.policies import EnsembleLogUNetwork, EVALPolicy
from tiltrl.deep.soft_dqn import LOSSES, SoftDQN, td_loss

SCALES = ("mean", "terminal", "restart", "episode")
# the scales that pin log E chi(s0) of episodes' first observations to the terminal value
RESTART_SCALES = ("restart", "episode")
UNITS = ("log_u", "reward")
DYNAMICS = ("fixed", "controlled")


class EVAL(SoftDQN):
    """EVAL on SB3's off-policy machinery (see the module docstring for the maths).

    Parameters beyond :class:`stable_baselines3.DQN` (``gamma`` is ignored):
      beta, prior: inverse temperature and prior policy (as :class:`SoftDQN`).
      n_heads, aggregation: ensemble size (>= 1; >= 2 recommended) and
        ``"min"``/``"mean"``/``"max"`` aggregation.
      theta_lr: step size of the theta estimate; theta_init: initial theta (``None``:
        the first batch estimate; 0 for ``scale="episode"``).
      dynamics: ``"fixed"`` (log-space loss) or ``"controlled"`` (u-space loss).
      scale: ``"mean"``, ``"terminal"``, ``"restart"`` or ``"episode"`` (how the scale
        of log u is fixed). ``"mean"`` is well posed for continuing tasks; for episodic tasks whose
        termination is a failure (CartPole) use ``"terminal"`` (the published choice):
        with ``"mean"`` a terminal state with ``terminal_log_chi=0`` is worth an average
        state, which removes most of the incentive to survive (measured: CartPole stays
        near 10-50). For episodic tasks whose termination is the goal (LunarLander) use
        ``"restart"``: a terminal step is worth a fresh episode's start. ``"episode"``:
        as ``"restart"``, but ``theta`` is a rate per episode, charged at termination
        (the return per episode, not per step, is maximised; module docstring).
      initial_buffer_size: ``scale="restart"``/``"episode"`` keeps the last this many
        first observations of episodes (a ring buffer; up to ``batch_size`` of them per
        gradient step).
      terminal_log_chi: ``log chi`` of the state after a terminal transition.
      units: what the network's heads output and the TD loss measures. ``"log_u"`` (the
        published choice): ``log u`` itself. ``"reward"``: ``log u / beta``, a soft Q in
        reward units, as :class:`SoftDQN`'s network; the fixed point is the same, but
        targets keep the reward's scale whatever beta is (at beta 10 on LunarLander,
        ``log u`` spans thousands, which Adam's per-step moves of ~``learning_rate``
        reach slowly, and a Huber loss on it is nearly L1).
      log_u_clip: optional clamp ``|y| <= log_u_clip`` on the targets.
      learned_prior, prior_lr: posterior policy iteration.
    """

    supports_n_steps: ClassVar[bool] = False  # its own targets are one-step

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {  # type: ignore[misc]
        "MlpPolicy": EVALPolicy,
        "EVALPolicy": EVALPolicy,
    }
    policy: EVALPolicy
    q_net: EnsembleLogUNetwork
    q_net_target: EnsembleLogUNetwork

    def __init__(
        self,
        policy: Any = "MlpPolicy",
        env: Any = None,
        beta: float = 1.0,
        n_heads: int = 2,
        aggregation: str = "max",
        theta_lr: float = 0.1,
        theta_init: float | None = None,
        dynamics: str = "fixed",
        scale: str = "mean",
        terminal_log_chi: float = 0.0,
        log_u_clip: float | None = None,
        learned_prior: bool = False,
        prior_lr: float = 1e-3,
        initial_buffer_size: int = 1000,
        units: str = "log_u",
        _init_setup_model: bool = True,
        **kwargs: Any,
    ) -> None:
        if dynamics not in DYNAMICS:
            raise ValueError(f"dynamics must be one of {DYNAMICS}, got {dynamics!r}")
        if scale not in SCALES:
            raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
        if units not in UNITS:
            raise ValueError(f"units must be one of {UNITS}, got {units!r}")
        if not 0 < theta_lr <= 1:
            raise ValueError("theta_lr must be in (0, 1]")
        if initial_buffer_size < 1:
            raise ValueError(f"initial_buffer_size must be >= 1, got {initial_buffer_size}")
        super().__init__(policy, env, beta=beta, _init_setup_model=False, **kwargs)
        self.n_heads = int(n_heads)
        self.aggregation = aggregation
        self.theta_lr = float(theta_lr)
        self.theta = float("nan") if theta_init is None else float(theta_init)
        self.dynamics = dynamics
        self.scale = scale
        self.terminal_log_chi = float(terminal_log_chi)
        self.log_u_clip = log_u_clip
        self.learned_prior = bool(learned_prior)
        self.prior_lr = float(prior_lr)
        self.initial_buffer_size = int(initial_buffer_size)
        self.units = units
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        current: dict[str, Any] = dict(getattr(self, "policy_kwargs", None) or {})
        self.policy_kwargs = {
            **current,
            "n_heads": self.n_heads,
            "aggregation": self.aggregation,
            "learned_prior": self.learned_prior,
            "output_scale": self.beta if self.units == "reward" else 1.0,
        }
        if self.scale in RESTART_SCALES and isinstance(self.observation_space, spaces.Dict):
            raise ValueError(f"scale={self.scale!r} needs array observations, not a Dict space")
        super()._setup_model()
        # ring buffer of first observations (RESTART_SCALES); load() runs _setup_model
        # again and the buffer, not saved, starts empty
        self._initial_count = 0
        self._initial_obs: np.ndarray | None = None
        if self.scale in RESTART_SCALES:
            width = int(np.prod(self.observation_space.shape))  # type: ignore[arg-type]
            self._initial_obs = np.empty((self.initial_buffer_size, width), np.float32)
        self.prior_optimizer: th.optim.Optimizer | None = None
        if self.policy.prior_net is not None:
            self.prior_optimizer = th.optim.Adam(
                self.policy.prior_net.parameters(), lr=self.prior_lr
            )

    def _get_torch_save_params(self) -> tuple[list[str], list[str]]:
        state_dicts, other = super()._get_torch_save_params()
        if self.learned_prior:
            state_dicts = [*state_dicts, "prior_optimizer"]
        return state_dicts, other

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "prior_optimizer", "_initial_obs"]

    def _record_initial(self, observations: Any) -> None:
        """Adds first observations of episodes (unnormalised, as the replay buffer keeps
        them) to the ring buffer of ``scale="restart"``/``"episode"``."""
        if self._initial_obs is None:  # scale not in RESTART_SCALES
            return
        obs = np.asarray(observations, dtype=np.float32).reshape(len(observations), -1)
        for row in obs:
            self._initial_obs[self._initial_count % self.initial_buffer_size] = row
            self._initial_count += 1

    def _setup_learn(
        self,
        total_timesteps: int,
        callback: Any = None,
        reset_num_timesteps: bool = True,
        tb_log_name: str = "run",
        progress_bar: bool = False,
    ) -> Any:
        # SB3 resets the env only in these two cases; otherwise learning continues
        # mid-episode and the current observations are not first ones
        resets = reset_num_timesteps or self._last_obs is None
        out = super()._setup_learn(
            total_timesteps, callback, reset_num_timesteps, tb_log_name, progress_bar
        )
        if resets and self._last_obs is not None:  # the first observations of episodes
            original = getattr(self, "_last_original_obs", None)
            vec_norm = self._vec_normalize_env is not None and original is not None
            self._record_initial(original if vec_norm else self._last_obs)
        return out

    def _store_transition(
        self,
        replay_buffer: Any,
        buffer_action: np.ndarray,
        new_obs: Any,
        reward: np.ndarray,
        dones: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        super()._store_transition(replay_buffer, buffer_action, new_obs, reward, dones, infos)
        if self.scale in RESTART_SCALES and np.any(dones):
            # the VecEnv has reset the done sub-envs: new_obs holds their first observations
            original = self._last_original_obs if self._vec_normalize_env is not None else new_obs
            self._record_initial(np.asarray(original)[np.asarray(dones, dtype=bool)])

    def _initial_batch(self, n: int) -> th.Tensor:
        """Up to ``n`` first observations drawn uniformly from the ring buffer, as the
        network's input (normalised like a replay sample)."""
        assert self._initial_obs is not None and self._initial_count > 0
        size = min(self._initial_count, self.initial_buffer_size)
        # the global RNG, as SB3's replay buffer samples: seeded by ``seed`` with it
        pick = self._initial_obs[np.random.randint(0, size, size=min(n, size))]  # noqa: NPY002
        if self._vec_normalize_env is not None:
            pick = np.asarray(self._vec_normalize_env.normalize_obs(pick), dtype=np.float32)
        shape = (len(pick), *self.observation_space.shape)  # type: ignore[misc]
        return th.as_tensor(pick.reshape(shape), device=self.device)

    def _log_rho(self, log_ratio: th.Tensor) -> float:
        """The batch estimate of ``beta theta`` from per-sample log ratios: their mean
        (``dynamics="fixed"``) or the log of the mean ratio (``"controlled"``)."""
        if self.dynamics == "fixed":
            return float(log_ratio.mean().item())
        return float((th.logsumexp(log_ratio, 0) - math.log(log_ratio.numel())).item())

    def _log_chi(self, log_u: th.Tensor, obs: th.Tensor) -> th.Tensor:
        return th.logsumexp(log_u + self.policy.prior_logits(obs), dim=-1)

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        steps: list[tuple[Any, ...]] = []
        beta = self.beta
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            obs, nxt = data.observations, data.next_observations
            actions = data.actions.long().view(-1, 1)
            r = data.rewards.view(-1)
            done = data.dones.view(-1) > 0.5
            heads = self.q_net.heads(obs)  # (B, K, A)
            idx = actions.view(-1, 1, 1).expand(-1, heads.shape[1], 1)
            log_u_sa = heads.gather(2, idx).squeeze(2)  # (B, K)
            with th.no_grad():
                both = th.cat([obs, nxt]) if isinstance(obs, th.Tensor) else None
                restarts = self.scale in RESTART_SCALES
                initial = self._initial_batch(batch_size) if restarts else None
                log_chi_initial: th.Tensor | None = None
                if both is not None:  # one target pass for s and s' (and first obs)
                    if initial is not None:
                        both = th.cat([both, initial.to(both.dtype)])
                    log_u_both = self.q_net_target(both)
                    log_chi_both = self._log_chi(log_u_both, both)
                    n = obs.shape[0]
                    log_u_t, log_chi_t, log_chi_next = (
                        log_u_both[:n],
                        log_chi_both[:n],
                        log_chi_both[n : 2 * n],
                    )
                    log_chi_initial = log_chi_both[2 * n :]
                else:  # dict observations
                    log_u_t = self.q_net_target(obs)
                    log_chi_t = self._log_chi(log_u_t, obs)
                    log_chi_next = self._log_chi(self.q_net_target(nxt), nxt)
                cont = log_chi_next.masked_fill(done, self.terminal_log_chi)
                m: th.Tensor | None = None
                if self.scale == "mean":
                    m = log_chi_t.mean()
                elif restarts:  # log E_{s0} chi(s0): a restart's worth
                    assert log_chi_initial is not None
                    m = th.logsumexp(log_chi_initial, 0) - math.log(log_chi_initial.numel())
                if self.scale == "episode":
                    # m, subtracted on every step, is a per-step charge while it is not 0;
                    # theta takes it over: the per-episode charge that pins the start
                    # value, log E chi(s0) = 0, without one
                    assert m is not None
                    if not math.isfinite(self.theta):  # theta starts at 0
                        self.theta = 0.0
                    theta_hat = self.theta + float(m.item()) / beta
                    y = beta * r - done.to(r.dtype) * (beta * self.theta) + cont
                else:
                    log_ratio = beta * r + cont - log_u_t.gather(1, actions).view(-1)
                    theta_hat = self._log_rho(log_ratio) / beta
                    if not math.isfinite(self.theta):
                        self.theta = theta_hat
                    y = beta * (r - self.theta) + cont
                if m is not None:
                    y = y - m
                if self.log_u_clip is not None:
                    y = y.clamp(-self.log_u_clip, self.log_u_clip)
                y = y.view(-1, 1).expand_as(log_u_sa)
            if self.dynamics == "fixed":
                unit = self.q_net.output_scale  # beta for units="reward", else 1
                loss = td_loss(log_u_sa / unit, y / unit, self.loss) * heads.shape[1]
            else:
                ref = log_u_sa.detach()
                rel = th.exp(log_u_sa - ref) - th.exp((y - ref).clamp(max=20.0))
                loss = (rel**2).mean() * heads.shape[1]
            self._gradient_step(loss)
            self.theta += self.theta_lr * (theta_hat - self.theta)
            kl = self._prior_step(obs) if self.prior_optimizer is not None else None
            steps.append((loss, theta_hat, m, log_u_sa, kl))
        self._n_updates += gradient_steps
        # recorded when the logger dumps (SoftDQN.dump_logs), means over this call's steps
        self._pending_log = (self._n_updates, (self.theta, steps))

    def _record_train_log(self, pending: Any) -> None:
        n_updates, (theta, steps) = pending
        rec = self.logger.record
        rec("train/n_updates", n_updates, exclude="tensorboard")
        rec("train/loss", th.stack([s[0] for s in steps]).mean().item())
        rec("train/theta", theta)
        rec("train/theta_batch", float(np.mean([s[1] for s in steps])))
        # the scale m is 0 for scale="terminal"
        ms = [th.zeros(()) if s[2] is None else s[2] for s in steps]
        rec("train/log_u_scale", th.stack(ms).float().mean().item())
        rec("train/log_u_mean", th.stack([s[3].mean() for s in steps]).mean().item())
        if steps[0][4] is not None:
            rec("train/prior_kl", float(np.mean([s[4].item() for s in steps])))

    def _prior_step(self, obs: th.Tensor) -> th.Tensor:
        """One step of posterior policy iteration: move ``pi0`` towards ``pi ∝ pi0 u``;
        returns the KL before the step."""
        assert self.prior_optimizer is not None
        with th.no_grad():
            target = th.softmax(self.policy.logits(obs), dim=-1)
        log_prior = self.policy.prior_logits(obs)
        kl = (target * (th.log(target.clamp_min(1e-12)) - log_prior)).sum(-1).mean()
        self.prior_optimizer.zero_grad()
        kl.backward()
        self.prior_optimizer.step()
        return kl.detach()

    def log_u(self, observation: np.ndarray, heads: bool = False) -> np.ndarray:
        """``log u`` of the online network: ``(B, A)`` aggregated or ``(B, K, A)`` heads."""
        obs, _ = self.policy.obs_to_tensor(observation)
        with th.no_grad():
            out = self.q_net.heads(obs) if heads else self.q_net(obs)
        return out.cpu().numpy()


__all__ = ["EVAL", "LOSSES", "SCALES", "RESTART_SCALES", "DYNAMICS", "UNITS"]
