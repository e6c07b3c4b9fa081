"""RenormScheduler and PaperRenormSchedule: the paper's shape, clipping set during fit
without retracing, and bad input refused before training."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools.callbacks.renorm import PaperRenormSchedule, RenormScheduler
from keras_bn_tools.layers import MomentumBatchNormalization


def _data(rows=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(rows, 4)).astype("float32")
    return x, (x[:, :1] * 0.5 + 1).astype("float32")


def _model(bn=None, **bn_kwargs):
    bn = bn or MomentumBatchNormalization(renorm=True, name="bn", **bn_kwargs)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(6, name="dense"), bn, keras.layers.ReLU(),
         keras.layers.Dense(1, name="out")]
    )  # fmt: skip
    model.compile(keras.optimizers.SGD(0.01), "mse")
    return model


# ---------------------------------------------------------------------- the paper's schedule
def test_paper_schedule_shape():
    schedule = PaperRenormSchedule(total_steps=1600)  # ramp: the first 800 steps
    assert schedule(0) == {"rmax": 1.0, "dmax": 0.0}
    assert schedule(100) == {"rmax": 1.0, "dmax": 0.0}  # plain BN for 5k of 40k steps
    assert schedule(500)["dmax"] == pytest.approx(5.0)  # dmax full at 25k of 40k
    assert schedule(500)["rmax"] == pytest.approx(1 + 2 * (400 / 700))
    assert schedule(800) == {"rmax": 3.0, "dmax": 5.0}  # rmax full at 40k
    assert schedule(1599) == {"rmax": 3.0, "dmax": 5.0}
    assert PaperRenormSchedule(1000, ramp_fraction=1.0)(999)["rmax"] < 3.0


@given(total=st.integers(1, 10_000), steps=st.lists(st.integers(0, 20_000), min_size=2))
def test_paper_schedule_relaxes_monotonically_within_its_limits(total, steps):
    schedule = PaperRenormSchedule(total_steps=total)
    values = [schedule(step) for step in sorted(steps)]
    for earlier, later in itertools.pairwise(values):
        assert 1.0 <= earlier["rmax"] <= later["rmax"] <= 3.0
        assert 0.0 <= earlier["dmax"] <= later["dmax"] <= 5.0


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rmax": 0.5}, ValueError, "rmax"),
        ({"dmax": -1.0}, ValueError, "dmax"),
        ({"dmax": float("inf")}, ValueError, "dmax"),
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"ramp_fraction": 0.0}, ValueError, "ramp_fraction"),
        ({"ramp_fraction": "half"}, TypeError, "ramp_fraction"),
    ],
)
def test_paper_schedule_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        PaperRenormSchedule(**kwargs)


# -------------------------------------------------------------------------------- bad input
def test_schedule_must_be_callable():
    with pytest.raises(TypeError, match="schedule"):
        RenormScheduler({"rmax": 2.0, "dmax": 1.0})


def test_model_without_renorm_layers_refused_before_training():
    x, y = _data()
    for bn in (keras.layers.BatchNormalization(), MomentumBatchNormalization(renorm=False)):
        model = _model(bn)
        weights = model.get_weights()
        with pytest.raises(ValueError, match="renorm=True"):
            model.fit(x, y, epochs=1, verbose=0, callbacks=[RenormScheduler(lambda s: None)])
        for old, new in zip(weights, model.get_weights(), strict=True):
            np.testing.assert_array_equal(old, new)


@pytest.mark.parametrize(
    ("value", "error", "match"),
    [
        ({"rmax": 0.5, "dmax": 1.0}, ValueError, r"schedule\(0\)\['rmax'\]"),
        ({"rmax": 2.0, "dmax": -0.1}, ValueError, r"schedule\(0\)\['dmax'\]"),
        ({"rmax": 2.0, "dmax": float("nan")}, ValueError, r"schedule\(0\)\['dmax'\]"),
        ({"rmax": 2.0, "dmax": float("inf")}, ValueError, r"schedule\(0\)\['dmax'\]"),
        ({"rmax": "2", "dmax": 1.0}, TypeError, r"schedule\(0\)\['rmax'\]"),
        ({"rmin": 0.5}, ValueError, r"schedule\(0\).*keys"),
        ([2.0, 1.0], TypeError, r"schedule\(0\)"),
    ],
)
def test_bad_schedule_values_refused_before_the_first_step(value, error, match):
    x, y = _data()
    model = _model()
    weights = model.get_weights()
    with pytest.raises(error, match=match):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[RenormScheduler(lambda step: value)])
    for old, new in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)


# ------------------------------------------------------------------ clipping set during fit
def test_schedule_sets_the_clipping_in_force_each_step():
    x, y = _data()
    model = _model()
    seen = []

    class Watch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(dict(model.get_layer("bn").renorm_clipping))

    scheduler = RenormScheduler(lambda step: {"rmax": 1.0 + step, "dmax": 0.5 * step})
    model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[scheduler, Watch()])
    assert seen == [{"rmax": 1.0 + s, "dmax": 0.5 * s} for s in range(6)]
    assert model.get_layer("bn").renorm_clipping == {"rmax": 6.0, "dmax": 2.5}
    assert sorted(scheduler.history) == list(range(6))


def test_a_schedule_setting_one_limit_keeps_the_other():
    x, y = _data()
    model = _model(renorm_clipping={"rmax": 2.5})
    scheduler = RenormScheduler(lambda step: {"dmax": 0.25 * step})
    model.fit(x, y, epochs=1, batch_size=16, verbose=0, callbacks=[scheduler])
    assert model.get_layer("bn").renorm_clipping["rmax"] == 2.5
    assert model.get_layer("bn").renorm_clipping["dmax"] == 0.5
    assert scheduler.history[2] == {"rmax": 2.5, "dmax": 0.5}


def test_scheduled_limits_train_as_layers_built_with_them():
    # A schedule switching (1, 0) -> (3, 5) after 3 steps trains exactly as a model
    # built with (1, 0) for 3 steps, then given (3, 5): the compiled step reads the limits.
    x, y = _data()
    keras.utils.set_random_seed(5)
    scheduled = _model()
    keras.utils.set_random_seed(5)
    reference = _model(renorm_clipping={"rmax": 1.0, "dmax": 0.0})
    plain_then_relaxed = RenormScheduler(
        lambda step: {"rmax": 1.0, "dmax": 0.0} if step < 3 else {"rmax": 3.0, "dmax": 5.0}
    )
    scheduled.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0,
                  callbacks=[plain_then_relaxed])  # fmt: skip
    reference.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    reference.get_layer("bn").set_renorm_clipping(rmax=3.0, dmax=5.0)
    reference.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(scheduled.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # ... and the limits matter here: plain BN throughout trains differently.
    keras.utils.set_random_seed(5)
    plain = _model(renorm_clipping={"rmax": 1.0, "dmax": 0.0})
    plain.fit(x, y, epochs=2, batch_size=16, shuffle=False, verbose=0)
    assert not np.allclose(plain.get_weights()[0], scheduled.get_weights()[0], atol=1e-6)


_TRACE_SCRIPT = textwrap.dedent(
    """
    import json, keras, numpy as np
    from keras_bn_tools.callbacks.renorm import PaperRenormSchedule, RenormScheduler
    from keras_bn_tools.layers import MomentumBatchNormalization

    class CountingBN(MomentumBatchNormalization):
        traces = 0

        def call(self, inputs, training=None, mask=None):
            CountingBN.traces += 1  # Python runs only while the step is traced
            return super().call(inputs, training=training, mask=mask)

    def trained(callbacks):
        keras.utils.set_random_seed(0)
        x = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        y = x[:, :1]
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                                  CountingBN(renorm=True, name="bn"), keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), "mse", jit_compile=True)
        CountingBN.traces = 0
        model.fit(x, y, epochs=3, batch_size=8, verbose=0, callbacks=callbacks)
        return CountingBN.traces, model.get_layer("bn").renorm_clipping

    def switched(by_schedule, switch=True):
        # (1, 0) for 3 steps, then (3, 5), in the middle of an epoch of 6 steps: by the
        # scheduler during one fit, or by hand between two fits over the same batches.
        keras.utils.set_random_seed(5)
        x = np.random.default_rng(1).normal(2, 3, size=(96, 4)).astype("float32")
        y = x[:, :1]
        clipping = None if by_schedule else {"rmax": 1.0, "dmax": 0.0}
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                                  MomentumBatchNormalization(renorm=True, name="bn",
                                                             renorm_clipping=clipping),
                                  keras.layers.Dense(1)])
        model.compile(keras.optimizers.SGD(0.01), "mse")
        if by_schedule:
            schedule = RenormScheduler(lambda step: {"rmax": 1.0, "dmax": 0.0} if step < 3
                                       else {"rmax": 3.0, "dmax": 5.0})
            model.fit(x, y, epochs=1, batch_size=16, shuffle=False, verbose=0,
                      callbacks=[schedule])
        else:
            model.fit(x[:48], y[:48], epochs=1, batch_size=16, shuffle=False, verbose=0)
            if switch:
                model.get_layer("bn").set_renorm_clipping(rmax=3.0, dmax=5.0)
            model.fit(x[48:], y[48:], epochs=1, batch_size=16, shuffle=False, verbose=0)
        return model.get_weights()

    plain_traces, _ = trained([])
    scheduler = RenormScheduler(PaperRenormSchedule())
    traces, final = trained([scheduler])
    scheduled = switched(True)
    difference, unswitched = (max(float(np.abs(a - b).max()) for a, b in zip(scheduled, other))
                              for other in (switched(False), switched(False, switch=False)))
    print(json.dumps({"plain": plain_traces, "scheduled": traces, "final": final,
                      "changes": len(scheduler.history), "difference": difference,
                      "unswitched": unswitched}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_schedule_changes_clipping_during_fit_without_retracing(backend):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": path}
    done = subprocess.run(
        [sys.executable, "-c", _TRACE_SCRIPT], env=env, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # 24 steps of changing limits: as many traces as a fit without a scheduler.
    assert result["changes"] > 10
    assert result["scheduled"] == result["plain"] >= 1
    assert result["final"] == {"rmax": 3.0, "dmax": 5.0}
    # The limits set mid-fit are the ones the compiled step used.
    assert result["difference"] < 1e-5 < 1e-3 < result["unswitched"]
