"""How tests/layers/data/momentum_bn_v0_1.{keras,npz} were written, kept for the record:
run with keras-bn-tools 0.1 (commit 38616c7, before MomentumBatchNormalization kept its
momentum and last batch statistics out of `weights`), as
`PYTHONPATH=<0.1 checkout> python3 make_momentum_bn_v0_1.py tests/layers/data/momentum_bn_v0_1`.
Every variable of each MomentumBatchNormalization was saved then (Keras's default)."""

import sys

import keras
import numpy as np

import keras_bn_tools
from keras_bn_tools.layers import MomentumBatchNormalization

print(keras_bn_tools.__file__)
out = sys.argv[1]
keras.utils.set_random_seed(0)
model = keras.Sequential(
    [
        keras.Input((3,)),
        keras.layers.Dense(4, name="dense"),
        MomentumBatchNormalization(name="plain"),
        MomentumBatchNormalization(
            momentum=None,
            debias=True,
            renorm=True,
            renorm_clipping={"rmax": 2.0},
            name="cumulative",
        ),
    ]
)
model.compile("sgd", "mse")
rng = np.random.default_rng(0)
x = rng.normal(2.0, 3.0, size=(24, 3)).astype("float32")
model.fit(
    x, rng.normal(size=(24, 4)).astype("float32"), batch_size=8, epochs=1, verbose=0, shuffle=False
)
model.save(out + ".keras")
probe = rng.normal(size=(5, 3)).astype("float32")
expected = {"probe": probe, "inference": keras.ops.convert_to_numpy(model(probe, training=False))}
for layer in model.layers[1:]:
    for v in layer.weights:
        expected[f"{layer.name}/{v.name}"] = np.asarray(v.numpy())
np.savez(out + ".npz", **expected)
print(sorted(expected))
