"""The small-batch protocol: normalization layers at batch sizes 2 to 32.

Sources: Ioffe (2017), batch renormalization, and Wu & He (2018), Group
Normalization, Figure 1: ResNet-50 on ImageNet, validation error 23.6% with
BN at 32 images per batch but 34.7% at 2, while GN stays near 24.1% at every
batch size. Claims: BN's accuracy falls as the batch shrinks (its batch
statistics get noisy and stop matching the moving statistics used at
inference); batch renorm narrows the fall; GN, which uses no batch
statistics, is unaffected.

Here: the digits CNN (`studies.digits`: sklearn's 1,797 8x8 digits, every
fifth image for testing) with the normalization before each ReLU:

    Conv2D(16) -> norm -> ReLU -> MaxPool -> Conv2D(32) -> norm -> ReLU -> MaxPool
    -> Flatten -> Dense(10, softmax)

Normalizations: `none`; `bn` (`keras.layers.BatchNormalization`); `ghost`
(`MomentumBatchNormalization(virtual_batch_size=GHOST_BATCH)`: statistics
over ghost batches of 4 whatever the batch, the whole batch when smaller);
`renorm` (`MomentumBatchNormalization(renorm=True)` with the paper's final
limits `rmax=3, dmax=5` from the start); `gn` (`keras.layers.
GroupNormalization(groups=4)`). Batch sizes 2, 4, 8, 16, 32; the config
`bn-b2` is BN at batch 2. Every config trains `EPOCHS` epochs (the same
passes over the data) with SGD(momentum 0.9) and the learning rate scaled
linearly with the batch size, `BASE_LEARNING_RATE * batch / 32` (Goyal et
al. 2017, as Wu & He do). One seed by default: the paper's single ImageNet
run per point, at CPU scale.

`run_small_batch` adds, per run, the test accuracy in training mode
(statistics of each test batch of the training batch size, as a training
step sees them) next to the inference-mode accuracy, and their gap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from keras_bn_tools.studies.digits import load_digits_split
from keras_bn_tools.studies.protocol import Config, Protocol

__all__ = [
    "BASE_LEARNING_RATE",
    "BATCH_SIZES",
    "CONFIGS",
    "EPOCHS",
    "NORMALIZATIONS",
    "PROTOCOL",
    "SmallBatchResult",
    "build_model",
    "config_name",
    "learning_rate",
    "parse_config",
    "run_small_batch",
    "training_mode_accuracy",
]

BATCH_SIZES = (2, 4, 8, 16, 32)
EPOCHS = 8
BASE_LEARNING_RATE = 0.02
SGD_MOMENTUM = 0.9
GHOST_BATCH = 4
GROUPS = 4
TARGET = 0.95

NORMALIZATIONS = {
    "none": "no normalization",
    "bn": "keras.layers.BatchNormalization before each ReLU",
    "ghost": f"MomentumBatchNormalization(virtual_batch_size={GHOST_BATCH}) (ghost BN)",
    "renorm": "MomentumBatchNormalization(renorm=True, rmax=3, dmax=5) (batch renorm)",
    "gn": f"keras.layers.GroupNormalization(groups={GROUPS})",
}


def config_name(normalization: str, batch_size: int) -> str:
    """`"bn-b2"` for BN at batch size 2."""
    return f"{normalization}-b{batch_size}"


def parse_config(config: str) -> tuple[str, int]:
    """`("bn", 2)` for `"bn-b2"`; ValueError naming the valid configs otherwise."""
    normalization, _, size = config.rpartition("-b")
    if normalization not in NORMALIZATIONS or not size.isdigit() or int(size) not in BATCH_SIZES:
        raise ValueError(
            f"Unknown small-batch config {config!r}: expected NORM-bSIZE with NORM in "
            f"{list(NORMALIZATIONS)} and SIZE in {list(BATCH_SIZES)}, e.g. 'bn-b2'."
        )
    return normalization, int(size)


def learning_rate(batch_size: int) -> float:
    """SGD's learning rate at `batch_size`: linear in the batch size."""
    return BASE_LEARNING_RATE * batch_size / 32


@dataclass(frozen=True)
class _ScaledSGD:
    """The optimizer factory of the configs at `batch_size` (named in tables by its repr)."""

    batch_size: int = 32

    def __call__(self):
        import keras

        rate = learning_rate(self.batch_size)
        return keras.optimizers.SGD(learning_rate=rate, momentum=SGD_MOMENTUM)

    def __repr__(self) -> str:
        return f"SGD(lr={learning_rate(self.batch_size):g}, momentum={SGD_MOMENTUM})"


