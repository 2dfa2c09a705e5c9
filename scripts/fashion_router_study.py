#!/usr/bin/env python
"""Issue #18: can Dual RS beat the best single sigma on Fashion-MNIST by half the oracle gain?

    python -P scripts/fashion_router_study.py collect --start 0 --stop 150   # per-input data
    python -P scripts/fashion_router_study.py collect --start 0 --stop 150 --sigma-ve 2  # optional
    python -P scripts/fashion_router_study.py analyse                        # every number

Validation images: Fashion-MNIST training positions 20,000.. of the permutation the experts
drew their 20,000 from (``data.permuted_train_slice``; the experts never saw them, the test
split is never touched). ``collect`` stores, per image and expert (sigma 0.25, 0.5, 1.0), the
class votes of n0 = 100 selection and n = 2,000 estimation noise samples, and for the sigma
1.0 expert the logits of every sample (runs/fashion_router/, not committed). Every router
that is a function of the 1.0 expert's logits (``levels_from_logits``: free in Dual RS's
shared pass) is then certified offline exactly as ``DualSmoothing.certify`` does with one
estimator round: level = the router's vote on the 100 selection samples, R_ve = 1.0 *
Phi^-1(Clopper-Pearson bound of that level's count among the 2,000 estimation samples at
alpha/2), R_cls = the routed expert's CERTIFY at alpha/2 (for the 1.0 level on the same
samples: the shared pass), radius = min(R_ve, R_cls). ``analyse --dual-check K`` certifies
a per-input router (1.0 if the 1.0 expert's softmax confidence >= 0.5, else 0.5) with the
real ``DualSmoothing`` on K validation images (it matches the offline numbers).

Result (610 images, fit 305 / validate 305; docs/dual-rs.md, "Can a router recover half the
oracle's gain on Fashion-MNIST?"): no class map and no confidence router reaches best single
+ half the oracle gain (validation: target 1.096; best capped router the constant, 1.037).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dualrs_fast.bounds import certified_radius
from dualrs_fast.data import permuted_train_slice
from dualrs_fast.training import committed_experts

SIGMAS = (0.25, 0.5, 1.0)
TOP = len(SIGMAS) - 1  # the sigma 1.0 level, the estimator's own sigma
N0, N, ALPHA = 100, 2000, 0.001
HALF_ALPHA = ALPHA / 2  # estimator and classifier each get half
FIRST = 20_000  # first permutation position the experts never saw
OUT = Path("runs/fashion_router")


def collect(start: int, stop: int, seed: int = 0, experts=None) -> Path:
    """Votes of every expert (default: the committed ones; else {sigma: model}) and the 1.0
    expert's logits on images FIRST+start..FIRST+stop-1, stored under OUT."""
    X, y = permuted_train_slice("fashion-mnist", FIRST + start, FIRST + stop)
    if experts is None:
        experts, _ = committed_experts(SIGMAS, "fashion-mnist")
    counts = np.zeros((len(SIGMAS), 2, X.shape[0], 10), dtype=np.int32)  # (level, sel/est, i, c)
    logits_top = np.zeros((X.shape[0], N0 + N, 10), dtype=np.float16)
    with torch.no_grad():
        for i in range(X.shape[0]):
            for k, s in enumerate(SIGMAS):
                gen = torch.Generator().manual_seed(seed * 1_000_003 + (FIRST + start + i) * 7 + k)
                noisy = X[i:i + 1].float() + s * torch.randn((N0 + N,) + X.shape[1:], generator=gen)
                logits = experts[s](noisy)
                votes = logits.argmax(1).numpy()
                counts[k, 0, i] = np.bincount(votes[:N0], minlength=10)
                counts[k, 1, i] = np.bincount(votes[N0:], minlength=10)
                if k == TOP:
                    logits_top[i] = logits.numpy().astype(np.float16)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"chunk_{start:05d}_{stop:05d}.npz"
    np.savez_compressed(path, counts=counts, logits_top=logits_top, y=y.numpy(),
                        positions=np.arange(FIRST + start, FIRST + stop))
    return path


