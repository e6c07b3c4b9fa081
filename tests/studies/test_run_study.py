"""`run_study`'s arguments: every bad one is refused up front, naming it."""

from __future__ import annotations

import pytest
from study_protocols import BLOBS

from keras_bn_tools.studies import PROTOCOLS, run_study

pytestmark = pytest.mark.backend_agnostic


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"protocol": "mnist"}, ValueError, "protocol"),
        ({"protocol": 3}, ValueError, "protocol"),
        ({"configs": ["nope"]}, ValueError, "configs.*'nope'"),
        ({"configs": []}, ValueError, "configs"),
        ({"configs": ["bn", "bn"]}, ValueError, "more than once"),
        ({"seeds": []}, ValueError, "seeds"),
        ({"seeds": [1, 1]}, ValueError, "more than once"),
        ({"seeds": [-1]}, ValueError, "seeds"),
        ({"seeds": [2**32]}, ValueError, "seeds"),
        ({"seeds": [0.5]}, TypeError, "seeds"),
        ({"seeds": "012"}, TypeError, "seeds"),
        ({"seeds": range(2**32 - 1, 2**32 + 1)}, ValueError, "seeds"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 2.0}, TypeError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"engine": "eager"}, ValueError, "engine"),
        ({"shuffle": "sometimes"}, ValueError, "shuffle"),
        ({"shuffle": True}, TypeError, "shuffle"),
        ({"jit_compile": "yes"}, ValueError, "jit_compile"),
        ({"callbacks_factory": 3, "engine": "fit"}, TypeError, "callbacks_factory"),
    ],
)
def test_bad_arguments_are_refused_naming_them(kwargs, error, match):
    with pytest.raises(error, match=match):
        run_study(**{"protocol": BLOBS, "epochs": 1, "seeds": [0], **kwargs})


def test_callbacks_need_the_fit_engine():
    import keras

    if keras.backend.backend() not in ("tensorflow", "jax"):
        pytest.skip("auto is fit on this backend")
    with pytest.raises(ValueError, match=r"callbacks_factory.*engine='fit'"):
        run_study(BLOBS, seeds=[0], epochs=1, callbacks_factory=lambda config, seed: [])


def test_a_huge_range_of_seeds_is_checked_without_being_built():
    """`range(10**12)` is validated from its ends: no list of a trillion seeds."""
    with pytest.raises(ValueError, match="seeds"):
        run_study(BLOBS, seeds=range(10**12), epochs=1)


def test_protocols_resolve_by_name():
    # The API lists these first; later rounds add more (sigmoid-mlp, small-batch).
    assert {"circles", "digits", "sequence", "diabetes"} <= set(PROTOCOLS)
    assert PROTOCOLS["circles"].name == "circles"
    with pytest.raises(KeyError):
        PROTOCOLS["mnist"]


def test_a_protocol_whose_data_or_model_is_wrong_is_named():
    import dataclasses

    no_model = dataclasses.replace(BLOBS, build=lambda config: "a model")
    with pytest.raises(TypeError, match="build"):
        run_study(no_model, seeds=[0], epochs=1, engine="fit")
    bad_data = dataclasses.replace(BLOBS, load_data=lambda: (1, 2, 3))
    with pytest.raises(TypeError, match="load_data"):
        run_study(bad_data, seeds=[0], epochs=1)


def test_seed_checks_keep_order_and_never_expand_a_range():
    from keras_bn_tools._validation import MAX_SEED, check_int_in_range, check_seeds

    assert list(check_seeds("seeds", range(2, 0, -1))) == [2, 1]
    huge = range(MAX_SEED + 1)
    assert check_seeds("seeds", huge) is huge  # checked from its ends, not built
    assert check_seeds("seeds", 7) == (7,)
    assert check_seeds("seeds", iter([3, 1])) == (3, 1)
    with pytest.raises(ValueError, match=r"`seeds`.*\[0, 4294967295\]"):
        check_seeds("seeds", range(3, -2, -1))
    assert check_int_in_range("n", 5, minimum=1, maximum=5) == 5
    with pytest.raises(ValueError, match=r"`n` must be an integer in \[1, 4\], got 5"):
        check_int_in_range("n", 5, minimum=1, maximum=4)
    with pytest.raises(TypeError, match="`n`"):
        check_int_in_range("n", True, minimum=0)
