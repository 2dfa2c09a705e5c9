"""Dual Randomized Smoothing (Sun, Mao, Vechev): a smoothed variance estimator picks the
noise level s(x) per input and certifies a radius R_ve within which s(x) is constant; the
classifier smoothed at s(x) certifies R_cls; Theorem 4.1 gives radius min(R_ve, R_cls).
The two certifications fail with probabilities alpha_ve + alpha_cls = alpha (Bonferroni).

If the estimator abstains on an input, that input is not certified: prediction ABSTAIN,
radius 0, sigma NaN, level -1 (its classifier is not run when that is known in advance).
Where the classifier abstains, level and sigma say where the input was routed.

Sequential estimator (``estimator_rounds`` > 1, the default): the estimator's estimation
samples come in nested rounds and an input stops once R_ve >= R_cls, since then more samples
cannot raise min(R_ve, R_cls); round k of K bounds at alpha_ve * 2^k / (2^K - 1) (most on
the last round, which every input that does not stop early uses), so by a union bound all of
them hold at once with probability >= 1 - alpha_ve whatever the stopping rule.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import numpy as np
import torch

from .bounds import certified_radius
from .noise import Stream
from .sampling import Draw, count_votes, model_device
from .smoothing import (ABSTAIN, CertifyResult, certify_counts, float32_rounded_down,
                        predict_counts)
from .validation import (as_input_batch, check_alpha, check_ids, check_model_input_dtype,
                         check_open_unit, check_positive_int, check_sample_count, check_seed,
                         check_sigma)


@dataclass
class DualCertifyResult(CertifyResult):
    """CertifyResult fields for Dual RS: radius = min(R_ve, R_cls) (0 where abstained); alpha
    is the total (split by ``DualSmoothing.alphas``); sigma is the chosen level's noise (NaN
    where the estimator's abstention decides, see the module docstring); count, p_lower and n
    are the classifier's (count and p_lower 0 where it was not run)."""
    radius_estimator: torch.Tensor = None   # (B,) R_ve, 0 where the estimator abstained
    radius_classifier: torch.Tensor = None  # (B,) R_cls, 0 where the classifier abstained or was not run
    level: torch.Tensor = None              # (B,) index into sigmas chosen by the estimator, -1 if it abstained
    count_estimator: torch.Tensor = None    # (B,) estimator votes for the chosen level among
                                            # its estimator_samples
    estimator_samples: torch.Tensor = None  # (B,) its estimation samples drawn (<= n_estimator)
    n_estimator: int = 0                    # estimation samples per input at most
    estimator_alpha: torch.Tensor = None    # (B,) level of each input's R_ve bound: its
                                            # checkpoint's share (checkpoint_alphas)
    estimator_rounds: int = 1               # checkpoints in the estimator's schedule


