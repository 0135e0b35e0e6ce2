"""Deep-agent benchmark: tiltrl EVAL / SoftDQN / BoundedSoftDQN versus SB3 DQN and PPO.

Run from the repository root (needs the ``deep`` extra and PyYAML)::

    .venv/bin/python benchmarks/bench_deep.py                 # full spec (~23 CPU hours)
    .venv/bin/python benchmarks/bench_deep.py --quick         # CartPole, 3 seeds, 3 algos
    .venv/bin/python benchmarks/bench_deep.py --algos eval dqn --envs CartPole-v1 --seeds 5
    # add seeds 5..9 of one algorithm to an existing file (per-seed merge):
    .venv/bin/python benchmarks/bench_deep.py --algos eval --envs CartPole-v1 \
        --seed-start 5 --seeds 5 --merge --skip-throughput

Splitting the full run over processes or sessions: every process writes its OWN ``--out``
file (two processes must never write one file: each rewrites its whole file after every
seed, so one would silently drop the other's runs), then ``--combine`` merges them::

    .venv/bin/python benchmarks/bench_deep.py --seed-start 0 --seeds 5 \
        --skip-throughput --out /tmp/deep_s0-4.json &
    .venv/bin/python benchmarks/bench_deep.py --seed-start 5 --seeds 5 \
        --skip-throughput --out /tmp/deep_s5-9.json &
    wait
    .venv/bin/python benchmarks/bench_deep.py --throughput-only --out /tmp/deep_tp.json
    .venv/bin/python benchmarks/bench_deep.py --combine /tmp/deep_s0-4.json \
        /tmp/deep_s5-9.json /tmp/deep_tp.json --out benchmarks/results/deep.json

(run the throughput comparison alone, on an otherwise idle machine: it is a timing).
The file is rewritten after every finished seed, so an interrupted process loses at most
the seed it was running; rerun the missing seeds with ``--seed-start`` into a new file and
combine. Merge rule (``--merge`` and ``--combine``): per environment, algorithm and seed,
a run from a later source replaces a run with the same seed, runs with other seeds are
kept, runs are sorted by seed, and every summary is recomputed over the merged runs;
``throughput`` comes from the latest source that has one; ``commands`` are concatenated.

Hyperparameters come from ``benchmarks/hyperparams/<algo>_<env>.yml`` (one file per
algorithm and environment; ``n_timesteps``, ``policy`` and the constructor keyword
arguments, ``policy_kwargs`` passed at construction as the RL Zoo does). Every run is
seeded (``seed`` = run index, ``--seed-start`` to ``--seed-start + --seeds - 1``) and
single-threaded (``torch.set_num_threads(1)``).

Evaluation: ``--eval-episodes`` deterministic episodes, one on each of as many separate
evaluation envs (env ``i`` seeded ``10000 + seed + i`` at its first reset), stepped in
lock-step with one batched network pass per step over the envs still running; a finished
env is not stepped again (:func:`run_episodes`). A run's curve holds the mean return
(``curve_returns``) and, from 2026-11-30 on, the mean episode length (``curve_lengths``)
of each evaluation and, for EVAL, its reward-rate estimate theta (``curve_theta``), and
the run's ``provenance`` (package versions and git commit, :func:`provenance`).
Each run records its ``eval_method``:
runs before 2026-11-29 used SB3's ``evaluate_policy`` on a ``DummyVecEnv`` ("vectorised:
..."), the same episodes' distribution but with every sub-env stepped until the slowest
had finished (so later evaluations saw other random starts); runs of older files, which
have no such field, were evaluated one episode after another on one env seeded
``10000 + seed``.

Per algorithm and environment, over seeds:
- ``iqm`` of the final evaluation return (mean over the evaluation episodes) with a
  bootstrap 95% interval (resampling seeds, 2000 resamples);
- ``steps_to_threshold``: first evaluation step (after step 0: an untrained network can be
  lucky) whose mean return reaches the threshold
  (CartPole 475, Acrobot -100, MountainCar -110, LunarLander 200); median over seeds
  (``null`` when fewer than half the seeds reach it) and the fraction that did;
- ``auc``: mean evaluation return over the learning curve (trapezoid over steps divided
  by the step span), IQM over seeds;
- ``steps_per_s``: environment steps per second of training wall clock (evaluation time
  excluded), median over seeds.
``vs_dqn`` compares every algorithm's steps to threshold with SB3 DQN's on each
environment (:func:`compare_to_peer`): the difference of the medians with a bootstrap 95%
interval and the bootstrap probability of being at or below DQN's median.
A throughput section times every algorithm at the same ``train_freq=1``,
``gradient_steps=1``, batch 64, MLP 2x64 on CartPole-v1 (``--throughput-steps``), as env
steps per wall-clock second and per CPU second of the process.
Writes JSON (``--out``, default ``benchmarks/results/deep.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch as th  # noqa: E402
from stable_baselines3 import DQN, PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.logger import Logger  # noqa: E402

from tiltrl.deep import EVAL, BoundedSoftDQN, SoftDQN  # noqa: E402

HERE = Path(__file__).resolve().parent
ALGOS: dict[str, Any] = {
    "eval": EVAL,
    "softdqn": SoftDQN,
    "bounded": BoundedSoftDQN,
    "dqn": DQN,
    "ppo": PPO,
}
# Variants run only when named in --algos (hyperparameter files exist only for the
# environments they were run on): name -> (base algorithm, the settings that differ; the
# variant's YAML files are the base's with these values, which a test checks)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    # soft 3-step targets with tree-backup traces
    "softdqn_nstep": ("softdqn", {"n_steps": 3, "n_step_trace": "tree_backup"}),
    # SB3 DQN with its own (plain) 3-step returns: a control for softdqn_nstep
    "dqn_nstep": ("dqn", {"n_steps": 3}),
}
DEFAULT_ALGOS = list(ALGOS)
ALGOS.update({name: ALGOS[base] for name, (base, _) in VARIANTS.items()})
THRESHOLDS = {
    "CartPole-v1": 475.0,
    "Acrobot-v1": -100.0,
    "MountainCar-v0": -110.0,
    "LunarLander-v3": 200.0,
}
FULL_ENVS = list(THRESHOLDS)


def load_hyperparams(algo: str, env_id: str) -> dict[str, Any]:
    try:
        import yaml
    except ImportError:  # pragma: no cover - PyYAML is not a dependency of tiltrl
        raise SystemExit("bench_deep.py reads YAML: pip install pyyaml") from None
    path = HERE / "hyperparams" / f"{algo}_{env_id.split('-')[0].lower()}.yml"
    if not path.exists():
        raise SystemExit(f"no hyperparameters for {algo} on {env_id}: {path} does not exist")
    with open(path) as fh:
        hp = yaml.safe_load(fh)
    hp["_file"] = str(path.relative_to(HERE.parent))
    return hp


def linear_schedule(start: float) -> Any:
    def schedule(progress_remaining: float) -> float:
        return progress_remaining * start

    return schedule


def iqm(x: np.ndarray) -> float:
    x = np.sort(np.asarray(x, dtype=np.float64))
    n = len(x)
    if n == 0:
        return float("nan")
    lo, hi = n / 4.0, 3.0 * n / 4.0
    # fractional weights so that the IQM is defined for any n (n < 4 included)
    idx = np.arange(n)
    w = np.clip(np.minimum(idx + 1, hi) - np.maximum(idx, lo), 0.0, 1.0)
    return float(np.sum(w * x) / np.sum(w))


def bootstrap_iqm(x: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    stats = [iqm(x[rng.integers(0, len(x), len(x))]) for _ in range(n_boot)]
    lo, hi = np.percentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


LEGACY_EVAL_METHOD = (
    "not recorded (written before the vectorised evaluation: the episodes one after "
    "another on one env seeded 10000+seed)"
)


def eval_method_description(episodes: int) -> str:
    """The ``eval_method`` recorded with every run (and at the top level of the JSON)."""
    return (
        f"batched: {episodes} envs, one episode each, seeds 10000+seed+i, finished envs not stepped"
    )


class EvalEnvs:
    """``episodes`` copies of ``env_id`` (``gym.make``, so with the registered time
    limit); copy ``i`` is seeded ``10000 + seed + i`` at its first reset and its RNG
    continues from there at later evaluations."""

    def __init__(self, env_id: str, seed: int, episodes: int) -> None:
        self.envs = [gym.make(env_id) for _ in range(episodes)]
        self.seeds: list[int | None] = [10_000 + seed + i for i in range(episodes)]
        self.num_envs = episodes

    def reset(self) -> list[np.ndarray]:
        observations = [env.reset(seed=s)[0] for env, s in zip(self.envs, self.seeds, strict=True)]
        self.seeds = [None] * self.num_envs
        return observations

    def close(self) -> None:
        for env in self.envs:
            env.close()


def make_eval_env(env_id: str, seed: int, episodes: int) -> EvalEnvs:
    """The evaluation envs of one run (:class:`EvalEnvs`)."""
    return EvalEnvs(env_id, seed, episodes)


def run_episodes(model: Any, eval_env: EvalEnvs) -> tuple[list[float], list[int]]:
    """Returns and lengths of one deterministic episode per env of ``eval_env``, in env
    order.

    All envs are reset together and stepped in lock-step with one batched ``predict``
    over the envs whose episode is still running; an env is not stepped after its
    episode ends. (SB3's ``evaluate_policy`` on a ``DummyVecEnv`` keeps stepping every
    sub-env until the slowest has finished: on LunarLander, where one hovering lander
    plays 1,000 steps, that was most of the evaluation time.)"""
    observations = eval_env.reset()
    returns = [0.0] * eval_env.num_envs
    lengths = [0] * eval_env.num_envs
    running = list(range(eval_env.num_envs))
    while running:
        actions, _ = model.predict(np.stack([observations[i] for i in running]), deterministic=True)
        still_running = []
        for i, action in zip(running, actions, strict=True):
            obs, reward, terminated, truncated, _ = eval_env.envs[i].step(action)
            returns[i] += float(reward)
            lengths[i] += 1
            observations[i] = obs
            if not (terminated or truncated):
                still_running.append(i)
        running = still_running
    return returns, lengths


def evaluate_episodes(model: Any, eval_env: EvalEnvs) -> list[float]:
    """The returns of :func:`run_episodes`."""
    return run_episodes(model, eval_env)[0]


class EvalCurve(BaseCallback):
    """Evaluates every ``every`` env steps on ``eval_env`` (one episode per env, see
    :func:`run_episodes`); times training separately from evaluation. Records the mean
    return and mean episode length of each evaluation and, for a model with a ``theta``
    (EVAL's reward-rate estimate), its value at that step."""

    def __init__(self, eval_env: EvalEnvs, every: int) -> None:
        super().__init__()
        self.eval_env, self.every = eval_env, every
        self.steps: list[int] = []
        self.returns: list[float] = []
        self.lengths: list[float] = []
        self.thetas: list[float | None] = []
        self.eval_time = 0.0
        self._next = every

    def _evaluate(self) -> None:
        t = time.perf_counter()
        episode_returns, episode_lengths = run_episodes(self.model, self.eval_env)
        self.eval_time += time.perf_counter() - t
        self.steps.append(int(self.num_timesteps))
        self.returns.append(float(np.mean(episode_returns)))
        self.lengths.append(float(np.mean(episode_lengths)))
        theta = getattr(self.model, "theta", None)
        # NaN before EVAL's first gradient step (no estimate yet): JSON null
        self.thetas.append(None if theta is None or not np.isfinite(theta) else float(theta))

    def _on_training_start(self) -> None:
        self._evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            self._evaluate()
        return True


PACKAGES = ("torch", "stable_baselines3", "gymnasium", "numpy", "Box2D")


def provenance() -> dict[str, str | None]:
    """What a run's numbers depend on besides its seed and hyperparameters: the versions
    of the packages that shape a trajectory (None where one is not installed) and the
    repository's git commit (``+dirty`` with uncommitted changes; None outside git).
    Same seed, same provenance, same machine: the same curve. (SB3 DQN's LunarLander
    seeds 0-9 of 2026-11-29 did not reproduce after the virtual environment was rebuilt
    on 2026-11-30, and those runs had recorded no versions.)"""
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    try:
        root = HERE.parent
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        out["git"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        out["git"] = None
    return out


def silent_logger() -> Logger:
    """The logger SB3 makes at ``verbose=0`` (no outputs), minus the empty ``/tmp/SB3-<time>``
    folder that SB3 creates for it on every ``learn``."""
    return Logger(folder=None, output_formats=[])


def run_one(
    algo: str, env_id: str, seed: int, steps: int | None, every: int, episodes: int
) -> dict[str, Any]:
    """One seeded training run with its learning curve (the run record of the JSON)."""
    hp = load_hyperparams(algo, env_id)
    kwargs = {k: v for k, v in hp.items() if not k.startswith("_")}
    n = int(steps if steps is not None else kwargs.pop("n_timesteps"))
    kwargs.pop("n_timesteps", None)
    policy = kwargs.pop("policy", "MlpPolicy")
    n_envs = int(kwargs.pop("n_envs", 1))
    for key, val in list(kwargs.items()):
        if isinstance(val, str) and val.startswith("lin_"):  # RL Zoo linear schedule
            kwargs[key] = linear_schedule(float(val[4:]))
    env = make_vec_env(env_id, n_envs=n_envs, seed=seed)
    eval_env = make_eval_env(env_id, seed, episodes)
    model = ALGOS[algo](policy, env, seed=seed, **kwargs)
    model.set_logger(silent_logger())
    cb = EvalCurve(eval_env, every)
    t = time.perf_counter()
    model.learn(n, callback=cb)
    wall = time.perf_counter() - t
    if cb.steps[-1] != model.num_timesteps:
        cb._evaluate()
    env.close()
    eval_env.close()
    train_time = wall - cb.eval_time
    return {
        "seed": seed,
        "steps": int(model.num_timesteps),
        "curve_steps": cb.steps,
        "curve_returns": cb.returns,
        "curve_lengths": cb.lengths,
        # EVAL's theta at each evaluation (runs from 2026-11-30 on; older runs lack both)
        **({"curve_theta": cb.thetas} if hasattr(model, "theta") else {}),
        "train_seconds": train_time,
        "eval_seconds": cb.eval_time,
        "steps_per_s": model.num_timesteps / train_time,
        "eval_method": eval_method_description(episodes),
        "hyperparams": hp["_file"],
        "provenance": provenance(),
        # the values as run: a later edit of the YAML file must not relabel old runs
        "hyperparam_values": {k: v for k, v in hp.items() if not k.startswith("_")},
    }


def steps_to_threshold(run: dict[str, Any], threshold: float) -> float:
    """The first evaluation step (after step 0: an untrained network can be lucky) whose
    mean return reaches ``threshold``; ``inf`` when none does."""
    s = np.asarray(run["curve_steps"], dtype=np.float64)
    y = np.asarray(run["curve_returns"], dtype=np.float64)
    reached = np.flatnonzero((y >= threshold) & (s > 0))
    return float(s[reached[0]]) if len(reached) else np.inf


def median_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``median(a) - median(b)`` of steps to threshold along the last axis, where ``inf``
    is "never": two medians that are both never count as a tie (0), not as ``inf - inf``."""
    ma, mb = np.median(a, axis=-1), np.median(b, axis=-1)
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(ma) & np.isinf(mb), 0.0, ma - mb)


def compare_to_peer(
    runs: list[dict[str, Any]],
    peer_runs: list[dict[str, Any]],
    threshold: float,
    n_boot: int = 20_000,
    seed: int = 0,
) -> dict[str, Any]:
    """Steps to threshold of ``runs`` against a peer's (SB3 DQN's) on one environment.

    "At least matches the peer's steps-to-threshold" is a statement about two medians of
    about ten noisy numbers each, so besides the difference of the medians this reports
    its bootstrap 95% interval (seeds of each side resampled independently: the runs share
    seed numbers but not trajectories), the bootstrap probability that this median is at
    or below the peer's, the mean difference (``None`` unless every seed of both sides
    reaches the threshold), and the seeds (paired by number) on which each side is faster.
    A seed that never reaches the threshold counts as infinitely slow; an infinite
    difference is written as the string ``"+inf"`` (this median is never, the peer's is
    finite) or ``"-inf"`` (the reverse), since JSON has no infinity.
    """
    a = np.array([steps_to_threshold(r, threshold) for r in runs])
    b = np.array([steps_to_threshold(r, threshold) for r in peer_runs])
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), (n_boot, len(a)))
    ib = rng.integers(0, len(b), (n_boot, len(b)))
    diffs = median_difference(a[ia], b[ib])
    # "nearest" picks resampled values: no interpolation between an infinite and a finite one
    lo, hi = np.percentile(diffs, [2.5, 97.5], method="nearest")
    finite = np.isfinite(a).all() and np.isfinite(b).all()
    peer_by_seed = {int(r["seed"]): h for r, h in zip(peer_runs, b, strict=True)}
    paired = [
        (int(r["seed"]), h, peer_by_seed[int(r["seed"])])
        for r, h in zip(runs, a, strict=True)
        if int(r["seed"]) in peer_by_seed
    ]

    def json_steps(x: float) -> float | str:
        return float(x) if np.isfinite(x) else ("+inf" if x > 0 else "-inf")

    return {
        "median_difference": json_steps(float(median_difference(a, b))),
        "median_difference_ci95": [json_steps(lo), json_steps(hi)],
        "p_median_not_slower": float(np.mean(diffs <= 0.0)),
        "mean_difference": float(a.mean() - b.mean()) if finite else None,
        "faster_on_seeds": [s_ for s_, x, y in paired if x < y],
        "slower_on_seeds": [s_ for s_, x, y in paired if x > y],
        "n_boot": n_boot,
    }


def peer_comparisons(runs: dict[str, Any], peer: str = "dqn") -> dict[str, Any]:
    """:func:`compare_to_peer` of every algorithm against ``peer`` on every environment
    where both ran (the ``vs_dqn`` section of the JSON)."""
    out: dict[str, Any] = {}
    for env_id, per_algo in runs.items():
        if peer not in per_algo:
            continue
        out[env_id] = {
            algo: compare_to_peer(entry["runs"], per_algo[peer]["runs"], THRESHOLDS[env_id])
            for algo, entry in per_algo.items()
            if algo != peer
        }
    return out


def summarise(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
    """Statistics over the seeds of one algorithm on one environment (module docstring);
    the per-seed lists are in the order of ``runs`` (by seed, as merged), see ``seeds``."""
    final = np.array([r["curve_returns"][-1] for r in runs])
    auc = []
    hit = []
    for r in runs:
        s = np.asarray(r["curve_steps"], dtype=np.float64)
        y = np.asarray(r["curve_returns"], dtype=np.float64)
        span = s[-1] - s[0]
        auc.append(
            float(np.sum((y[1:] + y[:-1]) * np.diff(s)) / (2.0 * span))
            if span > 0
            else float(y[-1])
        )
        hit.append(steps_to_threshold(r, threshold))
    hit_arr = np.array(hit)
    frac = float(np.mean(np.isfinite(hit_arr)))
    med = float(np.median(hit_arr))
    lo, hi = bootstrap_iqm(final)
    return {
        "n_seeds": len(runs),
        "seeds": [int(r["seed"]) for r in runs],
        "threshold": float(threshold),
        "final_iqm": iqm(final),
        "final_iqm_ci95": [lo, hi],
        "final_mean": float(final.mean()),
        "steps_to_threshold_median": med if np.isfinite(med) else None,
        "steps_to_threshold_per_seed": [h if np.isfinite(h) else None for h in hit],
        "reached_fraction": frac,
        "auc_iqm": iqm(np.array(auc)),
        "steps_per_s_median": float(np.median([r["steps_per_s"] for r in runs])),
    }


def merge_runs(older: list[dict[str, Any]], newer: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per-seed merge: a run of ``newer`` replaces the run of ``older`` with the same seed,
    runs with other seeds are kept; the result is sorted by seed."""
    by_seed = {int(r["seed"]): r for r in older}
    by_seed.update({int(r["seed"]): r for r in newer})
    return [by_seed[seed] for seed in sorted(by_seed)]


