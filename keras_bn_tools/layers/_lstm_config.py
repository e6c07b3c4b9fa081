"""The arguments of a recurrently batch-normalized LSTM cell, in one place.

`LSTMCellConfig` is the single list of `BatchNormLSTMCell`'s arguments: their defaults, their
checks, how they serialize (`get_config`) and which of them are normalization options (the
ones `keras.layers.LSTM` does not have). The constructors of the cell and of `BatchNormLSTM`
spell the arguments out in their signatures, for IDEs, type checkers and the API reference,
and hand them over as `LSTMCellConfig.from_arguments(locals())`; a test checks that their
signatures and defaults are the config's.
"""

# ruff: noqa: RUF009 - `_field` and `_required` return `dataclasses.field(...)`, not a default

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping
from typing import Any

import keras

from keras_bn_tools._validation import (
    check_bool,
    check_epsilon,
    check_positive_int,
    check_probability,
)

__all__ = ["LSTMCellConfig"]

# Field metadata: a normalization option (absent from keras.layers.LSTM) and how a value is
# resolved and serialized.
_NORMALIZATION = {"normalization": True}


def _as_initializer(value: Any) -> keras.initializers.Initializer:
    """An initializer from a Keras identifier, or a constant from a bare number."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return keras.initializers.Constant(float(value))
    return keras.initializers.get(value)


def _field(default: Any, kind: str, *, normalization: bool = False) -> Any:
    metadata = {"kind": kind, **(_NORMALIZATION if normalization else {})}
    return dataclasses.field(default=default, metadata=metadata)


def _required(kind: str) -> Any:
    return dataclasses.field(metadata={"kind": kind})


# How each kind of argument is checked (or resolved to a Keras object) and serialized.
_RESOLVE = {
    "int": check_positive_int,
    "optional_int": lambda name, value: check_positive_int(name, value, allow_none=True),
    "probability": check_probability,
    "epsilon": check_epsilon,
    "bool": check_bool,
    "activation": lambda name, value: keras.activations.get(value),
    "initializer": lambda name, value: keras.initializers.get(value),
    "scale_initializer": lambda name, value: _as_initializer(value),
    "regularizer": lambda name, value: keras.regularizers.get(value),
    "constraint": lambda name, value: keras.constraints.get(value),
    "seed": lambda name, value: value,
}
_SERIALIZE = {
    "activation": keras.activations.serialize,
    "initializer": keras.saving.serialize_keras_object,
    "scale_initializer": keras.saving.serialize_keras_object,
    "regularizer": keras.saving.serialize_keras_object,
    "constraint": keras.saving.serialize_keras_object,
}


@dataclasses.dataclass(frozen=True, eq=False)
class LSTMCellConfig:
    """The checked arguments of `BatchNormLSTMCell` (see its docstring for their meaning).

    Constructing one checks every argument (a `TypeError`/`ValueError` naming it) and resolves
    identifiers to Keras objects (activations, initializers, regularizers, constraints; a bare
    number for a scale initializer means a constant). `get_config()` serializes it back.
    """

    units: int = _required("int")
    activation: Any = _field("tanh", "activation")
    recurrent_activation: Any = _field("sigmoid", "activation")
    use_bias: bool = _field(True, "bool")
    kernel_initializer: Any = _field("glorot_uniform", "initializer")
    recurrent_initializer: Any = _field("orthogonal", "initializer")
    bias_initializer: Any = _field("zeros", "initializer")
    unit_forget_bias: bool = _field(True, "bool")
    gamma_initializer: Any = _field(0.1, "scale_initializer", normalization=True)
    cell_gamma_initializer: Any = _field("ones", "scale_initializer", normalization=True)
    cell_beta_initializer: Any = _field("zeros", "scale_initializer", normalization=True)
    normalize_cell: bool = _field(True, "bool", normalization=True)
    momentum: float = _field(0.99, "probability", normalization=True)
    epsilon: float = _field(1e-3, "epsilon", normalization=True)
    max_timesteps: int | None = _field(None, "optional_int", normalization=True)
    kernel_regularizer: Any = _field(None, "regularizer")
    recurrent_regularizer: Any = _field(None, "regularizer")
    bias_regularizer: Any = _field(None, "regularizer")
    kernel_constraint: Any = _field(None, "constraint")
    recurrent_constraint: Any = _field(None, "constraint")
    bias_constraint: Any = _field(None, "constraint")
    dropout: float = _field(0.0, "probability")
    recurrent_dropout: float = _field(0.0, "probability")
    seed: int | None = _field(None, "seed")

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            resolve = _RESOLVE[field.metadata["kind"]]
            object.__setattr__(self, field.name, resolve(field.name, getattr(self, field.name)))

    @classmethod
    def names(cls, *, normalization: bool | None = None) -> tuple[str, ...]:
        """The argument names in order; only the normalization ones (or only the others)."""
        return tuple(
            field.name
            for field in dataclasses.fields(cls)
            if normalization is None or field.metadata.get("normalization", False) == normalization
        )

    @classmethod
    def from_arguments(cls, arguments: Mapping[str, Any]) -> LSTMCellConfig:
        """The config of the cell arguments among `arguments` (e.g. a constructor's
        `locals()`); other names are ignored."""
        return cls(**{name: arguments[name] for name in cls.names() if name in arguments})

    def replace(self, **changes: Any) -> LSTMCellConfig:
        """A copy with `changes` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    def get_config(self) -> dict[str, Any]:
        """The arguments, serialized as `keras.layers.Layer.get_config` expects."""
        config = {}
        for field in dataclasses.fields(self):
            serialize = _SERIALIZE.get(field.metadata["kind"])
            value = getattr(self, field.name)
            config[field.name] = value if serialize is None else serialize(value)
        return config
