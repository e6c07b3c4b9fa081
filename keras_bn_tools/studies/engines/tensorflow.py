"""The compiled engine on TensorFlow: each run is one `tf.function` (XLA when it helps).

The graph closes over one Keras model and one Keras optimizer built once per
config. For each seed the engine builds the seed's fresh model (the weights
`fit` starts from) and calls the graph with its variables and the seed's
`training_orders`; the graph copies them in and resets the optimizer's
variables itself: no retracing, no eager op per variable, no Python per step
or per epoch. A step is Keras's own training step: a training-mode
forward pass (BN updates its moving statistics itself), the loss plus the
model's regularization losses, the gradients and `optimizer.apply`. Per epoch
it sums the batch losses times the batch sizes (`fit`'s running average), keeps
the training-mode predictions, predicts the test set in inference mode and
snapshots every BN statistic; `score_run` scores the predictions in NumPy, as
for every engine. The first call, which XLA compiles, runs in a
thread while the next seeds' fresh models are built (`run_seeds`).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import warnings
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from keras_bn_tools.studies.engines.common import (
    RunSettings,
    StudyData,
    Timer,
    fresh_model_like,
    loss_fn,
    nest_stats,
    score_run,
    stat_variables,
)
from keras_bn_tools.studies.protocol import Protocol
from keras_bn_tools.studies.results import RunResult

__all__ = ["NAME", "run", "run_seeds"]

NAME = "compiled"


@contextlib.contextmanager
def _quiet_tracing(tf: Any) -> Iterator[None]:
    """Hide TensorFlow's "triggered tf.function retracing" warning: the engine traces
    one graph per config on purpose, and more configs are not a mistake."""
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _Runner:
    """One config's run as a traced graph, reused for every seed."""

    def __init__(self, protocol: Protocol, config: str, data: StudyData, settings: RunSettings,
                 jit_compile: bool):  # fmt: skip
        import tensorflow as tf

        self.protocol, self.config, self.data = protocol, config, data
        self.model = protocol.build(config)
        self.optimizer = settings.make_optimizer(protocol)
        self.optimizer.build(self.model.trainable_variables)
        self._optimizer_init = [np.array(v.numpy()) for v in self.optimizer.variables]
        self._stats = stat_variables(self.model)
        self.jit_compile = jit_compile
        self._tensors = [
            tf.constant(a) for a in (data.train_x, data.train_y, data.test_x, data.test_y)
        ]
        self._python_run = self._make_run(settings)
        self._function = tf.function(self._python_run, jit_compile=jit_compile, autograph=False)

    def _steps(self):
        """The graph's training step and inference pass, Keras's own: a training-mode
        forward pass (BN updates its moving statistics), the loss plus the model's
        regularization losses, the gradients, `optimizer.apply`."""
        import tensorflow as tf

        model, optimizer, loss = self.model, self.optimizer, loss_fn(self.protocol)
        trainable = model.trainable_variables

        def total_loss(y, y_pred):
            extra = model.losses
            return loss(y, y_pred) + (tf.add_n(extra) if extra else 0.0)

        def step(x, y, order, begin, size):
            rows_b = tf.slice(order, [begin], [size])  # static shape (size,) for XLA
            xb, yb = tf.gather(x, rows_b), tf.gather(y, rows_b)
            with tf.GradientTape() as tape:
                y_pred = model(xb, training=True)
                batch_loss = total_loss(yb, y_pred)
            optimizer.apply(tape.gradient(batch_loss, trainable), trainable)
            return batch_loss * float(size), tf.cast(y_pred, tf.float32)

        def evaluate(x, y):
            y_pred = model(x, training=False)
            return total_loss(y, y_pred), tf.cast(y_pred, tf.float32)

        return step, evaluate

    def _make_epoch(self, settings: RunSettings):
        """`epoch(x, y, order) -> (loss sum, training-mode predictions in fed order)`."""
        import tensorflow as tf

        step, _ = self._steps()
        rows, shape = self.data.rows, self.data.output_shape
        batch_size = min(settings.batch_size, rows)
        full_batches, remainder = divmod(rows, batch_size)

        def epoch(x, y, order):
            def batch_body(b, loss_sum, predictions):
                batch_loss, y_pred = step(x, y, order, b * batch_size, batch_size)
                return b + 1, loss_sum + batch_loss, predictions.write(b, y_pred)

            predictions = tf.TensorArray(tf.float32, size=full_batches,
                                         element_shape=(batch_size, *shape))  # fmt: skip
            _, loss_sum, predictions = tf.while_loop(
                lambda b, *_: b < full_batches, batch_body, (0, 0.0, predictions)
            )
            fed = tf.reshape(predictions.stack(), (full_batches * batch_size, *shape))
            if remainder:  # the smaller last batch, with its own static shape
                last_loss, last = step(x, y, order, full_batches * batch_size, remainder)
                loss_sum, fed = loss_sum + last_loss, tf.concat([fed, last], 0)
            return loss_sum, fed

        return epoch

    def _make_run(self, settings: RunSettings):
        import tensorflow as tf

        model, optimizer, stats = self.model, self.optimizer, self._stats
        _, evaluate = self._steps()
        epoch_fn = self._make_epoch(settings)
        rows, shape, optimizer_init = self.data.rows, self.data.output_shape, self._optimizer_init

        def run(x, y, test_x, test_y, orders, initial):
            # The seed's initial weights (its fresh model's variables) and a fresh optimizer
            # state, loaded inside the graph: no eager assignment per variable and run.
            for target, source in zip(model.variables, initial, strict=True):
                target.assign(source)
            for variable, value in zip(optimizer.variables, optimizer_init, strict=True):
                variable.assign(value)

            def epoch_body(epoch, arrays, snapshots):
                loss_sum, fed = epoch_fn(x, y, orders[epoch])
                values = (loss_sum / rows, fed, *evaluate(test_x, test_y))
                arrays = tuple(a.write(epoch, v) for a, v in zip(arrays, values, strict=True))
                snapshots = tuple(
                    s.write(epoch, tf.convert_to_tensor(variable))
                    for s, (_, _, variable) in zip(snapshots, stats, strict=True)
                )
                return epoch + 1, arrays, snapshots

            shapes = ((), (rows, *shape), (), (len_of(test_x), *shape))
            arrays = tuple(tf.TensorArray(tf.float32, size=settings.epochs, element_shape=s)
                           for s in shapes)  # fmt: skip
            snapshots = tuple(
                tf.TensorArray(v.dtype, size=settings.epochs, element_shape=v.shape)
                for _, _, v in stats
            )
            _, arrays, snapshots = tf.while_loop(
                lambda epoch, *_: epoch < settings.epochs, epoch_body, (0, arrays, snapshots)
            )
            return [a.stack() for a in arrays], evaluate(x, y), [s.stack() for s in snapshots]

        def len_of(x):
            return int(x.shape[0])

        return run

    def arguments(self, seed: int, fresh: Any, settings: RunSettings) -> tuple:
        """The graph's arguments for `seed`: the data, its orders, its initial weights."""
        import tensorflow as tf

        orders = tf.constant(settings.orders(seed, self.data.rows))
        initial = [v.value for v in fresh.variables]  # tf.Variables: passed, not copied
        return (*self._tensors, orders, initial)

    def without_xla(self, error: Exception, arguments: tuple) -> tuple:
        """Warn that XLA refused the graph (`error`), then run it as a plain graph."""
        import tensorflow as tf

        if not self.jit_compile:
            raise error
        warnings.warn(
            f"XLA could not compile the study's graph for config {self.config!r} "
            f"({type(error).__name__}: {str(error)[:300]}); running it as a plain "
            f"TensorFlow graph instead.",
            RuntimeWarning,
            stacklevel=5,  # run_study's caller (via run_seeds, study.execute and run_study)
        )
        self.jit_compile = False
        self._function = tf.function(self._python_run, autograph=False)
        with _quiet_tracing(tf):
            return self._function(*arguments)

    def trace(self, arguments: tuple) -> None:
        """Trace the graph now (Python: holds the GIL) so that its first call, in another
        thread, only compiles and runs (C++, without the GIL)."""
        import tensorflow as tf

        with _quiet_tracing(tf):
            self._function.get_concrete_function(*arguments)

    def result(self, seed: int, fresh: Any, outputs: tuple, seconds: float,
               settings: RunSettings) -> RunResult:  # fmt: skip
        curves, final, snapshots = outputs
        raw = dict(zip(("loss", "train_predictions", "val_loss", "test_predictions"),
                       (c.numpy() for c in curves), strict=True))  # fmt: skip
        raw["train_loss"], raw["final_train_predictions"] = (f.numpy() for f in final)
        history, final_values = score_run(self.data, settings.orders(seed, self.data.rows), raw)
        keys = [(key, stat) for key, stat, _ in stat_variables(fresh)]
        return RunResult(
            config=self.config,
            seed=int(seed),
            history=history,
            final=final_values,
            target=self.protocol.target,
            moving_stats=nest_stats(keys, [s.numpy() for s in snapshots]),
            seconds=seconds,
            engine=NAME,
            weights=self.model.get_weights(),
            metric=self.data.metric.key,
            mode=self.protocol.direction,
            settings=settings.record(),
        )