def add_runs(
    results: dict[str, Any], env_id: str, algo: str, new_runs: list[dict[str, Any]]
) -> None:
    """Merges ``new_runs`` into ``results["runs"][env_id][algo]`` (:func:`merge_runs`)
    and recomputes that entry's summary over all its runs."""
    per_algo = results.setdefault("runs", {}).setdefault(env_id, {})
    runs = merge_runs(per_algo.get(algo, {}).get("runs", []), new_runs)
    per_algo[algo] = {"runs": runs, "summary": summarise(runs, THRESHOLDS[env_id])}
    results["vs_dqn"] = peer_comparisons(results["runs"])


def commands_of(results: dict[str, Any]) -> list[str]:
    """The command lines that produced a results document (``commands`` of a merged or
    combined file, else its single ``command``)."""
    if results.get("commands"):
        return list(results["commands"])
    return [results["command"]] if results.get("command") else []


def eval_methods_of(results: dict[str, Any]) -> str | list[str] | None:
    """The evaluation method(s) of the runs in ``results``: one string when all runs
    share one, the sorted distinct ones when a merged file mixes them (runs without an
    ``eval_method`` field predate the vectorised evaluation), ``None`` without runs."""
    methods = sorted(
        {
            run.get("eval_method", LEGACY_EVAL_METHOD)
            for per_algo in results.get("runs", {}).values()
            for entry in per_algo.values()
            for run in entry["runs"]
        }
    )
    if not methods:
        return None
    return methods[0] if len(methods) == 1 else methods


