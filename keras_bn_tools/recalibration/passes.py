"""The passes of a recalibration: which BN layers run, in what order, and their statistics.

- `call_order`: one probe batch in inference mode, the BN layers in call order;
- `exact_pass`: layer by layer, inference mode, population statistics;
- `single_pass`: every layer in one training-mode pass (fvcore's precise BN).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from keras_bn_tools.layers.interface import as_batchnorm
from keras_bn_tools.recalibration.data import BatchSource, num_rows
from keras_bn_tools.recalibration.statistics import (
    PooledBatchMoments,
    PopulationMoments,
    StopForward,
    input_moments,
    intercept,
)

__all__ = [
    "MAX_CACHE_BYTES",
    "Result",
    "TrainNormalizer",
    "call_order",
    "exact_pass",
    "is_plain",
    "misfit",
    "sequential_positions",
    "single_pass",
]

#: One layer's result: (mean, variance, values averaged, batches skipped, batches used).
Result = tuple[np.ndarray, np.ndarray, int, int, int]


def misfit(model: keras.Model, error: Exception) -> Exception:
    return type(error)(f"`data` does not fit model {model.name!r}: {error}")


def check_eager(inputs: Any, layer: keras.layers.Layer) -> None:
    """Statistics are read batch by batch: a traced call (TimeDistributed over a time
    axis of unknown length maps its layer with a vectorized, traced function) cannot be."""
    if not keras.ops.is_tensor(inputs):
        return
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = not tf.executing_eagerly()
    elif keras.backend.backend() == "jax":
        import jax

        traced = isinstance(inputs, jax.core.Tracer)
    else:
        traced = False
    if traced:
        raise ValueError(
            f"Cannot recalibrate BN layer {layer.name!r} of `model`: it is called inside a "
            "traced function (e.g. `TimeDistributed` over a time axis of unknown length, "
            "which maps it with a vectorized function). Give the time axis a fixed length "
            "in `keras.Input`, or recalibrate a model where the BN layer is not wrapped."
        )


# --------------------------------------------------------------------------- passes


def call_order(model: keras.Model, layers: list[keras.layers.Layer], batch: Any):
    """Run one batch in inference mode; return the BN layers in call order and call counts."""
    order: list[keras.layers.Layer] = []
    calls: dict[int, int] = {}
    with contextlib.ExitStack() as stack:
        for layer in layers:

            def hook(original, inputs, *args, _layer=layer, **kwargs):
                if id(_layer) not in calls:
                    order.append(_layer)
                calls[id(_layer)] = calls.get(id(_layer), 0) + 1
                return original(inputs, *args, **kwargs)

            stack.enter_context(intercept(layer, hook))
        model(batch, training=False)
    return order, calls


#: Activations a Sequential model's exact recalibration may keep in memory.
MAX_CACHE_BYTES = 1 << 30


def sequential_positions(
    model: keras.Model, order: list[keras.layers.Layer], calls: dict[int, int]
) -> list[int] | None:
    """Where each BN layer sits in a flat `Sequential`, or None if the cached path does not apply.

    It applies when every BN layer is a direct child of the Sequential model,
    called once per forward pass, in the order of `model.layers`.
    """
    if not isinstance(model, keras.Sequential):
        return None
    index = {id(layer): i for i, layer in enumerate(model.layers)}
    if any(id(layer) not in index or calls.get(id(layer)) != 1 for layer in order):
        return None
    positions = [index[id(layer)] for layer in order]
    return positions if positions == sorted(positions) else None


def exact_pass(
    model: keras.Model,
    order: list[keras.layers.Layer],
    calls: dict[int, int],
    batches: BatchSource,
    commit: Callable[[keras.layers.Layer, Result], None],
) -> tuple[int, int]:
    """Layer by layer in call order, in inference mode, each pass stopping at its layer.

    `commit` writes a layer's statistics before the next layer's pass, which
    must see them. In a flat `Sequential` the input of each BN layer is kept
    (up to `MAX_CACHE_BYTES`), so the next pass starts from it instead of from
    the data: the same layers, called the same way, on the same values, at a
    fraction of the cost. Returns (batches, samples) of one pass.
    """
    positions = sequential_positions(model, order, calls)
    cache: _Cache | None = None  # the previous BN layer's inputs and masks
    seen_batches = seen_samples = 0
    for k, layer in enumerate(order):
        moments = PopulationMoments(as_batchnorm(layer).channel_axis)
        stop_early = calls[id(layer)] == 1
        keep = _Cache() if positions is not None else None

        def hook(original, inputs, *args, _moments=moments, _stop=stop_early, _layer=layer,
                 _keep=keep, **kw):  # fmt: skip
            check_eager(inputs, _layer)
            _moments.add_batch(inputs, kw.get("mask"))
            if _keep is not None:
                _keep.add(inputs, kw.get("mask"))
            if _stop:
                raise StopForward
            return original(inputs, *args, **kw)

        with intercept(layer, hook):
            if cache is None or not cache.complete:
                seen_batches, seen_samples = _run_model(model, batches)
            else:  # start from the previous BN layer's inputs
                segment = model.layers[positions[k - 1] : positions[k] + 1]
                _run_segment(segment, cache)
        cache = keep
        if moments.mean is None:
            commit(layer, None)
        else:
            result = (moments.mean, moments.variance, round(moments.count), moments.skipped)
            commit(layer, (*result, moments.batches))
    return seen_batches, seen_samples


class _Cache:
    """A BN layer's inputs (and masks), batch by batch, up to `MAX_CACHE_BYTES`."""

    def __init__(self) -> None:
        self.items: list[tuple[Any, Any]] = []
        self.size = 0
        self.complete = True

    def add(self, inputs: Any, mask: Any) -> None:
        if not self.complete:
            return
        itemsize = np.dtype(keras.backend.standardize_dtype(inputs.dtype)).itemsize
        self.size += math.prod(inputs.shape) * itemsize
        if self.size > MAX_CACHE_BYTES:
            self.complete, self.items = False, []
        else:
            self.items.append((inputs, mask))