def collect_wide(start: int, stop: int, sigma_ve: float, seed: int = 0) -> Path:
    """The 1.0 expert's logits under noise at a wider estimator sigma (a router at sigma_ve
    certifies R_ve up to sigma_ve * 2.67 but no longer shares the expert's pass)."""
    X, _ = permuted_train_slice("fashion-mnist", FIRST + start, FIRST + stop)
    expert = committed_experts(SIGMAS, "fashion-mnist")[0][1.0]
    logits_ve = np.zeros((X.shape[0], N0 + N, 10), dtype=np.float16)
    with torch.no_grad():
        for i in range(X.shape[0]):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + (FIRST + start + i) * 7 + 5)
            noisy = X[i:i + 1].float() + sigma_ve * torch.randn((N0 + N,) + X.shape[1:],
                                                                generator=gen)
            logits_ve[i] = expert(noisy).numpy().astype(np.float16)
    path = OUT / f"wide{sigma_ve:g}_{start:05d}_{stop:05d}.npz"
    np.savez_compressed(path, logits_ve=logits_ve)
    return path


def load_chunks():
    chunks = [np.load(p) for p in sorted(OUT.glob("chunk_*.npz"))]
    cat = lambda key, axis=0: np.concatenate([c[key] for c in chunks], axis=axis)
    return dict(counts=cat("counts", 2), logits_top=cat("logits_top"), y=cat("y"),
                positions=cat("positions"))


# ---- certification from stored votes (what CERTIFY and Dual RS compute) ----------------

def certify_votes(select, estimate, alpha, sigma):
    """CERTIFY from class votes (..., classes): (prediction, radius); radius 0 on abstain."""
    pred = select.argmax(-1)  # first maximum, like the vote kernels
    k = np.take_along_axis(estimate, pred[..., None], -1)[..., 0]
    radius, _ = certified_radius(k, N, alpha, sigma)
    return pred, np.asarray(radius, dtype=np.float64).reshape(k.shape)


#: the estimator's R_ve (sigma 1.0, alpha/2) and abstention for each count 0..N of its level
_R, _A = certified_radius(np.arange(N + 1), N, HALF_ALPHA, 1.0)
R_VE_OF_COUNT, ABSTAINS = np.asarray(_R, dtype=np.float64), np.asarray(_A, dtype=bool)


class Votes:
    """Per-input certificates of each expert, and the 1.0 expert's per-sample outputs."""

    def __init__(self, data, rows):
        counts = data["counts"][:, :, rows]
        self.y = data["y"][rows]
        self.n = len(rows)
        self.top_counts = counts[TOP]  # (2, M, 10): the 1.0 expert's selection / estimation
        # each level's correct radius at the classifier's half of alpha, (levels, M)
        self.radius = np.stack([self._correct(*certify_votes(counts[k, 0], counts[k, 1],
                                                             HALF_ALPHA, s))
                                for k, s in enumerate(SIGMAS)])
        self.single = np.stack([self._correct(*certify_votes(counts[k, 0], counts[k, 1],
                                                             ALPHA, s))
                                for k, s in enumerate(SIGMAS)])
        logits = data["logits_top"][rows].astype(np.float32)  # (M, N0 + N, 10)
        z = logits - logits.max(-1, keepdims=True)
        self.probs = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
        self.cls, self.conf = self.probs.argmax(-1), self.probs.max(-1)  # per noisy sample
        self.estimator_sigma = 1.0  # the shared pass: R_ve at the 1.0 expert's sigma
        self.r_ve_of_count, self.abstains = R_VE_OF_COUNT, ABSTAINS

    def with_estimator_sigma(self, sigma_ve):
        """The same inputs with R_ve certified at sigma_ve (an estimator with its own noise
        samples: no shared pass; every classifier keeps its votes)."""
        import copy
        other = copy.copy(self)
        r, a = certified_radius(np.arange(N + 1), N, HALF_ALPHA, sigma_ve)
        other.estimator_sigma = float(sigma_ve)
        other.r_ve_of_count, other.abstains = np.asarray(r, np.float64), np.asarray(a, bool)
        return other

    def at_wider_sigma(self, logits_ve, sigma_ve):
        """The same inputs with the router's view replaced by the 1.0 expert under noise at
        sigma_ve (``with_estimator_sigma``, the router reading those logits)."""
        wide = self.with_estimator_sigma(sigma_ve)
        z = logits_ve.astype(np.float32)
        z = np.exp(z - z.max(-1, keepdims=True))
        wide.probs = z / z.sum(-1, keepdims=True)
        wide.cls, wide.conf = wide.probs.argmax(-1), wide.probs.max(-1)
        return wide

    def _correct(self, pred, radius):
        return np.where(pred == self.y, radius, 0.0)

    def dual(self, sample_levels):
        """Dual RS (one estimator round, shared pass at 1.0) for per-sample levels (M, N0+N):
        (radius capped, radius uncapped, level (-1 abstain), R_ve)."""
        onehot = sample_levels[..., None] == np.arange(len(SIGMAS))
        sel, est = onehot[:, :N0].sum(1), onehot[:, N0:].sum(1)
        level = sel.argmax(1)
        count = est[np.arange(self.n), level]
        r_ve = self.r_ve_of_count[count]
        level = np.where(self.abstains[count], -1, level)
        r_cls = np.where(level >= 0, self.radius[np.maximum(level, 0), np.arange(self.n)], 0.0)
        return np.minimum(r_cls, r_ve), r_cls, level, r_ve


