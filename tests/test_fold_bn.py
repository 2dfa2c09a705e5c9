"""BatchNorm folded into the preceding convolution on a private copy (issue 21, fold.py): the
same function up to float rounding, applied only where the traced graph shows a conv ->
BatchNorm pair in eval mode, never touching the user's model, and falling back to the model
as given when tracing fails or the copy disagrees on the probe rows. Speed is measured in
bench/cohen_speed.py, not here."""
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

import dualrs_fast as drs
from dualrs_fast import compat, fold, sampling
from dualrs_fast.loading import fingerprint
from dualrs_fast.models import build_model


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial running statistics and affine terms, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(0.5 + torch.rand(c, generator=g) * 1.5)
                if m.affine:
                    m.weight.copy_(0.5 + torch.rand(c, generator=g))
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model.eval()


def snapshot(model: nn.Module):
    """Everything about the model a call could change: values bit for bit, the Parameter
    objects, strides, flags, and the logs' fingerprint."""
    return ({k: (v.detach().clone(), v.stride()) for k, v in model.state_dict(keep_vars=True).items()},
            [id(p) for p in model.parameters()], [m.training for m in model.modules()],
            fingerprint(model))


def assert_unchanged(model, before):
    after = snapshot(model)
    assert after[0].keys() == before[0].keys()
    for k, (value, stride) in before[0].items():
        assert torch.equal(after[0][k][0], value) and after[0][k][0].dtype == value.dtype, k
        assert after[0][k][1] == stride, k
    assert after[1:] == before[1:]


def graph_bns(folded):
    """BatchNorm calls left in a folded copy's graphs."""
    return sum(1 for gm in folded.modules() if isinstance(gm, torch.fx.GraphModule)
               for n in gm.graph.nodes if n.op == "call_module"
               and isinstance(gm.get_submodule(n.target), nn.modules.batchnorm._BatchNorm))


def assert_same_function(model, folded, x, rtol=2e-6):
    """Logits within rtol of each row's scale; predictions equal except near-ties."""
    with torch.no_grad():
        a, b = model(x), folded(x)
    scale = a.abs().amax(1, keepdim=True)
    assert ((a - b).abs() <= rtol * scale).all(), float(((a - b).abs() / scale).max())
    top2 = a.topk(2, 1).values
    clear = (top2[:, 0] - top2[:, 1]) > 4 * rtol * scale[:, 0]
    assert torch.equal(a.argmax(1)[clear], b.argmax(1)[clear])
    assert clear.float().mean() > 0.9


