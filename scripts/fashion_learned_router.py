#!/usr/bin/env python
"""Issue #18, the levers fashion_router_study.py left open: a *dedicated* learned estimator
(the paper's recipe, its own network and noise, no shared pass), the paper's alternation, and
a certificate over level sets, on Fashion-MNIST.

    python -P scripts/fashion_learned_router.py labels [--images 30000]   # soft-label radii
    python -P scripts/fashion_learned_router.py train --name paper          # one recipe
    python -P scripts/fashion_learned_router.py evaluate --name paper       # offline Dual RS
    python -P scripts/fashion_learned_router.py alternate                   # + its own study data
    python -P scripts/fashion_learned_router.py evaluate --alternated --name alternated
    python -P scripts/fashion_learned_router.py evaluate                    # confidence routers

Labels: each level's estimated certified radius (``training.estimated_radii``, 128 samples per
input and level, planned for n = 2,000 at alpha / 2) on LABEL_IMAGES training images the
experts never saw and the study does not use (positions 21,000.. of the experts' permutation;
the study's images are 20,000..20,609). ``train`` fits a SmallCNN with one logit per level on
them (``training.train_soft_estimator``: soft labels at a temperature, optional class balance,
consistency + entropy), from scratch (the paper) or starting from the sigma 1.0 expert's
weights (``--init expert``: its features already read images under that noise).
``alternate`` runs ``training.train_dual`` for two rounds with the experts fine-tuned between
them, then stores the study's votes of the fine-tuned experts (under ALTERNATED).

``evaluate`` certifies Dual RS offline on the images ``fashion_router_study.py collect`` stored
(its votes of every expert), exactly as the study does (one estimator round, alpha split in
halves), with the estimator's own N0 + N noise samples at its sigma: level = its vote on the
first N0, R_ve = sigma_ve * Phi^-1(Clopper-Pearson bound of that level's count among the other
N). Besides the trained estimator as is: a sweep of one bias on the low levels' logits (how
many inputs go off 1.0), a bias per level fitted on the study's fit half (images 0..304) and
applied to the validation half (305..609), an upper bound with perfect low experts
(``ideal_low_experts``) and the level-set certificate (``level_set_radius``).

Result (docs/dual-rs.md, "The levers left open"): on the validation half (target 1.096,
constant router 1.037) the best learned estimator (30,000 images) certifies 0.936, 1.024 at its
best operating point; after the alternation 0.931 (its experts' target 1.112); no router that
sends inputs off 1.0 beats the constant one.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fashion_router_study as study  # noqa: E402  (scripts/ is not a package)

from dualrs_fast.bounds import certified_radius  # noqa: E402
from dualrs_fast.data import permuted_train_slice  # noqa: E402
from dualrs_fast.models import build_model, load_checkpoint, save_checkpoint  # noqa: E402
from dualrs_fast.training import (LABEL_SAMPLES, cached_estimated_radii,  # noqa: E402
                                  committed_experts, copy_matching_weights,
                                  soft_level_targets, train_dual,
                                  train_soft_estimator)

LABEL_FIRST, LABEL_IMAGES = 21_000, 10_000
OUT = study.OUT
BIAS_GRID = (-2.0, -1.0, -0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 4.0, 6.0)


def labels(images: int = LABEL_IMAGES):
    """(X, y, radii (levels, N)) of the label images, radii cached under OUT."""
    X, y = permuted_train_slice("fashion-mnist", LABEL_FIRST, LABEL_FIRST + images)
    experts, _ = committed_experts(study.SIGMAS, "fashion-mnist")
    cache = OUT / f"label_radii_{LABEL_FIRST}_{LABEL_FIRST + images}.pt"
    radii = cached_estimated_radii(cache, experts, X, y, study.SIGMAS, LABEL_SAMPLES,
                                   budget_n=study.N, budget_alpha=study.HALF_ALPHA,
                                   progress=True)
    return X, y, radii


def new_estimator(init: str) -> torch.nn.Module:
    expert = committed_experts((1.0,), "fashion-mnist")[0][1.0]
    torch.manual_seed(0)
    estimator = build_model("small_cnn", **{**expert.config, "num_classes": len(study.SIGMAS)})
    if init == "expert":  # every layer but the last from the 1.0 expert
        copy_matching_weights(estimator, expert)
    return estimator


def train(name, sigma_ve, init, temperature, balance, epochs, lr, consistency, entropy, images):
    X, _, radii = labels(images)
    targets, keep = soft_level_targets(radii, temperature)
    best = targets[keep].argmax(1)
    print(f"labels: {int(keep.sum())} of {len(keep)} inputs kept; best level histogram "
          f"{torch.bincount(best, minlength=len(study.SIGMAS)).tolist()}")
    estimator = new_estimator(init)
    t = time.perf_counter()
    train_soft_estimator(estimator, X[keep], targets[keep], sigma_ve, epochs=epochs, lr=lr,
                         consistency=consistency, entropy=entropy, balance=balance)
    path = OUT / f"estimator_{name}.pt"
    torch.save({"state_dict": estimator.state_dict(), "config": estimator.config,
                "sigma_ve": sigma_ve, "recipe": dict(init=init, temperature=temperature,
                                                     balance=balance, epochs=epochs, lr=lr,
                                                     consistency=consistency, entropy=entropy,
                                                     images=images)}, path)
    print(f"{path}: trained in {time.perf_counter() - t:.0f} s")


ALTERNATED = Path("runs/fashion_router_alternated")  # its own study images and estimator


def alternated_experts():
    return {s: load_checkpoint(ALTERNATED / f"expert_sigma{s:.2f}.pt")[0] for s in study.SIGMAS}


def alternate(classifier_epochs, images=LABEL_IMAGES):
    """The paper's alternation, two rounds: estimator (expert init, balanced, as ``train``)
    on the label images, each expert fine-tuned ``classifier_epochs`` epochs on all of them
    plus a second copy of those routed to it, fresh labels from the fine-tuned experts,
    estimator trained again. Then the study's votes of the fine-tuned experts on the same
    610 images (``collect``), under ALTERNATED."""
    X, y, _ = labels(images)  # round 0's radii come from this cache
    experts, _ = committed_experts(study.SIGMAS, "fashion-mnist")
    estimator = new_estimator("expert")
    t = time.perf_counter()
    train_dual(experts, estimator, X, y, study.SIGMAS, 1.0, rounds=2,
               classifier_epochs=classifier_epochs, estimator_epochs=10, lr=1e-3,
               temperature=0.25, budget_n=study.N, budget_alpha=study.HALF_ALPHA,
               radii_cache=OUT / f"label_radii_{LABEL_FIRST}_{LABEL_FIRST + images}.pt")
    print(f"alternation ({classifier_epochs} expert epochs per round) in "
          f"{time.perf_counter() - t:.0f} s")
    ALTERNATED.mkdir(parents=True, exist_ok=True)
    for sigma, expert in experts.items():
        save_checkpoint(ALTERNATED / f"expert_sigma{sigma:.2f}.pt", expert.eval(), "small_cnn")
    torch.save({"state_dict": estimator.state_dict(), "config": estimator.config,
                "sigma_ve": 1.0, "recipe": dict(init="expert", alternation=classifier_epochs,
                                                images=images)},
               ALTERNATED / "estimator_alternated.pt")
    study.OUT = ALTERNATED
    for start in range(0, 610, 305):
        study.collect(start, start + 305, experts=alternated_experts())


def estimator_logits(name, positions):
    """The estimator's level logits on N0 + N noise samples at its sigma, per stored image
    (cached next to it)."""
    ckpt = torch.load(OUT / f"estimator_{name}.pt", weights_only=True)
    cache = OUT / f"estimator_{name}_logits.npz"
    if cache.is_file():
        stored = np.load(cache)
        if np.array_equal(stored["positions"], positions):
            return stored["logits"], ckpt
    model = build_model("small_cnn", **ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    lo, hi = int(positions.min()), int(positions.max()) + 1
    X, _ = permuted_train_slice("fashion-mnist", lo, hi)
    X = X[positions - lo]
    out = np.zeros((len(positions), study.N0 + study.N, len(study.SIGMAS)), dtype=np.float32)
    with torch.no_grad():
        for i, pos in enumerate(positions):
            gen = torch.Generator().manual_seed(int(pos) * 7 + 6)  # not the experts' streams
            noisy = X[i:i + 1].float() + ckpt["sigma_ve"] * torch.randn(
                (study.N0 + study.N,) + X.shape[1:], generator=gen)
            out[i] = model(noisy).numpy()
    np.savez_compressed(cache, logits=out, positions=positions)
    return out, ckpt


def ideal_low_experts(v, level, r_ve):
    """Dual RS mean radius if the 0.25 and 0.5 experts were perfect on every input routed to
    them (correct, unanimous votes: their reach at alpha / 2), the 1.0 expert as it is: an
    upper bound on what fine-tuning the low experts on their routed inputs can add."""
    reach = study.R_VE_OF_COUNT[-1] * np.asarray(study.SIGMAS)  # R_VE_OF_COUNT is at sigma 1
    low = (level >= 0) & (level != study.TOP)
    r_cls = np.where(low, reach[np.maximum(level, 0)], np.where(level == study.TOP,
                                                                v.radius[study.TOP], 0.0))
    return np.minimum(r_cls, r_ve).mean()


def level_set_radius(data, rows, levels, sigma_ve):
    """Dual RS with level *sets*, every expert paid (a ceiling for certificates that pay more
    samples, not what DualSmoothing computes). Where the smoothed estimator's votes for a set
    L of levels exceed 1/2 at every point of a ball, its chosen level stays in L there; if every
    expert of L certifies the same class on that ball, so does Dual RS. So: class = the routed
    expert's selection vote; R_cls(s) for that class at every level s (alpha/2 split in 3);
    R_ve(L) for L = {top}, {top, j}, {top, j'} (alpha/2 split in 3; the set of all levels needs
    no bound); radius = max over L of min(R_ve(L), min over s in L of R_cls(s)), over the sets
    whose every bound certifies. Returns (the correct inputs' radius, 0 elsewhere; whether
    each input is certified correct)."""
    counts = data["counts"][:, :, rows]  # (levels, select/estimate, M, classes)
    m, levels_n, idx = len(rows), len(study.SIGMAS), np.arange(len(rows))
    onehot = levels[..., None] == np.arange(levels_n)
    select, estimate = onehot[:, :study.N0].sum(1), onehot[:, study.N0:].sum(1)
    top = select.argmax(1)
    cls = counts[top, 0, idx].argmax(-1)
    share = study.HALF_ALPHA / levels_n
    r_cls, ok_cls = zip(*(certified_radius(counts[j, 1, idx, cls], study.N, share, s)
                          for j, s in enumerate(study.SIGMAS)))
    r_cls, ok_cls = np.stack(r_cls), ~np.stack(ok_cls)
    best, certified = np.zeros(m), np.zeros(m, bool)
    for extra in (None, 0, 1, 2, "all"):
        member = np.zeros((m, levels_n), bool)
        member[idx, top] = True
        if extra == "all":
            member[:] = True
            r_ve, ok_ve = np.full(m, np.inf), np.ones(m, bool)
        elif extra is None:
            r_ve, ok_ve = certified_radius(estimate[idx, top], study.N, share, sigma_ve)
            ok_ve = ~ok_ve
        else:
            member[:, extra] = True
            r_ve, ok_ve = certified_radius((estimate * member).sum(1), study.N, share, sigma_ve)
            ok_ve = ~ok_ve & (top != extra)
        ok = ok_ve & np.where(member, ok_cls.T, True).all(1)
        radius = np.minimum(r_ve, np.where(member, r_cls.T, np.inf).min(1))
        best = np.where(ok, np.maximum(best, radius), best)
        certified |= ok
    correct = certified & (cls == data["y"][rows])
    return np.where(correct, best, 0.0), correct


RADII = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0)


def accuracy_at_radii(radius):
    """Certified accuracy at RADII of correct inputs' radii (0 where wrong or abstaining; a
    correct certificate has radius > 0)."""
    return [float(((radius > 0) & (radius >= r)).mean()) for r in RADII]


def radius_table(v, capped):
    """Per radius: each single sigma (at alpha), their maximum, the oracle, this router."""
    print("      certified accuracy at r = " + " / ".join(f"{r:g}" for r in RADII))
    singles = [accuracy_at_radii(radius) for radius in v.single]
    rows = [(f"sigma {sigma:g}", acc) for sigma, acc in zip(study.SIGMAS, singles)]
    rows += [("best single at each radius", np.max(singles, 0)),
             ("oracle (alpha/2)", accuracy_at_radii(v.radius.max(0))),
             ("this router", accuracy_at_radii(capped))]
    for label, acc in rows:
        print(f"      {label:<34}" + " ".join(f"{a:.3f}" for a in acc))


def report(label, v, levels, data, rows):
    capped, uncapped, level, r_ve = v.dual(levels)
    study.summary(label, v, capped, uncapped, level)
    if label.startswith("[validation]"):
        radius_table(v, capped)
    study.breakdown(f"    ({label})", v, capped, level, r_ve)
    print(f"      with perfect 0.25 / 0.5 experts on what is routed to them: "
          f"{ideal_low_experts(v, level, r_ve):.3f}")
    sets, correct = level_set_radius(data, rows, levels, v.estimator_sigma)
    print(f"      level sets, every expert paid: {sets.mean():.3f} (certified accuracy at "
          f"r = 0: {correct.mean():.3f}, plain: {(level >= 0).mean():.3f} routed)")


def confidence_routers(fit):
    """The study's shared-pass confidence routers (1.0 if the 1.0 expert's softmax confidence
    >= t, else 0.5) on the validation half, with the perfect-low-experts bound."""
    data = study.load_chunks()
    rows = np.arange(fit, len(data["y"]))
    v = study.Votes(data, rows)
    report("[validation] constant 1.0", v, np.full((v.n, study.N0 + study.N), study.TOP),
           data, rows)
    for t in (0.5, 0.7, 0.9):
        report(f"[validation] confidence >= {t} else 0.5", v,
               study.threshold_levels(v, [study.TOP] * 10, [1] * 10, [t] * 10), data, rows)


def evaluate(name, fit):
    data = study.load_chunks()
    m = len(data["y"])
    logits, ckpt = estimator_logits(name, data["positions"])
    sigma_ve = float(ckpt["sigma_ve"])
    print(f"estimator {name}: sigma_ve {sigma_ve:g}, recipe {ckpt['recipe']}")
    parts = {"validation": np.arange(fit, m)} if fit < m else {}
    if fit > 0:
        parts = {"fit": np.arange(fit), **parts}
    views = {k: (study.Votes(data, rows).with_estimator_sigma(sigma_ve), logits[rows])
             for k, rows in parts.items()}
    for part, (v, z) in views.items():
        best = v.single.mean(1).max()
        oracle = v.radius.max(0).mean()
        print(f"[{part}, {v.n} images] best single {best:.3f}, oracle {oracle:.3f}, target "
              f"{best + (oracle - best) / 2:.3f}; constant 1.0 at alpha/2 "
              f"{v.radius[study.TOP].mean():.3f}")
        report(f"[{part}] learned estimator as trained", v, z.argmax(-1), data, parts[part])
    print("  operating points, one bias b subtracted from both low levels' logits "
          "(b: capped / uncapped mean radius, inputs sent off 1.0), per part:")
    for b in (-3.0, -2.0, -1.0, -0.5, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 1.0, 2.0, 4.0):
        row = []
        for part, (v, z) in views.items():
            capped, uncapped, level, _ = v.dual((z - np.array([b, b, 0.0])).argmax(-1))
            row.append(f"{part} {capped.mean():.3f} / {uncapped.mean():.3f}, "
                       f"{int(((level >= 0) & (level != study.TOP)).sum())} off")
        print(f"    b = {b:+.1f}: " + "; ".join(row))
    if "fit" in views:
        v, z = views["fit"]
        scored = []
        for b in itertools.product(BIAS_GRID, repeat=len(study.SIGMAS) - 1):
            bias = np.array(b + (0.0,))
            scored.append((v.dual((z - bias).argmax(-1))[0].mean(), b))
        score, b = max(scored)
        print(f"  bias fitted on the fit half (subtracted from the 0.25 / 0.5 logits): {b}, "
              f"fit capped {score:.3f}")
        for part, (v, z) in views.items():
            report(f"[{part}] learned + fitted bias", v, (z - np.array(b + (0.0,))).argmax(-1),
                   data, parts[part])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    sub = p.add_subparsers(dest="cmd", required=True)
    lab = sub.add_parser("labels")
    lab.add_argument("--images", type=int, default=LABEL_IMAGES)
    t = sub.add_parser("train")
    t.add_argument("--name", required=True)
    t.add_argument("--sigma-ve", type=float, default=1.0)
    t.add_argument("--init", choices=("scratch", "expert"), default="scratch")
    t.add_argument("--temperature", type=float, default=0.25)
    t.add_argument("--balance", action=argparse.BooleanOptionalAction, default=True)
    t.add_argument("--epochs", type=int, default=30)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--consistency", type=float, default=40.0)
    t.add_argument("--entropy", type=float, default=0.5)
    t.add_argument("--images", type=int, default=LABEL_IMAGES)
    e = sub.add_parser("evaluate")
    e.add_argument("--name", default=None, help="a trained estimator; without: the study's "
                   "confidence routers")
    e.add_argument("--fit", type=int, default=305, help="stored images fitted on (biases)")
    e.add_argument("--alternated", action="store_true",
                   help="the alternated experts' study images and estimator (after alternate)")
    a = sub.add_parser("alternate")
    a.add_argument("--classifier-epochs", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    global OUT
    if getattr(args, "alternated", False):
        study.OUT = OUT = ALTERNATED
    if args.cmd == "labels":
        _, _, radii = labels(args.images)
        print(f"radii {tuple(radii.shape)}; mean per level {radii.mean(1).tolist()}")
    elif args.cmd == "train":
        train(args.name, args.sigma_ve, args.init, args.temperature, args.balance, args.epochs,
              args.lr, args.consistency, args.entropy, args.images)
    elif args.cmd == "alternate":
        alternate(args.classifier_epochs)
    elif args.name is None:
        confidence_routers(args.fit)
    else:
        evaluate(args.name, args.fit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
