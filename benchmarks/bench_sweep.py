"""Warm-started beta sweeps versus cold starts (tiltrl.sweep reuses the previous solution).

    .venv/bin/python benchmarks/bench_sweep.py [--out benchmarks/results/sweep.json]

For each model, solves the same increasing list of betas twice: each solve cold (h = 0)
and as `tiltrl.sweep` does it (each solve warm-started from the previous beta). Reports
total wall time (median of 3 repeats), total Newton iterations and the largest
|theta_warm - theta_cold|.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

import tiltrl

CASES = {
    "9x9zigzag": lambda: tiltrl.gridworld("9x9zigzag"),
    "7x7holes slippery=1": lambda: tiltrl.gridworld("7x7holes", slippery=1),
    "large_grid 100x100": lambda: tiltrl.large_grid(100, 100),
}


def run_case(name: str, betas: np.ndarray, repeats: int) -> dict[str, object]:
    mdp = CASES[name]()
    cold_t, warm_t = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        cold = [tiltrl.solve(mdp, float(b)) for b in betas]
        cold_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        warm = tiltrl.sweep(mdp, betas)
        warm_t.append(time.perf_counter() - t)
    theta_cold = np.array([s.theta for s in cold])
    return {
        "case": name,
        "pairs": mdp.n_states * mdp.n_actions,
        "n_betas": int(betas.size),
        "cold_s": statistics.median(cold_t),
        "warm_s": statistics.median(warm_t),
        "speedup": statistics.median(cold_t) / statistics.median(warm_t),
        "cold_iterations": int(sum(s.iterations for s in cold)),
        "warm_iterations": int(warm.iterations.sum()),
        "max_abs_dtheta": float(np.max(np.abs(theta_cold - warm.theta))),
        "all_converged": bool(all(s.converged for s in cold) and warm.converged.all()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/sweep.json")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    betas = np.geomspace(0.5, 500.0, 40)
    rows = [run_case(name, betas, args.repeats) for name in CASES]
    print("| case | S*A | betas | cold (s) | warm (s) | speedup | Newton it. cold / warm "
          "| max abs dtheta |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['case']} | {r['pairs']:,} | {r['n_betas']} | {r['cold_s']:.3f} | "
              f"{r['warm_s']:.3f} | {r['speedup']:.2f}x | {r['cold_iterations']} / "
              f"{r['warm_iterations']} | {r['max_abs_dtheta']:.1e} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(
        {"machine": platform.platform(), "betas": betas.tolist(), "results": rows}, indent=2
    ))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
