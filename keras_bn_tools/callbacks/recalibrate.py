"""`recalibrate_batchnorm` as a Keras callback."""

from __future__ import annotations

from typing import Any

import keras

from keras_bn_tools._validation import check_choice, check_positive_int
from keras_bn_tools.graph import batchnorm_layers, num_inputs
from keras_bn_tools.recalibration import (
    METHODS,
    BatchSource,
    RecalibrationReport,
    recalibrate_batchnorm,
)

__all__ = ["RecalibrateBatchNorm"]

_WHEN = ("train_end", "epoch_end")


class RecalibrateBatchNorm(keras.callbacks.Callback):
    """Recompute exact BN statistics ("precise BN") over `data` during or after training.

    Runs `keras_bn_tools.recalibrate_batchnorm(model, data, ...)` at the end
    of training (`when="train_end"`) or at the end of every epoch
    (`when="epoch_end"`). With `"epoch_end"` the recalibration runs after that
    epoch's validation (Keras validates before `on_epoch_end`), so the
    epoch's `val_*` metrics still use the moving averages; callbacks listed
    after this one (e.g. `ModelCheckpoint`) and the following epochs see the
    recalibrated statistics, which training then keeps updating as usual.

    Args:
        data: as for `recalibrate_batchnorm` (arrays, `(x, y)`, a dataset, a
            `PyDataset`, an iterable of batches). Usually the training data.
        num_batches: use at most this many batches (default: all).
        when: `"train_end"` or `"epoch_end"`.
        batch_size: rows per batch for in-memory arrays.
        method: `"exact"` (default) or `"single_pass"`, as for
            `recalibrate_batchnorm`.
        verbose: 1 prints the recalibration report each time.

    Attributes:
        report: the `RecalibrationReport` of the latest recalibration (None before).
        reports: every report, oldest first.

    Raises:
        ValueError: at construction for a bad `when`, `method`, `num_batches`,
            `batch_size` or empty in-memory data; when training starts if the
            model has no BN layer.
    """

    def __init__(
        self,
        data: Any,
        num_batches: int | None = None,
        when: str = "train_end",
        *,
        batch_size: int = 32,
        method: str = "exact",
        verbose: int = 0,
    ):
        super().__init__()
        self.when = check_choice("when", when, _WHEN)
        self.method = check_choice("method", method, METHODS)
        self.num_batches = check_positive_int("num_batches", num_batches, allow_none=True)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.data = data
        # Checks in-memory data now (empty arrays raise) and keeps a generator's
        # cache across recalibrations.
        self._batches = BatchSource(data, self.batch_size, self.num_batches)
        self.verbose = verbose
        self.report: RecalibrationReport | None = None
        self.reports: list[RecalibrationReport] = []

    def on_train_begin(self, logs=None):
        if isinstance(self.data, list) and (count := num_inputs(self.model)) is not None:
            # `[x1, x2]` for a two-input model: the model decides how a list is read.
            self._batches = BatchSource(
                self.data, self.batch_size, self.num_batches, num_inputs=count
            )
        if not batchnorm_layers(self.model):
            raise ValueError(
                f"RecalibrateBatchNorm: model {self.model.name!r} has no batch normalization "
                "layer: nothing to recalibrate."
            )

    def _recalibrate(self) -> None:
        self.report = recalibrate_batchnorm(self.model, self._batches, method=self.method)
        self.reports.append(self.report)
        if self.verbose:
            keras.utils.io_utils.print_msg(f"\n{self.report}")

    def on_epoch_end(self, epoch, logs=None):
        if self.when == "epoch_end":
            self._recalibrate()

    def on_train_end(self, logs=None):
        if self.when == "train_end":
            self._recalibrate()
