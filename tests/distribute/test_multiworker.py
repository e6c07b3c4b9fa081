"""Two-worker MultiWorkerMirroredStrategy on loopback with synchronized BN.

Two local processes (``multiworker_worker.py``) form a cluster on 127.0.0.1, train
the circles BN-after model with ``MomentumBatchNormalization(synchronized=True)``
for a few epochs on different shards of the data, and each writes its final state
to a file. With synchronized statistics both workers must end with the same moving
statistics and weights.
"""

from __future__ import annotations

import json
import socket

import keras
import numpy as np
import pytest

pytestmark = [
    pytest.mark.skipif(
        keras.backend.backend() != "tensorflow", reason="tf.distribute needs the TensorFlow backend"
    ),
    pytest.mark.slow,  # worker subprocesses: the whole suite runs them, the quicker passes not
]

NUM_WORKERS = 2
EPOCHS = 3


def _free_loopback_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 (held open together, so distinct)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def test_two_workers_end_with_identical_moving_statistics(children, tmp_path):
    ports = _free_loopback_ports(NUM_WORKERS)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    outputs = [tmp_path / f"worker{i}.npz" for i in range(NUM_WORKERS)]
    for i, out in enumerate(outputs):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        children.start("multiworker_worker.py", str(out), str(EPOCHS), TF_CONFIG=tf_config)
    children.wait_all()

    results = [dict(np.load(out)) for out in outputs]
    first, second = results
    assert [int(r["task_index"]) for r in results] == [0, 1]
    assert int(first["num_replicas"]) == int(second["num_replicas"]) == NUM_WORKERS
    for name in ("moving_mean", "moving_variance"):
        assert first[name].shape == (50,)
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=1e-6, err_msg=name)
    # The statistics really moved away from their initial values (0 and 1).
    assert np.abs(first["moving_mean"]).max() > 0.1
    assert np.abs(first["moving_variance"] - 1).max() > 0.1
    # Every weight of the model (Dense kernels and biases, gamma, beta, all the BN
    # layer's state), not only the moving statistics.
    weights = sorted(k for k in first if k.startswith("weight"))
    assert len(weights) >= 8
    for name in weights:
        np.testing.assert_allclose(first[name], second[name], rtol=0, atol=1e-6, err_msg=name)
    # Each worker's BN layer counted every global step once.
    steps = EPOCHS * 16  # 250 rows per worker in batches of 16
    assert int(first["num_batches_tracked"]) == int(second["num_batches_tracked"]) == steps
    # Both workers report the same (all-reduced) loss, and it went down.
    np.testing.assert_allclose(first["loss"], second["loss"], rtol=1e-6)
    assert first["loss"][-1] < first["loss"][0]
