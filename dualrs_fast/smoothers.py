"""One interface for the three smoothed classifiers, and the package's certify / predict /
certify_radii that take a plain model or any of them.

StandardSmoothing (a model and its sigma, Cohen et al.), DualSmoothing and CascadeSmoothing
present the same methods: ``certify``, ``predict`` and ``certify_radii`` (each may add
options of its own, e.g. Dual RS's n_estimator), and what a run over a dataset (``runner``)
needs: ``log_columns`` and ``log_cells`` (the log's extra columns), ``row_rules`` (the checks
a resumed row must pass), ``output_classes``, ``samples_per_input`` and
``predict_samples_per_input``. The runner and the CLI hold a smoother and never ask which.

This module sits above smoothing, dual and cascade (none of them imports it), so dispatching
on the kind of model here keeps their imports one-directional.
"""
from typing import Optional

import torch

from . import log_rows, sequential_radii, smoothing
from .cascade import CascadeSmoothing
from .dual import DualSmoothing
from .sampling import model_device
from .sequential_radii import FUTILITY_ALPHA, RadiiResult
from .smoothing import DEFAULT_SIGMA, CertifyResult
from .validation import check_model_callable, check_positive_int, check_sigma


class StandardSmoothing(log_rows.CohenLog):
    """Standard randomized smoothing (Cohen et al. 2019): ``model`` smoothed at ``sigma``
    (pixel scale, default 0.25), with the engine options of ``smoothing.certify``
    (num_classes, channels_last, compile, noise_backend, fold_bn) fixed for every call."""

    def __init__(self, model, sigma: Optional[float] = None, *, num_classes=None,
                 channels_last=None, compile: bool = False, noise_backend: str = "auto",
                 fold_bn: Optional[bool] = None):
        check_model_callable(model)
        self.model = model
        self.sigma = check_sigma(DEFAULT_SIGMA if sigma is None else sigma)
        self.engine = dict(num_classes=num_classes, channels_last=channels_last,
                           compile=compile, noise_backend=noise_backend, fold_bn=fold_bn)

    def certify(self, x, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
                batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                progress: Optional[bool] = None) -> CertifyResult:
        """CERTIFY at x (``smoothing.certify``: options, cost and guarantee)."""
        return smoothing.certify(self.model, x, self.sigma, n0=n0, n=n, alpha=alpha,
                                 batch_size=batch_size, seed=seed, ids=ids, progress=progress,
                                 **self.engine)

    def predict(self, x, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
                seed: Optional[int] = None, *, ids=None,
                progress: Optional[bool] = None) -> torch.Tensor:
        """PREDICT at x (``smoothing.predict``)."""
        return smoothing.predict(self.model, x, self.sigma, n=n, alpha=alpha,
                                 batch_size=batch_size, seed=seed, ids=ids, progress=progress,
                                 **self.engine)

    def certify_radii(self, x, radii, alpha: float = 0.001, n_max: int = 100_000,
                      n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *,
                      ids=None, futility_alpha: Optional[float] = FUTILITY_ALPHA,
                      progress: Optional[bool] = None) -> RadiiResult:
        """Which grid radii are certified at x, with early stopping (``sequential_radii``)."""
        return sequential_radii.certify_radii(
            self.model, x, radii, self.sigma, alpha, n_max, n0, batch_size, seed, ids=ids,
            futility_alpha=futility_alpha, progress=progress, **self.engine)

    # What a run over a dataset (``runner``) asks of a smoother besides its log (CohenLog)
    @property
    def largest_sigma(self) -> float:
        return self.sigma

    @staticmethod
    def samples_per_input(n0: int, n: int) -> int:
        return n0 + n

    @staticmethod
    def predict_samples_per_input(n: int) -> int:
        return n

    def output_classes(self, x: torch.Tensor) -> int:
        """Classes the model scores, from one forward pass on x's first input."""
        one = x[:1].clone()  # x[:1] may be a view of a dataset: no model gets to write into it
        with torch.inference_mode():
            return int(self.model(one.to(model_device(self.model, one.device))).shape[1])


#: the smoothers: ``certify`` and friends call their own methods
SMOOTHERS = (StandardSmoothing, DualSmoothing, CascadeSmoothing)
#: the engine options of a plain model's calls, as their defaults (a smoother holds its own)
ENGINE_DEFAULTS = dict(num_classes=None, channels_last=None, compile=False, noise_backend="auto",
                       fold_bn=None)


def _refuse_options(smoother, **options) -> None:
    """A smoother holds its sigma and engine options: ones given with it would be silently
    ignored (e.g. a num_classes check), so they are refused."""
    defaults = dict(ENGINE_DEFAULTS, sigma=None)
    unused = sorted(k for k, v in options.items() if v != defaults[k])
    if unused:
        owns = ("holds its own sigma and engine options" if isinstance(smoother, StandardSmoothing)
                else "chooses sigma per input and runs its own models")
        raise TypeError(f"{', '.join(unused)} cannot be used with a {type(smoother).__name__} "
                        f"model (it {owns})")


