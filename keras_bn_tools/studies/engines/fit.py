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
    fresh_model,
    loss_fn,
    score_run,
    stat_variables,
)
from keras_bn_tools.studies.protocol import Protocol
from keras_bn_tools.studies.results import RunResult

__all__ = ["NAME", "ordered_batches", "predict", "run", "run_seeds"]

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


def predict(model: Any, x: np.ndarray, y: np.ndarray, protocol: Protocol, batch_size: int):
    """Inference-mode loss (regularization losses included, as fit's) and predictions
    (float32 NumPy) of `model` on `(x, y)`."""
    import keras

    # Direct calls, not model.predict: predict would trace a new function per model, and
    # TensorFlow warns about "retracing" after a few runs.
    chunk = max(1024, batch_size)
    parts = [model(x[i : i + chunk], training=False) for i in range(0, len(x), chunk)]
    y_pred = keras.ops.concatenate(parts) if len(parts) > 1 else parts[0]
    loss = float(keras.ops.convert_to_numpy(loss_fn(protocol)(y, y_pred)))
    loss += sum(float(keras.ops.convert_to_numpy(extra)) for extra in model.losses)
    return loss, keras.ops.convert_to_numpy(keras.ops.cast(y_pred, "float32"))


def _recorders(protocol: Protocol, data: StudyData, batch_size: int):
    """The metric that keeps an epoch's training-mode predictions (fed to `compile`) and
    the callback that collects them and the test set's loss and predictions after each
    epoch, writing `val_loss` into the epoch's logs for the callbacks after it."""
    import keras
    from keras import ops

    rank = len(data.output_shape)

    class TrainingPredictions(keras.metrics.Metric):
        def __init__(self):
            super().__init__(name="training_predictions")
            self.predictions = self.add_variable(
                shape=(data.rows, *data.output_shape), initializer="zeros", name="predictions"
            )
            self.offset = self.add_variable(shape=(), initializer="zeros", dtype="int32",
                                            name="offset")  # fmt: skip

        def update_state(self, y_true, y_pred, sample_weight=None):
            offset = ops.convert_to_tensor(self.offset)
            start = ops.concatenate([ops.reshape(offset, (1,)), ops.zeros((rank,), "int32")])
            buffer = ops.convert_to_tensor(self.predictions)
            self.predictions.assign(ops.slice_update(buffer, start, ops.cast(y_pred, "float32")))
            self.offset.assign(offset + ops.shape(y_pred)[0])

        def result(self):
            return ops.cast(self.offset, "float32")

        def reset_state(self):
            self.offset.assign(0)

    predictions = TrainingPredictions()
    raw: dict[str, list] = {"train_predictions": [], "val_loss": [], "test_predictions": []}

    class Collector(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raw["train_predictions"].append(ops.convert_to_numpy(predictions.predictions))
            val_loss, test_pred = predict(self.model, data.test_x, data.test_y, protocol,
                                          batch_size)  # fmt: skip
            raw["val_loss"].append(val_loss)
            raw["test_predictions"].append(test_pred)
            if logs is not None:  # for the callbacks after this one (History, the user's)
                logs.pop(predictions.name, None)
                logs["val_loss"] = val_loss
                logs[f"val_{data.metric.key}"] = data.metric.score(data.test_y, test_pred)

    return predictions, Collector(), raw


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
    predictions, collector, raw = _recorders(protocol, data, settings.batch_size)
    model.compile(optimizer=settings.make_optimizer(protocol), loss=protocol.loss,
                  metrics=[predictions])  # fmt: skip
    orders = settings.orders(seed, data.rows)
    batches, epoch_setter = ordered_batches(data, orders, settings.batch_size)
    tracker = MovingStatsTracker(every="epoch") if stat_variables(model) else None
    user = list(callbacks_factory(config, seed) or []) if callbacks_factory else []
    history = model.fit(
        batches,
        epochs=settings.epochs,
        shuffle=False,
        verbose=0,
        callbacks=[epoch_setter, collector, *([tracker] if tracker else []), *user],
    )
    raw["loss"] = history.history["loss"]
    raw["train_loss"], raw["final_train_predictions"] = predict(
        model, data.train_x, data.train_y, protocol, settings.batch_size
    )
    curves, final = score_run(data, orders, raw)
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
        history=curves,
        final=final,
        target=protocol.target,
        moving_stats=moving,
        seconds=timer.seconds,
        engine=NAME,
        callbacks=user,
        weights=model.get_weights(),
        metric=data.metric.key,
        mode=protocol.direction,
        settings=settings.record(),
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
