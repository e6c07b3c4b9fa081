"""What `fold_batchnorm` does with each BN call of one model: the plan, with reasons.

A BN call merges into the layer that feeds it ("into_previous") when that is a
plain linear layer whose output only this BN reads; else into the layer(s) it
feeds ("into_next"), carried through layers that an affine map passes; else
it stays as a `ChannelAffine` ("affine"), and its `FoldDecision` says why
neither side works.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

from keras_bn_tools._keras_compat import functional_graph, graph_nodes, is_functional
from keras_bn_tools.folding.kinds import (
    LINEAR_TYPES,
    Pending,
    channel_axis,
    describe,
    is_linear_activation,
    is_plain,
    through,
)
from keras_bn_tools.folding.weights import to_numpy64
from keras_bn_tools.graph import batchnorm_of
from keras_bn_tools.layers.interface import as_batchnorm, is_batchnorm

__all__ = ["FoldDecision", "Graph", "Plan", "analyse"]


@dataclass(frozen=True)
class FoldDecision:
    """What `fold_batchnorm` does with one BN layer call.

    Attributes:
        layer: the BN layer's name; for a BN inside a nested model, the path of
            model names, e.g. `"block_1/batch_normalization"`.
        action: `"into_previous"` (merged into the linear layer that feeds it),
            `"into_next"` (merged into the layer(s) it feeds, possibly through
            pooling, dropout or flatten layers) or `"affine"` (kept as a
            `ChannelAffine` layer with the same numbers).
        into: names of the layers that absorbed it (empty for `"affine"`).
        reason: for `"affine"`, why it could not be folded; else empty.
    """

    layer: str
    action: str
    into: tuple[str, ...] = ()
    reason: str = ""


class Graph:
    """The call graph of a Sequential or functional model, in execution order."""

    def __init__(self, model: keras.Model) -> None:
        # A built Sequential keeps the functional graph of its layers (checked by the caller).
        functional = functional_graph(model)
        self.nodes: list[Any] = graph_nodes(functional)
        self.producer: dict[int, Any] = {}
        self.consumers: dict[int, list[Any]] = defaultdict(list)
        for node in self.nodes:
            for tensor in node.outputs:
                self.producer[id(tensor)] = node
            for tensor in node.input_tensors:
                self.consumers[id(tensor)].append(node)
        self.calls = Counter(id(node.operation) for node in self.nodes)
        self.output_ids = {id(tensor) for tensor in functional.outputs}


@dataclass
class Plan:
    """The folding of one model: which layers go, which change, and why."""

    drop: set[int] = field(default_factory=set)  # ids of BN layers removed (folded)
    # BN layer (or wrapper) id -> (scale, offset, axis) of its ChannelAffine
    affine: dict[int, tuple[np.ndarray, np.ndarray, int]] = field(default_factory=dict)
    fold_in: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    fold_out: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    decisions: list[FoldDecision] = field(default_factory=list)


def _check_bn_affine(
    layer: keras.layers.Layer,
    scale: np.ndarray,
    offset: np.ndarray,
    shape: tuple[int | None, ...],
    axis: int,
) -> None:
    """Raise if the layer's inference output on a probe is not `scale * x + offset`."""
    # BN acts per channel, so one position per channel is enough: rows of zeros and ones.
    broadcast = [1] * len(shape)
    broadcast[axis] = -1
    probe_shape = [1] * len(shape)
    probe_shape[0], probe_shape[axis] = 2, len(scale)
    probe = np.zeros(probe_shape, dtype="float32")
    probe[1] = 1.0
    got = to_numpy64(layer(probe, training=False))
    s, t = scale.reshape(broadcast), offset.reshape(broadcast)
    eps = float(np.finfo(keras.backend.standardize_dtype(layer.compute_dtype)).eps)
    tolerance = max(1e-5, 10 * eps) * (np.abs(probe * s) + np.abs(t) + 1.0)
    if not np.all(np.abs(got - (probe * s + t)) <= tolerance):
        raise ValueError(
            f"Cannot fold {layer.name!r} ({type(layer).__name__}): its inference output is not "
            "gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta as read from its "
            "weights, so folding it would change the model."
        )


