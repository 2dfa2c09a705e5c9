"""Standard randomized smoothing (Cohen et al. 2019): CERTIFY and PREDICT on packed batches.

certify: n0 selection samples pick the top class c; n fresh estimation samples count its
votes n_c; p_lower = one-sided Clopper-Pearson bound at level alpha; abstain if p_lower < 0.5,
else radius = sigma * Phi^-1(p_lower). Both sample sets of all inputs go through one pass.
"""
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from .bounds import binomial_test_abstains, certified_radius, clopper_pearson_lower
from .noise import Stream
from .sampling import Draw, count_votes
from .validation import (as_input_batch, check_alpha, check_ids, check_positive_int,
                         check_sample_count, check_seed, check_sigma)

ABSTAIN = -1
#: sigma of ``certify`` / ``predict`` / ``certify_radii`` when none is given (a plain model;
#: a smoother holds its own)
DEFAULT_SIGMA = 0.25


@dataclass
class CertifyResult:
    prediction: torch.Tensor  # (B,) int64, ABSTAIN where abstained
    radius: torch.Tensor      # (B,) float32, rounded down; 0 where abstained
    count: torch.Tensor       # (B,) int64 votes for the selected class among the n estimation samples
    n: int
    alpha: float
    sigma: torch.Tensor       # (B,) noise level used for each input
    p_lower: torch.Tensor     # (B,) float64 Clopper-Pearson lower bound of the top-class probability
    seed: Optional[int] = None  # the noise seed used (a fresh secret one unless given): pass
                                # it back as seed= to reproduce the result

    def __len__(self):
        return self.prediction.shape[0]


def float32_rounded_down(values: np.ndarray) -> torch.Tensor:
    """float64 -> float32 never rounding up: a radius must not grow in the conversion."""
    f32 = values.astype(np.float32)
    up = f32.astype(np.float64) > values
    f32[up] = np.nextafter(f32[up], np.float32(-np.inf))
    return torch.from_numpy(f32)


def _sigma_per_input(sigma, batch: int) -> torch.Tensor:
    sigma = DEFAULT_SIGMA if sigma is None else sigma
    return torch.full((batch,), check_sigma(sigma), dtype=torch.float64)


def certify_counts(selection: torch.Tensor, estimation: torch.Tensor, n: int, alpha: float,
                   sigma: torch.Tensor, seed: Optional[int] = None) -> CertifyResult:
    """CERTIFY's decision from vote counts (B, K) of the selection and estimation samples."""
    top = selection.argmax(1)
    count = estimation.gather(1, top.unsqueeze(1)).squeeze(1).cpu()
    radius, abstain = certified_radius(count.numpy(), n, alpha, sigma.double().cpu().numpy())
    abstain = torch.from_numpy(np.asarray(abstain, dtype=bool).reshape(-1))
    p_lower = np.asarray(clopper_pearson_lower(count.numpy(), n, alpha), dtype=np.float64)
    return CertifyResult(prediction=torch.where(abstain, ABSTAIN, top.cpu()),
                         radius=float32_rounded_down(np.asarray(radius, np.float64).reshape(-1)),
                         count=count, n=n, alpha=alpha, sigma=sigma.float().cpu(),
                         p_lower=torch.from_numpy(p_lower.reshape(-1)), seed=seed)


