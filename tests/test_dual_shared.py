"""Dual RS's shared pass (derived_estimator): an estimator derived from the expert at its own
sigma gets its level votes from that expert's forward pass. Soundness on an analytic case at
alpha = 0.2 (each half of the certificate fails at most its share of alpha, the premise of
the union bound), a deliberately unsound variant that counts the selection samples (caught),
one forward pass per sample, the counts against a hand-made certification with scipy, and
when sharing must not happen."""
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast import derived_estimator
from dualrs_fast.derived_estimator import JointVotes, same_function, split_joint
from dualrs_fast.models import SmallCNN, load_default_classifier
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes

D = 16
SIGMAS = (0.25, 0.5)
SIGMA_E = 0.5            # the estimator's sigma: level 1 is shared
ALPHA = 0.2              # alpha_ve = alpha_cls = 0.1
GROUPS = (0, 1, 1)       # class 0 -> level 0 (its own expert), classes 1, 2 -> level 1


class TwoPlanes(torch.nn.Module):
    """Three classes from two axis hyperplanes: class 0 where x[a] + b_a < 0, else class 1
    where x[b] + b_b < 0, else class 2 (one-hot logits). Under N(0, sigma^2 I) noise the two
    coordinates are independent, so P(class 0) = Phi(-d_a / sigma), P(class 1) =
    Phi(d_a / sigma) Phi(-d_b / sigma), P(class 2) = Phi(d_a / sigma) Phi(d_b / sigma), with
    d_a = x[a] + b_a, d_b = x[b] + b_b."""

    def __init__(self, a=0, b=1, offset_a=0.0, offset_b=0.0):
        super().__init__()
        self.a, self.b, self.offset_a, self.offset_b = a, b, offset_a, offset_b

    def distances(self, x):
        x = x.reshape(x.shape[0], -1).double()
        return x[:, self.a] + self.offset_a, x[:, self.b] + self.offset_b

    def probabilities(self, x, sigma):
        d_a, d_b = (scipy.stats.norm.cdf(d.numpy() / sigma) for d in self.distances(x))
        return np.stack([1 - d_a, d_a * (1 - d_b), d_a * d_b], 1)

    def forward(self, x):
        x = x.reshape(x.shape[0], -1)
        z_a, z_b = x[:, self.a] + self.offset_a, x[:, self.b] + self.offset_b
        cls = torch.where(z_a < 0, 0, torch.where(z_b < 0, 1, 2))
        return torch.nn.functional.one_hot(cls, 3).to(x.dtype)


class GroupEstimator(torch.nn.Module):
    """A derived estimator that is not ClassGroupEstimator (the mechanism is general): the
    level of the expert's class, through ``levels_from_logits``."""

    def __init__(self, expert, groups=GROUPS, levels=2):
        super().__init__()
        self.expert = expert
        self.membership = torch.nn.functional.one_hot(torch.tensor(groups), levels).double()

    @property
    def derived_from(self):
        return self.expert

    def levels_from_logits(self, logits):
        return logits @ self.membership.to(logits.dtype)

    def forward(self, x):
        return self.levels_from_logits(self.expert(x))


