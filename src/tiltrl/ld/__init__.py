"""Large deviations of Markov chains, and the RL <-> statistical-mechanics dictionary.

The SCGF of an additive observable ``A_T = sum_t f(x_t, x_{t+1})`` of a chain ``P`` is
``Lambda(k) = log rho(P_k)`` with the tilted matrix ``P_k[x, y] = P[x, y] exp(k f(x, y))``:
the tilted matrix of ``shared/DESIGN.md`` for a one-action MDP with reward ``f`` at
``beta = k``. So every exact tool of :mod:`tiltrl.exact` is a large-deviation tool here.
"""

from tiltrl.ld.chain import JumpProcess, MarkovChain
from tiltrl.ld.cloning import (
    CloningResult,
    Extrapolation,
    cloning,
    cloning_extrapolate,
    extrapolate,
)
from tiltrl.ld.dictionary import MDPAsChain, from_mdp, pair_distribution, simulate_energy, to_mdp
from tiltrl.ld.observable import jump_and_state_values, transition_values
from tiltrl.ld.rate import RateFunction, legendre_fenchel, rate_function
from tiltrl.ld.scgf import (
    ScgfCurve,
    TiltedProcess,
    driven_process,
    scgf,
    scgf_curve,
    tilted,
)

__all__ = [
    "CloningResult",
    "Extrapolation",
    "JumpProcess",
    "MDPAsChain",
    "MarkovChain",
    "RateFunction",
    "ScgfCurve",
    "TiltedProcess",
    "cloning",
    "cloning_extrapolate",
    "driven_process",
    "extrapolate",
    "from_mdp",
    "jump_and_state_values",
    "legendre_fenchel",
    "pair_distribution",
    "rate_function",
    "scgf",
    "scgf_curve",
    "simulate_energy",
    "tilted",
    "to_mdp",
    "transition_values",
]
