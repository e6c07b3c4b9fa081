"""The circles study: does batch normalization speed up learning, and where should it go?

This reproduces the well-known "circles" tutorial over many seeds. A small MLP
(2 -> Dense(50, relu, he_uniform) -> Dense(1, sigmoid)) learns
`sklearn.datasets.make_circles(n_samples=1000, noise=0.1, random_state=1)`,
first 500 rows for training, last 500 for testing, with SGD(learning_rate=0.01,
momentum=0.9), binary cross-entropy and batches of 32 (the last one of each
epoch has 20 samples) for 100 epochs. The test set is the validation data.
Runs of one config differ only by their seed: `keras.utils.set_random_seed(seed)`
before the model is built, and the order of the training samples is what
`model.fit(shuffle=True)` uses under that seed (one seeded permutation, reused
every epoch: see `fit_permutation`).

Per run and epoch it records what `model.fit` reports: `loss` and `accuracy`
(running averages over the epoch's batches, weighted by the number of
samples, computed on the training-mode outputs *before* each update), and
`val_loss`, `val_accuracy` (inference mode, after the epoch); the moving
statistics, `gamma` and `beta` of every BN layer at the end of each epoch; and
after training, the inference-mode loss and accuracy on the training and test
sets (the tutorial's `model.evaluate`).

Two engines run the same protocol:

- `engine="fit"`: plain `model.compile(...)` + `model.fit(...)`, one run after
  the other. The reference; it accepts callbacks.
- `engine="compiled"` (default): TensorFlow only. Each run (every epoch,
  every batch, the validation pass and the metric bookkeeping) is one
  `tf.function` built from `tf.while_loop`s, so no Python code runs per step
  or per epoch. It calls the same Keras model (BN's moving-statistics updates
  included) and the same Keras optimizer, and is traced once per config: each
  seed re-initializes the model and optimizer variables and reuses the graph.
  With the same seed it feeds the same batches as `fit` and gives the same
  numbers up to float round-off, typically 20-40x faster for this tiny model,
  whose cost in `fit` is per-epoch framework overhead, not arithmetic.

Example:
    >>> from keras_bn_tools.studies.circles import run_study
    >>> result = run_study(seeds=range(10))          # doctest: +SKIP
    >>> print(result.table())                        # doctest: +SKIP
    >>> result.plot("curves.png")                    # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import platform
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "BN_STATS",
    "CONFIGS",
    "DEFAULT_CONFIGS",
    "ENGINES",
    "METRICS",
    "SHUFFLES",
    "CirclesConfig",
    "RunResult",
    "StudyResult",
    "fit_permutation",
    "load_circles",
    "run_study",
]

#: Per-epoch curves recorded for every run, in `model.fit`'s history names.
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")
#: Per-epoch statistics recorded for every BN layer (those the layer has).
BN_STATS = ("moving_mean", "moving_variance", "gamma", "beta")
#: The tutorial's three models.
DEFAULT_CONFIGS = ("baseline", "bn-after", "bn-before")
ENGINES = ("compiled", "fit")

LEARNING_RATE = 0.01
SGD_MOMENTUM = 0.9
#: The test accuracy whose first crossing `epochs_to_80` reports.
TARGET_ACCURACY = 0.80


# --------------------------------------------------------------------------- data


def load_circles(
    n_samples: int = 1000, noise: float = 0.1, random_state: int = 1, n_train: int = 500
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """The tutorial's data: `make_circles`, first `n_train` rows train, the rest test.

    Args:
        n_samples: total number of points.
        noise: standard deviation of the Gaussian noise added to the points.
        random_state: seed of `make_circles` (the tutorial's split uses 1).
        n_train: number of leading rows used for training, in `[1, n_samples - 1]`.

    Returns:
        `((train_x, train_y), (test_x, test_y))`; `x` is float32 of shape
        `(rows, 2)`, `y` is float32 of shape `(rows,)` with values 0 and 1.
        The values are `make_circles`'s, cast to float32 (what Keras trains on).

    Raises:
        ValueError: if `n_samples < 2` or `n_train` is outside `[1, n_samples - 1]`.
    """
    from sklearn.datasets import make_circles

    n_samples = _check_int("n_samples", n_samples, minimum=2)
    n_train = _check_int("n_train", n_train, minimum=1)
    if n_train >= n_samples:
        raise ValueError(
            f"`n_train` must be smaller than `n_samples` ({n_samples}) so that the test set "
            f"is not empty, got {n_train}."
        )
    x, y = make_circles(n_samples=n_samples, noise=noise, random_state=random_state)
    x = x.astype("float32")
    y = y.astype("float32")
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


# --------------------------------------------------------------------------- configs


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower()


def _momentum_batch_normalization(**kwargs: Any):
    """`keras_bn_tools.layers.MomentumBatchNormalization(**kwargs)`, imported on use."""
    from keras_bn_tools.layers import MomentumBatchNormalization

    return MomentumBatchNormalization(**kwargs)


@dataclass(frozen=True)
class CirclesConfig:
    """One model of the study: where BN goes and which BN layer it is.

    Calling the config (or `.build()`) returns a fresh, uncompiled model made
    by `keras_bn_tools.build_mlp(2, hidden_units, bn=bn, input_bn=input_bn,
    bn_layer=...)`. The BN layers get stable names in call order
    (`batch_normalization`, `batch_normalization_1`, ... as in a fresh Keras
    session, after the layer's class), whatever was built before, so that
    `RunResult.moving_stats` has the same keys in every run and engine.

    Attributes:
        name: the config's name in tables, files and plots.
        description: one line for people.
        bn: BN placement at the hidden layer: `"none"`, `"after"` or `"before"`.
        input_bn: also put a BN layer right after the input.
        bn_layer: callable taking keyword arguments and returning a new
            normalization layer (default `keras.layers.BatchNormalization`).
        bn_kwargs: keyword arguments passed to `bn_layer`.
        hidden_units: units of the hidden `Dense` layers.
    """

    name: str
    description: str = ""
    bn: str = "after"
    input_bn: bool = False
    bn_layer: Callable[..., Any] | None = None
    bn_kwargs: Mapping[str, Any] = field(default_factory=dict)
    hidden_units: tuple[int, ...] = (50,)

    @property
    def has_bn(self) -> bool:
        return self.input_bn or str(self.bn).lower() != "none"

    def build(self):
        """A fresh, uncompiled `keras.Sequential` for this config (built, with weights)."""
        import keras

        from keras_bn_tools.builders import build_mlp

        make = self.bn_layer if self.bn_layer is not None else keras.layers.BatchNormalization
        counts: dict[str, int] = {}

        def bn_layer():
            layer = make(**dict(self.bn_kwargs))
            base = _snake_case(type(layer).__name__)
            index = counts.get(base, 0)
            counts[base] = index + 1
            layer.name = base if index == 0 else f"{base}_{index}"
            return layer

        return build_mlp(
            2,
            tuple(self.hidden_units),
            bn=self.bn,
            input_bn=self.input_bn,
            bn_layer=bn_layer,
            name=self.name,
        )

    def __call__(self):
        return self.build()


def _make_configs() -> dict[str, CirclesConfig]:
    configs = [
        CirclesConfig("baseline", "no BN: Dense(50, relu) -> Dense(1, sigmoid)", bn="none"),
        CirclesConfig("bn-after", "BN after the ReLU: Dense(50, relu) -> BN -> Dense(1)"),
        CirclesConfig(
            "bn-before", "BN before the ReLU: Dense(50) -> BN -> ReLU -> Dense(1)", bn="before"
        ),
        CirclesConfig(
            "bn-after-no-affine",
            "BN after the ReLU without beta and gamma (center=False, scale=False)",
            bn_kwargs={"center": False, "scale": False},
        ),
        CirclesConfig(
            "bn-after-momentum0",
            "BN after the ReLU with momentum 0 (moving statistics = last batch's)",
            bn_kwargs={"momentum": 0.0},
        ),
        CirclesConfig(
            "bn-input",
            "BN at the input and after the ReLU: BN -> Dense(50, relu) -> BN -> Dense(1)",
            input_bn=True,
        ),
        CirclesConfig(
            "bn-after-cumulative",
            "BN after the ReLU, MomentumBatchNormalization(momentum=None): moving statistics "
            "are the true average over every batch so far",
            bn_layer=_momentum_batch_normalization,
            bn_kwargs={"momentum": None},
        ),
        CirclesConfig(
            "bn-after-debiased",
            "BN after the ReLU, MomentumBatchNormalization(momentum=0.99, debias=True): "
            "bias-corrected moving averages",
            bn_layer=_momentum_batch_normalization,
            bn_kwargs={"momentum": 0.99, "debias": True},
        ),
    ]
    return {config.name: config for config in configs}


#: Every named config of the study: name -> `CirclesConfig` (callable, builds the model).
CONFIGS: dict[str, CirclesConfig] = _make_configs()


def _resolve_configs(configs: Any) -> list[CirclesConfig]:
    if isinstance(configs, (str, CirclesConfig)):
        configs = [configs]
    if isinstance(configs, Mapping):
        items = []
        for name, value in configs.items():
            if isinstance(value, CirclesConfig):
                items.append(value if value.name == name else _renamed(value, name))
            else:
                raise TypeError(f"`configs[{name!r}]` must be a CirclesConfig, got {value!r}.")
        configs = items
    if not isinstance(configs, Iterable):
        raise TypeError(
            f"`configs` must be a config name, a CirclesConfig or a sequence of them, "
            f"got {configs!r}."
        )
    resolved: list[CirclesConfig] = []
    for item in configs:
        if isinstance(item, CirclesConfig):
            resolved.append(item)
        elif isinstance(item, str) and item in CONFIGS:
            resolved.append(CONFIGS[item])
        else:
            raise ValueError(
                f"Unknown circles config {item!r}. Valid names: {', '.join(CONFIGS)} "
                f"(or pass a CirclesConfig)."
            )
    if not resolved:
        raise ValueError("`configs` must name at least one config.")
    names = [config.name for config in resolved]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"`configs` names a config more than once: {duplicates}.")
    return resolved


def _renamed(config: CirclesConfig, name: str) -> CirclesConfig:
    from dataclasses import replace

    return replace(config, name=name)


# --------------------------------------------------------------------------- results


def _epochs_to(values: np.ndarray, threshold: float) -> int | None:
    hits = np.flatnonzero(np.asarray(values) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


@dataclass
class RunResult:
    """One run: one config, one seed.

    Attributes:
        config: the config's name.
        seed: the seed passed to `keras.utils.set_random_seed` before building.
        history: `METRICS` name -> per-epoch values (float arrays of length
            `epochs`), as `model.fit`'s `History.history` has them: `loss` and
            `accuracy` are running averages over the epoch's batches of the
            training-mode outputs before each update; `val_loss` and
            `val_accuracy` are inference-mode values after the epoch.
        final: inference-mode `train_loss`, `train_accuracy`, `test_loss`,
            `test_accuracy` of the trained model on the whole training and test
            sets: what the tutorial's `model.evaluate` prints.
        moving_stats: BN layer name -> stat name (`BN_STATS` the layer has) ->
            array `(epochs, features)`, the values at the end of each epoch.
        seconds: wall time of the run (for `compiled`, the first seed of a config
            includes tracing and compiling the graph).
        engine: `"compiled"` or `"fit"`.
        callbacks: the callbacks `callbacks_factory` returned for this run (fit engine).
        weights: the final `model.get_weights()`.
    """

    config: str
    seed: int
    history: dict[str, np.ndarray]
    final: dict[str, float] = field(default_factory=dict)
    moving_stats: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    seconds: float = float("nan")
    engine: str = "compiled"
    callbacks: list[Any] = field(default_factory=list, repr=False, compare=False)
    weights: list[np.ndarray] | None = field(default=None, repr=False, compare=False)

    @property
    def epochs(self) -> int:
        return len(self.history["val_accuracy"])

    @property
    def final_train_accuracy(self) -> float:
        """Accuracy of the trained model on the training set in inference mode
        (the tutorial's `model.evaluate(train_x, train_y)`)."""
        return float(self.final["train_accuracy"])

    @property
    def final_test_accuracy(self) -> float:
        """Test (validation) accuracy after the last epoch, inference mode."""
        return float(self.history["val_accuracy"][-1])

    @property
    def last_epoch_accuracy(self) -> float:
        """Training accuracy of the last epoch as `model.fit` reports it (running
        average of the training-mode outputs; with BN it uses batch statistics)."""
        return float(self.history["accuracy"][-1])

    @property
    def final_loss(self) -> float:
        return float(self.history["loss"][-1])

    @property
    def final_val_loss(self) -> float:
        return float(self.history["val_loss"][-1])

    def epochs_to(self, threshold: float = TARGET_ACCURACY, metric: str = "val_accuracy"):
        """First epoch (1-based) whose `metric` is >= `threshold`, or None if never."""
        return _epochs_to(self.history[metric], threshold)

    @property
    def epochs_to_80(self) -> int | None:
        """First epoch (1-based) whose test accuracy is >= 0.80, or None if never."""
        return self.epochs_to(TARGET_ACCURACY)


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats  # a dependency of scikit-learn

    return float(stats.t.ppf(0.5 + confidence / 2.0, dof))


def _describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample sd (ddof=1) and the Student-t confidence interval of the mean."""
    x = np.asarray(values, dtype="float64")
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci": [float("nan")] * 2}
    sd = float(x.std(ddof=1))
    half = _t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}


def _describe_epochs(values: Sequence[int | None]) -> dict[str, Any]:
    """Median, min and max of first-crossing epochs; a run that never crossed counts as
    later than every epoch (so the median is None when half the runs or more never did)."""
    reached = sorted(v for v in values if v is not None)
    n = len(values)
    keyed = np.array(reached + [math.inf] * (n - len(reached)), dtype="float64")
    median = float(np.median(keyed)) if n else math.inf
    return {
        "n": n,
        "reached": len(reached),
        "median": None if not math.isfinite(median) else median,
        "min": reached[0] if reached else None,
        "max": reached[-1] if reached else None,
    }


def _fmt_number(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _clean(value: float) -> float:
    """A float32 value as the shortest float that round-trips through float32 (7 digits)."""
    return float(f"{float(value):.7g}")


@dataclass
class StudyResult:
    """Every run of a study, with tables, files and plots.

    Attributes:
        runs: one `RunResult` per config and seed, configs in the order given,
            seeds in the order given within a config.
        configs: the config names, in order.
        seeds: the seeds, in order.
        epochs, batch_size, engine, shuffle: the protocol's settings.
        seconds: wall time of the whole study.
        metadata: versions, the protocol and engine details.
    """

    runs: list[RunResult]
    configs: tuple[str, ...]
    seeds: tuple[int, ...]
    epochs: int
    batch_size: int = 32
    engine: str = "compiled"
    shuffle: str = "once"
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
            config: [
                {m: [float(v) for v in run.history[m]] for m in metrics}
                for run in self.runs_for(config)
            ]
            for config in self.configs
        }

    def summary(self, confidence: float = 0.95) -> dict[str, dict[str, Any]]:
        """config -> statistics of the final accuracies and the epochs to 80% test accuracy.

        `train_accuracy` (inference mode, after training), `test_accuracy` and
        `last_epoch_accuracy` (the last epoch's training accuracy as `fit`
        reports it) each hold `n`, `mean`, `sd` (sample standard deviation,
        ddof=1) and `ci`, the Student-t `confidence` interval of the mean over
        seeds. `epochs_to_80` holds the `median`,
        `min`, `max` over the runs that reached 80% and how many `reached` it;
        a run that never did counts as slower than all the others for the median.
        """
        out = {}
        for config in self.configs:
            runs = self.runs_for(config)
            out[config] = {
                "runs": len(runs),
                "train_accuracy": _describe([r.final_train_accuracy for r in runs], confidence),
                "test_accuracy": _describe([r.final_test_accuracy for r in runs], confidence),
                "last_epoch_accuracy": _describe([r.last_epoch_accuracy for r in runs], confidence),
                "epochs_to_80": _describe_epochs([r.epochs_to_80 for r in runs]),
            }
        return out

    def table(self, confidence: float = 0.95) -> str:
        """A Markdown table, one row per config.

        Columns: final train and test accuracy (mean ± sd over seeds and the
        Student-t `confidence` interval of the mean), the last epoch's
        training accuracy as `fit` reports it (mean ± sd), and the epochs to
        80% test accuracy (median and min-max over the runs; runs that never
        got there are counted as slower than all others and reported).
        """
        pct = f"{confidence * 100:g}%"
        header = (
            f"| config | runs | train acc | train acc {pct} CI | test acc | "
            f"test acc {pct} CI | fit-reported train acc, last epoch | "
            f"epochs to 80% test acc: median (min-max) |"
        )
        lines = [header, "|" + "---|" * 8]
        for config, s in self.summary(confidence).items():
            tr, te, ep = s["train_accuracy"], s["test_accuracy"], s["epochs_to_80"]
            if ep["reached"]:
                spread = str(ep["min"]) if ep["min"] == ep["max"] else f"{ep['min']}-{ep['max']}"
                if ep["reached"] < ep["n"]:
                    spread += f"; {ep['n'] - ep['reached']} of {ep['n']} never"
                epochs = f"{_fmt_number(ep['median'])} ({spread})"
            else:
                epochs = "never"
            lines.append(
                f"| {config} | {s['runs']} | {_fmt_mean_sd(tr)} | {_fmt_ci(tr)} | "
                f"{_fmt_mean_sd(te)} | {_fmt_ci(te)} | {_fmt_mean_sd(s['last_epoch_accuracy'])} "
                f"| {epochs} |"
            )
        lines.append("")
        lines.append(
            f"{len(self.seeds)} seeds ({_fmt_seeds(self.seeds)}) x {self.epochs} epochs, batch "
            f"size {self.batch_size}, shuffle={self.shuffle}, engine={self.engine}. "
            f"Accuracies: mean ± sd over seeds. Train and test acc: inference mode after the "
            f"last epoch (the tutorial's model.evaluate). Fit-reported train acc: running mean "
            f"over the last epoch in training mode (BN with batch statistics). Epochs to 80%: "
            f"min-max over the runs that got there; the median counts the others as slowest. "
            f"CI: Student-t {pct} interval of the mean over seeds."
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    # ------------------------------------------------------------------ files

    def to_dict(self, *, moving_stats: bool = False) -> dict[str, Any]:
        """Everything as plain JSON types (moving statistics only if asked: they are big)."""
        runs = []
        for run in self.runs:
            item = {
                "config": run.config,
                "seed": run.seed,
                "seconds": run.seconds,
                "final_train_accuracy": _clean(run.final_train_accuracy),
                "final_test_accuracy": _clean(run.final_test_accuracy),
                "last_epoch_accuracy": _clean(run.last_epoch_accuracy),
                "epochs_to_80": run.epochs_to_80,
                "final": {k: _clean(v) for k, v in run.final.items()},
                "history": {m: [_clean(v) for v in run.history[m]] for m in METRICS},
            }
            if moving_stats:
                item["moving_stats"] = {
                    layer: {
                        stat: [[_clean(v) for v in row] for row in values]
                        for stat, values in stats.items()
                    }
                    for layer, stats in run.moving_stats.items()
                }
            runs.append(item)
        return {
            "study": "circles",
            "configs": list(self.configs),
            "seeds": list(self.seeds),
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "engine": self.engine,
            "shuffle": self.shuffle,
            "seconds": self.seconds,
            "metadata": self.metadata,
            "summary": self.summary(),
            "runs": runs,
        }

    def to_json(self, path: str | os.PathLike, *, moving_stats: bool = False) -> None:
        """Write `to_dict()` as JSON (atomically: a temp file, then `os.replace`)."""
        text = json.dumps(self.to_dict(moving_stats=moving_stats), indent=1, allow_nan=True)
        _atomic_write_text(path, text + "\n")

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> StudyResult:
        """Read a study written by `to_json` (moving statistics only if it has them)."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        runs = [
            RunResult(
                config=item["config"],
                seed=int(item["seed"]),
                history={m: np.asarray(v, dtype="float32") for m, v in item["history"].items()},
                final={k: float(v) for k, v in item.get("final", {}).items()},
                moving_stats={
                    layer: {stat: np.asarray(v, dtype="float32") for stat, v in stats.items()}
                    for layer, stats in item.get("moving_stats", {}).items()
                },
                seconds=float(item.get("seconds", float("nan"))),
                engine=data["engine"],
            )
            for item in data["runs"]
        ]
        return cls(
            runs=runs,
            configs=tuple(data["configs"]),
            seeds=tuple(data["seeds"]),
            epochs=int(data["epochs"]),
            batch_size=int(data["batch_size"]),
            engine=data["engine"],
            shuffle=str(data.get("shuffle", "once")),
            seconds=float(data.get("seconds", float("nan"))),
            metadata=data.get("metadata", {}),
        )

    def to_csv(self, path: str | os.PathLike, *, per: str = "epoch") -> None:
        """Write a CSV file (atomically).

        Args:
            path: file to write.
            per: `"epoch"` (default): one row per run per epoch, columns
                `config, seed, epoch, loss, accuracy, val_loss, val_accuracy`
                (epoch is 1-based). `"run"`: one row per run, columns `config,
                seed, final_train_accuracy, final_test_accuracy,
                last_epoch_accuracy, final_loss, final_val_loss, epochs_to_80,
                seconds` (`epochs_to_80` empty if the run never reached 80%).
        """
        if per not in ("epoch", "run"):
            raise ValueError(f"`per` must be 'epoch' or 'run', got {per!r}.")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        if per == "epoch":
            writer.writerow(["config", "seed", "epoch", *METRICS])
            for run in self.runs:
                for e in range(run.epochs):
                    writer.writerow(
                        [run.config, run.seed, e + 1]
                        + [f"{_clean(run.history[m][e]):.7g}" for m in METRICS]
                    )
        else:
            columns = [
                "final_train_accuracy",
                "final_test_accuracy",
                "last_epoch_accuracy",
                "final_loss",
                "final_val_loss",
            ]
            writer.writerow(["config", "seed", *columns, "epochs_to_80", "seconds"])
            for run in self.runs:
                e80 = run.epochs_to_80
                writer.writerow(
                    [run.config, run.seed]
                    + [f"{_clean(getattr(run, c)):.7g}" for c in columns]
                    + ["" if e80 is None else e80, f"{run.seconds:.4f}"]
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
        threshold: float | str | None = "auto",
    ):
        """Learning curves: per config the mean over seeds with a band, one panel per metric.

        Drawn by `keras_bn_tools.plotting.plot_learning_curves`.

        Args:
            path: save the figure there (format from the extension).
            metrics: history names to plot, one panel each (`METRICS`).
            band: `"sd"` (± one standard deviation over seeds), `"se"`,
                `"minmax"` or None.
            title: figure title (default: says what is plotted).
            threshold: dashed reference line; `"auto"` draws 0.80 when every
                metric is an accuracy, nothing otherwise.

        Returns:
            The matplotlib `Figure`.
        """
        from keras_bn_tools.plotting import plot_learning_curves

        metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"Unknown metrics {unknown}; a study records {list(METRICS)}.")
        if threshold == "auto":
            threshold = TARGET_ACCURACY if all("accuracy" in m for m in metrics) else None
        if title is None:
            what = {"sd": "± 1 sd", "se": "± 1 se", "minmax": "min-max", None: "no"}[band]
            title = (
                f"Circles study: mean over {len(self.seeds)} seeds ({what} band), "
                f"{self.epochs} epochs, engine={self.engine}"
            )
        return plot_learning_curves(
            self.histories(metrics),
            metrics=metrics,
            band=band,
            title=title,
            threshold=threshold,
            path=path,
        )


def _fmt_mean_sd(d: dict[str, Any]) -> str:
    if d["n"] < 2:
        return f"{d['mean']:.3f}"
    return f"{d['mean']:.3f} ± {d['sd']:.3f}"


def _fmt_ci(d: dict[str, Any]) -> str:
    lo, hi = d["ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{lo:.3f}, {hi:.3f}]"


def _fmt_seeds(seeds: Sequence[int]) -> str:
    seeds = list(seeds)
    if not seeds:
        return "none"
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds)


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


# --------------------------------------------------------------------------- engines


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an integer, got {value!r} ({type(value).__name__}).")
    if value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}.")
    return int(value)


