"""compat.Smooth as code written for Cohen et al.'s core.Smooth uses it (issue 21): subclasses
that override its helpers, explicit seeds over many calls, packed certify_many, and the
smaller cases where Cohen's code gives a result (input shapes, a wider num_classes, autograd
inside forward, fractional counts, blank log lines)."""
import numpy as np
import pytest
import torch
from scipy.stats import norm
from statsmodels.stats.proportion import proportion_confint

from dualrs_fast.compat import Smooth
from dualrs_fast.logs import read_log

from analytic import inputs_at_distances


class Recording(torch.nn.Module):
    """A linear 3-class model that keeps a copy of every batch it is given."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = torch.nn.Linear(features, 3)
        self.batches = []

    def forward(self, x):
        self.batches.append(x.detach().clone())
        return self.linear(x.flatten(1))


def recording_model(features=12):
    torch.manual_seed(0)
    return Recording(features)


class VotesForThree(Smooth):
    """Cohen's README-style subclass: its own noise sampler, here one that votes class 3."""

    def _sample_noise(self, x, num, batch_size):
        counts = np.zeros(self.num_classes, dtype=int)
        counts[3] = num
        return counts


class HalfBound(Smooth):
    """A subclass with its own (more cautious) confidence bound."""

    def _lower_confidence_bound(self, NA, N, alpha):
        return proportion_confint(NA, N, alpha=2 * alpha, method="beta")[0] - 0.1


def test_an_overridden_sample_noise_decides_certify_and_predict(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.5]), (1, 28, 28))[0]  # class 1
    smooth = VotesForThree(linear_model, num_classes=4, sigma=0.25)
    cls, radius = smooth.certify(x, 10, 1000, 0.001, 100)
    p_lower = proportion_confint(1000, 1000, alpha=0.002, method="beta")[0]
    assert cls == 3 and radius == pytest.approx(0.25 * norm.ppf(p_lower), rel=1e-6)
    assert radius <= 0.25 * norm.ppf(p_lower)  # rounded down
    assert smooth.predict(x, 1000, 0.001, 100) == 3
    assert smooth.certify_many([x, x], 10, 1000, 0.001, 100) == [(cls, radius)] * 2


def test_an_overridden_bound_decides_the_radius(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([2.0]), (1, 28, 28))[0]  # all votes 1
    cls, radius = HalfBound(linear_model, 2, 0.25, seed=0).certify(x, 10, 1000, 0.001, 500)
    p_lower = proportion_confint(1000, 1000, alpha=0.002, method="beta")[0] - 0.1
    assert cls == 1 and radius == pytest.approx(0.25 * norm.ppf(p_lower), rel=1e-6)
    plain = Smooth(linear_model, 2, 0.25, seed=0).certify(x, 10, 1000, 0.001, 500)
    assert plain[1] > radius + 0.1  # the fused path when nothing is overridden


def test_a_bound_of_one_is_refused_not_an_infinite_radius(linear_model):
    class Certain(Smooth):
        def _lower_confidence_bound(self, NA, N, alpha):
            return 1.0
    x = inputs_at_distances(linear_model, torch.tensor([2.0]), (1, 28, 28))[0]
    with pytest.raises(ValueError, match="not a bound below 1"):
        Certain(linear_model, 2, 0.25).certify(x, 10, 100, 0.001, 100)


def test_an_explicit_seed_gives_each_call_new_noise_and_replays_from_a_new_object():
    model = recording_model()
    x = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(1))
    smooth = Smooth(model, 3, 0.5, seed=9)
    smooth.certify(x, 5, 20, 0.01, 100)
    first = model.batches[-1]  # the sampling batch (after the probe's)
    smooth.certify(x, 5, 20, 0.01, 100)
    second = model.batches[-1]
    assert not torch.equal(first, second)  # was: the same noise for every call
    model.batches.clear()
    again = Smooth(model, 3, 0.5, seed=9)
    again.certify(x, 5, 20, 0.01, 100)
    assert torch.equal(model.batches[-1], first)
    again.certify(x, 5, 20, 0.01, 100)
    assert torch.equal(model.batches[-1], second)


def test_two_images_under_one_seed_get_different_noise():
    model = recording_model()
    g = torch.Generator().manual_seed(2)
    a, b = torch.rand(3, 2, 2, generator=g), torch.rand(3, 2, 2, generator=g)
    smooth = Smooth(model, 3, 0.5, seed=4)
    smooth.certify(a, 5, 20, 0.01, 100)
    noise_a = model.batches[-1] - a
    smooth.certify(b, 5, 20, 0.01, 100)
    noise_b = model.batches[-1] - b
    assert not torch.allclose(noise_a, noise_b)


