"""Small helpers shared by the test modules (not collected: no `test_` prefix)."""

from __future__ import annotations

import keras


def all_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """Every layer of `model`, nested models and their layers included."""
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found
