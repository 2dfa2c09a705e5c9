"""Shared helpers of the benchmarks: sizes, the batches certify() feeds a model, a plain
Cohen-style certification loop, machine description and the RESULTS.md writer."""
import os
import platform
import subprocess
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from dualrs_fast.batch_probe import PROBE_ROWS
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes

SMOKE = os.environ.get("BENCH_SMOKE", "") not in ("", "0")
THREADS = int(os.environ.get("BENCH_THREADS", "2"))
RESULTS_PATH = Path(os.environ.get("BENCH_RESULTS", Path(__file__).with_name("RESULTS.md")))

#: where the models run: "cpu", or "cuda" (bench/gpu.sh sets BENCH_DEVICE=cuda)
DEVICE = os.environ.get("BENCH_DEVICE", "cpu")
SIGMA = 0.25
ALPHA = 0.001
BATCH = 1000
N0 = 10 if SMOKE else 100
N = 200 if SMOKE else 10_000
# inputs certified per call, and timing rounds (after one warm-up round)
INPUTS = {"tiny_mlp": 2 if SMOKE else 4, "small_cnn": 2 if SMOKE else 4, "resnet20": 1}
# rounds per ratio: more for the fast tiny MLP (cheap) and for ResNet-20, whose two-round
# median moved by ~0.1 from run to run
ROUNDS = {"tiny_mlp": 1 if SMOKE else 9, "small_cnn": 1 if SMOKE else 5,
          "resnet20": 1 if SMOKE else 3}
N_RESNET = 50 if SMOKE else N  # ResNet-20 runs at ~2k samples/s here
# Dual RS (c): the first DUAL_INPUTS test images (the test set's routing mix: about half to
# sigma 0.5, half to sigma 1.0), at each budget of DUAL_N
DUAL_INPUTS = 4 if SMOKE else 50
DUAL_N = (200,) if SMOKE else (2000, 10_000)
DUAL_ROUNDS = 1 if SMOKE else 3

#: filled by the benchmarks, written to RESULTS.md at the end of a complete run
RESULTS = {}


class _Recorder(torch.nn.Module):
    """Stands in for a model inside count_votes and keeps every noisy batch it is fed."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.batches = num_classes, []

    def forward(self, x):
        self.batches.append(x.clone())  # clone keeps the (channels_last) strides
        return torch.zeros(len(x), self.num_classes)


def certify_batches(x: torch.Tensor, sigma: float, n0: int, n: int, batch_size: int, seed: int = 0):
    """The exact noisy batches (values, packing and memory layout) that
    ``drs.certify(model, x, sigma, n0, n, batch_size=batch_size, seed=seed)`` feeds its model."""
    rec = _Recorder(2)
    count_votes(rec, x, torch.full((x.shape[0],), float(sigma), dtype=torch.float64),
                [Draw(Stream.SELECT, n0), Draw(Stream.ESTIMATE, n)], seed=seed,
                ids=torch.arange(x.shape[0]), batch_size=batch_size)
    # the first three calls are the batch probe's (PROBE_ROWS rows, then its two halves):
    # not samples, and under 1e-4 of a certify's forward time
    probe = [len(b) for b in rec.batches[:3]]
    assert probe == [PROBE_ROWS, PROBE_ROWS // 2, PROBE_ROWS - PROBE_ROWS // 2], probe
    return rec.batches[3:]


def forward_only(model, batches) -> None:
    """The limit: the model's forward on pre-made batches, nothing else."""
    with torch.inference_mode():
        for b in batches:
            model(b)


def cohen_certify(model, x: torch.Tensor, sigma: float, n0: int, n: int, alpha: float,
                  batch_size: int, num_classes: int):
    """A plain Cohen et al. (2019) CERTIFY loop: one input at a time, x.repeat, torch.randn_like
    * sigma, argmax, host bincount; Clopper-Pearson bound. -> (predictions, radii)."""
    def sample_counts(xi, num):
        counts = np.zeros(num_classes, dtype=np.int64)
        with torch.no_grad():
            remaining = num
            while remaining > 0:
                this = min(batch_size, remaining)
                remaining -= this
                batch = xi.repeat((this,) + (1,) * xi.dim())
                noise = torch.randn_like(batch) * sigma
                predictions = model(batch + noise).argmax(1)
                counts += np.bincount(predictions.cpu().numpy(), minlength=num_classes)
        return counts

    predictions, radii = [], []
    for xi in x:
        c_hat = int(sample_counts(xi, n0).argmax())
        n_a = int(sample_counts(xi, n)[c_hat])
        p_lower = scipy.stats.beta.ppf(alpha, n_a, n - n_a + 1) if n_a > 0 else 0.0
        if p_lower < 0.5:
            predictions.append(-1)
            radii.append(0.0)
        else:
            predictions.append(c_hat)
            radii.append(sigma * scipy.stats.norm.ppf(p_lower))
    return predictions, radii


