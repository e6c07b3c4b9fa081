"""Assertions that hold a normalization layer to the NumPy reference.

Both call the layer eagerly and compare in float64; a failure raises
`AssertionError` whose message names the worst feature and shows the
expected and actual numbers, so a Hypothesis failure reads like a bug report.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import keras
import numpy as np

from keras_bn_tools.ops import to_numpy
from keras_bn_tools.testing.reference import (
    normalize_axes,
    reference_batchnorm,
    reference_moments,
    reference_moving_statistics,
)

__all__ = ["assert_moving_statistics", "assert_normalizes", "default_tolerances"]

# (atol, rtol) per output dtype; half precision computes the statistics in
# float32 but rounds the output.
_TOLERANCES = {
    "float64": (1e-7, 1e-6),
    "float32": (1e-4, 1e-3),
    "float16": (1e-2, 1e-2),
    "bfloat16": (3e-2, 3e-2),
}


def default_tolerances(dtype: Any) -> tuple[float, float]:
    """`(atol, rtol)` the assertions use for outputs of `dtype` (float32's for unknown ones)."""
    name = keras.backend.standardize_dtype(dtype)
    return _TOLERANCES.get(name, _TOLERANCES["float32"])


def _numpy(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    return np.asarray(to_numpy(value), dtype=np.float64)


def _layer_name(layer: Any) -> str:
    name = getattr(layer, "name", None)
    return f"{type(layer).__name__} {name!r}" if name else type(layer).__name__


def _layer_axis(layer: Any, axis: int | Sequence[int] | None) -> int | Sequence[int]:
    if axis is not None:
        return axis
    layer_axis = getattr(layer, "axis", None)
    if isinstance(layer_axis, (int, np.integer)) or (
        isinstance(layer_axis, (list, tuple)) and layer_axis
    ):
        return layer_axis
    return -1


def _fmt(value: float) -> str:
    return f"{value:.6g}"


def _feature_index(flat_index: int, shape: tuple[int, ...]) -> Any:
    index = np.unravel_index(flat_index, shape)
    return int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)


def _ratio(error: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """`error / tol`, with a zero tolerance (atol=rtol=0) meaning exact: inf for any error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tol > 0, error / tol, np.where(error > 0, np.inf, 0.0))


def _as_features_last(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`values` as `(reduced, features)`: the feature axes moved last and flattened."""
    reduce = [i for i in range(values.ndim) if i not in axes]
    moved = np.transpose(values, [*reduce, *axes])
    features = int(np.prod([values.shape[i] for i in axes]))
    return moved.reshape(-1, features)


def assert_normalizes(
    layer: Any,
    x: Any,
    *,
    axis: int | Sequence[int] | None = None,
    training: bool = True,
    atol: float | None = None,
    rtol: float | None = None,
) -> np.ndarray:
    """Assert that `layer(x, training=training)` is batch normalization of `x`.

    Calls the layer once (so in training a BN layer's moving statistics move,
    as in any training step) and compares its output with
    `reference_batchnorm`, reading `gamma`, `beta` and `epsilon` from the layer
    when it has them (`None` gamma/beta, i.e. `scale=False`/`center=False`,
    mean 1/0). Three checks, per feature:

    - the output mean equals the reference's (`beta` in training);
    - the output standard deviation equals the reference's
      (`|gamma| * sqrt(var / (var + epsilon))` in training, with the biased
      batch variance `var`);
    - every output element equals the reference's.

    In inference (`training=False`) the reference uses the layer's
    `moving_mean` and `moving_variance`. A layer with `trainable=False` is
    held to inference behaviour even with `training=True`, as Keras's own BN
    is. A layer whose `virtual_batch_size` (ghost batches) is smaller than
    the batch normalizes each ghost batch separately, in an order this check
    cannot know; then only the grouping-independent properties are checked:
    the output mean equals `beta` and the output std is at most `|gamma|`.

    Args:
        layer: a Keras layer (any callable taking `training=` works).
        x: the input batch, array-like, at least two rows.
        axis: the feature axis (or axes); default: the layer's `axis`
            attribute, else -1.
        training: which mode to call the layer in.
        atol: absolute tolerance; default by output dtype (float32: 1e-4).
        rtol: relative tolerance; default by output dtype (float32: 1e-3).
            Mean and element errors are relative to the feature's output
            scale (`max|output - beta| + |beta|`), std errors to the std.

    Returns:
        The layer's output as a NumPy array.

    Raises:
        AssertionError: when the output is not batch normalization of `x`;
            the message names the worst feature with expected and actual
            mean and std.

    Example:
        ```python
        import keras
        import numpy as np
        from keras_bn_tools.testing import assert_normalizes

        x = np.random.default_rng(0).normal(3.0, 2.0, size=(32, 4)).astype("float32")
        assert_normalizes(keras.layers.BatchNormalization(), x)
        ```
    """
    x = np.asarray(x)
    if x.ndim < 2 or x.shape[0] < 2:
        raise ValueError(f"`x` must have at least two rows and two axes, got shape {x.shape}.")
    output = layer(x, training=training)
    out_dtype = getattr(output, "dtype", np.float32)
    default_atol, default_rtol = default_tolerances(out_dtype)
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    returned = to_numpy(output)
    y = returned.astype(np.float64)
    name = _layer_name(layer)
    if y.shape != x.shape:
        raise AssertionError(
            f"{name} changed the shape of its input: got {y.shape}, expected {x.shape}."
        )

    axes = normalize_axes(_layer_axis(layer, axis), x.ndim)
    epsilon = float(getattr(layer, "epsilon", 1e-3))
    gamma = _numpy(getattr(layer, "gamma", None)) if getattr(layer, "scale", True) else None
    beta = _numpy(getattr(layer, "beta", None)) if getattr(layer, "center", True) else None
    batch_mode = bool(training) and bool(getattr(layer, "trainable", True))
    ghost = getattr(layer, "virtual_batch_size", None)
    ghost = batch_mode and ghost is not None and int(ghost) < x.shape[0]

    if batch_mode:
        reference = reference_batchnorm(x, axis=axes, gamma=gamma, beta=beta, epsilon=epsilon)
    else:
        moving_mean = _numpy(getattr(layer, "moving_mean", None))
        moving_variance = _numpy(getattr(layer, "moving_variance", None))
        if moving_mean is None or moving_variance is None:
            raise ValueError(
                f"{name} has no `moving_mean`/`moving_variance`, needed to check inference "
                "(training=False, or trainable=False)."
            )
        reference = reference_batchnorm(
            x,
            axis=axes,
            gamma=gamma,
            beta=beta,
            epsilon=epsilon,
            training=False,
            moving_mean=moving_mean,
            moving_variance=moving_variance,
        )

    features_shape = tuple(x.shape[i] for i in axes)
    y2 = _as_features_last(y, axes)
    ref2 = _as_features_last(reference, axes)
    n_features = y2.shape[1]
    beta_vec = (
        np.zeros(n_features) if beta is None else np.broadcast_to(beta.reshape(-1), (n_features,))
    )
    gamma_vec = (
        np.ones(n_features) if gamma is None else np.broadcast_to(gamma.reshape(-1), (n_features,))
    )
    batch_mean, batch_var = reference_moments(x, axis=axes)

    if not np.all(np.isfinite(y2)):
        bad = np.flatnonzero(~np.all(np.isfinite(y2), axis=0))
        raise AssertionError(
            f"{name} returned non-finite values (training={training}) for features "
            f"{[_feature_index(int(i), features_shape) for i in bad]} of an input with "
            f"finite values (shape {x.shape})."
        )

    scale = np.max(np.abs(ref2 - beta_vec), axis=0) + np.abs(beta_vec)
    mean_tol = atol + rtol * scale
    actual_mean, actual_std = y2.mean(axis=0), y2.std(axis=0)
    expected_mean, expected_std = ref2.mean(axis=0), ref2.std(axis=0)
    if batch_mode:
        expected_mean = beta_vec.copy()  # the reference's mean, without its round-off
    if ghost:
        std_tol = atol + rtol * np.abs(gamma_vec)
        std_error = np.maximum(actual_std - np.abs(gamma_vec), 0.0)
        element_error = np.zeros(n_features)
        element_tol = np.ones(n_features)
    else:
        std_tol = atol + rtol * expected_std
        std_error = np.abs(actual_std - expected_std)
        element_error = np.max(np.abs(y2 - ref2), axis=0)
        element_tol = atol + rtol * scale
    mean_error = np.abs(actual_mean - expected_mean)
    # How far past its tolerance each feature is; > 1 fails.
    badness = np.maximum.reduce(
        [
            _ratio(mean_error, mean_tol),
            _ratio(std_error, std_tol),
            _ratio(element_error, element_tol),
        ]
    )
    if np.all(badness <= 1.0):
        return returned

    worst = int(np.argmax(badness))
    failing = [_feature_index(int(i), features_shape) for i in np.flatnonzero(badness > 1.0)]
    mode = "batch statistics" if batch_mode else "moving statistics"

    def verdict(error: float, tol: float) -> str:
        return f"|diff| {_fmt(error)} {'>' if error > tol else '<='} tol {_fmt(tol)}"

    if batch_mode:
        mean_source = "beta"
        std_source = "|gamma| * sqrt(var / (var + epsilon))" if not ghost else "ghost batches"
    else:
        mean_source = std_source = "reference with the moving statistics"
    lines = [
        f"{name} does not batch-normalize its input ({mode}, training={training}): "
        f"input shape {x.shape}, feature axis {axes}, {len(failing)} of {n_features} "
        f"feature(s) off: {failing[:10]}{' ...' if len(failing) > 10 else ''}.",
        f"Worst feature {_feature_index(worst, features_shape)}: batch mean "
        f"{_fmt(batch_mean[worst])}, batch var {_fmt(batch_var[worst])}, gamma "
        f"{_fmt(gamma_vec[worst])}, beta {_fmt(beta_vec[worst])}, epsilon {_fmt(epsilon)}",
        f"  output mean: expected {_fmt(expected_mean[worst])} ({mean_source}), got "
        f"{_fmt(actual_mean[worst])}  [{verdict(mean_error[worst], mean_tol[worst])}]",
    ]
    if ghost:
        lines.append(
            f"  output std:  expected at most {_fmt(abs(gamma_vec[worst]))} ({std_source}), "
            f"got {_fmt(actual_std[worst])}"
        )
    else:
        lines.append(
            f"  output std:  expected {_fmt(expected_std[worst])} ({std_source}), got "
            f"{_fmt(actual_std[worst])}  [{verdict(std_error[worst], std_tol[worst])}]"
        )
        row = int(np.argmax(np.abs(y2[:, worst] - ref2[:, worst])))
        lines.append(
            f"  largest element error: expected {_fmt(ref2[row, worst])}, got "
            f"{_fmt(y2[row, worst])}  [{verdict(element_error[worst], element_tol[worst])}]"
        )
    raise AssertionError("\n".join(lines))


def _close(actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float, scale: np.ndarray):
    return np.abs(actual - expected) <= atol + rtol * scale


def assert_moving_statistics(
    layer: Any,
    batches: Iterable[Any],
    *,
    momentum: float | str | None = "layer",
    axis: int | Sequence[int] | None = None,
    atol: float | None = None,
    rtol: float | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Assert that training on `batches` moves the layer's moving statistics as Keras does.

    Calls `layer(batch, training=True)` for each batch and checks, after each
    one, `moving_mean` and `moving_variance` against
    `reference_moving_statistics`: `moving = momentum * moving + (1 -
    momentum) * batch_statistic` with the biased batch variance, or, with
    `momentum=None`, the cumulative average since the last reset (counting
    the layer's `num_batches_tracked`, if any). A layer with
    `trainable=False` must leave them unchanged.

    Not for layers with bias-corrected (`debias=True`) averages or with ghost
    batches smaller than a batch, whose stored statistics follow other rules;
    those raise `ValueError`.

    Args:
        layer: a Keras BN-like layer with `moving_mean` and `moving_variance`.
        batches: the training batches, in order (array-likes).
        momentum: the momentum to expect; default: the layer's `momentum`.
        axis: the feature axis; default: the layer's `axis`, else -1.
        atol: absolute tolerance; default by the statistics' dtype.
        rtol: relative tolerance; default by the statistics' dtype.

    Returns:
        The layer's `(moving_mean, moving_variance)` after each batch.

    Raises:
        AssertionError: naming the batch, statistic and worst feature, with
            the expected and actual values (and a hint when the values match
            a known bug: momentum the wrong way round, unbiased variance).

    Example:
        ```python
        import keras
        import numpy as np
        from keras_bn_tools.testing import assert_moving_statistics

        rng = np.random.default_rng(0)
        data = [rng.normal(size=(16, 3)).astype("float32") for _ in range(3)]
        assert_moving_statistics(keras.layers.BatchNormalization(momentum=0.9), data)
        ```
    """
    batches = [np.asarray(b) for b in batches]
    if not batches:
        raise ValueError("`batches` must hold at least one batch.")
    name = _layer_name(layer)
    if not getattr(layer, "built", True):
        layer(batches[0], training=False)  # builds without touching the statistics
    if getattr(layer, "debias", False):
        raise ValueError(f"{name} uses debias=True; assert_moving_statistics does not model it.")
    ghost = getattr(layer, "virtual_batch_size", None)
    if ghost is not None and any(int(ghost) < b.shape[0] for b in batches):
        raise ValueError(
            f"{name} uses ghost batches (virtual_batch_size={ghost}) smaller than the batches; "
            "assert_moving_statistics does not model them."
        )
    if momentum == "layer":
        momentum = getattr(layer, "momentum", None)
    for stat in ("moving_mean", "moving_variance"):
        if getattr(layer, stat, None) is None:
            raise TypeError(f"{name} has no `{stat}` to check.")
    axes = normalize_axes(_layer_axis(layer, axis), batches[0].ndim)
    default_atol, default_rtol = default_tolerances(layer.moving_mean.dtype)
    atol = default_atol if atol is None else float(atol)
    rtol = default_rtol if rtol is None else float(rtol)
    trainable = bool(getattr(layer, "trainable", True))
    tracked = getattr(layer, "num_batches_tracked", None)
    tracked = 0 if tracked is None else int(to_numpy(tracked))

    previous = (_numpy(layer.moving_mean).reshape(-1), _numpy(layer.moving_variance).reshape(-1))
    history = []
    for index, batch in enumerate(batches):
        layer(batch, training=True)
        actual = (_numpy(layer.moving_mean).reshape(-1), _numpy(layer.moving_variance).reshape(-1))
        history.append(actual)
        if trainable:
            expected = reference_moving_statistics(
                [batch],
                momentum,
                axis=axes,
                moving_mean=previous[0],
                moving_variance=previous[1],
                num_batches_tracked=tracked + index,
            )[0]
        else:
            expected = previous
        batch_stats = reference_moments(batch, axis=axes)
        for k, stat in enumerate(("moving_mean", "moving_variance")):
            scale = np.maximum.reduce(
                [np.abs(expected[k]), np.abs(previous[k]), np.abs(batch_stats[k])]
            )
            ok = _close(actual[k], expected[k], atol, rtol, scale)
            if ok.all():
                continue
            error = _ratio(np.abs(actual[k] - expected[k]), atol + rtol * scale)
            worst = int(np.argmax(error))
            rule = (
                "unchanged: the layer is not trainable"
                if not trainable
                else "cumulative average"
                if momentum is None
                else f"{momentum} * previous + (1 - {momentum}) * batch"
            )
            lines = [
                f"{name}: `{stat}` is wrong after batch {index + 1} of {len(batches)} "
                f"(momentum={momentum}, batch shape {batch.shape}); "
                f"{int((~ok).sum())} feature(s) off.",
                f"Worst feature {worst}: previous {_fmt(previous[k][worst])}, batch "
                f"{'mean' if k == 0 else 'variance (biased)'} {_fmt(batch_stats[k][worst])}",
                f"  expected {_fmt(expected[k][worst])} ({rule}), got {_fmt(actual[k][worst])}",
            ]
            if trainable and momentum is not None:
                swapped = (1.0 - momentum) * previous[k] + momentum * batch_stats[k]
                if _close(actual[k], swapped, atol, rtol, scale).all():
                    lines.append(
                        "  hint: matches momentum the wrong way round "
                        "(moving = momentum * batch + (1 - momentum) * moving)"
                    )
                if k == 1:
                    n = batch.size // batch_stats[1].size
                    unbiased = batch_stats[1] * n / max(n - 1, 1)
                    guess = momentum * previous[1] + (1.0 - momentum) * unbiased
                    if n > 1 and _close(actual[k], guess, atol, rtol, scale).all():
                        lines.append("  hint: matches the unbiased (n - 1) batch variance")
            raise AssertionError("\n".join(lines))
        previous = actual
    return history
