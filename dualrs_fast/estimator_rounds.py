"""Dual RS's estimator certification (R_ve) over its estimation samples, drawn in rounds that
stop as early as soundness allows.

An input's radius is min(R_ve, R_cls): once R_ve >= R_cls, more estimator samples cannot
raise it. The classifier runs first, so R_cls is known before the estimator draws any
estimation sample; the classifier's samples (streams SELECT / ESTIMATE) and the estimator's
selection samples (ESTIMATOR_SELECT) are independent of the estimator's estimation samples
(ESTIMATOR_ESTIMATE). So each input's checkpoints may be planned from its R_cls
(``target_schedule``) and still be fixed before any sample they count is drawn:

- the first checkpoint is the fewest samples at which R_ve could reach R_cls at all (every
  vote for the level, at that checkpoint's share of alpha_ve), the others grow
  geometrically up to n_estimator;
- checkpoint k of K bounds at alpha_ve * 2^k / (2^K - 1) (``checkpoint_alphas``), so by a
  union bound all of an input's bounds hold at once with probability >= 1 - alpha_ve, whatever
  the stopping rule; R_ve is the bound at the last checkpoint the input reached;
- an input the classifier abstains on draws no estimation sample (nothing to certify).

Futility stop (``futility_alpha``, default ``ESTIMATOR_FUTILITY_ALPHA``; None turns it off):
after a checkpoint, a member whose bound there abstains stops if even the optimistic count
c + u (n - m), u = ClopperPearsonUpper(c, m, futility_alpha), would abstain at the last
checkpoint (n samples, its share of alpha_ve). It is one more stopping rule, so the union bound
above covers it: the schedule and shares do not depend on it, and R_ve stays the bound at the
last checkpoint reached, which abstains for a member stopped this way. So with the same noise it
can only remove certificates, never add or enlarge one: every other member draws exactly as
without it. It removes one only where the full schedule would have certified: if the member's
level vote rate p is at least the rate r its remaining samples need, the stop takes u < r <= p
(probability at most futility_alpha per checkpoint); if p < r, those samples would have had to
beat their expectation (simulated in docs/dual_rs_cost.md: at most 0.3% of inputs, at rates
near the threshold). With u <= 1 it includes exact curtailment (c + n - m votes abstain at n:
no later checkpoint can certify, since a bound only falls with fewer votes, fewer samples or
a smaller share).

Slack stop (``slack``, default ``ESTIMATOR_SLACK``; None turns it off): after a checkpoint, a
member whose bound there certifies, R_ve(m) > 0, stops if, at the vote rate its m samples
show, the rest of its schedule would raise its radius min(R_ve, R_cls) by at most ``slack``
times the estimator's sigma (the projected count c n / m, bounded at the last checkpoint's
share). These are mostly the inputs whose estimator is less confident than their classifier:
without the stop they draw every sample and R_ve is their radius, so the stop trades about
``slack`` sigma of such an input's radius (more where its remaining samples would have beaten
its rate so far, less where they would have fallen short) for the samples it does not draw.
Sound for the same reason as the futility stop: a stopping rule, and R_ve is the bound at the
last checkpoint reached. On the same noise it changes only the inputs it stops, each to its
bound at that checkpoint.
"""
import math
from typing import Callable, List, Optional, Sequence

import numpy as np
import scipy.stats
import torch

from .bounds import certified_radius, clopper_pearson_upper
from .noise import Stream
from .sampling import Draw

#: checkpoints per schedule by default: geometric steps of about x2 from the first useful
#: checkpoint to n on the embedded MNIST models, where 4 steps of about x3 drew 10-20% more
#: estimator samples at the same R_ve (simulated on 44 test inputs routed to sigma 0.5)
DEFAULT_ROUNDS = 6
#: level of the futility stop's upper bound on a member's level vote rate (stopping only, see
#: the module docstring): a member whose rate is high enough for its last checkpoint to certify
#: is stopped with probability at most this per checkpoint (Fashion-MNIST, n = 2,000: the
#: estimator samples of inputs whose estimator abstains, docs/dual_rs_cost.md)
ESTIMATOR_FUTILITY_ALPHA = 1e-3
#: radius, in units of the estimator's sigma, that the slack stop may give up on an input whose
#: estimator is less confident than its classifier (module docstring; chosen on MNIST-5k,
#: full MNIST and Fashion-MNIST in docs/dual_rs_cost.md)
ESTIMATOR_SLACK = 0.05

