"""Tabular learners (tiltrl.agents) against the exact solutions; seeded, a few seconds each."""

from __future__ import annotations

import math

import numpy as np
import pytest

import tiltrl
from _random_models import random_dense_mdp as _random_mdp
from tiltrl.agents import (
    ALGOS,
    BoundedSoftQLearner,
    Curves,
    LearnResult,
    MDPSampler,
    SoftQLearner,
    StepSize,
    ULearner,
    eval_return,
    interval,
    learn,
)
from tiltrl.bounds import soft_bellman_bounds

SMALL = ["SFF", "FHF", "FFG"]


@pytest.fixture(scope="module")
def holes() -> tiltrl.TabularMDP:
    return tiltrl.gridworld("7x7holes")


@pytest.fixture(scope="module")
def small_slippery() -> tiltrl.TabularMDP:
    return tiltrl.gridworld(SMALL, slippery=1)


# ---------------------------------------------------------------- issue targets
@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_u_learning_theta_and_eigenvector_on_7x7holes(holes, beta):
    res = learn("u_learning", holes, beta=beta, steps=40_000, seeds=8, seed=1,
                behaviour="prior", n_evals=3)
    exact = tiltrl.solve(holes, beta)
    assert res.theta is not None and res.theta.shape == (8,)
    assert np.max(np.abs(res.theta - exact.theta)) < 1e-3
    fin = res.final_errors()
    assert np.min(fin["cosine"]) >= 0.999
    # the curve really comes down: the first point is far off
    assert res.curves is not None and res.curves.values["theta"][0].mean() > 1e-2
    # learned log u is mean-zero (scale fixed) and its policy is close to the exact one
    assert np.allclose(res.log_u.mean(axis=(1, 2)), 0.0, atol=1e-9)
    assert np.max(fin["kl"]) < 1e-3


def test_soft_q_matches_exact_discounted_soft_q(small_slippery):
    beta, gamma = 2.0, 0.5
    res = learn("soft_q", small_slippery, beta=beta, gamma=gamma, steps=80_000, seeds=32,
                seed=3, behaviour="prior", n_evals=2)
    exact = tiltrl.solve(small_slippery, beta, gamma=gamma)
    err = np.abs(res.q - exact.q)
    # every seed: mean error below 1e-2; the seed average (the learner's bias) within 1e-2
    # everywhere. The optimistic log-E-exp fixed point is much further away.
    assert np.max(err.mean(axis=(1, 2))) < 1e-2
    assert np.max(np.abs(res.q.mean(axis=0) - exact.q)) < 1e-2
    optimistic = tiltrl.solve(small_slippery, beta, gamma=gamma, dynamics="controlled")
    assert np.max(np.abs(optimistic.q - exact.q)) > 3e-2
    assert res.curves is not None
    np.testing.assert_allclose(res.curves.final()["q_max"], err.max(axis=(1, 2)))


