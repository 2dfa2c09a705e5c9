"""Soundness and accuracy of the Clopper-Pearson bounds and certified radii (dualrs_fast.bounds).

References, from most to least trusted:
  * 50-digit mpmath: I_x(a, b) from mpmath.betainc (small a + b), exact binomial sums
    (I_x(a, b) = P(Binomial(a+b-1, x) >= a), few terms when min(a, b) is small) or a plain
    continued fraction at 50 digits (large a and b); quantiles by bracketed root finding.
  * scipy.stats.beta.ppf / .isf and statsmodels' proportion_confint(method="beta"): accurate to
    ~1e-15 for n <= 1e5, but off by up to ~1e-8 relative for n >= 1e6 (Boost's incomplete beta
    for a huge second parameter). Where scipy and we disagree there, the mpmath reference decides.
Upper bounds are compared with beta.isf(alpha, ...) (== beta.ppf(1 - alpha, ...)): the float
1 - alpha would carry a rounding error of relative size 1e-16/alpha into the reference.
"""
import functools
import math

import mpmath
import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast.bounds as B

HAVE_CPP = B._cbounds is not None
CPP = pytest.param("cpp", marks=pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built"))
BACKENDS = [CPP, "scipy"]

N_GRID = [1, 2, 3, 10, 100, 1000, 10**4, 10**5, 10**6, 10**9]
ALPHAS = [0.5, 0.1, 1e-3, 1e-6, 1e-12]
RTOL = 1e-12


def grid_ks(n, rng):
    ks = {0, 1, 2, n // 2, n - 2, n - 1, n, *rng.integers(0, n + 1, size=3).tolist()}
    return np.array(sorted(k for k in ks if 0 <= k <= n), dtype=np.int64)


def scipy_lower(k, n, alpha):
    k = np.asarray(k)
    with np.errstate(all="ignore"):
        return np.where(k > 0, scipy.stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)


def scipy_upper(k, n, alpha):
    k = np.asarray(k)
    with np.errstate(all="ignore"):
        return np.where(k < n, scipy.stats.beta.isf(alpha, k + 1, np.maximum(n - k, 1)), 1.0)


def rel_err(got, ref):
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return np.abs(got - ref) / np.where(ref != 0, np.abs(ref), 1.0)


# ---------------------------------------------------------------------------------------------
# 50-digit references
# ---------------------------------------------------------------------------------------------
DPS = 50


def _mp_cf(a, b, x):
    """I_x(a, b) by the plain DLMF 8.17.22 continued fraction at working precision."""
    if x > (a + 1) / (a + b + 2):
        return 1 - _mp_cf(b, a, 1 - x)
    front = mpmath.exp(a * mpmath.log(x) + b * mpmath.log1p(-x) - mpmath.log(a)
                       - mpmath.log(mpmath.beta(a, b)))
    c, d = mpmath.mpf(1), 1 / (1 - (a + b) * x / (a + 1))
    h, m, tol = d, 0, mpmath.mpf(10) ** (-DPS + 5)
    while True:
        m += 1
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1 / (1 + num * d)
            c = 1 + num / c
            h *= c * d
        if abs(c * d - 1) < tol:
            return front * h


def mp_ibeta(a, b, x):
    """Regularized I_x(a, b) for integers a, b >= 1 at DPS digits."""
    a, b, x = int(a), int(b), mpmath.mpf(x)
    if a + b <= 300:
        return mpmath.betainc(a, b, 0, x, regularized=True)
    n = a + b - 1  # I_x(a, b) = P(Binomial(n, x) >= a)
    if min(a, b) <= 300:
        term = lambda j: mpmath.binomial(n, j) * x**j * (1 - x) ** (n - j)  # noqa: E731
        if a <= b:
            return 1 - mpmath.fsum(term(j) for j in range(a))
        return mpmath.fsum(term(j) for j in range(a, n + 1))
    return _mp_cf(mpmath.mpf(a), mpmath.mpf(b), x)


@functools.lru_cache(maxsize=None)
def mp_quantile(a, b, alpha, upper_tail, start):
    """x with I_x(a, b) = alpha (or 1 - I_x(a, b) = alpha): bracket around `start`, then
    Illinois regula falsi at DPS digits."""
    with mpmath.workdps(DPS):
        alpha = mpmath.mpf(alpha)

        def f(x):  # increasing in x
            v = mp_ibeta(a, b, x)
            return (alpha - (1 - v)) if upper_tail else (v - alpha)

        x0, w = mpmath.mpf(start), mpmath.mpf(10) ** -9
        lo, hi = x0 * (1 - w), x0 + (1 - x0) * w
        flo, fhi = f(lo), f(hi)
        while flo > 0:
            lo /= 2
            flo = f(lo)
        while fhi < 0:
            hi = (1 + hi) / 2
            fhi = f(hi)
        side = 0
        for _ in range(200):
            x = (lo * fhi - hi * flo) / (fhi - flo)
            fx = f(x)
            if fx == 0 or hi - lo < x * mpmath.mpf(10) ** -40:
                return x
            if fx < 0:
                lo, flo = x, fx
                if side < 0:
                    fhi /= 2
                side = -1
            else:
                hi, fhi = x, fx
                if side > 0:
                    flo /= 2
                side = 1
        raise AssertionError("reference root finding did not converge")


def ref_lower(k, n, alpha, start):
    return mpmath.mpf(0) if k == 0 else mp_quantile(k, n - k + 1, alpha, False, float(start))


def ref_upper(k, n, alpha, start):
    return mpmath.mpf(1) if k == n else mp_quantile(k + 1, n - k, alpha, True, float(start))


def mp_rel(got, ref):
    return float(abs(mpmath.mpf(float(got)) - ref) / ref) if ref != 0 else abs(float(got))


# ---------------------------------------------------------------------------------------------
# Accuracy against scipy (and against mpmath where scipy itself is off)
# ---------------------------------------------------------------------------------------------

def test_cpp_extension_is_the_default_backend():
    assert HAVE_CPP, f"dualrs_fast._cbounds failed to import: {B._CPP_IMPORT_ERROR}"
    assert B.BACKEND == "cpp"


@pytest.mark.parametrize("backend", BACKENDS)
def test_grid_against_scipy_beta_quantiles(backend):
    rng = np.random.default_rng(12345)
    settled_by_mpmath = 0
    for n in N_GRID:
        ks = grid_ks(n, rng)
        for alpha in ALPHAS:
            for ours_fn, scipy_fn, ref_fn in (
                    (B.clopper_pearson_lower, scipy_lower, ref_lower),
                    (B.clopper_pearson_upper, scipy_upper, ref_upper)):
                ours = ours_fn(ks, n, alpha, backend=backend)
                ref = scipy_fn(ks, n, alpha)
                err = rel_err(ours, ref)
                if n <= 10**5:
                    assert err.max() <= RTOL, (ours_fn.__name__, n, alpha, ks[err.argmax()])
                    continue
                # n >= 1e6: scipy's own error reaches ~1e-8 here; the 50-digit reference decides.
                for i in np.flatnonzero(err > RTOL):
                    exact = ref_fn(int(ks[i]), n, alpha, ours[i])
                    assert mp_rel(ours[i], exact) <= 1e-13, (ours_fn.__name__, n, alpha, ks[i])
                    assert mp_rel(ref[i], exact) > RTOL / 2  # scipy, not we, is off
                    settled_by_mpmath += 1
    # (documents scipy's inaccuracy; if scipy improves, this number drops)
    assert settled_by_mpmath < 60


@pytest.mark.parametrize("backend", BACKENDS)
def test_exhaustive_k_for_n_200(backend):
    n, ks = 200, np.arange(201)
    for alpha in ALPHAS:
        lo = B.clopper_pearson_lower(ks, n, alpha, backend=backend)
        up = B.clopper_pearson_upper(ks, n, alpha, backend=backend)
        assert rel_err(lo, scipy_lower(ks, n, alpha)).max() <= RTOL
        assert rel_err(up, scipy_upper(ks, n, alpha)).max() <= RTOL
        assert lo[0] == 0.0 and up[-1] == 1.0
        assert np.all(np.diff(lo) > 0) and np.all(np.diff(up) > 0)
        assert np.all(lo < up)


@pytest.mark.parametrize("backend", BACKENDS)
def test_alpha_above_one_half_and_ppf_of_one_minus_alpha(backend):
    ks, n = np.array([1, 7, 50, 99, 100]), 100
    for alpha in (0.9, 0.5, 0.1, 1e-3):
        lo = B.clopper_pearson_lower(ks, n, alpha, backend=backend)
        assert rel_err(lo, scipy_lower(ks, n, alpha)).max() <= RTOL
        up = B.clopper_pearson_upper(ks - 1, n, alpha, backend=backend)
        with np.errstate(all="ignore"):  # upper == beta.ppf(1 - alpha, k+1, n-k) literally
            ref = scipy.stats.beta.ppf(1 - alpha, ks, n - ks + 1)
        assert rel_err(up, ref).max() <= RTOL


# ---------------------------------------------------------------------------------------------
# Soundness against 50-digit references
# ---------------------------------------------------------------------------------------------

HARD_CASES = [  # (k, n, alpha)
    (1, 1, 0.5), (1, 2, 1e-12), (2, 3, 1e-6), (5, 10, 0.1), (199, 200, 1e-12),
    (1, 10**9, 0.1), (2, 10**9, 1e-3), (10, 10**9, 1e-12), (3, 10**6, 1e-6),
    (10**9 - 1, 10**9, 1e-3), (10**9, 10**9, 1e-12), (10**6 - 7, 10**6, 1e-6),
    (146534, 10**6, 1e-12), (500_000, 10**6, 0.5), (999_000, 10**6, 1e-3),
    (12345, 54321, 1e-9), (70_000, 100_000, 0.37),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bounds_are_outward_of_the_exact_quantile(backend):
    for k, n, alpha in HARD_CASES:
        lo = B.clopper_pearson_lower(k, n, alpha, backend=backend)
        up = B.clopper_pearson_upper(k, n, alpha, backend=backend)
        exact_lo = ref_lower(k, n, alpha, lo if k else 0)
        exact_up = ref_upper(k, n, alpha, up if k < n else 1)
        assert mpmath.mpf(lo) <= exact_lo, (k, n, alpha, lo, exact_lo)   # never above the exact
        assert mpmath.mpf(up) >= exact_up, (k, n, alpha, up, exact_up)   # never below the exact
        assert mp_rel(lo, exact_lo) <= 1e-13 and mp_rel(up, exact_up) <= 1e-13


@pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
def test_rounding_is_needed_and_covers_the_error():
    """The raw (unrounded) C++ roots are accurate to far below the outward-rounding budget, and
    without the rounding some would be on the unsafe side (so the soundness test can fail)."""
    cb = B._cbounds
    unsafe_raw = 0
    for k, n, alpha in HARD_CASES:
        if k == 0:
            continue
        x, y = cb._solve_raw(k, n - k + 1, alpha)
        exact = ref_lower(k, n, alpha, x)
        t, t_exact = (x, exact) if x <= y else (y, 1 - exact)
        err_ulps = abs(mpmath.mpf(t) - t_exact) / mpmath.mpf(np.spacing(t))
        assert err_ulps <= cb._outward_ulps(t, alpha) / 4, (k, n, alpha, float(err_ulps))
        unsafe_raw += mpmath.mpf(x) > exact
    assert unsafe_raw > 0


# ---------------------------------------------------------------------------------------------
# Independent reference: statsmodels
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_statsmodels_clopper_pearson(backend):
    from statsmodels.stats.proportion import proportion_confint
    rng = np.random.default_rng(7)
    for n in (1, 5, 37, 1000, 10**5):
        ks = np.unique(np.concatenate([[0, n], rng.integers(0, n + 1, size=40)]))
        for alpha in (0.25, 1e-2, 1e-5, 1e-10):
            sm_lo, sm_up = proportion_confint(ks, n, alpha=2 * alpha, method="beta")
            lo = B.clopper_pearson_lower(ks, n, alpha, backend=backend)
            up = B.clopper_pearson_upper(ks, n, alpha, backend=backend)
            assert rel_err(lo, sm_lo).max() <= 1e-10
            assert rel_err(up, sm_up).max() <= 1e-10


# ---------------------------------------------------------------------------------------------
# Certified radius
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_matches_sigma_times_probit_of_lower_bound(backend):
    rng = np.random.default_rng(3)
    sigma = 0.5
    for n in (1, 10, 100, 1000, 10**5, 10**6):
        ks = np.unique(np.concatenate([[0, 1, n // 2, n // 2 + 1, n - 1, n],
                                       rng.integers(n // 2, n + 1, size=60)]))
        ks = ks[(ks >= 0) & (ks <= n)]
        for alpha in ALPHAS:
            radius, abstain = B.certified_radius(ks, n, alpha, sigma, backend=backend)
            lower = B.clopper_pearson_lower(ks, n, alpha, backend=backend)
            assert radius.dtype == np.float64 and abstain.dtype == bool
            assert radius.shape == abstain.shape == ks.shape
            np.testing.assert_array_equal(abstain, lower < 0.5)
            assert np.all(radius[abstain] == 0.0) and np.all(radius >= 0)
            p = scipy_lower(ks, n, alpha)
            expected = sigma * scipy.stats.norm.ppf(p)
            ok = ~abstain
            # p is only known to ~1 ulp (1.1e-16) near 1/2: allow that much absolute slack
            np.testing.assert_allclose(radius[ok], expected[ok], rtol=1e-10, atol=sigma * 1e-14)


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_near_one_uses_the_complement(backend):
    """k = n with n = 1e9: p = alpha**(1/n) = 1 - 2.8e-8 (alpha = 1e-12); the naive
    norm.ppf(p) would lose ~8 digits to 1 - p."""
    sigma = 0.25
    for k, n, alpha in [(10**9, 10**9, 1e-12), (10**9, 10**9, 1e-3), (10**9 - 3, 10**9, 1e-6),
                        (10**6, 10**6, 1e-9)]:
        radius, abstain = B.certified_radius(k, n, alpha, sigma, backend=backend)
        assert not abstain and np.isfinite(radius) and radius > 0
        with mpmath.workdps(DPS):
            if k == n:  # 1 - lower = 1 - alpha**(1/n)
                q = -mpmath.expm1(mpmath.log(alpha) / n)
            else:
                q = 1 - ref_lower(k, n, alpha, B.clopper_pearson_lower(k, n, alpha))
            z0 = mpmath.mpf(scipy.stats.norm.ppf(float(q)))
            z = mpmath.findroot(lambda t: mpmath.ncdf(t) - q, z0)
            exact = -sigma * z
        assert mpmath.mpf(float(radius)) <= exact
        assert mp_rel(radius, exact) <= 1e-13


@pytest.mark.parametrize("backend", BACKENDS)
def test_radius_broadcasting_and_scalars(backend):
    k = np.array([[900, 990], [400, 1000]])
    r, a = B.certified_radius(k, 1000, 1e-3, np.array([0.25, 0.5]), backend=backend)
    assert r.shape == a.shape == (2, 2)
    r1, _ = B.certified_radius(990, 1000, 1e-3, 0.5, backend=backend)
    assert r1.shape == () and float(r1) == r[0, 1]
    r2, a2 = B.certified_radius(torch.tensor([990, 10]), torch.tensor([1000, 1000]), 1e-3,
                                torch.tensor([0.5, 0.5], dtype=torch.float64), backend=backend)
    assert r2[0] == r[0, 1] and a2.tolist() == [False, True]
    assert B.certified_radius([], 10, 0.1, 0.5, backend=backend)[0].shape == (0,)


# ---------------------------------------------------------------------------------------------
# Input handling and validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_accepts_python_numpy_and_torch_counts(backend):
    ref = B.clopper_pearson_lower(37, 100, 0.01, backend=backend)
    assert isinstance(ref, float)
    for k, n in [(np.int32(37), np.int64(100)), (torch.tensor(37), 100),
                 (np.array(37, dtype=np.uint16), 100)]:
        assert B.clopper_pearson_lower(k, n, 0.01, backend=backend) == ref
    vec = B.clopper_pearson_lower(torch.tensor([37, 50]), np.array([100, 100]), 0.01,
                                  backend=backend)
    assert isinstance(vec, np.ndarray) and vec.shape == (2,) and vec[0] == ref
    assert B.clopper_pearson_upper([[1, 2]], 10, np.float32(0.25), backend=backend).shape == (1, 2)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k, n, alpha, sigma, exc", [
    (0, 0, 0.1, 1.0, ValueError), (-1, 10, 0.1, 1.0, ValueError), (11, 10, 0.1, 1.0, ValueError),
    (5, 10, 0.0, 1.0, ValueError), (5, 10, 1.0, 1.0, ValueError), (5, 10, -0.1, 1.0, ValueError),
    (5, 10, float("nan"), 1.0, ValueError), (5, 10, 1.5, 1.0, ValueError),
    (5, 2**53, 0.1, 1.0, ValueError), (5, 10, 0.1, 0.0, ValueError),
    (5, 10, 0.1, -1.0, ValueError), (5, 10, 0.1, float("inf"), ValueError),
    (5, 10, 0.1, float("nan"), ValueError), (5.0, 10, 0.1, 1.0, TypeError),
    (5, 10.5, 0.1, 1.0, TypeError), (True, 10, 0.1, 1.0, TypeError),
    (5, 10, "0.1", 1.0, TypeError), (5, 10, None, 1.0, TypeError),
    (5, 10, [0.1, 0.2], 1.0, TypeError), (5, 10, 0.1, "1", TypeError),
    (np.array([1, 2]), np.array([3, 4, 5]), 0.1, 1.0, ValueError),
])
def test_invalid_inputs_raise(backend, k, n, alpha, sigma, exc):
    with pytest.raises(exc):
        B.certified_radius(k, n, alpha, sigma, backend=backend)
    if not isinstance(sigma, str) and not (isinstance(sigma, float) and not (0 < sigma < math.inf)):
        with pytest.raises(exc):
            B.clopper_pearson_lower(k, n, alpha, backend=backend)
        with pytest.raises(exc):
            B.clopper_pearson_upper(k, n, alpha, backend=backend)


@pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
def test_extension_vectorised_api():
    cb = B._cbounds
    ks, n, alpha = np.array([[0, 3], [50, 100]], dtype=np.int64), 100, 1e-3
    lo = cb.lower_vec(ks, np.array([n]), alpha)            # k array against a single n
    assert lo.shape == ks.shape
    assert lo.tolist() == [[cb.lower(int(k), n, alpha) for k in row] for row in ks]
    ns = np.array([10, 100, 1000], dtype=np.int64)
    up = cb.upper_vec(np.array([7]), ns, alpha)             # single k against an n array
    assert up.tolist() == [cb.upper(7, int(m), alpha) for m in ns]
    pairs = cb.lower_vec(np.array([1, 5, 9]), np.array([2, 50, 10]), alpha)  # (k, n) pairs
    assert pairs.tolist() == [cb.lower(1, 2, alpha), cb.lower(5, 50, alpha), cb.lower(9, 10, alpha)]
    r, a = cb.radius_vec(np.array([99, 40]), np.array([n]), alpha, np.array([0.5]))
    assert (r[0], a[0]) == cb.radius(99, n, alpha, 0.5) and a[1] and r[1] == 0.0


@pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
def test_extension_validates_its_inputs():
    cb = B._cbounds
    for args in [(-1, 10, 0.1), (11, 10, 0.1), (1, 0, 0.1), (1, 10, 0.0), (1, 10, 1.0),
                 (1, 10, float("nan"))]:
        for fn in (cb.lower, cb.upper):
            with pytest.raises(ValueError):
                fn(*args)
    for sigma in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError):
            cb.radius(5, 10, 0.1, sigma)
    with pytest.raises(ValueError):
        cb.lower_vec(np.array([1, 11]), np.array([10]), 0.1)
    with pytest.raises(ValueError):
        cb.lower_vec(np.array([1, 2]), np.array([10, 10, 10]), 0.1)
    with pytest.raises(ValueError):
        cb.radius_vec(np.array([1, 2]), np.array([10]), 0.1, np.array([1.0, 1.0, 1.0]))


def test_backend_selection(monkeypatch):
    with pytest.raises(ValueError):
        B.clopper_pearson_lower(1, 2, 0.1, backend="fortran")
    monkeypatch.setattr(B, "_cbounds", None)
    with pytest.raises(RuntimeError, match="C\\+\\+ bounds backend is not available"):
        B.clopper_pearson_lower(1, 2, 0.1, backend="cpp")
    assert B.clopper_pearson_lower(1, 2, 0.1, backend="scipy") > 0


# ---------------------------------------------------------------------------------------------
# C++ building blocks
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not HAVE_CPP, reason="C++ extension not built")
def test_cpp_special_functions_against_mpmath():
    cb = B._cbounds
    rng = np.random.default_rng(0)
    ps = np.concatenate([10.0 ** rng.uniform(-300, -0.31, 200), rng.uniform(0.01, 0.99, 100),
                         0.5 + 10.0 ** rng.uniform(-15, -1, 30),
                         1 - 10.0 ** rng.uniform(-15, -1, 30)])
    with mpmath.workdps(30):
        for p in ps:
            z = cb.norm_ppf(p)
            exact = mpmath.findroot(lambda t: mpmath.ncdf(t) - mpmath.mpf(p), mpmath.mpf(z))
            assert mp_rel(z, exact) <= 2 * B._EPS, p
        for a, b in [(3, 7), (5, 10**6), (10, 10**5), (10**6, 10**6 + 1), (1, 10**9), (12, 30)]:
            exact = mpmath.log(mpmath.beta(a, b))
            assert mp_rel(cb.log_beta(a, b), exact) <= 4 * B._EPS, (a, b)
    with mpmath.workdps(DPS):
        for a, b, x in [(2, 10**9 - 1, 3.9e-9), (10**9 - 1, 2, 1 - 3e-9), (50, 51, 0.5),
                        (3, 7, 0.2), (146534, 853467, 0.1457), (4, 10**9 - 3, 1.2e-8)]:
            exact = mp_ibeta(a, b, x)
            assert mp_rel(cb.ibeta(a, b, x), exact) <= 1e-14, (a, b, x)
            assert mp_rel(cb.ibetac(a, b, x), 1 - exact) <= 1e-14, (a, b, x)


# ---------------------------------------------------------------------------------------------
# PREDICT's binomial test
# ---------------------------------------------------------------------------------------------

def test_binomial_test_abstains_matches_binomtest():
    rng = np.random.default_rng(1)
    n_a = rng.integers(0, 80, size=300)
    n_b = rng.integers(0, 80, size=300)
    n_a[:5], n_b[:5] = [0, 3, 10, 7, 1000], [0, 3, 0, 8, 900]
    for alpha in (0.05, 1e-3):
        got = B.binomial_test_abstains(n_a, n_b, alpha)
        want = [(a + b == 0) or scipy.stats.binomtest(int(a), int(a + b), 0.5).pvalue > alpha
                for a, b in zip(n_a, n_b)]
        np.testing.assert_array_equal(got, want)
    # exactly at a threshold: p-value of (n_a=9, n_b=0) is 2 / 2**9
    a = B.binomial_test_abstains(np.array([9, 9]), np.array([0, 0]), 2 / 2**9)
    b = scipy.stats.binomtest(9, 9, 0.5).pvalue > 2 / 2**9
    assert a.tolist() == [b, b]
    # 6 vs 0 votes: p-value 2/64 < 0.05; 5 vs 0: 2/32 > 0.05
    assert B.binomial_test_abstains(torch.tensor([6, 5]), torch.tensor([0, 0]), 0.05).tolist() \
        == [False, True]
    assert B.binomial_test_abstains(0, 0, 0.05)
    with pytest.raises(ValueError):
        B.binomial_test_abstains(-1, 3, 0.05)
    with pytest.raises(TypeError):
        B.binomial_test_abstains(1.5, 3, 0.05)
    with pytest.raises(ValueError):
        B.binomial_test_abstains(1, 3, 1.0)
