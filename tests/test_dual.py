"""Dual randomized smoothing (DualSmoothing): soundness on analytic cases (Theorem 4.1),
the alpha split checked against scipy, estimator abstention, routing to the experts, the
classifier forms (experts, noise-conditioned model, denoiser), the one-shot diffusion
denoiser, input validation, batch-size / id invariance, drs.certify/predict dispatch, and
the estimator's training labels (train_dual, best_sigma_labels)."""
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.batch_probe import PROBE_ROWS
from dualrs_fast.denoising import OneShotDiffusionDenoiser
from dualrs_fast.estimator_rounds import DEFAULT_ROUNDS
from dualrs_fast import training
from dualrs_fast.models import ClassGroupEstimator, SmallCNN, load_checkpoint, save_checkpoint
from dualrs_fast.training import (cached_estimated_radii, class_group_estimator,
                                  class_group_levels, consistency_losses, estimated_radii,
                                  level_balance_weights, soft_level_targets, train_dual)

from analytic import LinearBinary, inputs_at_distances_to
from batch_invariance import assert_batch_invariant
from dual_helpers import expected_estimator_alpha

D = 16                                   # flat inputs (B, D) for the analytic cases
SIGMAS = (0.25, 0.5)
ESTIMATOR_SIGMA = 0.25
# certify / predict first call every classifier route once on WIDTH_ROWS clean rows (output
# width), and the engine sends 2 * PROBE_ROWS noisy rows per pass through a model (batch probe)
WIDTH_ROWS = 2

# The estimator's plain procedure (all n_estimator samples, one bound) and the default
# sequential one.
PLAIN = {"estimator_rounds": 1}
ROUNDS = [pytest.param({}, id="default"), pytest.param(PLAIN, id="rounds1")]


# ---- helpers ---------------------------------------------------------------------------------

def _hyperplane(seed, b=0.0, dim=D):
    return LinearBinary.random(dim, seed, b=b)


def _experts(sigmas=SIGMAS):
    """One linear expert per sigma."""
    return {s: _hyperplane(10 + k) for k, s in enumerate(sigmas)}


def _off_the_shelf(rows):
    """A plain binary classifier: hyperplane on x[:, 2]."""
    z = rows[:, 2] - 0.5
    return torch.stack([-z, z], 1)


def _inputs_at(models, distances, seed=0):
    """float32 inputs (N, D) at the given signed distances to the models' hyperplanes."""
    return inputs_at_distances_to(models, distances, D, seed)


