"""Zero-shot composition on a four-rooms grid: KL to the optimal policy and value error of
f(Q) (OR / AND / convex) versus reward density and slipperiness, with the UAI 2023 bounds.

Set-up (Adamczyk et al., AAAI 2023 / UAI 2023 style): the 11x11 ``fourrooms`` map with its
goal tile turned into floor, 4 moves, discounted soft RL (beta, gamma below). Each of two
sub-tasks rewards a random set of open cells (reward 0 there, -1 elsewhere); the density is
the fraction of open cells that reward. The composed task has reward f(r_1, r_2).
Per seed (a new random draw of the rewarding cells) and setting it records
mean_s KL(pi_f || pi~*) over open cells, max |f(Q) - Q~*|, the bound gap
gamma (max kappa - min kappa)/(1 - gamma), the regret E_init[V~* - V^{pi_f}] and the
regret bound, and checks lb <= Q~* <= ub.

    .venv/bin/python experiments/prior_zero_shot.py [--seeds 10] [--out experiments/results]

Writes ``prior_zero_shot.json`` and ``prior_zero_shot_kl.png`` / ``_value.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

import tiltrl
from tiltrl.agents import interval
from tiltrl.prior import compose, compose_values, zero_shot

FS = ("or", "and", "convex")
DENSITIES = (0.02, 0.05, 0.1, 0.2, 0.4)
SLIPS: dict[str, float | None] = {"deterministic": None, "slippery k=2": 2.0,
                                  "slippery k=0": 0.0}


def base_map() -> list[str]:
    return [row.replace("G", "F") for row in tiltrl.MAPS["fourrooms"]]


def kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    lp = np.log(np.maximum(p, 1e-300))
    lq = np.log(np.maximum(q, 1e-300))
    return np.maximum(np.sum(p * (lp - lq), axis=1), 0.0)


def run(seeds: int, beta: float, gamma: float) -> dict:
    rows = base_map()
    open_cells = np.array([c != "W" for c in "".join(rows)])
    results: dict = {}
    for slip_name, k in SLIPS.items():
        mdp = tiltrl.gridworld(rows, slippery=0 if k is None else (True if k == 0 else k))
        S, A = mdp.shape
        cells = np.flatnonzero(open_cells)
        for dens in DENSITIES:
            n_goal = max(1, round(dens * cells.size))
            rec: dict[str, dict[str, list[float]]] = {
                f: {m: [] for m in ("kl", "value_error", "gap", "regret", "regret_bound",
                                    "bounds_hold")} for f in FS}
            for seed in range(seeds):
                rng = np.random.default_rng(1000 * seed + int(100 * dens))
                rewards = []
                for _ in range(2):
                    r = np.full((S, A), -1.0)
                    r[rng.choice(cells, n_goal, replace=False)] = 0.0
                    rewards.append(r)
                qs = [tiltrl.solve(mdp.with_reward(r), beta, gamma=gamma).q for r in rewards]
                for f in FS:
                    task = mdp.with_reward(compose_values(rewards, f))
                    truth = tiltrl.solve(task, beta, gamma=gamma)
                    comp = compose(task, qs, f, beta=beta, gamma=gamma)
                    zs = zero_shot(comp)
                    assert zs.v is not None and comp.lb is not None and comp.ub is not None
                    o = rec[f]
                    o["kl"].append(float(kl_rows(comp.policy, truth.policy)[open_cells].mean()))
                    o["value_error"].append(float(np.abs(comp.q - truth.q).max()))
                    o["gap"].append(comp.gap)
                    o["regret"].append(float(task.initial @ (truth.v - zs.v)))
                    o["regret_bound"].append(zs.regret_bound)
                    o["bounds_hold"].append(float(np.all(comp.lb <= truth.q + 1e-8)
                                                  and np.all(truth.q <= comp.ub + 1e-8)))
            results.setdefault(slip_name, {})[str(dens)] = rec
    return results


def summarise(results: dict) -> dict:
    out: dict = {}
    for slip, by_d in results.items():
        for dens, rec in by_d.items():
            for f, metrics in rec.items():
                for m, vals in metrics.items():
                    mean, lo, hi = interval(np.asarray(vals)[None, :])
                    out.setdefault(slip, {}).setdefault(dens, {}).setdefault(f, {})[m] = {
                        "mean": float(mean[0]), "lo": float(lo[0]), "hi": float(hi[0])}
    return out


def plot(summary: dict, metric: str, ylabel: str, path: Path, extra: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(FS), figsize=(4.2 * len(FS), 3.4), sharey=True)
    for ax, f in zip(axes, FS, strict=True):
        for i, slip in enumerate(summary):
            d = np.array([float(x) for x in summary[slip]])
            get = [summary[slip][k][f][metric] for k in summary[slip]]
            mean = np.array([g["mean"] for g in get])
            ax.plot(d, mean, "o-", color=f"C{i}", label=slip)
            ax.fill_between(d, [g["lo"] for g in get], [g["hi"] for g in get],
                            color=f"C{i}", alpha=0.2)
            if extra is not None:
                ax.plot(d, [summary[slip][k][f][extra]["mean"] for k in summary[slip]],
                        "--", color=f"C{i}", alpha=0.7)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"f = {f}")
        ax.set_xlabel("reward density (fraction of cells)")
    axes[0].set_ylabel(ylabel)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--beta", type=float, default=2.0)
    ap.add_argument("--gamma", type=float, default=0.95)
    ap.add_argument("--out", default="experiments/results")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    results = run(args.seeds, args.beta, args.gamma)
    summary = summarise(results)
    (out / "prior_zero_shot.json").write_text(json.dumps({
        "beta": args.beta, "gamma": args.gamma, "seeds": args.seeds, "map": "fourrooms (G->F)",
        "summary": summary, "raw": results, "time_s": time.perf_counter() - t0}, indent=1))
    plot(summary, "kl", "mean KL(pi_f || pi~*)", out / "prior_zero_shot_kl.png")
    plot(summary, "value_error", "max |f(Q) - Q~*|  (dashed: bound gap)",
         out / "prior_zero_shot_value.png", extra="gap")
    for slip in summary:
        for dens in summary[slip]:
            cells = "  ".join(
                f"{f}: KL {summary[slip][dens][f]['kl']['mean']:.2e} "
                f"err {summary[slip][dens][f]['value_error']['mean']:.3f} "
                f"gap {summary[slip][dens][f]['gap']['mean']:.3f} "
                f"hold {summary[slip][dens][f]['bounds_hold']['mean']:.0%}" for f in FS)
            print(f"{slip:>14} d={dens:<5} {cells}")
    print(f"done in {time.perf_counter() - t0:.1f} s -> {out}")


if __name__ == "__main__":
    main()
