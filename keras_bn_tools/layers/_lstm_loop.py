"""The time loop of `BatchNormLSTM`, and its trace.

Keras RNN cells are never told the time step and cannot update variables from inside the time
loop on every backend (JAX's `lax.scan` forbids it), so `BatchNormLSTM` runs its own loop: the
input term is normalized for all steps at once before the loop, the recurrent and cell terms
inside it. Which statistics normalize them is decided once, by a statistics source:
`BatchStatistics` (training: each step's batch statistics, summed per slot in the loop state
for the update after the loop) or `MovingStatistics` (inference: each step's slot).

`run_sequence` returns what `keras.layers.RNN.inner_loop` returns plus those per-slot
statistics; `trace_sequence` runs the same loop and returns every normalized term instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import keras
from keras import ops

from keras_bn_tools._keras_compat import run_rnn_loop
from keras_bn_tools.layers._lstm_cell import TERM_WIDTHS, Moments, StepTerms
from keras_bn_tools.ops import count_values, moments

__all__ = ["BatchStatistics", "MovingStatistics", "SequenceResult", "run_sequence"]

# The loop states every run carries, by name (the statistics sources add theirs).
_BASE_STATES = ("h", "c", "output", "step")


def masked_moments(values: Any, weights: Any) -> tuple[Moments, Any]:
    """`keras_bn_tools.ops.moments` over the batch axis, and where any sample counted.

    Args:
        values: `(batch, ..., features)`.
        weights: `None`, or 0/1 weights `(batch, ..., 1)` marking the samples that count.

    Returns:
        `(moments, present)`: the moments (float32 or wider) have the shape of `values`
        without the batch axis; `present` is 1.0 where at least one sample counted, else 0.0
        (and then the mean is 0 and the variance 1), with a trailing axis of size 1.
    """
    if weights is None:
        mean, variance = moments(values, axes=[0])
        return Moments(mean, variance), ops.ones_like(mean[..., :1])
    mask = weights[..., 0]
    mean, variance = moments(values, axes=[0], mask=mask)
    present = count_values(values, axes=[0], mask=mask)[..., :1] > 0
    return Moments(mean, ops.where(present, variance, 1.0)), ops.cast(present, mean.dtype)


class SlotAverages(NamedTuple):
    """Per slot: the average batch statistics of the steps that reached it."""

    moments: Moments  # (slots, width) each
    reached: Any  # (slots, 1) booleans


def _slot_averages(mean_sum: Any, variance_sum: Any, count: Any) -> SlotAverages:
    denominator = ops.maximum(count, 1.0)
    return SlotAverages(Moments(mean_sum / denominator, variance_sum / denominator), count > 0)


class MovingStatistics:
    """Inference: step `t` is normalized with the moving statistics of its slot."""

    state_names: tuple[str, ...] = ()

    def __init__(self, cell: Any) -> None:
        self.cell = cell

    def input_moments(self, x_raw: Any, weights: Any, step_slots: Any) -> Moments:
        return self.cell.moving_statistics("input", step_slots)

    def step_moments(self, term: str, raw: Any, weights: Any, slot: Any) -> Moments:
        return self.cell.moving_statistics(term, slot)

    def initial_states(self) -> dict[str, Any]:
        return {}

    def accumulate(self, states: dict, terms: StepTerms, weights: Any, slot: Any) -> dict:
        return {}

    def slot_averages(self, states: dict) -> dict[str, SlotAverages] | None:
        return None


class BatchStatistics:
    """Training: step `t` is normalized with the batch's statistics at step `t`.

    The statistics are summed per slot (steps past the last slot all land in it) for the
    update after the loop: the input term's at once, the loop terms' in named loop states
    (`<term>_mean_sum`, `<term>_variance_sum` `(slots, width)` and `steps_counted`
    `(slots, 1)`).
    """

    def __init__(self, cell: Any) -> None:
        self.cell = cell
        self.slots = cell.max_timesteps
        self.loop_terms = cell.normalized_terms[1:]
        self.state_names = (
            *(f"{term}_{stat}_sum" for term in self.loop_terms for stat in Moments._fields),
            "steps_counted",
        )
        self.dtype = cell.input_moving_mean.dtype  # the sums are kept in the statistics' dtype
        self._input_averages: SlotAverages | None = None

    def input_moments(self, x_raw: Any, weights: Any, step_slots: Any) -> Moments:
        batch, present = masked_moments(x_raw, weights)
        hot = ops.one_hot(step_slots, self.slots, dtype=self.dtype) * ops.cast(present, self.dtype)
        to_slots = ops.transpose(hot)  # (slots, steps)
        sums = [
            ops.matmul(to_slots, ops.stop_gradient(ops.cast(value, self.dtype))) for value in batch
        ]
        self._input_averages = _slot_averages(*sums, ops.sum(to_slots, axis=1, keepdims=True))
        return batch

    def step_moments(self, term: str, raw: Any, weights: Any, slot: Any) -> Moments:
        return masked_moments(raw, weights)[0]

    def initial_states(self) -> dict[str, Any]:
        states = {
            f"{term}_{stat}_sum": ops.zeros(
                (self.slots, TERM_WIDTHS[term] * self.cell.units), self.dtype
            )
            for term in self.loop_terms
            for stat in Moments._fields
        }
        states["steps_counted"] = ops.zeros((self.slots, 1), self.dtype)
        return states

    def accumulate(self, states: dict, terms: StepTerms, weights: Any, slot: Any) -> dict:
        dtype = self.dtype
        present = 1.0 if weights is None else ops.cast(ops.sum(weights) > 0, dtype)
        hot = ops.one_hot(slot, self.slots, dtype=dtype)[:, None] * present  # (slots, 1)
        updated = {"steps_counted": states["steps_counted"] + hot}
        for term in self.loop_terms:
            for stat, value in zip(Moments._fields, terms.moments[term], strict=True):
                name = f"{term}_{stat}_sum"
                value = ops.stop_gradient(ops.cast(value, dtype))
                updated[name] = states[name] + hot * value[None, :]
        return updated

    def slot_averages(self, states: dict) -> dict[str, SlotAverages]:
        averages = {"input": self._input_averages}
        for term in self.loop_terms:
            sums = (states[f"{term}_{stat}_sum"] for stat in Moments._fields)
            averages[term] = _slot_averages(*sums, states["steps_counted"])
        return averages


class SequenceResult(NamedTuple):
    """What the loop returns: `inner_loop`'s triple, the input term and the slot averages."""

    last_output: Any
    outputs: Any
    states: list[Any]
    input_raw: Any
    input_normalized: Any
    slot_averages: dict[str, SlotAverages] | None


