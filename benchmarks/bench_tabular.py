"""Tabular-learner benchmark: vectorised learners against a plain per-seed Python loop.

Run from the repository root::

    .venv/bin/python benchmarks/bench_tabular.py [--quick] [--out benchmarks/results/tabular.json]

For each learner (``soft_q``, ``bounded_soft_q``, ``u_learning``, ``differential_soft_q``)
and ``K = 1, 16, 256`` seeds it times ``tiltrl.agents.learn(..., reference=False)``: every
step samples a Boltzmann action from the current soft policy, samples the next state of
all ``K`` copies of ``7x7holes`` with ``slippery=1`` (stochastic, 196 state-action pairs)
and applies one update to all ``K`` tables. The figure is aggregate updates per second
(``K * steps / seconds``), median over ``--repeats`` runs. Two backends of ``learn`` are
timed: ``numpy`` (one vectorised numpy update per step) and ``numba`` (the optional compiled
kernel, ``pip install tiltrl[fast]``: blocks of steps of all seeds in one jitted call, the
same random stream and the same tables, see ``tiltrl.agents._numba``); ``numba`` rows are
skipped when it is missing.

The peer is a plain per-seed Python loop implementing the same algorithm (Boltzmann
action from ``pi0 exp(beta Q)``, next state by inverse CDF with ``bisect`` on the row's
cumulative probabilities, the same update with the per-visit step size) with Python
floats and the ``math`` module -- the usual way to write a tabular learner. For
``bounded_soft_q`` it clips the target to the soft Bellman bounds of the given model
(:func:`loop_bounds`: the formulas of ``tiltrl.bounds.soft_bellman_bounds``, DESIGN.md §5),
computed at the start and recomputed from its table after every ``BOUNDS_EVERY = 100``
updates, as the learner does. It runs one seed; a per-seed loop's aggregate rate does not
depend on ``K``. Its tables are checked to be finite. ``tests/test_bench_tabular.py``
checks that it is the same algorithm: fed the uniforms of ``learn``'s random stream it
learns the same table as ``learn(..., seeds=1)`` (to 1e-10; the same clipped targets for
bounded soft Q), and its bounds equal ``tiltrl.bounds``. The loop and the vectorised runs
are interleaved (one loop run and one run of each backend per repeat, at every ``K``), so a
change of machine load during the benchmark affects all; the speed-up is the median of the
paired ratios.

Peak memory: ``tracemalloc`` peak of one extra (untimed) vectorised run at each ``K``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import random
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import environment  # noqa: E402

DEFAULT_OUT = HERE / "results" / "tabular.json"
ALGOS = ("soft_q", "bounded_soft_q", "u_learning", "differential_soft_q")
SEEDS = (1, 16, 256)
BETA, GAMMA = 5.0, 0.9
TARGET_RATE = 1e6
TARGET_SPEEDUP = 30.0
BOUNDS_EVERY = 100  # bounded soft Q: bounds refreshed after every 100 updates


def build_model() -> Any:
    import tiltrl

    return tiltrl.gridworld("7x7holes", slippery=1)


def run_vectorised(algo: str, mdp: Any, K: int, steps: int, seed: int,
                   backend: str = "numpy") -> float:
    from tiltrl.agents import learn

    kw: dict[str, Any] = {"gamma": GAMMA} if algo in ("soft_q", "bounded_soft_q") else {}
    if algo == "bounded_soft_q":
        kw.update(model="given", bounds_every=BOUNDS_EVERY)
    t0 = time.perf_counter()
    res = learn(algo, mdp, beta=BETA, steps=steps, seeds=K, seed=seed, reference=False,
                lr_decay="visits", backend=backend, **kw)
    elapsed = time.perf_counter() - t0
    if not np.all(np.isfinite(res.q)):
        raise RuntimeError(f"{algo}: non-finite table")
    return elapsed


def loop_bounds(q: list[list[float]], log_pi0: list[list[float]], rbar: list[list[float]],
                trans: list[list[tuple[int, float]]], beta: float, gamma: float,
                ) -> tuple[list[list[float]], list[list[float]]]:
    """Soft Bellman bounds of one table with the given model, plain Python: the formulas
    of :func:`tiltrl.bounds.soft_bellman_bounds` (DESIGN.md §5).

    ``V(s) = (log sum_a exp(x_a - m) + m) / beta`` with ``x = log pi0 + beta Q`` and ``m``
    its max; ``TQ(s,a) = r(s,a) + gamma sum_s' p(s'|s,a) V(s')``; ``D = TQ - Q``;
    ``lb, ub = TQ + gamma/(1-gamma) * (min D, max D)``; a crossed pair (``lb > ub``, rounding
    only) gets ``(-inf, inf)`` (not clipped), as in the learner.
    """
    v = []
    for lp_s, q_s in zip(log_pi0, q, strict=True):
        x = [lp + beta * qa for lp, qa in zip(lp_s, q_s, strict=True)]
        m = max(x)
        if not math.isfinite(m):
            m = 0.0
        v.append((math.log(sum([math.exp(xa - m) for xa in x])) + m) / beta)
    A = len(q[0])
    tq = []
    d_min, d_max = math.inf, -math.inf
    for s, (r_s, q_s) in enumerate(zip(rbar, q, strict=True)):
        t_s = []
        for a in range(A):
            t = r_s[a] + gamma * sum([p * v[j] for j, p in trans[s * A + a]])
            d = t - q_s[a]
            if d < d_min:
                d_min = d
            if d > d_max:
                d_max = d
            t_s.append(t)
        tq.append(t_s)
    c = gamma / (1.0 - gamma)
    lo_add, hi_add = c * d_min, c * d_max
    lb = [[t + lo_add for t in t_s] for t_s in tq]
    ub = [[t + hi_add for t in t_s] for t_s in tq]
    for lb_s, ub_s in zip(lb, ub, strict=True):
        for a in range(A):
            if lb_s[a] > ub_s[a]:
                lb_s[a], ub_s[a] = -math.inf, math.inf
    return lb, ub


def loop_learner(algo: str, mdp: Any, steps: int, rand: Callable[[], float], *,
                 beta: float = BETA, gamma: float = GAMMA, bounds_every: int = BOUNDS_EVERY,
                 ) -> tuple[list[list[float]], float, int]:
    """One seed, plain Python: same sampling, same update (per-visit 1/(1+n)^0.7).

    ``rand()`` gives the uniforms: the initial state, then per step the action and the next
    state. ``bounded_soft_q`` is the given-model learner of the benchmark: the target is
    clipped to the soft Bellman bounds (:func:`loop_bounds`), computed from the table at the
    start and recomputed after every ``bounds_every`` updates. Returns the table, the
    seconds of the steps (bounds included) and the number of clipped targets.
    """
    S, A = mdp.shape
    P = mdp.P
    cum: list[list[float]] = []
    nxt: list[list[int]] = []
    rew: list[list[float]] = []
    trans: list[list[tuple[int, float]]] = []
    r_all = mdp.reward_per_transition()
    for row in range(S * A):
        lo, hi = int(P.indptr[row]), int(P.indptr[row + 1])
        c = list(np.cumsum(P.data[lo:hi]))
        c[-1] = 1.0
        cum.append(c)
        nxt.append([int(x) for x in P.indices[lo:hi]])
        rew.append([float(x) for x in r_all[lo:hi]])
        trans.append([(int(j), float(p)) for j, p in zip(P.indices[lo:hi], P.data[lo:hi],
                                                        strict=True)])
    pi0 = mdp.prior.tolist()
    log_pi0 = [[math.log(p) if p > 0 else -math.inf for p in row_] for row_ in pi0]
    rbar = np.asarray(mdp.reward, dtype=float).tolist()
    bounded = algo == "bounded_soft_q"
    scale = 1.0 if algo == "u_learning" else beta
    q = [[0.0] * A for _ in range(S)]
    visits = [[0] * A for _ in range(S)]
    theta = 0.0
    eta = 0.01
    n_clipped = 0
    init_cum = list(np.cumsum(mdp.initial))
    s = bisect.bisect_right(init_cum, rand())
    t0 = time.perf_counter()
    if bounded:
        lb, ub = loop_bounds(q, log_pi0, rbar, trans, beta, gamma)
    for t in range(1, steps + 1):
        row_q = q[s]
        m = max(row_q)
        w = [pi0[s][j] * math.exp(scale * (row_q[j] - m)) for j in range(A)]
        x = rand() * sum(w)
        a, acc = 0, w[0]
        while acc < x and a < A - 1:
            a += 1
            acc += w[a]
        row = s * A + a
        j = min(bisect.bisect_right(cum[row], rand()), len(cum[row]) - 1)
        s2, r = nxt[row][j], rew[row][j]
        q2 = q[s2]
        m2 = max(q2)
        lse = scale * m2 + math.log(sum(pi0[s2][i] * math.exp(scale * (q2[i] - m2))
                                        for i in range(A)))
        n = visits[s][a]
        visits[s][a] = n + 1
        alpha = (1.0 + n) ** -0.7
        if algo == "soft_q":
            q[s][a] += alpha * (r + gamma * lse / beta - q[s][a])
        elif bounded:
            y = r + gamma * lse / beta
            yc = min(max(y, lb[s][a]), ub[s][a])
            if yc != y:
                n_clipped += 1
            q[s][a] += alpha * (yc - q[s][a])
            if t % bounds_every == 0:
                lb, ub = loop_bounds(q, log_pi0, rbar, trans, beta, gamma)
        elif algo == "differential_soft_q":
            step = alpha * (r - theta + lse / beta - q[s][a])
            q[s][a] += step
            theta += eta * step
        else:  # u_learning, controlled: log((1 - alpha) + alpha e^delta)
            delta = beta * r + lse - theta - q[s][a]
            step = (math.log(alpha) + delta if alpha == 1.0 else
                    math.log((1.0 - alpha) + alpha * math.exp(min(delta, 700.0))))
            q[s][a] += step
            theta += eta * step
        s = s2
    elapsed = time.perf_counter() - t0
    if not all(math.isfinite(v) for row_ in q for v in row_):
        raise RuntimeError(f"loop {algo}: non-finite table")
    return q, elapsed, n_clipped


def run_loop(algo: str, mdp: Any, steps: int, seed: int) -> float:
    """Seconds of :func:`loop_learner` for one seed with Python's ``random``."""
    return loop_learner(algo, mdp, steps, random.Random(seed).random)[1]


def peak_memory_mb(algo: str, mdp: Any, K: int, steps: int, backend: str) -> float:
    tracemalloc.start()
    run_vectorised(algo, mdp, K, steps, seed=99, backend=backend)
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return peak


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps and repeats (~1 min)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help="JSON results file")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (median)")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    # total updates per vectorised run ~ constant, so small K runs enough steps to time
    updates = 300_000 if args.quick else 1_000_000
    loop_steps = 20_000 if args.quick else 50_000
    mdp = build_model()
    results: list[dict[str, Any]] = []
    print(f"model: {mdp!r}; beta={BETA}, gamma={GAMMA} (discounted learners); "
          f"{repeats} repeat(s), median")
    backends = ["numpy"]
    try:
        import numba  # noqa: F401

        backends.append("numba")
    except ImportError:
        print("numba not installed: numba rows skipped (pip install tiltrl[fast])")
    for algo in ALGOS:
        for K in SEEDS:
            steps = max(2_000, min(updates // K, 60_000))
            for be in backends:  # warm-up (and the kernel's compilation)
                run_vectorised(algo, mdp, K, min(steps, 2_000), seed=123, backend=be)
            # interleaved: each repeat times the loop and every backend back to back, so a
            # change of machine load hits all (the speed-up is the median of the paired
            # ratios)
            times: dict[str, list[float]] = {be: [] for be in backends}
            loop_times = []
            for i in range(repeats):
                loop_times.append(run_loop(algo, mdp, loop_steps, seed=i))
                for be in backends:
                    times[be].append(run_vectorised(algo, mdp, K, steps, seed=i, backend=be))
            loop_rate = loop_steps / statistics.median(loop_times)
            for be in backends:
                t = statistics.median(times[be])
                rate = K * steps / t
                speedup = statistics.median(
                    (K * steps / tv) / (loop_steps / tl)
                    for tv, tl in zip(times[be], loop_times, strict=True))
                mem = peak_memory_mb(algo, mdp, K, min(steps, 2_000), be)
                rec = {
                    "algo": algo, "backend": be, "K": K, "steps": steps,
                    "times_s": times[be], "median_s": t, "updates_per_s": rate,
                    "loop_updates_per_s": loop_rate, "loop_steps": loop_steps,
                    "loop_times_s": loop_times, "speedup_vs_loop": speedup,
                    "peak_traced_mb": mem, "load_average": list(os.getloadavg()),
                }
                results.append(rec)
                print(f"  {algo:20s} {be:5s} K={K:4d}: {rate:12,.0f} updates/s  "
                      f"loop {loop_rate:10,.0f}/s  x{speedup:6.1f}  peak {mem:6.1f} MB  "
                      f"load {os.getloadavg()[0]:.1f}", flush=True)
    lines = ["", "| learner | backend | K=1 | K=16 | K=256 | per-seed Python loop | "
             "K=256 / loop |", "|---|---|---:|---:|---:|---:|---:|"]
    for algo in ALGOS:
        for be in backends:
            recs = {r["K"]: r for r in results if r["algo"] == algo and r["backend"] == be}
            lines.append(
                f"| {algo} | {be} | "
                + " | ".join(f"{recs[K]['updates_per_s']:,.0f}" for K in SEEDS)
                + f" | {recs[256]['loop_updates_per_s']:,.0f} | "
                f"{recs[256]['speedup_vs_loop']:.0f}x |"
            )
    checks = []
    for algo in ALGOS:
        for be in backends:
            r = next(x for x in results
                     if x["algo"] == algo and x["K"] == 256 and x["backend"] == be)
            ok = (r["updates_per_s"] >= TARGET_RATE
                  and r["speedup_vs_loop"] >= TARGET_SPEEDUP)
            checks.append(f"{'PASS' if ok else 'FAIL'} {algo} ({be}): "
                          f"{r['updates_per_s']:,.0f} updates/s at K=256 (target "
                          f"{TARGET_RATE:,.0f}), {r['speedup_vs_loop']:.0f}x the loop "
                          f"(target {TARGET_SPEEDUP:.0f}x)")
    print("\n".join(lines))
    print("\n".join(checks))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "meta": {"environment": environment(), "quick": args.quick, "repeats": repeats,
                 "backends": backends,
                 "model": repr(mdp), "beta": BETA, "gamma": GAMMA,
                 "command": "benchmarks/bench_tabular.py" + (" --quick" if args.quick else "")},
        "results": results, "table": lines, "targets": checks,
    }, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
