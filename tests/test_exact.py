"""Exact solvers against independent references (DESIGN.md §1-§3, §5).

References built here, not taken from the library: the dense tilted matrix
``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r(s,a,s')) pi0(a'|s')`` and its eigen-decomposition,
log-space eigen-residuals, hard relative value iteration, brute force over deterministic
policies, the pair-action MDP of DESIGN.md §2, closed forms.
"""

from __future__ import annotations

import itertools
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given
from hypothesis import strategies as st
from scipy.special import logsumexp

import tiltrl
from tiltrl import Solution, Sweep, TabularMDP
from tiltrl.exact.average import ConvergenceWarning
from tiltrl.exact.tilted import state_log_kernel, tilted_operator

# ============================================================================ models


@dataclass(frozen=True)
class Model:
    """Raw arrays (as a user would write them) and the validated model."""

    P: np.ndarray  # (S, A, S)
    R: np.ndarray  # (S, A, S): r(s,a,s'), broadcast when the reward is r(s,a)
    prior: np.ndarray  # (S, A)
    initial: np.ndarray  # (S,)
    mdp: TabularMDP
    recipe: str = "custom"  # how to rebuild it: the make_model(...) call

    def __repr__(self) -> str:
        return f"Model({self.recipe})"

    @property
    def S(self) -> int:
        return self.P.shape[0]

    @property
    def A(self) -> int:
        return self.P.shape[1]

    @property
    def r_lo(self) -> float:
        return float(self.R[self.P > 0].min())

    @property
    def r_hi(self) -> float:
        return float(self.R[self.P > 0].max())

    @property
    def spread(self) -> float:
        return self.r_hi - self.r_lo


def make_model(
    seed: int,
    S: int,
    A: int,
    *,
    support: str = "full",
    per_transition: bool = False,
    reward_scale: float = 3.0,
    uniform_prior: bool = False,
) -> Model:
    """Random irreducible model.

    ``support``: ``"full"`` (every p(s'|s,a) > 0), ``"sparse"`` (random support, made
    irreducible by the ring s -> s+1 under action 0) or ``"deterministic"`` (one successor
    per (s, a), action 0 on the ring).
    """
    rng = np.random.default_rng(seed)
    s_idx, a_idx = np.arange(S)[:, None], np.arange(A)[None, :]
    if support == "deterministic":
        nxt = rng.integers(0, S, (S, A))
        nxt[:, 0] = (np.arange(S) + 1) % S
        P = np.zeros((S, A, S))
        P[s_idx, a_idx, nxt] = 1.0
    elif support == "sparse":
        mask = rng.random((S, A, S)) < 0.35
        mask[s_idx, a_idx, rng.integers(0, S, (S, A))] = True
        mask[np.arange(S), 0, (np.arange(S) + 1) % S] = True
        P = np.where(mask, rng.random((S, A, S)) + 0.05, 0.0)
        P /= P.sum(axis=-1, keepdims=True)
    elif support == "full":
        P = rng.random((S, A, S)) + 0.02
        P /= P.sum(axis=-1, keepdims=True)
    else:  # pragma: no cover
        raise ValueError(support)
    if per_transition:
        r = rng.uniform(-reward_scale, reward_scale, (S, A, S))
        R = r
    else:
        r = rng.uniform(-reward_scale, reward_scale, (S, A))
        R = np.repeat(r[:, :, None], S, axis=2)
    if uniform_prior:
        prior = np.full((S, A), 1.0 / A)
    else:
        prior = rng.random((S, A)) + 0.05
        prior /= prior.sum(axis=1, keepdims=True)
    initial = rng.random(S) + 0.05
    initial /= initial.sum()
    recipe = (
        f"make_model({seed}, {S}, {A}, support={support!r}, per_transition={per_transition}, "
        f"reward_scale={reward_scale}, uniform_prior={uniform_prior})"
    )
    return Model(P, R, prior, initial, TabularMDP(P, r, prior, initial), recipe)


@st.composite
def models(draw, supports=("full", "sparse"), per_transition=None, max_S=8, max_A=4):
    S = draw(st.integers(2, max_S))
    A = draw(st.integers(1, max_A))
    support = draw(st.sampled_from(supports))
    pt = draw(st.booleans()) if per_transition is None else per_transition
    seed = draw(st.integers(0, 2**32 - 1))
    return make_model(seed, S, A, support=support, per_transition=pt)


betas = st.floats(0.1, 20.0, allow_nan=False, allow_infinity=False)

# ============================================================================ references


def dense_tilted(m: Model, beta: float, shift: float | None = None):
    """``M * exp(-beta shift)`` as a dense ``(S*A, S*A)`` array, and ``B[s,a,s']``."""
    shift = m.r_hi if shift is None else shift
    B = np.where(m.P > 0, m.P * np.exp(beta * (np.where(m.P > 0, m.R, shift) - shift)), 0.0)
    M = B[:, :, :, None] * m.prior[None, None, :, :]
    return M.reshape(m.S * m.A, m.S * m.A), B


def log_right_residual(m: Model, beta: float, log_u: np.ndarray, log_rho: float) -> np.ndarray:
    """``log (M u)(s,a) - log rho - log u(s,a)``, evaluated in log space."""
    with np.errstate(divide="ignore"):
        log_p, log_pi0 = np.log(m.P), np.log(m.prior)
    log_chi = logsumexp(log_pi0 + log_u, axis=1)
    z = log_p + beta * m.R + log_chi[None, None, :]
    return logsumexp(z, axis=2) - log_rho - log_u


def perron(M: np.ndarray):
    """Perron root, right and left vectors of a dense irreducible non-negative matrix,
    normalised ``sum(v) = 1``, ``sum(u v) = 1``."""
    w, V = np.linalg.eig(M)
    k = int(np.argmax(w.real))
    wl, Vl = np.linalg.eig(M.T.copy())
    kl = int(np.argmax(wl.real))
    rho = float(w[k].real)
    assert abs(wl[kl].real - rho) <= 1e-10 * rho
    u = np.abs(V[:, k].real)
    v = np.abs(Vl[:, kl].real)
    v = v / v.sum()
    u = u / (u @ v)
    return rho, u, v


def driven_from_log_u(m: Model, beta: float, log_u: np.ndarray) -> np.ndarray:
    """``p*(s'|s,a) ∝ p(s'|s,a) exp(beta r(s,a,s')) chi(s')`` as ``(S, A, S)``."""
    with np.errstate(divide="ignore"):
        log_p = np.log(m.P)
    log_chi = logsumexp(np.log(m.prior) + log_u, axis=1)
    z = log_p + beta * m.R + log_chi[None, None, :]
    return np.exp(z - logsumexp(z, axis=2, keepdims=True))


def policy_from_log_u(m: Model, log_u: np.ndarray) -> np.ndarray:
    y = np.log(m.prior) + log_u
    return np.exp(y - logsumexp(y, axis=1, keepdims=True))


def hard_rvi(P: sp.csr_matrix, r: np.ndarray, tol: float = 1e-12, max_iter: int = 200_000):
    """Unregularised relative value iteration (aperiodicity transform tau = 1/2).

    Returns the optimal gain ``g`` and bias ``h`` (``h[0] = 0``) of a communicating MDP.
    """
    S, A = r.shape
    h = np.zeros(S)
    for _ in range(max_iter):
        Th = (r + (P @ h).reshape(S, A)).max(axis=1)
        d = Th - h
        if d.max() - d.min() < tol:
            return 0.5 * (d.max() + d.min()), h
        h = h + 0.5 * (d - d[0])
    raise AssertionError("hard RVI did not converge")


def brute_force_gain(m: Model) -> float:
    """Best long-run average reward over deterministic stationary policies (deterministic
    dynamics), maximised over start states (the model is irreducible, so it is the same
    from every state)."""
    nxt = m.P.argmax(axis=2)
    r = m.R[np.arange(m.S)[:, None], np.arange(m.A)[None, :], nxt]
    best = -np.inf
    for pol in itertools.product(range(m.A), repeat=m.S):
        for s0 in range(m.S):
            seen: dict[int, int] = {}
            path: list[float] = []
            s = s0
            while s not in seen:
                seen[s] = len(path)
                path.append(r[s, pol[s]])
                s = nxt[s, pol[s]]
            cycle = path[seen[s] :]
            best = max(best, sum(cycle) / len(cycle))
    return best


def state_matrix(m: Model, beta: float, shift: float) -> np.ndarray:
    """``Q[s,s'] = sum_a pi0(a|s) p(s'|s,a) exp(beta (r - shift))`` (dense)."""
    _, B = dense_tilted(m, beta, shift)
    return np.einsum("sa,sat->st", m.prior, B)


