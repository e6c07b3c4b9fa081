"""Parallel studies: units of work, joblib (loky), Dask, faults, and resume after kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from study_protocols import BLOBS
from test_store import assert_same_runs

from keras_bn_tools.studies import clusters, parallel, run_study
from keras_bn_tools.studies.parallel import Unit, check_n_jobs, plan_units

ROOT = Path(__file__).resolve().parents[2]
STUDY = {"seeds": range(3), "epochs": 2, "engine": "fit"}  # 2 configs x 3 seeds: 6 runs


@pytest.fixture(scope="module")
def serial():
    return run_study(BLOBS, **STUDY)


def _wait_for_runs(out: Path, count: int, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while len(list((out / "runs").glob("*/seed-*.json"))) < count:
        assert time.monotonic() < end, "no run was saved in time"
        time.sleep(0.02)


@pytest.mark.parametrize("n_jobs", [1, 2, 16, -1])
def test_n_jobs_as_joblib_takes_it(n_jobs):
    assert check_n_jobs(n_jobs) == n_jobs


def test_units_come_from_the_seed_list_not_from_n_jobs():
    seeds = list(range(25))
    units = plan_units(["a", "b"], seeds)
    assert [(u.config, u.seeds[0], len(u.seeds)) for u in units] == [
        ("a", 0, 10), ("a", 10, 10), ("a", 20, 5), ("b", 0, 10), ("b", 10, 10), ("b", 20, 5)
    ]  # fmt: skip
    assert all(u.keep == u.seeds for u in units)
    done = {("a", 3), ("a", 4)} | {("b", s) for s in range(10)}
    partial = plan_units(["a", "b"], seeds, done=done)
    assert partial[0] == Unit("a", (0, 1, 2, *range(5, 10)), (0, 1, 2, *range(5, 10)))
    assert [u.seeds[0] for u in partial if u.config == "b"] == [10, 20]
    # An engine whose numbers depend on its group trains a partly finished unit whole.
    whole = plan_units(["a", "b"], seeds, done=done, whole_units=True)
    assert whole[0] == Unit("a", tuple(range(10)), (0, 1, 2, *range(5, 10)))


def test_worker_threads_share_the_cores_unless_the_environment_sets_them(monkeypatch):
    monkeypatch.delenv(parallel.THREADS_ENV, raising=False)
    cores = os.cpu_count() or 1
    assert parallel.worker_threads(2, units=5) == max(1, cores // 2)
    assert parallel.worker_threads(8, units=1) == cores  # one unit: one worker at a time
    monkeypatch.setenv(parallel.THREADS_ENV, " 3 ")
    assert parallel.worker_threads(2, units=5) == 3


@pytest.mark.parametrize("setting", ["abc", "0", "-2", "1.5", "2 threads", "\u00b2"])
def test_a_bad_worker_threads_setting_is_refused_naming_it(monkeypatch, setting):
    monkeypatch.setenv(parallel.THREADS_ENV, setting)
    with pytest.raises(ValueError, match=rf"\$KERAS_BN_TOOLS_WORKER_THREADS={setting!r}: .*>= 1"):
        parallel.worker_threads(2, units=5)
    # A study refuses it before any run starts.
    with pytest.raises(ValueError, match="KERAS_BN_TOOLS_WORKER_THREADS"):
        run_study(BLOBS, **STUDY, n_jobs=2)


@pytest.mark.slow
def test_two_loky_jobs_equal_the_serial_study_with_one_thread_each(serial, tmp_path):
    import joblib

    result = run_study(BLOBS, **STUDY, n_jobs=2, out=tmp_path)
    assert_same_runs(result, serial)
    assert len(list((tmp_path / "runs").glob("*/seed-*.json"))) == 6
    # The same (reused) workers: each limited to this machine's cores / 2 threads.
    threads = max(1, (os.cpu_count() or 1) // 2)
    limits = joblib.Parallel(n_jobs=2)(joblib.delayed(_thread_limits)() for _ in range(2))
    assert all(limit == (str(threads), threads) for limit in limits), limits


def _thread_limits():
    import tensorflow as tf

    return os.environ.get("OMP_NUM_THREADS"), tf.config.threading.get_intra_op_parallelism_threads()


_KILLED_STUDY = """
import sys
sys.path.insert(0, {tests!r})
from study_protocols import BLOBS
from keras_bn_tools.studies import run_study
run_study(BLOBS, seeds=range(3), epochs=2, engine="fit", out={out!r})
"""


@pytest.mark.slow
def test_kill_9_mid_study_then_resume_equals_the_uninterrupted_study(serial, tmp_path):
    code = _KILLED_STUDY.format(tests=str(ROOT / "tests" / "studies"), out=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    child = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        _wait_for_runs(tmp_path, 2)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(60)
    saved = sorted((tmp_path / "runs").glob("*/seed-*.json"))
    assert 2 <= len(saved) < 6, "the kill must land mid-study"
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in saved}
    resumed = run_study(BLOBS, **STUDY, out=tmp_path, resume=True)
    assert_same_runs(resumed, serial)
    # The saved runs were reused, not run again (their files untouched); the rest were run.
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in saved} == before
    assert len(list((tmp_path / "runs").glob("*/seed-*.json"))) == 6
    assert not list((tmp_path / "runs").glob("**/*.tmp"))


@pytest.mark.slow
def test_a_killed_loky_worker_stops_the_study_with_a_clear_error_and_resume_completes_it(
    serial, tmp_path
):
    box = {}

    def study():
        try:
            run_study(BLOBS, **STUDY, n_jobs=2, out=tmp_path)
        except Exception as error:  # the error is what is tested
            box["error"] = error

    thread = threading.Thread(target=study)
    thread.start()
    _wait_for_runs(tmp_path, 1)
    import psutil

    workers = [p for p in psutil.Process().children(recursive=True)
               if "loky" in " ".join(p.cmdline())]  # fmt: skip
    assert workers
    for worker in workers:
        os.kill(worker.pid, signal.SIGKILL)
    thread.join(300)
    error = box.get("error")
    assert isinstance(error, parallel.WorkerDiedError), error
    assert "resume=True" in str(error) and str(tmp_path / "runs") in str(error)
    resumed = run_study(BLOBS, **STUDY, out=tmp_path, resume=True)
    assert_same_runs(resumed, serial)


# --------------------------------------------------------------------------- Dask


@pytest.fixture(scope="module")
def in_fresh_processes():
    """The study run by two fresh loky processes (equal to the serial study: see
    `test_two_loky_jobs_equal_the_serial_study_with_one_thread_each`). The Dask tests
    compare with it, so that what they check does not depend on the state that earlier
    tests left in this test process."""
    return run_study(BLOBS, **STUDY, n_jobs=2)


@pytest.fixture(scope="module")
def dask_client():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    with cluster, distributed.Client(cluster) as client:
        yield client


@pytest.mark.slow
def test_a_dask_local_cluster_study_equals_the_serial_study(
    in_fresh_processes, dask_client, tmp_path
):
    import joblib

    with joblib.parallel_config(backend="dask"):
        result = run_study(BLOBS, **STUDY, n_jobs=-1, out=tmp_path)
    # The runs ran on the cluster's workers, which saved them.
    assert len(list((tmp_path / "runs").glob("*/seed-*.json"))) == 6
    assert sum(dask_client.run(lambda: "keras_bn_tools.studies.parallel" in sys.modules).values())
    assert [(r.config, r.seed) for r in result.runs] == [
        (r.config, r.seed) for r in in_fresh_processes.runs
    ]
    assert_same_runs(result, in_fresh_processes)


@pytest.mark.slow
def test_a_worker_killed_under_dask_is_recovered(in_fresh_processes, dask_client, tmp_path):
    import joblib

    pids = list(dask_client.run(os.getpid).values())
    box = {}

    def study():
        with joblib.parallel_config(backend="dask"):
            box["result"] = run_study(BLOBS, **STUDY, n_jobs=-1, out=tmp_path)

    thread = threading.Thread(target=study)
    thread.start()
    _wait_for_runs(tmp_path, 1)
    os.kill(pids[0], signal.SIGKILL)  # Dask's nanny restarts it; the scheduler retries
    thread.join(300)
    assert len(list((tmp_path / "runs").glob("*/seed-*.json"))) == 6
    assert pids[0] not in dask_client.run(os.getpid).values()
    keys = [(r.config, r.seed) for r in box["result"].runs]
    assert keys == [(r.config, r.seed) for r in in_fresh_processes.runs]  # each once, none lost
    assert_same_runs(box["result"], in_fresh_processes)


# --------------------------------------------------------------------------- Ray


@pytest.mark.slow
def test_a_local_ray_study_equals_the_serial_study(serial, tmp_path):
    pytest.importorskip(
        "ray",
        reason="Ray is not in the test extra (pip install "
        "'keras-bn-tools[ray]' to run this test); docs/scaling.md",
    )
    with clusters.cluster_backend("ray", workers=2):
        result = run_study(BLOBS, **STUDY, n_jobs=-1, out=tmp_path)
    assert_same_runs(result, serial)
    assert len(list((tmp_path / "runs").glob("*/seed-*.json"))) == 6
