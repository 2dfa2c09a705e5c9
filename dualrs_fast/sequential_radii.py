"""Certified accuracy at a fixed grid of radii with a fraction of the samples: sequential
CERTIFY with early stopping (staged Bonferroni, in the spirit of Horvath et al. 2022).

Question asked per input and grid radius r: "is the certified radius at least r?". CERTIFY
answers all of them with n samples per input; here each input draws its estimation samples
in rounds and stops once every grid radius is decided.

Procedure (one input, standard RS at sigma):
  1. n0 selection samples (the SELECT stream, as in CERTIFY) pick the class c.
  2. Estimation samples (the ESTIMATE stream) are drawn up to fixed checkpoints
     n_1 < n_2 < ... < n_K = n_max (``radii_schedule``: about x1.2 from 100, in
     multiples of 100). At checkpoint k, with
     c_k votes for c, p_k = ClopperPearsonLower(c_k, n_k, alpha_k), where the alpha_k
     (``radii_alphas``: 80% of alpha on n_max, the rest in proportion to sqrt(n_k)) sum to at
     most alpha.
  3. Grid radius r is CERTIFIED once some p_k >= Phi(r / sigma) (i.e. sigma Phi^-1(p_k) >= r,
     ``bounds.certified_radius``); r = 0 means p_k >= 1/2, the test behind CERTIFY's abstain.
     r is OUT OF REACH once no later checkpoint could certify it even if every remaining
     sample voted for c, or (the futility rule, ``futility_alpha``) once even the optimistic
     rate u = ClopperPearsonUpper(c_k, n_k, futility_alpha) over the remaining samples,
     c_k + u (n_max - n_k), falls short of the votes that certify r at n_max. The futility
     rule is judged afresh at each checkpoint: an input still drawing for a smaller radius
     takes r up again if its votes recover.
  4. The input stops when the largest certified grid radius is the last one or the next
     one is out of reach; the result is the largest certified grid radius (ABSTAIN if not
     even r = 0 is certified).

Why it is sound whatever the stopping rule: the checkpoints n_k and shares alpha_k are fixed
before any sample is drawn, and sample j of the ESTIMATE stream is defined for every j
(counter-based noise), whether or not it is ever drawn. Given c (independent selection
samples), each p_k is a valid lower bound on p_c = P(f(x + noise) = c) with probability
>= 1 - alpha_k, so by the union bound ALL K bounds hold at once with probability
>= 1 - sum alpha_k >= 1 - alpha. On that event every certified r satisfies
p_c >= Phi(r / sigma), hence c is the smoothed prediction and its radius is >= r (Cohen et al.,
Theorem 1). Which checkpoints were looked at, and when the input stopped, depends on the data,
but stopping can only withhold a certificate, never create one. One bound per checkpoint
decides every grid radius at once, so no correction over the radii is needed. Out-of-reach
and futility decisions only decide when to stop; they cost power (a certificate that
sampling on might have reached), not soundness: the exact rule never does (the remaining
samples could not certify r); the futility rule gives r up while p_c > u with probability at
most futility_alpha per checkpoint, and an input with p_c <= u would need the remaining
samples to beat their own expectation to reach r at n_max. Measured on 3 x 200 MNIST images
at n_max = 100,000 (bench/RESULTS.md), the whole procedure certified at most 2 images fewer
than CERTIFY at any grid radius (sigma 0.25, 0.5, 1.0 and Dual RS), each an input whose count
at n_max lies within a few votes of the radius's threshold.

Dual RS (``DualSmoothing``): the estimator (R_ve, at estimator_sigma, its level chosen by its
own selection samples) and the classifier at the chosen level (R_cls) each run this test at
their share of alpha (``DualSmoothing.alphas``); radius r is certified when both clear it
(Theorem 4.1: min(R_ve, R_cls) >= r) and out of reach when either cannot. Each of the two
draws only while it has not certified every radius still in joint reach.

Engine: every round is one ``sampling.count_votes`` pass over the inputs still drawing, so
stopped inputs leave the packed batch and the remaining ones keep it full.
"""
import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch

from .bounds import certified_radius, clopper_pearson_upper
from .estimator_rounds import within_alpha
from .level_passes import level_counts
from .noise import Stream
from .progress import progress_bar
from .sampling import Draw, count_votes
from .smoothing import ABSTAIN, DEFAULT_SIGMA
from .validation import (as_input_batch, check_alpha, check_ids, check_open_unit,
                         check_positive_int, check_seed, check_sigma)

