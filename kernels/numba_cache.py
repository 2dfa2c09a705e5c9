"""Numba's on-disk cache, kept in step with the kernels' sources.

Numba invalidates a cached kernel only when the kernel's own file changes, but our kernels
inline helpers from other files (``noise_pair_numba`` from ``noise_numba_simd``, which takes
Philox from ``noise_numba``). After an edit or an upgrade that changes only a helper's file,
a stale cache would silently compute the old noise. So the caches are dropped whenever any
kernel source changes: a digest of all of them is stored beside the cache files.
"""
import hashlib
from pathlib import Path

STAMP = "kernel_sources.sha256"


def sources_digest(source_dir: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(source_dir).glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def drop_stale_caches(source_dir: Path, cache_dir: Path) -> bool:
    """Delete numba's cache files (*.nbi, *.nbc) in ``cache_dir`` unless they were written for
    the current sources of ``source_dir``; True if any were dropped. Best effort: a read-only
    install has no cache to go stale (numba then caches elsewhere or not at all)."""
    digest = sources_digest(source_dir)
    stamp = Path(cache_dir) / STAMP
    try:
        if stamp.is_file() and stamp.read_text().strip() == digest:
            return False
        stale = [p for pattern in ("*.nbi", "*.nbc") for p in Path(cache_dir).glob(pattern)]
        for path in stale:
            path.unlink(missing_ok=True)
        Path(cache_dir).mkdir(exist_ok=True)
        stamp.write_text(digest + "\n")
        return bool(stale)
    except OSError:
        return False
