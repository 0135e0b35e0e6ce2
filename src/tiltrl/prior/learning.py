"""Prior solutions in learning: warm start, clipping with composition bounds, and learning
only the correction model-free.

Sources: Adamczyk, Arriojas, Tiomkin and Kulkarni, AAAI 2023 (learn the correction ``K``
or ``C`` instead of ``Q~``) and UAI 2023 (clip with the composition bounds); tabular
learners of :mod:`tiltrl.agents`. Convention (``shared/DESIGN.md`` §1): rewards,
``beta > 0``, prior ``pi0``.

* Warm start: start soft Q-learning (or U-learning, ``log u = beta f(Q)``) from ``f(Q)``.
* Clipping: bounded soft Q-learning with the fixed composition bounds ``(lb, ub)`` of
  :func:`tiltrl.prior.compose` -- valid before any sample is seen.
* Correction: soft Q-learning on the correction task (prior ``pi_f``; one sampled
  transition ``(s, a, r~, s')`` of the new task gives the sample
  ``kappa = r~ + gamma V_f(s') - f(s,a)``), then ``Q~ = f(Q) + C``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tiltrl.prior.compose import Composition, correction_task

__all__ = ["learn_correction", "warm_start"]


def warm_start(comp: Composition, *, clip: bool = False) -> dict[str, Any]:
    """Keyword arguments for :func:`tiltrl.agents.learn` that start from ``f(Q)``.

    With ``clip=True`` (discounted compositions; use ``algo="bounded_soft_q"``) the
    composition bounds are added as fixed external bounds. For average-reward compositions
    the initial ``theta`` is the midpoint of the bounds ``[kappa_min, kappa_max]``.
    """
    out: dict[str, Any] = {"initial_q": np.array(comp.q)}
    if comp.gamma is None:
        assert comp.theta_bounds is not None
        out["theta0"] = 0.5 * (comp.theta_bounds[0] + comp.theta_bounds[1])
        if clip:
            raise ValueError("clip=True needs a discounted composition (pair bounds on Q~*)")
    elif clip:
        out["bounds"] = (np.array(comp.lb), np.array(comp.ub))
    return out


def learn_correction(comp: Composition, algo: str = "soft_q", **learn_kw: Any
                     ) -> tuple[Any, np.ndarray]:
    """Learn only the correction ``C`` model-free; return ``(LearnResult, f(Q) + C)``.

    ``learn_kw`` go to :func:`tiltrl.agents.learn` (``steps``, ``seeds``, ...); ``beta``
    and ``gamma`` come from ``comp``. The result's error curves are against the exact
    ``C*``, i.e. they are the errors of ``Q~ = f(Q) + C`` against ``Q~*``.
    """
    from tiltrl.agents import learn

    for key in ("beta", "gamma"):
        if key in learn_kw:
            raise ValueError(f"{key} comes from the composition; do not pass {key}=")
    task = correction_task(comp)
    res = learn(algo, task, beta=comp.beta, gamma=comp.gamma, **learn_kw)
    return res, comp.q[None] + res.q
