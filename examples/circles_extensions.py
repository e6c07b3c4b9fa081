"""Extensions of the circles study: which parts of batch normalization matter here?

    python examples/circles_extensions.py             # 10 seeds, 100 epochs (a minute or two)
    python examples/circles_extensions.py --seeds 3 --epochs 30

Compares, with BN after the ReLU unless said otherwise:

- `bn-after`: Keras's BatchNormalization (momentum 0.99), the tutorial's model;
- `bn-after-no-affine`: no beta and gamma (`center=False, scale=False`);
- `bn-after-momentum0`: momentum 0, so inference uses the last batch's statistics;
- `bn-input`: an extra BN layer right after the input;
- `bn-after-debiased`: `MomentumBatchNormalization(momentum=0.99, debias=True)`,
  moving averages divided by `1 - 0.99**t`, sound from the first steps;
- `bn-after-cumulative`: `MomentumBatchNormalization(momentum=None)`, the true
  average of every batch seen so far.

It prints the study's table, then the mean test accuracy over the first
epochs, where the moving statistics matter most: with momentum 0.99 they start
at mean 0 / variance 1 and after one epoch (16 steps) still carry
0.99**16 = 85% of that start, which the debiased and cumulative variants
remove. Finally it shows how far each variant's moving mean is from the
exact (population) mean of the hidden activations after the first epoch.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from keras_bn_tools.studies.circles import run_study

CONFIGS = (
    "bn-after",
    "bn-after-no-affine",
    "bn-after-momentum0",
    "bn-input",
    "bn-after-debiased",
    "bn-after-cumulative",
)


def main() -> None:
    parser = argparse.ArgumentParser(description="Extensions of the circles study.")
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    args = parser.parse_args()

    result = run_study(CONFIGS, seeds=range(args.seeds), epochs=args.epochs, progress=True)
    print(result.table())

    early = min(5, args.epochs)
    print(f"\nMean test accuracy over seeds, epochs 1-{early}:")
    for config in result.configs:
        curves = np.stack([run.history["val_accuracy"][:early] for run in result.runs_for(config)])
        print(f"  {config:20s} " + "  ".join(f"{v:.3f}" for v in curves.mean(axis=0)))

    print(
        "\nMoving mean of the BN layer after the ReLU at the end of epoch 1, as a fraction "
        "of its value at the end of training (1.0 = settled), mean over features and seeds:"
    )
    for config in result.configs:
        ratios = []
        for run in result.runs_for(config):
            layer = sorted(run.moving_stats)[-1]  # the BN after the hidden layer
            mean = run.moving_stats[layer]["moving_mean"]
            ratios.append(np.mean(mean[0]) / np.mean(mean[-1]))
        print(f"  {config:20s} {np.mean(ratios):.2f}")


if __name__ == "__main__":
    main()
