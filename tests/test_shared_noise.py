"""Dual RS on shared noise (``dualrs_fast.shared_noise``): the estimator and the routed
classifier count their estimation votes on one draw of z at their own sigmas.

The engine feeds two models from one draw; the estimator's votes equal the unshared plain
procedure's and the classifier's are those of its own network on the estimator's counters;
the estimation noise is drawn once; soundness on analytic models at alpha = 0.2 with
strongly dependent estimator and classifier votes; and a deliberately unsound variant that
counts the selection samples (the estimator's, or the classifier's) is caught."""
import copy
import functools

import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from analytic import LinearBinary, inputs_at_distances_to
from dualrs_fast import sampling, shared_noise
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, Head, count_votes, count_votes_shared_noise
from dualrs_fast.smoothing import certify_counts
from test_dual_shared import _allowed, _critical, _tie_rate

D = 8
SIGMAS = (0.25, 0.5)
SIGMA_E = 1.0     # not a level: every route runs at another sigma than the estimator
ALPHA = 0.2       # alpha_ve = alpha_cls = 0.1


@functools.lru_cache(maxsize=None)
def _models():
    """The estimator (level 1 where w_e.x > 0) and the two experts; the sigma 0.5 expert's
    normal is close to the estimator's, so their votes on one z are strongly dependent."""
    g = torch.Generator().manual_seed(0)
    w_e = torch.randn(D, generator=g)
    w_1 = w_e + 0.3 * torch.randn(D, generator=g)
    return LinearBinary(w_e, 0.0), LinearBinary(torch.randn(D, generator=g), 0.0), \
        LinearBinary(w_1, 0.0)


def _dual():
    estimator, expert_0, expert_1 = _models()
    return drs.DualSmoothing(estimator, {SIGMAS[0]: expert_0, SIGMAS[1]: expert_1},
                             sigmas=SIGMAS, estimator_sigma=SIGMA_E)


def _inputs(d_e, d_0, d_1, seed=0):
    """float32 inputs (N, D) at signed distances d_e, d_0, d_1 to the three hyperplanes."""
    return inputs_at_distances_to(_models(), np.stack([d_e, d_0, d_1], 1), D, seed=seed)


def _run(x, n0=100, n=100, seed=3, **kw):
    kw = dict(estimator_rounds=1, share_noise=True, **kw)
    return _dual().certify(x, n0=n0, n=n, alpha=ALPHA, batch_size=4096, seed=seed, **kw)


def _half_failures(x, r):
    """Per input: does the estimator's half (level, R_ve) or the classifier's half (class,
    R_cls) claim more than the truth, among certified inputs? A half fails where the true
    probability of its choice is <= 1/2 or below Phi(radius / sigma)."""
    estimator, *experts = _models()
    certified = (r.prediction != drs.ABSTAIN).numpy()
    level = np.maximum(r.level.numpy(), 0)

    def p_of(model, sigma, choice):  # P(model votes ``choice`` at x + sigma z)
        p1 = scipy.stats.norm.cdf(model.signed_distance(x).numpy() / sigma)
        return np.where(choice == 1, p1, 1 - p1)
    p_level = p_of(estimator, SIGMA_E, level)
    sigma = np.asarray(SIGMAS)[level]
    prediction = np.maximum(r.prediction.numpy(), 0)
    p_class = np.where(level == 1, p_of(experts[1], SIGMAS[1], prediction),
                       p_of(experts[0], SIGMAS[0], prediction))

    def fails(p, radius, s):
        return certified & ((p <= 0.5) | (radius > s * scipy.stats.norm.ppf(np.maximum(p, 0.5))))
    return (fails(p_level, r.radius_estimator.double().numpy(), SIGMA_E),
            fails(p_class, r.radius_classifier.double().numpy(), sigma))


# ---- the engine: two models, one draw of z -----------------------------------------------------

