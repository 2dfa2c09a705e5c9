"""Dual RS's estimator class (``estimator_class_share``): an input routed to a level other than
the shared one takes the derived expert's top class from the estimator's selection votes and
draws no selection samples of its own. Soundness on an analytic case at alpha = 0.2, a
deliberately unsound variant that counts the selection samples (caught), identical
certificates where the experts agree, the samples saved, and the off switch."""
import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.derived_estimator import ESTIMATOR_CLASS_SHARE
from dualrs_fast.noise import Stream
from test_dual_shared import (ALPHA, SIGMA_E, SIGMAS, GroupEstimator, TwoPlanes, _allowed,
                              _critical, _half_failures, _inputs, _tie_rate)


def _dual(groups=(0, 1, 1), own=None):
    expert = TwoPlanes(0, 1)
    return drs.DualSmoothing(GroupEstimator(expert, groups),
                             {SIGMAS[0]: own or TwoPlanes(2, 3), SIGMAS[1]: expert},
                             sigmas=SIGMAS, estimator_sigma=SIGMA_E)


def _run(dual, x, n0, n, **kw):
    return dual.certify(x, n0=n0, n=n, alpha=ALPHA, batch_size=4096, seed=3, **kw)


N_SOUND, n_SOUND = 1500, 1500


def test_estimator_class_certificates_are_sound_at_alpha_0_2():
    # Routed to level 0 with certainty (shared expert's class 0, far from its plane); the own
    # expert's class 0 (x[2] < 0) at a critical probability: the class half is tight.
    rng = np.random.default_rng(0)
    p_cls = rng.choice(_critical(n_SOUND, ALPHA / 2), size=N_SOUND)
    x = _inputs(np.full(N_SOUND, -5.0), np.full(N_SOUND, 5.0),
                -SIGMAS[0] * scipy.stats.norm.ppf(p_cls), np.full(N_SOUND, 5.0), seed=1)
    dual = _dual()
    r = _run(dual, x, n0=100, n=n_SOUND)
    assert (r.level == 0).all() and r.estimator_class.all() and not r.shared.any()
    assert (r.samples == 100 + n_SOUND + r.estimator_samples).all()   # no own selection
    assert (r.prediction[r.prediction != drs.ABSTAIN] == 0).all()
    ve_fails, cls_fails = _half_failures(dual, x, r)
    assert cls_fails.sum() <= _allowed(N_SOUND, ALPHA / 2)
    assert (ve_fails | cls_fails).sum() <= _allowed(N_SOUND, ALPHA)
    assert cls_fails.sum() > 0.3 * ALPHA / 2 * N_SOUND     # tight: the check is not vacuous


# ---- the unsound variant: the routed classifier counts the selection samples -----------------
#
# Classes 0 and 1 both go to level 0 (groups (0, 0, 1)); inputs sit on the plane between them
# (x[0] = 0, x[1] far below 0), so each has probability 1/2 under both experts and any
# certificate is false. The level-0 expert is the same plane, so on the same z it votes as the
# derived expert did (the sign of z[0] decides at every sigma): counting the estimator's
# selection stream makes the chosen class the majority of the counted samples.

N_TIE, n_TIE = 1000, 100


def _tie_case():
    far = np.full(N_TIE, 5.0)
    return _inputs(np.zeros(N_TIE), -far, far, far, seed=2)


def _tie_failures():
    dual = _dual(groups=(0, 0, 1), own=TwoPlanes(0, 1))
    x = _tie_case()
    r = _run(dual, x, n0=n_TIE, n=n_TIE, estimator_class_share=0.01)
    assert (r.level == 0).all() and r.estimator_class.all() and not r.shared.any()
    _, cls_fails = _half_failures(dual, x, r)
    return cls_fails.sum()


def test_tie_inputs_with_the_estimator_class_certify_at_most_alpha_cls():
    assert _tie_failures() <= _allowed(N_TIE, ALPHA / 2)
    assert 0.085 < _tie_rate(n_TIE, ALPHA / 2) <= ALPHA / 2   # the case is tight


def test_counting_the_estimator_selection_samples_is_caught(monkeypatch):
    class Streams:  # the routed classifier's estimation draw reads the selection stream
        SELECT, ESTIMATE = Stream.SELECT, Stream.ESTIMATOR_SELECT
    monkeypatch.setattr(drs.dual, "Stream", Streams)
    failures = _tie_failures()
    assert failures > _allowed(N_TIE, ALPHA / 2)
    assert failures > 1.6 * _tie_rate(n_TIE, ALPHA / 2) * N_TIE


