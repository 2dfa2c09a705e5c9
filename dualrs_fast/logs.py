"""Certification logs in Cohen et al.'s tab-separated format and certified accuracy from them.

Columns: idx label predict radius correct time (time: seconds, float). Extra columns (e.g.
Dual RS's sigma, radius_estimator, radius_classifier) may follow and are kept when reading.
Logs written by Cohen et al.'s own certify.py (time as ``0:00:06.125100``) read the same.
"""
import csv
import re
from typing import Iterable, Sequence, Union

import numpy as np

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")


def format_row(idx: int, label: int, predict: int, radius: float, time: float, **extra) -> str:
    # radius printed with 9 significant digits: a float32 radius round-trips exactly, so the
    # log never states a larger radius than the certificate.
    cells = [str(int(idx)), str(int(label)), str(int(predict)), f"{float(radius):.9g}",
             str(int(int(predict) == int(label))), f"{float(time):.6f}"]
    cells += [f"{v:.9g}" if isinstance(v, float) else str(v) for v in extra.values()]
    return "\t".join(cells)


def header(extra_columns: Sequence[str] = ()) -> str:
    return "\t".join(COLUMNS + tuple(extra_columns))


class LogWriter:
    """Writes one row per certified input, flushed at once so a killed run loses nothing."""

    def __init__(self, path, extra_columns: Sequence[str] = ()):
        self.extra_columns = tuple(extra_columns)
        self._file = open(path, "w")
        self._file.write(header(self.extra_columns) + "\n")
        self._file.flush()

    def write(self, idx, label, predict, radius, time, **extra):
        if set(extra) != set(self.extra_columns):
            raise ValueError(f"expected extra columns {self.extra_columns}, got {tuple(extra)}")
        ordered = {k: extra[k] for k in self.extra_columns}
        self._file.write(format_row(idx, label, predict, radius, time, **ordered) + "\n")
        self._file.flush()

    def close(self):
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_log(path) -> dict:
    """-> {column: np.ndarray}; checks the Cohen columns are present and each row has a
    value in every column; blank lines are skipped."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))
    if not rows or tuple(rows[0][:len(COLUMNS)]) != COLUMNS:
        raise ValueError(f"{path} is not a certification log: its header must start with "
                         f"{' '.join(COLUMNS)}")
    names = rows[0]
    body = [r for r in rows[1:] if r]  # blank lines are skipped, as pandas reads Cohen's logs
    short = next((k for k, r in enumerate(rows[1:], start=2) if r and len(r) < len(names)), None)
    if short is not None:
        raise ValueError(f"{path}: line {short} has {len(rows[short - 1])} columns, the header "
                         f"{len(names)}")
    table = {}
    for k, name in enumerate(names):
        values = [r[k] for r in body]
        kind = {"idx": int, "label": int, "predict": int, "correct": int,
                "time": seconds}.get(name, float)
        try:
            table[name] = np.array([kind(v) for v in values])
        except ValueError:
            bad = next(v for v in values if not _parses(kind, v))
            raise ValueError(f"{path}: column {name} holds {bad!r}, not a number") from None
    return table


def check_certificates(table: dict, where="the log") -> None:
    """Refuse rows that cannot be certificates: a radius that is not a finite number >= 0
    (inf would count as certified at every r), or correct other than 0 / 1."""
    radius = np.asarray(table["radius"], dtype=np.float64)
    bad = ~np.isfinite(radius) | ~(radius >= 0)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{where}: {int(bad.sum())} row(s) with a radius that is not a finite "
                         f"number >= 0 (first: line {k + 2}, radius {radius[k]!r}); they are "
                         "no certificates: the log is corrupt or was edited")
    correct = np.asarray(table["correct"])
    if not np.isin(correct, (0, 1)).all():
        raise ValueError(f"{where}: the correct column must hold 0 or 1")


# str(datetime.timedelta), as Cohen et al.'s certify.py writes the time: [D day[s], ]H:MM:SS[.ffffff]
_TIMEDELTA = re.compile(r"^(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def seconds(text: str) -> float:
    """A time cell in seconds: a number (this package's logs) or Cohen's ``0:00:06.125100``."""
    match = _TIMEDELTA.match(text.strip())
    if match is None:
        return float(text)
    days, hours, minutes, secs = match.groups()
    return ((int(days or 0) * 24 + int(hours)) * 60 + int(minutes)) * 60 + float(secs)


def _parses(kind, text: str) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def certified_accuracy(log: Union[str, dict], radii: Iterable[float]) -> np.ndarray:
    """Fraction of inputs that are correctly classified with certified radius >= r, per r
    (Cohen et al.'s approximate certified test accuracy). A row whose radius is not a finite
    number >= 0 is refused (ValueError), never counted."""
    table = read_log(log) if not isinstance(log, dict) else log
    check_certificates(table, log if not isinstance(log, dict) else "the log")
    correct = table["correct"].astype(bool)
    radius = table["radius"]
    if correct.size == 0:
        raise ValueError("the log has no rows")
    return np.array([float(np.mean(correct & (radius >= r))) for r in radii])
