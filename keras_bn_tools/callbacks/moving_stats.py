"""Record how BN moving statistics (and gamma/beta) evolve during training.

The on-disk format of `log_dir` is described in `keras_bn_tools.callbacks.stats_log`,
the TensorBoard summaries in `keras_bn_tools.callbacks.stats_tensorboard`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import (
    check_every,
    check_layer_names,
    check_writable_directory,
)
from keras_bn_tools.callbacks.stats_log import (
    HEADER_FILE,
    INDEX_FIELDS,
    RECORDS_FILE,
    MovingStatsLog,
    check_continues,
    open_for_append,
)
from keras_bn_tools.callbacks.stats_tensorboard import (
    TensorBoardStatsWriter,
    tensorboard_available,
)
from keras_bn_tools.graph import (
    BN_STATISTICS,
    batchnorm_layers,
    layer_keys,
    statistic_variables,
)
from keras_bn_tools.ops import to_numpy

__all__ = [
    "ALLOWED_STATS",
    "HEADER_FILE",
    "RECORDS_FILE",
    "MovingStatsLog",
    "MovingStatsTracker",
]

ALLOWED_STATS = BN_STATISTICS


def _parse_stats(stats: Any) -> tuple[str, ...]:
    if isinstance(stats, str):
        stats = (stats,)
    if not isinstance(stats, Iterable):
        raise TypeError(f"`stats` must be a sequence of stat names, got {stats!r}.")
    stats = tuple(dict.fromkeys(stats))
    if not stats:
        raise ValueError(f"`stats` must name at least one of {ALLOWED_STATS}.")
    unknown = [s for s in stats if s not in ALLOWED_STATS]
    if unknown:
        raise ValueError(f"Unknown stats {unknown}; allowed stats are {list(ALLOWED_STATS)}.")
    return stats


def _parse_tensorboard(tensorboard: Any, log_dir: str | None) -> bool:
    if tensorboard is None:
        return log_dir is not None and tensorboard_available()
    if not isinstance(tensorboard, bool):
        raise TypeError(f"`tensorboard` must be None, True or False, got {tensorboard!r}.")
    if tensorboard and log_dir is None:
        raise ValueError("`tensorboard=True` needs a `log_dir` to write the summaries under.")
    if tensorboard and not tensorboard_available():
        raise ImportError(
            "MovingStatsTracker(tensorboard=True) needs the tensorboard package: "
            'pip install "keras-bn-tools[tensorboard]"'
        )
    return tensorboard


def _variable_reader(variables: Sequence[Any]) -> Callable[[], list[np.ndarray]]:
    """A function returning the current values of `variables` as NumPy arrays.

    On TensorFlow every eager op costs tens of microseconds, so same-dtype 1-D
    variables (all BN statistics) are read with one concatenation and one
    device-to-host copy instead of one copy per variable.
    """
    dtypes = {keras.backend.standardize_dtype(v.dtype) for v in variables}
    if (
        keras.backend.backend() == "tensorflow"
        and len(variables) > 1
        and len(dtypes) == 1
        and all(len(v.shape) == 1 for v in variables)
    ):
        import tensorflow as tf

        bounds = np.cumsum([int(v.shape[0]) for v in variables])[:-1]

        def read() -> list[np.ndarray]:
            flat = tf.concat([v.value for v in variables], axis=0).numpy()
            return np.split(flat, bounds)

        return read
    return lambda: [to_numpy(v) for v in variables]


class MovingStatsTracker(keras.callbacks.Callback):
    """Snapshot BN moving statistics and affine parameters during `fit`.

    One snapshot is taken at the start of training (step 0, epoch 0), then
    after every epoch (`every="epoch"`) or every `every` training batches.

    `history[layer][stat]` is a (records, features) array; `steps[i]` and
    `epochs[i]` say when record `i` was taken: the number of training steps
    (batches) and of whole epochs completed *in this `fit` call*. The initial
    snapshot has step 0, epoch 0; the end-of-epoch record of the k-th epoch
    has epoch k. With `every=N` the step counter runs across epochs and
    records are taken after steps N, 2N, 3N, ... (with `steps_per_execution >
    1`, at the first batch end the callback sees at or after each multiple of
    N); a record taken during the k-th epoch, its last batch included, has
    epoch k - 1 (the epoch completes after its last batch, at
    `on_epoch_end`). A later `fit` with the same tracker appends: its
    records continue the history, with steps and epochs counted on from the
    last record (its first record, taken before it trains, repeats the last
    step number, showing anything done to the model between the two calls).

    Args:
        every: `"epoch"`, `"batch"` or a positive int (record every N batches).
        layers: BN layer names to track (default: all BN layers, nested
            models included). A name that is not a BN layer of the model
            raises `ValueError` when training starts. Two BN layers with the
            same name in different nested models are keyed `name`, `name#2`.
        stats: any of `"moving_mean"`, `"moving_variance"`, `"gamma"`,
            `"beta"`. A stat a layer does not have (gamma with `scale=False`,
            beta with `center=False`) is skipped for that layer.
        log_dir: if given, every record is appended to
            `log_dir/moving_stats.bin` as soon as it is taken (see the module
            docstring for the format); read it back with
            `MovingStatsTracker.load(log_dir)`. The directory is created if
            needed. A log already there (an earlier `fit`, this process or
            another) is continued, never overwritten: the tracker's
            `history` is then that whole log. One of another layout (other
            layers, stats or `every`) raises `ValueError` when training starts.
        tensorboard: also write TensorBoard summaries (histograms and
            per-layer means/stds of each statistic) under
            `log_dir/moving_stats/` (see `callbacks.stats_tensorboard`).
            Default `None`: when `log_dir` is given and the `tensorboard`
            package is installed. `True` requires both.

    Example:
        ```python
        tracker = MovingStatsTracker(every=4, log_dir="bn_logs")
        model.fit(x, y, epochs=3, callbacks=[tracker])
        tracker.history["batch_normalization"]["moving_mean"].shape  # (records, units)
        MovingStatsTracker.load("bn_logs").steps  # same as tracker.steps
        ```
    """

    def __init__(
        self,
        every: str | int = "epoch",
        layers: Sequence[str] | None = None,
        stats: Sequence[str] = ALLOWED_STATS,
        log_dir: str | os.PathLike | None = None,
        tensorboard: bool | None = None,
    ):
        super().__init__()
        self.every = check_every(every)
        self.layer_names = check_layer_names(layers, none_means="all BN layers")
        self.stats = _parse_stats(stats)
        # Checked now (an existing file, a path under a file, a read-only
        # place), not when `fit` starts.
        self.log_dir = None if log_dir is None else check_writable_directory("log_dir", log_dir)
        self.tensorboard = _parse_tensorboard(tensorboard, self.log_dir)
        # Epoch mode reads nothing per batch, so Keras may dispatch the
        # (no-op) batch hook asynchronously.
        self.async_safe = self.every == "epoch"
        self._log: MovingStatsLog | None = None
        self._file = None
        self._summaries: TensorBoardStatsWriter | None = None
        self._variables: list[tuple[str, Any]] = []
        self._base_step = self._base_epoch = 0
        self._log_before: MovingStatsLog | None = None
        self._done = (0, 0)  # (steps, epochs) where this tracker's last `fit` ended

    # -- public views
    @property
    def log(self) -> MovingStatsLog:
        """Every record so far: of every `fit` with this tracker (and, with `log_dir`, the
        whole log there)."""
        if self._log is None:
            raise RuntimeError(
                "MovingStatsTracker has no records yet: it has not been trained with."
            )
        return self._log

    @property
    def history(self) -> dict[str, dict[str, np.ndarray]]:
        """`history[layer][stat]`: (records, features) array. See `MovingStatsLog.history`."""
        return self.log.history

    @property
    def steps(self) -> np.ndarray:
        """Training steps completed when each record was taken (0 first), counted on
        from one `fit` to the next."""
        return self.log.steps

    @property
    def epochs(self) -> np.ndarray:
        """Epochs completed when each record was taken (0 first), counted on from one
        `fit` to the next."""
        return self.log.epochs

    @staticmethod
    def load(log_dir: str | os.PathLike) -> MovingStatsLog:
        """Read back what a tracker wrote to `log_dir`: the same `history`, `steps`, `epochs`."""
        return MovingStatsLog.load(log_dir)

    # -- set-up
    def _tracked_layers(self) -> list[tuple[str, keras.layers.Layer]]:
        found = batchnorm_layers(self.model)
        named = list(zip(layer_keys(found), found, strict=True))
        if self.layer_names is None:
            return named
        by_key = dict(named)
        unknown = [n for n in self.layer_names if n not in by_key]
        if unknown:
            raise ValueError(
                f"MovingStatsTracker: {unknown} {'is not a' if len(unknown) == 1 else 'are not'} "
                f"BN layer{'s' if len(unknown) > 1 else ''} of model {self.model.name!r}; "
                f"its BN layers are {list(by_key) or 'none'}."
            )
        return [(key, layer) for key, layer in named if key in self.layer_names]

    def _start_log(self, tracked: list[tuple[str, keras.layers.Layer]]) -> None:
        fields: list[dict[str, Any]] = [{"name": n, "dtype": d} for n, d in INDEX_FIELDS]
        self._variables = []
        for key, stat, variable in statistic_variables(tracked, self.stats):
            fields.append(
                {
                    "name": f"v{len(self._variables)}",
                    "layer": key,
                    "stat": stat,
                    "dtype": np.dtype(keras.backend.standardize_dtype(variable.dtype)).str,
                    "shape": [int(d) for d in variable.shape],
                }
            )
            self._variables.append((fields[-1]["name"], variable))
        if not self._variables:
            warnings.warn(
                f"MovingStatsTracker: none of the tracked BN layers has any of {self.stats}; "
                "only steps and epochs are recorded.",
                stacklevel=3,
            )
        self._read = _variable_reader([variable for _, variable in self._variables])
        log = MovingStatsLog(
            fields, every=self.every, layers=[k for k, _ in tracked], stats=self.stats
        )
        self._close()
        self._log_before = self._log
        if self.log_dir is not None:
            try:
                log, self._file = open_for_append(self.log_dir, log)
            except OSError as error:
                raise OSError(
                    f"MovingStatsTracker cannot write its log to `log_dir`={self.log_dir!r}: "
                    f"{error}"
                ) from error
            if self.tensorboard:
                self._summaries = TensorBoardStatsWriter(self.log_dir)
        elif self._log is not None:
            check_continues(self._log, log, "this tracker's earlier `fit`")
            log = self._log
        self._log = log
        if len(log):  # counted on from the last record, or from where this tracker's
            # last `fit` ended (with `every=N` its last record may precede its end)
            own = self._log_before is not None and len(self._log_before) == len(log)
            done = self._done if own else (0, 0)
            self._base_step = max(int(log.steps[-1]), done[0])
            self._base_epoch = max(int(log.epochs[-1]), done[1])

    def _record(self, step: int, epoch: int) -> None:
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:  # JAX keeps the live state outside the variables during fit
            sync()
        row = self._log.new_row()
        row["step"] = self._base_step + step if step >= 0 else -1
        row["epoch"] = self._base_epoch + epoch
        values = self._read()
        for (name, _), value in zip(self._variables, values, strict=True):
            row[name] = value
        self._log.append(row)
        if self._file is not None:
            self._file.write(row.tobytes())
        if self._summaries is not None:
            keys = [(f["layer"], f["stat"]) for f in self._log.fields if "layer" in f]
            self._summaries.write(int(row["step"][0]), dict(zip(keys, values, strict=True)))

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._summaries is not None:
            self._summaries.close()
            self._summaries = None

    def _optimizer_steps(self) -> int:
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return -1 if iterations is None else int(to_numpy(iterations))

    # -- Keras hooks
    def on_train_begin(self, logs=None):
        self._tracked = self._tracked_layers()
        if not self._tracked:
            raise ValueError(
                f"MovingStatsTracker: model {self.model.name!r} has no batch normalization layer."
            )
        self._base_step = self._base_epoch = 0
        self._step = 0
        self._first_epoch = None
        self._epochs_done = 0
        self._step = 0
        self._epoch_base_step = 0
        self._start_iterations = self._optimizer_steps()
        # A model without keras.Input (a Sequential on TensorFlow) is built by the
        # first training step: recording then starts after that step.
        self._waiting_for_build = not all(layer.built for _, layer in self._tracked)
        if not self._waiting_for_build:
            self._start_log(self._tracked)
            self._record(0, 0)

    def on_epoch_begin(self, epoch, logs=None):
        if self._first_epoch is None:
            self._first_epoch = epoch
        self._epochs_done = epoch - self._first_epoch
        self._epoch_base_step = self._step

    def on_train_batch_end(self, batch, logs=None):
        step = self._epoch_base_step + int(batch) + 1
        if self._waiting_for_build:
            self._waiting_for_build = False
            self._start_log(self._tracked)
            self._record(step, self._epochs_done)
        elif self.every != "epoch" and step // self.every > self._step // self.every:
            self._record(step, self._epochs_done)
        self._step = step

    def on_epoch_end(self, epoch, logs=None):
        self._epochs_done = epoch - (self._first_epoch or 0) + 1
        if self.every == "epoch":
            now = self._optimizer_steps()
            self._step = now - self._start_iterations if now >= 0 else -1
            self._record(self._step, self._epochs_done)

    def on_train_end(self, logs=None):
        self._close()
        if self._log is not None:
            steps = self._base_step + self._step if self._step >= 0 else self._base_step
            self._done = (steps, self._base_epoch + self._epochs_done)

    def __del__(self):
        if getattr(self, "_file", None) is not None:
            self._file.close()
        if getattr(self, "_summaries", None) is not None:
            self._summaries.close()
