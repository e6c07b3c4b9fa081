"""`Protocol.metric`: every metric scored from the models' predictions, the same number
from every engine, exact target hits, and every misfit refused before training."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sklearn import metrics as sk
from study_protocols import BLOBS, ONE_HOT, REGRESSION

from keras_bn_tools.studies import Protocol, StudyResult, run_study
from keras_bn_tools.studies.engines import COMPILED_BACKENDS
from keras_bn_tools.studies.metrics import METRICS, get_metric
from keras_bn_tools.studies.runs import RunResult

pytestmark = pytest.mark.backend_agnostic


def _backend() -> str:
    import keras

    return keras.backend.backend()


def _engines() -> list[str]:
    return ["fit", "compiled"] if _backend() in COMPILED_BACKENDS else ["fit"]


# --------------------------------------------------------------------------- NumPy


def _reference(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn's figure for each metric, from the same labels and predictions."""
    t, p = y_true.reshape(len(y_true), -1), y_pred.reshape(len(y_pred), -1).astype("float64")
    if name == "binary_accuracy":
        return sk.accuracy_score((t > 0.5).ravel(), (p > 0.5).ravel())
    if name == "sparse_categorical_accuracy":
        return sk.accuracy_score(t.ravel(), p.argmax(-1))
    if name == "categorical_accuracy":
        return sk.accuracy_score(t.argmax(-1), p.argmax(-1))
    if name == "mean_squared_error":
        return sk.mean_squared_error(t, p)
    if name == "mean_absolute_error":
        return sk.mean_absolute_error(t, p)
    return sk.roc_auc_score(t.ravel() > 0.5, p.ravel())


@given(
    name=st.sampled_from(sorted(METRICS)),
    rows=st.integers(2, 40),
    units=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_every_metric_equals_sklearns(name, rows, units, seed):
    rng = np.random.default_rng(seed)
    units = 1 if name == "auc" else max(units, 2 if "categorical" in name else 1)
    pred = rng.random((rows, units)).astype("float32")
    if name == "sparse_categorical_accuracy":
        true = rng.integers(0, units, rows)
    elif name == "categorical_accuracy":
        true = np.eye(units)[rng.integers(0, units, rows)]
    elif name in ("binary_accuracy", "auc"):
        true = rng.integers(0, 2, (rows, units)).astype("float32")
        true[0], true[-1] = 0, 1  # both classes
    else:
        true = rng.normal(size=(rows, units)).astype("float32")
    assert get_metric(name).score(true, pred) == pytest.approx(_reference(name, true, pred),
                                                               rel=1e-12)  # fmt: skip


def test_accuracies_are_integer_counts():
    """4 of 5 right is exactly 0.8, not float32's 0.79999995 or 0.8000000119."""
    pred = np.array([[0.9], [0.8], [0.1], [0.7], [0.2]], "float32")
    true = np.array([1, 1, 0, 1, 1], "float32")
    assert get_metric("binary_accuracy").score(true, pred) == 0.8
    assert get_metric("mae").mode == "min" and get_metric("auc").bounds == (0.0, 1.0)


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"metric": "f1"}, ValueError, r"Protocol 'blobs': unknown `metric` 'f1'; allowed: .*auc"),
        ({"metric": "mae", "mode": "max"}, ValueError, r"`mode`='max' contradicts.*'min' or None"),
        ({"mode": "min"}, ValueError, r"`mode`='min' contradicts `metric`='accuracy'"),
        ({"mode": "up"}, ValueError, r"`mode` must be 'max', 'min' or None"),
        ({"target": 1.5}, ValueError, r"`target` must be a number in \[0, 1\].*'accuracy'"),
        ({"metric": "auc", "target": -0.1}, ValueError, r"\[0, 1\]"),
        ({"metric": "mse", "target": -1.0}, ValueError, r"\[0, inf\]"),
        ({"metric": "mse", "target": float("inf")}, ValueError, "target"),
        ({"metric": "mae", "accuracy": "binary"}, ValueError, "`accuracy`='binary' and `metric`"),
    ],
)
def test_a_metric_that_cannot_be_is_refused_at_construction(change, error, match):
    with pytest.raises(error, match=match):
        dataclasses.replace(BLOBS, **change)
    assert dataclasses.replace(BLOBS, metric="mse", target=40.0).direction == "min"


def _never(name):
    def optimizer():
        raise AssertionError(f"{name}: training started")

    return optimizer


