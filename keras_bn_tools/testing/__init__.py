"""Property-testing kit for batch normalization layers and BN models.

Hypothesis strategies and assertions to put in your own tests:

- `batches(...)`: input arrays with at least two rows and non-degenerate
  variance in every feature;
- `bn_configs(...)`: keyword arguments for `MomentumBatchNormalization` or
  `keras.layers.BatchNormalization`;
- `stack_specs(...)`: keyword arguments for `build_mlp`, `build_cnn`,
  `build_lstm`;
- `reference_batchnorm(x, ...)`: a float64 NumPy reference;
- `assert_normalizes(layer, x)`: the layer's output against the reference;
- `assert_moving_statistics(layer, batches)`: the moving-average updates.

Example:
    ```python
    import keras
    from hypothesis import given, settings
    from keras_bn_tools.testing import assert_normalizes, batches

    @settings(max_examples=5, deadline=None)
    @given(batches())
    def test_keras_bn(x):
        assert_normalizes(keras.layers.BatchNormalization(), x)

    test_keras_bn()
    ```
"""

from __future__ import annotations

from keras_bn_tools.testing.assertions import (
    assert_moving_statistics,
    assert_normalizes,
    default_tolerances,
)
from keras_bn_tools.testing.reference import (
    reference_batchnorm,
    reference_moments,
    reference_moving_statistics,
)
from keras_bn_tools.testing.strategies import MIN_RELATIVE_STD, batches, bn_configs, stack_specs

__all__ = [
    "MIN_RELATIVE_STD",
    "assert_moving_statistics",
    "assert_normalizes",
    "batches",
    "bn_configs",
    "default_tolerances",
    "reference_batchnorm",
    "reference_moments",
    "reference_moving_statistics",
    "stack_specs",
]