class Recording(torch.nn.Module):
    """Wraps a model and keeps every batch it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.seen = model, []

    def forward(self, x, *sigma):
        self.seen.append(x.clone())
        return self.model(x)


def test_two_models_see_one_z_and_count_as_on_their_own():
    estimator, _, expert = (copy.deepcopy(m).double() for m in _models())
    x = torch.rand(1, D, dtype=torch.float64)
    a, b = Recording(estimator), Recording(expert)
    sigma_a, sigma_b = torch.tensor([1.0], dtype=torch.float64), torch.tensor([0.3], dtype=torch.float64)
    draws = [Draw(Stream.SELECT, 7), Draw(Stream.ESTIMATE, 300, start=11)]
    kw = dict(seed=5, ids=torch.tensor([9]), batch_size=128)
    shared = count_votes_shared_noise([Head(a, sigma_a), Head(b, sigma_b, pass_sigma=True)], x,
                                      draws, **kw)
    z_a = (torch.cat(a.seen) - x) / sigma_a
    z_b = (torch.cat(b.seen) - x) / sigma_b
    assert z_a.shape == z_b.shape and z_a.shape[0] >= 307
    torch.testing.assert_close(z_a, z_b, rtol=0, atol=1e-12)
    assert torch.equal(shared[0], count_votes(estimator, x, sigma_a, draws, **kw))
    assert torch.equal(shared[1], count_votes(expert, x, sigma_b, draws, **kw))
    with pytest.raises(ValueError, match="two models"):
        count_votes_shared_noise([Head(a, sigma_a)], x, draws, **kw)


# ---- Dual RS: the counts, and the noise drawn once ----------------------------------------------

def _selected_levels(x, n0, seed):
    estimator = _models()[0]
    sigma = torch.full((x.shape[0],), SIGMA_E, dtype=torch.float64)
    c = count_votes(estimator, x, sigma, [Draw(Stream.ESTIMATOR_SELECT, n0)], seed=seed,
                    ids=torch.arange(x.shape[0]), batch_size=1000)
    return c[0].argmax(1)


@pytest.mark.parametrize("n,n_ve", [(300, 300), (300, 120), (120, 300)])
def test_estimator_votes_are_the_unshared_ones_and_the_classifier_counts_the_same_z(n, n_ve):
    rng = np.random.default_rng(1)
    m = 16
    d_e = np.concatenate([rng.uniform(-1.5, 1.5, m - 4), np.zeros(4)])  # some abstain
    x = _inputs(d_e, rng.uniform(-1.0, 1.0, m), rng.uniform(-1.0, 1.0, m), seed=1)
    n0, seed = 40, 7
    kw = dict(n0=n0, n=n, n_estimator=n_ve, alpha=0.02, seed=seed, estimator_rounds=1)
    plain = _dual().certify(x, **kw)
    shared = _dual().certify(x, share_noise=True, **kw)
    for field in ("count_estimator", "radius_estimator", "estimator_samples", "estimator_alpha"):
        assert torch.equal(getattr(shared, field), getattr(plain, field)), field
    ve_abstains = shared.radius_estimator == 0
    assert 0 < int(ve_abstains.sum()) < m
    assert torch.equal(shared.level, torch.where(ve_abstains & (shared.radius_classifier > 0),
                                                 drs.ABSTAIN, _selected_levels(x, n0, seed)))
    # the classifier: its selection samples, then its own network on the estimator's counters
    level = _selected_levels(x, n0, seed)
    alpha_cls = _dual().alphas(0.02)[1]
    for k, sigma in enumerate(SIGMAS):
        at = torch.nonzero(level == k).reshape(-1)
        assert at.numel() >= 3
        s = torch.full((at.numel(),), sigma, dtype=torch.float64)
        ckw = dict(seed=seed, ids=at, batch_size=1000)
        expert = _models()[1 + k]
        sel = count_votes(expert, x[at], s, [Draw(Stream.SELECT, n0)], **ckw)[0]
        est = count_votes(expert, x[at], s, [Draw(Stream.ESTIMATOR_ESTIMATE, n)], **ckw)[0]
        ref = certify_counts(sel, est, n, alpha_cls, s)
        assert torch.equal(shared.count[at], ref.count)
        assert torch.equal(shared.radius_classifier[at], ref.radius.float())
        assert torch.equal(shared.prediction[at],
                           torch.where(ve_abstains[at], drs.ABSTAIN, ref.prediction))
    assert (shared.samples == n0 + n_ve + n0 + n).all()
    assert not shared.shared.any()


def test_the_estimation_noise_is_drawn_once(monkeypatch):
    rows = {"single": {}, "pair": {}}

    def recorder(kind, fill):
        def wrapped(*args, **kwargs):
            streams = args[6 if kind == "single" else 8]
            for s, c in zip(*torch.unique(streams, return_counts=True)):
                rows[kind][int(s)] = rows[kind].get(int(s), 0) + int(c)
            return fill(*args, **kwargs)
        return wrapped
    monkeypatch.setattr(sampling, "fill_noisy_rows", recorder("single", sampling.fill_noisy_rows))
    monkeypatch.setattr(sampling, "fill_noisy_row_pairs",
                        recorder("pair", sampling.fill_noisy_row_pairs))
    x = _inputs(np.full(5, 1.5), np.full(5, 1.0), np.full(5, 1.0), seed=2)
    _run(x, n0=20, n=200)
    estimate = int(Stream.ESTIMATOR_ESTIMATE)
    assert estimate not in rows["single"]            # no estimation row drawn on its own
    assert rows["pair"][estimate] >= 5 * 200         # each drawn once for both models
    assert set(rows["pair"]) == {estimate}


def test_share_noise_needs_the_plain_procedure():
    x = _inputs(np.full(2, 1.5), np.full(2, 1.0), np.full(2, 1.0))
    with pytest.raises(ValueError, match="estimator_rounds=1"):
        _dual().certify(x, n0=10, n=20, alpha=0.01, share_noise=True)


# ---- soundness at alpha = 0.2 -------------------------------------------------------------------

N_SOUND, n_SOUND = 1500, 100


@functools.lru_cache(maxsize=None)
def _sound_case():
    # A: level 1 and its class both at critical probabilities (the estimator and the sigma 0.5
    #    expert threshold nearly the same direction: their votes on one z are dependent);
    # B: level 0 and the sigma 0.25 expert's class at critical probabilities.
    rng = np.random.default_rng(0)
    m = N_SOUND // 2
    p_ve, p_cls = (rng.choice(_critical(n_SOUND, ALPHA / 2), size=2 * m) for _ in range(2))
    probit_ve, probit_cls = scipy.stats.norm.ppf(p_ve), scipy.stats.norm.ppf(p_cls)
    sign = np.repeat([1.0, -1.0], m)                    # A: level 1, B: level 0
    d_e = sign * SIGMA_E * probit_ve
    d_0 = np.where(sign > 0, 3.0, SIGMAS[0] * probit_cls)
    d_1 = np.where(sign > 0, SIGMAS[1] * probit_cls, 3.0)
    return _inputs(d_e, d_0, d_1, seed=1)


def test_shared_noise_certificates_fail_at_most_their_alpha_shares():
    x = _sound_case()
    r = _run(x, n0=n_SOUND, n=n_SOUND)
    ve_fails, cls_fails = _half_failures(x, r)
    assert ve_fails.sum() <= _allowed(N_SOUND, ALPHA / 2)
    assert cls_fails.sum() <= _allowed(N_SOUND, ALPHA / 2)
    assert (ve_fails | cls_fails).sum() <= _allowed(N_SOUND, ALPHA)
    # the tight placement makes failures happen in both halves: the check is not vacuous
    assert ve_fails.sum() > 0.3 * ALPHA / 2 * N_SOUND
    assert cls_fails.sum() > 0.3 * ALPHA / 2 * N_SOUND


# Ties: the estimator between its two levels (classes certain), or the routed classifier
# between its two classes (level certain). Any certificate of the tied half is false. With
# independent selection samples the tied half certifies with probability q <= its share of
# alpha; counting the selection samples themselves (n0 = n) picks the majority, about 2q.

N_TIE, n_TIE = 1000, 100
TIES = {"estimator": (np.zeros(N_TIE), np.full(N_TIE, 3.0), np.full(N_TIE, 3.0)),
        "classifier": (np.full(N_TIE, 5.0), np.full(N_TIE, 3.0), np.zeros(N_TIE))}
SELECTION = {"estimator": Stream.ESTIMATOR_SELECT, "classifier": Stream.SELECT}


@pytest.mark.parametrize("tied", sorted(TIES))
def test_tied_inputs_certify_at_most_their_share(tied):
    x = _inputs(*TIES[tied], seed=2)
    fails = _half_failures(x, _run(x, n0=n_TIE, n=n_TIE))[tied == "classifier"]
    assert fails.sum() <= _allowed(N_TIE, ALPHA / 2)
    assert 0.085 < _tie_rate(n_TIE, ALPHA / 2) <= ALPHA / 2   # the case is tight


@pytest.mark.parametrize("tied", sorted(TIES))
def test_counting_the_selection_samples_is_caught(monkeypatch, tied):
    # The deliberately unsound variant: the shared estimation samples are the tied half's
    # selection samples (n0 = n: the very same ones). The soundness check fails it.
    monkeypatch.setattr(shared_noise, "ESTIMATE_STREAM", SELECTION[tied])
    x = _inputs(*TIES[tied], seed=2)
    fails = _half_failures(x, _run(x, n0=n_TIE, n=n_TIE))[tied == "classifier"]
    assert fails.sum() > _allowed(N_TIE, ALPHA / 2)
    assert fails.sum() > 1.6 * _tie_rate(n_TIE, ALPHA / 2) * N_TIE


def test_level_routes_send_each_row_to_its_levels_route():
    estimator, expert_0, expert_1 = _models()
    routes = shared_noise.LevelRoutes(_dual().routes, SIGMAS)
    x = torch.randn(12, D)
    sigma_rows = torch.tensor(SIGMAS, dtype=torch.float32)[torch.arange(12) % 2]
    out = routes(x, sigma_rows)
    assert torch.equal(out[0::2], expert_0(x[0::2])) and torch.equal(out[1::2], expert_1(x[1::2]))
    assert torch.equal(routes(x, sigma_rows[:1].expand(12)), expert_0(x))
    assert torch.isnan(routes(x, torch.full((12,), 0.3))).all()      # at no level: refused
    with pytest.raises(ValueError, match="differ in float32"):
        shared_noise.LevelRoutes(_dual().routes, (0.5, 0.5 + 1e-12))


def test_shared_pass_and_shared_noise_together():
    # A derived estimator: inputs routed to its expert's level take the shared pass, the
    # others the shared noise; the latter's estimator votes are the plain procedure's.
    import test_dual_shared as derived
    dual = derived._dual()
    rng = np.random.default_rng(4)
    x = derived._inputs(rng.uniform(-0.8, 0.8, 16), rng.uniform(-0.6, 0.6, 16),
                        rng.uniform(-0.6, 0.6, 16), seed=4)
    kw = dict(n0=30, n=200, alpha=0.02, seed=2, estimator_rounds=1)
    plain, shared = dual.certify(x, **kw), dual.certify(x, share_noise=True, **kw)
    assert torch.equal(shared.shared, plain.shared) and 0 < int(shared.shared.sum()) < 16
    own = ~shared.shared
    for field in ("count_estimator", "radius_estimator", "estimator_samples"):
        assert torch.equal(getattr(shared, field)[own], getattr(plain, field)[own]), field
    for field in ("prediction", "radius", "count", "level"):
        assert torch.equal(getattr(shared, field)[~own], getattr(plain, field)[~own]), field