# ---- routers: functions of the 1.0 expert's softmax (free in the shared pass) -------------

def class_map_levels(probs, groups):
    """ClassGroupEstimator's per-sample level: the level holding most softmax mass."""
    membership = np.eye(len(SIGMAS))[np.asarray(groups)]  # (10, levels)
    return (probs @ membership).argmax(-1)


def threshold_levels(v, high, low, threshold):
    """Per predicted class c: level high[c] when the softmax confidence >= threshold[c],
    else low[c] (a per-input router on the same free forward pass)."""
    cls, conf = v.cls, v.conf
    return np.where(conf >= np.asarray(threshold)[cls], np.asarray(high)[cls],
                    np.asarray(low)[cls])


def all_class_maps():
    """All 3^10 maps, those with more classes at 1.0 first (ties go to the safe level)."""
    return np.array(list(itertools.product(range(len(SIGMAS) - 1, -1, -1), repeat=10)))


class ThresholdRouter(torch.nn.Module):
    """``threshold_levels`` as a Dual RS estimator derived from the 1.0 expert (for the real
    ``DualSmoothing`` check): one-hot level logits from that expert's logits."""

    def __init__(self, expert, high, low, threshold):
        super().__init__()
        self.expert = expert
        self.high, self.low = torch.tensor(high), torch.tensor(low)
        self.threshold = torch.tensor(threshold, dtype=torch.float32)

    @property
    def derived_from(self):
        return self.expert

    def forward(self, x):
        return self.levels_from_logits(self.expert(x))

    def levels_from_logits(self, logits):
        probs = torch.softmax(logits.float(), 1)
        conf, cls = probs.max(1)
        level = torch.where(conf >= self.threshold[cls], self.high[cls], self.low[cls])
        return torch.nn.functional.one_hot(level, len(SIGMAS)).to(logits.dtype)


def dual_check_fn(data, rows, high, low, thr):
    """Real DualSmoothing (plain estimator, shared pass) on the validation images ``rows``."""
    from dualrs_fast.dual import DualSmoothing
    positions = data["positions"][rows]
    lo = int(positions.min())
    X, y = permuted_train_slice("fashion-mnist", lo, int(positions.max()) + 1)
    X, y = X[positions - lo], y[positions - lo]
    experts, _ = committed_experts(SIGMAS, "fashion-mnist")
    router = ThresholdRouter(experts[1.0], high, low, thr)
    dual = DualSmoothing(router, experts, sigmas=SIGMAS, estimator_sigma=1.0)
    t = time.perf_counter()
    r = dual.certify(X, n0=N0, n=N, alpha=ALPHA, seed=1, ids=torch.as_tensor(positions),
                     estimator_rounds=1)
    correct = (r.prediction == y).numpy()
    capped = np.where(correct, r.radius.numpy(), 0.0)
    uncapped = np.where(correct, r.radius_classifier.numpy() if hasattr(r, "radius_classifier")
                        else r.radius.numpy(), 0.0)
    levels = [int((r.level == k).sum()) for k in range(-1, len(SIGMAS))]
    print(f"  real DualSmoothing on {len(rows)} validation images ({time.perf_counter() - t:.0f} s): "
          f"capped {capped.mean():.3f}  uncapped {uncapped.mean():.3f}  levels {levels}")


