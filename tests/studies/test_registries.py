"""The two registries: study engines (`studies.engines.REGISTRY`) and built-in protocols
(`studies.registry.BUILTIN`). Everything that chooses an engine or lists the built-in
protocols reads them; these tests add entries and watch every reader follow."""

from __future__ import annotations

import dataclasses

import pytest
from study_protocols import BLOBS

import keras_bn_tools_cli as cli
from keras_bn_tools.studies import engines, registry
from keras_bn_tools.studies.engines import (
    CALLBACKS,
    WHOLE_RUN,
    XLA,
    Engine,
    EngineUnavailableError,
    resolve_engine,
    resolve_jit_compile,
)

pytestmark = pytest.mark.backend_agnostic


@pytest.mark.parametrize(
    ("engine", "backend", "implementation"),
    [
        ("auto", "tensorflow", "tensorflow"),
        ("compiled", "tensorflow", "tensorflow"),
        ("fit", "tensorflow", "fit"),
        ("auto", "jax", "jax"),
        ("compiled", "jax", "jax"),
        ("auto", "torch", "fit"),
        ("fit", "torch", "fit"),
        ("auto", "numpy", "fit"),
    ],
)
def test_engines_are_chosen_by_backend_and_capability(engine, backend, implementation):
    chosen = resolve_engine(engine, backend)
    assert isinstance(chosen, Engine) and chosen.runs_on(backend)
    assert chosen.implementation == f"keras_bn_tools.studies.engines.{implementation}"
    assert chosen.name == ("fit" if implementation == "fit" else "compiled")


def test_an_engine_missing_on_a_backend_names_the_backend_and_the_alternative():
    with pytest.raises(EngineUnavailableError, match=r"'torch'.*tensorflow and jax.*'fit'"):
        resolve_engine("compiled", "torch")
    with pytest.raises(ValueError, match="engine"):
        resolve_engine("eager", "tensorflow")
    assert engines.ENGINES == ("auto", "compiled", "fit")
    assert engines.COMPILED_BACKENDS == ("tensorflow", "jax")


def test_options_follow_what_each_engine_supports():
    def factory(config, seed):
        return []

    fit = resolve_engine("fit", "tensorflow")
    tf_compiled = resolve_engine("compiled", "tensorflow")
    jax_compiled = resolve_engine("compiled", "jax")
    assert CALLBACKS in fit.supports and XLA not in fit.supports
    assert fit.options_for(BLOBS, range(5), callbacks_factory=factory) == {
        "callbacks_factory": factory
    }
    assert tf_compiled.options_for(BLOBS, range(5)) == {"jit_compile": True}
    assert tf_compiled.options_for(BLOBS, range(3)) == {"jit_compile": False}
    assert jax_compiled.options_for(BLOBS, range(5)) == {}
    for compiled in (tf_compiled, jax_compiled):
        with pytest.raises(ValueError, match=r"callbacks_factory.*engine='fit'"):
            compiled.options_for(BLOBS, [0], callbacks_factory=factory)
    with pytest.raises(ValueError, match="jit_compile"):  # checked whatever the engine
        fit.options_for(BLOBS, [0], jit_compile="yes")


@pytest.mark.parametrize(
    ("requested", "protocol", "seeds", "expected"),
    [
        ("auto", "auto", 3, False),
        ("auto", "auto", 4, True),
        ("auto", False, 10, False),
        ("auto", True, 1, True),
        (True, False, 1, True),
        (False, True, 10, False),
    ],
)
def test_jit_compile_is_decided_in_one_place(requested, protocol, seeds, expected):
    no_xla = dataclasses.replace(BLOBS, jit_compile=protocol)
    assert resolve_jit_compile(requested, no_xla, seeds) is expected


def test_a_registered_engine_is_picked_by_capability(monkeypatch):
    """A new engine that compiles whole runs on a backend is what "auto" picks there;
    `run_study` runs it through the registry (here it delegates to `fit`) and records
    its name."""
    import keras

    from keras_bn_tools.studies import run_study

    calls = []
    fit = resolve_engine("fit", "tensorflow")

    class Recording(Engine):
        def run_seeds(self, protocol, config, seeds, *, data, settings, **options):
            calls.append((config, tuple(seeds), sorted(options)))
            return fit.run_seeds(
                protocol, config, seeds, data=data, settings=settings, callbacks_factory=None
            )

    backend = keras.backend.backend()
    fast = Recording("fit", "unused", (backend,), (), frozenset({WHOLE_RUN}))
    monkeypatch.setattr(engines, "REGISTRY", (fast, *engines.REGISTRY))
    assert resolve_engine("auto", backend) is fast
    result = run_study(BLOBS, ["bn"], seeds=[0, 1], epochs=1)
    assert calls == [("bn", (0, 1), [])]
    assert [r.seed for r in result.runs] == [0, 1] and result.engine == "fit"


def test_builtin_protocols_are_listed_once(monkeypatch, capsys):
    import keras_bn_tools.studies as studies

    assert {"circles", "digits", "sequence"} <= set(registry.PROTOCOLS)
    modules = {target.partition(":")[0].rpartition(".")[2] for target in registry.BUILTIN.values()}
    assert modules <= studies._LAZY_SUBMODULES
    monkeypatch.setitem(registry.BUILTIN, "rings", registry.BUILTIN["circles"])
    assert registry.PROTOCOLS["rings"] is registry.PROTOCOLS["circles"]
    assert registry.resolve_protocol("rings").name == "circles"
    assert "rings" in repr(registry.PROTOCOLS) and len(registry.PROTOCOLS) == len(registry.BUILTIN)
    monkeypatch.setattr(cli, "builtin_protocols", lambda: tuple(registry.BUILTIN))
    assert cli.main(["--help"]) == 0
    assert "run the rings study" in capsys.readouterr().out
    with pytest.raises(KeyError):
        registry.PROTOCOLS["mnist"]
