"""JAX's persistent compilation cache: a second process (other seeds) hits the study's
programs; the default location and its off switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from keras_bn_tools.studies import compile_cache

ROOT = Path(__file__).resolve().parents[2]

_STUDY = """
import json, sys
import jax
events = {"hits": 0, "misses": 0}
def listen(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
jax.monitoring.register_event_listener(listen)
from keras_bn_tools.studies import run_study
from keras_bn_tools.studies.compile_cache import use_compile_cache
use_compile_cache(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
result = run_study("circles", ["baseline", "bn-after"], seeds, epochs=2)
events["engine"] = result.engine
events["accuracy"] = [r.final_test_accuracy for r in result.runs]
print("RESULT" + json.dumps(events))
"""


def _study(cache: Path, seeds: str) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax",
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", _STUDY, str(cache), seeds], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))


def _programs(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if p.name.startswith("jit_run"))


@pytest.mark.slow
def test_a_second_process_with_other_seeds_hits_the_study_programs(tmp_path):
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    first = _study(cache, "0,1")
    assert first["engine"] == "compiled" and first["misses"] >= 2 and first["hits"] == 0
    programs = _programs(cache)
    assert len(programs) == 2  # one vmapped run program per config
    # Other seeds, another process: the same programs (weights are arguments), from disk.
    second = _study(cache, "7,8")
    assert second["hits"] >= 2, second
    assert second["misses"] < first["misses"]
    assert _programs(cache) == programs  # nothing compiled anew for the study


def test_the_default_location_and_its_off_switch(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert compile_cache.default_location() == tmp_path / "keras-bn-tools" / "jax-compile-cache"
    monkeypatch.setenv(compile_cache.ENV, str(tmp_path / "mine"))
    assert compile_cache.default_location() == tmp_path / "mine"
    for off in ("off", "0", "none", "OFF", ""):
        monkeypatch.setenv(compile_cache.ENV, off)
        assert compile_cache.default_location() is None


def test_use_compile_cache_sets_jax_public_configuration(tmp_path):
    jax = pytest.importorskip("jax")
    before = jax.config.jax_compilation_cache_dir
    try:
        folder = compile_cache.use_compile_cache(tmp_path / "c")
        assert (tmp_path / "c").is_dir() and folder == str(tmp_path / "c")
        assert jax.config.jax_compilation_cache_dir == folder
        assert compile_cache.active_compile_cache() == folder
        assert jax.config.jax_persistent_cache_min_compile_time_secs == (
            compile_cache.MIN_COMPILE_SECONDS
        )
    finally:
        jax.config.update("jax_compilation_cache_dir", before)
