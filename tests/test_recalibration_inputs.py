"""recalibrate_batchnorm: `[x1, x2]` for a two-input model, a list of batches otherwise
(issue 26 item 7: the rule is decided by the model's number of inputs)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.callbacks import RecalibrateBatchNorm
from keras_bn_tools.recalibration import BatchSource, recalibrate_batchnorm

pytestmark = pytest.mark.backend_agnostic


def _np(variable) -> np.ndarray:
    return keras.ops.convert_to_numpy(variable).astype(np.float64)


def two_input_model():
    a, b = keras.Input((2,), name="a"), keras.Input((3,), name="b")
    bn_a = keras.layers.BatchNormalization(name="bn_a")(a)
    bn_b = keras.layers.BatchNormalization(name="bn_b")(b)
    out = keras.layers.Dense(1)(keras.layers.Concatenate()([bn_a, bn_b]))
    return keras.Model([a, b], out)


def data(rows=21, seed=0):
    rng = np.random.default_rng(seed)
    x1 = rng.normal(2.0, 3.0, size=(rows, 2)).astype("float32")
    x2 = rng.normal(-1.0, 0.5, size=(rows, 3)).astype("float32")
    return x1, x2


@pytest.mark.parametrize("method", ["exact", "single_pass"])
def test_a_list_of_inputs_for_a_two_input_model_is_read_as_fit_reads_it(method):
    model = two_input_model()
    x1, x2 = data()
    model.compile(optimizer="sgd", loss="mse")
    model.fit([x1, x2], np.zeros((21, 1)), epochs=1, batch_size=8, verbose=0)  # fit accepts it
    report = recalibrate_batchnorm(model, [x1, x2], batch_size=8, method=method)
    assert (report.num_batches, report.num_samples) == (3, 21)
    for name, x in (("bn_a", x1), ("bn_b", x2)):
        layer = model.get_layer(name)
        np.testing.assert_allclose(_np(layer.moving_mean), x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_np(layer.moving_variance), x.var(0), rtol=1e-5, atol=1e-5)


def test_a_list_of_batches_for_a_two_input_model_stays_a_list_of_batches():
    model = two_input_model()
    x1, x2 = data()
    # Each batch is `(x, y)` with `x = [x1, x2]`, as a generator for `fit` yields it.
    y = np.zeros((21, 1), "float32")
    batches = [([x1[:10], x2[:10]], y[:10]), ([x1[10:], x2[10:]], y[10:])]
    report = recalibrate_batchnorm(model, batches)
    assert (report.num_batches, report.num_samples) == (2, 21)
    np.testing.assert_allclose(_np(model.get_layer("bn_b").moving_mean), x2.mean(0), atol=1e-5)


def test_a_list_of_two_arrays_for_a_one_input_model_is_two_batches():
    x1, _ = data()
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])
    report = recalibrate_batchnorm(model, [x1[:5], x1[5:]])
    assert (report.num_batches, report.num_samples) == (2, 21)
    np.testing.assert_allclose(_np(bn.moving_variance), x1.var(0), rtol=1e-5)


def test_batch_source_reads_a_list_by_the_number_of_inputs():
    x1, x2 = data()
    as_inputs = BatchSource([x1, x2], batch_size=8, num_inputs=2)
    first = next(iter(as_inputs))
    assert isinstance(first, list) and [a.shape for a in first] == [(8, 2), (8, 3)]
    assert len(list(as_inputs)) == 3
    as_batches = BatchSource([x1, x1], batch_size=8, num_inputs=1)
    assert [b.shape for b in as_batches] == [(21, 2), (21, 2)]
    with pytest.raises(ValueError, match="same length"):
        BatchSource([x1, x2[:5]], num_inputs=2)


def test_the_callback_reads_a_list_of_inputs_for_its_model():
    model = two_input_model()
    model.compile(optimizer="sgd", loss="mse")
    x1, x2 = data()
    callback = RecalibrateBatchNorm([x1, x2])
    model.fit([x1, x2], np.zeros((21, 1)), epochs=1, verbose=0, callbacks=[callback])
    assert callback.report.num_samples == 21
    layer = model.get_layer("bn_a")
    np.testing.assert_allclose(_np(layer.moving_mean), x1.mean(0), rtol=1e-5, atol=1e-5)
