"""The deep subcommands of ``tiltrl``: train, eval, render (``plot-curves`` needs no torch
and lives in :mod:`tiltrl.cli`).

``tiltrl.cli`` defines the arguments and calls these functions lazily, so that
``import tiltrl`` and ``tiltrl --help`` never import torch. Every function takes the
parsed :class:`argparse.Namespace` and the :class:`tiltrl.cli.Output` and returns the exit
status.

Run directory (``tiltrl train --out DIR``): ``model.zip`` (the SB3 checkpoint),
``run.json`` (algorithm, env, seed, steps, hyperparameters, versions, wall time),
``progress.csv`` (SB3's CSV logger: ``time/total_timesteps``, ``rollout/ep_rew_mean``,
``train/...``) and TensorBoard event files when ``tensorboard`` is importable.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "ALGO_NAMES",
    "LinearSchedule",
    "cmd_eval",
    "cmd_render",
    "cmd_train",
    "default_hyperparams_path",
    "iqm",
    "load_hyperparams",
]

ALGO_NAMES = ("eval", "softdqn", "bounded", "dqn", "ppo")
RUN_FILE = "run.json"
MODEL_FILE = "model.zip"
_HYPERPARAM_DIRS = (
    Path(__file__).resolve().parents[3] / "benchmarks" / "hyperparams",  # source checkout
    Path.cwd() / "benchmarks" / "hyperparams",
)


def _algo_class(name: str) -> Any:
    if name not in ALGO_NAMES:
        raise ValueError(f"unknown algorithm {name!r}; choose from {', '.join(ALGO_NAMES)}")
    if name in ("dqn", "ppo"):
        import stable_baselines3

        return getattr(stable_baselines3, name.upper())
    import tiltrl.deep as deep

    return {"eval": deep.EVAL, "softdqn": deep.SoftDQN, "bounded": deep.BoundedSoftDQN}[name]


class LinearSchedule:
    """RL Zoo's ``lin_X``: ``X * progress_remaining`` (a class, so checkpoints pickle it)."""

    def __init__(self, start: float) -> None:
        self.start = float(start)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.start


def default_hyperparams_path(algo: str, env_id: str) -> Path | None:
    """``benchmarks/hyperparams/<algo>_<env>.yml`` of the repository, if it exists."""
    name = f"{algo}_{env_id.split('-')[0].lower()}.yml"
    for folder in _HYPERPARAM_DIRS:
        if (folder / name).is_file():
            return folder / name
    return None


def load_hyperparams(path: str | Path) -> dict[str, Any]:
    """Read an RL Zoo-style YAML file (a mapping of keyword arguments)."""
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - pyyaml ships with the deep extra
        raise ImportError("reading --config needs PyYAML: pip install pyyaml") from exc
    with open(path) as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of hyperparameters")
    return data


def iqm(x: Any) -> float:
    """Interquartile mean with fractional weights (defined for any sample size)."""
    v = np.sort(np.asarray(x, dtype=np.float64))
    n = len(v)
    if n == 0:
        return float("nan")
    idx = np.arange(n)
    w = np.clip(np.minimum(idx + 1, 0.75 * n) - np.maximum(idx, 0.25 * n), 0.0, 1.0)
    return float(np.sum(w * v) / np.sum(w))


