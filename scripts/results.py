#!/usr/bin/env python
"""The committed results tables (results/RESULTS.md for mnist5k, results/FASHION_MNIST.md,
results/MNIST.md for full MNIST) and figures (docs/dual_rs.png, docs/dual_rs_fashion_mnist.png,
docs/dual_rs_mnist.png): certified accuracy of standard RS
at each single sigma, the multiscale cascade and Dual RS on held-out test images, same models,
same n0, n and alpha, at two budgets.

    make results            # the three datasets (~35 minutes each on 2 idle cores)
    python scripts/results.py --dataset fashion-mnist --n-test 200 --budgets 2000
    python scripts/results.py --n-test 20 --budgets 500 --out /tmp/r.md --plot /tmp/r.png   # quick check
    python scripts/results.py --rows dual   # after a change to Dual RS only (~12 min a dataset)

Rows, for each budget n (N0 = 100 selection samples, alpha = 0.001, seed 0, noise keyed by the
test index): standard RS with the committed classifier at sigma 0.25, 0.5 and 1.0
(models.load_default_classifier); the best single sigma at each radius (a row of maxima, not a
method); CascadeSmoothing over the three classifiers (Jeong & Shin's multiscale smoothing);
Dual RS with the committed estimator (models.load_default_dual, sequential estimator, alpha
split in halves), once per committed estimator (the class-group map; the paper's learned
estimator where one is committed) and, where a noise-conditioned classifier is committed, with
it in place of the experts (one model, inputs of all levels in one forward pass); and the
oracle router: per input the level whose classifier certifies the
largest correct radius at the classifier's half of alpha (what Dual RS would get with a perfect
estimator whose R_ve never binds; a ceiling, not a certificate).

Mean radius: the certified radius of correct predictions, 0 otherwise, averaged over inputs.
Wall-time ratio: each method's time over standard RS at sigma 0.5 on the first CHUNK inputs,
calls interleaved TIMING_REPEATS times (the machine may be shared), at the first budget.
R_ve distribution: per Dual RS row, quantiles of the estimator's certified radius R_ve over the
inputs it routes, beside those of the routed classifier's R_cls, the share of correct inputs
whose radius min(R_ve, R_cls) is set by R_ve, and the mean radius the same routing would reach
without the cap (a diagnostic, not a certificate).

--rows dual recomputes the Dual RS rows only (certified accuracy, their R_ve tables, their
wall-time ratios against standard RS at sigma 0.5 timed anew) in the existing table at --out,
keeps every other row (standard RS, cascade and oracle do not depend on Dual RS's code), says
so in the header, and redraws the figure from the table.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

import torch

import dualrs_fast as drs
from dualrs_fast.cascade import CascadeSmoothing
from dualrs_fast.data import load_dataset
from dualrs_fast.models import (DEFAULT_ESTIMATORS, ESTIMATOR_ARCHS,
                                conditioned_weights_path, estimator_weights_path,
                                load_default_classifier, load_default_dual)
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes
from dualrs_fast.smoothing import certify_counts
from dualrs_fast.training import REPORTED_RADII

ROOT = Path(__file__).resolve().parents[1]
RADII = REPORTED_RADII
SIGMAS = (0.25, 0.5, 1.0)
N_TEST, N0, BUDGETS, ALPHA, SEED, BATCH, CHUNK = 500, 100, (2000, 10_000), 0.001, 0, 1000, 50
TIMING_REPEATS = 3
#: where each dataset's table and figure go
OUTPUTS = {"mnist5k": ("RESULTS.md", "dual_rs.png"),
           "fashion-mnist": ("FASHION_MNIST.md", "dual_rs_fashion_mnist.png"),
           "mnist": ("MNIST.md", "dual_rs_mnist.png")}
STANDARD = "standard σ={:g}"
CASCADE = "cascade (multiscale, largest σ first)"


def accuracy(radius, correct):
    return [float(((radius >= r) & correct).double().mean()) for r in RADII]


def row(label, radius, correct, seconds=None, **extra):
    radius = torch.where(correct, radius.double(), 0.0)
    out = {"label": label, "acc": accuracy(radius, correct), "mean": float(radius.mean()),
           "seconds": seconds, **extra}
    print(f"{label:40s} " + " ".join(f"{a:.3f}" for a in out["acc"])
          + f"  mean {out['mean']:.3f}" + (f"  {seconds:.0f} s" if seconds else ""), flush=True)
    return out


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_methods(dataset):
    """{label: smoother}: the committed classifiers, the cascade over them, and Dual RS with
    each committed estimator (experts, and the noise-conditioned classifier where committed)."""
    experts = {s: load_default_classifier(s, dataset=dataset) for s in SIGMAS}
    methods = {STANDARD.format(s): m for s, m in experts.items()}
    methods[CASCADE] = CascadeSmoothing(experts, sigmas=SIGMAS)
    for arch in ESTIMATOR_ARCHS:
        if estimator_weights_path(arch, dataset=dataset).is_file():
            methods[f"Dual RS ({arch} estimator, experts)"] = load_default_dual(
                estimator=arch, dataset=dataset)
            default = arch == DEFAULT_ESTIMATORS.get(dataset)
            if default and conditioned_weights_path(dataset).is_file():
                methods[f"Dual RS ({arch} estimator, one noise-conditioned classifier)"] = \
                    load_default_dual(estimator=arch, dataset=dataset, conditioned=True)
    return methods


def r_ve_summary(label, r, y):
    """The estimator's R_ve next to the routed classifier's R_cls (docstring)."""
    routed = r.level >= 0
    correct = r.prediction == y
    quantiles = torch.tensor([0.1, 0.25, 0.5, 0.75, 0.9], dtype=torch.float64)
    ve = r.radius_estimator[routed].double().quantile(quantiles) if routed.any() else quantiles * 0
    cls = r.radius_classifier[routed].double().quantile(quantiles) if routed.any() else quantiles * 0
    capped = correct & (r.radius_estimator < r.radius_classifier)
    uncapped = torch.where(correct, r.radius_classifier.double(), 0.0).mean()
    return {"label": label, "ve": ve.tolist(), "cls": cls.tolist(),
            "capped": float(capped.double().sum() / max(1, int(correct.sum()))),
            "uncapped_mean": float(uncapped)}


def smoother_row(label, method, x, y, n, ids):
    """A smoother's row (cascade or Dual RS) and, for Dual RS, its R_ve summary (else None)."""
    r, sec = timed(lambda: method.certify(x, n0=N0, n=n, alpha=ALPHA, seed=SEED, ids=ids,
                                          batch_size=BATCH))
    extra = {"levels": [int((r.level == k).sum()) for k in range(-1, len(SIGMAS))]}
    summary = None
    if label.startswith("Dual RS"):
        extra.update(estimator_samples=float(r.estimator_samples.double().mean()),
                     r_ve_median=float(r.radius_estimator.median()))
        summary = r_ve_summary(label, r, y)
    return row(label, r.radius, r.prediction == y, sec, **extra), summary


