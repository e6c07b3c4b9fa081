"""The `keras-bn-tools` command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from keras_bn_tools import cli

ROOT = Path(__file__).resolve().parents[1]


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# --------------------------------------------------------------------------- help


@pytest.mark.backend_agnostic
def test_help(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "circles" in out and "summary" in out
    assert cli.main(["circles", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--configs", "--seeds", "--epochs", "--engine", "--out", "--batch-size"):
        assert option in out
    assert "bn-after-no-affine" in out  # the configs are listed


@pytest.mark.backend_agnostic
def test_version(capsys):
    from keras_bn_tools import __version__

    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.backend_agnostic
def test_help_runs_as_a_module_without_tensorflow():
    code = (
        "import sys\n"
        "from keras_bn_tools.cli import main\n"
        "status = main(['circles', '--help'])\n"
        "assert 'tensorflow' not in sys.modules, 'help imported TensorFlow'\n"
        "sys.exit(status)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "--configs" in result.stdout


def test_console_script():
    script = shutil.which("keras-bn-tools")
    if script is None:
        pytest.skip("the package is not installed (pip install -e .)")
    result = subprocess.run(
        [script, "circles", "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0 and "--engine" in result.stdout


# --------------------------------------------------------------------------- bad input


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["circles", "--configs", "nope"], "invalid choice: 'nope'"),
        (["circles", "--configs"], "expected at least one argument"),
        (["circles", "--seeds", "0"], "--seeds: expected a positive integer"),
        (["circles", "--seeds", "-3"], "--seeds"),
        (["circles", "--seeds", "ten"], "--seeds: expected a positive integer, got 'ten'"),
        (["circles", "--epochs", "0"], "--epochs: expected a positive integer"),
        (["circles", "--batch-size", "0"], "--batch-size"),
        (["circles", "--engine", "eager"], "invalid choice: 'eager'"),
        (["circles", "--first-seed", "-1"], "--first-seed"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_arguments_exit_2(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert _listing(tmp_path) == []  # nothing written


@pytest.mark.backend_agnostic
def test_out_is_a_file(capsys, tmp_path):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert cli.main(["circles", "--epochs", "1", "--seeds", "1", "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a directory" in err and "Traceback" not in err
    assert target.read_text() == "keep me"
    assert _listing(tmp_path) == ["results.txt"]


@pytest.mark.backend_agnostic
def test_out_below_a_file(capsys, tmp_path):
    (tmp_path / "file").write_text("")
    out = tmp_path / "file" / "sub" / "dir"
    assert cli.main(["circles", "--epochs", "1", "--seeds", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err
    assert _listing(tmp_path) == ["file"]


@pytest.mark.backend_agnostic
@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anywhere"
)
def test_out_not_writable(capsys, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        argv = ["circles", "--epochs", "1", "--seeds", "1", "--out", str(locked / "x")]
        assert cli.main(argv) == 2
        assert "not writable" in capsys.readouterr().err
    finally:
        locked.chmod(0o700)


# --------------------------------------------------------------------------- runs


def test_circles_writes_everything(capsys, tmp_path):
    out = tmp_path / "new" / "results"
    argv = [
        "circles",
        "--configs", "baseline", "bn-after",
        "--seeds", "2",
        "--epochs", "3",
        "--out", str(out),
        "--moving-stats",
        "--no-progress",
    ]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| config | runs |")
    assert "| baseline | 2 |" in captured.out and "| bn-after | 2 |" in captured.out
    assert "Wrote" in captured.err and "Traceback" not in captured.err
    assert _listing(out) == [
        "accuracy.png",
        "loss.png",
        "moving_stats.npz",
        "results.csv",
        "results.json",
        "runs.csv",
        "table.md",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["configs"] == ["baseline", "bn-after"] and results["seeds"] == [0, 1]
    assert results["epochs"] == 3 and results["engine"] == "compiled"
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2 * 2 * 3
    assert len((out / "runs.csv").read_text().splitlines()) == 1 + 2 * 2
    assert (out / "table.md").read_text().strip() == captured.out.strip()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert not [p for p in tmp_path.rglob(".keras-bn-tools-*")]  # no staging left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700


def test_existing_out_keeps_other_files(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "results.json").write_text("old")
    argv = ["circles", "--configs", "bn-before", "--seeds", "1", "--epochs", "2",
            "--out", str(tmp_path), "--no-progress", "--engine", "fit"]  # fmt: skip
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / "results.json").read_text())["engine"] == "fit"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_failed_run_writes_nothing(capsys, tmp_path, monkeypatch):
    import keras_bn_tools.studies.circles as circles

    def explode(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(circles, "run_study", explode)
    out = tmp_path / "out"
    argv = ["circles", "--seeds", "1", "--epochs", "1", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "Traceback" not in err
    assert _listing(tmp_path) == []


def test_summary(capsys):
    assert cli.main(["summary", "--configs", "bn-before", "bn-input"]) == 0
    out = capsys.readouterr().out
    assert "bn-before:" in out and "bn-input:" in out
    assert out.count("batch_normalization") >= 3 and "activation" in out
