"""certify_radii (sequential CERTIFY at a grid of radii): soundness on analytic models at a
large alpha (and the same check catching a rule without the union bound), agreement with
full CERTIFY (exact with one checkpoint; a replay of CERTIFY's own counts at every
checkpoint otherwise) on analytic and embedded models, early stopping, bad input."""
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast import sequential_radii
from dualrs_fast.bounds import certified_radius
from dualrs_fast.loading import load_dataset
from dualrs_fast.models import load_default_classifier, load_default_dual
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes
from dualrs_fast.sequential_radii import (check_radii, radii_alphas, radii_schedule,
                                          votes_to_certify)

from analytic import LinearBinary, inputs_at_distances

SHAPE = (1, 4, 4)
GRID = (0.0, 0.25, 0.5, 0.75, 1.0)


def _linear(seed, b=0.0):
    return LinearBinary.random(int(np.prod(SHAPE)), seed, b=b)


@pytest.fixture(scope="module")
def mnist():
    data = load_dataset("mnist5k")
    return data.x[:6], data.y[:6]


# ---- schedule and grid -----------------------------------------------------------------------

@pytest.mark.parametrize("n_max,expected", [
    (150, [100, 150]), (109, [109]), (110, [100, 110]), (120, [100, 120]), (1, [1]),
    (10_000, [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 1800, 2200, 2700, 3300, 4000,
              4800, 5800, 7000, 8400, 10_000]),
    (1600, [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1600]),
    (100_000, [100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 1800, 2200, 2700, 3300, 4000,
               4800, 5800, 7000, 8400, 10100, 12200, 14700, 17700, 21300, 25600, 30800, 37000,
               44400, 53300, 64000, 76800, 100_000])])
def test_schedule_grows_by_a_fifth_in_blocks_of_100(n_max, expected):
    assert radii_schedule(n_max) == expected
    steps = np.diff(expected[:-1])
    assert (np.asarray(expected[:-1]) % 100 == 0).all() and (steps > 0).all()
    # each step is the smallest multiple of 100 at least 1.2 times the previous checkpoint
    assert all(b >= 1.2 * a > b - 100 for a, b in zip(expected[:-2], expected[1:-1]))
    assert len(expected) == 1 or expected[-1] >= 1.2 ** 0.5 * expected[-2]
    assert radii_schedule(n_max, first=100, growth=2.0)[-1] == n_max
    with pytest.raises(ValueError):
        radii_schedule(100, growth=1.0)


def test_alpha_shares_sum_to_alpha_and_favour_n_max():
    schedule = radii_schedule(100_000)
    shares = radii_alphas(0.001, schedule)
    assert len(shares) == len(schedule) and sum(shares) <= 0.001
    assert sum(shares) == pytest.approx(0.001, rel=1e-12)
    assert shares[-1] == pytest.approx(0.0008)
    early = np.asarray(shares[:-1])
    assert np.allclose(early / np.sqrt(schedule[:-1]), early[0] / math.sqrt(schedule[0]))
    assert radii_alphas(0.01, [500]) == [0.01]
    assert radii_alphas(0.001, schedule, final_share=0.5)[-1] == pytest.approx(0.0005)
    with pytest.raises(ValueError, match="final_share"):
        radii_alphas(0.001, schedule, final_share=1.5)


@pytest.mark.parametrize("n,alpha,sigma", [(5000, 0.0008, 0.5), (731, 0.01, 0.25), (100_000, 4e-4, 1.0)])
def test_votes_to_certify_is_the_fewest_by_scipy(n, alpha, sigma):
    # Independent reference: scan the counts with scipy's Beta quantile (Clopper-Pearson).
    grid = (0.0, 0.1, 0.3, 0.55, 0.8, 1.3, 2.2, 9.0)
    need = votes_to_certify(grid, n, alpha, sigma)
    k = np.arange(n + 1)
    lower = np.where(k > 0, scipy.stats.beta.ppf(alpha, np.maximum(k, 1), n - k + 1), 0.0)
    for r, got in zip(grid, need):
        ok = lower >= scipy.stats.norm.cdf(r / sigma)
        expected = int(np.argmax(ok)) if ok.any() else n + 1
        assert abs(got - expected) <= 1, (r, got, expected)  # ties: float rounding at the edge
        if got <= n:
            assert certified_radius(int(got), n, alpha, sigma)[0] >= r
            assert got == 0 or certified_radius(int(got) - 1, n, alpha, sigma)[0] < r or r == 0
    assert need[-1] == n + 1 and np.all(np.diff(need) >= 0)


