"""Cascaded smoothing (CascadeSmoothing): soundness against the exact robustness radius of a
cascade of linear experts (and power of that check: the cap matters), the alpha shares and
radii against a scipy re-implementation, agreement with standard RS for one level,
predict, classifier forms, batch-size invariance, drs.certify dispatch, bad input, and a
run on the embedded experts."""
import functools
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.cascade import alpha_shares
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes

from analytic import LinearBinary, inputs_at_distances_to
from batch_invariance import assert_batch_invariant

D = 16                      # flat inputs (B, D)
SIGMAS = (0.25, 0.5)


def _hyperplane(seed, b=0.0):
    return LinearBinary.random(D, seed, b=b)


def _experts(sigmas=SIGMAS):
    return {s: _hyperplane(20 + k, b=0.1 * (k + 1)) for k, s in enumerate(sigmas)}


def _slack(trials, alpha):
    """Failures allowed among ``trials``: one-sided binomial 99.9% quantile at alpha."""
    return scipy.stats.binom.ppf(1 - 1e-3, trials, alpha)


# ---- 1. soundness against the exact radius of a two-level linear cascade ---------------------
#
# Level k's expert is a linear binary model with signed distance d_k(x): its smoothed class
# probabilities are Phi(+-d_k / sigma_k), so level k is confident exactly where |d_k| > t_k =
# sigma_k Phi^-1(p0), with class sign(d_k). The cascade G takes the large level's class
# where it is confident, else the small level's, else abstains; G's exact robustness radius
# at x is the distance to {G != G(x)}, a union of two polyhedra in (d_small, d_large).
# Inputs mostly sit inside the large level's non-confident slab, leaning to the class the
# small level does NOT give, so that G changes where the large level becomes confident:
# there only the cap keeps the radius true.

SOUND_N, SOUND_n, SOUND_n0, SOUND_ALPHA, SOUND_P0 = 2000, 200, 32, 0.2, 0.7


def _thresholds(sigmas, p0):
    return np.asarray(sigmas) * scipy.stats.norm.ppf(p0)


def _cascade_class(d, t):
    """G from the signed distances d (N, 2) (small level, large level) and thresholds t."""
    small = np.where(np.abs(d[:, 0]) > t[0], (d[:, 0] > 0).astype(int), drs.ABSTAIN)
    return np.where(np.abs(d[:, 1]) > t[1], (d[:, 1] > 0).astype(int), small)


def _nearest_in_polyhedron(x, rows, bounds):
    """(distance, point) of the point y nearest x with rows @ y <= bounds. It is x's
    projection onto the affine hull of one face, so every set of active constraints is
    tried."""
    best = (np.inf, None)
    for k in range(len(rows) + 1):
        for active in map(list, itertools.combinations(range(len(rows)), k)):
            a = rows[active]
            try:
                y = x - a.T @ np.linalg.solve(a @ a.T, a @ x - bounds[active]) if active else x
            except np.linalg.LinAlgError:  # parallel constraints: not a face
                continue
            if np.all(rows @ y <= bounds + 1e-9):
                best = min(best, (float(np.linalg.norm(y - x)), y), key=lambda b: b[0])
    return best


def _true_radius(x, models, t, cls, nearest=False):
    """Exact l2 robustness radius of G at x, whose class is ``cls`` (0 or 1): distance to
    {large level confident with the other class} or {large level not confident and small
    level not confident with cls}, as sets of y with d_k(y) = normal_k . y + offset_k.
    nearest: return (radius, the nearest point of that set) instead."""
    normals = np.stack([m.w.double().numpy() / m.w.double().norm().item() for m in models])
    offsets = np.array([m.b / m.w.double().norm().item() for m in models])
    s = 1.0 if cls == 1 else -1.0
    other_confident = (s * normals[1:2], np.array([-t[1] - s * offsets[1]]))
    in_slab = (np.stack([normals[1], -normals[1], s * normals[0]]),
               np.array([t[1] - offsets[1], t[1] + offsets[1], t[0] - s * offsets[0]]))
    best = min((_nearest_in_polyhedron(x, rows, bounds)
                for rows, bounds in (other_confident, in_slab)), key=lambda b: b[0])
    return best if nearest else best[0]


