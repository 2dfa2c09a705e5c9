"""Loading models and datasets for the command line, with errors that say what to do.

Models: a checkpoint saved by ``models.save_checkpoint``, a plain ``state_dict`` plus an
architecture name, or (opt-in) a TorchScript file. Nothing is unpickled beyond tensors and
plain containers (``weights_only=True``): a checkpoint file must not be able to run code.
TorchScript files carry code that runs when the model is called (it can read and write
files), so they load only when the caller passes ``allow_torchscript=True``.

Datasets: a named one (``data.DATASETS``: the embedded MNIST-5k split, Fashion-MNIST, full
MNIST; ``NAME`` is the test split, ``NAME-train`` the training split), or a ``.pt`` / ``.npz``
file holding images ``x`` ``(N, ...)`` in [0, 1] and integer labels ``y`` ``(N,)``.
"""
from __future__ import annotations

import hashlib
import json
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import external_data, models
from .cohen_archs import arch_of_checkpoint

_CHECKPOINT_KEYS = ("arch", "kwargs", "state_dict", "meta")
DATASETS = ("mnist5k", "mnist5k-train", "fashion-mnist", "fashion-mnist-train", "mnist",
            "mnist-train")


class LoadError(ValueError):
    """A model or dataset could not be loaded; the message says why and what to do."""


# --------------------------------------------------------------------------- models


def _is_torchscript(path: Path) -> bool:
    # TorchScript archives carry compiled code next to the data; torch.save archives do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("constants.pkl") or "/code/" in name
                   for name in archive.namelist())


def _check_torchscript_allowed(path: Path, allowed: bool) -> None:
    if not allowed:
        raise LoadError(f"{path} is a TorchScript file: it carries code that runs when the model "
                        "is called (it can read and write your files). Pass --allow-torchscript "
                        "only if you trust its author, or save the model as a checkpoint "
                        "(models.save_checkpoint) or a state_dict, which hold weights only")


def _strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def _classes_from_state_dict(state: dict) -> Optional[int]:
    """Output width of the last linear layer (the registered architectures end with one)."""
    weights = [v for k, v in state.items() if k.endswith("weight") and v.dim() == 2]
    return int(weights[-1].shape[0]) if weights else None


def _from_state_dict(path: Path, state: dict, arch: Optional[str], arch_kwargs: dict,
                     arch_option: Optional[str], kwargs_option: Optional[str]):
    if arch is None and arch_option is None:
        raise LoadError(f"{path} holds a plain state_dict, which cannot be loaded here (no option "
                        "names its architecture): save the model with models.save_checkpoint or "
                        "as TorchScript")
    if arch is None:
        raise LoadError(f"{path} holds a plain state_dict: name its architecture with {arch_option} "
                        f"({', '.join(sorted(models.MODEL_REGISTRY))})")
    given = (f"pass the constructor arguments as {kwargs_option} JSON" if kwargs_option else
             "only num_classes is read from the weights here: save the model with "
             "models.save_checkpoint, which records its constructor arguments, or as TorchScript")
    state = _strip_prefix(state, "module.")  # saved from DataParallel / DDP
    kwargs = dict(arch_kwargs)
    if "num_classes" not in kwargs and _classes_from_state_dict(state) is not None:
        kwargs["num_classes"] = _classes_from_state_dict(state)
    try:
        model = models.build_model(arch, **kwargs)
    except TypeError as exc:
        raise LoadError(f"{kwargs_option or 'constructor arguments'} {kwargs} do not fit "
                        f"{arch}: {exc}") from None
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError:
        raise LoadError(f"{path}: the state_dict does not match {arch} with arguments {kwargs} "
                        f"({given}): {_state_dict_mismatch(model.state_dict(), state)}") from None
    return model


