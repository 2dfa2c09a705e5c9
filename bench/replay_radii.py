"""Replay certify_radii on CERTIFY's recorded votes, without the model.

    python -P bench/radii_vs_certify.py certify --setting 0.5     # records the votes
    python -P bench/replay_radii.py --setting 0.5                  # certify_radii, replayed
    python -P bench/replay_radii.py --setting 0.5 --futility-alpha 0.01 --final-share 0.5
    python -P bench/replay_radii.py --setting 0.5 --oracle-futility   # what futility costs

``radii_vs_certify.py certify`` records CERTIFY's votes per block of 100 estimation samples
(SETTING_certify.npz). certify_radii's checkpoints are multiples of 100 and its samples are a
prefix of CERTIFY's (same seed, ids and streams), so running the library's own sequential
test (``sequential_radii.run_standard`` / ``run_dual``) on those votes gives exactly what
certify_radii gives on the model (checked against SETTING_run.json when it holds a
certify_radii run), in seconds: what a change of the stopping rule costs in samples and
certificates can be measured on 200 images x 100,000 samples without drawing one.

--oracle-futility replaces the futility rule by an oracle that gives up exactly the radii
CERTIFY did not certify (it knows CERTIFY's answer: not a procedure), so what is left is the
cost of splitting alpha over the checkpoints.
"""
import argparse
import contextlib
import json
import os
import sys

import numpy as np
import torch

from dualrs_fast.models import load_default_dual
from dualrs_fast.noise import Stream
from dualrs_fast import sequential_radii
from dualrs_fast.sequential_radii import (FINAL_SHARE, FUTILITY_ALPHA, check_radii, grid_index,
                                          run_dual, run_standard)

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # python -P leaves the script's folder out
from radii_grid import GRID, grid_accuracy  # noqa: E402


