"""Grid worlds (DESIGN.md §4): exact transition probabilities and rewards."""

from __future__ import annotations

import math
from collections import deque

import numpy as np
import pytest

from tiltrl.envs.gridworld import (
    ACTION_NAMES,
    MAPS,
    grid_of,
    gridworld,
    large_grid,
    random_maze,
    render_ascii,
)


def p(mdp, s, a, s2):
    return float(mdp.P[s * mdp.n_actions + a, s2])


def row(mdp, s, a):
    """Non-zero outcomes of (s, a) as {s': prob}."""
    r = mdp.P.getrow(s * mdp.n_actions + a)
    return {int(j): float(v) for j, v in zip(r.indices, r.data, strict=True)}


def assert_stochastic(mdp):
    sums = np.asarray(mdp.P.sum(axis=1)).ravel()
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)
    assert mdp.P.shape == (mdp.n_states * mdp.n_actions, mdp.n_states)


def perron_rate(mdp, beta):
    """theta = log(rho)/beta of the dense tilted matrix (small models only)."""
    S, A = mdp.shape
    P = mdp.dense_transitions().reshape(S * A, S)
    M = (P * np.exp(beta * mdp.reward.reshape(S * A))[:, None])[:, :, None] * mdp.prior[None]
    rho = np.max(np.linalg.eigvals(M.reshape(S * A, S * A)).real)
    return math.log(rho) / beta


# ------------------------------------------------------------------ all maps, all variants
@pytest.mark.parametrize("name", sorted(MAPS))
@pytest.mark.parametrize("n_actions", [4, 5, 8, 9])
def test_rows_sum_to_one(name, n_actions):
    mdp = gridworld(name, n_actions=n_actions)
    assert_stochastic(mdp)
    rows = MAPS[name]
    assert mdp.shape == (len(rows) * len(rows[0]), n_actions)
    assert mdp.info["grid"] == rows
    assert mdp.info["action_names"] == ACTION_NAMES[n_actions]
    if name != "windycliff":
        assert_stochastic(gridworld(name, n_actions=n_actions, slippery=0.5))


def test_action_order_and_deltas():
    assert ACTION_NAMES[4] == ["left", "down", "right", "up"]
    assert ACTION_NAMES[5] == ["left", "down", "right", "up", "stay"]
    assert ACTION_NAMES[8][4:] == ["down-left", "down-right", "up-right", "up-left"]
    assert ACTION_NAMES[9][8] == "stay"
    mdp = gridworld("7x7holes", n_actions=9)
    assert mdp.info["action_deltas"] == [
        [0, -1],
        [1, 0],
        [0, 1],
        [-1, 0],
        [1, -1],
        [1, 1],
        [-1, 1],
        [-1, -1],
        [0, 0],
    ]


# ------------------------------------------------------------------ deterministic moves
def test_moves_off_grid_and_initial():
    mdp = gridworld("7x7holes")
    start = 1 * 7 + 3
    expected_initial = np.zeros(49)
    expected_initial[start] = 1.0
    np.testing.assert_array_equal(mdp.initial, expected_initial)
    assert mdp.is_deterministic
    assert row(mdp, start, 0) == {start - 1: 1.0}  # left
    assert row(mdp, start, 1) == {start + 7: 1.0}  # down
    assert row(mdp, start, 2) == {start + 1: 1.0}  # right
    assert row(mdp, start, 3) == {start - 7: 1.0}  # up
    assert row(mdp, 0, 0) == {0: 1.0}  # off the grid: stay
    assert row(mdp, 0, 3) == {0: 1.0}
    assert row(mdp, 48, 1) == {48: 1.0}
    assert row(mdp, 48, 2) == {48: 1.0}
    assert np.all(mdp.reward[start] == -1.0)


def test_hole_and_goal_reset_to_initial():
    mdp = gridworld("7x7holes")
    start, hole, goal = 10, 3 * 7 + 2, 5 * 7 + 3
    for a in range(4):
        assert row(mdp, hole, a) == {start: 1.0}
        assert row(mdp, goal, a) == {start: 1.0}
    np.testing.assert_array_equal(mdp.reward[hole], -1.5)
    np.testing.assert_array_equal(mdp.reward[goal], 0.0)
    other = gridworld("7x7holes", min_reward=-3.0, max_reward=2.0)
    np.testing.assert_array_equal(other.reward[hole], -3.0)
    np.testing.assert_array_equal(other.reward[goal], 2.0)


