"""The one home of every Keras internal this package relies on.

Keras 3 has no public API for a few things this package needs: walking the
layer graph of a functional model, telling a functional model from a
subclassed one, and running a custom time loop with Keras's own RNN loop.
Each such use sits here, with a comment saying why no public route does it,
and `tests/test_keras_compat.py` checks each one, so that a Keras release
that changes one fails one named test instead of a feature far away.

Everything else in the package uses public Keras only (`keras.ops`,
`keras.layers`, `keras.models.clone_model`, `get_config`/`from_config`).
"""

from __future__ import annotations

import contextlib
import random
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import keras

__all__ = [
    "copy_lambda",
    "functional_graph",
    "graph_input_name",
    "graph_nodes",
    "ignoring_keras_variable_array_warning",
    "inbound_tensors",
    "is_functional",
    "jax_trainer_holds_value",
    "keras_default_seeds",
    "node_count",
    "producer",
    "run_rnn_loop",
]


def _functional_class() -> type:
    # Why internal: `keras.Model(inputs, outputs)` returns an instance of the
    # internal class `Functional`; Keras exports no name for it, and a
    # subclassed `keras.Model` has no layer graph. `keras.models.clone_model`
    # makes this very check on the same class.
    from keras.src.models.functional import Functional

    return Functional


def is_functional(model: Any) -> bool:
    """True for a `keras.Sequential` or a functional model (one with a layer graph)."""
    return isinstance(model, keras.Sequential | _functional_class())


def functional_graph(model: keras.Model) -> Any:
    """The functional model that holds `model`'s layer graph, or None if it has none.

    A functional model is its own graph; a built `keras.Sequential` keeps one
    in a private attribute (None when it was built without a known input).
    """
    if isinstance(model, keras.Sequential):
        # Why internal: Sequential exposes no graph of its own; `_functional` is the
        # functional model it builds from its layers once the input shape is known.
        return getattr(model, "_functional", None)
    return model if isinstance(model, _functional_class()) else None


def graph_nodes(model: keras.Model) -> list[Any]:
    """The call nodes of a functional model's graph, in execution order (inputs excluded).

    Each node has `.operation` (the layer or op called), `.input_tensors` and
    `.outputs` (the symbolic tensors it read and wrote).
    """
    # Why internal: Keras has no public graph API; `_nodes_by_depth` is how
    # `Functional` itself orders its nodes (deepest first = earliest call).
    nodes = []
    by_depth = model._nodes_by_depth
    for depth in sorted(by_depth, reverse=True):
        for node in by_depth[depth]:
            if node.operation is not None and not node.is_input:
                nodes.append(node)
    return nodes


def producer(tensor: Any) -> tuple[Any, int]:
    """`(operation, node_index)` of the call that produced the symbolic `tensor`."""
    # Why internal: a KerasTensor records its producer in `_keras_history`
    # (operation, node index, tensor index); no public accessor exists, and
    # keras.Function walks the graph through the same attribute.
    operation, node_index, _ = tensor._keras_history
    return operation, node_index


def inbound_tensors(operation: Any, node_index: int) -> list[Any]:
    """The input tensors of call `node_index` of `operation` (a layer in a graph)."""
    # Why internal: the nodes of a layer's calls are only reachable through
    # `_inbound_nodes`; there is no public per-call view.
    return list(operation._inbound_nodes[node_index].input_tensors)


def node_count(layer: keras.layers.Layer) -> int:
    """How many times `layer` has been called on symbolic inputs (its graph nodes)."""
    # Why internal: as above, `_inbound_nodes` is the only record of a layer's calls.
    return len(layer._inbound_nodes)


def graph_input_name(tensor: Any) -> str:
    """The name of the `InputLayer` that made the symbolic input `tensor`."""
    operation, _ = producer(tensor)
    return operation.name


class _LoopHost:
    """The few attributes `keras.layers.RNN.inner_loop` reads from its layer.

    Why not a real `keras.layers.RNN`: the loop's step is a plain function of
    `(inputs, states)` (no layer call per step, no weights of its own), and
    the host must not be tracked as a sub-layer of the caller.
    """

    def __init__(self, step: Callable, unroll: bool, return_all_outputs: bool) -> None:
        self.cell = step  # not a Layer: called as `cell(inputs, states)`
        self.go_backwards = False
        self.stateful = False
        self.unroll = unroll
        self.zero_output_for_mask = False
        self.return_sequences = return_all_outputs


