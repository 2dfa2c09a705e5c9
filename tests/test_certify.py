"""Standard RS certify/predict: soundness on analytic cases, agreement with the
Clopper-Pearson formula, batch-size invariance and input validation."""
import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.smoothing import predict_counts

from analytic import LinearBinary, inputs_at_distances

SIGMA = 0.5


def _violations(model, x, result):
    """Inputs whose certificate is false: wrong class, or radius above the exact one."""
    d = model.signed_distance(x)
    true_class = (d > 0).long()
    certified = result.prediction != drs.ABSTAIN
    wrong = certified & ((result.prediction != true_class) | (result.radius.double() > d.abs()))
    return int(wrong.sum()), int(certified.sum())


def test_linear_classifier_certificates_are_sound(linear_model):
    # The smoothed radius of a linear classifier is exactly its distance to the hyperplane.
    # Each certificate is wrong with probability <= alpha (about 0.085 here: Clopper-Pearson is
    # conservative), so one run of 400 exceeds alpha * 400 now and then (seeds 0 and 5 of
    # 0..7 do, with 42 and 41): four runs are pooled.
    alpha, N, seeds = 0.1, 400, range(4)
    distances = torch.linspace(-2 * SIGMA, 2 * SIGMA, N)
    x = inputs_at_distances(linear_model, distances, (1, 28, 28))
    wrong = certified = 0
    for seed in seeds:
        r = drs.certify(linear_model, x, sigma=SIGMA, n0=32, n=400, alpha=alpha,
                        batch_size=4096, seed=seed)
        w, c = _violations(linear_model, x, r)
        wrong, certified = wrong + w, certified + c
    assert certified > len(seeds) * N / 2          # the test has something to check
    assert wrong / (len(seeds) * N) <= alpha


def test_soundness_test_has_power(linear_model):
    # The same check flags an unsound rule: the point estimate p = nA/n in place of the
    # Clopper-Pearson bound over-claims the radius about half the time.
    alpha, N, n = 0.1, 400, 400
    x = inputs_at_distances(linear_model, torch.linspace(-2 * SIGMA, 2 * SIGMA, N), (1, 28, 28))
    r = drs.certify(linear_model, x, sigma=SIGMA, n0=32, n=n, alpha=alpha, seed=0)
    p_hat = np.clip(r.count.numpy() / n, 0, 1 - 1e-9)
    naive = r.prediction.clone()
    naive_radius = torch.from_numpy(SIGMA * scipy.stats.norm.ppf(p_hat)).float()
    unsound = drs.CertifyResult(prediction=naive, radius=naive_radius, count=r.count, n=n,
                                alpha=alpha, sigma=r.sigma, p_lower=r.p_lower)
    wrong, _ = _violations(linear_model, x, unsound)
    assert wrong / N > 2 * alpha


def test_radius_converges_to_true_distance(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.4, -0.8]), (1, 28, 28))
    r = drs.certify(linear_model, x, sigma=SIGMA, n0=100, n=100_000, alpha=0.001, seed=1)
    assert r.prediction.tolist() == [1, 0]
    true = torch.tensor([0.4, 0.8])
    assert torch.all(r.radius <= true)
    assert torch.all(r.radius >= 0.95 * true)


def test_radius_is_sigma_times_probit_of_clopper_pearson_bound(linear_model):
    x = inputs_at_distances(linear_model, torch.linspace(-0.6, 0.6, 25), (1, 28, 28))
    n, alpha = 2000, 0.01
    r = drs.certify(linear_model, x, sigma=SIGMA, n0=50, n=n, alpha=alpha, seed=3)
    k = r.count.numpy()
    p_lower = np.where(k > 0, scipy.stats.beta.ppf(alpha, k, n - k + 1), 0.0)
    np.testing.assert_allclose(r.p_lower.numpy(), p_lower, rtol=1e-10, atol=1e-300)
    certified = p_lower >= 0.5
    assert np.array_equal(r.prediction.numpy() != drs.ABSTAIN, certified)
    expected = np.where(certified, SIGMA * scipy.stats.norm.ppf(np.maximum(p_lower, 0.5)), 0.0)
    np.testing.assert_allclose(r.radius.numpy(), expected, rtol=1e-6, atol=1e-7)
    assert np.all(r.radius.double().numpy() <= expected + 1e-12)  # float32 rounds down
    assert np.all(r.count.numpy() <= n)
    assert not certified.all() and certified.any()


