"""recalibrate_batchnorm: exact population statistics, checked against NumPy layer by layer."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from model_helpers import randomize_bn, two_bn_stack

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.recalibration import RecalibrationReport, recalibrate_batchnorm
from keras_bn_tools.rewrite import batchnorm_layers

EPS = 1e-3  # Keras's default BN epsilon


def _np(variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def _bn_numpy(layer, h):
    """Inference-mode BN in float64 with the layer's (new) statistics."""
    return (h - _np(layer.moving_mean)) / np.sqrt(_np(layer.moving_variance) + layer.epsilon) * _np(
        layer.gamma
    ) + _np(layer.beta)


def _assert_population(layer, h, rtol=1e-4, conditioning=1.0):
    """The layer's statistics are h's mean and population variance.

    `conditioning` scales the absolute tolerance for an input computed through
    an earlier BN layer: its float32 round-off is amplified by up to
    1 / sqrt(epsilon) where a feature's variance is (near) zero.
    """
    h = np.asarray(h, np.float64)
    scale = np.abs(h).max() + 1.0
    atol = 1e-6 * conditioning
    np.testing.assert_allclose(_np(layer.moving_mean), h.mean(axis=0), rtol=rtol, atol=atol * scale)
    np.testing.assert_allclose(
        _np(layer.moving_variance), h.var(axis=0), rtol=rtol, atol=atol * scale**2
    )


_STACK = {}


@pytest.fixture(autouse=True)
def _fresh_stack():
    _STACK.clear()
    yield
    _STACK.clear()


@pytest.mark.backend_agnostic
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(2, 70), st.just(3)),
        elements=st.floats(-50, 50, width=32),
    ),
    batch_size=st.integers(1, 80),
    seed=st.integers(0, 2**16),
)
def test_two_stacked_bn_layers_match_numpy_layer_by_layer(x, batch_size, seed):
    if "model" not in _STACK:
        _STACK["model"] = two_bn_stack()
    model = _STACK["model"]
    rng = np.random.default_rng(seed)
    randomize_bn(model, rng)
    d1, bn1, d2, bn2 = (model.get_layer(n) for n in ("d1", "bn1", "d2", "bn2"))
    before = [w.copy() for w in model.get_weights()]
    trainable = [keras.ops.convert_to_numpy(w).copy() for w in model.trainable_weights]

    report = recalibrate_batchnorm(model, x, batch_size=batch_size)

    w1, b1 = (_np(w) for w in d1.weights)
    h1 = np.maximum(x.astype(np.float64) @ w1 + b1, 0.0)
    _assert_population(bn1, h1)
    w2, b2 = (_np(w) for w in d2.weights)
    h2 = _bn_numpy(bn1, h1) @ w2 + b2  # uses BN1's *new* statistics
    _assert_population(bn2, h2, conditioning=1 / np.sqrt(EPS))

    # Trainable weights are bit-identical; only the moving statistics changed.
    for old, new in zip(trainable, model.trainable_weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))
    statistics = {id(v) for layer in (bn1, bn2) for v in (layer.moving_mean, layer.moving_variance)}
    for old, variable in zip(before, model.weights, strict=True):
        if id(variable) not in statistics:
            np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(variable))
    assert list(report) == ["bn1", "bn2"]
    assert report.num_samples == len(x)
    assert report.num_batches == -(-len(x) // batch_size)


@pytest.mark.backend_agnostic
def test_variance_is_stable_for_large_offsets():
    rng = np.random.default_rng(0)
    x = (1e4 + rng.normal(size=(1000, 2)) * [1.0, 0.01]).astype("float32")
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])
    recalibrate_batchnorm(model, x, batch_size=7)
    exact = x.astype(np.float64)
    np.testing.assert_allclose(_np(bn.moving_mean), exact.mean(axis=0), rtol=1e-7)
    np.testing.assert_allclose(_np(bn.moving_variance), exact.var(axis=0), rtol=1e-5)


