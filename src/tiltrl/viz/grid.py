"""Grid-world pictures of exact solutions: heat maps, policy arrows, tiles.

Grid MDPs built by :func:`tiltrl.gridworld` carry their layout in ``mdp.info``:
``grid`` (list of row strings; tiles ``S F H G W C N R`` as in ``shared/DESIGN.md`` §4;
state ``s = row * ncols + col``) and ``action_deltas`` (``[drow, dcol]`` per action,
``[0, 0]`` = stay). The policy is drawn as the expected displacement
``sum_a pi(a|s) delta_a`` of each cell (or, with ``arrows="actions"``, one arrow per
action with length proportional to ``pi(a|s)``); the probability of staying is a white
disc whose area is proportional to it.

The stationary state distribution ``d(s) = sum_a u(s,a) v(s,a)`` of the optimal process
spans many decades at large ``beta``, so it is drawn on a log colour scale by default.

matplotlib is an optional extra (``pip install tiltrl[plot]``); it is imported only when a
function here is called.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tiltrl.viz._mpl import new_figure, require_matplotlib, save_figure

__all__ = [
    "grid_layout",
    "expected_displacement",
    "plot_grid_field",
    "plot_grid_solution",
    "plot_policy_and_stationary",
]

#: Actions 0..3 of the anchor papers: left, down, right, up (``[drow, dcol]``).
DEFAULT_DELTAS = ((0, -1), (1, 0), (0, 1), (-1, 0))
#: gymnasium CliffWalking: up, right, down, left.
CLIFFWALKING_DELTAS = ((-1, 0), (0, 1), (1, 0), (0, -1))

# tile letter -> (legend label, text colour); floor tiles F carry no mark
_TILES: dict[str, tuple[str, str]] = {
    "S": ("start", "#1b7a1b"),
    "G": ("goal", "#b8860b"),
    "H": ("hole", "#111111"),
    "C": ("candy (r = -0.5)", "#c2188f"),
    "N": ("nail (r = -1.5)", "#c62828"),
    "R": ("wind-free floor", "#1f5fbf"),
    "W": ("wall", "#333333"),
}
# cells in which every action does the same thing (reset) or which cannot be occupied
_NO_ARROWS = frozenset("HGW")


# --------------------------------------------------------------------------- helpers
def _known_deltas(info: Any, n_actions: int) -> Sequence[Sequence[int]]:
    """Moves of models that do not record ``action_deltas`` (empty if unknown)."""
    name = str(info.get("name", ""))
    if n_actions != 4:
        return ()
    if name.startswith("CliffWalking"):
        return CLIFFWALKING_DELTAS
    if name.startswith("FrozenLake") or info.get("source") != "gymnasium":
        return DEFAULT_DELTAS
    return ()


def grid_layout(mdp: Any) -> tuple[list[str], np.ndarray]:
    """Return ``(rows, deltas)`` of a grid MDP, or raise ValueError if it has no grid.

    ``deltas`` is an ``(A, 2)`` array of ``[drow, dcol]`` per action. When the builder did
    not record ``action_deltas``: left/down/right/up for 4-action grid worlds and
    gymnasium FrozenLake, up/right/down/left for gymnasium CliffWalking, otherwise empty
    (moves unknown: no arrows are drawn).
    """
    info = getattr(mdp, "info", {}) or {}
    grid = info.get("grid")
    if not grid:
        name = info.get("name", "this MDP")
        raise ValueError(
            f"{name} has no grid layout (mdp.info['grid']); only grid-world MDPs can be drawn"
        )
    rows = [str(r) for r in grid]
    ncols = len(rows[0])
    if any(len(r) != ncols for r in rows):
        raise ValueError("mdp.info['grid'] rows have different lengths")
    n_cells = len(rows) * ncols
    if mdp.n_states != n_cells:
        raise ValueError(
            f"grid has {len(rows)}x{ncols} = {n_cells} cells but the MDP has "
            f"{mdp.n_states} states (expected state s = row * ncols + col)"
        )
    deltas = info.get("action_deltas")
    if deltas is None:
        deltas = _known_deltas(info, mdp.n_actions)
    arr = np.asarray(deltas, dtype=float).reshape(-1, 2)
    if len(arr) not in (0, mdp.n_actions):
        raise ValueError(
            f"mdp.info['action_deltas'] has {len(arr)} entries for {mdp.n_actions} actions"
        )
    return rows, arr


def expected_displacement(policy: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """``sum_a pi(a|s) delta_a`` for every state: ``(S, 2)`` array of ``[drow, dcol]``."""
    return np.asarray(policy, dtype=float) @ np.asarray(deltas, dtype=float)


def _stay_probability(policy: np.ndarray, deltas: np.ndarray) -> np.ndarray | None:
    stay = np.all(deltas == 0, axis=1)
    if not stay.any():
        return None
    return np.asarray(policy)[:, stay].sum(axis=1)


def _state_mask(states: Any, n: int) -> np.ndarray:
    if states is None:
        return np.ones(n, dtype=bool)
    arr = np.asarray(states)
    if arr.dtype == bool:
        if arr.shape != (n,):
            raise ValueError(f"states mask must have shape ({n},), got {arr.shape}")
        return arr
    mask = np.zeros(n, dtype=bool)
    mask[arr.astype(int)] = True
    return mask


def _solution_states(sol: Any, n: int) -> np.ndarray | None:
    """States a solution speaks for: its recurrent class plus any state with ``d > 0``
    (the solvers leave placeholders elsewhere, e.g. on never-entered terminal cells)."""
    rec = getattr(sol, "recurrent_states", None)
    if rec is None:
        return None
    mask = _state_mask(rec, n)
    dist = sol.state_distribution
    if dist is not None:
        mask |= np.asarray(dist) > 0
    return mask


def _current(arr: Any, ndim: int) -> np.ndarray | None:
    """First time slice of a finite-horizon array (``q[t]`` has ``N - t`` steps to go)."""
    if arr is None:
        return None
    a = np.asarray(arr, dtype=float)
    while a.ndim > ndim:
        a = a[0]
    return a


def _letter_size(nrows: int, ncols: int) -> float:
    return float(np.clip(95.0 / max(nrows, ncols), 4.0, 11.0))


def _figsize(nrows: int, ncols: int, panels: int = 1) -> tuple[float, float]:
    cell = float(np.clip(7.0 / max(nrows, ncols), 0.12, 0.75))
    width = ncols * cell + 1.6  # room for the colour bar
    height = nrows * cell + 1.5  # room for the title and the legend
    return (width * panels, height)


# --------------------------------------------------------------------------- drawing
def _draw_tiles(ax: Any, rows: Sequence[str], fontsize: float) -> list[Any]:
    """Walls, tile letters and outlines; return legend handles for the tiles present."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    present: set[str] = set()
    for r, line in enumerate(rows):
        for c, tile in enumerate(line):
            if tile not in _TILES:
                continue
            present.add(tile)
            if tile == "W":
                ax.add_patch(
                    Rectangle(
                        (c - 0.5, r - 0.5), 1, 1, facecolor="#3a3a3a", edgecolor="#9a9a9a",
                        hatch="////", linewidth=0.0, zorder=3,
                    )
                )
                continue
            if tile == "H":
                ax.add_patch(
                    Rectangle(
                        (c - 0.5, r - 0.5), 1, 1, facecolor="none", edgecolor="#8c8c8c",
                        hatch="xx", linewidth=1.2, zorder=3,
                    )
                )
            elif tile == "G":
                ax.add_patch(
                    Rectangle(
                        (c - 0.46, r - 0.46), 0.92, 0.92, facecolor="none",
                        edgecolor="#ffc400", linewidth=2.5, zorder=3,
                    )
                )
            elif tile == "S":
                ax.add_patch(
                    Rectangle(
                        (c - 0.46, r - 0.46), 0.92, 0.92, facecolor="none",
                        edgecolor="#3ddc3d", linewidth=2.0, linestyle="--", zorder=3,
                    )
                )
            colour = _TILES[tile][1]
            ax.text(
                c - 0.42, r - 0.40, tile, ha="left", va="top", fontsize=fontsize,
                fontweight="bold", color=colour, zorder=6,
                bbox={"boxstyle": "round,pad=0.12", "facecolor": "white", "alpha": 0.8,
                      "linewidth": 0},
            )
    handles: list[Any] = []
    for tile in "SGHCNRW":
        if tile not in present:
            continue
        label, colour = _TILES[tile]
        if tile == "W":
            handles.append(
                Patch(facecolor="#3a3a3a", edgecolor="#9a9a9a", hatch="////", label=label)
            )
        else:
            handles.append(
                Line2D([], [], linestyle="none", marker=f"${tile}$", markersize=8,
                       color=colour, label=label)
            )
    return handles