def test_average_reward_learners_stochastic(small_slippery):
    beta = 2.0
    fixed = tiltrl.solve(small_slippery, beta, dynamics="fixed").theta
    ctrl = tiltrl.solve(small_slippery, beta, dynamics="controlled").theta
    assert ctrl - fixed > 0.03  # the two optima differ: the test can tell them apart
    kw = dict(beta=beta, steps=40_000, seeds=8, seed=2, behaviour="prior", n_evals=1)
    u_c = learn("u_learning", small_slippery, dynamics="controlled", **kw)
    u_f = learn("u_learning", small_slippery, dynamics="fixed", **kw)
    assert np.max(np.abs(u_c.theta - ctrl)) < 5e-3
    assert np.max(np.abs(u_f.theta - fixed)) < 5e-3
    assert any("controlled" in n for n in u_c.notes)
    # U-learning with the fixed-dynamics correction is differential soft Q-learning in
    # units of beta: same samples, same numbers
    kw.update(steps=2_000, reference=False)
    u_f = learn("u_learning", small_slippery, dynamics="fixed", **kw)
    d = learn("differential_soft_q", small_slippery, **kw)
    np.testing.assert_allclose(u_f.theta, d.theta, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(u_f.q - u_f.q.mean(axis=(1, 2), keepdims=True),
                               d.q - d.q.mean(axis=(1, 2), keepdims=True), atol=1e-9)


def test_differential_soft_q_deterministic(holes):
    res = learn("differential_soft_q", holes, beta=5.0, steps=30_000, seeds=4, seed=0,
                behaviour="prior", n_evals=1)
    assert np.max(np.abs(res.theta - tiltrl.solve(holes, 5.0).theta)) < 1e-3


def test_bounded_soft_q_bounds_stay_valid_and_clip(small_slippery):
    beta, gamma = 2.0, 0.9
    exact = tiltrl.solve(small_slippery, beta, gamma=gamma)
    for model in ("given", "learned"):
        res = learn("bounded_soft_q", small_slippery, beta=beta, gamma=gamma, steps=20_000,
                    seeds=4, seed=0, model=model, bounds_every=50, n_evals=2)
        assert res.stats["n_clipped"] > 0 and res.stats["crossed"] == 0
        assert np.max(res.final_errors()["q_max"]) < 1.0  # from ~10 at Q = 0
    # with a given model the bounds of the final estimate bracket Q*
    b = soft_bellman_bounds(res.q, small_slippery, beta, gamma)
    assert np.all(b.lb <= exact.q + 1e-9) and np.all(exact.q <= b.ub + 1e-9)
    # the learner's stored bounds (its own (A, K*S) layout) bracket Q* for every seed
    K = 6
    learner = BoundedSoftQLearner(*small_slippery.shape, K, beta, small_slippery.prior,
                                  StepSize(0.5), gamma=gamma, model=small_slippery,
                                  model_kind="given", bounds_every=7)
    sampler = MDPSampler(small_slippery, K, np.random.default_rng(3))
    s = sampler.reset()
    for _ in range(300):
        a = np.random.default_rng(int(s.sum())).integers(0, 4, K)
        s2, r, sl, _ = sampler.step(s, a)
        learner.update(s, a, r, sl, None)
        s = s2
    learner.refresh_bounds()
    lb = learner.lb.reshape(4, K, 9).transpose(1, 2, 0)
    ub = learner.ub.reshape(4, K, 9).transpose(1, 2, 0)
    assert np.all(lb <= exact.q + 1e-9) and np.all(exact.q <= ub + 1e-9)
    assert np.all(np.isfinite(lb)) and np.all(np.isfinite(ub))
    for clip in ("linear", "square", "huber"):
        r = learn("bounded_soft_q", small_slippery, clip=clip, clip_weight=0.5, bounds="naive",
                  steps=500, seeds=2, beta=beta, gamma=gamma, reference=False)
        assert np.all(np.isfinite(r.q))


# ---------------------------------------------------------------- vectorisation
def _loop_soft_q(mdp, beta, gamma, transitions, lr):
    """Plain per-seed reference of the soft Q update."""
    S, A = mdp.shape
    q = np.zeros((S, A))
    for s, a, r, s2 in transitions:
        v = np.log(np.sum(mdp.prior[s2] * np.exp(beta * q[s2]))) / beta
        q[s, a] += lr * (r + gamma * v - q[s, a])
    return q


def test_vectorised_update_equals_per_seed_loop(small_slippery):
    mdp = small_slippery
    K, T, beta, gamma = 5, 400, 1.5, 0.8
    rng = np.random.default_rng(0)
    sampler = MDPSampler(mdp, K, rng)
    learner = SoftQLearner(*mdp.shape, K, beta, mdp.prior, StepSize(0.3), gamma=gamma)
    s = sampler.reset()
    trans: list[list[tuple[int, int, float, int]]] = [[] for _ in range(K)]
    for _ in range(T):
        a = rng.integers(0, mdp.n_actions, K)
        s2, r, s_learn, _ = sampler.step(s, a)
        learner.update(s, a, r, s_learn, None)
        for k in range(K):
            trans[k].append((int(s[k]), int(a[k]), float(r[k]), int(s2[k])))
        s = s2
    q = learner.q()
    for k in range(K):
        np.testing.assert_allclose(q[k], _loop_soft_q(mdp, beta, gamma, trans[k], 0.3),
                                   rtol=1e-12, atol=1e-12)


def test_behaviour_weights_after_update_are_current(small_slippery):
    """The weights returned by update (used for exploration) equal a fresh computation,
    also where the next state is the updated state (self-loops)."""
    mdp = small_slippery
    K = 64
    rng = np.random.default_rng(1)
    for learner in (SoftQLearner(*mdp.shape, K, 2.0, mdp.prior, StepSize(0.5), gamma=0.9),
                    ULearner(*mdp.shape, K, 2.0, mdp.prior, StepSize(0.5), theta_lr=0.01)):
        sampler = MDPSampler(mdp, K, rng)
        s = sampler.reset()
        loops = 0
        for _ in range(50):
            a = rng.integers(0, mdp.n_actions, K)
            s2, r, s_learn, _ = sampler.step(s, a)
            e, z = learner.update(s, a, r, s_learn, None)
            e_ref, z_ref = learner.behaviour_weights(s2)
            np.testing.assert_allclose(e / z, e_ref / z_ref, rtol=1e-10, atol=1e-14)
            loops += int(np.sum(s2 == s))
            s = s2
        assert loops > 0


def test_sampler_frequencies(small_slippery):
    mdp = small_slippery
    K = 200_000
    sampler = MDPSampler(mdp, K, np.random.default_rng(7))
    s = np.full(K, 1)
    a = np.full(K, 1)  # down from (0,1): slips left / right
    s2, r, _, done = sampler.step(s, a)
    assert done is None
    p = mdp.dense_transitions()[1, 1]
    freq = np.bincount(s2, minlength=mdp.n_states) / K
    assert np.all(freq[p == 0] == 0)
    np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / K))
    np.testing.assert_allclose(r, mdp.reward[1, 1])
    init = np.bincount(sampler.reset(), minlength=mdp.n_states) / K
    np.testing.assert_allclose(init, mdp.initial, atol=1e-12)