def _state_dict_mismatch(expected: dict, given: dict, shown: int = 3) -> str:
    """One line: how many keys are missing / unexpected / of another shape, a few of each."""
    def few(keys):
        keys = list(keys)
        return ", ".join(keys[:shown]) + (", ..." if len(keys) > shown else "")
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    reshaped = [f"{k} {tuple(given[k].shape)} instead of {tuple(expected[k].shape)}"
                for k in expected if k in given and given[k].shape != expected[k].shape]
    parts = [f"{len(keys)} {what} ({few(keys)})" for what, keys in
             (("missing keys", missing), ("unexpected keys", unexpected),
              ("weights of another shape", reshaped)) if keys]
    return "; ".join(parts) or "the weights do not load"


def _unreadable_reason(exc: Exception) -> str:
    """Why torch.load(weights_only=True) refused a file, in one clause (torch's own message
    spans lines, with terminal colour codes)."""
    if isinstance(exc, pickle.UnpicklingError):
        return "it holds pickled Python objects beyond tensors (e.g. a whole model)"
    first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip().splitlines()
    return f"cannot be read as tensors ({first[0].strip() if first else type(exc).__name__})"


def load_model(path, arch: Optional[str] = None, arch_kwargs: Optional[dict] = None,
               device="cpu", arch_option: Optional[str] = "--arch",
               kwargs_option: Optional[str] = "--arch-kwargs", *,
               allow_torchscript: bool = False) -> torch.nn.Module:
    """A model in eval mode from a project checkpoint, a state_dict (needs ``arch``) or, with
    ``allow_torchscript``, a TorchScript file (its code runs). ``arch_option`` /
    ``kwargs_option`` name the flags that set ``arch`` / ``arch_kwargs`` in messages; None
    where the caller has no such flag (then a state_dict without ``arch`` is refused with
    advice to save a checkpoint)."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"model file not found: {path}")
    if _is_torchscript(path):
        _check_torchscript_allowed(path, allow_torchscript)
        try:
            with warnings.catch_warnings():  # deprecated in recent torch, still widely used
                warnings.simplefilter("ignore", DeprecationWarning)
                return torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # noqa: BLE001 - report any TorchScript failure the same way
            raise LoadError(f"{path}: not a loadable TorchScript file ({exc})") from None
    try:
        obj = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path}: {_unreadable_reason(exc)}. Save models as "
                        "torch.save(model.state_dict(), path), models.save_checkpoint(...) or "
                        "torch.jit.save(torch.jit.trace(model, example), path); whole pickled "
                        "modules are not loaded because unpickling can run arbitrary code"
                        ) from None
    if isinstance(obj, dict) and all(k in obj for k in _CHECKPOINT_KEYS):
        if arch is not None and arch != obj["arch"]:
            raise LoadError(f"{path} is a {obj['arch']} checkpoint but {arch_option} {arch} was given")
        try:
            model, meta = models.load_checkpoint(path, map_location=device)
        except (ValueError, FileNotFoundError) as exc:
            raise LoadError(str(exc)) from None
        model.meta = meta  # e.g. the training sigma, as load_default_classifier does
        return model
    cohen_arch = arch_of_checkpoint(obj)  # Cohen et al.'s snapshots name their architecture
    if cohen_arch is not None and arch not in (None, cohen_arch):
        raise LoadError(f"{path} is a {cohen_arch} checkpoint but {arch_option} {arch} was given")
    arch = cohen_arch or arch
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # e.g. {"epoch", "arch", "state_dict", "optimizer"} training snapshots
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _from_state_dict(path, obj, arch, arch_kwargs or {}, arch_option,
                                kwargs_option).to(device).eval()
    found = sorted(map(str, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise LoadError(f"{path}: expected a dualrs_fast checkpoint, a state_dict or TorchScript; "
                    f"found {found}")


def check_model_on(model, x: torch.Tensor, num_outputs: Optional[int], what: str = "model",
                   min_outputs: Optional[int] = None) -> int:
    """Run ``model`` on one input and check it returns (1, K) logits with K == num_outputs
    (or K >= min_outputs). -> K."""
    device = next((p.device for p in getattr(model, "parameters", lambda: [])()), x.device)
    try:
        with torch.inference_mode():  # a copy: x[:1] is a view a model could write into
            out = model(x[:1].to(device, copy=True))
    except Exception as exc:  # noqa: BLE001 - shape errors come in many exception types
        raise LoadError(f"the {what} fails on an input of shape {tuple(x.shape[1:])}: "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise LoadError(f"the {what} must return (N, K) logits, got {shape} for one input")
    k = int(out.shape[1])
    if num_outputs is not None and k != num_outputs:
        raise LoadError(f"the {what} returns {k} logits, expected {num_outputs}")
    if min_outputs is not None and k < min_outputs:
        raise LoadError(f"the {what} returns {k} classes but the labels go up to "
                        f"{min_outputs - 1}: wrong model for this dataset?")
    return k


def trust_case(*modules) -> str:
    """Which side of the trust boundary (docs/threat-model.md) a command-line run is on."""
    if any(isinstance(sub, torch.jit.ScriptModule) for m in modules
           if isinstance(m, torch.nn.Module) for sub in m.modules()):
        return ("TorchScript code trusted with --allow-torchscript: its certificates hold only "
                "if that code is a fixed function of each row")
    return "weights in built-in architectures: stateless, row-independent functions"


def fingerprint(*modules, tensor_attributes: bool = False) -> str:
    """sha256 of everything that decides the modules' function, independent of file names:
    each submodule's class and plain attributes (constructor arguments such as ``config``,
    flags such as ``training``), all its parameters and buffers, persistent or not, and for
    TorchScript the whole serialised module (code, constants, attributes, tensors).
    tensor_attributes: also tensors held as plain attributes (e.g. Cohen et al.'s
    NormalizeLayer constants); off for the logs' model_sha256, whose value stays as it was."""
    h = hashlib.sha256()
    for k, module in enumerate(modules):
        h.update(f"model {k}|".encode())
        _update_module(h, module, tensor_attributes)
    return h.hexdigest()