def _cp_lower(k, n, alpha):
    """One-sided Clopper-Pearson lower bound, straight from scipy."""
    k, n = np.asarray(k, np.float64), np.asarray(n, np.float64)
    return np.where(k > 0, scipy.stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def _radius_scipy(k, n, alpha, sigma):
    p = _cp_lower(k, n, alpha)
    return np.where(p >= 0.5, np.asarray(sigma) * scipy.stats.norm.ppf(np.maximum(p, 0.5)), 0.0)


def _assert_radius_matches(got, expected):
    """float32 radius = scipy's value rounded down (rel. 1e-6), never above it."""
    got = got.double().numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert np.all(got <= expected * (1 + 1e-10) + 1e-12)


def _same_results(a, b):
    """Two DualCertifyResults give the same certificates, field by field."""
    for name in ("prediction", "count", "radius", "radius_estimator", "radius_classifier",
                 "level", "count_estimator", "p_lower", "estimator_samples"):
        if getattr(a, name, None) is None and getattr(b, name, None) is None:
            continue
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(torch.isnan(a.sigma), torch.isnan(b.sigma))
    assert torch.equal(torch.nan_to_num(a.sigma), torch.nan_to_num(b.sigma))
    assert (a.n, a.alpha, a.n_estimator) == (b.n, b.alpha, b.n_estimator)


class AxisEstimator(torch.nn.Module):
    """Level = nearest of ``centers`` to x[:, 0] (logit -(x0 - c_k)^2). With centers (0, 1)
    an input with x0 = 0.5 has P(level 0) = P(level 1) = 1/2 exactly under the noise."""

    def __init__(self, centers=(0.0, 1.0)):
        super().__init__()
        self.centers = torch.tensor(centers, dtype=torch.float64)

    def forward(self, x):
        x0 = x.reshape(x.shape[0], -1)[:, :1]
        return -(x0 - self.centers.to(x.dtype)) ** 2


class ConstantClass(torch.nn.Module):
    """Always votes ``cls`` out of ``num_classes``."""

    def __init__(self, cls, num_classes=3):
        super().__init__()
        self.cls, self.num_classes = cls, num_classes

    def forward(self, x, *unused_sigma):
        out = torch.zeros(x.shape[0], self.num_classes, dtype=x.dtype)
        out[:, self.cls] = 1.0
        return out


class Recorder(torch.nn.Module):
    """Wraps a model; records every batch of rows (and per-row sigmas) it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.rows, self.sigma_rows = model, [], []

    def forward(self, x, *sigma):
        self.rows.append(x.detach().clone())
        if sigma:
            self.sigma_rows.append(sigma[0].detach().clone())
        return self.model(x, *sigma)

    def seen(self):
        return torch.cat(self.rows) if self.rows else torch.zeros(0, D)


# ---- 1. soundness on analytic cases (Theorem 4.1) -------------------------------------------
#
# Estimator: a linear binary model over the 2 levels; experts: one linear binary model per
# level. Each smoothed linear model's exact radius is its distance to its hyperplane, so
# the Dual RS certificate is true if the level and class are right and radius <=
# min(distance to the estimator's hyperplane, distance to the chosen expert's). Inputs are
# placed where each Clopper-Pearson bound is least conservative (the true probability just
# below a bound's value, so the bound exceeds it with probability ~ its alpha share): there
# the union bound is nearly tight and an unsplit alpha shows up as extra failures.

SOUND_N, SOUND_n, SOUND_n0, SOUND_ALPHA = 2000, 200, 32, 0.1


def _critical_probabilities(n, alpha):
    k = np.arange(1, n + 1)
    bound = _cp_lower(k, n, alpha)
    return bound[(bound > 0.7) & (bound < 0.97)] - 1e-4


@functools.lru_cache(maxsize=None)
def _sound_case():
    estimator = _hyperplane(1, b=0.2)
    experts = {s: _hyperplane(10 + k, b=0.1 * (k + 1)) for k, s in enumerate(SIGMAS)}
    rng = np.random.default_rng(0)
    half = SOUND_ALPHA / 2
    sigmas = (ESTIMATOR_SIGMA,) + SIGMAS
    p = _critical_probabilities(SOUND_n, half)
    signs = rng.choice([-1.0, 1.0], size=(SOUND_N, 3))
    dist = signs * np.array(sigmas) * scipy.stats.norm.ppf(rng.choice(p, size=(SOUND_N, 3)))
    models = [estimator] + [experts[s] for s in SIGMAS]
    x = _inputs_at(models, dist, seed=1)
    truth = torch.stack([m.signed_distance(x) for m in models], 1).numpy()  # of the float32 x
    dual = drs.DualSmoothing(estimator, experts, sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)
    return SimpleNamespace(x=x, d_e=truth[:, 0], d_k=truth[:, 1:], dual=dual)


@functools.lru_cache(maxsize=None)
def _sound_run(rounds_items):
    case = _sound_case()
    return case.dual.certify(case.x, n0=SOUND_n0, n=SOUND_n, alpha=SOUND_ALPHA,
                             batch_size=8192, seed=0, **dict(rounds_items))


def _final_failures(case, prediction, level, radius):
    """False certificates: wrong level or class, or radius > min(d_estimator, d_expert)."""
    prediction, level, radius = (np.asarray(v) for v in (prediction, level, radius))
    certified = prediction != drs.ABSTAIN
    true_level = (case.d_e > 0).astype(int)
    d_k = case.d_k[np.arange(len(level)), np.maximum(level, 0)]
    wrong = (level != true_level) | (prediction != (d_k > 0)) | \
        (radius > np.minimum(np.abs(case.d_e), np.abs(d_k)))
    return int(np.sum(certified & wrong)), int(certified.sum())


def _component_failures(case, level, r_ve, cls_prediction, r_cls):
    """Inputs where either half of the certificate is false: the estimator's (level, R_ve)
    or, given the right level, the expert's (class, R_cls). Their rate is <= alpha_ve +
    alpha_cls = alpha by the union bound."""
    level, r_ve, cls_prediction, r_cls = (np.asarray(v) for v in
                                          (level, r_ve, cls_prediction, r_cls))
    true_level = (case.d_e > 0).astype(int)
    ve_bad = (level != drs.ABSTAIN) & ((level != true_level) | (r_ve > np.abs(case.d_e)))
    d_k = case.d_k[np.arange(len(level)), true_level]
    cls_bad = (level == true_level) & (cls_prediction != drs.ABSTAIN) & \
        ((cls_prediction != (d_k > 0)) | (r_cls > np.abs(d_k)))
    return int(np.sum(ve_bad | cls_bad))


def _failure_slack():
    """Failures allowed among SOUND_N inputs: one-sided binomial 99.9% quantile at alpha."""
    return scipy.stats.binom.ppf(1 - 1e-3, SOUND_N, SOUND_ALPHA)


@pytest.mark.parametrize("rounds", ROUNDS)
def test_dual_certificates_are_sound(rounds):
    # Theorem 4.1 with a Bonferroni split: at most an alpha fraction of false certificates,
    # for the final radius and for each half (estimator, classifier) separately.
    case, r = _sound_case(), _sound_run(tuple(rounds.items()))
    final, certified = _final_failures(case, r.prediction.numpy(), r.level.numpy(),
                                       r.radius.double().numpy())
    assert certified > SOUND_N / 2
    assert final <= _failure_slack()
    component = _component_failures(case, r.level.numpy(), r.radius_estimator.double().numpy(),
                                     r.prediction.numpy(), r.radius_classifier.double().numpy())
    assert component <= _failure_slack()
    assert ((r.estimator_samples >= 0) & (r.estimator_samples <= SOUND_n)).all()
    assert (r.estimator_samples[r.prediction != drs.ABSTAIN] >= 1).all()
    if rounds.get("estimator_rounds") == 1:
        assert (r.estimator_samples == SOUND_n).all()


def test_soundness_checks_have_power():
    # The same checks flag (a) a doubled radius and (b) both halves bounded at the full
    # alpha (no split), recomputed with scipy from the run's own counts.
    case = _sound_case()
    r = _sound_run(tuple(PLAIN.items()))
    slack = _failure_slack()
    doubled, _ = _final_failures(case, r.prediction.numpy(), r.level.numpy(),
                                 2 * r.radius.double().numpy())
    assert doubled > slack
    level = r.level.numpy()
    samples = r.estimator_samples.numpy()
    r_ve = _radius_scipy(r.count_estimator.numpy(), samples, SOUND_ALPHA, ESTIMATOR_SIGMA)
    level = np.where(r_ve > 0, level, drs.ABSTAIN)
    sigma = np.asarray(SIGMAS)[np.maximum(level, 0)]
    r_cls = _radius_scipy(r.count.numpy(), SOUND_n, SOUND_ALPHA, sigma)
    # the class the expert votes for: known for certified inputs; for the others, the
    # expert's true class (the selection almost always finds it at these probabilities)
    d_k = case.d_k[np.arange(SOUND_N), np.maximum(level, 0)]
    cls = np.where(r.prediction.numpy() != drs.ABSTAIN, r.prediction.numpy(), d_k > 0)
    cls = np.where(r_cls > 0, cls, drs.ABSTAIN)
    unsplit = _component_failures(case, level, r_ve, cls, r_cls)
    assert unsplit > slack
    # and the real run, split, stays well inside
    split = _component_failures(case, r.level.numpy(), r.radius_estimator.double().numpy(),
                                r.prediction.numpy(), r.radius_classifier.double().numpy())
    assert split < unsplit


# ---- 2. alpha bookkeeping against scipy ------------------------------------------------------

@pytest.mark.parametrize("rounds", ROUNDS)
@pytest.mark.parametrize("fraction", [0.5, 0.2])
def test_radii_are_clopper_pearson_at_the_alpha_shares(fraction, rounds):
    # R_ve = sigma_e Phi^-1(CP(f alpha)) (for the sequential estimator: over the samples
    # drawn, at their checkpoint's share of f alpha), R_cls = sigma_s(x) Phi^-1(CP((1-f) alpha)),
    # radius = min(R_ve, R_cls), result.alpha = alpha.
    estimator = _hyperplane(1, b=0.2)
    experts = {s: _hyperplane(10 + k, b=-0.1) for k, s in enumerate(SIGMAS)}
    rng = np.random.default_rng(3)
    dist = rng.uniform(-0.7, 0.7, size=(60, 3))
    x = _inputs_at([estimator] + [experts[s] for s in SIGMAS], dist, seed=2)
    dual = drs.DualSmoothing(estimator, experts, sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA,
                             estimator_alpha_fraction=fraction)
    alpha, n, n_ve = 0.02, 500, 300
    r = dual.certify(x, n0=20, n=n, alpha=alpha, seed=4, n0_estimator=10, n_estimator=n_ve,
                     **rounds)
    assert r.alpha == alpha and r.n == n and r.n_estimator == n_ve
    samples = r.estimator_samples.numpy()
    # each input's bound at its checkpoint's share of f alpha (its schedule, planned from
    # R_cls, is tested in test_dual_sequential.py); no estimator sample where the classifier
    # abstained before the sequential estimator ran
    alpha_ve = expected_estimator_alpha(r, dual, alpha,
                                        rounds.get("estimator_rounds", DEFAULT_ROUNDS))
    np.testing.assert_array_equal(r.estimator_alpha.numpy(), alpha_ve)
    assert np.all((samples >= 0) & (samples <= n_ve))
    if rounds:
        assert r.estimator_rounds == 1 and np.all(samples == n_ve)
    c_ve = r.count_estimator.numpy()
    assert np.all((c_ve >= 0) & (c_ve <= samples)) and np.all(r.count.numpy() <= n)
    expected_ve = _radius_scipy(c_ve, samples, alpha_ve, ESTIMATOR_SIGMA)
    routed = r.level.numpy() != drs.ABSTAIN
    # level -1 only where the estimator abstains; a routed input whose classifier abstained
    # may keep its level with R_ve = 0 (the sequential estimator stops early there)
    assert np.all(routed[expected_ve > 0]) and np.all(expected_ve[~routed] == 0)
    assert np.all(r.prediction.numpy()[expected_ve == 0] == drs.ABSTAIN)
    _assert_radius_matches(r.radius_estimator, expected_ve)

    certified = r.prediction.numpy() != drs.ABSTAIN
    assert 10 < certified.sum() < 60 and (~routed).sum() > 0
    sigma = np.asarray(SIGMAS)[r.level.numpy()[certified]]
    np.testing.assert_array_equal(r.sigma.numpy()[certified], np.float32(sigma))
    expected_cls = _radius_scipy(r.count.numpy()[certified], n, (1 - fraction) * alpha, sigma)
    _assert_radius_matches(r.radius_classifier[certified], expected_cls)
    assert np.all(expected_cls > 0)
    # routed inputs the classifier abstains on: its CP bound at (1-f) alpha is below 1/2
    cls_abstains = routed & ~certified
    assert np.all(_cp_lower(r.count.numpy()[cls_abstains], n, (1 - fraction) * alpha) < 0.5)

    expected = np.where(certified, np.minimum(r.radius_estimator.numpy(),
                                              r.radius_classifier.numpy()), 0.0)
    np.testing.assert_array_equal(r.radius.numpy(), expected.astype(np.float32))
    assert r.radius.dtype == torch.float32 and r.prediction.dtype == torch.int64


@pytest.mark.parametrize("alpha", [0.01, 0.02, 0.005, 0.3])
def test_result_alpha_is_exactly_the_requested_alpha(alpha):
    # The result reports the alpha that was asked for, and the two shares never add up to
    # more than it.
    dual = drs.DualSmoothing(_hyperplane(1), _experts(), sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA, estimator_alpha_fraction=0.1)
    alpha_ve, alpha_cls = dual.alphas(alpha)
    assert alpha_ve > 0 and alpha_cls > 0 and alpha_ve + alpha_cls <= alpha
    r = dual.certify(torch.rand(2, D), n0=5, n=20, alpha=alpha)
    assert r.alpha == alpha


# ---- 3. estimator abstention -----------------------------------------------------------------

def _routing_dual(num_levels=2, sigmas=SIGMAS, centers=(0.0, 1.0)):
    experts = {s: Recorder(ConstantClass(k + 1, 4)) for k, s in enumerate(sigmas[:num_levels])}
    dual = drs.DualSmoothing(AxisEstimator(centers), experts, sigmas=sigmas[:num_levels],
                             estimator_sigma=ESTIMATOR_SIGMA)
    return dual, experts


def _axis_inputs(x0_values, seed=0):
    x = torch.rand(len(x0_values), D, generator=torch.Generator().manual_seed(seed))
    x[:, 0] = torch.tensor(x0_values, dtype=torch.float32)
    return x


@pytest.mark.parametrize("rounds", ROUNDS)
def test_estimator_abstention_gives_no_certificate(rounds):
    # On the estimator's decision boundary (p = 1/2 between the levels) the estimator's
    # certificate fails: ABSTAIN, radius 0, sigma NaN, level -1.
    dual, experts = _routing_dual()
    x = _axis_inputs([0.5] * 6 + [-2.0, 3.0])
    r = dual.certify(x, n0=16, n=200, alpha=0.01, seed=0, **rounds)
    on = slice(0, 6)
    assert (r.prediction[on] == drs.ABSTAIN).all() and (r.level[on] == -1).all()
    assert (r.radius[on] == 0).all() and (r.radius_estimator[on] == 0).all()
    assert torch.isnan(r.sigma[on]).all()
    assert r.level[6:].tolist() == [0, 1] and r.prediction[6:].tolist() == [1, 2]
    assert (r.radius[6:] > 0).all() and not torch.isnan(r.sigma[6:]).any()


def test_classifier_is_not_run_when_the_plain_estimator_abstains():
    # estimator_rounds=1: the estimator's verdict is final before the classifier runs, so
    # abstained inputs never reach an expert (only the two far inputs' rows do).
    dual, experts = _routing_dual()
    x = _axis_inputs([0.5] * 6)
    r = dual.certify(x, n0=16, n=200, alpha=0.01, seed=0, estimator_rounds=1)
    assert (r.prediction == drs.ABSTAIN).all()
    for e in experts.values():   # the width check's clean rows, no noisy sample
        assert torch.equal(e.seen(), x[:WIDTH_ROWS])
    x = _axis_inputs([0.5] * 6 + [-2.0, 3.0])
    dual.certify(x, n0=16, n=200, alpha=0.01, seed=0, estimator_rounds=1)
    for k, e in enumerate(experts.values()):
        seen = e.seen()[2 * WIDTH_ROWS:]                     # after both width checks
        # one input per expert, both in one pass: its batch probe's rows alternate between them
        assert len(seen) == PROBE_ROWS + 16 + 200
        assert torch.all((seen[:, 0] - x[6 + k, 0]).abs() < 10 * SIGMAS[k])


@pytest.mark.parametrize("rounds", ROUNDS)
def test_level_and_sigma_are_reported_where_only_the_classifier_abstains(rounds):
    # Far from the estimator's boundary its level is certain; the experts vote 50/50 (on
    # their own boundary), so the classifier abstains: ABSTAIN, radius 0, but level and
    # sigma still say where the input was routed (sigma NaN only where the estimator abstains).
    x = _axis_inputs([-2.0, 3.0] * 3, seed=4)
    x[:, 2] = 0.5
    dual = drs.DualSmoothing(AxisEstimator(), {s: _off_the_shelf for s in SIGMAS}, sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA)
    r = dual.certify(x, n0=16, n=300, alpha=0.01, seed=0, **rounds)
    assert (r.prediction == drs.ABSTAIN).all() and (r.radius == 0).all()
    assert r.level.tolist() == [0, 1] * 3
    np.testing.assert_array_equal(r.sigma.numpy(), np.float32([0.25, 0.5] * 3))


# ---- 4. routing ------------------------------------------------------------------------------

def test_inputs_are_routed_to_the_expert_of_their_level():
    # Far from the estimator's boundaries each input goes to its level's expert, at that
    # level's sigma; each expert sees exactly (n0 + n) rows per input routed to it.
    sigmas = (0.25, 0.5, 1.0)
    dual, experts = _routing_dual(3, sigmas, centers=(-10.0, 0.5, 10.0))
    levels = [2, 0, 1, 1, 0, 2, 2, 1]
    x = _axis_inputs([(-10.0, 0.5, 10.0)[k] for k in levels], seed=5)
    n0, n = 8, 64
    r = dual.certify(x, n0=n0, n=n, alpha=0.01, seed=1)
    assert r.level.tolist() == levels
    assert r.prediction.tolist() == [k + 1 for k in levels]          # expert k votes k + 1
    np.testing.assert_array_equal(r.sigma.numpy(), np.float32(np.asarray(sigmas)[levels]))
    assert (r.count == n).all()
    for k, s in enumerate(sigmas):
        seen = experts[s].seen()[WIDTH_ROWS:]
        # all levels in one pass: its batch probe (whole, then halves) has one row per input
        assert len(seen) == 2 * levels.count(k) * PROBE_ROWS // len(levels) + \
            (n0 + n) * levels.count(k)
        # the rows are noisy copies of that level's inputs, at that level's sigma
        assert torch.all((seen[:, 0] - (-10.0, 0.5, 10.0)[k]).abs() < 8 * s)
        assert abs(float(seen[:, 0].std()) - s) < 0.2 * s
    p = dual.predict(x, n=200, alpha=0.01, seed=1)
    assert p.tolist() == [k + 1 for k in levels]


# ---- 5. classifier forms ---------------------------------------------------------------------

def _conditioned(x, sigma):
    """A noise-conditioned binary model: hyperplane on x[:, 2], shifted by sigma."""
    z = x[:, 2] - 0.5 + 0.8 * (sigma.to(x.dtype) - 0.375)
    return torch.stack([-z, z], 1)


class Conditioned(torch.nn.Module):
    def forward(self, x, sigma):
        return _conditioned(x, sigma)


def _forms_inputs():
    x = _axis_inputs([-2.0, 3.0] * 6, seed=7)
    x[:, 1] = 10.0 * torch.arange(12, dtype=torch.float32)   # input index, readable from rows
    x[:, 2] = torch.linspace(0.2, 0.8, 12)
    return x


def _assert_rows_got_their_sigma(recorder):
    """Each row passed to ``recorder`` came with its input's routed sigma: the input is
    read from x[:, 1] (10 * index), its level from x[:, 0] (-2 -> level 0, 3 -> level 1,
    far from the estimator's boundary)."""
    assert recorder.sigma_rows and len(recorder.sigma_rows) == len(recorder.rows)
    x = _forms_inputs()
    # the first call is the width check: clean rows x[:2], all at the first level's sigma
    assert torch.equal(recorder.rows[0], x[:WIDTH_ROWS])
    for rows, sigma in zip(recorder.rows[1:], recorder.sigma_rows[1:]):
        assert sigma.dtype == torch.float32 and sigma.shape == (rows.shape[0],)
        which = torch.round(rows[:, 1] / 10).long()
        level = (x[which, 0] > 0.5).long()
        assert torch.equal(sigma, torch.tensor(SIGMAS, dtype=torch.float32)[level])


def test_conditioned_model_equals_experts_wrapping_it():
    # model(x, sigma) and {sigma: x -> model(x, sigma)} certify identically (same noise);
    # the conditioned model gets each row's routed sigma as a float32 tensor (rows,).
    x = _forms_inputs()
    model = Recorder(Conditioned())
    experts = {s: (lambda s: lambda x: _conditioned(x, torch.full((x.shape[0],), s)))(s)
               for s in SIGMAS}
    kw = dict(sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)
    a = drs.DualSmoothing(AxisEstimator(), model, **kw).certify(x, n0=20, n=300, seed=3)
    b = drs.DualSmoothing(AxisEstimator(), experts, **kw).certify(x, n0=20, n=300, seed=3)
    _same_results(a, b)
    assert len(set(a.count.tolist())) > 3          # the counts vary: a real comparison
    _assert_rows_got_their_sigma(model)
    assert sum(len(r) for r in model.rows) >= 12 * (20 + 300)


def test_identity_denoiser_with_one_classifier_equals_experts():
    # denoiser + off-the-shelf classifier: with the identity denoiser, the same
    # certificates as that classifier used as every expert; the denoiser gets each row's
    # routed sigma (float32, (rows,)).
    x = _forms_inputs()
    denoiser = Recorder(lambda rows, sigma: rows)
    kw = dict(sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)
    a = drs.DualSmoothing(AxisEstimator(), _off_the_shelf, denoiser=denoiser, **kw).certify(
        x, n0=20, n=300, seed=3)
    b = drs.DualSmoothing(AxisEstimator(), {s: _off_the_shelf for s in SIGMAS}, **kw).certify(
        x, n0=20, n=300, seed=3)
    _same_results(a, b)
    assert len(set(b.count.tolist())) > 3
    assert sum(len(r) for r in denoiser.rows) >= 12 * (20 + 300)
    _assert_rows_got_their_sigma(denoiser)


# ---- 6. one-shot diffusion denoiser ----------------------------------------------------------

def _linear_schedule():
    betas = np.linspace(1e-4, 0.02, 1000)
    return np.cumprod(1.0 - betas)


class OracleEps(torch.nn.Module):
    """The exact noise prediction for data that is always x0 (in [0,1]; [-1,1] inside)."""

    def __init__(self, x0, abar):
        super().__init__()
        self.x0, self.abar = x0, torch.as_tensor(abar, dtype=torch.float64)
        self.calls = []

    def forward(self, x_t, t):
        self.calls.append((x_t.detach().clone(), t.detach().clone()))
        a = self.abar[t].to(x_t.dtype).reshape((-1,) + (1,) * (x_t.dim() - 1))
        return (x_t - a.sqrt() * (2 * self.x0.to(x_t.dtype) - 1)) / (1 - a).sqrt()


def test_one_shot_denoiser_recovers_the_data_point_at_the_right_timestep():
    # Oracle eps-model for a point mass at x0: one denoising step returns x0; t is the
    # step whose sqrt((1-abar)/abar) is nearest 2*sigma (brute-force numpy argmin).
    abar = _linear_schedule()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(1, 4, 4, generator=g, dtype=torch.float64)
    eps_model = OracleEps(x0, abar)
    denoiser = OneShotDiffusionDenoiser(eps_model, abar)
    sigma = torch.tensor([0.05, 0.12, 0.25, 0.5, 0.5, 1.0, 3.0, 100.0], dtype=torch.float32)
    ratio = np.sqrt((1 - abar) / abar)
    expected_t = np.abs(ratio[None, :] - 2 * sigma.double().numpy()[:, None]).argmin(1)
    assert np.array_equal(denoiser.timestep(sigma).numpy(), expected_t)
    assert expected_t[-1] == 999 and len(set(expected_t.tolist())) == 7

    x_noisy = x0 + sigma.double().reshape(-1, 1, 1, 1) * torch.randn(8, 1, 4, 4, generator=g,
                                                                     dtype=torch.float64)
    out = denoiser(x_noisy, sigma)
    torch.testing.assert_close(out, x0.expand_as(out), rtol=0, atol=1e-9)
    x_t, t = eps_model.calls[-1]
    assert np.array_equal(t.numpy(), expected_t)
    a = torch.as_tensor(abar[expected_t]).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(x_t, a.sqrt() * (2 * x_noisy - 1))


@pytest.mark.parametrize("centers,level", [((-10.0, None), 1), ((None, 10.0), 0)])
def test_one_shot_denoiser_in_dual_smoothing_sees_through_the_noise(centers, level):
    # With the oracle denoiser every noisy sample of x0 maps back to x0 at either level, so a
    # classifier that recognises x0 wins all n votes.
    abar = _linear_schedule()
    x0 = torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(1))
    centers = tuple(float(x0[0, 0, 0]) if c is None else c for c in centers)

    def recognises_x0(rows):
        hit = (rows - x0.to(rows.dtype)).flatten(1).abs().amax(1) < 1e-4
        return torch.stack([(~hit).to(rows.dtype), hit.to(rows.dtype)], 1)

    denoiser = OneShotDiffusionDenoiser(OracleEps(x0, abar), abar)
    dual = drs.DualSmoothing(AxisEstimator(centers), recognises_x0, sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA, denoiser=denoiser)
    r = dual.certify(x0, n0=10, n=100, alpha=0.01, seed=0)
    assert r.level.tolist() == [level] and r.sigma.tolist() == [SIGMAS[level]]
    assert r.prediction.tolist() == [1] and r.count.tolist() == [100]
    assert sorted(set(denoiser.eps_model.calls[-1][1].tolist())) == \
        [int(denoiser.timestep(torch.tensor([SIGMAS[level]]))[0])]


@pytest.mark.parametrize("abar", [[], [0.9, 0.0], [1.0, 0.5], [0.9, 1.2], [-0.1],
                                  [0.5, 0.9], [0.9, float("nan")]])
def test_one_shot_denoiser_rejects_bad_schedules(abar):
    with pytest.raises(ValueError):
        OneShotDiffusionDenoiser(lambda x, t: x, abar)


# ---- 7. bad input: a clear error, never a certificate ----------------------------------------

@pytest.mark.parametrize("kwargs,error", [
    (dict(sigmas=()), ValueError), (dict(sigmas=None), ValueError),
    (dict(sigmas=(0.5, 0.25)), ValueError), (dict(sigmas=(0.25, 0.25)), ValueError),
    (dict(sigmas=(0.0, 0.5)), ValueError), (dict(sigmas=(-0.25, 0.5)), ValueError),
    (dict(sigmas=(float("nan"), 0.5)), ValueError), (dict(sigmas=(0.25, float("inf"))), ValueError),
    (dict(sigmas=("0.25", 0.5)), TypeError),
    (dict(estimator_sigma=0.0), ValueError), (dict(estimator_sigma=float("nan")), ValueError),
    (dict(classifier={0.25: _hyperplane(10)}), ValueError),                      # missing 0.5
    (dict(classifier={**_experts(), 1.0: _hyperplane(12)}), ValueError),        # extra 1.0
    (dict(estimator_alpha_fraction=0.0), ValueError),
    (dict(estimator_alpha_fraction=1.0), ValueError),
    (dict(estimator_alpha_fraction=-0.2), ValueError),
    (dict(estimator_alpha_fraction=1.5), ValueError),
    (dict(estimator_alpha_fraction=float("nan")), ValueError),
    (dict(estimator="estimator"), TypeError), (dict(estimator=None), TypeError),
    (dict(classifier=3), TypeError), (dict(classifier="expert"), TypeError),
])
def test_bad_constructor_arguments_raise(kwargs, error):
    base = dict(estimator=_hyperplane(1), classifier=_experts(), sigmas=SIGMAS,
                estimator_sigma=ESTIMATOR_SIGMA)
    with pytest.raises(error):
        drs.DualSmoothing(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs,error", [
    (dict(n0=0), ValueError), (dict(n=0), ValueError), (dict(n=-5), ValueError),
    (dict(n0_estimator=0), ValueError), (dict(n_estimator=0), ValueError),
    (dict(n_estimator=2.5), TypeError), (dict(alpha=0.0), ValueError),
    (dict(alpha=1.0), ValueError), (dict(alpha=-0.1), ValueError),
    (dict(alpha=float("nan")), ValueError), (dict(batch_size=0), ValueError),
    (dict(seed=-1), ValueError), (dict(ids=[0]), ValueError),
    (dict(x=torch.full((2, D), float("nan"))), ValueError),
    (dict(x=torch.tensor([[0.0] * (D - 1) + [float("inf")]])), ValueError),
    (dict(x=torch.zeros(2, D, dtype=torch.int64)), TypeError),
])
def test_bad_certify_arguments_raise(kwargs, error):
    dual = drs.DualSmoothing(_hyperplane(1), _experts(), sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA)
    call = dict(x=torch.rand(2, D), n0=5, n=20, alpha=0.01)
    call.update(kwargs)
    with pytest.raises(error):
        dual.certify(call.pop("x"), **call)


