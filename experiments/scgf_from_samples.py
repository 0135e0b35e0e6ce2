"""U-learning as an estimator of the SCGF from samples of the prior dynamics, versus cloning,
at equal numbers of sampled transitions.

Set-up: ``tiltrl.gridworld("7x7holes")`` (deterministic, cyclic) and the same map with
``slippery=1`` (stochastic), under the uniform prior ``pi0``. The prior dynamics is the
Markov chain on state-action pairs ``P[(s,a),(s',a')] = p(s'|s,a) pi0(a'|s')`` with the
reward ``r(s,a,s')`` as a transition observable (``tiltrl.ld.from_mdp``). Its SCGF at
``k = beta`` is ``Lambda(beta) = log rho = beta * theta(beta)`` with ``theta`` the
controlled optimum, exact from ``tiltrl.solve(mdp, beta).theta``; ``beta`` in {1, 5}.

Both estimators only sample the prior dynamics; a "transition" is one draw of
``(s, a) -> (s', a')`` from ``P``:

- U-learning (``tiltrl.agents.learn("u_learning", behaviour="prior")`` with the library
  defaults: constant step 1 on the deterministic map -- its targets carry no noise -- and
  the per-visit step ``1/(1+n)^0.7`` on the slippery one, where the targets are noisy;
  ``theta_lr = 0.01``; ``dynamics="controlled"``, whose fixed point is the Perron root
  that defines ``Lambda`` also for stochastic dynamics): one learner consumes one
  transition per step; after ``B`` steps its estimate is ``beta * theta``. The learner
  knows which coordinates of the pair are the action (it keeps ``log u(s, a)`` and uses
  ``pi0`` to form ``chi(s')``); it never sees ``p``.
- Cloning (``tiltrl.ld.cloning``, Giardina-Kurchan-Peliti, prior proposal: clones move
  with ``P`` and are weighted by ``exp(beta r)``, systematic resampling): one run with
  population ``N`` over ``T`` measured steps after ``T // 10`` warm-up steps consumes
  ``N (T + T // 10)`` transitions. For a budget ``B`` three splits are run, with
  ``N / T`` = 0.1, 1 and 10 (``N >= 2``); cloning's bias falls like ``1/N`` and its
  transient like ``1/T``, so the split matters. The table shows every split; the "best"
  column picks the split with the smallest mean error *using the exact answer*, an
  oracle choice that flatters cloning.

Error: ``|Lambda_hat - Lambda| / |Lambda|`` per independent estimate (``R`` U-learning
seeds; ``R`` independent cloning runs); geometric mean and 95% interval (Student-t on
``log10``: the errors span decades) over the ``R`` estimates; the JSON also holds every
estimate and the mean signed error (the bias).

Budget: ``R = 16``, budgets 1e3 ... 3e5 transitions (U-learning: one run of 3e5 steps per
map and ``beta``, evaluated at every budget; 3.3 minutes measured on the 2 shared cores
under load); ``--quick``: ``R = 4``, budgets up to 3e4 (about 1 minute).

    .venv/bin/python experiments/scgf_from_samples.py [--quick] [--out experiments/results]

Writes ``scgf_from_samples.json`` and ``scgf_from_samples.png``.
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
from tiltrl.agents import interval, learn
from tiltrl.agents.base import TabularLearner
from tiltrl.ld.cloning import cloning
from tiltrl.ld.dictionary import from_mdp

HERE = Path(__file__).resolve().parent
BETAS = (1.0, 5.0)
CASES: tuple[tuple[str, float | None], ...] = (("7x7holes", None), ("7x7holes slippery=1", 1.0))
RATIOS = (0.1, 1.0, 10.0)  # N / T


def split(budget: int, ratio: float) -> tuple[int, int, int]:
    """``(N, T, warmup)`` with ``N (T + T//10) ~ budget`` and ``N / T ~ ratio``."""
    T = max(1, int(round(np.sqrt(budget / (1.1 * ratio)))))
    N = max(2, int(round(budget / (T + T // 10))))
    return N, T, T // 10


def stats(rel: np.ndarray) -> dict[str, float]:
    """Geometric mean and 95% interval (Student-t on log10), plus the arithmetic mean."""
    m, lo, hi = interval(np.log10(np.maximum(rel, 1e-300)))
    return {"mean": float(10**m), "lo": float(10**lo), "hi": float(10**hi),
            "arithmetic_mean": float(np.mean(rel))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="R = 4, budgets up to 3e4")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    R = 4 if args.quick else 16
    budgets = [1_000, 3_000, 10_000, 30_000] + ([] if args.quick
                                                 else [100_000, 300_000])
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    for case, beta in [(c, b) for c in CASES for b in BETAS]:
        name, slip = case
        mdp = tiltrl.gridworld("7x7holes", slippery=slip)
        chain, f = from_mdp(mdp)
        lam = beta * float(tiltrl.solve(mdp, beta).theta)
        # ---- U-learning: one run, evaluated at every budget
        thetas: dict[int, np.ndarray] = {}

        def hook(t: int, learner: TabularLearner,
                 thetas: dict[int, np.ndarray] = thetas) -> None:
            thetas[t] = np.asarray(learner.theta).copy()

        tu = time.perf_counter()
        learn("u_learning", mdp, beta=beta, steps=budgets[-1], seeds=R, seed=11,
              behaviour="prior", reference=False, eval_steps=budgets, on_eval=hook)
        u_time = time.perf_counter() - tu
        for B in budgets:
            rel = np.abs(beta * thetas[B] - lam) / abs(lam)
            results.append({"map": name, "beta": beta, "lambda": lam, "method": "u_learning",
                            "budget": B, "transitions": B, "rel_error": stats(rel),
                            "signed_rel_error_mean": float(np.mean((beta * thetas[B] - lam)
                                                                   / abs(lam))),
                            "per_estimate": rel.tolist()})
        print(f"{name}, beta={beta:g}: Lambda = {lam:.6f}; U-learning {u_time:.0f} s; "
              + ", ".join(f"B={B:,}: {results[-len(budgets) + i]['rel_error']['mean']:.1e}"
                          for i, B in enumerate(budgets)), flush=True)
        # ---- cloning: every budget and split
        for B in budgets:
            for ratio in RATIOS:
                N, T, wu = split(B, ratio)
                res = cloning(chain, f, beta, population=N, steps=T, warmup=wu, runs=R,
                              seed=1000 + B, keep_series=False)
                est = np.asarray(res.runs)
                rel = np.abs(est - lam) / abs(lam)
                results.append({"map": name, "beta": beta, "lambda": lam, "method": "cloning",
                                "ratio": ratio, "population": N, "steps": T, "warmup": wu,
                                "budget": B, "transitions": N * (T + wu),
                                "rel_error": stats(rel),
                                "signed_rel_error_mean": float(np.mean((est - lam) / abs(lam))),
                                "per_estimate": rel.tolist()})
            best = min((r for r in results if r["method"] == "cloning" and r["beta"] == beta
                        and r["map"] == name and r["budget"] == B),
                       key=lambda r: r["rel_error"]["mean"])
            print(f"  cloning B={B:,}: best N/T={best['ratio']:g} (N={best['population']}, "
                  f"T={best['steps']}) rel err {best['rel_error']['mean']:.1e}  "
                  f"[{time.perf_counter() - t0:.0f} s]", flush=True)
    elapsed = time.perf_counter() - t0

    def fmt(d: dict[str, float]) -> str:
        return f"{d['mean']:.1e} [{d['lo']:.1e}, {d['hi']:.1e}]"

    lines = ["| map | beta | transitions | U-learning | " + " | ".join(
        f"cloning N/T={r:g}" for r in RATIOS) + " | best cloning (oracle split) |",
        "|---|---:|---:|---|" + "---|" * (len(RATIOS) + 1)]
    for (name, _), beta in [(c, b) for c in CASES for b in BETAS]:
        for B in budgets:
            sel = [r for r in results if r["map"] == name and r["beta"] == beta
                   and r["budget"] == B]
            u = next(r for r in sel if r["method"] == "u_learning")
            cl = [next(r for r in sel if r["method"] == "cloning" and r["ratio"] == ratio)
                  for ratio in RATIOS]
            best = min(cl, key=lambda r: r["rel_error"]["mean"])
            lines.append(f"| {name} | {beta:g} | {B:,} | {fmt(u['rel_error'])} | "
                         + " | ".join(f"{fmt(c['rel_error'])} (N={c['population']}, "
                                      f"T={c['steps']})" for c in cl)
                         + f" | {fmt(best['rel_error'])} |")
    print("\n".join(lines))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "experiments/scgf_from_samples.py" + (" --quick" if args.quick else ""),
        "maps": [c[0] for c in CASES], "chain": "pair chain of tiltrl.ld.from_mdp (uniform prior)",
        "betas": list(BETAS), "estimates": R, "budgets": budgets, "ratios": list(RATIOS),
        "u_learning": "learn('u_learning', behaviour='prior'), library defaults (constant lr 1 "
                      "deterministic, per-visit 1/(1+n)^0.7 slippery), theta_lr 0.01",
        "cloning": "tiltrl.ld.cloning, proposal='prior', systematic resampling, "
                   "warmup T//10 counted in the transitions",
        "error": "|Lambda_hat - Lambda| / |Lambda|; geometric mean and 95% interval "
                 "(Student-t on log10) over independent estimates",
        "elapsed_s": elapsed,
    }
    (out / "scgf_from_samples.json").write_text(json.dumps(
        {"meta": meta, "results": results, "table": lines}, indent=1))
    plot(results, budgets, out / "scgf_from_samples.png")
    print(f"{elapsed:.0f} s; wrote {out / 'scgf_from_samples.json'}")
    return 0


def plot(results: list[dict[str, Any]], budgets: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes2 = plt.subplots(len(CASES), len(BETAS), figsize=(11, 8), sharey=True)
    panels = [(c[0], b) for c in CASES for b in BETAS]
    for ax, (name, beta) in zip(axes2.ravel(), panels, strict=True):
        mine = [r for r in results if r["map"] == name and r["beta"] == beta]
        series: list[tuple[str, list[dict[str, Any]]]] = [
            ("U-learning", [r for r in mine if r["method"] == "u_learning"])]
        for ratio in RATIOS:
            series.append((f"cloning N/T={ratio:g}", [
                r for r in mine if r["method"] == "cloning" and r["ratio"] == ratio]))
        for label, rows in series:
            x = np.array([r["transitions"] for r in rows])
            m = np.array([r["rel_error"]["mean"] for r in rows])
            lo = np.array([max(r["rel_error"]["lo"], 1e-12) for r in rows])
            hi = np.array([r["rel_error"]["hi"] for r in rows])
            ax.plot(x, m, marker="o", ms=3, label=label)
            ax.fill_between(x, lo, hi, alpha=0.2)
        lam = rows[0]["lambda"]
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sampled transitions of the prior dynamics")
        ax.set_title(f"{name}, beta={beta:g}, Lambda={lam:.4f}", fontsize=10)
        ax.set_ylabel("relative error of Lambda(beta)")
    axes2.ravel()[0].legend(fontsize=8)
    fig.suptitle("SCGF from samples: geometric mean and 95% interval over independent "
                 "estimates",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