def run_rnn_loop(
    step: Callable[[Any, list[Any]], tuple[Any, list[Any]]],
    inputs: Any,
    initial_states: list[Any],
    *,
    unroll: bool = False,
    return_all_outputs: bool = True,
) -> tuple[Any, Any, list[Any]]:
    """Run `step` over the time axis of `inputs` with Keras's own RNN loop.

    Args:
        step: `step(inputs_t, states) -> (output_t, new_states)`.
        inputs: `(batch, timesteps, features)`, processed from the first step.
        initial_states: a list of tensors.
        unroll: unroll the loop (short sequences of known length only).
        return_all_outputs: stack the outputs of every step (else only the last).

    Returns:
        `(last_output, outputs, final_states)` as `keras.layers.RNN.inner_loop`.
    """
    # Why this route: the backend RNN loops (`tf.while_loop` with TensorArrays,
    # `jax.lax.scan`, torch's Python loop) are reachable publicly only through
    # `keras.layers.RNN.inner_loop`; the module holding them moved between
    # Keras 3.15 (`keras.src.backend.rnn` is a function) and 3.16 (a module),
    # and `keras.ops.scan` on TensorFlow requires every step output to have the
    # structure of the loop state. `inner_loop` calls `self.cell(inputs, states)`
    # (a non-layer cell gets no `training` argument) and the backend loop.
    host = _LoopHost(step, unroll, return_all_outputs)
    inputs = keras.ops.convert_to_tensor(inputs)
    states = [keras.ops.convert_to_tensor(state) for state in initial_states]
    last_output, outputs, states = keras.layers.RNN.inner_loop(host, inputs, states, mask=None)
    return last_output, outputs, list(states)


def jax_trainer_holds_value(variable: keras.Variable) -> bool:
    """True while `model.fit` on JAX keeps `variable`'s value outside it.

    During an epoch the JAX trainer moves the model state into its jitted step
    and empties the variables; a value assigned then would be overwritten at
    the epoch's end.
    """
    # Why internal: Keras exposes no "is this variable attached" query; the JAX
    # trainer empties `_value` (while `_initializer` is None once initialized).
    return (
        keras.backend.backend() == "jax"
        and getattr(variable, "_value", 0) is None
        and getattr(variable, "_initializer", None) is None
    )


def copy_lambda(layer: keras.layers.Lambda) -> keras.layers.Lambda:
    """A new `Lambda` layer with the same function, arguments, output shape and mask."""
    # Why internal: `Lambda.get_config()` serializes the function as bytecode, which
    # `from_config` loads only with safe_mode=False; a copy that shares the function
    # object needs the constructor's `output_shape`, kept only in `_output_shape`.
    return keras.layers.Lambda(
        layer.function,
        output_shape=layer._output_shape,
        mask=layer.mask,
        arguments=layer.arguments,
        name=layer.name,
        dtype=layer.dtype_policy,
        trainable=layer.trainable,
    )


#: NumPy 2's warning for an `__array__` without a `copy` argument, as Keras 3.15's
#: `Variable.numpy()` (`np.array(variable)`) triggers it on JAX and PyTorch.
KERAS_VARIABLE_ARRAY_WARNING = r"__array__ implementation doesn't accept a copy keyword"


@contextlib.contextmanager
def ignoring_keras_variable_array_warning() -> Iterator[None]:
    """Ignore NumPy's `__array__ ... copy keyword` DeprecationWarning raised inside Keras.

    Why: `model.get_compile_config()` (which `keras.models.clone_model` also
    calls for a compiled model) serializes the optimizer with
    `float(learning_rate.numpy())`, and Keras's `Variable.numpy()` is
    `np.array(self)`, which NumPy 2 warns about on JAX and PyTorch. It is Keras's
    call, on no data of ours, and a project that turns DeprecationWarning into
    errors would otherwise be unable to convert or clone a compiled model. Only
    this message, and only when Keras's code raises it, is ignored;
    `tests/test_keras_compat.py` fails once Keras stops raising it.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore",
            message=KERAS_VARIABLE_ARRAY_WARNING,
            category=DeprecationWarning,
            module=r"keras\.",
        )
        yield


class _ThreadDefaultSeeds:
    """Stands in for the `random` module where Keras draws its default seeds: this
    thread's private generator inside `keras_default_seeds`, else `random` itself
    (what Keras does)."""

    def __init__(self) -> None:
        self._local = threading.local()

    def __getattr__(self, name: str) -> Any:
        generator = getattr(self._local, "generator", None)
        return getattr(random if generator is None else generator, name)


_THREAD_DEFAULT_SEEDS = _ThreadDefaultSeeds()


@contextlib.contextmanager
def keras_default_seeds(seed: int) -> Iterator[None]:
    """Inside, Keras draws the default seeds of this thread's new initializers and
    seed generators from `random.Random(seed)`: the numbers it draws from Python's
    `random` right after `keras.utils.set_random_seed(seed)` in a process where
    nothing else draws from it.

    Why: a layer or initializer made with `seed=None` gets its seed from Python's
    process-wide `random` (`make_default_seed`), which other threads of the process
    draw from too: a Dask worker's event loop does (`dask.sizeof` samples with
    `random.sample`), so a model built in a Dask task got other initial weights
    whenever the event loop ran between `set_random_seed` and the build. Keras has
    no public way to give a thread its own default seeds.
    """
    # Why internal: `keras.src.random.seed_generator.make_default_seed` reads the
    # module-level name `python_random` (the `random` module) at every call.
    from keras.src.random import seed_generator

    if seed_generator.python_random is not _THREAD_DEFAULT_SEEDS:
        seed_generator.python_random = _THREAD_DEFAULT_SEEDS
    local = _THREAD_DEFAULT_SEEDS._local
    outer = getattr(local, "generator", None)
    local.generator = random.Random(seed)
    try:
        yield
    finally:
        local.generator = outer
