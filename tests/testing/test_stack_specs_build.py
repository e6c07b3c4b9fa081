"""Every spec `stack_specs` draws builds a working model with the package's builders."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from hypothesis import given, settings

from keras_bn_tools.testing import stack_specs


def _builder(kind: str):
    builders = pytest.importorskip(
        "keras_bn_tools.builders", reason="keras_bn_tools.builders is not in this checkout"
    )
    return getattr(builders, f"build_{kind}")


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("kind", "placements"),
    [("mlp", None), ("cnn", None), ("lstm", None), ("lstm", ("before",))],
    ids=["mlp", "cnn", "lstm", "lstm-recurrent-bn"],
)
def test_specs_build_models_that_run(kind, placements):
    build = _builder(kind)

    @settings(max_examples=5)
    @given(stack_specs(kind, placements))
    def check(spec):
        model = build(**spec)
        input_shape = model.inputs[0].shape[1:]
        x = np.random.default_rng(0).normal(size=(4, *input_shape)).astype("float32")
        y = keras.ops.convert_to_numpy(model(x, training=True))
        assert y.shape == (4, spec["output_units"])
        assert np.all(np.isfinite(y))

    check()
