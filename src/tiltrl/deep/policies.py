"""Policies of the soft deep agents on the stable-baselines3 ``DQNPolicy`` machinery.

- ``SoftQPolicy``: a Q network (and its target) read as soft Q-values; actions from the
  soft policy ``pi ∝ pi0 exp(beta Q)`` (Haarnoja et al., ICML 2017); ``deterministic=True``
  takes its mode (greedy), ``deterministic=False`` samples it (Boltzmann exploration).
- ``EVALPolicy``: an ensemble of ``log u(s, a)`` heads in one batched network (no Python
  loop over heads), aggregated by min/mean/max; actions from ``pi ∝ pi0 u`` (EVAL:
  Adamczyk et al., arXiv 2501.09770; Arriojas et al., PRR 5, 023085, 2023). An optional
  learned prior network (posterior policy iteration) can replace the fixed prior.
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.preprocessing import is_image_space, preprocess_obs
from stable_baselines3.common.torch_layers import FlattenExtractor, create_mlp
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from torch import nn
from torch.nn import functional as F

from tiltrl.deep.priors import LogPrior, PriorSpec

AGGREGATIONS = ("min", "mean", "max")


def sample_categorical(probs: th.Tensor) -> th.Tensor:
    """One draw per row of ``probs`` (``(B, A)``, rows summing to 1), shape ``(B,)``.

    Exactly ``th.multinomial(probs, 1).squeeze(-1)``: for one sample torch draws
    ``q ~ Exp(1)`` per entry (``empty_like(probs).exponential_()``, the same generator
    calls) and returns ``argmax(probs / q)`` (the exponential race); this is that
    computation without multinomial's validity checks (four reductions and two host
    syncs per call), so the draws and the random stream are unchanged. One check is
    kept: non-finite probabilities (a diverged network) raise instead of picking an
    arbitrary action.
    """
    if not bool(th.isfinite(probs).all()):
        bad = (~th.isfinite(probs)).nonzero()[0].tolist()
        raise ValueError(
            f"action probabilities are not finite (row {bad[0]}, action {bad[1]}: "
            f"{float(probs[bad[0], bad[1]])}); the network output has diverged"
        )
    return th.argmax(probs / th.empty_like(probs).exponential_(), dim=-1)


def run_layers(layers: nn.Sequential, h: th.Tensor) -> th.Tensor:
    """``layers(h)`` for an ``nn.Sequential``, with ``nn.Linear``, ``nn.ReLU`` and
    :class:`BatchedLinear` applied as the torch functions their ``forward`` calls (the
    same operations, without ``Module.__call__``'s dispatch per layer; hooks registered
    on these inner layers are therefore not run). Other layers are called normally."""
    for layer in layers:
        kind = type(layer)
        if kind is nn.Linear:
            lin = cast(nn.Linear, layer)
            h = F.linear(h, lin.weight, lin.bias)
        elif kind is BatchedLinear:
            blin = cast(BatchedLinear, layer)
            h = th.baddbmm(blin.bias, h, blin.weight)
        elif kind is nn.ReLU and not layer.inplace:
            h = th.relu(h)
        else:
            h = layer(h)
    return h


def features(net: QNetwork, obs: Any) -> th.Tensor:
    """``net.extract_features(obs, net.features_extractor)``; SB3's default
    ``FlattenExtractor`` as the ``flatten(1)`` it performs."""
    extractor = net.features_extractor
    if type(extractor) is FlattenExtractor:
        x = preprocess_obs(obs, net.observation_space, normalize_images=net.normalize_images)
        assert isinstance(x, th.Tensor)
        return x.flatten(1)
    return net.extract_features(obs, extractor)


class SoftQNetwork(QNetwork):
    """SB3's ``QNetwork`` (same layers, parameters and initialisation) whose forward pass
    runs the MLP through :func:`run_layers`."""

    def forward(self, obs: Any) -> th.Tensor:
        return run_layers(self.q_net, features(self, obs))


class SoftQPolicy(DQNPolicy):
    """``DQNPolicy`` whose action rule is the soft policy ``pi ∝ pi0 exp(beta Q)``.

    Extra keyword arguments: ``beta`` (inverse temperature) and ``prior`` (see
    :mod:`tiltrl.deep.priors`). The algorithms set both; users need not.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        beta: float = 1.0,
        prior: PriorSpec = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self.beta = float(beta)
        self.prior = prior
        self.log_prior = LogPrior(prior, int(action_space.n)).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(beta=self.beta, prior=self.prior)
        return data

    def make_q_net(self) -> QNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return SoftQNetwork(**net_args).to(self.device)

    def prior_logits(self, obs: th.Tensor) -> th.Tensor:
        """``log pi0(.|s)``, shape ``(B, A)``."""
        return self.log_prior(obs)

    def logits(self, obs: th.Tensor) -> th.Tensor:
        """Unnormalised ``log pi(.|s)`` of the acting policy, shape ``(B, A)``."""
        return self.beta * self.q_net(obs) + self.prior_logits(obs)

    def action_probabilities(self, obs: th.Tensor) -> th.Tensor:
        return th.softmax(self.logits(obs), dim=-1)

    def _predict(self, obs: Any, deterministic: bool = True) -> th.Tensor:
        logits = self.logits(obs)
        if deterministic:
            return logits.argmax(dim=-1)
        return sample_categorical(th.softmax(logits, dim=-1))

    def set_training_mode(self, mode: bool) -> None:
        """``DQNPolicy.set_training_mode``: the ``training`` flag of ``q_net`` and all its
        submodules, and of the policy (the target network stays in eval mode).

        Called twice per environment step at ``train_freq=1`` (acting, training);
        ``nn.Module.train`` walks the tree through ``Module.__setattr__``, which here
        costs as much as a small network pass, so the flag is set directly on a cached
        module list (unless a module overrides ``train``)."""
        cache = self.__dict__.get("_mode_cache")
        if cache is None or cache[0] is not self.q_net:
            modules = list(self.q_net.modules())
            plain = all(type(m).train is nn.Module.train for m in modules)
            cache = (self.q_net, modules if plain else None)
            self.__dict__["_mode_cache"] = cache
        if cache[1] is None:
            super().set_training_mode(mode)
            return
        mode = bool(mode)
        for module in cache[1]:
            module.__dict__["training"] = mode
        self.__dict__["training"] = mode

    def predict(
        self,
        observation: Any,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """``BasePolicy.predict``; a batch of (non-image) ``Box`` observations, the
        rollout case, goes straight to the network, without SB3's generic conversion."""
        box = self.__dict__.get("_plain_box")
        if box is None:
            space = self.observation_space
            box = isinstance(space, spaces.Box) and not is_image_space(space)
            self.__dict__["_plain_box"] = box
        if (
            box
            and type(observation) is np.ndarray
            and observation.shape[1:] == self.observation_space.shape
        ):
            self.set_training_mode(False)
            obs = th.as_tensor(observation, device=self.log_prior.log_vec.device)
            with th.no_grad():
                actions = self._predict(obs, deterministic=deterministic)
            return actions.cpu().numpy(), state
        return super().predict(observation, state, episode_start, deterministic)


class BatchedLinear(nn.Module):
    """``K`` independent linear maps applied in one batched matmul: ``(K,B,i) -> (K,B,o)``."""

    def __init__(self, n_heads: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per head
        self.weight = nn.Parameter(th.empty(n_heads, in_features, out_features))
        self.bias = nn.Parameter(th.empty(n_heads, 1, out_features))
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: th.Tensor) -> th.Tensor:
        return th.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """``K`` MLPs evaluated as one network; ``forward(x: (B,i)) -> (B, K, o)``.

    The first layer, whose input all heads share, is one ``(i, K*h)`` matmul; the later
    layers are per-head batched matmuls (``baddbmm``). Each head is initialised like an
    ``nn.Linear`` stack.
    """

    def __init__(
        self,
        n_heads: int,
        in_features: int,
        out_features: int,
        net_arch: list[int],
        activation_fn: type[nn.Module],
    ) -> None:
        super().__init__()
        self.n_heads = int(n_heads)
        sizes = [*net_arch, out_features]
        self.first_width = sizes[0]
        bound = 1.0 / math.sqrt(in_features)
        self.first = nn.Linear(in_features, n_heads * sizes[0])
        nn.init.uniform_(self.first.weight, -bound, bound)
        nn.init.uniform_(self.first.bias, -bound, bound)
        layers: list[nn.Module] = []
        for j in range(len(sizes) - 1):
            layers.append(activation_fn())
            layers.append(BatchedLinear(n_heads, sizes[j], sizes[j + 1]))
        self.rest = nn.Sequential(*layers)

    def forward(self, x: th.Tensor) -> th.Tensor:
        first = self.first
        h = F.linear(x, first.weight, first.bias)
        h = h.view(x.shape[0], self.n_heads, self.first_width).transpose(0, 1)
        return run_layers(self.rest, h).transpose(0, 1)


def aggregate(heads: th.Tensor, how: str) -> th.Tensor:
    """Aggregate ``(B, K, A)`` head outputs over ``K`` by ``min``, ``mean`` or ``max``."""
    if how == "mean":
        return heads.mean(dim=1)
    if how == "min":
        return heads.min(dim=1).values
    if how == "max":
        return heads.max(dim=1).values
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {how!r}")


class EnsembleLogUNetwork(QNetwork):
    """Ensemble of ``log u(s, .)`` heads; ``forward`` returns the aggregate ``(B, A)``."""

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: nn.Module,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_heads: int = 2,
        aggregation: str = "max",
        output_scale: float = 1.0,
    ) -> None:
        super().__init__(
            observation_space,
            action_space,
            features_extractor,  # type: ignore[arg-type]
            features_dim,
            net_arch,
            activation_fn,
            normalize_images,
        )
        if n_heads < 1:
            raise ValueError("n_heads must be >= 1")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if not output_scale > 0:
            raise ValueError(f"output_scale must be > 0, got {output_scale}")
        self.n_heads = int(n_heads)
        self.aggregation = aggregation
        self.output_scale = float(output_scale)
        arch = [64, 64] if net_arch is None else list(net_arch)
        self.q_net = EnsembleMLP(  # type: ignore[assignment]
            n_heads, features_dim, int(action_space.n), arch, activation_fn
        )

    def heads(self, obs: Any) -> th.Tensor:
        """All heads, shape ``(B, K, A)``."""
        out = self.q_net(features(self, obs))
        return out if self.output_scale == 1.0 else out * self.output_scale

    def forward(self, obs: Any) -> th.Tensor:
        return aggregate(self.heads(obs), self.aggregation)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            n_heads=self.n_heads, aggregation=self.aggregation, output_scale=self.output_scale
        )
        return data