def rel_close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(1.0, abs(a), abs(b))


# ============================================================================ dense eig


@given(models(), betas)
def test_perron_root_and_right_vector_match_dense(m, beta):
    """Full ranges (rewards in [-3,3], beta in [0.1,20]): root vs numpy.linalg.eig, right
    vector by its componentwise log-space residual, policy and driven dynamics from it."""
    sol = tiltrl.solve(m.mdp, beta)
    assert sol.converged and sol.kind == "average" and sol.dynamics == "controlled"
    M, _ = dense_tilted(m, beta)
    lr_dense = math.log(np.max(np.linalg.eigvals(M).real)) + beta * m.r_hi
    assert rel_close(sol.log_rho, lr_dense, 1e-8), (sol.log_rho, lr_dense)
    assert sol.theta == pytest.approx(sol.log_rho / beta, rel=1e-15, abs=1e-300)
    assert sol.scgf == sol.log_rho and sol.cost_rate == -sol.theta

    # u > 0 everywhere (irreducible) and M u = rho u componentwise
    assert np.all(np.isfinite(sol.log_u))
    res = log_right_residual(m, beta, sol.log_u, sol.log_rho)
    assert np.max(np.abs(res)) < 1e-8, np.max(np.abs(res))

    # policy = pi0 u / chi, driven p* ∝ p exp(beta r) chi(s')
    np.testing.assert_allclose(sol.policy, policy_from_log_u(m, sol.log_u), rtol=0, atol=1e-10)
    np.testing.assert_allclose(sol.policy.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    pstar = sol.driven_dynamics.toarray().reshape(m.S, m.A, m.S)
    np.testing.assert_allclose(pstar, driven_from_log_u(m, beta, sol.log_u), rtol=0, atol=1e-10)
    assert np.all(pstar[m.P == 0] == 0)

    # Collatz-Wielandt bracket contains the dense root
    lo, hi = sol.bracket
    t_dense = lr_dense / beta
    slack = 1e-11 * max(1.0, abs(t_dense))
    assert lo - slack <= sol.theta <= hi + slack
    assert lo - slack <= t_dense <= hi + slack
    assert (hi - lo) * beta < 1e-8


@given(models(), betas)
def test_eigenvectors_match_dense_eig(m, beta):
    """Where the dense eigenvectors
    are accurate, beta (r_max - r_min) <= 6, compare u, v, pi*, d = u v and p* with
    numpy.linalg.eig directly."""
    beta = min(beta, 6.0 / max(m.spread, 1e-12))
    sol = tiltrl.solve(m.mdp, beta)
    assert sol.converged
    M, B = dense_tilted(m, beta)
    rho, u, v = perron(M)
    assert rel_close(sol.log_rho, math.log(rho) + beta * m.r_hi, 1e-10)
    # the dense reference itself is accurate here
    np.testing.assert_allclose(M @ u, rho * u, rtol=1e-8, atol=1e-13 * rho * u.max())
    np.testing.assert_allclose(v @ M, rho * v, rtol=1e-8, atol=1e-13 * rho * v.max())

    left = np.exp(sol.log_left).ravel()
    assert left.sum() == pytest.approx(1.0, abs=1e-12)
    # the solver's tol (1e-10) bounds the absolute accuracy of the small components of v
    np.testing.assert_allclose(left, v, rtol=1e-7, atol=1e-10)
    np.testing.assert_allclose(np.exp(sol.log_u).ravel(), u, rtol=1e-7)
    assert np.sum(np.exp(sol.log_u + sol.log_left)) == pytest.approx(1.0, abs=1e-10)

    ud = u.reshape(m.S, m.A)
    chi = (m.prior * ud).sum(axis=1)
    np.testing.assert_allclose(sol.policy, m.prior * ud / chi[:, None], rtol=0, atol=1e-9)
    np.testing.assert_allclose(sol.stationary, (u * v).reshape(m.S, m.A), rtol=0, atol=1e-9)
    pstar = B * chi[None, None, :]
    pstar /= pstar.sum(axis=2, keepdims=True)
    np.testing.assert_allclose(
        sol.driven_dynamics.toarray().reshape(m.S, m.A, m.S), pstar, rtol=0, atol=1e-9
    )
    # Q = log(u)/beta, V = log(chi)/beta: the same relative accuracy as u
    np.testing.assert_allclose(sol.q, np.log(ud) / beta, rtol=0, atol=1e-7 / beta)
    np.testing.assert_allclose(sol.v, np.log(chi) / beta, rtol=0, atol=1e-7 / beta)

    # population-growth form: rho = sum_(s,a) v(s,a) E_{s'}[exp(beta r)], sum(v) = 1
    # (sum over (s',a') of v M = rho v; the prior row sums to one)
    growth = left @ B.sum(axis=2).ravel()
    assert math.log(growth) + beta * m.r_hi == pytest.approx(sol.log_rho, rel=1e-9, abs=1e-9)


def test_eigenvectors_match_dense_on_gridworld():
    mdp = tiltrl.gridworld("4x4", slippery=True)  # stochastic, holes and goal reset
    beta = 2.0
    sol = tiltrl.solve(mdp, beta)
    S, A = mdp.shape
    m = Model(
        mdp.dense_transitions(),
        np.repeat(mdp.reward[:, :, None], S, axis=2),
        mdp.prior,
        mdp.initial,
        mdp,
    )
    M, _ = dense_tilted(m, beta)
    rho, u, v = perron(M)
    assert sol.log_rho == pytest.approx(math.log(rho) + beta * m.r_hi, rel=1e-10)
    np.testing.assert_allclose(np.exp(sol.log_u).ravel(), u, rtol=1e-7)
    np.testing.assert_allclose(np.exp(sol.log_left).ravel(), v, rtol=1e-7, atol=1e-14)


def test_left_vector_survives_underflow():
    """Rank-one example: Q = x 1^T with x = exp(beta r)/2, so rho = (e^{3b} + e^{-3b})/2,
    u ∝ x and v = (1/2, 1/2) exactly, for every beta."""
    P = np.full((2, 1, 2), 0.5)
    r = np.array([[3.0], [-3.0]])
    mdp = TabularMDP(P, r)
    beta = 10.0
    sol = tiltrl.solve(mdp, beta)
    assert sol.log_rho == pytest.approx(beta * 3 + math.log1p(math.exp(-6 * beta)) - math.log(2))
    np.testing.assert_allclose(np.exp(sol.log_left).ravel(), [0.5, 0.5], rtol=1e-9)
    # u = 2 x / (x0 + x1)
    log_x = beta * r.ravel()
    expected_log_u = math.log(2) + log_x - logsumexp(log_x)
    np.testing.assert_allclose(sol.log_u.ravel(), expected_log_u, rtol=1e-9)
    growth = logsumexp(sol.log_left.ravel() + beta * r.ravel())
    assert growth == pytest.approx(sol.log_rho, rel=1e-9)


def test_left_vector_accuracy_moderate_beta():
    m = make_model(0, 5, 1, support="sparse")
    beta = 3.0
    assert 10 < beta * m.spread < 15
    sol = tiltrl.solve(m.mdp, beta)
    M, _ = dense_tilted(m, beta)
    rho, u, v = perron(M)
    # the dense reference is accurate to ~1e-9 componentwise here
    np.testing.assert_allclose(v @ M, rho * v, rtol=1e-8)
    assert sol.converged
    # the direction of u is right (its scale follows v through sum(u v) = 1)...
    ratio = np.exp(sol.log_u).ravel() / u
    np.testing.assert_allclose(ratio / ratio[0], 1.0, atol=1e-9)
    # ...v is not
    np.testing.assert_allclose(np.exp(sol.log_left).ravel(), v, rtol=1e-7)


@given(models(), betas)
def test_tilted_operator_and_state_kernel_match_dense(m, beta):
    shift = m.r_hi
    M, _ = dense_tilted(m, beta, shift)
    op = tilted_operator(m.mdp, beta, shift=shift)
    assert op.shape == M.shape
    x = np.random.default_rng(0).random(M.shape[0])
    scale = max(1.0, float(np.abs(M).max()))
    np.testing.assert_allclose(op.matvec(x), M @ x, rtol=1e-12, atol=1e-14 * scale)
    np.testing.assert_allclose(op.rmatvec(x), M.T @ x, rtol=1e-12, atol=1e-14 * scale)
    # unshifted operator when it is representable: M exactly
    if beta * max(abs(m.r_lo), abs(m.r_hi)) < 300:
        M0, _ = dense_tilted(m, beta, 0.0)
        np.testing.assert_allclose(
            tilted_operator(m.mdp, beta).matvec(x), M0 @ x, rtol=1e-12, atol=1e-300
        )
    kern = state_log_kernel(m.mdp, beta, shift)
    np.testing.assert_allclose(kern.to_dense(), state_matrix(m, beta, shift), rtol=1e-12)
    # a second beta reuses the model's kept pattern of (s, s') entries
    kern2 = state_log_kernel(m.mdp, 0.5 * beta, shift)
    assert kern2.indptr is kern.indptr
    np.testing.assert_allclose(kern2.to_dense(), state_matrix(m, 0.5 * beta, shift),
                               rtol=1e-12)


def test_solves_on_one_model_equal_solves_on_fresh_copies():
    """The model keeps beta-free structure (kernel pattern, classes) between solves; a
    solve after others must be bit-for-bit the solve of a fresh model, also where the
    model is reducible (its class analysis is among what is kept)."""
    grid = ["SFWF", "FFWF", "FGWF"]  # the right column is unreachable from S
    shared = tiltrl.gridworld(grid, slippery=1)
    for beta in (0.5, 3.0, 20.0):
        fresh = tiltrl.gridworld(grid, slippery=1)
        a, b = tiltrl.solve(shared, beta), tiltrl.solve(fresh, beta)
        assert a.theta == b.theta and a.notes == b.notes and "reachable" in a.notes[0]
        assert a.recurrent_states.size == 6
        np.testing.assert_array_equal(a.log_u, b.log_u)
        np.testing.assert_array_equal(a.stationary, b.stationary)


# ============================================================================ identities


@given(models(), betas)
def test_thermodynamic_identities(m, beta):
    """theta = energy - (policy_kl + dynamics_kl)/beta, with every term recomputed here from
    pi*, p* and d; d sums to one and is invariant under the driven process."""
    sol = tiltrl.solve(m.mdp, beta)
    d = sol.stationary
    pi = sol.policy
    pstar = sol.driven_dynamics.toarray().reshape(m.S, m.A, m.S)
    assert d.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(d >= 0)
    mu = d.sum(axis=1)
    np.testing.assert_allclose(sol.state_distribution, mu, rtol=0, atol=1e-15)
    # d(s',a') = sum_{s,a} d(s,a) p*(s'|s,a) pi*(a'|s')
    flow = np.einsum("sa,sat->t", d, pstar)[:, None] * pi
    np.testing.assert_allclose(flow, d, rtol=0, atol=1e-10)
    # d(s,a) = mu(s) pi*(a|s)
    np.testing.assert_allclose(d, mu[:, None] * pi, rtol=0, atol=1e-12)

    energy = float(np.sum(d[:, :, None] * pstar * m.R))
    with np.errstate(divide="ignore", invalid="ignore"):
        pkl = float(np.sum(mu * np.sum(np.where(pi > 0, pi * np.log(pi / m.prior), 0.0), 1)))
        dkl_sa = np.sum(np.where(pstar > 0, pstar * np.log(pstar / m.P), 0.0), axis=2)
    dkl = float(np.sum(d * dkl_sa))
    scale = max(1.0, abs(energy), (pkl + dkl) / beta)
    assert sol.energy == pytest.approx(energy, abs=1e-10 * scale)
    assert sol.policy_kl == pytest.approx(pkl, abs=1e-10 * scale * beta)
    assert sol.dynamics_kl == pytest.approx(dkl, abs=1e-10 * scale * beta)
    assert pkl >= 0 and dkl >= 0
    assert sol.theta == pytest.approx(energy - (pkl + dkl) / beta, abs=1e-9 * scale)
    assert sol.free_energy == -sol.theta

    # an independent Collatz-Wielandt bracket from arbitrary positive vectors
    Qs = state_matrix(m, beta, m.r_hi)
    slack = 2 * sol.residual / beta + 1e-13 * max(1.0, abs(sol.theta))  # solver tolerance
    for x in (np.ones(m.S), np.random.default_rng(1).random(m.S) + 0.1):
        ratio = np.log(Qs @ x / x) / beta + m.r_hi
        assert ratio.min() - slack <= sol.theta <= ratio.max() + slack


def test_unconverged_solution_is_reported_and_bracketed():
    m = make_model(7, 6, 3, support="sparse", per_transition=True)
    beta = 5.0
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        sol = tiltrl.solve(m.mdp, beta, method="power", max_iter=2)
    assert not sol.converged
    assert sol.residual > 1e-10
    assert any("did not converge" in n for n in sol.notes)
    exact = tiltrl.solve(m.mdp, beta).theta
    lo, hi = sol.bracket
    assert lo <= exact <= hi
    assert hi - lo > 1e-6  # a real, not a degenerate, bracket


def test_power_method_agrees_with_newton():
    m = make_model(3, 5, 3, support="full", per_transition=True)
    a = tiltrl.solve(m.mdp, 3.0)
    b = tiltrl.solve(m.mdp, 3.0, method="power")
    assert b.converged and b.method == "power"
    assert a.theta == pytest.approx(b.theta, abs=1e-10)
    np.testing.assert_allclose(a.policy, b.policy, atol=1e-9)


# ============================================================== §2 fixed vs controlled


@pytest.mark.parametrize("beta", [1.0, 10.0])
def test_deterministic_gridworld_controlled_equals_fixed(beta):
    mdp = tiltrl.gridworld("7x7holes")
    ctrl = tiltrl.solve(mdp, beta)
    for method in ("newton", "mapping", "rvi"):
        fx = tiltrl.solve(mdp, beta, dynamics="fixed", method=method)
        assert fx.converged, method
        assert fx.dynamics == "fixed" and fx.method == method
        assert fx.theta == pytest.approx(ctrl.theta, abs=1e-8), method
        np.testing.assert_allclose(fx.policy, ctrl.policy, atol=1e-7, err_msg=method)
        np.testing.assert_allclose(fx.stationary, ctrl.stationary, atol=1e-7, err_msg=method)
    assert ctrl.dynamics_kl == pytest.approx(0.0, abs=1e-12)


@given(
    models(supports=("deterministic",), max_S=7, max_A=3),
    # up to beta (r_max - r_min) ~ 120: cold starts there once tripped Newton
    st.floats(0.1, 20.0),
)
def test_deterministic_controlled_equals_fixed(m, beta):
    ctrl = tiltrl.solve(m.mdp, beta)
    assert ctrl.converged
    # p* = p for deterministic dynamics
    assert ctrl.dynamics_kl == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(ctrl.driven_dynamics.toarray(), m.mdp.P.toarray(), atol=1e-12)
    for method in ("newton", "mapping", "rvi"):
        fx = tiltrl.solve(m.mdp, beta, dynamics="fixed", method=method)
        assert fx.converged, method
        assert fx.theta == pytest.approx(ctrl.theta, abs=1e-8), method
        np.testing.assert_allclose(fx.policy, ctrl.policy, atol=1e-7, err_msg=method)


NEWTON_COLD_START_FAILURES = [
    # (make_model arguments, beta, dynamics, method); each one is solved correctly by
    # relative value iteration and by a warm-started annealing path
    pytest.param(
        (236762, 6, 2, "deterministic", True), 4.0, "controlled", "newton", id="det236762-ctrl"
    ),
    pytest.param(
        (236762, 6, 2, "deterministic", True), 3.0, "fixed", "newton", id="det236762-fixed"
    ),
    pytest.param((22, 6, 2, "deterministic", False), 7.5, "fixed", "newton", id="det22-fixed"),
    pytest.param((2956, 4, 2, "sparse", True), 7.0, "pairs-fixed", "newton", id="pairs2956-fixed"),
    # a Markov chain (A = 1): the fixed-dynamics answer is just the mean reward -1.3775067
    pytest.param(
        (1000000, 4, 1, "sparse", True), 5.0, "fixed", "mapping", id="chain1000000-mapping"
    ),
]


@pytest.mark.parametrize(("args", "beta", "dynamics", "method"), NEWTON_COLD_START_FAILURES)
def test_newton_cold_start_moderate_beta(args, beta, dynamics, method):
    seed, S, A, support, per_transition = args
    m = make_model(seed, S, A, support=support, per_transition=per_transition)
    if dynamics == "pairs-fixed":
        mdp, dynamics = pair_action_mdp(m), "fixed"
        exact = tiltrl.solve(m.mdp, beta).theta  # DESIGN.md §2
    elif dynamics == "controlled" or m.mdp.is_deterministic:
        mdp = m.mdp
        M, _ = dense_tilted(m, beta)
        exact = math.log(np.max(np.linalg.eigvals(M).real)) / beta + m.r_hi
    else:  # a Markov chain under fixed dynamics: the stationary mean reward
        mdp = m.mdp
        assert m.A == 1
        P = m.P[:, 0, :]
        w, V = np.linalg.eig(P.T)
        pi = np.abs(V[:, np.argmax(w.real)].real)
        exact = float(pi @ (P * m.R[:, 0, :]).sum(axis=1) / pi.sum())
        assert exact == pytest.approx(-1.377506672599747, abs=1e-12)
    # the references get it right: relative value iteration and an annealing path
    rvi = tiltrl.solve(mdp, beta, dynamics="fixed", method="rvi")
    assert rvi.converged and rvi.theta == pytest.approx(exact, abs=1e-8)
    path = tiltrl.sweep(mdp, [beta / 8, beta / 2, beta], dynamics=dynamics)
    assert path.converged.all() and path.theta[-1] == pytest.approx(exact, abs=1e-8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        sol = tiltrl.solve(mdp, beta, dynamics=dynamics, method=method)
    assert sol.converged
    assert sol.theta == pytest.approx(exact, abs=1e-8)


@given(models(supports=("full", "sparse"), max_S=6, max_A=3), st.floats(0.1, 15.0))
def test_stochastic_fixed_methods_agree_and_controlled_dominates(m, beta):
    ctrl = tiltrl.solve(m.mdp, beta)
    fixed = {
        meth: tiltrl.solve(m.mdp, beta, dynamics="fixed", method=meth)
        for meth in ("newton", "mapping", "rvi")
    }
    ref = fixed["newton"]
    for meth, sol in fixed.items():
        assert sol.converged, meth
        assert sol.theta == pytest.approx(ref.theta, abs=1e-7), meth
        np.testing.assert_allclose(sol.policy, ref.policy, atol=1e-7, err_msg=meth)
    # the controlled optimum also optimises the dynamics: never worse
    assert ctrl.theta >= ref.theta - 1e-10
    # a strict gap whenever the optimal dynamics differ from p
    if ctrl.dynamics_kl > 1e-6:
        assert ctrl.theta > ref.theta


@given(models(supports=("full", "sparse"), max_S=6, max_A=3), st.floats(0.1, 10.0))
def test_fixed_solution_satisfies_fixed_bellman_equation(m, beta):
    sol = tiltrl.solve(m.mdp, beta, dynamics="fixed")
    assert sol.converged
    rbar = (m.P * m.R).sum(axis=2)
    # Q + theta = r + E_p V
    lhs = sol.q + sol.theta
    rhs = rbar + np.einsum("sat,t->sa", m.P, sol.v)
    np.testing.assert_allclose(lhs, rhs, rtol=0, atol=1e-9)
    # V = (1/beta) log sum_a pi0 exp(beta Q), pi = pi0 exp(beta (Q - V))
    v = logsumexp(np.log(m.prior) + beta * sol.q, axis=1) / beta
    np.testing.assert_allclose(sol.v, v, rtol=0, atol=1e-10)
    np.testing.assert_allclose(
        sol.policy, m.prior * np.exp(beta * (sol.q - sol.v[:, None])), rtol=0, atol=1e-10
    )
    # the environment's dynamics are kept, and the free energy decomposes without a
    # dynamics term
    np.testing.assert_array_equal(sol.driven_dynamics.toarray(), m.mdp.P.toarray())
    assert sol.dynamics_kl == 0.0
    d = sol.stationary
    mu = d.sum(axis=1)
    np.testing.assert_allclose(np.einsum("sa,sat->t", d, m.P), mu, atol=1e-10)
    energy = float(np.sum(d * rbar))
    pkl = float(np.sum(d * np.log(sol.policy / m.prior)))
    assert sol.energy == pytest.approx(energy, abs=1e-10)
    assert sol.policy_kl == pytest.approx(pkl, abs=1e-9)
    assert sol.theta == pytest.approx(energy - pkl / beta, abs=1e-9 * max(1, pkl / beta))


def test_fixed_dynamics_uses_only_the_mean_of_r_sas():
    m = make_model(11, 5, 3, support="sparse", per_transition=True)
    mean = TabularMDP(m.P, (m.P * m.R).sum(axis=2), m.prior, m.initial)
    for beta in (0.5, 4.0):
        a = tiltrl.solve(m.mdp, beta, dynamics="fixed")
        b = tiltrl.solve(mean, beta, dynamics="fixed")
        assert a.theta == pytest.approx(b.theta, abs=1e-12)
        np.testing.assert_allclose(a.policy, b.policy, atol=1e-12)
        # ...while under controlled dynamics it stays inside the exponent
        assert tiltrl.solve(m.mdp, beta).theta > tiltrl.solve(mean, beta).theta + 1e-4


def pair_action_mdp(m: Model) -> TabularMDP:
    """DESIGN.md §2: actions (a, s'), prior pi0(a|s) p(s'|s,a), deterministic moves."""
    S, A = m.S, m.A
    P2 = np.zeros((S, A * S, S))
    P2[:, np.arange(A * S), np.tile(np.arange(S), A)] = 1.0
    prior2 = (m.prior[:, :, None] * m.P).reshape(S, A * S)
    r2 = np.where(m.P > 0, m.R, m.r_lo).reshape(S, A * S)
    return TabularMDP(P2, r2, prior2, m.initial)


@given(models(supports=("full", "sparse"), max_S=5, max_A=3), st.floats(0.1, 15.0))
def test_controlled_problem_is_a_fixed_problem_over_pairs(m, beta):
    ctrl = tiltrl.solve(m.mdp, beta)
    pairs = pair_action_mdp(m)
    assert pairs.is_deterministic
    fx = tiltrl.solve(pairs, beta, dynamics="fixed")
    assert fx.converged
    assert fx.theta == pytest.approx(ctrl.theta, abs=1e-9)
    # pi_pairs(a, s' | s) = pi*(a|s) p*(s'|s,a)
    joint = ctrl.policy[:, :, None] * ctrl.driven_dynamics.toarray().reshape(m.S, m.A, m.S)
    np.testing.assert_allclose(fx.policy, joint.reshape(m.S, m.A * m.S), atol=1e-8)
    # and the pair problem's own Perron solution is the same (deterministic dynamics)
    assert tiltrl.solve(pairs, beta).theta == pytest.approx(ctrl.theta, abs=1e-9)


# ============================================================================ calibration


@pytest.mark.parametrize(
    ("beta", "cost_rate"),
    [(1, 1.006101), (5, 0.986312), (10, 0.964515), (20, 0.933644), (50, 0.907111), (100, 0.898000)],
)
def test_7x7holes_calibration(beta, cost_rate):
    mdp = tiltrl.gridworld("7x7holes")
    assert mdp.info["min_reward"] == -1.5
    sol = tiltrl.solve(mdp, beta)
    assert sol.converged
    assert sol.cost_rate == pytest.approx(cost_rate, abs=1e-6)
    assert sol.theta == pytest.approx(-cost_rate, abs=1e-6)


# ============================================================================ large beta


def reachable_submodel(mdp: TabularMDP) -> tuple[np.ndarray, sp.csr_matrix, np.ndarray]:
    """States reachable from the initial law, and (P, r) restricted to them."""
    S, A = mdp.shape
    succ = [set() for _ in range(S)]
    coo = mdp.P.tocoo()
    for row, col in zip(coo.row, coo.col, strict=True):
        succ[row // A].add(int(col))
    seen = set(np.flatnonzero(mdp.initial > 0).tolist())
    stack = list(seen)
    while stack:
        s = stack.pop()
        for t in succ[s]:
            if t not in seen:
                seen.add(t)
                stack.append(t)
    keep = np.array(sorted(seen))
    rows = (keep[:, None] * A + np.arange(A)[None, :]).ravel()
    P = sp.csr_matrix(mdp.P[rows][:, keep])
    return keep, P, mdp.reward[keep]


def hard_optimal_actions(P, r, g, h, tol=1e-6):
    S, A = r.shape
    q = r + (P @ h).reshape(S, A)
    return q >= q.max(axis=1, keepdims=True) - tol, q


def test_7x7holes_large_beta_approaches_the_unregularised_optimum():
    mdp = tiltrl.gridworld("7x7holes")
    keep, P, r = reachable_submodel(mdp)
    g, h = hard_rvi(P, r)
    # shortest loop: 8 steps of -1 from S round the holes to G, then G (reward 0) resets
    assert g == pytest.approx(-8 / 9, abs=1e-9)
    best, _ = hard_optimal_actions(P, r, g, h)
    prev = None
    gaps = []
    for beta in (10.0, 100.0, 1000.0):
        sol = tiltrl.solve(mdp, beta)
        assert sol.converged
        # uniform prior, deterministic moves: g - log(4)/beta <= theta <= g
        assert g - math.log(4) / beta <= sol.theta <= g + 1e-12
        gaps.append(g - sol.theta)
        if prev is not None:
            assert sol.theta > prev
        prev = sol.theta
    assert gaps[-1] < 1e-3
    greedy = sol.policy[keep].argmax(axis=1)
    assert np.all(best[np.arange(keep.size), greedy])
    # the optimal process runs round hard-optimal 9-step loops (several shortest paths):
    # one visit to S and one to G per loop, never into a hole, energy -> g
    grid = "".join(mdp.info["grid"])
    mu = sol.state_distribution
    assert mu[grid.index("G")] == pytest.approx(1 / 9, abs=1e-9)
    assert mu[grid.index("S")] == pytest.approx(1 / 9, abs=1e-9)
    assert mu[[i for i, c in enumerate(grid) if c == "H"]].max() < 1e-12
    assert sol.energy == pytest.approx(g, abs=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_random_deterministic_large_beta_matches_brute_force(seed):
    rng = np.random.default_rng(100 + seed)
    S, A = int(rng.integers(2, 6)), int(rng.integers(2, 4))
    m = make_model(seed, S, A, support="deterministic", reward_scale=1.0)
    g_bf = brute_force_gain(m)
    g, h = hard_rvi(m.mdp.P, m.mdp.reward)
    assert g == pytest.approx(g_bf, abs=1e-9)
    best, q = hard_optimal_actions(m.mdp.P, m.mdp.reward, g, h)
    # beta (r_max - r_min) up to 1e4, reached along a warm-started annealing path
    path = np.geomspace(1.0, 1e4, 9) / m.spread
    prev = None
    for beta in path:
        sol = tiltrl.solve(m.mdp, float(beta), warm_start=prev)
        assert sol.converged and np.isfinite(sol.theta)
        assert np.all(np.isfinite(sol.policy))
        assert g + math.log(m.prior.min()) / beta - 1e-12 <= sol.theta <= g + 1e-12
        prev = sol
    # greedy soft action is hard-optimal wherever the hard choice is clear-cut
    gap = np.sort(q, axis=1)
    clear = (gap[:, -1] - gap[:, -2]) > 1e-2
    greedy = sol.policy.argmax(axis=1)
    assert np.all(best[np.arange(S), greedy][clear])
    # the sweep reaches the same end point
    sw = tiltrl.sweep(m.mdp, path)
    assert sw.converged.all()
    assert sw.theta[-1] == pytest.approx(sol.theta, abs=1e-10)


def test_no_overflow_along_annealing_path_on_7x7holes():
    mdp = tiltrl.gridworld("7x7holes")
    lo, hi = mdp.reward_range()
    beta_max = 1e4 / (hi - lo)
    sw = tiltrl.sweep(mdp, np.geomspace(1.0, beta_max, 12))
    assert sw.converged.all()
    assert np.all(np.isfinite(sw.theta))
    assert np.all(np.diff(sw.theta) > 0)
    assert sw.theta[-1] == pytest.approx(-8 / 9, abs=math.log(4) / beta_max)


def test_no_overflow_at_huge_beta_small_model():
    """A model whose Newton path stays unichain: beta (r_max - r_min) = 1e4 and beyond."""
    P = np.zeros((2, 2, 2))
    P[0, 0, 0] = P[0, 1, 1] = P[1, 0, 0] = P[1, 1, 1] = 1.0
    r = np.array([[1.0, 0.0], [0.0, 0.0]])
    mdp = TabularMDP(P, r)
    for beta in (1e4, 1e6):
        for dyn in ("controlled", "fixed"):
            sol = tiltrl.solve(mdp, beta, dynamics=dyn)
            assert sol.converged and np.all(np.isfinite(sol.policy))
            # stay in state 0 with prob 1/2 under the prior: theta = 1 - log(2)/beta
            assert sol.theta == pytest.approx(1 - math.log(2) / beta, abs=1e-12)
            assert np.isfinite(sol.log_rho)


def test_no_overflow_cold_start_7x7holes_beta_range_1e4():
    mdp = tiltrl.gridworld("7x7holes")
    lo, hi = mdp.reward_range()
    sol = tiltrl.solve(mdp, 1e4 / (hi - lo))
    assert sol.converged and np.isfinite(sol.theta) and np.all(np.isfinite(sol.policy))
    assert sol.theta == pytest.approx(-8 / 9, abs=1e-3)


def two_state_trap() -> TabularMDP:
    """s0: a0 -> s1 (r -1), a1 -> s1 (r -0.5), a2 -> s0 (r 3);
    s1: a0 -> s0 (r -2.5), a1 -> s1 (r -2), a2 -> s1 (r -2.5). Uniform prior."""
    P = np.zeros((2, 3, 2))
    P[0, 0, 1] = P[0, 1, 1] = P[0, 2, 0] = 1.0
    P[1, 0, 0] = P[1, 1, 1] = P[1, 2, 1] = 1.0
    r = np.array([[-1.0, -0.5, 3.0], [-2.5, -2.0, -2.5]])
    return TabularMDP(P, r)


def test_two_state_trap_reference_methods():
    mdp = two_state_trap()
    for beta in (10.0, 100.0, 300.0):
        ctrl = tiltrl.solve(mdp, beta)
        rvi = tiltrl.solve(mdp, beta, dynamics="fixed", method="rvi")
        assert ctrl.converged and rvi.converged
        assert rvi.theta == pytest.approx(ctrl.theta, abs=1e-9)
        # staying in s0 is optimal; the soft loop pays log(3)/beta per step at most
        assert 3 - math.log(3) / beta - 1e-12 <= ctrl.theta <= 3


@pytest.mark.parametrize("beta", [80.0, 100.0])
def test_fixed_newton_cold_start_two_state_trap(beta):
    mdp = two_state_trap()
    ctrl = tiltrl.solve(mdp, beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fx = tiltrl.solve(mdp, beta, dynamics="fixed")
    assert fx.converged
    assert fx.theta == pytest.approx(ctrl.theta, abs=1e-9)


# ============================================================================ §3 reducibility


def reducible_base():
    """States 0, 1, 2 communicate; state 3 is handled by each test."""
    S, A = 4, 2
    P = np.zeros((S, A, S))
    P[0, 0, 1] = 1.0
    P[0, 1, 0] = P[0, 1, 2] = 0.5
    P[1, 0, 2] = 1.0
    P[1, 1, 0] = 1.0
    P[2, 0, 0] = 1.0
    P[2, 1, 1], P[2, 1, 2] = 0.3, 0.7
    r = np.array([[-1.0, 0.5], [0.2, -0.3], [1.0, -2.0], [5.0, 5.0]])
    return P, r


def dense_theta(P, r, prior, beta):
    S, A, _ = P.shape
    B = P * np.exp(beta * r)[:, :, None]
    Q = np.einsum("sa,sat->st", prior, B)
    return math.log(np.max(np.linalg.eigvals(Q).real)) / beta


@pytest.mark.parametrize("beta", [0.5, 2.0, 8.0])
def test_unreachable_block_does_not_hijack_the_root(beta):
    P, r = reducible_base()
    P[3, :, 3] = 1.0  # absorbing, reward +5: the larger root, but never reached
    mdp = TabularMDP(P, r, initial=[1.0, 0.0, 0.0, 0.0])
    prior = mdp.prior
    reach = dense_theta(P[:3, :, :3], r[:3], prior[:3], beta)
    assert dense_theta(P, r, prior, beta) == pytest.approx(5.0)  # the hijacker
    sub = TabularMDP(P[:3, :, :3], r[:3], initial=[1.0, 0.0, 0.0])
    for dyn in ("controlled", "fixed"):
        sol = tiltrl.solve(mdp, beta, dynamics=dyn)
        assert sol.converged
        if dyn == "controlled":
            assert sol.theta == pytest.approx(reach, abs=1e-10)
        assert sol.theta == pytest.approx(tiltrl.solve(sub, beta, dynamics=dyn).theta, abs=1e-9)
        np.testing.assert_array_equal(sol.recurrent_states, [0, 1, 2])
        assert any("reachable" in n for n in sol.notes), sol.notes
        np.testing.assert_array_equal(sol.stationary[3], 0.0)
        assert sol.stationary.sum() == pytest.approx(1.0)
        assert sol.theta < 2.0


@pytest.mark.parametrize("beta", [0.5, 2.0, 8.0])
def test_reachable_transient_block_does_not_hijack_the_root(beta):
    P, r = reducible_base()
    P[3, 0, 0] = P[3, 1, 1] = 1.0  # start in 3 (reward +5), never come back
    mdp = TabularMDP(P, r, initial=[0.0, 0.0, 0.0, 1.0])
    sub = TabularMDP(P[:3, :, :3], r[:3])
    for dyn in ("controlled", "fixed"):
        sol = tiltrl.solve(mdp, beta, dynamics=dyn)
        ref = tiltrl.solve(sub, beta, dynamics=dyn)
        assert sol.converged
        assert sol.theta == pytest.approx(ref.theta, abs=1e-9)
        np.testing.assert_array_equal(sol.recurrent_states, [0, 1, 2])
        np.testing.assert_array_equal(sol.stationary[3], 0.0)
        np.testing.assert_allclose(sol.stationary[:3], ref.stationary, atol=1e-9)
        assert np.all(np.isfinite(sol.log_u[3]))  # state 3 reaches the class: u > 0
        assert sol.policy[3].sum() == pytest.approx(1.0)
    ctrl = tiltrl.solve(mdp, beta)
    assert any("reducible" in n for n in ctrl.notes), ctrl.notes
    assert ctrl.theta == pytest.approx(dense_theta(P[:3, :, :3], r[:3], mdp.prior[:3], beta))


def test_reachable_better_class_is_the_answer():
    P, r = reducible_base()
    P[0, 1] = [0.25, 0.0, 0.5, 0.25]  # leak from 0 into the absorbing +5 state
    P[3, :, 3] = 1.0
    mdp = TabularMDP(P, r, initial=[1.0, 0.0, 0.0, 0.0])
    for dyn in ("controlled", "fixed"):
        sol = tiltrl.solve(mdp, 2.0, dynamics=dyn)
        assert sol.theta == pytest.approx(5.0, abs=1e-10)
        np.testing.assert_array_equal(sol.recurrent_states, [3])
        assert sol.stationary[3].sum() == pytest.approx(1.0)


def test_fixed_dynamics_refuses_multichain():
    P, r = reducible_base()
    P[1, 1] = [0.0, 0.0, 0.0, 1.0]  # 1 -> 3 possible
    P[3, :, 3] = 1.0
    P[2, 0] = [0.0, 0.0, 1.0, 0.0]
    P[2, 1] = [0.0, 0.0, 1.0, 0.0]  # 2 absorbing too
    mdp = TabularMDP(P, r, initial=[1.0, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="closed classes"):
        tiltrl.solve(mdp, 1.0, dynamics="fixed")
    # the controlled problem picks the best reachable class
    assert tiltrl.solve(mdp, 1.0).theta == pytest.approx(5.0)


# ============================================================================ zigzag


def test_9x9zigzag_large_beta():
    mdp = tiltrl.gridworld("9x9zigzag")
    keep, P, r = reachable_submodel(mdp)
    g, _ = hard_rvi(P, r)
    # 20 moves from S to G round both walls, then one step on G (reward 0)
    assert g == pytest.approx(-20 / 21, abs=1e-9)
    thetas = []
    for beta in (50.0, 100.0, 400.0, 1000.0):
        sol = tiltrl.solve(mdp, beta)
        assert sol.converged, beta
        assert sol.residual < 1e-10
        assert g - math.log(4) / beta <= sol.theta <= g
        # wall cells are unreachable closed classes: ignored, u = 0 there
        assert sol.recurrent_states.size < 81 and 0 < keep.size < 81
        walls = np.array([c == "W" for row in mdp.info["grid"] for c in row])
        assert np.all(np.isneginf(sol.log_u[walls]))
        thetas.append(sol.theta)
    assert np.all(np.diff(thetas) > 0)


def test_sweep_9x9zigzag_twenty_betas():
    mdp = tiltrl.gridworld("9x9zigzag")
    bs = np.geomspace(0.5, 1000.0, 20)
    sw = tiltrl.sweep(mdp, bs)
    assert sw.converged.all()
    assert np.all(np.diff(sw.theta) > 0)
    np.testing.assert_allclose(sw.log_rho, bs * sw.theta)
    np.testing.assert_allclose(
        sw.theta, sw.energy - (sw.policy_kl + sw.dynamics_kl) / bs, atol=1e-9
    )
    for b in (bs[3], bs[12], bs[19]):
        i = int(np.flatnonzero(bs == b)[0])
        assert sw.theta[i] == pytest.approx(tiltrl.solve(mdp, float(b)).theta, abs=1e-10)


# ============================================================================ sweep


@pytest.mark.parametrize("dynamics", ["controlled", "fixed"])
def test_sweep_equals_independent_solves(dynamics):
    m = make_model(5, 6, 3, support="sparse", per_transition=True)
    bs = [5.0, 0.5, 20.0, 2.0, 10.0]  # unsorted on purpose: reported in the given order
    sw = tiltrl.sweep(m.mdp, bs, dynamics=dynamics)
    assert isinstance(sw, Sweep)
    assert sw.dynamics == dynamics
    np.testing.assert_array_equal(sw.betas, bs)
    assert sw.converged.all() and np.all(sw.iterations >= 1)
    for i, b in enumerate(bs):
        sol = tiltrl.solve(m.mdp, b, dynamics=dynamics)
        assert sw.theta[i] == pytest.approx(sol.theta, abs=1e-9)
        assert sw.energy[i] == pytest.approx(sol.energy, abs=1e-8)
        assert sw.policy_kl[i] == pytest.approx(sol.policy_kl, abs=1e-8)
        assert sw.dynamics_kl[i] == pytest.approx(sol.dynamics_kl, abs=1e-8)
    rows = sw.rows()
    assert [row["beta"] for row in rows] == bs
    np.testing.assert_allclose(sw.entropy_production, sw.policy_kl + sw.dynamics_kl)


def test_warm_start_gives_the_cold_answer():
    m = make_model(9, 7, 3, support="full", per_transition=True)
    prev = tiltrl.solve(m.mdp, 3.0)
    warm = tiltrl.solve(m.mdp, 6.0, warm_start=prev)
    cold = tiltrl.solve(m.mdp, 6.0)
    assert warm.theta == pytest.approx(cold.theta, abs=1e-11)
    np.testing.assert_allclose(warm.policy, cold.policy, atol=1e-10)
    np.testing.assert_allclose(warm.log_u, cold.log_u, atol=1e-8)


# ============================================================================ discounted


def soft_v(q: np.ndarray, prior: np.ndarray, beta: float) -> np.ndarray:
    return logsumexp(np.log(prior) + beta * q, axis=1) / beta


def backup_fixed(m: Model, v: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    return (m.P * m.R).sum(axis=2) + gamma * np.einsum("sat,t->sa", m.P, v)


def backup_controlled(m: Model, v: np.ndarray, beta: float, gamma: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        z = np.log(m.P) + beta * (m.R + gamma * v[None, None, :])
    return logsumexp(z, axis=2) / beta


@given(models(max_S=6, max_A=3), st.floats(0.1, 10.0), st.sampled_from([0.0, 0.5, 0.9]))
def test_discounted_newton_vi_and_bellman(m, beta, gamma):
    # tol is beta * max|T V - V|; VI is then within tol / (beta (1 - gamma)) of V*
    tol = 1e-12
    for dyn, backup in (("fixed", backup_fixed), ("controlled", backup_controlled)):
        a = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics=dyn, tol=tol)
        b = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics=dyn, method="vi", tol=tol)
        assert a.converged and b.converged
        assert a.residual < tol and b.residual < tol
        assert a.kind == "discounted" and a.gamma == gamma and a.dynamics == dyn
        np.testing.assert_allclose(a.v, b.v, rtol=0, atol=1e-8)
        np.testing.assert_allclose(a.q, b.q, rtol=0, atol=1e-8)
        # soft Bellman equation, evaluated here
        scale = 1.0 + np.abs(a.q).max()
        np.testing.assert_allclose(
            a.q, backup(m, a.v, beta, gamma), rtol=0, atol=tol / beta + 1e-14 * scale
        )
        np.testing.assert_allclose(a.v, soft_v(a.q, m.prior, beta), rtol=0, atol=1e-14 * scale)
        np.testing.assert_allclose(
            a.policy, m.prior * np.exp(beta * (a.q - a.v[:, None])), rtol=0, atol=1e-10
        )
    # default dynamics for gamma is "fixed"
    assert tiltrl.solve(m.mdp, beta, gamma=gamma).dynamics == "fixed"


@given(models(max_S=6, max_A=3), st.floats(0.1, 10.0))
def test_discounted_controlled_vs_fixed(m, beta):
    gamma = 0.9
    fx = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics="fixed")
    ct = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics="controlled")
    # log E exp >= E: the controlled (log-E-exp) values dominate
    assert np.all(ct.q >= fx.q - 1e-10)
    assert np.all(ct.v >= fx.v - 1e-10)
    # ...and coincide exactly where every p(.|s,a) is a point mass
    point = np.count_nonzero(m.P, axis=2) == 1
    if point.all():
        np.testing.assert_allclose(ct.q, fx.q, atol=1e-9)


def test_discounted_controlled_strictly_above_fixed_for_stochastic_dynamics():
    m = make_model(13, 4, 2, support="full", per_transition=True)
    fx = tiltrl.solve(m.mdp, 2.0, gamma=0.9, dynamics="fixed")
    ct = tiltrl.solve(m.mdp, 2.0, gamma=0.9, dynamics="controlled")
    assert np.all(ct.v - fx.v > 1e-2)
    # one-step check of the gap: log E exp(beta X) - beta E X > 0 for non-constant X
    assert np.all(backup_controlled(m, fx.v, 2.0, 0.9) > backup_fixed(m, fx.v, 2.0, 0.9))


@given(models(supports=("deterministic",), max_S=6, max_A=3), st.floats(0.1, 10.0))
def test_discounted_controlled_equals_fixed_for_deterministic_dynamics(m, beta):
    for gamma in (0.5, 0.9):
        fx = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics="fixed")
        ct = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics="controlled")
        np.testing.assert_allclose(ct.q, fx.q, rtol=0, atol=1e-9)
        np.testing.assert_allclose(ct.policy, fx.policy, rtol=0, atol=1e-9)


@given(models(max_S=6, max_A=3), st.floats(0.1, 10.0), st.integers(0, 2**31))
def test_discounted_soft_bellman_bounds(m, beta, seed):
    """DESIGN.md §5: TQ + gamma min(D)/(1-gamma) <= Q* <= TQ + gamma max(D)/(1-gamma)."""
    gamma = 0.9
    star = tiltrl.solve(m.mdp, beta, gamma=gamma, dynamics="fixed").q
    Q = np.random.default_rng(seed).normal(scale=5.0, size=star.shape)
    TQ = backup_fixed(m, soft_v(Q, m.prior, beta), beta, gamma)
    D = TQ - Q
    lb = TQ + gamma * D.min() / (1 - gamma)
    ub = TQ + gamma * D.max() / (1 - gamma)
    assert np.all(lb <= star + 1e-9) and np.all(star <= ub + 1e-9)


def test_discounted_fixed_uses_only_the_mean_of_r_sas():
    m = make_model(12, 5, 3, support="full", per_transition=True)
    mean = TabularMDP(m.P, (m.P * m.R).sum(axis=2), m.prior, m.initial)
    a = tiltrl.solve(m.mdp, 3.0, gamma=0.9)
    b = tiltrl.solve(mean, 3.0, gamma=0.9)
    np.testing.assert_allclose(a.q, b.q, atol=1e-12)


# ============================================================================ finite horizon


@pytest.mark.parametrize("per_transition", [False, True])
def test_horizon_one_closed_form(per_transition):
    m = make_model(21, 5, 3, support="sparse", per_transition=per_transition)
    beta = 2.5
    log_pi0 = np.log(m.prior)
    # fixed: Q_0 = r(s,a), theta = E_init[V_0]
    fx = tiltrl.solve(m.mdp, beta, horizon=1)
    assert fx.kind == "finite" and fx.dynamics == "fixed" and fx.horizon == 1
    rbar = (m.P * m.R).sum(axis=2)
    v0 = logsumexp(log_pi0 + beta * rbar, axis=1) / beta
    np.testing.assert_allclose(fx.q[0], rbar, atol=1e-13)
    np.testing.assert_allclose(fx.v[0], v0, atol=1e-13)
    np.testing.assert_array_equal(fx.v[1], 0.0)
    assert fx.theta == pytest.approx(float(m.initial @ v0), abs=1e-13)
    np.testing.assert_allclose(fx.policy[0], np.exp(log_pi0 + beta * (rbar - v0[:, None])))
    # controlled: Q_0 = (1/beta) log E_p exp(beta r), theta = (1/beta) log E_init exp(beta V_0)
    ct = tiltrl.solve(m.mdp, beta, horizon=1, dynamics="controlled")
    with np.errstate(divide="ignore"):
        q0 = logsumexp(np.log(m.P) + beta * m.R, axis=2) / beta
    v0c = logsumexp(log_pi0 + beta * q0, axis=1) / beta
    np.testing.assert_allclose(ct.q[0], q0, atol=1e-13)
    assert ct.theta == pytest.approx(logsumexp(np.log(m.initial) + beta * v0c) / beta, abs=1e-13)
    # the one-step SCGF: log E_{s~init, a~pi0, s'~p}[exp(beta r)]
    direct = np.einsum("s,sa,sat->", m.initial, m.prior, m.P * np.exp(beta * m.R))
    assert ct.theta == pytest.approx(math.log(direct) / beta, abs=1e-12)


def test_finite_horizon_controlled_converges_like_one_over_n():
    m = make_model(31, 5, 3, support="full", per_transition=True)
    beta = 1.5
    theta = tiltrl.solve(m.mdp, beta).theta
    # theta_N = (1/(beta N)) log(init Q^N 1) = theta + c/N + O(lambda2^N),
    # c = (1/beta) log((init . chi)(nu . 1)), nu chi = 1 (dense state matrix here)
    Qs = state_matrix(m, beta, 0.0)
    rho, chi, nu = perron(Qs)
    c = math.log((m.initial @ chi) * nu.sum()) / beta
    assert theta == pytest.approx(math.log(rho) / beta, abs=1e-12)
    for N in (25, 100, 400):
        sol = tiltrl.solve(m.mdp, beta, horizon=N, dynamics="controlled")
        assert sol.q.shape == (N, m.S, m.A) and sol.v.shape == (N + 1, m.S)
        assert sol.policy.shape == (N, m.S, m.A)
        assert N * (sol.theta - theta) == pytest.approx(c, abs=1e-7)
        assert abs(sol.theta - theta) <= (abs(c) + 1e-6) / N


def test_finite_horizon_fixed_approaches_the_average_optimum():
    m = make_model(32, 5, 3, support="full")
    beta = 1.5
    theta = tiltrl.solve(m.mdp, beta, dynamics="fixed").theta
    errs = {}
    for N in (50, 100, 200, 400):
        errs[N] = tiltrl.solve(m.mdp, beta, horizon=N).theta - theta
    # V_0 = N theta + h + o(1): N (theta_N - theta) converges
    assert abs(400 * errs[400] - 200 * errs[200]) < 1e-7
    assert abs(errs[400]) < abs(errs[50])
    assert abs(errs[400]) <= (abs(400 * errs[400]) + 1e-9) / 400


def test_finite_horizon_controlled_equals_fixed_for_deterministic_dynamics():
    mdp = tiltrl.gridworld("7x7holes")
    a = tiltrl.solve(mdp, 3.0, horizon=30, dynamics="controlled")
    b = tiltrl.solve(mdp, 3.0, horizon=30, dynamics="fixed")
    np.testing.assert_allclose(a.q, b.q, atol=1e-10)
    np.testing.assert_allclose(a.policy, b.policy, atol=1e-10)


# ============================================================================ JSON


def assert_solutions_identical(a: Solution, b: Solution) -> None:
    for name in a.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray):
            assert isinstance(y, np.ndarray), name
            assert x.dtype == y.dtype and x.shape == y.shape, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        elif sp.issparse(x):
            assert sp.issparse(y) and x.shape == y.shape, name
            for part in ("data", "indices", "indptr"):
                np.testing.assert_array_equal(getattr(x, part), getattr(y, part), err_msg=name)
        elif isinstance(x, float) and math.isnan(x):
            assert isinstance(y, float) and math.isnan(y), name
        elif isinstance(x, tuple):
            assert isinstance(y, tuple) and len(x) == len(y), name
            for xi, yi in zip(x, y, strict=True):
                assert (xi == yi) or (math.isnan(xi) and math.isnan(yi)), name
        else:
            assert x == y and type(x) is type(y), (name, x, y)


def json_cases():
    zig = tiltrl.gridworld("9x9zigzag")
    m = make_model(41, 4, 3, support="sparse", per_transition=True)
    return {
        "controlled-reducible": tiltrl.solve(zig, 20.0),
        "fixed-reducible": tiltrl.solve(zig, 20.0, dynamics="fixed"),
        "controlled": tiltrl.solve(m.mdp, 2.0),
        "discounted": tiltrl.solve(m.mdp, 2.0, gamma=0.9, dynamics="controlled"),
        "finite": tiltrl.solve(m.mdp, 2.0, horizon=4, gamma=0.95),
    }


@pytest.mark.parametrize("case", list(json_cases()))
def test_solution_json_round_trip(case, tmp_path):
    sol = json_cases()[case]
    if case.endswith("reducible"):
        # the non-finite entries are what a naive encoder loses
        assert np.isneginf(sol.log_u).any() and np.isneginf(sol.log_left).any()
    text = sol.to_json()
    raw = json.loads(text)  # valid, strict JSON
    assert raw["type"] == "Solution"
    assert_solutions_identical(sol, Solution.from_json(text))
    path = tmp_path / f"{case}.json"
    assert sol.to_json(path) == text
    assert path.read_text() == text
    assert_solutions_identical(sol, Solution.from_json(path))
    assert_solutions_identical(sol, Solution.from_json(str(path)))


def test_solution_json_is_strict_json():
    sol = json_cases()["controlled-reducible"]
    json.loads(sol.to_json(), parse_constant=lambda c: pytest.fail(f"non-standard {c}"))


def test_sweep_json_round_trip(tmp_path):
    sw = tiltrl.sweep(tiltrl.gridworld("7x7holes"), [1.0, 3.0, 10.0], dynamics="fixed")
    for back in (Sweep.from_json(sw.to_json()), Sweep.from_json(sw.to_json(tmp_path / "s.json"))):
        for name in (
            "betas",
            "theta",
            "energy",
            "policy_kl",
            "dynamics_kl",
            "iterations",
            "converged",
        ):
            x, y = getattr(sw, name), getattr(back, name)
            assert x.dtype == y.dtype, name
            np.testing.assert_array_equal(x, y, err_msg=name)
        assert back.dynamics == "fixed"
    assert Path(tmp_path / "s.json").exists()


# ============================================================================ periodicity


def _cycle_mdp(k: int, leak: float, seed: int = 0) -> tuple[TabularMDP, np.ndarray]:
    """One action, a deterministic k-cycle; with ``leak`` > 0 each state also stays put."""
    rng = np.random.default_rng(seed)
    P = np.zeros((k, 1, k))
    for s in range(k):
        P[s, 0, (s + 1) % k] = 1.0 - leak
        P[s, 0, s] += leak
    r = rng.uniform(-2.0, 1.0, size=(k, 1))
    return TabularMDP(P, r), r.ravel()


@pytest.mark.parametrize("k", [2, 3, 7])
@pytest.mark.parametrize("beta", [0.5, 10.0, 1000.0])
def test_exactly_periodic_chain_converges(k, beta):
    """|lambda_2| = rho on a pure cycle: power iteration cannot converge, Newton must.

    With one action and deterministic moves both optima equal the cycle's mean reward and
    the stationary law is uniform."""
    mdp, r = _cycle_mdp(k, 0.0)
    for dynamics in ("controlled", "fixed"):
        sol = tiltrl.solve(mdp, beta, dynamics=dynamics)
        assert sol.converged
        assert sol.theta == pytest.approx(r.mean(), abs=1e-10)
        np.testing.assert_allclose(sol.state_distribution, np.full(k, 1.0 / k), atol=1e-12)


def test_nearly_periodic_chain_converges_and_matches_dense():
    """A 5-cycle that stays put with probability 1e-6: |lambda_2|/rho ~ 1 - 1e-6 or so."""
    mdp, _ = _cycle_mdp(5, 1e-6, seed=3)
    beta = 2.0
    sol = tiltrl.solve(mdp, beta)
    assert sol.converged
    Q = mdp.dense_transitions()[:, 0, :] * np.exp(beta * mdp.reward[:, 0])[:, None]
    rho = np.max(np.linalg.eigvals(Q).real)
    assert sol.log_rho == pytest.approx(math.log(rho), rel=1e-10)


def test_power_method_on_periodic_chain_reports_non_convergence():
    """The log-space power method cannot converge on an exact cycle with unequal rewards:
    it must say so (converged=False, a ConvergenceWarning) and bracket theta correctly."""
    mdp, r = _cycle_mdp(4, 0.0, seed=1)
    with pytest.warns(ConvergenceWarning):
        sol = tiltrl.solve(mdp, 1.0, method="power", max_iter=500)
    assert not sol.converged
    lo, hi = sol.bracket
    assert lo - 1e-12 <= r.mean() <= hi + 1e-12


def test_controlled_noda_fallback_matches_newton(monkeypatch: pytest.MonkeyPatch) -> None:
    """When Newton fails, Noda iteration must give the same solution."""
    import tiltrl.exact.average as average

    mdp = tiltrl.gridworld("7x7holes", slippery=1)
    ref = tiltrl.solve(mdp, 5.0)
    real = average.newton_average

    def failing(*args: Any, **kwargs: Any) -> Any:
        kwargs["max_iter"] = 1
        return real(*args, **kwargs)

    monkeypatch.setattr(average, "newton_average", failing)
    sol = tiltrl.solve(mdp, 5.0)
    assert sol.converged
    assert any("Noda" in note for note in sol.notes)
    assert sol.theta == pytest.approx(ref.theta, abs=1e-10)
    np.testing.assert_allclose(sol.policy, ref.policy, atol=1e-8)
    np.testing.assert_allclose(sol.stationary, ref.stationary, atol=1e-8)


def _tilted_residual(mdp: TabularMDP, sol: Any, beta: float) -> float:
    """max over pairs with u > 0 of |(M u)(s,a) / (rho u(s,a)) - 1|, computed from the
    definition ``(M u)(s,a) = exp(beta r(s,a)) sum_s' p(s'|s,a) sum_a' pi0(a'|s') u(s',a')``
    in log space (no solver code involved)."""
    from scipy.special import logsumexp

    S, A = mdp.shape
    log_u = sol.log_u
    log_chi = logsumexp(log_u + np.log(mdp.prior), axis=1)  # -inf where u = 0
    top = log_chi[np.isfinite(log_chi)].max()
    Pchi = mdp.P @ np.exp(log_chi - top)  # (S*A,)
    with np.errstate(divide="ignore"):
        log_Mu = beta * mdp.reward.reshape(-1) + np.log(Pchi) + top
    on = np.isfinite(log_u.reshape(-1))
    return float(np.max(np.abs(np.expm1(log_Mu[on] - sol.log_rho - log_u.reshape(-1)[on]))))


@pytest.mark.parametrize("n", [30, 50])
def test_scattered_resetting_holes_fall_back_to_noda(n):
    """Regression: large grids with 20% resetting holes at beta=10. The Perron vector is
    tame (log u spans < 90) but soft policy iteration from h = 0 meets a nearly multichain
    second policy whose relative values are ~1e4; every later soft-greedy kernel
    underflowed. Newton took 145 steps on 30 x 30, never converged on 70 x 70 and crashed
    SuperLU on 120 x 120. Now Newton stops after three overflowing steps and Noda
    iteration solves it. 30 x 30 against dense diagonalisation; 50 x 50 (the bordered LU
    and the dissection ordering) against the eigen-equation itself."""
    mdp = tiltrl.large_grid(n, n, hole_fraction=0.2)
    sol = tiltrl.solve(mdp, 10.0)
    assert sol.converged
    assert any("Noda" in note for note in sol.notes)
    assert sol.iterations < 80
    assert _tilted_residual(mdp, sol, 10.0) < 1e-8
    if n == 30:
        P = mdp.dense_transitions()
        S = mdp.n_states
        Q = np.einsum("sa,sat->st", mdp.prior, P * np.exp(10.0 * mdp.reward)[:, :, None])
        reach = np.flatnonzero(sol.v > -np.inf) if sol.v is not None else np.arange(S)
        dense = math.log(np.max(np.linalg.eigvals(Q[np.ix_(reach, reach)]).real)) / 10.0
        assert sol.theta == pytest.approx(dense, abs=1e-11)


def test_progress_reports_the_noda_steps_too(capsys):
    """A solve handed to Noda keeps reporting: one line per step, numbered on from
    Newton's."""
    mdp = tiltrl.large_grid(30, 30, hole_fraction=0.2)
    sol = tiltrl.solve(mdp, 10.0, progress=True)
    lines = [ln for ln in capsys.readouterr().err.splitlines() if " step " in ln]
    steps = [int(ln.split(" step ")[1].split()[0]) for ln in lines]
    assert len(lines) >= sol.iterations - 1
    assert steps == sorted(steps) and steps[-1] >= sol.iterations - 1
