"""`stack_specs`: Hypothesis strategies of keyword arguments for the model builders."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument

__all__ = ["stack_specs"]


_KINDS = ("mlp", "cnn", "lstm")
_DEFAULT_PLACEMENTS = {
    "mlp": ("none", "before", "after"),
    "cnn": ("none", "before", "after"),
    "lstm": ("none", "after"),
}
_ACTIVATIONS = ("relu", "tanh", "sigmoid", "linear")
_OUTPUT_ACTIVATIONS = ("sigmoid", "softmax", "linear")


def _smallest_cnn_side(depth: int, kernel_size: int, pool_every: int | None) -> int:
    """Smallest input side for which every conv ("valid") and 2x2 pool has output >= 1."""
    side = 1
    for index in reversed(range(depth)):
        if pool_every is not None and (index + 1) % pool_every == 0:
            side *= 2  # floor(s / 2) >= needed  <=>  s >= 2 * needed
        side += kernel_size - 1
    return side


def _head(max_layers: int, units: st.SearchStrategy[int]) -> dict[str, st.SearchStrategy[Any]]:
    """The strategies of the arguments every builder's output head takes."""
    return {
        "dense_units": st.lists(units, min_size=0, max_size=min(2, max_layers)).map(tuple),
        "output_units": st.integers(1, 3),
        "output_activation": st.sampled_from(_OUTPUT_ACTIVATIONS),
    }


def _mlp_spec(
    draw: st.DrawFn, placements: tuple[str, ...], max_units: int, max_layers: int, max_side: int
) -> dict[str, Any]:
    del max_side
    head = _head(max_layers, st.integers(1, max_units))
    return {
        "input_dim": draw(st.integers(1, 4)),
        "hidden_units": draw(
            st.lists(st.integers(1, max_units), min_size=1, max_size=max_layers).map(tuple)
        ),
        "activation": draw(st.sampled_from(_ACTIVATIONS)),
        "bn": draw(st.sampled_from(placements)),
        "input_bn": draw(st.booleans()),
        "output_units": draw(head["output_units"]),
        "output_activation": draw(head["output_activation"]),
        "kernel_initializer": draw(st.sampled_from(["he_uniform", "glorot_uniform"])),
    }


def _cnn_spec(
    draw: st.DrawFn, placements: tuple[str, ...], max_units: int, max_layers: int, max_side: int
) -> dict[str, Any]:
    head = _head(max_layers, st.integers(1, max_units))
    filters = draw(st.lists(st.integers(1, min(4, max_units)), min_size=1, max_size=max_layers))
    pool_every = draw(st.sampled_from([1, 2, None]))
    # Any kernel size whose smallest valid input fits; 1 always does.
    kernel_sizes = [
        k for k in (1, 2, 3) if _smallest_cnn_side(len(filters), k, pool_every) <= max_side
    ]
    kernel_size = draw(st.sampled_from(kernel_sizes))
    smallest = _smallest_cnn_side(len(filters), kernel_size, pool_every)
    return {
        "input_shape": (
            draw(st.integers(smallest, max_side)),
            draw(st.integers(smallest, max_side)),
            draw(st.integers(1, 3)),
        ),
        "filters": tuple(filters),
        "kernel_size": kernel_size,
        "activation": draw(st.sampled_from(_ACTIVATIONS)),
        "bn": draw(st.sampled_from(placements)),
        "pool_every": pool_every,
        **{key: draw(strategy) for key, strategy in head.items()},
    }


def _lstm_spec(
    draw: st.DrawFn, placements: tuple[str, ...], max_units: int, max_layers: int, max_side: int
) -> dict[str, Any]:
    del max_side
    units = st.integers(1, max_units)
    head = _head(max_layers, units)
    return {
        "input_shape": (draw(st.integers(1, 5)), draw(st.integers(1, 4))),
        "units": draw(st.lists(units, min_size=1, max_size=min(2, max_layers)).map(tuple)),
        "bn": draw(st.sampled_from(placements)),
        **{key: draw(strategy) for key, strategy in head.items()},
    }


_SPECS = {"mlp": _mlp_spec, "cnn": _cnn_spec, "lstm": _lstm_spec}


@st.composite
def _stack_spec(
    draw: st.DrawFn,
    kind: str,
    placements: tuple[str, ...],
    max_units: int,
    max_layers: int,
    max_side: int,
    bn_layer: Any,
) -> dict[str, Any]:
    spec = _SPECS[kind](draw, placements, max_units, max_layers, max_side)
    if spec["output_activation"] == "softmax" and spec["output_units"] == 1:
        spec["output_activation"] = "sigmoid"
    if bn_layer is not None:
        spec["bn_layer"] = bn_layer
    return spec


def stack_specs(
    kind: str = "mlp",
    placements: Iterable[str] | None = None,
    *,
    max_units: int = 8,
    max_layers: int = 3,
    max_side: int = 8,
    bn_layer: Any = None,
) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword-argument dicts for `build_mlp`, `build_cnn` or `build_lstm`: tiny, valid models.

    `keras_bn_tools.build_<kind>(**spec)` builds the model. Sizes are small
    on purpose (at most `max_units` units or 4 filters per layer, images of at
    most `max_side` x `max_side` x 3, sequences of at most 5 steps) so a
    property test can build and run many of them.

    A CNN spec always fits its input: the input side is at least what its
    convolutions (assumed "valid") and 2x2 poolings need.

    Args:
        kind: "mlp", "cnn" or "lstm".
        placements: the `bn` values to draw from (strings). Default: all three
            for MLPs and CNNs, `("none", "after")` for LSTMs (`"before"` there
            means recurrent batch normalization inside the cell).
        max_units: most units (Dense, LSTM) per layer.
        max_layers: most hidden layers.
        max_side: largest CNN input side.
        bn_layer: if given, put in every spec as the `bn_layer` factory.

    Returns:
        A strategy of `dict`.

    Example:
        ```python
        from hypothesis import given
        from keras_bn_tools.testing import stack_specs

        @given(stack_specs("lstm"))
        def test_lstm_spec(spec):
            assert spec["bn"] in ("none", "after") and len(spec["input_shape"]) == 2
        ```
    """
    if kind not in _KINDS:
        raise InvalidArgument(f"`kind` must be one of {_KINDS}, got {kind!r}.")
    if placements is None:
        chosen = _DEFAULT_PLACEMENTS[kind]
    else:
        chosen = tuple(str(getattr(p, "value", p)).lower() for p in placements)
    bad = [p for p in chosen if p not in ("none", "before", "after")]
    if not chosen or bad:
        raise InvalidArgument(
            f"`placements` must be a non-empty collection of 'none', 'before', 'after', "
            f"got {placements!r}."
        )
    for name, value in [("max_units", max_units), ("max_layers", max_layers)]:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgument(f"`{name}` must be a positive int, got {value!r}.")
    if kind == "cnn" and (
        isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 2**max_layers
    ):
        raise InvalidArgument(
            f"`max_side` must be an int of at least 2**max_layers = {2**max_layers} (room for "
            f"a 2x2 pooling after every convolution), got {max_side!r}."
        )
    return _stack_spec(kind, chosen, max_units, max_layers, max_side, bn_layer)