def within_alpha(alpha: float, shares: list) -> list:
    """Lower the last share by ulps until the shares sum to at most alpha in floating point
    (a Bonferroni split must never spend more than alpha)."""
    while sum(shares) > alpha:
        shares[-1] = math.nextafter(shares[-1], 0.0)
    return shares


def checkpoint_alphas(alpha: float, checkpoints: int) -> list:
    """Shares of alpha for the checkpoints' bounds, doubling towards the last one:
    alpha * 2^k / (2^K - 1). They sum to at most alpha (union bound), and the final bound,
    which every input that does not stop early uses, loses the least: 32/63 of alpha with 6
    checkpoints, against 1/6 for equal shares."""
    total = 2.0 ** checkpoints - 1.0
    return within_alpha(alpha, [alpha * 2.0 ** k / total for k in range(checkpoints)])


def first_useful_checkpoint(target: float, n: int, alpha: float, sigma: float) -> int:
    """Fewest samples m <= n at which m votes out of m certify R_ve >= target at alpha (the
    Clopper-Pearson bound of m of m is alpha^(1/m)); n if even n do not."""
    p = scipy.stats.norm.cdf(target / sigma)
    m = n if p >= 1.0 else min(n, max(1, math.ceil(math.log(alpha) / math.log(p))))
    while m < n and _radius(m, m, alpha, sigma) < target:  # float rounding of the closed form
        m += 1
    return m


def _radius(count: int, n: int, alpha: float, sigma: float) -> float:
    radius, abstain = certified_radius(count, n, alpha, sigma)
    return -1.0 if bool(np.asarray(abstain)) else float(np.asarray(radius))


def target_schedule(target: float, n: int, rounds: int, alpha: float, sigma: float) -> List[int]:
    """Checkpoints m_1 < ... < m_K = n (K <= rounds) for an estimator that needs
    R_ve >= ``target``: m_1 the first at which that is possible (``first_useful_checkpoint``
    at m_1's share), then geometric up to n. Fixed before the estimation samples are drawn."""
    if rounds <= 1:
        return [n]
    first = first_useful_checkpoint(target, n, checkpoint_alphas(alpha, rounds)[0], sigma)
    growth = (n / first) ** (1.0 / (rounds - 1))
    return sorted({min(n, math.ceil(first * growth ** k)) for k in range(rounds - 1)} | {n})


