"""Run Cohen et al.'s own code (locuslab/smoothing) from a local checkout: never vendored here.

Set COHEN_SMOOTHING_DIR to a checkout of https://github.com/locuslab/smoothing (78a4d94) whose
``.cuda()`` / ``device='cuda'`` were replaced by ``.cpu()`` / ``device='cpu'``, e.g.::

    git clone https://github.com/locuslab/smoothing /work/ext/smoothing
    sed -i "s/\\.cuda()/.cpu()/g; s/device='cuda'/device='cpu'/g" /work/ext/smoothing/code/*.py

Tests and benchmarks that need it skip without it. Their code imports three things this
machine lacks; ``cohen_imports`` stands in for them while it runs, without editing their files:
``setGPU`` (a GPU picker: nothing to do on a CPU), torchvision (does not import beside the
pinned torch; ``datasets.CIFAR10`` reads ``ROOT/cifar-10-batches-py`` with our restricted
loader, ``ToTensor`` is the identity on those already-converted images, the training
augmentations are refused) and ``scipy.stats.binom_test`` (removed in scipy 1.12; Cohen's
predict calls it: the same p-value from ``binomtest``).
"""
import contextlib
import os
import runpy
import sys
import types
from pathlib import Path

import scipy.stats

ENV = "COHEN_SMOOTHING_DIR"


def code_dir():
    """The checkout's code/ folder, or None where COHEN_SMOOTHING_DIR is unset."""
    root = os.environ.get(ENV)
    if not root:
        return None
    code = Path(root) / "code"
    if not (code / "core.py").is_file():
        raise FileNotFoundError(f"{ENV}={root} has no code/core.py: not a locuslab/smoothing checkout")
    return code


def _torchvision_stand_in() -> dict:
    from dualrs_fast.cohen_archs import ImageNetResNet50Body
    from dualrs_fast.external_data import load_cifar10

    class CIFAR10:
        def __init__(self, root, train=True, download=False, transform=None):
            self.x, self.y = load_cifar10(Path(root), "train" if train else "test")
            self.transform = transform

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x = self.x[i]
            return (self.transform(x) if self.transform else x), int(self.y[i])

    def refused(*args, **kwargs):
        raise NotImplementedError("training augmentations are not stood in for")

    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor = lambda: (lambda x: x)
    transforms.Compose = lambda steps: (lambda x: _apply(steps, x))
    for name in ("RandomCrop", "RandomHorizontalFlip", "RandomSizedCrop", "Scale", "CenterCrop"):
        setattr(transforms, name, refused)
    datasets = types.ModuleType("torchvision.datasets")
    datasets.CIFAR10 = CIFAR10
    datasets.ImageFolder = refused
    resnet = types.ModuleType("torchvision.models.resnet")
    resnet.resnet50 = lambda pretrained=False: ImageNetResNet50Body()
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms, torchvision.datasets = transforms, datasets
    models = types.ModuleType("torchvision.models")
    models.resnet = resnet
    return {"torchvision": torchvision, "torchvision.transforms": transforms,
            "torchvision.datasets": datasets, "torchvision.models": models,
            "torchvision.models.resnet": resnet, "setGPU": types.ModuleType("setGPU")}


def _apply(steps, x):
    for step in steps:
        x = step(x)
    return x


def _binom_test(x, n=None, p=0.5, alternative="two-sided"):
    return scipy.stats.binomtest(int(x), int(n), p, alternative=alternative).pvalue


_THEIRS = ("core", "certify", "predict", "datasets", "architectures", "archs",
           "archs.cifar_resnet", "analyze", "train_utils")


@contextlib.contextmanager
def cohen_imports(core=None):
    """Their code/ on sys.path with the stand-ins; ``core``: a module to import as their
    ``core`` (e.g. one whose Smooth is compat.Smooth: "only the import changed")."""
    code = code_dir()
    if code is None:
        raise RuntimeError(f"set {ENV} to a locuslab/smoothing checkout")
    saved = {k: sys.modules.get(k) for k in (*_THEIRS, *_torchvision_stand_in())}
    had_binom = hasattr(scipy.stats, "binom_test")
    sys.modules.update(_torchvision_stand_in())
    for name in _THEIRS:
        sys.modules.pop(name, None)
    if core is not None:
        sys.modules["core"] = core
    if not had_binom:
        scipy.stats.binom_test = _binom_test
    sys.path.insert(0, str(code))
    try:
        yield code
    finally:
        sys.path.remove(str(code))
        if not had_binom:
            del scipy.stats.binom_test
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def compat_core():
    """A module standing in for their core.py: ``from core import Smooth`` gets compat.Smooth."""
    from dualrs_fast.compat import Smooth
    core = types.ModuleType("core")
    core.Smooth = Smooth
    return core


def run_script(script: str, argv, core=None, cwd=None) -> None:
    """Run their code/<script> as __main__ with ``argv`` (e.g. certify.py's arguments)."""
    old_argv, old_cwd = sys.argv, os.getcwd()
    with cohen_imports(core) as code:
        sys.argv = [str(code / script), *map(str, argv)]
        try:
            if cwd is not None:
                os.chdir(cwd)
            runpy.run_path(str(code / script), run_name="__main__")
        finally:
            sys.argv = old_argv
            os.chdir(old_cwd)
