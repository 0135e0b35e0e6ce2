"""Exact large deviations of Markov chains and jump processes (``tiltrl.ld``), and the
RL <-> statistical-mechanics dictionary.

Every reference value here is computed independently of the code under test: closed
forms (two-state chain, ring current, i.i.d. sums, two-state jump process), dense
eigenvalues of the tilted matrix restricted to the states reachable from the initial law,
central finite differences of ``Lambda``, brute-force path sums, and the exact RL solver
(``tiltrl.solve``) for the dictionary. Random chains come from hypothesis with the
project's derandomised profile, so every number is reproducible.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.linalg
import scipy.sparse as sp
from hypothesis import assume, given
from hypothesis import strategies as st

import tiltrl
from tiltrl import TabularMDP
from tiltrl.exact.tilted import tilted_operator
from tiltrl.ld import (
    JumpProcess,
    MarkovChain,
    from_mdp,
    legendre_fenchel,
    rate_function,
    scgf,
    scgf_curve,
    simulate_energy,
    tilted,
    to_mdp,
)
from tiltrl.ld.examples import ring, ring_current, ring_scgf, two_state

# ============================================================================ references


def dense(M: object) -> np.ndarray:
    return np.asarray(M.toarray() if sp.issparse(M) else M, dtype=np.float64)  # type: ignore[attr-defined]


def transition_matrix(F: object, S: int) -> np.ndarray:
    """An observable as a dense ``(S, S)`` array (state observables at the departure)."""
    arr = dense(F)
    return np.repeat(arr[:, None], S, axis=1) if arr.ndim == 1 else arr


def reachable(adj: np.ndarray, initial: np.ndarray) -> np.ndarray:
    """States reachable from the support of ``initial`` (plain graph search)."""
    seen = set(np.flatnonzero(initial > 0).tolist())
    stack = list(seen)
    while stack:
        x = stack.pop()
        for y in np.flatnonzero(adj[x] > 0).tolist():
            if y not in seen:
                seen.add(y)
                stack.append(y)
    return np.array(sorted(seen))


def dense_chain_scgf(P: np.ndarray, F: np.ndarray, k: float, initial: np.ndarray) -> float:
    """log of the largest real eigenvalue of ``P e^{k F}`` on the reachable states."""
    keep = reachable(P, initial)
    Pk = (P * np.exp(k * F))[np.ix_(keep, keep)]
    return float(np.log(np.linalg.eigvals(Pk).real.max()))


def dense_generator(W: np.ndarray, G: np.ndarray, H: np.ndarray, k: float) -> np.ndarray:
    """Tilted generator ``W e^{k g}`` off the diagonal, ``-escape + k h`` on it."""
    off = W * np.exp(k * G)
    np.fill_diagonal(off, 0.0)
    W0 = W.copy()
    np.fill_diagonal(W0, 0.0)
    return off + np.diag(-W0.sum(axis=1) + k * H)


def dense_jump_scgf(W: np.ndarray, G: np.ndarray, H: np.ndarray, k: float,
                    initial: np.ndarray) -> float:
    keep = reachable(W, initial)
    L = dense_generator(W, G, H, k)[np.ix_(keep, keep)]
    return float(scipy.linalg.eigvals(L).real.max())


def fd_first(fun: Callable[[float], float], k: float, h: float = 1e-2) -> float:
    """Five-point central difference (error ~ h^4 f^(5) / 30)."""
    return (-fun(k + 2 * h) + 8 * fun(k + h) - 8 * fun(k - h) + fun(k - 2 * h)) / (12 * h)


def fd_second(fun: Callable[[float], float], k: float, h: float = 1e-2) -> float:
    """Five-point central second difference (error ~ h^4 f^(6) / 90)."""
    return (
        -fun(k + 2 * h) + 16 * fun(k + h) - 30 * fun(k) + 16 * fun(k - h) - fun(k - 2 * h)
    ) / (12 * h * h)


def ring_rate(a: float, p: float, q: float) -> float:
    """Closed-form rate function of the ring current: ``k* a - Lambda(k*)`` with
    ``z = e^{k*}`` the positive root of ``p(1-a) z^2 - a r z - q(1+a) = 0``."""
    r = 1.0 - p - q
    z = (a * r + math.sqrt(a * a * r * r + 4 * p * q * (1 - a) * (1 + a))) / (2 * p * (1 - a))
    k = math.log(z)
    return float(k * a - ring_scgf(k, p, q))


# ============================================================================ random models


@dataclass
class Chain:
    P: np.ndarray
    F: np.ndarray  # (S, S) dense observable
    f: object  # the observable as passed to the library (state, dense, or sparse)
    initial: np.ndarray
    kind: str

    @property
    def chain(self) -> MarkovChain:
        P = sp.csr_matrix(self.P) if self.kind != "dense" else self.P
        return MarkovChain(P, self.initial)


def _random_chain(seed: int, S: int, kind: str, obs: str, subset: bool) -> Chain:
    rng = np.random.default_rng(seed)
    if kind == "dense":
        P = rng.random((S, S)) + 0.05
    elif kind == "sparse":
        # a cycle through every state (irreducible) plus a few random extra moves
        P = np.zeros((S, S))
        P[np.arange(S), (np.arange(S) + 1) % S] = rng.random(S) + 0.1
        extra = rng.random((S, S)) < 0.25
        P[extra] = rng.random(int(extra.sum())) + 0.1
    else:
        # two closed classes A and B, transient states T (with self-loops) feeding both
        nA = max(1, S // 3)
        nB = max(1, S // 3)
        A_, B_, T_ = np.arange(nA), np.arange(nA, nA + nB), np.arange(nA + nB, S)
        P = np.zeros((S, S))
        P[np.ix_(A_, A_)] = rng.random((nA, nA)) * (rng.random((nA, nA)) < 0.7)
        P[np.ix_(B_, B_)] = rng.random((nB, nB)) * (rng.random((nB, nB)) < 0.7)
        for blk in (A_, B_):  # a cycle inside each block keeps it a single class
            P[blk, np.roll(blk, -1)] += 0.2
        if T_.size:
            P[np.ix_(T_, np.arange(S))] = rng.random((T_.size, S)) * (
                rng.random((T_.size, S)) < 0.5
            )
            P[T_, T_] += 0.3  # transient self-loops: a transient class can carry growth
            P[T_, rng.integers(0, nA + nB, T_.size)] += 0.1  # and leaks to a closed class
    P /= P.sum(axis=1, keepdims=True)
    if obs == "state":
        g = rng.uniform(-1, 1, S)
        F, f = np.repeat(g[:, None], S, axis=1), g
    else:
        F = rng.uniform(-1, 1, (S, S))
        f = sp.csr_matrix(F * (P > 0)) if obs == "sparse" else F
    initial = np.zeros(S)
    if subset:
        sub = rng.choice(S, size=max(1, S // 2), replace=False)
        initial[sub] = rng.random(sub.size) + 0.1
    else:
        initial[:] = rng.random(S) + 0.1
    initial /= initial.sum()
    return Chain(P, F, f, initial, kind)


@st.composite
def chains(draw: st.DrawFn) -> Chain:
    return _random_chain(
        draw(st.integers(0, 2**31 - 1)),
        draw(st.integers(2, 8)),
        draw(st.sampled_from(["dense", "sparse", "reducible"])),
        draw(st.sampled_from(["state", "dense", "sparse"])),
        draw(st.booleans()),
    )


ks = st.floats(-3.0, 3.0, allow_nan=False)


# ============================================================================ closed forms


def _largest_root_2x2(M: np.ndarray) -> float:
    tr = M[0, 0] + M[1, 1]
    det = M[0, 0] * M[1, 1] - M[0, 1] * M[1, 0]
    return tr / 2 + math.sqrt(tr * tr / 4 - det)


@pytest.mark.parametrize("a, b", [(0.3, 0.6), (0.05, 0.9), (0.5, 0.5), (1.0, 0.2)])
@pytest.mark.parametrize("k", [-2.5, -0.7, 0.0, 0.4, 3.0])
def test_two_state_closed_form(a: float, b: float, k: float) -> None:
    """Counting 0->1 moves and the occupation of state 1: 2x2 eigenvalue closed forms."""
    chain = two_state(a, b)
    count = np.array([[0.0, 1.0], [0.0, 0.0]])
    # P_k = [[1-a, a e^k], [b, 1-b]]
    lam_count = math.log(_largest_root_2x2(np.array([[1 - a, a * math.exp(k)], [b, 1 - b]])))
    # state observable f = (0, 1) counted at departure: row 1 multiplied by e^k
    lam_state = math.log(
        _largest_root_2x2(np.array([[1 - a, a], [b * math.exp(k), (1 - b) * math.exp(k)]]))
    )
    assert scgf(chain, count, k) == pytest.approx(lam_count, abs=1e-12)
    assert scgf(chain, np.array([0.0, 1.0]), k) == pytest.approx(lam_state, abs=1e-12)
    if k == 0.0:
        assert scgf(chain, count, 0.0) == pytest.approx(0.0, abs=1e-14)
        # typical values: flux a b / (a + b) and occupation a / (a + b)
        assert tilted(chain, count, 0.0).mean == pytest.approx(a * b / (a + b), abs=1e-12)
        assert tilted(chain, [0.0, 1.0], 0.0).mean == pytest.approx(a / (a + b), abs=1e-12)


@pytest.mark.parametrize("n", [3, 4, 7, 20])
@pytest.mark.parametrize("p, q", [(0.4, 0.1), (0.25, 0.25), (0.7, 0.3), (0.05, 0.6)])
def test_ring_current_closed_form(n: int, p: float, q: float) -> None:
    """``Lambda(k) = log(p e^k + q e^-k + 1 - p - q)`` for k of both signs; 0 at k = 0."""
    kk = np.array([-4.0, -1.3, -0.2, 0.0, 0.1, 0.9, 2.5, 6.0])
    got = scgf(ring(n, p, q), ring_current(n), kk)
    assert got.shape == kk.shape
    np.testing.assert_allclose(got, ring_scgf(kk, p, q), rtol=1e-12, atol=1e-13)
    assert got[kk == 0.0][0] == pytest.approx(0.0, abs=1e-14)
    # scalar in, float out
    assert isinstance(scgf(ring(n, p, q), ring_current(n), 0.5), float)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_iid_sums(seed: int) -> None:
    """All rows equal: ``Lambda(k) = log E_w[e^{k g}]`` for g read at the arrival (a
    transition observable) or at the departure (a state observable)."""
    rng = np.random.default_rng(seed)
    S = 5
    w = rng.random(S) + 0.05
    w /= w.sum()
    g = rng.normal(size=S)
    chain = MarkovChain(np.tile(w, (S, 1)))
    arrival = np.tile(g, (S, 1))  # f(x, y) = g(y)
    for k in (-2.0, -0.3, 0.0, 0.8, 3.0):
        exact = math.log(float(np.sum(w * np.exp(k * g))))
        assert scgf(chain, arrival, k) == pytest.approx(exact, abs=1e-12)
        assert scgf(chain, g, k) == pytest.approx(exact, abs=1e-12)
        t = tilted(chain, g, k)
        wk = w * np.exp(k * g) / np.sum(w * np.exp(k * g))
        mean = float(np.sum(wk * g))
        # i.i.d. increments under the tilted law: Lambda' and Lambda'' are its moments
        assert t.mean == pytest.approx(mean, abs=1e-11)
        assert t.variance == pytest.approx(float(np.sum(wk * (g - mean) ** 2)), abs=1e-10)


@pytest.mark.parametrize("a, b", [(1.0, 2.0), (0.3, 5.0), (2.0, 2.0)])
@pytest.mark.parametrize("k", [-2.0, -0.5, 0.0, 0.7, 1.5])
def test_continuous_two_state_closed_form(a: float, b: float, k: float) -> None:
    """Largest eigenvalue of the 2x2 tilted generator, jumps counted and time in state 1."""
    proc = JumpProcess(np.array([[0.0, a], [b, 0.0]]))
    # every jump counted: [[-a, a e^k], [b e^k, -b]]
    jumps = (-(a + b) + math.sqrt((a - b) ** 2 + 4 * a * b * math.exp(2 * k))) / 2
    assert scgf(proc, np.ones((2, 2)), k) == pytest.approx(jumps, abs=1e-11)
    # only 0 -> 1 counted: [[-a, a e^k], [b, -b]]
    up = (-(a + b) + math.sqrt((a - b) ** 2 + 4 * a * b * math.exp(k))) / 2
    assert scgf(proc, np.array([[0.0, 1.0], [0.0, 0.0]]), k) == pytest.approx(up, abs=1e-11)
    # time spent in state 1: [[-a, a], [b, -b + k]]
    occ = _largest_root_2x2(np.array([[-a, a], [b, -b + k]]))
    assert scgf(proc, np.array([0.0, 1.0]), k) == pytest.approx(occ, abs=1e-11)
    # both at once, as a (g, h) pair: [[-a, a e^k], [b e^k, -b + k]]
    both = _largest_root_2x2(np.array([[-a, a * math.exp(k)], [b * math.exp(k), -b + k]]))
    pair = (np.ones((2, 2)), np.array([0.0, 1.0]))
    assert scgf(proc, pair, k) == pytest.approx(both, abs=1e-11)
    if k == 0.0:
        # typical jump rate 2ab/(a+b) and occupation a/(a+b)
        assert tilted(proc, np.ones((2, 2)), 0.0).mean == pytest.approx(2 * a * b / (a + b))
        assert tilted(proc, np.array([0.0, 1.0]), 0.0).mean == pytest.approx(a / (a + b))


# ============================================================================ random chains


@given(chains(), ks)
def test_scgf_matches_dense_reachable_eigenvalue(c: Chain, k: float) -> None:
    """``Lambda(k)`` = log of the largest real eigenvalue of ``P e^{kF}`` restricted to the
    states reachable from the initial law (max over the reachable classes)."""
    exact = dense_chain_scgf(c.P, c.F, k, c.initial)
    assert scgf(c.chain, c.f, k) == pytest.approx(exact, abs=1e-10 * max(1.0, abs(exact)))


@given(chains(), ks)
def test_derivatives_match_finite_differences(c: Chain, k: float) -> None:
    """``mean`` = Lambda', ``variance`` = Lambda'' (eigenvector formulas) against five-point
    central differences of ``scgf``, away from any kink (same dominant class on the stencil)."""
    chain = c.chain
    h = 1e-2
    stencil = k + h * np.arange(-2, 3)
    curve = scgf_curve(chain, c.f, stencil)
    assume(np.all(curve.dominant_class == curve.dominant_class[0]))
    # the runner-up class must stay clearly below (no near-degenerate eigenvalue)
    rest = np.delete(curve.class_scgf, curve.dominant_class[0], axis=1)
    assume(rest.size == 0 or np.all(curve.scgf[:, None] - rest > 1e-3))
    values = dict(zip(stencil.tolist(), curve.scgf.tolist(), strict=True))

    def lam(x: float) -> float:
        return values[min(values, key=lambda y: abs(y - x))]

    t = tilted(chain, c.f, k)
    assert t.scgf == pytest.approx(lam(k), abs=1e-11 * max(1.0, abs(t.scgf)))
    assert t.mean == pytest.approx(fd_first(lam, k, h), rel=1e-6, abs=1e-8)
    assert t.variance == pytest.approx(fd_second(lam, k, h), rel=1e-6, abs=1e-7)
    assert t.variance >= 0


@given(chains(), ks)
def test_eigenvectors_stationary_law_and_driven_chain(c: Chain, k: float) -> None:
    """``P_k u = rho u`` (reachable states), ``v P_k = rho v``, ``sum v = 1``, ``sum u v = 1``;
    the stationary law is ``u v``; the driven chain is stochastic, keeps ``stationary``
    invariant, and its relative entropy rate to ``P`` is ``k Lambda' - Lambda = I(Lambda')``."""
    t = tilted(c.chain, c.f, k)
    S = c.P.shape[0]
    keep = reachable(c.P, c.initial)
    rest = np.delete(
        [dense_chain_scgf(c.P[np.ix_(cl, cl)], c.F[np.ix_(cl, cl)], k, np.ones(cl.size))
         for cl in _classes(c.P, keep)],
        _dominant_index(c, k, keep),
    )
    assume(rest.size == 0 or float(np.max(rest)) < t.scgf - 1e-6)  # no degenerate root
    rho = math.exp(t.scgf)
    Pk = c.P * np.exp(k * c.F)
    u, v = np.exp(t.log_right), np.exp(t.log_left)
    assert v.sum() == pytest.approx(1.0, abs=1e-12)
    assert float(u @ v) == pytest.approx(1.0, abs=1e-10)
    scale_u = max(1.0, float(u[keep].max()))
    np.testing.assert_allclose((Pk @ u)[keep], rho * u[keep], atol=1e-9 * rho * scale_u)
    # v is the left eigenvector of P_k on the dominant class (zero off it). NB: when that
    # class is transient, the full matrix's left eigenvector also has mass downstream of it
    # (where u = 0, so u v and the driven process are unaffected); tiltrl returns the
    # class-restricted one, as the exact core does.
    rec = np.asarray(t.recurrent_states)
    np.testing.assert_allclose((v @ Pk)[rec], rho * v[rec], atol=1e-9 * rho)
    assert np.all(v[np.setdiff1d(np.arange(S), rec)] == 0)
    assert np.all(v[rec] > 0)
    np.testing.assert_allclose(t.stationary, u * v, atol=1e-10)
    assert t.stationary.sum() == pytest.approx(1.0, abs=1e-10)
    # the driven chain
    D = dense(t.driven.P)
    assert np.all(D >= 0)
    np.testing.assert_allclose(D.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(t.stationary @ D, t.stationary, atol=1e-10)
    # Doob form on the support of the stationary law: P*(x, y) = P_k(x, y) u(y) / (rho u(x))
    on = t.stationary > 1e-12
    doob = Pk[on] * u[None, :] / (rho * u[on][:, None])
    np.testing.assert_allclose(D[on], doob, atol=1e-9)
    # relative entropy rate of the driven process = I(a) at a = Lambda'(k)
    with np.errstate(divide="ignore", invalid="ignore"):
        logratio = np.where(D > 0, np.log(D / np.where(c.P > 0, c.P, 1.0)), 0.0)
    kl_rate = float(np.sum(t.stationary[:, None] * D * logratio))
    assert kl_rate == pytest.approx(k * t.mean - t.scgf, abs=1e-9 * max(1.0, abs(k)))


def _classes(P: np.ndarray, keep: np.ndarray) -> list[np.ndarray]:
    """Strongly connected classes (carrying a cycle) among ``keep``, by dense reachability."""
    R = (P[np.ix_(keep, keep)] > 0).astype(int)
    n = keep.size
    reach = np.eye(n, dtype=int) | R
    for _ in range(n):
        reach = ((reach @ reach) > 0).astype(int)
    out, done = [], set()
    for i in range(n):
        if i in done:
            continue
        cls = [j for j in range(n) if reach[i, j] and reach[j, i]]
        done.update(cls)
        if len(cls) > 1 or R[i, i]:
            out.append(keep[cls])
    return out


def _dominant_index(c: Chain, k: float, keep: np.ndarray) -> int:
    roots = [dense_chain_scgf(c.P[np.ix_(cl, cl)], c.F[np.ix_(cl, cl)], k, np.ones(cl.size))
             for cl in _classes(c.P, keep)]
    return int(np.argmax(roots))


def _disordered_ring(n: int, seed: int) -> tuple[MarkovChain, sp.csr_matrix]:
    rng = np.random.default_rng(seed)
    p, q = rng.uniform(0.1, 0.5, n), rng.uniform(0.1, 0.4, n)
    x = np.arange(n)
    P = sp.csr_matrix(
        (np.concatenate([p, q, 1 - p - q]),
         (np.tile(x, 3), np.concatenate([(x + 1) % n, (x - 1) % n, x]))),
        shape=(n, n),
    )
    cur = sp.csr_matrix(
        (np.concatenate([np.ones(n), -np.ones(n)]),
         (np.tile(x, 2), np.concatenate([(x + 1) % n, (x - 1) % n]))),
        shape=(n, n),
    )
    return MarkovChain(P), cur


def test_localised_perron_vector_needs_the_noda_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A disordered ring near the k where Lambda'(k) = 0: the Perron vector localises, the
    spectral gap is tiny and Newton's linearised step overshoots; the Noda fallback must
    take over (counted here) and the result must match dense diagonalisation."""
    import sys

    scgf_module = sys.modules["tiltrl.ld.scgf"]
    calls: list[int] = []
    noda = scgf_module.noda_perron

    def counting(*args: object, **kwargs: object) -> object:
        res = noda(*args, **kwargs)
        calls.append(res.iterations)
        return res

    monkeypatch.setattr(scgf_module, "noda_perron", counting)
    chain, cur = _disordered_ring(1000, seed=0)
    ks = np.array([-0.05, -0.1, 0.3])
    values = np.array([scgf(chain, cur, k) for k in ks])  # cold starts, as in the docstring
    assert calls, "the ill-conditioned case no longer reaches the Noda fallback"
    P = chain.P.toarray()
    F = cur.toarray()
    for k, value in zip(ks, values, strict=True):
        dense = np.log(np.max(np.linalg.eigvals(P * np.exp(k * F)).real))
        assert value == pytest.approx(dense, rel=1e-9, abs=1e-11)


