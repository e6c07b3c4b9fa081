"""Record the distribution of each nonlinearity's input during training.

Ioffe & Szegedy (2015, Figure 1 (b, c)) plot the 15th, 50th and 85th
percentiles of a typical sigmoid's input over training, with and without
batch normalization: the picture of "internal covariate shift".
`ActivationTracker` records exactly that for every nonlinearity of a Keras
model, on one fixed probe batch, per unit.

The callback lives here; finding the nonlinearities and capturing their inputs
is `_nonlinearities`, the log and its files `_activation_log` (the record
format of `keras_bn_tools.callbacks.stats_log` under the file names
`activations.json` and `activations.bin`, so that it can share a directory
with a `MovingStatsTracker` log), the argument checks `_activation_args`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import check_every, check_writable_directory
from keras_bn_tools.callbacks._activation_args import (
    check_layers,
    check_percentiles,
    check_probe,
    check_probe_fits,
)
from keras_bn_tools.callbacks._activation_log import (
    ACTIVATION_HEADER_FILE,
    ACTIVATION_RECORDS_FILE,
    NONFINITE_FIELD,
    ActivationLog,
    create_log_files,
)
from keras_bn_tools.callbacks._nonlinearities import (
    capturing_inputs,
    nonlinearity_layers,
    unit_axis_of,
    unit_percentiles,
)
from keras_bn_tools.ops import to_numpy

__all__ = [
    "ACTIVATION_HEADER_FILE",
    "ACTIVATION_RECORDS_FILE",
    "ActivationLog",
    "ActivationTracker",
    "nonlinearity_layers",
]


class ActivationTracker(keras.callbacks.Callback):
    """Record percentiles of every nonlinearity's input on a fixed probe batch.

    The input of a nonlinearity is what goes into its function: an
    `Activation` (or `ReLU`, `Softmax`, ...) layer's input, or the
    pre-activation of a Dense / convolution layer with a fused non-linear
    `activation` (its linear part's output). For each tracked layer and
    record, `np.percentile` is taken per unit (the last axis; the channel axis
    of a `channels_first` convolution) over the probe's rows and every other
    axis. This is Ioffe & Szegedy's (2015) Figure 1 (b, c): the 15th, 50th and
    85th percentiles of a sigmoid's input over training.

    A record is taken when training starts (step 0), then after every epoch
    (`every="epoch"`), every batch (`"batch"`) or every `every` batches.
    `steps[i]` / `epochs[i]` count the training batches and whole epochs
    completed before record `i`, across every `fit` call with this tracker: a
    second `fit` continues the history (in memory and on disk) instead of
    replacing it.

    Args:
        probe: the fixed batch (an array; a list or dict of arrays for a
            multi-input model). It is not shuffled or augmented.
        layers: names of the nonlinearity layers to track (default: every
            nonlinearity, nested models included). A name that is not a
            nonlinearity of the model raises `ValueError` when training starts.
        percentiles: strictly increasing numbers in [0, 100].
        every: `"epoch"`, `"batch"` or a positive int (batches).
        log_dir: if given, every record is appended to `log_dir/activations.bin`
            as it is taken (header `activations.json`; the format of
            `keras_bn_tools.callbacks.stats_log`); read it back with
            `ActivationTracker.load(log_dir)`. A directory that already holds an
            activation log is refused: a log is never overwritten.
        training: run the probe in training mode (BN normalizes with the
            probe's own statistics, as the training steps do; dropout is
            active). The moving statistics are not touched either way: the
            probe runs in a `keras.StatelessScope`. Default: inference mode.

    Attributes:
        history: `history[layer]` is an array `(records, len(percentiles), units)`.
        steps, epochs: int64 arrays, one entry per record.
        nonfinite: `nonfinite[layer]`: bool per record, True where the probe
            gave NaN or infinite percentiles (which are recorded as they are,
            and warned about, never silently).

    Raises:
        TypeError / ValueError: at construction for bad `percentiles`, `every`,
            `layers`, `probe` or `log_dir`; when training starts, for a probe
            the model cannot take or a layer name that is not a nonlinearity.

    Example:
        ```python
        tracker = ActivationTracker(x_test[:500], percentiles=(15, 50, 85))
        model.fit(x, y, epochs=5, callbacks=[tracker])
        tracker.history["dense"].shape  # (6, 3, units): initial + one per epoch
        ```

    Reference:
        Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network
        Training by Reducing Internal Covariate Shift", ICML 2015, section 4.1.
    """

    def __init__(
        self,
        probe: Any,
        layers: Sequence[str] | None = None,
        percentiles: Sequence[float] = (15, 50, 85),
        every: str | int = "epoch",
        log_dir: str | os.PathLike | None = None,
        *,
        training: bool = False,
    ):
        super().__init__()
        self.probe = check_probe(probe)
        self.layer_names = check_layers(layers)
        self.percentiles = check_percentiles(percentiles)
        self.every = check_every(every)
        if not isinstance(training, bool):
            raise TypeError(f"`training` must be True or False, got {training!r}.")
        self.training = training
        self.log_dir = None if log_dir is None else check_writable_directory("log_dir", log_dir)
        if self.log_dir is not None and os.path.exists(
            os.path.join(self.log_dir, ACTIVATION_HEADER_FILE)
        ):
            raise ValueError(
                f"`log_dir`={os.fspath(log_dir)!r} already holds an activation log "
                f"({ACTIVATION_HEADER_FILE}); a log is never overwritten. Read it with "
                "ActivationTracker.load(log_dir), or give a new directory."
            )
        self.async_safe = self.every == "epoch"
        self._log: ActivationLog | None = None
        self._file = None
        self._tracked: list[tuple[str, keras.layers.Layer]] = []
        self._step = 0
        self._epochs_done = 0
        self._warned_nonfinite = False

    # -- public views
    @property
    def log(self) -> ActivationLog:
        if self._log is None:
            raise RuntimeError(
                "ActivationTracker has no records yet: it has not been trained with."
            )
        return self._log

    @property
    def history(self) -> dict[str, np.ndarray]:
        """`history[layer]`: `(records, len(percentiles), units)` float64 array."""
        return self.log.history

    @property
    def steps(self) -> np.ndarray:
        return self.log.steps

    @property
    def epochs(self) -> np.ndarray:
        return self.log.epochs

    @property
    def nonfinite(self) -> dict[str, np.ndarray]:
        return self.log.nonfinite

    @staticmethod
    def load(log_dir: str | os.PathLike) -> ActivationLog:
        """Read back what a tracker wrote to `log_dir`: the same `history`, `steps`, `epochs`."""
        return ActivationLog.load(log_dir)

    # -- measuring
    def _select_layers(self) -> list[tuple[str, keras.layers.Layer]]:
        found = nonlinearity_layers(self.model)
        if self.layer_names is None:
            if not found:
                raise ValueError(
                    f"ActivationTracker: model {self.model.name!r} has no nonlinearity (no "
                    "Activation layer and no layer with a non-linear `activation`)."
                )
            return found
        by_key = dict(found)
        unknown = [name for name in self.layer_names if name not in by_key]
        if unknown:
            raise ValueError(
                f"ActivationTracker: `layers` names {unknown}, which "
                f"{'is not a nonlinearity' if len(unknown) == 1 else 'are not nonlinearities'} "
                f"of model {self.model.name!r}; its nonlinearities are {list(by_key) or 'none'}."
            )
        return [(key, layer) for key, layer in found if key in self.layer_names]

    def _measure(self) -> dict[str, np.ndarray]:
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:  # JAX keeps the live state outside the variables during fit
            sync()
        with capturing_inputs(self._tracked) as captured, keras.StatelessScope():
            try:
                self.model(self.probe, training=self.training)
            except Exception as error:  # re-raised naming the argument
                raise ValueError(
                    f"ActivationTracker: model {self.model.name!r} cannot take `probe` "
                    f"({error.__class__.__name__}: {error})"
                ) from error
        result = {}
        for key, layer in self._tracked:
            x = to_numpy(captured[key])
            result[key] = unit_percentiles(x, self.percentiles, unit_axis_of(layer, x.ndim))
        return result

    # -- logging
    def _start_log(self, measured: dict[str, np.ndarray]) -> None:
        self._log = ActivationLog.for_layers(
            {key: measured[key].shape for key, _ in self._tracked},
            every=self.every,
            percentiles=self.percentiles,
            training=self.training,
        )
        if self.log_dir is not None:
            self._file = create_log_files(self.log_dir, self._log)

    def _record(self) -> None:
        measured = self._measure()
        if self._log is None:
            self._start_log(measured)
        row = self._log.new_row()
        row["step"] = self._step
        row["epoch"] = self._epochs_done
        bad = []
        for i, (key, _) in enumerate(self._tracked):
            values = measured[key]
            if values.shape != self._log.history[key].shape[1:]:
                raise ValueError(
                    f"ActivationTracker: layer {key!r} now has {values.shape[-1]} units, "
                    f"its log {self._log.history[key].shape[-1]}."
                )
            row[f"v{i}"] = values
            if not np.all(np.isfinite(values)):
                row[NONFINITE_FIELD][0, i] = 1
                bad.append(key)
        self._log.append(row)
        if self._file is not None:
            self._file.write(row.tobytes())
        if bad and not self._warned_nonfinite:
            self._warned_nonfinite = True
            warnings.warn(
                f"ActivationTracker: non-finite percentiles at step {self._step} in {bad}; "
                "recorded as they are and flagged in `nonfinite` (warned once per tracker).",
                RuntimeWarning,
                stacklevel=2,
            )

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        tracked = self._select_layers()
        if self._log is not None and [k for k, _ in tracked] != self._log.layers:
            raise ValueError(
                f"ActivationTracker: this tracker's log holds layers {self._log.layers}; "
                f"model {self.model.name!r} has {[k for k, _ in tracked]}. Use a new tracker."
            )
        self._tracked = tracked
        check_probe_fits(self.model, self.probe)
        self._first_epoch = None
        self._fit_base_step = self._step
        self._fit_base_epochs = self._epochs_done
        self._epoch_base_step = self._step
        # A model without keras.Input is built by its first training step: its first
        # record is taken after that step.
        self._waiting_for_build = not self.model.built
        if not self._waiting_for_build and self._log is None:
            self._record()

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epochs_done = self._fit_base_epochs + epoch - self._first_epoch
        self._epoch_base_step = self._step

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_base_step + int(batch) + 1
        previous, self._step = self._step, step
        if self._waiting_for_build:
            self._waiting_for_build = False
            check_probe_fits(self.model, self.probe)
            if self._log is None:
                self._record()
                return
        if self.every != "epoch" and step // self.every > previous // self.every:
            self._record()

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = self._fit_base_epochs + epoch - (self._first_epoch or 0) + 1
        if self.every == "epoch":
            self._record()

    def on_train_end(self, logs=None):
        if self._file is not None:
            self._file.flush()

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
