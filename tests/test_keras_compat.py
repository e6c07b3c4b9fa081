"""Each Keras internal in `keras_bn_tools._keras_compat`, checked against the installed Keras.

A Keras release that changes one of them fails the test named after it, instead of a
feature far away (the rewriter, folding, recurrent BN).
"""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools import _keras_compat as compat

pytestmark = pytest.mark.backend_agnostic


def _two_branch_model() -> keras.Model:
    inputs = keras.Input((3,), name="features")
    shared = keras.layers.Dense(4, name="shared")
    a = shared(inputs)
    b = shared(keras.layers.Dense(3, name="pre")(inputs))
    outputs = keras.layers.Add(name="add")([a, b])
    return keras.Model(inputs, outputs, name="two_branch")


class _Subclassed(keras.Model):
    def __init__(self) -> None:
        super().__init__()
        self.dense = keras.layers.Dense(2)

    def call(self, inputs):
        return self.dense(inputs)


def test_is_functional_tells_graph_models_from_subclassed_ones():
    assert compat.is_functional(_two_branch_model())
    assert compat.is_functional(keras.Sequential([keras.layers.Dense(2)]))
    assert not compat.is_functional(_Subclassed())
    assert not compat.is_functional(keras.layers.Dense(2))


def test_functional_graph_of_sequential_exists_once_built():
    model = keras.Sequential([keras.layers.Dense(2)])
    assert compat.functional_graph(model) is None  # no input shape yet
    model.build((None, 3))
    graph = compat.functional_graph(model)
    assert graph is not None and compat.is_functional(graph)
    functional = _two_branch_model()
    assert compat.functional_graph(functional) is functional
    assert compat.functional_graph(_Subclassed()) is None


def test_graph_nodes_are_in_call_order_with_their_tensors():
    model = _two_branch_model()
    nodes = compat.graph_nodes(model)
    names = [node.operation.name for node in nodes]
    assert names.count("shared") == 2 and names[-1] == "add"
    assert names.index("pre") < max(i for i, name in enumerate(names) if name == "shared")
    for node in nodes:
        assert node.input_tensors and node.outputs
    assert nodes[-1].outputs[0] is model.outputs[0]


def test_producer_and_inbound_tensors_walk_back_from_an_output():
    model = _two_branch_model()
    operation, index = compat.producer(model.outputs[0])
    assert operation.name == "add" and index == 0
    inputs = compat.inbound_tensors(operation, index)
    producers = sorted(compat.producer(tensor)[0].name for tensor in inputs)
    assert producers == ["shared", "shared"]
    second = [compat.producer(tensor)[1] for tensor in inputs]
    assert sorted(second) == [0, 1]  # the shared layer's two calls
    assert compat.node_count(model.get_layer("shared")) == 2
    assert compat.graph_input_name(model.inputs[0]) == "features"


def test_run_rnn_loop_matches_a_python_loop():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    weights = keras.ops.convert_to_tensor(rng.normal(size=(3, 3)).astype("float32"))

    def step(inputs, states):
        h, count = states
        h = keras.ops.tanh(inputs + keras.ops.matmul(h, weights))
        return h * 2.0, [h, count + 1]

    h0 = np.zeros((2, 3), "float32")
    count0 = keras.ops.convert_to_tensor(0, "int32")
    last, outputs, states = compat.run_rnn_loop(step, x, [h0, count0])
    h, expected = h0, []
    for t in range(5):
        h = np.tanh(x[:, t] + h @ keras.ops.convert_to_numpy(weights))
        expected.append(h * 2.0)
    expected = np.stack(expected, axis=1)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(outputs), expected, atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(last), expected[:, -1], atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(states[0]), h, atol=1e-5)
    assert int(keras.ops.convert_to_numpy(states[1])) == 5

    last_only = compat.run_rnn_loop(step, x, [h0, count0], return_all_outputs=False)[0]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(last_only), expected[:, -1], atol=1e-5)
    unrolled = compat.run_rnn_loop(step, x, [h0, count0], unroll=True)[1]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(unrolled), expected, atol=1e-5)


