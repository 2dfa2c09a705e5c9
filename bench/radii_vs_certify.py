"""certify_radii (sequential, early stopping) against full CERTIFY at the same n_max and alpha:
samples per input, wall time, and certified accuracy at each grid radius side by side.

    python -P bench/radii_vs_certify.py certify --setting 0.5 --num 200   # full CERTIFY
    python -P bench/radii_vs_certify.py radii --setting 0.5 --num 200     # certify_radii
    python -P bench/radii_vs_certify.py table                             # markdown

--setting: a sigma of the embedded small CNN (0.25, 0.5, 1.0) or 'dual' (the embedded Dual
RS). Inputs: --num held-out MNIST-5k test images from --start (default 0), seed 0 and ids
start..start+num-1 for both methods, so certify_radii's samples are a prefix of CERTIFY's.
Results go to --dir (default bench/radii_runs/) as SETTING_certify.npz / SETTING_run.json.

The CERTIFY side draws exactly CERTIFY's samples (n0 selection + n estimation per input; for
Dual RS the plain procedure: all n estimator samples, then the classifier where the estimator
does not abstain) but counts the estimation votes per block of --block samples, so that
``bench/replay_radii.py`` can replay any sequential rule on the very same votes. Its decisions
are CERTIFY's (``certify_counts`` on the summed counts); the first --check inputs are also
certified by ``drs.certify`` / ``DualSmoothing.certify(estimator_rounds=1)`` and must agree
exactly.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import scipy.stats
import torch

import dualrs_fast as drs
from dualrs_fast.bounds import certified_radius
from dualrs_fast.level_passes import level_counts
from dualrs_fast.loading import load_dataset
from dualrs_fast.models import load_default_classifier, load_default_dual
from dualrs_fast.noise import Stream
from dualrs_fast.sampling import Draw, count_votes, tune_cpu_allocator
from dualrs_fast.sequential_radii import grid_index
from dualrs_fast.smoothing import ABSTAIN, certify_counts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # python -P leaves it out
from radii_grid import GRID, grid_accuracy  # noqa: E402
from replay_radii import certify_top, replay  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _draws(select, estimate, n0, n, block):
    return [Draw(select, n0)] + [Draw(estimate, min(block, n - s), start=s)
                                 for s in range(0, n, block)]


def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def run_certify(args, x, model):
    """Full CERTIFY with the estimation votes recorded per block."""
    num, common = x.shape[0], dict(seed=0, batch_size=args.batch)
    ids = args.start + torch.arange(num)
    if args.setting == "dual":
        dual = model
        alpha_ve, alpha_cls = dual.alphas(args.alpha)
        sigma_ve = torch.full((num,), dual.estimator_sigma, dtype=torch.float64)

        def estimator():
            return count_votes(dual.estimator, x, sigma_ve,
                               _draws(Stream.ESTIMATOR_SELECT, Stream.ESTIMATOR_ESTIMATE, args.n0,
                                      args.n, args.block),
                               ids=ids, num_classes=len(dual.sigmas), **common)
        ve_counts, sec, cpu = _timed(estimator)
        ve = certify_counts(ve_counts[0], ve_counts[1:].sum(0), args.n, alpha_ve, sigma_ve)
        routed = torch.nonzero(ve.prediction != ABSTAIN).reshape(-1)
        level = ve.prediction[routed]

        def classifier():
            return level_counts(dual, x[routed], ids[routed], level,
                                _draws(Stream.SELECT, Stream.ESTIMATE, args.n0, args.n,
                                       args.block), seed=0, batch_size=args.batch,
                                progress=False)[0]
        cls_counts, sec2, cpu2 = _timed(classifier)
        sigma = torch.tensor(dual.sigmas, dtype=torch.float64)[level]
        cls = certify_counts(cls_counts[0], cls_counts[1:].sum(0), args.n, alpha_cls, sigma)
        prediction = torch.full((num,), ABSTAIN, dtype=torch.int64)
        radius = torch.zeros(num, dtype=torch.float32)
        prediction[routed] = cls.prediction
        radius[routed] = torch.where(cls.prediction != ABSTAIN,
                                     torch.minimum(ve.radius[routed], cls.radius), 0.0)
        samples = (args.n0 + args.n) * (1 + (ve.prediction != ABSTAIN).long())
        full_cls = torch.zeros((cls_counts.shape[0], num, cls_counts.shape[2]), dtype=torch.int32)
        full_cls[:, routed] = cls_counts.int()
        arrays = {"estimator": ve_counts.int().numpy(), "classifier": full_cls.numpy(),
                  "level": np.where(ve.prediction != ABSTAIN, ve.prediction, -1)}
        sec, cpu = sec + sec2, cpu + cpu2
        check = dual.certify(x[:args.check], n0=args.n0, n=args.n, alpha=args.alpha,
                             estimator_rounds=1, share_pass=False, ids=ids[:args.check],
                             **common)
    else:
        sigma = torch.full((num,), float(args.setting), dtype=torch.float64)

        def classifier():
            return count_votes(model, x, sigma,
                               _draws(Stream.SELECT, Stream.ESTIMATE, args.n0, args.n, args.block),
                               ids=ids, **common)
        counts, sec, cpu = _timed(classifier)
        r = certify_counts(counts[0], counts[1:].sum(0), args.n, args.alpha, sigma)
        prediction, radius = r.prediction, r.radius
        samples = torch.full((num,), args.n0 + args.n)
        arrays = {"classifier": counts.int().numpy()}
        check = drs.certify(model, x[:args.check], n0=args.n0, n=args.n, alpha=args.alpha,
                            sigma=float(args.setting), ids=ids[:args.check], **common)
    if not (torch.equal(check.prediction, prediction[:args.check])
            and torch.equal(check.radius.float(), radius[:args.check].float())):
        raise SystemExit("recorded CERTIFY disagrees with drs.certify: "
                         f"{check.prediction.tolist()} {check.radius.tolist()} vs "
                         f"{prediction[:args.check].tolist()} {radius[:args.check].tolist()}")
    np.savez_compressed(_path(args, "certify.npz"), block=args.block, n=args.n, n0=args.n0,
                        alpha=args.alpha, **arrays)
    return {"seconds": sec, "cpu_seconds": cpu, "prediction": prediction.tolist(),
            "radius": radius.double().tolist(), "samples": samples.tolist()}


def run_radii(args, x, model):
    sigma = {} if args.setting == "dual" else {"sigma": float(args.setting)}
    r, sec, cpu = _timed(lambda: drs.certify_radii(
        model, x, GRID, n_max=args.n, n0=args.n0, alpha=args.alpha, batch_size=args.batch, seed=0,
        ids=args.start + torch.arange(x.shape[0]), **sigma))
    return {"seconds": sec, "cpu_seconds": cpu, "prediction": r.prediction.tolist(),
            "radius": r.radius.tolist(), "samples": r.samples.tolist()}


def _path(args, suffix):
    os.makedirs(args.dir, exist_ok=True)
    return os.path.join(args.dir, f"{args.setting}_{suffix}")


def _name(setting):
    return "embedded Dual RS" if setting == "dual" else f"small CNN, sigma {float(setting):g}"


def zero_error_floor(radius, sigma, alpha, sigma_ve=None, alpha_ve=None, n0=100) -> np.ndarray:
    """Per input: the samples that ANY level-alpha test needs, even when every vote goes to
    the input's class, to certify the largest grid radius r that CERTIFY certified: the
    all-votes outcome has probability Phi(r / sigma)^m at the boundary p = Phi(r / sigma), so
    it may certify only once that is <= alpha, i.e. m >= ln(alpha) / ln Phi(r / sigma)
    (r = 0: p = 1/2). Dual RS: the estimator's m at (sigma_ve, alpha_ve) plus the classifier's.
    Plus n0 selection samples per test run. 0 where CERTIFY certified nothing."""
    radius = np.asarray(radius, dtype=np.float64)
    top = np.array(GRID)[np.maximum(grid_index(GRID, radius, False), 0)]

    def needed(s, a):
        return n0 + np.ceil(np.log(a) / np.log(scipy.stats.norm.cdf(top / s)))
    floor = needed(np.asarray(sigma, dtype=np.float64), alpha)
    if sigma_ve is not None:
        floor = floor + needed(sigma_ve, alpha_ve)
    return np.where(radius > 0, floor, 0.0)


def oracle_samples(counts, top, sigma, alpha, n0, block) -> np.ndarray:
    """Per input: the samples an ORACLE would draw that knows the largest grid radius CERTIFY
    certified (grid index ``top``, -1: none) and tests only that radius, at the full alpha,
    on CERTIFY's own votes (``counts``: selection + per-block counts, as recorded): n0 plus
    the first block at which the Clopper-Pearson bound clears it. Not a sound procedure (the
    radius to test comes from all n samples); it shows what any rule loses to alpha's split
    and to deciding when to stop. n0 alone where top is -1."""
    counts = np.asarray(counts, dtype=np.int64)
    chosen = counts[0].argmax(1)
    cumulative = np.cumsum(counts[1:, np.arange(counts.shape[1]), chosen], axis=0)  # (T, B)
    n = block * np.arange(1, cumulative.shape[0] + 1)[:, None]
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), top.shape)
    radius, abstain = certified_radius(cumulative, n, alpha, sigma[None, :])
    reached = grid_index(GRID, radius, abstain)
    first = np.argmax(reached >= top[None, :], axis=0)
    return np.where(top >= 0, n0 + block * (first + 1), n0).astype(np.float64)


def table(out, labels, floor=None, oracle=None, perfect_futility=None) -> str:
    """Markdown table of one setting; CPU time (the process's, all threads) is the steadier
    number on a shared machine."""
    num = len(labels)
    first = out.get("start", 0)
    lines = [f"**{_name(out['setting'])}: {num} images ({first}..{first + num - 1}), "
             f"n_max = {out['n']:,}, "
             f"alpha = {out['alpha']}**", "",
             "| method | " + " | ".join(f"r={r:g}" for r in GRID)
             + " | samples / input | wall s | CPU s |", "|---" * (len(GRID) + 4) + "|"]
    accuracy, samples, seconds, cpu = {}, {}, {}, {}
    for method in ("certify", "certify_radii"):
        m = out[method]
        accuracy[method] = grid_accuracy(m["prediction"], m["radius"], labels)
        samples[method] = float(np.sum(m["samples"]))
        seconds[method], cpu[method] = m["seconds"], m["cpu_seconds"]
        lines.append(f"| {method} | " + " | ".join(f"{a:.3f}" for a in accuracy[method])
                     + f" | {samples[method] / num:,.0f} | {seconds[method]:.1f} | "
                     f"{cpu[method]:.1f} |")
    diff = np.abs(accuracy["certify"] - accuracy["certify_radii"]).max()
    lines += ["", f"samples: {samples['certify'] / samples['certify_radii']:.1f}x fewer; wall "
              f"time {seconds['certify'] / seconds['certify_radii']:.1f}x less (CPU time "
              f"{cpu['certify'] / cpu['certify_radii']:.1f}x); largest certified-accuracy "
              f"difference {diff:.3f}"]
    if floor is not None:
        lines.append(f"zero-error floor (``zero_error_floor``: the fewest samples any sound test "
                     f"needs to certify CERTIFY's grid radii, reached only if every vote goes to "
                     f"the class): {floor.mean():,.0f} samples / input, so at most "
                     f"{samples['certify'] / floor.sum():.1f}x fewer samples than CERTIFY")
    if oracle is not None:
        lines.append(f"oracle (``oracle_samples``: tests only CERTIFY's own answer, at the full "
                     f"alpha, on CERTIFY's votes): {oracle.mean():,.0f} samples / input, "
                     f"{samples['certify'] / oracle.sum():.1f}x fewer than CERTIFY")
    if perfect_futility is not None:
        lines.append(f"perfect futility (``replay_radii.py --oracle-futility``: certify_radii "
                     f"replayed with radii given up exactly where CERTIFY did not certify them, "
                     f"so only alpha's split over the checkpoints costs): "
                     f"{perfect_futility.mean():,.0f} samples / input, "
                     f"{samples['certify'] / perfect_futility.sum():.1f}x fewer than CERTIFY")
    return "\n".join(lines)


def _level_sigmas(dual, level) -> np.ndarray:
    """The classifier's sigma per input from the recorded levels (1.0 where none: unused)."""
    return np.where(level >= 0, np.asarray(dual.sigmas)[np.maximum(level, 0)], 1.0)


def _floor(out, recorded, dual):
    """zero_error_floor of a setting's CERTIFY radii (Dual RS: sigmas from the recorded levels;
    None without them, as in a fresh clone, where the votes files are not committed)."""
    radius, alpha = out["certify"]["radius"], out["alpha"]
    if out["setting"] != "dual":
        return zero_error_floor(radius, float(out["setting"]), alpha, n0=out["n0"])
    if recorded is None:
        return None
    alpha_ve, alpha_cls = dual.alphas(alpha)
    return zero_error_floor(radius, _level_sigmas(dual, recorded["level"]), alpha_cls,
                            dual.estimator_sigma, alpha_ve, n0=out["n0"])


def _oracle(out, z, dual):
    """oracle_samples of a setting from its recorded CERTIFY votes ``z``."""
    top = certify_top(out)
    block, n0, alpha = int(z["block"]), int(z["n0"]), float(z["alpha"])
    if out["setting"] != "dual":
        return oracle_samples(z["classifier"], top, float(out["setting"]), alpha, n0, block)
    alpha_ve, alpha_cls = dual.alphas(alpha)
    level = z["level"]
    return (oracle_samples(z["estimator"], top, dual.estimator_sigma, alpha_ve, n0, block)
            + np.where(level >= 0, oracle_samples(z["classifier"], top, _level_sigmas(dual, level),
                                                   alpha_cls, n0, block), 0.0))


def _table(args, out, labels) -> str:
    """``table`` with the bound lines computed from the recorded votes, when recorded."""
    path = os.path.join(args.dir, f"{out['setting']}_certify.npz")
    recorded = np.load(path) if os.path.exists(path) else None
    dual = load_default_dual() if out["setting"] == "dual" else None
    if recorded is None:
        return table(out, labels, _floor(out, recorded, dual))
    return table(out, labels, _floor(out, recorded, dual), _oracle(out, recorded, dual),
                 replay(out, recorded, oracle_futility=True).samples.double().numpy())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("step", choices=("certify", "radii", "table"))
    p.add_argument("--setting", default="0.5", help="0.25, 0.5, 1.0 (small CNN) or dual")
    p.add_argument("--num", type=int, default=200)
    p.add_argument("--start", type=int, default=0, help="first test image (and noise id)")
    p.add_argument("--n", type=int, default=100_000, help="n of CERTIFY = n_max")
    p.add_argument("--n0", type=int, default=100)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--block", type=int, default=100, help="CERTIFY's votes recorded per block")
    p.add_argument("--check", type=int, default=2, help="inputs re-certified by drs.certify")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dir", default=os.path.join(HERE, "radii_runs"))
    args = p.parse_args(argv)
    labels_all = load_dataset("mnist5k").y
    if args.step == "table":
        for path in sorted(glob.glob(os.path.join(args.dir, "*_run.json"))):
            with open(path) as f:
                out = json.load(f)
            if "certify" in out and "certify_radii" in out:
                start = out.get("start", 0)
                print(_table(args, out, labels_all[start:start + out["num"]].numpy()) + "\n")
        return
    torch.set_num_threads(args.threads)
    tune_cpu_allocator()  # same for both methods
    x = load_dataset("mnist5k").x[args.start:args.start + args.num]
    model = load_default_dual() if args.setting == "dual" else load_default_classifier(
        float(args.setting))
    sigma = {} if args.setting == "dual" else {"sigma": float(args.setting)}
    drs.certify(model, x[:2], n0=10, n=100, seed=0, **sigma)  # JIT warm-up
    path = _path(args, "run.json")
    out = {"setting": args.setting, "start": args.start, "num": args.num, "n": args.n, "n0": args.n0,
           "alpha": args.alpha, "grid": GRID}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
        if all(old.get(k, 0 if k == "start" else None) == v for k, v in out.items() if k != "grid"):
            out = old
    key = "certify" if args.step == "certify" else "certify_radii"
    out[key] = (run_certify if args.step == "certify" else run_radii)(args, x, model)
    with open(path, "w") as f:
        json.dump(out, f)
    m = out[key]
    print(f"{args.setting} {key}: {m['seconds']:.1f} s wall, {m['cpu_seconds']:.1f} s CPU, "
          f"{np.mean(m['samples']):,.0f} samples / input", flush=True)


if __name__ == "__main__":
    main()