# ---- what it changes and what it does not ----------------------------------------------------

def _agreeing_case(count=40):
    # half routed to level 0 (shared class 0 clear), half to level 1; the level-0 expert is
    # a shifted copy of the derived one, so their classes agree away from the planes
    rng = np.random.default_rng(4)
    d0 = np.where(np.arange(count) % 2 == 0, -1.0, 1.0) * rng.uniform(1.0, 1.5, count)
    return _inputs(d0, rng.uniform(0.5, 1.5, count), seed=4)


def test_where_the_experts_agree_only_the_selection_samples_change():
    dual = _dual(own=TwoPlanes(0, 1, offset_a=0.05))
    x = _agreeing_case()
    kw = dict(n0=50, n=400, alpha=0.01, seed=7)
    own = dual.certify(x, estimator_class_share=None, **kw)
    borrowed = dual.certify(x, **kw)
    routed = (~borrowed.shared & (borrowed.level >= 0)).numpy()
    assert routed.sum() >= 10 and not own.estimator_class[~own.shared].any()
    assert borrowed.estimator_class[torch.from_numpy(routed)].all()
    for field in ("prediction", "radius", "radius_estimator", "radius_classifier", "level",
                  "count", "count_estimator", "estimator_samples", "shared"):
        assert torch.equal(getattr(own, field), getattr(borrowed, field)), field
    saved = (own.samples - borrowed.samples).numpy()
    np.testing.assert_array_equal(saved, np.where(routed, 50, 0))


def test_the_share_decides_who_borrows():
    # inputs near the derived expert's plane between its classes 0 and 1 (both to level 0)
    # get split selection votes: a share of 0.75 lets fewer borrow than 0.55
    dual = _dual(groups=(0, 0, 1), own=TwoPlanes(0, 1))
    rng = np.random.default_rng(8)
    x = _inputs(rng.uniform(-0.6, 0.6, 80), np.full(80, -5.0), np.full(80, 5.0),
                np.full(80, 5.0), seed=8)
    kw = dict(n0=100, n=200, alpha=0.01, seed=1)
    loose, strict = (dual.certify(x, estimator_class_share=s, **kw) for s in (0.55, 0.75))
    assert strict.estimator_class.sum() < loose.estimator_class.sum()
    assert strict.estimator_class.sum() > 0 and (~loose.estimator_class).sum() > 0
    assert (strict.estimator_class <= loose.estimator_class).all()
    # the classifier's own samples: n0 + n, or n where the class was borrowed
    for r in (loose, strict):
        own = r.samples - 100 - r.estimator_samples
        np.testing.assert_array_equal(own.numpy(), np.where(r.estimator_class, 200, 300))


@pytest.mark.parametrize("share", [0.0, 1.0, -0.1, 2, True])
def test_a_share_outside_0_1_is_refused(share):
    dual, x = _dual(), _agreeing_case(2)
    with pytest.raises((ValueError, TypeError), match="estimator_class_share"):
        dual.certify(x, n0=10, n=20, alpha=0.01, estimator_class_share=share)


def test_no_estimator_class_without_a_shared_level_or_with_share_noise():
    x = _agreeing_case(8)
    kw = dict(n0=20, n=100, alpha=0.01, seed=0)
    r = _dual().certify(x, share_pass=False, **kw)
    assert not r.estimator_class.any()
    r = _dual().certify(x, share_noise=True, estimator_rounds=1, **kw)
    assert torch.equal(r.estimator_class, r.shared)
    assert ESTIMATOR_CLASS_SHARE > 0.5


def test_embedded_dual_borrows_on_mnist5k_with_the_same_certificates():
    from dualrs_fast.data import load_dataset
    from dualrs_fast.models import load_default_dual
    x, _ = load_dataset("mnist5k", "test")
    x = x[:24]
    dual = load_default_dual()
    kw = dict(n0=100, n=300, alpha=0.001, seed=0, ids=torch.arange(24))
    own, borrowed = (dual.certify(x, estimator_class_share=s, **kw)
                     for s in (None, ESTIMATOR_CLASS_SHARE))
    off_shared = borrowed.estimator_class & ~borrowed.shared
    assert off_shared.sum() >= 3
    assert torch.equal(own.prediction, borrowed.prediction)
    assert torch.equal(own.radius, borrowed.radius)
