"""`Protocol`: the description of one experiment that a study runs.

A study trains each config of a protocol once per seed. The protocol says
what data, which model per config, which optimizer and loss, how long, and
which test accuracy counts as "reached the target". The built-in protocols
(`circles`, `digits`, `sequence`) are instances of this class; users write
their own in the same way and run them with `run_study(protocol, ...)` or
`keras-bn-tools study MODULE:ATTR`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Data", "Protocol"]

#: `((train_x, train_y), (test_x, test_y))` as NumPy arrays.
Data = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Protocol:
    """One experiment: data, a model per config, optimizer, loss, length and target.

    Attributes:
        name: short name used in tables, files and the command line.
        description: one paragraph for people.
        load_data: zero-argument callable returning
            `((train_x, train_y), (test_x, test_y))`.
        build: `build(config) -> keras.Model`, a fresh, uncompiled, built model
            for the config named `config`.
        configs: ordered mapping from config name to a one-line description.
        default_configs: the configs a study runs when none are named.
        epochs: number of training epochs per run.
        batch_size: training batch size.
        optimizer: zero-argument callable returning a fresh Keras optimizer.
        loss: a Keras loss (name or instance).
        target: the test accuracy whose first crossing "epochs to target" reports.
    """

    name: str
    description: str
    load_data: Callable[[], Data]
    build: Callable[[str], Any]
    configs: Mapping[str, str]
    default_configs: Sequence[str]
    epochs: int
    batch_size: int
    optimizer: Callable[[], Any]
    loss: Any
    target: float
