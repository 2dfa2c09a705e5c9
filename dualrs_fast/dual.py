"""Dual Randomized Smoothing (Sun, Mao, Vechev): a smoothed variance estimator picks the
noise level s(x) per input and certifies a radius R_ve within which s(x) is constant; the
classifier smoothed at s(x) certifies R_cls; Theorem 4.1 gives radius min(R_ve, R_cls).
The two certifications fail with probabilities alpha_ve + alpha_cls = alpha (Bonferroni).

If the estimator abstains on an input, that input is not certified: prediction ABSTAIN,
radius 0, sigma NaN, level -1 (its classifier is not run when that is known in advance).
Where the classifier abstains, level and sigma say where the input was routed.

Order of the passes: the estimator's selection samples choose every input's level; then
- inputs routed to a level whose expert the estimator derives from (``derived_estimator``:
  e.g. the class-group estimator over the sigma 1.0 expert) get both certifications from one
  pass of that expert over shared noise (R_ve over all n_estimator samples at alpha_ve);
  the others take that expert's class from the same selection votes where it is confident
  (``estimator_class_share``) and then draw no selection samples of their own;
- the others run their classifier, then the estimator's estimation samples in rounds that
  stop once R_ve >= R_cls, once the estimator evidently cannot certify (its futility stop),
  or once the rest of the samples would raise R_ve by at most a slack (its slack stop)
  (``estimator_rounds``; ``estimator_rounds=1``: all n_estimator samples before the
  classifier, which then runs only where the estimator certified).
The shared inputs' joint votes and every level's classifier share one engine pass
(``level_passes``: the same counts as a pass per expert), so the default makes at most
2 + estimator_rounds passes per call: selection, that pass, the estimator's rounds.
"""
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence, Union

import torch

from . import log_rows
from .bounds import certified_radius
from .derived_estimator import (ESTIMATE_STREAM, ESTIMATOR_CLASS_SHARE, SELECT_STREAM,
                                JointVotes, derivation, same_function, split_joint)
from .estimator_rounds import (DEFAULT_ROUNDS, ESTIMATOR_FUTILITY_ALPHA, ESTIMATOR_SLACK,
                               EstimatorBounds, target_schedule, within_alpha)
from .level_passes import level_counts
from .noise import Stream
from .sampling import Draw, count_votes, model_device
from .sequential_radii import FUTILITY_ALPHA, RadiiResult, certify_radii_dual
from .shared_noise import certify_on_shared_noise
from .smoothing import (ABSTAIN, CertifyResult, certify_counts, float32_rounded_down,
                        predict_counts)
from .validation import (as_input_batch, check_alpha, check_ids, check_model_input_dtype,
                         check_nonnegative, check_open_unit, check_positive_int,
                         check_sample_count, check_seed, check_sigma)


@dataclass
class DualCertifyResult(CertifyResult):
    """CertifyResult fields for Dual RS: radius = min(R_ve, R_cls) (0 where abstained); alpha
    is the total (split by ``DualSmoothing.alphas``); sigma is the chosen level's noise (NaN
    where the estimator's abstention decides, see the module docstring); count, p_lower and n
    are the classifier's (count and p_lower 0 where it was not run)."""
    radius_estimator: torch.Tensor = None   # (B,) R_ve, 0 where the estimator abstained
    radius_classifier: torch.Tensor = None  # (B,) R_cls, 0 where the classifier abstained
                                            # or was not run
    level: torch.Tensor = None              # (B,) index into sigmas chosen by the estimator,
                                            # -1 if it abstained
    count_estimator: torch.Tensor = None    # (B,) estimator votes for the chosen level among
                                            # its estimator_samples
    estimator_samples: torch.Tensor = None  # (B,) its estimation samples drawn (<= n_estimator)
    n_estimator: int = 0                    # estimation samples per input at most
    estimator_alpha: torch.Tensor = None    # (B,) level of each input's R_ve bound: its
                                            # checkpoint's share (checkpoint_alphas)
    estimator_rounds: int = 1               # checkpoints in the estimator's schedules at most
    shared: torch.Tensor = None             # (B,) bool: estimator and classifier votes came
                                            # from one pass (``derived_estimator``)
    estimator_class: torch.Tensor = None    # (B,) bool: the class was chosen from the
                                            # estimator's selection votes (every shared input;
                                            # others by ``estimator_class_share``)
    samples: torch.Tensor = None            # (B,) noisy samples drawn, estimator and
                                            # classifier together (standard RS: n0 + n)


