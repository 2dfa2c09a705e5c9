"""Dual RS's level passes (``level_passes``): one engine pass serves the shared inputs' joint
votes and every level's classifier. The counts, and so every certificate, R_ve, level and
prediction, must be bit for bit those of a pass per expert: checked against direct
``count_votes`` calls per expert and against the per-expert certify path (main's, kept
here only), over seeds, odd batch sizes, inputs at every level, abstentions of the
estimator and of the classifier, float32 and float64; the fallback to a pass per module
where one pass cannot serve (float32-equal sigmas, modules on different devices); logits
of different dtypes; the batch probe reaching every module."""
import numpy as np
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import level_passes, sampling
from dualrs_fast.derived_estimator import (ESTIMATE_STREAM, SELECT_STREAM, JointVotes,
                                           split_joint)
from dualrs_fast.dual import _CertifyRun
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes
from dualrs_fast.smoothing import certify_counts
from test_dual_shared import GroupEstimator, TwoPlanes

D = 12
SIGMAS = (0.25, 0.5, 1.0)
FIELDS = ("prediction", "radius", "count", "p_lower", "radius_estimator", "radius_classifier",
          "level", "count_estimator", "estimator_samples", "estimator_alpha", "shared",
          "samples")


def _dual(derived=True, routes=None):
    """Levels 0.25 / 0.5 / 1.0 chosen by a three-class model on x[0], x[1] (class k ->
    level k); derived: the estimator is that model at sigma 1.0, also the sigma 1.0 expert
    (shared pass); else a plain estimator (every input on its level's classifier)."""
    planes = TwoPlanes(0, 1)
    routes = routes or {0.25: TwoPlanes(2, 3), 0.5: TwoPlanes(4, 5), 1.0: planes}
    if derived:
        estimator = GroupEstimator(planes, groups=(0, 1, 2), levels=3)
    else:
        estimator = TwoPlanes(0, 1)
        routes[1.0] = TwoPlanes(6, 7)
    return drs.DualSmoothing(estimator, routes, sigmas=SIGMAS, estimator_sigma=1.0)


def _inputs(count, dtype, seed):
    """Inputs at every level (x[0], x[1] far from the planes), some on the estimator's
    boundary (it abstains), the classifiers' coordinates far, near or on their planes (some
    classifiers abstain)."""
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.uniform(-0.5, 0.5, (count, D)))
    kind = np.arange(count) % 4
    x[:, 0] = torch.from_numpy(np.select([kind == 0, kind == 3], [-4.0, 0.0], 4.0))
    x[:, 1] = torch.from_numpy(np.where(kind == 1, -4.0, 4.0))
    x[:, 0] += torch.from_numpy(rng.choice([0.0, 2.5], count) * (kind == 0))  # less sure
    x[:, 2:8] = torch.from_numpy(rng.choice([-3.0, -0.4, 0.0, 0.2, 0.6, 3.0], (count, 6)))
    return x.to(dtype)


def _same(a, b):
    for name in FIELDS:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(torch.nan_to_num(a.sigma, 7.0), torch.nan_to_num(b.sigma, 7.0))


class Passes:
    """Counts the engine passes (``sampling._count_heads`` calls) while installed."""

    def __init__(self, monkeypatch):
        self.count, engine = 0, sampling._count_heads

        def counting(*args, **kw):
            self.count += 1
            return engine(*args, **kw)
        monkeypatch.setattr(sampling, "_count_heads", counting)


def _per_expert_level_pass(self, ve, shared, routed, borrows, n0, n, n_ve, alpha_ve,
                           alpha_cls):
    """main's passes, kept here only: the shared inputs' joint pass, then one classifier
    pass per expert (``_CertifyRun.shared_pass`` and ``DualSmoothing._classifier_counts``
    before the level passes); the ``borrows`` inputs take the derived expert's selection
    votes and draw no selection samples of their own."""
    out, kw = [], dict(seed=self.seed, batch_size=self.batch_size)
    if shared.numel():
        first, most = min(n, n_ve), max(n, n_ve)
        draws = [Draw(ESTIMATE_STREAM, first)]
        if most > first:
            draws.append(Draw(ESTIMATE_STREAM, most - first, start=first))
        extra = max(0, n0 - self.selection_drawn)
        if extra:
            draws.append(Draw(SELECT_STREAM, extra, start=self.selection_drawn))
        classes, levels = split_joint(count_votes(self.joint, self.xb[shared], self.sigma[shared],
                                                  draws, ids=self.ids[shared], **kw), self.levels)
        selected = self.class_selection[shared] + (classes[-1] if extra else 0)
        ve.add(shared, levels[0] + (levels[1] if n_ve > first else 0), n_ve, alpha_ve)
        sigma = torch.full((shared.numel(),), self.dual.estimator_sigma, dtype=torch.float64)
        out.append((shared, certify_counts(selected, classes[0] + (classes[1] if n > first else 0),
                                           n, alpha_cls, sigma), sigma))
    if routed.numel():
        level = ve.level[routed]
        sigma = torch.tensor(self.dual.sigmas, dtype=torch.float64)[level]
        counts = None
        for k in level.unique().tolist():
            at = torch.nonzero(level == k).reshape(-1)
            own_selection = torch.where(borrows[at], 0, n0)
            c = count_votes(self.dual.routes[k], self.xb[routed[at]], sigma[at],
                            [Draw(Stream.SELECT, own_selection), Draw(Stream.ESTIMATE, n)],
                            ids=self.ids[routed[at]], pass_sigma=True, **kw)
            counts = c.new_zeros((2, routed.numel(), c.shape[2])) if counts is None else counts
            counts[:, at] = c
        if borrows.any():
            counts[0, borrows] = self.class_selection[routed[borrows]].to(counts)
        out.append((routed, certify_counts(counts[0], counts[1], n, alpha_cls, sigma), sigma))
    return out