#: first checkpoint of the schedule (about CERTIFY's n0: enough to decide r = 0 for
#: clear inputs) and growth between checkpoints: dense, so that an input stops close to the
#: sample count its decision needs (an input certifying sigma = 0.5's top radius needs ~30,000)
FIRST_CHECKPOINT = 100
GROWTH = 1.2
#: share of alpha spent on the last checkpoint (n_max), which inputs near a grid radius reach:
#: close to CERTIFY's bound there, so their decisions match CERTIFY's (``radii_alphas``)
FINAL_SHARE = 0.8
#: default level of the futility rule's upper bound (stopping only; see the module docstring)
FUTILITY_ALPHA = 0.02


def radii_alphas(alpha: float, schedule: Sequence[int], final_share: float = FINAL_SHARE) -> list:
    """Shares of alpha for the checkpoints: ``final_share`` of it for the last one (n_max),
    the rest split over the earlier ones in proportion to sqrt(n_k) (a later checkpoint decides
    the harder inputs, where a larger share saves more samples). They sum to at most alpha
    (union bound). One checkpoint gets all of alpha: CERTIFY's test."""
    if not 0 <= final_share <= 1:
        raise ValueError(f"final_share must be in [0, 1], got {final_share}")
    if len(schedule) == 1:
        return [alpha]
    weights = np.sqrt(np.asarray(schedule[:-1], dtype=np.float64))
    early = (1.0 - final_share) * alpha * weights / weights.sum()
    return within_alpha(alpha, [float(a) for a in early] + [final_share * alpha])


@dataclass
class RadiiResult:
    """Per input: the largest certified grid radius and what it cost."""
    prediction: torch.Tensor   # (B,) int64, ABSTAIN where not even r = 0 is certified
    radius: torch.Tensor       # (B,) float64: largest certified grid radius, 0 where abstained
    certified: torch.Tensor    # (B, R) bool: certified at radii[j]
    radii: tuple               # the grid, ascending, starting at 0
    samples: torch.Tensor      # (B,) int64: all noisy samples drawn (selection + estimation,
                               # estimator and classifier for Dual RS)
    n_max: int                 # estimation samples per input at most
    alpha: float
    sigma: torch.Tensor        # (B,) float32: noise level of the classifier (NaN: not run)
    radius_estimator: Optional[torch.Tensor] = None   # Dual RS: largest grid radius R_ve
    radius_classifier: Optional[torch.Tensor] = None  # cleared (-1: none), as float64
    seed: Optional[int] = None  # the noise seed used (a fresh secret one unless given)

    def __len__(self):
        return self.prediction.shape[0]


def check_radii(radii) -> tuple:
    """The grid: finite radii >= 0, sorted, duplicates merged, 0 added (certifying 0 is the
    decision whether to abstain, so every input needs it anyway)."""
    try:
        values = [float(r) for r in radii]
    except TypeError:
        raise TypeError(f"radii must be a sequence of floats, got {type(radii).__name__}") from None
    if any(not math.isfinite(r) or r < 0 for r in values):
        raise ValueError(f"radii must be finite and >= 0, got {values}")
    return tuple(sorted(set(values) | {0.0}))


def radii_schedule(n_max: int, first: int = FIRST_CHECKPOINT, growth: float = GROWTH) -> List[int]:
    """Checkpoints n_1 < ... < n_K = n_max: from ``first``, each about ``growth`` times the
    previous, rounded up to a multiple of ``first`` (so CERTIFY's votes recorded per block of
    ``first`` samples replay the sequential test exactly: ``bench/replay_radii.py``), and
    n_max last, at least sqrt(``growth``) times the one before (so the last step is between
    sqrt(growth) and growth^1.5; n_max alone if below sqrt(growth) * first). Fixed before
    sampling: the union bound needs that."""
    if not growth > 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    n_max = check_positive_int("n_max", n_max)
    first = check_positive_int("first", first)
    points, n = [], first
    while n * math.sqrt(growth) <= n_max:
        points.append(n)
        n = first * math.ceil(n * growth / first)
    return points + [n_max]


