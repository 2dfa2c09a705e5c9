"""The engine's CPU speed defaults (issue 21): channels_last convolution weights that survive a
leading normalisation layer, one thread for small forward passes, and the allocator tuning
applied once per process unless opted out. Speed itself is measured in bench/, not here."""
import os
import subprocess
import sys

import torch

import dualrs_fast as drs
from dualrs_fast.sampling import use_channels_last_weights


class CohenStyleNormalize(torch.nn.Module):
    """Cohen et al.'s NormalizeLayer as their datasets.py describes it: constants repeated
    to (B, H, W, C) and permuted, which gives 1-channel images NCHW strides."""

    def forward(self, x):
        b, c, h, w = x.shape
        mean = torch.full((c,), 0.5).repeat((b, h, w, 1)).permute(0, 3, 1, 2)
        return (x - mean) / 0.25


class ThreadRecorder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 3)
        self.seen = []  # (rows, torch threads) per call

    def forward(self, x):
        self.seen.append((x.shape[0], torch.get_num_threads()))
        return self.fc(torch.relu(self.conv(x)).flatten(1))


def test_conv_weights_become_channels_last_with_the_same_values():
    torch.manual_seed(0)
    model = torch.nn.Sequential(CohenStyleNormalize(), torch.nn.Conv2d(1, 4, 3),
                                torch.nn.Flatten(), torch.nn.Linear(4 * 6 * 6, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    # the layer hands the first convolution NCHW strides even for a channels_last batch
    assert not model[0](x.contiguous(memory_format=torch.channels_last)).stride()[1] == 1
    before = model[1].weight.detach().clone()
    parameter = model[1].weight
    drs.certify(model, x, sigma=0.25, n0=10, n=50, seed=0)
    assert model[1].weight is parameter and torch.equal(model[1].weight, before)
    assert model[1].weight.is_contiguous(memory_format=torch.channels_last)
    plain = torch.nn.Linear(3, 2)
    use_channels_last_weights(plain)  # nothing to do: no convolutions
    assert plain.weight.is_contiguous()


def test_small_forward_passes_run_on_one_thread_and_the_setting_is_restored():
    torch.set_num_threads(2)
    model = ThreadRecorder().eval()
    x = torch.rand(1, 1, 8, 8)
    drs.certify(model, x, sigma=0.25, n0=10, n=290, batch_size=1000, seed=0)
    assert model.seen[:3] == [(8, 1), (4, 1), (4, 1)]  # the batch probe
    assert model.seen[3:] == [(300, 2)]
    model.seen.clear()
    drs.certify(model, x, sigma=0.25, n0=10, n=40, seed=0)
    assert model.seen[3:] == [(50, 1)]
    assert torch.get_num_threads() == 2


def _tuned_in_fresh_process(env_value):
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    if env_value is not None:
        env["DUALRS_FAST_TUNE_MALLOC"] = env_value
    else:
        env.pop("DUALRS_FAST_TUNE_MALLOC", None)
    code = ("from dualrs_fast.sampling import tune_cpu_allocator_once as t; "
            "print(t(), t())")
    return subprocess.run([sys.executable, "-P", "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.split()


def test_the_allocator_is_tuned_once_unless_opted_out():
    assert _tuned_in_fresh_process(None) == ["True", "True"]
    assert _tuned_in_fresh_process("0") == ["False", "False"]