def default_noise_backend() -> str:
    """What noise_backend='auto' resolves to on this CPU."""
    from dualrs_fast.noise import resolve_backend
    return resolve_backend("auto", torch.device("cpu"))


def best_seconds(benchmark) -> float:
    return float(benchmark.stats.stats.min)


def median_seconds(benchmark) -> float:
    return float(benchmark.stats.stats.median)


def record(key: str, **values) -> None:
    RESULTS.setdefault(key, {}).update(values)


def machine() -> dict:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    import numba
    info = {"cpu": model, "cores": os.cpu_count(), "threads": THREADS,
            "torch": torch.__version__, "numba": numba.__version__,
            "python": platform.python_version(), "device": DEVICE}
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = "not installed"
    return info


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def _fmt_rate(v: float) -> str:
    return f"{v:,.0f}"


REQUIRED = ("tiny_mlp", "small_cnn", "resnet20", "cohen:tiny_mlp", "cohen:small_cnn",
            *(f"dual:class_group-sequential-n{n}" for n in DUAL_N),
            f"dual:class_group-plain-n{DUAL_N[0]}",
            "noise:numba", "noise:torch",
            "noise:numba-simd", "votes:numba", "votes:torch", "tiny_mlp@numba",
            "small_cnn@numba", "cohen:tiny_mlp@numba", "cohen:small_cnn@numba")


def complete() -> bool:
    return all(k in RESULTS and RESULTS[k] for k in REQUIRED)


