"""MovingStatsTracker: log files it cannot trust or write, and models built by `fit` (issue 16)."""

from __future__ import annotations

import json
import os

import keras
import numpy as np
import pytest

from keras_bn_tools.callbacks import MovingStatsTracker
from keras_bn_tools.callbacks.moving_stats import HEADER_FILE, RECORDS_FILE


@pytest.fixture(scope="module")
def good_log(tmp_path_factory):
    """A real two-record log directory, written once for this module."""
    keras.backend.clear_session()
    log_dir = tmp_path_factory.mktemp("log")
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization(name="bn")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.ones((8, 3), "float32")
    model.fit(x, x, epochs=1, verbose=0, callbacks=[MovingStatsTracker(log_dir=log_dir)])
    header = json.loads((log_dir / HEADER_FILE).read_text())
    return log_dir, header, (log_dir / RECORDS_FILE).read_bytes()


def _write(tmp_path, header_text, records):
    (tmp_path / HEADER_FILE).write_text(header_text)
    (tmp_path / RECORDS_FILE).write_bytes(records)
    return tmp_path


@pytest.mark.backend_agnostic
def test_the_good_log_loads(good_log):
    log_dir, _, _ = good_log
    assert len(MovingStatsTracker.load(log_dir)) == 2


def _corrupt_headers(header):
    def edited(**changes):
        return json.dumps({**header, **changes})

    fields = header["fields"]
    wider = [*fields[:2], {**fields[2], "shape": [fields[2]["shape"][0] + 1]}, *fields[3:]]
    return [
        # Item 3: fields that disagree with record_bytes loaded garbage steps.
        (edited(fields=wider), "'record_bytes' is"),
        (edited(record_bytes=header["record_bytes"] + 4), "'record_bytes' is"),
        # Item 13: each of these gave a bare JSONDecodeError, KeyError, AttributeError
        # or TypeError.
        ('{"format": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got a list"),
        (edited(fields=None), "must be lists"),
        (json.dumps({k: v for k, v in header.items() if k != "fields"}), r"missing \['fields'\]"),
        (edited(fields=[*fields[:2], {**fields[2], "dtype": "<q8"}]), r"invalid 'dtype' '<q8'"),
        (edited(fields=[*fields[:2], {**fields[2], "shape": [-1]}]), "invalid 'shape'"),
        (edited(fields=[*fields[:2], "v0"]), r"`fields\[2\]` must be an object"),
        (edited(fields=fields[1:]), "must start with 'step' and 'epoch'"),
        (edited(layers=["other"]), r"name layers \['bn'\]"),
    ]


@pytest.mark.backend_agnostic
def test_a_corrupt_or_inconsistent_header_names_the_file_and_the_problem(tmp_path, good_log):
    _, header, records = good_log
    for text, match in _corrupt_headers(header):
        _write(tmp_path, text, records)
        with pytest.raises(ValueError, match=match) as caught:
            MovingStatsTracker.load(tmp_path)
        assert HEADER_FILE in str(caught.value)


@pytest.mark.backend_agnostic
def test_a_missing_records_file_is_an_error_not_an_empty_log(tmp_path, good_log):
    _, header, _ = good_log
    (tmp_path / HEADER_FILE).write_text(json.dumps(header))
    with pytest.raises(FileNotFoundError, match=f"{RECORDS_FILE} is missing"):
        MovingStatsTracker.load(tmp_path)


@pytest.mark.backend_agnostic
def test_log_dir_that_cannot_be_a_directory_fails_at_construction(tmp_path):
    # Item 11: these failed only when fit started, with an OSError not naming log_dir.
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(ValueError, match=r"`log_dir`=.*is an existing file"):
        MovingStatsTracker(log_dir=a_file)
    with pytest.raises(ValueError, match=r"`log_dir`=.*file\.txt' is a file, not a directory"):
        MovingStatsTracker(log_dir=a_file / "logs")
    with pytest.raises(ValueError, match="`log_dir` must be a non-empty path"):
        MovingStatsTracker(log_dir="")
    MovingStatsTracker(log_dir=tmp_path / "new" / "deeper")  # creatable: fine
    assert not (tmp_path / "new").exists()  # and nothing created before fit


@pytest.mark.backend_agnostic
def test_a_read_only_place_fails_at_construction(tmp_path, monkeypatch):
    # As on a read-only file system (where os.access denies writing, even to root).
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    with pytest.raises(ValueError, match=r"`log_dir`=.*not writable"):
        MovingStatsTracker(log_dir=tmp_path / "logs")


@pytest.mark.backend_agnostic
def test_a_log_dir_that_breaks_after_construction_names_log_dir(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
    model.compile(optimizer="sgd", loss="mse")
    tracker = MovingStatsTracker(log_dir=tmp_path / "logs")
    (tmp_path / "logs").write_text("now a file")  # the place changed before fit
    x = np.ones((4, 3), "float32")
    with pytest.raises(OSError, match="cannot write its log to `log_dir`="):
        model.fit(x, x, verbose=0, callbacks=[tracker])


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("every", ["epoch", 2])
def test_a_model_built_by_fit_is_recorded_once_built(every):
    # Item 12: a Sequential without keras.Input failed at train start on TensorFlow.
    model = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization(name="bn")])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(0).normal(size=(16, 2)).astype("float32")
    tracker = MovingStatsTracker(every=every)
    model.fit(x, np.ones((16, 3)), batch_size=4, epochs=2, verbose=0, callbacks=[tracker])
    layer = model.get_layer("bn")
    np.testing.assert_array_equal(
        tracker.history["bn"]["moving_mean"][-1], keras.ops.convert_to_numpy(layer.moving_mean)
    )
    built_at_start = keras.backend.backend() != "tensorflow"
    first = 0 if built_at_start else 1
    expected = {"epoch": [first, 4, 8], 2: [first, 2, 4, 6, 8]}[every]
    if every == 2 and not built_at_start:
        expected = [1, 2, 4, 6, 8]
    np.testing.assert_array_equal(tracker.steps, expected)


@pytest.mark.backend_agnostic
def test_bn_inside_time_distributed_is_tracked():
    # batchnorm_layers finds wrapped BN; the tracker records its statistics.
    bn = keras.layers.BatchNormalization(name="bn")
    model = keras.Sequential([keras.Input((3, 2)), keras.layers.TimeDistributed(bn)])
    model.compile(optimizer="sgd", loss="mse")
    x = np.random.default_rng(1).normal(4.0, 1.0, size=(8, 3, 2)).astype("float32")
    tracker = MovingStatsTracker()
    model.fit(x, x, batch_size=4, epochs=1, verbose=0, callbacks=[tracker])
    history = tracker.history["bn"]["moving_mean"]
    assert history.shape == (2, 2)
    np.testing.assert_array_equal(history[0], 0.0)
    np.testing.assert_array_equal(history[-1], keras.ops.convert_to_numpy(bn.moving_mean))
    assert (history[-1] > 0).all()
