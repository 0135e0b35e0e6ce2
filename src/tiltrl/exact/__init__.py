"""Exact solvers: tilted-matrix (controlled) Perron solution, fixed-dynamics optimum,
soft value iteration (average-reward, discounted, finite horizon) and beta sweeps."""

from tiltrl.exact.average import ConvergenceWarning
from tiltrl.exact.result import Solution, Sweep
from tiltrl.exact.solve import solve, sweep
from tiltrl.exact.tilted import LogKernel, state_log_kernel, tilted_operator

__all__ = [
    "ConvergenceWarning",
    "LogKernel",
    "Solution",
    "Sweep",
    "solve",
    "state_log_kernel",
    "sweep",
    "tilted_operator",
]
