"""Drop-in replacement for Cohen et al.'s ``core.Smooth`` (locuslab/smoothing).

Same constructor, methods and return values; the sampling runs on dualrs_fast's packed,
counter-based engine. Like the original, each call draws fresh noise, here from a secret seed
the OS provides (not torch's global RNG: a seed a model could guess, e.g. after
``torch.manual_seed(0)``, makes the noise public). Give ``seed=`` to make calls reproducible
(each call then reuses that seed's noise). ``certify`` / ``predict`` put the base classifier
in eval mode first (BatchNorm uses its running statistics, Dropout is off) and leave it
there. Cohen's helpers ``_sample_noise``, ``_count_arr`` and ``_lower_confidence_bound``
exist with the same signatures, for code that calls them directly.
"""
from typing import Optional

import numpy as np
import torch

from . import smoothing
from .bounds import clopper_pearson_lower
from .noise import Stream
from .sampling import Draw, count_votes
from .validation import as_input_batch, check_alpha, check_positive_int, check_seed, check_sigma


class Smooth:
    """A smoothed classifier g."""

    ABSTAIN = smoothing.ABSTAIN

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float, *,
                 seed: Optional[int] = None):
        self.base_classifier = base_classifier
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.sigma = check_sigma(sigma)
        self.seed = seed
        self._noise_calls = 0  # keys the noise of each _sample_noise call under a fixed seed

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int):
        """-> (predicted class or ABSTAIN, certified l2 radius); x is one input (C,H,W).
        Puts the base classifier in eval mode, as Cohen et al.'s certify does."""
        self._eval()
        r = smoothing.certify(self.base_classifier, _one_image(x), self.sigma, n0=n0, n=n,
                              alpha=alpha, batch_size=batch_size, seed=self.seed,
                              num_classes=self.num_classes)
        return int(r.prediction[0]), float(r.radius[0])

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """-> predicted class or ABSTAIN; x is one input (C,H,W). Puts the base classifier
        in eval mode, as Cohen et al.'s predict does."""
        self._eval()
        p = smoothing.predict(self.base_classifier, _one_image(x), self.sigma, n=n, alpha=alpha,
                              batch_size=batch_size, seed=self.seed, num_classes=self.num_classes)
        return int(p[0])

    # Cohen et al.'s helpers, same signatures and return types.

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size) -> np.ndarray:
        """Class counts (num_classes,) of the base classifier on ``num`` noisy copies of x.
        Every call draws new noise, also under a fixed ``seed`` (call k is keyed by k), so
        a selection and an estimation call are independent, as the certificate needs. The
        base classifier must already be in eval mode (as in Cohen's, certify sets it)."""
        num = check_positive_int("num", num)
        seed = check_seed(self.seed)  # None: a fresh secret seed from the OS
        self._noise_calls += 1
        xb, _ = as_input_batch(_one_image(x))
        counts = count_votes(self.base_classifier, xb,
                             torch.tensor([self.sigma], dtype=torch.float64),
                             [Draw(Stream.ESTIMATE, num)], seed=seed,
                             ids=torch.tensor([self._noise_calls % 2**32]),
                             batch_size=check_positive_int("batch_size", batch_size),
                             num_classes=self.num_classes)
        return counts[0, 0].cpu().numpy().astype(int)

    def _count_arr(self, arr: np.ndarray, length: int) -> np.ndarray:
        """Counts (length,) of each value 0..length-1 in the integer array ``arr``."""
        arr = np.asarray(arr).reshape(-1)
        if arr.size and (not np.issubdtype(arr.dtype, np.integer) or arr.min() < 0
                         or arr.max() >= length):
            raise ValueError(f"_count_arr needs integers in [0, {length}), got {arr.dtype} "
                             f"values in [{arr.min()}, {arr.max()}]")
        return np.bincount(arr.astype(np.int64), minlength=length).astype(int)

    def _lower_confidence_bound(self, NA: int, N: int, alpha: float) -> float:
        """One-sided (1 - alpha) Clopper-Pearson lower bound on a binomial proportion from
        NA successes in N trials (Cohen's uses statsmodels' proportion_confint(NA, N,
        alpha=2*alpha, method="beta")[0]; this one is rounded down, never up)."""
        return float(clopper_pearson_lower(int(NA), int(N), check_alpha(alpha)))

    def _eval(self) -> None:
        if isinstance(self.base_classifier, torch.nn.Module):
            self.base_classifier.eval()


def _one_image(x) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() != 3:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"Smooth.certify/predict take one input of shape (C, H, W), got {shape}")
    return x
