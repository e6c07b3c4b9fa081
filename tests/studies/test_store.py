"""Save-as-you-go and resume: crash-safe run files, fingerprints, exact reloads."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from study_protocols import BLOBS

from keras_bn_tools._files import atomic_write_bytes
from keras_bn_tools.studies import RunResult, run_study
from keras_bn_tools.studies import store as store_module
from keras_bn_tools.studies.fingerprint import describe, differences
from keras_bn_tools.studies.store import (
    CorruptRunFileError,
    RunStore,
    StudyMismatchError,
    decode_run,
    encode_run,
)


def assert_same_runs(a, b):
    """Every number of every run equal (not close): what resume and parallel promise."""
    assert [(r.config, r.seed) for r in a.runs] == [(r.config, r.seed) for r in b.runs]
    for x, y in zip(a.runs, b.runs, strict=True):
        assert x.history.keys() == y.history.keys()
        for metric in x.history:
            np.testing.assert_array_equal(x.history[metric], y.history[metric])
        assert x.final == y.final
        assert x.moving_stats.keys() == y.moving_stats.keys()
        for layer, stats in x.moving_stats.items():
            for stat, values in stats.items():
                np.testing.assert_array_equal(values, y.moving_stats[layer][stat])
        assert (x.weights is None) == (y.weights is None)
        for w, v in zip(x.weights or [], y.weights or [], strict=True):
            np.testing.assert_array_equal(w, v)
        assert (x.engine, x.target) == (y.engine, y.target)


floats32 = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=2, max_side=5),
    elements=st.floats(width=32, allow_nan=True, allow_infinity=True),
)


@given(curve=floats32, final=st.floats(allow_nan=False), weight=floats32,
       seed=st.integers(0, 2**32 - 1), config=st.text(min_size=1, max_size=8))  # fmt: skip
def test_a_run_file_reads_back_every_number_exactly(curve, final, weight, seed, config):
    run = RunResult(
        config=config,
        seed=seed,
        history={"loss": curve, "accuracy": curve[::-1]},
        final={"train_accuracy": final, "test_loss": 0.1},
        moving_stats={"bn": {"moving_mean": curve}},
        seconds=1.5,
        weights=[weight, np.arange(3, dtype="int64")],
    )
    back, fingerprint = decode_run(encode_run(run, {"seed": seed}))
    assert fingerprint == {"seed": seed} and (back.config, back.seed) == (config, seed)
    np.testing.assert_array_equal(back.history["loss"], curve)
    assert back.history["loss"].dtype == np.float32
    np.testing.assert_array_equal(back.moving_stats["bn"]["moving_mean"], curve)
    assert back.final == run.final
    np.testing.assert_array_equal(back.weights[0], weight)
    assert back.weights[1].dtype == np.int64


def _run_file(tmp_path) -> Path:
    path = tmp_path / "seed-0.json"
    run = RunResult("a", 0, {"loss": np.ones(2, "float32")}, final={"test_accuracy": 0.5})
    path.write_bytes(encode_run(run, {"seed": 0}))
    return path


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda b: b[: len(b) // 2], "not whole JSON"),
        (lambda b: b.replace(b'"seed": 0', b'"seed": 1', 1), "SHA-256"),
        (lambda b: b"", "not whole JSON"),
        (lambda b: b'{"kind": "something else"}', "not a keras-bn-tools run file"),
    ],
)
def test_a_damaged_run_file_is_named_never_read(tmp_path, damage, why):
    path = _run_file(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(CorruptRunFileError, match=f"{path.name}.*{why}.*never skipped"):
        decode_run(path.read_bytes(), path)


def test_a_torn_write_is_detected_and_written_again(tmp_path, monkeypatch):
    reads = []
    real_read = Path.read_bytes

    def torn_then_whole(self):
        data = real_read(self)
        reads.append(self.name)
        return data[:-3] if len(reads) == 1 else data  # the first read-back is short

    monkeypatch.setattr(Path, "read_bytes", torn_then_whole)
    atomic_write_bytes(tmp_path / "f.json", b"0123456789")
    monkeypatch.undo()
    assert len(reads) == 2  # written twice
    assert (tmp_path / "f.json").read_bytes() == b"0123456789"
    assert os.listdir(tmp_path) == ["f.json"]  # no temporary file left


def test_a_write_that_never_verifies_leaves_the_old_file(tmp_path, monkeypatch):
    (tmp_path / "f.json").write_bytes(b"old")
    monkeypatch.setattr(Path, "read_bytes", lambda self: b"torn")
    with pytest.raises(OSError, match="torn writes"):
        atomic_write_bytes(tmp_path / "f.json", b"new")
    monkeypatch.undo()
    assert (tmp_path / "f.json").read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.json"]


def test_fingerprint_differences_name_each_field():
    saved = {"epochs": 3, "protocol": {"target": 0.6, "loss": "mse"}}
    now = {"epochs": 4, "protocol": {"target": 0.6, "loss": "mae"}, "shuffle": "once"}
    assert differences(saved, now) == [
        "epochs: saved 3, now 4",
        "protocol.loss: saved 'mse', now 'mae'",
        "shuffle: saved absent, now 'once'",
    ]
    assert differences(saved, saved) == []


def test_describe_is_the_same_for_equal_objects_made_twice():
    import keras

    # Keras numbers optimizer names per process (sgd, sgd_1, ...): not part of what runs.
    a, b = keras.optimizers.SGD(0.01, momentum=0.9), keras.optimizers.SGD(0.01, momentum=0.9)
    assert describe(a) == describe(b)
    assert describe(a) != describe(keras.optimizers.SGD(0.02, momentum=0.9))
    json.dumps(describe(BLOBS))  # plain JSON


# --------------------------------------------------------------------------- run_study


def _blobs_study(out, **kwargs):
    kwargs = {"configs": ["bn"], "seeds": range(2), "epochs": 2, "engine": "fit", **kwargs}
    return run_study(kwargs.pop("protocol", BLOBS), out=out, **kwargs)


def test_each_run_is_on_disk_before_the_study_ends(tmp_path):
    import keras

    seen = {}

    class Look(keras.callbacks.Callback):
        def __init__(self, seed):
            super().__init__()
            self.seed = seed

        def on_train_begin(self, logs=None):
            seen[self.seed] = sorted(p.name for p in (tmp_path / "runs" / "bn").glob("*.json"))

    result = _blobs_study(tmp_path, callbacks_factory=lambda config, seed: [Look(seed)])
    assert seen == {0: [], 1: ["seed-0.json"]}  # seed 0 saved while seed 1 was training
    saved = RunStore(tmp_path, {}).path("bn", 0).read_bytes()
    run, fingerprint = decode_run(saved)
    assert fingerprint["seed"] == 0 and fingerprint["config"]["name"] == "bn"
    assert fingerprint["study"]["epochs"] == 2
    np.testing.assert_array_equal(run.history["val_loss"], result.runs[0].history["val_loss"])


def test_resume_runs_only_the_missing_runs_and_equals_the_whole_study(tmp_path, monkeypatch):
    whole = _blobs_study(tmp_path / "a", configs=["plain", "bn"])
    partial = tmp_path / "b"
    _blobs_study(partial, configs=["plain", "bn"])
    (partial / "runs" / "bn" / "seed-1.json").unlink()  # as if killed before its save
    trained = []
    from keras_bn_tools.studies.engines import fit

    real = fit.run_seeds

    def counting(protocol, config, seeds, **kwargs):
        trained.extend((config, s) for s in seeds)
        return real(protocol, config, seeds, **kwargs)

    monkeypatch.setattr(fit, "run_seeds", counting)
    resumed = _blobs_study(partial, configs=["plain", "bn"], resume=True)
    assert trained == [("bn", 1)]
    assert_same_runs(resumed, whole)
    trained.clear()
    again = _blobs_study(partial, configs=["plain", "bn"], resume=True)
    assert trained == []  # a finished study resumes without training
    assert_same_runs(again, whole)


@pytest.mark.backend_agnostic
def test_a_partly_saved_vmapped_unit_resumes_to_the_same_numbers(tmp_path):
    import keras

    if keras.backend.backend() != "jax":
        pytest.skip("the JAX engine is the one that trains a unit's seeds together")
    study = {"configs": ["bn"], "seeds": range(3), "epochs": 2, "engine": "compiled"}
    whole = run_study(BLOBS, **study, out=tmp_path / "a")
    (tmp_path / "a" / "runs" / "bn" / "seed-1.json").unlink()
    kept = (tmp_path / "a" / "runs" / "bn" / "seed-0.json").read_bytes()
    resumed = run_study(BLOBS, **study, out=tmp_path / "a", resume=True)
    assert_same_runs(resumed, whole)  # seed 1 trained again in its whole unit of 3
    assert (tmp_path / "a" / "runs" / "bn" / "seed-0.json").read_bytes() == kept


def test_an_out_with_finished_runs_needs_resume(tmp_path):
    _blobs_study(tmp_path, seeds=[0])
    with pytest.raises(ValueError, match=r"1 finished run.*resume=True.*--resume"):
        _blobs_study(tmp_path, seeds=[0])


def _faster_adam():
    import keras

    return keras.optimizers.Adam(learning_rate=0.05)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"protocol": dataclasses.replace(BLOBS, target=0.7)},
         r"protocol\.target: saved 0\.6, now 0\.7"),
        ({"protocol": dataclasses.replace(BLOBS, optimizer=_faster_adam)},
         r"protocol\.optimizer\.config\.learning_rate: saved 0\.0199\d*, now 0\.0500\d*"),
        ({"epochs": 3}, r"epochs: saved 2, now 3"),
        ({"shuffle": "once"}, r"shuffle: saved 'epoch', now 'once'"),
    ],
)  # fmt: skip
def test_resume_refuses_a_changed_study_naming_what_differs(tmp_path, change, named):
    _blobs_study(tmp_path, seeds=[0])
    with pytest.raises(StudyMismatchError, match=f"different study.*{named}"):
        _blobs_study(tmp_path, seeds=[0], resume=True, **change)


def test_resume_refuses_a_run_file_of_another_config_settings(tmp_path):
    _blobs_study(tmp_path, seeds=[0])
    other = dataclasses.replace(BLOBS, configs={"plain": "no BN", "bn": "BN, described anew"})
    with pytest.raises(StudyMismatchError, match=r"seed-0\.json.*config\.settings"):
        _blobs_study(tmp_path, seeds=[0], resume=True, protocol=other)


def test_resume_refuses_a_config_whose_training_settings_changed(tmp_path):
    from keras_bn_tools.studies.protocol import Config

    def smaller_batches(batch_size):
        configs = {"plain": "no BN", "bn": Config("BN before the ReLU", batch_size=batch_size)}
        return dataclasses.replace(BLOBS, configs=configs)

    run_study(smaller_batches(16), ["bn"], [0], engine="fit", epochs=1, out=tmp_path)
    named = r"config\.effective\.batch_size: saved 16, now 20"
    with pytest.raises(StudyMismatchError, match=named):
        run_study(smaller_batches(20), ["bn"], [0], engine="fit", epochs=1, out=tmp_path,
                  resume=True)  # fmt: skip


def test_resume_names_a_corrupt_run_file_and_trains_nothing(tmp_path):
    _blobs_study(tmp_path, seeds=[0, 1])
    damaged = tmp_path / "runs" / "bn" / "seed-1.json"
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(CorruptRunFileError, match=f"{damaged}.*corrupt.*never skipped"):
        _blobs_study(tmp_path, seeds=[0, 1], resume=True)


def test_leftover_temporary_files_are_removed_and_their_run_redone(tmp_path):
    _blobs_study(tmp_path, seeds=[0])
    leftover = tmp_path / "runs" / "bn" / ".seed-1.json.999-1.tmp"
    leftover.write_bytes(b'{"kind": "keras-bn-tools run", "run": {')  # a killed write
    result = _blobs_study(tmp_path, seeds=[0, 1], resume=True)
    assert not leftover.exists()
    assert sorted(p.name for p in leftover.parent.iterdir()) == ["seed-0.json", "seed-1.json"]
    assert [r.seed for r in result.runs] == [0, 1]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_jobs": 0}, ValueError, "n_jobs.*got 0"),
        ({"n_jobs": -2}, ValueError, "n_jobs.*got -2"),
        ({"n_jobs": 1.5}, TypeError, "n_jobs.*1.5"),
        ({"n_jobs": True}, TypeError, "n_jobs"),
        ({"n_jobs": "2"}, TypeError, "n_jobs"),
        ({"resume": True}, ValueError, "resume=True.*needs `out`"),
        ({"resume": "yes", "out": "x"}, TypeError, "resume"),
        ({"out": 3}, TypeError, "out"),
    ],
)
def test_bad_scaling_arguments_are_refused_before_training(kwargs, error, match, monkeypatch):
    from keras_bn_tools.studies.engines import common

    monkeypatch.setattr(common.StudyData, "load", lambda *a: pytest.fail("trained"))
    with pytest.raises(error, match=match):
        run_study(BLOBS, seeds=[0], epochs=1, **kwargs)


def test_an_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        run_study(BLOBS, seeds=[0], epochs=1, out=tmp_path / "f")


def test_the_store_pickles_as_paths_and_fingerprint(tmp_path):
    import pickle

    store = RunStore(tmp_path, {"epochs": 2}, {"bn": {"name": "bn"}})
    back = pickle.loads(pickle.dumps(store))
    assert (back.directory, back.study, back.configs) == (store.directory, store.study,
                                                          store.configs)  # fmt: skip
    assert back.fingerprint("bn", 3) == {"study": {"epochs": 2}, "config": {"name": "bn"},
                                         "seed": 3}  # fmt: skip
    assert store_module.RUNS_DIR == "runs" and store.path("a/b", 3).name == "seed-3.json"
    assert store.path("a/b", 3).parent.name == "a%2Fb"  # a config name is never a path
    assert RunStore.key(store.path("a/b", 3)) == ("a/b", 3)