def dual_rows(x, y, n, ids, methods):
    """The Dual RS rows and R_ve summaries alone (--rows dual)."""
    pairs = [smoother_row(label, method, x, y, n, ids) for label, method in methods.items()]
    return [row for row, _ in pairs], [summary for _, summary in pairs]


def budget_rows(x, y, n, ids, methods):
    rows, oracle, summaries = [], [], []
    for label, method in methods.items():
        if label.startswith("standard"):
            s = float(label.split("=")[1])
            # the two calls drs.certify makes, so the oracle's certificates reuse the same votes
            sigma = torch.full((x.shape[0],), s, dtype=torch.float64)
            counts, sec = timed(lambda: count_votes(
                method, x, sigma, [Draw(Stream.SELECT, N0), Draw(Stream.ESTIMATE, n)],
                seed=SEED, ids=ids, batch_size=BATCH))
            r = certify_counts(counts[0], counts[1], n, ALPHA, sigma)
            rows.append(row(label, r.radius, r.prediction == y, sec))
            # the oracle's per-level certificates at the classifier's half of alpha
            r = certify_counts(counts[0], counts[1], n, ALPHA / 2, sigma)
            oracle.append(torch.where(r.prediction == y, r.radius.double(), 0.0))
            continue
        smoother, summary = smoother_row(label, method, x, y, n, ids)
        rows.append(smoother)
        if summary is not None:
            summaries.append(summary)
    singles = rows[:len(SIGMAS)]
    best = {"label": "*best single σ at each radius*",
            "acc": [max(r["acc"][i] for r in singles) for i in range(len(RADII))],
            "mean": max(r["mean"] for r in singles), "seconds": None}
    per_level = torch.stack(oracle)
    best_level = per_level.argmax(0)
    radius = per_level.max(0).values
    rows.append(row("*oracle router (ceiling, not a certificate)*", radius.float(), radius > 0,
                    levels=[0] + [int(((best_level == k) & (radius > 0)).sum())
                                  for k in range(len(SIGMAS))]))
    rows.insert(len(SIGMAS), best)
    return rows, summaries