# ---- the counts ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("batch_size", [7, 1000])
@pytest.mark.parametrize("seed", [0, 5])
@pytest.mark.parametrize("joint", [False, True])
def test_level_counts_are_those_of_a_pass_per_expert(dtype, batch_size, seed, joint):
    dual = _dual()
    x = _inputs(23, dtype, seed)
    level = torch.tensor([(2, 0, 1)[i % 3] for i in range(23)])
    ids = torch.arange(100, 123)
    n0 = torch.tensor([0 if k == 2 else 9 for k in level.tolist()])   # per-input draws
    draws = [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, 31, start=4),
             Draw(ESTIMATE_STREAM, 17 * (level == 2))]
    kw = dict(seed=seed, batch_size=batch_size)
    expert_joint = JointVotes(dual.estimator.expert, dual.estimator.levels_from_logits, 3)
    classes, levels = level_passes.level_counts(
        dual, x, ids, level, draws, progress=False, joint=(2, expert_joint) if joint else None,
        **kw)
    assert (levels is not None) == joint
    sigma = torch.tensor(SIGMAS, dtype=torch.float64)[level]
    for k in range(3):
        at = torch.nonzero(level == k).reshape(-1)
        mine = [Draw(d.stream, d.num_samples[at] if torch.is_tensor(d.num_samples)
                     else d.num_samples, d.start) for d in draws]
        if joint and k == 2:
            c_cls, c_lvl = split_joint(count_votes(expert_joint, x[at], sigma[at], mine,
                                                   ids=ids[at], **kw), 3)
            assert torch.equal(levels[:, at], c_lvl)
        else:
            c_cls = count_votes(dual.routes[k], x[at], sigma[at], mine, ids=ids[at],
                                pass_sigma=True, **kw)
        assert torch.equal(classes[:, at], c_cls), k
    assert int(classes.sum()) == int(n0.sum()) + 23 * 31 + 17 * int((level == 2).sum())


# ---- whole results -------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("rounds", [{}, {"estimator_rounds": 1}], ids=["default", "plain"])
@pytest.mark.parametrize("derived", [True, False], ids=["shared-pass", "no-shared-pass"])
@pytest.mark.parametrize("seed,batch_size,n0_ve", [(0, 1000, None), (3, 37, 7), (11, 9, 250)])
def test_certify_equals_the_per_expert_passes(monkeypatch, dtype, rounds, derived, seed,
                                              batch_size, n0_ve):
    dual, x = _dual(derived), _inputs(29, dtype, seed)
    kw = dict(n0=40, n=300, alpha=0.01, seed=seed, batch_size=batch_size, n0_estimator=n0_ve,
              n_estimator=None if n0_ve is None else 200, **rounds)
    passes = Passes(monkeypatch)
    r = dual.certify(x, **kw)
    one_pass = passes.count
    monkeypatch.setattr(_CertifyRun, "level_pass", _per_expert_level_pass)
    passes.count = 0
    reference = dual.certify(x, **kw)
    _same(r, reference)
    # every level in use, abstentions of both kinds, the shared pass where derived
    assert set(r.level.tolist()) == {-1, 0, 1, 2}
    assert ((r.prediction == drs.ABSTAIN) & (r.level >= 0)).any()
    assert bool(r.shared.any()) == derived
    assert bool((r.estimator_class & ~r.shared).any()) == derived   # and the borrowed class
    assert one_pass == passes.count - 2       # three (joint, 0.25, 0.5; or 3 experts) -> one


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_predict_and_certify_radii_equal_the_per_expert_passes(monkeypatch, dtype):
    dual, x = _dual(derived=False), _inputs(21, dtype, 2)
    passes = Passes(monkeypatch)
    p = dual.predict(x, n=300, alpha=0.01, seed=4, batch_size=13)
    radii = dual.certify_radii(x, [0.0, 0.25, 0.5, 1.0], n_max=2000, n0=40, seed=4,
                               batch_size=13)
    one_pass = passes.count
    monkeypatch.setattr(level_passes, "one_pass_possible", lambda *a: False)
    passes.count = 0
    assert torch.equal(p, dual.predict(x, n=300, alpha=0.01, seed=4, batch_size=13))
    ref = dual.certify_radii(x, [0.0, 0.25, 0.5, 1.0], n_max=2000, n0=40, seed=4, batch_size=13)
    for name in ("prediction", "radius", "certified", "samples", "radius_estimator",
                 "radius_classifier"):
        assert torch.equal(getattr(radii, name), getattr(ref, name)), name
    assert set(p.tolist()) > {drs.ABSTAIN} and one_pass < passes.count