#: Config name -> `Config` with that config's batch size and learning rate.
CONFIGS = {
    config_name(norm, size): Config(
        f"{what}, batch {size}, lr {learning_rate(size):g}",
        batch_size=size,
        optimizer=_ScaledSGD(size),
    )
    for norm, what in NORMALIZATIONS.items()
    for size in BATCH_SIZES
}


def _normalization(kind: str, name: str):
    import keras

    from keras_bn_tools.layers import MomentumBatchNormalization

    if kind == "bn":
        return keras.layers.BatchNormalization(name=name)
    if kind == "ghost":
        return MomentumBatchNormalization(virtual_batch_size=GHOST_BATCH, name=name)
    if kind == "renorm":
        return MomentumBatchNormalization(
            renorm=True, renorm_clipping={"rmax": 3.0, "rmin": 1 / 3.0, "dmax": 5.0}, name=name
        )
    return keras.layers.GroupNormalization(groups=GROUPS, name=name)


def build_model(config: str):
    """A fresh, uncompiled, built model for `config` (e.g. `"gn-b4"`)."""
    import keras

    normalization, _ = parse_config(config)
    layers: list[Any] = [keras.Input((8, 8, 1))]
    for i, filters in enumerate((16, 32), start=1):
        linear = normalization != "none"
        layers.append(
            keras.layers.Conv2D(
                filters, 3, padding="same", use_bias=not linear, name=f"conv_{i}",
                activation=None if linear else "relu",
            )
        )  # fmt: skip
        if linear:
            layers += [_normalization(normalization, f"norm_{i}"), keras.layers.ReLU()]
        layers.append(keras.layers.MaxPooling2D(2))
    layers += [keras.layers.Flatten(), keras.layers.Dense(10, activation="softmax")]
    return keras.Sequential(layers, name=f"small_batch_{config.replace('-', '_')}")


PROTOCOL = Protocol(
    name="small-batch",
    description=(
        "The digits CNN with no normalization, BN, ghost BN, batch renorm or GroupNorm before "
        f"each ReLU, at batch sizes {', '.join(map(str, BATCH_SIZES))}; SGD(momentum "
        f"{SGD_MOMENTUM}) with the learning rate {BASE_LEARNING_RATE} x batch / 32, {EPOCHS} "
        "epochs; inference-mode test accuracy and its gap to training-mode accuracy."
    ),
    load_data=load_digits_split,
    build=build_model,
    configs=CONFIGS,
    default_configs=tuple(CONFIGS),
    epochs=EPOCHS,
    batch_size=max(BATCH_SIZES),
    optimizer=_ScaledSGD(),
    loss="sparse_categorical_crossentropy",
    target=TARGET,
    jit_compile=False,
)


