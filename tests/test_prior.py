"""Prior solutions (tiltrl.prior): exact shaping/composition identities and every bound,
on random irreducible MDPs, deterministic and stochastic (DESIGN.md §5; AAAI/UAI 2023)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tiltrl
from _random_models import random_transitions
from tiltrl.bounds import soft_bellman_bounds
from tiltrl.prior import (
    COMPOSITIONS,
    compose,
    compose_values,
    correction_task,
    gibbs_bogoliubov_bound,
    perron_bounds,
    shaping,
    shaping_lower_bound,
    shaping_task,
    solve_correction,
    zero_shot,
)

TOL = 1e-8


def random_mdp(seed: int, S: int, A: int, deterministic: bool,
               transition_reward: bool = False) -> tuple[tiltrl.TabularMDP, np.random.Generator]:
    """Irreducible and aperiodic: action 0 walks the cycle s -> s+1, action 1 loops at 0."""
    rng = np.random.default_rng(seed)
    P = random_transitions(rng, S, A, deterministic)
    for s in range(S):
        P[s, 0] = 0.0
        P[s, 0, (s + 1) % S] = 1.0
    P[0, 1] = 0.0
    P[0, 1, 0] = 1.0
    r = rng.normal(size=(S, A, S) if transition_reward else (S, A))
    prior = rng.dirichlet(np.ones(A), size=S)
    return tiltrl.TabularMDP(P, r, prior=prior), rng


def new_reward(rng: np.random.Generator, mdp: tiltrl.TabularMDP, scale: float = 1.0):
    S, A = mdp.shape
    return mdp.reward + scale * rng.normal(size=(S, A))


params = st.tuples(
    st.integers(0, 10_000),                 # seed
    st.integers(2, 6),                      # S
    st.integers(2, 3),                      # A
    st.booleans(),                          # deterministic
    st.sampled_from([0.3, 1.0, 4.0]),       # beta
    st.sampled_from([0.0, 0.5, 0.9]),       # gamma
    st.sampled_from(["fixed", "controlled"]),
)


def _solve(mdp, beta, gamma, dynamics):
    return tiltrl.solve(mdp, beta, gamma=gamma, dynamics=dynamics, tol=1e-13)


def _scale(*arrs) -> float:
    return 1.0 + max(float(np.max(np.abs(a))) for a in arrs)


# ============================================================================ shaping
@given(params)
def test_shaping_discounted_identity_and_lower_bound(p):
    seed, S, A, det, beta, gamma, dyn = p
    mdp, rng = random_mdp(seed, S, A, det)
    r2 = new_reward(rng, mdp)
    old = _solve(mdp, beta, gamma, dyn)
    truth = _solve(mdp.with_reward(r2), beta, gamma, dyn)
    sh = shaping(mdp, old, r2, tol=1e-13)
    assert np.max(np.abs(sh.q - truth.q)) <= TOL * _scale(truth.q)
    # the correction task's prior is pi*, its optimal policy the new optimum's
    np.testing.assert_allclose(sh.correction.policy, truth.policy, atol=1e-8)
    lb = shaping_lower_bound(mdp, old, r2)
    assert np.all(lb <= truth.q + TOL * _scale(truth.q))


@given(params)
def test_shaping_average_identity_free_energies_and_perron_bounds(p):
    seed, S, A, det, beta, _gamma, dyn = p
    mdp, rng = random_mdp(seed, S, A, det)
    r2 = new_reward(rng, mdp)
    old = tiltrl.solve(mdp, beta, dynamics=dyn, tol=1e-13)
    truth = tiltrl.solve(mdp.with_reward(r2), beta, dynamics=dyn, tol=1e-13)
    sh = shaping(mdp, old, r2, tol=1e-13)
    assert abs(sh.theta - truth.theta) <= TOL * _scale(truth.q)
    d = sh.q - truth.q  # differential values: equal up to one constant
    assert np.ptp(d) <= TOL * _scale(truth.q)
    assert sh.free_energy_new == pytest.approx(sh.free_energy_old + sh.free_energy_correction)
    assert sh.free_energy_new == pytest.approx(-truth.theta, abs=1e-9)
    gb = gibbs_bogoliubov_bound(mdp, old, r2)
    assert gb <= truth.theta + 1e-9
    pb = perron_bounds(mdp, old, r2)
    for name, (lo, hi) in pb.bounds.items():
        assert lo <= truth.theta + 1e-9, name
        assert truth.theta <= hi + 1e-9, name
    assert pb.lower >= gb - 1e-12


@given(st.integers(0, 10_000), st.booleans(), st.sampled_from([0.5, 2.0]))
def test_shaping_transition_rewards_controlled(seed, det, beta):
    """r(s,a,s') stays inside the exponent of the controlled correction task."""
    mdp, rng = random_mdp(seed, 4, 2, det, transition_reward=True)
    r2 = rng.normal(size=(4, 2, 4))
    new = mdp.with_reward(r2)
    for gamma in (0.8, None):
        old = tiltrl.solve(mdp, beta, gamma=gamma, dynamics="controlled", tol=1e-13)
        truth = tiltrl.solve(new, beta, gamma=gamma, dynamics="controlled", tol=1e-13)
        sh = shaping(mdp, old, new, tol=1e-13)
        if gamma is None:
            assert abs(sh.theta - truth.theta) <= 1e-9
            assert np.ptp(sh.q - truth.q) <= 1e-8
            pb = perron_bounds(mdp, old, new)
            assert pb.lower <= truth.theta + 1e-9 <= pb.upper + 2e-9
        else:
            assert np.max(np.abs(sh.q - truth.q)) <= 1e-8 * _scale(truth.q)


def test_shaping_bounds_tight_for_constant_shift(rng):
    mdp, _ = random_mdp(3, 5, 3, False)
    c = 0.7
    old = tiltrl.solve(mdp, 2.0, gamma=0.9, tol=1e-13)
    lb = shaping_lower_bound(mdp, old, mdp.reward + c)
    truth = tiltrl.solve(mdp.with_reward(mdp.reward + c), 2.0, gamma=0.9, tol=1e-13)
    np.testing.assert_allclose(lb, truth.q, atol=1e-9)
    np.testing.assert_allclose(lb, old.q + c / (1 - 0.9), atol=1e-9)
    for dyn in ("fixed", "controlled"):
        olda = tiltrl.solve(mdp, 2.0, dynamics=dyn, tol=1e-13)
        pb = perron_bounds(mdp, olda, mdp.reward + c)
        assert pb.lower == pytest.approx(olda.theta + c, abs=1e-10)
        assert pb.upper == pytest.approx(olda.theta + c, abs=1e-10)


@pytest.mark.parametrize("dyn", ["fixed", "controlled"])
def test_gibbs_bogoliubov_is_first_order_tight(dyn):
    """theta~(eps) - GB(eps) = O(eps^2): halving eps divides the gap by about four."""
    mdp, rng = random_mdp(11, 5, 3, False)
    delta = rng.normal(size=mdp.shape)
    old = tiltrl.solve(mdp, 1.5, dynamics=dyn, tol=1e-13)
    gaps = []
    for eps in (0.04, 0.02, 0.01):
        r2 = mdp.reward + eps * delta
        th = tiltrl.solve(mdp.with_reward(r2), 1.5, dynamics=dyn, tol=1e-13).theta
        gaps.append(th - gibbs_bogoliubov_bound(mdp, old, r2))
    assert all(g >= -1e-12 for g in gaps)
    assert 3.0 < gaps[0] / gaps[1] < 5.0 and 3.0 < gaps[1] / gaps[2] < 5.0


# ============================================================================ composition
def _tasks(mdp, rng, n=2):
    S, A = mdp.shape
    return [rng.normal(size=(S, A)) for _ in range(n)]


@given(params, st.sampled_from(COMPOSITIONS))
def test_composition_identity_bounds_and_regret_every_f(p, f):
    seed, S, A, det, beta, gamma, dyn = p
    mdp, rng = random_mdp(seed, S, A, det)
    rewards = _tasks(mdp, rng)
    sols = [_solve(mdp.with_reward(r), beta, gamma, dyn) for r in rewards]
    qs = [s.q for s in sols]
    kw: dict = {}
    if f == "not":
        up_r, lo_r = compose_values(rewards, "or"), compose_values(rewards, "and")
        up_q = _solve(mdp.with_reward(up_r), beta, gamma, dyn).q
        lo_q = _solve(mdp.with_reward(lo_r), beta, gamma, dyn).q
        r_new = compose_values([rewards[0]], "not", upper=up_r, lower=lo_r)
        qs, kw = [qs[0]], {"upper": up_q, "lower": lo_q}
    else:
        r_new = compose_values(rewards, f, beta=beta)
    task = mdp.with_reward(r_new)
    truth = _solve(task, beta, gamma, dyn)
    comp = compose(task, qs, f, beta=beta, gamma=gamma, dynamics=dyn, **kw)
    sc = _scale(truth.q)
    # exact: Q~* = f(Q) + C*
    _, q_new = solve_correction(comp, tol=1e-13)
    assert np.max(np.abs(q_new - truth.q)) <= TOL * sc
    # two-sided bounds, and the looser UAI form they imply
    assert comp.lb is not None and comp.ub is not None
    assert np.all(comp.lb <= truth.q + TOL * sc) and np.all(truth.q <= comp.ub + TOL * sc)
    assert np.all(comp.q + comp.kappa_min / (1 - gamma) <= comp.lb + 1e-10 * sc)
    assert np.all(comp.ub <= comp.q + comp.kappa_max / (1 - gamma) + 1e-10 * sc)
    if dyn == "fixed":
        b = soft_bellman_bounds(comp.q, task, beta, gamma)  # the same bounds (DESIGN.md §5)
        np.testing.assert_allclose(comp.kappa, b.residual, atol=1e-12 * sc)
        zs = zero_shot(comp)
        assert zs.q is not None and zs.v is not None and zs.regret_bound_v is not None
        regret_v = truth.v - zs.v
        assert np.all(regret_v >= -TOL * sc)
        assert np.all(regret_v <= zs.regret_bound_v + TOL * sc)
        assert np.all(zs.regret_bound_v <= zs.regret_bound + TOL * sc)
        assert np.all(truth.q - zs.q <= zs.regret_bound_q + TOL * sc)
        assert np.all(zs.regret_bound_q <= comp.gap + TOL * sc)
        # the zero-shot value matches an independent evaluation of pi_f
        from tiltrl.agents import eval_return

        ev = eval_return(comp.policy, task, beta, gamma)
        assert float(task.initial @ zs.v) == pytest.approx(float(ev), abs=1e-8 * sc)


@given(params, st.sampled_from(["convex", "sum", "or", "and", "soft_or"]))
def test_composition_average_reward_bounds(p, f):
    seed, S, A, det, beta, _gamma, dyn = p
    mdp, rng = random_mdp(seed, S, A, det)
    rewards = _tasks(mdp, rng)
    qs = [tiltrl.solve(mdp.with_reward(r), beta, dynamics=dyn, tol=1e-13).q for r in rewards]
    task = mdp.with_reward(compose_values(rewards, f, beta=beta))
    truth = tiltrl.solve(task, beta, dynamics=dyn, tol=1e-13)
    comp = compose(task, qs, f, beta=beta, gamma=None, dynamics=dyn)
    assert comp.theta_bounds is not None
    lo, hi = comp.theta_bounds
    assert lo - 1e-9 <= truth.theta <= hi + 1e-9
    sol_c, q_new = solve_correction(comp, tol=1e-13)
    assert sol_c.theta == pytest.approx(truth.theta, abs=1e-9)
    assert np.ptp(q_new - truth.q) <= TOL * _scale(truth.q)
    if dyn == "fixed":
        zs = zero_shot(comp)
        regret = truth.theta - zs.theta
        assert -1e-9 <= regret <= zs.regret_bound_theta + 1e-9
        assert zs.regret_bound_theta <= zs.regret_bound + 1e-12


@given(params)
def test_composition_sign_facts(p):
    """convex: Q~* <= sum w Q_k; OR of dominated rewards: Q~* >= max Q_k; AND: <= min Q_k."""
    seed, S, A, det, beta, gamma, dyn = p
    mdp, rng = random_mdp(seed, S, A, det)
    rewards = _tasks(mdp, rng, 3)
    qs = [_solve(mdp.with_reward(r), beta, gamma, dyn).q for r in rewards]
    w = rng.dirichlet(np.ones(3))
    for f, sign in (("convex", -1), ("or", 1), ("and", -1)):
        task = mdp.with_reward(compose_values(rewards, f, weights=w if f == "convex" else None))
        comp = compose(task, qs, f, beta=beta, gamma=gamma, dynamics=dyn,
                       weights=w if f == "convex" else None)
        truth = _solve(task, beta, gamma, dyn).q
        if sign > 0:
            assert comp.kappa.min() >= -1e-10
        else:
            assert comp.kappa.max() <= 1e-10
        assert np.all(sign * (truth - comp.q) >= -TOL * _scale(truth))


def test_composition_bounds_tight_when_f_is_optimal():
    """Composing identical tasks: f(Q) = Q~* for convex/OR/AND, so kappa = 0 and lb = ub."""
    mdp, rng = random_mdp(5, 6, 3, False)
    q = tiltrl.solve(mdp, 2.0, gamma=0.9, tol=1e-13).q
    for f in ("convex", "or", "and"):
        comp = compose(mdp, [q, q], f, beta=2.0, gamma=0.9)
        assert comp.gap <= 1e-9
        np.testing.assert_allclose(comp.lb, q, atol=1e-9)
        np.testing.assert_allclose(comp.ub, q, atol=1e-9)
        assert zero_shot(comp).regret_bound <= 1e-9


def test_correction_task_is_a_valid_mdp_with_prior_pi_f():
    mdp, rng = random_mdp(2, 5, 3, False)
    qs = [rng.normal(size=(5, 3)) for _ in range(2)]
    comp = compose(mdp, qs, "soft_or", beta=3.0, gamma=0.7)
    ct = correction_task(comp)
    np.testing.assert_allclose(ct.prior, comp.policy)
    np.testing.assert_allclose(ct.reward, comp.kappa, atol=1e-12)
    assert ct.transition_reward is not None  # V_f(s') makes it depend on s'


# ============================================================================ errors
def test_errors_name_the_bad_value():
    mdp, rng = random_mdp(0, 3, 2, True)
    q = np.zeros((3, 2))
    with pytest.raises(ValueError, match="'xor'"):
        compose_values([q, q], "xor")
    with pytest.raises(ValueError, match="sum to 1"):
        compose_values([q, q], "convex", weights=[0.7, 0.7])
    with pytest.raises(ValueError, match="upper"):
        compose_values([q], "not")
    with pytest.raises(ValueError, match="exactly one"):
        compose_values([q, q], "not", upper=q, lower=q)
    with pytest.raises(ValueError, match="needs beta"):
        compose_values([q, q], "soft_or")
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        compose(mdp, [np.zeros((2, 2))], "or", beta=1.0, gamma=0.5)
    with pytest.raises(ValueError, match="beta"):
        compose(mdp, [q], "or", beta=-1.0, gamma=0.5)
    with pytest.raises(ValueError, match="gamma"):
        compose(mdp, [q], "or", beta=1.0, gamma=1.5)
    with pytest.raises(ValueError, match="'weird'"):
        compose(mdp, [q], "or", beta=1.0, gamma=0.5, dynamics="weird")
    bad = q.copy()
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"f\(Q\)\[1,0\]"):
        compose(mdp, bad, beta=1.0, gamma=0.5)
    other, _ = random_mdp(1, 3, 2, True)
    old = tiltrl.solve(mdp, 1.0, gamma=0.5)
    with pytest.raises(ValueError, match="same dynamics"):
        shaping_task(mdp, old, other)
    with pytest.raises(ValueError, match="average-reward"):
        perron_bounds(mdp, old, mdp.reward)
    comp = compose(mdp, [q], "or", beta=1.0, gamma=0.5, dynamics="controlled")
    with pytest.raises(ValueError, match="'controlled'"):
        zero_shot(comp)


