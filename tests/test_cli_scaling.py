"""The command line's --jobs, --cluster, --resume and --compile-cache."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

import keras_bn_tools_cli as cli

STUDIES = Path(__file__).resolve().parent / "studies"
BLOBS = ["study", "study_protocols:BLOBS", "--configs", "bn", "--seeds", "2", "--epochs", "1",
         "--engine", "fit", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _in_the_protocols_folder(monkeypatch):
    monkeypatch.chdir(STUDIES)
    monkeypatch.syspath_prepend(str(STUDIES))


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--jobs", "0"], r"--jobs: .*positive integer or -1, got 0"),
        (["--jobs", "-2"], r"--jobs: .*got -2"),
        (["--jobs", "two"], r"--jobs: .*'two'"),
        (["--cluster", "spark"], r"--cluster: invalid choice"),
        (["--resume", "--overwrite"], r"--resume and --overwrite"),
        (["--address", "tcp://x:1"], r"--address: needs --cluster"),
        (["--compile-cache", "cache"], r"--compile-cache: JAX's.*'tensorflow'"),
    ],
)
def test_bad_scaling_options_exit_2_naming_the_option(tmp_path, capsys, extra, named):
    import keras

    if keras.backend.backend() != "tensorflow" and "--compile-cache" in extra:
        pytest.skip("the cache is JAX's")
    assert cli.main([*BLOBS, "--out", str(tmp_path / "o"), *extra]) == 2
    assert re.search(named, capsys.readouterr().err)
    assert not (tmp_path / "o").exists()  # nothing ran, nothing written


def test_a_cluster_without_its_package_exits_2_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    assert cli.main([*BLOBS, "--out", str(tmp_path / "o"), "--cluster", "dask"]) == 2
    err = capsys.readouterr().err
    assert "--cluster dask" in err and "keras-bn-tools[dask]" in err
    assert not (tmp_path / "o").exists()


def test_interrupted_runs_are_kept_apart_and_resume_finishes_the_study(tmp_path, capsys):
    from study_protocols import BLOBS as protocol

    from keras_bn_tools.studies import run_study

    out = tmp_path / "o"
    run_study(protocol, ["bn"], [0], epochs=1, engine="fit", out=out)  # as if killed after 1 run
    # A rerun without --resume refuses, saying where the runs are and how to use them.
    assert cli.main([*BLOBS, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "keeps 1 finished runs" in err and "--resume" in err and str(out / "runs") in err
    saved = (out / "runs" / "bn" / "seed-0.json").read_bytes()
    assert cli.main([*BLOBS, "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "2 runs in " in err
    assert (out / "runs" / "bn" / "seed-0.json").read_bytes() == saved  # reused, not rerun
    assert sorted(p.name for p in (out / "runs" / "bn").iterdir()) == ["seed-0.json", "seed-1.json"]
    results = json.loads((out / "results.json").read_text())
    assert [r["seed"] for r in results["runs"]] == [0, 1]
    # A finished study: without a flag it says both ways; another study is refused (exit 2).
    assert cli.main([*BLOBS, "--out", str(out)]) == 2
    assert "--resume to reuse its 2 finished runs" in capsys.readouterr().err
    assert cli.main([*BLOBS, "--out", str(out), "--resume", "--shuffle", "once"]) == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "shuffle: saved 'epoch', now 'once'" in err
    # --overwrite keeps its meaning: a new study replaces the old one whole, runs included.
    assert cli.main([*BLOBS, "--out", str(out), "--overwrite", "--shuffle", "once"]) == 0
    capsys.readouterr()
    assert json.loads((out / "results.json").read_text())["shuffle"] == "once"
    run = json.loads((out / "runs" / "bn" / "seed-0.json").read_text())
    assert run["fingerprint"]["study"]["shuffle"] == "once"
