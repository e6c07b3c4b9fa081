"""examples/fine_tuning.py at reduced size: the effect docs/fine-tuning.md claims appears.

The claim: BN that normalizes with batch statistics in training mode while its statistics are
frozen (the 2018 behaviour, variant (d)) makes training-mode and inference accuracy disagree;
Keras 3's `trainable=False` (b) and `freeze_batchnorm(train_affine=True)` (c) do not (the
same map in both modes, so the two accuracies are equal).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "fine_tuning.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("fine_tuning_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_2018_behaviour_splits_training_and_inference_and_the_fixes_do_not(example):
    results = example.run(seed=0, pretrain_epochs=6, epochs=3)
    assert set(results) == set(example.VARIANTS)

    def mode_gap(variant):
        r = results[variant]
        return r["train_training_mode"] - r["train_inference"]

    # Frozen statistics: one map in both modes, so exactly the same accuracy.
    assert mode_gap("keras-frozen") == 0.0
    assert mode_gap("frozen-affine") == 0.0
    # The 2018 behaviour: training mode sees batch statistics, inference the old ones.
    assert mode_gap("batch-stats-2018") > mode_gap("keras-frozen") + 0.05, results
    table = example.table([results])
    assert "(d) batch-stats-2018" in table and table.count("\n") == 5
