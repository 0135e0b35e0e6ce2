"""TabularMDP: validation (ValueError naming the offending (s, a) and value), dense and CSR
input, per-transition rewards r(s,a,s'), persistence (DESIGN.md §1)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import scipy.sparse as sp

import tiltrl
from tiltrl import TabularMDP
from tiltrl.mdp import PROB_TOL


def stochastic(rng: np.random.Generator, S: int, A: int, density: float = 1.0) -> np.ndarray:
    """Random ``(S, A, S)`` transition array; every row non-empty, rows sum to one."""
    mask = rng.random((S, A, S)) < density
    mask[np.arange(S)[:, None], np.arange(A)[None, :], rng.integers(0, S, (S, A))] = True
    P = np.where(mask, rng.random((S, A, S)) + 0.05, 0.0)
    return P / P.sum(axis=-1, keepdims=True)


@pytest.fixture
def model(rng):
    S, A = 4, 3
    P = stochastic(rng, S, A, density=0.6)
    r = rng.uniform(-3, 3, (S, A))
    return P, r


# ------------------------------------------------------------------ transitions
def test_negative_probability_names_s_a_and_value(model):
    P, r = model
    P = P.copy()
    orig = P[2, 1, 0]
    P[2, 1, 0] = -0.25
    P[2, 1, 1] += orig + 0.25  # the row still sums to one: only the sign is wrong
    assert P[2, 1].sum() == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match=r"p\(0\|s=2,\s*a=1\) = .*-0\.25.*negative"):
        TabularMDP(P, r)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_probability_names_s_a(model, bad):
    P, r = model
    P = P.copy()
    P[3, 2, 1] = bad
    with pytest.raises(ValueError, match=rf"p\(1\|s=3,\s*a=2\) = .*{bad!r}.*not finite"):
        TabularMDP(P, r)


@pytest.mark.parametrize("delta", [1e-3, -0.25, 2e-9, -5e-9])
def test_row_not_summing_to_one_says_by_how_much(model, delta):
    P, r = model
    P = P.copy()
    k = int(np.argmax(P[1, 2]))
    P[1, 2, k] += delta
    with pytest.raises(ValueError) as info:
        TabularMDP(P, r)
    msg = str(info.value)
    assert re.search(r"s=1,\s*a=2", msg), msg
    # the deviation is reported with its sign, to 4 significant digits
    reported = float(re.search(r"off from 1 by ([-+0-9.e]+)", msg).group(1))
    assert reported == pytest.approx(delta, rel=1e-3)
    assert "renormalis" in msg


def test_row_within_tolerance_is_kept_as_given_not_renormalised(model):
    P, r = model
    P = P.copy()
    k = int(np.argmax(P[0, 0]))
    P[0, 0, k] += 0.5 * PROB_TOL
    mdp = TabularMDP(P, r)
    np.testing.assert_array_equal(mdp.dense_transitions(), P)
    assert mdp.P[0].sum() - 1.0 == pytest.approx(0.5 * PROB_TOL, rel=1e-3)


def test_empty_row_is_an_error_not_filled_in(model):
    P, r = model
    P = P.copy()
    P[3, 0] = 0.0
    with pytest.raises(ValueError, match=r"s=3,\s*a=0.*off from 1 by -1"):
        TabularMDP(P, r)


def test_sparse_input_errors_name_s_a(model):
    P, r = model
    S, A = r.shape
    flat = P.reshape(S * A, S).copy()
    flat[1 * A + 2, :] *= 1.5
    with pytest.raises(ValueError, match=r"s=1,\s*a=2.*\+5\.000e-01"):
        TabularMDP(sp.csr_matrix(flat), r)


# ------------------------------------------------------------------ rewards
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_reward_sa(model, bad):
    P, r = model
    r = r.copy()
    r[2, 1] = bad
    with pytest.raises(ValueError, match=rf"r\[2,1\] = .*{bad!r}.*not finite"):
        TabularMDP(P, r)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_reward_sas(model, bad):
    P, r = model
    S, A = r.shape
    r3 = np.repeat(r[:, :, None], S, axis=2)
    s, a = 3, 1
    s2 = int(np.flatnonzero(P[s, a])[0])
    r3[s, a, s2] = bad
    with pytest.raises(ValueError, match=rf"r\[{s},{a},{s2}\] = .*{bad!r}.*not finite"):
        TabularMDP(P, r3)


# ------------------------------------------------------------------ shapes
def test_wrong_shapes(model):
    P, r = model
    S, A = r.shape
    with pytest.raises(ValueError, match=r"\(S, A, S\)"):
        TabularMDP(P[:, :, :-1], r)
    with pytest.raises(ValueError, match=r"\(S, A, S\)"):
        TabularMDP(P[0], r)
    with pytest.raises(ValueError, match=r"reward must have shape"):
        TabularMDP(P, r[:, :-1])
    with pytest.raises(ValueError, match=r"reward must have shape"):
        TabularMDP(P, r[:, 0])
    with pytest.raises(ValueError, match=r"not a multiple of S"):
        TabularMDP(sp.csr_matrix(np.full((S * A + 1, S), 1.0 / S)), r)
    with pytest.raises(ValueError, match=r"sparse reward must have shape"):
        TabularMDP(sp.csr_matrix(P.reshape(S * A, S)), sp.csr_matrix(np.ones((S, S))))
    with pytest.raises(ValueError, match=r"prior must have shape"):
        TabularMDP(P, r, prior=np.full((S, A + 1), 1.0 / (A + 1)))
    with pytest.raises(ValueError, match=r"initial distribution must have shape"):
        TabularMDP(P, r, initial=np.full(S + 1, 1.0 / (S + 1)))


# ------------------------------------------------------------------ prior / initial
def test_prior_row_not_summing_to_one(model):
    P, r = model
    S, A = r.shape
    prior = np.full((S, A), 1.0 / A)
    prior[2] *= 0.9
    with pytest.raises(ValueError, match=r"pi0\[2,:\].*off from 1 by -1\.000e-01"):
        TabularMDP(P, r, prior=prior)


def test_prior_zero_mass_on_a_state(model):
    P, r = model
    S, A = r.shape
    prior = np.full((S, A), 1.0 / A)
    prior[1] = 0.0
    with pytest.raises(ValueError, match=r"zero mass on state 1"):
        TabularMDP(P, r, prior=prior)


@pytest.mark.parametrize("bad", [-0.1, np.nan, np.inf])
def test_prior_bad_entry_names_s_a(model, bad):
    P, r = model
    S, A = r.shape
    prior = np.full((S, A), 1.0 / A)
    prior[3, 1] = bad
    with pytest.raises(ValueError, match=rf"pi0\[3,1\] = .*{bad!r}"):
        TabularMDP(P, r, prior=prior)


def test_initial_not_a_distribution(model):
    P, r = model
    S = r.shape[0]
    with pytest.raises(ValueError, match=r"off from 1 by \+5\.000e-01"):
        TabularMDP(P, r, initial=np.full(S, 1.5 / S))
    bad = np.full(S, 1.0 / S)
    bad[2] = -bad[2]
    with pytest.raises(ValueError, match=r"initial\[2\]"):
        TabularMDP(P, r, initial=bad)


def test_prior_zero_on_some_actions_is_allowed(model):
    P, r = model
    S, A = r.shape
    prior = np.full((S, A), 1.0 / A)
    prior[0] = [1.0, 0.0, 0.0]
    mdp = TabularMDP(P, r, prior=prior)
    np.testing.assert_array_equal(mdp.prior, prior)


# ------------------------------------------------------------------ beta / gamma via solve
@pytest.mark.parametrize("beta", [0, -1.0, -1e-300, math.nan, math.inf, -math.inf, "x", None])
def test_solve_rejects_bad_beta(model, beta):
    mdp = TabularMDP(*model)
    with pytest.raises(ValueError, match=r"beta must be a positive finite number"):
        tiltrl.solve(mdp, beta)
    with pytest.raises(ValueError, match=r"beta"):
        tiltrl.sweep(mdp, [1.0, beta])


@pytest.mark.parametrize("gamma", [1.0, 1.5, -0.1, math.nan, math.inf])
def test_solve_rejects_bad_gamma(model, gamma):
    mdp = TabularMDP(*model)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\)"):
        tiltrl.solve(mdp, 1.0, gamma=gamma)
    with pytest.raises(ValueError, match=r"gamma"):
        tiltrl.solve(mdp, 1.0, gamma=gamma, horizon=3)


def test_solve_accepts_gamma_zero(model):
    mdp = TabularMDP(*model)
    sol = tiltrl.solve(mdp, 2.0, gamma=0.0)
    # gamma = 0: one-step soft values, Q = r
    np.testing.assert_allclose(sol.q, mdp.reward, atol=1e-12)


def test_solve_rejects_other_bad_arguments(model):
    mdp = TabularMDP(*model)
    with pytest.raises(ValueError, match="dynamics"):
        tiltrl.solve(mdp, 1.0, dynamics="stochastic")
    with pytest.raises(ValueError, match="horizon"):
        tiltrl.solve(mdp, 1.0, horizon=0)
    with pytest.raises(ValueError, match="method"):
        tiltrl.solve(mdp, 1.0, method="simplex")
    with pytest.raises(ValueError, match="tol"):
        tiltrl.solve(mdp, 1.0, tol=0.0)
    with pytest.raises(ValueError, match="empty"):
        tiltrl.sweep(mdp, [])
    with pytest.raises(TypeError):
        tiltrl.solve(model[0], 1.0)


# ------------------------------------------------------------------ dense vs CSR
def test_dense_and_csr_inputs_give_the_same_model(rng):
    S, A = 5, 3
    P = stochastic(rng, S, A, density=0.5)
    r3 = rng.uniform(-3, 3, (S, A, S))
    prior = rng.random((S, A)) + 0.1
    prior /= prior.sum(axis=1, keepdims=True)
    init = rng.random(S)
    init /= init.sum()
    dense = TabularMDP(P, r3, prior, init)
    P_csr = sp.csr_matrix(P.reshape(S * A, S))
    r_csr = sp.csr_matrix(np.where(P > 0, r3, 0.0).reshape(S * A, S))
    csr = TabularMDP(P_csr, r_csr, prior, init)
    coo = TabularMDP(sp.coo_matrix(P.reshape(S * A, S)), r3, prior, init)
    for other in (csr, coo):
        assert other.shape == dense.shape == (S, A)
        np.testing.assert_array_equal(other.P.indptr, dense.P.indptr)
        np.testing.assert_array_equal(other.P.indices, dense.P.indices)
        np.testing.assert_array_equal(other.P.data, dense.P.data)
        np.testing.assert_array_equal(other.transition_reward, dense.transition_reward)
        np.testing.assert_allclose(other.reward, dense.reward, rtol=0, atol=1e-15)
        np.testing.assert_array_equal(other.prior, dense.prior)
        np.testing.assert_array_equal(other.initial, dense.initial)
    # the CSR model's pattern is exactly the support of P
    assert dense.nnz == int(np.count_nonzero(P))
    np.testing.assert_array_equal(dense.dense_transitions(), P)
    # solutions coincide too
    a, b = tiltrl.solve(dense, 2.0), tiltrl.solve(csr, 2.0)
    assert a.theta == pytest.approx(b.theta, abs=1e-13)


def test_explicit_zeros_and_duplicates_in_csr(rng):
    S, A = 3, 2
    P = stochastic(rng, S, A, density=0.5)
    flat = P.reshape(S * A, S)
    rows, cols = np.nonzero(flat)
    # split every entry into two duplicates and add explicit zeros
    data = np.concatenate([flat[rows, cols] / 2, flat[rows, cols] / 2, np.zeros(S)])
    r_i = np.concatenate([rows, rows, np.zeros(S, dtype=int)])
    c_i = np.concatenate([cols, cols, np.arange(S)])
    m = TabularMDP(sp.coo_matrix((data, (r_i, c_i)), shape=(S * A, S)), np.zeros((S, A)))
    np.testing.assert_allclose(m.dense_transitions(), P, rtol=0, atol=1e-16)
    assert m.nnz == int(np.count_nonzero(P))


# ------------------------------------------------------------------ r(s,a,s')
def test_transition_reward_is_kept_per_transition(rng):
    S, A = 4, 3
    P = stochastic(rng, S, A, density=0.7)
    r3 = rng.uniform(-3, 3, (S, A, S))
    mdp = TabularMDP(P, r3)
    tr = mdp.transition_reward
    assert tr is not None
    assert tr.shape == mdp.P.data.shape
    rows = mdp.row_index()
    np.testing.assert_array_equal(tr, r3.reshape(S * A, S)[rows, mdp.P.indices])
    np.testing.assert_array_equal(mdp.reward_per_transition(), tr)
    # r(s,a) is the mean under p
    np.testing.assert_allclose(mdp.reward, (P * r3).sum(axis=-1), rtol=0, atol=1e-14)
    assert mdp.reward_range() == (tr.min(), tr.max())
    # the reward is stored read-only
    with pytest.raises(ValueError):
        mdp.reward[0, 0] = 1.0
    with pytest.raises(AttributeError):
        mdp.foo = 1


def test_transition_reward_enters_the_exponent(rng):
    """r(s,a,s') must not be averaged before exponentiating (controlled dynamics)."""
    S, A = 3, 2
    P = stochastic(rng, S, A)
    r3 = rng.uniform(-3, 3, (S, A, S))
    with_sp = TabularMDP(P, r3)
    averaged = TabularMDP(P, (P * r3).sum(axis=-1))
    beta = 2.0
    t_sp = tiltrl.solve(with_sp, beta).theta
    t_av = tiltrl.solve(averaged, beta).theta
    assert t_sp > t_av + 1e-3  # Jensen: E exp(beta r) > exp(beta E r)


def test_reward_constant_in_next_state_collapses_exactly():
    P = np.zeros((2, 2, 2))
    P[:, :, :] = 0.5
    c = np.array([[1.0, -2.0], [0.25, 3.0]])
    mdp = TabularMDP(P, np.repeat(c[:, :, None], 2, axis=2))
    assert mdp.transition_reward is None
    np.testing.assert_array_equal(mdp.reward, c)


def test_reward_constant_in_next_state_collapses_for_generic_probabilities(rng):
    S, A = 4, 3
    P = stochastic(rng, S, A)
    c = rng.uniform(-3, 3, (S, A))
    mdp = TabularMDP(P, np.repeat(c[:, :, None], S, axis=2))
    assert mdp.transition_reward is None
    np.testing.assert_array_equal(mdp.reward, c)


# ------------------------------------------------------------------ copies, persistence
def test_with_copies_keep_the_rest(rng):
    S, A = 4, 2
    P = stochastic(rng, S, A, density=0.6)
    r3 = rng.uniform(-1, 1, (S, A, S))
    mdp = TabularMDP(P, r3, info={"name": "x"})
    prior = np.tile([0.25, 0.75], (S, 1))
    m2 = mdp.with_prior(prior)
    np.testing.assert_array_equal(m2.prior, prior)
    np.testing.assert_array_equal(m2.transition_reward, mdp.transition_reward)
    init = np.array([1.0, 0, 0, 0])
    m3 = mdp.with_initial(init)
    np.testing.assert_array_equal(m3.initial, init)
    np.testing.assert_array_equal(m3.transition_reward, mdp.transition_reward)
    m4 = mdp.with_reward(np.ones((S, A)))
    assert m4.transition_reward is None
    assert m4.info["name"] == "x"
    with pytest.raises(ValueError, match=r"r\[1,0\]"):
        mdp.with_reward(np.where(np.arange(S * A).reshape(S, A) == 2, np.nan, 0.0))


@pytest.mark.parametrize("per_transition", [False, True])
def test_save_load_round_trip(tmp_path, rng, per_transition):
    S, A = 5, 3
    P = stochastic(rng, S, A, density=0.5)
    r = rng.uniform(-3, 3, (S, A, S) if per_transition else (S, A))
    prior = rng.random((S, A)) + 0.1
    prior /= prior.sum(axis=1, keepdims=True)
    init = np.array([0.5, 0.5, 0.0, 0.0, 0.0])
    info = {"name": "round-trip", "grid": ["SF", "FG"], "nested": {"k": [1, 2.5]}}
    mdp = TabularMDP(P, r, prior, init, info=info)
    path = tmp_path / "model.npz"
    mdp.save(path)
    back = TabularMDP.load(path)
    assert back.shape == mdp.shape
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(back.P, name), getattr(mdp.P, name))
    np.testing.assert_array_equal(back.reward, mdp.reward)
    if per_transition:
        np.testing.assert_array_equal(back.transition_reward, mdp.transition_reward)
    else:
        assert back.transition_reward is None
    np.testing.assert_array_equal(back.prior, mdp.prior)
    np.testing.assert_array_equal(back.initial, mdp.initial)
    assert back.info == info
    assert tiltrl.solve(back, 1.5).theta == tiltrl.solve(mdp, 1.5).theta


def test_gridworld_save_load(tmp_path):
    mdp = tiltrl.gridworld("7x7holes")
    mdp.save(tmp_path / "g.npz")
    back = TabularMDP.load(tmp_path / "g.npz")
    assert back.info["grid"] == mdp.info["grid"]
    assert (back.P != mdp.P).nnz == 0
    assert repr(back) == repr(mdp)
    assert back.is_deterministic


def test_structure_is_made_once_and_left_behind_by_pickle(rng):
    import pickle

    mdp = TabularMDP(stochastic(rng, 4, 3), rng.normal(size=(4, 3)))
    calls = []

    def make():
        calls.append(1)
        return np.arange(3)

    first = mdp.structure("k", make)
    assert mdp.structure("k", make) is first and len(calls) == 1
    clone = pickle.loads(pickle.dumps(mdp))
    assert clone.P.nnz == mdp.P.nnz and np.array_equal(clone.reward, mdp.reward)
    with pytest.raises(AttributeError):
        clone._P = None  # still frozen: _frozen is set last on unpickling
    # the structures stay behind; the copy makes its own on first use
    assert np.array_equal(clone.structure("k", make), first) and len(calls) == 2
