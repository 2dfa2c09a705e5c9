"""Clopper-Pearson bounds and certified radii: the statistics of a certificate.

For k successes among n Bernoulli(p) trials, the one-sided Clopper-Pearson bounds at level
alpha are exact (never anti-conservative) confidence bounds:

    lower(k, n, alpha) = Beta(k, n-k+1).ppf(alpha)     (0 for k == 0):  P(p >= lower) >= 1 - alpha
    upper(k, n, alpha) = Beta(k+1, n-k).ppf(1-alpha)   (1 for k == n):  P(p <= upper) >= 1 - alpha

A certificate is a security claim, so every reported value is rounded OUTWARD: lower bounds
and radii never exceed the exact value, upper bounds are never below it (same rule for both
backends, see ``_outward_ulps``).

Backends: "cpp" (``dualrs_fast._cbounds``, the default when it is built) and "scipy", a fallback
that starts from scipy.special.betaincinv / betainccinv and then refines the root by Newton
steps on an accurate log-space I_x(a, b). The refinement is needed: scipy's own beta quantiles
(Boost) are off by up to ~1e-8 relative for n >= 1e6 (e.g. upper(1, 1e9, 0.1)) and sometimes
on the unsafe side; tests/test_bounds.py checks both backends against 50-digit mpmath.
"""
from __future__ import annotations

import math
import numbers

import numpy as np
import scipy.special as sc
import scipy.stats

try:
    from . import _cbounds
    _CPP_IMPORT_ERROR = None
except ImportError as exc:  # extension not built: pure scipy/numpy fallback
    _cbounds = None
    _CPP_IMPORT_ERROR = exc

BACKEND: str = "cpp" if _cbounds is not None else "scipy"
BACKENDS = ("cpp", "scipy")

__all__ = ["BACKEND", "BACKENDS", "clopper_pearson_lower", "clopper_pearson_upper",
           "certified_radius", "binomial_test_abstains"]

_MAX_N = 2 ** 53 - 1  # n + 1 must be exact in float64
_EPS = np.finfo(np.float64).eps
_ONE_BELOW = np.nextafter(1.0, 0.0)
_TINY = np.nextafter(0.0, 1.0)  # smallest subnormal (k = 1 with absurdly small alpha)
_RADIUS_ULPS = 8  # same as kRadiusUlps in csrc/bounds.cpp


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------

def clopper_pearson_lower(k, n, alpha, *, backend=None):
    """One-sided lower confidence bound on p from k successes in n trials:
    P(p >= bound) >= 1 - alpha. Equals Beta(k, n-k+1).ppf(alpha) (0 for k == 0), rounded down.
    Returns a float for scalar k and n, else an array of their broadcast shape."""
    k, n, scalar = _counts(k, n)
    alpha = _alpha(alpha)
    if _backend(backend) == "cpp":
        out = _cbounds.lower_vec(k.ravel(), n.ravel(), alpha).reshape(k.shape)
    else:
        out = _scipy_lower(k, n, alpha)
    return float(out) if scalar else out


def clopper_pearson_upper(k, n, alpha, *, backend=None):
    """One-sided upper confidence bound on p from k successes in n trials:
    P(p <= bound) >= 1 - alpha. Equals Beta(k+1, n-k).ppf(1-alpha) (1 for k == n), rounded up.
    Returns a float for scalar k and n, else an array of their broadcast shape."""
    k, n, scalar = _counts(k, n)
    alpha = _alpha(alpha)
    if _backend(backend) == "cpp":
        out = _cbounds.upper_vec(k.ravel(), n.ravel(), alpha).reshape(k.shape)
    else:
        out = _scipy_upper(k, n, alpha)
    return float(out) if scalar else out