@pytest.mark.parametrize("kwargs,error", [
    (dict(n=0), ValueError), (dict(alpha=1.5), ValueError), (dict(ids=[0, 1, 2]), ValueError),
    (dict(x=torch.full((2, D), float("nan"))), ValueError),
])
def test_bad_predict_arguments_raise(kwargs, error):
    dual = drs.DualSmoothing(_hyperplane(1), _experts(), sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA)
    call = dict(x=torch.rand(2, D), n=20, alpha=0.01)
    call.update(kwargs)
    with pytest.raises(error):
        dual.predict(call.pop("x"), **call)


def test_estimator_width_must_match_sigmas():
    # 3 levels of logits for 2 sigmas (or 2 for 3): refused by certify and predict.
    x = torch.rand(2, D)
    wide = drs.DualSmoothing(AxisEstimator((0.0, 0.5, 1.0)), _experts(), sigmas=SIGMAS,
                             estimator_sigma=ESTIMATOR_SIGMA)
    narrow = drs.DualSmoothing(AxisEstimator(), _experts((0.25, 0.5, 1.0)),
                               sigmas=(0.25, 0.5, 1.0), estimator_sigma=ESTIMATOR_SIGMA)
    for dual in (wide, narrow):
        with pytest.raises(ValueError, match="len\\(sigmas\\)"):
            dual.certify(x, n0=5, n=20)
        with pytest.raises(ValueError):
            dual.predict(x, n=20)