# ============================================================================ learning
def _composed_grid(slippery=0):
    mdp = tiltrl.gridworld(["FFFF", "FWFF", "FFFF"], slippery=slippery)
    S, A = mdp.shape
    goals = ([2, 11], [8, 3])
    rewards = []
    for g in goals:
        r = np.full((S, A), -1.0)
        r[g] = 0.0
        rewards.append(r)
    beta, gamma = 2.0, 0.8
    qs = [tiltrl.solve(mdp.with_reward(r), beta, gamma=gamma).q for r in rewards]
    task = mdp.with_reward(compose_values(rewards, "or"))
    return compose(task, qs, "or", beta=beta, gamma=gamma)


def test_warm_start_and_clipping_with_composition_bounds():
    from tiltrl.agents import learn
    from tiltrl.prior import warm_start

    comp = _composed_grid(slippery=1)
    truth = tiltrl.solve(comp.task, comp.beta, gamma=comp.gamma)
    # starting inside [lb, ub] with hard target clipping keeps every estimate inside
    mid = 0.5 * (comp.lb + comp.ub)
    res = learn("bounded_soft_q", comp.task, beta=comp.beta, gamma=comp.gamma, steps=3000,
                seeds=4, initial_q=mid, bounds=(comp.lb, comp.ub), n_evals=3)
    assert np.all(res.q >= comp.lb - 1e-12) and np.all(res.q <= comp.ub + 1e-12)
    assert res.options["bounds"] == "external" and res.options["initial_q"] is True
    # warm start from the exact optimum stays there (deterministic targets are exact)
    det = _composed_grid(slippery=0)
    exact = tiltrl.solve(det.task, det.beta, gamma=det.gamma)
    res = learn("soft_q", det.task, beta=det.beta, gamma=det.gamma, steps=500, seeds=2,
                initial_q=exact.q, n_evals=2)
    assert np.max(res.final_errors()["q_max"]) < 1e-12
    kw = warm_start(comp, clip=True)
    np.testing.assert_array_equal(kw["initial_q"], comp.q)
    assert truth.q.shape == comp.q.shape
    with pytest.raises(ValueError, match="cross"):
        learn("bounded_soft_q", comp.task, beta=comp.beta, gamma=comp.gamma, steps=10,
              bounds=(comp.ub + 1.0, comp.lb), reference=False)
    with pytest.raises(ValueError, match="initial Q"):
        learn("soft_q", comp.task, beta=comp.beta, gamma=comp.gamma, steps=10,
              initial_q=np.zeros((2, 2)), reference=False)


