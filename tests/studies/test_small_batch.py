"""The small-batch protocol: configs, models, training- vs inference-mode accuracy."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bn_tools.layers import MomentumBatchNormalization
from keras_bn_tools.studies import PROTOCOLS, small_batch
from keras_bn_tools.studies.small_batch import (
    BATCH_SIZES,
    NORMALIZATIONS,
    build_model,
    learning_rate,
    parse_config,
    run_small_batch,
    training_mode_accuracy,
)


def test_configs_cover_every_normalization_at_every_batch_size():
    protocol = PROTOCOLS["small-batch"]
    assert protocol is small_batch.PROTOCOL
    assert len(protocol.configs) == len(NORMALIZATIONS) * len(BATCH_SIZES) == 25
    assert parse_config("bn-b2") == ("bn", 2)
    assert parse_config("renorm-b32") == ("renorm", 32)
    for bad in ("bn-b3", "ln-b2", "bn", "bn-bx"):
        with pytest.raises(ValueError, match="small-batch config"):
            parse_config(bad)
    assert learning_rate(2) == pytest.approx(learning_rate(32) / 16)
    config = protocol.configs["bn-b2"]
    assert config.batch_size == 2
    assert float(config.optimizer().learning_rate) == pytest.approx(learning_rate(2))


def test_each_normalization_is_the_layer_it_names():
    def norms(config):
        return [layer for layer in build_model(config).layers if layer.name.startswith("norm")]

    assert norms("none-b2") == []
    (bn, _) = norms("bn-b2")
    assert type(bn) is keras.layers.BatchNormalization
    ghost, _ = norms("ghost-b8")
    assert isinstance(ghost, MomentumBatchNormalization) and ghost.virtual_batch_size == 4
    renorm, _ = norms("renorm-b4")
    assert isinstance(renorm, MomentumBatchNormalization) and renorm.renorm
    gn, _ = norms("gn-b16")
    assert isinstance(gn, keras.layers.GroupNormalization) and gn.groups == 4
    assert build_model("bn-b2").output_shape == (None, 10)


def test_training_mode_accuracy_against_a_hand_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(11, 3)).astype("float32")
    y = rng.integers(0, 2, size=11)
    bn = keras.layers.BatchNormalization(center=False, scale=False)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="d"), bn])
    kernel, bias = model.get_layer("d").get_weights()
    before = [keras.ops.convert_to_numpy(v).copy() for v in bn.non_trainable_variables]
    train_acc, infer_acc = training_mode_accuracy(model, x, y, batch_size=4)
    # Rows 8..10 do not fill a batch of 4 and are left out.
    logits = x[:8] @ kernel + bias
    correct_train = correct_infer = 0
    for start in (0, 4):
        z = logits[start : start + 4]
        z_train = (z - z.mean(0)) / np.sqrt(z.var(0) + bn.epsilon)
        z_infer = z / np.sqrt(1 + bn.epsilon)  # moving mean 0, variance 1
        correct_train += int((z_train.argmax(1) == y[start : start + 4]).sum())
        correct_infer += int((z_infer.argmax(1) == y[start : start + 4]).sum())
    assert (train_acc, infer_acc) == (correct_train / 8, correct_infer / 8)
    for old, new in zip(before, bn.non_trainable_variables, strict=True):
        np.testing.assert_array_equal(old, keras.ops.convert_to_numpy(new))


@pytest.mark.slow
def test_runner_reports_accuracy_and_gap_per_batch_size(tmp_path):
    result = run_small_batch(configs=["gn-b16", "bn-b16", "none-b32"], epochs=1)
    summary = result.summary()
    assert set(summary) == {"gn", "bn", "none"}
    assert set(summary["gn"]) == {16} and set(summary["none"]) == {32}
    # GroupNorm and no normalization compute the same thing in both modes.
    assert summary["gn"][16]["gap"] == 0.0 and summary["none"][32]["gap"] == 0.0
    study = result.study
    assert [r.config for r in study.runs] == ["gn-b16", "bn-b16", "none-b32"]
    assert [run.settings["batch_size"] for run in study.runs] == [16, 16, 32]
    for run in study.runs:
        assert summary[parse_config(run.config)[0]][parse_config(run.config)[1]][
            "test_accuracy"
        ] == pytest.approx(run.final_test_accuracy)
    result.write(tmp_path)
    assert (tmp_path / "small_batch.png").stat().st_size > 1000
    assert "| gn |" in (tmp_path / "small_batch.md").read_text()


def test_batch_size_option_refused():
    with pytest.raises(ValueError, match="batch size per config"):
        run_small_batch(configs=["bn-b2"], batch_size=8)
