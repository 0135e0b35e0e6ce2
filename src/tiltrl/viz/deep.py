"""Figures of the deep agents: learning curves over seeds and the agent-view animation.

- :func:`read_run_curves` reads a ``tiltrl train`` run directory (``run.json`` and SB3's
  ``progress.csv``: ``time/total_timesteps`` against ``rollout/ep_rew_mean``, the mean
  training-episode return over the last 100 episodes);
- :func:`read_benchmark_curves` reads the runs of a ``benchmarks/bench_deep.py`` results
  file (``curve_steps`` against ``curve_returns``: the mean return of the separate
  evaluation episodes, greedy), with each environment's threshold;
- :func:`plot_run_curves` overlays algorithms (one curve per algorithm and env): the mean
  over seeds on a common step grid (linear interpolation, no extrapolation beyond a
  run's own steps), a shaded interval over seeds and, where known, the threshold;
- :class:`AgentAnimation` draws, side by side, the rendered frame (human view) and what
  the agent sees and computes (observation numbers, action probabilities, and for EVAL
  ``log u`` and ``theta``), and writes a GIF with matplotlib's ``PillowWriter``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from tiltrl.viz._mpl import new_figure

__all__ = ["AgentAnimation", "plot_run_curves", "read_benchmark_curves", "read_run_curves"]

X_KEY = "time/total_timesteps"
Y_KEY = "rollout/ep_rew_mean"
TRAIN_LABEL = "training episode return (mean of last 100)"
EVAL_LABEL = "evaluation return (mean over episodes)"
INTERVALS = ("ci95", "minmax", "std")


def read_run_curves(run_dir: str | Path) -> dict[str, Any]:
    """``{"algo", "env", "seed", "steps", "returns", "dir"}`` of one run directory."""
    d = Path(run_dir)
    run_file, csv_file = d / "run.json", d / "progress.csv"
    if not run_file.is_file():
        raise FileNotFoundError(f"{d}: no run.json (not a `tiltrl train` run directory)")
    if not csv_file.is_file():
        raise FileNotFoundError(f"{d}: no progress.csv (CSV log of the run)")
    run = json.loads(run_file.read_text())
    xs, ys = [], []
    with open(csv_file, newline="") as fh:
        for row in csv.DictReader(fh):
            x, y = row.get(X_KEY, ""), row.get(Y_KEY, "")
            if x not in ("", None) and y not in ("", None):
                xs.append(float(x))
                ys.append(float(y))
    if not xs:
        raise ValueError(f"{csv_file}: no rows with {X_KEY} and {Y_KEY} (no finished episode?)")
    return {
        "algo": run["algo"],
        "env": run["env"],
        "seed": run.get("seed"),
        "steps": np.asarray(xs),
        "returns": np.asarray(ys),
        "dir": str(d),
        "y_label": TRAIN_LABEL,
    }


def read_benchmark_curves(
    path: str | Path,
    *,
    envs: Sequence[str] | None = None,
    algos: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The runs of a ``benchmarks/bench_deep.py`` results file (``runs[env][algo]["runs"]``),
    one dict per run as :func:`read_run_curves` gives (``"steps"``: the evaluation steps,
    ``"returns"``: the mean evaluation return there), plus ``"threshold"`` where the
    entry's summary records one; ``envs`` / ``algos`` keep only those (an unknown name is
    an error that lists the ones in the file)."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not a JSON file ({exc})") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("runs"), dict):
        raise ValueError(f"{p}: no 'runs' section (not a bench_deep.py results file)")
    results: dict[str, dict[str, Any]] = doc["runs"]
    for kind, wanted, known in (
        ("environment", envs, sorted(results)),
        ("algorithm", algos, sorted({a for per_algo in results.values() for a in per_algo})),
    ):
        unknown = sorted(set(wanted or ()) - set(known))
        if unknown:
            raise ValueError(
                f"{p}: no {kind} {', '.join(unknown)} (the file has {', '.join(known)})"
            )
    runs = []
    for env, per_algo in results.items():
        if envs and env not in envs:
            continue
        for algo, entry in per_algo.items():
            if algos and algo not in algos:
                continue
            threshold = entry.get("summary", {}).get("threshold")
            for r in entry["runs"]:
                runs.append(
                    {
                        "algo": algo,
                        "env": env,
                        "seed": r.get("seed"),
                        "steps": np.asarray(r["curve_steps"], dtype=np.float64),
                        "returns": np.asarray(r["curve_returns"], dtype=np.float64),
                        "dir": str(p),
                        "y_label": EVAL_LABEL,
                        "threshold": threshold,
                    }
                )
    if not runs:
        raise ValueError(f"{p}: no runs for envs={envs} algos={algos}")
    return runs


def _band(values: np.ndarray, interval: str) -> tuple[np.ndarray, np.ndarray]:
    """Lower and upper curve over seeds (axis 0, NaN where a run has no data)."""
    mean = np.nanmean(values, axis=0)
    n = np.sum(np.isfinite(values), axis=0)
    if interval == "minmax":
        return np.nanmin(values, axis=0), np.nanmax(values, axis=0)
    std = np.zeros_like(mean)
    many = n > 1
    if np.any(many):
        std[many] = np.nanstd(values[:, many], axis=0, ddof=1)
    half = std if interval == "std" else 1.96 * std / np.sqrt(np.maximum(n, 1))
    return mean - half, mean + half


def plot_run_curves(
    runs: Sequence[dict[str, Any]],
    *,
    interval: str = "ci95",
    title: str | None = None,
    points: int = 200,
) -> Any:
    """Figure: one panel per env (in order of first appearance), one curve per algorithm
    (mean over seeds) with a band (``"ci95"``: mean ± 1.96 standard errors, ``"std"``: ±
    one standard deviation, ``"minmax"``: range over seeds), and a dashed line at each
    run's ``"threshold"`` where it has one."""
    if interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS}, got {interval!r}")
    if not runs:
        raise ValueError("no runs to plot")
    envs = list(dict.fromkeys(r["env"] for r in runs))
    all_algos = sorted({r["algo"] for r in runs})  # one colour per algorithm in every panel
    ncols = len(envs) if len(envs) <= 3 else 2
    nrows = -(-len(envs) // ncols)
    fig = new_figure((5.5 * ncols, 4.0 * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(envs):]:
        ax.set_visible(False)
    for ax, env in zip(axes, envs, strict=False):
        algos = [a for a in all_algos if any(r["env"] == env and r["algo"] == a for r in runs)]
        for algo in algos:
            group = [r for r in runs if r["env"] == env and r["algo"] == algo]
            hi = max(float(r["steps"][-1]) for r in group)
            lo = min(float(r["steps"][0]) for r in group)
            grid = np.linspace(lo, hi, points) if hi > lo else np.array([lo])
            vals = np.array(
                [
                    np.where(
                        (grid >= r["steps"][0]) & (grid <= r["steps"][-1]),
                        np.interp(grid, r["steps"], r["returns"]),
                        np.nan,
                    )
                    for r in group
                ]
            )
            keep = np.any(np.isfinite(vals), axis=0)
            grid, vals = grid[keep], vals[:, keep]
            mean = np.nanmean(vals, axis=0)
            (line,) = ax.plot(
                grid, mean, color=f"C{all_algos.index(algo) % 10}",
                label=f"{algo} ({len(group)} seeds)",
            )
            if len(group) > 1:
                low, up = _band(vals, interval)
                ax.fill_between(grid, low, up, color=line.get_color(), alpha=0.2, lw=0)
        thresholds = {r.get("threshold") for r in runs if r["env"] == env} - {None}
        for value in thresholds:
            ax.axhline(value, color="0.3", ls="--", lw=0.8, label=f"threshold {value:g}")
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        labels = sorted({r.get("y_label", TRAIN_LABEL) for r in runs if r["env"] == env})
        ax.set_ylabel(" / ".join(labels))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    band = {"ci95": "95% CI of the mean", "std": "± 1 std", "minmax": "min-max"}[interval]
    fig.suptitle(title or f"learning curves (mean over seeds, band: {band})")
    return fig


class AgentAnimation:
    """Side-by-side frames: the rendered env (if ``human``) and the agent's view."""

    def __init__(self, *, human: bool = True, title: str = "", figsize: tuple[float, float]
                 | None = None) -> None:
        self.human = human
        self.fig = new_figure(figsize or ((10.0, 4.2) if human else (5.5, 4.2)))
        self.fig.set_layout_engine("none")
        self.title = title
        self.writer: Any = None

    @contextmanager
    def saving(self, path: str | Path, *, fps: int = 20, dpi: int = 80) -> Iterator[None]:
        """Context in which every :meth:`draw` adds a frame to the GIF at ``path``."""
        from matplotlib.animation import PillowWriter

        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        self.writer = PillowWriter(fps=fps)
        with self.writer.saving(self.fig, str(out), dpi):
            yield
        self.writer = None

    def draw(self, frame: np.ndarray | None, view: dict[str, Any], *, step: int,
             episode_return: float) -> None:
        fig = self.fig
        fig.clear()
        obs = np.atleast_1d(view["obs"])
        probs = np.asarray(view["probs"])
        log_u = view.get("log_u")
        if self.human:
            ax_img = fig.add_axes((0.01, 0.05, 0.47, 0.85))
            if frame is not None:
                ax_img.imshow(frame)
            ax_img.set_axis_off()
            ax_img.set_title("human view (rendered frame)", fontsize=9)
            left = 0.55
        else:
            left = 0.08
        width = 0.97 - left
        n_rows = 3 if log_u is not None else 2
        h = 0.78 / n_rows
        ax_obs = fig.add_axes((left + 0.05, 0.12 + h * (n_rows - 1), width - 0.05, h - 0.11))
        ax_obs.barh(np.arange(len(obs)), obs, color="tab:gray")
        ax_obs.set_yticks(np.arange(len(obs)), [f"o{i}" for i in range(len(obs))], fontsize=7)
        for i, v in enumerate(obs):
            ax_obs.text(0, i, f" {v:+.3f}", va="center", fontsize=7)
        lim = max(1.0, float(np.max(np.abs(obs))) if obs.size else 1.0)
        ax_obs.set_xlim(-lim, lim)
        ax_obs.axvline(0, color="k", lw=0.5)
        ax_obs.set_title("agent view: observation", fontsize=9)
        ax_obs.tick_params(axis="x", labelsize=7)
        ax_p = fig.add_axes((left + 0.05, 0.12 + h * (n_rows - 2), width - 0.05, h - 0.11))
        actions = np.arange(len(probs))
        ax_p.bar(actions, probs, color="tab:blue")
        ax_p.set_ylim(0, 1)
        ax_p.set_xticks(actions, [f"a{a}" for a in actions], fontsize=7)
        ax_p.tick_params(axis="y", labelsize=7)
        ax_p.set_title(view.get("probs_label", "action probabilities"), fontsize=9)
        for a, p in zip(actions, probs, strict=True):
            ax_p.text(a, min(float(p), 0.85) + 0.03, f"{p:.2f}", ha="center", fontsize=7)
        if log_u is not None:
            ax_u = fig.add_axes((left + 0.05, 0.12, width - 0.05, h - 0.11))
            lu = np.asarray(log_u)
            ax_u.bar(actions, lu, color="tab:orange")
            ax_u.axhline(0, color="k", lw=0.5)
            ax_u.set_xticks(actions, [f"a{a}" for a in actions], fontsize=7)
            ax_u.tick_params(axis="y", labelsize=7)
            ax_u.set_title(f"log u(s,a); theta = {view['theta']:.4f}", fontsize=9)
        fig.suptitle(f"{self.title}   step {step}   return {episode_return:.0f}", fontsize=10)
        if self.writer is not None:
            self.writer.grab_frame()
