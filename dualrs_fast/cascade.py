"""Cascaded (multiscale) randomized smoothing (Jeong & Shin 2023).

The cascaded classifier. Levels sigma_1 < ... < sigma_L, each with a smoothed expert whose
class probabilities are p^j_c(x) = P(f_j(x + sigma_j e) = c), e ~ N(0, I). Level j is
*confident* at x if some class has p^j_c(x) > p0; with p0 >= 1/2 at most one class can be.
The cascade G(x) is the confident class of the LARGEST confident level, ABSTAIN if none.

CERTIFY tries the levels from the largest sigma down. At level j each remaining input draws
n0 selection samples (top class A) and n estimation samples (votes of every class):
- accept if p_lower = CP lower bound of A's votes at alpha_low_j exceeds p0, with radius
  R_j = sigma_j (Phi^-1(p_lower) - Phi^-1(p0)) (Cohen's radius for p0 = 1/2), capped by
  the higher levels' non-confidence radii: radius = min(R_j, cap);
- else pass on to the next level if u_j = CP upper bound of the largest class's votes at
  alpha_up_j / K is below p0 (then every class's upper bound is), adding
  sigma_j (Phi^-1(p0) - Phi^-1(u_j)) to the cap;
- else abstain (G(x) is uncertain). After the smallest level, an input not accepted abstains.

Soundness. (1) Phi^-1(p^j_c(x)) is 1/sigma_j-Lipschitz in x (Salman et al. 2019), so if
p^j_A(x) >= p_lower then p^j_A > p0 on the open ball of radius R_j, and if every p^i_c(x) <=
u_i then no class of level i reaches p0 on the ball of radius sigma_i (Phi^-1(p0) -
Phi^-1(u_i)): within min(R_j, cap) no level above j is confident and level j is confident
with A, so G = A there. (2) For each level j the statements "p^j_A(x) >= p_lower_j" (A from
selection samples independent of the estimation samples) and "p^j_c(x) <= CP upper of c's
votes at alpha_up_j / K for all c" fail with probability <= alpha_low_j and <= alpha_up_j
(Bonferroni over the K classes). They are defined for every level whether or not an input gets
there, so by a union bound all of them hold at once with probability >= 1 - sum of the
shares >= 1 - alpha (``alpha_shares``: exact rational sum <= alpha); no independence between
levels is needed (they reuse the same noise streams, scaled by each sigma). (3) On that
event every returned certificate is true by (1); abstaining is always sound. Floating point
only ever shrinks a certificate: CP bounds are rounded outward (bounds.py), sigma Phi^-1 terms
moved 8 ulps the safe way, differences and the float32 radius rounded down.

alpha: alpha / L per level; the smallest level (tried last) needs no upper bound and spends
its whole share on its lower bound; every other level splits its share in halves between
the lower bound and the K class-wise upper bounds.
"""
import math
import numbers
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import scipy.special as sc
import torch

from . import log_rows
from .bounds import certified_radius, clopper_pearson_lower, clopper_pearson_upper
from .dual import build_routes, check_sigmas, routes_output_classes
from .noise import Stream
from .sampling import Draw, count_votes
from .sequential_radii import FUTILITY_ALPHA, RadiiResult, check_radii, on_grid
from .smoothing import ABSTAIN, CertifyResult, float32_rounded_down
from .validation import (as_input_batch, check_alpha, check_ids, check_open_unit,
                         check_positive_int, check_seed)

#: scipy's ndtri is accurate to < 2 eps and the product with sigma adds half an ulp:
#: moving sigma * Phi^-1(p) by 8 floats gives a bound on the exact value (as bounds.py does)
_PROBIT_ULPS = 8


