"""Tests of the ``tiltrl`` command (``tiltrl.cli``) and the plots (``tiltrl.viz``).

The plotting tests use a hand-made :class:`tiltrl.Solution` (any arrays of the right
shapes), so they check the drawing code independently of the solver; the CLI tests run
the real solver end to end on small maps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import tiltrl
from tiltrl import Solution, Sweep
from tiltrl.cli import main, parse_betas

MIXED = ["SFCFF", "FNWFR", "FHFFG"]  # every tile kind the plots mark

needs_mpl = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib (extra 'plot') missing"
)


def _png_ok(path: Path) -> None:
    assert path.is_file(), path
    data = path.read_bytes()
    assert len(data) > 1000
    assert data[:8] == b"\x89PNG\r\n\x1a\n"


def _fake_solution(mdp: tiltrl.TabularMDP, *, kind: str = "average") -> Solution:
    """A Solution with plausible arrays (not an optimum): enough to exercise the plots."""
    S, A = mdp.shape
    rng = np.random.default_rng(0)
    policy = rng.dirichlet(np.ones(A), size=S)
    d = rng.random((S, A)) * np.logspace(-9, 0, S)[:, None]
    d /= d.sum()
    q = rng.normal(size=(S, A))
    v = q.max(axis=1)
    if kind == "finite":
        policy = np.stack([policy, policy])
        q = np.stack([q, q])
        v = np.stack([v, v, v])
    average = kind == "average"
    return Solution(
        beta=3.0, kind=kind, dynamics="controlled", method="fake",
        theta=-0.9 if average else float("nan"), log_rho=-2.7 if average else float("nan"),
        policy=policy, q=q, v=v,
        stationary=d if average else None,
        energy=-0.8, policy_kl=0.2, dynamics_kl=0.1,
        recurrent_states=np.arange(S) if average else None,
        horizon=1 if kind == "finite" else None,
    )


def _fake_sweep(dynamics: str = "controlled") -> Sweep:
    betas = np.logspace(-1, 2, 7)
    theta = -1.0 + 0.1 * np.tanh(np.log(betas))
    pkl = 0.5 * (1 + np.tanh(np.log(betas)))
    dkl = np.zeros_like(betas) if dynamics == "fixed" else 0.3 * pkl
    return Sweep(
        betas=betas, theta=theta, energy=theta + (pkl + dkl) / betas, policy_kl=pkl,
        dynamics_kl=dkl, iterations=np.full(7, 4), converged=np.arange(7) != 3,
        dynamics=dynamics,
    )


# ------------------------------------------------------------------- optional matplotlib
def test_import_tiltrl_does_not_import_matplotlib() -> None:
    code = (
        "import sys, tiltrl, tiltrl.viz, tiltrl.cli; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "assert 'rich' not in sys.modules, 'rich imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_plots_without_matplotlib_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    from tiltrl.viz import plot_grid_solution, plot_sweep

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(ImportError, match=r"pip install tiltrl\[plot\]"):
        plot_sweep(_fake_sweep())
    mdp = tiltrl.gridworld("4x4")
    with pytest.raises(ImportError, match=r"pip install tiltrl\[plot\]"):
        plot_grid_solution(mdp, _fake_solution(mdp))


# ------------------------------------------------------------------- plots (fake solutions)
@needs_mpl
@pytest.mark.parametrize("n_actions", [4, 5, 9])
@pytest.mark.parametrize("arrows", ["mean", "actions"])
def test_plot_grid_solution_fake(tmp_path: Path, n_actions: int, arrows: str) -> None:
    from matplotlib.figure import Figure

    from tiltrl.viz import plot_grid_solution

    mdp = tiltrl.gridworld(MIXED, n_actions=n_actions)
    fig = plot_grid_solution(mdp, _fake_solution(mdp), arrows=arrows, show_values=True)
    assert isinstance(fig, Figure)
    fig.savefig(tmp_path / "g.png")
    _png_ok(tmp_path / "g.png")


@needs_mpl
def test_plot_grid_solution_on_given_axes_and_linear_scale(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from tiltrl.viz import plot_grid_solution

    mdp = tiltrl.gridworld("7x7holes")
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_grid_solution(mdp, _fake_solution(mdp), ax=ax, title="t", log=False)
    assert out is fig
    assert ax.get_title() == "t"


@needs_mpl
def test_plot_grid_solution_without_stationary_draws_values(tmp_path: Path) -> None:
    from tiltrl.viz import plot_grid_solution, plot_policy_and_stationary

    mdp = tiltrl.gridworld("4x4")
    for kind in ("discounted", "finite"):
        sol = _fake_solution(mdp, kind=kind)
        fig = plot_grid_solution(mdp, sol)
        assert "soft value" in fig.axes[0].get_title()
        path = plot_policy_and_stationary(mdp, sol, tmp_path / f"{kind}.png")
        _png_ok(path)


@needs_mpl
def test_plot_policy_and_stationary_fake(tmp_path: Path) -> None:
    from tiltrl.viz import plot_policy_and_stationary

    mdp = tiltrl.gridworld("9x9zigzag", n_actions=8)
    path = plot_policy_and_stationary(mdp, _fake_solution(mdp), tmp_path / "sub" / "p.png")
    assert path == tmp_path / "sub" / "p.png"
    _png_ok(path)


@needs_mpl
def test_plot_grid_rejects_non_grid_models() -> None:
    from tiltrl.viz import plot_grid_solution

    P = np.full((3, 2, 3), 1 / 3)
    mdp = tiltrl.TabularMDP(P, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="no grid layout"):
        plot_grid_solution(mdp, _fake_solution(mdp))


def test_expected_displacement_and_layout() -> None:
    from tiltrl.viz import expected_displacement, grid_layout

    mdp = tiltrl.gridworld("4x4", n_actions=5)
    rows, deltas = grid_layout(mdp)
    assert rows == tiltrl.MAPS["4x4"]
    assert deltas.shape == (5, 2)
    # left w.p. 1/2, up w.p. 1/2 -> (drow, dcol) = (-1/2, -1/2)
    policy = np.zeros((16, 5))
    policy[:, 0] = policy[:, 3] = 0.5
    np.testing.assert_allclose(expected_displacement(policy, deltas), -0.5)


@needs_mpl
def test_plot_sweep_fake(tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    from tiltrl.viz import plot_sweep

    fig = plot_sweep(_fake_sweep(), path=tmp_path / "s.png")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    _png_ok(tmp_path / "s.png")
    both = plot_sweep({"controlled": _fake_sweep(), "fixed": _fake_sweep("fixed")})
    assert len(both.axes[0].get_lines()) >= 4
    plot_sweep([_fake_sweep(), _fake_sweep("fixed")], path=tmp_path / "l.png")
    _png_ok(tmp_path / "l.png")


# ------------------------------------------------------------------- CLI: parsing
def test_parse_betas() -> None:
    np.testing.assert_allclose(parse_betas("0.5,1,2"), [0.5, 1, 2])
    np.testing.assert_allclose(parse_betas("0.1:100:4"), [0.1, 1, 10, 100])
    np.testing.assert_allclose(parse_betas("3:3:1"), [3])
    for bad in ("", "1,x", "0,1", "-1", "1:10", "0:10:3", "1:10:0", "1:10:x", "nan"):
        with pytest.raises(ValueError):
            parse_betas(bad)


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["maps", "nosuchmap"],
        ["solve", "nosuchmap", "--beta", "1"],
        ["solve", "4x4"],
        ["solve", "4x4", "--beta", "-1"],
        ["solve", "4x4", "--beta", "abc"],
        ["solve", "4x4", "--beta", "1", "--gamma", "1.5"],
        ["solve", "4x4", "--beta", "1", "--dynamics", "sideways"],
        ["solve", "FrozenLake-v1", "--beta", "1", "--slippery", "1"],
        ["solve", "FrozenLake-v99", "--beta", "1"],
        ["solve", "SFX,FFG", "--beta", "1"],
        ["sweep", "4x4", "--betas", "1,x"],
        ["sweep", "4x4", "--betas", "0:10:3"],
        ["demo", "--map", "Taxi-v4", "--no-plots"],
    ],
)
def test_bad_input_exits_2_without_traceback(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error" in err
    assert "Traceback" not in err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "solve" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert tiltrl.__version__ in capsys.readouterr().out


# ------------------------------------------------------------------- CLI: commands
@pytest.mark.parametrize("plain", [False, True])
def test_maps(plain: bool, capsys: pytest.CaptureFixture[str]) -> None:
    assert main((["--plain"] if plain else []) + ["maps"]) == 0
    out = capsys.readouterr().out
    for name in tiltrl.MAPS:
        assert name in out
    assert "FFHHHFF" in out  # a row of 7x7holes


def test_output_falls_back_to_plain_without_rich(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    assert main(["maps", "4x4"]) == 0
    out = capsys.readouterr().out
    assert "4x4" in out and "HFFG" in out


@needs_mpl
def test_solve_json_round_trip_and_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    js, png = tmp_path / "sol.json", tmp_path / "fig" / "sol.png"
    assert main(["solve", "7x7holes", "--beta", "10", "--json", str(js),
                 "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "0.96451" in out  # cost rate of the calibration point, DESIGN.md §4
    sol = Solution.from_json(js)
    direct = tiltrl.solve(tiltrl.gridworld("7x7holes"), 10.0)
    assert sol.theta == pytest.approx(direct.theta, abs=1e-10)
    np.testing.assert_allclose(sol.policy, direct.policy, atol=1e-9)
    assert json.loads(js.read_text())["type"] == "Solution"
    _png_ok(png)


@needs_mpl
def test_solve_variants(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapfile = tmp_path / "tiny.txt"
    mapfile.write_text("# a tiny map\nSFF\nFHF\nFFG\n")
    assert main(["--plain", "solve", str(mapfile), "--beta", "2", "--dynamics", "fixed",
                 "--slippery", "1"]) == 0
    assert main(["solve", "SFF,FHF,FFG", "--beta", "2", "--n-actions", "5"]) == 0
    assert main(["solve", "4x4", "--beta", "2", "--gamma", "0.9",
                 "--plot", str(tmp_path / "d.png")]) == 0
    _png_ok(tmp_path / "d.png")
    assert main(["solve", "4x4", "--beta", "2", "--horizon", "5"]) == 0
    out = capsys.readouterr().out
    assert "soft value at initial dist." in out


@needs_mpl
def test_solve_gymnasium(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["solve", "FrozenLake-v1", "--beta", "5", "--plot",
                 str(tmp_path / "fl.png")]) == 0
    _png_ok(tmp_path / "fl.png")
    assert main(["solve", "CliffWalking-v1", "--beta", "5", "--json",
                 str(tmp_path / "cw.json")]) == 0
    Solution.from_json(tmp_path / "cw.json")
    # Taxi has no grid: the solve succeeds, the plot is skipped with a warning
    assert main(["solve", "Taxi-v4", "--beta", "1", "--plot", str(tmp_path / "t.png")]) == 0
    assert not (tmp_path / "t.png").exists()
    assert "not a grid world" in capsys.readouterr().err


@needs_mpl
def test_sweep(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js, png = tmp_path / "sw.json", tmp_path / "sw.png"
    assert main(["sweep", "4x4", "--betas", "0.5:5:3", "--json", str(js),
                 "--plot", str(png)]) == 0
    sw = Sweep.from_json(js)
    np.testing.assert_allclose(sw.betas, [0.5, 5 ** 0.5 * 0.5 ** 0.5, 5])
    ref = tiltrl.sweep(tiltrl.gridworld("4x4"), sw.betas)
    np.testing.assert_allclose(sw.theta, ref.theta, atol=1e-9)
    np.testing.assert_allclose(sw.theta, sw.energy - (sw.policy_kl + sw.dynamics_kl)
                               / sw.betas, atol=1e-8)
    _png_ok(png)
    assert main(["--plain", "sweep", "7x7holes", "--slippery", "1", "--betas", "10,1",
                 "--dynamics", "fixed"]) == 0
    out = capsys.readouterr().out
    assert "policy KL" in out


@needs_mpl
def test_demo(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_dir = tmp_path / "out"
    assert main(["demo", "--out", str(out_dir), "--betas", "5,10", "--points", "4"]) == 0
    text = capsys.readouterr().out
    assert "calibration" in text and "OK" in text
    assert "0.964515" in text
    pngs = sorted(out_dir.glob("*.png"))
    assert len(pngs) == 4
    for p in pngs:
        _png_ok(p)
        assert str(p) in text


def test_demo_stochastic_map_without_plots(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--plain", "demo", "--map", "windycliff", "--betas", "1,10",
                 "--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "controlled >= fixed at every beta" in text
    assert "stochastic" in text


@needs_mpl
def test_plot_curves_of_a_benchmark_file_needs_no_torch(tmp_path: Path) -> None:
    """``tiltrl plot-curves RESULTS.json`` draws a bench_deep results file without
    importing torch or stable-baselines3 (core + matplotlib only)."""
    run = {"seed": 0, "curve_steps": [0, 1000, 2000], "curve_returns": [10.0, 200.0, 500.0]}
    doc = {"runs": {"CartPole-v1": {"dqn": {"runs": [run, {**run, "seed": 1}],
                                            "summary": {"threshold": 475.0}}}}}
    results, fig = tmp_path / "deep.json", tmp_path / "curves.png"
    results.write_text(json.dumps(doc))
    code = ("import sys, tiltrl.cli\n"
            f"args = ['--plain', 'plot-curves', {str(results)!r}, '--out', {str(fig)!r}]\n"
            "rc = tiltrl.cli.main(args)\n"
            "assert rc == 0, rc\n"
            "assert 'torch' not in sys.modules and 'stable_baselines3' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert res.returncode == 0, res.stderr
    assert "2 runs, 1 curves" in res.stdout
    _png_ok(fig)
