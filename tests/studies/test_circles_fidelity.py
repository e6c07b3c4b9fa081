"""The default circles study lands in the reference ranges (shared/ANCHORS.md).

The anchors were measured with plain `model.fit` (Keras 3.15.1, TensorFlow
2.21, CPU) over seeds 0-10: mean ± sd over seeds of the final accuracies
(inference mode, as the tutorial's `model.evaluate`) and the median (min-max)
of the first epoch with test accuracy >= 80%. A faithful reproduction lands in
these ranges; one that does not has a bug, not "stochastic noise".

One test, so that pytest-xdist never runs the 30-run study twice.
"""

from __future__ import annotations

import numpy as np
import pytest

from keras_bn_tools.studies.circles import run_study

# config: (train acc mean, test acc mean, median epochs to 80%, (min, max) epochs to 80%)
ANCHORS = {
    "baseline": (0.832, 0.848, 26, (20, 37)),
    "bn-after": (0.833, 0.844, 16, (15, 19)),
    "bn-before": (0.825, 0.830, 34, (20, 53)),
}


@pytest.mark.slow
def test_default_study_matches_the_anchors():
    result = run_study()  # 3 configs x 10 seeds x 100 epochs, compiled engine
    assert result.configs == ("baseline", "bn-after", "bn-before")
    assert result.seeds == tuple(range(10)) and result.epochs == 100
    summary = result.summary()
    report = result.table()
    for config, (train, test, median, (low, high)) in ANCHORS.items():
        s = summary[config]
        assert s["runs"] == 10
        assert abs(s["test_accuracy"]["mean"] - test) <= 0.01, report
        assert abs(s["train_accuracy"]["mean"] - train) <= 0.01, report
        assert s["test_accuracy"]["sd"] < 0.02, report
        epochs = s["epochs_to_80"]
        assert epochs["reached"] == 10, report  # every run gets to 80%
        # The median over 10 seeds falls within the anchors' spread, near their median.
        assert low <= epochs["median"] <= high, report
        assert abs(epochs["median"] - median) <= 0.25 * median + 2, report
    medians = {c: summary[c]["epochs_to_80"]["median"] for c in ANCHORS}
    # BN after the ReLU learns fastest; BN before is not faster than no BN.
    assert medians["bn-after"] < medians["baseline"] <= medians["bn-before"], report
    assert summary["bn-after"]["epochs_to_80"]["max"] <= 20, report
    # The tutorial's remark: with BN before the ReLU the training accuracy that fit
    # reports (training mode, batch statistics) hovers around 70-75%.
    assert 0.70 <= summary["bn-before"]["last_epoch_accuracy"]["mean"] <= 0.78, report
    for run in result.runs:
        assert len(run.history["val_accuracy"]) == 100
        assert np.all(np.isfinite(run.history["loss"]))
        if run.config != "baseline":
            assert run.moving_stats["batch_normalization"]["moving_mean"].shape == (100, 50)