def certify(model, x, sigma=None, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            batch_size: int = 1000, seed: Optional[int] = None, *, ids=None, num_classes=None,
            channels_last=None, compile: bool = False, noise_backend: str = "auto",
            progress: Optional[bool] = None, fold_bn: Optional[bool] = None) -> CertifyResult:
    """Certify the smoothed classifier g(x) = argmax_c P(model(x + N(0, sigma^2 I)) = c).

    Noise keys: input i's noise is a function of (seed, ids[i]), and the default ids are
    the positions 0..B-1 in x: with default ids an input's certificate depends on where it
    sits in the batch (each is valid). Pass dataset indices as ids to make it independent
    of which inputs share the call. Cost: n0 + n model evaluations per input (Cohen's
    n = 100,000 takes seconds to minutes per input on a CPU); on a terminal a call that runs
    longer than 5 s shows a progress bar with its ETA.

    x: one input (C,H,W) / (D,) or a batch (B,C,H,W) / (B,D) in the model's input (pixel)
    scale; sigma is in that scale (None: DEFAULT_SIGMA, 0.25), at least MIN_SIGMA_STEPS float
    steps of the input's magnitude. With probability >= 1 - alpha (per input) the returned
    radius is a lower bound on g's l2 robustness radius at x.

    x is float32 or float64; the noise is drawn at x's precision, and the model's parameters
    must have x's dtype. n0, n < 2**32.
    seed: noise seed; None (default) draws a fresh secret one from the OS, so a model cannot
    know the noise; it is returned as ``r.seed`` (pass it back to reproduce the run bit for
    bit; an explicit seed is deterministic). ids: per-input noise keys, distinct
    (default 0..B-1; pass dataset indices so a certificate does not depend on which inputs
    share the call). batch_size: noisy samples per forward pass (memory; the noise does not
    depend on it). num_classes: check the model's output width. channels_last: default on for
    (B, C, H, W) inputs. compile: opt-in torch.compile (the last batch is padded to a static
    shape). noise_backend: 'auto' (CPU: 'numba-simd' where the CPU has AVX2 + FMA, else
    'numba'; CUDA: 'triton' if installed; else 'torch'), or one of those names; backends agree
    up to float rounding. progress: True (a tqdm bar; off a terminal at most three lines),
    False, or None (default: a bar on a terminal once the call has run 5 s). fold_bn: on the
    CPU, run a private copy of the model with eval-mode BatchNorm folded into the preceding
    convolutions (the same function up to float rounding; docs/cohen.md); None (default) is
    on unless DUALRS_FAST_FOLD_BN=0, False runs the model exactly as given.
    """
    xb, _ = as_input_batch(x)
    sig = _sigma_per_input(sigma, xb.shape[0])
    n0, n = check_sample_count("n0", n0), check_sample_count("n", n)
    alpha = check_alpha(alpha)
    seed = check_seed(seed)
    counts = count_votes(model, xb, sig, [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)],
                         seed=seed, ids=check_ids(ids, xb.shape[0]),
                         batch_size=check_positive_int("batch_size", batch_size),
                         num_classes=num_classes, channels_last=channels_last, compile=compile,
                         noise_backend=noise_backend, progress=progress, desc="certify",
                         fold_bn=fold_bn)
    return certify_counts(counts[0], counts[1], n, alpha, sig, seed=seed)


def predict_counts(counts: torch.Tensor, alpha: float) -> torch.Tensor:
    """PREDICT's decision from vote counts (B, K): top class unless the binomial test of
    its votes against the runner-up's fails at level alpha."""
    top2 = counts.topk(2, dim=1)
    n_a, n_b = top2.values[:, 0].cpu().numpy(), top2.values[:, 1].cpu().numpy()
    abstain = torch.from_numpy(np.asarray(binomial_test_abstains(n_a, n_b, alpha), dtype=bool))
    return torch.where(abstain.reshape(-1), ABSTAIN, top2.indices[:, 0].cpu())


def predict(model, x, sigma=None, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
            seed: Optional[int] = None, *, ids=None, num_classes=None, channels_last=None,
            compile: bool = False, noise_backend: str = "auto", progress: Optional[bool] = None,
            fold_bn: Optional[bool] = None) -> torch.Tensor:
    """Evaluate g(x) with probability >= 1 - alpha of not returning a wrong class
    (returns ABSTAIN when unsure). -> LongTensor (B,).

    Noise keys as for ``certify``: default ids are the positions 0..B-1 in x (pass dataset
    indices to make an input's answer independent of its batch). Cost: n model evaluations
    per input. Options as for ``certify``. The default seed=None is a fresh secret one, which
    is not returned: pass an explicit seed to make a prediction reproducible."""
    xb, _ = as_input_batch(x)
    sig = _sigma_per_input(sigma, xb.shape[0])
    n, alpha = check_sample_count("n", n), check_alpha(alpha)
    counts = count_votes(model, xb, sig, [Draw(Stream.PREDICT, n)], seed=check_seed(seed),
                         ids=check_ids(ids, xb.shape[0]),
                         batch_size=check_positive_int("batch_size", batch_size),
                         num_classes=num_classes, channels_last=channels_last, compile=compile,
                         noise_backend=noise_backend, progress=progress, desc="predict",
                         fold_bn=fold_bn)
    return predict_counts(counts[0], alpha)
