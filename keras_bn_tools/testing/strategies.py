"""Hypothesis strategies for batch normalization tests.

- `batches`: input arrays a BN layer can be held to: at least two rows, finite,
  and every feature with a variance comfortably above float round-off.
- `bn_configs`: keyword-argument dicts for `MomentumBatchNormalization` or
  `keras.layers.BatchNormalization`.
- `stack_specs`: keyword-argument dicts for `build_mlp`, `build_cnn` and
  `build_lstm`, kept tiny so that a property test builds and runs them fast.

Every strategy draws plain data (arrays, dicts of numbers, strings and
tuples), so Hypothesis prints a failing example that can be pasted back into
a test.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

__all__ = ["MIN_RELATIVE_STD", "batches", "bn_configs", "stack_specs"]

MIN_RELATIVE_STD = 1e-2
"""A non-degenerate feature has `std >= MIN_RELATIVE_STD * (1 + max|x|)` (per feature)."""

_FLOAT_DTYPES = ("float16", "float32", "float64")


# ----------------------------------------------------------------------------- batches


def _representable_bounds(dtype: np.dtype, low: float, high: float) -> tuple[float, float]:
    """`[low, high]` shrunk inward to the nearest values `dtype` represents exactly."""
    lo, hi = dtype.type(low), dtype.type(high)
    if float(lo) < low:
        lo = np.nextafter(lo, dtype.type(np.inf))
    if float(hi) > high:
        hi = np.nextafter(hi, dtype.type(-np.inf))
    return float(lo), float(hi)


def _spread_threshold(values: np.ndarray) -> np.ndarray:
    """The smallest acceptable std per column of a `(reduced, features)` array."""
    return MIN_RELATIVE_STD * (1.0 + np.max(np.abs(values), axis=0))


def _alternating(n: int) -> np.ndarray:
    """`[+1, -1, +1, ...]` of length `n`: std close to 1 for any `n >= 2`."""
    return np.where(np.arange(n) % 2 == 0, 1.0, -1.0)


def _spread_features(x: np.ndarray, dtype: np.dtype, low: float, high: float) -> np.ndarray:
    """Give every feature (last axis) of `x` a comfortable spread, changing as little as needed.

    A feature that already has one is kept as drawn. Otherwise an alternating
    +-delta pattern is added (clipped to the bounds); if even that is not
    enough, the feature becomes the widest alternating pattern the bounds allow,
    which `batches` checked is always enough.
    """
    features = x.shape[-1]
    flat = x.reshape(-1, features).astype(np.float64)
    ok = np.std(flat, axis=0) >= _spread_threshold(flat)
    if ok.all():
        return x
    pattern = _alternating(flat.shape[0])[:, None]
    # 1.5x the threshold the shifted values will need (their max|x| grows by delta too).
    delta = 3.0 * _spread_threshold(flat) / (1.0 - 3.0 * MIN_RELATIVE_STD)
    nudged = np.clip(flat + delta * pattern, low, high).astype(dtype).astype(np.float64)
    widest = ((low + high) / 2.0 + (high - low) / 2.0 * pattern) * np.ones_like(flat)
    widest = widest.astype(dtype).astype(np.float64)
    nudged_ok = np.std(nudged, axis=0) >= _spread_threshold(nudged)
    fixed = np.where(ok, flat, np.where(nudged_ok, nudged, widest))
    return fixed.astype(dtype).reshape(x.shape)


@st.composite
def _batches(
    draw: st.DrawFn,
    *,
    min_rows: int,
    max_rows: int,
    min_features: int,
    max_features: int,
    ndim: int,
    min_side: int,
    max_side: int,
    dtype: np.dtype,
    low: float,
    high: float,
    allow_degenerate: bool,
) -> np.ndarray:
    rows = draw(st.integers(min_rows, max_rows))
    sides = tuple(draw(st.integers(min_side, max_side)) for _ in range(ndim - 2))
    features = draw(st.integers(min_features, max_features))
    elements = hnp.from_dtype(
        dtype,
        min_value=low,
        max_value=high,
        allow_nan=False,
        allow_infinity=False,
        allow_subnormal=False,
    )
    x = draw(hnp.arrays(dtype, (rows, *sides, features), elements=elements))
    if not allow_degenerate:
        return _spread_features(x, dtype, low, high)
    # Make constant features common rather than a rare accident of the draw.
    constant = draw(st.lists(st.booleans(), min_size=features, max_size=features))
    for feature, is_constant in enumerate(constant):
        if is_constant:
            x[..., feature] = x.reshape(-1, features)[0, feature]
    return x


def batches(
    *,
    min_rows: int = 2,
    max_rows: int = 16,
    min_features: int = 1,
    max_features: int = 6,
    ndim: int = 2,
    min_side: int = 1,
    max_side: int = 4,
    dtype: str = "float32",
    min_value: float = -10.0,
    max_value: float = 10.0,
    allow_degenerate: bool = False,
) -> st.SearchStrategy[np.ndarray]:
    """Arrays of shape `(rows, *spatial, features)` that batch normalization can be held to.

    The feature axis is the last one (`axis=-1`), the batch axis the first;
    `ndim=3` gives sequences `(rows, side, features)`, `ndim=4` images
    `(rows, side, side', features)`. Values are finite and within
    `[min_value, max_value]`.

    Unless `allow_degenerate=True`, every feature has a standard deviation
    (over all axes but the last) of at least `MIN_RELATIVE_STD * (1 + max|x|)`
    of that feature, far above float32 round-off, so a correct layer's output
    statistics are well defined and a test needs no `assume`. The spread is
    built in (a feature drawn too flat gets an alternating offset added), not
    filtered for, so the strategy is fast and shrinks well. With
    `allow_degenerate=True` constant (zero-variance) features are drawn
    deliberately often.

    Args:
        min_rows: smallest batch size; at least 2.
        max_rows: largest batch size.
        min_features: fewest features (size of the last axis); at least 1.
        max_features: most features.
        ndim: rank of the arrays, at least 2.
        min_side: smallest size of each spatial axis (the axes between the
            first and the last; only when `ndim > 2`).
        max_side: largest size of each spatial axis.
        dtype: a float dtype name: "float16", "float32" or "float64".
        min_value: smallest value (rounded inward to `dtype`).
        max_value: largest value (rounded inward to `dtype`).
        allow_degenerate: allow constant features.

    Returns:
        A strategy of `numpy.ndarray` of `dtype`.

    Raises:
        hypothesis.errors.InvalidArgument: for impossible bounds, e.g.
            `min_rows < 2`, or a value range too narrow for a non-degenerate
            feature.

    Example:
        ```python
        from hypothesis import given
        from keras_bn_tools.testing import batches

        @given(batches(ndim=4, max_side=3))
        def test_images(x):
            assert x.ndim == 4 and x.shape[0] >= 2
        ```
    """
    for name, value in [
        ("min_rows", min_rows),
        ("max_rows", max_rows),
        ("min_features", min_features),
        ("max_features", max_features),
        ("ndim", ndim),
        ("min_side", min_side),
        ("max_side", max_side),
    ]:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidArgument(f"`{name}` must be an int, got {value!r}.")
    if min_rows < 2:
        raise InvalidArgument(f"`min_rows` must be at least 2 (a batch statistic), got {min_rows}.")
    if ndim < 2:
        raise InvalidArgument(f"`ndim` must be at least 2 (rows and features), got {ndim}.")
    if min_features < 1 or min_side < 1:
        raise InvalidArgument(
            f"`min_features` and `min_side` must be at least 1, got {min_features} and {min_side}."
        )
    for low_name, low, high_name, high in [
        ("min_rows", min_rows, "max_rows", max_rows),
        ("min_features", min_features, "max_features", max_features),
        ("min_side", min_side, "max_side", max_side),
        ("min_value", min_value, "max_value", max_value),
    ]:
        if high < low:
            raise InvalidArgument(f"`{high_name}`={high!r} is smaller than `{low_name}`={low!r}.")
    if str(dtype) not in _FLOAT_DTYPES:
        raise InvalidArgument(f"`dtype` must be one of {_FLOAT_DTYPES}, got {dtype!r}.")
    np_dtype = np.dtype(str(dtype))
    if not (math.isfinite(min_value) and math.isfinite(max_value)):
        raise InvalidArgument(
            f"`min_value` and `max_value` must be finite, got {min_value!r}, {max_value!r}."
        )
    low, high = _representable_bounds(np_dtype, float(min_value), float(max_value))
    if not allow_degenerate:
        # The widest alternating pattern has std >= (high - low) / 2 * sqrt(2/3) (3 entries).
        widest_std = (high - low) / 2.0 * math.sqrt(2.0 / 3.0)
        needed = MIN_RELATIVE_STD * (1.0 + max(abs(low), abs(high)))
        if widest_std < 1.05 * needed:
            raise InvalidArgument(
                f"[min_value, max_value] = [{min_value!r}, {max_value!r}] is too narrow for "
                f"non-degenerate features: a feature needs std >= {MIN_RELATIVE_STD} * "
                "(1 + max|x|). Widen the range or pass allow_degenerate=True."
            )
    return _batches(
        min_rows=min_rows,
        max_rows=max_rows,
        min_features=min_features,
        max_features=max_features,
        ndim=ndim,
        min_side=min_side,
        max_side=max_side,
        dtype=np_dtype,
        low=low,
        high=high,
        allow_degenerate=allow_degenerate,
    )


# -------------------------------------------------------------------------- bn_configs

_LAYERS = ("momentum", "keras")


def _constant(low: float, high: float) -> st.SearchStrategy[dict[str, Any]]:
    """A serialized `Constant` initializer (readable in a failing example)."""
    values = st.floats(low, high, allow_nan=False).map(lambda v: round(v, 3))
    return values.map(lambda v: {"class_name": "Constant", "config": {"value": v}})


def _initializers() -> dict[str, st.SearchStrategy[Any]]:
    return {
        "beta_initializer": st.one_of(st.just("zeros"), _constant(-2.0, 2.0)),
        "gamma_initializer": st.one_of(st.just("ones"), _constant(-2.0, 2.0)),
        "moving_mean_initializer": st.one_of(st.just("zeros"), _constant(-2.0, 2.0)),
        "moving_variance_initializer": st.one_of(st.just("ones"), _constant(0.1, 4.0)),
    }


def _as_strategy(value: Any) -> st.SearchStrategy[Any]:
    return value if isinstance(value, st.SearchStrategy) else st.just(value)


@st.composite
def _momentum_config(
    draw: st.DrawFn, base: Mapping[str, st.SearchStrategy[Any]], include_ghost: bool
) -> dict[str, Any]:
    config = {key: draw(strategy) for key, strategy in base.items()}
    if "momentum" not in config:
        config["momentum"] = draw(
            st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]), st.floats(0.0, 1.0))
        )
    if "debias" not in config:
        # Bias correction divides by 1 - momentum**t: only drawn where that is defined.
        momentum = config["momentum"]
        config["debias"] = draw(st.booleans()) if momentum is not None and momentum < 1.0 else False
    if "virtual_batch_size" not in config:
        config["virtual_batch_size"] = (
            draw(st.one_of(st.none(), st.integers(1, 8))) if include_ghost else None
        )
    return config


def bn_configs(
    *,
    layer: str = "momentum",
    axis: int | st.SearchStrategy[int] = -1,
    include_ghost: bool = False,
    include_initializers: bool = True,
    **overrides: Any,
) -> st.SearchStrategy[dict[str, Any]]:
    """Keyword-argument dicts that construct a valid batch normalization layer.

    With `layer="keras"` the dicts hold only `keras.layers.BatchNormalization`
    arguments: `axis`, `momentum` (in [0, 1]), `epsilon`, `center`, `scale`
    and the four initializers. With `layer="momentum"` (the default) they are
    for `keras_bn_tools.layers.MomentumBatchNormalization` and add
    `momentum=None` (cumulative average), `debias` (only with a momentum
    below 1), `skip_nonfinite` and, with `include_ghost=True`,
    `virtual_batch_size`.

    Initializers are strings or serialized `Constant` dicts such as
    `{"class_name": "Constant", "config": {"value": 0.5}}`, which every Keras
    initializer argument accepts; gamma may be negative or zero.

    Args:
        layer: "momentum" or "keras".
        axis: the feature axis every config uses (an int or a strategy).
        include_ghost: draw `virtual_batch_size` (None or 1-8); otherwise it is
            None. Ghost batches normalize each ghost batch separately, which
            `assert_normalizes` only checks partially.
        include_initializers: draw the initializers; otherwise the Keras
            defaults are used (the keys are left out).
        **overrides: fix fields: a value is used as is, a strategy is drawn
            from, e.g. `bn_configs(momentum=0.0, epsilon=st.just(1e-5))`.

    Returns:
        A strategy of `dict`, ready for `Layer(**config)`.

    Example:
        ```python
        import keras
        from hypothesis import given
        from keras_bn_tools.testing import bn_configs

        @given(bn_configs(layer="keras", center=False))
        def test_no_beta(config):
            assert keras.layers.BatchNormalization(**config).center is False
        ```
    """
    if layer not in _LAYERS:
        raise InvalidArgument(f"`layer` must be one of {_LAYERS}, got {layer!r}.")
    base: dict[str, st.SearchStrategy[Any]] = {
        "axis": _as_strategy(axis),
        "epsilon": st.one_of(
            st.sampled_from([1e-5, 1e-3, 1e-2]),
            st.floats(1e-5, 0.5).map(lambda v: float(f"{v:.2g}")),
        ),
        "center": st.booleans(),
        "scale": st.booleans(),
    }
    if include_initializers:
        base.update(_initializers())
    if layer == "keras":
        base["momentum"] = st.one_of(st.sampled_from([0.0, 0.9, 0.99, 1.0]), st.floats(0.0, 1.0))
    else:
        base["skip_nonfinite"] = st.booleans()
    base.update({key: _as_strategy(value) for key, value in overrides.items()})
    if layer == "keras":
        return st.fixed_dictionaries(base)
    return _momentum_config(base, include_ghost)


# ------------------------------------------------------------------------- stack_specs

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
    units = st.integers(1, max_units)
    hidden = st.lists(units, min_size=1, max_size=max_layers).map(tuple)
    head = {
        "dense_units": st.lists(units, min_size=0, max_size=min(2, max_layers)).map(tuple),
        "output_units": st.integers(1, 3),
        "output_activation": st.sampled_from(_OUTPUT_ACTIVATIONS),
    }
    spec: dict[str, Any]
    if kind == "mlp":
        spec = {
            "input_dim": draw(st.integers(1, 4)),
            "hidden_units": draw(hidden),
            "activation": draw(st.sampled_from(_ACTIVATIONS)),
            "bn": draw(st.sampled_from(placements)),
            "input_bn": draw(st.booleans()),
            "output_units": draw(head["output_units"]),
            "output_activation": draw(head["output_activation"]),
            "kernel_initializer": draw(st.sampled_from(["he_uniform", "glorot_uniform"])),
        }
    elif kind == "cnn":
        filters = draw(st.lists(st.integers(1, min(4, max_units)), min_size=1, max_size=max_layers))
        pool_every = draw(st.sampled_from([1, 2, None]))
        # Any kernel size whose smallest valid input fits; 1 always does.
        kernel_sizes = [
            k for k in (1, 2, 3) if _smallest_cnn_side(len(filters), k, pool_every) <= max_side
        ]
        kernel_size = draw(st.sampled_from(kernel_sizes))
        smallest = _smallest_cnn_side(len(filters), kernel_size, pool_every)
        spec = {
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
    else:
        spec = {
            "input_shape": (draw(st.integers(1, 5)), draw(st.integers(1, 4))),
            "units": draw(st.lists(units, min_size=1, max_size=min(2, max_layers)).map(tuple)),
            "bn": draw(st.sampled_from(placements)),
            **{key: draw(strategy) for key, strategy in head.items()},
        }
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
