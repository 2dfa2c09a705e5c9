"""dualrs_fast: fast Monte Carlo certification for randomized smoothing and Dual RS.

    import dualrs_fast as drs
    r = drs.certify(model, x, sigma=0.25, n0=100, n=100_000, alpha=0.001)
    r.prediction, r.radius, r.count
"""
from .bounds import BACKEND as BOUNDS_BACKEND
from .dual import DualCertifyResult, DualSmoothing
from .sequential_radii import RadiiResult, certify_radii
from .smoothing import ABSTAIN, CertifyResult, certify, predict

__version__ = "0.1.0"
__all__ = ["ABSTAIN", "BOUNDS_BACKEND", "CertifyResult", "DualCertifyResult", "DualSmoothing",
           "RadiiResult", "certify", "certify_radii", "predict", "__version__"]
