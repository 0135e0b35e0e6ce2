"""Deep-agent benchmark: tiltrl EVAL / SoftDQN / BoundedSoftDQN versus SB3 DQN and PPO.

Run from the repository root (needs the ``deep`` extra and PyYAML)::

    .venv/bin/python benchmarks/bench_deep.py                 # full spec (hours)
    .venv/bin/python benchmarks/bench_deep.py --quick         # CartPole, 3 seeds, 3 algos
    .venv/bin/python benchmarks/bench_deep.py --algos eval dqn --envs CartPole-v1 --seeds 5

Hyperparameters come from ``benchmarks/hyperparams/<algo>_<env>.yml`` (one file per
algorithm and environment; ``n_timesteps``, ``policy`` and the constructor keyword
arguments, ``policy_kwargs`` passed at construction as the RL Zoo does). Every run is
seeded (``seed`` = run index) and single-threaded (``torch.set_num_threads(1)``).

Per algorithm and environment, over seeds:
- ``iqm`` of the final evaluation return (mean over ``--eval-episodes`` deterministic
  episodes on a separate, separately seeded evaluation env) with a bootstrap 95% interval
  (resampling seeds, 2000 resamples);
- ``steps_to_threshold``: first evaluation step (after step 0: an untrained network can be
  lucky) whose mean return reaches the threshold
  (CartPole 475, Acrobot -100, MountainCar -110, LunarLander 200); median over seeds
  (``null`` when fewer than half the seeds reach it) and the fraction that did;
- ``auc``: mean evaluation return over the learning curve (trapezoid over steps divided
  by the step span), IQM over seeds;
- ``steps_per_s``: environment steps per second of training wall clock (evaluation time
  excluded), median over seeds.
A throughput section times every algorithm at the same ``train_freq=1``,
``gradient_steps=1``, batch 64, MLP 2x64 on CartPole-v1 (``--throughput-steps``), as env
steps per wall-clock second and per CPU second of the process.
Writes JSON (``--out``, default ``benchmarks/results/deep.json``) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
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
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402

from tiltrl.deep import EVAL, BoundedSoftDQN, SoftDQN  # noqa: E402

HERE = Path(__file__).resolve().parent
ALGOS: dict[str, Any] = {
    "eval": EVAL,
    "softdqn": SoftDQN,
    "bounded": BoundedSoftDQN,
    "dqn": DQN,
    "ppo": PPO,
}
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


class EvalCurve(BaseCallback):
    """Evaluates every ``every`` env steps; times training separately from evaluation."""

    def __init__(self, eval_env: gym.Env, every: int, episodes: int) -> None:
        super().__init__()
        self.eval_env, self.every, self.episodes = eval_env, every, episodes
        self.steps: list[int] = []
        self.returns: list[float] = []
        self.eval_time = 0.0
        self._next = every

    def _evaluate(self) -> None:
        t = time.perf_counter()
        mean, _ = evaluate_policy(
            self.model, self.eval_env, n_eval_episodes=self.episodes, deterministic=True
        )
        self.eval_time += time.perf_counter() - t
        self.steps.append(int(self.num_timesteps))
        self.returns.append(float(mean))

    def _on_training_start(self) -> None:
        self._evaluate()

    def _on_step(self) -> bool:
        if self.num_timesteps >= self._next:
            self._next += self.every
            self._evaluate()
        return True


def run_one(
    algo: str, env_id: str, seed: int, steps: int | None, every: int, episodes: int
) -> dict[str, Any]:
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
    eval_env = Monitor(gym.make(env_id))
    eval_env.reset(seed=10_000 + seed)
    model = ALGOS[algo](policy, env, seed=seed, **kwargs)
    cb = EvalCurve(eval_env, every, episodes)
    t = time.perf_counter()
    model.learn(n, callback=cb)
    wall = time.perf_counter() - t
    if cb.steps[-1] != model.num_timesteps:
        cb._evaluate()
    train_time = wall - cb.eval_time
    return {
        "seed": seed,
        "steps": int(model.num_timesteps),
        "curve_steps": cb.steps,
        "curve_returns": cb.returns,
        "train_seconds": train_time,
        "steps_per_s": model.num_timesteps / train_time,
        "hyperparams": hp["_file"],
    }


def summarise(runs: list[dict[str, Any]], threshold: float) -> dict[str, Any]:
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
        reached = np.flatnonzero((y >= threshold) & (s > 0))  # not the untrained net
        hit.append(float(s[reached[0]]) if len(reached) else np.inf)
    hit_arr = np.array(hit)
    frac = float(np.mean(np.isfinite(hit_arr)))
    med = float(np.median(hit_arr))
    lo, hi = bootstrap_iqm(final)
    return {
        "n_seeds": len(runs),
        "final_iqm": iqm(final),
        "final_iqm_ci95": [lo, hi],
        "final_mean": float(final.mean()),
        "steps_to_threshold_median": med if np.isfinite(med) else None,
        "steps_to_threshold_per_seed": [h if np.isfinite(h) else None for h in hit],
        "reached_fraction": frac,
        "auc_iqm": iqm(np.array(auc)),
        "steps_per_s_median": float(np.median([r["steps_per_s"] for r in runs])),
    }


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
            cls = ALGOS["dqn" if algo == "dqn_fused_adam" else algo]
            model = cls("MlpPolicy", gym.make("CartPole-v1"), seed=rep, **kw)
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--quick", action="store_true", help="CartPole-v1, 3 seeds, eval/softdqn/dqn, 20k steps"
    )
    ap.add_argument("--algos", nargs="+", choices=list(ALGOS))
    ap.add_argument("--envs", nargs="+", choices=FULL_ENVS)
    ap.add_argument("--seeds", type=int)
    ap.add_argument("--steps", type=int, help="override n_timesteps of the YAML files")
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--eval-episodes", type=int, default=10)
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
        help="keep the other entries of an existing --out file (add/replace ours)",
    )
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "deep.json")
    args = ap.parse_args(argv)
    th.set_num_threads(1)
    algos = args.algos or (["eval", "softdqn", "dqn"] if args.quick else list(ALGOS))
    envs = args.envs or (["CartPole-v1"] if args.quick else FULL_ENVS)
    seeds = args.seeds or (3 if args.quick else 10)
    steps = args.steps if args.steps is not None else (20_000 if args.quick else None)
    every = args.eval_every or (2000 if args.quick else 2500)
    tp_steps = args.throughput_steps or (3000 if args.quick else 20_000)
    results: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
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
        "runs": {},
    }
    if args.merge and args.out.exists():
        old = json.loads(args.out.read_text())
        results["runs"] = old.get("runs", {})
        results["throughput"] = old.get("throughput")
        results["commands"] = [*old.get("commands", [old.get("command")]), results["command"]]
    for env_id in [] if args.throughput_only else envs:
        results["runs"].setdefault(env_id, {})
        for algo in algos:
            runs = []
            for seed in range(seeds):
                r = run_one(algo, env_id, seed, steps, every, args.eval_episodes)
                print(
                    f"{env_id} {algo} seed {seed}: final {r['curve_returns'][-1]:.1f} "
                    f"{r['steps_per_s']:.0f} steps/s",
                    flush=True,
                )
                runs.append(r)
            results["runs"][env_id][algo] = {
                "runs": runs,
                "summary": summarise(runs, THRESHOLDS[env_id]),
            }
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))
    if not args.skip_throughput:
        results["throughput"] = throughput(algos, tp_steps, args.throughput_repeats)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
