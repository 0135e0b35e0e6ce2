"""The linear algebra inside the Newton / soft policy iteration solver.

``EvaluationLU`` solves with the evaluation matrix ``A = I - K`` (column ``ref`` replaced
by ones) through the sparse bordered matrix ``C = I - K + e_ref e_ref^T`` and a rank-one
correction; these tests hold it to dense ``numpy.linalg.solve``, check the fallback when
``C`` is ill-conditioned, and check that GMRES steps preconditioned by an old LU give the
same solution as refactorising every step.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

import tiltrl
import tiltrl.exact.newton as newton
from tiltrl.exact.newton import EvaluationLU, factorise_evaluation


def _random_kernel(seed: int, n: int, density: float):
    rng = np.random.default_rng(seed)
    K = rng.random((n, n)) * (rng.random((n, n)) < density)
    K[np.arange(n), (np.arange(n) + 1) % n] += 0.1  # a cycle: irreducible
    K /= K.sum(axis=1, keepdims=True)
    coo = sp.coo_matrix(K)
    return (coo.row, coo.col, coo.data), K


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31), st.integers(2, 40), st.floats(0.05, 0.8), st.data())
def test_evaluation_lu_matches_dense_solves(seed, n, density, data):
    kernel, K = _random_kernel(seed, n, density)
    ref = data.draw(st.integers(0, n - 1))
    A = np.eye(n) - K
    A[:, ref] = 1.0
    b = np.random.default_rng(seed + 1).normal(size=n)
    lu = EvaluationLU(kernel, n, ref)
    scale = np.linalg.cond(A)
    assert np.allclose(lu.solve(b), np.linalg.solve(A, b), rtol=0, atol=1e-12 * scale)
    assert np.allclose(lu.solve(b, trans="T"), np.linalg.solve(A.T, b), rtol=0,
                       atol=1e-12 * scale)
    # the ordering of one factorisation reused for the next one (permuted path)
    again = EvaluationLU(kernel, n, ref, order=lu.order)
    assert again._c._permuted
    assert np.allclose(again.solve(b), np.linalg.solve(A, b), rtol=0, atol=1e-12 * scale)
    assert np.allclose(again.solve(b, trans="T"), np.linalg.solve(A.T, b), rtol=0,
                       atol=1e-12 * scale)


def test_nearly_transient_ref_falls_back_to_the_ones_column_form(monkeypatch):
    """``ref`` almost never visited: ``C`` is nearly singular although ``A`` is fine."""
    monkeypatch.setattr(newton, "_BORDER_MIN_STATES", 0)
    n, ref = 6, 0
    K = np.zeros((n, n))
    K[0, 1] = 1.0  # ref leaves at once ...
    for s in range(1, n):
        K[s, (s % (n - 1)) + 1] = 1.0 - 1e-13  # ... and the rest cycles among 1..n-1
        K[s, 0] = 1e-13
    coo = sp.coo_matrix(K)
    kernel = (coo.row, coo.col, coo.data)
    with pytest.raises(RuntimeError, match="ill-conditioned"):
        EvaluationLU(kernel, n, ref)
    lu = factorise_evaluation(kernel, n, ref)
    assert not isinstance(lu, EvaluationLU)
    A = np.eye(n) - K
    A[:, ref] = 1.0
    b = np.arange(n, dtype=float)
    assert np.allclose(lu.solve(b), np.linalg.solve(A, b), rtol=1e-10, atol=1e-10)
    # a run that fell back stays on the ones-column form
    assert not isinstance(factorise_evaluation(kernel, n, ref, previous=lu), EvaluationLU)


@pytest.mark.parametrize("bordered", [True, False])
@pytest.mark.parametrize("beta", [1.0, 10.0, 100.0])
def test_preconditioned_steps_reach_the_same_solution(monkeypatch, beta, bordered):
    """GMRES steps with an old LU (forced on a small model) versus a new LU every step,
    with either factorisation of the evaluation matrix."""
    mdp = tiltrl.large_grid(12, 12, n_actions=4, slippery=0.2, seed=3)
    exact = tiltrl.solve(mdp, beta, tol=1e-12)
    calls = {"n": 0}
    original = newton._preconditioned_step

    def counted(*args, **kwargs):
        calls["n"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(newton, "_REUSE_MIN_STATES", 0)
    monkeypatch.setattr(newton, "_BORDER_MIN_STATES", 0 if bordered else 10**9)
    monkeypatch.setattr(newton, "_preconditioned_step", counted)
    reused = tiltrl.solve(mdp, beta, tol=1e-12)
    assert calls["n"] > 0
    assert reused.converged and reused.residual < 1e-12
    assert reused.theta == pytest.approx(exact.theta, rel=1e-12, abs=1e-14)
    assert np.allclose(reused.log_u, exact.log_u, rtol=0, atol=1e-9)
    assert np.allclose(reused.stationary, exact.stationary, rtol=1e-8, atol=1e-14)


@pytest.mark.parametrize("stale_fraction", [0.0, 1e9])
def test_scgf_continuation_with_reused_lus_matches_independent_solves(monkeypatch,
                                                                      stale_fraction):
    """Over a grid of k the LU of one k preconditions the next; with every reused LU
    marked stale at once (fraction 0) or never (1e9) the values equal cold solves."""
    from tiltrl.ld import MarkovChain, scgf

    n = 60
    x = np.arange(n)
    p = 0.3 + 0.1 * np.sin(2 * np.pi * x / 6)
    q = 0.2 + 0.05 * np.cos(2 * np.pi * x / 6)
    P = sp.csr_matrix((np.concatenate([p, q, 1 - p - q]),
                       (np.concatenate([x, x, x]),
                        np.concatenate([(x + 1) % n, (x - 1) % n, x]))), shape=(n, n))
    f = sp.csr_matrix((np.concatenate([np.ones(n), -np.ones(n)]),
                       (np.concatenate([x, x]), np.concatenate([(x + 1) % n, (x - 1) % n]))),
                      shape=(n, n))
    chain = MarkovChain(P)
    ks = np.linspace(-2.0, 2.0, 25)
    cold = np.array([scgf(chain, f, float(k)) for k in ks])
    monkeypatch.setattr(newton, "_REUSE_MIN_STATES", 0)
    monkeypatch.setattr(newton, "_BORDER_MIN_STATES", 0)
    monkeypatch.setattr(newton, "_STALE_FRACTION", stale_fraction)
    warm = scgf(chain, f, ks)
    assert np.allclose(warm, cold, rtol=0, atol=1e-12)


def test_a_stale_lu0_is_refactorised_at_the_first_step(monkeypatch):
    mdp = tiltrl.large_grid(10, 10, n_actions=4)
    monkeypatch.setattr(newton, "_REUSE_MIN_STATES", 0)
    first = tiltrl.solve(mdp, 5.0)
    from tiltrl.exact.average import _kernel_evaluator
    from tiltrl.exact.tilted import state_log_kernel

    kernel = state_log_kernel(mdp, 5.0, 0.0)
    evaluate = _kernel_evaluator(kernel, 5.0)
    lu = factorise_evaluation(evaluate(np.zeros(kernel.n))[1], kernel.n, 0)
    fresh = newton.newton_average(evaluate, np.zeros(kernel.n), ref=0, beta=5.0, tol=1e-12,
                                  max_iter=50, lu0=lu)
    lu.stale = True
    refreshed = newton.newton_average(evaluate, np.zeros(kernel.n), ref=0, beta=5.0,
                                      tol=1e-12, max_iter=50, lu0=lu)
    assert fresh.converged and refreshed.converged
    assert refreshed.factorisations >= 1 and refreshed.lu is not lu
    assert refreshed.theta == pytest.approx(fresh.theta, abs=1e-12)
    assert refreshed.theta == pytest.approx(first.theta, abs=1e-10)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 60), st.sampled_from(["one", "near", "ragged"]))
def test_row_logsumexp_matches_scipy_on_every_row_layout(seed, n, layout):
    """The padded 2-D path (rows of one or nearly one length) and the reduceat path
    (ragged rows) agree with scipy's logsumexp, -inf entries and all--inf rows included."""
    from scipy.special import logsumexp

    from tiltrl.exact.tilted import RowLayout, row_logsumexp

    rng = np.random.default_rng(seed)
    if layout == "one":
        lengths = np.full(n, int(rng.integers(1, 6)))
    elif layout == "near":
        lengths = np.full(n, 4)
        lengths[rng.integers(0, n)] = int(rng.integers(1, 4))
    else:
        lengths = rng.integers(1, 40, size=n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    z = rng.normal(scale=50.0, size=indptr[-1])
    z[rng.random(z.size) < 0.2] = -np.inf
    got = row_logsumexp(z, indptr)
    np.testing.assert_array_equal(row_logsumexp(z, indptr, RowLayout.of(indptr)), got)
    want = np.array([logsumexp(z[indptr[i]:indptr[i + 1]]) for i in range(n)])
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want))
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=1e-13, atol=1e-12)


