"""`RecalibrationReport`: what a recalibration changed, layer by layer."""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RecalibrationReport", "shift_entry"]


class RecalibrationReport(dict):
    """What `recalibrate_batchnorm` changed: a dict of layer key -> per-layer dict.

    Each per-layer dict holds:

    - `num_values`: how many values per feature were averaged (samples x
      positions, masked positions and skipped batches excluded);
    - `skipped_batches`: batches left out because their statistics at this
      layer were not finite (NaN or inf);
    - `old_mean`, `new_mean`, `old_variance`, `new_variance`: float64 arrays;
    - `mean_max_abs_change`: max |new_mean - old_mean| over features;
    - `mean_max_shift_in_std`: max |new_mean - old_mean| / sqrt(old_variance + epsilon),
      the shift in units of the old standard deviation;
    - `variance_max_abs_change`: max |new_variance - old_variance|;
    - `variance_max_rel_change`: max |new_variance - old_variance| / (old_variance + epsilon).

    Attributes:
        method: `"exact"` or `"single_pass"`.
        num_batches: batches read per pass.
        num_samples: samples (rows) in those batches.
        num_skipped_batches: the most batches any layer left out as non-finite.
    """

    method: str = "exact"
    num_batches: int = 0
    num_samples: int = 0
    num_skipped_batches: int = 0

    def table(self) -> str:
        """A plain-text table, one row per BN layer."""
        header = (
            "layer",
            "features",
            "values",
            "skipped",
            "max|dmean|",
            "max|dmean|/std",
            "max|dvar|",
            "max|dvar|/var",
        )
        rows = [header]
        for key, item in self.items():
            rows.append(
                (
                    key,
                    str(item["new_mean"].size),
                    str(item["num_values"]),
                    str(item["skipped_batches"]),
                    f"{item['mean_max_abs_change']:.4g}",
                    f"{item['mean_max_shift_in_std']:.4g}",
                    f"{item['variance_max_abs_change']:.4g}",
                    f"{item['variance_max_rel_change']:.4g}",
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = [
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
            for row in rows
        ]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(lines)

    def __str__(self) -> str:
        skipped = (
            f", {self.num_skipped_batches} non-finite skipped" if self.num_skipped_batches else ""
        )
        layers = f"{len(self)} layer{'s' if len(self) != 1 else ''}"
        title = (
            f"BN recalibration ({self.method}) over {self.num_samples} samples in "
            f"{self.num_batches} batches{skipped} ({layers}):"
        )
        return f"{title}\n{self.table()}"

    def __repr__(self) -> str:
        return (
            f"<RecalibrationReport method={self.method!r} layers={list(self)} "
            f"num_samples={self.num_samples}>"
        )


def shift_entry(
    old_mean: np.ndarray,
    old_var: np.ndarray,
    new_mean: np.ndarray,
    new_var: np.ndarray,
    *,
    epsilon: float,
    num_values: int,
    skipped_batches: int,
) -> dict[str, Any]:
    """One layer's entry of a `RecalibrationReport`."""
    d_mean, d_var = np.abs(new_mean - old_mean), np.abs(new_var - old_var)
    return {
        "num_values": int(num_values),
        "skipped_batches": int(skipped_batches),
        "old_mean": old_mean,
        "new_mean": new_mean,
        "old_variance": old_var,
        "new_variance": new_var,
        "mean_max_abs_change": float(d_mean.max(initial=0.0)),
        "mean_max_shift_in_std": float((d_mean / np.sqrt(old_var + epsilon)).max(initial=0.0)),
        "variance_max_abs_change": float(d_var.max(initial=0.0)),
        "variance_max_rel_change": float((d_var / (old_var + epsilon)).max(initial=0.0)),
    }
