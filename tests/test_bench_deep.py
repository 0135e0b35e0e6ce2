"""``benchmarks/bench_deep.py`` bookkeeping: the per-seed merge of result files (``--merge``,
``--combine``) recomputes every summary, and the vectorised evaluation runs exactly one
deterministic episode per sub-env, the same episodes as a sequential evaluation of the
same seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("stable_baselines3")
pytest.importorskip("yaml")

import gymnasium as gym  # noqa: E402

from _benchmarks import load_benchmark  # noqa: E402

CARTPOLE = "CartPole-v1"  # threshold 475
CURVE_STEPS = [0, 1000, 2000, 3000]


@pytest.fixture(scope="module")
def bench() -> Any:
    return load_benchmark("bench_deep")


def _run(seed: int, reaches_at: int | None, steps_per_s: float = 100.0) -> dict[str, Any]:
    """A synthetic run record whose curve first reaches CartPole's threshold (475) at
    ``reaches_at`` (never for ``None``), with a final return that tells the run apart."""
    returns = [
        500.0 if reaches_at is not None and step >= reaches_at else 100.0 + seed
        for step in CURVE_STEPS
    ]
    returns[-1] += 0.25 * (reaches_at or 0) / 1000.0  # the final return says which run
    return {
        "seed": seed,
        "steps": CURVE_STEPS[-1],
        "curve_steps": list(CURVE_STEPS),
        "curve_returns": returns,
        "train_seconds": CURVE_STEPS[-1] / steps_per_s,
        "steps_per_s": steps_per_s,
        "hyperparams": "benchmarks/hyperparams/eval_cartpole.yml",
    }


def _document(
    bench: Any, runs_by_algo: dict[str, list[dict[str, Any]]], **top: Any
) -> dict[str, Any]:
    """A results document as a benchmark process writes it, summaries included."""
    doc: dict[str, Any] = {"runs": {}, **top}
    for algo, runs in runs_by_algo.items():
        bench.add_runs(doc, CARTPOLE, algo, runs)
    return doc


# steps to threshold: old seeds 0, 1, 2 at 1000, 1000, 2000 (median 1000); the new file
# replaces seed 1 (3000) and adds seed 3 (never). Merged per seed: 1000, 3000, 2000, never
# -> median 2500. Keeping the old summary gives 1000, the new runs alone None (never),
# appending without replacing 2000.
OLD_REACHES = {0: 1000, 1: 1000, 2: 2000}
NEW_REACHES: dict[int, int | None] = {1: 3000, 3: None}


def _old_and_new(bench: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    old = _document(
        bench,
        {"eval": [_run(s, r) for s, r in OLD_REACHES.items()]},
        command="python bench_deep.py --seeds 3",
        throughput={"steps_per_s_median": {"eval": 1.0}},
        eval_episodes=10,
    )
    new = _document(
        bench,
        {"eval": [_run(s, r, steps_per_s=300.0) for s, r in NEW_REACHES.items()]},
        command="python bench_deep.py --seed-start 1 --seeds 3",
        eval_method=bench.eval_method_description(10),
        eval_episodes=10,
    )
    for entry in new["runs"][CARTPOLE].values():
        for run in entry["runs"]:
            run["eval_method"] = bench.eval_method_description(10)
    return old, new


def _check_merged_eval_entry(entry: dict[str, Any]) -> None:
    summary = entry["summary"]
    assert [r["seed"] for r in entry["runs"]] == [0, 1, 2, 3]
    assert summary["seeds"] == [0, 1, 2, 3]
    assert summary["n_seeds"] == 4
    assert summary["threshold"] == 475.0  # read back by tiltrl.viz.deep (plot-curves)
    assert entry["runs"][1]["steps_per_s"] == 300.0  # seed 1 replaced by the newer run
    assert summary["steps_to_threshold_per_seed"] == [1000.0, 3000.0, 2000.0, None]
    assert summary["steps_to_threshold_median"] == 2500.0
    assert summary["reached_fraction"] == 0.75
    finals = [r["curve_returns"][-1] for r in entry["runs"]]
    assert summary["final_mean"] == pytest.approx(np.mean(finals))
    assert summary["steps_per_s_median"] == pytest.approx(200.0)  # 100, 300, 100, 300


def test_compare_to_peer_constant_sides_and_seed_pairing(bench: Any) -> None:
    # every resample of a constant side has the same median: the interval is the point
    faster = [_run(s, 1000) for s in range(4)]
    peer = [_run(s, 2000) for s in range(4)]
    c = bench.compare_to_peer(faster, peer, 475.0, n_boot=500)
    assert c["median_difference"] == -1000.0
    assert c["median_difference_ci95"] == [-1000.0, -1000.0]
    assert c["p_median_not_slower"] == 1.0
    assert c["mean_difference"] == -1000.0
    assert c["faster_on_seeds"] == [0, 1, 2, 3] and c["slower_on_seeds"] == []
    back = bench.compare_to_peer(peer, faster, 475.0, n_boot=500)
    assert back["median_difference"] == 1000.0 and back["p_median_not_slower"] == 0.0
    # pairing is by seed number, not by position; seeds the peer lacks are not paired
    mixed = [_run(0, 3000), _run(1, 1000), _run(7, 1000)]
    c = bench.compare_to_peer(mixed, [_run(1, 2000), _run(0, 2000)], 475.0, n_boot=500)
    assert c["faster_on_seeds"] == [1] and c["slower_on_seeds"] == [0]


def test_compare_to_peer_never_is_infinitely_slow(bench: Any) -> None:
    never = [_run(s, None) for s in range(3)]
    reach = [_run(s, 2000) for s in range(3)]
    c = bench.compare_to_peer(never, reach, 475.0, n_boot=200)
    assert c["median_difference"] == "+inf"
    assert c["median_difference_ci95"] == ["+inf", "+inf"]
    assert c["p_median_not_slower"] == 0.0 and c["mean_difference"] is None
    assert bench.compare_to_peer(reach, never, 475.0, n_boot=200)["median_difference"] == "-inf"
    both = bench.compare_to_peer(never, never, 475.0, n_boot=200)  # a tie, not inf - inf
    assert both["median_difference"] == 0.0 and both["p_median_not_slower"] == 1.0
    json.dumps(c, allow_nan=False)  # strict JSON: no Infinity or NaN


def test_compare_to_peer_bootstrap_matches_a_direct_resampling(bench: Any) -> None:
    """The vectorised bootstrap against a loop over the same resampling indices."""
    hits_a = [1000, 2000, 3000, None, 1000, 2000, 1000]
    hits_b = [2000, 2000, 3000, 1000, 3000, 3000]
    a = [_run(s, r) for s, r in enumerate(hits_a)]
    b = [_run(s, r) for s, r in enumerate(hits_b)]
    n_boot = 400
    c = bench.compare_to_peer(a, b, 475.0, n_boot=n_boot, seed=3)
    xa = np.array([np.inf if r is None else r for r in hits_a], dtype=float)
    xb = np.array([np.inf if r is None else r for r in hits_b], dtype=float)
    rng = np.random.default_rng(3)
    ia = rng.integers(0, len(xa), (n_boot, len(xa)))
    ib = rng.integers(0, len(xb), (n_boot, len(xb)))
    diffs = []
    for i in range(n_boot):
        ma, mb = float(np.median(xa[ia[i]])), float(np.median(xb[ib[i]]))
        diffs.append(0.0 if ma == mb == np.inf else ma - mb)
    assert c["p_median_not_slower"] == pytest.approx(np.mean(np.array(diffs) <= 0))
    srt = np.sort(diffs)
    ends = [float(srt[round(q * (n_boot - 1))]) for q in (0.025, 0.975)]
    assert c["median_difference_ci95"] == [
        x if np.isfinite(x) else ("+inf" if x > 0 else "-inf") for x in ends
    ]
    assert c["median_difference"] == 2000.0 - 2500.0
    assert all(isinstance(x, float) for x in c["median_difference_ci95"])  # finite ends


def test_merged_results_carry_the_dqn_comparison(bench: Any) -> None:
    doc = _document(bench, {"dqn": [_run(s, 2000) for s in range(3)], "eval": [_run(0, 1000)]})
    assert set(doc["vs_dqn"][CARTPOLE]) == {"eval"}
    merged = bench.merge_results([doc, _document(bench, {"eval": [_run(0, 3000)]})])
    assert merged["vs_dqn"][CARTPOLE]["eval"]["median_difference"] == 1000.0


def test_merge_runs_replaces_same_seed_keeps_others_sorted(bench: Any) -> None:
    merged = bench.merge_runs(
        [_run(2, 1000), _run(0, 1000), _run(1, 1000)],
        [_run(3, None, steps_per_s=7.0), _run(1, 2000, steps_per_s=7.0)],
    )
    assert [r["seed"] for r in merged] == [0, 1, 2, 3]
    assert [r["steps_per_s"] for r in merged] == [100.0, 7.0, 100.0, 7.0]


def test_merge_results_per_seed_recomputes_summary(bench: Any) -> None:
    old, new = _old_and_new(bench)
    old_summary = json.dumps(old["runs"][CARTPOLE]["eval"]["summary"])
    merged = bench.merge_results([old, new])
    _check_merged_eval_entry(merged["runs"][CARTPOLE]["eval"])
    assert json.dumps(old["runs"][CARTPOLE]["eval"]["summary"]) == old_summary  # unchanged
    assert merged["throughput"] == old["throughput"]  # the newer document has none
    assert merged["commands"] == [old["command"], new["command"]]
    # old runs have no eval_method: the top level says that the file mixes two methods
    assert merged["eval_method"] == sorted(
        [bench.LEGACY_EVAL_METHOD, bench.eval_method_description(10)]
    )


def test_combine_two_files(
    bench: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    old, new = _old_and_new(bench)
    new["throughput"] = {"steps_per_s_median": {"eval": 2.0}}
    bench.add_runs(new, CARTPOLE, "dqn", [_run(0, 3000)])
    first, second = tmp_path / "seeds_a.json", tmp_path / "seeds_b.json"
    first.write_text(json.dumps(old))
    second.write_text(json.dumps({**new, "commands": ["b1", "b2"]}))
    out = tmp_path / "combined.json"

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("--combine must not train")

    monkeypatch.setattr(bench, "run_one", no_training)
    monkeypatch.setattr(bench, "throughput", no_training)
    assert bench.main(["--combine", str(first), str(second), "--out", str(out)]) == 0
    combined = json.loads(out.read_text())
    _check_merged_eval_entry(combined["runs"][CARTPOLE]["eval"])
    assert combined["runs"][CARTPOLE]["dqn"]["summary"]["steps_to_threshold_median"] == 3000.0
    assert combined["throughput"] == new["throughput"]  # the later file wins
    assert combined["commands"] == [old["command"], "b1", "b2"]
    assert combined["combined_from"] == [str(first), str(second)]
    assert "--combine" in combined["command"]
    table = capsys.readouterr().out
    assert "| CartPole-v1 | eval | 4 |" in table
    assert "| CartPole-v1 | dqn | 1 |" in table

    # order matters: with the files swapped, the old seed 1 wins and old's throughput
    swapped = tmp_path / "swapped.json"
    assert bench.main(["--combine", str(second), str(first), "--out", str(swapped)]) == 0
    entry = json.loads(swapped.read_text())["runs"][CARTPOLE]["eval"]
    assert entry["summary"]["steps_to_threshold_per_seed"] == [1000.0, 1000.0, 2000.0, None]
    assert json.loads(swapped.read_text())["throughput"] == old["throughput"]


def test_plot_curves_of_a_results_file(bench: Any, tmp_path: Path) -> None:
    """``tiltrl plot-curves RESULTS.json``: every run of the file as a curve (evaluation
    steps against returns), the mean over seeds per algorithm, the threshold drawn."""
    pytest.importorskip("matplotlib")
    from tiltrl.cli import main
    from tiltrl.viz.deep import plot_run_curves, read_benchmark_curves

    old, _ = _old_and_new(bench)
    bench.add_runs(old, CARTPOLE, "dqn", [_run(0, 3000), _run(1, None)])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(old))
    runs = read_benchmark_curves(path)
    assert sorted((r["algo"], r["seed"]) for r in runs) == [
        ("dqn", 0), ("dqn", 1), ("eval", 0), ("eval", 1), ("eval", 2)
    ]
    assert {r["threshold"] for r in runs} == {475.0}
    assert list(runs[0]["steps"]) == CURVE_STEPS
    assert [r["algo"] for r in read_benchmark_curves(path, algos=["dqn"])] == ["dqn", "dqn"]
    with pytest.raises(ValueError, match="no algorithm ppo .*the file has dqn, eval"):
        read_benchmark_curves(path, algos=["ppo"])
    with pytest.raises(ValueError, match="no 'runs' section"):
        (tmp_path / "other.json").write_text("{}")
        read_benchmark_curves(tmp_path / "other.json")

    fig = plot_run_curves([r for r in runs if r["algo"] == "dqn"], points=4)
    (ax,) = fig.axes
    dqn, threshold = ax.lines
    # seed 0 reaches 500 at 3000 (final 500.75), seed 1 stays at 101: the mean per step
    assert list(dqn.get_ydata()) == pytest.approx([100.5, 100.5, 100.5, (500.75 + 101) / 2])
    assert list(threshold.get_ydata()) == [475.0, 475.0]
    assert "evaluation return" in ax.get_ylabel()

    fig_path = tmp_path / "curves.png"
    assert main(["--plain", "plot-curves", str(path), "--algos", "eval", "--out",
                 str(fig_path)]) == 0
    assert fig_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["plot-curves", str(path), "--envs", "Pong", "--out", str(fig_path)]) == 2


class AngleOnlyPolicy:
    """A fixed deterministic CartPole policy (push towards the pole's lean) that loses
    after a state-dependent few dozen steps, so episode returns differ between seeds."""

    def predict(
        self,
        observation: np.ndarray,
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        return (np.asarray(observation)[:, 2] > 0).astype(np.int64), state


def _sequential_returns(
    policy: Any, seed: int, episodes: int, rounds: int = 1
) -> list[list[float]]:
    """``rounds`` evaluations of one env per seed ``10000 + seed + i``, played one after
    another, one observation at a time: env ``i``'s ``r``-th episode starts from its
    ``r``-th reset (seeded only at the first)."""
    returns: list[list[float]] = [[] for _ in range(rounds)]
    for i in range(episodes):
        env = gym.make(CARTPOLE)
        for r in range(rounds):
            obs, _ = env.reset(seed=10_000 + seed + i if r == 0 else None)
            total, done = 0.0, False
            while not done:
                action, _ = policy.predict(obs[None], deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(int(action[0]))
                total += float(reward)
                done = terminated or truncated
            returns[r].append(total)
        env.close()
    return returns


def test_batched_evaluation_equals_sequential_episodes(bench: Any) -> None:
    seed, episodes = 3, 7
    eval_env = bench.make_eval_env(CARTPOLE, seed, episodes)
    first, first_lengths = bench.run_episodes(AngleOnlyPolicy(), eval_env)
    # a finished env is not stepped again: each env's step count is its episode's length
    # (CartPole pays 1 per step)
    lengths = [env.get_wrapper_attr("_elapsed_steps") for env in eval_env.envs]
    second = bench.evaluate_episodes(AngleOnlyPolicy(), eval_env)
    eval_env.close()
    reference = _sequential_returns(AngleOnlyPolicy(), seed, episodes, rounds=2)
    assert len(set(reference[0])) > 1  # the seeds do give different episodes
    assert first == reference[0]
    assert lengths == [int(r) for r in first] == first_lengths
    # the second evaluation continues each env's RNG from its own first episode
    assert second == reference[1] != first


def test_batched_evaluation_of_a_tiltrl_model(bench: Any) -> None:
    """The batched ``predict`` of a tiltrl agent (untrained SoftDQN) over the envs still
    running gives the same episodes as one observation at a time."""
    from stable_baselines3.common.env_util import make_vec_env

    from tiltrl.deep import SoftDQN

    model = SoftDQN("MlpPolicy", make_vec_env(CARTPOLE, n_envs=1, seed=0), seed=0)
    seed, episodes = 0, 5
    eval_env = bench.make_eval_env(CARTPOLE, seed, episodes)
    returns = [bench.evaluate_episodes(model, eval_env) for _ in range(2)]
    eval_env.close()
    assert returns == _sequential_returns(model, seed, episodes, rounds=2)


def test_run_one_records_eval_method(bench: Any) -> None:
    run = bench.run_one("softdqn", CARTPOLE, seed=1, steps=200, every=100, episodes=3)
    assert run["seed"] == 1
    # SoftDQN's train_freq 256 rounds learn up to 256 steps, evaluated at the end
    assert run["curve_steps"] == [0, 100, 200, 256] == [0, 100, 200, run["steps"]]
    assert len(run["curve_returns"]) == 4
    # CartPole pays 1 per step: the mean length of an evaluation is its mean return
    assert run["curve_lengths"] == run["curve_returns"]
    assert "curve_theta" not in run  # SoftDQN has no reward-rate estimate
    assert run["eval_method"] == bench.eval_method_description(3)
    assert run["eval_method"].startswith("batched: 3 envs")
    assert run["eval_seconds"] > 0.0
    yml = bench.load_hyperparams("softdqn", CARTPOLE)
    assert run["hyperparam_values"] == {k: v for k, v in yml.items() if k != "_file"}
    assert run["hyperparam_values"]["beta"] == yml["beta"]
    import stable_baselines3
    import torch

    versions = run["provenance"]
    assert versions["stable_baselines3"] == stable_baselines3.__version__
    assert versions["torch"] == torch.__version__
    assert versions["gymnasium"] == gym.__version__
    assert set(versions) == {*bench.PACKAGES, "git"}


def test_run_one_records_eval_theta(bench: Any) -> None:
    """EVAL's theta at each evaluation: none before its first gradient step (the YAML's
    ``learning_starts``), then the model's moving estimate."""
    start = bench.load_hyperparams("eval", CARTPOLE)["learning_starts"]
    run = bench.run_one("eval", CARTPOLE, seed=0, steps=start + 300, every=100, episodes=2)
    steps, theta = run["curve_steps"], run["curve_theta"]
    assert len(theta) == len(steps) == len(run["curve_lengths"])
    assert all(t is None for s, t in zip(steps, theta, strict=True) if s <= start)
    learnt = [t for s, t in zip(steps, theta, strict=True) if s > start]
    assert len(learnt) == 3
    assert all(isinstance(t, float) and np.isfinite(t) for t in learnt)
    assert len(set(learnt)) == 3  # it moves while learning
    assert run["curve_lengths"] == run["curve_returns"]


