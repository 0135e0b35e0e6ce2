"""Model-free tabular learners, vectorised over seeds, checked against the exact solutions.

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``beta > 0``; prior ``pi0``;
``theta`` is the reward rate. ``K`` independent learners run in lockstep on ``K`` copies
of an environment with one numpy update per step.

- :class:`SoftQLearner` -- discounted soft Q-learning (Haarnoja et al. 2017; Fox et al. 2016);
- :class:`BoundedSoftQLearner` -- soft Q-learning clipped by the soft Bellman bounds of
  :mod:`tiltrl.bounds` (Adamczyk et al., "Boosting soft Q-learning by bounding", 2024);
- :class:`ULearner` -- U-learning / tabular EVAL: ``log u`` and ``theta`` of the tilted
  matrix from transitions (Arriojas et al., PRR 2023; EVAL, arXiv 2501.09770);
- :class:`DifferentialSoftQLearner` -- average-reward soft Q-learning (Wan, Naik and
  Sutton, ICML 2021).

:func:`learn` is the one entry point; :mod:`tiltrl.agents.evaluate` measures errors
against :func:`tiltrl.solve`.
"""

from tiltrl.agents.bounded import BoundedSoftQLearner
from tiltrl.agents.differential import DifferentialSoftQLearner
from tiltrl.agents.evaluate import Curves, errors, eval_return, interval
from tiltrl.agents.learn import ALGOS, LearnResult, exact_reference, learn
from tiltrl.agents.sampler import GymSampler, MDPSampler, make_sampler
from tiltrl.agents.schedules import StepSize
from tiltrl.agents.soft_q import SoftQLearner
from tiltrl.agents.u_learning import ULearner

__all__ = [
    "ALGOS",
    "BoundedSoftQLearner",
    "Curves",
    "DifferentialSoftQLearner",
    "GymSampler",
    "LearnResult",
    "MDPSampler",
    "SoftQLearner",
    "StepSize",
    "ULearner",
    "errors",
    "eval_return",
    "exact_reference",
    "interval",
    "learn",
    "make_sampler",
]
