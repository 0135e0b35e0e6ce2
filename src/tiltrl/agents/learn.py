"""One entry point for the tabular learners: :func:`learn`, and its result.

Learners (one module each, with their papers): soft Q-learning (Haarnoja et al. 2017;
Fox et al. 2016), bounded soft Q-learning (Adamczyk et al., "Boosting soft Q-learning by
bounding", 2024), U-learning / tabular EVAL (Arriojas et al., PRR 2023; EVAL, arXiv
2501.09770) and differential soft Q-learning (Wan, Naik and Sutton, ICML 2021).

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``beta > 0``; prior ``pi0``
(the model's); ``theta`` is the reward rate. ``K = seeds`` independent learners run in
lockstep on ``K`` copies of the environment: each step is one vectorised numpy update of
all ``K`` tables (no Python loop over seeds). Random numbers come from one
``numpy.random.Generator(seed)`` and are drawn in blocks; the run of seed index ``k``
depends on ``(seed, K)``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tiltrl._progress import bar
from tiltrl.agents.base import TabularLearner
from tiltrl.agents.bounded import BoundedSoftQLearner
from tiltrl.agents.differential import DifferentialSoftQLearner
from tiltrl.agents.evaluate import Curves, errors
from tiltrl.agents.sampler import MDPSampler, make_sampler
from tiltrl.agents.schedules import StepSize
from tiltrl.agents.soft_q import SoftQLearner
from tiltrl.agents.u_learning import ULearner
from tiltrl.exact.result import Solution
from tiltrl.mdp import TabularMDP, check_beta, check_gamma

__all__ = ["ALGOS", "LearnResult", "learn", "exact_reference"]

ALGOS: dict[str, type[TabularLearner]] = {
    "soft_q": SoftQLearner,
    "bounded_soft_q": BoundedSoftQLearner,
    "u_learning": ULearner,
    "differential_soft_q": DifferentialSoftQLearner,
}

#: default step sizes per algorithm: (lr, decay, power, tau)
_DEFAULT_LR: dict[str, tuple[float, str, float, float]] = {
    "soft_q": (1.0, "visits", 0.7, 1.0),
    "bounded_soft_q": (1.0, "visits", 0.7, 1.0),
    "u_learning": (1.0, "constant", 0.7, 1.0),
    "differential_soft_q": (1.0, "constant", 0.7, 1.0),
}

_CHUNK = 1024  # steps per block of pre-drawn random numbers


@dataclass(frozen=True, eq=False)
class LearnResult:
    """Result of :func:`learn` (``K`` = number of seeds).

    Attributes
    ----------
    q
        Learned soft Q-values ``(K, S, A)`` (differential values ``log(u)/beta`` for
        U-learning, normalised scale).
    policy
        Soft policies ``pi ∝ pi0 exp(beta Q)`` ``(K, S, A)``.
    theta
        Reward-rate estimates ``(K,)`` (average-reward learners), else ``None``.
    log_u
        Learned ``log u`` ``(K, S, A)`` (U-learning), else ``None``.
    curves
        Errors against the exact solution versus steps (see
        :mod:`tiltrl.agents.evaluate`), or ``None`` without a reference.
    stats
        ``time_s``, ``updates_per_s`` (aggregate over seeds), and learner counters
        (``n_clipped``, ``crossed`` for bounded soft Q-learning).
    options
        Every setting of the run (JSON-serialisable).
    """

    algo: str
    beta: float
    gamma: float | None
    steps: int
    seeds: int
    seed: int
    q: np.ndarray
    policy: np.ndarray
    theta: np.ndarray | None = None
    log_u: np.ndarray | None = None
    curves: Curves | None = None
    stats: dict[str, float] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def final_errors(self) -> dict[str, np.ndarray]:
        """Metrics at the last evaluation point, each ``(K,)`` (empty without curves)."""
        return {} if self.curves is None else self.curves.final()

    def save(self, path: str | Path) -> Path:
        """Write to ``.npz`` (arrays) with the scalars, options and curves as JSON."""
        p = Path(path)
        meta = {
            "algo": self.algo, "beta": self.beta, "gamma": self.gamma, "steps": self.steps,
            "seeds": self.seeds, "seed": self.seed, "stats": self.stats,
            "options": self.options, "notes": list(self.notes),
            "curves": None if self.curves is None else self.curves.to_dict(),
        }
        arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta)), "q": self.q,
                                  "policy": self.policy}
        if self.theta is not None:
            arrays["theta"] = self.theta
        if self.log_u is not None:
            arrays["log_u"] = self.log_u
        with p.open("wb") as fh:
            np.savez_compressed(fh, **arrays)
        return p

    @classmethod
    def load(cls, path: str | Path) -> LearnResult:
        """Read a file written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in z.files if k != "meta"}
        curves = None if meta["curves"] is None else Curves.from_dict(meta["curves"])
        return cls(
            algo=meta["algo"], beta=meta["beta"], gamma=meta["gamma"], steps=meta["steps"],
            seeds=meta["seeds"], seed=meta["seed"], q=arrays["q"], policy=arrays["policy"],
            theta=arrays.get("theta"), log_u=arrays.get("log_u"), curves=curves,
            stats=meta["stats"], options=meta["options"], notes=tuple(meta["notes"]),
        )


