"""Cohen et al.'s checkpoints and CIFAR-10 folders (issue 21): their architectures under their
key names, their checkpoint format loaded as weights only, CIFAR-10's python batches through a
restricted unpickler, npz arrays, and the whole path through `dualrs certify`.

Tests marked "Cohen's code" compare with locuslab/smoothing itself; they need a checkout
named by COHEN_SMOOTHING_DIR (see bench/cohen_codebase.py) and skip without one."""
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dualrs_fast import cohen_archs, external_data
from dualrs_fast.loading import LoadError, load_dataset, load_model
from dualrs_fast.models import build_model

from cifar_files import write_cifar10
from cli_helpers import dualrs, rows

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import cohen_codebase  # noqa: E402

needs_cohen = pytest.mark.skipif(not os.environ.get(cohen_codebase.ENV),
                                 reason=f"Cohen's code: set {cohen_codebase.ENV} to a "
                                        "locuslab/smoothing checkout")


def cohen_snapshot(path, arch="cifar_resnet20", legacy=True, seed=0):
    """A training snapshot as Cohen et al.'s train.py writes it (torch 1.x: legacy format)."""
    torch.manual_seed(seed)
    model = build_model(arch)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    torch.save({"epoch": 90, "arch": arch, "state_dict": model.state_dict(),
                "optimizer": optimizer.state_dict()}, path,
               _use_new_zipfile_serialization=not legacy)
    return model.eval()


def test_cifar_resnet_keys_are_cohens():
    keys = build_model("cifar_resnet110").state_dict()
    # Sequential(NormalizeLayer, ResNet): the normalisation has no state, all keys start '1.'
    assert all(k.startswith("1.") for k in keys)
    for key in ("1.conv1.weight", "1.bn1.running_var", "1.bn1.num_batches_tracked",
                "1.layer1.17.conv2.weight", "1.layer2.0.downsample.0.weight",
                "1.layer3.0.downsample.1.running_mean", "1.fc.weight", "1.fc.bias"):
        assert key in keys
    assert "1.layer1.18.conv1.weight" not in keys and "1.layer1.0.downsample.0.weight" not in keys
    convs = sum(1 for k in keys if k.endswith("conv1.weight") or k.endswith("conv2.weight"))
    assert convs == 1 + 2 * 54  # the stem + two per basic block: 110 = 6 * 18 + 2 layers
    r20 = build_model("cifar_resnet20")
    assert sum(p.numel() for p in r20.parameters()) == 272_474  # He et al.'s "0.27M" + projections


@pytest.mark.parametrize("arch,side", [("cifar_resnet20", 32), ("cifar_resnet110", 32),
                                       ("resnet50", 64)])
def test_cohen_architectures_are_stateless_row_independent_functions(arch, side):
    """As test_trust_boundary checks for the other registered architectures: a row's logits do
    not depend on the rest of its batch or on earlier calls, and a call changes no state."""
    from dualrs_fast.loading import fingerprint
    torch.manual_seed(0)
    model = build_model(arch).eval()
    before = fingerprint(model)
    x = torch.rand(4, 3, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        alone = torch.cat([model(x[k:k + 1]) for k in range(len(x))])
        scale = float(alone.abs().max())  # float rounding differs with the batch size
        for _ in range(2):
            torch.testing.assert_close(model(x), alone, rtol=0, atol=1e-3 * scale)
    assert fingerprint(model) == before


def test_resnet50_has_torchvisions_keys_under_data_parallel():
    model = build_model("resnet50")
    keys = model.state_dict()
    assert all(k.startswith("1.module.") for k in keys)
    assert "1.module.layer4.2.bn3.running_var" in keys and "1.module.layer1.0.downsample.0.weight" in keys
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    with torch.no_grad():
        assert model.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 1000)


@needs_cohen
@pytest.mark.parametrize("arch", ["cifar_resnet20", "cifar_resnet110"])
def test_cohens_architectures_match_ours_weight_for_weight(arch):
    """Their get_architecture's model and ours: same keys and shapes, and with their weights
    loaded into ours, the same logits."""
    with cohen_codebase.cohen_imports():
        from architectures import get_architecture
        torch.manual_seed(1)
        theirs = get_architecture(arch, "cifar10").eval()
    ours = build_model(arch).eval()
    expected = {k: v.shape for k, v in theirs.state_dict().items()}
    assert {k: v.shape for k, v in ours.state_dict().items()} == expected
    ours.load_state_dict(theirs.state_dict())
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("legacy", [True, False], ids=["torch1-format", "zip-format"])
def test_a_cohen_snapshot_loads_as_weights_with_the_arch_from_the_file(tmp_path, legacy):
    path = tmp_path / "checkpoint.pth.tar"
    model = cohen_snapshot(path, legacy=legacy)
    loaded = load_model(path)  # no --arch: the file names it
    assert type(loaded) is cohen_archs.CifarResNet20 and not loaded.training
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    with pytest.raises(LoadError, match="is a cifar_resnet20 checkpoint but --arch resnet20"):
        load_model(path, arch="resnet20")