def test_grid_is_sorted_deduplicated_and_starts_at_zero():
    assert check_radii([1.0, 0.25, 0.25, 2]) == (0.0, 0.25, 1.0, 2.0)
    assert check_radii(np.array([0.5])) == (0.0, 0.5)
    for bad in ([-0.25], [math.nan], [math.inf], ["a"]):
        with pytest.raises(ValueError):
            check_radii(bad)
    with pytest.raises(TypeError):
        check_radii(0.5)


def test_bad_input_raises():
    model, x = _linear(0), torch.rand(2, *SHAPE)
    bad = [dict(alpha=0.0), dict(alpha=1.0), dict(n_max=0), dict(n0=0), dict(sigma=0.0),
           dict(futility_alpha=0.0), dict(futility_alpha=1.5), dict(batch_size=0),
           dict(radii=[-1.0])]
    for kw in bad:
        args = dict(radii=GRID, sigma=0.5, n_max=200) | kw
        with pytest.raises((ValueError, TypeError)):
            drs.certify_radii(model, x, **args)
    with pytest.raises(TypeError):  # estimator options need a DualSmoothing
        drs.certify_radii(model, x, GRID, n_max=200, n_max_estimator=100)
    with pytest.raises(ValueError):
        drs.certify_radii(model, torch.full((1, *SHAPE), math.nan), GRID, n_max=200)


# ---- agreement with full CERTIFY -------------------------------------------------------------

def _expected_grid(prediction, radius, radii):
    """certified[b, j] of a CERTIFY result: not abstained and radius >= radii[j]."""
    r = torch.as_tensor(radii, dtype=torch.float64)
    return (prediction != drs.ABSTAIN)[:, None] & (radius.double()[:, None] >= r[None, :])


def test_one_checkpoint_is_certify_on_the_embedded_cnn(mnist):
    # n_max below two checkpoints (< 110): the same samples, the same alpha, so CERTIFY's decisions.
    x, _ = mnist
    model = load_default_classifier(0.5)
    grid = check_radii(0.25 * k for k in range(9))
    assert radii_schedule(105) == [105]
    seq = drs.certify_radii(model, x, grid, sigma=0.5, n_max=105, n0=50, alpha=0.001, seed=4)
    full = drs.certify(model, x, sigma=0.5, n=105, n0=50, alpha=0.001, seed=4)
    assert torch.equal(seq.prediction, full.prediction)
    assert torch.equal(seq.certified, _expected_grid(full.prediction, full.radius, grid))
    assert (seq.samples == 155).all()
    assert seq.certified[:, 1:].any()  # not all decided at r = 0


def _replay(model, x, sigma, grid, n_max, n0, alpha, seed):
    """Largest grid index certified at ANY checkpoint by CERTIFY's own estimation counts,
    drawn in full (the answer sequential sampling must give without the futility rule: it
    stops only when no later checkpoint could certify more)."""
    schedule = radii_schedule(n_max)
    starts = [0] + schedule[:-1]
    sig = torch.full((x.shape[0],), sigma, dtype=torch.float64)
    draws = [Draw(Stream.SELECT, n0)] + [Draw(Stream.ESTIMATE, b - a, start=a)
                                         for a, b in zip(starts, schedule)]
    counts = count_votes(model, x, sig, draws, seed=seed, ids=torch.arange(x.shape[0]),
                         batch_size=1000)
    top = counts[0].argmax(1)
    votes = counts[1:].gather(2, top[None, :, None].expand(len(schedule), -1, 1))[..., 0]
    cumulative = votes.cumsum(0).numpy()
    best = np.full(x.shape[0], -1)
    for k, (n_k, alpha_k) in enumerate(zip(schedule, radii_alphas(alpha, schedule))):
        radius, abstain = certified_radius(cumulative[k], n_k, alpha_k, sigma)
        index = np.searchsorted(np.asarray(grid), radius, side="right") - 1
        best = np.maximum(best, np.where(abstain, -1, index))
    return top, best


