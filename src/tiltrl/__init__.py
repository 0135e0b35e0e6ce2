"""tiltrl: entropy-regularised RL as non-equilibrium statistical mechanics.

The core object is the tilted matrix
``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r(s,a,s')) pi0(a'|s')`` (``shared/DESIGN.md``):
its Perron root gives the optimal entropy-regularised reward rate ``theta`` (and the
SCGF of the reward), its right eigenvector the optimal policy, its left eigenvector the
steady state.
"""

from tiltrl.envs.gridworld import MAPS, gridworld, large_grid, random_maze
from tiltrl.envs.gym import from_gymnasium
from tiltrl.exact import Solution, Sweep, solve, sweep
from tiltrl.mdp import TabularMDP

__version__ = "0.1.0"

__all__ = [
    "MAPS",
    "Solution",
    "Sweep",
    "TabularMDP",
    "from_gymnasium",
    "gridworld",
    "large_grid",
    "random_maze",
    "solve",
    "sweep",
]