def test_rewards_by_tile_and_initial_over_floor():
    mdp = gridworld(["SFCN", "RHGW"])
    assert mdp.reward[:, 0].tolist() == [-1.0, -1.0, -0.5, -1.5, -1.0, -1.5, 0.0, -1.0]
    mdp = gridworld("FCN HGR", step_reward=-2.0, candy_reward=-0.25, nail_reward=-3.0)
    assert mdp.reward[:, 1].tolist() == [-2.0, -0.25, -3.0, -1.5, 0.0, -2.0]
    # no S tile: uniform over F (only one F here)
    np.testing.assert_array_equal(mdp.initial, [1, 0, 0, 0, 0, 0])
    mdp = gridworld(["FFH", "FGF"])
    np.testing.assert_allclose(mdp.initial, [0.25, 0.25, 0, 0.25, 0, 0.25])
    assert row(mdp, 2, 1) == {0: 0.25, 1: 0.25, 3: 0.25, 5: 0.25}  # hole: to initial


def test_walls_block_and_absorb():
    mdp = gridworld("9x9zigzag")
    start = 1 * 9 + 1
    assert row(mdp, start, 1) == {start: 1.0}  # (2,1) is a wall
    assert row(mdp, 1 * 9 + 6, 1) == {2 * 9 + 6: 1.0}  # (2,6) is floor
    wall = 2 * 9 + 0
    for a in range(4):
        assert row(mdp, wall, a) == {wall: 1.0}
    np.testing.assert_array_equal(mdp.reward[wall], -1.0)
    assert mdp.initial[wall] == 0.0
    assert mdp.P[:, wall].nnz == 4  # entered only from itself
    reset = gridworld("9x9zigzag", walls="reset")
    for a in range(4):
        assert row(reset, wall, a) == {start: 1.0}
    assert reset.P[:, wall].nnz == 0  # transient


def test_walls_with_diagonal_and_corner():
    mdp = gridworld(["SFW", "FWF", "FFG"], n_actions=8)
    # from (1,0) up-right -> (0,1) floor; right -> (1,1) wall: stay
    assert row(mdp, 3, 6) == {1: 1.0}
    assert row(mdp, 3, 2) == {3: 1.0}
    # from (0,1) down-right -> (1,2) floor (no corner cutting rule), down -> wall: stay
    assert row(mdp, 1, 5) == {5: 1.0}
    assert row(mdp, 1, 1) == {1: 1.0}


# ------------------------------------------------------------------ slippery
def test_slippery_formula():
    k = 0.5
    mdp = gridworld("7x7holes", slippery=k)
    main, side = (k + 1) / (3 + k), 1 / (3 + k)
    assert main == pytest.approx(3 / 7) and side == pytest.approx(2 / 7)
    s = 1 * 7 + 1
    out = row(mdp, s, 2)  # right: perpendicular are down and up
    assert out == pytest.approx({s + 1: main, s + 7: side, s - 7: side})
    out = row(mdp, 0, 0)  # corner, left: left and up stay, down moves
    assert out == pytest.approx({0: main + side, 7: side})
    # reward is that of the tile, whatever happens
    assert mdp.reward[s, 2] == -1.0
    # k = 0 via slippery=True: gymnasium's thirds
    third = gridworld("7x7holes", slippery=True)
    assert row(third, s, 3) == pytest.approx({s - 7: 1 / 3, s - 1: 1 / 3, s + 1: 1 / 3})
    assert gridworld("7x7holes", slippery=0).is_deterministic
    assert gridworld("7x7holes", slippery=None).is_deterministic
    with pytest.raises(ValueError, match="slippery"):
        gridworld("7x7holes", slippery=-0.1)


def test_slippery_diagonal_and_stay():
    k = 1.0
    mdp = gridworld("7x7holes", n_actions=9, slippery=k)
    s = 1 * 7 + 1
    # down-left slips to the diagonals at +-90 degrees: down-right and up-left
    assert row(mdp, s, 4) == pytest.approx({s + 6: 0.5, s + 8: 0.25, s - 8: 0.25})
    assert row(mdp, s, 8) == {s: 1.0}  # stay never slips


def test_stay_and_diagonal_costs():
    mdp = gridworld("7x7holes", n_actions=8)
    s = 1 * 7 + 1
    assert row(mdp, s, 4) == {s + 6: 1.0}  # down-left
    assert row(mdp, s, 5) == {s + 8: 1.0}  # down-right
    assert row(mdp, s, 6) == {s - 6: 1.0}  # up-right
    assert row(mdp, s, 7) == {s - 8: 1.0}  # up-left
    np.testing.assert_allclose(mdp.reward[s], [-1, -1, -1, -1, -1.4, -1.4, -1.4, -1.4])
    hole = 3 * 7 + 2
    np.testing.assert_array_equal(mdp.reward[hole], -1.5)  # no factor on resets
    five = gridworld(["SFC", "FNG"], n_actions=5)
    assert row(five, 0, 4) == {0: 1.0}
    np.testing.assert_allclose(five.reward[:, 4], [-1, -1, -0.5, -1, -1.5, 0])
    nine = gridworld(["SFC", "FNG"], n_actions=9, diagonal_factor=2.0)
    np.testing.assert_allclose(nine.reward[2], [-0.5] * 4 + [-1.0] * 4 + [-0.5])