def test_jax_trainer_holds_value_is_false_outside_fit():
    variable = keras.Variable(np.zeros(3, "float32"))
    assert not compat.jax_trainer_holds_value(variable)


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="the JAX trainer only")
def test_jax_trainer_holds_value_during_fit():
    seen = []
    bn = keras.layers.BatchNormalization()
    model = keras.Sequential([keras.Input((2,)), bn])
    model.compile("sgd", "mse")

    class Probe(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(compat.jax_trainer_holds_value(bn.moving_mean))

    model.fit(np.zeros((8, 2)), np.zeros((8, 2)), batch_size=4, verbose=0, callbacks=[Probe()])
    assert seen and all(seen)
    assert not compat.jax_trainer_holds_value(bn.moving_mean)


def test_copy_lambda_shares_the_function_and_keeps_the_output_shape():
    def scale(x, factor):
        return x * factor

    layer = keras.layers.Lambda(
        scale, output_shape=(3,), arguments={"factor": 2.0}, name="scale", trainable=False
    )
    copy = compat.copy_lambda(layer)
    assert copy is not layer and copy.function is scale and copy.name == "scale"
    assert copy.arguments == {"factor": 2.0} and not copy.trainable
    assert copy.compute_output_shape((None, 3)) == layer.compute_output_shape((None, 3))
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(copy(x)), 2.0 * x)


@pytest.mark.backend_agnostic
def test_keras_compile_config_warning_is_ignored_only_where_keras_raises_it():
    """Keras 3.15's `get_compile_config()` warns (NumPy's `__array__ ... copy keyword`) on
    JAX and PyTorch; if this stops failing on those backends, the workaround can go."""
    import warnings

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.get_compile_config()
    raised = [w for w in caught if compat.KERAS_VARIABLE_ARRAY_WARNING[:20] in str(w.message)]
    if keras.backend.backend() in ("jax", "torch"):
        assert raised and all("keras" in w.filename for w in raised)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with compat.ignoring_keras_variable_array_warning():
            config = model.get_compile_config()
        ours = pytest.raises(DeprecationWarning, match="copy keyword")  # not raised by Keras
        with ours, compat.ignoring_keras_variable_array_warning():
            warnings.warn(compat.KERAS_VARIABLE_ARRAY_WARNING, DeprecationWarning, stacklevel=1)
    assert config["optimizer"]["config"]["learning_rate"] == pytest.approx(0.01)


def _dense_pair_with_a_thread_drawing_between():
    """Two Dense layers; between their constructions another thread draws from Python's
    `random` (what a Dask worker's event loop does at any moment)."""
    import random
    import threading

    first = keras.layers.Dense(3)
    drawer = threading.Thread(target=lambda: [random.random() for _ in range(5)])
    drawer.start()
    drawer.join()
    second = keras.layers.Dense(3)
    model = keras.Sequential([keras.Input((2,)), first, second])
    return model.get_weights()


def test_keras_default_seeds_make_the_weights_a_function_of_the_seed_alone():
    keras.utils.set_random_seed(7)
    reference = keras.Sequential(
        [keras.Input((2,)), keras.layers.Dense(3), keras.layers.Dense(3)]
    ).get_weights()
    keras.utils.set_random_seed(7)
    disturbed = _dense_pair_with_a_thread_drawing_between()
    # The hazard is real: the other thread's draws changed the second layer's seed.
    assert not np.array_equal(disturbed[2], reference[2])
    keras.utils.set_random_seed(7)
    with compat.keras_default_seeds(7):
        guarded = _dense_pair_with_a_thread_drawing_between()
    for got, want in zip(guarded, reference, strict=True):
        np.testing.assert_array_equal(got, want)


def test_keras_default_seeds_stand_in_for_random_where_keras_draws_them():
    import random

    from keras.src.random.seed_generator import make_default_seed

    with compat.keras_default_seeds(11):
        drawn = [make_default_seed(), keras.initializers.GlorotUniform().seed]
        with compat.keras_default_seeds(12):
            inner = make_default_seed()
        drawn.append(make_default_seed())
    expected = random.Random(11)
    assert drawn == [expected.randint(1, int(1e9)) for _ in range(3)]
    assert inner == random.Random(12).randint(1, int(1e9))
    # Outside, Keras draws from Python's `random`, as it does without this package.
    random.seed(5)
    outside = make_default_seed()
    random.seed(5)
    assert outside == random.randint(1, int(1e9))