def test_learn_only_the_correction():
    from tiltrl.prior import learn_correction

    comp = _composed_grid(slippery=0)
    truth = tiltrl.solve(comp.task, comp.beta, gamma=comp.gamma)
    res, q_new = learn_correction(comp, steps=4000, seeds=3, n_evals=3)
    err = np.abs(q_new - truth.q[None]).max(axis=(1, 2))
    np.testing.assert_allclose(err, res.final_errors()["q_max"], atol=1e-9)
    assert np.all(err < np.abs(comp.q - truth.q).max())  # better than zero-shot
    with pytest.raises(ValueError, match="beta"):
        learn_correction(comp, beta=1.0, steps=10)


def test_cli_compose(tmp_path, capsys):
    import json

    from tiltrl.cli import main

    path = tmp_path / "c.json"
    rc = main(["--plain", "compose", "fourrooms", "--task", "1,1+2,3", "--task", "3,8",
               "--beta", "2", "--gamma", "0.9", "--slippery", "1", "--json", str(path)])
    assert rc == 0
    data = json.loads(path.read_text())
    assert set(data["compositions"]) == {"or", "and", "convex"}
    assert all(c["bounds_hold"] for c in data["compositions"].values())
    assert all(0 <= c["regret"] <= c["regret_bound"] + 1e-9
               for c in data["compositions"].values())
    assert main(["--plain", "compose", "fourrooms", "--task", "9,99", "--task", "1,1",
                 "--beta", "2"]) == 2
    assert "column 99" in capsys.readouterr().err
