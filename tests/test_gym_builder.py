"""Exact models of gymnasium toy-text environments (DESIGN.md §3, §4)."""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
from gymnasium import spaces

from tiltrl.envs.gym import from_gymnasium


def row(mdp, s, a):
    r = mdp.P.getrow(s * mdp.n_actions + a)
    return {int(j): float(v) for j, v in zip(r.indices, r.data, strict=True)}


def reward_row(mdp, s, a):
    """{s': r(s,a,s')} over the support of p(.|s,a)."""
    A = mdp.n_actions
    lo, hi = mdp.P.indptr[s * A + a], mdp.P.indptr[s * A + a + 1]
    rew = mdp.reward_per_transition()
    return {int(mdp.P.indices[k]): float(rew[k]) for k in range(lo, hi)}


def assert_stochastic(mdp):
    np.testing.assert_allclose(np.asarray(mdp.P.sum(axis=1)).ravel(), 1.0, atol=1e-12, rtol=0)


# ------------------------------------------------------------------ FrozenLake
def test_frozenlake_slippery_reset():
    mdp = from_gymnasium("FrozenLake-v1")
    assert mdp.shape == (16, 4)
    assert_stochastic(mdp)
    np.testing.assert_array_equal(mdp.initial, np.eye(16)[0])
    info = mdp.info
    assert info["name"] == "FrozenLake-v1" and info["source"] == "gymnasium"
    assert info["terminal"] == "reset"
    assert info["grid"] == ["SFFF", "FHFH", "FFFH", "HFFG"]
    # state 0, left: up and left bump (stay), down slips to 4; thirds
    assert row(mdp, 0, 0) == pytest.approx({0: 2 / 3, 4: 1 / 3})
    # state 14 (3,2), right: down bumps, up to 10, right reaches G -> reset to 0 with reward 1
    assert row(mdp, 14, 2) == pytest.approx({0: 1 / 3, 10: 1 / 3, 14: 1 / 3})
    assert reward_row(mdp, 14, 2) == {0: 1.0, 10: 0.0, 14: 0.0}
    assert mdp.reward[14, 2] == pytest.approx(1 / 3)
    # holes and goal are never entered under reset
    for terminal_state in (5, 7, 11, 12, 15):
        assert mdp.P[:, terminal_state].nnz == 0
    # 13 (3,1), down: bumps (1/3), left to 12 = hole -> reset, right to 14
    assert row(mdp, 13, 1) == pytest.approx({13: 1 / 3, 0: 1 / 3, 14: 1 / 3})


def test_frozenlake_absorbing_and_reset_next():
    ab = from_gymnasium("FrozenLake-v1", "absorbing")
    assert_stochastic(ab)
    assert ab.info["terminal"] == "absorbing"
    assert row(ab, 14, 2) == pytest.approx({14: 1 / 3, 10: 1 / 3, 15: 1 / 3})
    assert reward_row(ab, 14, 2)[15] == 1.0
    for s in (5, 7, 11, 12, 15):
        for a in range(4):
            assert row(ab, s, a) == {s: 1.0}
        np.testing.assert_array_equal(ab.reward[s], 0.0)
    nxt = from_gymnasium("FrozenLake-v1", "reset_next")
    assert_stochastic(nxt)
    assert row(nxt, 14, 2) == pytest.approx({14: 1 / 3, 10: 1 / 3, 15: 1 / 3})
    for s in (5, 15):
        for a in range(4):
            assert row(nxt, s, a) == {0: 1.0}
        np.testing.assert_array_equal(nxt.reward[s], 0.0)


def test_frozenlake_options():
    det = from_gymnasium("FrozenLake-v1", is_slippery=False)
    assert det.is_deterministic
    assert row(det, 14, 2) == {0: 1.0}
    assert reward_row(det, 14, 2) == {0: 1.0}
    # the 8x8 slippery map: goal and hole outcomes both reset to 0 with rewards 1 and 0
    with pytest.raises(ValueError, match="reset_next"):
        from_gymnasium("FrozenLake-v1", map_name="8x8")
    big = from_gymnasium("FrozenLake-v1", "reset_next", map_name="8x8")
    assert big.shape == (64, 4) and len(big.info["grid"]) == 8
    merged = from_gymnasium("FrozenLake-v1", map_name="8x8", on_conflict="mean")
    assert_stochastic(merged)
    # 55 (6,7), left: up to 47, left to 54 = hole, down to 63 = goal; both reset to 0
    assert row(merged, 55, 0) == pytest.approx({47: 1 / 3, 0: 2 / 3})
    assert reward_row(merged, 55, 0)[0] == pytest.approx(0.5)
    env = gymnasium.make("FrozenLake-v1", is_slippery=False)
    assert (from_gymnasium(env).P != det.P).nnz == 0
    with pytest.raises(TypeError, match="only used when env is an id"):
        from_gymnasium(env, is_slippery=True)
    with pytest.raises(ValueError, match="terminal"):
        from_gymnasium(env, "episodic")