def _data_forms(x, y):
    import tensorflow as tf

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return -(-len(x) // 10)

        def __getitem__(self, index):
            return x[index * 10 : (index + 1) * 10], y[index * 10 : (index + 1) * 10]

    return {
        "array": x,
        "(x, y)": (x, y),
        "(x, y, w)": (x, y, np.ones(len(x))),
        "dataset": tf.data.Dataset.from_tensor_slices((x, y)).batch(9),
        "pydataset": Batches(),
        "generator": (x[i : i + 6] for i in range(0, len(x), 6)),
        "list of batches": [(x[i : i + 8], y[i : i + 8]) for i in range(0, len(x), 8)],
    }


def test_every_data_form_gives_the_same_statistics():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(47, 3)).astype("float32") * 2 + 1
    y = rng.normal(size=(47, 1)).astype("float32")
    model = two_bn_stack()
    results = {}
    for name, data in _data_forms(x, y).items():
        if name == "list of batches":
            data = iter(data)
        recalibrate_batchnorm(model, data, batch_size=5)
        results[name] = [
            _np(v) for layer in batchnorm_layers(model) for v in layer.non_trainable_weights
        ]
    for name, values in results.items():
        for got, want in zip(values, results["array"], strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.backend_agnostic
def test_num_batches_limits_the_samples_used():
    x = np.arange(60, dtype="float32").reshape(30, 2)
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])
    report = recalibrate_batchnorm(model, x, num_batches=2, batch_size=8)
    np.testing.assert_allclose(_np(bn.moving_mean), x[:16].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(_np(bn.moving_variance), x[:16].var(axis=0), rtol=1e-5)
    assert (report.num_batches, report.num_samples) == (2, 16)


class _SwappedOrder(keras.Model):
    """Declares bn_late before bn_early but calls bn_early first."""

    def __init__(self):
        super().__init__()
        self.bn_late = keras.layers.BatchNormalization(name="bn_late")
        self.dense = keras.layers.Dense(3, name="dense")
        self.bn_early = keras.layers.BatchNormalization(name="bn_early")

    def call(self, x, training=None):
        return self.bn_late(self.dense(self.bn_early(x, training=training)), training=training)


@pytest.mark.backend_agnostic
def test_layers_are_recalibrated_in_call_order_not_declaration_order():
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(40, 2)) * 3 + 5).astype("float32")
    model = _SwappedOrder()
    model(x[:2])
    randomize_bn(model, rng)
    report = recalibrate_batchnorm(model, x, batch_size=16)
    assert list(report) == ["bn_early", "bn_late"]
    _assert_population(model.bn_early, x)
    kernel, bias = (_np(w) for w in model.dense.weights)
    _assert_population(
        model.bn_late, _bn_numpy(model.bn_early, x.astype(np.float64)) @ kernel + bias
    )


@pytest.mark.backend_agnostic
def test_nested_shared_and_masked_layers():
    rng = np.random.default_rng(3)
    # A BN shared by two branches gets the statistics of both inputs together.
    shared = keras.layers.BatchNormalization(name="shared")
    inner = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, name="inner_dense"), shared])
    inputs = keras.Input((2,))
    twice = keras.layers.Add()([inner(inputs), shared(inputs)])
    model = keras.Model(inputs, twice)
    x = rng.normal(size=(33, 2)).astype("float32")
    report = recalibrate_batchnorm(model, x, batch_size=10)
    kernel, bias = (_np(w) for w in model.get_layer(inner.name).layers[0].weights)
    _assert_population(shared, np.concatenate([x @ kernel + bias, x]))
    assert report["shared"]["num_values"] == 66

    # Masked time steps are left out, as the BN layer itself does in training.
    seq = keras.Sequential(
        [keras.Input((5, 2)), keras.layers.Masking(0.0), keras.layers.BatchNormalization(name="m")]
    )
    xs = rng.normal(size=(12, 5, 2)).astype("float32") + 4
    xs[:, 3:] = 0.0
    recalibrate_batchnorm(seq, xs, batch_size=5)
    _assert_population(seq.get_layer("m"), xs[:, :3].reshape(-1, 2))


