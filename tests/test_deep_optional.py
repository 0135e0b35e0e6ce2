"""The core package never imports torch (the ``deep`` extra is optional)."""

from __future__ import annotations

import subprocess
import sys


def test_core_import_does_not_import_torch() -> None:
    code = "import sys, tiltrl; assert 'torch' not in sys.modules, 'tiltrl imported torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
