"""Dual RS's sequential estimator (estimator_rounds > 1): drawing a stream in rounds gives
the samples of one draw, the checkpoint schedule planned from R_cls, R_ve's union-bound share
of alpha checked against scipy, soundness on analytic cases, and the samples it saves."""
import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.estimator_rounds import (DEFAULT_ROUNDS, ESTIMATOR_FUTILITY_ALPHA,
                                          EstimatorBounds, checkpoint_alphas,
                                          first_useful_checkpoint, target_schedule)
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes

from analytic import LinearBinary, inputs_at_distances
from dual_helpers import expected_estimator_alpha

SHAPE = (1, 4, 4)
SIGMAS = (0.25, 0.5)
ESTIMATOR_SIGMA = 0.5


def _linear(seed, b=0.0):
    return LinearBinary.random(int(np.prod(SHAPE)), seed, b=b)


def _dual(estimator, experts=None):
    experts = experts or {s: _linear(10 + k) for k, s in enumerate(SIGMAS)}
    return drs.DualSmoothing(estimator, experts, sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)


def _estimator_radius_scipy(count, samples, alpha):
    p = scipy.stats.beta.ppf(alpha, count, samples - count + 1)
    return np.where(p >= 0.5, ESTIMATOR_SIGMA * scipy.stats.norm.ppf(p), 0.0)


def test_rounds_of_a_stream_are_the_samples_of_one_draw(linear_model):
    # Draw.start: counts over [0, 100) + [100, 300) equal the counts over [0, 300).
    x = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    kw = dict(seed=5, ids=torch.arange(3), batch_size=64)
    sigma = torch.full((3,), 0.7, dtype=torch.float64)
    whole = count_votes(linear_model, x, sigma, [Draw(Stream.ESTIMATE, 300)], **kw)
    parts = count_votes(linear_model, x, sigma, [Draw(Stream.ESTIMATE, 100),
                                                  Draw(Stream.ESTIMATE, 200, start=100)], **kw)
    assert torch.equal(whole[0], parts[0] + parts[1])
    # per-input starts and sizes, including an input with no samples this round
    rest = count_votes(linear_model, x, sigma, [Draw(Stream.ESTIMATE, torch.tensor([200, 0, 200]),
                                                     start=torch.tensor([100, 0, 100]))], **kw)
    assert torch.equal(rest[0][[0, 2]], parts[1][[0, 2]]) and rest[0][1].sum() == 0


def test_no_samples_at_all_never_calls_the_model():
    def model(x):
        raise AssertionError("called")
    x = torch.rand(2, 1, 4, 4)
    counts = count_votes(model, x, torch.ones(2, dtype=torch.float64),
                         [Draw(Stream.ESTIMATE, 0)], seed=0, ids=torch.arange(2), batch_size=8,
                         num_classes=3)
    assert counts.shape == (1, 2, 3) and counts.sum() == 0


def _all_votes_radius(m, alpha, sigma):
    """R_ve of m votes out of m, from scipy: the Clopper-Pearson bound is alpha^(1/m)."""
    p = scipy.stats.beta.ppf(alpha, m, 1)
    return sigma * scipy.stats.norm.ppf(p) if p >= 0.5 else -1.0


@pytest.mark.parametrize("target", [0.0, 0.3, 0.79, 1.3, 1.9])
@pytest.mark.parametrize("alpha", [0.0005, 0.1])
def test_first_checkpoint_is_the_fewest_samples_that_could_reach_the_target(target, alpha):
    m = first_useful_checkpoint(target, 10_000, alpha, 1.0)
    assert _all_votes_radius(m, alpha, 1.0) >= target * (1 - 1e-9)
    assert m == 1 or _all_votes_radius(m - 1, alpha, 1.0) < target
    # unreachable within n: n itself
    assert first_useful_checkpoint(3.5, 1000, 0.0005, 1.0) == 1000


@pytest.mark.parametrize("target,n,rounds", [(0.79, 10_000, 4), (1.33, 2000, 4),
                                             (0.1, 2000, 8), (2.0, 500, 4), (0.5, 5, 4),
                                             (0.79, 10_000, 1)])
