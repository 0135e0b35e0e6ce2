"""Shared test configuration: deterministic, single-threaded, headless, fast hypothesis."""

from __future__ import annotations

import os

# before numpy / scipy / matplotlib / pygame are imported by any test module
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # pragma: no cover - hypothesis is a dev dependency
    pass
else:
    settings.register_profile(
        "tiltrl",
        deadline=None,
        max_examples=25,
        derandomize=True,  # fixed seeds: the same examples on every run
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.register_profile(
        "thorough",
        deadline=None,
        max_examples=500,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow],
    )
    settings.load_profile(os.environ.get("TILTRL_HYPOTHESIS_PROFILE", "tiltrl"))


@pytest.fixture(scope="session", autouse=True)
def _sb3_log_dir(tmp_path_factory: pytest.TempPathFactory) -> None:
    """stable-baselines3 makes a ``/tmp/SB3-<time>`` folder on every ``learn`` without a logger
    (even at ``verbose=0``); point it at pytest's temporary directory instead."""
    os.environ["SB3_LOGDIR"] = str(tmp_path_factory.mktemp("sb3_logs"))


@pytest.fixture
def rng() -> np.random.Generator:
    """A freshly seeded generator per test (fixed seed)."""
    return np.random.default_rng(20240611)
