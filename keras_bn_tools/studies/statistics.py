"""Statistics over the seeds of a study, and the Markdown table that shows them.

- Accuracies: mean, sample standard deviation (ddof=1) and the Student-t 95%
  confidence interval of the mean over seeds.
- Epochs to target: median, min and max of the first epoch whose test
  accuracy reaches the protocol's target; a run that never does counts as
  slower than every other for the median, and is reported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["describe", "describe_epochs", "epochs_to", "format_table"]


def epochs_to(values: Sequence[float], threshold: float) -> int | None:
    """First epoch (1-based) whose value is >= `threshold`, or None if never."""
    hits = np.flatnonzero(np.asarray(values) >= threshold)
    return int(hits[0]) + 1 if hits.size else None


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats  # a dependency of scikit-learn

    return float(stats.t.ppf(0.5 + confidence / 2.0, dof))


def describe(values: Sequence[float], confidence: float = 0.95) -> dict[str, Any]:
    """`n`, `mean`, sample `sd` (ddof=1) and the Student-t `ci` of the mean."""
    x = np.asarray(values, dtype="float64")
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci": [float("nan")] * 2}
    sd = float(x.std(ddof=1))
    half = _t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    return {"n": n, "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}


def describe_epochs(values: Sequence[int | None]) -> dict[str, Any]:
    """Median, min and max of first-crossing epochs (None: never crossed; the median
    counts those runs as the slowest, so it is None when half the runs or more never did)."""
    reached = sorted(v for v in values if v is not None)
    n = len(values)
    keyed = np.array(reached + [math.inf] * (n - len(reached)), dtype="float64")
    median = float(np.median(keyed)) if n else math.inf
    return {
        "n": n,
        "reached": len(reached),
        "median": median if math.isfinite(median) else None,
        "min": reached[0] if reached else None,
        "max": reached[-1] if reached else None,
    }


def _number(value: float | None) -> str:
    if value is None:
        return "never"
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _mean_sd(d: Mapping[str, Any]) -> str:
    return f"{d['mean']:.3f}" if d["n"] < 2 else f"{d['mean']:.3f} ± {d['sd']:.3f}"


def _ci(d: Mapping[str, Any]) -> str:
    lo, hi = d["ci"]
    return f"[{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "n/a"


def _epochs(ep: Mapping[str, Any]) -> str:
    if not ep["reached"]:
        return "never"
    spread = str(ep["min"]) if ep["min"] == ep["max"] else f"{ep['min']}-{ep['max']}"
    if ep["reached"] < ep["n"]:
        spread += f"; {ep['n'] - ep['reached']} of {ep['n']} never"
    return f"{_number(ep['median'])} ({spread})"


def format_seeds(seeds: Sequence[int]) -> str:
    """`0-9` for a run of consecutive seeds, else the list."""
    if isinstance(seeds, range) and seeds.step == 1 and len(seeds) > 2:
        return f"{seeds[0]}-{seeds[-1]}"
    seeds = list(seeds)
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}-{seeds[-1]}"
    return ", ".join(str(s) for s in seeds) or "none"


def format_table(
    summary: Mapping[str, Mapping[str, Any]],
    *,
    target: float,
    note: str,
    confidence: float = 0.95,
) -> str:
    """The Markdown table of `StudyResult.summary()`, one row per config, then `note`."""
    pct = f"{confidence * 100:g}%"
    goal = f"{target * 100:g}%"
    lines = [
        f"| config | runs | train acc | train acc {pct} CI | test acc | test acc {pct} CI | "
        f"fit-reported train acc, last epoch | epochs to {goal} test acc: median (min-max) |",
        "|" + "---|" * 8,
    ]
    for config, s in summary.items():
        tr, te = s["train_accuracy"], s["test_accuracy"]
        lines.append(
            f"| {config} | {s['runs']} | {_mean_sd(tr)} | {_ci(tr)} | {_mean_sd(te)} | {_ci(te)} "
            f"| {_mean_sd(s['last_epoch_accuracy'])} | {_epochs(s['epochs_to_target'])} |"
        )
    lines += ["", note]
    return "\n".join(lines)
