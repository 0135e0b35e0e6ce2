"""The per-seed Python loop of ``benchmarks/bench_tabular.py`` is the same algorithm as the
vectorised learners it is timed against: its bounds are those of :mod:`tiltrl.bounds`, and
fed the uniforms of ``learn``'s random stream it learns the same table."""

from __future__ import annotations

import numpy as np
import pytest

import tiltrl
from _benchmarks import load_benchmark
from _random_models import random_dense_mdp as _random_mdp
from tiltrl.agents import learn
from tiltrl.bounds import soft_bellman_bounds


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("bench_tabular")


def _model_lists(mdp):
    S, A = mdp.shape
    P = mdp.P
    trans = [[(int(j), float(p)) for j, p in zip(P.indices[P.indptr[r]:P.indptr[r + 1]],
                                                  P.data[P.indptr[r]:P.indptr[r + 1]],
                                                  strict=True)]
             for r in range(S * A)]
    log_pi0 = np.log(mdp.prior).tolist()
    return log_pi0, np.asarray(mdp.reward, dtype=float).tolist(), trans


@pytest.mark.parametrize("mdp", [_random_mdp(7, 3, 0),
                                 tiltrl.gridworld("7x7holes", slippery=1)])
def test_loop_bounds_equal_tiltrl_bounds(bench, mdp):
    rng = np.random.default_rng(5)
    log_pi0, rbar, trans = _model_lists(mdp)
    for beta, gamma in ((5.0, 0.9), (0.5, 0.3)):
        q = rng.normal(scale=2.0, size=mdp.shape)
        lb, ub = bench.loop_bounds(q.tolist(), log_pi0, rbar, trans, beta, gamma)
        ref = soft_bellman_bounds(q, mdp, beta, gamma)
        assert ref.crossed == 0
        np.testing.assert_allclose(lb, ref.lb, rtol=1e-13, atol=1e-12)
        np.testing.assert_allclose(ub, ref.ub, rtol=1e-13, atol=1e-12)


def _replay(seed: int, steps: int):
    """``rand()`` giving ``learn(seeds=1, seed=seed)``'s uniforms in the loop's order: the
    initial state, then per step the action and the next state (the third uniform of a
    step, for epsilon-exploration, is unused)."""
    u = np.random.default_rng(seed).random(1 + 3 * steps)
    order = np.concatenate([u[:1], u[1:].reshape(steps, 3)[:, :2].reshape(-1)])
    it = iter(order.tolist())
    return lambda: next(it)


@pytest.mark.parametrize("algo", ["soft_q", "bounded_soft_q", "differential_soft_q",
                                  "u_learning"])
def test_loop_peer_learns_the_vectorised_table(bench, algo):
    mdp = tiltrl.gridworld(["SFF", "FHF", "FFG"], slippery=1)
    beta, gamma, steps, every = 2.0, 0.9, 700, 50
    kw = {"gamma": gamma} if algo in ("soft_q", "bounded_soft_q") else {}
    if algo == "bounded_soft_q":
        kw.update(model="given", bounds_every=every)
    res = learn(algo, mdp, beta=beta, steps=steps, seeds=1, seed=3, reference=False,
                lr_decay="visits", backend="numpy", **kw)
    q, _, n_clipped = bench.loop_learner(algo, mdp, steps, _replay(3, steps), beta=beta,
                                         gamma=gamma, bounds_every=every)
    q = np.asarray(q)
    if algo == "u_learning":
        # the learner's log u is normalised to mean zero (a shift that changes no update);
        # q = log u / beta
        q = (q - q.mean()) / beta
    np.testing.assert_allclose(q, res.q[0], rtol=1e-10, atol=1e-10)
    if algo == "bounded_soft_q":
        assert n_clipped == res.stats["n_clipped"] > 0