# ---------------------------------------------------------------- evaluation, io, errors
def test_eval_return_of_exact_policies(holes, small_slippery):
    sol = tiltrl.solve(holes, 5.0)
    assert eval_return(sol.policy, holes, 5.0) == pytest.approx(sol.theta, abs=1e-9)
    fx = tiltrl.solve(small_slippery, 2.0, dynamics="fixed")
    assert eval_return(fx.policy, small_slippery, 2.0) == pytest.approx(fx.theta, abs=1e-9)
    disc = tiltrl.solve(small_slippery, 2.0, gamma=0.9)
    expected = small_slippery.initial @ disc.v
    assert eval_return(disc.policy, small_slippery, 2.0, 0.9) == pytest.approx(expected, abs=1e-9)
    # the prior policy does worse
    assert eval_return(small_slippery.prior, small_slippery, 2.0, 0.9) < expected - 1e-3


def test_interval():
    mean, lo, hi = interval(np.array([[1.0, 2.0, 3.0]]))
    assert mean[0] == pytest.approx(2.0)
    assert hi[0] - mean[0] == pytest.approx(4.302652729 / np.sqrt(3), rel=1e-6)
    assert lo[0] < mean[0] < hi[0]


def test_save_load_and_curves(tmp_path, holes):
    res = learn("u_learning", holes, beta=2.0, steps=2_000, seeds=3, n_evals=4)
    path = res.save(tmp_path / "run.npz")
    back = LearnResult.load(path)
    np.testing.assert_array_equal(back.q, res.q)
    np.testing.assert_array_equal(back.theta, res.theta)
    np.testing.assert_array_equal(back.log_u, res.log_u)
    assert back.options == res.options and back.algo == "u_learning"
    assert back.curves is not None and res.curves is not None
    np.testing.assert_array_equal(back.curves.steps, res.curves.steps)
    np.testing.assert_allclose(back.curves.values["theta"], res.curves.values["theta"])
    csv_text = res.curves.to_csv(tmp_path / "c.csv")
    assert csv_text.splitlines()[0].startswith("step,q_max_mean,q_max_lo,q_max_hi")
    assert len(csv_text.splitlines()) == 1 + len(res.curves.steps)
    again = Curves.from_dict(__import__("json").loads(res.curves.to_json()))
    np.testing.assert_allclose(again.values["cosine"], res.curves.values["cosine"])
    assert res.q.shape == res.policy.shape == (3, *holes.shape)
    np.testing.assert_allclose(res.policy.sum(axis=2), 1.0)