def merge_results(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """``documents`` merged in order, a later one over the earlier ones (none is
    modified): runs per environment, algorithm and seed (:func:`merge_runs`), every
    summary recomputed once over the merged runs, ``throughput`` from the latest document
    that has one, ``commands`` concatenated, every other top-level field from the latest
    document that has it, and ``eval_method`` recomputed (:func:`eval_methods_of`)."""
    merged: dict[str, Any] = {}
    run_lists: dict[str, dict[str, list[dict[str, Any]]]] = {}
    commands: list[str] = []
    for document in documents:
        merged.update({k: v for k, v in document.items() if v is not None})
        commands += commands_of(document)
        for env_id, per_algo in document.get("runs", {}).items():
            per_algo_runs = run_lists.setdefault(env_id, {})
            for algo, entry in per_algo.items():
                per_algo_runs[algo] = merge_runs(per_algo_runs.get(algo, []), entry["runs"])
    merged["runs"] = {
        env_id: {
            algo: {"runs": runs, "summary": summarise(runs, THRESHOLDS[env_id])}
            for algo, runs in per_algo_runs.items()
        }
        for env_id, per_algo_runs in run_lists.items()
    }
    merged["vs_dqn"] = peer_comparisons(merged["runs"])
    merged["throughput"] = merged.get("throughput")
    merged["commands"] = commands
    merged["eval_method"] = eval_methods_of(merged) or merged.get("eval_method")
    return merged


def combine_files(paths: list[Path], command: str) -> dict[str, Any]:
    """The result files ``paths`` merged in order (:func:`merge_results`: a later file
    wins a seed it shares with an earlier one, and the throughput section); ``command``
    is the combining command line, ``combined_from`` lists the files."""
    combined = merge_results([json.loads(path.read_text()) for path in paths])
    combined["command"] = command
    combined["combined_from"] = [str(path) for path in paths]
    return combined


def throughput(algos: list[str], steps: int, repeats: int = 3) -> dict[str, Any]:
    """Env steps/s at equal ``train_freq=1``, ``gradient_steps=1`` (median of interleaved
    repeats, so that a shared machine's load hits every algorithm alike), per second of
    wall clock and per second of this process's CPU time (single-threaded torch: the CPU
    time leaves out the waits for a core that other jobs on a shared machine cause)."""
    common = dict(
        learning_rate=1e-3,
        batch_size=64,
        buffer_size=50_000,
        learning_starts=100,
        train_freq=1,
        gradient_steps=1,
        target_update_interval=100,
        policy_kwargs=dict(net_arch=[64, 64]),
    )
    times: dict[str, list[float]] = {a: [] for a in algos if a != "ppo"}  # PPO: on-policy
    if "dqn" in times:  # SB3 DQN with the fused Adam that tiltrl's agents use by default
        times["dqn_fused_adam"] = []
    cpu_times: dict[str, list[float]] = {a: [] for a in times}
    for rep in range(repeats):
        for algo in times:
            kw: dict[str, Any] = dict(common)
            if algo == "dqn_fused_adam":
                kw["policy_kwargs"] = dict(net_arch=[64, 64], optimizer_kwargs={"fused": True})
            if algo in VARIANTS:
                kw.update(VARIANTS[algo][1])
            cls = ALGOS["dqn" if algo == "dqn_fused_adam" else algo]
            model = cls("MlpPolicy", gym.make("CartPole-v1"), seed=rep, **kw)
            model.set_logger(silent_logger())
            t, c = time.perf_counter(), time.process_time()
            model.learn(steps)
            times[algo].append(steps / (time.perf_counter() - t))
            cpu_times[algo].append(steps / (time.process_time() - c))
    return {
        "settings": {
            **common,
            "steps": steps,
            "repeats": repeats,
            "env": "CartPole-v1",
            "optimizer": "tiltrl agents: their default Adam(fused=True); dqn: SB3's default "
            "Adam; dqn_fused_adam: Adam(fused=True)",
            "variants": {a: VARIANTS[a][1] for a in times if a in VARIANTS},
        },
        "steps_per_s_median": {a: float(np.median(v)) for a, v in times.items()},
        "steps_per_s_all": times,
        "steps_per_cpu_s_median": {a: float(np.median(v)) for a, v in cpu_times.items()},
        "steps_per_cpu_s_all": cpu_times,
    }


def table(results: dict[str, Any]) -> str:
    lines = [
        "| env | algo | seeds | steps | final IQM [95% CI] | steps to thr. (median, reached) "
        "| AUC IQM | steps/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for env_id, per_algo in results["runs"].items():
        for algo, res in per_algo.items():
            s = res["summary"]
            lo, hi = s["final_iqm_ci95"]
            med = s["steps_to_threshold_median"]
            med_s = "—" if med is None else f"{med:,.0f}"
            lines.append(
                f"| {env_id} | {algo} | {s['n_seeds']} | {res['runs'][0]['steps']:,} | "
                f"{s['final_iqm']:.1f} [{lo:.1f}, {hi:.1f}] | {med_s} "
                f"({s['reached_fraction']:.0%}) | {s['auc_iqm']:.1f} | "
                f"{s['steps_per_s_median']:.0f} |"
            )
    return "\n".join(lines)


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Writes ``results`` as JSON through a temporary file and a rename, so that a
    process killed while writing leaves the previous complete file behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1))
    os.replace(tmp, path)


