"""Argument checks. A certificate is a security claim: bad input must fail loudly, never
produce a certificate."""
import math
import numbers
import secrets
import warnings
from pathlib import Path

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)
MAX_SEED = 2**64
#: sample indices are 32-bit Philox counter words (``kernels/__init__.py``): a larger count
#: would wrap around and reuse noise
MAX_SAMPLES = 2**32 - 1
#: sigma must span at least this many float steps (eps * the input's largest |value|): below
#: that the noisy input is the float-rounded model's input, not x + Gaussian noise, and the
#: certificate describes rounding (docs/api.md, the limit on sigma)
MIN_SIGMA_STEPS = 512
#: inputs beyond [-RANGE_SLACK, 1 + RANGE_SLACK] are taken for another scale (normalised,
#: 0..255, [-1, 1]) and warned about; perturbed images a little outside [0, 1] are not
RANGE_SLACK = 0.5


class InputRangeWarning(UserWarning):
    """x lies far outside [0, 1], the pixel scale sigma is meant in."""


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def check_open_unit(name: str, value) -> float:
    """A float strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not (0.0 < value < 1.0):
        raise ValueError(f"{name} must be in (0, 1), got {value}")
    return value


def check_nonnegative(name: str, value) -> float:
    """A finite float >= 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be a finite float >= 0, got {value}")
    return value


def check_alpha(alpha) -> float:
    return check_open_unit("alpha (failure probability)", alpha)


def check_sigma(sigma, name: str = "sigma") -> float:
    """A noise standard deviation in the model's input (pixel) scale."""
    if isinstance(sigma, bool) or not isinstance(sigma, numbers.Real):
        raise TypeError(f"{name} must be a positive float, got {type(sigma).__name__}")
    sigma = float(sigma)
    if not math.isfinite(sigma) or sigma <= 0.0:
        raise ValueError(f"{name} must be a finite positive float, got {sigma}")
    return sigma


def check_sample_count(name: str, value) -> int:
    """A number of noise samples per input: >= 1 and below 2**32 (the sample counter's range)."""
    value = check_positive_int(name, value)
    if value > MAX_SAMPLES:
        raise ValueError(f"{name} must be < 2**32 (noise sample indices are 32-bit), got {value}")
    return value


def check_output_folder(path: str, label: str) -> Path:
    """The folder an output file goes into: a missing one under the working directory (runs/
    in the docs' examples) is acceptable (the caller creates it); elsewhere a missing folder
    is more likely a typo than a wish (e.g. at the filesystem root), so it is refused."""
    folder = Path(path).expanduser().resolve().parent
    if not folder.is_dir() and not folder.is_relative_to(Path.cwd().resolve()):
        raise ValueError(f"{label} {path}: the folder {folder} does not exist; create it first "
                         f"(mkdir -p {folder}) or write under the working directory")
    return folder


def fresh_seed() -> int:
    """A secret 63-bit seed from the OS: a model that knows the noise algorithm cannot know
    the noise (a fixed default seed would make it public)."""
    return secrets.randbits(63)


def check_seed(seed) -> int:
    """An explicit seed in [0, 2**64), or None: a fresh secret one (``fresh_seed``)."""
    if seed is None:
        return fresh_seed()
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__}")
    if not 0 <= seed < MAX_SEED:
        raise ValueError(f"seed must be in [0, 2**64), got {seed}")
    return int(seed)


