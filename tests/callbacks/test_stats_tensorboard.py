"""MovingStatsTracker's TensorBoard summaries, read back with TensorBoard's own reader."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.callbacks import MovingStatsTracker
from keras_bn_tools.callbacks.stats_tensorboard import SUMMARY_DIR

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)


def _events(log_dir) -> EventAccumulator:
    every_event = {"scalars": 0, "histograms": 0}
    events = EventAccumulator(str(log_dir / SUMMARY_DIR), size_guidance=every_event)
    events.Reload()
    return events


@pytest.mark.backend_agnostic
def test_summaries_match_the_records_and_go_on_across_fits(tmp_path, circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker(log_dir=tmp_path)
    assert tracker.tensorboard  # on by default when tensorboard is installed
    circles_model.fit(x, y, epochs=2, verbose=0, callbacks=[tracker])
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    events = _events(tmp_path)
    tags = events.Tags()
    for stat in ("moving_mean", "moving_variance", "gamma", "beta"):
        tag = f"{SUMMARY_DIR}/batch_normalization/{stat}"
        assert tag in tags["histograms"]
        assert {f"{tag}/mean", f"{tag}/std"} <= set(tags["scalars"])
        records = tracker.history["batch_normalization"][stat].astype(np.float64)
        for kind, reduce in (("mean", np.mean), ("std", np.std)):
            scalars = sorted(events.Scalars(f"{tag}/{kind}"), key=lambda e: (e.step, e.wall_time))
            assert [e.step for e in scalars] == tracker.steps.tolist() == [0, 16, 32, 32, 48]
            np.testing.assert_allclose(
                [e.value for e in scalars], reduce(records, axis=1), rtol=1e-6, atol=1e-7
            )
        histograms = sorted(events.Histograms(tag), key=lambda e: (e.step, e.wall_time))
        assert len(histograms) == len(records)
        for event, values in zip(histograms, records, strict=True):
            histogram = event.histogram_value
            assert histogram.num == values.size == 50 and sum(histogram.bucket) == 50
            assert histogram.min == pytest.approx(values.min())
            assert histogram.max == pytest.approx(values.max())
            assert histogram.sum == pytest.approx(values.sum(), rel=1e-9, abs=1e-9)


@pytest.mark.backend_agnostic
def test_tensorboard_false_writes_no_summaries(tmp_path, circles, circles_model):
    (x, y), _ = circles
    tracker = MovingStatsTracker(log_dir=tmp_path, tensorboard=False)
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=[tracker])
    assert not (tmp_path / SUMMARY_DIR).exists()
    assert len(MovingStatsTracker.load(tmp_path)) == 2
    assert not MovingStatsTracker().tensorboard  # no log_dir: nowhere to write


@pytest.mark.backend_agnostic
def test_summaries_sit_beside_keras_tensorboard_runs(tmp_path, circles, circles_model):
    """One `--logdir` for both: Keras's `train/` run and the tracker's `moving_stats/`."""
    if keras.backend.backend() != "tensorflow":
        pytest.skip("keras.callbacks.TensorBoard writes with tf.summary")
    (x, y), _ = circles
    keras_board = keras.callbacks.TensorBoard(log_dir=str(tmp_path))
    callbacks = [keras_board, MovingStatsTracker(log_dir=tmp_path)]
    circles_model.fit(x, y, epochs=1, verbose=0, callbacks=callbacks)
    assert {"train", SUMMARY_DIR} <= {p.name for p in tmp_path.iterdir() if p.is_dir()}
    assert _events(tmp_path).Scalars(f"{SUMMARY_DIR}/batch_normalization/gamma/mean")
