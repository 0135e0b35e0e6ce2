"""Deep soft agents on the stable-baselines3 interface (optional extra ``deep``).

- :class:`SoftDQN` — discounted soft Q-learning with a prior policy (Haarnoja et al.,
  ICML 2017).
- :class:`BoundedSoftDQN` — SoftDQN with soft Bellman bounds (Adamczyk et al.,
  "Boosting soft Q-learning by bounding", RLC 2024; DESIGN.md §5).
- :class:`EVAL` — eigenvector-based average-reward learning (Adamczyk et al., arXiv
  2501.09770; Arriojas et al., PRR 5, 023085, 2023).
- :class:`TabularEnv` — a gymnasium env (one-hot observations) from a ``TabularMDP``.

Importing this package imports torch and stable-baselines3
(``pip install 'tiltrl[deep]'``); ``import tiltrl`` never does.
"""

from tiltrl.deep.bounded import BoundedSoftDQN
from tiltrl.deep.eigen_eval import EVAL
from tiltrl.deep.policies import EnsembleLogUNetwork, EVALPolicy, SoftQPolicy
from tiltrl.deep.soft_dqn import SoftDQN
from tiltrl.deep.tabular_env import TabularEnv

__all__ = [
    "EVAL",
    "BoundedSoftDQN",
    "EVALPolicy",
    "EnsembleLogUNetwork",
    "SoftDQN",
    "SoftQPolicy",
    "TabularEnv",
]