@dataclass
class CascadeCertifyResult(CertifyResult):
    """CertifyResult fields for the cascade: radius = min(R_level, radius_cap), 0 where
    abstained; sigma is the accepted level's (NaN where abstained); count and p_lower are
    those of the last level an input went through (its top class's votes and their CP lower
    bound); alpha is the total."""
    level: torch.Tensor = None       # (B,) index into sigmas of the accepted level, -1 if abstained
    radius_cap: torch.Tensor = None  # (B,) float32 min of the higher levels' non-confidence
                                     # radii (rounded down), inf where no level was passed
    samples: torch.Tensor = None     # (B,) int64 classifier samples drawn: (n0 + n) per level tried
    p0: float = 0.5


def check_p0(p0) -> float:
    """The confidence threshold: p0 >= 1/2 keeps at most one class above it."""
    if isinstance(p0, bool) or not isinstance(p0, numbers.Real):
        raise TypeError(f"p0 must be a float in [0.5, 1), got {type(p0).__name__}")
    p0 = float(p0)
    if not 0.5 <= p0 < 1.0:  # also rejects NaN
        raise ValueError(f"p0 must be in [0.5, 1), got {p0}")
    return p0


def alpha_shares(alpha: float, levels: int, num_classes: int) -> list:
    """[(alpha_lower, alpha_upper_per_class)] for each level (index into the ascending
    sigmas). Level 0, tried last, has no upper bound (0.0). Shares are lowered by ulps until
    their exact (rational) sum, with each upper share counted num_classes times, is <= alpha."""
    per_level = alpha / levels
    shares = [[per_level, 0.0]] + [[per_level / 2, (per_level / 2) / num_classes]
                                    for _ in range(levels - 1)]

    def total():
        return sum(Fraction(low) + num_classes * Fraction(up) for low, up in shares)

    while total() > Fraction(alpha):
        shares = [[math.nextafter(low, 0.0), math.nextafter(up, 0.0)] for low, up in shares]
    if any(low <= 0.0 for low, _ in shares) or any(up <= 0.0 for _, up in shares[1:]):
        raise ValueError(f"alpha={alpha} is too small to split over {levels} levels and "
                         f"{num_classes} classes")
    return [tuple(s) for s in shares]


def _scaled_probit(p: np.ndarray, sigma: float, towards: float) -> np.ndarray:
    """sigma * Phi^-1(p) moved _PROBIT_ULPS floats towards ``towards`` (+inf: an upper bound,
    -inf: a lower bound on the exact value). Phi^-1(1/2) = 0 is exact and kept."""
    p = np.asarray(p, dtype=np.float64)
    value = sigma * sc.ndtri(p)
    for _ in range(_PROBIT_ULPS):
        value = np.where(p == 0.5, value, np.nextafter(value, towards))
    return value


