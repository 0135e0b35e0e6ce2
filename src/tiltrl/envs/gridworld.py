"""Grid worlds of the anchor papers ("modified frozen lake"), as exact tabular models.

Follows ``shared/DESIGN.md`` §4. The worlds are *continuing* (cyclic, never done): a hole
or a goal does not end an episode, it sends the agent back to the initial distribution.

Convention (DESIGN.md §1): rewards, not costs; index order *from -> to*; transitions are a
CSR matrix of shape ``(S*A, S)`` whose row ``s*A + a`` holds ``p(.|s,a)``. Every cell of the
map is a state (walls included), numbered row-major: ``s = row * n_cols + col``.

Tiles
-----
``S`` start, ``F`` floor, ``R`` wind-free floor, ``C`` candy, ``N`` nail, ``H`` hole,
``G`` goal, ``W`` wall.

* The reward depends on the tile the agent is ON (and on the action only through the
  diagonal factor): ``step_reward`` (-1) on ``S``/``F``/``R``, ``candy_reward`` (-0.5) on
  ``C``, ``nail_reward`` (-1.5) on ``N``. A diagonal move costs ``diagonal_factor`` (1.4)
  times the tile's reward.
* On ``H`` every action goes to the initial distribution with reward ``min_reward``; on
  ``G`` every action goes to the initial distribution with reward ``max_reward``.
* A move off the grid or into a ``W`` cell leaves the agent where it is. Only the cell the
  agent starts a step on matters: cells passed through within one step (e.g. the cell the
  wind blew the agent to before its own move) have no effect.
* Wall cells are unreachable states. By default (``walls="absorbing"``) every action in a
  wall cell stays there with the wall's floor reward (``step_reward``, diagonal factor
  applied), i.e. a wall behaves like a floor cell enclosed on all sides. Each wall cell is
  then a closed class of its own, which a Perron solver must ignore (restrict to the class
  reached from the initial distribution). ``walls="reset"`` instead sends every action in a
  wall cell to the initial distribution, which makes wall cells transient.
* The initial distribution is uniform over the ``S`` tiles, or over the ``F`` tiles if the
  map has no ``S``.

Actions
-------
``n_actions=4``: 0 left, 1 down, 2 right, 3 up (gymnasium FrozenLake order).
``n_actions=5``: those four and 4 stay.
``n_actions=8``: the four cardinal moves, then 4 down-left, 5 down-right, 6 up-right,
7 up-left (diagonal ``4+k`` lies between cardinal ``k`` and ``k+1 mod 4``).
``n_actions=9``: the eight moves and 8 stay.

Slippery and wind
-----------------
``slippery=k > 0``: the intended move happens with probability ``(k+1)/(3+k)`` and each of
the two perpendicular moves (the intended displacement rotated by +-90 degrees; for a
diagonal these are the two other diagonals next to it) with probability ``1/(3+k)``.
``slippery=0`` / ``None`` / ``False`` means deterministic; ``slippery=True`` means ``k=0``
(1/3 each, gymnasium's slippery FrozenLake). The stay action never slips.

``wind=(phi, w)``: on ``F`` tiles only (not ``S``, ``R``, ``C``, ``N``), the wind first
displaces the agent left with probability ``max(0, -sqrt(w) cos phi)^2``, down
``max(0, sqrt(w) sin phi)^2``, right ``max(0, sqrt(w) cos phi)^2``, up
``max(0, -sqrt(w) sin phi)^2`` and leaves it in place with the remaining ``1 - w``. Then the
intended move is made from the wind-displaced cell; it succeeds with probability
``action_success[a]`` (default 1), otherwise the agent stays where the wind put it. Wind
combined with slippery is not defined and raises ``ValueError``. ``action_success`` may
also be used without wind (failure = stay); with slippery the slippery move happens with
probability ``action_success[a]``. Wind components below 1e-12 (rounding of cos/sin at
multiples of pi/2) are treated as zero.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from tiltrl.mdp import TabularMDP

__all__ = [
    "ACTION_NAMES",
    "MAPS",
    "MAP_DEFAULTS",
    "TILES",
    "grid_of",
    "gridworld",
    "large_grid",
    "random_maze",
    "render_ascii",
]

#: Tile letters understood by :func:`gridworld`.
TILES = "SFHGWCNR"

#: Named layouts (rows top to bottom). ``7x7holes``, ``9x9zigzag`` and ``windycliff`` are
#: the anchor papers' maps (DESIGN.md §4); ``4x4`` and ``8x8`` are gymnasium's FrozenLake
#: layouts; ``cliff`` is the 4x12 cliff walk (holes between start and goal); ``fourrooms``
#: is an 11x11 four-rooms layout with doors.
MAPS: dict[str, list[str]] = {
    "4x4": ["SFFF", "FHFH", "FFFH", "HFFG"],
    "8x8": [
        "SFFFFFFF",
        "FFFFFFFF",
        "FFFHFFFF",
        "FFFFFHFF",
        "FFFHFFFF",
        "FHHFFFHF",
        "FHFFHFHF",
        "FFFHFFFG",
    ],
    "7x7holes": [
        "FFFFFFF",
        "FFFSFFF",
        "FFFFFFF",
        "FFHHHFF",
        "FFFFFFF",
        "FFFGFFF",
        "FFFFFFF",
    ],
    "9x9zigzag": [
        "FFFFFFFFF",
        "FSFFFFFFF",
        "WWWWWWFFF",
        "FFFFFFFFF",
        "FFFFFFFFF",
        "FFFFFFFFF",
        "FFFWWWWWW",
        "FFFFFFFGF",
        "FFFFFFFFF",
    ],
    "windycliff": ["HGR", "HFF", "HFF", "HFF", "HSR"],
    "cliff": [
        "FFFFFFFFFFFF",
        "FFFFFFFFFFFF",
        "FFFFFFFFFFFF",
        "SHHHHHHHHHHG",
    ],
    "fourrooms": [
        "FFFFFWFFFFF",
        "FSFFFWFFFFF",
        "FFFFFFFFFFF",
        "FFFFFWFFFFF",
        "FFFFFWFFFFF",
        "WFWWWWWWFWW",
        "FFFFFWFFFFF",
        "FFFFFWFFFFF",
        "FFFFFFFFFFF",
        "FFFFFWFFFGF",
        "FFFFFWFFFFF",
    ],
}

#: Parameters a named map brings with it, used when the caller leaves them at their default.
MAP_DEFAULTS: dict[str, dict[str, Any]] = {
    "windycliff": {"wind": (0.75 * math.pi, 0.7), "min_reward": -5.0},
}

# The nine primitive displacements (drow, dcol). Action sets index into this table.
_LEFT, _DOWN, _RIGHT, _UP = 0, 1, 2, 3
_STAY = 8
_DELTAS: tuple[tuple[int, int], ...] = (
    (0, -1),  # left
    (1, 0),  # down
    (0, 1),  # right
    (-1, 0),  # up
    (1, -1),  # down-left
    (1, 1),  # down-right
    (-1, 1),  # up-right
    (-1, -1),  # up-left
    (0, 0),  # stay
)
_DELTA_INDEX = {d: i for i, d in enumerate(_DELTAS)}
_PRIM_NAMES = (
    "left",
    "down",
    "right",
    "up",
    "down-left",
    "down-right",
    "up-right",
    "up-left",
    "stay",
)
_ACTION_SETS: dict[int, tuple[int, ...]] = {
    4: (0, 1, 2, 3),
    5: (0, 1, 2, 3, _STAY),
    8: (0, 1, 2, 3, 4, 5, 6, 7),
    9: (0, 1, 2, 3, 4, 5, 6, 7, _STAY),
}

#: Action names for each supported ``n_actions``.
ACTION_NAMES: dict[int, list[str]] = {
    n: [_PRIM_NAMES[i] for i in prims] for n, prims in _ACTION_SETS.items()
}

_STEP_TILES = b"SFRCN"


class _Default(enum.Enum):
    """Sentinel type: "use the map's default" (see :data:`MAP_DEFAULTS`)."""

    MAP = 0

    def __repr__(self) -> str:
        return "<map default>"


#: Sentinel meaning "the named map's default" (``min_reward=-1.5`` and no wind, except
#: where :data:`MAP_DEFAULTS` says otherwise).
MAP_DEFAULT = _Default.MAP


# ---------------------------------------------------------------------------- parsing
def _parse_map(layout: str | Sequence[str] | Sequence[Sequence[str]]) -> tuple[str, list[str]]:
    """Return ``(name, rows)`` for a map name, a list of rows, or one whitespace-separated
    string of rows."""
    if isinstance(layout, str):
        if layout in MAPS:
            return layout, list(MAPS[layout])
        rows = layout.split()
        if not rows or any(ch not in TILES for row in rows for ch in row):
            raise ValueError(
                f"unknown map {layout!r}: give a name in MAPS ({', '.join(sorted(MAPS))}) or "
                f"rows of tiles from {TILES!r} separated by spaces or newlines"
            )
        name = "custom"
    else:
        rows = [row if isinstance(row, str) else "".join(row) for row in layout]
        name = "custom"
    if not rows or not rows[0]:
        raise ValueError("the map is empty")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"map row {i} has length {len(row)}, expected {width}: {row!r}")
        bad = set(row) - set(TILES)
        if bad:
            raise ValueError(f"map row {i} has unknown tiles {sorted(bad)}; allowed: {TILES!r}")
    return name, rows


def _tiles_array(rows: list[str]) -> np.ndarray:
    """Tile codes (uint8 ASCII) of shape ``(n_rows, n_cols)``."""
    buf = "".join(rows).encode("ascii")
    return np.frombuffer(buf, dtype=np.uint8).reshape(len(rows), len(rows[0]))


# ---------------------------------------------------------------------------- options
def _slip_k(slippery: Any) -> float | None:
    """``None`` for deterministic moves, else the slippery parameter ``k >= 0``."""
    if slippery is None or slippery is False:
        return None
    if slippery is True:
        return 0.0
    k = float(slippery)
    if not math.isfinite(k) or k < 0:
        raise ValueError(f"slippery must be a finite number >= 0, got {slippery!r}")
    return None if k == 0.0 else k


def _wind_probs(wind: Any) -> np.ndarray | None:
    """Wind displacement probabilities ``[left, down, right, up, stay]`` or ``None``."""
    if wind is None:
        return None
    try:
        phi, w = (float(x) for x in wind)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"wind must be a pair (angle, strength), got {wind!r}") from exc
    if not (math.isfinite(phi) and math.isfinite(w)) or w < 0 or w > 1:
        raise ValueError(f"wind strength must be in [0, 1] (got {w!r}); angle {phi!r}")
    sw = math.sqrt(w)
    c, s = sw * math.cos(phi), sw * math.sin(phi)
    probs = np.array([max(0.0, -c) ** 2, max(0.0, s) ** 2, max(0.0, c) ** 2, max(0.0, -s) ** 2])
    # cos/sin rounding at multiples of pi/2 (e.g. sin(pi) = 1.2e-16) must not create
    # spurious outcomes of probability ~1e-32: such components count as no wind
    probs[probs < 1e-12] = 0.0
    stay = 1.0 - probs.sum()
    if stay < -1e-12:  # pragma: no cover - impossible for w <= 1, kept as a guard
        raise ValueError(f"wind {wind!r} gives displacement probabilities summing above 1")
    return np.append(probs, max(stay, 0.0))


def _success(action_success: Any, n_actions: int) -> np.ndarray:
    if action_success is None:
        return np.ones(n_actions)
    arr = np.asarray(action_success, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n_actions, float(arr))
    if arr.shape != (n_actions,):
        raise ValueError(
            f"action_success must be a scalar or have shape ({n_actions},), got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)) or np.any(arr < 0) or np.any(arr > 1):
        raise ValueError(f"action_success must lie in [0, 1], got {arr.tolist()}")
    return arr


def _move_kernel(prim: int, k: float | None, success: float) -> list[tuple[int, float]]:
    """Distribution over primitive displacements for one action: ``[(prim, prob)]``."""
    if prim == _STAY:
        return [(_STAY, 1.0)]
    dr, dc = _DELTAS[prim]
    if k is None:
        out = [(prim, success)]
    else:
        perp1 = _DELTA_INDEX[(dc, -dr)]
        perp2 = _DELTA_INDEX[(-dc, dr)]
        p_side = 1.0 / (3.0 + k)
        p_main = (k + 1.0) / (3.0 + k)
        out = [(prim, success * p_main), (perp1, success * p_side), (perp2, success * p_side)]
    if success < 1.0:
        out.append((_STAY, 1.0 - success))
    return [(m, p) for m, p in out if p > 0.0]


def _destinations(tiles: np.ndarray) -> np.ndarray:
    """``dest[m, cell]``: the cell reached by primitive move ``m`` (blocked moves stay)."""
    n_rows, n_cols = tiles.shape
    cells = np.arange(n_rows * n_cols)
    row, col = np.divmod(cells, n_cols)
    wall = (tiles == ord("W")).ravel()
    dest = np.empty((len(_DELTAS), cells.size), dtype=np.int64)
    for m, (dr, dc) in enumerate(_DELTAS):
        r2, c2 = row + dr, col + dc
        inside = (r2 >= 0) & (r2 < n_rows) & (c2 >= 0) & (c2 < n_cols)
        target = np.where(inside, r2 * n_cols + c2, cells)
        ok = inside & ~wall[target]
        dest[m] = np.where(ok, target, cells)
    return dest


# ---------------------------------------------------------------------------- builder
def gridworld(
    map: str | Sequence[str],
    *,
    min_reward: float | _Default = MAP_DEFAULT,
    max_reward: float = 0.0,
    slippery: float | bool | None = 0,
    n_actions: int = 4,
    wind: tuple[float, float] | None | _Default = MAP_DEFAULT,
    action_success: float | Sequence[float] | None = None,
    step_reward: float = -1.0,
    candy_reward: float = -0.5,
    nail_reward: float = -1.5,
    diagonal_factor: float = 1.4,
    walls: str = "absorbing",
    prior: Any = None,
    name: str | None = None,
) -> TabularMDP:
    """Build a cyclic ("modified frozen lake") grid world as a :class:`TabularMDP`.

    Semantics follow ``shared/DESIGN.md`` §4; see the module docstring for the tiles,
    action order, slippery and wind rules. States are cells, row-major
    (``s = row * n_cols + col``); transitions are CSR ``(S*A, S)`` with row ``s*A + a``
    holding ``p(.|s,a)``; the reward is ``r(s,a)`` (it depends on the tile the agent is on).

    Parameters
    ----------
    map
        A name in :data:`MAPS`, a list of equal-length row strings, or one string whose rows
        are separated by spaces or newlines.
    min_reward
        Reward for any action on a hole ``H`` (which then resets). Default ``-1.5``, or the
        named map's value from :data:`MAP_DEFAULTS` (``windycliff``: ``-5``).
    max_reward
        Reward for any action on a goal ``G`` (which then resets).
    slippery
        ``k > 0``: intended move with probability ``(k+1)/(3+k)``, each perpendicular move
        ``1/(3+k)``. ``0``/``None``/``False``: deterministic. ``True``: ``k = 0``.
    n_actions
        4, 5 (adds stay), 8 (adds diagonals) or 9 (diagonals and stay).
    wind
        ``(angle, strength)`` with strength in ``[0, 1]``, acting on ``F`` tiles before the
        move; ``None`` for no wind. Default: none, or the named map's wind
        (``windycliff``: ``(0.75*pi, 0.7)``).
    action_success
        Probability that the move is executed (scalar or one per action); otherwise the
        agent stays (where the wind put it).
    step_reward, candy_reward, nail_reward
        Rewards on ``S``/``F``/``R`` (and walls), ``C`` and ``N`` tiles.
    diagonal_factor
        Multiplier of the tile reward for diagonal actions.
    walls
        ``"absorbing"`` (every action in a wall cell stays, reward as on floor) or
        ``"reset"`` (every action in a wall cell goes to the initial distribution).
    prior
        Prior policy ``pi0[s, a]`` passed to :class:`TabularMDP` (default uniform).
    name
        Name stored in ``info`` (default: the map name, or ``"custom"``).

    Returns
    -------
    TabularMDP
        With ``info`` holding ``name``, ``grid`` (row strings), ``n_actions``,
        ``action_names``, ``action_deltas`` (``[drow, dcol]``), ``slippery``, ``wind``,
        ``action_success``, ``min_reward``, ``max_reward``, ``tile_rewards`` and ``walls``.

    Examples
    --------
    >>> mdp = gridworld("7x7holes")
    >>> mdp.shape
    (49, 4)
    """
    map_name, rows = _parse_map(map)
    defaults = MAP_DEFAULTS.get(map_name, {}) if isinstance(map, str) else {}
    min_r = float(defaults.get("min_reward", -1.5) if min_reward is MAP_DEFAULT else min_reward)
    wind_arg = defaults.get("wind") if wind is MAP_DEFAULT else wind

    if n_actions not in _ACTION_SETS:
        raise ValueError(f"n_actions must be 4, 5, 8 or 9, got {n_actions!r}")
    if walls not in ("absorbing", "reset"):
        raise ValueError(f"walls must be 'absorbing' or 'reset', got {walls!r}")
    k = _slip_k(slippery)
    wind_p = _wind_probs(wind_arg)
    if wind_p is not None and k is not None:
        raise ValueError(
            "wind and slippery together are not defined; pass wind=None or slippery=0"
            + (f" (map {map_name!r} has wind by default)" if wind is MAP_DEFAULT else "")
        )
    prims = _ACTION_SETS[n_actions]
    A = n_actions
    success = _success(action_success, A)
    for label, val in (
        ("min_reward", min_r),
        ("max_reward", max_reward),
        ("step_reward", step_reward),
        ("candy_reward", candy_reward),
        ("nail_reward", nail_reward),
        ("diagonal_factor", diagonal_factor),
    ):
        if not math.isfinite(float(val)):
            raise ValueError(f"{label} must be finite, got {val!r}")

    tiles = _tiles_array(rows)
    n_rows, n_cols = tiles.shape
    S = n_rows * n_cols
    flat = tiles.ravel()

    # initial distribution: uniform over S tiles, else over F tiles
    init_cells = np.flatnonzero(flat == ord("S"))
    if init_cells.size == 0:
        init_cells = np.flatnonzero(flat == ord("F"))
    if init_cells.size == 0:
        raise ValueError("the map has neither S nor F tiles: no initial distribution")
    initial = np.zeros(S)
    initial[init_cells] = 1.0 / init_cells.size
    init_p = initial[init_cells]

    dest = _destinations(tiles)
    step_cells = np.flatnonzero(np.isin(flat, np.frombuffer(_STEP_TILES, dtype=np.uint8)))
    wall_cells = np.flatnonzero(flat == ord("W"))
    reset_cells = np.flatnonzero((flat == ord("H")) | (flat == ord("G")))
    if walls == "reset":
        reset_cells = np.union1d(reset_cells, wall_cells)

    rows_l: list[np.ndarray] = []
    cols_l: list[np.ndarray] = []
    data_l: list[np.ndarray] = []

    # wind components per step cell: (primitive displacement, probability per step cell)
    wind_parts: list[tuple[int, np.ndarray]]
    if wind_p is None:
        wind_parts = [(_STAY, np.ones(step_cells.size))]
    else:
        windy = flat[step_cells] == ord("F")
        wind_parts = []
        for j, prim_w in enumerate((_LEFT, _DOWN, _RIGHT, _UP, _STAY)):
            prob = np.where(windy, wind_p[j], 1.0 if prim_w == _STAY else 0.0)
            wind_parts.append((prim_w, prob))

    for prim_w, w_prob in wind_parts:
        mask = w_prob > 0.0
        if not mask.any():
            continue
        cells = step_cells[mask]
        wp = w_prob[mask]
        c1 = dest[prim_w, cells]
        for a, prim in enumerate(prims):
            row_idx = cells * A + a
            for m, q in _move_kernel(prim, k, float(success[a])):
                rows_l.append(row_idx)
                cols_l.append(dest[m, c1])
                data_l.append(wp * q)

    # holes and goals (and walls with walls="reset"): every action -> initial distribution
    if reset_cells.size:
        base = (reset_cells[:, None] * A + np.arange(A)[None, :]).ravel()
        rows_l.append(np.repeat(base, init_cells.size))
        cols_l.append(np.tile(init_cells, base.size))
        data_l.append(np.tile(init_p, base.size))
    if walls == "absorbing" and wall_cells.size:
        rows_l.append((wall_cells[:, None] * A + np.arange(A)[None, :]).ravel())
        cols_l.append(np.repeat(wall_cells, A))
        data_l.append(np.ones(wall_cells.size * A))

    P = sp.coo_matrix(
        (np.concatenate(data_l), (np.concatenate(rows_l), np.concatenate(cols_l))),
        shape=(S * A, S),
    ).tocsr()  # duplicates (e.g. several blocked moves staying put) are summed

    # rewards r(s, a) from the tile the agent is on
    tile_reward = np.full(S, float(step_reward))
    tile_reward[flat == ord("C")] = candy_reward
    tile_reward[flat == ord("N")] = nail_reward
    diag = np.array([diagonal_factor if 4 <= p <= 7 else 1.0 for p in prims])
    r = tile_reward[:, None] * diag[None, :]
    r[flat == ord("H"), :] = min_r
    r[flat == ord("G"), :] = max_reward
    if walls == "reset":
        r[wall_cells, :] = step_reward

    info = {
        "name": name if name is not None else map_name,
        "grid": list(rows),
        "n_actions": A,
        "action_names": list(ACTION_NAMES[A]),
        "action_deltas": [list(_DELTAS[p]) for p in prims],
        "slippery": None if k is None else k,
        "wind": None if wind_arg is None else [float(x) for x in wind_arg],
        "action_success": success.tolist(),
        "min_reward": min_r,
        "max_reward": float(max_reward),
        "tile_rewards": {
            "S": float(step_reward),
            "F": float(step_reward),
            "R": float(step_reward),
            "W": float(step_reward),
            "C": float(candy_reward),
            "N": float(nail_reward),
            "H": min_r,
            "G": float(max_reward),
        },
        "diagonal_factor": float(diagonal_factor),
        "walls": walls,
    }
    return TabularMDP(P, r, prior, initial, info=info)


# ---------------------------------------------------------------------------- generators
def large_grid(
    n_rows: int,
    n_cols: int,
    *,
    n_actions: int = 4,
    slippery: float | bool | None = 0,
    hole_fraction: float = 0.0,
    seed: int | None = 0,
    **kwargs: Any,
) -> TabularMDP:
    """An open ``n_rows x n_cols`` grid world for scaling tests.

    Start ``S`` in the top-left corner, goal ``G`` in the bottom-right corner, floor
    elsewhere, no walls; each other cell is a hole ``H`` independently with probability
    ``hole_fraction`` (holes reset, so the goal may be cut off by a line of holes; nothing
    guarantees a hole-free path). The build is vectorised: a 500 x 500 grid with 4 actions
    (1e6 state-action pairs) takes about a second.

    Parameters
    ----------
    n_rows, n_cols
        Grid size (at least 2 cells).
    n_actions, slippery
        As in :func:`gridworld`.
    hole_fraction
        Probability that a cell other than start and goal is a hole.
    seed
        Seed of the hole pattern (``numpy.random.default_rng``).
    **kwargs
        Passed on to :func:`gridworld` (rewards, ``wind``, ``prior``...).
    """
    n_rows, n_cols = int(n_rows), int(n_cols)
    if n_rows < 1 or n_cols < 1 or n_rows * n_cols < 2:
        raise ValueError(f"large_grid needs at least 2 cells, got {n_rows}x{n_cols}")
    if not 0.0 <= hole_fraction <= 1.0:
        raise ValueError(f"hole_fraction must be in [0, 1], got {hole_fraction!r}")
    codes = np.full((n_rows, n_cols), ord("F"), dtype=np.uint8)
    if hole_fraction > 0:
        rng = np.random.default_rng(seed)
        codes[rng.random((n_rows, n_cols)) < hole_fraction] = ord("H")
    codes[0, 0] = ord("S")
    codes[-1, -1] = ord("G")
    rows = [bytes(r).decode("ascii") for r in codes]
    kwargs.setdefault("name", f"large{n_rows}x{n_cols}")
    return gridworld(rows, n_actions=n_actions, slippery=slippery, **kwargs)


def _connected(open_cells: np.ndarray, a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether cells ``a`` and ``b`` are joined by a 4-neighbour path through open cells."""
    from scipy import ndimage

    labels, _ = ndimage.label(open_cells)  # default structure: 4-connectivity
    return bool(labels[a] != 0 and labels[a] == labels[b])


