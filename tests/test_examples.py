"""The example scripts run top to bottom (with short settings) and print their results."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

# (script, short arguments, text every run must print)
CASES = [
    ("circles_tutorial.py", ["--epochs", "2"], ["no BN", "BN after ReLU", "BN before ReLU"]),
    (
        "circles_extensions.py",
        ["--seeds", "1", "--epochs", "2"],
        ["bn-after-no-affine", "bn-after-momentum0", "bn-input", "bn-after-debiased"],
    ),
    ("cnn_bn.py", ["--epochs", "1"], ["none", "after", "before", "0 BN layers left"]),
    ("lstm_bn.py", ["--epochs", "1"], ["none", "after", "before"]),
]


@pytest.mark.parametrize(("script", "args", "expected"), CASES, ids=[c[0] for c in CASES])
def test_example_runs_and_reports_every_model(script, args, expected, tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{script} failed:\n{result.stdout}\n{result.stderr[-3000:]}"
    for text in expected:
        assert text in result.stdout, f"{script} did not print {text!r}:\n{result.stdout}"
