"""Exact tabular models of gymnasium toy-text environments.

Gymnasium's ``FrozenLake-v1``, ``CliffWalking-v1`` and ``Taxi-v4`` (and any env whose
``unwrapped`` exposes ``P[s][a] = [(p, s', r, terminated), ...]`` with discrete spaces)
are read into a :class:`~tiltrl.mdp.TabularMDP`, following ``shared/DESIGN.md`` §1 and §3:
rewards, not costs; transitions CSR ``(S*A, S)`` with row ``s*A + a`` holding
``p(.|s,a)``; the reward stays per transition, ``r(s,a,s')``, because gymnasium's reward
belongs to the outcome (FrozenLake pays on *reaching* the goal).

Episodes are made continuing explicitly (DESIGN.md §3):

* ``terminal="reset"`` (the published convention): the probability mass of a terminating
  outcome goes to the environment's initial-state distribution instead of to ``s'``; its
  reward is kept. The model is then one long cyclic run of episodes, and ``theta`` is the
  reward rate per step across episodes.
* ``terminal="reset_next"``: terminating outcomes go to ``s'`` as usual, and from every
  state that some terminating outcome enters (however else it is entered) every action
  goes to the initial distribution with reward 0 -- the grid-world convention of
  DESIGN.md §4 (the agent stands on the hole or goal for one step). Each episode lasts one
  step longer than under ``"reset"``, which changes ``theta`` (a rate per step), but the
  reward stays a function of ``(s, a, s')`` even where ``"reset"`` would merge outcomes
  with different rewards into the same reset state (slippery FrozenLake 8x8: goal and
  hole next to each other).
* ``terminal="absorbing"``: terminating outcomes go to ``s'`` as usual and every state that
  some terminating outcome enters is made absorbing (every action loops on it with reward
  0), however else it is entered. Each such state is a closed class with Perron root
  ``exp(beta * 0) = 1``, so ``theta`` becomes ``max(0, rates of the other closed classes)``
  -- for tasks with negative step rewards simply ``0``, the absorbing reward, and not an
  informative rate. Use it for first-passage / discounted / finite-horizon questions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from tiltrl.mdp import TabularMDP

__all__ = ["from_gymnasium", "NORMALISE_TOL"]

#: Rows of gymnasium's ``P`` whose probabilities sum to within this of one are divided by
#: their sum (gymnasium writes e.g. thirds that may not add to 1 within 1e-9); rows that are
#: further off raise ``ValueError``.
NORMALISE_TOL = 1e-6


def _initial_distribution(u: Any, S: int) -> np.ndarray | None:
    mu = getattr(u, "initial_state_distrib", None)
    if mu is not None:
        return np.asarray(mu, dtype=np.float64).ravel()
    start = getattr(u, "start_state_index", None)
    if start is None:
        start = getattr(u, "start_state", None)
    if start is not None:
        out = np.zeros(S)
        out[int(start)] = 1.0
        return out
    return None


def _grid_rows(u: Any, S: int) -> list[str] | None:
    """Tile rows for grid-shaped envs (FrozenLake's ``desc``; CliffWalking's cliff)."""
    desc = getattr(u, "desc", None)
    if type(u).__name__ == "FrozenLakeEnv" and desc is not None:
        arr = np.asarray(desc)
        if arr.size == S:
            return [b"".join(row).decode("ascii") for row in arr]
    cliff = getattr(u, "_cliff", None)
    shape = getattr(u, "shape", None)
    if type(u).__name__ == "CliffWalkingEnv" and cliff is not None and shape is not None:
        n_rows, n_cols = (int(x) for x in shape)
        if n_rows * n_cols == S:
            codes = np.where(np.asarray(cliff, dtype=bool), ord("H"), ord("F")).astype(np.uint8)
            start = int(getattr(u, "start_state_index", (n_rows - 1) * n_cols))
            codes.ravel()[start] = ord("S")
            codes[n_rows - 1, n_cols - 1] = ord("G")
            return [bytes(row).decode("ascii") for row in codes]
    return None


def from_gymnasium(
    env: Any,
    terminal: str = "reset",
    *,
    prior: Any = None,
    initial: Any = None,
    on_conflict: str = "raise",
    **make_kwargs: Any,
) -> TabularMDP:
    """Exact :class:`TabularMDP` of a gymnasium toy-text environment.

    Parameters
    ----------
    env
        A gymnasium env instance, or an env id such as ``"FrozenLake-v1"``,
        ``"CliffWalking-v1"``, ``"Taxi-v4"`` (made with ``gymnasium.make(env,
        **make_kwargs)``). Its ``unwrapped`` must have ``P[s][a] = [(p, s', r,
        terminated), ...]`` and discrete observation and action spaces.
    terminal
        ``"reset"``: terminating outcomes go to the initial distribution (reward kept).
        ``"reset_next"``: they enter ``s'``, from which every action goes to the initial
        distribution with reward 0 (one extra step per episode; never merges rewards).
        ``"absorbing"``: terminating outcomes enter ``s'``, which is made absorbing
        (every action self-loops with reward 0); then ``theta`` is the absorbing reward 0
        unless another closed class does better (see the module docstring).
    prior
        Prior policy ``pi0[s, a]`` (default uniform).
    initial
        Initial distribution ``(S,)``. Default: the env's ``initial_state_distrib`` (or its
        fixed start state). It is also the reset target of ``"reset"``/``"reset_next"``.
    on_conflict
        What to do when outcomes of the same ``(s, a)`` reach the same ``s'`` with different
        rewards (e.g. slippery CliffWalking: bumping the wall at the start vs. falling off
        the cliff, both land on the start state; or, under ``terminal="reset"``, goal and
        hole both resetting to the start): ``"raise"`` (default) or ``"mean"``, which
        merges them into one transition with the probability-weighted mean reward. The
        mean is exact for expected rewards (fixed dynamics, soft value iteration) but not
        inside the tilted matrix's exponent, where ``E[exp(beta r)]`` is needed.
        Outcomes that agree on the reward are always merged.
    **make_kwargs
        Passed to ``gymnasium.make`` when ``env`` is an id (e.g. ``is_slippery=False``).

    Returns
    -------
    TabularMDP
        Reward per transition ``r(s, a, s')``; ``info`` holds ``name`` (the env id),
        ``source="gymnasium"``, ``terminal``, ``n_actions``, and for FrozenLake and
        CliffWalking the ``grid`` rows (CliffWalking's cliff drawn as ``H``).

    Notes
    -----
    Rows of gymnasium's ``P`` are divided by their sum when it is within
    :data:`NORMALISE_TOL` of one (gymnasium's thirds need not add to 1 within the 1e-9
    that :class:`TabularMDP` demands; the model itself never renormalises); rows further
    off raise ``ValueError``. Zero-probability outcomes are dropped.
    """
    if terminal not in ("reset", "reset_next", "absorbing"):
        raise ValueError(f"terminal must be 'reset', 'reset_next' or 'absorbing', got {terminal!r}")
    if on_conflict not in ("raise", "mean"):
        raise ValueError(f"on_conflict must be 'raise' or 'mean', got {on_conflict!r}")
    if isinstance(env, str):
        import gymnasium

        env_id = env
        env = gymnasium.make(env_id, **make_kwargs)
    else:
        if make_kwargs:
            raise TypeError(
                f"keyword arguments {sorted(make_kwargs)} are only used when env is an id"
            )
        spec = getattr(env, "spec", None)
        env_id = getattr(spec, "id", None) or type(getattr(env, "unwrapped", env)).__name__
    u = getattr(env, "unwrapped", env)
    table = getattr(u, "P", None)
    if table is None:
        raise ValueError(f"{env_id}: env.unwrapped has no transition table P[s][a]")
    try:
        S = int(env.observation_space.n)
        A = int(env.action_space.n)
    except AttributeError as exc:
        raise ValueError(f"{env_id}: observation and action spaces must be Discrete") from exc

    mu0 = _initial_distribution(u, S) if initial is None else np.asarray(initial, float)
    if mu0 is None:
        raise ValueError(f"{env_id}: no initial_state_distrib or start state found; pass initial=")
    if mu0.shape != (S,) or np.any(mu0 < 0) or abs(mu0.sum() - 1.0) > NORMALISE_TOL:
        raise ValueError(f"{env_id}: initial distribution must be a probability vector (S,)")
    mu0 = mu0 / mu0.sum()
    init_states = np.flatnonzero(mu0 > 0)
    init_p = mu0[init_states]

    # flatten P[s][a] into arrays (row = s*A + a)
    row_l: list[int] = []
    nxt_l: list[int] = []
    p_l: list[float] = []
    r_l: list[float] = []
    term_l: list[bool] = []
    for s in range(S):
        outcomes_s = table[s]
        for a in range(A):
            outcomes = outcomes_s[a]
            if not outcomes:
                raise ValueError(f"{env_id}: P[{s}][{a}] is empty")
            for out in outcomes:
                p, s2, rew, term = out[0], out[1], out[2], out[3]
                row_l.append(s * A + a)
                nxt_l.append(int(s2))
                p_l.append(float(p))
                r_l.append(float(rew))
                term_l.append(bool(term))
    rows = np.asarray(row_l, dtype=np.int64)
    nxt = np.asarray(nxt_l, dtype=np.int64)
    prob = np.asarray(p_l)
    rew_arr = np.asarray(r_l)
    term_arr = np.asarray(term_l, dtype=bool)

    if not np.all(np.isfinite(prob)) or np.any(prob < 0):
        k = int(np.flatnonzero(~np.isfinite(prob) | (prob < 0))[0])
        s, a = divmod(int(rows[k]), A)
        raise ValueError(f"{env_id}: P[{s}][{a}] has probability {prob[k]!r}")
    if np.any((nxt < 0) | (nxt >= S)):
        k = int(np.flatnonzero((nxt < 0) | (nxt >= S))[0])
        s, a = divmod(int(rows[k]), A)
        raise ValueError(f"{env_id}: P[{s}][{a}] leads to state {nxt[k]} outside 0..{S - 1}")
    sums = np.bincount(rows, weights=prob, minlength=S * A)
    err = np.abs(sums - 1.0)
    if np.any(err > NORMALISE_TOL):
        row = int(np.argmax(err))
        s, a = divmod(row, A)
        raise ValueError(
            f"{env_id}: probabilities of P[{s}][{a}] sum to {sums[row]!r} "
            f"(more than {NORMALISE_TOL:g} from 1)"
        )
    prob = prob / sums[rows]  # explicit renormalisation (see Notes)
    keep = prob > 0
    rows, nxt, prob = rows[keep], nxt[keep], prob[keep]
    rew_arr, term_arr = rew_arr[keep], term_arr[keep]

    if terminal == "reset":
        stay = ~term_arr
        t_idx = np.flatnonzero(term_arr)
        n_init = init_states.size
        rows = np.concatenate([rows[stay], np.repeat(rows[t_idx], n_init)])
        nxt = np.concatenate([nxt[stay], np.tile(init_states, t_idx.size)])
        rew_arr = np.concatenate([rew_arr[stay], np.repeat(rew_arr[t_idx], n_init)])
        prob = np.concatenate([prob[stay], (prob[t_idx][:, None] * init_p[None, :]).ravel()])
    else:
        # states entered by a terminating outcome get new rows, reward 0 for every action
        ends = np.unique(nxt[term_arr])
        if ends.size:
            drop = np.isin(rows // A, ends)
            base = (ends[:, None] * A + np.arange(A)[None, :]).ravel()
            if terminal == "absorbing":  # self-loops
                new_rows, new_nxt, new_p = base, np.repeat(ends, A), np.ones(base.size)
            else:  # "reset_next": to the initial distribution
                new_rows = np.repeat(base, init_states.size)
                new_nxt = np.tile(init_states, base.size)
                new_p = np.tile(init_p, base.size)
            rows = np.concatenate([rows[~drop], new_rows])
            nxt = np.concatenate([nxt[~drop], new_nxt])
            prob = np.concatenate([prob[~drop], new_p])
            rew_arr = np.concatenate([rew_arr[~drop], np.zeros(new_rows.size)])

    # merge outcomes with the same (s, a, s')
    key = rows * S + nxt
    uniq, inv = np.unique(key, return_inverse=True)
    p_sum = np.bincount(inv, weights=prob, minlength=uniq.size)
    r_mean = np.bincount(inv, weights=prob * rew_arr, minlength=uniq.size) / p_sum
    r_max = np.full(uniq.size, -np.inf)
    r_min = np.full(uniq.size, np.inf)
    np.maximum.at(r_max, inv, rew_arr)
    np.minimum.at(r_min, inv, rew_arr)
    conflict = (r_max - r_min) > 1e-12 * np.maximum(1.0, np.abs(r_max))
    if conflict.any() and on_conflict == "raise":
        g = int(np.flatnonzero(conflict)[0])
        row, s2 = divmod(int(uniq[g]), S)
        s, a = divmod(row, A)
        raise ValueError(
            f"{env_id}: outcomes of (s={s}, a={a}) reach s'={s2} with different rewards "
            f"({r_min[g]:g} and {r_max[g]:g}); the reward is not a function of (s, a, s')."
            + (
                " This happens under terminal='reset' when outcomes with different rewards "
                "end the episode (e.g. goal and hole): terminal='reset_next' represents it "
                "exactly (one extra step per episode)."
                if terminal == "reset"
                else ""
            )
            + " Or pass on_conflict='mean' to merge them with their mean reward (exact for "
            "expected rewards, approximate inside exp(beta r))."
        )
    r_val = np.where(conflict, r_mean, r_max)
    u_rows, u_cols = np.divmod(uniq, S)
    P = sp.csr_matrix((p_sum, (u_rows, u_cols)), shape=(S * A, S))
    # explicit zeros must stay stored so the reward is read at every non-zero of P
    R = sp.csr_matrix((r_val, (u_rows, u_cols)), shape=(S * A, S))

    info: dict[str, Any] = {
        "name": env_id,
        "source": "gymnasium",
        "terminal": terminal,
        "n_actions": A,
    }
    grid = _grid_rows(u, S)
    if grid is not None:
        info["grid"] = grid
    return TabularMDP(P, R, prior, mu0, info=info)
