"""Average-reward (continuing) entropy-regularised optima.

``solve_controlled``: the tilted-matrix / large-deviation solution (DESIGN.md §1). The
optimum over policy *and* dynamics (paying ``KL(p*||p)/beta`` for changing the dynamics)
is the Perron root of ``M``; equivalently the ``S x S`` state problem
``rho chi = Q chi``. Writing ``chi = exp(beta h)`` it is the soft Bellman equation
``h(s) + theta = (1/beta) log sum_{a,s'} pi0(a|s) p(s'|s,a) exp(beta (r + h(s')))`` of an
MDP whose actions are the pairs ``(a, s')`` (DESIGN.md §2), solved by Newton's method
(soft policy iteration, :mod:`tiltrl.exact.newton`).

``solve_fixed``: the true optimum under the environment's own dynamics,
``Q + theta = r + E_{s'~p}[V(s')]``, ``V = (1/beta) log sum_a pi0 exp(beta Q)``. Three
methods: ``"newton"`` (soft policy iteration on that equation), ``"mapping"`` (the
published constrained -> unconstrained iteration: re-solve a controlled problem with
reference dynamics ``q(s'|s,a) ∝ p(s'|s,a)/chi(s')`` and reward
``r + KL(p||q)/beta`` until ``p* = p``; Arriojas et al., UAI 2023) and ``"rvi"`` (relative
soft value iteration).

References: Arriojas, Adamczyk, Tiomkin, Kulkarni, Phys. Rev. Research 5, 023085 (2023);
Arriojas, Tiomkin, Kulkarni, "Bayesian inference approach for entropy regularized
reinforcement learning with stochastic dynamics", UAI 2023; Todorov, "Efficient
computation of optimal actions", PNAS 106 (2009).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tiltrl.exact.graph import ClassStructure, can_reach, class_structure, reachable_from
from tiltrl.exact.newton import (
    NewtonResult,
    newton_average,
    relative_residual,
    stationary_distribution,
)
from tiltrl.exact.noda import noda_perron
from tiltrl.exact.ordering import nested_dissection
from tiltrl.exact.result import Solution
from tiltrl.exact.tilted import (
    LogKernel,
    RowLayout,
    log_prior,
    log_transitions,
    row_logsumexp,
    state_log_kernel,
)
from tiltrl.mdp import TabularMDP

__all__ = ["solve_controlled", "solve_fixed", "ConvergenceWarning"]


class ConvergenceWarning(UserWarning):
    """An exact solver stopped before reaching its tolerance."""


# ---------------------------------------------------------------------------- helpers
#: consecutive Newton steps with an overflowing residual before the Perron problem is
#: handed to Noda iteration (healthy runs on the benchmark grids have at most one)
_MAX_BLOWUPS = 3
#: Noda steps before giving up (converging runs on the test grids take 30-45)
_NODA_MAX_ITER = 100
#: classes from this size get a nested-dissection ordering for their sparse LUs
_DISSECTION_MIN_STATES = 2_000


def _state_order(mdp: TabularMDP, kernel: LogKernel, sub: LogKernel,
                 states: np.ndarray) -> np.ndarray | None:
    """Nested-dissection ordering (:mod:`tiltrl.exact.ordering`) of ``sub``, the state
    kernel ``kernel`` of ``mdp`` restricted to ``states``; kept on the model for the
    pattern and states it was first made for (it has no beta: a sweep pays for it once).
    ``None`` on small classes, where SuperLU's own ordering is as good and cheaper, and
    for any other pattern or class than the kept one."""
    if states.size < _DISSECTION_MIN_STATES:
        return None

    def make() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        order = nested_dissection(sub.row_of, sub.cols, sub.n)
        order.setflags(write=False)
        return kernel.indptr, states.copy(), order

    indptr, kept_states, order = mdp.structure("state_order", make)
    if indptr is kernel.indptr and np.array_equal(kept_states, states):
        return order  # type: ignore[no-any-return]
    return None  # another class or pattern (rare): SuperLU's ordering, not a second one kept


def _kernel_evaluator(kernel: LogKernel, beta: float):  # type: ignore[no-untyped-def]
    """``T h = (1/beta) log sum_j Q[i,j] exp(beta h_j)`` and its Jacobian (controlled)."""
    rows = kernel.row_of
    layout = RowLayout.of(kernel.indptr)

    def evaluate(h: np.ndarray):  # type: ignore[no-untyped-def]
        z = kernel.logw + beta * h[kernel.cols]
        log_z = row_logsumexp(z, kernel.indptr, layout)
        return log_z / beta, (rows, kernel.cols, np.exp(z - log_z[rows]))

    return evaluate


def _relative_value_iteration(
    evaluate,  # type: ignore[no-untyped-def]
    h0: np.ndarray,
    *,
    ref: int,
    beta: float,
    tol: float,
    max_iter: int,
    tau: float = 1.0,
) -> NewtonResult:
    """Relative soft value iteration ``h <- h + tau (T h - h - (T h - h)[ref])``.

    With ``tau = 1`` and the controlled evaluator it is log-space power iteration on the
    state problem; ``tau < 1`` is the aperiodicity transform
    ``T_tau h = (1 - tau) h + tau T h`` (Puterman §8.5.4), which still converges when the
    optimal chain is periodic.
    """
    h = np.array(h0, dtype=np.float64)
    it = 0
    while True:
        Th, K = evaluate(h)
        b = Th - h
        theta, lo, hi, resid = relative_residual(b, beta)
        if resid < tol or it >= max_iter or not np.isfinite(resid):
            break
        h = h + tau * (b - b[ref])
        it += 1
    return NewtonResult(h, theta, (lo, hi), resid, it, resid < tol, K)


@dataclass
class _ClassChoice:
    solve_states: np.ndarray  # states on which the eigenvector is positive (sorted)
    recurrent: np.ndarray  # the dominant class
    notes: list[str]


_SupportClasses = tuple[sp.csr_matrix, np.ndarray, np.ndarray, ClassStructure]


def _support_classes(kernel: LogKernel, initial: np.ndarray) -> _SupportClasses:
    """Support graph of ``kernel``, the states reachable from the initial law and their
    strongly connected classes (no beta: the same for every kernel of one pattern)."""
    adj = kernel.adjacency()
    reach = reachable_from(adj, initial > 0)
    nodes = np.flatnonzero(reach)
    cs = class_structure(adj, nodes)
    for a in (adj.data, adj.indices, adj.indptr, reach, nodes, cs.labels, cs.nontrivial,
              cs.closed):
        a.setflags(write=False)  # kept on the model and shared by its solutions
    return adj, reach, nodes, cs


def _state_classes(mdp: TabularMDP, kernel: LogKernel) -> _SupportClasses:
    """:func:`_support_classes` of a state kernel of ``mdp``, kept on the model for the
    pattern of the first kernel it was asked for (i.e. for every kernel sharing its
    ``indptr``: those of :func:`state_log_kernel` without overflowed entries)."""
    indptr, classes = mdp.structure(
        "state_classes", lambda: (kernel.indptr, _support_classes(kernel, mdp.initial))
    )
    if indptr is kernel.indptr:
        return classes  # type: ignore[no-any-return]
    return _support_classes(kernel, mdp.initial)


def _choose_class(
    kernel: LogKernel,
    classes: _SupportClasses,
    beta: float,
    tol: float,
    max_iter: int,
) -> _ClassChoice:
    """Find the dominant strongly connected class reachable from the initial law
    (``classes``: :func:`_support_classes` of ``kernel``)."""
    adj, reach, nodes, cs = classes
    n = kernel.n
    notes: list[str] = []
    if nodes.size < n:
        notes.append(
            f"solved on the {nodes.size} of {n} states reachable from the initial distribution"
        )
    if cs.n_classes == 1:
        return _ClassChoice(nodes, nodes, notes)
    candidates = np.flatnonzero(cs.nontrivial)
    roots: dict[int, float] = {}
    if candidates.size == 1:
        best = int(candidates[0])
    else:
        for c in candidates:
            members = nodes[cs.labels == c]
            sub, _ = kernel.restrict(members)
            if members.size == 1:
                roots[int(c)] = float(sub.logw[0]) / beta
                continue
            res = newton_average(
                _kernel_evaluator(sub, beta), np.zeros(members.size), ref=0, beta=beta,
                tol=tol, max_iter=max_iter,
            )
            roots[int(c)] = res.theta
        best = max(roots, key=lambda c: roots[c])
        ordered = sorted(roots.values(), reverse=True)
        if abs(ordered[0] - ordered[1]) <= 1e-12 * max(1.0, abs(ordered[0])):
            notes.append(
                "degenerate Perron root: two classes share the largest root; the eigenvectors "
                "are not unique and the one on the first class is returned"
            )
    recurrent = nodes[cs.labels == best]
    # states whose eigenvector component is positive: those that can reach the class
    upstream = can_reach(adj, np.isin(np.arange(n), recurrent)) & reach
    solve_states = np.flatnonzero(upstream)
    if recurrent.size < nodes.size:
        notes.append(
            f"reducible: the dominant class has {recurrent.size} states"
            + f"; {nodes.size - solve_states.size} reachable states cannot reach it (u = 0)"
        )
    return _ClassChoice(solve_states, recurrent, notes)


#: below this stationary mass the linear-space stationary law loses relative accuracy
_LINEAR_MU_FLOOR = 1e-6
#: the log-space left solve (a second Newton run) is skipped above this class size
_LOG_LEFT_MAX_STATES = 20_000


def _log_left_vector(
    mdp: TabularMDP,
    beta: float,
    shift: float,
    recurrent: np.ndarray,
    log_nu0: np.ndarray,
    theta_shift: float,
    tol: float,
) -> np.ndarray | None:
    """``log nu`` on the recurrent class from ``nu Q = rho nu``, in log space.

    Writing ``nu = exp(beta g)``: ``g(s') + theta = (1/beta) log sum_s Q[s,s'] exp(beta g(s))``,
    the right problem of the transposed kernel, solved by the same Newton method and
    warm-started from the linear-space estimate. Returns ``None`` if it does not converge
    to the known root.
    """
    kern, _ = state_log_kernel(mdp, beta, shift).restrict(recurrent)
    transposed = LogKernel.from_entries(kern.cols, kern.row_of, kern.logw, kern.n)
    g0 = np.where(np.isfinite(log_nu0), log_nu0, np.min(log_nu0[np.isfinite(log_nu0)]) - 50.0)
    g0 = g0 / beta
    ref = int(np.argmax(g0))
    res = newton_average(
        _kernel_evaluator(transposed, beta), g0 - g0[ref], ref=ref, beta=beta, tol=tol,
        max_iter=100, max_blowups=_MAX_BLOWUPS,
    )
    # no Noda fallback here: on mazes the left vector's tiny masses (dead ends) keep it
    # from converging in 500 steps; the linear-space law is the fallback instead
    if not res.converged or abs(res.theta - theta_shift) > 1e-8 * max(1.0, abs(theta_shift)):
        return None
    return beta * res.h


def _anneal_if_better(
    res: NewtonResult,
    newton_at: Callable[[float, np.ndarray], NewtonResult],
    beta: float,
    reward_range: float,
    h0: np.ndarray,
    notes: list[str],
) -> NewtonResult:
    """After a failed Newton run: try :func:`_anneal`, keep whichever result is better."""
    annealed = _anneal(newton_at, beta, reward_range, h0)
    if not (annealed.converged or annealed.residual < res.residual):
        return res
    notes.append(
        "Newton and Noda iteration from the start stopped "
        f"({res.note or 'max_iter'}); solved by annealing beta"
    )
    annealed.iterations += res.iterations
    return annealed


def _newton_then_noda(
    kernel: LogKernel, beta: float, h0: np.ndarray, ref: int, tol: float, max_iter: int,
    notes: list[str], order: np.ndarray | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> NewtonResult:
    """The controlled Perron problem on one class: Newton (soft policy iteration), handed
    to Noda iteration when its residual overflows :data:`_MAX_BLOWUPS` times running."""
    res = newton_average(
        _kernel_evaluator(kernel, beta), h0, ref=ref, beta=beta, tol=tol, max_iter=max_iter,
        progress=progress, max_blowups=_MAX_BLOWUPS, order=order,
    )
    if not res.converged:
        res = _noda_if_better(res, kernel, beta, h0, ref, tol, notes, order, progress)
    return res


def _noda_if_better(
    res: NewtonResult, kernel: LogKernel, beta: float, h0: np.ndarray, ref: int, tol: float,
    notes: list[str], order: np.ndarray | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> NewtonResult:
    """After a failed Newton run: Noda iteration from ``h0`` (globally convergent on an
    irreducible class; :mod:`tiltrl.exact.noda`); keep whichever result is better.

    Soft policy iteration fails where an intermediate policy is nearly multichain: on a
    large grid with scattered resetting holes at beta=10 the second policy leaves some
    pockets with probability ~1e-5 per step, its relative values are ~1e4 and every later
    soft-greedy kernel underflows (Newton restarted even from Noda's iterate at residual
    1 blows up the same way). Noda iteration cannot overshoot, and its positive-inverse
    steps converge quadratically at the end, so it is run to the tolerance itself.
    """
    start = beta * h0
    offset = res.iterations  # Noda's steps continue the count
    noda = noda_perron(
        kernel, start - start[0], tol=tol, max_iter=_NODA_MAX_ITER, order=order,
        progress=None if progress is None else lambda it, r: progress(offset + it, r),
    )
    if not (noda.converged or noda.residual < res.residual):
        return res
    h = noda.h / beta
    out = NewtonResult(
        h - h[ref], noda.theta / beta, (noda.bracket[0] / beta, noda.bracket[1] / beta),
        noda.residual, res.iterations + noda.iterations, noda.converged, noda.kernel,
        noda.note,
    )
    if noda.converged:
        notes.append(f"Newton from the start stopped ({res.note or 'max_iter'}); "
                     "solved by Noda iteration")
    return out


def _anneal(
    newton_at: Callable[[float, np.ndarray], NewtonResult],
    beta: float,
    reward_range: float,
    h0: np.ndarray,
) -> NewtonResult:
    """Solve along ``beta_k = beta / 2^k`` upwards, each stage warm-started (continuation)."""
    start = min(beta / 2.0, 20.0 / max(reward_range, 1e-300))
    n_stages = max(1, int(np.ceil(np.log2(beta / start))))
    h = h0
    iterations = 0
    for b in np.geomspace(start, beta, n_stages + 1)[:-1]:
        stage = newton_at(float(b), h)
        iterations += stage.iterations
        if stage.converged:
            h = stage.h
    final = newton_at(beta, h)
    final.iterations += iterations
    return final


def _restricted_warm_start(
    warm: Solution | None, states: np.ndarray, beta: float
) -> np.ndarray:
    if warm is None or warm.v is None or warm.kind != "average":
        return np.zeros(states.size)
    h = np.asarray(warm.v, dtype=np.float64)[states]
    if not np.all(np.isfinite(h)):
        return np.zeros(states.size)
    # V scales like 1/beta' of the old solution; h is in reward units so reuse as is
    return h - h[0]


# ---------------------------------------------------------------------------- controlled
def solve_controlled(
    mdp: TabularMDP,
    beta: float,
    *,
    method: str = "newton",
    tol: float = 1e-10,
    max_iter: int | None = None,
    warm_start: Solution | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Solution:
    """Perron solution of the tilted matrix (optimal policy *and* dynamics).

    See :func:`tiltrl.solve` for the meaning of the result fields.
    """
    S, A = mdp.shape
    r_lo, r_hi = mdp.reward_range()
    shift = r_hi  # exponents beta (r - shift) <= 0: nothing can overflow
    kernel = state_log_kernel(mdp, beta, shift)
    if max_iter is None:
        max_iter = 200 if method == "newton" else 1_000_000
    choice = _choose_class(kernel, _state_classes(mdp, kernel), beta, tol, 200)
    states = choice.solve_states
    sub, _ = kernel.restrict(states)
    ref = int(np.searchsorted(states, choice.recurrent[0]))
    h0 = _restricted_warm_start(warm_start, states, beta)
    h0 = h0 - h0[ref]
    if method == "newton":
        order = _state_order(mdp, kernel, sub, states)
        res = _newton_then_noda(sub, beta, h0, ref, tol, max_iter, choice.notes, order,
                                progress)
        if not res.converged:
            # Noda did not converge either (a huge dynamic range of the Perron vector at
            # large beta): anneal, warm-starting from ever larger beta
            def newton_at(b: float, h_start: np.ndarray) -> NewtonResult:
                k_b, _ = state_log_kernel(mdp, b, shift).restrict(states)
                return _newton_then_noda(k_b, b, h_start, ref, tol, max_iter, [], order)

            res = _anneal_if_better(res, newton_at, beta, r_hi - r_lo, h0, choice.notes)
    elif method in ("power", "rvi"):
        res = _relative_value_iteration(
            _kernel_evaluator(sub, beta), h0, ref=ref, beta=beta, tol=tol, max_iter=max_iter
        )
    else:
        raise ValueError(f"unknown method {method!r} for controlled dynamics; "
                         "use 'newton' or 'power'")
    return _assemble_controlled(mdp, beta, shift, states, choice, res, method, tol)


def _assemble_controlled(
    mdp: TabularMDP,
    beta: float,
    shift: float,
    states: np.ndarray,
    choice: _ClassChoice,
    res: NewtonResult,
    method: str,
    tol: float = 1e-10,
) -> Solution:
    S, A = mdp.shape
    n = states.size
    h_full = np.full(S, -np.inf)
    h_full[states] = res.h
    log_rho_shift = beta * res.theta
    # stationary law of the driven state chain K*(s,s') = Q chi(s') / (rho chi(s))
    ref = int(np.searchsorted(states, choice.recurrent[0]))
    mu_sub = stationary_distribution(res.kernel, n, ref, res.lu)
    mu = np.zeros(S)
    mu[states] = mu_sub

    # per-transition quantities in log space
    rows = mdp.row_index()
    nxt = mdp.P.indices
    log_pi0 = log_prior(mdp)
    log_p = log_transitions(mdp)
    # log p + beta (r - shift) + beta h(s'); -inf towards states with u = 0
    z = log_p + beta * (mdp.reward_per_transition() - shift) + beta * h_full[nxt]
    log_bchi = row_logsumexp(z, mdp.P.indptr)  # log (B chi)(s,a)
    log_u = (log_bchi - log_rho_shift).reshape(S, A)
    live = np.isfinite(log_u)  # u(s,a) > 0
    log_chi = _logsumexp_rows(np.where(live, log_pi0 + np.where(live, log_u, 0.0), -np.inf))
    # normalisation: sum(v) = 1 and sum(u v) = 1 with v(s,a) = nu(s) pi0(a|s), nu ∝ mu/chi
    on = mu > 0
    log_nu = np.full(S, -np.inf)
    log_nu[on] = np.log(mu[on]) - log_chi[on]
    rec = choice.recurrent
    tiny_mass = rec.size > 1 and mu[rec].min() < _LINEAR_MU_FLOOR
    if tiny_mass and rec.size > _LOG_LEFT_MAX_STATES:
        choice.notes.append(
            "left eigenvector from the linear-space stationary law: components whose "
            "stationary mass is below ~1e-16 are not resolved (log_left there is inexact)"
        )
    elif tiny_mass:
        # mu is exact only to ~1e-16 absolute: solve the left problem nu Q = rho nu in log
        # space (Newton on the transposed kernel) so tiny components keep their digits
        refined = _log_left_vector(mdp, beta, shift, rec, log_nu[rec], res.theta, tol)
        if refined is not None:
            # scale nu so that sum(nu chi) = sum(mu) = 1, as on the linear path
            log_mu_rec = refined + log_chi[rec]
            log_nu = np.full(S, -np.inf)
            log_nu[rec] = refined - _logsumexp(log_mu_rec)
            mu = np.zeros(S)
            mu[rec] = np.exp(log_mu_rec - _logsumexp(log_mu_rec))
            on = mu > 0
    c = _logsumexp(log_nu[np.isfinite(log_nu)])
    log_nu -= c
    log_u = log_u + c  # sum(u v) = sum_s nu chi = exp(-c) before rescaling
    log_chi = log_chi + c
    log_left = log_nu[:, None] + log_pi0

    alive = np.isfinite(log_chi)
    policy = mdp.prior.copy()  # states that cannot reach the class: any policy, keep pi0
    lp = np.where(live, log_pi0 + np.where(live, log_u, 0.0), -np.inf)
    policy[alive] = np.exp(lp[alive] - log_chi[alive, None])
    stationary = mu[:, None] * policy

    # driven dynamics p*(s'|s,a) = p exp(beta r) chi(s') / (B chi)(s,a); rows with u = 0
    # keep the original dynamics
    live_rows = live.ravel()[rows]
    ok = live_rows & np.isfinite(z)
    log_pstar = np.full(z.shape, -np.inf)
    log_pstar[ok] = z[ok] - log_bchi[rows[ok]]
    pstar_data = np.where(live_rows, np.exp(log_pstar), mdp.P.data)
    driven = sp.csr_matrix((pstar_data, nxt.copy(), mdp.P.indptr.copy()), shape=mdp.P.shape)

    r_tr = mdp.reward_per_transition()
    d_rows = stationary.ravel()[rows]
    energy = float(np.sum(d_rows * pstar_data * r_tr))
    pos = ok & (pstar_data > 0)
    dyn_terms = np.zeros(z.shape)
    dyn_terms[pos] = pstar_data[pos] * (log_pstar[pos] - log_p[pos])
    dynamics_kl = float(np.sum(d_rows * dyn_terms))
    policy_kl = float(np.sum(mu * _policy_kl_rows(policy, log_pi0)))

    theta = res.theta + shift
    lo, hi = res.bracket
    notes = list(choice.notes)
    if res.note:
        notes.append(res.note)
    if not res.converged:
        msg = (
            f"controlled solver ({method}) did not converge at beta={beta:g}: residual "
            f"{res.residual:.3g} after {res.iterations} iterations; theta lies in "
            f"[{lo + shift:.12g}, {hi + shift:.12g}]"
        )
        notes.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    q = log_u / beta
    v = log_chi / beta
    return Solution(
        beta=beta,
        kind="average",
        dynamics="controlled",
        method=method,
        theta=float(theta),
        log_rho=float(beta * theta),
        policy=policy,
        q=q,
        v=v,
        log_u=log_u,
        log_left=log_left,
        stationary=stationary,
        driven_dynamics=driven,
        energy=energy,
        policy_kl=policy_kl,
        dynamics_kl=dynamics_kl,
        iterations=int(res.iterations),
        residual=float(res.residual),
        converged=bool(res.converged),
        bracket=(float(lo + shift), float(hi + shift)),
        recurrent_states=np.asarray(choice.recurrent),
        notes=tuple(notes),
    )


def _policy_kl_rows(policy: np.ndarray, log_pi0: np.ndarray) -> np.ndarray:
    """``KL(pi(.|s) || pi0(.|s))`` per state (0 log 0 = 0)."""
    pos = policy > 0
    terms = np.zeros(policy.shape)
    terms[pos] = policy[pos] * (np.log(policy[pos]) - log_pi0[pos])
    return terms.sum(axis=1)


def _logsumexp(x: np.ndarray) -> float:
    if x.size == 0:
        return -np.inf
    m = float(np.max(x))
    if not np.isfinite(m):
        return m
    return m + float(np.log(np.sum(np.exp(x - m))))


def _logsumexp_rows(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=1)
    safe = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        return safe + np.log(np.sum(np.exp(x - safe[:, None]), axis=1))


# ---------------------------------------------------------------------------- fixed
def _restricted_transitions(mdp: TabularMDP, states: np.ndarray) -> sp.csr_matrix:
    """Rows ``(s, a)`` and columns ``s'`` of ``P`` for ``s, s'`` in ``states`` (a closed set)."""
    A = mdp.n_actions
    sa_rows = (states[:, None] * A + np.arange(A)[None, :]).ravel()
    P_sub = sp.csr_matrix(mdp.P[sa_rows][:, states])
    P_sub.sort_indices()
    return P_sub


def _fixed_evaluator(mdp: TabularMDP, states: np.ndarray, beta: float, shift: float):  # type: ignore[no-untyped-def]
    """``T h(s) = (1/beta) log sum_a pi0 exp(beta (rbar(s,a) + E_p h))`` on ``states``."""
    S, A = mdp.shape
    n = states.size
    P_sub = _restricted_transitions(mdp, states)
    rbar = (mdp.reward[states] - shift).ravel()
    with np.errstate(divide="ignore"):
        log_pi0 = np.log(mdp.prior[states]).ravel()
    state_of_row = np.repeat(np.arange(n), A)
    indptr_sa = np.arange(0, n * A + 1, A)
    P_coo = P_sub.tocoo()

    def evaluate(h: np.ndarray):  # type: ignore[no-untyped-def]
        q = rbar + P_sub @ h
        y = log_pi0 + beta * q
        log_z = row_logsumexp(y, indptr_sa)
        pi = np.exp(y - log_z[state_of_row])
        # K(s,s') = sum_a pi(a|s) p(s'|s,a)
        return log_z / beta, (state_of_row[P_coo.row], P_coo.col, pi[P_coo.row] * P_coo.data)

    return evaluate


def solve_fixed(
    mdp: TabularMDP,
    beta: float,
    *,
    method: str = "newton",
    tol: float = 1e-10,
    max_iter: int | None = None,
    warm_start: Solution | None = None,
    progress: Callable[[int, float], None] | None = None,
) -> Solution:
    """Entropy-regularised average-reward optimum under the environment's dynamics."""
    S, A = mdp.shape
    r_lo, r_hi = mdp.reward_range()
    shift = r_hi
    # the support graph of the uniform-prior chain (dynamics are fixed, the policy is not)
    kernel = state_log_kernel(mdp, 1.0, 0.0)
    adj = kernel.adjacency()
    reach = reachable_from(adj, mdp.initial > 0)
    states = np.flatnonzero(reach)
    cs = class_structure(adj, states)
    notes: list[str] = []
    if states.size < S:
        notes.append(
            f"solved on the {states.size} of {S} states reachable from the initial distribution"
        )
    n_closed = int(cs.closed.sum())
    if n_closed > 1:
        raise ValueError(
            f"fixed dynamics: {n_closed} closed classes are reachable from the initial "
            "distribution, so the average reward depends on where the agent ends up "
            "(multichain). Use terminal='reset' to make the task continuing, or solve it "
            "with gamma=... or horizon=..."
        )
    recurrent = states[cs.labels == int(np.flatnonzero(cs.closed)[0])]
    ref = int(np.searchsorted(states, recurrent[0]))
    h0 = _restricted_warm_start(warm_start, states, beta)
    h0 = h0 - h0[ref]
    if max_iter is None:
        max_iter = 200 if method == "newton" else (100 if method == "mapping" else 1_000_000)

    if method == "newton":
        res = newton_average(
            _fixed_evaluator(mdp, states, beta, shift), h0, ref=ref, beta=beta, tol=tol,
            max_iter=max_iter, progress=progress,
        )
        if not res.converged:
            def newton_at(b: float, h_start: np.ndarray) -> NewtonResult:
                return newton_average(
                    _fixed_evaluator(mdp, states, b, shift), h_start, ref=ref, beta=b,
                    tol=tol, max_iter=max_iter,
                )

            res = _anneal_if_better(res, newton_at, beta, r_hi - r_lo, h0, notes)
            if not res.converged:
                rvi = _fixed_rvi(mdp, states, beta, shift, res.h, ref, tol, 200_000)
                if rvi.residual < res.residual:
                    notes.append("Newton did not converge; finished by relative value iteration")
                    rvi.iterations += res.iterations
                    res = rvi
    elif method == "rvi":
        res = _fixed_rvi(mdp, states, beta, shift, h0, ref, tol, max_iter)
    elif method == "mapping":
        res, outer_notes = _fixed_mapping(mdp, states, beta, shift, h0, ref, tol, max_iter)
        notes.extend(outer_notes)
    else:
        raise ValueError(
            f"unknown method {method!r} for fixed dynamics; use 'newton', 'mapping' or 'rvi'"
        )
    return _assemble_fixed(mdp, beta, shift, states, recurrent, ref, res, method, notes)