def _affine_of(layer: keras.layers.Layer, shape: tuple[int | None, ...]) -> tuple[Any, Any, int]:
    """`(s, t, axis)` of a BN layer on inputs of `shape`, checked against its output."""
    bn = as_batchnorm(layer)
    scale, offset = bn.inference_affine()
    axis = bn.channel_axis % len(shape)
    _check_bn_affine(layer, scale, offset, shape, axis)
    return scale, offset, axis


def _fold_in_reason(layer: keras.layers.Layer, graph: Graph, pending: Pending) -> str | None:
    """None if `pending` (on the layer's input) can be merged into `layer`, else why not."""
    rank = len(pending.shape)
    name = describe(layer)
    if graph.calls[id(layer)] > 1:
        return f"{name} is called more than once"
    if type(layer) not in LINEAR_TYPES:
        return f"{name} absorbs a BN only on its output side"
    if isinstance(layer, keras.layers.Dense):
        if pending.axis != rank - 1:
            return f"{name} contracts the last axis, not the BN axis {pending.axis}"
        return None
    if channel_axis(layer, rank) != pending.axis:
        return f"{name} has its channels on another axis than the BN axis {pending.axis}"
    if layer.groups != 1:
        return f"{name} is a grouped convolution"
    if layer.padding != "valid" and any(k != 1 for k in layer.kernel_size):
        return f"{name} pads its input (padding={layer.padding!r})"
    return None


def _push(
    tensor: Any, pending: Pending, graph: Graph
) -> tuple[list[tuple[keras.layers.Layer, Pending]] | None, str]:
    """Carry `pending` forward from `tensor` to layers that can absorb it.

    Returns `(targets, "")` with each absorbing layer and the map it receives,
    or `(None, reason)`.
    """
    if id(tensor) in graph.output_ids:
        return None, "its output is a model output"
    # Every tensor of the graph that is not a model output feeds some layer.
    consumers = graph.consumers[id(tensor)]
    targets: list[tuple[keras.layers.Layer, Pending]] = []
    for node in consumers:
        layer = node.operation
        several = len(node.input_tensors) != 1 or len(node.outputs) != 1
        if is_plain(layer):
            reason = _fold_in_reason(layer, graph, pending)
            if reason is None and several:
                reason = f"{describe(layer)} is called on several tensors"
            if reason is not None:
                return None, reason
            targets.append((layer, pending))
            continue
        moved, reason = through(layer, pending, node.outputs[0].shape)
        if moved is not None and several:
            moved, reason = None, f"{describe(layer)} is called on several tensors"
        if moved is None:
            return None, reason
        found, reason = _push(node.outputs[0], moved, graph)
        if found is None:
            return None, reason
        targets.extend(found)
    return targets, ""


def _previous(x: Any, axis: int, graph: Graph) -> tuple[keras.layers.Layer | None, str]:
    """The layer the BN on tensor `x` merges into from behind, or why there is none."""
    node = graph.producer.get(id(x))
    if node is None:
        return None, "its input is a model input"
    layer = node.operation
    name = describe(layer)
    if not is_plain(layer):
        return None, f"{name}, which feeds it, is not a Dense or convolution layer"
    if not is_linear_activation(layer):
        activation = keras.activations.serialize(layer.activation)
        return None, f"{name}, which feeds it, has a nonlinear activation ({activation!r})"
    if graph.calls[id(layer)] > 1:
        return None, f"{name}, which feeds it, is called more than once"
    if id(x) in graph.output_ids:
        return None, f"the output of {name}, which feeds it, is also a model output"
    if len(graph.consumers[id(x)]) > 1:
        return None, f"the output of {name}, which feeds it, also feeds other layers"
    if channel_axis(layer, len(x.shape)) != axis:
        return None, f"{name}, which feeds it, has its channels on another axis than the BN"
    return layer, ""