def test_experts_with_different_class_counts_are_refused():
    dual = drs.DualSmoothing(AxisEstimator(), {0.25: ConstantClass(0, 2), 0.5: ConstantClass(0, 3)},
                             sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)
    with pytest.raises(ValueError):
        dual.certify(_axis_inputs([-2.0, 3.0]), n0=5, n=20)


def test_alpha_fraction_must_be_a_number():
    with pytest.raises(TypeError):
        drs.DualSmoothing(_hyperplane(1), _experts(), sigmas=SIGMAS,
                          estimator_sigma=ESTIMATOR_SIGMA, estimator_alpha_fraction="0.5")


# ---- 8. batch-size invariance and per-input ids ----------------------------------------------

def _mixed_case():
    estimator = _hyperplane(1, b=0.2)
    experts = {s: _hyperplane(10 + k, b=-0.1) for k, s in enumerate(SIGMAS)}
    dist = np.random.default_rng(9).uniform(-0.5, 0.5, size=(8, 3))
    x = _inputs_at([estimator] + [experts[s] for s in SIGMAS], dist, seed=3)
    dual = drs.DualSmoothing(estimator, experts, sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)
    return dual, x


@pytest.mark.parametrize("rounds", ROUNDS)
def test_certificates_do_not_depend_on_batch_size_or_on_the_other_inputs(rounds):
    # Same seed: batch_size 7 and 1000 give identical certificates; an input certified in a
    # subset, keyed by its id, gets the same certificate as in the full batch.
    dual, x = _mixed_case()
    ids = torch.arange(100, 108)
    kw = dict(n0=10, n=64, alpha=0.1, seed=5, ids=ids, **rounds)
    large = assert_batch_invariant(dual, x, ids, torch.tensor([1, 4, 6, 7]), kw, _same_results,
                                   predict_n=64)
    assert (large.prediction != drs.ABSTAIN).sum() >= 3
    assert (large.level == drs.ABSTAIN).sum() >= 1            # a mixed batch


