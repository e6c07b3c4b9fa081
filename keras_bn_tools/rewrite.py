"""Find and insert batch normalization layers in existing Keras models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from keras_bn_tools._keras_compat import (
    copy_lambda,
    graph_input_name,
    inbound_tensors,
    is_functional,
    producer,
)
from keras_bn_tools._model_utils import (
    NormalizationFactory,
    batchnorm_layers,
    is_linear,
    unique_name,
)
from keras_bn_tools._validation import check_bool
from keras_bn_tools.placement import Placement, parse_placement

# `batchnorm_layers` is re-exported from the shared model utilities.
__all__ = ["DEFAULT_LAYER_TYPES", "batchnorm_layers", "insert_batchnorm", "replace_layers"]

#: `replace(layer)` returns the layer's replacement (new, built, with its weights) or None.
Replacement = Callable[[keras.layers.Layer], "keras.layers.Layer | None"]

#: The layer types that `insert_batchnorm` puts BN at when `layer_types` is None.
DEFAULT_LAYER_TYPES: tuple[type[keras.layers.Layer], ...] = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.LSTM,
    keras.layers.GRU,
    keras.layers.SimpleRNN,
)


def insert_batchnorm(
    model: keras.Model,
    placement: Placement | str = "after",
    *,
    layer_types: type[keras.layers.Layer] | tuple[type[keras.layers.Layer], ...] | None = None,
    bn_layer: Callable[[], keras.layers.Layer] | None = None,
    skip_output: bool = True,
) -> keras.Model:
    """A copy of `model` with batch normalization at every layer of `layer_types`.

    The copy has the same kind as `model` (a `keras.Sequential` gives a
    `keras.Sequential`, a functional model a functional model) and new layer
    objects: each kept layer is re-created from its config and given the
    original's weights, so `model` itself is left untouched. Nested
    Sequential and functional models are rewritten the same way. The copy is
    compiled from `model`'s compile config when `model` was compiled, like
    `keras.models.clone_model`.

    With `placement`:

    - `"after"`: `Layer(act) -> BN`.
    - `"before"`: `Layer(linear) -> BN -> Activation(act)`, with the layer's
      original weights; a layer whose activation is already linear gets
      `Layer -> BN`. An `LSTM` is replaced by
      `keras_bn_tools.layers.BatchNormLSTM.from_lstm(layer)` (BN inside the
      recurrent cell); other recurrent layers (`GRU`, `SimpleRNN`) and layers
      without an `activation` raise `ValueError`.
    - `"none"`: an equivalent copy.

    New layers are named after the layer they follow (`dense_bn`,
    `dense_activation`). A layer called several times (a shared layer) gets
    one BN layer, shared the same way. BN is inserted at every matching
    layer, also where the model already has BN.

    Args:
        model: a `keras.Sequential` or functional `keras.Model`.
        placement: a `Placement` or its string: `"after"`, `"before"` or `"none"`.
        layer_types: a layer class or tuple of classes that get BN (subclasses
            included); default `DEFAULT_LAYER_TYPES` (Dense, Conv1D/2D/3D,
            LSTM, GRU, SimpleRNN).
        bn_layer: zero-argument callable returning a new normalization layer;
            default `keras.layers.BatchNormalization` (on axis 1 after a
            `channels_first` convolution, else the last axis).
        skip_output: no BN at the model's output layers. An output layer is a
            matching layer whose result reaches a model output directly or
            only through layers without weights (`Activation`, `Softmax`,
            `Dropout`, `Flatten`, ...), so `Dense(10) -> Softmax` at the end
            keeps no BN.

    Returns:
        The new model.

    Raises:
        ValueError: on an unknown `placement`, an empty `layer_types`,
            `"before"` at a matching layer with no activation to split, or a
            layer that cannot be copied from its config.
        TypeError: if `model` is not a Sequential or functional model, on
            `layer_types` that are not layer classes, a non-callable
            `bn_layer` or one that returns something other than a Keras layer,
            or a `skip_output` that is not a bool.
    """
    placement = parse_placement(placement, "placement")
    layer_types = _check_layer_types(layer_types)
    skip_output = check_bool("skip_output", skip_output)
    _check_graph_model(model)
    rewriter = _Rewriter(placement, layer_types, NormalizationFactory(bn_layer))
    return rewriter.rewrite(model, skip_output=skip_output)


def replace_layers(model: keras.Model, replace: Replacement) -> keras.Model:
    """A copy of `model` in which `replace` decides the fate of each layer.

    `replace(layer)` returns a new, built layer to take `layer`'s place (with
    whatever weights it should have), or None to keep a copy of `layer`
    (re-created from its config, with its weights). Nested Sequential and
    functional models are walked into, so `replace` also sees their layers.
    The copy has the kind, name and compile config of `model`; `model` is
    left untouched. This is what `keras_bn_tools.convert_batchnorm` uses.

    Args:
        model: a `keras.Sequential` or functional `keras.Model`.
        replace: `replace(layer) -> keras.layers.Layer | None`.

    Returns:
        The new model.

    Raises:
        TypeError: if `model` is not a Sequential or functional model, or
            `replace` is not callable.
        ValueError: if a kept layer cannot be copied from its config.
    """
    _check_graph_model(model)
    if not callable(replace):
        raise TypeError(f"`replace` must be a callable (layer -> layer or None), got {replace!r}.")
    rewriter = _Rewriter(Placement.NONE, DEFAULT_LAYER_TYPES, None, replace=replace)
    return rewriter.rewrite(model, skip_output=False)


def _check_graph_model(model: Any) -> None:
    if not is_functional(model):
        raise TypeError(
            f"`model` must be a keras.Sequential or a functional keras.Model, got "
            f"{model!r} ({type(model).__name__}). Subclassed models have no layer graph "
            f"to rewrite."
        )


def _input_like(tensor: Any) -> Any:
    """A new `keras.Input` like `tensor`, with the name of the `InputLayer` that made it."""
    return keras.Input(
        batch_shape=tensor.shape,
        dtype=tensor.dtype,
        sparse=tensor.sparse,
        name=graph_input_name(tensor),
    )


def _check_layer_types(layer_types: Any) -> tuple[type[keras.layers.Layer], ...]:
    if layer_types is None:
        return DEFAULT_LAYER_TYPES
    items = (layer_types,) if isinstance(layer_types, type) else layer_types
    try:
        items = tuple(items)
    except TypeError:
        items = None
    if items is None or not all(
        isinstance(item, type) and issubclass(item, keras.layers.Layer) for item in items
    ):
        raise TypeError(
            f"`layer_types` must be None, a Keras layer class or a tuple of layer classes "
            f"(e.g. `(keras.layers.Dense, keras.layers.Conv2D)`), got {layer_types!r}."
        )
    if not items:
        raise ValueError(
            f"`layer_types` must name at least one layer class, got {layer_types!r}. "
            f"Pass None for the defaults."
        )
    return items


class _Rewriter:
    """One `insert_batchnorm` call: the settings and the per-model bookkeeping."""

    def __init__(
        self,
        placement: Placement,
        layer_types: tuple[type, ...],
        make_bn: Any,
        replace: Replacement | None = None,
    ) -> None:
        self.placement = placement
        self.layer_types = layer_types
        self.make_bn = make_bn
        self.replace = replace

    def rewrite(self, model: keras.Model, *, skip_output: bool) -> keras.Model:
        at_output = self._output_layers(model) if skip_output else set()
        taken = {layer.name for layer in model.layers}
        copies: list[tuple[keras.layers.Layer, keras.layers.Layer]] = []

        def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
            return self._clone(layer, id(layer) in at_output, copies)

        def extras(original: keras.layers.Layer) -> list[keras.layers.Layer]:
            return [] if id(original) in at_output else self._extras(original, taken)

        if isinstance(model, keras.Sequential):
            new_model = self._rewrite_sequential(model, clone, extras)
        else:
            new_model = self._rewrite_functional(model, clone, extras)
        for original, new in copies:
            if original.weights:
                if not new.built:
                    new.build_from_config(original.get_build_config())
                new.set_weights(original.get_weights())
        if not model.trainable:
            new_model.trainable = False
        return new_model

    @staticmethod
    def _rewrite_sequential(model: keras.Sequential, clone, extras) -> keras.Sequential:
        layers: list[keras.layers.Layer] = []
        for layer in model.layers:
            new = clone(layer)
            layers += [new, *extras(layer)]
        try:
            spec = model.inputs[0]
        except AttributeError:  # not built: the copy is not built either
            head = []
        else:
            head = [_input_like(spec)]
        new_model = keras.Sequential(head + layers, name=model.name)
        if model.compiled:
            new_model.compile_from_config(model.get_compile_config())
        return new_model

    @staticmethod
    def _rewrite_functional(model: keras.Model, clone, extras) -> keras.Model:
        originals: dict[int, keras.layers.Layer] = {}
        added: dict[int, list[keras.layers.Layer]] = {}

        def clone_function(layer):
            new = clone(layer)
            originals[id(new)] = layer
            return new

        def call_function(layer, *args, **kwargs):
            outputs = layer(*args, **kwargs)
            if id(layer) not in added:  # once per layer: a shared layer shares its BN
                added[id(layer)] = extras(originals[id(layer)])
            sequence = isinstance(outputs, list | tuple)
            x = outputs[0] if sequence else outputs  # an RNN's states keep no BN
            for extra in added[id(layer)]:
                x = extra(x)
            return type(outputs)([x, *outputs[1:]]) if sequence else x

        # clone_model recreates the graph and compiles like the original.
        return keras.models.clone_model(
            model,
            input_tensors=keras.tree.map_structure(_input_like, model.input),
            clone_function=clone_function,
            call_function=call_function,
        )

    def _matches(self, layer: Any) -> bool:
        return isinstance(layer, self.layer_types) and not isinstance(layer, keras.Model)

    def _output_layers(self, model: keras.Model) -> set[int]:
        """Ids of the layers at `model`'s outputs, looking through weightless layers."""

        def stops(op: Any) -> bool:
            if isinstance(op, keras.Model) or self._matches(op):
                return True
            return isinstance(op, keras.layers.Layer) and (not op.built or bool(op.weights))

        if isinstance(model, keras.Sequential):
            for layer in reversed(model.layers):
                if stops(layer):
                    return {id(layer)}
            return set()

        found: set[int] = set()
        seen: set[tuple[int, int]] = set()
        pending = list(model.outputs)
        while pending:
            # Walk the graph back through each tensor's history, as keras.Function does.
            op, node_index = producer(pending.pop())
            if op is None or (id(op), node_index) in seen:
                continue
            seen.add((id(op), node_index))
            if isinstance(op, keras.layers.InputLayer):
                continue
            if stops(op):
                found.add(id(op))
            else:
                pending += inbound_tensors(op, node_index)
        return found

    def _clone(self, layer: Any, at_output: bool, copies: list) -> Any:
        if is_functional(layer):
            return self.rewrite(layer, skip_output=at_output)
        if self.replace is not None:
            new = self.replace(layer)
            if new is not None:
                return new
        if isinstance(layer, keras.layers.Lambda):
            # Its function cannot be deserialized in safe mode; the copy shares the function.
            new = copy_lambda(layer)
            copies.append((layer, new))
            return new
        config = layer.get_config()
        if self.placement is Placement.BEFORE and self._matches(layer) and not at_output:
            if isinstance(layer, keras.layers.LSTM):
                from keras_bn_tools.layers import BatchNormLSTM

                return BatchNormLSTM.from_lstm(layer)
            self._check_splittable(layer, config)
            config["activation"] = "linear"
        new = _from_config(layer, config)
        if isinstance(layer, keras.layers.Layer):
            copies.append((layer, new))
        return new

    def _extras(self, original: Any, taken: set[str]) -> list[keras.layers.Layer]:
        """The layers that go right after the copy of `original`; their names join `taken`."""
        if self.placement is Placement.NONE or not self._matches(original):
            return []
        if self.placement is Placement.BEFORE and isinstance(original, keras.layers.LSTM):
            return []  # BatchNormLSTM normalizes inside its cell
        bn = self.make_bn(channels_first=getattr(original, "data_format", None) == "channels_first")
        bn.name = unique_name(f"{original.name}_bn", taken)
        if self.placement is Placement.AFTER or is_linear(original.activation):
            return [bn]
        name = unique_name(f"{original.name}_activation", taken)
        return [bn, keras.layers.Activation(original.activation, name=name)]

    @staticmethod
    def _check_splittable(layer: keras.layers.Layer, config: dict) -> None:
        if isinstance(layer, keras.layers.RNN) or "activation" not in config:
            kind = type(layer).__name__
            raise ValueError(
                f"Invalid `placement`: 'before' cannot be applied to layer {layer.name!r} "
                f"({kind}): it has no activation to split into linear layer -> BN -> "
                f"Activation. placement='before' is allowed for layers with an `activation` "
                f"argument (Dense, Conv1D/2D/3D, ...) and for LSTM (replaced by "
                f"keras_bn_tools.layers.BatchNormLSTM). Use placement='after' for {kind}, "
                f"or leave {kind} out of `layer_types`."
            )


def _from_config(layer: Any, config: dict) -> Any:
    """`layer`'s class re-created from `config`, or a ValueError that says what to do."""
    try:
        return layer.__class__.from_config(config)
    except Exception as error:
        raise ValueError(
            f"Cannot copy layer {layer.name!r} ({type(layer).__name__}) from its config: "
            f"{type(error).__name__}: {error}. The rewritten model needs a new copy of every "
            f"layer; give {type(layer).__name__} a get_config() that returns every constructor "
            f"argument (https://keras.io/guides/serialization_and_saving/)."
        ) from error
