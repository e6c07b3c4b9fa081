"""`keras-bn-tools sigmoid-mlp` and `keras-bn-tools small-batch`: the experiments' files."""

from __future__ import annotations

import pytest

import keras_bn_tools_cli as cli
from keras_bn_tools.studies.experiments import DEFAULT_SEEDS, EXPERIMENTS, experiment_runner
from keras_bn_tools.studies.registry import BUILTIN


def test_every_experiment_is_a_builtin_protocol_with_a_runner():
    assert set(EXPERIMENTS) <= set(BUILTIN) and set(DEFAULT_SEEDS) == set(EXPERIMENTS)
    for name in EXPERIMENTS:
        assert callable(experiment_runner(name))
    with pytest.raises(KeyError, match="circles"):
        experiment_runner("circles")


def test_small_batch_command_writes_the_study_and_its_own_files(tmp_path, capsys):
    out = tmp_path / "sb"
    argv = ["small-batch", "--configs", "gn-b32", "bn-b32", "--epochs", "1", "--out", str(out),
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    names = {p.name for p in out.iterdir()}
    assert {
        "results.json",
        "table.md",
        "small_batch.md",
        "small_batch.json",
        "small_batch.png",
    } <= names
    printed = capsys.readouterr()
    assert "| gn |" in printed.out and "| bn |" in printed.out
    assert "2 runs in" in printed.err


def test_experiment_option_errors_exit_nonzero_naming_the_problem(tmp_path, capsys):
    argv = ["small-batch", "--configs", "bn-b2", "--batch-size", "8", "--out", str(tmp_path / "a"),
            "--no-progress"]  # fmt: skip
    assert cli.main(argv) != 0
    assert "batch size per config" in capsys.readouterr().err
    argv = ["sigmoid-mlp", "--engine", "compiled", "--out", str(tmp_path / "b"), "--no-progress"]
    assert cli.main(argv) != 0
    assert "engine='fit'" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
