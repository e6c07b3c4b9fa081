"""The engines: the fit engine feeds the study's orders, and every engine agrees run for run.

Both engines start a seed from the same initial weights (`set_random_seed`, then
build) and feed the same batches (`training_orders`), so per-epoch histories,
BN statistics, final metrics and weights agree to float round-off. These tests
run under every backend: the compiled engine is TensorFlow's or JAX's; PyTorch
has none, and says so.
"""

from __future__ import annotations

import numpy as np
import pytest
from study_protocols import BLOBS

from keras_bn_tools.studies import run_study, training_orders
from keras_bn_tools.studies.engines import COMPILED_BACKENDS, EngineUnavailableError
from keras_bn_tools.studies.results import METRICS

pytestmark = pytest.mark.backend_agnostic


def _backend() -> str:
    import keras

    return keras.backend.backend()


needs_compiled = pytest.mark.skipif(
    _backend() not in COMPILED_BACKENDS, reason="no compiled engine on this backend"
)


def test_fit_engine_feeds_exactly_the_study_orders():
    """Keras's own fit loop (eager, so a layer can record its inputs) fed by the engine's
    PyDataset sees epoch e's rows in training_orders(seed)[e]'s order, the smaller last
    batch included."""
    import keras

    from keras_bn_tools.studies.engines.common import StudyData
    from keras_bn_tools.studies.engines.fit import ordered_batches

    seen: list[np.ndarray] = []

    class Recorder(keras.layers.Layer):
        def call(self, inputs, training=None):
            if training:
                seen.append(keras.ops.convert_to_numpy(inputs)[:, 0].astype(int))
            return inputs

    rows, epochs, batch = 70, 3, 32
    x = np.arange(rows, dtype="float32").reshape(-1, 1)
    data = StudyData(x, np.zeros((rows, 1), "float32"), x, np.zeros((rows, 1), "float32"), "binary")
    orders = training_orders(5, rows, epochs)
    batches, epoch_setter = ordered_batches(data, orders, batch)
    model = keras.Sequential([keras.Input((1,)), Recorder(), keras.layers.Dense(1)])
    model.compile("sgd", "mse", run_eagerly=True)
    model.fit(batches, epochs=epochs, verbose=0, shuffle=False, callbacks=[epoch_setter])
    fed = np.concatenate(seen).reshape(epochs, rows)
    np.testing.assert_array_equal(fed, orders)
    assert [len(b) for b in seen[:3]] == [32, 32, 6]


def _assert_runs_agree(a, b):
    assert (a.config, a.seed) == (b.config, b.seed)
    rows = 500
    for m in METRICS:
        assert len(a.history[m]) == len(b.history[m])
        atol = 2.5 / rows if "accuracy" in m else 1e-5
        np.testing.assert_allclose(a.history[m], b.history[m], rtol=1e-4, atol=atol, err_msg=m)
    for key, value in a.final.items():
        atol = 2.5 / rows if "accuracy" in key else 1e-5
        assert value == pytest.approx(b.final[key], rel=1e-4, abs=atol), key
    assert a.moving_stats.keys() == b.moving_stats.keys()
    for layer, stats in a.moving_stats.items():
        assert stats.keys() == b.moving_stats[layer].keys()
        for stat, values in stats.items():
            assert values.shape[0] == a.epochs
            np.testing.assert_allclose(values, b.moving_stats[layer][stat], rtol=1e-4,
                                       atol=1e-5, err_msg=f"{layer}/{stat}")  # fmt: skip
    for w_a, w_b in zip(a.weights, b.weights, strict=True):
        np.testing.assert_allclose(w_a, w_b, rtol=1e-4, atol=1e-5)


@needs_compiled
@pytest.mark.parametrize(
    ("protocol", "configs", "shuffle"),
    [
        ("circles", ["bn-after"], "epoch"),
        ("circles", ["bn-input"], "once"),
        (BLOBS, ["bn"], "none"),
    ],
    ids=["circles-epoch", "circles-once", "blobs-none"],
)
def test_engines_agree_run_for_run(protocol, configs, shuffle):
    kwargs = {"seeds": [0, 3], "epochs": 3, "shuffle": shuffle}
    fit = run_study(protocol, configs, engine="fit", **kwargs)
    compiled = run_study(protocol, configs, engine="compiled", jit_compile=True, **kwargs)
    assert fit.engine == "fit" and compiled.engine == "compiled"
    assert [r.engine for r in compiled.runs] == ["compiled"] * 2
    for a, b in zip(fit.runs, compiled.runs, strict=True):
        _assert_runs_agree(a, b)
    if protocol == "circles" and "bn-after" in configs:
        stats = compiled.runs[0].moving_stats["batch_normalization"]
        assert set(stats) == {"moving_mean", "moving_variance", "gamma", "beta"}
        assert stats["moving_mean"].shape == (3, 50)