def search_class_maps(v: Votes, maps, capped: bool, chunk=4096):
    """Mean radius of every class map, routing each input by its 1.0 expert's class votes
    (the level of the group with most selection votes) and, capped, R_ve ~ the 1.0 expert's
    estimation votes in that group (a vote-count proxy of the softmax-mass router)."""
    sel, est = v.top_counts
    scores = np.empty(len(maps))
    idx = np.arange(v.n)
    for a in range(0, len(maps), chunk):
        memb = np.eye(len(SIGMAS))[maps[a:a + chunk]]  # (B, 10, L)
        level = np.einsum("mc,bcl->bml", sel, memb).argmax(-1)  # (B, M)
        r = v.radius[level, idx[None, :]]
        if capped:
            k = np.take_along_axis(np.einsum("mc,bcl->bml", est, memb), level[..., None], -1)[..., 0]
            r = np.minimum(r, R_VE_OF_COUNT[np.rint(k).astype(np.int64)])
        scores[a:a + chunk] = r.mean(1)
    return scores


def fit_thresholds(v: Votes, groups, capped=True, grid=(0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95),
                   sweeps=2):
    """Coordinate ascent over classes of (high, low, threshold) on the Dual RS mean radius
    (capped, or the routed classifier's radius alone)."""
    which = 0 if capped else 1
    high, low, thr = list(groups), list(groups), [0.0] * 10
    best = v.dual(threshold_levels(v, high, low, thr))[which].mean()
    for _ in range(sweeps):
        for c in range(10):
            for h, l, t in itertools.product(range(len(SIGMAS)), range(len(SIGMAS)), grid):
                trial = [list(high), list(low), list(thr)]
                trial[0][c], trial[1][c], trial[2][c] = h, l, t
                score = v.dual(threshold_levels(v, *trial))[which].mean()
                if score > best + 1e-9:
                    best, (high, low, thr) = score, trial
    return high, low, thr, best


# ---- the report -------------------------------------------------------------------------

def summary(name, v: Votes, capped, uncapped, level=None):
    extra = ""
    if level is not None:
        extra = "  levels abstain/0.25/0.5/1.0 " + "/".join(
            str(int((level == k).sum())) for k in range(-1, len(SIGMAS)))
    print(f"  {name:<46} capped {capped.mean():.3f}  uncapped {uncapped.mean():.3f}{extra}")


def gain_sources(v: Votes):
    """Where the oracle's gain over the 1.0 expert comes from, per input."""
    best_level = v.radius.argmax(0)
    oracle = v.radius.max(0)
    gain = oracle - v.radius[TOP]
    off = (best_level != TOP) & (gain > 0)
    print(f"  inputs with a gain (best level off 1.0): {int(off.sum())} of {v.n}; "
          f"total gain {gain.sum() / v.n:.3f} per input")
    for k in range(TOP):
        m = off & (best_level == k)
        if m.any():
            print(f"    to sigma {SIGMAS[k]:g}: {int(m.sum())} inputs, mean gain {gain[m].mean():.3f} "
                  f"(share of the total {gain[m].sum() / gain.sum():.2f}); 1.0 expert wrong or "
                  f"abstaining on {int((v.radius[TOP][m] == 0).sum())}")
    sizes = np.sort(gain[off])[::-1]
    cum = np.cumsum(sizes) / max(gain.sum(), 1e-12)
    for q in (0.5, 0.8):
        print(f"    {int(np.searchsorted(cum, q) + 1)} inputs carry {q:.0%} of the gain")
    per_class = [(c, int((off & (v.y == c)).sum()), gain[off & (v.y == c)].sum() / v.n)
                 for c in range(10)]
    print("    per true class (inputs, gain per input of the set): "
          + ", ".join(f"{c}:{k}/{g:.3f}" for c, k, g in per_class))
    # R_ve the estimator must certify on them: at least the routed level's radius
    sel, est = v.top_counts
    top_share = est.max(1) / N
    print(f"    their needed R_ve (radius at the better level): median "
          f"{np.median(oracle[off]):.2f}, quartiles {np.percentile(oracle[off], 25):.2f}/"
          f"{np.percentile(oracle[off], 75):.2f}; the 1.0 expert's top-class vote share "
          f"there: median {np.median(top_share[off]):.2f} (elsewhere {np.median(top_share[~off]):.2f})")
    return off, gain


