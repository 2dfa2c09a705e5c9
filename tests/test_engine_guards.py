"""What the engine refuses before it would sample (issue 10): batch-dependent models, sample
counts that wrap the 32-bit counter, sigma within float rounding of the input, integer
logits, duplicate ids, options a DualSmoothing ignores, experts of different widths."""
import os

import pytest
import torch

import dualrs_fast as drs
from dualrs_fast import batch_probe
from dualrs_fast.kernels import philox_torch
from dualrs_fast.models import build_model
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes
from dualrs_fast.validation import MAX_SAMPLES, MIN_SIGMA_STEPS

from analytic import LinearBinary

D = 16


def _batch_stats_model():
    """BatchNorm1d without running statistics: in eval mode it still normalises each batch by
    its own statistics, so a row's logits depend on the rows beside it."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.BatchNorm1d(8, track_running_stats=False),
                               torch.nn.Linear(8, 2)).eval()


# ---- 4. batch-dependent models ---------------------------------------------------------------

def test_batch_statistics_model_is_refused():
    # issue 10: the same x, seed and ids certified class 1 beside one input and class 0
    # beside another. Now refused before sampling, whatever shares the call.
    model = _batch_stats_model()
    x = torch.rand(1, D, generator=torch.Generator().manual_seed(1))
    for other in (torch.zeros(1, D), torch.full((1, D), 3.0)):
        with pytest.raises(ValueError, match="depends on the other rows"):
            drs.certify(model, torch.cat([x, other]), sigma=0.25, n0=10, n=100, seed=0,
                        ids=[0, 1])
    with pytest.raises(ValueError, match="depends on the other rows"):
        drs.predict(model, x, sigma=0.25, n=100, seed=0)
    dual = drs.DualSmoothing(LinearBinary.random(D, 3), {0.25: model, 0.5: model},
                             sigmas=(0.25, 0.5), estimator_sigma=0.25)
    with pytest.raises(ValueError, match="depends on the other rows"):
        dual.certify(x, n0=10, n=100, seed=0)
    as_estimator = drs.DualSmoothing(model, {0.25: LinearBinary.random(D, 3),
                                             0.5: LinearBinary.random(D, 4)},
                                     sigmas=(0.25, 0.5), estimator_sigma=0.25)
    with pytest.raises(ValueError, match="depends on the other rows"):
        as_estimator.certify(x, n0=10, n=100, seed=0)


def test_scripted_module_left_in_training_mode_is_refused():
    # TorchScript hides the Dropout class from the training-mode check; the probe sees
    # its randomness
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(D, 32), torch.nn.Dropout(0.5), torch.nn.Linear(32, 2))
    scripted = torch.jit.script(net)  # in training mode
    with pytest.raises(ValueError, match="depends on the other rows"):
        drs.certify(scripted, torch.rand(1, D), sigma=0.25, n0=10, n=100, seed=0)
    scripted.eval()
    assert drs.certify(scripted, torch.rand(1, D), sigma=0.25, n0=10, n=100, seed=0).n == 100


@pytest.mark.parametrize("arch,shape", [("tiny_mlp", (1, 28, 28)), ("small_cnn", (1, 28, 28)),
                                        ("resnet20", (3, 16, 16))])
@pytest.mark.parametrize("channels_last", [True, False])
def test_ordinary_models_pass_the_probe(arch, shape, channels_last):
    torch.manual_seed(0)
    kw = dict(in_channels=shape[0]) if arch != "tiny_mlp" else {}
    model = build_model(arch, **kw).eval()
    x = torch.rand((3,) + shape, generator=torch.Generator().manual_seed(2))
    r = drs.certify(model, x, sigma=0.25, n0=4, n=12, seed=0, batch_size=7,
                    channels_last=channels_last)
    assert r.n == 12


def test_probe_tolerates_rounding_but_not_a_real_change():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(batch_probe.PROBE_ROWS, 5, generator=g)

    def with_change(rel):
        def call(rows):
            out = logits[rows].clone()
            if rows.stop - rows.start < batch_probe.PROBE_ROWS:  # the halves
                out[0] *= 1 + rel
            return out
        return call
    batch_probe.check_batch_independent(with_change(0.0))
    batch_probe.check_batch_independent(with_change(1e-6))     # oneDNN-size differences
    with pytest.raises(ValueError, match="depends on the other rows"):
        batch_probe.check_batch_independent(with_change(1e-3))
    # coarse logit types get a few of their own ulps
    assert batch_probe.rtol(torch.float32) == batch_probe.RTOL_FLOAT32
    assert batch_probe.rtol(torch.bfloat16) == 4 * torch.finfo(torch.bfloat16).eps


def test_probe_costs_sixteen_rows_per_call():
    class Rows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.rows = 0

        def forward(self, x):
            self.rows += len(x)
            return torch.zeros(len(x), 2)
    model = Rows()
    drs.certify(model, torch.rand(2, D), sigma=0.25, n0=10, n=100, seed=0)
    assert model.rows == 2 * (10 + 100) + 2 * batch_probe.PROBE_ROWS


# ---- 5. the 32-bit sample counter ------------------------------------------------------------

def test_sample_counts_that_would_wrap_the_counter_are_refused():
    # sample j + 2**32 would reuse sample j's noise on the numba backends
    model = LinearBinary.random(D, 1)
    x = torch.rand(1, D)
    for kw in (dict(n=2**32), dict(n=2**32 + 1), dict(n0=2**40)):
        with pytest.raises(ValueError, match="2\\*\\*32"):
            drs.certify(model, x, sigma=0.25, **{**dict(n0=10, n=100), **kw})
    with pytest.raises(ValueError, match="2\\*\\*32"):
        drs.predict(model, x, sigma=0.25, n=2**32)
    dual = drs.DualSmoothing(model, {0.25: model, 0.5: model}, sigmas=(0.25, 0.5))
    with pytest.raises(ValueError, match="2\\*\\*32"):
        dual.certify(x, n0=10, n=100, n_estimator=2**32)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        dual.predict(x, n=2**32)
    # a stream's total across rounds (start + count) is bounded too
    sigma = torch.tensor([0.25], dtype=torch.float64)
    with pytest.raises(ValueError, match="2\\*\\*32"):
        count_votes(model, x, sigma, [Draw(Stream.ESTIMATE, 2, start=MAX_SAMPLES)], seed=0,
                    ids=torch.tensor([0]), batch_size=8)
    last = count_votes(model, x, sigma, [Draw(Stream.ESTIMATE, 1, start=MAX_SAMPLES)], seed=0,
                       ids=torch.tensor([0]), batch_size=8)
    assert int(last.sum()) == 1


# ---- 7. sigma within float rounding of the input ---------------------------------------------

def _hyperplane_through_half(dim=784, seed=1):
    """The issue's case: x ~ 0.5, a hyperplane through (0.5, ..., 0.5)."""
    w = torch.randn(dim, generator=torch.Generator().manual_seed(seed))
    x0 = torch.full((dim,), 0.5, dtype=torch.float64)
    model = LinearBinary(w, b=-float(w.double() @ x0))
    return model, x0, w.double() / w.double().norm()


