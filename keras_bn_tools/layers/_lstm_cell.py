"""`BatchNormLSTMCell`: the weights and one step of a recurrently batch-normalized LSTM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import keras
from keras import ops

from keras_bn_tools.layers._lstm_config import LSTMCellConfig

__all__ = ["BatchNormLSTMCell", "Moments", "StepTerms"]

# The normalized terms and their width in units of `units`.
TERM_WIDTHS = {"input": 4, "recurrent": 4, "cell": 1}


class Moments(NamedTuple):
    """Per-feature statistics of one normalized term (batch or moving)."""

    mean: Any
    variance: Any


class StepTerms(NamedTuple):
    """What one LSTM step computes, named (the normalized terms with their raw values)."""

    h: Any  # h_t
    c: Any  # c_t, before its normalization
    recurrent: Any  # BN(W_h h_{t-1})
    recurrent_raw: Any  # W_h h_{t-1}
    cell: Any  # BN(c_t) (c_t when the cell state is not normalized)
    moments: dict[str, Moments]  # the statistics each term was normalized with


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class BatchNormLSTMCell(keras.layers.Layer):
    """The weights and the one-step computation of a recurrently batch-normalized LSTM.

    The weight layout is Keras's `LSTMCell`'s (`kernel` `(input_dim, 4 * units)`,
    `recurrent_kernel` `(units, 4 * units)`, `bias` `(4 * units,)`, gates in the order
    i, f, c, o), so LSTM weights copy over unchanged. On top of them the cell holds the
    normalization parameters and moving statistics, one row per time-step slot:
    `input_gamma`, `recurrent_gamma` `(4 * units,)`; `cell_gamma`, `cell_beta` `(units,)`;
    `{input,recurrent}_moving_{mean,variance}` `(max_timesteps, 4 * units)` and
    `cell_moving_{mean,variance}` `(max_timesteps, units)`.

    Train it through `BatchNormLSTM`, which runs the time loop and updates the moving
    statistics. Calling the cell directly computes one inference step (for instance to generate
    a sequence step by step) with the moving statistics of slot `timestep`; in training mode
    the call raises, because a single step cannot update the moving statistics (so a plain
    `keras.layers.RNN(BatchNormLSTMCell(...))` is usable for inference only).

    The arguments are checked and kept in one `LSTMCellConfig` (`cell.config`); each is also
    readable as an attribute (`cell.units`, `cell.momentum`, ...).

    Args:
        units: positive integer, dimensionality of the output space.
        activation: activation of the cell input and of the output (`"tanh"`).
        recurrent_activation: activation of the gates (`"sigmoid"`).
        use_bias: whether the pre-activations get a bias `b`.
        kernel_initializer: initializer of `kernel` (`W_x`).
        recurrent_initializer: initializer of `recurrent_kernel` (`W_h`).
        bias_initializer: initializer of `bias`.
        unit_forget_bias: add 1 to the forget gate's bias at initialization.
        gamma_initializer: initializer of the scales of the input and recurrent terms; a
            number means a constant. Default 0.1 (Cooijmans et al.).
        cell_gamma_initializer: initializer of the cell-state scale (`"ones"`).
        cell_beta_initializer: initializer of the cell-state shift (`"zeros"`).
        normalize_cell: whether to batch normalize the cell state before the output tanh.
        momentum: float in [0, 1], momentum of the moving statistics.
        epsilon: positive float added to the variance.
        max_timesteps: number of per-time-step statistics slots, or `None` for the input's
            time dimension at build time (1 when unknown). Steps past the last slot use it.
        kernel_regularizer: regularizer of `kernel`.
        recurrent_regularizer: regularizer of `recurrent_kernel`.
        bias_regularizer: regularizer of `bias`.
        kernel_constraint: constraint of `kernel`.
        recurrent_constraint: constraint of `recurrent_kernel`.
        bias_constraint: constraint of `bias`.
        dropout: fraction of the input features to drop in training (one mask per sequence,
            shared by the four gates).
        recurrent_dropout: fraction of `h_{t-1}` to drop in training (one mask per sequence).
        seed: seed of the dropout masks.
        **kwargs: base `keras.layers.Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, input_dim)`, one time step.
        states: `[h_{t-1}, c_{t-1}]`.
        training: must be false; train through `BatchNormLSTM`.
        timestep: the step's index, which picks the moving-statistics slot (steps past the
            last slot use the last). Required when the cell has more than one slot.

    Example:

    ```python
    cell = BatchNormLSTMCell(4, max_timesteps=1)
    rnn = keras.layers.RNN(cell)  # inference only: train with BatchNormLSTM
    ```
    """

    def __init__(
        self,
        units: int,
        activation: Any = "tanh",
        recurrent_activation: Any = "sigmoid",
        use_bias: bool = True,
        kernel_initializer: Any = "glorot_uniform",
        recurrent_initializer: Any = "orthogonal",
        bias_initializer: Any = "zeros",
        unit_forget_bias: bool = True,
        gamma_initializer: Any = 0.1,
        cell_gamma_initializer: Any = "ones",
        cell_beta_initializer: Any = "zeros",
        normalize_cell: bool = True,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        max_timesteps: int | None = None,
        kernel_regularizer: Any = None,
        recurrent_regularizer: Any = None,
        bias_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        config = LSTMCellConfig.from_arguments(locals())  # checks every argument
        super().__init__(**kwargs)
        self.config = config
        self.seed_generator = keras.random.SeedGenerator(seed=config.seed)
        self.state_size = [config.units, config.units]
        self.output_size = config.units

    @property
    def max_timesteps(self) -> int | None:
        """Number of statistics slots; settable until the cell is built."""
        return self.config.max_timesteps

    @max_timesteps.setter
    def max_timesteps(self, value: int | None) -> None:
        if self.built:
            raise ValueError("`max_timesteps` cannot change once the cell is built.")
        self.config = self.config.replace(max_timesteps=value)

    @property
    def normalized_terms(self) -> tuple[str, ...]:
        """The normalized terms, in processing order: input, recurrent (and cell)."""
        return tuple(term for term in TERM_WIDTHS if term != "cell" or self.normalize_cell)

    def build(self, input_shape: tuple) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known feature dimension, got input shape "
                f"{tuple(input_shape)}."
            )
        if self.max_timesteps is None:
            self.max_timesteps = 1
        config, units = self.config, self.config.units
        for name, shape, kind in (
            ("kernel", (input_dim, 4 * units), "kernel"),
            ("recurrent_kernel", (units, 4 * units), "recurrent"),
        ):
            weight = self.add_weight(
                shape=shape,
                name=name,
                initializer=getattr(config, f"{kind}_initializer"),
                regularizer=getattr(config, f"{kind}_regularizer"),
                constraint=getattr(config, f"{kind}_constraint"),
            )
            setattr(self, name, weight)
        self.bias = None
        if config.use_bias:
            self.bias = self.add_weight(
                shape=(4 * units,),
                name="bias",
                initializer=self._bias_initializer(),
                regularizer=config.bias_regularizer,
                constraint=config.bias_constraint,
            )
        self._build_normalization(units)
        super().build(input_shape)

    def _bias_initializer(self) -> Any:
        base = self.config.bias_initializer
        if not self.config.unit_forget_bias:
            return base
        units = self.config.units

        def initializer(_, *args, **kwargs):
            ones = keras.initializers.get("ones")((units,), *args, **kwargs)
            return ops.concatenate(
                [base((units,), *args, **kwargs), ones, base((2 * units,), *args, **kwargs)]
            )

        return initializer

    def _build_normalization(self, units: int) -> None:
        config = self.config
        for name in ("input_gamma", "recurrent_gamma"):
            weight = self.add_weight(
                shape=(4 * units,), name=name, initializer=config.gamma_initializer
            )
            setattr(self, name, weight)
        self.cell_gamma = self.cell_beta = None
        if config.normalize_cell:
            self.cell_gamma = self.add_weight(
                shape=(units,), name="cell_gamma", initializer=config.cell_gamma_initializer
            )
            self.cell_beta = self.add_weight(
                shape=(units,), name="cell_beta", initializer=config.cell_beta_initializer
            )
        for term in self.normalized_terms:
            for stat, init in (("mean", "zeros"), ("variance", "ones")):
                variable = self.add_weight(
                    shape=(self.max_timesteps, TERM_WIDTHS[term] * units),
                    name=f"{term}_moving_{stat}",
                    initializer=init,
                    trainable=False,
                    autocast=False,
                )
                setattr(self, f"{term}_moving_{stat}", variable)

    # ------------------------------------------------------------------ the computation

    def moving_statistics(self, term: str, slots: Any) -> Moments:
        """The moving mean and variance of `term` at `slots` (int tensor, any shape)."""
        return Moments(
            *(
                ops.take(getattr(self, f"{term}_moving_{stat}").value, slots, axis=0)
                for stat in Moments._fields
            )
        )

    def normalize(self, term: str, values: Any, moments: Moments) -> Any:
        """`gamma * (values - mean) / sqrt(variance + epsilon) + beta` with `term`'s scale
        and shift (the input and recurrent terms have no shift)."""
        gamma = getattr(self, f"{term}_gamma")
        beta = self.cell_beta if term == "cell" else None
        dtype = values.dtype
        scale = ops.cast(gamma, dtype) * ops.rsqrt(
            ops.cast(moments.variance, dtype) + self.config.epsilon
        )
        out = (values - ops.cast(moments.mean, dtype)) * scale
        return out if beta is None else out + ops.cast(beta, dtype)

    def input_projection(self, inputs: Any) -> Any:
        """`W_x x`, for one step or a whole sequence."""
        return ops.matmul(inputs, ops.cast(self.kernel, inputs.dtype))

    def add_bias(self, values: Any) -> Any:
        """`values + b` (unchanged without a bias)."""
        return values + ops.cast(self.bias, values.dtype) if self.bias is not None else values

    def recurrent_step(
        self,
        x_term: Any,
        h_in: Any,
        c_tm1: Any,
        statistics: Callable[[str, Any], Moments],
    ) -> StepTerms:
        """One LSTM step from the normalized input term (bias included).

        `statistics(term, raw)` gives the moments to normalize the recurrent and cell terms
        with (the batch's or the moving ones: the caller decides).
        """
        recurrent_raw = ops.matmul(h_in, ops.cast(self.recurrent_kernel, h_in.dtype))
        moments = {"recurrent": statistics("recurrent", recurrent_raw)}
        recurrent = self.normalize("recurrent", recurrent_raw, moments["recurrent"])
        z_i, z_f, z_c, z_o = ops.split(x_term + recurrent, 4, axis=-1)
        gate = self.recurrent_activation
        c = gate(z_f) * c_tm1 + gate(z_i) * self.activation(z_c)
        c_norm = c
        if self.normalize_cell:
            moments["cell"] = statistics("cell", c)
            c_norm = self.normalize("cell", c, moments["cell"])
        h = gate(z_o) * self.activation(c_norm)
        return StepTerms(h, c, recurrent, recurrent_raw, c_norm, moments)

    def update_moving_statistics(self, term: str, batch: Moments, reached: Any) -> None:
        """`moving = momentum * moving + (1 - momentum) * batch` in the slots where `reached`.

        Args:
            term: one of `normalized_terms`.
            batch: per-slot batch statistics, `(max_timesteps, width)` each.
            reached: `(max_timesteps, 1)` booleans; the other slots keep their statistics.
        """
        momentum = self.config.momentum
        for stat, value in zip(Moments._fields, batch, strict=True):
            variable = getattr(self, f"{term}_moving_{stat}")
            current = variable.value
            updated = current * momentum + ops.cast(value, variable.dtype) * (1.0 - momentum)
            variable.assign(ops.where(reached, updated, current))

    def call(self, inputs, states, training=False, timestep=None):
        """One inference step: `(h_t, [h_t, c_t])` (see the class docstring)."""
        if training:
            raise ValueError(
                "BatchNormLSTMCell cannot run a training step on its own: recurrent batch "
                "normalization needs the whole sequence to update its moving statistics. Train "
                "with keras_bn_tools.layers.BatchNormLSTM (or call the cell with training=False)."
            )
        if timestep is None:
            if self.max_timesteps > 1:
                raise ValueError(
                    f"This cell keeps statistics for {self.max_timesteps} time steps; pass "
                    "`timestep=` to say which step this call computes."
                )
            timestep = 0
        slot = ops.minimum(ops.convert_to_tensor(timestep, "int32"), self.max_timesteps - 1)
        x_raw = self.input_projection(inputs)
        x = self.add_bias(self.normalize("input", x_raw, self.moving_statistics("input", slot)))
        terms = self.recurrent_step(
            x, states[0], states[1], lambda term, raw: self.moving_statistics(term, slot)
        )
        return terms.h, [terms.h, terms.c]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in self.state_size]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.config.get_config()}


def config_property(name: str, source: Callable[[Any], LSTMCellConfig]) -> property:
    """A read-only attribute that reads argument `name` of the config `source(self)`."""
    return property(
        lambda self: getattr(source(self), name), doc=f"The `{name}` argument (read-only)."
    )


for _name in LSTMCellConfig.names():
    if _name != "max_timesteps":
        setattr(BatchNormLSTMCell, _name, config_property(_name, lambda cell: cell.config))
del _name