class Counting(torch.nn.Module):
    """Wraps a model and counts the rows it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


def _dual(shared_expert=None, own_expert=None):
    shared_expert = shared_expert or TwoPlanes(0, 1)
    own_expert = own_expert or TwoPlanes(2, 3)
    return drs.DualSmoothing(GroupEstimator(shared_expert),
                             {SIGMAS[0]: own_expert, SIGMAS[1]: shared_expert},
                             sigmas=SIGMAS, estimator_sigma=SIGMA_E)


def _inputs(d0, d1, d2=None, d3=None, seed=0):
    """float32 inputs (N, D) with coordinates 0..3 set to the given distances (the
    TwoPlanes offsets are 0), the rest uniform."""
    x = torch.rand(len(d0), D, generator=torch.Generator().manual_seed(seed))
    for k, d in enumerate((d0, d1, d2, d3)):
        if d is not None:
            x[:, k] = torch.as_tensor(np.asarray(d, dtype=np.float64)).float()
    return x


def _cp_lower(k, n, alpha):
    k = np.asarray(k, np.float64)
    return np.where(k > 0, scipy.stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def _critical(n, alpha, low=0.6, high=0.97):
    """True probabilities just below Clopper-Pearson bound values at (n, alpha): there a
    bound exceeds the truth with probability close to alpha (the union bound is tight)."""
    bound = _cp_lower(np.arange(1, n + 1), n, alpha)
    return bound[(bound > low) & (bound < high)] - 1e-4


def _half_failures(dual, x, r):
    """Per input: does the estimator's half (level, R_ve) or the classifier's half (class,
    R_cls) claim more than the truth, among certified inputs? A half fails where its true
    probability is <= 1/2 or below Phi(radius / sigma)."""
    estimator, experts = dual.estimator.expert, {0: dual.routes[0].classifier,
                                                 1: dual.routes[1].classifier}
    certified = (r.prediction != drs.ABSTAIN).numpy()
    level = np.maximum(r.level.numpy(), 0)
    p_level = np.where(level == 1, *[scipy.stats.norm.cdf(s * estimator.distances(x)[0].numpy()
                                                          / SIGMA_E) for s in (1, -1)])
    sigma = np.asarray(SIGMAS)[level]
    p_class = np.zeros(len(level))
    for k, expert in experts.items():
        probs = expert.probabilities(x, SIGMAS[k])
        at = level == k
        p_class[at] = probs[at, np.maximum(r.prediction.numpy(), 0)[at]]

    def fails(p, radius, s):
        return certified & ((p <= 0.5) | (radius > s * scipy.stats.norm.ppf(np.maximum(p, 0.5))))
    return (fails(p_level, r.radius_estimator.double().numpy(), SIGMA_E),
            fails(p_class, r.radius_classifier.double().numpy(), sigma))


def _allowed(count, share):
    """Failures allowed among ``count`` inputs at rate ``share``: binomial 99.9% quantile."""
    return scipy.stats.binom.ppf(1 - 1e-3, count, share)


N_SOUND, n_SOUND = 1500, 100


@functools.lru_cache(maxsize=None)
def _sound_case():
    # A: level certain (shared), class 2 at a critical probability: the class half is tight.
    # B: level 1 at a critical probability, class 2 as likely as the level: both halves.
    # C: level 0 (its own expert, sequential estimator) at a critical probability.
    rng = np.random.default_rng(0)
    m = N_SOUND // 3
    p_cls = rng.choice(_critical(n_SOUND, ALPHA / 2), size=m)
    p_ve = rng.choice(_critical(n_SOUND, ALPHA / 2), size=2 * m)
    far = np.full(m, 5.0)
    d0 = np.concatenate([far, SIGMA_E * scipy.stats.norm.ppf(p_ve[:m]),
                         -SIGMA_E * scipy.stats.norm.ppf(p_ve[m:])])
    d1 = np.concatenate([SIGMA_E * scipy.stats.norm.ppf(p_cls), far, far])
    own = SIGMAS[0] * scipy.stats.norm.ppf(rng.choice(_critical(n_SOUND, ALPHA / 2), size=3 * m))
    return _inputs(d0, d1, np.full(3 * m, 5.0), own, seed=1)


def _run(dual, x, n0=n_SOUND, n=n_SOUND, **kw):
    # the level-0 inputs select their class with their own expert (its class 0 never comes
    # up there: borrowing the derived expert's class 0 would abstain them all; the borrowed
    # class has tests of its own, test_dual_estimator_class.py)
    kw.setdefault("estimator_class_share", None)
    return dual.certify(x, n0=n0, n=n, alpha=ALPHA, batch_size=4096, seed=3, **kw)


def test_shared_certificates_are_sound_at_alpha_0_2():
    dual, x = _dual(), _sound_case()
    r = _run(dual, x)
    m = N_SOUND // 3
    assert r.shared[:2 * m].float().mean() > 0.9 and r.shared[2 * m:].float().mean() < 0.5
    certified = r.prediction != drs.ABSTAIN
    assert certified.sum() > N_SOUND / 2
    ve_fails, cls_fails = _half_failures(dual, x, r)
    # each half at most its share of alpha (both bounds tight here), together at most alpha
    assert ve_fails.sum() <= _allowed(N_SOUND, ALPHA / 2)
    assert cls_fails.sum() <= _allowed(N_SOUND, ALPHA / 2)
    assert (ve_fails | cls_fails).sum() <= _allowed(N_SOUND, ALPHA)
    # the tight placement makes failures happen: the check is not vacuous
    assert cls_fails[:m].sum() > 0.3 * ALPHA / 2 * m and ve_fails[m:].sum() > 0


def test_soundness_check_sees_an_unsplit_alpha():
    # Power of the same check: both halves bounded at the full alpha (no Bonferroni split)
    # over-claim on the tight inputs.
    dual, x = _dual(), _sound_case()
    r = _run(dual, x)
    unsplit = drs.DualSmoothing(dual.estimator, {SIGMAS[0]: dual.routes[0].classifier,
                                                 SIGMAS[1]: dual.routes[1].classifier},
                                sigmas=SIGMAS, estimator_sigma=SIGMA_E,
                                estimator_alpha_fraction=0.5)
    r2 = unsplit.certify(x, n0=n_SOUND, n=n_SOUND, alpha=0.999 * 2 * ALPHA, batch_size=4096,
                         seed=3, estimator_class_share=None)
    _, cls_fails = _half_failures(dual, x, r2)
    assert cls_fails.sum() > _allowed(N_SOUND, ALPHA / 2)
    assert cls_fails.sum() > _half_failures(dual, x, r)[1].sum()


# ---- the unsound variant: counting the selection samples --------------------------------------
#
# Inputs on the shared expert's class boundary: classes 1 and 2 have probability 1/2 each,
# the level is certain. Any certificate is false. With independent selection samples the
# chosen class clears the bound with probability q = P(Bin(n, 1/2) >= k*) <= alpha_cls; if
# the counted samples are the selection samples, the chosen class is the majority and clears
# it with probability 2q.

N_TIE, n_TIE = 1000, 100


def _tie_case():
    far = np.full(N_TIE, 5.0)
    return _inputs(far, np.zeros(N_TIE), far, far, seed=2)


def _tie_rate(n, alpha):
    k = np.arange(n + 1)
    k_star = int(k[_cp_lower(k, n, alpha) >= 0.5][0])
    return scipy.stats.binom.sf(k_star - 1, n, 0.5)


def test_tie_inputs_certify_at_most_alpha_cls():
    dual, x = _dual(), _tie_case()
    r = _run(dual, x, n0=n_TIE, n=n_TIE)
    assert r.shared.all()
    _, cls_fails = _half_failures(dual, x, r)
    assert cls_fails.sum() <= _allowed(N_TIE, ALPHA / 2)
    assert 0.085 < _tie_rate(n_TIE, ALPHA / 2) <= ALPHA / 2   # the case is tight


def test_counting_the_selection_samples_is_caught(monkeypatch):
    # The deliberately unsound variant: the shared pass counts the stream its selection
    # samples came from (n0 = n: the very same samples). The soundness check fails it.
    monkeypatch.setattr(derived_estimator, "ESTIMATE_STREAM", Stream.ESTIMATOR_SELECT)
    monkeypatch.setattr(drs.dual, "ESTIMATE_STREAM", Stream.ESTIMATOR_SELECT)
    dual, x = _dual(), _tie_case()
    r = _run(dual, x, n0=n_TIE, n=n_TIE)
    assert r.shared.all()
    _, cls_fails = _half_failures(dual, x, r)
    assert cls_fails.sum() > _allowed(N_TIE, ALPHA / 2)
    assert cls_fails.sum() > 1.6 * _tie_rate(n_TIE, ALPHA / 2) * N_TIE


# ---- one pass, and the counts it gives -------------------------------------------------------

def test_one_forward_pass_serves_both_votes():
    # Inputs routed to the shared level: the expert sees n0 + n noisy rows per input in all
    # (selection, then estimation), plus the engine's batch probes and the clean rows of the
    # checks; the estimator's own forward never runs on a noisy sample.
    expert = Counting(TwoPlanes(0, 1))
    dual = _dual(shared_expert=expert)
    calls = []
    original = dual.estimator.forward
    dual.estimator.forward = lambda x: calls.append(x.shape[0]) or original(x)
    x = _inputs(np.full(6, 5.0), np.full(6, 3.0), seed=4)
    n0, n = 40, 500
    r = dual.certify(x, n0=n0, n=n, alpha=0.01, seed=0)
    assert r.shared.all() and (r.estimator_samples == n).all() and (r.samples == n0 + n).all()
    assert calls == [2, 2]                       # the width check and the derivation check
    probes = 2 * (8 + 8)                         # batch probe: 2 passes x (8 + 4 + 4) rows
    clean = 2 + 2 + 2 + 2                        # width check, derivation check (estimator
                                                 # and expert), class width
    assert expert.rows == 6 * (n0 + n) + probes + clean


def test_shared_counts_match_a_hand_made_certification():
    # class and level votes of the expert on the ESTIMATOR_ESTIMATE stream at sigma_e; the
    # class chosen by the ESTIMATOR_SELECT votes; R_cls and R_ve from scipy at their shares.
    dual = _dual()
    rng = np.random.default_rng(5)
    x = _inputs(rng.uniform(0.3, 1.0, 12), rng.uniform(-0.6, 0.6, 12), seed=5)
    n0, n = 30, 400
    r = dual.certify(x, n0=n0, n=n, alpha=0.02, seed=9)
    expert = dual.routes[1].classifier
    sigma = torch.full((12,), SIGMA_E, dtype=torch.float64)
    kw = dict(seed=9, ids=torch.arange(12), batch_size=1000)
    sel = count_votes(expert, x, sigma, [Draw(Stream.ESTIMATOR_SELECT, n0)], **kw)[0]
    est = count_votes(expert, x, sigma, [Draw(Stream.ESTIMATOR_ESTIMATE, n)], **kw)[0]
    level_sel = sel @ torch.tensor([[1, 0], [0, 1], [0, 1]])
    level_est = est @ torch.tensor([[1, 0], [0, 1], [0, 1]])
    shared = level_sel.argmax(1) == 1
    assert torch.equal(r.shared, shared) and shared.sum() >= 6
    cls = sel.argmax(1)
    c_cls = est.gather(1, cls[:, None]).squeeze(1).numpy()
    c_ve = level_est[:, 1].numpy()
    p_cls, p_ve = _cp_lower(c_cls, n, 0.01), _cp_lower(c_ve, n, 0.01)
    certified = (p_cls >= 0.5) & (p_ve >= 0.5) & shared.numpy()
    assert certified.sum() >= 4
    assert torch.equal(r.prediction[shared], torch.where(torch.from_numpy(
        (p_cls >= 0.5) & (p_ve >= 0.5)), cls, drs.ABSTAIN)[shared])
    np.testing.assert_array_equal(r.count_estimator[shared].numpy(), c_ve[shared.numpy()])
    np.testing.assert_allclose(r.radius_classifier.double().numpy()[certified],
                               SIGMA_E * scipy.stats.norm.ppf(p_cls[certified]), rtol=1e-6)
    np.testing.assert_allclose(r.radius_estimator.double().numpy()[certified],
                               SIGMA_E * scipy.stats.norm.ppf(p_ve[certified]), rtol=1e-6)
    assert (r.estimator_alpha[shared] == 0.01).all()


def test_joint_votes_split_into_class_and_level_votes():
    expert = TwoPlanes(0, 1)
    joint = JointVotes(expert, GroupEstimator(expert).levels_from_logits, 2)
    x = torch.randn(64, D)
    classes, levels = split_joint(joint(x)[None], 2)
    assert torch.equal(classes[0], expert(x))
    assert torch.equal(levels[0].argmax(1), GroupEstimator(expert)(x).argmax(1))
    bad = x.clone()
    bad[3, 0] = float("nan")
    nan_expert = JointVotes(lambda v: torch.where(torch.isnan(v[:, :3]), v[:, :3], 0.0) +
                            expert(torch.nan_to_num(v)), GroupEstimator(expert).levels_from_logits,
                            2)
    assert torch.isnan(nan_expert(bad)[3]).any() and not torch.isnan(nan_expert(bad)[:3]).any()


# ---- when the pass must not be shared --------------------------------------------------------

def test_same_function_needs_the_same_weights():
    a = load_default_classifier(1.0)
    b = load_default_classifier(1.0)
    assert same_function(a, a) and same_function(a, b)
    with torch.no_grad():
        b.classifier[-1].bias[0] += 1e-6
    assert not same_function(a, b)
    assert not same_function(a, load_default_classifier(0.5))
    assert not same_function(TwoPlanes(), TwoPlanes())       # unregistered: identity only
    assert not same_function(SmallCNN().eval(), SmallCNN().eval())


def test_no_sharing_when_the_route_is_another_function_or_sigma():
    x = _inputs(np.full(4, 5.0), np.full(4, 3.0), seed=6)
    kw = dict(n0=20, n=100, alpha=0.01, seed=0)
    # the shared level's route is an equal-looking but distinct unregistered model
    dual = drs.DualSmoothing(GroupEstimator(TwoPlanes(0, 1)),
                             {SIGMAS[0]: TwoPlanes(2, 3), SIGMAS[1]: TwoPlanes(0, 1)},
                             sigmas=SIGMAS, estimator_sigma=SIGMA_E)
    assert dual.shared_level(x) is None and not dual.certify(x, **kw).shared.any()
    # the estimator's sigma is not a level
    expert = TwoPlanes(0, 1)
    dual = drs.DualSmoothing(GroupEstimator(expert), {SIGMAS[0]: TwoPlanes(2, 3),
                                                      SIGMAS[1]: expert},
                             sigmas=SIGMAS, estimator_sigma=0.75)
    assert dual.shared_level(x) is None
    assert _dual(shared_expert=expert).shared_level(x) == 1
    assert _dual(shared_expert=expert).certify(x, **kw).shared.all()
    assert not _dual(shared_expert=expert).certify(x, share_pass=False, **kw).shared.any()


def test_a_false_derivation_is_refused():
    class Liar(GroupEstimator):
        def forward(self, x):
            return -super().forward(x)
    expert = TwoPlanes(0, 1)
    dual = drs.DualSmoothing(Liar(expert), {SIGMAS[0]: TwoPlanes(2, 3), SIGMAS[1]: expert},
                             sigmas=SIGMAS, estimator_sigma=SIGMA_E)
    with pytest.raises(ValueError, match="declared derivation"):
        dual.certify(_inputs(np.full(2, 5.0), np.full(2, 3.0)), n0=10, n=20, alpha=0.01)


def test_embedded_dual_shares_its_sigma_1_level():
    from dualrs_fast.models import load_default_dual
    dual = load_default_dual()
    x = torch.rand(2, 1, 28, 28)
    assert dual.shared_level(x) == dual.sigmas.index(1.0)
