"""The Python API against the `dualrs` command, same model, images, n and chunking (issue 22:
"drs.certify from a plain script within 10% of the CLI's samples/s").

    .venv/bin/python -P bench/api_vs_cli.py --rounds 3

Each round runs, in fresh processes and alternating order, `dualrs certify` on the first --num
MNIST-5k test images (chunks of 16, as the CLI certifies them) and a plain script calling
drs.certify on the same chunks; both report samples per second of certify time (the CLI from
its log's time column, the script from its own clock), so process start-up is left out.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

SCRIPT = """
import sys, time, torch
import dualrs_fast as drs
from dualrs_fast import data, models
num, n, chunk = (int(a) for a in sys.argv[1:4])
_, _, x, _ = data.load_default_split()
model = models.load_default_classifier(0.25)
drs.certify(model, x[:1], sigma=0.25, n0=2, n=2, seed=0)   # JIT warm-up, as the CLI's first chunk pays it too
seconds = 0.0
for start in range(0, num, chunk):
    t = time.perf_counter()
    drs.certify(model, x[start:start + chunk], sigma=0.25, n0=100, n=n, seed=0,
                ids=list(range(start, min(start + chunk, num))), progress=False)
    seconds += time.perf_counter() - t
print(num * (100 + n) / seconds)
"""


def cli_rate(num, n, out):
    subprocess.run([sys.executable, "-P", "-m", "dualrs_fast", "certify", "--sigma", "0.25",
                    "--max", str(num), "--n", str(n), "--seed", "0", "--quiet", "--overwrite",
                    "--out", out], check=True, capture_output=True)
    with open(out) as f:
        rows = f.read().splitlines()[1:]
    seconds = sum(float(r.split("\t")[5]) for r in rows)
    return len(rows) * (100 + n) / seconds


def api_rate(num, n):
    out = subprocess.run([sys.executable, "-P", "-c", SCRIPT, str(num), str(n), "16"],
                         check=True, capture_output=True, text=True)
    return float(out.stdout.split()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"CPU: {_cpu()}; load before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            order = ("cli", "api") if k % 2 == 0 else ("api", "cli")
            rates = {}
            for which in order:
                rates[which] = (cli_rate(args.num, args.n, os.path.join(tmp, "log.tsv"))
                                if which == "cli" else api_rate(args.num, args.n))
            print(f"round {k} ({' then '.join(order)}): CLI {rates['cli']:,.0f} samples/s, "
                  f"API {rates['api']:,.0f} samples/s, API / CLI {rates['api'] / rates['cli']:.3f}"
                  f"; load {os.getloadavg()[0]:.2f}", flush=True)


def _cpu():
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
