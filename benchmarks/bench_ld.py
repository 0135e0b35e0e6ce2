"""Large-deviation benchmark: cloning estimates of the SCGF against exact values.

Run from the repository root::

    .venv/bin/python benchmarks/bench_ld.py [--quick] [--only cloning] [--out FILE]
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
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results" / "ld.json"
QUICK_OUT = HERE / "results" / "ld_quick.json"

TARGET_REL_ERR = 0.01  # < 1 % relative error on the ring at N = 1e4, |k| <= 1
TARGET_N = 10_000


# --------------------------------------------------------------------------- helpers
def _clean(x: Any) -> Any:
    """JSON-safe copy: numpy scalars to Python, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return _clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return x


def environment() -> dict[str, Any]:
    import scipy

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    src = HERE.parent / "src" / "tiltrl"
    if src.is_dir():  # the code measured may be uncommitted: fingerprint it
        digest = hashlib.sha256()
        for f in sorted(src.rglob("*.py")):
            digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
        info["tiltrl_source_sha256"] = digest.hexdigest()[:16]
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=HERE, timeout=10,
        ).stdout.strip()
    except Exception:
        info["git_commit"] = None
    return info


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


# --------------------------------------------------------------------------- driver
SECTIONS: dict[str, Callable[[bool], dict[str, Any]]] = {
    "cloning": bench_cloning,
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
        out_path.write_text(json.dumps(_clean(data), indent=1))
    text = report(data, out_path)
    out_path.with_suffix(".md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
