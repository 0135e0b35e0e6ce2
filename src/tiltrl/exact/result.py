"""Result objects of the exact solvers (frozen, JSON round-trippable).

Convention (``shared/DESIGN.md`` §1): ``theta`` is the reward *rate* (not a cost),
``log_rho = beta * theta`` is the log Perron root of the tilted matrix
``M[(s,a),(s',a')] = p(s'|s,a) exp(beta r(s,a,s')) pi0(a'|s')``, ``u`` its right and
``v`` (here ``left``) its left eigenvector, normalised ``sum(v) = 1``, ``sum(u v) = 1``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

__all__ = ["Solution", "Sweep"]


def _encode(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f":
            # JSON has no inf/nan; store them as strings so the round trip is exact
            flat = [x if np.isfinite(x) else repr(float(x)) for x in value.ravel().tolist()]
            return {"__ndarray__": flat, "shape": list(value.shape), "dtype": "float64"}
        return {"__ndarray__": value.ravel().tolist(), "shape": list(value.shape),
                "dtype": str(value.dtype)}
    if sp.issparse(value):
        csr = sp.csr_matrix(value)
        return {
            "__csr__": True,
            "data": _encode(csr.data),
            "indices": _encode(csr.indices),
            "indptr": _encode(csr.indptr),
            "shape": list(csr.shape),
        }
    if isinstance(value, float) and not np.isfinite(value):
        return {"__float__": repr(value)}
    if isinstance(value, np.generic):
        return _encode(value.item())
    if isinstance(value, tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if "__ndarray__" in value:
            flat = [float(x) if isinstance(x, str) else x for x in value["__ndarray__"]]
            return np.array(flat, dtype=value["dtype"]).reshape(value["shape"])
        if "__csr__" in value:
            return sp.csr_matrix(
                (_decode(value["data"]), _decode(value["indices"]), _decode(value["indptr"])),
                shape=tuple(value["shape"]),
            )
        if "__float__" in value:
            return float(value["__float__"])
    if isinstance(value, list):
        return tuple(_decode(v) for v in value)
    return value


class _JsonMixin:
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _encode(getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]

    def to_json(self, path: str | Path | None = None) -> str:
        """Serialise to JSON (arrays as lists, non-finite floats preserved); optionally write."""
        text = json.dumps({"type": type(self).__name__, **self.to_dict()})
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> Any:
        """Inverse of :meth:`to_json`; accepts the JSON text or a path to it."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text).read_text()
        raw = json.loads(text)
        raw.pop("type", None)
        kwargs = {k: _decode(v) for k, v in raw.items()}
        return cls(**kwargs)


