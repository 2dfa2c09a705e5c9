"""Per-dataset committed models, the noise-conditioned classifier and its training."""
import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import models
from dualrs_fast.data import load_dataset
from dualrs_fast.training import _SigmaFixed, evaluate_accuracy, train_classifier

SIGMAS = (0.25, 0.5, 1.0)


def test_sigma_conditioned_cnn_is_row_independent_and_uses_sigma():
    torch.manual_seed(0)
    model = models.build_model("sigma_cnn").eval()
    x = torch.rand(6, 1, 28, 28)
    sigma = torch.tensor([0.25, 0.5, 1.0, 1.0, 0.5, 0.25])
    with torch.no_grad():
        batch = model(x, sigma)
        rows = torch.cat([model(x[i:i + 1], sigma[i:i + 1]) for i in range(6)])
        assert torch.allclose(batch, rows, atol=1e-5)
        assert torch.allclose(model(x, 0.5), model(x, torch.full((6,), 0.5)))
        assert not torch.allclose(model(x, 0.25), model(x, 1.0), atol=1e-3)  # sigma matters
    with pytest.raises(ValueError, match="sigma \\(N,\\) or a number"):
        model(x, torch.ones(5))


def test_conditioned_training_gives_each_row_a_level():
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(784, 3)

        def forward(self, x, sigma):
            seen.append(sigma.clone())
            return self.w(x.flatten(1))

    x, y = torch.rand(64, 1, 28, 28), torch.randint(0, 3, (64,))
    train_classifier(Spy(), x, y, [0.25, 1.0], epochs=2, batch_size=32, progress=False)
    levels = torch.cat(seen)
    assert levels.shape == (128,) and set(levels.tolist()) == {0.25, 1.0}
    with pytest.raises(ValueError, match="finite number >= 0 or a list"):
        train_classifier(Spy(), x, y, [0.25, -1.0], epochs=1, progress=False)


class CountingConditioned(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, []

    def forward(self, x, sigma):
        self.calls.append(sorted(set(sigma.tolist())))
        return self.model(x, sigma)


class PixelRouter(torch.nn.Module):
    """Routes by the first pixel: about 0 -> level 0, 1000 -> 1, 2000 -> 2 (noise at sigma 1
    never moves it across)."""

    def forward(self, x):
        level = torch.round(x[:, 0, 0, 0] / 1000).long().clamp(0, 2)
        return 100.0 * torch.nn.functional.one_hot(level, 3).to(x.dtype)


def test_dual_rs_sends_mixed_levels_through_one_forward_pass():
    """Inputs routed to three levels share each forward pass of the conditioned model, and
    certify as the same model wrapped as one expert per level."""
    torch.manual_seed(0)
    model = models.build_model("sigma_cnn").eval()
    x = torch.rand(12, 1, 28, 28)
    x[:, 0, 0, 0] = torch.arange(12) % 3 * 1000.0  # the router reads input i's level, i % 3
    estimator = PixelRouter()
    counting = CountingConditioned(model)
    kw = dict(sigmas=SIGMAS, estimator_sigma=1.0)
    a = drs.DualSmoothing(estimator, counting, **kw).certify(x, n0=20, n=200, seed=3,
                                                              batch_size=12 * 220)
    b = drs.DualSmoothing(estimator, {s: _SigmaFixed(model, s) for s in SIGMAS}, **kw).certify(
        x, n0=20, n=200, seed=3, batch_size=12 * 220)
    assert torch.equal(a.prediction, b.prediction) and torch.equal(a.radius, b.radius)
    used = set(a.level.tolist()) - {-1}
    assert used == {0, 1, 2}, f"the test needs mixed levels, got {a.level.tolist()}"
    # calls[0] is the width check; every sampling pass holds inputs of all three levels
    assert len(counting.calls) > 1
    assert all(c == list(SIGMAS) for c in counting.calls[1:]), counting.calls


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_committed_models_per_dataset(dataset):
    assert models.available_default_sigmas(dataset=dataset) == list(SIGMAS)
    x, y = load_dataset(dataset, "test")
    x, y = x[:300], y[:300]
    for sigma in SIGMAS:
        model = models.load_default_classifier(sigma, dataset=dataset)
        assert model.meta["sigma"] == sigma and "train_time_s" in model.meta
        # an untrained model scores ~0.1; the committed ones ~0.6-0.8 (fashion-mnist) and
        # ~0.9-0.98 (mnist) under their noise
        assert evaluate_accuracy(model, x, y, sigma=sigma, seed=1) > 0.5
    assert not torch.equal(models.load_default_classifier(0.5).classifier[1].weight,
                           models.load_default_classifier(0.5, dataset=dataset)
                           .classifier[1].weight)  # not mnist5k's weights
    conditioned = models.load_default_conditioned(dataset=dataset)
    for sigma in SIGMAS:
        assert evaluate_accuracy(_SigmaFixed(conditioned, sigma), x, y, sigma=sigma, seed=1) > 0.5
    dual = models.load_default_dual(dataset=dataset)
    assert dual.sigmas == SIGMAS and set(id(r.classifier) for r in dual.routes) != {id(conditioned)}
    one = models.load_default_dual(dataset=dataset, conditioned=True)
    assert len({id(r) for r in one.routes}) == 1 and one.routes[0].conditioned


def test_unknown_dataset_weights_are_refused():
    with pytest.raises(ValueError, match="no committed weights for dataset 'cifar'"):
        models.load_default_classifier(0.5, dataset="cifar")
    with pytest.raises(FileNotFoundError, match="no committed noise-conditioned classifier"):
        models.load_default_conditioned(dataset="mnist5k")


@pytest.mark.parametrize("dataset", ["fashion-mnist", "mnist"])
def test_command_line_uses_the_datasets_own_models(dataset, tmp_path, capsys):
    import json

    from cli_helpers import dualrs, rows
    from dualrs_fast.loading import fingerprint
    quick = ["--n0", "20", "--n", "100", "--alpha", "0.01", "--seed", "0", "--quiet"]
    for name, extra in (("standard", ["--sigma", "0.5"]), ("dual", ["--dual"])):
        log = tmp_path / f"{name}.tsv"
        code, _, err = dualrs(capsys, "certify", "--dataset", dataset, "--max", 2,
                              *extra, *quick, "--out", log)
        assert code == 0, err
        assert [int(r[1]) for r in rows(log)[1:]] == \
            load_dataset(dataset, "test")[1][:2].tolist()
    config = json.loads((tmp_path / "standard.tsv.args.json").read_text())
    text = json.dumps(config)
    expert = models.load_default_classifier(0.5, dataset=dataset)
    assert fingerprint(expert) in text  # the dataset's own expert, not mnist5k's
    assert fingerprint(models.load_default_classifier(0.5)) not in text