def random_maze(
    n_rows: int,
    n_cols: int,
    *,
    wall_prob: float = 0.2,
    seed: int | None = None,
    slippery: float | bool | None = 0.0,
    start: tuple[int, int] = (0, 0),
    goal: tuple[int, int] | str = "far",
    goal_tile: str = "C",
    max_tries: int = 10_000,
    **kwargs: Any,
) -> TabularMDP:
    """A seeded random maze: each cell is a wall with probability ``wall_prob``.

    The reference setting (30 random 7x7 mazes, REFERENCES) is
    ``random_maze(7, 7, wall_prob=0.2, seed=i, slippery=0.5)``: start ``S`` at ``(0, 0)``,
    a candy ``C`` (reward -0.5 per step on it, *not* resetting) at the far corner, -1 per
    step elsewhere.

    Reachability is guaranteed by rejection: wall patterns are redrawn (from the same
    seeded generator, so the result is reproducible) until the target is joined to the
    start by a 4-neighbour path of open cells; start and target are never walls.
    Open cells cut off from the start are kept as floor (they are closed classes the
    agent never reaches).

    Parameters
    ----------
    n_rows, n_cols
        Maze size.
    wall_prob
        Probability that a cell is a wall, in ``[0, 1)``.
    seed
        Seed for ``numpy.random.default_rng``; ``None`` draws a fresh maze.
    slippery
        As in :func:`gridworld`.
    start
        ``(row, col)`` of the start tile (negative indices count from the end).
    goal
        ``(row, col)`` of the target, or ``"far"`` for the corner opposite ``(0, 0)``,
        i.e. ``(n_rows-1, n_cols-1)``.
    goal_tile
        ``"C"`` (candy, the reference) or ``"G"`` (goal: resets with ``max_reward``).
    max_tries
        Give up (``RuntimeError``) after this many rejected wall patterns.
    **kwargs
        Passed on to :func:`gridworld` (``n_actions``, rewards, ``prior``...).
    """
    n_rows, n_cols = int(n_rows), int(n_cols)
    if n_rows < 1 or n_cols < 1 or n_rows * n_cols < 2:
        raise ValueError(f"random_maze needs at least 2 cells, got {n_rows}x{n_cols}")
    if not 0.0 <= wall_prob < 1.0:
        raise ValueError(f"wall_prob must be in [0, 1), got {wall_prob!r}")
    if goal_tile not in ("C", "G"):
        raise ValueError(f"goal_tile must be 'C' or 'G', got {goal_tile!r}")
    if isinstance(goal, str):
        if goal != "far":
            raise ValueError(f"goal must be (row, col) or 'far', got {goal!r}")
        goal = (n_rows - 1, n_cols - 1)
    for label, raw in (("start", start), ("goal", goal)):
        if not (-n_rows <= int(raw[0]) < n_rows and -n_cols <= int(raw[1]) < n_cols):
            raise ValueError(f"{label} {tuple(raw)} is outside the {n_rows}x{n_cols} grid")
    st = (int(start[0]) % n_rows, int(start[1]) % n_cols)
    gl = (int(goal[0]) % n_rows, int(goal[1]) % n_cols)
    if st == gl:
        raise ValueError("start and goal must be different cells")
    rng = np.random.default_rng(seed)
    for _ in range(max_tries):
        wall = rng.random((n_rows, n_cols)) < wall_prob
        wall[st] = False
        wall[gl] = False
        if _connected(~wall, st, gl):
            break
    else:
        raise RuntimeError(
            f"no maze with a path from {st} to {gl} in {max_tries} draws "
            f"(wall_prob={wall_prob}); lower wall_prob"
        )
    codes = np.where(wall, ord("W"), ord("F")).astype(np.uint8)
    codes[st] = ord("S")
    codes[gl] = ord(goal_tile)
    rows = [bytes(r).decode("ascii") for r in codes]
    kwargs.setdefault("name", f"maze{n_rows}x{n_cols}" + ("" if seed is None else f"-{seed}"))
    return gridworld(rows, slippery=slippery, **kwargs)


