"""Lazy access to matplotlib, the optional ``plot`` extra.

``import tiltrl`` (and ``import tiltrl.viz``) never imports matplotlib; each plotting
function calls :func:`require_matplotlib` first, which raises an :class:`ImportError`
naming the extra to install. Figures are built with :class:`matplotlib.figure.Figure`
directly (no pyplot state machine), so they work under any backend, ``Agg`` included,
and are displayed by Jupyter like any other figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["require_matplotlib", "new_figure", "save_figure"]

_INSTALL_HINT = "tiltrl plots need matplotlib: pip install tiltrl[plot]"


def require_matplotlib() -> Any:
    """Import and return :mod:`matplotlib`, or raise ImportError with the install hint."""
    try:
        import matplotlib
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(_INSTALL_HINT) from exc
    return matplotlib


def new_figure(figsize: tuple[float, float]) -> Any:
    """A fresh :class:`~matplotlib.figure.Figure` (not registered with pyplot)."""
    require_matplotlib()
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def save_figure(fig: Any, path: str | Path, *, dpi: int = 150) -> Path:
    """Write ``fig`` to ``path`` (parent folders are created); return the path."""
    out = Path(path)
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, bbox_inches="tight", facecolor="white")
    return out
