"""Importing dualrs_fast from a git checkout (the repo root on sys.path: ``python -m
dualrs_fast`` or a script run there) instead of from the installed package.

The installed package holds ``kernels/`` as ``dualrs_fast.kernels`` and the compiled
extension ``_cbounds``; a checkout keeps ``kernels/`` at the top level and the extension in
``build/cmake`` (built by ``make venv``). ``wire_checkout`` registers both under the package
name, so the checkout runs its own code with the extension built from its own ``csrc/``.
Nothing here imports torch.
"""
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

_BUILD_DIR = Path("build") / "cmake"  # the Makefile's -Cbuild-dir


def wire_checkout(package_dir: Path) -> None:
    """No-op for an installed package; for a checkout, register its kernels/ and built
    extension, or raise an ImportError that says what to run."""
    if (package_dir / "kernels").is_dir():
        return  # the installed package (or a wheel's tree): complete as it is
    repo = package_dir.parent
    kernels = repo / "kernels" / "__init__.py"
    if not kernels.is_file():
        raise ImportError(f"{package_dir} lacks its kernels: reinstall dualrs_fast "
                          "(pip install .) or run `make venv` in a full checkout")
    extension = _built_extension(repo / _BUILD_DIR)
    if extension is None:
        raise ImportError(f"dualrs_fast is imported from the checkout {repo}, whose C++ extension "
                          f"is not built for this Python ({sys.version.split()[0]}): run `make "
                          f"venv` there and use {repo / '.venv' / 'bin' / 'python'}")
    _register("dualrs_fast.kernels", kernels, search=[str(kernels.parent)])
    _register("dualrs_fast._cbounds", extension)


def _built_extension(build_dir: Path):
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:  # this interpreter's ABI tags
        candidate = build_dir / f"_cbounds{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _register(name: str, path: Path, search=None) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path,
                                                  submodule_search_locations=search)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
