// Clopper-Pearson bounds and certified radii (see bounds.hpp).
//
// Method
//   I_x(a, b) (regularized incomplete beta) is evaluated in log space:
//       log I_x(a, b) = log(x^a y^b / B(a, b)) - log a + log CF(a, b, x),      y = 1 - x,
//   with the continued fraction CF (DLMF 8.17.22) evaluated by the modified Lentz method on the
//   side where it converges fast (x < (a+1)/(a+b+2), else the complement via I_y(b, a)).
//   The prefactor log(x^a y^b / B(a, b)) is never formed as a*log(x) + b*log(y) - lbeta(a, b)
//   for large a, b (that difference of huge numbers loses up to ~1e-8 relative at n ~ 1e9).
//   Instead, with s = a + b, x0 = a/s, y0 = b/s and lambda = a - s*x (one fma):
//       log(x^a y^b / B) = -(a*rlog1(x/x0 - 1) + b*rlog1(y/y0 - 1)) + K(a, b),
//   where rlog1(e) = e - log(1+e) (the linear terms cancel exactly since a*e1 + b*e2 = 0)
//   and K(a, b) = a log x0 + b log y0 - log B(a, b) comes from Stirling's series with the
//   remainder c(z) = lgamma(z) - [(z-1/2) log z - z + log sqrt(2 pi)] summed as a series
//   (the lgammacor / algdiv idea of DiDonato & Morris and R's lbeta), so K has no cancellation.
//
//   Quantiles are found by a safeguarded Halley iteration on g(u) = log I - log alpha in the
//   log of the smaller of x and 1-x (so bounds near 0 and near 1 both keep full relative
//   precision), inside a bracket that falls back to (geometric) bisection.
//
// Soundness: outward rounding (see outward_ulps below). No -ffast-math (CMakeLists.txt).
#include "bounds.hpp"

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace dualrs {
namespace {

constexpr double kEps = std::numeric_limits<double>::epsilon();       // 2^-52
constexpr double kLnSqrt2Pi = 0.91893853320467274178032973640562;      // log(sqrt(2 pi))
constexpr double kSqrt2Pi = 2.5066282746310005024157652848110;
constexpr double kSqrt1_2 = 0.70710678118654752440084436210485;
constexpr double kInf = std::numeric_limits<double>::infinity();
constexpr double kLn2 = 0.69314718055994530941723212145818;
constexpr double kStirlingMin = 10.0;  // Stirling series used for arguments >= this

// ---------------------------------------------------------------------------------------------
// Special functions
// ---------------------------------------------------------------------------------------------

// Stirling remainder c(z) = lgamma(z) - ((z - 1/2) log z - z + log sqrt(2 pi)) for z >= 10:
// sum_{k=1..10} B_2k / (2k (2k-1) z^(2k-1)); the first omitted term is < 2e-20 at z = 10.
double stirling_corr(double z) {
    static const double c[] = {
        1.0 / 12.0,           -1.0 / 360.0,    1.0 / 1260.0,          -1.0 / 1680.0,
        1.0 / 1188.0,         -691.0 / 360360.0, 1.0 / 156.0,          -3617.0 / 122400.0,
        43867.0 / 244188.0,   -174611.0 / 125400.0};
    const double r = 1.0 / (z * z);
    double s = c[9];
    for (int i = 8; i >= 0; --i) s = s * r + c[i];
    return s / z;
}

// rlog1(e) = e - log(1 + e), accurate also for small |e| (no cancellation).
double rlog1(double e) {
    if (std::fabs(e) > 0.5) return e - std::log1p(e);
    // log(1+e) = 2 atanh(u), u = e / (2 + e); e - 2u = e*u, so
    // rlog1(e) = e*u - 2 u^3 (1/3 + u^2/5 + u^4/7 + ...), |u| <= 1/3.
    const double u = e / (2.0 + e);
    const double u2 = u * u;
    double term = 1.0, sum = 0.0;
    for (int j = 0; j < 40; ++j) {
        const double add = term / (2 * j + 3);
        sum += add;
        if (add < 1e-18 * sum) break;
        term *= u2;
    }
    return e * u - 2.0 * u * u2 * sum;
}

// log(1 - exp(l)) for l < 0, accurate on both sides of -log 2.
double log1mexp(double l) {
    return l > -kLn2 ? std::log(-std::expm1(l)) : std::log1p(-std::exp(l));
}

// K(a, b) = a log(a/s) + b log(b/s) - log B(a, b), s = a + b (moderate size, no cancellation).
double front_const(double a, double b) {
    const double s = a + b;
    if (a >= kStirlingMin && b >= kStirlingMin) {
        return 0.5 * std::log(a * (b / s)) - kLnSqrt2Pi + stirling_corr(s) - stirling_corr(a) -
               stirling_corr(b);
    }
    if (a < kStirlingMin && b >= kStirlingMin) {
        return a * std::log(a) - a - std::lgamma(a) - 0.5 * std::log1p(a / b) + stirling_corr(s) -
               stirling_corr(b);
    }
    if (b < kStirlingMin && a >= kStirlingMin) {
        return b * std::log(b) - b - std::lgamma(b) - 0.5 * std::log1p(b / a) + stirling_corr(s) -
               stirling_corr(a);
    }
    return a * std::log(a / s) + b * std::log(b / s) - log_beta(a, b);
}

// log(x^a y^b / B(a, b)), y = 1 - x; the smaller of x, y must be the exact one.
// lambda = a - (a + b) x.
double log_front(double a, double b, double x, double y, double lam) {
    if (x <= 0.0 || y <= 0.0) return -kInf;
    const double s = a + b;
    if (a < kStirlingMin && b < kStirlingMin) {
        return a * std::log(x) + b * std::log(y) - log_beta(a, b);
    }
    const double e1 = -lam / a;  // x/x0 - 1
    const double e2 = lam / b;   // y/y0 - 1
    const double r1 = std::fabs(e1) <= 0.5 ? rlog1(e1) : e1 - std::log(x * (s / a));
    const double r2 = std::fabs(e2) <= 0.5 ? rlog1(e2) : e2 - std::log(y * (s / b));
    return -(a * r1 + b * r2) + front_const(a, b);
}

// Continued fraction of I_x(a, b) = x^a y^b / (a B(a,b)) * f, with the Lentz-evaluated
// even contraction of DLMF 8.17.22,
//     f = 1 / (beta_0 + alpha_1 / (beta_1 + alpha_2 / (beta_2 + ...))),
//     beta_0  = (1 + lambda) / (a + 1),
//     beta_m  = ((a - 1)(1 + lambda) + 2m (a + m)(1 + y)) / ((a + 2m - 1)(a + 2m + 1)),
//     alpha_m = m (b - m)(a + m - 1)(a + b + m - 1) x^2 / ((a + 2m - 2)(a + 2m - 1)^2 (a + 2m)),
// lambda = a - (a + b) x (passed in, computed once from the exact coordinate). Written with
// lambda, every term is a sum of non-negative numbers for x < (a+1)/(a+b+2) (<=> 1 + lambda > 2x),
// so nothing cancels even when x sits next to the mean a/(a+b) or 1 - x is the exact coordinate.
double beta_cf(double a, double b, double x, double y, double lam) {
    constexpr double tiny = 1e-300;
    constexpr int max_iter = 10'000'000;
    const double s = a + b, x2 = x * x, opy = 1.0 + y, opl = 1.0 + lam;
    double F = opl / (a + 1.0);
    if (std::fabs(F) < tiny) F = tiny;
    double C = F, D = 0.0;
    for (int m = 1; m <= max_iter; ++m) {
        const double a2m = a + 2.0 * m;
        const double alpha = m * (b - m) * ((a + m - 1.0) * (s + m - 1.0)) * x2 /
                             ((a2m - 2.0) * (a2m - 1.0) * ((a2m - 1.0) * a2m));
        const double beta =
            ((a - 1.0) * opl + 2.0 * m * (a + m) * opy) / ((a2m - 1.0) * (a2m + 1.0));
        D = beta + alpha * D;
        if (std::fabs(D) < tiny) D = tiny;
        D = 1.0 / D;
        C = beta + alpha / C;
        if (std::fabs(C) < tiny) C = tiny;
        const double del = C * D;
        F *= del;
        if (std::fabs(del - 1.0) <= 0.5 * kEps) break;
    }
    return 1.0 / F;
}

struct LogBeta {
    double lower;  // log I_x(a, b)
    double upper;  // log(1 - I_x(a, b))
    double front;  // log(x^a y^b / B(a, b))
};

LogBeta log_ibeta(double a, double b, double x, double y) {
    LogBeta r;
    if (x <= 0.0) return {-kInf, 0.0, -kInf};
    if (y <= 0.0) return {0.0, -kInf, -kInf};
    // lambda = a - s*x = s*y - b, from the exact (smaller) coordinate with one rounding (fma).
    const double s = a + b;
    const double lam = (x <= y) ? std::fma(-s, x, a) : std::fma(s, y, -b);
    r.front = log_front(a, b, x, y, lam);
    if (1.0 + lam > 2.0 * x) {  // x < (a+1)/(a+b+2): the fraction for I_x(a, b) converges fast
        r.lower = r.front + std::log(beta_cf(a, b, x, y, lam) / a);
        r.upper = log1mexp(r.lower);
    } else {                    // else the one for 1 - I_x(a, b) = I_y(b, a) (lambda -> -lambda)
        r.upper = r.front + std::log(beta_cf(b, a, y, x, -lam) / b);
        r.lower = log1mexp(r.upper);
    }
    return r;
}

// ---------------------------------------------------------------------------------------------
// Quantile of the lower tail: I_x(a, b) = alpha
// ---------------------------------------------------------------------------------------------

// A point of (0, 1) as the pair (x, 1 - x); the smaller coordinate is exact ("master").
struct Pt {
    double x, y;
};

Pt from_x(double x) { return {x, 1.0 - x}; }
Pt from_y(double y) { return {1.0 - y, y}; }
bool x_master(const Pt& p) { return p.x <= 0.5; }
// Strict order along (0, 1) using the exact coordinates.
bool less(const Pt& p, const Pt& q) {
    const bool px = x_master(p), qx = x_master(q);
    if (px && qx) return p.x < q.x;
    if (!px && !qx) return p.y > q.y;
    return px;  // p on the x side, q on the y side
}
Pt normalize_x(double x) { return x <= 0.5 ? from_x(x) : from_y(1.0 - x); }  // 1-x exact if x>=.5
Pt normalize_y(double y) { return y <= 0.5 ? from_y(y) : from_x(1.0 - y); }

Pt bisect(const Pt& lo, const Pt& hi) {
    constexpr double floor_ = DBL_MIN;
    if (x_master(lo) && x_master(hi)) {
        const double l = std::max(lo.x, floor_), h = hi.x;
        return from_x(h > 4.0 * l ? std::sqrt(l) * std::sqrt(h) : 0.5 * (lo.x + hi.x));
    }
    if (!x_master(lo) && !x_master(hi)) {
        const double l = std::max(hi.y, floor_), h = lo.y;
        return from_y(h > 4.0 * l ? std::sqrt(l) * std::sqrt(h) : 0.5 * (lo.y + hi.y));
    }
    return normalize_x(0.5 * (lo.x + hi.x));
}

// Initial guess (Abramowitz & Stegun 26.5.22 / Cornish-Fisher type) for a, b > 1, alpha <= 0.5,
// or the small-x tail I_x(a, b) ~ x^a / (a B(a, b)) when that is smaller.
Pt initial_guess(double a, double b, double alpha) {
    const double z = -norm_ppf(alpha);  // upper-tail deviate, >= 0
    const double lam = (z * z - 3.0) / 6.0;
    const double s = 1.0 / (2.0 * a - 1.0), t = 1.0 / (2.0 * b - 1.0);
    const double h = 2.0 / (s + t);
    const double w = z * std::sqrt(h + lam) / h - (t - s) * (lam + 5.0 / 6.0 - 2.0 / (3.0 * h));
    const double L = std::log(b / a) + 2.0 * w;  // x = 1 / (1 + e^L)
    Pt p = L > 0 ? normalize_x(std::exp(-L) / (1.0 + std::exp(-L)))
                 : normalize_y(std::exp(L) / (1.0 + std::exp(L)));
    // Far lower tail (x b << 1, so y^b ~ 1): I_x(a, b) ~ x^a / (a B(a, b)).
    const double xt = std::exp((std::log(alpha) + std::log(a) + log_beta(a, b)) / a);
    if (xt * b < 0.25 && x_master(p) && xt < p.x) p = from_x(xt);
    if (!(p.x > 0.0 && p.y > 0.0)) p = from_x(0.5);
    return p;
}

thread_local int g_last_iterations = 0;  // diagnostics only (not part of the API)

// Solve I_x(a, b) = alpha for a, b >= 1, 0 < alpha < 1. Returns the pair (x, 1 - x).
Pt solve_lower_tail(double a, double b, double alpha) {
    if (alpha > 0.5) {  // I_x(a,b) = alpha  <=>  I_y(b,a) = 1 - alpha (exact for alpha >= 1/2)
        const Pt q = solve_lower_tail(b, a, 1.0 - alpha);
        return {q.y, q.x};
    }
    g_last_iterations = 0;
    // Closed forms.
    if (a == 1.0 && b == 1.0) return from_x(alpha);
    if (b == 1.0) {  // x^a = alpha
        const double l = std::log(alpha) / a;
        return {std::exp(l), -std::expm1(l)};
    }
    if (a == 1.0) {  // 1 - y^b = alpha
        const double l = std::log1p(-alpha) / b;
        return {-std::expm1(l), std::exp(l)};
    }
    const double log_alpha = std::log(alpha);
    const double noise = 4.0 * kEps * (1.0 + std::fabs(log_alpha));
    Pt lo{0.0, 1.0}, hi{1.0, 0.0};
    Pt p = initial_guess(a, b, alpha);
    for (int it = 0; it < 400; ++it) {
        ++g_last_iterations;
        const LogBeta e = log_ibeta(a, b, p.x, p.y);
        const double g = e.lower - log_alpha;
        if (g == 0.0) return p;
        if (g < 0.0) lo = p; else hi = p;
        const bool xm = x_master(p);
        // d g / d u for u = log(master): x*rho/I (master x) or -y*rho/I (master y),
        // rho = x^(a-1) y^(b-1) / B = exp(front) / (x y).
        const double gu = xm ? std::exp(e.front - std::log(p.y) - e.lower)
                             : -std::exp(e.front - std::log(p.x) - e.lower);
        const double hprime = (a - 1.0) / p.x - (b - 1.0) / p.y;  // (log rho)'
        const double guu = xm ? gu * (1.0 + p.x * hprime - gu) : gu * (1.0 - p.y * hprime - gu);
        Pt cand{};
        bool ok = false;
        double du = 0.0;
        if (std::isfinite(gu) && gu != 0.0) {
            const double newton = -g / gu;
            // Halley: du = (-g/gu) / (1 - g guu / (2 gu^2))
            const double den = 1.0 + 0.5 * newton * guu / gu;
            du = (std::isfinite(den) && den > 0.5 && den < 2.0) ? newton / den : newton;
            du = std::max(-50.0, std::min(50.0, du));
            if (xm) {
                const double xn = p.x + p.x * std::expm1(du);
                if (xn > 0.0 && xn < 1.0) { cand = normalize_x(xn); ok = true; }
            } else {
                const double yn = p.y + p.y * std::expm1(du);
                if (yn > 0.0 && yn < 1.0) { cand = normalize_y(yn); ok = true; }
            }
            // A step below the rounding level, or a residual at the noise level of the log-space
            // evaluation: p (or its neighbour) is the root to working precision.
            if (ok && (std::fabs(du) <= 4.0 * kEps || std::fabs(g) <= noise)) return cand;
            if (ok && !(less(lo, cand) && less(cand, hi))) ok = false;
        }
        if (!ok) {
            cand = bisect(lo, hi);
            if (!(less(lo, cand) && less(cand, hi))) return p;  // bracket exhausted (adjacent)
        }
        if (cand.x == p.x && cand.y == p.y) return p;
        p = cand;
    }
    // Not reached in practice (bisection alone needs < 150 steps). I_lo(a, b) < alpha, so lo is
    // below the root: conservative for every use (lower bound x, and 1 - x for upper bounds).
    return lo;
}

// ---------------------------------------------------------------------------------------------
// Outward rounding
// ---------------------------------------------------------------------------------------------
//
// Error model. The quantile solves g = log I - log(alpha) = 0 in the log of its exact coordinate
// t = min(x, 1-x). g is evaluated with an absolute error of a few eps times the size of its terms,
// which in the tails is ~ a*|log t| + |log alpha| because log(t) and log(alpha) are themselves
// rounded. Dividing by the slope dg/dlog t >= ~0.7 (the Beta density is log-concave and the
// solved tail has alpha <= 1/2) bounds the relative error of t by about
//     eps * (C0 + 2*|log t| + 2*|log alpha|).
// Measured against 50-digit mpmath references over ~3000 random cases (n <= 2e9, alpha from
// 1e-300 to 1 - 1e-15): max 14 eps for alpha >= 1e-15 (331 eps at alpha ~ 1e-267), never more
// than 13% of the budget below. We round outward by
//     outward_ulps(t) = 16 + ceil(4*|log t| + 4*|log alpha'|)      ulps of t,
// with alpha' = min(alpha, 1 - alpha), the target of the tail actually solved,
// e.g. 22 ulps (5e-15 relative) for t = 1/2 at alpha = 1/2, 63 ulps (1.1e-14) for t = 0.01 at
// alpha = 1e-3, 320 ulps (6e-14) for t = 1e-21 at alpha = 1e-12. For a bound x > 1/2 the exact
// coordinate is t = 1 - x: t is moved by outward_ulps(t) the other way, x = 1 - t is rounded to
// nearest, and x gets 2 more ulps outward (covers that rounding, and the ~1 ulp absolute error
// of the scipy fallback, which iterates on x itself). dualrs_fast/bounds.py applies the same rule.
int outward_ulps(double t, double alpha) {
    const double lt = (t > 0.0) ? std::fabs(std::log(t)) : 745.0;
    const double la = std::fabs(std::log(std::min(alpha, 1.0 - alpha)));  // the solved tail's
    return 16 + static_cast<int>(std::ceil(4.0 * lt + 4.0 * la));
}

// Move a non-negative double by `ulps` representable numbers (== repeated std::nextafter):
// for non-negative doubles the IEEE-754 bit pattern, read as an integer, is monotone.
double step_down(double v, int ulps) {
    if (!(v > 0.0)) return 0.0;
    std::int64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits = std::max<std::int64_t>(bits - ulps, 0);
    std::memcpy(&v, &bits, sizeof bits);
    return v;
}
double step_up(double v, int ulps) {
    if (!(v < 1.0)) return 1.0;
    v = std::max(v, 0.0);
    std::int64_t bits;
    std::memcpy(&bits, &v, sizeof bits);
    bits += ulps;
    std::memcpy(&v, &bits, sizeof bits);
    return std::min(v, 1.0);
}

// The bound x of a root p = (x, 1 - x), rounded down (lower bounds) or up (upper bounds).
double outward(const Pt& p, double alpha, bool up) {
    if (p.x <= 0.5) return up ? step_up(p.x, outward_ulps(p.x, alpha))
                              : step_down(p.x, outward_ulps(p.x, alpha));
    const int n = outward_ulps(p.y, alpha);
    const double t = up ? step_down(p.y, n) : step_up(p.y, n);
    return up ? step_up(1.0 - t, 2) : step_down(1.0 - t, 2);
}

// Ulps by which a radius sigma * Phi^-1(q) is rounded down: Phi^-1 has a relative error
// < 1.5 eps (measured against mpmath over 1e-307 <= p < 1; scipy's ndtri < 2 eps), the product
// adds 1/2 ulp; 8 ulps >= 4 eps covers both with a factor-of-2 margin.
constexpr int kRadiusUlps = 8;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------

double log_beta(double a, double b) {
    const double p = std::min(a, b), q = std::max(a, b);
    if (p >= kStirlingMin) {
        const double corr = stirling_corr(p) + stirling_corr(q) - stirling_corr(p + q);
        return -0.5 * std::log(q) + kLnSqrt2Pi + corr + (p - 0.5) * std::log(p / (p + q)) +
               q * std::log1p(-p / (p + q));
    }
    if (q >= kStirlingMin) {
        const double corr = stirling_corr(q) - stirling_corr(p + q);
        return std::lgamma(p) + corr + p - p * std::log(p + q) +
               (q - 0.5) * std::log1p(-p / (p + q));
    }
    return std::log(std::tgamma(p) * (std::tgamma(q) / std::tgamma(p + q)));
}

double norm_ppf(double p) {
    if (std::isnan(p) || p < 0.0 || p > 1.0) return std::numeric_limits<double>::quiet_NaN();
    if (p == 0.0) return -kInf;
    if (p == 1.0) return kInf;
    // Acklam's rational approximation (relative error < 1.2e-9) ...
    static const double A[] = {-3.969683028665376e+01, 2.209460984245205e+02,
                               -2.759285104469687e+02, 1.383577518672690e+02,
                               -3.066479806614716e+01, 2.506628277459239e+00};
    static const double B[] = {-5.447609879822406e+01, 1.615858368580409e+02,
                               -1.556989798598866e+02, 6.680131188771972e+01,
                               -1.328068155288572e+01};
    static const double C[] = {-7.784894002430293e-03, -3.223964580411365e-01,
                               -2.400758277161838e+00, -2.549732539343734e+00,
                               4.374664141464968e+00,  2.938163982698783e+00};
    static const double D[] = {7.784695709041462e-03, 3.224671290700398e-01,
                               2.445134137142996e+00, 3.754408661907416e+00};
    constexpr double plow = 0.02425;
    double x;
    if (p < plow || p > 1.0 - plow) {
        const double q = std::sqrt(-2.0 * (p < plow ? std::log(p) : std::log1p(-p)));
        x = (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) /
            ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0);
        if (p > 0.5) x = -x;
    } else {
        const double q = p - 0.5, r = q * q;
        x = (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q /
            (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0);
    }
    // ... refined by Halley steps on e = Phi(x) - p, with Phi from erf near the centre (relative
    // accuracy for small |x|) and from erfc in the tails (relative accuracy for small p).
    for (int it = 0; it < 2; ++it) {
        double u;  // (Phi(x) - p) / phi(x)
        if (p > 0.1 && p < 0.9) {
            u = (0.5 * std::erf(x * kSqrt1_2) - (p - 0.5)) * kSqrt2Pi * std::exp(0.5 * x * x);
        } else {  // tails, t = min(p, 1-p): u = +-r t sqrt(2 pi) e^{x^2/2}, r = Phi(-|x|)/t - 1,
                  // with e^{x^2/2} folded into the exponent with log t (no overflow for tiny t)
            const double t = p <= 0.1 ? p : 1.0 - p;  // exact for p >= 0.9
            const double r = (0.5 * std::erfc((p <= 0.1 ? -x : x) * kSqrt1_2) - t) / t;
            u = (p <= 0.1 ? r : -r) * std::exp(std::log(t) + 0.5 * x * x + kLnSqrt2Pi);
        }
        if (!std::isfinite(u)) break;
        x = x - u / (1.0 + 0.5 * x * u);
    }
    return x;
}

namespace {
void check_shape(double a, double b) {
    if (!(a > 0.0 && b > 0.0 && std::isfinite(a) && std::isfinite(b)))
        throw std::invalid_argument("beta parameters must be positive and finite");
}
}  // namespace

double ibeta(double a, double b, double x) {
    check_shape(a, b);
    if (x <= 0.0) return 0.0;
    if (x >= 1.0) return 1.0;
    const Pt p = normalize_x(x);
    return std::exp(log_ibeta(a, b, p.x, p.y).lower);
}

double ibetac(double a, double b, double x) {
    check_shape(a, b);
    if (x <= 0.0) return 1.0;
    if (x >= 1.0) return 0.0;
    const Pt p = normalize_x(x);
    return std::exp(log_ibeta(a, b, p.x, p.y).upper);
}

void check_counts(std::int64_t k, std::int64_t n) {
    if (n < 1) throw std::invalid_argument("n must be >= 1, got " + std::to_string(n));
    if (n >= (std::int64_t(1) << 53))  // n + 1 must be exact in double
        throw std::invalid_argument("n must be < 2**53, got " + std::to_string(n));
    if (k < 0 || k > n)
        throw std::invalid_argument("k must satisfy 0 <= k <= n, got k=" + std::to_string(k) +
                                    ", n=" + std::to_string(n));
}

void check_alpha(double alpha) {
    if (!(alpha > 0.0 && alpha < 1.0))
        throw std::invalid_argument("alpha must be in (0, 1), got " + std::to_string(alpha));
}

void check_sigma(double sigma) {
    if (!(sigma > 0.0 && std::isfinite(sigma)))
        throw std::invalid_argument("sigma must be positive and finite, got " +
                                    std::to_string(sigma));
}

double cp_lower(std::int64_t k, std::int64_t n, double alpha) {
    check_counts(k, n);
    check_alpha(alpha);
    if (k == 0) return 0.0;
    const Pt r = solve_lower_tail(double(k), double(n - k + 1), alpha);
    return outward(r, alpha, /*up=*/false);
}

double cp_upper(std::int64_t k, std::int64_t n, double alpha) {
    check_counts(k, n);
    check_alpha(alpha);
    if (k == n) return 1.0;
    // 1 - I_x(k+1, n-k) = alpha  <=>  I_y(n-k, k+1) = alpha, y = 1 - x.
    const Pt r = solve_lower_tail(double(n - k), double(k + 1), alpha);
    return outward({r.y, r.x}, alpha, /*up=*/true);
}

RadiusResult certified_radius(std::int64_t k, std::int64_t n, double alpha, double sigma) {
    check_counts(k, n);
    check_alpha(alpha);
    check_sigma(sigma);
    if (k == 0) return {0.0, true, 0.0};
    const Pt r = solve_lower_tail(double(k), double(n - k + 1), alpha);
    const double p_lower = outward(r, alpha, /*up=*/false);
    if (p_lower < 0.5) return {0.0, true, p_lower};
    // q = 1 - p_lower = cp_upper(n - k, n, alpha): the same root, its exact coordinate.
    const double q = outward({r.y, r.x}, alpha, /*up=*/true);
    double radius = -sigma * norm_ppf(q);
    radius = radius > 0.0 ? step_down(radius, kRadiusUlps) : 0.0;
    return {radius, false, p_lower};
}

int last_iterations() { return g_last_iterations; }

// Diagnostics: the un-rounded root (x, 1 - x) of I_x(a, b) = alpha, before outward rounding.
std::pair<double, double> solve_raw(double a, double b, double alpha) {
    check_shape(a, b);
    check_alpha(alpha);
    if (a < 1.0 || b < 1.0) throw std::invalid_argument("solve_raw needs a, b >= 1");
    const Pt p = solve_lower_tail(a, b, alpha);
    return {p.x, p.y};
}

int outward_rounding_ulps(double t, double alpha) { return outward_ulps(t, alpha); }

}  // namespace dualrs