def grid_index(radii, radius, abstain) -> np.ndarray:
    """Largest index j with radii[j] <= radius (radii ascending), -1 where abstained."""
    index = np.searchsorted(np.asarray(radii), radius, side="right") - 1
    return np.where(abstain, -1, index)


def votes_to_certify(radii, n: int, alpha: float, sigma: float) -> np.ndarray:
    """The fewest votes among n that certify each grid radius (n + 1 where none does), as
    float64: a binary search per radius on ``certified_radius`` (it grows with the count)."""
    radii = np.asarray(radii, dtype=np.float64)
    index = np.arange(radii.shape[0])
    lo = np.zeros(radii.shape[0], dtype=np.int64)
    hi = np.full(radii.shape[0], n + 1, dtype=np.int64)
    while (lo < hi).any():
        mid = (lo + hi) // 2
        radius, abstain = certified_radius(np.minimum(mid, n), n, alpha, sigma)
        ok = (grid_index(radii, radius, abstain) >= index) & (mid <= n)
        hi = np.where((lo < hi) & ok, mid, hi)
        lo = np.where((lo < hi) & ~ok, mid + 1, lo)
    return lo.astype(np.float64)


class _SequentialTest:
    """One sequential CERTIFY (classifier or estimator) over a batch: each input's chosen
    class, its cumulative votes, and the grid indices it has certified and can still reach.

    ``votes(members, draws) -> (len(draws), len(members), K)`` counts the model's votes for
    the given inputs; ``sigma`` (B,) is each input's noise level."""

    def __init__(self, votes: Callable, sigma: torch.Tensor, radii: tuple, schedule, alpha,
                 futility_alpha, select: Stream, estimate: Stream,
                 final_share: float = FINAL_SHARE):
        self.votes, self.radii = votes, np.asarray(radii)
        self.sigma = sigma.double().cpu().numpy()
        self.schedule = list(schedule)
        self.alphas = radii_alphas(alpha, schedule, final_share)
        self.futility_alpha, self.select, self.estimate = futility_alpha, select, estimate
        batch = sigma.shape[0]
        self.chosen = torch.zeros(batch, dtype=torch.int64)
        self.count = np.zeros(batch, dtype=np.int64)
        self.drawn = np.zeros(batch, dtype=np.int64)
        self.selection_drawn = np.zeros(batch, dtype=np.int64)
        self.cert = np.full(batch, -1)                     # largest certified grid index
        self.reach = np.full(batch, len(radii) - 1)        # largest index not given up
        self.reachable = np.full(batch, len(radii) - 1)    # largest index the samples left
                                                           # could certify (only decreases)
        # the futility rule's target: the fewest votes among n_max certifying each grid
        # radius at the last checkpoint's alpha, per input (B, R), non-decreasing along R
        self.final_counts = np.empty((batch, len(radii)), dtype=np.float64)
        for s in np.unique(self.sigma):
            self.final_counts[self.sigma == s] = votes_to_certify(
                radii, self.schedule[-1], self.alphas[-1], float(s))

    def start(self, members: torch.Tensor, n0: int) -> None:
        """Selection samples and the first checkpoint of ``members`` in one pass."""
        if not members.numel():
            return
        counts = self.votes(members, [Draw(self.select, n0), Draw(self.estimate, self.schedule[0])])
        self.chosen[members] = counts[0].argmax(1).cpu()
        m = members.numpy()
        self.selection_drawn[m] = n0
        self._add(m, counts[1])

    def draw_next(self, members: torch.Tensor) -> None:
        """Each member draws up to its next checkpoint (samples [drawn, next))."""
        m = members.numpy()
        upto = np.array([self.schedule[self.schedule.index(d) + 1] for d in self.drawn[m]])
        counts = self.votes(members, [Draw(self.estimate, torch.from_numpy(upto - self.drawn[m]),
                                           start=torch.from_numpy(self.drawn[m].copy()))])
        self._add(m, counts[0], upto)

    def _add(self, m: np.ndarray, counts: torch.Tensor, upto=None) -> None:
        chosen = self.chosen[torch.from_numpy(m)].to(counts.device).unsqueeze(1)
        self.count[m] += counts.gather(1, chosen).squeeze(1).cpu().numpy()
        self.drawn[m] = self.schedule[0] if upto is None else upto
        self._decide(m)

    def _decide(self, m: np.ndarray) -> None:
        for k in np.unique(self.drawn[m]):
            at = m[self.drawn[m] == k]
            step = self.schedule.index(int(k))
            count, sigma = self.count[at], self.sigma[at]
            radius, abstain = certified_radius(count, int(k), self.alphas[step], sigma)
            self.cert[at] = np.maximum(self.cert[at], grid_index(self.radii, radius, abstain))
            best = np.full(at.shape[0], -1)  # exact: every remaining sample votes for the class
            for later in range(step, len(self.schedule)):
                n_later = self.schedule[later]
                radius, abstain = certified_radius(count + n_later - int(k), n_later,
                                                   self.alphas[later], sigma)
                best = np.maximum(best, grid_index(self.radii, radius, abstain))
            self.reachable[at] = np.minimum(self.reachable[at], best)
            reach = self.reachable[at]
            if self.futility_alpha is not None:
                # judged afresh at every checkpoint: an early unlucky run of votes should
                # not give a radius up for good while the input keeps drawing anyway
                reach = np.minimum(reach, self._plausible_index(at, count, int(k)))
            self.reach[at] = np.maximum(reach, self.cert[at])

    def _plausible_index(self, at, count, n) -> np.ndarray:
        """Largest grid index still plausible (the futility rule): radius r stays only if the
        votes in hand plus the optimistic rate u = ClopperPearsonUpper(count, n, futility_alpha)
        over the remaining samples reach the count that certifies r at n_max."""
        upper = np.asarray(clopper_pearson_upper(count, n, self.futility_alpha), dtype=np.float64)
        optimistic = count + upper * (self.schedule[-1] - n)
        return (self.final_counts[at] <= optimistic[:, None]).sum(1) - 1

    def drawing(self, joint_reach: np.ndarray) -> np.ndarray:
        """Inputs that still need samples: a radius in joint reach not yet certified here,
        and checkpoints left."""
        return (self.cert < joint_reach) & (self.drawn > 0) & (self.drawn < self.schedule[-1])

    def samples(self) -> np.ndarray:
        return self.selection_drawn + self.drawn


