"""MovingStatsTracker: what it records, when, on disk, and its errors."""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools.callbacks import MovingStatsLog, MovingStatsTracker
from keras_bn_tools.callbacks.moving_stats import HEADER_FILE, RECORDS_FILE
from keras_bn_tools.rewrite import batchnorm_layers

STATS = ("moving_mean", "moving_variance", "gamma", "beta")


def _values(layer: keras.layers.Layer) -> dict[str, np.ndarray]:
    return {s: keras.ops.convert_to_numpy(getattr(layer, s)) for s in STATS}


def _sync(model: keras.Model) -> None:
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


class HandReader(keras.callbacks.Callback):
    """Reads every BN statistic itself at train begin and after every batch."""

    def on_train_begin(self, logs=None):
        self.step = 0
        self.records = [(0, {layer.name: _values(layer) for layer in batchnorm_layers(self.model)})]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        _sync(self.model)
        self.records.append(
            (self.step, {layer.name: _values(layer) for layer in batchnorm_layers(self.model)})
        )


def _two_bn_functional() -> keras.Model:
    """Functional model with a nested Sequential; the inner BN has no gamma."""
    inner = keras.Sequential(
        [keras.Input((6,)), keras.layers.Dense(4), keras.layers.BatchNormalization(scale=False)],
        name="inner",
    )
    inputs = keras.Input((3,))
    h = keras.layers.Dense(6, activation="relu")(inputs)
    h = keras.layers.BatchNormalization(name="outer_bn")(h)
    outputs = keras.layers.Dense(1)(inner(h))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    return model


@pytest.mark.backend_agnostic
def test_epoch_records_start_with_the_initial_snapshot(circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker()
    circles_model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[tracker])

    (name,) = tracker.history
    np.testing.assert_array_equal(tracker.steps, [0, 16, 32, 48])  # 500 rows / 32 = 16 batches
    np.testing.assert_array_equal(tracker.epochs, [0, 1, 2, 3])
    record = tracker.history[name]
    assert set(record) == set(STATS)
    assert record["moving_mean"].shape == (4, 50)
    # The initial snapshot holds the initializers' values ...
    np.testing.assert_array_equal(record["moving_mean"][0], np.zeros(50))
    np.testing.assert_array_equal(record["moving_variance"][0], np.ones(50))
    np.testing.assert_array_equal(record["gamma"][0], np.ones(50))
    # ... and the last record is the layer's state after training, exactly.
    layer = batchnorm_layers(circles_model)[0]
    for stat, value in _values(layer).items():
        np.testing.assert_array_equal(record[stat][-1], value)
    assert not np.array_equal(record["moving_mean"][1], record["moving_mean"][0])


_SHARED: dict[str, keras.Model] = {}


