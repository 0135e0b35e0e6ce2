"""The ``tiltrl`` command: solve entropy-regularised MDPs exactly from the shell.

Subcommands::

    tiltrl maps                         named grid maps, with an ASCII rendering
    tiltrl solve MAP --beta B ...       one exact solution (theta, energy, KLs, ...)
    tiltrl sweep MAP --betas LIST ...   thermodynamic curves over beta (table + plot)
    tiltrl demo [--out DIR]             the README demo: calibration, controlled vs fixed
    tiltrl learn ALGO MAP --beta B ...  tabular learners vs the exact solution (curves)
    tiltrl compose MAP --task CELLS ... zero-shot composition of solved sub-tasks + bounds
    tiltrl scgf MODEL --k LIST ...      SCGF, mean, variance, rate function (+ cloning)
    tiltrl train ALGO ENV --steps N ... deep agent on a gymnasium env (extra ``deep``)
    tiltrl eval CHECKPOINT --episodes N mean / std / IQM return of a trained agent
    tiltrl plot-curves RUN_DIR|RESULTS.json ... --out learning curves over seeds (mean + interval)
    tiltrl render CHECKPOINT --out GIF  rendered frame and the agent's view, side by side

``MAP`` is a name from :data:`tiltrl.MAPS`, a text file holding the rows of a grid (one
row per line, ``#`` comments allowed), rows given inline separated by commas
(``SFF,FHF,FFG``), or a gymnasium toy-text id (``FrozenLake-v1``, ``CliffWalking-v1``,
``Taxi-v4``), read with :func:`tiltrl.from_gymnasium`.

Convention (``shared/DESIGN.md`` §1): rewards, not costs; ``theta`` is the optimal
entropy-regularised reward rate, ``log_rho = beta * theta``; ``cost rate = -theta`` is the
number the anchor papers quote. ``--dynamics controlled`` is the tilted-matrix (Perron /
Doob) optimum, ``--dynamics fixed`` the optimum with the environment's own dynamics.

``rich`` (extra ``cli``) makes tables and progress bars nicer; without it (or with
``--plain``) the output is plain text. Figures need matplotlib (extra ``plot``).
Exit status: 0 on success, 2 on bad input (a one-line error, no traceback; ``--debug``
shows the traceback), 1 when the demo's calibration check fails.
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["main", "parse_betas", "parse_ks"]

#: DESIGN.md §4: uniform prior, deterministic, min_reward=-1.5, 7x7holes, beta=10.
CALIBRATION = {"map": "7x7holes", "beta": 10.0, "cost_rate": 0.964515, "tol": 1e-6}

_GYM_ID = re.compile(r"^(?:[\w.-]+/)?[A-Za-z][\w.-]*-v\d+$")
_INLINE_ROWS = re.compile(r"^[SFHGWCNR]+(?:,[SFHGWCNR]+)+$")


class CLIError(Exception):
    """Bad input: reported as one line on stderr, exit status 2."""


# ============================================================================ output
class Output:
    """Plain-text or rich output: tables, key/value blocks, progress bars."""

    def __init__(self, plain: bool = False) -> None:
        self.console: Any = None
        self.err_console: Any = None
        if not plain:
            try:
                from rich.console import Console
            except ImportError:
                pass
            else:
                # when piped, do not wrap at 80 columns
                width = None if sys.stdout.isatty() else max(
                    160, shutil.get_terminal_size((160, 24)).columns
                )
                self.console = Console(width=width, highlight=False)
                self.err_console = Console(stderr=True, highlight=False)

    def line(self, text: str = "", *, style: str | None = None) -> None:
        if self.console is not None:
            self.console.print(text, style=style, markup=False, highlight=False)
        else:
            print(text)

    def heading(self, text: str) -> None:
        if self.console is not None:
            self.console.rule(text, style="cyan")
        else:
            print(f"\n== {text} ==")

    def warn(self, text: str) -> None:
        if self.err_console is not None:
            self.err_console.print(f"warning: {text}", style="yellow", markup=False)
        else:
            print(f"warning: {text}", file=sys.stderr)

    def table(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[str]],
        *,
        title: str | None = None,
        align: Sequence[str] | None = None,
    ) -> None:
        align = list(align) if align is not None else ["right"] * len(columns)
        cells = [list(columns)] + [[str(c) for c in row] for row in rows]
        widths = [max(len(line) for c in col for line in c.splitlines() or [""])
                  for col in zip(*cells, strict=True)]
        # rich would truncate numbers ("0.0045…") in a too narrow terminal: go plain then
        fits = sum(widths) + 3 * len(widths) + 1 <= getattr(self.console, "width", 0)
        if self.console is not None and fits:
            from rich.table import Table
            from rich.text import Text

            tab = Table(title=title, title_justify="left", header_style="bold")
            for name, al in zip(columns, align, strict=True):
                tab.add_column(name, justify=al, no_wrap=al == "right")
            for row in rows:
                tab.add_row(*(Text(str(c)) for c in row))
            self.console.print(tab)
            return
        if title:
            print(title)

        def fmt(row: Sequence[str]) -> list[str]:
            split = [c.splitlines() or [""] for c in row]
            height = max(len(s) for s in split)
            out = []
            for k in range(height):
                parts = []
                for s, w, al in zip(split, widths, align, strict=True):
                    text = s[k] if k < len(s) else ""
                    parts.append(text.rjust(w) if al == "right" else text.ljust(w))
                out.append("  ".join(parts).rstrip())
            return out

        print("\n".join(fmt(cells[0])))
        print("  ".join("-" * w for w in widths))
        for row in cells[1:]:
            print("\n".join(fmt(row)))

    def pairs(self, items: Sequence[tuple[str, str]], *, title: str | None = None) -> None:
        self.table(["quantity", "value"], items, title=title, align=["left", "left"])

    @contextmanager
    def progress(self, total: int, description: str) -> Iterator[Callable[[str], None]]:
        """Context yielding ``advance(label)``; a rich bar, or ``\\r`` lines on a tty."""
        if self.err_console is not None and self.err_console.is_terminal:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            with Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[label]}"),
                console=self.err_console,
                transient=True,
            ) as bar:
                task = bar.add_task(description, total=total, label="")

                def advance(label: str) -> None:
                    bar.update(task, advance=1, label=label)

                yield advance
            return
        done = 0
        tty = sys.stderr.isatty()

        def advance_plain(label: str) -> None:
            nonlocal done
            done += 1
            if tty:
                sys.stderr.write(f"\r{description} {done}/{total} {label}    ")
                sys.stderr.flush()

        yield advance_plain
        if tty:
            sys.stderr.write("\n")


def _f(x: Any, digits: int = 6) -> str:
    """Compact number: ``digits`` significant digits, ``nan`` / ``inf`` spelled out."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return str(x)
    if math.isnan(v):
        return "nan"
    return f"{v:.{digits}g}"


