"""`clone_model`: a Sequential or functional model rebuilt layer by layer under a `Policy`."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from keras_bn_tools._keras_compat import (
    graph_input_name,
    ignoring_keras_variable_array_warning,
    is_functional,
)
from keras_bn_tools.graph.find import batchnorm_of
from keras_bn_tools.graph.policies import DROP, Policy, Replacement, copy_layer, rewrap

__all__ = ["check_graph_model", "clone_model"]


def _assign(layer: Any, values: list[np.ndarray], source: Any) -> None:
    if values and not layer.built:
        layer.build_from_config(source.get_build_config())
    if len(values) != len(layer.weights):
        raise ValueError(
            f"Cannot give layer {layer.name!r} ({type(layer).__name__}) {len(values)} weight "
            f"arrays: it has {len(layer.weights)} weights."
        )
    layer.set_weights(
        [np.asarray(v).astype(w.dtype) for v, w in zip(values, layer.weights, strict=True)]
    )


def check_graph_model(model: Any) -> None:
    """Raise TypeError unless `model` is a Sequential or functional model."""
    if not is_functional(model):
        raise TypeError(
            f"`model` must be a keras.Sequential or a functional keras.Model, got "
            f"{model!r} ({type(model).__name__}). Subclassed models have no layer graph "
            f"to rewrite."
        )


def clone_model(model: keras.Model, policy: Policy | None = None) -> keras.Model:
    """A copy of `model` in which `policy` decides what becomes of each layer.

    See the module docstring for what every clone keeps and how to write a
    policy. `model` is left untouched.

    Args:
        model: a `keras.Sequential` (built or not) or functional `keras.Model`.
        policy: a `Policy`; default keeps a copy of every layer.

    Returns:
        The new model.

    Raises:
        TypeError: if `model` is not a Sequential or functional model.
        ValueError: if a kept layer cannot be copied from its config.
    """
    check_graph_model(model)
    with ignoring_keras_variable_array_warning():  # Keras's compile config: see its docstring
        return _Cloner(policy or Policy()).clone(model)


def _input_like(tensor: Any) -> Any:
    """A new `keras.Input` like `tensor`, with the name of the `InputLayer` that made it."""
    return keras.Input(
        batch_shape=tensor.shape,
        dtype=tensor.dtype,
        sparse=tensor.sparse,
        name=graph_input_name(tensor),
    )


class _Cloner:
    """One `clone_model` call: new layers, weights to assign once built, per-model policies."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # (new layer, arrays, original): assigned once the new graph has built the layer.
        self.weights: list[tuple[Any, list[np.ndarray], Any]] = []

    def clone(self, model: keras.Model) -> keras.Model:
        new_model = self._clone_graph(model, self.policy)
        for layer, values, source in self.weights:
            _assign(layer, values, source)
        return new_model

    def _clone_graph(self, model: keras.Model, policy: Policy) -> keras.Model:
        if isinstance(model, keras.Sequential):
            new_model = self._clone_sequential(model, policy)
        else:
            new_model = self._clone_functional(model, policy)
        if model.compiled and not new_model.compiled:
            new_model.compile_from_config(model.get_compile_config())
        if not model.trainable:
            new_model.trainable = False
        return new_model

    def _new_layer(self, layer: Any, policy: Policy) -> Any:
        """`layer`'s counterpart in the new model: a layer or `DROP`."""
        if is_functional(layer):
            return self._clone_graph(layer, policy.nested(layer))
        choice = policy.replace(layer)
        if choice is None and isinstance(layer, keras.layers.Wrapper):
            inner = batchnorm_of(layer.layer)
            if inner is layer.layer:
                replaced = policy.replace(inner)
                if replaced is not None and replaced is not DROP:
                    return rewrap(layer, self._unpack(replaced, inner))
        if choice is DROP:
            return DROP
        if choice is None:
            choice = copy_layer(layer)
        return self._unpack(choice, layer)

    def _unpack(self, choice: Any, source: Any) -> Any:
        if isinstance(choice, Replacement):
            if choice.weights is not None:
                self.weights.append((choice.layer, choice.weights, source))
            return choice.layer
        return choice

    def _clone_sequential(self, model: keras.Sequential, policy: Policy) -> keras.Sequential:
        layers: list[keras.layers.Layer] = []
        for layer in model.layers:
            new = self._new_layer(layer, policy)
            if new is not DROP:
                layers.append(new)
            layers += policy.insert_after(layer)
        try:
            spec = model.inputs[0]
        except AttributeError:  # not built: the copy is not built either
            head = []
        else:
            head = [_input_like(spec)]
        return keras.Sequential(head + layers, name=model.name)

    def _clone_functional(self, model: keras.Model, policy: Policy) -> keras.Model:
        originals: dict[int, Any] = {}
        made: dict[int, Any] = {}
        added: dict[int, list[keras.layers.Layer]] = {}

        def clone_function(layer: Any) -> Any:
            if id(layer) not in made:
                new = self._new_layer(layer, policy)
                made[id(layer)] = new
                if new is not DROP:
                    originals[id(new)] = layer
            return made[id(layer)]

        def call_function(layer: Any, *args: Any, **kwargs: Any) -> Any:
            if layer is DROP:
                # The call's single input tensor (a mask argument aside) passes through.
                return next(
                    value
                    for value in keras.tree.flatten((args, kwargs))
                    if isinstance(value, keras.KerasTensor)
                )
            outputs = layer(*args, **kwargs)
            original = originals[id(layer)]
            if id(original) not in added:  # once per layer: a shared layer shares its extras
                added[id(original)] = policy.insert_after(original)
            sequence = isinstance(outputs, list | tuple)
            x = outputs[0] if sequence else outputs  # an RNN's states get nothing inserted
            for extra in added[id(original)]:
                x = extra(x)
            return type(outputs)([x, *outputs[1:]]) if sequence else x

        return keras.models.clone_model(
            model,
            input_tensors=keras.tree.map_structure(_input_like, model.input),
            clone_function=clone_function,
            call_function=call_function,
        )