#: At most this many seeds' fresh models are built ahead while the graph compiles.
PREFETCH = 32


def run_seeds(
    protocol: Protocol,
    config: str,
    seeds: Iterable[int],
    *,
    data: StudyData,
    settings: RunSettings,
    jit_compile: bool = False,
) -> Iterator[RunResult]:
    """Every seed's run through one traced graph, pipelined.

    Graph calls run in a worker thread (TensorFlow executes them in C++, without
    the GIL) while this thread builds the next seeds' fresh models: up to
    `PREFETCH` of them while the first call compiles, then one ahead. A run's
    results, its final weights included, are read before the next call starts.
    Seeds are read lazily: at most `PREFETCH` + 1 ahead of the runs yielded.
    `RunResult.seconds` is the wall time from the previous run's result to this
    one's: its graph call, with the next seed's model built meanwhile (the
    first run's: tracing, compiling and the models built meanwhile), so that
    the runs' seconds add up to the engine's wall time.
    """
    import tensorflow as tf

    runner = _Runner(protocol, config, data, settings, jit_compile)
    iterator = iter(seeds)
    ahead: collections.deque = collections.deque()

    def next_run() -> tuple[int, Any] | None:
        """The next seed and its fresh model, or None after the last seed."""
        seed = next(iterator, None)
        if seed is None:
            return None
        return seed, fresh_model_like(protocol, config, seed, runner.model)

    def build_ahead(limit: int, pending: Any) -> None:
        while len(ahead) < limit and not pending.done() and (upcoming := next_run()):
            ahead.append(upcoming)

    timer = Timer()
    upcoming = next_run()
    if upcoming is not None:
        runner.trace(runner.arguments(*upcoming, settings))
    limit = PREFETCH  # while the first call compiles; one ahead after that
    with ThreadPoolExecutor(max_workers=1) as pool:
        while upcoming is not None:
            seed, fresh = upcoming
            arguments = runner.arguments(seed, fresh, settings)
            pending = pool.submit(runner._function, *arguments)
            build_ahead(limit, pending)
            limit = 1
            try:
                outputs = pending.result()
            except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as error:
                outputs = runner.without_xla(error, arguments)  # XLA refused the graph
            yield runner.result(seed, fresh, outputs, timer.seconds, settings)
            timer = Timer()
            upcoming = ahead.popleft() if ahead else next_run()


def run(protocol: Protocol, config: str, seed: int, *, data: StudyData, settings: RunSettings,
        jit_compile: bool = False) -> RunResult:  # fmt: skip
    """One run (a graph traced for it alone)."""
    return next(run_seeds(protocol, config, [seed], data=data, settings=settings,
                          jit_compile=jit_compile))  # fmt: skip