@functools.lru_cache(maxsize=None)
def _sound_case():
    experts = _experts()
    models = [experts[s] for s in SIGMAS]
    rng = np.random.default_rng(0)
    sign = rng.choice([-1.0, 1.0], size=SOUND_N)
    in_slab = rng.random(SOUND_N) < 0.85
    p_large = np.where(in_slab, rng.uniform(0.5, 0.66, SOUND_N), rng.uniform(0.8, 0.99, SOUND_N))
    p_small = rng.uniform(0.85, 0.999, SOUND_N)
    dist = np.stack([sign * SIGMAS[0] * scipy.stats.norm.ppf(p_small),
                     -sign * SIGMAS[1] * scipy.stats.norm.ppf(p_large)], 1)
    x = inputs_at_distances_to(models, dist, D, seed=1)
    d = torch.stack([m.signed_distance(x) for m in models], 1).numpy()  # of the float32 x
    t = _thresholds(SIGMAS, SOUND_P0)
    casc = drs.CascadeSmoothing(experts, sigmas=SIGMAS, p0=SOUND_P0)
    r = casc.certify(x, n0=SOUND_n0, n=SOUND_n, alpha=SOUND_ALPHA, batch_size=8192, seed=0)
    return SimpleNamespace(x=x, d=d, t=t, models=models, truth=_cascade_class(d, t), r=r)


def _false_certificates(case, prediction, radius):
    """Certified inputs whose class is not G(x) or whose radius exceeds G's exact radius."""
    bad = 0
    xs = case.x.double().numpy()
    for i in np.flatnonzero(prediction != drs.ABSTAIN):
        if prediction[i] != case.truth[i]:
            bad += 1
        elif radius[i] > _true_radius(xs[i], case.models, case.t, prediction[i]):
            bad += 1
    return bad


def _level_radius(r, sigmas, p0):
    """sigma_level (Phi^-1(p_lower) - Phi^-1(p0)) of the accepted inputs: the radius without
    the cap."""
    sigma = np.asarray(sigmas)[np.maximum(r.level.numpy(), 0)]
    return np.where(r.level.numpy() >= 0,
                    sigma * (scipy.stats.norm.ppf(r.p_lower.numpy()) - scipy.stats.norm.ppf(p0)),
                    0.0)


def test_exact_radius_is_the_distance_to_a_class_change():
    # The oracle itself: just past the nearest point G no longer gives G(x)'s class, and
    # random perturbations shorter than the radius never change it.
    case = _sound_case()
    rng = np.random.default_rng(5)

    def cascade_class(points):
        y = torch.from_numpy(np.atleast_2d(points))
        return _cascade_class(torch.stack([m.signed_distance(y) for m in case.models], 1)
                              .numpy(), case.t)

    xs = case.x.double().numpy()
    decided = np.flatnonzero(case.truth != drs.ABSTAIN)[:60]
    for i in decided:
        radius, y = _true_radius(xs[i], case.models, case.t, case.truth[i], nearest=True)
        assert radius > 0
        past = y + 1e-6 * (y - xs[i]) / radius
        assert cascade_class(past)[0] != case.truth[i]
        step = rng.standard_normal((200, D))
        step *= 0.999 * radius * rng.random((200, 1)) ** (1 / D) / np.linalg.norm(step, axis=1,
                                                                                  keepdims=True)
        assert np.all(cascade_class(xs[i] + step) == case.truth[i])


def test_cascade_certificates_are_sound():
    # At most an alpha fraction of false certificates, judged against G's exact radius; the
    # case exercises both levels, the cap and abstention.
    case = _sound_case()
    r = case.r
    level = r.level.numpy()
    assert (level == 1).sum() > 200 and (level == 0).sum() > 500
    assert (r.prediction == drs.ABSTAIN).sum() > 50
    assert (r.radius.numpy() < _level_radius(r, SIGMAS, SOUND_P0) - 1e-6).sum() > 300  # cap binds
    failures = _false_certificates(case, r.prediction.numpy(), r.radius.double().numpy())
    assert failures <= _slack(SOUND_N, SOUND_ALPHA)