def test_noda_iteration_matches_dense_perron_root(rng: np.random.Generator) -> None:
    from tiltrl.exact.noda import noda_perron
    from tiltrl.exact.tilted import LogKernel

    for _ in range(5):
        n = 30
        dense = rng.random((n, n)) * (rng.random((n, n)) < 0.3)
        dense[np.arange(n), (np.arange(n) + 1) % n] += 0.5  # a cycle: irreducible
        rows, cols = np.nonzero(dense)
        kernel = LogKernel.from_entries(rows, cols, 40 * np.log(dense[rows, cols]), n)
        res = noda_perron(kernel, np.zeros(n), tol=1e-12)
        assert res.converged
        ref = np.log(np.max(np.linalg.eigvals(kernel.to_dense()).real))
        assert res.theta == pytest.approx(ref, rel=1e-9, abs=1e-9)
        # h is the log Perron vector: Q exp(h) = rho exp(h)
        Q = kernel.to_dense()
        x = np.exp(res.h - res.h.max())
        np.testing.assert_allclose(Q @ x, np.exp(res.theta) * x, rtol=1e-9, atol=1e-300)


@given(chains())
def test_array_of_k_equals_cold_solves(c: Chain) -> None:
    """Warm-started continuation over an unsorted array of k changes nothing (1e-10)."""
    grid = np.array([0.3, -2.5, 1.7, -0.4, 2.9, 0.0, -1.1, 0.05, 2.2, -3.0])
    warm = scgf(c.chain, c.f, grid)
    cold = np.array([scgf(c.chain, c.f, float(x)) for x in grid])
    np.testing.assert_allclose(warm, cold, rtol=0, atol=1e-10 * max(1.0, np.abs(cold).max()))
    # a 2-D array keeps its shape
    assert scgf(c.chain, c.f, grid.reshape(2, 5)).shape == (2, 5)