def test_auto_picks_the_fast_engine_where_there_is_one():
    result = run_study(BLOBS, ["bn"], seeds=[1], epochs=1)
    expected = "compiled" if _backend() in COMPILED_BACKENDS else "fit"
    assert result.engine == expected and result.runs[0].engine == expected
    assert result.metadata["versions"]["backend"] == _backend()
    assert result.metadata["accuracy"] == "sparse_categorical"


@pytest.mark.skipif(_backend() in COMPILED_BACKENDS, reason="this backend has a compiled engine")
def test_compiled_on_a_backend_without_one_names_the_alternative():
    with pytest.raises(EngineUnavailableError, match=r"engine='fit'.*--engine fit") as info:
        run_study(BLOBS, seeds=[0], epochs=1, engine="compiled")
    assert _backend() in str(info.value)


@needs_compiled
def test_a_config_must_keep_its_architecture():
    import dataclasses

    calls = []

    def build(config):
        calls.append(config)
        return BLOBS.build("bn" if len(calls) % 2 else "plain")

    shifty = dataclasses.replace(BLOBS, build=build)
    with pytest.raises(ValueError, match="different variables"):
        run_study(shifty, ["bn"], seeds=[0, 1], epochs=1, engine="compiled")


@pytest.mark.skipif(_backend() != "jax", reason="JAX engine: seeds in vmapped chunks")
def test_jax_chunks_of_seeds_match_one_call():
    from keras_bn_tools.studies.engines import jax as jax_engine
    from keras_bn_tools.studies.engines.common import RunSettings, StudyData

    data = StudyData.load(BLOBS, BLOBS.build("bn"))
    settings = RunSettings(epochs=1, batch_size=32)
    together = list(jax_engine.run_seeds(BLOBS, "bn", [4, 5, 6], data=data, settings=settings))
    chunks = jax_engine.run_seeds(BLOBS, "bn", [4, 5, 6], data=data, settings=settings,
                                  seeds_per_call=2)  # fmt: skip
    chunked = list(chunks)
    assert [r.seed for r in chunked] == [4, 5, 6]
    for a, b in zip(together, chunked, strict=True):
        np.testing.assert_allclose(a.history["loss"], b.history["loss"], rtol=1e-5)
    assert sum(r.compile_seconds for r in together) > 0


def test_fit_engine_runs_the_users_callbacks():
    from keras_bn_tools.callbacks import MovingStatsTracker

    made = []

    def factory(config, seed):
        made.append((config, seed))
        return [MovingStatsTracker()]

    result = run_study(BLOBS, ["bn"], seeds=[2], epochs=2, engine="fit", callbacks_factory=factory)
    assert made == [("bn", 2)]
    run = result.runs[0]
    tracker = run.callbacks[0]
    np.testing.assert_array_equal(
        tracker.history["bn"]["moving_mean"][1:], run.moving_stats["bn"]["moving_mean"]
    )
    assert run.moving_stats["bn"]["moving_mean"].shape == (2, 8)


@pytest.mark.skipif(_backend() != "tensorflow", reason="TensorFlow engine: XLA fallback")
def test_xla_failure_falls_back_to_a_plain_graph():
    import keras
    import tensorflow as tf

    from keras_bn_tools.studies.circles import CirclesConfig
    from keras_bn_tools.studies.circles import run_study as run_circles

    class TimestampedBatchNormalization(keras.layers.BatchNormalization):
        """BN plus an op XLA cannot compile (adds exactly zero)."""

        def call(self, inputs, training=None, mask=None):
            zero = tf.cast(tf.raw_ops.Timestamp(), inputs.dtype) * 0.0
            return super().call(inputs + zero, training=training, mask=mask)

    config = CirclesConfig("bn-timestamp", "XLA-hostile", bn_layer=TimestampedBatchNormalization)
    # Three seeds: the first call fails in the compiling thread, the seeds built
    # meanwhile and the later ones run on the plain graph.
    with pytest.warns(RuntimeWarning, match="XLA could not compile") as caught:
        xla = run_circles([config], seeds=[0, 1, 2], epochs=2, engine="compiled",
                          jit_compile=True)  # fmt: skip
    assert len([w for w in caught if "XLA could not compile" in str(w.message)]) == 1
    plain = run_circles([config], seeds=[0, 1, 2], epochs=2, engine="compiled",
                        jit_compile=False)  # fmt: skip
    for a, b in zip(xla.runs, plain.runs, strict=True):
        assert a.seed == b.seed
        np.testing.assert_allclose(a.history["loss"], b.history["loss"])


