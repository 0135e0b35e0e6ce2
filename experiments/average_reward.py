"""Average-reward learning: U-learning versus differential soft Q-learning versus discounted
soft Q-learning with gamma -> 1, samples needed to reach a given error of the reward rate.

Set-up: ``tiltrl.gridworld("7x7holes")`` (deterministic, uniform prior, cyclic: holes and
goal reset to the start), ``beta`` in {1, 5}; the exact rate ``theta*`` is
``tiltrl.solve(mdp, beta).theta`` (deterministic dynamics: the controlled and the
fixed-dynamics optimum coincide). All learners see the same transitions: behaviour = the
uniform prior (off-policy), same seed; constant step sizes: 1 (the targets of a
deterministic model carry no noise: asynchronous value iteration) and, for the
average-reward learners, also 0.5; their ``theta`` step is ``theta_lr = 0.01 * lr`` (the
default). With step 1 on deterministic dynamics U-learning and differential soft
Q-learning are the same algorithm (U-learning's log step ``log(1 - a + a e^delta)`` is
``delta`` at ``a = 1``, and ``log u = beta Q``): their rows coincide, and the 0.5 rows show
the difference between averaging in ``u`` (U-learning) and in ``log u`` (differential).

- ``u_learning`` (Arriojas et al. 2023): its ``theta = log(rho)/beta``.
- ``differential_soft_q`` (Wan, Naik and Sutton 2021, entropy-regularised): its ``theta``.
- ``soft_q`` with ``gamma`` = 0.99 and 0.999: it has no rate of its own. Two estimates are
  reported, and the tables say which: ``theta_V = (1 - gamma) E_{s0}[V(s0)]`` (the
  discounted soft value at the start, scaled; biased by ``O(1 - gamma)`` even at the
  exact discounted solution -- the floor is printed) and ``theta_pi``: the exact
  entropy-regularised rate of the learned soft policy under the true dynamics
  (``tiltrl.agents.eval_return``, no sampling), which measures the policy, not a value
  estimate. For the average-reward learners ``theta_pi`` is reported too.

Samples to reach an error ``eps``: the first evaluation step from which
``|theta_hat - theta*| <= eps`` holds at every later evaluation step (60 log-spaced steps),
per seed; geometric mean and 95% interval (Student-t on ``log10`` of the counts) over the
seeds that reach it, and how many do.

Budget: 16 seeds x 200,000 steps per learner and beta, 12 vectorised runs (11 minutes
measured on the 2 shared cores under a load average of about 7); ``--quick``: 4 seeds x
20,000 steps (about 30 seconds).

    .venv/bin/python experiments/average_reward.py [--quick] [--out experiments/results]

Writes ``average_reward.json`` and ``average_reward.png``.
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
from tiltrl.agents import eval_return, interval, learn
from tiltrl.agents.base import TabularLearner
from tiltrl.bounds import soft_value

HERE = Path(__file__).resolve().parent
BETAS = (1.0, 5.0)
EPS = (1e-1, 1e-2, 1e-3)
#: (label, algo, gamma, constant step size)
LEARNERS: tuple[tuple[str, str, float | None, float], ...] = (
    ("u_learning lr=1", "u_learning", None, 1.0),
    ("differential_soft_q lr=1", "differential_soft_q", None, 1.0),
    ("u_learning lr=0.5", "u_learning", None, 0.5),
    ("differential_soft_q lr=0.5", "differential_soft_q", None, 0.5),
    ("soft_q gamma=0.99 lr=1", "soft_q", 0.99, 1.0),
    ("soft_q gamma=0.999 lr=1", "soft_q", 0.999, 1.0),
)


def first_time_below(err: np.ndarray, steps: np.ndarray, eps: float) -> np.ndarray:
    """Per seed (columns of ``err`` ``(n_eval, K)``): the first step from which
    ``err <= eps`` at every later evaluation; ``inf`` if never."""
    ok = err <= eps
    # position after the last failure
    last_bad = np.where(~ok, np.arange(err.shape[0])[:, None], -1).max(axis=0)
    out = np.full(err.shape[1], np.inf)
    reached = last_bad + 1 < err.shape[0]
    out[reached] = steps[last_bad[reached] + 1]
    return out


def summarise_times(t: np.ndarray) -> dict[str, Any]:
    fin = t[np.isfinite(t)]
    row: dict[str, Any] = {"reached": int(fin.size), "seeds": int(t.size)}
    if fin.size:
        # geometric mean and 95% interval (Student-t on log10: the counts span decades)
        m, lo, hi = interval(np.log10(fin))
        row.update(mean=float(10**m), lo=float(10**lo), hi=float(10**hi),
                   median=float(np.median(fin)))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 seeds, 20k steps")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    seeds = 4 if args.quick else 16
    steps = 20_000 if args.quick else 200_000
    eval_at = np.unique(np.geomspace(100, steps, 60).round().astype(np.int64))
    mdp = tiltrl.gridworld("7x7holes")
    init = np.asarray(mdp.initial)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    floors: dict[str, Any] = {}
    for beta in BETAS:
        theta_star = float(tiltrl.solve(mdp, beta).theta)
        for name, algo, gamma, lr in LEARNERS:
            th_direct: list[np.ndarray] = []
            th_pi: list[np.ndarray] = []

            def hook(t: int, learner: TabularLearner, gamma: float | None = gamma,
                     beta: float = beta, th_direct: list[np.ndarray] = th_direct,
                     th_pi: list[np.ndarray] = th_pi) -> None:
                if gamma is None:
                    th_direct.append(np.asarray(learner.theta))
                else:
                    v = soft_value(learner.q(), mdp.prior, beta)  # (K, S)
                    th_direct.append((1.0 - gamma) * (v @ init))
                th_pi.append(np.asarray(eval_return(learner.policy(), mdp, beta)))

            kw: dict[str, Any] = {"gamma": gamma} if gamma is not None else {}
            res = learn(algo, mdp, beta=beta, steps=steps, seeds=seeds, seed=7, lr=lr,
                        lr_decay="constant", behaviour="prior", reference=False,
                        eval_steps=eval_at, on_eval=hook, **kw)
            err = np.abs(np.array(th_direct) - theta_star)  # (n_eval, K)
            err_pi = np.abs(np.array(th_pi) - theta_star)
            estimate = "theta_V = (1-gamma) V(s0)" if gamma is not None else "learned theta"
            rec: dict[str, Any] = {
                "beta": beta, "learner": name, "gamma": gamma, "lr": lr,
                "theta_star": theta_star,
                "estimate": estimate, "updates_per_s": res.stats["updates_per_s"],
                "final_error": summarise_err(err[-1]), "final_error_pi": summarise_err(err_pi[-1]),
                "samples_to_reach": {f"{e:g}": summarise_times(first_time_below(err, eval_at, e))
                                     for e in EPS},
                "samples_to_reach_pi": {
                    f"{e:g}": summarise_times(first_time_below(err_pi, eval_at, e)) for e in EPS},
                "curve": interval(err, axis=1)[0].tolist(),
                "curve_pi": interval(err_pi, axis=1)[0].tolist(),
            }
            results.append(rec)
            print(f"beta={beta:g} {name:22s} final |err| {rec['final_error']['mean']:.2e} "
                  f"(policy {rec['final_error_pi']['mean']:.2e})  "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
        for gamma in (0.99, 0.999):
            ex = tiltrl.solve(mdp, beta, gamma=gamma)
            floors[f"beta={beta:g} gamma={gamma:g}"] = {
                "theta_V_error_of_exact_discounted": abs(
                    (1 - gamma) * float(np.asarray(ex.v) @ init) - theta_star),
                "theta_pi_error_of_exact_discounted": abs(
                    float(eval_return(np.asarray(ex.policy), mdp, beta)) - theta_star),
            }
    elapsed = time.perf_counter() - t0

    def cell(d: dict[str, Any]) -> str:
        if d["reached"] == 0:
            return f"not within {steps:,} (0/{d['seeds']})"
        tail = "" if d["reached"] == d["seeds"] else f" ({d['reached']}/{d['seeds']} seeds)"
        return f"{d['mean']:,.0f} [{d['lo']:,.0f}, {d['hi']:,.0f}]{tail}"

    lines = ["| beta | learner | theta estimate | " + " | ".join(
        f"samples to error {e:g}" for e in EPS) + f" | error at {steps:,} |",
        "|---:|---|---|" + "---:|" * (len(EPS) + 1)]
    for rec in results:
        for est, key, fe in ((rec["estimate"], "samples_to_reach", "final_error"),
                             ("theta_pi (rate of its policy)", "samples_to_reach_pi",
                              "final_error_pi")):
            lines.append(f"| {rec['beta']:g} | {rec['learner']} | {est} | "
                         + " | ".join(cell(rec[key][f"{e:g}"]) for e in EPS)
                         + f" | {rec[fe]['mean']:.1e} |")
    print("\n".join(lines))
    print("bias floors of the discounted estimates (exact discounted solution):")
    for k, v in floors.items():
        print(f"  {k}: theta_V {v['theta_V_error_of_exact_discounted']:.2e}, "
              f"theta_pi {v['theta_pi_error_of_exact_discounted']:.2e}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "experiments/average_reward.py" + (" --quick" if args.quick else ""),
        "model": repr(mdp), "betas": list(BETAS), "seeds": seeds, "steps": steps,
        "eval_steps": eval_at.tolist(), "eps": list(EPS), "lr": "constant (per learner)",
        "theta_lr": "0.01 * lr", "behaviour": "uniform prior (off-policy), same seed for all",
        "samples": "steps per seed (one transition each)",
        "reach": "first evaluation step from which the error stays <= eps",
        "elapsed_s": elapsed,
    }
    (out / "average_reward.json").write_text(json.dumps(
        {"meta": meta, "results": results, "floors": floors, "table": lines}, indent=1))
    plot(results, eval_at, out / "average_reward.png")
    print(f"{elapsed:.0f} s; wrote {out / 'average_reward.json'}")
    return 0


def summarise_err(e: np.ndarray) -> dict[str, float]:
    m, lo, hi = interval(e)
    return {"mean": float(m), "lo": float(lo), "hi": float(hi)}


def plot(results: list[dict[str, Any]], eval_at: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(BETAS), figsize=(11, 4.2), sharey=True)
    for ax, beta in zip(axes, BETAS, strict=True):
        for i, rec in enumerate(r for r in results if r["beta"] == beta):
            c = f"C{i}"
            ax.plot(eval_at, rec["curve"], color=c, label=f"{rec['learner']} ({rec['estimate']})")
            ax.plot(eval_at, rec["curve_pi"], ":", color=c)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples (transitions per seed)")
        ax.set_title(f"7x7holes, beta={beta:g}", fontsize=10)
    axes[0].set_ylabel("|theta - theta*| (mean over seeds)")
    axes[0].legend(fontsize=7)
    fig.suptitle("solid: the learner's own theta estimate; dotted: exact rate of its soft "
                 "policy", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