@dataclass(frozen=True, eq=False)
class Solution(_JsonMixin):
    """Exact solution of an entropy-regularised MDP.

    Average-reward solutions (``kind == "average"``) fill every field. Discounted
    (``kind == "discounted"``) and finite-horizon (``kind == "finite"``) solutions leave
    the eigen-quantities as ``None``/NaN; for ``kind == "finite"`` the arrays ``q``,
    ``v`` and ``policy`` carry a leading time axis (``q[t]`` = soft Q with ``N - t``
    steps to go).

    Attributes
    ----------
    theta
        Optimal entropy-regularised reward rate (``log_rho / beta``).
    log_rho
        Log Perron root of the tilted matrix = SCGF ``Lambda(beta)`` of the reward
        under the prior dynamics (controlled case).
    policy
        Optimal policy ``pi*(a|s) = pi0(a|s) u(s,a) / chi(s)``, ``(S, A)``.
    q, v
        Differential soft values ``Q = log(u)/beta``, ``V = log(chi)/beta`` (scale fixed by
        ``sum(u v) = 1``); discounted / finite-horizon soft values otherwise.
    log_u
        Log right eigenvector ``(S, A)`` (``-inf`` where ``u = 0``).
    log_left
        Log left eigenvector ``(S, A)``, ``sum(exp(log_left)) = 1``.
    stationary
        Stationary state-action distribution ``d = u v`` of the optimal process.
    driven_dynamics
        Controlled dynamics ``p*(s'|s,a)`` as CSR ``(S*A, S)`` (controlled case), the
        environment's ``P`` for fixed dynamics.
    energy, policy_kl, dynamics_kl
        ``E_d[r]``, ``E_d[KL(pi*||pi0)]``, ``E_d[KL(p*||p)]`` with
        ``theta = energy - (policy_kl + dynamics_kl) / beta``.
    bracket
        Collatz-Wielandt bracket ``(lo, hi)`` with ``lo <= theta <= hi`` (rigorous up to
        rounding) from the final eigenvector.
    recurrent_states
        States of the class the solution lives on (the dominant strongly connected class
        reachable from the initial distribution).
    """

    beta: float
    kind: str
    dynamics: str
    method: str
    theta: float
    log_rho: float
    policy: np.ndarray
    q: np.ndarray
    v: np.ndarray
    log_u: np.ndarray | None = None
    log_left: np.ndarray | None = None
    stationary: np.ndarray | None = None
    driven_dynamics: sp.csr_matrix | None = None
    energy: float = float("nan")
    policy_kl: float = float("nan")
    dynamics_kl: float = float("nan")
    iterations: int = 0
    residual: float = float("nan")
    converged: bool = True
    bracket: tuple[float, float] = (float("nan"), float("nan"))
    recurrent_states: np.ndarray | None = None
    gamma: float | None = None
    horizon: int | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def cost_rate(self) -> float:
        """``-theta``: the cost rate of the anchor papers (never a second meaning of theta)."""
        return -self.theta

    @property
    def scgf(self) -> float:
        """``Lambda(beta) = log_rho`` (controlled case)."""
        return self.log_rho

    @property
    def u(self) -> np.ndarray | None:
        """Right eigenvector ``u = exp(log_u)`` (may underflow at large beta; prefer log_u)."""
        return None if self.log_u is None else np.exp(self.log_u)

    @property
    def left(self) -> np.ndarray | None:
        """Left eigenvector ``v = exp(log_left)``, ``sum(v) = 1``."""
        return None if self.log_left is None else np.exp(self.log_left)

    @property
    def state_distribution(self) -> np.ndarray | None:
        """Stationary state distribution ``sum_a d(s,a)``."""
        return None if self.stationary is None else self.stationary.sum(axis=1)

    @property
    def free_energy(self) -> float:
        """``F = -theta`` in reward units, ``F = E - TS`` with ``T = 1/beta``."""
        return -self.theta

    def summary(self) -> str:
        lines = [
            f"{self.kind} / {self.dynamics} / {self.method}: beta={self.beta:g}",
        ]
        if self.kind == "average":
            lines.append(
                f"  theta={self.theta:.10g}  energy={self.energy:.6g}  "
                f"policy_kl={self.policy_kl:.6g}  dynamics_kl={self.dynamics_kl:.6g}"
            )
        lines.append(
            f"  iterations={self.iterations}  residual={self.residual:.3g}  "
            f"converged={self.converged}"
        )
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Solution(kind={self.kind!r}, dynamics={self.dynamics!r}, method={self.method!r}, "
            f"beta={self.beta:g}, theta={self.theta:.10g}, converged={self.converged}, "
            f"iterations={self.iterations}, residual={self.residual:.3g})"
        )


@dataclass(frozen=True, eq=False)
class Sweep(_JsonMixin):
    """Thermodynamic curves over beta (one entry per beta, in the order given).

    ``theta = energy - (policy_kl + dynamics_kl) / beta``: free energy ``-theta``,
    energy, and the two entropy-production terms.
    """

    betas: np.ndarray
    theta: np.ndarray
    energy: np.ndarray
    policy_kl: np.ndarray
    dynamics_kl: np.ndarray
    iterations: np.ndarray
    converged: np.ndarray
    dynamics: str = "controlled"

    @property
    def log_rho(self) -> np.ndarray:
        return self.betas * self.theta

    @property
    def entropy_production(self) -> np.ndarray:
        """``policy_kl + dynamics_kl`` (dimensionless, per step)."""
        return self.policy_kl + self.dynamics_kl

    def rows(self) -> list[dict[str, float]]:
        return [
            {
                "beta": float(b),
                "theta": float(t),
                "energy": float(e),
                "policy_kl": float(pk),
                "dynamics_kl": float(dk),
            }
            for b, t, e, pk, dk in zip(
                self.betas, self.theta, self.energy, self.policy_kl, self.dynamics_kl,
                strict=True,
            )
        ]