def test_bad_input(holes):
    with pytest.raises(ValueError, match="unknown algo 'sarsa'"):
        learn("sarsa", holes, beta=1.0, steps=10)
    with pytest.raises(ValueError, match="beta.*-1"):
        learn("soft_q", holes, beta=-1, steps=10, gamma=0.9)
    with pytest.raises(ValueError, match="gamma.*1.5"):
        learn("soft_q", holes, beta=1, steps=10, gamma=1.5)
    with pytest.raises(ValueError, match="discounted: pass gamma"):
        learn("soft_q", holes, beta=1, steps=10)
    with pytest.raises(ValueError, match="gamma must be None, got 0.9"):
        learn("u_learning", holes, beta=1, steps=10, gamma=0.9)
    with pytest.raises(ValueError, match="steps must be a positive integer, got 0"):
        learn("u_learning", holes, beta=1, steps=0)
    with pytest.raises(ValueError, match="seeds must be a positive integer, got 2.5"):
        learn("u_learning", holes, beta=1, steps=10, seeds=2.5)
    with pytest.raises(ValueError, match="lr must be in"):
        learn("u_learning", holes, beta=1, steps=10, lr=2.0)
    with pytest.raises(ValueError, match="unknown option"):
        learn("u_learning", holes, beta=1, steps=10, clip="hard")
    with pytest.raises(ValueError, match="clip must be one of"):
        learn("bounded_soft_q", holes, beta=1, steps=10, gamma=0.9, clip="soft")
    assert set(ALGOS) == {"soft_q", "bounded_soft_q", "u_learning", "differential_soft_q"}


def test_progress_and_gymnasium(capsys):
    calls = []
    res = learn("soft_q", "FrozenLake-v1", beta=2.0, gamma=0.9, steps=3_000, seeds=2,
                progress=lambda done, total: calls.append((done, total)), n_evals=2)
    assert calls[-1] == (3_000, 3_000)
    assert res.q.shape == (2, 16, 4) and res.curves is not None
    assert np.all(np.isfinite(res.curves.values["q_max"]))
    learn("u_learning", tiltrl.gridworld(SMALL), beta=1.0, steps=1_000, progress=True,
          reference=False)
    assert "steps" in capsys.readouterr().err


def test_cli_learn(tmp_path, capsys):
    from tiltrl.cli import main

    png, csv_path, npz = tmp_path / "c.png", tmp_path / "c.csv", tmp_path / "r.npz"
    rc = main(["--plain", "learn", "u_learning", "SFF,FHF,FFG", "--beta", "2", "--steps",
               "3000", "--seeds", "3", "--evals", "4", "--plot", str(png), "--curves",
               str(csv_path), "--save", str(npz)])
    out = capsys.readouterr().out
    assert rc == 0 and "exact theta" in out and "final theta" in out
    assert png.stat().st_size > 0 and csv_path.read_text().startswith("step,")
    assert LearnResult.load(npz).theta.shape == (3,)
    assert main(["--plain", "learn", "soft_q", "7x7holes", "--beta", "1", "--steps", "10"]) == 2
    assert "pass gamma" in capsys.readouterr().err
    assert main(["--plain", "learn", "soft_q", "7x7holes", "--beta", "1", "--steps", "10",
                 "--gamma", "1.2"]) == 2
    assert "1.2" in capsys.readouterr().err


# ---------------------------------------------------------------- compiled backend
_BACKEND_CASES = [
    ("soft_q", {"gamma": 0.9}),
    ("soft_q", {"gamma": 0.9, "lr_decay": "steps", "epsilon": 0.2}),
    ("soft_q", {"gamma": 0.9, "behaviour": "prior", "lr_decay": "constant", "lr": 0.3}),
    ("bounded_soft_q", {"gamma": 0.9, "model": "given", "bounds_every": 50}),
    ("bounded_soft_q", {"gamma": 0.9, "bounds_every": 37}),
    ("bounded_soft_q", {"gamma": 0.9, "bounds": "naive", "clip": "linear"}),
    ("bounded_soft_q", {"gamma": 0.9, "model": "given", "clip": "huber", "clip_weight": 0.5}),
    ("u_learning", {}),
    ("u_learning", {"lr_decay": "constant", "lr": 0.5, "normalise": (1, 1)}),
    ("u_learning", {"dynamics": "fixed", "normalise_every": 333}),
    ("differential_soft_q", {}),
]


