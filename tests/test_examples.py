"""The examples run as a reader would run them."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_minimal_cifar_trains_and_tests(data_dir):
    args = [sys.executable, str(REPO / "examples" / "minimal_cifar.py"), "--iterations", "100",
            "--data-dir", str(data_dir)]  # fmt: skip
    out = subprocess.run(args, capture_output=True, text=True, timeout=600, check=True).stdout
    assert "iteration 100: loss" in out
    error = float(re.search(r"test error ([\d.]+)% after 100 iterations", out)[1])
    assert error < 85  # 100 steps of the recipe learn: chance is 90%
