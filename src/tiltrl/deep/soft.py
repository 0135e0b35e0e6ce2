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
    middle_trace: th.Tensor | None = None,
) -> th.Tensor:
    """Soft n-step target for ``Q(s_0, a_0)`` along a stored path, shape ``(B,)``.

    ``y = Q(s_0,a_0) + sum_t gamma^t C_t delta_t`` over the ``m`` transitions where
    ``mask`` is 1, with the soft TD errors ``delta_t = r_t + gamma (1 - done_t) V(s_{t+1})
    - Q(s_t,a_t)`` and traces ``C_0 = 1``, ``C_t = c_1 ... c_t``. Written out (``Q(s_0,a_0)``
    cancels, so it is not needed):

        y = sum_t gamma^t C_t r_t + sum_{k=1}^{m-1} gamma^k (C_{k-1} V(s_k) - C_k Q(s_k,a_k))
            + gamma^m C_{m-1} (1 - done) V(s_m).

    Under the exact soft Q each ``delta_t`` has mean zero given ``(s_t, a_t)`` whatever
    action was taken, so ``y`` is unbiased for any traces that depend on the path up to
    ``t`` only. ``middle_trace = None`` means ``c = 1``: the path-consistency target
    (Nachum et al., NeurIPS 2017), in which ``V(s_k) - Q(s_k,a_k) = -(1/beta)
    log(pi/pi0)(a_k|s_k)`` is each later step's entropy term; off-policy it is not a
    contraction (Harutyunyan et al., ALT 2016, on Q(lambda)) and on LunarLander it
    diverged. ``c_k = pi(a_k|s_k)`` is tree backup (Precup, Sutton, Singh, ICML 2000),
    a contraction for any behaviour policy (Munos et al., NeurIPS 2016): a step the soft
    policy would not take cuts the path there. With ``n = 1`` every choice gives the
    one-step target ``r + gamma (1 - done) V(s')``.

    rewards, mask: ``(B, n)``; middle_q, middle_v, middle_trace: ``(B, n-1)`` (``Q`` of
    the taken action, ``V`` and ``c`` at ``s_1 .. s_{n-1}``); last_v, last_done: ``(B,)``.
    """
    batch, n = rewards.shape
    discount = gamma ** th.arange(n, dtype=rewards.dtype, device=rewards.device)
    ones = th.ones(batch, 1, dtype=rewards.dtype, device=rewards.device)
    if n > 1 and middle_trace is not None:
        trace = th.cat([ones, th.cumprod(middle_trace, dim=1)], dim=1)  # C_0 .. C_{n-1}
    else:
        trace = ones.expand(batch, n)
    y = (mask * discount * trace * rewards).sum(dim=1)
    if n > 1:
        later = trace[:, :-1] * middle_v - trace[:, 1:] * middle_q
        y = y + (mask[:, 1:] * discount[1:] * later).sum(dim=1)
    length = mask.sum(dim=1)
    last_trace = trace.gather(1, (length.long() - 1).clamp(min=0)[:, None]).squeeze(1)
    return y + gamma**length * last_trace * (1.0 - last_done) * last_v
