"""The one graph module: find the BN layers of a model and clone it with replacements.

Everything in this package that looks into a model or rebuilds one goes through
here: `batchnorm_layers` (public) finds BN layers, nested models and wrappers
included; `clone_model(model, policy)` rebuilds a Sequential or functional model,
layer by layer, asking a `Policy` what becomes of each layer. Inserting BN
(`rewrite.insert_batchnorm`), converting BN classes (`convert.convert_batchnorm`),
folding BN away (`folding.fold_batchnorm`) and freezing BN are each one policy.

What the cloning guarantees, whatever the policy:

- the copy has `model`'s kind (Sequential in, Sequential out), name, input names
  and dtypes, `trainable` flag and compile config (when `model` was compiled);
- every layer the policy keeps is re-created from its config and given the
  original's weights, so `model` itself is never changed or shared;
- a nested Sequential or functional model is cloned the same way with
  `policy.nested(inner)` (the policy sees its layers, named by path);
- a wrapper around a BN layer (`TimeDistributed(BatchNormalization())`) is
  re-created around the policy's replacement of the BN when the policy replaces
  the wrapped layer: "this is a BN layer, wrapped or not" is decided here once
  (`batchnorm_of`), not in every feature.

Writing a policy
----------------

Subclass `Policy` and override what you need:

- `replace(layer)`: return `None` to keep a copy of `layer`, `DROP` to remove
  the call (its output becomes its single input), a new layer, or a
  `Replacement(layer, weights)` whose `weights` (NumPy arrays, cast to each
  variable's dtype) are assigned once the new model has built the layer.
- `insert_after(original)`: layers to call right after `original`'s copy (on
  its first output); a layer called several times gets its inserted layers once,
  shared the same way.
- `nested(model)`: the policy for a nested model's layers (default: `self`).

For the usual case, "replace every BN layer", `BatchNormPolicy(replace_bn)`
is enough: `replace_bn(bn)` gets every BN layer (Keras's, this package's, and
those inside wrappers, which are re-wrapped), and returns its replacement or
`None`. Use `copy_layer(layer, config=..., weights=...)` to make a replacement
from a (changed) config with the original's (or given) weights.

Example (a user-level freeze of every BN's statistics):

```python
import keras
from keras_bn_tools import graph

def freeze(bn):
    config = {**bn.get_config(), "trainable": False}
    return graph.copy_layer(bn, config=config)

model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
frozen = graph.clone_model(model, graph.BatchNormPolicy(freeze))
```
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

from keras_bn_tools._keras_compat import copy_lambda, graph_input_name, is_functional
from keras_bn_tools.layers.interface import as_batchnorm, is_batchnorm
from keras_bn_tools.ops import to_numpy

__all__ = [
    "BN_STATISTICS",
    "DROP",
    "BatchNormPolicy",
    "CallablePolicy",
    "Policy",
    "Replacement",
    "batchnorm_layers",
    "batchnorm_of",
    "check_graph_model",
    "clone_model",
    "copy_layer",
    "keyed_batchnorm_layers",
    "layer_keys",
    "num_inputs",
    "rewrap",
    "statistic_variables",
]

#: The per-channel state of a BN layer that trackers and studies record.
BN_STATISTICS = ("moving_mean", "moving_variance", "gamma", "beta")


# --------------------------------------------------------------------------------------
# Finding BN layers
# --------------------------------------------------------------------------------------


def batchnorm_of(layer: Any) -> keras.layers.Layer | None:
    """The BN layer that `layer` is, or that it wraps (`TimeDistributed(BN)`), else None.

    The one place that decides "this is a BN layer, wrapped or not".
    """
    while isinstance(layer, keras.layers.Wrapper):
        layer = layer.layer
    return layer if is_batchnorm(layer) else None


def batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """Every batch normalization layer of `model`, nested models included, in call order.

    `keras_bn_tools.layers.MomentumBatchNormalization` subclasses
    `keras.layers.BatchNormalization`, so both are found. BN inside a wrapper
    (`keras.layers.TimeDistributed(keras.layers.BatchNormalization())`) is
    found too. A layer shared by several nested models is listed once.

    Args:
        model: a built or unbuilt Keras model.

    Returns:
        A list of BN layers, outermost first, in the order the model calls them.

    Raises:
        TypeError: if `model` is not a `keras.Model` (a single layer is not a model:
            wrap it, e.g. `keras.Sequential([layer])`).
    """
    if not isinstance(model, keras.Model):
        raise TypeError(
            f"`model` must be a keras.Model, got {model!r} ({type(model).__name__}). "
            "To look into a single layer, wrap it: keras.Sequential([layer])."
        )
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()

    def visit(layer: keras.layers.Layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if is_batchnorm(layer):
            found.append(layer)
        elif isinstance(layer, keras.layers.Wrapper):
            # TimeDistributed(BatchNormalization()) and the like: the BN is the
            # wrapped layer, and its statistics are what a user means to track.
            visit(layer.layer)
        elif isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)

    for layer in model.layers:
        visit(layer)
    return found


def num_inputs(model: keras.Model) -> int | None:
    """How many input tensors `model` takes, or None while that is unknown (not built,
    or a subclassed model that has not been called)."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return len(inputs) if inputs else None