def test_soundness_check_has_power():
    # The same check flags (a) doubled radii and (b) the radius without the cap (the large
    # level's becoming confident is what limits G's radius here).
    case = _sound_case()
    r, slack = case.r, _slack(SOUND_N, SOUND_ALPHA)
    prediction = r.prediction.numpy()
    assert _false_certificates(case, prediction, 2 * r.radius.double().numpy()) > slack
    uncapped = _level_radius(case.r, SIGMAS, SOUND_P0)
    assert _false_certificates(case, prediction, uncapped) > slack


def test_radius_stays_where_the_large_level_is_not_confident():
    # Accepted at the small level: the radius (<= radius_cap) must not reach the distance
    # t_large - |d_large| at which the large level becomes confident (closed form: p_c =
    # Phi(d / sigma)), but for the upper bound's failures (its alpha share); where the large
    # level accepted there is no cap; samples count the levels tried.
    case = _sound_case()
    r = case.r
    radius, cap = r.radius.double().numpy(), r.radius_cap.double().numpy()
    small = r.level.numpy() == 0
    to_confident = case.t[1] - np.abs(case.d[:, 1])
    assert (radius[small] > to_confident[small]).sum() <= _slack(small.sum(), SOUND_ALPHA / 2)
    assert (cap[small] > to_confident[small]).sum() <= _slack(small.sum(), SOUND_ALPHA / 2)
    assert np.all(radius <= cap)
    assert np.all(np.isinf(cap[r.level.numpy() == 1]))
    tried = np.where(np.isfinite(cap), 2, 1)
    np.testing.assert_array_equal(r.samples.numpy(), tried * (SOUND_n0 + SOUND_n))
    assert r.samples.dtype == torch.int64


def test_predict_returns_the_cascade_class():
    # PREDICT: wrong (non-abstained) classes at most an alpha fraction; most inputs decided.
    case = _sound_case()
    x, truth = case.x[:600], case.truth[:600]
    casc = drs.CascadeSmoothing(_experts(), sigmas=SIGMAS, p0=SOUND_P0)
    p = casc.predict(x, n=400, alpha=SOUND_ALPHA, seed=3).numpy()
    decided = p != drs.ABSTAIN
    assert decided.sum() > 300
    assert (p[decided] != truth[decided]).sum() <= _slack(600, SOUND_ALPHA)


# ---- 2. alpha shares and radii against a scipy re-implementation ------------------------------

def _scipy_cascade(experts, sigmas, p0, x, ids, n0, n, alpha, seed):
    """The algorithm of cascade.py's docstring with scipy's beta / normal quantiles and the
    alpha shares written out: alpha/L per level, halves (upper bound per class: / K) except
    at the smallest level."""
    L, K = len(sigmas), 2
    prediction = np.full(len(x), drs.ABSTAIN)
    level = np.full(len(x), drs.ABSTAIN)
    radius = np.zeros(len(x))
    cap = np.full(len(x), np.inf)
    remaining = np.arange(len(x))
    norm = scipy.stats.norm
    for j in reversed(range(L)):
        if not len(remaining):
            break
        sig = torch.full((len(remaining),), sigmas[j], dtype=torch.float64)
        counts = count_votes(experts[sigmas[j]], x[remaining], sig,
                             [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)], seed=seed,
                             ids=ids[remaining], batch_size=1000).numpy()
        a_low = alpha / L if j == 0 else alpha / L / 2
        top = counts[0].argmax(1)
        k = counts[1][np.arange(len(remaining)), top]
        p_low = np.where(k > 0, scipy.stats.beta.ppf(a_low, np.maximum(k, 1), n - k + 1), 0.0)
        accepted = p_low > p0
        at = remaining[accepted]
        prediction[at], level[at] = top[accepted], j
        radius[at] = np.minimum(sigmas[j] * (norm.ppf(p_low[accepted]) - norm.ppf(p0)), cap[at])
        if j == 0:
            break
        k_max = counts[1].max(1)
        upper = np.where(k_max < n, scipy.stats.beta.ppf(1 - alpha / L / 2 / K, k_max + 1,
                                                         np.maximum(n - k_max, 1)), 1.0)
        passed = (upper < p0) & ~accepted
        on = remaining[passed]
        cap[on] = np.minimum(cap[on], sigmas[j] * (norm.ppf(p0) - norm.ppf(upper[passed])))
        remaining = on
    return prediction, level, radius, cap