# ------------------------------------------------------------------ wind
def test_windycliff_defaults_and_transitions():
    mdp = gridworld("windycliff")
    assert mdp.info["wind"] == pytest.approx([0.75 * math.pi, 0.7])
    assert mdp.info["min_reward"] == -5.0
    start = 4 * 3 + 1
    np.testing.assert_array_equal(mdp.initial, np.eye(15)[start])
    # F at (2,1): wind left 0.35 (into the hole column), down 0.35, none 0.3; then up
    assert row(mdp, 7, 3) == pytest.approx({4: 0.3, 3: 0.35, 7: 0.35})
    # then right
    assert row(mdp, 7, 2) == pytest.approx({8: 0.3, 7: 0.35, 11: 0.35})
    # F at (3,2): wind down blows onto R (4,2); then left -> S (4,1)
    assert row(mdp, 11, 0) == pytest.approx({10: 0.3, 9: 0.35, 13: 0.35})
    # S and R are wind-free
    assert row(mdp, start, 3) == {10: 1.0}
    assert row(mdp, 2, 0) == {1: 1.0}
    # hole: -5 and back to start; goal: 0 and back to start
    for a in range(4):
        assert row(mdp, 0, a) == {start: 1.0}
        assert row(mdp, 1, a) == {start: 1.0}
    np.testing.assert_array_equal(mdp.reward[0], -5.0)
    np.testing.assert_array_equal(mdp.reward[1], 0.0)
    np.testing.assert_array_equal(mdp.reward[7], -1.0)
    # explicit arguments win over the map's defaults
    calm = gridworld("windycliff", wind=None, min_reward=-1.5)
    assert calm.is_deterministic and calm.reward[0, 0] == -1.5
    assert calm.info["wind"] is None


def test_wind_with_action_success():
    mdp = gridworld("windycliff", action_success=0.9)
    # wind none 0.3 -> (2,1): up succeeds 0.27 -> (1,1), fails 0.03 -> (2,1)
    # wind left 0.35 -> (2,0): up 0.315 -> (1,0), fails 0.035 -> (2,0)
    # wind down 0.35 -> (3,1): up 0.315 -> (2,1), fails 0.035 -> (3,1)
    assert row(mdp, 7, 3) == pytest.approx({4: 0.27, 7: 0.345, 3: 0.315, 6: 0.035, 10: 0.035})
    per_action = gridworld("windycliff", action_success=[1.0, 1.0, 1.0, 0.0])
    assert row(per_action, 7, 3) == pytest.approx({7: 0.3, 6: 0.35, 10: 0.35})
    no_wind = gridworld("7x7holes", action_success=0.75)
    assert row(no_wind, 10, 0) == pytest.approx({9: 0.75, 10: 0.25})


def test_wind_formula():
    # phi = pi/3, w = 0.8: right w cos^2 = 0.2, down w sin^2 = 0.6, stay 0.2
    mdp = gridworld("FFF FSF FFF", n_actions=5, wind=(math.pi / 3, 0.8))
    assert row(mdp, 4, 4) == {4: 1.0}  # S is not windy
    assert row(mdp, 1, 4) == pytest.approx({2: 0.2, 4: 0.6, 1: 0.2})
    # angle pi: wind blows left with probability w
    mdp = gridworld("FFF FSF FFF", n_actions=5, wind=(math.pi, 0.5))
    assert row(mdp, 5, 4) == pytest.approx({4: 0.5, 5: 0.5})
    # angle -pi/2: up
    mdp = gridworld("FFF FSF FFF", n_actions=5, wind=(-math.pi / 2, 1.0))
    assert row(mdp, 7, 4) == pytest.approx({4: 1.0})
    assert row(mdp, 7, 1) == pytest.approx({7: 1.0})  # up by wind, then down
    with pytest.raises(ValueError, match="strength"):
        gridworld("7x7holes", wind=(0.0, 1.5))
    with pytest.raises(ValueError, match="slippery"):
        gridworld("7x7holes", wind=(0.0, 0.5), slippery=0.5)
    with pytest.raises(ValueError, match="slippery"):
        gridworld("windycliff", slippery=1.0)  # the map's own wind
    assert_stochastic(gridworld("windycliff", wind=None, slippery=1.0))


