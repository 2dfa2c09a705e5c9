"""Drop-in replacement for Cohen et al.'s ``core.Smooth`` (locuslab/smoothing).

Same constructor, methods and return values; the sampling runs on dualrs_fast's packed,
counter-based engine. Like the original, each call draws fresh noise, here from a secret seed
the OS provides (not torch's global RNG: a seed a model could guess, e.g. after
``torch.manual_seed(0)``, makes the noise public). Give ``seed=`` to make a sequence of calls
reproducible: call k of an object draws the noise keyed (seed, k), so every call gets new noise
and a new object with the same seed replays the same sequence. ``certify`` / ``predict`` put the
base classifier in eval mode first (BatchNorm uses its running statistics, Dropout is off) and
leave it there.

Cohen's helpers ``_sample_noise``, ``_count_arr`` and ``_lower_confidence_bound`` exist with
the same signatures. A subclass that overrides ``_sample_noise`` or
``_lower_confidence_bound`` gets Cohen's algorithm built from its own helpers (as Cohen's
``certify`` / ``predict`` call them); otherwise the fused engine runs. ``certify_many`` certifies
many inputs in one packed pass (``scripts/cohen_certify.py`` is a ``certify.py`` that uses it).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np
import scipy.special
import torch

from . import smoothing
from .bounds import clopper_pearson_lower
from .noise import Stream
from .sampling import Draw, count_votes
from .validation import check_alpha, check_positive_int, check_sample_count, check_seed, check_sigma

#: noise keys (the engine's per-input ids) are 32-bit: an object stops rather than reuse one
_MAX_KEYS = 2**32


class Smooth:
    """A smoothed classifier g."""

    ABSTAIN = smoothing.ABSTAIN

    def __init__(self, base_classifier: torch.nn.Module, num_classes: int, sigma: float, *,
                 seed: Optional[int] = None, compile: bool = False,
                 fold_bn: Optional[bool] = None):
        """seed: see the module's doc; compile: opt-in torch.compile of the base classifier
        (a cold compile takes tens of seconds; see ``drs.certify``); fold_bn: sample through a
        private copy with eval-mode BatchNorm folded into the convolutions (default on unless
        DUALRS_FAST_FOLD_BN=0; the base classifier itself is never modified; see
        ``drs.certify``)."""
        self.base_classifier = base_classifier
        self.num_classes = check_positive_int("num_classes", num_classes)
        self.sigma = check_sigma(sigma)
        self.seed = None if seed is None else check_seed(seed)
        self.compile = bool(compile)
        self.fold_bn = fold_bn
        self._noise_keys = 0  # noise keys handed out so far: call k draws under key k

    def certify(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int):
        """-> (predicted class or ABSTAIN, certified l2 radius); x is one input, shaped as
        Cohen's ``x.repeat((batch, 1, 1, 1))`` accepts it: (C,H,W), (1,C,H,W), (H,W) or (D,).
        Puts the base classifier in eval mode, as Cohen et al.'s certify does."""
        if self._uses_own_helpers():
            self._eval()
            return self._certify_with_helpers(_one_input(x), n0, n, alpha, batch_size)
        return self.certify_many([x], n0, n, alpha, batch_size)[0]

    def certify_many(self, xs: Sequence[torch.Tensor], n0: int, n: int, alpha: float,
                     batch_size: int) -> List[Tuple[int, float]]:
        """``certify`` for each input of ``xs`` (a sequence of inputs, or a batch tensor
        (B, C, H, W)), in one packed pass: the forward passes carry samples of several inputs,
        so small models and the last, short batch of each input waste nothing. Each input gets
        its own noise key; the results equal those of ``certify`` called on each input in
        turn by an object with the same seed."""
        x = torch.stack([_one_input(xi) for xi in xs]) if len(xs) else None
        if x is None:
            return []
        if self._uses_own_helpers():
            return [self.certify(xi, n0, n, alpha, batch_size) for xi in x]
        self._eval()
        n0, n = check_sample_count("n0", n0), check_sample_count("n", n)
        alpha = check_alpha(alpha)
        seed, ids = self._next_noise(x.shape[0])
        sigma = torch.full((x.shape[0],), self.sigma, dtype=torch.float64)
        counts = self._counts(x, sigma, [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)],
                              seed, ids, batch_size)
        r = smoothing.certify_counts(counts[0], counts[1], n, alpha, sigma, seed=seed)
        return [(int(p), float(radius)) for p, radius in zip(r.prediction, r.radius)]

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int) -> int:
        """-> predicted class or ABSTAIN; x is one input (shapes as for ``certify``). Puts the
        base classifier in eval mode, as Cohen et al.'s predict does."""
        self._eval()
        x = _one_input(x)
        if self._overrides("_sample_noise"):
            counts = torch.from_numpy(np.asarray(self._sample_noise(x, n, batch_size))).view(1, -1)
        else:
            n, alpha = check_sample_count("n", n), check_alpha(alpha)
            seed, ids = self._next_noise(1)
            counts = self._counts(x.unsqueeze(0), torch.tensor([self.sigma], dtype=torch.float64),
                                  [Draw(Stream.PREDICT, n)], seed, ids, batch_size)[0]
        return int(smoothing.predict_counts(counts, check_alpha(alpha))[0])

    # Cohen et al.'s helpers, same signatures and return types.

    def _sample_noise(self, x: torch.Tensor, num: int, batch_size) -> np.ndarray:
        """Class counts (num_classes,) of the base classifier on ``num`` noisy copies of x.
        Every call draws new noise, also under a fixed ``seed``, so a selection and an
        estimation call are independent, as the certificate needs. The base classifier must
        already be in eval mode (as in Cohen's, certify sets it)."""
        num = check_sample_count("num", num)
        x = _one_input(x)
        seed, ids = self._next_noise(1)
        counts = self._counts(x.unsqueeze(0), torch.tensor([self.sigma], dtype=torch.float64),
                              [Draw(Stream.ESTIMATE, num)], seed, ids, batch_size)
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
        alpha=2*alpha, method="beta")[0]; this one is rounded down, never up). NA and N are
        counts: a non-integral value is refused (Cohen's would bound a fractional count)."""
        return float(clopper_pearson_lower(_count("NA", NA), _count("N", N), check_alpha(alpha)))

    # ---------------------------------------------------------------- internals

    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(Smooth, name)

    def _uses_own_helpers(self) -> bool:
        """A subclass replaced a helper that Cohen's certify calls: run Cohen's algorithm on
        the helpers, so the subclass gets exactly what Cohen's code would give it."""
        return self._overrides("_sample_noise") or self._overrides("_lower_confidence_bound")

    def _certify_with_helpers(self, x, n0, n, alpha, batch_size) -> Tuple[int, float]:
        """Cohen's CERTIFY, call for call on the (possibly overridden) helpers; the radius is
        sigma * Phi^-1(pABar), rounded down."""
        top = int(np.asarray(self._sample_noise(x, n0, batch_size)).argmax())
        n_a = np.asarray(self._sample_noise(x, n, batch_size))[top]
        p_lower = float(self._lower_confidence_bound(n_a, n, alpha))
        if not p_lower < 1.0 and p_lower == p_lower:  # Cohen's gives an infinite radius
            raise ValueError(f"_lower_confidence_bound returned {p_lower}, not a bound below 1 "
                             "on a probability; no certificate")
        if not p_lower >= 0.5:  # NaN abstains too
            return Smooth.ABSTAIN, 0.0
        radius = smoothing.float32_rounded_down(
            np.asarray([self.sigma * _phi_inverse_down(p_lower)], dtype=np.float64))
        return top, float(radius[0])

    def _next_noise(self, count: int) -> Tuple[int, torch.Tensor]:
        """(seed, ids) for the next ``count`` inputs: keys never repeat within an object."""
        start = self._noise_keys
        if start + count > _MAX_KEYS:
            raise RuntimeError("this Smooth object has used all 2**32 noise keys of its seed; "
                               "create a new one with another seed")
        self._noise_keys += count
        return check_seed(self.seed), torch.arange(start, start + count, dtype=torch.int64)

    def _counts(self, x, sigma, draws, seed, ids, batch_size) -> torch.Tensor:
        """Votes (len(draws), B, num_classes); a model narrower than num_classes gets zero
        counts for the classes it cannot output (as Cohen's counts do)."""
        counts = count_votes(self.base_classifier, x, sigma, draws, seed=seed, ids=ids,
                             batch_size=check_positive_int("batch_size", batch_size),
                             compile=self.compile, fold_bn=self.fold_bn)
        width = counts.shape[-1]
        if width > self.num_classes:
            raise ValueError(f"the base classifier returns {width} logits but num_classes is "
                             f"{self.num_classes}: a vote for class >= {self.num_classes} "
                             "cannot be counted (Cohen's _count_arr would fail on it)")
        return torch.nn.functional.pad(counts, (0, self.num_classes - width))

    def _eval(self) -> None:
        if isinstance(self.base_classifier, torch.nn.Module):
            self.base_classifier.eval()


def _phi_inverse_down(p: float) -> float:
    """Phi^-1(p) for p >= 0.5, moved down by 8 ulps: scipy's ndtri is accurate to a few ulps,
    and a radius must not come out above the exact one."""
    value = float(scipy.special.ndtri(p))
    return float(value - 8 * np.spacing(value)) if value > 0 else 0.0


def _count(name: str, value) -> int:
    """An integral count (int, numpy integer, or a float / 0-d array with an integral value)."""
    number = np.asarray(value)
    if number.ndim != 0 or number.dtype == bool or not np.issubdtype(number.dtype, np.number):
        raise TypeError(f"{name} must be an integer count, got {value!r}")
    if not np.isfinite(number) or number != np.floor(number):
        raise ValueError(f"{name} must be an integer count, got {value!r} (a fractional count "
                         "has no binomial bound)")
    return int(number)


def _one_input(x) -> torch.Tensor:
    """One input as Cohen's ``x.repeat((batch, 1, 1, 1))`` shapes it, minus the batch axis:
    (C,H,W) as is, (1,C,H,W) -> (C,H,W), (H,W) -> (1,H,W), (D,) -> (1,1,D); so the model
    receives the same (batch, C, H, W) tensors as from Cohen's code."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"Smooth takes one input as a torch.Tensor, got {type(x).__name__}")
    if not 1 <= x.dim() <= 4 or (x.dim() == 4 and x.shape[0] != 1):
        raise ValueError(f"Smooth.certify/predict take one input (C,H,W), (1,C,H,W), (H,W) or "
                         f"(D,), got shape {tuple(x.shape)}; use certify_many or drs.certify "
                         "for a batch")
    return x.reshape((1,) * (4 - x.dim()) + tuple(x.shape))[0]
