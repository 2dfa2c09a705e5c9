"""Custom kernels of dualrs_fast, one file per op, each beside a plain PyTorch reference.

The noise specification (shared by every backend, see ``philox_torch.py``): the Gaussian
noise of element ``e`` of sample ``j`` of input ``id`` in stream ``s`` under ``seed`` is

    r0, r1, r2, r3 = Philox4x32-10(counter=(e // 4, j, id, s), key=(seed & 0xffffffff, seed >> 32))
    u_k = (float32(r_k) + 0.5) * 2**-32                 # in (0, 1], never 0
    (z0, z1) = BoxMuller(u0, u1), (z2, z3) = BoxMuller(u2, u3)  # float32
    noise = z[e % 4]

for float32 inputs. float64 inputs get float64 noise, two normals per Philox block from
53-bit uniforms (float32 noise would put x_noisy - x on a float32 lattice, which a model can
detect and exploit):

    r0, r1, r2, r3 = Philox4x32-10(counter=(e // 2, j, id, s), key=(the same))
    u_a = (float64(r0 * 2**21 + r1 // 2**11) + 0.5) * 2**-53   # top 53 bits of (r0, r1), in (0, 1]
    u_b = (float64(r2 * 2**21 + r3 // 2**11) + 0.5) * 2**-53
    (z0, z1) = BoxMuller(u_a, u_b)                              # float64, 2 pi in float64
    noise = z[e % 2]

Either way noise is a pure function of (seed, id, stream, j, e) (and the input's dtype):
results never depend on batch size, on how inputs are packed into a batch, or on the device.
Sample indices j are 32-bit: a stream holds at most 2**32 samples per input (the engine
refuses more rather than let the counter wrap).

One file per op, each beside its plain-PyTorch reference (which the tests compare against):

- noise (x + sigma * noise for the rows of a packed batch, per-row input, sigma and counter):
  ``philox_torch.py`` (reference), ``noise_numba_simd.py`` (CPU default: vectorised
  float32 log/sin/cos; float64 inputs take ``noise_numba``'s float64 kernel), ``noise_numba.py``
  (CPU, the C library's log/sin/cos; the default without AVX2 + FMA), ``noise_triton.py``
  (CUDA)
- votes (argmax + per-(draw, input) histogram + non-finite check):
  ``votes_torch.py`` (reference), ``votes_numba.py`` (CPU), ``votes_triton.py`` (CUDA)
"""