# ---------------------------------------------------------------------------- display
def grid_of(mdp: TabularMDP | Mapping[str, Any]) -> np.ndarray:
    """Tile layout of a grid-world model as a ``(n_rows, n_cols)`` array of 1-char strings.

    Accepts a :class:`TabularMDP` whose ``info`` has a ``"grid"`` entry (as built by this
    module or by :func:`tiltrl.envs.gym.from_gymnasium` for FrozenLake/CliffWalking), or
    the ``info`` mapping itself.
    """
    info = mdp.info if isinstance(mdp, TabularMDP) else mdp
    grid = info.get("grid")
    if grid is None:
        raise ValueError("this model has no 'grid' in its info: it is not a grid world")
    return np.array([list(row) for row in grid], dtype="<U1")


_ARROWS = {
    "left": "<",
    "down": "v",
    "right": ">",
    "up": "^",
    "stay": "o",
    "down-left": "\u2199",
    "down-right": "\u2198",
    "up-right": "\u2197",
    "up-left": "\u2196",
}


def render_ascii(mdp: TabularMDP, policy: Any = None) -> str:
    """The map as text, one line per row; with ``policy`` (``(S, A)`` probabilities or
    ``(S,)`` action indices), step tiles show the most likely action instead of the tile:
    ``< v > ^`` for the cardinal moves, ``o`` for stay, unicode arrows for diagonals.
    Holes, goals and walls always show their letter."""
    grid = grid_of(mdp)
    if policy is not None:
        info = mdp.info
        names = info.get("action_names") or ACTION_NAMES.get(mdp.n_actions)
        if names is None:
            raise ValueError("cannot name the actions of this model")
        pol = np.asarray(policy)
        best = pol.argmax(axis=1) if pol.ndim == 2 else pol.astype(int)
        if best.shape != (grid.size,):
            raise ValueError(f"policy covers {best.shape[0]} states, the grid {grid.size}")
        flat = grid.ravel().copy()
        for s in range(flat.size):
            if flat[s] in "SFRCN":
                flat[s] = _ARROWS.get(names[best[s]], "?")
        grid = flat.reshape(grid.shape)
    return "\n".join("".join(row) for row in grid)
