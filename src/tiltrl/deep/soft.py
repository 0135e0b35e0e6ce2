"""Soft (entropy-regularised) operators on torch tensors.

Convention of DESIGN.md §1: rewards, inverse temperature ``beta > 0``, prior policy
``pi0``; soft value ``V(s) = (1/beta) log sum_a pi0(a|s) exp(beta Q(s,a))`` and soft
policy ``pi(a|s) ∝ pi0(a|s) exp(beta Q(s,a))`` (Haarnoja et al., "Reinforcement
learning with deep energy-based policies", ICML 2017). The soft Bellman bounds are those
of DESIGN.md §5 (Adamczyk et al., "Boosting soft Q-learning by bounding", RLC 2024).
Pure functions, no state.
"""

from __future__ import annotations

import torch as th


def soft_value(q: th.Tensor, log_prior: th.Tensor, beta: float) -> th.Tensor:
    """``V = (1/beta) logsumexp(beta q + log pi0)`` over the last axis (log-space, stable)."""
    return th.logsumexp(beta * q + log_prior, dim=-1) / beta


def soft_logits(q: th.Tensor, log_prior: th.Tensor, beta: float) -> th.Tensor:
    """Unnormalised log-probabilities of the soft policy ``pi ∝ pi0 exp(beta q)``."""
    return beta * q + log_prior


def bellman_bound_offsets(
    residual: th.Tensor, gamma: float, dim: tuple[int, ...] | None = None
) -> tuple[th.Tensor, th.Tensor]:
    """Offsets ``(L, U)`` with ``T Q + gamma (1-done) L <= Q* <= T Q + gamma (1-done) U``.

    ``residual`` holds ``D = T Q - Q`` on the taken actions of a batch, terminal
    transitions included (their residual is ``r - Q``). DESIGN.md §5 gives, for
    continuing problems, ``L = min(D)/(1-gamma)`` and ``U = max(D)/(1-gamma)``. With
    terminal transitions the ``1/(1-gamma)`` amplification is valid only on the side where
    it loosens the bound (``min D <= 0`` resp. ``max D >= 0``); otherwise ``min D`` resp.
    ``max D`` itself is used, which is valid for episodic and continuing problems alike.
    Over a batch the extremes are estimates of the extremes over all (s, a).
    ``dim``: reduce over these axes only (several stacked residual sets at once, one pair
    of offsets per remaining index); ``None`` reduces over all entries.
    """
    if dim is None:
        d_min, d_max = residual.min(), residual.max()
    else:
        d_min, d_max = residual.amin(dim), residual.amax(dim)
    scale = 1.0 / (1.0 - gamma)
    lower = th.where(d_min <= 0, d_min * scale, d_min)
    upper = th.where(d_max >= 0, d_max * scale, d_max)
    return lower, upper


def soft_n_step_target(
    rewards: th.Tensor,
    mask: th.Tensor,
    middle_q: th.Tensor,
    middle_v: th.Tensor,
    last_v: th.Tensor,
    last_done: th.Tensor,
    gamma: float,
) -> th.Tensor:
    """Soft n-step (path-consistency) target for ``Q(s_0, a_0)``, shape ``(B,)``.

    ``y = sum_k gamma^k r_k + sum_{k>=1} gamma^k (V(s_k) - Q(s_k,a_k))
    + gamma^m (1 - done) V(s_m)`` over the ``m`` transitions where ``mask`` is 1
    (Nachum et al., NeurIPS 2017). ``V(s_k) - Q(s_k,a_k) = -(1/beta) log(pi/pi0)(a_k|s_k)``
    is the entropy term of the regularised objective (DESIGN.md §1) for the action taken,
    so the target is unbiased under the exact soft Q for any behaviour policy; with
    ``n = 1`` it is the one-step target ``r + gamma (1 - done) V(s')``.

    rewards, mask: ``(B, n)``; middle_q, middle_v: ``(B, n-1)`` (``Q`` of the taken
    action and ``V`` at ``s_1 .. s_{n-1}``); last_v, last_done: ``(B,)``.
    """
    n = rewards.shape[1]
    discount = gamma ** th.arange(n, dtype=rewards.dtype, device=rewards.device)
    path = (mask * discount * rewards).sum(dim=1)
    if n > 1:
        entropy_terms = (middle_v - middle_q) * mask[:, 1:] * discount[1:]
        path = path + entropy_terms.sum(dim=1)
    bootstrap = gamma ** mask.sum(dim=1) * (1.0 - last_done) * last_v
    return path + bootstrap