def _run_rounds(tests: Sequence[_SequentialTest], progress: Optional[bool]) -> None:
    """Draw round after round until no test has an input that needs samples; one bar over
    the inputs decided (the rounds' own passes are short and show none)."""
    batch, decided = tests[0].reach.shape[0], 0
    with progress_bar(batch, "certify_radii", "input", enabled=progress) as bar:
        while True:
            joint_reach = np.minimum.reduce([t.reach for t in tests])
            busy = [(t, np.flatnonzero(t.drawing(joint_reach))) for t in tests]
            busy = [(t, m) for t, m in busy if m.size]
            still = np.unique(np.concatenate([m for _, m in busy])) if busy else []
            bar.update(batch - len(still) - decided)
            decided = batch - len(still)
            bar.set_postfix_str(f"{sum(int(t.samples().sum()) for t in tests) / batch:,.0f} "
                                "samples / input")
            if not busy:
                return
            for t, m in busy:
                t.draw_next(torch.from_numpy(m))


def _grid_radius(radii: tuple, index: np.ndarray) -> torch.Tensor:
    values = np.where(index >= 0, np.asarray(radii)[np.maximum(index, 0)], 0.0)
    return torch.from_numpy(values.astype(np.float64))


def _certified(radii: tuple, index: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.arange(len(radii))[None, :] <= index[:, None])


def _check_common(x, radii, alpha, n_max, n0, seed, ids, batch_size, futility_alpha):
    xb, _ = as_input_batch(x)
    futility = None if futility_alpha is None else check_open_unit("futility_alpha",
                                                                   futility_alpha)
    return (xb, check_radii(radii), check_alpha(alpha), check_positive_int("n_max", n_max),
            check_positive_int("n0", n0), check_seed(seed), check_ids(ids, xb.shape[0]),
            check_positive_int("batch_size", batch_size), futility)


