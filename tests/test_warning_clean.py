"""Projects that turn warnings into errors can use the package (issue 26).

`keras.ops.convert_to_numpy(variable)` makes NumPy 2 emit a DeprecationWarning
(`__array__ implementation doesn't accept a copy keyword`) from inside Keras, so
the suite's module filters (pyproject.toml) cannot see it: these tests turn every
DeprecationWarning into an error, wherever it is raised, around the package's
own code paths.
"""

from __future__ import annotations

import warnings

import keras
import numpy as np
import pytest

from keras_bn_tools import convert_batchnorm, recalibrate_batchnorm
from keras_bn_tools.callbacks import MovingStatsTracker, RecalibrateBatchNorm
from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.ops import to_numpy

DEPRECATIONS = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def _data(rows: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 4)).astype("float32")
    return x, (x[:, :1] > 0).astype("float32")


def _model() -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8)(inputs)
    hidden = keras.layers.BatchNormalization()(hidden)
    outputs = keras.layers.Dense(1, activation="sigmoid")(keras.layers.ReLU()(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    return model


def _deprecations_as_errors():
    context = warnings.catch_warnings()
    context.__enter__()
    for category in DEPRECATIONS:
        warnings.simplefilter("error", category)
    return context


@pytest.mark.backend_agnostic
def test_keras_still_warns_on_variables_so_the_package_converts_them_itself():
    """What `ops.to_numpy` works around. If this starts failing, Keras (or NumPy) fixed
    it on this backend and `keras.ops.convert_to_numpy` would do again."""
    variable = keras.Variable(np.arange(3, dtype="float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        got = to_numpy(variable)
    assert isinstance(got, np.ndarray) and got.tolist() == [0.0, 1.0, 2.0]
    got[0] = 5.0  # a copy: the variable is untouched
    assert to_numpy(variable).tolist() == [0.0, 1.0, 2.0]
    if keras.backend.backend() in ("tensorflow", "torch"):
        with pytest.warns(DeprecationWarning, match="copy keyword"):
            keras.ops.convert_to_numpy(variable)


@pytest.mark.backend_agnostic
def test_tracker_recalibration_and_conversion_raise_no_deprecation():
    x, y = _data()
    model = _model()
    context = _deprecations_as_errors()
    try:
        tracker = MovingStatsTracker(every=2)
        callback = RecalibrateBatchNorm(x, batch_size=16)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[tracker, callback])
        exact = recalibrate_batchnorm(model, x, batch_size=16)
        single = recalibrate_batchnorm(model, x, batch_size=16, method="single_pass")
        converted = convert_batchnorm(model, MomentumBatchNormalization)
        back = convert_batchnorm(converted, keras.layers.BatchNormalization)
    finally:
        context.__exit__(None, None, None)
    # Outside: Keras's own `predict` warns on PyTorch (its convert_to_numpy of outputs).
    prediction = back.predict(x, verbose=0)
    assert len(tracker.steps) == 1 + 8 // 2 and tracker.steps[-1] == 8
    assert len(exact) == len(single) == 1 and exact.num_samples == single.num_samples == 64
    np.testing.assert_allclose(prediction, model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


@pytest.mark.backend_agnostic
def test_the_testing_kit_raises_no_deprecation():
    """`keras_bn_tools.testing` runs inside users' test suites, often with -W error."""
    from keras_bn_tools.testing import assert_moving_statistics, assert_normalizes

    x = np.random.default_rng(1).normal(size=(16, 3)).astype("float32")
    batches = [x[:8], x[8:]]
    context = _deprecations_as_errors()
    try:
        for layer in (keras.layers.BatchNormalization(), MomentumBatchNormalization(momentum=None)):
            assert_normalizes(layer, x)
            assert_moving_statistics(layer, batches)
    finally:
        context.__exit__(None, None, None)
