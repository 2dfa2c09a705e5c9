"""Training base classifiers with Gaussian noise augmentation (Cohen et al. 2019).

Every training example is perturbed as ``x + sigma * eps`` with
``eps ~ N(0, I)`` in pixel space (no clamping, exactly the distribution the
smoothed classifier queries at certification time); the model normalises
internally.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["train_classifier", "evaluate_accuracy"]


def _make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: 'adam', 'sgd'")


def train_classifier(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float,
    epochs: int = 20,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = True,
    optimizer: str = "adam",
    weight_decay: float = 0.0,
    schedule: str | None = "cosine",
    device: str | torch.device | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> nn.Module:
    """Train ``model`` in place on ``(X, y)`` with Gaussian noise augmentation at ``sigma``.

    Args:
        model: maps pixel-space inputs ``(N, C, H, W)`` to logits ``(N, K)``.
        X, y: training images in ``[0, 1]`` and int64 labels.
        sigma: noise standard deviation (pixel space); ``0`` trains on clean data.
        epochs, batch_size, lr: the usual; the last partial batch is kept.
        seed: seeds a ``torch.Generator`` for the shuffling and one for the noise,
            so the run is deterministic given ``seed`` and the model's initial
            weights (seed those yourself, e.g. ``torch.manual_seed`` before
            building the model). Thread count can still change float summation order.
        progress: show a tqdm bar over the epochs (loss and running accuracy).
        optimizer: ``"adam"`` or ``"sgd"`` (momentum 0.9, Nesterov).
        schedule: ``"cosine"`` (per-step cosine decay to 0) or ``None`` (constant lr).
        device: where to train (default: the device of the model's parameters).
        callback: called as ``callback(epoch, mean_loss)`` after every epoch.

    Returns:
        the same ``model``, in eval mode.
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"X and y have different lengths: {X.shape[0]} vs {y.shape[0]}")
    if epochs < 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    model.to(device)
    X = X.to(device, torch.float32)
    y = y.to(device, torch.int64)

    n = X.shape[0]
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, epochs * steps_per_epoch)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    if schedule == "cosine":
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))
        )
    elif schedule is None:
        sched = None
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid: 'cosine', None")

    shuffle_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)

    from tqdm.auto import tqdm  # lazy: keep module import light

    bar = tqdm(range(epochs), desc=f"train sigma={sigma:g}", disable=not progress, leave=False)
    model.train()
    for epoch in bar:
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = X[idx], y[idx]
            if sigma > 0:
                noise = torch.randn(xb.shape, generator=noise_gen, device=device, dtype=xb.dtype)
                xb = xb + sigma * noise
            logits = model(xb)
            loss = F.cross_entropy(logits, yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            loss_sum += loss.item() * idx.numel()
            correct += (logits.argmax(1) == yb).sum().item()
        mean_loss = loss_sum / n
        bar.set_postfix(loss=f"{mean_loss:.4f}", acc=f"{correct / n:.3f}")
        if callback is not None:
            callback(epoch, mean_loss)
    return model.eval()


@torch.no_grad()
def evaluate_accuracy(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float = 0.0,
    seed: int = 0,
    batch_size: int = 1000,
    repeats: int = 1,
) -> float:
    """Top-1 accuracy of ``model`` on ``X + sigma * eps`` (one fresh noise draw per
    repeat, from a generator seeded with ``seed``), averaged over ``repeats``.
    ``sigma=0`` gives clean accuracy. The model is evaluated in eval mode.
    """
    was_training = model.training
    model.eval()
    first = next(model.parameters(), None)
    device = first.device if first is not None else torch.device("cpu")
    gen = torch.Generator(device=device).manual_seed(int(seed))
    correct = 0
    for _ in range(max(1, repeats) if sigma > 0 else 1):
        for start in range(0, X.shape[0], batch_size):
            xb = X[start:start + batch_size].to(device, torch.float32)
            yb = y[start:start + batch_size].to(device)
            if sigma > 0:
                xb = xb + sigma * torch.randn(xb.shape, generator=gen, device=device, dtype=xb.dtype)
            correct += (model(xb).argmax(1) == yb).sum().item()
    model.train(was_training)
    total = X.shape[0] * (max(1, repeats) if sigma > 0 else 1)
    return correct / total
