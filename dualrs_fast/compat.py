"""Drop-in replacement for Cohen et al.'s ``core.Smooth`` (locuslab/smoothing).

Same constructor, methods and return values; the sampling runs on dualrs_fast's packed,
counter-based engine. Like the original, each call draws fresh noise, here from a secret seed
the OS provides (not torch's global RNG: a seed a model could guess, e.g. after
``torch.manual_seed(0)``, makes the noise public). Give ``seed=`` to make calls reproducible
(each call then reuses that seed's noise).
"""
from typing import Optional

import torch

from . import smoothing
from .validation import check_positive_int, check_sigma


class Smooth:
    """A smoothed classifier g."""

    ABSTAIN = smoothing.ABSTAIN

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float, *,
                 seed: Optional[int] = None):
        self.base_classifier = base_classifier
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.sigma = check_sigma(sigma)
        self.seed = seed

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int):
        """-> (predicted class or ABSTAIN, certified l2 radius); x is one input (C,H,W)."""
        r = smoothing.certify(self.base_classifier, _one_image(x), self.sigma, n0=n0, n=n,
                              alpha=alpha, batch_size=batch_size, seed=self.seed,
                              num_classes=self.num_classes)
        return int(r.prediction[0]), float(r.radius[0])

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """-> predicted class or ABSTAIN; x is one input (C,H,W)."""
        p = smoothing.predict(self.base_classifier, _one_image(x), self.sigma, n=n, alpha=alpha,
                              batch_size=batch_size, seed=self.seed, num_classes=self.num_classes)
        return int(p[0])


def _one_image(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Smooth.certify/predict take one input of shape (C, H, W), got {shape}")
    return x
