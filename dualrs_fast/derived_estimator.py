"""Dual RS with an estimator derived from an expert: one forward pass gives both votes.

An estimator *derives from an expert* when it declares

- ``estimator.derived_from``: a model (the expert), and
- ``estimator.levels_from_logits(logits)``: its level logits as a function of that model's
  logits, so that ``estimator(x) == estimator.levels_from_logits(derived_from(x))``

(``models.ClassGroupEstimator`` does: the sigma 1.0 expert followed by a class-to-level map).
Where the classifier route of the level whose sigma equals ``estimator_sigma`` runs that same
function (``shared_level``), an input routed there sees the same noise distribution,
x + estimator_sigma * z, in the estimator and in its classifier, so one forward pass of the
expert on each noisy sample yields both votes: its class (classifier) and its level
(estimator). ``JointVotes`` encodes the pair as one index, class * L + level, so the engine
counts both with one histogram.

Why this is sound (Theorem 4.1 with a Bonferroni split, no independence needed):

1. Selection. The estimator's selection samples (stream ESTIMATOR_SELECT) choose each
   input's level; for an input routed to the shared level the same samples' class votes
   choose its class. Both choices are functions of the selection samples only.
2. Estimation. Given the level and class, the estimation samples (stream ESTIMATOR_ESTIMATE)
   are fresh: by the counter-based noise they are independent of every selection sample
   (another stream), so their votes for the chosen level are Binomial(n_ve, p_level) and
   their votes for the chosen class are Binomial(n, p_class), whatever was chosen.
3. Bounds. The estimator's bound (R_ve) fails with probability <= alpha_ve and the
   classifier's (R_cls) with probability <= alpha_cls, each over the estimation samples
   given the selection. The two counts come from the same samples, so the two failure events
   are dependent, but the union bound needs no independence: both bounds hold at once with
   probability >= 1 - alpha_ve - alpha_cls = 1 - alpha, and then min(R_ve, R_cls) is a
   certified radius.

The same selection votes also serve inputs routed to *another* level (``ESTIMATOR_CLASS_SHARE``):
where the expert's top class holds at least that share of an input's selection votes, that
class is its class, and its own classifier draws no selection samples (n0 fewer per input).
Sound by the same argument: the class is a function of the ESTIMATOR_SELECT samples, and the
routed classifier counts n fresh samples of its own stream (Stream.ESTIMATE at s(x)), so its
count for that class is Binomial(n, p_class) whatever the class; only accuracy depends on the
two experts agreeing, which is why a confident share is required (where the experts disagree,
the routed classifier would count a class it rarely outputs and abstain).

What would break it: choosing the level or the class from the samples that are counted
(the maximum of several counts is biased upward, so its bound fails more often than its
alpha share). ``tests/test_dual_shared.py`` runs that variant on purpose and catches it.
"""
from typing import Callable, Optional, Tuple

import torch

from .noise import Stream

#: streams of the shared pass: the estimator's own, so selection and estimation never share
#: noise (a test swaps ESTIMATE_STREAM for SELECT_STREAM to check the soundness tests bite)
SELECT_STREAM = Stream.ESTIMATOR_SELECT
ESTIMATE_STREAM = Stream.ESTIMATOR_ESTIMATE

#: an input routed to a level other than the shared one takes the derived expert's top class
#: from the estimator's selection votes when that class holds at least this share of them.
#: Held-out test images (500..999 of MNIST-5k, 500..1499 of full MNIST and Fashion-MNIST,
#: 100 selection votes, seed 0): at 0.8, 148 / 249 / 41 inputs borrow and every borrowed class
#: equals their own expert's selection; at 0.7 (175 / 321 / 57) two Fashion-MNIST inputs
#: would have taken a wrong class from a correct one (docs/dual_rs_cost.md)
ESTIMATOR_CLASS_SHARE = 0.8


def derivation(estimator) -> Optional[Tuple[Callable, Callable]]:
    """(expert, levels_from_logits) if ``estimator`` declares both, else None."""
    expert = getattr(estimator, "derived_from", None)
    to_levels = getattr(estimator, "levels_from_logits", None)
    if expert is None or to_levels is None:
        return None
    if not callable(expert) or not callable(to_levels):
        raise TypeError("an estimator's derived_from and levels_from_logits must be callable")
    return expert, to_levels


def same_function(a, b) -> bool:
    """Do two models compute the same function? The same object, or the same registered
    architecture (stateless, row-independent: ``models.MODEL_REGISTRY``) with the same
    constructor arguments and equal parameters and buffers (a checkpoint loaded twice)."""
    if a is b:
        return True
    from .models import MODEL_REGISTRY
    if type(a) is not type(b) or type(a) not in MODEL_REGISTRY.values():
        return False
    if getattr(a, "config", None) != getattr(b, "config", None) or a.training or b.training:
        return False
    return _tensors_equal(dict(a.named_parameters()), dict(b.named_parameters())) and \
        _tensors_equal(dict(a.named_buffers()), dict(b.named_buffers()))


def _tensors_equal(x: dict, y: dict) -> bool:
    return x.keys() == y.keys() and all(
        x[k].dtype == y[k].dtype and x[k].device == y[k].device and torch.equal(x[k], y[k])
        for k in x)


class JointVotes(torch.nn.Module):
    """One forward pass of the expert, two votes: row r gets a one-hot logit at
    class * num_levels + level (class = argmax of the expert's logits, level = argmax of the
    estimator's level logits, both first-maximum like the vote kernels); a row with a
    non-finite logit gets NaN entries, so the engine refuses it as it would the expert's."""

    def __init__(self, expert: Callable, levels_from_logits: Callable, num_levels: int):
        super().__init__()
        self.expert, self.levels_from_logits, self.num_levels = (expert, levels_from_logits,
                                                                 num_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.expert(x)
        levels = self.levels_from_logits(logits)
        if levels.dim() != 2 or levels.shape[1] != self.num_levels:
            raise ValueError(f"levels_from_logits must return (N, {self.num_levels}) logits, "
                             f"got {tuple(levels.shape)}")
        joint = logits.argmax(1, keepdim=True) * self.num_levels + levels.argmax(1, keepdim=True)
        # 0 where every logit is finite, NaN where one is not (inf * 0 and NaN * 0 are NaN)
        poison = (logits.sum(1, keepdim=True) + levels.sum(1, keepdim=True).to(logits.dtype)) * 0
        out = poison.expand(-1, logits.shape[1] * self.num_levels).clone()
        return out.scatter_(1, joint, 1.0)


def split_joint(counts: torch.Tensor, num_levels: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Joint counts (..., K * L) -> (class counts (..., K), level counts (..., L))."""
    joint = counts.reshape(counts.shape[:-1] + (-1, num_levels))
    return joint.sum(-1), joint.sum(-2)
