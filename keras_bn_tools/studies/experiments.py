"""The reproductions of published BN experiments that need more than a plain study.

`sigmoid-mlp` (Ioffe & Szegedy 2015, Figure 1) records activation
percentiles during training; `small-batch` (Wu & He 2018, Figure 1) measures
training-mode accuracy next to inference-mode accuracy. Each is a `Protocol`
in `PROTOCOLS` (a plain `run_study` runs it) and an experiment here: a runner
returning a result with `.study` (a `StudyResult`), `.table()` and
`.write(directory)` (its own table, data and plots). `keras-bn-tools
sigmoid-mlp` and `keras-bn-tools small-batch` run the experiment.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["DEFAULT_SEEDS", "EXPERIMENTS", "experiment_runner"]

#: Protocol name -> `module:function` of its experiment runner.
EXPERIMENTS = {
    "sigmoid-mlp": "keras_bn_tools.studies.sigmoid_mlp:run_sigmoid_mlp",
    "small-batch": "keras_bn_tools.studies.small_batch:run_small_batch",
}

#: Seeds per config when none are asked for: what fits the 10-minute budget on a 2-core CPU.
DEFAULT_SEEDS = {"sigmoid-mlp": 3, "small-batch": 1}


def experiment_runner(name: str) -> Callable[..., Any]:
    """The runner of the experiment `name` (imported on use).

    It takes `(protocol, configs, seeds, *, epochs, batch_size, engine,
    shuffle, progress)` as `run_study` does and returns a result with
    `.study`, `.table()` and `.write(directory)`.
    """
    if name not in EXPERIMENTS:
        raise KeyError(f"No experiment {name!r}; experiments: {list(EXPERIMENTS)}.")
    module, _, function = EXPERIMENTS[name].partition(":")
    return getattr(importlib.import_module(module), function)
