"""`recalibrate_batchnorm`: exact (layer by layer) or single-pass (fvcore) precise BN."""

from __future__ import annotations

import warnings
from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import check_choice, check_positive_int
from keras_bn_tools.graph import batchnorm_layers, layer_keys, num_inputs
from keras_bn_tools.layers.interface import as_batchnorm
from keras_bn_tools.ops import to_numpy
from keras_bn_tools.recalibration.data import BatchSource, num_rows
from keras_bn_tools.recalibration.passes import (
    Result,
    call_order,
    exact_pass,
    is_plain,
    misfit,
    single_pass,
)
from keras_bn_tools.recalibration.report import RecalibrationReport, shift_entry

__all__ = ["METHODS", "recalibrate_batchnorm"]

METHODS = ("exact", "single_pass")


# --------------------------------------------------------------------------- checks


def _check_batched(model: keras.Model, batch: Any, source: BatchSource) -> None:
    """Refuse unbatched data (e.g. a tf.data.Dataset without `.batch()`) with a hint."""
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return
    leaves = keras.tree.flatten(batch)
    if not inputs or len(inputs) != len(leaves):
        return
    ranks = [
        len(leaf.shape) - len(tensor.shape) for tensor, leaf in zip(inputs, leaves, strict=True)
    ]
    if any(rank != -1 for rank in ranks):
        return
    hint = (
        " Call `.batch(batch_size)` on the tf.data.Dataset."
        if source.is_tf_dataset
        else " Each element must be a batch of samples."
    )
    raise ValueError(
        f"`data` yields unbatched elements: an element has shape {tuple(leaves[0].shape)} but "
        f"model {model.name!r} takes inputs of shape {tuple(inputs[0].shape)} (batch axis "
        f"first).{hint}"
    )


# --------------------------------------------------------------------------- backup


def _backup(model: keras.Model, layers: list[keras.layers.Layer]) -> list[tuple[Any, np.ndarray]]:
    """Every non-trainable variable a recalibration may touch, with its value."""
    variables = {id(v): v for v in model.non_trainable_variables}
    for layer in layers:
        variables.update({id(v): v for v in layer.non_trainable_variables})
    return [(v, to_numpy(v)) for v in variables.values()]


def _restore(backup: list[tuple[Any, np.ndarray]]) -> None:
    for variable, value in backup:
        variable.assign(value)


# --------------------------------------------------------------------------- entry point


