"""The `dualrs` command line (also `python -m dualrs_fast`)."""
import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dualrs", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="certify a few embedded MNIST test images")
    demo.add_argument("--num", type=int, default=10, help="number of test images (default 10)")
    demo.add_argument("--sigma", type=float, default=0.25,
                      help="noise std in pixel units (images in [0,1]); embedded: 0.25, 0.5, 1.0")
    demo.add_argument("--n", type=int, default=10_000, help="estimation samples per input")
    demo.add_argument("--alpha", type=float, default=0.001,
                      help="failure probability of each certificate")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from .demo import run_demo
        run_demo(num_inputs=args.num, sigma=args.sigma, n=args.n, alpha=args.alpha)
    return 0


if __name__ == "__main__":
    sys.exit(main())
