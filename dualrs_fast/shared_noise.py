"""Dual RS with shared noise: the estimator and the routed classifier count their estimation
votes on one draw of the noise, z, at their own sigmas.

Where the estimator is a network of its own (a learned estimator, or a derived one whose
pass is not shared: ``derived_estimator``), each of an input's estimation samples j draws
z_j once (stream ESTIMATOR_ESTIMATE, counter (seed, id, stream, j)) and feeds

- the estimator x + estimator_sigma * z_j (the first n_estimator samples), and
- the classifier of the input's level x + sigma(x) * z_j (the first n samples),

both written by one fused noise kernel (``kernels/noise_pair_*.py``), so the Philox and
Box-Muller work is done once for the two. The estimator's votes are exactly those of the
unshared plain procedure (``estimator_rounds=1``: the same stream and counters); the
classifier's come from the estimator's z instead of a stream of its own.

Why this is sound (Theorem 4.1 with a Bonferroni split, no independence needed):

1. Selection. The estimator's selection samples (stream ESTIMATOR_SELECT) choose each
   input's level, hence sigma(x) and the route; the classifier's selection samples (stream
   SELECT, at sigma(x)) choose its class. Both choices are functions of selection samples
   only.
2. Estimation. Given the level and class, the estimation samples z_j (stream
   ESTIMATOR_ESTIMATE) are fresh: by the counter-based noise they are independent of every
   selection sample (other streams). For any fixed s, x + s z_j ~ N(x, s^2 I), so the
   estimator's votes for the chosen level are Binomial(n_estimator, p_level) and the
   classifier's votes for the chosen class are Binomial(n, p_class at sigma(x)), whatever was
   chosen.
3. Bounds. R_ve (at alpha_ve) fails with probability <= alpha_ve and R_cls (at alpha_cls)
   with probability <= alpha_cls, each over the estimation samples given the selection. The
   two counts come from the same z, so the two failure events are dependent, but the union
   bound needs no independence: both bounds hold at once with probability
   >= 1 - alpha_ve - alpha_cls = 1 - alpha, and then min(R_ve, R_cls) is a certified radius.
4. Fixed in advance. The estimator's sample count and alpha share must not depend on the
   shared samples. The sequential estimator (``estimator_rounds`` > 1) plans its checkpoints
   from R_cls, which would now be a function of the very z it counts, so shared noise runs
   with the plain procedure only: all n_estimator samples, bounded at alpha_ve.

What would break it: counting the samples that chose the level or the class (the maximum of
several counts is biased upward, so its bound fails more often than its alpha share).
``tests/test_shared_noise.py`` runs that variant on purpose (``ESTIMATE_STREAM`` swapped for
a selection stream) and catches it.

The cost: the same number of forward passes as the unshared plain procedure, one noise draw
fewer per estimation sample of the shorter of the two counts; and, unlike the unshared plain
procedure, the classifier runs also where the estimator will abstain (not known before the
shared pass). The sequential estimator usually draws far fewer estimator samples
(docs/dual_rs_cost.md), so ``share_noise`` is an option of the plain procedure, not the
default.
"""
from typing import Tuple

import torch

from .level_passes import LevelRoutes
from .noise import Stream
from .sampling import Draw, Head, count_votes, count_votes_shared_noise
from .smoothing import CertifyResult, certify_counts

#: the stream of the shared estimation samples: the estimator's own, so the unshared plain
#: procedure's estimator votes are reproduced (a test swaps it for a selection stream to
#: check the soundness tests bite)
ESTIMATE_STREAM = Stream.ESTIMATOR_ESTIMATE


def shared_estimation_counts(dual, routes: LevelRoutes, xb: torch.Tensor, ids: torch.Tensor,
                             sigma: torch.Tensor, n: int, n_ve: int, seed: int, batch_size: int,
                             progress) -> Tuple[torch.Tensor, torch.Tensor]:
    """(level votes (B, L) of the estimator over n_ve samples at estimator_sigma, class votes
    (B, K) of each input's route over n samples at its sigma (B,)), from one draw of z per
    sample: min(n, n_ve) samples through the pair kernel, the rest of the longer count on
    their own (the same counters, so the same z)."""
    first = min(n, n_ve)
    sigma_e = torch.full((xb.shape[0],), dual.estimator_sigma, dtype=torch.float64)
    heads = (Head(dual.estimator, sigma_e, num_classes=len(dual.sigmas)),
             Head(routes, sigma, pass_sigma=True))
    kw = dict(seed=seed, ids=ids, batch_size=batch_size, progress=progress)
    counts = [c[0] for c in count_votes_shared_noise(
        heads, xb, [Draw(ESTIMATE_STREAM, first)], desc="shared noise", **kw)]
    for h, (head, want) in enumerate(zip(heads, (n_ve, n))):
        if want > first:  # the rest of the longer count: the same stream, later counters
            counts[h] = counts[h] + count_votes(
                head.model, xb, head.sigma, [Draw(ESTIMATE_STREAM, want - first, start=first)],
                pass_sigma=head.pass_sigma, num_classes=head.num_classes,
                desc=("estimator", "classifier")[h], **kw)[0]
    return counts[0], counts[1]


def certify_on_shared_noise(dual, ve, xb: torch.Tensor, ids: torch.Tensor, members: torch.Tensor,
                            n0: int, n: int, n_ve: int, alpha_ve: float, alpha_cls: float,
                            seed: int, batch_size: int,
                            progress) -> Tuple[CertifyResult, torch.Tensor]:
    """The plain procedure for ``members`` (xb, ids: theirs), levels already chosen in ``ve``
    (``estimator_rounds.EstimatorBounds``) from the estimator's selection samples: the
    classifier's class from its own selection samples (stream SELECT, n0 at sigma(x)), then
    one shared draw for both estimation counts; one engine pass each, whatever the levels.
    R_ve goes to ``ve`` at alpha_ve over n_ve samples; returns the classifier's CertifyResult
    at alpha_cls and the members' sigmas."""
    routes = LevelRoutes(dual.routes, dual.sigmas)
    sigma = torch.tensor(dual.sigmas, dtype=torch.float64)[ve.level[members]]
    selection = count_votes(routes, xb, sigma, [Draw(Stream.SELECT, n0)], seed=seed, ids=ids,
                            batch_size=batch_size, pass_sigma=True, progress=progress,
                            desc="classifier")[0]
    level_counts, class_counts = shared_estimation_counts(dual, routes, xb, ids, sigma, n, n_ve,
                                                          seed, batch_size, progress)
    ve.add(members, level_counts, n_ve, alpha_ve)
    return certify_counts(selection, class_counts.to(selection.device), n, alpha_cls,
                          sigma), sigma