@pytest.mark.parametrize("case", ["linear", "embedded_cnn"])
def test_sequential_equals_full_counts_at_every_checkpoint(case, mnist):
    if case == "linear":
        model, sigma = _linear(0), 0.5
        x = inputs_at_distances(model, torch.linspace(-0.2, 1.4, 24), SHAPE, seed=1)
        grid = GRID
    else:
        model, sigma, (x, _) = load_default_classifier(0.25), 0.25, mnist
        grid = check_radii(0.25 * k for k in range(9))
    n_max, n0, alpha = 1600, 50, 0.001
    top, best = _replay(model, x, sigma, grid, n_max, n0, alpha, seed=3)
    exact = drs.certify_radii(model, x, grid, sigma=sigma, alpha=alpha, n_max=n_max, n0=n0,
                              seed=3, futility_alpha=None)
    certified = torch.from_numpy(best >= 0)
    assert torch.equal(exact.prediction, torch.where(certified, top, drs.ABSTAIN))
    assert torch.equal(exact.certified, torch.arange(len(grid))[None, :] <= torch.from_numpy(best)[:, None])
    assert (exact.samples <= n0 + n_max).all()
    assert (exact.samples < n0 + n_max).any()  # some inputs stopped early
    # The futility rule stops sooner: never more samples, never a certificate the full
    # counts lack.
    sooner = drs.certify_radii(model, x, grid, sigma=sigma, alpha=alpha, n_max=n_max, n0=n0,
                               seed=3)
    assert (sooner.samples <= exact.samples).all()
    assert not (sooner.certified & ~exact.certified).any()


def test_confident_inputs_stop_early_at_the_largest_grid_radius():
    # Far from the hyperplane: every grid radius is certified after a few hundred samples.
    model = _linear(0)
    x = inputs_at_distances(model, torch.full((8,), 3.0), SHAPE, seed=2)
    r = drs.certify_radii(model, x, GRID, sigma=0.5, n_max=100_000, n0=100, seed=0)
    assert (r.radius == 1.0).all() and r.certified.all()
    assert (r.samples <= 100 + 1563).all()
    # and hopeless ones (on the hyperplane, votes split evenly) give up on r > 0 quickly
    flat = drs.certify_radii(model, inputs_at_distances(model, torch.zeros(8), SHAPE, seed=2),
                             [1.0], sigma=0.5, n_max=100_000, seed=0)
    assert (flat.radius == 0).all()


def test_futility_rule_takes_a_radius_up_again_when_the_votes_recover():
    # Scripted votes: the first 6 estimation samples fail, every later one votes for class 0.
    # After 100..400 samples the futility rule gives r = 2.612 up (6 failures look like a rate
    # that n_max cannot overcome), but the input keeps drawing for r = 1.9 (certified at
    # 1000); by then the rate looks fine again, and r = 2.612, which 6 failures in 20,000
    # certify, is certified in the end instead of lost for good.
    grid, n_max, sigma = (0.0, 0.5, 1.9, 2.612), 20_000, torch.full((1,), 1.0, dtype=torch.float64)
    failures = 6

    def votes(members, draws):
        out = torch.zeros((len(draws), members.numel(), 2), dtype=torch.int64)
        for k, d in enumerate(draws):
            start = int(torch.as_tensor(d.start).reshape(-1)[0])
            num = int(torch.as_tensor(d.num_samples).reshape(-1)[0])
            failed = 0 if d.stream == Stream.SELECT else max(0, min(failures, start + num) - start)
            out[k, :, 0], out[k, :, 1] = num - failed, failed
        return out

    test = sequential_radii._SequentialTest(votes, sigma, grid, radii_schedule(n_max), 0.001,
                                            0.02, Stream.SELECT, Stream.ESTIMATE)
    for n in (100, 400):  # the early give-up the test is about
        assert test._plausible_index(np.array([0]), np.array([n - failures]), n)[0] == 2
    r = sequential_radii.run_standard(votes, sigma, check_radii(grid), 0.001, n_max, 100, 0.02)
    assert r.radius.tolist() == [2.612] and r.prediction.tolist() == [0]
    assert r.samples.item() < 100 + n_max  # still stopped early, at the checkpoint certifying it