def certify(model, x, sigma=None, n0: int = 100, n: int = 100_000, alpha: float = 0.001,
            batch_size: int = 1000, seed: Optional[int] = None, *, ids=None, num_classes=None,
            channels_last=None, compile: bool = False, noise_backend: str = "auto",
            progress: Optional[bool] = None, fold_bn: Optional[bool] = None) -> CertifyResult:
    if isinstance(model, SMOOTHERS):
        _refuse_options(model, sigma=sigma, num_classes=num_classes, channels_last=channels_last,
                        compile=compile, noise_backend=noise_backend, fold_bn=fold_bn)
        return model.certify(x, n0=n0, n=n, alpha=alpha, batch_size=batch_size, seed=seed,
                             ids=ids, progress=progress)
    return smoothing.certify(model, x, sigma, n0=n0, n=n, alpha=alpha, batch_size=batch_size,
                             seed=seed, ids=ids, num_classes=num_classes,
                             channels_last=channels_last, compile=compile,
                             noise_backend=noise_backend, progress=progress, fold_bn=fold_bn)


certify.__doc__ = smoothing.certify.__doc__ + """
    ``model`` may also be a smoother: StandardSmoothing, DualSmoothing or CascadeSmoothing
    (then sigma and the engine options num_classes, channels_last, compile, noise_backend and
    fold_bn are refused; its own
    options, e.g. estimator_rounds, need ``model.certify``).
    """


def predict(model, x, sigma=None, n: int = 100_000, alpha: float = 0.001, batch_size: int = 1000,
            seed: Optional[int] = None, *, ids=None, num_classes=None, channels_last=None,
            compile: bool = False, noise_backend: str = "auto", progress: Optional[bool] = None,
            fold_bn: Optional[bool] = None) -> torch.Tensor:
    if isinstance(model, SMOOTHERS):
        _refuse_options(model, sigma=sigma, num_classes=num_classes, channels_last=channels_last,
                        compile=compile, noise_backend=noise_backend, fold_bn=fold_bn)
        return model.predict(x, n=n, alpha=alpha, batch_size=batch_size, seed=seed, ids=ids,
                             progress=progress)
    return smoothing.predict(model, x, sigma, n=n, alpha=alpha, batch_size=batch_size,
                             seed=seed, ids=ids, num_classes=num_classes,
                             channels_last=channels_last, compile=compile,
                             noise_backend=noise_backend, progress=progress, fold_bn=fold_bn)


predict.__doc__ = smoothing.predict.__doc__ + """

    ``model`` may also be a smoother (then without sigma and engine options)."""


def certify_radii(model, x, radii, sigma=None, alpha: float = 0.001, n_max: int = 100_000,
                  n0: int = 100, batch_size: int = 1000, seed: Optional[int] = None, *, ids=None,
                  futility_alpha: Optional[float] = FUTILITY_ALPHA, num_classes=None,
                  channels_last=None, compile: bool = False, noise_backend: str = "auto",
                  progress: Optional[bool] = None, n0_estimator: Optional[int] = None,
                  n_max_estimator: Optional[int] = None, fold_bn: Optional[bool] = None
                  ) -> RadiiResult:
    """Which grid radii does the smoothed classifier certify at x? Sequential CERTIFY with
    early stopping (``sequential_radii``: procedure and why it is sound).

    radii: the grid (0 is always added); alpha: failure probability per input, for all its
    grid decisions together; n_max: estimation samples per input at most (CERTIFY's n).
    futility_alpha: level of the upper bound that gives up on implausible radii (None: give
    up only on radii that all remaining samples could not certify; no effect on soundness).
    ``model`` is a plain model smoothed at ``sigma`` (None: 0.25), or a smoother: a
    DualSmoothing (``sigma`` then ignored; the estimator uses n0_estimator / n_max_estimator,
    default n0 / n_max), a StandardSmoothing or a CascadeSmoothing (then sigma and the engine
    options are refused; the cascade has no sequential test: CERTIFY at n_max, rounded down
    to the grid). Other options as for ``certify``. Each sample's noise is CERTIFY's (same
    seed, ids and streams), so with a single checkpoint (``radii_schedule(n_max) ==
    [n_max]``) the decisions are CERTIFY's; with more, they differ only by alpha's split
    over the checkpoints.
    """
    engine = dict(num_classes=num_classes, channels_last=channels_last, compile=compile,
                  noise_backend=noise_backend, fold_bn=fold_bn)
    common = dict(ids=ids, futility_alpha=futility_alpha, progress=progress)
    if isinstance(model, DualSmoothing):
        _refuse_options(model, **engine)  # sigma: ignored by Dual RS's documented contract
        n_estimator = None if n_max_estimator is None else check_positive_int(
            "n_max_estimator", n_max_estimator)
        return model.certify_radii(x, radii, alpha, n_max, n0, batch_size, seed,
                                   n0_estimator=n0_estimator, n_estimator=n_estimator, **common)
    if n0_estimator is not None or n_max_estimator is not None:
        raise TypeError("n0_estimator / n_max_estimator need a DualSmoothing model")
    if isinstance(model, SMOOTHERS):
        _refuse_options(model, sigma=sigma, **engine)
        return model.certify_radii(x, radii, alpha, n_max, n0, batch_size, seed, **common)
    return sequential_radii.certify_radii(model, x, radii, sigma, alpha, n_max, n0, batch_size,
                                          seed, **common, **engine)