@pytest.mark.backend_agnostic
@given(
    every=st.one_of(st.just("batch"), st.integers(1, 9)),  # "batch" is every=1
    epochs=st.integers(1, 2),
    batch_size=st.sampled_from([16, 32]),
)
def test_every_n_batches_matches_hand_read_values(every, epochs, batch_size):
    # One model for every example: fit() reuses its compiled step per batch size.
    if "model" not in _SHARED:
        _SHARED["model"] = _two_bn_functional()
    model = _SHARED["model"]
    period = 1 if every == "batch" else every
    x = np.random.default_rng(period).normal(size=(64, 3)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    tracker = MovingStatsTracker(every=every)
    reader = HandReader()
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[tracker, reader])

    steps_per_epoch = 64 // batch_size
    expected = [(step, values) for step, values in reader.records if step % period == 0]
    np.testing.assert_array_equal(tracker.steps, [step for step, _ in expected])
    # A per-batch record is taken before its epoch completes (on_epoch_end).
    np.testing.assert_array_equal(
        tracker.epochs, [max(step - 1, 0) // steps_per_epoch for step, _ in expected]
    )
    for key, layer in zip(tracker.history, batchnorm_layers(model), strict=True):
        for stat, recorded in tracker.history[key].items():
            np.testing.assert_array_equal(
                recorded, np.stack([values[layer.name][stat] for _, values in expected])
            )


@pytest.fixture(autouse=True)
def _forget_shared_model():
    _SHARED.clear()
    yield
    _SHARED.clear()


@pytest.mark.backend_agnostic
def test_nested_layers_missing_stats_and_layer_filter():
    model = _two_bn_functional()
    inner_bn = batchnorm_layers(model)[1].name
    x = np.ones((8, 3), "float32")
    tracker = MovingStatsTracker()
    model.fit(x, x[:, :1], epochs=1, verbose=0, callbacks=[tracker])
    assert list(tracker.history) == ["outer_bn", inner_bn]
    assert set(tracker.history["outer_bn"]) == set(STATS)
    assert set(tracker.history[inner_bn]) == {"moving_mean", "moving_variance", "beta"}  # no gamma

    only = MovingStatsTracker(layers=[inner_bn], stats=("gamma", "beta"))
    model.fit(x, x[:, :1], epochs=2, verbose=0, callbacks=[only])
    assert list(only.history) == [inner_bn]
    assert set(only.history[inner_bn]) == {"beta"}
    assert only.history[inner_bn]["beta"].shape == (3, 4)


@pytest.mark.backend_agnostic
def test_same_named_layers_in_nested_models_get_distinct_keys():
    def block(name):
        return keras.Sequential(
            [keras.Input((2,)), keras.layers.BatchNormalization(name="bn")], name=name
        )

    inputs = keras.Input((2,))
    model = keras.Model(inputs, block("b")(block("a")(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    tracker = MovingStatsTracker(layers=["bn#2"], stats="moving_mean")
    model.fit(np.ones((4, 2)), np.ones((4, 2)), verbose=0, callbacks=[tracker])
    assert list(tracker.history) == ["bn#2"]


@pytest.mark.backend_agnostic
def test_unknown_layer_names_are_reported_with_the_available_ones(circles_model):
    tracker = MovingStatsTracker(layers=["nope", "batch_normalization"])
    with pytest.raises(ValueError, match=r"\['nope'\].*BN layers are \['batch_normalization"):
        circles_model.fit(np.ones((4, 2)), np.ones(4), verbose=0, callbacks=[tracker])


@pytest.mark.backend_agnostic
def test_a_model_without_bn_is_an_error():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with pytest.raises(ValueError, match="no batch normalization layer"):
        model.fit(np.ones((4, 2)), np.ones(4), verbose=0, callbacks=[MovingStatsTracker()])


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every": 0}, ValueError, "positive integer"),
        ({"every": -3}, ValueError, "positive integer"),
        ({"every": 1.5}, TypeError, "positive integer"),
        ({"every": True}, TypeError, "positive integer"),
        ({"every": "step"}, ValueError, '"epoch", "batch" or a positive integer'),
        ({"stats": ("moving_mean", "mean")}, ValueError, r"\['mean'\].*allowed stats"),
        ({"stats": ()}, ValueError, "at least one"),
        ({"layers": []}, ValueError, "at least one"),
        ({"layers": [3]}, TypeError, "layer names"),
        ({"log_dir": 3}, TypeError, "log_dir"),
        ({"tensorboard": "yes"}, TypeError, "`tensorboard` must be None, True or False"),
        ({"tensorboard": True}, ValueError, "needs a `log_dir`"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        MovingStatsTracker(**kwargs)


class _FileProbe(keras.callbacks.Callback):
    """After each batch: the records file grew by exactly one record per new record."""

    def __init__(self, tracker, log_dir):
        super().__init__()
        self.tracker, self.path = tracker, os.path.join(log_dir, RECORDS_FILE)
        self.sizes = []

    def on_train_batch_end(self, batch, logs=None):
        self.sizes.append((len(self.tracker.log), os.path.getsize(self.path)))


@pytest.mark.backend_agnostic
def test_log_dir_appends_fixed_size_records_and_loads_back(tmp_path, circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker(every=3, log_dir=tmp_path / "logs")
    probe = _FileProbe(tracker, tmp_path / "logs")
    circles_model.fit(x, y, epochs=2, verbose=0, callbacks=[tracker, probe])

    itemsize = tracker.log.dtype.itemsize
    assert itemsize == 16 + 4 * 50 * 4  # step, epoch, 4 stats x 50 float32
    # Every record costs the same bytes on disk, from the first to the last.
    assert all(size == count * itemsize for count, size in probe.sizes)
    assert probe.sizes[-1][0] == len(tracker.steps) == 1 + 32 // 3

    loaded = MovingStatsTracker.load(tmp_path / "logs")
    assert isinstance(loaded, MovingStatsLog)
    assert loaded.every == 3 and loaded.layers == list(tracker.history)
    np.testing.assert_array_equal(loaded.steps, tracker.steps)
    np.testing.assert_array_equal(loaded.epochs, tracker.epochs)
    for name, stats in tracker.history.items():
        for stat, values in stats.items():
            np.testing.assert_array_equal(loaded.history[name][stat], values)

    # A torn last record (a crash mid-write) is ignored.
    with open(tmp_path / "logs" / RECORDS_FILE, "ab") as f:
        f.write(b"\x01" * (itemsize // 2))
    assert len(MovingStatsTracker.load(tmp_path / "logs")) == len(tracker.steps)


class _Boom(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if self.model.history.epoch == [0] and batch == 5:  # mid-way through epoch 2
            raise RuntimeError("boom")


@pytest.mark.backend_agnostic
def test_records_taken_before_a_crash_are_on_disk(tmp_path, circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker(every=2, log_dir=tmp_path)
    assert tracker.async_safe is False
    with pytest.raises(RuntimeError, match="boom"):
        circles_model.fit(x, y, epochs=3, verbose=0, callbacks=[tracker, _Boom()])
    assert tracker._file.mode == "ab"  # opened for appending, still open after the crash
    loaded = MovingStatsTracker.load(tmp_path)
    # steps 0, 2, ..., 16 in epoch 1, then 18, 20, 22 before batch 5 (step 22) raised
    np.testing.assert_array_equal(loaded.steps, np.arange(0, 23, 2))
    np.testing.assert_array_equal(
        loaded.history["batch_normalization"]["gamma"],
        tracker.history["batch_normalization"]["gamma"],
    )


def _bytes(directory) -> dict[str, bytes]:
    return {name: (directory / name).read_bytes() for name in (HEADER_FILE, RECORDS_FILE)}


@pytest.mark.backend_agnostic
def test_a_second_fit_appends_in_memory_and_on_disk(tmp_path, circles, circles_model):
    """Issue 26: a second fit used to replace the first one's records (5 became 3)."""
    (x, y), _ = circles
    tracker = MovingStatsTracker(log_dir=tmp_path)
    circles_model.fit(x, y, epochs=2, verbose=0, callbacks=[tracker])
    first = tracker.history
    assert tracker.history is first  # no new record: the same views
    with pytest.raises(ValueError):
        first["batch_normalization"]["gamma"][0, 0] = 5.0  # read-only views
    gamma = first["batch_normalization"]["gamma"].copy()
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    # 16 steps an epoch; the second fit starts where the first ended and counts on.
    np.testing.assert_array_equal(tracker.steps, [0, 16, 32, 32, 48])
    np.testing.assert_array_equal(tracker.epochs, [0, 1, 2, 2, 3])
    history = tracker.history["batch_normalization"]["gamma"]
    np.testing.assert_array_equal(history[:3], gamma)  # the first fit's records, kept
    np.testing.assert_array_equal(history[3], gamma[-1])  # nothing changed in between
    assert not np.array_equal(history[4], history[3])
    loaded = MovingStatsTracker.load(tmp_path)
    np.testing.assert_array_equal(loaded.steps, tracker.steps)
    np.testing.assert_array_equal(loaded.history["batch_normalization"]["gamma"], history)


@pytest.mark.backend_agnostic
def test_without_log_dir_a_second_fit_appends_too(circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker(every=8)
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    np.testing.assert_array_equal(tracker.steps, [0, 8, 16, 16, 24, 32])
    np.testing.assert_array_equal(tracker.epochs, [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="another layout"):  # another model: refused
        other = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization(name="bn")])
        other.compile(optimizer="sgd", loss="mse")
        other.fit(x, np.zeros((len(x), 2)), verbose=0, callbacks=[tracker])
    assert len(tracker.steps) == 6


@pytest.mark.backend_agnostic
def test_a_new_tracker_continues_the_log_in_its_log_dir(tmp_path, circles, circles_model):
    """Another process (a new tracker) on the same `log_dir`: the log goes on, its last
    torn record (a crash mid-write) cut off so that the new records line up."""
    (x, y), _ = circles
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[MovingStatsTracker(log_dir=tmp_path)])
    itemsize = MovingStatsTracker.load(tmp_path).dtype.itemsize
    with open(tmp_path / RECORDS_FILE, "ab") as f:
        f.write(b"\x01" * (itemsize // 2))
    tracker = MovingStatsTracker(log_dir=tmp_path)
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    np.testing.assert_array_equal(tracker.steps, [0, 16, 16, 32])
    assert (tmp_path / RECORDS_FILE).stat().st_size == 4 * itemsize
    loaded = MovingStatsTracker.load(tmp_path)
    np.testing.assert_array_equal(loaded.epochs, [0, 1, 1, 2])
    for stat, values in tracker.history["batch_normalization"].items():
        np.testing.assert_array_equal(loaded.history["batch_normalization"][stat], values)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    "kwargs", [{"stats": ("gamma",)}, {"every": 4}, {"layers": ("batch_normalization",)}]
)
def test_a_log_of_another_layout_is_refused_and_left_as_it_was(
    kwargs, tmp_path, circles, circles_model
):
    (x, y), _ = circles
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[MovingStatsTracker(log_dir=tmp_path)])
    before = _bytes(tmp_path)
    tracker = MovingStatsTracker(log_dir=tmp_path, **kwargs)
    if "layers" in kwargs:  # the same layout, asked for by name: it continues
        circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
        assert len(MovingStatsTracker.load(tmp_path)) == 4
        return
    with pytest.raises(ValueError, match=r"another layout.*never overwrites it: use a new"):
        circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    assert _bytes(tmp_path) == before


@pytest.mark.backend_agnostic
def test_records_without_their_header_are_not_overwritten(tmp_path, circles, circles_model):
    (x, y), _ = circles
    (tmp_path / RECORDS_FILE).write_bytes(b"someone else's")
    with pytest.raises(ValueError, match="without its header"):
        circles_model.fit(x, y, verbose=0, callbacks=[MovingStatsTracker(log_dir=tmp_path)])
    assert (tmp_path / RECORDS_FILE).read_bytes() == b"someone else's"


def test_steps_per_execution_records_at_the_first_step_past_each_multiple():
    # Not backend_agnostic: Keras's PyTorch trainer refuses steps_per_execution > 1.
    model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=2)
    tracker = MovingStatsTracker(every=3)
    model.fit(np.ones((64, 2)), np.ones((64, 2)), batch_size=4, verbose=0, callbacks=[tracker])
    np.testing.assert_array_equal(tracker.steps, [0, 4, 6, 10, 12, 16])


@pytest.mark.backend_agnostic
def test_load_rejects_a_directory_without_a_log(tmp_path):
    with pytest.raises(FileNotFoundError, match=HEADER_FILE):
        MovingStatsTracker.load(tmp_path)
    (tmp_path / HEADER_FILE).write_text('{"format": "something else"}')
    (tmp_path / RECORDS_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="not a"):
        MovingStatsTracker.load(tmp_path)