def time_ratios(x, ids, n, methods, repeats):
    """Each method's wall time over standard RS at sigma 0.5, calls interleaved."""
    kw = dict(n0=N0, n=n, alpha=ALPHA, seed=SEED, ids=ids, batch_size=BATCH)
    calls = {label: (lambda m=m, s=s: drs.certify(m, x, sigma=s, **kw)) for label, m, s in
             ((label, m, float(label.split("=")[1])) for label, m in methods.items()
              if label.startswith("standard"))}
    calls.update({label: (lambda m=m: m.certify(x, **kw)) for label, m in methods.items()
                  if not label.startswith("standard")})
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            times[name].append(timed(fn)[1])
    median = {name: sorted(t)[len(t) // 2] for name, t in times.items()}
    return {name: t / median[STANDARD.format(0.5)] for name, t in median.items()}


def machine():
    cpu = next((line.split(":", 1)[1].strip() for line in
                Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")),
               "unknown")
    # not `nproc`: it reports OMP_NUM_THREADS where that is set
    return (f"{cpu}, {os.cpu_count()} cores, torch threads: {torch.get_num_threads()}, "
            f"torch {torch.__version__}, Python {platform.python_version()}, "
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")


def timing_note(chunk: int, repeats: int, n: int) -> str:
    if chunk <= 0:
        return "No wall-time ratios (--timing-inputs 0)."
    return (f"The wall-time ratios are medians of {repeats} interleaved calls on the first "
            f"{chunk} inputs at n = {n:,}.")


def busy_note(load_before) -> str:
    """Times taken on a machine busier than its cores are not timing results."""
    if load_before[0] <= (os.cpu_count() or 1):
        return ""
    return ("\nThe machine was busy (1-min load average above the core count): the wall-time "
            "columns are not timing results; idle ratios are in docs/dual_rs_cost.md.")


def _load(averages) -> str:
    return " / ".join(f"{a:.1f}" for a in averages)


def row_line(r, ratios) -> str:
    levels = " / ".join(str(v) for v in r["levels"]) if "levels" in r else ""
    ratio = f"{ratios[r['label']]:.2f}" if ratios and r["label"] in ratios else ""
    seconds = f"{r['seconds']:.0f}" if r["seconds"] else ""
    return (f"| {r['label']} | " + " | ".join(f"{a:.3f}" for a in r["acc"])
            + f" | {r['mean']:.3f} | {levels} | {ratio} | {seconds} |")


def markdown(rows, n, ratios):
    head = ("| method | " + " | ".join(f"r={r:g}" for r in RADII) + " | mean radius | "
            "inputs per level: abstain / 0.25 / 0.5 / 1.0 | wall-time ratio to standard σ=0.5 | "
            "wall s |")
    lines = [f"### n = {n:,}", "", head, "|" + "---|" * (len(RADII) + 5)]
    return "\n".join(lines + [row_line(r, ratios) for r in rows])


def r_ve_line(r) -> str:
    return (f"| {r['label']} | " + " / ".join(f"{v:.2f}" for v in r["ve"]) + " | "
            + " / ".join(f"{v:.2f}" for v in r["cls"])
            + f" | {r['capped']:.3f} | {r['uncapped_mean']:.3f} |")


def r_ve_markdown(summaries, n):
    head = ("| Dual RS | R_ve quantiles 10/25/50/75/90% | R_cls quantiles 10/25/50/75/90% | "
            "correct inputs capped by R_ve | mean radius without the cap |")
    lines = [f"#### R_ve against the radii it caps, n = {n:,}", "", head, "|---|---|---|---|---|"]
    return "\n".join(lines + [r_ve_line(r) for r in summaries])


def _budget(section: str) -> int:
    """n of a table section (the text after "### n = ")."""
    return int(section.split("\n", 1)[0].replace(",", ""))


def _replace_rows(text: str, lines: dict) -> str:
    """text with each line that starts with a key's cell replaced by that key's line."""
    out = []
    for line in text.split("\n"):
        label = line.split("|")[1].strip() if line.startswith("| ") else None
        out.append(lines.get(label, line))
    return "\n".join(out)


def splice_dual_rows(text: str, budget_results: dict, ratios: dict, first_n: int) -> str:
    """The table ``text`` with its Dual RS rows and R_ve tables replaced, per budget
    (``budget_results``: n -> (Dual rows, R_ve summaries)); every other line kept."""
    sections = text.split("\n### n = ")
    for i, section in enumerate(sections[1:], 1):
        n = _budget(section)
        if n not in budget_results:
            continue
        rows, summaries = budget_results[n]
        main_part, _, r_ve_part = section.partition("\n#### R_ve")
        main_part = _replace_rows(main_part, {r["label"]: row_line(
            r, ratios if n == first_n else None) for r in rows})
        r_ve_part = _replace_rows(r_ve_part, {r["label"]: r_ve_line(r) for r in summaries})
        sections[i] = main_part + ("\n#### R_ve" + r_ve_part if r_ve_part else "")
    missing = set(budget_results) - {_budget(s) for s in sections[1:]}
    if missing:
        raise SystemExit(f"--rows dual: the table has no section for n = {sorted(missing)}")
    return "\n### n = ".join(sections)


def parse_rows(text: str) -> dict:
    """{n: [{"label", "acc"}]} of a table's main rows, for the figure."""
    all_rows = {}
    for section in text.split("\n### n = ")[1:]:
        n = _budget(section)
        main_part = section.partition("\n#### R_ve")[0]
        all_rows[n] = [{"label": cells[0], "acc": [float(c) for c in cells[1:1 + len(RADII)]]}
                       for cells in ([c.strip() for c in line.strip("|").split("|")]
                                     for line in main_part.split("\n")
                                     if line.startswith("| ") and not line.startswith("| method"))]
    return all_rows


def plot(all_rows, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(all_rows), figsize=(6 * len(all_rows), 4.2), squeeze=False)
    for ax, (n, rows) in zip(axes[0], all_rows.items()):
        for r in rows:
            style = "--" if r["label"].startswith("*") else "-"
            ax.plot(RADII, r["acc"], style, marker=".", label=r["label"].strip("*"))
        ax.set_title(f"n = {n:,}, α = {ALPHA}")
        ax.set_xlabel("radius (ℓ2, pixel scale)")
        ax.set_ylabel("certified accuracy")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist5k", choices=sorted(OUTPUTS))
    p.add_argument("--n-test", type=int, default=N_TEST)
    p.add_argument("--start", type=int, default=0,
                   help="first test index (e.g. 600 with --n-test 200: the held-out check)")
    p.add_argument("--budgets", type=int, nargs="+", default=list(BUDGETS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--timing-repeats", type=int, default=TIMING_REPEATS)
    p.add_argument("--timing-inputs", type=int, default=CHUNK, help="0: no wall-time ratios")
    p.add_argument("--out", type=Path, default=None, help="default: results/ per dataset")
    p.add_argument("--plot", type=Path, default=None, help="default: docs/ per dataset")
    p.add_argument("--rows", choices=("all", "dual"), default="all",
                   help="dual: recompute the Dual RS rows of the existing table at --out")
    args = p.parse_args(argv)
    out_name, plot_name = OUTPUTS[args.dataset]
    args.out = args.out or ROOT / "results" / out_name
    args.plot = args.plot or ROOT / "docs" / plot_name
    torch.set_num_threads(args.threads)
    x_test, y_test = load_dataset(args.dataset, "test")
    x, y = x_test[args.start:args.start + args.n_test], y_test[args.start:args.start + args.n_test]
    ids = torch.arange(args.start, args.start + x.shape[0])  # noise keyed by the test index
    start, load_before = time.perf_counter(), os.getloadavg()
    methods = load_methods(args.dataset)
    if args.rows == "dual":
        return rewrite_dual_rows(args, x, y, ids, methods, start, load_before)
    chunk = args.timing_inputs
    ratios = (time_ratios(x[:chunk], ids[:chunk], args.budgets[0], methods, args.timing_repeats)
              if chunk > 0 else {})
    print("wall-time ratios", {k: round(v, 2) for k, v in ratios.items()}, flush=True)
    all_rows, all_summaries = {}, {}
    for n in args.budgets:
        all_rows[n], all_summaries[n] = budget_rows(x, y, n, ids, methods)
    total = time.perf_counter() - start
    command = ("make results" if argv is None and sys.argv[1:] == [] else
               "python scripts/results.py " + " ".join(sys.argv[1:] if argv is None else argv))
    tables = "\n\n".join(markdown(rows, n, ratios if n == args.budgets[0] else None)
                         + "\n\n" + r_ve_markdown(all_summaries[n], n)
                         for n, rows in all_rows.items())
    text = f"""# Certified accuracy: single sigma, cascade, Dual RS ({args.dataset})

Test images {args.start}..{args.start + x.shape[0] - 1} of {args.dataset}'s test split, n0 = {N0}, alpha =
{ALPHA}, seed {SEED}; written by `{command}` ({total / 60:.0f} min) on
{machine()}; load average (1/5/15 min) before {_load(load_before)}, after {_load(os.getloadavg())}.
Radii in pixel-scale l2. {timing_note(chunk, args.timing_repeats, args.budgets[0])}{busy_note(load_before)}

{tables}

![certified accuracy](../docs/{args.plot.name})
"""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(all_rows, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


def rewrite_dual_rows(args, x, y, ids, methods, start, load_before) -> int:
    """--rows dual: the Dual RS rows of the table at args.out recomputed, the rest kept."""
    if not args.out.is_file():
        raise SystemExit(f"--rows dual needs the existing table {args.out}")
    text = args.out.read_text()
    covered = f"Test images {args.start}..{args.start + x.shape[0] - 1} of {args.dataset}'s"
    if covered not in text:
        raise SystemExit(f"--rows dual: {args.out} does not cover the same images ({covered})")
    threads = re.search(r"torch threads: (\d+)", text)
    if threads and int(threads.group(1)) != args.threads:  # the wall s column must compare
        raise SystemExit(f"--rows dual: {args.out} was written with {threads.group(1)} torch "
                         f"threads; pass --threads {threads.group(1)}")
    dual = {label: m for label, m in methods.items() if label.startswith("Dual RS")}
    chunk = args.timing_inputs
    timed_methods = {STANDARD.format(0.5): methods[STANDARD.format(0.5)], **dual}
    ratios = (time_ratios(x[:chunk], ids[:chunk], args.budgets[0], timed_methods,
                          args.timing_repeats) if chunk > 0 else {})
    results = {n: dual_rows(x, y, n, ids, dual) for n in args.budgets}
    text = splice_dual_rows(text, results, ratios, args.budgets[0])
    command = "python scripts/results.py " + " ".join(sys.argv[1:])
    note = (f"Dual RS rows, their R_ve tables and wall-time ratios rewritten by `{command}` "
            f"({(time.perf_counter() - start) / 60:.0f} min) on {machine()}; load average "
            f"before {_load(load_before)}, after {_load(os.getloadavg())}. The other rows are "
            f"from the run above.{busy_note(load_before).replace(chr(10), ' ')}")
    head, _, rest = text.partition("\n\n### n = ")
    head = "\n".join(line for line in head.split("\n")
                     if not line.startswith("Dual RS rows, their R_ve tables"))
    text = head + "\n" + note + "\n\n### n = " + rest
    args.out.write_text(text)
    plot(parse_rows(text), args.plot)
    print(f"rewrote the Dual RS rows of {args.out} and redrew {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
