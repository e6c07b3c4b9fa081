"""keras_bn_tools._validation: each shared check accepts what is allowed and names the argument."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from keras_bn_tools import _validation as v

pytestmark = pytest.mark.backend_agnostic

CASES = [
    # (check, accepted inputs -> outputs, rejected inputs -> (error, message))
    (
        lambda value: v.check_axis("axis", value),
        [(-1, -1), (np.int64(2), 2)],
        [(1.0, TypeError), (True, TypeError), ("1", TypeError)],
    ),
    (
        lambda value: v.check_epsilon("epsilon", value),
        [(1e-3, 1e-3), (2, 2.0)],
        [
            (0.0, ValueError),
            (-1e-3, ValueError),
            (math.nan, ValueError),
            (math.inf, ValueError),
            ("1e-3", TypeError),
            (False, TypeError),
        ],
    ),
    (
        lambda value: v.check_momentum("momentum", value),
        [(None, None), (0, 0.0), (1.0, 1.0), (np.float32(0.5), 0.5)],
        [
            (1.5, ValueError),
            (-0.0001, ValueError),
            (math.nan, ValueError),
            ("0.9", TypeError),
            (True, TypeError),
        ],
    ),
    (
        lambda value: v.check_nonnegative_float("epsilon", value),
        [(0.0, 0.0), (3, 3.0)],
        [(-1.0, ValueError), (math.inf, ValueError), (None, TypeError)],
    ),
    (
        lambda value: v.check_bool("debias", value),
        [(True, True), (np.bool_(False), False)],
        [(1, TypeError), ("no", TypeError), (None, TypeError), (math.nan, TypeError)],
    ),
    (
        lambda value: v.check_choice("method", value, ("exact", "single_pass")),
        [("exact", "exact"), ("Single_Pass", "single_pass")],
        [("fast", ValueError), (None, TypeError), (1, TypeError)],
    ),
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_scalar_checks(index):
    check, accepted, rejected = CASES[index]
    for value, expected in accepted:
        assert check(value) == expected
    for value, error in rejected:
        with pytest.raises(error) as caught:
            check(value)
        message = str(caught.value)
        assert message.startswith("`") and repr(value) in message, message


def test_renorm_clipping():
    assert v.check_renorm_clipping(None, renorm=False) is None
    assert v.check_renorm_clipping({}, renorm=False) == {}
    assert v.check_renorm_clipping({"rmax": 3, "rmin": None}, renorm=True) == {
        "rmax": 3.0,
        "rmin": None,
    }
    bad = [
        ({"rmax": 3.0}, False, ValueError, "without `renorm=True`"),
        ({"rmax": 0.9}, True, ValueError, r"'rmax'\]` must be >= 1"),
        ({"rmin": 1.5}, True, ValueError, r"'rmin'\]` must be in \[0, 1\]"),
        ({"dmax": -0.1}, True, ValueError, r"'dmax'\]` must be >= 0"),
        ({"dmax": math.nan}, True, ValueError, "must be finite"),
        ({"rmax": "2"}, True, TypeError, "must be a float or None"),
        ({"r": 1.0}, True, ValueError, "Allowed keys"),
        ([("rmax", 2.0)], True, TypeError, "`renorm_clipping` must be None or a dict"),
    ]
    for value, renorm, error, match in bad:
        with pytest.raises(error, match=match):
            v.check_renorm_clipping(value, renorm=renorm)


def test_statistic():
    np.testing.assert_array_equal(v.check_statistic("mean", 2, (3,), variance=False), [2, 2, 2])
    np.testing.assert_array_equal(
        v.check_statistic("variance", [0.0, 1.0], (2,), variance=True), [0.0, 1.0]
    )
    bad = [
        ([1.0], (2,), False, ValueError, r"`mean` must have shape \(2,\)"),
        ([1.0, math.nan], (2,), False, ValueError, "`mean` must be finite"),
        ([1.0, -1.0], (2,), True, ValueError, "`mean` must be >= 0"),
        ("x", (2,), False, TypeError, "`mean` must be an array of numbers"),
    ]
    for value, shape, variance, error, match in bad:
        with pytest.raises(error, match=match):
            v.check_statistic("mean", value, shape, variance=variance)
    with pytest.raises(ValueError, match="`mean` must be finite in float32"):
        v.check_statistic("mean", [3.5e38], (1,), variance=False, dtype="float32")
    largest = v.check_statistic("mean", [3e38], (1,), variance=False, dtype="float32")
    assert largest.dtype == np.float32


def test_float_array():
    np.testing.assert_array_equal(v.check_float_array("x", [[1, 2]]), [[1.0, 2.0]])
    with pytest.raises(TypeError, match="`x` must be an array of numbers"):
        v.check_float_array("x", "abc")


def test_writable_directory(tmp_path, monkeypatch):
    assert v.check_writable_directory("log_dir", tmp_path / "a" / "b") == str(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match="is an existing file"):
        v.check_writable_directory("log_dir", tmp_path / "f")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        v.check_writable_directory("log_dir", tmp_path / "f" / "sub")
    with pytest.raises(TypeError, match="`log_dir` must be a path"):
        v.check_writable_directory("log_dir", 3)
    monkeypatch.setattr(os, "access", lambda *args: False)  # as on a read-only file system
    with pytest.raises(ValueError, match="not writable"):
        v.check_writable_directory("log_dir", tmp_path / "new")


@pytest.mark.backend_agnostic
def test_check_layer_names():
    from keras_bn_tools._validation import check_layer_names

    assert check_layer_names(None, none_means="all") is None
    assert check_layer_names("bn", none_means="all") == ("bn",)
    assert check_layer_names(["a", "b", "a"], none_means="all") == ("a", "b")
    with pytest.raises(TypeError, match="`layers` must be None or a sequence of layer names"):
        check_layer_names(3, none_means="all")
    with pytest.raises(ValueError, match=r"`layers` must be None \(every layer\) or name"):
        check_layer_names([], none_means="every layer")


@pytest.mark.backend_agnostic
def test_check_every_is_the_one_rule_of_both_trackers():
    assert v.check_every("epoch") == "epoch"
    assert v.check_every("batch") == 1
    assert v.check_every(np.int64(3)) == 3 and type(v.check_every(np.int64(3))) is int
    rule = r'`every` must be "epoch", "batch" or a positive integer \(batches\), got '
    for bad, error in (("step", ValueError), (0, ValueError), (-2, ValueError),
                       (True, TypeError), (1.5, TypeError), (None, TypeError),
                       (np.array([1, 2]), TypeError)):  # fmt: skip
        with pytest.raises(error, match=rule):
            v.check_every(bad)
