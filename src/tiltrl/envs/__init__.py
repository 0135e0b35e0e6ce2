"""Environments as exact tabular models: grid worlds (DESIGN.md §4), gymnasium toy-text."""

from tiltrl.envs.gridworld import MAPS, gridworld, large_grid, random_maze
from tiltrl.envs.gym import from_gymnasium

__all__ = ["MAPS", "from_gymnasium", "gridworld", "large_grid", "random_maze"]
