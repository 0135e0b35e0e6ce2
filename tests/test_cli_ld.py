"""Tests of ``tiltrl scgf`` and of ``tiltrl sweep --mc`` (the large-deviation CLI)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

import tiltrl
from tiltrl.cli import main, parse_ks
from tiltrl.ld import MarkovChain, scgf
from tiltrl.ld.examples import ring_scgf

needs_mpl = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib (extra 'plot') missing"
)


def _png_ok(path: Path) -> None:
    assert path.is_file(), path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_ks() -> None:
    np.testing.assert_allclose(parse_ks("-1:1:5"), [-1, -0.5, 0, 0.5, 1])
    np.testing.assert_allclose(parse_ks("-2, 0.5"), [-2, 0.5])
    np.testing.assert_allclose(parse_ks("3:7:1"), [3])
    for bad in ("", "a", "1:2", "1:2:0", "nan", "0:inf:3"):
        with pytest.raises(ValueError):
            parse_ks(bad)


@needs_mpl
def test_scgf_ring_with_cloning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    js, png = tmp_path / "r.json", tmp_path / "r.png"
    assert main(["--plain", "scgf", "ring", "--n", "10", "--p", "0.4", "--q", "0.1",
                 "--k=-1:1:5", "--cloning", "500", "--steps", "200", "--runs", "5",
                 "--json", str(js), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "Lambda' (mean)" in text and "cloning" in text and "I(a)" in text
    rep = json.loads(js.read_text())
    k = np.array(rep["k"])
    np.testing.assert_allclose(rep["scgf"], ring_scgf(k, 0.4, 0.1), atol=1e-10)
    # mean and variance of the ring current from the closed form
    z = 0.4 * np.exp(k) + 0.1 * np.exp(-k) + 0.5
    mean = (0.4 * np.exp(k) - 0.1 * np.exp(-k)) / z
    np.testing.assert_allclose(rep["mean"], mean, atol=1e-8)
    np.testing.assert_allclose(rep["variance"], (0.4 * np.exp(k) + 0.1 * np.exp(-k)) / z
                               - mean**2, atol=1e-8)
    est, err = np.array(rep["cloning"]["estimate"]), np.array(rep["cloning"]["stderr"])
    assert np.all(np.abs(est - rep["scgf"]) <= 5 * err + 2e-3)
    assert all(s == "interior" for s in rep["rate"]["status"])
    assert min(rep["rate"]["rate"]) >= 0
    _png_ok(png)


def test_scgf_saved_chain_and_grid_map(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(1)
    P = rng.random((4, 4))
    P /= P.sum(axis=1, keepdims=True)
    f = rng.normal(size=(4, 4))
    MarkovChain(P).save(tmp_path / "c.npz")
    np.save(tmp_path / "f.npy", f)
    js = tmp_path / "c.json"
    assert main(["--plain", "scgf", str(tmp_path / "c.npz"), "--observable",
                 str(tmp_path / "f.npy"), "--k", "0.5,2", "--json", str(js)]) == 0
    rep = json.loads(js.read_text())
    for k, lam in zip(rep["k"], rep["scgf"], strict=True):
        rho = np.max(np.linalg.eigvals(P * np.exp(k * f)).real)
        assert lam == pytest.approx(np.log(rho), abs=1e-10)
    # a grid map: Lambda(beta) = beta * theta of the controlled solution
    js2 = tmp_path / "g.json"
    assert main(["--plain", "scgf", "4x4", "--k", "1,3", "--a", "-1.2",
                 "--json", str(js2)]) == 0
    rep = json.loads(js2.read_text())
    mdp = tiltrl.gridworld("4x4")
    for k, lam in zip(rep["k"], rep["scgf"], strict=True):
        assert lam == pytest.approx(k * tiltrl.solve(mdp, k).theta, abs=1e-8)
    assert main(["--plain", "scgf", "two-state", "--k", "1"]) == 0
    capsys.readouterr()
    # bad input: one-line errors, exit 2
    assert main(["scgf", str(tmp_path / "c.npz"), "--k", "1"]) == 2
    assert main(["scgf", "ring", "--k", "x"]) == 2
    assert "--observable" in capsys.readouterr().err


def test_scgf_matches_library(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    js = tmp_path / "t.json"
    assert main(["--plain", "scgf", "two-state", "--p", "0.2", "--q", "0.5",
                 "--k=-1,1", "--json", str(js)]) == 0
    from tiltrl.ld.examples import two_state

    ref = scgf(two_state(0.2, 0.5), np.array([0.0, 1.0]), np.array([-1.0, 1.0]))
    np.testing.assert_allclose(json.loads(js.read_text())["scgf"], ref, atol=1e-12)


@needs_mpl
@pytest.mark.parametrize("dynamics", ["controlled", "fixed"])
def test_sweep_monte_carlo(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                           dynamics: str) -> None:
    js, png = tmp_path / "sw.json", tmp_path / "sw.png"
    assert main(["--plain", "sweep", "7x7holes", "--slippery", "1", "--betas", "1,10",
                 "--dynamics", dynamics, "--mc", "--mc-steps", "2000", "--mc-chains", "8",
                 "--json", str(js), "--plot", str(png)]) == 0
    text = capsys.readouterr().out
    assert "Monte Carlo check" in text
    mc = json.loads((tmp_path / "sw.mc.json").read_text())
    exact, meas, err = (np.array(mc[key]) for key in ("energy_exact", "energy_mc",
                                                      "stderr_mc"))
    assert np.all(err > 0)
    assert np.all(np.abs(meas - exact) <= 5 * err)
    _png_ok(png)
