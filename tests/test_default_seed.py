"""The default seed (issue 10, item 2): seed=None is a fresh secret seed from the OS for each
call, returned as r.seed; an explicit seed keeps a run reproducible bit for bit."""
import torch

import dualrs_fast as drs
from dualrs_fast import validation
from dualrs_fast.compat import Smooth

from analytic import LinearBinary

D = 16


class Memoriser(torch.nn.Module):
    """Votes class 1 exactly on the noisy points it has memorised: with a public default seed
    those are the points certify will draw (computable from the published noise spec)."""

    def __init__(self):
        super().__init__()
        self.memory, self.learning = set(), True

    def forward(self, x):
        keys = [row.numpy().tobytes() for row in x.reshape(len(x), -1)]
        if self.learning:
            self.memory.update(keys)
        hit = torch.tensor([k in self.memory and not self.learning for k in keys])
        return torch.stack([(~hit).float(), hit.float()], 1)


def test_memorised_noise_of_a_fixed_seed_gives_no_certificate_by_default():
    x = torch.rand(1, D, generator=torch.Generator().manual_seed(0))
    model = Memoriser()
    drs.certify(model, x, sigma=0.5, n0=10, n=200, alpha=0.01, seed=0)   # the noise of seed 0
    model.learning = False
    replay = drs.certify(model, x, sigma=0.5, n0=10, n=200, alpha=0.01, seed=0)
    assert replay.prediction.tolist() == [1]          # what seed=0 by default used to give
    r = drs.certify(model, x, sigma=0.5, n0=10, n=200, alpha=0.01)
    assert r.prediction.tolist() == [0] and int(r.count[0]) == 200
    assert drs.predict(model, x, sigma=0.5, n=200, alpha=0.01).tolist() == [0]


def test_default_seed_is_fresh_secret_and_reported():
    model = LinearBinary.random(D, 1, b=0.05)
    x = torch.rand(3, D, generator=torch.Generator().manual_seed(1))
    kw = dict(sigma=0.5, n0=10, n=500, alpha=0.01)
    torch.manual_seed(0)
    a = drs.certify(model, x, **kw)
    torch.manual_seed(0)                 # torch's global RNG does not pick it
    b = drs.certify(model, x, **kw)
    assert isinstance(a.seed, int) and 0 <= a.seed < 2**63 and a.seed != b.seed
    again = drs.certify(model, x, seed=a.seed, **kw)     # passing it back replays the run
    assert again.seed == a.seed and torch.equal(again.count, a.count)
    assert drs.certify(model, x, seed=7, **kw).seed == 7


def test_dual_result_reports_its_seed():
    model = LinearBinary.random(D, 1)
    dual = drs.DualSmoothing(model, {0.25: model, 0.5: model}, sigmas=(0.25, 0.5))
    x = torch.rand(2, D)
    r = dual.certify(x, n0=10, n=100)
    assert isinstance(r.seed, int)
    replay = drs.certify(dual, x, n0=10, n=100, seed=r.seed)
    assert replay.seed == r.seed and torch.equal(replay.count, r.count)
    assert torch.equal(replay.count_estimator, r.count_estimator)


def test_smooth_without_seed_draws_a_fresh_secret_seed_per_call(monkeypatch):
    drawn = []

    def spy():
        drawn.append(validation.secrets.randbits(63))
        return drawn[-1]
    monkeypatch.setattr(validation, "fresh_seed", spy)
    model = LinearBinary.random(D, 1)
    smooth = Smooth(model, 2, 0.5)
    x = torch.rand(1, 4, 4)
    torch.manual_seed(0)
    smooth.certify(x, 10, 100, 0.01, 50)
    torch.manual_seed(0)
    smooth.predict(x, 100, 0.01, 50)
    assert len(drawn) == 2 and drawn[0] != drawn[1]
    Smooth(model, 2, 0.5, seed=3).certify(x, 10, 100, 0.01, 50)
    assert len(drawn) == 2             # an explicit seed draws nothing
