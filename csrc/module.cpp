// pybind11 bindings: dualrs_fast._cbounds (scalar and vectorised Clopper-Pearson bounds, radii).
// std::invalid_argument from the checks becomes ValueError in Python.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "bounds.hpp"

namespace py = pybind11;

namespace dualrs {  // diagnostics defined in bounds.cpp, not part of the C++ API
int last_iterations();
std::pair<double, double> solve_raw(double a, double b, double alpha);
int outward_rounding_ulps(double t, double alpha);
}

namespace {

using I64Array = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>;
using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::vector<py::ssize_t> shape_of(const py::array& a) {
    return std::vector<py::ssize_t>(a.shape(), a.shape() + a.ndim());
}

// n (and sigma) may be a single value or have as many elements as k; the result takes the
// shape of the larger operand (k's when sizes match).
py::ssize_t paired_size(py::ssize_t nk, py::ssize_t nn, const char* what) {
    if (nk == nn || nn == 1) return nk;
    if (nk == 1) return nn;
    throw std::invalid_argument(std::string("k and ") + what +
                                " must have the same number of elements or one of them a "
                                "single element, got " + std::to_string(nk) + " and " +
                                std::to_string(nn));
}

template <double (*F)(std::int64_t, std::int64_t, double)>
py::array_t<double> bound_vec(const I64Array& k, const I64Array& n, double alpha) {
    dualrs::check_alpha(alpha);
    const py::ssize_t nk = k.size(), nn = n.size();
    const py::ssize_t size = paired_size(nk, nn, "n");
    py::array_t<double> out(size == nk ? shape_of(k) : shape_of(n));
    const std::int64_t* kp = k.data();
    const std::int64_t* np_ = n.data();
    double* op = out.mutable_data();
    // Validate everything first (so no partial work is done on bad input), then compute.
    for (py::ssize_t i = 0; i < size; ++i)
        dualrs::check_counts(kp[nk == 1 ? 0 : i], np_[nn == 1 ? 0 : i]);
    {
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < size; ++i)
            op[i] = F(kp[nk == 1 ? 0 : i], np_[nn == 1 ? 0 : i], alpha);
    }
    return out;
}

std::pair<py::array_t<double>, py::array_t<bool>> radius_vec(const I64Array& k, const I64Array& n,
                                                             double alpha, const F64Array& sigma) {
    dualrs::check_alpha(alpha);
    const py::ssize_t nk = k.size(), nn = n.size(), ns = sigma.size();
    const py::ssize_t size = paired_size(nk, nn, "n");
    if (!(ns == 1 || ns == size))
        throw std::invalid_argument("sigma must be a scalar or have as many elements as k, got " +
                                    std::to_string(ns) + " and " + std::to_string(size));
    const auto shape = size == nk ? shape_of(k) : shape_of(n);
    py::array_t<double> radius(shape);
    py::array_t<bool> abstain(shape);
    const std::int64_t* kp = k.data();
    const std::int64_t* np_ = n.data();
    const double* sp = sigma.data();
    for (py::ssize_t i = 0; i < size; ++i) {
        dualrs::check_counts(kp[nk == 1 ? 0 : i], np_[nn == 1 ? 0 : i]);
        dualrs::check_sigma(sp[ns == 1 ? 0 : i]);
    }
    double* rp = radius.mutable_data();
    bool* ap = abstain.mutable_data();
    {
        py::gil_scoped_release release;
        for (py::ssize_t i = 0; i < size; ++i) {
            const auto r = dualrs::certified_radius(kp[nk == 1 ? 0 : i], np_[nn == 1 ? 0 : i],
                                                    alpha, sp[ns == 1 ? 0 : i]);
            rp[i] = r.radius;
            ap[i] = r.abstain;
        }
    }
    return {radius, abstain};
}

}  // namespace

PYBIND11_MODULE(_cbounds, m) {
    m.doc() = "One-sided Clopper-Pearson bounds and certified radii (outward-rounded, C++).";

    m.def("lower", &dualrs::cp_lower, py::arg("k"), py::arg("n"), py::arg("alpha"),
          "Clopper-Pearson lower bound: Beta(k, n-k+1).ppf(alpha), 0 for k == 0; rounded down.");
    m.def("upper", &dualrs::cp_upper, py::arg("k"), py::arg("n"), py::arg("alpha"),
          "Clopper-Pearson upper bound: Beta(k+1, n-k).ppf(1-alpha), 1 for k == n; rounded up.");
    m.def("lower_vec", &bound_vec<dualrs::cp_lower>, py::arg("k"), py::arg("n"), py::arg("alpha"),
          "Vectorised lower(): int64 arrays k and n (n of size 1 or k.size).");
    m.def("upper_vec", &bound_vec<dualrs::cp_upper>, py::arg("k"), py::arg("n"), py::arg("alpha"),
          "Vectorised upper(): int64 arrays k and n (n of size 1 or k.size).");
    m.def(
        "radius",
        [](std::int64_t k, std::int64_t n, double alpha, double sigma) {
            const auto r = dualrs::certified_radius(k, n, alpha, sigma);
            return py::make_tuple(r.radius, r.abstain);
        },
        py::arg("k"), py::arg("n"), py::arg("alpha"), py::arg("sigma"),
        "(radius, abstain): abstain iff lower(k, n, alpha) < 0.5, else "
        "radius = -sigma * Phi^-1(upper(n-k, n, alpha)), rounded down.");
    m.def("radius_vec", &radius_vec, py::arg("k"), py::arg("n"), py::arg("alpha"),
          py::arg("sigma"), "Vectorised radius(): returns (radius float64, abstain bool) arrays.");
    m.def("norm_ppf", &dualrs::norm_ppf, py::arg("p"), "Inverse standard normal CDF.");
    m.def("log_beta", &dualrs::log_beta, py::arg("a"), py::arg("b"), "log B(a, b).");
    m.def("ibeta", &dualrs::ibeta, py::arg("a"), py::arg("b"), py::arg("x"),
          "Regularized incomplete beta I_x(a, b).");
    m.def("ibetac", &dualrs::ibetac, py::arg("a"), py::arg("b"), py::arg("x"),
          "Complement 1 - I_x(a, b).");
    m.def("_last_iterations", &dualrs::last_iterations,
          "Diagnostics: function evaluations used by the last quantile solve (this thread's "
          "last call; not thread-safe).");
    m.def("_solve_raw", &dualrs::solve_raw, py::arg("a"), py::arg("b"), py::arg("alpha"),
          "Diagnostics: root (x, 1-x) of I_x(a, b) = alpha before outward rounding.");
    m.def("_outward_ulps", &dualrs::outward_rounding_ulps, py::arg("t"), py::arg("alpha"),
          "Diagnostics: ulps by which a bound t at level alpha is rounded outward.");
}
