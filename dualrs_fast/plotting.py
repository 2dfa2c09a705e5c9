"""Certified accuracy vs radius (as in randomized-smoothing papers) from certification logs.

Uses matplotlib's Agg canvas directly (no pyplot): importing this module never changes the
backend of a notebook or GUI session.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from .logs import certified_accuracy, check_certificates, format_radius, read_log
from .runner import sidecar_path


def load(path) -> dict:
    """A certification log as {column: array}, with errors that name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"log not found: {path}")
    try:
        table = read_log(path)
    except IndexError:
        raise ValueError(f"{path}: a row is incomplete (is the run still writing it?)") from None
    if table["idx"].size == 0:
        raise ValueError(f"{path}: the log has no rows")
    check_certificates(table, path)  # a nan / inf radius is no certificate: never plotted
    return table


def default_label(path) -> str:
    """'sigma = 0.25' / 'Dual RS, sigma in {...}' from the run's recorded arguments, else the
    file name."""
    path = Path(path)
    try:
        config = json.loads(sidecar_path(path).read_text())["config"]
    except (OSError, ValueError, KeyError, TypeError):
        return path.name
    if config.get("method") == "dual":
        return "Dual RS, σ ∈ {" + ", ".join(f"{s:g}" for s in config["sigmas"]) + "}"
    if "sigma" in config:
        return f"σ = {config['sigma']:g}"
    return path.name


def default_labels(paths: Sequence) -> List[str]:
    """``default_label`` of each log, made distinct: a label that two logs share (same sigma)
    gets the file's stem appended, and the full path where the stems collide too."""
    labels = [default_label(p) for p in paths]
    for widen in (lambda p, label: f"{label} ({Path(p).stem})", lambda p, label: str(p)):
        shared = {label for label in labels if labels.count(label) > 1}
        labels = [widen(p, label) if label in shared else label
                  for p, label in zip(paths, labels)]
    return labels


def accuracy_table(logs: Sequence, radii: Sequence[float], labels: Optional[Sequence[str]] = None
                   ) -> str:
    """Certified accuracy of each log at ``radii`` as an aligned text table."""
    labels = list(labels) if labels else default_labels(logs)
    width = max(len(s) for s in labels + ["log"])
    lines = [f"{'log':<{width}}  {'N':>5}  "
             + "  ".join(f"r={format_radius(r):<5}" for r in radii)]
    for path, label in zip(logs, labels):
        table = load(path)
        acc = certified_accuracy(table, radii)
        lines.append(f"{label:<{width}}  {table['idx'].size:>5}  "
                     + "  ".join(f"{a:<7.3f}" for a in acc))
    return "\n".join(line.rstrip() for line in lines)


def plot_certified_accuracy(logs: Sequence, out, labels: Optional[Sequence[str]] = None,
                            max_radius: Optional[float] = None, title: Optional[str] = None,
                            dpi: int = 150) -> Path:
    """Write a PNG with one certified-accuracy curve per log. -> the PNG's path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not logs:
        raise ValueError("give at least one log")
    labels = list(labels) if labels else default_labels(logs)
    if len(labels) != len(logs):
        raise ValueError(f"{len(labels)} labels for {len(logs)} logs")
    tables = [load(p) for p in logs]
    if max_radius is None:  # a bit past the largest certified radius
        largest = max(float(t["radius"][t["correct"].astype(bool)].max(initial=0.0))
                      for t in tables)
        max_radius = max(0.5, 1.05 * largest)
    radii = np.linspace(0.0, max_radius, 2001)

    fig = Figure(figsize=(6.0, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for table, label in zip(tables, labels):
        ax.plot(radii, certified_accuracy(table, radii), label=f"{label} (N={table['idx'].size})",
                linewidth=1.8)
    ax.set_xlim(0.0, max_radius)
    ax.set_ylim(0.0, 1.02)
    ax.set_xlabel("radius (ℓ2, pixels in [0, 1])")
    ax.set_ylabel("certified accuracy")
    if title:
        ax.set_title(title, fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize="small")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    return out


def parse_radii(text: str) -> List[float]:
    try:
        radii = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        raise ValueError(f"--radii must be comma-separated numbers, got {text!r}") from None
    if not radii or any(r < 0 for r in radii):
        raise ValueError(f"--radii must be non-negative numbers, got {text!r}")
    return radii
