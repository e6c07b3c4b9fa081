"""`examples/regression_and_one_hot.py`: a regression protocol with a config that sets its
own batch size, and a one-hot softmax protocol, run by `run_study`."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from keras_bn_tools.studies import Config

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "regression_and_one_hot.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("regression_and_one_hot", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.backend_agnostic
def test_the_protocols_say_what_they_score(example):
    assert (example.FRIEDMAN.metric, example.FRIEDMAN.direction) == ("mae", "min")
    assert example.FRIEDMAN.configs["bn-batch-8"] == Config(
        "BN before each ReLU, batches of 8", batch_size=8
    )
    (_, train_y), (_, test_y) = example.WINE.load_data()
    assert train_y.shape[1] == 3 and set(np.unique(train_y)) == {0.0, 1.0}
    assert (train_y.sum(1) == 1).all() and len(test_y) == 59


@pytest.mark.backend_agnostic
def test_main_runs_both_studies(example, capsys):
    results = example.main(["--seeds", "1", "--epochs", "2"])
    friedman, wine = results["friedman"], results["wine"]
    assert friedman.metric == "mae" and friedman.mode == "min"
    assert [r.settings["batch_size"] for r in friedman.runs] == [32, 32, 8]
    assert wine.metric == "accuracy" and wine.metadata["metric_name"] == "categorical_accuracy"
    out = capsys.readouterr().out
    assert "| bn-batch-8 | 1 |" in out and "Config bn-batch-8: batch size 8." in out
    assert "| bn-input | 1 |" in out and "epochs to 90% test acc" in out
