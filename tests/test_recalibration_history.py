"""After recalibration, a cumulative average (MomentumBatchNormalization(momentum=None))
continues from the recalibrated statistics: they count as the history of the batches
they were computed from (issue 26)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.recalibration import recalibrate_batchnorm

pytestmark = pytest.mark.backend_agnostic


def _np(value) -> np.ndarray:
    return keras.ops.convert_to_numpy(value).astype(np.float64)


@pytest.mark.parametrize("method", ["exact", "single_pass"])
def test_a_cumulative_average_continues_from_the_recalibrated_statistics(method):
    rng = np.random.default_rng(0)
    bn = MomentumBatchNormalization(momentum=None)
    model = keras.Sequential([keras.Input((3,)), bn])
    x = rng.normal(2.0, 3.0, size=(40, 3)).astype("float32")  # 4 batches of 10
    report = recalibrate_batchnorm(model, x, batch_size=10, method=method)
    assert report.num_batches == 4
    assert int(_np(bn.num_batches_tracked)) == 4
    recalibrated = _np(bn.moving_mean)
    np.testing.assert_allclose(recalibrated, x.astype(np.float64).mean(0), atol=1e-5)

    # One training batch of the same size: the cumulative mean of 5 equal batches.
    batch = rng.normal(-1.0, 1.0, size=(10, 3)).astype("float32")
    model(batch, training=True)
    expected = (4 * recalibrated + batch.astype(np.float64).mean(0)) / 5
    np.testing.assert_allclose(_np(bn.moving_mean), expected, rtol=1e-5, atol=1e-5)
    assert int(_np(bn.num_batches_tracked)) == 5


def test_skipped_batches_do_not_count_as_history():
    rng = np.random.default_rng(1)
    bn = MomentumBatchNormalization(momentum=None)
    model = keras.Sequential([keras.Input((2,)), bn])
    x = rng.normal(size=(30, 2)).astype("float32")
    x[15, 0] = np.nan  # the second of three batches
    with pytest.warns(UserWarning, match="non-finite"):
        recalibrate_batchnorm(model, x, batch_size=10)
    assert int(_np(bn.num_batches_tracked)) == 2


def test_an_exponential_average_is_unaffected_by_the_count():
    rng = np.random.default_rng(2)
    bn = MomentumBatchNormalization(momentum=0.9)
    model = keras.Sequential([keras.Input((2,)), bn])
    x = rng.normal(size=(30, 2)).astype("float32")
    recalibrate_batchnorm(model, x, batch_size=10)
    recalibrated = _np(bn.moving_mean)
    batch = rng.normal(size=(10, 2)).astype("float32")
    model(batch, training=True)
    expected = 0.9 * recalibrated + 0.1 * batch.astype(np.float64).mean(0)
    np.testing.assert_allclose(_np(bn.moving_mean), expected, rtol=1e-5, atol=1e-6)
