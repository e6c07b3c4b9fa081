"""Where batch normalization sits relative to a layer's activation."""

from __future__ import annotations

import enum

__all__ = ["Placement", "parse_placement"]


class Placement(str, enum.Enum):
    """Position of batch normalization relative to a layer's activation.

    - `BEFORE`: linear layer without activation -> BN -> `Activation(act)`,
      the order of the original paper (Ioffe & Szegedy, 2015).
    - `AFTER`: linear layer with its activation -> BN.
    - `NONE`: no BN.

    Every argument named `bn` or `placement` in this package accepts the enum
    or its string value in any case (`"After"`, `"BEFORE"`, ...).
    """

    NONE = "none"
    BEFORE = "before"
    AFTER = "after"

    def __str__(self) -> str:
        return self.value


def parse_placement(value: Placement | str, argument: str = "placement") -> Placement:
    """Return `value` as a `Placement`, or raise a `ValueError` naming `argument`.

    Args:
        value: a `Placement` or one of the strings "none", "before", "after"
            (any case).
        argument: the name of the argument being checked, used in the error.

    Raises:
        ValueError: if `value` is not a placement.
    """
    if isinstance(value, Placement):
        return value
    if isinstance(value, str):
        try:
            return Placement(value.strip().lower())
        except ValueError:
            pass
    choices = ", ".join(repr(p.value) for p in Placement)
    raise ValueError(
        f"Invalid `{argument}`: {value!r}. Expected a keras_bn_tools.Placement or one of "
        f"{choices} (any case)."
    )