def certify_radii(model, x, radii, sigma=None, alpha: float = 0.001, n_max: int = 100_000,
                  n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                  futility_alpha: Optional[float] = FUTILITY_ALPHA, num_classes=None,
                  channels_last=None, compile: bool = False, noise_backend: str = "auto",
                  progress: Optional[bool] = None, fold_bn: Optional[bool] = None
                  ) -> RadiiResult:
    """Which grid radii does the smoothed classifier certify at x? Sequential CERTIFY with
    early stopping (module docstring: procedure and why it is sound).

    radii: the grid (0 is always added); alpha: failure probability per input, for all its
    grid decisions together; n_max: estimation samples per input at most (CERTIFY's n).
    futility_alpha: level of the upper bound that gives up on implausible radii (None: give
    up only on radii that all remaining samples could not certify; no effect on soundness).
    ``model`` is a plain model smoothed at ``sigma`` (None: 0.25); ``drs.certify_radii``
    (``smoothers.certify_radii``) also takes a smoother, e.g. a DualSmoothing
    (``certify_radii_dual``). Other options as for ``smoothing.certify``. Each sample's noise
    is CERTIFY's (same seed, ids and streams), so with a single checkpoint
    (``radii_schedule(n_max) == [n_max]``) the decisions are CERTIFY's; with more, they
    differ only by alpha's split over the checkpoints.
    """
    xb, radii, alpha, n_max, n0, seed, ids, batch_size, futility = _check_common(
        x, radii, alpha, n_max, n0, seed, ids, batch_size, futility_alpha)
    sigma = DEFAULT_SIGMA if sigma is None else sigma
    sigma_in = torch.full((xb.shape[0],), check_sigma(sigma), dtype=torch.float64)

    def votes(members, draws):
        return count_votes(model, xb[members], sigma_in[members], draws, seed=seed,
                           ids=ids[members], batch_size=batch_size, num_classes=num_classes,
                           channels_last=channels_last, compile=compile,
                           noise_backend=noise_backend, progress=False, desc="certify_radii",
                           fold_bn=fold_bn)

    return run_standard(votes, sigma_in, radii, alpha, n_max, n0, futility, progress, seed)


def run_standard(votes: Callable, sigma: torch.Tensor, radii: tuple, alpha: float, n_max: int,
                 n0: int, futility_alpha: Optional[float], progress: Optional[bool] = None,
                 seed: Optional[int] = None, final_share: float = FINAL_SHARE) -> RadiiResult:
    """The sequential test of ``certify_radii`` on any vote source: ``votes(members, draws)``
    counts the votes of the given inputs for a list of ``sampling.Draw`` (the model's, or
    recorded ones replayed by ``bench/replay_radii.py``); ``sigma`` (B,) float64. The other
    arguments are taken as ``certify_radii`` has checked them (radii from ``check_radii``)."""
    test = _SequentialTest(votes, sigma, radii, radii_schedule(n_max), alpha, futility_alpha,
                           Stream.SELECT, Stream.ESTIMATE, final_share)
    test.start(torch.arange(sigma.shape[0]), n0)
    _run_rounds([test], progress)
    return RadiiResult(prediction=torch.where(torch.from_numpy(test.cert >= 0), test.chosen,
                                              ABSTAIN),
                       radius=_grid_radius(radii, test.cert), certified=_certified(radii, test.cert),
                       radii=radii, samples=torch.from_numpy(test.samples()), n_max=n_max,
                       alpha=alpha, sigma=sigma.float(), seed=seed)


def certify_radii_dual(dual, x, radii, alpha: float = 0.001, n_max: int = 100_000,
                       n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *,
                       ids=None, futility_alpha: Optional[float] = FUTILITY_ALPHA,
                       progress: Optional[bool] = None, n0_estimator: Optional[int] = None,
                       n_estimator: Optional[int] = None) -> RadiiResult:
    """``certify_radii`` for a DualSmoothing ``dual`` (``DualSmoothing.certify_radii``): the
    estimator draws n0_estimator selection and at most n_estimator estimation samples
    (default n0 / n_max), as ``DualSmoothing.certify``'s do."""
    xb, radii, alpha, n_max, n0, seed, ids, batch_size, futility = _check_common(
        x, radii, alpha, n_max, n0, seed, ids, batch_size, futility_alpha)
    n0_ve = check_positive_int("n0_estimator", n0 if n0_estimator is None else n0_estimator)
    n_ve = check_positive_int("n_estimator", n_max if n_estimator is None else n_estimator)
    sigma_ve = torch.full((xb.shape[0],), dual.estimator_sigma, dtype=torch.float64)

    def estimator_votes(members, draws):
        return count_votes(dual.estimator, xb[members], sigma_ve[members], draws, seed=seed,
                           ids=ids[members], batch_size=batch_size,
                           num_classes=len(dual.sigmas), progress=False, desc="estimator")

    def classifier_votes(level, members, draws):
        """Each member at its level's route, all levels in one pass (``level_passes``)."""
        return level_counts(dual, xb[members], ids[members], level[members], draws, seed=seed,
                            batch_size=batch_size, progress=False)[0]

    return run_dual(dual, estimator_votes, classifier_votes, xb.shape[0], radii, alpha, n_max,
                    n0, n_ve, n0_ve, futility, progress, seed)


