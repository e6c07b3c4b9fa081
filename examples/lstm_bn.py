"""Batch normalization placements for an LSTM on a small sequence task.

The task: each sequence holds `TIMESTEPS` noisy increments (feature 0) next to a distractor
feature (feature 1); the label says whether the increments' running sum ends above zero. The
script trains `build_lstm` with each placement (the `sequence` study,
`keras-bn-tools sequence`, runs the same task over many seeds):

- "none":   LSTM -> Dense
- "after":  LSTM -> BatchNormalization -> Dense
- "before": BatchNormLSTM (recurrent batch normalization, Cooijmans et al. 2016) -> Dense

and prints the test accuracy of each after the first epoch and at the end. After one epoch
"before" still lags: its moving statistics (one set per time step, momentum 0.99) need a few
hundred training steps to settle, and inference uses them. Run it with

    python examples/lstm_bn.py [--epochs N] [--seed S]

It takes well under a minute on two CPU cores.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

from keras_bn_tools import build_lstm
from keras_bn_tools.studies.sequence import FEATURES, TIMESTEPS, make_sequences


class EpochAccuracy(keras.callbacks.Callback):
    """Test accuracy (inference mode) after every epoch."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        super().__init__()
        self.x, self.y, self.accuracy = x, y, []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        predictions = self.model.predict(self.x, batch_size=512, verbose=0)[:, 0]
        self.accuracy.append(float(np.mean((predictions > 0.5) == self.y)))


def run(placement: str, data, *, epochs: int, seed: int) -> dict[str, float]:
    (train_x, train_y), (test_x, test_y) = data
    keras.utils.set_random_seed(seed)
    model = build_lstm((TIMESTEPS, FEATURES), (16,), bn=placement)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=3e-3),
        loss="binary_crossentropy",
        metrics=["accuracy"],
    )
    tracker = EpochAccuracy(test_x, test_y)
    start = time.perf_counter()
    history = model.fit(
        train_x, train_y, epochs=epochs, batch_size=32, callbacks=[tracker], verbose=0
    )
    return {
        "train": history.history["accuracy"][-1],
        "test_epoch1": tracker.accuracy[0],
        "test": tracker.accuracy[-1],
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    data = (make_sequences(2000, rng), make_sequences(1000, rng))
    print(f"sign of a noisy running sum: {TIMESTEPS} steps, 2000 train / 1000 test sequences")
    print(f"{'placement':<10} {'test acc ep 1':>13} {'test acc':>9} {'train acc':>10} {'fit s':>6}")
    for placement in ("none", "after", "before"):
        r = run(placement, data, epochs=args.epochs, seed=args.seed)
        print(
            f"{placement:<10} {r['test_epoch1']:>13.3f} {r['test']:>9.3f} {r['train']:>10.3f} "
            f"{r['seconds']:>6.1f}"
        )


if __name__ == "__main__":
    main()
