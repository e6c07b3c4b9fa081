"""`python -m keras_bn_tools` is the `keras-bn-tools` command, run after the package imports."""

from __future__ import annotations

import subprocess
import sys

import keras_bn_tools_cli


def test_main_module_runs_the_console_scripts_main():
    import keras_bn_tools.__main__ as main_module

    assert main_module.main is keras_bn_tools_cli.main


def test_python_m_package_and_python_m_cli_answer_alike():
    answers = []
    for module in ("keras_bn_tools", "keras_bn_tools_cli"):
        result = subprocess.run(
            [sys.executable, "-m", module, "--version"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        answers.append(result.stdout)
    assert answers[0] == answers[1]
    assert answers[0].strip()
