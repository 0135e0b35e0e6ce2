"""The one text progress bar of the library's long loops (stderr, no dependency)."""

from __future__ import annotations

import sys

__all__ = ["bar", "progress_line"]


def bar(done: float, total: float, width: int = 30) -> str:
    """``[#####.....]`` filled in proportion to ``done / total``."""
    filled = int(width * done / max(total, 1))
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def progress_line(done: int, total: int, label: str) -> None:
    """Redraw ``[###...] done/total label`` in place; end the line at ``done == total``."""
    sys.stderr.write(f"\r{bar(done, total)} {done}/{total} {label}   ")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()