def test_schedule_is_nested_starts_where_the_target_is_reachable_and_ends_at_n(target, n,
                                                                                rounds):
    schedule = target_schedule(target, n, rounds, 0.0005, 1.0)
    assert schedule[-1] == n and len(schedule) <= rounds
    assert all(a < b for a, b in zip(schedule, schedule[1:]))
    if rounds > 1:
        assert schedule[0] == first_useful_checkpoint(target, n, checkpoint_alphas(
            0.0005, rounds)[0], 1.0)
    else:
        assert schedule == [n]


def _share(alpha, samples, schedule):
    """Checkpoint k of K bounds at alpha * 2^k / (2^K - 1)."""
    k = np.array([schedule.index(int(s)) for s in samples])
    return alpha * 2.0 ** k / (2.0 ** len(schedule) - 1)


def test_checkpoint_shares_double_and_sum_to_at_most_alpha():
    for alpha in (0.1, 0.0005, 1e-9):
        for K in range(1, 9):
            shares = checkpoint_alphas(alpha, K)
            assert len(shares) == K and sum(shares) <= alpha
            np.testing.assert_allclose(shares, _share(alpha, [2 ** k for k in range(K)],
                                                      [2 ** k for k in range(K)]), rtol=1e-12)
    assert checkpoint_alphas(0.01, 1) == [0.01]


def test_estimator_radius_is_the_bound_at_its_checkpoints_share():
    # R_ve = estimator_sigma * Phi^-1(CP lower bound of (count_estimator, estimator_samples)
    # at that checkpoint's share of alpha_estimator), checked against scipy for plain and
    # sequential runs.
    estimator = _linear(1)
    x = inputs_at_distances(estimator, torch.linspace(-1.5, 1.5, 24), SHAPE, seed=2)
    dual = _dual(estimator)
    for rounds in (1, 4):
        r = dual.certify(x, n0=20, n=800, alpha=0.01, seed=3, estimator_rounds=rounds)
        share = expected_estimator_alpha(r, dual, 0.01, rounds)
        assert r.estimator_rounds <= rounds and not r.shared.any()
        np.testing.assert_allclose(r.estimator_alpha.numpy(), share, rtol=1e-12)
        expected = _estimator_radius_scipy(r.count_estimator.numpy(),
                                           r.estimator_samples.numpy(), share)
        routed = r.level >= 0
        assert routed.sum() > 10
        np.testing.assert_allclose(r.radius_estimator.double().numpy()[routed.numpy()],
                                   expected[routed.numpy()], rtol=1e-6, atol=1e-9)
        assert (r.radius_estimator.double().numpy() <= expected + 1e-12).all()


def test_plain_rounds_match_a_hand_made_certification():
    # estimator_rounds=1 is Cohen's CERTIFY on the estimator with alpha_ve = alpha / 2.
    estimator = _linear(1)
    x = inputs_at_distances(estimator, torch.linspace(-1, 1, 12), SHAPE, seed=4)
    r = _dual(estimator).certify(x, n0=30, n=500, alpha=0.02, seed=7, estimator_rounds=1)
    sigma = torch.full((12,), ESTIMATOR_SIGMA, dtype=torch.float64)
    c = count_votes(estimator, x, sigma, [Draw(Stream.ESTIMATOR_SELECT, 30),
                                          Draw(Stream.ESTIMATOR_ESTIMATE, 500)],
                    seed=7, ids=torch.arange(12), batch_size=1000)
    ref = drs.smoothing.certify_counts(c[0], c[1], 500, 0.01, sigma)
    assert torch.equal(r.level, ref.prediction)
    assert torch.equal(r.radius_estimator, ref.radius)
    assert (r.estimator_samples == 500).all()