def test_hyperparameter_files_cover_the_default_algorithms_and_variants_change_one_thing(
    bench: Any,
) -> None:
    """Every default algorithm has a YAML file for every benchmark environment; a variant
    runs only when named, and its file differs from its base algorithm's in the one
    setting it is a variant of; a missing file is an error that names it."""
    assert set(bench.DEFAULT_ALGOS) == {"eval", "softdqn", "bounded", "dqn", "ppo"}
    for algo in bench.DEFAULT_ALGOS:
        for env_id in bench.FULL_ENVS:
            assert bench.load_hyperparams(algo, env_id)["n_timesteps"] > 0
    for name, (base_algo, settings) in bench.VARIANTS.items():
        paths = sorted((Path(bench.HERE) / "hyperparams").glob(f"{name}_*.yml"))
        assert paths  # every variant has a file, and the check below runs on it
        for path in paths:
            env_id = next(e for e in bench.FULL_ENVS if path.stem.endswith(e.split("-")[0].lower()))
            base = bench.load_hyperparams(base_algo, env_id)
            variant = bench.load_hyperparams(name, env_id)
            keys = {*base, *variant} - {"_file"}
            assert {k: variant[k] for k in keys if base.get(k) != variant.get(k)} == settings
    with pytest.raises(SystemExit, match="softdqn_nstep_cartpole.yml does not exist"):
        bench.load_hyperparams("softdqn_nstep", CARTPOLE)
