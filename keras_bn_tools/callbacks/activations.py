"""Record the distribution of each nonlinearity's input during training.

Ioffe & Szegedy (2015, Figure 1 (b, c)) plot the 15th, 50th and 85th
percentiles of a typical sigmoid's input over training, with and without
batch normalization: the picture of "internal covariate shift".
`ActivationTracker` records exactly that for every nonlinearity of a Keras
model, on one fixed probe batch, per unit.

The on-disk log (`log_dir`) uses the record format of
`keras_bn_tools.callbacks.stats_log` (a JSON header and fixed-size binary
records appended one unbuffered `write` at a time) under its own file names,
`activations.json` and `activations.bin`, so that it can share a directory
with a `MovingStatsTracker` log.
"""

from __future__ import annotations

import itertools
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import keras
import numpy as np

from keras_bn_tools._validation import check_writable_directory
from keras_bn_tools.callbacks.stats_log import INDEX_FIELDS, MovingStatsLog, read_header

__all__ = [
    "ACTIVATION_HEADER_FILE",
    "ACTIVATION_RECORDS_FILE",
    "ActivationLog",
    "ActivationTracker",
    "nonlinearity_layers",
]

ACTIVATION_HEADER_FILE = "activations.json"
ACTIVATION_RECORDS_FILE = "activations.bin"
#: `header["kind"]` of an activation log (the record format is `stats_log`'s).
LOG_KIND = "activation-percentiles"
#: The stat name of the percentile fields in the shared record format.
PERCENTILES_STAT = "percentiles"
#: Per record, one flag per tracked layer: 1 where a percentile is NaN or infinite.
NONFINITE_FIELD = "nonfinite"

# Layers whose `activation` attribute is applied to their (linear) output. RNN layers also
# have an `activation`, but apply it inside the cell at every time step: left out.
_FUSED_ACTIVATION_TYPES = tuple(
    getattr(keras.layers, name)
    for name in (
        "Dense",
        "EinsumDense",
        "Conv1D",
        "Conv2D",
        "Conv3D",
        "Conv1DTranspose",
        "Conv2DTranspose",
        "Conv3DTranspose",
        "SeparableConv1D",
        "SeparableConv2D",
        "DepthwiseConv1D",
        "DepthwiseConv2D",
        "Activation",
    )
    if hasattr(keras.layers, name)
)
# Dedicated nonlinearity layers, which apply a fixed function in `call`.
_ACTIVATION_LAYER_TYPES = tuple(
    getattr(keras.layers, name)
    for name in ("ReLU", "LeakyReLU", "ELU", "PReLU", "Softmax")
    if hasattr(keras.layers, name)
)


def _is_linear(activation: Any) -> bool:
    return activation is None or keras.activations.get(activation) is keras.activations.linear


def _nonlinearity_kind(layer: keras.layers.Layer) -> str | None:
    """`"activation"` (patch the `activation` attribute), `"call"` (patch `call`) or None."""
    if isinstance(layer, _FUSED_ACTIVATION_TYPES):
        return None if _is_linear(layer.activation) else "activation"
    if isinstance(layer, _ACTIVATION_LAYER_TYPES):
        return "call"
    return None


