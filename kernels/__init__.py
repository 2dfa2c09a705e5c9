"""Custom kernels of dualrs_fast, one file per op, each beside a plain PyTorch reference.

The noise specification (shared by every backend, see ``philox_torch.py``): the Gaussian
noise of element ``e`` of sample ``j`` of input ``id`` in stream ``s`` under ``seed`` is

    r0, r1, r2, r3 = Philox4x32-10(counter=(e // 2, j, id, s), key=(seed & 0xffffffff, seed >> 32))
    u_a = (float64(r0 * 2**21 + r1 // 2**11) + 0.5) * 2**-53   # top 53 bits of (r0, r1), in (0, 1]
    u_b = (float64(r2 * 2**21 + r3 // 2**11) + 0.5) * 2**-53
    (z0, z1) = BoxMuller(u_a, u_b)                              # float64, 2 pi in float64
    noise = z[e % 2]
    out = dtype(float64(x) + float64(sigma) * noise)            # rounded once to x's dtype

for float32 inputs. float64 inputs take the radius uniform to float64's full relative
precision instead (``philox_torch.fine_radius_terms``), the angle as above:

    u = fl((r0 * 2**32 + r1 + 0.5) * 2**-64),  v = fl(1 - that) from the complemented words
    if r0 >> 21 in (0, 2047):               # u < 2**-11 or v < 2**-11: 1 block in 1024
        q0..q3 = Philox4x32-10(counter=(e // 2 + 2**31, j, id, s), same key)
        w = 2**-11 * (0.q0 q1 q2 q3 + 2**-129)  # 128 bits, Horner in 2**-32, float64
        (u, v) = (w, fl(1 - w)) if r0 >> 24 == 0 else (fl(1 - w), w)
    rad = sqrt(-2 * (log1p(-v) if r0 >= 2**31 else log(u)))

Noise drawn in float32 would leave structure a model can read from one noisy row: the
Box-Muller angle of a pair of coordinates on the float32 lattice, x_noisy - x on a float32
lattice for float64 inputs (issues 10 and 20). In float64 it sits far below float32's
resolution, so a float32 input's noisy value is, to any test we could write, fl32(x + sigma z)
with z exactly Gaussian (``tests/test_noise_distinguishers.py``). For float64 inputs the 53-bit
uniforms would show at float64 resolution (1 - u near 1 on the 2**-53 grid, u near 0 on the
grid's midpoints, read from the radius by a model that knows sigma), hence their finer radius
(the angle keeps its 53-bit uniform, whose grid shows near the axes: docs/threat-model.md);
float32 inputs' noise is unchanged by it (refinement words are drawn for float64 inputs
only; rows are at most 2**32 elements, so block indices stay below 2**31).

Noise is a pure function of (seed, id, stream, j, e):
results never depend on batch size, on how inputs are packed into a batch, or on the device.
Sample indices j are 32-bit: a stream holds at most 2**32 samples per input (the engine
refuses more rather than let the counter wrap).

One file per op, each beside its plain-PyTorch reference (which the tests compare against):

- noise (x + sigma * noise for the rows of a packed batch, per-row input, sigma and counter):
  ``philox_torch.py`` (reference), ``noise_numba_simd.py`` (CPU default: vectorised
  float64 log/sin/cos polynomials), ``noise_numba.py`` (CPU, the C library's log/sin/cos; the
  default without AVX2 + FMA), ``noise_triton.py`` (CUDA)
- noise pair (one z, two noise levels: x + sigma_a * noise and x + sigma_b * noise, each equal
  to the noise op's row at its sigma): ``noise_pair_torch.py`` (reference),
  ``noise_pair_numba.py`` (CPU, numba and numba-simd), ``noise_pair_triton.py`` (CUDA)
- votes (argmax + per-(draw, input) histogram + non-finite check):
  ``votes_torch.py`` (reference), ``votes_numba.py`` (CPU), ``votes_triton.py`` (CUDA)
"""

from pathlib import Path as _Path

from .numba_cache import drop_stale_caches as _drop_stale_caches

# before any kernel module compiles or loads its cache (see numba_cache.py)
_drop_stale_caches(_Path(__file__).parent, _Path(__file__).parent / "__pycache__")
