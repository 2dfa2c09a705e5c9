"""Small classifiers, a checkpoint format and the committed default weights.

All models take inputs in *pixel space* ``[0, 1]`` of shape ``(N, C, H, W)``
and normalise internally (``(x - mean) / std`` as the first layer), as in
Cohen et al.: randomized-smoothing noise is added in pixel space and the
classifier sees ``normalise(x + sigma * eps)``. They return logits ``(N, K)``.

Checkpoints are plain ``torch.save`` dictionaries loadable with
``weights_only=True``::

    {"arch": "small_cnn", "kwargs": {...constructor kwargs...},
     "state_dict": {...}, "meta": {...}}
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .cohen_archs import COHEN_ARCHS

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "Normalize",
    "TinyMLP",
    "SmallCNN",
    "SigmaConditionedCNN",
    "ResNet20",
    "ClassGroupEstimator",
    "MODEL_REGISTRY",
    "build_model",
    "save_checkpoint",
    "load_checkpoint",
    "WEIGHTS_DIR",
    "DATASET_STATS",
    "weights_dir",
    "default_weights_path",
    "available_default_sigmas",
    "load_default_classifier",
    "ESTIMATOR_ARCHS",
    "DEFAULT_ESTIMATOR_ARCH",
    "estimator_weights_path",
    "DEFAULT_ESTIMATOR_PATH",
    "load_default_estimator",
    "load_default_dual",
]

#: Per-channel statistics of MNIST in [0, 1] pixel space (the usual constants).
MNIST_MEAN: tuple[float, ...] = (0.1307,)
MNIST_STD: tuple[float, ...] = (0.3081,)
#: (mean, std) the models of each dataset normalise with (Fashion-MNIST: its 60,000 training
#: images in [0, 1]).
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist5k": (MNIST_MEAN, MNIST_STD),
    "mnist": (MNIST_MEAN, MNIST_STD),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}

#: Directory of the committed weights (installed with the package).
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
_DEFAULT_ARCH = "small_cnn"
_CHECKPOINT_KEYS = ("arch", "kwargs", "state_dict", "meta")


def _channel_stats(values: float | Sequence[float], channels: int, name: str) -> list[float]:
    if isinstance(values, (int, float)):
        values = [float(values)] * channels
    values = [float(v) for v in values]
    if len(values) == 1 and channels > 1:
        values = values * channels
    if len(values) != channels:
        raise ValueError(f"{name} has {len(values)} entries but the model has {channels} input channels")
    return values


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; the statistics are (persistent) buffers."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if any(s <= 0 for s in std):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class TinyMLP(nn.Module):
    """Normalise -> flatten -> Linear(in, hidden) -> ReLU -> Linear(hidden, K)."""

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        hidden: int = 256,
        mean: float | Sequence[float] = MNIST_MEAN,
        std: float | Sequence[float] = MNIST_STD,
    ):
        super().__init__()
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) != 3:
            raise ValueError(f"in_shape must be (C, H, W), got {in_shape}")
        mean = _channel_stats(mean, in_shape[0], "mean")
        std = _channel_stats(std, in_shape[0], "std")
        self.config = dict(in_shape=list(in_shape), num_classes=int(num_classes), hidden=int(hidden),
                           mean=mean, std=std)
        self.in_shape = in_shape
        self.normalize = Normalize(mean, std)
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(in_shape), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.in_shape:
            raise ValueError(f"TinyMLP expects inputs (N, {', '.join(map(str, self.in_shape))}), got {tuple(x.shape)}")
        return self.net(self.normalize(x))


class SmallCNN(nn.Module):
    """conv(C->16, 3) - ReLU - maxpool2 - conv(16->32, 3) - ReLU - maxpool2 - FC(32*s*s -> 128) - ReLU - FC(128 -> K).

    ``input_size`` is the (square) image side; the default 28 gives ``s = 7``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        input_size: int = 28,
        hidden: int = 128,
        mean: float | Sequence[float] = MNIST_MEAN,
        std: float | Sequence[float] = MNIST_STD,
    ):
        super().__init__()
        mean = _channel_stats(mean, in_channels, "mean")
        std = _channel_stats(std, in_channels, "std")
        self.config = dict(in_channels=int(in_channels), num_classes=int(num_classes),
                           input_size=int(input_size), hidden=int(hidden), mean=mean, std=std)
        self.input_size = int(input_size)
        side = self.input_size // 2 // 2
        if side < 1:
            raise ValueError(f"input_size must be >= 4, got {input_size}")
        self.normalize = Normalize(mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * side * side, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(
                f"SmallCNN(input_size={self.input_size}) expects (N, C, {self.input_size}, {self.input_size}), "
                f"got {tuple(x.shape)}"
            )
        return self.classifier(self.features(self.normalize(x)))


class SigmaConditionedCNN(SmallCNN):
    """A noise-conditioned classifier ``model(x, sigma)``, one model for every noise level: a
    SmallCNN over the image plus one constant channel holding each row's sigma (``sigma`` a
    float or a tensor (N,)). It is a row-independent function of (x, sigma), so Dual RS can
    send inputs routed to different levels through one forward pass."""

    def __init__(self, in_channels: int = 1, mean: float | Sequence[float] = MNIST_MEAN,
                 std: float | Sequence[float] = MNIST_STD, **kwargs: Any):
        mean = _channel_stats(mean, in_channels, "mean")
        std = _channel_stats(std, in_channels, "std")
        # the sigma channel passes through the normalisation unchanged (mean 0, std 1)
        super().__init__(in_channels + 1, mean=mean + [0.0], std=std + [1.0], **kwargs)
        self.config.update(in_channels=int(in_channels), mean=mean, std=std)

    def forward(self, x: torch.Tensor, sigma) -> torch.Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1)
        if sigma.numel() == 1:
            sigma = sigma.expand(x.shape[0])
        if x.dim() != 4 or sigma.shape[0] != x.shape[0]:
            raise ValueError(f"SigmaConditionedCNN expects x (N, C, H, W) and sigma (N,) or a "
                             f"number, got x {tuple(x.shape)} and sigma {tuple(sigma.shape)}")
        channel = sigma.view(-1, 1, 1, 1).expand(-1, 1, x.shape[2], x.shape[3])
        return super().forward(torch.cat([x, channel], 1))