def _make_optimizer():
    import keras

    return keras.optimizers.SGD(learning_rate=LEARNING_RATE, momentum=SGD_MOMENTUM)


def _bn_stat_variables(model) -> list[tuple[str, str, Any]]:
    """(layer name, stat, variable) for every BN layer and every `BN_STATS` it has."""
    from keras_bn_tools._model_utils import batchnorm_layers

    found = []
    for layer in batchnorm_layers(model):
        for stat in BN_STATS:
            variable = getattr(layer, stat, None)
            if variable is not None and hasattr(variable, "assign"):
                found.append((layer.name, stat, variable))
    return found


def _nest_stats(flat: Mapping[tuple[str, str], np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for (layer, stat), values in flat.items():
        out.setdefault(layer, {})[stat] = values
    return out


def fit_permutation(n: int) -> np.ndarray:
    """The order in which `model.fit(x, y, shuffle=True)` feeds `n` NumPy samples.

    Keras 3 (TensorFlow backend) draws the permutation with `tf.random.shuffle`
    inside a `tf.data` map function. Its op seed comes from the global seed, so
    after `keras.utils.set_random_seed(seed)` every epoch's iterator draws the
    *same* permutation: `fit` shuffles once per run, not once per epoch. This
    replays that pipeline (same ops, same order, so the same op seed) and
    returns the permutation `fit` will use if it is called next under the same
    global seed. Building and compiling a model in between does not change it.
    `tests/studies` checks it against the batches `fit` really feeds.
    """
    import tensorflow as tf

    def permutation(_):
        # Mirrors keras.src.trainers.data_adapters.array_data_adapter.get_tf_dataset.
        indices = tf.range(n, dtype=tf.int64)
        indices = tf.random.shuffle(indices)
        return indices

    dataset = tf.data.Dataset.range(1).map(permutation)
    return next(iter(dataset)).numpy()


def _final_metrics(model, data) -> dict[str, float]:
    """Inference-mode loss and accuracy on the training and test sets (the tutorial's
    `model.evaluate`), computed in one pass each."""
    import keras

    (train_x, train_y), (test_x, test_y) = data
    loss_fn = keras.losses.BinaryCrossentropy()
    out = {}
    for prefix, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        y = np.asarray(y, dtype="float32").reshape(len(y), -1)
        y_pred = model(np.asarray(x, dtype="float32"), training=False)
        out[f"{prefix}_loss"] = float(keras.ops.convert_to_numpy(loss_fn(y, y_pred)))
        out[f"{prefix}_accuracy"] = float(
            np.mean(keras.ops.convert_to_numpy(keras.metrics.binary_accuracy(y, y_pred)))
        )
    return out


def _fit_run(config, seed, data, *, epochs, batch_size, shuffle, callbacks_factory) -> RunResult:
    import keras

    (train_x, train_y), (test_x, test_y) = data
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model = config.build()
    model.compile(optimizer=_make_optimizer(), loss="binary_crossentropy", metrics=["accuracy"])
    stat_variables = _bn_stat_variables(model)
    records: dict[tuple[str, str], list[np.ndarray]] = {(k, s): [] for k, s, _ in stat_variables}

    class _EpochStats(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            for layer, stat, variable in stat_variables:
                records[(layer, stat)].append(np.array(keras.ops.convert_to_numpy(variable)))

    user_callbacks = list(callbacks_factory(config, seed) or []) if callbacks_factory else []
    if shuffle == "epoch":
        # fit's own shuffle reuses one permutation under a global seed (see
        # fit_permutation); a tf.data shuffle with reshuffle_each_iteration draws a
        # new one every epoch, seeded by the global seed.
        import tensorflow as tf

        inputs = (
            tf.data.Dataset.from_tensor_slices((train_x, train_y))
            .shuffle(len(train_x), reshuffle_each_iteration=True)
            .batch(batch_size)
        )
        fit_kwargs = {"x": inputs, "shuffle": False, "validation_batch_size": batch_size}
    else:
        fit_kwargs = {"x": train_x, "y": train_y, "batch_size": batch_size}
        fit_kwargs["shuffle"] = shuffle == "once"
    history = model.fit(
        **fit_kwargs,
        validation_data=(test_x, test_y),
        epochs=epochs,
        verbose=0,
        callbacks=[_EpochStats(), *user_callbacks],
    )
    final = _final_metrics(model, data)
    return RunResult(
        config=config.name,
        seed=int(seed),
        history={m: np.asarray(history.history[m], dtype="float32") for m in METRICS},
        final=final,
        moving_stats=_nest_stats({k: np.stack(v) for k, v in records.items()}),
        seconds=time.perf_counter() - start,
        engine="fit",
        callbacks=user_callbacks,
        weights=model.get_weights(),
    )


class _CompiledRunner:
    """One config's whole training run as a single TensorFlow graph, reused across seeds.

    The graph closes over one Keras model and one Keras optimizer. `run(seed)`
    calls `keras.utils.set_random_seed(seed)`, builds a fresh model and copies
    its variables into the graph's model (so the initial weights are exactly
    those `engine="fit"` starts from), resets the optimizer's variables to
    their initial values, and executes the graph with the seed and the data
    order as tensor arguments (no retracing).

    The graph: a `tf.while_loop` over epochs; in each, the epoch's order of
    the training set (with `shuffle="once"` the permutation `model.fit` itself
    would use, see `fit_permutation`; with `"epoch"` a new stateless
    permutation from `(seed, epoch)`), a `tf.while_loop` over the full batches
    plus one step for the partial last batch (static shapes, so XLA can compile
    it). A step is a training-mode forward pass, the loss, the gradients and
    the Keras optimizer's update; BN layers update their moving statistics
    themselves, as in `fit`. The epoch's loss and accuracy are sums over the
    steps of the batch loss times the batch size and of the correct
    predictions, both from the same training-mode outputs, divided by the
    number of samples: exactly `fit`'s running averages. After the epoch, an
    inference-mode pass over the test set (`val_loss`, `val_accuracy`) and a
    snapshot of every BN statistic, written to `tf.TensorArray`s.
    """

    def __init__(self, config, data, *, epochs, batch_size, shuffle, jit_compile):
        import keras
        import tensorflow as tf

        self.config = config
        self.shuffle = shuffle
        self.model = config.build()
        self.optimizer = _make_optimizer()
        trainable = list(self.model.trainable_variables)
        self.optimizer.build(trainable)
        self._optimizer_init = [np.array(v.numpy()) for v in self.optimizer.variables]
        self._stat_variables = _bn_stat_variables(self.model)
        self.jit_compile = bool(jit_compile)

        (train_x, train_y), (test_x, test_y) = data
        x_train = tf.constant(np.asarray(train_x, dtype="float32"))
        y_train = tf.constant(np.asarray(train_y, dtype="float32").reshape(len(train_y), -1))
        x_test = tf.constant(np.asarray(test_x, dtype="float32"))
        y_test = tf.constant(np.asarray(test_y, dtype="float32").reshape(len(test_y), -1))
        n = self.n = int(x_train.shape[0])
        batch_size = min(batch_size, n)
        full_batches, remainder = divmod(n, batch_size)
        model, optimizer = self.model, self.optimizer
        loss_fn = keras.losses.BinaryCrossentropy()
        stat_variables = self._stat_variables

        def train_step(xb, yb):
            with tf.GradientTape() as tape:
                y_pred = model(xb, training=True)
                loss = loss_fn(yb, y_pred)
            gradients = tape.gradient(loss, trainable)
            optimizer.apply(gradients, trainable)
            size = tf.cast(tf.shape(xb)[0], tf.float32)
            correct = tf.reduce_sum(keras.metrics.binary_accuracy(yb, y_pred))
            return loss * size, correct

        def train_epoch(xs, ys):
            """Every batch of one epoch; returns the sums of loss and correct predictions."""

            def body(b, loss_sum, correct):
                begin = b * batch_size
                xb = tf.slice(xs, [begin, 0], [batch_size, xs.shape[1]])
                yb = tf.slice(ys, [begin, 0], [batch_size, ys.shape[1]])
                batch_loss, batch_correct = train_step(xb, yb)
                return b + 1, loss_sum + batch_loss, correct + batch_correct

            _, loss_sum, correct = tf.while_loop(
                lambda b, *_: b < full_batches,
                body,
                (tf.constant(0), tf.constant(0.0), tf.constant(0.0)),
            )
            if remainder:  # the partial last batch, with its own static shape
                tail = full_batches * batch_size
                batch_loss, batch_correct = train_step(xs[tail:], ys[tail:])
                loss_sum, correct = loss_sum + batch_loss, correct + batch_correct
            return loss_sum, correct

        def evaluate(x, y):
            y_pred = model(x, training=False)
            return loss_fn(y, y_pred), tf.reduce_mean(keras.metrics.binary_accuracy(y, y_pred))

        def run(seed, order):
            def body(epoch, arrays, stats):
                if shuffle == "epoch":
                    keys = tf.random.stateless_uniform(
                        [n],
                        seed=tf.stack([seed, tf.cast(epoch, tf.int64) + 1]),
                        minval=None,
                        maxval=None,
                        dtype=tf.int32,
                    )
                    epoch_order = tf.argsort(keys, stable=True)
                    xs, ys = tf.gather(x_train, epoch_order), tf.gather(y_train, epoch_order)
                else:  # "once" or "none": the order given
                    xs, ys = x_once, y_once
                loss_sum, correct = train_epoch(xs, ys)
                val_loss, val_accuracy = evaluate(x_test, y_test)
                values = (loss_sum / n, correct / n, val_loss, val_accuracy)
                arrays = tuple(a.write(epoch, v) for a, v in zip(arrays, values, strict=True))
                stats = tuple(
                    s.write(epoch, tf.convert_to_tensor(variable))
                    for s, (_, _, variable) in zip(stats, stat_variables, strict=True)
                )
                return epoch + 1, arrays, stats

            x_once, y_once = tf.gather(x_train, order), tf.gather(y_train, order)
            arrays = tuple(
                tf.TensorArray(tf.float32, size=epochs, element_shape=()) for _ in METRICS
            )
            stats = tuple(
                tf.TensorArray(tf.float32, size=epochs, element_shape=variable.shape)
                for _, _, variable in stat_variables
            )
            _, arrays, stats = tf.while_loop(
                lambda epoch, *_: epoch < epochs, body, (tf.constant(0), arrays, stats)
            )
            history = {name: a.stack() for name, a in zip(METRICS, arrays, strict=True)}
            train_loss, train_accuracy = evaluate(x_train, y_train)
            test_loss, test_accuracy = evaluate(x_test, y_test)
            final = {
                "train_loss": train_loss,
                "train_accuracy": train_accuracy,
                "test_loss": test_loss,
                "test_accuracy": test_accuracy,
            }
            return history, final, [s.stack() for s in stats]

        self._python_run = run
        self._function = self._make_function()

    def _make_function(self):
        import tensorflow as tf

        return tf.function(self._python_run, jit_compile=self.jit_compile, autograph=False)

    def _reset(self, seed: int) -> np.ndarray:
        """Re-initialize model and optimizer as `fit` would start for `seed`; return the
        data order for `shuffle="once"`/`"none"`."""
        import keras

        keras.utils.set_random_seed(seed)
        fresh = self.config.build()
        targets, sources = self.model.variables, fresh.variables
        if len(targets) != len(sources) or any(
            tuple(t.shape) != tuple(s.shape) for t, s in zip(targets, sources, strict=True)
        ):
            raise RuntimeError(
                f"Config {self.config.name!r} built models with different variables from one "
                f"call to the next; the compiled engine needs a deterministic architecture."
            )
        for target, source in zip(targets, sources, strict=True):
            target.assign(source.value)
        for variable, value in zip(self.optimizer.variables, self._optimizer_init, strict=True):
            variable.assign(value)
        if self.shuffle == "once":
            return fit_permutation(self.n)
        return np.arange(self.n, dtype="int64")

    def run(self, seed: int) -> RunResult:
        import tensorflow as tf

        start = time.perf_counter()
        order = self._reset(seed)
        args = (tf.constant(seed, dtype=tf.int64), tf.constant(order, dtype=tf.int64))
        try:
            history, final, stats = self._function(*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
            if not self.jit_compile:
                raise
            warnings.warn(
                f"XLA could not compile the circles study's graph for config "
                f"{self.config.name!r} ({type(error).__name__}: {str(error)[:300]}); "
                f"running it as a plain TensorFlow graph instead.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.jit_compile = False
            self._function = self._make_function()
            order = self._reset(seed)
            history, final, stats = self._function(*args)
        moving = _nest_stats(
            {
                (layer, stat): values.numpy()
                for (layer, stat, _), values in zip(self._stat_variables, stats, strict=True)
            }
        )
        return RunResult(
            config=self.config.name,
            seed=int(seed),
            history={m: history[m].numpy() for m in METRICS},
            final={k: float(v.numpy()) for k, v in final.items()},
            moving_stats=moving,
            seconds=time.perf_counter() - start,
            engine="compiled",
            weights=self.model.get_weights(),
        )


SHUFFLES = ("once", "epoch", "none")


def _resolve_shuffle(shuffle: Any) -> str:
    if shuffle is True:
        return "once"
    if shuffle is False or shuffle is None:
        return "none"
    if isinstance(shuffle, str) and shuffle.lower() in SHUFFLES:
        return shuffle.lower()
    raise ValueError(
        f"Invalid `shuffle`: {shuffle!r}. Expected one of {', '.join(map(repr, SHUFFLES))} "
        f"(True means 'once', what model.fit(shuffle=True) does; False means 'none')."
    )


def _resolve_jit_compile(jit_compile: Any, n_seeds: int) -> bool:
    if jit_compile == "auto":
        # XLA takes a few seconds more to compile than tracing a plain graph, then runs
        # each seed several times faster: worth it from a handful of seeds on.
        return n_seeds >= 4
    if isinstance(jit_compile, bool):
        return jit_compile
    raise ValueError(f"`jit_compile` must be True, False or 'auto', got {jit_compile!r}.")


def _versions() -> dict[str, str]:
    import keras

    versions = {"python": platform.python_version(), "keras": keras.__version__}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    from keras_bn_tools import __version__

    versions["keras_bn_tools"] = __version__
    versions["backend"] = keras.backend.backend()
    return versions


def run_study(
    configs: Any = DEFAULT_CONFIGS,
    seeds: Iterable[int] = range(10),
    epochs: int = 100,
    batch_size: int = 32,
    engine: str = "compiled",
    callbacks_factory: Callable[[CirclesConfig, int], Sequence[Any]] | None = None,
    progress: bool = False,
    *,
    data: Any = None,
    shuffle: str | bool = "once",
    jit_compile: bool | str = "auto",
) -> StudyResult:
    """Train every config once per seed under the tutorial's protocol.

    Args:
        configs: names from `CONFIGS`, `CirclesConfig` objects, a mix, or a
            mapping name -> `CirclesConfig`.
        seeds: non-negative integer seeds; each run calls
            `keras.utils.set_random_seed(seed)` before building its model.
        epochs: epochs per run.
        batch_size: batch size; the last batch of an epoch may be smaller.
        engine: `"compiled"` (TensorFlow only: the whole run as one
            `tf.function`, traced once per config) or `"fit"` (`model.fit`).
        callbacks_factory: `callbacks_factory(config, seed)` returns the
            callbacks for that run's `model.fit` (e.g. a
            `keras_bn_tools.callbacks.MovingStatsTracker`); they are kept in
            `RunResult.callbacks`. Only with `engine="fit"`.
        progress: show a tqdm progress bar over the runs on stderr.
        data: `((train_x, train_y), (test_x, test_y))`; default `load_circles()`.
        shuffle: the order of the training samples.
            `"once"` (default, also `True`): what `model.fit(shuffle=True)`
            does under `keras.utils.set_random_seed`: one seeded permutation,
            the same in every epoch (see `fit_permutation`); the compiled
            engine uses that very permutation, so both engines see the same
            batches and agree run for run up to float round-off.
            `"epoch"`: a new permutation every epoch (Keras 2's behaviour);
            the engines then draw from different random streams and agree
            only statistically. `"none"` (also `False`): the data's order.
        jit_compile: compiled engine only: compile the graph with XLA.
            `"auto"`: XLA from 4 seeds on (compiling takes a few seconds
            more, then each seed runs several times faster). If XLA cannot
            compile the graph (a custom layer with an unsupported op) the
            engine falls back to a plain graph with a warning.

    Returns:
        A `StudyResult`.

    Raises:
        ValueError: an unknown config, engine or shuffle, no seeds, a
            repeated seed, `epochs` or `batch_size` < 1, `callbacks_factory`
            with `engine="compiled"`, or `engine="compiled"` under a Keras
            backend other than TensorFlow.
        TypeError: a non-integer seed, epochs or batch size.
    """
    resolved = _resolve_configs(configs)
    seeds = tuple(_check_int("seed", s, minimum=0) for s in seeds)
    if not seeds:
        raise ValueError("`seeds` must hold at least one seed.")
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"`seeds` holds a seed more than once: {seeds}.")
    epochs = _check_int("epochs", epochs, minimum=1)
    batch_size = _check_int("batch_size", batch_size, minimum=1)
    if engine not in ENGINES:
        raise ValueError(f"Unknown engine {engine!r}. Valid engines: {', '.join(ENGINES)}.")
    if callbacks_factory is not None and not callable(callbacks_factory):
        raise TypeError(f"`callbacks_factory` must be callable, got {callbacks_factory!r}.")
    shuffle = _resolve_shuffle(shuffle)
    if engine == "compiled":
        if callbacks_factory is not None:
            raise ValueError(
                "`callbacks_factory` needs engine='fit': the compiled engine runs each run as "
                "one TensorFlow graph and calls no Keras callbacks. Its per-epoch BN "
                "statistics are in `RunResult.moving_stats`."
            )
        import keras

        if keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"engine='compiled' is TensorFlow-specific but the Keras backend is "
                f"{keras.backend.backend()!r}; use engine='fit' or KERAS_BACKEND=tensorflow."
            )
    use_xla = _resolve_jit_compile(jit_compile, len(seeds)) if engine == "compiled" else False
    custom_data = data is not None
    if data is None:
        data = load_circles()

    from tqdm.auto import tqdm

    start = time.perf_counter()
    runs: list[RunResult] = []
    with tqdm(
        total=len(resolved) * len(seeds),
        desc="circles",
        unit="run",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for config in resolved:
            bar.set_postfix_str(config.name)
            runner = None
            if engine == "compiled":
                runner = _CompiledRunner(
                    config,
                    data,
                    epochs=epochs,
                    batch_size=batch_size,
                    shuffle=shuffle,
                    jit_compile=use_xla,
                )
            for seed in seeds:
                if runner is not None:
                    run = runner.run(seed)
                else:
                    run = _fit_run(
                        config,
                        seed,
                        data,
                        epochs=epochs,
                        batch_size=batch_size,
                        shuffle=shuffle,
                        callbacks_factory=callbacks_factory,
                    )
                runs.append(run)
                bar.update(1)
            if runner is not None:
                use_xla = runner.jit_compile  # keep a fallback for the next configs
    metadata: dict[str, Any] = {
        "versions": _versions(),
        "protocol": {
            "data": "custom"
            if custom_data
            else "make_circles(n_samples=1000, noise=0.1, random_state=1): first 500 rows "
            "train, last 500 test",
            "model": "build_mlp(2, (50,), ...): Dense(50, relu, he_uniform), Dense(1, sigmoid)",
            "optimizer": f"SGD(learning_rate={LEARNING_RATE}, momentum={SGD_MOMENTUM})",
            "loss": "binary_crossentropy",
            "target_accuracy": TARGET_ACCURACY,
        },
        "config_descriptions": {c.name: c.description for c in resolved},
    }
    if engine == "compiled":
        metadata["jit_compile"] = use_xla
    return StudyResult(
        runs=runs,
        configs=tuple(c.name for c in resolved),
        seeds=seeds,
        epochs=epochs,
        batch_size=batch_size,
        engine=engine,
        shuffle=shuffle,
        seconds=time.perf_counter() - start,
        metadata=metadata,
    )
