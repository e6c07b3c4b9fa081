"""`assert_normalizes`'s comparison of a layer's output with the NumPy reference, and the
number formatting both assertions share."""

from __future__ import annotations

from typing import Any

import numpy as np

from keras_bn_tools.testing._subject import Subject
from keras_bn_tools.testing.reference import (
    normalize_axes,
    reference_batchnorm,
    reference_moments,
)

__all__ = ["NormalizationCheck", "feature_index", "fmt", "ratio"]


def fmt(value: float) -> str:
    return f"{value:.6g}"


def feature_index(flat_index: int, shape: tuple[int, ...]) -> Any:
    index = np.unravel_index(flat_index, shape)
    return int(index[0]) if len(index) == 1 else tuple(int(i) for i in index)


def ratio(error: np.ndarray, tol: np.ndarray) -> np.ndarray:
    """`error / tol`, with a zero tolerance (atol=rtol=0) meaning exact: inf for any error."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(tol > 0, error / tol, np.where(error > 0, np.inf, 0.0))


def _as_features_last(values: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """`values` as `(reduced, features)`: the feature axes moved last and flattened."""
    reduce = [i for i in range(values.ndim) if i not in axes]
    moved = np.transpose(values, [*reduce, *axes])
    features = int(np.prod([values.shape[i] for i in axes]))
    return moved.reshape(-1, features)


class NormalizationCheck:
    """`assert_normalizes`'s comparison of one output `y` with the NumPy reference."""

    def __init__(self, subject: Subject, x: np.ndarray, y: np.ndarray, axis: Any, training: bool):
        self.subject, self.x, self.training = subject, x, training
        self.axes = normalize_axes(axis, x.ndim)
        self.batch_mode = training and subject.trainable
        vbs = subject.virtual_batch_size
        self.ghost = self.batch_mode and vbs is not None and int(vbs) < x.shape[0]
        self.features_shape = tuple(x.shape[i] for i in self.axes)
        self.y2 = _as_features_last(y, self.axes)
        self.ref2 = _as_features_last(self._reference(), self.axes)
        n_features = self.y2.shape[1]
        gamma, beta = subject.gamma, subject.beta
        self.beta_vec = (
            np.zeros(n_features)
            if beta is None
            else np.broadcast_to(beta.reshape(-1), (n_features,))
        )
        self.gamma_vec = (
            np.ones(n_features)
            if gamma is None
            else np.broadcast_to(gamma.reshape(-1), (n_features,))
        )
        if not np.all(np.isfinite(self.y2)):
            bad = np.flatnonzero(~np.all(np.isfinite(self.y2), axis=0))
            raise AssertionError(
                f"{subject.name} returned non-finite values (training={training}) for features "
                f"{[feature_index(int(i), self.features_shape) for i in bad]} of an input with "
                f"finite values (shape {x.shape})."
            )

    def _reference(self) -> np.ndarray:
        subject, x = self.subject, self.x
        common = {"axis": self.axes, "gamma": subject.gamma, "beta": subject.beta}
        if self.batch_mode:
            return reference_batchnorm(x, epsilon=subject.epsilon, **common)
        moving = subject.read_moving()
        if moving is None:
            raise ValueError(
                f"{subject.name} has no `moving_mean`/`moving_variance`, needed to check "
                "inference (training=False, or trainable=False)."
            )
        return reference_batchnorm(
            x,
            epsilon=subject.epsilon,
            training=False,
            moving_mean=moving[0],
            moving_variance=moving[1],
            **common,
        )

    def badness(self, atol: float, rtol: float) -> np.ndarray:
        """How far past its tolerance each feature is (> 1 fails); keeps the parts for
        `report`."""
        y2, ref2, gamma_vec = self.y2, self.ref2, self.gamma_vec
        n_features = y2.shape[1]
        scale = np.max(np.abs(ref2 - self.beta_vec), axis=0) + np.abs(self.beta_vec)
        self.mean_tol = atol + rtol * scale
        self.actual_mean, self.actual_std = y2.mean(axis=0), y2.std(axis=0)
        self.expected_mean, self.expected_std = ref2.mean(axis=0), ref2.std(axis=0)
        if self.batch_mode:
            self.expected_mean = self.beta_vec.copy()  # the reference's, without round-off
        if self.ghost:
            self.std_tol = atol + rtol * np.abs(gamma_vec)
            self.std_error = np.maximum(self.actual_std - np.abs(gamma_vec), 0.0)
            self.element_error = np.zeros(n_features)
            self.element_tol = np.ones(n_features)
        else:
            self.std_tol = atol + rtol * self.expected_std
            self.std_error = np.abs(self.actual_std - self.expected_std)
            self.element_error = np.max(np.abs(y2 - ref2), axis=0)
            self.element_tol = atol + rtol * scale
        self.mean_error = np.abs(self.actual_mean - self.expected_mean)
        return np.maximum.reduce(
            [
                ratio(self.mean_error, self.mean_tol),
                ratio(self.std_error, self.std_tol),
                ratio(self.element_error, self.element_tol),
            ]
        )

    def report(self, badness: np.ndarray) -> str:
        """The failure message: the failing features and the worst one's numbers."""
        x, y2, ref2, features_shape = self.x, self.y2, self.ref2, self.features_shape
        worst = int(np.argmax(badness))
        failing = [feature_index(int(i), features_shape) for i in np.flatnonzero(badness > 1.0)]
        mode = "batch statistics" if self.batch_mode else "moving statistics"
        batch_mean, batch_var = reference_moments(x, axis=self.axes)

        def verdict(error: float, tol: float) -> str:
            return f"|diff| {fmt(error)} {'>' if error > tol else '<='} tol {fmt(tol)}"

        if self.batch_mode:
            mean_source = "beta"
            std_source = "ghost batches" if self.ghost else "|gamma| * sqrt(var / (var + epsilon))"
        else:
            mean_source = std_source = "reference with the moving statistics"
        lines = [
            f"{self.subject.name} does not batch-normalize its input ({mode}, "
            f"training={self.training}): input shape {x.shape}, feature axis {self.axes}, "
            f"{len(failing)} of {y2.shape[1]} feature(s) off: "
            f"{failing[:10]}{' ...' if len(failing) > 10 else ''}.",
            f"Worst feature {feature_index(worst, features_shape)}: batch mean "
            f"{fmt(batch_mean[worst])}, batch var {fmt(batch_var[worst])}, gamma "
            f"{fmt(self.gamma_vec[worst])}, beta {fmt(self.beta_vec[worst])}, epsilon "
            f"{fmt(self.subject.epsilon)}",
            f"  output mean: expected {fmt(self.expected_mean[worst])} ({mean_source}), got "
            f"{fmt(self.actual_mean[worst])}  "
            f"[{verdict(self.mean_error[worst], self.mean_tol[worst])}]",
        ]
        if self.ghost:
            lines.append(
                f"  output std:  expected at most {fmt(abs(self.gamma_vec[worst]))} "
                f"({std_source}), got {fmt(self.actual_std[worst])}"
            )
            return "\n".join(lines)
        lines.append(
            f"  output std:  expected {fmt(self.expected_std[worst])} ({std_source}), got "
            f"{fmt(self.actual_std[worst])}  "
            f"[{verdict(self.std_error[worst], self.std_tol[worst])}]"
        )
        row = int(np.argmax(np.abs(y2[:, worst] - ref2[:, worst])))
        lines.append(
            f"  largest element error: expected {fmt(ref2[row, worst])}, got "
            f"{fmt(y2[row, worst])}  "
            f"[{verdict(self.element_error[worst], self.element_tol[worst])}]"
        )
        return "\n".join(lines)
