"""The `keras-bn-tools` command line (also `python -m keras_bn_tools`)."""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import keras_bn_tools_cli as cli
from keras_bn_tools.cli import OUTPUTS

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--configs", "baseline", "--seeds", "1", "--epochs", "1", "--no-progress"]


def _listing(path: Path) -> list[str]:
    """The files under `path`, less the finished runs kept for --resume (`runs/`)."""
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if "runs" not in p.parts)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return {**env, "MPLBACKEND": "Agg", **extra}


def _earlier_study(out: Path) -> dict[str, bytes]:
    """An `--out` holding an earlier study (with a stale extra file); its bytes."""
    out.mkdir(parents=True)
    (out / "results.json").write_text('{"engine": "earlier"}')
    (out / "moving_stats.npz").write_bytes(b"stale")
    return {p.name: p.read_bytes() for p in out.iterdir()}


# --------------------------------------------------------------------------- help


@pytest.mark.backend_agnostic
def test_help_lists_every_protocol_and_option(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("circles", "digits", "sequence", "study", "summary"):
        assert command in out
    assert cli.main(["circles", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--configs", "--seeds", "--first-seed", "--epochs", "--batch-size",
                   "--engine", "--shuffle", "--out", "--overwrite"):  # fmt: skip
        assert option in out
    assert "bn-after-no-affine" in out  # the protocol's configs are listed


@pytest.mark.backend_agnostic
def test_version(capsys):
    from keras_bn_tools import __version__

    assert cli.main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.backend_agnostic
def test_help_version_and_usage_errors_import_neither_the_package_nor_keras():
    """The console script's front answers these from the standard library alone."""
    code = (
        "import sys\nfrom keras_bn_tools_cli import main\n"
        "statuses = [main(['--help']), main(['--version']), main(['circles', '--seeds', '0'])]\n"
        "loaded = [m for m in ('keras_bn_tools', 'keras', 'tensorflow', 'jax', 'torch') "
        "if m in sys.modules]\n"
        "assert not loaded, f'imported {loaded}'\nprint(statuses)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=False, env=_env())  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[0, 0, 2]"
    assert "--seeds: expected an integer >= 1" in result.stderr


@pytest.mark.backend_agnostic
def test_the_front_agrees_with_the_package():
    """The front reads the built-in protocols from the same metadata as the package, and
    lists what it cannot import: the engines and the seed range."""
    from keras_bn_tools._validation import MAX_SEED
    from keras_bn_tools.studies.engines import ENGINES
    from keras_bn_tools.studies.registry import BUILTIN, ENTRY_POINT_GROUP

    assert cli.builtin_protocols() == tuple(BUILTIN)
    assert {"circles", "digits", "sequence", "diabetes", "sigmoid-mlp", "small-batch"} <= set(
        BUILTIN
    )
    assert f'group="{ENTRY_POINT_GROUP}"' in inspect.getsource(cli.builtin_protocols)
    assert tuple(ENGINES) == cli.ENGINES
    assert cli.MAX_SEED == MAX_SEED


# --------------------------------------------------------------------------- bad input


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["circles", "--configs", "nope"], "--configs: unknown circles config(s) 'nope'"),
        (["circles", "--configs"], "--configs: expected at least one argument"),
        (["circles", "--seeds", "0"], "--seeds: expected an integer >= 1"),
        (["circles", "--seeds", "ten"], "--seeds: expected an integer, got 'ten'"),
        (["circles", "--seeds", "1000000000000"], "--seeds: expected an integer >= 1 and <="),
        (["circles", "--first-seed", "-1"], "--first-seed"),
        (["circles", "--first-seed", "4294967296"], "--first-seed: expected an integer >= 0"),
        (["circles", "--first-seed", "4294967290", "--seeds", "10"], "--seeds/--first-seed"),
        (["circles", "--epochs", "0"], "--epochs"),
        (["circles", "--batch-size", "-2"], "--batch-size"),
        (["circles", "--engine", "eager"], "--engine: invalid choice: 'eager'"),
        (["circles", "--shuffle", "always"], "--shuffle: invalid choice"),
        (["circles", "--out", ""], "--out: give a directory name"),
        (["study"], "MODULE:ATTR"),
        (["study", "no_such_module_here:P"], "MODULE:ATTR: cannot import 'no_such_module_here'"),
        (["study", "os:path"], "must name a keras_bn_tools.studies.Protocol"),
        (["study", "os"], "MODULE:ATTR: expected e.g. my_study:PROTOCOL"),
        (["frobnicate"], "invalid choice"),
        ([], "required"),
    ],
)
def test_bad_options_exit_2_naming_the_option(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert _listing(tmp_path) == []  # nothing written


@pytest.mark.backend_agnostic
@pytest.mark.parametrize("where", ["file", "below-file", "foreign-dir", "earlier-study"])
def test_unusable_out_exits_2_and_is_left_alone(where, capsys, tmp_path):
    (tmp_path / "file").write_text("keep me")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    places = {"file": tmp_path / "file", "below-file": tmp_path / "file" / "sub",
              "foreign-dir": tmp_path / "mine", "earlier-study": tmp_path / "results"}  # fmt: skip
    out = places[where]
    if where == "earlier-study":
        _earlier_study(out)
    listing = _listing(tmp_path)
    assert cli.main(["circles", *QUICK, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    messages = {"file": "exists and is not a directory", "below-file": "is not a directory",
                "foreign-dir": "holds other files", "earlier-study": "--overwrite"}  # fmt: skip
    expected = messages[where]
    assert f"--out {str(out)!r}" in err and expected in err and "Traceback" not in err
    assert _listing(tmp_path) == listing


@pytest.mark.backend_agnostic
def test_compiled_where_the_backend_has_none_exits_2_naming_engine_fit(capsys, tmp_path):
    import keras

    if keras.backend.backend() in ("tensorflow", "jax"):
        pytest.skip("this backend has a compiled engine")
    assert cli.main(["circles", *QUICK, "--engine", "compiled", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "--engine fit" in err and keras.backend.backend() in err
    assert _listing(tmp_path) == []


# --------------------------------------------------------------------------- runs


def test_circles_writes_everything(capsys, tmp_path):
    out = tmp_path / "new" / "results"
    argv = ["circles", "--configs", "baseline", "bn-after", "--seeds", "2", "--epochs", "3",
            "--shuffle", "once", "--out", str(out), "--moving-stats", "--no-progress"]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("| config | runs |")
    assert "| baseline | 2 |" in captured.out and "| bn-after | 2 |" in captured.out
    assert "Wrote" in captured.err and "Traceback" not in captured.err
    assert _listing(out) == sorted([*OUTPUTS, "moving_stats.npz"])
    results = json.loads((out / "results.json").read_text())
    assert results["configs"] == ["baseline", "bn-after"] and results["seeds"] == [0, 1]
    assert results["engine"] == "compiled" and results["shuffle"] == "once"
    assert len((out / "results.csv").read_text().splitlines()) == 1 + 2 * 2 * 3
    assert len((out / "runs.csv").read_text().splitlines()) == 1 + 2 * 2
    assert (out / "table.md").read_text().strip() == captured.out.strip()
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert len(list((out / "runs").glob("*/seed-*.json"))) == 2 * 2  # kept for --resume
    assert not list(tmp_path.rglob(".keras-bn-tools-*"))  # no staging left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's private 0o700


def test_overwrite_replaces_an_earlier_study_whole(capsys, tmp_path):
    out = tmp_path / "results"
    _earlier_study(out)
    argv = ["circles", *QUICK, "--engine", "fit", "--out", str(out), "--overwrite"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert _listing(out) == sorted(OUTPUTS)  # the stale moving_stats.npz is gone
    assert json.loads((out / "results.json").read_text())["engine"] == "fit"
    assert _listing(tmp_path) == ["results", *(f"results/{n}" for n in sorted(OUTPUTS))]


def test_failed_run_leaves_out_as_it_was(capsys, tmp_path, monkeypatch):
    import keras_bn_tools.studies as studies

    def explode(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(studies, "run_study", explode)
    out = tmp_path / "results"
    before = _earlier_study(out)
    assert cli.main(["circles", *QUICK, "--out", str(out), "--overwrite"]) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: boom" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _listing(tmp_path) == ["results", "results/moving_stats.npz", "results/results.json"]


def test_study_runs_a_users_protocol(capsys, tmp_path, monkeypatch):
    (tmp_path / "my_study.py").write_text(
        (ROOT / "tests" / "studies" / "study_protocols.py").read_text()
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    argv = ["study", "my_study:BLOBS", "--seeds", "2", "--epochs", "2", "--no-progress"]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "| plain | 2 |" in captured.out and "| bn | 2 |" in captured.out
    results = json.loads((tmp_path / "blobs_results" / "results.json").read_text())
    assert (
        results["protocol"] == "blobs" and results["metadata"]["accuracy"] == "sparse_categorical"
    )


def test_summary(capsys):
    assert cli.main(["summary", "--configs", "bn-before", "bn-input"]) == 0
    out = capsys.readouterr().out
    assert "bn-before:" in out and "bn-input:" in out
    assert out.count("batch_normalization") >= 3 and "activation" in out


# --------------------------------------------------------------------------- process


STARTUP_NOISE = ("oneDNN", "cuda", "cuInit", "absl", "cpu_feature")


def test_cli_prints_only_its_own_output_and_libraries_keep_the_environment(tmp_path):
    """`python -m keras_bn_tools_cli` and the console script: none of TensorFlow's start-up
    lines on stderr (`python -m keras_bn_tools` imports the package, and TensorFlow, before
    the command starts). A program that imports the library gets its environment untouched."""
    commands = [[sys.executable, "-m", "keras_bn_tools_cli"]]
    if shutil.which("keras-bn-tools"):
        commands.append([shutil.which("keras-bn-tools")])
    for i, command in enumerate(commands):
        argv = [*command, "circles", *QUICK, "--engine", "fit", "--out", str(tmp_path / str(i))]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                                check=False, env=_env())  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("| config |")
        noise = [w for w in STARTUP_NOISE if w in result.stderr]
        assert not noise, f"{command}: start-up lines on stderr:\n{result.stderr}"
    environments = []
    for module in ("keras", "keras_bn_tools"):  # Keras itself sets TF_CPP_MIN_LOG_LEVEL=1
        code = f"import os, json, {module}; print(json.dumps(dict(os.environ)))"
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=300, check=False, env=_env())  # fmt: skip
        assert result.returncode == 0, result.stderr
        environments.append(result.stdout.strip().splitlines()[-1])
    assert environments[1] == environments[0]


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_every_way_of_stopping_leaves_out_as_it_was(signum, tmp_path):
    out = tmp_path / "results"
    before = _earlier_study(out)
    argv = [sys.executable, "-m", "keras_bn_tools", "circles", "--engine", "fit", "--seeds",
            "50", "--out", str(out), "--overwrite", "--no-progress"]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=_env())  # fmt: skip
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".keras-bn-tools-circles-*")) and time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        time.sleep(0.2)
    time.sleep(1.0)  # well inside the run
    process.send_signal(getattr(signal, signum))
    try:
        _, err = process.communicate(timeout=300)  # generous: CI runs this beside other tests
    except subprocess.TimeoutExpired:
        process.kill()  # so that a stuck child fails this test alone, not the next one's
        _, err = process.communicate()
        pytest.fail(f"{signum} did not stop the study within 300 s; its stderr:\n{err}")
    assert process.returncode == 128 + getattr(signal, signum), err
    assert "--out's results are as they were" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "runs"} == before
    assert _listing(tmp_path) == ["results", "results/moving_stats.npz", "results/results.json"]


# --------------------------------------------------------------------------- issue 23


def _protocols_file(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "my_protocols.py"
    path.write_text((ROOT / "tests" / "studies" / "study_protocols.py").read_text())
    return path


def test_study_runs_a_one_hot_protocol_from_a_file_path(capsys, tmp_path, monkeypatch):
    """`study path/to/file.py:ATTR` from another directory: a softmax model on one-hot
    labels, scored with categorical accuracy, end to end."""
    _protocols_file(tmp_path / "protocols")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    out = tmp_path / "one_hot"
    argv = ["study", "protocols/my_protocols.py:ONE_HOT", "--seeds", "2", "--epochs", "2",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "| plain | 2 |" in captured.out and "| bn | 2 |" in captured.out
    assert "epochs to 60% test acc" in captured.out
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "accuracy" and results["mode"] == "max"
    assert results["metadata"]["metric_name"] == "categorical_accuracy"
    assert _listing(out) == sorted(OUTPUTS)


@pytest.mark.backend_agnostic
@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("missing.py:P", "FILE.py:ATTR: no file 'missing.py'"),
        ("broken.py:P", "FILE.py:ATTR: running 'broken.py' failed: ZeroDivisionError"),
        ("protocols/my_protocols.py:NOPE", "must name a keras_bn_tools.studies.Protocol"),
    ],
)
def test_a_bad_file_protocol_exits_2_naming_it(spec, message, capsys, tmp_path, monkeypatch):
    _protocols_file(tmp_path / "protocols")
    (tmp_path / "broken.py").write_text("1 / 0\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    assert cli.main(["study", spec, *QUICK[2:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_diabetes_runs_from_the_command_line_and_summary_reads_it_back(capsys, tmp_path):
    out = tmp_path / "diabetes"
    argv = ["diabetes", "--configs", "baseline", "bn-input", "--seeds", "2", "--epochs", "3",
            "--no-progress", "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    table = capsys.readouterr().out
    assert table.startswith("| config | runs | train MAE |")
    assert "epochs to test MAE <= 50" in table and "lower is better" in table
    assert _listing(out) == sorted(
        ["results.json", "results.csv", "runs.csv", "table.md", "mae.png", "loss.png"]
    )
    results = json.loads((out / "results.json").read_text())
    assert results["metric"] == "mae" and results["mode"] == "min"
    assert (out / "results.csv").read_text().splitlines()[0].endswith("loss,mae,val_loss,val_mae")
    for where in (out, out / "results.json"):
        assert cli.main(["summary", str(where)]) == 0
        assert capsys.readouterr().out.strip() == (out / "table.md").read_text().strip()


@pytest.mark.backend_agnostic
def test_summary_prints_a_user_protocols_models_and_refuses_anything_else(
    capsys, tmp_path, monkeypatch
):
    path = _protocols_file(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "modules", dict(sys.modules))
    assert cli.main(["summary", f"{path}:REGRESSION", "--configs", "bn"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("bn: BN before the ReLU") and "regression_bn" in out
    assert cli.main(["summary", "nonsense"]) == 2
    assert "WHAT: 'nonsense' is neither a saved study" in capsys.readouterr().err
