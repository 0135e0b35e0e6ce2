"""Prior solutions: reward shaping, composition and value bounds (exact, tabular).

One concept per module:

- :mod:`tiltrl.prior.shaping` -- ``Q~* = Q* + K*`` (discounted and average reward) and the
  lower bound ``Q* + E_{pi*}[sum gamma^t (r~ - r)]``; Adamczyk, Arriojas, Tiomkin and
  Kulkarni, AAAI 2023.
- :mod:`tiltrl.prior.compose` -- zero-shot ``f(Q)`` for ``f`` in convex / sum / OR / AND /
  soft-OR / NOT, its policy, the correction task, two-sided bounds from the extrema of
  ``kappa`` and the zero-shot regret bound; Adamczyk et al., UAI 2023; Haarnoja et al. 2018;
  Van Niekerk et al. 2019; Tasse, James and Rosman 2020.
- :mod:`tiltrl.prior.free_energy` -- average-reward free-energy view: Gibbs-Bogoliubov
  first-order bound and Perron-root comparison (Collatz-Wielandt) bounds.
- :mod:`tiltrl.prior.learning` -- use in learning: warm start, clipping with the
  composition bounds, and learning only the correction model-free.

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``beta > 0``; prior ``pi0``;
``theta`` the reward rate.
"""

from tiltrl.prior.compose import (
    COMPOSITIONS,
    Composition,
    ZeroShot,
    compose,
    compose_values,
    correction_task,
    solve_correction,
    zero_shot,
)
from tiltrl.prior.free_energy import PerronBounds, gibbs_bogoliubov_bound, perron_bounds
from tiltrl.prior.learning import learn_correction, warm_start
from tiltrl.prior.shaping import Shaping, shaping, shaping_lower_bound, shaping_task

__all__ = [
    "COMPOSITIONS",
    "Composition",
    "PerronBounds",
    "Shaping",
    "ZeroShot",
    "compose",
    "compose_values",
    "correction_task",
    "gibbs_bogoliubov_bound",
    "learn_correction",
    "perron_bounds",
    "shaping",
    "shaping_lower_bound",
    "shaping_task",
    "solve_correction",
    "warm_start",
    "zero_shot",
]
