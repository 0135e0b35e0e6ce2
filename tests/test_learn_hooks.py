"""learn(): explicit evaluation steps and the on_eval hook; speed-path equivalences."""

from __future__ import annotations

import numpy as np

import tiltrl
from tiltrl.agents import MDPSampler, SoftQLearner, StepSize, learn


def test_eval_steps_and_on_eval():
    mdp = tiltrl.gridworld(["SFF", "FHF", "FFG"])
    seen: list[tuple[int, float]] = []

    def hook(t, learner):
        seen.append((t, float(learner.theta[0])))

    res = learn("u_learning", mdp, beta=1.0, steps=500, seeds=2, seed=0, reference=False,
                eval_steps=[10, 100, 500], on_eval=hook)
    assert [t for t, _ in seen] == [10, 100, 500]
    assert seen[-1][1] == res.theta[0]
    assert res.curves is None
    res = learn("u_learning", mdp, beta=1.0, steps=500, seeds=2, seed=0, eval_steps=[50, 500])
    assert res.curves is not None and list(res.curves.steps) == [50, 500]
    try:
        learn("u_learning", mdp, beta=1.0, steps=50, eval_steps=[100], on_eval=hook)
    except ValueError as exc:
        assert "eval_steps" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("eval_steps past the end accepted")


def test_sampler_comparison_search_equals_searchsorted():
    """The comparison search (few outcomes per row) picks the outcome searchsorted picks."""
    mdp = tiltrl.gridworld("7x7holes", slippery=1)
    K = 4096
    fast = MDPSampler(mdp, K, 0)
    slow = MDPSampler(mdp, K, 0)
    assert fast._thresholds is not None
    slow._thresholds = None
    rng = np.random.default_rng(5)
    for _ in range(20):
        s = rng.integers(0, mdp.n_states, K)
        a = rng.integers(0, mdp.n_actions, K)
        u = rng.random(K)
        u[:8] = np.nextafter(1.0, 0.0)  # the largest uniform: the row's last outcome
        u[8:16] = 0.0
        np.testing.assert_array_equal(fast.step(s, a, u)[0], slow.step(s, a, u)[0])


def test_visit_step_size_table_equals_schedule():
    mdp = tiltrl.gridworld(["SFF", "FHF", "FFG"], slippery=1)
    step = StepSize(0.9, decay="visits", power=0.6, tau=3.0, min_lr=0.01)
    learner = SoftQLearner(*mdp.shape, 3, 2.0, mdp.prior, step, gamma=0.9)
    idx = np.array([0, 5, 7])
    learner.visits[idx] = [0, 2000, 5000]  # beyond the first table: it grows
    np.testing.assert_array_equal(learner._alpha(idx), step(np.array([0.0, 2000.0, 5000.0])))
