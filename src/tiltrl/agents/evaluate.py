"""Errors of learned tables against the exact solutions, and their learning curves.

Convention (``shared/DESIGN.md`` §1): rewards, ``beta > 0``, prior ``pi0``; ``theta`` is
the reward rate. The exact references come from :func:`tiltrl.solve` (Newton / soft
policy iteration, the foundation solvers); the learners are those of
:mod:`tiltrl.agents` (soft Q-learning: Haarnoja et al. 2017, Fox et al. 2016; bounded:
Adamczyk et al. 2024; U-learning: Arriojas et al. PRR 2023; differential: Wan, Naik and
Sutton 2021).

Metrics, each per seed (arrays ``(K,)``):

``q_max``, ``q_mean``
    ``max`` / ``mean |Q - Q*|`` over the pairs where ``Q*`` is finite. For average-reward
    learners ``Q`` is a differential value, defined up to a constant: each seed is first
    shifted by ``mean(Q - Q*)`` (the best constant in the least-squares sense).
``theta``
    ``|theta - theta*|`` (average-reward learners; NaN otherwise).
``kl``
    ``mean_s KL(pi(.|s) || pi*(.|s))`` over states (uniform weight).
``cosine``
    Cosine between the learned and the exact right eigenvector ``u = exp(beta Q)``
    (average-reward learners), computed with a max shift.
``eval_return``
    The exact entropy-regularised value of the learned policy under the true dynamics (no
    sampling): the rate ``E_d[r - KL(pi||pi0)/beta]`` of its stationary law ``d`` from
    the initial distribution (average reward), or ``E_{s0}[V^pi(s0)]`` (discounted).
    Computed with dense linear algebra: models up to :data:`EVAL_MAX_STATES` states.

:func:`interval` gives the mean and a 95% Student-t interval over seeds.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiltrl.exact.result import Solution
from tiltrl.mdp import TabularMDP

__all__ = [
    "Curves",
    "EVAL_MAX_STATES",
    "METRICS",
    "errors",
    "eval_return",
    "interval",
]

METRICS = ("q_max", "q_mean", "theta", "kl", "cosine", "eval_return")

#: above this many states ``eval_return`` is NaN (dense ``S x S`` solves per seed)
EVAL_MAX_STATES = 2000


def interval(values: np.ndarray, axis: int = -1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and 95% Student-t interval ``(mean, lo, hi)`` over ``axis`` (NaNs ignored)."""
    import warnings

    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    n = np.sum(np.isfinite(v), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        # all-NaN metrics (e.g. theta of a discounted learner) give NaN, silently
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(np.where(np.isfinite(v), v, np.nan), axis=axis) if v.size else v
        sd = np.nanstd(v, axis=axis, ddof=1) if np.all(n > 1) else np.zeros_like(mean)
        t = stats.t.ppf(0.975, np.maximum(n - 1, 1))
        half = np.where(n > 1, t * sd / np.sqrt(np.maximum(n, 1)), 0.0)
    return mean, mean - half, mean + half


def _policy_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``KL(p||q)`` over the last axis (0 log 0 = 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=-1)


def _reachable_class(mdp: TabularMDP) -> tuple[np.ndarray, bool]:
    """States reachable from ``initial`` (prior-supported actions) and whether they form
    one strongly connected class."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order, connected_components

    S, A = mdp.shape
    P = mdp.P.tocoo()
    keep = mdp.prior.ravel()[P.row] > 0
    G = sp.csr_matrix((np.ones(int(keep.sum())), (P.row[keep] // A, P.col[keep])), shape=(S, S))
    seen = np.zeros(S, dtype=bool)
    for s0 in np.flatnonzero(mdp.initial > 0):
        if not seen[s0]:
            seen[breadth_first_order(G, int(s0), directed=True, return_predecessors=False)] = True
    states = np.flatnonzero(seen)
    n, _ = connected_components(G[states][:, states], directed=True, connection="strong")
    return states, n == 1


def eval_return(policy: np.ndarray, mdp: TabularMDP, beta: float,
                gamma: float | None = None) -> np.ndarray:
    """Exact regularised value of each policy ``(K, S, A)`` (see the module docstring)."""
    pol = np.asarray(policy, dtype=np.float64)
    squeeze = pol.ndim == 2
    if squeeze:
        pol = pol[None]
    K = pol.shape[0]
    S, A = mdp.shape
    if S > EVAL_MAX_STATES:
        return np.full(K, np.nan) if not squeeze else np.array(np.nan)
    P = mdp.dense_transitions()
    r_pi = np.sum(pol * mdp.reward[None], axis=2) - _policy_kl(pol, mdp.prior[None]) / beta
    P_pi = np.einsum("ksa,sat->kst", pol, P)
    if gamma is not None:
        M = np.eye(S)[None] - gamma * P_pi
        v = np.linalg.solve(M, r_pi[..., None])[..., 0]
        out = v @ mdp.initial
    else:
        states, single = _reachable_class(mdp)
        if not single:
            out = np.full(K, np.nan)
        else:
            sub = P_pi[:, states][:, :, states]
            n = states.size
            M = np.eye(n)[None] - sub
            M = np.transpose(M, (0, 2, 1)).copy()
            M[:, -1, :] = 1.0
            rhs = np.zeros((K, n, 1))
            rhs[:, -1, 0] = 1.0
            d = np.linalg.solve(M, rhs)[..., 0]
            out = np.sum(d * r_pi[:, states], axis=1)
    return out[0] if squeeze else out


def errors(
    exact: Solution,
    mdp: TabularMDP,
    *,
    q: np.ndarray,
    policy: np.ndarray,
    theta: np.ndarray | None = None,
    with_return: bool = True,
) -> dict[str, np.ndarray]:
    """All metrics of the module docstring for ``K`` learned tables, each ``(K,)``."""
    qk = np.asarray(q, dtype=np.float64)
    K = qk.shape[0]
    qs = np.asarray(exact.q, dtype=np.float64)
    live = np.isfinite(qs)
    beta = exact.beta
    average = exact.kind == "average"
    diff = np.where(live[None], qk - np.where(live, qs, 0.0)[None], 0.0)
    if average:
        shift = diff.sum(axis=(1, 2)) / max(int(live.sum()), 1)
        diff = np.where(live[None], diff - shift[:, None, None], 0.0)
    absd = np.abs(diff)
    out: dict[str, np.ndarray] = {
        "q_max": absd.max(axis=(1, 2)),
        "q_mean": absd.sum(axis=(1, 2)) / max(int(live.sum()), 1),
    }
    if average and theta is not None:
        out["theta"] = np.abs(np.asarray(theta, dtype=np.float64) - exact.theta)
    else:
        out["theta"] = np.full(K, np.nan)
    live_s = live.any(axis=1)
    kl = _policy_kl(np.asarray(policy, dtype=np.float64)[:, live_s],
                    np.asarray(exact.policy)[None, live_s])
    out["kl"] = kl.mean(axis=1)
    if average:
        x = np.where(live[None], beta * qk, -np.inf).reshape(K, -1)
        x = x - x.max(axis=1, keepdims=True)
        y = np.where(live, beta * np.where(live, qs, 0.0), -np.inf).ravel()
        y = y - y.max()
        uk, us = np.exp(x), np.exp(y)
        out["cosine"] = (uk @ us) / (np.linalg.norm(uk, axis=1) * np.linalg.norm(us))
    else:
        out["cosine"] = np.full(K, np.nan)
    if with_return:
        out["eval_return"] = eval_return(policy, mdp, beta, None if average else exact.gamma)
    else:
        out["eval_return"] = np.full(K, np.nan)
    return out


@dataclass(frozen=True, eq=False)
class Curves:
    """Metrics versus steps: ``values[name]`` has shape ``(n_points, K)``.

    ``reference`` holds the exact numbers the errors are taken against (``theta``,
    ``eval_return`` of the exact policy).
    """

    steps: np.ndarray
    values: dict[str, np.ndarray]
    reference: dict[str, float] = field(default_factory=dict)

    def summary(self, name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean, lo, hi)`` over seeds at every point (95% Student-t interval)."""
        return interval(self.values[name], axis=1)

    def final(self) -> dict[str, np.ndarray]:
        """Metrics at the last point, each ``(K,)``."""
        return {k: v[-1] for k, v in self.values.items()}

    def rows(self) -> list[dict[str, float]]:
        """One row per point: ``step`` and ``<metric>_mean/_lo/_hi``."""
        out: list[dict[str, float]] = []
        summ = {k: self.summary(k) for k in self.values}
        for i, st in enumerate(self.steps):
            row: dict[str, float] = {"step": int(st)}
            for k, (m, lo, hi) in summ.items():
                row[f"{k}_mean"] = float(m[i])
                row[f"{k}_lo"] = float(lo[i])
                row[f"{k}_hi"] = float(hi[i])
            out.append(row)
        return out

    def to_csv(self, path: str | Path | None = None) -> str:
        """Summary rows as CSV (mean and 95% interval per metric); optionally written."""
        rows = self.rows()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["step"])
        writer.writeheader()
        writer.writerows(rows)
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_dict(self) -> dict[str, Any]:
        def clean(x: np.ndarray) -> list[Any]:
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in x]

        return {
            "steps": [int(s) for s in self.steps],
            "values": {k: clean(v) for k, v in self.values.items()},
            "summary": [{k: (v if np.isfinite(v) else None) for k, v in row.items()}
                        for row in self.rows()],
            "reference": {k: float(v) for k, v in self.reference.items()},
        }

    def to_json(self, path: str | Path | None = None) -> str:
        """Per-seed values and the summary rows as JSON (NaN as null); optionally written."""
        text = json.dumps(self.to_dict())
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Curves:
        vals = {k: np.array([[np.nan if x is None else x for x in row] for row in v],
                            dtype=np.float64) for k, v in d["values"].items()}
        return cls(steps=np.asarray(d["steps"], dtype=np.int64), values=vals,
                   reference=dict(d.get("reference", {})))