def analyse(data, fit, dual_check):
    m = len(data["y"])
    fit = m // 2 if fit is None else fit
    fit_v, val_v = Votes(data, np.arange(fit)), Votes(data, np.arange(fit, m))
    print(f"{m} validation images (positions {data['positions'].min()}..{data['positions'].max()}): "
          f"fit on the first {fit}, validate on the remaining {m - fit}; n0 = {N0}, n = {N}, "
          f"alpha = {ALPHA}")
    targets = {}
    for name, v in (("fit", fit_v), ("validation", val_v), ("all", Votes(data, np.arange(m)))):
        singles = v.single.mean(1)
        best = singles.max()
        oracle = v.radius.max(0).mean()
        targets[name] = best + (oracle - best) / 2
        print(f"[{name}] single sigma " + " / ".join(f"{x:.3f}" for x in singles)
              + f" (alpha/2: {' / '.join(f'{x:.3f}' for x in v.radius.mean(1))}); oracle "
              f"{oracle:.3f}; gain {oracle - best:.3f}; target (best + half) {targets[name]:.3f}")
    print("\n== where the oracle's gain comes from (all images) ==")
    all_v = Votes(data, np.arange(m))
    off, gain = gain_sources(all_v)

    print("\n== class maps: all 3^10 on the fit part (vote proxy), best evaluated on validation ==")
    maps = all_class_maps()
    t = time.perf_counter()
    unc = search_class_maps(fit_v, maps, capped=False)
    cap = search_class_maps(fit_v, maps, capped=True)
    print(f"  searched {len(maps)} maps in {time.perf_counter() - t:.0f} s; best fit score "
          f"uncapped {unc.max():.3f}, capped (proxy) {cap.max():.3f}")
    # exact (softmax-mass routing, real R_ve) on the best proxy maps
    shortlist = np.unique(np.concatenate([np.argsort(-cap)[:20], np.argsort(-unc)[:5]]))
    exact = [(fit_v.dual(class_map_levels(fit_v.probs, maps[i]))[0].mean(), i) for i in shortlist]
    best_map = maps[max(exact)[1]]
    best_unc_map = maps[int(unc.argmax())]
    print(f"  best capped map on fit (exact) {''.join(map(str, best_map))}: fit {max(exact)[0]:.3f}")
    from dualrs_fast.models import load_default_estimator
    committed = load_default_estimator(dataset="fashion-mnist").config["groups"]
    for name, groups in (("committed class map", committed),
                         ("best capped class map", best_map),
                         ("best uncapped class map", best_unc_map),
                         ("all to 1.0", [TOP] * 10)):
        capped, uncapped, level, _ = val_v.dual(class_map_levels(val_v.probs, groups))
        summary(f"{name} {''.join(map(str, groups))}", val_v, capped, uncapped, level)
    val_unc = search_class_maps(val_v, maps, capped=False)
    val_cap = search_class_maps(val_v, maps, capped=True)
    print(f"  in-sample ceiling on validation itself (tuned on it; not a result): uncapped "
          f"{val_unc.max():.3f}, capped proxy {val_cap.max():.3f}")

    print("\n== per-input routers: per-class confidence thresholds on the 1.0 expert's softmax ==")
    t = time.perf_counter()
    high, low, thr, score = fit_thresholds(fit_v, best_map)
    high, low = [int(h) for h in high], [int(l) for l in low]
    print(f"  fitted in {time.perf_counter() - t:.0f} s: high {high} low {low} threshold {thr}; "
          f"fit capped {score:.3f}")
    capped, uncapped, level, r_ve = val_v.dual(threshold_levels(val_v, high, low, thr))
    summary("per-class thresholds", val_v, capped, uncapped, level)
    breakdown("per-class thresholds", val_v, capped, level, r_ve)
    c, _, lvl, rv = val_v.dual(class_map_levels(val_v.probs, best_map))
    breakdown("best capped class map", val_v, c, lvl, rv)
    t = time.perf_counter()
    uh, ul, ut, uscore = fit_thresholds(fit_v, best_map, capped=False)
    print(f"  fitted uncapped in {time.perf_counter() - t:.0f} s: high {[int(h) for h in uh]} "
          f"low {[int(l) for l in ul]} threshold {ut}; fit uncapped {uscore:.3f}")
    c, u, lvl, rv = val_v.dual(threshold_levels(val_v, uh, ul, ut))
    summary("per-class thresholds fitted uncapped", val_v, c, u, lvl)
    breakdown("per-class thresholds fitted uncapped", val_v, c, lvl, rv)
    for glob in (0.5, 0.7, 0.9):
        for lo in (0, 1):
            lv = threshold_levels(val_v, [TOP] * 10, [lo] * 10, [glob] * 10)
            c, u, lvl, rv = val_v.dual(lv)
            summary(f"1.0 if confidence >= {glob} else {SIGMAS[lo]:g}", val_v, c, u, lvl)
            breakdown(f"    (t = {glob}, low {SIGMAS[lo]:g})", val_v, c, lvl, rv)
            off = (lvl >= 0) & (lvl != TOP)
            print(f"      R_ve routed off 1.0, quantiles 10/25/50/75/90%: " + " / ".join(
                f"{q:.2f}" for q in np.percentile(rv[off], [10, 25, 50, 75, 90])))
    routed_off = level.__ge__(0) & (level != TOP)
    if routed_off.any():
        print(f"  R_ve on inputs routed off 1.0 ({int(routed_off.sum())}): quantiles 10/25/50/75/90% "
              + " / ".join(f"{q:.2f}" for q in np.percentile(r_ve[routed_off], [10, 25, 50, 75, 90])))
    misrouting(val_v)
    wider_estimator(data, fit, m, fit_v, val_v)
    if dual_check:  # the confidence router that routes per input: 1.0 if confident, else 0.5
        high, low, thr = [TOP] * 10, [1] * 10, [0.5] * 10
        rows = np.arange(fit, min(m, fit + dual_check))
        sub = Votes(data, rows)
        c, u, _, _ = sub.dual(threshold_levels(sub, high, low, thr))
        print(f"  offline simulation on the same {len(rows)}: capped {c.mean():.3f} uncapped {u.mean():.3f}")
        dual_check_fn(data, rows, high, low, thr)
    return dict(best_map=best_map, thresholds=(high, low, thr), targets=targets)


