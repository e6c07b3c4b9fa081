"""`sync_replica_statistics`: replicas' BN statistics made to agree (timm's distribute_bn).

Under MirroredStrategy with synchronized=False, Keras's BN lets each replica's copy of
the moving statistics follow its own slice (reading sees replica 0's), while
MomentumBatchNormalization averages the replicas' updates.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.layers.distribute import sync_replica_statistics

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend"
)


@pytest.mark.slow
def test_replicas_statistics_agree_after_sync(children, tmp_path):
    out = tmp_path / "sync.npz"
    children.start("replica_sync_worker.py", str(out))
    children.wait_all()
    r = dict(np.load(out))
    for stat in ("moving_mean", "moving_variance"):
        before = r[f"keras/before/{stat}"]  # (replicas, features)
        assert np.abs(before[0] - before[1]).max() > 0.5  # each replica its own slice
        after = r[f"keras/after/{stat}"]
        np.testing.assert_allclose(after[0], before.mean(axis=0), rtol=1e-6)
        np.testing.assert_array_equal(after[0], after[1])
        np.testing.assert_array_equal(r[f"keras/read/{stat}"], after[0])
        # MomentumBatchNormalization's replicas already agreed: nothing to change.
        ours = r[f"ours/before/{stat}"]
        np.testing.assert_array_equal(ours[0], ours[1])
        np.testing.assert_array_equal(r[f"ours/after/{stat}"], ours)
    assert int(r["keras/changed"]) == 2  # moving mean and variance
    assert int(r["ours/changed"]) == 0


def test_outside_a_strategy_nothing_changes_and_bad_arguments_are_refused():
    model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
    before = [w.copy() for w in model.get_weights()]
    assert sync_replica_statistics(model) == 0
    for a, b in zip(model.get_weights(), before, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="`reduce`"):
        sync_replica_statistics(model, reduce="median")
    with pytest.raises(TypeError, match="`model`"):
        sync_replica_statistics("model")
