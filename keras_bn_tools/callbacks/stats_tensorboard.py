"""TensorBoard summaries of BN moving statistics, written on every backend.

`MovingStatsTracker(log_dir=...)` writes them, when the `tensorboard` package
is installed (`pip install "keras-bn-tools[tensorboard]"`), into
`log_dir/moving_stats/`: put the tracker's `log_dir` where Keras's
`keras.callbacks.TensorBoard` writes (its `train/` and `validation/` runs), and
`tensorboard --logdir` shows a `moving_stats` run beside them.

For each tracked layer and statistic, at every record:

- a histogram `moving_stats/{layer}/{stat}` of the values over the features;
- scalars `moving_stats/{layer}/{stat}/mean` and `.../std` (over the features).

The events are written with TensorBoard's own event-file writer and protocol
buffers, not `tf.summary`, so that JAX and PyTorch runs need no TensorFlow.
Each training run writes a new event file; TensorBoard merges the files of a
directory by step, and the tracker's steps continue from one `fit` to the next.
"""

from __future__ import annotations

import importlib.util
import os
import time
from collections.abc import Mapping

import numpy as np

__all__ = ["SUMMARY_DIR", "TensorBoardStatsWriter", "tensorboard_available"]

#: The tracker's TensorBoard run, a subdirectory of its `log_dir`.
SUMMARY_DIR = "moving_stats"
_BINS = 30


def tensorboard_available() -> bool:
    """Whether the `tensorboard` package (the `tensorboard` extra) is installed."""
    return importlib.util.find_spec("tensorboard") is not None


def _histogram(values: np.ndarray):
    from tensorboard.compat.proto.summary_pb2 import HistogramProto

    values = values.astype(np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return HistogramProto()
    counts, edges = np.histogram(values, bins=_BINS)
    return HistogramProto(
        min=float(values.min()),
        max=float(values.max()),
        num=float(values.size),
        sum=float(values.sum()),
        sum_squares=float(np.dot(values, values)),
        bucket_limit=[float(edge) for edge in edges[1:]],
        bucket=[float(count) for count in counts],
    )


class TensorBoardStatsWriter:
    """Writes the tracker's records as TensorBoard events under `log_dir/moving_stats/`.

    Args:
        log_dir: the tracker's `log_dir`.

    Raises:
        ImportError: if the `tensorboard` package is not installed (naming the extra).
    """

    def __init__(self, log_dir: str | os.PathLike):
        try:
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError as error:
            raise ImportError(
                "MovingStatsTracker(tensorboard=True) needs the tensorboard package: "
                'pip install "keras-bn-tools[tensorboard]"'
            ) from error
        self.directory = os.path.join(os.fspath(log_dir), SUMMARY_DIR)
        self._writer = EventFileWriter(self.directory)

    def write(self, step: int, values: Mapping[tuple[str, str], np.ndarray]) -> None:
        """One record: `values[(layer, stat)]` is that statistic's array."""
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        entries = []
        for (layer, stat), value in values.items():
            tag = f"{SUMMARY_DIR}/{layer}/{stat}"
            features = np.asarray(value, dtype=np.float64).ravel()
            entries.append(Summary.Value(tag=tag, histo=_histogram(features)))
            entries.append(Summary.Value(tag=f"{tag}/mean", simple_value=float(features.mean())))
            entries.append(Summary.Value(tag=f"{tag}/std", simple_value=float(features.std())))
        event = Event(wall_time=time.time(), step=int(step), summary=Summary(value=entries))
        self._writer.add_event(event)

    def close(self) -> None:
        """Flush every event to disk and close the event file."""
        self._writer.flush()
        self._writer.close()
