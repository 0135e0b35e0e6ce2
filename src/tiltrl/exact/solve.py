"""One entry point for the exact solvers: :func:`solve`, and :func:`sweep` over beta.

Convention (DESIGN.md §1): rewards, ``beta > 0`` inverse temperature, objective
``r - (1/beta) log(pi/pi0)``; ``theta`` is the reward rate, ``log_rho = beta theta``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable

import numpy as np

from tiltrl._progress import progress_line
from tiltrl.exact.average import solve_controlled, solve_fixed
from tiltrl.exact.discounted import solve_discounted, solve_finite_horizon
from tiltrl.exact.result import Solution, Sweep
from tiltrl.mdp import TabularMDP, check_beta, check_gamma

__all__ = ["solve", "sweep"]

_DYNAMICS = ("controlled", "fixed")


def solve(
    mdp: TabularMDP,
    beta: float,
    *,
    dynamics: str | None = None,
    gamma: float | None = None,
    horizon: int | None = None,
    method: str = "auto",
    tol: float = 1e-10,
    max_iter: int | None = None,
    warm_start: Solution | None = None,
    progress: bool = False,
) -> Solution:
    """Solve an entropy-regularised MDP exactly.

    Parameters
    ----------
    mdp
        The model.
    beta
        Inverse temperature (> 0). Per-step objective ``r - (1/beta) log(pi/pi0)``.
    dynamics
        ``"controlled"``: optimise policy *and* dynamics (KL cost for changing them) —
        the Perron solution of the tilted matrix, i.e. the large-deviation / Doob answer;
        ``"fixed"``: the environment's own dynamics. Default: ``"controlled"`` for the
        average-reward problem, ``"fixed"`` when ``gamma`` or ``horizon`` is given (the
        standard soft-Q fixed point). For deterministic dynamics both coincide.
    gamma
        Discount factor in ``[0, 1)``: discounted soft value iteration.
    horizon
        Number of steps: finite-horizon backward recursion (``gamma`` then discounts it).
    method
        Average reward, controlled: ``"newton"`` (default; soft policy iteration on the
        ``S x S`` state problem, one sparse LU per step, log space) or ``"power"`` (log-space
        power iteration, for comparison). Fixed: ``"newton"`` (default), ``"mapping"``
        (the published constrained -> unconstrained iteration) or ``"rvi"`` (relative soft
        value iteration). Discounted: ``"newton"`` (default) or ``"vi"``.
    tol
        Relative eigen-residual ``max_i |(M u)_i / (rho u_i) - 1|`` (average reward) or
        ``beta * max|T V - V|`` (discounted).
    warm_start
        A previous :class:`Solution` (e.g. at a nearby beta) to start from.
    progress
        Print one line per Newton (or Noda) step (iteration and residual) to stderr;
        worth it on models with 1e5+ state-action pairs where one step takes seconds.

    Returns
    -------
    Solution
        Frozen result; see :class:`tiltrl.Solution`. Average-reward solutions satisfy
        ``theta = energy - (policy_kl + dynamics_kl) / beta``.

    Notes
    -----
    On a reducible model the solution lives on the dominant class reachable from
    ``mdp.initial`` (listed in ``recurrent_states`` and said in ``notes``). A solver that
    stops above ``tol`` returns ``converged=False`` and emits a ``ConvergenceWarning``;
    ``bracket`` then still bounds ``theta`` (Collatz-Wielandt).
    """
    beta = check_beta(beta)
    if not isinstance(mdp, TabularMDP):
        raise TypeError(f"mdp must be a TabularMDP, got {type(mdp).__name__}")
    if dynamics is None:
        dynamics = "controlled" if gamma is None and horizon is None else "fixed"
    if dynamics not in _DYNAMICS:
        raise ValueError(f"dynamics must be 'controlled' or 'fixed', got {dynamics!r}")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be positive and finite, got {tol!r}")
    if horizon is not None:
        g = 1.0 if gamma is None else check_gamma(gamma)
        return solve_finite_horizon(mdp, beta, horizon, dynamics=dynamics, gamma=g)
    if gamma is not None:
        g = check_gamma(gamma)
        m = "newton" if method == "auto" else method
        return solve_discounted(
            mdp, beta, g, dynamics=dynamics, method=m, tol=tol, max_iter=max_iter,
            warm_start=warm_start,
        )
    m = "newton" if method == "auto" else method
    report = _newton_reporter(beta) if progress else None
    if dynamics == "controlled":
        return solve_controlled(
            mdp, beta, method=m, tol=tol, max_iter=max_iter, warm_start=warm_start,
            progress=report,
        )
    return solve_fixed(
        mdp, beta, method=m, tol=tol, max_iter=max_iter, warm_start=warm_start,
        progress=report,
    )


def _newton_reporter(beta: float) -> Callable[[int, float], None]:
    start = time.perf_counter()

    def report(iteration: int, residual: float) -> None:
        elapsed = time.perf_counter() - start
        sys.stderr.write(
            f"  beta={beta:g} step {iteration:3d}  residual {residual:9.3e}  "
            f"{elapsed:7.2f} s\n"
        )
        sys.stderr.flush()

    return report


def sweep(
    mdp: TabularMDP,
    betas: Iterable[float],
    *,
    dynamics: str = "controlled",
    method: str = "auto",
    tol: float = 1e-10,
    progress: bool = False,
) -> Sweep:
    """Average-reward thermodynamic curves over ``betas``, each solve warm-started.

    Returns free energy (``-theta``), ``energy``, ``policy_kl`` and ``dynamics_kl`` per beta
    — the "free energy = energy - temperature x entropy production" decomposition.
    The betas are solved in increasing order (warm starts follow the annealing path) and
    reported in the order given.
    """
    beta_arr = np.array([check_beta(b) for b in betas], dtype=np.float64)
    if beta_arr.size == 0:
        raise ValueError("betas is empty")
    order = np.argsort(beta_arr, kind="stable")
    out = {k: np.zeros(beta_arr.size) for k in ("theta", "energy", "policy_kl", "dynamics_kl")}
    iters = np.zeros(beta_arr.size, dtype=np.int64)
    conv = np.zeros(beta_arr.size, dtype=bool)
    prev: Solution | None = None
    for n, i in enumerate(order):
        sol = solve(mdp, float(beta_arr[i]), dynamics=dynamics, method=method, tol=tol,
                    warm_start=prev)
        prev = sol
        out["theta"][i] = sol.theta
        out["energy"][i] = sol.energy
        out["policy_kl"][i] = sol.policy_kl
        out["dynamics_kl"][i] = sol.dynamics_kl
        iters[i] = sol.iterations
        conv[i] = sol.converged
        if progress:
            progress_line(n + 1, beta_arr.size, f"beta={beta_arr[i]:g} theta={sol.theta:.6g}")
    return Sweep(
        betas=beta_arr, iterations=iters, converged=conv, dynamics=dynamics, **out
    )