def breakdown(name, v: Votes, capped, level, r_ve):
    """A router's radius against routing everything to 1.0 (at alpha/2): what it wins on the
    inputs whose best level is off 1.0, what it loses on the others, and on the gain inputs
    it sends off 1.0 the R_ve it certifies against the R_ve they need (their routed radius)."""
    oracle, top = v.radius.max(0), v.radius[TOP]
    gain_in = (v.radius.argmax(0) != TOP) & (oracle > top)
    delta = capped - top
    sent = gain_in & (level >= 0) & (level != TOP)
    needed = v.radius[np.maximum(level, 0), np.arange(v.n)]
    med = lambda a: float(np.median(a)) if a.size else 0.0
    print(f"  {name}: vs all-to-1.0 {delta.mean():+.3f} = on the {int(gain_in.sum())} gain inputs "
          f"{delta[gain_in].sum() / v.n:+.3f} (oracle {(oracle - top)[gain_in].sum() / v.n:+.3f}) "
          f"+ elsewhere {delta[~gain_in].sum() / v.n:+.3f}; gain inputs sent off 1.0 "
          f"{int(sent.sum())}: R_ve median {med(r_ve[sent]):.2f} vs needed {med(needed[sent]):.2f}, "
          f"R_ve >= needed on {int((r_ve[sent] >= needed[sent]).sum())}; others sent off 1.0 "
          f"{int((~gain_in & (level >= 0) & (level != TOP)).sum())}")
    kept = ~gain_in & (level == TOP)
    print(f"      elsewhere: R_ve cap on the {int(kept.sum())} kept at 1.0 "
          f"{(capped - top)[kept].sum() / v.n:+.3f}, sent off 1.0 "
          f"{delta[~gain_in & (level >= 0) & (level != TOP)].sum() / v.n:+.3f}, estimator "
          f"abstains {delta[~gain_in & (level < 0)].sum() / v.n:+.3f}")