# ------------------------------------------------------------------ CliffWalking
def test_cliffwalking():
    mdp = from_gymnasium("CliffWalking-v1")
    assert mdp.shape == (48, 4) and mdp.is_deterministic
    assert_stochastic(mdp)
    start = 36
    np.testing.assert_array_equal(mdp.initial, np.eye(48)[start])
    assert mdp.info["grid"][3] == "SHHHHHHHHHHG" and mdp.info["grid"][0] == "F" * 12
    # UP=0, RIGHT=1, DOWN=2, LEFT=3: stepping off the cliff costs -100 and restarts
    assert row(mdp, start, 1) == {start: 1.0}
    assert mdp.reward[start, 1] == -100.0
    assert row(mdp, start, 0) == {24: 1.0}
    assert mdp.reward[start, 0] == -1.0
    # reaching the goal terminates: reset to the start with the step reward
    assert row(mdp, 35, 2) == {start: 1.0}
    assert mdp.reward[35, 2] == -1.0
    assert mdp.P[:, 47].nnz == 0
    ab = from_gymnasium("CliffWalking-v1", "absorbing")
    assert row(ab, 35, 2) == {47: 1.0}
    for a in range(4):
        assert row(ab, 47, a) == {47: 1.0}
    np.testing.assert_array_equal(ab.reward[47], 0.0)


def test_cliffwalking_slippery_conflict():
    with pytest.raises(ValueError, match="different rewards"):
        from_gymnasium("CliffWalking-v1", is_slippery=True)
    mdp = from_gymnasium("CliffWalking-v1", is_slippery=True, on_conflict="mean")
    assert_stochastic(mdp)
    # start, UP: slips LEFT (bump, -1) or RIGHT (cliff, -100) both land on the start
    assert row(mdp, 36, 0) == pytest.approx({36: 2 / 3, 24: 1 / 3})
    assert reward_row(mdp, 36, 0) == pytest.approx({36: -50.5, 24: -1.0})


# ------------------------------------------------------------------ Taxi
def test_taxi():
    env = gymnasium.make("Taxi-v4")
    mdp = from_gymnasium(env)
    assert mdp.shape == (500, 6) and mdp.is_deterministic is False
    assert_stochastic(mdp)
    assert mdp.info["name"] == "Taxi-v4" and "grid" not in mdp.info
    mu0 = mdp.initial
    assert np.count_nonzero(mu0) == 300
    np.testing.assert_allclose(mu0[mu0 > 0], 1 / 300)
    u = env.unwrapped
    # passenger in the taxi at the red location (0,0), destination red: drop-off succeeds
    s = u.encode(0, 0, 4, 0)
    out = row(mdp, s, 5)
    assert set(out) == set(np.flatnonzero(mu0).tolist())
    assert sum(out.values()) == pytest.approx(1.0)
    assert set(reward_row(mdp, s, 5).values()) == {20.0}
    # an illegal pick-up: -10, stays
    s2 = u.encode(2, 2, 0, 1)
    assert row(mdp, s2, 4) == {s2: 1.0} and mdp.reward[s2, 4] == -10.0
    ab = from_gymnasium(env, "absorbing")
    assert ab.is_deterministic
    end = u.encode(0, 0, 0, 0)
    assert row(ab, s, 5) == {end: 1.0} and ab.reward[s, 5] == 20.0
    for a in range(6):
        assert row(ab, end, a) == {end: 1.0}


# ------------------------------------------------------------------ hand-made tables
class _TableEnv:
    """Minimal env exposing the toy-text interface."""

    def __init__(self, P, n_states, n_actions, initial=None):
        self.P = P
        self.observation_space = spaces.Discrete(n_states)
        self.action_space = spaces.Discrete(n_actions)
        if initial is not None:
            self.initial_state_distrib = np.asarray(initial, dtype=float)

    @property
    def unwrapped(self):
        return self


def test_renormalisation_and_merging():
    third = 0.333333333  # sums to 1 - 1e-9: renormalised
    table = {
        0: {0: [(third, 0, -1.0, False), (third, 1, -1.0, False), (third, 1, -1.0, False)]},
        1: {0: [(1.0, 1, 0.0, True)]},
    }
    mdp = from_gymnasium(_TableEnv(table, 2, 1, [1.0, 0.0]))
    assert row(mdp, 0, 0) == pytest.approx({0: 1 / 3, 1: 2 / 3}, abs=1e-15)
    assert mdp.P.sum() == pytest.approx(2.0, abs=1e-14)
    assert row(mdp, 1, 0) == {0: 1.0}  # terminal -> reset
    assert mdp.info["name"] == "_TableEnv"
    bad = {0: {0: [(0.9, 0, 0.0, False)]}}
    with pytest.raises(ValueError, match="sum to"):
        from_gymnasium(_TableEnv(bad, 1, 1, [1.0]))
    clash = {0: {0: [(0.5, 0, 1.0, False), (0.5, 0, 3.0, False)]}}
    with pytest.raises(ValueError, match="different rewards"):
        from_gymnasium(_TableEnv(clash, 1, 1, [1.0]))
    merged = from_gymnasium(_TableEnv(clash, 1, 1, [1.0]), on_conflict="mean")
    assert merged.reward[0, 0] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="initial"):
        from_gymnasium(_TableEnv(clash, 1, 1))
    ok = from_gymnasium(_TableEnv(table, 2, 1), initial=[0.0, 1.0])
    np.testing.assert_array_equal(ok.initial, [0.0, 1.0])
    assert row(ok, 1, 0) == {1: 1.0}  # reset target follows `initial`