def test_counts_do_not_depend_on_batch_size_or_packing(linear_model):
    x = inputs_at_distances(linear_model, torch.linspace(-0.3, 0.3, 7), (1, 28, 28))
    runs = [drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=333, seed=5, batch_size=bs)
            for bs in (1, 7, 100, 5000)]
    for r in runs[1:]:
        assert torch.equal(r.count, runs[0].count)
        assert torch.equal(r.prediction, runs[0].prediction)
        assert torch.equal(r.radius, runs[0].radius)
    # An input certified on its own, keyed by the same id, gets the same certificate.
    alone = drs.certify(linear_model, x[4], sigma=SIGMA, n0=10, n=333, seed=5, ids=[4])
    assert alone.count.item() == runs[0].count[4].item()


def test_ids_and_seed_key_the_noise(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.05, 0.05]), (1, 28, 28))
    x[1] = x[0]
    diff = drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=2000, seed=0, ids=[3, 4])
    same = drs.certify(linear_model, x[1], sigma=SIGMA, n0=10, n=2000, seed=0, ids=[3])
    other_seed = drs.certify(linear_model, x[1], sigma=SIGMA, n0=10, n=2000, seed=1, ids=[3])
    assert same.count[0] == diff.count[0]
    assert diff.count[0] != diff.count[1]
    assert other_seed.count[0] != same.count[0]
    # one id for two inputs would give them the same noise: refused
    with pytest.raises(ValueError, match="distinct"):
        drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=20, seed=0, ids=[3, 3])


def test_selection_and_estimation_samples_are_separate():
    # A model that votes class 1 only for the very first noise sample of each stream would
    # make selection pick class 1 if selection and estimation shared samples.
    class Counter(torch.nn.Module):
        def forward(self, x):
            return torch.stack([torch.ones(len(x)), torch.zeros(len(x))], 1)
    r = drs.certify(Counter(), torch.zeros(1, 4, 4), sigma=0.1, n0=1, n=50, alpha=0.01)
    assert r.count.item() == 50 and r.prediction.item() == 0


def test_channels_last_gives_identical_certificates():
    g = torch.Generator().manual_seed(2)
    model = LinearBinary(torch.randn(3 * 8 * 8, generator=g), 0.1)
    x = torch.rand(3, 3, 8, 8, generator=g)
    a = drs.certify(model, x, sigma=0.25, n0=10, n=500, seed=0, channels_last=True)
    b = drs.certify(model, x, sigma=0.25, n0=10, n=500, seed=0, channels_last=False)
    assert torch.equal(a.count, b.count)


def test_predict_matches_binomial_test():
    rng = np.random.default_rng(0)
    counts = torch.from_numpy(rng.integers(0, 60, size=(200, 4)))
    got = predict_counts(counts, alpha=0.05)
    for row, p in zip(counts.numpy(), got.numpy()):
        order = np.argsort(-row, kind="stable")
        n_a, n_b = row[order[0]], row[order[1]]
        pval = scipy.stats.binomtest(int(n_a), int(n_a + n_b), 0.5).pvalue if n_a + n_b else 1.0
        if pval > 0.05:
            assert p == drs.ABSTAIN
        else:
            assert p == order[0]


def test_predict_on_linear_model(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([1.0, -1.0, 0.0]), (1, 28, 28))
    p = drs.predict(linear_model, x, sigma=SIGMA, n=1000, alpha=0.001)
    assert p[:2].tolist() == [1, 0]
    assert p.dtype == torch.int64 and p.shape == (3,)


def test_single_input_returns_batch_of_one(linear_model):
    x = inputs_at_distances(linear_model, torch.tensor([0.5]), (1, 28, 28))[0]
    r = drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=100)
    assert r.prediction.shape == (1,) and r.radius.dtype == torch.float32
    assert r.count.dtype == torch.int64 and r.n == 100


