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
all steps. The moving statistics are updated once per call, after the time loop
(`moving = momentum * moving + (1 - momentum) * batch_statistic`, for every slot the call
reached).

The parts: `BatchNormLSTMCell` (weights, one step, the statistics update) and its arguments'
`LSTMCellConfig` live in private modules, as does the time loop (`_lstm_loop`).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from keras_bn_tools.layers._lstm_cell import BatchNormLSTMCell, config_property
from keras_bn_tools.layers._lstm_config import LSTMCellConfig
from keras_bn_tools.layers._lstm_loop import run_sequence, trace_sequence

__all__ = ["BatchNormLSTM", "BatchNormLSTMCell"]

# The keras.layers.RNN arguments of BatchNormLSTM's constructor.
_RNN_ARGUMENTS = ("return_sequences", "return_state", "go_backwards", "stateful", "unroll")

# keras.layers.LSTM arguments that from_lstm carries over: the cell's less the normalization
# options, and the RNN layer's.
_LSTM_ARGUMENTS = (
    *LSTMCellConfig.names(normalization=False),
    "activity_regularizer",
    *_RNN_ARGUMENTS,
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

    Call arguments:
        sequences: `(batch, timesteps, features)`.
        initial_state: optional `[h_0, c_0]`.
        mask: optional `(batch, timesteps)` booleans; masked steps keep the state and stay
            out of the statistics.
        training: batch statistics (and dropout) or the moving statistics.

    Example:

    ```python
    x = np.random.default_rng(0).normal(size=(8, 5, 3)).astype("float32")
    layer = BatchNormLSTM(4, return_sequences=True)
    layer(x, training=True).shape  # (8, 5, 4), normalized with this batch's statistics
    ```

    Reference:
        Cooijmans, Ballas, Laurent, Gulcehre and Courville, "Recurrent Batch Normalization",
        ICLR 2017 (arXiv:1603.09025).
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
        arguments = locals()
        cell = BatchNormLSTMCell(
            **{name: arguments[name] for name in LSTMCellConfig.names()},  # checked there
            dtype=kwargs.get("dtype"),
            trainable=kwargs.get("trainable", True),
            name="batch_norm_lstm_cell",
        )
        super().__init__(
            cell,
            activity_regularizer=activity_regularizer,
            **{name: arguments[name] for name in _RNN_ARGUMENTS},
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
        result = run_sequence(self, sequences, initial_state, mask, training=training)
        if training:
            for term, average in result.slot_averages.items():
                self.cell.update_moving_statistics(term, average.moments, average.reached)
        return result.last_output, result.outputs, result.states

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
        return trace_sequence(self, sequences, initial_state, mask, training=bool(training))

    def get_config(self) -> dict[str, Any]:
        base = super().get_config()
        del base["cell"]
        config = self.cell.config.get_config()
        config["activity_regularizer"] = keras.saving.serialize_keras_object(
            self.activity_regularizer
        )
        return {**base, **config}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BatchNormLSTM:
        return cls(**config)


for _name in LSTMCellConfig.names():
    setattr(BatchNormLSTM, _name, config_property(_name, lambda layer: layer.cell.config))
del _name
