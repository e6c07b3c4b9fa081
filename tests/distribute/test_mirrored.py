"""MomentumBatchNormalization under MirroredStrategy over two logical CPU devices.

The runs themselves happen in ``mirrored_worker.py`` (see conftest.py for why); each
test compares a distributed run with the single-device run it must reproduce:

- ``synchronized=True``: two replicas of half the global batch each behave exactly
  like one device on the full batch (outputs, every moving statistic, inference).
- ``synchronized=False``: each replica normalizes with its own slice's statistics,
  and the moving statistics are the average of the per-slice updates, identical on
  every replica.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend"
    ),
    pytest.mark.slow,  # worker subprocesses: the whole suite runs them, the quicker passes not
]

SYNC_CASES = ["sync", "sync-cumulative", "sync-debias"]
LOCAL_CASES = ["local", "local-cumulative", "local-debias"]
STATE = ["moving_mean", "moving_variance"]
TOL = {"rtol": 1e-5, "atol": 2e-5}


def _state_names(results, case):
    """Names of the layer's non-trainable variables (moving statistics, counters)."""
    prefix = f"{case}/full/"
    names = [key[len(prefix) :] for key in results if key.startswith(prefix)]
    return [name for name in names if name not in ("outputs", "infer")]


def _raise_worker_error(results, part):
    if f"error/{part}" in results:
        pytest.fail(f"mirrored_worker.py, {part}:\n{results[f'error/{part}']}")


@pytest.mark.parametrize("case", SYNC_CASES)
def test_synchronized_outputs_equal_one_device_on_the_full_batch(mirrored_results, case):
    r = mirrored_results
    np.testing.assert_allclose(r[f"{case}/dist/outputs"], r[f"{case}/full/outputs"], **TOL)
    # The slices differ, so per-slice statistics would give clearly different outputs.
    per_slice = np.concatenate([r[f"{case}/slice0/outputs"], r[f"{case}/slice1/outputs"]], 1)
    assert np.abs(r[f"{case}/dist/outputs"] - per_slice).max() > 0.1


@pytest.mark.parametrize("case", SYNC_CASES)
def test_synchronized_moving_statistics_equal_one_device_on_the_full_batch(mirrored_results, case):
    r = mirrored_results
    names = _state_names(r, case)
    assert set(STATE) <= set(names)
    for name in names:
        full = r[f"{case}/full/{name}"]  # (steps, features)
        replicas = r[f"{case}/dist/{name}"]  # (steps, replicas, features)
        for replica in range(replicas.shape[1]):
            np.testing.assert_allclose(
                replicas[:, replica], full, **TOL, err_msg=f"{name}, replica {replica}"
            )
        np.testing.assert_allclose(r[f"{case}/dist_read/{name}"], full, **TOL, err_msg=name)


@pytest.mark.parametrize("case", SYNC_CASES + LOCAL_CASES)
def test_every_replica_infers_like_the_reference(mirrored_results, case):
    r = mirrored_results
    infer = r[f"{case}/dist/infer"]  # (replicas, rows, features)
    # Unsynchronized: a single-device layer holding the average of the two slice
    # layers' state (moving statistics and counters) after the last step.
    expected = r[f"{case}/full/infer"] if case in SYNC_CASES else r[f"{case}/averaged/infer"]
    for replica in range(infer.shape[0]):
        np.testing.assert_allclose(infer[replica], expected, **TOL, err_msg=f"replica {replica}")


@pytest.mark.parametrize("case", LOCAL_CASES)
def test_unsynchronized_replicas_normalize_with_their_own_slice(mirrored_results, case):
    r = mirrored_results
    per_slice = np.concatenate([r[f"{case}/slice0/outputs"], r[f"{case}/slice1/outputs"]], 1)
    np.testing.assert_allclose(r[f"{case}/dist/outputs"], per_slice, **TOL)
    assert np.abs(r[f"{case}/dist/outputs"] - r[f"{case}/full/outputs"]).max() > 0.1