@pytest.mark.backend_agnostic
def test_debiased_momentum_layer_continues_from_the_new_statistics():
    bn = MomentumBatchNormalization(momentum=0.9, debias=True)
    model = keras.Sequential([keras.Input((2,)), bn, keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    rng = np.random.default_rng(4)
    x = (rng.normal(size=(64, 2)) * 2 + 3).astype("float32")
    model.fit(x, np.ones(64), epochs=1, batch_size=16, verbose=0)
    recalibrate_batchnorm(model, x)
    _assert_population(bn, x)
    # The debiased average goes on as if the new statistics had been its value all along:
    # raw EMA = new * (1 - P) with P = 0.9**4 after four steps; one more step with batch b
    # publishes (0.9 * new * (1 - P) + 0.1 * b) / (1 - 0.9 * P).
    batch = x[:16]
    model.fit(batch, np.ones(16), epochs=1, batch_size=16, shuffle=False, verbose=0)
    product = 0.9**4
    expected = (0.9 * x.mean(axis=0) * (1 - product) + 0.1 * batch.mean(axis=0)) / (
        1 - 0.9 * product
    )
    np.testing.assert_allclose(_np(bn.moving_mean), expected, rtol=1e-5)


@pytest.mark.backend_agnostic
def test_renorm_layers_keep_moving_stddev_consistent():
    bn = keras.layers.BatchNormalization(renorm=True)
    model = keras.Sequential([keras.Input((2,)), bn])
    x = np.random.default_rng(5).normal(size=(20, 2)).astype("float32") * 3
    recalibrate_batchnorm(model, x)
    np.testing.assert_allclose(
        _np(bn.moving_stddev), np.sqrt(x.astype(np.float64).var(axis=0) + bn.epsilon), rtol=1e-5
    )


class _FailsOnThirdPass:
    """Re-iterable data whose third pass (the second BN layer's) breaks."""

    def __init__(self, x):
        self.x, self.passes = x, 0

    def __iter__(self):
        self.passes += 1
        if self.passes == 3:
            raise OSError("disk gone")
        return iter([self.x[:10], self.x[10:]])


@pytest.mark.backend_agnostic
def test_a_failure_restores_every_statistic():
    model = two_bn_stack()
    randomize_bn(model, np.random.default_rng(6))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    with pytest.raises(OSError, match="disk gone"):
        recalibrate_batchnorm(model, _FailsOnThirdPass(np.ones((20, 3), "float32")))
    for old, new in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


@pytest.mark.backend_agnostic
def test_report_contents_and_table():
    model = two_bn_stack()
    rng = np.random.default_rng(7)
    randomize_bn(model, rng)
    old_mean = _np(model.get_layer("bn1").moving_mean)
    report = recalibrate_batchnorm(model, rng.normal(size=(30, 3)).astype("float32"))
    assert isinstance(report, RecalibrationReport)
    entry = report["bn1"]
    np.testing.assert_array_equal(entry["old_mean"], old_mean)
    np.testing.assert_allclose(
        entry["new_mean"], _np(model.get_layer("bn1").moving_mean), rtol=1e-6
    )
    assert entry["mean_max_abs_change"] == pytest.approx(np.abs(entry["new_mean"] - old_mean).max())
    assert entry["num_values"] == 30
    text = str(report)
    assert "30 samples in 1 batches" in text
    assert "max|dmean|/std" in text and "bn1" in text and "bn2" in text
    assert len(text.splitlines()) == 5  # title, header, rule, two layers


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("data", "kwargs", "error", "match"),
    [
        (np.zeros((0, 3), "float32"), {}, ValueError, "0 samples"),
        (iter([]), {}, ValueError, "no samples"),
        ((np.zeros((0, 3)), np.zeros(0)), {}, ValueError, "0 samples"),
        (np.ones((4, 3)), {"num_batches": 0}, ValueError, "num_batches"),
        (np.ones((4, 3)), {"batch_size": 0}, ValueError, "batch_size"),
        (np.ones((4, 3)), {"batch_size": 2.5}, TypeError, "batch_size"),
        (np.float32(5), {}, ValueError, "batch dimension"),
        (5, {}, TypeError, "must be a NumPy array"),
        (object(), {}, TypeError, "must be a NumPy array"),
    ],
)
def test_bad_inputs(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        recalibrate_batchnorm(two_bn_stack(), data, **kwargs)


@pytest.mark.backend_agnostic
def test_a_model_without_bn_is_an_error():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="no batch normalization layer"):
        recalibrate_batchnorm(model, np.ones((4, 2)))


# ------------------------------------------------------- issue 16: nothing silently wrong


def _single_bn_model():
    bn = keras.layers.BatchNormalization(name="bn")
    return keras.Sequential([keras.Input((2,)), bn]), bn


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("count", [2, 3, 4])
def test_a_list_of_arrays_is_a_list_of_batches(count):
    # Item 1: a list was read as (x, y): two batches used only the first, three a third
    # of the data, four raised a misleading error.
    rng = np.random.default_rng(8)
    batches = [rng.normal(i, 1.0 + i, size=(5 + i, 2)).astype("float32") for i in range(count)]
    model, bn = _single_bn_model()
    report = recalibrate_batchnorm(model, batches)
    everything = np.concatenate(batches).astype(np.float64)
    np.testing.assert_allclose(_np(bn.moving_mean), everything.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_np(bn.moving_variance), everything.var(0), rtol=1e-5)
    assert (report.num_batches, report.num_samples) == (count, len(everything))


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("method", ["exact", "single_pass"])
def test_non_finite_batches_are_skipped_counted_and_warned_about(method):
    # Item 2: one NaN wrote NaN moving statistics without a word.
    rng = np.random.default_rng(9)
    x = rng.normal(size=(30, 2)).astype("float32")
    x[12, 1] = np.nan
    x[25, 0] = np.inf
    model, bn = _single_bn_model()
    with pytest.warns(UserWarning, match="2 of 3 batches had non-finite"):
        report = recalibrate_batchnorm(model, x, batch_size=10, method=method)
    kept = x[:10].astype(np.float64)
    np.testing.assert_allclose(_np(bn.moving_mean), kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(_np(bn.moving_variance), kept.var(0), rtol=1e-5)
    assert report.num_skipped_batches == 2 and report["bn"]["skipped_batches"] == 2
    assert report["bn"]["num_values"] == 10
    assert "2 non-finite skipped" in str(report)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("method", ["exact", "single_pass"])
def test_data_without_a_finite_batch_is_an_error_and_changes_nothing(method):
    model, bn = _single_bn_model()
    x = np.full((8, 2), np.nan, "float32")
    with pytest.raises(ValueError, match="no finite, unmasked values"):
        recalibrate_batchnorm(model, x, method=method)
    np.testing.assert_array_equal(_np(bn.moving_mean), 0.0)
    np.testing.assert_array_equal(_np(bn.moving_variance), 1.0)


@pytest.mark.backend_agnostic
def test_an_endless_generator_without_num_batches_is_refused(monkeypatch):
    # Item 14: it hung (caching forever) without a word.
    from keras_bn_tools.recalibration import BatchSource

    monkeypatch.setattr(BatchSource, "max_uncounted_batches", 20)

    def endless():
        while True:
            yield np.ones((2, 2), "float32")

    model, _ = _single_bn_model()
    with pytest.raises(ValueError, match="`num_batches`"):
        recalibrate_batchnorm(model, endless())
    report = recalibrate_batchnorm(model, endless(), num_batches=30)
    assert report.num_batches == 30


def test_endless_and_unbatched_tf_datasets_are_refused_with_a_hint():
    tf = pytest.importorskip("tensorflow")
    model, _ = _single_bn_model()
    x = np.ones((6, 2), "float32")
    with pytest.raises(ValueError, match=r"endless tf\.data\.Dataset.*`num_batches`"):
        recalibrate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x).repeat())
    with pytest.raises(ValueError, match=r"unbatched.*shape \(2,\).*\.batch\(batch_size\)"):
        recalibrate_batchnorm(model, tf.data.Dataset.from_tensor_slices(x))
    report = recalibrate_batchnorm(
        model, tf.data.Dataset.from_tensor_slices(x).repeat().batch(3), num_batches=2
    )
    assert report.num_samples == 6


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "fast"}, ValueError, r"`method` must be one of \['exact', 'single_pass'\]"),
        ({"method": None}, TypeError, "`method`"),
    ],
)
def test_bad_method(kwargs, error, match):
    with pytest.raises(error, match=match):
        recalibrate_batchnorm(two_bn_stack(), np.ones((4, 3)), **kwargs)


