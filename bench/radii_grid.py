"""The grid of radii and its certified accuracy, shared by ``radii_vs_certify.py`` (which
records runs) and ``replay_radii.py`` (which replays them): both import it, neither the
other's script."""
import numpy as np

from dualrs_fast.logs import certified_accuracy

GRID = tuple(0.25 * k for k in range(9))  # 0, 0.25, ..., 2


def grid_accuracy(prediction, radius, labels) -> np.ndarray:
    """Certified accuracy at each radius of GRID."""
    table = {"correct": (np.asarray(prediction) == np.asarray(labels)),
             "radius": np.asarray(radius, dtype=np.float64)}
    return certified_accuracy(table, GRID)
