"""The "your own model" example: a user's `Protocol` runs with `run_study` and on the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_bn_tools import batchnorm_layers
from keras_bn_tools.studies import Protocol

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "examples" / "own_protocol.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("own_protocol_example", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.backend_agnostic
def test_the_example_protocol_loads_and_builds(example):
    protocol = example.PROTOCOL
    assert isinstance(protocol, Protocol)
    (train_x, train_y), (test_x, _) = protocol.load_data()
    assert train_x.shape == (427, 30) and test_x.shape == (142, 30)
    assert set(np.unique(train_y)) == {0.0, 1.0}
    assert train_x.max() > 1000  # unscaled on purpose: areas are in the thousands
    for name in protocol.configs:
        model = protocol.build(name)
        assert model.built and not model.compiled and tuple(model.output_shape) == (None, 1)
        names = [layer.name for layer in batchnorm_layers(model)]
        assert names == (["input_bn"] if name == "bn-input" else [])
    standardized = protocol.build("standardized").layers[0]
    assert isinstance(standardized, keras.layers.Normalization)
    scaled = keras.ops.convert_to_numpy(standardized(train_x))
    np.testing.assert_allclose(scaled.mean(axis=0), 0.0, atol=1e-3)
    with pytest.raises(ValueError, match="Unknown config 'bn-output'"):
        protocol.build("bn-output")


@pytest.fixture(scope="module")
def study(example, tmp_path_factory):
    """The example's `main` (which calls `run_study`), 2 seeds x 2 epochs, and its files."""
    out = tmp_path_factory.mktemp("own_protocol")
    return example.main(["--seeds", "2", "--epochs", "2", "--out", str(out)]), out


@pytest.mark.backend_agnostic
def test_run_study_runs_the_users_protocol(example, study, capsys):
    result, out = study
    assert [(run.config, run.seed) for run in result.runs] == [
        (config, seed) for config in example.CONFIGS for seed in (0, 1)
    ]
    for run in result.runs:
        assert len(run.history["val_accuracy"]) == 2
        assert np.all(np.isfinite(run.history["loss"]))
        assert 0.0 <= run.final_test_accuracy <= 1.0
    assert set(result.runs_for("bn-input")[0].moving_stats) == {"input_bn"}
    assert result.runs_for("raw")[0].moving_stats == {}
    assert "bn-input" in result.table()
    saved = json.loads((out / "results.json").read_text())
    assert saved["protocol"] == "cancer" and (out / "curves.png").stat().st_size > 0


def test_the_command_line_runs_the_same_protocol(study, tmp_path):
    result, _ = study
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "keras_bn_tools", "study", "examples.own_protocol:PROTOCOL"]
    options = ["--seeds", "2", "--epochs", "2", "--out", str(tmp_path / "cli"), "--no-progress"]
    cli = subprocess.run(
        [*command, *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "bn-input" in cli.stdout
    from_cli = json.loads((tmp_path / "cli" / "results.json").read_text())
    assert from_cli["protocol"] == "cancer"
    # Same protocol, seeds and engine: the same numbers as `run_study` in this process.
    np.testing.assert_allclose(
        [run["final_test_accuracy"] for run in from_cli["runs"]],
        [run.final_test_accuracy for run in result.runs],
        atol=1e-6,
    )