@pytest.mark.backend_agnostic
def test_a_model_that_is_not_a_model_is_refused():
    with pytest.raises(TypeError, match=r"`model` must be a keras\.Model"):
        recalibrate_batchnorm(keras.layers.BatchNormalization(), np.ones((4, 3)))


@pytest.mark.backend_agnostic
def test_sequential_models_reuse_each_bn_input_with_identical_results(monkeypatch):
    # Exact recalibration of a flat Sequential starts each pass from the previous BN
    # layer's kept inputs; the statistics are the very ones of full passes.
    from keras_bn_tools.recalibration import passes

    rng = np.random.default_rng(10)
    x = (rng.normal(size=(37, 4, 3)) * 2 + 1).astype("float32")
    x[::3, 2:] = 0.0  # masked time steps

    def build():
        keras.utils.set_random_seed(3)
        return keras.Sequential(
            [
                keras.Input((4, 3)),
                keras.layers.Masking(0.0),
                keras.layers.Dense(5, activation="relu"),
                keras.layers.BatchNormalization(),
                keras.layers.Dropout(0.5),
                keras.layers.Dense(4),
                MomentumBatchNormalization(debias=True),
                keras.layers.Dense(3, activation="tanh"),
                keras.layers.BatchNormalization(),
            ]
        )

    results = {}
    for budget in (passes.MAX_CACHE_BYTES, 0):  # 0: no cache, every pass from the data
        monkeypatch.setattr(passes, "MAX_CACHE_BYTES", budget)
        model = build()
        calls = []
        dense = model.layers[1]  # run once per pass without the cache

        def counted(*args, _original=dense.call, _calls=calls, **kwargs):
            _calls.append(1)
            return _original(*args, **kwargs)

        monkeypatch.setattr(dense, "call", counted)
        report = recalibrate_batchnorm(model, x, batch_size=8)
        results[budget] = [
            _np(v) for layer in batchnorm_layers(model) for v in layer.non_trainable_weights
        ]
        assert report.num_batches == 5 and report.num_samples == 37
        # probe + first pass with the cache; probe + one pass per BN layer without it
        assert len(calls) == (1 + 5 if budget else 1 + 3 * 5)
    for cached, full in zip(results[passes.MAX_CACHE_BYTES], results[0], strict=True):
        np.testing.assert_array_equal(cached, full)