# ---- 9. drs.certify / drs.predict dispatch ----------------------------------------------------

def test_drs_certify_and_predict_dispatch_to_dual_smoothing():
    # drs.certify(dual, ...) / drs.predict(dual, ...) are dual.certify / dual.predict;
    # PREDICT abstains where the estimator's binomial test fails (its decision boundary).
    dual, x = _mixed_case()
    kw = dict(n0=20, n=300, alpha=0.02, batch_size=512, seed=5, ids=torch.arange(8) + 3)
    a = drs.certify(dual, x, **kw)
    b = dual.certify(x, **kw)
    assert isinstance(a, drs.DualCertifyResult)
    _same_results(a, b)
    pk = dict(n=300, alpha=0.02, batch_size=512, seed=5)
    assert torch.equal(drs.predict(dual, x, **pk), dual.predict(x, **pk))

    routing, _ = _routing_dual()
    x = _axis_inputs([0.5] * 6 + [-2.0, 3.0])
    p = drs.predict(routing, x, n=500, alpha=0.01, seed=0)
    assert p.tolist() == [drs.ABSTAIN] * 6 + [1, 2]
    assert torch.equal(p, routing.predict(x, n=500, alpha=0.01, seed=0))


@pytest.mark.parametrize("option", [dict(num_classes=10), dict(compile=True),
                                    dict(noise_backend="torch"), dict(channels_last=False)])