def print_report(results: dict[str, Any]) -> None:
    """The Markdown table and the throughput numbers of ``results``."""
    print(table(results))
    for env_id, per_algo in (results.get("vs_dqn") or {}).items():
        for algo, c in per_algo.items():
            lo, hi = c["median_difference_ci95"]
            print(
                f"{env_id} {algo} - dqn, median steps to threshold: {c['median_difference']} "
                f"[{lo}, {hi}], P(not slower) {c['p_median_not_slower']:.2f}"
            )
    tp = results.get("throughput") or {}
    if "steps_per_s_median" in tp:
        print(
            "throughput (CartPole-v1, train_freq=1, gradient_steps=1, batch 64, MLP 2x64):",
            {k: round(v) for k, v in tp["steps_per_s_median"].items()},
        )
    if "steps_per_cpu_s_median" in tp:
        print(
            "  per CPU second:",
            {k: round(v) for k, v in tp["steps_per_cpu_s_median"].items()},
        )


SPLIT_HELP = """\
Two processes must never write one --out file (each rewrites its whole file after every
seed). To split the run over processes or sessions, give each process its own --out and a
seed range (--seed-start, --seeds), then merge the files with --combine, e.g.:
  bench_deep.py --seed-start 0 --seeds 5 --skip-throughput --out /tmp/deep_s0-4.json
  bench_deep.py --seed-start 5 --seeds 5 --skip-throughput --out /tmp/deep_s5-9.json
  bench_deep.py --throughput-only --out /tmp/deep_tp.json
  bench_deep.py --combine /tmp/deep_s0-4.json /tmp/deep_s5-9.json /tmp/deep_tp.json \\
      --out benchmarks/results/deep.json
Merging (--merge, --combine) is per seed: a later source replaces a run with the same
environment, algorithm and seed, keeps the others, and every summary is recomputed."""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog=SPLIT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument(
        "--quick", action="store_true", help="CartPole-v1, 3 seeds, eval/softdqn/dqn, 20k steps"
    )
    ap.add_argument("--algos", nargs="+", choices=list(ALGOS))
    ap.add_argument("--envs", nargs="+", choices=FULL_ENVS)
    ap.add_argument("--seeds", type=int, help="number of seeds (default 10; --quick 3)")
    ap.add_argument(
        "--seed-start",
        type=int,
        default=0,
        metavar="K",
        help="first seed: runs seeds K..K+seeds-1 (default 0)",
    )
    ap.add_argument("--steps", type=int, help="override n_timesteps of the YAML files")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument(
        "--eval-episodes",
        type=int,
        default=10,
        help="deterministic evaluation episodes, run in parallel on as many sub-envs",
    )
    ap.add_argument("--throughput-steps", type=int, default=None)
    ap.add_argument(
        "--throughput-repeats", type=int, default=3, help="interleaved repeats (median)"
    )
    ap.add_argument(
        "--throughput-only",
        action="store_true",
        help="only the equal-train_freq throughput comparison",
    )
    ap.add_argument(
        "--merge",
        action="store_true",
        help="merge into an existing --out file per seed (our runs replace runs with the "
        "same env, algo and seed; the others are kept) instead of overwriting it",
    )
    ap.add_argument(
        "--combine",
        nargs="+",
        type=Path,
        metavar="FILE",
        help="no training: merge these result files per seed, in order (a later file wins "
        "a shared seed and the throughput section), into --out (with --merge, --out's "
        "existing runs first) and print the table",
    )
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "deep.json",
        help="result JSON (default benchmarks/results/deep.json); one file per process: "
        "parallel processes use different --out files, then --combine",
    )
    args = ap.parse_args(argv)
    command = " ".join(
        [
            Path(sys.executable).name,
            *(sys.argv if argv is None else [str(Path(__file__).relative_to(HERE.parent)), *argv]),
        ]
    )
    if args.combine:
        missing = [str(path) for path in args.combine if not path.exists()]
        if missing:
            ap.error(f"--combine: no such file: {', '.join(missing)}")
        sources = list(args.combine)
        if (
            args.merge
            and args.out.exists()
            and args.out.resolve() not in {path.resolve() for path in sources}
        ):
            sources.insert(0, args.out)
        combined = combine_files(sources, command)
        write_results(args.out, combined)
        print_report(combined)
        return 0
    if args.seed_start < 0:
        ap.error("--seed-start must be >= 0")
    th.set_num_threads(1)
    algos = args.algos or (["eval", "softdqn", "dqn"] if args.quick else DEFAULT_ALGOS)
    envs = args.envs or (["CartPole-v1"] if args.quick else FULL_ENVS)
    seeds = args.seeds or (3 if args.quick else 10)
    steps = args.steps if args.steps is not None else (20_000 if args.quick else None)
    every = args.eval_every or (2000 if args.quick else 2500)
    tp_steps = args.throughput_steps or (3000 if args.quick else 20_000)
    results: dict[str, Any] = {
        "command": command,
        "quick": args.quick,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": th.__version__,
            "cpu_count": os.cpu_count(),
            "torch_threads": 1,
        },
        "eval_episodes": args.eval_episodes,
        "eval_every": every,
        "eval_method": eval_method_description(args.eval_episodes),
        "runs": {},
    }
    if args.merge and args.out.exists():
        results = merge_results([json.loads(args.out.read_text()), results])
    for env_id in [] if args.throughput_only else envs:
        for algo in algos:
            for seed in range(args.seed_start, args.seed_start + seeds):
                r = run_one(algo, env_id, seed, steps, every, args.eval_episodes)
                print(
                    f"{env_id} {algo} seed {seed}: final {r['curve_returns'][-1]:.1f} "
                    f"{r['steps_per_s']:.0f} steps/s, evaluation {r['eval_seconds']:.1f} s",
                    flush=True,
                )
                add_runs(results, env_id, algo, [r])
                results["eval_method"] = eval_methods_of(results)
                write_results(args.out, results)
    if not args.skip_throughput:
        results["throughput"] = throughput(algos, tp_steps, args.throughput_repeats)
    write_results(args.out, results)
    print_report(results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