@pytest.mark.parametrize("sigmas,p0", [((0.25, 0.5, 1.0), 0.6), ((0.25, 0.5), 0.75),
                                       ((0.5, 1.0), 0.8)])
def test_radii_are_clopper_pearson_at_the_alpha_shares(sigmas, p0):
    experts = _experts(sigmas)
    models = [experts[s] for s in sigmas[:2]]
    rng = np.random.default_rng(4)
    x = inputs_at_distances_to(models, rng.uniform(-1.2, 1.2, size=(300, 2)), D, seed=2)
    ids = torch.arange(300) + 50
    kw = dict(n0=16, n=150, alpha=0.1, seed=3)
    r = drs.CascadeSmoothing(experts, sigmas=sigmas, p0=p0).certify(x, ids=ids, **kw)
    prediction, level, radius, cap = _scipy_cascade(experts, sigmas, p0, x, ids, **kw)
    np.testing.assert_array_equal(r.prediction.numpy(), prediction)
    np.testing.assert_array_equal(r.level.numpy(), level)
    for got, expected in ((r.radius, radius), (r.radius_cap, cap)):
        got = got.double().numpy()
        finite = np.isfinite(expected)
        np.testing.assert_array_equal(np.isfinite(got), finite)
        np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-6, atol=1e-9)
        assert np.all(got[finite] <= expected[finite] * (1 + 1e-10) + 1e-12)  # rounded down
    assert len(set(level.tolist())) >= 3          # levels, abstention: a real comparison
    np.testing.assert_array_equal(np.isnan(r.sigma.numpy()), level < 0)
    np.testing.assert_array_equal(r.sigma.numpy()[level >= 0],
                                  np.float32(np.asarray(sigmas)[level[level >= 0]]))
    assert r.alpha == 0.1 and r.n == 150 and r.p0 == p0


@pytest.mark.parametrize("alpha", [0.1, 1 / 3, 0.3, 1e-3, 0.7, 0.123456789])
@pytest.mark.parametrize("levels", [1, 2, 3, 5])
@pytest.mark.parametrize("classes", [2, 3, 10, 1000])
def test_alpha_shares_sum_to_at_most_alpha_exactly(alpha, levels, classes):
    from fractions import Fraction
    shares = alpha_shares(alpha, levels, classes)
    assert len(shares) == levels and shares[0][1] == 0.0
    assert sum(Fraction(lo) + classes * Fraction(up) for lo, up in shares) <= Fraction(alpha)
    np.testing.assert_allclose(shares[0][0], alpha / levels, rtol=1e-12)
    for lo, up in shares[1:]:
        np.testing.assert_allclose([lo, up], [alpha / levels / 2, alpha / levels / 2 / classes],
                                   rtol=1e-12)
    if levels == 1:
        assert shares == [(alpha, 0.0)]        # one level: all of alpha, as standard RS


def test_alpha_shares_correct_the_float_sum():
    # alpha / L / 2 / K summed K times can exceed alpha in exact arithmetic (e.g. alpha = 1/3,
    # 2 levels, 10 classes): the shares are lowered until the exact sum fits.
    from fractions import Fraction
    alpha, levels, classes = 1 / 3, 2, 10
    per = alpha / levels
    naive = Fraction(per) + Fraction(per / 2) + classes * Fraction(per / 2 / classes)
    assert naive > Fraction(alpha)
    low, up = alpha_shares(alpha, levels, classes)[1]
    assert low < per / 2 or up < per / 2 / classes


def test_alpha_too_small_to_split_is_refused():
    with pytest.raises(ValueError, match="too small"):
        alpha_shares(5e-324, 2, 10)


# ---- 3. one level is standard RS -----------------------------------------------------------