def check_sigmas(sigmas) -> tuple:
    sigmas = tuple(sigmas) if sigmas is not None else ()
    if not sigmas:
        raise ValueError("sigmas must list at least one noise level")
    sigmas = tuple(check_sigma(s, "each of sigmas") for s in sigmas)
    if any(b <= a for a, b in zip(sigmas, sigmas[1:])):
        raise ValueError(f"sigmas must be strictly increasing, got {sigmas}")
    return sigmas


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


def routes_output_classes(routes, sigmas, x: torch.Tensor) -> int:
    """Classes the widest route scores, from one forward pass of each on x's first input."""
    one = x[:1].clone()  # x[:1] may be a view of a dataset: no model gets to write into it
    widths = []
    with torch.inference_mode():
        for route, sigma in dict(zip(routes, sigmas)).items():
            device = model_device(route.classifier, one.device)
            widths.append(int(route(one.to(device), torch.full((1,), sigma, device=device))
                              .shape[1]))
    return max(widths)


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
        gets about half of it, 32/63 with 6 checkpoints, about 1% less reach, a price of the
        schedule, not of the sigma.)"""
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

    def shared_level(self, x: torch.Tensor) -> Optional[int]:
        """The level whose classifier votes come from the estimator's own forward pass
        (``derived_estimator``): the estimator derives from an expert, and the level at
        estimator_sigma is served by a plain expert computing that same function. None if
        there is none. Checked on every call (weights may change between calls)."""
        derived = derivation(self.estimator)
        if derived is None or self.estimator_sigma not in self.sigmas:
            return None
        expert, to_levels = derived
        k = self.sigmas.index(self.estimator_sigma)
        route = self.routes[k]
        if route.conditioned or route.denoiser is not None or \
                not same_function(route.classifier, expert):
            return None
        probe = self._width_probe(x).to(model_device(self.estimator, x.device))
        with torch.inference_mode():  # the declared derivation, checked on two clean rows
            same = torch.equal(self.estimator(probe), to_levels(expert(probe)))
        if not same:
            raise ValueError("estimator(x) differs from estimator.levels_from_logits("
                             "estimator.derived_from(x)): its declared derivation is wrong")
        return k

    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                n0_estimator: Optional[int] = None, n_estimator: Optional[int] = None,
                estimator_rounds: int = DEFAULT_ROUNDS, share_pass: bool = True,
                share_noise: bool = False,
                estimator_futility_alpha: Optional[float] = ESTIMATOR_FUTILITY_ALPHA,
                estimator_class_share: Optional[float] = ESTIMATOR_CLASS_SHARE,
                estimator_slack: Optional[float] = ESTIMATOR_SLACK,
                progress: Optional[bool] = None) -> DualCertifyResult:
        """Certify x (one input or a batch). The estimator uses n0_estimator / n_estimator
        samples (default n0 / n) at estimator_sigma; the classifier n0 / n at s(x).

        estimator_rounds: for inputs whose classifier runs on its own pass, the estimator's
        estimation samples come after the classifier's, in up to this many nested rounds
        planned from R_cls (``estimator_rounds.target_schedule``), each bounded at its share
        of alpha_estimator (``checkpoint_alphas``; a union bound, so every checkpoint's bound
        holds at once); an input stops once R_ve >= R_cls, when more samples cannot raise the
        radius min(R_ve, R_cls). 1 = the plain procedure (all n_estimator samples at
        alpha_estimator, before the classifier). Inputs routed to the expert the estimator
        derives from (``shared_level``) get both votes from one pass over max(n, n_estimator)
        shared samples, R_ve over n_estimator of them at alpha_estimator, and their class is
        chosen from the estimator's selection samples (plus more of that stream up to n0).
        share_pass=False: every input's classifier draws its own samples (as ``certify_radii``
        does, whose one-checkpoint decisions then equal these).
        share_noise: with estimator_rounds=1, the inputs not on a shared pass count the
        estimator's and their classifier's estimation votes on one draw of the noise, fed at
        the two sigmas by a fused kernel (``shared_noise``): the estimator's votes are those
        of share_noise=False, the classifier's come from the estimator's noise, and the
        classifier also runs where the estimator then abstains. Refused with
        estimator_rounds > 1 (its schedule is planned from R_cls, which must not depend on
        the samples it counts).
        estimator_futility_alpha: with estimator_rounds > 1, an input whose estimator abstains
        at a checkpoint stops drawing once even the upper bound at this level on its level vote
        rate would abstain at the last checkpoint (``estimator_rounds``: the futility stop; it
        can only turn a certificate into an abstention, with small probability). None: no
        futility stop (every such input draws its whole schedule).
        estimator_class_share: where a level is shared, an input routed to another level
        whose selection votes of that expert (the first min(n0, n0_estimator) samples) give
        its top class at least this share takes that class and draws no selection samples
        of its own (``r.estimator_class``; sound: ``derived_estimator``). None: every such
        input selects its class with n0 samples of its own classifier. Not with share_noise.
        estimator_slack: with estimator_rounds > 1, an input whose estimator certifies at a
        checkpoint stops drawing once, at the level vote rate its samples show, the rest of
        its schedule would raise its radius by at most this many estimator sigmas
        (``estimator_rounds``: the slack stop; inputs with R_ve < R_cls, which otherwise draw
        every sample, give up about that much radius). None: no slack stop.

        seed: None (default) draws a fresh secret seed from the OS, returned as ``r.seed``
        (pass it back to reproduce the result); an explicit seed is deterministic."""
        xb, _ = as_input_batch(x)
        batch = xb.shape[0]
        n0, n = check_sample_count("n0", n0), check_sample_count("n", n)
        n0_ve = check_sample_count("n0_estimator", n0 if n0_estimator is None else n0_estimator)
        n_ve = check_sample_count("n_estimator", n if n_estimator is None else n_estimator)
        rounds = check_positive_int("estimator_rounds", estimator_rounds)
        futility = None if estimator_futility_alpha is None else check_open_unit(
            "estimator_futility_alpha", estimator_futility_alpha)
        class_share = None if estimator_class_share is None else check_open_unit(
            "estimator_class_share", estimator_class_share)
        slack = None if estimator_slack is None else check_nonnegative("estimator_slack",
                                                                       estimator_slack)
        if share_noise and rounds != 1:
            raise ValueError("share_noise needs estimator_rounds=1: the sequential estimator "
                             "plans its checkpoints from R_cls, which would depend on the "
                             "noise it counts")
        alpha = check_alpha(alpha)
        alpha_ve, alpha_cls = self.alphas(alpha)
        seed, ids = check_seed(seed), check_ids(ids, batch)
        batch_size = check_positive_int("batch_size", batch_size)
        self._check_estimator_width(xb)
        self._warn_if_estimator_caps(n_ve, alpha_ve, n, alpha_cls)
        self._check_classifier_widths(xb)
        run = _CertifyRun(self, xb, ids, seed, batch_size, progress,
                          self.shared_level(xb) if share_pass else None)
        ve = run.select(n0_ve, n0)

        sigma = torch.full((batch,), math.nan, dtype=torch.float32)
        prediction = torch.full((batch,), ABSTAIN, dtype=torch.int64)
        radius_cls = torch.zeros(batch, dtype=torch.float64)
        count = torch.zeros(batch, dtype=torch.int64)
        p_lower = torch.zeros(batch, dtype=torch.float64)

        def keep(members, cls, sigma_members):
            sigma[members] = sigma_members.float()
            prediction[members] = cls.prediction
            radius_cls[members] = cls.radius.double()
            count[members] = cls.count
            p_lower[members] = cls.p_lower

        shared = run.shared_inputs(ve.level)
        is_shared = torch.isin(torch.arange(batch), shared)
        own = torch.nonzero(~is_shared).reshape(-1)
        routed = own  # inputs whose classifier runs
        if share_noise:  # plain, on one draw of z per estimation sample (shared_noise)
            if own.numel():
                keep(own, *certify_on_shared_noise(self, ve, xb[own], ids[own], own, n0, n, n_ve,
                                                   alpha_ve, alpha_cls, seed, batch_size,
                                                   progress))
        elif rounds == 1:  # plain: the estimator's verdict first, the classifier where it holds
            ve.run(run.estimator_votes, own, [[n_ve]] * own.numel(), alpha_ve,
                   torch.full((own.numel(),), math.inf, dtype=torch.float64))
            routed = own[~ve.abstains[own]]
        # one engine pass: the shared inputs' joint votes and the routed inputs' classifiers
        on_pass = routed[:0] if share_noise else routed
        borrows = run.estimator_classes(on_pass, class_share)
        for members, cls, sigma_members in run.level_pass(ve, shared, on_pass, borrows, n0, n,
                                                          n_ve, alpha_ve, alpha_cls):
            keep(members, cls, sigma_members)
        borrowed = torch.zeros(batch, dtype=torch.bool)
        borrowed[on_pass[borrows]] = True
        if rounds > 1:  # the estimator where the classifier certified, stopping at R_cls
            wanted = routed[prediction[routed] != ABSTAIN]
            schedules = [target_schedule(float(radius_cls[i]), n_ve, rounds, alpha_ve,
                                         self.estimator_sigma) for i in wanted.tolist()]
            ve.run(run.estimator_votes, wanted, schedules, alpha_ve, radius_cls[wanted], futility,
                   slack)

        # Level -1 and sigma NaN where the estimator's abstention decides the outcome; where
        # the classifier abstained the estimator may not have run, and the level and sigma
        # the classifier ran at are kept.
        classifier_abstained = ~torch.isnan(sigma) & (prediction == ABSTAIN)
        estimator_abstains = ve.abstains & ~classifier_abstained
        prediction[ve.abstains] = ABSTAIN
        sigma[estimator_abstains] = math.nan
        samples = n0_ve + torch.where(
            is_shared, max(n, n_ve) + max(0, n0 - n0_ve),
            ve.drawn + torch.isin(torch.arange(batch), routed).long() * (n0 + n) - borrowed * n0)
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
            estimator_rounds=ve.rounds, shared=is_shared, estimator_class=is_shared | borrowed,
            samples=samples, seed=seed)

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
            counts, _ = level_counts(self, xb[routed], ids[routed], level[routed],
                                     [Draw(Stream.PREDICT, n)], seed=seed, batch_size=batch_size,
                                     progress=progress)  # every level in one pass
            prediction[routed] = predict_counts(counts[0], alpha_cls)
        return prediction

    def certify_radii(self, x, radii, alpha: float = 0.001, n_max: int = 100_000,
                      n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *,
                      ids=None, futility_alpha: Optional[float] = FUTILITY_ALPHA,
                      progress: Optional[bool] = None, n0_estimator: Optional[int] = None,
                      n_estimator: Optional[int] = None) -> RadiiResult:
        """Which grid radii Dual RS certifies at x, with early stopping: R_ve and R_cls must
        both clear a radius (``sequential_radii``). The estimator draws n0_estimator
        selection and at most n_estimator estimation samples (default n0 / n_max), the
        classifier n0 / n_max, as for ``certify``."""
        return certify_radii_dual(self, x, radii, alpha, n_max, n0, batch_size, seed, ids=ids,
                                  futility_alpha=futility_alpha, progress=progress,
                                  n0_estimator=n0_estimator, n_estimator=n_estimator)

    # What a run over a dataset (``runner``) asks of a smoother: its log's extra columns and
    # their cells, the checks a resumed row must pass, and the samples an input may cost.
    log_columns = ("sigma", "radius_estimator", "radius_classifier")

    @staticmethod
    def log_cells(r, k: int) -> dict:
        """Input k's cells of ``log_columns`` in a certify (or certify_radii) result."""
        return dict(sigma=float(r.sigma[k]), radius_estimator=float(r.radius_estimator[k]),
                    radius_classifier=float(r.radius_classifier[k]))

    def row_rules(self, columns, labels, indices, num_classes: int, n: int, alpha: float,
                  n0_estimator: Optional[int] = None,
                  n_estimator: Optional[int] = None) -> log_rows.RowRules:
        """The checks a certify log row must pass (``log_rows``); options as for certify."""
        return log_rows.dual_rules(columns, labels, indices, num_classes, n,
                                   n if n_estimator is None else n_estimator, self.alphas(alpha),
                                   self.sigmas, self.estimator_sigma)

    def samples_per_input(self, n0: int, n: int, n0_estimator: Optional[int] = None,
                          n_estimator: Optional[int] = None) -> int:
        """The most samples certify (or certify_radii) draws per input, estimator included."""
        return n0 + n + (n0 if n0_estimator is None else n0_estimator) + \
            (n if n_estimator is None else n_estimator)

    @staticmethod
    def predict_samples_per_input(n: int) -> int:
        return 2 * n  # the estimator's n, then the classifier's

    def output_classes(self, x: torch.Tensor) -> int:
        """Classes the widest expert scores (a bound on the predictions a log may hold)."""
        return routes_output_classes(self.routes, self.sigmas, x)



