"""Core benchmark: credit assignment, then the turn loss (bench/core_credit.py, core_losses.py).

Both print JSON lines; this runs them one after the other with their default, paper-scale sizes
(64 trees × 22 rows for credit; 176 rows × 4096 tokens × 6 turns for the loss).

Usage: python bench/core.py
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    for script in ("core_credit.py", "core_losses.py"):
        sys.argv = [script]
        runpy.run_path(str(HERE / script), run_name="__main__")