def _failures(estimator, experts, x, r):
    """Certificates that are false: wrong level or class, or radius above
    min(distance to the estimator's hyperplane, distance to the chosen expert's)."""
    d_e = estimator.signed_distance(x)
    level = (d_e > 0).long()
    certified = r.prediction != drs.ABSTAIN
    bad = 0
    for k in torch.nonzero(certified).reshape(-1).tolist():
        expert = experts[SIGMAS[int(r.level[k])]]
        d_c = expert.signed_distance(x[k:k + 1])[0]
        true_radius = min(abs(float(d_e[k])), abs(float(d_c)))
        bad += int(int(r.level[k]) != int(level[k]) or int(r.prediction[k]) != int(d_c > 0)
                   or float(r.radius[k]) > true_radius)
    return bad, int(certified.sum())


@pytest.mark.parametrize("rounds", [4, 8])
def test_sequential_certificates_are_sound(rounds):
    # Inputs close to the estimator's hyperplane, so that R_ve binds and inputs stop at
    # every checkpoint; alpha = 0.2 makes failures of an unsound rule frequent.
    estimator = _linear(1)
    experts = {s: _linear(10 + k, b=0.2) for k, s in enumerate(SIGMAS)}
    N, alpha = 400, 0.2
    x = inputs_at_distances(estimator, torch.linspace(-0.6, 0.6, N), SHAPE, seed=5)
    r = _dual(estimator, experts).certify(x, n0=16, n=256, alpha=alpha, batch_size=4096,
                                          seed=11, estimator_rounds=rounds)
    bad, certified = _failures(estimator, experts, x, r)
    assert certified > N / 4
    assert bad / N <= alpha
    assert len(set(r.estimator_samples.tolist())) > 2   # inputs did stop at different rounds


def test_soundness_check_catches_an_estimator_bound_without_union_bound():
    # Power: a doubled estimator radius over-claims; the same _failures check sees it.
    estimator = _linear(1)
    experts = {s: _linear(10 + k, b=0.2) for k, s in enumerate(SIGMAS)}
    N = 400
    x = inputs_at_distances(estimator, torch.linspace(-0.6, 0.6, N), SHAPE, seed=5)
    dual = _dual(estimator, experts)
    r = dual.certify(x, n0=16, n=256, alpha=0.2, batch_size=4096, seed=11, estimator_rounds=1)
    r.radius = torch.minimum(2.0 * r.radius_estimator, r.radius_classifier)
    bad, _ = _failures(estimator, experts, x, r)
    assert bad / N > 0.2


def test_confident_estimator_stops_at_the_first_checkpoint():
    # Far from the estimator's hyperplane, close to the experts': every estimator vote is
    # for the level, so R_ve >= R_cls at the first checkpoint, the fewest samples that could
    # reach R_cls (planned from it), instead of n; same certificate.
    estimator = _linear(1, b=40.0)          # every input far on the level-1 side
    experts = {s: _linear(10 + k) for k, s in enumerate(SIGMAS)}
    x = inputs_at_distances(experts[SIGMAS[1]], torch.linspace(0.05, 0.3, 16), SHAPE, seed=6)
    dual = _dual(estimator, experts)
    assert (estimator.signed_distance(x) > 3).all()
    seq = dual.certify(x, n0=50, n=6400, alpha=0.001, seed=0, estimator_rounds=4)
    plain = dual.certify(x, n0=50, n=6400, alpha=0.001, seed=0, estimator_rounds=1)
    certified = seq.prediction != drs.ABSTAIN   # none drawn where the classifier abstained
    first = [first_useful_checkpoint(float(r), 6400, checkpoint_alphas(0.0005, 4)[0],
                                     ESTIMATOR_SIGMA) if c else 0
             for r, c in zip(seq.radius_classifier, certified)]
    assert seq.estimator_samples.tolist() == first and (plain.estimator_samples == 6400).all()
    assert certified.sum() > 10 and max(first) < 6400 / 20
    # samples drawn: estimator selection, its estimation samples, then n0 + n of the expert
    assert torch.equal(seq.samples, 50 + seq.estimator_samples + 50 + 6400)
    assert torch.equal(seq.prediction, plain.prediction)
    assert torch.equal(seq.radius, plain.radius)     # R_cls binds in both
    assert (seq.radius_estimator >= seq.radius_classifier).all()