@pytest.mark.parametrize(
    ("protocol", "change", "match"),
    [
        (BLOBS, {"metric": "categorical_accuracy"}, r"labels have 1 value\(s\) per row.*3"),
        (BLOBS, {"metric": "binary_accuracy"}, "labels have 1 value"),
        (BLOBS, {"metric": "mae"}, "labels have 1 value"),
        (BLOBS, {"metric": "auc"}, "labels have 1 value"),
        (ONE_HOT, {"metric": "sparse_categorical_accuracy"}, "one-hot labels need"),
        (REGRESSION, {"metric": "accuracy", "target": 0.5}, "not all 0 or 1"),
        (REGRESSION, {"metric": "auc", "target": 0.5}, "not all 0 or 1"),
        (REGRESSION, {"metric": "sparse_categorical_accuracy", "target": 0.5}, "one output per"),
    ],
)
def test_labels_that_fit_neither_metric_nor_output_are_refused_before_training(
    protocol, change, match
):
    bad = dataclasses.replace(protocol, optimizer=_never(protocol.name), **change)
    with pytest.raises(ValueError, match=rf"Protocol '{protocol.name}': `metric`=.*{match}") as e:
        run_study(bad, seeds=[0], epochs=1, engine="fit")
    assert "Allowed: 'binary_accuracy'" in str(e.value)


def test_a_loss_that_does_not_take_the_labels_is_refused_before_training():
    bad = dataclasses.replace(ONE_HOT, loss="sparse_categorical_crossentropy",
                              optimizer=_never("one-hot"))  # fmt: skip
    with pytest.raises(ValueError, match=r"Protocol 'one-hot': `loss`='sparse_categorical"):
        run_study(bad, seeds=[0], epochs=1, engine="fit")


# --------------------------------------------------------------------------- engines


def _assert_same_numbers(a: RunResult, b: RunResult, *, exact: bool):
    assert a.metric == b.metric and a.history.keys() == b.history.keys()
    for name, values in a.history.items():
        if exact and not name.endswith("loss"):
            np.testing.assert_array_equal(values, b.history[name], err_msg=name)
        else:
            np.testing.assert_allclose(values, b.history[name], rtol=1e-4, atol=1e-5,
                                       err_msg=name)  # fmt: skip
    assert a.epochs_to_target == b.epochs_to_target


@pytest.mark.skipif(_backend() not in COMPILED_BACKENDS, reason="no compiled engine here")
@pytest.mark.parametrize(
    ("protocol", "metric", "exact"),
    [
        (ONE_HOT, "accuracy", True),
        (REGRESSION, "mae", False),
        (REGRESSION, "mse", False),
        ("circles", "auc", False),
    ],
)
def test_engines_agree_on_every_metric(protocol, metric, exact):
    from keras_bn_tools.studies import PROTOCOLS

    target = {"accuracy": 0.6, "mae": 2.0, "mse": 5.0, "auc": 0.7}[metric]
    config, epochs = ("bn", None) if protocol != "circles" else ("bn-after", 3)
    protocol = PROTOCOLS[protocol] if isinstance(protocol, str) else protocol
    protocol = dataclasses.replace(protocol, metric=metric, target=target, accuracy="auto")
    kwargs = {"seeds": [0, 1], "epochs": epochs}
    fit = run_study(protocol, [config], engine="fit", **kwargs)
    compiled = run_study(protocol, [config], engine="compiled", jit_compile=True, **kwargs)
    assert fit.metric == compiled.metric == ("accuracy" if metric == "accuracy" else metric)
    for a, b in zip(fit.runs, compiled.runs, strict=True):
        _assert_same_numbers(a, b, exact=exact)
    if metric == "accuracy":
        assert fit.metadata["metric_name"] == "categorical_accuracy"
        assert fit.metadata["accuracy"] == "categorical"


def _still(config: str):
    """A linear model that predicts exactly 0 and never moves (learning rate 0)."""
    import keras

    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(1, kernel_initializer="zeros")])


def _frozen_sgd():
    import keras

    return keras.optimizers.SGD(learning_rate=0.0)