def training_mode_accuracy(
    model: Any, x: np.ndarray, y: np.ndarray, batch_size: int
) -> tuple[float, float]:
    """Accuracy of `model` on `(x, y)` in training and in inference mode, batch by batch.

    Training mode normalizes each batch of `batch_size` rows with its own
    statistics (what a training step sees); the rows after the last full
    batch are left out of both figures, so that no batch is smaller than in
    training. The model's state is not changed (a `keras.StatelessScope`).

    Returns:
        `(training_mode_accuracy, inference_mode_accuracy)` on the same rows.
    """
    import keras

    from keras_bn_tools.ops import to_numpy

    rows = (len(x) // batch_size) * batch_size
    correct = {True: 0, False: 0}
    with keras.StatelessScope():
        for start in range(0, rows, batch_size):
            batch = x[start : start + batch_size]
            for training in (True, False):
                probabilities = to_numpy(model(batch, training=training))
                predicted = probabilities.argmax(axis=-1)
                correct[training] += int((predicted == y[start : start + batch_size]).sum())
    return correct[True] / rows, correct[False] / rows


@dataclass
class SmallBatchResult:
    """A small-batch study: inference- and training-mode test accuracy per config.

    Attributes:
        study: the `StudyResult` (each run's batch size in `RunResult.settings`).
        training_mode: config -> per seed `(training-mode acc., inference-mode acc.)`
            on the test rows that fill whole batches.
    """

    study: Any
    training_mode: dict[str, list[tuple[float, float]]]

    def summary(self) -> dict[str, dict[int, dict[str, float]]]:
        """`{normalization: {batch size: {"test_accuracy", "gap", "sd", "seeds"}}}` (seed means).

        `test_accuracy` is the inference-mode accuracy on the whole test set;
        `gap` the training-mode minus inference-mode accuracy on the full batches.
        """
        out: dict[str, dict[int, dict[str, float]]] = {}
        for config in self.study.configs:
            normalization, size = parse_config(config)
            accuracies = [run.final_test_accuracy for run in self.study.runs_for(config)]
            gaps = [train - infer for train, infer in self.training_mode[config]]
            out.setdefault(normalization, {})[size] = {
                "test_accuracy": float(np.mean(accuracies)),
                "sd": float(np.std(accuracies, ddof=1)) if len(accuracies) > 1 else 0.0,
                "gap": float(np.mean(gaps)),
                "seeds": len(accuracies),
            }
        return {n: dict(sorted(s.items())) for n, s in out.items()}

    def table(self) -> str:
        """Markdown: inference-mode test accuracy (and train - inference gap) per batch size."""
        summary = self.summary()
        sizes = sorted({size for per_size in summary.values() for size in per_size})
        head = ["normalization", *(f"batch {s}" for s in sizes)]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for normalization, per_size in summary.items():
            cells = [
                f"{per_size[s]['test_accuracy']:.3f} ({per_size[s]['gap']:+.3f})"
                if s in per_size
                else "-"
                for s in sizes
            ]
            lines.append("| " + " | ".join([normalization, *cells]) + " |")
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike) -> Any:
        """Accuracy vs batch size per normalization (inference mode; the gap dashed, right)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(10, 3.8), layout="constrained")
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2)
        for normalization, per_size in self.summary().items():
            sizes = list(per_size)
            left.plot(sizes, [per_size[s]["test_accuracy"] for s in sizes], marker="o",
                      label=normalization)  # fmt: skip
            right.plot(sizes, [per_size[s]["gap"] for s in sizes], marker="o", linestyle="--",
                       label=normalization)  # fmt: skip
        for ax, label in ((left, "test accuracy (inference mode)"),
                          (right, "training-mode minus inference-mode accuracy")):  # fmt: skip
            ax.set_xscale("log", base=2)
            ax.set_xticks(list(BATCH_SIZES), [str(s) for s in BATCH_SIZES])
            ax.set_xlabel("batch size")
            ax.set_ylabel(label)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize="small")
        figure.suptitle("Digits CNN: normalization vs batch size")
        os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
        figure.savefig(path, dpi=100)
        return figure

    def write(self, directory: str | os.PathLike) -> list[str]:
        """Write `small_batch.md`, `small_batch.json` and `small_batch.png` under `directory`."""
        os.makedirs(directory, exist_ok=True)
        table = os.path.join(directory, "small_batch.md")
        with open(table, "w", encoding="utf-8") as f:
            f.write(self.table() + "\n")
        summary = os.path.join(directory, "small_batch.json")
        with open(summary, "w", encoding="utf-8") as f:
            json.dump(self.summary(), f, indent=1)
        figure = os.path.join(directory, "small_batch.png")
        self.plot(figure)
        return [table, summary, figure]


def run_small_batch(
    protocol: Protocol | None = None,
    configs: Sequence[str] | None = None,
    seeds: Sequence[int] | range = range(1),
    *,
    epochs: int | None = None,
    batch_size: int | None = None,
    engine: str = "auto",
    shuffle: str = "epoch",
    progress: bool = False,
) -> SmallBatchResult:
    """Run the small-batch study and measure each run's training-mode test accuracy.

    Each config trains with its own batch size and learning rate (its
    `Config`). The training-mode accuracy is computed from each run's final
    weights, so every engine can run it; `StudyResult.engine` says which ran.
    """
    from keras_bn_tools.studies.study import run_study

    if batch_size is not None:
        raise ValueError(
            "small-batch sets the batch size per config (e.g. 'bn-b2'); choose configs "
            f"instead of `batch_size`={batch_size!r}."
        )
    protocol = PROTOCOL if protocol is None else protocol
    study = run_study(
        protocol, configs, seeds, epochs=epochs, engine=engine, shuffle=shuffle,
        progress=progress,
    )  # fmt: skip
    _, (test_x, test_y) = protocol.load_data()
    training_mode: dict[str, list[tuple[float, float]]] = {}
    for run in study.runs:
        model = protocol.build(run.config)
        model.set_weights(run.weights)
        size = parse_config(run.config)[1]
        training_mode.setdefault(run.config, []).append(
            training_mode_accuracy(model, test_x, test_y, size)
        )
    return SmallBatchResult(study, training_mode)