def run_dual(dual, estimator_votes: Callable, classifier_votes: Callable,
             batch: int, radii: tuple, alpha: float, n_max: int, n0: int, n_max_estimator: int,
             n0_estimator: int, futility_alpha: Optional[float], progress: Optional[bool] = None,
             seed: Optional[int] = None, final_share: float = FINAL_SHARE) -> RadiiResult:
    """The Dual RS sequential test of ``certify_radii`` on any vote source (as
    ``run_standard``): ``estimator_votes(members, draws)`` and
    ``classifier_votes(level, members, draws)``, ``level`` (B,) being the estimator's chosen
    noise level per input; ``dual`` gives the noise levels and alpha's split."""
    alpha_ve, alpha_cls = dual.alphas(alpha)
    sigma_ve = torch.full((batch,), dual.estimator_sigma, dtype=torch.float64)
    estimator = _SequentialTest(estimator_votes, sigma_ve, radii, radii_schedule(n_max_estimator),
                                alpha_ve, futility_alpha, Stream.ESTIMATOR_SELECT,
                                Stream.ESTIMATOR_ESTIMATE, final_share)
    estimator.start(torch.arange(batch), n0_estimator)
    level = estimator.chosen
    sigma_cls = torch.tensor(dual.sigmas, dtype=torch.float64)[level]
    classifier = _SequentialTest(lambda members, draws: classifier_votes(level, members, draws),
                                 sigma_cls, radii, radii_schedule(n_max), alpha_cls,
                                 futility_alpha, Stream.SELECT, Stream.ESTIMATE, final_share)
    # the classifier runs only where the estimator can still certify r = 0
    classifier.reach[estimator.reach < 0] = -1
    classifier.start(torch.from_numpy(np.flatnonzero(estimator.reach >= 0)), n0)
    _run_rounds([estimator, classifier], progress)

    joint = np.minimum(estimator.cert, classifier.cert)
    ran = torch.from_numpy(classifier.drawn > 0)
    return RadiiResult(prediction=torch.where(torch.from_numpy(joint >= 0), classifier.chosen,
                                              ABSTAIN),
                       radius=_grid_radius(radii, joint), certified=_certified(radii, joint),
                       radii=radii,
                       samples=torch.from_numpy(estimator.samples() + classifier.samples()),
                       n_max=n_max, alpha=alpha,
                       sigma=torch.where(ran, sigma_cls, math.nan).float(),
                       radius_estimator=_index_radius(radii, estimator.cert),
                       radius_classifier=_index_radius(radii, classifier.cert), seed=seed)


def on_grid(r, radii: tuple, n_max: int) -> RadiiResult:
    """A CERTIFY result (a CertifyResult with ``samples``) read at the grid ``radii`` (from
    ``check_radii``): each input's largest grid radius not above its certified radius, which
    is certified too. For a smoother without a sequential test (the cascade)."""
    abstain = (r.prediction == ABSTAIN).numpy()
    index = grid_index(radii, r.radius.double().numpy(), abstain)
    return RadiiResult(prediction=r.prediction.clone(), radius=_grid_radius(radii, index),
                       certified=_certified(radii, index), radii=radii,
                       samples=r.samples.clone(), n_max=n_max, alpha=r.alpha,
                       sigma=r.sigma.float(), seed=r.seed)


def _index_radius(radii: tuple, index: np.ndarray) -> torch.Tensor:
    """Largest grid radius cleared, -1 where none (not even r = 0)."""
    values = np.where(index >= 0, np.asarray(radii)[np.maximum(index, 0)], -1.0)
    return torch.from_numpy(values.astype(np.float64))