def nonlinearity_layers(model: keras.Model) -> list[tuple[str, keras.layers.Layer]]:
    """`(key, layer)` for every nonlinearity of `model`, nested models included, in call order.

    A nonlinearity is an `Activation` layer with a non-linear function, a
    dedicated activation layer (`ReLU`, `LeakyReLU`, `ELU`, `PReLU`,
    `Softmax`), or a Dense / convolution layer with a fused non-linear
    `activation`. Keys are layer names; a name repeated in nested models gets
    `#2`, `#3`, ...
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model, got {model!r} ({type(model).__name__}).")
    found: list[keras.layers.Layer] = []
    seen: set[int] = set()

    def visit(layer: keras.layers.Layer) -> None:
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                visit(inner)
        elif _nonlinearity_kind(layer) is not None:
            found.append(layer)

    for layer in model.layers:
        visit(layer)
    counts: dict[str, int] = {}
    keyed = []
    for layer in found:
        counts[layer.name] = counts.get(layer.name, 0) + 1
        n = counts[layer.name]
        keyed.append((layer.name if n == 1 else f"{layer.name}#{n}", layer))
    return keyed


@contextmanager
def _capturing_inputs(layers: Sequence[tuple[str, keras.layers.Layer]]) -> Iterator[dict]:
    """While active, a call of the model stores each layer's nonlinearity input by key.

    For a layer with a fused activation the input of `layer.activation` is its
    pre-activation (the linear part's output); an `Activation` layer's
    `activation` receives the layer's input; a dedicated activation layer's
    `call` receives it. The patches are instance attributes, removed on exit.
    """
    captured: dict[str, Any] = {}
    patched: list[tuple[keras.layers.Layer, str, bool, Any]] = []

    def patch(layer: keras.layers.Layer, attribute: str, replacement: Callable) -> None:
        had_own = attribute in layer.__dict__
        patched.append((layer, attribute, had_own, layer.__dict__.get(attribute)))
        object.__setattr__(layer, attribute, replacement)

    def capture(key: str, function: Callable) -> Callable:
        def wrapper(x, *args, **kwargs):
            captured[key] = x
            return function(x, *args, **kwargs)

        return wrapper

    try:
        for key, layer in layers:
            attribute = "activation" if _nonlinearity_kind(layer) == "activation" else "call"
            patch(layer, attribute, capture(key, getattr(layer, attribute)))
        yield captured
    finally:
        for layer, attribute, had_own, value in reversed(patched):
            if had_own:
                object.__setattr__(layer, attribute, value)
            else:
                object.__delattr__(layer, attribute)


def _unit_axis(layer: keras.layers.Layer, rank: int) -> int:
    if getattr(layer, "data_format", None) == "channels_first" and rank > 2:
        return 1
    return rank - 1


def unit_percentiles(x: np.ndarray, percentiles: Sequence[float], unit_axis: int) -> np.ndarray:
    """`np.percentile` of `x` over every axis but `unit_axis`: shape `(len(percentiles), units)`."""
    x = np.moveaxis(np.asarray(x, dtype="float64"), unit_axis, -1)
    return np.percentile(x.reshape(-1, x.shape[-1]), list(percentiles), axis=0)


# ---------------------------------------------------------------------------- argument checks
def _check_percentiles(percentiles: Any) -> tuple[float, ...]:
    if isinstance(percentiles, numbers.Real) and not isinstance(percentiles, bool):
        percentiles = (percentiles,)
    if isinstance(percentiles, str) or not isinstance(percentiles, Iterable):
        raise TypeError(
            f"`percentiles` must be a sequence of numbers in [0, 100], got {percentiles!r}."
        )
    values = tuple(percentiles)
    if not values or not all(
        isinstance(p, numbers.Real) and not isinstance(p, bool) for p in values
    ):
        raise TypeError(
            f"`percentiles` must be a non-empty sequence of numbers in [0, 100], "
            f"got {percentiles!r}."
        )
    values = tuple(float(p) for p in values)
    if not all(math.isfinite(p) and 0 <= p <= 100 for p in values):
        raise ValueError(f"`percentiles` must lie in [0, 100], got {list(values)}.")
    if any(b <= a for a, b in itertools.pairwise(values)):
        raise ValueError(
            f"`percentiles` must be strictly increasing (sorted, no repeats), got {list(values)}."
        )
    return values


def _check_every(every: Any) -> str | int:
    if isinstance(every, str) and every in ("epoch", "batch"):
        return 1 if every == "batch" else every
    if isinstance(every, str | bool) or not isinstance(every, numbers.Integral) or every < 1:
        error = TypeError if not isinstance(every, str | numbers.Integral) else ValueError
        raise error(
            f'`every` must be "epoch", "batch" or a positive integer (batches), got {every!r}.'
        )
    return int(every)


def _check_layers(layers: Any) -> tuple[str, ...] | None:
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = (layers,)
    if not isinstance(layers, Iterable) or not all(isinstance(n, str) for n in layers):
        raise TypeError(f"`layers` must be None or a sequence of layer names, got {layers!r}.")
    layers = tuple(dict.fromkeys(layers))
    if not layers:
        raise ValueError("`layers` must be None (every nonlinearity) or name at least one layer.")
    return layers


def _check_probe(probe: Any) -> Any:
    def as_array(value: Any) -> np.ndarray:
        array = np.asarray(value)
        if array.ndim < 1 or array.shape[0] < 1 or array.dtype == object:
            raise ValueError(
                f"`probe` must be a batch (an array with at least one row, or a list/dict of "
                f"such arrays for a multi-input model), got shape {array.shape} "
                f"dtype {array.dtype}."
            )
        return array

    if isinstance(probe, dict):
        return {key: as_array(value) for key, value in probe.items()}
    if isinstance(probe, list | tuple):
        return [as_array(value) for value in probe]
    try:
        return as_array(probe)
    except TypeError as error:
        raise TypeError(f"`probe` must be an array (or arrays), got {type(probe)}.") from error


# ---------------------------------------------------------------------------------- the log
class ActivationLog(MovingStatsLog):
    """The records of an `ActivationTracker`: `stats_log`'s format, one field per layer.

    Attributes:
        percentiles: the recorded percentiles, in order.
        training: whether the probe was run in training mode.
    """

    def __init__(self, fields, *, every, layers, percentiles, training, records=None):
        super().__init__(
            fields, every=every, layers=layers, stats=[PERCENTILES_STAT], records=records
        )
        self.percentiles = tuple(float(p) for p in percentiles)
        self.training = bool(training)

    @property
    def history(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        """`history[layer]`: array `(records, len(percentiles), units)`, oldest first."""
        return {layer: stats[PERCENTILES_STAT] for layer, stats in super().history.items()}

    @property
    def nonfinite(self) -> dict[str, np.ndarray]:
        """`nonfinite[layer]`: bool per record, True where a percentile is NaN or infinite."""
        flags = self._view(NONFINITE_FIELD)
        return {layer: flags[:, i].astype(bool) for i, layer in enumerate(self.layers)}

    def header(self) -> dict[str, Any]:
        return {
            **super().header(),
            "kind": LOG_KIND,
            "percentiles": list(self.percentiles),
            "training": self.training,
        }

    @classmethod
    def load(cls, log_dir: str | os.PathLike) -> ActivationLog:
        """Read a log written by `ActivationTracker(log_dir=...)` (a torn last record is dropped).

        Raises:
            FileNotFoundError: if the header or the records file is missing.
            ValueError: if the header is not an activation log's.
        """
        header_path = os.path.join(log_dir, ACTIVATION_HEADER_FILE)
        records_path = os.path.join(log_dir, ACTIVATION_RECORDS_FILE)
        for path in (header_path, records_path):
            if not os.path.exists(path):
                raise FileNotFoundError(
                    f"No activation log in `log_dir`={os.fspath(log_dir)!r}: "
                    f"{os.path.basename(path)} is missing."
                )
        header = read_header(header_path)
        if header.get("kind") != LOG_KIND or "percentiles" not in header:
            raise ValueError(f"{header_path} is not an ActivationTracker log header.")
        with open(records_path, "rb") as f:
            raw = f.read()
        dtype = header["dtype"]
        records = np.frombuffer(raw, dtype=dtype, count=len(raw) // dtype.itemsize).copy()
        return cls(
            header["fields"],
            every=header["every"],
            layers=header["layers"],
            percentiles=header["percentiles"],
            training=header.get("training", False),
            records=records,
        )


# ------------------------------------------------------------------------------ the callback
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
        self.probe = _check_probe(probe)
        self.layer_names = _check_layers(layers)
        self.percentiles = _check_percentiles(percentiles)
        self.every = _check_every(every)
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

    def _check_probe_fits(self) -> None:
        inputs = getattr(self.model, "inputs", None) or []
        probes = (
            list(self.probe.values())
            if isinstance(self.probe, dict)
            else (self.probe if isinstance(self.probe, list) else [self.probe])
        )
        if inputs and len(inputs) == len(probes):
            for tensor, array in zip(inputs, probes, strict=True):
                expected = tuple(tensor.shape)[1:]
                got = array.shape[1:]
                if len(expected) != len(got) or any(
                    e is not None and e != g for e, g in zip(expected, got, strict=True)
                ):
                    raise ValueError(
                        f"ActivationTracker: `probe` rows have shape {got}, but model "
                        f"{self.model.name!r} takes inputs of shape {expected} per row."
                    )
        elif inputs:
            raise ValueError(
                f"ActivationTracker: `probe` holds {len(probes)} array(s), but model "
                f"{self.model.name!r} has {len(inputs)} input(s)."
            )

    def _measure(self) -> dict[str, np.ndarray]:
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:  # JAX keeps the live state outside the variables during fit
            sync()
        with _capturing_inputs(self._tracked) as captured, keras.StatelessScope():
            try:
                self.model(self.probe, training=self.training)
            except Exception as error:  # re-raised naming the argument
                raise ValueError(
                    f"ActivationTracker: model {self.model.name!r} cannot take `probe` "
                    f"({error.__class__.__name__}: {error})"
                ) from error
        result = {}
        for key, layer in self._tracked:
            x = keras.ops.convert_to_numpy(captured[key])
            result[key] = unit_percentiles(x, self.percentiles, _unit_axis(layer, x.ndim))
        return result

    # -- logging
    def _start_log(self, measured: dict[str, np.ndarray]) -> None:
        fields: list[dict[str, Any]] = [{"name": n, "dtype": d} for n, d in INDEX_FIELDS]
        for i, (key, _) in enumerate(self._tracked):
            fields.append(
                {
                    "name": f"v{i}",
                    "layer": key,
                    "stat": PERCENTILES_STAT,
                    "dtype": "<f8",
                    "shape": list(measured[key].shape),
                }
            )
        fields.append({"name": NONFINITE_FIELD, "dtype": "|u1", "shape": [len(self._tracked)]})
        self._log = ActivationLog(
            fields,
            every=self.every,
            layers=[key for key, _ in self._tracked],
            percentiles=self.percentiles,
            training=self.training,
        )
        if self.log_dir is not None:
            try:
                os.makedirs(self.log_dir, exist_ok=True)
                header_path = os.path.join(self.log_dir, ACTIVATION_HEADER_FILE)
                records_path = os.path.join(self.log_dir, ACTIVATION_RECORDS_FILE)
                # Exclusive creation: a log that appeared since construction is not replaced.
                self._file = open(records_path, "xb", buffering=0)  # noqa: SIM115 - kept open
                with open(header_path + ".tmp", "w", encoding="utf-8") as f:
                    json.dump(self._log.header(), f, indent=1)
                os.replace(header_path + ".tmp", header_path)
            except OSError as error:
                raise OSError(
                    f"ActivationTracker cannot write its log to `log_dir`={self.log_dir!r}: {error}"
                ) from error

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
        self._check_probe_fits()
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
            self._check_probe_fits()
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
