"""`StudyResult`: every run of a study, with statistics, tables, files and plots
(`RunResult`, one run, is in `studies.runs`)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_bn_tools._files import atomic_write_text
from keras_bn_tools.studies.runs import BOUNDS, LABELS, METRICS, RunResult, curve_names
from keras_bn_tools.studies.statistics import describe, describe_epochs, format_seeds, format_table

__all__ = ["METRICS", "RunResult", "StudyResult", "curve_names"]


@dataclass
class StudyResult:
    """Every run of a study, with statistics, tables, files and plots.

    Attributes:
        protocol: the protocol's name.
        runs: one `RunResult` per config and seed (configs in order, seeds in order).
        configs: the config names, in order.
        seeds: the seeds, in order.
        epochs: epochs per run.
        batch_size: training batch size.
        shuffle: the data order (`"epoch"`, `"once"` or `"none"`).
        target: the protocol's target, in the metric's units.
        engine: the engine that ran (`"compiled"` or `"fit"`, never `"auto"`).
        seconds: wall time of the whole study.
        metadata: versions, the protocol's description, engine details, each
            config's settings (`config_settings`).
        metric: the metric's history key (`"accuracy"`, `"mse"`, `"mae"`, `"auc"`).
        mode: `"max"` or `"min"`: the direction in which the target is reached.
    """

    protocol: str
    runs: list[RunResult]
    configs: tuple[str, ...]
    seeds: Sequence[int]
    epochs: int
    batch_size: int
    engine: str
    shuffle: str = "epoch"
    target: float = 0.8
    seconds: float = float("nan")
    metadata: dict[str, Any] = field(default_factory=dict)
    metric: str = "accuracy"
    mode: str = "max"

    @property
    def curves(self) -> tuple[str, str, str, str]:
        """The per-epoch curves every run records: `curve_names(metric)`."""
        return curve_names(self.metric)

    def runs_for(self, config: str) -> list[RunResult]:
        """The runs of one config, in seed order."""
        if config not in self.configs:
            raise KeyError(f"No config {config!r} in this study; it has {list(self.configs)}.")
        return [run for run in self.runs if run.config == config]

    def histories(self, metrics: Sequence[str] | None = None) -> dict[str, list[dict[str, list]]]:
        """config -> one `History.history`-like dict per run (for `plot_learning_curves`)."""
        metrics = self.curves if metrics is None else metrics
        return {
            c: [{m: list(map(float, r.history[m])) for m in metrics} for r in self.runs_for(c)]
            for c in self.configs
        }

    def summary(self, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
        """config -> `runs`, `train_<metric>`, `test_<metric>`, `last_epoch_<metric>`
        (each `n`, `mean`, `sd`, `ci`: the interval clipped to the metric's range) and
        `epochs_to_target` (`median`, `min`, `max`, `reached`, `n`). See
        `keras_bn_tools.studies.statistics`."""
        bounds, key, out = BOUNDS.get(self.metric), self.metric, {}
        for config in self.configs:
            runs = self.runs_for(config)
            values = {
                f"train_{key}": [r.final_train_metric for r in runs],
                f"test_{key}": [r.final_test_metric for r in runs],
                f"last_epoch_{key}": [r.last_epoch_metric for r in runs],
            }
            out[config] = {
                "runs": len(runs),
                **{name: describe(v, confidence, bounds=bounds) for name, v in values.items()},
                "epochs_to_target": describe_epochs([r.epochs_to_target for r in runs]),
            }
        return out

    def table(self, confidence: float = 0.95) -> str:
        """A Markdown table, one row per config, with a note on what each column means."""
        label = LABELS.get(self.metric, self.metric)
        direction = ">=" if self.mode == "max" else "<="
        overrides = {c: s for c, s in self.metadata.get("config_overrides", {}).items() if s}
        note = (
            f"{self.protocol}: {len(self.seeds)} seeds ({format_seeds(self.seeds)}) x "
            f"{self.epochs} epochs, batch size {self.batch_size}, shuffle={self.shuffle}, "
            f"engine={self.engine}; metric {label} ({self.metric}, "
            f"{'higher' if self.mode == 'max' else 'lower'} is better). "
            + "".join(f"Config {c}: {_settings(o)}. " for c, o in overrides.items())
            + f"{label}: mean ± sd over seeds; train and test {label} in inference mode "
            f"after the last epoch; fit-reported: the last epoch's, in training mode over "
            f"the epoch's batches. Epochs to target: first epoch whose test {label} is "
            f"{direction} the target; min-max over the runs that got there; the median counts "
            f"the others as slowest. CI: Student-t {confidence * 100:g}% interval of the "
            f"mean, clipped to the metric's range."
        )
        return format_table(self.summary(confidence), target=self.target, note=note,
                            metric=self.metric, mode=self.mode, confidence=confidence)  # fmt: skip

    def __str__(self) -> str:
        return self.table()

    # ------------------------------------------------------------------ files

    def to_dict(self, *, moving_stats: bool = False) -> dict[str, Any]:
        """Everything as plain JSON types (moving statistics only if asked: they are big)."""
        return {
            "protocol": self.protocol,
            "configs": list(self.configs),
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "engine": self.engine,
            "shuffle": self.shuffle,
            "metric": self.metric,
            "mode": self.mode,
            "target": self.target,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "summary": self.summary(),
            "runs": [run.to_dict(moving_stats=moving_stats) for run in self.runs],
        }

    def to_json(self, path: str | os.PathLike, *, moving_stats: bool = False) -> None:
        """Write `to_dict()` as JSON (atomically: a temporary file, then `os.replace`)."""
        text = json.dumps(self.to_dict(moving_stats=moving_stats), indent=1)
        atomic_write_text(path, text + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> StudyResult:
        """Read a study written by `to_json`."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        target = float(data.get("target", 0.8))
        return cls(
            protocol=data.get("protocol", "circles"),
            runs=[RunResult.from_dict(item, target) for item in data["runs"]],
            configs=tuple(data["configs"]),
            seeds=tuple(data["seeds"]),
            epochs=int(data["epochs"]),
            batch_size=int(data["batch_size"]),
            engine=data["engine"],
            shuffle=str(data.get("shuffle", "epoch")),
            target=target,
            seconds=float(data.get("seconds", float("nan"))),
            metadata=data.get("metadata", {}),
            metric=str(data.get("metric", "accuracy")),
            mode=str(data.get("mode", "max")),
        )

    def to_csv(self, path: str | os.PathLike, *, per: str = "epoch") -> None:
        """Write a CSV file (atomically).

        Args:
            path: file to write.
            per: `"epoch"`: one row per run per epoch (`config, seed, epoch,
                loss, accuracy, val_loss, val_accuracy`, epoch 1-based);
                `"run"`: one row per run (final accuracies, epochs to target
                (empty if never), seconds, engine).
        """
        if per not in ("epoch", "run"):
            raise ValueError(f"`per` must be 'epoch' or 'run', got {per!r}.")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if per == "epoch":
            writer.writerow(["config", "seed", "epoch", *self.curves])
            for run in self.runs:
                for e in range(run.epochs):
                    values = [_format(run.history[m][e], m) for m in self.curves]
                    writer.writerow([run.config, run.seed, e + 1, *values])
        else:
            columns = [f"final_train_{self.metric}", f"final_test_{self.metric}",
                       f"last_epoch_{self.metric}"]  # fmt: skip
            writer.writerow(["config", "seed", *columns, "epochs_to_target", "seconds",
                             "engine", "metric", "mode", "epochs", "batch_size"])  # fmt: skip
            for run in self.runs:
                reached = run.epochs_to_target
                values = (run.final_train_metric, run.final_test_metric, run.last_epoch_metric)
                writer.writerow(
                    [run.config, run.seed, *(_format(v, self.metric) for v in values),
                     "" if reached is None else reached, f"{run.seconds:.4f}", run.engine,
                     self.metric, self.mode, run.settings.get("epochs", self.epochs),
                     run.settings.get("batch_size", self.batch_size)]
                )  # fmt: skip
        atomic_write_text(path, buffer.getvalue())

    def moving_stats_arrays(self) -> dict[str, np.ndarray]:
        """`"config/seed/layer/stat"` -> array `(epochs, features)`, for `np.savez`."""
        return {
            f"{run.config}/{run.seed}/{layer}/{stat}": np.asarray(values)
            for run in self.runs
            for layer, stats in run.moving_stats.items()
            for stat, values in stats.items()
        }

    # ------------------------------------------------------------------ plots

    def plot(
        self,
        path: str | os.PathLike | None = None,
        *,
        metrics: Sequence[str] | None = None,
        band: str | None = "sd",
        title: str | None = None,
    ):
        """Learning curves: per config the mean over seeds with a band, one panel per metric.

        Args:
            path: save the figure there (format from the extension).
            metrics: history names to plot (`self.curves`), one panel each
                (default: the metric's training and test curves).
            band: `"sd"`, `"se"`, `"minmax"` or None (see `plot_learning_curves`).
            title: figure title (default: says what is plotted).

        Returns:
            The matplotlib `Figure` (drawn by `keras_bn_tools.plotting.plot_learning_curves`;
            the metric's panels get a dashed line at the protocol's target).
        """
        from keras_bn_tools.plotting import plot_learning_curves

        metrics = self.curves[1::2] if metrics is None else metrics
        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in self.curves]
        if unknown:
            raise ValueError(f"Unknown `metrics` {unknown}; a study records {list(self.curves)}.")
        threshold = self.target if all(m.endswith(self.metric) for m in metrics) else None
        if title is None:
            what = {"sd": "± 1 sd", "se": "± 1 se", "minmax": "min-max", None: "no"}.get(band, "")
            better = "higher" if self.mode == "max" else "lower"
            title = (
                f"{self.protocol}: mean over {len(self.seeds)} seeds ({what} band), "
                f"{self.epochs} epochs, shuffle={self.shuffle}, engine={self.engine}; "
                f"{LABELS.get(self.metric, self.metric)}: {better} is better"
            )
        return plot_learning_curves(
            self.histories(metrics),
            metrics=metrics,
            band=band,
            title=title,
            threshold=threshold,
            path=path,
        )


def _format(value: float, name: str) -> str:
    """A loss with float32's 7 digits; a metric (float64) exactly (`repr`)."""
    float32 = isinstance(value, np.float32) or name.endswith("loss")
    return f"{float(value):.7g}" if float32 else repr(float(value))


def _settings(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{name.replace('_', ' ')} {value}" for name, value in overrides.items())
