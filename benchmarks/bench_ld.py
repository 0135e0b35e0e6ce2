"""Large-deviation benchmark: cloning estimates of the SCGF against exact values.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ld.py [--quick] [--only cloning,exact] [--out FILE]
    .venv/bin/python benchmarks/bench_ld.py --report benchmarks/results/ld.json

One function per section (``SECTIONS``); each returns a JSON-ready dict with its
configuration, one row per measurement, ``PASS``/``FAIL`` target lines and a markdown
table. Results go to ``benchmarks/results/ld.json`` (``ld_quick.json`` with ``--quick``),
rewritten after every section; sections not run this time are kept from the existing
file, so sections can be rerun one at a time. The markdown tables go to the ``.md`` file
next to it.

Section ``cloning``
    Cloning (:func:`tiltrl.ld.cloning`, prior proposal, systematic resampling, ``runs``
    independent runs per call) against the exact SCGF, at a FIXED COMPUTE per run
    (``population x steps = budget``), for populations ``10^2 .. 10^5``:

    - ring current: ``ring(20, p=0.4, q=0.1)``, ``Lambda(k) = log(p e^k + q e^-k + 1-p-q)``
      (closed form), ``k`` in {-1, -0.5, 0.5, 1}; ``Lambda`` vanishes only at ``k = 0`` and
      ``log(q/p) = -1.39``, so relative errors are meaningful;
    - 7x7holes' reward under the uniform prior policy (the chain on states
      ``sum_a pi0(a|s) p(s'|s,a)``, observable ``r(s)``, the tile reward), ``k = beta`` in
      {1, 10}, exact ``Lambda(beta) = beta * tiltrl.solve(mdp, beta).theta``.

    "plain" is one ``cloning`` call at population ``N``; "1/N extrap." spends the same
    compute on ``N/4, N/2, N`` (a third each) and fits ``Lambda_inf + a/N``
    (:func:`tiltrl.ld.cloning_extrapolate`). Each measurement is repeated with
    independent seeds; the table shows medians over repeats of the relative error
    ``|estimate / exact - 1|``, of the reported relative standard error and of the wall
    time. Peak memory: ``tracemalloc`` peak of a separate short run (memory does not grow
    with the number of steps, only the kept log-growth series, ``runs x steps`` floats).

Section ``exact``
    Exact SCGF over many ``k`` (target: 100 values of ``k`` on a 1e5-state chain in under
    10 s) by warm-started continuation, ``scgf(chain, f, ks)``, against per-k cold calls
    ``[scgf(chain, f, k) for k in ks]`` (on a subset of ``k`` when that is slow; the time
    is then extrapolated and the JSON says so) and against the linear-space peer
    (explicit ``P_k`` + ARPACK ``eigs(k=1, which="LR")`` per k, restarts capped by
    ``maxiter``), with the largest ``|difference|`` between the three. Chains: the
    homogeneous ring ``ring(1e5, 0.3, 0.2)`` (constant Perron vector), a ring with
    period-10 modulated rates, and the state-action pair chain of
    ``large_grid(158, 158, slippery=1, hole_fraction=0.05)`` (10 k in [-1, 1]). Run it with
    ``OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1`` (set before numpy is imported; the
    ``setdefault`` in ``main`` comes too late for BLAS): threaded BLAS on a loaded machine
    made ARPACK ~10x slower.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import clean, environment  # noqa: E402

DEFAULT_OUT = HERE / "results" / "ld.json"
QUICK_OUT = HERE / "results" / "ld_quick.json"

TARGET_REL_ERR = 0.01  # < 1 % relative error on the ring at N = 1e4, |k| <= 1
TARGET_N = 10_000


# --------------------------------------------------------------------------- helpers
def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt_pct(x: float) -> str:
    if not math.isfinite(x):
        return "–"
    return f"{100 * x:.3f} %" if x < 0.1 else f"{100 * x:.1f} %"


def _fmt_s(x: float) -> str:
    return f"{x:.2f} s" if x < 100 else f"{x:.0f} s"


# --------------------------------------------------------------------------- cases
def grid_chain(name: str = "7x7holes") -> tuple[Any, np.ndarray, Any]:
    """The grid world under its prior policy as a chain on states, and its tile reward."""
    import tiltrl
    from tiltrl.ld import MarkovChain

    mdp = tiltrl.gridworld(name)
    S, A = mdp.n_states, mdp.n_actions
    if mdp.transition_reward is not None or np.ptp(mdp.reward, axis=1).max() != 0:
        raise ValueError(f"{name}: the reward is not a function of the state alone")
    prior = sp.csr_matrix(
        (np.asarray(mdp.prior).ravel(), np.arange(S * A), np.arange(0, S * A + 1, A)),
        shape=(S, S * A),
    )
    chain = MarkovChain(prior @ mdp.P, initial=mdp.initial)
    return chain, np.asarray(mdp.reward[:, 0], dtype=np.float64), mdp


def cloning_cases(quick: bool) -> list[dict[str, Any]]:
    import tiltrl
    from tiltrl.ld.examples import ring, ring_current, ring_scgf

    p, q, n = 0.4, 0.1, 20
    ring_chain, current = ring(n, p, q), ring_current(n)
    ks = [-1.0, 1.0] if quick else [-1.0, -0.5, 0.5, 1.0]
    cases = [
        {"case": "ring current", "model": f"ring({n}, p={p}, q={q})", "k": k,
         "chain": ring_chain, "f": current, "exact": float(ring_scgf(k, p, q))}
        for k in ks
    ]
    chain, reward, mdp = grid_chain()
    for beta in (1.0, 10.0):
        cases.append({"case": "7x7holes reward", "model": "7x7holes, uniform prior", "k": beta,
                      "chain": chain, "f": reward,
                      "exact": beta * tiltrl.solve(mdp, beta).theta})
    return cases


# --------------------------------------------------------------------------- cloning
def _peak_traced_mb(run: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def bench_cloning(quick: bool) -> dict[str, Any]:
    """Cloning error and wall time versus population at fixed compute (see module doc)."""
    from tiltrl.ld.cloning import cloning, cloning_extrapolate

    populations = [100, 1_000, 10_000] if quick else [100, 1_000, 10_000, 100_000]
    budget = 300_000 if quick else 3_000_000  # population x steps, per run
    runs = 10
    repeats = 1 if quick else 3
    config = {
        "populations": populations, "budget_population_x_steps": budget, "runs": runs,
        "repeats": repeats, "proposal": "prior", "resampling": "systematic",
        "warmup": "steps // 10 (not counted in the budget)",
        "extrapolation": "populations N/4, N/2, N with budget/3 each; WLS fit Lambda + a/N",
    }
    cases = cloning_cases(quick)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for ci, case in enumerate(cases):
        for N in populations:
            steps = budget // N
            sub = [max(2, N // 4), max(3, N // 2), N]
            sub_steps = [max(1, budget // (3 * m)) for m in sub]
            plain, extra = [], []
            for rep in range(repeats):
                seed = 1000 * ci + 10 * rep + populations.index(N)
                r = cloning(case["chain"], case["f"], case["k"], population=N, steps=steps,
                            runs=runs, seed=seed, keep_series=False)
                plain.append(r)
                e, _ = cloning_extrapolate(
                    case["chain"], case["f"], case["k"], populations=sub, steps=sub_steps,
                    runs=runs, seed=seed + 5, keep_series=False,
                )
                extra.append(e)
            mem = _peak_traced_mb(lambda case=case, N=N: cloning(
                case["chain"], case["f"], case["k"], population=N, steps=5, runs=runs,
                warmup=0, seed=0, keep_series=False))
            exact = case["exact"]

            def med(values: list[float]) -> float:
                return float(statistics.median(values))

            row = {
                "case": case["case"], "model": case["model"], "k": case["k"],
                "exact": exact, "population": N, "steps": steps, "runs": runs,
                "plain_estimates": [r.estimate for r in plain],
                "plain_stderrs": [r.stderr for r in plain],
                "plain_rel_err": med([abs(r.estimate / exact - 1) for r in plain]),
                "plain_rel_stderr": med([abs(r.stderr / exact) for r in plain]),
                "plain_z": med([(r.estimate - exact) / r.stderr if r.stderr > 0 else math.nan
                                for r in plain]),
                "plain_time_s": med([r.elapsed for r in plain]),
                "ns_per_clone_step": med([
                    1e9 * r.elapsed / (runs * N * (r.steps + r.warmup_steps)) for r in plain
                ]),
                "extrap_populations": sub, "extrap_steps": sub_steps,
                "extrap_estimates": [e.estimate for e in extra],
                "extrap_stderrs": [e.stderr for e in extra],
                "extrap_rel_err": med([abs(e.estimate / exact - 1) for e in extra]),
                "extrap_rel_stderr": med([abs(e.stderr / exact) for e in extra]),
                "extrap_time_s": med([e.elapsed for e in extra]),
                "extrap_slope": med([e.slope for e in extra]),
                "peak_traced_mb": mem,
            }
            rows.append(row)
            _log(
                f"[{time.perf_counter() - t_all:6.0f}s] {case['case']:16s} k={case['k']:<5g} "
                f"N={N:<7d} T={steps:<6d} plain rel.err {_fmt_pct(row['plain_rel_err'])} "
                f"({_fmt_s(row['plain_time_s'])}), extrap {_fmt_pct(row['extrap_rel_err'])} "
                f"({_fmt_s(row['extrap_time_s'])}), {mem:.1f} MB"
            )
    out = {"config": config, "rows": rows, "wall_s": time.perf_counter() - t_all}
    out["targets"] = cloning_targets(rows)
    out["markdown"] = cloning_table(config, rows)
    return out


def cloning_targets(rows: list[dict[str, Any]]) -> list[str]:
    at = [r for r in rows if r["case"] == "ring current" and r["population"] == TARGET_N
          and abs(r["k"]) <= 1]
    if not at:
        return [f"SKIP  ring current at N = {TARGET_N}: not measured in this mode"]
    worst = max(r["plain_rel_err"] for r in at)
    wall = max(r["plain_time_s"] for r in at)
    ok = worst < TARGET_REL_ERR
    return [
        f"{'PASS' if ok else 'FAIL'}  ring current, N = {TARGET_N}, |k| <= 1: largest median "
        f"relative error {100 * worst:.3f} % (target < {100 * TARGET_REL_ERR:g} %), wall time "
        f"<= {wall:.2f} s per estimate ({at[0]['runs']} runs x {at[0]['steps']} steps)"
    ]


def cloning_table(config: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    lines = [
        f"Fixed compute: population x steps = {config['budget_population_x_steps']:,} per run, "
        f"{config['runs']} runs per estimate, medians over {config['repeats']} repeat(s).",
        "",
        "| case | k | exact Λ | N | steps | plain: rel. error | rel. stderr | time "
        "| 1/N extrap.: rel. error | rel. stderr | time | ns / clone-step | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['k']:g} | {r['exact']:.6g} | {r['population']:,} | "
            f"{r['steps']:,} | {_fmt_pct(r['plain_rel_err'])} | "
            f"{_fmt_pct(r['plain_rel_stderr'])} | {_fmt_s(r['plain_time_s'])} | "
            f"{_fmt_pct(r['extrap_rel_err'])} | {_fmt_pct(r['extrap_rel_stderr'])} | "
            f"{_fmt_s(r['extrap_time_s'])} | {r['ns_per_clone_step']:.0f} | "
            f"{r['peak_traced_mb']:.1f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- exact SCGF
def modulated_ring(n: int, period: int = 10) -> Any:
    """Ring of ``n`` sites with period-``period`` modulated rates (``n % period == 0``):
    ``p_x = 0.3 + 0.1 sin(2 pi x / period)``, ``q_x = 0.2 + 0.05 cos(2 pi x / period)``."""
    from tiltrl.ld import MarkovChain

    x = np.arange(n)
    p = 0.3 + 0.1 * np.sin(2 * np.pi * x / period)
    q = 0.2 + 0.05 * np.cos(2 * np.pi * x / period)
    rows = np.concatenate([x, x, x])
    cols = np.concatenate([(x + 1) % n, (x - 1) % n, x])
    vals = np.concatenate([p, q, 1.0 - p - q])
    return MarkovChain(sp.csr_matrix((vals, (rows, cols)), shape=(n, n)))


def exact_cases(quick: bool) -> list[dict[str, Any]]:
    import tiltrl
    from tiltrl.ld import from_mdp
    from tiltrl.ld.examples import ring, ring_current, ring_scgf

    n = 10_000 if quick else 100_000
    side = 50 if quick else 158
    ks_ring = np.linspace(-2.0, 2.0, 20 if quick else 100)
    ks_grid = np.linspace(-1.0, 1.0, 10)
    grid, reward = from_mdp(tiltrl.large_grid(side, side, slippery=1, hole_fraction=0.05))
    return [
        {"case": "homogeneous ring", "model": f"ring({n}, p=0.3, q=0.2), current",
         "note": "translation invariant: the Perron vector is constant, so every k is "
                 "solved from an exact start (warm and cold alike)",
         "chain": ring(n, 0.3, 0.2), "f": ring_current(n), "ks": ks_ring,
         "closed_form": ring_scgf(ks_ring, 0.3, 0.2), "repeats": 3,
         "cold_subset": None, "peer_subset": [0, ks_ring.size // 2 + 1, ks_ring.size - 1],
         "peer_maxiter": 100},
        {"case": "modulated ring", "model": f"ring({n}), p_x = 0.3 + 0.1 sin(2 pi x/10), "
                                            "q_x = 0.2 + 0.05 cos(2 pi x/10), current",
         "note": "period-10 rates: non-constant Perron vector",
         "chain": modulated_ring(n), "f": ring_current(n), "ks": ks_ring,
         "closed_form": None, "repeats": 3,
         "cold_subset": None, "peer_subset": [0, ks_ring.size // 2 + 1, ks_ring.size - 1],
         "peer_maxiter": 100},
        {"case": "grid pair chain",
         "model": f"from_mdp(large_grid({side}, {side}, slippery=1, hole_fraction=0.05)), "
                  "reward",
         "note": "state-action pair chain under the uniform prior; reward r(s,a,s')",
         "chain": grid, "f": reward, "ks": ks_grid, "closed_form": None, "repeats": 1,
         "cold_subset": [0, 4, 9] if not quick else None,
         "peer_subset": list(range(ks_grid.size)), "peer_maxiter": 3000},
    ]


def _arpack_scgf(chain: Any, vals: np.ndarray, k: float, maxiter: int) -> tuple[float, bool]:
    """The linear-space peer: build ``P_k`` explicitly, ARPACK ``eigs(k=1, which="LR")``."""
    from scipy.sparse.linalg import ArpackNoConvergence, eigs

    P = chain.P
    Pk = sp.csr_matrix((P.data * np.exp(k * vals), P.indices, P.indptr), shape=P.shape)
    try:
        w = eigs(Pk, k=1, which="LR", maxiter=maxiter, tol=1e-12, return_eigenvectors=False)
    except ArpackNoConvergence as exc:
        got = np.asarray(exc.eigenvalues)
        return (float(np.log(got.real.max())) if got.size else math.nan), False
    return float(np.log(w.real.max())), True


def bench_exact(quick: bool) -> dict[str, Any]:
    """Exact SCGF over many k: warm-started continuation vs per-k cold solves vs ARPACK."""
    from tiltrl.ld import scgf, transition_values

    config = {
        "warm": "scgf(chain, f, ks): one class structure, each k started from the "
                "extrapolated neighbouring eigenvectors and the last LU",
        "cold": "[scgf(chain, f, k) for k in ks]: class structure and Newton from h = 0 "
                "at every k",
        "peer": "explicit P_k (CSR) + scipy.sparse.linalg.eigs(P_k, k=1, which='LR', "
                "tol=1e-12), ARPACK, per k; maxiter = restarts cap",
        "threads": {v: os.environ.get(v) for v in
                    ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
        "timer": "time.perf_counter; medians over repeats; loaded shared machine",
        "memory": "tracemalloc peak of a separate warm call over the first 3 k (numpy "
                  "allocations; SuperLU's own factor storage is not traced) and the "
                  "process peak RSS after the case",
    }
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    for case in exact_cases(quick):
        chain, f, ks = case["chain"], case["f"], case["ks"]
        vals = transition_values(chain, f)
        _log(f"[{time.perf_counter() - t_all:6.0f}s] {case['case']}: S={chain.n_states:,}, "
             f"nnz={chain.P.nnz:,}, {ks.size} k")
        warm_t, warm = [], np.empty(0)
        for _ in range(case["repeats"]):
            t0 = time.perf_counter()
            warm = np.asarray(scgf(chain, f, ks))
            warm_t.append(time.perf_counter() - t0)
        _log(f"    warm {statistics.median(warm_t):.2f} s")
        sub = case["cold_subset"] or list(range(ks.size))
        cold_t, cold = [], np.empty(0)
        for _ in range(case["repeats"]):
            t0 = time.perf_counter()
            cold = np.array([scgf(chain, f, float(ks[i])) for i in sub])
            cold_t.append(time.perf_counter() - t0)
        cold_med = float(statistics.median(cold_t))
        cold_per_k = cold_med / len(sub)
        _log(f"    cold {cold_med:.2f} s on {len(sub)} k")
        peer_t, peer, peer_ok = [], [], []
        for i in case["peer_subset"]:
            t0 = time.perf_counter()
            val, ok = _arpack_scgf(chain, vals, float(ks[i]), case["peer_maxiter"])
            peer_t.append(time.perf_counter() - t0)
            peer.append(val)
            peer_ok.append(ok)
        _log(f"    ARPACK {sum(peer_t):.2f} s on {len(peer_t)} k, converged {sum(peer_ok)}")
        mem = _peak_traced_mb(lambda chain=chain, f=f, ks=ks: scgf(chain, f, ks[:3]))
        warm_med = float(statistics.median(warm_t))
        peer_idx = np.asarray(case["peer_subset"])
        conv = np.asarray(peer_ok, dtype=bool)
        row = {
            "case": case["case"], "model": case["model"], "note": case["note"],
            "states": chain.n_states, "transitions": int(chain.P.nnz),
            "k_range": [float(ks.min()), float(ks.max())], "n_k": int(ks.size),
            "repeats": case["repeats"],
            "warm_time_s": warm_med, "warm_times_s": warm_t,
            "warm_per_k_s": warm_med / ks.size,
            "cold_k_measured": len(sub), "cold_time_measured_s": cold_med,
            "cold_times_s": cold_t, "cold_per_k_s": cold_per_k,
            "cold_time_s": cold_per_k * ks.size,
            "cold_extrapolated": len(sub) < ks.size,
            "cold_over_warm": cold_per_k * ks.size / warm_med,
            "peer_k_measured": int(peer_idx.size), "peer_maxiter": case["peer_maxiter"],
            "peer_times_s": peer_t, "peer_per_k_s": float(np.median(peer_t)),
            "peer_time_s": float(np.median(peer_t)) * ks.size,
            "peer_extrapolated": peer_idx.size < ks.size,
            "peer_converged": int(conv.sum()),
            "max_abs_warm_minus_cold": float(np.max(np.abs(warm[sub] - cold))),
            "max_abs_warm_minus_peer": (float(np.max(np.abs(warm[peer_idx[conv]]
                                                            - np.asarray(peer)[conv])))
                                        if conv.any() else math.nan),
            "peak_traced_mb": mem,
            "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "ks": ks, "warm_values": warm, "peer_values": peer,
        }
        if case["closed_form"] is not None:
            row["max_abs_warm_minus_closed_form"] = float(
                np.max(np.abs(warm - case["closed_form"])))
        rows.append(row)
    out: dict[str, Any] = {"config": config, "rows": rows,
                           "wall_s": time.perf_counter() - t_all}
    out["targets"] = exact_targets(rows, quick)
    out["markdown"] = exact_table(rows)
    return out


def exact_targets(rows: list[dict[str, Any]], quick: bool) -> list[str]:
    lines = []
    for r in rows:
        if r["n_k"] < 100 or r["states"] < 100_000:
            lines.append(f"SKIP  {r['case']}: {r['n_k']} k on {r['states']:,} states "
                         "(the target is 100 k on 1e5 states)")
            continue
        ok = r["warm_time_s"] < 10.0
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  {r['case']}: 100 k on {r['states']:,} states in "
            f"{r['warm_time_s']:.2f} s (target < 10 s), {r['cold_over_warm']:.1f}x faster than "
            f"cold starts"
        )
    return lines


def exact_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| case | states | transitions | k | warm (all k) | warm / k | cold / k | cold / warm "
        "| ARPACK / k (converged) | max abs diff warm-cold | max abs diff warm-ARPACK "
        "| traced peak MB |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        cold_note = (f" ({r['cold_k_measured']} k measured)" if r["cold_extrapolated"]
                     else "")
        lines.append(
            f"| {r['case']} | {r['states']:,} | {r['transitions']:,} | {r['n_k']} in "
            f"[{r['k_range'][0]:g}, {r['k_range'][1]:g}] | {_fmt_s(r['warm_time_s'])} | "
            f"{r['warm_per_k_s']:.3g} s | {r['cold_per_k_s']:.3g} s{cold_note} | "
            f"{r['cold_over_warm']:.1f}x | {r['peer_per_k_s']:.3g} s "
            f"({r['peer_converged']}/{r['peer_k_measured']}, maxiter {r['peer_maxiter']}) | "
            f"{r['max_abs_warm_minus_cold']:.1e} | {r['max_abs_warm_minus_peer']:.1e} | "
            f"{r['peak_traced_mb']:.0f} |"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------- driver
SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "cloning": bench_cloning,
    "exact": bench_exact,
}


def report(data: dict[str, Any], path: Path) -> str:
    meta = data["meta"]
    try:
        path = path.resolve().relative_to(HERE.parent)
    except ValueError:
        pass
    out = [f"# tiltrl large-deviation benchmark ({meta['mode']})", "",
           f"`{meta['command']}` — {meta['environment']['date']}, "
           f"{meta['environment']['cpu_count']} CPUs, numpy {meta['environment']['numpy']}",
           f"Results: `{path}`", ""]
    for name, sec in data["sections"].items():
        out += [f"## {name}", "", sec.get("markdown", ""), ""]
        out += [f"    {line}" for line in sec.get("targets", [])]
        if "wall_s" in sec:
            out.append(f"    section wall time {sec['wall_s']:.0f} s")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sweep (about a minute)")
    ap.add_argument("--only", default=None,
                    help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    ap.add_argument("--out", type=Path, default=None,
                    help=f"JSON results (default {DEFAULT_OUT.name}, {QUICK_OUT.name} quick)")
    ap.add_argument("--report", type=Path, default=None, metavar="JSON",
                    help="print the tables and targets of an existing results file")
    args = ap.parse_args(argv)
    if args.report is not None:
        print(report(json.loads(args.report.read_text()), args.report))
        return 0
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    out_path: Path = args.out or (QUICK_OUT if args.quick else DEFAULT_OUT)
    names = args.only.split(",") if args.only else list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        ap.error(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}")
    mode = "quick" if args.quick else "full"
    data: dict[str, Any] = {"sections": {}}
    if out_path.exists():
        old = json.loads(out_path.read_text())
        if old.get("meta", {}).get("mode") == mode:
            data["sections"] = old.get("sections", {})
    data["meta"] = {
        "mode": mode,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "environment": environment(),
    }
    out_path.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        data["sections"][name] = SECTIONS[name](args.quick)
        data["meta"]["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out_path.write_text(json.dumps(clean(data), indent=1))
    text = report(data, out_path)
    out_path.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
