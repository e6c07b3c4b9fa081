"""MirroredStrategy scenarios, run in a fresh process by the tests in this folder.

Usage: ``python mirrored_worker.py OUT.npz``

Two logical CPU devices can only be configured before TensorFlow initializes its
devices, which pytest's conftest (and every other test) has already done in the test
process; so the distributed runs happen here, and the tests only compare the arrays
this script writes. Every distributed run is paired with the single-device runs it
must reproduce, computed in this same process:

- ``layer/<case>/...``: one BN layer trained for a few steps through ``strategy.run``
  on two replicas, against one layer on the full global batch ("full") and two
  layers, one per replica slice ("slice0", "slice1").
- ``fit/<case>/...``: ``model.fit`` of a small MLP on a distributed dataset against
  ``model.fit`` on one device from the same initial weights; the ``tracked`` case
  adds a `MovingStatsTracker` to both fits, ``recal/...`` recalibrates the
  distributed model with `recalibrate_batchnorm`; ``tracked`` also schedules the
  momentum with `MomentumScheduler`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import traceback

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf

NUM_REPLICAS = 2
_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _CPU, [tf.config.LogicalDeviceConfiguration()] * NUM_REPLICAS
)
tf.get_logger().setLevel("ERROR")  # one tf.function per case: retracing warnings are expected

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bn_tools.layers import MomentumBatchNormalization  # noqa: E402

FEATURES = 3
GLOBAL_BATCH = 16
STEPS = 3

# Layer-level cases: keyword arguments of the BN layer.
LAYER_CASES = {
    "sync": {"synchronized": True, "momentum": 0.9},
    "sync-cumulative": {"synchronized": True, "momentum": None},
    "sync-debias": {"synchronized": True, "momentum": 0.9, "debias": True},
    "local": {"synchronized": False, "momentum": 0.9},
    "local-cumulative": {"synchronized": False, "momentum": None},
    "local-debias": {"synchronized": False, "momentum": 0.9, "debias": True},
}
# Keras's own layer, unsynchronized: recorded so the docs' claim about it is checked.
KERAS_CASES = {"keras-local": {"synchronized": False, "momentum": 0.9}}

FIT_CASES = {
    "sync": {"synchronized": True},
    "sync-cumulative": {"synchronized": True, "momentum": None, "debias": True},
    "local": {"synchronized": False},
    "local-renorm-ghost": {"synchronized": False, "renorm": True, "virtual_batch_size": 4},
}


def _global_batches(rng):
    """Global batches whose two replica slices come from clearly different distributions.

    With equal slices the mean of the slice means is the global mean, so only the
    variances (and the outputs) tell synchronized from per-replica statistics; the
    offset between the slices makes that difference large.
    """
    half = GLOBAL_BATCH // NUM_REPLICAS
    batches = []
    for _ in range(STEPS):
        first = rng.normal(0.5, 1.0, size=(half, FEATURES))
        second = rng.normal(3.0, 2.5, size=(half, FEATURES))
        batches.append(np.concatenate([first, second]).astype("float32"))
    return batches


def _components(variable):
    """The per-replica copies of a (possibly distributed) Keras variable, stacked."""
    value = variable.value
    parts = getattr(value, "values", None) or (value,)
    return np.stack([np.asarray(part.numpy()) for part in parts])


def _state_names(layer):
    return [v.path.rsplit("/", 1)[-1] for v in layer.non_trainable_variables]


def _make_layer(factory, kwargs):
    layer = factory(**kwargs)
    layer.build((None, FEATURES))
    # Non-default affine parameters, identical in every copy, so that the comparison
    # also covers gamma/beta being applied with the right statistics.
    layer.gamma.assign(np.linspace(0.5, 2.0, FEATURES).astype("float32"))
    layer.beta.assign(np.linspace(-1.0, 1.0, FEATURES).astype("float32"))
    return layer


def run_layer_case(strategy, factory, kwargs, batches, probe, out, prefix):
    with strategy.scope():
        dist = _make_layer(factory, kwargs)

    @tf.function
    def train_step(batch):
        return strategy.run(lambda x: dist(x, training=True), args=(batch,))

    @tf.function
    def infer(x):
        return strategy.run(lambda x: dist(x, training=False), args=(x,))

    dataset = tf.data.Dataset.from_tensor_slices(np.concatenate(batches)).batch(GLOBAL_BATCH)
    names = _state_names(dist)
    outputs, states, reads = [], {n: [] for n in names}, {n: [] for n in names}
    for batch in strategy.experimental_distribute_dataset(dataset):
        per_replica = strategy.experimental_local_results(train_step(batch))
        outputs.append(np.concatenate([np.asarray(r) for r in per_replica]))
        for name, variable in zip(names, dist.non_trainable_variables, strict=True):
            states[name].append(_components(variable))
            reads[name].append(np.asarray(keras.ops.convert_to_numpy(variable)))
    out[f"{prefix}/dist/outputs"] = np.stack(outputs)
    out[f"{prefix}/dist/infer"] = np.stack(
        [np.asarray(r) for r in strategy.experimental_local_results(infer(probe))]
    )
    for name in names:
        # (steps, replicas, features): every replica's copy after every step.
        out[f"{prefix}/dist/{name}"] = np.stack(states[name])
        # (steps, features): what get_weights()/saving sees.
        out[f"{prefix}/dist_read/{name}"] = np.stack(reads[name])

    half = GLOBAL_BATCH // NUM_REPLICAS
    references = {"full": slice(None), "slice0": slice(0, half), "slice1": slice(half, None)}
    slice_layers = []
    for ref_name, rows in references.items():
        layer = _make_layer(factory, kwargs)
        if ref_name != "full":
            slice_layers.append(layer)
        step_out, step_states = [], {n: [] for n in names}
        for batch in batches:
            step_out.append(keras.ops.convert_to_numpy(layer(batch[rows], training=True)))
            for name, variable in zip(names, layer.non_trainable_variables, strict=True):
                step_states[name].append(keras.ops.convert_to_numpy(variable))
        out[f"{prefix}/{ref_name}/outputs"] = np.stack(step_out)
        out[f"{prefix}/{ref_name}/infer"] = keras.ops.convert_to_numpy(layer(probe, training=False))
        for name in names:
            out[f"{prefix}/{ref_name}/{name}"] = np.stack(step_states[name])
    # The state an unsynchronized run should end with: the average of the slice
    # layers' non-trainable variables (counters included, which are equal anyway).
    averaged = _make_layer(factory, kwargs)
    for target, *sources in zip(
        averaged.non_trainable_variables,
        *(layer.non_trainable_variables for layer in slice_layers),
        strict=True,
    ):
        mean = np.mean([keras.ops.convert_to_numpy(v) for v in sources], axis=0)
        target.assign(mean.astype(target.dtype))
    out[f"{prefix}/averaged/infer"] = keras.ops.convert_to_numpy(averaged(probe, training=False))


def _mlp(bn_kwargs):
    return keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu", kernel_initializer="he_uniform"),
            MomentumBatchNormalization(**bn_kwargs),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )


def _fit_data(rng):
    x = rng.normal(size=(64, FEATURES)).astype("float32")
    x[32:] += 2.0  # a shift between batches, so the moving statistics keep moving
    y = (x.sum(axis=1) > 3.0).astype("float32")
    return x, y


def _fit(model, x, y, callbacks=()):
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="binary_crossentropy")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    model.fit(dataset, epochs=2, shuffle=False, verbose=0, callbacks=list(callbacks))


def run_fit_case(strategy, bn_kwargs, x, y, out, prefix, tracked=False):
    keras.utils.set_random_seed(7)
    single = _mlp(bn_kwargs)
    initial = single.get_weights()
    with strategy.scope():
        dist = _mlp(bn_kwargs)
        dist.set_weights(initial)
    trackers = {}
    for name, model in (("single", single), ("dist", dist)):
        callbacks = []
        if tracked:
            from keras_bn_tools.callbacks import MomentumScheduler, MovingStatsTracker

            trackers[name] = MovingStatsTracker(every=1)
            # 0.9 in the first epoch, then 0.5: set from a callback, between steps.
            scheduler = MomentumScheduler(lambda epoch: 0.9 if epoch == 0 else 0.5)
            callbacks += [scheduler, trackers[name]]
        with strategy.scope() if name == "dist" else contextlib.nullcontext():
            _fit(model, x, y, callbacks)
        for i, weight in enumerate(model.get_weights()):
            out[f"{prefix}/{name}/weight{i}"] = weight
        bn = model.layers[1]
        for short, variable in zip(_state_names(bn), bn.non_trainable_variables, strict=True):
            out[f"{prefix}/{name}/replicas/{short}"] = _components(variable)
    if tracked:
        for name, tracker in trackers.items():
            for layer_name, stats in tracker.history.items():
                for stat, values in stats.items():
                    # Layer names differ between the two models; index by position.
                    position = list(tracker.history).index(layer_name)
                    out[f"{prefix}/tracker/{name}/{position}/{stat}"] = np.asarray(values)
            out[f"{prefix}/tracker/{name}/steps"] = np.asarray(tracker.steps)
    return dist


def run_recalibration(strategy, model, x, out):
    from keras_bn_tools import recalibrate_batchnorm

    with strategy.scope():
        report = recalibrate_batchnorm(model, x, batch_size=GLOBAL_BATCH)
    features = keras.Sequential(model.layers[:1])  # the Dense(relu) feeding the BN layer
    hidden = keras.ops.convert_to_numpy(features(x, training=False)).astype("float64")
    bn = model.layers[1]
    out["recal/expected_mean"] = hidden.mean(axis=0)
    out["recal/expected_variance"] = hidden.var(axis=0)
    out["recal/moving_mean"] = _components(bn.moving_mean)
    out["recal/moving_variance"] = _components(bn.moving_variance)
    out["recal/report_len"] = np.asarray(len(report))


def _guarded(out, part, run):
    """Run one part; a failure is recorded for its test to report, not fatal to the rest."""
    try:
        run()
    except Exception:
        out[f"error/{part}"] = np.asarray(traceback.format_exc())


def main(path):
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategy = tf.distribute.MirroredStrategy(devices[:NUM_REPLICAS])
    assert strategy.num_replicas_in_sync == NUM_REPLICAS, devices
    rng = np.random.default_rng(20240607)
    batches = _global_batches(rng)
    probe = rng.normal(1.5, 2.0, size=(5, FEATURES)).astype("float32")
    out = {}
    for case, kwargs in LAYER_CASES.items():
        run_layer_case(strategy, MomentumBatchNormalization, kwargs, batches, probe, out, case)
    for case, kwargs in KERAS_CASES.items():
        run_layer_case(strategy, keras.layers.BatchNormalization, kwargs, batches, probe, out, case)
    x, y = _fit_data(rng)
    models = {
        case: run_fit_case(strategy, kwargs, x, y, out, f"fit/{case}")
        for case, kwargs in FIT_CASES.items()
    }
    tracked = {"synchronized": True}
    _guarded(out, "tracker", lambda: run_fit_case(strategy, tracked, x, y, out, "fit/tracked", 1))
    _guarded(out, "recalibration", lambda: run_recalibration(strategy, models["sync"], x, out))
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