def exact_reference(algo: str, mdp: TabularMDP, beta: float, *, gamma: float | None = None,
                    dynamics: str = "controlled") -> Solution:
    """The exact solution a learner converges to: discounted fixed-dynamics soft Q for
    (bounded) soft Q-learning, the fixed-dynamics average-reward optimum for differential
    soft Q-learning, and the ``dynamics`` (default controlled) optimum for U-learning."""
    import warnings

    from tiltrl.exact import solve

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*converge.*")
        if algo in ("soft_q", "bounded_soft_q"):
            return solve(mdp, beta, gamma=gamma)
        if algo == "differential_soft_q":
            return solve(mdp, beta, dynamics="fixed")
        return solve(mdp, beta, dynamics=dynamics)


def _check_algo(algo: Any) -> str:
    if algo not in ALGOS:
        raise ValueError(f"unknown algo {algo!r}; choose one of {', '.join(ALGOS)}")
    return str(algo)


def _eval_points(steps: int, n_evals: int) -> np.ndarray:
    if n_evals <= 1:
        return np.array([steps], dtype=np.int64)
    first = max(1, min(steps, 100))
    pts = np.unique(np.geomspace(first, steps, n_evals).round().astype(np.int64))
    pts[-1] = steps
    return pts


def _progress_printer(total: int) -> Callable[[int, int], None]:
    start = time.perf_counter()
    tty = sys.stderr.isatty()

    def report(done: int, total_: int) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        end = "\n" if done >= total_ or not tty else ""
        sys.stderr.write(f"\r{bar(done, total_)} {done:,}/{total_:,} steps "
                         f"{rate:,.0f} steps/s{end}")
        sys.stderr.flush()

    return report