@pytest.mark.skipif(_backend() != "tensorflow", reason="TensorFlow engine: builds ahead")
def test_tensorflow_engine_reads_seeds_lazily_while_it_compiles(monkeypatch):
    """While the first seed's graph compiles, the engine builds at most PREFETCH
    later seeds' models, then one ahead of the running graph; an endless seed
    iterator is fine, and every run, final weights included (read before the
    next call starts), matches the run of its seed alone."""
    import itertools

    from keras_bn_tools.studies.engines import tensorflow as tf_engine
    from keras_bn_tools.studies.engines.common import RunSettings, StudyData

    monkeypatch.setattr(tf_engine, "PREFETCH", 2)
    data = StudyData.load(BLOBS, BLOBS.build("bn"))
    settings = RunSettings(epochs=1, batch_size=32)
    read = []

    def endless():
        for seed in itertools.count(10):
            read.append(seed)
            yield seed

    runs = tf_engine.run_seeds(BLOBS, "bn", endless(), data=data, settings=settings)
    first = [next(runs) for _ in range(4)]
    assert [r.seed for r in first] == [10, 11, 12, 13]
    assert len(read) <= 4 + 1  # the four runs, plus at most one read ahead
    for run in first:
        alone = tf_engine.run(BLOBS, "bn", run.seed, data=data, settings=settings)
        np.testing.assert_allclose(run.history["loss"], alone.history["loss"], rtol=1e-5)
        for mine, its in zip(run.weights, alone.weights, strict=True):
            np.testing.assert_allclose(mine, its, rtol=1e-5, atol=1e-6)
    assert len({float(np.sum(r.weights[0])) for r in first}) == 4  # four different runs


@pytest.mark.skipif(_backend() != "tensorflow", reason="XLA is a choice on TensorFlow only")
def test_the_protocol_decides_xla_unless_the_call_does():
    import dataclasses

    def xla(protocol, **kwargs):
        result = run_study(protocol, seeds=range(4), epochs=1, engine="compiled", **kwargs)
        return result.metadata["jit_compile"]

    assert xla(BLOBS) is True  # "auto": XLA from 4 seeds on
    no_xla = dataclasses.replace(BLOBS, jit_compile=False)
    assert xla(no_xla) is False
    assert xla(no_xla, jit_compile=True) is True


def test_jax_compiler_options_are_known_to_this_jaxlib():
    """The JAX engine's XLA options (debug options, which come and go between
    jaxlib releases) are accepted as they are: if a release drops one, the engine
    would quietly compile without it, and this test says so."""
    jax = pytest.importorskip("jax")

    from keras_bn_tools.studies.engines.jax import CPU_COMPILER_OPTIONS

    lowered = jax.jit(lambda x: x * 2.0 + 1.0).lower(np.float32(1.0))
    compiled = lowered.compile(compiler_options=dict(CPU_COMPILER_OPTIONS))
    assert float(compiled(np.float32(3.0))) == 7.0


def test_jax_engine_compiles_with_its_options_on_a_cpu():
    jax = pytest.importorskip("jax")

    from keras_bn_tools.studies.engines import jax as jax_engine

    seen = []

    class Lowered:
        def compile(self, compiler_options=None):
            seen.append(compiler_options)
            return "executable"

    assert jax_engine._compile(Lowered()) == "executable"
    expected = jax_engine.CPU_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    assert seen == [expected]


@pytest.mark.parametrize(
    "options",
    [{"xla_no_such_option": True}, {"xla_backend_optimization_level": "not a number"}],
    ids=["unknown-name", "wrong-type"],
)
def test_jax_engine_compiles_without_options_this_jaxlib_refuses(monkeypatch, options):
    jax = pytest.importorskip("jax")

    from keras_bn_tools.studies.engines import jax as jax_engine

    monkeypatch.setattr(jax_engine, "CPU_COMPILER_OPTIONS", options)
    lowered = jax.jit(lambda x: x * 2.0 + 1.0).lower(np.float32(1.0))
    if jax.default_backend() == "cpu":
        with pytest.raises(RuntimeError):
            lowered.compile(compiler_options=dict(options))
    assert float(jax_engine._compile(lowered)(np.float32(3.0))) == 7.0


@pytest.mark.skipif(_backend() != "jax", reason="JAX engine: seeds in vmapped chunks")
def test_jax_calls_hold_at_most_the_prediction_budget(monkeypatch):
    """Each run returns every epoch's predictions; a vmapped call trains only as many
    seeds as PREDICTION_BYTES_PER_CALL holds (here two: 2 epochs x 190 rows x 3 units)."""
    from keras_bn_tools.studies.engines import jax as jax_engine
    from keras_bn_tools.studies.engines.common import RunSettings, StudyData

    sizes = []
    run_chunk = jax_engine._Runner.run_chunk

    def recording(self, seeds, pad_to):
        sizes.append((len(seeds), pad_to))
        return run_chunk(self, seeds, pad_to)

    monkeypatch.setattr(jax_engine._Runner, "run_chunk", recording)
    monkeypatch.setattr(jax_engine, "PREDICTION_BYTES_PER_CALL", 2 * 4 * 2 * 190 * 3)
    data = StudyData.load(BLOBS, BLOBS.build("bn"))
    settings = RunSettings(epochs=2, batch_size=32)
    runs = list(jax_engine.run_seeds(BLOBS, "bn", [4, 5, 6], data=data, settings=settings))
    assert [r.seed for r in runs] == [4, 5, 6] and sizes == [(2, 2), (1, 2)]