def test_tiny_sigma_is_refused():
    # sigma = 1e-6 at x ~ 0.5 (one float32 step there is 6e-8): 486 of 1000 radii exceeded
    # the exact distance to the hyperplane before this check.
    model, x0, unit = _hyperplane_through_half()
    x = (x0 + torch.linspace(-3e-6, 3e-6, 4, dtype=torch.float64)[:, None] * unit).float()
    with pytest.raises(ValueError, match="float steps"):
        drs.certify(model, x, sigma=1e-6, n0=10, n=100, seed=0)
    with pytest.raises(ValueError, match="float steps"):
        drs.predict(model, x, sigma=1e-6, n=100, seed=0)
    dual = drs.DualSmoothing(model, {1e-6: model, 0.5: model}, sigmas=(1e-6, 0.5),
                             estimator_sigma=0.5)
    with pytest.raises(ValueError, match="float steps"):
        dual.certify(x, n0=10, n=100, seed=0)


def test_sigma_limit_follows_the_input_dtype_and_magnitude():
    model = LinearBinary.random(D, 1)
    x = torch.full((1, D), 0.75)
    limit = MIN_SIGMA_STEPS * torch.finfo(torch.float32).eps * 0.75
    drs.certify(model, x, sigma=limit * 1.001, n0=4, n=8, seed=0)
    with pytest.raises(ValueError, match="float steps"):
        drs.certify(model, x, sigma=limit * 0.999, n0=4, n=8, seed=0)
    with pytest.raises(ValueError, match="float steps"):  # a larger magnitude: a larger step
        drs.certify(model, 100 * x, sigma=limit * 2, n0=4, n=8, seed=0)
    model64 = LinearBinary.random(D, 1).double()
    drs.certify(model64, x.double(), sigma=1e-6, n0=4, n=8, seed=0)  # float64: fine


def test_hyperplane_certificates_are_sound_at_the_sigma_limit():
    # the smallest sigma allowed for inputs ~ 0.5 (the setting at 1e-6 was 16 steps)
    model, x0, unit = _hyperplane_through_half()
    sigma = 1.01 * MIN_SIGMA_STEPS * torch.finfo(torch.float32).eps * 0.5
    N, alpha = 60, 0.01
    x = (x0 + torch.linspace(-2.5 * sigma, 2.5 * sigma, N, dtype=torch.float64)[:, None]
         * unit).float()
    r = drs.certify(model, x, sigma=sigma, n0=32, n=5000, alpha=alpha, seed=0, batch_size=4096)
    d = model.signed_distance(x)
    certified = r.prediction != drs.ABSTAIN
    wrong = certified & ((r.prediction != (d > 0).long()) | (r.radius.double() > d.abs()))
    assert int(certified.sum()) > N / 2
    assert int(wrong.sum()) <= 1


