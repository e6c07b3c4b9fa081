"""Recurrent batch normalization (Cooijmans et al., 2016) for Keras 3.

`BatchNormLSTM` is an LSTM whose input-to-hidden and hidden-to-hidden terms are batch
normalized separately, and whose cell state is batch normalized before the output tanh:

    i, f, g, o = split(BN(W_x x_t; gamma_x) + BN(W_h h_{t-1}; gamma_h) + b)
    c_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)
    h_t = sigmoid(o) * tanh(BN(c_t; gamma_c, beta_c))

The shifts of the first two normalizations are fixed at 0 (the bias `b` plays their part)
and their scales start at 0.1, as the paper recommends.

Statistics are kept per time step, as in the paper: step `t` is normalized with its own batch
statistics in training and with its own moving statistics in inference. There are
`max_timesteps` slots of moving statistics (by default the input's time dimension); step
`t >= max_timesteps` shares the last slot. `max_timesteps=1` shares one set of statistics across
all steps.

Keras RNN cells are never told the time step and cannot update variables from inside the
time loop on every backend (JAX's `lax.scan` forbids it), so `BatchNormLSTM` runs its own
loop: the input term is normalized for all steps at once before the loop, the recurrent and
cell terms inside it, and the per-step batch statistics travel in the loop state. The moving
statistics are then updated once per call, after the loop (`moving = momentum * moving +
(1 - momentum) * batch_statistic`, for every slot the call reached).
"""

from __future__ import annotations

import numbers
from typing import Any

import keras
from keras import ops

from keras_bn_tools._keras_compat import run_rnn_loop
from keras_bn_tools._validation import (
    check_bool,
    check_epsilon,
    check_positive_int,
    check_probability,
)

__all__ = ["BatchNormLSTM", "BatchNormLSTMCell"]

# The statistics a cell keeps: (name, width in units of `units`, normalized term).
_TERMS = (("input", 4), ("recurrent", 4), ("cell", 1))