def certified_radius(k, n, alpha, sigma, *, backend=None):
    """Cohen et al.'s CERTIFY radius from k top-class votes among n noise samples.

    p = clopper_pearson_lower(k, n, alpha); abstain iff p < 0.5, else radius = sigma * Phi^-1(p),
    computed as -sigma * Phi^-1(q) with q = clopper_pearson_upper(n - k, n, alpha) = 1 - p (no
    cancellation for p near 1) and rounded down. Returns (radius float64, abstain bool), arrays of
    the broadcast shape of k, n and sigma; radius is 0 where abstained.
    """
    k, n, _ = _counts(k, n)
    alpha = _alpha(alpha)
    sigma = _sigma(sigma)
    try:
        shape = np.broadcast_shapes(k.shape, sigma.shape)
    except ValueError:
        raise ValueError(f"sigma of shape {sigma.shape} does not broadcast against counts of "
                         f"shape {k.shape}") from None
    k, n = np.broadcast_to(k, shape), np.broadcast_to(n, shape)
    sigma = np.asarray(np.broadcast_to(sigma, shape), order="C")
    if _backend(backend) == "cpp":
        kk, nn = np.asarray(k, order="C").ravel(), np.asarray(n, order="C").ravel()
        radius, abstain = _cbounds.radius_vec(kk, nn, alpha, sigma.ravel())
        return radius.reshape(shape), abstain.reshape(shape)
    return _scipy_radius(k, n, alpha, sigma)


def binomial_test_abstains(n_a, n_b, alpha):
    """Cohen et al.'s PREDICT decision: abstain iff the two-sided binomial test of n_a votes
    for the top class against n_b for the runner-up, H0: p = 1/2, has p-value > alpha
    (scipy.stats.binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha); also abstain if n_a + n_b == 0.
    Vectorised over n_a, n_b; returns a bool array of their broadcast shape."""
    n_a, n_b, _ = _counts(n_a, n_b, names=("n_a", "n_b"), pair=False)
    alpha = _alpha(alpha)
    shape, n_a, n_b = n_a.shape, n_a.ravel(), n_b.ravel()
    total = n_a + n_b
    if np.any(total > _MAX_N):
        raise ValueError(f"n_a + n_b must be < 2**53, got max {int(total.max())}")
    # For p = 1/2 the two-sided p-value is P(X <= min) + P(X >= max) = min(1, 2 P(X <= min)).
    pvalue = np.minimum(1.0, 2.0 * scipy.stats.binom.cdf(np.minimum(n_a, n_b),
                                                         np.maximum(total, 1), 0.5))
    pvalue = np.where(n_a == n_b, 1.0, pvalue)
    # binomtest sums the two tails separately (and with a 1e-7 relative pmf tolerance): settle
    # the decisions close to alpha with binomtest itself so the result is exactly Cohen's.
    for i in np.flatnonzero((np.abs(pvalue - alpha) <= 1e-6 * alpha) & (total > 0)):
        pvalue[i] = scipy.stats.binomtest(int(n_a[i]), int(total[i]), 0.5).pvalue
    return ((pvalue > alpha) | (total == 0)).reshape(shape)


# ---------------------------------------------------------------------------------------------
# Input validation
# ---------------------------------------------------------------------------------------------

def _backend(backend):
    if backend is None:
        backend = BACKEND
    if backend == "cpp":
        if _cbounds is None:
            raise RuntimeError("the C++ bounds backend is not available (dualrs_fast._cbounds "
                               f"failed to import: {_CPP_IMPORT_ERROR}); rebuild the package "
                               "with `pip install .` or pass backend='scipy'")
        return "cpp"
    if backend == "scipy":
        return "scipy"
    raise ValueError(f"backend must be None, 'cpp' or 'scipy', got {backend!r}")


def _as_array(x, name):
    if type(x).__module__.split(".")[0] == "torch" and hasattr(x, "cpu"):
        x = x.detach().cpu().numpy()
    if x is None or isinstance(x, (str, bytes)):
        raise TypeError(f"{name} must be numeric, got {type(x).__name__}")
    try:
        return np.asarray(x)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be numeric array-like, got {type(x).__name__}") from exc