# ---- 8. logits, ids, options -----------------------------------------------------------------

class _Logits(torch.nn.Module):
    """Coarse logits of a given dtype with many exact ties."""

    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return (4 * x.reshape(len(x), -1)[:, :3]).floor().to(self.dtype)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_logits_are_refused(dtype):
    with pytest.raises(TypeError, match="floating point"):
        drs.certify(_Logits(dtype), torch.rand(1, D), sigma=0.25, n0=4, n=8, seed=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("votes_backend", ["auto", "torch"])
def test_half_precision_logits_count_ties_to_the_lowest_class(dtype, votes_backend):
    # the base classifier is argmax with ties to the lowest class index, on every backend
    model = _Logits(dtype)
    x = torch.rand(2, D, generator=torch.Generator().manual_seed(3))
    sigma = torch.tensor([0.5, 0.5], dtype=torch.float64)
    counts = count_votes(model, x, sigma, [Draw(Stream.ESTIMATE, 300)], seed=1,
                         ids=torch.arange(2), batch_size=64, noise_backend="torch",
                         votes_backend=votes_backend)
    rows = philox_torch.noisy_rows(x, sigma.float(), torch.arange(2), 1,
                                   torch.arange(600) // 300, torch.ones(600, dtype=torch.int64),
                                   torch.arange(600) % 300)
    logits = model(rows).float()
    assert (logits == logits.amax(1, keepdim=True)).sum(1).gt(1).any()   # ties happen
    first_max = logits.argmax(1)   # torch.argmax: the first maximal index
    want = torch.stack([torch.bincount(first_max[k * 300:(k + 1) * 300], minlength=3)
                        for k in range(2)])
    assert torch.equal(counts[0], want)


def test_duplicate_ids_are_refused_for_dual_smoothing():
    model = LinearBinary.random(D, 1)
    dual = drs.DualSmoothing(model, {0.25: model, 0.5: model}, sigmas=(0.25, 0.5))
    with pytest.raises(ValueError, match="distinct"):
        dual.certify(torch.rand(2, D), n0=4, n=8, ids=[5, 5])
    with pytest.raises(ValueError, match="distinct"):
        dual.predict(torch.rand(2, D), n=8, ids=[5, 5])


@pytest.mark.parametrize("sigma", [-1, 0.5, 0.25, "x"])
def test_sigma_is_refused_for_dual_smoothing(sigma):
    # DualSmoothing picks sigma per input: an explicit sigma (even a valid one) was ignored
    model = LinearBinary.random(D, 1)
    dual = drs.DualSmoothing(model, {0.25: model, 0.5: model}, sigmas=(0.25, 0.5))
    with pytest.raises(TypeError, match="sigma"):
        drs.certify(dual, torch.rand(1, D), sigma=sigma, n0=4, n=8)
    with pytest.raises(TypeError, match="sigma"):
        drs.predict(dual, torch.rand(1, D), sigma, n=8)


class _Constant(torch.nn.Module):
    def __init__(self, width, level=0):
        super().__init__()
        self.width, self.level = width, level

    def forward(self, x, *sigma):
        out = torch.zeros(len(x), self.width)
        out[:, self.level] = 1.0
        return out


def test_experts_of_different_widths_are_refused_even_if_one_level_is_used():
    # the estimator routes everything to level 0: the 3-class expert at 0.5 never runs
    dual = drs.DualSmoothing(_Constant(2), {0.25: _Constant(2), 0.5: _Constant(3)},
                             sigmas=(0.25, 0.5), estimator_sigma=0.25)
    with pytest.raises(ValueError, match="same number of classes"):
        dual.certify(torch.rand(2, D), n0=4, n=8, seed=0)
    with pytest.raises(ValueError, match="same number of classes"):
        dual.predict(torch.rand(2, D), n=8, seed=0)


def test_the_numba_kernels_keep_torchs_thread_count_in_a_fresh_process():
    """numba's OpenMP layer shares torch's runtime: a kernel launch used to reset torch to
    every core after torch.set_num_threads(1) (the CLI's --threads, --procs workers)."""
    import subprocess
    import sys
    code = ("import torch; torch.set_num_threads(1)\n"
            "import numba, dualrs_fast as drs\n"
            "from dualrs_fast.models import load_default_classifier\n"
            "from dualrs_fast.data import load_default_split\n"
            "x = load_default_split()[2][:2]\n"
            "for backend in ('numba-simd', 'numba'):\n"
            "    drs.certify(load_default_classifier(0.5), x, sigma=0.5, n0=10, n=100,\n"
            "                alpha=0.001, seed=0, noise_backend=backend)\n"
            "    assert torch.get_num_threads() == 1, (backend, torch.get_num_threads())\n"
            "    assert numba.get_num_threads() == 1, (backend, numba.get_num_threads())\n"
            "print('ok')\n")
    env = {**os.environ, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