def _numpy_array_math_is_libm() -> bool:
    """Whether numpy's float64 ``exp``/``log``/``log1p`` on arrays give the C library's
    bits (the numba kernel calls the C library). On CPUs with AVX-512 numpy dispatches its
    own SIMD ``exp``/``log``, which differ from the C library's in the last bit for a few
    per cent of arguments."""
    x = np.linspace(-40.0, 40.0, 8001)
    y = np.abs(x) + 1e-3
    return (np.array_equal(np.exp(x), [math.exp(v) for v in x])
            and np.array_equal(np.log(y), [math.log(v) for v in y])
            and np.array_equal(np.log1p(y), [math.log1p(v) for v in y]))


@pytest.mark.parametrize(("algo", "kw"), _BACKEND_CASES)
def test_numba_backend_is_bit_identical_to_numpy(algo, kw):
    """Bit-identical where numpy's array exp/log are the C library's; with numpy's AVX-512
    exp/log the tables differ by a few ulps (the same trajectories: a diverged draw would
    change them at O(1))."""
    pytest.importorskip("numba")
    if _numpy_array_math_is_libm():
        same = np.array_equal
    else:
        def same(x, y):
            return np.allclose(x, y, rtol=1e-13, atol=1e-13)
    # 7 outcomes per row (comparison search) and 11 (searchsorted); non-uniform prior
    for mdp in (_random_mdp(7, 3, 0), _random_mdp(11, 2, 1),
                tiltrl.gridworld("7x7holes", slippery=1)):
        a, b = (learn(algo, mdp, beta=3.0, steps=1500, seeds=5, seed=4, reference=False,
                      backend=be, **kw) for be in ("numpy", "numba"))
        assert a.options["backend"] == "numpy" and b.options["backend"] == "numba"
        assert same(a.q, b.q) and same(a.policy, b.policy)
        assert (a.theta is None) == (b.theta is None)
        if a.theta is not None:
            assert same(a.theta, b.theta)
        assert a.stats.get("n_clipped") == b.stats.get("n_clipped")


def test_numba_given_model_refresh_is_bit_identical_to_numpy():
    nb = pytest.importorskip("tiltrl.agents._numba")
    for i, mdp in enumerate((_random_mdp(7, 3, 0), _random_mdp(11, 2, 1),
                             tiltrl.gridworld("7x7holes", slippery=1))):
        K = 1 if i == 1 else 5
        pair = [BoundedSoftQLearner(mdp.n_states, mdp.n_actions, K, 3.0, np.asarray(mdp.prior),
                                    StepSize(0.5), gamma=0.9, model=mdp, model_kind="given")
                for _ in range(2)]
        rng = np.random.default_rng(i)
        for it in range(12):  # repeated refreshes: some columns change, some do not
            change = rng.random(pair[0].table.shape) < (0.3 if it % 3 else 1.0)
            pair[0].table[change] += rng.normal(scale=3.0, size=int(change.sum()))
            pair[1].table[...] = pair[0].table
            pair[0]._refresh_in_layout()
            nb.refresh_bounds(pair[1])
            assert np.array_equal(pair[0].lb, pair[1].lb)
            assert np.array_equal(pair[0].ub, pair[1].ub)
            assert pair[0].crossed == pair[1].crossed
        lb, ub = pair[1].lb.copy(), pair[1].ub.copy()
        pair[1].table[0, -1] = np.nan
        with pytest.raises(ValueError, match="non-finite"):
            nb.refresh_bounds(pair[1])
        # the bounds are written in place, but not before Q is known to be finite
        assert np.array_equal(pair[1].lb, lb) and np.array_equal(pair[1].ub, ub)


def test_backend_option_is_checked(holes):
    with pytest.raises(ValueError, match="backend"):
        learn("soft_q", holes, beta=1.0, gamma=0.5, steps=10, backend="jax")
