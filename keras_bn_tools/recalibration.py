"""Precise batch normalization: recompute BN moving statistics exactly.

During training a BN layer keeps an exponential moving average of the batch
statistics it saw, under weights that kept changing. `recalibrate_batchnorm`
replaces that estimate with the exact population mean and (biased, ddof=0)
variance of each BN layer's input over a data set, under the final weights:
the "precise BN" of Wu & Johnson (2021) and fvcore's `update_bn_stats`.

Algorithm. fvcore runs the data through the model in *training* mode, so the
input of BN layer k is computed with the *batch* statistics of the BN layers
before it, and it averages per-batch variances (which is not the population
variance). Here every statistic is the one inference will see instead:

1. One probe batch finds the order in which the BN layers are actually called.
2. For each BN layer k in that order, the data is run through the model in
   inference mode (`training=False`), so Dropout is off and the BN layers
   before k already use their *new* statistics. Layer k's `call` is
   intercepted to accumulate the mean and variance of its input, and the
   forward pass stops right there (the rest of the model is not run).
3. Per batch, the mean and the two-pass variance over every axis but the
   feature axis are computed with backend ops in (at least) float32, on the
   data minus the first batch's mean (so round-off scales with the spread of
   the data, not its offset); batches are merged in float64 NumPy with
   Chan et al.'s parallel update, so the result is the population variance
   over all samples (ddof=0), not an average of per-batch variances.
   Masked positions are excluded, as in Keras's BN layer.

With K BN layers the data is read K times (pass k stops after layer k), plus
one probe batch; a one-shot iterator or generator is cached in memory on
first use (bounded by `num_batches`).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import sys
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np

from keras_bn_tools._model_utils import batchnorm_layers, layer_keys
from keras_bn_tools._validation import check_positive_int

__all__ = ["RecalibrationReport", "recalibrate_batchnorm"]


# --------------------------------------------------------------------------- data


def _is_tf_dataset(data: Any) -> bool:
    tf = sys.modules.get("tensorflow")
    return tf is not None and isinstance(data, tf.data.Dataset)


def _is_array(x: Any) -> bool:
    return hasattr(x, "shape") and hasattr(x, "__getitem__") and len(x.shape) >= 1


def _inputs_of(element: Any) -> Any:
    """The model inputs in one data element: `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`."""
    if isinstance(element, (tuple, list)):
        if not 1 <= len(element) <= 3:
            raise ValueError(
                "Each data element must be `x`, `(x,)`, `(x, y)` or `(x, y, sample_weight)`; "
                f"got a {type(element).__name__} of length {len(element)}. For a model with "
                "several inputs, pass them as a dict or as the first item of a tuple."
            )
        return element[0]
    return element


class _Batches:
    """A re-iterable source of input batches, at most `num_batches` of them.

    In-memory arrays (`x`, `(x, y)`, a dict of arrays) are sliced into
    `batch_size` rows; a `tf.data.Dataset`, a `keras.utils.PyDataset` or any
    re-iterable is read again on each pass; a one-shot iterator is cached on
    the first pass.
    """

    def __init__(self, data: Any, batch_size: int, num_batches: int | None):
        self._num_batches = num_batches
        self._arrays = None
        self._iterable: Callable[[], Iterator[Any]] | None = None
        self._cache: list[Any] | None = None
        self._one_shot: Iterator[Any] | None = None

        if data is None or (hasattr(data, "shape") and len(data.shape) == 0):
            raise ValueError(f"`data` must hold a batch dimension; got {data!r}.")
        x = data
        if isinstance(data, (tuple, list)):
            x = _inputs_of(data)
        leaves = keras.tree.flatten(x) if isinstance(x, (dict, tuple, list)) else [x]
        if leaves and all(_is_array(leaf) for leaf in leaves):
            sizes = {int(leaf.shape[0]) for leaf in leaves}
            if len(sizes) != 1:
                raise ValueError(
                    f"All input arrays must have the same length; got {sorted(sizes)}."
                )
            self._arrays = x
            self._size = sizes.pop()
            self._batch_size = batch_size
            if self._size == 0:
                raise ValueError("`data` is empty: the input arrays have 0 samples.")
        elif isinstance(data, keras.utils.PyDataset):
            self._iterable = lambda: self._from_py_dataset(data)
        elif _is_tf_dataset(data) or hasattr(data, "__iter__"):
            if iter(data) is data:  # a generator or another one-shot iterator
                self._one_shot = data
                self._cache = []
            else:
                self._iterable = lambda: (_inputs_of(element) for element in data)
        else:
            raise TypeError(
                "`data` must be a NumPy array or tensor, a tuple `(x, y)`, a dict of arrays, a "
                f"tf.data.Dataset, a keras.utils.PyDataset or an iterable of batches; got "
                f"{type(data).__name__}."
            )

    @staticmethod
    def _from_py_dataset(dataset: keras.utils.PyDataset) -> Iterator[Any]:
        count = getattr(dataset, "num_batches", None)
        indices = range(count) if count is not None else itertools.count()
        for index in indices:
            try:
                element = dataset[index]
            except IndexError:
                if count is not None:
                    raise
                return
            yield _inputs_of(element)

    def _raw(self) -> Iterator[Any]:
        if self._arrays is not None:
            for start in range(0, self._size, self._batch_size):
                stop = start + self._batch_size
                yield keras.tree.map_structure(
                    lambda a, start=start, stop=stop: a[start:stop], self._arrays
                )
        elif self._iterable is not None:
            yield from self._iterable()
        else:  # one-shot: replay the cache, then keep reading (and caching) the iterator
            yield from self._cache
            for element in self._one_shot:
                batch = _inputs_of(element)
                self._cache.append(batch)
                yield batch

    def __iter__(self) -> Iterator[Any]:
        for index, batch in enumerate(self._raw()):
            if self._num_batches is not None and index >= self._num_batches:
                return
            yield batch


def _num_rows(batch: Any) -> int:
    leaves = keras.tree.flatten(batch)
    return int(leaves[0].shape[0]) if leaves else 0


# --------------------------------------------------------------------------- statistics


class _PopulationMoments:
    """Exact mean and population variance (ddof=0) of a BN layer's input, batch by batch.

    Per batch, the mean and the two-pass variance of `x - shift` are computed
    with backend ops in (at least) float32, where `shift` is the first batch's
    mean: subtracting a value close to the data keeps the float32 round-off
    relative to the spread of the data rather than to its offset. Batches are
    merged in float64 with Chan et al.'s parallel update.
    """

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.count = 0.0
        self.mean: np.ndarray | None = None
        self.m2: np.ndarray | None = None
        self._shift = None
        self._shift64: np.ndarray | None = None

    def add_batch(self, inputs: Any, mask: Any = None) -> None:
        ops = keras.ops
        x = ops.convert_to_tensor(inputs)
        x = ops.cast(x, keras.backend.result_type(x.dtype, "float32"))
        rank = len(x.shape)
        axes = tuple(i for i in range(rank) if i != self.axis % rank)
        if mask is None:
            weights = None
            count = float(math.prod(int(x.shape[i]) for i in axes))
        else:  # Keras's BN convention: the mask has one dimension less, broadcast on the last axis.
            weights = ops.broadcast_to(ops.expand_dims(ops.cast(mask, x.dtype), -1), ops.shape(x))
            total = ops.sum(weights, axis=axes, keepdims=True)
            count = float(ops.convert_to_numpy(ops.max(total)))
        if count == 0:
            return

        def average(values):
            if weights is None:
                return ops.mean(values, axis=axes, keepdims=True)
            return ops.sum(values * weights, axis=axes, keepdims=True) / total

        if self._shift is None:
            self._shift = average(x)
            self._shift64 = _float64(ops.squeeze(self._shift, axes))
        centered = x - self._shift
        mean = average(centered)
        variance = average(ops.square(centered - mean))
        self._merge(
            count,
            self._shift64 + _float64(ops.squeeze(mean, axes)),
            _float64(ops.squeeze(variance, axes)),
        )

    def _merge(self, count: float, mean: np.ndarray, variance: np.ndarray) -> None:
        if self.mean is None:
            self.count, self.mean, self.m2 = count, mean, variance * count
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean = self.mean + delta * (count / total)
        self.m2 = self.m2 + variance * count + delta * delta * (self.count * count / total)
        self.count = total

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / self.count


def _float64(tensor: Any) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(tensor), dtype=np.float64)


class _StopForward(Exception):
    """Raised inside an intercepted BN call to end a forward pass early."""


@contextlib.contextmanager
def _intercept(layer: keras.layers.Layer, hook: Callable[..., Any]):
    """Temporarily route `layer.call(inputs, ...)` through `hook(original, inputs, ...)`."""
    original = layer.call
    previous = vars(layer).get("call", None)

    def call(inputs, *args, **kwargs):
        return hook(original, inputs, *args, **kwargs)

    object.__setattr__(layer, "call", call)
    try:
        yield
    finally:
        if previous is None:
            object.__delattr__(layer, "call")
        else:
            object.__setattr__(layer, "call", previous)


def _call_order(
    model: keras.Model, layers: list[keras.layers.Layer], batch: Any
) -> tuple[list[keras.layers.Layer], dict[int, int]]:
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

            stack.enter_context(_intercept(layer, hook))
        model(batch, training=False)
    return order, calls


# --------------------------------------------------------------------------- report


class RecalibrationReport(dict):
    """What `recalibrate_batchnorm` changed: a dict of layer key -> per-layer dict.

    Each per-layer dict holds:

    - `num_values`: how many values per feature were averaged (samples x
      positions, masked positions excluded);
    - `old_mean`, `new_mean`, `old_variance`, `new_variance`: float64 arrays;
    - `mean_max_abs_change`: max |new_mean - old_mean| over features;
    - `mean_max_shift_in_std`: max |new_mean - old_mean| / sqrt(old_variance + epsilon),
      the shift in units of the old standard deviation;
    - `variance_max_abs_change`: max |new_variance - old_variance|;
    - `variance_max_rel_change`: max |new_variance - old_variance| / (old_variance + epsilon).

    Attributes:
        num_batches: batches read per pass.
        num_samples: samples (rows) in those batches.
    """

    num_batches: int = 0
    num_samples: int = 0

    def table(self) -> str:
        """A plain-text table, one row per BN layer."""
        header = (
            "layer",
            "features",
            "values",
            "max|dmean|",
            "max|dmean|/std",
            "max|dvar|",
            "max|dvar|/var",
        )
        rows = [header]
        for key, item in self.items():
            rows.append(
                (
                    key,
                    str(item["new_mean"].size),
                    str(item["num_values"]),
                    f"{item['mean_max_abs_change']:.4g}",
                    f"{item['mean_max_shift_in_std']:.4g}",
                    f"{item['variance_max_abs_change']:.4g}",
                    f"{item['variance_max_rel_change']:.4g}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        title = (
            f"BN recalibration over {self.num_samples} samples in {self.num_batches} batches "
            f"({len(self)} layer{'s' if len(self) != 1 else ''}):"
        )
        return f"{title}\n{self.table()}"

    def __repr__(self) -> str:
        return f"<RecalibrationReport layers={list(self)} num_samples={self.num_samples}>"


def _shift_entry(
    old_mean: np.ndarray, old_var: np.ndarray, moments: _PopulationMoments, epsilon: float
) -> dict[str, Any]:
    new_mean, new_var = moments.mean, moments.variance
    d_mean, d_var = np.abs(new_mean - old_mean), np.abs(new_var - old_var)
    return {
        "num_values": round(moments.count),
        "old_mean": old_mean,
        "new_mean": new_mean,
        "old_variance": old_var,
        "new_variance": new_var,
        "mean_max_abs_change": float(d_mean.max(initial=0.0)),
        "mean_max_shift_in_std": float((d_mean / np.sqrt(old_var + epsilon)).max(initial=0.0)),
        "variance_max_abs_change": float(d_var.max(initial=0.0)),
        "variance_max_rel_change": float((d_var / (old_var + epsilon)).max(initial=0.0)),
    }


# --------------------------------------------------------------------------- main entry


def _assign(variable: Any, value: np.ndarray) -> None:
    variable.assign(np.asarray(value, dtype=keras.backend.standardize_dtype(variable.dtype)))


def _hidden_state(layer: keras.layers.Layer) -> list[Any]:
    """`MomentumBatchNormalization(debias=True)`'s raw averages and bias correction."""
    if not getattr(layer, "debias", False):
        return []
    names = ("_biased_moving_mean", "_biased_moving_second", "_bias_correction")
    return [getattr(layer, name) for name in names if getattr(layer, name, None) is not None]