def test_a_snapshot_carrying_code_is_refused(tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.touch, (marker,))

    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"arch": "cifar_resnet20", "state_dict": build_model("cifar_resnet20").state_dict(),
                "optimizer": Payload()}, path)
    with pytest.raises(LoadError, match="pickled Python objects"):
        load_model(path)
    assert not marker.exists()


def test_cifar10_python_batches_read_exactly(tmp_path):
    written = write_cifar10(tmp_path, images_per_batch=3)
    for spec_root in (tmp_path, tmp_path / "cifar-10-batches-py"):
        x, y = external_data.load_cifar10(spec_root, "test")
        data, labels = written["test_batch"]
        assert x.dtype == torch.float32 and x.shape == (3, 3, 32, 32)
        # row layout: 1024 red, 1024 green, 1024 blue values, each plane row-major
        pixel = data[1, 2 * 1024 + 5 * 32 + 7]
        assert float(x[1, 2, 5, 7]) == np.float32(pixel) / np.float32(255)
        assert y.tolist() == labels
    x, y = external_data.load_cifar10(tmp_path, "train")
    assert x.shape == (15, 3, 32, 32)
    assert y.tolist() == sum((written[f"data_batch_{k}"][1] for k in range(1, 6)), [])


def test_a_cifar10_pickle_carrying_code_is_refused(tmp_path):
    write_cifar10(tmp_path, images_per_batch=2)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.makedirs, (str(marker),))

    batch = tmp_path / "cifar-10-batches-py" / "test_batch"
    batch.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.uint8), "labels": [0],
                                    "x": Payload()}, protocol=2))
    with pytest.raises(ValueError, match="names os.makedirs.*refused"):
        external_data.load_cifar10(tmp_path)
    assert not marker.exists()
    batch.write_bytes(pickle.dumps({"data": np.zeros((1, 3072), np.float32), "labels": [0]}))
    with pytest.raises(ValueError, match="'data' must be uint8 rows of 3072"):
        external_data.load_cifar10(tmp_path)
    with pytest.raises(ValueError, match="no CIFAR-10 python batches"):
        external_data.load_cifar10(tmp_path / "elsewhere")


def test_npz_datasets(tmp_path):
    rng = np.random.default_rng(0)
    hwc = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    np.savez(tmp_path / "cifar.npz", x=hwc, y=np.arange(5))
    data = load_dataset(f"npz:{tmp_path / 'cifar.npz'}")
    assert data.x.shape == (5, 3, 32, 32) and data.y.tolist() == [0, 1, 2, 3, 4]
    assert float(data.x[2, 1, 4, 6]) == np.float32(hwc[2, 4, 6, 1]) / np.float32(255)
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 2), y=np.arange(2))
    with pytest.raises(LoadError, match="not a readable .npz of plain arrays"):
        load_dataset(f"npz:{tmp_path / 'objects.npz'}")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(LoadError, match="needs arrays 'x' and 'y'"):
        load_dataset(f"npz:{tmp_path / 'nolabels.npz'}")
    with pytest.raises(LoadError, match="names no path"):
        load_dataset("cifar10:")


def test_a_cohen_checkpoint_certifies_through_the_command_line(tmp_path, capsys):
    write_cifar10(tmp_path / "data", images_per_batch=3)
    model = cohen_snapshot(tmp_path / "checkpoint.pth.tar", arch="cifar_resnet20")
    log = tmp_path / "run.tsv"
    code, out, err = dualrs(capsys, "certify", "--model", tmp_path / "checkpoint.pth.tar",
                            "--dataset", f"cifar10:{tmp_path / 'data'}", "--sigma", 0.25,
                            "--n0", 10, "--n", 40, "--max", 2, "--seed", 0, "--out", log)
    assert code == 0, err
    table = rows(log)
    assert table[0][:5] == ["idx", "label", "predict", "radius", "correct"]
    assert [r[0] for r in table[1:]] == ["0", "1"]
    # the same certificates from the API on the same weights, noise keys = dataset indices
    import dualrs_fast as drs
    x, y = external_data.load_cifar10(tmp_path / "data")
    r = drs.certify(model, x[:2], sigma=0.25, n0=10, n=40, seed=0, ids=[0, 1])
    assert [int(r_[2]) for r_ in table[1:]] == r.prediction.tolist()
