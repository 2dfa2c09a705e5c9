"""Certification logs in Cohen et al.'s tab-separated format and certified accuracy from them.

Columns: idx label predict radius correct time (time: seconds, float). Extra columns (e.g.
Dual RS's sigma, radius_estimator, radius_classifier) may follow and are kept when reading.
Logs written by Cohen et al.'s own certify.py (time as ``0:00:06.125100``) read the same.
"""
import csv
import math
import re
from decimal import ROUND_FLOOR, Decimal
from typing import Iterable, Sequence, Union

import numpy as np

COLUMNS = ("idx", "label", "predict", "radius", "correct", "time")
# integers as str(int) writes them: ASCII digits only ('３５'.isdigit() and int('３５') accept
# fullwidth digits), no '+', no padding
INT_TEXT = re.compile(r"-?(0|[1-9][0-9]*)")
# finite numbers as '%.9g' / '%.6f' / Cohen's '{:.3}' write them (float() would accept 'inf',
# ' 1', '1_0', '１'); the sign is for '-0', which '%.9g' writes for a radius of -0.0
FLOAT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?(e[+-][0-9]+)?")


def ascii_int(text: str) -> int:
    if not INT_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not an integer")
    return int(text)


def ascii_float(text: str) -> float:
    """A number cell; nan and inf parse (so that the checks can name them), nothing else
    that float() would take beyond FLOAT_TEXT."""
    if text not in ("nan", "inf", "-inf") and not FLOAT_TEXT.fullmatch(text):
        raise ValueError(f"{text!r} is not a number")
    return float(text)


def format_radius(radius: float) -> str:
    """9 significant digits, rounded down: no log or summary states a radius larger than the
    certified one (``'%.9g'`` rounds 2/3 up to 0.666666667)."""
    radius = float(radius)
    text = f"{radius:.9g}"
    if not math.isfinite(radius) or float(text) <= radius:
        return text
    exact = Decimal(radius)
    floor = exact.quantize(Decimal(1).scaleb(exact.adjusted() - 8), rounding=ROUND_FLOOR)
    return f"{float(floor):.9g}"  # the double nearest the 9 digits, still <= radius


#: the radii of the one-line summary that `dualrs certify` and the demo print
SUMMARY_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def summary_line(table: dict, radii: Sequence[float] = SUMMARY_RADII) -> str:
    """'certified accuracy: r=0: 0.990, r=0.25: 0.940, ...' of a log table."""
    acc = certified_accuracy(table, radii)
    return "certified accuracy: " + ", ".join(f"r={format_radius(r)}: {a:.3f}"
                                          for r, a in zip(radii, acc))


def format_row(idx: int, label: int, predict: int, radius: float, time: float, **extra) -> str:
    """A log row; radius columns (``radius*``) are rounded down (``format_radius``)."""
    cells = [str(int(idx)), str(int(label)), str(int(predict)), format_radius(radius),
             str(int(int(predict) == int(label))), f"{float(time):.6f}"]
    cells += [(format_radius(v) if name.startswith("radius") else f"{v:.9g}")
              if isinstance(v, float) else str(v) for name, v in extra.items()]
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
        kind = {"idx": ascii_int, "label": ascii_int, "predict": ascii_int,
                "correct": ascii_int, "time": seconds}.get(name, ascii_float)
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
                         f"number >= 0 (first: line {k + 2}, radius {float(radius[k])!r}); they are "
                         "no certificates: the log is corrupt or was edited")
    correct = np.asarray(table["correct"])
    if not np.isin(correct, (0, 1)).all():
        raise ValueError(f"{where}: the correct column must hold 0 or 1")
    if "predict" in table and "label" in table:
        wrong = correct != (np.asarray(table["predict"]) == np.asarray(table["label"]))
        if wrong.any():
            k = int(np.argmax(wrong))
            raise ValueError(f"{where}: line {k + 2} has correct {int(correct[k])} but label "
                             f"{int(table['label'][k])} and predict {int(table['predict'][k])}; "
                             "the log is corrupt or was edited")


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