class EstimatorBounds:
    """Per input: the level its selection samples chose, its votes among the estimation
    samples drawn so far, and R_ve at the last checkpoint reached (0 and abstaining before
    any)."""

    def __init__(self, level: torch.Tensor, sigma: float):
        batch = level.shape[0]
        self.level, self.sigma = level, sigma
        self.count = torch.zeros(batch, dtype=torch.int64)
        self.drawn = torch.zeros(batch, dtype=torch.int64)
        self.radius = torch.zeros(batch, dtype=torch.float64)
        self.abstains = torch.ones(batch, dtype=torch.bool)
        self.alpha = torch.zeros(batch, dtype=torch.float64)
        self.rounds = 1

    def add(self, members: torch.Tensor, level_counts: torch.Tensor, drawn, alpha) -> None:
        """Add ``members``' level votes (len(members), L) and bound each at its checkpoint
        (``drawn`` samples in all) at ``alpha`` (a float or one per member)."""
        level = self.level[members].to(level_counts.device).unsqueeze(1)
        self.count[members] += level_counts.gather(1, level).squeeze(1).cpu()
        self.drawn[members] = torch.as_tensor(drawn, dtype=torch.int64)
        self.alpha[members] = torch.as_tensor(alpha, dtype=torch.float64)
        for a in self.alpha[members].unique().tolist():  # one bound call per alpha share
            at = members[self.alpha[members] == a]
            radius, abstain = certified_radius(self.count[at].numpy(), self.drawn[at].numpy(),
                                               a, self.sigma)
            self.radius[at] = torch.from_numpy(np.asarray(radius, np.float64).reshape(-1))
            self.abstains[at] = torch.from_numpy(np.asarray(abstain, bool).reshape(-1))

    def futile(self, members: torch.Tensor, n: int, alpha: float, futility_alpha: float):
        """Which ``members`` abstain at their checkpoint and would abstain at the last one (n
        samples, share ``alpha``) with the optimistic count c + u (n - m),
        u = ClopperPearsonUpper(c, m, futility_alpha)."""
        count, drawn = self.count[members].numpy(), self.drawn[members].numpy()
        upper = np.asarray(clopper_pearson_upper(count, drawn, futility_alpha), np.float64)
        optimistic = np.minimum(np.floor(count + upper * (n - drawn)), n).astype(np.int64)
        _, abstain = certified_radius(optimistic, n, alpha, self.sigma)
        return self.abstains[members] & torch.from_numpy(np.asarray(abstain, bool).reshape(-1))

    def settled(self, members: torch.Tensor, n: int, alpha: float, wanted: torch.Tensor,
                slack: float):
        """Which ``members`` certify at their checkpoint and, at their vote rate so far, would
        raise min(R_ve, ``wanted``) by at most ``slack`` times sigma at the last checkpoint
        (n samples, share ``alpha``)."""
        count, drawn = self.count[members].numpy(), self.drawn[members].numpy()
        projected = np.minimum(count * n // np.maximum(drawn, 1), n)
        radius, abstain = certified_radius(projected, n, alpha, self.sigma)
        final = np.where(np.asarray(abstain, bool), 0.0, np.asarray(radius, np.float64))
        gain = torch.from_numpy(np.minimum(final.reshape(-1), wanted.numpy())) \
            - self.radius[members]
        return ~self.abstains[members] & (gain <= slack * self.sigma)

    def run(self, votes: Callable, members: torch.Tensor, schedules: Sequence[List[int]],
            alpha: float, wanted: torch.Tensor,
            futility_alpha: Optional[float] = None, slack: Optional[float] = None) -> None:
        """Draw ``members``' checkpoints (``schedules``, one list per member) round by round;
        a member stops once its R_ve >= ``wanted`` (its R_cls), once it is futile (``futile``
        at ``futility_alpha``; None: never), once it is settled (``settled`` within ``slack``;
        None: never) or when its schedule ends.
        ``votes(members, draws) -> (len(draws), len(members), L)`` counts level votes."""
        if not members.numel():
            return
        self.rounds = max(self.rounds, max(len(s) for s in schedules))
        shares = {len(s): checkpoint_alphas(alpha, len(s)) for s in schedules}
        step = torch.full((members.shape[0],), -1, dtype=torch.int64)
        last = torch.tensor([len(s) - 1 for s in schedules])
        stopped = torch.zeros(members.shape[0], dtype=torch.bool)
        while True:
            busy = torch.nonzero((step < last) & ~stopped &
                                 ((step < 0) | (self.radius[members] < wanted)))
            busy = busy.reshape(-1)
            if not busy.numel():
                return
            who = members[busy]
            upto = torch.tensor([schedules[i][step[i] + 1] for i in busy.tolist()])
            before = self.drawn[who]
            counts = votes(who, [Draw(Stream.ESTIMATOR_ESTIMATE, upto - before, start=before)])
            step[busy] += 1
            self.add(who, counts[0], upto,
                     [shares[len(schedules[i])][step[i]] for i in busy.tolist()])
            for k in {len(schedules[i]) for i in busy.tolist()}:  # per length: its last share
                at = busy[last[busy] == k - 1]
                end, share = schedules[int(at[0])][-1], shares[k][-1]
                if futility_alpha is not None:
                    stopped[at] |= self.futile(members[at], end, share, futility_alpha)
                if slack is not None:
                    stopped[at] |= self.settled(members[at], end, share, wanted[at].double(),
                                                slack)