def test_no_estimator_samples_where_the_classifier_abstains():
    # The classifier runs first: on its own boundary it abstains, and the estimator then
    # draws no estimation sample (the plain procedure draws all of them first).
    estimator = _linear(1, b=40.0)
    experts = {s: _linear(10 + k) for k, s in enumerate(SIGMAS)}
    x = inputs_at_distances(experts[SIGMAS[1]], torch.zeros(6), SHAPE, seed=6)
    seq = _dual(estimator, experts).certify(x, n0=50, n=400, alpha=0.001, seed=0)
    assert (seq.prediction == drs.ABSTAIN).all() and (seq.estimator_samples == 0).all()
    assert (seq.level == 1).all()                    # where it was routed


def test_bad_rounds_raise():
    estimator = _linear(1)
    x = torch.rand(2, *SHAPE)
    for rounds in (0, -1, 1.5):
        with pytest.raises((ValueError, TypeError)):
            _dual(estimator).certify(x, n0=5, n=50, estimator_rounds=rounds)


# The futility stop (estimator_rounds.EstimatorBounds.futile, estimator_futility_alpha).

class _MiddleBand(torch.nn.Module):
    """Three levels by where x falls along a unit direction u: level 1 within +-width of 0,
    level 0 below, 2 above. At u.x = 0 with noise sigma, level 1 gets 2 Phi(width / sigma) - 1
    of the votes and the others half the rest each."""

    def __init__(self, dim, width):
        super().__init__()
        w = torch.randn(dim, generator=torch.Generator().manual_seed(3))
        self.u, self.width = w / w.norm(), width

    def forward(self, x):
        z = x.reshape(x.shape[0], -1) @ self.u.to(x.dtype)
        return torch.stack([-(z + self.width), self.width - z.abs(), z - self.width], 1)