@st.composite
def jump_processes(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    S = draw(st.integers(2, 7))
    density = draw(st.sampled_from([1.0, 0.4]))
    W = rng.uniform(0.1, 3.0, (S, S)) * (rng.random((S, S)) < density)
    np.fill_diagonal(W, 0.0)
    G = rng.uniform(-1, 1, (S, S)) * (W > 0)
    H = rng.uniform(-1, 1, S)
    initial = np.zeros(S)
    initial[rng.choice(S, size=draw(st.integers(1, S)), replace=False)] = 1.0
    return W, G, H, initial / initial.sum()


@given(jump_processes(), ks, st.sampled_from(["jump", "time", "both"]))
def test_jump_process_matches_dense_generator(
    model: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], k: float, which: str
) -> None:
    """``Lambda(k)`` = largest real eigenvalue (``scipy.linalg.eigvals``) of the tilted
    generator on the reachable states; ``mean`` and ``variance`` = finite differences."""
    W, G, H, initial = model
    S = W.shape[0]
    proc = JumpProcess(sp.csr_matrix(W), initial)
    if which == "jump":
        f: object = sp.csr_matrix(G)
        Gd, Hd = G, np.zeros(S)
    elif which == "time":
        f, Gd, Hd = H, np.zeros((S, S)), H
    else:
        f, Gd, Hd = (G, H), G, H
    exact = dense_jump_scgf(W, Gd, Hd, k, initial)
    assert scgf(proc, f, k) == pytest.approx(exact, abs=1e-10 * max(1.0, abs(exact)))
    keep = reachable(W, initial)
    L = dense_generator(W, Gd, Hd, k)

    def lam(x: float) -> float:
        return float(scipy.linalg.eigvals(
            dense_generator(W, Gd, Hd, x)[np.ix_(keep, keep)]).real.max())

    ev = np.sort(scipy.linalg.eigvals(L[np.ix_(keep, keep)]).real)
    # a clear gap to the next real part: no kink on the stencil, well-posed derivatives
    assume(ev.size == 1 or ev[-1] - ev[-2] > 1e-2)
    t = tilted(proc, f, k)
    assert t.scgf == pytest.approx(exact, abs=1e-10 * max(1.0, abs(exact)))
    assert t.mean == pytest.approx(fd_first(lam, k, 1e-3), rel=1e-6, abs=1e-8)
    assert t.variance == pytest.approx(fd_second(lam, k, 1e-2), rel=1e-5, abs=1e-7)
    # the driven process is a jump process whose generator conserves probability
    assert isinstance(t.driven, JumpProcess)
    Gs = dense(t.driven.generator)
    np.testing.assert_allclose(Gs.sum(axis=1), 0.0, atol=1e-9 * max(1.0, np.abs(Gs).max()))
    np.testing.assert_allclose(t.stationary @ Gs, 0.0, atol=1e-9 * max(1.0, np.abs(Gs).max()))


