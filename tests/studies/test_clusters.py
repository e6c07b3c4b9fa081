"""The joblib backends a parallel study runs on: a missing package is named, and a local
Dask cluster of ours turns its diagnostics down."""

from __future__ import annotations

import sys

import pytest

from keras_bn_tools.studies import clusters


def test_a_cluster_backend_without_its_package_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import fails
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(ValueError, match=r"'dask'.*'distributed'.*keras-bn-tools\[dask\]"):
        clusters.check_cluster_backend("dask")
    with (
        pytest.raises(ValueError, match=r"'ray'.*keras-bn-tools\[ray\]"),
        clusters.cluster_backend("ray"),
    ):
        pytest.fail("ran without ray")
    with pytest.raises(ValueError, match="'loky', 'dask' or 'ray'"):
        clusters.check_cluster_backend("spark")


@pytest.mark.slow
def test_a_local_dask_cluster_of_ours_turns_its_diagnostics_down():
    pytest.importorskip("distributed")
    import dask
    import distributed

    def settings():
        return {key: dask.config.get(key) for key in clusters.QUIET_LOCAL_DASK}

    before = settings()
    with clusters.cluster_backend("dask", workers=1):
        on_workers = list(distributed.get_client().run(settings).values())
    assert on_workers == [clusters.QUIET_LOCAL_DASK]
    assert settings() == before  # this process's configuration is left as it was
    assert before != clusters.QUIET_LOCAL_DASK