@pytest.mark.parametrize("case", LOCAL_CASES)
def test_unsynchronized_moving_statistics_average_the_per_slice_updates(mirrored_results, case):
    r = mirrored_results
    for name in STATE:
        expected = (r[f"{case}/slice0/{name}"] + r[f"{case}/slice1/{name}"]) / 2
        replicas = r[f"{case}/dist/{name}"]
        for replica in range(replicas.shape[1]):
            np.testing.assert_allclose(
                replicas[:, replica], expected, **TOL, err_msg=f"{name}, replica {replica}"
            )
        np.testing.assert_allclose(r[f"{case}/dist_read/{name}"], expected, **TOL, err_msg=name)
    # ...which is not the full batch's variance: the between-slice spread is missing.
    full = r[f"{case}/full/moving_variance"]
    assert np.abs(r[f"{case}/dist_read/moving_variance"] - full).max() > 0.1


def test_keras_batchnorm_unsynchronized_replicas_drift_apart(mirrored_results):
    """Keras's own layer keeps one copy per replica, each updated from its slice alone.

    docs/distributed.md says so; if this starts failing, Keras changed and the page
    needs updating.
    """
    r = mirrored_results
    replicas = r["keras-local/dist/moving_variance"]  # (steps, replicas, features)
    np.testing.assert_allclose(replicas[:, 0], r["keras-local/slice0/moving_variance"], **TOL)
    np.testing.assert_allclose(replicas[:, 1], r["keras-local/slice1/moving_variance"], **TOL)
    # What get_weights() and saving see is replica 0's copy: one slice's statistics.
    np.testing.assert_allclose(r["keras-local/dist_read/moving_variance"], replicas[:, 0], **TOL)


@pytest.mark.parametrize("case", ["sync", "sync-cumulative"])
def test_distributed_fit_equals_single_device_fit(mirrored_results, case):
    r = mirrored_results
    prefix = f"fit/{case}"
    count = len([k for k in r if k.startswith(f"{prefix}/single/weight")])
    assert count >= 8  # two Dense layers, gamma, beta, moving mean and variance
    for i in range(count):
        np.testing.assert_allclose(
            r[f"{prefix}/dist/weight{i}"],
            r[f"{prefix}/single/weight{i}"],
            **TOL,
            err_msg=f"weight {i}",
        )
    for name in STATE:
        replicas = r[f"{prefix}/dist/replicas/{name}"]
        np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=name)


@pytest.mark.parametrize("case", ["local", "local-renorm-ghost"])
def test_unsynchronized_fit_keeps_every_replica_copy_equal(mirrored_results, case):
    r = mirrored_results
    prefix = f"fit/{case}/dist/replicas/"
    names = [key[len(prefix) :] for key in r if key.startswith(prefix)]
    assert set(STATE) <= set(names)
    for name in names:  # moving statistics, counters, batch statistics, renorm state
        replicas = r[prefix + name]
        np.testing.assert_allclose(replicas[0], replicas[1], rtol=0, atol=1e-6, err_msg=name)


def test_tracker_and_momentum_scheduler_in_a_distributed_fit(mirrored_results):
    r = mirrored_results
    _raise_worker_error(r, "tracker")
    steps = r["fit/tracked/tracker/dist/steps"]
    np.testing.assert_array_equal(steps, r["fit/tracked/tracker/single/steps"])
    # every=1: the initial state, then one record per batch (2 epochs x 4 batches).
    np.testing.assert_array_equal(steps, np.arange(9))
    for stat, weight in (("moving_mean", 4), ("moving_variance", 5)):
        dist = r[f"fit/tracked/tracker/dist/0/{stat}"]
        assert dist.shape == (9, 8)
        np.testing.assert_allclose(dist, r[f"fit/tracked/tracker/single/0/{stat}"], **TOL)
        assert np.abs(np.diff(dist, axis=0)).min() > 0  # every step moved every feature
        np.testing.assert_allclose(dist[-1], r[f"fit/tracked/dist/weight{weight}"], **TOL)
    # The scheduler's last momentum reached every replica's copy.
    np.testing.assert_allclose(r["fit/tracked/dist/replicas/momentum"], [0.5, 0.5])


def test_recalibrate_batchnorm_on_a_distributed_model(mirrored_results):
    r = mirrored_results
    _raise_worker_error(r, "recalibration")
    assert int(r["recal/report_len"]) == 1
    for name, expected in (
        ("moving_mean", r["recal/expected_mean"]),
        ("moving_variance", r["recal/expected_variance"]),
    ):
        replicas = r[f"recal/{name}"]
        for replica in range(replicas.shape[0]):
            np.testing.assert_allclose(replicas[replica], expected, rtol=1e-5, atol=1e-5)
