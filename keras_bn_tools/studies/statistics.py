"""Statistics over the seeds of a study, and the Markdown table that shows them.

- Metrics: mean, sample standard deviation (ddof=1) and the Student-t 95%
  confidence interval of the mean over seeds, clipped to the metric's range
  where it has one (an accuracy's interval never leaves [0, 1]).
- Epochs to target: median, min and max of the first epoch whose test
  metric reaches the protocol's target (`>=` for a metric to maximize, `<=`
  for one to minimize); a run that never does counts as slower than every
  other for the median, and the table says how many runs reached it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["describe", "describe_epochs", "epochs_to", "format_table"]


def epochs_to(values: Sequence[float], threshold: float, mode: str = "max") -> int | None:
    """First epoch (1-based) whose value is >= `threshold` (mode `"max"`) or <= it
    (mode `"min"`), or None if never."""
    values = np.asarray(values)
    hits = np.flatnonzero(values >= threshold if mode == "max" else values <= threshold)
    return int(hits[0]) + 1 if hits.size else None


def _t_quantile(confidence: float, dof: int) -> float:
    from scipy import stats  # a dependency of scikit-learn

    return float(stats.t.ppf(0.5 + confidence / 2.0, dof))


def describe(values: Sequence[float], confidence: float = 0.95, *,
             bounds: tuple[float, float] | None = None) -> dict[str, Any]:  # fmt: skip
    """`n`, `mean`, sample `sd` (ddof=1) and the Student-t `ci` of the mean, clipped
    to `bounds` (the metric's range) when given."""
    x = np.asarray(values, dtype="float64")
    n = int(x.size)
    mean = float(x.mean()) if n else float("nan")
    if n < 2:
        return {"n": n, "mean": mean, "sd": float("nan"), "ci": [float("nan")] * 2}
    sd = float(x.std(ddof=1))
    half = _t_quantile(confidence, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return {"n": n, "mean": mean, "sd": sd, "ci": [low, high]}


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


def _mean_sd(d: Mapping[str, Any], spec: str = ".3f") -> str:
    mean = format(d["mean"], spec)
    return mean if d["n"] < 2 else f"{mean} ± {format(d['sd'], spec)}"


def _ci(d: Mapping[str, Any], spec: str = ".3f") -> str:
    lo, hi = d["ci"]
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "n/a"
    return f"[{format(lo, spec)}, {format(hi, spec)}]"


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


#: How the table names a metric (history key).
_LABELS = {"accuracy": "acc", "mse": "MSE", "mae": "MAE", "auc": "AUC"}


def _goal(target: float, metric: str, mode: str) -> str:
    label = _LABELS.get(metric, metric)
    if metric == "accuracy":
        return f"{target * 100:g}% test acc"
    return f"test {label} {'>=' if mode == 'max' else '<='} {target:g}"


def format_table(
    summary: Mapping[str, Mapping[str, Any]],
    *,
    target: float,
    note: str,
    confidence: float = 0.95,
    metric: str = "accuracy",
    mode: str = "max",
) -> str:
    """The Markdown table of `StudyResult.summary()`, one row per config, then `note`."""
    pct, label = f"{confidence * 100:g}%", _LABELS.get(metric, metric)
    goal = _goal(target, metric, mode)
    # Accuracy and AUC in [0, 1] with 3 decimals; errors with 4 significant digits.
    digits = ".3f" if metric in ("accuracy", "auc") else ".4g"
    lines = [
        f"| config | runs | train {label} | train {label} {pct} CI | test {label} | "
        f"test {label} {pct} CI | fit-reported train {label}, last epoch | "
        f"epochs to {goal}: median (min-max) | runs reaching target |",
        "|" + "---|" * 9,
    ]
    for config, s in summary.items():
        tr, te = s[f"train_{metric}"], s[f"test_{metric}"]
        last, ep = s[f"last_epoch_{metric}"], s["epochs_to_target"]
        lines.append(
            f"| {config} | {s['runs']} | {_mean_sd(tr, digits)} | {_ci(tr, digits)} | "
            f"{_mean_sd(te, digits)} | {_ci(te, digits)} | {_mean_sd(last, digits)} | "
            f"{_epochs(ep)} | {ep['reached']}/{ep['n']} |"
        )
    lines += ["", note]
    return "\n".join(lines)
