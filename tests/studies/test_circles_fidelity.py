"""The default circles study lands in the reference ranges (shared/ANCHORS.md).

The reference is the tutorial's protocol, a fresh order of the training rows
every epoch, measured with plain `model.fit` fed by a `keras.utils.PyDataset`
(Keras 3.15.1, TensorFlow 2.21, seeds 0-10): test accuracy 0.844 / 0.849 /
0.830, epochs to 80% median 24 / 16 / 27. A faithful reproduction lands in
these ranges; one that does not has a bug, not "stochastic noise".

One test, so that pytest-xdist never runs the 30-run study twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_bn_tools.studies import run_study

# config: (train acc mean, test acc mean) of the reference table
ANCHORS = {"baseline": (0.831, 0.844), "bn-after": (0.836, 0.849), "bn-before": (0.822, 0.830)}


@pytest.mark.slow
def test_default_study_matches_the_anchors():
    result = run_study()  # circles: 3 configs x 10 seeds x 100 epochs, shuffle="epoch"
    assert result.configs == ("baseline", "bn-after", "bn-before")
    assert tuple(result.seeds) == tuple(range(10)) and result.epochs == 100
    assert result.shuffle == "epoch"
    summary, report = result.summary(), result.table()
    for config, (train, test) in ANCHORS.items():
        s = summary[config]
        assert s["runs"] == 10
        assert abs(s["test_accuracy"]["mean"] - test) <= 0.012, report
        assert abs(s["train_accuracy"]["mean"] - train) <= 0.012, report
        assert s["epochs_to_target"]["reached"] == 10, report  # every run gets to 80%
    medians = {c: summary[c]["epochs_to_target"]["median"] for c in ANCHORS}
    # BN after the ReLU learns fastest: within 20 epochs, ahead of no BN.
    assert medians["bn-after"] <= 19 and medians["bn-after"] < medians["baseline"], report
    # BN before the ReLU learns "perhaps at the same pace" as no BN (reference: 27 vs 24).
    assert medians["bn-before"] >= medians["bn-after"], report
    # The tutorial's remark: with BN before the ReLU, fit's (training-mode) accuracy hovers
    # around 70-75%.
    assert 0.70 <= summary["bn-before"]["last_epoch_accuracy"]["mean"] <= 0.78, report
    for run in result.runs:
        assert np.all(np.isfinite(run.history["loss"]))
        if run.config != "baseline":
            assert run.moving_stats["batch_normalization"]["moving_mean"].shape == (100, 50)