@pytest.mark.parametrize("batch_size", [1000, 37])
def test_single_level_equals_standard_certify(linear_model, batch_size):
    from analytic import inputs_at_distances
    x = inputs_at_distances(linear_model, np.linspace(-0.9, 0.9, 24), (1, 28, 28), seed=3)
    kw = dict(n0=20, n=500, alpha=0.01, batch_size=batch_size, seed=11)
    a = drs.CascadeSmoothing({0.25: linear_model}, sigmas=(0.25,)).certify(x, **kw)
    b = drs.certify(linear_model, x, sigma=0.25, **kw)
    assert isinstance(a, drs.CertifyResult)
    for name in ("prediction", "radius", "count", "p_lower"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    certified = b.prediction != drs.ABSTAIN
    assert 0 < certified.sum() < len(x)
    assert torch.equal(a.sigma[certified], b.sigma[certified])
    assert torch.isnan(a.sigma[~certified]).all()
    assert torch.isinf(a.radius_cap).all() and (a.samples == 520).all()
    assert torch.equal(a.level, torch.where(certified, 0, drs.ABSTAIN))


# ---- 4. classifier forms, invariance, dispatch ----------------------------------------------

def _conditioned(x, sigma):
    """A noise-conditioned binary model: hyperplane on x[:, 2], shifted by sigma."""
    z = x[:, 2] - 0.5 + 0.8 * (sigma.to(x.dtype) - 0.375)
    return torch.stack([-z, z], 1)


def test_conditioned_model_equals_experts_wrapping_it():
    # model(x, sigma) and {sigma: x -> model(x, sigma)} certify identically; the model gets
    # each row's level sigma (float32, (rows,)).
    x = torch.rand(12, D, generator=torch.Generator().manual_seed(5))
    x[:, 2] = torch.linspace(0.2, 0.8, 12)
    seen = []

    def model(rows, sigma):
        seen.append(sigma.clone())
        return _conditioned(rows, sigma)

    experts = {s: (lambda s: lambda rows: _conditioned(rows, torch.full((rows.shape[0],), s)))(s)
               for s in SIGMAS}
    kw = dict(n0=20, n=300, seed=3, alpha=0.05)
    a = drs.CascadeSmoothing(model, sigmas=SIGMAS, p0=0.6).certify(x, **kw)
    b = drs.CascadeSmoothing(experts, sigmas=SIGMAS, p0=0.6).certify(x, **kw)
    _same_results(a, b)
    assert len(set(a.level.tolist())) >= 2
    assert {float(s) for batch in seen for s in batch.unique()} <= set(SIGMAS)
    assert all(batch.dtype == torch.float32 for batch in seen)


def _same_results(a, b):
    for name in ("prediction", "count", "radius", "level", "p_lower", "radius_cap", "samples"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(torch.isnan(a.sigma), torch.isnan(b.sigma))
    assert torch.equal(torch.nan_to_num(a.sigma), torch.nan_to_num(b.sigma))
    assert (a.n, a.alpha, a.p0) == (b.n, b.alpha, b.p0)


def _mixed_case():
    experts = _experts()
    dist = np.random.default_rng(9).uniform(-0.4, 0.4, size=(10, 2))
    x = inputs_at_distances_to([experts[s] for s in SIGMAS], dist, D, seed=3)
    return drs.CascadeSmoothing(experts, sigmas=SIGMAS, p0=0.6), x


def test_certificates_do_not_depend_on_batch_size_or_on_the_other_inputs():
    casc, x = _mixed_case()
    ids = torch.arange(100, 110)
    kw = dict(n0=10, n=100, alpha=0.1, seed=2, ids=ids)
    large = assert_batch_invariant(casc, x, ids, torch.tensor([1, 4, 6, 7, 9]), kw,
                                   _same_results, predict_n=100)
    assert len(set(large.level.tolist())) >= 2


def test_drs_certify_and_predict_dispatch_to_cascade_smoothing():
    casc, x = _mixed_case()
    kw = dict(n0=20, n=300, alpha=0.02, batch_size=512, seed=5, ids=torch.arange(10) + 3)
    a = drs.certify(casc, x, **kw)
    assert isinstance(a, drs.CascadeCertifyResult)
    _same_results(a, casc.certify(x, **kw))
    pk = dict(n=300, alpha=0.02, batch_size=512, seed=5)
    assert torch.equal(drs.predict(casc, x, **pk), casc.predict(x, **pk))
    for option in (dict(num_classes=2), dict(compile=True), dict(noise_backend="torch")):
        with pytest.raises(TypeError, match="CascadeSmoothing"):
            drs.certify(casc, x, n0=5, n=20, **option)


# ---- 5. bad input ----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,error", [
    (dict(sigmas=(0.5, 0.25)), ValueError), (dict(sigmas=(0.25, 0.25)), ValueError),
    (dict(sigmas=()), ValueError), (dict(sigmas=(0.25, -0.5)), ValueError),
    (dict(p0=0.4), ValueError), (dict(p0=1.0), ValueError), (dict(p0=float("nan")), ValueError),
    (dict(p0=True), TypeError), (dict(p0="0.6"), TypeError),
    (dict(classifier={0.25: _hyperplane(1)}), ValueError),                        # missing
    (dict(classifier={0.25: _hyperplane(1), 0.5: _hyperplane(2), 1.0: _hyperplane(3)}),
     ValueError),                                                                  # extra
    (dict(classifier={0.25: _hyperplane(1), 0.5: "expert"}), TypeError),
    (dict(classifier=3), TypeError),
])
def test_bad_constructor_arguments_raise(kwargs, error):
    base = dict(classifier=_experts(), sigmas=SIGMAS, p0=0.5)
    with pytest.raises(error):
        drs.CascadeSmoothing(**{**base, **kwargs})