def as_input_batch(x):
    """-> (batch (B, ...), was_single). 1-D and 3-D inputs are one input ((D,) or (C,H,W));
    2-D, 4-D and 5-D inputs are batches ((B,D), (B,C,H,W), (B,C,D,H,W))."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, torch.Tensor):
        hint = (": torch.stack(x) for a list of image tensors, torch.tensor(x, "
                "dtype=torch.float32) for nested numbers" if isinstance(x, (list, tuple)) else "")
        raise TypeError(f"x must be a torch.Tensor or a numpy array, got {type(x).__name__}{hint}")
    if x.dtype not in SUPPORTED_DTYPES:
        raise TypeError(f"x must be float32 or float64, got {x.dtype} (low precision noise can "
                        "create false certificates; cast to float32)")
    if x.dim() not in (1, 2, 3, 4, 5):
        raise ValueError(f"x must be one input (D,) / (C,H,W) or a batch (B,D) / (B,C,H,W), "
                         f"got shape {tuple(x.shape)}")
    single = x.dim() in (1, 3)
    if single:
        x = x.unsqueeze(0)
    if x.shape[0] == 0 or x[0].numel() == 0:
        raise ValueError(f"x is empty: shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or inf")
    warn_if_far_outside_unit_range(x)
    return x, single


def warn_if_far_outside_unit_range(x: torch.Tensor) -> None:
    """sigma is in x's scale: a normalised or 0..255 input silently changes what a radius
    means (the command line refuses such data unless --any-range)."""
    low, high = float(x.min()), float(x.max())
    if low < -RANGE_SLACK or high > 1 + RANGE_SLACK:
        warnings.warn(f"x spans [{low:.3g}, {high:.3g}], far outside [0, 1]: sigma and the radius "
                      "are in x's scale; pass pixels in [0, 1] and normalise inside the model "
                      "(as Cohen et al.), or ignore this if your scale is intended",
                      InputRangeWarning, stacklevel=3)


def check_ids(ids, batch: int) -> torch.Tensor:
    """Per-input ids that key the noise (default 0..B-1): pass dataset indices to make a
    certificate independent of which other inputs share the call."""
    if ids is None:
        return torch.arange(batch, dtype=torch.int64)
    ids = torch.as_tensor(ids).reshape(-1)
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if ids.numel() != batch:
        raise ValueError(f"ids must have one entry per input ({batch}), got {ids.numel()}")
    # as Python ints: comparisons in uint8 would wrap 2**32, uint32 / uint64 have none on CPU
    values = ids.tolist()
    if any(not 0 <= v < 2**32 for v in values):
        raise ValueError("ids must be in [0, 2**32)")
    if len(set(values)) != len(values):
        raise ValueError("ids must be distinct: inputs with the same id would share their noise")
    return torch.tensor(values, dtype=torch.int64)


def check_model_input_dtype(model, dtype: torch.dtype) -> None:
    """The noise is drawn at x's precision and fed to the model as is: a model whose floating
    point parameters have another dtype would fail inside torch (or round the noise).
    Parameters only: buffers may hold constants at another precision on purpose (e.g. a
    diffusion schedule in float64)."""
    if not isinstance(model, torch.nn.Module):
        return
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if dtypes and dtype not in dtypes:
        want = ", ".join(sorted(str(d).replace("torch.", "") for d in dtypes))
        have = str(dtype).replace("torch.", "")
        raise TypeError(f"x is {have} but the model's parameters are {want}: pass x in the "
                        f"model's dtype (float64 x gets float64 noise) or convert the model")


def check_sigma_resolution(x_flat: torch.Tensor, sigma: torch.Tensor) -> None:
    """Refuse sigma below MIN_SIGMA_STEPS float steps of each input's largest |value|: the
    float-rounded noisy input would no longer be x + Gaussian noise (a certificate could be
    false). x_flat (B, D), sigma (B,)."""
    info = torch.finfo(x_flat.dtype)
    step = (x_flat.abs().amax(1).double() * info.eps).clamp_min(info.tiny)
    low = sigma.double().cpu() < MIN_SIGMA_STEPS * step.cpu()
    if low.any():
        i = int(torch.nonzero(low)[0])
        raise ValueError(f"sigma {float(sigma[i]):.3g} is below {MIN_SIGMA_STEPS} float steps of "
                         f"input {i}'s magnitude ({MIN_SIGMA_STEPS * float(step[i]):.3g} in "
                         f"{str(x_flat.dtype).replace('torch.', '')}): the certificate would "
                         "reflect float rounding; use a larger sigma (or float64 inputs)")


def check_model_callable(model) -> None:
    """The engine calls a model; a smoother is not one (its models are inside it)."""
    if not callable(model):
        raise TypeError(f"model must be a model (callable), got {type(model).__name__}; a "
                        "smoother (StandardSmoothing, DualSmoothing, CascadeSmoothing) is "
                        "certified by drs.certify / drs.predict / drs.certify_radii or its own "
                        "methods")


def check_model_is_deterministic(model) -> None:
    """BatchNorm/Dropout in training mode make a sample's vote depend on its batch or on
    extra randomness, which invalidates the certificate."""
    if not isinstance(model, torch.nn.Module):
        return
    stochastic = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    for name, module in model.named_modules():
        if module.training and isinstance(module, stochastic):
            raise ValueError(f"model has {type(module).__name__} '{name}' in training mode; "
                             "call model.eval() before certifying")


def check_logits(logits, rows: int, num_classes) -> int:
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"model must return a torch.Tensor of logits, got {type(logits).__name__}")
    if logits.dim() != 2 or logits.shape[0] != rows:
        raise ValueError(f"model must return (N, K) logits for N={rows} inputs, got shape "
                         f"{tuple(logits.shape)}")
    if logits.shape[1] < 2:
        raise ValueError("model must return at least 2 logits per input (for a binary model "
                         "with one logit z, return torch.stack([-z, z], 1))")
    if num_classes is not None and logits.shape[1] != num_classes:
        raise ValueError(f"model returned {logits.shape[1]} classes, expected {num_classes}")
    if not logits.dtype.is_floating_point:
        # integer outputs are class indices or counts, not scores: refuse rather than guess
        raise TypeError(f"model logits must be floating point (float32/64, float16 or "
                        f"bfloat16), got {logits.dtype}")
    return int(logits.shape[1])