def test_refactorise_rule_counts_all_steps_since_the_factorisation() -> None:
    # each step alone is cheap (0.2 of a factorisation), together they are not
    assert not newton._refactorise_due(0.2, 1.0, 1e-3, 1e-10)
    assert newton._refactorise_due(0.6, 1.0, 1e-3, 1e-10)
    # ... unless the next step should be the last one (resid^2 below tol)
    assert not newton._refactorise_due(0.6, 1.0, 1e-6, 1e-10)


def test_newton_refactorises_a_stale_lu_whose_steps_are_each_cheap(monkeypatch) -> None:
    # A fake clock: a factorisation costs 1 s, a preconditioned step 0.2 s. A per-step
    # rule (0.2 < threshold) would keep the first LU for the whole solve; the steps since
    # the LU add up, so a second factorisation must come before the last steps.
    clock = [0.0]
    monkeypatch.setattr(newton.time, "perf_counter", lambda: clock[0])
    real_splu, real_step = newton.splu, newton._preconditioned_step
    calls: list[str] = []

    def splu(*args, **kwargs):  # type: ignore[no-untyped-def]
        clock[0] += 1.0
        calls.append("LU")
        return real_splu(*args, **kwargs)

    def step(*args, **kwargs):  # type: ignore[no-untyped-def]
        clock[0] += 0.2
        calls.append("PC")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(newton, "splu", splu)
    monkeypatch.setattr(newton, "_preconditioned_step", step)
    mdp = tiltrl.large_grid(142, 142, n_actions=4)  # >= _REUSE_MIN_STATES states
    assert mdp.n_states >= newton._REUSE_MIN_STATES
    sol = tiltrl.solve(mdp, 10.0, tol=1e-10)
    assert sol.converged
    assert calls[:5] == ["LU", "PC", "PC", "PC", "LU"], calls