def check_sigmas(sigmas) -> tuple:
    sigmas = tuple(sigmas) if sigmas is not None else ()
    if not sigmas:
        raise ValueError("sigmas must list at least one noise level")
    sigmas = tuple(check_sigma(s, "each of sigmas") for s in sigmas)
    if any(b <= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must be strictly increasing, got {sigmas}")
    return sigmas


def estimator_schedule(n: int, rounds: int) -> list:
    """Nested checkpoints n_1 < ... < n_rounds = n, growing x4 (duplicates merged). Fixed in
    advance, so a union bound over them makes every checkpoint's bound hold at once."""
    rounds = min(rounds, 2 + int(math.log(n, 4)))  # more rounds would all be 1 sample
    return sorted({max(1, math.ceil(n / 4 ** (rounds - 1 - k))) for k in range(rounds)})


def checkpoint_alphas(alpha: float, checkpoints: int) -> list:
    """Shares of alpha for the checkpoints' bounds, doubling towards the last one:
    alpha * 2^k / (2^K - 1). They sum to at most alpha (union bound), and the final bound,
    which every input that does not stop early uses, loses the least: 8/15 of alpha with 4
    checkpoints, against 1/4 for equal shares."""
    total = 2.0 ** checkpoints - 1.0
    return within_alpha(alpha, [alpha * 2.0 ** k / total for k in range(checkpoints)])


def within_alpha(alpha: float, shares: list) -> list:
    """Lower the last share by ulps until the shares sum to at most alpha in floating point
    (a Bonferroni split must never spend more than alpha)."""
    while sum(shares) > alpha:
        shares[-1] = math.nextafter(shares[-1], 0.0)
    return shares


class _SequentialEstimate:
    """The estimator's CERTIFY with its estimation samples drawn in nested rounds: each input
    keeps the level its selection samples chose and its cumulative vote count; its R_ve is
    the bound at the last checkpoint it reached, at that checkpoint's share of alpha."""

    def __init__(self, dual, xb, ids, seed, batch_size, schedule, alpha, progress):
        self.dual, self.xb, self.ids, self.seed = dual, xb, ids, seed
        self.batch_size, self.progress, self.schedule = batch_size, progress, schedule
        self.alphas = checkpoint_alphas(alpha, len(schedule))
        self.sigma = torch.full((xb.shape[0],), dual.estimator_sigma, dtype=torch.float64)

    def _votes(self, members, draws):
        return count_votes(self.dual.estimator, self.xb[members], self.sigma[members], draws,
                           seed=self.seed, ids=self.ids[members], batch_size=self.batch_size,
                           num_classes=len(self.dual.sigmas), progress=self.progress,
                           desc="estimator")

    def _level_votes(self, counts, members):
        level = self.level[members].to(counts.device).unsqueeze(1)
        return counts.gather(1, level).squeeze(1).cpu()

    def _bound(self):
        """R_ve of every input at the checkpoint it reached, at that checkpoint's alpha."""
        self.radius = torch.zeros(self.count.shape[0], dtype=torch.float64)
        self.abstains = torch.ones(self.count.shape[0], dtype=torch.bool)
        self.alpha = torch.zeros(self.count.shape[0], dtype=torch.float64)
        for upto, alpha in zip(self.schedule, self.alphas):
            at = self.drawn == upto
            if not at.any():
                continue
            radius, abstain = certified_radius(self.count[at].numpy(), upto, alpha,
                                               self.dual.estimator_sigma)
            self.radius[at] = torch.from_numpy(np.asarray(radius, dtype=np.float64).reshape(-1))
            self.abstains[at] = torch.from_numpy(np.asarray(abstain, dtype=bool).reshape(-1))
            self.alpha[at] = alpha

    def start(self, n0: int):
        """Selection samples and the first checkpoint, all inputs in one pass."""
        everyone = torch.arange(self.xb.shape[0])
        counts = self._votes(everyone, [Draw(Stream.ESTIMATOR_SELECT, n0),
                                        Draw(Stream.ESTIMATOR_ESTIMATE, self.schedule[0])])
        self.level = counts[0].argmax(1).cpu()
        self.count = self._level_votes(counts[1], everyone)
        self.drawn = torch.full((self.xb.shape[0],), self.schedule[0], dtype=torch.int64)
        self._bound()

    def hopeless(self) -> torch.Tensor:
        """Inputs the estimator abstains on even if all their remaining samples vote for
        their level (the bound grows with every such vote and with each checkpoint's larger
        share of alpha, so the last checkpoint decides): no need to run the classifier."""
        final = self.schedule[-1]
        _, abstain = certified_radius((self.count + final - self.drawn).numpy(), final,
                                      self.alphas[-1], self.dual.estimator_sigma)
        return torch.from_numpy(np.asarray(abstain, dtype=bool).reshape(-1))

    def finish(self, wanted: torch.Tensor):
        """Draw the later rounds for inputs whose R_ve is still below ``wanted`` (R_cls)."""
        for before, upto in zip(self.schedule, self.schedule[1:]):
            members = torch.nonzero((self.radius < wanted) & (self.drawn == before)).reshape(-1)
            if not members.numel():
                break
            counts = self._votes(members, [Draw(Stream.ESTIMATOR_ESTIMATE, upto - before,
                                                start=before)])
            self.count[members] += self._level_votes(counts[0], members)
            self.drawn[members] = upto
            self._bound()


class _Route(torch.nn.Module):
    """One classifier route, called as route(x_noisy, sigma_rows): optional denoiser, then
    an expert (plain model) or a noise-conditioned model."""

    def __init__(self, classifier, conditioned: bool, denoiser=None):
        super().__init__()
        self.classifier, self.conditioned, self.denoiser = classifier, conditioned, denoiser

    def forward(self, x, sigma_rows):
        if self.denoiser is not None:
            x = self.denoiser(x, sigma_rows)
        return self.classifier(x, sigma_rows) if self.conditioned else self.classifier(x)


def build_routes(classifier, sigmas, denoiser=None) -> list:
    """One route per level: a dict {sigma: expert} (keys must match ``sigmas``) gives each
    level its expert; a single model is noise-conditioned, model(x, sigma_rows), shared by all
    levels (with a denoiser, an off-the-shelf model(x) after it)."""
    if isinstance(classifier, dict):
        experts = {float(k): v for k, v in classifier.items()}
        missing = [s for s in sigmas if s not in experts]
        extra = sorted(set(experts) - set(sigmas))
        if missing or extra:
            raise ValueError(f"classifier experts must match sigmas {tuple(sigmas)}: missing "
                             f"{missing}, unexpected {extra}")
        if not all(callable(experts[s]) for s in sigmas):
            raise TypeError("every expert in the classifier dict must be a model (callable)")
        return [_Route(experts[s], conditioned=False, denoiser=denoiser) for s in sigmas]
    if not callable(classifier):
        raise TypeError("classifier must be a model or a dict {sigma: model}")
    route = _Route(classifier, conditioned=denoiser is None, denoiser=denoiser)
    return [route] * len(sigmas)


class DualSmoothing:
    """Dual RS over the noise levels ``sigmas`` (pixel scale).

    estimator: model (N, ...) -> (N, len(sigmas)) logits over the noise levels, smoothed at
        ``estimator_sigma`` (default: the largest of ``sigmas``; a smaller one caps every
        radius below what the largest expert can certify, and certify warns).
    classifier: a noise-conditioned model called as ``classifier(x_noisy, sigma)`` (sigma a
        float32 tensor (N,)), or a dict {sigma: expert model} with one plain model per level.
    denoiser: optional ``denoiser(x_noisy, sigma) -> x`` applied before the classifier; with
        a denoiser, a single (non-dict) classifier is an off-the-shelf model ``classifier(x)``.
    estimator_alpha_fraction: share of alpha spent on the estimator (default: half).
    """

    def __init__(self, estimator: Callable, classifier: Union[Callable, Dict[float, Callable]],
                 sigmas: Sequence[float] = (0.25, 0.5, 1.0),
                 estimator_sigma: Optional[float] = None,
                 denoiser: Optional[Callable] = None, estimator_alpha_fraction: float = 0.5):
        self.sigmas = check_sigmas(sigmas)
        # default: the largest level, so R_ve can reach what the largest expert certifies
        self.estimator_sigma = check_sigma(self.sigmas[-1] if estimator_sigma is None
                                           else estimator_sigma, "estimator_sigma")
        self.estimator_alpha_fraction = check_open_unit("estimator_alpha_fraction",
                                                        estimator_alpha_fraction)
        if not callable(estimator):
            raise TypeError("estimator must be a model (callable)")
        self.estimator, self.denoiser = estimator, denoiser
        self.routes = build_routes(classifier, self.sigmas, denoiser)

    def alphas(self, alpha: float):
        """(alpha_estimator, alpha_classifier), summing to at most alpha in floating point."""
        alpha_ve = alpha * self.estimator_alpha_fraction
        alpha_ve, alpha_cls = within_alpha(alpha, [alpha_ve, alpha - alpha_ve])
        return alpha_ve, alpha_cls

    def estimator_reach(self, n_estimator: int, alpha_estimator: float) -> float:
        """The largest R_ve the smoothed estimator can certify: estimator_sigma * Phi^-1 of the
        Clopper-Pearson bound of n_estimator / n_estimator votes at alpha_estimator."""
        return float(certified_radius(n_estimator, n_estimator, alpha_estimator,
                                      self.estimator_sigma)[0])

    def _warn_if_estimator_caps(self, n_ve: int, alpha_ve: float, n: int, alpha_cls: float):
        """Every radius is min(R_ve, R_cls): an estimator_sigma whose largest R_ve is below
        what the largest level's expert can certify silently cuts that expert's reach.
        (Compared at the plain procedure's alpha_ve: the sequential estimator's last checkpoint
        gets 8/15 of it, about 1% less reach, a price of the schedule, not of the sigma.)"""
        reach_ve = self.estimator_reach(n_ve, alpha_ve)
        reach_cls = float(certified_radius(n, n, alpha_cls, self.sigmas[-1])[0])
        if reach_ve < reach_cls:
            needed = self.estimator_sigma * reach_cls / reach_ve
            warnings.warn(
                f"estimator_sigma={self.estimator_sigma:g} caps every Dual RS radius at "
                f"{reach_ve:.3f} (n_estimator={n_ve}), below the {reach_cls:.3f} the "
                f"sigma={self.sigmas[-1]:g} expert can certify at n={n} (short by "
                f"{reach_cls - reach_ve:.3f}); an estimator_sigma >= {needed:.3g} removes the cap",
                stacklevel=3)

    @staticmethod
    def _width_probe(x: torch.Tensor) -> torch.Tensor:
        """Two clean rows to learn a model's output width (two, so that a model normalising
        by batch statistics reaches the engine's clearer batch probe instead of failing here)."""
        return x[torch.arange(2) % x.shape[0]]

    def _check_estimator_width(self, x: torch.Tensor):
        check_model_input_dtype(self.estimator, x.dtype)
        with torch.inference_mode():
            out = self.estimator(self._width_probe(x).to(model_device(self.estimator, x.device)))
        if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[1] != len(self.sigmas):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(f"estimator must return (N, len(sigmas)={len(self.sigmas)}) logits, "
                             f"got {shape}")

    def _check_classifier_widths(self, x: torch.Tensor):
        """Every route must return the same number of classes, whichever levels this call
        uses (a route that is never run must not hide a mismatch)."""
        widths = {}
        for k, route in enumerate(self.routes):
            if id(route) in widths:
                continue
            check_model_input_dtype(route, x.dtype)
            device = model_device(route, x.device)
            with torch.inference_mode():
                out = route(self._width_probe(x).to(device),
                            torch.full((2,), self.sigmas[k], dtype=torch.float32, device=device))
            if not isinstance(out, torch.Tensor) or out.dim() != 2:
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                raise ValueError(f"classifier at sigma {self.sigmas[k]} must return (N, K) "
                                 f"logits, got {shape}")
            widths[id(route)] = (self.sigmas[k], out.shape[1])
        if len({w for _, w in widths.values()}) > 1:
            raise ValueError("all classifier experts must return the same number of classes, "
                             f"got {', '.join(f'{w} at sigma {s}' for s, w in widths.values())}")

    def _classifier_counts(self, xb, level, draws, seed, ids, batch_size, progress):
        """Counts (len(draws), B, K) of each input's route at its sigma; routes sharing one
        model are packed into one pass."""
        counts = None
        groups = {}
        for k in level.unique().tolist():
            groups.setdefault(id(self.routes[k]), []).append(k)
        for ks in groups.values():
            members = torch.nonzero(torch.isin(level, torch.tensor(ks))).reshape(-1)
            sigma = torch.tensor(self.sigmas, dtype=torch.float64)[level[members]]
            c = count_votes(self.routes[ks[0]], xb[members], sigma, draws, seed=seed,
                            ids=ids[members], batch_size=batch_size, pass_sigma=True,
                            progress=progress, desc="classifier")
            if counts is None:
                counts = torch.zeros((len(draws), xb.shape[0], c.shape[2]), dtype=torch.int64,
                                     device=c.device)
            elif c.shape[2] != counts.shape[2]:
                raise ValueError("all classifier experts must return the same number of classes")
            counts[:, members.to(c.device)] = c
        return counts

    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                n0_estimator: Optional[int] = None, n_estimator: Optional[int] = None,
                estimator_rounds: int = 4,
                progress: Optional[bool] = None) -> DualCertifyResult:
        """Certify x (one input or a batch). The estimator uses n0_estimator / n_estimator
        samples (default n0 / n) at estimator_sigma; the classifier n0 / n at s(x).

        estimator_rounds: the estimator's n_estimator estimation samples are drawn in up to
        this many nested rounds (checkpoints growing x4, ``estimator_schedule``), each bounded
        at its share of alpha_estimator (``checkpoint_alphas``; a union bound, so every
        checkpoint's bound holds at once);
        an input stops drawing once R_ve >= R_cls, when more samples cannot raise the radius
        min(R_ve, R_cls). 1 = the plain procedure (all n_estimator samples at
        alpha_estimator, before the classifier).

        seed: None (default) draws a fresh secret seed from the OS, returned as ``r.seed``
        (pass it back to reproduce the result); an explicit seed is deterministic."""
        xb, _ = as_input_batch(x)
        batch = xb.shape[0]
        n0, n = check_sample_count("n0", n0), check_sample_count("n", n)
        n0_ve = check_sample_count("n0_estimator", n0 if n0_estimator is None else n0_estimator)
        n_ve = check_sample_count("n_estimator", n if n_estimator is None else n_estimator)
        schedule = estimator_schedule(n_ve, check_positive_int("estimator_rounds",
                                                               estimator_rounds))
        alpha = check_alpha(alpha)
        alpha_ve, alpha_cls = self.alphas(alpha)
        seed, ids = check_seed(seed), check_ids(ids, batch)
        batch_size = check_positive_int("batch_size", batch_size)
        self._check_estimator_width(xb)
        self._warn_if_estimator_caps(n_ve, alpha_ve, n, alpha_cls)
        self._check_classifier_widths(xb)
        ve = _SequentialEstimate(self, xb, ids, seed, batch_size, schedule, alpha_ve, progress)
        ve.start(n0_ve)

        sigma = torch.full((batch,), math.nan, dtype=torch.float32)
        prediction = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        radius_cls = torch.zeros(batch, dtype=torch.float64)
        count = torch.zeros(batch, dtype=torch.int64)
        p_lower = torch.zeros(batch, dtype=torch.float64)
        routed = torch.nonzero(~ve.hopeless()).reshape(-1)
        if routed.numel():
            level = ve.level[routed]
            cls_counts = self._classifier_counts(
                xb[routed], level, [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)], seed,
                ids[routed], batch_size, progress)
            sigma_routed = torch.tensor(self.sigmas, dtype=torch.float64)[level]
            cls = certify_counts(cls_counts[0], cls_counts[1], n, alpha_cls, sigma_routed)
            sigma[routed] = sigma_routed.float()
            prediction[routed] = cls.prediction
            radius_cls[routed] = cls.radius.double()
            count[routed] = cls.count
            p_lower[routed] = cls.p_lower
        ve.finish(wanted=torch.where(prediction != ABSTAIN, radius_cls, 0.0))

        # Level -1 and sigma NaN where the estimator's abstention decides the outcome; where
        # the classifier abstained the estimator may have stopped early, and the level and
        # sigma the classifier ran at are kept.
        classifier_abstained = ~torch.isnan(sigma) & (prediction == ABSTAIN)
        estimator_abstains = ve.abstains & ~classifier_abstained
        prediction[ve.abstains] = ABSTAIN
        sigma[estimator_abstains] = math.nan
        radius_ve = float32_rounded_down(ve.radius.numpy())
        radius_cls = radius_cls.float()
        return DualCertifyResult(
            prediction=prediction,
            radius=torch.where(prediction != ABSTAIN, torch.minimum(radius_ve, radius_cls), 0.0),
            count=count, n=n, alpha=alpha, sigma=sigma, p_lower=p_lower,
            radius_estimator=radius_ve, radius_classifier=radius_cls,
            level=torch.where(estimator_abstains, ABSTAIN, ve.level),
            count_estimator=ve.count, n_estimator=n_ve,
            estimator_samples=ve.drawn.clone(), estimator_alpha=ve.alpha.clone(),
            estimator_rounds=len(schedule), seed=seed)

    def predict(self, x, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                seed: Optional[int] = None, *, ids=None,
                progress: Optional[bool] = None) -> torch.Tensor:
        """PREDICT for Dual RS: the estimator's level (binomial test at alpha_ve), then the
        classifier at that level (alpha_cls), n samples each; ABSTAIN if either abstains.
        seed=None (default) is a fresh secret seed, not returned: pass one to reproduce."""
        xb, _ = as_input_batch(x)
        batch = xb.shape[0]
        n = check_sample_count("n", n)
        alpha_ve, alpha_cls = self.alphas(check_alpha(alpha))
        seed, ids = check_seed(seed), check_ids(ids, batch)
        batch_size = check_positive_int("batch_size", batch_size)
        self._check_estimator_width(xb)
        self._check_classifier_widths(xb)
        sigma_ve = torch.full((batch,), self.estimator_sigma, dtype=torch.float64)
        ve_counts = count_votes(self.estimator, xb, sigma_ve, [Draw(Stream.ESTIMATOR_PREDICT, n)],
                                seed=seed, ids=ids, batch_size=batch_size,
                                num_classes=len(self.sigmas), progress=progress, desc="estimator")
        level = predict_counts(ve_counts[0], alpha_ve)
        prediction = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        routed = torch.nonzero(level != ABSTAIN).reshape(-1)
        if routed.numel():
            counts = self._classifier_counts(xb[routed], level[routed], [Draw(Stream.PREDICT, n)],
                                             seed, ids[routed], batch_size, progress)
            prediction[routed] = predict_counts(counts[0], alpha_cls)
        return prediction

