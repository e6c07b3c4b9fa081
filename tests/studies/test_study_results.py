"""`RunResult` and `StudyResult`: statistics, table, JSON, CSV, plots (no training)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from keras_bn_tools.studies import RunResult, StudyResult
from keras_bn_tools.studies.results import METRICS

pytestmark = pytest.mark.backend_agnostic


def _run(config, seed, val_accuracy, train_accuracy=0.8):
    val = np.asarray(val_accuracy, dtype="float32")
    n = len(val)
    history = {
        "loss": np.linspace(0.7, 0.4, n).astype("float32"),
        "accuracy": np.linspace(0.5, 0.75, n).astype("float32"),
        "val_loss": np.linspace(0.7, 0.38, n).astype("float32"),
        "val_accuracy": val,
    }
    final = {"train_accuracy": train_accuracy, "train_loss": 0.4,
             "test_accuracy": float(val[-1]), "test_loss": 0.38}  # fmt: skip
    stats = {"bn": {"moving_mean": np.zeros((n, 3), "float32")}}
    return RunResult(config, seed, history, final=final, target=0.8, moving_stats=stats,
                     seconds=0.5, engine="fit")  # fmt: skip


def _study(**kwargs):
    runs = [
        _run("a", 0, [0.5, 0.81, 0.84], 0.83),
        _run("a", 1, [0.5, 0.7, 0.85], 0.84),
        _run("a", 2, [0.81, 0.8, 0.86], 0.85),
        _run("b", 0, [0.5, 0.6, 0.7], 0.7),
        _run("b", 1, [0.5, 0.6, 0.82], 0.71),
        _run("b", 2, [0.5, 0.6, 0.7], 0.72),
    ]
    settings = {"protocol": "toy", "configs": ("a", "b"), "seeds": range(3), "epochs": 3,
                "batch_size": 32, "engine": "fit", "shuffle": "epoch", "target": 0.8}  # fmt: skip
    return StudyResult(runs=runs, **{**settings, **kwargs})


def test_run_result_properties():
    run = _run("a", 0, [0.5, 0.79, 0.8, 0.9], 0.83)
    assert run.epochs == 4
    assert run.epochs_to_target == 3  # 1-based, first epoch >= 0.80
    assert run.epochs_to(0.95) is None
    assert run.final_test_accuracy == pytest.approx(0.9)
    assert run.final_train_accuracy == pytest.approx(0.83)
    assert run.last_epoch_accuracy == pytest.approx(0.75)


def test_summary_statistics():
    from scipy import stats

    summary = _study().summary()
    test = summary["a"]["test_accuracy"]
    values = np.array([0.84, 0.85, 0.86], dtype="float32").astype("float64")
    assert test["n"] == 3 and test["mean"] == pytest.approx(values.mean())
    assert test["sd"] == pytest.approx(values.std(ddof=1))
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert test["ci"] == pytest.approx([values.mean() - half, values.mean() + half])
    assert summary["a"]["epochs_to_target"] == {
        "n": 3, "reached": 3, "median": 2.0, "min": 1, "max": 3,
    }  # fmt: skip
    # b: only seed 1 reached the target (epoch 3); the median counts the others as slowest.
    assert summary["b"]["epochs_to_target"] == {
        "n": 3, "reached": 1, "median": None, "min": 3, "max": 3,
    }  # fmt: skip


def test_table_says_what_it_shows():
    table = _study().table()
    lines = table.splitlines()
    assert lines[0].startswith("| config | runs | train acc |")
    assert "95% CI" in lines[0] and "epochs to 80% test acc" in lines[0]
    row_a = next(line for line in lines if line.startswith("| a |"))
    assert "0.840 ± 0.010" in row_a and "0.850 ± 0.010" in row_a and "| 2 (1-3) |" in row_a
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert "| never (3; 2 of 3 never) |" in row_b
    assert "shuffle=epoch" in table and "engine=fit" in table and "seeds (0-2)" in table
    one = StudyResult("toy", [_run("a", 4, [0.5, 0.9])], ("a",), (4,), 2, 32, "fit")
    assert "n/a" in one.table()


def test_json_round_trip_records_shuffle_and_engine(tmp_path):
    study = _study(shuffle="once", engine="compiled")
    path = tmp_path / "results.json"
    study.to_json(path)
    data = json.loads(path.read_text())
    assert data["shuffle"] == "once" and data["engine"] == "compiled"
    assert data["protocol"] == "toy" and data["seeds"] == [0, 1, 2]
    assert data["runs"][0]["history"]["val_accuracy"] == [0.5, 0.81, 0.84]
    assert "moving_stats" not in data["runs"][0]
    assert data["summary"]["a"]["epochs_to_target"]["median"] == 2.0
    loaded = StudyResult.from_json(path)
    assert loaded.table() == study.table()
    study.to_json(path, moving_stats=True)
    loaded = StudyResult.from_json(path)
    assert loaded.runs[0].moving_stats["bn"]["moving_mean"].shape == (3, 3)
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write leaves no temporary file


def test_csv_files(tmp_path):
    study = _study()
    study.to_csv(tmp_path / "epochs.csv")
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 3 and list(rows[0]) == ["config", "seed", "epoch", *METRICS]
    assert rows[1]["config"] == "a" and rows[1]["epoch"] == "2"
    assert float(rows[1]["val_accuracy"]) == pytest.approx(0.81)
    study.to_csv(tmp_path / "runs.csv", per="run")
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["engine"] == "fit"
    assert rows[0]["epochs_to_target"] == "2" and rows[3]["epochs_to_target"] == ""
    with pytest.raises(ValueError, match="per"):
        study.to_csv(tmp_path / "x.csv", per="seed")


def test_plot_and_moving_stats_arrays(tmp_path):
    study = _study()
    figure = study.plot(tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000 and len(figure.axes) == 2
    study.plot(tmp_path / "loss.png", metrics=("loss", "val_loss"), band="minmax")
    assert (tmp_path / "loss.png").exists()
    with pytest.raises(ValueError, match="metrics"):
        study.plot(metrics=("f1",))
    arrays = study.moving_stats_arrays()
    assert len(arrays) == 6 and arrays["a/0/bn/moving_mean"].shape == (3, 3)
    with pytest.raises(KeyError, match="c"):
        study.runs_for("c")