def learn(
    algo: str,
    mdp: Any,
    *,
    beta: float,
    steps: int,
    seeds: int = 1,
    seed: int = 0,
    gamma: float | None = None,
    lr: float | None = None,
    lr_decay: str | None = None,
    lr_power: float | None = None,
    lr_tau: float | None = None,
    lr_min: float = 0.0,
    theta_lr: float | None = None,
    behaviour: str = "soft",
    epsilon: float = 0.0,
    reference: Solution | bool = True,
    n_evals: int = 20,
    progress: bool | Callable[[int, int], None] = False,
    initial_q: Any = None,
    eval_steps: Any = None,
    on_eval: Callable[[int, TabularLearner], None] | None = None,
    backend: str = "auto",
    **options: Any,
) -> LearnResult:
    """Run ``seeds`` independent tabular learners in lockstep and compare with the truth.

    Parameters
    ----------
    algo
        ``"soft_q"``, ``"bounded_soft_q"``, ``"u_learning"`` or ``"differential_soft_q"``.
    mdp
        A :class:`~tiltrl.mdp.TabularMDP` (sampled by its own seeded vectorised sampler),
        or a gymnasium env id / env factory with discrete spaces (stepped per copy; the
        exact reference is then :func:`tiltrl.from_gymnasium` of the id).
    beta
        Inverse temperature ``> 0``.
    steps
        Environment steps per seed (each seed gets one update per step).
    seeds, seed
        Number ``K`` of independent learners, and the seed of the random generator.
    gamma
        Discount in ``[0, 1)``: required by the discounted learners (``soft_q``,
        ``bounded_soft_q``), refused by the average-reward ones.
    lr, lr_decay, lr_power, lr_tau, lr_min
        Step size ``alpha = max(lr_min, lr (1 + n/lr_tau)^-lr_power)`` with ``n`` the visits
        of the pair (``lr_decay="visits"``), the global step (``"steps"``), or constant.
        Defaults: per-visit ``1/(1+n)^0.7`` for the discounted learners; for the
        average-reward ones a constant 1 on deterministic models (the targets carry no
        noise: asynchronous relative value iteration) and per-visit ``1/(1+n)^0.7``
        on stochastic ones.
    theta_lr
        Average-reward learners: step size of ``theta`` (coupled as ``eta = theta_lr/lr``;
        default ``0.01 * lr``).
    behaviour, epsilon
        Behaviour policy: ``"soft"`` (Boltzmann from the learner's current soft policy) or
        ``"prior"`` (``pi0``), mixed with ``pi0`` with weight ``epsilon``.
    reference
        ``True``: solve the exact problem (:func:`exact_reference`) and record error
        curves at ``n_evals`` log-spaced steps; a :class:`~tiltrl.Solution` to use instead;
        ``False``: no evaluation.
    progress
        ``True`` for a progress line on stderr, or a callable ``(done, total)``.
    eval_steps
        Explicit evaluation steps (increasing, in ``[1, steps]``) instead of ``n_evals``
        log-spaced ones.
    on_eval
        Called as ``on_eval(step, learner)`` at every evaluation step (also without a
        reference): for measurements of one's own (the learner's state must not be
        changed).
    initial_q
        Warm start: soft Q-values ``(S, A)`` or ``(K, S, A)`` to start from (e.g. a
        zero-shot composition ``f(Q)``, :mod:`tiltrl.prior`); U-learning starts from
        ``log u = beta * initial_q``. Default: zeros.
    **options
        Learner options: bounded soft Q-learning ``bounds`` (``"residual"``/``"naive"``),
        ``model`` (``"learned"``/``"given"``), ``clip`` (``"hard"``, ``"linear"``,
        ``"square"``, ``"huber"``), ``clip_weight``, ``bounds_every`` (``bounds`` may also
        be a pair ``(lb, ub)`` of fixed arrays, e.g. composition bounds); U-learning
        ``dynamics`` (``"controlled"``/``"fixed"``), ``normalise`` (``"mean"`` or a pair),
        ``normalise_every``; gymnasium ``terminal`` (``"reset"``/``"cut"``) and make kwargs.
    backend
        ``"numpy"``: one vectorised numpy update per step; ``"numba"``: a compiled kernel
        (:mod:`tiltrl.agents._numba`, needs ``numba``: ``pip install tiltrl[fast]``) runs
        blocks of steps of all seeds -- the same random stream and the same floating-point
        operations, so bit-identical tables (a few ulps apart on AVX-512 CPUs, where numpy
        uses its own SIMD ``exp``/``log``); ``"auto"`` (default): numba when it is
        importable and covers the run (a :class:`~tiltrl.mdp.TabularMDP`), else numpy.

    Returns
    -------
    LearnResult
        ``.q`` and ``.policy`` ``(K, S, A)``, ``.theta`` ``(K,)`` for average-reward
        learners, ``.curves`` (errors vs steps), ``.stats``; ``save``/``load``.
    """
    algo = _check_algo(algo)
    beta = check_beta(beta)
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    if isinstance(seeds, bool) or int(seeds) != seeds or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    K = int(seeds)
    cls = ALGOS[algo]
    if cls.average_reward:
        if gamma is not None:
            raise ValueError(f"{algo} is an average-reward learner: gamma must be None, "
                             f"got {gamma!r}")
    else:
        if gamma is None:
            raise ValueError(f"{algo} is discounted: pass gamma in [0, 1)")
        gamma = check_gamma(gamma)
    if behaviour not in ("soft", "prior"):
        raise ValueError(f"behaviour must be 'soft' or 'prior', got {behaviour!r}")
    if not (0.0 <= epsilon <= 1.0):
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon!r}")
    if backend not in ("auto", "numpy", "numba"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'numba', got {backend!r}")

    d_lr, d_decay, d_power, d_tau = _DEFAULT_LR[algo]
    if cls.average_reward and isinstance(mdp, TabularMDP) and not mdp.is_deterministic:
        # noisy targets: a constant step would only reach a neighbourhood of the optimum
        d_decay = "visits"
    step = StepSize(
        lr=d_lr if lr is None else float(lr),
        decay=d_decay if lr_decay is None else lr_decay,
        power=d_power if lr_power is None else float(lr_power),
        tau=d_tau if lr_tau is None else float(lr_tau),
        min_lr=float(lr_min),
    )
    rng = np.random.default_rng(seed)

    # ---------------------------------------------------------------- environment
    sampler_kw = {k: options.pop(k) for k in list(options)
                  if k not in _LEARNER_OPTIONS.get(algo, ())}
    model: TabularMDP | None
    if isinstance(mdp, TabularMDP):
        if sampler_kw:
            raise ValueError(f"unknown option(s) for {algo}: {', '.join(sorted(sampler_kw))}")
        model = mdp
        sampler = make_sampler(mdp, K, rng)
        prior = mdp.prior
    else:
        sampler = make_sampler(mdp, K, rng, **sampler_kw)
        prior = np.full((sampler.n_states, sampler.n_actions), 1.0 / sampler.n_actions)
        model = None
        if isinstance(mdp, str) and reference is not False:
            from tiltrl.envs.gym import from_gymnasium

            make_kw = {k: v for k, v in sampler_kw.items() if k != "terminal"}
            term = sampler_kw.get("terminal", "reset")
            model = from_gymnasium(mdp, terminal="reset" if term == "reset" else "absorbing",
                                   on_conflict="mean", **make_kw)
    S, A = sampler.n_states, sampler.n_actions

    # ---------------------------------------------------------------- learner
    kw: dict[str, Any] = {}
    if not cls.average_reward:
        kw["gamma"] = gamma
    else:
        kw["theta_lr"] = 0.01 * step.lr if theta_lr is None else float(theta_lr)
    if algo == "bounded_soft_q":
        kw["model_kind"] = options.pop("model", "learned")
        kw["model"] = model
        kw["episodic"] = bool(sampler.terminal_possible)
        if model is not None:
            kw["reward_range"] = model.reward_range()
    kw.update(options)
    learner = cls(S, A, K, beta, prior, step, **kw)
    if initial_q is not None:
        learner.initialise(initial_q)
    if isinstance(learner, BoundedSoftQLearner):
        learner.refresh_bounds()

    ref: Solution | None = None
    if isinstance(reference, Solution):
        ref = reference
    elif reference and model is not None:
        ref = exact_reference(algo, model, beta, gamma=gamma,
                              dynamics=str(options.get("dynamics", "controlled")))
    if eval_steps is not None:
        eval_at = np.unique(np.asarray(eval_steps, dtype=np.int64))
        if eval_at.size == 0 or eval_at[0] < 1 or eval_at[-1] > steps:
            raise ValueError(f"eval_steps must lie in [1, steps={steps}], got {eval_steps!r}")
    else:
        eval_at = _eval_points(steps, n_evals)
    if ref is None and on_eval is None:
        eval_at = np.array([], dtype=np.int64)

    fast = _fast_backend(backend, learner, sampler)

    # ---------------------------------------------------------------- run
    report: Callable[[int, int], None] | None
    report = _progress_printer(steps) if progress is True else (progress or None)
    cum_prior_T = np.ascontiguousarray(np.cumsum(prior, axis=1).T)  # (A, S)
    # a prior that is the same in every state: its actions need no gather, and with
    # behaviour="prior" they do not depend on the learner, so a block is drawn at once
    prior_cols = cum_prior_T[:, :1] if bool(np.all(cum_prior_T == cum_prior_T[:, :1])) else None
    records: list[dict[str, np.ndarray]] = []
    s = sampler.reset()
    follow_differs = not isinstance(sampler, MDPSampler)
    soft = behaviour == "soft"
    e, z = learner.behaviour_weights(s)
    t = 0
    next_eval = 0
    t0 = time.perf_counter()
    report_every = max(_CHUNK, steps // 200)
    while t < steps:
        n = min(_CHUNK, steps - t)
        if next_eval < eval_at.size:
            n = min(n, int(eval_at[next_eval]) - t)
        u = rng.random((n, 3, K))
        if fast is not None:
            i = 0
            while i < n:
                lim = fast.block_limit(learner)
                j = n if lim is None else min(n, i + lim)
                s, e, z = fast.run_block(learner, sampler, u[i:j], s, e, z, soft=soft,
                                         epsilon=epsilon, cum_prior_T=cum_prior_T)
                i = j
            n_done = n
        else:
            n_done = 0
        a_block = None
        if not soft and prior_cols is not None and n_done < n:
            a_block = _inverse_cdf_count(prior_cols[:, :, None], u[:, 0, :])
        for i in range(n_done, n):
            ui = u[i]
            if soft:
                # inverse CDF of the soft policy: a = #{j < A-1 : cumsum(e)_j < u sum(e)}
                a = _soft_action(e, ui[0] * z)
                if epsilon > 0.0:
                    explore = ui[2] < epsilon
                    if explore.any():
                        a = np.where(explore, _prior_action(cum_prior_T, prior_cols, s, ui[0]),
                                     a)
            elif a_block is not None:
                a = a_block[i]
            else:
                a = _prior_action(cum_prior_T, prior_cols, s, ui[0])
            s_next, r, s_learn, done = sampler.step(s, a, ui[1])
            e, z = learner.update(s, a, r, s_learn, done)
            if follow_differs and soft:
                e, z = learner.behaviour_weights(s_next)
            s = s_next
        t += n
        if next_eval < eval_at.size and t == int(eval_at[next_eval]):
            if ref is not None:
                assert model is not None
                records.append(errors(ref, model, q=learner.q(), policy=learner.policy(),
                                      theta=learner.theta))
            if on_eval is not None:
                on_eval(t, learner)
            next_eval += 1
        if report is not None and (t % report_every < n or t == steps):
            report(t, steps)
    elapsed = time.perf_counter() - t0

    curves = None
    if records:
        assert ref is not None and model is not None
        from tiltrl.agents.evaluate import eval_return

        reference_numbers = {"eval_return": float(eval_return(
            np.asarray(ref.policy), model, beta, None if ref.kind == "average" else ref.gamma))}
        if ref.kind == "average":
            reference_numbers["theta"] = float(ref.theta)
        curves = Curves(
            steps=eval_at[: len(records)],
            values={k: np.stack([rec[k] for rec in records]) for k in records[0]},
            reference=reference_numbers,
        )
    stats: dict[str, float] = {
        "time_s": elapsed,
        "updates_per_s": steps * K / max(elapsed, 1e-12),
    }
    if isinstance(learner, BoundedSoftQLearner):
        stats["n_clipped"] = float(learner.n_clipped)
        stats["clipped_fraction"] = learner.n_clipped / float(steps * K)
        stats["crossed"] = float(learner.crossed)
    notes: list[str] = []
    if isinstance(learner, ULearner) and model is not None and not model.is_deterministic:
        notes.append(
            f"stochastic dynamics: U-learning with dynamics={learner.dynamics!r} learns the "
            + ("controlled (Perron, optimistic) optimum" if learner.dynamics == "controlled"
               else "fixed-dynamics optimum (DESIGN.md §2 correction, sample form)")
        )
    run_options = {
        "lr": step.lr, "lr_decay": step.decay, "lr_power": step.power, "lr_tau": step.tau,
        "lr_min": step.min_lr, "behaviour": behaviour, "epsilon": epsilon,
        **{k: v for k, v in kw.items() if k not in ("model",)},
    }
    if not isinstance(run_options.get("bounds", ""), str):
        run_options["bounds"] = "external"
    run_options["initial_q"] = initial_q is not None
    run_options["backend"] = "numpy" if fast is None else "numba"
    if "reward_range" in run_options:
        run_options["reward_range"] = list(run_options["reward_range"])
    log_u = learner.log_u() if isinstance(learner, ULearner) else None
    return LearnResult(
        algo=algo, beta=beta, gamma=gamma, steps=steps, seeds=K, seed=int(seed),
        q=learner.q(), policy=learner.policy(),
        theta=None if learner.theta is None else np.asarray(learner.theta),
        log_u=log_u, curves=curves, stats=stats,
        options=_jsonable(run_options), notes=tuple(notes),
    )


def _fast_backend(backend: str, learner: TabularLearner, sampler: Any) -> Any:
    """The compiled backend module, or ``None`` for the numpy path."""
    if backend == "numpy":
        return None
    try:
        from tiltrl.agents import _numba as fast
    except ImportError as exc:
        if backend == "numba":
            raise ImportError("backend='numba' needs numba (pip install tiltrl[fast])") from exc
        return None
    if not fast.supported(learner, sampler):
        if backend == "numba":
            raise ValueError("backend='numba' covers TabularMDP runs only (not this one); "
                             "use backend='numpy'")
        return None
    return fast


def _inverse_cdf_count(cum: np.ndarray, t: np.ndarray) -> np.ndarray:
    """``#{j < A-1 : cum[j] < t}`` over the first axis of ``cum`` (``A`` rows; ``cum``
    nondecreasing along it): the inverse-CDF draw ``min(#{j : cum_j < t}, A - 1)``, clamped
    against rounding of the last partial sum."""
    A = cum.shape[0]
    if A <= 2:
        return (cum[0] < t).astype(np.intp) if A == 2 else np.zeros(np.shape(t), np.intp)
    a = np.add(cum[0] < t, cum[1] < t, dtype=np.intp)
    for j in range(2, A - 1):
        a += cum[j] < t
    return a


def _soft_action(e: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Inverse CDF of the weights ``e`` ``(A, K)`` at ``t = u * sum(e)``, ``(K,)``.

    For a few actions the partial sums are formed row by row (``c_j = c_{j-1} + e_j``, the
    additions ``cumsum`` makes, in its order), cheaper than ``cumsum`` over a short axis.
    """
    A = e.shape[0]
    if A > 8:
        a = (np.cumsum(e, axis=0) < t).sum(axis=0)
        np.minimum(a, A - 1, out=a)
        return a
    if A == 1:
        return np.zeros(e.shape[1], dtype=np.intp)
    if A == 2:
        return (e[0] < t).astype(np.intp)
    c = e[0] + e[1]
    a = np.add(e[0] < t, c < t, dtype=np.intp)
    for j in range(2, A - 1):
        c += e[j]
        a += c < t
    return a


def _prior_action(cum_prior_T: np.ndarray, prior_cols: np.ndarray | None, s: np.ndarray,
                  u: np.ndarray) -> np.ndarray:
    """Actions drawn from ``pi0(.|s)`` by inverse CDF, ``(K,)``."""
    cum = prior_cols if prior_cols is not None else np.take(cum_prior_T, s, axis=1)
    return _inverse_cdf_count(cum, u)


_LEARNER_OPTIONS: dict[str, tuple[str, ...]] = {
    "soft_q": (),
    "bounded_soft_q": ("bounds", "model", "clip", "clip_weight", "bounds_every"),
    "u_learning": ("dynamics", "normalise", "normalise_every", "theta0"),
    "differential_soft_q": ("theta0",),
}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, tuple):
            v = list(v)
        out[k] = v
    return out
