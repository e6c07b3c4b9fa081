"""MomentumBatchNormalization against the package's own property-testing kit."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.testing import assert_normalizes, batches, bn_configs

fewer_on_jax = settings(max_examples=3) if keras.backend.backend() == "jax" else (lambda f: f)


@pytest.mark.backend_agnostic
@fewer_on_jax
@given(config=bn_configs(include_ghost=True), x=batches())
def test_normalizes_in_training_and_inference_for_any_config(config, x):
    layer = MomentumBatchNormalization(**config)
    assert_normalizes(layer, x, training=True)
    out = assert_normalizes(layer, x, training=False)
    assert np.all(np.isfinite(out))