@pytest.mark.parametrize("engine", _engines())
def test_an_exact_target_hit_is_the_same_epoch_in_every_engine(engine):
    """The predictions are exactly 0, so the test MAE is exactly mean(|y|) (float64):
    with that as the target, every engine reports epoch 1."""
    (_, _), (_, test_y) = REGRESSION.load_data()
    target = float(np.mean(np.abs(test_y.astype("float64"))))
    still = dataclasses.replace(REGRESSION, build=_still, optimizer=_frozen_sgd, target=target)
    run = run_study(still, ["plain"], seeds=[0], epochs=2, engine=engine).runs[0]
    assert run.history["val_mae"].tolist() == [target, target]
    assert run.final_test_metric == target and run.epochs_to_target == 1
    below = dataclasses.replace(still, target=np.nextafter(target, 0.0))
    assert (
        run_study(below, ["plain"], seeds=[0], epochs=2, engine=engine).runs[0].epochs_to_target
        is None
    )


@pytest.mark.skipif(_backend() not in COMPILED_BACKENDS, reason="no compiled engine here")
def test_accuracy_targets_hit_exactly_give_one_epoch_in_every_engine():
    """Targets set to the test accuracies the runs reach (k / 50 exactly): both engines
    report the same first epoch for each."""
    fit = run_study(BLOBS, ["bn"], seeds=[0], engine="fit").runs[0]
    for target in sorted(set(fit.history["val_accuracy"].tolist())):
        assert target * 50 == round(target * 50)  # an integer count over 50 rows
        exact = dataclasses.replace(BLOBS, target=target)
        runs = [run_study(exact, ["bn"], seeds=[0], engine=e).runs[0] for e in _engines()]
        assert len({r.epochs_to_target for r in runs}) == 1
        assert runs[0].epochs_to_target == int(np.argmax(fit.history["val_accuracy"] >= target)) + 1


# --------------------------------------------------------------------------- results


def test_results_name_the_metric_and_its_direction(tmp_path):
    result = run_study(REGRESSION, seeds=[0, 1], engine="fit")
    assert result.metric == "mae" and result.mode == "min"
    run = result.runs[0]
    assert set(run.history) == {"loss", "mae", "val_loss", "val_mae"}
    assert set(run.final) == {"train_loss", "train_mae", "test_loss", "test_mae"}
    with pytest.raises(AttributeError, match="final_test_metric"):
        _ = run.final_test_accuracy
    table = result.table()
    assert "| config | runs | train MAE |" in table and "epochs to test MAE <= 2" in table
    assert "lower is better" in table and "runs reaching target |" in table.splitlines()[0]
    result.to_json(tmp_path / "r.json")
    loaded = StudyResult.from_json(tmp_path / "r.json")
    assert loaded.table() == table and loaded.runs[0].final_test_metric == run.final_test_metric
    result.to_csv(tmp_path / "e.csv")
    header = (tmp_path / "e.csv").read_text().splitlines()[0]
    assert header == "config,seed,epoch,loss,mae,val_loss,val_mae"
    result.to_csv(tmp_path / "r.csv", per="run")
    assert "final_test_mae" in (tmp_path / "r.csv").read_text().splitlines()[0]
    figure = result.plot(tmp_path / "mae.png")
    assert "MAE: lower is better" in figure._suptitle.get_text()
    assert [ax.get_title() for ax in figure.axes] == ["mae", "val_mae"]
    assert (tmp_path / "mae.png").stat().st_size > 1000


def test_intervals_stay_in_the_metrics_range_and_the_table_counts_hits():
    def run(seed, value):
        history = {"loss": np.ones(2, "float32"), "accuracy": np.ones(2),
                   "val_loss": np.ones(2, "float32"),
                   "val_accuracy": np.array([0.5, value])}  # fmt: skip
        final = {"train_accuracy": value, "test_accuracy": value}
        return RunResult("a", seed, history, final=final, target=0.8)

    study = StudyResult("toy", [run(0, 1.0), run(1, 0.3), run(2, 1.0)], ("a",), range(3), 2,
                        32, "fit", target=0.8)  # fmt: skip
    low, high = study.summary()["a"]["test_accuracy"]["ci"]
    assert low == 0.0 and high == 1.0  # Student-t would give [-0.39, 1.92]
    row = next(line for line in study.table().splitlines() if line.startswith("| a |"))
    assert row.endswith("| 2/3 |") and "[0.000, 1.000]" in row


def test_min_mode_reaches_the_target_from_above():
    history = {"loss": np.ones(3, "float32"), "mae": np.ones(3),
               "val_loss": np.ones(3, "float32"), "val_mae": np.array([5.0, 2.0, 1.0])}  # fmt: skip
    run = RunResult("a", 0, history, final={"test_mae": 1.0}, target=2.0, metric="mae",
                    mode="min")  # fmt: skip
    assert run.epochs_to_target == 2