def _update_tensor(h, what: str, name: str, t: torch.Tensor) -> None:
    t = t.detach().cpu().contiguous().reshape(-1)  # 0-d tensors cannot view bytes
    h.update(f"{what} {name}|{t.dtype}|{tuple(t.shape)}|".encode())
    h.update(t.view(torch.uint8).numpy().tobytes())


def _update_module(h, module, tensor_attributes: bool = False) -> None:
    if isinstance(module, torch.jit.ScriptModule):
        h.update(b"torchscript|")
        h.update(module._c.save_to_buffer())  # deterministic: no time stamps, no random ids
        return
    kind = type(module)
    h.update(f"{kind.__module__}.{kind.__qualname__}|".encode())
    if not isinstance(module, torch.nn.Module):
        return  # a plain function: its name is all there is to record
    for key, value in sorted(vars(module).items()):
        if not key.startswith("_") and _is_plain(value):  # torch's own state is _-prefixed
            h.update(f"{key}={json.dumps(value, sort_keys=True)}|".encode())
        elif tensor_attributes and not key.startswith("_") and isinstance(value, torch.Tensor):
            _update_tensor(h, "attribute", key, value)
    for what, tensors in (("param", module.named_parameters(recurse=False)),
                          ("buffer", module.named_buffers(recurse=False))):
        for name, t in tensors:
            if t is not None:
                _update_tensor(h, what, name, t)
    for name, child in module.named_children():
        h.update(f"child {name}|".encode())
        _update_module(h, child, tensor_attributes)