def test_engine_options_are_refused_for_dual_smoothing(option):
    # Options meant for a plain model would be silently ignored by DualSmoothing: refused.
    dual, x = _mixed_case()
    with pytest.raises(TypeError, match="DualSmoothing"):
        drs.certify(dual, x, n0=5, n=20, **option)
    with pytest.raises(TypeError, match="DualSmoothing"):
        drs.predict(dual, x, n=20, **option)


# ---- 10. the estimator's labels and train_dual -----------------------------------------------

LABEL_SIGMAS = (0.25, 0.5, 1.0)


def _reference_radius(k, n, alpha, sigma):
    """scipy: CERTIFY's radius from k of n votes (0 where it abstains)."""
    p = scipy.stats.beta.ppf(alpha, k, n - k + 1) if k > 0 else 0.0
    return sigma * scipy.stats.norm.ppf(p) if p >= 0.5 else 0.0


@pytest.mark.parametrize("votes", [(0, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 1)])
def test_estimated_radii_known_answers(votes):
    # Constant experts: always right (count = samples -> the budget's saturated radius,
    # sigma * Phi^-1(alpha^(1/n))) or always wrong (0).
    X = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(5, dtype=torch.int64)
    experts = {s: ConstantClass(v, 2) for s, v in zip(LABEL_SIGMAS, votes)}
    radii = estimated_radii(experts, X, y, LABEL_SIGMAS, samples=16, budget_n=2000,
                            budget_alpha=0.0005)
    assert radii.shape == (3, 5) and radii.dtype == torch.float64
    for k, (s, v) in enumerate(zip(LABEL_SIGMAS, votes)):
        want = _reference_radius(2000, 2000, 0.0005, s) if v == 0 else 0.0
        assert radii[k].tolist() == pytest.approx([want] * 5, rel=1e-9, abs=1e-12)


