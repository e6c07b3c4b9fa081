"""Find and insert batch normalization layers in existing Keras models."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from keras_bn_tools._keras_compat import inbound_tensors, producer
from keras_bn_tools._model_utils import NormalizationFactory, is_linear, unique_name
from keras_bn_tools._validation import check_bool
from keras_bn_tools.graph import (
    CallablePolicy,
    Policy,
    batchnorm_layers,
    check_graph_model,
    clone_model,
    copy_layer,
)
from keras_bn_tools.layers import BatchNormLSTM
from keras_bn_tools.placement import Placement, parse_placement

# `batchnorm_layers` is re-exported from the graph module.
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
    check_graph_model(model)
    policy = _InsertionPolicy(
        model, placement, layer_types, NormalizationFactory(bn_layer), skip_output=skip_output
    )
    return clone_model(model, policy)


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
    check_graph_model(model)
    if not callable(replace):
        raise TypeError(f"`replace` must be a callable (layer -> layer or None), got {replace!r}.")
    return clone_model(model, CallablePolicy(replace))


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


class _InsertionPolicy(Policy):
    """`insert_batchnorm` as a `graph.Policy`: BN after (or inside) the matching layers."""

    def __init__(
        self,
        model: keras.Model,
        placement: Placement,
        layer_types: tuple[type, ...],
        make_bn: NormalizationFactory,
        *,
        skip_output: bool,
    ) -> None:
        self.placement = placement
        self.layer_types = layer_types
        self.make_bn = make_bn
        self.at_output = self._output_layers(model) if skip_output else set()
        self.taken = {layer.name for layer in model.layers}

    def nested(self, model: keras.Model) -> Policy:
        return _InsertionPolicy(
            model,
            self.placement,
            self.layer_types,
            self.make_bn,
            skip_output=id(model) in self.at_output,
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

    def replace(self, layer: Any) -> Any:
        """With placement "before", a matching layer loses its activation (or, an LSTM,
        becomes a `BatchNormLSTM`); every other layer is copied."""
        if (
            self.placement is not Placement.BEFORE
            or not self._matches(layer)
            or id(layer) in self.at_output
        ):
            return None
        if isinstance(layer, keras.layers.LSTM):
            return BatchNormLSTM.from_lstm(layer)
        config = layer.get_config()
        self._check_splittable(layer, config)
        config["activation"] = "linear"
        return copy_layer(layer, config=config)

    def insert_after(self, original: Any) -> list[keras.layers.Layer]:
        """The layers that go right after the copy of `original`; their names are taken."""
        if id(original) in self.at_output:
            return []
        if self.placement is Placement.NONE or not self._matches(original):
            return []
        if self.placement is Placement.BEFORE and isinstance(original, keras.layers.LSTM):
            return []  # BatchNormLSTM normalizes inside its cell
        channels_first = getattr(original, "data_format", None) == "channels_first"
        bn = self.make_bn(channels_first=channels_first)
        bn.name = unique_name(f"{original.name}_bn", self.taken)
        if self.placement is Placement.AFTER or is_linear(original.activation):
            return [bn]
        name = unique_name(f"{original.name}_activation", self.taken)
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