def test_futility_rule_gives_up_an_unreachable_radius_early():
    # True radius 0.6 at sigma 0.5 (p = Phi(1.2) = 0.885): 0.5 is certified, and 0.75 (it needs
    # p >= Phi(1.5) = 0.933) is given up once the upper bound says n_max cannot reach it,
    # long before all remaining samples could no longer certify it (the exact rule).
    model = _linear(0)
    x = inputs_at_distances(model, torch.full((8,), 0.6), SHAPE, seed=2)
    args = dict(sigma=0.5, n_max=100_000, n0=100, seed=0)
    sooner = drs.certify_radii(model, x, [0.5, 0.75], **args)
    exact = drs.certify_radii(model, x, [0.5, 0.75], futility_alpha=None, **args)
    assert (sooner.radius == 0.5).all() and (exact.radius == 0.5).all()
    assert (sooner.samples <= 10_000).all()
    assert (exact.samples >= 30_000).all()


# ---- soundness on analytic models ------------------------------------------------------------

ALPHA = 0.2  # large, so that a rule without the union bound fails visibly


def _false_certificates(model, x, r):
    """Inputs with a false claim: a certified class that is not the smoothed classifier's,
    or a certified grid radius above the exact radius |distance to the hyperplane|."""
    d = model.signed_distance(x)
    certified = r.prediction != drs.ABSTAIN
    wrong_class = certified & (r.prediction != (d > 0).long())
    too_large = certified & (r.radius > d.abs())
    return int((wrong_class | too_large).sum()), int(certified.sum())


