"""Numba's cache is dropped when any kernel source changes (kernels/numba_cache.py): numba
itself only notices changes to a kernel's own file, not to the helpers it inlines."""
import subprocess
import sys
import textwrap

from dualrs_fast.kernels.numba_cache import STAMP, drop_stale_caches


def _files(tmp_path):
    src, cache = tmp_path / "src", tmp_path / "src" / "__pycache__"
    cache.mkdir(parents=True)
    (src / "helper.py").write_text("ONE = 1\n")
    (src / "kernel.py").write_text("from .helper import ONE\n")
    return src, cache


def test_caches_are_kept_while_sources_are_unchanged_and_dropped_when_a_helper_changes(tmp_path):
    src, cache = _files(tmp_path)
    (cache / "kernel.f-1.py311.nbi").write_bytes(b"old")
    assert drop_stale_caches(src, cache)  # no stamp yet: written for unknown sources
    assert not (cache / "kernel.f-1.py311.nbi").exists() and (cache / STAMP).is_file()
    (cache / "kernel.f-1.py311.nbi").write_bytes(b"index")
    (cache / "kernel.f-1.py311.0.nbc").write_bytes(b"code")
    assert not drop_stale_caches(src, cache)
    assert (cache / "kernel.f-1.py311.nbi").exists() and (cache / "kernel.f-1.py311.0.nbc").exists()
    (src / "helper.py").write_text("ONE = 2\n")  # only the helper's file changes
    assert drop_stale_caches(src, cache)
    assert list(cache.glob("*.nb*")) == []
    (cache / "other.txt").write_text("kept")
    assert not drop_stale_caches(src, cache) and (cache / "other.txt").exists()


def test_a_cached_kernel_sees_its_helpers_change(tmp_path):
    # the failure this guards against, end to end with numba: kernel.py is unchanged
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent("""
        from pathlib import Path
        from dualrs_fast.kernels.numba_cache import drop_stale_caches
        drop_stale_caches(Path(__file__).parent, Path(__file__).parent / "__pycache__")
    """))
    (pkg / "kernel.py").write_text(textwrap.dedent("""
        import numba
        from .helper import value
        @numba.njit(cache=True)
        def f():
            return value()
    """))
    run = [sys.executable, "-c", "from pkg.kernel import f; print(f())"]
    for expected in ("1", "2"):
        (pkg / "helper.py").write_text(
            f"import numba\n@numba.njit(inline='always')\ndef value():\n    return {expected}\n")
        out = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, check=True,
                             env={"PYTHONPATH": f"{tmp_path}:{':'.join(sys.path)}"})
        assert out.stdout.strip() == expected