def _as_initializer(value: Any) -> keras.initializers.Initializer:
    """An initializer from a Keras identifier, or a constant from a bare number."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return keras.initializers.Constant(float(value))
    return keras.initializers.get(value)


def _moments(values, weights):
    """Per-feature mean and (biased) variance over the batch axis.

    Args:
        values: `(batch, ..., features)`.
        weights: `None`, or 0/1 weights `(batch, ..., 1)` marking the samples that count.

    Returns:
        `(mean, variance, present)`: `mean` and `variance` have the shape of `values` without
        the batch axis; `present` is 1.0 where at least one sample counted, else 0.0 (and
        then the mean is 0 and the variance 1), with a trailing axis of size 1.
    """
    if weights is None:
        mean, variance = ops.moments(values, axes=[0])
        return mean, variance, ops.ones_like(mean[..., :1])
    count = ops.sum(weights, axis=0)
    denominator = ops.maximum(count, 1.0)
    mean = ops.sum(values * weights, axis=0) / denominator
    variance = ops.sum(weights * ops.square(values - mean), axis=0) / denominator
    present = ops.cast(count > 0, values.dtype)
    return mean, ops.where(count > 0, variance, 1.0), present


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
        self.units = check_positive_int("units", units)
        self.momentum = check_probability("momentum", momentum)
        self.epsilon = check_epsilon("epsilon", epsilon)
        self.max_timesteps = check_positive_int("max_timesteps", max_timesteps, allow_none=True)
        self.dropout = check_probability("dropout", dropout)
        self.recurrent_dropout = check_probability("recurrent_dropout", recurrent_dropout)
        super().__init__(**kwargs)
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.use_bias = check_bool("use_bias", use_bias)
        self.unit_forget_bias = check_bool("unit_forget_bias", unit_forget_bias)
        self.normalize_cell = check_bool("normalize_cell", normalize_cell)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.recurrent_initializer = keras.initializers.get(recurrent_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.gamma_initializer = _as_initializer(gamma_initializer)
        self.cell_gamma_initializer = _as_initializer(cell_gamma_initializer)
        self.cell_beta_initializer = _as_initializer(cell_beta_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.recurrent_regularizer = keras.regularizers.get(recurrent_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.recurrent_constraint = keras.constraints.get(recurrent_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed=seed)
        self.state_size = [self.units, self.units]
        self.output_size = self.units

    def build(self, input_shape: tuple) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                f"{type(self).__name__} needs a known feature dimension, got input shape "
                f"{tuple(input_shape)}."
            )
        if self.max_timesteps is None:
            self.max_timesteps = 1
        units, slots = self.units, self.max_timesteps
        self.kernel = self.add_weight(
            shape=(input_dim, 4 * units),
            name="kernel",
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self.recurrent_kernel = self.add_weight(
            shape=(units, 4 * units),
            name="recurrent_kernel",
            initializer=self.recurrent_initializer,
            regularizer=self.recurrent_regularizer,
            constraint=self.recurrent_constraint,
        )
        self.bias = None
        if self.use_bias:
            bias_initializer = self.bias_initializer
            if self.unit_forget_bias:
                base = self.bias_initializer

                def bias_initializer(_, *args, **kwargs):
                    return ops.concatenate(
                        [
                            base((units,), *args, **kwargs),
                            keras.initializers.get("ones")((units,), *args, **kwargs),
                            base((2 * units,), *args, **kwargs),
                        ]
                    )

            self.bias = self.add_weight(
                shape=(4 * units,),
                name="bias",
                initializer=bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        self.input_gamma = self.add_weight(
            shape=(4 * units,), name="input_gamma", initializer=self.gamma_initializer
        )
        self.recurrent_gamma = self.add_weight(
            shape=(4 * units,), name="recurrent_gamma", initializer=self.gamma_initializer
        )
        self.cell_gamma = self.cell_beta = None
        if self.normalize_cell:
            self.cell_gamma = self.add_weight(
                shape=(units,), name="cell_gamma", initializer=self.cell_gamma_initializer
            )
            self.cell_beta = self.add_weight(
                shape=(units,), name="cell_beta", initializer=self.cell_beta_initializer
            )
        for term, width in self._normalized_terms():
            for stat, init in (("mean", "zeros"), ("variance", "ones")):
                variable = self.add_weight(
                    shape=(slots, width * units),
                    name=f"{term}_moving_{stat}",
                    initializer=init,
                    trainable=False,
                    autocast=False,
                )
                setattr(self, f"{term}_moving_{stat}", variable)
        super().build(input_shape)

    def _normalized_terms(self) -> tuple[tuple[str, int], ...]:
        return _TERMS if self.normalize_cell else _TERMS[:2]

    def _normalize(self, values, mean, variance, gamma, beta):
        dtype = values.dtype
        scale = ops.cast(gamma, dtype) * ops.rsqrt(ops.cast(variance, dtype) + self.epsilon)
        out = (values - ops.cast(mean, dtype)) * scale
        return out if beta is None else out + ops.cast(beta, dtype)

    def _moving(self, term: str, slots):
        """The moving mean and variance of `term` at `slots` (int tensor, any shape)."""
        return tuple(
            ops.take(getattr(self, f"{term}_moving_{stat}").value, slots, axis=0)
            for stat in ("mean", "variance")
        )

    def _step(self, x_term, h_in, c_tm1, normalize):
        """One LSTM step from the normalized input term (bias included).

        `normalize(term, raw, gamma, beta)` normalizes the recurrent and cell terms with
        whichever statistics the caller uses. Returns `h_t`, `c_t` and, for inspection, the
        normalized and raw recurrent term and the normalized cell state.
        """
        r_raw = ops.matmul(h_in, ops.cast(self.recurrent_kernel, h_in.dtype))
        r_norm = normalize("recurrent", r_raw, self.recurrent_gamma, None)
        z_i, z_f, z_c, z_o = ops.split(x_term + r_norm, 4, axis=-1)
        i, f = self.recurrent_activation(z_i), self.recurrent_activation(z_f)
        c = f * c_tm1 + i * self.activation(z_c)
        c_norm = c
        if self.normalize_cell:
            c_norm = normalize("cell", c, self.cell_gamma, self.cell_beta)
        h = self.recurrent_activation(z_o) * self.activation(c_norm)
        return h, c, (r_norm, r_raw, c_norm)

    def call(self, inputs, states, training=False, timestep=None):
        """One inference step: `(h_t, [h_t, c_t])`.

        Args:
            inputs: `(batch, input_dim)`.
            states: `[h_{t-1}, c_{t-1}]`.
            training: must be false; train through `BatchNormLSTM`.
            timestep: the step's index, which picks the moving-statistics slot (steps past the
                last slot use the last). Required when the cell has more than one slot.
        """
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

        def normalize(term, raw, gamma, beta):
            return self._normalize(raw, *self._moving(term, slot), gamma, beta)

        x = normalize("input", ops.matmul(inputs, self.kernel), self.input_gamma, None)
        if self.use_bias:
            x = x + self.bias
        h, c, _ = self._step(x, states[0], states[1], normalize)
        return h, [h, c]

    def get_initial_state(self, batch_size=None):
        return [ops.zeros((batch_size, d), dtype=self.compute_dtype) for d in self.state_size]

    def get_config(self) -> dict[str, Any]:
        ser = keras.saving.serialize_keras_object
        config = {
            "units": self.units,
            "activation": keras.activations.serialize(self.activation),
            "recurrent_activation": keras.activations.serialize(self.recurrent_activation),
            "use_bias": self.use_bias,
            "kernel_initializer": ser(self.kernel_initializer),
            "recurrent_initializer": ser(self.recurrent_initializer),
            "bias_initializer": ser(self.bias_initializer),
            "unit_forget_bias": self.unit_forget_bias,
            "gamma_initializer": ser(self.gamma_initializer),
            "cell_gamma_initializer": ser(self.cell_gamma_initializer),
            "cell_beta_initializer": ser(self.cell_beta_initializer),
            "normalize_cell": self.normalize_cell,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "max_timesteps": self.max_timesteps,
            "kernel_regularizer": ser(self.kernel_regularizer),
            "recurrent_regularizer": ser(self.recurrent_regularizer),
            "bias_regularizer": ser(self.bias_regularizer),
            "kernel_constraint": ser(self.kernel_constraint),
            "recurrent_constraint": ser(self.recurrent_constraint),
            "bias_constraint": ser(self.bias_constraint),
            "dropout": self.dropout,
            "recurrent_dropout": self.recurrent_dropout,
            "seed": self.seed,
        }
        return {**super().get_config(), **config}


# Constructor arguments of the cell that BatchNormLSTM forwards (and exposes as properties).
_CELL_ARGUMENTS = (
    "units",
    "activation",
    "recurrent_activation",
    "use_bias",
    "kernel_initializer",
    "recurrent_initializer",
    "bias_initializer",
    "unit_forget_bias",
    "gamma_initializer",
    "cell_gamma_initializer",
    "cell_beta_initializer",
    "normalize_cell",
    "momentum",
    "epsilon",
    "max_timesteps",
    "kernel_regularizer",
    "recurrent_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "recurrent_constraint",
    "bias_constraint",
    "dropout",
    "recurrent_dropout",
    "seed",
)

# keras.layers.LSTM arguments that from_lstm carries over (the cell's, less the BN ones, plus
# the RNN layer's).
_LSTM_ARGUMENTS = (
    *(
        name
        for name in _CELL_ARGUMENTS
        if name
        not in {
            "gamma_initializer",
            "cell_gamma_initializer",
            "cell_beta_initializer",
            "normalize_cell",
            "momentum",
            "epsilon",
            "max_timesteps",
        }
    ),
    "activity_regularizer",
    "return_sequences",
    "return_state",
    "go_backwards",
    "stateful",
    "unroll",
    "zero_output_for_mask",
    "trainable",
    "dtype",
)


@keras.saving.register_keras_serializable(package="keras_bn_tools")
class BatchNormLSTM(keras.layers.RNN):
    """LSTM with recurrent batch normalization (Cooijmans et al., 2016).

    A drop-in for `keras.layers.LSTM` (same arguments, weight layout, masking,
    `return_sequences`, `return_state`, `go_backwards`, `stateful`, `initial_state`), whose
    input and recurrent pre-activations and cell state are batch normalized at every time step
    (see the module docstring and `BatchNormLSTMCell` for the arguments). There is no cuDNN
    path.

    In training mode each time step is normalized with the statistics of the current batch at
    that step (padded steps, per the mask, do not count), and the moving statistics of the step's
    slot are updated once per call. In inference mode, or when the layer is not trainable, the
    moving statistics are used.

    With unit scales, zero shifts, moving means 0 and moving variances `1 - epsilon`, the layer
    in inference mode computes exactly what `keras.layers.LSTM` with the same weights computes.

    Args:
        units: positive integer, dimensionality of the output space.
        activation: see `BatchNormLSTMCell` for this and the cell's other arguments.
        recurrent_activation: gate activation.
        use_bias: whether the pre-activations get a bias.
        kernel_initializer: initializer of `kernel`.
        recurrent_initializer: initializer of `recurrent_kernel`.
        bias_initializer: initializer of `bias`.
        unit_forget_bias: add 1 to the forget gate's bias at initialization.
        gamma_initializer: scales of the input and recurrent terms (0.1; a number is a
            constant).
        cell_gamma_initializer: scale of the cell state (`"ones"`).
        cell_beta_initializer: shift of the cell state (`"zeros"`).
        normalize_cell: whether to normalize the cell state.
        momentum: float in [0, 1], momentum of the moving statistics.
        epsilon: positive float added to the variance.
        max_timesteps: statistics slots; `None` for the input's time dimension (1 if unknown).
        kernel_regularizer: regularizer of `kernel`.
        recurrent_regularizer: regularizer of `recurrent_kernel`.
        bias_regularizer: regularizer of `bias`.
        activity_regularizer: regularizer of the layer's output.
        kernel_constraint: constraint of `kernel`.
        recurrent_constraint: constraint of `recurrent_kernel`.
        bias_constraint: constraint of `bias`.
        dropout: input dropout rate (training only).
        recurrent_dropout: recurrent dropout rate (training only).
        seed: seed of the dropout masks.
        return_sequences: return the whole output sequence, not only the last output.
        return_state: also return the last `h` and `c`.
        go_backwards: process the sequence backwards and return the reversed sequence.
        stateful: carry the last state of each sample over to the next batch.
        unroll: unroll the time loop (only for short sequences of known length).
        **kwargs: base layer and `keras.layers.RNN` arguments (`name`, `dtype`,
            `zero_output_for_mask`, ...).
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
        activity_regularizer: Any = None,
        kernel_constraint: Any = None,
        recurrent_constraint: Any = None,
        bias_constraint: Any = None,
        dropout: float = 0.0,
        recurrent_dropout: float = 0.0,
        seed: int | None = None,
        return_sequences: bool = False,
        return_state: bool = False,
        go_backwards: bool = False,
        stateful: bool = False,
        unroll: bool = False,
        **kwargs: Any,
    ) -> None:
        cell = BatchNormLSTMCell(
            units,
            activation=activation,
            recurrent_activation=recurrent_activation,
            use_bias=use_bias,
            kernel_initializer=kernel_initializer,
            recurrent_initializer=recurrent_initializer,
            bias_initializer=bias_initializer,
            unit_forget_bias=unit_forget_bias,
            gamma_initializer=gamma_initializer,
            cell_gamma_initializer=cell_gamma_initializer,
            cell_beta_initializer=cell_beta_initializer,
            normalize_cell=normalize_cell,
            momentum=momentum,
            epsilon=epsilon,
            max_timesteps=max_timesteps,
            kernel_regularizer=kernel_regularizer,
            recurrent_regularizer=recurrent_regularizer,
            bias_regularizer=bias_regularizer,
            kernel_constraint=kernel_constraint,
            recurrent_constraint=recurrent_constraint,
            bias_constraint=bias_constraint,
            dropout=dropout,
            recurrent_dropout=recurrent_dropout,
            seed=seed,
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="batch_norm_lstm_cell",
        )
        super().__init__(
            cell,
            return_sequences=return_sequences,
            return_state=return_state,
            go_backwards=go_backwards,
            stateful=stateful,
            unroll=unroll,
            activity_regularizer=activity_regularizer,
            **kwargs,
        )

    @classmethod
    def from_lstm(cls, lstm: keras.layers.LSTM, **bn_kwargs: Any) -> BatchNormLSTM:
        """A `BatchNormLSTM` configured like `lstm`, with its weights if it is built.

        The LSTM's arguments (units, activations, initializers, regularizers, constraints,
        dropout, `return_sequences`, `return_state`, `go_backwards`, `stateful`, ...) carry over;
        `bn_kwargs` sets the normalization arguments (`momentum`, `gamma_initializer`, ...) and
        may override the others. The name is the LSTM's unless `name=` is given. The
        normalization parameters start from their initializers, so the new layer is not
        numerically the old one until it is trained.
        """
        if not isinstance(lstm, keras.layers.LSTM):
            raise TypeError(f"`from_lstm` expects a keras.layers.LSTM, got {type(lstm).__name__}.")
        lstm_config = lstm.get_config()
        config = {key: lstm_config[key] for key in _LSTM_ARGUMENTS if key in lstm_config}
        config["name"] = lstm.name
        config.update(bn_kwargs)
        layer = cls(**config)
        if lstm.built:
            build_config = lstm.get_build_config()
            if build_config and "input_shape" in build_config:
                layer.build(build_config["input_shape"])
            else:
                layer.build((None, None, lstm.cell.kernel.shape[0]))
            for name in ("kernel", "recurrent_kernel", "bias"):
                source = getattr(lstm.cell, name)
                if source is not None:
                    getattr(layer.cell, name).assign(source)
        return layer

    def build(self, sequences_shape, initial_state_shape=None) -> None:
        if len(sequences_shape) != 3:
            raise ValueError(
                f"{type(self).__name__} expects 3-D input (batch, timesteps, features), got "
                f"shape {tuple(sequences_shape)}."
            )
        if sequences_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} needs a known feature dimension, got input shape "
                f"{tuple(sequences_shape)}."
            )
        if self.cell.max_timesteps is None:
            self.cell.max_timesteps = sequences_shape[1] or 1
        super().build(sequences_shape, initial_state_shape)
        self.input_spec = keras.layers.InputSpec(ndim=3, axes={-1: sequences_shape[-1]})

    def call(self, sequences, initial_state=None, mask=None, training=False):
        return super().call(sequences, mask=mask, training=training, initial_state=initial_state)

    def inner_loop(self, sequences, initial_state, mask, training=False):
        if keras.tree.is_nested(mask):
            mask = mask[0]
        training = bool(training) and self.trainable
        result = self._run(sequences, initial_state, mask, training, trace=False)
        if training:
            self._update_moving_statistics(result["statistics"])
        return result["last_output"], result["outputs"], result["states"]

    def normalization_trace(self, sequences, mask=None, initial_state=None, training=True):
        """The normalized terms at every time step, for inspection (no statistics update).

        Args:
            sequences: `(batch, timesteps, features)`; builds the layer if needed.
            mask: optional `(batch, timesteps)` boolean mask.
            initial_state: optional `[h_0, c_0]`.
            training: use the batch statistics (`True`) or the moving statistics.

        Returns:
            A dict of `(batch, timesteps, width)` tensors, in processing order (reversed when
            `go_backwards`): `"input"`, `"recurrent"` (`4 * units` wide: BN of `W_x x_t` and of
            `W_h h_{t-1}`), `"cell"` (`units`: BN of `c_t`), their un-normalized values
            `"input_raw"`, `"recurrent_raw"`, `"cell_raw"`, and `"output"` (`h_t`).
        """
        sequences = ops.convert_to_tensor(sequences, dtype=self.compute_dtype)
        if not self.built:
            self.build(tuple(sequences.shape))
        if initial_state is None:
            initial_state = self.get_initial_state(ops.shape(sequences)[0])
        initial_state = [ops.convert_to_tensor(s, dtype=self.compute_dtype) for s in initial_state]
        if mask is not None:
            mask = ops.convert_to_tensor(mask, dtype="bool")
        return self._run(sequences, initial_state, mask, bool(training), trace=True)["trace"]

    def _run(self, sequences, initial_state, mask, training, trace):
        """The time loop. Returns outputs, states, per-slot batch statistics and the trace."""
        cell = self.cell
        units, slots = cell.units, cell.max_timesteps
        dtype = sequences.dtype
        weights = None if mask is None else ops.cast(mask, dtype)[..., None]
        if self.go_backwards:
            sequences = ops.flip(sequences, axis=1)
            weights = None if weights is None else ops.flip(weights, axis=1)
        batch, steps = ops.shape(sequences)[0], ops.shape(sequences)[1]
        if training and 0.0 < cell.dropout < 1.0:
            keep = keras.random.dropout(
                ops.ones((batch, ops.shape(sequences)[2]), dtype),
                cell.dropout,
                seed=cell.seed_generator,
            )
            sequences = sequences * keep[:, None, :]
        recurrent_keep = None
        if training and 0.0 < cell.recurrent_dropout < 1.0:
            recurrent_keep = keras.random.dropout(
                ops.ones((batch, units), dtype), cell.recurrent_dropout, seed=cell.seed_generator
            )
        step_slots = ops.minimum(ops.arange(steps, dtype="int32"), slots - 1)

        # The input term for every step at once.
        x_raw = ops.matmul(sequences, ops.cast(cell.kernel, dtype))
        if training:
            x_mean, x_var, x_present = _moments(x_raw, weights)
        else:
            x_mean, x_var = cell._moving("input", step_slots)
        x_norm = cell._normalize(x_raw, x_mean, x_var, cell.input_gamma, None)
        step_inputs = x_norm + ops.cast(cell.bias, dtype) if cell.use_bias else x_norm
        if weights is not None:
            # One tensor, not a tuple: Keras's TF loop cannot size nested inputs of unknown length.
            step_inputs = ops.concatenate([step_inputs, weights], axis=-1)

        terms = cell._normalized_terms()[1:]  # the ones normalized inside the loop
        stat_width = 2 * units * sum(width for _, width in terms)

        def step(inputs, states):
            x_t, w_t = (inputs[:, :-1], inputs[:, -1:]) if weights is not None else (inputs, None)
            h_tm1, c_tm1, previous, t = states[:4]
            slot = ops.minimum(t, slots - 1)
            statistics, present = [], []

            def normalize(term, raw, gamma, beta):
                if training:
                    mean, var, count = _moments(raw, w_t)
                    statistics.extend([mean, var])
                    present.append(count)
                else:
                    mean, var = cell._moving(term, slot)
                return cell._normalize(raw, mean, var, gamma, beta)

            h_in = h_tm1 if recurrent_keep is None else h_tm1 * recurrent_keep
            h, c_raw, (r_norm, r_raw, c_norm) = cell._step(x_t, h_in, c_tm1, normalize)
            if w_t is None:
                h_next, c_next, output = h, c_raw, h
            else:
                valid = w_t > 0
                h_next = ops.where(valid, h, h_tm1)
                c_next = ops.where(valid, c_raw, c_tm1)
                fallback = ops.zeros_like(h) if self.zero_output_for_mask else previous
                output = ops.where(valid, h, fallback)
            new_states = [h_next, c_next, output, t + 1]
            if training:
                total, count = states[4], states[5]
                hot = ops.one_hot(slot, slots, dtype=dtype)[:, None] * present[0]
                batch_stats = ops.stop_gradient(ops.concatenate(statistics, axis=-1))
                new_states += [total + hot * batch_stats[None, :], count + hot]
            if trace:
                output = ops.concatenate([output, r_norm, r_raw, c_norm, c_raw], axis=-1)
            return output, new_states

        h_0, c_0 = initial_state[0], initial_state[1]
        states = [h_0, c_0, ops.zeros_like(h_0), ops.convert_to_tensor(0, "int32")]
        if training:
            states += [ops.zeros((slots, stat_width), dtype), ops.zeros((slots, 1), dtype)]
        # Forward over the already reversed sequence, so that step t is slot t; the mask is
        # applied in `step`, so that padding stays out of the statistics.
        last_output, outputs, final_states = run_rnn_loop(
            step,
            step_inputs,
            states,
            unroll=self.unroll,
            return_all_outputs=self.return_sequences or trace,
        )
        result = {"outputs": outputs, "states": list(final_states[:2])}
        # Keras's masked loop returns the last *kept* output, which is `previous`.
        result["last_output"] = final_states[2] if weights is not None else last_output
        if training:
            # Per-slot sums of the input term's per-step statistics (steps past the last slot
            # all land in it), next to the loop's sums for the other terms.
            hot = ops.one_hot(step_slots, slots, dtype=dtype) * x_present  # (steps, slots)
            x_stats = ops.concatenate([x_mean, x_var], axis=-1)
            x_total = ops.matmul(ops.transpose(hot), ops.stop_gradient(x_stats))
            x_count = ops.sum(hot, axis=0)[:, None]
            result["statistics"] = {"input": (x_total, x_count)}
            total, count = final_states[4], final_states[5]
            offset = 0
            for term, width in terms:
                size = 2 * width * units
                result["statistics"][term] = (total[:, offset : offset + size], count)
                offset += size
        if trace:
            sizes = [units, 4 * units, 4 * units, units, units]
            names = ["output", "recurrent", "recurrent_raw", "cell", "cell_raw"]
            pieces = ops.split(outputs, [sum(sizes[: i + 1]) for i in range(4)], axis=-1)
            result["trace"] = dict(zip(names, pieces, strict=True))
            result["trace"]["input"] = x_norm
            result["trace"]["input_raw"] = x_raw
            if not cell.normalize_cell:
                del result["trace"]["cell"]
        return result

    def _update_moving_statistics(self, statistics) -> None:
        """Fold each slot's average batch statistics into its moving statistics."""
        momentum = self.cell.momentum
        for term, (total, count) in statistics.items():
            width = ops.shape(total)[-1] // 2
            reached = count > 0
            average = total / ops.maximum(count, 1.0)
            for stat, value in (("mean", average[:, :width]), ("variance", average[:, width:])):
                variable = getattr(self.cell, f"{term}_moving_{stat}")
                value = ops.cast(value, variable.dtype)
                current = variable.value
                updated = current * momentum + value * (1.0 - momentum)
                variable.assign(ops.where(reached, updated, current))

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        del base["cell"]
        cell_config = self.cell.get_config()
        config = {name: cell_config[name] for name in _CELL_ARGUMENTS}
        config["activity_regularizer"] = keras.saving.serialize_keras_object(
            self.activity_regularizer
        )
        return {**base, **config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchNormLSTM:
        return cls(**config)


def _cell_property(name: str) -> property:
    return property(lambda self: getattr(self.cell, name), doc=f"The cell's `{name}` (read-only).")


for _name in _CELL_ARGUMENTS:
    setattr(BatchNormLSTM, _name, _cell_property(_name))
del _name
