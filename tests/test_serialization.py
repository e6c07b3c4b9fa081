"""`import keras_bn_tools` registers every serializable class (issue 14).

Models holding each class are saved here and loaded in a fresh process that imports only
`keras` and `keras_bn_tools`, with `safe_mode=True`; the predictions must be identical.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_bn_tools import fold_batchnorm
from keras_bn_tools.layers import (
    SERIALIZABLE_CLASSES,
    BatchNormLSTM,
    BatchNormLSTMCell,
    ChannelAffine,
    FrozenBatchNormalization,
    MomentumBatchNormalization,
)

pytestmark = pytest.mark.backend_agnostic


def _models() -> dict[str, tuple[keras.Model, np.ndarray]]:
    rng = np.random.default_rng(0)
    flat = rng.normal(size=(4, 3)).astype("float32")
    sequences = rng.normal(size=(4, 5, 3)).astype("float32")

    momentum = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4), MomentumBatchNormalization(debias=True)]
    )
    momentum(flat, training=True)  # moving statistics away from their initial values

    lstm = keras.Sequential([keras.Input((5, 3)), BatchNormLSTM(4, max_timesteps=5)])
    lstm(sequences, training=True)

    cell = keras.Sequential([keras.Input((5, 3)), keras.layers.RNN(BatchNormLSTMCell(4))])

    # A BN after an activation, at the output: it stays as a ChannelAffine.
    bn = keras.Sequential(
        [
            keras.Input((3,)),
            keras.layers.Dense(4, activation="relu"),
            keras.layers.BatchNormalization(),
        ]
    )
    bn(flat, training=True)
    folded = fold_batchnorm(bn)
    frozen_bn = FrozenBatchNormalization.from_batchnorm(bn.layers[1])
    frozen = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), frozen_bn])
    frozen.layers[0].set_weights(bn.layers[0].get_weights())
    return {
        "momentum": (momentum, flat),
        "lstm": (lstm, sequences),
        "cell": (cell, sequences),
        "folded": (folded, flat),
        "frozen": (frozen, flat),
    }


def test_every_class_is_covered_by_a_saved_model():
    classes = set()
    for model, _ in _models().values():
        for layer in model.layers:
            classes.add(type(layer))
            classes.update(type(inner) for inner in getattr(layer, "_layers", []))
            cell = getattr(layer, "cell", None)
            classes.add(type(cell))
    assert set(SERIALIZABLE_CLASSES) <= classes, set(SERIALIZABLE_CLASSES) - classes


def test_fresh_process_with_only_keras_and_keras_bn_tools_loads_every_class(tmp_path):
    expected = {}
    for name, (model, x) in _models().items():
        model.save(tmp_path / f"{name}.keras")
        np.save(tmp_path / f"{name}_x.npy", x)
        expected[name] = keras.ops.convert_to_numpy(model(x, training=False))
    assert ChannelAffine in {type(layer) for layer in _models()["folded"][0].layers}

    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import keras_bn_tools
        import keras

        folder = {str(tmp_path)!r}
        for name in {sorted(expected)!r}:
            model = keras.saving.load_model(f"{{folder}}/{{name}}.keras", safe_mode=True)
            x = np.load(f"{{folder}}/{{name}}_x.npy")
            out = keras.ops.convert_to_numpy(model(x, training=False))
            np.save(f"{{folder}}/{{name}}_out.npy", out)
        assert not any(m.startswith("keras_bn_tools.") and m.endswith(("folding", "rewrite"))
                       for m in sys.modules), "loading needed a feature module"
        """
    )
    _run_fresh_python(script)
    for name, want in expected.items():
        np.testing.assert_array_equal(np.load(tmp_path / f"{name}_out.npy"), want, err_msg=name)


def _run_fresh_python(script: str) -> None:
    """Run `script` in a fresh interpreter and fail with its stderr if it fails."""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_registration_also_when_keras_is_imported_first():
    script = (
        "import keras\n"
        "import keras_bn_tools\n"
        "names = ['MomentumBatchNormalization', 'BatchNormLSTM', 'BatchNormLSTMCell',"
        " 'ChannelAffine']\n"
        "for name in names:\n"
        "    assert keras.saving.get_registered_object('keras_bn_tools>' + name), name\n"
    )
    _run_fresh_python(script)


def test_import_keras_bn_tools_registers_every_layer_without_an_import_hook():
    # Registration comes from the classes' decorators as `keras_bn_tools.layers` imports;
    # the package installs no `sys.meta_path` finder (issue 22).
    script = (
        "import sys\n"
        "finders = list(sys.meta_path)\n"
        "import keras_bn_tools\n"
        "import keras\n"
        "from keras_bn_tools.layers import SERIALIZABLE_CLASSES\n"
        "for cls in SERIALIZABLE_CLASSES:\n"
        "    name = 'keras_bn_tools>' + cls.__name__\n"
        "    assert keras.saving.get_registered_object(name) is cls, name\n"
        "added = [f for f in sys.meta_path if f not in finders]\n"
        "assert not [f for f in added if 'keras_bn_tools' in type(f).__module__], added\n"
    )
    _run_fresh_python(script)


def test_registration_when_tensorflow_imports_keras():
    # TensorFlow probes for Keras with importlib.util.find_spec, then imports it.
    script = (
        "import keras_bn_tools\n"
        "import tensorflow\n"
        "import keras\n"
        "assert keras.saving.get_registered_object('keras_bn_tools>MomentumBatchNormalization')\n"
    )
    _run_fresh_python(script)
