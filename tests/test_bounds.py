"""Soft Bellman bounds (DESIGN.md §5): lb <= Q* <= ub for ANY Q, on random MDPs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st

import tiltrl
from _random_models import random_transitions
from tiltrl.bounds import (
    CountModel,
    bellman_target,
    naive_bounds,
    soft_bellman_bounds,
    soft_value,
)


def random_mdp(seed: int, S: int, A: int, deterministic: bool) -> tiltrl.TabularMDP:
    rng = np.random.default_rng(seed)
    P = random_transitions(rng, S, A, deterministic)
    r = rng.normal(size=(S, A)) * 2.0
    prior = rng.dirichlet(np.ones(A), size=S)
    return tiltrl.TabularMDP(P, r, prior=prior)


mdp_params = st.tuples(
    st.integers(0, 10_000),              # seed
    st.integers(2, 6),                   # S
    st.integers(1, 3),                   # A
    st.booleans(),                       # deterministic
    st.sampled_from([0.2, 1.0, 5.0]),    # beta
    st.sampled_from([0.0, 0.5, 0.9, 0.97]),  # gamma
)


def _tol(qstar: np.ndarray, gamma: float) -> float:
    return 1e-7 * (1.0 + np.abs(qstar).max()) / (1.0 - gamma)


@given(mdp_params, st.floats(0.1, 30.0))
def test_bounds_bracket_optimum_for_any_q(params, q_scale):
    seed, S, A, det, beta, gamma = params
    mdp = random_mdp(seed, S, A, det)
    qstar = tiltrl.solve(mdp, beta, gamma=gamma, tol=1e-13).q
    rng = np.random.default_rng(seed + 1)
    q = rng.normal(size=(5, S, A)) * q_scale + rng.normal(size=(5, 1, 1)) * q_scale
    q[0] = qstar + rng.normal(size=(S, A)) * 1e-3  # near the optimum
    b = soft_bellman_bounds(q, mdp, beta, gamma)
    tol = _tol(qstar, gamma)
    assert b.lb.shape == q.shape and b.crossed == 0
    assert np.all(b.lb <= qstar + tol), (b.lb - qstar).max()
    assert np.all(qstar <= b.ub + tol), (qstar - b.ub).max()
    # bounds are informative: they are not infinite and contain TQ's range
    assert np.all(np.isfinite(b.lb)) and np.all(b.lb <= b.ub)


@given(mdp_params)
def test_gap_closes_at_optimum_and_offset_invariance(params):
    seed, S, A, det, beta, gamma = params
    mdp = random_mdp(seed, S, A, det)
    qstar = tiltrl.solve(mdp, beta, gamma=gamma, tol=1e-13).q
    b = soft_bellman_bounds(qstar, mdp, beta, gamma)
    tol = _tol(qstar, gamma)
    assert np.max(b.gap) <= 10 * tol
    np.testing.assert_allclose(b.lb, qstar, atol=10 * tol)
    np.testing.assert_allclose(b.ub, qstar, atol=10 * tol)
    # a constant offset leaves both bounds unchanged
    q = np.random.default_rng(seed).normal(size=(S, A)) * 3
    b0 = soft_bellman_bounds(q, mdp, beta, gamma)
    b1 = soft_bellman_bounds(q + 17.5, mdp, beta, gamma)
    np.testing.assert_allclose(b1.lb, b0.lb, atol=1e-9 / (1 - gamma))
    np.testing.assert_allclose(b1.ub, b0.ub, atol=1e-9 / (1 - gamma))
    # residual bounds are never looser than the reward-range bounds at Q = 0 ... but they
    # always bracket: the naive ones hold too
    lo, hi = naive_bounds(mdp.reward_range(), gamma)
    assert np.all(qstar >= lo - tol) and np.all(qstar <= hi + tol)


def test_target_is_expectation_not_log_e_exp(rng):
    mdp = random_mdp(3, 5, 2, deterministic=False)
    q = rng.normal(size=(5, 2))
    beta, gamma = 2.0, 0.9
    v = soft_value(q, mdp.prior, beta)
    expected = mdp.reward + gamma * (mdp.P @ v).reshape(5, 2)
    np.testing.assert_allclose(bellman_target(q, mdp, beta, gamma), expected, rtol=1e-12)
    # soft value with the prior: (1/beta) log sum pi0 exp(beta Q), no -log|A| term
    pi0 = mdp.prior
    np.testing.assert_allclose(v, np.log((pi0 * np.exp(beta * q)).sum(1)) / beta, rtol=1e-12)
    # the log-E-exp operator differs under stochastic dynamics
    log_e_exp = mdp.reward + np.log((mdp.P @ np.exp(beta * gamma * v)).reshape(5, 2)) / beta
    assert np.max(np.abs(log_e_exp - expected)) > 1e-3


def test_terminal_residual_kept():
    """Terminal transitions: target r (no bootstrap); Q* from an explicit absorbing state."""
    mdp = random_mdp(11, 4, 2, deterministic=False)
    rng = np.random.default_rng(5)
    done = (rng.random(mdp.nnz) < 0.4).astype(float)
    beta, gamma = 1.5, 0.9
    # augmented model: terminal mass goes to an absorbing zero-reward state z (V(z) = 0)
    S, A = mdp.shape
    P = mdp.P.tocoo()
    data = np.concatenate([P.data * (1 - done), P.data * done, np.ones(A)])
    rows = np.concatenate([P.row, P.row, S * A + np.arange(A)])
    cols = np.concatenate([P.col, np.full(mdp.nnz, S), np.full(A, S)])
    Paug = sp.csr_matrix((data, (rows, cols)), shape=((S + 1) * A, S + 1))
    Paug.eliminate_zeros()
    r = np.vstack([mdp.reward, np.zeros((1, A))])
    aug = tiltrl.TabularMDP(Paug, r, prior=np.vstack([mdp.prior, np.full((1, A), 1 / A)]))
    qstar = tiltrl.solve(aug, beta, gamma=gamma, tol=1e-13).q[:S]
    for scale in (0.5, 5.0, 50.0):
        q = rng.normal(size=(S, A)) * scale
        b = soft_bellman_bounds(q, mdp, beta, gamma, terminal=done)
        assert np.all(b.lb <= qstar + 1e-8) and np.all(qstar <= b.ub + 1e-8)
    b = soft_bellman_bounds(qstar, mdp, beta, gamma, terminal=done)
    assert np.max(b.gap) < 1e-7
    # dropping the terminal residual (treating done as continuing) breaks the bracket
    b_wrong = soft_bellman_bounds(qstar, mdp, beta, gamma)
    assert np.max(np.abs(b_wrong.lb - qstar)) > 1e-3


@given(mdp_params, st.integers(1, 50))
def test_count_model_bounds_the_empirical_optimum(params, n_per_pair):
    seed, S, A, det, beta, gamma = params
    mdp = random_mdp(seed, S, A, det)
    rng = np.random.default_rng(seed)
    # sample n_per_pair transitions of every pair from the true model
    dense = mdp.dense_transitions().reshape(S * A, S)
    counts = np.vstack([rng.multinomial(n_per_pair, p) for p in dense]).astype(float)
    noise = rng.normal(size=(S, A)) * 0.3
    model = CountModel(
        visits=np.full((S, A), float(n_per_pair)),
        next_counts=counts,
        reward_sum=(mdp.reward + noise) * n_per_pair,
        prior=mdp.prior,
    )
    emp = tiltrl.TabularMDP(counts.reshape(S, A, S) / n_per_pair, mdp.reward + noise,
                            prior=mdp.prior)
    qhat = tiltrl.solve(emp, beta, gamma=gamma, tol=1e-13).q
    q = rng.normal(size=(3, S, A)) * 5
    b = soft_bellman_bounds(q, model, beta, gamma)
    tol = _tol(qhat, gamma)
    assert np.all(b.lb <= qhat + tol) and np.all(qhat <= b.ub + tol)
    # with exact counts (proportional to p) the count model reproduces the given model
    exact = CountModel(np.full((S, A), 4.0), dense * 4.0, mdp.reward * 4.0, mdp.prior)
    be = soft_bellman_bounds(q, exact, beta, gamma)
    bg = soft_bellman_bounds(q, mdp, beta, gamma)
    np.testing.assert_allclose(be.lb, bg.lb, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(be.ub, bg.ub, rtol=1e-10, atol=1e-10)


def test_count_model_unvisited_and_terminal_counts():
    S, A = 3, 2
    m = CountModel.empty(S, A)
    m.visits[0, 1] = 4           # 4 visits, 1 of them terminal
    m.next_counts[1, 2] = 3
    m.reward_sum[0, 1] = -2.0
    q = np.zeros((S, A))
    b = soft_bellman_bounds(q, m, beta=1.0, gamma=0.5)
    assert b.valid.sum() == 1 and b.valid[0, 1]
    # target: mean reward -0.5 + gamma * (3/4) * V(2) with V = 0 at Q = 0
    assert b.target[0, 1] == pytest.approx(-0.5)
    assert np.isneginf(b.lb[1, 0]) and np.isposinf(b.ub[1, 0])
    assert b.d_min == pytest.approx(-0.5) and b.d_max == pytest.approx(-0.5)


def test_bad_input():
    mdp = random_mdp(0, 3, 2, True)
    with pytest.raises(ValueError, match="gamma"):
        soft_bellman_bounds(np.zeros((3, 2)), mdp, 1.0, 1.0)
    with pytest.raises(ValueError, match="beta"):
        soft_bellman_bounds(np.zeros((3, 2)), mdp, -1.0, 0.5)
    with pytest.raises(ValueError, match="shape"):
        soft_bellman_bounds(np.zeros((2, 3)), mdp, 1.0, 0.5)
    with pytest.raises(ValueError, match="aligned"):
        soft_bellman_bounds(np.zeros((3, 2)), mdp, 1.0, 0.5, terminal=np.zeros(2))
    assert naive_bounds((-2.0, 1.0), 0.5) == (-4.0, 2.0)
    assert naive_bounds((-2.0, -1.0), 0.5, episodic=True) == (-4.0, -1.0)