class OddShapes(nn.Module):
    """Convolutions with bias, groups, dilation, stride, padding and a non-square kernel, a
    BatchNorm without affine terms, and 1-d / 3-d pairs, on an odd image size."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2))
        self.bn_a = nn.BatchNorm2d(6, eps=1e-3)
        self.b = nn.Conv2d(6, 9, 3, groups=3, padding=2, bias=False)
        self.bn_b = nn.BatchNorm2d(9, affine=False)
        self.c = nn.Conv1d(9, 5, 3)
        self.bn_c = nn.BatchNorm1d(5)
        self.d = nn.Conv3d(1, 2, 2)
        self.bn_d = nn.BatchNorm3d(2)
        self.fc = nn.Linear(5 + 2, 4)

    def forward(self, x):
        h = torch.relu(self.bn_a(self.a(x)))
        h = torch.relu(self.bn_b(self.b(h)))
        seq = torch.relu(self.bn_c(self.c(h.flatten(2))))   # (N, 9, L) -> 1-d pair
        vol = torch.relu(self.bn_d(self.d(h[:, None, :4])))  # (N, 1, 4, H, W) -> 3-d pair
        return self.fc(torch.cat([seq.mean(2), vol.flatten(2).mean(2)], 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_odd_shapes_fold_to_the_same_function(dtype):
    torch.manual_seed(0)
    model = randomise_batchnorm(OddShapes()).to(dtype)
    before = snapshot(model)
    folded = fold.fold_batchnorm(model)
    assert folded is not None and graph_bns(folded) == 0
    assert_same_function(model, folded, torch.rand(64, 3, 11, 7, dtype=dtype),
                         rtol=2e-6 if dtype == torch.float32 else 1e-13)
    assert_unchanged(model, before)


@pytest.mark.parametrize("arch,shape", [("cifar_resnet20", (3, 32, 32)),
                                        ("cifar_resnet110", (3, 32, 32)),
                                        ("resnet50", (3, 64, 64)),
                                        ("resnet20", (1, 28, 28)),
                                        ("resnet20", (3, 13, 9))])
def test_each_built_in_batchnorm_architecture_folds_whole(arch, shape):
    torch.manual_seed(0)
    kwargs = {"in_channels": shape[0]} if arch == "resnet20" else {}
    model = randomise_batchnorm(build_model(arch, **kwargs))
    before = snapshot(model)
    folded = fold.fold_batchnorm(model)
    assert folded is not None and graph_bns(folded) == 0
    assert_same_function(model, folded, torch.rand(4 if arch == "resnet50" else 64, *shape),
                         rtol=1e-5)
    assert_unchanged(model, before)


def test_models_without_batchnorm_are_not_copied():
    for arch in ("tiny_mlp", "small_cnn"):
        assert fold.folded_copy(build_model(arch).eval()) is None


class BatchNormOnInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn2 = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = torch.relu(self.conv(self.bn(x)))  # BatchNorm before the conv, and after a ReLU
        return self.fc(self.bn2(h).mean((2, 3)))


class ConvOutputUsedTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.conv(x)
        return self.fc((self.bn(h) + h).mean((2, 3)))  # the conv's output feeds more than bn


class ConvWeightRead(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).mean((2, 3))) + self.conv.weight.sum()


@pytest.mark.parametrize("make", [BatchNormOnInput, ConvOutputUsedTwice, ConvWeightRead])
def test_batchnorm_not_fed_only_by_a_convolution_is_left_alone(make):
    torch.manual_seed(0)
    model = randomise_batchnorm(make())
    assert fold.fold_batchnorm(model) is None


def test_training_mode_and_batch_statistics_are_left_unfolded():
    torch.manual_seed(0)
    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4),
                                              nn.Flatten(), nn.Linear(4 * 36, 3)))
    assert fold.fold_batchnorm(model) is not None
    model.train()
    assert fold.fold_batchnorm(model) is None
    model.eval()[0].train()  # the conv alone in training mode: still not folded
    assert fold.fold_batchnorm(model) is None
    no_stats = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
                             nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    assert fold.fold_batchnorm(no_stats) is None


def test_hooks_and_subclassed_layers_are_left_unfolded():
    class MyBN(nn.BatchNorm2d):
        def forward(self, x):
            return super().forward(x) * 2

    model = randomise_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), MyBN(4)))
    assert fold.fold_batchnorm(model) is None
    hooked = randomise_batchnorm(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4)))
    handle = hooked.register_forward_hook(lambda m, i, o: o * 2)
    assert fold.folded_copy(hooked) is None
    handle.remove()
    assert fold.folded_copy(hooked) is not None


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace the forward, only its children."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.stem_bn = nn.BatchNorm2d(4)
        self.block = nn.Sequential(nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        h = torch.relu(self.stem_bn(self.stem(x)))
        if h.sum() > 0:  # depends on the values: not traceable
            h = h * 1.0
        return self.fc(self.block(h).mean((2, 3)))


def test_an_untraceable_forward_folds_its_traceable_children_and_still_certifies():
    torch.manual_seed(0)
    model = randomise_batchnorm(Untraceable())
    before = snapshot(model)
    folded = fold.fold_batchnorm(model)
    assert folded is not None and graph_bns(folded) == 0  # only the block's pair is folded
    assert isinstance(folded.stem_bn, nn.BatchNorm2d) and type(folded) is Untraceable
    x = torch.rand(3, 1, 8, 8)
    assert_same_function(model, folded, torch.rand(64, 1, 8, 8))
    a = drs.certify(model, x, sigma=0.25, n0=20, n=300, seed=4)
    assert_unchanged(model, before)
    # as given, the model's own conv weights become channels_last (strides only)
    b = drs.certify(model, x, sigma=0.25, n0=20, n=300, seed=4, fold_bn=False)
    assert torch.equal(a.prediction, b.prediction)
    assert (a.count - b.count).abs().max() <= 2  # float rounding may flip a near-tie vote


def test_a_model_that_traces_nowhere_certifies_as_given():
    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.bn = nn.BatchNorm2d(4)
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            h = self.bn(self.conv(x))
            return self.fc((h if h.mean() > -1e9 else -h).mean((2, 3)))

    model = randomise_batchnorm(Opaque())
    assert fold.fold_batchnorm(model) is None
    r = drs.certify(model, torch.rand(2, 1, 6, 6), sigma=0.25, n0=10, n=100, seed=0)
    assert r.prediction.shape == (2,)


def resnet20_cohen_way(seed=0):
    torch.manual_seed(seed)
    return randomise_batchnorm(build_model("cifar_resnet20"), seed)


def test_certify_compat_and_the_packed_runner_leave_the_model_unchanged():
    model = resnet20_cohen_way()
    x = torch.rand(2, 3, 32, 32)
    before = snapshot(model)
    folded = drs.certify(model, x, sigma=0.25, n0=20, n=400, seed=3)
    assert_unchanged(model, before)
    plain = drs.certify(model, x, sigma=0.25, n0=20, n=400, seed=3, fold_bn=False)
    assert torch.equal(folded.prediction, plain.prediction)
    assert (folded.count - plain.count).abs().max() <= 2
    model.train()  # compat puts it in eval mode, as Cohen's does: start from there
    before = snapshot(model.eval())
    smooth = compat.Smooth(model, 10, 0.25, seed=1)
    ours = smooth.certify_many(list(x), 20, 400, 0.001, 100)
    given = compat.Smooth(model, 10, 0.25, seed=1, fold_bn=False).certify_many(
        list(x), 20, 400, 0.001, 100)
    assert [p for p, _ in ours] == [p for p, _ in given]
    assert all(abs(a - b) < 0.02 for (_, a), (_, b) in zip(ours, given))
    smooth.certify(x[0], 20, 200, 0.001, 100)
    smooth.predict(x[1], 200, 0.001, 100)
    assert_unchanged(model, before)


def test_the_folded_copy_follows_changes_to_the_model():
    model = resnet20_cohen_way()
    first = fold.folded_copy(model)
    assert fold.folded_copy(model) is first  # cached while nothing changes
    with torch.no_grad():
        model[1].bn1.running_mean.data.add_(0.25)  # through .data: no version counter bump
    second = fold.folded_copy(model)
    assert second is not first
    assert_same_function(model, second, torch.rand(16, 3, 32, 32), rtol=1e-5)


def test_a_copy_that_disagrees_on_the_probe_is_not_used(monkeypatch):
    model = resnet20_cohen_way()
    x = torch.rand(2, 3, 32, 32)
    wrong = resnet20_cohen_way(seed=9)  # another function: must never vote
    monkeypatch.setattr(sampling, "folded_copy", lambda m: wrong)
    a = drs.certify(model, x, sigma=0.25, n0=20, n=300, seed=2)
    b = drs.certify(model, x, sigma=0.25, n0=20, n=300, seed=2, fold_bn=False)
    assert torch.equal(a.count, b.count)

    def broken(m):
        raise AssertionError("the opt-out must not build a copy")

    monkeypatch.setattr(sampling, "folded_copy", broken)
    drs.certify(model, x, sigma=0.25, n0=20, n=100, seed=2, fold_bn=False)
    compat.Smooth(model, 10, 0.25, seed=0, fold_bn=False).certify(x[0], 20, 100, 0.001, 100)
    monkeypatch.setenv(fold.FOLD_ENV, "0")
    drs.certify(model, x, sigma=0.25, n0=20, n=100, seed=2)


def test_the_packed_runner_takes_no_fold_bn():
    from dualrs_fast.cohen_certify import build_parser
    assert build_parser().parse_args(["cifar10", "m", "0.25", "o"]).fold_bn is None
    assert build_parser().parse_args(["cifar10", "m", "0.25", "o", "--no-fold-bn"]).fold_bn is False


def test_fold_env_opt_out_in_a_fresh_process():
    code = ("from dualrs_fast.fold import fold_wanted as f; print(f(None), f(True), f(False))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         check=True, env=dict(os.environ, DUALRS_FAST_FOLD_BN="0")).stdout
    assert out.split() == ["False", "True", "False"]


@pytest.mark.skipif(not os.environ.get("COHEN_SMOOTHING_DIR"),
                    reason="Cohen's code: set COHEN_SMOOTHING_DIR to a locuslab/smoothing checkout")
@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_resnet110"])
def test_cohens_own_models_fold_whole(arch):
    """Their get_architecture's model (their NormalizeLayer and ResNet code) traces and folds."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "bench"))
    import cohen_codebase
    with cohen_codebase.cohen_imports():
        from architectures import get_architecture
        torch.manual_seed(0)
        theirs = randomise_batchnorm(get_architecture(arch, "cifar10"))
    before = snapshot(theirs)
    folded = fold.folded_copy(theirs)
    assert folded is not None and graph_bns(folded) == 0
    assert_same_function(theirs, folded, torch.rand(32, 3, 32, 32), rtol=1e-5)
    assert_unchanged(theirs, before)


