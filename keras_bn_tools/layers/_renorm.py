"""Batch renormalization (Ioffe, 2017) for `MomentumBatchNormalization`, as tf.keras 2
and Keras >= 3.10 compute it.

In training the normalized batch is corrected by `r = clip(std / renorm_std)` and
`d = clip((mean - renorm_mean) / renorm_std)` (both without gradient); the renorm
statistics are moving averages with `renorm_momentum`, and the inference
statistics track the mean and the standard deviation, from which
`moving_variance = relu(moving_stddev**2 - epsilon)` is derived.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from keras import ops

__all__ = ["ClippingLimits", "ScheduledClipping", "renorm_affine", "renormalized_variance"]


def renorm_affine(
    mean: Any,
    variance: Any,
    gamma: Any,
    beta: Any,
    *,
    renorm_mean: Any,
    renorm_stddev: Any,
    epsilon: float,
    clipping: dict[str, Any],
) -> tuple[Any, Any]:
    """The scale and offset of `(x_hat * r + d) * gamma + beta` as one affine map.

    `clipping` maps `"rmin"`, `"rmax"`, `"dmax"` to a limit (a float or a
    scalar tensor) or None (no clipping on that side).
    """
    dtype = mean.dtype
    stddev = ops.sqrt(variance + epsilon)
    renorm_mean = ops.cast(renorm_mean, dtype)
    # Avoid dividing by zero early in training (as tf.keras 2 and Keras do).
    renorm_stddev = ops.maximum(ops.cast(renorm_stddev, dtype), ops.sqrt(ops.cast(epsilon, dtype)))
    r = ops.divide(stddev, renorm_stddev)
    d = ops.divide(ops.subtract(mean, renorm_mean), renorm_stddev)
    rmin, rmax, dmax = (clipping.get(key) for key in ("rmin", "rmax", "dmax"))
    if rmin is not None:
        r = ops.maximum(r, ops.cast(rmin, dtype))
    if rmax is not None:
        r = ops.minimum(r, ops.cast(rmax, dtype))
    if dmax is not None:
        dmax = ops.cast(dmax, dtype)
        d = ops.clip(d, -dmax, dmax)
    r = ops.stop_gradient(r)
    d = ops.stop_gradient(d)
    # (x_hat * r + d) * gamma + beta = x_hat * (r * gamma) + (d * gamma + beta)
    if gamma is not None:
        new_gamma, new_beta = r * gamma, d * gamma
    else:
        new_gamma, new_beta = r, d
    if beta is not None:
        new_beta = new_beta + beta
    return new_gamma, new_beta


def renormalized_variance(moving_stddev: Any, epsilon: float) -> Any:
    """`moving_variance` derived from the tracked standard deviation; relu guards round-off."""
    return ops.relu(ops.square(moving_stddev) - epsilon)


def _check_limit(name: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float, got {value!r} ({type(value).__name__}).")
    value = float(value)
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"`{name}` must be finite and >= {minimum:g}, got {value!r}.")
    return value


class ClippingLimits:
    """Batch renorm's clipping limits: `rmin` fixed, `rmax` and `dmax` schedulable.

    `config` is the checked `renorm_clipping` dict (missing or None: no
    clipping on that side). Once `build` made them, `rmax` and `dmax` live in
    two float32 scalar variables (inf: no clipping), so a compiled training
    step reads the limits in force and `assign` changes them without retracing.
    """

    def __init__(self, config: dict[str, float | None]) -> None:
        self.config = dict(config)
        self.variables: dict[str, Any] = {}

    def build(self, add_weight: Any) -> None:
        for key in ("rmax", "dmax"):
            value = self.config.get(key)
            number = math.inf if value is None else value
            self.variables[key] = add_weight(
                shape=(),
                name=f"renorm_{key}",
                initializer=lambda shape, dtype=None, number=number: np.full(shape, number, dtype),
                dtype="float32",
                trainable=False,
                autocast=False,
            )

    def in_force(self) -> dict[str, float]:
        """`{"rmax": float, "dmax": float}` (inf: no clipping), with `"rmin"` when set."""
        limits = {}
        for key in ("rmax", "dmax"):
            value = self.config.get(key)
            limits[key] = math.inf if value is None else float(value)
        if self.config.get("rmin") is not None:
            limits["rmin"] = float(self.config["rmin"])
        return limits

    def assign(self, rmax: float | None = None, dmax: float | None = None) -> None:
        """Check and set new limits (None keeps a limit); the variables follow if built."""
        updates = {}
        if rmax is not None:
            updates["rmax"] = _check_limit("rmax", rmax, 1.0)  # >= 1 >= rmin
        if dmax is not None:
            updates["dmax"] = _check_limit("dmax", dmax, 0.0)
        for key, value in updates.items():
            if key in self.variables:
                self.variables[key].assign(value)
            self.config[key] = value

    def tensors(self) -> dict[str, Any]:
        """What `renorm_affine` takes as `clipping`: the variables, `rmin` as a number."""
        return {"rmin": self.config.get("rmin"), **self.variables}


class ScheduledClipping:
    """`renorm_clipping` as a schedulable property of a BN layer (a mixin).

    The layer holds `_clipping`: a `ClippingLimits`, or None without renorm;
    and implements `_check_attached(what)`.
    """

    @property
    def renorm_clipping(self) -> dict[str, float] | None:
        """The renorm clipping limits in force: `{"rmax": float, "dmax": float}` (inf: no
        clipping), with `"rmin"` when set; None without renorm.

        Assign a dict with `"rmax"` and/or `"dmax"`, or call `set_renorm_clipping`.
        """
        return None if self._clipping is None else self._clipping.in_force()

    @renorm_clipping.setter
    def renorm_clipping(self, value: dict[str, float] | None) -> None:
        if value is None and "_clipping" not in vars(self):
            return  # keras.layers.BatchNormalization.__init__ sets it; ours follows
        if not isinstance(value, dict) or not set(value) <= {"rmax", "dmax"}:
            raise TypeError(
                "`renorm_clipping` must be assigned a dict with keys among 'rmax' and "
                f"'dmax', got {value!r}."
            )
        self.set_renorm_clipping(**value)

    def set_renorm_clipping(self, *, rmax: float | None = None, dmax: float | None = None) -> None:
        """Change batch renorm's clipping limits; a compiled step uses them from its
        next call, without retracing (as for `momentum`; the same JAX `fit` caveat).

        Args:
            rmax: new upper limit of `r`: finite, >= 1 (None: unchanged).
            dmax: new limit of `|d|`: finite, >= 0 (None: unchanged).

        Raises:
            ValueError: without `renorm=True`, or on a limit out of range.
            TypeError: on a limit that is not a number.
        """
        if self._clipping is None:
            raise ValueError(
                f"Layer {self.name!r} has `renorm=False`: clipping limits (`rmax`, `dmax`) "
                "apply to batch renormalization only."
            )
        if self.built:
            self._check_attached("renorm_clipping")
        self._clipping.assign(rmax=rmax, dmax=dmax)