def _borderline_case(n=400):
    """Inputs just inside each grid radius: a bound that is too high certifies the next one."""
    model = _linear(0)
    radii = torch.tensor(GRID[1:], dtype=torch.float64)
    d = (radii.repeat_interleave(n // len(radii)) - 0.02)
    return model, inputs_at_distances(model, d, SHAPE, seed=7)


def _certify_borderline(model, x):
    return drs.certify_radii(model, x, GRID, sigma=0.5, alpha=ALPHA, n_max=1600, n0=50,
                             seed=11, batch_size=4096, futility_alpha=None)


def test_certificates_are_sound_at_a_large_alpha():
    model, x = _borderline_case()
    r = _certify_borderline(model, x)
    bad, certified = _false_certificates(model, x, r)
    assert certified > x.shape[0] / 2
    assert bad / x.shape[0] <= ALPHA
    assert len(set(r.samples.tolist())) > 2  # inputs did stop at different checkpoints


def test_soundness_check_catches_checkpoints_without_the_union_bound(monkeypatch):
    # Power: every checkpoint at the full alpha (no union bound) over-claims often enough
    # that the same check fails.
    monkeypatch.setattr(sequential_radii, "radii_alphas", lambda alpha, s, share: [alpha] * len(s))
    model, x = _borderline_case()
    bad, _ = _false_certificates(model, x, _certify_borderline(model, x))
    assert bad / x.shape[0] > ALPHA


# ---- Dual RS ---------------------------------------------------------------------------------

SIGMAS = (0.25, 0.5)
ESTIMATOR_SIGMA = 0.5


def _dual(estimator, experts):
    return drs.DualSmoothing(estimator, experts, sigmas=SIGMAS, estimator_sigma=ESTIMATOR_SIGMA)


def _dual_false_certificates(estimator, experts, x, r):
    """False claims of Dual RS: wrong level or class, or a grid radius above
    min(distance to the estimator's hyperplane, distance to the chosen expert's)."""
    d_e = estimator.signed_distance(x)
    bad = 0
    for k in torch.nonzero(r.prediction != drs.ABSTAIN).reshape(-1).tolist():
        level = SIGMAS.index(float(r.sigma[k]))
        d_c = experts[SIGMAS[level]].signed_distance(x[k:k + 1])[0]
        true_radius = min(abs(float(d_e[k])), abs(float(d_c)))
        bad += int(level != int(d_e[k] > 0) or int(r.prediction[k]) != int(d_c > 0)
                   or float(r.radius[k]) > true_radius)
    return bad


def _dual_borderline_case(n=400):
    """Confident experts (far from their hyperplanes), inputs just inside each grid radius of
    the estimator on either side (either level): R_ve decides, and a bound that is too high
    certifies the next grid radius."""
    estimator = _linear(1)
    experts = {s: _linear(10 + k, b=20.0) for k, s in enumerate(SIGMAS)}
    radii = torch.tensor(GRID[1:], dtype=torch.float64)
    d = radii.repeat_interleave(n // (2 * len(radii))) - 0.005
    x = inputs_at_distances(estimator, torch.cat([d, -d]), SHAPE, seed=5)
    return estimator, experts, x


def _dual_certify(estimator, experts, x):
    return drs.certify_radii(_dual(estimator, experts), x, GRID, alpha=ALPHA, n_max=6400,
                             n0=32, seed=11, batch_size=4096, futility_alpha=None)


def test_dual_certificates_are_sound_at_a_large_alpha():
    estimator, experts, x = _dual_borderline_case()
    r = _dual_certify(estimator, experts, x)
    assert (r.prediction != drs.ABSTAIN).sum() > x.shape[0] / 2
    assert _dual_false_certificates(estimator, experts, x, r) / x.shape[0] <= ALPHA
    assert len(set(r.samples.tolist())) > 2


def test_dual_soundness_check_catches_checkpoints_without_the_union_bound(monkeypatch):
    monkeypatch.setattr(sequential_radii, "radii_alphas", lambda alpha, s, share: [alpha] * len(s))
    monkeypatch.setattr(drs.DualSmoothing, "alphas", lambda self, alpha: (alpha, alpha))
    estimator, experts, x = _dual_borderline_case()
    r = _dual_certify(estimator, experts, x)
    assert _dual_false_certificates(estimator, experts, x, r) / x.shape[0] > ALPHA


def test_dual_one_checkpoint_is_plain_dual_certify_on_the_embedded_models(mnist):
    x, _ = mnist
    dual = load_default_dual()
    grid = check_radii(0.25 * k for k in range(9))
    seq = drs.certify_radii(dual, x, grid, n_max=105, n0=50, alpha=0.001, seed=2)
    full = dual.certify(x, n=105, n0=50, alpha=0.001, seed=2, estimator_rounds=1,
                        share_pass=False)   # certify_radii draws each classifier's own samples
    assert torch.equal(seq.prediction, full.prediction)
    assert torch.equal(seq.certified, _expected_grid(full.prediction, full.radius, grid))
    ran = full.level >= 0
    assert torch.equal(seq.sigma[ran], full.sigma[ran])
    assert seq.certified[:, 1:].any()


def test_dual_rejects_engine_options():
    estimator, experts, x = _dual_borderline_case(8)
    with pytest.raises(TypeError):
        drs.certify_radii(_dual(estimator, experts), x, GRID, n_max=200, compile=True)


# ---- command line ----------------------------------------------------------------------------

def test_cli_radii_log_is_read_by_certified_accuracy_and_resumes(tmp_path, capsys, mnist):
    from dualrs_fast import cli
    from dualrs_fast.logs import certified_accuracy, read_log
    log = tmp_path / "radii.tsv"
    argv = ["certify", "--sigma", "0.5", "--max", "6", "--n", "400", "--n0", "50", "--seed", "0",
            "--radii", "0.5,0.25,1", "--out", str(log), "--quiet"]
    assert cli.main(argv) == 0
    table = read_log(log)
    x, y = mnist
    r = drs.certify_radii(load_default_classifier(0.5), x, (0.25, 0.5, 1.0), sigma=0.5,
                          n_max=400, n0=50, ids=torch.arange(6), seed=0)
    assert (table["radius"] == r.radius.numpy()).all()
    assert (table["predict"] == r.prediction.numpy()).all()
    assert (table["samples"] == r.samples.numpy()).all()
    expected = _expected_grid(r.prediction, r.radius, r.radii) & (r.prediction == y)[:, None]
    np.testing.assert_allclose(certified_accuracy(log, r.radii), expected.double().mean(0))
    before = log.read_text()
    assert cli.main(argv) == 0 and log.read_text() == before        # resumed: nothing to add
    assert cli.main(argv[:-5] + ["--radii", "0.5", "--out", str(log), "--quiet"]) == 2
    assert "radii" in capsys.readouterr().err                       # another grid: refused


def test_cli_dual_radii_columns(tmp_path):
    from dualrs_fast import cli
    from dualrs_fast.logs import read_log
    log = tmp_path / "dual.tsv"
    assert cli.main(["certify", "--dual", "--max", "3", "--n", "300", "--n0", "30",
                     "--radii", "0,1", "--out", str(log), "--quiet"]) == 0
    table = read_log(log)
    assert set(table) >= {"sigma", "radius_estimator", "radius_classifier", "samples"}
    certified = table["predict"] != drs.ABSTAIN
    assert (table["radius"][certified] == np.minimum(table["radius_estimator"],
                                                     table["radius_classifier"])[certified]).all()
    assert (table["samples"] <= 2 * 330).all()


# ---- the benchmark script --------------------------------------------------------------------

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench(script, *args, cwd):
    proc = subprocess.run([sys.executable, "-P", str(BENCH / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(not (BENCH / "radii_vs_certify.py").is_file(), reason="bench/ not present")
@pytest.mark.parametrize("setting", ["0.5", "dual"])
def test_bench_script_smoke(tmp_path, setting):
    # Both sides on 3 images at n = 300 (the recorded CERTIFY re-checked against drs.certify on
    # all 3), then the table.
    common = ["--setting", setting, "--num", "3", "--n", "300", "--check", "3", "--dir",
              str(tmp_path)]
    for step in ("certify", "radii"):
        _bench("radii_vs_certify.py", step, *common, cwd=tmp_path)
    table = _bench("radii_vs_certify.py", "table", "--dir", str(tmp_path), cwd=tmp_path)
    assert "| certify | " in table and "| certify_radii | " in table
    name = "small CNN, sigma 0.5" if setting == "0.5" else "embedded Dual RS"
    assert f"{name}: 3 images" in table
    assert "zero-error floor" in table and "oracle (" in table and "perfect futility" in table
    recorded = np.load(tmp_path / f"{setting}_certify.npz")["classifier"]
    assert recorded.shape == (1 + 3, 3, 10)  # selection + 3 blocks of 100, 3 inputs, 10 classes
    # certify_radii's samples are a prefix of CERTIFY's: its own test replayed on the
    # recorded votes gives exactly the run on the model
    replay = _bench("replay_radii.py", "--setting", setting, "--dir", str(tmp_path), cwd=tmp_path)
    assert "recorded certify_radii run: identical" in replay


@pytest.mark.skipif(not (BENCH / "bench_utils.py").is_file(), reason="bench/ not present")
def test_results_writer_keeps_sections_below_the_marker(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    bench_utils = pytest.importorskip("bench_utils")
    path = tmp_path / "RESULTS.md"
    assert bench_utils.kept_sections(path) == ""
    path.write_text("# generated\n\n" + bench_utils.KEPT_MARKER + "\n## by hand\n1 2 3\n")
    assert bench_utils.kept_sections(path) == "\n" + bench_utils.KEPT_MARKER + "\n## by hand\n1 2 3\n"