def _processing_order(layer: Any, sequences: Any, mask: Any, training: bool) -> tuple:
    """`(sequences, weights, recurrent_keep)` in processing order (reversed when
    `go_backwards`): the sequences with input dropout applied, the mask as 0/1 weights
    `(batch, steps, 1)` (or `None`) and the recurrent dropout mask (or `None`), one dropout
    mask per sequence."""
    cell, dtype = layer.cell, sequences.dtype
    weights = None if mask is None else ops.cast(mask, dtype)[..., None]
    if layer.go_backwards:
        sequences = ops.flip(sequences, axis=1)
        weights = None if weights is None else ops.flip(weights, axis=1)
    batch = ops.shape(sequences)[0]
    keep = []
    for rate, width in (
        (cell.dropout, ops.shape(sequences)[2]),
        (cell.recurrent_dropout, cell.units),
    ):
        if training and 0.0 < rate < 1.0:
            ones = ops.ones((batch, width), dtype)
            keep.append(keras.random.dropout(ones, rate, seed=cell.seed_generator))
        else:
            keep.append(None)
    if keep[0] is not None:
        sequences = sequences * keep[0][:, None, :]
    return sequences, weights, keep[1]


def run_sequence(
    layer: Any,
    sequences: Any,
    initial_state: list[Any],
    mask: Any,
    *,
    training: bool,
    emit: Callable[[Any, StepTerms], Any] | None = None,
) -> SequenceResult:
    """Runs `layer` (a `BatchNormLSTM`) over `sequences`; no variable changes.

    Args:
        layer: the layer, whose cell and RNN options (`go_backwards`, `unroll`,
            `return_sequences`, `zero_output_for_mask`) are used.
        sequences: `(batch, timesteps, features)`.
        initial_state: `[h_0, c_0]`.
        mask: `None` or `(batch, timesteps)` booleans.
        training: batch statistics and dropout (`True`) or moving statistics.
        emit: `emit(output, terms) -> tensor`, what each step outputs (default: `h_t`); one
            tensor, because Keras's TensorFlow loop cannot size nested outputs.
    """
    cell = layer.cell
    source = BatchStatistics(cell) if training else MovingStatistics(cell)
    sequences, weights, recurrent_keep = _processing_order(layer, sequences, mask, training)
    step_slots = ops.minimum(
        ops.arange(ops.shape(sequences)[1], dtype="int32"), cell.max_timesteps - 1
    )

    # The input term for every step at once.
    x_raw = cell.input_projection(sequences)
    x_norm = cell.normalize("input", x_raw, source.input_moments(x_raw, weights, step_slots))
    step_inputs = cell.add_bias(x_norm)
    if weights is not None:
        # One tensor, not a tuple: Keras's TF loop cannot size nested inputs of unknown length.
        step_inputs = ops.concatenate([step_inputs, weights], axis=-1)

    names = _BASE_STATES + source.state_names
    step = _step_function(layer, source, names, weights is not None, recurrent_keep, emit)
    h_0, c_0 = initial_state[0], initial_state[1]
    step_0 = ops.convert_to_tensor(0, "int32")
    initial = {"h": h_0, "c": c_0, "output": ops.zeros_like(h_0), "step": step_0}
    initial.update(source.initial_states())
    # Forward over the already reversed sequence, so that step t is slot t; the mask is
    # applied in the step, so that padding stays out of the statistics.
    last_output, outputs, final = run_rnn_loop(
        step,
        step_inputs,
        [initial[name] for name in names],
        unroll=layer.unroll,
        return_all_outputs=layer.return_sequences or emit is not None,
    )
    final = dict(zip(names, final, strict=True))
    # Keras's masked loop returns the last *kept* output, which is the `output` state.
    last = final["output"] if weights is not None else last_output
    return SequenceResult(
        last, outputs, [final["h"], final["c"]], x_raw, x_norm, source.slot_averages(final)
    )