def test_a_changed_tensor_attribute_rebuilds_the_copy_but_not_the_log_fingerprint():
    """Cohen's NormalizeLayer holds its constants as plain tensor attributes: the copy must
    follow them; the logs' model_sha256 keeps its old definition (parameters and buffers)."""
    class Normalize(nn.Module):
        def __init__(self):
            super().__init__()
            self.means = torch.tensor([0.5])

        def forward(self, x):
            return x - self.means.view(1, -1, 1, 1)

    model = randomise_batchnorm(nn.Sequential(Normalize(), nn.Conv2d(1, 4, 3),
                                              nn.BatchNorm2d(4), nn.Flatten()))
    log_sha = fingerprint(model)
    first = fold.folded_copy(model)
    model[0].means.fill_(0.25)
    assert fingerprint(model) == log_sha
    second = fold.folded_copy(model)
    assert second is not first
    assert_same_function(model, second, torch.rand(8, 1, 5, 5))


def test_weights_built_to_cancel_make_folded_and_unfolded_disagree():
    """What docs/cohen.md warns of (untrusted weights, unfolded network deployed): a
    convolution output that nearly cancels BatchNorm's running mean, times a large scale, is
    rounded differently by the two networks, far beyond the probe tolerance. With
    fold_bn=False the engine samples the model's own forward, so the advice holds."""
    conv, bn = nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.BatchNorm2d(1)
    with torch.no_grad():
        conv.weight.fill_(1e4)          # a 3x3 patch of ones gives 9e4 ...
        bn.running_mean.fill_(9e4)      # ... which the running mean cancels
        bn.running_var.fill_(1e-5)
        bn.weight.fill_(1e3)
    net = nn.Sequential(conv, bn, nn.Flatten(), nn.Linear(784, 2)).eval()
    with torch.no_grad():
        net[3].weight.zero_()
        net[3].weight[0, 14 * 28 + 14] = 1.0
    x = 1 + 1e-7 * torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    folded = fold.fold_batchnorm(net)
    with torch.no_grad():
        gap = (net(x) - folded(x)).abs().max()
    assert gap > 100, gap  # measured about 1e3 on logits of about 1e3