# --------------------------------------------------------------------------- Hypothesis

LABELS = ("binary", "binary-column", "sparse", "one-hot", "multi-binary", "real")


def _labels(kind: str, rows: int, units: int, rng) -> np.ndarray:
    if kind == "binary":
        return np.arange(rows) % 2
    if kind == "binary-column":
        return (np.arange(rows) % 2).reshape(-1, 1).astype("float32")
    if kind == "sparse":
        return np.arange(rows) % 3
    if kind == "one-hot":
        return np.eye(3, dtype="float32")[np.arange(rows) % 3]
    if kind == "multi-binary":
        return (rng.random((rows, units)) > 0.5).astype("float32")
    return rng.normal(size=(rows, units)).astype("float32")


def _valid(metric: str, kind: str, units: int) -> str | None:
    """The metric the study must score with, or None if it must refuse (the rules of
    the docs, written again independently of the code)."""
    per_row = {"binary": 1, "binary-column": 1, "sparse": 1, "one-hot": 3}.get(kind, units)
    zero_one = kind in ("binary", "binary-column", "one-hot", "multi-binary")
    if metric == "accuracy":
        if units == 1:
            metric = "binary_accuracy"
        elif kind == "one-hot" and units == 3:
            metric = "categorical_accuracy"
        else:
            metric = "sparse_categorical_accuracy"
    metric = {"mse": "mean_squared_error", "mae": "mean_absolute_error"}.get(metric, metric)
    if metric == "sparse_categorical_accuracy":
        ok = kind in ("binary", "binary-column", "sparse") and units >= (
            2 if kind != "sparse" else 3
        )
    elif metric == "categorical_accuracy":
        ok = kind == "one-hot" and units == 3
    elif metric in ("binary_accuracy", "auc"):
        ok = zero_one and per_row == units and (metric != "auc" or units == 1)
    else:
        ok = per_row == units
    return metric if ok else None


def _loss(kind: str, units: int) -> str:
    if kind == "sparse" or (kind in ("binary", "binary-column") and units > 1):
        return "sparse_categorical_crossentropy"
    return "categorical_crossentropy" if kind == "one-hot" and units == 3 else "mse"


@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1")
@given(
    metric=st.sampled_from(["accuracy", *sorted(METRICS), "mse", "mae"]),
    kind=st.sampled_from(LABELS),
    units=st.integers(1, 3),
    activation=st.sampled_from(["sigmoid", "softmax", "linear"]),
)
def test_any_metric_label_output_mix_is_refused_or_scored_as_numpy_does(
    metric, kind, units, activation
):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 2)).astype("float32")
    y = _labels(kind, 20, units, rng)

    def build(config):
        return keras.Sequential([keras.Input((2,)), keras.layers.Dense(units, activation)])

    metric_range = {"mean_squared_error": 1e9, "mse": 1e9, "mae": 1e9,
                    "mean_absolute_error": 1e9}  # fmt: skip
    protocol = Protocol(
        name="mix", description="random mix",
        load_data=lambda: ((x[:12], y[:12]), (x[12:], y[12:])),
        build=build, configs={"only": "one model"}, default_configs=("only",), epochs=1,
        batch_size=4, optimizer=lambda: keras.optimizers.SGD(0.01), loss=_loss(kind, units),
        target=min(0.5, metric_range.get(metric, 0.5)), metric=metric,
    )  # fmt: skip
    expected = _valid(metric, kind, units)
    if expected is None:
        with pytest.raises(ValueError, match=r"Protocol 'mix': `(metric|loss)`="):
            run_study(protocol, seeds=[0], engine="fit")
        return
    try:
        result = run_study(protocol, seeds=[0], engine="fit")
    except ValueError as error:  # only the loss may still refuse these labels
        assert "Protocol 'mix': `loss`=" in str(error)
        return
    run = result.runs[0]
    model = build("only")
    model.set_weights(run.weights)
    test_pred = keras.ops.convert_to_numpy(model(x[12:], training=False))
    train_pred = keras.ops.convert_to_numpy(model(x[:12], training=False))
    assert result.metadata["metric_name"] == expected
    assert run.final_test_metric == pytest.approx(_reference(expected, y[12:], test_pred), rel=1e-6)
    assert run.final_train_metric == pytest.approx(_reference(expected, y[:12], train_pred),
                                                   rel=1e-6)  # fmt: skip