def _step_function(layer, source, names, masked, recurrent_keep, emit) -> Callable:
    """`step(inputs_t, states) -> (output_t, new_states)` for `run_rnn_loop`."""
    cell, slots = layer.cell, layer.cell.max_timesteps

    def step(inputs, flat_states):
        state = dict(zip(names, flat_states, strict=True))
        x_t, w_t = (inputs[:, :-1], inputs[:, -1:]) if masked else (inputs, None)
        slot = ops.minimum(state["step"], slots - 1)
        h_in = state["h"] if recurrent_keep is None else state["h"] * recurrent_keep
        terms = cell.recurrent_step(
            x_t, h_in, state["c"], lambda term, raw: source.step_moments(term, raw, w_t, slot)
        )
        new = source.accumulate(state, terms, w_t, slot)
        new["step"] = state["step"] + 1
        if w_t is None:
            new.update(h=terms.h, c=terms.c, output=terms.h)
        else:
            valid = w_t > 0
            fallback = ops.zeros_like(terms.h) if layer.zero_output_for_mask else state["output"]
            new["h"] = ops.where(valid, terms.h, state["h"])
            new["c"] = ops.where(valid, terms.c, state["c"])
            new["output"] = ops.where(valid, terms.h, fallback)
        output = new["output"] if emit is None else emit(new["output"], terms)
        return output, [new[name] for name in names]

    return step


def trace_sequence(
    layer: Any, sequences: Any, initial_state: list[Any], mask: Any, *, training: bool
) -> dict[str, Any]:
    """The normalized terms at every step (see `BatchNormLSTM.normalization_trace`)."""
    cell = layer.cell
    units = cell.units
    widths = {"output": units, "recurrent": 4 * units, "recurrent_raw": 4 * units}
    if cell.normalize_cell:
        widths["cell"] = units
    widths["cell_raw"] = units

    def emit(output: Any, terms: StepTerms) -> Any:
        values = {"output": output, "cell_raw": terms.c, **terms._asdict()}
        return ops.concatenate([values[name] for name in widths], axis=-1)

    result = run_sequence(layer, sequences, initial_state, mask, training=training, emit=emit)
    ends = [sum(list(widths.values())[: i + 1]) for i in range(len(widths) - 1)]
    trace = dict(zip(widths, ops.split(result.outputs, ends, axis=-1), strict=True))
    trace["input"] = result.input_normalized
    trace["input_raw"] = result.input_raw
    return trace
