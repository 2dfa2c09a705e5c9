"""Argument checks. A certificate is a security claim: bad input must fail loudly, never
produce a certificate."""
import math
import numbers
import warnings

import numpy as np
import torch

SUPPORTED_DTYPES = (torch.float32, torch.float64)
MAX_SEED = 2**64
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


def check_seed(seed) -> int:
    if seed is None:  # reproducible under torch.manual_seed, like Cohen et al.'s code
        return int(torch.randint(0, 2**62, ()).item())
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
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
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
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise TypeError(f"ids must be integers, got {ids.dtype}")
    if ids.numel() != batch:
        raise ValueError(f"ids must have one entry per input ({batch}), got {ids.numel()}")
    if (ids < 0).any() or (ids >= 2**32).any():
        raise ValueError("ids must be in [0, 2**32)")
    return ids.to(torch.int64).cpu()


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
    if logits.dtype == torch.bool or logits.is_complex():
        raise TypeError(f"model logits must be real numbers, got {logits.dtype}")
    return int(logits.shape[1])
