"""Batch renorm's clipping limits as schedulable state (issue 24 item 3, layer side)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.ops import to_numpy


class CountingBN(MomentumBatchNormalization):
    """Counts Python executions of `call`: one per trace in a compiled step."""

    traces = 0

    def call(self, inputs, training=None, mask=None):
        type(self).traces += 1
        return super().call(inputs, training=training, mask=mask)


def test_renorm_clipping_reads_the_limits_in_force_as_floats():
    layer = MomentumBatchNormalization(renorm=True, renorm_clipping={"rmax": 2, "rmin": 0.5})
    assert layer.renorm_clipping == {"rmax": 2.0, "dmax": math.inf, "rmin": 0.5}
    assert all(type(v) is float for v in layer.renorm_clipping.values())
    layer.build((None, 3))
    layer.set_renorm_clipping(dmax=1)
    assert layer.renorm_clipping == {"rmax": 2.0, "dmax": 1.0, "rmin": 0.5}
    layer.renorm_clipping = {"rmax": 3.0}
    assert layer.renorm_clipping["rmax"] == 3.0
    # get_config keeps the form of the constructor argument, with the limits in force.
    assert layer.get_config()["renorm_clipping"] == {"rmax": 3.0, "rmin": 0.5, "dmax": 1.0}
    # The limits are state outside the weights, never saved as weights.
    keras_renorm = keras.layers.BatchNormalization(renorm=True)
    keras_renorm.build((None, 3))
    assert [v.name for v in layer.weights] == [v.name for v in keras_renorm.weights]
    assert {"renorm_rmax", "renorm_dmax"} <= {v.name for v in layer.variables}
    assert not {"renorm_rmax", "renorm_dmax"} & {v.name for v in layer.weights}
    assert MomentumBatchNormalization().renorm_clipping is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rmax": 0.5}, ValueError, r"`rmax` must be finite and >= 1"),
        ({"rmax": math.inf}, ValueError, "`rmax`"),
        ({"dmax": -0.1}, ValueError, r"`dmax` must be finite and >= 0"),
        ({"dmax": math.nan}, ValueError, "`dmax`"),
        ({"rmax": "2"}, TypeError, "`rmax` must be a float"),
        ({"dmax": True}, TypeError, "`dmax`"),
    ],
)
def test_bad_limits_are_refused_and_change_nothing(kwargs, error, match):
    layer = MomentumBatchNormalization(renorm=True, renorm_clipping={"rmax": 2.0, "dmax": 1.0})
    layer.build((None, 2))
    with pytest.raises(error, match=match):
        layer.set_renorm_clipping(**kwargs)
    assert layer.renorm_clipping == {"rmax": 2.0, "dmax": 1.0}
    assert float(to_numpy(layer._clipping.variables["rmax"])) == 2.0


def test_clipping_without_renorm_and_bad_assignments_are_refused():
    with pytest.raises(ValueError, match="`renorm=False`"):
        MomentumBatchNormalization().set_renorm_clipping(rmax=2.0)
    layer = MomentumBatchNormalization(renorm=True)
    with pytest.raises(TypeError, match="'rmax' and 'dmax'"):
        layer.renorm_clipping = {"rmin": 0.5}
    with pytest.raises(TypeError, match="`renorm_clipping`"):
        layer.renorm_clipping = None


@pytest.mark.backend_agnostic
def test_assigned_limits_change_a_compiled_training_step_without_retracing():
    if keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("counting traces needs a compiled backend (TensorFlow, JAX)")
    CountingBN.traces = 0
    # renorm_momentum=1: the renorm statistics stay at (0, 1), so r = std and d = mean
    # of the batch, and each step's output depends on the clipping only.
    layer = CountingBN(renorm=True, renorm_momentum=1.0, renorm_clipping={"rmax": 1, "dmax": 0})
    model = keras.Sequential([keras.Input((3,)), layer])
    model.compile(keras.optimizers.SGD(0.0), "mse")
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=(16, 3)).astype("float32")
    y = np.zeros((16, 3), "float32")
    plain = float(model.train_on_batch(x, y))  # r=1, d=0: plain BN, loss ~ 1
    traces = CountingBN.traces
    assert traces >= 1
    layer.set_renorm_clipping(rmax=3.0, dmax=5.0)
    relaxed = float(model.train_on_batch(x, y))  # r ~ 2, d ~ 3: (2 x_hat + 3)^2 ~ 13
    layer.renorm_clipping = {"rmax": 1.0, "dmax": 0.0}
    again = float(model.train_on_batch(x, y))
    assert CountingBN.traces == traces  # no retracing
    assert plain == pytest.approx(1.0, rel=1e-2)
    assert relaxed > 5.0
    assert again == pytest.approx(plain, rel=1e-6)