class _BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        if stride != 1 or in_planes != planes:
            # 1x1 projection shortcut ("option B").
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    """CIFAR-style ResNet-20: conv3x3(16) + 3 stages x 3 basic blocks (16/32/64 channels,
    strides 1/2/2) + global average pooling + FC. Works for any input size >= 4."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        mean: float | Sequence[float] = MNIST_MEAN,
        std: float | Sequence[float] = MNIST_STD,
    ):
        super().__init__()
        mean = _channel_stats(mean, in_channels, "mean")
        std = _channel_stats(std, in_channels, "std")
        self.config = dict(in_channels=int(in_channels), num_classes=int(num_classes), mean=mean, std=std)
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_planes = 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for b in range(3):
                blocks.append(_BasicBlock(in_planes, planes, stride if b == 0 else 1))
                in_planes = planes
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(out), 1))


class ClassGroupEstimator(nn.Module):
    """A Dual RS variance estimator that routes by class: a base classifier (the largest
    noise level's expert, trained under that noise) and a fixed map ``groups[c]`` = the level
    class ``c`` goes to. Level logits are log of the class probabilities summed per level: its
    vote on a noisy sample is the level holding most of the base classifier's probability mass
    (the level of its predicted class wherever it is confident).

    Why: an estimator's R_ve is bounded by the distance to its own routing boundary. This
    router's boundary between levels is a class boundary of a classifier trained at the
    estimator's noise, so its smoothed votes are as concentrated as that classifier's and
    R_ve is about as large as the 1.0 expert's own radius; routers that split inputs by
    confidence put their boundary next to the input (``scripts/train_dual_default.py``
    measures both).
    """

    def __init__(self, base_arch: str = "small_cnn", base_kwargs: Mapping[str, Any] | None = None,
                 groups: Sequence[int] = (), num_levels: int = 1):
        super().__init__()
        if base_arch == "class_group":
            raise ValueError("base_arch cannot be class_group itself")
        base_kwargs = dict(base_kwargs or {})
        self.base = build_model(base_arch, **base_kwargs)
        groups = [int(g) for g in groups]
        num_levels = int(num_levels)
        classes = getattr(self.base, "config", {}).get("num_classes", len(groups))
        if len(groups) != classes:
            raise ValueError(f"groups needs one level per class of the base model ({classes}), "
                             f"got {len(groups)}")
        if num_levels < 1 or any(not 0 <= g < num_levels for g in groups):
            raise ValueError(f"groups must be levels in 0..{num_levels - 1}, got {groups}")
        self.config = dict(base_arch=base_arch, base_kwargs=base_kwargs, groups=groups,
                           num_levels=num_levels)
        self.register_buffer("membership", nn.functional.one_hot(
            torch.tensor(groups, dtype=torch.int64), num_levels).float(), persistent=False)

    @property
    def derived_from(self) -> nn.Module:
        """The expert this estimator's level vote is a function of (``dual.derivation``)."""
        return self.base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.levels_from_logits(self.base(x))

    def levels_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Level logits from the base classifier's logits (Dual RS runs the base once for both
        votes where the base is the expert at the estimator's sigma)."""
        probs = torch.softmax(logits, dim=1)
        membership = self.membership.to(device=probs.device, dtype=probs.dtype)
        # log of a level's probability mass; an empty level gets the smallest normal float
        return (probs @ membership).clamp_min(torch.finfo(probs.dtype).tiny).log()


MODEL_REGISTRY: dict[str, type[nn.Module]] = {
    "tiny_mlp": TinyMLP,
    "small_cnn": SmallCNN,
    "sigma_cnn": SigmaConditionedCNN,
    "resnet20": ResNet20,
    "class_group": ClassGroupEstimator,
}
# Cohen et al.'s architectures under their names, so their checkpoints load (cohen_archs.py)
MODEL_REGISTRY.update(COHEN_ARCHS)


def _check_arch(name: str) -> type[nn.Module]:
    try:
        return MODEL_REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown architecture {name!r}; valid names: {', '.join(sorted(MODEL_REGISTRY))}"
        ) from None


