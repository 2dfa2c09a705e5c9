"""Small files in exactly CIFAR-10's "python version" format, for tests.

The real batches were written by Python 2's cPickle (protocol 2) from numpy 1: a dict of
Python 2 ``str`` keys (SHORT_BINSTRING opcodes), the images as one uint8 (N, 3072) array
rebuilt by ``numpy.core.multiarray._reconstruct`` + ``numpy.ndarray`` + ``numpy.dtype`` with
its bytes in a BINSTRING, the labels as a list of small ints. Python 3's pickle cannot write
Python 2 strings, so this writes those opcodes itself (``pickletools.dis`` reads the result).
"""
import struct
from pathlib import Path

import numpy as np


def _str(s) -> bytes:
    data = s if isinstance(s, bytes) else s.encode("latin1")
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _int(v: int) -> bytes:
    if 0 <= v < 256:
        return b"K" + bytes([v])
    if 0 <= v < 65536:
        return b"M" + struct.pack("<H", v)
    return b"J" + struct.pack("<i", v)


def _uint8_array(a: np.ndarray) -> bytes:
    assert a.dtype == np.uint8 and a.ndim == 2
    reconstruct = b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + \
        _int(0) + b"\x85" + _str("b") + b"\x87R"
    dtype = b"cnumpy\ndtype\n" + _str("u1") + _int(0) + _int(1) + b"\x87R" + \
        b"(" + _int(3) + _str("|") + b"NNN" + _int(-1) + _int(-1) + _int(0) + b"tb"
    shape = _int(a.shape[0]) + _int(a.shape[1]) + b"\x86"
    state = b"(" + _int(1) + shape + dtype + b"\x89" + _str(a.tobytes()) + b"tb"
    return reconstruct + state


def py2_cifar_batch(data: np.ndarray, labels, batch_label: str) -> bytes:
    out = b"\x80\x02}("
    out += _str("data") + _uint8_array(data)
    out += _str("labels") + b"](" + b"".join(_int(int(v)) for v in labels) + b"e"
    out += _str("batch_label") + _str(batch_label)
    out += _str("filenames") + b"](" + b"".join(_str(f"img_{k}.png") for k in
                                               range(len(labels))) + b"e"
    return out + b"u."


def write_cifar10(root: Path, images_per_batch: int = 4, seed: int = 0):
    """root/cifar-10-batches-py/{data_batch_1..5, test_batch}; -> {file: (data, labels)}."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    written = {}
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (images_per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, images_per_batch).tolist()
        label = "testing batch 1 of 1" if name == "test_batch" else f"training batch {name[-1]} of 5"
        (folder / name).write_bytes(py2_cifar_batch(data, labels, label))
        written[name] = (data, labels)
    return written
