"""Overhead of MomentumBatchNormalization (default arguments) over keras.layers.BatchNormalization.

Run: `python3 benchmarks/layer_overhead.py` (`--help` for options).

Two cases, each timed with the BN layer alone on the input and after the
linear layer it normally follows:

- dense: a batch of 256 x 512 features (`Dense(512)` in front);
- conv: a batch of 64 x 32 x 32 x 64 (`Conv2D(64, 3, padding="same")` in front).

For each case two models that differ only in the BN class are built with the
same initial weights and compiled alike (SGD, MSE). The same batch is fed
again and again to

- `train`: the model's compiled training step (`model.train_step` in a
  `tf.function` on TensorFlow, as `fit()` runs it, without the per-call
  Python overhead of `train_on_batch`);
- `train_on_batch`: `model.train_on_batch(x, y)`;
- `infer`: the compiled inference call (`model(x, training=False)` in a
  `tf.function` on TensorFlow);
- `predict_on_batch`: `model.predict_on_batch(x)`.

(On other backends only the `*_on_batch` rows are timed.) Keras's layer and
ours alternate block by block in one process, the order flipping every round;
the ratio reported is the median over rounds of (ours / Keras) in wall time,
so slow drifts of a shared, noisy machine cancel out; the same ratio in process
CPU time is printed alongside (less sensitive to other processes taking the
cores). Targets: <= 1.10 for training, <= 1.05 for inference.

`--baseline DIR` adds a third model whose BN layer is
`MomentumBatchNormalization` as another checkout `DIR` defines it (e.g. the
main branch before a change), timed in the same rounds: each row then also
reports that version's ratio to Keras, so "no regression" is measured side by
side in one run.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras
import numpy as np

from keras_bn_tools.layers import MomentumBatchNormalization

TARGETS = {"train": 1.10, "train_on_batch": 1.10, "infer": 1.05, "predict_on_batch": 1.05}
CASES = {  # name: (input shape, name of the linear layer in front, its factory)
    "dense": ((256, 512), "Dense", lambda: keras.layers.Dense(512)),
    "conv": ((64, 32, 32, 64), "Conv2D", lambda: keras.layers.Conv2D(64, 3, padding="same")),
}


def build(bn_class, shape: tuple[int, ...], linear: Callable | None) -> keras.Model:
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape[1:])
    hidden = linear()(inputs) if linear is not None else inputs
    model = keras.Model(inputs, bn_class()(hidden))
    model.compile(keras.optimizers.SGD(1e-3), "mse")
    return model


def workloads(model: keras.Model, x, y) -> dict[str, Callable[[], object]]:
    jobs: dict[str, Callable[[], object]] = {}
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        train = tf.function(model.train_step, jit_compile=model.jit_compile is True)
        infer = tf.function(lambda data: model(data, training=False))
        xt, yt = tf.constant(x), tf.constant(y)
        jobs["train"] = lambda: train((xt, yt))["loss"]
        jobs["infer"] = lambda: infer(xt)
    jobs["train_on_batch"] = lambda: model.train_on_batch(x, y)
    jobs["predict_on_batch"] = lambda: model.predict_on_batch(x)
    return jobs


def time_block(job: Callable[[], object], calls: int) -> tuple[float, float]:
    """(wall, process CPU) seconds per call over `calls` calls."""
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(calls):
        out = job()
    keras.ops.convert_to_numpy(out)  # wait for the last result
    return (time.perf_counter() - wall) / calls, (time.process_time() - cpu) / calls


def load_baseline(checkout: str) -> type:
    """`MomentumBatchNormalization` as the checkout `checkout` defines it.

    Its module is loaded under another name; the package modules it imports
    come from this checkout (only the layer module is compared).
    """
    path = Path(checkout) / "keras_bn_tools" / "layers" / "momentum_batch_normalization.py"
    spec = importlib.util.spec_from_file_location("_baseline_momentum_bn", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # Loading re-registered the name with keras.saving: give it back to this checkout's class.
    keras.saving.register_keras_serializable(package="keras_bn_tools")(MomentumBatchNormalization)
    return module.MomentumBatchNormalization


def run_case(
    name: str, shape, linear, rounds: int, block_seconds: float, baseline: type | None = None
) -> list[dict]:
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=shape).astype("float32")
    models = {
        "keras": build(keras.layers.BatchNormalization, shape, linear),
        "ours": build(MomentumBatchNormalization, shape, linear),
    }
    if baseline is not None:
        models["baseline"] = build(baseline, shape, linear)
    y = keras.ops.convert_to_numpy(models["keras"].predict_on_batch(x))
    jobs = {key: workloads(model, x, y) for key, model in models.items()}
    rows = []
    for workload in jobs["keras"]:
        pair = {key: jobs[key][workload] for key in jobs}
        for job in pair.values():  # trace, compile and warm up
            for _ in range(3):
                time_block(job, 1)
        calls = max(1, round(block_seconds / time_block(pair["keras"], 3)[0]))
        times: dict[str, list[float]] = {key: [] for key in pair}
        ratios, cpu_ratios, baseline_ratios = [], [], []
        for round_ in range(rounds):
            order = tuple(pair) if round_ % 2 == 0 else tuple(reversed(pair))
            this_round = {key: time_block(pair[key], calls) for key in order}
            for key, (wall, _) in this_round.items():
                times[key].append(wall)
            ratios.append(this_round["ours"][0] / this_round["keras"][0])
            cpu_ratios.append(this_round["ours"][1] / max(this_round["keras"][1], 1e-9))
            if "baseline" in this_round:
                baseline_ratios.append(this_round["baseline"][0] / this_round["keras"][0])
        row = {
            "case": name,
            "workload": workload,
            "keras_ms": 1e3 * statistics.median(times["keras"]),
            "ours_ms": 1e3 * statistics.median(times["ours"]),
            "ratio": statistics.median(ratios),
            "cpu_ratio": statistics.median(cpu_ratios),
            "target": TARGETS[workload],
        }
        if baseline_ratios:
            row["baseline_ms"] = 1e3 * statistics.median(times["baseline"])
            row["baseline_ratio"] = statistics.median(baseline_ratios)
        rows.append(row)
        print(format_row(rows[-1]), flush=True)
    return rows


def format_row(row: dict) -> str:
    verdict = "ok" if row["ratio"] <= row["target"] else "OVER"
    text = (
        f"{row['case']:<12} {row['workload']:<17} keras {row['keras_ms']:9.3f} ms   "
        f"ours {row['ours_ms']:9.3f} ms   ratio {row['ratio']:.3f} "
        f"(target <= {row['target']:.2f}, {verdict}; CPU-time ratio {row['cpu_ratio']:.3f})"
    )
    if "baseline_ratio" in row:
        text += f"   baseline {row['baseline_ms']:9.3f} ms, ratio {row['baseline_ratio']:.3f}"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=sorted(CASES))
    parser.add_argument("--rounds", type=int, default=31, help="alternating rounds per row")
    parser.add_argument(
        "--block-seconds", type=float, default=0.05, help="approximate length of one timed block"
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=["alone", "after-linear"],
        default=["alone", "after-linear"],
        help="BN alone on the input, or after the Dense/Conv2D layer",
    )
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="another checkout whose MomentumBatchNormalization is timed alongside",
    )
    args = parser.parse_args(argv)
    baseline = load_baseline(args.baseline) if args.baseline else None

    print(
        f"Keras {keras.__version__}, backend {keras.backend.backend()}, "
        f"{os.cpu_count()} CPUs; ratio = median over {args.rounds} rounds of ours / keras"
    )
    rows = []
    for case in args.cases:
        shape, linear_name, linear = CASES[case]
        for variant in args.variants:
            label = case if variant == "alone" else f"{case}+{linear_name}"
            rows += run_case(
                label,
                shape,
                None if variant == "alone" else linear,
                args.rounds,
                args.block_seconds,
                baseline,
            )
    over = [row for row in rows if row["ratio"] > row["target"]]
    print(f"{len(rows) - len(over)} of {len(rows)} rows within target.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