class EVALPolicy(SoftQPolicy):
    """Policy of :class:`tiltrl.deep.EVAL`: ``pi ∝ pi0 u`` from an ensemble of log u heads.

    ``n_heads`` and ``aggregation`` configure the ensemble; ``learned_prior=True`` adds a
    prior network whose output is added to ``log pi0`` (last layer zero-initialised, so it
    starts at the given prior); the algorithm trains it to track the current policy
    (posterior policy iteration). ``beta`` is not used in the action rule (``log u``
    already contains it). ``output_scale`` multiplies the heads' raw outputs: with
    ``output_scale=beta`` the network itself predicts ``log u / beta`` (reward units).
    """

    q_net: EnsembleLogUNetwork
    q_net_target: EnsembleLogUNetwork

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Any,
        n_heads: int = 2,
        aggregation: str = "max",
        learned_prior: bool = False,
        output_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        self.n_heads = int(n_heads)
        self.aggregation = aggregation
        self.output_scale = float(output_scale)
        self.learned_prior = bool(learned_prior)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self.prior_net: nn.Module | None = None
        if self.learned_prior:
            in_dim = int(self.q_net.features_dim)
            layers = create_mlp(in_dim, int(action_space.n), list(self.net_arch or [64, 64]))
            last = layers[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.zeros_(last.bias)
            self.prior_net = nn.Sequential(*layers).to(self.device)

    def make_q_net(self) -> EnsembleLogUNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return EnsembleLogUNetwork(
            **net_args,
            n_heads=self.n_heads,
            aggregation=self.aggregation,
            output_scale=self.output_scale,
        ).to(self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            n_heads=self.n_heads,
            aggregation=self.aggregation,
            learned_prior=self.learned_prior,
            output_scale=self.output_scale,
        )
        return data

    def prior_logits(self, obs: th.Tensor) -> th.Tensor:
        base = self.log_prior(obs)
        if self.prior_net is None:
            return base
        x = preprocess_obs(obs, self.observation_space, normalize_images=self.normalize_images)
        assert isinstance(x, th.Tensor)
        return th.log_softmax(base + self.prior_net(th.flatten(x, 1).float()), dim=-1)

    def logits(self, obs: th.Tensor) -> th.Tensor:
        return self.q_net(obs) + self.prior_logits(obs)