def analyse(graph: Graph, prefix: str, nested: bool = False) -> Plan:
    """The plan for every BN call of `graph` (and, with `nested`, of nested models')."""
    plan = Plan()
    for node in graph.nodes:
        layer = node.operation
        if nested and is_functional(layer):
            inner = analyse(Graph(layer), f"{prefix}{layer.name}/", nested=True)
            plan.decisions.extend(inner.decisions)
        elif isinstance(layer, keras.layers.Wrapper) and batchnorm_of(layer) is not None:
            _plan_wrapped(layer, node, plan, prefix)
        elif is_batchnorm(layer):
            _plan_batchnorm(layer, node, graph, plan, prefix)
    return plan


def _plan_batchnorm(
    layer: keras.layers.Layer, node: Any, graph: Graph, plan: Plan, prefix: str
) -> None:
    name = prefix + layer.name
    # The input comes first; a second tensor can only be a mask, which BN ignores at
    # inference (it only restricts the batch moments in training).
    x = node.input_tensors[0]
    shape = tuple(x.shape)
    scale, offset, axis = _affine_of(layer, shape)
    if graph.calls[id(layer)] > 1:
        plan.affine[id(layer)] = (scale, offset, axis)
        reason = "the BN layer is called more than once"
        plan.decisions.append(FoldDecision(name, "affine", (), reason))
        return
    target, before = _previous(x, axis, graph)
    if target is not None:
        plan.fold_out[id(target)] = (scale, offset)
        plan.drop.add(id(layer))
        plan.decisions.append(FoldDecision(name, "into_previous", (prefix + target.name,)))
        return
    targets, after = _push(node.outputs[0], Pending(scale, offset, axis, shape), graph)
    if targets is not None:
        for target, pending in targets:
            plan.fold_in[id(target)] = (pending.scale, pending.offset)
        plan.drop.add(id(layer))
        into = tuple(prefix + target.name for target, _ in targets)
        plan.decisions.append(FoldDecision(name, "into_next", into))
        return
    plan.affine[id(layer)] = (scale, offset, axis)
    reason = f"before: {before}; after: {after}"
    plan.decisions.append(FoldDecision(name, "affine", (), reason))


def _plan_wrapped(wrapper: keras.layers.Wrapper, node: Any, plan: Plan, prefix: str) -> None:
    """A `TimeDistributed` BN becomes a `ChannelAffine` on the same axis of the outer tensor.

    At inference `TimeDistributed` applies the BN's affine map at every time step, which is
    the same map on the outer tensor, one axis further right. It is not merged into a
    neighbour (kept simple and exact); other wrappers have no known equivalent and raise.
    """
    bn = batchnorm_of(wrapper)
    name = f"{prefix}{wrapper.name}/{bn.name}"
    if not isinstance(wrapper, keras.layers.TimeDistributed) or wrapper.layer is not bn:
        raise ValueError(
            f"Cannot fold {name!r}: a BN layer inside a {type(wrapper).__name__} wrapper has "
            "no known equivalent affine layer. fold_batchnorm handles BN inside "
            "keras.layers.TimeDistributed; move the BN out of the wrapper (or fold the model "
            "by hand)."
        )
    outer_shape = tuple(node.input_tensors[0].shape)
    inner_shape = (outer_shape[0], *outer_shape[2:])
    scale, offset, inner_axis = _affine_of(bn, inner_shape)
    if inner_axis == 0:
        raise ValueError(
            f"Cannot fold {name!r}: its BN normalizes axis 0 of each time step, the batch "
            "axis, which has no fixed size."
        )
    plan.affine[id(wrapper)] = (scale, offset, inner_axis + 1)
    reason = f"the BN is wrapped in {type(wrapper).__name__} {wrapper.name!r}"
    plan.decisions.append(FoldDecision(name, "affine", (), reason))
