"""The circles study's pieces: data, configs, results, tables and files, argument checks."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from keras_bn_tools.studies import circles
from keras_bn_tools.studies.circles import (
    CONFIGS,
    DEFAULT_CONFIGS,
    METRICS,
    CirclesConfig,
    RunResult,
    StudyResult,
    load_circles,
    run_study,
)

# --------------------------------------------------------------------------- data


@pytest.mark.backend_agnostic
def test_load_circles_is_the_tutorials_split():
    from sklearn.datasets import make_circles

    (train_x, train_y), (test_x, test_y) = load_circles()
    assert train_x.shape == (500, 2) and test_x.shape == (500, 2)
    assert train_y.shape == (500,) and test_y.shape == (500,)
    assert train_x.dtype == np.float32 and train_y.dtype == np.float32
    x, y = make_circles(n_samples=1000, noise=0.1, random_state=1)
    np.testing.assert_array_equal(train_x, x[:500].astype("float32"))
    np.testing.assert_array_equal(test_y, y[500:].astype("float32"))
    assert set(np.unique(train_y)) == {0.0, 1.0}


@pytest.mark.backend_agnostic
def test_load_circles_arguments():
    (train_x, _), (test_x, _) = load_circles(n_samples=100, n_train=80, random_state=3)
    assert len(train_x) == 80 and len(test_x) == 20
    with pytest.raises(ValueError, match="n_train"):
        load_circles(n_samples=100, n_train=100)
    with pytest.raises(ValueError, match="n_train"):
        load_circles(n_train=0)
    with pytest.raises(TypeError, match="n_samples"):
        load_circles(n_samples=10.5)


# --------------------------------------------------------------------------- configs


def test_configs_cover_the_study():
    required = {
        "baseline",
        "bn-after",
        "bn-before",
        "bn-after-no-affine",
        "bn-after-momentum0",
        "bn-input",
        "bn-after-cumulative",
        "bn-after-debiased",
    }
    assert required <= set(CONFIGS)
    assert set(DEFAULT_CONFIGS) == {"baseline", "bn-after", "bn-before"}
    for name, config in CONFIGS.items():
        assert config.name == name and config.description


def _layer_summary(model):
    return [type(layer).__name__ for layer in model.layers]


def test_config_models():
    import keras

    from keras_bn_tools.layers import MomentumBatchNormalization

    assert _layer_summary(CONFIGS["baseline"]()) == ["Dense", "Dense"]
    assert _layer_summary(CONFIGS["bn-after"]()) == ["Dense", "BatchNormalization", "Dense"]
    assert _layer_summary(CONFIGS["bn-before"]()) == [
        "Dense",
        "BatchNormalization",
        "Activation",
        "Dense",
    ]
    assert _layer_summary(CONFIGS["bn-input"]()) == [
        "BatchNormalization",
        "Dense",
        "BatchNormalization",
        "Dense",
    ]
    hidden = CONFIGS["bn-after"]().layers[0]
    assert hidden.units == 50 and hidden.activation is keras.activations.relu
    assert isinstance(hidden.kernel_initializer, keras.initializers.HeUniform)

    no_affine = CONFIGS["bn-after-no-affine"]().layers[1]
    assert not no_affine.center and not no_affine.scale
    assert no_affine.gamma is None and no_affine.beta is None
    assert CONFIGS["bn-after-momentum0"]().layers[1].momentum == 0.0
    assert CONFIGS["bn-after"]().layers[1].momentum == pytest.approx(0.99)
    cumulative = CONFIGS["bn-after-cumulative"]().layers[1]
    assert isinstance(cumulative, MomentumBatchNormalization) and cumulative.momentum is None
    debiased = CONFIGS["bn-after-debiased"]().layers[1]
    assert isinstance(debiased, MomentumBatchNormalization) and debiased.debias


def test_bn_layer_names_are_stable():
    """Moving statistics are keyed by layer name: the same in every build."""
    for _ in range(2):
        names = [layer.name for layer in CONFIGS["bn-input"]().layers]
        assert names[0] == "batch_normalization" and names[2] == "batch_normalization_1"
    assert CONFIGS["bn-after-cumulative"]().layers[1].name == "momentum_batch_normalization"


def test_same_seed_same_initial_weights():
    import keras

    keras.utils.set_random_seed(7)
    first = CONFIGS["bn-after"]().get_weights()
    keras.utils.set_random_seed(7)
    second = CONFIGS["bn-after"]().get_weights()
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------------------- results


def _run(config, seed, val_accuracy, train_accuracy=0.8, epochs=None):
    val = np.asarray(val_accuracy, dtype="float32")
    n = len(val) if epochs is None else epochs
    history = {
        "loss": np.linspace(0.7, 0.4, n).astype("float32"),
        "accuracy": np.linspace(0.5, 0.75, n).astype("float32"),
        "val_loss": np.linspace(0.7, 0.38, n).astype("float32"),
        "val_accuracy": val,
    }
    final = {
        "train_accuracy": train_accuracy,
        "train_loss": 0.4,
        "test_accuracy": float(val[-1]),
        "test_loss": 0.38,
    }
    stats = {"bn": {"moving_mean": np.zeros((n, 3), "float32")}}
    return RunResult(config, seed, history, final=final, moving_stats=stats, seconds=0.5)


def _study():
    runs = [
        _run("a", 0, [0.5, 0.81, 0.84], 0.83),
        _run("a", 1, [0.5, 0.7, 0.85], 0.84),
        _run("a", 2, [0.81, 0.8, 0.86], 0.85),
        _run("b", 0, [0.5, 0.6, 0.7], 0.7),
        _run("b", 1, [0.5, 0.6, 0.82], 0.71),
        _run("b", 2, [0.5, 0.6, 0.7], 0.72),
    ]
    return StudyResult(runs=runs, configs=("a", "b"), seeds=(0, 1, 2), epochs=3)


@pytest.mark.backend_agnostic
def test_run_result_properties():
    run = _run("a", 0, [0.5, 0.79, 0.8, 0.9], 0.83)
    assert run.epochs == 4
    assert run.epochs_to_80 == 3  # 1-based, first epoch >= 0.80
    assert run.epochs_to(0.95) is None
    assert run.final_test_accuracy == pytest.approx(0.9)
    assert run.final_train_accuracy == pytest.approx(0.83)
    assert run.last_epoch_accuracy == pytest.approx(0.75)


@pytest.mark.backend_agnostic
def test_summary_statistics():
    from scipy import stats

    summary = _study().summary()
    test = summary["a"]["test_accuracy"]
    values = np.array([0.84, 0.85, 0.86], dtype="float32").astype("float64")
    assert test["n"] == 3
    assert test["mean"] == pytest.approx(values.mean())
    assert test["sd"] == pytest.approx(values.std(ddof=1))
    half = stats.t.ppf(0.975, 2) * values.std(ddof=1) / math.sqrt(3)
    assert test["ci"] == pytest.approx([values.mean() - half, values.mean() + half])
    assert summary["a"]["epochs_to_80"] == {"n": 3, "reached": 3, "median": 2.0, "min": 1, "max": 3}
    # b: only seed 1 reached 80% (epoch 3); the two others never did -> median "never".
    assert summary["b"]["epochs_to_80"] == {
        "n": 3,
        "reached": 1,
        "median": None,
        "min": 3,
        "max": 3,
    }


@pytest.mark.backend_agnostic
def test_table():
    table = _study().table()
    lines = table.splitlines()
    assert lines[0].startswith("| config | runs | train acc |")
    assert "95% CI" in lines[0] and "epochs to 80%" in lines[0]
    row_a = next(line for line in lines if line.startswith("| a |"))
    assert "0.840 ± 0.010" in row_a  # train acc
    assert "0.850 ± 0.010" in row_a  # test acc
    assert "| 2 (1-3) |" in row_a
    row_b = next(line for line in lines if line.startswith("| b |"))
    assert "| never (3; 2 of 3 never) |" in row_b
    assert "Student-t" in table  # says which interval it is
    one_seed = StudyResult(runs=[_run("a", 4, [0.5, 0.9])], configs=("a",), seeds=(4,), epochs=2)
    assert "n/a" in one_seed.table()


@pytest.mark.backend_agnostic
def test_json_round_trip(tmp_path):
    study = _study()
    path = tmp_path / "results.json"
    study.to_json(path)
    data = json.loads(path.read_text())
    assert data["configs"] == ["a", "b"] and len(data["runs"]) == 6
    assert data["runs"][0]["history"]["val_accuracy"] == [0.5, 0.81, 0.84]
    assert "moving_stats" not in data["runs"][0]
    assert data["summary"]["a"]["epochs_to_80"]["median"] == 2.0
    loaded = StudyResult.from_json(path)
    assert loaded.table() == study.table()
    study.to_json(path, moving_stats=True)
    loaded = StudyResult.from_json(path)
    assert loaded.runs[0].moving_stats["bn"]["moving_mean"].shape == (3, 3)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file


@pytest.mark.backend_agnostic
def test_csv_files(tmp_path):
    study = _study()
    study.to_csv(tmp_path / "epochs.csv")
    with open(tmp_path / "epochs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 * 3
    assert list(rows[0]) == ["config", "seed", "epoch", *METRICS]
    assert rows[1]["config"] == "a" and rows[1]["epoch"] == "2"
    assert float(rows[1]["val_accuracy"]) == pytest.approx(0.81)
    study.to_csv(tmp_path / "runs.csv", per="run")
    with open(tmp_path / "runs.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    assert rows[0]["epochs_to_80"] == "2" and rows[3]["epochs_to_80"] == ""
    assert float(rows[0]["final_train_accuracy"]) == pytest.approx(0.83)
    with pytest.raises(ValueError, match="per"):
        study.to_csv(tmp_path / "x.csv", per="seed")


@pytest.mark.backend_agnostic
def test_plot(tmp_path):
    study = _study()
    figure = study.plot(tmp_path / "accuracy.png")
    assert (tmp_path / "accuracy.png").stat().st_size > 1000
    assert len(figure.axes) == 2
    study.plot(tmp_path / "loss.png", metrics=("loss", "val_loss"), band="minmax")
    assert (tmp_path / "loss.png").exists()
    with pytest.raises(ValueError, match="Unknown metrics"):
        study.plot(metrics=("f1",))


@pytest.mark.backend_agnostic
def test_moving_stats_arrays():
    arrays = _study().moving_stats_arrays()
    assert len(arrays) == 6
    assert arrays["a/0/bn/moving_mean"].shape == (3, 3)


# --------------------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"configs": ["nope"]}, ValueError, "Unknown circles config 'nope'"),
        ({"configs": []}, ValueError, "at least one"),
        ({"configs": ["bn-after", "bn-after"]}, ValueError, "more than once"),
        ({"seeds": []}, ValueError, "at least one seed"),
        ({"seeds": [1, 1]}, ValueError, "more than once"),
        ({"seeds": [-1]}, ValueError, "seed"),
        ({"seeds": [0.5]}, TypeError, "seed"),
        ({"epochs": 0}, ValueError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"engine": "eager"}, ValueError, "Unknown engine"),
        ({"shuffle": "sometimes"}, ValueError, "shuffle"),
        ({"jit_compile": "yes"}, ValueError, "jit_compile"),
        ({"callbacks_factory": lambda c, s: []}, ValueError, "engine='fit'"),
        ({"callbacks_factory": 3, "engine": "fit"}, TypeError, "callable"),
    ],
)
def test_run_study_rejects_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        run_study(**{"epochs": 1, "seeds": [0], **kwargs})


def test_compiled_engine_needs_tensorflow(monkeypatch):
    import keras

    monkeypatch.setattr(keras.backend, "backend", lambda: "jax")
    with pytest.raises(ValueError, match="TensorFlow-specific"):
        run_study(["bn-after"], seeds=[0], epochs=1)


def test_custom_config_and_mapping():
    import keras

    config = CirclesConfig(
        "bn-after-m90",
        "momentum 0.9",
        bn_layer=keras.layers.BatchNormalization,
        bn_kwargs={"momentum": 0.9},
    )
    assert config().layers[1].momentum == pytest.approx(0.9)
    resolved = circles._resolve_configs({"renamed": config})
    assert [c.name for c in resolved] == ["renamed"]
    with pytest.raises(TypeError, match="CirclesConfig"):
        circles._resolve_configs({"x": "bn-after"})


# --------------------------------------------------------------------------- small real studies


def test_compiled_study_records_everything():
    result = run_study(["baseline", "bn-input"], seeds=[3, 5], epochs=4)
    assert result.configs == ("baseline", "bn-input") and result.seeds == (3, 5)
    assert [(r.config, r.seed) for r in result.runs] == [
        ("baseline", 3),
        ("baseline", 5),
        ("bn-input", 3),
        ("bn-input", 5),
    ]
    for run in result.runs:
        assert run.engine == "compiled"
        assert set(run.history) == set(METRICS)
        assert all(len(v) == 4 and np.all(np.isfinite(v)) for v in run.history.values())
        assert all(0.0 <= a <= 1.0 for a in run.history["val_accuracy"])
        assert set(run.final) == {"train_loss", "train_accuracy", "test_loss", "test_accuracy"}
        assert run.final["test_accuracy"] == pytest.approx(run.final_test_accuracy, abs=1e-6)
    baseline, bn_input = result.runs[0], result.runs[2]
    assert baseline.moving_stats == {}
    assert set(bn_input.moving_stats) == {"batch_normalization", "batch_normalization_1"}
    assert bn_input.moving_stats["batch_normalization"]["moving_mean"].shape == (4, 2)
    assert set(bn_input.moving_stats["batch_normalization_1"]) == {
        "moving_mean",
        "moving_variance",
        "gamma",
        "beta",
    }
    assert bn_input.moving_stats["batch_normalization_1"]["moving_variance"].shape == (4, 50)
    # The moving statistics move: epoch 4 differs from epoch 1.
    mean = bn_input.moving_stats["batch_normalization_1"]["moving_mean"]
    assert not np.allclose(mean[0], mean[-1])
    assert result.metadata["versions"]["backend"] == "tensorflow"


def test_compiled_engine_is_deterministic_and_seed_dependent():
    first = run_study(["bn-after"], seeds=[0, 1], epochs=3)
    again = run_study(["bn-after"], seeds=[0, 1], epochs=3)
    for a, b in zip(first.runs, again.runs, strict=True):
        for m in METRICS:
            np.testing.assert_array_equal(a.history[m], b.history[m])
    assert not np.array_equal(first.runs[0].history["loss"], first.runs[1].history["loss"])


def test_shuffle_modes_differ():
    results = {
        mode: run_study(["baseline"], seeds=[0], epochs=3, shuffle=mode).runs[0]
        for mode in ("once", "epoch", "none")
    }
    losses = {mode: tuple(run.history["loss"]) for mode, run in results.items()}
    assert len(set(losses.values())) == 3
    # The first epoch of "epoch" uses another permutation than "once" but the same data.
    assert results["epoch"].history["loss"][0] != results["once"].history["loss"][0]


def test_no_affine_and_momentum0_statistics():
    result = run_study(["bn-after-no-affine", "bn-after-momentum0"], seeds=[0], epochs=2)
    no_affine, momentum0 = result.runs
    assert set(no_affine.moving_stats["batch_normalization"]) == {
        "moving_mean",
        "moving_variance",
    }
    # With momentum 0 the moving mean is the last batch's mean: the mean of the
    # hidden ReLU activations of 20 samples, all >= 0 and far from the initial 0.
    assert np.all(momentum0.moving_stats["batch_normalization"]["moving_mean"] >= 0)
    assert momentum0.moving_stats["batch_normalization"]["moving_mean"][-1].mean() > 0.1


def test_xla_failure_falls_back_to_a_plain_graph():
    import keras
    import tensorflow as tf

    class TimestampedBatchNormalization(keras.layers.BatchNormalization):
        """BN plus an op XLA cannot compile (adds exactly zero)."""

        def call(self, inputs, training=None, mask=None):
            zero = tf.cast(tf.raw_ops.Timestamp(), inputs.dtype) * 0.0
            return super().call(inputs + zero, training=training, mask=mask)

    config = CirclesConfig(
        "bn-after-timestamp", "XLA-hostile", bn_layer=TimestampedBatchNormalization
    )
    with pytest.warns(RuntimeWarning, match="XLA could not compile"):
        xla = run_study([config], seeds=[0], epochs=2, jit_compile=True)
    assert xla.metadata["jit_compile"] is False
    plain = run_study([config], seeds=[0], epochs=2, jit_compile=False)
    np.testing.assert_allclose(xla.runs[0].history["loss"], plain.runs[0].history["loss"])


def test_fit_engine_with_callbacks():
    from keras_bn_tools.callbacks import MovingStatsTracker

    made = []

    def factory(config, seed):
        tracker = MovingStatsTracker()
        made.append((config.name, seed, tracker))
        return [tracker]

    result = run_study(["bn-after"], seeds=[2], epochs=3, engine="fit", callbacks_factory=factory)
    run = result.runs[0]
    assert run.engine == "fit" and [(c, s) for c, s, _ in made] == [("bn-after", 2)]
    tracker = made[0][2]
    assert run.callbacks == [tracker]
    for stat in ("moving_mean", "moving_variance", "gamma", "beta"):
        # The tracker's first record is the state before training; then one per epoch.
        np.testing.assert_allclose(
            tracker.history["batch_normalization"][stat][1:],
            run.moving_stats["batch_normalization"][stat],
            rtol=1e-6,
        )