def _count_array(x, name):
    arr = _as_array(x, name)
    if arr.dtype == object:  # e.g. Python ints beyond int64
        try:
            arr = arr.astype(np.int64)
        except (OverflowError, TypeError, ValueError) as exc:
            raise ValueError(f"{name} must be integer counts < 2**53, got {x!r}") from exc
    if arr.size == 0 and arr.dtype == np.float64:  # e.g. [] (numpy's default dtype)
        arr = arr.astype(np.int64)
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must be an integer count (int or integer array/tensor), "
                        f"got dtype {arr.dtype}")
    if arr.dtype == np.uint64 and arr.size and arr.max() > _MAX_N:
        raise ValueError(f"{name} must be < 2**53, got {int(arr.max())}")
    return arr.astype(np.int64, copy=False)


def _counts(k, n, names=("k", "n"), pair=True):
    """Validated int64 arrays (k, n) broadcast together, and whether both were scalars."""
    k_arr, n_arr = _count_array(k, names[0]), _count_array(n, names[1])
    try:
        k_b, n_b = np.broadcast_arrays(k_arr, n_arr)
    except ValueError:
        raise ValueError(f"{names[0]} of shape {k_arr.shape} and {names[1]} of shape "
                         f"{n_arr.shape} do not broadcast") from None
    if pair:
        if np.any(n_b < 1):
            raise ValueError(f"n must be >= 1, got {int(n_b.min())}")
        if np.any(n_b > _MAX_N):
            raise ValueError(f"n must be < 2**53, got {int(n_b.max())}")
        if np.any((k_b < 0) | (k_b > n_b)):
            i = np.flatnonzero((k_b < 0) | (k_b > n_b))[0]
            raise ValueError(f"k must satisfy 0 <= k <= n, got k={int(k_b.flat[i])}, "
                             f"n={int(n_b.flat[i])}")
    else:
        for arr, name in ((k_b, names[0]), (n_b, names[1])):
            if np.any(arr < 0):
                raise ValueError(f"{name} must be >= 0, got {int(arr.min())}")
    return (np.asarray(k_b, order="C"), np.asarray(n_b, order="C"),
            k_arr.ndim == 0 and n_arr.ndim == 0)


def _alpha(alpha):
    if isinstance(alpha, (bool, np.bool_)):
        raise TypeError("alpha must be a real number, got bool")
    if not isinstance(alpha, numbers.Real):
        arr = _as_array(alpha, "alpha")
        if arr.size != 1 or arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) \
                or np.iscomplexobj(arr):
            raise TypeError(f"alpha must be a real scalar, got {alpha!r}")
        alpha = arr.reshape(())[()]
    alpha = float(alpha)
    if not 0.0 < alpha < 1.0:  # also rejects NaN
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return alpha