def registered_arch(model: nn.Module) -> str:
    """The registry name of ``model``'s architecture (ValueError if it is not registered)."""
    for name, cls in MODEL_REGISTRY.items():
        if type(model) is cls:
            return name
    raise ValueError(f"{type(model).__name__} is not a registered architecture "
                     f"({', '.join(sorted(MODEL_REGISTRY))})")


def build_model(name: str, **kw: Any) -> nn.Module:
    """Instantiate a registered architecture: ``"tiny_mlp"``, ``"small_cnn"``, ``"resnet20"``
    or ``"class_group"`` (a Dual RS estimator over a base classifier)."""
    return _check_arch(name)(**kw)


# --------------------------------------------------------------------------- checkpoints


def _plain(value: Any, where: str) -> Any:
    """Convert ``value`` to built-in types that ``torch.load(weights_only=True)`` accepts
    (e.g. ``torch.__version__`` is a ``str`` subclass the safe unpickler rejects)."""
    if value is None or type(value) in (bool, int, float, str):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if hasattr(value, "item") and hasattr(value, "dtype"):  # numpy scalars
        return value.item()
    if isinstance(value, Mapping):
        return {_plain(k, where): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if isinstance(value, list) else tuple(items)
    raise TypeError(f"{where}: cannot store {type(value).__name__} in a checkpoint; use plain Python values")


def save_checkpoint(path: str | Path, model: nn.Module, arch: str, meta: Mapping[str, Any] | None = None,
                    kwargs: Mapping[str, Any] | None = None) -> Path:
    """Save ``{"arch", "kwargs", "state_dict", "meta"}`` to ``path``.

    ``kwargs`` defaults to the constructor arguments the model recorded in
    ``model.config``; ``meta`` should hold plain Python values (numbers,
    strings, lists, dicts) so the file loads with ``weights_only=True``.
    """
    cls = _check_arch(arch)
    if not isinstance(model, cls):
        raise TypeError(f"arch={arch!r} expects a {cls.__name__}, got {type(model).__name__}")
    if kwargs is None:
        kwargs = getattr(model, "config", None)
        if kwargs is None:
            raise ValueError("model has no .config; pass kwargs= explicitly")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    payload = {"arch": arch, "kwargs": _plain(dict(kwargs), "kwargs"), "state_dict": state,
               "meta": _plain(dict(meta or {}), "meta")}
    torch.save(payload, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; returns ``(model.eval(), meta)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{path}: not a readable dualrs_fast checkpoint ({exc})") from exc
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in _CHECKPOINT_KEYS):
        found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with keys {list(_CHECKPOINT_KEYS)}, found {found}")
    arch = ckpt["arch"]
    try:
        cls = _check_arch(arch)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    try:
        model = cls(**ckpt["kwargs"])
    except TypeError as exc:
        raise ValueError(f"{path}: kwargs {ckpt['kwargs']} do not fit {cls.__name__}: {exc}") from exc
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{path}: state_dict does not match {arch} with kwargs {ckpt['kwargs']}:\n{exc}") from exc
    return model.to(map_location).eval(), dict(ckpt["meta"])


# --------------------------------------------------------------------------- committed weights

_WEIGHTS_RE = re.compile(r"^(?P<arch>[a-z0-9_]+)_sigma(?P<sigma>\d+(?:\.\d+)?)\.pt$")
#: The dataset the committed weights default to (the embedded MNIST subset).
DEFAULT_DATASET = "mnist5k"


def weights_dir(dataset: str = DEFAULT_DATASET) -> Path:
    """Directory of ``dataset``'s committed weights: ``weights/`` for mnist5k,
    ``weights/<dataset>/`` for the others."""
    if dataset not in DATASET_STATS:
        raise ValueError(f"no committed weights for dataset {dataset!r}; datasets: "
                         f"{', '.join(DATASET_STATS)}")
    return WEIGHTS_DIR if dataset == DEFAULT_DATASET else WEIGHTS_DIR / dataset


def default_weights_path(sigma: float, arch: str = _DEFAULT_ARCH, *,
                         dataset: str = DEFAULT_DATASET) -> Path:
    """File name of the committed weights for ``sigma`` (whether or not it exists)."""
    return weights_dir(dataset) / f"{arch}_sigma{float(sigma):.2f}.pt"


def available_default_sigmas(arch: str = _DEFAULT_ARCH, *,
                             dataset: str = DEFAULT_DATASET) -> list[float]:
    """Noise levels for which committed weights of ``arch`` exist, sorted."""
    out = []
    directory = weights_dir(dataset)
    if directory.is_dir():
        for p in directory.iterdir():
            m = _WEIGHTS_RE.match(p.name)
            if m and m.group("arch") == arch:
                out.append(float(m.group("sigma")))
    return sorted(out)


def _load_committed(path: Path, map_location) -> nn.Module:
    model, meta = load_checkpoint(path, map_location=map_location)
    model.meta = meta
    return model


def load_default_classifier(sigma: float = 0.25, arch: str = _DEFAULT_ARCH,
                            map_location: str | torch.device = "cpu", *,
                            dataset: str = DEFAULT_DATASET) -> nn.Module:
    """The committed classifier of ``dataset`` trained with Gaussian noise augmentation at
    ``sigma``: SmallCNNs trained on the default MNIST-5k split (``scripts/train_default.py``),
    on Fashion-MNIST (``scripts/train_default.py --dataset fashion-mnist``) or on full MNIST
    (``--dataset mnist``). Returned in
    eval mode with its training metadata as ``model.meta``."""
    available = available_default_sigmas(arch, dataset=dataset)
    match = [s for s in available if math.isclose(s, float(sigma), rel_tol=0.0, abs_tol=1e-6)]
    if not match:
        raise ValueError(
            f"no committed {arch} weights for sigma={sigma} on {dataset}; available sigmas: "
            f"{', '.join(f'{s:g}' for s in available) or 'none'} (in {weights_dir(dataset)})"
        )
    return _load_committed(default_weights_path(match[0], arch, dataset=dataset), map_location)


def conditioned_weights_path(dataset: str = DEFAULT_DATASET) -> Path:
    """File of the committed noise-conditioned classifier (one model for every sigma)."""
    return weights_dir(dataset) / "sigma_cnn_conditioned.pt"


def load_default_conditioned(map_location: str | torch.device = "cpu", *,
                             dataset: str = DEFAULT_DATASET) -> nn.Module:
    """The committed noise-conditioned classifier ``model(x, sigma)`` of ``dataset``
    (:class:`SigmaConditionedCNN`, ``scripts/train_default.py --conditioned``)."""
    path = conditioned_weights_path(dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no committed noise-conditioned classifier for {dataset} at "
                                f"{path} (scripts/train_default.py --conditioned writes it)")
    return _load_committed(path, map_location)


#: Architectures of the committed Dual RS variance estimators
#: (``scripts/train_dual_default.py`` reproduces them): the class-group router and the paper's
#: learned estimator (a SmallCNN trained by ``training.train_dual``).
ESTIMATOR_ARCHS: tuple[str, ...] = ("class_group", "small_cnn")
#: The mnist5k default: a :class:`ClassGroupEstimator` over the committed sigma = 1.0
#: classifier, chosen on the validation split (``scripts/train_dual_default.py``).
DEFAULT_ESTIMATOR_ARCH = "class_group"
#: Each dataset's default estimator (fashion-mnist: the learned one, rebuilt on 30,000 images,
#: certifies 0.966 against the class map's 1.128 mean radius, docs/dual-rs.md "Results on
#: Fashion-MNIST"; mnist: docs/dual-rs.md "Results on full MNIST").
DEFAULT_ESTIMATORS: dict[str, str] = {"mnist5k": "class_group", "fashion-mnist": "class_group",
                                      "mnist": "class_group"}


def estimator_weights_path(arch: str = DEFAULT_ESTIMATOR_ARCH, *,
                           dataset: str = DEFAULT_DATASET) -> Path:
    """File of the committed Dual RS estimator of architecture ``arch``."""
    if arch not in ESTIMATOR_ARCHS:
        raise ValueError(f"no committed Dual RS estimator of architecture {arch!r}; "
                         f"available: {', '.join(ESTIMATOR_ARCHS)}")
    return weights_dir(dataset) / f"estimator_{arch}.pt"


#: The default committed Dual RS variance estimator's file (mnist5k).
DEFAULT_ESTIMATOR_PATH = estimator_weights_path(DEFAULT_ESTIMATOR_ARCH)


def load_default_estimator(map_location: str | torch.device = "cpu", *,
                           arch: str | None = None,
                           dataset: str = DEFAULT_DATASET) -> nn.Module:
    """A committed Dual RS variance estimator of ``dataset`` with one logit per noise level
    of ``model.meta["sigmas"]``, trained with noise at ``model.meta["estimator_sigma"]``
    against the committed classifiers (eval mode; training metadata in ``model.meta``).

    ``arch``: ``"class_group"`` (a :class:`ClassGroupEstimator` over the committed sigma = 1.0
    classifier) or ``"small_cnn"`` (the paper's learned estimator); None: the dataset's
    default (``DEFAULT_ESTIMATORS``)."""
    arch = arch or DEFAULT_ESTIMATORS.get(dataset, DEFAULT_ESTIMATOR_ARCH)
    path = estimator_weights_path(arch, dataset=dataset)
    if not path.is_file():
        raise FileNotFoundError(f"no committed Dual RS estimator at {path} "
                                f"(scripts/train_dual_default.py --arch {arch} writes it)")
    return _load_committed(path, map_location)


def load_default_dual(map_location: str | torch.device = "cpu", *,
                      estimator: str | None = None, dataset: str = DEFAULT_DATASET,
                      conditioned: bool = False):
    """Dual RS with ``dataset``'s committed models: a committed variance estimator
    (:func:`load_default_estimator` with ``arch=estimator``, default the dataset's) choosing
    among the sigmas it was trained for, and as the classifier the committed expert for each
    sigma (:func:`load_default_classifier`) or, with ``conditioned``, the one
    noise-conditioned classifier (:func:`load_default_conditioned`; inputs routed to
    different sigmas share its forward passes).

    Returns a :class:`dualrs_fast.dual.DualSmoothing` (its ``estimator_sigma`` and alpha split
    are the ones recorded in the estimator's checkpoint)."""
    from .dual import DualSmoothing  # lazy: dual imports the sampling engine

    model = load_default_estimator(map_location, arch=estimator, dataset=dataset)
    meta = model.meta
    sigmas = tuple(float(s) for s in meta["sigmas"])
    classifier = (load_default_conditioned(map_location, dataset=dataset) if conditioned else
                  {s: load_default_classifier(s, map_location=map_location, dataset=dataset)
                   for s in sigmas})
    return DualSmoothing(model, classifier, sigmas=sigmas,
                         estimator_sigma=float(meta["estimator_sigma"]),
                         estimator_alpha_fraction=float(meta.get("estimator_alpha_fraction", 0.5)))
