"""Cohen et al.'s ``certify.py`` with the same arguments, certifying several inputs per call.

    python -m dualrs_fast.cohen_certify cifar10 checkpoint.pth.tar 0.25 out.tsv --N 10000 --max 100

Same positional arguments and options as theirs (``dataset base_classifier sigma outfile
--batch --skip --max --split --N0 --N --alpha``) plus ``--pack`` (inputs per
``compat.Smooth.certify_many`` call), ``--seed``, ``--compile`` and ``--no-fold-bn``. ``dataset`` is ``cifar10`` (read, like
theirs, from ``./dataset_cache/cifar-10-batches-py``) or any ``--dataset`` of ``dualrs``
(``cifar10:DIR``, ``npz:PATH``, ...). The model file loads as weights only (their training
snapshots name the architecture). The log has their columns; each row's time is its call's
time divided by the inputs it packed, and the radius is written so that it never exceeds the
certificate (their ``{:.3}`` rounds to nearest, sometimes up).
"""
import argparse
import sys
import time
from typing import Optional, Sequence

from .compat import Smooth
from .logs import LogWriter
from .validation import check_output_folder

#: inputs per certify_many call: enough that the short last forward pass of each input's
#: samples is shared, few enough that the log advances every few minutes
DEFAULT_PACK = 8
CIFAR10_CACHE = "cifar10:./dataset_cache"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dataset", help="cifar10 (./dataset_cache), or cifar10:DIR, npz:PATH, ...")
    p.add_argument("base_classifier", help="checkpoint (weights only; e.g. Cohen et al.'s)")
    p.add_argument("sigma", type=float, help="noise hyperparameter")
    p.add_argument("outfile", help="output file")
    p.add_argument("--batch", type=int, default=1000, help="batch size")
    p.add_argument("--skip", type=int, default=1, help="how many examples to skip")
    p.add_argument("--max", type=int, default=-1, help="stop after this many examples")
    p.add_argument("--split", choices=["train", "test"], default="test", help="train or test set")
    p.add_argument("--N0", type=int, default=100)
    p.add_argument("--N", type=int, default=100000, help="number of samples to use")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    p.add_argument("--pack", type=int, default=DEFAULT_PACK, help="inputs per certify_many call")
    p.add_argument("--seed", type=int, default=None,
                   help="noise seed (default: a fresh secret one per run)")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the model (opt-in: tens of seconds once per process)")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false", default=None,
                   help="run the model as given, without folding BatchNorm into the "
                        "convolutions (same as DUALRS_FAST_FOLD_BN=0)")
    return p


def _dataset_spec(dataset: str, split: str) -> str:
    if dataset == "imagenet":
        raise SystemExit("imagenet: no ImageNet loader here; pass npz:PATH with its images")
    spec = CIFAR10_CACHE if dataset == "cifar10" else dataset
    if split == "train" and spec.startswith("cifar10:"):
        spec = "cifar10-train:" + spec.partition(":")[2]
    return spec


def _make_out_folder(outfile: str) -> None:
    """As ``dualrs --out``: the outfile's folder is created when it lies under the working
    directory (``runs/`` in the docs), refused with one line elsewhere, before anything loads."""
    try:
        folder = check_output_folder(outfile, "outfile")
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    folder.mkdir(parents=True, exist_ok=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .loading import check_model_on, load_dataset, load_model
    from .runner import select_indices
    args = build_parser().parse_args(argv)
    if args.pack < 1:
        raise SystemExit(f"--pack must be >= 1, got {args.pack}")
    _make_out_folder(args.outfile)
    data = load_dataset(_dataset_spec(args.dataset, args.split))
    model = load_model(args.base_classifier, arch_option=None, kwargs_option=None)
    classes = check_model_on(model, data.x, None, min_outputs=int(data.y.max()) + 1)
    smooth = Smooth(model, classes, args.sigma, seed=args.seed, compile=args.compile,
                    fold_bn=args.fold_bn)
    indices = select_indices(len(data), args.skip, None if args.max < 0 else args.max)
    with LogWriter(args.outfile) as log:
        for start in range(0, len(indices), args.pack):
            chunk = indices[start:start + args.pack]
            before = time.time()
            results = smooth.certify_many([data.x[i] for i in chunk], args.N0, args.N,
                                          args.alpha, args.batch)
            each = (time.time() - before) / len(chunk)
            for i, (prediction, radius) in zip(chunk, results):
                log.write(i, int(data.y[i]), prediction, radius, each)
    return 0


if __name__ == "__main__":
    sys.exit(main())
