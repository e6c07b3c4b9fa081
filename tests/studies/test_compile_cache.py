"""JAX's persistent compilation cache: a second process (other seeds) hits the study's
programs; the default location and its off switch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import pytest

from keras_bn_tools.studies import compile_cache

ROOT = Path(__file__).resolve().parents[2]

_STUDY = """
import json, sys
import jax
import keras
import numpy as np
events = {"hits": 0, "misses": 0, "traced": 0}
def listen(event, **kwargs):
    if event == "/jax/compilation_cache/cache_hits":
        events["hits"] += 1
    elif event == "/jax/compilation_cache/cache_misses":
        events["misses"] += 1
jax.monitoring.register_event_listener(listen)
stateless_call = keras.layers.Layer.stateless_call
def counted(self, *args, **kwargs):  # only the traced training program calls it
    events["traced"] += 1
    return stateless_call(self, *args, **kwargs)
keras.layers.Layer.stateless_call = counted
from keras_bn_tools.studies import run_study
from keras_bn_tools.studies.compile_cache import use_compile_cache
if sys.argv[1] != "off":
    use_compile_cache(sys.argv[1])
seeds = [int(s) for s in sys.argv[2].split(",")]
result = run_study("circles", ["baseline", "bn-after"], seeds, epochs=2)
events["engine"] = result.engine
events["numbers"] = [
    [r.history[k].tolist() for k in sorted(r.history)] + [sorted(r.final.items())]
    + [np.concatenate([np.ravel(w) for w in r.weights]).tolist()]
    for r in result.runs
]
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
    # The study's programs: traced ones are named after the engine's `run`, saved ones
    # (exported, then called) after `call`.
    return sorted(p.name for p in cache.iterdir() if p.name.startswith(("jit_run", "jit_call")))


def _saved_programs(cache: Path) -> list[str]:
    folder = cache / compile_cache.PROGRAMS
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


@pytest.mark.slow
def test_a_second_process_with_other_seeds_hits_the_study_programs(tmp_path):
    pytest.importorskip("jax")
    cache = tmp_path / "cache"
    first = _study(cache, "0,1")
    assert first["engine"] == "compiled" and first["misses"] >= 2 and first["hits"] == 0
    assert first["traced"] > 0
    programs = _programs(cache)
    assert len(programs) == 2  # one vmapped run program per config
    saved = _saved_programs(cache)
    assert len(saved) == 2  # and its traced program, exported
    # Other seeds, another process: the same programs (weights are arguments), from disk,
    # and no tracing: the saved programs are called.
    second = _study(cache, "7,8")
    assert second["hits"] >= 2, second
    assert second["misses"] < first["misses"]
    assert second["traced"] == 0
    assert _programs(cache) == programs  # nothing compiled anew for the study
    assert _saved_programs(cache) == saved
    # The saved programs give the numbers that tracing gives, every one.
    traced = _study("off", "7,8")
    assert traced["traced"] > 0 and traced["hits"] == 0
    assert second["numbers"] == traced["numbers"]


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


# The saved programs are the JAX engine's: these run under JAX (CI's JAX pass), so that no
# other backend's test process starts JAX's threads (Ray's fork would then warn, an error here).
jax_only = pytest.mark.skipif(
    keras.backend.backend() != "jax", reason="the JAX engine's saved programs"
)


def _mlp(units: int = 4, *, layer=None) -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((3,), name="features"), keras.layers.Dense(units, name="dense"),
         layer or keras.layers.BatchNormalization(name="bn"), keras.layers.Dense(1, name="out")],
        name="mlp",
    )  # fmt: skip


def _adam(learning_rate: float) -> keras.optimizers.Optimizer:
    # Named: names Keras makes up (adam_1) are part of a configuration.
    return keras.optimizers.Adam(learning_rate, name="adam")


class _OwnLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0


@pytest.mark.backend_agnostic
@jax_only
def test_a_program_key_names_what_the_program_is_made_of():
    adam = _adam(0.01)
    key = compile_cache.program_key(_mlp(), adam, "mse", epochs=3)
    assert key == compile_cache.program_key(_mlp(), _adam(0.01), "mse", epochs=3)
    others = [
        compile_cache.program_key(_mlp(5), adam, "mse", epochs=3),
        compile_cache.program_key(_mlp(), _adam(0.02), "mse", epochs=3),
        compile_cache.program_key(_mlp(), adam, "mae", epochs=3),
        compile_cache.program_key(_mlp(), adam, keras.losses.Huber(0.5), epochs=3),
        compile_cache.program_key(_mlp(), adam, "mse", epochs=4),
        compile_cache.program_key(_mlp(layer=keras.layers.Dropout(0.1)), adam, "mse", epochs=3),
    ]
    assert None not in others and len({key, *others}) == 1 + len(others)


@pytest.mark.backend_agnostic
@jax_only
def test_no_program_key_where_the_users_own_code_could_change_under_its_name():
    adam = _adam(0.01)
    assert compile_cache.program_key(_mlp(layer=_OwnLayer()), adam, "mse") is None
    lambda_layer = keras.layers.Lambda(lambda x: x + 1.0)
    assert compile_cache.program_key(_mlp(layer=lambda_layer), adam, "mse") is None

    def own_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.abs(y_true - y_pred))

    assert compile_cache.program_key(_mlp(), adam, own_loss) is None
    own_activation = keras.layers.Activation(lambda x: x * 2.0)
    assert compile_cache.program_key(_mlp(layer=own_activation), adam, "mse") is None


def test_a_saved_program_reads_back_whole_and_a_damaged_one_is_a_miss(monkeypatch, tmp_path):
    monkeypatch.setattr(compile_cache, "active_compile_cache", lambda: str(tmp_path))
    assert compile_cache.load_program("k") is None
    compile_cache.save_program("k", b"program bytes")
    assert compile_cache.load_program("k") == b"program bytes"
    assert not list((tmp_path / compile_cache.PROGRAMS).glob("*.tmp"))
    path = tmp_path / compile_cache.PROGRAMS / "k.bin"
    path.write_bytes(path.read_bytes()[:-3])  # torn
    with pytest.warns(UserWarning, match=r"k\.bin is damaged.*traced again and rewritten"):
        assert compile_cache.load_program("k") is None
    compile_cache.save_program("k", b"program bytes")
    assert compile_cache.load_program("k") == b"program bytes"
    # Without a cache, nothing is saved and nothing found.
    monkeypatch.setattr(compile_cache, "active_compile_cache", lambda: None)
    compile_cache.save_program("j", b"x")
    assert compile_cache.load_program("j") is None
    assert not (tmp_path / compile_cache.PROGRAMS / "j.bin").exists()
