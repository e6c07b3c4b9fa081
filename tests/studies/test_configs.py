"""`studies.Config`: a config's own batch size, epochs and optimizer, honoured by every
engine and recorded in the results."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from study_protocols import BLOBS

from keras_bn_tools.studies import Config, Protocol, run_study
from keras_bn_tools.studies.engines import COMPILED_BACKENDS

pytestmark = pytest.mark.backend_agnostic


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _sgd():
    import keras

    return keras.optimizers.SGD(learning_rate=0.05)


#: BLOBS with a config that trains in batches of 7 for 2 epochs with plain SGD.
SMALL = dataclasses.replace(
    BLOBS,
    configs={
        "bn": "BN before the ReLU",
        "bn-small": Config(
            "bn with batches of 7, 2 epochs, SGD", batch_size=7, epochs=2, optimizer=_sgd
        ),
    },
    default_configs=("bn", "bn-small"),
    build=lambda config: BLOBS.build("bn"),
)


def test_configs_accept_descriptions_and_configs():
    assert SMALL.config("bn") == Config("BN before the ReLU")
    assert SMALL.config("bn-small").overrides() == {"batch_size": 7, "epochs": 2,
                                                    "optimizer": _sgd}  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"batch_size": 0}, ValueError, r"`batch_size` must be a positive integer or None"),
        ({"batch_size": 2.0}, TypeError, "batch_size"),
        ({"epochs": True}, TypeError, "epochs"),
        ({"epochs": -3}, ValueError, "epochs"),
        ({"optimizer": "adam"}, TypeError, r"`optimizer` must be a zero-argument callable"),
    ],
)
def test_bad_settings_are_refused_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        Config("x", **kwargs)
    with pytest.raises(TypeError, match="description"):
        Config(3)


def test_a_config_that_is_neither_is_refused_naming_the_protocol():
    with pytest.raises(TypeError, match=r"Protocol 'blobs': `configs\['bn'\]`.*Config"):
        dataclasses.replace(BLOBS, configs={"plain": "x", "bn": 3}, default_configs=("plain",))


def _engines() -> list[str]:
    return ["fit", "compiled"] if _backend() in COMPILED_BACKENDS else ["fit"]


@pytest.mark.parametrize("engine", _engines())
def test_every_engine_honours_and_records_a_configs_settings(engine):
    result = run_study(SMALL, ["bn", "bn-small"], seeds=[0], engine=engine)
    default, small = result.runs
    assert default.settings == {"epochs": 3, "batch_size": 32, "shuffle": "epoch",
                                "optimizer": "protocol"}  # fmt: skip
    assert small.settings == {"epochs": 2, "batch_size": 7, "shuffle": "epoch",
                              "optimizer": "_sgd"}  # fmt: skip
    assert small.epochs == 2 and default.epochs == 3
    overrides = result.metadata["config_overrides"]
    assert overrides == {"bn": {}, "bn-small": {"epochs": 2, "batch_size": 7, "optimizer": "_sgd"}}
    assert "Config bn-small: epochs 2, batch size 7, optimizer _sgd." in result.table()
    # The same model and seed trained with other settings ends elsewhere.
    assert not np.allclose(default.weights[0], small.weights[0])


@pytest.mark.skipif(_backend() not in COMPILED_BACKENDS, reason="no compiled engine here")
def test_the_compiled_engine_trains_a_config_as_fit_does():
    """Batches of 7 (140 rows: 20 full batches) with SGD for 2 epochs: the compiled
    engine's run equals fit's, so it fed the config's batches to the config's optimizer."""
    fit = run_study(SMALL, ["bn-small"], seeds=[3], engine="fit").runs[0]
    compiled = run_study(SMALL, ["bn-small"], seeds=[3], engine="compiled").runs[0]
    np.testing.assert_allclose(fit.history["loss"], compiled.history["loss"], rtol=1e-4)
    for a, b in zip(fit.weights, compiled.weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(fit.history["val_accuracy"], compiled.history["val_accuracy"])


def test_the_calls_settings_apply_to_every_config():
    result = run_study(SMALL, ["bn-small"], seeds=[0], epochs=1, batch_size=70, engine="fit")
    assert result.runs[0].settings["epochs"] == 1
    assert result.runs[0].settings["batch_size"] == 70
    assert result.runs[0].settings["optimizer"] == "_sgd"


def test_a_compiled_model_from_build_is_refused_naming_loss_and_optimizer():
    def build(config):
        model = BLOBS.build(config)
        model.compile("sgd", "mse")
        return model

    compiled = dataclasses.replace(BLOBS, build=build)
    for engine in _engines():
        with pytest.raises(ValueError, match=r"compiled model.*Protocol.loss.*Protocol.optimizer"):
            run_study(compiled, ["bn"], seeds=[0], epochs=1, engine=engine)


def test_protocol_is_the_public_one():
    assert isinstance(SMALL, Protocol)