# ---- when one pass cannot serve --------------------------------------------------------------

class AxisLevels(torch.nn.Module):
    """Two levels: level 1 where x[0] > 0."""

    def forward(self, x):
        return torch.stack([-x[:, 0], x[:, 0]], 1)


def test_levels_equal_in_float32_take_a_pass_each(monkeypatch):
    # the engine passes sigma_rows as float32: levels it cannot tell apart get passes of
    # their own, with the same results
    sigmas = (0.5, 0.5 + 1e-9)
    routes = {sigmas[0]: TwoPlanes(2, 3), sigmas[1]: TwoPlanes(4, 5)}
    dual = drs.DualSmoothing(AxisLevels(), routes, sigmas=sigmas)
    x = _inputs(16, torch.float32, 1)
    x[:, 0] = torch.where(torch.arange(16) % 2 == 0, -4.0, 4.0)
    passes = Passes(monkeypatch)
    r = dual.certify(x, n0=30, n=200, alpha=0.01, seed=0, estimator_rounds=1)
    assert set(r.level.tolist()) == {0, 1} and passes.count == 4   # selection, estimator, 2
    monkeypatch.setattr(_CertifyRun, "level_pass", _per_expert_level_pass)
    _same(r, dual.certify(x, n0=30, n=200, alpha=0.01, seed=0, estimator_rounds=1))


def test_modules_on_different_devices_take_a_pass_each(monkeypatch):
    dual, x = _dual(), _inputs(20, torch.float32, 6)
    expected = dual.certify(x, n0=30, n=200, alpha=0.01, seed=1)
    other = dual.routes[1]
    def device(module, fallback):                   # as if the 0.5 expert sat elsewhere
        wrapped = getattr(module, "route", None)    # (level_passes.ClassColumns)
        return torch.device("meta") if other in (module, wrapped) else fallback
    monkeypatch.setattr(level_passes, "model_device", device)
    assert not level_passes.one_pass_possible({0: dual.routes[0], 1: other}, SIGMAS,
                                              torch.device("cpu"))
    passes = Passes(monkeypatch)
    _same(dual.certify(x, n0=30, n=200, alpha=0.01, seed=1), expected)
    level_passes_made = passes.count
    monkeypatch.setattr(_CertifyRun, "level_pass", _per_expert_level_pass)
    passes.count = 0
    dual.certify(x, n0=30, n=200, alpha=0.01, seed=1)
    assert level_passes_made == passes.count


class NearTies(torch.nn.Module):
    """float64 logits 1 and 1 + 1e-12 (class 1 where x[4] > 0): equal in float32."""

    def forward(self, x, *unused_sigma):
        out = torch.ones(x.shape[0], 3, dtype=torch.float64)
        out[:, 1] += 1e-12 * (x[:, 4] > 0)
        out[:, 2] = 0.0
        return out


def test_logits_of_different_dtypes_keep_their_votes():
    # the float32 route's logits come first in the pass; the float64 ones must not be
    # rounded to float32 (class 1 would become a tie, voted 0)
    dual = _dual(routes={0.25: TwoPlanes(2, 3), 0.5: NearTies(), 1.0: TwoPlanes(0, 1)})
    x = _inputs(12, torch.float32, 8)
    x[:, 4] = 5.0
    level = torch.tensor([0, 1] * 6)
    classes, _ = level_passes.level_counts(dual, x, torch.arange(12), level,
                                           [Draw(Stream.ESTIMATE, 50)], seed=0,
                                           batch_size=1000, progress=False)
    assert (classes[0, 1::2, 1] == 50).all()
    sigma = torch.full((6,), 0.5, dtype=torch.float64)
    assert torch.equal(classes[:, 1::2], count_votes(
        NearTies(), x[1::2], sigma, [Draw(Stream.ESTIMATE, 50)], seed=0, ids=torch.arange(12)[1::2],
        batch_size=1000, pass_sigma=True))


class BatchMean(torch.nn.Module):
    """Couples the rows of its batch (subtracts the batch mean): the batch probe's target."""

    def forward(self, x, *unused_sigma):
        z = x[:, 2:5] - x[:, 2:5].mean(0, keepdim=True)
        return z


@pytest.mark.parametrize("alone", [1, 2, 5])
def test_the_batch_probe_reaches_every_module(alone):
    # a row-coupling expert serving few of the pass's inputs is refused as on a pass of its own
    dual = _dual(routes={0.25: TwoPlanes(2, 3), 0.5: BatchMean(), 1.0: TwoPlanes(0, 1)})
    level = torch.tensor([1] * alone + [0] * 20)
    x = _inputs(level.numel(), torch.float32, 9)
    with pytest.raises(ValueError, match="depends on the other rows"):
        level_passes.level_counts(dual, x, torch.arange(level.numel()), level,
                                  [Draw(Stream.ESTIMATE, 20)], seed=0, batch_size=1000,
                                  progress=False)