def _statistic_variables(layer: keras.layers.Layer) -> list[Any]:
    """Every variable recalibration writes (for the backup)."""
    found = [layer.moving_mean, layer.moving_variance]
    if getattr(layer, "renorm", False) and getattr(layer, "moving_stddev", None) is not None:
        found.append(layer.moving_stddev)
    return found + _hidden_state(layer)


def _set_statistics(layer: keras.layers.Layer, mean: np.ndarray, variance: np.ndarray) -> None:
    # MomentumBatchNormalization keeps hidden state (debias averages, renorm
    # stddev) that must agree with the published statistics; it knows how.
    if hasattr(layer, "set_moving_statistics"):
        layer.set_moving_statistics(mean, variance)
        return
    _assign(layer.moving_mean, mean)
    _assign(layer.moving_variance, variance)
    # Keras's batch renormalization derives moving_variance from moving_stddev
    # at each training step; keep the two consistent.
    if getattr(layer, "renorm", False) and getattr(layer, "moving_stddev", None) is not None:
        _assign(layer.moving_stddev, np.sqrt(variance + layer.epsilon))


def recalibrate_batchnorm(
    model: keras.Model,
    data: Any,
    *,
    num_batches: int | None = None,
    batch_size: int = 32,
) -> RecalibrationReport:
    """Replace every BN layer's moving mean/variance with exact population statistics.

    For each BN layer, in call order, the data is run through `model` in
    inference mode with the earlier BN layers already recalibrated, and the
    layer's `moving_mean` / `moving_variance` become the mean and population
    variance (ddof=0) of its input over all samples and positions (masked
    positions excluded). Trainable weights and every other layer are left
    untouched; if anything fails, the old statistics are restored.

    Works for Keras's `BatchNormalization`, `MomentumBatchNormalization`,
    Sequential, functional and nested models. BN layers that the forward pass
    never calls are left alone (with a warning); a BN layer called several
    times per forward pass gets the statistics of all its inputs together.

    Args:
        model: a Keras model with at least one BN layer.
        data: NumPy arrays or tensors (`x`, `(x, y)`, `(x, y, sample_weight)`,
            or a dict of input arrays), sliced into `batch_size` rows; or a
            batched `tf.data.Dataset`, a `keras.utils.PyDataset`, or any
            iterable of batches (`x` or `(x, y[, sample_weight])`). A one-shot
            iterator or generator is cached in memory so that every layer sees
            the same samples; a re-iterable source is read once per BN layer,
            so it should yield the same samples each time (no random
            augmentation; with `num_batches`, no reshuffling).
        num_batches: use at most this many batches (default: all of `data`).
        batch_size: rows per batch for in-memory arrays (ignored otherwise).
            Population statistics do not depend on it; larger is faster.

    Returns:
        A `RecalibrationReport`: layer key -> how far the statistics moved.
        `print(report)` shows a table.

    Raises:
        ValueError: if `model` has no BN layer, `data` yields no samples, or
            `num_batches`/`batch_size` is below 1.
        TypeError: if `data` is of an unsupported type, or `num_batches` /
            `batch_size` is not an integer.
    """
    num_batches = check_positive_int("num_batches", num_batches, allow_none=True)
    batch_size = check_positive_int("batch_size", batch_size)
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            f"Model {model.name!r} has no batch normalization layer: nothing to recalibrate."
        )
    keys = dict(zip(map(id, layers), layer_keys(layers), strict=True))
    # RecalibrateBatchNorm passes a _Batches, so a generator's cache outlives one call.
    batches = data if isinstance(data, _Batches) else _Batches(data, batch_size, num_batches)
    first = next(iter(batches), None)
    if first is None or _num_rows(first) == 0:
        raise ValueError("`data` yielded no samples: cannot compute population statistics.")

    if not model.built:
        model(first, training=False)
    order, calls = _call_order(model, layers, first)
    skipped = [keys[id(layer)] for layer in layers if id(layer) not in calls]
    if skipped:
        warnings.warn(
            f"BN layers {skipped} are not called by a forward pass of {model.name!r}; "
            "their statistics were left unchanged.",
            stacklevel=2,
        )
    backup = [
        (v, keras.ops.convert_to_numpy(v)) for layer in order for v in _statistic_variables(layer)
    ]

    report = RecalibrationReport()
    try:
        for layer in order:
            moments = _PopulationMoments(layer.axis)
            stop_early = calls[id(layer)] == 1

            def hook(original, inputs, *args, _moments=moments, _stop=stop_early, **kwargs):
                _moments.add_batch(inputs, kwargs.get("mask"))
                if _stop:
                    raise _StopForward
                return original(inputs, *args, **kwargs)

            seen_batches = seen_samples = 0
            with _intercept(layer, hook):
                for batch in batches:
                    seen_batches += 1
                    seen_samples += _num_rows(batch)
                    with contextlib.suppress(_StopForward):
                        model(batch, training=False)
            if moments.count == 0:
                raise ValueError(
                    f"`data` gave BN layer {keys[id(layer)]!r} no unmasked values: cannot "
                    "compute population statistics."
                )
            old_mean, old_var = _float64(layer.moving_mean), _float64(layer.moving_variance)
            _set_statistics(layer, moments.mean, moments.variance)
            report[keys[id(layer)]] = _shift_entry(old_mean, old_var, moments, layer.epsilon)
            report.num_batches, report.num_samples = seen_batches, seen_samples
    except BaseException:
        for variable, value in backup:
            variable.assign(value)
        raise
    return report
