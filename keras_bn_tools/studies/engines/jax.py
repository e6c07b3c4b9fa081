"""The compiled engine on JAX: `jax.jit` + `lax.scan` + `jax.vmap` over seeds.

One Keras model and optimizer are built per config and used only through
their stateless APIs, `model.stateless_call` and `optimizer.stateless_apply`,
so the whole run is a pure function of (initial variables, data order): a
`lax.scan` over epochs around a `lax.scan` over the full batches (plus one
step for a smaller last batch), compiled once and mapped with `jax.vmap` over
a chunk of seeds. Each seed starts from its own fresh model (`fresh_model`,
the weights `fit` starts from) and is fed the study's `training_orders`. A
step is Keras's JAX training step: the loss plus the model's regularization
losses, `jax.value_and_grad`, `optimizer.stateless_apply`; BN's moving
statistics come back from `stateless_call` as updated non-trainable variables.
The run returns its predictions (training mode per epoch, inference mode on the
test set per epoch), which `score_run` scores in NumPy, as for every engine.
XLA compiles in a thread, with `CPU_COMPILER_OPTIONS` on a CPU, while the
seeds' fresh models are built.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from keras_bn_tools.studies.compile_cache import (
    active_compile_cache,
    load_program,
    program_key,
    save_program,
)
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

__all__ = ["NAME", "SEEDS_PER_CALL", "run", "run_seeds"]

NAME = "compiled"
#: XLA options for the study's programs on a CPU. A study's programs are small and
#: run for a fraction of a second, so compiling them is most of the cost. XLA's
#: classic CPU fusion path (not the newer fusion emitters) and LLVM at -O1 halve the
#: circles study's compile time (2.3 s -> 1.1 s for three configs) for a run time
#: that grows by less than that saves, also for 100 seeds and for the digits CNN
#: (`benchmarks/study_speed.py`). A jaxlib that rejects an option compiles without
#: them (`_compile`); `tests/studies` says when that happens.
CPU_COMPILER_OPTIONS: dict[str, Any] = {
    "xla_cpu_use_fusion_emitters": False,
    "xla_backend_optimization_level": 1,
}
#: Seeds trained together by one vmapped call (the last chunk is padded to this size
#: when the study has more seeds, so that it reuses the compiled function).
SEEDS_PER_CALL = 100
#: Bytes of predictions (every epoch's, training and test set) one vmapped call may
#: return; a study with big outputs trains fewer seeds per call.
PREDICTION_BYTES_PER_CALL = 512 * 2**20


class _Runner:
    """One config's run as a pure JAX function, compiled once per chunk size."""

    def __init__(self, protocol: Protocol, config: str, data: StudyData, settings: RunSettings):
        import jax

        self.protocol, self.config, self.data, self.settings = protocol, config, data, settings
        self.model = protocol.build(config)
        self.optimizer = settings.make_optimizer(protocol)
        self.optimizer.build(self.model.trainable_variables)
        # Where each BN statistic lives: ("t", i) trainable or ("n", i) non-trainable.
        where = {id(v): ("t", i) for i, v in enumerate(self.model.trainable_variables)}
        where.update({id(v): ("n", i) for i, v in enumerate(self.model.non_trainable_variables)})
        self._stat_places = [where[id(v)] for _, _, v in stat_variables(self.model)]
        self._compiled: dict[int, Any] = {}
        self._data = tuple(np.asarray(a) for a in (data.train_x, data.train_y,
                                                     data.test_x, data.test_y))  # fmt: skip
        self._function = jax.jit(jax.vmap(self._make_run(), in_axes=(0, 0, 0, 0, None)))

    def _steps(self):
        """Keras's JAX training step (loss plus regularization losses,
        `jax.value_and_grad`, `optimizer.stateless_apply`) and inference pass, both
        returning float32 predictions."""
        import jax
        import jax.numpy as jnp

        model, optimizer, loss = self.model, self.optimizer, loss_fn(self.protocol)

        def total_loss(y, y_pred, extra):
            return loss(y, y_pred) + (sum(extra) if extra else 0.0)

        def forward(trainable, non_trainable, xb, yb):
            y_pred, non_trainable, extra = model.stateless_call(
                trainable, non_trainable, xb, training=True, return_losses=True
            )
            return total_loss(yb, y_pred, extra), (non_trainable, y_pred)

        grad_fn = jax.value_and_grad(forward, has_aux=True)

        def step(state, batch):
            trainable, non_trainable, opt_vars = state
            x, y = batch
            (batch_loss, (non_trainable, y_pred)), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            prediction = y_pred.astype(jnp.float32)
            return (trainable, non_trainable, opt_vars), (batch_loss * x.shape[0], prediction)

        def evaluate(trainable, non_trainable, x, y):
            y_pred, _, extra = model.stateless_call(
                trainable, non_trainable, x, training=False, return_losses=True
            )
            return total_loss(y, y_pred, extra), y_pred.astype(jnp.float32)

        return step, evaluate

    def _make_run(self):
        import jax
        import jax.numpy as jnp

        step, evaluate = self._steps()
        places, rows, shape = self._stat_places, self.data.rows, self.data.output_shape
        batch_size = min(self.settings.batch_size, rows)
        full_batches, remainder = divmod(rows, batch_size)

        def run(trainable, non_trainable, opt_vars, orders, data):
            def epoch(state, order):
                # The epoch's rows in order, gathered once: batch b is rows [b*size, (b+1)*size).
                x, y, full = data[0][order], data[1][order], full_batches * batch_size
                batches = tuple(a[:full].reshape(full_batches, batch_size, *a.shape[1:])
                                for a in (x, y))  # fmt: skip
                state, (losses, fed) = jax.lax.scan(step, state, batches)
                loss_sum, fed = jnp.sum(losses), fed.reshape(full, *shape)
                if remainder:  # the smaller last batch, with its own static shape
                    state, (last_loss, last) = step(state, (x[full:], y[full:]))
                    loss_sum, fed = loss_sum + last_loss, jnp.concatenate([fed, last])
                val = evaluate(state[0], state[1], data[2], data[3])
                snapshot = [state[0 if kind == "t" else 1][i] for kind, i in places]
                return state, ((loss_sum / rows, fed, *val), snapshot)

            state, (curves, snapshots) = jax.lax.scan(
                epoch, (trainable, non_trainable, opt_vars), orders
            )
            final = evaluate(state[0], state[1], data[0], data[1])
            return curves, final, snapshots, state[0], state[1]

        return run

    def _initial(self, seeds: list[int]):
        """Stacked initial variables of `seeds` (leading axis: seed) and their fresh models."""
        fresh = [fresh_model_like(self.protocol, self.config, s, self.model) for s in seeds]

        # NumPy, not jax.numpy: eager JAX ops would each compile a small XLA program.
        def stack(get):
            columns = zip(*(get(m) for m in fresh), strict=True)
            return [np.stack([np.asarray(v) for v in column]) for column in columns]

        trainable = stack(lambda m: [v.value for v in m.trainable_variables])
        non_trainable = stack(lambda m: [v.value for v in m.non_trainable_variables])
        opt_vars = [
            np.broadcast_to(np.asarray(v.value), (len(seeds), *v.shape))
            for v in self.optimizer.variables
        ]
        orders = np.stack([self.settings.orders(s, self.data.rows) for s in seeds])
        return (trainable, non_trainable, opt_vars, orders), fresh

    def _specs(self, size: int) -> tuple:
        """The shapes and dtypes of `_initial(seeds)`'s arrays and of the data, for
        `size` seeds: enough to lower and compile before any fresh model is built."""
        import jax

        def spec(value, lead=()):
            value = np.asarray(value)
            return jax.ShapeDtypeStruct((*lead, *value.shape), value.dtype)

        stacked = [
            [spec(v.value, (size,)) for v in variables]
            for variables in (self.model.trainable_variables,
                              self.model.non_trainable_variables, self.optimizer.variables)
        ]  # fmt: skip
        orders = jax.ShapeDtypeStruct((size, self.settings.epochs, self.data.rows), np.int32)
        return (*stacked, orders, tuple(spec(a) for a in self._data))

    def _lower(self, size: int) -> Any:
        """The program for `size` seeds, lowered: the one saved in the compilation cache
        for this config, when there is one (no tracing), else traced, and saved there
        for the next process when the cache is on and `program_key` allows it."""
        import jax

        specs = self._specs(size)
        key = None
        if active_compile_cache() is not None:
            key = program_key(self.model, self.optimizer, self.protocol.loss, size=size,
                              epochs=self.settings.epochs, batch_size=self.settings.batch_size,
                              arguments=repr(specs))  # fmt: skip
        if key is None:
            return self._function.lower(*specs)
        blob = load_program(key)
        if blob is None:
            exported = jax.export.export(self._function)(*specs)
            save_program(key, exported.serialize())
        else:
            exported = jax.export.deserialize(bytearray(blob))
        # The exported program gives the traced one's numbers, every one (tested).
        return jax.jit(exported.call).lower(*specs)

    def _compile_async(self, size: int):
        """Lower now, compile in a thread (XLA releases the GIL) while the caller builds
        the seeds' fresh models; the returned `wait()` gives the executable."""
        lowered = self._lower(size)
        pool = ThreadPoolExecutor(max_workers=1)
        compiling = pool.submit(_compile, lowered)
        pool.shutdown(wait=False)  # the compile runs on; its thread ends with it
        return compiling.result

    def run_chunk(self, seeds: list[int], pad_to: int) -> list[RunResult]:
        timer = Timer()
        padded = seeds + [seeds[-1]] * (pad_to - len(seeds))
        # compile_seconds: the part of the wall time spent on compiling, i.e. lowering
        # plus waiting for XLA after the fresh models are built (they overlap).
        compile_seconds, wait = 0.0, None
        if pad_to not in self._compiled:
            compile_timer = Timer()
            wait = self._compile_async(pad_to)
            compile_seconds = compile_timer.seconds
        args, fresh = self._initial(padded)
        if wait is not None:
            wait_timer = Timer()
            self._compiled[pad_to] = wait()
            compile_seconds += wait_timer.seconds
        curves, final, snapshots, trainable, non_trainable = self._compiled[pad_to](
            *args, self._data
        )
        curves = [np.asarray(c) for c in curves]
        final = [np.asarray(f) for f in final]
        snapshots = [np.asarray(s) for s in snapshots]
        trainable = [np.asarray(v) for v in trainable]
        non_trainable = [np.asarray(v) for v in non_trainable]
        share = timer.seconds / len(seeds)
        results = []
        for k, seed in enumerate(seeds):
            raw = dict(zip(("loss", "train_predictions", "val_loss", "test_predictions"),
                           (c[k] for c in curves), strict=True))  # fmt: skip
            raw["train_loss"], raw["final_train_predictions"] = (f[k] for f in final)
            history, final_k = score_run(self.data, args[3][k], raw)
            keys = [(key, stat) for key, stat, _ in stat_variables(fresh[k])]
            results.append(
                RunResult(
                    config=self.config,
                    seed=int(seed),
                    history=history,
                    final=final_k,
                    target=self.protocol.target,
                    moving_stats=nest_stats(keys, [s[k] for s in snapshots]),
                    seconds=share,
                    compile_seconds=compile_seconds / len(seeds),
                    engine=NAME,
                    weights=self._weights(fresh[k], trainable, non_trainable, k),
                    metric=self.data.metric.key,
                    mode=self.protocol.direction,
                    settings=self.settings.record(),
                )
            )
        return results

    def _weights(self, model, trainable, non_trainable, k) -> list[np.ndarray]:
        """`model.get_weights()` order (the model's `weights`) from the run's final state."""
        by_id = {id(v): trainable[i][k] for i, v in enumerate(model.trainable_variables)}
        by_id.update(
            {id(v): non_trainable[i][k] for i, v in enumerate(model.non_trainable_variables)}
        )
        return [by_id[id(w)] for w in model.weights]


