"""The `fit` engine: plain `model.compile` + `model.fit`, one run after the other.

The reference, and the engine for every backend. The training rows reach
`fit` through a `keras.utils.PyDataset` that serves exactly the study's
`training_orders` (Keras shuffles nothing), the test set is the validation
data, and `keras_bn_tools.callbacks.MovingStatsTracker` records the BN
statistics at the end of every epoch. Accepts the user's callbacks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from keras_bn_tools.studies.engines.common import (
    RunSettings,
    StudyData,
    Timer,
    accuracy_fn,
    accuracy_metric,
    fresh_model,
    loss_fn,
    stat_variables,
)
from keras_bn_tools.studies.protocol import Protocol
from keras_bn_tools.studies.results import METRICS, RunResult

__all__ = ["NAME", "evaluate", "ordered_batches", "run", "run_seeds"]

NAME = "fit"

CallbacksFactory = Callable[[str, int], Sequence[Any]]


def ordered_batches(data: StudyData, orders: np.ndarray, batch_size: int):
    """A `keras.utils.PyDataset` serving epoch `e`'s batches in `orders[e]`'s order, and
    the callback that tells it which epoch `fit` is in (pass both to `fit`)."""
    import keras

    class OrderedBatches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()
            self.epoch = 0

        def __len__(self) -> int:
            return -(-data.rows // batch_size)

        def __getitem__(self, index: int):
            rows = orders[self.epoch, index * batch_size : (index + 1) * batch_size]
            return data.train_x[rows], data.train_y[rows]

    class EpochSetter(keras.callbacks.Callback):
        # Keras calls callbacks' on_epoch_begin before it asks for the epoch's batches.
        def on_epoch_begin(self, epoch, logs=None):
            batches.epoch = epoch

    batches = OrderedBatches()
    return batches, EpochSetter()


def evaluate(model: Any, x: np.ndarray, y: np.ndarray, protocol: Protocol, kind: str):
    """Inference-mode loss and accuracy of `model` on `(x, y)` (the tutorial's `evaluate`)."""
    import keras

    # Direct calls, not model.predict: predict would trace a new function per model, and
    # TensorFlow warns about "retracing" after a few runs.
    chunk = max(1024, protocol.batch_size)
    parts = [model(x[i : i + chunk], training=False) for i in range(0, len(x), chunk)]
    y_pred = keras.ops.concatenate(parts) if len(parts) > 1 else parts[0]
    loss = float(keras.ops.convert_to_numpy(loss_fn(protocol)(y, y_pred)))
    # The regularization losses, as fit's own loss and val_loss include them.
    loss += sum(float(keras.ops.convert_to_numpy(extra)) for extra in model.losses)
    correct = float(keras.ops.convert_to_numpy(accuracy_fn(kind)(y, y_pred)))
    return loss, correct / len(x)


def run(
    protocol: Protocol,
    config: str,
    seed: int,
    *,
    data: StudyData,
    settings: RunSettings,
    callbacks_factory: CallbacksFactory | None = None,
) -> RunResult:
    """One run through `model.fit`."""
    from keras_bn_tools.callbacks import MovingStatsTracker

    timer = Timer()
    model = fresh_model(protocol, config, seed)
    model.compile(
        optimizer=protocol.optimizer(),
        loss=protocol.loss,
        metrics=[accuracy_metric(data.accuracy)],
    )
    batches, epoch_setter = ordered_batches(
        data, settings.orders(seed, data.rows), settings.batch_size
    )
    tracker = MovingStatsTracker(every="epoch") if stat_variables(model) else None
    user = list(callbacks_factory(config, seed) or []) if callbacks_factory else []
    history = model.fit(
        batches,
        epochs=settings.epochs,
        validation_data=(data.test_x, data.test_y),
        validation_batch_size=settings.batch_size,
        shuffle=False,
        verbose=0,
        callbacks=[epoch_setter, *([tracker] if tracker else []), *user],
    )
    final = {}
    for prefix, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        final[f"{prefix}_loss"], final[f"{prefix}_accuracy"] = evaluate(
            model, x, y, protocol, data.accuracy
        )
    # The tracker's first record is the state before training; the study keeps one per epoch.
    moving = {}
    if tracker is not None:
        moving = {
            layer: {stat: np.asarray(values[1:]) for stat, values in stats.items()}
            for layer, stats in tracker.history.items()
        }
    return RunResult(
        config=config,
        seed=int(seed),
        history={m: np.asarray(history.history[m], dtype="float32") for m in METRICS},
        final=final,
        target=protocol.target,
        moving_stats=moving,
        seconds=timer.seconds,
        engine=NAME,
        callbacks=user,
        weights=model.get_weights(),
    )


def run_seeds(
    protocol: Protocol,
    config: str,
    seeds: Iterable[int],
    *,
    data: StudyData,
    settings: RunSettings,
    callbacks_factory: CallbacksFactory | None = None,
) -> Iterator[RunResult]:
    """`run` for each seed in turn (lazily: seeds are read one at a time)."""
    for seed in seeds:
        yield run(
            protocol,
            config,
            seed,
            data=data,
            settings=settings,
            callbacks_factory=callbacks_factory,
        )
