"""`Protocol` and the study's data order (`training_orders`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from study_protocols import BLOBS

from keras_bn_tools.studies import Protocol, training_orders

pytestmark = pytest.mark.backend_agnostic


@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 60),
    epochs=st.integers(1, 6),
    shuffle=st.sampled_from(["epoch", "once", "none"]),
)
def test_orders_are_permutations_drawn_from_the_seed(seed, rows, epochs, shuffle):
    orders = training_orders(seed, rows, epochs, shuffle)
    assert orders.shape == (epochs, rows) and orders.dtype == np.int32
    for order in orders:
        assert sorted(order) == list(range(rows))
    np.testing.assert_array_equal(orders, training_orders(seed, rows, epochs, shuffle))
    if shuffle == "none":
        np.testing.assert_array_equal(orders, np.tile(np.arange(rows), (epochs, 1)))
    elif shuffle == "once":
        assert all((order == orders[0]).all() for order in orders)
    else:  # the documented draw: successive permutations of default_rng(seed)
        rng = np.random.default_rng(seed)
        for order in orders:
            np.testing.assert_array_equal(order, rng.permutation(rows))


def test_epoch_orders_differ_every_epoch_and_between_seeds():
    orders = training_orders(0, 500, 100)
    assert len({tuple(o) for o in orders}) == 100
    assert not np.array_equal(orders, training_orders(1, 500, 100))
    once = training_orders(0, 500, 3, "once")
    np.testing.assert_array_equal(once[0], orders[0])  # "once" is epoch 0's order, kept


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"seed": -1}, ValueError, "seed"),
        ({"seed": 2**32}, ValueError, "seed"),
        ({"seed": 1.5}, TypeError, "seed"),
        ({"rows": 0}, ValueError, "rows"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"shuffle": "always"}, ValueError, "shuffle"),
        ({"shuffle": True}, TypeError, "shuffle"),
    ],
)
def test_orders_reject_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        training_orders(**{"seed": 0, "rows": 5, "epochs": 2, **kwargs})


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"name": ""}, TypeError, "name"),
        ({"build": None}, TypeError, "build"),
        ({"load_data": 3}, TypeError, "load_data"),
        ({"configs": {}}, TypeError, "configs"),
        ({"default_configs": "plain"}, TypeError, "default_configs"),
        ({"default_configs": ("nope",)}, ValueError, "default_configs"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 2.5}, TypeError, "batch_size"),
        ({"target": 1.5}, ValueError, "target"),
        ({"accuracy": "top5"}, ValueError, "accuracy"),
        ({"jit_compile": "yes"}, ValueError, "jit_compile"),
    ],
)
def test_protocol_checks_its_fields(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(BLOBS, **change)


def test_protocol_is_frozen():
    assert isinstance(BLOBS, Protocol)
    with pytest.raises(dataclasses.FrozenInstanceError):
        BLOBS.epochs = 5