def test_estimated_radii_match_a_reference_on_linear_experts():
    # Linear experts: the probability of the true class at sigma_k is Phi(d_k / sigma_k), d_k
    # the distance to expert k's hyperplane toward the true class. With 4000 samples the
    # estimate is within a few standard errors of the reference radius at the budget.
    experts = [_hyperplane(30 + k) for k in range(3)]
    rng = np.random.default_rng(4)
    N, samples, budget, alpha = 30, 4000, 2000, 0.0005
    y = rng.integers(0, 2, N)
    margin = rng.choice([-0.3, 0.05, 0.3], size=(N, 3))
    dist = np.where(y[:, None] == 1, margin, -margin)  # signed distance toward class 1
    x = _inputs_at(experts, dist, seed=5)
    true = torch.stack([e.signed_distance(x) for e in experts], 1).numpy()
    toward_y = np.where(y[:, None] == 1, true, -true)
    sig = np.asarray(LABEL_SIGMAS)
    p = scipy.stats.norm.cdf(toward_y / sig)
    reference = np.array([[_reference_radius(round(p[i, k] * budget), budget, alpha, sig[k])
                           for k in range(3)] for i in range(N)]).T
    y_t = torch.from_numpy(y)
    by_dict = estimated_radii(dict(zip(LABEL_SIGMAS, experts)), x, y_t, LABEL_SIGMAS, samples,
                              budget_n=budget, budget_alpha=alpha)
    # 4 standard errors of p, turned into radius through the slope of sigma * Phi^-1
    slope = sig[:, None] / np.maximum(scipy.stats.norm.pdf(scipy.stats.norm.ppf(
        np.clip(p.T, 1e-3, 1 - 1e-3))), 1e-3)
    tolerance = 4 * np.sqrt(p.T * (1 - p.T) / samples) * slope + 0.02
    assert np.all(np.abs(by_dict.numpy() - reference) <= tolerance)
    assert (reference == 0).any() and (reference > 0).any()

    def conditioned(rows, sigma):             # the same experts as one noise-conditioned model
        out = torch.stack([e(rows) for e in experts])
        k = torch.searchsorted(torch.tensor(LABEL_SIGMAS, dtype=sigma.dtype), sigma)
        return out[k, torch.arange(rows.shape[0])]
    by_model = estimated_radii(conditioned, x, y_t, LABEL_SIGMAS, samples, budget_n=budget,
                               budget_alpha=alpha)
    assert torch.equal(by_model, by_dict)


