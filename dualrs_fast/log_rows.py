"""Strict checks of the rows of a log that a run resumes.

A row kept on resume is reported as a certificate without being recomputed, so each cell must
be one this run could have written: ASCII integers as ``str(int)`` writes them, non-negative
finite numbers, the dataset's label, a class the model has (or -1, abstain), ``correct``
matching label and prediction, and a radius no larger than the largest one ``n``, ``alpha``
and sigma allow (what ``n`` of ``n`` votes would certify). Forged rows inside those limits
cannot be told from real ones; the seal (``log_seal``) covers the rest.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional, Sequence

from .logs import FLOAT_TEXT, INT_TEXT, format_radius

# the largest radius is computed here with the bounds of this machine; another backend may
# differ in the last bits (a forged row cannot gain anything from this slack)
_RELATIVE_SLACK = 1e-6


class RowError(ValueError):
    """One row of a log is not one this run could have written."""


def _int(cell: str, name: str) -> int:
    if not INT_TEXT.fullmatch(cell):
        raise RowError(f"{name} {cell!r} is not an integer")
    return int(cell)


def _number(cell: str, name: str) -> float:
    if not FLOAT_TEXT.fullmatch(cell) or not float(cell) >= 0:
        raise RowError(f"{name} {cell!r} is not a finite number >= 0")
    return float(cell)


def largest_radius(n: int, alpha: float, sigma: float) -> float:
    """The radius of n votes out of n: no row of a run with these arguments has more."""
    from .bounds import certified_radius
    radius, _ = certified_radius(n, n, alpha, 1.0)
    return float(sigma) * float(radius)


@dataclass(frozen=True)
class RowRules:
    columns: tuple
    labels: tuple                     # the dataset's label of each index
    indices: frozenset                # the indices this run covers
    num_classes: int                  # predictions are -1 or in [0, num_classes)
    max_radius: Optional[float] = None             # certify logs
    sigmas: tuple = ()                             # Dual RS: a row's sigma is one of these
    max_radius_estimator: Optional[float] = None   # Dual RS: largest R_ve
    classifier_unit_radius: Optional[float] = None  # Dual RS: R_cls <= sigma * this
    grid: Optional[frozenset] = None  # --radii logs: the radius cells a row may hold
    max_samples: Optional[int] = None  # --radii logs: samples drawn per input at most

    def check(self, cells: Sequence[str]) -> int:
        """Raise RowError unless the row is valid. -> its idx."""
        if len(cells) != len(self.columns):
            raise RowError(f"{len(cells)} cells, expected {len(self.columns)} "
                           f"({' '.join(self.columns)})")
        row = dict(zip(self.columns, cells))
        idx = _int(row["idx"], "idx")
        if idx not in self.indices:
            raise RowError(f"idx {idx} is not among the inputs this run covers")
        label = _int(row["label"], "label")
        if label != self.labels[idx]:
            raise RowError(f"label {label}, but the dataset's label of idx {idx} is "
                           f"{self.labels[idx]}")
        predict = _int(row["predict"], "predict")
        if predict != -1 and not 0 <= predict < self.num_classes:
            raise RowError(f"predict {predict} is neither -1 (abstain) nor a class of the "
                           f"model (0..{self.num_classes - 1})")
        correct = _int(row["correct"], "correct")
        if correct != int(predict == label):
            raise RowError(f"correct {correct} contradicts label {label} and predict {predict}")
        _number(row["time"], "time")
        if "radius" in row:
            self._check_radius(row, predict)
        if "samples" in row:
            samples = _int(row["samples"], "samples")
            if not 0 <= samples <= self.max_samples:
                raise RowError(f"samples {samples} is not in [0, {self.max_samples}], the "
                               "samples this run draws per input")
        return idx

    def _radius_cell(self, cell: str, name: str, none_allowed: bool = False) -> float:
        """A radius: a finite number >= 0, in --radii logs one of the grid's (or -1, none
        cleared, where ``none_allowed``)."""
        if self.grid is None:
            return _number(cell, name)
        if none_allowed and cell == "-1":
            return -1.0
        if cell not in self.grid:
            raise RowError(f"{name} {cell!r} is not a radius of the grid "
                           f"({' '.join(sorted(self.grid, key=float))})")
        return float(cell)

    def _check_radius(self, row: dict, predict: int) -> None:
        radius = self._radius_cell(row["radius"], "radius")
        if predict == -1 and radius != 0:
            raise RowError(f"radius {row['radius']} for an abstention (must be 0)")
        _at_most(radius, self.max_radius, "radius", "n, alpha and sigma")
        if "sigma" in row:
            self._check_dual(row, radius, predict)

    def _check_dual(self, row: dict, radius: float, predict: int) -> None:
        if row["sigma"] == "nan":  # the estimator's abstention decided
            if predict != -1:
                raise RowError("sigma nan (the estimator abstained) with a prediction")
            level = max(self.sigmas)
        else:
            sigma = _number(row["sigma"], "sigma")
            level = next((s for s in self.sigmas if math.isclose(sigma, s, rel_tol=1e-6)), None)
            if level is None:
                raise RowError(f"sigma {row['sigma']} is not one of the levels "
                               f"{' '.join(f'{s:g}' for s in self.sigmas)}")
        r_ve = self._radius_cell(row["radius_estimator"], "radius_estimator", True)
        r_cls = self._radius_cell(row["radius_classifier"], "radius_classifier", True)
        _at_most(r_ve, self.max_radius_estimator, "radius_estimator",
                 "n_estimator, its alpha and estimator_sigma")
        _at_most(r_cls, level * self.classifier_unit_radius, "radius_classifier",
                 "n, its alpha and the row's sigma")
        if predict != -1 and radius > min(r_ve, r_cls):
            raise RowError(f"radius {row['radius']} exceeds min(radius_estimator, "
                           "radius_classifier)")


def _at_most(value: float, limit: float, name: str, what: str) -> None:
    if value > limit * (1 + _RELATIVE_SLACK):
        raise RowError(f"{name} {value:g} exceeds {limit:.6g}, the largest that {what} allow")


def certify_rules(columns, labels, indices, num_classes: int, n: int, alpha: float,
                  sigma: float) -> RowRules:
    return RowRules(tuple(columns), tuple(labels), frozenset(indices), num_classes,
                    max_radius=largest_radius(n, alpha, sigma))


class CohenLog:
    """The log part of a smoother (``smoothers``) whose certify log has Cohen's columns only:
    no cell of its own, and no radius above what n of n votes certify at its largest
    noise level, ``largest_sigma``."""
    log_columns = ()

    @staticmethod
    def log_cells(r, k: int) -> dict:
        return {}

    def row_rules(self, columns, labels, indices, num_classes: int, n: int,
                  alpha: float) -> RowRules:
        """The checks a certify log row must pass."""
        return certify_rules(columns, labels, indices, num_classes, n, alpha,
                             self.largest_sigma)


def dual_rules(columns, labels, indices, num_classes: int, n: int, n_estimator: int,
               alphas: tuple, sigmas: Sequence[float], estimator_sigma: float) -> RowRules:
    """alphas: (alpha_estimator, alpha_classifier). The plain estimator (all n_estimator
    samples at alpha_estimator) bounds what the sequential one can certify too."""
    alpha_ve, alpha_cls = alphas
    max_ve = largest_radius(n_estimator, alpha_ve, estimator_sigma)
    unit_cls = largest_radius(n, alpha_cls, 1.0)
    return RowRules(tuple(columns), tuple(labels), frozenset(indices), num_classes,
                    max_radius=min(max_ve, max(sigmas) * unit_cls),
                    sigmas=tuple(float(s) for s in sigmas), max_radius_estimator=max_ve,
                    classifier_unit_radius=unit_cls)


def with_radii(rules: RowRules, radii: Sequence[float], max_samples: int) -> RowRules:
    """The rules of a --radii log: radii from the grid (as ``format_radius`` writes them) and
    at most ``max_samples`` samples per input."""
    return dataclasses.replace(rules, grid=frozenset(format_radius(r) for r in radii),
                               max_samples=int(max_samples))


def predict_rules(columns, labels, indices, num_classes: int) -> RowRules:
    return RowRules(tuple(columns), tuple(labels), frozenset(indices), num_classes)