# ------------------------------------------------------------------ calibration, parsing
def test_calibration_7x7holes():
    """DESIGN.md §4: uniform prior, deterministic, beta=10 -> theta = -0.964515."""
    mdp = gridworld("7x7holes")
    assert perron_rate(mdp, 10.0) == pytest.approx(-0.964515, abs=5e-7)


def test_map_parsing_and_errors():
    a = gridworld("SFF FHG")
    b = gridworld(["SFF", "FHG"])
    c = gridworld("SFF\nFHG")
    assert a.info["grid"] == b.info["grid"] == c.info["grid"] == ["SFF", "FHG"]
    assert (a.P != b.P).nnz == 0
    assert b.info["name"] == "custom"
    assert gridworld("4x4").info["name"] == "4x4"
    with pytest.raises(ValueError, match="unknown map"):
        gridworld("no-such-map")
    with pytest.raises(ValueError, match="length"):
        gridworld(["SFF", "FH"])
    with pytest.raises(ValueError, match="unknown tiles"):
        gridworld(["SFX"])
    with pytest.raises(ValueError, match="n_actions"):
        gridworld("4x4", n_actions=6)
    with pytest.raises(ValueError, match="initial"):
        gridworld(["HG"])


def test_render_and_grid_of():
    mdp = gridworld("windycliff")
    assert render_ascii(mdp) == "HGR\nHFF\nHFF\nHFF\nHSR"
    assert grid_of(mdp).shape == (5, 3)
    right = np.tile([0.0, 0.0, 1.0, 0.0], (15, 1))
    assert render_ascii(mdp, right).splitlines()[4] == "H>>"


# ------------------------------------------------------------------ generators
def _bfs_reachable(grid, start):
    n_rows, n_cols = len(grid), len(grid[0])
    seen = {start}
    queue = deque([start])
    while queue:
        r, c = queue.popleft()
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            rr, cc = r + dr, c + dc
            if 0 <= rr < n_rows and 0 <= cc < n_cols and grid[rr][cc] != "W":
                if (rr, cc) not in seen:
                    seen.add((rr, cc))
                    queue.append((rr, cc))
    return seen


def test_random_maze_reference_setting():
    grids = []
    for seed in range(30):
        mdp = random_maze(7, 7, wall_prob=0.2, seed=seed, slippery=0.5)
        grid = mdp.info["grid"]
        grids.append(tuple(grid))
        assert grid[0][0] == "S" and grid[6][6] == "C"
        assert (6, 6) in _bfs_reachable(grid, (0, 0))
        assert mdp.info["slippery"] == 0.5
        assert mdp.reward[48, 0] == -0.5 and mdp.initial[0] == 1.0
        assert row(mdp, 48, 2) == pytest.approx(  # candy: right is blocked, not a reset
            {48: 3 / 7 + 2 / 7, 41: 2 / 7} if grid[5][6] != "W" else {48: 1.0}
        )
    assert len(set(grids)) == 30
    walls = sum(g.count("W") for grid in grids for g in grid)
    assert 0.1 < walls / (30 * 47) < 0.3
    again = random_maze(7, 7, wall_prob=0.2, seed=3, slippery=0.5)
    assert tuple(again.info["grid"]) == grids[3]
    assert (again.P != random_maze(7, 7, seed=3, slippery=0.5).P).nnz == 0


def test_random_maze_options():
    mdp = random_maze(5, 8, wall_prob=0.3, seed=1, goal_tile="G", start=(4, 0), goal=(0, 7))
    grid = mdp.info["grid"]
    assert grid[4][0] == "S" and grid[0][7] == "G"
    assert (0, 7) in _bfs_reachable(grid, (4, 0))
    assert row(mdp, 7, 0) == {32: 1.0}  # goal resets to the start
    with pytest.raises(RuntimeError, match="no maze"):
        random_maze(7, 7, wall_prob=0.95, seed=0, max_tries=5)
    with pytest.raises(ValueError, match="goal_tile"):
        random_maze(7, 7, goal_tile="H")


def test_large_grid_sizes():
    mdp = large_grid(40, 50)
    assert mdp.shape == (2000, 4) and mdp.nnz == 8000
    assert mdp.info["grid"][0][0] == "S" and mdp.info["grid"][-1][-1] == "G"
    assert mdp.initial[0] == 1.0
    assert row(mdp, 1999, 2) == {0: 1.0}
    big = large_grid(100, 100, n_actions=8, slippery=0.5, hole_fraction=0.1, seed=3)
    assert big.P.shape == (80_000, 10_000)
    assert_stochastic(big)
    holes = sum(r.count("H") for r in big.info["grid"])
    assert 800 < holes < 1200
    same = large_grid(100, 100, n_actions=8, slippery=0.5, hole_fraction=0.1, seed=3)
    assert same.info["grid"] == big.info["grid"]