def test_certify_many_equals_certify_in_turn(linear_model):
    xs = inputs_at_distances(linear_model, torch.tensor([0.05, 0.1, 0.2]), (1, 28, 28))
    packed = Smooth(linear_model, 2, 0.25, seed=5).certify_many(xs, 20, 1000, 0.01, 256)
    one_by_one = Smooth(linear_model, 2, 0.25, seed=5)
    assert packed == [one_by_one.certify(x, 20, 1000, 0.01, 256) for x in xs]
    assert Smooth(linear_model, 2, 0.25).certify_many([], 20, 100, 0.01, 64) == []


def test_input_shapes_cohens_repeat_accepts():
    model = recording_model(features=12)
    x = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(3))
    reference = Smooth(model, 3, 0.5, seed=1).certify(x, 5, 50, 0.01, 100)
    assert Smooth(model, 3, 0.5, seed=1).certify(x.unsqueeze(0), 5, 50, 0.01, 100) == reference
    # (H, W) and (D,): the model gets (batch, 1, H, W) and (batch, 1, 1, D), as from x.repeat
    Smooth(model, 3, 0.5, seed=1).certify(x.reshape(3, 4), 5, 50, 0.01, 100)
    assert model.batches[-1].shape[1:] == (1, 3, 4)
    Smooth(model, 3, 0.5, seed=1).predict(x.reshape(12), 50, 0.01, 100)
    assert model.batches[-1].shape[1:] == (1, 1, 12)
    for bad in (torch.rand(2, 3, 2, 2), torch.rand(1, 1, 3, 2, 2)):
        with pytest.raises(ValueError, match="take one input"):
            Smooth(model, 3, 0.5).certify(bad, 5, 50, 0.01, 100)


def test_num_classes_wider_than_the_model_counts_zero_for_the_rest():
    model = recording_model()
    x = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(4))
    assert Smooth(model, 5, 0.5, seed=2).certify(x, 5, 200, 0.01, 100) == \
        Smooth(model, 3, 0.5, seed=2).certify(x, 5, 200, 0.01, 100)
    counts = Smooth(model, 5, 0.5, seed=2)._sample_noise(x, 200, 100)
    assert counts.shape == (5,) and counts[3:].sum() == 0 and counts.sum() == 200
    with pytest.raises(ValueError, match="returns 3 logits but num_classes is 2"):
        Smooth(model, 2, 0.5).certify(x, 5, 50, 0.01, 100)


class GradientInForward(torch.nn.Module):
    """Logits from an input gradient, computed with autograd inside forward (as input-gradient
    or energy-based models do); Cohen's code calls it under no_grad."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = torch.nn.Linear(12, 3)

    def forward(self, x):
        with torch.enable_grad():
            x = x.detach().flatten(1).requires_grad_(True)
            energy = self.linear(x).logsumexp(1).sum()
            (grad,) = torch.autograd.grad(energy, x)
        return self.linear(x.detach() + grad)


def test_a_model_using_autograd_inside_forward_certifies():
    x = torch.rand(3, 2, 2, generator=torch.Generator().manual_seed(5))
    cls, radius = Smooth(GradientInForward(), 3, 0.25, seed=0).certify(x, 10, 200, 0.01, 100)
    assert cls in (-1, 0, 1, 2) and radius >= 0
    assert Smooth(GradientInForward(), 3, 0.25, seed=0).predict(x, 200, 0.01, 100) in (-1, 0, 1, 2)


def test_lower_confidence_bound_refuses_fractional_counts(linear_model):
    smooth = Smooth(linear_model, 2, 0.25)
    with pytest.raises(ValueError, match="NA must be an integer count"):
        smooth._lower_confidence_bound(5.7, 10, 0.001)  # was: silently int(5.7) = 5
    with pytest.raises(TypeError, match="N must be an integer count"):
        smooth._lower_confidence_bound(5, "10", 0.001)
    exact = proportion_confint(5, 10, alpha=0.002, method="beta")[0]
    for na in (5, 5.0, np.int64(5), np.float32(5)):
        assert smooth._lower_confidence_bound(na, 10, 0.001) == pytest.approx(exact, rel=1e-9)


def test_read_log_skips_blank_lines_and_names_a_short_row(tmp_path):
    path = tmp_path / "cohen.tsv"
    header = "idx\tlabel\tpredict\tradius\tcorrect\ttime\n"
    path.write_text(header + "0\t3\t3\t0.8\t1\t0:00:01.5\n\n1\t2\t2\t0.2\t1\t0:00:01\n\n")
    table = read_log(path)  # was: a bare IndexError
    assert table["idx"].tolist() == [0, 1] and table["radius"].tolist() == [0.8, 0.2]
    path.write_text(header + "0\t3\t3\t0.8\n")
    with pytest.raises(ValueError, match="line 2 has 4 columns, the header 6"):
        read_log(path)
