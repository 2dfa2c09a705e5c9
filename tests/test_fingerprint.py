"""The log seal's model fingerprint covers everything that decides the model's function
(issue 20, item 2), and the command line certifies every built-in architecture.

The attacks: ClassGroupEstimator's routing table is a non-persistent buffer, so two
estimators that route every input differently shared one ``model_sha256`` and one's log
resumed with the other; TorchScript files differing only in code or constants did too. And
the fingerprint crashed on 0-d buffers (BatchNorm's ``num_batches_tracked``), so ``dualrs
certify`` / ``predict`` failed with a traceback on every BatchNorm model."""
import warnings

import pytest
import torch

from dualrs_fast.loading import fingerprint
from dualrs_fast.models import (ClassGroupEstimator, ResNet20, SmallCNN, TinyMLP,
                                save_checkpoint)

from cli_helpers import dualrs, make_toy, rows

QUICK = ["--n", "30", "--alpha", "0.01", "--seed", "0", "--quiet"]
BASE = dict(in_shape=[1, 8, 8], num_classes=4, hidden=8, mean=0.5, std=0.5)


def _router(groups):
    torch.manual_seed(0)   # the same base weights for every routing table
    return ClassGroupEstimator("tiny_mlp", BASE, groups=groups, num_levels=2).eval()


class _Scaled(torch.nn.Module):
    """Parameter-free logits: a constant that only TorchScript code or constants carry."""

    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        s = x.reshape(x.shape[0], -1).sum(1, keepdim=True)
        return torch.cat([s * self.scale, -s, s - 1.0, 2.0 - s], 1)


def _script(module, path=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(module)
        if path is None:
            return scripted
        torch.jit.save(scripted, path)
        return torch.jit.load(str(path)).eval()


def test_routing_tables_change_the_fingerprint():
    a, b = _router([0, 0, 1, 1]), _router([1, 1, 0, 0])
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(a.base(x), b.base(x)) and not torch.equal(a(x), b(x))
    assert a.state_dict().keys() == b.state_dict().keys()   # the table is not in the state
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(_router([0, 0, 1, 1]))


def test_constructor_arguments_flags_and_every_buffer_change_the_fingerprint():
    torch.manual_seed(0)
    model = TinyMLP((1, 8, 8), num_classes=4, hidden=8).eval()
    same = fingerprint(model)
    model.register_buffer("extra", torch.zeros(3), persistent=False)
    assert fingerprint(model) != same
    model.extra[1] = 1.0
    with_one = fingerprint(model)
    assert with_one != same and fingerprint(model) == with_one
    model.train()
    assert fingerprint(model) != with_one            # the training flag decides BatchNorm
    model.eval()
    model.in_shape = (1, 4, 16)                         # a plain attribute forward() reads
    assert fingerprint(model) != with_one


def test_torchscript_code_and_constants_change_the_fingerprint(tmp_path):
    two = _script(_Scaled(2.0), tmp_path / "two.pt")
    three = _script(_Scaled(3.0), tmp_path / "three.pt")
    assert not any(True for _ in two.parameters())
    assert fingerprint(two) != fingerprint(three)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = torch.jit.load(str(tmp_path / "two.pt")).eval()
    assert fingerprint(two) == fingerprint(again)


def test_zero_dim_buffers_are_fingerprinted():
    model = ResNet20(in_channels=1, num_classes=4).eval()
    assert any(b.dim() == 0 for b in model.buffers())    # num_batches_tracked
    before = fingerprint(model)
    next(b for b in model.buffers() if b.dim() == 0).add_(1)
    assert fingerprint(model) != before


# --------------------------------------------------------------------------- the command line

@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("archs")
    make_toy(root, inputs=3)
    return root


ARCHS = {
    "tiny_mlp": lambda: TinyMLP((1, 8, 8), num_classes=4, hidden=8, mean=0.5, std=0.5),
    "small_cnn": lambda: SmallCNN(in_channels=1, num_classes=4, input_size=8, hidden=8),
    "resnet20": lambda: ResNet20(in_channels=1, num_classes=4),
}


@pytest.mark.parametrize("arch", sorted(ARCHS) + ["class_group"])
def test_cli_certifies_and_predicts_with_every_built_in_architecture(arch, toy, tmp_path,
                                                                     capsys):
    torch.manual_seed(0)
    if arch == "class_group":   # an estimator: Dual RS over two levels
        save_checkpoint(tmp_path / "m.pt", _router([0, 1, 0, 1]), arch)
        model = ["--dual", "--sigmas", 0.25, 0.5, "--estimator-sigma", 0.5,
                 "--estimator", tmp_path / "m.pt", "--model", toy / "mlp.pt", toy / "mlp.pt"]
    else:
        save_checkpoint(tmp_path / "m.pt", ARCHS[arch]().eval(), arch, meta={"sigma": 0.5})
        model = ["--model", tmp_path / "m.pt"]
    for command, n0 in (("certify", ["--n0", 5]), ("predict", [])):
        log = tmp_path / f"{command}.tsv"
        code, _, err = dualrs(capsys, command, "--dataset", toy / "toy.pt", *model, *QUICK,
                              *n0, "--out", log)
        assert code == 0 and "Traceback" not in err, err
        assert len(rows(log)) == 1 + 3


def _resume_with(first, second, toy, tmp_path, capsys, *extra):
    log = tmp_path / "log.tsv"
    common = ["certify", "--dataset", toy / "toy.pt", "--n0", 5, *QUICK, *extra, "--out", log]
    code, _, err = dualrs(capsys, *common, *first)
    assert code == 0, err
    code, _, err = dualrs(capsys, *common, *second)
    assert code == 2 and "model_sha256" in err and "Traceback" not in err, err
    code, _, err = dualrs(capsys, *common, *first)   # the same model resumes
    assert code == 0, err


def test_a_log_does_not_resume_with_an_estimator_that_routes_differently(toy, tmp_path,
                                                                         capsys):
    for name, groups in (("a", [0, 0, 1, 1]), ("b", [1, 1, 0, 0])):
        save_checkpoint(tmp_path / f"{name}.pt", _router(groups), "class_group")
    dual = ["--dual", "--sigmas", 0.25, 0.5, "--estimator-sigma", 0.5,
            "--model", toy / "mlp.pt", toy / "mlp.pt", "--estimator"]
    _resume_with(dual + [tmp_path / "a.pt"], dual + [tmp_path / "b.pt"], toy, tmp_path, capsys)


def test_a_log_does_not_resume_with_other_torchscript_code(toy, tmp_path, capsys):
    _script(_Scaled(2.0), tmp_path / "two.pt")
    _script(_Scaled(3.0), tmp_path / "three.pt")
    _resume_with(["--model", tmp_path / "two.pt"], ["--model", tmp_path / "three.pt"], toy,
                 tmp_path, capsys, "--sigma", 0.5, "--allow-torchscript")