def test_soft_level_targets_and_balance_weights():
    radii = torch.tensor([[0.5, 0.0, 0.2], [1.0, 0.0, 0.2], [2.0, 0.0, 0.0]], dtype=torch.float64)
    targets, keep = soft_level_targets(radii, temperature=0.5)
    assert keep.tolist() == [True, False, True]
    expected = scipy.special.softmax(radii.numpy().T / 0.5, axis=1)
    assert np.allclose(targets.numpy(), expected, atol=1e-6)
    weights = level_balance_weights(targets[keep])
    share = targets[keep].mean(0)
    assert float(weights.mean()) == pytest.approx(1.0)
    assert np.allclose((weights * share).numpy(), float((weights * share)[0]), rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        soft_level_targets(radii, temperature=0.0)


def test_consistency_losses_against_scipy():
    g = torch.Generator().manual_seed(0)
    log_probs = torch.log_softmax(torch.randn(2, 4, 3, generator=g), -1)
    kl, entropy = consistency_losses(log_probs)
    probs = log_probs.exp().numpy()
    mean = probs.mean(0)
    want_kl = np.mean([scipy.stats.entropy(mean[i], probs[d, i]) for d in range(2)
                       for i in range(4)])
    want_entropy = np.mean([scipy.stats.entropy(mean[i]) for i in range(4)])
    assert float(kl) == pytest.approx(want_kl, rel=1e-5)
    assert float(entropy) == pytest.approx(want_entropy, rel=1e-5)
    same = log_probs[:1].expand(3, -1, -1)
    assert float(consistency_losses(same)[0]) == pytest.approx(0.0, abs=1e-6)


def test_class_group_levels_and_estimator():
    # radii (levels, N): class 0's inputs are best at level 1, class 1's at level 0
    y = torch.tensor([0, 0, 1, 1])
    radii = torch.tensor([[0.1, 0.2, 0.6, 0.5], [0.9, 0.3, 0.1, 0.2]], dtype=torch.float64)
    assert class_group_levels(radii, y, num_classes=3) == [1, 0, 0]  # class 2: no inputs
    base = SmallCNN(num_classes=3).eval()
    est = class_group_estimator(base, [1, 0, 0], num_levels=2)
    assert isinstance(est, ClassGroupEstimator) and not est.training
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        probs = torch.softmax(base(x), 1)
        out = est(x)
    want = torch.stack([probs[:, 1:].sum(1), probs[:, 0]], 1).log()
    assert torch.allclose(out, want, atol=1e-6)
    with torch.no_grad():  # a confident base: the vote is the level of its predicted class
        base.classifier[3].weight.mul_(1e4)
        est.base.load_state_dict(base.state_dict())
        assert torch.equal(est(x).argmax(1), torch.tensor([1, 0, 0])[base(x).argmax(1)])
    with pytest.raises(ValueError, match="one level per class"):
        ClassGroupEstimator(base_kwargs={"num_classes": 3}, groups=[0, 1], num_levels=2)
    with pytest.raises(ValueError, match="levels in 0..1"):
        ClassGroupEstimator(base_kwargs={"num_classes": 3}, groups=[0, 1, 2], num_levels=2)


def test_class_group_estimator_checkpoint_round_trip(tmp_path):
    est = class_group_estimator(SmallCNN(num_classes=10).eval(), [2, 2, 1, 1, 1, 0, 2, 1, 1, 1], 3)
    save_checkpoint(tmp_path / "e.pt", est, "class_group", {"estimator_sigma": 1.0})
    loaded, meta = load_checkpoint(tmp_path / "e.pt")
    x = torch.rand(3, 1, 28, 28)
    assert isinstance(loaded, ClassGroupEstimator) and meta["estimator_sigma"] == 1.0
    assert torch.equal(loaded(x), est(x)) and loaded.config["groups"] == est.config["groups"]


def test_cached_estimated_radii_reuses_and_invalidates(tmp_path, monkeypatch):
    from dualrs_fast import training
    X = torch.rand(4, 1, 4, 4)
    y = torch.zeros(4, dtype=torch.int64)
    experts = {0.25: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()}
    cache = tmp_path / "radii.pt"
    first = cached_estimated_radii(cache, experts, X, y, (0.25,), 8)
    calls = []
    real = training.estimated_radii
    monkeypatch.setattr(training, "estimated_radii",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(cached_estimated_radii(cache, experts, X, y, (0.25,), 8), first)
    assert not calls  # read from the cache
    with torch.no_grad():
        experts[0.25][1].bias.add_(1.0)  # other weights: recomputed
    cached_estimated_radii(cache, experts, X, y, (0.25,), 8)
    cached_estimated_radii(cache, experts, X, y, (0.25,), 16)  # other samples: recomputed
    assert len(calls) == 2


def test_warns_when_estimator_sigma_caps_the_largest_expert():
    experts = {s: ConstantClass(0, 2) for s in LABEL_SIGMAS}
    x = torch.rand(2, 4)
    capped = drs.DualSmoothing(ConstantClass(2, 3), experts, sigmas=LABEL_SIGMAS,
                               estimator_sigma=0.5)
    with pytest.warns(UserWarning, match=r"caps every Dual RS radius at 1\.3\d+ .* the 2\.6\d+"):
        r = capped.certify(x, n0=10, n=2000, alpha=0.001, seed=0)
    assert torch.all(r.radius <= 1.34)  # the cap is real
    import warnings
    wide = drs.DualSmoothing(ConstantClass(2, 3), experts, sigmas=LABEL_SIGMAS,
                             estimator_sigma=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = wide.certify(x, n0=10, n=2000, alpha=0.001, seed=0)
    assert torch.all(r.radius > 2.6)


class CondLinear(torch.nn.Module):
    """A tiny noise-conditioned classifier: linear in (x, sigma)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(28 * 28 + 1, 10)

    def forward(self, x, sigma):
        return self.fc(torch.cat([x.flatten(1), sigma.reshape(-1, 1).to(x.dtype)], 1))


@pytest.mark.parametrize("form", ["experts", "conditioned"])
def test_train_dual_smoke(form):
    # Two rounds of the alternating optimisation on 64 MNIST images with tiny linear models:
    # labels index the sigmas, the estimator is trained and usable in DualSmoothing.
    from dualrs_fast.data import load_mnist5k
    X, y = load_mnist5k()
    X, y = X[::78][:64], y[::78][:64]
    torch.manual_seed(0)
    sigmas = (0.25, 0.5)
    if form == "experts":
        classifier = {s: torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
                      for s in sigmas}
    else:
        classifier = CondLinear()
    for k, s in enumerate(sigmas):  # experts that get some inputs right: labels to learn from
        model = classifier[s] if form == "experts" else training._SigmaFixed(classifier, s)
        training.train_classifier(model, X, y, s, epochs=5, batch_size=16, seed=k,
                                  progress=False)
    estimator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, len(sigmas)))
    before = estimator[1].weight.detach().clone()
    experts_before = [p.detach().clone() for p in (
        classifier[0.25][1].weight if form == "experts" else classifier.fc.weight,)]
    out_cls, out_est, radii = train_dual(classifier, estimator, X, y, sigmas, estimator_sigma=0.25,
                                         rounds=2, classifier_epochs=1, estimator_epochs=2,
                                         label_samples=8, progress=False, batch_size=32)
    assert out_cls is classifier and out_est is estimator and not estimator.training
    assert radii.shape == (len(sigmas), 64) and radii.dtype == torch.float64
    assert bool((radii >= 0).all())
    assert not torch.equal(before, estimator[1].weight)
    after = classifier[0.25][1].weight if form == "experts" else classifier.fc.weight
    assert not torch.equal(experts_before[0], after)  # fine-tuned between the two rounds
    if isinstance(classifier, dict):
        for m in classifier.values():
            m.eval()
    else:
        classifier.eval()
    dual = drs.DualSmoothing(estimator, classifier, sigmas=sigmas, estimator_sigma=0.25)
    r = dual.certify(X[:4], n0=4, n=32, alpha=0.1)
    assert r.prediction.shape == (4,) and set(r.level.tolist()) <= {-1, 0, 1}


def test_train_dual_refuses_experts_that_are_never_right():
    X = torch.rand(8, 1, 4, 4)
    y = torch.ones(8, dtype=torch.int64)
    experts = {0.25: ConstantClass(0, 2)}
    estimator = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 1))
    with pytest.raises(ValueError, match="no training input has a positive estimated radius"):
        train_dual(experts, estimator, X, y, (0.25,), estimator_sigma=0.25, label_samples=4,
                   progress=False)


def test_copy_matching_weights_copies_every_layer_but_the_mismatched_head():
    from dualrs_fast.models import build_model
    torch.manual_seed(0)
    expert = build_model("small_cnn", num_classes=10)
    estimator = build_model("small_cnn", num_classes=3)
    head = estimator.classifier[3].weight.detach().clone()
    copied = training.copy_matching_weights(estimator, expert)
    assert "classifier.3.weight" not in copied and "features.0.weight" in copied
    for name, p in estimator.state_dict().items():
        if name in copied:
            assert torch.equal(p, expert.state_dict()[name])
    assert torch.equal(estimator.classifier[3].weight, head)  # 3 logits, not 10: kept
    with pytest.raises(ValueError, match="shares no parameter"):
        training.copy_matching_weights(estimator, torch.nn.Linear(3, 3))


def test_train_estimator_starts_from_an_expert_and_records_it():
    from dualrs_fast.data import load_mnist5k
    from dualrs_fast.models import build_model
    X, y = load_mnist5k()
    X, y = X[::78][:48], y[::78][:48]
    torch.manual_seed(0)
    sigmas = (0.25, 0.5)
    experts = {s: build_model("small_cnn", num_classes=10) for s in sigmas}
    for k, s in enumerate(sigmas):
        training.train_classifier(experts[s], X, y, s, epochs=3, batch_size=16, seed=k,
                                  progress=False)
        experts[s].eval()
    common = dict(expert_names=["a", "b"], data="48 mnist5k images", arch="small_cnn",
                  epochs=0, label_samples=8, progress=False)
    estimator, _, meta = training.train_estimator(experts, X, y, init_from_sigma=0.5, **common)
    assert meta["train_dual"]["init_from_sigma"] == 0.5
    # zero epochs: the features are the 0.5 expert's exactly
    assert torch.equal(estimator.features[0].weight, experts[0.5].features[0].weight)
    plain, _, meta = training.train_estimator(experts, X, y, **common)
    assert "init_from_sigma" not in meta["train_dual"]
    assert not torch.equal(plain.features[0].weight, experts[0.5].features[0].weight)
    with pytest.raises(ValueError, match="not one of the experts' sigmas"):
        training.train_estimator(experts, X, y, init_from_sigma=1.0, **common)
    with pytest.raises(ValueError, match="does not apply to class_group"):
        training.train_estimator(experts, X, y, init_from_sigma=0.5,
                                 **{**common, "arch": "class_group"})