# ============================================================================ inputs
def _parse_grid(text: str, option: str, *, example: str, log: bool, what: str) -> np.ndarray:
    """A comma list or a ``FROM:TO:COUNT`` range (log- or linearly spaced) of finite
    numbers, positive when ``log``; errors name ``option``."""
    text = text.strip()
    if not text:
        raise ValueError(f"{option} is empty")
    if ":" in text:
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"{option} {text!r}: a range is FROM:TO:COUNT (e.g. {example})")
        try:
            lo, hi = float(parts[0]), float(parts[1])
            count = int(parts[2])
        except ValueError as exc:
            raise ValueError(
                f"{option} {text!r}: FROM and TO must be numbers, COUNT an integer"
            ) from exc
        if log and not (lo > 0 and hi > 0 and math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{option} {text!r}: FROM and TO must be positive (log spacing)")
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{option} {text!r}: FROM and TO must be finite")
        if count < 1:
            raise ValueError(f"{option} {text!r}: COUNT must be at least 1")
        if count == 1:
            return np.array([lo])
        if log:
            return np.logspace(math.log10(lo), math.log10(hi), count)
        return np.linspace(lo, hi, count)
    values = []
    for item in text.split(","):
        try:
            x = float(item)
        except ValueError as exc:
            raise ValueError(f"{option}: {item.strip()!r} is not a number") from exc
        if log and not (x > 0 and math.isfinite(x)):
            raise ValueError(f"{option}: {what} must be positive and finite, got {item.strip()}")
        if not math.isfinite(x):
            raise ValueError(f"{option}: {what} must be finite, got {item.strip()}")
        values.append(x)
    return np.array(values)


def parse_betas(text: str) -> np.ndarray:
    """``"0.5,1,2"`` -> those values; ``"0.1:100:20"`` -> 20 log-spaced values in [0.1, 100].

    Raises ValueError with a readable message on bad input (non-numbers, beta <= 0, a
    count below 1).
    """
    return _parse_grid(text, "--betas", example="0.1:100:20", log=True, what="beta")


def parse_ks(text: str, option: str = "--k") -> np.ndarray:
    """``"-1,0,1"`` -> those tilts; ``"-1:1:21"`` -> 21 evenly spaced tilts in [-1, 1].

    Like :func:`parse_betas` but linear spacing and any sign (``k`` is a tilt, not a
    temperature). Raises ValueError naming ``option`` with a readable message on bad input.
    """
    return _parse_grid(text, option, example="-1:1:21", log=False, what="k")


def _read_rows(path: Path) -> list[str]:
    rows: list[str] = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        rows.extend(line.split())
    if not rows:
        raise CLIError(f"{path}: no map rows found")
    return rows


def _grid_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    for key in ("slippery", "n_actions", "min_reward", "max_reward"):
        val = getattr(args, key, None)
        if val is not None:
            kw[key] = val
    if getattr(args, "no_wind", False):
        kw["wind"] = None
    return kw


def _parse_gym_args(items: Sequence[str] | None) -> dict[str, Any]:
    import ast

    out: dict[str, Any] = {}
    for item in items or ():
        if "=" not in item:
            raise CLIError(f"--gym-arg {item!r}: expected KEY=VALUE (e.g. is_slippery=False)")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = ast.literal_eval(raw.strip())
        except (ValueError, SyntaxError):
            out[key.strip()] = raw.strip()
    return out


def load_mdp(spec: str, args: argparse.Namespace) -> Any:
    """Build the MDP named by ``spec`` (map name, file, inline rows or gymnasium id)."""
    import tiltrl

    grid_kw = _grid_kwargs(args)
    path = Path(spec)
    if spec in tiltrl.MAPS:
        return tiltrl.gridworld(spec, **grid_kw)
    if path.is_file():
        return tiltrl.gridworld(_read_rows(path), name=path.stem, **grid_kw)
    if _INLINE_ROWS.match(spec):
        return tiltrl.gridworld(spec.split(","), **grid_kw)
    if _GYM_ID.match(spec):
        if grid_kw:
            flags = ", ".join("--" + k.replace("_", "-") for k in grid_kw)
            raise CLIError(
                f"{flags} {'applies' if len(grid_kw) == 1 else 'apply'} to grid maps only, "
                f"not to the gymnasium env {spec}; "
                "use --gym-arg KEY=VALUE for gymnasium.make options"
            )
        try:
            return tiltrl.from_gymnasium(
                spec, terminal=getattr(args, "terminal", "reset"),
                **_parse_gym_args(getattr(args, "gym_arg", None)),
            )
        except Exception as exc:
            if type(exc).__module__.startswith("gymnasium"):
                raise CLIError(f"gymnasium could not make {spec!r}: {exc}") from exc
            raise
    raise CLIError(
        f"unknown map {spec!r}: not a named map ({', '.join(tiltrl.MAPS)}), not a file, "
        "not inline rows (e.g. SFF,FHF,FFG) and not a gymnasium id (e.g. FrozenLake-v1)"
    )


def _describe_mdp(mdp: Any) -> str:
    name = mdp.info.get("name") or "MDP"
    kind = "deterministic" if mdp.is_deterministic else "stochastic"
    return f"{name}: {mdp.n_states} states, {mdp.n_actions} actions, {kind}"


#: average-reward solves of models at least this large report each Newton step
_PROGRESS_MIN_PAIRS = 200_000


def _solve(mdp: Any, beta: float, *, warm: Any = None, **kw: Any) -> Any:
    """``tiltrl.solve`` with convergence warnings silenced (status is printed instead)."""
    import tiltrl

    if warm is not None:
        kw["warm_start"] = warm
    if (
        kw.get("gamma") is None
        and kw.get("horizon") is None
        and mdp.n_states * mdp.n_actions >= _PROGRESS_MIN_PAIRS
    ):
        # one Newton step takes seconds on models this large: show each one
        kw.setdefault("progress", True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*converge.*")
        return tiltrl.solve(mdp, beta, **kw)


def _run_sweep(
    out: Output, mdp: Any, betas: np.ndarray, *, dynamics: str, label: str = "sweep",
    **kw: Any,
) -> tuple[Any, list[Any]]:
    """Solve at every beta (increasing order, warm-started); return (Sweep, solutions)."""
    from tiltrl import Sweep

    order = np.argsort(betas, kind="stable")
    sols: list[Any] = [None] * len(betas)
    prev = None
    with out.progress(len(betas), label) as advance:
        for i in order:
            sol = _solve(mdp, float(betas[i]), dynamics=dynamics, warm=prev, **kw)
            sols[i] = sol
            prev = sol
            advance(f"beta={betas[i]:g}")
    sweep = Sweep(
        betas=np.asarray(betas, dtype=float),
        theta=np.array([s.theta for s in sols]),
        energy=np.array([s.energy for s in sols]),
        policy_kl=np.array([s.policy_kl for s in sols]),
        dynamics_kl=np.array([s.dynamics_kl for s in sols]),
        iterations=np.array([s.iterations for s in sols], dtype=np.int64),
        converged=np.array([bool(s.converged) for s in sols]),
        dynamics=dynamics,
    )
    return sweep, sols


def _rate_rows(sols: Sequence[Any]) -> list[list[str]]:
    rows = []
    for s in sols:
        rows.append([
            _f(s.beta), _f(s.theta, 8), _f(s.cost_rate, 8), _f(s.energy), _f(s.policy_kl),
            _f(s.dynamics_kl), str(s.iterations), "yes" if s.converged else "NO",
        ])
    return rows


_RATE_COLUMNS = ["beta", "theta", "cost rate", "energy", "policy KL", "dynamics KL",
                 "iters", "converged"]


def _require_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CLIError("plots need matplotlib: pip install tiltrl[plot]") from exc


# ============================================================================ commands
def cmd_maps(args: argparse.Namespace, out: Output) -> int:
    import tiltrl

    names = args.names or list(tiltrl.MAPS)
    unknown = [n for n in names if n not in tiltrl.MAPS]
    if unknown:
        raise CLIError(f"unknown map(s) {', '.join(unknown)}; known: {', '.join(tiltrl.MAPS)}")
    rows = []
    for name in names:
        grid = tiltrl.MAPS[name]
        counts = {t: sum(r.count(t) for r in grid) for t in "SGHWCNR"}
        tiles = " ".join(f"{t}:{n}" for t, n in counts.items() if n)
        rows.append([name, f"{len(grid)}x{len(grid[0])}", tiles, "\n".join(grid)])
    out.table(["name", "size", "tiles", "layout"], rows, align=["left", "left", "left", "left"],
              title="named maps")
    out.line("tiles: S start, F floor, H hole, G goal, W wall, C candy, N nail, "
             "R wind-free floor; size = rows x columns")
    return 0


def cmd_solve(args: argparse.Namespace, out: Output) -> int:
    mdp = load_mdp(args.map, args)
    if args.plot:
        _require_plotting()
    kw: dict[str, Any] = {"method": args.method, "tol": args.tol}
    if args.dynamics is not None:
        kw["dynamics"] = args.dynamics
    if args.gamma is not None:
        kw["gamma"] = args.gamma
    if args.horizon is not None:
        kw["horizon"] = args.horizon
    if args.max_iter is not None:
        kw["max_iter"] = args.max_iter
    t0 = time.perf_counter()
    sol = _solve(mdp, args.beta, **kw)
    elapsed = time.perf_counter() - t0

    items: list[tuple[str, str]] = [
        ("model", _describe_mdp(mdp)),
        ("beta", _f(sol.beta)),
        ("problem", f"{sol.kind} reward, {sol.dynamics} dynamics, method {sol.method}"),
    ]
    if sol.kind == "average":
        items += [
            ("theta (reward rate)", _f(sol.theta, 10)),
            ("cost rate (-theta)", _f(sol.cost_rate, 10)),
            ("log rho = beta*theta", _f(sol.log_rho, 10)),
            ("energy E_d[r]", _f(sol.energy, 10)),
            ("policy KL", _f(sol.policy_kl, 10)),
            ("dynamics KL", _f(sol.dynamics_kl, 10)),
        ]
        gap = sol.energy - (sol.policy_kl + sol.dynamics_kl) / sol.beta - sol.theta
        items.append(("identity E - (KLs)/beta - theta", _f(gap, 3)))
        lo, hi = sol.bracket
        if np.isfinite(lo) or np.isfinite(hi):
            items.append(("bracket on theta", f"[{_f(lo, 10)}, {_f(hi, 10)}]"))
    else:
        v = np.asarray(sol.v, dtype=float)
        v0 = v[0] if v.ndim > 1 else v
        items.append(("soft value at initial dist.", _f(float(mdp.initial @ v0), 10)))
        if sol.gamma is not None:
            items.append(("gamma", _f(sol.gamma)))
        if sol.horizon is not None:
            items.append(("horizon", str(sol.horizon)))
    items += [
        ("iterations", str(sol.iterations)),
        ("residual", _f(sol.residual, 3)),
        ("converged", "yes" if sol.converged else "NO"),
        ("time", f"{elapsed:.3g} s"),
    ]
    items += [("note", n) for n in sol.notes]
    out.pairs(items, title=f"tiltrl solve {args.map}")
    if not sol.converged:
        out.warn("the solver did not reach the tolerance; see residual and bracket")
    if args.json:
        _write_json(out, sol, args.json)
    if args.plot:
        if not mdp.info.get("grid"):
            out.warn(f"--plot: {mdp.info.get('name', 'this model')} is not a grid world; "
                     "no figure written")
        else:
            from tiltrl.viz import plot_policy_and_stationary

            out.line(f"wrote {plot_policy_and_stationary(mdp, sol, args.plot)}")
    return 0


def _write_json(out: Output, result: Any, target: str) -> None:
    """Write a result's ``to_json`` to ``target`` (creating folders) and say so."""
    path = Path(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    result.to_json(path)
    out.line(f"wrote {path}")


def cmd_sweep(args: argparse.Namespace, out: Output) -> int:
    betas = parse_betas(args.betas)
    mdp = load_mdp(args.map, args)
    if args.plot:
        _require_plotting()
    sweep, sols = _run_sweep(out, mdp, betas, dynamics=args.dynamics, method=args.method,
                             tol=args.tol)
    out.table(_RATE_COLUMNS, _rate_rows(sols),
              title=f"tiltrl sweep {args.map} ({args.dynamics} dynamics) — {_describe_mdp(mdp)}")
    if not sweep.converged.all():
        out.warn(f"{int((~sweep.converged).sum())} of {len(betas)} solves did not converge")
    mc = _sweep_monte_carlo(out, mdp, sols, args) if args.mc else None
    if args.json:
        _write_json(out, sweep, args.json)
        if mc is not None:
            import json

            path = Path(args.json).with_suffix(".mc.json")
            path.write_text(json.dumps({
                "betas": sweep.betas.tolist(), "energy_exact": sweep.energy.tolist(),
                "energy_mc": mc[1].tolist(), "stderr_mc": mc[2].tolist(),
                "steps": args.mc_steps, "chains": args.mc_chains, "seed": args.seed,
            }, indent=2))
            out.line(f"wrote {path}")
    if args.plot:
        from tiltrl.viz import plot_sweep
        from tiltrl.viz._mpl import save_figure

        name = mdp.info.get("name") or args.map
        fig = plot_sweep(sweep, title=f"{name}: thermodynamics of the optimal policy "
                                      f"({args.dynamics} dynamics)", mc=mc)
        out.line(f"wrote {save_figure(fig, args.plot)}")
    return 0


def _sweep_monte_carlo(
    out: Output, mdp: Any, sols: Sequence[Any], args: argparse.Namespace
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Simulate the optimal process at each beta (tiltrl.ld.simulate_energy) and compare
    the measured reward per step with the exact energy ``E_d[r]``; print the table."""
    from tiltrl.ld import simulate_energy

    betas, means, errs, rows = [], [], [], []
    with out.progress(len(sols), "Monte Carlo") as advance:
        for i, sol in enumerate(sols):
            m, se = simulate_energy(mdp, sol, steps=args.mc_steps, n_chains=args.mc_chains,
                                    seed=args.seed + i, burn_in=max(100, args.mc_steps // 10))
            z = (m - sol.energy) / se if se > 0 else math.nan
            betas.append(sol.beta)
            means.append(m)
            errs.append(se)
            rows.append([_f(sol.beta), _f(sol.energy, 8), _f(m, 8), _f(se, 3), _f(z, 3)])
            advance(f"beta={sol.beta:g}")
    out.table(["beta", "energy (exact)", "energy (MC)", "stderr", "z"], rows,
              title=f"Monte Carlo check: the optimal {args.dynamics} process simulated, "
                    f"{args.mc_chains} chains x {args.mc_steps:,} steps per beta; "
                    "z = (MC - exact) / stderr")
    z_all = np.array([(m - s.energy) / e for m, s, e in zip(means, sols, errs, strict=True)
                      if e > 0])
    if z_all.size and np.max(np.abs(z_all)) > 4:
        out.warn(f"Monte Carlo energy off by {np.max(np.abs(z_all)):.1f} standard errors")
    return np.array(betas), np.array(means), np.array(errs)


def cmd_demo(args: argparse.Namespace, out: Output) -> int:
    import tiltrl

    t_start = time.perf_counter()
    outdir = Path(args.out)
    betas = parse_betas(args.betas)
    if args.points < 2:
        raise CLIError("--points must be at least 2")
    base = load_mdp(args.map, argparse.Namespace())
    if not base.info.get("grid") or base.info.get("source") == "gymnasium":
        raise CLIError("demo needs a grid-world map (a name from `tiltrl maps`, a file, rows)")
    name = base.info.get("name") or args.map
    plots = not args.no_plots
    if plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            out.warn("matplotlib is not installed (pip install tiltrl[plot]); no figures")
            plots = False
    failed = False

    # 1. the map as given (deterministic moves for most maps), controlled dynamics -------
    moves = "deterministic moves" if base.is_deterministic else "stochastic moves"
    out.heading(f"tiltrl demo — {_describe_mdp(base)}")
    out.line("\n".join("    " + row for row in base.info["grid"]))
    out.line("reward per step: -1 on S/F, -0.5 candy, -1.5 nail; a hole (H) or goal (G) "
             "sends the agent back to S with min_reward / 0.")
    _, det = _run_sweep(out, base, betas, dynamics="controlled", label=moves)
    out.table(_RATE_COLUMNS, _rate_rows(det),
              title=f"{moves}, controlled dynamics: optimal entropy-regularised rates "
                    "(theta = energy - (policy KL + dynamics KL)/beta)")
    gap = max(abs(s.energy - (s.policy_kl + s.dynamics_kl) / s.beta - s.theta) for s in det)
    out.line(f"max |energy - KLs/beta - theta| over the table: {gap:.2e}")

    # 2. calibration ---------------------------------------------------------------------
    cal_beta = CALIBRATION["beta"]
    reuse = [s for s in det if s.beta == cal_beta] if name == CALIBRATION["map"] else []
    cal = reuse[0] if reuse else _solve(tiltrl.gridworld(CALIBRATION["map"]), cal_beta,
                                        dynamics="controlled")
    err = abs(cal.cost_rate - CALIBRATION["cost_rate"])
    ok = err <= CALIBRATION["tol"]
    failed |= not ok
    out.line(
        f"calibration (DESIGN.md §4): {CALIBRATION['map']} beta={cal_beta:g} cost rate = "
        f"{cal.cost_rate:.8f}, published {CALIBRATION['cost_rate']:.6f}, "
        f"|diff| = {err:.1e} -> {'OK' if ok else 'FAILED'}",
        style="bold green" if ok else "bold red",
    )

    # 3. slippery variant: controlled vs fixed dynamics ---------------------------------
    k = args.slippery
    if base.is_deterministic:
        slip = load_mdp(args.map, argparse.Namespace(slippery=k))
        variant = f"slippery={k:g}"
        out.heading(f"{variant}: intended move {(k + 1) / (3 + k):.3g}, each side "
                    f"{1 / (3 + k):.3g}")
    else:  # already stochastic (e.g. windycliff): compare on the map as it is
        slip, variant = base, "stochastic"
        out.heading(f"{name} has stochastic moves: controlled vs fixed dynamics")
    _, ctrl = _run_sweep(out, slip, betas, dynamics="controlled", label="controlled")
    _, fixd = _run_sweep(out, slip, betas, dynamics="fixed", label="fixed")
    rows = []
    optimistic = True
    for c, f in zip(ctrl, fixd, strict=True):
        optimistic &= c.theta >= f.theta - 1e-9 * max(1.0, abs(f.theta))
        rows.append([
            _f(c.beta), _f(c.theta, 8), _f(f.theta, 8), _f(c.theta - f.theta, 4),
            _f(c.policy_kl), _f(c.dynamics_kl), _f(f.policy_kl), _f(f.energy),
            f"{c.iterations}/{f.iterations}",
            "yes" if c.converged and f.converged else "NO",
        ])
    out.table(
        ["beta", "theta ctrl", "theta fixed", "ctrl-fixed", "pKL ctrl", "dKL ctrl",
         "pKL fixed", "energy fixed", "iters c/f", "ok"],
        rows,
        title="controlled dynamics (tilted matrix: may bend the slip, pays dKL) vs fixed "
              "dynamics (the environment's own); pKL/dKL = policy/dynamics KL",
    )
    out.line(
        "controlled >= fixed at every beta (the controlled optimum is optimistic): "
        + ("yes" if optimistic else "NO"),
        style=None if optimistic else "bold red",
    )

    # 4. figures -------------------------------------------------------------------------
    if plots:
        from tiltrl.viz import plot_grid_solution, plot_policy_and_stationary, plot_sweep
        from tiltrl.viz._mpl import new_figure, save_figure

        outdir.mkdir(parents=True, exist_ok=True)
        pick = int(np.argmin(np.abs(np.log(betas / cal_beta))))
        b_fig = float(betas[pick])
        written = [plot_policy_and_stationary(
            base, det[pick], outdir / f"{name}_beta{b_fig:g}_policy_stationary.png")]

        rows_n, cols_n = len(base.info["grid"]), len(base.info["grid"][0])
        cell = float(np.clip(6.0 / max(rows_n, cols_n), 0.12, 0.7))
        fig = new_figure((2 * (cols_n * cell + 1.6), rows_n * cell + 1.6))
        ax_c, ax_f = fig.subplots(1, 2)
        plot_grid_solution(slip, ctrl[pick], ax=ax_c, title="controlled dynamics")
        plot_grid_solution(slip, fixd[pick], ax=ax_f, title="fixed dynamics")
        fig.suptitle(f"{name}, {variant}, beta={b_fig:g}: stationary distribution "
                     "and policy", fontsize=11)
        tag = f"{name}_{variant.replace('=', '')}"
        written.append(save_figure(
            fig, outdir / f"{tag}_beta{b_fig:g}_controlled_vs_fixed.png"))

        dense = np.logspace(-1, math.log10(max(100.0, float(betas.max()))), args.points)
        if slip is not base:  # else the controlled curve is in the comparison below
            sw_det, _ = _run_sweep(out, base, dense, dynamics="controlled", label="sweep")
            written.append(save_figure(
                plot_sweep(sw_det, title=f"{name}, {moves}: thermodynamic curves"),
                outdir / f"{name}_sweep.png"))
        sw_c, _ = _run_sweep(out, slip, dense, dynamics="controlled", label="sweep ctrl")
        sw_f, _ = _run_sweep(out, slip, dense, dynamics="fixed", label="sweep fixed")
        written.append(save_figure(
            plot_sweep({"controlled": sw_c, "fixed": sw_f},
                       title=f"{name}, {variant}: controlled vs fixed dynamics"),
            outdir / f"{tag}_sweep.png"))
        out.heading("figures")
        for p in written:
            out.line(f"wrote {p}")
    out.line(f"demo finished in {time.perf_counter() - t_start:.1f} s")
    return 1 if failed else 0


def cmd_learn(args: argparse.Namespace, out: Output) -> int:
    """Model-free tabular learners (tiltrl.agents) against the exact solution."""
    from tiltrl.agents import learn

    mdp = load_mdp(args.map, args)
    if args.plot:
        _require_plotting()
    opts: dict[str, Any] = {}
    if args.gamma is not None:
        opts["gamma"] = args.gamma
    for key in ("lr", "lr_decay", "theta_lr"):
        if getattr(args, key) is not None:
            opts[key] = getattr(args, key)
    if args.algo == "u_learning" and args.dynamics is not None:
        opts["dynamics"] = args.dynamics
    if args.algo == "bounded_soft_q":
        opts.update(model=args.model, clip=args.clip, bounds=args.bounds)
    steps_done = [0]
    with out.progress(args.steps, f"{args.algo}") as advance:
        def report(done: int, total: int) -> None:
            while steps_done[0] < done:  # the bar counts steps; advance in one call per chunk
                steps_done[0] = done
                advance(f"{done:,} steps")

        res = learn(args.algo, mdp, beta=args.beta, steps=args.steps, seeds=args.seeds,
                    seed=args.seed, behaviour=args.behaviour, n_evals=args.evals,
                    progress=report, **opts)
    items: list[tuple[str, str]] = [
        ("model", _describe_mdp(mdp)),
        ("learner", f"{res.algo}, beta={_f(res.beta)}"
                    + (f", gamma={_f(res.gamma)}" if res.gamma is not None else "")),
        ("seeds x steps", f"{res.seeds} x {res.steps:,}"),
        ("time", f"{res.stats['time_s']:.3g} s ({res.stats['updates_per_s']:,.0f} updates/s)"),
    ]
    if res.curves is not None:
        from tiltrl.agents import interval

        ref = res.curves.reference
        if "theta" in ref:
            items.append(("exact theta", _f(ref["theta"], 10)))
        if res.theta is not None:
            m, lo, hi = interval(res.theta[None, :])
            items.append(("learned theta (mean, 95%)", f"{_f(m[0], 8)} [{_f(lo[0], 8)}, "
                                                     f"{_f(hi[0], 8)}]"))
        for name, vals in res.final_errors().items():
            if np.all(np.isnan(vals)):
                continue
            m, lo, hi = interval(vals[None, :])
            items.append((f"final {name} (mean, 95%)",
                          f"{_f(m[0], 4)} [{_f(lo[0], 4)}, {_f(hi[0], 4)}]"))
        if "eval_return" in ref:
            items.append(("exact policy's return", _f(ref["eval_return"], 8)))
    if "clipped_fraction" in res.stats:
        items.append(("clipped updates", f"{res.stats['clipped_fraction']:.3g} "
                                         f"(lb > ub: {int(res.stats['crossed'])})"))
    items += [("note", n) for n in res.notes]
    out.pairs(items, title=f"tiltrl learn {args.algo} {args.map}")
    if args.save:
        out.line(f"wrote {res.save(args.save)}")
    if args.curves and res.curves is not None:
        path = Path(args.curves)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            res.curves.to_csv(path)
        else:
            res.curves.to_json(path)
        out.line(f"wrote {path}")
    if args.plot:
        if res.curves is None:
            out.warn("--plot: no exact reference, no curves")
        else:
            from tiltrl.viz import plot_learning_curves
            from tiltrl.viz._mpl import save_figure

            name = mdp.info.get("name") or args.map
            fig = plot_learning_curves(res, title=f"{args.algo} on {name}, beta={args.beta:g}, "
                                                   f"{res.seeds} seeds (mean, 95% interval)")
            out.line(f"wrote {save_figure(fig, args.plot)}")
    return 0


def _parse_cells(text: str, mdp: Any) -> list[int]:
    """``"r,c+r,c"`` (grid cells) or ``"s+s"`` (state indices) -> state indices."""
    n_cols = len(mdp.info["grid"][0]) if "grid" in mdp.info else None
    cells: list[int] = []
    for item in text.split("+"):
        parts = [x.strip() for x in item.split(",")]
        try:
            if len(parts) == 2 and n_cols is not None:
                row, col = int(parts[0]), int(parts[1])
                if not (0 <= col < n_cols):
                    raise CLIError(f"--task {text!r}: column {col} is outside 0..{n_cols - 1}")
                s = row * n_cols + col
            elif len(parts) == 1:
                s = int(parts[0])
            else:
                raise ValueError
        except ValueError as exc:
            raise CLIError(f"--task {text!r}: expected cells ROW,COL joined by '+' "
                           "(e.g. 1,1+3,4) or state indices") from exc
        if not (0 <= s < mdp.n_states):
            raise CLIError(f"--task {text!r}: state {s} is outside 0..{mdp.n_states - 1}")
        cells.append(s)
    return cells


def cmd_compose(args: argparse.Namespace, out: Output) -> int:
    """Zero-shot composition of solved sub-tasks (tiltrl.prior) on a grid map."""
    from tiltrl.prior import COMPOSITIONS, compose, compose_values, zero_shot

    mdp = load_mdp(args.map, args)
    if not args.task or len(args.task) < 2:
        raise CLIError("give at least two sub-tasks with --task CELLS (e.g. --task 1,1 "
                       "--task 9,9)")
    fs = [f.strip() for f in args.f.split(",") if f.strip()]
    for f in fs:
        if f not in COMPOSITIONS or f == "not":
            raise CLIError(f"--f {f!r}: choose from convex, sum, or, and, soft_or")
    beta, gamma = args.beta, args.gamma
    rewards = []
    for spec in args.task:
        r = np.array(mdp.reward, dtype=float)
        r[_parse_cells(spec, mdp)] = args.goal_reward
        rewards.append(r)
    qs = [_solve(mdp.with_reward(r), beta, gamma=gamma).q for r in rewards]
    rows: list[list[str]] = []
    report: dict[str, Any] = {"map": args.map, "beta": beta, "gamma": gamma,
                              "tasks": args.task, "compositions": {}}
    for f in fs:
        task = mdp.with_reward(compose_values(rewards, f, beta=beta))
        comp = compose(task, qs, f, beta=beta, gamma=gamma)
        zs = zero_shot(comp)
        assert zs.v is not None and comp.lb is not None and comp.ub is not None
        entry: dict[str, Any] = {
            "kappa_min": comp.kappa_min, "kappa_max": comp.kappa_max,
            "bound_gap": comp.gap, "regret_bound": zs.regret_bound,
            "zero_shot_return": float(task.initial @ zs.v),
        }
        row = [f, _f(comp.kappa_min, 4), _f(comp.kappa_max, 4), _f(comp.gap, 4),
               _f(zs.regret_bound, 4)]
        if not args.no_exact:
            truth = _solve(task, beta, gamma=gamma)
            entry.update(
                value_error=float(np.max(np.abs(comp.q - truth.q))),
                kl=max(0.0, float(np.mean(np.sum(
                    comp.policy * (np.log(np.maximum(comp.policy, 1e-300))
                                   - np.log(np.maximum(truth.policy, 1e-300))), axis=1)))),
                regret=float(task.initial @ (truth.v - zs.v)),
                bounds_hold=bool(np.all(comp.lb <= truth.q + 1e-8)
                                 and np.all(truth.q <= comp.ub + 1e-8)),
            )
            row += [_f(entry["value_error"], 4), _f(entry["kl"], 4), _f(entry["regret"], 4),
                    "yes" if entry["bounds_hold"] else "NO"]
        report["compositions"][f] = entry
        rows.append(row)
    head = ["f", "kappa min", "kappa max", "bound gap", "regret bound"]
    if not args.no_exact:
        head += ["max|f(Q)-Q~*|", "mean KL(pi_f||pi~*)", "regret", "bounds hold"]
    out.line(f"{_describe_mdp(mdp)}; beta={_f(beta)}, gamma={_f(gamma)}; "
             f"{len(rewards)} sub-tasks")
    out.table(head, rows, title="zero-shot composition (tiltrl.prior)")
    if args.json:
        import json

        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        out.line(f"wrote {path}")
    return 0


def _load_chain(args: argparse.Namespace) -> tuple[Any, Any, str, Any]:
    """``(chain, observable, description, closed_form)`` for ``tiltrl scgf``'s MODEL."""
    from tiltrl.ld import MarkovChain, from_mdp
    from tiltrl.ld.examples import ring, ring_current, ring_scgf

    spec = args.map
    if spec == "ring":
        n = 20 if args.n is None else args.n
        p = 0.4 if args.p is None else args.p
        q = 0.1 if args.q is None else args.q
        return (ring(n, p, q), ring_current(n),
                f"ring({n}, p={p:g}, q={q:g}), current (+1 right, -1 left)",
                lambda k: ring_scgf(k, p, q))
    if spec == "two-state":
        a = 0.3 if args.p is None else args.p
        b = 0.2 if args.q is None else args.q
        from tiltrl.ld.examples import two_state

        return (two_state(a, b), np.array([0.0, 1.0]),
                f"two-state chain (0->1 w.p. {a:g}, 1->0 w.p. {b:g}), time in state 1",
                None)
    if spec.endswith(".npz"):
        if not Path(spec).is_file():
            raise CLIError(f"{spec}: no such file")
        if not args.observable:
            raise CLIError("a saved chain needs --observable FILE.npy ((S,) or (S, S) values)")
        chain = MarkovChain.load(spec)
        f = np.load(args.observable)
        if f.shape not in ((chain.n_states,), (chain.n_states, chain.n_states)):
            raise CLIError(f"--observable {args.observable}: shape {f.shape}, expected "
                           f"({chain.n_states},) or ({chain.n_states}, {chain.n_states})")
        return chain, f, f"{Path(spec).name}: {chain.n_states} states, " \
                         f"{chain.P.nnz} transitions; observable {Path(args.observable).name}", None
    if args.observable:
        raise CLIError("--observable applies to a saved chain (.npz) only; on an MDP the "
                       "observable is the reward")
    mdp = load_mdp(spec, args)
    chain, f = from_mdp(mdp)
    return (chain, f, f"{_describe_mdp(mdp)}; chain on (s, a) pairs under the prior, "
                      "observable the reward r(s,a,s') (Lambda(beta) = beta * theta)", None)


def _json_number(x: Any) -> Any:
    """Strict JSON: non-finite floats become null."""
    v = float(x)
    return v if math.isfinite(v) else None


def cmd_plot_curves(args: argparse.Namespace, out: Output) -> int:
    """``tiltrl plot-curves``: learning curves of ``tiltrl train`` run directories and/or
    ``bench_deep.py`` results files (matplotlib only: no torch)."""
    _require_plotting()
    from tiltrl.viz._mpl import save_figure
    from tiltrl.viz.deep import plot_run_curves, read_benchmark_curves, read_run_curves

    runs: list[dict[str, Any]] = []
    for source in map(Path, args.run_dirs):
        if source.is_file():  # a benchmarks/bench_deep.py results file, filtered as read
            runs += read_benchmark_curves(source, envs=args.envs, algos=args.algos)
            continue
        run = read_run_curves(source)
        if (not args.envs or run["env"] in args.envs) and (
            not args.algos or run["algo"] in args.algos
        ):
            runs.append(run)
    if not runs:
        raise ValueError(f"no runs left after --envs {args.envs} --algos {args.algos}")
    fig = plot_run_curves(runs, interval=args.interval, title=args.title)
    path = save_figure(fig, args.out, dpi=args.dpi)
    groups = sorted({(r["algo"], r["env"]) for r in runs})
    out.line(f"wrote {path} ({len(runs)} runs, {len(groups)} curves)")
    return 0


def cmd_scgf(args: argparse.Namespace, out: Output) -> int:
    """SCGF, its derivatives and the rate function of an additive observable (tiltrl.ld)."""
    from tiltrl.exact.average import ConvergenceWarning
    from tiltrl.ld import cloning, rate_function, tilted

    ks = parse_ks(args.k)
    chain, f, desc, closed = _load_chain(args)
    if args.plot:
        _require_plotting()
    if args.cloning is not None and args.cloning < 2:
        raise CLIError("--cloning N needs a population N >= 2")
    t0 = time.perf_counter()
    sols = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with out.progress(len(ks), "tilted") as advance:
            for k in ks:
                sols.append(tilted(chain, f, float(k), tol=args.tol))
                advance(f"k={k:g}")
    lam = np.array([s.scgf for s in sols])
    mean = np.array([s.mean for s in sols])
    var = np.array([s.variance for s in sols])
    conv = np.array([bool(s.converged) for s in sols])
    t_exact = time.perf_counter() - t0
    clo = None
    if args.cloning is not None:
        clo = cloning(chain, f, ks, population=args.cloning, steps=args.steps, runs=args.runs,
                      seed=args.seed, keep_series=False)
        c_est = np.atleast_1d(np.asarray(clo.estimate, dtype=float))
        c_err = np.atleast_1d(np.asarray(clo.stderr, dtype=float))
    # rate function: default a few points inside the range of Lambda' on the k grid
    if args.a is not None:
        a_pts = parse_ks(args.a, "--a")
    else:
        lo, hi = float(mean.min()), float(mean.max())
        a_pts = np.linspace(lo, hi, 7)[1:-1] if hi > lo else np.array([lo])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        rf = rate_function(chain, f, a_pts, solver_tol=args.tol)

    out.line(desc)
    head = ["k", "Lambda(k)", "Lambda' (mean)", "Lambda'' (variance)", "converged"]
    rows = []
    for i, k in enumerate(ks):
        row = [_f(k), _f(lam[i], 10), _f(mean[i], 8), _f(var[i], 8),
               "yes" if conv[i] else "NO"]
        if closed is not None:
            row.append(_f(float(closed(k)), 10))
        if clo is not None:
            z = (c_est[i] - lam[i]) / c_err[i] if c_err[i] > 0 else math.nan
            row += [_f(c_est[i], 8), _f(c_err[i], 3), _f(z, 3)]
        rows.append(row)
    if closed is not None:
        head.append("closed form")
    if clo is not None:
        head += ["cloning", "stderr", "z"]
    out.table(head, rows, title=f"tiltrl scgf — exact SCGF from the tilted matrix "
                                f"({t_exact:.3g} s)")
    if clo is not None:
        out.line(f"cloning: population {args.cloning}, {clo.steps} steps, {args.runs} runs "
                 f"per k, seed {args.seed} ({clo.elapsed:.3g} s); z = (cloning - exact) / "
                 "stderr")
    out.table(["a", "I(a)", "k*", "status"],
              [[_f(a, 8), _f(r, 8), _f(k, 6), st]
               for a, r, k, st in zip(rf.a, rf.rate, rf.k, rf.status, strict=True)],
              title=f"rate function I(a) = sup_k [k a - Lambda(k)]; typical value "
                    f"Lambda'(0) = {_f(rf.mean, 8)}, domain [{_f(rf.domain[0], 6)}, "
                    f"{_f(rf.domain[1], 6)}]")
    for note in rf.notes:
        out.line(f"note: {note}")
    if not conv.all():
        out.warn(f"{int((~conv).sum())} of {len(ks)} tilted solves did not converge")
    if args.json:
        import json

        report: dict[str, Any] = {
            "model": desc, "k": ks.tolist(), "scgf": [_json_number(x) for x in lam],
            "mean": [_json_number(x) for x in mean],
            "variance": [_json_number(x) for x in var], "converged": conv.tolist(),
            "rate": {"a": rf.a.tolist(), "rate": [_json_number(x) for x in rf.rate],
                     "k": [_json_number(x) for x in rf.k], "status": list(rf.status),
                     "domain": [_json_number(x) for x in rf.domain],
                     "mean": _json_number(rf.mean), "notes": list(rf.notes)},
        }
        if closed is not None:
            report["closed_form"] = [float(closed(k)) for k in ks]
        if clo is not None:
            report["cloning"] = {
                "population": args.cloning, "steps": int(clo.steps), "runs": args.runs,
                "seed": args.seed, "estimate": [_json_number(x) for x in c_est],
                "stderr": [_json_number(x) for x in c_err], "time_s": float(clo.elapsed),
            }
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2))
        out.line(f"wrote {path}")
    if args.plot:
        from tiltrl.viz._mpl import save_figure
        from tiltrl.viz.ld import plot_scgf

        fig = plot_scgf(
            ks, lam, a=rf.a, rate=rf.rate, mean=mean, status=rf.status,
            cloning_k=ks if clo is not None else None,
            cloning_estimate=c_est if clo is not None else None,
            cloning_stderr=c_err if clo is not None else None,
            title=desc.split(";")[0],
        )
        out.line(f"wrote {save_figure(fig, args.plot)}")
    return 0


# ============================================================================ parser
def _positive_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be positive and finite, got {text}")
    return v


def _nonneg_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from exc
    if not (v >= 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _add_map_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("map", metavar="MAP",
                   help="named map (see `tiltrl maps`), a file of rows, inline rows "
                        "SFF,FHF,FFG, or a gymnasium id (FrozenLake-v1, CliffWalking-v1, "
                        "Taxi-v4)")
    g = p.add_argument_group("grid-world options")
    g.add_argument("--slippery", type=_nonneg_float, default=None, metavar="K",
                   help="intended move w.p. (K+1)/(3+K), each side 1/(3+K) (default 0)")
    g.add_argument("--n-actions", type=int, choices=(4, 5, 8, 9), default=None,
                   help="4 moves, 5 (+stay), 8 (+diagonals), 9 (+both)")
    g.add_argument("--min-reward", type=float, default=None, metavar="X",
                   help="reward on a hole (default -1.5; windycliff -5)")
    g.add_argument("--max-reward", type=float, default=None, metavar="X",
                   help="reward on a goal (default 0)")
    g.add_argument("--no-wind", action="store_true", help="drop a named map's default wind")
    g = p.add_argument_group("gymnasium options")
    g.add_argument("--terminal", choices=("reset", "reset_next", "absorbing"), default="reset",
                   help="how episodes are made continuing (default reset)")
    g.add_argument("--gym-arg", action="append", metavar="KEY=VALUE",
                   help="option for gymnasium.make, e.g. is_slippery=False (repeatable)")


def _add_solver_options(p: argparse.ArgumentParser, *, dynamics_default: str | None) -> None:
    p.add_argument("--dynamics", choices=("controlled", "fixed"), default=dynamics_default,
                   help="controlled: tilted-matrix (Perron/Doob) optimum; fixed: the "
                        "environment's own dynamics"
                        + (f" (default {dynamics_default})" if dynamics_default else
                           " (default controlled; fixed with --gamma/--horizon)"))
    p.add_argument("--method", default="auto", help="solver method (default auto)")
    p.add_argument("--tol", type=_positive_float, default=1e-10, help="tolerance (1e-10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tiltrl",
        description="Exact entropy-regularised RL as non-equilibrium statistical mechanics "
                    "(tilted matrices, Perron roots, thermodynamic curves).",
    )
    from tiltrl import __version__

    parser.add_argument("--version", action="version", version=f"tiltrl {__version__}")
    parser.add_argument("--plain", action="store_true", help="plain text output (no rich)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("maps", help="list the named grid maps")
    p.add_argument("names", nargs="*", help="only these maps")
    p.set_defaults(func=cmd_maps)

    p = sub.add_parser("solve", help="solve one MDP exactly at one beta")
    _add_map_options(p)
    p.add_argument("--beta", type=_positive_float, required=True, help="inverse temperature")
    _add_solver_options(p, dynamics_default=None)
    p.add_argument("--gamma", type=float, default=None, help="discount in [0, 1)")
    p.add_argument("--horizon", type=int, default=None, help="finite horizon (steps)")
    p.add_argument("--max-iter", type=int, default=None, help="iteration cap")
    p.add_argument("--json", metavar="PATH", help="write the Solution as JSON")
    p.add_argument("--plot", metavar="PATH", help="write policy + stationary figure (grids)")
    p.set_defaults(func=cmd_solve)

    p = sub.add_parser("sweep", help="thermodynamic curves over beta")
    _add_map_options(p)
    p.add_argument("--betas", required=True,
                   help="comma list (0.5,1,2,5) or FROM:TO:COUNT log-spaced (0.1:100:20)")
    _add_solver_options(p, dynamics_default="controlled")
    p.add_argument("--json", metavar="PATH", help="write the Sweep as JSON")
    p.add_argument("--plot", metavar="PATH", help="write the thermodynamic curves")
    p.add_argument("--mc", action="store_true",
                   help="Monte Carlo check: simulate the optimal process at each beta and "
                        "compare the measured reward per step with the energy (table, and "
                        "error bars on the energy curve)")
    p.add_argument("--mc-steps", type=int, default=10_000, help="MC steps per chain (1e4)")
    p.add_argument("--mc-chains", type=int, default=16, help="MC independent chains (16)")
    p.add_argument("--seed", type=int, default=0, help="MC seed (default 0)")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("demo", help="the README demo: calibration, controlled vs fixed")
    p.add_argument("--out", default="out", metavar="DIR", help="figure folder (default out/)")
    p.add_argument("--map", default=CALIBRATION["map"], help="grid map (default 7x7holes)")
    p.add_argument("--betas", default="1,5,10,20,50,100", help="betas of the tables")
    p.add_argument("--slippery", type=_positive_float, default=1.0, metavar="K",
                   help="slippery parameter of the stochastic variant (default 1)")
    p.add_argument("--points", type=int, default=19, metavar="N",
                   help="betas in the swept curves, log-spaced from 0.1 (default 19)")
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("learn", help="model-free tabular learners vs the exact solution")
    p.add_argument("algo", metavar="ALGO",
                   choices=("soft_q", "bounded_soft_q", "u_learning", "differential_soft_q"),
                   help="soft_q | bounded_soft_q | u_learning | differential_soft_q")
    _add_map_options(p)
    p.add_argument("--beta", type=_positive_float, required=True, help="inverse temperature")
    p.add_argument("--seeds", type=int, default=8, help="independent learners K (default 8)")
    p.add_argument("--steps", type=int, default=100_000, help="steps per seed (default 1e5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--gamma", type=float, default=None,
                   help="discount (soft_q, bounded_soft_q; required there)")
    p.add_argument("--lr", type=float, default=None, help="step size")
    p.add_argument("--lr-decay", choices=("constant", "visits", "steps"), default=None)
    p.add_argument("--theta-lr", type=float, default=None, help="step size of theta")
    p.add_argument("--behaviour", choices=("soft", "prior"), default="soft",
                   help="exploration: the learner's soft policy (default) or the prior")
    p.add_argument("--dynamics", choices=("controlled", "fixed"), default=None,
                   help="u_learning: controlled (Perron) or fixed-dynamics optimum")
    p.add_argument("--model", choices=("learned", "given"), default="learned",
                   help="bounded_soft_q: model of the bounds (default learned)")
    p.add_argument("--clip", choices=("hard", "linear", "square", "huber"), default="hard")
    p.add_argument("--bounds", choices=("residual", "naive"), default="residual")
    p.add_argument("--evals", type=int, default=20, help="evaluation points (default 20)")
    p.add_argument("--save", metavar="PATH", help="save the result (.npz)")
    p.add_argument("--curves", metavar="PATH", help="write the curves (.json or .csv)")
    p.add_argument("--plot", metavar="PATH", help="write the learning-curve figure")
    p.set_defaults(func=cmd_learn)

    p = sub.add_parser("compose", help="zero-shot composition of solved sub-tasks, with bounds")
    _add_map_options(p)
    p.add_argument("--task", action="append", metavar="CELLS",
                   help="a sub-task: its rewarding cells ROW,COL joined by '+' (repeat, >= 2)")
    p.add_argument("--f", default="or,and,convex",
                   help="compositions, comma list of convex,sum,or,and,soft_or "
                        "(default or,and,convex)")
    p.add_argument("--beta", type=_positive_float, required=True, help="inverse temperature")
    p.add_argument("--gamma", type=float, default=0.95, help="discount (default 0.95)")
    p.add_argument("--goal-reward", type=float, default=0.0,
                   help="reward on a sub-task's cells (default 0; elsewhere the map's)")
    p.add_argument("--no-exact", action="store_true",
                   help="skip solving the composed tasks (bounds only)")
    p.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    p.set_defaults(func=cmd_compose)

    p = sub.add_parser(
        "scgf", help="SCGF, mean, variance and rate function of an additive observable",
        description="MODEL is `ring` (current), `two-state` (time in state 1), a saved "
                    "MarkovChain (.npz, with --observable), or any MAP of `tiltrl solve` "
                    "(the chain on state-action pairs under the prior, reward observable).",
    )
    _add_map_options(p)
    p.add_argument("--k", default="-1:1:21",
                   help="tilts: comma list or FROM:TO:COUNT evenly spaced (default "
                        "-1:1:21); write --k=-2:2:41 when the value starts with a minus")
    p.add_argument("--a", default=None,
                   help="points of the rate function I(a), list or FROM:TO:COUNT "
                        "(default 5 points inside the range of Lambda' on the k grid)")
    p.add_argument("--n", type=int, default=None, help="ring: sites (default 20)")
    p.add_argument("--p", type=float, default=None,
                   help="ring: right step probability (0.4); two-state: flip 0->1 (0.3)")
    p.add_argument("--q", type=float, default=None,
                   help="ring: left step probability (0.1); two-state: flip 1->0 (0.2)")
    p.add_argument("--observable", metavar="FILE.npy", default=None,
                   help="saved chain: observable values, shape (S,) or (S, S)")
    p.add_argument("--tol", type=_positive_float, default=1e-12, help="eigen tolerance")
    p.add_argument("--cloning", type=int, default=None, metavar="N",
                   help="also estimate Lambda(k) by cloning with population N")
    p.add_argument("--steps", type=int, default=1000, help="cloning steps per run (1000)")
    p.add_argument("--runs", type=int, default=10, help="cloning independent runs (10)")
    p.add_argument("--seed", type=int, default=0, help="cloning seed (default 0)")
    p.add_argument("--json", metavar="PATH", help="write the numbers as JSON")
    p.add_argument("--plot", metavar="PATH", help="write the figure of Lambda(k) and I(a)")
    p.set_defaults(func=cmd_scgf)
    _add_deep_commands(sub)
    return parser


def _deep(name: str) -> Callable[[argparse.Namespace, Output], int]:
    """A command of :mod:`tiltrl.deep.cli`, imported (with torch) only when it runs."""

    def run(args: argparse.Namespace, out: Output) -> int:
        import importlib

        return int(getattr(importlib.import_module("tiltrl.deep.cli"), name)(args, out))

    return run


def _add_deep_commands(sub: Any) -> None:
    """``train``, ``eval``, ``render`` (extra ``deep``; torch is imported only when one of
    them runs) and ``plot-curves`` (matplotlib only)."""
    algos = ("eval", "softdqn", "bounded", "dqn", "ppo")
    p = sub.add_parser(
        "train", help="train a deep agent on a gymnasium env (extra 'deep')",
        description="Hyperparameters: --config, else benchmarks/hyperparams/ALGO_ENV.yml of "
                    "the repository when it exists, else the class defaults. Writes "
                    "OUT/model.zip, OUT/run.json and OUT/progress.csv (+ TensorBoard "
                    "events when tensorboard is installed).",
    )
    p.add_argument("algo", choices=algos, metavar="ALGO", help=" | ".join(algos))
    p.add_argument("env", metavar="ENV", help="gymnasium id, e.g. CartPole-v1")
    p.add_argument("--steps", type=int, default=None,
                   help="environment steps (default: n_timesteps of the YAML, else 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="RL Zoo-style hyperparameters (n_timesteps, policy, n_envs, kwargs)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="run directory (default runs/ALGO_ENV_sSEED)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1, fastest for small MLPs; 0: torch's default)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_deep("cmd_train"))

    p = sub.add_parser("eval", help="evaluate a checkpoint of `tiltrl train` (extra 'deep')")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory or its model.zip")
    p.add_argument("--episodes", type=int, default=10, help="episodes (default 10)")
    p.add_argument("--seed", type=int, default=0, help="episode i is reset with SEED + i")
    p.add_argument("--env", default=None, help="env id (default: the training env)")
    p.add_argument("--stochastic", action="store_true",
                   help="sample actions (default: deterministic / greedy)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_deep("cmd_eval"))

    p = sub.add_parser(
        "plot-curves", help="learning curves over seeds (`tiltrl train` runs, bench_deep results)",
        description="Sources: `tiltrl train` run directories (training-episode returns from "
                    "progress.csv) and/or results files of benchmarks/bench_deep.py "
                    "(evaluation returns of every run, with each environment's threshold).",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR|RESULTS.json",
                   help="run directories or bench_deep.py results files")
    p.add_argument("--envs", nargs="+", default=None, metavar="ENV",
                   help="only these environments")
    p.add_argument("--algos", nargs="+", default=None, metavar="ALGO",
                   help="only these algorithms")
    p.add_argument("--dpi", type=int, default=150, help="figure resolution (default 150)")
    p.add_argument("--out", required=True, metavar="FIG.png", help="figure file")
    p.add_argument("--interval", choices=("ci95", "std", "minmax"), default="ci95",
                   help="band over seeds: 95%% CI of the mean (default), ±1 std, min-max")
    p.add_argument("--title", default=None, help="figure title")
    p.set_defaults(func=cmd_plot_curves)

    p = sub.add_parser(
        "render", help="GIF of a trained agent: rendered frame and the agent's view",
        description="Side by side: the human view (env.render(), needs pygame for classic "
                    "control) and the agent's view (observation, action probabilities, "
                    "and for EVAL log u and theta).",
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="run directory or its model.zip")
    p.add_argument("--out", required=True, metavar="AGENT.gif", help="GIF file")
    p.add_argument("--steps", type=int, default=200, help="frames (default 200)")
    p.add_argument("--fps", type=int, default=20, help="frames per second (default 20)")
    p.add_argument("--seed", type=int, default=0, help="reset seed (default 0)")
    p.add_argument("--env", default=None, help="env id (default: the training env)")
    p.add_argument("--stochastic", action="store_true", help="sample actions")
    p.add_argument("--one-episode", action="store_true", help="stop at the first episode end")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=_deep("cmd_render"))


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``tiltrl`` command; return the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports bad usage itself (status 2), or --help
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    out = Output(plain=args.plain)
    try:
        return int(args.func(args, out))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CLIError, ValueError, OSError, ImportError) as exc:
        if args.debug:
            raise
        print(f"tiltrl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