def _is_plain(value) -> bool:
    """None, bool, int, float, str, or a tuple / list / dict of them (whose repr is stable)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (tuple, list)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


# --------------------------------------------------------------------------- datasets


@dataclass
class Dataset:
    name: str
    x: torch.Tensor  # (N, ...) float32 in the model's input (pixel) scale
    y: torch.Tensor  # (N,) int64

    def __len__(self):
        return int(self.y.shape[0])

    @property
    def family(self) -> str:
        """The named dataset whose committed models fit these inputs (mnist5k's for a file)."""
        return dataset_family(self.name)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for t in (self.x, self.y):
            t = t.detach().cpu().contiguous()
            h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
            h.update(t.numpy().tobytes())
        return h.hexdigest()


def _tensor(value, name: str, path: Path) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if not isinstance(value, torch.Tensor):
        raise LoadError(f"{path}: {name} must be an array, got {type(value).__name__}")
    return value


def _read_dataset_file(path: Path):
    if path.suffix == ".npz":  # as npz:PATH
        try:
            return external_data.load_npz(path)
        except ValueError as exc:
            raise LoadError(str(exc)) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise LoadError(f"{path}: not a readable dataset file ({str(exc).splitlines()[0]})") from None
    if isinstance(obj, dict) and "x" in obj and "y" in obj:
        return obj["x"], obj["y"]
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return obj
    raise LoadError(f"{path}: a .pt dataset must be {{'x': images, 'y': labels}} or (x, y)")


def dataset_family(name: str) -> str:
    """``fashion-mnist`` for ``fashion-mnist`` and ``fashion-mnist-train``; mnist5k for a file."""
    base = name[:-len("-train")] if name.endswith("-train") else name
    return base if name in DATASETS else "mnist5k"


def load_dataset(spec: str = "mnist5k", check_range: bool = True,
                 range_option: Optional[str] = "--any-range") -> Dataset:
    """A named dataset (``DATASETS``: ``mnist5k`` is the 1000 held-out test images of the
    embedded split, ``fashion-mnist`` / ``mnist`` the 10,000 test images of those, a
    ``-train`` suffix the training split), a path to a .pt / .npz file with ``x`` (N, ...) in
    [0, 1] and ``y`` (N,), or ``cifar10:DIR`` / ``cifar10-train:DIR`` / ``npz:PATH``
    (``external_data``). ``range_option``: the flag that turns ``check_range`` off, named in
    its error (None: the caller has none)."""
    from . import data
    if spec in DATASETS:
        split = "train" if spec.endswith("-train") else "test"
        try:
            return Dataset(spec, *data.load_dataset(dataset_family(spec), split))
        except (FileNotFoundError, ValueError) as exc:  # not installed, or a changed file
            raise LoadError(str(exc)) from None
    if external_data.is_external(spec):  # cifar10:DIR, cifar10-train:DIR, npz:PATH
        try:
            x, y = external_data.load(spec)
        except ValueError as exc:
            raise LoadError(str(exc)) from None
        path = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise LoadError(f"dataset {spec!r} is neither a known name ({', '.join(DATASETS)}), "
                            "an existing .pt / .npz file, nor cifar10:DIR / npz:PATH")
        x, y = (_tensor(v, k, path) for k, v in zip("xy", _read_dataset_file(path)))
    if not x.dtype.is_floating_point:
        raise LoadError(f"{path}: x must hold float pixels in [0, 1], got {x.dtype} "
                        "(divide 0..255 images by 255)")
    if y.dtype.is_floating_point or y.dim() != 1 or y.shape[0] != x.shape[0] or x.dim() < 2:
        raise LoadError(f"{path}: need x (N, ...) and integer labels y (N,), got "
                        f"x {tuple(x.shape)}, y {tuple(y.shape)} {y.dtype}")
    if len(y) == 0:
        raise LoadError(f"{path}: the dataset is empty")
    if not torch.isfinite(x).all():
        raise LoadError(f"{path}: x contains NaN or inf")
    if check_range and (x.min() < 0 or x.max() > 1):
        advice = (f"rescale, or pass {range_option} if your model's input scale is different"
                  if range_option else "rescale them to [0, 1]")
        raise LoadError(f"{path}: pixels span [{float(x.min()):g}, {float(x.max()):g}] but sigma "
                        "is defined on [0, 1] images (normalisation belongs inside the model); "
                        + advice)
    if (y < 0).any():
        raise LoadError(f"{path}: labels must be >= 0")
    return Dataset(str(path), x.float().contiguous(), y.long().contiguous())