# ============================================================================ driven process


def test_driven_chain_typical_mean_is_lambda_prime() -> None:
    """Typical trajectories of the driven chain have ``A_T / T -> Lambda'(k)`` (within 4
    batch-means standard errors), and the spread of the batch means matches ``Lambda''``."""
    c = _random_chain(12345, 6, "sparse", "dense", subset=False)
    k = 0.8
    t = tilted(c.chain, c.f, k)
    steps, n_chains, burn = 20_000, 8, 500
    traj = t.driven.sample(steps + burn, n_chains=n_chains, seed=3)
    vals = c.F[traj[:, burn:-1], traj[:, burn + 1:]]  # (n_chains, steps)
    batches = vals.reshape(n_chains * 10, steps // 10).mean(axis=1)  # 80 batch means
    mean = float(batches.mean())
    se = float(batches.std(ddof=1) / math.sqrt(batches.size))
    assert abs(mean - t.mean) < 4 * se, (mean, t.mean, se)
    # under the prior the typical value is a different number: the test has power
    assert abs(tilted(c.chain, c.f, 0.0).mean - t.mean) > 20 * se
    # batch variance ~ Lambda'' / batch length (asymptotic variance of the driven process)
    ratio = batches.var(ddof=1) * (steps // 10) / t.variance
    assert 0.6 < ratio < 1.6, ratio


def test_driven_jump_process_typical_time_average() -> None:
    """Gillespie paths of the driven jump process: time in state 1 per unit time is
    ``Lambda'(k)`` of the occupation observable."""
    a, b, k = 1.0, 2.0, -0.8
    proc = JumpProcess(np.array([[0.0, a], [b, 0.0]]))
    h = np.array([0.0, 1.0])
    t = tilted(proc, h, k)
    duration = 400.0
    paths = t.driven.sample(duration, n_chains=40, seed=5)
    occ = []
    for times, states in paths:
        ends = np.append(times[1:], duration)
        occ.append(float(np.sum((ends - times) * (states == 1))) / duration)
    occ_arr = np.array(occ)
    se = occ_arr.std(ddof=1) / math.sqrt(occ_arr.size)
    assert abs(occ_arr.mean() - t.mean) < 4 * se
    assert abs(a / (a + b) - t.mean) > 20 * se  # differs from the untilted occupation


# ============================================================================ rate function


def test_ring_rate_function_closed_form_and_status() -> None:
    p, q, n = 0.4, 0.1, 6
    chain, f = ring(n, p, q), ring_current(n)
    a = np.array([-1.3, -1.0, -0.6, 0.0, p - q, 0.55, 0.9, 1.0, 1.0001, 1.5])
    rf = rate_function(chain, f, a)
    status = dict(zip(a.tolist(), rf.status, strict=True))
    assert status[-1.3] == status[1.0001] == status[1.5] == "outside"
    assert status[-1.0] == status[1.0] == "edge"
    for x in (-0.6, 0.0, p - q, 0.55, 0.9):
        assert status[x] == "interior"
    assert rf.domain == pytest.approx((-1.0, 1.0), abs=1e-9)
    assert rf.mean == pytest.approx(p - q, abs=1e-12)
    rate = dict(zip(a.tolist(), rf.rate.tolist(), strict=True))
    assert np.isinf(rate[-1.3]) and np.isinf(rate[1.5]) and np.isinf(rate[1.0001])
    assert rate[1.0] == pytest.approx(-math.log(p), abs=1e-9)
    assert rate[-1.0] == pytest.approx(-math.log(q), abs=1e-9)
    assert rate[p - q] == 0.0
    # interior points: closed form, and a fine-grid discrete Legendre-Fenchel transform
    grid = np.linspace(-12, 12, 240_001)
    lf = legendre_fenchel(grid, ring_scgf(grid, p, q), [-0.6, 0.0, 0.55, 0.9])
    for x, lfx in zip((-0.6, 0.0, 0.55, 0.9), lf, strict=True):
        assert rate[x] == pytest.approx(ring_rate(x, p, q), abs=1e-9)
        assert rate[x] == pytest.approx(float(lfx), abs=1e-8)
        assert lfx <= rate[x] + 1e-12  # the discrete transform is a lower bound
    # conjugate k* solves Lambda'(k*) = a
    kstar = dict(zip(a.tolist(), rf.k.tolist(), strict=True))
    assert tilted(chain, f, kstar[0.55]).mean == pytest.approx(0.55, abs=1e-9)


def test_rate_function_curvature_is_inverse_variance() -> None:
    """``I'(a) = k*`` and ``I''(a) = 1 / Lambda''(k*)`` at an interior point."""
    c = _random_chain(7, 5, "dense", "dense", subset=False)
    chain = c.chain
    a0 = tilted(chain, c.f, 0.6).mean
    h = 1e-3
    rf = rate_function(chain, c.f, [a0 - h, a0, a0 + h])
    assert rf.status == ("interior",) * 3
    assert rf.k[1] == pytest.approx(0.6, abs=1e-8)
    assert (rf.rate[2] - rf.rate[0]) / (2 * h) == pytest.approx(0.6, rel=1e-5)
    second = (rf.rate[2] - 2 * rf.rate[1] + rf.rate[0]) / h**2
    assert second == pytest.approx(1.0 / tilted(chain, c.f, 0.6).variance, rel=1e-4)
    # I vanishes only at the typical value, and is positive elsewhere
    m = tilted(chain, c.f, 0.0).mean
    r0 = rate_function(chain, c.f, [m, m + 0.01, m - 0.01])
    assert r0.rate[0] == 0.0 and np.all(r0.rate[1:] > 0)


def _two_rings() -> tuple[MarkovChain, sp.csr_matrix, tuple[float, float], tuple[float, float]]:
    """Two disjoint rings (p, q) = (0.1, 0.3) and (0.4, 0.1), the initial law on both.
    ``Lambda = max(Lambda_1, Lambda_2)`` has one kink, at k = 0, where ``Lambda'`` jumps
    from -0.2 to 0.3 (Lambda_2 - Lambda_1 has the sign of k for these values)."""
    n = 5
    r1, r2 = (0.1, 0.3), (0.4, 0.1)
    P = sp.block_diag([ring(n, *r1).P, ring(n, *r2).P], format="csr")
    f = sp.block_diag([ring_current(n), ring_current(n)], format="csr")
    return MarkovChain(P), f, r1, r2


def test_reducible_chain_phase_transition_and_affine_rate() -> None:
    chain, f, r1, r2 = _two_rings()
    m1, m2 = r1[0] - r1[1], r2[0] - r2[1]
    grid = np.linspace(-1.0, 1.0, 10)
    curve = scgf_curve(chain, f, grid)
    np.testing.assert_allclose(
        curve.scgf, np.maximum(ring_scgf(grid, *r1), ring_scgf(grid, *r2)), atol=1e-12
    )
    assert len(curve.transitions) == 1
    lo, hi = curve.transitions[0]
    assert lo < 0 < hi
    assert len(curve.class_states) == 2
    a = np.array([-0.15, 0.0, 0.1, 0.25, 0.5, -0.5])
    rf = rate_function(chain, f, a)
    for i in range(4):  # strictly between the two class means
        assert rf.status[i] == "affine", rf.status
        assert rf.rate[i] == pytest.approx(0.0, abs=1e-10)
        assert rf.k[i] == pytest.approx(0.0, abs=1e-8)
    assert any("not differentiable" in note for note in rf.notes)
    # beyond the gap each side is its own ring's rate function
    assert rf.status[4] == rf.status[5] == "interior"
    assert rf.rate[4] == pytest.approx(ring_rate(0.5, *r2), abs=1e-9)
    assert rf.rate[5] == pytest.approx(ring_rate(-0.5, *r1), abs=1e-9)
    assert m1 < -0.15 and 0.25 < m2
    # the domain spans both rings
    assert rf.domain == pytest.approx((-1.0, 1.0), abs=1e-9)


def test_irreducible_chain_has_no_transition() -> None:
    c = ring(5, 0.4, 0.1)
    curve = scgf_curve(c, ring_current(5), np.linspace(-2, 2, 9))
    assert curve.transitions == () and np.all(curve.converged)


# ============================================================================ the dictionary

HOLES = tiltrl.gridworld("7x7holes", slippery=1)


@pytest.fixture(scope="module")
def holes_pair_chain() -> tuple[MarkovChain, sp.csr_matrix]:
    chain, f = from_mdp(HOLES)
    return chain, f


@pytest.fixture(scope="module")
def holes_solutions() -> dict[float, tiltrl.Solution]:
    return {b: tiltrl.solve(HOLES, b) for b in (0.5, 2.0, 10.0)}


def _pair_driven(sol: tiltrl.Solution, S: int, A: int) -> np.ndarray:
    """``p*(s'|s,a) pi*(a'|s')`` as a dense ``(S A, S A)`` matrix."""
    assert sol.driven_dynamics is not None
    pstar = dense(sol.driven_dynamics)  # (S A, S)
    return (pstar[:, :, None] * sol.policy[None, :, :]).reshape(S * A, S * A)


def test_dictionary_tilted_matrix(holes_pair_chain: tuple[MarkovChain, sp.csr_matrix]) -> None:
    """The tilted kernel ``P_k = P e^{k f}`` of the pair chain at ``k = beta`` is the tilted
    matrix ``M[(s,a),(s',a')] = p(s'|s,a) e^{beta r} pi0(a'|s')`` of the MDP."""
    chain, f = holes_pair_chain
    S, A = HOLES.shape
    beta = 2.0
    Pk = dense(chain.P) * np.exp(beta * dense(f))
    p = dense(HOLES.P).reshape(S, A, S)
    r = dense(HOLES.reward)  # r(s, a) on this grid
    M = (p * np.exp(beta * r)[:, :, None])[:, :, :, None] * HOLES.prior[None, None, :, :]
    np.testing.assert_allclose(Pk, M.reshape(S * A, S * A), rtol=1e-14, atol=0)
    op = tilted_operator(HOLES, beta)
    np.testing.assert_allclose(op @ np.eye(S * A), Pk, rtol=1e-13, atol=1e-300)
    np.testing.assert_allclose(chain.initial, (HOLES.initial[:, None] * HOLES.prior).ravel())


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_dictionary_scgf_is_beta_theta(
    beta: float, holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
    holes_solutions: dict[float, tiltrl.Solution],
) -> None:
    """``Lambda(beta) = log rho = beta theta`` (controlled); ``Lambda'(beta)`` = energy;
    the driven stationary law = ``u v`` = ``sol.stationary``."""
    chain, f = holes_pair_chain
    sol = holes_solutions[beta]
    lam = scgf(chain, f, beta)
    assert lam == pytest.approx(beta * sol.theta, abs=1e-10 * max(1.0, abs(lam)))
    assert lam == pytest.approx(sol.log_rho, abs=1e-10 * max(1.0, abs(lam)))
    assert from_mdp(HOLES, beta).scgf() == pytest.approx(lam, abs=1e-12 * max(1.0, abs(lam)))
    t = tilted(chain, f, beta)
    assert t.mean == pytest.approx(sol.energy, abs=1e-10)
    np.testing.assert_allclose(t.stationary, sol.stationary.ravel(), atol=1e-10)


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_dictionary_driven_process_is_optimal_controlled_dynamics(
    beta: float, holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
    holes_solutions: dict[float, tiltrl.Solution],
) -> None:
    """Doob transform of the pair chain = ``p*(s'|s,a) pi*(a'|s')``."""
    chain, f = holes_pair_chain
    sol = holes_solutions[beta]
    S, A = HOLES.shape
    driven = dense(tilted(chain, f, beta).driven.P)
    np.testing.assert_allclose(driven, _pair_driven(sol, S, A), atol=1e-10)


@pytest.mark.parametrize("beta", [0.5, 2.0, 10.0])
def test_dictionary_soft_q_is_log_right_eigenvector(
    beta: float, holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
    holes_solutions: dict[float, tiltrl.Solution],
) -> None:
    """``beta Q = log u`` = ``log_right`` up to one additive constant; ``log v`` likewise."""
    chain, f = holes_pair_chain
    sol = holes_solutions[beta]
    t = tilted(chain, f, beta)
    assert sol.log_u is not None and sol.log_left is not None
    for ours, theirs in ((t.log_right, sol.log_u.ravel()), (t.log_right, beta * sol.q.ravel()),
                         (t.log_left, sol.log_left.ravel())):
        fin = np.isfinite(theirs)
        np.testing.assert_array_equal(np.isfinite(ours), fin)
        diff = ours[fin] - theirs[fin]
        np.testing.assert_allclose(diff, diff.mean(), atol=1e-9 * max(1.0, beta))


def test_dictionary_conditional_free_energy_and_forward_message() -> None:
    """``log u(x) = lim_T [log E_x e^{k A_T} - T Lambda]`` (backward message / conditional
    free energy, normalised ``sum v = 1``) and ``v = lim_T`` of the normalised tilted forward
    law ``mu P_k^T`` (forward message)."""
    c = _random_chain(99, 6, "dense", "dense", subset=True)
    k = 1.3
    t = tilted(c.chain, c.f, k)
    Pk = c.P * np.exp(k * c.F)
    back, fwd = np.ones(6), c.initial.copy()
    log_back = np.zeros(6)
    for _ in range(300):  # log-space power iteration with explicit renormalisation
        back = Pk @ back
        s = back.max()
        back /= s
        log_back += math.log(s) - t.scgf
        fwd = fwd @ Pk
        fwd /= fwd.sum()
    np.testing.assert_allclose(log_back + np.log(back), t.log_right, atol=1e-10)
    np.testing.assert_allclose(fwd, np.exp(t.log_left), atol=1e-12)


def test_dictionary_partition_function() -> None:
    """``Z_T = E[exp(k A_T)] = mu P_k^T 1`` (brute-force sum over all paths), and
    ``log Z_T - T Lambda(k) -> log(mu . u)``, so ``(1/T) log Z_T -> Lambda``."""
    c = _random_chain(5, 3, "dense", "dense", subset=False)
    k, T = -0.9, 4
    Z = 0.0
    for path in itertools.product(range(3), repeat=T + 1):
        w = c.initial[path[0]]
        for x, y in itertools.pairwise(path):
            w *= c.P[x, y] * math.exp(k * c.F[x, y])
        Z += w
    Pk = c.P * np.exp(k * c.F)
    assert Z == pytest.approx(float(c.initial @ np.linalg.matrix_power(Pk, T) @ np.ones(3)),
                              rel=1e-13)
    # long horizon on the grid-world pair chain: the MDP's partition function
    chain, f = from_mdp(HOLES)
    beta = 2.0
    t = tilted(chain, f, beta)
    Pk_sp = sp.csr_matrix(chain.P.multiply(np.exp(beta * f.toarray())))
    z, log_z = np.ones(chain.n_states), 0.0
    for _ in range(3000):
        z = Pk_sp @ z
        s = z.max()
        z /= s
        log_z += math.log(s)
    log_Z = log_z + math.log(float(chain.initial @ z))
    limit = math.log(float(chain.initial @ np.exp(t.log_right)))
    assert log_Z - 3000 * t.scgf == pytest.approx(limit, abs=1e-8)


@pytest.mark.parametrize("beta", [0.5, 2.0])
def test_dictionary_population_growth_rate(
    beta: float, holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
    holes_solutions: dict[float, tiltrl.Solution],
) -> None:
    """The cloning estimator's growth rate: ``rho = sum_x v(x) E[e^{beta r} | x]`` with
    ``sum v = 1``, in both the chain (``log_left``) and the MDP (``sol.log_left``) form."""
    chain, f = holes_pair_chain
    t = tilted(chain, f, beta)
    growth = dense(chain.P.multiply(np.exp(beta * f.toarray()))).sum(axis=1)
    v = np.exp(t.log_left)
    assert float(v @ growth) == pytest.approx(math.exp(t.scgf), rel=1e-12)
    sol = holes_solutions[beta]
    assert sol.log_left is not None
    v_mdp = np.exp(sol.log_left).ravel()
    S, A = HOLES.shape
    w = np.exp(beta * dense(HOLES.reward)).ravel()  # r(s, a): E_{s'}[e^{beta r}] = e^{beta r}
    assert float(v_mdp @ w) == pytest.approx(math.exp(sol.log_rho), rel=1e-10)


def test_dictionary_variance_is_d_energy_d_beta(
    holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
) -> None:
    """``Lambda''(beta)`` = the asymptotic variance of the reward = ``d energy / d beta``."""
    chain, f = holes_pair_chain
    beta = 2.0

    def energy(b: float) -> float:
        return tiltrl.solve(HOLES, b).energy

    var = tilted(chain, f, beta).variance
    assert var > 0
    assert var == pytest.approx(fd_first(energy, beta, 1e-2), rel=1e-6)


def test_dictionary_entropy_production_is_rate_function(
    holes_pair_chain: tuple[MarkovChain, sp.csr_matrix],
    holes_solutions: dict[float, tiltrl.Solution],
) -> None:
    """``policy_kl + dynamics_kl = I(a)`` at ``a = energy = Lambda'(beta)``, so
    ``theta = energy - KL / beta`` is ``Lambda = k a - I(a)``; and that KL is the relative
    entropy rate of the driven pair chain with respect to the prior pair chain."""
    chain, f = holes_pair_chain
    beta = 2.0
    sol = holes_solutions[beta]
    kl = sol.policy_kl + sol.dynamics_kl
    rf = rate_function(chain, f, sol.energy)
    assert rf.status == ("interior",)
    assert rf.k[0] == pytest.approx(beta, abs=1e-7)
    assert rf.rate[0] == pytest.approx(kl, abs=1e-8)
    t = tilted(chain, f, beta)
    D, P0 = dense(t.driven.P), dense(chain.P)
    with np.errstate(divide="ignore", invalid="ignore"):
        logratio = np.where(D > 0, np.log(D / np.where(P0 > 0, P0, 1.0)), 0.0)
    assert float(np.sum(t.stationary[:, None] * D * logratio)) == pytest.approx(kl, abs=1e-10)
    assert t.scgf == pytest.approx(beta * t.mean - kl, abs=1e-10)


def test_dictionary_fixed_dynamics_is_constrained_doob_transform() -> None:
    """The fixed-dynamics optimum is the Doob transform of a *constrained* problem:
    reference dynamics ``q(s'|s,a) ~ p(s'|s,a) e^{-beta V(s')}`` and reward
    ``r' = r + KL(p || q) / beta`` (V from the fixed solution). Its driven pair chain is
    ``p(s'|s,a) pi_fixed(a'|s')`` — the environment's own dynamics — with
    ``Lambda' = beta theta_fixed``, below the unconstrained ``beta theta_controlled``."""
    mdp = tiltrl.gridworld("7x7holes", slippery=1)
    S, A = mdp.shape
    beta = 2.0
    fixed = tiltrl.solve(mdp, beta, dynamics="fixed")
    controlled = tiltrl.solve(mdp, beta)
    p = dense(mdp.P)  # (S A, S)
    q = p * np.exp(-beta * fixed.v)[None, :]
    q /= q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl = np.sum(np.where(p > 0, p * np.log(p / q), 0.0), axis=1).reshape(S, A)
    constrained = TabularMDP(sp.csr_matrix(q), dense(mdp.reward) + kl / beta, mdp.prior,
                             mdp.initial)
    chain, f = from_mdp(constrained)
    t = tilted(chain, f, beta)
    assert t.scgf == pytest.approx(beta * fixed.theta, abs=1e-8)
    env_pairs = (p[:, :, None] * fixed.policy[None, :, :]).reshape(S * A, S * A)
    np.testing.assert_allclose(dense(t.driven.P), env_pairs, atol=1e-8)
    assert controlled.theta > fixed.theta + 1e-6  # the unconstrained transform does better
    # the unconstrained transform of the original chain changes the dynamics
    c0, f0 = from_mdp(mdp)
    assert np.abs(dense(tilted(c0, f0, beta).driven.P) - env_pairs).max() > 1e-3


@pytest.mark.parametrize("k", [0.5, 1.0, 3.0])
def test_dictionary_to_mdp_inverse(k: float) -> None:
    """``tiltrl.solve(to_mdp(chain, f), k).log_rho == scgf(chain, f, k)``."""
    c = _random_chain(21, 7, "sparse", "sparse", subset=True)
    sol = tiltrl.solve(to_mdp(c.chain, c.f), k)
    assert sol.log_rho == pytest.approx(scgf(c.chain, c.f, k), abs=1e-10)
    assert sol.energy == pytest.approx(tilted(c.chain, c.f, k).mean, abs=1e-9)
    chain, f = ring(5, 0.4, 0.1), ring_current(5)
    assert tiltrl.solve(to_mdp(chain, f), k).log_rho == pytest.approx(
        float(ring_scgf(k, 0.4, 0.1)), abs=1e-12
    )
    # the round trip through from_mdp gives the same chain and observable back
    back, fb = from_mdp(to_mdp(chain, f))
    np.testing.assert_allclose(dense(back.P), dense(chain.P))
    np.testing.assert_allclose(dense(fb), dense(f))


def test_dictionary_simulated_energy(holes_solutions: dict[float, tiltrl.Solution]) -> None:
    """Monte Carlo energy of the optimal (driven) process is within 4 standard errors."""
    sol = holes_solutions[2.0]
    mean, se = simulate_energy(HOLES, sol, steps=10_000, n_chains=16, seed=0)
    assert se > 0
    assert abs(mean - sol.energy) < 4 * se, (mean, sol.energy, se)
    # and not within 4 errors of the prior's energy: the check can fail
    prior_energy = tilted(*from_mdp(HOLES), 0.0).mean
    assert abs(mean - prior_energy) > 4 * se


# ============================================================================ validation


@pytest.mark.parametrize(
    "P, match",
    [
        ([[1.5, -0.5], [0.5, 0.5]], r"P\[0, 1\] = -0\.5 is negative"),
        ([[0.5, 0.4], [0.5, 0.5]], r"row 0 sums to 0\.9"),
        ([[0.5, 0.5], [0.3, 0.5]], r"row 1 sums to 0\.8"),
        ([[0.5, 0.5], [np.nan, 1.0]], r"P\[1, 0\] = nan is not finite"),
        ([[0.5, 0.5], [0.0, np.inf]], r"P\[1, 1\] = inf is not finite"),
        (np.full((2, 3), 1 / 3), r"square"),
        (np.ones(3), r"square"),
    ],
)
def test_bad_transition_matrix(P: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MarkovChain(P)
    with pytest.raises(ValueError, match=match):
        MarkovChain(sp.csr_matrix(np.atleast_2d(np.asarray(P, dtype=float))))


def test_bad_initial_law() -> None:
    with pytest.raises(ValueError, match=r"shape"):
        MarkovChain(np.eye(2), [1.0])
    with pytest.raises(ValueError, match=r"initial\[1\]"):
        MarkovChain(np.eye(2), [1.5, -0.5])
    with pytest.raises(ValueError, match=r"sums to"):
        MarkovChain(np.eye(2), [0.5, 0.4])


def test_bad_observable_and_k() -> None:
    chain = two_state(0.3, 0.6)
    with pytest.raises(ValueError, match=r"shape"):
        scgf(chain, np.ones(3), 1.0)
    with pytest.raises(ValueError, match=r"shape"):
        scgf(chain, np.ones((2, 3)), 1.0)
    with pytest.raises(ValueError, match=r"shape"):
        scgf(chain, sp.csr_matrix(np.ones((3, 3))), 1.0)
    with pytest.raises(ValueError, match=r"callable returned shape"):
        scgf(chain, lambda x, y: np.ones(1), 1.0)
    with pytest.raises(ValueError, match=r"f\(0, 1\) = nan is not finite"):
        scgf(chain, np.array([[0.0, np.nan], [0.0, 0.0]]), 1.0)
    with pytest.raises(ValueError, match=r"f\(1, 0\) = inf"):
        scgf(chain, np.array([0.0, np.inf]), 1.0)
    with pytest.raises(TypeError):
        scgf(chain, (np.zeros((2, 2)), np.zeros(2)), 1.0)
    for bad in (np.nan, np.inf, -np.inf, np.array([0.0, np.nan]), [1.0, -np.inf]):
        with pytest.raises(ValueError, match=r"k must be a finite number"):
            scgf(chain, np.ones(2), bad)
    with pytest.raises(ValueError):
        scgf(chain, np.ones(2), "x")
    with pytest.raises(ValueError, match=r"k must be a finite number"):
        tilted(chain, np.ones(2), np.inf)
    with pytest.raises(ValueError, match=r"a must be finite"):
        rate_function(chain, np.ones(2), [0.1, np.nan])
    with pytest.raises(TypeError):
        scgf(np.eye(2), np.ones(2), 1.0)  # type: ignore[arg-type]


def test_bad_jump_process() -> None:
    with pytest.raises(ValueError, match=r"rates\[0, 0\] = -1\.0 must be 0 or minus the escape"):
        JumpProcess(np.array([[-1.0, 2.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"W\[1, 0\] = -1\.0 is negative"):
        JumpProcess(np.array([[0.0, 2.0], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"not finite"):
        JumpProcess(np.array([[0.0, np.nan], [1.0, 0.0]]))
    with pytest.raises(ValueError, match=r"square"):
        JumpProcess(np.ones((2, 3)))
    # a correct generator diagonal is accepted and equals the zero-diagonal form
    G = np.array([[-2.0, 2.0], [1.0, -1.0]])
    assert np.array_equal(dense(JumpProcess(G).generator), G)
    assert np.array_equal(dense(JumpProcess(G).rates), np.array([[0.0, 2.0], [1.0, 0.0]]))
    proc = JumpProcess(G)
    with pytest.raises(ValueError, match=r"state observable h\[0\] = nan"):
        scgf(proc, (np.zeros((2, 2)), np.array([np.nan, 0.0])), 1.0)
    with pytest.raises(ValueError, match=r"\(S,\)"):
        scgf(proc, (np.zeros((2, 2)), np.zeros(3)), 1.0)
    with pytest.raises(ValueError, match=r"jump observable f\(0, 1\) = inf"):
        scgf(proc, np.array([[0.0, np.inf], [0.0, 0.0]]), 1.0)


def test_save_load_round_trip(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    c = _random_chain(3, 6, "sparse", "dense", subset=True)
    chain = c.chain
    chain.save(d / "chain.npz")
    back = MarkovChain.load(d / "chain.npz")
    assert np.array_equal(dense(back.P), dense(chain.P))
    assert np.array_equal(back.initial, chain.initial)
    assert scgf(back, c.f, 0.7) == scgf(chain, c.f, 0.7)
    W = np.array([[0.0, 1.0, 0.0], [0.5, 0.0, 2.0], [3.0, 0.0, 0.0]])
    proc = JumpProcess(W, [0.2, 0.3, 0.5])
    proc.save(d / "jump.npz")
    pb = JumpProcess.load(d / "jump.npz")
    assert np.array_equal(dense(pb.rates), W)
    assert np.array_equal(pb.initial, proc.initial)
    assert scgf(pb, W > 0, -0.4) == scgf(proc, W > 0, -0.4)
    with pytest.raises(ValueError, match=r"not a MarkovChain"):
        MarkovChain.load(d / "jump.npz")
    with pytest.raises(ValueError, match=r"not a JumpProcess"):
        JumpProcess.load(d / "chain.npz")
