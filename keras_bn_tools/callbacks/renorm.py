"""Change batch renormalization's clipping limits during training.

Batch renormalization (Ioffe, 2017) trains with plain BN first and then
relaxes the limits of its corrections `r` (at most `rmax`) and `d` (to
`[-dmax, dmax]`): in the paper, `rmax = 1, dmax = 0` for the first 5,000
steps, then `rmax` rises to 3 (reached at 40,000 steps) and `dmax` to 5
(reached at 25,000 steps). Keras's renorm has fixed limits;
`MomentumBatchNormalization` keeps them in variables, so `RenormScheduler`
changes them before every training batch without retracing the compiled step.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import keras

from keras_bn_tools.graph import batchnorm_layers
from keras_bn_tools.layers import MomentumBatchNormalization

__all__ = ["PaperRenormSchedule", "RenormScheduler"]

# The paper's milestones, in training steps (Ioffe 2017, section 4).
_PAPER_PLAIN_STEPS = 5_000
_PAPER_DMAX_STEPS = 25_000
_PAPER_RMAX_STEPS = 40_000


@dataclass(frozen=True)
class PaperRenormSchedule:
    """Batch renorm's schedule from the paper, scaled to a run of `total_steps` batches.

    Plain BN (`rmax=1, dmax=0`) for the first 1/8 of the ramp (the paper's
    5k of 40k steps), then linear relaxation: `dmax` reaches its maximum at
    5/8 of the ramp (25k of 40k) and `rmax` at the ramp's end (40k). The ramp
    spans the first `ramp_fraction` of the run; the limits stay at their
    maxima afterwards. With `total_steps=None`, `RenormScheduler` fills in the
    length of the `fit` call it runs in (epochs x steps per epoch).

    Args:
        total_steps: the run's number of training batches, or None.
        rmax: final upper limit of `r` (>= 1; the paper's 3).
        dmax: final limit of `|d|` (>= 0; the paper's 5).
        ramp_fraction: the share of the run over which the paper's first 40k
            steps are spread, in (0, 1].

    Example:
        ```python
        schedule = PaperRenormSchedule(total_steps=1000)
        schedule(0)  # {"rmax": 1.0, "dmax": 0.0}
        schedule(999)  # {"rmax": 3.0, "dmax": 5.0}
        ```
    """

    total_steps: int | None = None
    rmax: float = 3.0
    dmax: float = 5.0
    ramp_fraction: float = 0.5

    def __post_init__(self) -> None:
        if self.total_steps is not None and (
            isinstance(self.total_steps, bool)
            or not isinstance(self.total_steps, numbers.Integral)
            or self.total_steps < 1
        ):
            raise ValueError(
                f"`total_steps` must be None or a positive int, got {self.total_steps!r}."
            )
        _check_limits("rmax", "dmax", self.rmax, self.dmax)
        fraction = self.ramp_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real):
            raise TypeError(f"`ramp_fraction` must be a number in (0, 1], got {fraction!r}.")
        if not 0 < fraction <= 1:
            raise ValueError(f"`ramp_fraction` must be in (0, 1], got {fraction!r}.")

    def scaled_to(self, total_steps: int) -> PaperRenormSchedule:
        """The same schedule for a run of `total_steps` batches."""
        return PaperRenormSchedule(total_steps, self.rmax, self.dmax, self.ramp_fraction)

    def __call__(self, step: int) -> dict[str, float]:
        if self.total_steps is None:
            raise ValueError(
                "PaperRenormSchedule(total_steps=None) needs the run's length: use it inside "
                "RenormScheduler (which fills it in) or call .scaled_to(total_steps)."
            )
        ramp = self.ramp_fraction * self.total_steps
        position = step / ramp  # 1.0 = the paper's step 40k
        start = _PAPER_PLAIN_STEPS / _PAPER_RMAX_STEPS
        dmax_end = _PAPER_DMAX_STEPS / _PAPER_RMAX_STEPS

        def relaxed(end: float) -> float:
            return min(max((position - start) / (end - start), 0.0), 1.0)

        return {
            "rmax": 1.0 + (self.rmax - 1.0) * relaxed(1.0),
            "dmax": self.dmax * relaxed(dmax_end),
        }


def _check_limit(name: str, value: Any, minimum: float) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a float, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(float(value)):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    if value < minimum:
        what = "r is clipped to at most rmax" if minimum == 1 else "|d| is clipped to dmax"
        raise ValueError(f"`{name}` must be >= {minimum:g} ({what}), got {value!r}.")
    return float(value)


def _check_limits(rmax_name: str, dmax_name: str, rmax: Any, dmax: Any) -> tuple[float, float]:
    return _check_limit(rmax_name, rmax, 1.0), _check_limit(dmax_name, dmax, 0.0)


class RenormScheduler(keras.callbacks.Callback):
    """Set batch renorm's clipping limits before every training batch.

    `schedule(step)` returns `{"rmax": float, "dmax": float}` (either key may
    be left out to keep that limit) or `None` (keep both); `step` counts
    training batches from 0, across epochs and across later `fit` calls with
    this scheduler. The limits go to every `MomentumBatchNormalization` with
    `renorm=True` through `set_renorm_clipping`, which assigns variables: the
    compiled training step reads them, so nothing is retraced. Afterwards
    `layer.renorm_clipping` reads the limits in force.

    Args:
        schedule: a callable `step -> dict | None`, e.g. `PaperRenormSchedule()`
            (the paper's shape, scaled to the run's length when its
            `total_steps` is None).
        verbose: 1 prints the limits whenever they change.

    Attributes:
        history: `{step: {"rmax": ..., "dmax": ...}}` at every step where the
            limits changed (the first step included).

    Raises:
        TypeError: at construction, if `schedule` is not callable; before a
            batch, if `schedule` returns something other than a dict or None.
        ValueError: when training starts, if the model has no
            `MomentumBatchNormalization(renorm=True)`, or `schedule(0)` is
            invalid; before a batch, for `rmax < 1` or a negative or
            non-finite `dmax` (the message names `schedule(step)`).

    Example:
        ```python
        model = keras.Sequential([
            keras.Input((8,)), keras.layers.Dense(16),
            MomentumBatchNormalization(renorm=True), keras.layers.ReLU(),
            keras.layers.Dense(1),
        ])
        model.compile("sgd", "mse")
        model.fit(x, y, epochs=10, callbacks=[RenormScheduler(PaperRenormSchedule())])
        ```

    Reference:
        Ioffe, "Batch Renormalization: Towards Reducing Minibatch Dependence in
        Batch-Normalized Models", NeurIPS 2017, section 4.
    """

    def __init__(self, schedule: Callable[[int], Mapping[str, float] | None], verbose: int = 0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                f"`schedule` must be a callable step -> {{'rmax', 'dmax'}} | None, got "
                f"{schedule!r} ({type(schedule).__name__})."
            )
        self.schedule = schedule
        self.verbose = verbose
        self.history: dict[int, dict[str, float]] = {}
        self._layers: list[MomentumBatchNormalization] = []
        self._step = 0
        self._current: dict[str, float] = {}
        self._run_schedule = schedule

    def _limits(self, step: int) -> dict[str, float] | None:
        """`schedule(step)`, checked: the limits it sets (one or both), or None."""
        value = self._run_schedule(step)
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise TypeError(
                f"`schedule({step})` must return a dict with keys 'rmax' and/or 'dmax', or "
                f"None; got {value!r} ({type(value).__name__})."
            )
        unknown = sorted(set(value) - {"rmax", "dmax"}, key=str)
        if unknown or not value:
            raise ValueError(
                f"`schedule({step})` returned {dict(value)!r}: keys must be 'rmax' and/or 'dmax'."
            )
        minimum = {"rmax": 1.0, "dmax": 0.0}
        return {
            key: _check_limit(f"schedule({step})[{key!r}]", value[key], minimum[key])
            for key in ("rmax", "dmax")
            if key in value
        }

    def _apply(self, step: int) -> None:
        limits = self._limits(step)
        if limits is None or all(self._current.get(k) == v for k, v in limits.items()):
            return
        # JAX's fit keeps the live state outside the variables between steps: sync it
        # into them first, so the assignment below is the state the next step reads.
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        for layer in self._layers:
            layer.set_renorm_clipping(**limits)
        self._current.update(limits)
        in_force = self._layers[0].renorm_clipping
        self.history[step] = {"rmax": in_force["rmax"], "dmax": in_force["dmax"]}
        if self.verbose:
            keras.utils.io_utils.print_msg(
                f"\nStep {step}: RenormScheduler setting "
                + ", ".join(f"{k}={v:.4g}" for k, v in limits.items())
                + "."
            )

    def on_train_begin(self, logs=None):
        found = batchnorm_layers(self.model)
        self._layers = [
            layer
            for layer in found
            if isinstance(layer, MomentumBatchNormalization) and layer.renorm
        ]
        if not self._layers:
            raise ValueError(
                f"RenormScheduler: model {self.model.name!r} has no "
                "MomentumBatchNormalization(renorm=True) layer whose clipping it can schedule "
                f"(found {len(found)} other BN layer(s))."
            )
        self._run_schedule = self.schedule
        self._current = {}  # the limits may have been changed by hand since
        if isinstance(self.schedule, PaperRenormSchedule) and self.schedule.total_steps is None:
            steps, epochs = self.params.get("steps"), self.params.get("epochs")
            if not steps or not epochs:
                raise ValueError(
                    "RenormScheduler: PaperRenormSchedule(total_steps=None) needs fit's number "
                    "of steps per epoch; pass total_steps explicitly for this data."
                )
            self._run_schedule = self.schedule.scaled_to(self._step + int(steps) * int(epochs))
        # Checked, and in force, before the first batch.
        self._apply(self._step)

    def on_train_batch_begin(self, batch, logs=None):
        self._apply(self._step)

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