def _run_model(model: keras.Model, batches: BatchSource) -> tuple[int, int]:
    """Run every batch through `model` in inference mode (a hook stops it); count them."""
    seen_batches = seen_samples = 0
    for batch in batches:
        seen_batches += 1
        seen_samples += num_rows(batch)
        with contextlib.suppress(StopForward):
            model(batch, training=False)
    return seen_batches, seen_samples


def _run_segment(segment: list[keras.layers.Layer], cache: _Cache) -> None:
    """Run the previous BN layer's inputs through `segment` (previous BN ... this BN).

    The layers are called as `Sequential.call` calls them, one by one in
    inference mode; Keras passes each output's mask on to the next layer.
    """
    for hidden, mask in cache.items:
        hidden = segment[0](hidden, training=False, mask=mask)
        for inner in segment[1:]:
            with contextlib.suppress(StopForward):
                hidden = inner(hidden, training=False)


def is_plain(layer: keras.layers.Layer) -> bool:
    """A BN layer whose training-mode output is `batch_normalization` with the batch moments."""
    return as_batchnorm(layer).training_is_plain


class TrainNormalizer:
    """A plain BN layer's training-mode output, computed without updating any state.

    gamma and beta are read once, when the pass starts: a recalibration does
    not change them, and reading them per batch would copy them to the host.
    """

    def __init__(self, layer: keras.layers.Layer) -> None:
        bn = as_batchnorm(layer)
        self.axis = bn.channel_axis
        self.epsilon = bn.epsilon
        gamma, beta = bn.affine_parameters()
        # Tensors once, not a host-to-device copy per batch.
        self.gamma = None if gamma is None else keras.ops.convert_to_tensor(gamma)
        self.beta = None if beta is None else keras.ops.convert_to_tensor(beta)
        self.compute_dtype = layer.compute_dtype

    def __call__(self, inputs: Any, mask: Any) -> tuple[Any, Any, Any, Any]:
        """`(outputs, count, mean, variance)`, the batch moments with `keepdims=True`."""
        ops = keras.ops
        count, mean, variance, _ = input_moments(inputs, mask, self.axis)
        x = ops.cast(inputs, mean.dtype)
        scale = ops.rsqrt(variance + self.epsilon)
        shape = ops.shape(mean)
        if self.gamma is not None:
            scale = scale * ops.reshape(ops.cast(self.gamma, mean.dtype), shape)
        outputs = (x - mean) * scale
        if self.beta is not None:
            outputs = outputs + ops.reshape(ops.cast(self.beta, mean.dtype), shape)
        return ops.cast(outputs, self.compute_dtype), count, mean, variance


def single_pass(
    model: keras.Model, layers: list[keras.layers.Layer], batches: BatchSource
) -> tuple[dict[int, Result | None], list[keras.layers.Layer], int, int]:
    """Every layer in one training-mode pass; each pools its per-batch moments.

    Returns (layer id -> result or None when no finite batch, the layers called
    in call order, batches, samples).
    """
    pooled = {id(layer): PooledBatchMoments(as_batchnorm(layer).channel_axis) for layer in layers}
    plain = {id(layer): TrainNormalizer(layer) for layer in layers if is_plain(layer)}
    order: list[keras.layers.Layer] = []

    def hook(original, inputs, *args, _layer, _pooled, **kwargs):
        check_eager(inputs, _layer)
        if not _pooled.batches:
            order.append(_layer)
        mask = kwargs.get("mask")
        if id(_layer) in plain:
            outputs, count, mean, variance = plain[id(_layer)](inputs, mask)
            _pooled.add(mean, variance, count)
            return outputs
        bn = as_batchnorm(_layer)
        count, mean, variance, _ = input_moments(inputs, mask, bn.channel_axis)
        kwargs["training"] = True
        outputs = original(inputs, *args, **kwargs)
        # What the layer itself normalized with (ghost batches, renorm), when it keeps it.
        used = bn.last_batch_statistics()
        if used is not None:
            mean, variance = used
        _pooled.add(mean, variance, count)
        return outputs

    seen_batches = seen_samples = 0
    with contextlib.ExitStack() as stack:
        for layer in layers:
            layer_hook = bind(hook, _layer=layer, _pooled=pooled[id(layer)])
            stack.enter_context(intercept(layer, layer_hook))
        for batch in batches:
            seen_batches += 1
            seen_samples += num_rows(batch)
            try:
                model(batch, training=True)
            except (ValueError, TypeError) as error:
                if seen_batches > 1:
                    raise
                raise misfit(model, error) from error
    results: dict[int, Result | None] = {}
    for layer in order:
        mean, variance, used, skipped, values = pooled[id(layer)].result()
        results[id(layer)] = None if mean is None else (mean, variance, values, skipped, used)
    return results, order, seen_batches, seen_samples


def bind(hook: Callable[..., Any], **bound: Any) -> Callable[..., Any]:
    def bound_hook(original, inputs, *args, **kwargs):
        return hook(original, inputs, *args, **bound, **kwargs)

    return bound_hook
