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
from collections.abc import Mapping
from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.errors import InvalidArgument
from hypothesis.extra import numpy as hnp

from keras_bn_tools.testing._stack_specs import stack_specs

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


def _checked_batches_arguments(
    rows: tuple[int, int],
    features: tuple[int, int],
    ndim: int,
    sides: tuple[int, int],
    dtype: str,
    values: tuple[float, float],
    allow_degenerate: bool,
) -> tuple[float, float]:
    """`batches`'s arguments checked; returns the value bounds rounded inward to `dtype`."""
    min_rows, max_rows = rows
    min_features, max_features = features
    min_side, max_side = sides
    min_value, max_value = values
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
    return low, high


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
    low, high = _checked_batches_arguments(
        (min_rows, max_rows),
        (min_features, max_features),
        ndim,
        (min_side, max_side),
        dtype,
        (min_value, max_value),
        allow_degenerate,
    )
    np_dtype = np.dtype(str(dtype))
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
