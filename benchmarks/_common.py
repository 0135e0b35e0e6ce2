"""Helpers shared by the benchmark scripts: the machine/code header and JSON cleaning.

The scripts run as ``python benchmarks/bench_*.py``, so this directory is on ``sys.path``.
"""

from __future__ import annotations

import hashlib
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent


def clean(x: Any) -> Any:
    """JSON-safe copy: numpy arrays and scalars to Python, non-finite floats to strings."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [clean(v) for v in x]
    if isinstance(x, np.ndarray):
        return clean(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return repr(x)
    return x


def environment() -> dict[str, Any]:
    """Versions, machine, date, git commit and a fingerprint of the measured sources (the
    code measured may be uncommitted)."""
    import scipy

    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    try:
        import tiltrl

        info["tiltrl"] = tiltrl.__version__
    except Exception as exc:  # report, do not crash the header
        info["tiltrl"] = f"import failed: {exc}"
    try:
        import numba

        info["numba"] = numba.__version__
    except ImportError:
        info["numba"] = None
    src = HERE.parent / "src" / "tiltrl"
    if src.is_dir():
        digest = hashlib.sha256()
        for f in sorted(src.rglob("*.py")):
            digest.update(f.relative_to(src).as_posix().encode() + b"\0" + f.read_bytes())
        info["tiltrl_source_sha256"] = digest.hexdigest()[:16]
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
            cwd=HERE, timeout=10,
        ).stdout.strip()
    except Exception:
        info["git_commit"] = None
    return info