def layer_keys(layers: Sequence[keras.layers.Layer]) -> list[str]:
    """Unique, stable keys for `layers`: the layer name, `name#2`, `name#3`, ... for repeats.

    Layer names are unique inside one model, but two nested models may each hold
    a layer called `"bn"`; the second one found is keyed `"bn#2"`.
    """
    seen: dict[str, int] = {}
    keys = []
    for layer in layers:
        seen[layer.name] = seen.get(layer.name, 0) + 1
        count = seen[layer.name]
        keys.append(layer.name if count == 1 else f"{layer.name}#{count}")
    return keys


def keyed_batchnorm_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """`(key, layer)` for every BN layer of `model`, keyed by `layer_keys`."""
    layers = batchnorm_layers(model)
    return list(zip(layer_keys(layers), layers, strict=True))


def statistic_variables(
    layers: Sequence[tuple[str, keras.layers.Layer]], stats: Sequence[str] = BN_STATISTICS
) -> list[tuple[str, str, Any]]:
    """`(layer key, stat, variable)` for each keyed BN layer and each of `stats` it has.

    A BN layer built with `center=False` has no `beta` and one with
    `scale=False` no `gamma`: those are left out, not reported as zeros.
    This is the one place that decides which variables count as "the
    statistics" of a BN layer, for `MovingStatsTracker` and the studies alike;
    the layer itself says which it has (`BatchNormInterface.statistic_variables`).
    """
    found = []
    for key, layer in layers:
        own = as_batchnorm(layer).statistic_variables()
        found.extend((key, stat, own[stat]) for stat in stats if stat in own)
    return found


# --------------------------------------------------------------------------------------
# Policies
# --------------------------------------------------------------------------------------


class _Drop:
    """The type of `DROP`."""

    def __repr__(self) -> str:
        return "DROP"


#: Returned by `Policy.replace`: the layer's call disappears, its input passes through.
DROP = _Drop()


@dataclass
class Replacement:
    """A new layer for `clone_model`, with the weights it gets once the new model builds it.

    Attributes:
        layer: the new layer (built or not).
        weights: NumPy arrays in the order of `layer.weights`, cast to each variable's
            dtype; None keeps the layer's own weights.
    """

    layer: Any
    weights: list[np.ndarray] | None = None


class Policy:
    """What `clone_model` does with each layer. The default keeps a copy of every layer."""

    def replace(self, layer: Any) -> Replacement | keras.layers.Layer | _Drop | None:
        """`layer`'s replacement: None (a copy), `DROP`, a new layer or a `Replacement`."""
        return None

    def insert_after(self, original: Any) -> list[keras.layers.Layer]:
        """New layers called right after the copy of `original` (on its first output)."""
        return []

    def nested(self, model: keras.Model) -> Policy:
        """The policy for the layers of `model`, a nested Sequential or functional model."""
        return self


class CallablePolicy(Policy):
    """`replace(layer) -> new layer | None` as a policy (nested models walked into)."""

    def __init__(self, replace: Callable[[Any], Any]) -> None:
        self._replace = replace

    def replace(self, layer: Any) -> Any:
        return self._replace(layer)


class BatchNormPolicy(Policy):
    """Replace BN layers only: `replace_bn(bn) -> new layer | Replacement | None`.

    BN inside wrappers is given to `replace_bn` too, and its wrapper re-created
    around the result by `clone_model`.
    """

    def __init__(self, replace_bn: Callable[[Any], Any]) -> None:
        self._replace_bn = replace_bn

    def replace(self, layer: Any) -> Any:
        return self._replace_bn(layer) if is_batchnorm(layer) else None


# --------------------------------------------------------------------------------------
# Copying layers
# --------------------------------------------------------------------------------------


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


def copy_layer(
    layer: Any, *, config: dict | None = None, weights: list[np.ndarray] | None = None
) -> Replacement:
    """A new copy of `layer` (from `config`, default its own) with its weights or `weights`.

    A `Lambda` layer shares its function (its serialized bytecode loads only
    outside safe mode). A bare operation (such as `keras.ops.add` in a functional
    graph) has no weights.
    """
    if isinstance(layer, keras.layers.Lambda) and config is None:
        new = copy_lambda(layer)
    else:
        new = _from_config(layer, layer.get_config() if config is None else config)
    if not isinstance(layer, keras.layers.Layer):
        return Replacement(new)
    if weights is None:
        weights = [to_numpy(variable) for variable in layer.weights]
    return Replacement(new, weights)


def rewrap(wrapper: keras.layers.Wrapper, inner: keras.layers.Layer) -> keras.layers.Wrapper:
    """`wrapper` re-created around a new `inner` layer (built when `wrapper` was)."""
    config = wrapper.get_config()
    config.pop("layer", None)
    try:
        new = type(wrapper)(inner, **config)
    except Exception as error:
        raise ValueError(
            f"Cannot replace the layer inside {wrapper.name!r} ({type(wrapper).__name__}): "
            f"the wrapper cannot be re-created around a new layer ({error})."
        ) from error
    if wrapper.built:
        new.build_from_config(wrapper.get_build_config())
    return new


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


# --------------------------------------------------------------------------------------
# Cloning
# --------------------------------------------------------------------------------------


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