def _split_estimator_case():
    """An estimator voting 30 / 40 / 30 over three levels (so it picks level 1 and R_ve
    abstains at n: 40 of its votes for the level, 60 against), and experts that certify
    (far from their hyperplanes), so the estimator draws its rounds."""
    sigmas, dim = (0.25, 0.5, 1.0), int(np.prod(SHAPE))
    width = float(scipy.stats.norm.ppf(0.7))            # 2 Phi(width) - 1 = 0.4 at sigma 1
    estimator = _MiddleBand(dim, width)
    x = torch.rand(24, dim, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    x = (x - (x @ estimator.u.double())[:, None] * estimator.u.double()).float().reshape(
        24, *SHAPE)
    experts = {s: _linear(10 + k, b=40.0) for k, s in enumerate(sigmas)}
    return drs.DualSmoothing(estimator, experts, sigmas=sigmas), x


def _optimistic_final_abstains(count, drawn, n, final_alpha, futility_alpha):
    """scipy: c + u (n - m) votes, u = Beta(c + 1, m - c).ppf(1 - futility_alpha), abstain
    at n at the last checkpoint's share."""
    u = np.where(count == drawn, 1.0, scipy.stats.beta.ppf(1 - futility_alpha, count + 1,
                                                          np.maximum(drawn - count, 1)))
    optimistic = np.minimum(np.floor(count + u * (n - drawn)), n)
    return scipy.stats.beta.ppf(final_alpha, optimistic, n - optimistic + 1) < 0.5


def test_futility_stops_an_estimator_that_splits_its_votes():
    dual, x = _split_estimator_case()
    kw = dict(n0=50, n=4000, alpha=0.001, seed=0)
    on = dual.certify(x, **kw)
    off = dual.certify(x, estimator_futility_alpha=None, **kw)
    assert (on.radius_classifier > 0).all()           # the classifier certifies: rounds run
    assert (on.prediction == drs.ABSTAIN).all() and (off.prediction == drs.ABSTAIN).all()
    assert (off.estimator_samples == 4000).all()
    # each input stops at a checkpoint before n where its schedule has one (the sigma 1
    # expert's R_cls at its reach gives a one-checkpoint schedule, [n]), by the documented
    # rule, recomputed with scipy
    alpha_ve, _ = dual.alphas(0.001)
    schedules = [target_schedule(float(r), 4000, DEFAULT_ROUNDS, alpha_ve, dual.estimator_sigma)
                 for r in on.radius_classifier]
    stopped = on.estimator_samples < 4000
    assert stopped.tolist() == [len(s) > 1 for s in schedules] and stopped.sum() > 12
    assert on.estimator_samples[stopped].double().mean() < 4000 / 10
    for i in torch.nonzero(stopped).reshape(-1).tolist():
        final = checkpoint_alphas(alpha_ve, len(schedules[i]))[-1]
        c, m = int(on.count_estimator[i]), int(on.estimator_samples[i])
        assert m in schedules[i] and _optimistic_final_abstains(c, m, 4000, final,
                                                                ESTIMATOR_FUTILITY_ALPHA)


def _confident_cases():
    """Estimators that certify: every vote for the level (R_ve >= R_cls at the first
    checkpoint), and inputs 0.3-1.5 from the estimator's hyperplane (R_ve binds, rates
    >= 0.72)."""
    far = _linear(1, b=40.0)
    experts = {s: _linear(10 + k) for k, s in enumerate(SIGMAS)}
    near = _linear(1)
    distances = torch.cat([torch.linspace(-1.5, -0.3, 12), torch.linspace(0.3, 1.5, 12)])
    return [(_dual(far, experts),
             inputs_at_distances(experts[SIGMAS[1]], torch.linspace(0.05, 0.3, 16), SHAPE,
                                 seed=6)),
            (_dual(near, {s: _linear(10 + k, b=40.0) for k, s in enumerate(SIGMAS)}),
             inputs_at_distances(near, distances, SHAPE, seed=9))]


@pytest.mark.parametrize("case", [0, 1])
def test_futility_stop_changes_nothing_where_the_estimator_is_confident(case):
    dual, x = _confident_cases()[case]
    kw = dict(n0=50, n=3000, alpha=0.001, seed=1)
    on, off = dual.certify(x, **kw), dual.certify(x, estimator_futility_alpha=None, **kw)
    assert (on.prediction != drs.ABSTAIN).sum() > 10
    for field in ("prediction", "radius", "radius_estimator", "radius_classifier", "level",
                  "count_estimator", "estimator_samples", "estimator_alpha", "samples"):
        assert torch.equal(getattr(on, field), getattr(off, field)), field


def _soundness_case():
    """test_sequential_certificates_are_sound's inputs, close to the estimator's hyperplane."""
    estimator = _linear(1)
    experts = {s: _linear(10 + k, b=0.2) for k, s in enumerate(SIGMAS)}
    x = inputs_at_distances(estimator, torch.linspace(-0.6, 0.6, 400), SHAPE, seed=5)
    return estimator, experts, x, dict(n0=16, n=256, alpha=0.2, batch_size=4096, seed=11)


@pytest.mark.parametrize("futility_alpha", [ESTIMATOR_FUTILITY_ALPHA, 0.3])
def test_certificates_with_the_futility_stop_are_sound(futility_alpha):
    estimator, experts, x, kw = _soundness_case()
    r = _dual(estimator, experts).certify(x, estimator_futility_alpha=futility_alpha, **kw)
    bad, certified = _failures(estimator, experts, x, r)
    assert certified > x.shape[0] / 4 and bad / x.shape[0] <= kw["alpha"]
    stopped = (r.level == drs.ABSTAIN) & (r.estimator_samples > 0) & (r.estimator_samples < 256)
    assert stopped.sum() >= 10


def _removes_only(on, off):
    """The futility stop's effect on the same noise: an input certified with it has off's
    certificate and drew the same samples; an input where they differ abstains with it and
    drew fewer estimator samples."""
    same = on.estimator_samples == off.estimator_samples
    for field in ("prediction", "radius", "radius_estimator", "count_estimator"):
        assert torch.equal(getattr(on, field)[same], getattr(off, field)[same]), field
    assert (on.prediction[~same] == drs.ABSTAIN).all() and (on.radius[~same] == 0).all()
    assert (on.estimator_samples[~same] < off.estimator_samples[~same]).all()
    assert (on.radius <= off.radius).all()
    return int((~same).sum())


def test_futility_stop_only_removes_certificates_on_the_same_noise():
    estimator, experts, x, kw = _soundness_case()
    dual = _dual(estimator, experts)
    off = dual.certify(x, estimator_futility_alpha=None, **kw)
    assert _removes_only(dual.certify(x, estimator_futility_alpha=0.3, **kw), off) >= 10
    removed = (off.prediction != drs.ABSTAIN) & (
        dual.certify(x, estimator_futility_alpha=0.3, **kw).prediction == drs.ABSTAIN)
    assert removed.sum() >= 1                       # an aggressive level does remove some


def test_same_noise_check_catches_a_stop_that_adds_certificates(monkeypatch):
    # Power: a rule stopping wherever R_ve is positive keeps a bound that the full schedule
    # would have lost; _removes_only sees it.
    estimator, experts, x, kw = _soundness_case()
    dual = _dual(estimator, experts)
    off = dual.certify(x, estimator_futility_alpha=None, **kw)
    monkeypatch.setattr(EstimatorBounds, "futile",
                        lambda self, members, n, alpha, level: ~self.abstains[members])
    with pytest.raises(AssertionError):
        _removes_only(dual.certify(x, **kw), off)


def test_bad_futility_alpha_raises():
    estimator = _linear(1)
    x = torch.rand(2, *SHAPE)
    for level, error in ((0.0, ValueError), (1.0, ValueError), (-0.1, ValueError),
                         ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="estimator_futility_alpha"):
            _dual(estimator).certify(x, n0=5, n=50, estimator_futility_alpha=level)


# The slack stop (estimator_rounds.EstimatorBounds.settled, estimator_slack).

def _bound(count, drawn, alpha, sigma):
    """scipy: R_ve of count votes of drawn at alpha, -1 where it abstains."""
    p = scipy.stats.beta.ppf(alpha, count, drawn - count + 1) if count > 0 else 0.0
    return sigma * scipy.stats.norm.ppf(p) if p >= 0.5 else -1.0


def _expected_stops(dual, x, r, kw, slack):
    """Per input: (estimation samples, R_ve) that the documented rules give, recomputed from
    the estimator's level votes at each checkpoint of its schedule (count_votes on the
    estimation stream's first m samples) with scipy bounds; futility stop off."""
    alpha_ve, _ = dual.alphas(kw["alpha"])
    sigma, n = dual.estimator_sigma, kw["n"]
    expected = []
    for i in range(x.shape[0]):
        if int(r.level[i]) < 0 or float(r.radius_classifier[i]) <= 0:
            expected.append(None)
            continue
        r_cls = float(r.radius_classifier[i])
        schedule = target_schedule(r_cls, n, DEFAULT_ROUNDS, alpha_ve, sigma)
        shares = checkpoint_alphas(alpha_ve, len(schedule))
        votes = count_votes(dual.estimator, x[i:i + 1], torch.full((1,), sigma,
                            dtype=torch.float64), [Draw(Stream.ESTIMATOR_ESTIMATE, m)
                                                   for m in schedule],
                            seed=kw["seed"], ids=torch.tensor([i]), batch_size=4096)
        counts = votes[:, 0, int(r.level[i])].tolist()
        for k, (c, m) in enumerate(zip(counts, schedule)):
            radius = _bound(c, m, shares[k], sigma)
            if radius >= r_cls or k == len(schedule) - 1:
                break
            final = max(_bound(min(c * n // m, n), n, shares[-1], sigma), 0.0)
            if radius > 0 and min(final, r_cls) - radius <= slack * sigma:
                break
        expected.append((m, max(radius, 0.0)))
    return expected


def _slack_case():
    """Inputs 0.3-1.5 from the estimator's hyperplane with experts far from theirs: R_ve binds,
    and the estimator's rates (0.72-0.99) leave room for the stop."""
    return _confident_cases()[1]


@pytest.mark.parametrize("slack", [0.05, 0.3])
def test_slack_stop_follows_the_documented_rule(slack):
    dual, x = _slack_case()
    kw = dict(n0=50, n=3000, alpha=0.001, seed=1)
    r = dual.certify(x, ids=torch.arange(x.shape[0]), estimator_slack=slack,
                     estimator_futility_alpha=None, **kw)
    expected = _expected_stops(dual, x, r, kw, slack)
    assert sum(e is not None for e in expected) > 10
    for i, e in enumerate(expected):
        if e is not None:
            assert int(r.estimator_samples[i]) == e[0], i
            assert float(r.radius_estimator[i]) == pytest.approx(e[1], rel=1e-6, abs=1e-6), i


def test_slack_stop_saves_samples_and_gives_up_about_slack():
    dual, x = _slack_case()
    kw = dict(n0=50, n=3000, alpha=0.001, seed=1, ids=torch.arange(x.shape[0]))
    on, off = dual.certify(x, estimator_slack=0.05, **kw), dual.certify(x, estimator_slack=None,
                                                                         **kw)
    stopped = on.estimator_samples < off.estimator_samples
    assert stopped.sum() >= 5
    assert on.estimator_samples.sum() < 0.9 * off.estimator_samples.sum()
    for field in ("prediction", "radius", "radius_estimator", "estimator_samples"):
        assert torch.equal(getattr(on, field)[~stopped], getattr(off, field)[~stopped]), field
    assert (on.prediction == off.prediction).all()   # it only stops inputs that certify
    loss = off.radius[stopped] - on.radius[stopped]
    assert loss.mean() <= 2 * 0.05 * dual.estimator_sigma


def test_slack_rule_check_catches_a_bound_at_the_wrong_share(monkeypatch):
    # Power: a stop that reports the bound at the last checkpoint's (larger) share of alpha
    # instead of the share of the checkpoint it stopped at.
    dual, x = _slack_case()
    kw = dict(n0=50, n=3000, alpha=0.001, seed=1)
    real_add = EstimatorBounds.add

    def add(self, members, level_counts, drawn, alpha):
        real_add(self, members, level_counts, drawn, max(self.alpha.max().item(),
                                                         torch.as_tensor(alpha).max().item()))
    monkeypatch.setattr(EstimatorBounds, "add", add)
    r = dual.certify(x, ids=torch.arange(x.shape[0]), estimator_slack=0.05,
                     estimator_futility_alpha=None, **kw)
    expected = _expected_stops(dual, x, r, kw, 0.05)
    with pytest.raises(AssertionError):
        for i, e in enumerate(expected):
            if e is not None:
                assert float(r.radius_estimator[i]) == pytest.approx(e[1], rel=1e-6, abs=1e-6)


@pytest.mark.parametrize("slack", [0.05, 1.0])
def test_certificates_with_the_slack_stop_are_sound(slack):
    estimator, experts, x, kw = _soundness_case()
    r = _dual(estimator, experts).certify(x, estimator_slack=slack, **kw)
    bad, certified = _failures(estimator, experts, x, r)
    assert certified > x.shape[0] / 4 and bad / x.shape[0] <= kw["alpha"]
    off = _dual(estimator, experts).certify(x, estimator_slack=None, **kw)
    assert (r.estimator_samples < off.estimator_samples).sum() >= 10


def test_bad_slack_raises():
    x = torch.rand(2, *SHAPE)
    for slack, error in ((-0.1, ValueError), (float("nan"), ValueError),
                         (float("inf"), ValueError), ("0.1", TypeError), (True, TypeError)):
        with pytest.raises(error, match="estimator_slack"):
            _dual(_linear(1)).certify(x, n0=5, n=50, estimator_slack=slack)