def _arrow_handle(label: str) -> Any:
    from matplotlib.lines import Line2D

    return Line2D([], [], linestyle="none", marker=r"$\rightarrow$", markersize=14,
                  markerfacecolor="white", markeredgecolor="black", markeredgewidth=0.4,
                  label=label)


def _draw_policy(
    ax: Any,
    rows: Sequence[str],
    policy: np.ndarray,
    deltas: np.ndarray,
    *,
    mode: str,
    shown: np.ndarray,
) -> list[Any]:
    """Policy arrows and stay discs; return legend handles."""
    from matplotlib.collections import PatchCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    ncols = len(rows[0])
    S = len(rows) * ncols
    tiles = np.array([t for line in rows for t in line])
    active = ~np.isin(tiles, list(_NO_ARROWS)) & shown
    r_idx, c_idx = np.divmod(np.arange(S), ncols)
    norms = np.linalg.norm(deltas, axis=1)
    longest = float(norms.max()) if norms.size and norms.max() > 0 else 1.0
    style = {
        "angles": "xy", "scale_units": "xy", "units": "xy", "color": "white",
        "edgecolor": "black", "linewidth": 0.6, "zorder": 5, "minlength": 0.0,
        "headwidth": 3.2, "headlength": 3.0, "headaxislength": 3.0,
    }
    handles: list[Any] = []
    if mode == "mean":
        disp = expected_displacement(policy, deltas)  # (S, 2): drow, dcol
        size = np.linalg.norm(disp, axis=1)
        # the longest arrow spans ~0.85 cell (unless the policy barely moves anywhere)
        reach = max(float(size[active].max(initial=0.0)), 0.25 * longest)
        keep = active & (size > 0.04 * reach)
        if keep.any():
            ax.quiver(
                c_idx[keep], r_idx[keep], disp[keep, 1], disp[keep, 0],
                scale=reach / 0.85, pivot="mid", width=0.065, **style,
            )
        handles.append(_arrow_handle(r"mean move $\sum_a \pi(a|s)\,\delta_a$"))
    elif mode == "actions":
        for a, delta in enumerate(deltas):
            if not np.any(delta):
                continue
            p = policy[:, a]
            keep = active & (p > 0.02)
            if keep.any():
                thin = {**style, "headwidth": 2.6, "headlength": 2.4, "headaxislength": 2.4}
                ax.quiver(
                    c_idx[keep], r_idx[keep], delta[1] * p[keep], delta[0] * p[keep],
                    scale=longest / 0.48, pivot="tail", width=0.028, **thin,
                )
        handles.append(_arrow_handle(r"$\pi(a|s)$ (arrow length)"))
    else:
        raise ValueError(f"arrows must be 'mean', 'actions' or None, got {mode!r}")

    stay = _stay_probability(policy, deltas)
    if stay is not None:
        keep = active & (stay > 1e-3)
        discs = [
            Circle((c, r), radius=0.36 * np.sqrt(p))
            for r, c, p in zip(r_idx[keep], c_idx[keep], stay[keep], strict=True)
        ]
        if discs:
            ax.add_collection(
                PatchCollection(discs, facecolor="white", edgecolor="black",
                                linewidth=0.6, alpha=0.85, zorder=4)
            )
        handles.append(
            Line2D([], [], linestyle="none", marker="o", markersize=8,
                   markerfacecolor="white", markeredgecolor="black",
                   label=r"stay (area $\propto \pi$)")
        )
    return handles