def wider_estimator(data, fit, m, fit_v, val_v, sigma_ve=2.0):
    """Confidence routers on the 1.0 expert at a wider estimator sigma (collect --sigma-ve)."""
    paths = sorted(OUT.glob(f"wide{sigma_ve:g}_*.npz"))
    if not paths:
        return
    logits = np.concatenate([np.load(p)["logits_ve"] for p in paths])
    if len(logits) != m:
        print(f"(wide sigma {sigma_ve:g}: {len(logits)} images stored, {m} needed; skipped)")
        return
    fit_w = fit_v.at_wider_sigma(logits[:fit], sigma_ve)
    val_w = val_v.at_wider_sigma(logits[fit:], sigma_ve)
    print(f"\n== estimator at sigma_ve = {sigma_ve:g} (the 1.0 expert's softmax under that noise; "
          f"R_ve reach {val_w.r_ve_of_count[-1]:.2f}) ==")
    candidates = [(t, lo) for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8) for lo in (0, 1)]
    scored = [(fit_w.dual(threshold_levels(fit_w, [TOP] * 10, [lo] * 10, [t] * 10))[0].mean(), t, lo)
              for t, lo in candidates]
    best, t, lo = max(scored)
    print(f"  best threshold on the fit half: 1.0 if confidence >= {t} else {SIGMAS[lo]:g} "
          f"(fit capped {best:.3f})")
    for t_, lo_ in sorted({(t, lo), (0.5, 1), (0.7, 1)}):
        c, u, lvl, rv = val_w.dual(threshold_levels(val_w, [TOP] * 10, [lo_] * 10, [t_] * 10))
        summary(f"sigma_ve {sigma_ve:g}: 1.0 if conf >= {t_} else {SIGMAS[lo_]:g}", val_w, c, u, lvl)
        breakdown(f"    (sigma_ve {sigma_ve:g}, t = {t_})", val_w, c, lvl, rv)


def misrouting(v: Votes):
    """What sending an input off 1.0 costs where 1.0 is (one of) its best levels."""
    keep = v.radius[TOP] >= v.radius.max(0)
    print(f"\n== cost of misrouting: {int(keep.sum())} of {v.n} validation inputs have 1.0 as a "
          f"best level (mean radius there {v.radius[TOP][keep].mean():.3f}) ==")
    for k in range(TOP):
        loss = v.radius[TOP][keep] - v.radius[k][keep]
        print(f"    routed to {SIGMAS[k]:g} instead: mean loss {loss.mean():.3f} per such input")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("collect")
    c.add_argument("--start", type=int, required=True)
    c.add_argument("--stop", type=int, required=True)
    c.add_argument("--sigma-ve", type=float, default=None,
                   help="instead: the 1.0 expert's logits at this wider estimator sigma")
    a = sub.add_parser("analyse")
    a.add_argument("--fit", type=int, default=None, help="images fitted on (default: half)")
    a.add_argument("--dual-check", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.cmd == "collect":
        t = time.perf_counter()
        path = (collect(args.start, args.stop) if args.sigma_ve is None
                else collect_wide(args.start, args.stop, args.sigma_ve))
        print(f"{path} in {time.perf_counter() - t:.0f} s")
        return 0
    analyse(load_chunks(), args.fit, args.dual_check)
    return 0


if __name__ == "__main__":
    sys.exit(main())
