"""The RL <-> large-deviation dictionary, as functions.

An MDP under its prior policy is a Markov chain on state-action pairs,
``P[(s,a), (s',a')] = p(s'|s,a) pi0(a'|s')``, and its reward ``r(s,a,s')`` is an additive
observable ``A_T = sum_t r(s_t, a_t, s_{t+1})``. The tilted matrix of that chain at ``k``
is *exactly* the tilted matrix ``M`` of ``shared/DESIGN.md`` §1 at ``beta = k``:

- SCGF of the reward: ``Lambda(beta) = log rho = beta * theta_controlled(beta)``;
- driven (Doob) process = the optimal controlled dynamics with the optimal policy:
  ``P*[(s,a),(s',a')] = p*(s'|s,a) pi*(a'|s')``;
- driven stationary law = ``u v``, the optimal stationary state-action distribution;
- ``Lambda'(beta)`` = the optimal energy ``E_d[r]``; the differential soft value
  ``Q = log(u)/beta`` is a conditional free energy (log of the tilted path weight that
  starts with ``(s, a)``, relative to the typical growth ``rho^T``).

References: Arriojas, Adamczyk, Tiomkin, Kulkarni, Phys. Rev. Research 5, 023085 (2023);
Chetrite & Touchette, Ann. Henri Poincaré 16, 2005 (2015); Todorov, PNAS 106 (2009).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from tiltrl.exact.result import Solution
from tiltrl.ld.chain import MarkovChain
from tiltrl.mdp import TabularMDP, check_beta

if TYPE_CHECKING:
    from tiltrl.ld.scgf import TiltedProcess

__all__ = ["MDPAsChain", "from_mdp", "to_mdp", "pair_distribution", "simulate_energy"]


@dataclass(frozen=True)
class MDPAsChain:
    """An MDP read as a large-deviation problem: the pair chain under a policy, the
    reward as its observable and (optionally) the tilt ``beta``.

    Unpacks as ``chain, f = from_mdp(mdp)``. ``scgf()`` / ``tilted()`` default to ``beta``.
    """

    chain: MarkovChain
    observable: sp.csr_matrix
    beta: float | None = None

    def __iter__(self) -> Iterator[Any]:
        return iter((self.chain, self.observable))

    def _k(self, k: float | None) -> float:
        if k is None:
            if self.beta is None:
                raise ValueError("give k, or build with from_mdp(mdp, beta)")
            return self.beta
        return float(k)

    def scgf(self, k: float | None = None) -> float:
        """``Lambda(k)`` of the reward (``= k theta_controlled(k)`` for ``k > 0``)."""
        from tiltrl.ld.scgf import scgf

        return float(scgf(self.chain, self.observable, self._k(k)))

    def tilted(self, k: float | None = None) -> TiltedProcess:
        """The tilted process: its driven chain is ``p*(s'|s,a) pi*(a'|s')``."""
        from tiltrl.ld.scgf import tilted

        return tilted(self.chain, self.observable, self._k(k))


def from_mdp(mdp: TabularMDP, beta: float | None = None, *, policy: Any = None) -> MDPAsChain:
    """The state-action chain of ``mdp`` under ``policy`` (default: its prior), with the
    reward as a transition observable.

    Returns an :class:`MDPAsChain` that unpacks as ``(chain, f)``: states are indexed
    ``s*A + a`` (the row order of ``mdp.P``),
    ``chain.P[(s,a),(s',a')] = p(s'|s,a) policy(a'|s')`` and
    ``f[(s,a),(s',a')] = r(s,a,s')``, so that ``scgf(chain, f, beta) = beta * theta`` of
    ``tiltrl.solve(mdp, beta)`` (controlled) when ``policy`` is the prior.
    The initial law is ``mdp.initial(s) policy(a|s)``. ``beta`` (optional) is kept as the
    default tilt of :meth:`MDPAsChain.scgf` and :meth:`MDPAsChain.tilted`.
    """
    S, A = mdp.shape
    pi = mdp.prior if policy is None else np.asarray(policy, dtype=np.float64)
    if pi.shape != (S, A):
        raise ValueError(f"policy must have shape (S, A) = {(S, A)}, got {pi.shape}")
    if beta is not None:
        beta = check_beta(beta)
    P = mdp.P
    rows = mdp.row_index()
    nxt = P.indices
    # every transition (s,a) -> s' fans out into (s', a') for the actions a' of pi
    big_rows = np.repeat(rows, A)
    big_cols = (np.repeat(nxt, A) * A + np.tile(np.arange(A), nxt.size))
    probs = np.repeat(P.data, A) * pi[np.repeat(nxt, A), np.tile(np.arange(A), nxt.size)]
    reward = np.repeat(mdp.reward_per_transition(), A)
    keep = probs > 0
    n = S * A
    chain_P = sp.csr_matrix((probs[keep], (big_rows[keep], big_cols[keep])), shape=(n, n))
    f = sp.csr_matrix((reward[keep], (big_rows[keep], big_cols[keep])), shape=(n, n))
    initial = (mdp.initial[:, None] * pi).ravel()
    return MDPAsChain(MarkovChain(chain_P, initial), f, beta)


def to_mdp(chain: MarkovChain, f: Any) -> TabularMDP:
    """The inverse reading: a chain and an observable as a one-action MDP with reward ``f``.

    ``tiltrl.solve(to_mdp(chain, f), k).log_rho == scgf(chain, f, k)`` for ``k > 0``.
    """
    from tiltrl.ld.observable import transition_values

    return chain.as_mdp(transition_values(chain, f))


def pair_distribution(sol: Solution) -> np.ndarray:
    """``u v`` of a controlled solution flattened to the pair chain's ``s*A + a`` order."""
    if sol.stationary is None:
        raise ValueError("the solution has no stationary distribution (average-reward only)")
    return np.asarray(sol.stationary).ravel()


def simulate_energy(
    mdp: TabularMDP, sol: Solution, *, steps: int = 10_000, n_chains: int = 16,
    seed: int | None = 0, burn_in: int = 1_000,
) -> tuple[float, float]:
    """Monte Carlo check of the energy: simulate the optimal (driven) process of a
    controlled solution — policy ``pi*`` and dynamics ``p*`` — and return the measured
    reward per step with its standard error over the ``n_chains`` independent chains.

    Compare with ``sol.energy`` (= ``Lambda'(beta)``). For a fixed-dynamics solution the
    environment's own dynamics are simulated instead (``p* = p``).
    """
    if sol.policy is None:
        raise ValueError("the solution has no policy")
    dynamics = sol.driven_dynamics if sol.driven_dynamics is not None else mdp.P
    pol_mdp = TabularMDP(dynamics, np.zeros(mdp.shape), mdp.prior, mdp.initial)
    chain, f = from_mdp(pol_mdp.with_reward(_reward_like(mdp, pol_mdp)), policy=sol.policy)
    traj = chain.sample(steps + burn_in, n_chains=n_chains, seed=seed)
    vals = f[traj[:, burn_in:-1].ravel(), traj[:, burn_in + 1:].ravel()]
    per_chain = np.asarray(vals).reshape(n_chains, steps).mean(axis=1)
    return float(per_chain.mean()), float(per_chain.std(ddof=1) / np.sqrt(n_chains))


def _reward_like(mdp: TabularMDP, target: TabularMDP) -> Any:
    """``mdp``'s reward ``r(s,a,s')`` on ``target``'s transition pattern (a subset)."""
    if mdp.transition_reward is None:
        return mdp.reward
    R = sp.csr_matrix(
        (mdp.reward_per_transition(), mdp.P.indices, mdp.P.indptr), shape=mdp.P.shape
    )
    vals = np.asarray(R[target.row_index(), target.P.indices]).ravel()
    return sp.csr_matrix((vals, target.P.indices, target.P.indptr), shape=target.P.shape)
