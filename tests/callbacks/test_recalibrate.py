"""RecalibrateBatchNorm: precise BN as a callback, on the circles study's BN-after model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.callbacks import RecalibrateBatchNorm
from keras_bn_tools.recalibration import recalibrate_batchnorm
from keras_bn_tools.rewrite import batchnorm_layers


class _TestAccuracyAtTrainEnd(keras.callbacks.Callback):
    """Listed before RecalibrateBatchNorm: sees the model just before recalibration."""

    def __init__(self, test_x, test_y):
        super().__init__()
        self.data, self.accuracy = (test_x, test_y), None

    def on_train_end(self, logs=None):
        self.accuracy = self.model.evaluate(*self.data, verbose=0, return_dict=True)["accuracy"]


@pytest.mark.backend_agnostic
def test_recalibration_at_train_end_does_not_lower_circles_test_accuracy(circles, circles_model):
    (x, y), (test_x, test_y) = circles
    before = _TestAccuracyAtTrainEnd(test_x, test_y)
    callback = RecalibrateBatchNorm((x, y))
    circles_model.fit(x, y, epochs=5, batch_size=32, verbose=0, callbacks=[before, callback])
    _, after = circles_model.evaluate(test_x, test_y, verbose=0)
    # After 5 epochs the momentum-0.99 averages still lag far behind the weights (inference
    # accuracy near chance); the exact statistics give the accuracy the weights deserve.
    assert after >= before.accuracy
    assert after >= 0.8
    assert len(callback.reports) == 1 and callback.report is callback.reports[0]
    assert callback.report["batch_normalization"]["num_values"] == 500
    # The recalibrated statistics are the exact ones: doing it again moves nothing.
    again = recalibrate_batchnorm(circles_model, x)
    assert again["batch_normalization"]["mean_max_shift_in_std"] < 1e-5


@pytest.mark.backend_agnostic
def test_epoch_end_recalibrates_every_epoch_and_keeps_a_generators_batches(circles):
    (x, y), _ = circles
    model = keras.Sequential(
        [
            keras.Input((2,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer="sgd", loss="binary_crossentropy")
    generator = (x[i : i + 100] for i in range(0, 500, 100))  # read once, replayed each epoch
    callback = RecalibrateBatchNorm(generator, num_batches=3, when="epoch_end")
    model.fit(x, y, epochs=3, verbose=0, callbacks=[callback])
    assert len(callback.reports) == 3
    assert all(report.num_samples == 300 for report in callback.reports)
    bn = batchnorm_layers(model)[0]
    hidden = keras.ops.convert_to_numpy(model.layers[0](x[:300]))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(bn.moving_mean), hidden.mean(axis=0), rtol=1e-5, atol=1e-6
    )


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"when": "batch_end"}, ValueError, r"\['train_end', 'epoch_end'\]"),
        ({"num_batches": 0}, ValueError, "num_batches"),
        ({"batch_size": -1}, ValueError, "batch_size"),
    ],
)
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        RecalibrateBatchNorm(np.ones((4, 2)), **kwargs)


@pytest.mark.backend_agnostic
def test_empty_data_fails_at_construction():
    with pytest.raises(ValueError, match="0 samples"):
        RecalibrateBatchNorm((np.zeros((0, 2)), np.zeros(0)))


@pytest.mark.backend_agnostic
def test_a_model_without_bn_fails_before_training():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    kernel = keras.ops.convert_to_numpy(model.layers[0].kernel).copy()
    with pytest.raises(ValueError, match="no batch normalization layer"):
        model.fit(
            np.ones((4, 2)),
            np.ones(4),
            verbose=0,
            callbacks=[RecalibrateBatchNorm(np.ones((4, 2)))],
        )
    np.testing.assert_array_equal(kernel, keras.ops.convert_to_numpy(model.layers[0].kernel))
