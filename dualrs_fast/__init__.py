"""dualrs_fast: fast Monte Carlo certification for randomized smoothing and Dual RS.

    import dualrs_fast as drs
    r = drs.certify(model, x, sigma=0.25, n0=100, n=100_000, alpha=0.001)
    r.prediction, r.radius, r.count
"""
from pathlib import Path as _Path

from ._checkout import wire_checkout as _wire_checkout

_wire_checkout(_Path(__file__).resolve().parent)  # a git checkout: its kernels/ and build/

from .bounds import BACKEND as BOUNDS_BACKEND  # noqa: E402 - needs the wiring above
from .cascade import CascadeCertifyResult, CascadeSmoothing  # noqa: E402
from .dual import DualCertifyResult, DualSmoothing  # noqa: E402
from .sequential_radii import RadiiResult  # noqa: E402
from .smoothers import StandardSmoothing, certify, certify_radii, predict  # noqa: E402
from .smoothing import ABSTAIN, CertifyResult  # noqa: E402

__version__ = "0.1.0"
__all__ = ["ABSTAIN", "BOUNDS_BACKEND", "CascadeCertifyResult", "CascadeSmoothing",
           "CertifyResult", "DualCertifyResult", "DualSmoothing", "RadiiResult",
           "StandardSmoothing", "certify", "certify_radii", "predict", "__version__"]
