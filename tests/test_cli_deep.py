"""Tests of the deep subcommands: ``tiltrl train`` / ``eval`` / ``plot-curves`` / ``render``.

EVAL on CartPole-v1 for a few hundred steps (seconds, single-threaded torch): the run
directory holds the checkpoint, the run JSON and the CSV log; ``eval`` reloads it with the
algorithm named in the JSON; ``plot-curves`` overlays two seeds.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("stable_baselines3")
pytest.importorskip("yaml")
torch = pytest.importorskip("torch")

from tiltrl.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("deep_runs")
    dirs = []
    for seed in (0, 1):
        d = base / f"eval_s{seed}"
        rc = main(["--plain", "train", "eval", "CartPole-v1", "--steps", "500",
                   "--seed", str(seed), "--out", str(d), "--no-progress"])
        assert rc == 0
        dirs.append(d)
    return dirs


def test_train_writes_run_directory(runs: list[Path]) -> None:
    d = runs[0]
    assert (d / "model.zip").is_file()
    assert (d / "progress.csv").is_file()
    run = json.loads((d / "run.json").read_text())
    assert run["algo"] == "eval" and run["env"] == "CartPole-v1" and run["seed"] == 0
    assert run["num_timesteps"] == 500
    # the repository's hyperparameter file is the default
    assert run["config"].endswith("eval_cartpole.yml")
    assert run["hyperparams"]["scale"] == "terminal"
    header = (d / "progress.csv").read_text().splitlines()[0].split(",")
    assert "rollout/ep_rew_mean" in header and "time/total_timesteps" in header


def test_eval_json(runs: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["eval", str(runs[0] / "model.zip"), "--episodes", "3", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["algo"] == "eval" and res["episodes"] == 3 and len(res["returns"]) == 3
    assert min(res["returns"]) <= res["iqm"] <= max(res["returns"])
    assert res["mean"] == pytest.approx(sum(res["returns"]) / 3)
    # same seed, deterministic policy: same returns
    assert main(["eval", str(runs[0]), "--episodes", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["returns"] == res["returns"]


def test_eval_table_and_missing_checkpoint(runs: list[Path], tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plain", "eval", str(runs[1]), "--episodes", "2"]) == 0
    assert "IQM" in capsys.readouterr().out
    assert main(["eval", str(tmp_path / "nothing"), "--episodes", "2"]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_train_rejects_unknown_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "eval", "NoSuchEnv-v9", "--steps", "10",
                 "--out", str(tmp_path / "x")]) == 2
    assert "unknown gymnasium env" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_train_with_config_file(tmp_path: Path) -> None:
    cfg = tmp_path / "hp.yml"
    cfg.write_text("policy: MlpPolicy\nbeta: 2.0\nlearning_starts: 50\n"
                   "learning_rate: lin_0.001\npolicy_kwargs: {net_arch: [16]}\n")
    d = tmp_path / "soft"
    assert main(["--plain", "train", "softdqn", "CartPole-v1", "--steps", "120",
                 "--config", str(cfg), "--out", str(d), "--no-progress"]) == 0
    run = json.loads((d / "run.json").read_text())
    assert run["hyperparams"]["beta"] == 2.0 and run["config"] == str(cfg)
    from tiltrl.deep import SoftDQN

    model = SoftDQN.load(d / "model.zip")
    assert model.beta == 2.0


def test_plot_curves(runs: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    fig = tmp_path / "curves.png"
    assert main(["--plain", "plot-curves", *map(str, runs), "--out", str(fig)]) == 0
    data = fig.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    assert main(["plot-curves", str(tmp_path), "--out", str(fig)]) == 2  # not a run dir


def test_render_gif(runs: list[Path], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    gif = tmp_path / "agent.gif"
    assert main(["--plain", "render", str(runs[0]), "--out", str(gif), "--steps", "4"]) == 0
    from PIL import Image

    with Image.open(gif) as im:
        assert im.n_frames == 4


def test_help_does_not_import_torch() -> None:
    code = ("import sys, tiltrl.cli\n"
            "try:\n    tiltrl.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "tiltrl.cli.build_parser().parse_args(['train', 'eval', 'CartPole-v1'])\n"
            "assert 'torch' not in sys.modules, 'torch imported'\n"
            "assert 'stable_baselines3' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "plot-curves" in res.stdout and "train" in res.stdout