def _fixed_rvi(
    mdp: TabularMDP,
    states: np.ndarray,
    beta: float,
    shift: float,
    h0: np.ndarray,
    ref: int,
    tol: float,
    max_iter: int,
) -> NewtonResult:
    """Relative soft value iteration on the fixed-dynamics equation (DESIGN.md §2
    cross-check), with the aperiodicity transform ``tau = 1/2``."""
    return _relative_value_iteration(
        _fixed_evaluator(mdp, states, beta, shift), h0, ref=ref, beta=beta, tol=tol,
        max_iter=max_iter, tau=0.5,
    )


def _fixed_mapping(
    mdp: TabularMDP,
    states: np.ndarray,
    beta: float,
    shift: float,
    h0: np.ndarray,
    ref: int,
    tol: float,
    max_iter: int,
) -> tuple[NewtonResult, list[str]]:
    """The published constrained -> unconstrained iteration (Arriojas et al., UAI 2023).

    Given ``chi = exp(beta h)``: reference dynamics ``q(s'|s,a) ∝ p(s'|s,a) / chi(s')`` and
    reward ``r' = r + KL(p||q)/beta``; the controlled solution of ``(q, r')`` gives a new
    ``chi``. At the fixed point ``p* = p`` and ``chi`` solves the fixed-dynamics equation.
    Each inner solve is one warm-started Newton solve on the state problem.
    """
    S, A = mdp.shape
    n = states.size
    P_sub = _restricted_transitions(mdp, states)
    rows = np.repeat(np.arange(n * A), np.diff(P_sub.indptr))
    cols = P_sub.indices
    log_p = np.log(P_sub.data)
    rbar = (mdp.reward[states] - shift).ravel()
    with np.errstate(divide="ignore"):
        log_pi0 = np.log(mdp.prior[states]).ravel()
    s_of_row = rows // A
    h = np.array(h0, dtype=np.float64)
    notes: list[str] = []
    total_inner = 0
    res: NewtonResult | None = None
    outer = 0
    while outer < max_iter:
        outer += 1
        # q ∝ p / chi(s'), KL(p||q) = E_p[beta h] + log sum_s' p exp(-beta h(s'))
        lq_un = log_p - beta * h[cols]
        log_norm = row_logsumexp(lq_un, P_sub.indptr)
        log_q = lq_un - log_norm[rows]
        kl = np.bincount(rows, weights=P_sub.data * (log_p - log_q), minlength=n * A)
        r_mod = rbar + kl / beta
        # controlled state kernel for (q, r'): log sum_a pi0 q exp(beta r')
        w = log_pi0[rows] + log_q + beta * r_mod[rows]
        kern = LogKernel.from_entries(s_of_row, cols, w, n)
        res = newton_average(
            _kernel_evaluator(kern, beta), h, ref=ref, beta=beta, tol=tol, max_iter=200
        )
        total_inner += res.iterations
        # max KL(p*||p): p* ∝ q exp(beta r') chi(s') ∝ p chi(s')/chi_old(s')
        lp_star_un = log_p + beta * (res.h[cols] - h[cols])
        lp_star = lp_star_un - row_logsumexp(lp_star_un, P_sub.indptr)[rows]
        kl_star = np.bincount(rows, weights=np.exp(lp_star) * (lp_star - log_p), minlength=n * A)
        h = res.h
        if kl_star.max() < tol:
            break
    assert res is not None
    # report the residual of the *fixed-dynamics* equation at the final h
    evaluate = _fixed_evaluator(mdp, states, beta, shift)
    Th, K = evaluate(h)
    theta, lo, hi, resid = relative_residual(Th - h, beta)
    notes.append(f"mapping: {outer} outer iterations, {total_inner} inner Newton steps")
    converged = resid < max(tol, 1e3 * np.finfo(float).eps * max(1.0, beta * np.abs(h).max()))
    return NewtonResult(h, theta, (lo, hi), resid, outer, converged, K), notes