def plot_grid_field(
    mdp: Any,
    values: Any,
    *,
    policy: Any = None,
    ax: Any = None,
    title: str | None = None,
    log: bool = False,
    log_range: float = 1e8,
    cmap: str = "viridis",
    label: str | None = None,
    show_values: bool = False,
    arrows: str | None = "mean",
    legend: bool = True,
    states: Any = None,
) -> Any:
    """Draw a per-state quantity of a grid MDP as a heat map, with tiles and policy.

    Parameters
    ----------
    mdp
        Grid MDP (``mdp.info["grid"]``, optional ``mdp.info["action_deltas"]``).
    values
        Array of length ``S`` (``s = row * ncols + col``). NaN cells are left blank.
    policy
        Optional ``(S, A)`` policy drawn as arrows (see module docstring).
    log
        Log colour scale; cells below ``max / log_range`` get the "under" colour and
        zeros the "bad" colour (light grey).
    arrows
        ``"mean"`` (expected displacement), ``"actions"`` (one arrow per action) or None.
    legend
        Put a legend for the tiles and arrows under the axes.
    states
        Only these states (indices or a boolean mask) are coloured and get arrows; the
        others are drawn light grey (e.g. cells off the class the solution lives on).

    Returns
    -------
    matplotlib.figure.Figure
        The figure holding ``ax`` (a new one when ``ax`` is None).
    """
    require_matplotlib()
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize

    rows, deltas = grid_layout(mdp)
    nrows, ncols = len(rows), len(rows[0])
    vals = np.asarray(values, dtype=float).reshape(-1)
    if vals.size != nrows * ncols:
        raise ValueError(f"values has {vals.size} entries, the grid {nrows * ncols} cells")
    tiles = np.array([t for line in rows for t in line])
    shown = _state_mask(states, vals.size)
    vals = np.where((tiles == "W") | ~shown, np.nan, vals)
    image = vals.reshape(nrows, ncols)

    if ax is None:
        fig = new_figure(_figsize(nrows, ncols))
        ax = fig.add_subplot()
    else:
        fig = ax.figure

    colours = colormaps[cmap].with_extremes(bad="#d9d9d9")
    finite = vals[np.isfinite(vals)]
    extend = "neither"
    if log:
        positive = finite[finite > 0]
        vmax = float(positive.max()) if positive.size else 1.0
        vmin = float(positive.min()) if positive.size else vmax / 10
        if vmin < vmax / log_range:
            vmin, extend = vmax / log_range, "min"
            colours = colours.with_extremes(under=colours(0.0))
        if vmin >= vmax:
            vmin = vmax / 10
        norm: Any = LogNorm(vmin=vmin, vmax=vmax)
        image = np.where(image > 0, image, np.nan)
    else:
        lo = float(finite.min()) if finite.size else 0.0
        hi = float(finite.max()) if finite.size else 1.0
        if hi <= lo:
            lo, hi = lo - 0.5, hi + 0.5
        norm = Normalize(vmin=lo, vmax=hi)

    im = ax.imshow(image, cmap=colours, norm=norm, origin="upper", interpolation="nearest",
                   zorder=1)
    # an inset follows the aspect-constrained box of the axes (a gridspec colour bar would
    # be as tall as the slot, much taller than a narrow grid)
    cax = ax.inset_axes((1.03, 0.0, 0.045, 1.0))
    cbar = fig.colorbar(im, cax=cax, extend=extend)
    cbar.ax.tick_params(labelsize=8)
    if label:
        cbar.set_label(label)

    # thin cell grid
    ax.set_xticks(np.arange(-0.5, ncols, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, nrows, 1.0), minor=True)
    ax.grid(which="minor", color="white", linewidth=0.4, alpha=0.5)
    ax.tick_params(which="minor", length=0)
    step = max(1, int(np.ceil(max(nrows, ncols) / 12)))
    ax.set_xticks(np.arange(0, ncols, step))
    ax.set_yticks(np.arange(0, nrows, step))
    ax.tick_params(labelsize=7, length=2)
    ax.set_xlim(-0.5, ncols - 0.5)
    ax.set_ylim(nrows - 0.5, -0.5)

    fontsize = _letter_size(nrows, ncols)
    handles = _draw_tiles(ax, rows, fontsize)
    if policy is not None and arrows is not None and len(deltas):
        pol = np.asarray(policy, dtype=float)
        if pol.shape != (mdp.n_states, mdp.n_actions):
            raise ValueError(
                f"policy must have shape (S, A) = {(mdp.n_states, mdp.n_actions)}, "
                f"got {pol.shape}"
            )
        handles += _draw_policy(ax, rows, pol, deltas, mode=arrows, shown=shown)

    if show_values:
        for k in np.flatnonzero(np.isfinite(vals)):
            r, c = divmod(int(k), ncols)
            shade = norm(vals[k]) if (not log or vals[k] > 0) else 0.0
            shade = float(np.clip(np.ma.filled(shade, 0.0), 0.0, 1.0))
            luminance = np.dot(colours(shade)[:3], (0.299, 0.587, 0.114))
            ax.text(c, r + 0.33, f"{vals[k]:.2g}", ha="center", va="center",
                    fontsize=fontsize * 0.7, color="black" if luminance > 0.5 else "white",
                    zorder=7)

    if title:
        ax.set_title(title, fontsize=10)
    if legend and handles:
        from matplotlib.transforms import offset_copy

        # just below the tick labels, whatever the height of the axes
        ncol = _legend_columns(handles, ax.get_position().width * fig.get_figwidth())
        below = offset_copy(ax.transAxes, fig=fig, y=-14, units="points")
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, 0.0),
                  bbox_transform=below, ncol=ncol, fontsize=7,
                  frameon=False, handletextpad=0.3, columnspacing=1.0)
    ax.set_aspect("equal")
    return fig


