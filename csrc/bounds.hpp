// Clopper-Pearson bounds and certified radii: the statistics of a certificate.
//
// A certificate is a security claim, so every reported bound is rounded OUTWARD: a lower
// bound is never above the exact value, an upper bound never below it (see bounds.cpp for
// the error model and the number of ulps).
#pragma once

#include <cstdint>

namespace dualrs {

// One-sided Clopper-Pearson lower bound: the alpha-quantile of Beta(k, n-k+1); 0 for k == 0.
// With probability >= 1 - alpha over Binomial(n, p) draws, p >= lower(k, n, alpha).
double cp_lower(std::int64_t k, std::int64_t n, double alpha);

// One-sided Clopper-Pearson upper bound: the (1-alpha)-quantile of Beta(k+1, n-k); 1 for k == n.
double cp_upper(std::int64_t k, std::int64_t n, double alpha);

struct RadiusResult {
    double radius;   // sigma * Phi^-1(p_lower), rounded down; 0 when abstaining
    bool abstain;    // p_lower < 0.5
    double p_lower;  // cp_lower(k, n, alpha)
};

// Cohen et al.'s CERTIFY radius from k top-class votes among n samples.
// Phi^-1(p_lower) is computed as -Phi^-1(q), q = cp_upper(n-k, n, alpha) = 1 - p_lower
// (avoids the cancellation of 1 - p_lower for p_lower near 1).
RadiusResult certified_radius(std::int64_t k, std::int64_t n, double alpha, double sigma);

// Building blocks (exposed for tests).
double norm_ppf(double p);                          // Phi^-1, ~1 ulp
double log_beta(double a, double b);                // log B(a, b), accurate for large a, b
double ibeta(double a, double b, double x);         // regularized incomplete beta I_x(a, b)
double ibetac(double a, double b, double x);        // 1 - I_x(a, b), computed without cancellation

// Input validation; throw std::invalid_argument (-> ValueError in Python).
void check_counts(std::int64_t k, std::int64_t n);
void check_alpha(double alpha);
void check_sigma(double sigma);

}  // namespace dualrs