def _compile(lowered: Any) -> Any:
    """`lowered.compile()` with `CPU_COMPILER_OPTIONS` on a CPU; without them when this
    jaxlib refuses them (XLA's debug options come and go between releases, and an
    option's name or type may change): a refusal costs one failed compile, never a
    study."""
    import jax

    if CPU_COMPILER_OPTIONS and jax.default_backend() == "cpu":
        try:
            return lowered.compile(compiler_options=dict(CPU_COMPILER_OPTIONS))
        except Exception:  # any refusal: compile as JAX does by default
            pass
    return lowered.compile()


def run_seeds(
    protocol: Protocol,
    config: str,
    seeds: Iterable[int],
    *,
    data: StudyData,
    settings: RunSettings,
    seeds_per_call: int = SEEDS_PER_CALL,
) -> Iterator[RunResult]:
    """Every seed's run, `seeds_per_call` seeds per compiled, vmapped call (fewer when
    their predictions would pass `PREDICTION_BYTES_PER_CALL`)."""
    per_seed = 4 * settings.epochs * (data.rows + len(data.test_x))
    per_seed *= int(np.prod(data.output_shape, dtype="int64"))
    seeds_per_call = max(1, min(seeds_per_call, PREDICTION_BYTES_PER_CALL // per_seed))
    runner = _Runner(protocol, config, data, settings)
    iterator = iter(seeds)
    chunk = list(itertools.islice(iterator, seeds_per_call))
    size = len(chunk)  # the compiled size: the first chunk's
    while chunk:
        yield from runner.run_chunk(chunk, pad_to=size)
        chunk = list(itertools.islice(iterator, seeds_per_call))


def run(protocol: Protocol, config: str, seed: int, *, data: StudyData,
        settings: RunSettings) -> RunResult:  # fmt: skip
    """One run (compiled for one seed)."""
    return next(run_seeds(protocol, config, [seed], data=data, settings=settings))
