"""Learning the composed task with prior solutions: cold start vs warm start from f(Q),
warm start + clipping with the composition bounds, and learning only the correction.

Set-up as ``prior_zero_shot.py`` (four-rooms, G -> F, two sub-tasks with random
rewarding cells, OR composition), slippery k=2, beta=2, gamma=0.9. All learners are
tabular soft Q-learning (``tiltrl.agents.learn``, per-visit step 1/(1+n)^0.7, soft
behaviour policy) run for ``--seeds`` independent seeds in lockstep; the error is
max |Q - Q~*| against the exact optimum (for the correction learner: of f(Q) + C).

    .venv/bin/python experiments/prior_learning.py [--seeds 10] [--steps 40000]

Writes ``prior_learning.json`` (curves, mean and 95% interval, and steps to reach each
error level) and ``prior_learning.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import tiltrl
from tiltrl.agents import interval, learn
from tiltrl.prior import compose, compose_values, learn_correction, warm_start, zero_shot

LEVELS = (0.1, 0.03, 0.01)


def setup(beta: float, gamma: float, density: float, seed: int):
    rows = [row.replace("G", "F") for row in tiltrl.MAPS["fourrooms"]]
    mdp = tiltrl.gridworld(rows, slippery=2.0)
    S, A = mdp.shape
    cells = np.flatnonzero(np.array([c != "W" for c in "".join(rows)]))
    rng = np.random.default_rng(seed)
    rewards = []
    for _ in range(2):
        r = np.full((S, A), -1.0)
        r[rng.choice(cells, max(1, round(density * cells.size)), replace=False)] = 0.0
        rewards.append(r)
    qs = [tiltrl.solve(mdp.with_reward(r), beta, gamma=gamma).q for r in rewards]
    task = mdp.with_reward(compose_values(rewards, "or"))
    return compose(task, qs, "or", beta=beta, gamma=gamma)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--steps", type=int, default=40_000)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--gamma", type=float, default=0.9)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    comp = setup(args.beta, args.gamma, args.density, seed=7)
    truth = tiltrl.solve(comp.task, comp.beta, gamma=comp.gamma)
    zs = zero_shot(comp)
    assert zs.v is not None
    open_cells = np.array([c != "W" for c in "".join(comp.task.info["grid"])])
    common = {"steps": args.steps, "seeds": args.seeds, "seed": 0, "n_evals": 25}
    kw = {"beta": comp.beta, "gamma": comp.gamma, **common}
    runs = {
        "cold start": learn("soft_q", comp.task, **kw),
        "warm start f(Q)": learn("soft_q", comp.task, **kw, **warm_start(comp)),
        "warm start + clip target (composition bounds)": learn(
            "bounded_soft_q", comp.task, **kw, **warm_start(comp, clip=True)),
        "warm start + square penalty (composition bounds)": learn(
            "bounded_soft_q", comp.task, **kw, **warm_start(comp, clip=True), clip="square"),
        "correction only (f(Q) + C)": learn_correction(comp, **common)[0],
    }
    report: dict = {"beta": comp.beta, "gamma": comp.gamma, "seeds": args.seeds,
                    "steps": args.steps, "density": args.density, "f": "or",
                    "zero_shot_error": float(np.abs(comp.q - truth.q)[open_cells].max()),
                    "zero_shot_regret": float(comp.task.initial @ (truth.v - zs.v)),
                    "bound_gap": comp.gap, "runs": {}}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (name, res) in enumerate(runs.items()):
        assert res.curves is not None
        steps = res.curves.steps
        # suboptimality of the learned soft policy (exact evaluation, from the initial
        # state); max |Q - Q~*| over the pairs is dominated by the never-visited wall cells
        err = res.curves.reference["eval_return"] - res.curves.values["eval_return"]
        mean, lo, hi = interval(err)
        reach = {}
        for level in LEVELS:
            hit = np.flatnonzero(mean <= level)
            reach[str(level)] = int(steps[hit[0]]) if hit.size else None
        report["runs"][name] = {"steps": steps.tolist(), "mean": mean.tolist(),
                                "lo": lo.tolist(), "hi": hi.tolist(),
                                "final_mean": float(mean[-1]), "steps_to_error": reach,
                                "final_q_error_open_cells": float(np.mean(np.abs(
                                    res.q if "correction" not in name else
                                    comp.q[None] + res.q - truth.q[None])[:, open_cells]
                                    .max(axis=(1, 2)) if "correction" in name else
                                    np.abs(res.q - truth.q[None])[:, open_cells]
                                    .max(axis=(1, 2)))),
                                "clipped_fraction": res.stats.get("clipped_fraction")}
        ax.plot(steps, mean, color=f"C{i}", label=name)
        ax.fill_between(steps, lo, hi, color=f"C{i}", alpha=0.2)
        print(f"{name:>48}: final regret {mean[-1]:.4f} [{lo[-1]:.4f}, {hi[-1]:.4f}]  "
              f"steps to regret {reach}  max|Q-Q~*| open cells "
              f"{report['runs'][name]['final_q_error_open_cells']:.3f}")
    ax.axhline(report["zero_shot_regret"], color="k", ls=":", label="zero-shot pi_f")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("environment steps per seed")
    ax.set_ylabel("regret E_init[V~*] - E_init[V^pi]")
    ax.set_title(f"OR composition, four-rooms slippery k=2, {args.seeds} seeds (mean, 95%)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "prior_learning.png", dpi=120)
    report["time_s"] = time.perf_counter() - t0
    (out / "prior_learning.json").write_text(json.dumps(report, indent=1))
    print(f"zero-shot: max|f(Q)-Q~*| {report['zero_shot_error']:.3f} regret "
          f"{report['zero_shot_regret']:.4f}; bound gap {comp.gap:.3f}; "
          f"done in {report['time_s']:.1f} s -> {out}")


if __name__ == "__main__":
    main()
