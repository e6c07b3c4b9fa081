"""Fixtures for the tf.distribute tests: fresh Python processes and their results.

A strategy over two logical CPU devices needs the devices configured before
TensorFlow initializes, which the test process did long ago; so every distributed
run happens in a child process (the ``*_worker.py`` scripts next to this file), and
the tests compare the arrays it writes. The children are always waited for with a
timeout and killed if they outlive it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
CHILD_TIMEOUT_S = 150  # generous: a loaded 2-core CI box runs these in ~10-30 s


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: TensorFlow backend, CPU only, quiet logs."""
    env = dict(os.environ)
    env.pop("TF_CONFIG", None)
    env.update(
        KERAS_BACKEND="tensorflow",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    env.update(extra)
    return env


class Children:
    """Worker processes started by a test, each logging to ``log_dir/child<i>.log``.

    `close` (run by the fixtures' teardown, so also when a test fails or is
    interrupted) kills every child that is still running and reaps it.
    """

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, script: str, *args: str, **env: str) -> subprocess.Popen:
        """Run ``python <this folder>/<script> *args`` with `child_env(**env)`."""
        argv = [sys.executable, str(HERE / script), *args]
        with open(self.log_dir / f"child{len(self.procs)}.log", "wb") as log:
            proc = subprocess.Popen(
                argv, env=child_env(**env), cwd=REPO_ROOT, stdout=log, stderr=log
            )
        self.procs.append(proc)
        return proc

    def wait_all(self, timeout: float = CHILD_TIMEOUT_S) -> None:
        """Wait for every child (`timeout` in all); fail with a log tail on any failure."""
        deadline = time.monotonic() + timeout
        for i, proc in enumerate(self.procs):
            try:
                proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                self.close()
                pytest.fail(f"worker {i} still running after {timeout} s\n{self.log(i)}")
            if proc.returncode != 0:
                self.close()
                pytest.fail(f"worker {i} exited with {proc.returncode}\n{self.log(i)}")

    def log(self, i: int, chars: int = 4000) -> str:
        return (self.log_dir / f"child{i}.log").read_text(errors="replace")[-chars:]

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)


@pytest.fixture
def children(tmp_path: Path) -> Iterator[Children]:
    """Start worker processes; whatever still runs at teardown is killed."""
    spawned = Children(tmp_path)
    try:
        yield spawned
    finally:
        spawned.close()


@contextlib.contextmanager
def _exclusive(lock_path: Path) -> Iterator[None]:
    with open(lock_path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def mirrored_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, np.ndarray]:
    """The arrays ``mirrored_worker.py`` writes, computed once per test session.

    Under pytest-xdist every worker process has its own session; the first one to
    get here runs the child while the others wait on a lock in the run's shared
    temporary folder, then read the same file.
    """
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.distribute tests need the TensorFlow backend")
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    result, failure = shared / "mirrored_results.npz", shared / "mirrored_failure.txt"
    with _exclusive(shared / "mirrored_results.lock"):
        if not result.exists() and not failure.exists():
            spawned = Children(tmp_path_factory.mktemp("mirrored"))
            partial = spawned.log_dir / "results.npz"
            try:
                spawned.start("mirrored_worker.py", str(partial))
                spawned.wait_all()
            except pytest.fail.Exception as exc:
                failure.write_text(str(exc))
            finally:
                spawned.close()
            if partial.exists() and not failure.exists():
                partial.replace(result)
    if failure.exists():
        pytest.fail(f"mirrored_worker.py failed:\n{failure.read_text()}")
    with np.load(result) as data:
        return {key: data[key] for key in data.files}