def _sigma(sigma):
    arr = _as_array(sigma, "sigma")
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer)
                                 or np.issubdtype(arr.dtype, np.floating)):
        raise TypeError(f"sigma must be a real number or array, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = ~(np.isfinite(arr) & (arr > 0))
    if bad.any():
        raise ValueError(f"sigma must be positive and finite, got {arr[bad].flat[0]}")
    return arr


# ---------------------------------------------------------------------------------------------
# Outward rounding (mirrors csrc/bounds.cpp, where the error model is documented)
# ---------------------------------------------------------------------------------------------

def _outward_ulps(t, alpha):
    """16 + ceil(4 |log t| + 4 |log min(alpha, 1-alpha)|) ulps: ~8x the largest error measured."""
    with np.errstate(divide="ignore"):
        lt = np.where(t > 0, np.abs(np.log(np.where(t > 0, t, 1.0))), 745.0)
    la = abs(math.log(min(alpha, 1.0 - alpha)))
    return 16 + np.ceil(4.0 * lt + 4.0 * la).astype(np.int64)


def _step(v, ulps, up):
    """Move non-negative doubles by `ulps` representable numbers (== repeated nextafter):
    their bit patterns, read as integers, are monotone."""
    bits = np.asarray(v, dtype=np.float64).view(np.int64)
    return np.maximum(bits + ulps if up else bits - ulps, 0).view(np.float64)


def _outward(x, alpha, up):
    """Round bounds x in [0, 1] outward (csrc/bounds.cpp: outward): by outward_ulps of x itself
    for x <= 1/2, else of the exact complement 1 - x, plus 2 ulps of x."""
    x = np.asarray(x, dtype=np.float64)
    c = 1.0 - x                                     # exact for x >= 1/2
    small = _step(x, _outward_ulps(x, alpha), up)
    c = _step(c, _outward_ulps(c, alpha), not up)
    big = _step(1.0 - c, 2, up)
    return np.clip(np.where(x <= 0.5, small, big), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# scipy backend
# ---------------------------------------------------------------------------------------------

def _scipy_lower(k, n, alpha):
    k, n = k.astype(np.float64), n.astype(np.float64)
    out = np.zeros(k.shape)
    pos = k > 0
    x = _quantile(k[pos], n[pos] - k[pos] + 1.0, alpha, upper=False)
    out[pos] = _outward(x, alpha, up=False)
    return out


def _scipy_upper(k, n, alpha):
    k, n = k.astype(np.float64), n.astype(np.float64)
    out = np.ones(k.shape)
    part = k < n
    x = _quantile(k[part] + 1.0, n[part] - k[part], alpha, upper=True)
    out[part] = _outward(x, alpha, up=True)
    return out


def _scipy_radius(k, n, alpha, sigma):
    p_lower = _scipy_lower(k, n, alpha)
    abstain = p_lower < 0.5
    radius = np.zeros(k.shape)
    if np.any(~abstain):
        kc, nc = k[~abstain], n[~abstain]
        q = _scipy_upper(nc - kc, nc, alpha)   # == 1 - p_lower, without cancellation
        r = -sigma[~abstain] * sc.ndtri(q)
        # ndtri is accurate to < 2 eps: round down like the C++ backend
        radius[~abstain] = np.where(r > 0, _step(np.maximum(r, 0.0), _RADIUS_ULPS, up=False), 0.0)
    return radius, abstain


def _quantile(a, b, alpha, upper):
    """x with I_x(a, b) = alpha (upper=False) or 1 - I_x(a, b) = alpha (upper=True).

    scipy's betaincinv/betainccinv gives the start; Newton steps on the accurate log-space
    evaluation below refine it to full precision (scipy is off by up to ~1e-8 for n >= 1e6)."""
    if a.size == 0:
        return np.zeros(0)
    if alpha > 0.5:  # solve on the other tail, whose target 1 - alpha is exact and small
        alpha, upper = 1.0 - alpha, not upper
    with np.errstate(all="ignore"):
        x = sc.betainccinv(a, b, alpha) if upper else sc.betaincinv(a, b, alpha)
    # scipy rounds roots within half an ulp of 0 or 1 to 0 or 1 (and may fail): start inside
    x = np.where(np.isnan(x), 0.5, np.clip(x, _TINY, _ONE_BELOW))
    return _newton(a, b, alpha, x, upper)


def _newton(a, b, alpha, x, upper, max_iter=200):
    """Safeguarded Newton on g = log(tail) - log(alpha) in the log of the exact coordinate
    t = min(x, 1 - x), inside a bracket [lo, hi] of the root (bisection when a step leaves it)."""
    log_alpha = math.log(alpha)
    noise = 4.0 * _EPS * (1.0 + abs(log_alpha))  # evaluation noise of g
    sign = -1.0 if upper else 1.0                # sign of d(tail)/dx
    lo, hi = np.zeros_like(x), np.ones_like(x)
    done = np.zeros(x.shape, dtype=bool)
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            return x
        xa, aa, ba, lo_a, hi_a = x[act], a[act], b[act], lo[act], hi[act]
        ya = 1.0 - xa
        low, upp, front = _log_ibeta(aa, ba, xa, ya)
        tail = upp if upper else low
        g = tail - log_alpha
        above = g * sign > 0                     # the root is below xa
        hi_a, lo_a = np.where(above, xa, hi_a), np.where(above, lo_a, xa)
        xm = xa <= 0.5
        t = np.where(xm, xa, ya)
        with np.errstate(all="ignore"):
            # d g / d log t  =  +-t * rho / tail,  rho = exp(front) / (x y)
            gt = np.where(xm, sign, -sign) * np.exp(front - np.log(np.where(xm, ya, xa)) - tail)
            du = np.clip(-g / gt, -50.0, 50.0)
            tn = t + t * np.expm1(du)
        xn = np.where(xm, tn, 1.0 - tn)
        ok = np.isfinite(xn) & (xn > lo_a) & (xn < hi_a)
        # converged: a step below the rounding level (of t, or of x itself when x > 1/2 and the
        # step in 1 - x is below an ulp of x), a residual at the noise level of the evaluation,
        # or a bracket collapsed to neighbouring doubles
        tiny = np.isfinite(du) & ((np.abs(du) <= 4.0 * _EPS) | (np.abs(g) <= noise) | (xn == xa))
        mid = _bisect(lo_a, hi_a)
        collapsed = (mid <= lo_a) | (mid >= hi_a) | (hi_a - lo_a <= 4.0 * _EPS * xa)
        conv = tiny | (g == 0) | collapsed
        xn = np.where(conv, np.where(tiny & np.isfinite(xn), xn, xa), np.where(ok, xn, mid))
        x[act], lo[act], hi[act], done[act] = xn, lo_a, hi_a, conv
    if not done.all():
        i = np.flatnonzero(~done)[0]
        raise RuntimeError(f"scipy bounds backend: quantile refinement did not converge for "
                           f"a={a[i]}, b={b[i]}, alpha={alpha}")
    return x


def _bisect(lo, hi):
    """Midpoints of brackets: geometric in x (near 0) or in 1 - x (near 1) across wide ranges."""
    ylo, yhi = 1.0 - hi, 1.0 - lo
    near0 = hi <= 0.5
    near1 = lo >= 0.5
    with np.errstate(all="ignore"):
        g0 = np.sqrt(np.maximum(lo, _TINY)) * np.sqrt(hi)  # (the product could underflow)
        g1 = np.minimum(1.0 - np.sqrt(np.maximum(ylo, _TINY)) * np.sqrt(yhi), _ONE_BELOW)
    arith = 0.5 * (lo + hi)
    return np.where(near0 & (hi > 4 * lo), g0, np.where(near1 & (yhi > 4 * ylo), g1, arith))


# Accurate log I_x(a, b) in numpy (same method as csrc/bounds.cpp; see the comments there).

_STIRLING = np.array([1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156,
                      -3617 / 122400, 43867 / 244188, -174611 / 125400])
_LN_SQRT_2PI = 0.91893853320467274178032973640562


def _stirling_corr(z):
    """lgamma(z) - ((z - 1/2) log z - z + log sqrt(2 pi)), for z >= 10."""
    r = 1.0 / (z * z)
    s = np.full_like(z, _STIRLING[-1])
    for c in _STIRLING[-2::-1]:
        s = s * r + c
    return s / z


def _rlog1(e):
    """e - log(1 + e) without cancellation."""
    small = np.abs(e) <= 0.5
    with np.errstate(all="ignore"):
        direct = e - np.log1p(e)
    u = np.where(small, e, 0.0) / (2.0 + np.where(small, e, 0.0))
    u2 = u * u
    term, acc = np.ones_like(u), np.zeros_like(u)
    for j in range(40):
        acc += term / (2 * j + 3)
        term = term * u2
    series = e * u - 2.0 * u * u2 * acc
    return np.where(small, series, direct)


def _two_prod(s, x):
    """p + err == s * x exactly (Dekker/Veltkamp), replacing the C++ fma."""
    p = s * x
    c = 134217729.0 * s
    sh = c - (c - s)
    sl = s - sh
    c = 134217729.0 * x
    xh = c - (c - x)
    xl = x - xh
    err = ((sh * xh - p) + sh * xl + sl * xh) + sl * xl
    return p, err


def _log_beta_small(a, b):
    return np.log(sc.gamma(a) * (sc.gamma(b) / sc.gamma(a + b)))


def _front_const(a, b):
    """a log(a/s) + b log(b/s) - log B(a, b), s = a + b."""
    s = a + b
    big_a, big_b = a >= 10, b >= 10
    out = np.empty_like(a)
    with np.errstate(all="ignore"):
        m = big_a & big_b
        out[m] = (0.5 * np.log(a[m] * (b[m] / s[m])) - _LN_SQRT_2PI + _stirling_corr(s[m])
                  - _stirling_corr(a[m]) - _stirling_corr(b[m]))
        m = ~big_a & big_b
        out[m] = (a[m] * np.log(a[m]) - a[m] - sc.gammaln(a[m]) - 0.5 * np.log1p(a[m] / b[m])
                  + _stirling_corr(s[m]) - _stirling_corr(b[m]))
        m = big_a & ~big_b
        out[m] = (b[m] * np.log(b[m]) - b[m] - sc.gammaln(b[m]) - 0.5 * np.log1p(b[m] / a[m])
                  + _stirling_corr(s[m]) - _stirling_corr(a[m]))
        m = ~big_a & ~big_b
        out[m] = (a[m] * np.log(a[m] / s[m]) + b[m] * np.log(b[m] / s[m])
                  - _log_beta_small(a[m], b[m]))
    return out


def _log_ibeta(a, b, x, y):
    """(log I_x(a,b), log(1 - I_x(a,b)), log(x^a y^b / B(a,b))) for 0 < x < 1, y = 1 - x."""
    s = a + b
    xm = x <= y
    p, err = _two_prod(s, np.where(xm, x, y))
    lam = np.where(xm, (a - p) - err, (p - b) + err)       # a - s x, from the exact coordinate
    with np.errstate(all="ignore"):
        e1, e2 = -lam / a, lam / b
        r1 = np.where(np.abs(e1) <= 0.5, _rlog1(e1), e1 - np.log(x * (s / a)))
        r2 = np.where(np.abs(e2) <= 0.5, _rlog1(e2), e2 - np.log(y * (s / b)))
        front = -(a * r1 + b * r2) + _front_const(a, b)
        small = (a < 10) & (b < 10)
        front = np.where(small, a * np.log(x) + b * np.log(y) - _log_beta_small(a, b), front)
        direct = 1.0 + lam > 2.0 * x
        cf = np.where(direct, _beta_cf(a, b, x, y, lam, direct),
                      _beta_cf(b, a, y, x, -lam, ~direct))
        small_tail = front + np.log(cf / np.where(direct, a, b))
        other = np.where(small_tail > -math.log(2), np.log(-np.expm1(small_tail)),
                         np.log1p(-np.exp(small_tail)))
    return np.where(direct, small_tail, other), np.where(direct, other, small_tail), front


def _beta_cf(a, b, x, y, lam, mask):
    """Even-contracted continued fraction of I_x(a, b) (see beta_cf in csrc/bounds.cpp),
    evaluated where `mask` holds (1 elsewhere); converged elements drop out of the loop."""
    out = np.ones_like(x)
    idx = np.flatnonzero(mask)
    if idx.size == 0:
        return out
    a, b, x, y, lam = a[idx], b[idx], x[idx], y[idx], lam[idx]
    tiny = 1e-300
    s, x2, opy, opl = a + b, x * x, 1.0 + y, 1.0 + lam
    F = opl / (a + 1.0)
    F = np.where(np.abs(F) < tiny, tiny, F)
    C, D = F.copy(), np.zeros_like(F)
    for m in range(1, 10_000_001):
        a2m = a + 2.0 * m
        alpha = m * (b - m) * ((a + m - 1.0) * (s + m - 1.0)) * x2 / (
            (a2m - 2.0) * (a2m - 1.0) * ((a2m - 1.0) * a2m))
        beta = ((a - 1.0) * opl + 2.0 * m * (a + m) * opy) / ((a2m - 1.0) * (a2m + 1.0))
        D = beta + alpha * D
        D = 1.0 / np.where(np.abs(D) < tiny, tiny, D)
        C = beta + alpha / C
        C = np.where(np.abs(C) < tiny, tiny, C)
        delta = C * D
        F = F * delta
        fin = np.abs(delta - 1.0) <= 0.5 * _EPS
        if fin.any():
            out[idx[fin]] = 1.0 / F[fin]
            keep = ~fin
            if not keep.any():
                break
            idx, a, b, x2, opy, opl, s, C, D, F = (v[keep] for v in
                                                   (idx, a, b, x2, opy, opl, s, C, D, F))
    return out