def recorded_votes(counts: np.ndarray, n0: int, block: int, select: Stream, estimate: Stream):
    """A ``votes(members, draws)`` source serving recorded counts: ``counts`` (1 + T, B, K) is
    the n0 selection counts then T blocks of ``block`` estimation samples per input. Draws
    must be n0 selection samples or block-aligned estimation samples."""
    counts = np.asarray(counts, dtype=np.int64)
    cumulative = np.concatenate([np.zeros_like(counts[:1]), np.cumsum(counts[1:], axis=0)])

    def votes(members, draws):
        m = members.numpy()
        out = []
        for d in draws:
            num = np.broadcast_to(np.asarray(d.num_samples), m.shape)
            start = np.broadcast_to(np.asarray(d.start), m.shape)
            if d.stream == select and (num == n0).all() and (start == 0).all():
                out.append(counts[0, m])
            elif d.stream == estimate and not ((num % block).any() or (start % block).any()):
                if ((start + num) // block >= cumulative.shape[0]).any():
                    raise ValueError("draws past the recorded samples")
                out.append(cumulative[(start + num) // block, m] - cumulative[start // block, m])
            else:
                raise ValueError(f"not replayable from n0 = {n0}, blocks of {block}: {d}")
        return torch.from_numpy(np.stack(out))
    return votes


@contextlib.contextmanager
def futility_oracle(top: np.ndarray):
    """While active, the sequential test gives up exactly the grid indices above ``top``
    (per input: CERTIFY's largest certified grid index, -1: none)."""
    test = sequential_radii._SequentialTest
    rule = test._plausible_index
    test._plausible_index = lambda self, at, count, n: top[at]
    try:
        yield
    finally:
        test._plausible_index = rule


def load_recorded(directory: str, setting: str):
    """A setting's run (SETTING_run.json) and CERTIFY's recorded votes (SETTING_certify.npz)."""
    with open(os.path.join(directory, f"{setting}_run.json")) as f:
        run = json.load(f)
    votes = os.path.join(directory, f"{setting}_certify.npz")
    if not os.path.exists(votes):  # the recorded votes (MBs each) are not committed
        start, num = run.get("start", 0), run["num"]
        raise SystemExit(
            f"replay_radii: no recorded votes {votes} (they are not committed); record them with "
            f"`.venv/bin/python -P bench/radii_vs_certify.py certify --setting {setting} "
            f"--start {start} --num {num} --dir {directory}` (a full CERTIFY run, minutes to hours)")
    return run, np.load(votes)


def certify_top(run) -> np.ndarray:
    """CERTIFY's largest certified grid index per input (-1: abstained)."""
    return grid_index(check_radii(run["grid"]), np.asarray(run["certify"]["radius"]),
                      np.asarray(run["certify"]["prediction"]) < 0)


def replay(run, recorded, futility_alpha=FUTILITY_ALPHA, final_share=FINAL_SHARE,
           oracle_futility=False):
    """certify_radii's result (a RadiiResult) on CERTIFY's votes (``load_recorded``)."""
    z, setting = recorded, run["setting"]
    n0, block, n_max = int(z["n0"]), int(z["block"]), int(z["n"])
    radii, alpha, batch = check_radii(run["grid"]), float(z["alpha"]), int(run["num"])
    rule = dict(progress=False, final_share=final_share)
    oracle = futility_oracle(certify_top(run)) if oracle_futility else contextlib.nullcontext()
    classifier = recorded_votes(z["classifier"], n0, block, Stream.SELECT, Stream.ESTIMATE)
    if setting != "dual":
        sigma = torch.full((batch,), float(setting), dtype=torch.float64)
        with oracle:
            return run_standard(classifier, sigma, radii, alpha, n_max, n0, futility_alpha,
                                **rule)
    recorded_level = torch.from_numpy(z["level"].astype(np.int64))

    def classifier_votes(level, members, draws):
        # CERTIFY recorded the classifier at the estimator's chosen level (the same selection
        # samples choose it here) where its estimator did not abstain
        if (recorded_level[members] != level[members]).any():
            raise ValueError("the classifier was not recorded for some inputs at this level")
        return classifier(members, draws)
    estimator = recorded_votes(z["estimator"], n0, block, Stream.ESTIMATOR_SELECT,
                               Stream.ESTIMATOR_ESTIMATE)
    with oracle:
        return run_dual(load_default_dual(), estimator, classifier_votes, batch, radii, alpha,
                        n_max, n0, n_max, n0, futility_alpha, **rule)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--setting", default="0.5", help="0.25, 0.5, 1.0 (small CNN) or dual")
    p.add_argument("--dir", default=os.path.join(HERE, "radii_runs"))
    p.add_argument("--futility-alpha", type=float, default=FUTILITY_ALPHA)
    p.add_argument("--final-share", type=float, default=FINAL_SHARE)
    p.add_argument("--oracle-futility", action="store_true")
    args = p.parse_args(argv)
    run, recorded = load_recorded(args.dir, args.setting)
    r = replay(run, recorded, args.futility_alpha, args.final_share, args.oracle_futility)
    from dualrs_fast.loading import load_dataset
    start = run.get("start", 0)
    labels = load_dataset("mnist5k").y[start:start + run["num"]].numpy()
    full = grid_accuracy(run["certify"]["prediction"], run["certify"]["radius"], labels)
    mine = grid_accuracy(r.prediction.tolist(), r.radius.tolist(), labels)
    ratio = np.sum(run["certify"]["samples"]) / r.samples.sum().item()
    print(f"{args.setting} ({args.dir}): {r.samples.double().mean():,.0f} samples / input, "
          f"{ratio:.2f}x fewer than CERTIFY; certified accuracy minus CERTIFY's at r = "
          f"{', '.join(f'{g:g}' for g in GRID)}: {np.round(mine - full, 3).tolist()} "
          f"(largest difference {np.abs(mine - full).max():.3f})")
    if "certify_radii" in run:
        same = (run["certify_radii"]["samples"] == r.samples.tolist()
                and run["certify_radii"]["radius"] == r.radius.tolist())
        print("recorded certify_radii run:", "identical" if same else "differs (another rule?)")


if __name__ == "__main__":
    main()