def _make_progress_callback(total: int, label: str) -> Any:
    from stable_baselines3.common.callbacks import BaseCallback

    class Progress(BaseCallback):
        """A rich bar on a terminal, else a line on stderr every 10% of the steps."""

        def __init__(self) -> None:
            super().__init__()
            self.bar: Any = None
            self.task: Any = None
            self.every = max(1, total // 10)
            self.next = self.every
            self.start = time.perf_counter()

        def _on_training_start(self) -> None:
            self.start = time.perf_counter()
            if sys.stderr.isatty():
                try:
                    from rich.progress import (
                        BarColumn,
                        MofNCompleteColumn,
                        Progress,
                        TextColumn,
                        TimeElapsedColumn,
                        TimeRemainingColumn,
                    )
                except ImportError:
                    return
                self.bar = Progress(
                    TextColumn(label),
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeElapsedColumn(),
                    TimeRemainingColumn(),
                    transient=False,
                )
                self.bar.start()
                self.task = self.bar.add_task(label, total=total)

        def _on_step(self) -> bool:
            n = int(self.num_timesteps)
            if self.bar is not None:
                self.bar.update(self.task, completed=min(n, total))
            elif n >= self.next:
                self.next += self.every
                rate = n / max(time.perf_counter() - self.start, 1e-9)
                print(f"{label}: {n}/{total} steps ({rate:.0f} steps/s)", file=sys.stderr)
            return True

        def _on_training_end(self) -> None:
            if self.bar is not None:
                self.bar.stop()

    return Progress()


def cmd_train(args: argparse.Namespace, out: Any) -> int:
    import gymnasium as gym
    import stable_baselines3
    import torch as th
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import configure

    cls = _algo_class(args.algo)
    try:  # unknown ids fail here, before anything is written
        gym.spec(args.env)
    except gym.error.Error as exc:
        raise ValueError(f"unknown gymnasium env {args.env!r}: {exc}") from exc
    config = Path(args.config) if args.config else default_hyperparams_path(args.algo, args.env)
    hp: dict[str, Any] = load_hyperparams(config) if config is not None else {}
    kwargs = dict(hp)
    yaml_steps = kwargs.pop("n_timesteps", None)
    steps = int(args.steps if args.steps is not None else (yaml_steps or 10_000))
    policy = kwargs.pop("policy", "MlpPolicy")
    n_envs = int(kwargs.pop("n_envs", 1))
    for key, val in list(kwargs.items()):
        if isinstance(val, str) and val.startswith("lin_"):
            kwargs[key] = LinearSchedule(float(val[4:]))
    if args.threads > 0:
        th.set_num_threads(args.threads)
    run_dir = Path(args.out) if args.out else Path("runs") / f"{args.algo}_{args.env}_s{args.seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    formats = ["csv"]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        pass
    else:
        formats.append("tensorboard")
    env = make_vec_env(args.env, n_envs=n_envs, seed=args.seed)
    model = cls(policy, env, seed=args.seed, device=args.device, **kwargs)
    model.set_logger(configure(str(run_dir), formats))
    out.line(
        f"training {args.algo} on {args.env}: {steps} steps, seed {args.seed}, "
        f"hyperparameters {config if config is not None else '(defaults)'}, logs {formats} "
        f"in {run_dir}"
    )
    callback = None if args.no_progress else _make_progress_callback(steps, args.algo)
    t0 = time.perf_counter()
    model.learn(steps, callback=callback)
    wall = time.perf_counter() - t0
    model.save(run_dir / MODEL_FILE)
    env.close()
    run = {
        "algo": args.algo,
        "env": args.env,
        "seed": args.seed,
        "steps": steps,
        "num_timesteps": int(model.num_timesteps),
        "n_envs": n_envs,
        "policy": policy,
        "config": str(config) if config is not None else None,
        "hyperparams": hp,
        "wall_seconds": wall,
        "steps_per_s": model.num_timesteps / max(wall, 1e-9),
        "log_formats": formats,
        "versions": {"torch": th.__version__, "stable_baselines3": stable_baselines3.__version__},
    }
    if args.algo == "eval":
        run["theta"] = float(model.theta)
    (run_dir / RUN_FILE).write_text(json.dumps(run, indent=2, default=str) + "\n")
    out.line(
        f"saved {run_dir / MODEL_FILE} and {run_dir / RUN_FILE} "
        f"({wall:.1f} s, {run['steps_per_s']:.0f} steps/s)"
    )
    return 0


def load_run(checkpoint: str | Path, device: str = "auto") -> tuple[Any, dict[str, Any]]:
    """``(model, run)`` from a run directory or its ``model.zip`` (algo from ``run.json``)."""
    path = Path(checkpoint)
    run_dir = path if path.is_dir() else path.parent
    model_path = run_dir / MODEL_FILE if path.is_dir() else path
    run_file = run_dir / RUN_FILE
    if not model_path.is_file():
        raise FileNotFoundError(f"no checkpoint at {model_path}")
    if not run_file.is_file():
        raise FileNotFoundError(f"no {RUN_FILE} next to {model_path} (made by `tiltrl train`)")
    run = json.loads(run_file.read_text())
    model = _algo_class(run["algo"]).load(model_path, device=device)
    return model, run


def evaluate(model: Any, env_id: str, episodes: int, seed: int, deterministic: bool) -> list[float]:
    """Undiscounted returns of ``episodes`` episodes (episode ``i`` reset with ``seed + i``)."""
    import gymnasium as gym

    env = gym.make(env_id)
    returns = []
    try:
        for i in range(episodes):
            obs, _ = env.reset(seed=seed + i)
            total, done = 0.0, False
            while not done:
                action, _ = model.predict(obs, deterministic=deterministic)
                obs, r, term, trunc, _ = env.step(action)
                total += float(r)
                done = bool(term or trunc)
            returns.append(total)
    finally:
        env.close()
    return returns


def cmd_eval(args: argparse.Namespace, out: Any) -> int:
    if args.episodes < 1:
        raise ValueError("--episodes must be >= 1")
    model, run = load_run(args.checkpoint, device=args.device)
    env_id = args.env or run["env"]
    returns = evaluate(model, env_id, args.episodes, args.seed, not args.stochastic)
    x = np.asarray(returns)
    result = {
        "algo": run["algo"],
        "env": env_id,
        "checkpoint": str(args.checkpoint),
        "episodes": args.episodes,
        "seed": args.seed,
        "deterministic": not args.stochastic,
        "mean": float(x.mean()),
        "std": float(x.std()),
        "iqm": iqm(x),
        "min": float(x.min()),
        "max": float(x.max()),
        "returns": returns,
    }
    if args.json:
        print(json.dumps(result))
        return 0
    out.pairs(
        [
            ("algorithm", run["algo"]),
            ("env", env_id),
            ("episodes", str(args.episodes)),
            ("mean return", f"{result['mean']:.2f}"),
            ("std", f"{result['std']:.2f}"),
            ("IQM", f"{result['iqm']:.2f}"),
            ("min / max", f"{result['min']:.1f} / {result['max']:.1f}"),
        ],
        title=f"evaluation of {args.checkpoint}",
    )
    return 0


def agent_view(model: Any, algo: str, obs: np.ndarray) -> dict[str, Any]:
    """What the agent computes at ``obs``: action probabilities (greedy one-hot for DQN)
    and, for EVAL, ``log u`` (aggregated over heads) and ``theta``."""
    batch = np.asarray(obs, dtype=np.float32)[None]
    view: dict[str, Any] = {"obs": np.asarray(obs, dtype=np.float64)}
    if algo in ("eval", "softdqn", "bounded"):
        view["probs"] = model.action_probabilities(batch)[0]
        view["probs_label"] = "pi(a|s)"
    elif algo == "ppo":
        import torch as th

        t, _ = model.policy.obs_to_tensor(batch)
        with th.no_grad():
            view["probs"] = model.policy.get_distribution(t).distribution.probs.cpu().numpy()[0]
        view["probs_label"] = "pi(a|s)"
    else:
        q = model.q_net(model.policy.obs_to_tensor(batch)[0]).detach().cpu().numpy()[0]
        view["probs"] = np.eye(len(q))[int(np.argmax(q))]
        view["probs_label"] = "greedy action (DQN)"
    if algo == "eval":
        view["log_u"] = model.log_u(batch)[0]
        view["theta"] = float(model.theta)
    return view


def cmd_render(args: argparse.Namespace, out: Any) -> int:
    import gymnasium as gym

    from tiltrl.viz.deep import AgentAnimation

    model, run = load_run(args.checkpoint, device=args.device)
    env_id = args.env or run["env"]
    import os

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # rgb_array needs no display
    try:
        import pygame  # noqa: F401

        human: bool = True
    except ImportError:
        human = False
        out.warn(
            "pygame is not installed: no human view (the rendered frame), only the agent's "
            "view is drawn; pip install pygame (gymnasium[classic-control])"
        )
    env = gym.make(env_id, render_mode="rgb_array" if human else None)
    obs, _ = env.reset(seed=args.seed)
    anim = AgentAnimation(human=human, title=f"{run['algo']} on {env_id}")
    episode_return, episodes, frames = 0.0, 0, 0
    try:
        with anim.saving(args.out, fps=args.fps):
            for t in range(args.steps):
                frame: Any = env.render() if human else None
                view = agent_view(model, run["algo"], obs)
                anim.draw(frame, view, step=t, episode_return=episode_return)
                frames += 1
                action, _ = model.predict(obs, deterministic=not args.stochastic)
                obs, r, term, trunc, _ = env.step(action)
                episode_return += float(r)
                if term or trunc:
                    episodes += 1
                    if args.one_episode:
                        break
                    obs, _ = env.reset()
                    episode_return = 0.0
    finally:
        env.close()
    out.line(f"wrote {args.out} ({frames} frames, {episodes} finished episodes)")
    return 0
