"""`ActivationLog`: the records of an `ActivationTracker`, in memory and on disk.

The on-disk log (`log_dir`) uses the record format of
`keras_bn_tools.callbacks.stats_log` (a JSON header and fixed-size binary
records appended one unbuffered `write` at a time) under its own file names,
`activations.json` and `activations.bin`, so that it can share a directory
with a `MovingStatsTracker` log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, BinaryIO

import numpy as np

from keras_bn_tools._files import atomic_write_text
from keras_bn_tools.callbacks.stats_log import INDEX_FIELDS, MovingStatsLog, read_log_files

__all__ = [
    "ACTIVATION_HEADER_FILE",
    "ACTIVATION_RECORDS_FILE",
    "LOG_KIND",
    "NONFINITE_FIELD",
    "PERCENTILES_STAT",
    "ActivationLog",
    "create_log_files",
]

ACTIVATION_HEADER_FILE = "activations.json"
ACTIVATION_RECORDS_FILE = "activations.bin"
#: `header["kind"]` of an activation log (the record format is `stats_log`'s).
LOG_KIND = "activation-percentiles"
#: The stat name of the percentile fields in the shared record format.
PERCENTILES_STAT = "percentiles"
#: Per record, one flag per tracked layer: 1 where a percentile is NaN or infinite.
NONFINITE_FIELD = "nonfinite"


class ActivationLog(MovingStatsLog):
    """The records of an `ActivationTracker`: `stats_log`'s format, one field per layer.

    Attributes:
        percentiles: the recorded percentiles, in order.
        training: whether the probe was run in training mode.
    """

    def __init__(self, fields, *, every, layers, percentiles, training, records=None):
        super().__init__(
            fields, every=every, layers=layers, stats=[PERCENTILES_STAT], records=records
        )
        self.percentiles = tuple(float(p) for p in percentiles)
        self.training = bool(training)

    @classmethod
    def for_layers(
        cls,
        shapes: dict[str, tuple[int, ...]],
        *,
        every: str | int,
        percentiles: Sequence[float],
        training: bool,
    ) -> ActivationLog:
        """An empty log with one percentile field per layer, of shape `shapes[layer]`."""
        fields: list[dict[str, Any]] = [{"name": n, "dtype": d} for n, d in INDEX_FIELDS]
        for i, (key, shape) in enumerate(shapes.items()):
            fields.append(
                {
                    "name": f"v{i}",
                    "layer": key,
                    "stat": PERCENTILES_STAT,
                    "dtype": "<f8",
                    "shape": list(shape),
                }
            )
        fields.append({"name": NONFINITE_FIELD, "dtype": "|u1", "shape": [len(shapes)]})
        return cls(
            fields, every=every, layers=list(shapes), percentiles=percentiles, training=training
        )

    @property
    def history(self) -> dict[str, np.ndarray]:  # type: ignore[override]
        """`history[layer]`: array `(records, len(percentiles), units)`, oldest first."""
        return {layer: stats[PERCENTILES_STAT] for layer, stats in super().history.items()}

    @property
    def nonfinite(self) -> dict[str, np.ndarray]:
        """`nonfinite[layer]`: bool per record, True where a percentile is NaN or infinite."""
        flags = self._view(NONFINITE_FIELD)
        return {layer: flags[:, i].astype(bool) for i, layer in enumerate(self.layers)}

    def header(self) -> dict[str, Any]:
        return {
            **super().header(),
            "kind": LOG_KIND,
            "percentiles": list(self.percentiles),
            "training": self.training,
        }

    @classmethod
    def load(cls, log_dir: str | os.PathLike) -> ActivationLog:
        """Read a log written by `ActivationTracker(log_dir=...)` (a torn last record is dropped).

        Raises:
            FileNotFoundError: if the header or the records file is missing.
            ValueError: if the header is not an activation log's.
        """
        header_path, header, records = read_log_files(
            log_dir, ACTIVATION_HEADER_FILE, ACTIVATION_RECORDS_FILE, "activation log"
        )
        if header.get("kind") != LOG_KIND or "percentiles" not in header:
            raise ValueError(f"{header_path} is not an ActivationTracker log header.")
        return cls(
            header["fields"],
            every=header["every"],
            layers=header["layers"],
            percentiles=header["percentiles"],
            training=header.get("training", False),
            records=records,
        )


def create_log_files(log_dir: str, log: ActivationLog) -> BinaryIO:
    """Write `log`'s header to `log_dir` and open its records file, unbuffered, for appending.

    The records file is created exclusively, so a log that appeared in
    `log_dir` since the tracker was constructed is refused, never replaced;
    the header is written to a temporary file and renamed into place.

    Raises:
        OSError: naming `log_dir`, if either file cannot be written.
    """
    records = None
    try:
        os.makedirs(log_dir, exist_ok=True)
        header_path = os.path.join(log_dir, ACTIVATION_HEADER_FILE)
        records_path = os.path.join(log_dir, ACTIVATION_RECORDS_FILE)
        records = open(records_path, "xb", buffering=0)  # noqa: SIM115 - kept open by the caller
        atomic_write_text(header_path, json.dumps(log.header(), indent=1))
    except OSError as error:
        if records is not None:
            records.close()
        raise OSError(
            f"ActivationTracker cannot write its log to `log_dir`={log_dir!r}: {error}"
        ) from error
    return records