def recalibrate_batchnorm(
    model: keras.Model,
    data: Any,
    *,
    num_batches: int | None = None,
    batch_size: int = 32,
    method: str = "exact",
) -> RecalibrationReport:
    """Replace every BN layer's moving mean/variance with statistics recomputed over `data`.

    `method="exact"` (default): for each BN layer, in call order, the data is
    run through `model` in inference mode with the earlier BN layers already
    recalibrated, and the layer's statistics become the mean and population
    variance (ddof=0) of its input over all samples and positions: exactly
    what inference will see. The data is read once per BN layer (each pass
    stops at its layer).

    `method="single_pass"`: fvcore's precise BN (`update_bn_stats` with its
    population-variance estimator). The data is run once through `model` in
    *training* mode (batch statistics in every BN layer, Dropout on), and each
    layer's per-batch means and (biased) variances are pooled as one
    population: every batch weighted by its number of values, the spread of
    the batch means included. A BN layer that sees the data itself (the
    model's first layer) gets exactly the population statistics of the data,
    whatever the batch sizes; a later layer's input is computed with the
    earlier layers' batch statistics rather than their new moving ones, which
    is what makes it cheaper than `"exact"` and not identical to it.

    Trainable weights and every other layer are left untouched; if anything
    fails, every statistic is restored. A batch whose statistics at a layer
    are not finite (NaN or inf in the data, overflow) is left out of that
    layer's statistics, with a warning, and counted in the report; a layer
    left with no finite batch is an error. Works for Keras's
    `BatchNormalization`, `MomentumBatchNormalization`, Sequential, functional
    and nested models and BN inside `keras.layers.TimeDistributed` (whose
    time axis must have a fixed length). BN layers that the forward pass never
    calls are left alone (with a warning); a BN layer called several times per
    forward pass gets the statistics of all its inputs together.

    Args:
        model: a Keras model with at least one BN layer.
        data: NumPy arrays or tensors (`x`, `(x, y)`, `(x, y, sample_weight)`,
            or a dict of input arrays), sliced into `batch_size` rows; a list
            of batches (a list is never read as `[x, y]`), except that for a
            model with `k >= 2` inputs a list of exactly `k` arrays is the
            inputs `[x1, ..., xk]`, as `fit` reads it (the rule is decided by
            the model's number of inputs); a batched
            `tf.data.Dataset`, a `keras.utils.PyDataset`, or any iterable of
            batches (`x` or `(x, y[, sample_weight])`); or a `BatchSource`. A
            one-shot iterator or generator is cached in memory for
            `method="exact"` so that every layer sees the same samples; a
            re-iterable source is read once per BN layer, so it should yield
            the same samples each time (no random augmentation; with
            `num_batches`, no reshuffling).
        num_batches: use at most this many batches (default: all of `data`;
            required for an endless source).
        batch_size: rows per batch for in-memory arrays (ignored otherwise).
            Exact statistics do not depend on it; larger is faster.
        method: `"exact"` or `"single_pass"`.

    Returns:
        A `RecalibrationReport`: layer key -> how far the statistics moved.
        `print(report)` shows a table.

    Raises:
        ValueError: if `model` has no BN layer, `data` yields no samples, is
            unbatched or endless without `num_batches`, a layer gets no finite
            batch, or `num_batches`/`batch_size` is below 1 or `method` unknown.
        TypeError: if `model` is not a Keras model, `data` is of an
            unsupported type, or `num_batches` / `batch_size` is not an integer.

    Example:
        ```python
        import keras, numpy as np
        from keras_bn_tools import recalibrate_batchnorm

        model = keras.Sequential([keras.Input((3,)), keras.layers.BatchNormalization()])
        x = np.random.default_rng(0).normal(2.0, 3.0, size=(64, 3)).astype("float32")
        report = recalibrate_batchnorm(model, x, method="single_pass")
        print(report)
        ```
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {type(model).__name__}.")
    method = check_choice("method", method, METHODS)
    num_batches = check_positive_int("num_batches", num_batches, allow_none=True)
    batch_size = check_positive_int("batch_size", batch_size)
    layers = batchnorm_layers(model)
    if not layers:
        raise ValueError(
            f"`model` {model.name!r} has no batch normalization layer: nothing to recalibrate."
        )
    keys = dict(zip(map(id, layers), layer_keys(layers), strict=True))
    # RecalibrateBatchNorm passes a BatchSource, so a generator's cache outlives one call.
    if not isinstance(data, BatchSource):
        data = BatchSource(data, batch_size, num_batches, num_inputs=num_inputs(model))
    batches = data
    first = next(iter(batches), None)
    if first is None or num_rows(first) == 0:
        raise ValueError("`data` yielded no samples: cannot compute population statistics.")
    _check_batched(model, first, batches)

    try:
        if not model.built:
            model(first, training=False)
        # The exact method needs the call order first; the single pass learns it as it goes.
        order, calls = call_order(model, layers, first) if method == "exact" else (layers, {})
    except (ValueError, TypeError) as error:
        raise misfit(model, error) from error
    writer = _Writer(model, layers, keys, method)
    try:
        if method == "exact":
            seen = exact_pass(model, order, calls, batches, writer.commit)
        else:
            results, order, *seen = single_pass(model, layers, batches)
            # The training-mode pass touched the state of the layers it ran
            # (Dropout's seeds, non-plain BN); plain BN layers were not updated.
            untouched = {id(v) for layer in layers if is_plain(layer) for v in layer.variables}
            _restore([(v, value) for v, value in writer.backup if id(v) not in untouched])
            for layer in order:
                writer.commit(layer, results[id(layer)])
    except BaseException:
        _restore(writer.backup)
        raise
    report = writer.report
    report.num_batches, report.num_samples = seen
    report.num_skipped_batches = max(item["skipped_batches"] for item in report.values())
    _warn(model, report, [keys[id(layer)] for layer in layers if keys[id(layer)] not in report])
    return report


class _Writer:
    """Writes each layer's new statistics and its report entry; keeps the backup."""

    def __init__(
        self, model: keras.Model, layers: list[keras.layers.Layer], keys: dict, method: str
    ) -> None:
        self.keys = keys
        self.backup = _backup(model, layers)
        self.old = {
            id(layer): tuple(
                np.asarray(v, np.float64) for v in as_batchnorm(layer).moving_statistics()
            )
            for layer in layers
        }
        self.report = RecalibrationReport()
        self.report.method = method

    def commit(self, layer: keras.layers.Layer, result: Result | None) -> None:
        key = self.keys[id(layer)]
        if result is None:
            raise ValueError(
                f"`data` gave BN layer {key!r} no finite, unmasked values: cannot "
                "compute its statistics (is there a NaN or an infinity in every batch?)."
            )
        mean, variance, values, skipped_batches, used_batches = result
        bn = as_batchnorm(layer)
        # The statistics stand for `used_batches` batches: a cumulative average
        # (MomentumBatchNormalization(momentum=None)) continues from them.
        bn.set_moving_statistics(mean, variance, count=used_batches)
        self.report[key] = shift_entry(
            *self.old[id(layer)],
            mean,
            variance,
            epsilon=bn.epsilon,
            num_values=values,
            skipped_batches=skipped_batches,
        )


def _warn(model: keras.Model, report: RecalibrationReport, uncalled: list[str]) -> None:
    if uncalled:
        warnings.warn(
            f"BN layers {uncalled} are not called by a forward pass of {model.name!r}; "
            "their statistics were left unchanged.",
            stacklevel=3,
        )
    if report.num_skipped_batches:
        bad = [key for key, item in report.items() if item["skipped_batches"]]
        warnings.warn(
            f"recalibrate_batchnorm: up to {report.num_skipped_batches} of "
            f"{report.num_batches} batches had non-finite (NaN or inf) statistics at BN "
            f"layer(s) {bad} and were left out of their statistics.",
            stacklevel=3,
        )