def _describe(mdp: Any, sol: Any) -> str:
    name = (getattr(mdp, "info", {}) or {}).get("name") or "grid"
    parts = [f"β={sol.beta:g}", str(sol.dynamics)]
    if getattr(sol, "gamma", None) is not None:
        parts.append(f"γ={sol.gamma:g}")
    if getattr(sol, "horizon", None) is not None:
        parts.append(f"horizon {sol.horizon}, first step")
    if getattr(sol, "kind", "average") == "average" and np.isfinite(sol.theta):
        parts.append(f"θ={sol.theta:.6g}")
    return f"{name} ({', '.join(parts)})"


def plot_grid_solution(
    mdp: Any,
    sol: Any,
    *,
    ax: Any = None,
    title: str | None = None,
    show_values: bool = False,
    log: bool = True,
    arrows: str | None = "mean",
) -> Any:
    """Stationary state distribution of the optimal process with the optimal policy.

    Heat map of ``sol.state_distribution`` (log colour scale unless ``log=False``), the
    policy as arrows (expected displacement, or per action with ``arrows="actions"``),
    stay probability as discs, and the tiles: hatched holes, gold-framed goals, dark
    hatched walls, letters for start / goal / hole / candy / nail / wind-free cells.

    Discounted and finite-horizon solutions have no stationary distribution; their soft
    value ``V`` (first time step for finite horizon) is drawn instead.

    Returns the :class:`~matplotlib.figure.Figure` (the one holding ``ax`` if given).
    """
    dist = sol.state_distribution
    policy = _current(sol.policy, 2)
    shown = _solution_states(sol, mdp.n_states)
    if dist is not None:
        values = np.asarray(dist, dtype=float)
        label = "stationary probability d(s)" + (" (log scale)" if log else "")
        what = "stationary distribution"
        cmap = "magma"
    else:
        values = _relative_value(mdp, sol, shown)
        label, what, cmap, log = "soft value V(s) − max V", "soft value", "viridis", False
    if title is None:
        title = f"{what}: {_describe(mdp, sol)}"
    return plot_grid_field(
        mdp, values, policy=policy, ax=ax, title=title, log=log, cmap=cmap, label=label,
        show_values=show_values, arrows=arrows, states=shown,
    )


