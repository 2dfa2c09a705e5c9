"""Datasets a user brings: CIFAR-10's python batches and .npz arrays, read without running code.

- ``cifar10:DIR`` (test split) / ``cifar10-train:DIR``: the "CIFAR-10 python version"
  (``cifar-10-batches-py/{data_batch_1..5, test_batch}``, as torchvision and Cohen et al.'s
  ``datasets.py`` keep it; DIR may be that folder or its parent). Each batch is a Python 2
  pickle of ``{'data': uint8 (10000, 3072) rows of R, G, B 32x32 planes, 'labels': [int]}``.
  A pickle can name any function to call while it loads, so these load with an unpickler that
  knows only numpy's array reconstruction (``ndarray``, ``dtype``, ``_reconstruct``, and
  ``_codecs.encode`` for bytes in Python 3's protocol-2 pickles): a pickle
  naming anything else (code) is refused before anything is called.
- ``npz:PATH``: arrays ``x`` (N, C, H, W) and integer ``y`` (N,) read with
  ``allow_pickle=False``; uint8 pixels are divided by 255, and (N, H, W, C) images with C in
  (1, 3) and H, W > 3 are transposed to (N, C, H, W).

Both return pixels in [0, 1] as float32 (N, C, H, W) and int64 labels.
"""
from __future__ import annotations

import codecs
import pickle
from pathlib import Path

import numpy as np
import torch

PREFIXES = ("cifar10:", "cifar10-train:", "npz:")
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"test": ("test_batch",),
                 "train": tuple(f"data_batch_{k}" for k in range(1, 6))}


class UnsafePickleError(pickle.UnpicklingError):
    """A dataset pickle names something other than numpy's array reconstruction."""


def _numpy_reconstruct():
    try:  # numpy >= 2 moved it; pickles written by numpy 1 (and CIFAR-10's) name numpy.core
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # pragma: no cover - numpy 1
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
            # Python 3's protocol-2 pickles write bytes as _codecs.encode(text, 'latin1')
            ("_codecs", "encode"): codecs.encode}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"it names {module}.{name}, but a dataset batch holds numpy "
                                    "arrays only: refused (unpickling it could run code)") from None

    def persistent_load(self, pid):
        raise UnsafePickleError("it holds persistent references: refused")


def load_pickle_of_arrays(path: Path):
    """A pickle holding plain containers and numpy arrays (Python 2 strings as latin-1)."""
    with open(path, "rb") as f:
        try:
            return _ArraysOnlyUnpickler(f, encoding="latin1").load()
        except UnsafePickleError as exc:
            raise ValueError(f"{path}: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - truncated or foreign files fail in many ways
            raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None


def _cifar10_folder(directory: Path) -> Path:
    for folder in (directory, directory / CIFAR10_FOLDER):
        if (folder / "test_batch").is_file() or (folder / "data_batch_1").is_file():
            return folder
    raise ValueError(f"{directory}: no CIFAR-10 python batches (test_batch, data_batch_1..5) "
                     f"there or in {CIFAR10_FOLDER}/ under it")


def _cifar10_batch(path: Path):
    batch = load_pickle_of_arrays(path)
    data = batch.get("data") if isinstance(batch, dict) else None
    labels = batch.get("labels") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise ValueError(f"{path}: 'data' must be uint8 rows of 3072 pixels, got "
                         f"{getattr(data, 'dtype', type(data).__name__)} "
                         f"{getattr(data, 'shape', '')}")
    if not (isinstance(labels, list) and len(labels) == data.shape[0]
            and all(type(v) is int and 0 <= v < 10 for v in labels)):
        raise ValueError(f"{path}: 'labels' must be one class 0..9 per image")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(directory, split: str = "test"):
    """-> (x float32 (N, 3, 32, 32) in [0, 1], y int64 (N,)) from CIFAR-10's python batches."""
    if split not in CIFAR10_FILES:
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    folder = _cifar10_folder(Path(directory))
    missing = [name for name in CIFAR10_FILES[split] if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: the {split} split needs {', '.join(missing)}")
    parts = [_cifar10_batch(folder / name) for name in CIFAR10_FILES[split]]
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(x.astype(np.float32) / np.float32(255)), torch.from_numpy(y)


def load_npz(path):
    """-> (x float (N, C, H, W) or (N, ...), y (N,)) from an .npz with arrays x and y."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such .npz file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in ("x", "y") if k in f.files}
            names = sorted(f.files)
    except Exception as exc:  # noqa: BLE001 - object arrays, a zip that is no npz, truncation
        raise ValueError(f"{path}: not a readable .npz of plain arrays ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if len(arrays) != 2:
        raise ValueError(f"{path}: an .npz dataset needs arrays 'x' and 'y', found {names}")
    x, y = arrays["x"], arrays["y"]
    if x.dtype == np.uint8:
        x = x.astype(np.float32) / np.float32(255)
    if x.ndim == 4 and x.shape[3] in (1, 3) and x.shape[1] > 3 and x.shape[2] > 3:
        x = x.transpose(0, 3, 1, 2)  # (N, H, W, C) as most CIFAR-10 .npz files store it
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y))


def is_external(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIXES)


def load(spec: str):
    """``cifar10:DIR``, ``cifar10-train:DIR`` or ``npz:PATH`` -> (x, y)."""
    kind, _, where = spec.partition(":")
    if not where:
        raise ValueError(f"dataset {spec!r} names no path after '{kind}:'")
    if kind == "npz":
        return load_npz(where)
    return load_cifar10(where, "train" if kind == "cifar10-train" else "test")
