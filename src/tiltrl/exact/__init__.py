"""Exact solvers: tilted-matrix (controlled) Perron solution, fixed-dynamics optimum,
soft value iteration (average-reward, discounted, finite horizon) and beta sweeps."""

from tiltrl.exact.result import Solution, Sweep
from tiltrl.exact.solve import solve, sweep

__all__ = ["Solution", "Sweep", "solve", "sweep"]