def _legend_columns(handles: Sequence[Any], width_in: float) -> int:
    """Most legend columns (at most 5) whose rows fit in about ``width_in`` inches."""

    def inches(label: str) -> float:  # 7 pt text, mathtext commands counted as one glyph
        text = re.sub(r"\\[A-Za-z]+|\\,", "x", label)
        text = re.sub(r"[${}_^]", "", text)
        return 0.055 * len(text) + 0.45  # + handle and padding

    widths = [inches(h.get_label()) for h in handles]
    for ncol in range(min(5, len(widths)), 1, -1):
        nrow = -(-len(widths) // ncol)  # matplotlib fills the legend column by column
        col_w = [max(widths[j:j + nrow]) for j in range(0, len(widths), nrow)]
        if sum(col_w) <= 1.15 * width_in:
            return ncol
    return 1


def _relative_value(mdp: Any, sol: Any, shown: np.ndarray | None) -> np.ndarray:
    """``V - max V`` over the drawable states (V is defined up to a constant); NaN where
    V is not finite."""
    v = _current(sol.v, 1)
    if v is None:
        raise ValueError("the solution has no value function")
    rows, _ = grid_layout(mdp)
    tiles = np.array([t for line in rows for t in line])
    ok = np.isfinite(v) & (tiles != "W")
    if shown is not None:
        ok &= shown
    out = np.where(np.isfinite(v), v, np.nan)
    return out - (out[ok].max() if ok.any() else 0.0)


def plot_policy_and_stationary(
    mdp: Any, sol: Any, path: str | Path, *, show_values: bool = False, dpi: int = 150
) -> Path:
    """Write a two-panel PNG (or any format matplotlib infers from ``path``).

    Left: the optimal policy (arrows) over the soft value ``V(s) - max V``. Right: the
    stationary state distribution of the optimal process (log scale) with the same
    arrows. Discounted and finite-horizon solutions (no stationary distribution) get the
    left panel only (first time step for finite horizon). Returns ``path`` as a
    :class:`~pathlib.Path`.
    """
    rows, _ = grid_layout(mdp)
    nrows, ncols = len(rows), len(rows[0])
    has_dist = sol.state_distribution is not None
    fig = new_figure(_figsize(nrows, ncols, panels=2 if has_dist else 1))
    if has_dist:
        left, right = fig.subplots(1, 2)
    else:  # discounted / finite horizon: the value panel only
        left, right = fig.subplots(), None
    policy = _current(sol.policy, 2)
    shown = _solution_states(sol, mdp.n_states)
    plot_grid_field(
        mdp, _relative_value(mdp, sol, shown), policy=policy, ax=left,
        title="policy over soft value V(s)", cmap="viridis",
        label="V(s) − max V  (reward units)", show_values=show_values, states=shown,
    )
    if right is not None:
        plot_grid_solution(
            mdp, sol, ax=right, title="stationary distribution of the optimal process",
            show_values=show_values,
        )
    fig.suptitle(_describe(mdp, sol), fontsize=11)
    return save_figure(fig, path, dpi=dpi)
