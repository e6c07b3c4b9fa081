"""`RunResult`: one run of a study (one config, one seed), and the names of its curves."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_bn_tools.studies.statistics import epochs_to

__all__ = ["BOUNDS", "LABELS", "METRICS", "RunResult", "curve_names"]

#: Per-epoch curves of an accuracy study, in `model.fit`'s history names.
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
#: How tables and plots name a metric's history key.
LABELS = {"accuracy": "acc", "mse": "MSE", "mae": "MAE", "auc": "AUC"}
#: The range of each history key's metric, where it has one.
BOUNDS = {"accuracy": (0.0, 1.0), "auc": (0.0, 1.0), "mse": (0.0, math.inf),
          "mae": (0.0, math.inf)}  # fmt: skip


def curve_names(metric: str = "accuracy") -> tuple[str, str, str, str]:
    """The per-epoch curves of a study whose metric is `metric` (a history key):
    `("loss", metric, "val_loss", "val_" + metric)`."""
    return ("loss", metric, "val_loss", f"val_{metric}")


def _clean(value: float, name: str = "loss") -> float:
    """A float32 value or a loss (computed in float32) as the shortest float that
    round-trips through float32 (7 digits); a float64 metric as it is."""
    float32 = isinstance(value, np.float32) or name.endswith("loss")
    return float(f"{float(value):.7g}") if float32 else float(value)


@dataclass
class RunResult:
    """One run: one config, one seed.

    Attributes:
        config: the config's name.
        seed: the seed of `keras.utils.set_random_seed` before building, and of
            the data order.
        history: `curve_names(metric)` -> per-epoch values, as `model.fit`'s
            history: `loss`/`<metric>` are over the epoch's batches of the
            training-mode outputs before each update; `val_loss`/`val_<metric>`
            are inference-mode values on the test set after the epoch.
        final: inference-mode `train_loss`, `train_<metric>`, `test_loss`,
            `test_<metric>` after the last epoch (the tutorial's `model.evaluate`).
        target: the protocol's target, in the metric's units.
        moving_stats: BN layer key -> stat -> array `(epochs, features)`: the
            value at the end of each epoch.
        seconds: wall time of the run (a compiled engine spreads its compile
            time over the runs it compiled for).
        compile_seconds: the part of `seconds` spent compiling, where the
            engine measures it apart (JAX); 0 otherwise.
        engine: the engine that ran it: `"compiled"` or `"fit"`.
        callbacks: the callbacks `callbacks_factory` made for this run (fit engine).
        weights: the final `model.get_weights()`.
        metric: the metric's history key: `"accuracy"` (every accuracy), `"mse"`,
            `"mae"` or `"auc"`.
        mode: `"max"` (the target is reached at `>=`) or `"min"` (at `<=`).
        settings: the run's training settings (`epochs`, `batch_size`,
            `shuffle`, `optimizer`: the config's overrides applied).
    """

    config: str
    seed: int
    history: dict[str, np.ndarray]
    final: dict[str, float] = field(default_factory=dict)
    target: float = 0.8
    moving_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: float = float("nan")
    compile_seconds: float = 0.0
    engine: str = "compiled"
    callbacks: list[Any] = field(default_factory=list, repr=False, compare=False)
    weights: list[np.ndarray] | None = field(default=None, repr=False, compare=False)
    metric: str = "accuracy"
    mode: str = "max"
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def epochs(self) -> int:
        return len(self.history[f"val_{self.metric}"])

    @property
    def final_train_metric(self) -> float:
        """Inference-mode metric on the training set after the last epoch."""
        return float(self.final[f"train_{self.metric}"])

    @property
    def final_test_metric(self) -> float:
        """Inference-mode metric on the test set after the last epoch."""
        key = f"test_{self.metric}"
        return float(self.final.get(key, self.history[f"val_{self.metric}"][-1]))

    @property
    def last_epoch_metric(self) -> float:
        """The last epoch's training metric as `fit` reports it (training mode)."""
        return float(self.history[self.metric][-1])

    def _accuracy(self, value: float) -> float:
        if self.metric != "accuracy":
            raise AttributeError(
                f"This run's metric is {self.metric!r}, not an accuracy; read "
                f"final_train_metric / final_test_metric / last_epoch_metric."
            )
        return value

    @property
    def final_train_accuracy(self) -> float:
        """Inference-mode accuracy on the training set after the last epoch."""
        return self._accuracy(self.final_train_metric)

    @property
    def final_test_accuracy(self) -> float:
        """Inference-mode accuracy on the test set after the last epoch."""
        return self._accuracy(self.final_test_metric)

    @property
    def last_epoch_accuracy(self) -> float:
        """The last epoch's training accuracy as `fit` reports it (training mode)."""
        return self._accuracy(self.last_epoch_metric)

    def epochs_to(self, threshold: float, metric: str | None = None) -> int | None:
        """First epoch (1-based) whose `metric` (default: `val_<metric>`) reaches
        `threshold` (`>=` in mode "max", `<=` in mode "min"), or None if never."""
        return epochs_to(self.history[metric or f"val_{self.metric}"], threshold, self.mode)

    @property
    def epochs_to_target(self) -> int | None:
        """First epoch (1-based) whose test metric reaches `target`, or None if never."""
        return self.epochs_to(self.target)

    def to_dict(self, *, moving_stats: bool = False) -> dict[str, Any]:
        item = {
            "config": self.config,
            "seed": self.seed,
            "engine": self.engine,
            "seconds": self.seconds,
            "metric": self.metric,
            "mode": self.mode,
            "settings": self.settings,
            "final_train_metric": self.final_train_metric,
            "final_test_metric": self.final_test_metric,
            "last_epoch_metric": self.last_epoch_metric,
        }
        if self.metric == "accuracy":
            item.update(
                final_train_accuracy=item["final_train_metric"],
                final_test_accuracy=item["final_test_metric"],
                last_epoch_accuracy=item["last_epoch_metric"],
            )
        item.update(
            epochs_to_target=self.epochs_to_target,
            final={k: _clean(v, k) for k, v in self.final.items()},
            history={m: [_clean(v, m) for v in self.history[m]] for m in curve_names(self.metric)},
        )
        if moving_stats:
            item["moving_stats"] = {
                layer: {stat: np.asarray(v).tolist() for stat, v in stats.items()}
                for layer, stats in self.moving_stats.items()
            }
        return item

    @classmethod
    def from_dict(cls, item: dict[str, Any], target: float) -> RunResult:
        return cls(
            config=item["config"],
            seed=int(item["seed"]),
            history={
                m: np.asarray(v, dtype="float32" if m.endswith("loss") else "float64")
                for m, v in item["history"].items()
            },
            final={k: float(v) for k, v in item.get("final", {}).items()},
            target=target,
            moving_stats={
                layer: {stat: np.asarray(v, dtype="float32") for stat, v in stats.items()}
                for layer, stats in item.get("moving_stats", {}).items()
            },
            seconds=float(item.get("seconds", float("nan"))),
            engine=item.get("engine", "fit"),
            metric=item.get("metric", "accuracy"),
            mode=item.get("mode", "max"),
            settings=dict(item.get("settings", {})),
        )
