"""`synchronized=True` on JAX under keras.distribution (issue 25 item 5), and the
backends where it cannot hold."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def _run(script_args, backend, tmp_path, **env):
    child_env = dict(os.environ)
    child_env.update(
        KERAS_BACKEND=backend,
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        **env,
    )
    return subprocess.run(
        [sys.executable, *script_args],
        env=child_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_jax_data_parallel_statistics_are_the_global_batchs(tmp_path):
    pytest.importorskip("jax")
    out = tmp_path / "out.npz"
    done = _run(
        [str(HERE / "data_parallel_worker.py"), str(out)],
        "jax",
        tmp_path,
        XLA_FLAGS="--xla_force_host_platform_device_count=4",
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r = dict(np.load(out))
    assert int(r["devices"]) == 4
    x = r["x"].astype(np.float64)
    full_mean, full_variance = x.mean(axis=0), x.var(axis=0)
    # Per-device statistics would be far from the global batch's.
    slice_mean = x[:8].mean(axis=0)
    assert np.abs(slice_mean - full_mean).max() > 1.0
    for name in ("keras", "ours", "ours-synchronized", "ours-cumulative-synchronized"):
        np.testing.assert_allclose(r[f"{name}/moving_mean"], full_mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            r[f"{name}/moving_variance"], full_variance, rtol=1e-4, atol=1e-5
        )
    message = str(r["error_without_distribution"])
    assert "JAX" in message and "DataParallel" in message


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_synchronized_where_it_cannot_hold_names_the_backend_and_the_alternative(tmp_path, backend):
    pytest.importorskip(backend)
    code = (
        "from keras_bn_tools.layers import MomentumBatchNormalization\n"
        "try:\n"
        "    MomentumBatchNormalization(synchronized=True)\n"
        "except ValueError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('accepted')\n"
    )
    done = _run(["-c", code], backend, tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "`synchronized=True`" in done.stdout
    if backend == "torch":
        assert "torch backend" in done.stdout and "TensorFlow" in done.stdout
    else:
        assert "JAX backend" in done.stdout and "DataParallel" in done.stdout
