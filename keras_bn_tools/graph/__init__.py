"""The one graph module: find the BN layers of a model and clone it with replacements.

Everything in this package that looks into a model or rebuilds one goes through
here: `batchnorm_layers` (public) finds BN layers, nested models and wrappers
included, through `find_layers`, the one walk over a model's layers (the
activation tracker finds nonlinearities with it); `clone_model(model, policy)`
rebuilds a Sequential or functional model, layer by layer, asking a `Policy`
what becomes of each layer. Inserting BN
(`rewrite.insert_batchnorm`), converting BN classes (`convert.convert_batchnorm`),
folding BN away (`folding.fold_batchnorm`) and freezing BN are each one policy.

What the cloning guarantees, whatever the policy:

- the copy has `model`'s kind (Sequential in, Sequential out), name, input names
  and dtypes, `trainable` flag and compile config (when `model` was compiled);
- every layer the policy keeps is re-created from its config and given the
  original's weights, so `model` itself is never changed or shared;
- a nested Sequential or functional model is cloned the same way with
  `policy.nested(inner)` (the policy sees its layers, named by path);
- a wrapper around a BN layer (`TimeDistributed(BatchNormalization())`) is
  re-created around the policy's replacement of the BN when the policy replaces
  the wrapped layer: "this is a BN layer, wrapped or not" is decided here once
  (`batchnorm_of`), not in every feature.

Writing a policy
----------------

Subclass `Policy` and override what you need:

- `replace(layer)`: return `None` to keep a copy of `layer`, `DROP` to remove
  the call (its output becomes its single input), a new layer, or a
  `Replacement(layer, weights)` whose `weights` (NumPy arrays, cast to each
  variable's dtype) are assigned once the new model has built the layer.
- `insert_after(original)`: layers to call right after `original`'s copy (on
  its first output); a layer called several times gets its inserted layers once,
  shared the same way.
- `nested(model)`: the policy for a nested model's layers (default: `self`).

For the usual case, "replace every BN layer", `BatchNormPolicy(replace_bn)`
is enough: `replace_bn(bn)` gets every BN layer (Keras's, this package's, and
those inside wrappers, which are re-wrapped), and returns its replacement or
`None`. Use `copy_layer(layer, config=..., weights=...)` to make a replacement
from a (changed) config with the original's (or given) weights.

Example (a user-level freeze of every BN's statistics):

```python
import keras
from keras_bn_tools import graph

def freeze(bn):
    config = {**bn.get_config(), "trainable": False}
    return graph.copy_layer(bn, config=config)

model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization()])
frozen = graph.clone_model(model, graph.BatchNormPolicy(freeze))
```

Modules: `find` (finding and keying BN layers), `policies` (`Policy` and the
helpers replacements are made with), `clone` (`clone_model`).
"""

from __future__ import annotations

from keras_bn_tools.graph.clone import check_graph_model, clone_model
from keras_bn_tools.graph.find import (
    BN_STATISTICS,
    batchnorm_layers,
    batchnorm_of,
    find_layers,
    keyed_batchnorm_layers,
    layer_keys,
    num_inputs,
    statistic_variables,
)
from keras_bn_tools.graph.policies import (
    DROP,
    BatchNormPolicy,
    CallablePolicy,
    Policy,
    Replacement,
    copy_layer,
    rewrap,
)

__all__ = [
    "BN_STATISTICS",
    "DROP",
    "BatchNormPolicy",
    "CallablePolicy",
    "Policy",
    "Replacement",
    "batchnorm_layers",
    "batchnorm_of",
    "check_graph_model",
    "clone_model",
    "copy_layer",
    "find_layers",
    "keyed_batchnorm_layers",
    "layer_keys",
    "num_inputs",
    "rewrap",
    "statistic_variables",
]
