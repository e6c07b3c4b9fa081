"""Fuzz the study and its command line (issue 16): succeed, or fail clearly naming the input.

`run_study` with arbitrary arguments either returns results without NaN or
raises `ValueError`/`TypeError` naming the argument (the `check_call`
property). The command line with an arbitrary value for one option either
runs (exit 0) or exits 2 with a message naming that option and no traceback.
Valid values are kept cheap (one config, one seed, one or two epochs).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import keras_bn_tools_cli as cli
from keras_bn_tools.studies import run_study

_ARGUMENT = {
    "protocol": st.one_of(st.sampled_from(["circles", "mnist", ""]), st.integers(), st.none()),
    "configs": st.one_of(
        st.none(),
        st.sampled_from(["baseline", "bn-after", "nope"]),
        st.lists(st.sampled_from(["baseline", "bn-before", "x"]), max_size=2),
        st.integers(),
    ),
    "seeds": st.one_of(
        st.lists(st.integers(-2, 3), max_size=2),
        st.integers(-3, 2**33),
        st.sampled_from([range(0), range(2**32 - 1, 2**32 + 2), range(2, 0, -1)]),
        st.text(max_size=3),
        st.floats(allow_nan=True),
    ),
    "epochs": st.one_of(st.integers(-2, 2), st.floats(allow_nan=True), st.text(max_size=2)),
    "batch_size": st.one_of(st.integers(-2, 600), st.floats(allow_nan=True), st.none()),
    "engine": st.one_of(
        st.sampled_from(["auto", "fit", "compiled", "FIT", "eager"]), st.integers()
    ),
    "shuffle": st.one_of(
        st.sampled_from(["epoch", "once", "none", "Once", "always"]), st.booleans()
    ),
    "callbacks_factory": st.one_of(st.none(), st.integers()),
    "jit_compile": st.one_of(st.sampled_from([True, False, "auto", "yes"]), st.none()),
}


# `check_call` is a stateless function: sharing it between examples is safe.
_SHARED_FIXTURE_OK = [
    HealthCheck.function_scoped_fixture,
    HealthCheck.too_slow,
    HealthCheck.data_too_large,
]


@pytest.mark.backend_agnostic
@settings(suppress_health_check=_SHARED_FIXTURE_OK)
@given(name=st.sampled_from(sorted(_ARGUMENT)), data=st.data())
def test_run_study_succeeds_or_names_the_argument(name, data, check_call):
    value = data.draw(_ARGUMENT[name], label=name)
    kwargs = {"protocol": "circles", "configs": ["baseline"], "seeds": [0], "epochs": 1,
              "engine": "fit", name: value}  # fmt: skip

    def call():
        result = run_study(**kwargs)
        return [(run.final, run.history) for run in result.runs]

    check_call(call, [name])


_OPTION = {
    "--seeds": st.one_of(st.integers(-3, 2).map(str), st.integers(2**33, 2**70).map(str)),
    "--first-seed": st.one_of(st.integers(-3, 2**33).map(str), st.text(max_size=4)),
    "--epochs": st.one_of(st.integers(-3, 2).map(str), st.integers(10**7, 10**30).map(str)),
    "--batch-size": st.one_of(st.integers(-3, 10**10).map(str), st.just("3.5")),
    "--engine": st.one_of(st.sampled_from(["auto", "fit", "compiled"]), st.text(max_size=4)),
    "--shuffle": st.one_of(st.sampled_from(["epoch", "once", "none"]), st.text(max_size=4)),
    "--configs": st.one_of(st.sampled_from(["baseline", "all", "nope"]), st.text(max_size=4)),
    "--out": st.one_of(st.sampled_from(["", ".", "a/b", "x\x00y", "~"]), st.text(max_size=6)),
}


@pytest.mark.backend_agnostic
@given(option=st.sampled_from(sorted(_OPTION)), data=st.data())
def test_cli_runs_or_exits_2_naming_the_option(option, data):
    value = data.draw(_OPTION[option], label=option)
    defaults = {"--configs": "baseline", "--seeds": "1", "--epochs": "1", "--engine": "fit",
                "--out": "out"}  # fmt: skip
    defaults[option] = value
    if option == "--configs" and value == "all":
        defaults["--epochs"] = "1"
    argv = ["circles", "--no-progress"]
    for key, text in defaults.items():
        argv += [key, text] if not text.startswith("-") else [f"{key}={text}"]
    err = io.StringIO()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                status = cli.main(argv)
        finally:
            os.chdir(cwd)
    message = err.getvalue()
    assert "Traceback" not in message
    assert status == 0 or (status == 2 and option in message), (argv, status, message)
