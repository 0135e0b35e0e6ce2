"""Learning-rate robustness of clipped soft Q-learning on 30 random 7x7 mazes.

Question (Adamczyk et al., "Boosting soft Q-learning by bounding", RLC 2024): does
clipping the soft Q-learning target by bounds on ``Q*`` make learning less sensitive to
the learning rate? Set-up:

- 30 mazes ``tiltrl.random_maze(7, 7, wall_prob=0.2, seed=i, slippery=0.5)`` (the
  reference setting of ``random_maze``: reward -1 per step, -0.5 on the far-corner candy),
  ``beta = 5``, ``gamma = 0.98``, uniform prior.
- Constant learning rates on a log grid from 1e-4 to 1.
- Four learners, all the vectorised ``tiltrl.agents`` classes on the *same* transitions:
  ``none`` (soft Q-learning), ``naive`` (target clipped to ``[r_min, r_max]/(1-gamma)``),
  ``residual_learned`` (the soft Bellman bounds of DESIGN.md §5 from the current estimate
  and a count model learned from the samples seen so far: model-free) and
  ``residual_given`` (the same bounds from the true model). With the true model the
  clipping step is a planner's step (it uses the transition probabilities no sample has
  shown), so ``residual_given`` is not model-free learning: it is reported separately.
  Bounds are recomputed every 100 steps (``bounds_every``, the library default).
- Behaviour: the uniform prior (off-policy), so the transitions do not depend on the
  learner. Every learning rate and every learner sees the same ``R`` transition streams
  per maze (common random numbers): differences between curves are differences between
  the learners, not between samples. The ``len(lrs) * R`` learners of one maze and one
  method run in lockstep as one vectorised learner with a per-seed constant step size
  (the only change to the library learner: ``_alpha`` returns the per-seed rates).
- Error: mean (and max) ``|Q - Q*|`` over the state-action pairs of the states reachable
  from the start (``Q*`` from ``tiltrl.solve(mdp, beta, gamma=gamma)``; walls and cut-off
  cells are never visited and are left out). Normalised area under the curve:
  ``(1/T) int_0^T err(t) / err(0) dt`` (trapezoid on an even grid of evaluation steps,
  ``err(0)`` = error of the initial ``Q = 0``): 1 = no progress, 0 = exact at once, > 1 =
  worse than the start.
- Intervals: each maze's value is the mean over its ``R`` streams; mean and 95%
  Student-t interval over the mazes.

Budget: full run 30 mazes x 4 learners x 9 rates x 4 streams (36 learners in lockstep per
maze and learner), 20,000 steps each: 120 vectorised runs, 17 minutes measured on the 2
shared cores under a load average of about 7 (a few minutes on an idle machine);
``--quick``: 6 mazes, 5 rates, 2 streams, 5,000 steps (about 20 seconds).

    .venv/bin/python experiments/clipping_lr.py [--quick] [--out experiments/results]

Writes ``clipping_lr.json`` (settings, per-maze values, summary) and ``clipping_lr.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

import tiltrl
from tiltrl.agents import BoundedSoftQLearner, MDPSampler, SoftQLearner, StepSize, interval

HERE = Path(__file__).resolve().parent
BETA, GAMMA = 5.0, 0.98
METHODS = ("none", "naive", "residual_learned", "residual_given")
LABELS = {
    "none": "no clipping",
    "naive": "naive bounds r/(1-gamma)",
    "residual_learned": "residual bounds, learned (count) model",
    "residual_given": "residual bounds, given model (a planner)",
}


class _PerSeedRate:
    """Constant step size per seed: ``_alpha`` returns the ``(K,)`` rates."""

    rates: np.ndarray

    def _alpha(self, idx: np.ndarray) -> Any:
        return self.rates


class SoftQPerSeed(_PerSeedRate, SoftQLearner):
    pass


class BoundedPerSeed(_PerSeedRate, BoundedSoftQLearner):
    pass


def reachable_states(mdp: tiltrl.TabularMDP) -> np.ndarray:
    """States reachable from the initial law under the prior (breadth-first search)."""
    import scipy.sparse as sp
    from scipy.sparse.csgraph import breadth_first_order

    S, A = mdp.shape
    P = mdp.P.tocoo()
    keep = mdp.prior.ravel()[P.row] > 0
    G = sp.csr_matrix((np.ones(int(keep.sum())), (P.row[keep] // A, P.col[keep])),
                      shape=(S, S))
    seen = np.zeros(S, dtype=bool)
    for s0 in np.flatnonzero(mdp.initial > 0):
        seen[breadth_first_order(G, int(s0), directed=True, return_predecessors=False)] = True
    return np.flatnonzero(seen)


def make_learner(method: str, mdp: tiltrl.TabularMDP, K: int) -> SoftQLearner:
    S, A = mdp.shape
    step = StepSize(1.0)  # replaced by the per-seed rates
    learner: SoftQLearner
    if method == "none":
        learner = SoftQPerSeed(S, A, K, BETA, mdp.prior, step, gamma=GAMMA)
    elif method == "naive":
        learner = BoundedPerSeed(S, A, K, BETA, mdp.prior, step, gamma=GAMMA, bounds="naive",
                                 reward_range=mdp.reward_range())
    elif method == "residual_learned":
        learner = BoundedPerSeed(S, A, K, BETA, mdp.prior, step, gamma=GAMMA,
                                 bounds="residual", model_kind="learned")
    else:
        learner = BoundedPerSeed(S, A, K, BETA, mdp.prior, step, gamma=GAMMA,
                                 bounds="residual", model_kind="given", model=mdp)
    if isinstance(learner, BoundedSoftQLearner):
        learner.refresh_bounds()
    return learner


def run(mdp: tiltrl.TabularMDP, q_star: np.ndarray, live: np.ndarray, method: str,
        rates: np.ndarray, streams: int, steps: int, eval_at: np.ndarray,
        seed: int) -> dict[str, Any]:
    """One maze, one learner: ``len(rates) * streams`` seeds in lockstep.

    Returns errors ``(n_eval, n_rates, streams)`` and the clipping counters.
    """
    n_rates = rates.size
    K = n_rates * streams
    learner = make_learner(method, mdp, K)
    learner.rates = np.repeat(rates, streams)  # seed k = i_rate * streams + stream
    sampler = MDPSampler(mdp, K, np.random.default_rng(seed))
    rng = np.random.default_rng(seed)
    cum_prior = np.cumsum(mdp.prior, axis=1).T  # (A, S)
    s = np.tile(sampler.reset()[:streams], n_rates)
    err_mean = np.empty((eval_at.size, n_rates, streams))
    err_max = np.empty_like(err_mean)
    t, nxt = 0, 0
    while t < steps:
        n = min(1024, int(eval_at[nxt]) - t)
        u = rng.random((n, 2, streams))
        for i in range(n):
            ui = np.tile(u[i], n_rates)  # the same stream for every rate
            a = (np.take(cum_prior, s, axis=1)[:-1] < ui[0]).sum(axis=0)
            s_next, r, s_learn, _ = sampler.step(s, a, ui[1])
            learner.update(s, a, r, s_learn, None)
            s = s_next
        t += n
        if t == int(eval_at[nxt]):
            d = np.abs(learner.q() - q_star[None])[:, live]  # (K, n_live, A)
            err_mean[nxt] = d.mean(axis=(1, 2)).reshape(n_rates, streams)
            err_max[nxt] = d.max(axis=(1, 2)).reshape(n_rates, streams)
            nxt += 1
    out: dict[str, Any] = {"err_mean": err_mean, "err_max": err_max}
    if isinstance(learner, BoundedSoftQLearner):
        out["clipped_fraction"] = learner.n_clipped / float(steps * K)
        out["crossed"] = int(learner.crossed)
    return out


def normalised_auc(err: np.ndarray, err0: float, eval_at: np.ndarray) -> np.ndarray:
    """``(1/T) int_0^T err/err0 dt`` over the first axis (trapezoid, ``err(0) = err0``)."""
    t = np.concatenate([[0], eval_at]).astype(np.float64)
    e = np.concatenate([np.full((1, *err.shape[1:]), err0), err], axis=0) / err0
    area = np.sum(0.5 * (e[1:] + e[:-1]) * np.diff(t)[:, None, None], axis=0)
    return area / t[-1]


def summary_row(values: np.ndarray) -> dict[str, float]:
    m, lo, hi = interval(values)
    return {"mean": float(m), "lo": float(lo), "hi": float(hi)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="6 mazes, 5 rates, 5k steps")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--mazes", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--streams", type=int, default=None)
    args = ap.parse_args(argv)
    n_mazes = args.mazes or (6 if args.quick else 30)
    steps = args.steps or (5_000 if args.quick else 20_000)
    streams = args.streams or (2 if args.quick else 4)
    rates = np.logspace(-4, 0, 5 if args.quick else 9)
    eval_at = np.linspace(steps / 20, steps, 20).round().astype(np.int64)
    t0 = time.perf_counter()
    per_maze: list[dict[str, Any]] = []
    for i in range(n_mazes):
        mdp = tiltrl.random_maze(7, 7, wall_prob=0.2, seed=i, slippery=0.5)
        q_star = np.asarray(tiltrl.solve(mdp, BETA, gamma=GAMMA).q)
        live = reachable_states(mdp)
        err0_mean = float(np.abs(q_star[live]).mean())
        err0_max = float(np.abs(q_star[live]).max())
        rec: dict[str, Any] = {"maze": i, "reachable_states": int(live.size),
                               "err0_mean": err0_mean, "err0_max": err0_max}
        for method in METHODS:
            res = run(mdp, q_star, live, method, rates, streams, steps, eval_at, seed=1000 + i)
            auc = normalised_auc(res["err_mean"], err0_mean, eval_at)  # (n_rates, streams)
            rec[method] = {
                "auc": auc.mean(axis=1).tolist(),
                "final_mean": res["err_mean"][-1].mean(axis=1).tolist(),
                "final_max": res["err_max"][-1].mean(axis=1).tolist(),
                "curve_mean": (res["err_mean"].mean(axis=2) / err0_mean).tolist(),
                "clipped_fraction": res.get("clipped_fraction"),
                "crossed": res.get("crossed"),
            }
        per_maze.append(rec)
        print(f"maze {i:2d}: {live.size} reachable states; "
              + "  ".join(f"{m} auc@lr=1 {rec[m]['auc'][-1]:.3f}" for m in METHODS)
              + f"  [{time.perf_counter() - t0:.0f} s]", flush=True)
    elapsed = time.perf_counter() - t0

    summary: dict[str, Any] = {}
    for method in METHODS:
        rows = []
        for j, lr in enumerate(rates):
            rows.append({
                "lr": float(lr),
                "auc": summary_row(np.array([r[method]["auc"][j] for r in per_maze])),
                "final_mean": summary_row(np.array([r[method]["final_mean"][j]
                                                    for r in per_maze])),
                "final_max": summary_row(np.array([r[method]["final_max"][j]
                                                   for r in per_maze])),
            })
        summary[method] = rows

    def fmt(d: dict[str, float], digits: int = 3) -> str:
        return f"{d['mean']:.{digits}f} [{d['lo']:.{digits}f}, {d['hi']:.{digits}f}]"

    lines = ["| lr | " + " | ".join(LABELS[m] for m in METHODS) + " |",
             "|---:|" + "---|" * len(METHODS)]
    for j, lr in enumerate(rates):
        lines.append(f"| {lr:.0e} | " + " | ".join(
            f"AUC {fmt(summary[m][j]['auc'], 2)}; final {fmt(summary[m][j]['final_mean'], 1)}"
            for m in METHODS) + " |")
    note = ("residual_given clips with bounds computed from the TRUE transition model: it is "
            "a planner's step, not model-free learning; compare model-free learners with "
            "none / naive / residual_learned.")
    print("\n".join(lines))
    print(note)
    print(f"{elapsed:.0f} s")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "experiments/clipping_lr.py" + (" --quick" if args.quick else ""),
        "beta": BETA, "gamma": GAMMA, "mazes": n_mazes, "steps": steps, "streams": streams,
        "rates": rates.tolist(), "eval_steps": eval_at.tolist(), "bounds_every": 100,
        "maze": "random_maze(7, 7, wall_prob=0.2, seed=i, slippery=0.5)",
        "behaviour": "uniform prior (off-policy); same transition streams for every rate "
                     "and learner",
        "error": "mean |Q - Q*| over pairs of states reachable from the start; AUC "
                 "normalised by T * err(Q=0)",
        "interval": "mean over mazes of the per-maze mean over streams; 95% Student-t",
        "note": note, "elapsed_s": elapsed, "python": sys.version.split()[0],
        "numpy": np.__version__,
    }
    (out / "clipping_lr.json").write_text(json.dumps(
        {"meta": meta, "summary": summary, "table": lines, "per_maze": per_maze}, indent=1))
    plot(summary, rates, out / "clipping_lr.png", n_mazes, steps)
    print(f"wrote {out / 'clipping_lr.json'} and {out / 'clipping_lr.png'}")
    return 0


def plot(summary: dict[str, Any], rates: np.ndarray, path: Path, n_mazes: int,
         steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, title in ((axes[0], "auc", "normalised area under the error curve"),
                           (axes[1], "final_mean", f"final mean |Q - Q*| (step {steps:,})")):
        for method in METHODS:
            rows = summary[method]
            m = np.array([r[key]["mean"] for r in rows])
            lo = np.array([r[key]["lo"] for r in rows])
            hi = np.array([r[key]["hi"] for r in rows])
            ls = "--" if method == "residual_given" else "-"
            ax.plot(rates, m, ls, marker="o", ms=3, label=LABELS[method])
            ax.fill_between(rates, lo, hi, alpha=0.2)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_title(title, fontsize=10)
    axes[1].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{n_mazes} random 7x7 slippery mazes, beta={BETA}, gamma={GAMMA}; mean and "
                 "95% interval over mazes (dashed: given model = planner)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