# torch's own modules call the deprecated torch.jit.script_method while inductor imports them
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
def test_compile_path_matches_eager(linear_model):
    pytest.importorskip("torch._inductor")
    x = inputs_at_distances(linear_model, torch.tensor([0.1, -0.2]), (1, 28, 28))
    eager = drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=90, batch_size=64, seed=0)
    try:
        compiled = drs.certify(linear_model, x, sigma=SIGMA, n0=10, n=90, batch_size=64,
                               seed=0, compile=True)
    except Exception as e:  # no working C compiler for inductor on this machine
        pytest.skip(f"torch.compile unavailable: {e}")
    assert torch.equal(eager.count, compiled.count)


# ---- bad input: a clear error, never a certificate ----------------------------------------

class WrongShape(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(len(x), 3, 2)


class WrongRows(torch.nn.Module):
    def forward(self, x):
        return torch.zeros(len(x) + 1, 3)


class NaNLogits(torch.nn.Module):
    def forward(self, x):
        return torch.full((len(x), 3), float("nan"))


@pytest.mark.parametrize("kwargs,error", [
    (dict(sigma=0.0), ValueError), (dict(sigma=-0.5), ValueError),
    (dict(sigma=float("nan")), ValueError), (dict(sigma=float("inf")), ValueError),
    (dict(sigma="0.5"), TypeError), (dict(alpha=0.0), ValueError), (dict(alpha=1.0), ValueError),
    (dict(alpha=1.5), ValueError), (dict(alpha=float("nan")), ValueError),
    (dict(n0=0), ValueError), (dict(n=0), ValueError), (dict(n=-3), ValueError),
    (dict(n=10.5), TypeError), (dict(n0=True), TypeError), (dict(batch_size=0), ValueError),
    (dict(seed=-1), ValueError), (dict(seed=1.5), TypeError), (dict(ids=[0, 1]), ValueError),
    (dict(noise_backend="cuda-magic"), ValueError),
    (dict(n=2**32), ValueError), (dict(n0=2**32), ValueError), (dict(n=2**40), ValueError),
])
def test_bad_arguments_raise(linear_model, kwargs, error):
    x = torch.rand(1, 28, 28)
    base = dict(sigma=0.25, n0=10, n=100, alpha=0.01)
    with pytest.raises(error):
        drs.certify(linear_model, x, **{**base, **kwargs})


@pytest.mark.parametrize("x,error", [
    (torch.full((1, 28, 28), float("nan")), ValueError),
    (torch.full((2, 1, 28, 28), float("inf")), ValueError),
    (torch.zeros(1, 28, 28, dtype=torch.int64), TypeError),
    (torch.zeros(1, 28, 28, dtype=torch.float16), TypeError),
    (torch.zeros(0, 1, 28, 28), ValueError),
    (torch.zeros(1, 1, 1, 1, 1, 1), ValueError),
    ([[0.0]], TypeError),
])
def test_bad_inputs_raise(linear_model, x, error):
    with pytest.raises(error):
        drs.certify(linear_model, x, sigma=0.25, n0=10, n=100)


@pytest.mark.parametrize("model,error", [(WrongShape(), ValueError), (WrongRows(), ValueError),
                                         (NaNLogits(), ValueError),
                                         (lambda x: "logits", TypeError)])
def test_bad_model_outputs_raise(model, error):
    with pytest.raises(error):
        drs.certify(model, torch.rand(1, 4, 4), sigma=0.25, n0=5, n=20)
    with pytest.raises(error):
        drs.predict(model, torch.rand(1, 4, 4), sigma=0.25, n=20)


def test_training_mode_batchnorm_is_refused():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 3))
    with pytest.raises(ValueError, match="eval"):
        drs.certify(model, torch.rand(1, 4, 4), sigma=0.25, n0=5, n=20)
    model.eval()
    assert drs.certify(model, torch.rand(1, 4, 4), sigma=0.25, n0=5, n=20).n == 20
