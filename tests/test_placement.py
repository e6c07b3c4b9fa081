"""Placement parsing: the enum, its strings in any case, and the errors for anything else."""

from __future__ import annotations

import keras
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_bn_tools import Placement, build_mlp, insert_batchnorm
from keras_bn_tools.placement import parse_placement

pytestmark = pytest.mark.backend_agnostic

VALID = [p.value for p in Placement]


def any_case(text: str) -> st.SearchStrategy[str]:
    return st.tuples(*(st.sampled_from([c.lower(), c.upper()]) for c in text)).map("".join)


def test_enum_is_a_str_with_the_documented_values():
    assert [(p.name, p.value) for p in Placement] == [
        ("NONE", "none"),
        ("BEFORE", "before"),
        ("AFTER", "after"),
    ]
    assert Placement.AFTER == "after"
    assert isinstance(Placement.BEFORE, str)
    assert str(Placement.BEFORE) == "before"
    assert f"{Placement.NONE}" == "none"


@pytest.mark.parametrize("placement", list(Placement))
def test_enum_passes_through(placement):
    assert parse_placement(placement) is placement


@given(st.sampled_from(VALID).flatmap(any_case), st.sampled_from(["", " ", "\t"]))
def test_strings_in_any_case_parse(text, padding):
    assert parse_placement(padding + text + padding) is Placement(text.lower())


@given(st.text(max_size=12).filter(lambda s: s.strip().lower() not in VALID))
def test_other_strings_are_rejected_with_argument_value_and_choices(text):
    with pytest.raises(ValueError) as info:
        parse_placement(text, "bn")
    message = str(info.value)
    assert "`bn`" in message
    assert repr(text) in message
    for value in VALID:
        assert repr(value) in message


@pytest.mark.parametrize("value", [None, 1, 0.5, True, b"after", ["after"], Placement])
def test_non_strings_are_rejected(value):
    with pytest.raises(ValueError, match="Invalid `placement`"):
        parse_placement(value)


@pytest.mark.parametrize("bn", [Placement.BEFORE, "before", "BEFORE", "Before"])
def test_builders_accept_the_enum_and_any_case(bn):
    names = [type(layer).__name__ for layer in build_mlp(2, (4,), bn=bn).layers]
    assert names == ["Dense", "BatchNormalization", "Activation", "Dense"]


def test_builders_name_the_bn_argument():
    with pytest.raises(ValueError, match=r"Invalid `bn`: 'sideways'.*'none', 'before', 'after'"):
        build_mlp(2, bn="sideways")


@pytest.mark.parametrize("placement", [Placement.AFTER, "AFTER", "after"])
def test_rewriter_accepts_the_enum_and_any_case(placement):
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.Dense(1)])
    names = [type(layer).__name__ for layer in insert_batchnorm(plain, placement).layers]
    assert names == ["Dense", "BatchNormalization", "Dense"]


def test_rewriter_names_the_placement_argument():
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match=r"Invalid `placement`: 'middle'"):
        insert_batchnorm(plain, placement="middle")
