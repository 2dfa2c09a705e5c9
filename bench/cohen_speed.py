"""Cohen et al.'s certify.py against the same run through compat.Smooth and the packed runner.

    COHEN_SMOOTHING_DIR=/path/to/smoothing .venv/bin/python -P bench/cohen_speed.py \
        --images 3 --rounds 2 --n 10000

Setup (in --workdir): a CIFAR-10 test batch of --images random 3x32x32 images in the python
batch format, and a checkpoint written as Cohen's train.py writes one, of a CIFAR ResNet-20
built by their own ``get_architecture`` (normalisation layer first; random weights with
non-trivial BatchNorm statistics). Then, per round and in this order, three processes certify
the same images at sigma 0.25, n0 = 100, n = --n, alpha = 0.001, batch 1000:

- ``cohen``: their certify.py with their core.Smooth (cuda -> cpu in their checkout);
- ``compat``: their certify.py with ``core`` replaced by ``dualrs_fast.compat`` (the import
  changed, nothing else);
- ``packed``: ``python -m dualrs_fast.cohen_certify`` (certify.py's arguments; all images in
  one certify_many call).
- ``packed+compile``: the same with ``--compile`` (opt-in torch.compile; its inductor cache
  lives in the workdir, so the first round's time includes the cold compile, later rounds
  load it).
- ``compat-nofold`` / ``packed-nofold``: ``compat`` / ``packed`` with DUALRS_FAST_FOLD_BN=0
  (the model as given, without BatchNorm folded into its convolutions): what the fold adds.

Each variant runs in its own process because the engine tunes glibc's allocator process-wide:
Cohen's code in a process that had run ours would get that speed-up too. Wall times are the
logs' time columns (certify calls only, not process start or model loading), per image; CPU
times are the process's CPU seconds over the whole certify.py run (model building included),
per image, less sensitive to other processes on a shared machine. Ratios are Cohen's over the
variant's within the same round (back-to-back processes; odd rounds run in reverse order).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "tests"))
import cohen_codebase  # noqa: E402

VARIANTS = ("cohen", "compat", "packed", "packed+compile", "compat-nofold", "packed-nofold")
SIGMA, N0, ALPHA, BATCH = 0.25, 100, 0.001, 1000


def prepare(workdir: Path, images: int) -> Path:
    from cifar_files import py2_cifar_batch
    folder = workdir / "dataset_cache" / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, (images, 3072), dtype=np.uint8)
    (folder / "test_batch").write_bytes(py2_cifar_batch(data, rng.integers(0, 10, images).tolist(),
                                                        "testing batch 1 of 1"))
    with cohen_codebase.cohen_imports():
        from architectures import get_architecture
        torch.manual_seed(0)
        model = get_architecture("cifar_resnet20", "cifar10")
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.uniform_(-0.1, 0.1)
    checkpoint = workdir / "checkpoint.pth.tar"
    torch.save({"epoch": 1, "arch": "cifar_resnet20", "state_dict": model.state_dict()}, checkpoint)
    return checkpoint


def run_variant(variant: str, workdir: Path, images: int, n: int) -> None:
    """In a fresh process: one certify.py run of ``variant``."""
    argv = ["cifar10", workdir / "checkpoint.pth.tar", SIGMA, workdir / f"{variant}.tsv",
            "--N0", N0, "--N", n, "--alpha", ALPHA, "--batch", BATCH, "--max", images]
    os.chdir(workdir)
    if variant.endswith("-nofold"):
        os.environ["DUALRS_FAST_FOLD_BN"] = "0"
    cpu = time.process_time()
    if variant.startswith("packed"):
        from dualrs_fast.cohen_certify import main
        compile_flag = ["--compile"] if variant.endswith("compile") else []
        main([str(a) for a in argv] + ["--pack", str(images)] + compile_flag)
    else:
        core = cohen_codebase.compat_core() if variant.startswith("compat") else None
        cohen_codebase.run_script("certify.py", argv, core=core, cwd=workdir)
    (workdir / f"{variant}.cpu").write_text(str(time.process_time() - cpu))


def per_image_seconds(log: Path):
    from dualrs_fast.logs import read_log
    table = read_log(log)
    return [float(t) for t in table["time"]], [int(p) for p in table["predict"]], \
        [float(r) for r in table["radius"]]


def measure(args) -> dict:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="cohen_speed_"))
    prepare(workdir, args.images)
    rounds = []
    for r in range(args.rounds):
        row = {}
        variants = args.variants
        for variant in (variants if r % 2 == 0 else variants[::-1]):  # drift hits both sides
            load_before = os.getloadavg()[0]
            subprocess.run([sys.executable, "-P", __file__, "--run", variant, "--workdir",
                            str(workdir), "--images", str(args.images), "--n", str(args.n)],
                           check=True, env=dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(
                               workdir / "inductor")))
            times, predictions, radii = per_image_seconds(workdir / f"{variant}.tsv")
            cpu = float((workdir / f"{variant}.cpu").read_text()) / len(times)
            row[variant] = dict(times=times, mean=statistics.mean(times), cpu=cpu,
                                predictions=predictions, radii=radii,
                                load=[round(load_before, 2), round(os.getloadavg()[0], 2)])
            print(f"round {r} {variant}: {row[variant]['mean']:.2f} s/image, {cpu:.2f} CPU s "
                  f"(load {load_before:.2f} -> {os.getloadavg()[0]:.2f})", flush=True)
        for variant in variants[1:]:
            row[variant]["speedup"] = row["cohen"]["mean"] / row[variant]["mean"]
            row[variant]["cpu_speedup"] = row["cohen"]["cpu"] / row[variant]["cpu"]
        rounds.append(row)
    return dict(images=args.images, n=args.n, variants=variants, rounds=rounds,
                workdir=str(workdir))


def report(result: dict) -> str:
    import platform
    cpu = next((line.split(":", 1)[1].strip() for line in
                subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
                if line.startswith("Model name:")), platform.processor())
    lines = [f"CPU: {cpu}, {os.cpu_count()} cores; torch {torch.__version__}; "
             f"{result['images']} images x n = {result['n']} per variant and round",
             "", "| round | variant | s/image (wall) | CPU s/image | speed-up (wall) | "
             "speed-up (CPU) | 1-min load before -> after |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for k, row in enumerate(result["rounds"]):
        for v in result["variants"]:
            r = row[v]
            gain = (f"{r['speedup']:.2f}x | {r['cpu_speedup']:.2f}x" if v != "cohen"
                    else "1 | 1")
            lines.append(f"| {k} | {v} | {r['mean']:.2f} | {r['cpu']:.2f} | {gain} | "
                         f"{r['load'][0]:.1f} -> {r['load'][1]:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--workdir")
    p.add_argument("--variants", default="cohen,compat,packed",
                   type=lambda text: ["cohen"] + [v for v in text.split(",") if v != "cohen"],
                   help=f"comma-separated, from {', '.join(VARIANTS)} (cohen always runs)")
    p.add_argument("--run", choices=VARIANTS, help=argparse.SUPPRESS)
    p.add_argument("--json", help="also write the raw measurements here")
    args = p.parse_args()
    if cohen_codebase.code_dir() is None:
        raise SystemExit(f"set {cohen_codebase.ENV} to a locuslab/smoothing checkout "
                         "(cuda -> cpu); see bench/cohen_codebase.py")
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.run:
        run_variant(args.run, Path(args.workdir), args.images, args.n)
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    result = measure(args)
    print(f"\nstarted {started}\n" + report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