def _assemble_fixed(
    mdp: TabularMDP,
    beta: float,
    shift: float,
    states: np.ndarray,
    recurrent: np.ndarray,
    ref: int,
    res: NewtonResult,
    method: str,
    notes: list[str],
) -> Solution:
    S, A = mdp.shape
    n = states.size
    mu_sub = stationary_distribution(res.kernel, n, ref, res.lu)
    mu = np.zeros(S)
    mu[states] = mu_sub
    h_full = np.full(S, -np.inf)
    h_full[states] = res.h
    theta_shift = res.theta
    # Q + theta = rbar + E_p[V] (shifted rewards), V = h
    h_safe = np.where(np.isfinite(h_full), h_full, 0.0)
    q = mdp.reward - shift + (mdp.P @ h_safe).reshape(S, A) - theta_shift
    log_pi0 = log_prior(mdp)
    y = log_pi0 + beta * q
    log_z = _logsumexp_rows(y)
    with np.errstate(invalid="ignore"):
        policy = np.exp(y - log_z[:, None])
    unreached = ~np.isfinite(h_full)
    q[unreached] = -np.inf
    policy[unreached] = mdp.prior[unreached]
    v = np.where(unreached, -np.inf, log_z / beta)
    stationary = mu[:, None] * policy
    energy = float(np.sum(stationary * mdp.reward))
    policy_kl = float(np.sum(mu * _policy_kl_rows(policy, log_pi0)))
    theta = theta_shift + shift
    lo, hi = res.bracket
    if res.note:
        notes.append(res.note)
    if not res.converged:
        msg = (
            f"fixed-dynamics solver ({method}) did not converge at beta={beta:g}: residual "
            f"{res.residual:.3g} after {res.iterations} iterations"
        )
        notes.append(msg)
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    # the fixed-dynamics "eigenvector": u = exp(beta Q) is the right eigenvector of the
    # controlled problem with the mapped reward; report it in log form
    log_u = beta * q
    log_chi = beta * v
    log_nu = np.full(S, -np.inf)
    log_nu[mu > 0] = np.log(mu[mu > 0]) - log_chi[mu > 0]
    c = _logsumexp(log_nu[mu > 0])
    log_left = (log_nu - c)[:, None] + log_pi0
    return Solution(
        beta=beta,
        kind="average",
        dynamics="fixed",
        method=method,
        theta=float(theta),
        log_rho=float(beta * theta),
        policy=policy,
        q=q + c / beta,
        v=v + c / beta,
        log_u=log_u + c,
        log_left=log_left,
        stationary=stationary,
        driven_dynamics=mdp.P.copy(),
        energy=energy,
        policy_kl=policy_kl,
        dynamics_kl=0.0,
        iterations=int(res.iterations),
        residual=float(res.residual),
        converged=bool(res.converged),
        bracket=(float(lo + shift), float(hi + shift)),
        recurrent_states=np.asarray(recurrent),
        notes=tuple(notes),
    )
