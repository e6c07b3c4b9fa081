"""`RunResult` (one config, one seed) and `StudyResult` (every run, with tables and files)."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from keras_bn_tools.studies.statistics import (
    describe,
    describe_epochs,
    epochs_to,
    format_seeds,
    format_table,
)

__all__ = ["METRICS", "RunResult", "StudyResult"]

#: Per-epoch curves recorded for every run, in `model.fit`'s history names.
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def _clean(value: float) -> float:
    """A float32 value as the shortest float that round-trips through float32 (7 digits)."""
    return float(f"{float(value):.7g}")


@dataclass
class RunResult:
    """One run: one config, one seed.

    Attributes:
        config: the config's name.
        seed: the seed of `keras.utils.set_random_seed` before building, and of
            the data order.
        history: `METRICS` name -> per-epoch values, as `model.fit`'s history:
            `loss`/`accuracy` are averages over the epoch's batches of the
            training-mode outputs before each update; `val_loss`/`val_accuracy`
            are inference-mode values on the test set after the epoch.
        final: inference-mode `train_loss`, `train_accuracy`, `test_loss`,
            `test_accuracy` after the last epoch (the tutorial's `model.evaluate`).
        target: the protocol's target test accuracy.
        moving_stats: BN layer key -> stat -> array `(epochs, features)`: the
            value at the end of each epoch.
        seconds: wall time of the run (a compiled engine spreads its compile
            time over the runs it compiled for).
        compile_seconds: the part of `seconds` spent compiling, where the
            engine measures it apart (JAX); 0 otherwise.
        engine: the engine that ran it: `"compiled"` or `"fit"`.
        callbacks: the callbacks `callbacks_factory` made for this run (fit engine).
        weights: the final `model.get_weights()`.
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

    @property
    def epochs(self) -> int:
        return len(self.history["val_accuracy"])

    @property
    def final_train_accuracy(self) -> float:
        """Inference-mode accuracy on the training set after the last epoch."""
        return float(self.final["train_accuracy"])

    @property
    def final_test_accuracy(self) -> float:
        """Inference-mode accuracy on the test set after the last epoch."""
        return float(self.final.get("test_accuracy", self.history["val_accuracy"][-1]))

    @property
    def last_epoch_accuracy(self) -> float:
        """The last epoch's training accuracy as `fit` reports it (training mode)."""
        return float(self.history["accuracy"][-1])

    def epochs_to(self, threshold: float, metric: str = "val_accuracy") -> int | None:
        """First epoch (1-based) whose `metric` is >= `threshold`, or None if never."""
        return epochs_to(self.history[metric], threshold)

    @property
    def epochs_to_target(self) -> int | None:
        """First epoch (1-based) whose test accuracy reaches `target`, or None if never."""
        return self.epochs_to(self.target)

    def to_dict(self, *, moving_stats: bool = False) -> dict[str, Any]:
        item = {
            "config": self.config,
            "seed": self.seed,
            "engine": self.engine,
            "seconds": self.seconds,
            "final_train_accuracy": _clean(self.final_train_accuracy),
            "final_test_accuracy": _clean(self.final_test_accuracy),
            "last_epoch_accuracy": _clean(self.last_epoch_accuracy),
            "epochs_to_target": self.epochs_to_target,
            "final": {k: _clean(v) for k, v in self.final.items()},
            "history": {m: [_clean(v) for v in self.history[m]] for m in METRICS},
        }
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
            history={m: np.asarray(v, dtype="float32") for m, v in item["history"].items()},
            final={k: float(v) for k, v in item.get("final", {}).items()},
            target=target,
            moving_stats={
                layer: {stat: np.asarray(v, dtype="float32") for stat, v in stats.items()}
                for layer, stats in item.get("moving_stats", {}).items()
            },
            seconds=float(item.get("seconds", float("nan"))),
            engine=item.get("engine", "fit"),
        )


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
        target: the protocol's target test accuracy.
        engine: the engine that ran (`"compiled"` or `"fit"`, never `"auto"`).
        seconds: wall time of the whole study.
        metadata: versions, the protocol's description, engine details.
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

    def runs_for(self, config: str) -> list[RunResult]:
        """The runs of one config, in seed order."""
        if config not in self.configs:
            raise KeyError(f"No config {config!r} in this study; it has {list(self.configs)}.")
        return [run for run in self.runs if run.config == config]

    def histories(self, metrics: Sequence[str] = METRICS) -> dict[str, list[dict[str, list]]]:
        """config -> one `History.history`-like dict per run (for `plot_learning_curves`)."""
        return {
            c: [{m: list(map(float, r.history[m])) for m in metrics} for r in self.runs_for(c)]
            for c in self.configs
        }

    def summary(self, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
        """config -> `runs`, `train_accuracy`, `test_accuracy`, `last_epoch_accuracy`
        (each `n`, `mean`, `sd`, `ci`) and `epochs_to_target` (`median`, `min`, `max`,
        `reached`, `n`). See `keras_bn_tools.studies.statistics`."""
        out = {}
        for config in self.configs:
            runs = self.runs_for(config)
            out[config] = {
                "runs": len(runs),
                "train_accuracy": describe([r.final_train_accuracy for r in runs], confidence),
                "test_accuracy": describe([r.final_test_accuracy for r in runs], confidence),
                "last_epoch_accuracy": describe([r.last_epoch_accuracy for r in runs], confidence),
                "epochs_to_target": describe_epochs([r.epochs_to_target for r in runs]),
            }
        return out

    def table(self, confidence: float = 0.95) -> str:
        """A Markdown table, one row per config, with a note on what each column means."""
        note = (
            f"{self.protocol}: {len(self.seeds)} seeds ({format_seeds(self.seeds)}) x "
            f"{self.epochs} epochs, batch size {self.batch_size}, shuffle={self.shuffle}, "
            f"engine={self.engine}. Accuracies: mean ± sd over seeds; train and test acc in "
            f"inference mode after the last epoch; fit-reported: the last epoch's running "
            f"mean in training mode. Epochs to target: min-max over the runs that got there; "
            f"the median counts the others as slowest. CI: Student-t {confidence * 100:g}% "
            f"interval of the mean."
        )
        return format_table(self.summary(confidence), target=self.target, note=note)

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
            "target": self.target,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "summary": self.summary(),
            "runs": [run.to_dict(moving_stats=moving_stats) for run in self.runs],
        }

    def to_json(self, path: str | os.PathLike, *, moving_stats: bool = False) -> None:
        """Write `to_dict()` as JSON (atomically: a temporary file, then `os.replace`)."""
        text = json.dumps(self.to_dict(moving_stats=moving_stats), indent=1)
        _atomic_write_text(path, text + "\n")

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
            writer.writerow(["config", "seed", "epoch", *METRICS])
            for run in self.runs:
                for e in range(run.epochs):
                    values = [f"{_clean(run.history[m][e]):.7g}" for m in METRICS]
                    writer.writerow([run.config, run.seed, e + 1, *values])
        else:
            columns = ["final_train_accuracy", "final_test_accuracy", "last_epoch_accuracy"]
            writer.writerow(["config", "seed", *columns, "epochs_to_target", "seconds", "engine"])
            for run in self.runs:
                reached = run.epochs_to_target
                writer.writerow(
                    [run.config, run.seed]
                    + [f"{_clean(getattr(run, c)):.7g}" for c in columns]
                    + ["" if reached is None else reached, f"{run.seconds:.4f}", run.engine]
                )
        _atomic_write_text(path, buffer.getvalue())

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
        metrics: Sequence[str] = ("accuracy", "val_accuracy"),
        band: str | None = "sd",
        title: str | None = None,
    ):
        """Learning curves: per config the mean over seeds with a band, one panel per metric.

        Args:
            path: save the figure there (format from the extension).
            metrics: history names to plot (`METRICS`), one panel each.
            band: `"sd"`, `"se"`, `"minmax"` or None (see `plot_learning_curves`).
            title: figure title (default: says what is plotted).

        Returns:
            The matplotlib `Figure` (drawn by `keras_bn_tools.plotting.plot_learning_curves`;
            accuracy panels get a dashed line at the protocol's target).
        """
        from keras_bn_tools.plotting import plot_learning_curves

        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"Unknown `metrics` {unknown}; a study records {list(METRICS)}.")
        threshold = self.target if all("accuracy" in m for m in metrics) else None
        if title is None:
            what = {"sd": "± 1 sd", "se": "± 1 se", "minmax": "min-max", None: "no"}.get(band, "")
            title = (
                f"{self.protocol}: mean over {len(self.seeds)} seeds ({what} band), "
                f"{self.epochs} epochs, shuffle={self.shuffle}, engine={self.engine}"
            )
        return plot_learning_curves(
            self.histories(metrics),
            metrics=metrics,
            band=band,
            title=title,
            threshold=threshold,
            path=path,
        )


def _atomic_write_text(path: str | os.PathLike, text: str) -> None:
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
