"""Helpers for tests that run the `dualrs` command in-process."""
from pathlib import Path

import torch

from dualrs_fast import cli
from dualrs_fast.models import TinyMLP, save_checkpoint


def make_toy(root, inputs: int = 12):
    """A toy dataset ``root/toy.pt`` (``inputs`` 8x8 images in [0, 1], 4 classes) and a TinyMLP
    checkpoint ``root/mlp.pt`` recording sigma 0.5; returns the model."""
    g = torch.Generator().manual_seed(0)
    torch.save({"x": torch.rand(inputs, 1, 8, 8, generator=g),
                "y": torch.randint(0, 4, (inputs,), generator=g)}, root / "toy.pt")
    torch.manual_seed(0)
    model = TinyMLP(in_shape=(1, 8, 8), num_classes=4, hidden=16, mean=0.5, std=0.5).eval()
    save_checkpoint(root / "mlp.pt", model, "tiny_mlp", meta={"sigma": 0.5})
    return model


def dualrs(capsys, *argv):
    """Run `dualrs ARGV...`; -> (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(path):
    """Log rows without the time column."""
    lines = Path(path).read_text().splitlines()
    time_col = lines[0].split("\t").index("time")
    return [[c for k, c in enumerate(line.split("\t")) if k != time_col] for line in lines]
