"""The trust boundary (issue 20, items 3 and 4; README "Threat model").

- No model call receives memory that is later certified or logged: the command line's
  pre-flight checks fed the model ``dataset.x[:1]``, a view, and a model that binarised its
  input in place changed image 0 before it was certified.
- An untrusted model *file* is certified only as weights loaded into a built-in
  architecture: each is a stateless, row-independent function (tested here on batches of
  every size, in any order, over many calls). The command line says which case a run is in.
"""
import warnings

import pytest
import torch

from dualrs_fast import loading
from dualrs_fast.loading import fingerprint
from dualrs_fast.models import (ClassGroupEstimator, ResNet20, SmallCNN, TinyMLP,
                                save_checkpoint)

from cli_helpers import dualrs, make_toy

QUICK = ["--n", "30", "--alpha", "0.01", "--seed", "0", "--quiet"]


class InPlaceBinariser(torch.nn.Module):
    """Binarises whatever it is given, in place, then scores it like a tiny linear model."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.linspace(-1, 1, 64 * 4).reshape(64, 4),
                                    requires_grad=False)

    def forward(self, x):
        x.copy_((x > 0.5).to(x.dtype))
        return x.reshape(len(x), -1) @ self.w


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("boundary")
    make_toy(root, inputs=3)
    return root


@pytest.fixture
def loaded(monkeypatch):
    """Every model the command line loads is an InPlaceBinariser; the datasets it loads are
    kept to be compared with their files afterwards."""
    datasets = []
    real_load_dataset = loading.load_dataset

    def keep(*args, **kwargs):
        datasets.append(real_load_dataset(*args, **kwargs))
        return datasets[-1]
    monkeypatch.setattr(loading, "load_dataset", keep)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: InPlaceBinariser().eval())
    return datasets


@pytest.mark.parametrize("command", ["certify", "predict", "certify --radii 0.1",
                                     "certify --dual"])
def test_no_model_call_writes_into_the_dataset(command, toy, tmp_path, capsys, loaded):
    original = torch.load(toy / "toy.pt")["x"]
    argv = command.split() + ["--dataset", toy / "toy.pt", *QUICK, "--out", tmp_path / "log"]
    if "--dual" in command:
        argv += ["--sigmas", 0.25, 0.5, "--estimator-sigma", 0.5, "--estimator",
                 toy / "mlp.pt", "--model", toy / "mlp.pt", toy / "mlp.pt"]
    else:
        argv += ["--model", toy / "mlp.pt", "--sigma", 0.5]
    if command != "predict":
        argv += ["--n0", 5]
    code, _, err = dualrs(capsys, *argv)
    assert code in (0, 2) and "Traceback" not in err, err
    assert len(loaded) == 1 and torch.equal(loaded[0].x, original)   # main: image 0 binarised


# --------------------------------------------------------------------------- architectures

def _built_in(arch):
    torch.manual_seed(0)
    return {
        "tiny_mlp": lambda: TinyMLP((1, 8, 8), num_classes=4, hidden=8),
        "small_cnn": lambda: SmallCNN(in_channels=1, num_classes=4, input_size=8, hidden=8),
        "resnet20": lambda: ResNet20(in_channels=1, num_classes=4),
        "class_group": lambda: ClassGroupEstimator(
            "small_cnn", dict(in_channels=1, num_classes=4, input_size=8, hidden=8),
            groups=[0, 1, 1, 0], num_levels=2),
    }[arch]().eval()


def test_every_registered_architecture_is_tested_here():
    from dualrs_fast.models import MODEL_REGISTRY
    # Cohen et al.'s architectures: the same checks in test_cohen_models_data.py
    assert sorted(MODEL_REGISTRY) == ["cifar_resnet110", "cifar_resnet20", "class_group",
                                      "resnet20", "resnet50", "small_cnn", "tiny_mlp"]


@pytest.mark.parametrize("arch", ["tiny_mlp", "small_cnn", "resnet20", "class_group"])
def test_built_in_architectures_are_stateless_row_independent_functions(arch):
    model = _built_in(arch)
    before = fingerprint(model)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        alone = torch.cat([model(x[k:k + 1]) for k in range(len(x))])
        for _ in range(2):   # over calls: the same outputs (no call counter, no memo)
            for size in (3, 8, 9, 40):     # batches below, at and above the probe's 8
                batched = torch.cat([model(x[k:k + size]) for k in range(0, len(x), size)])
                torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-5)
            perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(2))
            torch.testing.assert_close(model(x[perm]), alone[perm], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model(x.contiguous(memory_format=torch.channels_last)),
                                       alone, rtol=1e-5, atol=1e-5)
        # a row does not see the others: changing every other row leaves it as it was
        other = x.clone()
        other[1:] = torch.rand(39, 1, 8, 8)
        torch.testing.assert_close(model(other)[0], alone[0], rtol=1e-5, atol=1e-5)
    assert fingerprint(model) == before   # no parameter, buffer or attribute changed


def test_the_command_line_says_which_side_of_the_boundary_a_run_is_on(toy, tmp_path, capsys):
    argv = ["certify", "--dataset", toy / "toy.pt", "--n0", 5, *QUICK]
    code, out, err = dualrs(capsys, *argv, "--model", toy / "mlp.pt", "--out", tmp_path / "a")
    assert code == 0 and "weights in built-in architectures" in out, err

    class Plain(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.reshape(len(x), -1)[:, :4]], 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(Plain()), tmp_path / "ts.pt")
    code, out, err = dualrs(capsys, *argv, "--model", tmp_path / "ts.pt", "--sigma", 0.5,
                            "--allow-torchscript", "--out", tmp_path / "b")
    assert code == 0 and "TorchScript code trusted with --allow-torchscript" in out, err