def write_results(path: Path, started: str, load_before: str, wall_seconds: float) -> None:
    r = RESULTS
    m = machine()

    def ratio_a(key):
        return r[key]["ratio"]

    def ratio_b(key):
        return r["cohen:" + key]["ratio"]

    def ratio_c(key):
        return r[key]["ratio"]

    lines = [
        "# Benchmark results",
        "",
        "Written by `make bench` (`pytest bench/`); every number below comes from one run "
        + ("(**SMOKE run: tiny sizes, not meaningful**)." if SMOKE else "."),
        "",
        f"- started {started}, {wall_seconds:.0f} s wall; load average (1/5/15 min) before "
        f"{load_before}, after {load_average()}",
        f"- machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads used; torch "
        f"{m['torch']}, numba {m['numba']}, triton {m['triton']}, python {m['python']}; models on "
        f"{m['device']}" + ("" if m["device"] != "cpu" else " (no GPU)"),
        f"- settings: n0 = {N0}, n = {N} (ResNet-20: n = {N_RESNET}), batch_size = {BATCH}, "
        f"sigma = {SIGMA}, alpha = {ALPHA}; inputs per call: tiny MLP "
        f"{INPUTS['tiny_mlp']}, small CNN {INPUTS['small_cnn']}, ResNet-20 "
        f"{INPUTS['resnet20']}, Dual RS {DUAL_INPUTS}; each time is the median of its rounds "
        f"(tiny MLP {ROUNDS['tiny_mlp']}, small CNN {ROUNDS['small_cnn']}, ResNet-20 "
        f"{ROUNDS['resnet20']}, Dual RS {DUAL_ROUNDS}) after a warm-up round. The two sides "
        "of a ratio are timed as back-to-back pairs (the reference right before each round) "
        "and a ratio is the median of its pairs' ratios, so drift in machine speed and "
        "allocator state hits both sides; model throughputs and Dual RS times are medians over "
        "the rounds too (so they agree with the ratios; the kernel rows are best rounds)",
        f"- default backends: noise {default_noise_backend()}, votes numba, channels_last "
        "inputs",
        "",
        "## Ratios",
        "",
        "| ratio | model | measured | target |",
        "| --- | --- | --- | --- |",
        f"| (a) certify / forward-only | tiny MLP | {ratio_a('tiny_mlp'):.2f} | >= 0.7 |",
        f"| (a) certify / forward-only | small CNN | {ratio_a('small_cnn'):.2f} | >= 0.9 |",
        f"| (a) certify / forward-only | ResNet-20 | {ratio_a('resnet20'):.2f} | >= 0.9 |",
        *([f"| (a) with fold_bn=False (BatchNorm not folded) | ResNet-20 | "
           f"{ratio_a('resnet20-nofold'):.2f} | - |"] if "resnet20-nofold" in r else []),
        f"| (b) certify / Cohen-style loop | small CNN | {ratio_b('small_cnn'):.2f} | >= 1.5 |",
        f"| (b) certify / Cohen-style loop | tiny MLP | {ratio_b('tiny_mlp'):.2f} | - |",
        f"| (a) with noise_backend='numba' (libm) | tiny MLP | {ratio_a('tiny_mlp@numba'):.2f} "
        "| - |",
        f"| (a) with noise_backend='numba' (libm) | small CNN | "
        f"{ratio_a('small_cnn@numba'):.2f} | - |",
        f"| (b) with noise_backend='numba' (libm) | small CNN | "
        f"{ratio_b('small_cnn@numba'):.2f} | - |",
        f"| (b) with noise_backend='numba' (libm) | tiny MLP | "
        f"{ratio_b('tiny_mlp@numba'):.2f} | - |",
        *(f"| (c) Dual RS time / standard RS time (σ = 0.5) | class-group estimator (default), "
          f"n = {n:,} | {ratio_c(f'dual:class_group-sequential-n{n}'):.2f} | <= 1.15 |"
          for n in DUAL_N),
        f"| (c) Dual RS time / standard RS time (σ = 0.5) | class-group estimator, plain "
        f"(estimator_rounds=1), n = {DUAL_N[0]:,} | "
        f"{ratio_c(f'dual:class_group-plain-n{DUAL_N[0]}'):.2f} | < 1.6 |",
        "",
        "(a) and (b) are throughput ratios (higher is better), (c) a time ratio (lower is "
        "better). Forward-only runs the model on the very batches certify builds (same "
        "values, packing and channels_last layout); certify runs ResNet-20's BatchNorm "
        "folded into its convolutions (the default, docs/cohen.md), so its (a) can exceed 1. "
        "The Cohen-style loop certifies one input at a time: `x.repeat`, `randn_like * sigma`, `argmax`, host `bincount`, NCHW. Dual RS "
        "is the embedded default (`models.load_default_dual()`: class-group estimator, "
        "committed small-CNN experts at sigma 0.25 / 0.5 / 1.0) with the same n0 / n for "
        "estimator and classifier; standard RS is the sigma-0.25 expert on the same inputs. "
        "Certified accuracy of each on 500 test images: results/RESULTS.md.",
        "",
        "## Throughput (samples/s)",
        "",
        "| model | noise backend | certify | forward-only | Cohen-style loop |",
        "| --- | --- | --- | --- | --- |",
    ]
    names = {"tiny_mlp": "tiny MLP", "small_cnn": "small CNN", "resnet20": "ResNet-20",
             "resnet20-nofold": "ResNet-20, fold_bn=False",
             "tiny_mlp@numba": "tiny MLP", "small_cnn@numba": "small CNN"}
    for key, name in names.items():
        if key not in r:
            continue
        cohen = r.get("cohen:" + key, {}).get("cohen_rate")
        backend = key.split("@")[1] if "@" in key else f"{default_noise_backend()} (auto)"
        lines.append(f"| {name} | {backend} | {_fmt_rate(r[key]['certify_rate'])} | "
                     f"{_fmt_rate(r[key]['forward_rate'])} | "
                     f"{_fmt_rate(cohen) if cohen else 'not run'} |")
    if "small_cnn+malloc" in r:
        lines += [
            "",
            "## With `sampling.tune_cpu_allocator()` (glibc; the engine's default)",
            "",
            "Measured last in the same run (the setting is process-wide; the rows above ran "
            "with DUALRS_FAST_TUNE_MALLOC=0, bench/conftest.py): glibc's malloc then "
            "keeps large freed blocks instead of an mmap / munmap per activation tensor, whose "
            "page faults cost a third of a conv net's CPU time at batch_size 1000 here.",
            "",
            "| model | certify | forward-only | (a) | Cohen-style loop | (b) | certify vs default |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for key, name in (("small_cnn", "small CNN"), ("resnet20", "ResNet-20")):
            t = r.get(key + "+malloc")
            if not t:
                continue
            cohen = r.get("cohen:" + key + "+malloc")
            cohen_cells = (f"{_fmt_rate(cohen['cohen_rate'])} | "
                           f"{cohen['ratio']:.2f}") if cohen else "- | -"
            lines.append(f"| {name} | {_fmt_rate(t['certify_rate'])} | "
                         f"{_fmt_rate(t['forward_rate'])} | {t['ratio']:.2f} | "
                         f"{cohen_cells} | {t['certify_rate'] / r[key]['certify_rate']:.2f}x |")
    lines += [
        "",
        "## Dual RS",
        "",
        f"The first {DUAL_INPUTS} test images (routing mix in the per-level table), n0 = {N0}; "
        "standard RS with each expert on the same inputs, timed right before each Dual RS "
        "round; a ratio is the median over rounds of Dual RS time / standard RS time.",
        "",
        "| estimator, sampling | n | Dual RS s | standard RS s (σ = 0.25 / 0.5 / 1) | ratio to "
        "σ = 0.25 / 0.5 / 1 | estimator samples / input | routed / certified | mean radius |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    dual_keys = [(f"dual:class_group-sequential-n{n}", "class group, sequential (default)")
                 for n in DUAL_N]
    dual_keys.append((f"dual:class_group-plain-n{DUAL_N[0]}", "class group, plain"))
    for key, name in dual_keys:
        d = r[key]
        lines.append(
            f"| {name} | {d['n']:,} | {d['dual_s']:.2f} | "
            + " / ".join(f"{v:.2f}" for v in d["standard_s"].values()) + " | "
            + " / ".join(f"{v:.2f}" for v in d["ratios"].values())
            + f" | {d['estimator_samples']:,.0f} of {d['n']:,} | {d['routed']} / "
            f"{d['certified']} of {DUAL_INPUTS} | {d['radius']:.3f} |")
    lines += ["", "Per level (the estimator's choice): inputs, those whose estimator and "
              "classifier shared one pass, estimator samples per input, and noisy samples per "
              "input (estimator and classifier) over standard RS's n0 + n.", "",
              "| estimator, sampling | n | level | inputs | shared pass | estimator samples / "
              "input | samples / standard RS's |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for key, name in dual_keys:
        for level, v in r[key]["per_level"].items():
            lines.append(f"| {name} | {r[key]['n']:,} | {level} | {v['inputs']} | "
                         f"{v['shared']} | {v['estimator_samples']:,.0f} | "
                         f"{v['sample_ratio']:.2f} |")
    best_noise = max(r["noise:" + b]["normals_per_s"] for b in ("numba", "numba-simd"))
    lines += [
        "",
        "## Kernels on this CPU (auto picks the faster)",
        "",
        "| op | numba-simd | numba (libm) | torch | best numba / torch |",
        "| --- | --- | --- | --- | --- |",
        f"| noise: x + sigma * N(0, I), {r['noise:numba']['rows']} x 784 (M normals/s) | "
        f"{r['noise:numba-simd']['normals_per_s'] / 1e6:.0f} | "
        f"{r['noise:numba']['normals_per_s'] / 1e6:.0f} | "
        f"{r['noise:torch']['normals_per_s'] / 1e6:.0f} | "
        f"{best_noise / r['noise:torch']['normals_per_s']:.1f}x |",
        f"| votes: argmax + histogram, {BATCH} x 10 logits (us/batch) | "
        f"- | {r['votes:numba']['us']:.0f} | {r['votes:torch']['us']:.0f} | "
        f"{r['votes:torch']['us'] / r['votes:numba']['us']:.1f}x |",
        "",
        "Triton kernels were not timed: there is no GPU here (they are tested for equality "
        "with the references in Triton's CPU interpreter).",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + kept_sections(path))


#: RESULTS.md keeps everything from this line on when `make bench` rewrites the file above it
#: (sections measured by other scripts, e.g. bench/radii_vs_certify.py)
KEPT_MARKER = "<!-- not written by make bench: kept as is when it rewrites the file -->"


def kept_sections(path: Path) -> str:
    text = path.read_text() if path.exists() else ""
    at = text.find(KEPT_MARKER)
    return "\n" + text[at:] if at >= 0 else ""