def _difference_down(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """max(a - b, 0) rounded down (one float below the rounded difference unless b == 0)."""
    diff = a - b
    diff = np.where(b == 0.0, diff, np.nextafter(diff, -np.inf))
    return np.maximum(diff, 0.0)


class CascadeSmoothing(log_rows.CohenLog):
    """Cascaded randomized smoothing over the noise levels ``sigmas`` (pixel scale).

    classifier: a dict {sigma: expert model} with one plain model per level, or a
        noise-conditioned model called as ``classifier(x_noisy, sigma)`` (sigma a float32
        tensor (N,)), as for DualSmoothing.
    p0: confidence threshold in [0.5, 1): a level accepts an input when its top class's
        probability provably exceeds p0 (0.5: Cohen's rule).
    """

    def __init__(self, classifier: Union[Callable, Dict[float, Callable]],
                 sigmas: Sequence[float] = (0.25, 0.5, 1.0), p0: float = 0.5):
        self.sigmas = check_sigmas(sigmas)
        self.p0 = check_p0(p0)
        self.routes = build_routes(classifier, self.sigmas)

    def _level_counts(self, level, xb, members, draws, seed, ids, batch_size, num_classes,
                      progress):
        """Counts (len(draws), M, K) on the CPU of level ``level`` for inputs ``members``, all
        in one packed pass."""
        sigma = torch.full((members.numel(),), self.sigmas[level], dtype=torch.float64)
        counts = count_votes(self.routes[level], xb[members], sigma, draws, seed=seed,
                             ids=ids[members], batch_size=batch_size, num_classes=num_classes,
                             pass_sigma=True, progress=progress,
                             desc=f"sigma={self.sigmas[level]:g}")
        return counts.cpu()

    def _accept_radius(self, count, n, alpha_low, sigma):
        """(accepted, p_lower, R) for top-class votes ``count``: R = sigma (Phi^-1(p_lower) -
        Phi^-1(p0)) rounded down, Cohen's certified_radius when p0 = 1/2."""
        k = count.numpy()
        p_lower = np.asarray(clopper_pearson_lower(k, n, alpha_low), np.float64).reshape(-1)
        cohen, abstain = certified_radius(k, n, alpha_low, sigma)
        cohen = np.asarray(cohen, np.float64).reshape(-1)
        accepted = (p_lower > self.p0) & ~np.asarray(abstain, bool).reshape(-1)
        shift = _scaled_probit(np.full(k.shape, self.p0), sigma, np.inf)
        return accepted, p_lower, np.where(accepted, _difference_down(cohen, shift), 0.0)

    def _not_confident(self, estimation, n, alpha_up, sigma):
        """(passed, radius) from the votes (M, K) of every class: passed where the CP upper
        bound of the largest count at alpha_up is below p0; radius = sigma (Phi^-1(p0) -
        Phi^-1(u)) rounded down, within which no class of this level reaches p0."""
        upper = np.asarray(clopper_pearson_upper(estimation.max(1).values.numpy(), n, alpha_up),
                           np.float64).reshape(-1)
        passed = upper < self.p0
        top = _scaled_probit(np.full(upper.shape, self.p0), sigma, -np.inf)
        radius = _difference_down(top, _scaled_probit(np.where(passed, upper, 0.5), sigma,
                                                      np.inf))
        return passed, np.where(passed, radius, 0.0)

    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                progress: Optional[bool] = None) -> CascadeCertifyResult:
        """Certify the cascade G at x (one input or a batch): with probability >= 1 - alpha
        (per input) each returned radius is a lower bound on G's l2 robustness radius. Each
        level tried costs n0 + n classifier samples per input; options as drs.certify."""
        xb, _ = as_input_batch(x)
        batch = xb.shape[0]
        n0, n = check_positive_int("n0", n0), check_positive_int("n", n)
        alpha = check_alpha(alpha)
        seed, ids = check_seed(seed), check_ids(ids, batch)
        batch_size = check_positive_int("batch_size", batch_size)

        prediction = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        level = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        count = torch.zeros(batch, dtype=torch.int64)
        samples = torch.zeros(batch, dtype=torch.int64)
        radius = np.zeros(batch)
        p_lower = np.zeros(batch)
        cap = np.full(batch, np.inf)
        shares = num_classes = None
        remaining = torch.arange(batch)
        for j in reversed(range(len(self.sigmas))):  # largest sigma first
            if not remaining.numel():
                break
            sigma = self.sigmas[j]
            counts = self._level_counts(j, xb, remaining,
                                        [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)],
                                        seed, ids, batch_size, num_classes, progress)
            if shares is None:  # every level must give this many classes (count_votes checks)
                num_classes = counts.shape[2]
                shares = alpha_shares(alpha, len(self.sigmas), num_classes)
            alpha_low, alpha_up = shares[j]
            samples[remaining] += n0 + n
            top = counts[0].argmax(1)
            top_count = counts[1].gather(1, top.unsqueeze(1)).squeeze(1)
            accepted, p_low, r_level = self._accept_radius(top_count, n, alpha_low, sigma)
            at = remaining.numpy()
            count[remaining], p_lower[at] = top_count, p_low
            acc = torch.from_numpy(accepted)
            prediction[remaining[acc]] = top[acc]
            level[remaining[acc]] = j
            radius[at[accepted]] = np.minimum(r_level[accepted], cap[at[accepted]])
            if j == 0:  # the smallest level: no level below to pass on to
                break
            passed, r_cap = self._not_confident(counts[1], n, alpha_up, sigma)
            passed &= ~accepted
            cap[at[passed]] = np.minimum(cap[at[passed]], r_cap[passed])
            remaining = remaining[torch.from_numpy(passed)]

        level_sigma = torch.tensor(self.sigmas, dtype=torch.float32)[level.clamp(min=0)]
        return CascadeCertifyResult(
            prediction=prediction, radius=float32_rounded_down(radius), count=count, n=n,
            alpha=alpha, sigma=torch.where(level >= 0, level_sigma, math.nan),
            p_lower=torch.from_numpy(p_lower), level=level,
            radius_cap=float32_rounded_down(cap), samples=samples, p0=self.p0, seed=seed)

    def predict(self, x, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                seed: Optional[int] = None, *, ids=None,
                progress: Optional[bool] = None) -> torch.Tensor:
        """G(x) with probability >= 1 - alpha of not returning a wrong class (ABSTAIN when
        unsure) -> LongTensor (B,). Like certify, but each level draws only n samples and
        picks its top class from them, so its lower bound is Bonferroni-corrected over the
        K classes (alpha_low / K) instead of relying on separate selection samples."""
        xb, _ = as_input_batch(x)
        batch = xb.shape[0]
        n, alpha = check_positive_int("n", n), check_alpha(alpha)
        seed, ids = check_seed(seed), check_ids(ids, batch)
        batch_size = check_positive_int("batch_size", batch_size)
        prediction = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        shares = num_classes = None
        remaining = torch.arange(batch)
        for j in reversed(range(len(self.sigmas))):
            if not remaining.numel():
                break
            votes = self._level_counts(j, xb, remaining, [Draw(Stream.PREDICT, n)], seed, ids,
                                       batch_size, num_classes, progress)[0]
            if shares is None:
                num_classes = votes.shape[1]
                shares = alpha_shares(alpha, len(self.sigmas), num_classes)
            alpha_low, alpha_up = shares[j]
            top_count, top = votes.max(1)
            accepted, _, _ = self._accept_radius(top_count, n, alpha_low / num_classes,
                                                 self.sigmas[j])
            acc = torch.from_numpy(accepted)
            prediction[remaining[acc]] = top[acc]
            if j == 0:
                break
            passed, _ = self._not_confident(votes, n, alpha_up, self.sigmas[j])
            remaining = remaining[torch.from_numpy(passed & ~accepted)]
        return prediction

    def certify_radii(self, x, radii, alpha: float = 0.001, n_max: int = 100_000,
                      n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *,
                      ids=None, futility_alpha: Optional[float] = FUTILITY_ALPHA,
                      progress: Optional[bool] = None) -> RadiiResult:
        """Which grid radii the cascade certifies at x. The cascade has no sequential test
        (yet): this is ``certify`` with n = n_max, each radius rounded down to the grid, so it
        saves no samples and futility_alpha (an early-stopping rule) has no effect."""
        radii = check_radii(radii)
        if futility_alpha is not None:
            check_open_unit("futility_alpha", futility_alpha)
        r = self.certify(x, n0=n0, n=n_max, alpha=alpha, batch_size=batch_size, seed=seed,
                         ids=ids, progress=progress)
        return on_grid(r, radii, r.n)

    # What a run over a dataset (``runner``) asks of a smoother besides its log (CohenLog):
    # every level's radius is below the whole alpha's at the largest sigma.
    @property
    def largest_sigma(self) -> float:
        return self.sigmas[-1]

    def samples_per_input(self, n0: int, n: int) -> int:
        return len(self.sigmas) * (n0 + n)  # every level tried

    def predict_samples_per_input(self, n: int) -> int:
        return len(self.sigmas) * n

    def output_classes(self, x: torch.Tensor) -> int:
        return routes_output_classes(self.routes, self.sigmas, x)