@pytest.mark.parametrize("kwargs,error", [
    (dict(n0=0), ValueError), (dict(n=0), ValueError), (dict(n=2.5), TypeError),
    (dict(alpha=0.0), ValueError), (dict(alpha=1.0), ValueError), (dict(batch_size=0), ValueError),
    (dict(seed=-1), ValueError), (dict(ids=[0]), ValueError),
    (dict(x=torch.full((2, D), float("nan"))), ValueError),
    (dict(x=torch.zeros(2, D, dtype=torch.int64)), TypeError),
])
def test_bad_certify_arguments_raise(kwargs, error):
    casc = drs.CascadeSmoothing(_experts(), sigmas=SIGMAS)
    call = dict(x=torch.rand(2, D), n0=5, n=20, alpha=0.01)
    call.update(kwargs)
    with pytest.raises(error):
        casc.certify(call.pop("x"), **call)


def test_experts_with_different_class_counts_are_refused():
    # The large level votes uniformly over 3 classes (argmax of 3 equal noisy coordinates),
    # so it passes the inputs on to the small level, whose expert has 2 classes.
    casc = drs.CascadeSmoothing({0.25: _hyperplane(1), 0.5: lambda rows: rows[:, :3]},
                                sigmas=SIGMAS, p0=0.9)
    with pytest.raises(ValueError, match="2 classes, expected 3"):
        casc.certify(torch.full((4, D), 0.5), n0=5, n=40, alpha=0.1)


# ---- 6. the embedded experts ---------------------------------------------------------------

def test_embedded_experts_quick_run():
    from dualrs_fast import data, models
    sigmas = (0.25, 0.5, 1.0)
    experts = {s: models.load_default_classifier(s) for s in sigmas}
    x = data.load_default_split()[2][:20]
    n0, n = 50, 200
    r = drs.CascadeSmoothing(experts, sigmas=sigmas).certify(x, n0=n0, n=n, alpha=0.01, seed=0)
    assert isinstance(r, drs.CascadeCertifyResult) and len(r) == 20
    for name, dtype in (("prediction", torch.int64), ("radius", torch.float32),
                        ("count", torch.int64), ("sigma", torch.float32),
                        ("p_lower", torch.float64), ("level", torch.int64),
                        ("radius_cap", torch.float32), ("samples", torch.int64)):
        value = getattr(r, name)
        assert value.shape == (20,) and value.dtype == dtype, name
    level = r.level.numpy()
    certified = r.prediction != drs.ABSTAIN
    assert certified.sum() >= 10
    np.testing.assert_array_equal(level >= 0, certified.numpy())
    assert set(level.tolist()) <= {-1, 0, 1, 2}
    np.testing.assert_array_equal(r.sigma.numpy()[level >= 0],
                                  np.float32(np.asarray(sigmas)[level[level >= 0]]))
    assert (r.radius[~certified] == 0).all() and (r.radius >= 0).all()
    assert (r.radius <= r.radius_cap).all()
    assert ((r.count >= 0) & (r.count <= n)).all()
    assert (r.samples % (n0 + n) == 0).all()
    tried = 3 - level[level >= 0]                        # accepted at level j: 3 - j levels
    np.testing.assert_array_equal(r.samples.numpy()[level >= 0], tried * (n0 + n))
    assert r.n == n and r.alpha == 0.01