class _CertifyRun:
    """The estimator's passes of one ``DualSmoothing.certify`` call: selection (through
    ``JointVotes`` where a level is shared, so its class votes come along), the shared
    level's joint estimation pass, and the level votes of later rounds."""

    def __init__(self, dual, xb, ids, seed, batch_size, progress, shared_level):
        self.dual, self.xb, self.ids, self.seed = dual, xb, ids, seed
        self.batch_size, self.progress, self.shared_level = batch_size, progress, shared_level
        self.levels = len(dual.sigmas)
        self.sigma = torch.full((xb.shape[0],), dual.estimator_sigma, dtype=torch.float64)
        self.joint = None
        if shared_level is not None:
            expert, to_levels = derivation(dual.estimator)
            self.joint = JointVotes(expert, to_levels, self.levels)

    def _count(self, model, members, draws, desc, num_classes=None):
        return count_votes(model, self.xb[members], self.sigma[members], draws, seed=self.seed,
                           ids=self.ids[members], batch_size=self.batch_size,
                           num_classes=num_classes, progress=self.progress, desc=desc)

    def estimator_votes(self, members, draws):
        return self._count(self.dual.estimator, members, draws, "estimator", self.levels)

    def select(self, n0_ve: int, n0: int) -> EstimatorBounds:
        """Selection samples of every input: its level (and, where a level is shared, the
        class votes of the first min(n0, n0_ve) samples, for the inputs routed there)."""
        everyone = torch.arange(self.xb.shape[0])
        if self.joint is None:
            counts = self.estimator_votes(everyone, [Draw(SELECT_STREAM, n0_ve)])
            return EstimatorBounds(counts[0].argmax(1).cpu(), self.dual.estimator_sigma)
        first = min(n0, n0_ve)
        draws = [Draw(SELECT_STREAM, first)] + (
            [Draw(SELECT_STREAM, n0_ve - first, start=first)] if n0_ve > first else [])
        classes, levels = split_joint(self._count(self.joint, everyone, draws, "estimator"),
                                      self.levels)
        self.class_selection, self.selection_drawn = classes[0], n0_ve
        return EstimatorBounds(levels.sum(0).argmax(1).cpu(), self.dual.estimator_sigma)

    def estimator_classes(self, routed, share: Optional[float]) -> torch.Tensor:
        """(len(routed),) bool: which routed inputs take the derived expert's top class from
        their selection votes (it holds at least ``share`` of them)."""
        if share is None or self.joint is None or not routed.numel():
            return torch.zeros(routed.numel(), dtype=torch.bool)
        votes = self.class_selection[routed.to(self.class_selection.device)].cpu()
        return votes.max(1).values >= share * votes.sum(1)

    def shared_inputs(self, level: torch.Tensor) -> torch.Tensor:
        if self.shared_level is None:
            return torch.zeros(0, dtype=torch.int64)
        return torch.nonzero(level == self.shared_level).reshape(-1)

    def level_pass(self, ve: EstimatorBounds, shared, routed, borrows, n0: int, n: int,
                   n_ve: int, alpha_ve: float, alpha_cls: float):
        """One engine pass (``level_passes``) for the ``shared`` inputs' joint votes and the
        ``routed`` inputs' classifier votes (n0 selection and n estimation samples at their
        sigma; no selection samples where ``borrows``: their selection votes are the derived
        expert's, ``estimator_classes``). A shared input draws max(n, n_ve) estimation
        samples (the classifier counts the first n, the estimator the first n_ve) and the
        class selection samples beyond n0_ve if n0 > n0_ve; its R_ve goes to ``ve``.
        -> [(members, the classifier's CertifyResult, their sigmas)] for the shared and the
        routed inputs."""
        members = torch.cat([shared, routed])
        if not members.numel():
            return []
        first, most = min(n, n_ve), max(n, n_ve)
        extra = max(0, n0 - self.selection_drawn) if shared.numel() else 0
        on_shared = torch.arange(members.numel()) < shared.numel()

        def per_input(shared_value, routed_value):  # a draw's samples for each member
            return torch.where(on_shared, shared_value, routed_value)
        own_selection = torch.cat([torch.zeros(shared.numel(), dtype=torch.int64),
                                   torch.where(borrows, 0, n0)])
        start = self.selection_drawn if shared.numel() else 0
        draws = [Draw(ESTIMATE_STREAM, per_input(first, 0)),
                 Draw(ESTIMATE_STREAM, per_input(most - first, 0), start=first),
                 Draw(SELECT_STREAM, per_input(extra, 0), start=start),
                 Draw(Stream.SELECT, own_selection), Draw(Stream.ESTIMATE, per_input(0, n))]
        level = ve.level[members]
        classes, levels = level_counts(
            self.dual, self.xb[members], self.ids[members], level, draws, seed=self.seed,
            batch_size=self.batch_size, progress=self.progress,
            joint=(self.shared_level, self.joint) if shared.numel() else None)
        out = []
        if shared.numel():
            mine = torch.arange(shared.numel(), device=classes.device)
            selected = self.class_selection[shared.to(self.class_selection.device)]
            if extra:
                selected = selected + classes[2][mine].to(selected.device)
            class_counts = classes[0][mine] + (classes[1][mine] if n > first else 0)
            level_counts_ = levels[0][mine] + (levels[1][mine] if n_ve > first else 0)
            ve.add(shared, level_counts_, n_ve, alpha_ve)
            sigma = torch.full((shared.numel(),), self.dual.estimator_sigma, dtype=torch.float64)
            out.append((shared, certify_counts(selected, class_counts.to(selected.device), n,
                                               alpha_cls, sigma), sigma))
        if routed.numel():
            mine = torch.arange(shared.numel(), members.numel(), device=classes.device)
            sigma = torch.tensor(self.dual.sigmas, dtype=torch.float64)[ve.level[routed]]
            selected = classes[3][mine]  # a copy (index tensor): safe to overwrite rows
            if borrows.any():
                selected[borrows.to(selected.device)] = self.class_selection[
                    routed[borrows].to(self.class_selection.device)].to(selected)
            out.append((routed, certify_counts(selected, classes[4][mine], n, alpha_cls,
                                               sigma), sigma))
        return out
